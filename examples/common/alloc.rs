//! The global allocator of the examples and benches: mimalloc, keeping the memory it frees.
//!
//! Burn's flex backend allocates every op's output. glibc's `malloc` hands large blocks back to
//! the kernel on `free` and faults them in, zeroed, on the next op; mimalloc reuses them
//! (`docs/performance.md`: up to 1.9× on the MLP steps). By default mimalloc still returns
//! freed memory to the kernel 10 ms after it was freed, and a U-Net step (0.2–1 s) frees and
//! re-allocates its large buffers every step: B-train spent 8 % of its time in the kernel's
//! `clear_page` (33,573 page faults in 6 steps, 350 with purging off). This allocator turns
//! purging off (`mi_option_purge_delay = -1`) before its first allocation: the process keeps
//! its peak memory until it exits, the price of not faulting it in again every step.
//!
//! A binary includes it with `#[path = "common/alloc.rs"] mod alloc;` (from `benches/`:
//! `"../examples/common/alloc.rs"`); the `#[global_allocator]` below then applies to it.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

/// mimalloc's option `purge_delay` (`mi_option_e` in its `mimalloc.h`, v2 and v3: 15), which
/// `libmimalloc-sys` declares no constant for.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Whether purging has been turned off.
static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// [`mimalloc::MiMalloc`] with purging turned off at its first allocation.
pub struct KeepingMiMalloc;

impl KeepingMiMalloc {
    #[inline]
    fn configure(&self) {
        if !CONFIGURED.load(Ordering::Relaxed) {
            // SAFETY: setting an option is a store into mimalloc's option table, valid at any
            // time (a second thread racing here sets the same value).
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
            CONFIGURED.store(true, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `MiMalloc`'s, which upholds `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for KeepingMiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.configure();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.configure();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, forwarded (`ptr` came from `MiMalloc`).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees, forwarded (`ptr` came from `MiMalloc`).
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: KeepingMiMalloc = KeepingMiMalloc;
