//! Convolutions and pooling. Conv and ConvTranspose map to the IR's pair of adjoint
//! convolutions (bias as a broadcast Add); AveragePool is a depthwise Conv with constant weights
//! (with an exact constant divisor map where padding is not counted); MaxPool is a padding and
//! `lower::window_max` (a grouped Conv and a ReduceMax), so it stays in the differentiable set.

use super::proto::NodeRef;
use super::tensor::fconst;
use super::{Ctx, OP_TABLE_REF};
use crate::compiler::ir::{numel, ConvAttrs, Op, ValueId};
use crate::compiler::lower;
use crate::compiler::model::InitRule;
use crate::compiler::ops::{ConvTranspose, Pad, ReduceMax};
use anyhow::{anyhow, bail, Result};

/// Bound on kernel sizes, strides, dilations and pads read from a file, so arithmetic on them
/// cannot overflow.
const LIMIT: usize = 1 << 24;

fn attr_or(n: &NodeRef, name: &str, sp: usize, default: usize) -> Result<Vec<usize>> {
    match n.ints(name) {
        None => Ok(vec![default; sp]),
        Some(v) if v.len() == sp => v
            .into_iter()
            .map(|x| {
                usize::try_from(x)
                    .ok()
                    .filter(|&x| x > 0 && x <= LIMIT)
                    .ok_or_else(|| {
                        anyhow!("{name} must be positive (and at most {LIMIT}), got {x}")
                    })
            })
            .collect(),
        Some(v) => bail!("{name} {v:?} needs {sp} entries"),
    }
}

/// Explicit begin/end pads from `pads` or `auto_pad`.
fn pads(
    n: &NodeRef,
    input: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
) -> Result<(Vec<usize>, Vec<usize>)> {
    let sp = input.len();
    match n.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => {
            let p = n.ints("pads").unwrap_or_else(|| vec![0; 2 * sp]);
            if p.len() != 2 * sp || p.iter().any(|&x| x < 0 || x as usize > LIMIT) {
                bail!("pads {p:?} must be {} non-negative entries", 2 * sp);
            }
            Ok((
                p[..sp].iter().map(|&x| x as usize).collect(),
                p[sp..].iter().map(|&x| x as usize).collect(),
            ))
        }
        "VALID" => Ok((vec![0; sp], vec![0; sp])),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let (mut b, mut e) = (vec![0; sp], vec![0; sp]);
            for i in 0..sp {
                let out = input[i].div_ceil(s[i]);
                let total = ((out - 1) * s[i] + (k[i] - 1) * d[i] + 1).saturating_sub(input[i]);
                let small = total / 2;
                if mode == "SAME_UPPER" {
                    (b[i], e[i]) = (small, total - small);
                } else {
                    (b[i], e[i]) = (total - small, small);
                }
            }
            Ok((b, e))
        }
        other => bail!("auto_pad '{other}' is not supported"),
    }
}

fn bias_add(cx: &mut Ctx, y: ValueId, bn: &str, fan_in: usize) -> Result<ValueId> {
    cx.set_role(bn, InitRule::UniformBias { fan_in });
    let b = cx.ir(bn)?;
    let r = cx.g.shape(y).len();
    let c = cx.g.shape(b).iter().product::<usize>();
    let mut s = vec![c];
    s.extend(std::iter::repeat_n(1, r - 2));
    let b = cx.g.reshape(b, &s)?;
    Ok(cx.g.add(y, b)?)
}

/// Input, weight and the common attributes of Conv/ConvTranspose.
struct ConvIn {
    sx: Vec<usize>,
    sw: Vec<usize>,
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
    group: usize,
}

fn conv_in(cx: &Ctx, n: &NodeRef) -> Result<ConvIn> {
    let (sx, sw) = (cx.shape(n.req(0)?)?, cx.shape(n.req(1)?)?);
    if sx.len() < 3 || sw.len() != sx.len() {
        bail!("input {sx:?} and weight {sw:?} do not fit a convolution");
    }
    let sp = sx.len() - 2;
    if sw.contains(&0) || sx.contains(&0) {
        bail!("input {sx:?} or weight {sw:?} has an empty dimension");
    }
    let k = sw[2..].to_vec();
    if let Some(ks) = n.ints("kernel_shape") {
        if ks.iter().map(|&v| v as usize).collect::<Vec<_>>() != k {
            bail!("kernel_shape {ks:?} does not match the weight {sw:?}");
        }
    }
    let group = usize::try_from(n.int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| anyhow!("bad group"))?;
    Ok(ConvIn {
        k,
        s: attr_or(n, "strides", sp, 1)?,
        d: attr_or(n, "dilations", sp, 1)?,
        group,
        sx,
        sw,
    })
}

/// Conv (+ bias).
pub fn conv(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let c = conv_in(cx, n)?;
    let (pb, pe) = pads(n, &c.sx[2..], &c.k, &c.s, &c.d)?;
    let fan_in = c.sw[1] * numel(&c.k);
    let (xn, wn) = (n.req(0)?, n.req(1)?);
    cx.set_role(wn, InitRule::KaimingUniform { fan_in });
    let x = cx.ir(xn)?;
    let w = cx.ir(wn)?;
    let a = ConvAttrs {
        strides: c.s,
        pads_begin: pb,
        pads_end: pe,
        dilations: c.d,
        group: c.group,
    };
    // The bias is Conv's third operand, whose shape rule refuses one that is not [O].
    let mut operands = vec![x, w];
    if let Some(bn) = n.input(2) {
        cx.set_role(bn, InitRule::UniformBias { fan_in });
        operands.push(cx.ir(bn)?);
    }
    Ok(cx.g.push1(&n.name, Op::Conv(a), &operands)?)
}

/// ConvTranspose (+ bias), with output_padding / output_shape, as the IR's adjoint convolution
/// and, where the requested extent exceeds what any window reaches, zero padding at the end.
pub fn conv_transpose(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let c = conv_in(cx, n)?;
    let sp = c.sx.len() - 2;
    let input = &c.sx[2..];
    let op = match n.ints("output_padding") {
        None => vec![0; sp],
        Some(v) if v.len() == sp && v.iter().all(|&x| x >= 0 && x as usize <= LIMIT) => {
            v.into_iter().map(|x| x as usize).collect()
        }
        Some(v) => bail!("output_padding {v:?} needs {sp} non-negative entries"),
    };
    // Extent before cropping the pads: s·(in−1) + output_padding + (k−1)·d + 1.
    let full: Vec<i64> = (0..sp)
        .map(|i| (c.s[i] * (input[i] - 1) + op[i] + (c.k[i] - 1) * c.d[i] + 1) as i64)
        .collect();
    let auto = n.string("auto_pad", "NOTSET");
    let explicit_out: Option<Vec<i64>> = match n.ints("output_shape") {
        Some(o) if o.len() >= sp && o.iter().all(|&x| (0..=LIMIT as i64).contains(&x)) => {
            Some(o[o.len() - sp..].to_vec())
        }
        Some(o) => bail!("output_shape {o:?} needs {sp} spatial entries"),
        None if auto.starts_with("SAME") => {
            Some((0..sp).map(|i| (input[i] * c.s[i]) as i64).collect())
        }
        None => None,
    };
    let (pb, out): (Vec<i64>, Vec<i64>) = match explicit_out {
        Some(out) => {
            let mut pb = vec![0; sp];
            for i in 0..sp {
                let total = full[i] - out[i];
                if total < 0 {
                    bail!(
                        "output_shape {out:?} is larger than the transposed convolution produces"
                    );
                }
                pb[i] = if auto == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                };
            }
            (pb, out)
        }
        None => {
            let (b, e) = pads(n, &vec![1; sp], &vec![1; sp], &vec![1; sp], &vec![1; sp])?;
            let out = (0..sp)
                .map(|i| full[i] - b[i] as i64 - e[i] as i64)
                .collect();
            (b.into_iter().map(|x| x as i64).collect(), out)
        }
    };
    // The IR op is the adjoint of Conv(x: out extent) → in extent; positions beyond the last
    // one a window reaches are zeros, added by a Pad.
    let (mut out_ir, mut pe_ir, mut extra) = (vec![0; sp], vec![0; sp], vec![0; sp]);
    for i in 0..sp {
        let reach = (c.s[i] * (input[i] - 1) + (c.k[i] - 1) * c.d[i] + 1) as i64 - pb[i];
        if out[i] <= 0 || reach <= 0 {
            bail!("the pads leave no output on spatial axis {i}");
        }
        let o = out[i].min(reach);
        out_ir[i] = o as usize;
        pe_ir[i] = (reach - o) as usize;
        extra[i] = (out[i] - o) as usize;
    }
    let fan_in = c.sw[1] * numel(&c.k);
    let (xn, wn) = (n.req(0)?, n.req(1)?);
    cx.set_role(wn, InitRule::KaimingUniform { fan_in });
    let x = cx.ir(xn)?;
    let w = cx.ir(wn)?;
    let conv = ConvAttrs {
        strides: c.s,
        pads_begin: pb.iter().map(|&p| p as usize).collect(),
        pads_end: pe_ir,
        dilations: c.d,
        group: c.group,
    };
    let mut y = cx.g.push1(
        &n.name,
        Op::ConvTranspose(ConvTranspose {
            conv,
            out_spatial: out_ir,
        }),
        &[x, w],
    )?;
    if extra.iter().any(|&e| e > 0) {
        let mut ends = vec![0, 0];
        ends.extend(extra);
        y = cx.g.push1(
            "",
            Op::Pad(Pad {
                begins: vec![0; sp + 2],
                ends,
                value: 0.0,
            }),
            &[y],
        )?;
    }
    match n.input(2) {
        Some(bn) => bias_add(cx, y, bn, fan_in),
        None => Ok(y),
    }
}

/// Pooling geometry: kernel, strides, dilations, pads, output extent and the extra end padding
/// that ceil_mode needs.
struct Pool {
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
    pb: Vec<usize>,
    pe: Vec<usize>,
    out: Vec<usize>,
    extra: Vec<usize>,
}

fn pool_geom(cx: &Ctx, n: &NodeRef) -> Result<(Vec<usize>, Pool)> {
    let sx = cx.shape(n.req(0)?)?;
    if sx.len() < 3 || sx.contains(&0) {
        bail!("input {sx:?} must be [N, C, spatial…] without empty dimensions");
    }
    let input = &sx[2..];
    let sp = input.len();
    let k = attr_or(n, "kernel_shape", sp, 0).and_then(|k| {
        if n.ints("kernel_shape").is_none() {
            bail!("kernel_shape is missing")
        }
        Ok(k)
    })?;
    let s = attr_or(n, "strides", sp, 1)?;
    let d = attr_or(n, "dilations", sp, 1)?;
    let (pb, pe) = pads(n, input, &k, &s, &d)?;
    let ceil = n.int("ceil_mode", 0) != 0;
    let (mut out, mut extra) = (vec![0; sp], vec![0; sp]);
    for i in 0..sp {
        let span = (k[i] - 1) * d[i] + 1;
        let padded = input[i] + pb[i] + pe[i];
        if padded < span {
            bail!("kernel {k:?} does not fit input {input:?}");
        }
        let num = padded - span;
        let mut o = if ceil {
            num.div_ceil(s[i]) + 1
        } else {
            num / s[i] + 1
        };
        // The last window must start inside the input or the begin padding (PyTorch, ONNX).
        if ceil && (o - 1) * s[i] >= input[i] + pb[i] {
            o -= 1;
        }
        out[i] = o;
        extra[i] = ((o - 1) * s[i] + span).saturating_sub(padded);
    }
    Ok((
        sx,
        Pool {
            k,
            s,
            d,
            pb,
            pe,
            out,
            extra,
        },
    ))
}

/// AveragePool as a depthwise convolution with constant weights.
pub fn avg_pool(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (sx, p) = pool_geom(cx, n)?;
    let include_pad = n.int("count_include_pad", 0) != 0;
    let sp = p.k.len();
    let c = sx[1];
    // Divisor per output position, per axis: window positions inside the input (or inside the
    // declared padding when it counts); never the extra ceil_mode padding.
    let mut div_axes = Vec::with_capacity(sp);
    for i in 0..sp {
        let (lo, hi) = if include_pad {
            (-(p.pb[i] as i64), (sx[2 + i] + p.pe[i]) as i64)
        } else {
            (0, sx[2 + i] as i64)
        };
        let v: Vec<f64> = (0..p.out[i])
            .map(|o| {
                (0..p.k[i])
                    .map(|t| (o * p.s[i] + t * p.d[i]) as i64 - p.pb[i] as i64)
                    .filter(|&q| q >= lo && q < hi)
                    .count() as f64
            })
            .collect();
        div_axes.push(v);
    }
    let kk = numel(&p.k) as f64;
    let uniform = div_axes.iter().all(|v| v.iter().all(|&x| x == v[0]))
        && div_axes.iter().map(|v| v[0]).product::<f64>() == kk;
    let x = cx.ir(n.req(0)?)?;
    let mut wshape = vec![c, 1];
    wshape.extend_from_slice(&p.k);
    let wval = if uniform { 1.0 / kk } else { 1.0 };
    let w = fconst(cx, wshape.clone(), vec![wval; numel(&wshape)]);
    let pe: Vec<usize> = p.pe.iter().zip(&p.extra).map(|(a, b)| a + b).collect();
    let a = ConvAttrs {
        strides: p.s.clone(),
        pads_begin: p.pb.clone(),
        pads_end: pe,
        dilations: p.d.clone(),
        group: c,
    };
    let y = cx.g.push1(&n.name, Op::Conv(a), &[x, w])?;
    if uniform {
        return Ok(y);
    }
    // Reciprocal divisor map [1, 1, out…] (outer product of the per-axis counts).
    let mut recip = vec![1.0];
    for v in &div_axes {
        recip = recip
            .iter()
            .flat_map(|&a| v.iter().map(move |&b| a * b))
            .collect();
    }
    if recip.contains(&0.0) {
        bail!("a pooling window lies entirely in the padding");
    }
    let recip: Vec<f64> = recip.into_iter().map(|v| 1.0 / v).collect();
    let mut rs = vec![1, 1];
    rs.extend_from_slice(&p.out);
    let r = fconst(cx, rs, recip);
    Ok(cx.g.mul(y, r)?)
}

/// MaxPool: the input padded with a very negative value so that every window lies inside it,
/// then [`lower::window_max`].
pub fn max_pool(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let (_, p) = pool_geom(cx, n)?;
    if n.int("storage_order", 0) != 0 {
        bail!("storage_order 1 is not supported ({OP_TABLE_REF})");
    }
    let x = cx.ir(n.req(0)?)?;
    let mut begins = vec![0, 0];
    let mut ends = vec![0, 0];
    begins.extend(&p.pb);
    ends.extend(p.pe.iter().zip(&p.extra).map(|(e, x)| e + x));
    let xp = if begins.iter().chain(&ends).all(|&v| v == 0) {
        x
    } else {
        cx.g.push1(
            "",
            Op::Pad(Pad {
                begins,
                ends,
                value: f32::MIN as f64,
            }),
            &[x],
        )?
    };
    let y = lower::window_max(&mut cx.g, xp, &p.k, &p.s, &p.d, &p.out)?;
    Ok(y)
}

/// GlobalAveragePool and GlobalMaxPool: reductions over the spatial axes, kept as size 1.
pub fn global_pool(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = cx.ir(n.req(0)?)?;
    let r = cx.g.shape(x).len();
    if r < 3 {
        bail!("input must be [N, C, spatial…]");
    }
    let ax: Vec<usize> = (2..r).collect();
    if n.op == "GlobalAveragePool" {
        Ok(cx.g.reduce_mean(x, &ax, true)?)
    } else {
        Ok(cx.g.push1(
            "",
            Op::ReduceMax(ReduceMax {
                axes: ax,
                keepdims: true,
            }),
            &[x],
        )?)
    }
}
