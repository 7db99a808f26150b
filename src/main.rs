//! The `tesla` binary: every error ends as one line on stderr and a non-zero exit.
fn main() {
    if let Err(e) = tesla_distill::cli::main() {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
