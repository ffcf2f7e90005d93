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

// --- Page charges -------------------------------------------------------
// Each method touches `n` distinct 64 KiB wasm pages (heap or stable) between
// two `performance_counter` reads, one byte per page, so the tests can
// compare what the tracker charges with what the legacy rule charges.

const WASM_PAGE: usize = 65_536;
/// Room for 64 page-aligned wasm pages.
const ARENA_PAGES: usize = 65;
static mut ARENA: [u8; ARENA_PAGES * WASM_PAGE] = [0; ARENA_PAGES * WASM_PAGE];

/// Address of the `i`-th page-aligned wasm page of the arena.
fn arena_page(i: u32) -> *mut u8 {
    let base = std::ptr::addr_of_mut!(ARENA) as usize;
    let aligned = (base + WASM_PAGE - 1) & !(WASM_PAGE - 1);
    assert!((i as usize) < ARENA_PAGES - 1, "at most 64 pages");
    (aligned + i as usize * WASM_PAGE) as *mut u8
}

fn read_pages(n: u32) -> u32 {
    // SAFETY: the page lies inside the arena (checked by `arena_page`).
    (0..n).map(|i| unsafe { arena_page(i).read_volatile() } as u32).sum()
}

fn write_pages(n: u32) -> u32 {
    for i in 0..n {
        // SAFETY: as above.
        unsafe { arena_page(i).write_volatile(i as u8) };
    }
    n
}

/// Instructions for reading one byte of each of `n` heap wasm pages.
#[ic_cdk::update]
fn heap_read_pages(n: u32) -> u64 {
    measure(|| read_pages(black_box(n)))
}

/// Instructions for writing one byte of each of `n` heap wasm pages.
#[ic_cdk::update]
fn heap_write_pages(n: u32) -> u64 {
    measure(|| write_pages(black_box(n)))
}

/// Reads `n` pages, then writes them: the write pays the dirty charge only.
#[ic_cdk::update]
fn heap_read_then_write_pages(n: u32) -> u64 {
    measure(|| read_pages(black_box(n)) + write_pages(black_box(n)))
}

/// `heap_write_pages` as a query: queries track no dirty pages.
#[ic_cdk::query]
fn heap_write_pages_query(n: u32) -> u64 {
    measure(|| write_pages(black_box(n)))
}

fn ensure_stable(pages: u64) {
    let size = ic_cdk::stable::stable_size();
    if size < pages {
        ic_cdk::stable::stable_grow(pages - size).expect("stable memory grows");
    }
}

/// Instructions for writing one byte into each of `n` stable wasm pages.
#[ic_cdk::update]
fn stable_write_pages(n: u32) -> u64 {
    ensure_stable(n as u64);
    let byte = [1u8];
    measure(|| {
        for i in 0..black_box(n) {
            ic_cdk::stable::stable_write(i as u64 * WASM_PAGE as u64, &byte);
        }
    })
}

/// Instructions for reading one byte from each of `n` stable wasm pages.
#[ic_cdk::update]
fn stable_read_pages(n: u32) -> u64 {
    ensure_stable(n as u64);
    let mut byte = [0u8];
    measure(|| {
        for i in 0..black_box(n) {
            ic_cdk::stable::stable_read(i as u64 * WASM_PAGE as u64, &mut byte);
        }
    })
}

/// `int_loop(n)` in an update: long enough to span several slices under a
/// small slice limit.
#[ic_cdk::update]
fn spin(n: u32) -> u64 {
    black_box(int_loop(black_box(n)));
    ic_cdk::api::performance_counter(0)
}

/// One `memory.fill` of `n` bytes in an update (one uninterruptible operation).
#[ic_cdk::update]
fn fill_once(n: u32) -> u64 {
    let mut v = vec![0u8; n as usize];
    v.fill(black_box(7));
    black_box(&v);
    ic_cdk::api::performance_counter(0)
}
