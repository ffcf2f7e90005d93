//! Counter test canister for the local IC runtime.
//!
//! Heap state (`COUNTER`), stable memory (first 8 bytes mirror the counter),
//! methods that trap after mutating both, an endless loop, `raw_rand`, and
//! upgrade hooks that keep the counter only through stable memory.

use std::cell::Cell;

thread_local! {
    static COUNTER: Cell<u64> = const { Cell::new(0) };
    static POST_UPGRADE_RAN: Cell<bool> = const { Cell::new(false) };
}

fn ensure_stable() {
    if ic_cdk::stable::stable_size() == 0 {
        ic_cdk::stable::stable_grow(1).expect("stable_grow");
    }
}

fn stable_value() -> u64 {
    if ic_cdk::stable::stable_size() == 0 {
        return 0;
    }
    let mut buf = [0u8; 8];
    ic_cdk::stable::stable_read(0, &mut buf);
    u64::from_le_bytes(buf)
}

fn set_stable_value(v: u64) {
    ensure_stable();
    ic_cdk::stable::stable_write(0, &v.to_le_bytes());
}

#[ic_cdk::init]
fn init(start: u64) {
    COUNTER.with(|c| c.set(start));
}

/// Increments the heap counter and mirrors it into stable memory.
#[ic_cdk::update]
fn increment() -> u64 {
    let v = COUNTER.with(|c| c.get()) + 1;
    COUNTER.with(|c| c.set(v));
    set_stable_value(v);
    v
}

/// Adds `n`, returns the new value.
#[ic_cdk::update]
fn add(n: u64) -> u64 {
    let v = COUNTER.with(|c| c.get()) + n;
    COUNTER.with(|c| c.set(v));
    set_stable_value(v);
    v
}

/// Mutates heap and stable memory (and grows stable memory), then traps.
#[ic_cdk::update]
fn increment_then_trap() -> u64 {
    COUNTER.with(|c| c.set(c.get() + 1000));
    set_stable_value(123_456);
    ic_cdk::stable::stable_grow(3).expect("stable_grow");
    ic_cdk::trap("boom after mutating");
}

/// Grows the heap by `pages` wasm pages, then traps: the growth must be
/// rolled back with the rest of the message.
#[ic_cdk::update]
fn grow_heap_then_trap(pages: u32) -> u64 {
    grow_heap(pages);
    ic_cdk::trap("boom after growing the heap");
}

/// Grows the heap by `pages` wasm pages; returns the new size in pages.
#[ic_cdk::update]
fn grow_heap(pages: u32) -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        if core::arch::wasm32::memory_grow(0, pages as usize) == usize::MAX {
            ic_cdk::trap("memory.grow failed");
        }
    }
    let _ = pages;
    heap_pages()
}

/// The heap's size in wasm pages (`memory.size`).
#[ic_cdk::query]
fn heap_pages() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// Mutates state, then loops forever (until the instruction limit).
#[ic_cdk::update]
fn increment_then_loop() -> u64 {
    COUNTER.with(|c| c.set(c.get() + 1000));
    set_stable_value(999);
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
        if x == 0 {
            break;
        }
    }
    x
}

/// A query that mutates the heap: the change must be discarded.
#[ic_cdk::query]
fn get_and_mutate() -> u64 {
    COUNTER.with(|c| {
        let v = c.get();
        c.set(v + 500);
        v
    })
}

#[ic_cdk::query]
fn get() -> u64 {
    COUNTER.with(|c| c.get())
}

#[ic_cdk::query]
fn get_stable() -> u64 {
    stable_value()
}

#[ic_cdk::query]
fn stable_pages() -> u64 {
    ic_cdk::stable::stable_size()
}

#[ic_cdk::query]
fn post_upgrade_ran() -> bool {
    POST_UPGRADE_RAN.with(|c| c.get())
}

/// Returns 32 bytes from the management canister's `raw_rand`.
#[ic_cdk::update]
async fn rand() -> Vec<u8> {
    ic_cdk::call::Call::bounded_wait(candid::Principal::management_canister(), "raw_rand")
        .await
        .expect("raw_rand call")
        .candid::<Vec<u8>>()
        .expect("raw_rand reply")
}

#[ic_cdk::query]
fn whoami() -> candid::Principal {
    ic_cdk::api::msg_caller()
}

#[ic_cdk::pre_upgrade]
fn pre_upgrade() {
    set_stable_value(COUNTER.with(|c| c.get()));
}

#[ic_cdk::post_upgrade]
fn post_upgrade() {
    // Heap is fresh here: COUNTER is 0 until restored from stable memory.
    POST_UPGRADE_RAN.with(|c| c.set(true));
}

/// Ingress filter: `forbidden` is never accepted; everything else is.
#[ic_cdk::inspect_message]
fn inspect() {
    if ic_cdk::api::msg_method_name() != "forbidden" {
        ic_cdk::api::accept_message();
    }
}

/// Only reachable if inspect_message accepted the call (it never does).
#[ic_cdk::update]
fn forbidden() -> u64 {
    COUNTER.with(|c| c.set(c.get() + 1_000_000));
    0
}

/// What [`relay`] saw of its call.
#[derive(candid::CandidType)]
struct Relayed {
    reply: Option<Vec<u8>>,
    reject_code: Option<u32>,
    reject_message: String,
    /// Cycles the response brought back (`msg_cycles_refunded`).
    refunded: u128,
}

/// Calls `callee.method(arg)` with `cycles` attached, bounded-wait when
/// `timeout_seconds` is given, and reports how the call ended.
#[ic_cdk::update]
async fn relay(
    callee: candid::Principal,
    method: String,
    arg: Vec<u8>,
    cycles: u128,
    timeout_seconds: Option<u32>,
) -> Relayed {
    use ic_cdk::call::{Call, CallFailed};
    let call = match timeout_seconds {
        Some(t) => Call::bounded_wait(callee, &method).change_timeout(t),
        None => Call::unbounded_wait(callee, &method),
    };
    let result = call.with_raw_args(&arg).with_cycles(cycles).await;
    // Only a callback may ask for the refund: a call that was never made
    // (insufficient cycles) traps here instead.
    match result {
        Ok(reply) => Relayed {
            reply: Some(reply.into_bytes()),
            reject_code: None,
            reject_message: String::new(),
            refunded: ic_cdk::api::msg_cycles_refunded(),
        },
        Err(CallFailed::CallRejected(r)) => Relayed {
            reply: None,
            reject_code: Some(r.raw_reject_code()),
            reject_message: r.reject_message().to_string(),
            refunded: ic_cdk::api::msg_cycles_refunded(),
        },
        Err(e) => ic_cdk::trap(format!("relay: {e}")),
    }
}

/// Accepts up to `max` of the cycles the caller attached; returns how many.
#[ic_cdk::update]
fn accept_cycles(max: u128) -> u128 {
    ic_cdk::api::msg_cycles_accept(max)
}

/// Accepts up to `max` attached cycles, then traps: the caller gets all back.
#[ic_cdk::update]
fn accept_cycles_then_trap(max: u128) -> u128 {
    ic_cdk::api::msg_cycles_accept(max);
    ic_cdk::trap("boom after accepting cycles");
}

#[ic_cdk::query]
fn balance() -> u128 {
    ic_cdk::api::canister_cycle_balance()
}
