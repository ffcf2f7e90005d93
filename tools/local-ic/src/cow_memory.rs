//! Copy-on-write linear memory: O(pages written) commit and rollback
//! without soft-dirty bits.
//!
//! The heap is a `MAP_PRIVATE` mapping of a memfd that holds the committed
//! state. A page the message writes becomes a private anonymous copy, which
//! `/proc/self/pagemap` shows as present without bit 61 ("file page or
//! shared anon"); pages only read stay file pages, untouched ones are not
//! present. Commit writes the private pages into the memfd (`pwrite`) and
//! drops them (`MADV_DONTNEED`), so the mapping shows the file again, now
//! with the new contents; rollback only drops them. Nothing is proportional
//! to the heap size except reading the pagemap (8 bytes per 4 KiB page).
//!
//! wasmtime gets these memories through [`CowMemoryCreator`]
//! (`Config::with_host_memory`); [`take_created`] hands the state of the
//! memories created by the last instantiation on this thread to the
//! canister. [`supported`] probes the mechanism once; without it the
//! runtime uses [`crate::memory_snapshot::HeapTracker`].

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;

thread_local! {
    static CREATED: RefCell<Vec<Arc<CowState>>> = const { RefCell::new(Vec::new()) };
}

/// The copy-on-write state of one linear memory.
#[derive(Debug)]
pub struct CowState {
    file: File,
    base: usize,
    /// Bytes reserved for the mapping (capacity + guard).
    total: usize,
    /// Accessible bytes (the wasm memory size).
    size: Mutex<usize>,
    /// Pages written by the message in flight (from [`Self::collect`]).
    dirty: Mutex<Vec<usize>>,
}

// SAFETY: the raw base address is only dereferenced through wasmtime's
// memory handle or while the owning store is borrowed.
unsafe impl Send for CowState {}
unsafe impl Sync for CowState {}

fn pagemap() -> Option<&'static File> {
    static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
    PAGEMAP.get_or_init(|| File::open("/proc/self/pagemap").ok()).as_ref()
}

impl CowState {
    fn new(capacity: usize, total: usize, initial: usize) -> std::io::Result<Self> {
        // SAFETY: plain syscalls; every result is checked.
        unsafe {
            let fd = libc::memfd_create(c"local-ic-heap".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let file = File::from_raw_fd(fd);
            file.set_len(capacity as u64)?;
            let base = libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let state = Self {
                file,
                base: base as usize,
                total,
                size: Mutex::new(0),
                dirty: Mutex::new(Vec::new()),
            };
            if capacity > 0 {
                let mapped = libc::mmap(
                    base,
                    capacity,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    fd,
                    0,
                );
                if mapped == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
            }
            state.grow_to(initial)?;
            Ok(state)
        }
    }

    fn grow_to(&self, new_size: usize) -> std::io::Result<()> {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if new_size > *size {
            // SAFETY: the range lies inside our mapping (checked by the caller
            // against the capacity).
            let r = unsafe {
                libc::mprotect(
                    (self.base + *size) as *mut libc::c_void,
                    new_size - *size,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            *size = new_size;
        }
        Ok(())
    }

    fn size(&self) -> usize {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the pages written since the last commit/rollback; returns
    /// their number.
    pub fn collect(&self) -> usize {
        let size = self.size();
        let pages = size.div_ceil(PAGE);
        let mut raw = vec![0u8; pages * 8];
        let dirty: Vec<usize> = match pagemap().map(|f| f.read_exact_at(&mut raw, (self.base / PAGE * 8) as u64)) {
            Some(Ok(())) => raw
                .chunks_exact(8)
                .enumerate()
                .filter(|(_, c)| {
                    let e = u64::from_le_bytes((*c).try_into().expect("8 bytes"));
                    (e & PRESENT != 0 && e & FILE_OR_SHARED == 0) || e & SWAPPED != 0
                })
                .map(|(i, _)| i)
                .collect(),
            // Cannot tell: treat everything as written (still correct).
            _ => (0..pages).collect(),
        };
        let n = dirty.len();
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = dirty;
        n
    }

    /// Runs of consecutive dirty pages as (first page, count).
    fn runs(&self) -> Vec<(usize, usize)> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for p in dirty {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == p => *len += 1,
                _ => runs.push((p, 1)),
            }
        }
        runs
    }

    fn drop_private(&self, page: usize, count: usize) {
        // SAFETY: the range is inside the accessible part of our mapping;
        // MADV_DONTNEED on a private file mapping re-exposes the file.
        unsafe {
            libc::madvise(
                (self.base + page * PAGE) as *mut libc::c_void,
                count * PAGE,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// Keeps the message's writes.
    pub fn commit(&self) -> std::io::Result<()> {
        for (page, count) in self.runs() {
            // SAFETY: the pages are inside the accessible mapping; nothing
            // runs wasm code while the runtime commits.
            let bytes = unsafe { std::slice::from_raw_parts((self.base + page * PAGE) as *const u8, count * PAGE) };
            self.file.write_all_at(bytes, (page * PAGE) as u64)?;
            self.drop_private(page, count);
        }
        Ok(())
    }

    /// Undoes the message's writes (grown pages stay, zeroed).
    pub fn rollback(&self) {
        for (page, count) in self.runs() {
            self.drop_private(page, count);
        }
    }

    /// Start address (for sanity checks against wasmtime's view).
    pub fn base(&self) -> usize {
        self.base
    }
}

impl Drop for CowState {
    fn drop(&mut self) {
        // SAFETY: unmapping our own reservation; the memory is gone with its store.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.total);
        }
        let _ = self.file.as_raw_fd();
    }
}

struct CowMemory {
    state: Arc<CowState>,
    capacity: usize,
}

// SAFETY: the mapping never moves (reserved up front) and stays valid until
// the memory is dropped; growth only changes protections.
unsafe impl LinearMemory for CowMemory {
    fn byte_size(&self) -> usize {
        self.state.size()
    }
    fn byte_capacity(&self) -> usize {
        self.capacity
    }
    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.capacity {
            wasmtime::bail!("memory cannot grow beyond its reservation");
        }
        self.state.grow_to(new_size)?;
        Ok(())
    }
    fn as_ptr(&self) -> *mut u8 {
        self.state.base as *mut u8
    }
}

/// Creates [`CowState`]-backed memories for wasmtime.
pub struct CowMemoryCreator;

// SAFETY: memories reserve `reserved + guard` bytes up front (a wasm64
// heap: its whole maximum, at most 6 GiB) and never move.
unsafe impl MemoryCreator for CowMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() {
            return Err("local-ic: only unshared memories".into());
        }
        const FOUR_GIB: usize = 1 << 32;
        let reserve = match (ty.is_64(), maximum) {
            // wasmtime offers a 4 GiB reservation to 64-bit memories too;
            // the instrumentation gave the heap a maximum of at most 6 GiB
            // (`crate::instrument`), reserved whole so the heap never moves.
            (true, Some(max)) => reserved_size_in_bytes.unwrap_or(0).max(max),
            (true, None) => return Err("local-ic: a 64-bit memory needs a maximum".into()),
            (false, _) => reserved_size_in_bytes.unwrap_or(FOUR_GIB),
        }
        .max(minimum);
        let capacity = maximum.unwrap_or(FOUR_GIB).min(reserve).max(minimum);
        let total = reserve + guard_size_in_bytes;
        let state = CowState::new(capacity, total, minimum).map_err(|e| format!("local-ic heap: {e}"))?;
        let state = Arc::new(state);
        CREATED.with(|c| c.borrow_mut().push(state.clone()));
        Ok(Box::new(CowMemory { state, capacity }))
    }
}

/// Takes the states of the memories created on this thread since the last
/// call (call before and after instantiating).
pub fn take_created() -> Vec<Arc<CowState>> {
    CREATED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Whether copy-on-write tracking works here (memfd, private file mappings
/// and pagemap's bit 61), probed once.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe().unwrap_or(false))
}

fn probe() -> std::io::Result<bool> {
    let state = CowState::new(4 * PAGE, 4 * PAGE, 4 * PAGE)?;
    // SAFETY: the four pages are mapped read-write above.
    let mem = unsafe { std::slice::from_raw_parts_mut(state.base as *mut u8, 4 * PAGE) };
    mem[0] = 1;
    let _ = std::hint::black_box(mem[PAGE]);
    state.collect();
    let dirty = state.dirty.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if dirty != vec![0] {
        return Ok(false);
    }
    state.commit()?;
    mem[0] = 2;
    mem[2 * PAGE] = 3;
    if state.collect() != 2 {
        return Ok(false);
    }
    state.rollback();
    Ok(mem[0] == 1 && mem[2 * PAGE] == 0 && std::hint::black_box(mem[PAGE]) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_rollback_touch_only_written_pages() {
        if !supported() {
            eprintln!("copy-on-write heap tracking unsupported here; the full-copy fallback is used");
            return;
        }
        let state = CowState::new(64 * PAGE, 64 * PAGE, 16 * PAGE).unwrap();
        // SAFETY: 16 pages are mapped read-write.
        let mem = unsafe { std::slice::from_raw_parts_mut(state.base as *mut u8, 32 * PAGE) };
        mem[..16 * PAGE].fill(7);
        assert_eq!(state.collect(), 16);
        state.commit().unwrap();
        assert_eq!(state.collect(), 0, "committed pages are clean again");

        mem[3 * PAGE] = 1;
        mem[9 * PAGE + 5] = 2;
        assert_eq!(state.collect(), 2);
        state.commit().unwrap();

        mem[3 * PAGE] = 9;
        mem[12 * PAGE] = 9;
        state.grow_to(32 * PAGE).unwrap();
        mem[20 * PAGE] = 9;
        assert_eq!(state.collect(), 3);
        state.rollback();
        assert_eq!(mem[3 * PAGE], 1);
        assert_eq!(mem[9 * PAGE + 5], 2);
        assert_eq!(mem[12 * PAGE], 7);
        assert_eq!(mem[20 * PAGE], 0, "grown page stays, zeroed");
        assert_eq!(state.collect(), 0);
    }

    #[test]
    fn pages_above_4_gib_commit_and_roll_back() {
        if !supported() {
            eprintln!("copy-on-write heap tracking unsupported here; the full-copy fallback is used");
            return;
        }
        // A wasm64 heap of 5 GiB (sparse: only touched pages use memory).
        let size = 5usize << 30;
        let state = CowState::new(size, size, size).unwrap();
        // SAFETY: the whole 5 GiB are mapped read-write.
        let mem = unsafe { std::slice::from_raw_parts_mut(state.base as *mut u8, size) };
        let high = (4usize << 30) + 123 * PAGE + 5;
        mem[high] = 1;
        assert_eq!(state.collect(), 1);
        state.commit().unwrap();
        mem[high] = 2;
        mem[high + PAGE] = 3;
        assert_eq!(state.collect(), 2);
        state.rollback();
        assert_eq!(
            (mem[high], mem[high + PAGE]),
            (1, 0),
            "the committed byte, not the rolled-back ones"
        );
    }
}
