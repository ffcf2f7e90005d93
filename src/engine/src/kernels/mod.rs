//! Pure math kernels: small functions over slices, no allocation inside
//! (except the activation quantization buffers of [`matvec`] / [`matmul`]).
//!
//! Every kernel here is the **scalar oracle**: later SIMD versions must agree
//! with it, and tests compare against it. Weight matrices reach the kernels
//! through one seam, [`dot_row_prepared`] (and [`matvec`] / [`matmul`] built on
//! it), which call the [`WeightMatrix`] trait ([`matrix`]).
//!
//! F32 weights multiply the f32 activations directly; the others multiply
//! them in the form ggml converts them to: [`PreparedActs::new`] prepares a
//! vector once for the weight layout (rounded to f16 or bf16 for F16 and
//! BF16 weights, Q8 blocks of 32 for Q8_0/Q4_0, Q8_K blocks of 256 for the
//! K-quants; see [`acts`]), and every row's dot product reuses it (see
//! [`quant`] for the block kernels).
//!
//! Determinism: the result of a dot product depends only on its two inputs,
//! never on how many tokens are batched together or where a job was
//! interrupted. [`matmul`] therefore prepares each token's activations
//! exactly as [`matvec`] does, and every (row, token) value is its row's
//! oracle bit for bit.

pub mod acts;
mod attention;
mod conv;
pub mod exp;
pub mod matrix;
pub mod quant;
mod rope;
pub mod simd;
pub(crate) mod simd_f32;
pub(crate) mod simd_quant;

/// The canister builds (wasm32 or wasm64, + simd128) run the [`simd`]
/// kernels; every other build runs the scalar oracles below. Both give the
/// same bits.
pub(crate) const SIMD: bool = cfg!(all(
    any(target_arch = "wasm32", target_arch = "wasm64"),
    target_feature = "simd128"
));

pub use attention::{attention, attention_q8, attention_q8_scalar, AttentionShape};
pub use conv::short_conv;
pub use rope::{llama3_rope_freq_factors, rope, rope_heads, RopeStyle, RopeTable};

pub use acts::{ActFamily, PreparedActs, SharedActs};
pub use matrix::WeightMatrix;

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

/// `W[row, :] · x` for a weight matrix `w` of shape (rows, cols), `x` (cols),
/// with `xq` = `PreparedActs::new(w.acts(), x)`.
pub fn dot_row_prepared(w: &dyn WeightMatrix, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
    w.dot_row(row, x, xq)
}

/// `W[row, :] · x`, preparing `x` for the weight type on the way (use
/// [`matvec`] or [`dot_row_prepared`] to prepare once for many rows).
pub fn dot_row(w: &dyn WeightMatrix, row: usize, x: &[f32]) -> f32 {
    w.dot_row(row, x, &PreparedActs::new(w.acts(), x))
}

/// Copies row `row` of `w` (rows, cols) into `out` (cols) as f32,
/// dequantizing quantized types (embedding lookup).
pub fn row_to_f32(w: &dyn WeightMatrix, row: usize, out: &mut [f32]) {
    w.row_to_f32(row, out)
}

/// `out = W x`: `w` (rows, cols), `x` (cols), `out` (rows).
/// Quantized weights: `x` is quantized once, then every row reuses it.
pub fn matvec(w: &dyn WeightMatrix, x: &[f32], out: &mut [f32]) {
    debug_assert_eq!(x.len(), w.cols());
    debug_assert_eq!(out.len(), w.rows());
    w.matvec(x, &PreparedActs::new(w.acts(), x), out)
}

/// Batched `out[t] = W x[t]` for `n_tokens` tokens: `w` (rows, cols),
/// `xs` (n_tokens, cols), `out` (n_tokens, rows).
///
/// Each token's activations are prepared once per batch, as [`matvec`]
/// prepares them, and each (row, token) value is the one [`matvec`] gives,
/// so a token's result does not depend on the batch it is in. The
/// byte-layout types run weight-stationary kernels on 8 or 4 tokens at a
/// time, or [`matvec`]'s whole-matrix pass per token; the others read each
/// row once per batch (the row loop is outside).
pub fn matmul(w: &dyn WeightMatrix, xs: &[f32], out: &mut [f32]) {
    matmul_shared(w, &mut SharedActs::new(xs, w.cols()), out)
}

/// [`matmul`] with activations shared between weights that read the same
/// input (see [`SharedActs`]).
pub fn matmul_shared(w: &dyn WeightMatrix, acts: &mut SharedActs, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(acts.cols, cols);
    let xs = acts.xs;
    debug_assert_eq!(out.len(), xs.len() / cols * rows);
    w.matmul(xs, acts.prepared(w.acts()), out)
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

/// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// computed as `x · sigmoid(2u)` (the same function) with [`exp::exp`].
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + exp::exp(-2.0 * u))
}

/// GELU as llama.cpp's CPU backend applies it (`GGML_GELU_FP16`): its
/// input rounded to f16, [`gelu_tanh`] of that, the result rounded to f16;
/// 0 at or below -10 and `x` at or above 10. Looked up, as ggml does, in a
/// table over the 65,536 f16 values (256 KiB, built once per process: about
/// 10 M instructions in the canister, against hundreds per call computed).
pub fn gelu_tanh_f16(x: f32) -> f32 {
    gelu_f16_lookup(gelu_f16_table(), x)
}

/// [`gelu_tanh`] of every f16 value, rounded to f16, by f16 bits.
fn gelu_f16_table() -> &'static [f32] {
    use half::f16;
    static TABLE: std::sync::OnceLock<Box<[f32]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_f32())
            .collect()
    })
}

#[inline]
fn gelu_f16_lookup(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[half::f16::from_f32(x).to_bits() as usize]
    }
}

/// GeGLU in place: `gate[i] = gelu_tanh_f16(gate[i]) * up[i]`; both
/// (hidden_dim), as llama.cpp's `ggml_vec_geglu_f32`.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    let table = gelu_f16_table();
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_f16_lookup(table, *g) * u;
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

    /// An f32 matrix kept row-major (the float matrices' default kernels).
    fn tensor_f32(rows: usize, cols: usize, data: Vec<f32>) -> matrix::FloatMatrix<f32> {
        matrix::FloatMatrix::new(data, rows, cols)
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

    /// F16 and BF16 weights multiply the activations rounded to their own
    /// type, as ggml's CPU backend converts them (`vec_dot_type`) before its
    /// dot products: kept as they are or widened at load, one token or a
    /// batch, every row is `dot_f32(widened row, rounded x)` bit for bit.
    #[test]
    fn sixteen_bit_float_weights_multiply_activations_rounded_to_their_type() {
        use crate::quant::packed::RowsInLanes;
        let (rows, cols, n_tokens) = (6, 37, 3);
        let values = pseudo(rows * cols, 7);
        // Activations with more bits than f16 or bf16 keep.
        let xs: Vec<f32> = pseudo(n_tokens * cols, 8).iter().map(|v| v * 3.7 + 1e-4).collect();
        let f16_rows: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bf16_rows: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        // (kept as they are, widened at load, the widened values, the rounding)
        type Case = (Box<dyn WeightMatrix>, Box<dyn WeightMatrix>, Vec<f32>, fn(f32) -> f32);
        let cases: [Case; 2] = [
            (
                Box::new(matrix::FloatMatrix::new(f16_rows.clone(), rows, cols)),
                Box::new(RowsInLanes::new(&f16_rows, rows, cols, half::f16::to_f32).multiplying(ActFamily::F16)),
                f16_rows.iter().map(|h| h.to_f32()).collect(),
                |v| half::f16::from_f32(v).to_f32(),
            ),
            (
                Box::new(matrix::FloatMatrix::new(bf16_rows.clone(), rows, cols)),
                Box::new(RowsInLanes::new(&bf16_rows, rows, cols, half::bf16::to_f32).multiplying(ActFamily::BF16)),
                bf16_rows.iter().map(|h| h.to_f32()).collect(),
                |v| half::bf16::from_f32(v).to_f32(),
            ),
        ];
        for (kept, widened, wide, round) in cases {
            let mut changed = false;
            for w in [&kept, &widened] {
                let mut batched = vec![0.0; n_tokens * rows];
                matmul(w.as_ref(), &xs, &mut batched);
                for (t, x) in xs.chunks_exact(cols).enumerate() {
                    let rounded: Vec<f32> = x.iter().map(|&v| round(v)).collect();
                    let mut single = vec![0.0; rows];
                    matvec(w.as_ref(), x, &mut single);
                    for r in 0..rows {
                        let want = dot_f32(&wide[r * cols..(r + 1) * cols], &rounded);
                        let layout = w.layout();
                        assert_eq!(single[r].to_bits(), want.to_bits(), "{layout} row {r} token {t}");
                        assert_eq!(batched[t * rows + r].to_bits(), want.to_bits(), "{layout} batched");
                        assert_eq!(dot_row(w.as_ref(), r, x).to_bits(), want.to_bits(), "{layout} dot_row");
                        changed |= want != dot_f32(&wide[r * cols..(r + 1) * cols], x);
                    }
                }
            }
            assert!(changed, "rounding the activations changed nothing");
        }
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
