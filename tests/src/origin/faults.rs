//! Injected misbehaviour, per path, each optionally limited to the next n matching requests.

use std::time::Duration;

/// Extra bytes a `ContentLengthLie` declares beyond what is sent.
pub const CONTENT_LENGTH_LIE_EXTRA: u64 = 4096;
/// How far `WrongContentRange` moves the advertised range.
pub const WRONG_CONTENT_RANGE_SHIFT: u64 = 1;
/// How long `StallAfter` hangs (unless the origin shuts down first); long enough to trip any
/// sane read timeout, short enough that a forgotten stall still ends.
pub const STALL_DURATION: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (with a short text body) instead of the object.
    Status(u16),
    /// Close the connection without any response.
    Refuse,
    /// Send this many body bytes, then hang for [`STALL_DURATION`] (or until shutdown), then close.
    StallAfter(u64),
    /// Send this many body bytes, then close; `Content-Length` still announces the full body.
    TruncateAfter(u64),
    /// 206 with a `Content-Range` shifted by [`WRONG_CONTENT_RANGE_SHIFT`] bytes; the body is the
    /// requested range.
    WrongContentRange,
    /// Answer a `Range` request with at most this many bytes from its start (a valid, shorter
    /// 206, as gateways that cap range sizes send).
    CapRange(u64),
    /// Answer 200 with the full body to a `Range` request.
    IgnoreRange,
    /// After n more range GETs (served from the current version), the object's version changes:
    /// new content, `ETag` and `Last-Modified`. `ChangeVersionAfter(0)` changes it at once.
    /// The `times` argument of `set_fault` is ignored for this fault.
    ChangeVersionAfter(u32),
    /// Declare a `Content-Length` [`CONTENT_LENGTH_LIE_EXTRA`] bytes larger than what is sent
    /// (HEAD and GET by default).
    ContentLengthLie,
    /// HEAD answers this status.
    HeadStatus(u16),
    /// Wait this long before sending the response headers.
    Delay(Duration),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// All GETs, with or without `Range`.
    Gets,
    /// GETs that carry a `Range` header.
    RangeGets,
    /// GETs without a `Range` header.
    FullGets,
    Heads,
    /// GET and HEAD.
    All,
}

impl Fault {
    /// HEAD is unaffected unless the fault is about HEAD.
    pub fn default_scope(&self) -> FaultScope {
        match self {
            Fault::HeadStatus(_) => FaultScope::Heads,
            Fault::ContentLengthLie => FaultScope::All,
            Fault::ChangeVersionAfter(_)
            | Fault::WrongContentRange
            | Fault::IgnoreRange
            | Fault::CapRange(_) => FaultScope::RangeGets,
            _ => FaultScope::Gets,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Head,
    FullGet,
    RangeGet,
}

impl FaultScope {
    fn matches(self, kind: RequestKind) -> bool {
        matches!(
            (self, kind),
            (FaultScope::All, _)
                | (
                    FaultScope::Gets,
                    RequestKind::FullGet | RequestKind::RangeGet
                )
                | (FaultScope::RangeGets, RequestKind::RangeGet)
                | (FaultScope::FullGets, RequestKind::FullGet)
                | (FaultScope::Heads, RequestKind::Head)
        )
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FaultRule {
    pub fault: Fault,
    pub scope: FaultScope,
    /// `None`: until cleared.
    pub remaining: Option<u32>,
}

/// The faults that fired for one request, merged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub fired: u64,
    pub status: Option<u16>,
    pub head_status: Option<u16>,
    pub refuse: bool,
    pub stall_after: Option<u64>,
    pub truncate_after: Option<u64>,
    pub wrong_content_range: bool,
    pub ignore_range: bool,
    pub cap_range: Option<u64>,
    pub content_length_lie: bool,
    pub delay: Duration,
    /// Change the version once this request has taken its snapshot.
    pub bump_version: bool,
}

/// Fires every rule matching `kind`, decrementing and dropping exhausted ones.
pub(crate) fn take(rules: &mut Vec<FaultRule>, kind: RequestKind) -> Applied {
    let mut applied = Applied::default();
    rules.retain_mut(|rule| {
        if !rule.scope.matches(kind) {
            return true;
        }
        applied.fired += 1;
        if let Fault::ChangeVersionAfter(n) = &mut rule.fault {
            *n = n.saturating_sub(1);
            if *n == 0 {
                applied.bump_version = true;
                return false;
            }
            return true;
        }
        match &rule.fault {
            Fault::Status(s) => applied.status = Some(*s),
            Fault::HeadStatus(s) => applied.head_status = Some(*s),
            Fault::Refuse => applied.refuse = true,
            Fault::StallAfter(n) => applied.stall_after = Some(*n),
            Fault::TruncateAfter(n) => applied.truncate_after = Some(*n),
            Fault::WrongContentRange => applied.wrong_content_range = true,
            Fault::IgnoreRange => applied.ignore_range = true,
            Fault::CapRange(n) => applied.cap_range = Some((*n).max(1)),
            Fault::ContentLengthLie => applied.content_length_lie = true,
            Fault::Delay(d) => applied.delay += *d,
            Fault::ChangeVersionAfter(_) => unreachable!("handled above"),
        }
        match &mut rule.remaining {
            None => true,
            Some(n) => {
                *n = n.saturating_sub(1);
                *n > 0
            }
        }
    });
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_scopes() {
        let mut rules = vec![
            FaultRule {
                fault: Fault::Status(503),
                scope: FaultScope::Gets,
                remaining: Some(2),
            },
            FaultRule {
                fault: Fault::HeadStatus(500),
                scope: FaultScope::Heads,
                remaining: None,
            },
        ];
        assert_eq!(take(&mut rules, RequestKind::RangeGet).status, Some(503));
        assert_eq!(take(&mut rules, RequestKind::Head).head_status, Some(500));
        assert_eq!(take(&mut rules, RequestKind::FullGet).status, Some(503));
        assert_eq!(take(&mut rules, RequestKind::FullGet).status, None);
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn change_version_after_n() {
        let mut rules = vec![FaultRule {
            fault: Fault::ChangeVersionAfter(2),
            scope: FaultScope::RangeGets,
            remaining: None,
        }];
        assert!(!take(&mut rules, RequestKind::FullGet).bump_version);
        assert!(!take(&mut rules, RequestKind::RangeGet).bump_version);
        assert!(take(&mut rules, RequestKind::RangeGet).bump_version);
        assert!(rules.is_empty());
    }
}
