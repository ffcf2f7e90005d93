//! Dot products of quantized weight rows with int8-quantized activations
//! (ggml's `vec_dot_<type>_q8_*`), scalar oracles.
//!
//! Shape of every kernel, chosen so a wasm SIMD128 version maps onto it and
//! reproduces it bit for bit:
//! 1. per block (or sub-block), an **exact integer** sum of int8 × int8
//!    products in i32 (`i16x8.extend_*` + `i32x4.dot_i16x8_s`; the order of
//!    integer additions does not matter);
//! 2. per block, the integer sums are combined with the integer sub-block
//!    scales, still in i32 (ranges are checked in the comments);
//! 3. per block, one f32 step `acc += (d_w * d_x) * isum` (and, for Q4_K/Q5_K,
//!    `- (dmin_w * d_x) * imin`; for Q4_1/Q5_1 `+ m_w * (d_x * Σ x)`, the
//!    offset times the activations' sum, which is ggml's `block_q8_1.s`),
//!    blocks in order. Only step 3 rounds, so a
//!    SIMD kernel that does steps 1–2 in vectors and step 3 in the same
//!    scalar order gives identical results.

use crate::quant::{
    iq4xs_index, iq4xs_scale, nibble, q2k_quant, q3k_quant, q3k_scale, quant5, scale_min_k4, BlockIQ4NL, BlockIQ4XS,
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8A, BlockQ8K,
    BlockQ8_0, KVALUES_IQ4NL, QK8_0, QK_K,
};

/// Σ a[i] · b[i] over int8 values, in i32 (exact).
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Q8_0 weights · Q8 activations. Per block |isum| ≤ 32 · 127 · 127.
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8A]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let isum = dot_i8(&wb.qs, &xb.qs);
        acc += (wb.d.to_f32() * xb.d) * isum as f32;
    }
    acc
}

/// Q4_0 weights · Q8 activations: quants `(nibble - 8)` in -8..=7.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8A]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..QK8_0 / 2 {
            let lo = (wb.qs[j] & 0xF) as i32 - 8;
            let hi = (wb.qs[j] >> 4) as i32 - 8;
            isum += lo * xb.qs[j] as i32 + hi * xb.qs[j + 16] as i32;
        }
        acc += (wb.d.to_f32() * xb.d) * isum as f32;
    }
    acc
}

/// Signed byte quants (32 per block) · Q8 activations: `acc += (d_w ·
/// d_x) · isum` per block, `quant(block, j)` giving element `j`'s quant.
/// Per block |isum| ≤ 32 · 127 · 127.
#[inline]
fn dot_signed_blocks<B>(w: &[B], x: &[BlockQ8A], d: impl Fn(&B) -> f32, quant: impl Fn(&B, usize) -> i32) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let isum: i32 = (0..QK8_0).map(|j| quant(wb, j) * xb.qs[j] as i32).sum();
        acc += (d(wb) * xb.d) * isum as f32;
    }
    acc
}

/// Q5_0 weights · Q8 activations: quants `q - 16` in -16..=15.
pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8A]) -> f32 {
    dot_signed_blocks(w, x, |b| b.d.to_f32(), |b, j| quant5(&b.qh, &b.qs, j) as i32 - 16)
}

/// IQ4_NL weights · Q8 activations: quants are the levels the indices name.
pub fn vec_dot_iq4_nl_q8_0(w: &[BlockIQ4NL], x: &[BlockQ8A]) -> f32 {
    dot_signed_blocks(
        w,
        x,
        |b| b.d.to_f32(),
        |b, j| KVALUES_IQ4NL[nibble(&b.qs, j) as usize] as i32,
    )
}

/// Unsigned quants with an offset (`q · d + m`, 32 per block) · Q8
/// activations: per block `acc += (d_w · d_x) · isum + m_w · s_x`, `s_x`
/// the activations' sum as `block_q8_1.s` holds it. |isum| ≤ 32 · 31 · 127.
#[inline]
fn dot_offset_blocks<B>(
    w: &[B],
    x: &[BlockQ8A],
    dm: impl Fn(&B) -> (f32, f32),
    quant: impl Fn(&B, usize) -> i32,
) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let (d, m) = dm(wb);
        let isum: i32 = (0..QK8_0).map(|j| quant(wb, j) * xb.qs[j] as i32).sum();
        acc += (d * xb.d) * isum as f32 + m * xb.s;
    }
    acc
}

/// Q4_1 weights · Q8 activations (ggml: `vec_dot_q4_1_q8_1`).
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8A]) -> f32 {
    dot_offset_blocks(w, x, |b| (b.d.to_f32(), b.m.to_f32()), |b, j| nibble(&b.qs, j) as i32)
}

/// Q5_1 weights · Q8 activations (ggml: `vec_dot_q5_1_q8_1`).
pub fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8A]) -> f32 {
    dot_offset_blocks(
        w,
        x,
        |b| (b.d.to_f32(), b.m.to_f32()),
        |b, j| quant5(&b.qh, &b.qs, j) as i32,
    )
}

/// Q4_K weights · Q8_K activations.
///
/// Per super-block: `isc = Σ_j sc_j · Σ q·x` over the 8 sub-blocks
/// (|isc| ≤ 8 · 63 · 32 · 15 · 127) and `imin = Σ_j m_j · (bsum_2j + bsum_2j+1)`
/// (the mins times the activation sums); then
/// `acc += (d · d_x) · isc - (dmin · d_x) · imin`.
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isc = 0i32;
        let mut imin = 0i32;
        for c in 0..4 {
            let q = &wb.qs[32 * c..32 * c + 32];
            let xa = &xb.qs[64 * c..64 * c + 32];
            let xh = &xb.qs[64 * c + 32..64 * c + 64];
            let (mut s_lo, mut s_hi) = (0i32, 0i32);
            for l in 0..32 {
                s_lo += (q[l] & 0xF) as i32 * xa[l] as i32;
                s_hi += (q[l] >> 4) as i32 * xh[l] as i32;
            }
            let (sc1, m1) = scale_min_k4(2 * c, &wb.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &wb.scales);
            isc += sc1 as i32 * s_lo + sc2 as i32 * s_hi;
            let bs = &xb.bsums[4 * c..4 * c + 4];
            imin += m1 as i32 * (bs[0] as i32 + bs[1] as i32) + m2 as i32 * (bs[2] as i32 + bs[3] as i32);
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32 - (wb.dmin.to_f32() * xb.d) * imin as f32;
    }
    acc
}

/// Q5_K weights · Q8_K activations: as Q4_K with quants 0..=31
/// (|isc| ≤ 8 · 63 · 32 · 31 · 127).
pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isc = 0i32;
        let mut imin = 0i32;
        for c in 0..4 {
            let q = &wb.qs[32 * c..32 * c + 32];
            let xa = &xb.qs[64 * c..64 * c + 32];
            let xh = &xb.qs[64 * c + 32..64 * c + 64];
            let (mut s_lo, mut s_hi) = (0i32, 0i32);
            for l in 0..32 {
                let h_lo = ((wb.qh[l] >> (2 * c)) & 1) << 4;
                let h_hi = ((wb.qh[l] >> (2 * c + 1)) & 1) << 4;
                s_lo += ((q[l] & 0xF) | h_lo) as i32 * xa[l] as i32;
                s_hi += ((q[l] >> 4) | h_hi) as i32 * xh[l] as i32;
            }
            let (sc1, m1) = scale_min_k4(2 * c, &wb.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &wb.scales);
            isc += sc1 as i32 * s_lo + sc2 as i32 * s_hi;
            let bs = &xb.bsums[4 * c..4 * c + 4];
            imin += m1 as i32 * (bs[0] as i32 + bs[1] as i32) + m2 as i32 * (bs[2] as i32 + bs[3] as i32);
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32 - (wb.dmin.to_f32() * xb.d) * imin as f32;
    }
    acc
}

/// Q6_K weights · Q8_K activations: `isc = Σ_g scales_g · Σ (q - 32)·x`
/// over 16 groups of 16 (|isc| ≤ 16 · 128 · 16 · 32 · 127). A SIMD version
/// may compute `Σ q·x - 32 · bsum_g` instead: the integers are the same.
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isc = 0i32;
        for half in 0..2 {
            let ql = &wb.ql[64 * half..64 * half + 64];
            let qh = &wb.qh[32 * half..32 * half + 32];
            // group sums for the 8 groups of 16 in this half: group 2k + l/16
            let mut gs = [0i32; 8];
            for l in 0..32 {
                let q = [
                    ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32,
                    ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32,
                    ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32,
                    ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32,
                ];
                for (k, qk) in q.iter().enumerate() {
                    gs[2 * k + l / 16] += qk * xb.qs[128 * half + 32 * k + l] as i32;
                }
            }
            for (g, s) in gs.iter().enumerate() {
                isc += wb.scales[8 * half + g] as i32 * s;
            }
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32;
    }
    acc
}

/// Q3_K weights · Q8_K activations: `isc = Σ_g (sc_g - 32) · Σ q·x` in
/// integers over the 16 groups of 16, then `(d · d_x) · isc` per block:
/// Q6_K's shape ([`vec_dot_q6_k_q8_k`]), so Q3_K runs on Q6_K's kernel.
pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3K], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isc = 0i32;
        for g in 0..QK_K / 16 {
            let s: i32 = (16 * g..16 * g + 16)
                .map(|e| q3k_quant(wb, e) as i32 * xb.qs[e] as i32)
                .sum();
            isc += q3k_scale(&wb.scales, g) as i32 * s;
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32;
    }
    acc
}

/// Q2_K weights · Q8_K activations: `isc = Σ_g sc_g · Σ q·x` and `imin =
/// Σ_g m_g · bsum_g` in integers over the 16 groups of 16 (|isc| ≤ 16 · 15 ·
/// 16 · 3 · 128), then `acc += (d · d_x) · isc - (dmin · d_x) · imin` per
/// block: ggml's `vec_dot_q2_K_q8_K`, operation for operation.
pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2K], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let (mut isc, mut imin) = (0i32, 0i32);
        for g in 0..QK_K / 16 {
            let s: i32 = (16 * g..16 * g + 16)
                .map(|e| q2k_quant(wb, e) as i32 * xb.qs[e] as i32)
                .sum();
            isc += (wb.scales[g] & 0xF) as i32 * s;
            imin += (wb.scales[g] >> 4) as i32 * xb.bsums[g] as i32;
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32 - (wb.dmin.to_f32() * xb.d) * imin as f32;
    }
    acc
}

/// IQ4_XS weights · Q8_K activations: `isc = Σ_j (ls_j - 32) · Σ
/// kvalues[q]·x` in integers over the 8 sub-blocks of 32 (|isc| ≤ 8 · 32 ·
/// 32 · 127 · 128), then `acc += (d · d_x) · isc` per block (ggml's SIMD
/// kernels' shape; its scalar one rounds per sub-block instead). Each
/// sub-block is two groups of 16 with one scale: Q6_K's shape, so IQ4_XS
/// runs on Q6_K's kernel.
pub fn vec_dot_iq4_xs_q8_k(w: &[BlockIQ4XS], x: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut isc = 0i32;
        for j in 0..QK_K / 32 {
            let s: i32 = (32 * j..32 * j + 32)
                .map(|e| KVALUES_IQ4NL[iq4xs_index(wb, e) as usize] as i32 * xb.qs[e] as i32)
                .sum();
            isc += iq4xs_scale(wb, j) as i32 * s;
        }
        acc += (wb.d.to_f32() * xb.d) * isc as f32;
    }
    acc
}

/// Dot product of a bf16 row with an f32 vector, in [`super::dot_f32`]'s lane
/// order (each bf16 widened to f32 exactly).
pub fn dot_bf16(a: &[half::bf16], b: &[f32]) -> f32 {
    super::dot_widened(a, b, half::bf16::to_f32)
}
