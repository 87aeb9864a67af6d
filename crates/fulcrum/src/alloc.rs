//! The global allocator: mimalloc.
//!
//! Why not glibc's malloc: the data path's 8 KiB buffers went through its
//! slow bins (`_int_malloc`, `malloc_consolidate`: 16 % of the user-space
//! instructions per keep-alive request under callgrind), and freed session
//! memory was reused less tightly.
//!
//! Why not the `mimalloc` crate's own `MiMalloc`: it asks for every block
//! through `mi_malloc_aligned`, whose path for blocks over 1 KiB over-allocates
//! and costs about 1,300 instructions per keep-alive request here (the boxed
//! exchange, the read buffers). Blocks that plain `mi_malloc` already aligns
//! enough (16 bytes, or their size when smaller) take it.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment `mi_malloc` gives every block at least as large as it.
const MALLOC_ALIGN: usize = 16;

pub struct MiMalloc;

fn plain(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc with at least the layout's
// alignment (checked by `plain` or asked of `mi_*_aligned`), and goes back to
// it through `mi_free`, which takes blocks from either family.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls into mimalloc with a size and a power-of-two alignment.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align());
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if new.as_ref().is_ok_and(plain) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_alignment_and_keep_their_bytes() {
        for (size, align) in [(1, 1), (8, 8), (24, 8), (3000, 8), (64, 64), (256, 128), (8192, 16), (5, 16)] {
            let layout = Layout::from_size_align(size, align).expect("layout");
            // SAFETY: a non-zero-sized layout, freed with the same allocator.
            unsafe {
                let p = MiMalloc.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                p.write_bytes(0xa5, size);
                let q = MiMalloc.realloc(p, layout, size * 3);
                assert_eq!(q as usize % align, 0, "realloc of size {size} align {align}");
                assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 0xa5));
                MiMalloc.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
            }
        }
    }
}
