//! Quantized weights repacked at load into the layout the SIMD kernels want.
//!
//! A ggml file stores a matrix row by row, each row a run of blocks with an
//! f16 scale. The kernels compute four rows at a time (the activations are
//! loaded once for the four), and an f16 scale costs a software conversion
//! per block in wasm. So each quantized matrix is regrouped at load:
//!
//! - rows are taken in **groups of four**; block `j` of the four rows is
//!   stored together as one packed block (`[`Interleaved::group`]`), so a
//!   kernel walks one pointer through a group;
//! - f16 scales are **widened to f32 once** (exactly: every f16 is an f32),
//!   and the K-quants' 6-bit scales are unpacked to plain integers;
//! - a matrix whose row count is not a multiple of four is padded with zero
//!   rows (never read back);
//! - in the **byte layouts** (Q8_0, Q6_K, and Q4_K/Q5_K when the model fits
//!   the heap widened, [`BlockKWidex4`]) every quant is one byte and the four
//!   rows are interleaved by **column pairs**: byte `8p + 2r + k` is row `r`,
//!   column `2p + k` ([`interleave_pairs`]). One `i16x8.load8x8` then holds
//!   two columns of the four rows, and `i32x4.dot_i16x8_s` against the two
//!   activations repeated (`v128.load32_splat`) leaves each row's sum in its
//!   own lane: no horizontal sums, about 6 weighted instructions per 8
//!   multiply-adds.
//!
//! Packing is a one-time load cost, but across the canister's messages it is
//! counted like everything else: [`Interleaved::from_le_bytes`] packs whole
//! groups straight from the file bytes into a zeroed matrix
//! ([`PackedBlock::pack_le`]: two columns of the four rows per 64-bit word,
//! nibbles and high bits split with masks and shifts), and
//! [`PackedBlock::pack`] of ggml blocks (also the padded last group) is its
//! definition, tested equal on random bytes.
//!
//! Every packed block can give back the ggml block it came from
//! ([`PackedBlock::unpack`], bit for bit), so the scalar oracles in
//! [`crate::kernels::quant`] stay the definition of every dot product and the
//! SIMD kernels are tested against them on the original blocks.

use super::dequant::q6k_quant;
use super::{
    iq4xs_index, iq4xs_scale, nibble, pack_fifth_bits, pack_nibbles, pack_scale_min_k4, q2k_quant, q3k_quant,
    q3k_scale, quant5, scale_min_k4, Block, BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1,
    BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, KVALUES_IQ4NL, QK8_0, QK_K,
};
use crate::kernels::ActFamily;
use half::f16;
use std::mem::size_of;

/// A block of four rows, built from (and convertible back to) ggml blocks.
pub trait PackedBlock: Copy + Sized + 'static + ZeroValid {
    /// The ggml block this packs.
    type Src: Block;
    /// Packs block `j` of four consecutive rows (padding rows are `None`).
    fn pack(rows: [Option<Self::Src>; 4]) -> Self;
    /// The ggml block of row `lane` (0..4), exactly as it was in the file.
    fn unpack(&self, lane: usize) -> Self::Src;
    /// Packs block `j` of four rows straight from their file bytes (each
    /// `Src::BYTES` long) into `out`, overwriting every field: the same block
    /// as [`PackedBlock::pack`] of the blocks [`Block::read`] gives, without
    /// building them (the load conversion's hot path: whole words, no
    /// per-element closures, no copy of the block).
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        *out = Self::pack(rows.map(|b| Some(Self::Src::read(b))));
    }
}

/// Types whose all-zero bytes are a valid value, so a `Vec` of them can come
/// zeroed from the allocator: for a large allocation that is fresh memory,
/// zero already, where filling it would cost an instruction per byte in wasm.
///
/// # Safety
/// The all-zero bit pattern must be a valid value of the type (the packed
/// blocks: integers, floats and arrays of them).
pub unsafe trait ZeroValid: Sized {}

/// `n` zero values.
pub(crate) fn zeroed_vec<T: ZeroValid>(n: usize) -> Vec<T> {
    if n == 0 || size_of::<T>() == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<T>(n).expect("allocation size overflows");
    // SAFETY: `layout` has a non-zero size; the memory is zero, a valid `T`
    // (`ZeroValid`), for all `n`; it comes from the global allocator with
    // `T`'s alignment and `n` of them, as `Vec` allocates.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

// SAFETY: each is a struct of arrays of f32, i32, i16, i8 and u8 (and a
// PhantomData), every one of which is valid as zero bytes.
unsafe impl<S> ZeroValid for BlockQ8x4<S> {}
unsafe impl ZeroValid for BlockQ4Kx4 {}
unsafe impl<S> ZeroValid for BlockK16x4<S> {}
unsafe impl ZeroValid for BlockQ2Kx4 {}
unsafe impl ZeroValid for BlockQ4_0x4 {}
unsafe impl ZeroValid for BlockQ5Kx4 {}
unsafe impl<S> ZeroValid for BlockKWidex4<S> {}
unsafe impl<S> ZeroValid for BlockQ8Minx4<S> {}

/// `f16` bits as f32, exactly as `half::f16::to_f32` gives them (NaNs
/// quieted, payload kept), without branches: the exponent and mantissa
/// shifted into an f32 are the value times 2^-112 for normals and
/// subnormals alike (an exact power-of-two scaling), infinities and NaNs get
/// the f32 exponent forced to all ones.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let em = h & 0x7FFF;
    let sign = (h & 0x8000) << 16;
    let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits(); // × 2^112
    let quiet = if em > 0x7C00 { 0x0040_0000 } else { 0 };
    let special = (em << 13) | 0x7F80_0000 | quiet;
    f32::from_bits(sign | if em >= 0x7C00 { special } else { finite })
}

/// `bf16` bits as f32, exactly as `half::bf16::to_f32` gives them (NaNs quieted).
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    let quiet = if h & 0x7FFF > 0x7F80 { 0x0040 } else { 0 };
    f32::from_bits(((h | quiet) as u32) << 16)
}

/// The little-endian f16 at `b[at..at + 2]` as f32.
#[inline(always)]
fn f16_le(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Bytes `at`, `at + 1` of each of four rows as one word, row `r` in bytes
/// `2r`, `2r + 1`: eight bytes of [`interleave_pairs`]'s order.
#[inline(always)]
fn pair_word<const N: usize>(rows: &[&[u8; N]; 4], at: usize) -> u64 {
    // One 16-bit load per row (byte by byte, LLVM merges only row 0's).
    let h = |r: usize| u16::from_le_bytes(rows[r][at..at + 2].try_into().expect("two bytes")) as u64;
    h(0) | (h(1) << 16) | (h(2) << 32) | (h(3) << 48)
}

/// Stores `w` little-endian at `out[8p..8p + 8]` (column pair `p` of four rows).
#[inline(always)]
fn put_word<T: WordBytes>(out: &mut [T], p: usize, w: u64) {
    T::put(&mut out[8 * p..8 * p + 8], w);
}

/// u8 or i8, for [`put_word`].
trait WordBytes: Copy {
    fn put(out: &mut [Self], w: u64);
}
impl WordBytes for u8 {
    #[inline(always)]
    fn put(out: &mut [u8], w: u64) {
        out.copy_from_slice(&w.to_le_bytes());
    }
}
impl WordBytes for i8 {
    #[inline(always)]
    fn put(out: &mut [i8], w: u64) {
        // One 64-bit store (a byte loop here is split into lane extractions).
        out.copy_from_slice(&w.to_le_bytes().map(|b| b as i8));
    }
}

/// The four rows' file bytes as arrays of one block's size.
#[inline(always)]
fn block_arrays<const N: usize>(rows: [&[u8]; 4]) -> [&[u8; N]; 4] {
    rows.map(|b| b.try_into().expect("one block of bytes"))
}

/// Repeats byte `b` in every byte of a word.
const fn bytes(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

/// Each byte `v` of `w` as `v - c` (wrapping). `v - c = v + (-c & 0x7F) +
/// 0x80` with `-c`'s top bit set (`0 < c <= 0x80`), and the first sum stays
/// within its byte for the small quants here (`v + (-c & 0x7F) < 0x100`),
/// so the `+ 0x80` is a flip of each top bit.
#[inline(always)]
fn sub_bytes(w: u64, c: u8) -> u64 {
    let neg = c.wrapping_neg();
    debug_assert!(neg >= 0x80);
    (w + bytes(neg & 0x7F)) ^ bytes(0x80)
}

/// Interleaves four rows of `n` quants by column pairs: `out[8p + 2r + k]
/// = rows[r][2p + k]` (`n` even, `out.len() == 4n`).
pub fn interleave_pairs<T: Copy>(rows: [&[T]; 4], out: &mut [T]) {
    let n = rows[0].len();
    debug_assert!(n.is_multiple_of(2) && out.len() == 4 * n && rows.iter().all(|r| r.len() == n));
    for (p, chunk) in out.chunks_exact_mut(8).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            chunk[2 * r] = row[2 * p];
            chunk[2 * r + 1] = row[2 * p + 1];
        }
    }
}

/// Row `lane` of quants interleaved by [`interleave_pairs`].
pub fn pair_lane<T: Copy>(interleaved: &[T], lane: usize, out: &mut [T]) {
    debug_assert_eq!(interleaved.len(), 4 * out.len());
    for (p, chunk) in interleaved.chunks_exact(8).enumerate() {
        out[2 * p] = chunk[2 * lane];
        out[2 * p + 1] = chunk[2 * lane + 1];
    }
}

/// A block of 32 signed byte quants with one scale, for four rows (`S`:
/// Q8_0, or Q4_0 widened to bytes `nibble - 8` when the model fits, see
/// [`crate::model::K_WIDEN_MAX_BYTES`]): f32 scales, then the four rows' 32
/// quants interleaved by column pairs ([`interleave_pairs`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8x4<S> {
    pub d: [f32; 4],
    pub qs: [i8; 4 * QK8_0],
    _src: std::marker::PhantomData<S>,
}
/// Q8_0 for four rows.
pub type BlockQ8_0x4 = BlockQ8x4<BlockQ8_0>;
/// Q4_0 for four rows, quants widened to bytes.
pub type BlockQ4_0Widex4 = BlockQ8x4<BlockQ4_0>;
/// Q5_0 for four rows, quants widened to bytes `q - 16`.
pub type BlockQ5_0x4 = BlockQ8x4<BlockQ5_0>;
/// IQ4_NL for four rows, each index replaced by its level (a signed byte).
pub type BlockIQ4NLx4 = BlockQ8x4<BlockIQ4NL>;
const _: () = assert!(size_of::<BlockQ8_0x4>() == 144);

impl<S> BlockQ8x4<S> {
    fn from_rows(d: [f32; 4], quants: [[i8; QK8_0]; 4]) -> Self {
        let mut qs = [0; 4 * QK8_0];
        interleave_pairs([0, 1, 2, 3].map(|r| &quants[r][..]), &mut qs);
        BlockQ8x4 {
            d,
            qs,
            _src: std::marker::PhantomData,
        }
    }

    /// Row `lane`'s 32 quants.
    pub(crate) fn lane(&self, lane: usize) -> [i8; QK8_0] {
        let mut q = [0; QK8_0];
        pair_lane(&self.qs, lane, &mut q);
        q
    }

    /// Sets row `lane`'s scale and quants (the int8 KV cache writes one
    /// position at a time).
    pub(crate) fn set_lane(&mut self, lane: usize, d: f32, q: &[i8; QK8_0]) {
        self.d[lane] = d;
        for (p, pair) in q.chunks_exact(2).enumerate() {
            self.qs[8 * p + 2 * lane] = pair[0];
            self.qs[8 * p + 2 * lane + 1] = pair[1];
        }
    }
}

impl PackedBlock for BlockQ4_0Widex4 {
    type Src = BlockQ4_0;
    fn pack(rows: [Option<BlockQ4_0>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ4_0 {
                d: f16::ZERO,
                qs: [0x88; QK8_0 / 2],
            })
        });
        // Element j is the low nibble of qs[j], element j + 16 the high one.
        let quants = rows.map(|b| {
            std::array::from_fn(|j| {
                let byte = b.qs[j % 16];
                (if j < 16 { byte & 0xF } else { byte >> 4 }) as i8 - 8
            })
        });
        Self::from_rows(rows.map(|b| b.d.to_f32()), quants)
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ4_0::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        let qs = &mut out.qs;
        // Column pair p: the low nibbles of bytes 2p, 2p + 1; pair p + 8 their high nibbles.
        for p in 0..QK8_0 / 4 {
            let w = pair_word(&rows, 2 + 2 * p);
            put_word(qs, p, sub_bytes(w & bytes(0x0F), 8));
            put_word(qs, p + QK8_0 / 4, sub_bytes((w >> 4) & bytes(0x0F), 8));
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ4_0 {
        let q = self.lane(lane);
        BlockQ4_0 {
            d: f16::from_f32(self.d[lane]),
            qs: std::array::from_fn(|j| (q[j] + 8) as u8 | ((q[j + 16] + 8) as u8) << 4),
        }
    }
}

impl PackedBlock for BlockQ8_0x4 {
    type Src = BlockQ8_0;
    fn pack(rows: [Option<BlockQ8_0>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; QK8_0],
            })
        });
        Self::from_rows(rows.map(|b| b.d.to_f32()), rows.map(|b| b.qs))
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ8_0::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        for p in 0..QK8_0 / 2 {
            put_word(&mut out.qs, p, pair_word(&rows, 2 + 2 * p));
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: f16::from_f32(self.d[lane]),
            qs: self.lane(lane),
        }
    }
}

/// The quants of four rows' 32-element nibble blocks (nibbles at `qs_at`,
/// Q5's fifth bits as a little-endian u32 at `qh_at`) as unsigned bytes,
/// column pair by column pair: `put(p, word)` for each pair `p`, the word
/// in [`interleave_pairs`]'s order. Pair `p < 8` is the low nibbles of
/// bytes `2p, 2p + 1`, pair `p + 8` their high nibbles.
#[inline(always)]
fn quant_pair_words<const N: usize>(
    rows: &[&[u8; N]; 4],
    qs_at: usize,
    qh_at: Option<usize>,
    mut put: impl FnMut(usize, u64),
) {
    let qh = qh_at.map(|at| rows.map(|b| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64));
    // Columns 2p, 2p + 1 of the four rows: their fifth bits moved to bit 4
    // of bytes 2r and 2r + 1.
    let fifth = |p: usize| match qh {
        None => 0,
        Some(qh) => (0..4).fold(0u64, |w, r| {
            let h = qh[r] >> (2 * p);
            w | ((h & 1) << (16 * r + 4)) | (((h >> 1) & 1) << (16 * r + 12))
        }),
    };
    for p in 0..QK8_0 / 4 {
        let w = pair_word(rows, qs_at + 2 * p);
        put(p, (w & bytes(0x0F)) | fifth(p));
        put(p + QK8_0 / 4, ((w >> 4) & bytes(0x0F)) | fifth(p + QK8_0 / 4));
    }
}

impl PackedBlock for BlockQ5_0x4 {
    type Src = BlockQ5_0;
    fn pack(rows: [Option<BlockQ5_0>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ5_0 {
                d: f16::ZERO,
                qh: [0; 4],
                qs: [0; QK8_0 / 2],
            })
        });
        let quants = rows.map(|b| std::array::from_fn(|j| quant5(&b.qh, &b.qs, j) as i8 - 16));
        Self::from_rows(rows.map(|b| b.d.to_f32()), quants)
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ5_0::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        quant_pair_words(&rows, 6, Some(2), |p, w| put_word(&mut out.qs, p, sub_bytes(w, 16)));
    }
    fn unpack(&self, lane: usize) -> BlockQ5_0 {
        let q = self.lane(lane).map(|v| (v + 16) as u8);
        BlockQ5_0 {
            d: f16::from_f32(self.d[lane]),
            qh: pack_fifth_bits(&q),
            qs: pack_nibbles(&q),
        }
    }
}

/// The two IQ4_NL levels a byte of nibbles names: `[low, high]`.
static IQ4NL_PAIRS: [[i8; 2]; 256] = {
    let mut t = [[0i8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [KVALUES_IQ4NL[b & 0xF], KVALUES_IQ4NL[b >> 4]];
        b += 1;
    }
    t
};

impl PackedBlock for BlockIQ4NLx4 {
    type Src = BlockIQ4NL;
    fn pack(rows: [Option<BlockIQ4NL>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockIQ4NL {
                d: f16::ZERO,
                qs: [0; QK8_0 / 2],
            })
        });
        let quants = rows.map(|b| std::array::from_fn(|j| KVALUES_IQ4NL[nibble(&b.qs, j) as usize]));
        Self::from_rows(rows.map(|b| b.d.to_f32()), quants)
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockIQ4NL::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        // Each file byte j holds elements j and j + 16: one lookup of both
        // levels, stored at their interleaved places (8·(c / 2) + 2r + c % 2).
        for (r, b) in rows.iter().enumerate() {
            for j in 0..QK8_0 / 2 {
                let [lo, hi] = IQ4NL_PAIRS[b[2 + j] as usize];
                let at = |c: usize| 8 * (c / 2) + 2 * r + c % 2;
                out.qs[at(j)] = lo;
                out.qs[at(j + 16)] = hi;
            }
        }
    }
    fn unpack(&self, lane: usize) -> BlockIQ4NL {
        // The levels are distinct, so each byte names its index.
        let q = self
            .lane(lane)
            .map(|v| KVALUES_IQ4NL.iter().position(|&k| k == v).expect("an IQ4_NL level") as u8);
        BlockIQ4NL {
            d: f16::from_f32(self.d[lane]),
            qs: pack_nibbles(&q),
        }
    }
}

/// A block of 32 unsigned quants with a scale and an offset (`x = q · d +
/// m`), for four rows (`S`: Q4_1 or Q5_1): f32 scales and offsets, then the
/// four rows' quants as bytes interleaved by column pairs, as [`BlockQ8x4`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8Minx4<S> {
    pub d: [f32; 4],
    pub m: [f32; 4],
    pub qs: [u8; 4 * QK8_0],
    _src: std::marker::PhantomData<S>,
}
/// Q4_1 for four rows, quants widened to bytes.
pub type BlockQ4_1x4 = BlockQ8Minx4<BlockQ4_1>;
/// Q5_1 for four rows, quants widened to bytes.
pub type BlockQ5_1x4 = BlockQ8Minx4<BlockQ5_1>;
const _: () = assert!(size_of::<BlockQ4_1x4>() == 160);

impl<S> BlockQ8Minx4<S> {
    fn from_rows(d: [f32; 4], m: [f32; 4], quants: [[u8; QK8_0]; 4]) -> Self {
        let mut qs = [0; 4 * QK8_0];
        interleave_pairs([0, 1, 2, 3].map(|r| &quants[r][..]), &mut qs);
        BlockQ8Minx4 {
            d,
            m,
            qs,
            _src: std::marker::PhantomData,
        }
    }

    /// Row `lane`'s 32 quants.
    fn lane(&self, lane: usize) -> [u8; QK8_0] {
        let mut q = [0; QK8_0];
        pair_lane(&self.qs, lane, &mut q);
        q
    }
}

impl PackedBlock for BlockQ4_1x4 {
    type Src = BlockQ4_1;
    fn pack(rows: [Option<BlockQ4_1>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ4_1 {
                d: f16::ZERO,
                m: f16::ZERO,
                qs: [0; QK8_0 / 2],
            })
        });
        let quants = rows.map(|b| std::array::from_fn(|j| nibble(&b.qs, j)));
        Self::from_rows(rows.map(|b| b.d.to_f32()), rows.map(|b| b.m.to_f32()), quants)
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ4_1::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        out.m = rows.map(|b| f16_le(b, 2));
        quant_pair_words(&rows, 4, None, |p, w| put_word(&mut out.qs, p, w));
    }
    fn unpack(&self, lane: usize) -> BlockQ4_1 {
        BlockQ4_1 {
            d: f16::from_f32(self.d[lane]),
            m: f16::from_f32(self.m[lane]),
            qs: pack_nibbles(&self.lane(lane)),
        }
    }
}

impl PackedBlock for BlockQ5_1x4 {
    type Src = BlockQ5_1;
    fn pack(rows: [Option<BlockQ5_1>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ5_1 {
                d: f16::ZERO,
                m: f16::ZERO,
                qh: [0; 4],
                qs: [0; QK8_0 / 2],
            })
        });
        let quants = rows.map(|b| std::array::from_fn(|j| quant5(&b.qh, &b.qs, j)));
        Self::from_rows(rows.map(|b| b.d.to_f32()), rows.map(|b| b.m.to_f32()), quants)
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ5_1::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 0));
        out.m = rows.map(|b| f16_le(b, 2));
        quant_pair_words(&rows, 8, Some(4), |p, w| put_word(&mut out.qs, p, w));
    }
    fn unpack(&self, lane: usize) -> BlockQ5_1 {
        let q = self.lane(lane);
        BlockQ5_1 {
            d: f16::from_f32(self.d[lane]),
            m: f16::from_f32(self.m[lane]),
            qh: pack_fifth_bits(&q),
            qs: pack_nibbles(&q),
        }
    }
}

/// Q4_K for four rows: f32 super-block scales, the eight 6-bit sub-block
/// scales and mins unpacked to i16 (ready for `v128.load16_splat` and
/// `i32x4.dot_i16x8_s`), nibbles as in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4Kx4 {
    pub d: [f32; 4],
    pub dmin: [f32; 4],
    /// `128 · Σ_j scales[j] · Σ q` over sub-block `j`'s quants, per row: lets
    /// the kernel multiply nibbles with activations offset to unsigned bytes
    /// (`x + 128`) and subtract the offset's contribution exactly.
    pub qcorr: [i32; 4],
    pub scales: [[i16; 8]; 4],
    pub mins: [[i16; 8]; 4],
    pub qs: [[u8; QK_K / 2]; 4],
}
const _: () = assert!(size_of::<BlockQ4Kx4>() == 688);

/// [`BlockQ4Kx4::qcorr`] of one ggml block.
fn q4_k_offset_correction(b: &BlockQ4K) -> i32 {
    (0..4)
        .map(|c| {
            let q = &b.qs[32 * c..32 * c + 32];
            let lo: i32 = q.iter().map(|&v| (v & 0xF) as i32).sum();
            let hi: i32 = q.iter().map(|&v| (v >> 4) as i32).sum();
            scale_min_k4(2 * c, &b.scales).0 as i32 * lo + scale_min_k4(2 * c + 1, &b.scales).0 as i32 * hi
        })
        .sum::<i32>()
        * 128
}

impl PackedBlock for BlockQ4Kx4 {
    type Src = BlockQ4K;
    fn pack(rows: [Option<BlockQ4K>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ4K {
                d: f16::ZERO,
                dmin: f16::ZERO,
                scales: [0; 12],
                qs: [0; QK_K / 2],
            })
        });
        BlockQ4Kx4 {
            d: rows.map(|b| b.d.to_f32()),
            dmin: rows.map(|b| b.dmin.to_f32()),
            qcorr: rows.map(|b| q4_k_offset_correction(&b)),
            scales: rows.map(|b| scales_mins(&b.scales).0.map(i16::from)),
            mins: rows.map(|b| scales_mins(&b.scales).1.map(i16::from)),
            qs: rows.map(|b| b.qs),
        }
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ4K::BYTES }>(rows);
        for (r, b) in rows.iter().enumerate() {
            let (d, dmin, sc, m) = k_head_le(*b);
            (out.d[r], out.dmin[r]) = (d, dmin);
            out.scales[r] = sc.map(i16::from);
            out.mins[r] = m.map(i16::from);
            out.qs[r].copy_from_slice(&b[16..144]);
            out.qcorr[r] = k_offset_correction(&sc, &out.qs[r], None);
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ4K {
        BlockQ4K {
            d: f16::from_f32(self.d[lane]),
            dmin: f16::from_f32(self.dmin[lane]),
            scales: pack_scale_min_k4(&self.scales[lane].map(|v| v as u8), &self.mins[lane].map(|v| v as u8)),
            qs: self.qs[lane],
        }
    }
}

/// Sixteen groups of sixteen signed byte quants with one i16 scale each,
/// for four rows (`S`: Q6_K, or Q3_K, whose values have the same shape):
/// f32 scale, the sixteen sub-block scales widened to i16 (`scales[g]` =
/// the four rows' scales of group `g`, for `i32x4.load16x4_s`), and each
/// quant unpacked to one signed byte (Q6_K `q - 32`, Q3_K `q` in -4..=3),
/// the rows interleaved by column pairs (more bytes than the file's bit
/// planes, but the kernel then reads plain int8 like Q8_0's instead of
/// reassembling bits per weight).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockK16x4<S> {
    pub d: [f32; 4],
    pub scales: [[i16; 4]; QK_K / 16],
    pub qs: [i8; 4 * QK_K],
    _src: std::marker::PhantomData<S>,
}
/// Q6_K for four rows, quants as bytes `q - 32`.
pub type BlockQ6Kx4 = BlockK16x4<BlockQ6K>;
/// Q3_K for four rows, quants as bytes in -4..=3 and scales `sc - 32`.
pub type BlockQ3Kx4 = BlockK16x4<BlockQ3K>;
/// IQ4_XS for four rows: quants as the levels their indices name
/// ([`KVALUES_IQ4NL`]), each sub-block's scale `ls - 32` on its two groups of 16.
pub type BlockIQ4XSx4 = BlockK16x4<BlockIQ4XS>;
const _: () = assert!(size_of::<BlockQ6Kx4>() == 1168);

impl<S> BlockK16x4<S> {
    fn from_rows(d: [f32; 4], scales: [[i8; QK_K / 16]; 4], quants: [[i8; QK_K]; 4]) -> Self {
        let mut qs = [0; 4 * QK_K];
        interleave_pairs([0, 1, 2, 3].map(|r| &quants[r][..]), &mut qs);
        BlockK16x4 {
            d,
            scales: std::array::from_fn(|g| scales.map(|s| s[g] as i16)),
            qs,
            _src: std::marker::PhantomData,
        }
    }
}

/// Q2_K for four rows: Q6_K's byte layout ([`BlockK16x4`]) with each quant
/// (0..=3) stored already times its group's 4-bit scale (≤ 45, still a
/// byte), so the kernel sums `Σ sc·q·x` in one run with no per-group scale
/// multiply; the scales are kept beside for [`PackedBlock::unpack`]. Plus
/// the mins' super-scale and the 4-bit mins by group pairs
/// (`min_pairs[k][2r + i]` = row `r`'s min of group `2k + i`, for
/// `i32x4.dot_i16x8_s` against two groups' activation sums).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ2Kx4 {
    pub k16: BlockK16x4<BlockQ2K>,
    pub dmin: [f32; 4],
    pub min_pairs: [[i16; 8]; 8],
}
const _: () = assert!(size_of::<BlockQ2Kx4>() == 1312);

impl PackedBlock for BlockQ2Kx4 {
    type Src = BlockQ2K;
    fn pack(rows: [Option<BlockQ2K>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ2K {
                scales: [0; QK_K / 16],
                qs: [0; QK_K / 4],
                d: f16::ZERO,
                dmin: f16::ZERO,
            })
        });
        BlockQ2Kx4 {
            k16: BlockK16x4::from_rows(
                rows.map(|b| b.d.to_f32()),
                rows.map(|b| b.scales.map(|s| (s & 0xF) as i8)),
                rows.map(|b| std::array::from_fn(|e| ((b.scales[e / 16] & 0xF) * q2k_quant(&b, e)) as i8)),
            ),
            dmin: rows.map(|b| b.dmin.to_f32()),
            min_pairs: std::array::from_fn(|k| {
                std::array::from_fn(|i| (rows[i / 2].scales[2 * k + i % 2] >> 4) as i16)
            }),
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ2K {
        let mut b = BlockQ2K {
            scales: std::array::from_fn(|g| {
                self.k16.scales[g][lane] as u8 | ((self.min_pairs[g / 2][2 * lane + g % 2] as u8) << 4)
            }),
            qs: [0; QK_K / 4],
            d: f16::from_f32(self.k16.d[lane]),
            dmin: f16::from_f32(self.dmin[lane]),
        };
        let mut scaled = [0i8; QK_K];
        pair_lane(&self.k16.qs, lane, &mut scaled);
        for (e, &sq) in scaled.iter().enumerate() {
            // Quants under a zero scale were stored as 0: the same values.
            let q = (sq as u8).checked_div(b.scales[e / 16] & 0xF).unwrap_or(0);
            b.qs[32 * (e / 128) + e % 32] |= q << (2 * ((e % 128) / 32));
        }
        b
    }
}

impl PackedBlock for BlockIQ4XSx4 {
    type Src = BlockIQ4XS;
    fn pack(rows: [Option<BlockIQ4XS>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockIQ4XS {
                d: f16::ZERO,
                scales_h: 0,
                scales_l: [0; QK_K / 64],
                qs: [0; QK_K / 2],
            })
        });
        BlockK16x4::from_rows(
            rows.map(|b| b.d.to_f32()),
            rows.map(|b| std::array::from_fn(|g| iq4xs_scale(&b, g / 2))),
            rows.map(|b| std::array::from_fn(|e| KVALUES_IQ4NL[iq4xs_index(&b, e) as usize])),
        )
    }
    fn unpack(&self, lane: usize) -> BlockIQ4XS {
        let mut b = BlockIQ4XS {
            d: f16::from_f32(self.d[lane]),
            scales_h: 0,
            scales_l: [0; QK_K / 64],
            qs: [0; QK_K / 2],
        };
        for j in 0..QK_K / 32 {
            let l = (self.scales[2 * j][lane] + 32) as u8;
            b.scales_l[j / 2] |= (l & 0xF) << (4 * (j % 2));
            b.scales_h |= ((l >> 4) as u16) << (2 * j);
        }
        let mut levels = [0i8; QK_K];
        pair_lane(&self.qs, lane, &mut levels);
        for (j, sub) in levels.chunks_exact(32).enumerate() {
            let q: [u8; QK8_0] = std::array::from_fn(|i| {
                KVALUES_IQ4NL
                    .iter()
                    .position(|&v| v == sub[i])
                    .expect("a level of the grid") as u8
            });
            b.qs[16 * j..16 * j + 16].copy_from_slice(&pack_nibbles(&q));
        }
        b
    }
}

impl PackedBlock for BlockQ3Kx4 {
    type Src = BlockQ3K;
    fn pack(rows: [Option<BlockQ3K>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ3K {
                hmask: [0; QK_K / 8],
                qs: [0; QK_K / 4],
                scales: [0; 12],
                d: f16::ZERO,
            })
        });
        BlockK16x4::from_rows(
            rows.map(|b| b.d.to_f32()),
            rows.map(|b| std::array::from_fn(|g| q3k_scale(&b.scales, g))),
            rows.map(|b| std::array::from_fn(|e| q3k_quant(&b, e))),
        )
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ3K::BYTES }>(rows);
        *out = Self::pack(rows.map(|b| Some(BlockQ3K::read(b))));
    }
    fn unpack(&self, lane: usize) -> BlockQ3K {
        let mut b = BlockQ3K {
            hmask: [0; QK_K / 8],
            qs: [0; QK_K / 4],
            scales: [0; 12],
            d: f16::from_f32(self.d[lane]),
        };
        for (j, s) in self.scales.iter().enumerate() {
            let q = (s[lane] + 32) as u8;
            if j < 8 {
                b.scales[j] |= q & 0xF;
            } else {
                b.scales[j - 8] |= (q & 0xF) << 4;
            }
            b.scales[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
        }
        let mut quants = [0i8; QK_K];
        pair_lane(&self.qs, lane, &mut quants);
        for (e, &q) in quants.iter().enumerate() {
            if q >= 0 {
                b.hmask[e % 32] |= 1 << (e / 32);
            }
            let low = (q & 3) as u8;
            b.qs[32 * (e / 128) + e % 32] |= low << (2 * ((e % 128) / 32));
        }
        b
    }
}

impl PackedBlock for BlockQ6Kx4 {
    type Src = BlockQ6K;
    fn pack(rows: [Option<BlockQ6K>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0x00; QK_K / 4],
                scales: [0; QK_K / 16],
                d: f16::ZERO,
            })
        });
        BlockK16x4::from_rows(
            rows.map(|b| b.d.to_f32()),
            rows.map(|b| b.scales),
            rows.map(|b| q6k_quants(&b)),
        )
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ6K::BYTES }>(rows);
        out.d = rows.map(|b| f16_le(b, 208));
        for (g, s) in out.scales.iter_mut().enumerate() {
            *s = rows.map(|b| b[192 + g] as i8 as i16);
        }
        let qs = &mut out.qs;
        // As `q6k_quants`, two columns of the four rows per word: ql at 0,
        // qh at 128, a half (128 elements) at a time.
        for half in 0..2 {
            for q in 0..16 {
                let lo = pair_word(&rows, 64 * half + 2 * q);
                let hi = pair_word(&rows, 64 * half + 32 + 2 * q);
                let h = pair_word(&rows, 128 + 32 * half + 2 * q);
                let at = 64 * half + q;
                let m4 = bytes(0x0F);
                let m2 = bytes(0x03);
                put_word(qs, at, sub_bytes((lo & m4) | ((h & m2) << 4), 32));
                put_word(qs, at + 16, sub_bytes((hi & m4) | (((h >> 2) & m2) << 4), 32));
                put_word(qs, at + 32, sub_bytes(((lo >> 4) & m4) | (((h >> 4) & m2) << 4), 32));
                put_word(qs, at + 48, sub_bytes(((hi >> 4) & m4) | (((h >> 6) & m2) << 4), 32));
            }
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ6K {
        // The inverse of `q6k_quant`'s bit layout.
        let mut b = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: self.scales.map(|s| s[lane] as i8),
            d: f16::from_f32(self.d[lane]),
        };
        let mut quants = [0i8; QK_K];
        pair_lane(&self.qs, lane, &mut quants);
        for (i, &q) in quants.iter().enumerate() {
            let q = (q as i32 + 32) as u8;
            let (half, r) = (i / 128, i % 128);
            let (k, l) = (r / 32, r % 32);
            let ql = &mut b.ql[64 * half + l + 32 * (k & 1)];
            *ql |= if k < 2 { q & 0xF } else { (q & 0xF) << 4 };
            b.qh[32 * half + l] |= (q >> 4) << (2 * k);
        }
        b
    }
}

/// Q4_0 for four rows: f32 scales, nibbles as in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0x4 {
    pub d: [f32; 4],
    pub qs: [[u8; QK8_0 / 2]; 4],
}
const _: () = assert!(size_of::<BlockQ4_0x4>() == 80);

impl PackedBlock for BlockQ4_0x4 {
    type Src = BlockQ4_0;
    fn pack(rows: [Option<BlockQ4_0>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ4_0 {
                d: f16::ZERO,
                qs: [0x88; QK8_0 / 2],
            })
        });
        BlockQ4_0x4 {
            d: rows.map(|b| b.d.to_f32()),
            qs: rows.map(|b| b.qs),
        }
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ4_0::BYTES }>(rows);
        for (r, b) in rows.iter().enumerate() {
            out.d[r] = f16_le(*b, 0);
            out.qs[r].copy_from_slice(&b[2..18]);
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ4_0 {
        BlockQ4_0 {
            d: f16::from_f32(self.d[lane]),
            qs: self.qs[lane],
        }
    }
}

/// Q5_K for four rows: as [`BlockQ4Kx4`] plus the fifth bits as in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5Kx4 {
    pub d: [f32; 4],
    pub dmin: [f32; 4],
    /// `128 · Σ_j scales[j] · Σ q` (5-bit quants), as [`BlockQ4Kx4::qcorr`].
    pub qcorr: [i32; 4],
    pub scales: [[i16; 8]; 4],
    pub mins: [[i16; 8]; 4],
    pub qh: [[u8; QK_K / 8]; 4],
    pub qs: [[u8; QK_K / 2]; 4],
}
const _: () = assert!(size_of::<BlockQ5Kx4>() == 816);

/// [`BlockQ4Kx4::qcorr`] (`qh` None) or [`BlockQ5Kx4::qcorr`] of one block
/// from its scales, nibbles and fifth bits, eight quants per word: what
/// [`q4_k_offset_correction`] and [`q5_k_offset_correction`] give.
fn k_offset_correction(sc: &[u8; 8], qs: &[u8; QK_K / 2], qh: Option<&[u8; QK_K / 8]>) -> i32 {
    let word = |b: &[u8], i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("eight bytes"));
    // The sum of a word's bytes (each at most 60 here).
    let byte_sum = |x: u64| {
        let pairs = (x & bytes_u16(0xFF)) + ((x >> 8) & bytes_u16(0xFF));
        (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as i32
    };
    let mut total = 0i32;
    for c in 0..4 {
        let (mut lo, mut hi) = (0u64, 0u64);
        for i in 0..4 {
            let w = word(&qs[32 * c..], i);
            lo += w & bytes(0x0F);
            hi += (w >> 4) & bytes(0x0F);
        }
        let (mut lo, mut hi) = (byte_sum(lo), byte_sum(hi));
        if let Some(qh) = qh {
            // Sub-block 2c's fifth bits are bit 2c of qh[0..32], 2c + 1's the next.
            for i in 0..4 {
                let h = word(qh, i);
                lo += 16 * ((h >> (2 * c)) & bytes(1)).count_ones() as i32;
                hi += 16 * ((h >> (2 * c + 1)) & bytes(1)).count_ones() as i32;
            }
        }
        total += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    total * 128
}

/// Repeats the 16-bit `v` in every 16 bits of a word.
const fn bytes_u16(v: u16) -> u64 {
    (v as u64) * 0x0001_0001_0001_0001
}

/// [`BlockQ5Kx4::qcorr`] of one ggml block.
fn q5_k_offset_correction(b: &BlockQ5K) -> i32 {
    (0..4)
        .map(|c| {
            let q = &b.qs[32 * c..32 * c + 32];
            let h = |l: usize, bit: usize| ((b.qh[l] >> bit) & 1) as i32 * 16;
            let lo: i32 = (0..32).map(|l| (q[l] & 0xF) as i32 + h(l, 2 * c)).sum();
            let hi: i32 = (0..32).map(|l| (q[l] >> 4) as i32 + h(l, 2 * c + 1)).sum();
            scale_min_k4(2 * c, &b.scales).0 as i32 * lo + scale_min_k4(2 * c + 1, &b.scales).0 as i32 * hi
        })
        .sum::<i32>()
        * 128
}

impl PackedBlock for BlockQ5Kx4 {
    type Src = BlockQ5K;
    fn pack(rows: [Option<BlockQ5K>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ5K {
                d: f16::ZERO,
                dmin: f16::ZERO,
                scales: [0; 12],
                qh: [0; QK_K / 8],
                qs: [0; QK_K / 2],
            })
        });
        BlockQ5Kx4 {
            d: rows.map(|b| b.d.to_f32()),
            dmin: rows.map(|b| b.dmin.to_f32()),
            qcorr: rows.map(|b| q5_k_offset_correction(&b)),
            scales: rows.map(|b| scales_mins(&b.scales).0.map(i16::from)),
            mins: rows.map(|b| scales_mins(&b.scales).1.map(i16::from)),
            qh: rows.map(|b| b.qh),
            qs: rows.map(|b| b.qs),
        }
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let rows = block_arrays::<{ BlockQ5K::BYTES }>(rows);
        for (r, b) in rows.iter().enumerate() {
            let (d, dmin, sc, m) = k_head_le(*b);
            (out.d[r], out.dmin[r]) = (d, dmin);
            out.scales[r] = sc.map(i16::from);
            out.mins[r] = m.map(i16::from);
            out.qh[r].copy_from_slice(&b[16..48]);
            out.qs[r].copy_from_slice(&b[48..176]);
            out.qcorr[r] = k_offset_correction(&sc, &out.qs[r], Some(&out.qh[r]));
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ5K {
        BlockQ5K {
            d: f16::from_f32(self.d[lane]),
            dmin: f16::from_f32(self.dmin[lane]),
            scales: pack_scale_min_k4(&self.scales[lane].map(|v| v as u8), &self.mins[lane].map(|v| v as u8)),
            qh: self.qh[lane],
            qs: self.qs[lane],
        }
    }
}

/// Q4_K or Q5_K (`S`) for four rows with every quant **widened to a byte**
/// (0..=15 or 0..=31), the rows interleaved by column pairs: 72 % more heap
/// than the nibble layout ([`BlockQ4Kx4`]), for about a third fewer
/// instructions per multiply-add (no nibble or bit unpacking in the loop).
/// The loader chooses it when the model fits (see
/// [`crate::model::K_WIDEN_MAX_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockKWidex4<S> {
    pub d: [f32; 4],
    pub dmin: [f32; 4],
    /// `scales[j]` = the four rows' scales of sub-block `j` (for `i32x4.load16x4_s`).
    pub scales: [[i16; 4]; 8],
    /// The mins by sub-block pairs: `min_pairs[k][2r + i]` = row `r`'s min of
    /// sub-block `2k + i`, so `i32x4.dot_i16x8_s` against two sub-blocks'
    /// activation sums gives each row's share in its lane.
    pub min_pairs: [[i16; 8]; 4],
    pub qs: [u8; 4 * QK_K],
    _src: std::marker::PhantomData<S>,
}
const _: () = assert!(size_of::<BlockKWidex4<BlockQ4K>>() == 1184);

/// One K-quant row block as plain values: `(d, dmin, scales, mins, quants)`.
type KRow = (f16, f16, [u8; 8], [u8; 8], [u8; QK_K]);

impl<S> BlockKWidex4<S> {
    /// Packs four rows.
    fn from_rows(rows: [KRow; 4]) -> Self {
        let mut qs = [0; 4 * QK_K];
        interleave_pairs([0, 1, 2, 3].map(|r| &rows[r].4[..]), &mut qs);
        BlockKWidex4 {
            d: rows.map(|r| r.0.to_f32()),
            dmin: rows.map(|r| r.1.to_f32()),
            scales: std::array::from_fn(|j| rows.map(|r| r.2[j] as i16)),
            min_pairs: std::array::from_fn(|k| std::array::from_fn(|i| rows[i / 2].3[2 * k + i % 2] as i16)),
            qs,
            _src: std::marker::PhantomData,
        }
    }

    /// Sets everything but the quants from the four rows' file bytes (Q4_K's
    /// and Q5_K's `d`, `dmin` and `scales` at 0..16).
    #[inline(always)]
    fn set_le_scales(&mut self, rows: [&[u8]; 4]) {
        let heads = rows.map(k_head_le);
        self.d = heads.map(|h| h.0);
        self.dmin = heads.map(|h| h.1);
        self.scales = std::array::from_fn(|j| heads.map(|h| h.2[j] as i16));
        self.min_pairs = std::array::from_fn(|k| std::array::from_fn(|i| heads[i / 2].3[2 * k + i % 2] as i16));
    }

    /// Row `lane`.
    fn lane(&self, lane: usize) -> KRow {
        let mut q = [0; QK_K];
        pair_lane(&self.qs, lane, &mut q);
        (
            f16::from_f32(self.d[lane]),
            f16::from_f32(self.dmin[lane]),
            self.scales.map(|s| s[lane] as u8),
            std::array::from_fn(|j| self.min_pairs[j / 2][2 * lane + j % 2] as u8),
            q,
        )
    }
}

/// The 6-bit scales and mins of a K-quant block as plain integers.
/// The head of a Q4_K or Q5_K block's file bytes: `(d, dmin, scales, mins)`.
fn k_head_le(b: &[u8]) -> (f32, f32, [u8; 8], [u8; 8]) {
    let (sc, m) = scales_mins(b[4..16].try_into().expect("12 scale bytes"));
    (f16_le(b, 0), f16_le(b, 2), sc, m)
}

fn scales_mins(scales: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
    (sm.map(|v| v.0), sm.map(|v| v.1))
}

/// The 256 nibbles of a Q4_K/Q5_K block in element order: element `64c + l`
/// is the low nibble of `qs[32c + l]`, element `64c + 32 + l` its high one.
fn k_nibbles(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    std::array::from_fn(|i| {
        let byte = qs[32 * (i / 64) + i % 32];
        if i % 64 < 32 {
            byte & 0xF
        } else {
            byte >> 4
        }
    })
}

/// The inverse of [`k_nibbles`] (the low four bits of each quant).
fn k_pack_nibbles(q: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for (i, &v) in q.iter().enumerate() {
        qs[32 * (i / 64) + i % 32] |= if i % 64 < 32 { v & 0xF } else { (v & 0xF) << 4 };
    }
    qs
}

impl PackedBlock for BlockKWidex4<BlockQ4K> {
    type Src = BlockQ4K;
    fn pack(rows: [Option<BlockQ4K>; 4]) -> Self {
        Self::from_rows(rows.map(|b| match b {
            None => (f16::ZERO, f16::ZERO, [0; 8], [0; 8], [0; QK_K]),
            Some(b) => {
                let (sc, m) = scales_mins(&b.scales);
                (b.d, b.dmin, sc, m, k_nibbles(&b.qs))
            }
        }))
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let b = block_arrays::<{ BlockQ4K::BYTES }>(rows);
        out.set_le_scales(rows);
        let qs = &mut out.qs;
        // Chunk c (qs bytes 32c..32c + 32): column pair 32c + l is the low
        // nibbles of bytes 2l, 2l + 1, pair 32c + 16 + l their high nibbles.
        for c in 0..4 {
            for l in 0..16 {
                let w = pair_word(&b, 16 + 32 * c + 2 * l);
                put_word(qs, 32 * c + l, w & bytes(0x0F));
                put_word(qs, 32 * c + 16 + l, (w >> 4) & bytes(0x0F));
            }
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ4K {
        let (d, dmin, sc, m, q) = self.lane(lane);
        BlockQ4K {
            d,
            dmin,
            scales: pack_scale_min_k4(&sc, &m),
            qs: k_pack_nibbles(&q),
        }
    }
}

impl PackedBlock for BlockKWidex4<BlockQ5K> {
    type Src = BlockQ5K;
    fn pack(rows: [Option<BlockQ5K>; 4]) -> Self {
        Self::from_rows(rows.map(|b| match b {
            None => (f16::ZERO, f16::ZERO, [0; 8], [0; 8], [0; QK_K]),
            Some(b) => {
                let (sc, m) = scales_mins(&b.scales);
                // The Q4_K nibbles plus bit `i / 32` of qh[i % 32] as the fifth bit (16).
                let mut q = k_nibbles(&b.qs);
                for (i, v) in q.iter_mut().enumerate() {
                    *v |= ((b.qh[i % 32] >> (i / 32)) & 1) << 4;
                }
                (b.d, b.dmin, sc, m, q)
            }
        }))
    }
    fn pack_le(rows: [&[u8]; 4], out: &mut Self) {
        let b = block_arrays::<{ BlockQ5K::BYTES }>(rows);
        out.set_le_scales(rows);
        let qs = &mut out.qs;
        // As Q4_K's (qs at 48), plus the fifth bits: element 64c + 2l + k's
        // is bit 2c of qh[2l + k] (qh at 16), element 64c + 32 + 2l + k's bit 2c + 1.
        for l in 0..16 {
            let h = pair_word(&b, 16 + 2 * l);
            let fifth = |bit: usize| ((h >> bit) & bytes(1)) << 4;
            for c in 0..4 {
                let w = pair_word(&b, 48 + 32 * c + 2 * l);
                put_word(qs, 32 * c + l, (w & bytes(0x0F)) | fifth(2 * c));
                put_word(qs, 32 * c + 16 + l, ((w >> 4) & bytes(0x0F)) | fifth(2 * c + 1));
            }
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ5K {
        let (d, dmin, sc, m, q) = self.lane(lane);
        let mut qh = [0u8; QK_K / 8];
        for (i, &v) in q.iter().enumerate() {
            qh[i % 32] |= (v >> 4) << (i / 32);
        }
        BlockQ5K {
            d,
            dmin,
            scales: pack_scale_min_k4(&sc, &m),
            qh,
            qs: k_pack_nibbles(&q),
        }
    }
}

/// All 256 quants of a Q6_K block minus 32, in element order: what
/// [`q6k_quant`] gives element by element, here a half (128 elements) at a
/// time without per-element index arithmetic (load conversion cost).
fn q6k_quants(b: &BlockQ6K) -> [i8; QK_K] {
    let mut out = [0i8; QK_K];
    for half in 0..2 {
        let ql = &b.ql[64 * half..64 * half + 64];
        let qh = &b.qh[32 * half..32 * half + 32];
        let o = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let h = qh[l];
            o[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | ((h >> 6) << 4)) as i8 - 32;
        }
    }
    debug_assert!((0..QK_K).all(|i| out[i] == q6k_quant(b, i)));
    out
}

/// A quantized (rows, cols) matrix in groups of four rows: group `g` holds
/// rows `4g..4g + 4`, its blocks in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Interleaved<P: PackedBlock> {
    blocks: Vec<P>,
    blocks_per_row: usize,
    rows: usize,
}

impl<P: PackedBlock> Interleaved<P> {
    /// Packs a matrix from its file bytes (`rows` rows of `cols` elements,
    /// `cols` a multiple of the block size, `bytes` exactly the matrix).
    pub fn from_le_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        let src = P::Src::BYTES;
        let per_row = cols / P::Src::ELEMS;
        if !cols.is_multiple_of(P::Src::ELEMS) || Some(bytes.len()) != rows.checked_mul(per_row * src) {
            return Err(format!(
                "{} bytes are not {rows} rows of {cols} {} elements",
                bytes.len(),
                P::Src::TYPE.name()
            ));
        }
        let groups = rows.div_ceil(4);
        // Every block is written in its place: building one and moving it
        // into the Vec would copy it (100 + 1 instruction per byte in wasm).
        let mut blocks = zeroed_vec::<P>(groups * per_row);
        let row_bytes = per_row * src;
        if row_bytes > 0 {
            let (whole, last) = blocks.split_at_mut(rows / 4 * per_row);
            // Whole groups of four rows straight from their bytes.
            for (outs, group) in whole.chunks_exact_mut(per_row).zip(bytes.chunks_exact(4 * row_bytes)) {
                let (r0, rest) = group.split_at(row_bytes);
                let (r1, rest) = rest.split_at(row_bytes);
                let (r2, r3) = rest.split_at(row_bytes);
                for ((((out, a), b), c), d) in outs
                    .iter_mut()
                    .zip(r0.chunks_exact(src))
                    .zip(r1.chunks_exact(src))
                    .zip(r2.chunks_exact(src))
                    .zip(r3.chunks_exact(src))
                {
                    P::pack_le([a, b, c, d], out);
                }
            }
            // The last group, if padded, block by block.
            let g = rows / 4;
            for (j, out) in last.iter_mut().enumerate() {
                *out = P::pack(std::array::from_fn(|lane| {
                    let r = 4 * g + lane;
                    (r < rows).then(|| {
                        let at = (r * per_row + j) * src;
                        P::Src::read(&bytes[at..at + src])
                    })
                }));
            }
        }
        Ok(Interleaved {
            blocks,
            blocks_per_row: per_row,
            rows,
        })
    }

    /// The packed blocks of rows `4g..4g + 4`.
    #[inline]
    pub fn group(&self, g: usize) -> &[P] {
        &self.blocks[g * self.blocks_per_row..(g + 1) * self.blocks_per_row]
    }

    /// Row `row` as ggml blocks (the oracle's input).
    pub fn row_blocks(&self, row: usize) -> Vec<P::Src> {
        debug_assert!(row < self.rows);
        self.group(row / 4).iter().map(|b| b.unpack(row % 4)).collect()
    }

    /// Number of rows (without padding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of four-row groups (`rows` rounded up to a multiple of four, / 4).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(4)
    }

    /// Blocks per row (and per group).
    pub fn blocks_per_row(&self) -> usize {
        self.blocks_per_row
    }

    /// Every packed block: group 0's blocks in column order, then group 1's…
    pub fn blocks(&self) -> &[P] {
        &self.blocks
    }

    /// Heap bytes of the packed blocks.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len() * size_of::<P>()
    }
}

/// A float (rows, cols) matrix with the rows of each group of four in the
/// lanes: element `(4g + r, c)` is at `(g · cols + c) · 4 + r`. One
/// `v128.load` then gives column `c` of four rows, and multiplying it by
/// `x[c]` splatted accumulates each row in its own lane
/// ([`crate::kernels::simd_f32`]). Padding rows are zero.
///
/// The values may come from F16 or BF16 weights widened at load; `acts`
/// then says their activations are rounded to that type, as for the
/// weights kept as they are (see [`RowsInLanes::multiplying`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RowsInLanes {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    acts: ActFamily,
}

impl RowsInLanes {
    /// Interleaves row-major `values` ((rows, cols), converted by `to_f32`).
    pub fn new<T: Copy>(values: &[T], rows: usize, cols: usize, to_f32: impl Fn(T) -> f32) -> Self {
        assert_eq!(values.len(), rows * cols);
        RowsInLanes::from_fn(rows, cols, |i| to_f32(values[i]))
    }

    /// Interleaves row-major little-endian file bytes ((rows, cols) elements of
    /// `N` bytes, converted by `to_f32`): the same as [`RowsInLanes::new`] of
    /// the values, four rows at a time straight from the bytes.
    pub fn from_le_bytes<const N: usize>(
        bytes: &[u8],
        rows: usize,
        cols: usize,
        to_f32: impl Fn([u8; N]) -> f32,
    ) -> Self {
        assert_eq!(Some(bytes.len()), rows.checked_mul(cols).and_then(|n| n.checked_mul(N)));
        let groups = rows.div_ceil(4);
        let mut data = vec![0.0f32; groups * cols * 4];
        let row_bytes = cols * N;
        if row_bytes > 0 {
            let value = |b: &[u8]| to_f32(b.try_into().expect("one element"));
            for (out, src) in data.chunks_exact_mut(4 * cols).zip(bytes.chunks(4 * row_bytes)) {
                if src.len() == 4 * row_bytes {
                    let (r0, rest) = src.split_at(row_bytes);
                    let (r1, rest) = rest.split_at(row_bytes);
                    let (r2, r3) = rest.split_at(row_bytes);
                    for ((((o, a), b), c), d) in out
                        .chunks_exact_mut(4)
                        .zip(r0.chunks_exact(N))
                        .zip(r1.chunks_exact(N))
                        .zip(r2.chunks_exact(N))
                        .zip(r3.chunks_exact(N))
                    {
                        o.copy_from_slice(&[value(a), value(b), value(c), value(d)]);
                    }
                } else {
                    // The last group, padded with zero rows.
                    for (lane, row) in src.chunks_exact(row_bytes).enumerate() {
                        for (c, v) in row.chunks_exact(N).enumerate() {
                            out[4 * c + lane] = value(v);
                        }
                    }
                }
            }
        }
        RowsInLanes {
            data,
            rows,
            cols,
            acts: ActFamily::Float,
        }
    }

    /// Interleaves a (rows, cols) matrix whose row-major element `i` is
    /// `value(i)` (no row-major copy is made: the heap holds one matrix).
    pub fn from_fn(rows: usize, cols: usize, value: impl Fn(usize) -> f32) -> Self {
        let groups = rows.div_ceil(4);
        let mut data = vec![0.0f32; groups * cols * 4];
        for r in 0..rows {
            let (g, lane) = (r / 4, r % 4);
            for c in 0..cols {
                data[(g * cols + c) * 4 + lane] = value(r * cols + c);
            }
        }
        RowsInLanes {
            data,
            rows,
            cols,
            acts: ActFamily::Float,
        }
    }

    /// These values multiplying activations of `acts` (the source type's:
    /// [`ActFamily::F16`] for widened F16 weights, [`ActFamily::BF16`] for
    /// BF16; [`ActFamily::Float`], the default, for f32).
    pub fn multiplying(mut self, acts: ActFamily) -> Self {
        self.acts = acts;
        self
    }

    /// The activation form the values multiply (see [`RowsInLanes::multiplying`]).
    pub fn acts(&self) -> ActFamily {
        self.acts
    }

    /// Row `row` into `out` (cols).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let (g, lane) = (row / 4, row % 4);
        let group = &self.data[g * self.cols * 4..(g + 1) * self.cols * 4];
        for (o, c) in out.iter_mut().zip(group.chunks_exact(4)) {
            *o = c[lane];
        }
    }

    /// The interleaved values of group `g` (`cols · 4`).
    #[inline]
    pub fn group(&self, g: usize) -> &[f32] {
        &self.data[g * self.cols * 4..(g + 1) * self.cols * 4]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of four-row groups.
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(4)
    }

    /// Heap bytes of the values (padding rows included).
    pub fn heap_bytes(&self) -> usize {
        self.data.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{blocks_to_le_bytes, quantize_row_q8_0};

    #[test]
    fn q8_0_packs_and_unpacks_every_row_exactly_with_padding() {
        let (rows, cols) = (6, 96);
        let src: Vec<BlockQ8_0> = (0..rows)
            .flat_map(|r| {
                let v: Vec<f32> = (0..cols).map(|c| ((r * 31 + c * 7) % 23) as f32 - 11.0).collect();
                quantize_row_q8_0(&v)
            })
            .collect();
        let packed = Interleaved::<BlockQ8_0x4>::from_le_bytes(&blocks_to_le_bytes(&src), rows, cols).unwrap();
        assert_eq!(packed.group(1).len(), 3);
        for r in 0..rows {
            assert_eq!(packed.row_blocks(r), src[r * 3..r * 3 + 3]);
        }
        assert!(Interleaved::<BlockQ8_0x4>::from_le_bytes(&[0; 33], 1, 32).is_err());
    }

    fn roundtrip<P: PackedBlock>(src: Vec<P::Src>, rows: usize, cols: usize)
    where
        P::Src: PartialEq + std::fmt::Debug,
    {
        let packed = Interleaved::<P>::from_le_bytes(&blocks_to_le_bytes(&src), rows, cols).unwrap();
        let per_row = cols / P::Src::ELEMS;
        for r in 0..rows {
            assert_eq!(packed.row_blocks(r), src[r * per_row..(r + 1) * per_row], "row {r}");
        }
    }

    #[test]
    fn f16_and_bf16_bits_widen_as_half_does_for_every_value() {
        for h in 0..=u16::MAX {
            assert_eq!(
                f16_bits_to_f32(h).to_bits(),
                f16::from_bits(h).to_f32().to_bits(),
                "f16 {h:#06x}"
            );
            assert_eq!(
                bf16_bits_to_f32(h).to_bits(),
                half::bf16::from_bits(h).to_f32().to_bits(),
                "bf16 {h:#06x}"
            );
        }
    }

    /// Pseudo-random bytes (every bit pattern of scales, quants and f16 scales, NaNs included).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// `pack_le` of raw block bytes is `pack` of the blocks read from them,
    /// bit for bit (compared through the bytes of every lane's unpacked
    /// block, which `unpack` reproduces exactly, and the packed fields).
    fn pack_le_matches_pack<P: PackedBlock + std::fmt::Debug>(seed: u64) {
        let n = P::Src::BYTES;
        for t in 0..64 {
            let raw = noise(4 * n, seed * 1000 + t);
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &raw[r * n..(r + 1) * n]);
            // Over another block: pack_le must overwrite every field.
            let other = noise(4 * n, seed * 1000 + t + 500);
            let mut fast = P::pack(std::array::from_fn(|r| Some(P::Src::read(&other[r * n..(r + 1) * n]))));
            P::pack_le(rows, &mut fast);
            let slow = P::pack(rows.map(|b| Some(P::Src::read(b))));
            // Through Debug: PartialEq fails on NaN scales (whose bits the exhaustive f16 test covers).
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "block {t}");
            for lane in 0..4 {
                let mut a = Vec::new();
                fast.unpack(lane).write(&mut a);
                let mut b = Vec::new();
                slow.unpack(lane).write(&mut b);
                assert_eq!(a, b, "block {t} lane {lane}");
            }
        }
    }

    #[test]
    fn packing_from_bytes_gives_the_blocks_packing_from_blocks_gives() {
        pack_le_matches_pack::<BlockQ8_0x4>(1);
        pack_le_matches_pack::<BlockQ4_0Widex4>(2);
        pack_le_matches_pack::<BlockQ4_0x4>(3);
        pack_le_matches_pack::<BlockQ4Kx4>(4);
        pack_le_matches_pack::<BlockKWidex4<BlockQ4K>>(5);
        pack_le_matches_pack::<BlockQ5Kx4>(6);
        pack_le_matches_pack::<BlockKWidex4<BlockQ5K>>(7);
        pack_le_matches_pack::<BlockQ6Kx4>(8);
        pack_le_matches_pack::<BlockQ5_0x4>(9);
        pack_le_matches_pack::<BlockIQ4NLx4>(10);
        pack_le_matches_pack::<BlockQ4_1x4>(11);
        pack_le_matches_pack::<BlockQ5_1x4>(12);
        pack_le_matches_pack::<BlockQ3Kx4>(13);
        pack_le_matches_pack::<BlockQ2Kx4>(14);
        pack_le_matches_pack::<BlockIQ4XSx4>(15);
    }

    /// Every lane of a packed block unpacks to the file bytes it was packed
    /// from (random bytes, then `fix`; the f16 scales at `scales` made
    /// finite, since a NaN need not keep its payload through f32).
    fn unpack_inverts_pack<P: PackedBlock>(seed: u64, scales: &[usize], fix: fn(&mut [u8])) {
        let n = P::Src::BYTES;
        for t in 0..64 {
            let mut raw = noise(4 * n, seed * 1000 + t);
            for (i, block) in raw.chunks_exact_mut(n).enumerate() {
                for &at in scales {
                    let d = f16::from_f32((i as f32 - 1.5) * 0.37 * (t as f32 + 1.0)).to_bits();
                    block[at..at + 2].copy_from_slice(&d.to_le_bytes());
                }
                fix(block);
            }
            let packed = P::pack(std::array::from_fn(|r| Some(P::Src::read(&raw[r * n..(r + 1) * n]))));
            for lane in 0..4 {
                let mut back = Vec::new();
                packed.unpack(lane).write(&mut back);
                assert_eq!(
                    back,
                    raw[lane * n..(lane + 1) * n],
                    "{} block {t} lane {lane}",
                    P::Src::TYPE.name()
                );
            }
        }
    }

    #[test]
    fn packed_blocks_unpack_to_their_file_bytes() {
        let keep = |_: &mut [u8]| {};
        unpack_inverts_pack::<BlockQ3Kx4>(1, &[108], keep);
        // Q2_K keeps a quant only times its scale: every scale made nonzero.
        unpack_inverts_pack::<BlockQ2Kx4>(2, &[80, 82], |b| b[..16].iter_mut().for_each(|s| *s |= 1));
        unpack_inverts_pack::<BlockIQ4XSx4>(3, &[0], keep);
        unpack_inverts_pack::<BlockQ6Kx4>(4, &[208], keep);
        unpack_inverts_pack::<BlockKWidex4<BlockQ4K>>(5, &[0, 2], keep);
    }

    /// Under a zero Q2_K scale the quants are lost in packing, but the
    /// values are not: every weight is then `-dmin · m` whatever its quant.
    #[test]
    fn q2_k_groups_with_a_zero_scale_unpack_to_the_same_values() {
        for t in 0..16 {
            let mut raw = noise(BlockQ2K::BYTES, 700 + t);
            raw[80..84].copy_from_slice(&[0x00, 0x3C, 0x00, 0x38]); // d = 1, dmin = 0.5
            raw[..16].iter_mut().step_by(2).for_each(|s| *s &= 0xF0);
            let block = BlockQ2K::read(&raw);
            let back = BlockQ2Kx4::pack([Some(block), None, None, None]).unpack(0);
            let (mut want, mut got) = (vec![0.0; QK_K], vec![0.0; QK_K]);
            crate::quant::dequantize_row_q2_k(&[block], &mut want);
            crate::quant::dequantize_row_q2_k(&[back], &mut got);
            assert_eq!(got, want, "block {t}");
            assert_ne!(back, block, "block {t}: quants under a zero scale were random");
        }
    }

    #[test]
    fn rows_in_lanes_from_bytes_is_rows_in_lanes_of_the_values() {
        for (rows, cols) in [(1, 3), (4, 5), (5, 8), (7, 2), (8, 16), (3, 0)] {
            let raw = noise(rows * cols * 4, (rows * 100 + cols) as u64);
            let f32s: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let fast = RowsInLanes::from_le_bytes(&raw, rows, cols, f32::from_le_bytes);
            let slow = RowsInLanes::new(&f32s, rows, cols, |v| v);
            assert_eq!(
                fast.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let raw = &raw[..rows * cols * 2];
            let h: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let fast = RowsInLanes::from_le_bytes(raw, rows, cols, |b| f16_bits_to_f32(u16::from_le_bytes(b)));
            let slow = RowsInLanes::new(&h, rows, cols, |v| f16::from_bits(v).to_f32());
            assert_eq!(
                fast.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let fast = RowsInLanes::from_le_bytes(raw, rows, cols, |b| bf16_bits_to_f32(u16::from_le_bytes(b)));
            let slow = RowsInLanes::new(&h, rows, cols, |v| half::bf16::from_bits(v).to_f32());
            assert_eq!(
                fast.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!((fast.rows(), fast.cols()), (rows, cols));
        }
    }

    #[test]
    fn the_32_element_byte_layouts_unpack_every_row_exactly() {
        use crate::quant::{BlockIQ4NL, BlockQ4_1, BlockQ5_0, BlockQ5_1};
        // Raw bytes (every quant, fifth-bit and index pattern), finite f16 scales.
        fn raw<B: Block>(rows: usize, seed: usize, fix: impl Fn(B) -> B) -> Vec<B> {
            let raw: Vec<u8> = (0..rows * 3 * B::BYTES)
                .map(|i| ((i * 131 + seed) % 251) as u8)
                .collect();
            raw.chunks_exact(B::BYTES).map(|c| fix(B::read(c))).collect()
        }
        let (rows, cols) = (5, 96);
        let (d, m) = (f16::from_f32(0.75), f16::from_f32(-2.5));
        roundtrip::<BlockQ5_0x4>(raw(rows, 1, |b: BlockQ5_0| BlockQ5_0 { d, ..b }), rows, cols);
        roundtrip::<BlockIQ4NLx4>(raw(rows, 2, |b: BlockIQ4NL| BlockIQ4NL { d, ..b }), rows, cols);
        roundtrip::<BlockQ4_1x4>(raw(rows, 3, |b: BlockQ4_1| BlockQ4_1 { d, m, ..b }), rows, cols);
        roundtrip::<BlockQ5_1x4>(raw(rows, 4, |b: BlockQ5_1| BlockQ5_1 { d, m, ..b }), rows, cols);
    }

    #[test]
    fn k_quants_pack_and_unpack_every_row_exactly() {
        let (rows, cols) = (5, 512);
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        roundtrip::<BlockQ4Kx4>(crate::quant::quantize_row_q4_k(&v), rows, cols);
        roundtrip::<BlockQ6Kx4>(crate::quant::quantize_row_q6_k(&v), rows, cols);
        // Raw bit patterns, not only what our quantizer writes: every scale bit and quant bit.
        let raw: Vec<u8> = (0..rows * 2 * BlockQ6K::BYTES).map(|i| (i * 131 % 251) as u8).collect();
        let blocks: Vec<BlockQ6K> = raw.chunks_exact(BlockQ6K::BYTES).map(BlockQ6K::read).collect();
        let blocks: Vec<BlockQ6K> = blocks
            .into_iter()
            .map(|mut b| {
                b.d = f16::from_f32(0.5);
                b
            })
            .collect();
        roundtrip::<BlockQ6Kx4>(blocks, rows, cols);
        let raw: Vec<u8> = (0..rows * 2 * BlockQ4K::BYTES).map(|i| (i * 67 % 253) as u8).collect();
        let blocks: Vec<BlockQ4K> = raw
            .chunks_exact(BlockQ4K::BYTES)
            .map(|c| BlockQ4K {
                d: f16::from_f32(0.25),
                dmin: f16::from_f32(-0.5),
                ..BlockQ4K::read(c)
            })
            .collect();
        roundtrip::<BlockQ4Kx4>(blocks.clone(), rows, cols);
        roundtrip::<BlockKWidex4<BlockQ4K>>(blocks, rows, cols);
        let raw: Vec<u8> = (0..rows * 2 * BlockQ5K::BYTES).map(|i| (i * 89 % 241) as u8).collect();
        let blocks: Vec<BlockQ5K> = raw
            .chunks_exact(BlockQ5K::BYTES)
            .map(|c| BlockQ5K {
                d: f16::from_f32(0.25),
                dmin: f16::from_f32(0.5),
                ..BlockQ5K::read(c)
            })
            .collect();
        roundtrip::<BlockQ5Kx4>(blocks.clone(), rows, cols);
        roundtrip::<BlockKWidex4<BlockQ5K>>(blocks, rows, cols);
        roundtrip::<BlockKWidex4<BlockQ5K>>(crate::quant::quantize_row_q5_k(&v), rows, cols);
        roundtrip::<BlockKWidex4<BlockQ4K>>(crate::quant::quantize_row_q4_k(&v), rows, cols);
        roundtrip::<BlockQ4_0x4>(crate::quant::quantize_row_q4_0(&v), rows, cols);
        roundtrip::<BlockQ4_0Widex4>(crate::quant::quantize_row_q4_0(&v), rows, cols);
        let raw: Vec<u8> = (0..rows * 16 * BlockQ4_0::BYTES)
            .map(|i| (i * 71 % 239) as u8)
            .collect();
        let blocks: Vec<BlockQ4_0> = raw
            .chunks_exact(BlockQ4_0::BYTES)
            .map(|c| BlockQ4_0 {
                d: f16::from_f32(0.75),
                ..BlockQ4_0::read(c)
            })
            .collect();
        roundtrip::<BlockQ4_0Widex4>(blocks, rows, cols);
    }
}
