//! A killed `tesla experts` run resumes at the epoch it had reached and ends with the trajectory an
//! uninterrupted run writes, momentum buffer included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tesla_distill::runtime::read_safetensors;

fn experts_cmd(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tesla"));
    c.args([
        "experts",
        "--dataset",
        "fmnist-small",
        "--model",
        "convnet-d3-w4",
        "--experts",
        "1",
        "--epochs",
        "4",
        "--lr",
        "0.01",
        "--momentum",
        "0.9",
        "--batch",
        "64",
        "--limit",
        "2000",
        "--seed",
        "3",
        "--backend",
        "tract",
        "--out",
    ])
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn trajectory(path: &Path) -> ndarray::ArrayD<f32> {
    read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "trajectory")
        .expect("a trajectory tensor")
        .1
}

#[test]
fn killed_expert_run_resumes_to_the_uninterrupted_trajectory() {
    let d = tempfile::tempdir().unwrap();
    let whole = d.path().join("whole");
    let out = experts_cmd(&whole).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = trajectory(&whole.join("expert_0000.safetensors"));
    assert_eq!(reference.shape()[0], 5, "θ*_0 … θ*_4");

    // Killed as soon as the first epoch's partial trajectory is on disk, mid-way through the run.
    let cut = d.path().join("cut");
    let partial = cut.join("expert_0000.partial.safetensors");
    let mut child = experts_cmd(&cut).spawn().unwrap();
    let t0 = Instant::now();
    while !partial.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no partial trajectory appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !cut.join("expert_0000.safetensors").exists(),
        "the run finished before it could be killed; the test needs longer epochs"
    );
    let kept = read_safetensors(&partial).unwrap();
    assert!(
        kept.iter().any(|(n, _)| n == "velocity"),
        "the partial file keeps the momentum buffer"
    );

    let out = experts_cmd(&cut).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming at epoch"), "{err}");
    assert!(!partial.exists(), "the partial file is removed at the end");
    let resumed = trajectory(&cut.join("expert_0000.safetensors"));
    assert!(
        resumed == reference,
        "resumed trajectory differs from the uninterrupted one (max |Δ| {})",
        resumed
            .iter()
            .zip(reference.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    );
}
