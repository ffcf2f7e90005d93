//! Stable memory: sparse 64 KiB chunks plus a per-message undo log at 4 KiB
//! granularity.
//!
//! Chunks are allocated on first write, so a canister that grows stable
//! memory to many GiB (MemoryManager buckets, model weights) only costs what
//! it writes. The undo log keeps the original contents of each 4 KiB page on
//! its first write in a message; rollback restores them and the size, and the
//! number of newly dirtied pages is what the replica charges extra for.

use std::collections::HashMap;

/// Wasm page size: the unit of `stable64_grow` / `stable64_size`.
pub const WASM_PAGE: u64 = 65536;
/// Dirty-page tracking granularity.
pub const PAGE: u64 = 4096;
/// 500 GiB, the IC's stable memory limit, in wasm pages.
pub const MAX_PAGES: u64 = 500 * 1024 * 1024 * 1024 / WASM_PAGE;

/// Stable memory of one canister.
#[derive(Debug, Default)]
pub struct StableMemory {
    chunks: Vec<Option<Box<[u8]>>>,
    /// Original contents of the pages written in the message in flight.
    undo: HashMap<u64, Box<[u8]>>,
    pages_at_begin: usize,
    /// Per-wasm-page bits of the message in flight, for the deterministic
    /// memory tracker's charges ([`crate::charges::touch_pages`]).
    pub tracked: HashMap<u64, u8>,
}

/// Out-of-bounds access (the caller turns it into the replica's trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds;

impl StableMemory {
    /// Size in wasm pages.
    pub fn size(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.size() * WASM_PAGE
    }

    /// Whether no stable memory has been allocated.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Grows by `new_pages`; returns the previous size or -1 (as ic0 does).
    pub fn grow(&mut self, new_pages: u64) -> i64 {
        let old = self.size();
        match old.checked_add(new_pages) {
            Some(total) if total <= MAX_PAGES => {
                self.chunks.resize(total as usize, None);
                old as i64
            }
            _ => -1,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(OutOfBounds),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let chunk = (pos / WASM_PAGE) as usize;
            let within = (pos % WASM_PAGE) as usize;
            let n = (WASM_PAGE as usize - within).min(buf.len() - done);
            match &self.chunks[chunk] {
                Some(data) => buf[done..done + n].copy_from_slice(&data[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; returns how many 4 KiB pages this write
    /// dirtied for the first time in the current message.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, OutOfBounds> {
        self.check(offset, data.len() as u64)?;
        let mut newly_dirty = 0;
        if !data.is_empty() {
            let first = offset / PAGE;
            let last = (offset + data.len() as u64 - 1) / PAGE;
            for page in first..=last {
                if !self.undo.contains_key(&page) {
                    let mut original = vec![0u8; PAGE as usize];
                    self.read(page * PAGE, &mut original)?;
                    self.undo.insert(page, original.into_boxed_slice());
                    newly_dirty += 1;
                }
            }
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let chunk = (pos / WASM_PAGE) as usize;
            let within = (pos % WASM_PAGE) as usize;
            let n = (WASM_PAGE as usize - within).min(data.len() - done);
            let slot = self.chunks[chunk].get_or_insert_with(|| vec![0u8; WASM_PAGE as usize].into_boxed_slice());
            slot[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(newly_dirty)
    }

    /// Starts a message execution's page tracking (every execution, also
    /// the second half of an upgrade).
    pub fn begin_tracking(&mut self) {
        self.tracked.clear();
    }

    /// Wasm pages the message in flight wrote (tracked pages with the dirty bit).
    pub fn tracked_dirty_pages(&self) -> u64 {
        self.tracked
            .values()
            .filter(|b| **b & crate::tracker::DIRTY != 0)
            .count() as u64
    }

    /// Starts a message: from here on writes are logged.
    pub fn begin(&mut self) {
        self.undo.clear();
        self.pages_at_begin = self.chunks.len();
    }

    /// Number of distinct 4 KiB pages written since [`Self::begin`].
    pub fn dirty_pages(&self) -> u64 {
        self.undo.len() as u64
    }

    /// Keeps the message's writes.
    pub fn commit(&mut self) {
        self.undo.clear();
        self.pages_at_begin = self.chunks.len();
    }

    /// Undoes the message's writes and growth.
    pub fn rollback(&mut self) {
        let undo = std::mem::take(&mut self.undo);
        for (page, original) in undo {
            let pos = page * PAGE;
            let chunk = (pos / WASM_PAGE) as usize;
            if chunk >= self.pages_at_begin {
                continue; // the chunk itself goes away below
            }
            if let Some(data) = self.chunks[chunk].as_mut() {
                let within = (pos % WASM_PAGE) as usize;
                data[within..within + PAGE as usize].copy_from_slice(&original);
            }
        }
        self.chunks.truncate(self.pages_at_begin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_rollback() {
        let mut s = StableMemory::default();
        s.begin();
        assert_eq!(s.grow(2), 0);
        assert_eq!(s.write(10, b"hello").unwrap(), 1);
        assert_eq!(s.write(12, b"xx").unwrap(), 0, "same page is not new");
        s.commit();

        s.begin();
        // Spans a 4 KiB boundary and a 64 KiB chunk boundary.
        assert_eq!(s.write(WASM_PAGE - 2, b"abcd").unwrap(), 2);
        assert_eq!(s.grow(1), 2);
        assert_eq!(s.write(10, b"HE").unwrap(), 1);
        assert_eq!(s.dirty_pages(), 3);
        s.rollback();

        assert_eq!(s.size(), 2);
        let mut buf = [0u8; 5];
        s.read(10, &mut buf).unwrap();
        assert_eq!(&buf, b"hexxo");
        let mut edge = [9u8; 4];
        s.read(WASM_PAGE - 2, &mut edge).unwrap();
        assert_eq!(edge, [0; 4]);
        assert_eq!(s.read(2 * WASM_PAGE - 1, &mut [0u8; 2]), Err(OutOfBounds));
    }
}
