//! Rotary position embedding (RoPE).

use serde::{Deserialize, Serialize};

/// Which elements RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2j], x[2j+1])`: GGUF llama ("normal" in ggml).
    Normal,
    /// Halves `(x[j], x[j + rope_dims/2])`: GPT-NeoX, qwen2/qwen3.
    Neox,
}

/// Precomputed inverse frequencies for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    pub style: RopeStyle,
    /// Leading dimensions of each head that are rotated (even, ≤ head_dim).
    pub rope_dims: usize,
    /// (rope_dims / 2): `inv_freq[j] = base^(-2j / rope_dims) · freq_scale / factor[j]`.
    inv_freq: Vec<f64>,
    /// Multiplies every cos and sin (ggml's `attn_factor` without YaRN;
    /// 1 for most models, Phi-3 128k's LongRoPE scale otherwise).
    attn_factor: f32,
}

impl RopeTable {
    pub fn new(style: RopeStyle, rope_dims: usize, freq_base: f32) -> RopeTable {
        Self::scaled(style, rope_dims, freq_base, 1.0, None)
    }

    /// A table with scaled frequencies, as ggml's `rope_ext` computes them:
    /// every frequency is multiplied by `freq_scale` (linear scaling: 1 /
    /// factor) and pair `j`'s is divided by `freq_factors[j]` when given
    /// (Llama 3.1's `rope_freqs.weight`, see [`llama3_rope_freq_factors`]).
    /// `freq_factors` must hold `rope_dims / 2` values (checked by the loader).
    pub fn scaled(
        style: RopeStyle,
        rope_dims: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<&[f32]>,
    ) -> RopeTable {
        let inv_freq = (0..rope_dims / 2)
            .map(|j| {
                let f = (freq_base as f64).powf(-((2 * j) as f64) / rope_dims as f64) * freq_scale as f64;
                match freq_factors {
                    Some(ff) => f / ff[j] as f64,
                    None => f,
                }
            })
            .collect();
        RopeTable {
            style,
            rope_dims,
            inv_freq,
            attn_factor: 1.0,
        }
    }

    /// This table with every cos and sin multiplied by `attn_factor`, as
    /// ggml's `rope_ext` applies it when YaRN is off (`ext_factor` 0).
    pub fn with_attn_factor(self, attn_factor: f32) -> RopeTable {
        RopeTable { attn_factor, ..self }
    }

    /// `(cos, sin)` of the angle of pair `j` at position `pos`.
    fn cos_sin(&self, j: usize, pos: u32) -> (f32, f32) {
        let theta = pos as f64 * self.inv_freq[j];
        let f = self.attn_factor;
        (theta.cos() as f32 * f, theta.sin() as f32 * f)
    }
}

/// Llama 3.1's RoPE frequency factors (`rope_scaling.rope_type = "llama3"`):
/// one divisor per rotated pair, `rope_dims / 2` values, as the GGUF
/// converter stores them in `rope_freqs.weight`.
///
/// With `wavelen = 2π / base^(-2j / rope_dims)`: pairs whose wavelength is
/// shorter than `original_context / high_freq_factor` keep their frequency
/// (divisor 1), those longer than `original_context / low_freq_factor` are
/// slowed by `factor`, and those between are interpolated smoothly:
/// `1 / ((1 - s) / factor + s)` with `s = (original_context / wavelen - low) / (high - low)`.
/// The caller checks `high_freq_factor > low_freq_factor > 0` and `factor > 0`.
pub fn llama3_rope_freq_factors(
    rope_dims: usize,
    freq_base: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: usize,
) -> Vec<f32> {
    let (factor, low, high) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
    let original = original_context as f64;
    let low_freq_wavelen = original / low;
    let high_freq_wavelen = original / high;
    (0..rope_dims / 2)
        .map(|j| {
            let freq = (freq_base as f64).powf(-((2 * j) as f64) / rope_dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_freq_wavelen {
                1.0
            } else if wavelen > low_freq_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// Rotates every head of `x` (n_heads, head_dim) in place for position `pos`.
/// Dimensions at and beyond `table.rope_dims` in each head are left alone.
pub fn rope(x: &mut [f32], head_dim: usize, pos: u32, table: &RopeTable) {
    rope_heads(&mut [x], head_dim, pos, table)
}

/// [`rope`] on several vectors of heads at the same position (a token's q
/// and k): each pair's cos and sin (f64 trigonometry) are computed once for
/// all of them. The same values as one [`rope`] call per vector.
pub fn rope_heads(xs: &mut [&mut [f32]], head_dim: usize, pos: u32, table: &RopeTable) {
    let half = table.rope_dims / 2;
    let angles: Vec<(f32, f32)> = (0..half).map(|j| table.cos_sin(j, pos)).collect();
    for x in xs.iter_mut() {
        debug_assert_eq!(x.len() % head_dim, 0);
        for head in x.chunks_exact_mut(head_dim) {
            let rotated = &mut head[..2 * half];
            match table.style {
                RopeStyle::Normal => {
                    for (pair, &(cos, sin)) in rotated.chunks_exact_mut(2).zip(&angles) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cos - x1 * sin;
                        pair[1] = x0 * sin + x1 * cos;
                    }
                }
                RopeStyle::Neox => {
                    let (lo, hi) = rotated.split_at_mut(half);
                    for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(&angles) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * cos - x1 * sin;
                        *b = x0 * sin + x1 * cos;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity() {
        let table = RopeTable::new(RopeStyle::Normal, 4, 10000.0);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, 0, &table);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn normal_rotates_adjacent_pairs() {
        // Pair 0 has frequency 1: at pos 1 it turns by 1 radian.
        let table = RopeTable::new(RopeStyle::Normal, 4, 10000.0);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 4, 1, &table);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 0.0]);
    }

    #[test]
    fn neox_rotates_halves() {
        let table = RopeTable::new(RopeStyle::Neox, 4, 10000.0);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 4, 1, &table);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
    }

    #[test]
    fn freq_factors_divide_frequencies() {
        let plain = RopeTable::new(RopeStyle::Neox, 4, 10000.0);
        let scaled = RopeTable::scaled(RopeStyle::Neox, 4, 10000.0, 0.5, Some(&[2.0, 4.0]));
        // pair 0: 1 · 0.5 / 2; pair 1: 0.01 · 0.5 / 4
        assert!((scaled.inv_freq[0] - 0.25).abs() < 1e-12);
        assert!((scaled.inv_freq[1] - plain.inv_freq[1] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn attn_factor_scales_the_rotated_pairs_only() {
        let table = RopeTable::new(RopeStyle::Neox, 4, 10000.0).with_attn_factor(1.5);
        let mut x = [1.0, 0.0, 0.0, 0.0, 7.0, 8.0];
        rope(&mut x, 6, 1, &table);
        assert!((x[0] - 1.5 * 1f32.cos()).abs() < 1e-6 && (x[2] - 1.5 * 1f32.sin()).abs() < 1e-6);
        // dims past rope_dims are left alone, at position 0 too
        assert_eq!(&x[4..], &[7.0, 8.0]);
        let mut y = [2.0, 0.0, 0.0, 0.0, 7.0, 8.0];
        rope(&mut y, 6, 0, &table);
        assert_eq!(y, [3.0, 0.0, 0.0, 0.0, 7.0, 8.0]);
    }

    #[test]
    fn llama3_factors_keep_high_slow_low_and_blend_between() {
        // Llama 3.1's published values: factor 8, low 1, high 4, 8192 tokens, base 500000.
        let ff = llama3_rope_freq_factors(128, 500000.0, 8.0, 1.0, 4.0, 8192);
        assert_eq!(ff.len(), 64);
        assert_eq!(ff[0], 1.0); // wavelength 2π, far below 8192 / 4
        assert_eq!(ff[63], 8.0); // the slowest pairs are slowed by the factor
        let mid: Vec<f32> = ff.iter().copied().filter(|&f| f > 1.0 && f < 8.0).collect();
        assert!(!mid.is_empty(), "some pairs are interpolated");
        assert!(ff.windows(2).all(|w| w[0] <= w[1]), "monotone in wavelength");
        // One value by hand: j = 32 → freq = 500000^(-1/2) ≈ 1/707.1, wavelen ≈ 4442.9,
        // between 8192 / 4 and 8192: s = (8192 / 4442.9 - 1) / 3 ≈ 0.2813,
        // divisor = 1 / ((1 - s) / 8 + s) ≈ 2.6945.
        assert!((ff[32] - 2.6945).abs() < 1e-3, "{}", ff[32]);
    }

    /// The rotation as it was first written (pair-major, angles per pair):
    /// `rope_heads` must give the same bits.
    fn rope_pairwise(x: &mut [f32], head_dim: usize, pos: u32, table: &RopeTable) {
        let half = table.rope_dims / 2;
        for j in 0..half {
            let (cos, sin) = table.cos_sin(j, pos);
            for head in x.chunks_exact_mut(head_dim) {
                let (a, b) = match table.style {
                    RopeStyle::Normal => (2 * j, 2 * j + 1),
                    RopeStyle::Neox => (j, j + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }

    #[test]
    fn rope_heads_is_the_pairwise_rotation() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            for (head_dim, rope_dims) in [(8, 8), (12, 8), (64, 64), (6, 4)] {
                let table = RopeTable::new(style, rope_dims, 10000.0);
                for pos in [0, 1, 7, 130, 5000] {
                    let q0: Vec<f32> = (0..3 * head_dim).map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0).collect();
                    let k0: Vec<f32> = (0..head_dim).map(|i| ((i * 11 % 13) as f32 - 6.0) / 5.0).collect();
                    let (mut q1, mut k1) = (q0.clone(), k0.clone());
                    rope_pairwise(&mut q1, head_dim, pos, &table);
                    rope_pairwise(&mut k1, head_dim, pos, &table);
                    let (mut q2, mut k2) = (q0.clone(), k0.clone());
                    rope_heads(&mut [&mut q2, &mut k2], head_dim, pos, &table);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&q1), bits(&q2), "{style:?} {head_dim} {rope_dims} {pos}");
                    assert_eq!(bits(&k1), bits(&k2), "{style:?} {head_dim} {rope_dims} {pos}");
                }
            }
        }
    }

    #[test]
    fn rotation_preserves_norm_and_partial_dims_stay() {
        let table = RopeTable::new(RopeStyle::Normal, 4, 10000.0);
        let mut x = [0.3, -0.7, 0.2, 0.9, 5.0, 6.0];
        let n0: f32 = x[..4].iter().map(|v| v * v).sum();
        rope(&mut x, 6, 17, &table);
        let n1: f32 = x[..4].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
        assert_eq!(&x[4..], &[5.0, 6.0]);
    }
}
