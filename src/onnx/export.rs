//! Export of an IR [`Graph`] to a plain ONNX model (default domain, opset [`OPSET`]).
//!
//! Every IR primitive says, as data, which standard ONNX ops it is written as (its
//! [`Primitive::export`](crate::compiler::ops::Primitive::export) rule), so any runtime that
//! implements opset 17 can run the artifacts unchanged: constants become initializers, static
//! attributes that ONNX takes as inputs (reshape targets, reduction axes, slice bounds, pads)
//! become int64 initializers named after the result they serve.

use super::onnx_dtype;
use super::pb;
use crate::compiler::ir::{DType, Graph, Tensor, ValueId, ValueInfo};
use crate::compiler::ops::{AttrValue, Export, Operand, Output};
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
    super::twin_nodes::merge(&mut ex.graph);
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

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
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
        let names = std::mem::take(&mut self.names);
        for node in &g.nodes {
            self.node(g, &names, node, &outputs);
        }
        self.names = names;
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

    fn attribute(name: &str, value: &AttrValue) -> pb::AttributeProto {
        match value {
            AttrValue::Int(v) => attr_int(name, *v),
            AttrValue::Ints(v) => attr_ints(name, v),
            AttrValue::Float(v) => attr_float(name, *v),
            AttrValue::Type(t) => attr_int(name, onnx_dtype(*t) as i64),
            AttrValue::Str(v) => pb::AttributeProto {
                name: Some(name.into()),
                r#type: Some(pb::attribute_proto::AttributeType::String as i32),
                s: Some(v.as_bytes().to_vec()),
                ..Default::default()
            },
        }
    }

    /// Writes the nodes of `sub`, the form of `node`: its inputs are the node's operands `ins`,
    /// its outputs the node's results `outs`, its other values get names of their own.
    fn subgraph(
        &mut self,
        sub: &Graph,
        node: &crate::compiler::ir::Node,
        ins: &[String],
        outs: &[String],
    ) {
        let out0 = outs.first().cloned().unwrap_or_default();
        let mut names = vec![String::new(); sub.values.len()];
        for (&v, name) in sub.inputs.iter().zip(ins) {
            names[v] = name.clone();
        }
        for (&v, name) in sub.outputs.iter().zip(outs) {
            names[v] = name.clone();
        }
        for (v, name) in names.iter_mut().enumerate() {
            if name.is_empty() {
                *name = Self::unique(&mut self.used, &format!("{out0}_{}", sub.values[v].name));
            }
        }
        for sn in &sub.nodes {
            let inner = crate::compiler::ir::Node {
                name: format!("{}_{}", node.name, sn.name),
                ..sn.clone()
            };
            self.node(sub, &names, &inner, &HashSet::new());
        }
    }

    /// Writes one node of `g` (whose values are named by `names`) in the ONNX form its primitive
    /// gives.
    fn node(
        &mut self,
        g: &Graph,
        names: &[String],
        node: &crate::compiler::ir::Node,
        graph_outputs: &HashSet<ValueId>,
    ) {
        let ins: Vec<String> = node.inputs.iter().map(|&v| names[v].clone()).collect();
        let outs: Vec<String> = node.outputs.iter().map(|&v| names[v].clone()).collect();
        let out0 = outs.first().cloned().unwrap_or_default();
        let infos: Vec<&ValueInfo> = node.inputs.iter().map(|&v| g.info(v)).collect();
        let nodes = match node.op.rules().export(&infos) {
            Export::Initializer(t) => {
                if node
                    .outputs
                    .first()
                    .is_some_and(|o| graph_outputs.contains(o))
                {
                    // An initializer cannot double as a graph output in every runtime.
                    let tp = tensor_proto("", &t);
                    self.emit(
                        &node.name,
                        "Constant",
                        vec![],
                        outs,
                        vec![attr_tensor("value", tp)],
                    );
                } else {
                    self.graph.initializer.push(tensor_proto(&out0, &t));
                }
                return;
            }
            Export::Nodes(nodes) => nodes,
            Export::Graph(sub) => {
                self.subgraph(&sub, node, &ins, &outs);
                return;
            }
        };
        let mut temps: HashMap<&str, String> = HashMap::new();
        for en in &nodes {
            let mut input = Vec::with_capacity(en.inputs.len());
            for operand in &en.inputs {
                input.push(match operand {
                    Operand::Input(k) => ins.get(*k).cloned().unwrap_or_default(),
                    Operand::Temp(stem) => temps.get(stem.as_ref()).cloned().unwrap_or_default(),
                    Operand::Constant(stem, t) => self.init(&format!("{out0}_{stem}"), t),
                    Operand::Absent => String::new(),
                });
            }
            let mut output = Vec::new();
            for o in &en.outputs {
                match o {
                    Output::Results => output.extend(outs.iter().cloned()),
                    Output::Temp(stem) => {
                        let name = Self::unique(&mut self.used, &format!("{out0}_{stem}"));
                        temps.insert(stem.as_ref(), name.clone());
                        output.push(name);
                    }
                }
            }
            let attrs = en
                .attrs
                .iter()
                .map(|(name, v)| Self::attribute(name, v))
                .collect();
            let name = format!("{}{}", node.name, en.name_suffix);
            self.emit(&name, en.op_type, input, output, attrs);
        }
    }
}
