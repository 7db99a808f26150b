//! The command line without surprises: help shows every default, a distillation takes its model
//! and dataset from the experts when not given, a bad output path fails before any work, a
//! resumed run lists each iteration once in `metrics.jsonl`, the `config.json` a run wrote
//! runs it again, `bench memory` stops a run past its memory limit, and `bench step` runs a batch
//! as calls of fewer images when asked.

mod common;

use common::{fails_with, tesla};
use std::path::Path;

fn experts(dir: &Path, epochs: usize) {
    common::tesla_ok(&common::tiny_experts_args(dir, 1, epochs, 100));
}

#[test]
fn help_shows_the_defaults() {
    let (code, out, _) = tesla(&["distill", "--help"]);
    assert_eq!(code, 0);
    for needle in [
        "Default: the preset's, else 500",
        "Default: target",
        "Default: tesla",
        "Default: 5000",
        "Default: the preset's, else the experts' model",
        "fmnist-small",
        "[default: 10]",
    ] {
        assert!(
            out.contains(needle),
            "distill --help lacks '{needle}':\n{out}"
        );
    }
    assert!(
        !out.contains("[`"),
        "a rustdoc link leaks into the help:\n{out}"
    );
    let (_, out, _) = tesla(&["experts", "--help"]);
    assert!(out.contains("[default: 50]"), "{out}");
    let (_, out, _) = tesla(&["eval", "--help"]);
    assert!(out.contains("--zca-file <FILE>"), "{out}");
}

#[test]
fn distill_takes_model_and_dataset_from_the_experts() {
    let d = tempfile::tempdir().unwrap();
    let e = d.path().join("experts");
    experts(&e, 2);
    let run = d.path().join("run");
    let a = common::tiny_distill_args(&e, &run, 1, &[]);
    let (code, _, err) = tesla(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("model: convnet-d3-w4 (from the experts)")
            && err.contains("dataset: fmnist-small (from the experts)"),
        "{err}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model"], "convnet-d3-w4");
}

#[test]
fn an_unwritable_eval_output_fails_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("eval.json");
    let start = std::time::Instant::now();
    let out = fails_with(
        &[
            "eval",
            "--random",
            "1",
            "--dataset",
            "fmnist-small",
            "--models",
            "convnet-d3-w4",
            "--runs",
            "1",
            "--epochs",
            "300",
            "--out",
            bad.to_str().unwrap(),
        ],
        &["eval.json"],
    );
    assert!(!out.contains('%'), "it evaluated first: {out}");
    // 300 epochs would take far longer than this.
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

#[test]
fn eval_writes_its_table_as_json_and_markdown() {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("e.json");
    let args = [
        "eval",
        "--random",
        "1",
        "--dataset",
        "fmnist-small",
        "--models",
        "convnet-d3-w4,convnet-d3-w8",
        "--runs",
        "2",
        "--epochs",
        "2",
        "--backend",
        "tract",
        "--out",
        json.to_str().unwrap(),
    ];
    let (code, stdout, err) = common::tesla(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let md = std::fs::read_to_string(d.path().join("e.md")).unwrap();
    assert!(
        md.starts_with("random 1 per class on fmnist-small, 2 epochs per run"),
        "{md}"
    );
    for (k, r) in v["results"].as_array().unwrap().iter().enumerate() {
        let (mean, std) = (r["mean"].as_f64().unwrap(), r["std"].as_f64().unwrap());
        let row = format!(
            "| {} | {:.2} ± {:.2} % | 2 | 0.01000 |",
            r["model"].as_str().unwrap(),
            mean * 100.0,
            std * 100.0
        );
        assert!(md.contains(&row), "row {k} {row} missing from {md}");
        // The figures are printed on stdout too, as each model finishes.
        assert!(stdout.contains(&format!("{:.2} ± {:.2} %", mean * 100.0, std * 100.0)));
    }
    fails_with(
        &[
            &args[..args.len() - 1],
            &[d.path().join("e.md").to_str().unwrap()],
        ]
        .concat(),
        &["names the JSON file"],
    );
}

#[test]
fn a_resumed_run_lists_each_iteration_once() {
    let d = tempfile::tempdir().unwrap();
    let e = d.path().join("experts");
    experts(&e, 2);
    let run = d.path().join("run");
    let args = |iterations: usize| {
        common::tiny_distill_args(
            &e,
            &run,
            iterations,
            &["--checkpoint-every", "2", "--resume"],
        )
    };
    let call = |a: Vec<String>| common::tesla_ok(&a);
    call(args(2));
    // A run killed after iteration 3, before its next checkpoint, mid-way through a line.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"iteration\":3,\"loss\":0.5}\n{\"iteration\":4,\"lo");
    std::fs::write(&metrics, text).unwrap();
    call(args(4));
    assert_eq!(common::metrics_iterations(&metrics), [1, 2, 3, 4]);
}

#[test]
fn the_config_json_a_run_wrote_runs_it_again() {
    let d = tempfile::tempdir().unwrap();
    let e = d.path().join("experts");
    experts(&e, 2);
    let e2 = d.path().join("experts-again");
    let (ec, e2s) = (e.join("config.json"), e2.to_str().unwrap().to_string());
    common::tesla_ok(
        &["experts", "--config", ec.to_str().unwrap(), "--out", &e2s].map(String::from),
    );
    // Tensors, not bytes: the files' metadata maps are written in no fixed order.
    let tensors =
        |path: std::path::PathBuf| tesla_distill::tensor_file::read_safetensors(&path).unwrap();
    let name = "expert_0000.safetensors";
    assert_eq!(
        tensors(e.join(name)),
        tensors(e2.join(name)),
        "the experts from their config.json differ"
    );
    let run = d.path().join("run");
    common::tesla_ok(&common::tiny_distill_args(&e, &run, 2, &[]));
    let again = d.path().join("run-again");
    let rc = run.join("config.json");
    let args = [
        "distill",
        "--config",
        rc.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ];
    common::tesla_ok(&args.map(String::from));
    let images = |dir: &Path| tensors(dir.join("distilled.safetensors"));
    assert_eq!(
        images(&run),
        images(&again),
        "the distillation from its config.json differs"
    );
    // Another option beside --config would be silently overridden: it is refused by name.
    fails_with(
        &["distill", "--config", rc.to_str().unwrap(), "--ipc", "3"],
        &["--config", "--ipc"],
    );
    fails_with(
        &[
            "distill",
            "--config",
            d.path().join("none.json").to_str().unwrap(),
        ],
        &["none.json"],
    );
}

/// `tesla bench profile` times every node of a graph's tract plan: the committed ConvNet's logits
/// graph shows its convolutions and a per-node list, and shares that sum to 100 %; a missing or
/// unreadable graph is one error line.
#[test]
fn bench_profile_lists_the_time_of_each_op() {
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/graphs/convnet-d3-1x28x28-10/logits.onnx"
    );
    let (code, out, err) = tesla(&["bench", "profile", "--graph", graph, "--reps", "1"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("slowest nodes"))
        .filter(|l| l.trim_end().ends_with('%'))
        .collect();
    assert!(
        rows.iter()
            .any(|l| l.trim_start().starts_with("Conv") || l.contains("MatMul")),
        "{out}"
    );
    let shares: f64 = rows
        .iter()
        .filter_map(|l| l.split_whitespace().rev().nth(1)?.parse::<f64>().ok())
        .sum();
    assert!(
        (shares - 100.0).abs() < 1.0,
        "shares sum to {shares}: {out}"
    );
    assert!(out.contains("slowest nodes:"), "{out}");
    fails_with(&["bench", "profile"], &["--graph"]);
    fails_with(
        &["bench", "profile", "--graph", "/nonexistent/g.onnx"],
        &["/nonexistent/g.onnx"],
    );
}

/// `tesla bench compare` runs PyTorch through an interpreter the user names: a comparison it
/// does not know, an interpreter that cannot be run and one without torch are each one error
/// line that names the cause, before anything is written or timed.
#[test]
fn bench_compare_names_what_it_cannot_run() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("w");
    let w = work.to_str().unwrap();
    fails_with(
        &[
            "bench",
            "compare",
            "--compare",
            "graphs,epochs",
            "--work",
            w,
        ],
        &["'epochs'", "expert-epoch"],
    );
    fails_with(
        &[
            "bench",
            "compare",
            "--python",
            "/nonexistent/python3",
            "--work",
            w,
        ],
        &["/nonexistent/python3", "PyTorch"],
    );
    fails_with(
        &["bench", "compare", "--python", "false", "--work", w],
        &["`false` cannot import torch", "--python"],
    );
    assert!(!work.exists(), "nothing is written before the checks pass");
}

/// `tesla bench memory` prints one peak per mode and T; a run past `--memory-limit-mib` is
/// stopped and its cell says so, and a limit that is no size is one error line before any work.
#[test]
fn bench_memory_stops_a_run_past_its_limit() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("w");
    let w = work.to_str().unwrap();
    let base = [
        "bench",
        "memory",
        "--model",
        "convnet-d1-w4",
        // 20 images a step, run as calls of 10 (runtime::row_chunks).
        "--ipc",
        "2",
        "--batch-syn",
        "20",
        "--steps",
        "2,3",
        "--modes",
        "tesla,unrolled",
        "--backends",
        "tract",
        "--work",
        w,
    ];
    let row = |out: &str, mode: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(mode))
            .unwrap_or_else(|| panic!("no {mode} row:\n{out}"))
            .to_string()
    };
    let (code, out, err) = tesla(&base);
    assert_eq!(code, 0, "{err}");
    for mode in ["tesla", "unrolled"] {
        let cells = row(&out, mode);
        let peaks: Vec<f64> = cells
            .split(" s)")
            .filter_map(|c| c.split_whitespace().rev().nth(1)?.parse().ok())
            .collect();
        assert_eq!(peaks.len(), 2, "{cells}");
        assert!(peaks.iter().all(|&p| p > 1.0), "{cells}");
        assert!(!cells.contains("stopped"), "{cells}");
    }
    let mut limited = base.to_vec();
    limited.extend(["--memory-limit-mib", "1"]);
    let (code, out, err) = tesla(&limited);
    assert_eq!(code, 0, "{err}");
    for mode in ["tesla", "unrolled"] {
        assert_eq!(row(&out, mode).matches("(stopped)").count(), 2, "{out}");
    }
    std::fs::remove_dir_all(&work).unwrap();
    let mut bad = base.to_vec();
    bad.extend(["--memory-limit-mib", "0"]);
    fails_with(&bad, &["--memory-limit-mib", "not 0"]);
    assert!(!work.exists(), "nothing is written before the checks pass");
}

/// `tesla bench step` times a batch as training runs it, as calls of fewer images, or at the size
/// `TESLA_ROWS_PER_CALL` asks; a size that does not divide the batch is one error line.
#[test]
fn bench_step_runs_a_batch_as_training_does() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path().to_str().unwrap();
    let args = [
        "bench",
        "step",
        "--model",
        "convnet-d1-w4",
        "--batch",
        "20",
        "--backends",
        "tract",
        "--reps",
        "1",
        "--work",
        w,
    ];
    let run = |rows: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tesla"));
        cmd.args(args).env_remove("TESLA_ROWS_PER_CALL");
        if let Some(rows) = rows {
            cmd.env("TESLA_ROWS_PER_CALL", rows);
        }
        cmd.output().unwrap()
    };
    // By default, the rule training follows: 20 small images as two calls of 10.
    let out = run(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("as calls of 10 images"), "{stdout}");
    let tract_row = stdout
        .lines()
        .find(|l| l.starts_with("tract"))
        .unwrap_or("");
    let speeds: Vec<f64> = tract_row
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        speeds.len() == 4 && speeds.iter().all(|&v| v > 0.0),
        "{stdout}"
    );
    let compiled = d.path().join("step").join("convnet-d1-w4");
    assert!(compiled.join("b10").exists() && !compiled.join("b20").exists());
    // Asked for the whole batch: one call of 20, and the header says nothing of calls.
    let out = run(Some("20"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("as calls of"), "{stdout}");
    assert!(compiled.join("b20").exists());
    let out = run(Some("7"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("must divide"), "{stderr}");
}

/// A malformed `TESLA_LANES` is one error line before anything runs.
#[test]
fn a_malformed_lane_count_is_one_error_line() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    for bad in ["two", "0", "-1"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tesla"))
            .args(["bench", "step", "--model", "convnet-d1-w4", "--batch", "4"])
            .args(["--backends", "tract", "--reps", "1", "--work"])
            .arg(&work)
            .env("TESLA_LANES", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "TESLA_LANES={bad}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("TESLA_LANES"), "{stderr}");
    }
}
