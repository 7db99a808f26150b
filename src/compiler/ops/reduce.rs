//! Reductions over static axes.

use crate::compiler::ir::{DType, Graph, IrError, Node, Op, ValueId, ValueInfo};

/// The shape a reduction keeps (reduced axes set to 1).
pub fn kept_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

/// Shape rule.
pub fn infer(
    a: &ValueInfo,
    axes: &[usize],
    keepdims: bool,
) -> Result<Vec<(DType, Vec<usize>)>, String> {
    if let Some(&bad) = axes.iter().find(|&&ax| ax >= a.shape.len()) {
        return Err(format!("axis {bad} out of range for shape {:?}", a.shape));
    }
    let shape = if keepdims {
        kept_shape(&a.shape, axes)
    } else {
        a.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(vec![(a.dtype, shape)])
}

/// Sum: broadcast the cotangent back. Max: route it to the maximal elements (every tied one).
pub fn vjp(g: &mut Graph, node: &Node, gy: ValueId) -> Result<Vec<Option<ValueId>>, IrError> {
    let x = node.inputs[0];
    let sx = g.shape(x).to_vec();
    let axes = match &node.op {
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => axes.clone(),
        other => unreachable!("{} is not a reduction", other.name()),
    };
    let keep = kept_shape(&sx, &axes);
    let gk = g.reshape(gy, &keep)?;
    let dx = match &node.op {
        Op::ReduceSum { .. } => g.expand(gk, &sx)?,
        _ => {
            let yk = g.reshape(node.outputs[0], &keep)?;
            let hit = g.push1("", Op::Equal, &[x, yk])?;
            let z = g.scalar_like(x, 0.0);
            let w = g.where_(hit, gk, z)?;
            g.expand(w, &sx)?
        }
    };
    Ok(vec![Some(dx)])
}
