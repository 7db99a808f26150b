//! Latency of small convolutions on each backend. Not a correctness test, so ignored by default:
//! `cargo test --release --test runtime_bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tesla_distill::onnx::pb;
use tesla_distill::runtime::{backend, ort_library_path, BackendKind};

fn vi(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                d as i64,
                            )),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// conv3x3(pad 1) + relu, NCHW.
fn conv_relu(n: usize, c: usize, hw: usize, k: usize) -> pb::ModelProto {
    let ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("conv".into()),
            node: vec![
                pb::NodeProto {
                    op_type: Some("Conv".into()),
                    input: vec!["x".into(), "w".into(), "b".into()],
                    output: vec!["z".into()],
                    attribute: vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])],
                    ..Default::default()
                },
                pb::NodeProto {
                    op_type: Some("Relu".into()),
                    input: vec!["z".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                },
            ],
            input: vec![
                vi("x", &[n, c, hw, hw]),
                vi("w", &[k, c, 3, 3]),
                vi("b", &[k]),
            ],
            output: vec![vi("y", &[n, k, hw, hw])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn filled(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect(),
    )
    .expect("shape")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore]
fn conv_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kinds = vec![BackendKind::Tract];
    if ort_library_path().is_ok() {
        kinds.push(BackendKind::Ort);
    }
    println!(
        "threads available: {:?}",
        std::thread::available_parallelism()
    );
    for &(n, c, hw, k) in &[(1, 3, 32, 16), (16, 3, 32, 64), (16, 64, 16, 64)] {
        let path = dir.path().join(format!("conv_{n}_{c}_{hw}_{k}.onnx"));
        std::fs::write(&path, conv_relu(n, c, hw, k).encode_to_vec()).expect("write");
        let mflop = (2 * n * k * hw * hw * c * 9) as f64 / 1e6;
        let (x, w, b) = (filled(&[n, c, hw, hw]), filled(&[k, c, 3, 3]), filled(&[k]));
        for &kind in &kinds {
            let be = backend(kind).expect("backend");
            let t0 = Instant::now();
            let mut s = be.load(&path).expect("load");
            let load = t0.elapsed();
            s.bind("w", w.view()).expect("bind w");
            s.bind("b", b.view()).expect("bind b");
            let t1 = Instant::now();
            s.bind("x", x.view()).expect("bind x");
            let bind_x = t1.elapsed();
            s.run().expect("warm-up");
            let reps = if mflop < 10.0 { 200 } else { 20 };
            let times: Vec<Duration> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let y = s.run().expect("run");
                    std::hint::black_box(y);
                    t.elapsed()
                })
                .collect();
            let med = median(times);
            println!(
                "{kind:>6} conv x[{n},{c},{hw},{hw}] w[{k},{c},3,3] ({mflop:.1} MFLOP): load {:.1} ms, bind x {:.3} ms, run median {:.3} ms ({:.2} GFLOP/s)",
                load.as_secs_f64() * 1e3,
                bind_x.as_secs_f64() * 1e3,
                med.as_secs_f64() * 1e3,
                mflop / 1e3 / med.as_secs_f64()
            );
        }
    }
}

/// A chain of `len` elementwise ops on [n, 64, 16, 16]: many small parallel regions, the shape of
/// a backward graph's tail, where thread wake-up costs show.
fn elementwise_chain(n: usize, len: usize) -> pb::ModelProto {
    let shape = [n, 64, 16, 16];
    let mut nodes = Vec::new();
    let mut prev = "x".to_string();
    for i in 0..len {
        let out = format!("t{i}");
        let (op, inputs) = match i % 3 {
            0 => ("Mul", vec![prev.clone(), "s".to_string()]),
            1 => ("Add", vec![prev.clone(), "x".to_string()]),
            _ => ("Relu", vec![prev.clone()]),
        };
        nodes.push(pb::NodeProto {
            op_type: Some(op.into()),
            input: inputs,
            output: vec![out.clone()],
            ..Default::default()
        });
        prev = out;
    }
    nodes.push(pb::NodeProto {
        op_type: Some("Identity".into()),
        input: vec![prev],
        output: vec!["y".into()],
        ..Default::default()
    });
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("chain".into()),
            node: nodes,
            input: vec![vi("x", &shape), vi("s", &shape)],
            output: vec![vi("y", &shape)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
#[ignore]
fn elementwise_chain_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kinds = vec![BackendKind::Tract];
    if ort_library_path().is_ok() {
        kinds.push(BackendKind::Ort);
    }
    for &(n, len) in &[(1, 300), (16, 300)] {
        let path = dir.path().join(format!("chain_{n}_{len}.onnx"));
        std::fs::write(&path, elementwise_chain(n, len).encode_to_vec()).expect("write");
        let (x, s_) = (filled(&[n, 64, 16, 16]), filled(&[n, 64, 16, 16]));
        for &kind in &kinds {
            let be = backend(kind).expect("backend");
            let mut s = be.load(&path).expect("load");
            s.bind("x", x.view()).expect("bind");
            s.bind("s", s_.view()).expect("bind");
            s.run().expect("warm-up");
            let times: Vec<Duration> = (0..20)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(s.run().expect("run"));
                    t.elapsed()
                })
                .collect();
            println!(
                "{kind:>6} chain of {len} elementwise ops on [{n},64,16,16]: run median {:.3} ms",
                median(times).as_secs_f64() * 1e3
            );
        }
    }
}
