//! What can go wrong asking the upstream, and what a client is told of it.

use http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Connect(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("object changed upstream: {0}")]
    Changed(String),
    #[error("upstream sent an invalid range response: {0}")]
    BadRange(String),
    #[error("upstream body ended after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("upstream body longer than the {expected} bytes announced")]
    TooLong { expected: u64 },
    #[error("upstream transfer failed: {0}")]
    Transfer(String),
    /// The request target would leave the upstream base URL; nothing was sent.
    #[error("refused request target: {0}")]
    BadTarget(String),
}

impl UpstreamError {
    /// Status a client gets when this happens before response headers were sent.
    pub fn client_status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::BadTarget(_) => StatusCode::BAD_REQUEST,
            // The upstream's own failure or refusal to serve now (a chunk's range fetch answered
            // 503, 429) is passed on as it said it, so clients back off or retry as they would
            // asking it directly; anything else it answered is the gateway's 502.
            UpstreamError::Status(code @ (429 | 500..=599)) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The upstream could not be reached or stopped answering (as opposed to answering with an
    /// error status).
    pub fn is_disconnection(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::Timeout | UpstreamError::Transfer(_)
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Status(_) => "status",
            UpstreamError::Changed(_) => "changed",
            UpstreamError::BadRange(_) => "bad_range",
            UpstreamError::Truncated { .. } => "truncated",
            UpstreamError::TooLong { .. } => "too_long",
            UpstreamError::Transfer(_) => "transfer",
            UpstreamError::BadTarget(_) => "bad_target",
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else if e.is_connect() {
            UpstreamError::Connect(error_chain(&e))
        } else {
            UpstreamError::Transfer(error_chain(&e))
        }
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); logs need the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_told_the_upstream_s_failures_as_it_said_them() {
        let status = |e: UpstreamError| e.client_status().as_u16();
        assert_eq!(status(UpstreamError::Status(503)), 503);
        assert_eq!(status(UpstreamError::Status(500)), 500);
        assert_eq!(status(UpstreamError::Status(429)), 429);
        // What the node asked for was not what it got: its own failure as a gateway.
        assert_eq!(status(UpstreamError::Status(416)), 502);
        assert_eq!(status(UpstreamError::Status(403)), 502);
        assert_eq!(status(UpstreamError::Status(302)), 502);
        assert_eq!(status(UpstreamError::Timeout), 504);
        assert_eq!(status(UpstreamError::Connect("refused".into())), 502);
    }
}
