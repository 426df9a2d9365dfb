//! Whole-object streams: one upstream response carrying the whole object (an upstream that
//! ignores `Range`, or an object without a validator) cut into chunks as it arrives.
//!
//! A feed walks the object chunk by chunk. Each chunk not yet cached or being fetched becomes a
//! flight of the feed's own (so concurrent readers join it and it lands in the tiers like any
//! chunk); flights that reached the feed through the walk ([`FeedSource`]) subscribe to the
//! chunk they want and get its bytes as the feed passes it. One feed per object version at a
//! time: readers of the object join it instead of asking the upstream again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{
    flight::{Assembly, ChunkReader, Flight},
    single_flight::Claim,
    ChunkFetcher,
};
use crate::{
    object::{ChunkKey, ObjectMeta},
    source::{ChunkRequest, ChunkSource, ChunkStream, FetchError, Opened, SourceKind},
    upstream::{Upstream, UpstreamError},
};

type Subscriber = mpsc::UnboundedSender<Result<Bytes, FetchError>>;

/// What cutting one chunk works on.
struct Cut<'a> {
    feed: &'a Feed,
    body: &'a mut ChunkStream,
    carry: &'a mut Option<Bytes>,
    /// The chunk's flight, when the feed keeps the chunk.
    own: Option<Claim>,
}

/// A running whole-object stream's hold on the upstream: its connection, and its permit of
/// `--max-upstream-fetches`.
struct Body {
    stream: ChunkStream,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct FeedState {
    /// The chunk being cut now; earlier chunks have passed.
    index: u64,
    /// Its bytes so far, for subscribers that join mid-chunk.
    buffered: Vec<Bytes>,
    subscribers: HashMap<u64, Vec<Subscriber>>,
    ended: bool,
    /// Its version was purged (see `ChunkFetcher::forget_version`).
    forgotten: bool,
}

/// One whole-object stream being cut into chunks.
#[derive(Default)]
pub(super) struct Feed {
    state: Mutex<FeedState>,
    /// Told when the feed ends, for readers waiting to start the next one (see `Joined::Passed`).
    done: tokio::sync::Notify,
}

impl Feed {
    /// Its version was purged: it keeps nothing more, and stops once nobody reads it.
    pub(super) fn forget(&self) {
        self.state.lock().expect("feed lock").forgotten = true;
    }

    fn is_forgotten(&self) -> bool {
        self.state.lock().expect("feed lock").forgotten
    }

    fn is_ended(&self) -> bool {
        self.state.lock().expect("feed lock").ended
    }

    fn close(&self) {
        self.state.lock().expect("feed lock").ended = true;
        self.done.notify_waiters();
    }

    async fn ended(&self) {
        loop {
            // Created before the check: a close in between still wakes it.
            let closed = self.done.notified();
            if self.is_ended() {
                return;
            }
            closed.await;
        }
    }

    /// The bytes of chunk `index` from its start, as the feed reaches them; `None` once the feed
    /// has passed it (or ended).
    fn subscribe(&self, index: u64) -> Option<ChunkStream> {
        let mut st = self.state.lock().expect("feed lock");
        if st.ended || index < st.index {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if index == st.index {
            for piece in &st.buffered {
                let _ = tx.send(Ok(piece.clone()));
            }
        }
        st.subscribers.entry(index).or_default().push(tx);
        // Ends when the feed drops the chunk's senders.
        Some(Box::pin(receiver_stream(rx)))
    }

    fn begin_chunk(&self, index: u64) {
        let mut st = self.state.lock().expect("feed lock");
        st.index = index;
        st.buffered.clear();
    }

    fn push(&self, index: u64, piece: &Bytes) {
        let mut st = self.state.lock().expect("feed lock");
        st.buffered.push(piece.clone());
        if let Some(subs) = st.subscribers.get(&index) {
            for tx in subs {
                let _ = tx.send(Ok(piece.clone()));
            }
        }
    }

    /// Whether a reader waits for chunk `index` or a later one.
    fn awaited_from(&self, index: u64) -> bool {
        let st = self.state.lock().expect("feed lock");
        st.subscribers
            .iter()
            .any(|(i, subs)| *i >= index && subs.iter().any(|tx| !tx.is_closed()))
    }

    /// Chunk `index` is cut; returns whether a reader was still subscribed to it (one reading
    /// along, who will want the next chunk too).
    fn end_chunk(&self, index: u64) -> bool {
        let subs = self
            .state
            .lock()
            .expect("feed lock")
            .subscribers
            .remove(&index);
        subs.is_some_and(|subs| subs.iter().any(|tx| !tx.is_closed()))
    }

    fn fail(&self, error: &FetchError) {
        let mut st = self.state.lock().expect("feed lock");
        st.ended = true;
        for (_, subs) in st.subscribers.drain() {
            for tx in subs {
                let _ = tx.send(Err(error.clone()));
            }
        }
    }
}

fn receiver_stream(
    mut rx: mpsc::UnboundedReceiver<Result<Bytes, FetchError>>,
) -> impl futures::Stream<Item = Result<Bytes, FetchError>> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Whether a chunk joined a running (or starting) feed, or registered a new one.
enum Joined {
    Running(ChunkStream),
    /// A new feed waits for its body; the subscription is already in place.
    New(Arc<Feed>, ChunkStream),
    /// The version's feed has passed the chunk (without keeping it): one feed per version, so
    /// the next starts once this one ended.
    Passed(Arc<Feed>),
}

impl ChunkFetcher {
    /// Chunk `index` of `meta` from the object's feed: joins the one running or starting, or
    /// registers a new one starting at that chunk, in one step, so concurrent readers of the
    /// object never start two.
    fn join_or_register(&self, meta: &ObjectMeta, index: u64) -> Joined {
        let mut feeds = self.feeds.lock().expect("feeds lock");
        if let Some(running) = feeds.get(meta.version.as_str()) {
            if let Some(stream) = running.subscribe(index) {
                return Joined::Running(stream);
            }
            if !running.is_ended() {
                return Joined::Passed(running.clone());
            }
        }
        let feed = Arc::new(Feed::default());
        feed.begin_chunk(index);
        let stream = feed.subscribe(index).expect("a new feed takes subscribers");
        feeds.insert(Arc::from(meta.version.as_str()), feed.clone());
        Joined::New(feed, stream)
    }

    /// The stream of a seat; a new feed first gets its body, from the seat's chunk on.
    async fn take_seat(
        self: Arc<Self>,
        upstream: &Upstream,
        request: ChunkRequest<'_>,
        seat: Joined,
    ) -> Result<ChunkStream, FetchError> {
        let mut seat = seat;
        let (feed, stream) = loop {
            match seat {
                Joined::Running(stream) => return Ok(stream),
                Joined::New(feed, stream) => break (feed, stream),
                Joined::Passed(running) => {
                    running.ended().await;
                    seat = self.join_or_register(request.meta, request.key.index);
                }
            }
        };
        if let Err(e) = self.may_start_feed(request.meta, request.key.index) {
            self.abandon_feed(request.meta, &feed, &e);
            return Err(e);
        }
        let from = *request.meta.chunk_range(request.key.index).start();
        let permit = self.upstream_permit().await;
        match upstream.fetch_whole(request.meta, from).await {
            Ok((starts_at, body)) => {
                let body = Body {
                    stream: crate::source::from_upstream(body),
                    _permit: permit,
                };
                let meta = Arc::new(request.meta.clone());
                tokio::spawn(self.run_feed(meta, feed, body, starts_at, None));
                Ok(stream)
            }
            Err(e) => {
                let e = FetchError::from(e);
                self.abandon_feed(request.meta, &feed, &e);
                Err(e)
            }
        }
    }

    /// Without a validator, nothing proves two responses carry the same bytes, so every chunk of
    /// such a version must come from one response: a feed may start only at the object's start,
    /// and only while no chunk of the version is held here. Otherwise the version is given up
    /// (`Changed`: its metadata and chunks are dropped) and the next request looks the object up
    /// afresh, as a new version.
    fn may_start_feed(&self, meta: &ObjectMeta, index: u64) -> Result<(), FetchError> {
        if meta.validator.validates_ranges() {
            return Ok(());
        }
        let version: Arc<str> = Arc::from(meta.version.as_str());
        let held = (0..meta.chunk_count()).any(|i| {
            let key = meta.chunk_key(&version, i);
            self.sources.memory.contains(&key) || self.sources.local.iter().any(|s| s.holds(&key))
        });
        if index == 0 && !held {
            return Ok(());
        }
        Err(FetchError::Upstream(UpstreamError::Changed(
            "no validator, and part of this version is gone: its bytes cannot be completed from \
             another response"
                .into(),
        )))
    }

    /// A registered feed whose body could not be had.
    fn abandon_feed(&self, meta: &ObjectMeta, feed: &Arc<Feed>, error: &FetchError) {
        feed.fail(error);
        self.forget_feed(meta, feed);
    }

    fn forget_feed(&self, meta: &ObjectMeta, feed: &Arc<Feed>) {
        feed.close();
        let mut feeds = self.feeds.lock().expect("feeds lock");
        if feeds
            .get(meta.version.as_str())
            .is_some_and(|f| Arc::ptr_eq(f, feed))
        {
            feeds.remove(meta.version.as_str());
        }
    }

    /// Cuts `body` (the whole object, from byte 0) into chunks: the probe's whole answer, whose
    /// first chunk the probing request claimed. Returns that request's reader of the first
    /// chunk. A version has one whole-object stream at a time: with one running, the body is
    /// dropped (its readers join the running one).
    pub(super) fn start_feed(
        self: &Arc<Self>,
        meta: Arc<ObjectMeta>,
        mut first: Claim,
        body: ChunkStream,
    ) -> Option<ChunkReader> {
        let feed = Arc::new(Feed::default());
        {
            let mut feeds = self.feeds.lock().expect("feeds lock");
            if feeds.contains_key(meta.version.as_str()) {
                return None;
            }
            feeds.insert(Arc::from(meta.version.as_str()), feed.clone());
        }
        // Without memory for it now, the first chunk's bytes only reach subscribers.
        let first = first.try_reserve(meta.chunk_len(0) as u32).then_some(first);
        let reader = first.as_ref().map(Claim::follow);
        let me = self.clone();
        tokio::spawn(async move {
            // The probe's connection is open already; reading on counts like any fetch.
            let body = Body {
                stream: body,
                _permit: me.upstream_permit().await,
            };
            me.run_feed(meta, feed, body, 0, first).await
        });
        reader
    }

    /// Whether this node can keep the whole of `meta` (a disk, or a memory tier that holds it):
    /// else a stream nobody reads only evicts its own earlier chunks.
    fn can_keep(&self, meta: &ObjectMeta) -> bool {
        meta.length <= self.cfg.tier_bytes || self.has_disk()
    }

    fn has_disk(&self) -> bool {
        (self.sources.local.iter()).any(|s| s.kind() == SourceKind::Disk)
    }

    /// Without a disk, a chunk the stream passed is kept only by the memory tier, which may
    /// not keep it: the stream waits until its readers have opened the chunk (see `readers`).
    /// With one, the disk keeps what the stream passed, and the stream runs at the upstream's
    /// pace whatever its readers'.
    async fn keep_pace(&self, version: &str, index: u64) {
        if !self.has_disk() {
            self.stream_readers.until_opened(version, index).await;
        }
    }

    async fn upstream_permit(&self) -> OwnedSemaphorePermit {
        self.upstream_cap
            .clone()
            .acquire_owned()
            .await
            .expect("the fetch cap is never closed")
    }

    async fn run_feed(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        feed: Arc<Feed>,
        mut body: Body,
        starts_at: u64,
        mut claimed: Option<Claim>,
    ) {
        let first = starts_at / meta.chunk_size;
        let version: Arc<str> = Arc::from(meta.version.as_str());
        let mut carry: Option<Bytes> = None;
        // Whether a reader followed the chunk before (its readers will want the next one), and
        // the feed's own flight of it, whose readers may still be reading it.
        let mut read_along = false;
        let mut before: Option<Arc<Flight>> = None;
        for index in first..meta.chunk_count() {
            feed.begin_chunk(index);
            let key = meta.chunk_key(&version, index);
            let own = match claimed.take() {
                Some(own) => Some(own),
                None => {
                    self.keep_pace(&version, index).await;
                    self.flights.claim_now(&key, meta.chunk_len(index) as u32)
                }
            };
            let followed = read_along
                || before.as_ref().is_some_and(|f| f.followers() > 0)
                || own
                    .as_ref()
                    .is_some_and(|c| c.shared_flight().followers() > 0);
            let keeps = own.is_some() && self.can_keep(&meta) && !feed.is_forgotten();
            if !keeps && !followed && !feed.awaited_from(index) {
                // Nobody reads on, and what it would read cannot be kept (no memory free, the
                // chunk had already, or an object the memory tier cannot hold and no disk):
                // reading to the end would cost the upstream the whole object for nothing.
                tracing::debug!(path = %meta.path, chunk = index,
                    "whole-object stream stopped: no reader, and nothing to keep");
                feed.fail(&FetchError::Abandoned);
                break;
            }
            before = own.as_ref().map(Claim::shared_flight);
            let cut = Cut {
                feed: &feed,
                body: &mut body.stream,
                carry: &mut carry,
                own,
            };
            if let Err(e) = self.cut_chunk(&meta, cut, index).await {
                tracing::warn!(path = %meta.path, chunk = index, error = %e,
                    "whole-object stream failed");
                feed.fail(&e);
                break;
            }
            read_along = feed.end_chunk(index);
        }
        self.forget_feed(&meta, &feed);
    }

    /// Reads chunk `index` off `body` into the feed's subscribers, and into a flight of the
    /// feed's own when nobody has or fetches the chunk yet.
    async fn cut_chunk(
        &self,
        meta: &Arc<ObjectMeta>,
        cut: Cut<'_>,
        index: u64,
    ) -> Result<(), FetchError> {
        let Cut {
            feed,
            body,
            carry,
            own,
        } = cut;
        let expected = meta.chunk_len(index) as usize;
        let mut assembly = own
            .as_ref()
            .map(|claim| Assembly::new(expected, claim.flight()));
        let mut received = 0;
        let mut last = Bytes::new();
        while received < expected {
            let mut piece = match carry.take() {
                Some(piece) => piece,
                None => match body.next().await {
                    Some(Ok(piece)) => piece,
                    Some(Err(e)) => return Self::fail_own(own, e),
                    None => {
                        let e = FetchError::Short {
                            from: SourceKind::Upstream,
                            expected: expected as u64,
                            got: received as u64,
                        };
                        return Self::fail_own(own, e);
                    }
                },
            };
            if piece.len() > expected - received {
                *carry = Some(piece.split_off(expected - received));
            }
            received += piece.len();
            if let Some(assembly) = &mut assembly {
                assembly.add(&piece);
            }
            if received < expected {
                feed.push(index, &piece);
            } else {
                last = piece;
            }
        }
        // The chunk's last bytes reach the stream's readers once the chunk is in memory (or its
        // finished flight answers for it), like a flight's own readers (see `Flight::finish`);
        // the flight leaves the map once the stores have the chunk (see `fly`).
        let completing = match (assembly.map(Assembly::finish), own) {
            (Some((chunk, tail)), Some(claim)) => {
                claim.flight().set_origin(SourceKind::Upstream);
                Some(claim.complete(chunk, tail, SourceKind::Upstream).await)
            }
            _ => None,
        };
        if !last.is_empty() {
            feed.push(index, &last);
        }
        if let Some(completing) = completing {
            completing.store(&self.sources.local).await;
        }
        Ok(())
    }

    fn fail_own(own: Option<Claim>, e: FetchError) -> Result<(), FetchError> {
        if let Some(claim) = own {
            claim.fail(e.clone());
        }
        Err(e)
    }
}

/// A chunk's seat in its object's whole-object stream, taken when the chunk's flight starts: in
/// the order a reader asks for chunks, so the first chunk a reader wants starts the stream and
/// the chunks after it join it.
pub(super) struct FeedSeat {
    seat: Mutex<Option<Joined>>,
    upstream: Arc<Upstream>,
    fetcher: Weak<ChunkFetcher>,
}

impl ChunkFetcher {
    /// A seat in `meta`'s whole-object stream for chunk `index`, unless the chunk can come from
    /// a closer source (the disk, or the object's owner peer).
    pub(super) fn feed_seat(
        &self,
        meta: &ObjectMeta,
        key: &ChunkKey,
        route: crate::source::Route,
    ) -> Option<Arc<dyn ChunkSource>> {
        let upstream = self.sources.whole_objects.clone()?;
        if !meta.whole_only || self.sources.local.iter().any(|s| s.holds(key)) {
            return None;
        }
        if let (Some(peers), crate::source::Route::Cluster) = (&self.sources.peers, route) {
            if !peers.remote_owners(&meta.owner_key(key)).is_empty() {
                return None;
            }
        }
        let seat = self.join_or_register(meta, key.index);
        Some(Arc::new(FeedSeat {
            seat: Mutex::new(Some(seat)),
            upstream,
            fetcher: self.me.clone(),
        }))
    }
}

impl ChunkSource for FeedSeat {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        let seat = self.seat.lock().expect("seat lock").take();
        Box::pin(async move {
            let (Some(seat), Some(fetcher)) = (seat, self.fetcher.upgrade()) else {
                return Ok(None);
            };
            let stream = fetcher.take_seat(&self.upstream, request, seat).await?;
            Ok(Some(Opened {
                stream,
                starts_at: 0,
                origin: SourceKind::Upstream,
            }))
        })
    }
}

/// The whole-object stream as a chunk source: joins the object's running feed, or starts one
/// with a `GET` of the object from the wanted chunk on. Only for whole-only objects; the range
/// source after it serves the others.
pub struct FeedSource {
    fetcher: Weak<ChunkFetcher>,
    upstream: Arc<Upstream>,
}

impl FeedSource {
    pub(super) fn new(fetcher: Weak<ChunkFetcher>, upstream: Arc<Upstream>) -> Self {
        FeedSource { fetcher, upstream }
    }
}

impl ChunkSource for FeedSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            let Some(fetcher) = self.fetcher.upgrade() else {
                return Ok(None);
            };
            if !request.meta.whole_only {
                return Ok(None);
            }
            let index = request.key.index;
            let opened = |stream| {
                Ok(Some(Opened {
                    stream,
                    starts_at: 0,
                    origin: SourceKind::Upstream,
                }))
            };
            let seat = fetcher.join_or_register(request.meta, index);
            let stream = fetcher.take_seat(&self.upstream, request, seat).await?;
            opened(stream)
        })
    }
}
