//! Weight matrices: one trait, [`WeightMatrix`], implemented over every
//! layout the loader keeps weights in.
//!
//! - float weights: [`FloatMatrix`] (f32 vectors, f16 and bf16 kept as they
//!   are) and [`RowsInLanes`] (f32, and f16/bf16 widened at load);
//! - quantized weights: [`Interleaved`] over any packed block that
//!   implements [`PackedKernel`] (its scalar oracle, and how a whole matrix
//!   is computed: four-row groups for the nibble layouts, one
//!   activation-stationary pass for the byte layouts), and [`FileBlocks`],
//!   ggml's blocks as the file has them, for the compact layout of the
//!   32-element types that have no packed nibble layout.
//!
//! A new tensor type is a block struct, a packed block with its
//! [`PackedKernel`] impl, and one row in the type table ([`crate::tensor`]).
//!
//! Every value a method returns is its row's scalar oracle bit for bit
//! ([`WeightMatrix::dot_row`] on the build's kernels), whichever method is
//! called and however many tokens are batched.

use super::acts::{ActBlock, ActFamily, PreparedActs};
use super::quant::{
    vec_dot_iq4_nl_q8_0, vec_dot_iq4_xs_q8_k, vec_dot_q2_k_q8_k, vec_dot_q3_k_q8_k, vec_dot_q4_0_q8_0,
    vec_dot_q4_1_q8_1, vec_dot_q4_k_q8_k, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1, vec_dot_q5_k_q8_k, vec_dot_q6_k_q8_k,
    vec_dot_q8_0_q8_0,
};
use super::{dot_widened, simd, simd_f32, simd_quant, SIMD};
use crate::quant::packed::{
    BlockIQ4NLx4, BlockIQ4XSx4, BlockKWidex4, BlockQ2Kx4, BlockQ3Kx4, BlockQ4Kx4, BlockQ4_0Widex4, BlockQ4_0x4,
    BlockQ4_1x4, BlockQ5Kx4, BlockQ5_0x4, BlockQ5_1x4, BlockQ6Kx4, BlockQ8_0x4, Interleaved, PackedBlock, RowsInLanes,
};
use crate::quant::{
    dequantize_blocks, Block, BlockIQ4NL, BlockQ4K, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ8A, BlockQ8K,
};
use std::any::Any;
use std::fmt::Debug;

/// A (rows, cols) weight matrix in one of the loader's layouts.
///
/// `xq` is `x` prepared for [`WeightMatrix::acts`] (a mismatch is prepared
/// again inside, slowly: never on the hot path).
pub trait WeightMatrix: DynMatrix + Debug + Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The activation form the dot products multiply.
    fn acts(&self) -> ActFamily;
    /// A short name of the layout (`"q4_K nibbles"`), for tests and reports.
    fn layout(&self) -> &'static str;
    /// Heap bytes of the data.
    fn heap_bytes(&self) -> usize;
    /// Copies row `row` into `out` (cols) as f32 (embedding lookup).
    fn row_to_f32(&self, row: usize, out: &mut [f32]);
    /// `W[row, :] · x`.
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32;
    /// Rows `row..row + 4` against `x`, each [`WeightMatrix::dot_row`]'s value.
    fn dot_4rows(&self, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
        [0, 1, 2, 3].map(|i| self.dot_row(row + i, x, xq))
    }
    /// `out = W x` (`out`: rows). By default four rows at a time
    /// ([`WeightMatrix::dot_4rows`]), the rest one by one.
    fn matvec(&self, x: &[f32], xq: &PreparedActs, out: &mut [f32]) {
        let rows4 = self.rows() / 4 * 4;
        for (r, o) in out[..rows4].chunks_exact_mut(4).enumerate() {
            o.copy_from_slice(&self.dot_4rows(4 * r, x, xq));
        }
        for (r, o) in out.iter_mut().enumerate().skip(rows4) {
            *o = self.dot_row(r, x, xq);
        }
    }
    /// `out[t] = W xs[t]` for every token (`xs`: (n_tokens, cols), `xqs`
    /// each token's prepared activations, `out`: (n_tokens, rows)). By
    /// default row group outer, token inner, so each row is read once per batch.
    fn matmul(&self, xs: &[f32], xqs: &[PreparedActs], out: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        let rows4 = rows / 4 * 4;
        for r in (0..rows4).step_by(4) {
            for (t, xq) in xqs.iter().enumerate() {
                let v = self.dot_4rows(r, &xs[t * cols..(t + 1) * cols], xq);
                out[t * rows + r..t * rows + r + 4].copy_from_slice(&v);
            }
        }
        for r in rows4..rows {
            for (t, xq) in xqs.iter().enumerate() {
                out[t * rows + r] = self.dot_row(r, &xs[t * cols..(t + 1) * cols], xq);
            }
        }
    }
}

/// What `Box<dyn WeightMatrix>` needs to be cloned and compared; every
/// `Clone + PartialEq` matrix has it.
pub trait DynMatrix: Any {
    fn clone_box(&self) -> Box<dyn WeightMatrix>;
    fn eq_dyn(&self, other: &dyn WeightMatrix) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<T: WeightMatrix + Clone + PartialEq> DynMatrix for T {
    fn clone_box(&self) -> Box<dyn WeightMatrix> {
        Box::new(self.clone())
    }
    fn eq_dyn(&self, other: &dyn WeightMatrix) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Clone for Box<dyn WeightMatrix> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A float element kept as it is in a [`FloatMatrix`].
pub trait FloatElem: Copy + Debug + PartialEq + Send + Sync + 'static {
    const LAYOUT: &'static str;
    /// The activations the type multiplies (ggml's `vec_dot_type`).
    const ACTS: ActFamily;
    fn to_f32(self) -> f32;
    /// `a · x` in [`super::dot_f32`]'s lane order (the build's kernel).
    fn dot(a: &[Self], x: &[f32]) -> f32;
    /// Four rows against `x`, each [`FloatElem::dot`]'s value.
    fn dot4(rows: [&[Self]; 4], x: &[f32]) -> [f32; 4] {
        rows.map(|r| Self::dot(r, x))
    }
}

impl FloatElem for f32 {
    const LAYOUT: &'static str = "f32";
    const ACTS: ActFamily = ActFamily::Float;
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(a: &[f32], x: &[f32]) -> f32 {
        if SIMD {
            simd::dot_f32(a, x)
        } else {
            super::dot_f32(a, x)
        }
    }
    fn dot4(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        if SIMD {
            simd::dot4_f32(rows, x)
        } else {
            rows.map(|r| Self::dot(r, x))
        }
    }
}

impl FloatElem for half::f16 {
    const LAYOUT: &'static str = "f16";
    const ACTS: ActFamily = ActFamily::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn dot(a: &[half::f16], x: &[f32]) -> f32 {
        if SIMD {
            simd::dot_f16(a, x)
        } else {
            super::dot_f16(a, x)
        }
    }
    fn dot4(rows: [&[half::f16]; 4], x: &[f32]) -> [f32; 4] {
        if SIMD {
            simd::dot4_f16(rows, x)
        } else {
            rows.map(|r| Self::dot(r, x))
        }
    }
}

impl FloatElem for half::bf16 {
    const LAYOUT: &'static str = "bf16";
    const ACTS: ActFamily = ActFamily::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn dot(a: &[half::bf16], x: &[f32]) -> f32 {
        if SIMD {
            simd::dot_bf16(a, x)
        } else {
            dot_widened(a, x, half::bf16::to_f32)
        }
    }
    fn dot4(rows: [&[half::bf16]; 4], x: &[f32]) -> [f32; 4] {
        if SIMD {
            simd::dot4_bf16(rows, x)
        } else {
            rows.map(|r| Self::dot(r, x))
        }
    }
}

/// A row-major (rows, cols) matrix of floats as they are in the file
/// (vectors, and f16/bf16 matrices when the heap does not allow widening).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatMatrix<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
}

impl<T: FloatElem> FloatMatrix<T> {
    /// `data` is row-major (rows, cols).
    pub fn new(data: Vec<T>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols);
        FloatMatrix { data, rows, cols }
    }

    fn row(&self, row: usize) -> &[T] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }
}

impl<T: FloatElem> WeightMatrix for FloatMatrix<T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn acts(&self) -> ActFamily {
        T::ACTS
    }
    fn layout(&self) -> &'static str {
        T::LAYOUT
    }
    fn heap_bytes(&self) -> usize {
        self.data.len() * size_of::<T>()
    }
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(self.row(row)) {
            *o = v.to_f32();
        }
    }
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
        T::dot(self.row(row), &xq.float_values(T::ACTS, x))
    }
    fn dot_4rows(&self, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
        T::dot4([0, 1, 2, 3].map(|i| self.row(row + i)), &xq.float_values(T::ACTS, x))
    }
}

impl WeightMatrix for RowsInLanes {
    fn rows(&self) -> usize {
        RowsInLanes::rows(self)
    }
    fn cols(&self) -> usize {
        RowsInLanes::cols(self)
    }
    fn acts(&self) -> ActFamily {
        RowsInLanes::acts(self)
    }
    fn layout(&self) -> &'static str {
        "f32 rows in lanes"
    }
    fn heap_bytes(&self) -> usize {
        RowsInLanes::heap_bytes(self)
    }
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        self.row(row, out)
    }
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
        let mut r = vec![0.0; RowsInLanes::cols(self)];
        self.row(row, &mut r);
        super::dot_f32(&r, &xq.float_values(RowsInLanes::acts(self), x))
    }
    fn matvec(&self, x: &[f32], xq: &PreparedActs, out: &mut [f32]) {
        simd_f32::matvec_rows_in_lanes(self, &xq.float_values(RowsInLanes::acts(self), x), out)
    }
    fn matmul(&self, xs: &[f32], xqs: &[PreparedActs], out: &mut [f32]) {
        let (rows, cols) = (RowsInLanes::rows(self), RowsInLanes::cols(self));
        for ((x, xq), o) in xs.chunks_exact(cols).zip(xqs).zip(out.chunks_exact_mut(rows)) {
            simd_f32::matvec_rows_in_lanes(self, &xq.float_values(RowsInLanes::acts(self), x), o);
        }
    }
}

/// The kernels of a packed block layout ([`Interleaved`] of it is then a
/// [`WeightMatrix`]).
///
/// The defaults are the nibble layouts' way: four rows at a time
/// ([`PackedKernel::dot4`], the oracle unless overridden), row group outer
/// and token inner; the byte layouts override [`PackedKernel::matvec`] and
/// [`PackedKernel::matmul`] with one pass over the whole matrix.
pub trait PackedKernel: PackedBlock + Debug + PartialEq + Send + Sync {
    /// The activation blocks the dot product multiplies.
    type Act: ActBlock;
    const LAYOUT: &'static str;
    /// The scalar oracle: one row's ggml blocks against its activations.
    fn dot_row(w: &[Self::Src], x: &[Self::Act]) -> f32;
    /// Rows `4g..4g + 4` against `x`.
    fn dot4(w: &Interleaved<Self>, g: usize, x: &[Self::Act]) -> [f32; 4] {
        [0, 1, 2, 3].map(|i| Self::dot_row(&w.row_blocks(4 * g + i), x))
    }
    /// `out = W x`.
    fn matvec(w: &Interleaved<Self>, x: &[Self::Act], out: &mut [f32]) {
        Self::matmul(w, &[x], out)
    }
    /// `out[t] = W xs[t]` for every token, `out` (n_tokens, rows).
    fn matmul(w: &Interleaved<Self>, xs: &[&[Self::Act]], out: &mut [f32]) {
        let rows = w.rows();
        let rows4 = rows / 4 * 4;
        each_group(rows, rows4, xs, out, |g, x| Self::dot4(w, g, x));
        for r in rows4..rows {
            for (t, x) in xs.iter().enumerate() {
                out[t * rows + r] = Self::dot_row(&w.row_blocks(r), x);
            }
        }
    }
}

impl<P: PackedKernel> WeightMatrix for Interleaved<P> {
    fn rows(&self) -> usize {
        Interleaved::rows(self)
    }
    fn cols(&self) -> usize {
        self.blocks_per_row() * P::Src::ELEMS
    }
    fn acts(&self) -> ActFamily {
        P::Act::FAMILY
    }
    fn layout(&self) -> &'static str {
        P::LAYOUT
    }
    fn heap_bytes(&self) -> usize {
        Interleaved::heap_bytes(self)
    }
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        dequantize_blocks(&self.row_blocks(row), out)
    }
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
        match P::Act::of(xq) {
            Some(a) => P::dot_row(&self.row_blocks(row), a),
            None => self.dot_row(row, x, &PreparedActs::new(P::Act::FAMILY, x)),
        }
    }
    fn dot_4rows(&self, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
        match P::Act::of(xq) {
            Some(a) if row.is_multiple_of(4) => P::dot4(self, row / 4, a),
            _ => [0, 1, 2, 3].map(|i| self.dot_row(row + i, x, xq)),
        }
    }
    fn matvec(&self, x: &[f32], xq: &PreparedActs, out: &mut [f32]) {
        match P::Act::of(xq) {
            Some(a) => P::matvec(self, a, out),
            None => self.matvec(x, &PreparedActs::new(P::Act::FAMILY, x), out),
        }
    }
    fn matmul(&self, xs: &[f32], xqs: &[PreparedActs], out: &mut [f32]) {
        match xqs.iter().map(P::Act::of).collect::<Option<Vec<_>>>() {
            Some(acts) => P::matmul(self, &acts, out),
            None => {
                let cols = WeightMatrix::cols(self);
                let fresh: Vec<_> = xs
                    .chunks_exact(cols)
                    .map(|x| PreparedActs::new(P::Act::FAMILY, x))
                    .collect();
                self.matmul(xs, &fresh, out)
            }
        }
    }
}

/// A 32-element ggml block type computed straight from the file's blocks
/// ([`FileBlocks`]): by [`simd_quant::dot4_file_blocks`] in the canister
/// build and by its scalar oracle elsewhere (the same bits).
pub trait FileBlockKernel: Block + simd_quant::FileQuants + Debug + PartialEq + Send + Sync {
    const LAYOUT: &'static str;
    /// The scalar oracle: one row's blocks against its activations.
    fn oracle(w: &[Self], x: &[BlockQ8A]) -> f32;
}

/// A matrix of ggml blocks as the file has them, row-major, computed by the
/// type's scalar oracle: the compact layout of Q4_1, Q5_0, Q5_1 and IQ4_NL
/// when their byte layouts do not fit the heap (file size in the heap,
/// against about 1.1 bytes per weight; several times the instructions per
/// multiply-add, so only models that need the room get it).
#[derive(Debug, Clone, PartialEq)]
pub struct FileBlocks<S> {
    blocks: Vec<S>,
    rows: usize,
    cols: usize,
}

impl<S: FileBlockKernel> FileBlocks<S> {
    /// `bytes`: exactly `rows` rows of `cols` elements in the file's blocks.
    pub fn from_le_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        let expected = rows * (cols / S::ELEMS) * S::BYTES;
        if !cols.is_multiple_of(S::ELEMS) || bytes.len() != expected {
            return Err(format!(
                "expected {expected} bytes of whole blocks, got {}",
                bytes.len()
            ));
        }
        let blocks = bytes.chunks_exact(S::BYTES).map(S::read).collect();
        Ok(FileBlocks { blocks, rows, cols })
    }

    fn row(&self, row: usize) -> &[S] {
        let per_row = self.cols / S::ELEMS;
        &self.blocks[row * per_row..(row + 1) * per_row]
    }
}

impl<S: FileBlockKernel> WeightMatrix for FileBlocks<S> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn acts(&self) -> ActFamily {
        ActFamily::Q8
    }
    fn layout(&self) -> &'static str {
        S::LAYOUT
    }
    fn heap_bytes(&self) -> usize {
        self.blocks.len() * size_of::<S>()
    }
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        dequantize_blocks(self.row(row), out)
    }
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
        match BlockQ8A::of(xq) {
            Some(a) if SIMD => simd_quant::dot_file_blocks(self.row(row), a),
            Some(a) => S::oracle(self.row(row), a),
            None => self.dot_row(row, x, &PreparedActs::new(ActFamily::Q8, x)),
        }
    }
    fn dot_4rows(&self, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
        match BlockQ8A::of(xq) {
            Some(a) if SIMD => simd_quant::dot4_file_blocks([0, 1, 2, 3].map(|i| self.row(row + i)), a),
            _ => [0, 1, 2, 3].map(|i| self.dot_row(row + i, x, xq)),
        }
    }
}

macro_rules! file_block_kernel {
    ($block:ty, $layout:literal, $oracle:ident) => {
        impl FileBlockKernel for $block {
            const LAYOUT: &'static str = $layout;
            fn oracle(w: &[Self], x: &[BlockQ8A]) -> f32 {
                $oracle(w, x)
            }
        }
    };
}
file_block_kernel!(BlockQ4_1, "q4_1 file blocks", vec_dot_q4_1_q8_1);
file_block_kernel!(BlockQ5_0, "q5_0 file blocks", vec_dot_q5_0_q8_0);
file_block_kernel!(BlockQ5_1, "q5_1 file blocks", vec_dot_q5_1_q8_1);
file_block_kernel!(BlockIQ4NL, "iq4_nl file blocks", vec_dot_iq4_nl_q8_0);

impl PackedKernel for BlockQ8_0x4 {
    type Act = BlockQ8A;
    const LAYOUT: &'static str = "q8_0 bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8A]) -> f32 {
        vec_dot_q8_0_q8_0(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8A], out: &mut [f32]) {
        simd_quant::matvec_q8_0(w, x, out)
    }
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8A]], out: &mut [f32]) {
        use simd_quant::matmul_q8_0 as q8_0;
        batched(w, xs, out, q8_0::<_, 8>, q8_0::<_, 4>, simd_quant::matvec_q8_0)
    }
}

impl PackedKernel for BlockQ4_0Widex4 {
    type Act = BlockQ8A;
    const LAYOUT: &'static str = "q4_0 bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8A]) -> f32 {
        vec_dot_q4_0_q8_0(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8A], out: &mut [f32]) {
        simd_quant::matvec_q8_0(w, x, out)
    }
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8A]], out: &mut [f32]) {
        use simd_quant::matmul_q8_0 as q8_0;
        batched(w, xs, out, q8_0::<_, 8>, q8_0::<_, 4>, simd_quant::matvec_q8_0)
    }
}

/// A signed-byte layout ([`BlockQ8x4`](crate::quant::packed::BlockQ8x4))
/// of `$src`: Q8_0's whole-matrix and batched kernels, `$oracle` per row.
macro_rules! signed_bytes_kernel {
    ($packed:ty, $layout:literal, $oracle:ident) => {
        impl PackedKernel for $packed {
            type Act = BlockQ8A;
            const LAYOUT: &'static str = $layout;
            fn dot_row(w: &[Self::Src], x: &[BlockQ8A]) -> f32 {
                $oracle(w, x)
            }
            fn matvec(w: &Interleaved<Self>, x: &[BlockQ8A], out: &mut [f32]) {
                simd_quant::matvec_q8_0(w, x, out)
            }
            fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8A]], out: &mut [f32]) {
                use simd_quant::matmul_q8_0 as q8_0;
                batched(w, xs, out, q8_0::<_, 8>, q8_0::<_, 4>, simd_quant::matvec_q8_0)
            }
        }
    };
}
signed_bytes_kernel!(BlockQ5_0x4, "q5_0 bytes", vec_dot_q5_0_q8_0);
signed_bytes_kernel!(BlockIQ4NLx4, "iq4_nl bytes", vec_dot_iq4_nl_q8_0);

/// An offset layout ([`BlockQ8Minx4`](crate::quant::packed::BlockQ8Minx4)): one whole-matrix pass per token.
macro_rules! offset_bytes_kernel {
    ($packed:ty, $layout:literal, $oracle:ident) => {
        impl PackedKernel for $packed {
            type Act = BlockQ8A;
            const LAYOUT: &'static str = $layout;
            fn dot_row(w: &[Self::Src], x: &[BlockQ8A]) -> f32 {
                $oracle(w, x)
            }
            fn matvec(w: &Interleaved<Self>, x: &[BlockQ8A], out: &mut [f32]) {
                simd_quant::matvec_q8_min(w, x, out)
            }
            fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8A]], out: &mut [f32]) {
                for (x, o) in xs.iter().zip(out.chunks_exact_mut(w.rows())) {
                    simd_quant::matvec_q8_min(w, x, o);
                }
            }
        }
    };
}
offset_bytes_kernel!(BlockQ4_1x4, "q4_1 bytes", vec_dot_q4_1_q8_1);
offset_bytes_kernel!(BlockQ5_1x4, "q5_1 bytes", vec_dot_q5_1_q8_1);

impl PackedKernel for BlockQ4_0x4 {
    type Act = BlockQ8A;
    const LAYOUT: &'static str = "q4_0 nibbles";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8A]) -> f32 {
        vec_dot_q4_0_q8_0(w, x)
    }
    fn dot4(w: &Interleaved<Self>, g: usize, x: &[BlockQ8A]) -> [f32; 4] {
        simd_quant::dot4_q4_0(w.group(g), x)
    }
}

impl PackedKernel for BlockQ4Kx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q4_K nibbles";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q4_k_q8_k(w, x)
    }
    fn dot4(w: &Interleaved<Self>, g: usize, x: &[BlockQ8K]) -> [f32; 4] {
        simd_quant::dot4_q4_k(w.group(g), x)
    }
}

impl PackedKernel for BlockQ5Kx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q5_K nibbles";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q5_k_q8_k(w, x)
    }
    fn dot4(w: &Interleaved<Self>, g: usize, x: &[BlockQ8K]) -> [f32; 4] {
        simd_quant::dot4_q5_k(w.group(g), x)
    }
}

impl PackedKernel for BlockKWidex4<BlockQ4K> {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q4_K bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q4_k_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_k_wide(w, x, out)
    }
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        use simd_quant::matmul_k_wide as kw;
        batched(w, xs, out, kw::<_, 8>, kw::<_, 4>, simd_quant::matvec_k_wide)
    }
}

impl PackedKernel for BlockKWidex4<BlockQ5K> {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q5_K bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q5_k_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_k_wide(w, x, out)
    }
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        use simd_quant::matmul_k_wide as kw;
        batched(w, xs, out, kw::<_, 8>, kw::<_, 4>, simd_quant::matvec_k_wide)
    }
}

impl PackedKernel for BlockQ6Kx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q6_K bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q6_k_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_k16(w, x, out)
    }
    /// One whole-matrix pass per token (no batched kernel: a prompt batch
    /// would save only memory traffic, which the IC does not charge).
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        for (x, o) in xs.iter().zip(out.chunks_exact_mut(w.rows())) {
            simd_quant::matvec_k16(w, x, o);
        }
    }
}

impl PackedKernel for BlockIQ4XSx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "iq4_xs bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_iq4_xs_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_k16(w, x, out)
    }
    /// Q6_K's kernel: one whole-matrix pass per token.
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        for (x, o) in xs.iter().zip(out.chunks_exact_mut(w.rows())) {
            simd_quant::matvec_k16(w, x, o);
        }
    }
}

impl PackedKernel for BlockQ2Kx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q2_K bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q2_k_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_q2_k(w, x, out)
    }
    /// One whole-matrix pass per token, as Q6_K.
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        for (x, o) in xs.iter().zip(out.chunks_exact_mut(w.rows())) {
            simd_quant::matvec_q2_k(w, x, o);
        }
    }
}

impl PackedKernel for BlockQ3Kx4 {
    type Act = BlockQ8K;
    const LAYOUT: &'static str = "q3_K bytes";
    fn dot_row(w: &[Self::Src], x: &[BlockQ8K]) -> f32 {
        vec_dot_q3_k_q8_k(w, x)
    }
    fn matvec(w: &Interleaved<Self>, x: &[BlockQ8K], out: &mut [f32]) {
        simd_quant::matvec_k16(w, x, out)
    }
    /// Q6_K's kernel: one whole-matrix pass per token.
    fn matmul(w: &Interleaved<Self>, xs: &[&[BlockQ8K]], out: &mut [f32]) {
        for (x, o) in xs.iter().zip(out.chunks_exact_mut(w.rows())) {
            simd_quant::matvec_k16(w, x, o);
        }
    }
}

/// `out[t * rows + r..][..4] = dot(r / 4, &acts[t])` for every 4-row group
/// `r < rows4` (outer) and token `t` (inner).
#[inline(always)]
fn each_group<A>(rows: usize, rows4: usize, acts: &[A], out: &mut [f32], dot: impl Fn(usize, &A) -> [f32; 4]) {
    assert!(rows4 <= rows && rows4.is_multiple_of(4) && out.len() >= acts.len() * rows);
    let po = out.as_mut_ptr();
    for g in 0..rows4 / 4 {
        for (t, a) in acts.iter().enumerate() {
            let v = dot(g, a);
            // SAFETY: t * rows + 4 * g + 4 <= t * rows + rows4 <= out.len() (checked above).
            unsafe { core::ptr::copy_nonoverlapping(v.as_ptr(), po.add(t * rows + 4 * g), 4) };
        }
    }
}

/// A batched kernel on `T` tokens: the weights, `T` tokens' activations and outputs.
type Batched<P, A, const T: usize> = fn(&Interleaved<P>, [&[A]; T], [&mut [f32]; T]);

/// `out` (tokens, rows) for every token of `acts`: `eight` on 8 tokens at a
/// time, then `four`, then `one` per token. (A pass on 2 tokens saves
/// nothing: a weight read back from a local costs what loading it again
/// does; two jobs decoding together measured 0.98 of one job's tokens per
/// message with it, 0.99 without.)
fn batched<P: PackedBlock, A>(
    p: &Interleaved<P>,
    mut acts: &[&[A]],
    mut out: &mut [f32],
    eight: Batched<P, A, 8>,
    four: Batched<P, A, 4>,
    one: fn(&Interleaved<P>, &[A], &mut [f32]),
) {
    fn take<P: PackedBlock, A, const T: usize>(
        p: &Interleaved<P>,
        acts: &mut &[&[A]],
        out: &mut &mut [f32],
        kernel: Batched<P, A, T>,
    ) {
        let (x, rest) = acts.split_at(T);
        *acts = rest;
        let (o, rest) = std::mem::take(out).split_at_mut(T * p.rows());
        *out = rest;
        let mut rows = o.chunks_exact_mut(p.rows());
        kernel(
            p,
            std::array::from_fn(|t| x[t]),
            std::array::from_fn(|_| rows.next().expect("a row per token")),
        );
    }
    while acts.len() >= 8 {
        take(p, &mut acts, &mut out, eight);
    }
    if acts.len() >= 4 {
        take(p, &mut acts, &mut out, four);
    }
    for (x, o) in acts.iter().zip(out.chunks_exact_mut(p.rows())) {
        one(p, x, o);
    }
}
