//! The runtime against real ic-cdk canisters (integration-tests/canisters).

mod common;

use std::time::Duration;

use candid::{Decode, Encode, Principal};
use common::{controller, runtime, user, wasm};
use local_ic::{Error, ExecError, Limits, MessageKind, Runtime, RuntimeConfig};

fn install_counter(rt: &mut Runtime, start: u64) -> Principal {
    rt.install(&wasm("counter"), Encode!(&start).unwrap(), vec![controller()])
        .expect("install counter")
}

fn call_u64(rt: &mut Runtime, id: Principal, method: &str) -> u64 {
    let reply = rt.update(id, user(), method, Encode!().unwrap()).expect(method);
    Decode!(&reply.bytes, u64).unwrap()
}

fn query_u64(rt: &mut Runtime, id: Principal, method: &str) -> u64 {
    let reply = rt.query(id, user(), method, Encode!().unwrap()).expect(method);
    Decode!(&reply.bytes, u64).unwrap()
}

#[test]
fn counter_updates_persist_queries_do_not() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 10);
    assert_eq!(call_u64(&mut rt, id, "increment"), 11);
    let reply = rt.update(id, user(), "increment", Encode!().unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, u64).unwrap(), 12);
    let r = &reply.report;
    assert_eq!(r.kind, MessageKind::Update);
    assert!(r.instructions > 0 && r.committed);
    assert_eq!(r.stable_bytes_written, 8);
    eprintln!(
        "increment: {} instructions, {} heap pages written",
        r.instructions, r.dirtied_heap_pages
    );
    if local_ic::cow_memory::supported() || local_ic::memory_snapshot::soft_dirty_supported() {
        // Incremental tracking: a handful of pages (stack, counter,
        // allocator), not the whole heap.
        assert!(r.dirtied_heap_pages > 0 && r.dirtied_heap_pages < 64, "{r:?}");
    }
    // The tracker's in-band page charges come in whole wasm pages (16 OS
    // pages × 5,000 per first access, as much again per first write); the
    // after-message copy charge is 3,000 per dirty OS page, reported apart.
    assert!(
        r.page_instructions > 0 && r.page_instructions.is_multiple_of(80_000),
        "{r:?}"
    );
    assert!(r.page_instructions <= r.instructions);
    assert!(r.heap_dirty_page_instructions > 0 && r.heap_dirty_page_instructions.is_multiple_of(16 * 3_000));
    assert_eq!(r.slices, 1);
    assert_eq!(
        r.charged_instructions(),
        r.instructions + r.heap_dirty_page_instructions
    );

    // The query mutates the heap; the change must not survive (nor is it charged).
    let q = rt.query(id, user(), "get_and_mutate", Encode!().unwrap()).unwrap();
    assert_eq!(q.report.heap_dirty_page_instructions, 0);
    assert_eq!(query_u64(&mut rt, id, "get_and_mutate"), 12);
    assert_eq!(query_u64(&mut rt, id, "get_and_mutate"), 12);
    assert_eq!(query_u64(&mut rt, id, "get"), 12);
    assert_eq!(query_u64(&mut rt, id, "get_stable"), 12);

    let stats = rt.stats();
    let inc = &stats[&(id, "increment".to_string())];
    assert_eq!(inc.messages, 2);
}

#[test]
fn trapping_update_leaves_no_trace() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    assert_eq!(call_u64(&mut rt, id, "increment"), 1);
    let pages = rt.stable_size(id).unwrap();

    let err = rt
        .update(id, user(), "increment_then_trap", Encode!().unwrap())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "Error from Canister {id}: Canister called `ic0.trap` with message: '"
        )),
        "{text}"
    );
    assert!(text.contains("boom after mutating"), "{text}");
    let report = err.report().expect("report of the trapped message");
    assert!(!report.committed);
    assert!(report.stable_bytes_written > 0);

    assert_eq!(query_u64(&mut rt, id, "get"), 1, "heap rolled back");
    assert_eq!(query_u64(&mut rt, id, "get_stable"), 1, "stable rolled back");
    assert_eq!(rt.stable_size(id).unwrap(), pages, "stable growth rolled back");
    assert_eq!(call_u64(&mut rt, id, "increment"), 2, "canister still works");
}

#[test]
fn endless_loop_hits_the_limit_and_rolls_back() {
    let mut rt = runtime();
    rt.set_limits(Limits {
        update: 50_000_000,
        ..Limits::default()
    });
    let id = install_counter(&mut rt, 5);
    let err = rt
        .update(id, user(), "increment_then_loop", Encode!().unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Error from Canister {id}: Canister exceeded the limit of 50000000 instructions for single message execution."
        )
    );
    assert_eq!(err.reason(), Some(&ExecError::InstructionLimitExceeded(50_000_000)));
    assert_eq!(err.report().unwrap().instructions, 50_000_000);
    assert_eq!(query_u64(&mut rt, id, "get"), 5);
    assert_eq!(query_u64(&mut rt, id, "get_stable"), 0);
    assert_eq!(call_u64(&mut rt, id, "increment"), 6);
}

#[test]
fn default_limit_wording() {
    let err = ExecError::InstructionLimitExceeded(Limits::default().update);
    assert_eq!(
        err.to_string(),
        "Canister exceeded the limit of 40000000000 instructions for single message execution."
    );
}

#[test]
fn raw_rand_is_32_bytes_fresh_and_seeded() {
    fn three(seed: u64) -> Vec<Vec<u8>> {
        let mut rt = Runtime::new(RuntimeConfig {
            seed,
            ..common::config()
        });
        let id = install_counter(&mut rt, 0);
        (0..3)
            .map(|_| {
                let reply = rt.update(id, user(), "rand", Encode!().unwrap()).expect("rand");
                // ingress, then the reply callback that answers it
                assert!(reply.messages.iter().any(|m| m.kind == MessageKind::Callback));
                Decode!(&reply.bytes, Vec<u8>).unwrap()
            })
            .collect()
    }
    let a = three(1);
    assert!(a.iter().all(|r| r.len() == 32));
    assert_ne!(a[0], a[1]);
    assert_ne!(a[1], a[2]);
    assert_eq!(a, three(1), "same seed, same bytes");
    assert_ne!(a, three(2), "different seed, different bytes");
}

#[test]
fn unknown_method_and_bad_candid_are_clear_errors() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let err = rt.update(id, user(), "nope", Encode!().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Error from Canister {id}: Canister has no update method 'nope'.")
    );
    let err = rt.query(id, user(), "increment", Encode!().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Error from Canister {id}: Canister has no query method 'increment'.")
    );
    // `add` takes a nat64; give it text.
    let err = rt.update(id, user(), "add", Encode!(&"seven").unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Canister called `ic0.trap`"), "{text}");
    assert!(
        text.to_lowercase().contains("decode") || text.contains("type"),
        "{text}"
    );
    let err = rt.update(id, user(), "add", b"garbage".to_vec()).unwrap_err();
    assert!(matches!(err.reason(), Some(ExecError::CalledTrap(_))), "{err}");
    assert_eq!(query_u64(&mut rt, id, "get"), 0);
}

#[test]
fn not_a_canister_is_refused_at_install() {
    let mut rt = runtime();
    let err = rt.install(b"this is not wasm", vec![], vec![]).unwrap_err();
    assert!(
        err.to_string()
            .contains("Canister's Wasm module is not valid: the file is not a WebAssembly module"),
        "{err}"
    );
    let unknown_import = wat::parse_str(
        r#"(module
             (import "ic0" "msg_reply" (func))
             (import "ic0" "mint_free_cycles" (func (param i32)))
             (import "env" "memcpy" (func))
             (memory 1)
             (func (export "canister_update x")))"#,
    )
    .unwrap();
    let err = rt.install(&unknown_import, vec![], vec![]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ic0.mint_free_cycles"), "{text}");
    assert!(text.contains("env.memcpy"), "{text}");
    assert!(!text.contains("ic0.msg_reply"), "{text}");
    assert!(rt.canisters().is_empty());
}

#[test]
fn upgrade_keeps_stable_resets_heap_runs_post_upgrade() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 40);
    assert_eq!(call_u64(&mut rt, id, "increment"), 41);
    let reply = rt.query(id, user(), "post_upgrade_ran", Encode!().unwrap()).unwrap();
    assert!(!Decode!(&reply.bytes, bool).unwrap());

    let report = rt
        .upgrade(id, &wasm("counter"), Encode!().unwrap(), controller())
        .expect("upgrade");
    assert!(report.instructions > 0);
    assert_eq!(query_u64(&mut rt, id, "get"), 0, "heap reset");
    assert_eq!(query_u64(&mut rt, id, "get_stable"), 41, "stable kept");
    let reply = rt.query(id, user(), "post_upgrade_ran", Encode!().unwrap()).unwrap();
    assert!(Decode!(&reply.bytes, bool).unwrap(), "post_upgrade ran");
}

#[test]
fn failed_upgrade_leaves_the_canister_as_it_was() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 7);
    assert_eq!(call_u64(&mut rt, id, "increment"), 8);
    // The timers canister's post_upgrade wants a bool: decoding "()" traps.
    let err = rt
        .upgrade(id, &wasm("timers"), Encode!().unwrap(), controller())
        .unwrap_err();
    assert!(matches!(err.reason(), Some(ExecError::CalledTrap(_))), "{err}");
    assert_eq!(query_u64(&mut rt, id, "get"), 8, "old heap intact");
    assert_eq!(query_u64(&mut rt, id, "get_stable"), 8, "pre_upgrade write undone");
    assert_eq!(call_u64(&mut rt, id, "increment"), 9);
}

#[test]
fn timer_chain_runs_each_timer_as_its_own_message() {
    let mut rt = runtime();
    rt.set_limits(Limits {
        update: 2_000_000,
        ..Limits::default()
    });
    let id = rt.install(&wasm("timers"), vec![], vec![controller()]).unwrap();
    // 5 timers, 1 s apart, each ~1.2 M instructions: together far above the
    // 2 M limit, each alone below it.
    rt.update(id, user(), "start_chain", Encode!(&5u64, &1u64, &100_000u32).unwrap())
        .unwrap();
    let reports = rt.advance_time(Duration::from_secs(10));
    let fired = Decode!(
        &rt.query(id, user(), "fired", Encode!().unwrap()).unwrap().bytes,
        Vec<u64>
    )
    .unwrap();
    assert_eq!(fired, vec![0, 1, 2, 3, 4]);
    let timer_msgs = reports.iter().filter(|r| r.kind == MessageKind::GlobalTimer).count();
    assert_eq!(timer_msgs, 5, "one canister_global_timer per step");
    let executors: Vec<_> = reports
        .iter()
        .filter(|r| r.method.contains("timer_executor") && r.kind == MessageKind::Update)
        .collect();
    assert_eq!(executors.len(), 5);
    let total: u64 = executors.iter().map(|r| r.instructions).sum();
    assert!(total > 2_000_000, "together above one message's limit: {total}");
    for r in &executors {
        assert!(r.committed && r.error.is_none(), "{r:?}");
        assert!(r.instructions > 100_000 && r.instructions < 2_000_000, "{r:?}");
    }
    // The tasks' own performance_counter(0) readings are per message.
    let instr = Decode!(
        &rt.query(id, user(), "timer_instructions", Encode!().unwrap())
            .unwrap()
            .bytes,
        Vec<u64>
    )
    .unwrap();
    assert_eq!(instr.len(), 5);
    assert!(instr.iter().all(|&i| i < 2_000_000 && i > 100_000), "{instr:?}");
}

#[test]
fn timers_do_not_survive_upgrade_unless_rearmed() {
    let mut rt = runtime();
    let id = rt.install(&wasm("timers"), vec![], vec![controller()]).unwrap();
    rt.update(id, user(), "start_chain", Encode!(&1u64, &5u64, &10u32).unwrap())
        .unwrap();
    assert_ne!(rt.global_timer(id), Some(0));
    rt.upgrade(id, &wasm("timers"), Encode!(&false).unwrap(), controller())
        .unwrap();
    assert_eq!(rt.global_timer(id), Some(0), "upgrade clears the global timer");
    let reports = rt.advance_time(Duration::from_secs(60));
    assert!(reports.is_empty(), "{reports:?}");
    let fired = Decode!(
        &rt.query(id, user(), "fired", Encode!().unwrap()).unwrap().bytes,
        Vec<u64>
    )
    .unwrap();
    assert!(fired.is_empty());

    // Re-armed in post_upgrade: fires.
    rt.upgrade(id, &wasm("timers"), Encode!(&true).unwrap(), controller())
        .unwrap();
    assert!(rt.tick().is_empty(), "re-armed 1 s ahead of the clock: not due yet");
    rt.advance_time(Duration::from_secs(2));
    let fired = Decode!(
        &rt.query(id, user(), "fired", Encode!().unwrap()).unwrap().bytes,
        Vec<u64>
    )
    .unwrap();
    assert_eq!(fired, vec![100]);
}

#[test]
fn caller_is_passed_through() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let reply = rt.query(id, user(), "whoami", Encode!().unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, Principal).unwrap(), user());
}

#[test]
fn errors_name_the_canister() {
    let mut rt = runtime();
    let missing = local_ic::canister_id(99);
    let err = rt.update(missing, user(), "x", vec![]).unwrap_err();
    assert!(matches!(err, Error::CanisterNotFound(_)));
    assert_eq!(err.to_string(), format!("Canister {missing} not found"));
}

#[test]
fn inspect_message_filters_ingress_updates() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let err = rt.update(id, user(), "forbidden", Encode!().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Error from Canister {id}: Canister rejected the message")
    );
    assert_eq!(err.report().unwrap().kind, MessageKind::InspectMessage);
    assert_eq!(query_u64(&mut rt, id, "get"), 0, "the update never ran");
    // Accepted calls run inspect first, then the method.
    let reply = rt.update(id, user(), "increment", Encode!().unwrap()).unwrap();
    assert_eq!(reply.report.kind, MessageKind::Update);
    let kinds: Vec<MessageKind> = rt.reports().iter().rev().take(2).map(|r| r.kind).collect();
    assert_eq!(kinds, vec![MessageKind::Update, MessageKind::InspectMessage]);
}

#[test]
fn heap_dirty_page_charge_can_be_switched_off() {
    let legacy = RuntimeConfig {
        memory_charges: local_ic::MemoryCharges::Legacy,
        ..RuntimeConfig::default()
    };
    let mut rt = Runtime::new(legacy.clone());
    let id = install_counter(&mut rt, 1);
    let r = rt.update(id, user(), "increment", Encode!().unwrap()).unwrap().report;
    // Legacy: 1,000 per dirtied 4 KiB heap page, after the message.
    assert_eq!(
        r.heap_dirty_page_instructions,
        r.dirtied_heap_pages * local_ic::HEAP_DIRTY_PAGE_OVERHEAD
    );

    let mut rt = Runtime::new(RuntimeConfig {
        heap_dirty_page_overhead: 0,
        ..legacy
    });
    let id = install_counter(&mut rt, 1);
    let reply = rt.update(id, user(), "increment", Encode!().unwrap()).unwrap();
    assert_eq!(reply.report.heap_dirty_page_instructions, 0);
    assert_eq!(reply.report.charged_instructions(), reply.report.instructions);
}

#[test]
fn heap_growth_of_a_trapped_message_is_rolled_back() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let before = query_u64(&mut rt, id, "heap_pages");
    let err = rt
        .update(id, user(), "grow_heap_then_trap", Encode!(&100u32).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("boom after growing"), "{err}");
    assert_eq!(
        query_u64(&mut rt, id, "heap_pages"),
        before,
        "the trapped growth is undone"
    );
    // The pages left mapped are reused, zeroed, by the next growth.
    let reply = rt.update(id, user(), "grow_heap", Encode!(&100u32).unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, u64).unwrap(), before + 100);
    assert_eq!(query_u64(&mut rt, id, "heap_pages"), before + 100);
    assert_eq!(call_u64(&mut rt, id, "increment"), 1, "the heap still works");
}

#[test]
fn calls_from_canisters_skip_inspect_message() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let other = local_ic::canister_id(42);
    let reply = rt
        .update_from_canister(id, other, "forbidden", Encode!().unwrap())
        .expect("no inspect_message for canister callers");
    assert_eq!(Decode!(&reply.bytes, u64).unwrap(), 0);
    assert_eq!(reply.report.caller, other);
    assert_eq!(query_u64(&mut rt, id, "get"), 1_000_000, "the update ran");
    let reply = rt.query(id, other, "whoami", Encode!().unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, Principal).unwrap(), other);
}

#[test]
fn submitted_calls_interleave_at_their_awaits() {
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let start = rt.reports().len();
    let pending: Vec<_> = (0..3)
        .map(|_| rt.submit_update(id, user(), "rand", Encode!().unwrap()).unwrap())
        .collect();
    let replies: Vec<Vec<u8>> = pending
        .into_iter()
        .map(|p| Decode!(&rt.await_update(p).unwrap().bytes, Vec<u8>).unwrap())
        .collect();
    assert_eq!(replies.len(), 3);
    assert!(replies[0] != replies[1] && replies[1] != replies[2]);
    // All three first messages ran before any callback.
    let kinds: Vec<MessageKind> = rt.reports()[start..]
        .iter()
        .filter(|r| r.kind != MessageKind::InspectMessage)
        .map(|r| r.kind)
        .collect();
    assert_eq!(&kinds[..3], &[MessageKind::Update; 3]);
    assert!(kinds[3..].iter().all(|k| *k == MessageKind::Callback), "{kinds:?}");
}

/// Messages are paid from the canister's balance by the replica's fees; a
/// canister that cannot prepay a message above its freezing reserve is
/// out of cycles until topped up.
#[test]
fn messages_cost_cycles_and_a_frozen_canister_refuses_calls() {
    use local_ic::cycles::{
        execution_cost, freezing_reserve, ingress_induction_cost, DEFAULT_FREEZING_THRESHOLD_SECONDS,
    };
    let mut rt = runtime();
    let id = install_counter(&mut rt, 0);
    let before = rt.cycle_balance(id).unwrap();
    let arg = Encode!().unwrap();
    let reply = rt.update(id, user(), "increment", arg.clone()).unwrap();
    let after = rt.cycle_balance(id).unwrap();
    assert_eq!(
        before - after,
        ingress_induction_cost("increment".len() + arg.len()) + execution_cost(reply.report.charged_instructions())
    );
    // Queries are free.
    query_u64(&mut rt, id, "get");
    assert_eq!(rt.cycle_balance(id).unwrap(), after);

    // Just short of the reserve plus one message's prepayment at the limit.
    let liquid = rt.liquid_cycle_balance(id).unwrap();
    let reserve = after - liquid;
    let stable_and_heap_reserve_is_30_days = reserve >= freezing_reserve(0, DEFAULT_FREEZING_THRESHOLD_SECONDS);
    assert!(stable_and_heap_reserve_is_30_days, "reserve {reserve}");
    let prepay = execution_cost(rt.limits().update) + ingress_induction_cost("increment".len() + arg.len());
    rt.set_cycle_balance(id, reserve + prepay - 1).unwrap();
    let err = rt
        .update(id, user(), "increment", arg.clone())
        .expect_err("out of cycles");
    assert!(
        err.to_string()
            .contains("is out of cycles: please top up the canister with at least 1 additional cycles"),
        "{err}"
    );
    assert_eq!(query_u64(&mut rt, id, "get"), 1, "the refused call changed nothing");
    rt.set_cycle_balance(id, reserve + prepay).unwrap();
    assert_eq!(call_u64(&mut rt, id, "increment"), 2);
}

/// What the counter's `relay` saw of its call.
#[derive(candid::CandidType, candid::Deserialize, Debug)]
struct Relayed {
    reply: Option<Vec<u8>>,
    reject_code: Option<u32>,
    reject_message: String,
    refunded: u128,
}

fn relay_arg(callee: Principal, method: &str, arg: Vec<u8>, cycles: u128, timeout_seconds: Option<u32>) -> Vec<u8> {
    Encode!(&callee, &method.to_string(), &arg, &cycles, &timeout_seconds).unwrap()
}

/// `from` calls `callee.method(arg)` with `cycles` attached (guaranteed
/// response); returns what `from` saw and the reply with every message run.
fn relay(
    rt: &mut Runtime,
    from: Principal,
    callee: Principal,
    method: &str,
    arg: Vec<u8>,
    cycles: u128,
) -> (Relayed, local_ic::Reply) {
    let reply = rt
        .update(from, user(), "relay", relay_arg(callee, method, arg, cycles, None))
        .expect("relay");
    (Decode!(&reply.bytes, Relayed).unwrap(), reply)
}

/// What the messages of `reply` that ran on `id` cost it.
fn execution_on(reply: &local_ic::Reply, id: Principal) -> u128 {
    use local_ic::cycles::execution_cost;
    reply
        .messages
        .iter()
        .filter(|m| m.canister == id && m.kind != MessageKind::InspectMessage)
        .map(|m| execution_cost(m.charged_instructions()))
        .sum()
}

/// Cycles attached to a call reach the callee as far as it accepts them;
/// the rest come back with the response, all of them when it rejects or
/// traps. Every balance change is accounted for to the cycle.
#[test]
fn cycles_move_with_calls_as_far_as_the_callee_accepts() {
    use local_ic::cycles::{call_cost, ingress_induction_cost};
    let mut rt = runtime();
    let (a, b) = (install_counter(&mut rt, 0), install_counter(&mut rt, 0));
    let balances = |rt: &Runtime| (rt.cycle_balance(a).unwrap(), rt.cycle_balance(b).unwrap());
    // What `a` pays for relaying besides the cycles that stay with `b`.
    let relay_fees = |reply: &local_ic::Reply, method: &str, arg: &[u8]| {
        let relay_arg_len = relay_arg(b, method, arg.to_vec(), 1_000, None).len();
        ingress_induction_cost("relay".len() + relay_arg_len)
            + execution_on(reply, a)
            + call_cost(method.len() + arg.len())
    };

    let (a0, b0) = balances(&rt);
    let arg = Encode!(&300u128).unwrap();
    let (seen, reply) = relay(&mut rt, a, b, "accept_cycles", arg.clone(), 1_000);
    assert_eq!(Decode!(&seen.reply.unwrap(), u128).unwrap(), 300);
    assert_eq!(seen.refunded, 700);
    let (a1, b1) = balances(&rt);
    assert_eq!(b1, b0 + 300 - execution_on(&reply, b));
    assert_eq!(a0 - a1, 300 + relay_fees(&reply, "accept_cycles", &arg));

    // Accepting more than was attached takes what there is.
    let arg = Encode!(&u128::MAX).unwrap();
    let (seen, reply) = relay(&mut rt, a, b, "accept_cycles", arg.clone(), 1_000);
    assert_eq!(Decode!(&seen.reply.unwrap(), u128).unwrap(), 1_000);
    assert_eq!(seen.refunded, 0);
    let (a2, b2) = balances(&rt);
    assert_eq!(b2, b1 + 1_000 - execution_on(&reply, b));
    assert_eq!(a1 - a2, 1_000 + relay_fees(&reply, "accept_cycles", &arg));

    // A trap after accepting undoes the acceptance: all cycles come back.
    let arg = Encode!(&u128::MAX).unwrap();
    let (seen, reply) = relay(&mut rt, a, b, "accept_cycles_then_trap", arg.clone(), 1_000);
    assert_eq!(seen.reject_code, Some(5), "{seen:?}");
    assert!(seen.reject_message.contains("boom after accepting cycles"), "{seen:?}");
    assert_eq!(seen.refunded, 1_000);
    let (a3, b3) = balances(&rt);
    assert_eq!(
        b3,
        b2 - execution_on(&reply, b),
        "the callee pays for its trapped message only"
    );
    assert_eq!(a2 - a3, relay_fees(&reply, "accept_cycles_then_trap", &arg));

    // A reject before anything runs (no such method) refunds all too.
    let (seen, reply) = relay(&mut rt, a, b, "no_such_method", vec![], 1_000);
    assert_eq!(seen.reject_code, Some(5), "{seen:?}");
    assert_eq!(seen.refunded, 1_000);
    assert_eq!(balances(&rt), (a3 - relay_fees(&reply, "no_such_method", &[]), b3));

    // A callee too poor to run the message rejects it, SYS_TRANSIENT
    // (IC0207), without running: every cycle comes back.
    let (a5, b5) = balances(&rt);
    let b_reserve = b5 - rt.liquid_cycle_balance(b).unwrap();
    rt.set_cycle_balance(b, b_reserve + 1_000).unwrap();
    let (seen, reply) = relay(&mut rt, a, b, "accept_cycles", Encode!(&5u128).unwrap(), 1_000);
    assert_eq!(seen.reject_code, Some(2), "{seen:?}");
    assert!(
        seen.reject_message.contains(&format!("Canister {b} is out of cycles")),
        "{seen:?}"
    );
    assert_eq!(seen.refunded, 1_000);
    assert_eq!(execution_on(&reply, b), 0, "nothing ran on b");
    assert_eq!(rt.cycle_balance(b).unwrap(), b_reserve + 1_000);
    assert_eq!(
        a5 - rt.cycle_balance(a).unwrap(),
        relay_fees(&reply, "accept_cycles", &Encode!(&5u128).unwrap())
    );
    rt.set_cycle_balance(b, b5).unwrap();

    // Ingress carries no cycles: nothing to accept.
    let reply = rt.update(b, user(), "accept_cycles", Encode!(&5u128).unwrap()).unwrap();
    assert_eq!(Decode!(&reply.bytes, u128).unwrap(), 0);

    // A call the liquid balance cannot pay for is not made.
    let (a4, _) = balances(&rt);
    let err = rt
        .update(
            a,
            user(),
            "relay",
            relay_arg(b, "accept_cycles", Encode!(&0u128).unwrap(), a4, None),
        )
        .expect_err("cannot attach the whole balance");
    assert!(err.to_string().contains("insufficient liquid cycles balance"), "{err}");
    let report = err.report().expect("the relay ran").clone();
    assert!(!report.committed);
    let bytes = "relay".len() + relay_arg(b, "accept_cycles", Encode!(&0u128).unwrap(), a4, None).len();
    assert_eq!(
        a4 - rt.cycle_balance(a).unwrap(),
        ingress_induction_cost(bytes) + local_ic::cycles::execution_cost(report.charged_instructions())
    );
}

/// A stopped canister refuses ingress and inter-canister calls (code 5,
/// the replica's wording) and fires no timers; a stopping one finishes the
/// calls it has open first. Started again, it runs as before.
#[test]
fn stopping_waits_for_open_calls_and_a_stopped_canister_refuses_calls_and_timers() {
    use local_ic::CanisterStatus;
    let mut rt = runtime();
    let (a, b) = (install_counter(&mut rt, 0), install_counter(&mut rt, 41));

    // `rand` waits on raw_rand: stopping `b` now leaves it stopping.
    let pending = rt.submit_update(b, user(), "rand", Encode!().unwrap()).unwrap();
    assert_eq!(rt.stop_canister(b).unwrap(), CanisterStatus::Stopping);
    let err = rt.update(b, user(), "increment", Encode!().unwrap()).unwrap_err();
    assert!(err.to_string().contains(&format!("Canister {b} is stopping")), "{err}");
    let reply = rt.await_update(pending).expect("the open call finishes");
    assert_eq!(Decode!(&reply.bytes, Vec<u8>).unwrap().len(), 32);
    assert_eq!(rt.canister_status(b), Some(CanisterStatus::Stopped));

    let err = rt.update(b, user(), "increment", Encode!().unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { code: local_ic::RejectCode::CanisterError, message, .. }
            if message == &format!("Canister {b} is stopped")),
        "{err}"
    );
    assert!(rt.query(b, user(), "get", Encode!().unwrap()).is_err());
    let (seen, _) = relay(&mut rt, a, b, "increment", Encode!().unwrap(), 77);
    assert_eq!(seen.reject_code, Some(5), "{seen:?}");
    assert_eq!(seen.reject_message, format!("Canister {b} is stopped"));
    assert_eq!(seen.refunded, 77);

    rt.start_canister(b).unwrap();
    assert_eq!(rt.canister_status(b), Some(CanisterStatus::Running));
    assert_eq!(call_u64(&mut rt, b, "increment"), 42, "nothing was lost");

    // Timers wait while the canister is stopped and fire once it runs.
    let t = rt.install(&wasm("timers"), vec![], vec![controller()]).unwrap();
    rt.update(t, user(), "start_chain", Encode!(&2u64, &1u64, &10u32).unwrap())
        .unwrap();
    assert_eq!(rt.stop_canister(t).unwrap(), CanisterStatus::Stopped);
    let reports = rt.advance_time(Duration::from_secs(5));
    assert!(reports.iter().all(|r| r.canister != t), "{reports:?}");
    rt.start_canister(t).unwrap();
    rt.advance_time(Duration::from_secs(5));
    let fired = Decode!(
        &rt.query(t, user(), "fired", Encode!().unwrap()).unwrap().bytes,
        Vec<u64>
    )
    .unwrap();
    assert_eq!(fired, vec![0, 1]);
}

/// A bounded-wait call whose callee does not answer in time gets
/// SYS_UNKNOWN "Call deadline has expired.": with its cycles back if the
/// request was never delivered, without them if the callee had it (its
/// later answer is dropped).
#[test]
fn bounded_wait_calls_give_up_at_their_deadline() {
    let mut rt = runtime();
    let (a, b, c) = (
        install_counter(&mut rt, 0),
        install_counter(&mut rt, 0),
        install_counter(&mut rt, 0),
    );
    let sys_unknown = 6;

    // The request waits in a held queue past its deadline.
    rt.hold_messages_to(b);
    let arg = relay_arg(b, "increment", Encode!().unwrap(), 500, Some(10));
    let pending = rt.submit_update(a, user(), "relay", arg).unwrap();
    rt.tick();
    rt.advance_time(Duration::from_secs(9));
    assert!(
        rt.await_update(pending.clone()).is_err(),
        "still waiting before the deadline"
    );
    rt.advance_time(Duration::from_secs(2));
    let seen = Decode!(&rt.await_update(pending).unwrap().bytes, Relayed).unwrap();
    assert_eq!(seen.reject_code, Some(sys_unknown), "{seen:?}");
    assert_eq!(seen.reject_message, "Call deadline has expired.");
    assert_eq!(seen.refunded, 500);
    rt.release_messages_to(b);
    assert_eq!(query_u64(&mut rt, b, "get"), 0, "the expired request was dropped");

    // `b` has the request but waits on `c` (unbounded): `a` gives up, and
    // `b`'s answer, when it comes, is dropped.
    rt.hold_messages_to(c);
    let inner = relay_arg(c, "increment", Encode!().unwrap(), 0, None);
    let arg = relay_arg(b, "relay", inner, 500, Some(10));
    let pending = rt.submit_update(a, user(), "relay", arg).unwrap();
    rt.tick();
    rt.advance_time(Duration::from_secs(11));
    let seen = Decode!(&rt.await_update(pending).unwrap().bytes, Relayed).unwrap();
    assert_eq!(seen.reject_code, Some(sys_unknown), "{seen:?}");
    assert_eq!(seen.refunded, 0, "the callee holds the cycles");
    let start = rt.reports().len();
    rt.release_messages_to(c);
    assert_eq!(query_u64(&mut rt, c, "get"), 1, "the inner call ran");
    let late: Vec<_> = rt.reports()[start..].iter().map(|r| (r.canister, r.kind)).collect();
    assert!(late.contains(&(b, MessageKind::Callback)), "b finished: {late:?}");
    assert!(
        !late.iter().any(|&(id, _)| id == a),
        "nothing reached a again: {late:?}"
    );
}
