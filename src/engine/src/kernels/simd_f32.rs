//! The f32 matvec over [`RowsInLanes`] matrices, written against the lane
//! types of [`super::simd`] (wasm SIMD128 in the canister, plain arrays
//! elsewhere): each output bit for bit [`super::dot_f32`] of its row.
//!
//! [`super::dot_f32`] sums element `c` into lane `c % 4`, then
//! `(l0 + l1) + (l2 + l3)`, then the tail. Here a vector holds one column of
//! four rows, so each of the four lane classes `l` gets its own accumulator
//! vector `A_l` (lane `r` = row `r`'s lane `l`), fed columns `l, l + 4, …`
//! in order: the same additions in the same order, four rows at a time.
//!
//! Activation-stationary: the columns of a 128-wide chunk are splatted into
//! wasm locals once per matvec, then every row group runs four chains of
//! 32 `acc + w · x` on the wasm stack, 7 weighted instructions per 4
//! multiply-adds (the load and its address, the `local.get` of `x`, `mul`
//! 2, `add` 2) plus one accumulator load and store per chain: about 1.8
//! per multiply-add, against 2.2 for four separate row dot products.

use super::simd::F32x4;
use crate::quant::packed::RowsInLanes;

/// Columns per stationary chunk (64 per lane class): the accumulators' load
/// and store and the per-group loop are spread over 1,024 multiply-adds.
const CHUNK: usize = 256;
/// The smaller chunks that take most of what is left of a row.
const MEDIUM: usize = 32;
const SMALL: usize = 16;

/// `out = W x` for a float matrix in the rows-in-lanes layout.
pub fn matvec_rows_in_lanes(w: &RowsInLanes, x: &[f32], out: &mut [f32]) {
    let (cols, groups) = (w.cols(), w.groups());
    assert_eq!(x.len(), cols);
    assert_eq!(out.len(), w.rows());
    let n4 = cols / 4 * 4;
    // acc[g][l] = A_l of group g. Filled by the first pass (each lane class
    // starting from 0.0, as `dot_f32`'s lanes do), not zeroed beforehand.
    let mut acc: Vec<[F32x4; 4]> = Vec::with_capacity(groups);
    let base = w.group(0).as_ptr();
    let stride = cols * 4;
    let mut c0 = 0;
    /// One chunk of every group: pushes the accumulators on the first pass.
    macro_rules! pass {
        ($chunk:ident, $c:expr) => {{
            // SAFETY: c0 + C <= cols.
            let xs: [F32x4; $c] = std::array::from_fn(|i| F32x4::splat(unsafe { *x.get_unchecked(c0 + i) }));
            // SAFETY: group g's columns c0..c0 + C are at base + g · stride + 4 c0.
            unsafe {
                let mut pw = base.add(4 * c0);
                if acc.is_empty() {
                    for _ in 0..groups {
                        let mut a = [F32x4::zero(); 4];
                        $chunk::<true>(pw, &xs, &mut a);
                        acc.push(a);
                        pw = pw.add(stride);
                    }
                } else {
                    for a in acc.iter_mut() {
                        $chunk::<false>(pw, &xs, a);
                        pw = pw.add(stride);
                    }
                }
            }
            c0 += $c;
        }};
    }
    while c0 + CHUNK <= n4 {
        pass!(chunk256, CHUNK);
    }
    while c0 + MEDIUM <= n4 {
        pass!(chunk32, MEDIUM);
    }
    while c0 + SMALL <= n4 {
        pass!(chunk16, SMALL);
    }
    if acc.is_empty() {
        acc.resize(groups, [F32x4::zero(); 4]);
    }
    // The last columns of whole fours, one column of four rows at a time.
    for (g, a) in acc.iter_mut().enumerate() {
        for (c, &xc) in x.iter().enumerate().take(n4).skip(c0) {
            // SAFETY: c < cols.
            unsafe {
                let l = c % 4;
                a[l] = a[l].add(F32x4::load(base.add(g * stride + c * 4)).mul(F32x4::splat(xc)));
            }
        }
    }
    let full = w.rows() / 4;
    for (g, a) in acc.iter().enumerate() {
        let mut sum = a[0].add(a[1]).add(a[2].add(a[3]));
        for (c, &xc) in x.iter().enumerate().skip(n4) {
            // SAFETY: c < cols.
            sum = sum.add(unsafe { F32x4::load(base.add(g * stride + c * 4)) }.mul(F32x4::splat(xc)));
        }
        if g < full {
            // SAFETY: rows 4g..4g + 4 < rows.
            unsafe { sum.store(out.as_mut_ptr().add(4 * g)) };
        } else {
            for (o, v) in out[4 * g..].iter_mut().zip(sum.lanes()) {
                *o = v;
            }
        }
    }
}

/// Defines `$name::<FIRST>(pw, xs, a)`: a chunk of `$c` columns of a group
/// (`pw` = its first column) added to the four lane-class accumulators `a`
/// (to 0.0 instead when `FIRST`), each as one chain of `$c / 4` terms in
/// column order, stored as soon as it ends (straight-line: constant load
/// offsets, each chain on the wasm stack; returning the four chains
/// together made LLVM hoist every load into a local, 2 more per term).
macro_rules! chunk_fn {
    ($name:ident, $c:expr, [$($k:literal),*]) => {
        /// # Safety
        /// `pw..pw + 4 · C` must be readable.
        #[inline(always)]
        unsafe fn $name<const FIRST: bool>(pw: *const f32, xs: &[F32x4; $c], a: &mut [F32x4; 4]) {
            macro_rules! chain {
                ($l:literal) => {{
                    let mut s = if FIRST { F32x4::zero() } else { a[$l] };
                    $(
                        s = s.add(F32x4::load(pw.add(4 * (4 * $k + $l))).mul(xs[4 * $k + $l]));
                    )*
                    a[$l] = s;
                }};
            }
            chain!(0);
            chain!(1);
            chain!(2);
            chain!(3);
        }
    };
}
chunk_fn!(
    chunk256,
    CHUNK,
    [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
        30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
        58, 59, 60, 61, 62, 63
    ]
);
chunk_fn!(chunk32, MEDIUM, [0, 1, 2, 3, 4, 5, 6, 7]);
chunk_fn!(chunk16, SMALL, [0, 1, 2, 3]);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{dot_f32, pseudo};

    #[test]
    fn rows_in_lanes_matvec_is_dot_f32_per_row() {
        for (rows, cols) in [(1, 1), (3, 7), (4, 64), (5, 67), (8, 130), (9, 288), (6, 200)] {
            let w = pseudo(rows * cols, rows as u32 * 31 + cols as u32);
            let mut x = pseudo(cols, 5);
            if cols > 2 {
                x[2] = 1e30; // overflow in one lane class
                x[cols - 1] = -0.0;
            }
            let packed = RowsInLanes::new(&w, rows, cols, |v| v);
            let mut got = vec![f32::NAN; rows];
            matvec_rows_in_lanes(&packed, &x, &mut got);
            for r in 0..rows {
                let want = dot_f32(&w[r * cols..(r + 1) * cols], &x);
                assert_eq!(got[r].to_bits(), want.to_bits(), "({rows}, {cols}) row {r}");
                let mut row = vec![0.0; cols];
                packed.row(r, &mut row);
                assert_eq!(row, w[r * cols..(r + 1) * cols]);
            }
        }
    }
}
