//! A short, bounded pass of the mutation fuzzer (`examples/fuzz.rs`) over every reader of
//! outside bytes: the committed corpus (`fuzz/corpus/`, which holds the reproducers of fixed
//! panics) is replayed, then every target is fuzzed in this process for an even share of about
//! 40 s. Any panic, allocation over 2 GiB or input slower than 10 s fails the test; the input is
//! saved under `fuzz/crashes/`. `tools/fuzz.sh SECONDS` is the long run.
//!
//! The example's global allocator (the 2 GiB cap) is this test binary's allocator too: an
//! allocation over the cap that the reader does not handle aborts the binary, after a line on
//! stderr naming the target and the file that holds the input.

#[allow(dead_code)]
#[path = "../examples/fuzz.rs"]
mod fuzz;

use std::time::Duration;

/// Total fuzzing time, split evenly across the targets.
const TOTAL: Duration = Duration::from_secs(40);

#[test]
fn every_reader_survives_a_short_fuzz() {
    // A fixed generator seed: CI explores the same mutations each run (the long runs of
    // tools/fuzz.sh vary theirs), and new corpus entries are not written from CI.
    let opts = fuzz::Options {
        save_corpus: false,
        ..fuzz::Options::new(Duration::ZERO, 20_240_601)
    };
    let stats = fuzz::fuzz_in_process(&[], TOTAL, &opts).expect("the fuzz harness runs");
    println!("{}", fuzz::table(&stats));
    for s in &stats {
        assert!(s.execs > 0, "target {} ran no input", s.target);
    }
    let failures: Vec<&String> = stats.iter().flat_map(|s| &s.failures).collect();
    assert!(
        failures.is_empty(),
        "the fuzzer found {} failure(s):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
