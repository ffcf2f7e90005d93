//! A fixed-key hasher for the tokenizer's maps: deterministic everywhere, no
//! call for randomness (there is none to be had on wasm32-unknown-unknown),
//! and several times cheaper than SipHash on short keys, which matters when
//! a 150k-token vocabulary and its merges are loaded inside a metered
//! canister. Not DoS-resistant; the keys come from the model file.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style: rotate, xor a word, multiply.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the input's low bits, and the
        // table indexes by the low bits: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

pub(crate) type FastBuild = BuildHasherDefault<FastHasher>;
