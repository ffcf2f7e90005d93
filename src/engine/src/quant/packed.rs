//! Quantized weights repacked at load into the layout the SIMD kernels want.
//!
//! A ggml file stores a matrix row by row, each row a run of blocks with an
//! f16 scale. The kernels compute four rows at a time (the activations are
//! loaded once for the four), and an f16 scale costs a software conversion
//! per block in wasm. So each quantized matrix is regrouped at load:
//!
//! - rows are taken in **groups of four**; block `j` of the four rows is
//!   stored together as one packed block (`[`Interleaved::group`]`), so a
//!   kernel walks one pointer through a group;
//! - f16 scales are **widened to f32 once** (exactly: every f16 is an f32),
//!   and the K-quants' 6-bit scales are unpacked to plain integers;
//! - a matrix whose row count is not a multiple of four is padded with zero
//!   rows (never read back).
//!
//! Every packed block can give back the ggml block it came from
//! ([`PackedBlock::unpack`], bit for bit), so the scalar oracles in
//! [`crate::kernels::quant`] stay the definition of every dot product and the
//! SIMD kernels are tested against them on the original blocks.

use super::{Block, BlockQ8_0, QK8_0};
use half::f16;
use std::mem::size_of;

/// A block of four rows, built from (and convertible back to) ggml blocks.
pub trait PackedBlock: Copy + Sized + 'static {
    /// The ggml block this packs.
    type Src: Block;
    /// Packs block `j` of four consecutive rows (padding rows are `None`).
    fn pack(rows: [Option<Self::Src>; 4]) -> Self;
    /// The ggml block of row `lane` (0..4), exactly as it was in the file.
    fn unpack(&self, lane: usize) -> Self::Src;
}

/// Q8_0 for four rows: f32 scales, then each row's 32 quants.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0x4 {
    pub d: [f32; 4],
    pub qs: [[i8; QK8_0]; 4],
}
const _: () = assert!(size_of::<BlockQ8_0x4>() == 144);

impl PackedBlock for BlockQ8_0x4 {
    type Src = BlockQ8_0;
    fn pack(rows: [Option<BlockQ8_0>; 4]) -> Self {
        let rows = rows.map(|b| {
            b.unwrap_or(BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; QK8_0],
            })
        });
        BlockQ8_0x4 {
            d: rows.map(|b| b.d.to_f32()),
            qs: rows.map(|b| b.qs),
        }
    }
    fn unpack(&self, lane: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: f16::from_f32(self.d[lane]),
            qs: self.qs[lane],
        }
    }
}

/// A quantized (rows, cols) matrix in groups of four rows: group `g` holds
/// rows `4g..4g + 4`, its blocks in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Interleaved<P: PackedBlock> {
    blocks: Vec<P>,
    blocks_per_row: usize,
    rows: usize,
}

impl<P: PackedBlock> Interleaved<P> {
    /// Packs a matrix from its file bytes (`rows` rows of `cols` elements,
    /// `cols` a multiple of the block size, `bytes` exactly the matrix).
    pub fn from_le_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        let src = P::Src::BYTES;
        let per_row = cols / P::Src::ELEMS;
        if !cols.is_multiple_of(P::Src::ELEMS) || Some(bytes.len()) != rows.checked_mul(per_row * src) {
            return Err(format!(
                "{} bytes are not {rows} rows of {cols} {} elements",
                bytes.len(),
                P::Src::TYPE.name()
            ));
        }
        let groups = rows.div_ceil(4);
        let mut blocks = Vec::with_capacity(groups * per_row);
        for g in 0..groups {
            for j in 0..per_row {
                blocks.push(P::pack(std::array::from_fn(|lane| {
                    let r = 4 * g + lane;
                    (r < rows).then(|| {
                        let at = (r * per_row + j) * src;
                        P::Src::read(&bytes[at..at + src])
                    })
                })));
            }
        }
        Ok(Interleaved {
            blocks,
            blocks_per_row: per_row,
            rows,
        })
    }

    /// The packed blocks of rows `4g..4g + 4`.
    #[inline]
    pub fn group(&self, g: usize) -> &[P] {
        &self.blocks[g * self.blocks_per_row..(g + 1) * self.blocks_per_row]
    }

    /// Row `row` as ggml blocks (the oracle's input).
    pub fn row_blocks(&self, row: usize) -> Vec<P::Src> {
        debug_assert!(row < self.rows);
        self.group(row / 4).iter().map(|b| b.unpack(row % 4)).collect()
    }

    /// Number of rows (without padding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Heap bytes of the packed blocks.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len() * size_of::<P>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{blocks_to_le_bytes, quantize_row_q8_0};

    #[test]
    fn q8_0_packs_and_unpacks_every_row_exactly_with_padding() {
        let (rows, cols) = (6, 96);
        let src: Vec<BlockQ8_0> = (0..rows)
            .flat_map(|r| {
                let v: Vec<f32> = (0..cols).map(|c| ((r * 31 + c * 7) % 23) as f32 - 11.0).collect();
                quantize_row_q8_0(&v)
            })
            .collect();
        let packed = Interleaved::<BlockQ8_0x4>::from_le_bytes(&blocks_to_le_bytes(&src), rows, cols).unwrap();
        assert_eq!(packed.group(1).len(), 3);
        for r in 0..rows {
            assert_eq!(packed.row_blocks(r), src[r * 3..r * 3 + 3]);
        }
        assert!(Interleaved::<BlockQ8_0x4>::from_le_bytes(&[0; 33], 1, 32).is_err());
    }
}
