//! tract and ONNX Runtime agree (≤ 1e-5 relative) on every op family the compiler emits, each in
//! a one- or two-node graph, plus a small ConvNet-shaped forward. Guards against one backend
//! lacking an op or reading an attribute differently. Skipped (with a message) without ORT.

mod common;

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tesla_distill::onnx::pb;
use tesla_distill::runtime::{backend, ort_library_path, BackendKind};

fn vi(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    tesla_distill::onnx::export::value_info(name, tesla_distill::compiler::ir::DType::F32, shape)
}

enum A {
    I(i64),
    F(f32),
    Is(&'static [i64]),
}

fn attr(name: &str, a: &A) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match a {
        A::I(i) => {
            p.r#type = Some(T::Int as i32);
            p.i = Some(*i);
        }
        A::F(f) => {
            p.r#type = Some(T::Float as i32);
            p.f = Some(*f);
        }
        A::Is(v) => {
            p.r#type = Some(T::Ints as i32);
            p.ints = v.to_vec();
        }
    }
    p
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, A)]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.to_string()),
        name: Some(format!("{op}_{}", outputs[0])),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs.iter().map(|(n, a)| attr(n, a)).collect(),
        ..Default::default()
    }
}

fn int_init(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: vec![values.len() as i64],
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// Inputs: (name, shape, positive?) — positive inputs feed Log, Sqrt, Div denominators.
struct Case {
    name: &'static str,
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<(&'static str, Vec<usize>, bool)>,
    inits: Vec<pb::TensorProto>,
    outputs: Vec<(&'static str, Vec<usize>)>,
}

fn case(
    name: &'static str,
    nodes: Vec<pb::NodeProto>,
    inputs: &[(&'static str, &[usize], bool)],
    outputs: &[(&'static str, &[usize])],
) -> Case {
    Case {
        name,
        nodes,
        inputs: inputs
            .iter()
            .map(|(n, s, p)| (*n, s.to_vec(), *p))
            .collect(),
        inits: vec![],
        outputs: outputs.iter().map(|(n, s)| (*n, s.to_vec())).collect(),
    }
}

fn to_model(c: &Case) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some(c.name.into()),
            node: c.nodes.clone(),
            initializer: c.inits.clone(),
            input: c.inputs.iter().map(|(n, s, _)| vi(n, s)).collect(),
            output: c.outputs.iter().map(|(n, s)| vi(n, s)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rand_array(shape: &[usize], seed: u64, positive: bool) -> ArrayD<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            if positive {
                0.5 + u
            } else {
                2.0 * u - 1.0
            }
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape")
}

fn cases() -> Vec<Case> {
    let x4: &[usize] = &[2, 4, 6, 6];
    let mut v = vec![
        case(
            "conv_stride_dilation_group",
            vec![node(
                "Conv",
                &["x", "w", "b"],
                &["y"],
                &[
                    ("strides", A::Is(&[2, 2])),
                    ("dilations", A::Is(&[2, 1])),
                    ("pads", A::Is(&[1, 2, 1, 0])),
                    ("group", A::I(2)),
                ],
            )],
            &[
                ("x", x4, false),
                ("w", &[6, 2, 3, 3], false),
                ("b", &[6], false),
            ],
            // H: (6 + 2 - 2*2 - 1)/2 + 1 = 2; W: (6 + 2 - 3)/2 + 1 = 3.
            &[("y", &[2, 6, 2, 3])],
        ),
        case(
            "conv_transpose",
            vec![node(
                "ConvTranspose",
                &["x", "w"],
                &["y"],
                &[
                    ("strides", A::Is(&[2, 2])),
                    ("pads", A::Is(&[1, 1, 1, 1])),
                    ("output_padding", A::Is(&[1, 1])),
                ],
            )],
            &[("x", x4, false), ("w", &[4, 3, 3, 3], false)],
            // (6-1)*2 - 2 + 3 + 1 = 12.
            &[("y", &[2, 3, 12, 12])],
        ),
        case(
            "instance_norm",
            vec![node(
                "InstanceNormalization",
                &["x", "s", "b"],
                &["y"],
                &[("epsilon", A::F(1e-5))],
            )],
            &[("x", x4, false), ("s", &[4], false), ("b", &[4], false)],
            &[("y", x4)],
        ),
        // 1-D planes of values around 1 (the plane mean well away from 0), as an imported batch
        // norm's [1, C, N·S] view gives tract's form of the norm.
        case(
            "instance_norm_1d",
            vec![node(
                "InstanceNormalization",
                &["x", "s", "b"],
                &["y"],
                &[("epsilon", A::F(1e-3))],
            )],
            &[
                ("x", &[1, 4, 50], true),
                ("s", &[4], false),
                ("b", &[4], false),
            ],
            &[("y", &[1, 4, 50])],
        ),
        case(
            "layer_norm",
            vec![node(
                "LayerNormalization",
                &["x", "s", "b"],
                &["y"],
                &[("axis", A::I(1)), ("epsilon", A::F(1e-5))],
            )],
            &[
                ("x", x4, false),
                ("s", &[4, 6, 6], false),
                ("b", &[4, 6, 6], false),
            ],
            &[("y", x4)],
        ),
        case(
            "average_pool",
            vec![node(
                "AveragePool",
                &["x"],
                &["y"],
                &[
                    ("kernel_shape", A::Is(&[2, 2])),
                    ("strides", A::Is(&[2, 2])),
                ],
            )],
            &[("x", x4, false)],
            &[("y", &[2, 4, 3, 3])],
        ),
        case(
            "max_pool",
            vec![node(
                "MaxPool",
                &["x"],
                &["y"],
                &[
                    ("kernel_shape", A::Is(&[2, 2])),
                    ("strides", A::Is(&[2, 2])),
                ],
            )],
            &[("x", x4, false)],
            &[("y", &[2, 4, 3, 3])],
        ),
        case(
            "gemm_transb",
            vec![node(
                "Gemm",
                &["a", "b", "c"],
                &["y"],
                &[
                    ("transB", A::I(1)),
                    ("alpha", A::F(0.5)),
                    ("beta", A::F(2.0)),
                ],
            )],
            &[
                ("a", &[3, 5], false),
                ("b", &[4, 5], false),
                ("c", &[4], false),
            ],
            &[("y", &[3, 4])],
        ),
        case(
            "gemm_transa",
            vec![node("Gemm", &["a", "b"], &["y"], &[("transA", A::I(1))])],
            &[("a", &[5, 3], false), ("b", &[5, 4], false)],
            &[("y", &[3, 4])],
        ),
        case(
            "batched_matmul_broadcast",
            vec![node("MatMul", &["a", "b"], &["y"], &[])],
            &[("a", &[2, 3, 5], false), ("b", &[5, 4], false)],
            &[("y", &[2, 3, 4])],
        ),
        case(
            "softmax_logsoftmax",
            vec![
                node("Softmax", &["x"], &["p"], &[("axis", A::I(1))]),
                node("LogSoftmax", &["x"], &["l"], &[("axis", A::I(1))]),
            ],
            &[("x", &[3, 10], false)],
            &[("p", &[3, 10]), ("l", &[3, 10])],
        ),
        case(
            "unary",
            vec![
                node("Sigmoid", &["x"], &["sig"], &[]),
                node("Tanh", &["x"], &["tanh"], &[]),
                node("Exp", &["x"], &["exp"], &[]),
                node("Log", &["p"], &["log"], &[]),
                node("Sqrt", &["p"], &["sqrt"], &[]),
                node("Neg", &["x"], &["neg"], &[]),
                node("Relu", &["x"], &["relu"], &[]),
                node("LeakyRelu", &["x"], &["leaky"], &[("alpha", A::F(0.2))]),
            ],
            &[("x", &[4, 7], false), ("p", &[4, 7], true)],
            &[
                ("sig", &[4, 7]),
                ("tanh", &[4, 7]),
                ("exp", &[4, 7]),
                ("log", &[4, 7]),
                ("sqrt", &[4, 7]),
                ("neg", &[4, 7]),
                ("relu", &[4, 7]),
                ("leaky", &[4, 7]),
            ],
        ),
        case(
            "binary_broadcast",
            vec![
                node("Add", &["a", "b"], &["add"], &[]),
                node("Sub", &["a", "b"], &["sub"], &[]),
                node("Mul", &["a", "b"], &["mul"], &[]),
                node("Div", &["a", "p"], &["div"], &[]),
            ],
            &[
                ("a", &[2, 3, 4], false),
                ("b", &[3, 1], false),
                ("p", &[4], true),
            ],
            &[
                ("add", &[2, 3, 4]),
                ("sub", &[2, 3, 4]),
                ("mul", &[2, 3, 4]),
                ("div", &[2, 3, 4]),
            ],
        ),
        case(
            "where_from_mask",
            vec![
                node("Greater", &["x", "z"], &["m"], &[]),
                node("Where", &["m", "x", "y"], &["w"], &[]),
            ],
            &[
                ("x", &[3, 4], false),
                ("z", &[1], false),
                ("y", &[3, 4], false),
            ],
            &[("w", &[3, 4])],
        ),
        case(
            "transpose_flatten_concat",
            vec![
                node(
                    "Transpose",
                    &["x"],
                    &["t"],
                    &[("perm", A::Is(&[0, 2, 3, 1]))],
                ),
                node("Flatten", &["x"], &["f"], &[("axis", A::I(1))]),
                node("Concat", &["x", "x"], &["c"], &[("axis", A::I(1))]),
            ],
            &[("x", x4, false)],
            &[("t", &[2, 6, 6, 4]), ("f", &[2, 144]), ("c", &[2, 8, 6, 6])],
        ),
        case(
            "reduce_mean_attr",
            vec![node(
                "ReduceMean",
                &["x"],
                &["y"],
                &[("axes", A::Is(&[2, 3])), ("keepdims", A::I(1))],
            )],
            &[("x", x4, false)],
            &[("y", &[2, 4, 1, 1])],
        ),
    ];
    // Ops whose extra operands are int64 initializers.
    let mut with_inits = vec![
        (
            case(
                "reshape",
                vec![node("Reshape", &["x", "shape"], &["y"], &[])],
                &[("x", x4, false)],
                &[("y", &[8, 36])],
            ),
            vec![int_init("shape", &[8, -1])],
        ),
        (
            case(
                "reduce_sum_axes_input",
                vec![node(
                    "ReduceSum",
                    &["x", "axes"],
                    &["y"],
                    &[("keepdims", A::I(0))],
                )],
                &[("x", x4, false)],
                &[("y", &[4])],
            ),
            vec![int_init("axes", &[0, 2, 3])],
        ),
        (
            case(
                "slice",
                vec![node(
                    "Slice",
                    &["x", "starts", "ends", "axes", "steps"],
                    &["y"],
                    &[],
                )],
                &[("x", x4, false)],
                &[("y", &[2, 2, 2, 6])],
            ),
            vec![
                int_init("starts", &[1, 1]),
                int_init("ends", &[3, 6]),
                int_init("axes", &[1, 2]),
                int_init("steps", &[1, 3]),
            ],
        ),
        (
            case(
                "gather_const_indices",
                vec![node("Gather", &["x", "idx"], &["y"], &[("axis", A::I(1))])],
                &[("x", x4, false)],
                &[("y", &[2, 3, 6, 6])],
            ),
            vec![int_init("idx", &[3, 0, 3])],
        ),
    ];
    for (mut c, inits) in with_inits.drain(..) {
        c.inits = inits;
        v.push(c);
    }
    v
}

/// Conv → InstanceNorm → ReLU → AvgPool, twice, then Flatten → Gemm: ConvNet-D2 with its
/// parameters as graph inputs, the shape of a compiled `logits` artifact.
fn convnet_forward() -> Case {
    let mut nodes = Vec::new();
    let mut inputs: Vec<(&'static str, &[usize], bool)> = vec![("x", &[4, 3, 8, 8], false)];
    // Per layer: input, weight, bias, norm scale, norm shift, conv out, norm out, pool out.
    let layers = [
        ["x", "w0", "b0", "s0", "t0", "c0", "n0", "p0"],
        ["p0", "w1", "b1", "s1", "t1", "c1", "n1", "p1"],
    ];
    for (i, [inp, w, b, s, t, c, n, p]) in layers.iter().enumerate() {
        nodes.push(node(
            "Conv",
            &[inp, w, b],
            &[c],
            &[("pads", A::Is(&[1, 1, 1, 1]))],
        ));
        nodes.push(node(
            "InstanceNormalization",
            &[c, s, t],
            &[n],
            &[("epsilon", A::F(1e-5))],
        ));
        let r = if i == 0 { "r0" } else { "r1" };
        nodes.push(node("Relu", &[n], &[r], &[]));
        nodes.push(node(
            "AveragePool",
            &[r],
            &[p],
            &[
                ("kernel_shape", A::Is(&[2, 2])),
                ("strides", A::Is(&[2, 2])),
            ],
        ));
    }
    inputs.extend_from_slice(&[
        ("w0", &[8, 3, 3, 3], false),
        ("b0", &[8], false),
        ("s0", &[8], false),
        ("t0", &[8], false),
        ("w1", &[8, 8, 3, 3], false),
        ("b1", &[8], false),
        ("s1", &[8], false),
        ("t1", &[8], false),
        ("fw", &[10, 32], false),
        ("fb", &[10], false),
    ]);
    nodes.push(node("Flatten", &["p1"], &["flat"], &[("axis", A::I(1))]));
    nodes.push(node(
        "Gemm",
        &["flat", "fw", "fb"],
        &["logits"],
        &[("transB", A::I(1))],
    ));
    case(
        "convnet_d2_forward",
        nodes,
        &inputs,
        &[("logits", &[4, 10])],
    )
}

fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let num = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(1e-30, f64::max);
    num / den
}

#[test]
fn tract_and_ort_agree_on_every_op_family() {
    if let Err(e) = ort_library_path() {
        common::missing(&format!("ONNX Runtime for the tract/ORT agreement: {e:#}"));
        return;
    }
    let tract = backend(BackendKind::Tract).expect("tract");
    let ort = backend(BackendKind::Ort).expect("ort");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    let mut all = cases();
    all.push(convnet_forward());
    for (ci, c) in all.iter().enumerate() {
        let path = dir.path().join(format!("{}.onnx", c.name));
        std::fs::write(&path, to_model(c).encode_to_vec()).expect("write");
        let values: Vec<ArrayD<f32>> = c
            .inputs
            .iter()
            .enumerate()
            .map(|(i, (_, s, p))| rand_array(s, (ci * 100 + i) as u64, *p))
            .collect();
        let mut results = Vec::new();
        for be in [&tract, &ort] {
            let run = || -> anyhow::Result<Vec<ArrayD<f32>>> {
                let mut s = be.load(&path)?;
                for ((name, _, _), v) in c.inputs.iter().zip(&values) {
                    s.bind(name, v.view())?;
                }
                s.run()
            };
            match run() {
                Ok(r) => results.push(r),
                Err(e) => failures.push(format!("{} on {}: {e:#}", c.name, be.name())),
            }
        }
        if let [t, o] = results.as_slice() {
            for ((name, _), (a, b)) in c.outputs.iter().zip(t.iter().zip(o)) {
                let e = rel_err(a, b);
                eprintln!(
                    "{:>28} {name:>8}: rel err {e:.1e} (max abs {:.2}, {} values)",
                    c.name,
                    b.iter().fold(0f32, |m, v| m.max(v.abs())),
                    b.len()
                );
                if a.shape() != b.shape() || e > 1e-5 {
                    failures.push(format!(
                        "{} output {name}: tract {:?} vs ort {:?}, rel err {e:.2e}",
                        c.name,
                        a.shape(),
                        b.shape()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
