//! The PyTorch ConvNet fixtures (made by `tools/export_torch.py`): every export mode imports,
//! parameters keep PyTorch's names and order, the forward logits match PyTorch's, and the
//! folded/shared parameters of the default dynamo export are reported.

mod common;

use std::path::{Path, PathBuf};
use tesla_distill::compiler::model::{ForwardModel, InitRule};
use tesla_distill::onnx::{export, import};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const X: [usize; 4] = [4, 1, 28, 28];

fn torch_param_names() -> Vec<String> {
    let (_, meta) = common::read_safetensors(&fixture("convnet_torch_ref.safetensors"));
    serde_json::from_str(meta["params"].as_str().unwrap()).unwrap()
}

fn import(name: &str) -> ForwardModel {
    import::import_onnx(&fixture(name), &X, &import::ImportOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn keep_mode_exports_import_with_pytorch_parameters() {
    let names = torch_param_names();
    for file in ["convnet_keep.onnx", "convnet_dynamo_keep.onnx"] {
        let m = import(file);
        let got: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(got, names, "{file}: parameters in PyTorch order");
        assert!(
            m.warnings.is_empty(),
            "{file}: unexpected warnings {:?}",
            m.warnings
        );
        // The file's values are the initial parameters; every layer is recognised, so each has
        // PyTorch's default rule for fresh draws, the same rules as the export without weights.
        assert!(m.params.iter().all(|p| p.initial.is_some()));
        let rules: Vec<InitRule> = m.params.iter().map(|p| p.init.clone()).collect();
        let without: Vec<InitRule> = import("convnet_noparams.onnx")
            .params
            .iter()
            .map(|p| p.init.clone())
            .collect();
        assert_eq!(rules, without, "{file}");
        assert_eq!(
            m.num_params(),
            16 * 9 + 16 * 3 + 16 * 16 * 9 + 16 * 3 + 10 * 1024 + 10
        );
        assert_eq!(m.graph.shape(m.logits), &[4, 10]);
        assert_eq!(m.graph.inputs[0], m.x);
    }
}

#[test]
fn default_dynamo_export_warns_about_folded_parameters() {
    let m = import("convnet_dynamo_default.onnx");
    let all = m.warnings.join("\n");
    assert!(all.contains("'val_21' feeds 2 layers"), "warnings: {all}");
    assert!(
        all.contains("README.md"),
        "warnings point to the export advice: {all}"
    );
}

#[test]
fn export_without_weights_gets_pytorch_default_init_rules() {
    let m = import("convnet_noparams.onnx");
    let rule = |n: &str| {
        m.params
            .iter()
            .find(|p| p.name == n)
            .map(|p| p.init.clone())
            .unwrap()
    };
    assert_eq!(
        rule("features.0.weight"),
        InitRule::KaimingUniform { fan_in: 9 }
    );
    assert_eq!(rule("features.0.bias"), InitRule::UniformBias { fan_in: 9 });
    assert_eq!(rule("features.1.weight"), InitRule::Ones);
    assert_eq!(rule("features.1.bias"), InitRule::Zeros);
    assert_eq!(
        rule("features.4.weight"),
        InitRule::KaimingUniform { fan_in: 144 }
    );
    assert_eq!(rule("features.5.bias"), InitRule::Zeros);
    assert_eq!(
        rule("classifier.weight"),
        InitRule::KaimingUniform { fan_in: 1024 }
    );
    assert_eq!(
        rule("classifier.bias"),
        InitRule::UniformBias { fan_in: 1024 }
    );
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, torch_param_names());
    assert!(m.params.iter().all(|p| p.initial.is_none()));
}

/// The imported graph, exported back to ONNX and run on ONNX Runtime, gives PyTorch's logits.
#[test]
fn imported_convnet_reproduces_pytorch_logits() {
    if !common::python_ok() {
        return;
    }
    let (refs, _) = common::read_safetensors(&fixture("convnet_torch_ref.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (file, dtype) in [
        ("convnet_keep.onnx", "f32"),
        ("convnet_dynamo_keep.onnx", "f32"),
        ("convnet_dynamo_default.onnx", "f32"),
    ] {
        let opts = import::ImportOptions {
            dtype: if dtype == "f64" {
                tesla_distill::compiler::ir::DType::F64
            } else {
                tesla_distill::compiler::ir::DType::F32
            },
            ..Default::default()
        };
        let m = import::import_onnx(&fixture(file), &X, &opts).unwrap();
        let path = dir.path().join(format!("{file}.{dtype}.onnx"));
        export::write(&m.graph, &path).unwrap();
        let np = if dtype == "f64" { "float64" } else { "float32" };
        let mut inputs = serde_json::Map::new();
        let (xs, xv) = &refs["x"];
        inputs.insert("x".into(), common::feed(np, xs, xv));
        for p in &m.params {
            let t = p.initial.as_ref().unwrap();
            inputs.insert(p.name.clone(), common::feed(np, &t.shape, &t.data));
        }
        let (ls, lv) = &refs["logits"];
        cases.push(serde_json::json!({
            "case": format!("{file} ({dtype})"),
            "model": path,
            "inputs": inputs,
            "expect": [{"shape": ls, "data": lv}],
            "tol": 2e-5,
        }));
    }
    common::run_cases(dir.path(), cases);
}

/// The imported graph, evaluated by the f64 reference evaluator with the file's parameters,
/// gives PyTorch's logits (f32 import rounds like PyTorch; f64 import is the finite-difference
/// setting).
#[test]
fn evaluated_import_matches_pytorch_logits() {
    use tesla_distill::compiler::eval::eval;
    use tesla_distill::compiler::ir::{DType, Tensor};
    let (refs, _) = common::read_safetensors(&fixture("convnet_torch_ref.safetensors"));
    let (xs, xv) = &refs["x"];
    let (_, lv) = &refs["logits"];
    for file in ["convnet_keep.onnx", "convnet_dynamo_keep.onnx"] {
        for dtype in [DType::F32, DType::F64] {
            let m = import::import_onnx(
                &fixture(file),
                &X,
                &import::ImportOptions {
                    dtype,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut inputs = vec![Tensor::new(dtype, xs.clone(), xv.clone())];
            inputs.extend(m.params.iter().map(|p| p.initial.clone().unwrap()));
            let out = eval(&m.graph, &inputs).unwrap();
            assert_eq!(out[0].shape, [4, 10]);
            let err = out[0]
                .data
                .iter()
                .zip(lv)
                .map(|(a, b)| (a - b).abs() / (b.abs() + 1.0))
                .fold(0.0, f64::max);
            assert!(
                err < 1e-5,
                "{file} {dtype:?}: logits differ from PyTorch by {err}"
            );
        }
    }
}

/// Corrupted files (random byte flips in a valid model) give errors or models, never panics.
#[test]
fn corrupted_files_never_panic() {
    let bytes = std::fs::read(fixture("convnet_keep.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let r = common::rand_vec(4 * 400, 99, 0.0, 1.0);
    for k in 0..400 {
        let mut b = bytes.clone();
        for j in 0..4 {
            let pos = (r[4 * k + j] * b.len() as f64) as usize % b.len();
            b[pos] = (r[(4 * k + j + 1) % r.len()] * 256.0) as u8;
        }
        std::fs::write(&p, &b).unwrap();
        let res = std::panic::catch_unwind(|| {
            import::import_onnx(&p, &X, &import::ImportOptions::default())
        });
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => assert!(!format!("{e:#}").contains('\n'), "one line: {e:#}"),
            Err(_) => {
                let keep = std::env::temp_dir().join("tesla_import_panic.onnx");
                std::fs::write(&keep, &b).unwrap();
                panic!(
                    "mutation {k} panicked the importer (file kept at {})",
                    keep.display()
                );
            }
        }
    }
}

/// More architectures exported from PyTorch (attention + LayerNorm + GELU, BatchNorm +
/// InstanceNorm + MaxPool, ConvTranspose): keep-mode files of both exporters import with
/// PyTorch's parameters and compute what ONNX Runtime computes from the original file.
#[test]
fn zoo_exports_import_and_match_onnx_runtime() {
    let names: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("zoo_params.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let xs = [2, 3, 16, 16];
    let mut cases = Vec::new();
    for (file, want) in &names {
        let m = import::import_onnx(&fixture(file), &xs, &import::ImportOptions::default())
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let got: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
        let want: Vec<&str> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{file}");
        // The dynamo exporter writes BatchNorm in inference form even from a model in training
        // mode: the importer reads the traced op, normalises with batch statistics and says so
        // (and nothing else). ONNX Runtime computes what the file literally says (running
        // statistics), so the reference for it is the TorchScript export of the same module in
        // training form, which ONNX Runtime normalises with batch statistics.
        let bn_dynamo = file == "zoo_bnnet_dynamo_keep.onnx";
        assert_eq!(
            m.warnings.len(),
            usize::from(bn_dynamo),
            "{file}: {:?}",
            m.warnings
        );
        assert!(
            m.warnings
                .iter()
                .all(|w| w.contains("from a model in train()") && w.contains("batch statistics")),
            "{file}: {:?}",
            m.warnings
        );
        let reference = if bn_dynamo {
            fixture("zoo_bnnet_ts_keep.onnx")
        } else {
            fixture(file)
        };
        let low = dir.path().join(format!("{file}.ir.onnx"));
        export::write(&m.graph, &low).unwrap();
        let x = common::feed("float32", &xs, &common::rand_vec(2 * 3 * 256, 5, -1.0, 1.0));
        let mut inputs = serde_json::Map::new();
        inputs.insert("x".into(), x);
        for p in &m.params {
            let t = p.initial.as_ref().unwrap();
            inputs.insert(p.name.clone(), common::feed("float32", &t.shape, &t.data));
        }
        cases.push(serde_json::json!({
            "case": file, "model": low, "inputs": inputs,
            "reference": {"model": reference, "inputs": inputs}, "tol": 2e-5,
        }));
    }
    let m = import::import_onnx(
        &fixture("zoo_vit_ts_default.onnx"),
        &xs,
        &import::ImportOptions::default(),
    )
    .unwrap();
    let all = m.warnings.join("\n");
    assert!(all.contains("'blk.ln.weight' feeds 3 layers"), "{all}");
    assert!(all.contains("exporter-generated name"), "{all}");
    if common::python_ok() {
        common::run_cases(dir.path(), cases);
    }
}

/// The imported PyTorch ConvNet's `step` gradient against PyTorch's own gradient for the same
/// fixed inputs: on the f64 reference evaluator, and through the exported artifact on tract.
#[test]
fn step_gradient_matches_pytorch() {
    use tesla_distill::compiler::artifact::step_graph;
    use tesla_distill::compiler::eval::eval;
    use tesla_distill::compiler::ir::{DType, Tensor};
    use tesla_distill::runtime::programs::{Artifact, BackendExec, Exec};
    let reference =
        tesla_distill::runtime::read_safetensors(&fixture("convnet_torch_ref.safetensors"))
            .unwrap();
    let get = |n: &str| {
        reference
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("fixture lacks {n}"))
    };
    for file in ["convnet_keep.onnx", "convnet_dynamo_keep.onnx"] {
        let m = import(file);
        let theta: Vec<f64> = m
            .params
            .iter()
            .flat_map(|p| p.initial.as_ref().unwrap().data.clone())
            .collect();
        let want_grad: Vec<f64> = m
            .params
            .iter()
            .flat_map(|p| {
                get(&p.name)
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>()
            })
            .collect();
        let x = get("x");
        let y = get("y");
        let t = |a: &ndarray::ArrayD<f32>| {
            Tensor::new(
                DType::F64,
                a.shape().to_vec(),
                a.iter().map(|&v| f64::from(v)).collect(),
            )
        };
        let step = step_graph(&m).unwrap();
        let out = eval(
            &step,
            &[
                Tensor::new(DType::F64, vec![theta.len()], theta.clone()),
                t(&x),
                t(&y),
            ],
        )
        .unwrap();
        let want_loss = f64::from(get("loss").iter().next().copied().unwrap());
        assert!(
            (out[0].data[0] - want_loss).abs() <= 1e-5 * want_loss.abs(),
            "{file}: loss {} vs PyTorch {want_loss}",
            out[0].data[0]
        );
        let scale = want_grad.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = out[1]
            .data
            .iter()
            .zip(&want_grad)
            .fold(0.0f64, |a, (g, w)| a.max((g - w).abs()))
            / scale;
        // PyTorch computed in f32: agreement is to f32 rounding.
        assert!(
            err <= 1e-4,
            "{file}: gradient vs PyTorch, max relative error {err:e}"
        );
        // The exported artifact on tract.
        let d = tempfile::tempdir().unwrap();
        tesla_distill::onnx::artifacts::compile_dir(&m, &[Artifact::Step], 0, d.path()).unwrap();
        let mut ex = BackendExec::new(
            tesla_distill::runtime::backend(tesla_distill::runtime::BackendKind::Tract).unwrap(),
            d.path(),
        );
        let th = ndarray::Array1::from(theta).mapv(|v| v as f32).into_dyn();
        let got = ex
            .run(Artifact::Step, &[th.view(), x.view(), y.view()])
            .unwrap();
        let err = got[1]
            .iter()
            .zip(&want_grad)
            .fold(0.0f64, |a, (g, w)| a.max((f64::from(*g) - w).abs()))
            / scale;
        assert!(
            err <= 1e-4,
            "{file}: tract step gradient vs PyTorch, max relative error {err:e}"
        );
    }
}
