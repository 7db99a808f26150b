//! One-operand elementwise primitives: pass-throughs, the float functions, `LeakyRelu` and
//! `Cast`.

use super::export_form::{AttrValue, Export, ExportNode};
use super::{
    operand, operands, per_result_element, result_cotangent, Cotangents, OutTypes, Primitive,
};
use crate::compiler::ir::{DType, Graph, Node, Op, ValueId, ValueInfo};
use ndarray::ArrayD;

/// Shape rule of a float function: same type and shape, float operand.
fn float_like(inputs: &[&ValueInfo]) -> OutTypes {
    let [a] = operands::<1>(inputs)?;
    if !a.dtype.is_float() {
        return Err(format!("needs a float operand, got {:?}", a.dtype));
    }
    Ok(vec![(a.dtype, a.shape.clone())])
}

/// Shape rule of a pass-through: any type.
fn same_as_operand(inputs: &[&ValueInfo]) -> OutTypes {
    let [a] = operands::<1>(inputs)?;
    Ok(vec![(a.dtype, a.shape.clone())])
}

/// A float function with its kernel and derivative: `$vjp` is the operand's cotangent, written
/// with the graph `$g`, the operand `$x`, the result `$y` and the result's cotangent `$gy`.
macro_rules! float_function {
    ($(#[$doc:meta])* $name:ident, $kernel:expr, |$g:ident, $x:ident, $y:ident, $gy:ident| $vjp:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name;

        impl Primitive for $name {
            fn name(&self) -> &'static str {
                stringify!($name)
            }
            fn broadcasts(&self) -> bool {
                false
            }
            fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
                float_like(inputs)
            }
            #[allow(unused_variables)]
            fn vjp(&self, $g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
                let $gy = result_cotangent(node, cots)?;
                let ($x, $y) = (node.inputs[0], node.outputs[0]);
                Ok(vec![Some($vjp)])
            }
            fn eval(
                &self,
                inputs: &[&ArrayD<f64>],
                _outs: &[&[usize]],
            ) -> Result<Vec<ArrayD<f64>>, String> {
                let kernel: fn(f64) -> f64 = $kernel;
                Ok(vec![operand(inputs, 0)?.mapv(kernel)])
            }
            fn export(&self, _inputs: &[&ValueInfo]) -> Export {
                Export::plain(stringify!($name), 1)
            }
            fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
                per_result_element(outputs)
            }
        }
    };
}

float_function!(
    /// −x.
    Neg, |x| -x, |g, x, y, gy| g.neg(gy)?
);
float_function!(
    /// eˣ.
    Exp, f64::exp, |g, x, y, gy| g.mul(gy, y)?
);
float_function!(
    /// ln x.
    Log, f64::ln, |g, x, y, gy| g.div(gy, x)?
);
float_function!(
    /// √x.
    Sqrt, f64::sqrt, |g, x, y, gy| {
        let q = g.div(gy, y)?;
        g.scale(q, 0.5)?
    }
);
float_function!(
    /// max(x, 0).
    Relu, |x| x.max(0.0), |g, x, y, gy| {
        let z = g.scalar_like(x, 0.0);
        let pos = g.greater(x, z)?;
        g.where_(pos, gy, z)?
    }
);
float_function!(
    /// 1/(1+e⁻ˣ).
    Sigmoid, |x| 1.0 / (1.0 + (-x).exp()), |g, x, y, gy| {
        let one = g.scalar_like(y, 1.0);
        let t = g.sub(one, y)?;
        let d = g.mul(y, t)?;
        g.mul(gy, d)?
    }
);
float_function!(
    /// tanh x.
    Tanh, f64::tanh, |g, x, y, gy| {
        let one = g.scalar_like(y, 1.0);
        let y2 = g.mul(y, y)?;
        let d = g.sub(one, y2)?;
        g.mul(gy, d)?
    }
);
float_function!(
    /// The error function.
    Erf, erf, |g, x, y, gy| {
        let x2 = g.mul(x, x)?;
        let nx2 = g.neg(x2)?;
        let e = g.unary(Op::Exp, nx2)?;
        let d = g.scale(e, 2.0 / std::f64::consts::PI.sqrt())?;
        g.mul(gy, d)?
    }
);

/// Pass-through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity;

impl Primitive for Identity {
    fn name(&self) -> &'static str {
        "Identity"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        same_as_operand(inputs)
    }
    fn vjp(&self, _g: &mut Graph, _node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        Ok(vec![cots.first().copied().flatten()])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        Ok(vec![operand(inputs, 0)?.clone()])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::plain("Identity", 1)
    }
    fn flops(&self, _inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        0.0
    }
}

/// Pass-through whose derivative is zero (the max in a stable softmax, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopGradient;

impl Primitive for StopGradient {
    fn name(&self) -> &'static str {
        "StopGradient"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        same_as_operand(inputs)
    }
    fn vjp(&self, _g: &mut Graph, node: &Node, _cots: &[Option<ValueId>]) -> Cotangents {
        Ok(vec![None; node.inputs.len()])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        Ok(vec![operand(inputs, 0)?.clone()])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::plain("Identity", 1)
    }
    fn flops(&self, _inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        0.0
    }
}

/// x for x > 0, αx otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyRelu {
    /// Negative slope.
    pub alpha: f64,
}

impl Primitive for LeakyRelu {
    fn name(&self) -> &'static str {
        "LeakyRelu"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        float_like(inputs)
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let x = node.inputs[0];
        let z = g.scalar_like(x, 0.0);
        let pos = g.greater(x, z)?;
        let neg = g.scale(gy, self.alpha)?;
        Ok(vec![Some(g.where_(pos, gy, neg)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let al = self.alpha;
        Ok(vec![operand(inputs, 0)?.mapv(|x| {
            if x > 0.0 {
                x
            } else {
                al * x
            }
        })])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("LeakyRelu", 1).attr("alpha", AttrValue::Float(self.alpha)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

/// Element type conversion (no gradient unless float → float).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cast {
    /// Target type.
    pub to: DType,
}

impl Primitive for Cast {
    fn name(&self) -> &'static str {
        "Cast"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        Ok(vec![(self.to, a.shape.clone())])
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let from = g.dtype(node.inputs[0]);
        Ok(if from.is_float() && g.dtype(gy).is_float() {
            vec![Some(g.unary(Op::Cast(Cast { to: from }), gy)?)]
        } else {
            vec![None]
        })
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let to = self.to;
        Ok(vec![operand(inputs, 0)?.mapv(|x| round_to(to, x))])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(ExportNode::on_operands("Cast", 1).attr("to", AttrValue::Type(self.to)))
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

/// `v` as a value of type `dtype` would hold it.
fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::I64 => v.trunc(),
        DType::Bool => {
            if v != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// The error function (Abramowitz–Stegun 7.1.26 is too coarse for f64 checks, so this uses the
/// series for small |x| and the continued fraction for large |x|).
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: 2/√π Σ (−1)ⁿ x^(2n+1) / (n! (2n+1)).
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc continued fraction (Lentz), accurate for |x| ≥ 2.5.
        let x2 = ax * ax;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..200 {
            let an = k as f64 / 2.0;
            d = ax + an * d;
            d = 1.0 / d;
            c = ax + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-x2).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}
