//! An exported PyTorch network as the surrogate, from experts to evaluation, through the command
//! line. The fixture is VGG-11 with BatchNorm at width 4 for 1×28×28 images, written by PyTorch's
//! default (dynamo) exporter, which emits batch norm in its inference form:
//!
//! ```text
//! PYTHONPATH=tools python3 tools/export_model.py transfer_models:vgg11 --input 1x28x28 \
//!   --kwargs '{"num_classes":10,"width":4}' --exporter dynamo --out tests/fixtures/vgg11_bn_w4_dynamo.onnx
//! ```
//!
//! Its gradients against PyTorch are checked in `onnx_torchvision.rs`; here the whole path must
//! work with it: batch statistics chosen and recorded, every expert drawn afresh from the
//! manifest's init rules, experts that learn, a distillation that takes the model from the experts,
//! and an evaluation that takes the dataset from the set.

mod common;

use std::path::{Path, PathBuf};
use tesla_distill::experts::trajectory::{list, Trajectory};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vgg11_bn_w4_dynamo.onnx")
}

fn run(args: &[&str]) -> String {
    let (code, _, err) = common::tesla(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn exported_batchnorm_network_runs_experts_distillation_and_evaluation() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture();
    let model_s = model.to_str().unwrap();
    let ex = d.path().join("experts");
    let ex_s = ex.to_str().unwrap();
    let err = run(&[
        "experts",
        "--dataset",
        "fmnist-small",
        "--model",
        model_s,
        "--experts",
        "2",
        "--epochs",
        "2",
        "--limit",
        "500",
        "--lr",
        "0.05",
        "--backend",
        "tract",
        "--out",
        ex_s,
    ]);
    // One warning line says what the importer chose for the inference-form nodes.
    let bn: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("BatchNormalization"))
        .collect();
    assert_eq!(bn.len(), 1, "{err}");
    assert!(
        bn[0].contains("8 of 8") && bn[0].contains("batch statistics"),
        "{}",
        bn[0]
    );

    // The manifest records batch statistics for each of the 8 nodes.
    let manifests: Vec<PathBuf> = std::fs::read_dir(ex.join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path().join("manifest.json"))
        .collect();
    assert!(!manifests.is_empty());
    for m in &manifests {
        let bn = json(m)["batchnorm"].clone();
        let nodes = bn.as_object().expect("a batchnorm map");
        assert_eq!(nodes.len(), 8, "{}", m.display());
        assert!(nodes.values().all(|v| v == "batch"), "{bn}");
    }

    // Each expert starts from its own draw of the init rules, not from the file's values, and
    // learns: above chance (10 %) on the test split after two epochs.
    let files = list(&ex).unwrap();
    assert_eq!(files.len(), 2);
    let t0 = Trajectory::open(&files[0]).unwrap();
    let t1 = Trajectory::open(&files[1]).unwrap();
    let (a, b) = (t0.epoch(0).unwrap(), t1.epoch(0).unwrap());
    let differ = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
    assert!(differ > a.len() / 2, "only {differ} of {} differ", a.len());
    assert_eq!(
        t0.meta.model,
        std::fs::canonicalize(&model).unwrap().to_str().unwrap()
    );
    for j in 0..2 {
        let log = json(&ex.join(format!("expert_{j:04}.json")));
        let acc = log[1]["test_acc"].as_f64().unwrap();
        assert!(acc > 0.25, "expert {j}: test accuracy {acc}");
    }

    // Distillation takes the model from the experts.
    let out = d.path().join("run");
    let args = common::tiny_distill_args(&ex, &out, 3, &["--backend", "tract"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = run(&args);
    assert!(err.contains("(from the experts)"), "{err}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    for l in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (loss, norm) = (
            v["loss"].as_f64().unwrap(),
            v["grad_norm"].as_f64().unwrap(),
        );
        assert!(loss.is_finite() && loss > 0.0, "{l}");
        assert!(norm.is_finite() && norm > 0.0, "{l}");
    }
    let set = out.join("distilled.safetensors");
    let (_, meta) = common::read_safetensors(&set);
    assert_eq!(meta["model"], t0.meta.model.as_str());

    // Evaluation on the exported network and a built-in one, the dataset taken from the set.
    let err = run(&[
        "eval",
        "--distilled",
        set.to_str().unwrap(),
        "--models",
        &format!("{model_s},convnet-d3-w4"),
        "--epochs",
        "5",
        "--runs",
        "1",
        "--backend",
        "tract",
    ]);
    assert!(
        err.contains("dataset: fmnist-small (from the distilled set)"),
        "{err}"
    );
    let results = json(&out.join("eval.json"));
    let rows = results["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{results}");
    for r in rows {
        let acc = r["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
    }
    assert!(std::fs::read_to_string(out.join("eval.md"))
        .unwrap()
        .contains("vgg11_bn_w4_dynamo.onnx"));
}
