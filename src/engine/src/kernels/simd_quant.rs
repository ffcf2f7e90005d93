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
use crate::quant::packed::BlockQ8_0x4;
use crate::quant::BlockQ8A;

/// Σ over 32 lanes of `w · x` as four i32 partial sums.
/// |w| ≤ 128, |x| ≤ 127 (activations are clamped to ±127), so a pair of
/// products is at most 32,512 in magnitude and fits i16.
#[inline(always)]
fn dot32(w0: I8x16, w1: I8x16, x0: I8x16, x1: I8x16) -> I32x4 {
    let a = I16x8::mul_low(w0, x0).add(I16x8::mul_high(w0, x0));
    let b = I16x8::mul_low(w1, x1).add(I16x8::mul_high(w1, x1));
    I32x4::sum_pairs(a).add(I32x4::sum_pairs(b))
}

/// Rows `4g..4g + 4` of a packed Q8_0 matrix (`w` = the group's blocks)
/// against one activation vector: each lane bit for bit
/// [`super::quant::vec_dot_q8_0_q8_0`] of that row.
#[inline]
pub fn dot4_q8_0(w: &[BlockQ8_0x4], x: &[BlockQ8A]) -> [f32; 4] {
    assert_eq!(w.len(), x.len());
    let mut acc = F32x4::zero();
    // Pointer walks (not indexing): each load is then `base + constant`,
    // which becomes the load's free `offset=` immediate.
    let (mut pw, mut px) = (w.as_ptr(), x.as_ptr());
    // SAFETY: pw < end, and x has as many blocks as w, so both point at a
    // valid block; every load reads 16 bytes of a `qs` array or 4 f32 of `d`.
    unsafe {
        let end = pw.add(w.len());
        while pw < end {
            let (wb, xb) = (&*pw, &*px);
            let (x0, x1) = (I8x16::load(xb.qs.as_ptr()), I8x16::load(xb.qs.as_ptr().add(16)));
            let row = |r: usize| {
                let q = wb.qs[r].as_ptr();
                dot32(I8x16::load(q), I8x16::load(q.add(16)), x0, x1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::vec_dot_q8_0_q8_0;
    use crate::quant::packed::Interleaved;
    use crate::quant::{blocks_to_le_bytes, quantize_act_q8, BlockQ8_0};
    use half::f16;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

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
    fn dot4_q8_0_is_the_oracle_bit_for_bit() {
        for (rows, cols) in [(4, 32), (8, 96), (12, 288), (5, 64)] {
            let blocks = q8_0_rows(rows, cols, rows as u32 * 7 + cols as u32);
            let packed = Interleaved::<BlockQ8_0x4>::from_le_bytes(&blocks_to_le_bytes(&blocks), rows, cols).unwrap();
            let mut x = pseudo(cols, 3);
            x[0] = 1e30; // a block with one huge activation
            let mut xq = Vec::new();
            quantize_act_q8(&x, &mut xq);
            let per_row = cols / 32;
            for g in 0..rows.div_ceil(4) {
                let got = dot4_q8_0(packed.group(g), &xq);
                for (lane, got) in got.iter().enumerate() {
                    let r = 4 * g + lane;
                    if r < rows {
                        let want = vec_dot_q8_0_q8_0(&blocks[r * per_row..(r + 1) * per_row], &xq);
                        assert_eq!(got.to_bits(), want.to_bits(), "({rows}, {cols}) row {r}");
                    } else {
                        assert_eq!(*got, 0.0, "padding row");
                    }
                }
            }
        }
    }
}
