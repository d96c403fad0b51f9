//! A per-thread cap on the size of one allocation, for parsers whose crates size buffers
//! from lengths a file declares. `dicom-rs` reserves (with `try_reserve_exact`) and zero-fills
//! an element's declared length before reading it: a 1 kB file declaring a 2.5 GB element
//! took 2.6 GB (found by the `dicom` fuzz target). Under [`with_cap`], an allocation larger
//! than the cap fails, which `try_reserve` turns into an error the parser reports.
//!
//! The cap works where a program installs [`Capped`] as its global allocator (the `pipeline`
//! binary and the fuzz targets do); elsewhere `with_cap` only runs its closure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn cap() -> usize {
    CAP.try_with(Cell::get).unwrap_or(usize::MAX)
}

/// The system allocator, refusing single allocations above the calling thread's cap.
pub struct Capped;

// SAFETY: every call forwards to `System` unchanged, or returns null (an allocation
// failure, which callers must and do handle) without touching memory.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > cap() {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > cap() {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > cap() {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` with single allocations on this thread capped at `bytes`.
pub fn with_cap<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    let old = CAP.try_with(|c| c.replace(bytes)).unwrap_or(usize::MAX);
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CAP.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(old);
    f()
}
