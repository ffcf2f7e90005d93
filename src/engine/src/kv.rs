//! The KV cache: the keys and values of every layer at every position of a
//! job, in one of two storage types ([`KvType`]).
//!
//! - **`F32`** (the default): rows of f32, exact.
//! - **`Q8`**: int8 with f32 scales, like llama.cpp's `q8_0` cache types:
//!   3.5× smaller in the heap and in stable memory, and attention is int8
//!   dot products (about 0.8 weighted instructions per multiply-add instead
//!   of 2.1). Rounding changes as with int8 activations.
//!   - *Keys*: each kv head's key is quantized in blocks of 32 (the head
//!     padded with zeros to a multiple of 32) and kept as a matrix whose rows
//!     are positions, in the Q8_0 byte layout ([`BlockQ8_0x4`]: four
//!     positions interleaved). A head's scores are one Q8_0 matvec with the
//!     quantized query.
//!   - *Values*: each kv head's value at a position is quantized with one
//!     scale `s_t` and stored **transposed**: rows are the head's dimensions,
//!     columns positions, in the same layout with unit block scales. Then
//!     `Σ_t p_t v_t = Σ_t (p_t s_t) q_t` is one Q8_0 matvec with the
//!     probabilities times the scales quantized to int8 blocks of 32
//!     positions.
//!
//! Either type is saved and restored as the same per-position bytes
//! ([`KvCache::encode_rows`]), so a cache survives stable memory bit for bit.

use crate::kernels::{self, AttentionShape};
use crate::model::ModelConfig;
use crate::quant::packed::{zeroed_vec, BlockQ8_0x4};
use crate::quant::QK8_0;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::ops::Range;

/// How a cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KvType {
    /// f32 rows: exact.
    #[default]
    F32,
    /// int8 blocks with f32 scales: smaller and faster at long contexts.
    Q8,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::Q8 => "q8",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "q8" | "q8_0" | "int8" => Ok(KvType::Q8),
            _ => Err(format!("unknown KV cache type {s:?} (expected f32 or q8)")),
        }
    }
}

/// The dimensions of a model's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvShape {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// The cache of `c`'s attention layers ([`ModelConfig::kv_layer`]):
    /// short-convolution layers have no rows.
    pub fn of(c: &ModelConfig) -> KvShape {
        KvShape {
            n_layers: c.n_kv_layers(),
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        }
    }

    /// Width of one position's K (or V) row: `n_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Heap bytes of a `ty` cache of `ctx` positions (saturating).
    pub fn heap_bytes(&self, ty: KvType, ctx: u32) -> u64 {
        let heads = self.n_layers as u64 * self.n_kv_heads as u64;
        match ty {
            KvType::F32 => 2 * heads * ctx as u64 * self.head_dim as u64 * 4,
            KvType::Q8 => {
                let g = Q8Geometry::new(self, ctx);
                let block = std::mem::size_of::<BlockQ8_0x4>() as u64;
                let per_head = (g.k_blocks_per_head() + g.v_blocks_per_head()) as u64 * block + g.ctx_pad as u64 * 4;
                heads.saturating_mul(per_head)
            }
        }
    }

    /// The most positions a `ty` cache can hold within `bytes` of heap.
    pub fn max_ctx(&self, ty: KvType, bytes: u64) -> u64 {
        // Q8 grows by whole blocks of 32 positions; F32 by single positions.
        let step = match ty {
            KvType::F32 => 1,
            KvType::Q8 => QK8_0 as u32,
        };
        let per_step = self.heap_bytes(ty, step).max(1);
        bytes / per_step * step as u64
    }

    /// Bytes of one position's K (`which` = 0) or V (1) row of one layer
    /// in [`KvCache::encode_rows`]: for Q8, each head's block scales and
    /// quants (K) or scale and quants (V); never more than the f32 row.
    pub fn row_bytes(&self, ty: KvType, which: Which) -> usize {
        let hd = self.head_dim;
        self.n_kv_heads
            * match (ty, which) {
                (KvType::F32, _) => 4 * hd,
                (KvType::Q8, Which::K) => 4 * hd.div_ceil(QK8_0) + hd,
                (KvType::Q8, Which::V) => 4 + hd,
            }
    }

    /// Why a `ty` cache cannot serve this shape, if it cannot.
    pub fn check(&self, ty: KvType) -> Result<(), String> {
        if ty == KvType::Q8 && self.head_dim < 2 {
            return Err(format!(
                "the q8 KV cache needs a head size of at least 2, not {}",
                self.head_dim
            ));
        }
        Ok(())
    }
}

/// K or V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    K,
    V,
}

/// Where a Q8 cache keeps each kv head's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Q8Geometry {
    /// Head size padded with zeros to whole blocks of 32.
    head_pad: usize,
    /// Positions rounded up to whole blocks of 32.
    ctx_pad: usize,
}

impl Q8Geometry {
    fn new(shape: &KvShape, ctx: u32) -> Q8Geometry {
        Q8Geometry {
            head_pad: shape.head_dim.next_multiple_of(QK8_0),
            ctx_pad: (ctx as usize).next_multiple_of(QK8_0),
        }
    }
    /// Key blocks per row (position).
    fn k_blocks_per_row(&self) -> usize {
        self.head_pad / QK8_0
    }
    /// Value blocks per row (head dimension): one per 32 positions.
    fn v_blocks_per_row(&self) -> usize {
        self.ctx_pad / QK8_0
    }
    fn k_blocks_per_head(&self) -> usize {
        self.ctx_pad / 4 * self.k_blocks_per_row()
    }
    fn v_blocks_per_head(&self) -> usize {
        self.head_pad / 4 * self.v_blocks_per_row()
    }
}

/// Keys and values of every layer for every position of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "KvWire", try_from = "KvWire")]
pub struct KvCache {
    shape: KvShape,
    ctx: u32,
    store: Store,
    /// Positions written (in any layer) since the last [`KvCache::take_dirty`].
    dirty: Option<Range<u32>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Store {
    /// Each (n_layers, ctx, kv_dim).
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    Q8(Q8Store),
}

#[derive(Debug, Clone, PartialEq)]
struct Q8Store {
    geo: Q8Geometry,
    /// Per (layer, kv head): `ctx_pad / 4` groups of four positions, each
    /// `head_pad / 32` blocks.
    k: Vec<BlockQ8_0x4>,
    /// Per (layer, kv head): `head_pad / 4` groups of four dimensions, each
    /// `ctx_pad / 32` blocks of 32 positions; block scales 1.0 once a
    /// position in the block is written (0.0 before: all-zero blocks).
    v: Vec<BlockQ8_0x4>,
    /// Per (layer, kv head, position): the value's scale `s_t`.
    v_scale: Vec<f32>,
}

/// One layer of a cache, as attention reads it.
pub enum KvLayer<'a> {
    /// `k`, `v`: (ctx, kv_dim).
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    Q8(Q8Layer<'a>),
}

/// One layer of a Q8 cache.
pub struct Q8Layer<'a> {
    store: &'a Q8Store,
    /// Index of (this layer, kv head 0).
    head0: usize,
}

impl<'a> Q8Layer<'a> {
    /// Head size padded to whole blocks of 32.
    pub fn head_pad(&self) -> usize {
        self.store.geo.head_pad
    }
    /// Positions the value matrices have room for (a multiple of 32).
    pub fn ctx_pad(&self) -> usize {
        self.store.geo.ctx_pad
    }
    /// Key matrix of kv head `h`: rows are positions, `head_pad / 32` blocks each.
    pub fn keys(&self, h: usize) -> &'a [BlockQ8_0x4] {
        let n = self.store.geo.k_blocks_per_head();
        &self.store.k[(self.head0 + h) * n..][..n]
    }
    /// Transposed value matrix of kv head `h`: rows are dimensions
    /// (`head_pad`), `ctx_pad / 32` blocks each.
    pub fn values(&self, h: usize) -> &'a [BlockQ8_0x4] {
        let n = self.store.geo.v_blocks_per_head();
        &self.store.v[(self.head0 + h) * n..][..n]
    }
    /// Value scales of kv head `h`, one per position.
    pub fn value_scales(&self, h: usize) -> &'a [f32] {
        let n = self.store.geo.ctx_pad;
        &self.store.v_scale[(self.head0 + h) * n..][..n]
    }
    /// Key of kv head `h` at position `t`: per block of 32, its scale and
    /// quants (the padding zero).
    pub fn key(&self, h: usize, t: usize) -> Vec<(f32, [i8; QK8_0])> {
        let kb = self.store.geo.k_blocks_per_row();
        let group = &self.keys(h)[t / 4 * kb..][..kb];
        group.iter().map(|b| (b.d[t % 4], b.lane(t % 4))).collect()
    }
    /// Value of kv head `h` at position `t`: its scale and `head_pad` quants.
    pub fn value(&self, h: usize, t: usize) -> (f32, Vec<i8>) {
        let vb = self.store.geo.v_blocks_per_row();
        let values = self.values(h);
        let q = (0..self.head_pad())
            .map(|i| values[i / 4 * vb + t / QK8_0].qs[pair_byte(i % 4, t % QK8_0)])
            .collect();
        (self.value_scales(h)[t], q)
    }
}

/// Byte of row `lane`, column `col` in a block interleaved by column pairs
/// ([`crate::quant::packed::interleave_pairs`]).
fn pair_byte(lane: usize, col: usize) -> usize {
    8 * (col / 2) + 2 * lane + col % 2
}

impl KvCache {
    /// A zeroed f32 cache; `None` if its size overflows this platform's memory.
    pub fn new(shape: KvShape, ctx: u32) -> Option<KvCache> {
        KvCache::with_type(shape, ctx, KvType::F32)
    }

    /// A zeroed cache of type `ty`; `None` if its size overflows this
    /// platform's memory (see [`KvShape::check`] for the shapes Q8 takes).
    pub fn with_type(shape: KvShape, ctx: u32, ty: KvType) -> Option<KvCache> {
        shape.check(ty).ok()?;
        let heads = shape.n_layers.checked_mul(shape.n_kv_heads)?;
        usize::try_from(shape.heap_bytes(ty, ctx)).ok()?;
        let store = match ty {
            KvType::F32 => {
                let len = heads.checked_mul(ctx as usize)?.checked_mul(shape.head_dim)?;
                len.checked_mul(2 * std::mem::size_of::<f32>())?;
                Store::F32 {
                    k: vec![0.0; len],
                    v: vec![0.0; len],
                }
            }
            KvType::Q8 => {
                // Zeroed memory straight from the allocator: nothing is
                // written (or dirtied) until positions are.
                let geo = Q8Geometry::new(&shape, ctx);
                Store::Q8(Q8Store {
                    geo,
                    k: zeroed_vec(heads.checked_mul(geo.k_blocks_per_head())?),
                    v: zeroed_vec(heads.checked_mul(geo.v_blocks_per_head())?),
                    v_scale: vec![0.0; heads.checked_mul(geo.ctx_pad)?],
                })
            }
        };
        Some(KvCache {
            shape,
            ctx,
            store,
            dirty: None,
        })
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32 { .. } => KvType::F32,
            Store::Q8(_) => KvType::Q8,
        }
    }
    pub fn n_layers(&self) -> usize {
        self.shape.n_layers
    }
    pub fn ctx(&self) -> u32 {
        self.ctx
    }
    pub fn kv_dim(&self) -> usize {
        self.shape.kv_dim()
    }

    /// Heap bytes of the cache.
    pub fn heap_bytes(&self) -> u64 {
        self.shape.heap_bytes(self.kv_type(), self.ctx)
    }

    /// Whether the storage has the size its shape, type and context imply.
    pub fn is_consistent(&self) -> bool {
        let heads = self.shape.n_layers * self.shape.n_kv_heads;
        match &self.store {
            Store::F32 { k, v } => k.len() == v.len() && k.len() == heads * self.ctx as usize * self.shape.head_dim,
            Store::Q8(s) => {
                s.geo == Q8Geometry::new(&self.shape, self.ctx)
                    && s.k.len() == heads * s.geo.k_blocks_per_head()
                    && s.v.len() == heads * s.geo.v_blocks_per_head()
                    && s.v_scale.len() == heads * s.geo.ctx_pad
            }
        }
    }

    /// The whole of `layer`, for attention.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match &self.store {
            Store::F32 { k, v } => {
                let s = self.f32_span(layer, 0..self.ctx);
                KvLayer::F32 {
                    k: &k[s.clone()],
                    v: &v[s],
                }
            }
            Store::Q8(store) => KvLayer::Q8(Q8Layer {
                store,
                head0: layer * self.shape.n_kv_heads,
            }),
        }
    }

    /// Index range in an f32 store of `positions` of `layer`.
    fn f32_span(&self, layer: usize, positions: Range<u32>) -> Range<usize> {
        let base = layer * self.ctx as usize;
        let kv_dim = self.kv_dim();
        (base + positions.start as usize) * kv_dim..(base + positions.end as usize) * kv_dim
    }

    /// Writes `k`, `v` (n, kv_dim) at positions `pos0..pos0 + n` of `layer`
    /// and marks them dirty.
    pub fn write(&mut self, layer: usize, pos0: u32, k: &[f32], v: &[f32]) {
        let kv_dim = self.kv_dim();
        let n = (k.len() / kv_dim) as u32;
        assert!(k.len() == v.len() && pos0 + n <= self.ctx, "KV rows outside the cache");
        let span = self.f32_span(layer, pos0..pos0 + n);
        let (shape, head0) = (self.shape, layer * self.shape.n_kv_heads);
        match &mut self.store {
            Store::F32 { k: kc, v: vc } => {
                kc[span.clone()].copy_from_slice(k);
                vc[span].copy_from_slice(v);
            }
            Store::Q8(s) => {
                let hd = shape.head_dim;
                let mut padded = vec![0.0f32; s.geo.head_pad];
                let mut q = vec![0i8; s.geo.head_pad];
                for (i, (k_row, v_row)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
                    let t = pos0 as usize + i;
                    for h in 0..shape.n_kv_heads {
                        padded[..hd].copy_from_slice(&k_row[h * hd..(h + 1) * hd]);
                        s.set_key(head0 + h, t, &padded, &mut q);
                        padded[..hd].copy_from_slice(&v_row[h * hd..(h + 1) * hd]);
                        s.set_value(head0 + h, t, &padded, &mut q);
                    }
                }
            }
        }
        self.mark_dirty(pos0..pos0 + n);
    }

    fn mark_dirty(&mut self, new: Range<u32>) {
        self.dirty = Some(match self.dirty.take() {
            None => new,
            Some(d) => d.start.min(new.start)..d.end.max(new.end),
        });
    }

    /// Bytes per position of `which` in [`Self::encode_rows`].
    pub fn row_bytes(&self, which: Which) -> usize {
        self.shape.row_bytes(self.kv_type(), which)
    }

    /// Appends the `which` rows of `positions` in `layer` to `out`, position
    /// after position, [`Self::row_bytes`] each: f32 little-endian for F32;
    /// for Q8 per kv head the block scales (f32 LE) each followed by its
    /// quants (K), or the scale then the quants (V), without padding.
    /// Panics if out of range (callers persist ranges from [`Self::take_dirty`]).
    pub fn encode_rows(&self, layer: usize, positions: Range<u32>, which: Which, out: &mut Vec<u8>) {
        assert!(
            layer < self.n_layers() && positions.end <= self.ctx,
            "KV rows outside the cache"
        );
        match (&self.store, which) {
            (Store::F32 { k, .. }, Which::K) => f32_le(&k[self.f32_span(layer, positions)], out),
            (Store::F32 { v, .. }, Which::V) => f32_le(&v[self.f32_span(layer, positions)], out),
            (Store::Q8(_), _) => {
                let KvLayer::Q8(l) = self.layer(layer) else {
                    unreachable!("a Q8 store gives Q8 layers")
                };
                let hd = self.shape.head_dim;
                let (kb, vb) = (l.store.geo.k_blocks_per_row(), l.store.geo.v_blocks_per_row());
                // Straight from the packed blocks into the output (this runs
                // at every checkpoint, for every row written).
                let mut at = out.len();
                out.resize(at + positions.len() * self.row_bytes(which), 0);
                for t in positions.start as usize..positions.end as usize {
                    let (lane, col) = (t % 4, t % QK8_0);
                    for h in 0..self.shape.n_kv_heads {
                        match which {
                            Which::K => {
                                for (b, block) in l.keys(h)[t / 4 * kb..][..kb].iter().enumerate() {
                                    out[at..at + 4].copy_from_slice(&block.d[lane].to_le_bytes());
                                    at += 4;
                                    let real = hd.min(QK8_0 * (b + 1)) - QK8_0 * b;
                                    for (c, o) in out[at..at + real].iter_mut().enumerate() {
                                        *o = block.qs[pair_byte(lane, c)] as u8;
                                    }
                                    at += real;
                                }
                            }
                            Which::V => {
                                out[at..at + 4].copy_from_slice(&l.value_scales(h)[t].to_le_bytes());
                                at += 4;
                                // Dimension i is byte pair_byte(i % 4, col) of block i / 4.
                                let first = pair_byte(0, col);
                                let blocks = l.values(h)[t / QK8_0..].iter().step_by(vb);
                                for (o, block) in out[at..at + hd].chunks_mut(4).zip(blocks) {
                                    for (r, o) in o.iter_mut().enumerate() {
                                        *o = block.qs[first + 2 * r] as u8;
                                    }
                                }
                                at += hd;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bytes [`Self::encode_rows`] appends, borrowed without a copy where
    /// they are the cache's own memory (f32 rows on a little-endian
    /// platform, as wasm is): a checkpoint writes them straight to stable
    /// memory.
    pub fn rows_bytes(&self, layer: usize, positions: Range<u32>, which: Which) -> Cow<'_, [u8]> {
        match (&self.store, which) {
            (Store::F32 { k, .. }, Which::K) if cfg!(target_endian = "little") => {
                Cow::Borrowed(f32_as_bytes(&k[self.f32_span(layer, positions)]))
            }
            (Store::F32 { v, .. }, Which::V) if cfg!(target_endian = "little") => {
                Cow::Borrowed(f32_as_bytes(&v[self.f32_span(layer, positions)]))
            }
            _ => {
                let mut out = Vec::new();
                self.encode_rows(layer, positions, which, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Restores rows written by [`Self::encode_rows`] at positions `pos0..`
    /// of `layer` (does not mark them dirty).
    pub fn decode_rows(&mut self, layer: usize, pos0: u32, which: Which, bytes: &[u8]) -> Result<(), String> {
        let row = self.row_bytes(which);
        if !bytes.len().is_multiple_of(row) {
            return Err(format!("{} bytes are not whole {row}-byte KV rows", bytes.len()));
        }
        let end = pos0 as u64 + (bytes.len() / row) as u64;
        if layer >= self.n_layers() || end > self.ctx as u64 {
            return Err(format!("rows {pos0}..{end} of layer {layer} are outside the cache"));
        }
        let span = self.f32_span(layer, pos0..end as u32);
        let (shape, head0) = (self.shape, layer * self.shape.n_kv_heads);
        match &mut self.store {
            Store::F32 { k, v } => {
                let dst = match which {
                    Which::K => &mut k[span],
                    Which::V => &mut v[span],
                };
                for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Store::Q8(s) => {
                let hd = shape.head_dim;
                let mut rd = bytes;
                let mut take = |n: usize| {
                    let (a, b) = rd.split_at(n);
                    rd = b;
                    a
                };
                let scale = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for t in pos0 as usize..end as usize {
                    for h in head0..head0 + shape.n_kv_heads {
                        match which {
                            Which::K => {
                                for b in 0..s.geo.k_blocks_per_row() {
                                    let d = scale(take(4));
                                    let real = hd.min(QK8_0 * (b + 1)) - QK8_0 * b;
                                    let mut q = [0i8; QK8_0];
                                    for (x, &y) in q.iter_mut().zip(take(real)) {
                                        *x = y as i8;
                                    }
                                    s.key_block_mut(h, t, b).set_lane(t % 4, d, &q);
                                }
                            }
                            Which::V => {
                                s.v_scale[h * s.geo.ctx_pad + t] = scale(take(4));
                                let q = take(hd);
                                s.set_value_column(h, t, |i| q.get(i).map_or(0, |&y| y as i8));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Positions written in any layer since the last call (rows of layers
    /// not yet reached are stale but harmless to save: they are rewritten
    /// and marked dirty again when their unit runs).
    pub fn take_dirty(&mut self) -> Option<Range<u32>> {
        self.dirty.take()
    }

    pub fn dirty(&self) -> Option<Range<u32>> {
        self.dirty.clone()
    }

    /// Attention of one query (`n_heads · head_dim`, rotated) at `layer`
    /// over `positions` (`0..n` causally, a later start for a sliding
    /// window), into `out`.
    pub fn attend(&self, layer: usize, q: &[f32], positions: Range<usize>, shape: AttentionShape, out: &mut [f32]) {
        let (first, n_pos) = (positions.start, positions.end);
        assert!(first < n_pos, "attention over no position");
        let mut scores = crate::scratch::Scratch::new(n_pos.next_multiple_of(QK8_0));
        match self.layer(layer) {
            KvLayer::F32 { k, v } => {
                let at = first * self.kv_dim();
                kernels::attention(out, q, &k[at..], &v[at..], n_pos - first, shape, &mut scores)
            }
            KvLayer::Q8(l) => kernels::attention_q8(out, q, &l, first, n_pos, shape, &mut scores),
        }
    }
}

impl Q8Store {
    fn key_block_mut(&mut self, head: usize, t: usize, b: usize) -> &mut BlockQ8_0x4 {
        let kb = self.geo.k_blocks_per_row();
        &mut self.k[head * self.geo.k_blocks_per_head() + t / 4 * kb + b]
    }

    /// Quantizes `key` (`head_pad`, zero padded) of `head` at position `t`
    /// in blocks of 32 (`q`: scratch of `head_pad`).
    fn set_key(&mut self, head: usize, t: usize, key: &[f32], q: &mut [i8]) {
        for (b, (x, q)) in key.chunks_exact(QK8_0).zip(q.chunks_exact_mut(QK8_0)).enumerate() {
            let d = kernels::acts::quantize_i8_block(x, q);
            let q: &[i8; QK8_0] = (&*q).try_into().expect("a block is 32 quants");
            self.key_block_mut(head, t, b).set_lane(t % 4, d, q);
        }
    }

    /// Quantizes `value` (`head_pad`, zero padded) of `head` at position `t`
    /// with one scale (`q`: scratch of `head_pad`).
    fn set_value(&mut self, head: usize, t: usize, value: &[f32], q: &mut [i8]) {
        self.v_scale[head * self.geo.ctx_pad + t] = kernels::acts::quantize_i8_block(value, q);
        self.set_value_column(head, t, |i| q[i]);
    }

    /// Writes quant `q(i)` of every dimension `i < head_pad` of `head` at
    /// position `t` (column `t` of the transposed values), and makes the
    /// blocks it lands in unit-scaled.
    fn set_value_column(&mut self, head: usize, t: usize, q: impl Fn(usize) -> i8) {
        let vb = self.geo.v_blocks_per_row();
        let first = pair_byte(0, t % QK8_0);
        let start = head * self.geo.v_blocks_per_head() + t / QK8_0;
        let groups = self.geo.head_pad / 4;
        for (g, block) in self.v[start..].iter_mut().step_by(vb).take(groups).enumerate() {
            block.d = [1.0; 4];
            for r in 0..4 {
                block.qs[first + 2 * r] = q(4 * g + r);
            }
        }
    }
}

fn f32_le(x: &[f32], out: &mut Vec<u8>) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(f32_as_bytes(x));
    } else {
        out.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    }
}

/// `x`'s memory as bytes (its little-endian encoding on a little-endian platform).
fn f32_as_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

/// The serde form of a cache: its shape and every row as
/// [`KvCache::encode_rows`] writes them.
#[derive(Serialize, Deserialize)]
struct KvWire {
    shape: KvShape,
    ctx: u32,
    ty: KvType,
    #[serde(with = "crate::serde_bytes")]
    k: Vec<u8>,
    #[serde(with = "crate::serde_bytes")]
    v: Vec<u8>,
    dirty: Option<Range<u32>>,
}

impl From<KvCache> for KvWire {
    fn from(c: KvCache) -> KvWire {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for layer in 0..c.n_layers() {
            c.encode_rows(layer, 0..c.ctx, Which::K, &mut k);
            c.encode_rows(layer, 0..c.ctx, Which::V, &mut v);
        }
        KvWire {
            shape: c.shape,
            ctx: c.ctx,
            ty: c.kv_type(),
            k,
            v,
            dirty: c.dirty,
        }
    }
}

impl TryFrom<KvWire> for KvCache {
    type Error = String;
    fn try_from(w: KvWire) -> Result<KvCache, String> {
        let mut c = KvCache::with_type(w.shape, w.ctx, w.ty).ok_or("KV cache shape too large")?;
        for (which, bytes) in [(Which::K, &w.k), (Which::V, &w.v)] {
            let per_layer = c.row_bytes(which) * c.ctx as usize;
            if bytes.len() != per_layer * c.n_layers() {
                return Err(format!(
                    "{} bytes of KV rows for a {}-layer cache of {} positions",
                    bytes.len(),
                    c.n_layers(),
                    c.ctx
                ));
            }
            for layer in 0..c.n_layers() {
                c.decode_rows(layer, 0, which, &bytes[layer * per_layer..][..per_layer])?;
            }
        }
        c.dirty = w.dirty;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo;

    const SHAPES: [KvShape; 3] = [
        KvShape {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 64,
        },
        KvShape {
            n_layers: 3,
            n_kv_heads: 4,
            head_dim: 8,
        },
        KvShape {
            n_layers: 1,
            n_kv_heads: 3,
            head_dim: 48,
        },
    ];

    fn filled(shape: KvShape, ctx: u32, ty: KvType) -> KvCache {
        let mut kv = KvCache::with_type(shape, ctx, ty).unwrap();
        let n = ctx as usize - 1; // the last position stays empty
        for layer in 0..shape.n_layers {
            let k = pseudo(n * shape.kv_dim(), layer as u32);
            let v = pseudo(n * shape.kv_dim(), layer as u32 + 100);
            kv.write(layer, 0, &k, &v);
        }
        kv
    }

    #[test]
    fn encoded_rows_rebuild_the_cache_exactly() {
        for shape in SHAPES {
            for ty in [KvType::F32, KvType::Q8] {
                let kv = filled(shape, 37, ty);
                assert!(kv.is_consistent());
                assert_eq!(kv.dirty(), Some(0..36));
                let mut rebuilt = KvCache::with_type(shape, 37, ty).unwrap();
                for layer in 0..shape.n_layers {
                    for which in [Which::K, Which::V] {
                        // In two pieces, as a job saves them step by step.
                        for range in [0..5, 5..37] {
                            let mut bytes = Vec::new();
                            kv.encode_rows(layer, range.clone(), which, &mut bytes);
                            assert_eq!(bytes.len(), range.len() * kv.row_bytes(which));
                            assert_eq!(kv.rows_bytes(layer, range.clone(), which), bytes);
                            assert!(kv.row_bytes(which) <= 4 * shape.kv_dim(), "fits an f32 slot row");
                            rebuilt.decode_rows(layer, range.start, which, &bytes).unwrap();
                        }
                    }
                }
                assert_eq!(rebuilt.dirty(), None);
                rebuilt.dirty = kv.dirty();
                assert_eq!(rebuilt, kv, "{shape:?} {ty:?}");
            }
        }
    }

    #[test]
    fn the_cache_round_trips_through_cbor() {
        for ty in [KvType::F32, KvType::Q8] {
            let kv = filled(SHAPES[0], 40, ty);
            let mut bytes = Vec::new();
            ciborium::into_writer(&kv, &mut bytes).unwrap();
            let back: KvCache = ciborium::from_reader(bytes.as_slice()).unwrap();
            assert_eq!(back, kv);
        }
    }

    #[test]
    fn bad_rows_are_refused() {
        let mut kv = KvCache::with_type(SHAPES[0], 8, KvType::Q8).unwrap();
        let row = kv.row_bytes(Which::K);
        let e = kv.decode_rows(0, 0, Which::K, &vec![0; row + 1]).unwrap_err();
        assert!(e.contains("whole"), "{e}");
        let e = kv.decode_rows(0, 7, Which::K, &vec![0; 2 * row]).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = kv.decode_rows(2, 0, Which::V, &[]).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn q8_values_dequantize_close_to_what_was_written() {
        let shape = SHAPES[0];
        let mut kv = KvCache::with_type(shape, 4, KvType::Q8).unwrap();
        let k = pseudo(shape.kv_dim(), 1);
        let v = pseudo(shape.kv_dim(), 2);
        kv.write(1, 3, &k, &v);
        let KvLayer::Q8(l) = kv.layer(1) else { panic!("q8") };
        for h in 0..shape.n_kv_heads {
            let hd = shape.head_dim;
            let key: Vec<f32> = l.key(h, 3).iter().flat_map(|(d, q)| q.map(|x| x as f32 * d)).collect();
            let (s, q) = l.value(h, 3);
            for i in 0..hd {
                assert!((key[i] - k[h * hd + i]).abs() <= 0.5 / 127.0 + 1e-6);
                assert!((q[i] as f32 * s - v[h * hd + i]).abs() <= 0.5 / 127.0 + 1e-6);
            }
        }
    }

    #[test]
    fn heap_bytes_are_what_is_allocated_and_max_ctx_fits() {
        for shape in SHAPES {
            for ty in [KvType::F32, KvType::Q8] {
                for ctx in [1, 31, 32, 33, 100] {
                    let kv = KvCache::with_type(shape, ctx, ty).unwrap();
                    let allocated = match &kv.store {
                        Store::F32 { k, v } => 4 * (k.len() + v.len()),
                        Store::Q8(s) => {
                            std::mem::size_of::<BlockQ8_0x4>() * (s.k.len() + s.v.len()) + 4 * s.v_scale.len()
                        }
                    };
                    assert_eq!(kv.heap_bytes(), allocated as u64);
                }
                let room = 1 << 20;
                let ctx = shape.max_ctx(ty, room) as u32;
                assert!(shape.heap_bytes(ty, ctx) <= room);
                assert!(shape.heap_bytes(ty, ctx + 1) > room, "{shape:?} {ty:?} {ctx}");
            }
        }
        let (f32, q8) = (
            SHAPES[0].heap_bytes(KvType::F32, 4096),
            SHAPES[0].heap_bytes(KvType::Q8, 4096),
        );
        assert!(f32 as f64 / q8 as f64 > 3.4, "{f32} vs {q8}");
    }
}
