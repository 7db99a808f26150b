//! Matrix product with batch broadcasting.

use super::export_form::Export;
use super::{
    broadcast_shapes, operand, operands, result_cotangent, result_shape, Cotangents, OutTypes,
    Primitive,
};
use crate::compiler::ir::{numel, Graph, Node, ValueId, ValueInfo};
use ndarray::{ArrayD, Axis, IxDyn};

/// Matrix product `[..., m, k] @ [..., k, n] → [..., m, n]` with batch broadcasting (both ranks
/// ≥ 2 after import).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul;

impl Primitive for MatMul {
    fn name(&self) -> &'static str {
        "MatMul"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a, b] = operands::<2>(inputs)?;
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
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        let bt = g.transpose_last2(b)?;
        let da = g.matmul(gy, bt)?;
        let at = g.transpose_last2(a)?;
        let db = g.matmul(at, gy)?;
        Ok(vec![Some(g.sum_to(da, &sa)?), Some(g.sum_to(db, &sb)?)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let (a, b) = (operand(inputs, 0)?, operand(inputs, 1)?);
        let out_shape = result_shape(outs, 0)?;
        let r = out_shape.len();
        if r < 2 || a.ndim() < 2 {
            return Err("operands must have rank ≥ 2".into());
        }
        let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
        let k = a.shape()[a.ndim() - 1];
        let batch = &out_shape[..r - 2];
        let mut sa = batch.to_vec();
        sa.extend([m, k]);
        let mut sb = batch.to_vec();
        sb.extend([k, n]);
        let av = a.broadcast(IxDyn(&sa)).ok_or("broadcast")?;
        let bv = b.broadcast(IxDyn(&sb)).ok_or("broadcast")?;
        let nb: usize = batch.iter().product();
        let av = av
            .as_standard_layout()
            .into_shape_with_order((nb, m, k))
            .map_err(|e| e.to_string())?
            .to_owned();
        let bv = bv
            .as_standard_layout()
            .into_shape_with_order((nb, k, n))
            .map_err(|e| e.to_string())?
            .to_owned();
        let mut out = ndarray::Array3::<f64>::zeros((nb, m, n));
        for i in 0..nb {
            out.index_axis_mut(Axis(0), i)
                .assign(&av.index_axis(Axis(0), i).dot(&bv.index_axis(Axis(0), i)));
        }
        Ok(vec![out
            .into_shape_with_order(IxDyn(out_shape))
            .map_err(|e| e.to_string())?])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::plain("MatMul", 2)
    }
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        let k = inputs.first().and_then(|a| a.last()).copied().unwrap_or(0);
        let out = outputs.first().map_or(0, |s| numel(s));
        2.0 * out as f64 * k as f64
    }
}
