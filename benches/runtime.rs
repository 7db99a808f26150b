//! `cargo bench --bench runtime`: latency of small convolutions, an elementwise chain and the
//! ConvNet-D3 forward on each backend (ONNX Runtime when its library is found), side by side.

use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tesla_distill::onnx::pb;
use tesla_distill::runtime::{backend, ort_library_path, BackendKind};

fn vi(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    tesla_distill::onnx::export::value_info(name, tesla_distill::compiler::ir::DType::F32, shape)
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

/// ConvNet-D3 forward (width 128, instance norm, ReLU, avg pool) on 3×32×32 with parameters as
/// graph inputs: the shape of a `logits` artifact; the step/pass2 graphs cost ~3-5× this.
fn convnet_d3(n: usize) -> pb::ModelProto {
    let ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    };
    let mk = |op: &str, i: &[&str], o: &str, a: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: Some(op.into()),
        input: i.iter().map(|s| s.to_string()).collect(),
        output: vec![o.into()],
        attribute: a,
        ..Default::default()
    };
    let (w, k) = (128usize, 10usize);
    let mut nodes = Vec::new();
    let mut inputs = vec![vi("x", &[n, 3, 32, 32])];
    let mut prev = "x".to_string();
    let mut c_in = 3;
    let mut hw = 32;
    for l in 0..3 {
        let names: Vec<String> = ["w", "b", "s", "t", "c", "nrm", "r", "p"]
            .iter()
            .map(|p| format!("{p}{l}"))
            .collect();
        inputs.push(vi(&names[0], &[w, c_in, 3, 3]));
        inputs.push(vi(&names[1], &[w]));
        inputs.push(vi(&names[2], &[w]));
        inputs.push(vi(&names[3], &[w]));
        nodes.push(mk(
            "Conv",
            &[&prev, &names[0], &names[1]],
            &names[4],
            vec![ints("pads", &[1, 1, 1, 1])],
        ));
        nodes.push(mk(
            "InstanceNormalization",
            &[&names[4], &names[2], &names[3]],
            &names[5],
            vec![],
        ));
        nodes.push(mk("Relu", &[&names[5]], &names[6], vec![]));
        nodes.push(mk(
            "AveragePool",
            &[&names[6]],
            &names[7],
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ));
        prev = names[7].clone();
        c_in = w;
        hw /= 2;
    }
    let feat = w * hw * hw;
    inputs.push(vi("fw", &[k, feat]));
    inputs.push(vi("fb", &[k]));
    nodes.push(mk(
        "Flatten",
        &[&prev],
        "flat",
        vec![pb::AttributeProto {
            name: Some("axis".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(1),
            ..Default::default()
        }],
    ));
    nodes.push(mk(
        "Gemm",
        &["flat", "fw", "fb"],
        "logits",
        vec![pb::AttributeProto {
            name: Some("transB".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(1),
            ..Default::default()
        }],
    ));
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("convnet_d3".into()),
            node: nodes,
            input: inputs,
            output: vec![vi("logits", &[n, k])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn convnet_d3_forward_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kinds = vec![BackendKind::Tract];
    if ort_library_path().is_ok() {
        kinds.push(BackendKind::Ort);
    }
    for &n in &[1usize, 64] {
        let path = dir.path().join(format!("convnet_d3_{n}.onnx"));
        let m = convnet_d3(n);
        std::fs::write(&path, m.encode_to_vec()).expect("write");
        let specs: Vec<(String, Vec<usize>)> = m
            .graph
            .as_ref()
            .map(|g| {
                g.input
                    .iter()
                    .map(|v| {
                        let shape = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                            Some(pb::type_proto::Value::TensorType(t)) => t
                                .shape
                                .as_ref()
                                .map(|s| {
                                    s.dim
                                        .iter()
                                        .map(|d| match d.value {
                                            Some(
                                                pb::tensor_shape_proto::dimension::Value::DimValue(
                                                    x,
                                                ),
                                            ) => x as usize,
                                            _ => 0,
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                            _ => vec![],
                        };
                        (v.name.clone().unwrap_or_default(), shape)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for &kind in &kinds {
            let be = backend(kind).expect("backend");
            let t0 = Instant::now();
            let mut s = be.load(&path).expect("load");
            let load = t0.elapsed();
            for (name, shape) in &specs {
                s.bind(name, filled(shape).view()).expect("bind");
            }
            s.run().expect("warm-up");
            let times: Vec<Duration> = (0..10)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(s.run().expect("run"));
                    t.elapsed()
                })
                .collect();
            println!(
                "{kind:>6} ConvNet-D3 forward, batch {n}, 3x32x32: load {:.1} ms, run median {:.2} ms",
                load.as_secs_f64() * 1e3,
                median(times).as_secs_f64() * 1e3
            );
        }
    }
}

fn main() {
    conv_latency();
    elementwise_chain_latency();
    convnet_d3_forward_latency();
}
