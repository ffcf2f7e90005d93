//! Cheap rollback of a big linear memory: a shadow copy plus the kernel's
//! soft-dirty page bits.
//!
//! The shadow holds the heap as of the last committed message. Before a
//! message, writing `4` to `/proc/self/clear_refs` clears every soft-dirty bit
//! of the process; after it, bit 55 of each page's `/proc/self/pagemap` entry
//! says whether the page was written. Committing copies just those pages
//! into the shadow, rolling back copies them back from it, so the cost is
//! proportional to what the message touched, not to the heap (a model-sized
//! heap is ~1 GB).
//!
//! The bits are process-wide, so messages of *all* runtimes in a process must
//! not overlap: callers hold [`exclusive`] from [`HeapTracker::begin`] until
//! [`HeapTracker::collect`] (the runtime does that per top-level operation;
//! `cargo test` runs tests on several threads).
//!
//! Sizes and page numbers are `usize`, so wasm64 heaps beyond 4 GiB (up to
//! 6 GiB) are tracked like wasm32 ones.
//!
//! Where soft-dirty tracking does not work (kernels without
//! `CONFIG_MEM_SOFT_DIRTY`, gVisor, non-Linux), [`soft_dirty_supported`] is
//! false and the tracker falls back to treating every page as dirty, i.e. a
//! full copy per message (correct, but O(heap): ~0.1-0.2 s per GB).
//!
//! Soft-dirty bits do **not** work on the project's build machines
//! (Firecracker VM kernel 6.18: writes do not set bit 55; probed 2026-11).
//! There the runtime uses [`crate::cow_memory`] instead (copy-on-write over
//! a memfd, O(pages written) without soft-dirty); this module is the
//! fallback for hosts where that is unavailable too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Granularity of tracking (the host's page size on x86-64/aarch64 Linux).
pub const PAGE: usize = 4096;

const SOFT_DIRTY_BIT: u64 = 1 << 55;

static LOCK: Mutex<()> = Mutex::new(());
static SUPPORTED: OnceLock<bool> = OnceLock::new();

/// Serialises message execution across all runtimes of the process (the
/// soft-dirty bits are process-wide). A poisoned lock is recovered: the data
/// it guards is the kernel's, not ours.
pub fn exclusive() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn clear_refs() -> bool {
    OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut f| f.write_all(b"4"))
        .is_ok()
}

fn pagemap() -> Option<&'static File> {
    static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
    PAGEMAP.get_or_init(|| File::open("/proc/self/pagemap").ok()).as_ref()
}

/// Soft-dirty flags of the pages covering `[addr, addr + len)`.
fn dirty_flags(addr: usize, len: usize) -> Option<Vec<bool>> {
    let file = pagemap()?;
    let first = addr / PAGE;
    let count = len.div_ceil(PAGE);
    let mut raw = vec![0u8; count * 8];
    file.read_exact_at(&mut raw, (first * 8) as u64).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|c| {
                let entry = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
                entry & SOFT_DIRTY_BIT != 0
            })
            .collect(),
    )
}

/// Whether soft-dirty tracking works in this process (probed once: write
/// one page of two after clearing, expect exactly that one to be dirty).
///
/// Takes [`exclusive`] itself, so call it (e.g. in [`crate::Runtime::new`])
/// before holding that lock: [`HeapTracker::new`] only reads the result.
pub fn soft_dirty_supported() -> bool {
    *SUPPORTED.get_or_init(|| {
        let _guard = exclusive();
        let mut buf = vec![1u8; 4 * PAGE];
        let start = buf.as_ptr() as usize;
        let aligned = start.div_ceil(PAGE) * PAGE;
        let off = aligned - start;
        if !clear_refs() {
            return false;
        }
        buf[off] = 2;
        std::hint::black_box(&mut buf);
        match dirty_flags(aligned, 2 * PAGE) {
            Some(flags) => flags[0] && !flags[1],
            None => false,
        }
    })
}

/// Shadow copy of one linear memory plus the dirty pages of the message in
/// flight.
#[derive(Debug)]
pub struct HeapTracker {
    shadow: Vec<u8>,
    soft_dirty: bool,
    /// Pages written by the message in flight (filled by [`Self::collect`]).
    dirty: Vec<usize>,
}

impl HeapTracker {
    /// Starts tracking a memory whose committed contents are `mem`. Uses
    /// soft-dirty tracking if [`soft_dirty_supported`] was probed and true.
    pub fn new(mem: &[u8]) -> Self {
        Self {
            shadow: mem.to_vec(),
            soft_dirty: SUPPORTED.get().copied().unwrap_or(false),
            dirty: Vec::new(),
        }
    }

    /// Whether the cheap (soft-dirty) mode is in use.
    pub fn is_incremental(&self) -> bool {
        self.soft_dirty
    }

    /// Call right before the message starts (holding [`exclusive`]).
    pub fn begin(&mut self) {
        self.dirty.clear();
        if self.soft_dirty && !clear_refs() {
            self.soft_dirty = false;
        }
    }

    /// Call right after the message ends (still holding [`exclusive`]):
    /// records which pages of `mem` the message wrote. Returns their number.
    pub fn collect(&mut self, mem: &[u8]) -> usize {
        let pages = mem.len().div_ceil(PAGE);
        let old_pages = self.shadow.len().div_ceil(PAGE);
        let flags = if self.soft_dirty {
            dirty_flags(mem.as_ptr() as usize, mem.len())
        } else {
            None
        };
        self.dirty = match flags {
            Some(flags) => (0..pages)
                // Pages beyond the committed size are new (memory.grow).
                .filter(|&p| p >= old_pages || flags[p])
                .collect(),
            None => {
                self.soft_dirty = false;
                (0..pages).collect()
            }
        };
        self.dirty.len()
    }

    /// Keeps the message's writes: copies the dirty pages into the shadow.
    pub fn commit(&mut self, mem: &[u8]) {
        if self.shadow.len() < mem.len() {
            self.shadow.resize(mem.len(), 0);
        }
        for &p in &self.dirty {
            let range = p * PAGE..((p + 1) * PAGE).min(mem.len());
            self.shadow[range.clone()].copy_from_slice(&mem[range]);
        }
        self.dirty.clear();
    }

    /// Undoes the message's writes. Memory cannot shrink, so pages the
    /// message added with `memory.grow` stay, zeroed (see crate docs).
    pub fn rollback(&mut self, mem: &mut [u8]) {
        for &p in &self.dirty {
            let range = p * PAGE..((p + 1) * PAGE).min(mem.len());
            if range.end <= self.shadow.len() {
                mem[range.clone()].copy_from_slice(&self.shadow[range]);
            } else {
                mem[range].fill(0);
            }
        }
        // Keep the shadow in step with the (grown, zeroed) memory.
        if self.shadow.len() < mem.len() {
            self.shadow.resize(mem.len(), 0);
        }
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned buffer standing in for a linear memory.
    fn aligned(pages: usize) -> (Vec<u8>, usize) {
        let buf = vec![0u8; (pages + 1) * PAGE];
        let off = (buf.as_ptr() as usize).div_ceil(PAGE) * PAGE - buf.as_ptr() as usize;
        (buf, off)
    }

    #[test]
    fn commit_and_rollback_restore_exact_contents() {
        let (mut buf, off) = aligned(8);
        let end = off + 8 * PAGE;
        buf[off..end].fill(7);
        let supported = soft_dirty_supported();
        eprintln!("soft-dirty tracking supported: {supported}");
        let _guard = exclusive();
        let mut t = HeapTracker::new(&buf[off..end]);

        // Message 1 writes pages 1 and 5 and commits.
        t.begin();
        buf[off + PAGE + 3] = 1;
        buf[off + 5 * PAGE] = 2;
        let n = t.collect(&buf[off..end]);
        if t.is_incremental() {
            assert_eq!(n, 2, "exactly the two written pages are dirty");
        } else {
            eprintln!("soft-dirty unsupported here: full-copy fallback in use");
        }
        t.commit(&buf[off..end]);

        // Message 2 writes pages 1 and 6 and rolls back.
        t.begin();
        buf[off + PAGE + 3] = 9;
        buf[off + 6 * PAGE + 10] = 9;
        t.collect(&buf[off..end]);
        t.rollback(&mut buf[off..end]);
        assert_eq!(buf[off + PAGE + 3], 1, "committed write survives");
        assert_eq!(buf[off + 5 * PAGE], 2);
        assert_eq!(buf[off + 6 * PAGE + 10], 7, "rolled-back write is gone");
        assert!(buf[off..end]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 7 || i == PAGE + 3 || i == 5 * PAGE));
    }
}
