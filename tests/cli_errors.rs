//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

mod common;

use common::{fails_with, tesla};
use std::path::Path;
use std::process::Command;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn garbage_and_truncated_onnx() {
    let d = tmp();
    let garbage = d.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf \xff\xfe\x00\x01").unwrap();
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    fails_with(
        &[
            "compile",
            "--model",
            garbage.to_str().unwrap(),
            "--input",
            "1x8x8",
            "--classes",
            "3",
            "--out",
            o,
        ],
        &["garbage.onnx"],
    );
    // A valid model cut in half.
    let good = d.path().join("art");
    let (code, _, err) = tesla(&[
        "compile",
        "--model",
        "convnet-d3-w4",
        "--input",
        "1x8x8",
        "--classes",
        "3",
        "--batch",
        "2",
        "--out",
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(good.join("logits.onnx")).unwrap();
    let cut = d.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &[
            "compile",
            "--model",
            cut.to_str().unwrap(),
            "--input",
            "1x8x8",
            "--classes",
            "3",
            "--out",
            o,
        ],
        &["cut.onnx"],
    );
    for backend in ["tract", "ort"] {
        let inputs = d.path().join("in.safetensors");
        std::fs::write(&inputs, b"").unwrap();
        fails_with(
            &[
                "run",
                cut.to_str().unwrap(),
                "--inputs",
                inputs.to_str().unwrap(),
                "--out",
                o,
                "--backend",
                backend,
            ],
            &["cut.onnx"],
        );
    }
    fails_with(
        &[
            "compile",
            "--model",
            "/nonexistent/model.onnx",
            "--input",
            "1x8x8",
            "--classes",
            "3",
            "--out",
            o,
        ],
        &["model.onnx"],
    );
}

/// Writes a one-node ONNX model with python's onnx package, if it is installed.
fn python_model(dir: &Path, name: &str, body: &str) -> Option<std::path::PathBuf> {
    let path = dir.join(name);
    let script = format!(
        "import onnx\nfrom onnx import helper as h, TensorProto as T\n{body}\nonnx.save(m, r'{}')\n",
        path.display()
    );
    let ok = Command::new("python3")
        .args(["-c", &script])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        common::missing("python3 with the onnx package");
        return None;
    }
    Some(path)
}

#[test]
fn unsupported_op_names_node_and_op() {
    let d = tmp();
    let body = "x = h.make_tensor_value_info('x', T.FLOAT, [2, 1, 4, 4])\n\
                y = h.make_tensor_value_info('y', T.FLOAT, None)\n\
                n = h.make_node('Hardmax', ['x'], ['y'], name='the_hardmax')\n\
                m = h.make_model(h.make_graph([n], 'g', [x], [y]), opset_imports=[h.make_opsetid('', 17)])";
    let Some(p) = python_model(d.path(), "hardmax.onnx", body) else {
        return;
    };
    let o = d.path().join("o");
    fails_with(
        &[
            "compile",
            "--model",
            p.to_str().unwrap(),
            "--input",
            "1x4x4",
            "--classes",
            "3",
            "--batch",
            "2",
            "--out",
            o.to_str().unwrap(),
        ],
        &["Hardmax", "the_hardmax"],
    );
}

#[test]
fn wrong_rank_dtype_and_shape() {
    let d = tmp();
    let o = d.path().join("o");
    let o = o.to_str().unwrap();
    let rank = "x = h.make_tensor_value_info('x', T.FLOAT, [2, 16])\n\
                y = h.make_tensor_value_info('y', T.FLOAT, None)\n\
                n = h.make_node('Relu', ['x'], ['y'])\n\
                m = h.make_model(h.make_graph([n], 'g', [x], [y]), opset_imports=[h.make_opsetid('', 17)])";
    if let Some(p) = python_model(d.path(), "rank.onnx", rank) {
        fails_with(
            &[
                "compile",
                "--model",
                p.to_str().unwrap(),
                "--input",
                "1x4x4",
                "--classes",
                "3",
                "--batch",
                "2",
                "--out",
                o,
            ],
            &["rank.onnx"],
        );
    }
    let dtype = "x = h.make_tensor_value_info('x', T.INT64, [2, 1, 4, 4])\n\
                 y = h.make_tensor_value_info('y', T.INT64, None)\n\
                 n = h.make_node('Identity', ['x'], ['y'])\n\
                 m = h.make_model(h.make_graph([n], 'g', [x], [y]), opset_imports=[h.make_opsetid('', 17)])";
    if let Some(p) = python_model(d.path(), "dtype.onnx", dtype) {
        fails_with(
            &[
                "compile",
                "--model",
                p.to_str().unwrap(),
                "--input",
                "1x4x4",
                "--classes",
                "3",
                "--batch",
                "2",
                "--out",
                o,
            ],
            &["dtype.onnx"],
        );
    }
    // A Gemm whose weight does not fit the flattened input: the node and op are named.
    let mismatch = "import numpy as np\n\
                    x = h.make_tensor_value_info('x', T.FLOAT, [2, 1, 4, 4])\n\
                    y = h.make_tensor_value_info('y', T.FLOAT, None)\n\
                    w = onnx.numpy_helper.from_array(np.zeros((3, 7), np.float32), 'fc.weight')\n\
                    f = h.make_node('Flatten', ['x'], ['f'])\n\
                    n = h.make_node('Gemm', ['f', 'fc.weight'], ['y'], name='fc', transB=1)\n\
                    m = h.make_model(h.make_graph([f, n], 'g', [x], [y], [w]), opset_imports=[h.make_opsetid('', 17)])";
    if let Some(p) = python_model(d.path(), "mismatch.onnx", mismatch) {
        fails_with(
            &[
                "compile",
                "--model",
                p.to_str().unwrap(),
                "--input",
                "1x4x4",
                "--classes",
                "3",
                "--batch",
                "2",
                "--out",
                o,
            ],
            &["fc"],
        );
    }
    // `tesla run` with a wrongly shaped input tensor.
    let art = d.path().join("art");
    let (code, _, err) = tesla(&[
        "compile",
        "--model",
        "convnet-d3-w4",
        "--input",
        "1x8x8",
        "--classes",
        "3",
        "--batch",
        "2",
        "--out",
        art.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let inputs = d.path().join("in.safetensors");
    let theta = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[5]));
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 1, 8, 8]));
    tesla_distill::runtime::write_safetensors(
        &inputs,
        &[("theta".into(), theta), ("x".into(), x)],
        None,
    )
    .unwrap();
    fails_with(
        &[
            "run",
            art.join("logits.onnx").to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            o,
        ],
        &["theta"],
    );
    fails_with(
        &[
            "compile",
            "--model",
            "convnet-d3",
            "--input",
            "3x32",
            "--classes",
            "10",
            "--out",
            o,
        ],
        &["3x32"],
    );
    fails_with(
        &[
            "compile",
            "--model",
            "resnet-99",
            "--input",
            "3x32x32",
            "--classes",
            "10",
            "--out",
            o,
        ],
        &["resnet-99"],
    );
}

#[test]
fn distill_bad_input() {
    let d = tmp();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let experts = d.path().join("experts");
    let e = experts.to_str().unwrap();
    let base = [
        "distill",
        "--dataset",
        "fmnist-small",
        "--model",
        "convnet-d3-w4",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "1",
        "--iterations",
        "1",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let call = |v: Vec<String>, needles: &[&str]| {
        fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    // No experts at all.
    std::fs::create_dir_all(&experts).unwrap();
    call(
        with(&["--experts", e, "--ipc", "1", "--syn-steps", "2", "--out", r]),
        &["expert"],
    );
    // syn-steps 0.
    call(
        with(&["--experts", e, "--ipc", "1", "--syn-steps", "0", "--out", r]),
        &["syn-steps"],
    );
    // Teacher-label options with labels that no teacher assigns.
    let cases: [(&[&str], &str); 2] = [
        (&["--labels", "hard", "--label-grad"], "--label-grad"),
        (
            &["--labels", "learned", "--final-labels", "mean"],
            "--final-labels mean",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--experts", e, "--ipc", "1", "--syn-steps", "2", "--out", r];
        args.extend_from_slice(extra);
        call(with(&args), &[needle, "target"]);
    }
    // Train one tiny expert, then ask for a mismatched model and an impossible IPC.
    let (code, _, err) = tesla(&[
        "experts",
        "--dataset",
        "fmnist-small",
        "--model",
        "convnet-d3-w4",
        "--experts",
        "1",
        "--epochs",
        "1",
        "--limit",
        "100",
        "--out",
        e,
    ]);
    assert_eq!(code, 0, "{err}");
    call(
        with(&[
            "--experts",
            e,
            "--ipc",
            "1000",
            "--syn-steps",
            "2",
            "--out",
            r,
        ]),
        &["1000"],
    );
    let mut v = with(&["--experts", e, "--ipc", "1", "--syn-steps", "2", "--out", r]);
    let pos = v.iter().position(|s| s == "convnet-d3-w4").unwrap();
    v[pos] = "convnet-d3-w8".into();
    call(v, &["convnet-d3-w4", "convnet-d3-w8"]);
    // Unwritable output directory (a path below a regular file).
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("run");
    call(
        with(&[
            "--experts",
            e,
            "--ipc",
            "1",
            "--syn-steps",
            "2",
            "--out",
            bad.to_str().unwrap(),
        ]),
        &["file"],
    );
    assert!(!bad.exists());
    // A corrupt expert file.
    std::fs::write(
        experts.join("expert_0001.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}",
    )
    .unwrap();
    call(
        with(&["--experts", e, "--ipc", "1", "--syn-steps", "2", "--out", r]),
        &["expert_0001"],
    );
}
