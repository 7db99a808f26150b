//! Import lowering rules, op by op: each case is a small ONNX model built here; it is imported,
//! exported back from the IR and both files run on ONNX Runtime with the same input and
//! parameter values, so every rule is checked against the reference implementation of the op.
//! Also: the error messages for bad files and unsupported ops, external data.

mod common;

use serde_json::{json, Value};
use std::path::Path;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::compiler::ops::LeakyRelu;
use tesla_distill::onnx::pb;
use tesla_distill::onnx::{export, import};

// ----- a small ONNX model builder -----

fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_is(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    }
}
fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(3),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{op}_{}", outs[0])),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

fn finit(name: &str, shape: &[usize], seed: u64) -> pb::TensorProto {
    let n = shape.iter().product();
    export::tensor_proto(
        name,
        &Tensor::new(
            DType::F32,
            shape.to_vec(),
            common::rand_vec(n, seed, -1.0, 1.0),
        ),
    )
}
fn fconst(name: &str, shape: &[usize], v: Vec<f64>) -> pb::TensorProto {
    export::tensor_proto(name, &Tensor::new(DType::F32, shape.to_vec(), v))
}
fn iinit(name: &str, v: &[i64]) -> pb::TensorProto {
    export::tensor_proto(
        name,
        &Tensor::new(
            DType::I64,
            vec![v.len()],
            v.iter().map(|&x| x as f64).collect(),
        ),
    )
}

/// A model with input `x` (float, shape `xs`), output `y`, the given nodes and initializers.
fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    xs: &[usize],
    opset: i64,
) -> pb::ModelProto {
    let out = pb::ValueInfoProto {
        name: Some("y".into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![export::value_info("x", DType::F32, xs)],
            output: vec![out],
            name: Some("case".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn one(
    op: &str,
    ins: &[&str],
    attrs: Vec<pb::AttributeProto>,
    inits: Vec<pb::TensorProto>,
    xs: &[usize],
) -> pb::ModelProto {
    model(vec![node(op, ins, &["y"], attrs)], inits, xs, 17)
}

struct Case {
    name: &'static str,
    m: pb::ModelProto,
    xs: Vec<usize>,
    /// Inputs strictly positive (for Log, Sqrt, Pow).
    positive: bool,
}

/// A case; the input shape is the one the model declares.
fn case(name: &'static str, m: pb::ModelProto) -> Case {
    use pb::tensor_shape_proto::dimension::Value;
    let xs = match &m.graph.as_ref().unwrap().input[0]
        .r#type
        .as_ref()
        .unwrap()
        .value
    {
        Some(pb::type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) => v as usize,
                _ => panic!("static input shape"),
            })
            .collect(),
        _ => panic!("tensor input"),
    };
    Case {
        name,
        m,
        xs,
        positive: false,
    }
}

fn write_model(m: &pb::ModelProto, path: &Path) {
    use prost::Message;
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

/// Imports every case, exports the IR and compares both on ONNX Runtime.
fn check_cases(cases: Vec<Case>) {
    let dir = tempfile::tempdir().unwrap();
    let mut jobs: Vec<Value> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let orig = dir.path().join(format!("{}_orig.onnx", c.name));
        write_model(&c.m, &orig);
        let fm = import::import_model(
            &c.m,
            Some(dir.path()),
            &c.xs,
            &import::ImportOptions::default(),
            c.name,
        )
        .unwrap_or_else(|e| panic!("case {}: {e:#}", c.name));
        for n in &fm.graph.nodes {
            assert!(!n.op.name().is_empty());
        }
        let low = dir.path().join(format!("{}_ir.onnx", c.name));
        export::write(&fm.graph, &low).unwrap();
        let n: usize = c.xs.iter().product();
        let (lo, hi) = if c.positive { (0.2, 2.0) } else { (-2.0, 2.0) };
        let mut inputs = serde_json::Map::new();
        inputs.insert(
            "x".into(),
            common::feed(
                "float32",
                &c.xs,
                &common::rand_vec(n, 100 + i as u64, lo, hi),
            ),
        );
        for p in &fm.params {
            let t = p.initial.as_ref().expect("initial values");
            inputs.insert(p.name.clone(), common::feed("float32", &t.shape, &t.data));
        }
        jobs.push(json!({
            "case": c.name,
            "model": low,
            "inputs": inputs,
            "reference": {"model": orig, "inputs": inputs},
            "tol": 2e-5,
        }));
    }
    if common::python_ok() {
        common::run_cases(dir.path(), jobs);
    }
}

fn convolutions_cases() -> Vec<Case> {
    let w = |s: &[usize]| finit("w", s, 1);
    let b = |n: usize| finit("b", &[n], 2);
    let mut cases = vec![
        case(
            "conv_basic",
            one(
                "Conv",
                &["x", "w", "b"],
                vec![attr_is("pads", &[1, 1, 1, 1])],
                vec![w(&[4, 3, 3, 3]), b(4)],
                &[2, 3, 8, 8],
            ),
        ),
        case(
            "conv_group_stride_dil_asym",
            one(
                "Conv",
                &["x", "w"],
                vec![
                    attr_i("group", 2),
                    attr_is("strides", &[2, 1]),
                    attr_is("dilations", &[1, 2]),
                    attr_is("pads", &[0, 1, 2, 0]),
                ],
                vec![w(&[6, 2, 3, 3])],
                &[2, 4, 9, 9],
            ),
        ),
        case(
            "conv1d",
            one(
                "Conv",
                &["x", "w", "b"],
                vec![attr_is("strides", &[2])],
                vec![w(&[4, 3, 3]), b(4)],
                &[2, 3, 10],
            ),
        ),
    ];
    for mode in ["SAME_UPPER", "SAME_LOWER", "VALID"] {
        let name: &'static str = Box::leak(format!("conv_{mode}").into_boxed_str());
        cases.push(case(
            name,
            one(
                "Conv",
                &["x", "w"],
                vec![attr_s("auto_pad", mode), attr_is("strides", &[2, 2])],
                vec![w(&[3, 2, 4, 3])],
                &[1, 2, 9, 8],
            ),
        ));
    }
    // ConvTranspose: weight [Cin, Cout/g, k…].
    cases.push(case(
        "convT_stride_pads_outpad",
        one(
            "ConvTranspose",
            &["x", "w", "b"],
            vec![
                attr_is("strides", &[2, 2]),
                attr_is("pads", &[1, 0, 1, 2]),
                attr_is("output_padding", &[1, 1]),
            ],
            vec![w(&[4, 3, 3, 3]), b(3)],
            &[2, 4, 5, 5],
        ),
    ));
    cases.push(case(
        "convT_group_dil",
        one(
            "ConvTranspose",
            &["x", "w"],
            vec![
                attr_i("group", 2),
                attr_is("dilations", &[2, 1]),
                attr_is("strides", &[1, 3]),
            ],
            vec![w(&[4, 2, 3, 2])],
            &[1, 4, 4, 4],
        ),
    ));
    cases.push(case(
        "convT_output_shape",
        one(
            "ConvTranspose",
            &["x", "w"],
            vec![
                attr_is("strides", &[2, 2]),
                attr_is("output_shape", &[10, 11]),
            ],
            vec![w(&[3, 2, 3, 3])],
            &[1, 3, 5, 5],
        ),
    ));
    cases.push(case(
        "convT_same_upper",
        one(
            "ConvTranspose",
            &["x", "w"],
            vec![
                attr_is("strides", &[2, 2]),
                attr_s("auto_pad", "SAME_UPPER"),
            ],
            vec![w(&[3, 2, 3, 3])],
            &[1, 3, 4, 4],
        ),
    ));
    cases.push(case(
        "convT_big_outpad",
        one(
            "ConvTranspose",
            &["x", "w"],
            vec![attr_is("strides", &[3]), attr_is("output_padding", &[2])],
            vec![w(&[2, 2, 2])],
            &[1, 2, 4],
        ),
    ));
    cases
}

fn pooling_cases() -> Vec<Case> {
    let x = [2, 3, 9, 8];
    let ap = |extra: Vec<pb::AttributeProto>| {
        let mut a = vec![
            attr_is("kernel_shape", &[3, 3]),
            attr_is("strides", &[2, 2]),
        ];
        a.extend(extra);
        one("AveragePool", &["x"], a, vec![], &x)
    };
    let mp = |extra: Vec<pb::AttributeProto>| {
        let mut a = vec![attr_is("kernel_shape", &[3, 2])];
        a.extend(extra);
        one("MaxPool", &["x"], a, vec![], &x)
    };
    let cases = vec![
        case(
            "avgpool_plain",
            one(
                "AveragePool",
                &["x"],
                vec![
                    attr_is("kernel_shape", &[2, 2]),
                    attr_is("strides", &[2, 2]),
                ],
                vec![],
                &x,
            ),
        ),
        case(
            "avgpool_pad_exclude",
            ap(vec![attr_is("pads", &[1, 1, 1, 0])]),
        ),
        case(
            "avgpool_pad_include",
            ap(vec![
                attr_is("pads", &[1, 1, 1, 0]),
                attr_i("count_include_pad", 1),
            ]),
        ),
        case("avgpool_ceil", ap(vec![attr_i("ceil_mode", 1)])),
        case(
            "avgpool_ceil_pad_include",
            ap(vec![
                attr_i("ceil_mode", 1),
                attr_is("pads", &[1, 1, 1, 1]),
                attr_i("count_include_pad", 1),
            ]),
        ),
        case(
            "avgpool_same_upper",
            ap(vec![attr_s("auto_pad", "SAME_UPPER")]),
        ),
        case("maxpool_stride1", mp(vec![])),
        case(
            "maxpool_stride_pad",
            mp(vec![
                attr_is("strides", &[2, 3]),
                attr_is("pads", &[1, 0, 1, 1]),
            ]),
        ),
        case(
            "maxpool_ceil",
            mp(vec![attr_is("strides", &[2, 2]), attr_i("ceil_mode", 1)]),
        ),
        case(
            "maxpool_dilation",
            mp(vec![
                attr_is("dilations", &[2, 2]),
                attr_is("strides", &[1, 2]),
            ]),
        ),
        case(
            "maxpool_1d",
            one(
                "MaxPool",
                &["x"],
                vec![attr_is("kernel_shape", &[2]), attr_is("strides", &[2])],
                vec![],
                &[2, 3, 9],
            ),
        ),
        case(
            "global_avg",
            one("GlobalAveragePool", &["x"], vec![], vec![], &x),
        ),
        case(
            "global_max",
            one("GlobalMaxPool", &["x"], vec![], vec![], &x),
        ),
    ];
    cases
}

fn norms_cases() -> Vec<Case> {
    let x = [2, 4, 5, 3];
    let cases = vec![
        case(
            "instance_norm",
            one(
                "InstanceNormalization",
                &["x", "s", "b"],
                vec![attr_f("epsilon", 1e-3)],
                vec![finit("s", &[4], 1), finit("b", &[4], 2)],
                &x,
            ),
        ),
        case(
            "layer_norm_last",
            one(
                "LayerNormalization",
                &["x", "s", "b"],
                vec![],
                vec![finit("s", &[3], 1), finit("b", &[3], 2)],
                &x,
            ),
        ),
        case(
            "layer_norm_axis1",
            one(
                "LayerNormalization",
                &["x", "s"],
                vec![attr_i("axis", 1)],
                vec![finit("s", &[4, 5, 3], 1)],
                &x,
            ),
        ),
        case(
            "group_norm_per_channel",
            model(
                vec![node(
                    "GroupNormalization",
                    &["x", "s", "b"],
                    &["y"],
                    vec![attr_i("num_groups", 2)],
                )],
                vec![finit("s", &[4], 1), finit("b", &[4], 2)],
                &x,
                21,
            ),
        ),
        case(
            "group_norm_per_group",
            model(
                vec![node(
                    "GroupNormalization",
                    &["x", "s", "b"],
                    &["y"],
                    vec![attr_i("num_groups", 2)],
                )],
                vec![finit("s", &[2], 1), finit("b", &[2], 2)],
                &x,
                18,
            ),
        ),
        case(
            "batch_norm_inference",
            one(
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                vec![],
                vec![
                    finit("s", &[4], 1),
                    finit("b", &[4], 2),
                    finit("m", &[4], 3),
                    fconst("v", &[4], vec![0.5, 1.0, 2.0, 3.0]),
                ],
                &x,
            ),
        ),
    ];
    cases
}

fn math_ops_cases() -> Vec<Case> {
    let x = [3, 4];
    let un = |op: &str, attrs| one(op, &["x"], attrs, vec![], &x);
    let mut cases = vec![];
    for op in [
        "Neg",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Exp",
        "Erf",
        "Reciprocal",
        "Abs",
        "Softplus",
        "Elu",
        "HardSigmoid",
        "HardSwish",
    ] {
        cases.push(case(
            Box::leak(op.to_lowercase().into_boxed_str()),
            un(op, vec![]),
        ));
    }
    cases.push(case(
        "leaky_relu",
        un("LeakyRelu", vec![attr_f("alpha", 0.2)]),
    ));
    cases.push(case(
        "clip_attr_free",
        one(
            "Clip",
            &["x", "lo", "hi"],
            vec![],
            vec![fconst("lo", &[], vec![-0.5]), fconst("hi", &[], vec![1.0])],
            &x,
        ),
    ));
    for op in ["Log", "Sqrt"] {
        cases.push(Case {
            positive: true,
            ..case(
                Box::leak(op.to_lowercase().into_boxed_str()),
                un(op, vec![]),
            )
        });
    }
    for (i, e) in [2.0, 3.0, 0.5, -1.0, -0.5, 1.7].into_iter().enumerate() {
        let name: &'static str = Box::leak(format!("pow_{i}").into_boxed_str());
        cases.push(Case {
            positive: true,
            ..case(
                name,
                one(
                    "Pow",
                    &["x", "e"],
                    vec![],
                    vec![fconst("e", &[], vec![e])],
                    &x,
                ),
            )
        });
    }
    for approx in ["none", "tanh"] {
        let name: &'static str = Box::leak(format!("gelu_{approx}").into_boxed_str());
        let m = model(
            vec![node(
                "Gelu",
                &["x"],
                &["y"],
                vec![attr_s("approximate", approx)],
            )],
            vec![],
            &x,
            20,
        );
        cases.push(case(name, m));
    }
    for op in ["Add", "Sub", "Mul", "Div"] {
        let name: &'static str = Box::leak(format!("{}_bcast", op.to_lowercase()).into_boxed_str());
        cases.push(case(
            name,
            one(op, &["x", "w"], vec![], vec![finit("w", &[4], 5)], &x),
        ));
    }
    cases.push(case(
        "gemm_trans_alpha_beta",
        one(
            "Gemm",
            &["x", "w", "c"],
            vec![
                attr_i("transB", 1),
                attr_f("alpha", 0.5),
                attr_f("beta", 2.0),
            ],
            vec![finit("w", &[5, 4], 1), finit("c", &[5], 2)],
            &x,
        ),
    ));
    cases.push(case(
        "gemm_transA",
        one(
            "Gemm",
            &["x", "w"],
            vec![attr_i("transA", 1)],
            vec![finit("w", &[3, 2], 1)],
            &x,
        ),
    ));
    cases.push(case(
        "matmul_vec_right",
        one("MatMul", &["x", "w"], vec![], vec![finit("w", &[4], 1)], &x),
    ));
    cases.push(case(
        "matmul_vec_left",
        one("MatMul", &["w", "x"], vec![], vec![finit("w", &[3], 1)], &x),
    ));
    cases.push(case(
        "matmul_batched",
        one(
            "MatMul",
            &["x", "w"],
            vec![],
            vec![finit("w", &[4, 6], 1)],
            &[2, 3, 4],
        ),
    ));
    cases.push(case("softmax", un("Softmax", vec![attr_i("axis", 0)])));
    cases.push(case("log_softmax", un("LogSoftmax", vec![])));
    cases.push(case(
        "softmax_opset11_coerced",
        model(
            vec![node("Softmax", &["x"], &["y"], vec![attr_i("axis", 1)])],
            vec![],
            &[2, 3, 4],
            11,
        ),
    ));
    let x3 = [2, 3, 4];
    cases.push(case(
        "reduce_sum_input_axes",
        one(
            "ReduceSum",
            &["x", "a"],
            vec![attr_i("keepdims", 0)],
            vec![iinit("a", &[0, -1])],
            &x3,
        ),
    ));
    cases.push(case(
        "reduce_mean_attr",
        one(
            "ReduceMean",
            &["x"],
            vec![attr_is("axes", &[1])],
            vec![],
            &x3,
        ),
    ));
    cases.push(case(
        "reduce_max_all",
        one(
            "ReduceMax",
            &["x"],
            vec![attr_i("keepdims", 0)],
            vec![],
            &x3,
        ),
    ));
    cases.push(case(
        "reduce_min",
        one(
            "ReduceMin",
            &["x"],
            vec![attr_is("axes", &[2])],
            vec![],
            &x3,
        ),
    ));
    // Where + comparisons + Cast.
    cases.push(case(
        "where_greater_cast",
        model(
            vec![
                node("Greater", &["x", "z"], &["c"], vec![]),
                node("Less", &["x", "h"], &["d"], vec![]),
                node("Cast", &["d"], &["df"], vec![attr_i("to", 1)]),
                node("Mul", &["x", "df"], &["xd"], vec![]),
                node("Where", &["c", "xd", "w"], &["y"], vec![]),
            ],
            vec![
                fconst("z", &[], vec![0.0]),
                fconst("h", &[], vec![1.0]),
                finit("w", &[4], 3),
            ],
            &x,
            17,
        ),
    ));
    cases
}

fn layout_ops_cases() -> Vec<Case> {
    let x = [2, 3, 4, 5];
    let mut cases = vec![
        case(
            "reshape_zero_minus1",
            one(
                "Reshape",
                &["x", "s"],
                vec![],
                vec![iinit("s", &[0, -1, 5])],
                &x,
            ),
        ),
        case(
            "flatten_axis2",
            one("Flatten", &["x"], vec![attr_i("axis", 2)], vec![], &x),
        ),
        case(
            "transpose",
            one(
                "Transpose",
                &["x"],
                vec![attr_is("perm", &[0, 2, 3, 1])],
                vec![],
                &x,
            ),
        ),
        case(
            "transpose_default",
            one("Transpose", &["x"], vec![], vec![], &x),
        ),
        case(
            "concat_param",
            one(
                "Concat",
                &["x", "w", "x"],
                vec![attr_i("axis", -1)],
                vec![finit("w", &[2, 3, 4, 2], 1)],
                &x,
            ),
        ),
        case(
            "slice_neg",
            one(
                "Slice",
                &["x", "st", "en", "ax"],
                vec![],
                vec![
                    iinit("st", &[-3, 1]),
                    iinit("en", &[i64::MAX, -1]),
                    iinit("ax", &[3, 1]),
                ],
                &x,
            ),
        ),
        case(
            "gather_scalar",
            one(
                "Gather",
                &["x", "i"],
                vec![attr_i("axis", 1)],
                vec![export::tensor_proto("i", &Tensor::scalar(DType::I64, -1.0))],
                &x,
            ),
        ),
        case(
            "gather_vec",
            one(
                "Gather",
                &["x", "i"],
                vec![attr_i("axis", 2)],
                vec![iinit("i", &[3, 0, -1])],
                &x,
            ),
        ),
        case(
            "gather_repeated",
            one(
                "Gather",
                &["x", "i"],
                vec![attr_i("axis", 3)],
                vec![iinit(
                    "i",
                    &[0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0],
                )],
                &x,
            ),
        ),
        case(
            "gather_embedding",
            one(
                "Gather",
                &["w", "i"],
                vec![],
                vec![
                    finit("w", &[10, 4], 1),
                    export::tensor_proto(
                        "i",
                        &Tensor::new(DType::I64, vec![2, 3], vec![1.0, 0.0, 9.0, 3.0, 3.0, 2.0]),
                    ),
                ],
                &[1],
            ),
        ),
        case(
            "unsqueeze_squeeze",
            model(
                vec![
                    node("Unsqueeze", &["x", "a"], &["u"], vec![]),
                    node("Squeeze", &["u", "b"], &["y"], vec![]),
                ],
                vec![iinit("a", &[0, -1]), iinit("b", &[0])],
                &x,
                17,
            ),
        ),
        case(
            "expand",
            one(
                "Expand",
                &["x", "s"],
                vec![],
                vec![iinit("s", &[2, 2, 1, 1, 1])],
                &[2, 1, 4, 1],
            ),
        ),
        case(
            "pad_constant_negative",
            one(
                "Pad",
                &["x", "p", "v"],
                vec![],
                vec![
                    iinit("p", &[0, 0, 1, -1, 0, 1, 2, 0]),
                    fconst("v", &[], vec![0.5]),
                ],
                &x,
            ),
        ),
        case(
            "dropout_identity",
            one("Dropout", &["x"], vec![], vec![], &x),
        ),
    ];
    // Split, then Concat the pieces in another order.
    cases.push(case(
        "split_concat",
        model(
            vec![
                node(
                    "Split",
                    &["x", "sp"],
                    &["a", "b", "c"],
                    vec![attr_i("axis", 3)],
                ),
                node("Concat", &["c", "a", "b"], &["y"], vec![attr_i("axis", 3)]),
            ],
            vec![iinit("sp", &[2, 1, 2])],
            &x,
            17,
        ),
    ));
    // Sequences, as the dynamo exporter writes `torch.chunk`/`unbind` and `torch.stack`.
    let scalar = |name: &str, v: i64| {
        export::tensor_proto(name, &Tensor::new(DType::I64, vec![], vec![v as f64]))
    };
    cases.push(case(
        "split_to_sequence_at_concat",
        model(
            vec![
                node(
                    "SplitToSequence",
                    &["x", "sp"],
                    &["seq"],
                    vec![attr_i("axis", 1)],
                ),
                node("SequenceAt", &["seq", "p"], &["a"], vec![]),
                node(
                    "ConcatFromSequence",
                    &["seq"],
                    &["c"],
                    vec![attr_i("axis", 1)],
                ),
                node("Concat", &["a", "c"], &["y"], vec![attr_i("axis", 1)]),
            ],
            vec![iinit("sp", &[1, 2]), scalar("p", -1)],
            &x,
            17,
        ),
    ));
    cases.push(case(
        "split_to_sequence_unbind_stack",
        model(
            vec![
                node(
                    "SplitToSequence",
                    &["x"],
                    &["seq"],
                    vec![attr_i("axis", 0), attr_i("keepdims", 0)],
                ),
                node(
                    "ConcatFromSequence",
                    &["seq"],
                    &["y"],
                    vec![attr_i("axis", -1), attr_i("new_axis", 1)],
                ),
            ],
            vec![],
            &x,
            17,
        ),
    ));
    cases.push(case(
        "split_to_sequence_chunks",
        model(
            vec![
                node(
                    "SplitToSequence",
                    &["x", "cs"],
                    &["seq"],
                    vec![attr_i("axis", 3)],
                ),
                node("SequenceAt", &["seq", "p"], &["y"], vec![]),
            ],
            vec![scalar("cs", 2), scalar("p", 2)],
            &x,
            17,
        ),
    ));
    cases
}

/// The shape sub-graphs the exporters emit fold to constants: Shape → Gather → Unsqueeze →
/// Concat → Reshape, Range, ConstantOfShape, CastLike, Expand, Where and arithmetic on ints.
#[test]
fn shape_subgraphs_fold() {
    let x = [2, 3, 4, 5];
    let scalar_i = |n: &str, v: i64| export::tensor_proto(n, &Tensor::scalar(DType::I64, v as f64));
    let m = model(
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node("Gather", &["s", "zero"], &["n"], vec![attr_i("axis", 0)]),
            node("Unsqueeze", &["n", "ax0"], &["n1"], vec![]),
            node("Shape", &["x"], &["s23"], vec![attr_i("start", 2)]),
            node("ReduceProd", &["s23"], &["hw"], vec![attr_i("keepdims", 1)]),
            node("Div", &["hw", "two"], &["hw2"], vec![]),
            node("Mul", &["hw2", "two"], &["hw3"], vec![]),
            node(
                "Concat",
                &["n1", "m1", "hw3"],
                &["shape"],
                vec![attr_i("axis", 0)],
            ),
            node("Reshape", &["x", "shape"], &["r"], vec![]),
            node("Range", &["zero", "three", "one"], &["rg"], vec![]),
            node("Cast", &["rg"], &["rgf"], vec![attr_i("to", 1)]),
            node("ConstantOfShape", &["one1"], &["ones"], vec![]),
            node("Equal", &["rg", "one"], &["eq"], vec![]),
            node("Where", &["eq", "rgf", "ones"], &["sel"], vec![]),
            node("CastLike", &["sel", "x"], &["self"], vec![]),
            node("Unsqueeze", &["self", "ax0"], &["sel2"], vec![]),
            node("Unsqueeze", &["sel2", "ax2"], &["sel3"], vec![]),
            node("Mul", &["r", "sel3"], &["y"], vec![]),
        ],
        vec![
            scalar_i("zero", 0),
            scalar_i("one", 1),
            scalar_i("two", 2),
            scalar_i("three", 3),
            iinit("ax0", &[0]),
            iinit("ax2", &[2]),
            iinit("m1", &[-1]),
            iinit("one1", &[1]),
        ],
        &x,
        17,
    );
    let fm = import::import_model(&m, None, &x, &import::ImportOptions::default(), "t").unwrap();
    // Only the reshape of x and the multiplication by a constant remain.
    let ops: Vec<&str> = fm
        .graph
        .nodes
        .iter()
        .map(|n| n.op.name())
        .filter(|&o| o != "Constant")
        .collect();
    assert_eq!(ops, ["Reshape", "Mul"], "folded graph: {ops:?}");
    assert_eq!(fm.graph.shape(fm.logits), &[2, 3, 20]);
    check_cases(vec![case("shape_subgraph", m)]);
}

// ----- errors -----

fn err_of(m: &pb::ModelProto, xs: &[usize]) -> String {
    let e = import::import_model(m, None, xs, &import::ImportOptions::default(), "t")
        .expect_err("an error");
    let s = format!("{e:#}");
    assert!(!s.contains('\n'), "one line: {s}");
    s
}

#[test]
fn unsupported_op_is_one_clear_line() {
    let mut n = node("NonZero", &["x"], &["y"], vec![]);
    n.name = Some("foo".into());
    let e = err_of(&model(vec![n], vec![], &[2, 3], 17), &[2, 3]);
    assert_eq!(
        e,
        "unsupported op 'NonZero' in node 'foo' (see README.md, 'Supported ONNX ops')"
    );
    let mut n = node("Slice", &["x", "st", "en", "ax", "sp"], &["y"], vec![]);
    n.name = Some("cut".into());
    let m = model(
        vec![n],
        vec![
            iinit("st", &[0]),
            iinit("en", &[4]),
            iinit("ax", &[1]),
            iinit("sp", &[2]),
        ],
        &[2, 4],
        17,
    );
    let e = err_of(&m, &[2, 4]);
    assert!(
        e.starts_with("node 'cut' (Slice): steps other than 1 are not supported"),
        "{e}"
    );
    let mut n = node("Custom", &["x"], &["y"], vec![]);
    n.domain = Some("com.example".into());
    let e = err_of(&model(vec![n], vec![], &[2, 3], 17), &[2, 3]);
    assert!(e.starts_with("unsupported op 'com.example.Custom'"), "{e}");
}

#[test]
fn bad_inputs_and_shapes_are_clear_errors() {
    let conv = one(
        "Conv",
        &["x", "w"],
        vec![],
        vec![finit("w", &[4, 3, 3, 3], 1)],
        &[2, 3, 8, 8],
    );
    let e = err_of(&conv, &[2, 3, 8]);
    assert!(e.contains("rank 4") && e.contains("rank 3"), "{e}");
    let e = err_of(&conv, &[2, 3, 9, 8]);
    assert!(e.contains("static shape"), "{e}");
    // A model whose input has no static shape accepts any shape; channels are checked by the IR.
    let mut free = conv.clone();
    free.graph.as_mut().unwrap().input[0] = export::value_info("x", DType::F32, &[]);
    if let Some(pb::type_proto::Value::TensorType(tt)) = &mut free.graph.as_mut().unwrap().input[0]
        .r#type
        .as_mut()
        .unwrap()
        .value
    {
        tt.shape = None;
    }
    let e = err_of(&free, &[2, 5, 8, 8]);
    assert!(
        e.starts_with("node 'Conv_y' (Conv):") && e.contains("channels"),
        "{e}"
    );
    let mut int_in = conv.clone();
    int_in.graph.as_mut().unwrap().input[0] = export::value_info("x", DType::I64, &[2, 3, 8, 8]);
    let e = err_of(&int_in, &[2, 3, 8, 8]);
    assert!(e.contains("element type INT64"), "{e}");
    let add = one(
        "Add",
        &["x", "w"],
        vec![],
        vec![finit("w", &[5], 1)],
        &[2, 4],
    );
    let e = err_of(&add, &[2, 4]);
    assert!(
        e.starts_with("node 'Add_y' (Add):") && e.contains("broadcast"),
        "{e}"
    );
}

#[test]
fn garbage_and_truncated_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = import::ImportOptions::default();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convnet_keep.onnx");
    let bytes = std::fs::read(&good).unwrap();
    let mut files = vec![
        ("empty.onnx", Vec::new()),
        (
            "garbage.onnx",
            common::rand_vec(3000, 7, 0.0, 256.0)
                .into_iter()
                .map(|v| v as u8)
                .collect(),
        ),
        ("text.onnx", b"this is not a model\n".to_vec()),
    ];
    for cut in [10, 100, 1000, bytes.len() / 2, bytes.len() - 3] {
        files.push((
            Box::leak(format!("cut{cut}.onnx").into_boxed_str()),
            bytes[..cut].to_vec(),
        ));
    }
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let e = import::import_onnx(&p, &[4, 1, 28, 28], &opts).expect_err(name);
        let s = format!("{e:#}");
        assert!(!s.contains('\n'), "{name}: one line: {s}");
        assert!(
            s.starts_with("not a valid ONNX model: ") && s.contains(name),
            "{name}: {s}"
        );
    }
    let e = import::import_onnx(&dir.path().join("missing.onnx"), &[1], &opts).unwrap_err();
    assert!(format!("{e:#}").contains("missing.onnx"));
}

#[test]
fn output_must_be_logits() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    write_model(&one("Relu", &["x"], vec![], vec![], &[2, 3, 4]), &p);
    let e = import::import_onnx(&p, &[2, 3, 4], &import::ImportOptions::default()).unwrap_err();
    assert!(
        format!("{e:#}").contains("expected logits [batch = 2, classes]"),
        "{e:#}"
    );
}

/// Weights in an external data file beside the model are read (offsets, lengths); a location
/// outside the model's directory is refused.
#[test]
fn external_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::new(DType::F32, vec![3, 4], common::rand_vec(12, 3, -1.0, 1.0));
    let mut raw = vec![0u8; 16]; // an offset, as real files align tensors
    raw.extend(w.data.iter().flat_map(|&v| (v as f32).to_le_bytes()));
    std::fs::write(dir.path().join("m.onnx.data"), &raw).unwrap();
    let kv = |k: &str, v: &str| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let mut t = export::tensor_proto("w", &w);
    t.raw_data = None;
    t.data_location = Some(1);
    t.external_data = vec![
        kv("location", "m.onnx.data"),
        kv("offset", "16"),
        kv("length", "48"),
    ];
    let m = one("MatMul", &["x", "w"], vec![], vec![t.clone()], &[2, 3]);
    let p = dir.path().join("m.onnx");
    write_model(&m, &p);
    let fm = import::import_model(
        &m,
        Some(dir.path()),
        &[2, 3],
        &import::ImportOptions::default(),
        "t",
    )
    .unwrap();
    assert_eq!(fm.params[0].initial.as_ref().unwrap(), &w);
    let fm2 = import::import_onnx(&p, &[2, 3], &import::ImportOptions::default()).unwrap();
    assert_eq!(fm2.params[0].initial.as_ref().unwrap(), &w);
    let mut bad = t.clone();
    bad.external_data[0] = kv("location", "../m.onnx.data");
    let e = err_of(
        &one("MatMul", &["x", "w"], vec![], vec![bad], &[2, 3]),
        &[2, 3],
    );
    assert!(e.contains("relative path inside"), "{e}");
    let mut short = t;
    short.external_data[2] = kv("length", "40");
    let e = format!(
        "{:#}",
        import::import_model(
            &one("MatMul", &["x", "w"], vec![], vec![short], &[2, 3]),
            Some(dir.path()),
            &[2, 3],
            &import::ImportOptions::default(),
            "t"
        )
        .unwrap_err()
    );
    assert!(e.contains("length 40"), "{e}");
}

/// Every op in the importer's table is dispatched (a node of that type fails on its missing
/// inputs, not as an unsupported op).
#[test]
fn every_listed_op_is_dispatched() {
    for (ops, _) in import::SUPPORTED_OPS {
        for op in ops.split(", ") {
            let m = model(vec![node(op, &[], &["y"], vec![])], vec![], &[2, 3], 17);
            let e = import::import_model(&m, None, &[2, 3], &import::ImportOptions::default(), "t");
            if let Err(e) = e {
                let s = format!("{e:#}");
                assert!(!s.starts_with("unsupported op"), "{op}: {s}");
            }
        }
    }
}

#[test]
fn convolutions() {
    check_cases(convolutions_cases());
}

#[test]
fn pooling() {
    check_cases(pooling_cases());
}

#[test]
fn norms() {
    check_cases(norms_cases());
}

#[test]
fn math_ops() {
    check_cases(math_ops_cases());
}

#[test]
fn layout_ops() {
    check_cases(layout_ops_cases());
}

/// Perturbed attributes and input shapes (random small ints and extremes) give errors or
/// models, never panics.
#[test]
fn perturbed_models_never_panic() {
    let mut all = Vec::new();
    for f in [
        convolutions_cases,
        pooling_cases,
        norms_cases,
        math_ops_cases,
        layout_ops_cases,
    ] {
        all.extend(f());
    }
    let r = common::rand_vec(1 << 16, 1234, 0.0, 1.0);
    let mut k = 0;
    let mut next = || {
        k = (k + 1) % r.len();
        r[k]
    };
    let extremes = [i64::MIN, -1, 0, 1, 2, 3, 7, 1 << 40, i64::MAX];
    for c in &all {
        for _ in 0..50 {
            let mut m = c.m.clone();
            for node in &mut m.graph.as_mut().unwrap().node {
                for a in &mut node.attribute {
                    if next() < 0.5 {
                        a.i =
                            a.i.map(|_| extremes[(next() * extremes.len() as f64) as usize]);
                        for v in a.ints.iter_mut() {
                            *v = if next() < 0.3 {
                                extremes[(next() * extremes.len() as f64) as usize]
                            } else {
                                (next() * 6.0) as i64 - 1
                            };
                        }
                        if next() < 0.2 {
                            a.ints.pop();
                        }
                    }
                }
            }
            for t in &mut m.graph.as_mut().unwrap().initializer {
                if t.data_type == Some(7) && next() < 0.5 {
                    let v: Vec<i64> = t
                        .raw_data
                        .as_ref()
                        .unwrap()
                        .chunks(8)
                        .map(|_| (next() * 8.0) as i64 - 3)
                        .collect();
                    t.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
                }
            }
            let mut xs = c.xs.clone();
            if next() < 0.3 {
                let i = (next() * xs.len() as f64) as usize;
                xs[i] = (next() * 4.0) as usize;
            }
            let res = std::panic::catch_unwind(|| {
                import::import_model(&m, None, &xs, &import::ImportOptions::default(), "t")
                    .map(|_| ())
            });
            assert!(
                res.is_ok(),
                "case {} panicked with input {xs:?} on {:?}",
                c.name,
                m.graph.as_ref().unwrap().node
            );
        }
    }
}

/// Without weights in the file, a parameter whose layer is not recognised is an error naming it;
/// a recognised one gets PyTorch's default rule.
#[test]
fn valueless_parameters_need_a_recognised_layer() {
    let mut m = one("Mul", &["x", "w"], vec![], vec![], &[2, 3]);
    m.graph
        .as_mut()
        .unwrap()
        .input
        .push(export::value_info("w", DType::F32, &[3]));
    let e = err_of(&m, &[2, 3]);
    assert!(
        e.starts_with("parameter 'w' has no value in the file"),
        "{e}"
    );
    let mut m = one(
        "Gemm",
        &["x", "w", "b"],
        vec![attr_i("transB", 1)],
        vec![],
        &[2, 3],
    );
    let g = m.graph.as_mut().unwrap();
    g.input.push(export::value_info("w", DType::F32, &[5, 3]));
    g.input.push(export::value_info("b", DType::F32, &[5]));
    let fm =
        import::import_model(&m, None, &[2, 3], &import::ImportOptions::default(), "t").unwrap();
    use tesla_distill::compiler::model::InitRule;
    assert_eq!(fm.params[0].init, InitRule::KaimingUniform { fan_in: 3 });
    assert_eq!(fm.params[1].init, InitRule::UniformBias { fan_in: 3 });
}

/// Model-local functions are inlined (nested calls, attribute references, per-call renaming).
#[test]
fn local_functions_are_inlined() {
    let opsets = || {
        vec![
            pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            },
            pb::OperatorSetIdProto {
                domain: Some("local".into()),
                version: Some(1),
            },
        ]
    };
    let mut leaky = node("LeakyRelu", &["X"], &["T"], vec![]);
    leaky.attribute = vec![pb::AttributeProto {
        name: Some("alpha".into()),
        ref_attr_name: Some("a".into()),
        r#type: Some(1),
        ..Default::default()
    }];
    let inner = pb::FunctionProto {
        name: Some("Inner".into()),
        domain: Some("local".into()),
        input: vec!["X".into()],
        output: vec!["Y".into()],
        attribute: vec!["a".into()],
        node: vec![leaky, node("Mul", &["T", "X"], &["Y"], vec![])],
        opset_import: opsets(),
        ..Default::default()
    };
    let call = |i: &str, o: &str, a: f32| {
        let mut n = node("Inner", &[i], &[o], vec![attr_f("a", a)]);
        n.domain = Some("local".into());
        n
    };
    let outer = pb::FunctionProto {
        name: Some("Outer".into()),
        domain: Some("local".into()),
        input: vec!["X".into()],
        output: vec!["Y".into()],
        node: vec![call("X", "H", 0.1), call("H", "Y", 0.5)],
        opset_import: opsets(),
        ..Default::default()
    };
    let mut top = node("Outer", &["x"], &["h"], vec![]);
    top.domain = Some("local".into());
    let mut m = model(
        vec![top, node("Add", &["h", "x"], &["y"], vec![])],
        vec![],
        &[2, 5],
        17,
    );
    m.opset_import = opsets();
    m.functions = vec![inner, outer];
    let fm =
        import::import_model(&m, None, &[2, 5], &import::ImportOptions::default(), "t").unwrap();
    let leaky: Vec<f64> = fm
        .graph
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            tesla_distill::compiler::ir::Op::LeakyRelu(LeakyRelu { alpha }) => {
                Some((alpha * 10.0).round() / 10.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(leaky, [0.1, 0.5]);
    check_cases(vec![case("local_functions", m)]);
}
