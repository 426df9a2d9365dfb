//! Whether a stored copy may answer a request now: the one place where freshness is judged, for
//! copies found in memory, on disk or at a peer alike.
//!
//! How long a response stays fresh is computed once, when it is stored (`freshness.rs`, RFC 9111
//! §4.2.1); here a stored copy is judged against the clock and the request's own directives:
//! fresh (§4.2), the client's `max-age`/`min-fresh`/`no-cache`/`max-stale` (§5.2.1),
//! `stale-while-revalidate` and `stale-if-error` (RFC 5861), serving stale never under
//! `no-cache`/`must-revalidate` (§4.2.4), and `immutable` (RFC 8246).

use super::ClientDemands;
use crate::object::ObjectMeta;

/// What may be done with a stored copy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Fresh, and the request accepts it as it is.
    Fresh,
    /// Stale, and the client's `max-stale` accepts it: served without asking the upstream.
    StaleOnRequest,
    /// Stale within `stale-while-revalidate`: served now and confirmed in the background.
    StaleWhileRevalidate,
    /// To be confirmed with the upstream before it is served (a `304` keeps it and every chunk).
    /// `requested`: the copy is fresh and only the request's own directives ask for it.
    Revalidate { requested: bool },
    /// Past any use: not even worth a conditional request.
    Gone,
}

/// The verdict on `meta` at `now` for a request that demands `demands`.
pub fn usable(meta: &ObjectMeta, now: u64, demands: &ClientDemands) -> Usable {
    if now >= meta.keep_until() {
        return Usable::Gone;
    }
    if is_fresh(meta, now) {
        return match accepted_as_stored(meta, now, demands) {
            true => Usable::Fresh,
            false => Usable::Revalidate { requested: true },
        };
    }
    if stale_accepted_by_client(meta, now, demands) {
        return Usable::StaleOnRequest;
    }
    let within_swr = now < meta.fresh_until.saturating_add(meta.stale_while_revalidate);
    if !meta.no_cache && within_swr && accepted_as_stored(meta, now, demands) {
        return Usable::StaleWhileRevalidate;
    }
    Usable::Revalidate { requested: false }
}

/// Whether `meta` is fresh (§4.2), ignoring what any request asks: `no-cache` responses never are.
pub fn is_fresh(meta: &ObjectMeta, now: u64) -> bool {
    now < meta.fresh_until && !meta.no_cache
}

/// Whether a stale `meta` may stand in for an upstream that failed: within the response's
/// `stale-if-error`, or — while the upstream cannot be reached at all — within
/// `disconnected_grace` (`--stale-if-error`); never under `must-revalidate`.
pub fn serves_on_failure(
    meta: &ObjectMeta,
    now: u64,
    disconnected: bool,
    disconnected_grace: u64,
) -> bool {
    let grace = match disconnected {
        true => meta.stale_if_error.max(disconnected_grace),
        false => meta.stale_if_error,
    };
    !meta.must_revalidate && now < meta.fresh_until.saturating_add(grace)
}

/// Whether the request's `no-cache`, `max-age` and `min-fresh` let `meta` answer it as stored.
fn accepted_as_stored(meta: &ObjectMeta, now: u64, demands: &ClientDemands) -> bool {
    // An immutable object has nothing to confirm while fresh (RFC 8246 §2.1).
    if meta.immutable && is_fresh(meta, now) {
        return true;
    }
    !demands.no_cache
        && demands.max_age.is_none_or(|max| meta.age(now) <= max)
        && meta.fresh_until.saturating_sub(now) >= demands.min_fresh
}

/// §5.2.1.1: a client's `max-stale` accepts a stale copy by up to its argument, unless the
/// response forbids serving it stale (§4.2.4) or the request's other directives want it younger.
fn stale_accepted_by_client(meta: &ObjectMeta, now: u64, demands: &ClientDemands) -> bool {
    let Some(max_stale) = demands.max_stale else {
        return false;
    };
    let other_demands_hold = !demands.no_cache
        && demands.min_fresh == 0
        && demands.max_age.is_none_or(|max| meta.age(now) <= max);
    other_demands_hold
        && !meta.no_cache
        && !meta.must_revalidate
        && now.saturating_sub(meta.fresh_until) <= max_stale
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn demands(cache_control: &str) -> ClientDemands {
        let mut headers = HeaderMap::new();
        if !cache_control.is_empty() {
            headers.insert(http::header::CACHE_CONTROL, cache_control.parse().unwrap());
        }
        ClientDemands::from_headers(&headers)
    }

    /// Stored at t=1000 with Age 5, fresh until t=1100, 30 s of stale-while-revalidate.
    fn meta() -> ObjectMeta {
        let mut m = crate::test_support::object_meta("/a", 10, 10);
        m.fetched_at = 1000;
        m.initial_age = 5;
        m.fresh_until = 1100;
        m.stale_while_revalidate = 30;
        m
    }

    #[test]
    fn a_fresh_copy_answers_unless_the_request_wants_it_confirmed() {
        let m = meta();
        assert_eq!(usable(&m, 1050, &demands("")), Usable::Fresh);
        let confirm = Usable::Revalidate { requested: true };
        assert_eq!(usable(&m, 1050, &demands("no-cache")), confirm);
        assert_eq!(usable(&m, 1050, &demands("max-age=55")), Usable::Fresh);
        assert_eq!(usable(&m, 1050, &demands("max-age=54")), confirm);
        assert_eq!(usable(&m, 1050, &demands("min-fresh=50")), Usable::Fresh);
        assert_eq!(usable(&m, 1050, &demands("min-fresh=51")), confirm);
    }

    #[test]
    fn an_immutable_fresh_copy_is_never_confirmed_on_request() {
        let m = ObjectMeta {
            immutable: true,
            ..meta()
        };
        assert_eq!(usable(&m, 1050, &demands("no-cache")), Usable::Fresh);
        // Stale, immutable says nothing.
        assert_eq!(
            usable(&m, 1200, &demands("no-cache")),
            Usable::Revalidate { requested: false }
        );
    }

    #[test]
    fn stale_while_revalidate_serves_within_its_window_unless_the_request_objects() {
        let m = meta();
        assert_eq!(usable(&m, 1110, &demands("")), Usable::StaleWhileRevalidate);
        assert_eq!(
            usable(&m, 1110, &demands("no-cache")),
            Usable::Revalidate { requested: false }
        );
        assert_eq!(
            usable(&m, 1130, &demands("")),
            Usable::Revalidate { requested: false }
        );
        let no_cache = ObjectMeta {
            no_cache: true,
            ..meta()
        };
        assert_eq!(
            usable(&no_cache, 1050, &demands("")),
            Usable::Revalidate { requested: false }
        );
    }

    #[test]
    fn max_stale_accepts_a_stale_copy_unless_the_response_forbids_it() {
        let m = meta();
        assert_eq!(
            usable(&m, 1200, &demands("max-stale=100")),
            Usable::StaleOnRequest
        );
        assert_eq!(
            usable(&m, 1200, &demands("max-stale")),
            Usable::StaleOnRequest
        );
        assert_ne!(
            usable(&m, 1201, &demands("max-stale=100")),
            Usable::StaleOnRequest
        );
        let strict = ObjectMeta {
            must_revalidate: true,
            ..meta()
        };
        assert_ne!(
            usable(&strict, 1200, &demands("max-stale")),
            Usable::StaleOnRequest
        );
        assert_ne!(
            usable(&m, 1200, &demands("max-stale, no-cache")),
            Usable::StaleOnRequest
        );
    }

    #[test]
    fn a_copy_past_keeping_is_gone() {
        let m = meta();
        assert_eq!(usable(&m, m.keep_until(), &demands("")), Usable::Gone);
        assert_eq!(
            usable(&m, m.keep_until(), &demands("max-stale")),
            Usable::Gone
        );
    }

    #[test]
    fn stale_if_error_and_the_disconnected_grace() {
        let m = ObjectMeta {
            stale_if_error: 60,
            ..meta()
        };
        assert!(serves_on_failure(&m, 1150, false, 0));
        assert!(!serves_on_failure(&m, 1160, false, 0));
        assert!(serves_on_failure(&m, 1160, true, 300));
        let strict = ObjectMeta {
            must_revalidate: true,
            ..m
        };
        assert!(!serves_on_failure(&strict, 1101, true, 300));
    }
}
