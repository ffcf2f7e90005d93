//! Scalar dequantizers: the oracle for every quantized kernel.
//! Each writes `blocks.len() * elements_per_block` values into `y`.

use super::{
    nibble, quant5, scale_min_k4, BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, KVALUES_IQ4NL, QK8_0, QK_K,
};

/// `y = q * d` per block of 32.
pub fn dequantize_row_q8_0(blocks: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// `y = (q - 8) * d`; byte `j` holds elements `j` (low nibble) and `j + 16`.
pub fn dequantize_row_q4_0(blocks: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (j, &q) in b.qs.iter().enumerate() {
            out[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `y = q * d + m`; nibbles as Q4_0.
pub fn dequantize_row_q4_1(blocks: &[BlockQ4_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, o) in out.iter_mut().enumerate() {
            *o = nibble(&b.qs, j) as f32 * d + m;
        }
    }
}

/// `y = (q - 16) * d`, `q` five bits ([`quant5`]).
pub fn dequantize_row_q5_0(blocks: &[BlockQ5_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (j, o) in out.iter_mut().enumerate() {
            *o = (quant5(&b.qh, &b.qs, j) as i32 - 16) as f32 * d;
        }
    }
}

/// `y = q * d + m`, `q` five bits ([`quant5`]).
pub fn dequantize_row_q5_1(blocks: &[BlockQ5_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, o) in out.iter_mut().enumerate() {
            *o = quant5(&b.qh, &b.qs, j) as f32 * d + m;
        }
    }
}

/// `y = d * KVALUES_IQ4NL[q]`; nibbles as Q4_0.
pub fn dequantize_row_iq4_nl(blocks: &[BlockIQ4NL], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK8_0);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (j, o) in out.iter_mut().enumerate() {
            *o = d * KVALUES_IQ4NL[nibble(&b.qs, j) as usize] as f32;
        }
    }
}

/// Sub-block `j` (32 elements) is `d * sc_j * q - dmin * m_j`.
pub fn dequantize_row_q4_k(blocks: &[BlockQ4K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (c, chunk) in out.chunks_exact_mut(64).enumerate() {
            let q = &b.qs[32 * c..32 * c + 32];
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            for l in 0..32 {
                chunk[l] = d1 * (q[l] & 0xF) as f32 - m1;
                chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// As Q4_K with a fifth bit: sub-block `j`'s element `l` has its high bit at
/// bit `j` of `qh[l]`.
pub fn dequantize_row_q5_k(blocks: &[BlockQ5K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (c, chunk) in out.chunks_exact_mut(64).enumerate() {
            let ql = &b.qs[32 * c..32 * c + 32];
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                chunk[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                chunk[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// The quant of element `e` (0..256) of a Q2_K block, in 0..=3.
#[inline]
pub(crate) fn q2k_quant(b: &BlockQ2K, e: usize) -> u8 {
    let (h, r) = (e / 128, e % 128);
    (b.qs[32 * h + r % 32] >> (2 * (r / 32))) & 3
}

/// Group `g` (16 elements) is `(d * sc_g) * q - dmin * m_g`, in ggml's
/// order of operations.
pub fn dequantize_row_q2_k(blocks: &[BlockQ2K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (g, group) in out.chunks_exact_mut(16).enumerate() {
            let sc = b.scales[g];
            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
            for (i, o) in group.iter_mut().enumerate() {
                *o = dl * q2k_quant(b, 16 * g + i) as f32 - ml;
            }
        }
    }
}

/// Sub-block `j`'s (0..8) scale of an IQ4_XS block, minus 32.
#[inline]
pub(crate) fn iq4xs_scale(b: &BlockIQ4XS, j: usize) -> i8 {
    let lo = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF;
    let hi = ((b.scales_h >> (2 * j)) & 3) as u8;
    (lo | (hi << 4)) as i8 - 32
}

/// The [`KVALUES_IQ4NL`] index of element `e` (0..256) of an IQ4_XS block.
#[inline]
pub(crate) fn iq4xs_index(b: &BlockIQ4XS, e: usize) -> u8 {
    let qs: &[u8; 16] = b.qs[16 * (e / 32)..16 * (e / 32) + 16].try_into().expect("16 bytes");
    nibble(qs, e % 32)
}

/// Sub-block `j` (32 elements) is `(d * (ls_j - 32)) * kvalues[q]`.
pub fn dequantize_row_iq4_xs(blocks: &[BlockIQ4XS], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (j, sub) in out.chunks_exact_mut(32).enumerate() {
            let dl = d * iq4xs_scale(b, j) as f32;
            for (i, o) in sub.iter_mut().enumerate() {
                *o = dl * KVALUES_IQ4NL[iq4xs_index(b, 32 * j + i) as usize] as f32;
            }
        }
    }
}

/// Scale `j` (0..16) of a Q3_K block, minus 32 (see [`BlockQ3K`]).
#[inline]
pub(crate) fn q3k_scale(s: &[u8; 12], j: usize) -> i8 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i8 - 32
}

/// The quant of element `e` (0..256) of a Q3_K block, in -4..=3.
#[inline]
pub(crate) fn q3k_quant(b: &BlockQ3K, e: usize) -> i8 {
    let (h, r) = (e / 128, e % 128);
    let (k, l) = (r / 32, r % 32);
    let low = ((b.qs[32 * h + l] >> (2 * k)) & 3) as i8;
    let high_set = (b.hmask[l] >> (e / 32)) & 1 == 1;
    if high_set {
        low
    } else {
        low - 4
    }
}

/// Sub-block `j` (16 elements) is `d * (scale_j - 32) * q`.
pub fn dequantize_row_q3_k(blocks: &[BlockQ3K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            *o = d * q3k_scale(&b.scales, i / 16) as f32 * q3k_quant(b, i) as f32;
        }
    }
}

/// The 6-bit quant of element `i` (0..256) of a Q6_K block, minus 32.
///
/// Each half (128 elements) uses 64 bytes of `ql` and 32 of `qh`: element
/// `l + 32k` (l < 32, k < 4) takes its low 4 bits from `ql[l + 32 (k & 1)]`
/// (low nibble for k < 2, high for k >= 2) and its high 2 bits from bits
/// `2k..2k+2` of `qh[l]`.
#[inline]
pub(crate) fn q6k_quant(b: &BlockQ6K, i: usize) -> i8 {
    let (half, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let ql = b.ql[64 * half + l + 32 * (k & 1)];
    let lo = if k < 2 { ql & 0xF } else { ql >> 4 };
    let hi = (b.qh[32 * half + l] >> (2 * k)) & 3;
    (lo | (hi << 4)) as i8 - 32
}

/// Sub-block `j` (16 elements) is `d * scales[j] * (q - 32)`.
pub fn dequantize_row_q6_k(blocks: &[BlockQ6K], y: &mut [f32]) {
    debug_assert_eq!(y.len(), blocks.len() * QK_K);
    for (b, out) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * q6k_quant(b, i) as f32;
        }
    }
}
