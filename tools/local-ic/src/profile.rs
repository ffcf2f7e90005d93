//! Per-function instruction profiles ([`crate::RuntimeConfig::profile`]).
//!
//! A profiling runtime instruments every module with one extra counter per
//! defined function ([`crate::instrument::Options::profile`]): each basic
//! block's charge, and the byte count of each bulk memory op, is added to the
//! counter of the function the code belongs to (inlined code counts for the
//! function it was inlined into). Instruction counts themselves are the same
//! as without profiling.
//!
//! The counters accumulate over every update-type message the canister
//! instance ran (init, upgrade hooks, updates, timers, callbacks), committed
//! or rolled back (they measure work done, not state); queries and
//! `canister_inspect_message`, whose changes are always discarded, are left
//! out. They start
//! from zero again after an upgrade (a new instance). Take two snapshots
//! with [`crate::Runtime::profile`] and subtract them ([`Profile::since`]) to
//! profile a stretch of messages.

/// One function's share of a [`Profile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionProfile {
    /// The function's index in the module.
    pub index: u32,
    /// Demangled name from the module's `name` section (without the Rust
    /// hash suffix), or `func[<index>]`.
    pub name: String,
    /// IC-weighted instructions charged to the function's own code.
    pub instructions: u64,
}

/// Instructions per function, cumulative since the instance was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Every defined function, in index order (zero counts included).
    pub functions: Vec<FunctionProfile>,
    /// Everything the instruction counter was charged over the same
    /// messages: the functions' charges plus the host's system-API charges.
    /// (The heap dirty-page charge, applied after a message, is not
    /// included.) A message that ran out of instructions counts what it was
    /// charged, which can exceed its limit by part of a basic block.
    pub executed: u64,
}

impl Profile {
    /// The instructions charged to wasm functions.
    pub fn attributed(&self) -> u64 {
        self.functions.iter().map(|f| f.instructions).sum()
    }

    /// The host's system-API charges (`ic0` calls: fixed cost, bytes moved,
    /// stable pages dirtied) and the in-band page charges
    /// ([`crate::charges`]): what no function was charged.
    pub fn system_api(&self) -> u64 {
        self.executed.saturating_sub(self.attributed())
    }

    /// The profile of what ran after `earlier` (a snapshot of the same
    /// instance).
    pub fn since(&self, earlier: &Profile) -> Profile {
        let before: std::collections::HashMap<u32, u64> =
            earlier.functions.iter().map(|f| (f.index, f.instructions)).collect();
        Profile {
            functions: self
                .functions
                .iter()
                .map(|f| FunctionProfile {
                    instructions: f
                        .instructions
                        .saturating_sub(before.get(&f.index).copied().unwrap_or(0)),
                    ..f.clone()
                })
                .collect(),
            executed: self.executed.saturating_sub(earlier.executed),
        }
    }

    /// The functions with instructions, most first (ties by index).
    pub fn top(&self) -> Vec<&FunctionProfile> {
        let mut v: Vec<&FunctionProfile> = self.functions.iter().filter(|f| f.instructions > 0).collect();
        v.sort_by(|a, b| b.instructions.cmp(&a.instructions).then(a.index.cmp(&b.index)));
        v
    }
}
