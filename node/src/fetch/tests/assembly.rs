//! Building a chunk from what a source sends: large pieces become parts as they came (no copy),
//! small ones are gathered, and the chunk is the bytes sent, in order.

use bytes::Bytes;

use crate::{
    fetch::flight::{Assembly, Flight},
    source::{Opened, SourceKind},
};

fn pieces(sizes: &[usize]) -> Vec<Bytes> {
    let mut next = 0u8;
    sizes
        .iter()
        .map(|&n| {
            let piece: Vec<u8> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(7);
                    next
                })
                .collect();
            Bytes::from(piece)
        })
        .collect()
}

#[tokio::test]
async fn large_pieces_are_kept_as_they_came_and_small_ones_gathered() {
    let sent = pieces(&[1000, 128 << 10, 3000, 100 << 10, 5000]);
    let total: usize = sent.iter().map(Bytes::len).sum();
    let flight = Flight::new();
    let mut assembly = Assembly::new(total, &flight);
    let opened = Opened {
        stream: Box::pin(futures::stream::iter(sent.clone().into_iter().map(Ok))),
        starts_at: 0,
        origin: SourceKind::Upstream,
    };
    assembly.pump(opened, SourceKind::Upstream).await.unwrap();
    let (chunk, _tail) = assembly.finish();
    assert_eq!(chunk.to_bytes(), sent.concat());
    let shares = |piece: &Bytes| chunk.parts().iter().any(|p| p.as_ptr() == piece.as_ptr());
    assert!(shares(&sent[1]), "the 128 KiB piece is a part, not a copy");
    assert!(shares(&sent[3]), "so is the 100 KiB one");
    assert!(
        !shares(&sent[0]),
        "small pieces are gathered into the chunk's own allocation"
    );
}

#[tokio::test]
async fn a_large_piece_that_ends_the_chunk_waits_for_the_end() {
    // The last bytes are held back until the source ends cleanly, large or not.
    let sent = pieces(&[1000, 128 << 10]);
    let total: usize = sent.iter().map(Bytes::len).sum();
    let flight = Flight::new();
    let mut assembly = Assembly::new(total, &flight);
    for piece in &sent {
        assembly.add_piece(piece.clone());
    }
    assert_eq!(assembly.received(), total);
    let (chunk, tail) = assembly.finish();
    assert_eq!(
        tail, sent[1],
        "the last piece is handed out only at the end"
    );
    assert_eq!(chunk.to_bytes(), sent.concat());
}
