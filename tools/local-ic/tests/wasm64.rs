//! Wasm64 (memory64) canisters run as on the replica: their loads and
//! stores weigh 2, their `ic0` calls take i64 pointers, their heap grows to
//! 6 GiB and their instructions cost twice the cycles.
//!
//! The canister is one small wat module written for either address type,
//! so every wasm64 figure is checked against the same code as wasm32.

mod common;

use std::time::Duration;

use common::{config, controller, user};
use local_ic::charges::{DMT_OS_PAGE_ACCESS, DMT_OS_PAGE_DIRTY, OS_PAGES_PER_WASM_PAGE};
use local_ic::cycles::{execution_cost_in, ingress_induction_cost, UPDATE_MESSAGE_EXECUTION_FEE};
use local_ic::{MemoryCharges, Principal, Runtime, RuntimeConfig, WasmExecutionMode, MAX_WASM64_MEMORY_IN_BYTES};

const ACCESS: u64 = DMT_OS_PAGE_ACCESS * OS_PAGES_PER_WASM_PAGE;
const DIRTY: u64 = DMT_OS_PAGE_DIRTY * OS_PAGES_PER_WASM_PAGE;
const GIB: u64 = 1 << 30;
/// Loads and stores in `memops`.
const MEMOPS: u64 = 8;

/// The test canister with heap addresses of type `a` (`i32` or `i64`).
/// Argument and reply bytes are raw little-endian integers, not candid.
/// Scratch layout: the argument at 0, the timer count at 2048, the
/// principal of `call_self` at 3072.
fn canister(a: &str) -> Vec<u8> {
    let memory = if a == "i64" { "i64 2" } else { "2" };
    let text = r#"(module
      (import "ic0" "msg_arg_data_size" (func $arg_size (result A)))
      (import "ic0" "msg_arg_data_copy" (func $arg_copy (param A A A)))
      (import "ic0" "msg_reply_data_append" (func $append (param A A)))
      (import "ic0" "msg_reply" (func $reply))
      (import "ic0" "debug_print" (func $print (param A A)))
      (import "ic0" "trap" (func $trap (param A A)))
      (import "ic0" "canister_self_size" (func $self_size (result A)))
      (import "ic0" "canister_self_copy" (func $self_copy (param A A A)))
      (import "ic0" "call_new" (func $call_new (param A A A A A A A A)))
      (import "ic0" "call_on_cleanup" (func $call_on_cleanup (param A A)))
      (import "ic0" "call_perform" (func $call_perform (result i32)))
      (import "ic0" "time" (func $time (result i64)))
      (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
      (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
      (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
      (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
      (memory MEMORY)
      (table 3 funcref)
      (elem (i32.const 0) $on_reply $on_reject $on_cleanup)
      (data (A.const 1024) "hello from wasm")
      (data (A.const 1040) "pong")

      ;; The argument, read to address 0.
      (func $read_arg (call $arg_copy (A.const 0) (A.const 0) (call $arg_size)))
      ;; The argument's first 8 bytes as an address or size.
      (func $arg (result A) (call $read_arg) (A.load (A.const 0)))
      (func $reply_i64 (param $v i64)
        (i64.store (A.const 8) (local.get $v))
        (call $append (A.const 8) (A.const 8))
        (call $reply))

      (func (export "canister_update echo")
        (call $read_arg)
        (call $append (A.const 0) (call $arg_size))
        (call $reply))
      (func (export "canister_update print")
        (call $print (A.const 1024) (A.const 15))
        (call $append (A.const 1024) (A.const 15))
        (call $reply))
      ;; Eight loads and stores, nothing else that depends on the mode.
      (func (export "canister_update memops")
        (i64.store (A.const 64) (i64.load (A.const 72)))
        (i32.store (A.const 80) (i32.load (A.const 88)))
        (i32.store8 (A.const 96) (i32.load8_u (A.const 97)))
        (f64.store (A.const 104) (f64.load (A.const 112)))
        (call $reply))
      ;; memory.copy of arg bytes.
      (func (export "canister_update copy")
        (memory.copy (A.const 8192) (A.const 4096) (call $arg))
        (call $reply))
      (func (export "canister_update grow")
        (call $reply_i64 (i64.extend_ATOI64 (memory.grow (call $arg)))))
      (func (export "canister_query size")
        (call $reply_i64 (i64.extend_ATOI64 (memory.size))))
      ;; Stores 0x0123456789abcdef at the address in the argument.
      (func (export "canister_update poke")
        (i64.store (call $arg) (i64.const 0x0123456789abcdef))
        (call $reply))
      (func (export "canister_update poke_then_trap")
        (i64.store (call $arg) (i64.const 0x7777777777777777))
        (call $trap (A.const 1024) (A.const 5)))
      (func (export "canister_query peek")
        (call $reply_i64 (i64.load (call $arg))))
      ;; Fills two wasm pages from the address in the argument.
      (func (export "canister_update fill")
        (memory.fill (call $arg) (i32.const 0x5a) (A.const 131072))
        (call $reply))

      ;; Calls its own `pong` with callbacks whose env is the argument.
      (func (export "canister_update call_self")
        (call $self_copy (A.const 3072) (A.const 0) (call $self_size))
        (call $call_new
          (A.const 3072) (call $self_size) (A.const 1040) (A.const 4)
          (A.const 0) (call $arg) (A.const 1) (A.load (A.const 0)))
        (call $call_on_cleanup (A.const 2) (A.load (A.const 0)))
        (drop (call $call_perform)))
      (func (export "canister_update pong") (call $reply))
      (func $on_reply (param $env A)
        (call $reply_i64 (i64.extend_ATOI64 (local.get $env))))
      (func $on_reject (param $env A)
        (call $trap (A.const 1040) (A.const 4)))
      (func $on_cleanup (param $env A))

      (func (export "canister_update arm_timer")
        (drop (call $timer_set (i64.add (call $time) (i64.const 1000000000))))
        (call $reply))
      (func (export "canister_global_timer")
        (i64.store (A.const 2048) (i64.add (i64.load (A.const 2048)) (i64.const 1))))
      (func (export "canister_query timer_count")
        (call $reply_i64 (i64.load (A.const 2048))))

      (func (export "canister_update stable_put")
        (drop (call $stable_grow (i64.const 1)))
        (call $stable_write (i64.const 0) (i64.const 1024) (i64.const 15))
        (call $reply))
      (func (export "canister_query stable_get")
        (call $stable_read (i64.const 4096) (i64.const 0) (i64.const 15))
        (call $append (A.const 4096) (A.const 15))
        (call $reply))
    )"#;
    // An address-typed value as i64: wasm64's needs no extension (`+ 0`
    // keeps one shape of module for both modes).
    let extend = if a == "i64" {
        "i64.add (i64.const 0)"
    } else {
        "i64.extend_i32_s"
    };
    let text = text
        .replace("i64.extend_ATOI64", extend)
        .replace("MEMORY", memory)
        .replace(
            "(param A A A A A A A A)",
            &format!("(param {a} {a} {a} {a} {a} {a} {a} {a})"),
        )
        .replace("(param A A A)", &format!("(param {a} {a} {a})"))
        .replace("(param A A)", &format!("(param {a} {a})"))
        .replace("(result A)", &format!("(result {a})"))
        .replace("(param $env A)", &format!("(param $env {a})"))
        .replace("A.", &format!("{a}."));
    wat::parse_str(text).unwrap()
}

const MODES: [(WasmExecutionMode, &str); 2] = [(WasmExecutionMode::Wasm32, "i32"), (WasmExecutionMode::Wasm64, "i64")];

fn install(rt: &mut Runtime, a: &str) -> Principal {
    rt.install(&canister(a), vec![], vec![controller()]).unwrap()
}

fn update(rt: &mut Runtime, id: Principal, method: &str, arg: &[u8]) -> local_ic::Reply {
    rt.update(id, user(), method, arg.to_vec()).unwrap()
}

fn as_i64(bytes: &[u8]) -> i64 {
    i64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn query_i64(rt: &mut Runtime, id: Principal, method: &str, arg: &[u8]) -> i64 {
    as_i64(&rt.query(id, user(), method, arg.to_vec()).unwrap().bytes)
}

#[test]
fn the_mode_comes_from_the_memory() {
    let mut rt = Runtime::new(config());
    for (mode, a) in MODES {
        let id = install(&mut rt, a);
        assert_eq!(rt.execution_mode(id), Some(mode));
    }
    assert_eq!(WasmExecutionMode::Wasm64.max_heap_bytes(), 6 * GIB);
}

#[test]
fn loads_and_stores_weigh_two_and_bulk_copies_their_bytes() {
    let mut counts = Vec::new();
    for (_, a) in MODES {
        let mut rt = Runtime::new(config());
        let id = install(&mut rt, a);
        let memops = update(&mut rt, id, "memops", &[]).report.instructions;
        let copy = |rt: &mut Runtime, n: u64| update(rt, id, "copy", &n.to_le_bytes()).report.instructions;
        let (short, long) = (copy(&mut rt, 10), copy(&mut rt, 1_010));
        // One page each way either way: the difference is the byte count.
        assert_eq!(long - short, 1_000, "{a}: memory.copy charges its bytes");
        counts.push(memops);
    }
    assert_eq!(
        counts[1] - counts[0],
        MEMOPS,
        "wasm64 loads and stores weigh 2, wasm32 ones 1"
    );
}

#[test]
fn profiling_a_wasm64_canister_attributes_its_i64_bulk_bytes_and_changes_no_count() {
    let run = |profile: bool| {
        let mut rt = Runtime::new(RuntimeConfig { profile, ..config() });
        let id = install(&mut rt, "i64");
        let before = rt.profile(id);
        let count = update(&mut rt, id, "copy", &100_000u64.to_le_bytes())
            .report
            .instructions;
        let profile = rt.profile(id).map(|after| after.since(&before.unwrap()));
        (count, profile)
    };
    let (plain, none) = run(false);
    let (profiled, profile) = run(true);
    assert!(none.is_none());
    assert_eq!(plain, profiled);
    let profile = profile.unwrap();
    assert!(profile.attributed() >= 100_000, "{profile:?}");
    assert_eq!(profile.executed, profiled);
}

#[test]
fn ic0_calls_take_i64_pointers() {
    let mut rt = Runtime::new(config());
    let id = install(&mut rt, "i64");
    let arg = b"some argument bytes".to_vec();
    assert_eq!(update(&mut rt, id, "echo", &arg).bytes, arg);
    assert_eq!(update(&mut rt, id, "print", &[]).bytes, b"hello from wasm");
    assert_eq!(rt.logs().last().unwrap(), &(id, "hello from wasm".to_string()));

    // The env above 32 bits comes back whole: callbacks get it as i64.
    let env: i64 = 0x1_2345_6789;
    let reply = update(&mut rt, id, "call_self", &env.to_le_bytes());
    assert_eq!(as_i64(&reply.bytes), env);
    assert!(
        reply.messages.iter().any(|m| m.method == "pong"),
        "{:?}",
        reply.messages
    );

    update(&mut rt, id, "arm_timer", &[]);
    rt.advance_time(Duration::from_secs(2));
    assert_eq!(query_i64(&mut rt, id, "timer_count", &[]), 1);

    update(&mut rt, id, "stable_put", &[]);
    rt.upgrade(id, &canister("i64"), vec![], controller()).unwrap();
    let stable = rt.query(id, user(), "stable_get", vec![]).unwrap().bytes;
    assert_eq!(
        stable, b"hello from wasm",
        "stable64 with i64 heap addresses, across an upgrade"
    );
}

#[test]
fn the_heap_grows_to_6_gib_and_no_further() {
    let mut rt = Runtime::new(config());
    let id = install(&mut rt, "i64");
    let limit = (MAX_WASM64_MEMORY_IN_BYTES / 65_536) as i64;
    let grow = |rt: &mut Runtime, pages: i64| as_i64(&update(rt, id, "grow", &pages.to_le_bytes()).bytes);
    assert_eq!(grow(&mut rt, limit - 2), 2, "to exactly 6 GiB");
    assert_eq!(query_i64(&mut rt, id, "size", &[]), limit);
    assert_eq!(grow(&mut rt, 1), -1, "beyond 6 GiB: -1, no trap");
    assert_eq!(grow(&mut rt, -1), -1, "a huge i64 does not wrap");
    assert_eq!(grow(&mut rt, 0), limit);
}

#[test]
fn wasm32_heaps_still_stop_at_4_gib() {
    let mut rt = Runtime::new(config());
    let id = install(&mut rt, "i32");
    let grow = |rt: &mut Runtime, pages: i32| as_i64(&update(rt, id, "grow", &pages.to_le_bytes()).bytes);
    assert_eq!(grow(&mut rt, 65_536 - 1), -1);
    assert_eq!(grow(&mut rt, 10), 2);
}

#[test]
fn writes_above_4_gib_are_charged_committed_and_rolled_back() {
    let mut rt = Runtime::new(config());
    let id = install(&mut rt, "i64");
    update(&mut rt, id, "grow", &(90_000i64).to_le_bytes());
    let high = 5 * GIB + 8;
    let peek = |rt: &mut Runtime, addr: u64| query_i64(rt, id, "peek", &addr.to_le_bytes());

    // Page 0 (the argument) and the page at 5 GiB.
    let r = update(&mut rt, id, "poke", &high.to_le_bytes()).report;
    assert_eq!(r.page_instructions, 2 * (ACCESS + DIRTY), "{r:?}");
    assert_eq!(peek(&mut rt, high), 0x0123456789abcdef, "committed");

    let err = rt
        .update(id, user(), "poke_then_trap", high.to_le_bytes().to_vec())
        .unwrap_err();
    assert!(err.to_string().contains("hello"), "{err}");
    assert_eq!(peek(&mut rt, high), 0x0123456789abcdef, "the trapped write is undone");

    // An unaligned store across two pages above 4 GiB pays for both.
    let spanning = 5 * GIB + 3 * 65_536 - 4;
    let r = update(&mut rt, id, "poke", &spanning.to_le_bytes()).report;
    assert_eq!(r.page_instructions, 3 * (ACCESS + DIRTY), "{r:?}");
    assert_eq!(peek(&mut rt, spanning), 0x0123456789abcdef);

    // memory.fill of two pages from mid-page: three pages.
    let r = update(&mut rt, id, "fill", &(5 * GIB + 10 * 65_536 + 100).to_le_bytes()).report;
    assert_eq!(r.page_instructions, 4 * (ACCESS + DIRTY), "{r:?}");
    assert_eq!(peek(&mut rt, 5 * GIB + 11 * 65_536) as u64, 0x5a5a5a5a5a5a5a5a);
}

#[test]
fn legacy_dirty_pages_of_a_wasm64_heap_cost_four_times() {
    let mut rt = Runtime::new(RuntimeConfig {
        memory_charges: MemoryCharges::Legacy,
        ..config()
    });
    for (mode, a) in MODES {
        let id = install(&mut rt, a);
        let r = update(&mut rt, id, "poke", &(65_536u64 + 8).to_le_bytes()).report;
        assert!(r.dirtied_heap_pages >= 2, "{r:?}");
        let factor = if mode == WasmExecutionMode::Wasm64 { 4 } else { 1 };
        assert_eq!(
            r.heap_dirty_page_instructions,
            r.dirtied_heap_pages * local_ic::HEAP_DIRTY_PAGE_OVERHEAD * factor,
            "{a}"
        );
    }
}

#[test]
fn wasm64_instructions_cost_twice_the_cycles() {
    let mut rt = Runtime::new(config());
    let mut paid = Vec::new();
    for (mode, a) in MODES {
        let id = install(&mut rt, a);
        let before = rt.cycle_balance(id).unwrap();
        let reply = update(&mut rt, id, "memops", &[]);
        let cost = before - rt.cycle_balance(id).unwrap();
        let charged = reply.report.charged_instructions() as u128;
        assert_eq!(
            cost,
            ingress_induction_cost("memops".len()) + execution_cost_in(mode, charged as u64)
        );
        let per_instruction = if mode == WasmExecutionMode::Wasm64 { 2 } else { 1 };
        assert_eq!(
            cost - ingress_induction_cost("memops".len()),
            UPDATE_MESSAGE_EXECUTION_FEE + per_instruction * charged,
            "{a}: the 5 M fee is not doubled"
        );
        paid.push(cost);
    }
    assert!(paid[1] > paid[0]);
}

#[test]
fn wasm64_modules_may_not_use_the_32_bit_stable_api_nor_exceed_6_gib() {
    let mut rt = Runtime::new(config());
    let stable_read = wat::parse_str(
        r#"(module
             (import "ic0" "stable_read" (func (param i32 i32 i32)))
             (memory i64 1)
             (func (export "canister_update x")))"#,
    )
    .unwrap();
    let err = rt.install(&stable_read, vec![], vec![]).unwrap_err().to_string();
    assert!(err.contains("ic0.stable_read"), "{err}");
    assert!(err.contains("only available to wasm32 canisters"), "{err}");

    let too_big = wat::parse_str(r#"(module (memory i64 1 98305) (func (export "canister_update x")))"#).unwrap();
    let err = rt.install(&too_big, vec![], vec![]).unwrap_err().to_string();
    assert!(err.contains("98305"), "{err}");
    let at_limit = wat::parse_str(r#"(module (memory i64 1 98304) (func (export "canister_update x")))"#).unwrap();
    rt.install(&at_limit, vec![], vec![]).unwrap();
    assert_eq!(rt.canisters().len(), 1);
}

/// The ic-cdk 0.20 test canisters built for `wasm64-unknown-unknown`, which
/// needs a nightly toolchain with `rust-src`, so this test is not run by
/// default. Build them, then run it with `--ignored`:
///
/// ```text
/// cargo +nightly build -Zbuild-std=std,panic_abort --target wasm64-unknown-unknown \
///     --profile canister -p test-canister-counter -p test-canister-timers
/// cargo test --release -p local-ic --test wasm64 -- --ignored
/// ```
#[test]
#[ignore = "needs the test canisters built for wasm64-unknown-unknown with nightly (see the doc comment)"]
fn ic_cdk_canisters_built_for_wasm64_run_like_wasm32_ones() {
    use candid::{Decode, Encode};
    let wasm = |name: &str| {
        let path = common::target_dir().join(format!("wasm64-unknown-unknown/canister/{name}.wasm"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let get = |rt: &mut Runtime, id, method: &str| {
        Decode!(&rt.query(id, user(), method, Encode!().unwrap()).unwrap().bytes, u64).unwrap()
    };
    let mut rt = Runtime::new(config());
    let id = rt
        .install(&wasm("counter"), Encode!(&10u64).unwrap(), vec![controller()])
        .unwrap();
    assert_eq!(rt.execution_mode(id), Some(WasmExecutionMode::Wasm64));
    let reply = rt.update(id, user(), "increment", Encode!().unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, u64).unwrap(), 11);
    assert_eq!(get(&mut rt, id, "get_and_mutate"), 11, "query changes are discarded");
    assert_eq!(get(&mut rt, id, "get_stable"), 11);
    let heap_pages = get(&mut rt, id, "heap_pages");
    let err = rt
        .update(id, user(), "grow_heap_then_trap", Encode!(&100u32).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("boom after growing"), "{err}");
    assert_eq!(
        get(&mut rt, id, "heap_pages"),
        heap_pages,
        "the trapped growth is undone"
    );
    rt.upgrade(id, &wasm("counter"), Encode!(&0u64).unwrap(), controller())
        .unwrap();
    assert_eq!(get(&mut rt, id, "get_stable"), 11, "stable memory survives the upgrade");

    // ic-cdk-timers: timers as self-calls with i64 callback envs.
    let timers = rt.install(&wasm("timers"), vec![], vec![controller()]).unwrap();
    rt.update(
        timers,
        user(),
        "start_chain",
        Encode!(&5u64, &1u64, &100_000u32).unwrap(),
    )
    .unwrap();
    rt.advance_time(Duration::from_secs(10));
    let fired = rt.query(timers, user(), "fired", Encode!().unwrap()).unwrap().bytes;
    assert_eq!(Decode!(&fired, Vec<u64>).unwrap(), vec![0, 1, 2, 3, 4]);
}
