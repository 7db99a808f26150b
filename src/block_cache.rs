//! A global allocator that keeps freed large blocks for the next allocation of the same size.
//!
//! tract allocates every intermediate of every run afresh, and a graph allocates the same sizes
//! in every run. Served by glibc, those blocks land wherever the heap has room, the heap keeps
//! growing for dozens of runs as it fragments, and each fresh 4 KiB page costs a page fault on
//! its first write; on a virtual machine such faults are dear. This allocator hands a freed
//! block of at least [`LARGE`] bytes to the next request of the same size and alignment, so
//! from the second run on a graph writes into memory it has touched before.
//!
//! The `tesla` binary installs it; an embedding program may install it too:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: tesla_distill::block_cache::BlockCache = tesla_distill::block_cache::BlockCache::new();
//! # fn main() {}
//! ```
//!
//! Setting `TESLA_BLOCK_CACHE=0` in the environment turns the cache off (every request goes to
//! the system allocator), for side-by-side measurements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The smallest block the cache keeps; smaller ones go straight to the system allocator, which
/// serves them from its bins without touching fresh pages.
pub const LARGE: usize = 256 << 10;

/// The most bytes the cache holds in freed blocks; a block freed beyond it goes back to the
/// system allocator.
const MAX_CACHED_BYTES: usize = 4 << 30;

/// The most freed blocks kept per size, and the most distinct sizes: both bound the cache's own
/// bookkeeping well below [`LARGE`], so its vectors never allocate through the cache itself.
const MAX_BLOCKS_PER_SIZE: usize = 64;
const MAX_SIZES: usize = 1024;

/// The allocator; see the module documentation.
pub struct BlockCache {
    pools: Mutex<Pools>,
    state: AtomicU8,
}

struct Pools {
    by_size: Vec<Pool>,
    cached_bytes: usize,
}

/// Freed blocks of one size and alignment, as addresses (raw pointers are not `Send`).
struct Pool {
    size: usize,
    align: usize,
    free: Vec<usize>,
}

const UNKNOWN: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

impl BlockCache {
    /// An empty cache, for a `#[global_allocator]` static.
    pub const fn new() -> Self {
        Self {
            pools: Mutex::new(Pools {
                by_size: Vec::new(),
                cached_bytes: 0,
            }),
            state: AtomicU8::new(UNKNOWN),
        }
    }

    fn enabled(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            ON => true,
            OFF => false,
            _ => {
                // getenv does not allocate, so it is safe inside the allocator.
                // SAFETY: the name is a NUL-terminated string; the result is only read.
                let off = unsafe {
                    let v = libc::getenv(c"TESLA_BLOCK_CACHE".as_ptr());
                    !v.is_null() && *v == b'0' as libc::c_char
                };
                self.state
                    .store(if off { OFF } else { ON }, Ordering::Relaxed);
                !off
            }
        }
    }

    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut pools = self.pools.lock().ok()?;
        let addr = pools.pool(layout)?.free.pop()?;
        pools.cached_bytes -= layout.size();
        Some(addr as *mut u8)
    }

    /// Keeps a freed block; false when the cache is full and the caller must free it.
    fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        let Ok(mut pools) = self.pools.lock() else {
            return false;
        };
        if pools.cached_bytes + layout.size() > MAX_CACHED_BYTES {
            return false;
        }
        if pools.pool(layout).is_none() && pools.by_size.len() < MAX_SIZES {
            pools.by_size.push(Pool {
                size: layout.size(),
                align: layout.align(),
                free: Vec::new(),
            });
        }
        match pools.pool(layout) {
            Some(pool) if pool.free.len() < MAX_BLOCKS_PER_SIZE => pool.free.push(ptr as usize),
            _ => return false,
        }
        pools.cached_bytes += layout.size();
        true
    }
}

impl Pools {
    /// The pool of blocks of exactly this size and alignment, if there is one.
    fn pool(&mut self, layout: Layout) -> Option<&mut Pool> {
        self.by_size
            .iter_mut()
            .find(|p| p.size == layout.size() && p.align == layout.align())
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block handed out comes from `System` with the same layout it is later freed
// with; a cached block is handed out again only for a request of exactly its size and
// alignment, and is never in two places at once (the pool's mutex guards the free lists).
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE && self.enabled() {
            if let Some(p) = self.take(layout) {
                return p;
            }
        }
        // SAFETY: forwarded with the caller's layout, which GlobalAlloc's contract makes valid.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE && self.enabled() {
            if let Some(p) = self.take(layout) {
                // SAFETY: the block holds layout.size() writable bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
        }
        // SAFETY: as in alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE && self.enabled() && self.keep(ptr, layout) {
            return;
        }
        // SAFETY: every block, cached or not, was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if (layout.size() < LARGE && new_size < LARGE) || !self.enabled() {
            // SAFETY: the block came from System with this layout (small blocks are never
            // cached), and the caller guarantees new_size is valid for its alignment.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size, rounded to the alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid non-zero layout (new_size is non-zero by the caller's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the copy stays within the smaller one.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_size_only() {
        let cache = BlockCache::new();
        let big = Layout::from_size_align(LARGE * 3, 64).expect("layout");
        let other = Layout::from_size_align(LARGE * 3 + 8, 64).expect("layout");
        // SAFETY: the layouts are non-zero; every block is freed with its own layout.
        unsafe {
            let a = cache.alloc(big);
            assert!(!a.is_null());
            a.write_bytes(7, big.size());
            cache.dealloc(a, big);
            let b = cache.alloc(other);
            assert_ne!(a, b, "a block of another size was reused");
            let c = cache.alloc_zeroed(big);
            assert_eq!(a, c, "the freed block of the same size was not reused");
            let zeroed = std::slice::from_raw_parts(c, big.size());
            assert!(
                zeroed.iter().all(|&x| x == 0),
                "alloc_zeroed gave dirty memory"
            );
            let d = cache.alloc(big);
            assert_ne!(c, d, "one block handed out twice");
            cache.dealloc(b, other);
            cache.dealloc(c, big);
            cache.dealloc(d, big);
        }
        let pools = cache.pools.lock().expect("lock");
        assert_eq!(pools.cached_bytes, 2 * big.size() + other.size());
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_large_boundary() {
        let cache = BlockCache::new();
        let small = Layout::from_size_align(1000, 8).expect("layout");
        // SAFETY: each pointer is used within its current size and freed with its last layout.
        unsafe {
            let p = cache.alloc(small);
            for i in 0..1000 {
                p.add(i).write((i % 251) as u8);
            }
            let q = cache.realloc(p, small, LARGE * 2);
            let grown = Layout::from_size_align(LARGE * 2, 8).expect("layout");
            let r = cache.realloc(q, grown, 500);
            for i in 0..500 {
                assert_eq!(r.add(i).read(), (i % 251) as u8);
            }
            cache.dealloc(r, Layout::from_size_align(500, 8).expect("layout"));
        }
    }
}
