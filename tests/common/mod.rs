//! Shared test helpers: random tensors and finite-difference checks in f64 on the reference
//! evaluator; running models on ONNX Runtime through the pip packages (skipped when absent,
//! except under CI, which installs them: see [`missing`]).
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use tesla_distill::compiler::autodiff::grad;
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{numel, DType, Graph, Tensor, ValueId};

/// max |a − b| over max |b| (at least `floor`): the relative error the gradient checks bound.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let n = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(floor);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / n
}

/// The small ConvNet (width 2, depth 2, instance norm, ReLU, average pooling) the distillation
/// gradient tests differentiate through, on `[1, 6, 6]` images.
pub fn tiny_convnet(batch: usize, classes: usize) -> tesla_distill::compiler::model::ForwardModel {
    use tesla_distill::zoo::convnet::{Act, ConvNet, Norm, Pool};
    ConvNet {
        width: 2,
        depth: 2,
        norm: Norm::Instance,
        act: Act::Relu,
        pool: Pool::Avg,
    }
    .build(batch, [1, 6, 6], classes)
    .unwrap()
}

/// A seeded generator.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [lo, hi).
pub fn uniform(r: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    Tensor::new(
        DType::F32,
        shape.to_vec(),
        (0..numel(shape)).map(|_| r.random_range(lo..hi)).collect(),
    )
}

/// Values with |x| in [0.2, 1.2) and random sign: away from the kinks of ReLU-like ops.
pub fn away_from_zero(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let data = (0..numel(shape))
        .map(|_| {
            let m = r.random_range(0.2..1.2);
            if r.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::new(DType::F32, shape.to_vec(), data)
}

/// Distinct values (a shuffled ramp with jitter): no ties for max-like ops.
pub fn distinct(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = numel(shape);
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0) * 0.1 + r.random_range(0.0..0.02))
        .collect();
    for i in (1..n).rev() {
        let j = r.random_range(0..=i);
        v.swap(i, j);
    }
    Tensor::new(DType::F32, shape.to_vec(), v)
}

/// Turns a value into a scalar by a random weighted sum, so every output element has its own
/// cotangent.
pub fn weighted_sum(g: &mut Graph, r: &mut ChaCha8Rng, v: ValueId) -> ValueId {
    let s = g.shape(v).to_vec();
    let mut w = uniform(r, &s, -1.0, 1.0);
    w.dtype = g.dtype(v);
    let c = g.constant(w);
    let p = g.mul(v, c).unwrap();
    g.sum_all(p).unwrap()
}

/// Max relative error of the autodiff gradient of scalar `out` against central differences, over
/// every float graph input; `g`'s outputs are replaced.
pub fn grad_error(g: &Graph, out: ValueId, inputs: &[Tensor]) -> f64 {
    let mut gg = g.clone();
    let wrt: Vec<ValueId> = gg
        .inputs
        .iter()
        .copied()
        .filter(|&i| gg.dtype(i).is_float())
        .collect();
    let grads = grad(&mut gg, out, &wrt, None).unwrap();
    gg.outputs = grads.clone();
    let ad = eval(&gg, inputs).unwrap();
    let mut f = g.clone();
    f.outputs = vec![out];
    let val = |ins: &[Tensor]| eval(&f, ins).unwrap()[0].data[0];
    let mut worst: f64 = 0.0;
    for (k, &w) in wrt.iter().enumerate() {
        let pos = g.inputs.iter().position(|&i| i == w).unwrap();
        let scale_fd = 1e-5;
        let mut fd = Vec::with_capacity(inputs[pos].numel());
        for j in 0..inputs[pos].numel() {
            let mut plus = inputs.to_vec();
            plus[pos].data[j] += scale_fd;
            let mut minus = inputs.to_vec();
            minus[pos].data[j] -= scale_fd;
            fd.push((val(&plus) - val(&minus)) / (2.0 * scale_fd));
        }
        let norm = fd.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
        let err = ad[k]
            .data
            .iter()
            .zip(&fd)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / norm);
    }
    worst
}

/// The same check one order up: the gradient of ⟨v, ∇f⟩ (v random), which makes the transform
/// differentiate the graph it emitted.
pub fn hvp_error(g: &Graph, out: ValueId, inputs: &[Tensor], seed: u64) -> f64 {
    let mut r = rng(seed);
    let mut gg = g.clone();
    let wrt: Vec<ValueId> = gg
        .inputs
        .iter()
        .copied()
        .filter(|&i| gg.dtype(i).is_float())
        .collect();
    let grads = grad(&mut gg, out, &wrt, None).unwrap();
    let mut acc = None;
    for d in grads {
        let s = weighted_sum(&mut gg, &mut r, d);
        acc = Some(match acc {
            None => s,
            Some(a) => gg.add(a, s).unwrap(),
        });
    }
    grad_error(&gg, acc.unwrap(), inputs)
}

// ---- ONNX interchange helpers ----

/// Reports a missing test prerequisite (ONNX Runtime, Python packages, the Fashion-MNIST
/// package). `.ci/run` installs them all, so under CI (`CI` set) this fails the test instead of
/// letting it pass by skipping; elsewhere it says what was skipped.
pub fn missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what}, and CI is set: .ci/run installs it, so this test may not skip");
    }
    eprintln!("skipped: {what}");
}

/// Whether python3 can import onnx, onnxruntime and numpy; reports why not (see [`missing`]).
pub fn python_ok() -> bool {
    let out = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            missing(&format!(
                "python3 cannot import onnx, onnxruntime and numpy ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            false
        }
        Err(e) => {
            missing(&format!("cannot run python3 ({e})"));
            false
        }
    }
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn rand_vec(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            // Round to f32 so the f32 model and the f64 reference see the same numbers.
            (lo + (hi - lo) * u) as f32 as f64
        })
        .collect()
}

/// A feed entry for the python runner.
pub fn feed(dtype: &str, shape: &[usize], data: &[f64]) -> Value {
    json!({"dtype": dtype, "shape": shape, "data": data})
}

/// The runner: for each case, optionally `onnx.checker.check_model(full_check=True)`, run the
/// model on ONNX Runtime (CPU, graph optimisations off), and compare its outputs with `expect`
/// (numbers) or with the first outputs of a `reference` model, with max |a−b|/(|b|+1) ≤ tol.
const RUNNER: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
cases = json.load(open(sys.argv[1]))
fails = 0
def arrs(d):
    return {k: np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in d.items()}
def run(path, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return s.run(None, {k: v for k, v in feeds.items() if k in names})
for c in cases:
    try:
        if c.get("check", True):
            onnx.checker.check_model(onnx.load(c["model"]), full_check=True)
        outs = run(c["model"], arrs(c["inputs"]))
        if "expect" in c:
            refs = [np.array(e["data"]).reshape(e["shape"]) for e in c["expect"]]
        else:
            r = c["reference"]
            refs = run(r["model"], arrs(r["inputs"]))[: len(outs)]
        worst = 0.0
        for k, (o, e) in enumerate(zip(outs, refs)):
            o = np.asarray(o, dtype=np.float64)
            e = np.asarray(e, dtype=np.float64)
            if o.shape != e.shape:
                raise Exception(f"output {k}: shape {o.shape}, expected {e.shape}")
            if o.size:
                worst = max(worst, float(np.max(np.abs(o - e) / (np.abs(e) + 1.0))))
        if len(refs) < len(outs):
            raise Exception(f"{len(outs)} outputs but {len(refs)} references")
        if not worst <= c.get("tol", 1e-4):
            raise Exception(f"max error {worst:.3g} > {c.get('tol', 1e-4)}")
        print("ok  ", c["case"], f"{worst:.2g}")
    except Exception as ex:
        fails += 1
        print("FAIL", c["case"], str(ex).strip().splitlines()[0][:400] if str(ex).strip() else repr(ex))
sys.exit(1 if fails else 0)
"#;

/// Runs the cases (see [`RUNNER`]); panics listing the failures.
pub fn run_cases(dir: &Path, cases: Vec<Value>) {
    let job = dir.join("cases.json");
    std::fs::write(&job, serde_json::to_vec(&Value::Array(cases)).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", RUNNER])
        .arg(&job)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "ONNX Runtime checks failed:\n{text}");
}

/// Tensors by name: (shape, values).
pub type Tensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// A minimal f32/f64 safetensors reader (name → (shape, values)) plus the `__metadata__` map.
pub fn read_safetensors(path: &Path) -> (Tensors, Value) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    let mut meta = Value::Null;
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            meta = v.clone();
            continue;
        }
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let (a, b) = (
            v["data_offsets"][0].as_u64().unwrap() as usize,
            v["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let vals = match v["dtype"].as_str() {
            Some("F32") => data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Some("F64") => data[a..b]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other => panic!("{}: tensor '{k}' has dtype {other:?}", path.display()),
        };
        out.insert(k.clone(), (shape, vals));
    }
    (out, meta)
}

/// The flat parameter vector `theta` of `m` cut into its named tensors (row-major, in the model's
/// parameter order), for hand-written reference forwards.
pub fn params_by_name(
    m: &tesla_distill::compiler::model::ForwardModel,
    theta: &[f64],
) -> std::collections::HashMap<String, Vec<f64>> {
    let mut out = std::collections::HashMap::new();
    let mut off = 0;
    for p in &m.params {
        let len: usize = p.shape.iter().product();
        out.insert(p.name.clone(), theta[off..off + len].to_vec());
        off += len;
    }
    assert_eq!(off, theta.len(), "theta has the model's parameter count");
    out
}

// ---- the command line ----

/// Runs the `tesla` binary: (exit code, stdout, stderr).
pub fn tesla(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tesla"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failure with one `error:` line mentioning every needle and no panic; returns
/// stdout.
pub fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let (code, out, err) = tesla(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got: {err}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: '{}' does not mention '{n}'",
            lines[0]
        );
    }
    out
}

/// `tesla experts` arguments for a tiny run: convnet-d3-w4 on `limit` images of the embedded
/// fmnist-small set, on tract (bit-identical from run to run).
pub fn tiny_experts_args(out: &Path, experts: usize, epochs: usize, limit: usize) -> Vec<String> {
    let (experts, epochs, limit) = (experts.to_string(), epochs.to_string(), limit.to_string());
    [
        "experts",
        "--dataset",
        "fmnist-small",
        "--model",
        "convnet-d3-w4",
        "--experts",
        &experts,
        "--epochs",
        &epochs,
        "--limit",
        &limit,
        "--backend",
        "tract",
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]
    .map(str::to_string)
    .to_vec()
}

/// The tiny experts the library-level tests train: `experts` × `epochs` of `convnet-d3-w4` on
/// 200 `fmnist-small` images, plain SGD, tract (the CLI form is [`tiny_experts_args`]).
#[allow(dead_code)]
pub fn tiny_experts_config(
    out: &Path,
    experts: usize,
    epochs: usize,
    seed: u64,
) -> tesla_distill::experts::ExpertsConfig {
    tesla_distill::experts::ExpertsConfig {
        dataset: "fmnist-small".into(),
        model: tesla_distill::zoo::ModelSpec::parse("convnet-d3-w4").expect("a model"),
        experts,
        epochs,
        lr: 0.01,
        batch: 64,
        momentum: 0.0,
        weight_decay: 0.0,
        strategy: Default::default(),
        zca: false,
        seed,
        shard: (0, 1),
        backend: tesla_distill::runtime::BackendKind::Tract,
        out: out.to_path_buf(),
        limit: Some(200),
    }
}

/// Runs `tesla` with `args` and asserts success.
pub fn tesla_ok(args: &[String]) {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = tesla(&v);
    assert_eq!(code, 0, "{v:?}: {err}");
}

/// SHA-256 over the named tensors' f32 values (little-endian), in the order given: independent
/// of the file's layout and metadata.
pub fn tensor_hash(path: &Path, names: &[&str]) -> String {
    use sha2::Digest;
    let tensors =
        tesla_distill::runtime::read_safetensors(path).unwrap_or_else(|e| panic!("{e:#}"));
    let mut h = sha2::Sha256::new();
    for n in names {
        let (_, a) = tensors
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("{}: no '{n}'", path.display()));
        h.update(n.as_bytes());
        for v in a.iter() {
            h.update(v.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// `tesla distill` arguments for a tiny IPC-1 run on experts from [`tiny_experts_args`] (model
/// and dataset taken from them), T = 2, M = 1, then `extra`.
pub fn tiny_distill_args(
    experts: &Path,
    out: &Path,
    iterations: usize,
    extra: &[&str],
) -> Vec<String> {
    let iterations = iterations.to_string();
    let mut v: Vec<String> = [
        "distill",
        "--experts",
        experts.to_str().expect("a UTF-8 path"),
        "--ipc",
        "1",
        "--syn-steps",
        "2",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "1",
        "--iterations",
        &iterations,
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]
    .map(str::to_string)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The library-level settings of a tiny distillation (convnet-d3-w4 on fmnist-small, IPC 1,
/// T = 3, M = 1, soft labels or `labels`, DSA, tract, seed 4) that the run and pinned-output tests
/// share.
pub fn tiny_distill_config(
    experts: &Path,
    out: &Path,
    iterations: usize,
    labels: tesla_distill::distill::run::Labels,
) -> tesla_distill::distill::run::DistillConfig {
    tesla_distill::distill::run::DistillConfig {
        dataset: "fmnist-small".into(),
        model: "convnet-d3-w4".into(),
        experts: experts.to_path_buf(),
        ipc: 1,
        syn_steps: 3,
        expert_epochs: 1,
        max_start_epoch: 1,
        iterations,
        lr_img: 100.0,
        lr_lr: 1e-5,
        lr_init: Some(0.01),
        lr_label: 2.0,
        batch_syn: Some(5),
        pix_init: tesla_distill::distill::run::PixInit::Real,
        labels,
        label_grad: false,
        final_labels: Default::default(),
        gradient: tesla_distill::distill::gradient::Mode::Tesla,
        zca: false,
        dsa_strategy: "color_crop_cutout_flip_scale_rotate".into(),
        backend: "tract".into(),
        seed: 4,
        eval_every: 0,
        eval_epochs: 10,
        eval_runs: 1,
        checkpoint_every: 2,
        out: out.to_path_buf(),
    }
}

/// The `iteration` of every line of a run's `metrics.jsonl`, in file order.
pub fn metrics_iterations(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["iteration"]
                .as_u64()
                .unwrap()
        })
        .collect()
}
