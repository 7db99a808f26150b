//! Runtime backends on small hand-built ONNX models: tract and ONNX Runtime against hand
//! computations and each other, binding errors, bad files, the CUDA error, and `tesla run`'s
//! library entry point.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tesla_distill::onnx::pb;
use tesla_distill::runtime::{
    backend, ort_library_path, read_safetensors, run_graph_file, write_safetensors, Backend,
    BackendKind, IoSpec, Session,
};

// ---------------------------------------------------------------- model building

fn vi(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    tesla_distill::onnx::export::value_info(name, tesla_distill::compiler::ir::DType::F32, shape)
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.to_string()),
        name: Some(format!("{op}_{}", outputs[0])),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("tesla-distill tests".into()),
        graph: Some(pb::GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write_model(dir: &Path, name: &str, m: &pb::ModelProto) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, m.encode_to_vec()).expect("write test model");
    path
}

/// y = relu(x @ w + b): x [2,3], w [3,4], b [4].
fn mlp_model() -> pb::ModelProto {
    model(
        vec![
            node("MatMul", &["x", "w"], &["xw"], vec![]),
            node("Add", &["xw", "b"], &["z"], vec![]),
            node("Relu", &["z"], &["y"], vec![]),
        ],
        vec![vi("x", &[2, 3]), vi("w", &[3, 4]), vi("b", &[4])],
        vec![vi("y", &[2, 4])],
    )
}

/// y = conv(x, w, b), pads 1, stride 1: x [1,2,5,5], w [3,2,3,3], b [3].
fn conv_model(n: usize, c: usize, hw: usize, k: usize) -> pb::ModelProto {
    model(
        vec![node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[1, 1]),
                attr_ints("kernel_shape", &[3, 3]),
            ],
        )],
        vec![
            vi("x", &[n, c, hw, hw]),
            vi("w", &[k, c, 3, 3]),
            vi("b", &[k]),
        ],
        vec![vi("y", &[n, k, hw, hw])],
    )
}

/// Three outputs, one a scalar: sum = a + b, prod = a * b, dot = sum(a * b).
fn multi_output_model() -> pb::ModelProto {
    model(
        vec![
            node("Add", &["a", "b"], &["sum"], vec![]),
            node("Mul", &["a", "b"], &["prod"], vec![]),
            node(
                "ReduceSum",
                &["prod"],
                &["dot"],
                vec![attr_int("keepdims", 0)],
            ),
        ],
        vec![vi("a", &[3]), vi("b", &[3])],
        vec![vi("sum", &[3]), vi("prod", &[3]), vi("dot", &[])],
    )
}

// ---------------------------------------------------------------- helpers

fn rand_array(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape")
}

/// Normwise relative error: max |a - b| / max |b|.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let num = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(1e-30, f64::max);
    num / den
}

fn rel_err32(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    rel_err(a, &b.mapv(|v| v as f64))
}

/// The backends to test: tract always; ONNX Runtime when its library can be found (else say why).
fn backends() -> Vec<Box<dyn Backend>> {
    let mut out = vec![backend(BackendKind::Tract).expect("tract backend")];
    match ort_library_path() {
        Ok(_) => out.push(backend(BackendKind::Ort).expect("ort backend (library was found)")),
        Err(e) => common::missing(&format!("ONNX Runtime: {e:#}")),
    }
    out
}

fn mlp_reference(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &ArrayD<f32>) -> ArrayD<f64> {
    let mut y = ArrayD::<f64>::zeros(IxDyn(&[2, 4]));
    for i in 0..2 {
        for j in 0..4 {
            let mut acc = b[[j]] as f64;
            for k in 0..3 {
                acc += x[[i, k]] as f64 * w[[k, j]] as f64;
            }
            y[[i, j]] = acc.max(0.0);
        }
    }
    y
}

fn conv_reference(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &ArrayD<f32>) -> ArrayD<f64> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let k = w.shape()[0];
    let mut y = ArrayD::<f64>::zeros(IxDyn(&[n, k, h, wd]));
    for ni in 0..n {
        for ki in 0..k {
            for i in 0..h {
                for j in 0..wd {
                    let mut acc = b[[ki]] as f64;
                    for ci in 0..c {
                        for di in 0..3 {
                            for dj in 0..3 {
                                let (ii, jj) =
                                    (i as isize + di as isize - 1, j as isize + dj as isize - 1);
                                if ii >= 0 && jj >= 0 && (ii as usize) < h && (jj as usize) < wd {
                                    acc += x[[ni, ci, ii as usize, jj as usize]] as f64
                                        * w[[ki, ci, di, dj]] as f64;
                                }
                            }
                        }
                    }
                    y[[ni, ki, i, j]] = acc;
                }
            }
        }
    }
    y
}

fn bind_all(s: &mut dyn Session, values: &[(&str, &ArrayD<f32>)]) {
    for (n, v) in values {
        s.bind(n, v.view()).expect("bind");
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn backend_kind_parses_and_displays() {
    for k in BackendKind::ALL {
        assert_eq!(k.to_string().parse::<BackendKind>().expect("round trip"), k);
    }
    assert_eq!(
        "ort-cuda".parse::<BackendKind>().expect("parse"),
        BackendKind::OrtCuda
    );
    let e = "cuda".parse::<BackendKind>().expect_err("unknown name");
    assert!(e.to_string().contains("tract, ort, ort-cuda"), "{e}");
}

#[test]
fn mlp_matches_hand_computation_and_rebinding_keeps_theta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_model(dir.path(), "mlp.onnx", &mlp_model());
    let (x, w, b) = (
        rand_array(&[2, 3], 1),
        rand_array(&[3, 4], 2),
        rand_array(&[4], 3),
    );
    let x2 = rand_array(&[2, 3], 4);
    let mut results = Vec::new();
    for be in backends() {
        let mut s = be.load(&path).expect("load");
        assert_eq!(
            s.inputs(),
            &[
                IoSpec {
                    name: "x".into(),
                    shape: vec![2, 3]
                },
                IoSpec {
                    name: "w".into(),
                    shape: vec![3, 4]
                },
                IoSpec {
                    name: "b".into(),
                    shape: vec![4]
                },
            ]
        );
        assert_eq!(
            s.outputs(),
            &[IoSpec {
                name: "y".into(),
                shape: vec![2, 4]
            }]
        );
        bind_all(s.as_mut(), &[("x", &x), ("w", &w), ("b", &b)]);
        let y = s.run().expect("run");
        assert_eq!(y.len(), 1);
        let e = rel_err(&y[0], &mlp_reference(&x, &w, &b));
        assert!(e <= 1e-5, "{}: rel err {e}", be.name());
        // Rebinding only x must reuse the resident w and b.
        s.bind("x", x2.view()).expect("rebind");
        let y2 = s.run().expect("second run");
        let e2 = rel_err(&y2[0], &mlp_reference(&x2, &w, &b));
        assert!(e2 <= 1e-5, "{}: rel err after rebind {e2}", be.name());
        // A new θ of the same shape, given in a non-standard memory layout, replaces the old one.
        let w2t = rand_array(&[4, 3], 5);
        let w2 = w2t.t().to_owned();
        s.bind("w", w2t.t()).expect("rebind w transposed");
        let y3 = s.run().expect("third run");
        let e3 = rel_err(&y3[0], &mlp_reference(&x2, &w2, &b));
        assert!(e3 <= 1e-5, "{}: rel err after rebinding w {e3}", be.name());
        let moved = rel_err32(&y3[0], &y2[0]);
        assert!(moved > 1e-2, "{}: output did not change with w", be.name());
        s.bind("w", w.view()).expect("rebind w back");
        let y2 = s.run().expect("fourth run");
        results.push(y2);
    }
    if let [a, b] = results.as_slice() {
        let e = rel_err32(&a[0], &b[0]);
        assert!(e <= 1e-5, "tract vs ort: {e}");
    }
}

#[test]
fn conv_matches_hand_computation_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_model(dir.path(), "conv.onnx", &conv_model(1, 2, 5, 3));
    let (x, w, b) = (
        rand_array(&[1, 2, 5, 5], 11),
        rand_array(&[3, 2, 3, 3], 12),
        rand_array(&[3], 13),
    );
    let reference = conv_reference(&x, &w, &b);
    let mut results = Vec::new();
    for be in backends() {
        let mut s = be.load(&path).expect("load");
        bind_all(s.as_mut(), &[("x", &x), ("w", &w), ("b", &b)]);
        let y = s.run().expect("run");
        let e = rel_err(&y[0], &reference);
        assert!(e <= 1e-5, "{}: rel err {e}", be.name());
        results.push(y);
    }
    if let [a, b] = results.as_slice() {
        let e = rel_err32(&a[0], &b[0]);
        assert!(e <= 1e-5, "tract vs ort: {e}");
    }
}

#[test]
fn multiple_outputs_come_back_in_declared_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_model(dir.path(), "multi.onnx", &multi_output_model());
    let a = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 2.0, -3.0]).expect("a");
    let b = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.5f32, -4.0, 2.0]).expect("b");
    for be in backends() {
        let mut s = be.load(&path).expect("load");
        let names: Vec<&str> = s.outputs().iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["sum", "prod", "dot"]);
        assert_eq!(s.outputs()[2].shape, Vec::<usize>::new());
        bind_all(s.as_mut(), &[("a", &a), ("b", &b)]);
        let out = s.run().expect("run");
        assert_eq!(out.len(), 3, "{}", be.name());
        assert_eq!(out[0].as_slice().expect("contiguous"), &[1.5, -2.0, -1.0]);
        assert_eq!(out[1].as_slice().expect("contiguous"), &[0.5, -8.0, -6.0]);
        assert_eq!(out[2].shape(), &[] as &[usize], "{}", be.name());
        assert_eq!(out[2].iter().next().copied(), Some(-13.5));
    }
}

#[test]
fn binding_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_model(dir.path(), "mlp.onnx", &mlp_model());
    for be in backends() {
        let mut s = be.load(&path).expect("load");
        let e = format!(
            "{:#}",
            s.bind("theta", rand_array(&[2, 3], 1).view())
                .expect_err("bad name")
        );
        assert!(
            e.contains("'theta'") && e.contains("x, w, b"),
            "{}: {e}",
            be.name()
        );

        let e = format!(
            "{:#}",
            s.bind("w", rand_array(&[4, 3], 1).view())
                .expect_err("bad shape")
        );
        assert!(
            e.contains("'w'") && e.contains("[3, 4]") && e.contains("[4, 3]"),
            "{}: {e}",
            be.name()
        );

        let e = format!(
            "{:#}",
            s.bind("b", rand_array(&[1, 4], 1).view())
                .expect_err("bad rank")
        );
        assert!(
            e.contains("rank 1") && e.contains("rank 2"),
            "{}: {e}",
            be.name()
        );

        s.bind("x", rand_array(&[2, 3], 1).view()).expect("bind x");
        let e = format!("{:#}", s.run().expect_err("unbound"));
        assert!(
            e.contains("'w'") && e.contains("'b'") && !e.contains("'x'"),
            "{}: {e}",
            be.name()
        );

        // A transposed (non-contiguous) view binds like its standard-layout copy.
        let wt = rand_array(&[4, 3], 5);
        s.bind("w", wt.t().into_dyn())
            .expect("bind transposed view");
        s.bind("b", rand_array(&[4], 6).view()).expect("bind b");
        let y = s.run().expect("run");
        let x = rand_array(&[2, 3], 1);
        let e = rel_err(
            &y[0],
            &mlp_reference(&x, &wt.t().to_owned().into_dyn(), &rand_array(&[4], 6)),
        );
        assert!(e <= 1e-5, "{}: {e}", be.name());
    }
}

#[test]
fn bad_files_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = mlp_model().encode_to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.onnx", vec![]),
        (
            "garbage.onnx",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("truncated.onnx", good[..good.len() / 2].to_vec()),
        ("text.onnx", b"this is not a model\n".to_vec()),
        // Well-formed protobuf that the engines themselves must reject.
        ("unknown_op.onnx", {
            let mut m = mlp_model();
            if let Some(g) = m.graph.as_mut() {
                g.node[2].op_type = Some("NoSuchOp".into());
            }
            m.encode_to_vec()
        }),
        ("dangling.onnx", {
            let mut m = mlp_model();
            if let Some(g) = m.graph.as_mut() {
                g.node[1].input[0] = "nowhere".into();
            }
            m.encode_to_vec()
        }),
    ];
    for be in backends() {
        for (name, bytes) in &cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let e = match be.load(&path) {
                Ok(_) => panic!("{}: {name} loaded", be.name()),
                Err(e) => format!("{e:#}"),
            };
            assert!(e.contains(name), "{}: {e}", be.name());
            assert!(!e.contains('\n'), "{}: multi-line error: {e}", be.name());
        }
        let e = format!(
            "{:#}",
            be.load(&dir.path().join("missing.onnx"))
                .err()
                .expect("missing file")
        );
        assert!(e.contains("missing.onnx"), "{e}");
    }
}

#[test]
fn symbolic_and_non_f32_io_are_rejected_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = mlp_model();
    if let Some(g) = m.graph.as_mut() {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(s) = t.shape.as_mut() {
                s.dim[0].value = Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                    "N".into(),
                ));
            }
        }
    }
    let path = write_model(dir.path(), "symbolic.onnx", &m);
    for be in backends() {
        let e = format!("{:#}", be.load(&path).err().expect("symbolic"));
        assert!(e.contains("'x'") && e.contains("symbolic"), "{e}");
    }
}

#[test]
fn ort_cuda_is_a_clear_error_without_a_gpu() {
    if let Err(e) = ort_library_path() {
        common::missing(&format!("ONNX Runtime for the ort-cuda check: {e:#}"));
        return;
    }
    match backend(BackendKind::OrtCuda) {
        // A machine with a working CUDA EP: then it must actually run.
        Ok(be) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = write_model(dir.path(), "mlp.onnx", &mlp_model());
            let (x, w, b) = (
                rand_array(&[2, 3], 1),
                rand_array(&[3, 4], 2),
                rand_array(&[4], 3),
            );
            let mut s = be.load(&path).expect("load on CUDA");
            bind_all(s.as_mut(), &[("x", &x), ("w", &w), ("b", &b)]);
            let y = s.run().expect("run on CUDA");
            assert!(rel_err(&y[0], &mlp_reference(&x, &w, &b)) <= 1e-5);
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.starts_with("CUDA execution provider not available: "),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
            eprintln!("ort-cuda says: {e}");
        }
    }
}

#[test]
fn run_graph_file_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = write_model(dir.path(), "conv.onnx", &conv_model(1, 2, 5, 3));
    let (x, w, b) = (
        rand_array(&[1, 2, 5, 5], 21),
        rand_array(&[3, 2, 3, 3], 22),
        rand_array(&[3], 23),
    );
    let inputs = dir.path().join("in.safetensors");
    let extra = rand_array(&[2], 24);
    write_safetensors(
        &inputs,
        &[
            ("w".into(), w.clone()),
            ("x".into(), x.clone()),
            ("unused".into(), extra),
            ("b".into(), b.clone()),
        ],
        None,
    )
    .expect("write inputs");
    let back = read_safetensors(&inputs).expect("read inputs back");
    assert_eq!(back.len(), 4);
    assert_eq!(
        back.iter().find(|(n, _)| n == "x").map(|(_, a)| a),
        Some(&x)
    );

    let reference = conv_reference(&x, &w, &b);
    let mut kinds = vec![BackendKind::Tract];
    match ort_library_path() {
        Ok(_) => kinds.push(BackendKind::Ort),
        Err(e) => common::missing(&format!("ONNX Runtime: {e:#}")),
    }
    for kind in kinds {
        let out = dir.path().join(format!("out-{kind}.safetensors"));
        run_graph_file(&graph, &inputs, &out, kind).expect("run_graph_file");
        let got = read_safetensors(&out).expect("read outputs");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "y");
        assert!(rel_err(&got[0].1, &reference) <= 1e-5, "{kind}");
        // No temporary file is left next to the output.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    // A missing graph input is named.
    let partial = dir.path().join("partial.safetensors");
    write_safetensors(
        &partial,
        &[("x".into(), x.clone()), ("w".into(), w.clone())],
        None,
    )
    .expect("write");
    let e = format!(
        "{:#}",
        run_graph_file(
            &graph,
            &partial,
            &dir.path().join("o.safetensors"),
            BackendKind::Tract
        )
        .expect_err("missing b")
    );
    assert!(
        e.contains("'b'") && e.contains("partial.safetensors"),
        "{e}"
    );

    // A graph input of another dtype is named; other tensors of any dtype are ignored.
    let mixed = dir.path().join("mixed.safetensors");
    let f64_bytes: Vec<u8> = [1.0f64; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64_bytes: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let w_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = |dt, shape: &[usize], data| {
        safetensors::tensor::TensorView::new(dt, shape.to_vec(), data).expect("view")
    };
    safetensors::serialize_to_file(
        [
            ("x", view(safetensors::Dtype::F32, x.shape(), &x_bytes[..])),
            ("w", view(safetensors::Dtype::F32, w.shape(), &w_bytes[..])),
            ("b", view(safetensors::Dtype::F64, &[3], &f64_bytes[..])),
            ("step", view(safetensors::Dtype::I64, &[], &i64_bytes[..])),
        ],
        None,
        &mixed,
    )
    .expect("write mixed");
    let e = format!(
        "{:#}",
        run_graph_file(
            &graph,
            &mixed,
            &dir.path().join("o.safetensors"),
            BackendKind::Tract
        )
        .expect_err("f64 b")
    );
    assert!(e.contains("'b'") && e.contains("F64"), "{e}");

    // A wrong shape is named, with both shapes.
    let wrong = dir.path().join("wrong.safetensors");
    write_safetensors(
        &wrong,
        &[
            ("x".into(), x),
            ("w".into(), w),
            ("b".into(), rand_array(&[4], 1)),
        ],
        None,
    )
    .expect("write");
    let e = format!(
        "{:#}",
        run_graph_file(
            &graph,
            &wrong,
            &dir.path().join("o.safetensors"),
            BackendKind::Tract
        )
        .expect_err("bad shape")
    );
    assert!(
        e.contains("'b'") && e.contains("[3]") && e.contains("[4]"),
        "{e}"
    );
}

#[test]
fn non_f32_safetensors_are_rejected_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f64.safetensors");
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data)
        .expect("view");
    safetensors::serialize_to_file([("theta", view)], None, &path).expect("write f64");
    let e = format!("{:#}", read_safetensors(&path).expect_err("f64"));
    assert!(e.contains("'theta'") && e.contains("F64"), "{e}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"nope").expect("write");
    let e = format!("{:#}", read_safetensors(&garbage).expect_err("garbage"));
    assert!(e.contains("garbage.safetensors"), "{e}");

    let mut meta = HashMap::new();
    meta.insert("k".to_string(), "v".to_string());
    let ok = dir.path().join("ok.safetensors");
    write_safetensors(
        &ok,
        &[("s".into(), ArrayD::from_elem(IxDyn(&[]), 2.5f32))],
        Some(meta),
    )
    .expect("write");
    let (t, m) = tesla_distill::tensor_file::read_safetensors_with_metadata(&ok).expect("read");
    assert_eq!(t[0].1.shape(), &[] as &[usize]);
    assert_eq!(m.get("k").map(String::as_str), Some("v"));
}

#[test]
fn initializers_listed_as_inputs_are_not_inputs() {
    // Older exporters (PyTorch's keep_initializers_as_inputs) list every weight in graph.input too.
    let dir = tempfile::tempdir().expect("tempdir");
    let b = rand_array(&[4], 3);
    let mut m = mlp_model();
    if let Some(g) = m.graph.as_mut() {
        g.initializer.push(pb::TensorProto {
            name: Some("b".into()),
            dims: vec![4],
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            float_data: b.iter().copied().collect(),
            ..Default::default()
        });
    }
    m.ir_version = Some(3);
    let path = write_model(dir.path(), "init.onnx", &m);
    let (x, w) = (rand_array(&[2, 3], 1), rand_array(&[3, 4], 2));
    for be in backends() {
        let mut s = be.load(&path).expect("load");
        let names: Vec<&str> = s.inputs().iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["x", "w"], "{}", be.name());
        bind_all(s.as_mut(), &[("x", &x), ("w", &w)]);
        let y = s.run().expect("run");
        assert!(
            rel_err(&y[0], &mlp_reference(&x, &w, &b)) <= 1e-5,
            "{}",
            be.name()
        );
    }
}
