//! `tesla bench`: measurements printed side by side in one run, so ratios are comparable.

use crate::compile_cache::ProgramStore;
use crate::runtime::programs::{Artifact, Exec};
use crate::runtime::BackendKind;
use crate::zoo::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `tesla bench` arguments.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure: `data`, `step` (graph throughput per backend), `memory` (peak memory
    /// of the gradient modes at two values of T), `profile` (time per op of one graph on
    /// tract, `--graph FILE.onnx`) or `compare` (the graphs, one distillation iteration and one
    /// expert epoch against PyTorch on the same work, side by side; needs Python with torch).
    pub what: String,
    /// Model: convnet-dN[-wN…], resnet18[-wN], vit[-pN-dN-lN-hN-mN] or a forward .onnx file.
    #[arg(long, default_value = "convnet-d3")]
    pub model: String,
    /// Image shape.
    #[arg(long, default_value = "1x28x28")]
    pub input: String,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Backends to compare (comma-separated).
    #[arg(long, default_value = "tract,ort")]
    pub backends: String,
    /// Values of T for `memory` (comma-separated).
    #[arg(long, default_value = "10,50")]
    pub steps: String,
    /// Dataset for `memory` (its experts are trained on 2 epochs of at most 2000 of its images).
    #[arg(long, default_value = "fmnist-small")]
    pub dataset: String,
    /// Images per class for `memory`.
    #[arg(long, default_value_t = 10)]
    pub ipc: usize,
    /// Student batch for `memory`.
    #[arg(long, default_value_t = 10)]
    pub batch_syn: usize,
    /// Gradient modes for `memory` (comma-separated).
    #[arg(long, default_value = "tesla,exact,unrolled")]
    pub modes: String,
    /// Work directory.
    #[arg(long, default_value = "runs/bench")]
    pub work: PathBuf,
    /// The ONNX graph for `profile` (an artifact `tesla compile` wrote, or any static-shape f32
    /// graph).
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// How many of the slowest nodes `profile` lists after its per-op table.
    #[arg(long, default_value_t = 12)]
    pub nodes: usize,
    /// What `compare` runs against PyTorch (comma-separated): `graphs`, `iteration`,
    /// `expert-epoch`.
    #[arg(long, default_value = "graphs,iteration,expert-epoch")]
    pub compare: String,
    /// For `memory`: a run whose resident memory passes this many MiB is stopped and reported as
    /// more than that (default: three quarters of the machine's memory), so that a graph the
    /// machine cannot hold meets this limit and not the kernel's out-of-memory killer.
    #[arg(long)]
    pub memory_limit_mib: Option<f64>,
    /// The Python interpreter `compare` runs PyTorch with.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// The PyTorch side of `compare`: the scripts in `tools/`, carried in the binary so that an
/// installed `tesla` compares itself without a source checkout.
const COMPARE_SCRIPTS: [(&str, &str); 3] = [
    ("bench_torch.py", include_str!("../../tools/bench_torch.py")),
    (
        "bench_iteration.py",
        include_str!("../../tools/bench_iteration.py"),
    ),
    (
        "bench_expert_epoch.py",
        include_str!("../../tools/bench_expert_epoch.py"),
    ),
];

/// Runs a benchmark.
pub fn run(a: BenchArgs) -> Result<()> {
    match a.what.as_str() {
        "data" => {
            println!("{}", crate::data::bench::bench_data()?);
            Ok(())
        }
        "step" => step(&a),
        "memory" => memory(&a),
        "profile" => profile(&a),
        "compare" => compare(&a),
        other => bail!("unknown benchmark '{other}': data, step, memory, profile or compare"),
    }
}

fn compare(a: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the tesla executable")?;
    let exe = exe.to_string_lossy().into_owned();
    let parts: Vec<&str> = a.compare.split(',').map(str::trim).collect();
    if let Some(bad) = parts
        .iter()
        .find(|p| !matches!(**p, "graphs" | "iteration" | "expert-epoch"))
    {
        bail!("unknown comparison '{bad}': graphs, iteration or expert-epoch");
    }
    let probe = std::process::Command::new(&a.python)
        .args(["-c", "import torch"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(_) => bail!("`{}` cannot import torch: install PyTorch for it, or name another interpreter with --python", a.python),
        Err(e) => bail!("cannot run `{}` ({e}): `tesla bench compare` needs Python with PyTorch", a.python),
    }
    let scripts = a.work.join("compare-scripts");
    std::fs::create_dir_all(&scripts)
        .with_context(|| format!("cannot create {}", scripts.display()))?;
    for (name, text) in COMPARE_SCRIPTS {
        crate::atomic_file::write(&scripts.join(name), text.as_bytes())?;
    }
    let backend = a.backends.split(',').next().unwrap_or("ort").trim();
    let work = |name: &str| a.work.join(name).to_string_lossy().into_owned();
    let batch = a.batch.to_string();
    let reps = a.reps.to_string();
    let classes = a.classes.to_string();
    let ipc = a.ipc.to_string();
    for part in parts {
        let mut args: Vec<&str> = match part {
            "graphs" => vec![
                "bench_torch.py",
                &a.model,
                "--input",
                &a.input,
                "--classes",
                &classes,
                "--batch",
                &batch,
                "--reps",
                &reps,
                "--backends",
                &a.backends,
                "--tesla",
            ],
            "iteration" => vec![
                "bench_iteration.py",
                "--model",
                &a.model,
                "--ipc",
                &ipc,
                "--modes",
                "tesla",
                "--backend",
                backend,
                "--tesla",
            ],
            _ => vec![
                "bench_expert_epoch.py",
                "--model",
                &a.model,
                "--backend",
                backend,
                "--tesla",
            ],
        };
        args.push(&exe);
        let dir = work(part);
        if part != "graphs" {
            args.extend(["--work", &dir]);
        }
        let script = scripts.join(args.remove(0));
        let status = std::process::Command::new(&a.python)
            .arg(&script)
            .args(&args)
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !status.success() {
            bail!("the {part} comparison failed ({status}); its error is printed above");
        }
    }
    Ok(())
}

fn profile(a: &BenchArgs) -> Result<()> {
    let Some(graph) = &a.graph else {
        bail!("`tesla bench profile` needs --graph FILE.onnx");
    };
    let p = crate::runtime::profile_tract(graph, a.reps)?;
    let total: f64 = p.by_op.iter().map(|(_, s)| s).sum();
    println!(
        "{} on tract: {:.1} ms per run (mean of {}), time by op type:",
        graph.display(),
        p.seconds_per_run * 1e3,
        a.reps.max(1)
    );
    for (op, s) in &p.by_op {
        let share = if total > 0.0 { 100.0 * s / total } else { 0.0 };
        println!("  {op:<24} {:9.1} ms  {share:5.1} %", s * 1e3);
    }
    println!("slowest nodes:");
    for (op, node, s) in p.by_node.iter().take(a.nodes) {
        println!("  {op:<24} {:9.1} ms  {node}", s * 1e3);
    }
    Ok(())
}

fn step(a: &BenchArgs) -> Result<()> {
    let model = ModelSpec::parse(&a.model)?;
    let input = super::parse_shape(&a.input)?;
    let kinds: Vec<BackendKind> = a
        .backends
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_>>()?;
    let mut stores: Vec<(BackendKind, ProgramStore)> = kinds
        .iter()
        .map(|&kind| {
            let store = ProgramStore::new(
                model.clone(),
                input,
                a.classes,
                kind,
                &a.work.join("step").join(model.folder_name()),
                &[
                    Artifact::Step,
                    Artifact::Pass2,
                    Artifact::Logits,
                    Artifact::Pass2Dx,
                ],
            );
            (kind, store)
        })
        .collect();
    // The batch as training and distillation run it: as calls of a few images where the model
    // treats each image on its own (runtime::row_chunks), or as TESLA_ROWS_PER_CALL asks. The
    // cut depends on the model alone, so the first store's answer holds for every backend.
    let per_call = match stores.first_mut() {
        Some((_, store)) => store.rows_per_call(a.batch)?,
        None => bail!("--backends names no backend"),
    };
    println!(
        "model {} input {:?} batch {} ({} reps, median){}",
        model.name(),
        input,
        a.batch,
        a.reps,
        if per_call < a.batch {
            format!(
                ", as calls of {per_call} images, {} side by side on the CPU",
                crate::runtime::default_lanes(BackendKind::Ort)
            )
        } else {
            String::new()
        }
    );
    // `pass2 dx` is the product tesla mode runs at every step (the images' gradient only);
    // `pass2` also gives the parameters' and labels' (exact mode, learned labels).
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>14}",
        "backend", "step img/s", "pass2 img/s", "logits img/s", "pass2 dx img/s"
    );
    let mut base: Option<[f64; 4]> = None;
    let mut num_params = None;
    for (kind, mut store) in stores {
        let theta = crate::train::init_theta(&mut store, per_call, 0)?;
        let (exec, m) = store.get(per_call)?;
        let p = m.num_params;
        let exec = &mut crate::runtime::row_chunks::RowChunks::new(exec, a.batch, per_call)?;
        num_params = Some(p);
        let th = ndarray::Array1::from(theta).into_dyn();
        let x = ndarray::ArrayD::<f32>::from_shape_fn(
            ndarray::IxDyn(&[a.batch, input[0], input[1], input[2]]),
            |i| ((i[0] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.5,
        );
        let mut y = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[a.batch, a.classes]));
        for b in 0..a.batch {
            y[[b, b % a.classes]] = 1.0;
        }
        let v = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[p]), 1e-3);
        let mut time = |which: Artifact, inputs: &[ndarray::ArrayViewD<f32>]| -> Result<f64> {
            exec.run(which, inputs)?;
            let mut t: Vec<f64> = Vec::new();
            for _ in 0..a.reps.max(1) {
                let s = Instant::now();
                exec.run(which, inputs)?;
                t.push(s.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            Ok(a.batch as f64 / t[t.len() / 2])
        };
        let r = [
            time(Artifact::Step, &[th.view(), x.view(), y.view()])?,
            time(Artifact::Pass2, &[th.view(), x.view(), y.view(), v.view()])?,
            time(Artifact::Logits, &[th.view(), x.view()])?,
            time(
                Artifact::Pass2Dx,
                &[th.view(), x.view(), y.view(), v.view()],
            )?,
        ];
        let ratio = base
            .map(|b| {
                let each: Vec<String> = r
                    .iter()
                    .zip(b)
                    .map(|(now, first)| format!("×{:.2}", now / first))
                    .collect();
                format!("  ({} vs first)", each.join(" / "))
            })
            .unwrap_or_default();
        let cells: String = r.iter().map(|v| format!(" {v:>14.1}")).collect();
        println!("{:<10}{cells}{ratio}", kind.as_str());
        base.get_or_insert(r);
    }
    // A reference implementation timed beside these rows reads this to prove it did the same work.
    if let Some(p) = num_params {
        println!("parameters {p}");
    }
    Ok(())
}

/// The parameter count of the artifacts a run compiled under `artifacts` (one directory per
/// number of images per call, which need not be the student batch: see `runtime::row_chunks`).
fn compiled_num_params(artifacts: &Path) -> Result<usize> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(artifacts)
        .with_context(|| format!("reading {}", artifacts.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    dirs.sort();
    let dir = dirs
        .first()
        .ok_or_else(|| anyhow!("{} holds no compiled artifacts", artifacts.display()))?;
    Ok(crate::compiler::manifest::Manifest::load(dir)?.num_params)
}

fn memory(a: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the tesla executable")?;
    let steps: Vec<usize> = a
        .steps
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--steps")?;
    let limit_mib = match a.memory_limit_mib {
        Some(m) if m.is_finite() && m > 0.0 => m,
        Some(m) => bail!("--memory-limit-mib must be a positive number of MiB, not {m}"),
        None => machine_memory_mib()? * 0.75,
    };
    let experts = a.work.join("memory-experts");
    let backend = a.backends.split(',').next().unwrap_or("tract").trim();
    // Two short experts are enough: memory and time per iteration do not depend on their quality.
    let st = std::process::Command::new(&exe)
        .args(["experts", "--dataset", &a.dataset, "--model", &a.model])
        .args(["--experts", "1", "--epochs", "2", "--limit", "2000"])
        .args(["--backend", backend, "--out"])
        .arg(&experts)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("training the benchmark expert failed");
    }
    println!(
        "one distillation iteration per mode and T: {} on {backend}, {} at IPC {}, batch {} per \
         step; peak RSS in MiB (seconds per iteration); a run past {limit_mib:.0} MiB is stopped",
        a.model, a.dataset, a.ipc, a.batch_syn
    );
    println!(
        "{:<10} {}",
        "mode",
        steps
            .iter()
            .map(|t| format!("{:>20}", format!("T={t}")))
            .collect::<String>()
    );
    for mode in a.modes.split(',').map(str::trim) {
        // A finished run's peak and seconds, or what a run that did not finish was seen to hold.
        let mut row: Vec<Result<(f64, f64), String>> = Vec::new();
        let mut stored = Vec::new();
        for &t in &steps {
            let out = a.work.join(format!("memory-{mode}-{t}"));
            let _ = std::fs::remove_dir_all(&out);
            let child = std::process::Command::new(&exe)
                .args(["distill", "--dataset", &a.dataset, "--model", &a.model])
                .args(["--ipc", &a.ipc.to_string()])
                .args(["--batch-syn", &a.batch_syn.to_string()])
                .args(["--expert-epochs", "1", "--max-start-epoch", "1"])
                .args([
                    "--iterations",
                    "1",
                    "--gradient",
                    mode,
                    "--backend",
                    backend,
                ])
                .args(["--syn-steps", &t.to_string()])
                .arg("--experts")
                .arg(&experts)
                .arg("--out")
                .arg(&out)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("cannot start a benchmark run")?;
            let run = watch_memory(child, limit_mib)?;
            // A run the machine cannot hold (the unrolled graph at large T, stopped at the limit
            // or killed) is a result too; any other failure is an error with its cause.
            if !run.output.status.success() {
                let err = String::from_utf8_lossy(&run.output.stderr);
                let last = err.lines().rfind(|l| l.starts_with("error:"));
                if let (Some(line), Some(_), false) = (last, run.output.status.code(), run.stopped)
                {
                    bail!("the {mode} run at T={t}: {line}");
                }
                let how = if run.stopped { "stopped" } else { "killed" };
                row.push(Err(format!("> {:.0} ({how})", run.peak_mib)));
                stored.push(0.0);
                continue;
            }
            let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
            let last: serde_json::Value =
                serde_json::from_str(metrics.lines().last().unwrap_or("{}"))?;
            row.push(Ok((
                last["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                last["seconds"].as_f64().unwrap_or(f64::NAN),
            )));
            // Pass 1's T + 1 stored parameter vectors (f32) are the one part that must grow
            // with T.
            let num_params = compiled_num_params(&out.join("artifacts"))?;
            stored.push(((t + 1) * num_params * 4) as f64 / (1024.0 * 1024.0));
        }
        let growth = match (row.first(), row.last()) {
            (Some(Ok((first, _))), Some(Ok((last, _)))) if row.len() >= 2 => {
                let n = row.len() - 1;
                if mode == "unrolled" {
                    format!("  ×{:.3}", last / first)
                } else {
                    let net = (last - stored[n]) / (first - stored[0]);
                    format!("  ×{:.3} (×{net:.3} without the stored θ)", last / first)
                }
            }
            _ => String::new(),
        };
        println!(
            "{:<10} {}{growth}",
            mode,
            row.iter()
                .map(|v| match v {
                    Ok((m, s)) => format!("{:>20}", format!("{m:.1} ({s:.1} s)")),
                    Err(seen) => format!("{seen:>20}"),
                })
                .collect::<String>()
        );
    }
    Ok(())
}

/// A benchmark run's end: its exit and stderr, whether the watchdog stopped it, and the most
/// resident memory it was seen to hold (MiB).
struct WatchedRun {
    output: std::process::Output,
    stopped: bool,
    peak_mib: f64,
}

/// Waits for `child`, stopping it once its resident memory passes `limit_mib`. Resident memory is
/// polled from `/proc` every 50 ms; a run stopped at the limit held at least that much.
fn watch_memory(mut child: std::process::Child, limit_mib: f64) -> Result<WatchedRun> {
    use std::io::Read;
    // Drained on its own thread: a child blocked on a full stderr pipe would never finish.
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let status_file = format!("/proc/{}/status", child.id());
    let (mut peak_mib, mut stopped) = (0.0f64, false);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(rss) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(|s| status_kib(s, "VmRSS:"))
        {
            peak_mib = peak_mib.max(rss / 1024.0);
            if peak_mib > limit_mib && !stopped {
                stopped = true;
                // The child may have ended since try_wait; the wait below reaps it either way.
                let _ = child.kill();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(WatchedRun {
        output: std::process::Output {
            status,
            stdout: Vec::new(),
            stderr,
        },
        stopped,
        peak_mib,
    })
}

/// A `Key:   N kB` line of a `/proc` status or meminfo file, in KiB.
fn status_kib(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The machine's memory in MiB, from `/proc/meminfo`.
fn machine_memory_mib() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .context("cannot read /proc/meminfo for the default --memory-limit-mib; give one")?;
    status_kib(&text, "MemTotal:")
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no MemTotal; give --memory-limit-mib"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn spawn(program: &str, args: &[&str]) -> std::process::Child {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("a standard tool starts")
    }

    #[test]
    fn a_run_past_the_limit_is_stopped_and_reported_above_it() {
        // `tail` holds a line of /dev/zero in memory until the newline that never comes.
        let run = watch_memory(spawn("tail", &["/dev/zero"]), 64.0).expect("watched");
        assert!(run.stopped);
        assert!(!run.output.status.success());
        assert!(run.peak_mib > 64.0, "seen {} MiB", run.peak_mib);
    }

    #[test]
    fn a_run_under_the_limit_keeps_its_exit_and_stderr() {
        let run = watch_memory(spawn("sh", &["-c", "echo 'error: no' >&2; exit 3"]), 64.0)
            .expect("watched");
        assert!(!run.stopped);
        assert_eq!(run.output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&run.output.stderr), "error: no\n");
        assert!(run.peak_mib < 64.0);
    }

    #[test]
    fn proc_lines_read_in_kib() {
        let text = "Name:\ttesla\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(1024.0));
        assert_eq!(status_kib(text, "VmSwap:"), None);
    }
}
