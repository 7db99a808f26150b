//! Run configurations are plain serde data: the JSON a run writes is its configuration, and the
//! model, backend and augmentation read back as the same typed values.

mod common;

use tesla_distill::eval::EvalConfig;
use tesla_distill::experts::{run_experts, ExpertsConfig};
use tesla_distill::onnx::import::BatchNormMode;
use tesla_distill::runtime::BackendKind;
use tesla_distill::zoo::ModelSpec;

#[test]
fn the_experts_config_json_is_the_config() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    let cfg = ExpertsConfig {
        limit: Some(50),
        ..common::tiny_experts_config(&ex, 1, 1, 3)
    };
    run_experts(&cfg).unwrap();
    let text = std::fs::read_to_string(ex.join("config.json")).unwrap();
    let back: ExpertsConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model"], "convnet-d3-w4");
    assert_eq!(v["backend"], "tract");
}

#[test]
fn models_and_backends_are_their_command_line_names() {
    let m: ModelSpec = serde_json::from_str("\"nets/r18.onnx[batchnorm=batch]\"").unwrap();
    assert_eq!(
        m,
        ModelSpec::Onnx("nets/r18.onnx".into(), BatchNormMode::Batch)
    );
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        "\"nets/r18.onnx[batchnorm=batch]\""
    );
    let b: BackendKind = serde_json::from_str("\"ort-cuda\"").unwrap();
    assert_eq!(b, BackendKind::OrtCuda);
    let err = serde_json::from_str::<ModelSpec>("\"convnet-d9x\"").unwrap_err();
    assert!(err.to_string().contains("convnet-d9x"), "{err}");
    let cfg = EvalConfig {
        runs: 2,
        epochs: 300,
        batch: 256,
        strategy: "flip_crop".parse().unwrap(),
        seed: 7,
        backend: BackendKind::Ort,
    };
    let back: EvalConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}
