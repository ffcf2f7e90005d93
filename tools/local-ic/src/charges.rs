//! What the replica charges for memory a message touches, and how a long
//! message is sliced: every constant in one place, with its source.
//!
//! **`Dmt`** (the replica since dfinity/ic #10789, merged 2026-07, its flag
//! removed by #11180; [`MemoryCharges::Dmt`]): the deterministic memory
//! tracker (`rs/memory_tracker/src/deterministic.rs`) maps heap and stable
//! memory in whole 64 KiB wasm pages. The first access to a wasm page in a
//! message charges [`DMT_OS_PAGE_ACCESS`] for each of its
//! [`OS_PAGES_PER_WASM_PAGE`] OS pages, the first write as much again
//! ([`DMT_OS_PAGE_DIRTY`]), for heap and stable memory alike, *in-band*:
//! against the slice and message limits and visible to
//! `ic0.performance_counter`. Non-replicated queries track no dirty pages
//! (`DirtyPageTracking::Ignore`): they pay for accesses only. The PR's
//! table adds an unchanged after-message cost of copying dirty pages,
//! [`DIRTY_PAGE_COPY_OVERHEAD`] per dirty OS page (`rs/config/src/embedders.rs`
//! `DIRTY_PAGE_COPY_OVERHEAD = 3_000`), not counted against the limits.
//!
//! **`Legacy`** (the replica before it, [`MemoryCharges::Legacy`]): heap reads
//! are free; [`LEGACY_DIRTY_PAGE_OVERHEAD`] per 4 KiB heap page a message
//! dirtied, after the message; the same per 4 KiB stable page first written,
//! in-band.
//!
//! **Slices** (`rs/canister_sandbox/src/dts.rs`, `DeterministicTimeSlicing`):
//! an update runs in slices of at most [`MAX_SLICE_INSTRUCTIONS`]; the limit
//! of the next slice is the maximum minus the last slice's overshoot
//! ("carry-over"), clamped to what is left of the message's limit; when the
//! overshoot leaves nothing for the next slice the message fails with
//! `SliceOverrun` (IC0522). At most `2 × limit / slice` (clamped to
//! 4..=[`MAX_SLICES`]) slices. Queries run in one slice of their whole limit.

/// OS pages (4 KiB) in a wasm page (64 KiB): the tracker's unit of mapping.
pub const OS_PAGES_PER_WASM_PAGE: u64 = 16;

/// Instructions per 4 KiB OS page on the first access to its wasm page in a
/// message (dfinity/ic #10789: "uniform and increased to 5000 instructions
/// per OS page"; #11344 renames the config field and documents it as charged
/// "once when the Wasm page is first accessed and once more when it is
/// first written to").
pub const DMT_OS_PAGE_ACCESS: u64 = 5_000;

/// Instructions per 4 KiB OS page on the first write to its wasm page in a
/// message, on top of the access charge (same sources).
pub const DMT_OS_PAGE_DIRTY: u64 = 5_000;

/// After-message cost of copying one dirty OS page (`rs/config/src/embedders.rs`,
/// `DIRTY_PAGE_COPY_OVERHEAD`; kept by #10789). Not against the limits.
pub const DIRTY_PAGE_COPY_OVERHEAD: u64 = 3_000;

/// The pre-DMT charge per dirty 4 KiB page (`rs/config/src/subnet_config.rs`,
/// `DEFAULT_DIRTY_PAGE_OVERHEAD`; wasm64 heaps × 4,
/// [`WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER`]).
pub const LEGACY_DIRTY_PAGE_OVERHEAD: u64 = 1_000;

/// Legacy charges: a wasm64 canister's heap dirty-page overhead is this
/// many times a wasm32 one's (`rs/config/src/embedders.rs`,
/// `WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER`, dfinity/ic PR #1725), applied
/// after the message. Whether a wasm64 factor survives in the deterministic
/// memory tracker's per-page charges could not be verified: `Dmt` charges
/// wasm64 pages as wasm32 ones.
pub const WASM64_DIRTY_PAGE_OVERHEAD_MULTIPLIER: u64 = 4;

/// Largest slice (`rs/config/src/subnet_config.rs`,
/// `MAX_INSTRUCTIONS_PER_SLICE = 2 B` on application subnets; install and
/// upgrade use the same slice size).
pub const MAX_SLICE_INSTRUCTIONS: u64 = 2_000_000_000;

/// Upper bound on slices per message (`dts.rs`, `MAX_NUM_SLICES`).
pub const MAX_SLICES: u64 = 400;

/// Which memory-charging rule the runtime applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MemoryCharges {
    /// The deterministic memory tracker (mainnet since mid-2026).
    #[default]
    Dmt,
    /// 1,000 per dirty 4 KiB page (heap after the message, stable in-band).
    Legacy,
}

impl MemoryCharges {
    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            MemoryCharges::Dmt => "dmt",
            MemoryCharges::Legacy => "legacy",
        }
    }

    /// In-band charge for the first access to one wasm page (0 under legacy).
    pub fn wasm_page_access(self) -> u64 {
        match self {
            MemoryCharges::Dmt => DMT_OS_PAGE_ACCESS * OS_PAGES_PER_WASM_PAGE,
            MemoryCharges::Legacy => 0,
        }
    }

    /// In-band charge for the first write to one wasm page, on top of its
    /// access (0 under legacy).
    pub fn wasm_page_dirty(self) -> u64 {
        match self {
            MemoryCharges::Dmt => DMT_OS_PAGE_DIRTY * OS_PAGES_PER_WASM_PAGE,
            MemoryCharges::Legacy => 0,
        }
    }
}

impl std::str::FromStr for MemoryCharges {
    type Err = UnknownMemoryCharges;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dmt" => Ok(MemoryCharges::Dmt),
            "legacy" => Ok(MemoryCharges::Legacy),
            other => Err(UnknownMemoryCharges(other.to_string())),
        }
    }
}

/// A memory-charging name that is neither `dmt` nor `legacy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown memory charges '{0}' (expected 'dmt' or 'legacy')")]
pub struct UnknownMemoryCharges(pub String);

/// The slicing of one message: largest slice and how many slices at most
/// (`dts.rs`, `State::new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    pub max_slice: u64,
    pub max_slices: u64,
}

impl Slicing {
    /// Slices of `max_slice` for a message limit of `limit`: the replica
    /// allows twice the slices the limit needs, clamped to 4..=400.
    pub fn new(limit: u64, max_slice: u64) -> Self {
        let max_slice = max_slice.min(limit).max(1);
        let needed = (limit / max_slice).min(MAX_SLICES);
        Self {
            max_slice,
            max_slices: (2 * needed).clamp(4, MAX_SLICES),
        }
    }

    /// One slice of the whole limit (queries, inspect_message).
    pub fn single(limit: u64) -> Self {
        Self {
            max_slice: limit.max(1),
            max_slices: 1,
        }
    }
}

/// Per-wasm-page state bits of one message: 1 accessed, 2 dirty.
pub trait PageBits {
    fn bits(&mut self, page: u64) -> &mut u8;
}

/// The heap's map: one byte per wasm page (the module's tracker memory).
impl PageBits for [u8] {
    fn bits(&mut self, page: u64) -> &mut u8 {
        &mut self[page as usize]
    }
}

/// Stable memory's map (sparse: stable memory can be 500 GiB).
impl PageBits for std::collections::HashMap<u64, u8> {
    fn bits(&mut self, page: u64) -> &mut u8 {
        self.entry(page).or_insert(0)
    }
}

/// In-band charge for wasm pages `[first, last]` of one access, updating
/// their bits; `write` asks for the dirty bit; `track_dirty` is false for
/// queries.
pub fn touch_pages(
    state: &mut (impl PageBits + ?Sized),
    first: u64,
    last: u64,
    write: bool,
    track_dirty: bool,
    charges: MemoryCharges,
) -> u64 {
    let need = if write { 3u8 } else { 1 };
    let mut cost = 0;
    for page in first..=last {
        let bits = state.bits(page);
        if *bits & need == need {
            continue;
        }
        if *bits & 1 == 0 {
            cost += charges.wasm_page_access();
        }
        if write && track_dirty {
            cost += charges.wasm_page_dirty();
        }
        *bits |= need;
    }
    cost
}

/// The wasm pages `[first, last]` a byte range covers (None if empty).
pub fn wasm_pages_of(offset: u64, len: u64) -> Option<(u64, u64)> {
    const WASM_PAGE: u64 = 65_536;
    (len > 0).then(|| (offset / WASM_PAGE, (offset + len - 1) / WASM_PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_access_and_first_write_per_wasm_page() {
        let mut state = std::collections::HashMap::new();
        let dmt = MemoryCharges::Dmt;
        assert_eq!(touch_pages(&mut state, 0, 1, false, true, dmt), 2 * 80_000);
        assert_eq!(touch_pages(&mut state, 1, 1, false, true, dmt), 0, "read again: free");
        assert_eq!(touch_pages(&mut state, 1, 2, true, true, dmt), 80_000 + 160_000);
        assert_eq!(touch_pages(&mut state, 2, 2, true, true, dmt), 0, "written again: free");
        assert_eq!(
            touch_pages(&mut state, 3, 3, true, false, dmt),
            80_000,
            "queries: access only"
        );
        assert_eq!(touch_pages(&mut state, 4, 4, true, true, MemoryCharges::Legacy), 0);
    }

    #[test]
    fn pages_of_a_range() {
        assert_eq!(wasm_pages_of(0, 0), None);
        assert_eq!(wasm_pages_of(65_535, 2), Some((0, 1)));
        assert_eq!(wasm_pages_of(65_536, 65_536), Some((1, 1)));
    }

    #[test]
    fn slices_as_the_replica_counts_them() {
        assert_eq!(
            Slicing::new(40_000_000_000, MAX_SLICE_INSTRUCTIONS),
            Slicing {
                max_slice: 2_000_000_000,
                max_slices: 40
            }
        );
        assert_eq!(Slicing::new(1_000, 2_000).max_slice, 1_000);
        assert_eq!(Slicing::new(1_000, 2_000).max_slices, 4);
        assert_eq!("legacy".parse::<MemoryCharges>(), Ok(MemoryCharges::Legacy));
        assert!("x".parse::<MemoryCharges>().is_err());
    }
}
