//! On-disk file format: `header ++ key ++ payload`, and the chunk file naming.
//!
//! The key is stored in the file so a file renamed onto another key's path is caught; the
//! length and CRC-32 catch truncation and bit flips. CRC-32 (crc32fast, already a workspace
//! dependency) is enough: it guards against storage faults, not against an attacker who can
//! write to the cache directory.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::Path,
};

use bytes::Bytes;

use crate::object::ChunkKey;

pub(super) const MAGIC: [u8; 4] = *b"CSRD";
pub(super) const FORMAT_VERSION: u8 = 1;
pub(super) const KIND_CHUNK: u8 = 1;
pub(super) const KIND_META: u8 = 2;
/// magic(4) format(1) kind(1) key_len(2) payload_len(8) crc32(4), all little endian.
pub(super) const HEADER_FIXED: usize = 20;

/// The key a file says it holds, from its header alone (unverified: `read_verified` checks it
/// together with the payload). `None` for a file too short or of another kind.
pub(super) fn stored_key(path: &Path, kind: u8) -> io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let mut h = [0u8; HEADER_FIXED];
    if f.read_exact(&mut h).is_err() || h[..4] != MAGIC || h[5] != kind {
        return Ok(None);
    }
    let mut key = vec![0u8; u16::from_le_bytes([h[6], h[7]]) as usize];
    Ok(f.read_exact(&mut key).is_ok().then_some(key))
}

pub(super) enum Loaded {
    Good(Bytes, File),
    /// Reason and inode of the bad file.
    Corrupt(&'static str, u64),
}

pub(super) fn read_verified(path: &Path, kind: u8, key: &[u8]) -> io::Result<Loaded> {
    let mut f = File::open(path)?;
    let m = f.metadata()?;
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.read_to_end(&mut buf)?;
    let bad = |why| Ok(Loaded::Corrupt(why, m.ino()));
    if buf.len() < HEADER_FIXED {
        return bad("shorter than header");
    }
    let (h, rest) = buf.split_at(HEADER_FIXED);
    if h[..4] != MAGIC || h[4] != FORMAT_VERSION || h[5] != kind {
        return bad("bad magic, format or kind");
    }
    let key_len = u16::from_le_bytes([h[6], h[7]]) as usize;
    let payload_len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if rest.len() as u64 != key_len as u64 + payload_len {
        return bad("length mismatch");
    }
    if &rest[..key_len] != key {
        return bad("key mismatch");
    }
    if crc32fast::hash(&rest[key_len..]) != crc {
        return bad("checksum mismatch");
    }
    let start = HEADER_FIXED + key_len;
    Ok(Loaded::Good(Bytes::from(buf).slice(start..), f))
}

pub(super) fn encode_header(kind: u8, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_FIXED + key.len());
    h.extend_from_slice(&MAGIC);
    h.push(FORMAT_VERSION);
    h.push(kind);
    h.extend_from_slice(&(key.len() as u16).to_le_bytes());
    h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h.extend_from_slice(key);
    h
}

pub(super) fn file_len(key_len: usize, payload_len: usize) -> u64 {
    (HEADER_FIXED + key_len + payload_len) as u64
}

/// The version becomes a path component, so anything but 64 lowercase hex chars is refused
/// (no `..`, no separators).
pub(super) fn valid_version(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn parse_chunk_name(name: &str) -> Option<ChunkKey> {
    let (version, index) = name.split_at_checked(64)?;
    let index = index.strip_prefix('-')?;
    if !valid_version(version) || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ChunkKey {
        version: version.into(),
        index: index.parse().ok()?,
    })
}

/// Metadata files are named by the hex SHA-256 of the record's name.
pub(super) fn parse_meta_name(name: &str) -> Option<&str> {
    valid_version(name).then_some(name)
}
