//! Streaming a byte range of one object from its chunks, with a bounded read-ahead window.

use std::{collections::VecDeque, ops::RangeInclusive, sync::Arc};

use bytes::Bytes;
use futures::Stream;

use super::{flight::ChunkReader, ChunkFetcher, Route};
use crate::{object::ObjectMeta, tier::Source, upstream::UpstreamError};

pub(super) struct Open {
    index: u64,
    /// Bytes of this chunk read so far.
    offset: u64,
    reader: ChunkReader,
    /// Already reopened once after joining a fetch that failed.
    retried: bool,
}

/// Streams a byte range of one object from its chunks, keeping a bounded window in flight.
pub struct RangeReader {
    pub(super) fetcher: Arc<ChunkFetcher>,
    pub(super) meta: Arc<ObjectMeta>,
    pub(super) version: Arc<str>,
    pub(super) range: RangeInclusive<u64>,
    pub(super) next_to_open: u64,
    pub(super) last_chunk: u64,
    pub(super) window: VecDeque<Open>,
    pub(super) failed: bool,
    pub(super) route: Route,
    /// Source and collapsing of the chunk the last bytes came from.
    pub(super) last_source: Option<(Source, bool)>,
}

impl RangeReader {
    fn fill_window(&mut self) {
        // Until the first bytes arrive only the first chunk is fetched: read-ahead fetches
        // starting at the same moment would compete with it for the upstream and delay them.
        let window = if self.last_source.is_none() {
            1
        } else {
            self.fetcher.readahead + 1
        };
        while self.window.len() < window && self.next_to_open <= self.last_chunk {
            let index = self.next_to_open;
            let fetcher = &self.fetcher;
            let reader = if self.window.is_empty() {
                fetcher.open(&self.meta, &self.version, index, self.route)
            } else {
                fetcher.open_ahead(&self.meta, &self.version, index, self.route)
            };
            self.window.push_back(Open {
                index,
                offset: 0,
                reader,
                retried: false,
            });
            self.next_to_open += 1;
        }
    }

    /// Source and collapsing of the chunk the last bytes (or the error) came from; `None` before
    /// the first call to `next`. Only reports: it never opens a chunk.
    pub fn source(&self) -> Option<(Source, bool)> {
        self.last_source
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        if self.failed {
            return None;
        }
        loop {
            self.fill_window();
            let chunk_size = self.meta.chunk_size;
            let open = self.window.front_mut()?;
            let chunk_start = open.index * chunk_size;
            match open.reader.next().await {
                Some(Ok(piece)) => {
                    let piece_start = chunk_start + open.offset;
                    open.offset += piece.len() as u64;
                    let piece_end = chunk_start + open.offset; // exclusive
                    let from = (*self.range.start()).max(piece_start);
                    let to = (*self.range.end() + 1).min(piece_end);
                    let source = open.reader.source();
                    self.last_source = Some((source, open.reader.collapsed));
                    if piece_end > *self.range.end() {
                        // The rest of this chunk is past the range: stop reading it.
                        self.window.pop_front();
                    }
                    if from < to {
                        let slice =
                            piece.slice((from - piece_start) as usize..(to - piece_start) as usize);
                        self.fetcher
                            .metrics
                            .bytes_served
                            .with_label_values(&[source.label()])
                            .inc_by(slice.len() as u64);
                        return Some(Ok(slice));
                    }
                }
                // Joining a fetch that then failed is bad luck, not this request's failure: try
                // once with a fetch of its own (the failed flight has left the map by now).
                Some(Err(e))
                    if open.reader.collapsed
                        && open.offset == 0
                        && !open.retried
                        && !matches!(e, UpstreamError::Changed(_)) =>
                {
                    open.retried = true;
                    open.reader =
                        self.fetcher
                            .open(&self.meta, &self.version, open.index, self.route);
                }
                Some(Err(e)) => {
                    self.last_source = Some((open.reader.source(), open.reader.collapsed));
                    self.failed = true;
                    self.window.clear();
                    return Some(Err(e));
                }
                None => {
                    let expected = self.meta.chunk_len(open.index);
                    if open.offset != expected {
                        self.failed = true;
                        let got = open.offset;
                        self.window.clear();
                        return Some(Err(UpstreamError::Truncated { expected, got }));
                    }
                    self.window.pop_front();
                }
            }
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        })
    }
}
