//! The `tesla` binary: every error ends as one line on stderr and a non-zero exit.
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
