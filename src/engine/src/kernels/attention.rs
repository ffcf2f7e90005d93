//! Attention of one query position over the KV cache.

use super::{dot_f32, simd, softmax, SIMD};

/// Head layout of an attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_heads: usize,
    /// Divides `n_heads`; query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Causal grouped-query attention for one query over `n_pos` cached positions.
///
/// - `q`: (n_heads, head_dim), already rotated
/// - `k_cache`, `v_cache`: (≥ n_pos, n_kv_heads * head_dim) for this layer
/// - `scores`: scratch (≥ n_pos)
/// - `out`: (n_heads, head_dim)
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_pos: usize,
    shape: AttentionShape,
    scores: &mut [f32],
) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
    } = shape;
    let kv_dim = n_kv_heads * head_dim;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let scores = &mut scores[..n_pos];
    for h in 0..n_heads {
        let q_h = &q[h * head_dim..(h + 1) * head_dim];
        let kv_off = (h / group) * head_dim;
        let out_h = &mut out[h * head_dim..(h + 1) * head_dim];
        if SIMD {
            simd::attention_scores(scores, q_h, k_cache, kv_dim, kv_off, scale);
            softmax(scores);
            simd::attention_values(out_h, scores, v_cache, kv_dim, kv_off);
            continue;
        }
        // Scores of this head against every cached key.
        for (t, s) in scores.iter_mut().enumerate() {
            let k = &k_cache[t * kv_dim + kv_off..t * kv_dim + kv_off + head_dim];
            *s = dot_f32(q_h, k) * scale;
        }
        softmax(scores);
        // Weighted sum of the values, position by position.
        out_h.fill(0.0);
        for (t, &a) in scores.iter().enumerate() {
            let v = &v_cache[t * kv_dim + kv_off..t * kv_dim + kv_off + head_dim];
            for (o, x) in out_h.iter_mut().zip(v) {
                *o += a * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_position_returns_its_value() {
        let shape = AttentionShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let mut out = [0.0; 4];
        let mut scores = [0.0; 1];
        attention(
            &mut out,
            &[1.0, 2.0, 3.0, 4.0],
            &[0.5, 0.5],
            &[7.0, 8.0],
            1,
            shape,
            &mut scores,
        );
        assert_eq!(out, [7.0, 8.0, 7.0, 8.0]);
    }

    #[test]
    fn grouped_heads_read_their_kv_head() {
        // 2 query heads, 2 kv heads, head_dim 1, two positions.
        let shape = AttentionShape {
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 1,
        };
        // keys: pos0 = [0, 0], pos1 = [100, -100]; values: pos0 = [1, 10], pos1 = [2, 20]
        let k = [0.0, 0.0, 100.0, -100.0];
        let v = [1.0, 10.0, 2.0, 20.0];
        let mut out = [0.0; 2];
        let mut scores = [0.0; 2];
        attention(&mut out, &[1.0, 1.0], &k, &v, 2, shape, &mut scores);
        // head 0 prefers pos1 (value 2); head 1 prefers pos0 (value 10).
        assert!((out[0] - 2.0).abs() < 1e-4);
        assert!((out[1] - 10.0).abs() < 1e-4);
    }
}
