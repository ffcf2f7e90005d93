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
//!
//! **Sliding-window layers** (Gemma 3's local layers) of a job's cache keep
//! only their last positions ([`Ring`]): a layer's rows hold positions
//! `base..base + rows`, and when a write runs past them the kept ones move
//! to the front and `base` jumps forward, always by whole blocks of 32
//! positions. Attention then reads the same contiguous rows, with the same
//! block boundaries, as in a full cache: the results are bit for bit those
//! of a cache that keeps everything.

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
    /// The sliding layers that keep only their window; `None`: every layer
    /// keeps every position.
    #[serde(default)]
    pub ring: Option<Ring>,
}

/// Which layers slide and how many positions they keep: the window, plus a
/// write of up to `batch` positions, plus up to 31 positions below the
/// window (the base moves in blocks of 32), plus [`RING_SLACK`] so that the
/// kept rows move only once every 64 positions or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// A query at position `p` sees positions `p + 1 - window ..= p`.
    pub window: u32,
    /// The most positions one write adds (a job's prompt batch).
    pub batch: u32,
    /// Bit `l` set: layer `l` slides (from the model's config; a layer past
    /// the 128th keeps every position).
    pub layers: u128,
}

/// Positions a ring keeps beyond what its window and batch need.
pub const RING_SLACK: u32 = 64;

impl Ring {
    /// Rows a sliding layer holds.
    pub fn rows(&self) -> u32 {
        (self.window + self.batch + 30).next_multiple_of(QK8_0 as u32) + RING_SLACK
    }

    pub fn slides(&self, layer: usize) -> bool {
        layer < 128 && self.layers >> layer & 1 == 1
    }

    /// The first position a sliding layer keeps once positions `0..end` are
    /// written: a multiple of 32 at most `window + batch - 1` below `end`,
    /// so that the next write (at `end`, or a batch that ends at `end` and
    /// was cut short) finds every position its queries see.
    pub fn keep_from(&self, end: u32) -> u32 {
        let keep = end.saturating_sub(self.window + self.batch - 1);
        keep / QK8_0 as u32 * QK8_0 as u32
    }
}

impl KvShape {
    /// The cache of `c`'s attention layers ([`ModelConfig::kv_layer`]:
    /// short-convolution layers have no rows), every one keeping every
    /// position (direct users of the forward pass, which may write batches
    /// of any size).
    pub fn of(c: &ModelConfig) -> KvShape {
        KvShape {
            n_layers: c.n_kv_layers(),
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ring: None,
        }
    }

    /// A job's cache: sliding layers keep their window (plus a prompt batch
    /// of up to `batch` positions).
    pub fn of_job(c: &ModelConfig, batch: u32) -> KvShape {
        let layers = (0..c.n_layers)
            .filter(|&l| c.attention_window(l).is_some())
            .filter_map(|l| c.kv_layer(l))
            .filter(|&k| k < 128)
            .fold(0u128, |m, k| m | 1 << k);
        let ring = (layers != 0).then(|| Ring {
            window: c.sliding_window,
            batch: batch.max(1),
            layers,
        });
        KvShape { ring, ..KvShape::of(c) }
    }

    /// The ring if `layer` slides.
    fn ring_of(&self, layer: usize) -> Option<Ring> {
        self.ring.filter(|r| r.slides(layer))
    }

    /// Rows `layer` holds in a cache of `ctx` positions.
    pub fn layer_rows(&self, layer: usize, ctx: u32) -> u32 {
        self.ring_of(layer).map_or(ctx, |r| r.rows().min(ctx))
    }

    /// The positions `layer` keeps once `0..end` are written: what a
    /// checkpoint saves and a restore reads.
    pub fn kept(&self, layer: usize, end: u32) -> Range<u32> {
        self.ring_of(layer).map_or(0, |r| r.keep_from(end))..end
    }

    /// Of the rows `0..rows` that a cache which wrote `0..saved` left (in a
    /// checkpoint), how many a new cache can start from: `rows`, unless a
    /// sliding layer no longer holds positions the new cache would keep.
    pub fn restorable(&self, rows: u32, saved: u32) -> u32 {
        let rows = rows.min(saved);
        let held = (0..self.n_layers).all(|l| self.kept(l, rows).start >= self.kept(l, saved).start);
        if held {
            rows
        } else {
            0
        }
    }

    /// The most positions one write may add (`u32::MAX` without a ring).
    pub fn max_write(&self) -> u32 {
        self.ring.map_or(u32::MAX, |r| r.batch)
    }

    /// Width of one position's K (or V) row: `n_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Heap bytes of one layer holding `rows` positions.
    fn layer_heap_bytes(&self, ty: KvType, rows: u32) -> u64 {
        let heads = self.n_kv_heads as u64;
        match ty {
            KvType::F32 => 2 * heads * rows as u64 * self.head_dim as u64 * 4,
            KvType::Q8 => {
                let g = Q8Geometry::new(self, rows);
                let block = std::mem::size_of::<BlockQ8_0x4>() as u64;
                let per_head = (g.k_blocks_per_head() + g.v_blocks_per_head()) as u64 * block + g.ctx_pad as u64 * 4;
                heads.saturating_mul(per_head)
            }
        }
    }

    /// Heap bytes of a `ty` cache of `ctx` positions (saturating).
    pub fn heap_bytes(&self, ty: KvType, ctx: u32) -> u64 {
        (0..self.n_layers).fold(0u64, |sum, l| {
            sum.saturating_add(self.layer_heap_bytes(ty, self.layer_rows(l, ctx)))
        })
    }

    /// The most positions a `ty` cache can hold within `bytes` of heap (at
    /// most `u32::MAX`: a cache whose every layer slides never outgrows it).
    pub fn max_ctx(&self, ty: KvType, bytes: u64) -> u64 {
        // heap_bytes grows with ctx: the largest ctx that fits, by bisection.
        let fits = |ctx: u64| self.heap_bytes(ty, ctx as u32) <= bytes;
        let (mut lo, mut hi) = (0u64, u32::MAX as u64);
        if fits(hi) {
            return hi;
        }
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
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

/// Keys and values of every layer for every position of a job (of the
/// last positions, on a sliding layer of a job's cache: see [`Ring`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "KvWire", try_from = "KvWire")]
pub struct KvCache {
    shape: KvShape,
    ctx: u32,
    store: Store,
    /// Per layer: the first row's position (0 unless the layer slides).
    bases: Vec<u32>,
    /// Per layer: its first row among all layers' rows.
    row0: Vec<usize>,
    /// Positions written (in any layer) since the last [`KvCache::take_dirty`].
    dirty: Option<Range<u32>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Store {
    /// Each: every layer's rows of kv_dim, layer after layer.
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    Q8(Q8Store),
}

#[derive(Debug, Clone, PartialEq)]
struct Q8Store {
    layers: Vec<Q8LayerAt>,
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

/// Where one layer of a Q8 store lies: its geometry (its `ctx_pad` from
/// the rows it holds) and the index of its head 0 in `k`, `v`, `v_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Q8LayerAt {
    geo: Q8Geometry,
    k: usize,
    v: usize,
    s: usize,
}

impl Q8LayerAt {
    fn key_at(&self, h: usize) -> usize {
        self.k + h * self.geo.k_blocks_per_head()
    }
    fn value_at(&self, h: usize) -> usize {
        self.v + h * self.geo.v_blocks_per_head()
    }
    fn scale_at(&self, h: usize) -> usize {
        self.s + h * self.geo.ctx_pad
    }
}

/// One layer of a cache, as attention reads it: rows from the layer's base.
pub enum KvLayer<'a> {
    /// `k`, `v`: (rows, kv_dim).
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    Q8(Q8Layer<'a>),
}

/// One layer of a Q8 cache.
pub struct Q8Layer<'a> {
    store: &'a Q8Store,
    at: Q8LayerAt,
}

impl<'a> Q8Layer<'a> {
    /// Head size padded to whole blocks of 32.
    pub fn head_pad(&self) -> usize {
        self.at.geo.head_pad
    }
    /// Positions the value matrices have room for (a multiple of 32).
    pub fn ctx_pad(&self) -> usize {
        self.at.geo.ctx_pad
    }
    /// Key matrix of kv head `h`: rows are positions, `head_pad / 32` blocks each.
    pub fn keys(&self, h: usize) -> &'a [BlockQ8_0x4] {
        &self.store.k[self.at.key_at(h)..][..self.at.geo.k_blocks_per_head()]
    }
    /// Transposed value matrix of kv head `h`: rows are dimensions
    /// (`head_pad`), `ctx_pad / 32` blocks each.
    pub fn values(&self, h: usize) -> &'a [BlockQ8_0x4] {
        &self.store.v[self.at.value_at(h)..][..self.at.geo.v_blocks_per_head()]
    }
    /// Value scales of kv head `h`, one per position.
    pub fn value_scales(&self, h: usize) -> &'a [f32] {
        &self.store.v_scale[self.at.scale_at(h)..][..self.at.geo.ctx_pad]
    }
    /// Key of kv head `h` at row `t`: per block of 32, its scale and
    /// quants (the padding zero).
    pub fn key(&self, h: usize, t: usize) -> Vec<(f32, [i8; QK8_0])> {
        let kb = self.at.geo.k_blocks_per_row();
        let group = &self.keys(h)[t / 4 * kb..][..kb];
        group.iter().map(|b| (b.d[t % 4], b.lane(t % 4))).collect()
    }
    /// Value of kv head `h` at row `t`: its scale and `head_pad` quants.
    pub fn value(&self, h: usize, t: usize) -> (f32, Vec<i8>) {
        let vb = self.at.geo.v_blocks_per_row();
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

/// Where each layer of a cache lies, computed without allocating it.
struct Layout {
    /// Per layer: its first row among all layers' rows.
    row0: Vec<usize>,
    /// F32: elements of `k` (and of `v`).
    f32_len: usize,
    /// Q8: each layer's geometry and the lengths of `k`, `v`, `v_scale`.
    q8: Option<Q8Layout>,
}

struct Q8Layout {
    layers: Vec<Q8LayerAt>,
    k: usize,
    v: usize,
    scales: usize,
}

impl Layout {
    /// `None` if the cache overflows this platform's memory (or Q8 cannot
    /// serve the shape, see [`KvShape::check`]).
    fn of(shape: KvShape, ctx: u32, ty: KvType) -> Option<Layout> {
        shape.check(ty).ok()?;
        usize::try_from(shape.heap_bytes(ty, ctx)).ok()?;
        let rows: Vec<usize> = (0..shape.n_layers).map(|l| shape.layer_rows(l, ctx) as usize).collect();
        let row0 = rows
            .iter()
            .scan(0usize, |at, &r| {
                let first = *at;
                *at += r;
                Some(first)
            })
            .collect();
        let f32_len = rows.iter().sum::<usize>().checked_mul(shape.kv_dim())?;
        f32_len.checked_mul(2 * std::mem::size_of::<f32>())?;
        let q8 = match ty {
            KvType::F32 => None,
            KvType::Q8 => {
                let heads = shape.n_kv_heads;
                let mut layers = Vec::with_capacity(shape.n_layers);
                let (mut k, mut v, mut s) = (0usize, 0usize, 0usize);
                for &r in &rows {
                    let geo = Q8Geometry::new(&shape, r as u32);
                    layers.push(Q8LayerAt { geo, k, v, s });
                    k = k.checked_add(heads.checked_mul(geo.k_blocks_per_head())?)?;
                    v = v.checked_add(heads.checked_mul(geo.v_blocks_per_head())?)?;
                    s = s.checked_add(heads.checked_mul(geo.ctx_pad)?)?;
                }
                Some(Q8Layout {
                    layers,
                    k,
                    v,
                    scales: s,
                })
            }
        };
        Some(Layout { row0, f32_len, q8 })
    }
}

/// A block of zero quants and zero scales: a Q8 row never written.
fn zero_block() -> BlockQ8_0x4 {
    zeroed_vec::<BlockQ8_0x4>(1)[0]
}

impl KvCache {
    /// A zeroed f32 cache; `None` if its size overflows this platform's memory.
    pub fn new(shape: KvShape, ctx: u32) -> Option<KvCache> {
        KvCache::with_type(shape, ctx, KvType::F32)
    }

    /// A zeroed cache of type `ty`; `None` if its size overflows this
    /// platform's memory (see [`KvShape::check`] for the shapes Q8 takes).
    pub fn with_type(shape: KvShape, ctx: u32, ty: KvType) -> Option<KvCache> {
        let layout = Layout::of(shape, ctx, ty)?;
        let store = match layout.q8 {
            None => Store::F32 {
                k: vec![0.0; layout.f32_len],
                v: vec![0.0; layout.f32_len],
            },
            // Zeroed memory straight from the allocator: nothing is
            // written (or dirtied) until positions are.
            Some(q8) => Store::Q8(Q8Store {
                k: zeroed_vec(q8.k),
                v: zeroed_vec(q8.v),
                v_scale: vec![0.0; q8.scales],
                layers: q8.layers,
            }),
        };
        Some(KvCache {
            shape,
            ctx,
            store,
            bases: vec![0; shape.n_layers],
            row0: layout.row0,
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

    /// Rows `layer` holds.
    fn rows(&self, layer: usize) -> u32 {
        self.shape.layer_rows(layer, self.ctx)
    }

    /// The positions `layer`'s rows hold now (written or not).
    pub fn held(&self, layer: usize) -> Range<u32> {
        let base = self.bases[layer];
        base..base + self.rows(layer)
    }

    /// Whether the storage has the size its shape, type and context imply.
    pub fn is_consistent(&self) -> bool {
        let layout_ok = Layout::of(self.shape, self.ctx, self.kv_type()).is_some_and(|l| {
            l.row0 == self.row0
                && match (&l.q8, &self.store) {
                    (None, Store::F32 { k, v }) => k.len() == l.f32_len && v.len() == l.f32_len,
                    (Some(q8), Store::Q8(s)) => {
                        q8.layers == s.layers && q8.k == s.k.len() && q8.v == s.v.len() && q8.scales == s.v_scale.len()
                    }
                    _ => false,
                }
        });
        let bases_ok = self.bases.len() == self.n_layers()
            && self
                .bases
                .iter()
                .enumerate()
                .all(|(l, &b)| b.is_multiple_of(QK8_0 as u32) && (b == 0 || self.shape.ring_of(l).is_some()));
        layout_ok && bases_ok
    }

    /// The whole of `layer`'s rows, for attention (row `t` holds position
    /// `held(layer).start + t`).
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match &self.store {
            Store::F32 { k, v } => {
                let s = self.f32_rows(layer, 0..self.rows(layer) as usize);
                KvLayer::F32 {
                    k: &k[s.clone()],
                    v: &v[s],
                }
            }
            Store::Q8(store) => KvLayer::Q8(Q8Layer {
                store,
                at: store.layers[layer],
            }),
        }
    }

    /// Index range in an f32 store of rows `rows` of `layer`.
    fn f32_rows(&self, layer: usize, rows: Range<usize>) -> Range<usize> {
        let kv_dim = self.kv_dim();
        let first = self.row0[layer];
        (first + rows.start) * kv_dim..(first + rows.end) * kv_dim
    }

    /// The rows of `positions` in `layer`; panics unless it holds them.
    fn rows_of(&self, layer: usize, positions: Range<u32>) -> Range<usize> {
        let held = self.held(layer);
        assert!(
            layer < self.n_layers() && positions.end <= self.ctx,
            "KV rows outside the cache"
        );
        assert!(
            positions.is_empty() || (held.start <= positions.start && positions.end <= held.end),
            "positions {positions:?} of layer {layer} are not among those it holds ({held:?})"
        );
        let base = held.start as usize;
        (positions.start as usize).saturating_sub(base)..(positions.end as usize).saturating_sub(base)
    }

    /// Makes `layer` hold positions up to `end`: a sliding layer whose rows
    /// end before moves its kept positions ([`Ring::keep_from`]) to the front.
    fn make_room(&mut self, layer: usize, end: u32) {
        let Some(ring) = self.shape.ring_of(layer) else { return };
        if end <= self.held(layer).end {
            return;
        }
        let new_base = ring.keep_from(end);
        let old_base = self.bases[layer];
        assert!(new_base >= old_base, "a sliding layer's positions only move forward");
        let shift = (new_base - old_base) as usize;
        let rows = self.rows(layer) as usize;
        match &mut self.store {
            Store::F32 { k, v } => {
                let kv_dim = self.shape.kv_dim();
                let layer_span = self.row0[layer] * kv_dim..(self.row0[layer] + rows) * kv_dim;
                for x in [k, v] {
                    let x = &mut x[layer_span.clone()];
                    let moved = rows.saturating_sub(shift) * kv_dim;
                    x.copy_within(x.len() - moved.., 0);
                    x[moved..].fill(0.0);
                }
            }
            Store::Q8(s) => {
                let at = s.layers[layer];
                let g = at.geo;
                let zero = zero_block();
                for h in 0..self.shape.n_kv_heads {
                    // Keys: groups of four positions, `head_pad / 32` blocks each.
                    let keys = &mut s.k[at.key_at(h)..][..g.k_blocks_per_head()];
                    let by = (shift / 4 * g.k_blocks_per_row()).min(keys.len());
                    keys.copy_within(by.., 0);
                    let n = keys.len();
                    keys[n - by..].fill(zero);
                    // Values: per row of dimensions, blocks of 32 positions.
                    let vb = g.v_blocks_per_row();
                    let by = (shift / QK8_0).min(vb);
                    for row in s.v[at.value_at(h)..][..g.v_blocks_per_head()].chunks_exact_mut(vb) {
                        row.copy_within(by.., 0);
                        row[vb - by..].fill(zero);
                    }
                    let scales = &mut s.v_scale[at.scale_at(h)..][..g.ctx_pad];
                    let by = shift.min(scales.len());
                    scales.copy_within(by.., 0);
                    let n = scales.len();
                    scales[n - by..].fill(0.0);
                }
            }
        }
        self.bases[layer] = new_base;
    }

    /// Writes `k`, `v` (n, kv_dim) at positions `pos0..pos0 + n` of `layer`
    /// and marks them dirty.
    pub fn write(&mut self, layer: usize, pos0: u32, k: &[f32], v: &[f32]) {
        let kv_dim = self.kv_dim();
        let n = (k.len() / kv_dim) as u32;
        assert!(k.len() == v.len() && pos0 + n <= self.ctx, "KV rows outside the cache");
        assert!(
            n <= self.shape.max_write(),
            "a write of {n} positions exceeds the ring's batch"
        );
        self.make_room(layer, pos0 + n);
        let rows = self.rows_of(layer, pos0..pos0 + n);
        let span = self.f32_rows(layer, rows.clone());
        let shape = self.shape;
        match &mut self.store {
            Store::F32 { k: kc, v: vc } => {
                kc[span.clone()].copy_from_slice(k);
                vc[span].copy_from_slice(v);
            }
            Store::Q8(s) => {
                let at = s.layers[layer];
                let hd = shape.head_dim;
                let mut padded = vec![0.0f32; at.geo.head_pad];
                let mut q = vec![0i8; at.geo.head_pad];
                for (i, (k_row, v_row)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
                    let t = rows.start + i;
                    for h in 0..shape.n_kv_heads {
                        padded[..hd].copy_from_slice(&k_row[h * hd..(h + 1) * hd]);
                        s.set_key(at, h, t, &padded, &mut q);
                        padded[..hd].copy_from_slice(&v_row[h * hd..(h + 1) * hd]);
                        s.set_value(at, h, t, &padded, &mut q);
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
    /// Panics unless the layer holds them ([`Self::held`]; callers persist
    /// [`KvShape::kept`] positions of ranges from [`Self::take_dirty`]).
    pub fn encode_rows(&self, layer: usize, positions: Range<u32>, which: Which, out: &mut Vec<u8>) {
        let rows = self.rows_of(layer, positions);
        match (&self.store, which) {
            (Store::F32 { k, .. }, Which::K) => f32_le(&k[self.f32_rows(layer, rows)], out),
            (Store::F32 { v, .. }, Which::V) => f32_le(&v[self.f32_rows(layer, rows)], out),
            (Store::Q8(_), _) => {
                let KvLayer::Q8(l) = self.layer(layer) else {
                    unreachable!("a Q8 store gives Q8 layers")
                };
                let hd = self.shape.head_dim;
                let (kb, vb) = (l.at.geo.k_blocks_per_row(), l.at.geo.v_blocks_per_row());
                // Straight from the packed blocks into the output (this runs
                // at every checkpoint, for every row written).
                let mut at = out.len();
                out.resize(at + rows.len() * self.row_bytes(which), 0);
                for t in rows {
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
                Cow::Borrowed(f32_as_bytes(&k[self.f32_rows(layer, self.rows_of(layer, positions))]))
            }
            (Store::F32 { v, .. }, Which::V) if cfg!(target_endian = "little") => {
                Cow::Borrowed(f32_as_bytes(&v[self.f32_rows(layer, self.rows_of(layer, positions))]))
            }
            _ => {
                let mut out = Vec::new();
                self.encode_rows(layer, positions, which, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Restores rows written by [`Self::encode_rows`] at positions `pos0..`
    /// of `layer` (does not mark them dirty). A sliding layer first moves
    /// on, as a write would, if they run past its rows.
    pub fn decode_rows(&mut self, layer: usize, pos0: u32, which: Which, bytes: &[u8]) -> Result<(), String> {
        let row = self.row_bytes(which);
        if !bytes.len().is_multiple_of(row) {
            return Err(format!("{} bytes are not whole {row}-byte KV rows", bytes.len()));
        }
        let end = pos0 as u64 + (bytes.len() / row) as u64;
        if layer >= self.n_layers() || end > self.ctx as u64 {
            return Err(format!("rows {pos0}..{end} of layer {layer} are outside the cache"));
        }
        let end = end as u32;
        self.make_room(layer, end);
        let held = self.held(layer);
        if pos0 < held.start || end > held.end {
            return Err(format!(
                "rows {pos0}..{end} of layer {layer} are not among the positions it keeps ({held:?})"
            ));
        }
        let rows = self.rows_of(layer, pos0..end);
        let span = self.f32_rows(layer, rows.clone());
        let shape = self.shape;
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
                let at = s.layers[layer];
                let hd = shape.head_dim;
                let mut rd = bytes;
                let mut take = |n: usize| {
                    let (a, b) = rd.split_at(n);
                    rd = b;
                    a
                };
                let scale = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for t in rows {
                    for h in 0..shape.n_kv_heads {
                        match which {
                            Which::K => {
                                for b in 0..at.geo.k_blocks_per_row() {
                                    let d = scale(take(4));
                                    let real = hd.min(QK8_0 * (b + 1)) - QK8_0 * b;
                                    let mut q = [0i8; QK8_0];
                                    for (x, &y) in q.iter_mut().zip(take(real)) {
                                        *x = y as i8;
                                    }
                                    s.key_block_mut(at, h, t, b).set_lane(t % 4, d, &q);
                                }
                            }
                            Which::V => {
                                s.v_scale[at.scale_at(h) + t] = scale(take(4));
                                let q = take(hd);
                                s.set_value_column(at, h, t, |i| q.get(i).map_or(0, |&y| y as i8));
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
        assert!(positions.start < positions.end, "attention over no position");
        let rows = self.rows_of(layer, positions.start as u32..positions.end as u32);
        let (first, n_pos) = (rows.start, rows.end);
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
    fn key_block_mut(&mut self, at: Q8LayerAt, h: usize, t: usize, b: usize) -> &mut BlockQ8_0x4 {
        let kb = at.geo.k_blocks_per_row();
        &mut self.k[at.key_at(h) + t / 4 * kb + b]
    }

    /// Quantizes `key` (`head_pad`, zero padded) of head `h` at row `t`
    /// in blocks of 32 (`q`: scratch of `head_pad`).
    fn set_key(&mut self, at: Q8LayerAt, h: usize, t: usize, key: &[f32], q: &mut [i8]) {
        for (b, (x, q)) in key.chunks_exact(QK8_0).zip(q.chunks_exact_mut(QK8_0)).enumerate() {
            let d = kernels::acts::q8_scale(kernels::acts::quantize_i8_block(x, q));
            let q: &[i8; QK8_0] = (&*q).try_into().expect("a block is 32 quants");
            self.key_block_mut(at, h, t, b).set_lane(t % 4, d, q);
        }
    }

    /// Quantizes `value` (`head_pad`, zero padded) of head `h` at row `t`
    /// with one scale (`q`: scratch of `head_pad`).
    fn set_value(&mut self, at: Q8LayerAt, h: usize, t: usize, value: &[f32], q: &mut [i8]) {
        self.v_scale[at.scale_at(h) + t] = kernels::acts::q8_scale(kernels::acts::quantize_i8_block(value, q));
        self.set_value_column(at, h, t, |i| q[i]);
    }

    /// Writes quant `q(i)` of every dimension `i < head_pad` of head `h` at
    /// row `t` (column `t` of the transposed values), and makes the blocks
    /// it lands in unit-scaled.
    fn set_value_column(&mut self, at: Q8LayerAt, h: usize, t: usize, q: impl Fn(usize) -> i8) {
        let vb = at.geo.v_blocks_per_row();
        let first = pair_byte(0, t % QK8_0);
        let start = at.value_at(h) + t / QK8_0;
        let groups = at.geo.head_pad / 4;
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

/// The serde form of a cache: its shape, each layer's base and every row
/// it holds as [`KvCache::encode_rows`] writes them.
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
    #[serde(default)]
    bases: Vec<u32>,
}

impl From<KvCache> for KvWire {
    fn from(c: KvCache) -> KvWire {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for layer in 0..c.n_layers() {
            let held = c.held(layer);
            let held = held.start..held.end.min(c.ctx);
            c.encode_rows(layer, held.clone(), Which::K, &mut k);
            c.encode_rows(layer, held, Which::V, &mut v);
        }
        KvWire {
            shape: c.shape,
            ctx: c.ctx,
            ty: c.kv_type(),
            k,
            v,
            dirty: c.dirty,
            bases: c.bases,
        }
    }
}

impl TryFrom<KvWire> for KvCache {
    type Error = String;
    fn try_from(w: KvWire) -> Result<KvCache, String> {
        let mut c = KvCache::with_type(w.shape, w.ctx, w.ty).ok_or("KV cache shape too large")?;
        if !w.bases.is_empty() {
            if w.bases.len() != c.n_layers() {
                return Err(format!("{} layer bases for {} layers", w.bases.len(), c.n_layers()));
            }
            c.bases = w.bases;
            if !c.is_consistent() {
                return Err("a KV layer base is not a block boundary of a sliding layer".into());
            }
        }
        for (which, bytes) in [(Which::K, &w.k), (Which::V, &w.v)] {
            let row = c.row_bytes(which);
            let spans: Vec<Range<u32>> = (0..c.n_layers())
                .map(|l| {
                    let h = c.held(l);
                    h.start..h.end.min(c.ctx)
                })
                .collect();
            let want: usize = spans.iter().map(|s| s.len() * row).sum();
            if bytes.len() != want {
                return Err(format!(
                    "{} bytes of KV rows for a {}-layer cache of {} positions",
                    bytes.len(),
                    c.n_layers(),
                    c.ctx
                ));
            }
            let mut at = 0;
            for (layer, span) in spans.into_iter().enumerate() {
                let n = span.len() * row;
                c.decode_rows(layer, span.start, which, &bytes[at..at + n])?;
                at += n;
            }
        }
        c.dirty = w.dirty;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{pseudo, AttentionShape};

    const SHAPES: [KvShape; 3] = [
        KvShape {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 64,
            ring: None,
        },
        KvShape {
            n_layers: 3,
            n_kv_heads: 4,
            head_dim: 8,
            ring: None,
        },
        KvShape {
            n_layers: 1,
            n_kv_heads: 3,
            head_dim: 48,
            ring: None,
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

    /// Two layers of 2 kv heads of 64 (4 query heads); layer 1 slides with
    /// a window of 40 and batches of up to 8: it holds 160 positions
    /// (40 + 8 + 30 rounded up to 32, plus the slack of 64).
    fn ringed() -> (KvShape, AttentionShape) {
        let ring = Ring {
            window: 40,
            batch: 8,
            layers: 0b10,
        };
        let shape = KvShape {
            ring: Some(ring),
            ..SHAPES[0]
        };
        let att = AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
        };
        (shape, att)
    }

    /// Writes positions `range` to every layer of each cache in batches of
    /// `batch`, and after each batch attends every new position of every
    /// layer (the window on the sliding layer): the outputs of all caches.
    fn write_and_attend(caches: &mut [&mut KvCache], range: Range<u32>, batch: u32, seed: u32) -> Vec<Vec<f32>> {
        let (shape, att) = ringed();
        let mut outs = vec![Vec::new(); caches.len()];
        let mut pos = range.start;
        while pos < range.end {
            let n = batch.min(range.end - pos);
            for layer in 0..shape.n_layers {
                let rows = n as usize * shape.kv_dim();
                let (k, v) = (
                    pseudo(rows, seed + pos * 7 + layer as u32),
                    pseudo(rows, seed + pos * 11 + 99),
                );
                for (kv, out) in caches.iter_mut().zip(outs.iter_mut()) {
                    kv.write(layer, pos, &k, &v);
                    for p in pos..pos + n {
                        let q = pseudo(att.n_heads * att.head_dim, p * 3 + layer as u32);
                        let first = if layer == 1 { (p + 1).saturating_sub(40) } else { 0 };
                        let mut o = vec![0.0; q.len()];
                        kv.attend(layer, &q, first as usize..p as usize + 1, att, &mut o);
                        out.extend(o);
                    }
                }
            }
            pos += n;
        }
        outs
    }

    #[test]
    fn a_ring_attends_bit_for_bit_as_a_cache_that_keeps_everything() {
        let (shape, _) = ringed();
        assert_eq!(shape.layer_rows(1, 1000), 160);
        for ty in [KvType::F32, KvType::Q8] {
            let full_shape = KvShape { ring: None, ..shape };
            let mut full = KvCache::with_type(full_shape, 1000, ty).unwrap();
            let mut ring = KvCache::with_type(shape, 1000, ty).unwrap();
            assert!(ring.heap_bytes() < full.heap_bytes() * 6 / 10, "{ty:?}");
            // Batches of every size up to the ring's, across several moves.
            let mut pos = 0;
            for (i, batch) in [1, 8, 3, 8, 5, 7, 2, 8].into_iter().cycle().take(70).enumerate() {
                let outs = write_and_attend(&mut [&mut full, &mut ring], pos..pos + batch, batch, i as u32);
                assert!(outs[0] == outs[1], "{ty:?}: positions {pos}.. differ");
                pos += batch;
            }
            assert!(ring.held(1).start >= 256, "the ring moved on: {:?}", ring.held(1));
            assert_eq!(ring.held(0), 0..1000);
            assert!(ring.is_consistent());
        }
    }

    #[test]
    fn a_ring_restored_from_its_kept_positions_goes_on_as_the_original() {
        let (shape, _) = ringed();
        for ty in [KvType::F32, KvType::Q8] {
            let mut original = KvCache::with_type(shape, 600, ty).unwrap();
            write_and_attend(&mut [&mut original], 0..203, 7, 1);
            let end = original.take_dirty().unwrap().end;
            // What a checkpoint saves and a restore reads: each layer's kept positions.
            let mut restored = KvCache::with_type(shape, 600, ty).unwrap();
            for layer in 0..shape.n_layers {
                let kept = shape.kept(layer, end);
                assert_eq!(kept.start, if layer == 1 { (203 - 47) / 32 * 32 } else { 0 });
                for which in [Which::K, Which::V] {
                    let mut bytes = Vec::new();
                    original.encode_rows(layer, kept.clone(), which, &mut bytes);
                    restored.decode_rows(layer, kept.start, which, &bytes).unwrap();
                }
            }
            let outs = write_and_attend(&mut [&mut original, &mut restored], 203..400, 8, 2);
            assert!(outs[0] == outs[1], "{ty:?}");
            // And through serde, as a whole: the same rows (a Q8 block
            // never written comes back unit-scaled, its quants still zero).
            let mut bytes = Vec::new();
            ciborium::into_writer(&original, &mut bytes).unwrap();
            let back: KvCache = ciborium::from_reader(bytes.as_slice()).unwrap();
            assert_eq!(
                (back.bases.clone(), back.dirty()),
                (original.bases.clone(), original.dirty())
            );
            for layer in 0..shape.n_layers {
                for which in [Which::K, Which::V] {
                    let held = original.held(layer);
                    let held = held.start..held.end.min(600);
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    original.encode_rows(layer, held.clone(), which, &mut a);
                    back.encode_rows(layer, held, which, &mut b);
                    assert!(a == b, "{ty:?} layer {layer}");
                }
            }
            // Positions the ring no longer holds are refused, not invented.
            let e = restored.decode_rows(1, 0, Which::K, &vec![0; restored.row_bytes(Which::K)]);
            assert!(e.unwrap_err().contains("keeps"), "{ty:?}");
        }
    }

    #[test]
    fn only_rows_a_ring_still_holds_are_restorable() {
        let (shape, _) = ringed();
        // Saved 0..500: the sliding layer kept 448..500 (a multiple of 32
        // at most window + batch - 1 = 47 below 500).
        assert_eq!(shape.kept(1, 500), 448..500);
        assert_eq!(shape.restorable(499, 500), 499);
        assert_eq!(shape.restorable(480, 500), 0, "would need 416..480");
        assert_eq!(shape.restorable(600, 500), 500);
        assert_eq!(KvShape { ring: None, ..shape }.restorable(100, 500), 100);
        // A ring of a cache shorter than its rows keeps everything.
        assert_eq!(shape.layer_rows(1, 50), 50);
    }
}
