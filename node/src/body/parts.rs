//! A body frame made of several buffers, and the stream adapter that builds such frames from
//! the buffers that are ready together.
//!
//! hyper writes a response in one `writev` per body frame it cannot buffer (its write queue is
//! bounded by the request-head limit), so a hit streamed as a chunk's stored parts (16 KiB,
//! 32 KiB, … 256 KiB) went out in one system call per part, each ending in a TCP push that
//! wakes the client. Handing hyper every part that is already there as one frame, without
//! copying, sends a stored chunk in one `writev`, as a server writing from one buffer would.
//! No crate offers a `Buf` over a list of `Bytes` with vectored reads (bytes' `Chain` joins two).

use std::{
    collections::VecDeque,
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use futures::Stream;

/// At most this many bytes go into one frame while a response is short (its first 2 MiB, a
/// chunk): a hit of up to a chunk is one `writev`.
const FRAME_BYTES: usize = 2 * 1024 * 1024;
/// ... and after that: a long response is written in pieces that the client reads while they
/// are still in the processor's cache (the size of a chunk's largest stored parts). Measured
/// (64 MiB hits, servers on one core, `wrk` on the other, 5 paired rounds each): 2 MiB frames
/// throughout were 0.87–0.89× the throughput of one stored part a frame at 1 and 16
/// connections; 256 KiB frames after the first 2 MiB, 0.96–1.07× (within the spread).
const LONG_FRAME_BYTES: usize = 256 * 1024;
/// At most this many buffers go into one frame (hyper hands the kernel up to 64 at a time).
const FRAME_PARTS: usize = 64;

/// Consecutive buffers read as one (`Buf`), in order, without copying.
#[derive(Debug, Default)]
pub struct Parts {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Parts {
    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.remaining += bytes.len();
            self.parts.push_back(bytes);
        }
    }

    fn is_full(&self, bytes: usize) -> bool {
        self.remaining >= bytes || self.parts.len() >= FRAME_PARTS
    }
}

impl From<Bytes> for Parts {
    fn from(bytes: Bytes) -> Self {
        let mut parts = Parts::default();
        parts.push(bytes);
        parts
    }
}

impl Buf for Parts {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the parts");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("bytes remain");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(self.parts.iter()) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        // the whole front buffer, or a slice of it, without a copy (hyper's HTTP/2 path asks)
        match self.parts.front_mut() {
            Some(front) if len <= front.len() => {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.parts.pop_front();
                }
                self.remaining -= len;
                out
            }
            _ => {
                assert!(
                    len <= self.remaining,
                    "copy_to_bytes past the end of the parts"
                );
                let mut out = bytes::BytesMut::with_capacity(len);
                out.put((&mut *self).take(len));
                out.freeze()
            }
        }
    }
}

/// Yields, as one [`Parts`] frame, every buffer its stream has ready when asked (up to
/// [`FRAME_BYTES`]): a stored chunk's parts become one frame, while bytes still arriving from
/// a source go out as they come (nothing waits for more). An error is yielded after the buffers
/// that came before it.
pub struct ReadyBatches<S, E> {
    inner: S,
    /// An error that ended the last batch, yielded next.
    failed: Option<E>,
    ended: bool,
    /// Bytes yielded so far.
    yielded: usize,
}

impl<S, E> ReadyBatches<S, E> {
    pub fn new(inner: S) -> Self {
        ReadyBatches {
            inner,
            failed: None,
            ended: false,
            yielded: 0,
        }
    }
}

impl<S, E> Stream for ReadyBatches<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Parts, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let mut batch = Parts::default();
        let most = match this.yielded < FRAME_BYTES {
            true => FRAME_BYTES - this.yielded,
            false => LONG_FRAME_BYTES,
        };
        while !this.ended && !batch.is_full(most) {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => batch.push(bytes),
                Poll::Ready(Some(Err(e))) if batch.remaining == 0 => {
                    return Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.failed = Some(e);
                    break;
                }
                Poll::Ready(None) => this.ended = true,
                // the waker is registered: the next poll comes when more is ready
                Poll::Pending if batch.remaining == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        this.yielded += batch.remaining;
        match batch.remaining {
            0 => Poll::Ready(None),
            _ => Poll::Ready(Some(Ok(batch))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{stream, StreamExt};

    fn parts_of(items: &[&'static [u8]]) -> Parts {
        let mut p = Parts::default();
        for i in items {
            p.push(Bytes::from_static(i));
        }
        p
    }

    #[test]
    fn parts_read_as_one_buffer() {
        let mut p = parts_of(&[b"abc", b"", b"defg", b"h"]);
        assert_eq!(p.remaining(), 8);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(
            p.chunks_vectored(&mut slices),
            3,
            "empty buffers are not kept"
        );
        p.advance(4);
        assert_eq!(p.chunk(), b"efg");
        assert_eq!(p.copy_to_bytes(2), Bytes::from_static(b"ef"));
        assert_eq!(
            p.copy_to_bytes(2),
            Bytes::from_static(b"gh"),
            "across two buffers"
        );
        assert_eq!(p.remaining(), 0);
        assert!(p.chunk().is_empty());
    }

    #[tokio::test]
    async fn what_is_ready_together_is_one_frame_and_an_error_comes_after_it() {
        let items: Vec<Result<Bytes, &str>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cd")),
            Err("broke"),
        ];
        let mut batches = ReadyBatches::new(stream::iter(items));
        let first = batches.next().await.unwrap().unwrap();
        assert_eq!((first.remaining(), first.parts.len()), (4, 2));
        assert_eq!(batches.next().await.unwrap().unwrap_err(), "broke");
    }

    #[tokio::test]
    async fn bytes_still_arriving_are_not_waited_for() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, ()>>();
        let mut batches = ReadyBatches::new(rx);
        tx.unbounded_send(Ok(Bytes::from_static(b"first"))).unwrap();
        // one buffer ready, the next not yet: the frame is the one buffer
        assert_eq!(batches.next().await.unwrap().unwrap().remaining(), 5);
        tx.unbounded_send(Ok(Bytes::from_static(b"second")))
            .unwrap();
        drop(tx);
        assert_eq!(batches.next().await.unwrap().unwrap().remaining(), 6);
        assert!(batches.next().await.is_none());
    }

    #[tokio::test]
    async fn the_first_chunk_is_one_frame_and_the_rest_smaller_ones() {
        let piece = Bytes::from(vec![0u8; 128 * 1024]);
        // 4.5 MiB in 128 KiB pieces, all ready at once
        let items: Vec<Result<Bytes, ()>> = (0..36).map(|_| Ok(piece.clone())).collect();
        let sizes: Vec<usize> = ReadyBatches::new(stream::iter(items))
            .map(|b| b.unwrap().remaining())
            .collect()
            .await;
        let mut want = vec![FRAME_BYTES];
        want.resize(
            1 + (36 * 128 * 1024 - FRAME_BYTES) / LONG_FRAME_BYTES,
            LONG_FRAME_BYTES,
        );
        assert_eq!(sizes, want);
    }
}
