//! Composite operations written as primitives: normalisations, pooling, softmax and the loss.
//! Builders and the ONNX importer both lower through these, so derivative rules exist only for
//! the primitive set.

use super::emit::R;
use super::ir::{ConvAttrs, Graph, IrError, Op, ValueId};
use crate::compiler::ops::norm::standardize;
use crate::compiler::ops::{AvgPool, InstanceNorm, ReduceMax, Slice};

/// Instance normalisation of `x` \[N,C,…\] with per-channel affine `scale`, `bias` \[C\]
/// (PyTorch `GroupNorm(C, C)` and ONNX `InstanceNormalization`); a missing scale is ones, a
/// missing bias zeros.
pub fn instance_norm(
    g: &mut Graph,
    x: ValueId,
    scale: Option<ValueId>,
    bias: Option<ValueId>,
    eps: f64,
) -> R {
    let (dt, shape) = (g.dtype(x), g.shape(x).to_vec());
    let c = *shape.get(1).ok_or_else(|| IrError::Shape {
        node: "instance_norm".into(),
        op: "InstanceNorm",
        msg: format!("needs [N, C, spatial…], got {shape:?}"),
    })?;
    let mut filled = |p: Option<ValueId>, v: f64| match p {
        Some(p) => p,
        None => g.const_tensor(dt, vec![c], vec![v; c]),
    };
    let (s, b) = (filled(scale, 1.0), filled(bias, 0.0));
    g.push1("", Op::InstanceNorm(InstanceNorm { eps }), &[x, s, b])
}

/// Layer normalisation over the trailing axes from `axis` on, affine parameters shaped like those
/// axes (PyTorch `LayerNorm(shape)`).
pub fn layer_norm(
    g: &mut Graph,
    x: ValueId,
    axis: usize,
    scale: Option<ValueId>,
    bias: Option<ValueId>,
    eps: f64,
) -> R {
    let r = g.shape(x).len();
    let axes: Vec<usize> = (axis..r).collect();
    let (y, _, _) = standardize(g, x, &axes, eps)?;
    let s = g.shape(x)[axis..].to_vec();
    affine(g, y, scale, bias, &s)
}

fn affine(
    g: &mut Graph,
    y: ValueId,
    scale: Option<ValueId>,
    bias: Option<ValueId>,
    shape: &[usize],
) -> R {
    let mut y = y;
    if let Some(s) = scale {
        let s = g.reshape(s, shape)?;
        y = g.mul(y, s)?;
    }
    if let Some(b) = bias {
        let b = g.reshape(b, shape)?;
        y = g.add(y, b)?;
    }
    Ok(y)
}

/// The exact GELU, `0.5·x·(1 + erf(x/√2))` (PyTorch's `nn.GELU()`, ONNX `Gelu` without
/// approximation).
pub fn gelu(g: &mut Graph, x: ValueId) -> R {
    let s = g.scale(x, std::f64::consts::FRAC_1_SQRT_2)?;
    let e = g.unary(Op::Erf, s)?;
    let one = g.scalar_like(x, 1.0);
    let p = g.add(one, e)?;
    let h = g.scale(x, 0.5)?;
    g.mul(h, p)
}

/// Non-overlapping k×k pooling with stride k and no padding on \[N,C,H,W\], trailing rows and
/// columns that fill no window dropped: the mean is the [`AvgPool`] primitive; for the max, a
/// reshape exposes each window as two axes that a max reduces.
pub fn pool_2d(g: &mut Graph, x: ValueId, k: usize, max: bool) -> R {
    let s = g.shape(x).to_vec();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (ho, wo) = (h / k, w / k);
    let x = if ho * k != h || wo * k != w {
        // PyTorch floors: the trailing rows and columns that do not fill a window are dropped.
        g.push1(
            "",
            Op::Slice(Slice {
                starts: vec![0; 4],
                ends: vec![n, c, ho * k, wo * k],
            }),
            &[x],
        )?
    } else {
        x
    };
    if !max {
        return g.push1("", Op::AvgPool(AvgPool { k }), &[x]);
    }
    let r = g.reshape(x, &[n, c, ho, k, wo, k])?;
    g.push1(
        "",
        Op::ReduceMax(ReduceMax {
            axes: vec![3, 5],
            keepdims: false,
        }),
        &[r],
    )
}

/// The max of every window of `kernel` (at `strides` and `dilations`) over x \[N, C, spatial…\],
/// `out` windows per axis, every window inside `x`: a caller pads `x` beforehand with a value
/// below any input. A grouped convolution with a constant one-hot kernel lays each window's K
/// taps out as channels, \[N, C·K, out…\], and a max over the taps reduces them. Backends run
/// that convolution and its adjoint in one pass each: one strided slice per tap, each with a
/// padding adjoint, took about ten times longer on ONNX Runtime (ResNet-18's stem at batch 32).
pub fn window_max(
    g: &mut Graph,
    x: ValueId,
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    out: &[usize],
) -> R {
    let s = g.shape(x).to_vec();
    let (n, c) = (s[0], s[1]);
    let taps: usize = kernel.iter().product();
    let mut onehot = vec![0.0; c * taps * taps];
    for ch in 0..c {
        for t in 0..taps {
            onehot[(ch * taps + t) * taps + t] = 1.0;
        }
    }
    let mut wshape = vec![c * taps, 1];
    wshape.extend(kernel);
    let w = g.const_tensor(g.dtype(x), wshape, onehot);
    let a = ConvAttrs {
        strides: strides.to_vec(),
        pads_begin: vec![0; kernel.len()],
        pads_end: vec![0; kernel.len()],
        dilations: dilations.to_vec(),
        group: c,
    };
    let mut cols = g.push1("", Op::Conv(a), &[x, w])?;
    // A window that starts in the end padding (ceil mode) is not among the `out` kept.
    if g.shape(cols)[2..] != *out {
        let mut ends = vec![n, c * taps];
        ends.extend(out);
        cols = g.push1(
            "",
            Op::Slice(Slice {
                starts: vec![0; ends.len()],
                ends,
            }),
            &[cols],
        )?;
    }
    let mut split = vec![n, c, taps];
    split.extend(out);
    let cols = g.reshape(cols, &split)?;
    g.push1(
        "",
        Op::ReduceMax(ReduceMax {
            axes: vec![2],
            keepdims: false,
        }),
        &[cols],
    )
}

/// The max-shifted input and the log of its exponential sum over `axes`: the shift carries no
/// gradient (it cancels mathematically), which keeps softmax stable without extra terms.
fn shifted(g: &mut Graph, z: ValueId, axes: &[usize]) -> Result<(ValueId, ValueId), IrError> {
    let m = g.push1(
        "",
        Op::ReduceMax(ReduceMax {
            axes: axes.to_vec(),
            keepdims: true,
        }),
        &[z],
    )?;
    let m = g.push1("", Op::StopGradient, &[m])?;
    let zc = g.sub(z, m)?;
    let e = g.unary(Op::Exp, zc)?;
    Ok((zc, e))
}

/// Numerically stable log-softmax over `axes`.
pub fn log_softmax(g: &mut Graph, z: ValueId, axes: &[usize]) -> R {
    let (zc, e) = shifted(g, z, axes)?;
    let s = g.reduce_sum(e, axes, true)?;
    let ls = g.unary(Op::Log, s)?;
    g.sub(zc, ls)
}

/// Softmax over `axes`.
pub fn softmax(g: &mut Graph, z: ValueId, axes: &[usize]) -> R {
    let (_, e) = shifted(g, z, axes)?;
    let s = g.reduce_sum(e, axes, true)?;
    g.div(e, s)
}

/// The loss of docs/method.md: `mean_b −Σ_k Y[b,k] log_softmax(z_b)[k]` (PyTorch's
/// `CrossEntropyLoss` with probability targets), as a scalar.
pub fn soft_cross_entropy(g: &mut Graph, logits: ValueId, y: ValueId) -> R {
    let b = g.shape(logits)[0];
    let l = log_softmax(g, logits, &[1])?;
    let p = g.mul(y, l)?;
    let s = g.sum_all(p)?;
    g.scale(s, -1.0 / b as f64)
}
