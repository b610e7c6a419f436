//! The hasher of the memory store's job table.

/// Job ids are random and chosen by us, never by a client, so there is no
/// flooding to defend against: fold their bytes and mix them with one
/// multiply (the ids are ASCII, so the mix spreads their entropy over the
/// high bits that DashMap's shard choice and the table's tags read).
#[derive(Clone, Default)]
pub(super) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        // `JobId` hashes as its 16 bytes; fold them into the state, a word at
        // a time (whole words need no copy into a buffer: this runs on every
        // lookup).
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            self.0 = self.0.rotate_left(5) ^ word;
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    // The array's length, hashed before its bytes: the same for every id.
    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(5) ^ n as u64;
    }
}
