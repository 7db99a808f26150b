//! Shared helpers of the ONNX tests: deterministic data, and running models on ONNX Runtime
//! through the pip `onnx`/`onnxruntime` packages (skipped with a message when unavailable).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Whether python3 can import onnx, onnxruntime and numpy; prints why not.
pub fn python_ok() -> bool {
    let out = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "skipping the ONNX Runtime check: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("skipping the ONNX Runtime check: cannot run python3: {e}");
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

/// A minimal f32 safetensors reader (name → (shape, values)) plus the `__metadata__` map.
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
        assert_eq!(v["dtype"], "F32");
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
        let vals = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect();
        out.insert(k.clone(), (shape, vals));
    }
    (out, meta)
}
