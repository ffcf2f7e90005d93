//! What the job and scheduler logic asks of the system besides memory: the
//! time and the instructions this message has used. Behind a trait so that
//! logic runs in native unit tests, with a clock and a counter the test
//! drives; the endpoints pass [`Ic`].

/// The system's clock and instruction counter.
pub trait Env {
    /// Nanoseconds since 1970 (the IC's `time`: one value per message).
    fn now_ns(&self) -> u64;
    /// Instructions this message has used so far (`performance_counter(0)`).
    fn instructions(&self) -> u64;
}

/// The Internet Computer's own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ic;

impl Env for Ic {
    fn now_ns(&self) -> u64 {
        ic_cdk::api::time()
    }

    fn instructions(&self) -> u64 {
        ic_cdk::api::performance_counter(0)
    }
}

/// A clock the test sets and a counter that advances by `per_read` at every
/// read, so that a message "spends" instructions as the code looks at it.
#[cfg(test)]
pub struct FakeEnv {
    pub now: std::cell::Cell<u64>,
    used: std::cell::Cell<u64>,
    per_read: u64,
}

#[cfg(test)]
impl FakeEnv {
    pub fn new(now: u64, per_read: u64) -> FakeEnv {
        FakeEnv {
            now: std::cell::Cell::new(now),
            used: std::cell::Cell::new(0),
            per_read,
        }
    }

    /// A new message: the counter starts again from 0 and the clock moves on.
    pub fn next_message(&self, elapsed_ns: u64) {
        self.used.set(0);
        self.now.set(self.now.get() + elapsed_ns);
    }
}

#[cfg(test)]
impl Env for FakeEnv {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }

    fn instructions(&self) -> u64 {
        self.used.set(self.used.get() + self.per_read);
        self.used.get()
    }
}
