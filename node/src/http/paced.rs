//! The client connection's stream, which limits the bytes its socket queues unsent only while a
//! long response is being written.
//!
//! `TCP_NOTSENT_LOWAT` keeps a long response from filling the socket's send buffer, which the
//! kernel grows up to `tcp_wmem`'s maximum (4 MiB): without it every byte is copied long before
//! it can leave, and the copy is cold by the time it does. Measured (64 MiB hits over loopback,
//! `wrk`, 4–6 interleaved rounds against the default): 1.10× the throughput at 1 connection,
//! 1.13× at 16, 1.24× at 64. But the limit also cuts a short response into one system call per
//! 128 KiB, each ending in a push that wakes the client: 1 MiB hits went out in ~9 `writev`s
//! where Varnish makes one, and were 0.74–0.83× Varnish's throughput at 16 connections (servers
//! on one core, `wrk` on the other) against 0.99–1.00× written whole. So a response is written
//! unlimited for its first [`LONG_RESPONSE`] bytes and limited after; the next request (the
//! next bytes read) lifts the limit again. Two `setsockopt`s per long response, none for short.
//! It limits only bytes not yet sent, not those in flight, so a distant client's window still
//! opens as wide as its path needs.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Unsent bytes a connection's socket queues, once a response has run long, before it stops
/// taking more (`TCP_NOTSENT_LOWAT`).
pub const UNSENT_LOW_WATER: u32 = 128 * 1024;
/// Bytes written since the last request arrived after which the unsent bytes are limited: a
/// chunk, so a hit of up to a chunk goes out in one system call.
pub const LONG_RESPONSE: u64 = 2 * 1024 * 1024;

/// A client connection's stream (see the module's text).
pub struct Paced {
    stream: TcpStream,
    /// Bytes written since bytes were last read.
    written: u64,
    limited: bool,
}

impl Paced {
    pub fn new(stream: TcpStream) -> Self {
        Paced {
            stream,
            written: 0,
            limited: false,
        }
    }

    /// Best effort: a kernel that refuses leaves the connection as it was. `0` restores the
    /// system's default (`net.ipv4.tcp_notsent_lowat`).
    fn set_unsent_limit(&mut self, bytes: u32) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(&self.stream).set_tcp_notsent_lowat(bytes) {
            tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = bytes;
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if !self.limited && self.written >= LONG_RESPONSE {
            self.set_unsent_limit(UNSENT_LOW_WATER);
            self.limited = true;
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.written = 0;
            if self.limited {
                self.set_unsent_limit(0);
                self.limited = false;
            }
        }
        polled
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use crate::test_support::connected_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn unsent_limit(paced: &Paced) -> u32 {
        socket2::SockRef::from(&paced.stream)
            .tcp_notsent_lowat()
            .unwrap()
    }

    #[tokio::test]
    async fn only_a_long_response_is_limited_and_the_next_request_lifts_it() {
        let (mut client, server) = connected_pair().await;
        let mut paced = Paced::new(server);
        let default = unsent_limit(&paced);
        assert_ne!(default, UNSENT_LOW_WATER, "the kernel's default");
        // the client drains whatever arrives, so writes never stall
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            while total < 6 * 512 * 1024 {
                total += client.read(&mut buf).await.unwrap();
            }
            client.write_all(b"GET /next").await.unwrap();
            client
        });
        let piece = vec![7u8; 512 * 1024];
        for _ in 0..3 {
            paced.write_all(&piece).await.unwrap();
        }
        assert_eq!(
            unsent_limit(&paced),
            default,
            "1.5 MiB: still a short response"
        );
        for _ in 0..3 {
            paced.write_all(&piece).await.unwrap();
        }
        assert_eq!(unsent_limit(&paced), UNSENT_LOW_WATER, "3 MiB: a long one");
        let _client = drain.await.unwrap();
        let mut next = [0u8; 9];
        paced.read_exact(&mut next).await.unwrap();
        assert_eq!(unsent_limit(&paced), default, "the next request lifts it");
    }
}
