//! Elementwise ops: broadcasting binaries, unaries, comparisons, `Where` and `Cast`.

use super::broadcast_shapes;
use crate::compiler::ir::{DType, Graph, IrError, Node, Op, ValueId, ValueInfo};

/// Shape rule for the broadcasting binaries and comparisons.
pub fn infer_binary(
    op: &Op,
    a: &ValueInfo,
    b: &ValueInfo,
) -> Result<Vec<(DType, Vec<usize>)>, String> {
    if a.dtype != b.dtype {
        return Err(format!(
            "operand types differ ({:?} and {:?})",
            a.dtype, b.dtype
        ));
    }
    let shape = broadcast_shapes(&a.shape, &b.shape)?;
    let dtype = match op {
        Op::Greater | Op::Equal => DType::Bool,
        _ => a.dtype,
    };
    Ok(vec![(dtype, shape)])
}

/// Shape rule for `Where(cond, a, b)`.
pub fn infer_where(
    c: &ValueInfo,
    a: &ValueInfo,
    b: &ValueInfo,
) -> Result<Vec<(DType, Vec<usize>)>, String> {
    if c.dtype != DType::Bool {
        return Err("condition must be bool".into());
    }
    if a.dtype != b.dtype {
        return Err(format!(
            "branch types differ ({:?} and {:?})",
            a.dtype, b.dtype
        ));
    }
    let s = broadcast_shapes(&broadcast_shapes(&c.shape, &a.shape)?, &b.shape)?;
    Ok(vec![(a.dtype, s)])
}

/// Shape rule for the unaries (and `Cast`).
pub fn infer_unary(op: &Op, a: &ValueInfo) -> Result<Vec<(DType, Vec<usize>)>, String> {
    match op {
        Op::Cast { to } => Ok(vec![(*to, a.shape.clone())]),
        _ if !a.dtype.is_float() => Err(format!("needs a float operand, got {:?}", a.dtype)),
        _ => Ok(vec![(a.dtype, a.shape.clone())]),
    }
}

/// Derivative rules. `gy` is the cotangent of the single output.
pub fn vjp(g: &mut Graph, node: &Node, gy: ValueId) -> Result<Vec<Option<ValueId>>, IrError> {
    let x = node.inputs[0];
    let y = node.outputs[0];
    let sx = g.shape(x).to_vec();
    Ok(match &node.op {
        Op::Add => {
            let sb = g.shape(node.inputs[1]).to_vec();
            vec![Some(g.sum_to(gy, &sx)?), Some(g.sum_to(gy, &sb)?)]
        }
        Op::Sub => {
            let sb = g.shape(node.inputs[1]).to_vec();
            let n = g.neg(gy)?;
            vec![Some(g.sum_to(gy, &sx)?), Some(g.sum_to(n, &sb)?)]
        }
        Op::Mul => {
            let b = node.inputs[1];
            let sb = g.shape(b).to_vec();
            let da = g.mul(gy, b)?;
            let db = g.mul(gy, x)?;
            vec![Some(g.sum_to(da, &sx)?), Some(g.sum_to(db, &sb)?)]
        }
        Op::Div => {
            // d(a/b)/db = −(a/b)/b, written with the output so no new division by b² appears.
            let b = node.inputs[1];
            let sb = g.shape(b).to_vec();
            let da = g.div(gy, b)?;
            let gyy = g.mul(gy, y)?;
            let q = g.div(gyy, b)?;
            let db = g.neg(q)?;
            vec![Some(g.sum_to(da, &sx)?), Some(g.sum_to(db, &sb)?)]
        }
        Op::Where => {
            let (c, a, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
            let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
            let z = g.scalar_like(gy, 0.0);
            let ga = g.where_(c, gy, z)?;
            let gb = g.where_(c, z, gy)?;
            vec![None, Some(g.sum_to(ga, &sa)?), Some(g.sum_to(gb, &sb)?)]
        }
        Op::Neg => vec![Some(g.neg(gy)?)],
        Op::Exp => vec![Some(g.mul(gy, y)?)],
        Op::Log => vec![Some(g.div(gy, x)?)],
        Op::Sqrt => {
            let q = g.div(gy, y)?;
            vec![Some(g.scale(q, 0.5)?)]
        }
        Op::Relu => {
            let z = g.scalar_like(x, 0.0);
            let pos = g.greater(x, z)?;
            vec![Some(g.where_(pos, gy, z)?)]
        }
        Op::LeakyRelu { alpha } => {
            let z = g.scalar_like(x, 0.0);
            let pos = g.greater(x, z)?;
            let neg = g.scale(gy, *alpha)?;
            vec![Some(g.where_(pos, gy, neg)?)]
        }
        Op::Sigmoid => {
            let one = g.scalar_like(y, 1.0);
            let t = g.sub(one, y)?;
            let d = g.mul(y, t)?;
            vec![Some(g.mul(gy, d)?)]
        }
        Op::Tanh => {
            let one = g.scalar_like(y, 1.0);
            let y2 = g.mul(y, y)?;
            let d = g.sub(one, y2)?;
            vec![Some(g.mul(gy, d)?)]
        }
        Op::Erf => {
            let x2 = g.mul(x, x)?;
            let nx2 = g.neg(x2)?;
            let e = g.unary(Op::Exp, nx2)?;
            let d = g.scale(e, 2.0 / std::f64::consts::PI.sqrt())?;
            vec![Some(g.mul(gy, d)?)]
        }
        Op::Cast { .. } => {
            let from = g.dtype(x);
            if from.is_float() && g.dtype(gy).is_float() {
                vec![Some(g.unary(Op::Cast { to: from }, gy)?)]
            } else {
                vec![None]
            }
        }
        other => unreachable!("{} is not elementwise", other.name()),
    })
}
