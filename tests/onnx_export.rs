//! Export: graphs covering every IR op are written as ONNX, pass
//! `onnx.checker.check_model(full_check=True)` and give, on ONNX Runtime, the numbers the f64
//! reference evaluator computes in Rust.

mod common;

use serde_json::{json, Value};
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{ConvAttrs, DType, Graph, Op, Tensor};
use tesla_distill::compiler::lower;
use tesla_distill::compiler::ops::{
    Cast, Concat, ConvTranspose, ConvWeightGrad, Gather, LeakyRelu, Pad, ReduceMax, ReduceSum,
    Slice, Split, Upsample,
};
use tesla_distill::onnx::export;

fn np(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::Bool => "bool",
    }
}

fn random_inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    g.inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = g.shape(v).to_vec();
            let n = s.iter().product();
            Tensor::new(
                g.dtype(v),
                s,
                common::rand_vec(n, seed + i as u64, -2.0, 2.0),
            )
        })
        .collect()
}

/// A runner case: the exported model, its inputs and the evaluator's outputs.
fn case(dir: &std::path::Path, name: &str, g: &Graph) -> Value {
    let path = dir.join(format!("{name}.onnx"));
    export::write(g, &path).unwrap();
    let inputs = random_inputs(g, 11);
    let outs = eval(g, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut feeds = serde_json::Map::new();
    for (&v, t) in g.inputs.iter().zip(&inputs) {
        feeds.insert(
            g.info(v).name.clone(),
            common::feed(np(t.dtype), &t.shape, &t.data),
        );
    }
    let expect: Vec<Value> = outs
        .iter()
        .map(|t| json!({"shape": t.shape, "data": t.data}))
        .collect();
    json!({"case": name, "model": path, "inputs": feeds, "expect": expect, "tol": 1e-5})
}

fn elementwise(dt: DType) -> Graph {
    let mut g = Graph::new();
    let a = g.input("a", dt, vec![2, 3]);
    let b = g.input("b", dt, vec![3]);
    let c = g.input("c", dt, vec![2, 3]);
    let eb = g.unary(Op::Exp, b).unwrap();
    let ea = g.unary(Op::Exp, a).unwrap();
    let mut outs = vec![
        g.add(a, b).unwrap(),
        g.sub(a, b).unwrap(),
        g.mul(a, b).unwrap(),
        g.div(a, eb).unwrap(),
        g.neg(a).unwrap(),
        ea,
        g.unary(Op::Log, ea).unwrap(),
        g.unary(Op::Sqrt, ea).unwrap(),
        g.unary(Op::Relu, a).unwrap(),
        g.unary(Op::Sigmoid, a).unwrap(),
        g.unary(Op::Tanh, a).unwrap(),
        g.unary(Op::LeakyRelu(LeakyRelu { alpha: 0.1 }), a).unwrap(),
        g.push1("sg", Op::StopGradient, &[a]).unwrap(),
        g.push1("id", Op::Identity, &[c]).unwrap(),
    ];
    if dt == DType::F32 {
        // ONNX Runtime has no f64 Erf kernel.
        outs.push(g.unary(Op::Erf, a).unwrap());
    }
    let gt = g.greater(a, b).unwrap();
    let ra = g.unary(Op::Relu, a).unwrap();
    let eq = g.push1("eq", Op::Equal, &[a, ra]).unwrap();
    outs.push(g.where_(gt, a, c).unwrap());
    outs.push(gt);
    outs.push(eq);
    outs.push(g.unary(Op::Cast(Cast { to: DType::I64 }), a).unwrap());
    outs.push(g.unary(Op::Cast(Cast { to: dt }), gt).unwrap());
    let other = if dt == DType::F32 {
        DType::F64
    } else {
        DType::F32
    };
    outs.push(g.unary(Op::Cast(Cast { to: other }), a).unwrap());
    let k = g.const_tensor(dt, vec![3], vec![0.5, -1.0, 2.0]);
    outs.push(k); // a constant as a graph output
    outs.push(a); // an input as a graph output
    outs.push(outs[0]); // a repeated output
    g.outputs = outs;
    g
}

fn layout() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, vec![2, 3, 4]);
    let b = g.input("b", DType::F32, vec![3, 1]);
    let w = g.input("w", DType::F32, vec![1, 4, 5]);
    let mut outs = vec![
        g.transpose(x, &[2, 0, 1]).unwrap(),
        g.reshape(x, &[6, 4]).unwrap(),
        g.expand(b, &[2, 3, 4]).unwrap(),
        g.reduce_sum(x, &[0, 2], false).unwrap(),
        g.reduce_sum(x, &[1], true).unwrap(),
        g.push1(
            "",
            Op::ReduceSum(ReduceSum {
                axes: vec![],
                keepdims: true,
            }),
            &[x],
        )
        .unwrap(),
        g.push1(
            "",
            Op::ReduceMax(ReduceMax {
                axes: vec![2],
                keepdims: true,
            }),
            &[x],
        )
        .unwrap(),
        g.push1(
            "",
            Op::ReduceMax(ReduceMax {
                axes: vec![1],
                keepdims: false,
            }),
            &[x],
        )
        .unwrap(),
        g.push1(
            "",
            Op::ReduceMax(ReduceMax {
                axes: vec![0, 1],
                keepdims: false,
            }),
            &[x],
        )
        .unwrap(),
        g.push1("", Op::Concat(Concat { axis: 1 }), &[x, x])
            .unwrap(),
        g.push1(
            "",
            Op::Slice(Slice {
                starts: vec![1, 0, 1],
                ends: vec![2, 2, 4],
            }),
            &[x],
        )
        .unwrap(),
        g.push1(
            "",
            Op::Gather(Gather {
                axis: 2,
                indices: vec![3, 0, 3, 1, 3],
            }),
            &[x],
        )
        .unwrap(),
        g.push1(
            "",
            Op::Pad(Pad {
                begins: vec![0, 1, 2],
                ends: vec![1, 0, 1],
                value: 1.5,
            }),
            &[x],
        )
        .unwrap(),
        g.matmul(x, w).unwrap(),
    ];
    outs.extend(
        g.push(
            "",
            Op::Split(Split {
                axis: 2,
                sizes: vec![1, 3],
            }),
            &[x],
        )
        .unwrap(),
    );
    let s = g.sum_all(x).unwrap();
    outs.push(s);
    g.outputs = outs;
    g
}

fn conv() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, vec![2, 4, 8, 8]);
    let w = g.input("w", DType::F32, vec![6, 2, 3, 3]);
    let a = ConvAttrs {
        strides: vec![2, 1],
        pads_begin: vec![0, 0],
        pads_end: vec![0, 2],
        dilations: vec![1, 2],
        group: 2,
    };
    let y = g.push1("conv", Op::Conv(a.clone()), &[x, w]).unwrap();
    let sy = g.shape(y).to_vec();
    let gy = g.input("gy", DType::F32, sy);
    // Adjoint back to 8×8: no window reads the last row (it reaches 7 rows), so a zero Pad
    // follows; along the width the reach (10) exceeds 8 and the end pads crop it.
    let t = g
        .push1(
            "convT",
            Op::ConvTranspose(ConvTranspose {
                conv: a,
                out_spatial: vec![8, 8],
            }),
            &[gy, w],
        )
        .unwrap();
    let w1 = g.input("w1", DType::F32, vec![3, 2, 3]);
    let x1 = g.input("x1", DType::F32, vec![1, 3, 7]);
    let a1 = ConvAttrs {
        strides: vec![1],
        pads_begin: vec![1],
        pads_end: vec![1],
        dilations: vec![1],
        group: 1,
    };
    let t1 = g
        .push1(
            "convT1",
            Op::ConvTranspose(ConvTranspose {
                conv: a1.clone(),
                out_spatial: vec![7],
            }),
            &[x1, w1],
        )
        .unwrap();
    // Unit strides, one group, dilated and unevenly padded: written as a flipped convolution.
    let gy2 = g.input("gy2", DType::F32, vec![2, 3, 6, 5]);
    let w2 = g.input("w2", DType::F32, vec![3, 4, 3, 2]);
    let a2 = ConvAttrs {
        strides: vec![1, 1],
        pads_begin: vec![2, 0],
        pads_end: vec![1, 1],
        dilations: vec![2, 1],
        group: 1,
    };
    let t2 = g
        .push1(
            "convT2",
            Op::ConvTranspose(ConvTranspose {
                conv: a2,
                out_spatial: vec![7, 5],
            }),
            &[gy2, w2],
        )
        .unwrap();
    let x2 = g.input("x2", DType::F32, vec![1, 2, 7]);
    let b1 = g.input("b1", DType::F32, vec![3]);
    let c1 = g
        .push1("conv1", Op::Conv(a1.clone()), &[x2, w1, b1])
        .unwrap();
    g.outputs = vec![y, t, t1, t2, c1];
    g
}

/// The weight gradient, which ONNX has no op for: written as per-image products of windows and
/// as one product per kernel offset (unit stride, one group), and as a convolution of transposed
/// operands (strided and grouped).
fn weight_gradients() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, vec![2, 3, 6, 6]);
    let gy = g.input("gy", DType::F32, vec![2, 4, 6, 6]);
    let same = ConvAttrs {
        strides: vec![1, 1],
        pads_begin: vec![1, 1],
        pads_end: vec![1, 1],
        dilations: vec![1, 1],
        group: 1,
    };
    let windows = ConvWeightGrad {
        conv: same,
        kernel: vec![3, 3],
    };
    let w1 = g
        .push1("wgrad", Op::ConvWeightGrad(windows), &[x, gy])
        .unwrap();
    let x2 = g.input("x2", DType::F32, vec![1, 4, 7, 7]);
    let gy2 = g.input("gy2", DType::F32, vec![1, 2, 3, 3]);
    let strided = ConvWeightGrad {
        conv: ConvAttrs {
            strides: vec![2, 2],
            pads_begin: vec![0, 0],
            pads_end: vec![0, 0],
            dilations: vec![1, 1],
            group: 2,
        },
        kernel: vec![3, 3],
    };
    let w2 = g
        .push1("wgrad2", Op::ConvWeightGrad(strided), &[x2, gy2])
        .unwrap();
    // Many input channels for few output positions: one product per kernel offset.
    let x3 = g.input("x3", DType::F32, vec![2, 5, 4, 4]);
    let gy3 = g.input("gy3", DType::F32, vec![2, 3, 4, 4]);
    let per_offset = ConvWeightGrad {
        conv: ConvAttrs {
            strides: vec![1, 1],
            pads_begin: vec![1, 0],
            pads_end: vec![1, 2],
            dilations: vec![1, 1],
            group: 1,
        },
        kernel: vec![3, 3],
    };
    let w3 = g
        .push1("wgrad3", Op::ConvWeightGrad(per_offset), &[x3, gy3])
        .unwrap();
    g.outputs = vec![w1, w2, w3];
    g
}

/// Convolutions with few output positions, whose export is a matrix product over the batch
/// rather than ONNX `Conv`: one position (a padded 3×3 kernel on 1×1 maps, a strided one on 2×2
/// maps, a dilated 1-D one) with their adjoints and weight gradients, and four positions on 2×2
/// maps.
fn small_outputs() -> Graph {
    let mut g = Graph::new();
    let same = |sp: usize, stride: usize, dilation: usize| ConvAttrs {
        strides: vec![stride; sp],
        pads_begin: vec![1; sp],
        pads_end: vec![1; sp],
        dilations: vec![dilation; sp],
        group: 1,
    };
    let mut outs = Vec::new();
    let geometries = [
        (vec![2, 5, 1, 1], vec![4, 5, 3, 3], same(2, 1, 1)),
        (vec![2, 3, 2, 2], vec![4, 3, 3, 3], same(2, 2, 1)),
        (vec![1, 2, 3], vec![3, 2, 3], same(1, 1, 2)),
        (vec![3, 4, 2, 2], vec![5, 4, 3, 3], same(2, 1, 1)),
    ];
    for (i, (xs, ws, a)) in geometries.into_iter().enumerate() {
        let x = g.input(&format!("x{i}"), DType::F32, xs.clone());
        let w = g.input(&format!("w{i}"), DType::F32, ws.clone());
        let b = g.input(&format!("b{i}"), DType::F32, vec![ws[0]]);
        let y = g
            .push1(&format!("conv{i}"), Op::Conv(a.clone()), &[x, w, b])
            .unwrap();
        let gy = g.input(&format!("gy{i}"), DType::F32, g.shape(y).to_vec());
        let t = ConvTranspose {
            conv: a.clone(),
            out_spatial: xs[2..].to_vec(),
        };
        let dx = g
            .push1(&format!("convT{i}"), Op::ConvTranspose(t), &[gy, w])
            .unwrap();
        let wg = ConvWeightGrad {
            conv: a,
            kernel: ws[2..].to_vec(),
        };
        let dw = g
            .push1(&format!("wgrad{i}"), Op::ConvWeightGrad(wg), &[x, gy])
            .unwrap();
        outs.extend([y, dx, dw]);
    }
    g.outputs = outs;
    g
}

/// Instance normalisation, written as ONNX `InstanceNormalization`, on 2-D and 1-D planes;
/// average pooling, written as a depthwise `Conv`; and nearest-neighbour upsampling by unequal
/// factors, written as `Resize`.
fn norm_and_pool() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, vec![2, 3, 4, 5]);
    let s = g.input("scale", DType::F32, vec![3]);
    let b = g.input("bias", DType::F32, vec![3]);
    let y = lower::instance_norm(&mut g, x, Some(s), Some(b), 1e-5).unwrap();
    let x1 = g.input("x1", DType::F32, vec![2, 4, 7]);
    let y1 = lower::instance_norm(&mut g, x1, None, None, 1e-3).unwrap();
    let p = lower::pool_2d(&mut g, x, 2, false).unwrap();
    let x3 = g.input("x3", DType::F32, vec![1, 2, 7, 9]);
    let p3 = lower::pool_2d(&mut g, x3, 3, false).unwrap();
    let u = g
        .push1("up", Op::Upsample(Upsample { kh: 3, kw: 2 }), &[x3])
        .unwrap();
    g.outputs = vec![y, y1, p, p3, u];
    g
}

/// The op types of the exported graph's nodes, in order.
fn op_types(g: &Graph) -> Vec<String> {
    let m = export::to_model_proto(g);
    m.graph
        .unwrap()
        .node
        .into_iter()
        .map(|n| n.op_type.unwrap())
        .collect()
}

#[test]
fn exported_graphs_run_on_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        case(dir.path(), "elementwise_f32", &elementwise(DType::F32)),
        case(dir.path(), "elementwise_f64", &elementwise(DType::F64)),
        case(dir.path(), "layout", &layout()),
        case(dir.path(), "conv", &conv()),
        case(dir.path(), "weight_gradients", &weight_gradients()),
        case(dir.path(), "norm_and_pool", &norm_and_pool()),
        case(dir.path(), "small_outputs", &small_outputs()),
    ];
    // The natural extent of the strided ConvTranspose is short by one row: a Pad must follow it.
    let ops = op_types(&conv());
    // With unit strides and one group the adjoint is a convolution with flipped taps.
    let flipped = ["Transpose", "Reshape", "MatMul", "Reshape", "Conv"];
    let mut want = vec!["Conv", "ConvTranspose", "Pad"];
    want.extend(flipped);
    want.extend(flipped);
    want.push("Conv");
    assert_eq!(ops, want);
    let pool_ops = op_types(&norm_and_pool());
    assert_eq!(
        pool_ops.iter().filter(|op| *op == "Resize").count(),
        1,
        "{pool_ops:?}"
    );
    assert!(
        !pool_ops.iter().any(|op| op == "AveragePool"),
        "{pool_ops:?}"
    );
    let small_ops = op_types(&small_outputs());
    assert!(
        !small_ops.iter().any(|op| op.starts_with("Conv")),
        "{small_ops:?}"
    );
    if common::python_ok() {
        common::run_cases(dir.path(), cases);
    }
}

#[test]
fn names_and_shapes_of_the_interface_are_kept() {
    let g = layout();
    let m = export::to_model_proto(&g);
    assert_eq!(m.opset_import[0].version, Some(17));
    let graph = m.graph.unwrap();
    let names: Vec<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["x", "b", "w"]);
    assert_eq!(graph.output.len(), g.outputs.len());
    let mut seen = std::collections::HashSet::new();
    for n in &graph.node {
        for o in &n.output {
            assert!(seen.insert(o.clone()), "value {o} is produced twice");
        }
    }
}

#[test]
fn write_is_atomic_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.onnx");
    export::write(&layout(), &p).unwrap();
    export::write(&conv(), &p).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, [std::ffi::OsString::from("g.onnx")]);
    assert!(export::write(&conv(), &dir.path().join("missing/g.onnx")).is_err());
}
