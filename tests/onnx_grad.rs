//! Derivatives of imported ONNX ops: single-op models written with the python `onnx` package are
//! imported in f64 and their lowered graphs checked against central finite differences, at first
//! and second order, with respect to the input and every parameter.

mod common;
use common::*;
use std::process::Command;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::onnx::import::{import_model, read_model, ImportOptions};

/// (name, input shape, distinct input values?, python body defining `nodes`, `inits`, `opset`).
const CASES: &[(&str, &[usize], bool, &str)] = &[
    ("gemm", &[2, 5], false, "inits=[P('W',(4,5)),P('b',(4,))]; nodes=[N('Gemm',['x','W','b'],['y'],transB=1,alpha=0.5,beta=2.0)]"),
    ("avgpool", &[2, 3, 6, 6], false, "nodes=[N('AveragePool',['x'],['y'],kernel_shape=[3,3],strides=[2,2],pads=[1,1,1,1],count_include_pad=0)]"),
    ("maxpool", &[2, 3, 6, 6], true, "nodes=[N('MaxPool',['x'],['y'],kernel_shape=[3,3],strides=[2,2],pads=[1,1,1,1])]"),
    ("gather", &[2, 5], false, "inits=[I('idx',[3,0,3])]; nodes=[N('Gather',['x','idx'],['y'],axis=1)]"),
    ("softmax", &[2, 5], false, "nodes=[N('Softmax',['x'],['y'],axis=-1)]"),
    ("logsoftmax", &[2, 5], false, "nodes=[N('LogSoftmax',['x'],['y'],axis=1)]"),
    ("instancenorm", &[2, 3, 4, 4], false, "inits=[P('s',(3,)),P('b',(3,))]; nodes=[N('InstanceNormalization',['x','s','b'],['y'],epsilon=1e-5)]"),
    ("layernorm", &[2, 3, 6], false, "inits=[P('s',(6,)),P('b',(6,))]; nodes=[N('LayerNormalization',['x','s','b'],['y'],axis=-1)]"),
    ("flatten-reducemean", &[2, 3, 2, 2], false, "nodes=[N('Flatten',['x'],['f']),N('ReduceMean',['f'],['y'],axes=[1],keepdims=0)]; opset=17"),
    ("globalavgpool", &[2, 3, 4, 4], false, "nodes=[N('GlobalAveragePool',['x'],['y'])]"),
    ("gelu", &[2, 5], false, "nodes=[N('Gelu',['x'],['y'])]; opset=20"),
    ("convtranspose", &[1, 2, 3, 3], false, "inits=[P('W',(2,3,3,3)),P('b',(3,))]; nodes=[N('ConvTranspose',['x','W','b'],['y'],strides=[2,2],pads=[1,1,1,1],output_padding=[1,1])]"),
    ("conv-group-dilation", &[1, 4, 7, 7], false, "inits=[P('W',(4,2,3,3)),P('b',(4,))]; nodes=[N('Conv',['x','W','b'],['y'],group=2,dilations=[2,2],pads=[1,2,1,0])]"),
    ("pow-tanh", &[2, 5], false, "inits=[C('e',3.0)]; nodes=[N('Tanh',['x'],['t']),N('Pow',['t','e'],['y'])]"),
];

const PRELUDE: &str = r#"
import numpy as np, onnx, sys
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(0)
def N(op, i, o, **kw): return h.make_node(op, i, o, name=op.lower(), **kw)
def P(name, shape): return nh.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
def I(name, vals): return nh.from_array(np.array(vals, dtype=np.int64), name)
def C(name, v): return nh.from_array(np.array(v, dtype=np.float32), name)
def save(path, shape, nodes, inits, opset):
    x = h.make_tensor_value_info('x', T.FLOAT, shape)
    y = h.make_tensor_value_info('y', T.FLOAT, None)
    g = h.make_graph(nodes, 'g', [x], [y], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid('', opset)]), path)
"#;

#[test]
fn imported_ops_match_finite_differences() {
    let d = tempfile::tempdir().unwrap();
    let mut script = PRELUDE.to_string();
    for (name, shape, _, body) in CASES {
        script += &format!(
            "inits=[]; opset=18\n{body}\nsave(r'{}', {:?}, nodes, inits, opset)\n",
            d.path().join(format!("{name}.onnx")).display(),
            shape
        );
    }
    match Command::new("python3").args(["-c", &script]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No module named") {
                common::missing(&format!("the python onnx package ({})", err.trim()));
                return;
            }
            panic!("writing the models failed: {err}");
        }
        Err(e) => {
            common::missing(&format!("python3 ({e})"));
            return;
        }
    }
    for (k, (name, shape, distinct_input, _)) in CASES.iter().enumerate() {
        let path = d.path().join(format!("{name}.onnx"));
        let proto = read_model(&path).unwrap();
        let m = import_model(
            &proto,
            Some(d.path()),
            shape,
            &ImportOptions {
                dtype: DType::F64,
                ..Default::default()
            },
            name,
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut r = rng(100 + k as u64);
        let mut g = m.graph.clone();
        let out = weighted_sum(&mut g, &mut r, m.logits);
        let inputs: Vec<Tensor> = g
            .inputs
            .iter()
            .map(|&v| {
                if v == m.x {
                    let t = if *distinct_input {
                        distinct(&mut r, shape)
                    } else {
                        uniform(&mut r, shape, -1.0, 1.0)
                    };
                    Tensor::new(DType::F64, t.shape, t.data)
                } else {
                    let p = m
                        .params
                        .iter()
                        .find(|p| p.value == v)
                        .expect("graph inputs are x or parameters");
                    let init = p.initial.clone().expect("values from the file");
                    Tensor::new(DType::F64, init.shape, init.data)
                }
            })
            .collect();
        let e1 = grad_error(&g, out, &inputs);
        let e2 = hvp_error(&g, out, &inputs, 7);
        assert!(e1 <= 1e-6, "{name}: first-order relative error {e1:e}");
        assert!(e2 <= 1e-6, "{name}: second-order relative error {e2:e}");
    }
}
