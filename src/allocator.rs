//! The binary's allocator: mimalloc, asked the way the standard library asks the system's.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, whatever the
//! alignment. Most of the proxy's blocks need 8 bytes at most, and for a size that is not a power of
//! two (24, 40, 48 bytes: futures' boxes, `Arc`s, header entries) that path takes mimalloc's
//! over-allocating fallback whenever its fast free list is empty: about 1,200 of the ~52,000
//! instructions of a proxied request went to it (scripts/bench-instructions.sh, docs/BENCHMARKS.md
//! 2026-12-03). Every mimalloc block is aligned to at least 8 bytes, so a request for 8 or less
//! goes to plain `mi_malloc`, as std's `System` sends small alignments to plain `malloc`; only the
//! rare larger alignment (cache-padded atomics) takes the aligned call.
#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every mimalloc block has (a machine word: its smallest size class is 8 bytes
/// and every class is a multiple of it).
const WORD_ALIGN: usize = 8;

pub struct MiMalloc;

fn plain(align: usize) -> bool {
    align <= WORD_ALIGN
}

// SAFETY: each method forwards to the mimalloc call with the same contract (a block of at least
// `size` bytes at least as aligned as asked, or null; `mi_free`/`mi_realloc*` take any block
// mimalloc handed out); `plain` sends only alignments that every mimalloc block satisfies to the
// unaligned calls.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if plain(layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if plain(layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if plain(layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment the proxy asks for comes back aligned, writable and reusable,
    /// through the plain and the aligned calls alike.
    #[test]
    fn blocks_are_aligned_as_asked_and_round_trip() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 12, 24, 40, 48, 100, 1000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; each block is freed once, with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xab, "contents kept");
                    a.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
