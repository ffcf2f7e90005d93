//! Metering test canister: loops whose weighted instruction count the tests
//! predict from the compiled wasm. Each loop lives in its own non-inlined
//! function so the test can find its body by export-free structure; the
//! methods return `performance_counter(0)` deltas around the call.

use std::hint::black_box;

/// Integer-heavy loop: add/xor/shift per iteration.
#[inline(never)]
#[no_mangle]
pub extern "C" fn int_loop(n: u32) -> u32 {
    let mut acc: u32 = 7;
    let mut i = 0;
    while i < n {
        acc = (acc ^ i).wrapping_add(acc << 3);
        i += 1;
    }
    acc
}

/// Float-heavy loop: multiply-add and a division per iteration.
#[inline(never)]
#[no_mangle]
pub extern "C" fn float_loop(n: u32) -> f64 {
    let mut acc: f64 = 1.5;
    let mut i = 0;
    while i < n {
        acc = acc * 1.000001 + 0.5;
        acc /= 1.0000003;
        i += 1;
    }
    acc
}

fn measure<T>(f: impl FnOnce() -> T) -> u64 {
    let before = ic_cdk::api::performance_counter(0);
    black_box(f());
    let after = ic_cdk::api::performance_counter(0);
    after - before
}

/// Instructions spent in `int_loop(n)` (plus the constant cost of one
/// `performance_counter` call and the call itself).
#[ic_cdk::query]
fn measure_int(n: u32) -> u64 {
    measure(|| int_loop(black_box(n)))
}

#[ic_cdk::query]
fn measure_float(n: u32) -> u64 {
    measure(|| float_loop(black_box(n)))
}

/// Same as `measure_int` but as an update, so the report's total can be
/// compared with `performance_counter(0)` at the end.
#[ic_cdk::update]
fn counter_at_end(n: u32) -> u64 {
    black_box(int_loop(black_box(n)));
    ic_cdk::api::performance_counter(0)
}

/// memory.fill / memory.copy over `n` bytes (bulk memory ops charge per byte).
#[ic_cdk::query]
fn measure_bulk(n: u32) -> u64 {
    let mut v = vec![0u8; n as usize];
    measure(|| {
        v.fill(black_box(7));
        v.len()
    })
}
