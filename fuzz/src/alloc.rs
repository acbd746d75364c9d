//! A counting global allocator: live bytes, the peak of live bytes, and the largest single
//! request since [`Measure::start`]. The targets use it to prove that a client cannot make the
//! server allocate what the client merely claims (a 4 GiB WRITE header, a huge option length).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOC: Counting = Counting;

fn grew(by: usize, single: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
    LARGEST.fetch_max(single, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size(), l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size(), l.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, l: Layout) {
        unsafe { System.dealloc(ptr, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, l, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            grew(new_size, new_size);
        }
        p
    }
}

/// A measurement window over the allocator's counters (one at a time; libFuzzer runs one input
/// per process at a time).
pub struct Measure {
    base: usize,
}

impl Measure {
    /// Starts a window: the peak restarts at the current live bytes, the largest at zero.
    pub fn start() -> Self {
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        LARGEST.store(0, Relaxed);
        Measure { base }
    }

    /// How far live bytes rose above the start of the window at their highest.
    pub fn peak_growth(&self) -> usize {
        PEAK.load(Relaxed).saturating_sub(self.base)
    }

    /// The largest single allocation (or reallocation target) in the window.
    pub fn largest(&self) -> usize {
        LARGEST.load(Relaxed)
    }
}
