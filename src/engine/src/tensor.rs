//! Tensors: ggml's tensor types (ids, block sizes and byte sizes as ggml
//! defines them), the table of the types the engine computes with
//! ([`SUPPORTED_TYPES`]: how each is laid out in the heap, what loading it
//! costs), and [`Tensor`], a loaded weight matrix.
//!
//! A type the table lacks is refused when a file's header is read, with the
//! table's names as the supported set ([`supported_type_names`]). Adding a
//! type means a block struct in [`crate::quant`], its packed block and
//! [`PackedKernel`] impl, and a row here.

use crate::kernels::matrix::{FileBlockKernel, FileBlocks, FloatMatrix, PackedKernel, WeightMatrix};
use crate::kernels::{ActFamily, PreparedActs};
use crate::quant::packed::{
    bf16_bits_to_f32, f16_bits_to_f32, BlockIQ4NLx4, BlockIQ4XSx4, BlockKWidex4, BlockQ2Kx4, BlockQ3Kx4, BlockQ4Kx4,
    BlockQ4_0Widex4, BlockQ4_0x4, BlockQ4_1x4, BlockQ5Kx4, BlockQ5_0x4, BlockQ5_1x4, BlockQ6Kx4, BlockQ8_0x4,
    Interleaved, RowsInLanes,
};
use crate::quant::{quantize_row_bytes, Block, BlockIQ4NL, BlockQ4K, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1};
use serde::{Deserialize, Serialize};
use std::mem::size_of;

/// A ggml tensor element/block type. Discriminants are ggml's type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    IQ2XXS = 16,
    IQ2XS = 17,
    IQ3XXS = 18,
    IQ1S = 19,
    IQ4NL = 20,
    IQ3S = 21,
    IQ2S = 22,
    IQ4XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            16 => IQ2XXS,
            17 => IQ2XS,
            18 => IQ3XXS,
            19 => IQ1S,
            20 => IQ4NL,
            21 => IQ3S,
            22 => IQ2S,
            23 => IQ4XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4NL | MXFP4 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
            IQ2XXS | IQ2XS | IQ3XXS | IQ1S | IQ3S | IQ2S | IQ4XS | IQ1M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            IQ2XXS => 66,
            IQ2XS => 74,
            IQ3XXS => 98,
            IQ1S => 50,
            IQ4NL => 18,
            IQ3S => 110,
            IQ2S => 82,
            IQ4XS => 136,
            IQ1M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
        }
    }

    /// Bytes of one row of `n` elements (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes()
    }

    /// ggml's lower-case name (`q4_K`, `f16`, …).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_K",
            Q3K => "q3_K",
            Q4K => "q4_K",
            Q5K => "q5_K",
            Q6K => "q6_K",
            Q8K => "q8_K",
            IQ2XXS => "iq2_xxs",
            IQ2XS => "iq2_xs",
            IQ3XXS => "iq3_xxs",
            IQ1S => "iq1_s",
            IQ4NL => "iq4_nl",
            IQ3S => "iq3_s",
            IQ2S => "iq2_s",
            IQ4XS => "iq4_xs",
            IQ1M => "iq1_m",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            MXFP4 => "mxfp4",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            BF16 => "bf16",
        }
    }
}

/// How the loader lays a model's matrices out in the heap (chosen once per
/// model from its size, see [`crate::model::ModelLoader`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// F16 and BF16 matrices widened to f32 rows in lanes (see
    /// [`crate::model::F16_WIDEN_MAX_BYTES`]).
    pub widen_floats: bool,
    /// The 4- and 5-bit quants (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K)
    /// widened to one byte each (see [`crate::model::K_WIDEN_MAX_BYTES`]).
    pub widen_nibbles: bool,
}

impl Layout {
    /// The fastest layout: every widening on.
    pub const WIDE: Layout = Layout {
        widen_floats: true,
        widen_nibbles: true,
    };
}

/// A tensor type the engine computes with: one row of [`SUPPORTED_TYPES`].
pub struct TypeSpec {
    pub ty: GgmlType,
    /// Instructions per file byte the canister assumes for converting a
    /// tensor of this type into heap weights before it has measured one:
    /// about 1.5 × what the canister wasm measured with a per-tensor counter
    /// (qwen3-0.6b shapes: F32 2.5, F16 9.0 and BF16 6.6 for matrices
    /// interleaved four rows to the lanes; Q8_0 3.7, Q6_K 7.3; Q4_0 7.8, Q4_K
    /// 7.2 and Q5_K 9.7 into bytes, 2.9, 8.2 and 8.5 as nibbles; tensors of
    /// 0.5 to 300 MB; qwen2.5-0.5b shapes, 0.5 to 14 MB tensors: Q4_1 13.4,
    /// Q5_0 21.8, Q5_1 21.2, IQ4_NL 20.2, all into bytes). It must not be low: it lets a message take on a
    /// tensor it cannot finish.
    pub load_cost_per_byte: u64,
    /// The heap layout of a (rows, cols) matrix under `layout`.
    codec: fn(rows: usize, layout: Layout) -> &'static dyn Codec,
}

/// Every tensor type the engine computes with, and how.
pub const SUPPORTED_TYPES: &[TypeSpec] = &[
    TypeSpec {
        ty: GgmlType::F32,
        load_cost_per_byte: 5,
        codec: |rows, _| {
            if rows > 1 {
                &Lanes::<f32>::CODEC
            } else {
                &Plain::<f32>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::F16,
        load_cost_per_byte: 14,
        codec: |rows, l| {
            if l.widen_floats && rows > 1 {
                &Lanes::<half::f16>::CODEC
            } else {
                &Plain::<half::f16>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::BF16,
        load_cost_per_byte: 10,
        codec: |rows, l| {
            if l.widen_floats && rows > 1 {
                &Lanes::<half::bf16>::CODEC
            } else {
                &Plain::<half::bf16>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::Q8_0,
        load_cost_per_byte: 6,
        codec: |_, _| &Packed::<BlockQ8_0x4>::CODEC,
    },
    TypeSpec {
        ty: GgmlType::Q4_0,
        load_cost_per_byte: 12,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockQ4_0Widex4>::CODEC
            } else {
                &Packed::<BlockQ4_0x4>::CODEC
            }
        },
    },
    // The other 32-element types (llama.cpp's fallbacks for rows that are
    // not whole K-quant blocks, and older files' Q4_1/Q5_1) are widened to
    // one byte per quant (about 1.1 heap bytes per weight) when the model's
    // byte layouts fit, else kept as the file's blocks.
    TypeSpec {
        ty: GgmlType::Q4_1,
        load_cost_per_byte: 20,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockQ4_1x4>::CODEC
            } else {
                &FileBlockCodec::<BlockQ4_1>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::Q5_0,
        load_cost_per_byte: 33,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockQ5_0x4>::CODEC
            } else {
                &FileBlockCodec::<BlockQ5_0>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::Q5_1,
        load_cost_per_byte: 32,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockQ5_1x4>::CODEC
            } else {
                &FileBlockCodec::<BlockQ5_1>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::IQ4NL,
        load_cost_per_byte: 30,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockIQ4NLx4>::CODEC
            } else {
                &FileBlockCodec::<BlockIQ4NL>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::Q4K,
        load_cost_per_byte: 13,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockKWidex4<BlockQ4K>>::CODEC
            } else {
                &Packed::<BlockQ4Kx4>::CODEC
            }
        },
    },
    TypeSpec {
        ty: GgmlType::Q5K,
        load_cost_per_byte: 15,
        codec: |_, l| {
            if l.widen_nibbles {
                &Packed::<BlockKWidex4<BlockQ5K>>::CODEC
            } else {
                &Packed::<BlockQ5Kx4>::CODEC
            }
        },
    },
    TypeSpec {
        // Unpacked element by element (not yet word-wise as Q6_K): the
        // prior is what the canister's load measured, with room.
        ty: GgmlType::Q3K,
        load_cost_per_byte: 120,
        codec: |_, _| &Packed::<BlockQ3Kx4>::CODEC,
    },
    TypeSpec {
        // As Q3_K: unpacked element by element.
        ty: GgmlType::Q2K,
        load_cost_per_byte: 160,
        codec: |_, _| &Packed::<BlockQ2Kx4>::CODEC,
    },
    TypeSpec {
        // As Q3_K: unpacked element by element.
        ty: GgmlType::IQ4XS,
        load_cost_per_byte: 120,
        codec: |_, _| &Packed::<BlockIQ4XSx4>::CODEC,
    },
    TypeSpec {
        ty: GgmlType::Q6K,
        load_cost_per_byte: 11,
        codec: |_, _| &Packed::<BlockQ6Kx4>::CODEC,
    },
];

/// The row of [`SUPPORTED_TYPES`] for `ty`, if the engine computes with it.
pub fn type_spec(ty: GgmlType) -> Option<&'static TypeSpec> {
    SUPPORTED_TYPES.iter().find(|s| s.ty == ty)
}

/// The supported types' names, comma-separated (`f32, f16, …`).
pub fn supported_type_names() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|s| s.ty.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A heap layout: builds a matrix from file bytes, and says its size first.
trait Codec: Sync {
    /// The matrix of `bytes` (exactly `rows` rows of `cols` elements).
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String>;
    /// Heap bytes [`Codec::load`] will take.
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64;
}

/// Floats kept as they are in the file.
struct Plain<T>(std::marker::PhantomData<T>);
impl<T> Plain<T> {
    const CODEC: Self = Plain(std::marker::PhantomData);
}

/// Little-endian element bytes as a float type.
trait FromLe: crate::kernels::matrix::FloatElem {
    fn from_le(b: &[u8]) -> Self;
}
impl FromLe for f32 {
    fn from_le(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}
impl FromLe for half::f16 {
    fn from_le(b: &[u8]) -> half::f16 {
        half::f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}
impl FromLe for half::bf16 {
    fn from_le(b: &[u8]) -> half::bf16 {
        half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl<T: FromLe> Codec for Plain<T> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        let data = bytes.chunks_exact(size_of::<T>()).map(T::from_le).collect();
        Ok(Box::new(FloatMatrix::new(data, rows, cols)))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        rows as u64 * cols as u64 * size_of::<T>() as u64
    }
}

/// Float matrices of `T` as f32 rows in lanes ([`RowsInLanes`]).
struct Lanes<T>(std::marker::PhantomData<T>);
impl<T> Lanes<T> {
    const CODEC: Self = Lanes(std::marker::PhantomData);
}

/// Heap bytes of a (rows, cols) [`RowsInLanes`].
fn lanes_heap_bytes(rows: usize, cols: usize) -> u64 {
    rows.div_ceil(4) as u64 * 4 * cols as u64 * 4
}

impl Codec for Lanes<f32> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        Ok(Box::new(RowsInLanes::from_le_bytes(
            bytes,
            rows,
            cols,
            f32::from_le_bytes,
        )))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        lanes_heap_bytes(rows, cols)
    }
}

impl Codec for Lanes<half::f16> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        Ok(Box::new(
            RowsInLanes::from_le_bytes(bytes, rows, cols, |b| f16_bits_to_f32(u16::from_le_bytes(b)))
                .multiplying(ActFamily::F16),
        ))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        lanes_heap_bytes(rows, cols)
    }
}

impl Codec for Lanes<half::bf16> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        Ok(Box::new(
            RowsInLanes::from_le_bytes(bytes, rows, cols, |b| bf16_bits_to_f32(u16::from_le_bytes(b)))
                .multiplying(ActFamily::BF16),
        ))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        lanes_heap_bytes(rows, cols)
    }
}

/// Quantized blocks kept as the file has them ([`FileBlocks`]).
struct FileBlockCodec<S>(std::marker::PhantomData<S>);
impl<S> FileBlockCodec<S> {
    const CODEC: Self = FileBlockCodec(std::marker::PhantomData);
}

impl<S: FileBlockKernel> Codec for FileBlockCodec<S> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        Ok(Box::new(FileBlocks::<S>::from_le_bytes(bytes, rows, cols)?))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        rows as u64 * (cols / S::ELEMS) as u64 * size_of::<S>() as u64
    }
}

/// Quantized blocks repacked four rows at a time ([`Interleaved`]).
struct Packed<P>(std::marker::PhantomData<P>);
impl<P> Packed<P> {
    const CODEC: Self = Packed(std::marker::PhantomData);
}

impl<P: PackedKernel> Codec for Packed<P> {
    fn load(&self, bytes: &[u8], rows: usize, cols: usize) -> Result<Box<dyn WeightMatrix>, String> {
        Ok(Box::new(Interleaved::<P>::from_le_bytes(bytes, rows, cols)?))
    }
    fn heap_bytes(&self, rows: usize, cols: usize) -> u64 {
        rows.div_ceil(4) as u64 * (cols / P::Src::ELEMS) as u64 * size_of::<P>() as u64
    }
}

/// A weight matrix, row-major (rows, cols). A GGUF tensor with ggml dims
/// `[cols, rows]` is stored this way (ggml's dims[0] is contiguous).
/// Vectors are (1, len).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// The values in the layout the loader chose.
    pub data: Box<dyn WeightMatrix>,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        (self.ty, self.rows, self.cols) == (other.ty, other.rows, other.cols) && self.data.eq_dyn(&*other.data)
    }
}

/// A tensor is its matrix (the kernels take either).
impl WeightMatrix for Tensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn acts(&self) -> ActFamily {
        self.data.acts()
    }
    fn layout(&self) -> &'static str {
        self.data.layout()
    }
    fn heap_bytes(&self) -> usize {
        self.data.heap_bytes()
    }
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        self.data.row_to_f32(row, out)
    }
    fn dot_row(&self, row: usize, x: &[f32], xq: &PreparedActs) -> f32 {
        self.data.dot_row(row, x, xq)
    }
    fn dot_4rows(&self, row: usize, x: &[f32], xq: &PreparedActs) -> [f32; 4] {
        self.data.dot_4rows(row, x, xq)
    }
    fn matvec(&self, x: &[f32], xq: &PreparedActs, out: &mut [f32]) {
        self.data.matvec(x, xq, out)
    }
    fn matmul(&self, xs: &[f32], xqs: &[PreparedActs], out: &mut [f32]) {
        self.data.matmul(xs, xqs, out)
    }
}

impl Tensor {
    /// Whether the kernels can compute with this type.
    pub fn supported_type(ty: GgmlType) -> bool {
        type_spec(ty).is_some()
    }

    /// Copies little-endian file bytes into a typed (rows, cols) tensor in
    /// the fastest layout ([`Layout::WIDE`]). For block types, `cols` must be
    /// a multiple of the block size.
    pub fn from_le_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Tensor, String> {
        Tensor::from_le_bytes_in(ty, rows, cols, bytes, Layout::WIDE)
    }

    /// As [`Tensor::from_le_bytes`], in `layout`.
    pub fn from_le_bytes_in(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        layout: Layout,
    ) -> Result<Tensor, String> {
        rows.checked_mul(cols).ok_or("element count overflows")?;
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(format!(
                "rows of {cols} elements are not a whole number of {} blocks ({} elements each)",
                ty.name(),
                ty.block_size()
            ));
        }
        let expected = ty.row_bytes(cols).checked_mul(rows).ok_or("byte size overflows")?;
        if bytes.len() != expected {
            return Err(format!("expected {expected} bytes, got {}", bytes.len()));
        }
        let spec = type_spec(ty).ok_or_else(|| {
            format!(
                "type {} is not supported (supported: {})",
                ty.name(),
                supported_type_names()
            )
        })?;
        let data = (spec.codec)(rows, layout).load(bytes, rows, cols)?;
        Ok(Tensor { ty, rows, cols, data })
    }

    /// A row-major f32 (rows, cols) tensor (tests, synthetic models).
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Result<Tensor, String> {
        Tensor::quantize_from_f32(GgmlType::F32, rows, cols, values)
    }

    /// Quantizes (or converts) row-major f32 values into a (rows, cols)
    /// tensor of type `ty` with the scalar quantizers (tests, synthetic models).
    pub fn quantize_from_f32(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> Result<Tensor, String> {
        if values.len() != rows * cols {
            return Err(format!("{} values for a ({rows}, {cols}) tensor", values.len()));
        }
        let mut bytes = Vec::with_capacity(ty.row_bytes(cols) * rows);
        for row in values.chunks_exact(cols.max(1)) {
            bytes.extend(quantize_row_bytes(ty, row)?);
        }
        Tensor::from_le_bytes(ty, rows, cols, &bytes)
    }

    /// Heap bytes a (rows, cols) tensor of type `ty` will take once loaded
    /// in `layout` ([`WeightMatrix::heap_bytes`]); a type the engine does not
    /// compute with counts its file bytes.
    pub fn planned_heap_bytes(ty: GgmlType, rows: usize, cols: usize, layout: Layout) -> u64 {
        match type_spec(ty) {
            Some(spec) => (spec.codec)(rows, layout).heap_bytes(rows, cols),
            None => ty.row_bytes(cols) as u64 * rows as u64,
        }
    }

    /// All values as f32, row-major (dequantizing block types).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.data.row_to_f32(r, row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_names_come_from_the_table() {
        assert_eq!(
            supported_type_names(),
            "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q4_K, q5_K, q3_K, q2_K, iq4_xs, q6_K"
        );
        assert!(type_spec(GgmlType::IQ2XXS).is_none());
        let err = Tensor::from_le_bytes(GgmlType::IQ2XXS, 1, 256, &[0; 66]).unwrap_err();
        assert!(
            err.contains("iq2_xxs") && err.contains(&supported_type_names()),
            "{err}"
        );
    }
}
