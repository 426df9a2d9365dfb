//! Generated object bodies: every byte is a pure function of (seed, version, offset), so an
//! object of any size costs no memory and any range can be produced on demand.

use sha2::{Digest, Sha256};

/// Size of the frames bodies are generated and sent in.
pub const FRAME_SIZE: usize = 64 * 1024;

/// splitmix64's finaliser: cheap, well mixed, and lets us address any 8-byte word directly
/// (no sequential state), which is what makes random-access ranges free.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The content generator of one object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    key: u64,
}

impl Content {
    pub fn new(seed: u64, version: u64) -> Self {
        // Mixing seed and version separately keeps (seed, version) pairs from colliding
        // trivially (e.g. seed 1 version 0 vs seed 0 version 1).
        Content {
            key: mix(seed ^ 0x5851_f42d_4c95_7f2d)
                ^ mix(version.wrapping_add(0x9e37_79b9_7f4a_7c15)),
        }
    }

    #[inline(always)]
    fn word(&self, index: u64) -> [u8; 8] {
        mix(self
            .key
            .wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .to_le_bytes()
    }

    /// Fills `out` with the bytes starting at `offset`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut index = offset / 8;
        let skip = (offset % 8) as usize;
        let mut rest = out;
        if skip != 0 {
            let w = self.word(index);
            let n = (8 - skip).min(rest.len());
            rest[..n].copy_from_slice(&w[skip..skip + n]);
            rest = &mut rest[n..];
            index += 1;
        }
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.word(index));
            index += 1;
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let n = tail.len();
            tail.copy_from_slice(&self.word(index)[..n]);
        }
    }

    /// The bytes `[start, end)` as a vector (for small ranges in tests).
    pub fn bytes(&self, start: u64, end: u64) -> Vec<u8> {
        let mut v = vec![0; end.saturating_sub(start) as usize];
        self.fill(start, &mut v);
        v
    }

    /// SHA-256 (hex) of the bytes `[start, end)`, generated frame by frame in bounded memory.
    pub fn sha256(&self, start: u64, end: u64) -> String {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; FRAME_SIZE];
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(FRAME_SIZE);
            self.fill(pos, &mut buf[..n]);
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let a = Content::new(1, 0);
        assert_eq!(a.bytes(0, 1000), Content::new(1, 0).bytes(0, 1000));
        assert_ne!(a.bytes(0, 64), Content::new(2, 0).bytes(0, 64));
        assert_ne!(a.bytes(0, 64), Content::new(1, 1).bytes(0, 64));
        assert_ne!(
            Content::new(0, 1).bytes(0, 64),
            Content::new(1, 0).bytes(0, 64)
        );
    }

    #[test]
    fn unaligned_ranges_match_the_full_body() {
        let c = Content::new(7, 3);
        let full = c.bytes(0, 200);
        for start in 0..20u64 {
            for end in start..start + 30 {
                assert_eq!(
                    c.bytes(start, end),
                    full[start as usize..end as usize],
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn sha_of_concatenated_ranges_equals_sha_of_full() {
        let c = Content::new(42, 0);
        let len = 3 * FRAME_SIZE as u64 + 12_345;
        let mut hasher = Sha256::new();
        let cuts = [0, 1, 7, 8, 65_535, 65_536, 100_001, 150_000, len];
        for w in cuts.windows(2) {
            hasher.update(c.bytes(w[0], w[1]));
        }
        assert_eq!(hex::encode(hasher.finalize()), c.sha256(0, len));
    }
}
