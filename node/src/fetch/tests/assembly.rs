//! A chunk is assembled in one allocation, and one a source hands over whole is kept as it is.

use super::*;
use crate::fetch::flight::{Assembly, Flight};

fn opened(pieces: Vec<Bytes>) -> Opened {
    Opened {
        stream: Box::pin(futures::stream::iter(pieces.into_iter().map(Ok))),
        starts_at: 0,
        origin: SourceKind::Disk,
    }
}

#[tokio::test]
async fn a_chunk_handed_over_whole_is_kept_without_a_copy() {
    let whole = Bytes::from(object_bytes(0..CHUNK));
    let flight = Flight::new();
    let mut assembly = Assembly::new(CHUNK as usize, &flight);
    assembly
        .pump(opened(vec![whole.clone()]), SourceKind::Disk)
        .await
        .unwrap();
    let (chunk, tail) = assembly.finish();
    assert_eq!(chunk.parts().len(), 1);
    assert_eq!(chunk.parts()[0].as_ptr(), whole.as_ptr(), "not copied");
    assert_eq!(tail.as_ptr(), whole.as_ptr());
}

#[tokio::test]
async fn a_chunk_arriving_in_pieces_is_copied_into_one_allocation() {
    let bytes = object_bytes(0..CHUNK);
    let pieces: Vec<Bytes> = bytes.chunks(1000).map(Bytes::copy_from_slice).collect();
    let flight = Flight::new();
    let mut assembly = Assembly::new(CHUNK as usize, &flight);
    assembly
        .pump(opened(pieces), SourceKind::Upstream)
        .await
        .unwrap();
    let (chunk, _) = assembly.finish();
    assert!(chunk.parts().len() > 1, "parts are handed out as they fill");
    let start = chunk.parts()[0].as_ptr();
    let mut at = 0;
    for part in chunk.parts() {
        assert_eq!(
            part.as_ptr(),
            start.wrapping_add(at),
            "contiguous: one allocation"
        );
        at += part.len();
    }
    assert_eq!(at as u64, CHUNK);
    let got: Vec<u8> = chunk
        .parts()
        .iter()
        .flat_map(|p| p.iter().copied())
        .collect();
    assert!(got == bytes);
}
