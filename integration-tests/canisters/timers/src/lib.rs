//! Timers test canister: a chain of ic-cdk-timers timers, each scheduling the
//! next, and a record of which ran (heap + stable so upgrades can be checked).

use std::cell::RefCell;
use std::time::Duration;

thread_local! {
    static FIRED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static INSTR: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn schedule(step: u64, remaining: u64, delay_secs: u64, work: u32) {
    ic_cdk_timers::set_timer(Duration::from_secs(delay_secs), async move {
        // Burn some instructions so each timer message has a visible cost.
        let mut acc: u64 = step;
        for i in 0..work {
            acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i as u64));
        }
        std::hint::black_box(acc);
        FIRED.with(|f| f.borrow_mut().push(step));
        INSTR.with(|f| f.borrow_mut().push(ic_cdk::api::performance_counter(0)));
        if remaining > 0 {
            schedule(step + 1, remaining - 1, delay_secs, work);
        }
    });
}

/// Schedules a chain of `len` timers, `delay_secs` apart, each doing `work`
/// loop iterations.
#[ic_cdk::update]
fn start_chain(len: u64, delay_secs: u64, work: u32) {
    if len > 0 {
        schedule(0, len - 1, delay_secs, work);
    }
}

/// Steps of the chain that have fired so far.
#[ic_cdk::query]
fn fired() -> Vec<u64> {
    FIRED.with(|f| f.borrow().clone())
}

/// `performance_counter(0)` as seen at the end of each timer task.
#[ic_cdk::query]
fn timer_instructions() -> Vec<u64> {
    INSTR.with(|f| f.borrow().clone())
}

/// After an upgrade the heap (and with it every timer) is gone; `rearm`
/// decides whether post_upgrade schedules a new one-step chain.
#[ic_cdk::post_upgrade]
fn post_upgrade(rearm: bool) {
    if rearm {
        schedule(100, 0, 1, 10);
    }
}
