//! Scalar weight quantizers, following ggml's reference quantizers
//! (`quantize_row_*_ref`, no importance matrix):
//! - Q8_0: `d = max|x| / 127`, `q = round(x / d)`.
//! - Q4_0: `d = max / -8` (the signed value of largest magnitude), `q = min(15, trunc(x / d + 8.5))`.
//! - Q4_1 / Q5_1: `d = (max - min) / 15` (or `/ 31`), `m = min`, `q = min(levels - 1, trunc((x - min) / d + 0.5))`.
//! - Q5_0: `d = max / -16`, `q = min(31, trunc(x / d + 16.5))`.
//! - IQ4_NL: per block of 32 the scale whose nearest [`KVALUES_IQ4NL`]
//!   levels fit the block best (weights `x²`) among 15 candidates around
//!   `max / 127` (ggml's `quantize_row_iq4_nl_impl`, `ntry = 7`).
//! - Q4_K / Q5_K: per sub-block of 32, an affine fit `x ≈ scale * q - min` by
//!   a weighted least-squares search over candidate scales (ggml's
//!   `make_qkx2_quants`), then the 8 scales and mins quantized to 6 bits
//!   against the super-block maxima, then the quants recomputed with the
//!   rounded scales.
//! - Q2_K: as Q4_K with sub-blocks of 16, quants 0..=3, weights `|x|`, the
//!   fit's error in absolute (not squared) differences, and 4-bit scales and
//!   mins (`quantize_row_q2_K_ref`).
//! - IQ4_XS: each sub-block of 32 fitted as an IQ4_NL block, then the eight
//!   scales quantized to 6 bits against the largest, and the indices chosen
//!   again against the rounded scales (`quantize_iq4_xs`, `ntry = 7`).
//! - Q6_K: per sub-block of 16, a symmetric fit with a weighted search over
//!   19 candidate scales (`make_qx_quants`, weights `x²`), then the 16 scales
//!   quantized to int8 against the largest.

use super::{
    pack_fifth_bits, pack_nibbles, pack_scale_min_k4, scale_min_k4, BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K,
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, KVALUES_IQ4NL, QK8_0, QK_K,
};
use half::f16;

/// How hard the K-quant quantizers search for sub-block scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// ggml's reference search (`make_qkx2_quants` with 20/15 candidate
    /// scales, `make_qx_quants` with 19): what tests and real conversions use.
    Ggml,
    /// The first candidate only (the min/max grid): about 10x faster and a
    /// little less accurate; for synthetic benchmark weights, whose values
    /// do not matter.
    Fast,
}

/// Below this a group counts as all zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even (ggml's `nearest_int` for the values that occur here).
#[inline]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

pub fn quantize_row_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            BlockQ8_0 {
                d: f16::from_f32(d),
                qs: std::array::from_fn(|i| (c[i] * id).round() as i8),
            }
        })
        .collect()
}

pub fn quantize_row_q4_0(x: &[f32]) -> Vec<BlockQ4_0> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0)
        .map(|c| {
            // The value of largest magnitude, with its sign: it maps to q = 0 (-8 · d).
            let mut amax = 0.0f32;
            let mut max = 0.0f32;
            for &v in c {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
            BlockQ4_0 {
                d: f16::from_f32(d),
                qs: std::array::from_fn(|j| q(c[j]) | (q(c[j + 16]) << 4)),
            }
        })
        .collect()
}

/// The value of largest magnitude in `c`, with its sign (the first of equals).
fn signed_absmax(c: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in c {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// C's `(uint8_t)(int8_t)v` of a float: truncation toward zero, as the
/// ggml quantizers convert.
fn trunc_u8(v: f32) -> u8 {
    v as i8 as u8
}

/// The min and max of `c` (ggml's loop: `min` from `FLT_MAX`, `max` from `-FLT_MAX`).
fn min_max(c: &[f32]) -> (f32, f32) {
    c.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// An affine block of `levels` steps: `(d, min, quants)` as ggml's
/// `quantize_row_q4_1_ref` / `q5_1_ref` compute them.
fn affine_block(c: &[f32], levels: u8) -> (f32, f32, [u8; QK8_0]) {
    let (min, max) = min_max(c);
    let d = (max - min) / (levels - 1) as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = std::array::from_fn(|j| trunc_u8((c[j] - min) * id + 0.5).min(levels - 1));
    (d, min, q)
}

pub fn quantize_row_q4_1(x: &[f32]) -> Vec<BlockQ4_1> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0)
        .map(|c| {
            let (d, min, q) = affine_block(c, 16);
            BlockQ4_1 {
                d: f16::from_f32(d),
                m: f16::from_f32(min),
                qs: pack_nibbles(&q),
            }
        })
        .collect()
}

pub fn quantize_row_q5_1(x: &[f32]) -> Vec<BlockQ5_1> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0)
        .map(|c| {
            let (d, min, q) = affine_block(c, 32);
            BlockQ5_1 {
                d: f16::from_f32(d),
                m: f16::from_f32(min),
                qh: pack_fifth_bits(&q),
                qs: pack_nibbles(&q),
            }
        })
        .collect()
}

pub fn quantize_row_q5_0(x: &[f32]) -> Vec<BlockQ5_0> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0)
        .map(|c| {
            // The signed value of largest magnitude maps to q = 0 (-16 · d).
            let d = signed_absmax(c) / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: [u8; QK8_0] = std::array::from_fn(|j| trunc_u8(c[j] * id + 16.5).min(31));
            BlockQ5_0 {
                d: f16::from_f32(d),
                qh: pack_fifth_bits(&q),
                qs: pack_nibbles(&q),
            }
        })
        .collect()
}

/// The index of the level of `values` (ascending) nearest `x`, the lower of
/// two equally near (ggml's `best_index_int8`).
fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < values[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (values[hi - 1] as f32) < values[hi] as f32 - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

pub fn quantize_row_iq4_nl(x: &[f32]) -> Vec<BlockIQ4NL> {
    assert_eq!(x.len() % QK8_0, 0, "row length must be a multiple of 32");
    x.chunks_exact(QK8_0).map(quantize_block_iq4_nl).collect()
}

/// One IQ4_NL block as ggml's `quantize_row_iq4_nl_impl` makes it (one
/// block per super-block, no importance weights, `ntry = 7`).
fn quantize_block_iq4_nl(c: &[f32]) -> BlockIQ4NL {
    let scale = iq4_nl_scale(c);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let q: [u8; QK8_0] = std::array::from_fn(|j| best_index_int8(&KVALUES_IQ4NL, id * c[j]));
    BlockIQ4NL {
        d: f16::from_f32(scale),
        qs: pack_nibbles(&q),
    }
}

/// The scale whose nearest [`KVALUES_IQ4NL`] levels fit the 32 values `c`
/// best (weights `x²`): ggml's search in `quantize_row_iq4_nl_impl` with
/// `ntry = 7`, from `max / -127` and 15 candidates around it.
fn iq4_nl_scale(c: &[f32]) -> f32 {
    const NTRY: i32 = 7;
    let values = &KVALUES_IQ4NL;
    let weight: [f32; QK8_0] = std::array::from_fn(|j| c[j] * c[j]);
    let max = signed_absmax(c);
    if max.abs() < GROUP_MAX_EPS {
        return 0.0;
    }
    // Σ w q x and Σ w q² of the levels nearest x · id.
    let fit = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..QK8_0 {
            let q = values[best_index_int8(values, id * c[j]) as usize] as f32;
            sumqx += weight[j] * q * c[j];
            sumq2 += weight[j] * q * q;
        }
        (sumqx, sumq2)
    };
    let d0 = -max / values[0] as f32;
    let (sumqx, sumq2) = fit(1.0 / d0);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = fit((itry as f32 + values[0] as f32) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// ggml's IQ4_XS quantizer (`quantize_iq4_xs` without an importance
/// matrix): each sub-block's scale as IQ4_NL's ([`iq4_nl_scale`]), the
/// super-block scale `-max / 32` of the scale of largest magnitude, each
/// sub-block scale rounded to `l` in -32..=31 of it, and the indices chosen
/// against `d · l` (`d` before its rounding to f16, as ggml does).
pub fn quantize_row_iq4_xs(x: &[f32]) -> Vec<BlockIQ4XS> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let scales: [f32; 8] = std::array::from_fn(|j| iq4_nl_scale(&c[32 * j..32 * j + 32]));
            let d = -signed_absmax(&scales) / 32.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = BlockIQ4XS {
                d: f16::from_f32(d),
                scales_h: 0,
                scales_l: [0; QK_K / 64],
                qs: [0; QK_K / 2],
            };
            for (j, s) in scales.iter().enumerate() {
                let l = nearest_int(id * s).clamp(-32, 31);
                let dl = d * l as f32;
                let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
                let sub = &c[32 * j..32 * j + 32];
                let q: [u8; QK8_0] = std::array::from_fn(|i| best_index_int8(&KVALUES_IQ4NL, idl * sub[i]));
                b.qs[16 * j..16 * j + 16].copy_from_slice(&pack_nibbles(&q));
                let l = (l + 32) as u8;
                b.scales_l[j / 2] |= (l & 0xF) << (4 * (j % 2));
                b.scales_h |= ((l >> 4) as u16) << (2 * j);
            }
            b
        })
        .collect()
}

/// Fits `x ≈ scale * L - min` with `L` in `0..=nmax`, minimizing the
/// `weights`-weighted squared error: starts from the min/max grid, then tries
/// `nstep + 1` scales `(nmax + rmin + rdelta * i) / (max - min)` and for each
/// solves the 2×2 least-squares problem for scale and min given the rounded
/// `L`, keeping the candidate of least weighted error (absolute differences
/// with `use_mad`, squared otherwise). Returns `(scale, min)` (min ≥ 0,
/// subtracted) and fills `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let loss = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let n = x.len();
    let mut min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_w: f32 = weights.iter().sum();
    let sum_x: f32 = weights.iter().zip(x).map(|(w, v)| w * v).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let quant = |iscale: f32, min: f32, v: f32| nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = quant(iscale, min, x[i]);
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * loss(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; QK8_0];
    let laux = &mut laux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = quant(iscale, min, x[i]);
            laux[i] = li;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let err: f32 = (0..n)
                .map(|i| {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    weights[i] * loss(diff)
                })
                .sum();
            if err < best_error {
                l.copy_from_slice(laux);
                best_error = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_q3_quants` with its least-squares refinement (`do_rmse`):
/// `x ≈ scale * L`, `L` in `-nmax..nmax` (stored as `L + nmax`), weights
/// `x²`, starting from the levels nearest `nmax / max` and moving one level
/// at a time while the weighted fit improves (at most five passes). The
/// arithmetic is ggml's, operation for operation, so the bytes are its bytes.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let max = signed_absmax(x);
    let amax = max.abs();
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let q = *li as f32;
            let mut slx = sumlx - w * v * q;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * q * q;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's reference Q2_K quantizer (`quantize_row_q2_K_ref`): each group's
/// affine fit by [`make_qkx2_quants`] (weights `|x|`, absolute error), the
/// scales and mins to 4 bits against their maxima, then every quant again
/// against its group's rounded scale and min.
pub fn quantize_row_q2_k(x: &[f32]) -> Vec<BlockQ2K> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let mut l = [0u8; QK_K];
            let (mut scales, mut mins) = ([0.0f32; 16], [0.0f32; 16]);
            for j in 0..16 {
                let xs = &c[16 * j..16 * j + 16];
                let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
                (scales[j], mins[j]) =
                    make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true);
            }
            // ggml's loops: maxima from 0, strictly greater.
            let max_scale = scales.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
            let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
            let mut b = BlockQ2K {
                scales: [0; 16],
                qs: [0; QK_K / 4],
                d: f16::from_f32(0.0),
                dmin: f16::from_f32(0.0),
            };
            if max_scale > 0.0 {
                let iscale = 15.0 / max_scale;
                for (q, s) in b.scales.iter_mut().zip(&scales) {
                    *q = nearest_int(iscale * s) as u8;
                }
                b.d = f16::from_f32(max_scale / 15.0);
            }
            if max_min > 0.0 {
                let iscale = 15.0 / max_min;
                for (q, m) in b.scales.iter_mut().zip(&mins) {
                    *q |= (nearest_int(iscale * m) as u8) << 4;
                }
                b.dmin = f16::from_f32(max_min / 15.0);
            }
            for j in 0..16 {
                let d = b.d.to_f32() * (b.scales[j] & 0xF) as f32;
                if d == 0.0 {
                    continue;
                }
                let dm = b.dmin.to_f32() * (b.scales[j] >> 4) as f32;
                for i in 16 * j..16 * j + 16 {
                    l[i] = nearest_int((c[i] + dm) / d).clamp(0, 3) as u8;
                }
            }
            for (e, &q) in l.iter().enumerate() {
                b.qs[32 * (e / 128) + e % 32] |= q << (2 * ((e % 128) / 32));
            }
            b
        })
        .collect()
}

/// ggml's reference Q3_K quantizer (`quantize_row_q3_K_ref`): each group's
/// scale by [`make_q3_quants`], the scales to 6 bits against the largest,
/// then every quant again against its group's quantized scale.
pub fn quantize_row_q3_k(x: &[f32]) -> Vec<BlockQ3K> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let mut l = [0i8; QK_K];
            let mut scales = [0.0f32; 16];
            for (j, s) in scales.iter_mut().enumerate() {
                *s = make_q3_quants(4, &c[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            }
            let max_scale = signed_absmax(&scales);
            let mut b = BlockQ3K {
                hmask: [0; QK_K / 8],
                qs: [0; QK_K / 4],
                scales: [0; 12],
                d: f16::from_f32(0.0),
            };
            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                for (j, s) in scales.iter().enumerate() {
                    let q = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
                    if j < 8 {
                        b.scales[j] = q & 0xF;
                    } else {
                        b.scales[j - 8] |= (q & 0xF) << 4;
                    }
                    b.scales[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
                }
                b.d = f16::from_f32(1.0 / iscale);
            }
            for j in 0..16 {
                let d = b.d.to_f32() * super::dequant::q3k_scale(&b.scales, j) as f32;
                if d == 0.0 {
                    continue;
                }
                for i in 16 * j..16 * j + 16 {
                    l[i] = (nearest_int(c[i] / d).clamp(-4, 3) + 4) as i8;
                }
            }
            for (e, &q) in l.iter().enumerate() {
                let low = if q > 3 {
                    b.hmask[e % 32] |= 1 << (e / 32);
                    q - 4
                } else {
                    q
                };
                b.qs[32 * (e / 128) + e % 32] |= (low as u8) << (2 * ((e % 128) / 32));
            }
            b
        })
        .collect()
}

/// Fits `x ≈ scale * L` with `L` in `-nmax..nmax` (stored as `L + nmax`),
/// weights `x²`, trying 19 scales around `nmax / max` and keeping the best
/// least-squares one. Returns the scale (negative when the largest-magnitude
/// value is positive, as in ggml).
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8], search: Search) -> f32 {
    let max = signed_absmax(x);
    let amax = max.abs();
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let li = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * li;
            suml2 += w * li * li;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    if search == Search::Fast {
        for (li, &v) in l.iter_mut().zip(x) {
            *li = (quant(iscale, v) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut best_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
            best_iscale = iscale;
        }
    }
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (quant(best_iscale, v) + nmax) as i8;
    }
    scale
}

/// Shared by Q4_K and Q5_K: the sub-block fits, the 6-bit scales and mins,
/// and the final quants `L` (0..=nmax) per element.
fn quantize_superblock_kx(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    search: Search,
) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let nstep = if search == Search::Fast { 0 } else { nstep };
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            rdelta,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8);
    let lm: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_min * mins[j]).clamp(0, 63) as u8);
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

pub fn quantize_row_q4_k(x: &[f32]) -> Vec<BlockQ4K> {
    quantize_row_q4_k_with(x, Search::Ggml)
}

/// As [`quantize_row_q4_k`], with a choice of scale search.
pub fn quantize_row_q4_k_with(x: &[f32], search: Search) -> Vec<BlockQ4K> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let (d, dmin, scales, l) = quantize_superblock_kx(c, 15, -1.0, 0.1, 20, search);
            let mut qs = [0u8; QK_K / 2];
            for ch in 0..4 {
                for i in 0..32 {
                    qs[32 * ch + i] = l[64 * ch + i] | (l[64 * ch + 32 + i] << 4);
                }
            }
            BlockQ4K { d, dmin, scales, qs }
        })
        .collect()
}

pub fn quantize_row_q5_k(x: &[f32]) -> Vec<BlockQ5K> {
    quantize_row_q5_k_with(x, Search::Ggml)
}

/// As [`quantize_row_q5_k`], with a choice of scale search.
pub fn quantize_row_q5_k_with(x: &[f32], search: Search) -> Vec<BlockQ5K> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let (d, dmin, scales, l) = quantize_superblock_kx(c, 31, -0.5, 0.1, 15, search);
            let mut qs = [0u8; QK_K / 2];
            let mut qh = [0u8; QK_K / 8];
            for ch in 0..4 {
                for i in 0..32 {
                    let (l1, l2) = (l[64 * ch + i], l[64 * ch + 32 + i]);
                    qs[32 * ch + i] = (l1 & 0xF) | ((l2 & 0xF) << 4);
                    qh[i] |= ((l1 >> 4) << (2 * ch)) | ((l2 >> 4) << (2 * ch + 1));
                }
            }
            BlockQ5K {
                d,
                dmin,
                scales,
                qh,
                qs,
            }
        })
        .collect()
}

pub fn quantize_row_q6_k(x: &[f32]) -> Vec<BlockQ6K> {
    quantize_row_q6_k_with(x, Search::Ggml)
}

/// As [`quantize_row_q6_k`], with a choice of scale search.
pub fn quantize_row_q6_k_with(x: &[f32], search: Search) -> Vec<BlockQ6K> {
    assert_eq!(x.len() % QK_K, 0, "row length must be a multiple of 256");
    x.chunks_exact(QK_K)
        .map(|c| {
            let mut l = [0i8; QK_K];
            let mut scales = [0.0f32; 16];
            for (j, s) in scales.iter_mut().enumerate() {
                *s = make_qx_quants(32, &c[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16], search);
            }
            let max_scale = signed_absmax(&scales);
            let max_abs_scale = max_scale.abs();
            let mut b = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; 16],
                d: f16::from_f32(0.0),
            };
            if max_abs_scale < GROUP_MAX_EPS {
                return b;
            }
            let iscale = -128.0 / max_scale;
            b.d = f16::from_f32(1.0 / iscale);
            for (q, s) in b.scales.iter_mut().zip(&scales) {
                *q = nearest_int(iscale * s).min(127) as i8;
            }
            for j in 0..16 {
                let d = b.d.to_f32() * b.scales[j] as f32;
                if d == 0.0 {
                    continue;
                }
                for i in 16 * j..16 * j + 16 {
                    l[i] = (nearest_int(c[i] / d).clamp(-32, 31) + 32) as i8;
                }
            }
            // Pack: see `q6k_quant` for the bit positions.
            for half in 0..2 {
                let lh = &l[128 * half..128 * half + 128];
                for i in 0..32 {
                    let q = |k: usize| lh[i + 32 * k] as u8;
                    b.ql[64 * half + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                    b.ql[64 * half + 32 + i] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                    b.qh[32 * half + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
                }
            }
            b
        })
        .collect()
}
