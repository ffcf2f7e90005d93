//! A cap on the heap one stretch of code may hold, kept by the global
//! allocator.
//!
//! It backs a bound that cannot be set from outside the code it bounds.
//! minijinja charges fuel for nearly all the data a template makes, but not
//! on two paths (flattening a long chain of lists joined with `+`, and
//! writing out a value that holds another many times, as `tojson` does), so
//! a hostile chat template could otherwise take all memory (see
//! [`crate::chat::RENDER_HEAP_CAP`]).
//!
//! A binary opts in by installing [`CappedAlloc`] as its global allocator,
//! with what to do when a cap is passed. An allocator must not unwind, so
//! that is an end: the CLI prints the reason and aborts ([`print_and_abort`]),
//! the canister traps, which rolls the message back. The allocation that
//! would pass the cap is refused before it is made. Without the allocator,
//! [`with_cap`] runs its closure unbounded.
//!
//! The count is per thread: bytes this thread allocated in the section less
//! those it freed, so other threads' work does not count against it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::fmt;

/// The open section of this thread.
#[derive(Clone, Copy)]
struct Section {
    /// Bytes allocated less bytes freed since the section began (negative
    /// when it frees what was allocated before).
    held: isize,
    /// The most `held` has been.
    peak: isize,
    cap: usize,
    what: &'static str,
}

thread_local! {
    // `const` and without `Drop`: reading it never allocates, so the
    // allocator itself may.
    static SECTION: Cell<Option<Section>> = const { Cell::new(None) };
}

/// A section tried to hold more than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapExceeded {
    /// What the section runs, e.g. "the chat template".
    pub what: &'static str,
    pub cap: usize,
    /// The size of the allocation that was refused.
    pub asked: usize,
}

impl fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tried to hold more than {} MiB of memory (refused an allocation of {} bytes)",
            self.what,
            self.cap >> 20,
            self.asked
        )
    }
}

/// A global allocator over `A` that keeps the caps of [`with_cap`].
pub struct CappedAlloc<A> {
    inner: A,
    exceeded: fn(CapExceeded) -> !,
}

impl<A> CappedAlloc<A> {
    /// `exceeded` ends the program or the message; it is called with the
    /// section already closed, so it may allocate.
    pub const fn new(inner: A, exceeded: fn(CapExceeded) -> !) -> Self {
        CappedAlloc { inner, exceeded }
    }

    /// Counts `bytes` more (or fewer, if negative) against the open section.
    fn charge(&self, bytes: isize, asked: usize) {
        let Some(mut section) = SECTION.with(Cell::get) else {
            return;
        };
        section.held = section.held.saturating_add(bytes);
        if section.held > section.cap as isize {
            SECTION.with(|s| s.set(None));
            (self.exceeded)(CapExceeded {
                what: section.what,
                cap: section.cap,
                asked,
            });
        }
        section.peak = section.peak.max(section.held);
        SECTION.with(|s| s.set(Some(section)));
    }
}

// SAFETY: every call is passed to `inner` unchanged; the counting around it
// neither allocates nor unwinds (a passed cap ends the program or message).
unsafe impl<A: GlobalAlloc> GlobalAlloc for CappedAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.charge(layout.size() as isize, layout.size());
        self.inner.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.charge(layout.size() as isize, layout.size());
        self.inner.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout);
        self.charge(-(layout.size() as isize), 0);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.charge(new_size as isize - layout.size() as isize, new_size);
        self.inner.realloc(ptr, layout, new_size)
    }
}

/// Runs `f` with at most `cap` bytes held by this thread at a time, beyond
/// what it held before. Sections nest: what an inner one holds at its end
/// counts on in the outer one.
pub fn with_cap<R>(cap: usize, what: &'static str, f: impl FnOnce() -> R) -> R {
    run_section(cap, what, f).0
}

/// Runs `f` and returns the most heap it held at a time (0 without
/// [`CappedAlloc`] installed).
pub fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    run_section(usize::MAX >> 1, "", f)
}

fn run_section<R>(cap: usize, what: &'static str, f: impl FnOnce() -> R) -> (R, usize) {
    /// Closes the section when `f` returns or unwinds.
    struct Close(Option<Section>);
    impl Drop for Close {
        fn drop(&mut self) {
            let inner = SECTION.with(|s| s.replace(self.0));
            if let (Some(inner), Some(mut outer)) = (inner, self.0) {
                outer.peak = outer.peak.max(outer.held.saturating_add(inner.peak));
                outer.held = outer.held.saturating_add(inner.held);
                SECTION.with(|s| s.set(Some(outer)));
            }
        }
    }
    let opened = Section {
        held: 0,
        peak: 0,
        cap,
        what,
    };
    let close = Close(SECTION.with(|s| s.replace(Some(opened))));
    let result = f();
    let peak = SECTION.with(Cell::get).map_or(0, |s| s.peak.max(0) as usize);
    drop(close);
    (result, peak)
}

/// What a native binary does when a cap is passed: says why on stderr and
/// aborts (an allocator cannot return an error to the code that asked).
pub fn print_and_abort(e: CapExceeded) -> ! {
    use std::io::Write;
    // Straight to the file, not through `eprintln!`, which a test harness
    // captures into a buffer the abort would lose.
    let _ = writeln!(std::io::stderr(), "error: {e}");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The engine's unit tests run under the counting allocator (passing a
    // cap, which aborts, is tested in a child process: tests/chat_template.rs).
    #[global_allocator]
    static ALLOCATOR: CappedAlloc<std::alloc::System> = CappedAlloc::new(std::alloc::System, print_and_abort);

    #[test]
    fn a_section_reports_the_most_it_held_not_what_it_kept() {
        let ((), peak) = peak_of(|| {
            let a = vec![1u8; 3 << 20];
            drop(a);
            let b = vec![1u8; 1 << 20];
            std::hint::black_box(&b);
        });
        assert!((3 << 20..4 << 20).contains(&peak), "{peak}");
    }

    #[test]
    fn an_inner_section_counts_in_the_outer_one_and_freeing_older_memory_makes_room() {
        let before = vec![1u8; 8 << 20];
        let ((kept, inner_peak), outer_peak) = peak_of(|| {
            drop(before);
            with_cap(16 << 20, "the inner section", || peak_of(|| vec![1u8; 2 << 20]))
        });
        assert!((2 << 20..3 << 20).contains(&inner_peak), "{inner_peak}");
        // The outer section was at -8 MiB when the inner one took 2 MiB.
        assert_eq!(outer_peak, 0);
        assert_eq!(kept.len(), 2 << 20);
    }
}
