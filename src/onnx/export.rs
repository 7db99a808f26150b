//! Export of an IR [`Graph`] to a plain ONNX model (default domain, opset [`OPSET`]).
//!
//! Every IR primitive maps to standard ONNX ops, so any runtime that implements opset 17 can run
//! the artifacts unchanged: constants become initializers, static attributes that ONNX takes as
//! inputs (reshape targets, reduction axes, slice bounds, pads) become int64 initializers, and
//! `ConvTranspose` (the exact adjoint of `Conv` in the IR) becomes ONNX `ConvTranspose` with its
//! end pads chosen to crop to the IR's output extent, followed by a zero `Pad` at the spatial
//! ends where that extent exceeds what any window reaches.

use super::onnx_dtype;
use super::pb;
use crate::compiler::ir::{ConvAttrs, DType, Graph, Op, Tensor, ValueId};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The opset the exporter targets.
pub const OPSET: i64 = 17;
/// The ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// Builds the ONNX model of `g`: graph inputs and outputs keep their IR value names and static
/// shapes; other values get unique names derived from theirs.
pub fn to_model_proto(g: &Graph) -> pb::ModelProto {
    let mut ex = Exporter::new(g);
    ex.run();
    pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("tesla-distill".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(ex.graph),
        ..Default::default()
    }
}

/// Serialises `g` as ONNX to `path`, atomically (a temporary file beside it, then a rename), so a
/// reader never sees a half-written model.
pub fn write(g: &Graph, path: &Path) -> anyhow::Result<()> {
    let bytes = to_model_proto(g).encode_to_vec();
    crate::atomic_file::write(path, &bytes)
}

/// A `TensorProto` holding `t` (little-endian raw data), named `name`.
pub fn tensor_proto(name: &str, t: &Tensor) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(t.data.len() * 8);
    match t.dtype {
        DType::F32 => t
            .data
            .iter()
            .for_each(|&v| raw.extend_from_slice(&(v as f32).to_le_bytes())),
        DType::F64 => t
            .data
            .iter()
            .for_each(|&v| raw.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => t
            .data
            .iter()
            .for_each(|&v| raw.extend_from_slice(&(v as i64).to_le_bytes())),
        DType::Bool => t.data.iter().for_each(|&v| raw.push((v != 0.0) as u8)),
    }
    pb::TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(onnx_dtype(t.dtype)),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A `ValueInfoProto` with a static tensor type.
pub fn value_info(name: &str, dtype: DType, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dims = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(onnx_dtype(dtype)),
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        f: Some(v as f32),
        ..Default::default()
    }
}

fn attr_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

fn ints_tensor(v: &[i64]) -> Tensor {
    Tensor::new(
        DType::I64,
        vec![v.len()],
        v.iter().map(|&x| x as f64).collect(),
    )
}

fn usizes(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

struct Exporter<'a> {
    g: &'a Graph,
    graph: pb::GraphProto,
    names: Vec<String>,
    used: HashSet<String>,
    node_names: HashSet<String>,
}

impl<'a> Exporter<'a> {
    fn new(g: &'a Graph) -> Exporter<'a> {
        Exporter {
            g,
            graph: pb::GraphProto {
                name: Some("tesla".into()),
                ..Default::default()
            },
            names: vec![String::new(); g.values.len()],
            used: HashSet::new(),
            node_names: HashSet::new(),
        }
    }

    /// A name not used yet, as close to `stem` as possible.
    fn unique(used: &mut HashSet<String>, stem: &str) -> String {
        let stem = if stem.is_empty() { "v" } else { stem };
        if used.insert(stem.to_string()) {
            return stem.to_string();
        }
        (1..)
            .map(|i| format!("{stem}__{i}"))
            .find(|n| used.insert(n.clone()))
            .expect("an unbounded range yields a free name")
    }

    fn run(&mut self) {
        let g = self.g;
        // Graph inputs and outputs claim their names first so that internal values yield.
        let mut out_alias: HashMap<usize, ValueId> = HashMap::new();
        let inputs: HashSet<ValueId> = g.inputs.iter().copied().collect();
        for &v in &g.inputs {
            self.names[v] = Self::unique(&mut self.used, &g.values[v].name);
        }
        let mut seen_out = HashSet::new();
        let mut out_names = Vec::new();
        for (k, &v) in g.outputs.iter().enumerate() {
            // An output that is also an input, or repeated, needs its own Identity-made value.
            if inputs.contains(&v) || !seen_out.insert(v) {
                out_alias.insert(k, v);
                out_names.push(Self::unique(&mut self.used, &g.values[v].name));
            } else {
                self.names[v] = Self::unique(&mut self.used, &g.values[v].name);
                out_names.push(self.names[v].clone());
            }
        }
        for v in 0..g.values.len() {
            if self.names[v].is_empty() {
                self.names[v] = Self::unique(&mut self.used, &g.values[v].name);
            }
        }
        for &v in &g.inputs {
            let vi = &g.values[v];
            self.graph
                .input
                .push(value_info(&self.names[v], vi.dtype, &vi.shape));
        }
        let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
        for node in &g.nodes {
            self.node(node, &outputs);
        }
        for (k, &v) in g.outputs.iter().enumerate() {
            if out_alias.contains_key(&k) {
                let nm = self.node_name("Identity");
                self.graph.node.push(pb::NodeProto {
                    input: vec![self.names[v].clone()],
                    output: vec![out_names[k].clone()],
                    name: Some(nm),
                    op_type: Some("Identity".into()),
                    ..Default::default()
                });
            }
            let vi = &g.values[v];
            self.graph
                .output
                .push(value_info(&out_names[k], vi.dtype, &vi.shape));
        }
    }

    fn node_name(&mut self, stem: &str) -> String {
        Self::unique(&mut self.node_names, stem)
    }

    /// Adds an initializer and returns its name.
    fn init(&mut self, stem: &str, t: &Tensor) -> String {
        let name = Self::unique(&mut self.used, stem);
        self.graph.initializer.push(tensor_proto(&name, t));
        name
    }

    fn emit(
        &mut self,
        name: &str,
        op_type: &str,
        input: Vec<String>,
        output: Vec<String>,
        attribute: Vec<pb::AttributeProto>,
    ) {
        let nm = self.node_name(name);
        self.graph.node.push(pb::NodeProto {
            input,
            output,
            name: Some(nm),
            op_type: Some(op_type.into()),
            attribute,
            ..Default::default()
        });
    }

    fn conv_attrs(a: &ConvAttrs, kernel: &[usize]) -> Vec<pb::AttributeProto> {
        let mut pads = a.pads_begin.clone();
        pads.extend_from_slice(&a.pads_end);
        vec![
            attr_ints("kernel_shape", kernel),
            attr_ints("strides", &a.strides),
            attr_ints("dilations", &a.dilations),
            attr_ints("pads", &pads),
            attr_int("group", a.group as i64),
        ]
    }

    fn node(&mut self, node: &crate::compiler::ir::Node, graph_outputs: &HashSet<ValueId>) {
        let g = self.g;
        let ins: Vec<String> = node.inputs.iter().map(|&v| self.names[v].clone()).collect();
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&v| self.names[v].clone())
            .collect();
        let out0 = outs.first().cloned().unwrap_or_default();
        let nm = node.name.as_str();
        let simple = |op: &str| Some(op.to_string());
        let plain = match &node.op {
            Op::Identity | Op::StopGradient => simple("Identity"),
            Op::Add => simple("Add"),
            Op::Sub => simple("Sub"),
            Op::Mul => simple("Mul"),
            Op::Div => simple("Div"),
            Op::Neg => simple("Neg"),
            Op::Exp => simple("Exp"),
            Op::Log => simple("Log"),
            Op::Sqrt => simple("Sqrt"),
            Op::Relu => simple("Relu"),
            Op::Sigmoid => simple("Sigmoid"),
            Op::Tanh => simple("Tanh"),
            Op::Erf => simple("Erf"),
            Op::Greater => simple("Greater"),
            Op::Equal => simple("Equal"),
            Op::Where => simple("Where"),
            Op::MatMul => simple("MatMul"),
            // Written with attributes or constant operands below; every variant is listed, so
            // a new primitive must say how it is exported.
            Op::Constant(_)
            | Op::LeakyRelu { .. }
            | Op::Cast { .. }
            | Op::Transpose { .. }
            | Op::Reshape { .. }
            | Op::Expand { .. }
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Conv(_)
            | Op::ConvTranspose { .. } => None,
        };
        if let Some(op) = plain {
            self.emit(nm, &op, ins, outs, vec![]);
            return;
        }
        match &node.op {
            Op::Constant(t) => {
                if graph_outputs.contains(&node.outputs[0]) {
                    // An initializer cannot double as a graph output in every runtime.
                    let tp = tensor_proto("", t);
                    self.emit(nm, "Constant", vec![], outs, vec![attr_tensor("value", tp)]);
                } else {
                    self.graph.initializer.push(tensor_proto(&out0, t));
                }
            }
            Op::LeakyRelu { alpha } => self.emit(
                nm,
                "LeakyRelu",
                ins,
                outs,
                vec![attr_float("alpha", *alpha)],
            ),
            Op::Cast { to } => self.emit(
                nm,
                "Cast",
                ins,
                outs,
                vec![attr_int("to", onnx_dtype(*to) as i64)],
            ),
            Op::Transpose { perm } => {
                self.emit(nm, "Transpose", ins, outs, vec![attr_ints("perm", perm)])
            }
            Op::Reshape { shape } | Op::Expand { shape } => {
                let s = self.init(&format!("{out0}_shape"), &ints_tensor(&usizes(shape)));
                let op = if matches!(node.op, Op::Reshape { .. }) {
                    "Reshape"
                } else {
                    "Expand"
                };
                self.emit(nm, op, vec![ins[0].clone(), s], outs, vec![]);
            }
            Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                if axes.is_empty() {
                    // ONNX reads empty axes as "all axes"; the IR means "none".
                    self.emit(nm, "Identity", ins, outs, vec![]);
                } else if matches!(node.op, Op::ReduceSum { .. }) {
                    let a = self.init(&format!("{out0}_axes"), &ints_tensor(&usizes(axes)));
                    let attrs = vec![attr_int("keepdims", *keepdims as i64)];
                    self.emit(nm, "ReduceSum", vec![ins[0].clone(), a], outs, attrs);
                } else {
                    let attrs = vec![
                        attr_ints("axes", axes),
                        attr_int("keepdims", *keepdims as i64),
                    ];
                    self.emit(nm, "ReduceMax", ins, outs, attrs);
                }
            }
            Op::Concat { axis } => self.emit(
                nm,
                "Concat",
                ins,
                outs,
                vec![attr_int("axis", *axis as i64)],
            ),
            Op::Split { axis, sizes } => {
                let s = self.init(&format!("{out0}_split"), &ints_tensor(&usizes(sizes)));
                let attrs = vec![attr_int("axis", *axis as i64)];
                self.emit(nm, "Split", vec![ins[0].clone(), s], outs, attrs);
            }
            Op::Slice { starts, ends } => {
                let r = starts.len();
                let st = self.init(&format!("{out0}_starts"), &ints_tensor(&usizes(starts)));
                let en = self.init(&format!("{out0}_ends"), &ints_tensor(&usizes(ends)));
                let axes: Vec<i64> = (0..r as i64).collect();
                let ax = self.init(&format!("{out0}_axes"), &ints_tensor(&axes));
                self.emit(nm, "Slice", vec![ins[0].clone(), st, en, ax], outs, vec![]);
            }
            Op::Pad {
                begins,
                ends,
                value,
            } => {
                let dt = g.dtype(node.inputs[0]);
                self.pad(nm, &ins[0], &out0, begins, ends, *value, dt);
            }
            Op::Conv(a) => {
                let kernel = g.shape(node.inputs[1])[2..].to_vec();
                self.emit(nm, "Conv", ins, outs, Self::conv_attrs(a, &kernel));
            }
            Op::ConvTranspose { conv, out_spatial } => {
                let (y, w) = (node.inputs[0], node.inputs[1]);
                let kernel = g.shape(w)[2..].to_vec();
                let sy = g.shape(y);
                // The adjoint writes input position j·s + t·d − pb for every output j and tap t:
                // up to `reach` = s·(in−1) + (k−1)·d + 1 − pb positions. The IR conv's own
                // pads_end only fixed the forward extent, so ONNX gets pads_end = reach − out
                // (crop to exactly out_spatial), or 0 and a zero Pad for positions no window
                // reaches.
                let mut pads_end = Vec::with_capacity(kernel.len());
                let mut rest = Vec::with_capacity(kernel.len());
                for i in 0..kernel.len() {
                    let span = conv.dilations[i] * (kernel[i] - 1) + 1;
                    let reach = (conv.strides[i] * (sy[2 + i] - 1) + span)
                        .saturating_sub(conv.pads_begin[i]);
                    pads_end.push(reach.saturating_sub(out_spatial[i]));
                    rest.push(out_spatial[i].saturating_sub(reach));
                }
                let onnx_conv = ConvAttrs {
                    pads_end,
                    ..conv.clone()
                };
                let mut attrs = Self::conv_attrs(&onnx_conv, &kernel);
                attrs.push(attr_ints("output_padding", &vec![0; kernel.len()]));
                if rest.iter().all(|&r| r == 0) {
                    self.emit(nm, "ConvTranspose", ins, outs, attrs);
                } else {
                    let mid = Self::unique(&mut self.used, &format!("{out0}_natural"));
                    self.emit(nm, "ConvTranspose", ins, vec![mid.clone()], attrs);
                    let mut ends = vec![0, 0];
                    ends.extend(rest);
                    let begins = vec![0; ends.len()];
                    let dt = g.dtype(y);
                    self.pad(&format!("{nm}_pad"), &mid, &out0, &begins, &ends, 0.0, dt);
                }
            }
            _ => unreachable!("handled above"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pad(
        &mut self,
        nm: &str,
        x: &str,
        out: &str,
        begins: &[usize],
        ends: &[usize],
        value: f64,
        dt: DType,
    ) {
        let mut pads = usizes(begins);
        pads.extend(usizes(ends));
        let p = self.init(&format!("{out}_pads"), &ints_tensor(&pads));
        let v = self.init(&format!("{out}_value"), &Tensor::scalar(dt, value));
        let attrs = vec![pb::AttributeProto {
            name: Some("mode".into()),
            r#type: Some(pb::attribute_proto::AttributeType::String as i32),
            s: Some(b"constant".to_vec()),
            ..Default::default()
        }];
        self.emit(
            nm,
            "Pad",
            vec![x.to_string(), p, v],
            vec![out.to_string()],
            attrs,
        );
    }
}
