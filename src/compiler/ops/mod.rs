//! The primitive ops, one module per family. Each module holds the family's shape rule and its
//! derivative rule (a vector-Jacobian product emitted as more primitives, so the transform can
//! differentiate what it produced).

pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod matmul;
pub mod reduce;

use super::ir::{DType, Graph, IrError, Node, Op, ValueId, ValueInfo};

// Node insertion lives here rather than in `ir`, so the IR stays a plain data structure and the
// shape rules it consults are the op families' own.
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
    /// Whether the op broadcasts its operands numpy-style (so an `Expand` feeding it can be
    /// dropped). Every variant is listed: a new primitive must say.
    pub fn broadcasts(&self) -> bool {
        match self {
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Where | Op::Greater | Op::Equal => true,
            Op::Constant(_)
            | Op::Identity
            | Op::StopGradient
            | Op::Neg
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Erf
            | Op::LeakyRelu { .. }
            | Op::Cast { .. }
            | Op::MatMul
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
            | Op::ConvTranspose { .. } => false,
        }
    }
}

/// Output dtypes and shapes of `op` applied to operands of the given types.
pub fn infer(op: &Op, inputs: &[&ValueInfo]) -> Result<Vec<(DType, Vec<usize>)>, String> {
    let want = |n: usize| -> Result<(), String> {
        if inputs.len() == n {
            Ok(())
        } else {
            Err(format!("expects {n} operands, got {}", inputs.len()))
        }
    };
    match op {
        Op::Constant(t) => {
            want(0)?;
            Ok(vec![(t.dtype, t.shape.clone())])
        }
        Op::Identity | Op::StopGradient => {
            want(1)?;
            Ok(vec![(inputs[0].dtype, inputs[0].shape.clone())])
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Greater | Op::Equal => {
            want(2)?;
            elementwise::infer_binary(op, inputs[0], inputs[1])
        }
        Op::Where => {
            want(3)?;
            elementwise::infer_where(inputs[0], inputs[1], inputs[2])
        }
        Op::Neg
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Erf
        | Op::LeakyRelu { .. }
        | Op::Cast { .. } => {
            want(1)?;
            elementwise::infer_unary(op, inputs[0])
        }
        Op::MatMul => {
            want(2)?;
            matmul::infer(inputs[0], inputs[1])
        }
        Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
            want(1)?;
            reduce::infer(inputs[0], axes, *keepdims)
        }
        Op::Transpose { .. }
        | Op::Reshape { .. }
        | Op::Expand { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Pad { .. } => layout::infer(op, inputs),
        Op::Conv(a) => {
            want(2)?;
            conv::infer_conv(a, inputs[0], inputs[1])
        }
        Op::ConvTranspose { conv, out_spatial } => {
            want(2)?;
            conv::infer_conv_transpose(conv, out_spatial, inputs[0], inputs[1])
        }
    }
}

/// Emits, into `g`, the cotangents of `node`'s inputs given the cotangents of its outputs
/// (`None` = zero). Returns one entry per input; `None` where the input gets no gradient.
pub fn vjp(
    g: &mut Graph,
    node: &Node,
    cots: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>, IrError> {
    let n_in = node.inputs.len();
    // Ops with one output: a missing cotangent means nothing flows back.
    if node.outputs.len() == 1 && cots[0].is_none() {
        return Ok(vec![None; n_in]);
    }
    match &node.op {
        Op::Constant(_) | Op::StopGradient | Op::Greater | Op::Equal => Ok(vec![None; n_in]),
        Op::Identity => Ok(vec![cots[0]]),
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Where
        | Op::Neg
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Erf
        | Op::LeakyRelu { .. }
        | Op::Cast { .. } => elementwise::vjp(g, node, cots[0].expect("checked above")),
        Op::MatMul => matmul::vjp(g, node, cots[0].expect("checked above")),
        Op::ReduceSum { .. } | Op::ReduceMax { .. } => {
            reduce::vjp(g, node, cots[0].expect("checked above"))
        }
        Op::Transpose { .. }
        | Op::Reshape { .. }
        | Op::Expand { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Pad { .. } => layout::vjp(g, node, cots),
        Op::Conv(_) | Op::ConvTranspose { .. } => {
            conv::vjp(g, node, cots[0].expect("checked above"))
        }
    }
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
