//! Per-function profiles (`RuntimeConfig::profile`): every charge the
//! module's code makes lands in exactly one function's counter, and
//! profiling leaves the instruction counts unchanged.

use candid::Principal;
use local_ic::{Profile, Runtime, RuntimeConfig};

/// `canister_init` runs `leaf` ten times and fills 1,000 bytes, without any
/// system call; `canister_update run` and `canister_query q` do the same and
/// reply.
const MODULE: &str = r#"
(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  ;; Rust-style mangled name: the profile shows it demangled, without hash.
  (func $_ZN5hello4leaf17h0123456789abcdefE (param i32) (result i32)
    local.get 0 i32.const 3 i32.mul)
  (func $fill (param i32)
    i32.const 0 i32.const 7 local.get 0 memory.fill)
  (func $work
    (local i32 i32)
    (loop $l
      local.get 0 call $_ZN5hello4leaf17h0123456789abcdefE local.get 1 i32.add local.set 1
      local.get 0 i32.const 1 i32.add local.tee 0 i32.const 10 i32.lt_u br_if $l)
    i32.const 1000 call $fill)
  (func (export "canister_init") call $work)
  (func (export "canister_update run") call $work call $reply)
  (func (export "canister_query q") call $work call $reply))
"#;

fn runtime(profile: bool) -> Runtime {
    Runtime::new(RuntimeConfig {
        profile,
        module_cache_dir: None,
        // Page charges go to no function; these tests attribute code only.
        memory_charges: local_ic::MemoryCharges::Legacy,
        ..RuntimeConfig::default()
    })
}

fn count(p: &Profile, name: &str) -> u64 {
    p.functions
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no function {name} in {p:?}"))
        .instructions
}

#[test]
fn per_function_attribution_sums_to_the_counter() {
    let wasm = wat::parse_str(MODULE).unwrap();
    let controller = Principal::anonymous();

    let mut plain = runtime(false);
    let plain_id = plain.install(&wasm, vec![], vec![controller]).unwrap();
    let plain_init = plain.last_report().unwrap().instructions;
    assert!(plain.profile(plain_id).is_none(), "no profile unless asked for");

    let mut rt = runtime(true);
    let id = rt.install(&wasm, vec![], vec![controller]).unwrap();
    let init = rt.last_report().unwrap().instructions;
    assert_eq!(init, plain_init, "profiling must not change the count");

    // canister_init makes no system call: every instruction is some function's.
    let after_init = rt.profile(id).unwrap();
    assert_eq!(after_init.executed, init);
    assert_eq!(after_init.attributed(), init);
    assert_eq!(after_init.system_api(), 0);
    // leaf: entry 1 + local.get 1 + i32.const 1 + i32.mul 1 = 4, ten calls.
    assert_eq!(count(&after_init, "hello::leaf"), 40);
    // fill: entry 1 + three operands 3 + memory.fill 100 + 1,000 bytes.
    assert_eq!(count(&after_init, "fill"), 1104);
    let top = after_init.top();
    assert_eq!(top[0].name, "fill");
    assert_eq!(top.iter().map(|f| f.instructions).sum::<u64>(), init);

    // An update that replies: the system call's charge is the only part no
    // function is charged with; `since` isolates the message.
    let reply = rt.update(id, controller, "run", vec![]).unwrap();
    let plain_reply = plain.update(plain_id, controller, "run", vec![]).unwrap();
    assert_eq!(reply.report.instructions, plain_reply.report.instructions);
    let run = rt.profile(id).unwrap().since(&after_init);
    assert_eq!(run.executed, reply.report.instructions);
    assert!(run.system_api() > 0, "{run:?}");
    assert_eq!(run.attributed() + run.system_api(), run.executed);
    assert_eq!(count(&run, "hello::leaf"), 40);
    assert_eq!(count(&run, "fill"), 1104);

    // Queries are left out (their changes are always discarded).
    let before = rt.profile(id).unwrap();
    rt.query(id, controller, "q", vec![]).unwrap();
    assert_eq!(rt.profile(id).unwrap(), before);
}
