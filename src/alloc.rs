//! The allocator of the `nodecloud` command and of its benchmarks (the `mimalloc` feature):
//! mimalloc, entered through its plain functions wherever they give the alignment asked for.
//!
//! Rust passes an alignment with every allocation, and the `mimalloc` crate hands each one to
//! `mi_malloc_aligned`. mimalloc 3 serves that from its fast path only when the block size is
//! a power of two: any other size (an 80-byte `Arc<[u8]>` holding a frame, a 48-byte node)
//! takes its generic aligned path, which costs some 170 more instructions whenever the page's
//! free list is empty and rounds the block up to the next size class. A node makes a few such
//! allocations per event (`bench/instructions.sh`: 144 instructions, 4.6 %, per event of the
//! node an application publishes through). Every mimalloc block is at least word-aligned
//! (size classes are multiples of 8 bytes, and a page's first block is 16-aligned), so an
//! alignment of 8 or less is served by `mi_malloc`, `mi_zalloc` and `mi_realloc`; larger
//! ones keep the aligned functions. The library itself never sets an allocator.
//!
//! This is the crate's one module with `unsafe` code: the calls into mimalloc's C functions.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block has, whatever its size.
const WORD_ALIGN: usize = 8;

/// mimalloc as a [`GlobalAlloc`]: `#[global_allocator] static A: nodecloud::alloc::Mimalloc =
/// nodecloud::alloc::Mimalloc;`
pub struct Mimalloc;

// SAFETY: every pointer returned comes from mimalloc with at least the layout's alignment
// (word-aligned blocks for alignments up to 8; the aligned functions otherwise), and every
// pointer freed or reallocated was returned by it; mimalloc's functions are thread-safe.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (the caller's contract), so by mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was returned by this allocator with `layout`, whose alignment the
        // new block keeps.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for_at_every_size_and_after_growing() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 13, 24, 40, 48, 80, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed with its own layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|&b| b == 0xa5));
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
