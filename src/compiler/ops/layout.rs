//! Data-movement ops: transpose, reshape, expand, concat, split, slice, pad.

use super::broadcast_shapes;
use crate::compiler::ir::{numel, DType, Graph, IrError, Node, Op, ValueId, ValueInfo};

/// Shape rule for the layout family.
pub fn infer(op: &Op, inputs: &[&ValueInfo]) -> Result<Vec<(DType, Vec<usize>)>, String> {
    let one = || -> Result<&ValueInfo, String> {
        match inputs {
            [a] => Ok(*a),
            _ => Err(format!("expects 1 operand, got {}", inputs.len())),
        }
    };
    match op {
        Op::Transpose { perm } => {
            let a = one()?;
            let mut seen = vec![false; a.shape.len()];
            if perm.len() != a.shape.len()
                || perm
                    .iter()
                    .any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!(
                    "perm {perm:?} is not a permutation of the axes of {:?}",
                    a.shape
                ));
            }
            Ok(vec![(a.dtype, perm.iter().map(|&p| a.shape[p]).collect())])
        }
        Op::Reshape { shape } => {
            let a = one()?;
            if numel(shape) != numel(&a.shape) {
                return Err(format!("cannot reshape {:?} to {shape:?}", a.shape));
            }
            Ok(vec![(a.dtype, shape.clone())])
        }
        Op::Expand { shape } => {
            let a = one()?;
            let b = broadcast_shapes(&a.shape, shape)?;
            if &b != shape {
                return Err(format!("cannot expand {:?} to {shape:?}", a.shape));
            }
            Ok(vec![(a.dtype, b)])
        }
        Op::Concat { axis } => {
            let a = inputs.first().ok_or("expects at least 1 operand")?;
            if *axis >= a.shape.len() {
                return Err(format!("axis {axis} out of range for {:?}", a.shape));
            }
            let mut s = a.shape.clone();
            s[*axis] = 0;
            for b in inputs {
                let same = b.shape.len() == a.shape.len()
                    && b.shape
                        .iter()
                        .zip(&a.shape)
                        .enumerate()
                        .all(|(i, (x, y))| i == *axis || x == y);
                if !same || b.dtype != a.dtype {
                    return Err(format!(
                        "operands {:?} and {:?} do not concatenate on axis {axis}",
                        a.shape, b.shape
                    ));
                }
                s[*axis] += b.shape[*axis];
            }
            Ok(vec![(a.dtype, s)])
        }
        Op::Split { axis, sizes } => {
            let a = one()?;
            if *axis >= a.shape.len() || sizes.iter().sum::<usize>() != a.shape[*axis] {
                return Err(format!(
                    "sizes {sizes:?} do not split axis {axis} of {:?}",
                    a.shape
                ));
            }
            Ok(sizes
                .iter()
                .map(|&n| {
                    let mut s = a.shape.clone();
                    s[*axis] = n;
                    (a.dtype, s)
                })
                .collect())
        }
        Op::Slice { starts, ends } => {
            let a = one()?;
            let r = a.shape.len();
            if starts.len() != r || ends.len() != r {
                return Err(format!("needs bounds for all {r} axes"));
            }
            let mut s = Vec::with_capacity(r);
            for i in 0..r {
                if starts[i] > ends[i] || ends[i] > a.shape[i] {
                    return Err(format!(
                        "bounds {}..{} out of range for axis {i} of {:?}",
                        starts[i], ends[i], a.shape
                    ));
                }
                s.push(ends[i] - starts[i]);
            }
            Ok(vec![(a.dtype, s)])
        }
        Op::Pad { begins, ends, .. } => {
            let a = one()?;
            if begins.len() != a.shape.len() || ends.len() != a.shape.len() {
                return Err(format!("needs pads for all {} axes", a.shape.len()));
            }
            Ok(vec![(
                a.dtype,
                a.shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| d + begins[i] + ends[i])
                    .collect(),
            )])
        }
        other => unreachable!("{} is not a layout op", other.name()),
    }
}

/// Derivative rules: each op's adjoint is another layout op.
pub fn vjp(
    g: &mut Graph,
    node: &Node,
    cots: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>, IrError> {
    let x = node.inputs[0];
    let sx = g.shape(x).to_vec();
    Ok(match &node.op {
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![cots[0].map(|c| g.transpose(c, &inv)).transpose()?]
        }
        Op::Reshape { .. } => vec![cots[0].map(|c| g.reshape(c, &sx)).transpose()?],
        Op::Expand { .. } => vec![cots[0].map(|c| g.sum_to(c, &sx)).transpose()?],
        Op::Concat { axis } => {
            let Some(c) = cots[0] else {
                return Ok(vec![None; node.inputs.len()]);
            };
            let sizes: Vec<usize> = node.inputs.iter().map(|&i| g.shape(i)[*axis]).collect();
            let parts = g.push("", Op::Split { axis: *axis, sizes }, &[c])?;
            parts.into_iter().map(Some).collect()
        }
        Op::Split { axis, .. } => {
            if cots.iter().all(Option::is_none) {
                return Ok(vec![None]);
            }
            let mut parts = Vec::with_capacity(cots.len());
            for (k, c) in cots.iter().enumerate() {
                parts.push(match c {
                    Some(c) => *c,
                    None => {
                        let o = node.outputs[k];
                        g.zeros_like(o)?
                    }
                });
            }
            vec![Some(g.push1("", Op::Concat { axis: *axis }, &parts)?)]
        }
        Op::Slice { starts, ends } => {
            let Some(c) = cots[0] else {
                return Ok(vec![None]);
            };
            let tail: Vec<usize> = ends.iter().zip(&sx).map(|(e, d)| d - e).collect();
            vec![Some(g.push1(
                "",
                Op::Pad {
                    begins: starts.clone(),
                    ends: tail,
                    value: 0.0,
                },
                &[c],
            )?)]
        }
        Op::Pad { begins, .. } => {
            let Some(c) = cots[0] else {
                return Ok(vec![None]);
            };
            let ends: Vec<usize> = begins.iter().zip(&sx).map(|(b, d)| b + d).collect();
            vec![Some(g.push1(
                "",
                Op::Slice {
                    starts: begins.clone(),
                    ends,
                },
                &[c],
            )?)]
        }
        other => unreachable!("{} is not a layout op", other.name()),
    })
}
