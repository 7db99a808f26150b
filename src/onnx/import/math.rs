//! Arithmetic: elementwise ops and activations, comparisons, Where, Cast, Gemm, MatMul, softmax
//! and reductions, each lowered to IR primitives.

use super::proto::{as_ints, axes, axis, ir_dtype, NodeRef};
use super::{Ctx, Val, OP_TABLE_REF};
use crate::compiler::ir::{Op, ValueId};
use crate::compiler::model::InitRule;
use crate::compiler::ops::{Cast, LeakyRelu, ReduceMax};
use anyhow::{anyhow, bail, Result};

/// Add, Sub, Mul, Div, and Pow with a constant exponent.
pub fn binary(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (an, bn) = (n.req(0)?, n.req(1)?);
    if n.op == "Pow" {
        return pow(cx, an, bn);
    }
    norm_affine_roles(cx, n, an, bn);
    let (a, b) = (cx.ir(an)?, cx.ir(bn)?);
    Ok(match n.op {
        "Add" => cx.g.add(a, b)?,
        "Sub" => cx.g.sub(a, b)?,
        "Mul" => cx.g.mul(a, b)?,
        _ => cx.g.div(a, b)?,
    })
}

/// A norm exported as normalisation followed by `Mul` (scale) and `Add` (shift), as PyTorch's
/// GroupNorm is: the operands are the norm's parameters (ones and zeros by default). A constant
/// there means the exporter folded the parameter away.
fn norm_affine_roles(cx: &mut Ctx, n: &NodeRef, an: &str, bn: &str) {
    let (src, other) = match n.op {
        "Mul" if cx.normalized.contains(an) => (an, bn),
        "Mul" if cx.normalized.contains(bn) => (bn, an),
        "Add" if cx.norm_scaled.contains(an) => (an, bn),
        "Add" if cx.norm_scaled.contains(bn) => (bn, an),
        _ => return,
    };
    let _ = src;
    let (rule, trivial) = if n.op == "Mul" {
        (InitRule::Ones, 1.0)
    } else {
        (InitRule::Zeros, 0.0)
    };
    if cx.param_of(other).is_some() {
        cx.set_role(other, rule);
    } else if let Some(t) = cx.as_const(other) {
        if t.data.iter().any(|&v| v != trivial) {
            let what = if n.op == "Mul" { "scale" } else { "shift" };
            cx.warn(format!(
                "the normalisation {what} in node '{}' is a constant, not a parameter: the exporter folded the norm's \
                 affine parameters, which will not be trained; re-export keeping every parameter ({})",
                n.name,
                super::EXPORT_REF
            ));
        }
    }
    if n.op == "Mul" {
        if let Some(o) = n.p.output.first() {
            cx.norm_scaled.insert(o.clone());
        }
    }
}

fn pow(cx: &mut Ctx, an: &str, bn: &str) -> Result<ValueId> {
    let e = match cx.as_const(bn) {
        Some(t) if !t.data.is_empty() && t.data.iter().all(|&v| v == t.data[0]) => t.data[0],
        _ => bail!("only a constant scalar exponent is supported ({OP_TABLE_REF})"),
    };
    let x = cx.ir(an)?;
    let g = &mut cx.g;
    Ok(match e {
        1.0 => x,
        2.0 => g.mul(x, x)?,
        3.0 => {
            let x2 = g.mul(x, x)?;
            g.mul(x2, x)?
        }
        0.5 => g.unary(Op::Sqrt, x)?,
        -1.0 => {
            let one = g.scalar_like(x, 1.0);
            g.div(one, x)?
        }
        -0.5 => {
            let s = g.unary(Op::Sqrt, x)?;
            let one = g.scalar_like(x, 1.0);
            g.div(one, s)?
        }
        _ => {
            // x^e = exp(e·ln x), defined for x > 0 (what non-integer powers need anyway).
            let l = g.unary(Op::Log, x)?;
            let s = g.scale(l, e)?;
            g.unary(Op::Exp, s)?
        }
    })
}

/// Unary ops and activations.
pub fn unary(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = cx.ir(n.req(0)?)?;
    let g = &mut cx.g;
    Ok(match n.op {
        "Neg" => g.neg(x)?,
        "Relu" => g.unary(Op::Relu, x)?,
        "Sigmoid" => g.unary(Op::Sigmoid, x)?,
        "Tanh" => g.unary(Op::Tanh, x)?,
        "Exp" => g.unary(Op::Exp, x)?,
        "Log" => g.unary(Op::Log, x)?,
        "Sqrt" => g.unary(Op::Sqrt, x)?,
        "Erf" => g.unary(Op::Erf, x)?,
        "LeakyRelu" => g.unary(
            Op::LeakyRelu(LeakyRelu {
                alpha: n.float("alpha", 0.01),
            }),
            x,
        )?,
        "Reciprocal" => {
            let one = g.scalar_like(x, 1.0);
            g.div(one, x)?
        }
        "Abs" => {
            let z = g.scalar_like(x, 0.0);
            let pos = g.greater(x, z)?;
            let m = g.neg(x)?;
            g.where_(pos, x, m)?
        }
        "Softplus" => {
            // ln(1 + eˣ) = relu(x) + ln(1 + e^−|x|), stable for large |x|.
            let z = g.scalar_like(x, 0.0);
            let pos = g.greater(x, z)?;
            let m = g.neg(x)?;
            let ab = g.where_(pos, x, m)?;
            let na = g.neg(ab)?;
            let e = g.unary(Op::Exp, na)?;
            let one = g.scalar_like(x, 1.0);
            let s = g.add(one, e)?;
            let l = g.unary(Op::Log, s)?;
            let r = g.unary(Op::Relu, x)?;
            g.add(r, l)?
        }
        "Elu" => {
            let alpha = n.float("alpha", 1.0);
            let z = g.scalar_like(x, 0.0);
            let pos = g.greater(x, z)?;
            let neg_part = g.where_(pos, z, x)?;
            let e = g.unary(Op::Exp, neg_part)?;
            let one = g.scalar_like(x, 1.0);
            let em1 = g.sub(e, one)?;
            let s = g.scale(em1, alpha)?;
            g.where_(pos, x, s)?
        }
        "HardSigmoid" | "HardSwish" => {
            let (alpha, beta) = if n.op == "HardSwish" {
                (1.0 / 6.0, 0.5)
            } else {
                (n.float("alpha", 0.2), n.float("beta", 0.5))
            };
            let ax = g.scale(x, alpha)?;
            let b = g.scalar_like(x, beta);
            let lin = g.add(ax, b)?;
            let hs = clip(g, lin, Some(0.0), Some(1.0))?;
            if n.op == "HardSwish" {
                g.mul(x, hs)?
            } else {
                hs
            }
        }
        "Clip" => {
            let bound = |cx: &Ctx, i: usize, attr: &str| -> Result<Option<f64>> {
                match n.input(i) {
                    Some(nm) => match cx.as_const(nm) {
                        Some(t) => Ok(t.data.first().copied()),
                        None => bail!("Clip bounds must be constant"),
                    },
                    None => Ok(n.attr(attr).and_then(|a| a.f).map(|f| f as f64)),
                }
            };
            let lo = bound(cx, 1, "min")?;
            let hi = bound(cx, 2, "max")?;
            clip(&mut cx.g, x, lo, hi)?
        }
        "Gelu" => {
            let g = &mut cx.g;
            match n.string("approximate", "none").as_str() {
                "none" => crate::compiler::lower::gelu(g, x)?,
                "tanh" => {
                    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
                    let x2 = g.mul(x, x)?;
                    let x3 = g.mul(x2, x)?;
                    let c = g.scale(x3, 0.044715)?;
                    let inner = g.add(x, c)?;
                    let s = g.scale(inner, (2.0 / std::f64::consts::PI).sqrt())?;
                    let t = g.unary(Op::Tanh, s)?;
                    let one = g.scalar_like(x, 1.0);
                    let p = g.add(one, t)?;
                    let h = g.scale(x, 0.5)?;
                    g.mul(h, p)?
                }
                other => bail!("approximate='{other}' is not supported"),
            }
        }
        other => bail!("{other} is not a unary op"),
    })
}

/// min(max(x, lo), hi) with Greater and Where (the gradient passes where x is inside).
fn clip(
    g: &mut crate::compiler::ir::Graph,
    x: ValueId,
    lo: Option<f64>,
    hi: Option<f64>,
) -> Result<ValueId> {
    let mut y = x;
    if let Some(lo) = lo {
        let l = g.scalar_like(x, lo);
        let below = g.greater(l, y)?;
        y = g.where_(below, l, y)?;
    }
    if let Some(hi) = hi {
        let h = g.scalar_like(x, hi);
        let above = g.greater(y, h)?;
        y = g.where_(above, h, y)?;
    }
    Ok(y)
}

/// Comparisons (booleans, no gradient).
pub fn compare(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (a, b) = (cx.ir(n.req(0)?)?, cx.ir(n.req(1)?)?);
    let g = &mut cx.g;
    Ok(match n.op {
        "Greater" => g.greater(a, b)?,
        "Less" => g.greater(b, a)?,
        "Equal" => g.push1("", Op::Equal, &[a, b])?,
        "GreaterOrEqual" | "LessOrEqual" => {
            let (p, q) = if n.op == "GreaterOrEqual" {
                (b, a)
            } else {
                (a, b)
            };
            // a ≥ b ⇔ ¬(b > a): Where(b > a, false, true).
            let gt = g.greater(p, q)?;
            let f = g.const_tensor(crate::compiler::ir::DType::Bool, vec![], vec![0.0]);
            let t = g.const_tensor(crate::compiler::ir::DType::Bool, vec![], vec![1.0]);
            g.where_(gt, f, t)?
        }
        other => bail!("{other} is not a comparison"),
    })
}

/// Where.
pub fn where_(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let c = cx.ir(n.req(0)?)?;
    let a = cx.ir(n.req(1)?)?;
    let b = cx.ir(n.req(2)?)?;
    Ok(cx.g.where_(c, a, b)?)
}

/// Cast and CastLike. Float-to-float casts vanish (the graph has one float type).
pub fn cast(cx: &mut Ctx, n: &NodeRef) -> Result<Val> {
    let x = n.req(0)?;
    let to = if n.op == "Cast" {
        ir_dtype(n.int("to", 0) as i32, cx.fdt)?
    } else {
        cx.dtype(n.req(1)?)?
    };
    if cx.dtype(x)? == to {
        return Ok(cx.get(x)?.clone());
    }
    let v = cx.ir(x)?;
    Ok(Val::Ir(cx.g.unary(Op::Cast(Cast { to }), v)?))
}

/// Gemm: alpha·A'·B' + beta·C.
pub fn gemm(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (an, bn) = (n.req(0)?, n.req(1)?);
    let (ta, tb) = (n.int("transA", 0) != 0, n.int("transB", 0) != 0);
    let (sa, sb) = (cx.shape(an)?, cx.shape(bn)?);
    if sa.len() != 2 || sb.len() != 2 {
        bail!("operands must be matrices, got {sa:?} and {sb:?}");
    }
    let k = if ta { sa[0] } else { sa[1] };
    // A linear layer: the parameter operand is the weight, C its bias (PyTorch defaults).
    if cx.param_of(bn).is_some() {
        cx.set_role(bn, InitRule::KaimingUniform { fan_in: k });
    } else if cx.param_of(an).is_some() {
        cx.set_role(an, InitRule::KaimingUniform { fan_in: k });
    }
    let a = cx.ir(an)?;
    let b = cx.ir(bn)?;
    let a = if ta { cx.g.transpose_last2(a)? } else { a };
    let b = if tb { cx.g.transpose_last2(b)? } else { b };
    let y = cx.g.matmul(a, b)?;
    let y = cx.g.scale(y, n.float("alpha", 1.0))?;
    match n.input(2) {
        None => Ok(y),
        Some(cn) => {
            cx.set_role(cn, InitRule::UniformBias { fan_in: k });
            let c = cx.ir(cn)?;
            let c = cx.g.scale(c, n.float("beta", 1.0))?;
            Ok(cx.g.add(y, c)?)
        }
    }
}

/// MatMul with numpy semantics for 1-D operands (promoted to matrices, then squeezed).
pub fn matmul(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (an, bn) = (n.req(0)?, n.req(1)?);
    let (sa, sb) = (cx.shape(an)?, cx.shape(bn)?);
    if sa.is_empty() || sb.is_empty() {
        bail!("operands must have rank ≥ 1");
    }
    let k = sa[sa.len() - 1];
    if cx.param_of(bn).is_some() && cx.param_of(an).is_none() {
        cx.set_role(bn, InitRule::KaimingUniform { fan_in: k });
    }
    let mut a = cx.ir(an)?;
    let mut b = cx.ir(bn)?;
    if sa.len() == 1 {
        a = cx.g.reshape(a, &[1, sa[0]])?;
    }
    if sb.len() == 1 {
        b = cx.g.reshape(b, &[sb[0], 1])?;
    }
    let y = cx.g.matmul(a, b)?;
    if sa.len() > 1 && sb.len() > 1 {
        return Ok(y);
    }
    let mut s = cx.g.shape(y).to_vec();
    if sb.len() == 1 {
        s.pop();
    }
    if sa.len() == 1 {
        let r = s.len();
        s.remove(r - if sb.len() == 1 { 1 } else { 2 });
    }
    Ok(cx.g.reshape(y, &s)?)
}

/// Softmax and LogSoftmax, stabilised by the (gradient-free) maximum.
pub fn softmax(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let xn = n.req(0)?;
    let r = cx.shape(xn)?.len();
    // Before opset 13 the op worked on the input flattened to 2-D at `axis` (default 1).
    let ax: Vec<usize> = if cx.opset >= 13 {
        vec![axis(n.int("axis", -1), r)?]
    } else {
        let a = axis(n.int("axis", 1), r)?;
        (a..r).collect()
    };
    let x = cx.ir(xn)?;
    let g = &mut cx.g;
    Ok(if n.op == "Softmax" {
        crate::compiler::lower::softmax(g, x, &ax)?
    } else {
        crate::compiler::lower::log_softmax(g, x, &ax)?
    })
}

/// ReduceSum, ReduceMean, ReduceMax, ReduceMin (axes from the attribute or the input).
pub fn reduce(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let xn = n.req(0)?;
    let r = cx.shape(xn)?.len();
    let a = match n.input(1) {
        Some(an) => Some(as_ints(&cx.konst(an).map_err(|e| anyhow!("axes: {e}"))?)),
        None => n.ints("axes"),
    };
    let x = cx.ir(xn)?;
    let ax = match a {
        Some(a) if !a.is_empty() => axes(&a, r)?,
        _ if n.int("noop_with_empty_axes", 0) != 0 => return Ok(x),
        _ => (0..r).collect(),
    };
    let keep = n.int("keepdims", 1) != 0;
    let g = &mut cx.g;
    Ok(match n.op {
        "ReduceSum" => g.reduce_sum(x, &ax, keep)?,
        "ReduceMean" => g.reduce_mean(x, &ax, keep)?,
        "ReduceMax" => g.push1(
            "",
            Op::ReduceMax(ReduceMax {
                axes: ax,
                keepdims: keep,
            }),
            &[x],
        )?,
        _ => {
            let m = g.neg(x)?;
            let r = g.push1(
                "",
                Op::ReduceMax(ReduceMax {
                    axes: ax,
                    keepdims: keep,
                }),
                &[m],
            )?;
            g.neg(r)?
        }
    })
}
