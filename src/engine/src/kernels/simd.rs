//! SIMD versions of the hot kernels, written against a tiny 4-lane type
//! [`F32x4`].
//!
//! On `wasm32` or `wasm64` with `simd128` enabled (the canister builds), `F32x4` is a
//! `v128` and every method is one or two wasm SIMD instructions. Elsewhere
//! it is a plain `[f32; 4]` with the same lane semantics, so native tests run
//! exactly the lane logic the canister runs and compare it with the scalar
//! oracles in [`super`] bit for bit.
//!
//! Lane order: every dot product accumulates element `i` into lane `i % 4`
//! with a separate multiply then add (wasm has no fused multiply-add, and
//! neither does the scalar oracle), reduces as `(l0 + l1) + (l2 + l3)` and
//! then adds the tail in order: exactly [`super::dot_f32`]. Several rows
//! computed together ([`dot4_f32`]) each keep their own accumulator, so a
//! row's value does not depend on its neighbours.
//!
//! No relaxed SIMD (the IC rejects it).

#[cfg(all(any(target_arch = "wasm32", target_arch = "wasm64"), target_feature = "simd128"))]
mod imp {
    #[cfg(target_arch = "wasm32")]
    use core::arch::wasm32::*;
    #[cfg(target_arch = "wasm64")]
    use core::arch::wasm64::*;

    /// Four f32 lanes in one `v128`.
    #[derive(Clone, Copy)]
    pub struct F32x4(v128);

    // Named like the wasm intrinsics; operator traits would hide the cost.
    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        #[inline(always)]
        pub fn zero() -> Self {
            F32x4(f32x4_splat(0.0))
        }
        #[inline(always)]
        pub fn splat(v: f32) -> Self {
            F32x4(f32x4_splat(v))
        }
        /// Loads 4 f32 at `p`.
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> Self {
            F32x4(core::ptr::read_unaligned(p as *const v128))
        }
        /// # Safety
        /// `p..p + 4` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut f32) {
            core::ptr::write_unaligned(p as *mut v128, self.0)
        }
        /// Lanes 0 and 2 of `a`, then of `b`: `[a0, a2, b0, b2]`.
        #[inline(always)]
        pub fn even(a: Self, b: Self) -> Self {
            F32x4(i32x4_shuffle::<0, 2, 4, 6>(a.0, b.0))
        }
        /// Per lane, `self` where `self > o`, else `o` (NaN lanes of `self`
        /// never win).
        #[inline(always)]
        pub fn select_gt(self, o: Self) -> Self {
            F32x4(v128_bitselect(self.0, o.0, f32x4_gt(self.0, o.0)))
        }
        /// Whether some lane of `self` equals (`==`) the same lane of `o`.
        #[inline(always)]
        pub fn any_eq(self, o: Self) -> bool {
            v128_any_true(f32x4_eq(self.0, o.0))
        }
        /// Lanes 1 and 3 of `a`, then of `b`: `[a1, a3, b1, b3]`.
        #[inline(always)]
        pub fn odd(a: Self, b: Self) -> Self {
            F32x4(i32x4_shuffle::<1, 3, 5, 7>(a.0, b.0))
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            F32x4(f32x4_add(self.0, o.0))
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            F32x4(f32x4_mul(self.0, o.0))
        }
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            F32x4(f32x4_max(self.0, o.0))
        }
        #[inline(always)]
        pub fn lanes(self) -> [f32; 4] {
            [
                f32x4_extract_lane::<0>(self.0),
                f32x4_extract_lane::<1>(self.0),
                f32x4_extract_lane::<2>(self.0),
                f32x4_extract_lane::<3>(self.0),
            ]
        }
        /// Widens 4 sign-extended f16 bit patterns (i32 lanes) to f32, exactly.
        #[inline(always)]
        fn from_f16_i32(v: v128) -> Self {
            // v = h as i16 as i32. v << 13 puts h's exponent+mantissa at bits
            // 13..28 and copies of the sign at 28..31; keep bit 31 and 13..27.
            let s = v128_and(i32x4_shl(v, 13), i32x4_splat(0x8FFF_E000u32 as i32));
            // As an f32 that is x · 2^-112 for normals and subnormals alike.
            let r = f32x4_mul(s, f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
                                                                            // Inf/NaN (exponent all ones): force the f32 exponent to all ones.
            let e = i32x4_splat(0x0F80_0000);
            let is_special = i32x4_eq(v128_and(s, e), e);
            F32x4(v128_or(r, v128_and(is_special, i32x4_splat(0x7F80_0000))))
        }
        /// Loads 8 f16 at `p` as two f32x4 (elements 0..4 and 4..8).
        ///
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_f16x8(p: *const u16) -> (Self, Self) {
            let h = core::ptr::read_unaligned(p as *const v128);
            (
                Self::from_f16_i32(i32x4_extend_low_i16x8(h)),
                Self::from_f16_i32(i32x4_extend_high_i16x8(h)),
            )
        }
        /// Loads 4 f16 at `p` as f32x4.
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_f16x4(p: *const u16) -> Self {
            let h = v128_load64_zero(p as *const u64);
            Self::from_f16_i32(i32x4_extend_low_i16x8(h))
        }
        /// Loads 4 bf16 at `p` as f32x4 (exact: the bits shifted up 16).
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_bf16x4(p: *const u16) -> Self {
            let h = v128_load64_zero(p as *const u64);
            F32x4(i32x4_shl(u32x4_extend_low_u16x8(h), 16))
        }
    }
    /// Sixteen i8 lanes (also used for u8 nibbles 0..=15, which are valid i8).
    #[derive(Clone, Copy)]
    pub struct I8x16(v128);
    /// Eight i16 lanes.
    #[derive(Clone, Copy)]
    pub struct I16x8(v128);
    /// Four i32 lanes.
    #[derive(Clone, Copy)]
    pub struct I32x4(v128);

    #[allow(clippy::should_implement_trait)]
    impl I8x16 {
        /// Loads 16 bytes at `p`.
        ///
        /// # Safety
        /// `p..p + 16` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i8) -> Self {
            I8x16(core::ptr::read_unaligned(p as *const v128))
        }
        /// Low nibble of each byte (0..=15).
        #[inline(always)]
        pub fn low_nibbles(self) -> Self {
            I8x16(v128_and(self.0, u8x16_splat(0x0F)))
        }
        /// High nibble of each byte (0..=15).
        #[inline(always)]
        pub fn high_nibbles(self) -> Self {
            I8x16(u8x16_shr(self.0, 4))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I16x8 {
        /// `a[i] * b[i]` for lanes 0..8, widened to i16 (exact).
        #[inline(always)]
        pub fn mul_low(a: I8x16, b: I8x16) -> Self {
            I16x8(i16x8_extmul_low_i8x16(a.0, b.0))
        }
        /// `a[i] * b[i]` for lanes 8..16, widened to i16 (exact).
        #[inline(always)]
        pub fn mul_high(a: I8x16, b: I8x16) -> Self {
            I16x8(i16x8_extmul_high_i8x16(a.0, b.0))
        }
        /// As [`Self::mul_low`], both operands read as unsigned bytes
        /// (products ≤ 65,025 wrap in i16; callers keep them small).
        #[inline(always)]
        pub fn mul_low_u(a: I8x16, b: I8x16) -> Self {
            I16x8(u16x8_extmul_low_u8x16(a.0, b.0))
        }
        /// As [`Self::mul_high`], both operands read as unsigned bytes.
        #[inline(always)]
        pub fn mul_high_u(a: I8x16, b: I8x16) -> Self {
            I16x8(u16x8_extmul_high_u8x16(a.0, b.0))
        }
        /// Wrapping lane-wise add (callers keep sums in range).
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            I16x8(i16x8_add(self.0, o.0))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I32x4 {
        /// Lane `i` = `v[2i] + v[2i + 1]`, widened (exact).
        #[inline(always)]
        pub fn sum_pairs(v: I16x8) -> Self {
            I32x4(i32x4_extadd_pairwise_i16x8(v.0))
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            I32x4(i32x4_add(self.0, o.0))
        }
        /// `[Σ a, Σ b, Σ c, Σ d]`: the lane sums of four vectors (exact).
        #[inline(always)]
        pub fn sum4(a: Self, b: Self, c: Self, d: Self) -> Self {
            let ab = i32x4_add(
                i32x4_shuffle::<0, 1, 4, 5>(a.0, b.0),
                i32x4_shuffle::<2, 3, 6, 7>(a.0, b.0),
            );
            let cd = i32x4_add(
                i32x4_shuffle::<0, 1, 4, 5>(c.0, d.0),
                i32x4_shuffle::<2, 3, 6, 7>(c.0, d.0),
            );
            I32x4(i32x4_add(
                i32x4_shuffle::<0, 2, 4, 6>(ab, cd),
                i32x4_shuffle::<1, 3, 5, 7>(ab, cd),
            ))
        }
        /// Each lane converted to f32 (round to nearest even, like `as f32`).
        #[inline(always)]
        pub fn to_f32(self) -> F32x4 {
            F32x4(f32x4_convert_i32x4(self.0))
        }
        /// Σ of the four lanes (wrapping; callers keep it exact).
        #[inline(always)]
        pub fn sum(self) -> i32 {
            (i32x4_extract_lane::<0>(self.0).wrapping_add(i32x4_extract_lane::<1>(self.0)))
                .wrapping_add(i32x4_extract_lane::<2>(self.0).wrapping_add(i32x4_extract_lane::<3>(self.0)))
        }
    }
    #[allow(clippy::should_implement_trait)]
    impl I8x16 {
        /// Each signed byte plus 128, as an unsigned byte (sign bit flipped).
        #[inline(always)]
        pub fn offset_to_u8(self) -> Self {
            I8x16(v128_xor(self.0, u8x16_splat(0x80)))
        }
        /// Bitwise or.
        #[inline(always)]
        pub fn or(self, o: Self) -> Self {
            I8x16(v128_or(self.0, o.0))
        }
        #[inline(always)]
        pub fn splat(v: i8) -> Self {
            I8x16(i8x16_splat(v))
        }
        /// Wrapping lane-wise subtraction.
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            I8x16(i8x16_sub(self.0, o.0))
        }
        /// Bit `b` (0..8) of each byte, moved to bit 4: 0 or 16.
        #[inline(always)]
        pub fn bit_to_16(self, b: u32) -> Self {
            let moved = if b <= 4 {
                i8x16_shl(self.0, 4 - b)
            } else {
                u8x16_shr(self.0, b - 4)
            };
            I8x16(v128_and(moved, u8x16_splat(0x10)))
        }
        /// Lane `i` = 16 if bit `i` of `bits` is set, else 0.
        #[inline(always)]
        pub fn bits_to_16(bits: u16) -> Self {
            let v = u16x8_splat(bits);
            let bytes = i8x16_shuffle::<0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1>(v, v);
            let mask = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
            I8x16(v128_and(i8x16_eq(v128_and(bytes, mask), mask), u8x16_splat(0x10)))
        }
        /// Lane `i` = `self[idx[i]]` (`idx` lanes in 0..16): a 16-entry
        /// table lookup (`i8x16.swizzle`).
        #[inline(always)]
        pub fn lookup(self, idx: Self) -> Self {
            I8x16(i8x16_swizzle(self.0, idx.0))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I16x8 {
        /// Loads 8 i16 at `p`.
        ///
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i16) -> Self {
            I16x8(core::ptr::read_unaligned(p as *const v128))
        }
        /// `*p` in all eight lanes.
        ///
        /// The read is volatile on purpose: otherwise LLVM merges the splats
        /// of neighbouring scales into one vector load plus an
        /// `i8x16.shuffle` per scale, which the IC charges more for.
        ///
        /// # Safety
        /// `p` must be readable.
        #[inline(always)]
        pub unsafe fn splat_load(p: *const i16) -> Self {
            I16x8(i16x8_splat(core::ptr::read_volatile(p)))
        }
        /// Eight signed bytes at `p`, each widened to i16 (`i16x8.load8x8_s`).
        ///
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_i8x8(p: *const i8) -> Self {
            I16x8(i16x8_load_extend_i8x8(p))
        }
        /// Eight unsigned bytes at `p`, each widened to i16 (`i16x8.load8x8_u`).
        ///
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_u8x8(p: *const u8) -> Self {
            I16x8(u16x8_load_extend_u8x8(p))
        }
        /// The two i16 at `p` repeated four times, `[p0, p1, p0, p1, ..]`
        /// (`v128.load32_splat`).
        ///
        /// # Safety
        /// `p..p + 2` must be readable.
        #[inline(always)]
        pub unsafe fn load_pair_splat(p: *const i16) -> Self {
            I16x8(v128_load32_splat(p as *const u32))
        }
        /// Stores the eight lanes at `p`.
        ///
        /// # Safety
        /// `p..p + 8` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut i16) {
            core::ptr::write_unaligned(p as *mut v128, self.0)
        }
        /// Lanes 0..8 of `v` and lanes 8..16, each widened to i16.
        #[inline(always)]
        pub fn widen(v: I8x16) -> (Self, Self) {
            (I16x8(i16x8_extend_low_i8x16(v.0)), I16x8(i16x8_extend_high_i8x16(v.0)))
        }
        /// `[a0 + a1, a2 + a3, .., b6 + b7]` narrowed to i16 (callers keep
        /// the sums in range, so the saturation never applies).
        #[inline(always)]
        pub fn sum_pairs_narrow(a: Self, b: Self) -> Self {
            I16x8(i16x8_narrow_i32x4(
                i32x4_extadd_pairwise_i16x8(a.0),
                i32x4_extadd_pairwise_i16x8(b.0),
            ))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I32x4 {
        #[inline(always)]
        pub fn zero() -> Self {
            I32x4(i32x4_splat(0))
        }
        /// Loads 4 i32 at `p`.
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i32) -> Self {
            I32x4(core::ptr::read_unaligned(p as *const v128))
        }
        /// Lane `i` = `a[2i]·b[2i] + a[2i+1]·b[2i+1]` (`i32x4.dot_i16x8_s`, exact).
        #[inline(always)]
        pub fn dot(a: I16x8, b: I16x8) -> Self {
            I32x4(i32x4_dot_i16x8(a.0, b.0))
        }
        /// Four i16 at `p`, each widened to i32 (`i32x4.load16x4_s`).
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_i16x4(p: *const i16) -> Self {
            I32x4(i32x4_load_extend_i16x4(p))
        }
        /// Wrapping lane-wise product (callers keep it in range).
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            I32x4(i32x4_mul(self.0, o.0))
        }
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            I32x4(i32x4_sub(self.0, o.0))
        }
        /// Each lane shifted left by `n`.
        #[inline(always)]
        pub fn shl(self, n: u32) -> Self {
            I32x4(i32x4_shl(self.0, n))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            F32x4(f32x4_sub(self.0, o.0))
        }
    }
    impl F32x4 {
        /// Lane-wise |x|.
        #[inline(always)]
        pub fn abs(self) -> Self {
            F32x4(f32x4_abs(self.0))
        }
        /// Round to nearest, ties to even, then to i32 saturating (NaN → 0):
        /// `x.round_ties_even() as i32` per lane.
        #[inline(always)]
        pub fn round_to_i32(self) -> I32x4 {
            I32x4(i32x4_trunc_sat_f32x4(f32x4_nearest(self.0)))
        }
    }

    impl I32x4 {
        /// Each lane clamped to `-m..=m`.
        #[inline(always)]
        pub fn clamp_sym(self, m: i32) -> Self {
            I32x4(i32x4_max(i32x4_min(self.0, i32x4_splat(m)), i32x4_splat(-m)))
        }
        /// Sixteen lanes of four vectors, each in i8 range, narrowed to bytes.
        #[inline(always)]
        pub fn narrow_to_i8(a: Self, b: Self, c: Self, d: Self) -> I8x16 {
            I8x16(i8x16_narrow_i16x8(
                i16x8_narrow_i32x4(a.0, b.0),
                i16x8_narrow_i32x4(c.0, d.0),
            ))
        }
    }

    impl I8x16 {
        /// Stores 16 bytes at `p`.
        ///
        /// # Safety
        /// `p..p + 16` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut i8) {
            core::ptr::write_unaligned(p as *mut v128, self.0)
        }
        /// Σ of the 16 signed bytes.
        #[inline(always)]
        pub fn sum(self) -> i32 {
            let v = i32x4_extadd_pairwise_i16x8(i16x8_extadd_pairwise_i8x16(self.0));
            (i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v))
                + (i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v))
        }
    }
    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        /// Lane-wise min (NaN propagates, like the oracle's comparisons).
        #[inline(always)]
        pub fn min(self, o: Self) -> Self {
            F32x4(f32x4_min(self.0, o.0))
        }
        /// Round to nearest, ties to even.
        #[inline(always)]
        pub fn round(self) -> Self {
            F32x4(f32x4_nearest(self.0))
        }
        #[inline(always)]
        pub fn div(self, o: Self) -> Self {
            F32x4(f32x4_div(self.0, o.0))
        }
        /// `2^n` per lane for integral lanes `n` in -126..=127.
        #[inline(always)]
        pub fn pow2i(self) -> Self {
            F32x4(i32x4_shl(
                i32x4_add(i32x4_trunc_sat_f32x4(self.0), i32x4_splat(127)),
                23,
            ))
        }
    }
}

#[cfg(not(all(any(target_arch = "wasm32", target_arch = "wasm64"), target_feature = "simd128")))]
mod imp {
    /// Four f32 lanes; the portable stand-in for a wasm `v128`.
    #[derive(Clone, Copy)]
    pub struct F32x4([f32; 4]);

    // Named like the wasm intrinsics; operator traits would hide the cost.
    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        #[inline(always)]
        pub fn zero() -> Self {
            F32x4([0.0; 4])
        }
        #[inline(always)]
        pub fn splat(v: f32) -> Self {
            F32x4([v; 4])
        }
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> Self {
            F32x4(core::ptr::read_unaligned(p as *const [f32; 4]))
        }
        /// # Safety
        /// `p..p + 4` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut f32) {
            core::ptr::write_unaligned(p as *mut [f32; 4], self.0)
        }
        /// `[a0, a2, b0, b2]`, as the wasm version.
        #[inline(always)]
        pub fn even(a: Self, b: Self) -> Self {
            F32x4([a.0[0], a.0[2], b.0[0], b.0[2]])
        }
        /// Per lane, `self` where `self > o`, else `o`.
        #[inline(always)]
        pub fn select_gt(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| {
                if self.0[l] > o.0[l] {
                    self.0[l]
                } else {
                    o.0[l]
                }
            }))
        }
        /// Whether some lane of `self` equals (`==`) the same lane of `o`.
        #[inline(always)]
        pub fn any_eq(self, o: Self) -> bool {
            (0..4).any(|l| self.0[l] == o.0[l])
        }
        /// `[a1, a3, b1, b3]`, as the wasm version.
        #[inline(always)]
        pub fn odd(a: Self, b: Self) -> Self {
            F32x4([a.0[1], a.0[3], b.0[1], b.0[3]])
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| self.0[l] + o.0[l]))
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| self.0[l] * o.0[l]))
        }
        /// Lane-wise max; NaN if either lane is NaN (as `f32x4.max`).
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| {
                let (a, b) = (self.0[l], o.0[l]);
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else if a > b {
                    a
                } else {
                    b
                }
            }))
        }
        #[inline(always)]
        pub fn lanes(self) -> [f32; 4] {
            self.0
        }
        /// The same bit trick as the wasm version, lane by lane.
        #[inline(always)]
        fn from_f16_bits(h: u16) -> f32 {
            let v = h as i16 as i32;
            let s = ((v << 13) as u32) & 0x8FFF_E000;
            let r = (f32::from_bits(s) * f32::from_bits(0x7780_0000)).to_bits();
            let special = if s & 0x0F80_0000 == 0x0F80_0000 { 0x7F80_0000 } else { 0 };
            f32::from_bits(r | special)
        }
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_f16x8(p: *const u16) -> (Self, Self) {
            (Self::load_f16x4(p), Self::load_f16x4(p.add(4)))
        }
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_f16x4(p: *const u16) -> Self {
            let h = core::ptr::read_unaligned(p as *const [u16; 4]);
            F32x4(h.map(Self::from_f16_bits))
        }
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_bf16x4(p: *const u16) -> Self {
            let h = core::ptr::read_unaligned(p as *const [u16; 4]);
            F32x4(h.map(|b| f32::from_bits((b as u32) << 16)))
        }
    }
    /// Sixteen i8 lanes (also used for u8 nibbles 0..=15, which are valid i8).
    #[derive(Clone, Copy)]
    pub struct I8x16([i8; 16]);
    /// Eight i16 lanes.
    #[derive(Clone, Copy)]
    pub struct I16x8([i16; 8]);
    /// Four i32 lanes.
    #[derive(Clone, Copy)]
    pub struct I32x4([i32; 4]);

    #[allow(clippy::should_implement_trait)]
    impl I8x16 {
        /// # Safety
        /// `p..p + 16` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i8) -> Self {
            I8x16(core::ptr::read_unaligned(p as *const [i8; 16]))
        }
        #[inline(always)]
        pub fn low_nibbles(self) -> Self {
            I8x16(self.0.map(|v| v & 0x0F))
        }
        #[inline(always)]
        pub fn high_nibbles(self) -> Self {
            I8x16(self.0.map(|v| ((v as u8) >> 4) as i8))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I16x8 {
        #[inline(always)]
        pub fn mul_low(a: I8x16, b: I8x16) -> Self {
            I16x8(core::array::from_fn(|i| a.0[i] as i16 * b.0[i] as i16))
        }
        #[inline(always)]
        pub fn mul_high(a: I8x16, b: I8x16) -> Self {
            I16x8(core::array::from_fn(|i| a.0[i + 8] as i16 * b.0[i + 8] as i16))
        }
        #[inline(always)]
        pub fn mul_low_u(a: I8x16, b: I8x16) -> Self {
            I16x8(core::array::from_fn(|i| {
                (a.0[i] as u8 as u16 * b.0[i] as u8 as u16) as i16
            }))
        }
        #[inline(always)]
        pub fn mul_high_u(a: I8x16, b: I8x16) -> Self {
            I16x8(core::array::from_fn(|i| {
                (a.0[i + 8] as u8 as u16 * b.0[i + 8] as u8 as u16) as i16
            }))
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            I16x8(core::array::from_fn(|i| self.0[i].wrapping_add(o.0[i])))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I32x4 {
        #[inline(always)]
        pub fn sum_pairs(v: I16x8) -> Self {
            I32x4(core::array::from_fn(|i| v.0[2 * i] as i32 + v.0[2 * i + 1] as i32))
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            I32x4(core::array::from_fn(|i| self.0[i].wrapping_add(o.0[i])))
        }
        #[inline(always)]
        pub fn sum4(a: Self, b: Self, c: Self, d: Self) -> Self {
            let s = |v: Self| v.0.iter().fold(0i32, |x, y| x.wrapping_add(*y));
            I32x4([s(a), s(b), s(c), s(d)])
        }
        #[inline(always)]
        pub fn to_f32(self) -> F32x4 {
            F32x4(self.0.map(|v| v as f32))
        }
        #[inline(always)]
        pub fn sum(self) -> i32 {
            (self.0[0].wrapping_add(self.0[1])).wrapping_add(self.0[2].wrapping_add(self.0[3]))
        }
    }
    #[allow(clippy::should_implement_trait)]
    impl I8x16 {
        #[inline(always)]
        pub fn offset_to_u8(self) -> Self {
            I8x16(self.0.map(|v| ((v as u8) ^ 0x80) as i8))
        }
        #[inline(always)]
        pub fn or(self, o: Self) -> Self {
            I8x16(core::array::from_fn(|i| self.0[i] | o.0[i]))
        }
        #[inline(always)]
        pub fn splat(v: i8) -> Self {
            I8x16([v; 16])
        }
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            I8x16(core::array::from_fn(|i| self.0[i].wrapping_sub(o.0[i])))
        }
        #[inline(always)]
        pub fn bit_to_16(self, b: u32) -> Self {
            I8x16(self.0.map(|v| ((((v as u8) >> b) & 1) << 4) as i8))
        }
        #[inline(always)]
        pub fn bits_to_16(bits: u16) -> Self {
            I8x16(core::array::from_fn(|i| (((bits >> i) & 1) << 4) as i8))
        }
        #[inline(always)]
        pub fn lookup(self, idx: Self) -> Self {
            I8x16(idx.0.map(|i| self.0[i as usize & 15]))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I16x8 {
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i16) -> Self {
            I16x8(core::ptr::read_unaligned(p as *const [i16; 8]))
        }
        /// # Safety
        /// `p` must be readable.
        #[inline(always)]
        pub unsafe fn splat_load(p: *const i16) -> Self {
            I16x8([core::ptr::read_unaligned(p); 8])
        }
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_i8x8(p: *const i8) -> Self {
            I16x8(core::ptr::read_unaligned(p as *const [i8; 8]).map(|v| v as i16))
        }
        /// # Safety
        /// `p..p + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load_u8x8(p: *const u8) -> Self {
            I16x8(core::ptr::read_unaligned(p as *const [u8; 8]).map(|v| v as i16))
        }
        /// # Safety
        /// `p..p + 2` must be readable.
        #[inline(always)]
        pub unsafe fn load_pair_splat(p: *const i16) -> Self {
            let [a, b] = core::ptr::read_unaligned(p as *const [i16; 2]);
            I16x8([a, b, a, b, a, b, a, b])
        }
        /// # Safety
        /// `p..p + 8` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut i16) {
            core::ptr::write_unaligned(p as *mut [i16; 8], self.0)
        }
        #[inline(always)]
        pub fn widen(v: I8x16) -> (Self, Self) {
            (
                I16x8(core::array::from_fn(|i| v.0[i] as i16)),
                I16x8(core::array::from_fn(|i| v.0[i + 8] as i16)),
            )
        }
        #[inline(always)]
        pub fn sum_pairs_narrow(a: Self, b: Self) -> Self {
            let pair = |v: &[i16; 8], i: usize| (v[2 * i] as i32 + v[2 * i + 1] as i32).clamp(-32768, 32767) as i16;
            I16x8(core::array::from_fn(|i| {
                if i < 4 {
                    pair(&a.0, i)
                } else {
                    pair(&b.0, i - 4)
                }
            }))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl I32x4 {
        #[inline(always)]
        pub fn zero() -> Self {
            I32x4([0; 4])
        }
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load(p: *const i32) -> Self {
            I32x4(core::ptr::read_unaligned(p as *const [i32; 4]))
        }
        #[inline(always)]
        pub fn dot(a: I16x8, b: I16x8) -> Self {
            I32x4(core::array::from_fn(|i| {
                (a.0[2 * i] as i32 * b.0[2 * i] as i32).wrapping_add(a.0[2 * i + 1] as i32 * b.0[2 * i + 1] as i32)
            }))
        }
        /// # Safety
        /// `p..p + 4` must be readable.
        #[inline(always)]
        pub unsafe fn load_i16x4(p: *const i16) -> Self {
            I32x4(core::ptr::read_unaligned(p as *const [i16; 4]).map(|v| v as i32))
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            I32x4(core::array::from_fn(|i| self.0[i].wrapping_mul(o.0[i])))
        }
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            I32x4(core::array::from_fn(|i| self.0[i].wrapping_sub(o.0[i])))
        }
        #[inline(always)]
        pub fn shl(self, n: u32) -> Self {
            I32x4(self.0.map(|v| v.wrapping_shl(n)))
        }
    }

    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| self.0[l] - o.0[l]))
        }
    }
    impl F32x4 {
        #[inline(always)]
        pub fn abs(self) -> Self {
            F32x4(self.0.map(f32::abs))
        }
        #[inline(always)]
        pub fn round_to_i32(self) -> I32x4 {
            I32x4(self.0.map(|v| v.round_ties_even() as i32))
        }
    }

    impl I32x4 {
        #[inline(always)]
        pub fn clamp_sym(self, m: i32) -> Self {
            I32x4(self.0.map(|v| v.clamp(-m, m)))
        }
        #[inline(always)]
        pub fn narrow_to_i8(a: Self, b: Self, c: Self, d: Self) -> I8x16 {
            let all = [a.0, b.0, c.0, d.0];
            I8x16(core::array::from_fn(|i| all[i / 4][i % 4].clamp(-128, 127) as i8))
        }
    }

    impl I8x16 {
        /// # Safety
        /// `p..p + 16` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut i8) {
            core::ptr::write_unaligned(p as *mut [i8; 16], self.0)
        }
        #[inline(always)]
        pub fn sum(self) -> i32 {
            self.0.iter().map(|&v| v as i32).sum()
        }
    }
    #[allow(clippy::should_implement_trait)]
    impl F32x4 {
        #[inline(always)]
        pub fn min(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| {
                let (a, b) = (self.0[l], o.0[l]);
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else if a < b {
                    a
                } else {
                    b
                }
            }))
        }
        #[inline(always)]
        pub fn round(self) -> Self {
            F32x4(self.0.map(f32::round_ties_even))
        }
        #[inline(always)]
        pub fn div(self, o: Self) -> Self {
            F32x4(core::array::from_fn(|l| self.0[l] / o.0[l]))
        }
        #[inline(always)]
        pub fn pow2i(self) -> Self {
            F32x4(self.0.map(|n| super::super::exp::pow2i(n as i32)))
        }
    }
}

pub use imp::{F32x4, I16x8, I32x4, I8x16};

#[inline(always)]
fn reduce(acc: F32x4) -> f32 {
    let l = acc.lanes();
    (l[0] + l[1]) + (l[2] + l[3])
}

/// `[reduce(a), reduce(b), reduce(c), reduce(d)]` with the same additions
/// (`(l0 + l1) + (l2 + l3)`, operands in that order), done on whole vectors:
/// two transposing shuffle rounds instead of sixteen lane extractions.
#[inline(always)]
fn reduce4(a: F32x4, b: F32x4, c: F32x4, d: F32x4) -> F32x4 {
    // [a0 + a1, a2 + a3, b0 + b1, b2 + b3] and the same for c, d.
    let ab = F32x4::even(a, b).add(F32x4::odd(a, b));
    let cd = F32x4::even(c, d).add(F32x4::odd(c, d));
    F32x4::even(ab, cd).add(F32x4::odd(ab, cd))
}

/// [`super::dot_f32`], bit for bit, 4 lanes at a time.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n4 = a.len() / 4 * 4;
    let mut acc = F32x4::zero();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len of both.
        unsafe {
            acc = acc.add(F32x4::load(pa.add(i)).mul(F32x4::load(pb.add(i))));
        }
        i += 4;
    }
    let mut sum = reduce(acc);
    for (x, y) in a[n4..].iter().zip(&b[n4..]) {
        sum += x * y;
    }
    sum
}

/// Four rows against one vector: `[r0·x, r1·x, r2·x, r3·x]`, each bit for bit
/// [`super::dot_f32`]; `x` is loaded once for the four rows.
#[inline]
pub fn dot4_f32(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    for r in &rows {
        assert_eq!(r.len(), n);
    }
    let n4 = n / 4 * 4;
    let p = rows.map(|r| r.as_ptr());
    let px = x.as_ptr();
    let (mut a0, mut a1, mut a2, mut a3) = (F32x4::zero(), F32x4::zero(), F32x4::zero(), F32x4::zero());
    let n32 = n / 32 * 32;
    let mut i = 0;
    // 32 columns per pass: one address per row, eight loads at constant
    // offsets (each lane still accumulates its elements in order); the
    // per-pass address and loop arithmetic is spread over 128 multiply-adds.
    while i < n32 {
        // SAFETY: i + 32 <= n32 <= n = every row's length.
        unsafe {
            let (x, r0, r1, r2, r3) = (px.add(i), p[0].add(i), p[1].add(i), p[2].add(i), p[3].add(i));
            for j in [0, 4, 8, 12, 16, 20, 24, 28] {
                let xv = F32x4::load(x.add(j));
                a0 = a0.add(F32x4::load(r0.add(j)).mul(xv));
                a1 = a1.add(F32x4::load(r1.add(j)).mul(xv));
                a2 = a2.add(F32x4::load(r2.add(j)).mul(xv));
                a3 = a3.add(F32x4::load(r3.add(j)).mul(xv));
            }
        }
        i += 32;
    }
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= n = every row's length.
        unsafe {
            let xv = F32x4::load(px.add(i));
            a0 = a0.add(F32x4::load(p[0].add(i)).mul(xv));
            a1 = a1.add(F32x4::load(p[1].add(i)).mul(xv));
            a2 = a2.add(F32x4::load(p[2].add(i)).mul(xv));
            a3 = a3.add(F32x4::load(p[3].add(i)).mul(xv));
        }
        i += 4;
    }
    let mut out = reduce4(a0, a1, a2, a3).lanes();
    for (o, r) in out.iter_mut().zip(rows) {
        for (w, v) in r[n4..].iter().zip(&x[n4..]) {
            *o += w * v;
        }
    }
    out
}

#[inline(always)]
fn f16_ptr(a: &[half::f16]) -> *const u16 {
    a.as_ptr() as *const u16
}

/// [`super::dot_f16`], bit for bit: f16 widened with a SIMD bit trick.
#[inline]
pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let (n8, n4) = (n / 8 * 8, n / 4 * 4);
    let mut acc = F32x4::zero();
    let (pa, pb) = (f16_ptr(a), b.as_ptr());
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n8 <= n.
        unsafe {
            let (w0, w1) = F32x4::load_f16x8(pa.add(i));
            acc = acc.add(w0.mul(F32x4::load(pb.add(i))));
            acc = acc.add(w1.mul(F32x4::load(pb.add(i + 4))));
        }
        i += 8;
    }
    if i < n4 {
        // SAFETY: i + 4 == n4 <= n.
        unsafe {
            acc = acc.add(F32x4::load_f16x4(pa.add(i)).mul(F32x4::load(pb.add(i))));
        }
    }
    let mut sum = reduce(acc);
    for (x, y) in a[n4..].iter().zip(&b[n4..]) {
        sum += x.to_f32() * y;
    }
    sum
}

/// A 16-bit float weight type the SIMD kernels widen exactly to f32.
pub trait Half16: Copy {
    /// Loads 4 values at `p` widened to f32.
    ///
    /// # Safety
    /// `p..p + 4` must be readable.
    unsafe fn load4(p: *const u16) -> F32x4;
    fn widen(self) -> f32;
}

impl Half16 for half::f16 {
    #[inline(always)]
    unsafe fn load4(p: *const u16) -> F32x4 {
        F32x4::load_f16x4(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Half16 for half::bf16 {
    #[inline(always)]
    unsafe fn load4(p: *const u16) -> F32x4 {
        F32x4::load_bf16x4(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Four f16 rows against one vector, each bit for bit [`super::dot_f16`].
#[inline]
pub fn dot4_f16(rows: [&[half::f16]; 4], x: &[f32]) -> [f32; 4] {
    dot4_half(rows, x)
}

/// Four bf16 rows against one vector, each bit for bit [`super::quant::dot_bf16`].
#[inline]
pub fn dot4_bf16(rows: [&[half::bf16]; 4], x: &[f32]) -> [f32; 4] {
    dot4_half(rows, x)
}

/// One bf16 row against one vector, bit for bit [`super::quant::dot_bf16`].
#[inline]
pub fn dot_bf16(a: &[half::bf16], x: &[f32]) -> f32 {
    let n = x.len();
    assert_eq!(a.len(), n);
    let n4 = n / 4 * 4;
    let (pa, px) = (a.as_ptr() as *const u16, x.as_ptr());
    let mut acc = F32x4::zero();
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= n.
        unsafe { acc = acc.add(F32x4::load_bf16x4(pa.add(i)).mul(F32x4::load(px.add(i)))) };
        i += 4;
    }
    let mut sum = reduce(acc);
    for (w, v) in a[n4..].iter().zip(&x[n4..]) {
        sum += w.to_f32() * v;
    }
    sum
}

/// Four 16-bit-float rows against one vector, each in [`super::dot_f32`]'s
/// lane order with every weight widened exactly.
#[inline(always)]
fn dot4_half<H: Half16>(rows: [&[H]; 4], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    for r in &rows {
        assert_eq!(r.len(), n);
    }
    let n4 = n / 4 * 4;
    let p = rows.map(|r| r.as_ptr() as *const u16);
    let px = x.as_ptr();
    let (mut a0, mut a1, mut a2, mut a3) = (F32x4::zero(), F32x4::zero(), F32x4::zero(), F32x4::zero());
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= n = every row's length.
        unsafe {
            let xv = F32x4::load(px.add(i));
            a0 = a0.add(H::load4(p[0].add(i)).mul(xv));
            a1 = a1.add(H::load4(p[1].add(i)).mul(xv));
            a2 = a2.add(H::load4(p[2].add(i)).mul(xv));
            a3 = a3.add(H::load4(p[3].add(i)).mul(xv));
        }
        i += 4;
    }
    let mut out = reduce4(a0, a1, a2, a3).lanes();
    for (o, r) in out.iter_mut().zip(rows) {
        for (w, v) in r[n4..].iter().zip(&x[n4..]) {
            *o += w.widen() * v;
        }
    }
    out
}

/// Attention kernels for one fixed head size, unrolled over its 4-wide
/// chunks (offsets `$j`, in elements) so the query (scores) or the output
/// accumulators (values) stay in locals and every load has a constant
/// offset. Four positions per pass. Each value is bit for bit what the
/// generic paths compute: scores as [`super::dot_f32`] (lanes from zero, then
/// `(l0 + l1) + (l2 + l3)`) times `scale`, values as `o += a * v` position by
/// position from zero.
macro_rules! attention_fixed {
    ($scores:ident, $values:ident, $($j:literal)*) => {
        /// # Safety
        /// `q..q + hd` readable; for `t < n_pos`, `k + t * stride + off .. + hd`
        /// readable; `s..s + n_pos` writable.
        #[inline(never)]
        unsafe fn $scores(
            s: *mut f32,
            n_pos: usize,
            q: *const f32,
            k: *const f32,
            stride: usize,
            off: usize,
            scale: f32,
        ) {
            let qv = [$(F32x4::load(q.add($j))),*];
            let sc = F32x4::splat(scale);
            let n4 = n_pos / 4 * 4;
            let mut t = 0;
            while t < n4 {
                let k0 = k.add(t * stride + off);
                let (k1, k2, k3) = (k0.add(stride), k0.add(2 * stride), k0.add(3 * stride));
                let (mut a0, mut a1, mut a2, mut a3) = (F32x4::zero(), F32x4::zero(), F32x4::zero(), F32x4::zero());
                $(
                    a0 = a0.add(qv[$j / 4].mul(F32x4::load(k0.add($j))));
                    a1 = a1.add(qv[$j / 4].mul(F32x4::load(k1.add($j))));
                    a2 = a2.add(qv[$j / 4].mul(F32x4::load(k2.add($j))));
                    a3 = a3.add(qv[$j / 4].mul(F32x4::load(k3.add($j))));
                )*
                reduce4(a0, a1, a2, a3).mul(sc).store(s.add(t));
                t += 4;
            }
            while t < n_pos {
                let k0 = k.add(t * stride + off);
                let mut a0 = F32x4::zero();
                $( a0 = a0.add(qv[$j / 4].mul(F32x4::load(k0.add($j)))); )*
                *s.add(t) = reduce(a0) * scale;
                t += 1;
            }
        }

        /// # Safety
        /// `a..a + n_pos` readable; for `t < n_pos`, `v + t * stride + off .. + hd`
        /// readable; `o..o + hd` writable.
        #[inline(never)]
        unsafe fn $values(o: *mut f32, a: *const f32, n_pos: usize, v: *const f32, stride: usize, off: usize) {
            let mut acc = [$({ let _ = $j; F32x4::zero() }),*];
            let n4 = n_pos / 4 * 4;
            let mut t = 0;
            while t < n4 {
                let v0 = v.add(t * stride + off);
                let (v1, v2, v3) = (v0.add(stride), v0.add(2 * stride), v0.add(3 * stride));
                let (s0, s1) = (F32x4::splat(*a.add(t)), F32x4::splat(*a.add(t + 1)));
                let (s2, s3) = (F32x4::splat(*a.add(t + 2)), F32x4::splat(*a.add(t + 3)));
                $(
                    acc[$j / 4] = acc[$j / 4]
                        .add(s0.mul(F32x4::load(v0.add($j))))
                        .add(s1.mul(F32x4::load(v1.add($j))))
                        .add(s2.mul(F32x4::load(v2.add($j))))
                        .add(s3.mul(F32x4::load(v3.add($j))));
                )*
                t += 4;
            }
            while t < n_pos {
                let v0 = v.add(t * stride + off);
                let s0 = F32x4::splat(*a.add(t));
                $( acc[$j / 4] = acc[$j / 4].add(s0.mul(F32x4::load(v0.add($j)))); )*
                t += 1;
            }
            $( acc[$j / 4].store(o.add($j)); )*
        }
    };
}

attention_fixed!(scores_32, values_32, 0 4 8 12 16 20 24 28);
attention_fixed!(scores_48, values_48, 0 4 8 12 16 20 24 28 32 36 40 44);
attention_fixed!(scores_64, values_64, 0 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60);
attention_fixed!(
    scores_128, values_128,
    0 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 68 72 76 80 84 88 92 96 100 104 108 112 116 120 124
);

/// Scores of one query head against `n_pos` cached keys:
/// `scores[t] = dot(q_h, k_cache[t * stride + off..][..head_dim]) * scale`,
/// each dot bit for bit [`super::dot_f32`]; `q_h` is loaded once for all
/// positions when `head_dim` is 8 or 4 (the common small heads) and the loop
/// has no bounds checks.
pub fn attention_scores(scores: &mut [f32], q_h: &[f32], k_cache: &[f32], stride: usize, off: usize, scale: f32) {
    let hd = q_h.len();
    let n_pos = scores.len();
    if n_pos == 0 {
        return;
    }
    assert!(off + hd <= stride && (n_pos - 1) * stride + off + hd <= k_cache.len());
    let pk = k_cache.as_ptr();
    let ps = scores.as_mut_ptr();
    match hd {
        // SAFETY (both arms): row t spans t * stride + off .. + hd, checked above.
        8 => unsafe {
            let (q0, q1) = (F32x4::load(q_h.as_ptr()), F32x4::load(q_h.as_ptr().add(4)));
            for t in 0..n_pos {
                let k = pk.add(t * stride + off);
                let acc = F32x4::zero()
                    .add(q0.mul(F32x4::load(k)))
                    .add(q1.mul(F32x4::load(k.add(4))));
                *ps.add(t) = reduce(acc) * scale;
            }
        },
        4 => unsafe {
            let q0 = F32x4::load(q_h.as_ptr());
            for t in 0..n_pos {
                let acc = F32x4::zero().add(q0.mul(F32x4::load(pk.add(t * stride + off))));
                *ps.add(t) = reduce(acc) * scale;
            }
        },
        32 => unsafe { scores_32(ps, n_pos, q_h.as_ptr(), pk, stride, off, scale) },
        48 => unsafe { scores_48(ps, n_pos, q_h.as_ptr(), pk, stride, off, scale) },
        64 => unsafe { scores_64(ps, n_pos, q_h.as_ptr(), pk, stride, off, scale) },
        128 => unsafe { scores_128(ps, n_pos, q_h.as_ptr(), pk, stride, off, scale) },
        _ => {
            // Four positions per pass: q_h is loaded once for the four keys.
            let key = |t: usize| &k_cache[t * stride + off..t * stride + off + hd];
            let n4 = n_pos / 4 * 4;
            for t in (0..n4).step_by(4) {
                let d = dot4_f32([key(t), key(t + 1), key(t + 2), key(t + 3)], q_h);
                for (s, v) in scores[t..t + 4].iter_mut().zip(d) {
                    *s = v * scale;
                }
            }
            for (t, s) in scores.iter_mut().enumerate().skip(n4) {
                *s = dot_f32(q_h, key(t)) * scale;
            }
        }
    }
}

/// `out_h = Σ_t scores[t] * v_cache[t * stride + off..][..head_dim]`, summed
/// in position order from zero, each element exactly as the scalar loop.
pub fn attention_values(out_h: &mut [f32], scores: &[f32], v_cache: &[f32], stride: usize, off: usize) {
    let hd = out_h.len();
    let n_pos = scores.len();
    if n_pos == 0 {
        out_h.fill(0.0);
        return;
    }
    assert!(off + hd <= stride && (n_pos - 1) * stride + off + hd <= v_cache.len());
    let pv = v_cache.as_ptr();
    // The fixed-size paths write every element; the others accumulate into it.
    if !matches!(hd, 8 | 4 | 32 | 48 | 64 | 128) {
        out_h.fill(0.0);
    }
    match hd {
        // SAFETY (both arms): row t spans t * stride + off .. + hd, checked above.
        8 => unsafe {
            let (mut o0, mut o1) = (F32x4::zero(), F32x4::zero());
            for (t, &a) in scores.iter().enumerate() {
                let v = pv.add(t * stride + off);
                let av = F32x4::splat(a);
                o0 = o0.add(av.mul(F32x4::load(v)));
                o1 = o1.add(av.mul(F32x4::load(v.add(4))));
            }
            o0.store(out_h.as_mut_ptr());
            o1.store(out_h.as_mut_ptr().add(4));
        },
        4 => unsafe {
            let mut o0 = F32x4::zero();
            for (t, &a) in scores.iter().enumerate() {
                o0 = o0.add(F32x4::splat(a).mul(F32x4::load(pv.add(t * stride + off))));
            }
            o0.store(out_h.as_mut_ptr());
        },
        32 => unsafe { values_32(out_h.as_mut_ptr(), scores.as_ptr(), n_pos, pv, stride, off) },
        48 => unsafe { values_48(out_h.as_mut_ptr(), scores.as_ptr(), n_pos, pv, stride, off) },
        64 => unsafe { values_64(out_h.as_mut_ptr(), scores.as_ptr(), n_pos, pv, stride, off) },
        128 => unsafe { values_128(out_h.as_mut_ptr(), scores.as_ptr(), n_pos, pv, stride, off) },
        _ => {
            // Four positions per pass over each 4-wide chunk of the output
            // (each element still sums its positions in order).
            let n4 = n_pos / 4 * 4;
            let (h4, po) = (hd / 4 * 4, out_h.as_mut_ptr());
            for t in (0..n4).step_by(4) {
                let a = [0, 1, 2, 3].map(|i| F32x4::splat(scores[t + i]));
                // SAFETY: rows t..t + 4 exist (t + 3 < n_pos, checked above);
                // chunk c + 4 <= h4 <= hd stays inside each row and out_h.
                unsafe {
                    let v = [0, 1, 2, 3].map(|i| pv.add((t + i) * stride + off));
                    let mut c = 0;
                    while c < h4 {
                        let mut o = F32x4::load(po.add(c));
                        o = o.add(a[0].mul(F32x4::load(v[0].add(c))));
                        o = o.add(a[1].mul(F32x4::load(v[1].add(c))));
                        o = o.add(a[2].mul(F32x4::load(v[2].add(c))));
                        o = o.add(a[3].mul(F32x4::load(v[3].add(c))));
                        o.store(po.add(c));
                        c += 4;
                    }
                }
                for i in 0..4 {
                    let row = &v_cache[(t + i) * stride + off..(t + i) * stride + off + hd];
                    for (o, x) in out_h[h4..].iter_mut().zip(&row[h4..]) {
                        *o += scores[t + i] * x;
                    }
                }
            }
            for (t, &a) in scores.iter().enumerate().skip(n4) {
                axpy(out_h, a, &v_cache[t * stride + off..t * stride + off + hd]);
            }
        }
    }
}

/// `out += a * v`, elementwise (attention's weighted sum of values);
/// each element is computed as the scalar `o += a * x`.
#[inline]
pub fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
    assert_eq!(out.len(), v.len());
    let n4 = out.len() / 4 * 4;
    let av = F32x4::splat(a);
    let (po, pv) = (out.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len of both.
        unsafe {
            F32x4::load(po.add(i))
                .add(av.mul(F32x4::load(pv.add(i))))
                .store(po.add(i));
        }
        i += 4;
    }
    for (o, x) in out[n4..].iter_mut().zip(&v[n4..]) {
        *o += a * x;
    }
}

/// `out[i] = w[i] * (scale * x[i])` (RMSNorm's last step), each element as
/// the scalar expression.
#[inline]
pub fn scale_mul(out: &mut [f32], x: &[f32], w: &[f32], scale: f32) {
    assert!(out.len() == x.len() && x.len() == w.len());
    let n4 = x.len() / 4 * 4;
    let (po, px, pw) = (out.as_mut_ptr(), x.as_ptr(), w.as_ptr());
    let sv = F32x4::splat(scale);
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len of all three.
        unsafe {
            F32x4::load(pw.add(i))
                .mul(sv.mul(F32x4::load(px.add(i))))
                .store(po.add(i))
        };
        i += 4;
    }
    for ((o, v), w) in out[n4..].iter_mut().zip(&x[n4..]).zip(&w[n4..]) {
        *o = w * (scale * v);
    }
}

/// `x += y`, elementwise.
#[inline]
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    let n4 = x.len() / 4 * 4;
    let (px, py) = (x.as_mut_ptr(), y.as_ptr());
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len of both.
        unsafe {
            F32x4::load(px.add(i)).add(F32x4::load(py.add(i))).store(px.add(i));
        }
        i += 4;
    }
    for (a, b) in x[n4..].iter_mut().zip(&y[n4..]) {
        *a += b;
    }
}

/// Maximum of a non-empty slice without NaNs (softmax's shift); the same
/// value as the scalar fold for such inputs.
#[inline]
pub fn max(x: &[f32]) -> f32 {
    let n4 = x.len() / 4 * 4;
    let mut m = f32::NEG_INFINITY;
    if n4 > 0 {
        let p = x.as_ptr();
        // SAFETY: n4 >= 4.
        let mut acc = unsafe { F32x4::load(p) };
        let mut i = 4;
        while i < n4 {
            // SAFETY: i + 4 <= n4.
            acc = acc.max(unsafe { F32x4::load(p.add(i)) });
            i += 4;
        }
        for l in acc.lanes() {
            if l > m {
                m = l;
            }
        }
    }
    for &v in &x[n4..] {
        if v > m {
            m = v;
        }
    }
    m
}

/// [`crate::sampler::argmax`], the same index: the first position of the
/// largest non-NaN value (ties between `-0.0` and `0.0` included), 0 if all
/// are NaN or `x` is empty. Two SIMD passes (the maximum, then its first
/// position) instead of a scalar compare-and-branch per element.
pub fn argmax(x: &[f32]) -> usize {
    let n = x.len();
    let n16 = n / 16 * 16;
    let n4 = n / 4 * 4;
    let p = x.as_ptr();
    let mut m = F32x4::splat(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY (both loops): i + 16 <= n16 <= n, then i + 4 <= n4 <= n.
    while i < n16 {
        unsafe {
            m = F32x4::load(p.add(i)).select_gt(m);
            m = F32x4::load(p.add(i + 4)).select_gt(m);
            m = F32x4::load(p.add(i + 8)).select_gt(m);
            m = F32x4::load(p.add(i + 12)).select_gt(m);
        }
        i += 16;
    }
    while i < n4 {
        m = unsafe { F32x4::load(p.add(i)) }.select_gt(m);
        i += 4;
    }
    let mut best = f32::NEG_INFINITY;
    for v in m.lanes().into_iter().chain(x[n4..].iter().copied()) {
        if v > best {
            best = v;
        }
    }
    // The first element equal to the maximum: a vector test per four, then
    // the four one by one. (No match: every element is NaN.)
    let b = F32x4::splat(best);
    let mut i = 0;
    // SAFETY: i + 4 <= n4 <= n.
    while i < n4 && !unsafe { F32x4::load(p.add(i)) }.any_eq(b) {
        i += 4;
    }
    x[i..].iter().position(|&v| v == best).map_or(0, |j| i + j)
}

/// [`super::exp::exp`] on four lanes, bit for bit (the same operations in
/// the same order; NaN lanes stay NaN).
#[inline(always)]
pub fn exp4(x: F32x4) -> F32x4 {
    use super::exp::{EXP_MAX_ARG, EXP_MIN_ARG, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
    // max/min with the bound second: a NaN lane stays NaN, as in the oracle.
    let x = x.max(F32x4::splat(EXP_MIN_ARG)).min(F32x4::splat(EXP_MAX_ARG));
    let n = x.mul(F32x4::splat(LOG2E)).round();
    let r = x.sub(n.mul(F32x4::splat(LN2_HI)));
    let r = r.sub(n.mul(F32x4::splat(LN2_LO)));
    let mut p = F32x4::splat(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = p.mul(r).add(F32x4::splat(c));
    }
    let y = p.mul(r.mul(r)).add(r).add(F32x4::splat(1.0));
    y.mul(n.pow2i())
}

/// Softmax's middle pass: `x[i] = exp(x[i] - max)` and their sum, summed as
/// [`super::softmax`]'s oracle sums (lane `i % 4`, then the tail).
#[inline]
pub fn exp_shifted_sum(x: &mut [f32], max: f32) -> f32 {
    let n4 = x.len() / 4 * 4;
    let p = x.as_mut_ptr();
    let m = F32x4::splat(max);
    let mut acc = F32x4::zero();
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len.
        unsafe {
            let e = exp4(F32x4::load(p.add(i)).sub(m));
            e.store(p.add(i));
            acc = acc.add(e);
        }
        i += 4;
    }
    let mut sum = reduce(acc);
    for v in &mut x[n4..] {
        *v = super::exp::exp(*v - max);
        sum += *v;
    }
    sum
}

/// `x[i] /= d`.
#[inline]
pub fn div_in_place(x: &mut [f32], d: f32) {
    let n4 = x.len() / 4 * 4;
    let p = x.as_mut_ptr();
    let dv = F32x4::splat(d);
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len.
        unsafe { F32x4::load(p.add(i)).div(dv).store(p.add(i)) };
        i += 4;
    }
    for v in &mut x[n4..] {
        *v /= d;
    }
}

/// [`super::swiglu`], bit for bit: `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
#[inline]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    let n4 = gate.len() / 4 * 4;
    let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
    let (zero, one) = (F32x4::zero(), F32x4::splat(1.0));
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= len of both.
        unsafe {
            let g = F32x4::load(pg.add(i));
            let s = g.div(one.add(exp4(zero.sub(g))));
            s.mul(F32x4::load(pu.add(i))).store(pg.add(i));
        }
        i += 4;
    }
    for (g, u) in gate[n4..].iter_mut().zip(&up[n4..]) {
        *g = super::silu(*g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo;

    #[test]
    fn f16_bit_trick_widens_every_f16_exactly() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for chunk in all.chunks_exact(8) {
            // SAFETY: chunk has 8 elements.
            let (lo, hi) = unsafe { F32x4::load_f16x8(chunk.as_ptr()) };
            let got = [lo.lanes(), hi.lanes()].concat();
            for (&h, g) in chunk.iter().zip(got) {
                let want = half::f16::from_bits(h).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan(), "{h:#06x}");
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{h:#06x}");
                }
            }
        }
    }

    #[test]
    fn dot_f32_is_the_oracle_bit_for_bit() {
        for n in 0..70 {
            let a = pseudo(n, 1 + n as u32);
            let b = pseudo(n, 100 + n as u32);
            assert_eq!(
                dot_f32(&a, &b).to_bits(),
                super::super::dot_f32(&a, &b).to_bits(),
                "n = {n}"
            );
        }
    }

    #[test]
    fn dot4_f32_is_the_oracle_per_row() {
        for n in [0, 1, 3, 4, 7, 8, 13, 64, 67, 288] {
            let rows: Vec<Vec<f32>> = (0..4).map(|r| pseudo(n, 7 + r)).collect();
            let x = pseudo(n, 99);
            let got = dot4_f32([&rows[0], &rows[1], &rows[2], &rows[3]], &x);
            for r in 0..4 {
                assert_eq!(
                    got[r].to_bits(),
                    super::super::dot_f32(&rows[r], &x).to_bits(),
                    "n = {n}"
                );
            }
        }
    }

    #[test]
    fn argmax_is_the_oracle() {
        let oracle = crate::sampler::argmax;
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 0.0, -0.0, 1.0, -1.0];
        for n in 0..70 {
            let base = pseudo(n, 3 + n as u32);
            assert_eq!(argmax(&base), oracle(&base), "n = {n}");
            // Specials and ties planted at a few places, alone and together.
            for (k, &sp) in specials.iter().enumerate() {
                for at in [0, n / 3, n / 2, n.saturating_sub(1)] {
                    if n == 0 {
                        continue;
                    }
                    let mut v = base.clone();
                    v[at] = sp;
                    assert_eq!(argmax(&v), oracle(&v), "n {n} at {at} special {sp}");
                    v[(at + 1 + k) % n] = sp;
                    assert_eq!(argmax(&v), oracle(&v), "n {n} at {at} special {sp} twice");
                    let all: Vec<f32> = vec![sp; n];
                    assert_eq!(argmax(&all), oracle(&all), "n {n} all {sp}");
                    let mut mixed = vec![f32::NAN; n];
                    mixed[at] = sp;
                    assert_eq!(argmax(&mixed), oracle(&mixed), "n {n} NaNs and {sp} at {at}");
                }
            }
            // Ties of the maximum.
            if n >= 3 {
                let mut v = base.clone();
                v[n - 1] = 5.0;
                v[n / 2] = 5.0;
                assert_eq!(argmax(&v), oracle(&v), "n {n} tie");
                v[0] = -0.0;
                v[n - 1] = 0.0;
                v[n / 2] = -1e30;
                let zeros: Vec<f32> = v.iter().map(|&x| if x > 0.0 { -x } else { x }).collect();
                assert_eq!(argmax(&zeros), oracle(&zeros), "n {n} signed zeros");
            }
        }
    }

    #[test]
    fn f16_dots_are_the_oracle_bit_for_bit() {
        for n in [0, 1, 3, 4, 5, 8, 9, 12, 13, 16, 37, 64, 67] {
            let rows: Vec<Vec<half::f16>> = (0..4)
                .map(|r| pseudo(n, 11 + r).into_iter().map(half::f16::from_f32).collect())
                .collect();
            let x = pseudo(n, 5);
            let four = dot4_f16([&rows[0], &rows[1], &rows[2], &rows[3]], &x);
            for r in 0..4 {
                let want = super::super::dot_f16(&rows[r], &x).to_bits();
                assert_eq!(dot_f16(&rows[r], &x).to_bits(), want, "n = {n}");
                assert_eq!(four[r].to_bits(), want, "n = {n}");
            }
        }
    }

    #[test]
    fn attention_kernels_match_scalar() {
        for (hd, n_pos) in [4, 8, 12, 6, 32, 48, 64, 128, 37]
            .into_iter()
            .flat_map(|hd| [1, 3, 4, 5, 8, 13].map(|n| (hd, n)))
        {
            let (stride, off) = (3 * hd, hd);
            let k = pseudo(n_pos * stride, 21);
            let v = pseudo(n_pos * stride, 22);
            let q = pseudo(hd, 23);
            let mut s = vec![0.0; n_pos];
            attention_scores(&mut s, &q, &k, stride, off, 0.3);
            for t in 0..n_pos {
                let want = super::super::dot_f32(&q, &k[t * stride + off..t * stride + off + hd]) * 0.3;
                assert_eq!(s[t].to_bits(), want.to_bits(), "hd {hd} t {t}");
            }
            let mut out = vec![1.0; hd];
            attention_values(&mut out, &s, &v, stride, off);
            let mut want = vec![0.0f32; hd];
            for (t, &a) in s.iter().enumerate() {
                for (o, x) in want.iter_mut().zip(&v[t * stride + off..t * stride + off + hd]) {
                    *o += a * x;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "hd {hd} n_pos {n_pos}");
        }
    }

    #[test]
    fn elementwise_kernels_match_scalar() {
        for n in [0, 1, 4, 7, 8, 33] {
            let v = pseudo(n, 3);
            let mut a = pseudo(n, 4);
            let mut b = a.clone();
            axpy(&mut a, 0.37, &v);
            for (o, x) in b.iter_mut().zip(&v) {
                *o += 0.37 * x;
            }
            assert_eq!(a, b);
            add_in_place(&mut a, &v);
            super::super::add_in_place(&mut b, &v);
            assert_eq!(a, b);
            let (w, mut o1, mut o2) = (pseudo(n, 8), vec![0.0; n], vec![0.0; n]);
            scale_mul(&mut o1, &v, &w, 0.731);
            for ((o, x), w) in o2.iter_mut().zip(&v).zip(&w) {
                *o = w * (0.731 * x);
            }
            assert_eq!(o1, o2);
            if n > 0 {
                assert_eq!(max(&v), v.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            }
        }
    }

    #[test]
    fn exp_softmax_and_swiglu_are_the_oracles_bit_for_bit() {
        let mut xs = pseudo(4099, 77);
        for (i, v) in xs.iter_mut().enumerate() {
            *v *= (i % 97) as f32; // -96..96
        }
        xs.extend([
            0.0,
            -0.0,
            88.0,
            88.5,
            -87.0,
            -90.0,
            1e30,
            -1e30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.5,
        ]);
        for c in xs.chunks_exact(4) {
            // SAFETY: c has 4 elements.
            let got = exp4(unsafe { F32x4::load(c.as_ptr()) }).lanes();
            for (g, &x) in got.iter().zip(c) {
                let want = super::super::exp::exp(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x})"
                );
            }
        }
        for n in [0, 1, 3, 4, 5, 17, 64] {
            let v = pseudo(n, 5 + n as u32).iter().map(|x| x * 20.0).collect::<Vec<_>>();
            let (mut a, mut b) = (v.clone(), v.clone());
            super::super::softmax(&mut a);
            super::super::softmax_scalar(&mut b);
            assert_eq!(a, b, "softmax n = {n}");
            let up = pseudo(n, 9);
            let (mut a, mut b) = (v.clone(), v.clone());
            swiglu(&mut a, &up);
            super::super::swiglu_scalar(&mut b, &up);
            assert_eq!(a, b, "swiglu n = {n}");
        }
    }

    #[test]
    fn bf16_dots_are_the_oracle_bit_for_bit() {
        for n in [0, 1, 3, 4, 5, 8, 13, 64, 67] {
            let rows: Vec<Vec<half::bf16>> = (0..4)
                .map(|r| pseudo(n, 31 + r).into_iter().map(half::bf16::from_f32).collect())
                .collect();
            let x = pseudo(n, 6);
            let four = dot4_bf16([&rows[0], &rows[1], &rows[2], &rows[3]], &x);
            for r in 0..4 {
                let want = super::super::quant::dot_bf16(&rows[r], &x).to_bits();
                assert_eq!(dot_bf16(&rows[r], &x).to_bits(), want, "n = {n}");
                assert_eq!(four[r].to_bits(), want, "n = {n}");
            }
        }
    }
}
