//! How a primitive is written in plain ONNX, as data: the ONNX nodes, their operands and
//! attributes. The `onnx` exporter turns this into protobuf, so the compiler knows ONNX's
//! operator set without depending on its file format.

use std::borrow::Cow;

use crate::compiler::ir::{DType, Graph, Tensor};

/// The ONNX form of one primitive node.
#[derive(Clone, Debug, PartialEq)]
pub enum Export {
    /// A constant: an initializer named after the result (or a `Constant` node where the
    /// result is also a graph output).
    Initializer(Tensor),
    /// One or more ONNX nodes, in order.
    Nodes(Vec<ExportNode>),
    /// Other primitives: a graph whose inputs are the node's operands and whose outputs are its
    /// results, each of its nodes written in its own form.
    Graph(Graph),
}

/// One ONNX node.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportNode {
    /// The ONNX operator.
    pub op_type: &'static str,
    /// Appended to the IR node's name (empty for the first node).
    pub name_suffix: Cow<'static, str>,
    /// Operands, in order.
    pub inputs: Vec<Operand>,
    /// Results, in order.
    pub outputs: Vec<Output>,
    /// Attributes, in order.
    pub attrs: Vec<(&'static str, AttrValue)>,
}

/// An operand of an exported node.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// The IR node's operand `k`.
    Input(usize),
    /// A value made by an earlier node of the same form, named `{result}_{stem}`.
    Temp(Cow<'static, str>),
    /// A constant operand (ONNX takes some static attributes as inputs), an initializer named
    /// `{result}_{stem}`.
    Constant(Cow<'static, str>, Tensor),
    /// An optional operand left out (written as an empty name, as ONNX marks one).
    Absent,
}

/// A result of an exported node.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The IR node's results, all of them, in order.
    Results,
    /// A value for a later node of the same form, named `{result}_{stem}`.
    Temp(Cow<'static, str>),
}

/// An ONNX attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A float (ONNX stores it as f32).
    Float(f64),
    /// A string.
    Str(&'static str),
    /// An element type.
    Type(DType),
}

impl ExportNode {
    /// A node applying `op_type` to the IR node's operands, giving its results.
    pub fn on_operands(op_type: &'static str, operands: usize) -> ExportNode {
        ExportNode {
            op_type,
            name_suffix: Cow::Borrowed(""),
            inputs: (0..operands).map(Operand::Input).collect(),
            outputs: vec![Output::Results],
            attrs: vec![],
        }
    }

    /// The same node with an attribute added.
    pub fn attr(mut self, name: &'static str, value: AttrValue) -> ExportNode {
        self.attrs.push((name, value));
        self
    }

    /// The same node with a constant operand appended.
    pub fn constant(mut self, stem: impl Into<Cow<'static, str>>, value: Tensor) -> ExportNode {
        self.inputs.push(Operand::Constant(stem.into(), value));
        self
    }
}

impl Export {
    /// One node applying `op_type` to the operands, with no attributes.
    pub fn plain(op_type: &'static str, operands: usize) -> Export {
        Export::Nodes(vec![ExportNode::on_operands(op_type, operands)])
    }

    /// One node.
    pub fn node(node: ExportNode) -> Export {
        Export::Nodes(vec![node])
    }
}

/// An int64 tensor of rank 1.
pub fn ints(v: &[i64]) -> Tensor {
    Tensor::new(
        DType::I64,
        vec![v.len()],
        v.iter().map(|&x| x as f64).collect(),
    )
}

/// Indices as ONNX integers.
pub fn usizes(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// ONNX `Pad` (constant mode) of operand `x`: pads as an int64 operand, the fill value as a
/// scalar of the operand's type.
pub fn pad_node(
    x: Operand,
    begins: &[usize],
    ends: &[usize],
    value: f64,
    dtype: DType,
) -> ExportNode {
    let mut pads = usizes(begins);
    pads.extend(usizes(ends));
    ExportNode {
        op_type: "Pad",
        name_suffix: Cow::Borrowed(""),
        inputs: vec![
            x,
            Operand::Constant("pads".into(), ints(&pads)),
            Operand::Constant("value".into(), Tensor::scalar(dtype, value)),
        ],
        outputs: vec![Output::Results],
        attrs: vec![("mode", AttrValue::Str("constant"))],
    }
}
