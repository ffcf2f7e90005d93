//! The deterministic memory tracker's page charges, as the canister's own
//! `performance_counter` sees them, and deterministic time slicing.
//!
//! The same code runs under both charging rules; the wasm it executes is
//! counted identically, so the difference of the two measurements is the
//! page charge alone.

mod common;

use candid::{Decode, Encode};
use common::{config, controller, user, wasm};
use local_ic::charges::{DMT_OS_PAGE_ACCESS, DMT_OS_PAGE_DIRTY, LEGACY_DIRTY_PAGE_OVERHEAD, OS_PAGES_PER_WASM_PAGE};
use local_ic::{ExecError, MemoryCharges, Runtime, RuntimeConfig};

const ACCESS: u64 = DMT_OS_PAGE_ACCESS * OS_PAGES_PER_WASM_PAGE;
const DIRTY: u64 = DMT_OS_PAGE_DIRTY * OS_PAGES_PER_WASM_PAGE;

fn runtime(charges: MemoryCharges) -> Runtime {
    Runtime::new(RuntimeConfig {
        memory_charges: charges,
        ..config()
    })
}

/// What `method(n)` measured with its own performance counter.
fn measured(charges: MemoryCharges, method: &str, n: u32, query: bool) -> u64 {
    let mut rt = runtime(charges);
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let arg = Encode!(&n).unwrap();
    let reply = if query {
        rt.query(id, user(), method, arg).unwrap()
    } else {
        rt.update(id, user(), method, arg).unwrap()
    };
    Decode!(&reply.bytes, u64).unwrap()
}

/// The page charge `method(n)` saw in-band: dmt minus legacy.
fn page_charge(method: &str, n: u32, query: bool) -> i64 {
    measured(MemoryCharges::Dmt, method, n, query) as i64 - measured(MemoryCharges::Legacy, method, n, query) as i64
}

#[test]
fn heap_reads_and_writes_are_charged_per_wasm_page() {
    for n in [1u32, 7] {
        let n64 = n as i64;
        assert_eq!(
            page_charge("heap_read_pages", n, false),
            n64 * ACCESS as i64,
            "read {n}"
        );
        assert_eq!(
            page_charge("heap_write_pages", n, false),
            n64 * (ACCESS + DIRTY) as i64,
            "write {n}"
        );
        assert_eq!(
            page_charge("heap_read_then_write_pages", n, false),
            n64 * (ACCESS + DIRTY) as i64,
            "read, then write {n}"
        );
        assert_eq!(
            page_charge("heap_write_pages_query", n, true),
            n64 * ACCESS as i64,
            "queries pay accesses only ({n})"
        );
    }
}

#[test]
fn stable_pages_are_charged_like_heap_pages() {
    for n in [1u32, 5] {
        let n64 = n as i64;
        assert_eq!(
            page_charge("stable_read_pages", n, false),
            n64 * ACCESS as i64,
            "read {n}"
        );
        // Legacy charged 1,000 per newly dirtied 4 KiB page (one per write here).
        assert_eq!(
            page_charge("stable_write_pages", n, false),
            n64 * (ACCESS + DIRTY) as i64 - n64 * LEGACY_DIRTY_PAGE_OVERHEAD as i64,
            "write {n}"
        );
    }
}

#[test]
fn reports_carry_the_page_charges() {
    let mut rt = runtime(MemoryCharges::Dmt);
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let r = rt
        .update(id, user(), "heap_write_pages", Encode!(&3u32).unwrap())
        .unwrap()
        .report;
    // The three arena pages plus whatever stack and allocator pages the
    // message touched, all in whole wasm pages.
    assert!(r.page_instructions >= 3 * (ACCESS + DIRTY), "{r:?}");
    assert_eq!(r.page_instructions % ACCESS, 0, "{r:?}");
    let mut legacy = runtime(MemoryCharges::Legacy);
    let id = legacy.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let l = legacy
        .update(id, user(), "heap_write_pages", Encode!(&3u32).unwrap())
        .unwrap()
        .report;
    assert_eq!(l.page_instructions, 0);
    assert_eq!(
        r.instructions - r.page_instructions,
        l.instructions,
        "same code, same count"
    );
}

#[test]
fn long_messages_run_in_slices_with_carry_over() {
    let slice = 1_000_000;
    let mut rt = Runtime::new(RuntimeConfig {
        max_slice_instructions: slice,
        ..config()
    });
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let reply = rt.update(id, user(), "spin", Encode!(&2_000_000u32).unwrap()).unwrap();
    let seen = Decode!(&reply.bytes, u64).unwrap();
    let r = reply.report;
    // Slices only cut the message: the count is the message's, as the
    // canister saw it (after the read: the reply, which may touch a fresh
    // page, 80,000 or 160,000).
    assert!(
        seen <= r.instructions && r.instructions - seen < 200_000,
        "{seen} {r:?}"
    );
    // Each slice ends at the first check point past its limit and the
    // overshoot shortens the next, so the slices cover the count exactly.
    let full = r.instructions / slice;
    assert!(r.slices == full || r.slices == full + 1, "{r:?}");
    assert!(r.slices > 5, "{r:?}");
}

#[test]
fn one_operation_over_a_whole_slice_is_a_slice_overrun() {
    let slice = 2_000_000;
    let mut rt = Runtime::new(RuntimeConfig {
        max_slice_instructions: slice,
        ..config()
    });
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    // A 100 KB fill overshoots a slice by less than a slice: it carries over...
    rt.update(id, user(), "fill_once", Encode!(&100_000u32).unwrap())
        .unwrap();
    // ... a 4 MB one (4 M + 64 written wasm pages × 160,000) leaves the
    // next slice nothing: IC0522.
    let err = rt
        .update(id, user(), "fill_once", Encode!(&4_000_000u32).unwrap())
        .unwrap_err();
    match err.reason() {
        Some(ExecError::SliceOverrun { instructions, limit }) => {
            assert_eq!(*limit, slice);
            assert!(*instructions > 2 * slice, "{err}");
        }
        other => panic!("expected a slice overrun, got {other:?}: {err}"),
    }
    assert!(err.to_string().contains("exceeded the slice limit 2000000"), "{err}");
}
