//! Quantized block formats, exactly as ggml lays them out
//! (`ggml-common.h`), with a scalar dequantizer per type (the oracle every
//! dot product is tested against) and a scalar quantizer per type (for tests
//! and `synth`).
//!
//! | type | elements | bytes | layout |
//! |---|---|---|---|
//! | [`BlockQ8_0`] | 32 | 34 | `d: f16, qs: [i8; 32]`; `x = q * d` |
//! | [`BlockQ4_0`] | 32 | 18 | `d: f16, qs: [u8; 16]`; low nibbles are elements 0..16, high nibbles 16..32; `x = (q - 8) * d` |
//! | [`BlockQ4_1`] | 32 | 20 | `d, m: f16, qs: [u8; 16]`; nibbles as Q4_0; `x = q * d + m` |
//! | [`BlockQ5_0`] | 32 | 22 | `d: f16, qh: [u8; 4], qs: [u8; 16]`; bit `j` of `qh` (little-endian u32) is element `j`'s fifth bit; `x = (q - 16) * d` |
//! | [`BlockQ5_1`] | 32 | 24 | `d, m: f16, qh: [u8; 4], qs: [u8; 16]`; `x = q * d + m` |
//! | [`BlockIQ4NL`] | 32 | 18 | `d: f16, qs: [u8; 16]`; nibbles as Q4_0 index [`KVALUES_IQ4NL`]; `x = d * kvalues[q]` |
//! | [`BlockQ4K`] | 256 | 144 | `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 sub-blocks of 32 with 6-bit scale and min; `x = d * sc * q - dmin * m` |
//! | [`BlockQ5K`] | 256 | 176 | as Q4_K plus `qh: [u8; 32]`, the fifth bit of each quant |
//! | [`BlockQ3K`] | 256 | 110 | `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`; 16 sub-blocks of 16, 6-bit scales; `x = d * (sc - 32) * q`, `q` in -4..=3 |
//! | [`BlockQ2K`] | 256 | 84 | `scales: [u8; 16], qs: [u8; 64], d, dmin: f16`; 16 sub-blocks of 16 with 4-bit scale and min; `x = d * sc * q - dmin * m`, `q` in 0..=3 |
//! | [`BlockIQ4XS`] | 256 | 136 | `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`; 8 sub-blocks of 32 with 6-bit scales, nibbles index [`KVALUES_IQ4NL`]; `x = d * (ls - 32) * kvalues[q]` |
//! | [`BlockQ6K`] | 256 | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; 16 sub-blocks of 16; `x = d * sc * (q - 32)` |
//! | [`BlockQ8K`] | 256 | 292 | `d: f32, qs: [i8; 256], bsums: [i16; 16]`: activations for the K-quant dot products |
//!
//! In memory, weights stay in these structs (`Vec<Block…>`, copied out of the
//! file bytes field by field at load: no alignment assumption, no unsafe).
//! Scales stay f16 as in the file: for the K-quants that is two conversions
//! per 256 weights; for Q8_0/Q4_0 it is one per 32, which a SIMD kernel may
//! prefer to repack to f32 at load (issue 6 measures it).
//!
//! Activations are quantized once per matvec into [`BlockQ8A`] (blocks of 32,
//! f32 scale: for Q8_0/Q4_0 weights) or [`BlockQ8K`] (blocks of 256 with
//! per-16 sums: for the K-quants) by the quantizers beside the kernels that
//! use them ([`crate::kernels::acts`]).

mod dequant;
pub mod packed;
mod quantize;

pub use dequant::{
    dequantize_row_iq4_nl, dequantize_row_iq4_xs, dequantize_row_q2_k, dequantize_row_q3_k, dequantize_row_q4_0,
    dequantize_row_q4_1, dequantize_row_q4_k, dequantize_row_q5_0, dequantize_row_q5_1, dequantize_row_q5_k,
    dequantize_row_q6_k, dequantize_row_q8_0,
};
pub(crate) use dequant::{iq4xs_index, iq4xs_scale, q2k_quant, q3k_quant, q3k_scale};
pub use quantize::{
    quantize_row_iq4_nl, quantize_row_iq4_xs, quantize_row_q2_k, quantize_row_q3_k, quantize_row_q4_0,
    quantize_row_q4_1, quantize_row_q4_k, quantize_row_q4_k_with, quantize_row_q5_0, quantize_row_q5_1,
    quantize_row_q5_k, quantize_row_q5_k_with, quantize_row_q6_k, quantize_row_q6_k_with, quantize_row_q8_0, Search,
};

use crate::tensor::GgmlType;
use half::f16;
use std::mem::size_of;

/// Elements per block of the 32-element formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL).
pub const QK8_0: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// Q8_0: 32 weights, one f16 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// Q4_0: 32 weights in nibbles, one f16 scale; value `(q - 8) * d`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Byte `j`: element `j` in the low nibble, element `j + 16` in the high one.
    pub qs: [u8; QK8_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// Q4_1: 32 weights in nibbles with a scale and an offset; value `q * d + m`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    /// As [`BlockQ4_0::qs`].
    pub qs: [u8; QK8_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// Q5_0: 32 five-bit weights, one f16 scale; value `(q - 16) * d`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Bit `j` of this little-endian u32 is the fifth bit of element `j`.
    pub qh: [u8; 4],
    /// The low four bits, as [`BlockQ4_0::qs`].
    pub qs: [u8; QK8_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// Q5_1: 32 five-bit weights with a scale and an offset; value `q * d + m`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    /// As [`BlockQ5_0::qh`].
    pub qh: [u8; 4],
    pub qs: [u8; QK8_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// IQ4_NL's 16 levels (ggml's `kvalues_iq4nl`): a non-linear grid, denser
/// near zero, that the 4-bit indices select.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// IQ4_NL: 32 weights as 4-bit indices into [`KVALUES_IQ4NL`], one f16
/// scale; value `d * KVALUES_IQ4NL[q]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockIQ4NL {
    pub d: f16,
    /// As [`BlockQ4_0::qs`].
    pub qs: [u8; QK8_0 / 2],
}
const _: () = assert!(size_of::<BlockIQ4NL>() == 18);

/// The quant of element `j` (0..32) of the nibble array shared by the
/// 32-element formats: low nibbles are elements 0..16, high nibbles 16..32.
#[inline]
pub(crate) fn nibble(qs: &[u8; QK8_0 / 2], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0xF
    } else {
        qs[j - 16] >> 4
    }
}

/// Element `j`'s five-bit quant in Q5_0/Q5_1 (`qh` a little-endian u32).
#[inline]
pub(crate) fn quant5(qh: &[u8; 4], qs: &[u8; QK8_0 / 2], j: usize) -> u8 {
    nibble(qs, j) | (((u32::from_le_bytes(*qh) >> j) & 1) << 4) as u8
}

/// Quants `q[0..32]` (four bits each used) as the nibble array of the
/// 32-element formats ([`nibble`]'s inverse).
pub(crate) fn pack_nibbles(q: &[u8; QK8_0]) -> [u8; QK8_0 / 2] {
    std::array::from_fn(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4))
}

/// The fifth bits of `q[0..32]` as Q5_0/Q5_1's `qh` ([`quant5`]'s inverse
/// with [`pack_nibbles`]).
pub(crate) fn pack_fifth_bits(q: &[u8; QK8_0]) -> [u8; 4] {
    q.iter()
        .enumerate()
        .fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j))
        .to_le_bytes()
}

/// Q4_K: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and a
/// 6-bit min; value `d * sc[j] * q - dmin * m[j]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// 64-element chunk `c` lives in `qs[32c..32c + 32]`: sub-block `2c` in
    /// the low nibbles, sub-block `2c + 1` in the high nibbles.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// Q5_K: Q4_K plus a fifth bit per weight.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Bit `j` of `qh[l]` is the high bit of element `l` of sub-block `j`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, arranged as Q4_K's `qs`.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// Q6_K: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales;
/// value `d * scales[j] * (q - 32)`, `q` 6 bits.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// Q3_K: 256 values in 16 groups of 16, each `d * (sc - 32) * q` with a
/// 6-bit group scale `sc` and a 3-bit quant `q` in -4..=3.
///
/// Element `e = 128 h + 32 k + l` (h < 2, k < 4, l < 32): its low two bits
/// are bits `2k..2k+2` of `qs[32 h + l]`; its high bit, bit `e / 32` of
/// `hmask[l]`, is *set* for `q ≥ 0` (a clear bit subtracts 4). Scale `j`:
/// low 4 bits the low (j < 8) or high nibble of `scales[j % 8]`, high 2
/// bits bits `2 (j / 4)..` of `scales[8 + j % 4]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// Q2_K: 256 values in 16 groups of 16, each `d * sc * q - dmin * m` with a
/// 4-bit scale `sc` (low nibble of `scales[g]`), a 4-bit min `m` (high
/// nibble) and a 2-bit quant `q`.
///
/// Element `e = 128 h + 32 k + l` (h < 2, k < 4, l < 32) is bits `2k..2k+2`
/// of `qs[32 h + l]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// IQ4_XS: 256 values in 8 sub-blocks of 32, each `d * (ls - 32) *
/// KVALUES_IQ4NL[q]` with a 6-bit sub-block scale `ls` (low 4 bits: nibble
/// `j % 2` of `scales_l[j / 2]`; high 2 bits: bits `2j..2j+2` of
/// `scales_h`) and 4-bit indices arranged per sub-block as IQ4_NL's.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    /// Sub-block `j`'s 32 indices in `qs[16j..16j + 16]`, as [`nibble`] reads them.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockIQ4XS>() == 136);

/// Q8_K: ggml's activation block for the K-quant dot products: 256 int8
/// values, an f32 scale, and the sum of each group of 16 quants (so a dot
/// product can subtract mins and offsets without touching the quants again).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
    /// The sums of each group of 32 (`bsums[2j] + bsums[2j + 1]`): what the
    /// K-quant mins multiply.
    pub bsums32: [i16; QK_K / 32],
    /// `qs` widened to i16: the operand of `i32x4.dot_i16x8_s` in the
    /// byte-layout kernels ([`crate::quant::packed`]).
    pub qw: [i16; QK_K],
}
const _: () = assert!(size_of::<BlockQ8K>() == 820);

/// An activation block of 32 int8 values with its scale held as f32: what
/// the 32-element weight types are multiplied with (the scale then an f16
/// value, as ggml's `block_q8_0` and `block_q8_1` store it), and what
/// icllm's Q8 attention uses (the scale exact).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8A {
    pub d: f32,
    /// The f32 scale times the quants' sum, rounded to f16 (ggml's
    /// `block_q8_1.s`): what the offsets of Q4_1 and Q5_1 weights multiply
    /// (0 in icllm's own Q8 attention blocks).
    pub s: f32,
    pub qs: [i8; QK8_0],
    /// `qs` widened to i16 (see [`BlockQ8K::qw`]).
    pub qw: [i16; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8A>() == 104);

/// A ggml block format: its type, size, byte codec and scalar dequantizer.
pub trait Block: Copy + Sized + 'static {
    const TYPE: GgmlType;
    /// Elements per block.
    const ELEMS: usize;
    /// Bytes per block in a file (equal to `size_of::<Self>()`).
    const BYTES: usize;
    /// Reads one block from exactly `Self::BYTES` little-endian bytes.
    fn read(b: &[u8]) -> Self;
    /// Appends the block's little-endian bytes.
    fn write(&self, out: &mut Vec<u8>);
    /// Writes the block's `Self::ELEMS` values into `out` (the oracle).
    fn dequantize(&self, out: &mut [f32]);
    /// Quantizes a row whose length is a multiple of `Self::ELEMS`.
    fn quantize_row(x: &[f32]) -> Vec<Self>;
}

fn rd_f16(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn rd_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("slice of length N")
}

fn rd_i8_array<const N: usize>(b: &[u8], at: usize) -> [i8; N] {
    std::array::from_fn(|i| b[at + i] as i8)
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 34;
    fn read(b: &[u8]) -> Self {
        BlockQ8_0 {
            d: rd_f16(b, 0),
            qs: rd_i8_array(b, 2),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend(self.qs.iter().map(|&q| q as u8));
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q8_0(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q8_0(x)
    }
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 18;
    fn read(b: &[u8]) -> Self {
        BlockQ4_0 {
            d: rd_f16(b, 0),
            qs: rd_array(b, 2),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q4_0(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q4_0(x)
    }
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 20;
    fn read(b: &[u8]) -> Self {
        BlockQ4_1 {
            d: rd_f16(b, 0),
            m: rd_f16(b, 2),
            qs: rd_array(b, 4),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.m.to_bits().to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q4_1(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q4_1(x)
    }
}

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 22;
    fn read(b: &[u8]) -> Self {
        BlockQ5_0 {
            d: rd_f16(b, 0),
            qh: rd_array(b, 2),
            qs: rd_array(b, 6),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q5_0(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q5_0(x)
    }
}

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 24;
    fn read(b: &[u8]) -> Self {
        BlockQ5_1 {
            d: rd_f16(b, 0),
            m: rd_f16(b, 2),
            qh: rd_array(b, 4),
            qs: rd_array(b, 8),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.m.to_bits().to_le_bytes());
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q5_1(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q5_1(x)
    }
}

impl Block for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4NL;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 18;
    fn read(b: &[u8]) -> Self {
        BlockIQ4NL {
            d: rd_f16(b, 0),
            qs: rd_array(b, 2),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_iq4_nl(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_iq4_nl(x)
    }
}

impl Block for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 144;
    fn read(b: &[u8]) -> Self {
        BlockQ4K {
            d: rd_f16(b, 0),
            dmin: rd_f16(b, 2),
            scales: rd_array(b, 4),
            qs: rd_array(b, 16),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.dmin.to_bits().to_le_bytes());
        out.extend_from_slice(&self.scales);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q4_k(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q4_k(x)
    }
}

impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 176;
    fn read(b: &[u8]) -> Self {
        BlockQ5K {
            d: rd_f16(b, 0),
            dmin: rd_f16(b, 2),
            scales: rd_array(b, 4),
            qh: rd_array(b, 16),
            qs: rd_array(b, 48),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.dmin.to_bits().to_le_bytes());
        out.extend_from_slice(&self.scales);
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q5_k(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q5_k(x)
    }
}

impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 110;
    fn read(b: &[u8]) -> Self {
        BlockQ3K {
            hmask: rd_array(b, 0),
            qs: rd_array(b, 32),
            scales: rd_array(b, 96),
            d: rd_f16(b, 108),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hmask);
        out.extend_from_slice(&self.qs);
        out.extend_from_slice(&self.scales);
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q3_k(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q3_k(x)
    }
}

impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 84;
    fn read(b: &[u8]) -> Self {
        BlockQ2K {
            scales: rd_array(b, 0),
            qs: rd_array(b, 16),
            d: rd_f16(b, 80),
            dmin: rd_f16(b, 82),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.scales);
        out.extend_from_slice(&self.qs);
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.dmin.to_bits().to_le_bytes());
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q2_k(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q2_k(x)
    }
}

impl Block for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4XS;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 136;
    fn read(b: &[u8]) -> Self {
        BlockIQ4XS {
            d: rd_f16(b, 0),
            scales_h: u16::from_le_bytes([b[2], b[3]]),
            scales_l: rd_array(b, 4),
            qs: rd_array(b, 8),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
        out.extend_from_slice(&self.scales_h.to_le_bytes());
        out.extend_from_slice(&self.scales_l);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_iq4_xs(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_iq4_xs(x)
    }
}

impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 210;
    fn read(b: &[u8]) -> Self {
        BlockQ6K {
            ql: rd_array(b, 0),
            qh: rd_array(b, 128),
            scales: rd_i8_array(b, 192),
            d: rd_f16(b, 208),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ql);
        out.extend_from_slice(&self.qh);
        out.extend(self.scales.iter().map(|&s| s as u8));
        out.extend_from_slice(&self.d.to_bits().to_le_bytes());
    }
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_row_q6_k(std::slice::from_ref(self), out)
    }
    fn quantize_row(x: &[f32]) -> Vec<Self> {
        quantize_row_q6_k(x)
    }
}

/// Copies `bytes` (a whole number of blocks) into typed blocks.
pub fn blocks_from_le_bytes<B: Block>(bytes: &[u8]) -> Result<Vec<B>, String> {
    if !bytes.len().is_multiple_of(B::BYTES) {
        return Err(format!(
            "{} bytes is not a whole number of {} blocks ({} bytes each)",
            bytes.len(),
            B::TYPE.name(),
            B::BYTES
        ));
    }
    Ok(bytes.chunks_exact(B::BYTES).map(B::read).collect())
}

/// The file bytes of `blocks`.
pub fn blocks_to_le_bytes<B: Block>(blocks: &[B]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * B::BYTES);
    for b in blocks {
        b.write(&mut out);
    }
    out
}

/// Dequantizes `blocks` into `out` (`blocks.len() * B::ELEMS` values).
pub fn dequantize_blocks<B: Block>(blocks: &[B], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * B::ELEMS);
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::ELEMS)) {
        b.dequantize(o);
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K `scales` array: the first four
/// pairs are the low 6 bits of bytes `j` and `j + 4`; the last four take
/// their low 4 bits from byte `j + 4` (scale: low nibble, min: high nibble)
/// and their top 2 bits from the spare top bits of bytes `j - 4` and `j`.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 8 six-bit scales and mins the way [`scale_min_k4`] unpacks them.
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j].min(63), m[j].min(63));
        if j < 4 {
            q[j] |= ls;
            q[j + 4] |= lm;
        } else {
            q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

/// Quantizes a row of `ty` into its file bytes. Float types are converted;
/// `x.len()` must be a multiple of the type's block size.
pub fn quantize_row_bytes(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, String> {
    quantize_row_bytes_with(ty, x, Search::Ggml)
}

/// As [`quantize_row_bytes`], with a choice of K-quant scale search.
pub fn quantize_row_bytes_with(ty: GgmlType, x: &[f32], search: Search) -> Result<Vec<u8>, String> {
    if !x.len().is_multiple_of(ty.block_size()) {
        return Err(format!(
            "row of {} is not a multiple of the {} block size {}",
            x.len(),
            ty.name(),
            ty.block_size()
        ));
    }
    Ok(match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        GgmlType::BF16 => x
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => blocks_to_le_bytes(&quantize_row_q8_0(x)),
        GgmlType::Q4_0 => blocks_to_le_bytes(&quantize_row_q4_0(x)),
        GgmlType::Q4_1 => blocks_to_le_bytes(&quantize_row_q4_1(x)),
        GgmlType::Q5_0 => blocks_to_le_bytes(&quantize_row_q5_0(x)),
        GgmlType::Q5_1 => blocks_to_le_bytes(&quantize_row_q5_1(x)),
        GgmlType::IQ4NL => blocks_to_le_bytes(&quantize_row_iq4_nl(x)),
        GgmlType::Q4K => blocks_to_le_bytes(&quantize_row_q4_k_with(x, search)),
        GgmlType::Q5K => blocks_to_le_bytes(&quantize_row_q5_k_with(x, search)),
        GgmlType::Q6K => blocks_to_le_bytes(&quantize_row_q6_k_with(x, search)),
        GgmlType::Q3K => blocks_to_le_bytes(&quantize_row_q3_k(x)),
        GgmlType::Q2K => blocks_to_le_bytes(&quantize_row_q2_k(x)),
        GgmlType::IQ4XS => blocks_to_le_bytes(&quantize_row_iq4_xs(x)),
        other => return Err(format!("cannot quantize to {}", other.name())),
    })
}

#[cfg(test)]
mod tests;
