//! SIMD dot products of packed quantized rows ([`crate::quant::packed`]) with
//! int8 activations, four rows at a time, written against the lane types of
//! [`super::simd`] (wasm SIMD128 in the canister, plain arrays elsewhere).
//!
//! Each kernel computes per block the same **exact integer** sums as its
//! scalar oracle in [`super::quant`] (integer addition is associative, so
//! the lane order does not matter), then does the oracle's one f32 step per
//! block, `acc += (d_w · d_x) · isum`, in the same order: the results are
//! bit for bit the oracle's. Products are formed with `i16x8.extmul_*_i8x16`
//! (one instruction for eight), pairs of them added in i16, then widened
//! with `i32x4.extadd_pairwise_i16x8`; the bounds that keep the i16 sums
//! exact are stated at each kernel.

use super::simd::{F32x4, I16x8, I32x4, I8x16};
use crate::quant::packed::{
    f16_bits_to_f32, BlockK16x4, BlockKWidex4, BlockQ2Kx4, BlockQ4Kx4, BlockQ4_0x4, BlockQ5Kx4, BlockQ8Minx4,
    BlockQ8_0x4, BlockQ8x4, Interleaved, PackedBlock,
};
use crate::quant::{BlockIQ4NL, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8A, BlockQ8K, KVALUES_IQ4NL};

/// [`crate::quant`]'s symmetric int8 quantization of one activation block
/// (`x.len()` a multiple of 16), bit for bit: the same `max |x|` (max is
/// exact in any order), the same `127 / amax`, each quant
/// `nearest_even(x · 127 / amax)` saturated and clamped to ±127. Returns
/// `amax`.
#[inline]
pub fn quantize_block_i8(x: &[f32], qs: &mut [i8]) -> f32 {
    assert!(x.len() == qs.len() && x.len().is_multiple_of(16));
    let n = x.len();
    let px = x.as_ptr();
    // SAFETY: every load/store covers i..i + 16 <= n elements.
    unsafe {
        let mut m = F32x4::zero();
        let mut i = 0;
        while i < n {
            m = m.max(F32x4::load(px.add(i)).abs());
            i += 4;
        }
        let l = m.lanes();
        // Lanes hold |x| ≥ 0; NaN inputs give garbage either way. A compare,
        // not f32::max: that is a libm call (`fmaxf`) in wasm, 18 per lane.
        let amax = l.iter().fold(0.0f32, |a, &v| if v > a { v } else { a });
        let id = F32x4::splat(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = |j: usize| F32x4::load(px.add(j)).mul(id).round_to_i32().clamp_sym(127);
        let mut i = 0;
        while i < n {
            I32x4::narrow_to_i8(q(i), q(i + 4), q(i + 8), q(i + 12)).store(qs.as_mut_ptr().add(i));
            i += 16;
        }
        amax
    }
}

/// Σ of the quants of one 32-element block (for `block_q8_1.s`).
#[inline]
pub fn sum_i8(qs: &[i8; 32]) -> i32 {
    // SAFETY: qs has 32 elements.
    unsafe { I8x16::load(qs.as_ptr()).sum() + I8x16::load(qs.as_ptr().add(16)).sum() }
}

/// Σ of each group of 16 quants (Q8_K's `bsums`).
#[inline]
pub fn group_sums_16(qs: &[i8], out: &mut [i16]) {
    assert_eq!(qs.len(), out.len() * 16);
    for (o, g) in out.iter_mut().zip(qs.chunks_exact(16)) {
        // SAFETY: g has 16 elements.
        *o = unsafe { I8x16::load(g.as_ptr()) }.sum() as i16;
    }
}

/// `qs` widened to i16 into `qw` (`qs.len()` a multiple of 16).
#[inline]
pub fn widen_i8(qs: &[i8], qw: &mut [i16]) {
    assert!(qs.len() == qw.len() && qs.len().is_multiple_of(16));
    for (q, w) in qs.chunks_exact(16).zip(qw.chunks_exact_mut(16)) {
        // SAFETY: q has 16 readable and w 16 writable elements.
        unsafe {
            let (lo, hi) = I16x8::widen(I8x16::load(q.as_ptr()));
            lo.store(w.as_mut_ptr());
            hi.store(w.as_mut_ptr().add(8));
        }
    }
}

/// Σ over 16 lanes of `w · x` as eight i16 partial sums (two products each;
/// the caller's bounds keep them in range).
#[inline(always)]
fn dot16_i16(w: I8x16, x: I8x16) -> I16x8 {
    I16x8::mul_low(w, x).add(I16x8::mul_high(w, x))
}

/// Repeats `$body` with `$i` bound to each literal: straight-line code, so
/// every load's offset is a constant (LLVM does not reliably unroll these
/// loops itself, and a loop index costs address arithmetic per load).
macro_rules! unroll {
    ($i:ident in [$($v:literal),*] $body:block) => {
        $( { let $i: usize = $v; $body } )*
    };
}

/// Σ over `P` column pairs of four rows interleaved by pairs
/// ([`crate::quant::packed::interleave_pairs`]) times the activation pairs
/// `a` (`a[p]` = columns `2p, 2p + 1` repeated, [`pair_splats`]): lane `r` =
/// row `r`'s sum, exact. Per pair one 8-byte load widened to i16 and one
/// `i32x4.dot_i16x8_s`; the sums land in the rows' lanes, so nothing is
/// reduced horizontally. `U` reads the weights as unsigned bytes.
///
/// Bounds: |w| ≤ 255, |a| ≤ 127, so each dot lane (two products) and every
/// sum the callers form stay far inside i32.
///
/// # Safety
/// `q..q + 8P` must be readable.
#[inline(always)]
unsafe fn dot_pairs<const P: usize, const U: bool>(q: *const u8, a: &[I16x8; P]) -> I32x4 {
    const { assert!(P == 8 || P == 16) };
    let w = |p: usize| {
        if U {
            I16x8::load_u8x8(q.add(8 * p))
        } else {
            I16x8::load_i8x8(q.add(8 * p) as *const i8)
        }
    };
    let d = |p: usize| I32x4::dot(w(p), a[p % P]);
    // Straight-line and chained, so each sum stays on the wasm stack and
    // every load's offset is a constant (see `unroll!`).
    let mut s = d(0);
    unroll!(p in [1, 2, 3, 4, 5, 6, 7] {
        s = s.add(d(p));
    });
    if P == 16 {
        let mut t = d(8);
        unroll!(p in [9, 10, 11, 12, 13, 14, 15] {
            t = t.add(d(p));
        });
        s = s.add(t);
    }
    s
}

/// The activation pairs of `P` column pairs at `a` (i16): element `p` =
/// `[a[2p], a[2p + 1]]` repeated four times (`v128.load32_splat`).
///
/// # Safety
/// `a..a + 2P` must be readable.
#[inline(always)]
unsafe fn pair_splats<const P: usize>(a: *const i16) -> [I16x8; P] {
    std::array::from_fn(|p| I16x8::load_pair_splat(a.add(2 * p)))
}

/// The per-type pieces of an activation-stationary matvec
/// ([`matvec_stationary`]). A trait with `#[inline(always)]` functions, not
/// closures: LLVM outlines a large closure behind `Fn::call`, and the
/// prepared activations are then read back from memory instead of wasm locals.
trait Stationary {
    type Block: crate::quant::packed::PackedBlock;
    type Act;
    /// Column blocks per step: a step folds this many consecutive blocks of
    /// a row group (fewer loop passes and accumulator loads for small blocks).
    const BLOCKS: usize;
    /// `BLOCKS` column blocks' activations, ready for every row group.
    type State;
    fn prepare(x: &[Self::Act]) -> Self::State;
    /// `acc` plus one row group's `BLOCKS` blocks at `w` times the prepared
    /// activations, block after block.
    ///
    /// # Safety
    /// `w..w + BLOCKS` must be valid blocks.
    unsafe fn step(acc: F32x4, w: *const Self::Block, s: &Self::State) -> F32x4;
}

/// `out = W x` for a packed matrix, **activation-stationary**: for each
/// column block `j` the activations are prepared once (`K::prepare`, into
/// wasm locals), then every row group's block `j` is folded into that
/// group's accumulator (`K::step`). Per row the blocks are still taken in
/// column order from an accumulator of 0.0, so every output is bit for bit
/// the oracle's per-row loop; only the loop nest is turned around, which
/// saves an activation load per column pair.
#[inline(always)]
fn matvec_stationary<K: Stationary>(w: &Interleaved<K::Block>, x: &[K::Act], out: &mut [f32]) {
    assert!(x.len() == w.blocks_per_row() && out.len() == w.rows());
    matvec_stationary_view::<K>(w.blocks(), w.blocks_per_row(), x, out)
}

/// [`matvec_stationary`] over the first `out.len()` rows and the first
/// `x.len()` column blocks of a matrix given as its packed blocks, groups
/// of four rows in order, `bpr` blocks per group.
#[inline(always)]
fn matvec_stationary_view<K: Stationary>(blocks: &[K::Block], bpr: usize, x: &[K::Act], out: &mut [f32]) {
    let groups = out.len().div_ceil(4);
    assert!(x.len() <= bpr && x.len().is_multiple_of(K::BLOCKS) && !x.is_empty());
    assert!(blocks.len() >= groups * bpr);
    // The accumulators: `out` itself when it holds whole groups (no copy),
    // else room for the padded last group. Never zeroed: the first column
    // block's pass writes every group, starting each row from 0.0.
    let mut spare: Vec<[f32; 4]> = Vec::new();
    let pa = if out.len() == 4 * groups {
        out.as_mut_ptr()
    } else {
        spare.reserve_exact(groups);
        spare.as_mut_ptr() as *mut f32
    };
    let stride = bpr * std::mem::size_of::<K::Block>();
    for (step, xb) in x.chunks_exact(K::BLOCKS).enumerate() {
        let s = K::prepare(xb);
        // SAFETY: group g's block `step · BLOCKS` is at blocks + g · stride
        // + step · BLOCKS, g < groups; pa has room for 4 · groups f32.
        unsafe {
            let pw = blocks.as_ptr().add(step * K::BLOCKS) as *const u8;
            if step == 0 {
                fold_groups::<K, true>(&s, pw, stride, pa, groups);
            } else {
                fold_groups::<K, false>(&s, pw, stride, pa, groups);
            }
        }
    }
    if out.len() != 4 * groups {
        // SAFETY: the first pass wrote all `groups` accumulators.
        unsafe { spare.set_len(groups) };
        for (o, v) in out.iter_mut().zip(spare.iter().flatten()) {
            *o = *v;
        }
    }
}

/// One column step of [`matvec_stationary`] over every row group: `acc +=
/// K::step(..)` (or `= K::step(0.0, ..)` on the `FIRST` step), two groups
/// per pass with the stride in bytes computed once, so the loop's own
/// arithmetic is about 7 instructions per group.
///
/// # Safety
/// `pw + g · stride` must be valid blocks and `pa..pa + 4 · groups` writable
/// (and readable unless `FIRST`).
#[inline(always)]
unsafe fn fold_groups<K: Stationary, const FIRST: bool>(
    s: &K::State,
    mut pw: *const u8,
    stride: usize,
    mut pa: *mut f32,
    groups: usize,
) {
    let acc = |p: *mut f32| if FIRST { F32x4::zero() } else { F32x4::load(p) };
    let block = |p: *const u8| p as *const K::Block;
    let end = pa.add(4 * groups);
    let end2 = pa.add(4 * (groups / 2 * 2));
    while pa < end2 {
        K::step(acc(pa), block(pw), s).store(pa);
        K::step(acc(pa.add(4)), block(pw.add(stride)), s).store(pa.add(4));
        pw = pw.add(2 * stride);
        pa = pa.add(8);
    }
    if pa < end {
        K::step(acc(pa), block(pw), s).store(pa);
    }
}

/// `out = W x` for a packed Q8_0 matrix (or Q4_0 widened to bytes): each
/// row bit for bit [`super::quant::vec_dot_q8_0_q8_0`] (or
/// `vec_dot_q4_0_q8_0`: the same sum with quants `nibble - 8`). Two blocks
/// per step when the row length allows (0.79 → 0.75 weighted instructions
/// per multiply-add).
pub fn matvec_q8_0<S: 'static>(w: &Interleaved<BlockQ8x4<S>>, x: &[BlockQ8A], out: &mut [f32])
where
    BlockQ8x4<S>: PackedBlock,
{
    if w.blocks_per_row().is_multiple_of(2) {
        matvec_stationary::<Q8_0Kernel<S, 2>>(w, x, out)
    } else {
        matvec_stationary::<Q8_0Kernel<S, 1>>(w, x, out)
    }
}

/// `out = W x` over the first `out.len()` rows and `x.len()` column blocks
/// of a Q8_0 byte-layout matrix given as its blocks, `bpr` per group of four
/// rows: the int8 KV cache's keys (rows are positions) and transposed values
/// (columns are positions), which grow one position at a time. Each row
/// bit for bit `Σ_b (d_w · d_x) · isum_b` in block order from 0.0.
pub fn matvec_q8_0_view(blocks: &[BlockQ8_0x4], bpr: usize, x: &[BlockQ8A], out: &mut [f32]) {
    if x.len().is_multiple_of(2) {
        matvec_stationary_view::<Q8_0Kernel<crate::quant::BlockQ8_0, 2>>(blocks, bpr, x, out)
    } else {
        matvec_stationary_view::<Q8_0Kernel<crate::quant::BlockQ8_0, 1>>(blocks, bpr, x, out)
    }
}

/// The most tokens a pass of [`matmul_q8_0`] takes.
pub const MATMUL_MAX_TOKENS: usize = 8;

/// `outs[t] = W xs[t]` for `T` (≤ [`MATMUL_MAX_TOKENS`]) tokens at once
/// (prompt batches), Q8_0 byte layout (or Q4_0 widened), each output bit for
/// bit [`matvec_q8_0`]'s. Weight-stationary inside a column step: a row
/// group's two blocks are loaded into wasm locals once and dotted with every
/// token's activations (also in locals), so a weight pair costs one
/// `local.get` per token instead of a load and its address: 0.67 weighted
/// instructions per multiply-add for 4 tokens, 0.64 for 8, against 0.75 for
/// one. Per (row, token) the blocks are still folded in column order from
/// 0.0, as in the oracle.
pub fn matmul_q8_0<S: 'static, const T: usize>(
    w: &Interleaved<BlockQ8x4<S>>,
    xs: [&[BlockQ8A]; T],
    outs: [&mut [f32]; T],
) where
    BlockQ8x4<S>: PackedBlock,
{
    const { assert!(T <= MATMUL_MAX_TOKENS) };
    let (groups, bpr) = (w.groups(), w.blocks_per_row());
    if !bpr.is_multiple_of(2) || w.rows() != 4 * groups {
        for (x, out) in xs.into_iter().zip(outs) {
            matvec_q8_0(w, x, out);
        }
        return;
    }
    assert!(xs.iter().all(|x| x.len() == bpr) && outs.iter().all(|o| o.len() == w.rows()));
    let pa: [*mut f32; T] = outs.map(|o| o.as_mut_ptr());
    let stride = bpr * std::mem::size_of::<BlockQ8x4<S>>();
    for j in (0..bpr).step_by(2) {
        // SAFETY: qw has 32 elements; block j + 1 < bpr.
        let acts: [[[I16x8; 16]; 2]; T] =
            std::array::from_fn(|t| std::array::from_fn(|i| unsafe { pair_splats::<16>(xs[t][j + i].qw.as_ptr()) }));
        let xd: [[F32x4; 2]; T] = std::array::from_fn(|t| [0, 1].map(|i| F32x4::splat(xs[t][j + i].d)));
        // SAFETY: group g's blocks j, j + 1 are at blocks + g · stride + j;
        // each output has 4 · groups rows.
        unsafe {
            let pw = w.blocks().as_ptr().add(j) as *const u8;
            if j == 0 {
                fold_tokens::<S, T, true>(pw, stride, groups, &acts, &xd, pa);
            } else {
                fold_tokens::<S, T, false>(pw, stride, groups, &acts, &xd, pa);
            }
        }
    }
}

/// One column step (two blocks) of [`matmul_q8_0`] over every row group.
///
/// # Safety
/// As in [`matmul_q8_0`].
#[inline(always)]
unsafe fn fold_tokens<S: 'static, const T: usize, const FIRST: bool>(
    mut pw: *const u8,
    stride: usize,
    groups: usize,
    acts: &[[[I16x8; 16]; 2]; T],
    xd: &[[F32x4; 2]; T],
    pa: [*mut f32; T],
) {
    for g in 0..groups {
        let b = pw as *const BlockQ8x4<S>;
        let q = |i: usize| (*b.add(i)).qs.as_ptr();
        let wv: [[I16x8; 16]; 2] = [0, 1].map(|i| std::array::from_fn(|p| I16x8::load_i8x8(q(i).add(8 * p))));
        let dw = [0, 1].map(|i| F32x4::load((*b.add(i)).d.as_ptr()));
        // Straight-line (a loop over tokens would index the activations in
        // memory instead of wasm locals); `t < T` folds away.
        unroll!(t in [0, 1, 2, 3, 4, 5, 6, 7] {
            if t < T {
                let po = pa[t].add(4 * g);
                let mut acc = if FIRST { F32x4::zero() } else { F32x4::load(po) };
                unroll!(i in [0, 1] {
                    let isum = dot_loaded(&wv[i], &acts[t][i]);
                    acc = acc.add(dw[i].mul(xd[t][i]).mul(isum.to_f32()));
                });
                acc.store(po);
            }
        });
        pw = pw.add(stride);
    }
}

/// [`dot_pairs`] of weights already in registers (wasm locals).
#[inline(always)]
fn dot_loaded(w: &[I16x8; 16], a: &[I16x8; 16]) -> I32x4 {
    let d = |p: usize| I32x4::dot(w[p], a[p]);
    let mut s = d(0);
    unroll!(p in [1, 2, 3, 4, 5, 6, 7] {
        s = s.add(d(p));
    });
    let mut t = d(8);
    unroll!(p in [9, 10, 11, 12, 13, 14, 15] {
        t = t.add(d(p));
    });
    s.add(t)
}

struct Q8_0Kernel<S, const N: usize>(std::marker::PhantomData<S>);
impl<S: 'static, const N: usize> Stationary for Q8_0Kernel<S, N>
where
    BlockQ8x4<S>: PackedBlock,
{
    type Block = BlockQ8x4<S>;
    type Act = BlockQ8A;
    const BLOCKS: usize = N;
    type State = [([I16x8; 16], F32x4); N];
    #[inline(always)]
    fn prepare(x: &[BlockQ8A]) -> Self::State {
        // SAFETY: qw has 32 elements.
        std::array::from_fn(|i| (unsafe { pair_splats::<16>(x[i].qw.as_ptr()) }, F32x4::splat(x[i].d)))
    }
    #[inline(always)]
    unsafe fn step(mut acc: F32x4, w: *const BlockQ8x4<S>, s: &Self::State) -> F32x4 {
        for (i, (a, xd)) in s.iter().enumerate() {
            let wb = &*w.add(i);
            let isum = dot_pairs::<16, false>(wb.qs.as_ptr() as *const u8, a);
            let dd = F32x4::load(wb.d.as_ptr()).mul(*xd);
            acc = acc.add(dd.mul(isum.to_f32()));
        }
        acc
    }
}

/// `out = W x` for a Q4_1 or Q5_1 matrix in the byte layout
/// ([`BlockQ8Minx4`]): each row bit for bit
/// [`super::quant::vec_dot_q4_1_q8_1`] (or `_q5_1_`). As [`matvec_q8_0`],
/// with the quants read as unsigned bytes and the offset's term `m_w ·
/// (d_x · xsum)` added to each block's, the activations' sum `xsum` taken
/// once per column block.
pub fn matvec_q8_min<S: 'static>(w: &Interleaved<BlockQ8Minx4<S>>, x: &[BlockQ8A], out: &mut [f32])
where
    BlockQ8Minx4<S>: PackedBlock,
{
    if w.blocks_per_row().is_multiple_of(2) {
        matvec_stationary::<Q8MinKernel<S, 2>>(w, x, out)
    } else {
        matvec_stationary::<Q8MinKernel<S, 1>>(w, x, out)
    }
}

struct Q8MinKernel<S, const N: usize>(std::marker::PhantomData<S>);
impl<S: 'static, const N: usize> Stationary for Q8MinKernel<S, N>
where
    BlockQ8Minx4<S>: PackedBlock,
{
    type Block = BlockQ8Minx4<S>;
    type Act = BlockQ8A;
    const BLOCKS: usize = N;
    /// Per block: the activation pairs, `d_x` and `s_x` (`block_q8_1.s`), splatted.
    type State = [([I16x8; 16], F32x4, F32x4); N];
    #[inline(always)]
    fn prepare(x: &[BlockQ8A]) -> Self::State {
        std::array::from_fn(|i| {
            // SAFETY: qw has 32 elements.
            let pairs = unsafe { pair_splats::<16>(x[i].qw.as_ptr()) };
            (pairs, F32x4::splat(x[i].d), F32x4::splat(x[i].s))
        })
    }
    #[inline(always)]
    unsafe fn step(mut acc: F32x4, w: *const BlockQ8Minx4<S>, s: &Self::State) -> F32x4 {
        for (i, (a, xd, xs)) in s.iter().enumerate() {
            let wb = &*w.add(i);
            let isum = dot_pairs::<16, true>(wb.qs.as_ptr(), a);
            let scaled = F32x4::load(wb.d.as_ptr()).mul(*xd).mul(isum.to_f32());
            let offset = F32x4::load(wb.m.as_ptr()).mul(*xs);
            acc = acc.add(scaled.add(offset));
        }
        acc
    }
}

/// `out = W x` for a Q4_K or Q5_K matrix in the byte layout
/// ([`BlockKWidex4`]) against Q8_K activations: each row bit for bit
/// [`super::quant::vec_dot_q4_k_q8_k`] (or `_q5_k_`).
///
/// Per sub-block of 32 the exact sum `Σ q·x` (q ≤ 31: ≤ 125,984) times the
/// sub-block scale (≤ 63) with `i32x4.mul`; the mins times the per-32
/// activation sums (≤ 4,064) by `i32x4.dot_i16x8_s` over sub-block pairs.
pub fn matvec_k_wide<S: 'static>(w: &Interleaved<BlockKWidex4<S>>, x: &[BlockQ8K], out: &mut [f32])
where
    BlockKWidex4<S>: crate::quant::packed::PackedBlock,
{
    matvec_stationary::<KWideKernel<S>>(w, x, out)
}

/// `outs[t] = W xs[t]` for `T` (≤ [`MATMUL_MAX_TOKENS`]) tokens at once, a
/// Q4_K or Q5_K matrix in the byte layout, each output bit for bit
/// [`matvec_k_wide`]'s: weight-stationary as [`matmul_q8_0`], one
/// sub-block's 16 column pairs in wasm locals at a time, dotted with every
/// token's activations; each token's integer sums (any order: exact) then
/// take the oracle's one f32 step per super-block.
pub fn matmul_k_wide<S: 'static, const T: usize>(
    w: &Interleaved<BlockKWidex4<S>>,
    xs: [&[BlockQ8K]; T],
    outs: [&mut [f32]; T],
) where
    BlockKWidex4<S>: PackedBlock,
{
    const { assert!(T <= MATMUL_MAX_TOKENS) };
    let (groups, bpr) = (w.groups(), w.blocks_per_row());
    if w.rows() != 4 * groups {
        for (x, out) in xs.into_iter().zip(outs) {
            matvec_k_wide(w, x, out);
        }
        return;
    }
    assert!(xs.iter().all(|x| x.len() == bpr) && outs.iter().all(|o| o.len() == w.rows()));
    let pa: [*mut f32; T] = outs.map(|o| o.as_mut_ptr());
    let stride = bpr * std::mem::size_of::<BlockKWidex4<S>>();
    #[allow(clippy::needless_range_loop)] // j also addresses the weight blocks
    for j in 0..bpr {
        // SAFETY: qw has 256 and bsums32 8 elements.
        let acts: [[[I16x8; 16]; 8]; T] = std::array::from_fn(|t| {
            std::array::from_fn(|sub| unsafe { pair_splats::<16>(xs[t][j].qw.as_ptr().add(32 * sub)) })
        });
        let bsums: [[I16x8; 4]; T] = std::array::from_fn(|t| unsafe { pair_splats::<4>(xs[t][j].bsums32.as_ptr()) });
        let xd: [F32x4; T] = std::array::from_fn(|t| F32x4::splat(xs[t][j].d));
        // SAFETY: group g's block j is at blocks + g · stride + j; each
        // output has 4 · groups rows.
        unsafe {
            let pw = w.blocks().as_ptr().add(j) as *const u8;
            if j == 0 {
                fold_tokens_k::<S, T, true>(pw, stride, groups, &acts, &bsums, &xd, pa);
            } else {
                fold_tokens_k::<S, T, false>(pw, stride, groups, &acts, &bsums, &xd, pa);
            }
        }
    }
}

/// One super-block column of [`matmul_k_wide`] over every row group.
///
/// # Safety
/// As in [`matmul_k_wide`].
#[inline(always)]
unsafe fn fold_tokens_k<S: 'static, const T: usize, const FIRST: bool>(
    mut pw: *const u8,
    stride: usize,
    groups: usize,
    acts: &[[[I16x8; 16]; 8]; T],
    bsums: &[[I16x8; 4]; T],
    xd: &[F32x4; T],
    pa: [*mut f32; T],
) {
    for g in 0..groups {
        let wb = &*(pw as *const BlockKWidex4<S>);
        let q = wb.qs.as_ptr();
        let mut isc = [I32x4::zero(); T];
        // Straight-line over sub-blocks and tokens, so weights and
        // activations stay in wasm locals; `t < T` folds away.
        unroll!(sub in [0, 1, 2, 3, 4, 5, 6, 7] {
            let wv: [I16x8; 16] = std::array::from_fn(|p| I16x8::load_u8x8(q.add(128 * sub + 8 * p)));
            let sc = I32x4::load_i16x4(wb.scales[sub].as_ptr());
            unroll!(t in [0, 1, 2, 3, 4, 5, 6, 7] {
                if t < T {
                    isc[t] = isc[t].add(dot_loaded(&wv, &acts[t][sub]).mul(sc));
                }
            });
        });
        let mins: [I16x8; 4] = std::array::from_fn(|k| I16x8::load(wb.min_pairs[k].as_ptr()));
        let (d, dmin) = (F32x4::load(wb.d.as_ptr()), F32x4::load(wb.dmin.as_ptr()));
        unroll!(t in [0, 1, 2, 3, 4, 5, 6, 7] {
            if t < T {
                let b = &bsums[t];
                let imin = I32x4::dot(mins[0], b[0])
                    .add(I32x4::dot(mins[1], b[1]))
                    .add(I32x4::dot(mins[2], b[2]))
                    .add(I32x4::dot(mins[3], b[3]));
                let po = pa[t].add(4 * g);
                let acc = if FIRST { F32x4::zero() } else { F32x4::load(po) };
                let (dd, dm) = (d.mul(xd[t]), dmin.mul(xd[t]));
                acc.add(dd.mul(isc[t].to_f32()).sub(dm.mul(imin.to_f32()))).store(po);
            }
        });
        pw = pw.add(stride);
    }
}

struct KWideKernel<S>(std::marker::PhantomData<S>);
impl<S: 'static> Stationary for KWideKernel<S>
where
    BlockKWidex4<S>: crate::quant::packed::PackedBlock,
{
    type Block = BlockKWidex4<S>;
    type Act = BlockQ8K;
    const BLOCKS: usize = 1;
    type State = ([[I16x8; 16]; 8], [I16x8; 4], F32x4);
    #[inline(always)]
    fn prepare(x: &[BlockQ8K]) -> Self::State {
        let xb = &x[0];
        // SAFETY: qw has 256 and bsums32 8 elements.
        unsafe {
            let a = xb.qw.as_ptr();
            let subs = std::array::from_fn(|j| pair_splats::<16>(a.add(32 * j)));
            (subs, pair_splats::<4>(xb.bsums32.as_ptr()), F32x4::splat(xb.d))
        }
    }
    #[inline(always)]
    unsafe fn step(acc: F32x4, w: *const BlockKWidex4<S>, (subs, bsums, xd): &Self::State) -> F32x4 {
        let wb = &*w;
        // Every load below stays inside the block's arrays.
        let q = wb.qs.as_ptr();
        let sub =
            |j: usize| dot_pairs::<16, true>(q.add(128 * j), &subs[j]).mul(I32x4::load_i16x4(wb.scales[j].as_ptr()));
        let mut isc = sub(0);
        unroll!(j in [1, 2, 3, 4, 5, 6, 7] {
            isc = isc.add(sub(j));
        });
        let min = |k: usize| I32x4::dot(I16x8::load(wb.min_pairs[k].as_ptr()), bsums[k]);
        let imin = min(0).add(min(1)).add(min(2)).add(min(3));
        let dd = F32x4::load(wb.d.as_ptr()).mul(*xd);
        let dm = F32x4::load(wb.dmin.as_ptr()).mul(*xd);
        acc.add(dd.mul(isc.to_f32()).sub(dm.mul(imin.to_f32())))
    }
}

/// `out = W x` for a packed Q6_K or Q3_K matrix against Q8_K activations:
/// each row bit for bit [`super::quant::vec_dot_q6_k_q8_k`] (or
/// [`super::quant::vec_dot_q3_k_q8_k`], the same sums).
///
/// Quants are stored as `q - 32` bytes interleaved by column pairs; each
/// 16-column group's exact sum (|·| ≤ 16 · 32 · 127) is scaled by the
/// group's four row scales with `i32x4.mul`.
pub fn matvec_k16<S>(w: &Interleaved<BlockK16x4<S>>, x: &[BlockQ8K], out: &mut [f32])
where
    BlockK16x4<S>: PackedBlock,
{
    matvec_stationary::<K16Kernel<S>>(w, x, out)
}

struct K16Kernel<S>(std::marker::PhantomData<S>);
impl<S> Stationary for K16Kernel<S>
where
    BlockK16x4<S>: PackedBlock,
{
    type Block = BlockK16x4<S>;
    type Act = BlockQ8K;
    const BLOCKS: usize = 1;
    type State = ([[I16x8; 8]; 16], F32x4);
    #[inline(always)]
    fn prepare(x: &[BlockQ8K]) -> Self::State {
        (k16_groups(&x[0]), F32x4::splat(x[0].d))
    }
    #[inline(always)]
    unsafe fn step(acc: F32x4, w: *const BlockK16x4<S>, (groups, xd): &Self::State) -> F32x4 {
        let wb = &*w;
        let dd = F32x4::load(wb.d.as_ptr()).mul(*xd);
        acc.add(dd.mul(k16_scaled_sums(wb, groups).to_f32()))
    }
}

/// The 16 activation groups of a Q8_K block as column pairs ([`pair_splats`]).
#[inline(always)]
fn k16_groups(xb: &BlockQ8K) -> [[I16x8; 8]; 16] {
    // SAFETY: qw has 256 elements.
    unsafe {
        let a = xb.qw.as_ptr();
        std::array::from_fn(|g| pair_splats::<8>(a.add(16 * g)))
    }
}

/// `Σ_g scale_g · Σ q·x` over a [`BlockK16x4`]'s 16 groups, each row's in
/// its lane (exact in i32).
#[inline(always)]
fn k16_scaled_sums<S>(wb: &BlockK16x4<S>, groups: &[[I16x8; 8]; 16]) -> I32x4 {
    // SAFETY: every load below stays inside the block's arrays.
    unsafe {
        let q = wb.qs.as_ptr() as *const u8;
        let group =
            |g: usize| dot_pairs::<8, false>(q.add(64 * g), &groups[g]).mul(I32x4::load_i16x4(wb.scales[g].as_ptr()));
        let mut isc = group(0);
        unroll!(g in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            isc = isc.add(group(g));
        });
        isc
    }
}

/// `Σ q·x` over a [`BlockK16x4`]'s 16 groups whose quants already carry
/// their group's scale ([`BlockQ2Kx4`]), each row's in its lane (exact in
/// i32: |·| ≤ 256 · 45 · 127).
#[inline(always)]
fn k16_prescaled_sums<S>(wb: &BlockK16x4<S>, groups: &[[I16x8; 8]; 16]) -> I32x4 {
    // SAFETY: every load below stays inside the block's quants.
    unsafe {
        let q = wb.qs.as_ptr() as *const u8;
        let group = |g: usize| dot_pairs::<8, false>(q.add(64 * g), &groups[g]);
        let mut isc = group(0);
        unroll!(g in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            isc = isc.add(group(g));
        });
        isc
    }
}

/// `out = W x` for a packed Q2_K matrix against Q8_K activations: each row
/// bit for bit [`super::quant::vec_dot_q2_k_q8_k`]. Q6_K's group sums over
/// quants stored times their scales ([`k16_prescaled_sums`]: no per-group
/// multiply), and the mins times the per-16 activation sums by
/// `i32x4.dot_i16x8_s` over group pairs.
pub fn matvec_q2_k(w: &Interleaved<BlockQ2Kx4>, x: &[BlockQ8K], out: &mut [f32]) {
    matvec_stationary::<Q2KKernel>(w, x, out)
}

struct Q2KKernel;
impl Stationary for Q2KKernel {
    type Block = BlockQ2Kx4;
    type Act = BlockQ8K;
    const BLOCKS: usize = 1;
    /// The groups' column pairs, the group sums by pairs, `d_x`.
    type State = ([[I16x8; 8]; 16], [I16x8; 8], F32x4);
    #[inline(always)]
    fn prepare(x: &[BlockQ8K]) -> Self::State {
        let xb = &x[0];
        // SAFETY: bsums has 16 elements.
        let bsums = unsafe { pair_splats::<8>(xb.bsums.as_ptr()) };
        (k16_groups(xb), bsums, F32x4::splat(xb.d))
    }
    #[inline(always)]
    unsafe fn step(acc: F32x4, w: *const BlockQ2Kx4, (groups, bsums, xd): &Self::State) -> F32x4 {
        let wb = &*w;
        let isc = k16_prescaled_sums(&wb.k16, groups);
        let min = |k: usize| I32x4::dot(I16x8::load(wb.min_pairs[k].as_ptr()), bsums[k]);
        let mut imin = min(0);
        unroll!(k in [1, 2, 3, 4, 5, 6, 7] {
            imin = imin.add(min(k));
        });
        let dd = F32x4::load(wb.k16.d.as_ptr()).mul(*xd);
        let dm = F32x4::load(wb.dmin.as_ptr()).mul(*xd);
        acc.add(dd.mul(isc.to_f32()).sub(dm.mul(imin.to_f32())))
    }
}

/// Rows `4g..4g + 4` of a packed Q4_K matrix against Q8_K activations: each
/// lane bit for bit [`super::quant::vec_dot_q4_k_q8_k`] of that row.
///
/// The activations are offset to unsigned bytes (`x + 128`, one xor per
/// vector for all four rows) so nibble × activation is one unsigned
/// `extmul` (with a signed operand LLVM rewrites it into widen-then-multiply,
/// three instructions); the offset's share, `128 · Σ_j sc_j · Σ q`, is
/// precomputed per row at load ([`BlockQ4Kx4::qcorr`]) and subtracted
/// exactly in integers.
///
/// Bounds: products ≤ 15 · 255, four to an i16 lane (≤ 15,300); scales ≤ 63
/// applied by `i32x4.dot_i16x8_s`; per-32 activation sums for the mins ≤
/// 4,064 (i16).
#[inline]
pub fn dot4_q4_k(w: &[BlockQ4Kx4], x: &[BlockQ8K]) -> [f32; 4] {
    dot4_k_with_mins(w, x, |wb| (&wb.d, &wb.dmin, &wb.qcorr), q4_k_row)
}

/// The super-block loop Q4_K and Q5_K share: activations offset to unsigned
/// bytes once for the four rows, `row` gives each row's `(Σ sc·Σ q·(x + 128),
/// Σ m·Σ x)` partial sums, then the oracle's f32 step with the offset's
/// share (`qcorr`) removed. `head` gives a block's `(d, dmin, qcorr)`.
#[inline(always)]
fn dot4_k_with_mins<B>(
    w: &[B],
    x: &[BlockQ8K],
    head: impl Fn(&B) -> (&[f32; 4], &[f32; 4], &[i32; 4]),
    row: unsafe fn(&B, usize, &[I8x16; 16], I16x8) -> (I32x4, I32x4),
) -> [f32; 4] {
    assert_eq!(w.len(), x.len());
    let mut acc = F32x4::zero();
    let (mut pw, mut px) = (w.as_ptr(), x.as_ptr());
    // SAFETY: pw < end and x has as many blocks as w; every load reads
    // inside one block's arrays (16 bytes of qs, 8 i16 of scales/mins/bsums).
    unsafe {
        let end = pw.add(w.len());
        while pw < end {
            let (wb, xb) = (&*pw, &*px);
            let xq = xb.qs.as_ptr();
            let xu: [I8x16; 16] = std::array::from_fn(|i| I8x16::load(xq.add(16 * i)).offset_to_u8());
            let bsum32 = I16x8::sum_pairs_narrow(I16x8::load(xb.bsums.as_ptr()), I16x8::load(xb.bsums.as_ptr().add(8)));
            let row = |r: usize| row(wb, r, &xu, bsum32);
            let (d, dmin, qcorr) = head(wb);
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let isc = I32x4::sum4(r0.0, r1.0, r2.0, r3.0)
                .sub(I32x4::load(qcorr.as_ptr()))
                .to_f32();
            let imin = I32x4::sum4(r0.1, r1.1, r2.1, r3.1).to_f32();
            let xd = F32x4::splat(xb.d);
            let dd = F32x4::load(d.as_ptr()).mul(xd);
            let dm = F32x4::load(dmin.as_ptr()).mul(xd);
            acc = acc.add(dd.mul(isc).sub(dm.mul(imin)));
            pw = pw.add(1);
            px = px.add(1);
        }
    }
    acc.lanes()
}

/// Rows `4g..4g + 4` of a packed Q4_0 matrix against Q8 activations: each
/// lane bit for bit [`super::quant::vec_dot_q4_0_q8_0`] of that row.
/// Quants `nibble - 8` are signed bytes in -8..=7 (products ≤ 8 · 127, four
/// to an i16 lane).
#[inline]
pub fn dot4_q4_0(w: &[BlockQ4_0x4], x: &[BlockQ8A]) -> [f32; 4] {
    assert_eq!(w.len(), x.len());
    let mut acc = F32x4::zero();
    let (mut pw, mut px) = (w.as_ptr(), x.as_ptr());
    let eight = I8x16::splat(8);
    // SAFETY: pw < end and x has as many blocks as w.
    unsafe {
        let end = pw.add(w.len());
        while pw < end {
            let (wb, xb) = (&*pw, &*px);
            let (x0, x1) = (I8x16::load(xb.qs.as_ptr()), I8x16::load(xb.qs.as_ptr().add(16)));
            let row = |r: usize| {
                let q = I8x16::load(wb.qs[r].as_ptr() as *const i8);
                let s = dot16_i16(q.low_nibbles().sub(eight), x0).add(dot16_i16(q.high_nibbles().sub(eight), x1));
                I32x4::sum_pairs(s)
            };
            let isum = I32x4::sum4(row(0), row(1), row(2), row(3));
            let dd = F32x4::load(wb.d.as_ptr()).mul(F32x4::splat(xb.d));
            acc = acc.add(dd.mul(isum.to_f32()));
            pw = pw.add(1);
            px = px.add(1);
        }
    }
    acc.lanes()
}

/// `Σ q · x` over one 32-element block: quants `lo` (elements 0..16) and
/// `hi` (16..32) against the activation block (|q| ≤ 127: two products per
/// i16 lane, ≤ 32,258, widened to i32 before the halves meet).
#[inline(always)]
fn block_isum(lo: I8x16, hi: I8x16, x: &BlockQ8A) -> i32 {
    // SAFETY: qs has 32 elements.
    let (x0, x1) = unsafe { (I8x16::load(x.qs.as_ptr()), I8x16::load(x.qs.as_ptr().add(16))) };
    I32x4::sum_pairs(dot16_i16(lo, x0))
        .add(I32x4::sum_pairs(dot16_i16(hi, x1)))
        .sum()
}

/// A block's 16 quant bytes as their low nibbles (elements 0..16) and high
/// nibbles (16..32), as ggml packs the 32-element types.
#[inline(always)]
fn nibble_halves(qs: &[u8; 16]) -> (I8x16, I8x16) {
    // SAFETY: qs has 16 elements.
    let q = unsafe { I8x16::load(qs.as_ptr() as *const i8) };
    (q.low_nibbles(), q.high_nibbles())
}

/// The fifth bits of a Q5 block (`qh`, bit `j` for element `j`) as 16s,
/// for elements 0..16 and 16..32.
#[inline(always)]
fn fifth_bits(qh: &[u8; 4]) -> (I8x16, I8x16) {
    let h = u32::from_le_bytes(*qh);
    (I8x16::bits_to_16(h as u16), I8x16::bits_to_16((h >> 16) as u16))
}

/// A 32-element block type as the file has it, for the four-row kernel
/// [`dot4_file_blocks`]: its quants as two halves of signed bytes and its
/// f16 scale (and offset) bits.
pub trait FileQuants: Copy {
    /// Whether blocks carry an offset `m` (`x = q · d + m`: Q4_1, Q5_1).
    const OFFSET: bool;
    /// Elements 0..16 and 16..32 as signed bytes (`levels`: the IQ4_NL table).
    fn halves(&self, levels: I8x16) -> (I8x16, I8x16);
    /// The f16 bits of the scale `d` and the offset `m` (0 without one).
    fn scale_bits(&self) -> (u16, u16);
}

impl FileQuants for BlockQ5_0 {
    const OFFSET: bool = false;
    #[inline(always)]
    fn halves(&self, _: I8x16) -> (I8x16, I8x16) {
        let ((lo, hi), (blo, bhi)) = (nibble_halves(&self.qs), fifth_bits(&self.qh));
        let sixteen = I8x16::splat(16);
        (lo.or(blo).sub(sixteen), hi.or(bhi).sub(sixteen))
    }
    #[inline(always)]
    fn scale_bits(&self) -> (u16, u16) {
        (self.d.to_bits(), 0)
    }
}

impl FileQuants for BlockQ5_1 {
    const OFFSET: bool = true;
    #[inline(always)]
    fn halves(&self, _: I8x16) -> (I8x16, I8x16) {
        let ((lo, hi), (blo, bhi)) = (nibble_halves(&self.qs), fifth_bits(&self.qh));
        (lo.or(blo), hi.or(bhi))
    }
    #[inline(always)]
    fn scale_bits(&self) -> (u16, u16) {
        (self.d.to_bits(), self.m.to_bits())
    }
}

impl FileQuants for BlockQ4_1 {
    const OFFSET: bool = true;
    #[inline(always)]
    fn halves(&self, _: I8x16) -> (I8x16, I8x16) {
        nibble_halves(&self.qs)
    }
    #[inline(always)]
    fn scale_bits(&self) -> (u16, u16) {
        (self.d.to_bits(), self.m.to_bits())
    }
}

impl FileQuants for BlockIQ4NL {
    const OFFSET: bool = false;
    #[inline(always)]
    fn halves(&self, levels: I8x16) -> (I8x16, I8x16) {
        let (lo, hi) = nibble_halves(&self.qs);
        (levels.lookup(lo), levels.lookup(hi))
    }
    #[inline(always)]
    fn scale_bits(&self) -> (u16, u16) {
        (self.d.to_bits(), 0)
    }
}

/// One row of file blocks against Q8 activations, bit for bit the type's
/// scalar oracle (see [`dot4_file_blocks`]).
pub fn dot_file_blocks<B: FileQuants>(w: &[B], x: &[BlockQ8A]) -> f32 {
    assert_eq!(w.len(), x.len());
    // SAFETY: the table has 16 levels.
    let levels = unsafe { I8x16::load(KVALUES_IQ4NL.as_ptr()) };
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let (lo, hi) = wb.halves(levels);
        let (d, m) = wb.scale_bits();
        let scaled = (f16_bits_to_f32(d) * xb.d) * block_isum(lo, hi, xb) as f32;
        acc += if B::OFFSET {
            scaled + f16_bits_to_f32(m) * xb.s
        } else {
            scaled
        };
    }
    acc
}

/// Four rows of file blocks against Q8 activations: lane `r` bit for bit
/// the row's scalar oracle (`acc += (d · d_x) · isum [+ m · s_x]` per block,
/// in order). The activation halves are loaded once for the four rows, the
/// rows' integer sums reduced together ([`I32x4::sum4`]), and the f16
/// scales converted without branches ([`f16_bits_to_f32`]).
pub fn dot4_file_blocks<B: FileQuants>(rows: [&[B]; 4], x: &[BlockQ8A]) -> [f32; 4] {
    assert!(rows.iter().all(|r| r.len() == x.len()));
    // SAFETY: the table has 16 levels.
    let levels = unsafe { I8x16::load(KVALUES_IQ4NL.as_ptr()) };
    let f32x4 = |v: [f32; 4]| unsafe { F32x4::load(v.as_ptr()) };
    let mut acc = F32x4::zero();
    for (j, xb) in x.iter().enumerate() {
        // SAFETY: qs has 32 elements.
        let (x0, x1) = unsafe { (I8x16::load(xb.qs.as_ptr()), I8x16::load(xb.qs.as_ptr().add(16))) };
        let blocks = rows.map(|r| &r[j]);
        let isum = |b: &B| {
            let (lo, hi) = b.halves(levels);
            I32x4::sum_pairs(dot16_i16(lo, x0)).add(I32x4::sum_pairs(dot16_i16(hi, x1)))
        };
        let isums = I32x4::sum4(isum(blocks[0]), isum(blocks[1]), isum(blocks[2]), isum(blocks[3]));
        let bits = blocks.map(|b| b.scale_bits());
        let d = f32x4(bits.map(|(d, _)| f16_bits_to_f32(d)));
        let scaled = d.mul(F32x4::splat(xb.d)).mul(isums.to_f32());
        acc = if B::OFFSET {
            let m = f32x4(bits.map(|(_, m)| f16_bits_to_f32(m)));
            acc.add(scaled.add(m.mul(F32x4::splat(xb.s))))
        } else {
            acc.add(scaled)
        };
    }
    acc.lanes()
}

/// Rows `4g..4g + 4` of a packed Q5_K matrix against Q8_K activations: each
/// lane bit for bit [`super::quant::vec_dot_q5_k_q8_k`] of that row; as
/// [`dot4_q4_k`] with the fifth bit or-ed into each nibble (products
/// ≤ 31 · 255, four to an i16 lane: ≤ 31,620).
#[inline]
pub fn dot4_q5_k(w: &[BlockQ5Kx4], x: &[BlockQ8K]) -> [f32; 4] {
    dot4_k_with_mins(w, x, |wb| (&wb.d, &wb.dmin, &wb.qcorr), q5_k_row)
}

/// Row `r` of a packed Q5_K block (see [`dot4_q5_k`] and [`q4_k_row`]).
#[inline(always)]
unsafe fn q5_k_row(wb: &BlockQ5Kx4, r: usize, xu: &[I8x16; 16], bsum32: I16x8) -> (I32x4, I32x4) {
    let (q, sc) = (wb.qs[r].as_ptr() as *const i8, wb.scales[r].as_ptr());
    let (h0, h1) = (
        I8x16::load(wb.qh[r].as_ptr() as *const i8),
        I8x16::load(wb.qh[r].as_ptr().add(16) as *const i8),
    );
    let dot16_u = |w: I8x16, x: I8x16| I16x8::mul_low_u(w, x).add(I16x8::mul_high_u(w, x));
    let mut isc = I32x4::zero();
    unroll!(c in [0, 1, 2, 3] {
        let (q0, q1) = (I8x16::load(q.add(32 * c)), I8x16::load(q.add(32 * c + 16)));
        // Bit `b` of each qh byte moved to bit 4 (value 16).
        let (b_lo, b_hi) = (2 * c as u32, 2 * c as u32 + 1);
        let lo = dot16_u(q0.low_nibbles().or(h0.bit_to_16(b_lo)), xu[4 * c])
            .add(dot16_u(q1.low_nibbles().or(h1.bit_to_16(b_lo)), xu[4 * c + 1]));
        let hi = dot16_u(q0.high_nibbles().or(h0.bit_to_16(b_hi)), xu[4 * c + 2])
            .add(dot16_u(q1.high_nibbles().or(h1.bit_to_16(b_hi)), xu[4 * c + 3]));
        isc = isc.add(I32x4::dot(lo, I16x8::splat_load(sc.add(2 * c))));
        isc = isc.add(I32x4::dot(hi, I16x8::splat_load(sc.add(2 * c + 1))));
    });
    (isc, I32x4::dot(I16x8::load(wb.mins[r].as_ptr()), bsum32))
}

/// Row `r` of a packed Q4_K block against one Q8_K block's activations
/// offset to unsigned bytes: `(Σ_j sc_j · Σ q·(x + 128), imin)` as four i32
/// partial sums each (see [`dot4_q4_k`]).
#[inline(always)]
unsafe fn q4_k_row(wb: &BlockQ4Kx4, r: usize, xu: &[I8x16; 16], bsum32: I16x8) -> (I32x4, I32x4) {
    let (q, sc) = (wb.qs[r].as_ptr() as *const i8, wb.scales[r].as_ptr());
    let dot16_u = |w: I8x16, x: I8x16| I16x8::mul_low_u(w, x).add(I16x8::mul_high_u(w, x));
    let mut isc = I32x4::zero();
    unroll!(c in [0, 1, 2, 3] {
        let (q0, q1) = (I8x16::load(q.add(32 * c)), I8x16::load(q.add(32 * c + 16)));
        let lo = dot16_u(q0.low_nibbles(), xu[4 * c]).add(dot16_u(q1.low_nibbles(), xu[4 * c + 1]));
        let hi = dot16_u(q0.high_nibbles(), xu[4 * c + 2]).add(dot16_u(q1.high_nibbles(), xu[4 * c + 3]));
        isc = isc.add(I32x4::dot(lo, I16x8::splat_load(sc.add(2 * c))));
        isc = isc.add(I32x4::dot(hi, I16x8::splat_load(sc.add(2 * c + 1))));
    });
    (isc, I32x4::dot(I16x8::load(wb.mins[r].as_ptr()), bsum32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::acts::{quantize_act_q8, quantize_act_q8k};
    use crate::kernels::pseudo;
    use crate::kernels::quant::vec_dot_q8_0_q8_0;
    use crate::quant::packed::{BlockQ8_0x4, Interleaved, PackedBlock};
    use crate::quant::{blocks_to_le_bytes, BlockQ8_0};
    use half::f16;

    /// Random Q8_0 rows plus edge cases: all-zero blocks, -128 quants,
    /// extreme and subnormal scales.
    fn q8_0_rows(rows: usize, cols: usize, seed: u32) -> Vec<BlockQ8_0> {
        let mut blocks = crate::quant::quantize_row_q8_0(&pseudo(rows * cols, seed));
        let mut s = seed;
        for (i, b) in blocks.iter_mut().enumerate() {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            match i % 7 {
                0 => b.qs = [-128; 32],
                1 => {
                    *b = BlockQ8_0 {
                        d: f16::ZERO,
                        qs: [0; 32],
                    }
                }
                2 => b.d = f16::from_bits(0x7BFF), // max finite
                3 => b.d = f16::from_bits(0x0001), // smallest subnormal
                4 => b.qs = std::array::from_fn(|k| (s >> (k % 24)) as i8),
                _ => {}
            }
        }
        blocks
    }

    #[test]
    fn matvec_q8_0_is_the_oracle_bit_for_bit() {
        for (rows, cols) in [(4, 32), (8, 96), (12, 288), (5, 64), (7, 256)] {
            let blocks = q8_0_rows(rows, cols, rows as u32 * 7 + cols as u32);
            let packed = Interleaved::<BlockQ8_0x4>::from_le_bytes(&blocks_to_le_bytes(&blocks), rows, cols).unwrap();
            let mut x = pseudo(cols, 3);
            x[0] = 1e30; // a block with one huge activation
            let mut xq = Vec::new();
            quantize_act_q8(&x, &mut xq);
            let per_row = cols / 32;
            let mut got = vec![f32::NAN; rows];
            matvec_q8_0(&packed, &xq, &mut got);
            for (r, got) in got.iter().enumerate() {
                let want = vec_dot_q8_0_q8_0(&blocks[r * per_row..(r + 1) * per_row], &xq);
                assert_eq!(got.to_bits(), want.to_bits(), "({rows}, {cols}) row {r}");
            }
        }
    }

    #[test]
    fn matmul_q8_0_is_matvec_q8_0_per_token_bit_for_bit() {
        // Even block counts take the batched kernel; odd ones and padded
        // rows fall back to matvec.
        for (rows, cols) in [(4, 64), (8, 128), (12, 320), (5, 64), (8, 96)] {
            let blocks = q8_0_rows(rows, cols, rows as u32 * 5 + cols as u32);
            let packed = Interleaved::<BlockQ8_0x4>::from_le_bytes(&blocks_to_le_bytes(&blocks), rows, cols).unwrap();
            const T: usize = MATMUL_MAX_TOKENS;
            let xq: Vec<Vec<BlockQ8A>> = (0..T as u32)
                .map(|t| {
                    let mut x = pseudo(cols, 11 + t);
                    x[t as usize] = 1e30;
                    let mut xq = Vec::new();
                    quantize_act_q8(&x, &mut xq);
                    xq
                })
                .collect();
            let mut got = vec![vec![f32::NAN; rows]; T];
            {
                let mut outs = got.iter_mut();
                let outs: [&mut [f32]; T] = std::array::from_fn(|_| outs.next().unwrap().as_mut_slice());
                matmul_q8_0(&packed, std::array::from_fn(|t| xq[t].as_slice()), outs);
            }
            {
                // Three tokens, the others' outputs untouched.
                let mut three = got.clone();
                let mut outs = three.iter_mut();
                let outs: [&mut [f32]; 3] = std::array::from_fn(|_| outs.next().unwrap().as_mut_slice());
                matmul_q8_0(&packed, std::array::from_fn(|t| xq[t].as_slice()), outs);
                assert_eq!(three, got);
            }
            for (t, got) in got.iter().enumerate() {
                let mut want = vec![f32::NAN; rows];
                matvec_q8_0(&packed, &xq[t], &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "({rows}, {cols}) token {t}");
            }
        }
    }

    /// Packs `blocks` ((rows, cols) of `P::Src`) and checks every row of the
    /// whole-matrix SIMD kernel against the scalar oracle on the original blocks.
    fn check_whole<P: PackedBlock>(
        blocks: &[P::Src],
        rows: usize,
        cols: usize,
        kernel: impl Fn(&Interleaved<P>, &[BlockQ8K], &mut [f32]),
        oracle: fn(&[P::Src], &[BlockQ8K]) -> f32,
    ) {
        let packed = Interleaved::<P>::from_le_bytes(&blocks_to_le_bytes(blocks), rows, cols).unwrap();
        for seed in 0..3 {
            let mut x = pseudo(cols, 40 + seed);
            if seed == 1 {
                x[3] = -1e20; // one block's activations almost all round to 0
            }
            let mut xq = Vec::new();
            quantize_act_q8k(&x, &mut xq);
            let per_row = cols / 256;
            let mut got = vec![f32::NAN; rows];
            kernel(&packed, &xq, &mut got);
            for (r, got) in got.iter().enumerate() {
                let want = oracle(&blocks[r * per_row..(r + 1) * per_row], &xq);
                assert_eq!(got.to_bits(), want.to_bits(), "({rows}, {cols}) row {r} seed {seed}");
            }
        }
    }

    /// As [`check_whole`] for a four-row kernel, run group by group.
    fn check_k<P: PackedBlock>(
        blocks: &[P::Src],
        rows: usize,
        cols: usize,
        kernel: fn(&[P], &[BlockQ8K]) -> [f32; 4],
        oracle: fn(&[P::Src], &[BlockQ8K]) -> f32,
    ) {
        let by_groups = |w: &Interleaved<P>, x: &[BlockQ8K], out: &mut [f32]| {
            for (g, o) in out.chunks_mut(4).enumerate() {
                o.copy_from_slice(&kernel(w.group(g), x)[..o.len()]);
            }
        };
        check_whole(blocks, rows, cols, by_groups, oracle)
    }

    /// Blocks with every bit pattern the format allows (raw bytes), finite scales.
    fn raw_blocks<B: crate::quant::Block>(n: usize, seed: usize, fix: impl Fn(B) -> B) -> Vec<B> {
        let raw: Vec<u8> = (0..n * B::BYTES).map(|i| ((i * 131 + seed * 17) % 251) as u8).collect();
        raw.chunks_exact(B::BYTES).map(|c| fix(B::read(c))).collect()
    }

    #[test]
    fn dot4_k_quants_are_the_oracle_bit_for_bit() {
        use crate::kernels::quant::vec_dot_q5_k_q8_k;
        use crate::kernels::quant::{
            vec_dot_iq4_xs_q8_k, vec_dot_q2_k_q8_k, vec_dot_q3_k_q8_k, vec_dot_q4_k_q8_k, vec_dot_q6_k_q8_k,
        };
        use crate::quant::packed::{BlockIQ4XSx4, BlockQ3Kx4, BlockQ6Kx4};
        use crate::quant::{quantize_row_q4_k, quantize_row_q5_k, quantize_row_q6_k, BlockQ4K, BlockQ5K, BlockQ6K};
        use crate::quant::{BlockIQ4XS, BlockQ2K, BlockQ3K};
        for (rows, cols) in [(4, 256), (7, 512), (8, 1024)] {
            let v = pseudo(rows * cols, rows as u32 + cols as u32);
            check_k::<BlockQ4Kx4>(&quantize_row_q4_k(&v), rows, cols, dot4_q4_k, vec_dot_q4_k_q8_k);
            check_whole::<BlockQ6Kx4>(&quantize_row_q6_k(&v), rows, cols, matvec_k16, vec_dot_q6_k_q8_k);
            let n = rows * cols / 256;
            let q4: Vec<BlockQ4K> = raw_blocks(n, cols, |b: BlockQ4K| BlockQ4K {
                d: f16::from_f32(0.01),
                dmin: f16::from_bits(0x7BFF),
                ..b
            });
            check_k::<BlockQ4Kx4>(&q4, rows, cols, dot4_q4_k, vec_dot_q4_k_q8_k);
            let q6: Vec<BlockQ6K> = raw_blocks(n, rows, |b: BlockQ6K| BlockQ6K {
                d: f16::from_bits(0x0001),
                ..b
            });
            check_whole::<BlockQ6Kx4>(&q6, rows, cols, matvec_k16, vec_dot_q6_k_q8_k);
            // Q3_K on Q6_K's kernel: quantized rows and raw bit patterns.
            let q3 = crate::quant::quantize_row_q3_k(&v);
            check_whole::<BlockQ3Kx4>(&q3, rows, cols, matvec_k16, vec_dot_q3_k_q8_k);
            let q3: Vec<BlockQ3K> = raw_blocks(n, rows + 3, |b: BlockQ3K| BlockQ3K {
                d: f16::from_f32(-1.5),
                ..b
            });
            check_whole::<BlockQ3Kx4>(&q3, rows, cols, matvec_k16, vec_dot_q3_k_q8_k);
            // Q2_K (Q6_K's group sums plus mins) and IQ4_XS (Q6_K's kernel).
            let q2 = crate::quant::quantize_row_q2_k(&v);
            check_whole::<BlockQ2Kx4>(&q2, rows, cols, matvec_q2_k, vec_dot_q2_k_q8_k);
            let q2: Vec<BlockQ2K> = raw_blocks(n, rows + 5, |b: BlockQ2K| BlockQ2K {
                d: f16::from_f32(0.75),
                dmin: f16::from_bits(0x7BFF),
                ..b
            });
            check_whole::<BlockQ2Kx4>(&q2, rows, cols, matvec_q2_k, vec_dot_q2_k_q8_k);
            // Every scale and min 15, every quant 3: the largest sums.
            let q2: Vec<BlockQ2K> = raw_blocks(n, 1, |b: BlockQ2K| BlockQ2K {
                scales: [0xFF; 16],
                qs: [0xFF; 64],
                d: f16::from_f32(-2.0),
                ..b
            });
            check_whole::<BlockQ2Kx4>(&q2, rows, cols, matvec_q2_k, vec_dot_q2_k_q8_k);
            let iq4 = crate::quant::quantize_row_iq4_xs(&v);
            check_whole::<BlockIQ4XSx4>(&iq4, rows, cols, matvec_k16, vec_dot_iq4_xs_q8_k);
            let iq4: Vec<BlockIQ4XS> = raw_blocks(n, rows + 7, |b: BlockIQ4XS| BlockIQ4XS {
                d: f16::from_f32(-0.125),
                ..b
            });
            check_whole::<BlockIQ4XSx4>(&iq4, rows, cols, matvec_k16, vec_dot_iq4_xs_q8_k);
            // Scale -32 and level -127 everywhere: the largest magnitudes.
            let iq4: Vec<BlockIQ4XS> = raw_blocks(n, 2, |_: BlockIQ4XS| BlockIQ4XS {
                d: f16::from_f32(3.0),
                scales_h: 0,
                scales_l: [0; 4],
                qs: [0; 128],
            });
            check_whole::<BlockIQ4XSx4>(&iq4, rows, cols, matvec_k16, vec_dot_iq4_xs_q8_k);
            check_k::<BlockQ5Kx4>(&quantize_row_q5_k(&v), rows, cols, dot4_q5_k, vec_dot_q5_k_q8_k);
            let q5: Vec<BlockQ5K> = raw_blocks(n, cols + 1, |b: BlockQ5K| BlockQ5K {
                d: f16::from_f32(-0.02),
                dmin: f16::from_f32(3.0),
                ..b
            });
            check_k::<BlockQ5Kx4>(&q5, rows, cols, dot4_q5_k, vec_dot_q5_k_q8_k);
            // The byte layouts of the same blocks.
            let q4_k = quantize_row_q4_k(&v);
            check_whole::<BlockKWidex4<BlockQ4K>>(&q4_k, rows, cols, matvec_k_wide, vec_dot_q4_k_q8_k);
            check_whole::<BlockKWidex4<BlockQ4K>>(&q4, rows, cols, matvec_k_wide, vec_dot_q4_k_q8_k);
            let q5_k = quantize_row_q5_k(&v);
            check_whole::<BlockKWidex4<BlockQ5K>>(&q5_k, rows, cols, matvec_k_wide, vec_dot_q5_k_q8_k);
            check_whole::<BlockKWidex4<BlockQ5K>>(&q5, rows, cols, matvec_k_wide, vec_dot_q5_k_q8_k);
            // The batched kernel against the per-token one.
            check_batched::<BlockQ4K>(&q4, rows, cols);
            check_batched::<BlockQ5K>(&q5_k, rows, cols);
        }
    }

    /// [`matmul_k_wide`] on 8 and on 3 tokens is [`matvec_k_wide`] per token.
    fn check_batched<S: crate::quant::Block>(blocks: &[S], rows: usize, cols: usize)
    where
        BlockKWidex4<S>: PackedBlock<Src = S>,
    {
        let packed = Interleaved::<BlockKWidex4<S>>::from_le_bytes(&blocks_to_le_bytes(blocks), rows, cols).unwrap();
        let xq: Vec<Vec<BlockQ8K>> = (0..8u32)
            .map(|t| {
                let mut x = pseudo(cols, 60 + t);
                x[t as usize] = -1e20;
                let mut xq = Vec::new();
                quantize_act_q8k(&x, &mut xq);
                xq
            })
            .collect();
        let mut want = vec![vec![f32::NAN; rows]; 8];
        for (x, o) in xq.iter().zip(want.iter_mut()) {
            matvec_k_wide(&packed, x, o);
        }
        let mut got = vec![vec![f32::NAN; rows]; 8];
        {
            let mut outs = got.iter_mut();
            let outs: [&mut [f32]; 8] = std::array::from_fn(|_| outs.next().unwrap().as_mut_slice());
            matmul_k_wide(&packed, std::array::from_fn(|t| xq[t].as_slice()), outs);
        }
        let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "({rows}, {cols}) 8 tokens");
        let mut got3 = vec![vec![f32::NAN; rows]; 3];
        {
            let mut outs = got3.iter_mut();
            let outs: [&mut [f32]; 3] = std::array::from_fn(|_| outs.next().unwrap().as_mut_slice());
            matmul_k_wide(&packed, std::array::from_fn(|t| xq[t].as_slice()), outs);
        }
        assert_eq!(bits(&got3), bits(&want[..3]), "({rows}, {cols}) 3 tokens");
    }

    #[test]
    fn dot4_q4_0_is_the_oracle_bit_for_bit() {
        use crate::kernels::quant::vec_dot_q4_0_q8_0;
        use crate::quant::{quantize_row_q4_0, BlockQ4_0};
        for (rows, cols) in [(4, 32), (6, 96), (8, 288), (5, 256)] {
            let mut blocks = quantize_row_q4_0(&pseudo(rows * cols, 3 + rows as u32));
            let raw: Vec<BlockQ4_0> = raw_blocks(blocks.len(), cols, |b: BlockQ4_0| BlockQ4_0 {
                d: f16::from_f32(1.5),
                ..b
            });
            blocks.iter_mut().zip(raw).step_by(2).for_each(|(b, r)| *b = r);
            let packed = Interleaved::<BlockQ4_0x4>::from_le_bytes(&blocks_to_le_bytes(&blocks), rows, cols).unwrap();
            let mut xq = Vec::new();
            quantize_act_q8(&pseudo(cols, 8), &mut xq);
            let per_row = cols / 32;
            for g in 0..rows.div_ceil(4) {
                for (lane, got) in dot4_q4_0(packed.group(g), &xq).iter().enumerate() {
                    let r = 4 * g + lane;
                    if r < rows {
                        let want = vec_dot_q4_0_q8_0(&blocks[r * per_row..(r + 1) * per_row], &xq);
                        assert_eq!(got.to_bits(), want.to_bits(), "({rows}, {cols}) row {r}");
                    }
                }
            }
            // The byte layout of the same blocks through the Q8_0 matvec.
            let wide = Interleaved::<crate::quant::packed::BlockQ4_0Widex4>::from_le_bytes(
                &blocks_to_le_bytes(&blocks),
                rows,
                cols,
            )
            .unwrap();
            let mut got = vec![f32::NAN; rows];
            matvec_q8_0(&wide, &xq, &mut got);
            for (r, got) in got.iter().enumerate() {
                let want = vec_dot_q4_0_q8_0(&blocks[r * per_row..(r + 1) * per_row], &xq);
                assert_eq!(got.to_bits(), want.to_bits(), "wide ({rows}, {cols}) row {r}");
            }
        }
    }

    /// Every row of `kernel` on the packed `blocks` ((rows, cols) of
    /// `P::Src`) is `oracle` on the original blocks, bit for bit.
    fn check_q8a<P: PackedBlock>(
        blocks: &[P::Src],
        rows: usize,
        cols: usize,
        kernel: fn(&Interleaved<P>, &[BlockQ8A], &mut [f32]),
        oracle: fn(&[P::Src], &[BlockQ8A]) -> f32,
    ) {
        let packed = Interleaved::<P>::from_le_bytes(&blocks_to_le_bytes(blocks), rows, cols).unwrap();
        for seed in 0..3 {
            let mut x = pseudo(cols, 70 + seed);
            if seed == 1 {
                x[5] = 1e30; // one block's activations almost all round to 0
            }
            let mut xq = Vec::new();
            quantize_act_q8(&x, &mut xq);
            let per_row = cols / 32;
            let mut got = vec![f32::NAN; rows];
            kernel(&packed, &xq, &mut got);
            for (r, got) in got.iter().enumerate() {
                let want = oracle(&blocks[r * per_row..(r + 1) * per_row], &xq);
                assert_eq!(got.to_bits(), want.to_bits(), "({rows}, {cols}) row {r} seed {seed}");
            }
        }
    }

    #[test]
    fn byte_layouts_of_the_32_element_types_are_their_oracles_bit_for_bit() {
        use crate::kernels::quant::{vec_dot_iq4_nl_q8_0, vec_dot_q4_1_q8_1, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1};
        use crate::quant::packed::{BlockIQ4NLx4, BlockQ4_1x4, BlockQ5_0x4, BlockQ5_1x4};
        use crate::quant::{
            quantize_row_iq4_nl, quantize_row_q4_1, quantize_row_q5_0, quantize_row_q5_1, BlockIQ4NL, BlockQ4_1,
            BlockQ5_0, BlockQ5_1,
        };
        // Odd and even block counts (one and two blocks per step), padded rows.
        for (rows, cols) in [(4, 32), (5, 96), (8, 288), (7, 256), (12, 64)] {
            let v = pseudo(rows * cols, 9 + rows as u32 + cols as u32);
            let n = rows * cols / 32;
            check_q8a::<BlockQ5_0x4>(&quantize_row_q5_0(&v), rows, cols, matvec_q8_0, vec_dot_q5_0_q8_0);
            check_q8a::<BlockIQ4NLx4>(&quantize_row_iq4_nl(&v), rows, cols, matvec_q8_0, vec_dot_iq4_nl_q8_0);
            check_q8a::<BlockQ4_1x4>(&quantize_row_q4_1(&v), rows, cols, matvec_q8_min, vec_dot_q4_1_q8_1);
            check_q8a::<BlockQ5_1x4>(&quantize_row_q5_1(&v), rows, cols, matvec_q8_min, vec_dot_q5_1_q8_1);
            // Every bit pattern of quants and high bits; extreme and negative scales.
            let scales = [65504.0, -3.5, 6.0e-8, 0.0];
            let d = |i: usize| f16::from_f32(scales[i % 4]);
            let q5_0: Vec<BlockQ5_0> = raw_blocks(n, cols, |b: BlockQ5_0| BlockQ5_0 {
                d: d(b.qs[0] as usize),
                ..b
            });
            check_q8a::<BlockQ5_0x4>(&q5_0, rows, cols, matvec_q8_0, vec_dot_q5_0_q8_0);
            let iq4: Vec<BlockIQ4NL> = raw_blocks(n, rows, |b: BlockIQ4NL| BlockIQ4NL {
                d: d(b.qs[1] as usize),
                ..b
            });
            check_q8a::<BlockIQ4NLx4>(&iq4, rows, cols, matvec_q8_0, vec_dot_iq4_nl_q8_0);
            let q4_1: Vec<BlockQ4_1> = raw_blocks(n, cols + 3, |b: BlockQ4_1| BlockQ4_1 {
                d: d(b.qs[2] as usize),
                m: d(b.qs[3] as usize + 1),
                ..b
            });
            check_q8a::<BlockQ4_1x4>(&q4_1, rows, cols, matvec_q8_min, vec_dot_q4_1_q8_1);
            let q5_1: Vec<BlockQ5_1> = raw_blocks(n, cols + 5, |b: BlockQ5_1| BlockQ5_1 {
                d: d(b.qs[4] as usize),
                m: d(b.qs[5] as usize + 3),
                ..b
            });
            check_q8a::<BlockQ5_1x4>(&q5_1, rows, cols, matvec_q8_min, vec_dot_q5_1_q8_1);
        }
    }

    /// `n` blocks of `B` from random bytes (every quant and fifth-bit
    /// pattern), scales replaced by `scale` (f16 bits at `scale_at`).
    fn random_file_blocks<B: crate::quant::Block>(n: usize, seed: u32, scale_at: &[usize], scale: f32) -> Vec<B> {
        (0..n)
            .map(|i| {
                let mut b: Vec<u8> = (0..B::BYTES)
                    .map(|j| {
                        ((i * 131 + j) as u32)
                            .wrapping_mul(2654435761)
                            .wrapping_add(seed)
                            .rotate_right(13) as u8
                    })
                    .collect();
                for &at in scale_at {
                    b[at..at + 2].copy_from_slice(&f16::from_f32(scale * (1.0 + (i % 7) as f32)).to_le_bytes());
                }
                B::read(&b)
            })
            .collect()
    }

    #[test]
    fn file_block_kernels_are_their_oracles_bit_for_bit() {
        use crate::kernels::acts::quantize_act_q8_0;
        use crate::kernels::quant::{vec_dot_iq4_nl_q8_0, vec_dot_q4_1_q8_1, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1};
        for seed in 0..12u32 {
            let n = 1 + seed as usize % 9;
            let scale = [1e-3f32, 1.0, 6.0e-8, -2.5, 6.0e4][seed as usize % 5];
            let mut x = pseudo(32 * n, seed);
            if seed % 4 == 3 {
                x[..32].fill(0.0); // an all-zero activation block
                x[40] = 1e4; // and a spike
            }
            let mut xq = Vec::new();
            quantize_act_q8_0(&x, &mut xq);
            fn check<B: FileQuants + crate::quant::Block>(
                blocks: &[B],
                xq: &[BlockQ8A],
                oracle: fn(&[B], &[BlockQ8A]) -> f32,
                what: &str,
            ) {
                let want = oracle(blocks, xq).to_bits();
                assert_eq!(dot_file_blocks(blocks, xq).to_bits(), want, "{what}");
                // Four rows: this row in lane 2, others beside it.
                let n = blocks.len();
                let other: Vec<B> = blocks.iter().rev().copied().collect();
                let got = dot4_file_blocks([&other[..n], &other[..n], blocks, &other[..n]], xq);
                assert_eq!(got[2].to_bits(), want, "{what} (four rows)");
                assert_eq!(got[0].to_bits(), oracle(&other, xq).to_bits(), "{what} (four rows)");
            }
            let q5_0: Vec<BlockQ5_0> = random_file_blocks(n, seed, &[0], scale);
            check(&q5_0, &xq, vec_dot_q5_0_q8_0, &format!("q5_0 {seed}"));
            let q5_1: Vec<BlockQ5_1> = random_file_blocks(n, seed, &[0, 2], scale);
            check(&q5_1, &xq, vec_dot_q5_1_q8_1, &format!("q5_1 {seed}"));
            let q4_1: Vec<BlockQ4_1> = random_file_blocks(n, seed, &[0, 2], scale);
            check(&q4_1, &xq, vec_dot_q4_1_q8_1, &format!("q4_1 {seed}"));
            let iq4: Vec<BlockIQ4NL> = random_file_blocks(n, seed, &[0], scale);
            check(&iq4, &xq, vec_dot_iq4_nl_q8_0, &format!("iq4_nl {seed}"));
        }
    }

    #[test]
    fn simd_activation_quantization_is_the_scalar_one_bit_for_bit() {
        for seed in 0..20u32 {
            let mut x = pseudo(256, seed);
            match seed % 5 {
                0 => x.iter_mut().for_each(|v| *v = 0.0),
                1 => x[7] = 3.0e38,
                2 => x.iter_mut().for_each(|v| *v *= 1e-40), // subnormals
                3 => x[200] = -x[200] * 1000.0,
                _ => {}
            }
            for n in [16, 32, 256] {
                let mut want = vec![0i8; n];
                let mut got = vec![0i8; n];
                let dw = crate::kernels::acts::quantize_i8_block_scalar(&x[..n], &mut want);
                let dg = quantize_block_i8(&x[..n], &mut got);
                assert_eq!(dg.to_bits(), dw.to_bits(), "seed {seed} n {n}");
                assert_eq!(got, want, "seed {seed} n {n}");
            }
            let mut sums = [0i16; 16];
            let q: Vec<i8> = (0..256).map(|i| ((i as u32 * 2654435761 + seed) >> 24) as i8).collect();
            group_sums_16(&q, &mut sums);
            for (g, s) in sums.iter().enumerate() {
                assert_eq!(*s as i32, q[16 * g..16 * g + 16].iter().map(|&v| v as i32).sum::<i32>());
            }
        }
    }
}
