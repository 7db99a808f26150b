//! Matrix product with batch broadcasting.

use super::broadcast_shapes;
use crate::compiler::ir::{DType, Graph, IrError, Node, ValueId, ValueInfo};

/// Shape rule: `[..., m, k] @ [..., k, n] → [..., m, n]`, both ranks ≥ 2.
pub fn infer(a: &ValueInfo, b: &ValueInfo) -> Result<Vec<(DType, Vec<usize>)>, String> {
    if a.dtype != b.dtype || !a.dtype.is_float() {
        return Err(format!(
            "needs two float operands of one type, got {:?} and {:?}",
            a.dtype, b.dtype
        ));
    }
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(format!(
            "operands must have rank ≥ 2, got {:?} and {:?}",
            a.shape, b.shape
        ));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!(
            "inner dimensions differ: {:?} @ {:?}",
            a.shape, b.shape
        ));
    }
    let mut s = broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    s.push(m);
    s.push(n);
    Ok(vec![(a.dtype, s)])
}

/// `dA = dY Bᵀ`, `dB = Aᵀ dY`, each summed back over broadcast batch axes.
pub fn vjp(g: &mut Graph, node: &Node, gy: ValueId) -> Result<Vec<Option<ValueId>>, IrError> {
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
    let bt = g.transpose_last2(b)?;
    let da = g.matmul(gy, bt)?;
    let at = g.transpose_last2(a)?;
    let db = g.matmul(at, gy)?;
    Ok(vec![Some(g.sum_to(da, &sa)?), Some(g.sum_to(db, &sb)?)])
}
