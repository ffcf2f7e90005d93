//! `exp` for softmax and SiLU, written once as a fixed sequence of f32
//! operations so the scalar oracle and the 4-lane SIMD version
//! ([`super::simd::exp4`]) give the same bits on every platform (the
//! platform's libm `expf` differs between targets and costs ~100 weighted
//! instructions per call in wasm; this costs ~20 per value in SIMD).
//!
//! Method (Cephes `expf`): `n = nearest(x · log2 e)`, `r = x - n · ln 2` in
//! two steps (the high part of ln 2 has few bits, so `n · LN2_HI` is exact),
//! `e^r` by a degree-5 minimax polynomial on |r| ≤ ln 2 / 2, times `2^n` built
//! in the exponent bits. Relative error about 1 ulp. Inputs are clamped to
//! [`EXP_MIN_ARG`, `EXP_MAX_ARG`]: below, the result is ~1.2e-38 instead of a
//! subnormal or 0 (harmless for softmax and SiLU); NaN stays NaN.

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Smallest argument: `2^n` stays a normal number.
pub(crate) const EXP_MIN_ARG: f32 = -87.336_55;
/// Largest argument: `2^n` stays finite.
pub(crate) const EXP_MAX_ARG: f32 = 88.376_26;
/// Minimax coefficients of `(e^r - 1 - r) / r²`, highest degree first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `e^x` (the scalar oracle of [`super::simd::exp4`]).
#[inline]
pub fn exp(x: f32) -> f32 {
    // Comparisons (not f32::min/max) so NaN passes through, as in f32x4.min/max.
    let x = if x < EXP_MIN_ARG { EXP_MIN_ARG } else { x };
    let x = if x > EXP_MAX_ARG { EXP_MAX_ARG } else { x };
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    y * pow2i(n as i32)
}

/// `2^n` for `n` in -126..=127, from its exponent bits.
#[inline]
pub(crate) fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_range_softmax_and_silu_use() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.2e-38);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }
}
