//! Instruction counts follow the replica's weights: the expectation is
//! derived from the compiled canister's own loop bodies.

mod common;

use candid::{Decode, Encode, Principal};
use common::{controller, runtime, user, wasm};
use local_ic::weights::weight;
use wasmparser::{Operator, Payload};

/// The operators of every innermost loop of exported function `name`
/// (between `loop` and its `end`). LLVM unrolls loops and leaves remainder
/// loops, so a function can have several.
fn loop_bodies<'a>(wasm: &'a [u8], name: &str) -> Vec<Vec<Operator<'a>>> {
    let mut func_index = None;
    let mut imported = 0u32;
    let mut bodies = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            Payload::ImportSection(r) => {
                imported += r
                    .into_imports()
                    .filter(|i| matches!(i.as_ref().unwrap().ty, wasmparser::TypeRef::Func(_)))
                    .count() as u32
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.unwrap();
                    if e.name == name {
                        func_index = Some(e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    let body = &bodies[(func_index.expect("export") - imported) as usize];
    let mut reader = body.get_operators_reader().unwrap();
    let mut ops = Vec::new();
    while !reader.eof() {
        ops.push(reader.read().unwrap());
    }
    let mut loops = Vec::new();
    for (start, _) in ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Operator::Loop { .. }))
    {
        let mut depth = 0;
        let mut inner = true;
        for (i, op) in ops.iter().enumerate().skip(start + 1) {
            match op {
                Operator::Loop { .. } => {
                    inner = false;
                    depth += 1
                }
                Operator::Block { .. } | Operator::If { .. } => depth += 1,
                Operator::End if depth == 0 => {
                    if inner {
                        loops.push(ops[start + 1..i].to_vec());
                    }
                    break;
                }
                Operator::End => depth -= 1,
                _ => {}
            }
        }
    }
    loops
}

/// Whether every operator of the body runs on each pass (one back edge).
fn is_straight_line(body: &[Operator<'_>]) -> bool {
    let branches = body
        .iter()
        .filter(|op| {
            matches!(
                op,
                Operator::Br { .. } | Operator::BrIf { .. } | Operator::BrTable { .. } | Operator::If { .. }
            )
        })
        .count();
    branches == 1
}

fn measure(rt: &mut local_ic::Runtime, id: Principal, method: &str, n: u32) -> u64 {
    let reply = rt.query(id, user(), method, Encode!(&n).unwrap()).unwrap();
    Decode!(&reply.bytes, u64).unwrap()
}

/// The measured cost of `n` more iterations must be whole passes through
/// the loop body at its weighted cost (LLVM may unroll by `k`, then one
/// pass is `k` iterations).
fn check_loop(method: &str, export: &str) -> (u64, u64) {
    let module = wasm("metering");
    let weights: Vec<u64> = loop_bodies(&module, export)
        .iter()
        .filter(|body| is_straight_line(body))
        .map(|body| body.iter().map(|op| weight(op, false)).sum())
        .collect();
    assert!(!weights.is_empty(), "{export} has no straight-line loop");
    let mut rt = runtime();
    let id = rt.install(&module, vec![], vec![controller()]).unwrap();
    let n = 4096u32;
    let one = measure(&mut rt, id, method, n);
    let two = measure(&mut rt, id, method, 2 * n);
    let delta = two - one;
    eprintln!("{method}: loop body weights {weights:?}, N={n}: {one}, 2N: {two}, delta {delta}");
    // Exactly n/k passes through one of the loop bodies, k the unroll factor.
    let hot = weights.iter().find_map(|&w| {
        [1u64, 2, 4, 8]
            .into_iter()
            .find(|k| delta * k == w * n as u64)
            .map(|k| (w, k))
    });
    let Some((w, k)) = hot else {
        panic!("{method}: delta {delta} for {n} iterations matches no loop body of {weights:?}");
    };
    eprintln!("{method}: {} passes of weight {w} (unrolled x{k})", n as u64 / k);
    (w, delta)
}

#[test]
fn integer_and_float_loops_cost_what_the_weights_say() {
    let (int_pass, int_delta) = check_loop("measure_int", "int_loop");
    let (float_pass, float_delta) = check_loop("measure_float", "float_loop");
    // The float loop's multiply (2), add (2) and f64 division (5) make it
    // dearer than the integer loop's 1-weight ALU ops.
    eprintln!("int loop: {int_pass} per pass; float loop: {float_pass} per pass");
    assert!(float_delta > int_delta, "{float_delta} vs {int_delta}");
}

#[test]
fn performance_counter_matches_the_report() {
    let mut rt = runtime();
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let reply = rt
        .update(id, user(), "counter_at_end", Encode!(&1000u32).unwrap())
        .unwrap();
    let seen = Decode!(&reply.bytes, u64).unwrap();
    let total = reply.report.instructions;
    // After the counter is read, only the reply (encoding, msg_reply and
    // the function epilogues) remains: a few thousand at most, plus the
    // page charges of any page it touches first.
    let pages = reply.report.page_instructions;
    assert!(
        seen < total && total - seen < 20_000 + pages,
        "seen {seen}, report {total}"
    );
}

#[test]
fn bulk_memory_is_charged_per_byte() {
    let mut rt = runtime();
    let id = rt.install(&wasm("metering"), vec![], vec![controller()]).unwrap();
    let small = measure(&mut rt, id, "measure_bulk", 1 << 10);
    let large = measure(&mut rt, id, "measure_bulk", 1 << 20);
    // `v.fill` compiles to memory.fill: 100 + 1 per byte.
    assert_eq!(large - small, (1 << 20) - (1 << 10), "{small} {large}");
}
