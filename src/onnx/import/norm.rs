//! Normalisations: InstanceNormalization, LayerNormalization, GroupNormalization and
//! BatchNormalization: the instance norm, and the batch norm with batch statistics (as the
//! instance norm of one image holding the whole batch), as the fused primitive; the others
//! lowered to mean/variance reductions and elementwise ops. Their scale and
//! shift are parameters (PyTorch initialises them to ones and zeros); a norm whose scale or
//! shift is a non-trivial constant was folded by the exporter, which is reported.

use super::proto::{axis, NodeRef};
use super::tensor::fconst;
use super::{BatchNormMode, BatchNormReason, Ctx, Val, EXPORT_REF};
use crate::compiler::ir::{numel, ValueId};
use crate::compiler::model::{InitRule, NormStatistics};
use anyhow::{bail, Result};

/// (x − mean) / √(var + ε) over `axes`; returns (y, mean, 1/√(var + ε)) with kept axes.
fn normalise(
    cx: &mut Ctx,
    x: ValueId,
    axes: &[usize],
    eps: f64,
) -> Result<(ValueId, ValueId, ValueId)> {
    Ok(crate::compiler::ops::norm::standardize(
        &mut cx.g, x, axes, eps,
    )?)
}

/// Applies `y·scale + shift` with the operands reshaped to `shape` (for broadcasting). A
/// parameter gets the norm init rule; a constant that is all ones (zeros) is skipped, another
/// constant is applied and reported.
fn affine(
    cx: &mut Ctx,
    n: &NodeRef,
    y: ValueId,
    scale: Option<&str>,
    shift: Option<&str>,
    shape: &[usize],
) -> Result<ValueId> {
    let mut y = y;
    for (nm, is_scale) in [(scale, true), (shift, false)] {
        let Some(nm) = nm else { continue };
        let trivial = if is_scale { 1.0 } else { 0.0 };
        if cx.param_of(nm).is_some() {
            cx.set_role(
                nm,
                if is_scale {
                    InitRule::Ones
                } else {
                    InitRule::Zeros
                },
            );
        } else if let Some(t) = cx.as_const(nm) {
            if t.data.iter().all(|&v| v == trivial) {
                continue;
            }
            let what = if is_scale { "scale" } else { "shift" };
            cx.warn(format!(
                "the {what} of normalisation node '{}' is a constant, not a parameter: the exporter folded the norm's \
                 affine parameters, which will not be trained; re-export keeping every parameter ({EXPORT_REF})",
                n.name
            ));
        }
        let v = cx.ir(nm)?;
        let v = cx.g.reshape(v, shape)?;
        y = if is_scale {
            cx.g.mul(y, v)?
        } else {
            cx.g.add(y, v)?
        };
    }
    Ok(y)
}

fn channel_shape(c: usize, r: usize) -> Vec<usize> {
    let mut s = vec![c];
    s.extend(std::iter::repeat_n(1, r - 2));
    s
}

/// InstanceNormalization. Inside PyTorch's GroupNorm pattern (Reshape → InstanceNormalization
/// with constant ones/zeros → Reshape → Mul → Add) the scale and shift are structural
/// constants, not parameters; the Mul/Add that follow carry the real ones.
pub fn instance_norm(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let xn = n.req(0)?;
    let s = cx.shape(xn)?;
    if s.len() < 3 {
        bail!("input {s:?} must be [N, C, spatial…]");
    }
    let grouped = cx.reshaped.contains(xn);
    let x = cx.ir(xn)?;
    // The fused primitive with a unit scale and a zero shift; the affine map below is kept
    // apart, since its operands may be parameters, structural constants or folded ones.
    let y =
        crate::compiler::lower::instance_norm(&mut cx.g, x, None, None, n.float("epsilon", 1e-5))?;
    let shape = channel_shape(s[1], s.len());
    let (sc, sh) = (n.req(1)?, n.req(2)?);
    let y = if grouped {
        // Structural constants: read them, never make them parameters.
        let (ts, tb) = (cx.konst(sc)?, cx.konst(sh)?);
        let trivial = ts.data.iter().all(|&v| v == 1.0) && tb.data.iter().all(|&v| v == 0.0);
        if trivial {
            y
        } else {
            cx.warn(format!(
                "normalisation node '{}' has a constant non-trivial scale or shift: the exporter folded the norm's \
                 affine parameters, which will not be trained; re-export keeping every parameter ({EXPORT_REF})",
                n.name
            ));
            let a = cx.g.constant(ts);
            let a = cx.g.reshape(a, &shape)?;
            let b = cx.g.constant(tb);
            let b = cx.g.reshape(b, &shape)?;
            let y = cx.g.mul(y, a)?;
            cx.g.add(y, b)?
        }
    } else {
        affine(cx, n, y, Some(sc), Some(sh), &shape)?
    };
    if grouped {
        if let Some(o) = n.p.output.first() {
            cx.normalized.insert(o.clone());
        }
    }
    Ok(y)
}

/// LayerNormalization (outputs Y, and optionally Mean and InvStdDev).
pub fn layer_norm(cx: &mut Ctx, n: &NodeRef) -> Result<Vec<Val>> {
    let xn = n.req(0)?;
    let s = cx.shape(xn)?;
    let a = axis(n.int("axis", -1), s.len())?;
    let ax: Vec<usize> = (a..s.len()).collect();
    let x = cx.ir(xn)?;
    let (y, mean, inv) = normalise(cx, x, &ax, n.float("epsilon", 1e-5))?;
    let y = affine(cx, n, y, Some(n.req(1)?), n.input(2), &s[a..])?;
    Ok(vec![Val::Ir(y), Val::Ir(mean), Val::Ir(inv)])
}

/// GroupNormalization (scale and shift per channel, or per group as in opset 18).
pub fn group_norm(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let xn = n.req(0)?;
    let s = cx.shape(xn)?;
    if s.len() < 3 {
        bail!("input {s:?} must be [N, C, spatial…]");
    }
    let (nb, c) = (s[0], s[1]);
    let groups = usize::try_from(n.int("num_groups", 0)).unwrap_or(0);
    if groups == 0 || !c.is_multiple_of(groups) {
        bail!("num_groups {groups} does not divide {c} channels");
    }
    let rest: usize = s[1..].iter().product::<usize>() / groups;
    let x = cx.ir(xn)?;
    let xg = cx.g.reshape(x, &[nb, groups, rest])?;
    let y =
        crate::compiler::lower::instance_norm(&mut cx.g, xg, None, None, n.float("epsilon", 1e-5))?;
    let (sc, sh) = (n.req(1)?, n.req(2)?);
    let per_group = cx.shape(sc)?.iter().product::<usize>() == groups && groups != c;
    if per_group {
        let y = affine(cx, n, y, Some(sc), Some(sh), &[groups, 1])?;
        return Ok(cx.g.reshape(y, &s)?);
    }
    let y = cx.g.reshape(y, &s)?;
    affine(cx, n, y, Some(sc), Some(sh), &channel_shape(c, s.len()))
}

/// What the dynamo exporter recorded about the ATen op it traced for an inference-form node: it
/// names the node (and fills its metadata) after the op, `_native_batch_norm_legit_functional`
/// for a model in train() and `_native_batch_norm_legit_no_training` for one in eval().
fn traced_mode(n: &NodeRef) -> Option<NormStatistics> {
    let texts = std::iter::once(n.name.as_str())
        .chain(n.p.metadata_props.iter().filter_map(|e| e.value.as_deref()));
    let mut found = None;
    for t in texts {
        if t.contains("batch_norm_legit_no_training") {
            return Some(NormStatistics::Running);
        }
        if t.contains("batch_norm_legit_functional") {
            found = Some(NormStatistics::Batch);
        }
    }
    found
}

/// BatchNormalization with batch statistics (PyTorch's `train()` forward) or the file's running
/// statistics, as [`BatchNormMode`] decides; the choice is recorded per node.
pub fn batch_norm(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let xn = n.req(0)?;
    let s = cx.shape(xn)?;
    if s.len() < 2 {
        bail!("input {s:?} must be [N, C, …]");
    }
    let c = s[1];
    let shape = channel_shape(c, s.len().max(2));
    let eps = n.float("epsilon", 1e-5);
    let x = cx.ir(xn)?;
    let training_form = n.int("training_mode", 0) != 0;
    // Running statistics are buffers, not parameters: read them. Without values in the file they
    // are PyTorch's initial ones (mean 0, variance 1).
    let stat = |cx: &mut Ctx, i: usize, default: f64| -> Result<Vec<f64>> {
        match cx.konst(n.req(i)?) {
            Ok(t) if t.data.len() == c => Ok(t.data),
            Ok(t) => bail!("statistics of shape {:?} do not fit {c} channels", t.shape),
            Err(_) if cx.is_valueless_input(n.req(i)?) => Ok(vec![default; c]),
            Err(e) => Err(e),
        }
    };
    let (stats, why) = match cx.batchnorm_mode {
        BatchNormMode::Batch => (NormStatistics::Batch, None),
        BatchNormMode::Running => (NormStatistics::Running, None),
        BatchNormMode::Auto if training_form => (NormStatistics::Batch, None),
        BatchNormMode::Auto => match traced_mode(n) {
            Some(stats) => (stats, Some(BatchNormReason::Traced)),
            None => {
                let untouched = stat(cx, 3, 0.0)?.iter().all(|&v| v == 0.0)
                    && stat(cx, 4, 1.0)?.iter().all(|&v| v == 1.0);
                if untouched {
                    (NormStatistics::Batch, Some(BatchNormReason::Statistics))
                } else {
                    (NormStatistics::Running, Some(BatchNormReason::Statistics))
                }
            }
        },
    };
    cx.batchnorm.insert(n.name.clone(), (stats, why));
    let (sc, sh) = (n.req(1)?, n.req(2)?);
    if stats == NormStatistics::Batch {
        // The instance norm of one image whose plane is every image's positions: [N, C, S…]
        // → [1, C, N·S]. Its fused primitive (and the derivative it brings) replaces the mean
        // and variance reductions; trained scale and shift become its operands.
        let trained = cx.param_of(sc).is_some() && cx.param_of(sh).is_some();
        let mut perm = vec![1, 0];
        perm.extend(2..s.len());
        let xt = cx.g.transpose(x, &perm)?;
        let x3 = cx.g.reshape(xt, &[1, c, numel(&s) / c.max(1)])?;
        let (a, b) = if trained {
            cx.set_role(sc, InitRule::Ones);
            cx.set_role(sh, InitRule::Zeros);
            let a = cx.ir(sc)?;
            let b = cx.ir(sh)?;
            (Some(cx.g.reshape(a, &[c])?), Some(cx.g.reshape(b, &[c])?))
        } else {
            (None, None)
        };
        let y3 = crate::compiler::lower::instance_norm(&mut cx.g, x3, a, b, eps)?;
        let mut st = vec![c, s[0]];
        st.extend(&s[2..]);
        let yt = cx.g.reshape(y3, &st)?;
        // Swapping the first two axes is its own inverse.
        let y = cx.g.transpose(yt, &perm)?;
        return if trained {
            Ok(y)
        } else {
            affine(cx, n, y, Some(sc), Some(sh), &shape)
        };
    }
    let mean = stat(cx, 3, 0.0)?;
    let var = stat(cx, 4, 1.0)?;
    let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let m = fconst(cx, shape.clone(), mean);
    let i = fconst(cx, shape.clone(), inv);
    let xc = cx.g.sub(x, m)?;
    let y = cx.g.mul(xc, i)?;
    affine(cx, n, y, Some(sc), Some(sh), &shape)
}
