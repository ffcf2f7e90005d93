//! Pure math kernels: small functions over slices, no allocation inside
//! (except the activation quantization buffers of [`matvec`] / [`matmul`]).
//!
//! Every kernel here is the **scalar oracle**: later SIMD versions must agree
//! with it, and tests compare against it. Weight matrices reach the kernels
//! through one seam, [`dot_row_prepared`] (and [`matvec`] / [`matmul`] built on
//! it), which dispatches on the tensor type.
//!
//! Float weights (F32, F16, BF16) multiply the f32 activations directly.
//! Quantized weights multiply int8 activations: [`PreparedActs::new`]
//! quantizes a vector once for the weight type (Q8 blocks of 32 for
//! Q8_0/Q4_0, Q8_K blocks of 256 for the K-quants, as ggml does), and every
//! row's dot product reuses it (see [`quant`] for the block kernels).
//!
//! Determinism: the result of a dot product depends only on its two inputs,
//! never on how many tokens are batched together or where a job was
//! interrupted. [`matmul`] therefore prepares each token's activations
//! exactly as [`matvec`] does and calls the same [`dot_row_prepared`] for
//! every (row, token) pair.

mod attention;
pub mod exp;
pub mod quant;
mod rope;
pub mod simd;
pub(crate) mod simd_f32;
pub(crate) mod simd_quant;

/// The canister build (wasm32 + simd128) runs the [`simd`] kernels; every
/// other build runs the scalar oracles below. Both give the same bits.
pub(crate) const SIMD: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

pub use attention::{attention, attention_q8, attention_q8_scalar, AttentionShape};
pub use rope::{llama3_rope_freq_factors, rope, rope_heads, RopeStyle, RopeTable};

use crate::model::{Tensor, TensorData};
use crate::quant::packed::{Interleaved, PackedBlock};
use crate::quant::{dequantize_blocks, quantize_act_q8, quantize_act_q8k, BlockQ8A, BlockQ8K};
use crate::tensor::GgmlType;

/// Dot product of two f32 vectors of equal length.
///
/// Accumulates in 4 interleaved lanes (element `i` goes to lane `i % 4`),
/// sums the lanes as `(l0 + l1) + (l2 + l3)`, then adds the tail in order.
/// A wasm `f32x4` version can reproduce this order exactly.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b, |x| x)
}

/// Dot product of an f16 row with an f32 vector, in the same lane order as
/// [`dot_f32`] (each f16 widened to f32 exactly before multiplying).
pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    dot_widened(a, b, half::f16::to_f32)
}

/// [`dot_f32`]'s order for any float weight type, each weight widened to f32
/// exactly before it is multiplied: the one scalar oracle the float types share.
pub(crate) fn dot_widened<T: Copy>(a: &[T], b: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n4 = a.len() / 4 * 4;
    let mut lanes = [0.0f32; 4];
    for (ca, cb) in a[..n4].chunks_exact(4).zip(b[..n4].chunks_exact(4)) {
        for l in 0..4 {
            lanes[l] += widen(ca[l]) * cb[l];
        }
    }
    let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (&x, y) in a[n4..].iter().zip(&b[n4..]) {
        sum += widen(x) * y;
    }
    sum
}

/// An activation vector in the form a weight type's dot product consumes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum PreparedActs {
    /// Float weights use the f32 vector as it is.
    #[default]
    Float,
    /// For Q8_0 and Q4_0 weights: int8 blocks of 32.
    Q8(Vec<BlockQ8A>),
    /// For K-quant weights: Q8_K blocks of 256 with per-16 sums.
    Q8K(Vec<BlockQ8K>),
}

impl PreparedActs {
    /// Prepares `x` for dot products with weights of type `ty`.
    pub fn new(ty: GgmlType, x: &[f32]) -> PreparedActs {
        let mut p = PreparedActs::Float;
        p.prepare(ty, x);
        p
    }

    /// As [`PreparedActs::new`], reusing this value's buffer when it can.
    pub fn prepare(&mut self, ty: GgmlType, x: &[f32]) {
        match ActFamily::of(ty) {
            ActFamily::Q8 => {
                if !matches!(self, PreparedActs::Q8(_)) {
                    *self = PreparedActs::Q8(Vec::new());
                }
                if let PreparedActs::Q8(v) = self {
                    quantize_act_q8(x, v);
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
            ActFamily::Float => *self = PreparedActs::Float,
        }
    }
}

/// Which activation form a weight type multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActFamily {
    Float,
    Q8,
    Q8K,
}

impl ActFamily {
    fn of(ty: GgmlType) -> Self {
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => ActFamily::Q8,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => ActFamily::Q8K,
            _ => ActFamily::Float,
        }
    }
}

/// `W[row, :] · x` for a weight matrix `w` of shape (rows, cols), `x` (cols),
/// with `xq` = `PreparedActs::new(w.ty, x)`. The one place that dispatches on
/// the weight type.
pub fn dot_row_prepared(w: &Tensor, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
    let cols = w.cols;
    let span = row * cols..(row + 1) * cols;
    match (&w.data, xq) {
        (TensorData::F32Rows(m), _) => {
            let mut r = vec![0.0; cols];
            m.row(row, &mut r);
            dot_f32(&r, x)
        }
        (TensorData::F32(d), _) if SIMD => simd::dot_f32(&d[span], x),
        (TensorData::F16(d), _) if SIMD => simd::dot_f16(&d[span], x),
        (TensorData::F32(d), _) => dot_f32(&d[span], x),
        (TensorData::F16(d), _) => dot_f16(&d[span], x),
        (TensorData::BF16(d), _) if SIMD => simd::dot_bf16(&d[span], x),
        (TensorData::BF16(d), _) => quant::dot_bf16(&d[span], x),
        (TensorData::Q8_0(p), PreparedActs::Q8(a)) => quant::vec_dot_q8_0_q8_0(&p.row_blocks(row), a),
        (TensorData::Q4_0(p), PreparedActs::Q8(a)) => quant::vec_dot_q4_0_q8_0(&p.row_blocks(row), a),
        (TensorData::Q4_0Wide(p), PreparedActs::Q8(a)) => quant::vec_dot_q4_0_q8_0(&p.row_blocks(row), a),
        (TensorData::Q4K(p), PreparedActs::Q8K(a)) => quant::vec_dot_q4_k_q8_k(&p.row_blocks(row), a),
        (TensorData::Q5K(p), PreparedActs::Q8K(a)) => quant::vec_dot_q5_k_q8_k(&p.row_blocks(row), a),
        (TensorData::Q4KWide(p), PreparedActs::Q8K(a)) => quant::vec_dot_q4_k_q8_k(&p.row_blocks(row), a),
        (TensorData::Q5KWide(p), PreparedActs::Q8K(a)) => quant::vec_dot_q5_k_q8_k(&p.row_blocks(row), a),
        (TensorData::Q6K(p), PreparedActs::Q8K(a)) => quant::vec_dot_q6_k_q8_k(&p.row_blocks(row), a),
        // Activations prepared for another type: prepare them here (slow, never on the hot path).
        _ => dot_row_prepared(w, row, x, &PreparedActs::new(w.ty, x)),
    }
}

/// `W[row, :] · x`, preparing `x` for the weight type on the way (use
/// [`matvec`] or [`dot_row_prepared`] to prepare once for many rows).
pub fn dot_row(w: &Tensor, row: usize, x: &[f32]) -> f32 {
    dot_row_prepared(w, row, x, &PreparedActs::new(w.ty, x))
}

/// Rows `row..row + 4` of `w` against `x`, each the same value as
/// [`dot_row_prepared`]; the SIMD build loads `x` once for the four rows.
pub fn dot_4rows_prepared(w: &Tensor, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
    let cols = w.cols;
    let span = |i: usize| (row + i) * cols..(row + i + 1) * cols;
    match (&w.data, xq) {
        // Packed weights: the portable lane code is bit for bit the oracle, so every build runs it.
        (TensorData::Q4K(p), PreparedActs::Q8K(a)) if row.is_multiple_of(4) => {
            simd_quant::dot4_q4_k(p.group(row / 4), a)
        }
        (TensorData::Q5K(p), PreparedActs::Q8K(a)) if row.is_multiple_of(4) => {
            simd_quant::dot4_q5_k(p.group(row / 4), a)
        }
        (TensorData::Q4_0(p), PreparedActs::Q8(a)) if row.is_multiple_of(4) => {
            simd_quant::dot4_q4_0(p.group(row / 4), a)
        }
        (TensorData::F32(d), _) if SIMD => simd::dot4_f32([0, 1, 2, 3].map(|i| &d[span(i)]), x),
        (TensorData::F16(d), _) if SIMD => simd::dot4_f16([0, 1, 2, 3].map(|i| &d[span(i)]), x),
        (TensorData::BF16(d), _) if SIMD => simd::dot4_bf16([0, 1, 2, 3].map(|i| &d[span(i)]), x),
        _ => [0, 1, 2, 3].map(|i| dot_row_prepared(w, row + i, x, xq)),
    }
}

/// Copies row `row` of `w` (rows, cols) into `out` (cols) as f32,
/// dequantizing quantized types (embedding lookup).
pub fn row_to_f32(w: &Tensor, row: usize, out: &mut [f32]) {
    let cols = w.cols;
    let span = row * cols..(row + 1) * cols;
    match &w.data {
        TensorData::F32(d) => out.copy_from_slice(&d[span]),
        TensorData::F32Rows(m) => m.row(row, out),
        TensorData::F16(d) => {
            for (o, h) in out.iter_mut().zip(&d[span]) {
                *o = h.to_f32();
            }
        }
        TensorData::BF16(d) => {
            for (o, h) in out.iter_mut().zip(&d[span]) {
                *o = h.to_f32();
            }
        }
        TensorData::Q8_0(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q4_0(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q4_0Wide(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q4K(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q5K(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q4KWide(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q5KWide(p) => dequantize_blocks(&p.row_blocks(row), out),
        TensorData::Q6K(p) => dequantize_blocks(&p.row_blocks(row), out),
    }
}

/// `out = W x` in one pass over the whole matrix for the byte-layout types
/// (Q8_0, Q6_K, widened Q4_K/Q5_K: activation-stationary, see
/// [`simd_quant::matvec_q8_0`]); `false` for the other types, which go row
/// group by row group. Each output is bit for bit its row's oracle.
fn matvec_whole(w: &Tensor, x: &[f32], xq: &PreparedActs, out: &mut [f32]) -> bool {
    match (&w.data, xq) {
        (TensorData::F32Rows(m), _) => simd_f32::matvec_rows_in_lanes(m, x, out),
        (TensorData::Q8_0(p), PreparedActs::Q8(a)) => simd_quant::matvec_q8_0(p, a, out),
        (TensorData::Q4_0Wide(p), PreparedActs::Q8(a)) => simd_quant::matvec_q8_0(p, a, out),
        (TensorData::Q6K(p), PreparedActs::Q8K(a)) => simd_quant::matvec_q6_k(p, a, out),
        (TensorData::Q4KWide(p), PreparedActs::Q8K(a)) => simd_quant::matvec_k_wide(p, a, out),
        (TensorData::Q5KWide(p), PreparedActs::Q8K(a)) => simd_quant::matvec_k_wide(p, a, out),
        _ => return false,
    }
    true
}

/// The byte layouts of a prompt batch (Q8_0, and Q4_0/Q4_K/Q5_K widened):
/// the weight-stationary kernels ([`simd_quant::matmul_q8_0`],
/// [`simd_quant::matmul_k_wide`]) on 8 tokens at a time, then 4, the rest
/// one by one; every value is [`matvec_whole`]'s. False (nothing written)
/// for other weights or a single token.
fn matmul_whole(w: &Tensor, xqs: &[PreparedActs], out: &mut [f32]) -> bool {
    if xqs.len() < 2 {
        return false;
    }
    let (q8, q8k) = (|| q8_acts(xqs), || q8k_acts(xqs));
    use simd_quant::{matmul_k_wide as kw, matmul_q8_0 as q8_0};
    match &w.data {
        TensorData::Q8_0(p) => q8().map(|a| batched(p, &a, out, q8_0::<_, 8>, q8_0::<_, 4>, simd_quant::matvec_q8_0)),
        TensorData::Q4_0Wide(p) => {
            q8().map(|a| batched(p, &a, out, q8_0::<_, 8>, q8_0::<_, 4>, simd_quant::matvec_q8_0))
        }
        TensorData::Q4KWide(p) => q8k().map(|a| batched(p, &a, out, kw::<_, 8>, kw::<_, 4>, simd_quant::matvec_k_wide)),
        TensorData::Q5KWide(p) => q8k().map(|a| batched(p, &a, out, kw::<_, 8>, kw::<_, 4>, simd_quant::matvec_k_wide)),
        _ => None,
    }
    .is_some()
}

/// Every token's Q8 activation blocks, if that is how they were prepared.
fn q8_acts(xqs: &[PreparedActs]) -> Option<Vec<&[BlockQ8A]>> {
    xqs.iter()
        .map(|a| match a {
            PreparedActs::Q8(v) => Some(v.as_slice()),
            _ => None,
        })
        .collect()
}

/// Every token's Q8_K activation blocks, if that is how they were prepared.
fn q8k_acts(xqs: &[PreparedActs]) -> Option<Vec<&[BlockQ8K]>> {
    xqs.iter()
        .map(|a| match a {
            PreparedActs::Q8K(v) => Some(v.as_slice()),
            _ => None,
        })
        .collect()
}

/// A batched kernel on `T` tokens: the weights, `T` tokens' activations and outputs.
type Batched<P, A, const T: usize> = fn(&Interleaved<P>, [&[A]; T], [&mut [f32]; T]);

/// `out` (tokens, rows) for every token of `acts`: `eight` on 8 tokens at a
/// time, then `four`, then `one` per token.
fn batched<P: PackedBlock, A>(
    p: &Interleaved<P>,
    mut acts: &[&[A]],
    mut out: &mut [f32],
    eight: Batched<P, A, 8>,
    four: Batched<P, A, 4>,
    one: fn(&Interleaved<P>, &[A], &mut [f32]),
) {
    fn take<P: PackedBlock, A, const T: usize>(
        p: &Interleaved<P>,
        acts: &mut &[&[A]],
        out: &mut &mut [f32],
        kernel: Batched<P, A, T>,
    ) {
        let (x, rest) = acts.split_at(T);
        *acts = rest;
        let (o, rest) = std::mem::take(out).split_at_mut(T * p.rows());
        *out = rest;
        let mut rows = o.chunks_exact_mut(p.rows());
        kernel(
            p,
            std::array::from_fn(|t| x[t]),
            std::array::from_fn(|_| rows.next().expect("a row per token")),
        );
    }
    while acts.len() >= 8 {
        take(p, &mut acts, &mut out, eight);
    }
    if acts.len() >= 4 {
        take(p, &mut acts, &mut out, four);
    }
    for (x, o) in acts.iter().zip(out.chunks_exact_mut(p.rows())) {
        one(p, x, o);
    }
}

/// `out = W x`: `w` (rows, cols), `x` (cols), `out` (rows).
/// Quantized weights: `x` is quantized once, then every row reuses it.
pub fn matvec(w: &Tensor, x: &[f32], out: &mut [f32]) {
    debug_assert_eq!(x.len(), w.cols);
    debug_assert_eq!(out.len(), w.rows);
    let xq = PreparedActs::new(w.ty, x);
    if matvec_whole(w, x, &xq, out) {
        return;
    }
    let rows4 = w.rows / 4 * 4;
    if !packed_groups(w, std::slice::from_ref(&xq), rows4, out) {
        for (r, o) in out[..rows4].chunks_exact_mut(4).enumerate() {
            o.copy_from_slice(&dot_4rows_prepared(w, 4 * r, x, &xq));
        }
    }
    for (r, o) in out.iter_mut().enumerate().skip(rows4) {
        *o = dot_row_prepared(w, r, x, &xq);
    }
}

/// Batched `out[t] = W x[t]` for `n_tokens` tokens: `w` (rows, cols),
/// `xs` (n_tokens, cols), `out` (n_tokens, rows).
///
/// Each token's activations are prepared once per batch, as [`matvec`]
/// prepares them, and each (row, token) value is the one [`matvec`] gives,
/// so a token's result does not depend on the batch it is in. The
/// byte-layout types run [`matvec`]'s whole-matrix pass per token (the IC
/// charges instructions, not memory traffic, so reading the weights once per
/// batch would save nothing there); the others read each row once per batch
/// (the row loop is outside).
pub fn matmul(w: &Tensor, xs: &[f32], out: &mut [f32]) {
    matmul_shared(w, &mut SharedActs::new(xs, w.cols), out)
}

/// A batch of activation rows, prepared for each weight family (float, Q8
/// blocks, Q8_K blocks) the first time a weight of that family asks, so the
/// projections that read the same input (q, k and v; gate and up) quantize it
/// once. Preparation depends only on the rows and the family, so sharing it
/// changes no result.
pub struct SharedActs<'a> {
    xs: &'a [f32],
    cols: usize,
    q8: Vec<PreparedActs>,
    q8k: Vec<PreparedActs>,
    float: Vec<PreparedActs>,
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
        }
    }

    /// Each token's activations prepared for weights of type `ty`.
    fn prepared(&mut self, ty: GgmlType) -> &[PreparedActs] {
        let slot = match ActFamily::of(ty) {
            ActFamily::Q8 => &mut self.q8,
            ActFamily::Q8K => &mut self.q8k,
            ActFamily::Float => &mut self.float,
        };
        if slot.is_empty() {
            *slot = self
                .xs
                .chunks_exact(self.cols)
                .map(|x| PreparedActs::new(ty, x))
                .collect();
        }
        slot
    }
}

/// [`matmul`] with activations shared between weights that read the same
/// input (see [`SharedActs`]).
pub fn matmul_shared(w: &Tensor, acts: &mut SharedActs, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(acts.cols, cols);
    let xs = acts.xs;
    let n_tokens = xs.len() / cols;
    debug_assert_eq!(out.len(), n_tokens * rows);
    let xqs = acts.prepared(w.ty);
    if matmul_whole(w, xqs, out) {
        return;
    }
    if xqs
        .first()
        .is_some_and(|xq| matvec_whole(w, &xs[..cols], xq, &mut out[..rows]))
    {
        for (t, xq) in xqs.iter().enumerate().skip(1) {
            matvec_whole(w, &xs[t * cols..(t + 1) * cols], xq, &mut out[t * rows..(t + 1) * rows]);
        }
        return;
    }
    let rows4 = rows / 4 * 4;
    if !packed_groups(w, xqs, rows4, out) {
        for r in (0..rows4).step_by(4) {
            for (t, xq) in xqs.iter().enumerate() {
                let v = dot_4rows_prepared(w, r, &xs[t * cols..(t + 1) * cols], xq);
                out[t * rows + r..t * rows + r + 4].copy_from_slice(&v);
            }
        }
    }
    for r in rows4..rows {
        for (t, xq) in xqs.iter().enumerate() {
            out[t * rows + r] = dot_row_prepared(w, r, &xs[t * cols..(t + 1) * cols], xq);
        }
    }
}

/// For the packed (quantized) weights that go 4-row group by group (Q4_0,
/// and Q4_K/Q5_K when not widened; the byte-layout types take
/// [`matvec_whole`]): rows `0..rows4` of `w` against every
/// token's prepared activations into `out` (n_tokens, rows), with the
/// weight type matched once per matrix instead of once per 4-row group; each
/// group is the same kernel call [`dot_4rows_prepared`] makes, so the values
/// are the same. Returns false (nothing written) for other weights.
fn packed_groups(w: &Tensor, xqs: &[PreparedActs], rows4: usize, out: &mut [f32]) -> bool {
    let (q8, q8k) = (|| q8_acts(xqs), || q8k_acts(xqs));
    let rows = w.rows;
    match &w.data {
        TensorData::Q4_0(p) => {
            q8().map(|a| each_group(rows, rows4, &a, out, |g, x| simd_quant::dot4_q4_0(p.group(g), x)))
        }
        TensorData::Q4K(p) => {
            q8k().map(|a| each_group(rows, rows4, &a, out, |g, x| simd_quant::dot4_q4_k(p.group(g), x)))
        }
        TensorData::Q5K(p) => {
            q8k().map(|a| each_group(rows, rows4, &a, out, |g, x| simd_quant::dot4_q5_k(p.group(g), x)))
        }
        _ => None,
    }
    .is_some()
}

/// `out[t * rows + r..][..4] = dot(r / 4, &acts[t])` for every 4-row group
/// `r < rows4` (outer) and token `t` (inner).
#[inline(always)]
fn each_group<A>(rows: usize, rows4: usize, acts: &[A], out: &mut [f32], dot: impl Fn(usize, &A) -> [f32; 4]) {
    assert!(rows4 <= rows && rows4.is_multiple_of(4) && out.len() >= acts.len() * rows);
    let po = out.as_mut_ptr();
    for g in 0..rows4 / 4 {
        for (t, a) in acts.iter().enumerate() {
            let v = dot(g, a);
            // SAFETY: t * rows + 4 * g + 4 <= t * rows + rows4 <= out.len() (checked above).
            unsafe { core::ptr::copy_nonoverlapping(v.as_ptr(), po.add(t * rows + 4 * g), 4) };
        }
    }
}

/// RMS normalization: `out = x / sqrt(mean(x²) + eps) * weight`.
/// `x`, `weight`, `out` all (dim).
///
/// `Σ x²` is summed in [`dot_f32`]'s lane order, so the canister's SIMD
/// version ([`simd::dot_f32`], [`simd::scale_mul`]) gives the same bits.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), weight.len());
    debug_assert_eq!(out.len(), x.len());
    let ss = if SIMD { simd::dot_f32(x, x) } else { dot_f32(x, x) };
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    if SIMD {
        return simd::scale_mul(out, x, weight, scale);
    }
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (scale * v);
    }
}

/// Index of the largest value, the first one on ties, NaN counting as
/// smallest: [`crate::sampler::argmax`] (the oracle); the canister build runs
/// [`simd::argmax`], which returns the same index.
pub fn argmax(x: &[f32]) -> usize {
    if SIMD {
        simd::argmax(x)
    } else {
        crate::sampler::argmax(x)
    }
}

/// In-place softmax. An empty slice is left alone. The canister build runs
/// the SIMD passes, which give the same bits as [`softmax_scalar`].
pub fn softmax(x: &mut [f32]) {
    if !SIMD || x.is_empty() {
        return softmax_scalar(x);
    }
    let sum = simd::exp_shifted_sum(x, simd::max(x));
    simd::div_in_place(x, sum);
}

/// The scalar oracle of [`softmax`]: shift by the max, [`exp::exp`], sum in
/// [`dot_f32`]'s lane order (element `i` to lane `i % 4`, lanes as
/// `(l0 + l1) + (l2 + l3)`, then the tail), divide.
pub fn softmax_scalar(x: &mut [f32]) {
    // With a NaN score every output is NaN either way, whichever max is taken.
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n4 = x.len() / 4 * 4;
    let mut lanes = [0.0f32; 4];
    for c in x[..n4].chunks_exact_mut(4) {
        for (l, v) in c.iter_mut().enumerate() {
            *v = exp::exp(*v - max);
            lanes[l] += *v;
        }
    }
    let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for v in &mut x[n4..] {
        *v = exp::exp(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// SiLU (swish): `x * sigmoid(x)`, computed as `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp::exp(-x))
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]`; both (hidden_dim).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    if SIMD {
        return simd::swiglu(gate, up);
    }
    swiglu_scalar(gate, up)
}

/// The scalar oracle of [`swiglu`].
pub fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// `x += y`, elementwise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    if SIMD {
        return simd::add_in_place(x, y);
    }
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Deterministic test values in [-1, 1] (xorshift), shared by the kernel tests.
#[cfg(test)]
pub(crate) fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::GgmlType;

    fn tensor_f32(rows: usize, cols: usize, data: Vec<f32>) -> Tensor {
        Tensor {
            ty: GgmlType::F32,
            rows,
            cols,
            data: TensorData::F32(data),
        }
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn dot_matches_naive_for_all_tail_lengths() {
        for n in 0..13 {
            let a = pseudo(n, 1);
            let b = pseudo(n, 2);
            assert!((dot_f32(&a, &b) as f64 - naive_dot(&a, &b)).abs() < 1e-5, "n = {n}");
        }
    }

    #[test]
    fn f16_dot_equals_f32_dot_of_widened_values() {
        let a16: Vec<half::f16> = pseudo(37, 3).into_iter().map(half::f16::from_f32).collect();
        let a32: Vec<f32> = a16.iter().map(|h| h.to_f32()).collect();
        let b = pseudo(37, 4);
        assert_eq!(dot_f16(&a16, &b).to_bits(), dot_f32(&a32, &b).to_bits());
    }

    #[test]
    fn matvec_is_row_major() {
        // W = [[1, 2, 3], [4, 5, 6]] (2 rows × 3 cols)
        let w = tensor_f32(2, 3, vec![1., 2., 3., 4., 5., 6.]);
        let mut out = [0.0; 2];
        matvec(&w, &[1., 0., -1.], &mut out);
        assert_eq!(out, [-2., -2.]);
    }

    #[test]
    fn matmul_is_bit_identical_to_matvec_per_token() {
        let (rows, cols, n_tokens) = (7, 19, 5);
        let w = tensor_f32(rows, cols, pseudo(rows * cols, 5));
        let xs = pseudo(n_tokens * cols, 6);
        let mut batched = vec![0.0; n_tokens * rows];
        matmul(&w, &xs, &mut batched);
        for t in 0..n_tokens {
            let mut single = vec![0.0; rows];
            matvec(&w, &xs[t * cols..(t + 1) * cols], &mut single);
            for r in 0..rows {
                assert_eq!(single[r].to_bits(), batched[t * rows + r].to_bits());
            }
        }
    }

    #[test]
    fn rmsnorm_normalizes() {
        let x = [3.0, 4.0];
        let mut out = [0.0; 2];
        rmsnorm(&mut out, &x, &[1.0, 2.0], 0.0);
        // rms = sqrt((9 + 16) / 2)
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] - 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = [1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
