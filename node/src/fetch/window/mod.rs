//! How many chunks a response keeps in flight.
//!
//! One chunk takes `T = latency + chunk_size / per-connection throughput` to fetch. A reader
//! that takes bytes at rate `D` is kept fed by `D × T` bytes in flight (the bandwidth-delay
//! product), so the window is `⌈1.5 × D × T / chunk_size⌉ + 1` chunks (half again as margin,
//! plus the chunk being read). While the reader waits on the fetch its rate is unknown (it takes
//! all it gets), so the window doubles per chunk until the reader stops waiting or the cap
//! (`--max-upstream-fetches`, the fetch memory budget) is reached. A slow reader shrinks it
//! back: its own rate then bounds how far ahead the response fetches.
//!
//! Latency and throughput are measured per kind of source (the upstream, owner peers) as chunks
//! arrive (see `metered`), and shared by every response of the node.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::source::{Route, SourceKind};

mod climb;
use climb::Climb;

/// Chunks a response may have in flight once its first bytes arrived, before anything is known
/// about the reader: enough for a few round trips' worth at once, little enough that a slow
/// client does not pin much memory before its pace is measured.
pub const INITIAL_WINDOW: usize = 8;
/// Never fewer than the chunk being read and the next: with less, every chunk would start a
/// round trip only once the one before had been read.
const MIN_WINDOW: usize = 2;
/// The reader counts as waiting on the fetch (its demand unknown) when it spent more than this
/// share of its time (averaged over recent chunks) waiting for bytes.
const STARVED_SHARE: f64 = 0.25;
/// The reader's pace is measured over at least this long: a response is written in bursts (the
/// client's socket fills, then drains), so single chunks say little about it.
const PACE_PERIOD: Duration = Duration::from_millis(250);
/// Slow start (doubling per chunk waited for) only from an upstream at least this far away:
/// nearer, waiting means the bytes are slow (bandwidth, CPU), not that round trips are.
const SLOW_START_LATENCY: f64 = 0.010;
/// Weight of a new measurement in the moving averages.
const EWMA_WEIGHT: f64 = 0.25;

/// Moving averages of one kind of source link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Seconds from asking for a chunk to its first bytes.
    pub latency: Option<f64>,
    /// Bytes per second of one connection once the bytes flow.
    pub throughput: Option<f64>,
    /// The most one connection delivered lately: what a connection carries when it does not
    /// share the upstream's capacity with the other fetches of the window. The average above
    /// falls as the window widens on an upstream whose total is capped (each fetch gets its
    /// share), and sizing the window from it would widen the window further: every chunk
    /// seems to take longer, so more seem needed in flight.
    pub peak_throughput: Option<f64>,
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |old| old + EWMA_WEIGHT * (sample - old))
}

/// A lower peak follows the samples this slowly (a decay over some tens of chunks), so one
/// fetch that shared the upstream with many others does not pass for the link's speed.
const PEAK_DECAY: f64 = 0.05;

impl Link {
    /// What one connection carries on its own, as far as known.
    fn per_connection(&self) -> Option<f64> {
        self.peak_throughput.or(self.throughput)
    }

    /// Before any latency was measured, `round_trip` (the time the source's answers took so far)
    /// stands in for it.
    pub fn or_round_trip(self, round_trip: Option<f64>) -> Self {
        Link {
            latency: self.latency.or(round_trip),
            ..self
        }
    }

    /// Time to fetch `bytes` over one connection: `None` until a latency was measured.
    pub fn fetch_time(&self, bytes: u64) -> Option<f64> {
        let transfer = self.per_connection().map_or(0.0, |r| bytes as f64 / r);
        self.latency.map(|l| l + transfer)
    }
}

/// The node's estimates of its links, by source kind.
#[derive(Default)]
pub struct LinkEstimates {
    upstream: Mutex<Link>,
    peer: Mutex<Link>,
}

impl LinkEstimates {
    fn slot(&self, kind: SourceKind) -> &Mutex<Link> {
        match kind {
            SourceKind::Peer => &self.peer,
            // Memory and disk are not measured: a response reading them is fed as fast as it
            // reads, and the chunks it has yet to fetch will come from the upstream.
            _ => &self.upstream,
        }
    }

    pub fn get(&self, kind: SourceKind) -> Link {
        *self.slot(kind).lock().expect("link lock")
    }

    /// The link a new response will most likely fetch over: through owner peers (`Route::Cluster`
    /// in a cluster) the slower of the peers' and the upstream's as far as known, else the
    /// upstream's.
    pub fn for_route(&self, route: Route) -> Link {
        let upstream = self.get(SourceKind::Upstream);
        let peer = self.get(SourceKind::Peer);
        match (route, peer.latency, upstream.latency) {
            (Route::Cluster, Some(p), Some(u)) if p > u => peer,
            (Route::Cluster, Some(_), None) => peer,
            _ => upstream,
        }
    }

    /// Returns the updated estimate.
    pub fn observe_latency(&self, kind: SourceKind, latency: Duration) -> Link {
        let mut link = self.slot(kind).lock().expect("link lock");
        link.latency = Some(ewma(link.latency, latency.as_secs_f64()));
        *link
    }

    /// `bytes` arrived in `elapsed` after the first ones; returns the updated estimate.
    pub fn observe_transfer(&self, kind: SourceKind, bytes: u64, elapsed: Duration) -> Link {
        let mut link = self.slot(kind).lock().expect("link lock");
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            let sample = bytes as f64 / secs;
            link.throughput = Some(ewma(link.throughput, sample));
            link.peak_throughput = Some(match link.peak_throughput {
                Some(peak) if peak > sample => peak + PEAK_DECAY * (sample - peak),
                _ => sample,
            });
        }
        *link
    }
}

/// One connection's bandwidth-delay product, in chunks, from which a link counts as
/// latency-bound. Loopback and LAN upstreams stay well below it (their latency is a few
/// milliseconds at most); an upstream 20 ms away delivering 1 GB/s per connection is at 10.
const LATENCY_BOUND_CHUNKS: f64 = 4.0;

/// Whether the link is known to be latency-bound: one connection would move several chunks
/// while waiting out one latency.
fn latency_bound(chunk_size: u64, link: Link) -> bool {
    match (link.latency, link.per_connection()) {
        (Some(latency), Some(rate)) => latency * rate >= LATENCY_BOUND_CHUNKS * chunk_size as f64,
        _ => false,
    }
}

/// The window of one response: how many chunks it keeps in flight, from the chunk being read on.
#[derive(Debug)]
pub struct FetchWindow {
    /// `--readahead` given: always this many.
    fixed: Option<usize>,
    cap: usize,
    size: usize,
    /// When the reader finished the previous chunk (or got its first bytes).
    since: Option<Instant>,
    /// Time the reader spent waiting for bytes since then.
    waited: Duration,
    /// Bytes handed to the reader since then.
    taken: u64,
    /// The current pace period: its start, the bytes taken and the time waited in it.
    period: Option<Period>,
    /// When the first bytes arrived: the first pace period is a slow start, growing per chunk.
    first_bytes: Option<Instant>,
    /// The search for the window that delivers the most while the reader waits.
    climb: Climb,
}

#[derive(Debug, Clone, Copy)]
struct Period {
    start: Instant,
    taken: u64,
    waited: f64,
    /// Chunks finished in it.
    chunks: usize,
}

impl FetchWindow {
    /// `fixed`: chunks in flight set by `--readahead`; `cap`: the most the window may grow to;
    /// `link`: what is known of the source so far.
    pub fn new(fixed: Option<usize>, cap: usize, chunk_size: u64, link: Link) -> Self {
        let cap = cap.max(MIN_WINDOW);
        // Wide enough for the first round trip not to be wasted; from a latency-bound link as
        // wide as allowed, since a round trip costs more than the chunks it could carry. So too
        // from a distant link whose throughput is not known yet (a cold upstream's first
        // object): doubling from a few chunks would cost a round trip per doubling (measured:
        // four round trips before 32 chunks were in flight, 0.42 s for 128 MiB from 50 ms away
        // against 0.15 s direct), while too wide a window costs only memory the budget bounds
        // and is narrowed after one pace period.
        let distant_unmeasured = link.per_connection().is_none()
            && link.latency.is_some_and(|l| l >= SLOW_START_LATENCY);
        let size = match latency_bound(chunk_size, link) || distant_unmeasured {
            true => cap,
            false => INITIAL_WINDOW.min(cap),
        };
        FetchWindow {
            fixed,
            cap,
            size,
            since: None,
            waited: Duration::ZERO,
            taken: 0,
            period: None,
            first_bytes: None,
            climb: Climb::Start,
        }
    }

    /// How long after asking for its first chunk a response may start its read-ahead, when
    /// that is worth it (see `RangeReader::head_start`): the first chunk's transfer time on one
    /// connection, from a known latency-bound link; never with a fixed window.
    pub fn head_start(&self, chunk_size: u64, link: Link) -> Option<Duration> {
        if self.fixed.is_some() || !latency_bound(chunk_size, link) {
            return None;
        }
        let rate = link.per_connection()?;
        Some(Duration::from_secs_f64(chunk_size as f64 / rate))
    }

    pub fn size(&self) -> usize {
        self.fixed.unwrap_or(self.size)
    }

    /// The reader got `bytes` after waiting `waited` for them.
    pub fn took(&mut self, bytes: usize, waited: Duration) {
        match self.since {
            // The wait for the very first bytes is the response's latency, not a sign that the
            // window is too small: the pace is measured from them on.
            None => {
                self.since = Some(Instant::now());
                self.first_bytes = self.since;
            }
            Some(_) => {
                self.waited += waited;
                self.taken += bytes as u64;
            }
        }
    }

    /// The reader finished a chunk of `chunk_size` bytes; `link` is where its chunks come from.
    ///
    /// From a distant upstream, during the first [`PACE_PERIOD`] (slow start) the window doubles
    /// with every chunk the reader had to wait for. After that it is decided once per period: a
    /// response is written in bursts (the client's socket fills, then drains), and a burst of
    /// chunks read at once, each waited for, does not make a reader the fetch cannot keep up
    /// with.
    pub fn chunk_done(&mut self, chunk_size: u64, link: Link) {
        let (Some(since), Some(first_bytes)) = (self.since, self.first_bytes) else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(since).as_secs_f64();
        let (waited, taken) = (self.waited.as_secs_f64(), self.taken);
        (self.since, self.waited, self.taken) = (Some(now), Duration::ZERO, 0);
        let slow_start = now.duration_since(first_bytes) < PACE_PERIOD
            && link.latency.is_some_and(|l| l >= SLOW_START_LATENCY);
        if slow_start && waited > STARVED_SHARE * elapsed {
            self.size = (self.size * 2).min(self.cap);
        }
        let period = self.period.get_or_insert(Period {
            start: since,
            taken: 0,
            waited: 0.0,
            chunks: 0,
        });
        period.taken += taken;
        period.waited += waited;
        period.chunks += 1;
        let length = now.duration_since(period.start).as_secs_f64();
        // A period spent waiting lasts at least half a window of chunks: where the window's
        // chunks share a capped upstream they arrive together, after one long wait, and are
        // then read at once; the rate is the one over both, not the wait's alone (one chunk a
        // second) or the burst's (memory speed).
        let waiting = period.waited > STARVED_SHARE * length;
        if length < PACE_PERIOD.as_secs_f64() || (waiting && period.chunks < self.size / 2) {
            return;
        }
        let Period { taken, waited, .. } = *period;
        self.period = None;
        let rate = taken as f64 / length;
        if waited > STARVED_SHARE * length {
            // Never narrower than the connections that carry this rate at what one of them
            // carries on its own, plus the chunk being read: trying fewer would only cost a
            // period at a lower rate.
            let floor = (link.per_connection())
                .map_or(MIN_WINDOW, |one| (rate / one).ceil() as usize + 1)
                .clamp(MIN_WINDOW, self.cap);
            (self.climb, self.size) = self.climb.next(self.size, rate, floor, self.cap);
        } else if let Some(fetch_time) = link.fetch_time(chunk_size) {
            // The reader did not wait: the window is wide enough, and its pace says how much
            // narrower it may be. Never wider: a reader draining chunks that arrived together
            // (they share a capped upstream, so they complete at about the same moment) reads
            // at memory speed for a while, which is not a pace the upstream can keep.
            self.climb = Climb::Start;
            let in_flight = 1.5 * rate * fetch_time / chunk_size as f64;
            let needed = (in_flight.ceil() as usize + 1).clamp(MIN_WINDOW, self.cap);
            self.size = needed.min(self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn fetch_time_is_latency_plus_a_chunk_at_connection_speed() {
        let link = Link {
            latency: Some(0.05),
            throughput: Some(100.0 * MI as f64),
            ..Link::default()
        };
        let t = link.fetch_time(2 * MI).unwrap();
        assert!((t - 0.07).abs() < 1e-9, "{t}");
        assert_eq!(Link::default().fetch_time(MI), None);
    }

    #[test]
    fn estimates_are_moving_averages_per_source_kind() {
        let links = LinkEstimates::default();
        links.observe_latency(SourceKind::Upstream, Duration::from_millis(100));
        let l = links.observe_latency(SourceKind::Upstream, Duration::from_millis(20));
        assert!((l.latency.unwrap() - 0.08).abs() < 1e-9);
        links.observe_transfer(SourceKind::Peer, MI, Duration::from_millis(10));
        assert_eq!(links.get(SourceKind::Upstream).throughput, None);
        assert!(links.get(SourceKind::Peer).throughput.unwrap() > 99.0 * MI as f64);
        assert_eq!(links.get(SourceKind::Disk), links.get(SourceKind::Upstream));
        // Through the cluster the slower link counts; a peer serving others uses the upstream's.
        links.observe_latency(SourceKind::Peer, Duration::from_millis(200));
        assert_eq!(links.for_route(Route::Cluster), links.get(SourceKind::Peer));
        assert_eq!(
            links.for_route(Route::LocalOnly),
            links.get(SourceKind::Upstream)
        );
    }

    #[test]
    fn a_waiting_reader_doubles_the_window_up_to_the_cap() {
        let far = Link {
            latency: Some(0.05),
            throughput: None,
            ..Link::default()
        };
        let mut w = FetchWindow::new(None, 20, MI, Link::default());
        assert_eq!(w.size(), INITIAL_WINDOW);
        w.took(1, Duration::from_millis(50));
        for expected in [16, 20, 20] {
            std::thread::sleep(Duration::from_millis(1));
            w.took(MI as usize, Duration::from_secs(10));
            w.chunk_done(MI, far);
            assert_eq!(w.size(), expected);
        }
    }

    /// A window of up to 32 chunks of a response whose first bytes arrived.
    fn reading(link: Link) -> FetchWindow {
        let mut w = FetchWindow::new(None, 32, MI, link);
        w.took(1, Duration::ZERO);
        w
    }

    /// One pace period in which the reader took `bytes`, waiting most of the time.
    fn waiting_period(w: &mut FetchWindow, bytes: usize, link: Link) {
        std::thread::sleep(PACE_PERIOD + Duration::from_millis(10));
        // Half a window of chunks, the last of which ends the period.
        let chunks = (w.size() / 2).max(1);
        for _ in 0..chunks {
            w.took(bytes / chunks, Duration::from_secs(10));
            w.chunk_done(MI, link);
        }
    }

    #[test]
    fn near_a_wider_window_is_kept_only_if_it_delivers_more_and_narrower_ones_are_tried() {
        let near = Link {
            latency: Some(0.001),
            throughput: Some(500.0 * MI as f64),
            ..Link::default()
        };
        let mut w = reading(Link::default());
        waiting_period(&mut w, 100 * MI as usize, near);
        assert_eq!(w.size(), 16, "no slow start near, but a probe");
        // Twice the window, no more bytes: half the first one is tried next, then half that.
        waiting_period(&mut w, 100 * MI as usize, near);
        assert_eq!(w.size(), INITIAL_WINDOW / 2);
        waiting_period(&mut w, 100 * MI as usize, near);
        assert_eq!(w.size(), INITIAL_WINDOW / 4);
        // Two chunks in flight deliver half as much: back to four, and it stays.
        waiting_period(&mut w, 50 * MI as usize, near);
        assert_eq!(w.size(), INITIAL_WINDOW / 2);
        waiting_period(&mut w, 50 * MI as usize, near);
        assert_eq!(w.size(), INITIAL_WINDOW / 2);
    }

    #[test]
    fn narrowing_stops_at_the_connections_the_rate_needs() {
        // 50 MiB/s per connection and the reader getting 200 MiB/s: four connections carry it,
        // five chunks in flight with the one being read; two would deliver half as much.
        let capped = Link {
            latency: Some(0.001),
            throughput: Some(50.0 * MI as f64),
            peak_throughput: Some(50.0 * MI as f64),
        };
        let mut w = reading(Link::default());
        let period = (200.0 * MI as f64 * (PACE_PERIOD.as_secs_f64() + 0.01)) as usize;
        waiting_period(&mut w, period, capped);
        assert_eq!(w.size(), 16);
        // Back from 16, narrower: five (four if this thread slept long and the rate looks
        // lower), and there it stays; without the floor it would try two next.
        waiting_period(&mut w, period, capped);
        let found = w.size();
        assert!((4..8).contains(&found), "{found}");
        waiting_period(&mut w, period, capped);
        assert_eq!(w.size(), found);
    }

    #[test]
    fn a_wider_window_that_delivers_more_grows_on() {
        let near = Link {
            latency: Some(0.001),
            throughput: Some(50.0 * MI as f64),
            ..Link::default()
        };
        let mut w = reading(Link::default());
        waiting_period(&mut w, 10 * MI as usize, near);
        waiting_period(&mut w, 20 * MI as usize, near);
        assert_eq!(w.size(), 32);
    }

    #[test]
    fn a_slow_reader_shrinks_the_window_to_its_bandwidth_delay_product() {
        let link = Link {
            latency: Some(0.01),
            throughput: Some(1000.0 * MI as f64),
            ..Link::default()
        };
        let mut w = reading(Link::default());
        // A chunk per ~100 ms, never waiting: 10 MiB/s × 11 ms ≈ a tenth of a chunk in flight.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(100));
            w.took(MI as usize, Duration::ZERO);
            w.chunk_done(MI, link);
        }
        assert_eq!(w.size(), MIN_WINDOW);
        // Far away (1 s), the same reader needs many chunks in flight: from the whole window
        // it keeps more than near.
        let far = Link {
            latency: Some(1.0),
            ..link
        };
        let mut w = reading(far);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(100));
            w.took(MI as usize, Duration::ZERO);
            w.chunk_done(MI, far);
        }
        assert!(w.size() > INITIAL_WINDOW, "{}", w.size());
    }

    #[test]
    fn a_burst_does_not_pass_for_the_reader_s_pace() {
        let link = Link {
            latency: Some(0.01),
            throughput: Some(1000.0 * MI as f64),
            ..Link::default()
        };
        let mut w = reading(Link::default());
        // A socket drained: one chunk after 300 ms, then four at once.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            w.took(MI as usize, Duration::ZERO);
            w.chunk_done(MI, link);
        }
        assert_eq!(w.size(), MIN_WINDOW);
    }

    #[test]
    fn a_known_latency_bound_link_starts_with_the_whole_window() {
        let far = Link {
            latency: Some(0.05),
            throughput: Some(200.0 * MI as f64),
            ..Link::default()
        };
        // 50 ms × 200 MiB/s = 10 MiB: ten chunks would fit in one round trip.
        assert_eq!(FetchWindow::new(None, 32, MI, far).size(), 32);
        let near = Link {
            latency: Some(0.002),
            ..far
        };
        assert_eq!(FetchWindow::new(None, 32, MI, near).size(), INITIAL_WINDOW);
        assert_eq!(
            FetchWindow::new(None, 32, MI, Link::default()).size(),
            INITIAL_WINDOW
        );
        assert_eq!(FetchWindow::new(Some(5), 32, MI, far).size(), 5);
        // The read-ahead starts once the first chunk had time to arrive: 1 MiB at 200 MiB/s.
        let w = FetchWindow::new(None, 32, MI, far);
        let head_start = w.head_start(MI, far).unwrap();
        assert!(
            (head_start.as_secs_f64() - 0.005).abs() < 1e-6,
            "{head_start:?}"
        );
        assert_eq!(w.head_start(MI, near), None);
        assert_eq!(
            FetchWindow::new(Some(5), 32, MI, far).head_start(MI, far),
            None
        );
    }

    #[test]
    fn a_fetch_sharing_a_capped_upstream_does_not_pass_for_the_link_s_speed() {
        let links = LinkEstimates::default();
        // Alone a connection carries 50 MiB/s; then 16 fetches share 200 MiB/s (12.5 each).
        links.observe_transfer(SourceKind::Upstream, 2 * MI, Duration::from_millis(40));
        let mut link = Link::default();
        for _ in 0..8 {
            link = links.observe_transfer(SourceKind::Upstream, 2 * MI, Duration::from_millis(160));
        }
        assert!(link.throughput.unwrap() < 17.0 * MI as f64, "{link:?}");
        assert!(link.peak_throughput.unwrap() > 30.0 * MI as f64, "{link:?}");
        // A reader taking 200 MiB/s from it, 5 ms away, not waiting: the window is what the
        // reader's pace needs over unshared connections (1.5 × 200 × (0.005 + 2 / 37) / 2 + 1
        // ≈ 10 with the peak decayed to ~37 MiB/s), not the ~21 the average (~16 MiB/s) would
        // make it (and wider on every period, as each fetch's share shrinks).
        let link = Link {
            latency: Some(0.005),
            ..link
        };
        let mut w = FetchWindow::new(None, 32, 2 * MI, link);
        w.took(1, Duration::ZERO);
        std::thread::sleep(PACE_PERIOD + Duration::from_millis(10));
        let taken = (200.0 * MI as f64 * (PACE_PERIOD.as_secs_f64() + 0.01)) as usize;
        w.took(taken, Duration::ZERO);
        w.chunk_done(2 * MI, link);
        assert!(w.size() <= 12, "{}", w.size());
    }

    #[test]
    fn a_cold_upstream_far_away_starts_with_the_whole_window() {
        // Nothing measured yet; the lookup that found the object took 50 ms to answer.
        let unmeasured = Link::default();
        let window = |link: Link, round_trip| {
            FetchWindow::new(None, 32, MI, link.or_round_trip(round_trip)).size()
        };
        assert_eq!(window(unmeasured, None), INITIAL_WINDOW);
        assert_eq!(window(unmeasured, Some(0.05)), 32);
        // Near (2 ms), or with the link measured already, or a fixed window: unchanged.
        assert_eq!(window(unmeasured, Some(0.002)), INITIAL_WINDOW);
        let measured = Link {
            latency: Some(0.001),
            throughput: Some(500.0 * MI as f64),
            ..Link::default()
        };
        assert_eq!(window(measured, Some(0.05)), INITIAL_WINDOW);
        let fixed = FetchWindow::new(Some(3), 32, MI, unmeasured.or_round_trip(Some(0.05)));
        assert_eq!(fixed.size(), 3);
    }

    #[test]
    fn readahead_fixes_the_window() {
        let mut w = FetchWindow::new(Some(3), 32, MI, Link::default());
        w.took(1, Duration::ZERO);
        w.took(MI as usize, Duration::from_secs(1));
        w.chunk_done(MI, Link::default());
        assert_eq!(w.size(), 3);
    }
}
