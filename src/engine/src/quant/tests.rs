//! What must hold for every block type: the layout round-trips through file
//! bytes, the quantized dot products agree with the scalar dequantizer to
//! float rounding (random and edge-case blocks), and quantization error
//! stays within ggml's typical figures.

use super::*;
use crate::kernels::acts::{dequantize_act_q8, dequantize_act_q8k, quantize_act_q8_0, quantize_act_q8k};
use crate::kernels::{self, quant as qk, PreparedActs, WeightMatrix};
use crate::model::Tensor;
use crate::synth::Rng;

/// Every quantized weight type, with its name for messages.
const QUANT_TYPES: [GgmlType; 12] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::IQ4XS,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn abs_dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum()
}

/// The activations a dot product with `ty` weights actually sees, as f32.
fn dequantized_acts(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let family = Tensor::quantize_from_f32(ty, 1, x.len(), x).unwrap().acts();
    match PreparedActs::new(family, x) {
        PreparedActs::Float => x.to_vec(),
        PreparedActs::F16(v) | PreparedActs::BF16(v) => v,
        PreparedActs::Q8(b) => dequantize_act_q8(&b),
        PreparedActs::Q8K(b) => dequantize_act_q8k(&b),
    }
}

/// A random block of `B::BYTES` bytes whose f16 scales are replaced by `scale(i)`.
fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Offsets of the f16 scale fields in a block of `ty`.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::IQ4NL => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        GgmlType::Q3K => &[108],
        GgmlType::Q2K => &[80, 82],
        GgmlType::IQ4XS => &[0],
        _ => &[],
    }
}

/// A (rows, cols) tensor of `ty` from raw block bytes, with every f16 scale
/// set by `scale`, and its bytes.
fn tensor_from_random_blocks(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
    scale: &mut dyn FnMut(&mut Rng) -> f32,
) -> (Tensor, Vec<u8>) {
    let mut bytes = random_bytes(rng, ty.row_bytes(cols) * rows);
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &off in scale_offsets(ty) {
            let d = half::f16::from_f32(scale(rng)).to_bits().to_le_bytes();
            block[off..off + 2].copy_from_slice(&d);
        }
    }
    (Tensor::from_le_bytes(ty, rows, cols, &bytes).unwrap(), bytes)
}

/// `values` quantized to a (rows, cols) tensor of `ty`, and its bytes.
fn quantized(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> (Tensor, Vec<u8>) {
    let bytes: Vec<u8> = values
        .chunks_exact(cols)
        .flat_map(|r| quantize_row_bytes(ty, r).unwrap())
        .collect();
    (Tensor::from_le_bytes(ty, rows, cols, &bytes).unwrap(), bytes)
}

/// What ggml's Q4_1 and Q5_1 dot products add to the exact product of the
/// dequantized row and activations: each block's offset `m` times
/// `block_q8_1.s` (the activations' sum rounded to f16) instead of the
/// exact sum, with the magnitude of those terms. (0, 0) for other types.
fn offset_rounding(ty: GgmlType, row_bytes: &[u8], x: &[f32]) -> (f64, f64) {
    if !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        return (0.0, 0.0);
    }
    let PreparedActs::Q8(acts) = PreparedActs::new(kernels::ActFamily::Q8, x) else {
        unreachable!("Q8 activations")
    };
    let mut shift = 0.0;
    let mut mag = 0.0;
    for (block, a) in row_bytes.chunks_exact(ty.block_bytes()).zip(&acts) {
        let m = half::f16::from_bits(u16::from_le_bytes([block[2], block[3]])).to_f64();
        let sum: i32 = a.qs.iter().map(|&q| q as i32).sum();
        shift += m * (a.s as f64 - a.d as f64 * sum as f64);
        mag += (m * a.s as f64).abs();
    }
    (shift, mag)
}

/// The oracle check: every row's quantized dot product equals
/// (dequantized row) · (dequantized int8 activations) up to f32 rounding,
/// with ggml's f16 activation sums for the offsets of Q4_1 and Q5_1.
fn assert_matches_oracle((w, bytes): &(Tensor, Vec<u8>), x: &[f32], what: &str) {
    let xd = dequantized_acts(w.ty, x);
    let wd = w.to_f32_vec();
    let mut out = vec![0.0f32; w.rows];
    kernels::matvec(w, x, &mut out);
    for (r, row_bytes) in bytes.chunks_exact(w.ty.row_bytes(w.cols)).enumerate() {
        let row = &wd[r * w.cols..(r + 1) * w.cols];
        let (shift, shift_mag) = offset_rounding(w.ty, row_bytes, x);
        let exact = dot_f64(row, &xd) + shift;
        let mag = abs_dot_f64(row, &xd) + shift_mag;
        let tol = 1e-5 * mag + 1e-30;
        assert!(
            (out[r] as f64 - exact).abs() <= tol,
            "{what} {}: row {r}: kernel {} vs oracle {exact} (tolerance {tol})",
            w.ty.name(),
            out[r]
        );
    }
}

#[test]
fn block_sizes_match_the_type_table() {
    assert_eq!(BlockQ8_0::BYTES, GgmlType::Q8_0.block_bytes());
    assert_eq!(BlockQ4_0::BYTES, GgmlType::Q4_0.block_bytes());
    assert_eq!(BlockQ4_1::BYTES, GgmlType::Q4_1.block_bytes());
    assert_eq!(BlockQ5_0::BYTES, GgmlType::Q5_0.block_bytes());
    assert_eq!(BlockQ5_1::BYTES, GgmlType::Q5_1.block_bytes());
    assert_eq!(BlockIQ4NL::BYTES, GgmlType::IQ4NL.block_bytes());
    assert_eq!(BlockQ4K::BYTES, GgmlType::Q4K.block_bytes());
    assert_eq!(BlockQ5K::BYTES, GgmlType::Q5K.block_bytes());
    assert_eq!(BlockQ6K::BYTES, GgmlType::Q6K.block_bytes());
    assert_eq!(BlockQ3K::BYTES, GgmlType::Q3K.block_bytes());
    assert_eq!(BlockQ2K::BYTES, GgmlType::Q2K.block_bytes());
    assert_eq!(BlockIQ4XS::BYTES, GgmlType::IQ4XS.block_bytes());
    // ggml's Q8_K fields first, then the in-memory extras (sums per 32, i16 quants).
    assert_eq!(std::mem::offset_of!(BlockQ8K, bsums32), GgmlType::Q8K.block_bytes());
    assert_eq!(BlockQ4K::ELEMS, GgmlType::Q4K.block_size());
}

#[test]
fn blocks_round_trip_through_file_bytes() {
    fn check<B: Block + PartialEq + std::fmt::Debug>(seed: u64) {
        let mut rng = Rng::new(seed);
        let bytes = random_bytes(&mut rng, 3 * B::BYTES);
        let blocks: Vec<B> = blocks_from_le_bytes(&bytes).unwrap();
        assert_eq!(blocks_to_le_bytes(&blocks), bytes, "{}", B::TYPE.name());
        assert!(blocks_from_le_bytes::<B>(&bytes[1..]).is_err());
    }
    check::<BlockQ8_0>(1);
    check::<BlockQ4_0>(2);
    check::<BlockQ4K>(3);
    check::<BlockQ5K>(4);
    check::<BlockQ6K>(5);
    check::<BlockQ4_1>(6);
    check::<BlockQ5_0>(7);
    check::<BlockQ5_1>(8);
    check::<BlockIQ4NL>(9);
    check::<BlockQ3K>(10);
    check::<BlockQ2K>(11);
    check::<BlockIQ4XS>(12);
}

#[test]
fn q5_0_and_iq4_nl_layouts_by_hand() {
    // Q5_0: d, then qh as a little-endian u32 (bit j: element j's fifth bit),
    // then nibbles as Q4_0. Element 17: high nibble of qs[1], bit 17 = byte 2's bit 1.
    let mut bytes = vec![0u8; 22];
    bytes[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    bytes[2 + 2] = 0b10; // qh bit 17
    bytes[6 + 1] = 0x3 << 4; // element 17's low bits: 3
    bytes[6] = 0x0F; // element 0: 15, fifth bit 0
    let b = BlockQ5_0::read(&bytes);
    let mut y = [0.0f32; 32];
    b.dequantize(&mut y);
    assert_eq!(y[17], (19 - 16) as f32 * 0.5);
    assert_eq!(y[0], (15 - 16) as f32 * 0.5);
    assert_eq!(y[1], -16.0 * 0.5);
    // IQ4_NL: index 0 is -127, 15 is 113.
    let mut bytes = vec![0u8; 18];
    bytes[..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
    bytes[2] = 0xF0; // element 0: index 0, element 16: index 15
    let b = BlockIQ4NL::read(&bytes);
    let mut y = [0.0f32; 32];
    b.dequantize(&mut y);
    assert_eq!((y[0], y[16], y[1]), (-127.0 * 0.25, 113.0 * 0.25, -127.0 * 0.25));
}

#[test]
fn q4_0_layout_by_hand() {
    // d = 0.5; byte j = (low j % 16, high 15 - j % 16)
    let mut bytes = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
    bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let b = BlockQ4_0::read(&bytes);
    let mut y = [0.0f32; 32];
    b.dequantize(&mut y);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
    }
}

#[test]
fn k_scale_packing_round_trips_every_value() {
    for v in 0..64u8 {
        let sc: [u8; 8] = std::array::from_fn(|j| (v + 7 * j as u8) % 64);
        let m: [u8; 8] = std::array::from_fn(|j| (v + 13 * j as u8 + 5) % 64);
        let packed = pack_scale_min_k4(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (sc[j], m[j]));
        }
    }
}

#[test]
fn q6_k_layout_by_hand() {
    // ggml's dequantize_row_q6_K, written out for element 200 (second half,
    // l = 8, k = 2): low nibble is ql[64 + 8] >> 4, high bits (qh[32 + 8] >> 4) & 3,
    // scale index 8 + 2*2 + 0.
    let mut rng = Rng::new(9);
    let bytes = random_bytes(&mut rng, 210);
    let mut b = BlockQ6K::read(&bytes);
    b.d = half::f16::from_f32(0.25);
    let q = ((b.ql[72] >> 4) | (((b.qh[40] >> 4) & 3) << 4)) as i32 - 32;
    let mut y = [0.0f32; 256];
    b.dequantize(&mut y);
    assert_eq!(y[200], 0.25 * b.scales[12] as f32 * q as f32);
}

#[test]
fn quantizers_round_trip_exactly_representable_rows() {
    // Q8_0: integers with a max of 127 come back exactly.
    let mut x: Vec<f32> = (0..64).map(|i| ((i * 37) % 255) as f32 - 127.0).collect();
    x[0] = -127.0;
    x[32] = 127.0;
    let mut y = vec![0.0; 64];
    dequantize_row_q8_0(&quantize_row_q8_0(&x), &mut y);
    assert_eq!(x, y);
    // Q4_0: values (q - 8) with q in 0..16 and the -8 present.
    let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32 - 8.0).collect();
    let mut y = vec![0.0; 32];
    dequantize_row_q4_0(&quantize_row_q4_0(&x), &mut y);
    assert_eq!(x, y);
}

/// Relative RMSE of quantize → dequantize on N(0, 1) data.
fn relative_rmse(ty: GgmlType, x: &[f32]) -> f64 {
    let t = Tensor::quantize_from_f32(ty, 1, x.len(), x).unwrap();
    let y = t.to_f32_vec();
    let err: f64 = x.iter().zip(&y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn round_trip_error_is_within_ggml_figures() {
    let x = gaussian(256 * 64, 11);
    let rmse: Vec<(GgmlType, f64)> = QUANT_TYPES.iter().map(|&ty| (ty, relative_rmse(ty, &x))).collect();
    for (ty, e) in &rmse {
        eprintln!("relative RMSE {}: {e:.5}", ty.name());
    }
    let get = |ty| rmse.iter().find(|(t, _)| *t == ty).unwrap().1;
    // Measured on this data: q8_0 0.0053, q6_K 0.0177, q5_K 0.0358, q4_K 0.0711,
    // q4_0 0.0852. The theory for a uniform grid over a block of N(0, 1)
    // values (step = 2·max/levels, RMSE = step/√12) gives about 0.005 (8 bits,
    // 32 values), 0.016 (6 bits, 16 values) and 0.08 (4 bits, 32 values, Q4_0);
    // each extra bit halves the error. Bounds: measured + ~10%.
    assert!(get(GgmlType::Q8_0) < 0.006);
    assert!(get(GgmlType::Q6K) < 0.02);
    assert!(get(GgmlType::Q5K) < 0.04);
    assert!(get(GgmlType::Q4K) < 0.08);
    // q3_K 0.1519: one bit fewer than q4_K, about twice its error.
    assert!(get(GgmlType::Q3K) < 0.17);
    assert!(get(GgmlType::Q4K) < get(GgmlType::Q3K));
    // q2_K 0.2934: another bit fewer, about twice q3_K's again.
    assert!(get(GgmlType::Q2K) < 0.32);
    assert!(get(GgmlType::Q3K) < get(GgmlType::Q2K));
    // iq4_xs 0.0765: IQ4_NL's grid with 6-bit scales relative to one f16.
    assert!(get(GgmlType::IQ4XS) < 0.084);
    assert!(get(GgmlType::Q4_0) < 0.095);
    // q5_0 0.0418, q5_1 0.0378, q4_1 0.0776, iq4_nl 0.0759: an offset (Q4_1,
    // Q5_1) or a grid denser near zero (IQ4_NL) beats the symmetric Q4_0.
    assert!(get(GgmlType::Q5_0) < 0.046);
    assert!(get(GgmlType::Q5_1) < 0.042);
    assert!(get(GgmlType::Q4_1) < 0.085);
    assert!(get(GgmlType::IQ4NL) < 0.083);
    assert!(get(GgmlType::Q5_1) < get(GgmlType::Q5_0) && get(GgmlType::Q5_0) < get(GgmlType::Q4_1));
    assert!(get(GgmlType::IQ4NL) < get(GgmlType::Q4_0) && get(GgmlType::Q4_1) < get(GgmlType::Q4_0));
    // The expected order.
    assert!(get(GgmlType::Q8_0) < get(GgmlType::Q6K));
    assert!(get(GgmlType::Q6K) < get(GgmlType::Q5K));
    assert!(get(GgmlType::Q5K) < get(GgmlType::Q4K));
    assert!(get(GgmlType::Q4K) < get(GgmlType::Q4_0));
    // Float types.
    assert!(relative_rmse(GgmlType::F16, &x) < 3e-4);
    assert!(relative_rmse(GgmlType::BF16, &x) < 3e-3);
}

#[test]
fn fast_search_costs_little_accuracy() {
    let x = gaussian(256 * 32, 12);
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        let y_bytes = quantize_row_bytes_with(ty, &x, Search::Fast).unwrap();
        let y = Tensor::from_le_bytes(ty, 1, x.len(), &y_bytes).unwrap().to_f32_vec();
        let err: f64 = x.iter().zip(&y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let fast = (err / x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>()).sqrt();
        let exact = relative_rmse(ty, &x);
        eprintln!("{}: fast {fast:.5}, ggml search {exact:.5}", ty.name());
        assert!(fast < exact * 1.3, "{}: fast {fast} vs {exact}", ty.name());
    }
}

#[test]
fn all_zero_rows_quantize_to_zero() {
    for ty in QUANT_TYPES {
        let t = Tensor::quantize_from_f32(ty, 2, 256, &[0.0; 512]).unwrap();
        assert!(t.to_f32_vec().iter().all(|v| *v == 0.0), "{}", ty.name());
        let mut out = [1.0f32; 2];
        kernels::matvec(&t, &gaussian(256, 3), &mut out);
        assert_eq!(out, [0.0, 0.0], "{}", ty.name());
    }
}

#[test]
fn quantized_dot_matches_the_dequantize_oracle_on_quantized_rows() {
    let (rows, cols) = (7, 512);
    for (i, ty) in QUANT_TYPES.into_iter().enumerate() {
        let w = quantized(ty, rows, cols, &gaussian(rows * cols, 20 + i as u64));
        let x = gaussian(cols, 40 + i as u64);
        assert_matches_oracle(&w, &x, "quantized gaussian rows");
    }
}

#[test]
fn quantized_dot_matches_the_oracle_on_arbitrary_blocks() {
    // Random bytes: every quant and packed-scale bit pattern occurs,
    // including the extremes (Q8_0 -128, nibbles 0 and 15, 6-bit 63, i8 scales -128).
    let (rows, cols) = (5, 768);
    for (i, ty) in QUANT_TYPES.into_iter().enumerate() {
        let mut rng = Rng::new(60 + i as u64);
        let w = tensor_from_random_blocks(ty, rows, cols, &mut rng, &mut |r| r.normal() * 0.01);
        let x = gaussian(cols, 80 + i as u64);
        assert_matches_oracle(&w, &x, "random blocks");
    }
}

#[test]
fn quantized_dot_matches_the_oracle_with_extreme_scales() {
    let (rows, cols) = (3, 256);
    let scales: [(&str, f32); 4] = [
        ("largest f16", 65504.0),
        ("smallest normal f16", 6.1035156e-5),
        ("subnormal f16", 6.0e-8),
        ("negative", -3.5),
    ];
    for ty in QUANT_TYPES {
        for (what, s) in scales {
            let mut rng = Rng::new(7);
            let w = tensor_from_random_blocks(ty, rows, cols, &mut rng, &mut |_| s);
            // Activations large and tiny too.
            for amp in [1e-6f32, 1.0, 1e4] {
                let x: Vec<f32> = gaussian(cols, 8).iter().map(|v| v * amp).collect();
                assert_matches_oracle(&w, &x, what);
            }
        }
        // Zero scales: only zeros.
        let mut rng = Rng::new(8);
        let (w, _) = tensor_from_random_blocks(ty, rows, cols, &mut rng, &mut |_| 0.0);
        let mut out = [1.0f32; 3];
        kernels::matvec(&w, &gaussian(cols, 9), &mut out);
        assert_eq!(out, [0.0; 3], "{}", ty.name());
    }
}

#[test]
fn activations_with_zero_blocks_and_spikes() {
    let cols = 512;
    let mut x = gaussian(cols, 90);
    x[..256].fill(0.0); // a whole zero super-block
    x[300] = 1e3; // one spike
    for (i, ty) in QUANT_TYPES.into_iter().enumerate() {
        let w = quantized(ty, 4, cols, &gaussian(4 * cols, 100 + i as u64));
        assert_matches_oracle(&w, &x, "zero and spiky activations");
    }
}

#[test]
fn quantized_dot_is_close_to_the_float_dot_of_dequantized_weights() {
    // Activation quantization (int8, per block) adds a relative error of about
    // 1/127/sqrt(3) per element; over a row it stays well under 1% of |w|·|x|.
    let (rows, cols) = (16, 1024);
    for (i, ty) in QUANT_TYPES.into_iter().enumerate() {
        let w = Tensor::quantize_from_f32(ty, rows, cols, &gaussian(rows * cols, 120 + i as u64)).unwrap();
        let wd = w.to_f32_vec();
        let x = gaussian(cols, 140 + i as u64);
        let mut out = vec![0.0f32; rows];
        kernels::matvec(&w, &x, &mut out);
        let mut worst = 0.0f64;
        for r in 0..rows {
            let row = &wd[r * cols..(r + 1) * cols];
            let exact = dot_f64(row, &x);
            let scale = (dot_f64(row, row) * dot_f64(&x, &x)).sqrt();
            worst = worst.max((out[r] as f64 - exact).abs() / scale);
        }
        assert!(worst < 4e-3, "{}: relative error {worst}", ty.name());
    }
}

/// F16 and BF16 weights dot exactly as f32 weights of their values do,
/// on the activations rounded to their type (as ggml converts them).
#[test]
fn float_types_dot_exactly_like_f32_on_activations_of_their_type() {
    let (rows, cols) = (3, 37);
    let v = gaussian(rows * cols, 5);
    let x = gaussian(cols, 6);
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let w = Tensor::quantize_from_f32(ty, rows, cols, &v).unwrap();
        let w32 = Tensor::quantize_from_f32(GgmlType::F32, rows, cols, &w.to_f32_vec()).unwrap();
        let xr = dequantized_acts(ty, &x);
        assert_ne!(xr, x, "{}: the activations are rounded", ty.name());
        for r in 0..rows {
            assert_eq!(
                kernels::dot_row(&w, r, &x).to_bits(),
                kernels::dot_row(&w32, r, &xr).to_bits(),
                "{}",
                ty.name()
            );
        }
    }
}

#[test]
fn matmul_is_bit_identical_to_matvec_for_every_type() {
    let cols = 512;
    let all = [GgmlType::F32, GgmlType::F16, GgmlType::BF16]
        .into_iter()
        .chain(QUANT_TYPES);
    for (i, ty) in all.enumerate() {
        // Token counts that take the 8- and 4-token passes of the byte
        // layouts and leave remainders; row counts with and without padding.
        for (rows, n_tokens) in [(6, 4), (8, 1), (8, 3), (8, 13), (12, 8), (4, 5)] {
            let w = Tensor::quantize_from_f32(ty, rows, cols, &gaussian(rows * cols, 160 + i as u64)).unwrap();
            let xs = gaussian(n_tokens * cols, 180 + i as u64);
            let mut batched = vec![0.0; n_tokens * rows];
            kernels::matmul(&w, &xs, &mut batched);
            for t in 0..n_tokens {
                let mut single = vec![0.0; rows];
                kernels::matvec(&w, &xs[t * cols..(t + 1) * cols], &mut single);
                for r in 0..rows {
                    let (a, b) = (single[r].to_bits(), batched[t * rows + r].to_bits());
                    assert_eq!(a, b, "{} rows {rows} tokens {n_tokens}: token {t} row {r}", ty.name());
                }
            }
        }
    }
}

#[test]
fn block_kernels_are_the_dispatch_targets() {
    // The public per-type kernels give what matvec gives.
    let cols = 512;
    let x = gaussian(cols, 200);
    let mut q8 = Vec::new();
    quantize_act_q8_0(&x, &mut q8);
    let mut q8k = Vec::new();
    quantize_act_q8k(&x, &mut q8k);
    let v = gaussian(cols, 201);
    let one = |ty| {
        let w = Tensor::quantize_from_f32(ty, 1, cols, &v).unwrap();
        let mut out = [0.0f32];
        kernels::matvec(&w, &x, &mut out);
        out[0]
    };
    assert_eq!(qk::vec_dot_q8_0_q8_0(&quantize_row_q8_0(&v), &q8), one(GgmlType::Q8_0));
    assert_eq!(qk::vec_dot_q4_0_q8_0(&quantize_row_q4_0(&v), &q8), one(GgmlType::Q4_0));
    assert_eq!(qk::vec_dot_q4_1_q8_1(&quantize_row_q4_1(&v), &q8), one(GgmlType::Q4_1));
    assert_eq!(qk::vec_dot_q5_0_q8_0(&quantize_row_q5_0(&v), &q8), one(GgmlType::Q5_0));
    assert_eq!(qk::vec_dot_q5_1_q8_1(&quantize_row_q5_1(&v), &q8), one(GgmlType::Q5_1));
    assert_eq!(
        qk::vec_dot_iq4_nl_q8_0(&quantize_row_iq4_nl(&v), &q8),
        one(GgmlType::IQ4NL)
    );
    assert_eq!(qk::vec_dot_q4_k_q8_k(&quantize_row_q4_k(&v), &q8k), one(GgmlType::Q4K));
    assert_eq!(qk::vec_dot_q5_k_q8_k(&quantize_row_q5_k(&v), &q8k), one(GgmlType::Q5K));
    assert_eq!(qk::vec_dot_q6_k_q8_k(&quantize_row_q6_k(&v), &q8k), one(GgmlType::Q6K));
    assert_eq!(qk::vec_dot_q3_k_q8_k(&quantize_row_q3_k(&v), &q8k), one(GgmlType::Q3K));
    assert_eq!(qk::vec_dot_q2_k_q8_k(&quantize_row_q2_k(&v), &q8k), one(GgmlType::Q2K));
    assert_eq!(
        qk::vec_dot_iq4_xs_q8_k(&quantize_row_iq4_xs(&v), &q8k),
        one(GgmlType::IQ4XS)
    );
}

#[test]
fn q8k_block_sums_are_group_sums() {
    let x = gaussian(512, 210);
    let mut q = Vec::new();
    quantize_act_q8k(&x, &mut q);
    for b in &q {
        for g in 0..16 {
            let s: i32 = b.qs[16 * g..16 * g + 16].iter().map(|&v| v as i32).sum();
            assert_eq!(b.bsums[g] as i32, s);
        }
        assert!(b.qs.iter().all(|&v| v != -128));
    }
}

#[test]
fn rows_that_are_not_whole_blocks_are_refused() {
    for ty in QUANT_TYPES {
        let cols = ty.block_size() + 16;
        assert!(
            Tensor::from_le_bytes(ty, 1, cols, &[0u8; 1024]).is_err(),
            "{}",
            ty.name()
        );
        assert!(Tensor::quantize_from_f32(ty, 1, cols, &vec![0.0; cols]).is_err());
    }
}

/// ggml's reference quantizers and llama.cpp's Python package (gguf-py)
/// quantize and dequantize the 32-element types exactly as the codecs here
/// do (testdata/quants, made by tools/make-quant-vectors.py).
#[test]
fn block_codecs_match_ggml() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/quants/ggml-vectors.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut checked = 0;
    for (name, entry) in doc["types"].as_object().unwrap() {
        let ty = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::IQ4NL,
            GgmlType::Q3K,
            GgmlType::Q2K,
            GgmlType::IQ4XS,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("unknown type {name}"));
        for case in entry["quantize"].as_array().unwrap() {
            let x: Vec<f32> = case["x"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let want = hex(case["bytes"].as_str().unwrap());
            assert_eq!(
                quantize_row_bytes(ty, &x).unwrap(),
                want,
                "{name}: quantize {:?}…",
                &x[..4]
            );
            checked += 1;
        }
        for case in entry["dequantize"].as_array().unwrap() {
            let bytes = hex(case["bytes"].as_str().unwrap());
            let want: Vec<u32> = case["y_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let t = Tensor::from_le_bytes(ty, 1, want.len(), &bytes).unwrap();
            let got: Vec<u32> = t.to_f32_vec().iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{name}: dequantize");
            checked += 1;
        }
    }
    assert_eq!(checked, 9 * 7 + 9);
}
