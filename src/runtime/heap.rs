//! The C heap's settings that both CPU backends run with.
//!
//! tract allocates every intermediate of a run afresh, and ONNX Runtime does too once its own
//! arena is off (see `ort_backend`): both then ask glibc for the same large blocks in every run.
//! glibc's default serves blocks above its mapping threshold (at most 32 MiB) with their own
//! mappings and unmaps them on free, so each run paid a page fault per 4 KiB of its large
//! intermediates.

/// Has the C allocator keep freed blocks for its next allocations, once per process (glibc
/// only): no block gets a mapping of its own, and the top of the heap is not trimmed. On tract a
/// 44 MB `Concat` took 25 ms instead of 4.5 ms without it and ConvNet-D3's step at batch 256
/// about 1.8 times as long. The cost is that memory the process has freed, up to 2 GiB at the top
/// of its heap, is not handed back to the system until exit.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static HEAP: std::sync::Once = std::sync::Once::new();
        HEAP.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time,
            // and a parameter it refuses (a 0 return) leaves the default in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}
