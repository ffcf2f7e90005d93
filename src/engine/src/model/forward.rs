//! The forward pass, cut into units a job can run one at a time.
//!
//! A batch of `n` consecutive tokens at positions `pos0..pos0 + n` flows
//! through the layers as its hidden state `x` (n, dim). Per layer there are
//! two units, [`mixer_block`] (attention, or a short convolution on LFM2's
//! conv layers) and [`ffn_block`]; after the last layer,
//! [`logits`] turns one hidden row into scores over the vocabulary.
//! Every per-token computation is independent of `n` (same kernels, same
//! summation order), so batching never changes a result.
//!
//! A batch may also hold several sequences (jobs decoding together, see
//! [`crate::job::step_together`]): each [`Sequence`] brings its rows'
//! positions, its KV cache and its convolution state, and the weight
//! matrices are read once for all of them.

use super::{FfnActivation, Mixer, Model};
use crate::kernels::{self, AttentionShape};
use crate::kv::KvCache;
use crate::scratch::Scratch;

/// Writes the embeddings of `tokens` into `x` (n_tokens, dim), times `√dim`
/// where the architecture scales them (Gemma).
/// Token ids must be `< vocab_size` (checked by the job).
pub fn embed(model: &Model, tokens: &[u32], x: &mut [f32]) {
    let dim = model.config.dim;
    let scale = model.arch().embed_scale.then(|| (dim as f32).sqrt());
    for (row, &token) in x.chunks_exact_mut(dim).zip(tokens) {
        kernels::row_to_f32(&model.tok_embd, token as usize, row);
        if let Some(scale) = scale {
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// One sequence's rows of a batch: `n` consecutive tokens at positions
/// `pos0..pos0 + n`, with the sequence's KV cache and its convolution state
/// (the job's, see [`crate::model::ModelConfig::conv_state_len`]; empty on
/// a model without conv layers).
pub struct Sequence<'a> {
    pub pos0: u32,
    pub n: usize,
    pub kv: &'a mut KvCache,
    pub conv_state: &'a mut [f32],
}

/// Unit A of layer `layer`: attention ([`attention_block`]) or, on a conv
/// layer, the gated short convolution ([`short_conv_block`]), which reads and
/// updates the layer's rows of `conv_state` (the job's, see
/// [`crate::model::ModelConfig::conv_state_len`]).
pub fn mixer_block(model: &Model, layer: usize, pos0: u32, x: &mut [f32], kv: &mut KvCache, conv_state: &mut [f32]) {
    let n = x.len() / model.config.dim;
    mixer_block_of(
        model,
        layer,
        x,
        &mut [Sequence {
            pos0,
            n,
            kv,
            conv_state,
        }],
    );
}

/// [`mixer_block`] for a batch of several sequences: `x` holds their rows in
/// order.
pub fn mixer_block_of(model: &Model, layer: usize, x: &mut [f32], seqs: &mut [Sequence]) {
    let c = &model.config;
    debug_assert_eq!(x.len(), seqs.iter().map(|s| s.n).sum::<usize>() * c.dim);
    match c.conv_layer(layer) {
        None => attention_block_of(model, layer, x, seqs),
        Some(i) => {
            let per_layer = (c.conv_kernel - 1) * c.dim;
            let lens: Vec<usize> = seqs.iter().map(|s| s.n).collect();
            let mut states: Vec<&mut [f32]> = seqs
                .iter_mut()
                .map(|s| &mut s.conv_state[i * per_layer..(i + 1) * per_layer])
                .collect();
            short_conv_block_of(model, layer, x, &lens, &mut states);
        }
    }
}

/// The rows of each sequence of lengths `lens` in a batch: `start..end` pairs.
fn row_ranges(lens: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    lens.iter().scan(0, |start, &n| {
        let r = *start..*start + n;
        *start += n;
        Some(r)
    })
}

/// Unit A of a conv layer (LFM2): `x += W_out · (c ⊙ conv(b ⊙ x'))` where
/// `b, c, x' = W_in · norm(x)`; `state` ((conv_kernel - 1), dim) holds the
/// layer's last `b ⊙ x'` rows before this batch and is left holding the
/// batch's own.
///
/// # Panics
/// If `layer` is an attention layer.
pub fn short_conv_block(model: &Model, layer: usize, x: &mut [f32], state: &mut [f32]) {
    let n = x.len() / model.config.dim;
    short_conv_block_of(model, layer, x, &[n], &mut [state]);
}

/// [`short_conv_block`] for several sequences of `lens` rows, each with its
/// own state.
fn short_conv_block_of(model: &Model, layer: usize, x: &mut [f32], lens: &[usize], states: &mut [&mut [f32]]) {
    let c = &model.config;
    let w = &model.layers[layer];
    let Mixer::ShortConv(sc) = &w.mixer else {
        panic!("layer {layer} is an attention layer, not a short convolution");
    };
    let (n, dim) = (x.len() / c.dim, c.dim);

    // operator norm: xb (n, dim)
    let mut xb = Scratch::new(n * dim);
    for (out, row) in xb.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        kernels::rmsnorm(out, row, &w.attn_norm, c.rms_eps);
    }

    // in projection: bcx (n, 3·dim), each row [b | c | x']
    let mut bcx = Scratch::new(n * 3 * dim);
    kernels::matmul(&sc.in_proj, &xb, &mut bcx);

    // bx = b ⊙ x' (n, dim): the convolution's input
    let mut bx = Scratch::new(n * dim);
    for (out, row) in bx.chunks_exact_mut(dim).zip(bcx.chunks_exact(3 * dim)) {
        for ((o, b), xv) in out.iter_mut().zip(&row[..dim]).zip(&row[2 * dim..]) {
            *o = b * xv;
        }
    }

    // causal depthwise conv over each sequence's state and rows, then gate by c
    let mut y = Scratch::new(n * dim);
    for (rows, state) in row_ranges(lens).zip(states.iter_mut()) {
        let span = rows.start * dim..rows.end * dim;
        kernels::short_conv(state, &bx[span.clone()], &sc.conv, dim, &mut y[span]);
    }
    for (out, row) in y.chunks_exact_mut(dim).zip(bcx.chunks_exact(3 * dim)) {
        for (o, cv) in out.iter_mut().zip(&row[dim..2 * dim]) {
            *o *= cv;
        }
    }

    // out projection + residual: x += W_out · y
    let mut o = Scratch::new(n * dim);
    kernels::matmul(&sc.out_proj, &y, &mut o);
    kernels::add_in_place(x, &o);
}

/// `x += Wo · attention(rope(Wq·norm(x)), cache)` for attention layer `layer`,
/// writing this batch's K and V rows into the cache. The architecture's
/// optional steps apply when their weights were loaded: q/k/v biases after
/// the projections, per-head q/k RMSNorm before RoPE, a sliding window,
/// an RMSNorm of the output before the residual add.
/// `x` (n, dim) holds the batch at positions `pos0..pos0 + n`.
///
/// # Panics
/// If `layer` is a short-convolution layer.
pub fn attention_block(model: &Model, layer: usize, pos0: u32, x: &mut [f32], kv: &mut KvCache) {
    let n = x.len() / model.config.dim;
    let conv_state = &mut [];
    attention_block_of(
        model,
        layer,
        x,
        &mut [Sequence {
            pos0,
            n,
            kv,
            conv_state,
        }],
    );
}

/// [`attention_block`] for several sequences: the projections run once over
/// every row, RoPE, the cache writes and attention per sequence.
fn attention_block_of(model: &Model, layer: usize, x: &mut [f32], seqs: &mut [Sequence]) {
    let c = &model.config;
    let w = &model.layers[layer];
    let n = x.len() / c.dim;
    let (Mixer::Attention(a), Some(kv_layer)) = (&w.mixer, c.kv_layer(layer)) else {
        panic!("layer {layer} is a short convolution, not an attention layer");
    };

    // attn_norm: xb (n, dim)
    let mut xb = Scratch::new(n * c.dim);
    for (out, row) in xb.chunks_exact_mut(c.dim).zip(x.chunks_exact(c.dim)) {
        kernels::rmsnorm(out, row, &w.attn_norm, c.rms_eps);
    }

    // qkv projections: q (n, q_dim), k (n, kv_dim), v (n, kv_dim)
    let mut q = Scratch::new(n * c.q_dim);
    let mut k = Scratch::new(n * c.kv_dim);
    let mut v = Scratch::new(n * c.kv_dim);
    let mut acts = kernels::SharedActs::new(&xb, c.dim);
    kernels::matmul_shared(&a.wq, &mut acts, &mut q);
    kernels::matmul_shared(&a.wk, &mut acts, &mut k);
    kernels::matmul_shared(&a.wv, &mut acts, &mut v);

    // qkv bias (qwen2): added to every token's row
    if let Some(b) = &w.qkv_bias {
        add_to_rows(&mut q, &b.q);
        add_to_rows(&mut k, &b.k);
        add_to_rows(&mut v, &b.v);
    }

    // q/k norm (qwen3): RMSNorm of each head of q and k, before RoPE
    if let Some(norm) = &w.qk_norm {
        rmsnorm_rows(&mut q, &norm.q, c.rms_eps);
        rmsnorm_rows(&mut k, &norm.k, c.rms_eps);
    }

    // rope: rotate q and k of each token by its position in its sequence
    let lens: Vec<usize> = seqs.iter().map(|s| s.n).collect();
    for (seq, rows) in seqs.iter().zip(row_ranges(&lens)) {
        let rope = model.rope_of(layer, seq.kv.ctx());
        for (i, t) in rows.enumerate() {
            let (q_t, k_t) = (
                &mut q[t * c.q_dim..(t + 1) * c.q_dim],
                &mut k[t * c.kv_dim..(t + 1) * c.kv_dim],
            );
            kernels::rope_heads(&mut [q_t, k_t], c.head_dim, seq.pos0 + i as u32, rope);
        }
    }

    // a score scale other than 1/√head_dim (Gemma 3 27B) is applied to q,
    // as llama.cpp does, and the kernel's own 1/√head_dim undone
    if let Some(scale) = c.attention_scale {
        let factor = scale * (c.head_dim as f32).sqrt();
        q.iter_mut().for_each(|v| *v *= factor);
    }

    // write kv, then attention: each sequence's rows go to its cache at
    // pos0..pos0 + n; each token attends to positions 0..=its own (causal),
    // or to the last `window` of them on a sliding layer
    let shape = AttentionShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    };
    let mut att = Scratch::new(n * c.q_dim); // (n, q_dim)
    for (seq, rows) in seqs.iter_mut().zip(row_ranges(&lens)) {
        let kv_rows = rows.start * c.kv_dim..rows.end * c.kv_dim;
        seq.kv.write(kv_layer, seq.pos0, &k[kv_rows.clone()], &v[kv_rows]);
        for (i, t) in rows.enumerate() {
            let n_pos = seq.pos0 as usize + i + 1;
            let first = c
                .attention_window(layer)
                .map_or(0, |w| n_pos.saturating_sub(w as usize));
            let q_t = &q[t * c.q_dim..(t + 1) * c.q_dim];
            let out = &mut att[t * c.q_dim..(t + 1) * c.q_dim];
            seq.kv.attend(kv_layer, q_t, first..n_pos, shape, out);
        }
    }

    // out projection (+ post-norm) + residual: x += [norm](Wo · att)
    let mut o = Scratch::new(n * c.dim);
    kernels::matmul(&a.wo, &att, &mut o);
    if let Some(norms) = &w.post_norms {
        rmsnorm_rows(&mut o, &norms.attn, c.rms_eps);
    }
    kernels::add_in_place(x, &o);
}

/// `x[t] += bias` for every row `t` of `x` (n, bias.len()).
fn add_to_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        kernels::add_in_place(row, bias);
    }
}

/// RMSNorm of every row of `x` (n, weight.len()) in place: of every head
/// for q/k norms, of every token for post-norms.
fn rmsnorm_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    let mut head = Scratch::new(weight.len());
    for h in x.chunks_exact_mut(weight.len()) {
        head.copy_from_slice(h);
        kernels::rmsnorm(h, &head, weight, eps);
    }
}

/// Unit B of layer `layer`: `x += W_down · (act(W_gate·norm(x)) * W_up·norm(x))`
/// with the architecture's activation (SiLU or GELU), and an RMSNorm of
/// the result before the add where the architecture has post-norms.
/// `x` (n, dim).
pub fn ffn_block(model: &Model, layer: usize, x: &mut [f32]) {
    let c = &model.config;
    let w = &model.layers[layer];
    let n = x.len() / c.dim;

    // ffn_norm: xb (n, dim)
    let mut xb = Scratch::new(n * c.dim);
    for (out, row) in xb.chunks_exact_mut(c.dim).zip(x.chunks_exact(c.dim)) {
        kernels::rmsnorm(out, row, &w.ffn_norm, c.rms_eps);
    }

    // gate and up: (n, hidden_dim) each; SwiGLU into gate
    let mut gate = Scratch::new(n * c.hidden_dim);
    let mut up = Scratch::new(n * c.hidden_dim);
    let mut acts = kernels::SharedActs::new(&xb, c.dim);
    kernels::matmul_shared(&w.w_gate, &mut acts, &mut gate);
    kernels::matmul_shared(&w.w_up, &mut acts, &mut up);
    match model.arch().ffn_activation {
        FfnActivation::Silu => kernels::swiglu(&mut gate, &up),
        FfnActivation::GeluTanh => kernels::geglu(&mut gate, &up),
    }

    // down projection + residual: x += W_down · gate
    let mut down = Scratch::new(n * c.dim);
    kernels::matmul(&w.w_down, &gate, &mut down);
    if let Some(norms) = &w.post_norms {
        rmsnorm_rows(&mut down, &norms.ffn, c.rms_eps);
    }
    kernels::add_in_place(x, &down);
}

/// Every layer of `model` over the batch `x` (n, dim) at positions
/// `pos0..pos0 + n`, with the sequence's cache and convolution state: what a
/// shard of a sharded model computes for a batch (`model` is its layer
/// range, see [`super::ModelPart`]). The same units in the same order as a
/// job's step runs them, so the same bits.
pub fn layers(model: &Model, pos0: u32, x: &mut [f32], kv: &mut KvCache, conv_state: &mut [f32]) {
    let n = x.len() / model.config.dim;
    layers_of(
        model,
        x,
        &mut [Sequence {
            pos0,
            n,
            kv,
            conv_state,
        }],
    );
}

/// [`layers`] for several sequences (jobs) at once: `x` holds their rows in
/// order; each layer's weights are read once for all of them.
pub fn layers_of(model: &Model, x: &mut [f32], seqs: &mut [Sequence]) {
    for layer in 0..model.config.n_layers {
        mixer_block_of(model, layer, x, seqs);
        ffn_block(model, layer, x);
    }
}

/// Multiply-adds of [`layers`] for `n` tokens at `pos0..pos0 + n`.
pub fn layers_macs(model: &Model, pos0: u32, n: usize) -> u64 {
    (0..model.config.n_layers)
        .map(|l| mixer_block_macs(model, l, pos0, n) + ffn_block_macs(model, n))
        .sum()
}

/// Final norm and output head for one hidden row `x` (dim) → `logits` (vocab_size).
pub fn logits(model: &Model, x: &[f32], logits: &mut [f32]) {
    logits_of_rows(model, x, logits)
}

/// [`logits`] of every row of `xs` (n, dim) → `logits` (n, vocab_size), the
/// head's weights read once for all rows; each row's logits are the ones
/// [`logits`] gives it alone.
pub fn logits_of_rows(model: &Model, xs: &[f32], logits: &mut [f32]) {
    let c = &model.config;
    let mut xb = Scratch::new(xs.len());
    for (out, row) in xb.chunks_exact_mut(c.dim).zip(xs.chunks_exact(c.dim)) {
        kernels::rmsnorm(out, row, &model.output_norm, c.rms_eps);
    }
    match xs.len() / c.dim {
        1 => kernels::matvec(model.output_weights(), &xb, logits),
        _ => kernels::matmul(model.output_weights(), &xb, logits),
    }
    if let Some(cap) = c.final_logit_softcap {
        for l in logits.iter_mut() {
            *l = cap * (*l / cap).tanh();
        }
    }
}

/// Multiply-adds of [`attention_block`] for `n` tokens at `pos0..pos0 + n`
/// on a global layer: the four projections plus scores and weighted sums
/// over the cache.
pub fn attention_block_macs(model: &Model, pos0: u32, n: usize) -> u64 {
    attention_macs(model, pos0, n, None)
}

/// [`attention_block_macs`] on a layer that attends to the last `window`
/// positions at most (every position without one).
fn attention_macs(model: &Model, pos0: u32, n: usize, window: Option<u32>) -> u64 {
    let c = &model.config;
    let proj = (c.dim * (c.q_dim + 2 * c.kv_dim) + c.q_dim * c.dim) as u64;
    // Σ over the batch of the positions each token attends to × (q·k and
    // a·v) per head element.
    n as u64 * proj + attended_positions(pos0, n, window) * 2 * c.q_dim as u64
}

/// Σ over the tokens at `pos0..pos0 + n` of the positions each attends to:
/// `min(pos + 1, window)`.
fn attended_positions(pos0: u32, n: usize, window: Option<u32>) -> u64 {
    let (first, last) = (pos0 as u64 + 1, pos0 as u64 + n as u64);
    if n == 0 {
        return 0;
    }
    let w = window.map_or(u64::MAX, u64::from);
    // Tokens attending to pos + 1 ≤ w positions sum an arithmetic run; the
    // others attend to w each.
    let unclipped_end = last.min(w);
    let unclipped = match unclipped_end >= first {
        true => (first + unclipped_end) * (unclipped_end - first + 1) / 2,
        false => 0,
    };
    let clipped = last - unclipped_end.max(first - 1);
    unclipped + clipped * w.min(last)
}

/// Multiply-adds of [`short_conv_block`] for `n` tokens: the in and out
/// projections and the taps.
pub fn short_conv_block_macs(model: &Model, n: usize) -> u64 {
    let c = &model.config;
    n as u64 * (4 * c.dim * c.dim + c.conv_kernel * c.dim) as u64
}

/// Multiply-adds of [`mixer_block`] of `layer` for `n` tokens at `pos0..pos0 + n`.
pub fn mixer_block_macs(model: &Model, layer: usize, pos0: u32, n: usize) -> u64 {
    let c = &model.config;
    match c.is_conv(layer) {
        false => attention_macs(model, pos0, n, c.attention_window(layer)),
        true => short_conv_block_macs(model, n),
    }
}

/// Multiply-adds of a batch of `n` tokens at `pos0..pos0 + n` through every
/// layer (each with its own mixer: attention over all positions or a
/// window, or a short convolution), plus the head once.
pub fn batch_macs(model: &Model, pos0: u32, n: usize) -> u64 {
    let c = &model.config;
    (0..c.n_layers)
        .map(|l| mixer_block_macs(model, l, pos0, n) + ffn_block_macs(model, n))
        .sum::<u64>()
        + head_macs(model)
}

/// Multiply-adds of the most expensive unit of a batch of `n` tokens at
/// `pos0..pos0 + n` (over the kinds of layers the model has), counting the
/// head when the batch ends with the last known token (`ends_with_head`):
/// with a large vocabulary and a small width the head is the largest unit.
pub fn largest_unit_macs(model: &Model, pos0: u32, n: usize, ends_with_head: bool) -> u64 {
    let c = &model.config;
    let attention = (c.n_kv_layers() > 0).then(|| attention_block_macs(model, pos0, n));
    let conv = (c.n_kv_layers() < c.n_layers).then(|| short_conv_block_macs(model, n));
    let head = ends_with_head.then(|| head_macs(model));
    [attention, conv, Some(ffn_block_macs(model, n)), head]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// Multiply-adds of [`ffn_block`] for `n` tokens.
pub fn ffn_block_macs(model: &Model, n: usize) -> u64 {
    let c = &model.config;
    n as u64 * 3 * (c.dim * c.hidden_dim) as u64
}

/// Multiply-adds of [`logits`] plus sampling (one pass per vocabulary entry).
pub fn head_macs(model: &Model) -> u64 {
    let c = &model.config;
    (c.dim * c.vocab_size + c.vocab_size) as u64
}

#[cfg(test)]
mod tests {
    use super::attended_positions;

    #[test]
    fn attended_positions_is_the_sum_of_each_tokens_span() {
        for window in [None, Some(1), Some(5), Some(16), Some(40)] {
            for pos0 in [0u32, 1, 3, 4, 5, 15, 16, 30] {
                for n in [0usize, 1, 2, 7, 20] {
                    let want: u64 = (pos0 as u64 + 1..=pos0 as u64 + n as u64)
                        .map(|p| p.min(window.map_or(u64::MAX, u64::from)))
                        .sum();
                    assert_eq!(attended_positions(pos0, n, window), want, "{pos0} {n} {window:?}");
                }
            }
        }
    }
}
