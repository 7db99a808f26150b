//! torchvision's classification architectures, exported with both PyTorch exporters
//! (`tools/export_torchvision.py`), against PyTorch autograd in float64: the step loss, the
//! gradient of every parameter and the pass-2 image VJP d⟨v, ∇θℓ⟩/dx, on the f64 reference
//! evaluator. PyTorch's own float32 error on the same inputs (stored with the reference) is the
//! tolerance: an import that is right in f64 is far closer than that, and a network that
//! computes something else (batch norm with the wrong statistics, say) is far off.

mod common;

use std::path::{Path, PathBuf};
use tesla_distill::compiler::artifact::{pass2_graph, step_graph};
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::compiler::model::{ForwardModel, NormStatistics};
use tesla_distill::onnx::import::{import_onnx, BatchNormMode, ImportOptions};

/// Architectures in train() mode (batch-norm with batch statistics).
const TRAINING: [&str; 9] = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2",
    "regnet_y",
    "vgg11_bn",
    "vit",
    "convnext",
];
const X: [usize; 4] = [8, 3, 32, 32];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision")
        .join(name)
}

fn import(file: &str, batchnorm: BatchNormMode) -> ForwardModel {
    let opts = ImportOptions {
        dtype: DType::F64,
        batchnorm,
    };
    import_onnx(&fixture(file), &X, &opts).unwrap_or_else(|e| panic!("{file}: {e:#}"))
}

/// max |a − b| / max |b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The largest relative errors (loss, gradient, dx) of `m` against `name`'s PyTorch reference,
/// each divided by PyTorch's own float32 error on it.
fn errors_in_f32_units(m: &ForwardModel, name: &str) -> [f64; 3] {
    let (refs, meta) = common::read_safetensors(&fixture(&format!("{name}_ref.safetensors")));
    let get = |k: &str| &refs.get(k).unwrap_or_else(|| panic!("{name}: no '{k}'")).1;
    let names: Vec<String> = serde_json::from_str(meta["params"].as_str().unwrap()).unwrap();
    let got: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, names, "{name}: parameters in PyTorch's order");
    let theta: Vec<f64> = m
        .params
        .iter()
        .flat_map(|p| {
            p.initial
                .as_ref()
                .expect("exported with weights")
                .data
                .clone()
        })
        .collect();
    let want_grad: Vec<f64> = names.iter().flat_map(|n| get(n).clone()).collect();
    let p = theta.len();
    let v: Vec<f64> = (0..p).map(|i| (i as f64 * 0.7 + 0.3).sin()).collect();
    let t = |shape: Vec<usize>, data: Vec<f64>| Tensor::new(DType::F64, shape, data);
    let (x, y) = (get("x").clone(), get("y").clone());
    let step = step_graph(m).unwrap();
    let out = eval(
        &step,
        &[
            t(vec![p], theta.clone()),
            t(X.to_vec(), x.clone()),
            t(vec![X[0], 10], y.clone()),
        ],
    )
    .unwrap();
    let loss = rel(&out[0].data, get("loss"));
    let grad = rel(&out[1].data, &want_grad);
    let pass2 = pass2_graph(m, true).unwrap();
    let out = eval(
        &pass2,
        &[
            t(vec![p], theta),
            t(X.to_vec(), x),
            t(vec![X[0], 10], y),
            t(vec![p], v),
        ],
    )
    .unwrap();
    let dx = rel(&out[0].data, get("dx"));
    let loss32 = rel(get("loss_f32"), get("loss")).max(1e-9);
    let grad32 = get("grad_err_f32")[0].max(1e-9);
    let dx32 = get("dx_err_f32")[0].max(1e-9);
    [loss / loss32, grad / grad32, dx / dx32]
}

#[test]
fn torchvision_models_match_pytorch_autograd_with_both_exporters() {
    let mut failures = Vec::new();
    for name in TRAINING {
        for exporter in ["ts", "dynamo"] {
            let file = format!("{name}_{exporter}.onnx");
            let m = import(&file, BatchNormMode::Auto);
            // Every batch norm of a network exported in train() mode normalises with batch
            // statistics, whichever form the exporter wrote.
            assert!(
                m.batchnorm.values().all(|&s| s == NormStatistics::Batch),
                "{file}: {:?}",
                m.batchnorm
            );
            let e = errors_in_f32_units(&m, name);
            eprintln!(
                "{file}: error / PyTorch's f32 error: loss {:.1e}, grad {:.1e}, dx {:.1e}",
                e[0], e[1], e[2]
            );
            if e.iter().any(|&v| v.is_nan() || v > 1.0) {
                failures.push(format!("{file}: {e:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "beyond PyTorch's f32 error: {failures:?}"
    );
}

/// The dynamo exporter's inference-form batch norms of a network exported for training: `auto`
/// reads the traced op from the nodes, says it uses batch statistics and names the nodes (the
/// running statistics in this file moved: the TorchScript export before it ran the model in
/// train()); `running` reproduces the file's literal meaning, which is not the PyTorch network
/// in train().
#[test]
fn dynamo_batchnorm_of_a_training_export_uses_batch_statistics() {
    let m = import("resnet18_dynamo.onnx", BatchNormMode::Auto);
    assert_eq!(m.batchnorm.len(), 20, "{:?}", m.batchnorm);
    let line: Vec<&String> = m
        .warnings
        .iter()
        .filter(|w| w.contains("BatchNormalization"))
        .collect();
    assert_eq!(line.len(), 1, "one line for all nodes: {:?}", m.warnings);
    assert!(
        line[0].starts_with("20 of 20 BatchNormalization nodes (")
            && line[0].contains("and 17 more")
            && line[0].contains("from a model in train()")
            && line[0].contains("batch statistics"),
        "{}",
        line[0]
    );
    let forced = import("resnet18_dynamo.onnx", BatchNormMode::Running);
    assert!(forced
        .batchnorm
        .values()
        .all(|&s| s == NormStatistics::Running));
    let e = errors_in_f32_units(&forced, "resnet18");
    assert!(
        e[1] > 1e3,
        "running statistics should not match train(): {e:?}"
    );
}

/// A network with trained running statistics exported for inference (eval()): `auto` keeps the
/// running statistics, says so, and matches PyTorch's eval() gradients; forcing batch
/// statistics does not.
#[test]
fn trained_running_statistics_are_kept_for_an_inference_export() {
    for exporter in ["ts", "dynamo"] {
        let file = format!("resnet18_eval_{exporter}.onnx");
        let m = import(&file, BatchNormMode::Auto);
        assert!(
            m.batchnorm.values().all(|&s| s == NormStatistics::Running),
            "{file}: {:?}",
            m.batchnorm
        );
        assert!(
            m.warnings.iter().any(|w| w.starts_with("20 of 20")
                && w.contains("running statistics, as PyTorch's eval()")),
            "{file}: {:?}",
            m.warnings
        );
        let e = errors_in_f32_units(&m, "resnet18_eval");
        eprintln!(
            "{file}: error / PyTorch's f32 error: loss {:.1e}, grad {:.1e}, dx {:.1e}",
            e[0], e[1], e[2]
        );
        assert!(e.iter().all(|&v| v <= 1.0), "{file}: {e:?}");
        let batch = import(&file, BatchNormMode::Batch);
        let e = errors_in_f32_units(&batch, "resnet18_eval");
        assert!(
            e[1] > 1e3,
            "{file}: batch statistics should not match eval(): {e:?}"
        );
    }
}

/// Without the exporter's record of the traced op (nodes renamed, metadata gone), `auto` decides
/// from the running statistics: untouched defaults mean a network exported to be trained (batch
/// statistics), trained values one exported for inference (kept).
#[test]
fn without_a_traced_op_the_statistics_decide() {
    use prost::Message;
    use tesla_distill::onnx::import::{import_model, read_model};
    let mut proto = read_model(&fixture("resnet18_dynamo.onnx")).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let mut k = 0;
    for n in graph.node.iter_mut() {
        if n.op_type.as_deref() == Some("BatchNormalization") {
            n.name = Some(format!("bn{k}"));
            n.metadata_props.clear();
            k += 1;
        }
    }
    let opts = ImportOptions {
        dtype: DType::F64,
        batchnorm: BatchNormMode::Auto,
    };
    let trained = import_model(&proto, None, &X, &opts, "renamed").unwrap();
    assert!(
        trained
            .batchnorm
            .values()
            .all(|&s| s == NormStatistics::Running),
        "{:?}",
        trained.batchnorm
    );
    assert!(
        trained
            .warnings
            .iter()
            .any(|w| w.starts_with("20 of 20") && w.contains("carry trained running statistics")),
        "{:?}",
        trained.warnings
    );
    for t in proto.graph.as_mut().unwrap().initializer.iter_mut() {
        let name = t.name.clone().unwrap_or_default();
        let value: f32 = if name.ends_with("running_mean") {
            0.0
        } else if name.ends_with("running_var") {
            1.0
        } else {
            continue;
        };
        let n: i64 = t.dims.iter().product();
        t.raw_data = Some((0..n).flat_map(|_| value.to_le_bytes()).collect());
        t.float_data.clear();
    }
    // Through bytes, as a file would come.
    let proto =
        tesla_distill::onnx::pb::ModelProto::decode(proto.encode_to_vec().as_slice()).unwrap();
    let fresh = import_model(&proto, None, &X, &opts, "renamed").unwrap();
    assert!(
        fresh
            .batchnorm
            .values()
            .all(|&s| s == NormStatistics::Batch),
        "{:?}",
        fresh.batchnorm
    );
    assert!(
        fresh
            .warnings
            .iter()
            .any(|w| w.contains("untouched running statistics")),
        "{:?}",
        fresh.warnings
    );
    let e = errors_in_f32_units(&fresh, "resnet18");
    assert!(e.iter().all(|&v| v <= 1.0), "{e:?}");
}

/// The batch-norm mode travels in the model's name (what expert files and distilled sets store),
/// so a run that reads the name back lowers the file the same way.
#[test]
fn the_batchnorm_mode_round_trips_through_the_model_name() {
    use tesla_distill::zoo::ModelSpec;
    let path = fixture("resnet18_dynamo.onnx");
    let file = path.to_str().unwrap();
    for mode in [BatchNormMode::Batch, BatchNormMode::Running] {
        let spec = ModelSpec::parse(file).unwrap().with_batchnorm(mode);
        let name = spec.name();
        assert_eq!(name, format!("{file}[batchnorm={}]", mode.as_str()));
        assert_eq!(ModelSpec::parse(&name).unwrap(), spec, "{name}");
        assert!(
            !spec.folder_name().contains(['/', '[', ']']),
            "{}",
            spec.folder_name()
        );
        let m = spec.build(X[0], [3, 32, 32], 10).unwrap();
        let want = match mode {
            BatchNormMode::Running => NormStatistics::Running,
            _ => NormStatistics::Batch,
        };
        assert!(m.batchnorm.values().all(|&s| s == want), "{name}");
    }
    // Auto is the bare path, as before.
    let auto = ModelSpec::parse(file).unwrap();
    assert_eq!(auto.name(), file);
    assert!(ModelSpec::parse(&format!("{file}[batchnorm=sometimes]")).is_err());
}
