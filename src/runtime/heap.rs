//! The C heap's settings that both CPU backends run with.
//!
//! tract allocates every intermediate of a run afresh, and ONNX Runtime does too once its own
//! arena is off (see `ort_backend`): both then ask glibc for the same large blocks in every run.
//! glibc's default serves blocks above its mapping threshold (at most 32 MiB) with their own
//! mappings and unmaps them on free, so each run paid a page fault per 4 KiB of its large
//! intermediates.

/// Has the C allocator keep freed blocks for its next allocations, once per process (glibc
/// only): no block gets a mapping of its own, and the top of the heap is never trimmed. On tract a
/// 44 MB `Concat` took 25 ms instead of 4.5 ms without it and ConvNet-D3's step at batch 256
/// about 1.8 times as long; trimmed only beyond 2 GiB, the unrolled graph (IPC 10, T 20, 12 GiB)
/// gave back 10 GiB after every run and faulted it in again in the next, 23 s an iteration
/// against 15.5 s. The cost is that memory the process has freed is not handed back to the
/// system until exit: resident memory stays near its peak once the peak has passed; the peak
/// itself does not grow.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static HEAP: std::sync::Once = std::sync::Once::new();
        HEAP.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time,
            // and a parameter it refuses (a 0 return) leaves the default in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                // -1 turns trimming off altogether (mallopt(3)); any positive value is capped
                // at 2 GiB by the parameter's type.
                libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            }
        });
    }
}
