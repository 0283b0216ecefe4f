//! The hasher of the seen-id sets: every record offered is looked up in them, and keys are
//! near-uniform 128-bit values already, so a seeded multiply-fold does what SipHash would at a
//! fraction of the cost.

/// Hashes a key for the fresh sets. Keys are GUIDs or SHA-256 prefixes (near uniform), so a
/// multiply-fold with a per-process seed spreads them; SipHash would cost more than the lookup.
#[derive(Clone)]
pub(super) struct KeyHasherBuilder(u64);

impl Default for KeyHasherBuilder {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        Self(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }
}

#[derive(Default)]
pub(super) struct KeyHasher {
    seed: u64,
    hash: u64,
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        let folded = u128::from(self.hash ^ word) * u128::from(self.seed);
        self.hash = (folded as u64) ^ ((folded >> 64) as u64);
    }

    fn write_u128(&mut self, key: u128) {
        self.write_u64(key as u64);
        self.write_u64((key >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

impl std::hash::BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.0,
            hash: 0,
        }
    }
}
