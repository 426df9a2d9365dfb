//! One request against the origin: lookup, faults, preconditions, ranges, response.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{self, Body, BodyPlan, BoxError};
use super::faults::{self, RequestKind, CONTENT_LENGTH_LIE_EXTRA, WRONG_CONTENT_RANGE_SHIFT};
use super::spec::ObjectState;
use super::Shared;

/// Outcome of parsing a `Range` header against an object length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeReq {
    /// Absent, malformed or multi-range: served as a full 200 (RFC 9110 allows ignoring).
    Ignore,
    /// Inclusive `(start, end)`, clamped to the object.
    Single(u64, u64),
    Unsatisfiable,
}

pub(crate) fn parse_range(value: &str, len: u64) -> RangeReq {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeReq::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeReq::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            None => RangeReq::Ignore,
            Some(0) => RangeReq::Unsatisfiable,
            Some(_) if len == 0 => RangeReq::Unsatisfiable,
            Some(n) => RangeReq::Single(len - n.min(len), len - 1),
        },
        (false, true) => match num(a) {
            None => RangeReq::Ignore,
            Some(s) if s >= len => RangeReq::Unsatisfiable,
            Some(s) => RangeReq::Single(s, len - 1),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeReq::Unsatisfiable
                } else {
                    RangeReq::Single(s, e.min(len - 1))
                }
            }
            _ => RangeReq::Ignore,
        },
        (true, true) => RangeReq::Ignore,
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    header_str(headers, name).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// Entity-tags in a list header; `*` is returned as itself.
fn tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn strong_match(current: Option<&str>, tag: &str) -> bool {
    tag == "*"
        || current.is_some_and(|c| !c.starts_with("W/") && !tag.starts_with("W/") && c == tag)
}

fn weak_match(current: Option<&str>, tag: &str) -> bool {
    let strip = |t: &str| t.trim_start_matches("W/").to_string();
    tag == "*" || current.is_some_and(|c| strip(c) == strip(tag))
}

/// RFC 9110 §13.2.2 order: If-Match, else If-Unmodified-Since (412); then If-None-Match,
/// else If-Modified-Since (304).
fn preconditions(
    headers: &HeaderMap,
    obj: &ObjectState,
    is_get_or_head: bool,
) -> Option<StatusCode> {
    let etag = obj.etag();
    let modified = obj.spec.last_modified.then_some(obj.modified);
    if let Some(v) = header_str(headers, header::IF_MATCH) {
        if !tags(v).any(|t| strong_match(etag.as_deref(), t)) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(m)) = (date(headers, header::IF_UNMODIFIED_SINCE), modified) {
        if m > since {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(v) = header_str(headers, header::IF_NONE_MATCH) {
        if tags(v).any(|t| weak_match(etag.as_deref(), t)) {
            return Some(if is_get_or_head {
                StatusCode::NOT_MODIFIED
            } else {
                StatusCode::PRECONDITION_FAILED
            });
        }
    } else if let (Some(since), Some(m)) = (date(headers, header::IF_MODIFIED_SINCE), modified) {
        if is_get_or_head && m <= since {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// `If-Range`: the range applies only if the validator still matches (strongly).
fn if_range_holds(headers: &HeaderMap, obj: &ObjectState) -> bool {
    let Some(v) = header_str(headers, header::IF_RANGE) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        strong_match(obj.etag().as_deref(), v)
    } else {
        obj.last_modified().is_some_and(|lm| lm == v)
    }
}

/// Headers every answer about the object carries (200, 206, 304, 412, 416, HEAD).
fn base(obj: &ObjectState, status: StatusCode) -> http::response::Builder {
    let spec = &obj.spec;
    let mut b = Response::builder()
        .status(status)
        .header(header::DATE, httpdate::fmt_http_date(SystemTime::now()));
    if let Some(e) = obj.etag() {
        b = b.header(header::ETAG, e);
    }
    if let Some(lm) = obj.last_modified() {
        b = b.header(header::LAST_MODIFIED, lm);
    }
    if let Some(cc) = &spec.cache_control {
        b = b.header(header::CACHE_CONTROL, cc);
    }
    if let Some(ct) = &spec.content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    if let Some(ce) = &spec.content_encoding {
        b = b.header(header::CONTENT_ENCODING, ce);
    }
    if let Some(v) = &spec.vary {
        b = b.header(header::VARY, v);
    }
    if spec.set_cookie {
        b = b.header(header::SET_COOKIE, "session=test-origin; Path=/");
    }
    b = b.header(
        header::ACCEPT_RANGES,
        if spec.accept_ranges_none {
            "none"
        } else {
            "bytes"
        },
    );
    for (k, v) in &spec.extra_headers {
        // As bytes: a test may send octets past ASCII (obs-text, a raw UTF-8 filename).
        b = b.header(
            k.as_str(),
            header::HeaderValue::from_bytes(v.as_bytes()).expect("field value"),
        );
    }
    b
}

fn plain(status: u16, text: &str) -> Result<Response<Body>, BoxError> {
    Ok(Response::builder()
        .status(status)
        .header(header::DATE, httpdate::fmt_http_date(SystemTime::now()))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body::text(text.to_string()))?)
}

/// What the handler needs to know of a request besides its headers.
struct Asked {
    method: Method,
    has_range: bool,
}

impl Asked {
    fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// The object a request found, what the fault rules did to it, and its key in the stats.
struct Found {
    key: String,
    obj: ObjectState,
    applied: faults::Applied,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let asked = Asked {
        method: req.method().clone(),
        has_range: req.headers().contains_key(header::RANGE),
    };
    let found = match look_up(&shared, &req, &asked)? {
        Ok(found) => found,
        Err(answered) => return Ok(answered),
    };
    if found.applied.fired > 0 {
        let fired = found.applied.fired;
        shared.stats.update(&found.key, |s| s.faults_fired += fired);
    }
    // Counted from arrival, so requests waiting out the latency show as concurrent too.
    let in_flight = (asked.method == Method::GET).then(|| shared.stats.in_flight(&found.key));
    if let Some(answered) = before_the_body(&shared, req.headers(), &asked, &found).await? {
        return Ok(answered);
    }
    respond(&shared, req.headers(), &asked, found, in_flight)
}

/// Under one lock: the request is counted, and the object, the faults that apply and the
/// version change they trigger are taken together (atomic with respect to other requests).
/// `Ok(Err(_))` is a request answered here (a write, a method not served, no such object).
fn look_up(
    shared: &Shared,
    req: &Request<Incoming>,
    asked: &Asked,
) -> Result<Result<Found, Response<Body>>, BoxError> {
    let mut state = shared.state.lock().unwrap();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let key = match state.objects.contains_key(pq) {
        true => pq,
        false => req.uri().path(),
    }
    .to_string();
    count(&shared.stats, &key, req, asked);
    let method = &asked.method;
    if matches!(
        *method,
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE
    ) && state.objects.contains_key(&key)
    {
        // A write the origin accepts (the object itself stays as configured).
        let spec = &state.objects[&key].spec;
        let mut res = plain(spec.write_status, "")?;
        for (name, value) in &spec.write_headers {
            res.headers_mut().append(
                header::HeaderName::from_bytes(name.as_bytes())?,
                header::HeaderValue::from_str(value)?,
            );
        }
        return Ok(Err(res));
    }
    if *method != Method::GET && !asked.is_head() {
        return Ok(Err(plain(405, "only GET and HEAD\n")?));
    }
    let Some(obj) = state.objects.get(&key).cloned() else {
        shared.stats.update(&key, |s| s.not_found += 1);
        return Ok(Err(plain(404, "no such object\n")?));
    };
    let kind = match (asked.is_head(), asked.has_range) {
        (true, _) => RequestKind::Head,
        (false, true) => RequestKind::RangeGet,
        (false, false) => RequestKind::FullGet,
    };
    let applied = state
        .faults
        .get_mut(&key)
        .map(|rules| faults::take(rules, kind))
        .unwrap_or_default();
    if applied.bump_version {
        if let Some(o) = state.objects.get_mut(&key) {
            o.bump();
        }
    }
    Ok(Ok(Found { key, obj, applied }))
}

fn count(stats: &super::stats::Registry, key: &str, req: &Request<Incoming>, asked: &Asked) {
    let headers = req.headers();
    let conditional = [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|h| headers.contains_key(h));
    let request_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let get = asked.method == Method::GET;
    stats.update(key, |s| {
        s.last_request_headers = request_headers.clone();
        s.requests += 1;
        s.head_requests += u64::from(asked.is_head());
        s.get_requests += u64::from(get);
        s.range_requests += u64::from(get && asked.has_range);
        s.conditional_requests += u64::from(conditional);
    });
}

/// The object's latency and any injected delay, then the answers that need no body: a
/// refused connection, an injected status, a missing authorization, a precondition.
async fn before_the_body(
    shared: &Shared,
    headers: &HeaderMap,
    asked: &Asked,
    found: &Found,
) -> Result<Option<Response<Body>>, BoxError> {
    let Found { key, obj, applied } = found;
    let latency = obj.spec.latency.unwrap_or_else(|| shared.default_latency());
    let delay = applied.delay + latency;
    if !delay.is_zero() {
        let mut rx = shared.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = body::shut_down(&mut rx) => {}
        }
    }
    if applied.refuse {
        // A service error makes hyper drop the connection without writing a response.
        return Err("test origin: refused".into());
    }
    let injected = match asked.is_head() {
        true => applied.head_status,
        false => applied.status,
    };
    if let Some(s) = injected {
        return Ok(Some(plain(s, "injected fault\n")?));
    }
    if let Some(expected) = &obj.spec.require_auth {
        if header_str(headers, header::AUTHORIZATION) != Some(expected.as_str()) {
            shared.stats.update(key, |s| s.unauthorized += 1);
            let mut r = plain(401, "authorization required\n")?;
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(Some(r));
        }
    }
    if let Some(status) = preconditions(headers, obj, true) {
        shared
            .stats
            .update(key, |s| match status == StatusCode::NOT_MODIFIED {
                true => s.not_modified += 1,
                false => s.precondition_failed += 1,
            });
        return Ok(Some(base(obj, status).body(body::empty())?));
    }
    Ok(None)
}

/// The object, whole or the range asked for (with the faults that bend either).
fn respond(
    shared: &Shared,
    headers: &HeaderMap,
    asked: &Asked,
    found: Found,
    in_flight: Option<super::stats::InFlight>,
) -> Result<Response<Body>, BoxError> {
    let Found { key, obj, applied } = found;
    let len = obj.spec.size;
    let range = if asked.is_head()
        || !asked.has_range
        || obj.spec.accept_ranges_none
        || applied.ignore_range
        || obj.spec.status != 200
        || !if_range_holds(headers, &obj)
    {
        RangeReq::Ignore
    } else {
        parse_range(header_str(headers, header::RANGE).unwrap_or(""), len)
    };
    let (status, start, end) = match range {
        RangeReq::Unsatisfiable => {
            shared.stats.update(&key, |s| s.range_not_satisfiable += 1);
            return Ok(base(&obj, StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(body::empty())?);
        }
        RangeReq::Single(s, e) => {
            let end = applied.cap_range.map_or(e + 1, |cap| (e + 1).min(s + cap));
            (StatusCode::PARTIAL_CONTENT, s, end)
        }
        RangeReq::Ignore => (StatusCode::from_u16(obj.spec.status)?, 0, len),
    };
    let no_body = matches!(status.as_u16(), 204 | 304);
    let mut builder = base(&obj, status);
    if status == StatusCode::PARTIAL_CONTENT {
        let (s, e) = content_range(start, end - 1, len, applied.wrong_content_range);
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{len}"));
    }
    let body_len = if no_body { 0 } else { end - start };
    if applied.content_length_lie {
        builder = builder.header(header::CONTENT_LENGTH, body_len + CONTENT_LENGTH_LIE_EXTRA);
    } else if !obj.spec.chunked && !no_body {
        builder = builder.header(header::CONTENT_LENGTH, body_len);
    }
    if asked.is_head() || no_body {
        return Ok(builder.body(body::empty())?);
    }
    shared.stats.update(&key, |s| {
        if status == StatusCode::PARTIAL_CONTENT {
            s.ranges.push((start, end - 1));
        } else if status == StatusCode::OK {
            s.full_gets += 1;
        }
    });
    let plan = BodyPlan {
        content: obj.content(),
        start,
        end,
        throttle: obj
            .spec
            .throttle_bytes_per_sec
            .or_else(|| shared.default_throttle()),
        capacity: shared.capacity.clone(),
        stall_after: applied.stall_after,
        truncate_after: applied.truncate_after,
    };
    let in_flight = in_flight.expect("only GETs reach the body");
    let stats = shared.stats.clone();
    Ok(builder.body(body::generated(
        plan,
        stats,
        &key,
        shared.shutdown.subscribe(),
        in_flight,
    ))?)
}

/// The `Content-Range` bounds to send for `start..=end`: the true ones, or (the
/// `wrong_content_range` fault) ones shifted off the bytes really sent.
fn content_range(start: u64, end: u64, len: u64, wrong: bool) -> (u64, u64) {
    match wrong {
        false => (start, end),
        true if end + WRONG_CONTENT_RANGE_SHIFT < len => (
            start + WRONG_CONTENT_RANGE_SHIFT,
            end + WRONG_CONTENT_RANGE_SHIFT,
        ),
        true => (
            start.saturating_sub(WRONG_CONTENT_RANGE_SHIFT),
            end.saturating_sub(WRONG_CONTENT_RANGE_SHIFT),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Single(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Single(90, 99));
        assert_eq!(parse_range("bytes=95-", 100), Single(95, 99));
        assert_eq!(parse_range("bytes=-10", 100), Single(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Single(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }
}
