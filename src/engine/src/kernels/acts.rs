//! Activations in the form a weight type's dot product consumes: f32 as it
//! is for f32 weights, rounded to f16 or bf16 for F16 and BF16 weights,
//! int8 blocks for quantized ones; prepared once per vector the way ggml's
//! CPU backend converts them to the weight type's `vec_dot_type`
//! (`fp32_to_fp16`, `fp32_to_bf16`, `quantize_row_q8_0`, `quantize_row_q8_K`).
//!
//! Rounding is ties-to-even (`f32x4.nearest` in wasm), so the canister's SIMD
//! quantizer gives the scalar one's bits.

use super::{simd_quant, SIMD};
use crate::quant::{BlockQ8A, BlockQ8K, QK8_0, QK_K};

/// Which activation form a weight layout multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFamily {
    /// f32 as it is (f32 weights).
    Float,
    /// Each value rounded to f16 (to nearest, ties to even), as ggml
    /// converts activations for F16 weights before their dot products.
    F16,
    /// Each value rounded to bf16 (to nearest, ties to even), as ggml
    /// converts activations for BF16 weights.
    BF16,
    /// int8 blocks of 32 with a scale that is an f16 value, as ggml's
    /// `block_q8_0` / `block_q8_1` ([`BlockQ8A`], [`quantize_act_q8_0`]:
    /// the 32-element weight types).
    Q8,
    /// Q8_K blocks of 256 with per-16 sums ([`BlockQ8K`]: the K-quants).
    Q8K,
}

/// An activation vector in the form a weight type's dot product consumes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum PreparedActs {
    /// f32 weights use the f32 vector as it is.
    #[default]
    Float,
    /// For F16 weights: the values rounded to f16, held as f32.
    F16(Vec<f32>),
    /// For BF16 weights: the values rounded to bf16, held as f32.
    BF16(Vec<f32>),
    /// For Q8_0 and Q4_0 weights: int8 blocks of 32.
    Q8(Vec<BlockQ8A>),
    /// For K-quant weights: Q8_K blocks of 256 with per-16 sums.
    Q8K(Vec<BlockQ8K>),
}

impl PreparedActs {
    /// Prepares `x` for dot products with weights that multiply `family`.
    pub fn new(family: ActFamily, x: &[f32]) -> PreparedActs {
        let mut p = PreparedActs::Float;
        p.prepare(family, x);
        p
    }

    /// As [`PreparedActs::new`], reusing this value's buffer when it can.
    pub fn prepare(&mut self, family: ActFamily, x: &[f32]) {
        match family {
            ActFamily::Q8 => {
                if !matches!(self, PreparedActs::Q8(_)) {
                    *self = PreparedActs::Q8(Vec::new());
                }
                if let PreparedActs::Q8(v) = self {
                    quantize_act_q8_0(x, v);
                }
            }
            ActFamily::Q8K => {
                if !matches!(self, PreparedActs::Q8K(_)) {
                    *self = PreparedActs::Q8K(Vec::new());
                }
                if let PreparedActs::Q8K(v) = self {
                    quantize_act_q8k(x, v);
                }
            }
            ActFamily::F16 => {
                if !matches!(self, PreparedActs::F16(_)) {
                    *self = PreparedActs::F16(Vec::new());
                }
                if let PreparedActs::F16(v) = self {
                    round_acts(x, v, |x| half::f16::from_f32(x).to_f32());
                }
            }
            ActFamily::BF16 => {
                if !matches!(self, PreparedActs::BF16(_)) {
                    *self = PreparedActs::BF16(Vec::new());
                }
                if let PreparedActs::BF16(v) = self {
                    round_acts(x, v, |x| half::bf16::from_f32(x).to_f32());
                }
            }
            ActFamily::Float => *self = PreparedActs::Float,
        }
    }

    /// The f32 values a float weight type multiplies: `x` itself for
    /// [`ActFamily::Float`], else its rounding for `family`, taken from
    /// `self` when it was prepared for that family (the hot path), else
    /// computed here.
    pub fn float_values<'a>(&'a self, family: ActFamily, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        use std::borrow::Cow;
        match (family, self) {
            (ActFamily::F16, PreparedActs::F16(v)) | (ActFamily::BF16, PreparedActs::BF16(v)) => Cow::Borrowed(v),
            (ActFamily::F16 | ActFamily::BF16, _) => match PreparedActs::new(family, x) {
                PreparedActs::F16(v) | PreparedActs::BF16(v) => Cow::Owned(v),
                _ => unreachable!("prepared for a 16-bit float family"),
            },
            _ => Cow::Borrowed(x),
        }
    }
}

/// `out = round(x)`, elementwise, reusing `out`'s buffer.
fn round_acts(x: &[f32], out: &mut Vec<f32>, round: impl Fn(f32) -> f32) {
    out.clear();
    out.extend(x.iter().map(|&v| round(v)));
}

/// An activation block type: how to find blocks of it in [`PreparedActs`].
pub trait ActBlock: Sized + 'static {
    const FAMILY: ActFamily;
    /// The blocks, if `p` was prepared for this family.
    fn of(p: &PreparedActs) -> Option<&[Self]>;
}

impl ActBlock for BlockQ8A {
    const FAMILY: ActFamily = ActFamily::Q8;
    fn of(p: &PreparedActs) -> Option<&[Self]> {
        match p {
            PreparedActs::Q8(v) => Some(v),
            _ => None,
        }
    }
}

impl ActBlock for BlockQ8K {
    const FAMILY: ActFamily = ActFamily::Q8K;
    fn of(p: &PreparedActs) -> Option<&[Self]> {
        match p {
            PreparedActs::Q8K(v) => Some(v),
            _ => None,
        }
    }
}

/// A batch of activation rows, prepared for each weight family (float, Q8
/// blocks, Q8_K blocks) the first time a weight of that family asks, so the
/// projections that read the same input (q, k and v; gate and up) quantize it
/// once. Preparation depends only on the rows and the family, so sharing it
/// changes no result.
pub struct SharedActs<'a> {
    pub(super) xs: &'a [f32],
    pub(super) cols: usize,
    q8: Vec<PreparedActs>,
    q8k: Vec<PreparedActs>,
    float: Vec<PreparedActs>,
    f16: Vec<PreparedActs>,
    bf16: Vec<PreparedActs>,
}

impl<'a> SharedActs<'a> {
    /// `xs` is (n_tokens, cols).
    pub fn new(xs: &'a [f32], cols: usize) -> Self {
        debug_assert!(cols > 0 && xs.len().is_multiple_of(cols));
        SharedActs {
            xs,
            cols,
            q8: Vec::new(),
            q8k: Vec::new(),
            float: Vec::new(),
            f16: Vec::new(),
            bf16: Vec::new(),
        }
    }

    /// Each token's activations prepared for weights that multiply `family`.
    pub(super) fn prepared(&mut self, family: ActFamily) -> &[PreparedActs] {
        let slot = match family {
            ActFamily::Q8 => &mut self.q8,
            ActFamily::Q8K => &mut self.q8k,
            ActFamily::Float => &mut self.float,
            ActFamily::F16 => &mut self.f16,
            ActFamily::BF16 => &mut self.bf16,
        };
        if slot.is_empty() {
            *slot = self
                .xs
                .chunks_exact(self.cols)
                .map(|x| PreparedActs::new(family, x))
                .collect();
        }
        slot
    }
}

/// Symmetric int8 quantization of one block as ggml's x86 CPU backend
/// quantizes activations (`quantize_row_q8_0`, and `quantize_row_q8_K_ref`
/// up to the sign): `q = nearest_even(x · 127/amax)` clamped to ±127, with
/// the factor computed as `127 / amax`, not as `1 / (amax / 127)` (the two
/// differ in the last bit for some `amax`, which moves a quant now and then).
/// Returns `amax = max |x|` (0 for an all-zero block): [`q8_scale`] and
/// [`q8k_scale`] give the scale. The canister build runs the SIMD version,
/// which gives the same bits.
#[inline]
pub fn quantize_i8_block(x: &[f32], qs: &mut [i8]) -> f32 {
    if SIMD && x.len().is_multiple_of(16) {
        simd_quant::quantize_block_i8(x, qs)
    } else {
        quantize_i8_block_scalar(x, qs)
    }
}

/// The scalar oracle of [`quantize_i8_block`].
pub fn quantize_i8_block_scalar(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = ((v * id).round_ties_even() as i32).clamp(-127, 127) as i8;
    }
    amax
}

/// The scale of a block [`quantize_i8_block`] quantized, as `block_q8_0`
/// and `block_q8_1` compute it (before rounding it to f16): `amax / 127`.
#[inline]
pub fn q8_scale(amax: f32) -> f32 {
    amax / 127.0
}

/// The scale of a Q8_K block, as `quantize_row_q8_K_ref` computes it:
/// `1 / (127 / amax)`, which is not always `amax / 127`.
#[inline]
pub fn q8k_scale(amax: f32) -> f32 {
    if amax != 0.0 {
        1.0 / (127.0 / amax)
    } else {
        0.0
    }
}

/// Quantizes activations `x` (a multiple of 32 long) into 32-element int8
/// blocks with f32 scales (icllm's own Q8 attention, which has no use for
/// `s`: it stays 0, off the per-head hot path).
pub fn quantize_act_q8(x: &[f32], out: &mut Vec<BlockQ8A>) {
    quantize_blocks_q8(x, out, |amax, _| (q8_scale(amax), 0.0));
}

/// Quantizes activations `x` (a multiple of 32 long) as ggml's x86 backend
/// does for its 32-element weight types (`quantize_row_q8_0` and
/// `quantize_row_q8_1`): each block's scale rounded to f16 as the block
/// stores it (the quants come from the f32 amax), and `s`, what the
/// offsets of Q4_1 and Q5_1 multiply, the f32 scale times the quants' sum
/// rounded to f16 (`block_q8_1.s`), so that a dot product is llama.cpp's.
pub fn quantize_act_q8_0(x: &[f32], out: &mut Vec<BlockQ8A>) {
    quantize_blocks_q8(x, out, |amax, qs| {
        let sum = if SIMD {
            simd_quant::sum_i8(qs)
        } else {
            qs.iter().map(|&q| q as i32).sum()
        };
        (
            half::f16::from_f32(q8_scale(amax)).to_f32(),
            half::f16::from_f32(q8_scale(amax) * sum as f32).to_f32(),
        )
    });
}

/// 32-element int8 blocks of `x`, each block's `(d, s)` from its amax and
/// quants by `scales`.
fn quantize_blocks_q8(x: &[f32], out: &mut Vec<BlockQ8A>, scales: impl Fn(f32, &[i8; QK8_0]) -> (f32, f32)) {
    debug_assert_eq!(x.len() % QK8_0, 0);
    out.clear();
    out.extend(x.chunks_exact(QK8_0).map(|c| {
        let mut b = BlockQ8A {
            d: 0.0,
            s: 0.0,
            qs: [0; QK8_0],
            qw: [0; QK8_0],
        };
        let amax = quantize_i8_block(c, &mut b.qs);
        (b.d, b.s) = scales(amax, &b.qs);
        simd_quant::widen_i8(&b.qs, &mut b.qw);
        b
    }));
}

/// Quantizes activations `x` (a multiple of 256 long) into Q8_K blocks with
/// per-16 sums, for dot products with K-quant weights.
pub fn quantize_act_q8k(x: &[f32], out: &mut Vec<BlockQ8K>) {
    debug_assert_eq!(x.len() % QK_K, 0);
    out.clear();
    out.extend(x.chunks_exact(QK_K).map(|c| {
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            bsums32: [0; QK_K / 32],
            qw: [0; QK_K],
        };
        b.d = q8k_scale(quantize_i8_block(c, &mut b.qs));
        if SIMD {
            simd_quant::group_sums_16(&b.qs, &mut b.bsums);
        } else {
            for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = g.iter().map(|&q| q as i16).sum();
            }
        }
        for (s, pair) in b.bsums32.iter_mut().zip(b.bsums.chunks_exact(2)) {
            *s = pair[0] + pair[1];
        }
        simd_quant::widen_i8(&b.qs, &mut b.qw);
        b
    }));
}

/// Dequantizes activation blocks (for tests: the int8 activations as f32).
pub fn dequantize_act_q8(blocks: &[BlockQ8A]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
        .collect()
}

/// Dequantizes Q8_K activation blocks (for tests).
pub fn dequantize_act_q8k(blocks: &[BlockQ8K]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
        .collect()
}
