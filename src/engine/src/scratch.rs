//! Reusable f32 scratch buffers for the forward pass's intermediate
//! vectors. `vec![0.0; n]` for every temporary of every unit makes the
//! allocator zero them (`memory.fill`, which the IC charges one instruction
//! per byte: ~2 M instructions per qwen2.5-0.5b token, ~0.2 M on
//! stories15M); the kernels that fill these vectors overwrite every element
//! anyway. A [`Scratch`] comes from a per-thread pool instead and goes back
//! to it when dropped, so after the first token no temporary is zeroed or
//! allocated.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `n` f32 whose initial contents are unspecified (zeros, or what an
/// earlier user left): every user writes all of it before reading it.
pub struct Scratch {
    buf: Vec<f32>,
    n: usize,
}

impl Scratch {
    pub fn new(n: usize) -> Scratch {
        let mut buf = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                // The smallest buffer that fits, else the largest (grown below).
                let fits = (0..pool.len())
                    .filter(|&i| pool[i].len() >= n)
                    .min_by_key(|&i| pool[i].len());
                let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
                pick.map(|i| pool.swap_remove(i))
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        if buf.len() < n {
            buf.resize(n, 0.0);
        }
        Scratch { buf, n }
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.n]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.n]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let _ = POOL.try_with(|pool| pool.borrow_mut().push(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let a = Scratch::new(10);
        assert_eq!(a.len(), 10);
        let ptr = a.as_ptr();
        drop(a);
        let mut b = Scratch::new(4);
        assert_eq!(b.len(), 4);
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer is reused");
        b.fill(3.0);
        let c = Scratch::new(16);
        assert_eq!(c.len(), 16);
        assert_ne!(c.as_ptr(), b.as_ptr());
    }
}
