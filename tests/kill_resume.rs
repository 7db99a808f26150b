//! Crash safety: `tesla experts`, `tesla distill` and `tesla eval` killed with SIGKILL at 20
//! points spread over a run each, then run again (distill with `--resume`), end with exactly the
//! uninterrupted run's result (same seed, backend and threads: the result is deterministic),
//! and no kill leaves a file that a reader refuses. Points are drawn over the uninterrupted
//! run's wall time, so they land in training, in checkpoint writes and after the end alike.

mod common;

use common::{tensor_hash, tesla_ok as run};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 20;

/// Starts the command and SIGKILLs it after `delay` (if it is still running then).
fn run_killed(args: &[String], delay: Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tesla"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().expect("waits").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kill points: the `k`-th of [`KILLS`] quantiles of `total`, each moved by a pseudo-random
/// fraction of its slot, so the points are spread and not aligned with the run's rhythm.
fn kill_point(total: Duration, k: usize) -> Duration {
    let jitter = ((k as u64 * 2654435761) % 1000) as f64 / 1000.0;
    total.mul_f64((k as f64 + jitter) / KILLS as f64)
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn experts_args(out: &Path) -> Vec<String> {
    common::tiny_experts_args(out, 2, 3, 200)
}

#[test]
fn experts_killed_anywhere_resume_to_the_uninterrupted_result() {
    let d = tempfile::tempdir().unwrap();
    let whole = d.path().join("whole");
    let t0 = Instant::now();
    run(&experts_args(&whole));
    let total = t0.elapsed();
    let want: Vec<String> = (0..2)
        .map(|j| {
            tensor_hash(
                &whole.join(format!("expert_{j:04}.safetensors")),
                &["trajectory"],
            )
        })
        .collect();
    for k in 0..KILLS {
        let out = d.path().join(format!("k{k}"));
        run_killed(&experts_args(&out), kill_point(total, k));
        run(&experts_args(&out));
        for (j, w) in want.iter().enumerate() {
            let got = tensor_hash(
                &out.join(format!("expert_{j:04}.safetensors")),
                &["trajectory"],
            );
            assert_eq!(&got, w, "kill point {k}: expert {j} differs");
        }
        assert!(
            !out.join("expert_0000.partial.safetensors").exists(),
            "kill point {k}: a partial file is left"
        );
    }
}

fn distill_args(experts: &Path, out: &Path) -> Vec<String> {
    args(&[
        "distill",
        "--dataset",
        "fmnist-small",
        "--model",
        "convnet-d3-w4",
        "--experts",
        experts.to_str().unwrap(),
        "--ipc",
        "1",
        "--syn-steps",
        "3",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "2",
        "--iterations",
        "8",
        "--checkpoint-every",
        "1",
        "--labels",
        "target",
        "--backend",
        "tract",
        "--resume",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn distill_killed_anywhere_resumes_to_the_uninterrupted_images() {
    let d = tempfile::tempdir().unwrap();
    let experts = d.path().join("experts");
    run(&experts_args(&experts));
    let whole = d.path().join("whole");
    let t0 = Instant::now();
    run(&distill_args(&experts, &whole));
    let total = t0.elapsed();
    let set = ["images", "labels", "classes", "lr"];
    let want = tensor_hash(&whole.join("distilled.safetensors"), &set);
    for k in 0..KILLS {
        let out = d.path().join(format!("k{k}"));
        run_killed(&distill_args(&experts, &out), kill_point(total, k));
        // Whatever the kill left must read (atomic writes), then the resumed run finishes it.
        if out.join("distilled.safetensors").exists() {
            tesla_distill::distill::set_file::DistilledSet::read(
                &out.join("distilled.safetensors"),
            )
            .unwrap_or_else(|e| panic!("kill point {k}: {e:#}"));
        }
        run(&distill_args(&experts, &out));
        let got = tensor_hash(&out.join("distilled.safetensors"), &set);
        assert_eq!(got, want, "kill point {k}: the images differ");
        assert_eq!(
            common::metrics_iterations(&out.join("metrics.jsonl")),
            (1..=8).collect::<Vec<u64>>(),
            "kill point {k}"
        );
    }
}

#[test]
fn eval_killed_anywhere_leaves_no_partial_result_and_reruns_identically() {
    let d = tempfile::tempdir().unwrap();
    let eval_args = |out: &Path| {
        args(&[
            "eval",
            "--random",
            "1",
            "--dataset",
            "fmnist-small",
            "--models",
            "convnet-d3-w4",
            "--runs",
            "2",
            "--epochs",
            "20",
            "--backend",
            "tract",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let results = |p: &Path| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        v["results"].clone()
    };
    let whole = d.path().join("whole.json");
    let t0 = Instant::now();
    run(&eval_args(&whole));
    let total = t0.elapsed();
    let want = results(&whole);
    for k in 0..KILLS {
        let out = d.path().join(format!("k{k}.json"));
        run_killed(&eval_args(&out), kill_point(total, k));
        if out.exists() {
            assert_eq!(results(&out), want, "kill point {k}: a partial result");
        }
        run(&eval_args(&out));
        assert_eq!(results(&out), want, "kill point {k}: the rerun differs");
    }
}
