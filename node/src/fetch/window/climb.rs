//! The search for the narrowest window that delivers the most, while the reader waits on the
//! fetch (the link, not the reader, limits the response).
//!
//! Once per pace period the rate the reader got is compared with the previous period's: a wider
//! window is kept only if it delivered clearly more; when it did not, narrower windows are tried
//! in turn and kept while they deliver about as much. More fetches in parallel only help while
//! round trips or per-connection limits hold the bytes back. Where the upstream's capacity is
//! capped (a throttled uplink, an origin that does not scale past a few connections) or the
//! bytes are limited by CPU, every extra fetch takes its share of the same capacity, and the
//! chunk the reader waits for arrives later by as much (measured: with 31 chunks in flight
//! on a busy machine the chunk after the probe arrived 0.27 s after it was asked for, behind
//! the 30 others that shared the link with it, all complete at about the same moment).

/// A wider window is kept only if it delivered this much more than the narrower one.
const WIDER_GAIN: f64 = 1.15;
/// A narrower window is kept if it delivered at least this share of the best rate seen.
const NARROWER_KEEPS: f64 = 0.95;
/// A window found is tried again after this many periods of waiting at it: the upstream's
/// capacity and the machine's load change.
const RECHECK_PERIODS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Climb {
    /// Nothing measured at this size yet.
    Start,
    /// Trying a wider window than `from`, which delivered `rate`.
    Wider { from: usize, rate: f64 },
    /// Trying a narrower window than `from`; `best` is the most any size delivered so far.
    Narrower { from: usize, best: f64 },
    /// The window found; `periods` spent waiting at it since.
    Settled { periods: u32 },
}

impl Climb {
    /// The reader waited through a period at `size` and got `rate`: the next state and size,
    /// within `min..=cap`.
    pub(super) fn next(self, size: usize, rate: f64, min: usize, cap: usize) -> (Climb, usize) {
        let narrower = |from: usize, best: f64| match from > min {
            true => (Climb::Narrower { from, best }, (from / 2).max(min)),
            false => (Climb::Settled { periods: 0 }, from),
        };
        match self {
            Climb::Start if size < cap => (Climb::Wider { from: size, rate }, (size * 2).min(cap)),
            Climb::Start => narrower(size, rate),
            Climb::Wider { rate: before, .. } if rate >= WIDER_GAIN * before => match size < cap {
                true => (Climb::Wider { from: size, rate }, (size * 2).min(cap)),
                false => (Climb::Settled { periods: 0 }, size),
            },
            // Wider did not pay: back, and see whether narrower does as well.
            Climb::Wider { from, rate: before } => narrower(from, before.max(rate)),
            Climb::Narrower { best, .. } if rate >= NARROWER_KEEPS * best => {
                narrower(size, best.max(rate))
            }
            Climb::Narrower { from, .. } => (Climb::Settled { periods: 0 }, from),
            Climb::Settled { periods } if periods + 1 >= RECHECK_PERIODS => (Climb::Start, size),
            Climb::Settled { periods } => (
                Climb::Settled {
                    periods: periods + 1,
                },
                size,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs periods whose rate `rate_at(size)` gives; returns the sizes after each.
    fn run(start: usize, periods: usize, rate_at: impl Fn(usize) -> f64) -> Vec<usize> {
        let (mut climb, mut size) = (Climb::Start, start);
        (0..periods)
            .map(|_| {
                (climb, size) = climb.next(size, rate_at(size), 2, 32);
                size
            })
            .collect()
    }

    #[test]
    fn a_capped_link_settles_on_the_narrowest_window_that_fills_it() {
        // 50 MB/s per fetch, 200 MB/s in all: four fetches fill it, wider ones only share it.
        let capped = |size: usize| (50.0 * size as f64).min(200.0);
        assert_eq!(run(8, 5, capped), [16, 4, 2, 4, 4]);
    }

    #[test]
    fn a_link_that_gets_slower_with_more_fetches_narrows_within_a_few_periods() {
        // Four fetches fill it; each one beyond costs a little of the total (contention).
        let contended =
            |size: usize| (50.0 * size as f64).min(200.0) - 5.0 * size.saturating_sub(4) as f64;
        let sizes = run(8, 4, contended);
        assert_eq!(sizes[..3], [16, 4, 2]);
        assert_eq!(sizes[3], 4, "two fetches deliver only 100");
    }

    #[test]
    fn wider_is_kept_while_it_delivers_clearly_more() {
        let round_trips = |size: usize| 10.0 * size as f64;
        assert_eq!(run(8, 3, round_trips), [16, 32, 32]);
    }

    #[test]
    fn from_the_cap_narrower_is_tried_and_given_up_when_it_delivers_less() {
        let round_trips = |size: usize| 10.0 * size as f64;
        assert_eq!(run(32, 2, round_trips), [16, 32]);
    }

    #[test]
    fn a_settled_window_is_tried_again_after_a_while() {
        let capped = |size: usize| (50.0 * size as f64).min(200.0);
        let sizes = run(8, 4 + RECHECK_PERIODS as usize + 1, capped);
        assert!(sizes[4..4 + RECHECK_PERIODS as usize]
            .iter()
            .all(|s| *s == 4));
        assert_eq!(sizes.last(), Some(&8), "a new probe wider: {sizes:?}");
    }
}
