//! The `tesla` binary: every error ends as one line on stderr and a non-zero exit.

/// tract allocates the same large intermediates in every run of a graph; the cache hands each
/// freed one to the next request of its size, so later runs write into pages already touched.
#[global_allocator]
static ALLOC: tesla_distill::block_cache::BlockCache =
    tesla_distill::block_cache::BlockCache::new();

fn main() {
    // Rust ignores SIGPIPE, which turns `tesla inspect DIR | head` into a panic on the next print;
    // the default action ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = tesla_distill::cli::main() {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
