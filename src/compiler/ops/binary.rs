//! Broadcasting elementwise primitives of several operands: arithmetic, comparisons and `Where`.

use super::export_form::Export;
use super::{
    broadcast_shapes, operand, operands, per_result_element, result_cotangent, result_shape,
    Cotangents, OutTypes, Primitive,
};
use crate::compiler::ir::{DType, Graph, Node, ValueId, ValueInfo};
use ndarray::{ArrayD, IxDyn, Zip};

/// Shape rule of a broadcasting binary: operands of one type; `result` gives the result type.
fn binary_types(inputs: &[&ValueInfo], result: Option<DType>) -> OutTypes {
    let [a, b] = operands::<2>(inputs)?;
    if a.dtype != b.dtype {
        return Err(format!(
            "operand types differ ({:?} and {:?})",
            a.dtype, b.dtype
        ));
    }
    let shape = broadcast_shapes(&a.shape, &b.shape)?;
    Ok(vec![(result.unwrap_or(a.dtype), shape)])
}

/// The reference kernel of a broadcasting binary.
fn broadcast2(
    inputs: &[&ArrayD<f64>],
    f: impl Fn(f64, f64) -> f64,
) -> Result<Vec<ArrayD<f64>>, String> {
    let (a, b) = (operand(inputs, 0)?, operand(inputs, 1)?);
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast")?;
    Ok(vec![Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y))])
}

/// A broadcasting binary with its kernel and derivative: `$vjp` gives the two operands'
/// cotangents before they are summed back to the operands' shapes (`$x`, `$b` operands, `$y`
/// result, `$gy` the result's cotangent); `$result` is the result type (`None`: the operands').
macro_rules! broadcasting_binary {
    ($(#[$doc:meta])* $name:ident, $result:expr, $kernel:expr,
     |$g:ident, $x:ident, $b:ident, $y:ident, $gy:ident| $vjp:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name;

        impl Primitive for $name {
            fn name(&self) -> &'static str {
                stringify!($name)
            }
            fn broadcasts(&self) -> bool {
                true
            }
            fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
                binary_types(inputs, $result)
            }
            #[allow(unused_variables)]
            fn vjp(&self, $g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
                let $gy = result_cotangent(node, cots)?;
                let ($x, $b, $y) = (node.inputs[0], node.inputs[1], node.outputs[0]);
                let (sa, sb) = ($g.shape($x).to_vec(), $g.shape($b).to_vec());
                let grads: Option<(ValueId, ValueId)> = $vjp;
                Ok(match grads {
                    Some((da, db)) => vec![Some($g.sum_to(da, &sa)?), Some($g.sum_to(db, &sb)?)],
                    None => vec![None, None],
                })
            }
            fn eval(
                &self,
                inputs: &[&ArrayD<f64>],
                _outs: &[&[usize]],
            ) -> Result<Vec<ArrayD<f64>>, String> {
                broadcast2(inputs, $kernel)
            }
            fn export(&self, _inputs: &[&ValueInfo]) -> Export {
                Export::plain(stringify!($name), 2)
            }
            fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
                per_result_element(outputs)
            }
        }
    };
}

broadcasting_binary!(
    /// a + b.
    Add, None, |x, y| x + y, |g, a, b, y, gy| Some((gy, gy))
);
broadcasting_binary!(
    /// a − b.
    Sub, None, |x, y| x - y, |g, a, b, y, gy| Some((gy, g.neg(gy)?))
);
broadcasting_binary!(
    /// a · b.
    Mul, None, |x, y| x * y, |g, a, b, y, gy| Some((g.mul(gy, b)?, g.mul(gy, a)?))
);
broadcasting_binary!(
    /// a / b.
    Div, None, |x, y| x / y, |g, a, b, y, gy| {
        // d(a/b)/db = −(a/b)/b, written with the result so no new division by b² appears.
        let da = g.div(gy, b)?;
        let gyy = g.mul(gy, y)?;
        let q = g.div(gyy, b)?;
        Some((da, g.neg(q)?))
    }
);
broadcasting_binary!(
    /// a > b (bool; no gradient).
    Greater, Some(DType::Bool), |x, y| f64::from(u8::from(x > y)), |g, a, b, y, gy| None
);
broadcasting_binary!(
    /// a == b (bool; no gradient).
    Equal, Some(DType::Bool), |x, y| f64::from(u8::from(x == y)), |g, a, b, y, gy| None
);

/// cond ? a : b, broadcasting; the gradient flows to a and b.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Where;

impl Primitive for Where {
    fn name(&self) -> &'static str {
        "Where"
    }
    fn broadcasts(&self) -> bool {
        true
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [c, a, b] = operands::<3>(inputs)?;
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
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let (c, a, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        let z = g.scalar_like(gy, 0.0);
        let ga = g.where_(c, gy, z)?;
        let gb = g.where_(c, z, gy)?;
        Ok(vec![
            None,
            Some(g.sum_to(ga, &sa)?),
            Some(g.sum_to(gb, &sb)?),
        ])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let shape = IxDyn(result_shape(outs, 0)?);
        let c = operand(inputs, 0)?
            .broadcast(shape.clone())
            .ok_or("broadcast")?;
        let x = operand(inputs, 1)?
            .broadcast(shape.clone())
            .ok_or("broadcast")?;
        let y = operand(inputs, 2)?.broadcast(shape).ok_or("broadcast")?;
        Ok(vec![Zip::from(&c)
            .and(&x)
            .and(&y)
            .map_collect(|&c, &x, &y| if c != 0.0 { x } else { y })])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::plain("Where", 3)
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}
