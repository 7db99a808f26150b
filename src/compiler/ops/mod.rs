//! The primitive ops. Each primitive is a type implementing [`Primitive`], which holds every rule
//! the compiler needs for it: the shape rule, the derivative rule (a vector-Jacobian product
//! emitted as more primitives, so the transform can differentiate what it produced), the f64
//! reference kernel, the ONNX form it is written as, and its cost. The trait has no default
//! methods, so a primitive that lacks a rule does not compile; [`Op`] lists each primitive once.
//!
//! One module per family: `constant`, `unary`, `binary`, `matmul`, `reduce`, `layout`, `conv`,
//! `norm`, `pool`.

pub mod binary;
pub mod constant;
pub mod conv;
mod conv_batched;
mod conv_point;
pub mod export_form;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod unary;

pub use binary::{Add, Div, Equal, Greater, Mul, Sub, Where};
pub use conv::{ConvTranspose, ConvWeightGrad};
pub use export_form::{AttrValue, Export, ExportNode, Operand, Output};
pub use layout::{Concat, Expand, Gather, Pad, Reshape, Slice, Split, Transpose};
pub use matmul::MatMul;
pub use norm::InstanceNorm;
pub use pool::{AvgPool, Upsample};
pub use reduce::{ReduceMax, ReduceSum};
pub use unary::{
    Cast, Erf, Exp, Identity, LeakyRelu, Log, Neg, Relu, Sigmoid, Sqrt, StopGradient, Tanh,
};

use super::ir::{DType, Graph, IrError, Node, Op, ValueId, ValueInfo};
use ndarray::ArrayD;

/// Output types of a primitive: one (dtype, shape) per result.
pub type OutTypes = Result<Vec<(DType, Vec<usize>)>, String>;
/// Cotangents of a node's operands: one per operand, `None` where no gradient flows.
pub type Cotangents = Result<Vec<Option<ValueId>>, IrError>;

/// Every rule the compiler needs for one primitive.
pub trait Primitive {
    /// The name shown in messages and op tables.
    fn name(&self) -> &'static str;
    /// Whether the operands broadcast numpy-style (so an `Expand` feeding one can be dropped).
    fn broadcasts(&self) -> bool;
    /// Output dtypes and shapes for operands of the given types.
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes;
    /// Emits, into `g`, the cotangents of `node`'s operands given those of its results
    /// (`None` = zero; for a single-result node the cotangent is always present).
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents;
    /// The reference kernel in f64: the results for these operands (`outs`: the result shapes).
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String>;
    /// How the primitive is written in plain ONNX, for operands of these types.
    fn export(&self, inputs: &[&ValueInfo]) -> Export;
    /// Floating-point operations for operands and results of these shapes (a multiply-add is 2).
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> f64;
}

// Node insertion lives here rather than in `ir`, so the IR stays a plain data structure and the
// shape rules it consults are the primitives' own.
impl Graph {
    /// Appends a node, inferring its output types. Returns the output values.
    pub fn push(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[ValueId],
    ) -> Result<Vec<ValueId>, IrError> {
        let infos: Vec<&ValueInfo> = inputs.iter().map(|&i| &self.values[i]).collect();
        let outs = infer(&op, &infos).map_err(|msg| IrError::Shape {
            node: name.to_string(),
            op: op.name(),
            msg,
        })?;
        let stem = if name.is_empty() { op.name() } else { name };
        let mut ids = Vec::with_capacity(outs.len());
        for (dtype, shape) in outs {
            let id = self.values.len();
            let vname = self.fresh_name(stem);
            self.values.push(ValueInfo {
                name: vname,
                dtype,
                shape,
            });
            ids.push(id);
        }
        let node_name = if name.is_empty() {
            format!("{}_{}", op.name(), self.nodes.len())
        } else {
            name.to_string()
        };
        self.nodes.push(Node {
            name: node_name,
            op,
            inputs: inputs.to_vec(),
            outputs: ids.clone(),
        });
        Ok(ids)
    }

    /// Appends a single-output node (panics in debug if the op has several outputs).
    pub fn push1(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId, IrError> {
        let outs = self.push(name, op, inputs)?;
        debug_assert_eq!(outs.len(), 1);
        Ok(outs[0])
    }
}

impl Op {
    /// The op's name as shown in messages and op tables.
    pub fn name(&self) -> &'static str {
        self.rules().name()
    }

    /// Whether the op broadcasts its operands numpy-style (so an `Expand` feeding it can be
    /// dropped).
    pub fn broadcasts(&self) -> bool {
        self.rules().broadcasts()
    }
}

/// Output dtypes and shapes of `op` applied to operands of the given types.
pub fn infer(op: &Op, inputs: &[&ValueInfo]) -> OutTypes {
    op.rules().infer(inputs)
}

/// Emits, into `g`, the cotangents of `node`'s inputs given the cotangents of its outputs
/// (`None` = zero). Returns one entry per input; `None` where the input gets no gradient.
pub fn vjp(g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
    // Ops with one output: a missing cotangent means nothing flows back.
    if node.outputs.len() == 1 && cots.first().is_none_or(Option::is_none) {
        return Ok(vec![None; node.inputs.len()]);
    }
    node.op.rules().vjp(g, node, cots)
}

/// The cotangent of a single-result node, which [`vjp`] only asks a rule for when it is present.
fn result_cotangent(node: &Node, cots: &[Option<ValueId>]) -> Result<ValueId, IrError> {
    cots.first()
        .copied()
        .flatten()
        .ok_or_else(|| IrError::Shape {
            node: node.name.clone(),
            op: node.op.name(),
            msg: "no cotangent for its result".into(),
        })
}

/// Checks the operand count.
fn operands<'a, const N: usize>(inputs: &[&'a ValueInfo]) -> Result<[&'a ValueInfo; N], String> {
    <[&ValueInfo; N]>::try_from(inputs)
        .map_err(|_| format!("expects {N} operands, got {}", inputs.len()))
}

/// The one operand of a unary reference kernel.
fn operand<'a>(inputs: &[&'a ArrayD<f64>], k: usize) -> Result<&'a ArrayD<f64>, String> {
    inputs
        .get(k)
        .copied()
        .ok_or_else(|| format!("operand {k} is missing"))
}

/// The shape of result `k`.
fn result_shape<'a>(outs: &[&'a [usize]], k: usize) -> Result<&'a [usize], String> {
    outs.get(k)
        .copied()
        .ok_or_else(|| format!("result {k} is missing"))
}

/// Elements of all results: the cost of an op doing one operation per result element.
fn per_result_element(outputs: &[&[usize]]) -> f64 {
    outputs.iter().map(|s| super::ir::numel(s) as f64).sum()
}

/// Numpy broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}
