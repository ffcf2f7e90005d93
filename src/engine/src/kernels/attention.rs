//! Attention of one query position over the KV cache.

use super::acts::{q8_scale, quantize_act_q8, quantize_i8_block_scalar};
use super::simd_quant::matvec_q8_0_view;
use super::{dot_f32, simd, softmax, softmax_scalar, SIMD};
use crate::kv::Q8Layer;
use crate::quant::packed::BlockQ8_0x4;
use crate::quant::{BlockQ8A, QK8_0};
use crate::scratch::Scratch;

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

/// Causal grouped-query attention for one query over positions
/// `first..n_pos` of an int8 KV cache layer ([`crate::kv`], type Q8; `first`
/// > 0 for a sliding window), per head:
/// 1. scores: the key matrix (rows = positions) times the query quantized
///    in blocks of 32, times `1 / √head_dim`;
/// 2. softmax;
/// 3. the transposed value matrix times `a_t = p_t · s_t` (probability
///    times the value's scale) quantized in blocks of 32 positions.
///
/// Bit for bit [`attention_q8_scalar`]. `scores`: scratch of at least
/// `n_pos` rounded up to 32.
pub fn attention_q8(
    out: &mut [f32],
    q: &[f32],
    layer: &Q8Layer,
    first: usize,
    n_pos: usize,
    shape: AttentionShape,
    scores: &mut [f32],
) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let (group, hp) = (n_heads / n_kv_heads, layer.head_pad());
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scores[..n_pos.next_multiple_of(QK8_0)];
    let mut q_head = Scratch::new(hp);
    q_head[hd..].fill(0.0);
    let mut o = Scratch::new(hp);
    let (mut q8, mut a8) = (Vec::new(), Vec::new());
    for h in 0..n_heads {
        let kv_h = h / group;
        q_head[..hd].copy_from_slice(&q[h * hd..(h + 1) * hd]);
        quantize_act_q8(&q_head, &mut q8);
        // Whole groups of four positions, from the group holding `first`:
        // the matvec then writes straight into `scores` (the extra ones are
        // zeroed below).
        let (g0, kb) = (first / 4 * 4, hp / QK8_0);
        scores_q8(
            &layer.keys(kv_h)[g0 / 4 * kb..],
            kb,
            &q8,
            &mut scores[g0..n_pos.next_multiple_of(4)],
        );
        let s = &mut scores[first..n_pos];
        for x in s.iter_mut() {
            *x *= scale;
        }
        softmax(s);
        for (x, &v_scale) in s.iter_mut().zip(&layer.value_scales(kv_h)[first..]) {
            *x *= v_scale;
        }
        scores[..first].fill(0.0);
        scores[n_pos..].fill(0.0);
        quantize_act_q8(scores, &mut a8);
        values_q8(layer.values(kv_h), layer.ctx_pad() / QK8_0, &a8, &mut o);
        out[h * hd..(h + 1) * hd].copy_from_slice(&o[..hd]);
    }
}

#[inline(never)]
fn scores_q8(keys: &[BlockQ8_0x4], bpr: usize, q: &[BlockQ8A], out: &mut [f32]) {
    matvec_q8_0_view(keys, bpr, q, out)
}

#[inline(never)]
fn values_q8(values: &[BlockQ8_0x4], bpr: usize, a: &[BlockQ8A], out: &mut [f32]) {
    matvec_q8_0_view(values, bpr, a, out)
}

/// The scalar oracle of [`attention_q8`], from each position's key and
/// value as stored ([`Q8Layer::key`], [`Q8Layer::value`]).
pub fn attention_q8_scalar(
    out: &mut [f32],
    q: &[f32],
    layer: &Q8Layer,
    first: usize,
    n_pos: usize,
    shape: AttentionShape,
) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = shape;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // (scale, quants) blocks of 32 of `x` (zero padded to whole blocks).
    let quantize = |x: &[f32]| -> Vec<(f32, Vec<i8>)> {
        let mut padded = x.to_vec();
        padded.resize(x.len().next_multiple_of(QK8_0), 0.0);
        padded
            .chunks_exact(QK8_0)
            .map(|c| {
                let mut q = vec![0; QK8_0];
                (q8_scale(quantize_i8_block_scalar(c, &mut q)), q)
            })
            .collect()
    };
    let isum = |a: &[i8], b: &[i8]| a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum::<i32>() as f32;
    for h in 0..n_heads {
        let kv_h = h / group;
        let q8 = quantize(&q[h * hd..(h + 1) * hd]);
        let mut p: Vec<f32> = (first..n_pos)
            .map(|t| {
                let key = layer.key(kv_h, t);
                let dot = key
                    .iter()
                    .zip(&q8)
                    .fold(0.0f32, |acc, ((dk, qk), (dq, qq))| acc + (dk * dq) * isum(qk, qq));
                dot * scale
            })
            .collect();
        softmax_scalar(&mut p);
        // Positions before the window weigh 0.
        let a: Vec<f32> = (0..n_pos)
            .map(|t| match t.checked_sub(first) {
                Some(i) => p[i] * layer.value(kv_h, t).0,
                None => 0.0,
            })
            .collect();
        let a8 = quantize(&a);
        let values: Vec<Vec<i8>> = (0..n_pos).map(|t| layer.value(kv_h, t).1).collect();
        for i in 0..hd {
            out[h * hd + i] = a8.iter().enumerate().fold(0.0f32, |acc, (b, (da, qa))| {
                let column: Vec<i8> = (QK8_0 * b..QK8_0 * (b + 1))
                    .map(|t| values.get(t).map_or(0, |v| v[i]))
                    .collect();
                acc + (1.0 * da) * isum(qa, &column)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo;
    use crate::kv::{KvCache, KvLayer, KvShape, KvType};

    /// A cache of `ty` with `n` random positions in layer 1 of 2.
    fn filled(shape: KvShape, ctx: u32, n: usize, ty: KvType, seed: u32) -> KvCache {
        let mut kv = KvCache::with_type(shape, ctx, ty).unwrap();
        let kv_dim = shape.kv_dim();
        let mut k = pseudo(n * kv_dim, seed);
        let v = pseudo(n * kv_dim, seed + 1);
        // One outlier channel, as real keys have.
        for row in k.chunks_exact_mut(kv_dim) {
            row[1] *= 8.0;
        }
        kv.write(1, 0, &k, &v);
        kv
    }

    fn shapes() -> Vec<(KvShape, AttentionShape)> {
        [(4, 2, 64), (2, 2, 32), (8, 4, 8), (6, 6, 48), (2, 1, 128)]
            .into_iter()
            .map(|(n_heads, n_kv_heads, head_dim)| {
                (
                    KvShape {
                        n_layers: 2,
                        n_kv_heads,
                        head_dim,
                        ring: None,
                    },
                    AttentionShape {
                        n_heads,
                        n_kv_heads,
                        head_dim,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn q8_attention_is_its_scalar_oracle_bit_for_bit() {
        for (kv_shape, shape) in shapes() {
            let ctx = 70;
            let kv = filled(kv_shape, ctx, ctx as usize, KvType::Q8, 3);
            let KvLayer::Q8(layer) = kv.layer(1) else {
                panic!("a q8 cache")
            };
            let q = pseudo(shape.n_heads * shape.head_dim, 9);
            // Whole prefixes, and sliding windows starting inside and at
            // the edges of groups of four and blocks of 32.
            let spans = [1, 2, 3, 4, 5, 31, 32, 33, 64, 65, 70]
                .map(|n| (0, n))
                .into_iter()
                .chain([(1, 5), (3, 4), (4, 33), (5, 70), (31, 64), (32, 65), (37, 70), (69, 70)]);
            for (first, n_pos) in spans {
                let mut got = vec![f32::NAN; q.len()];
                let mut scores = vec![f32::NAN; 96];
                attention_q8(&mut got, &q, &layer, first, n_pos, shape, &mut scores);
                let mut want = vec![f32::NAN; q.len()];
                attention_q8_scalar(&mut want, &q, &layer, first, n_pos, shape);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{shape:?} positions {first}..{n_pos}");
            }
        }
    }

    /// The int8 cache's error against the f32 cache on random keys and values
    /// (uniform in ±1, one key channel ×8): at most 2% of the values' range.
    #[test]
    fn q8_attention_stays_close_to_f32() {
        for (kv_shape, shape) in shapes() {
            let n = 200;
            let exact = filled(kv_shape, n as u32, n, KvType::F32, 5);
            let approx = filled(kv_shape, n as u32, n, KvType::Q8, 5);
            // A query that prefers some keys strongly.
            let q: Vec<f32> = pseudo(shape.n_heads * shape.head_dim, 11)
                .iter()
                .map(|x| 3.0 * x)
                .collect();
            for positions in [0..1, 0..7, 0..50, 0..200, 150..200, 13..50] {
                let mut want = vec![0.0; q.len()];
                let mut got = vec![0.0; q.len()];
                exact.attend(1, &q, positions.clone(), shape, &mut want);
                approx.attend(1, &q, positions.clone(), shape, &mut got);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= 0.02, "{shape:?} positions {positions:?}: off by {worst}");
            }
        }
    }

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

    /// A window of the f32 cache is attention over just those positions.
    #[test]
    fn a_window_attends_to_its_positions_only() {
        let (kv_shape, shape) = shapes()[0];
        let kv = filled(kv_shape, 40, 40, KvType::F32, 7);
        let KvLayer::F32 { k, v } = kv.layer(1) else {
            panic!("an f32 cache")
        };
        let q = pseudo(shape.n_heads * shape.head_dim, 3);
        let kv_dim = kv_shape.kv_dim();
        let (mut want, mut got) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        let mut scores = vec![0.0; 40];
        attention(
            &mut want,
            &q,
            &k[10 * kv_dim..],
            &v[10 * kv_dim..],
            25,
            shape,
            &mut scores,
        );
        kv.attend(1, &q, 10..35, shape, &mut got);
        assert_eq!(got, want);
        kv.attend(1, &q, 0..35, shape, &mut got);
        assert_ne!(got, want, "the positions before the window changed nothing");
    }
}
