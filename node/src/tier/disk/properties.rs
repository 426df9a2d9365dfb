//! Property tests of the on-disk file format: round-trips, corruption always caught, no panics.

use std::{fs, io};

use proptest::prelude::*;

use super::format::{
    encode_header, file_len, parse_chunk_name, parse_meta_name, read_verified, Loaded,
    HEADER_FIXED, KIND_CHUNK, KIND_META, MAGIC,
};
use crate::object::ChunkKey;
use crate::test_support::proptest_config;

fn encoded(kind: u8, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut file = encode_header(kind, key, payload);
    file.extend_from_slice(payload);
    file
}

fn read_back(bytes: &[u8], kind: u8, key: &[u8]) -> io::Result<Loaded> {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), bytes).unwrap();
    read_verified(f.path(), kind, key)
}

fn kind() -> impl Strategy<Value = u8> {
    prop_oneof![Just(KIND_CHUNK), Just(KIND_META)]
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn files_round_trip(
        kind in kind(),
        key in proptest::collection::vec(any::<u8>(), 0..200),
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let file = encoded(kind, &key, &payload);
        prop_assert_eq!(file.len() as u64, file_len(key.len(), payload.len()));
        match read_back(&file, kind, &key).unwrap() {
            Loaded::Good(got, _) => prop_assert_eq!(&got[..], &payload[..]),
            Loaded::Corrupt(why, _) => prop_assert!(false, "{}", why),
        }
    }

    #[test]
    fn any_changed_byte_is_caught(
        kind in kind(),
        key in proptest::collection::vec(any::<u8>(), 1..100),
        payload in proptest::collection::vec(any::<u8>(), 1..2048),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut file = encoded(kind, &key, &payload);
        let i = at.index(file.len());
        file[i] ^= xor;
        prop_assert!(matches!(read_back(&file, kind, &key).unwrap(), Loaded::Corrupt(..)), "byte {}", i);
        // Cut short anywhere, or read as the other kind: never served.
        let cut = at.index(file.len());
        file[i] ^= xor;
        prop_assert!(matches!(read_back(&file[..cut], kind, &key).unwrap(), Loaded::Corrupt(..)));
        let other = if kind == KIND_CHUNK { KIND_META } else { KIND_CHUNK };
        prop_assert!(matches!(read_back(&file, other, &key).unwrap(), Loaded::Corrupt(..)));
    }

    #[test]
    fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), key in proptest::collection::vec(any::<u8>(), 0..8)) {
        let _ = read_back(&bytes, KIND_CHUNK, &key);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        if with_magic.len() >= HEADER_FIXED {
            let _ = read_back(&with_magic, KIND_META, &key);
        }
    }

    #[test]
    fn chunk_names_round_trip(version in "[0-9a-f]{64}", index in any::<u64>(), junk in ".{0,80}") {
        let key = ChunkKey { version: version.as_str().into(), index };
        prop_assert_eq!(parse_chunk_name(&key.to_string()), Some(key));
        if let Some(k) = parse_chunk_name(&junk) {
            prop_assert_eq!(parse_chunk_name(&k.to_string()), Some(k));
        }
        prop_assert_eq!(parse_meta_name(&version), Some(version.as_str()));
        let _ = parse_meta_name(&junk);
    }
}
