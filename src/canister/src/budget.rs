//! The instruction budget of one message, as the engine sees it.
//!
//! The engine asks `can_afford(macs)` before each unit of work. We answer from
//! the replica's own counter (`performance_counter(0)`), an estimate of the
//! unit's cost learned from the units already run, and a reserve kept back
//! for the checkpoint that ends every step.
//!
//! **Page charges.** The replica's deterministic memory tracker charges, in
//! the message and against its limit, the first access of every 64 KiB heap
//! or stable page the message touches (80,000 instructions) and its first
//! write (80,000 more). A unit's measured cost includes what it touched
//! first (its weights, KV rows, scratch), because the counter does. The
//! estimate uses the highest instructions per multiply-add seen, and the
//! units of a message's first token are the ones that touch their weights
//! first, so every estimate covers a unit whose pages are all fresh: later
//! tokens of the message, whose pages are paid for, come in under it (the
//! loss is at most one unit at the end of a message). The first message of
//! a canister learns from the prior, which is above any unit's cost with its
//! page charges (16 per multiply-add; F32 weights read fresh add 4.9, 1.22
//! per byte, to their ~2 of compute). The reserve covers the checkpoint:
//! stable pages of new KV rows, 160,000 per 64 KiB written.

use icllm_engine::job::Phase;
use std::cell::Cell;

/// Instructions per multiply-add assumed before any unit was measured.
/// Deliberately pessimistic (scalar f32 costs ~6 per MAC); it adapts after one unit.
const PRIOR_INSTRUCTIONS_PER_MAC: f64 = 16.0;
/// The ratio [`MessageBudget::first_unit_estimate`] assumes while nothing
/// has been measured (a fresh or upgraded canister): above every kernel's
/// measured cost (1.1-2.6 per MAC on the bench shapes), far below the prior.
const FIRST_UNIT_PRIOR_RATIO: f64 = 4.0;
/// Fixed instructions charged per unit on top of its MACs (loop and call overhead).
const UNIT_OVERHEAD: u64 = 50_000;

thread_local! {
    /// Highest instructions/MAC seen so far (heap only: relearned after an upgrade).
    static LEARNED_RATIO: Cell<f64> = const { Cell::new(0.0) };
    /// Lowest instructions/MAC seen so far: what the big matrix units (the
    /// output head, the FFN) cost, whose fixed per-unit costs are negligible.
    static LEARNED_MIN_RATIO: Cell<f64> = const { Cell::new(0.0) };
}

/// Budget for the rest of this message: stop when the next unit might not
/// fit below `limit - reserve`.
pub struct MessageBudget<F: Fn() -> u64> {
    counter: F,
    limit: u64,
    reserve: u64,
    /// The unit running now: its phase, the counter when it started, its MACs.
    current: Option<(Phase, u64, u64)>,
    /// Units started in this message.
    units: u32,
    /// Instructions of the units run so far, by phase.
    pub prefill_instructions: u64,
    pub decode_instructions: u64,
}

impl<F: Fn() -> u64> MessageBudget<F> {
    /// `counter` reads the instructions used so far in this message.
    pub fn new(counter: F, limit: u64, reserve: u64) -> Self {
        MessageBudget {
            counter,
            limit,
            reserve,
            current: None,
            units: 0,
            prefill_instructions: 0,
            decode_instructions: 0,
        }
    }

    /// Instructions still available before the reserve.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.reserve).saturating_sub((self.counter)())
    }

    fn ratio() -> f64 {
        let learned = LEARNED_RATIO.with(|r| r.get());
        if learned > 0.0 {
            learned
        } else {
            PRIOR_INSTRUCTIONS_PER_MAC
        }
    }

    /// Cost estimate of a unit of `macs` multiply-adds, with 25 % headroom.
    pub fn estimate(macs: u64) -> u64 {
        (macs as f64 * Self::ratio() * 1.25) as u64 + UNIT_OVERHEAD
    }

    /// The estimate for the first unit of a message that [`Self::estimate`]
    /// says no message could fit. That estimate applies the highest ratio
    /// seen (small units, whose fixed costs weigh most) to every unit, which
    /// overestimates a big matrix unit several times over; under a small
    /// message limit the output head would then never start and the job
    /// would stall for ever. Such a unit is judged at the lowest ratio seen
    /// instead: if even that is optimistic the message traps and rolls back,
    /// no worse than never trying. With nothing learned yet (the ratios live
    /// in the heap, so an upgrade forgets them) it is judged at
    /// [`FIRST_UNIT_PRIOR_RATIO`]: a prompt batch sized before an upgrade
    /// from the learned ratio would otherwise never continue after it, as
    /// the prior (16 per MAC) puts its units above any message (seen: a job
    /// that made no progress for thousands of messages).
    fn first_unit_estimate(macs: u64) -> u64 {
        let min = LEARNED_MIN_RATIO.with(|r| r.get());
        let ratio = if min > 0.0 { min } else { FIRST_UNIT_PRIOR_RATIO };
        (macs as f64 * ratio * 1.25) as u64 + UNIT_OVERHEAD
    }

    /// Ends the current unit: charges its instructions to its phase and
    /// learns its cost per multiply-add.
    fn close_unit(&mut self, now: u64) {
        if let Some((phase, start, macs)) = self.current.take() {
            let used = now.saturating_sub(start);
            match phase {
                Phase::Prefill => self.prefill_instructions += used,
                Phase::Decode => self.decode_instructions += used,
            }
            if macs > 0 {
                let observed = used.saturating_sub(UNIT_OVERHEAD / 2) as f64 / macs as f64;
                LEARNED_RATIO.with(|r| r.set(r.get().max(observed)));
                LEARNED_MIN_RATIO.with(|r| {
                    let min = r.get();
                    r.set(if min > 0.0 { min.min(observed) } else { observed });
                });
            }
        }
    }

    /// Ends accounting: everything since the last unit started goes to its
    /// phase. Returns the phase of the last unit, if any ran.
    pub fn finish(&mut self) -> Option<Phase> {
        let phase = self.current.map(|(p, _, _)| p);
        let now = (self.counter)();
        self.close_unit(now);
        phase
    }
}

impl<F: Fn() -> u64> icllm_engine::job::Budget for MessageBudget<F> {
    fn can_afford(&mut self, macs: u64) -> bool {
        let now = (self.counter)();
        let estimate = Self::estimate(macs);
        // Only a unit that no message could ever start at the highest ratio
        // is tried at the lowest one: elsewhere an optimistic estimate would
        // risk a trap, and a trap is retried (and paid for) every round.
        let estimate = if self.units == 0 && estimate.saturating_add(self.reserve) > self.limit {
            Self::first_unit_estimate(macs)
        } else {
            estimate
        };
        now.saturating_add(estimate).saturating_add(self.reserve) <= self.limit
    }

    /// A prompt batch is sized as if the message had already used `reserve`:
    /// its later units run in fresh messages, whose start (the scheduler,
    /// loading the job) may cost more than this one's did. Without the
    /// allowance a batch sized right at the limit could never continue: every
    /// later message would refuse its next unit (the bench's small-limit run
    /// did exactly that).
    fn can_afford_batch(&mut self, macs: u64) -> bool {
        let now = (self.counter)().max(self.reserve);
        now.saturating_add(Self::estimate(macs)).saturating_add(self.reserve) <= self.limit
    }

    fn unit_started(&mut self, phase: Phase, macs: u64) {
        let now = (self.counter)();
        self.close_unit(now);
        self.current = Some((phase, now, macs));
        self.units += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icllm_engine::job::Budget;

    /// A batch accepted at the very start of one message can continue at the
    /// start of the next even when that one starts later (up to the reserve).
    #[test]
    fn a_batch_accepted_in_one_message_continues_in_the_next() {
        let macs = 1_000_000;
        let reserve = 2_000_000;
        let est = MessageBudget::<fn() -> u64>::estimate(macs);
        let limit = 2 * reserve + est;
        for start in [0, 100_000, reserve] {
            let mut b = MessageBudget::new(move || start, limit, reserve);
            assert!(b.can_afford_batch(macs), "start {start}");
            let mut later = MessageBudget::new(move || reserve, limit, reserve);
            assert!(later.can_afford(macs), "start {start}");
            let mut tight = MessageBudget::new(move || start, limit - 1, reserve);
            assert!(!tight.can_afford_batch(macs), "start {start}");
        }
        // Units inside a batch are judged on the counter alone.
        let mut b = MessageBudget::new(|| 0, reserve + est, reserve);
        assert!(b.can_afford(macs));
        assert!(!b.can_afford_batch(macs));
    }

    #[test]
    fn with_nothing_learned_a_unit_no_message_could_fit_is_tried_at_the_first_unit_prior() {
        // A fresh thread: nothing learned (as after an upgrade).
        std::thread::spawn(|| {
            let macs = 1_000_000;
            let limit = 10_000_000;
            assert!(
                MessageBudget::<fn() -> u64>::estimate(macs) > limit,
                "the prior rules it out"
            );
            let mut fresh = MessageBudget::new(|| 0, limit, 1_000_000);
            assert!(fresh.can_afford(macs), "tried as the first unit of a message");
            fresh.unit_started(Phase::Prefill, 1);
            let mut b = MessageBudget::new(|| 0, limit, 1_000_000);
            b.unit_started(Phase::Prefill, 1);
            assert!(!b.can_afford(macs), "not after another unit");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_unit_no_message_could_fit_is_tried_first_at_the_lowest_ratio_seen() {
        use std::rc::Rc;
        // Learn a high ratio from a small unit and a low one from a big unit.
        let clock = Rc::new(Cell::new(0u64));
        let c = clock.clone();
        let mut b = MessageBudget::new(move || c.get(), u64::MAX, 0);
        b.unit_started(Phase::Decode, 1_000);
        clock.set(1_000 * 40 + UNIT_OVERHEAD / 2); // 40 per MAC
        b.unit_started(Phase::Decode, 10_000_000);
        clock.set(clock.get() + 10_000_000 + UNIT_OVERHEAD / 2); // 1 per MAC
        b.finish();
        // A 10 M-MAC unit: at 40 per MAC it never fits 100 M; at 1 it does.
        let limit = 100_000_000;
        let mut fresh = MessageBudget::new(|| 0, limit, 1_000_000);
        assert!(fresh.can_afford(10_000_000), "the first unit of a message");
        fresh.unit_started(Phase::Decode, 1);
        assert!(!fresh.can_afford(10_000_000), "later units use the highest ratio");
        // A unit a fresh message could fit at the highest ratio keeps that estimate.
        let mut late = MessageBudget::new(|| 60_000_000, limit, 1_000_000);
        assert!(!late.can_afford(1_000_000), "50 M estimated, 39 M left");
    }
}
