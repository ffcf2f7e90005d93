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
    /// (rope_dims / 2): `inv_freq[j] = base^(-2j / rope_dims)`.
    inv_freq: Vec<f64>,
}

impl RopeTable {
    pub fn new(style: RopeStyle, rope_dims: usize, freq_base: f32) -> RopeTable {
        let inv_freq = (0..rope_dims / 2)
            .map(|j| (freq_base as f64).powf(-((2 * j) as f64) / rope_dims as f64))
            .collect();
        RopeTable {
            style,
            rope_dims,
            inv_freq,
        }
    }

    /// `(cos, sin)` of the angle of pair `j` at position `pos`.
    fn cos_sin(&self, j: usize, pos: u32) -> (f32, f32) {
        let theta = pos as f64 * self.inv_freq[j];
        (theta.cos() as f32, theta.sin() as f32)
    }
}

/// Rotates every head of `x` (n_heads, head_dim) in place for position `pos`.
/// Dimensions at and beyond `table.rope_dims` in each head are left alone.
pub fn rope(x: &mut [f32], head_dim: usize, pos: u32, table: &RopeTable) {
    debug_assert_eq!(x.len() % head_dim, 0);
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
