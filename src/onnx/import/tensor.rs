//! Data-movement ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Concat, Split,
//! Slice, Gather (constant indices) and Pad. The shape arithmetic here is shared with the
//! constant folder.

use super::proto::{as_ints, axes, axis, NodeRef};
use super::{Ctx, Val, OP_TABLE_REF};
use crate::compiler::ir::{numel, Op, Tensor, ValueId};
use crate::compiler::ops::broadcast_shapes;
use crate::compiler::ops::{Concat, Pad, Reshape, Slice, Split};
use anyhow::{anyhow, bail, Result};

/// ONNX Reshape target: `0` copies the input's dimension (unless `allowzero`), `-1` is inferred.
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(
                *input
                    .get(i)
                    .ok_or_else(|| anyhow!("shape {spec:?}: no input axis {i} to copy"))?,
            ),
            d if d >= 0 => out.push(d as usize),
            _ => bail!("invalid reshape target {spec:?}"),
        }
    }
    let total = numel(input);
    let product = |v: &[usize]| v.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if let Some(i) = infer {
        let rest = product(&out).ok_or_else(|| anyhow!("reshape target {spec:?} is too large"))?;
        if rest == 0 || !total.is_multiple_of(rest) {
            bail!("cannot reshape {input:?} to {spec:?}");
        }
        out[i] = total / rest;
    }
    if product(&out) != Some(total) {
        bail!("cannot reshape {input:?} to {spec:?}");
    }
    Ok(out)
}

/// Axes of Squeeze/Unsqueeze: the `axes` input (opset ≥ 13) or attribute.
pub fn axes_operand(cx: &mut Ctx, n: &NodeRef, input: usize) -> Result<Option<Vec<i64>>> {
    if let Some(a) = n.input(input) {
        return Ok(Some(as_ints(&cx.konst(a)?)));
    }
    Ok(n.ints("axes"))
}

/// Output shape of Reshape, Flatten, Squeeze or Unsqueeze.
pub fn reshape_like_shape(cx: &mut Ctx, n: &NodeRef, s: &[usize]) -> Result<Vec<usize>> {
    let r = s.len();
    match n.op {
        "Reshape" => {
            let spec = as_ints(&cx.konst(n.req(1)?)?);
            reshape_target(s, &spec, n.int("allowzero", 0) != 0)
        }
        "Flatten" => {
            let a = n.int("axis", 1);
            let a = if a < 0 { a + r as i64 } else { a };
            if a < 0 || a > r as i64 {
                bail!("axis {a} is out of range for rank {r}");
            }
            let a = a as usize;
            Ok(vec![numel(&s[..a]), numel(&s[a..])])
        }
        "Squeeze" => match axes_operand(cx, n, 1)? {
            None => Ok(s.iter().copied().filter(|&d| d != 1).collect()),
            Some(a) => {
                let ax = axes(&a, r)?;
                if let Some(&bad) = ax.iter().find(|&&i| s[i] != 1) {
                    bail!("cannot squeeze axis {bad} of {s:?}");
                }
                Ok(s.iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, &d)| d)
                    .collect())
            }
        },
        "Unsqueeze" => {
            let a = axes_operand(cx, n, 1)?.ok_or_else(|| anyhow!("axes are missing"))?;
            let out_r = r + a.len();
            let ax = axes(&a, out_r)?;
            if ax.len() != a.len() {
                bail!("repeated axes {a:?}");
            }
            let mut it = s.iter();
            Ok((0..out_r)
                .map(|i| {
                    if ax.contains(&i) {
                        1
                    } else {
                        *it.next().unwrap_or(&1)
                    }
                })
                .collect())
        }
        other => bail!("{other} is not a reshape"),
    }
}

/// Reshape, Flatten, Squeeze and Unsqueeze of a run-time value: one IR Reshape.
pub fn reshape_like(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let s = cx.shape(x)?;
    let target = reshape_like_shape(cx, n, &s)?;
    let v = cx.ir(x)?;
    Ok(cx.g.reshape(v, &target)?)
}

/// Transpose permutation (default: reversed axes).
pub fn perm_of(n: &NodeRef, r: usize) -> Result<Vec<usize>> {
    match n.ints("perm") {
        Some(p) => {
            let perm: Vec<usize> = p.iter().map(|&i| axis(i, r)).collect::<Result<_>>()?;
            let mut seen = vec![false; r];
            if perm.len() != r || perm.iter().any(|&i| std::mem::replace(&mut seen[i], true)) {
                bail!("perm {p:?} is not a permutation of {r} axes");
            }
            Ok(perm)
        }
        None => Ok((0..r).rev().collect()),
    }
}

/// Transpose.
pub fn transpose(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let perm = perm_of(n, cx.shape(x)?.len())?;
    let v = cx.ir(x)?;
    Ok(cx.g.transpose(v, &perm)?)
}

/// Expand: bidirectional broadcast to a constant shape.
pub fn expand(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let spec: Vec<usize> = as_ints(&cx.konst(n.req(1)?)?)
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| anyhow!("negative dimension {d}")))
        .collect::<Result<_>>()?;
    let target = broadcast_shapes(&cx.shape(x)?, &spec).map_err(|e| anyhow!(e))?;
    let v = cx.ir(x)?;
    Ok(cx.g.expand(v, &target)?)
}

/// Concat.
pub fn concat(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let names: Vec<&str> = (0..n.n_inputs()).filter_map(|i| n.input(i)).collect();
    let first = names.first().ok_or_else(|| anyhow!("no operands"))?;
    let r = cx.shape(first)?.len();
    let ax = axis(n.int("axis", 0), r)?;
    let mut vs = Vec::with_capacity(names.len());
    for nm in names {
        vs.push(cx.ir(nm)?);
    }
    if vs.len() == 1 {
        return Ok(vs[0]);
    }
    Ok(cx.g.push1("", Op::Concat(Concat { axis: ax }), &vs)?)
}

/// Piece sizes of a Split node.
pub fn split_sizes(cx: &mut Ctx, n: &NodeRef, dim: usize) -> Result<Vec<usize>> {
    let outs = n.p.output.len();
    let sizes: Vec<i64> = if let Some(s) = n.input(1) {
        as_ints(&cx.konst(s)?)
    } else if let Some(s) = n.ints("split") {
        s
    } else {
        let k = n.int("num_outputs", outs as i64).max(1) as usize;
        let chunk = dim.div_ceil(k);
        (0..k)
            .map(|i| (chunk.min(dim.saturating_sub(i * chunk))) as i64)
            .collect()
    };
    let sizes: Vec<usize> = sizes
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| anyhow!("negative split size {d}")))
        .collect::<Result<_>>()?;
    if sizes.iter().sum::<usize>() != dim {
        bail!("split sizes {sizes:?} do not add up to {dim}");
    }
    Ok(sizes)
}

/// Split of a run-time value.
pub fn split(cx: &mut Ctx, n: &NodeRef) -> Result<Vec<Val>> {
    let x = n.req(0)?;
    let s = cx.shape(x)?;
    let ax = axis(n.int("axis", 0), s.len())?;
    let sizes = split_sizes(cx, n, s[ax])?;
    let v = cx.ir(x)?;
    let outs = cx.g.push("", Op::Split(Split { axis: ax, sizes }), &[v])?;
    Ok(outs.into_iter().map(Val::Ir).collect())
}

/// SplitToSequence of a run-time value, as the pieces of a static split: by the sizes of the
/// `split` input, by one chunk size (the last piece takes the rest), or into pieces of 1 along
/// the axis (squeezed unless `keepdims`).
pub fn split_to_sequence(cx: &mut Ctx, n: &NodeRef) -> Result<Vec<ValueId>> {
    let x = n.req(0)?;
    let s = cx.shape(x)?;
    let ax = axis(n.int("axis", 0), s.len())?;
    let dim = s.get(ax).copied().unwrap_or(0);
    let (sizes, squeeze) = match n.input(1) {
        Some(name) => {
            let t = cx.konst(name)?;
            let k = as_ints(&t);
            let sizes: Vec<usize> = if t.shape.is_empty() {
                let c = k
                    .first()
                    .and_then(|&c| usize::try_from(c).ok())
                    .filter(|&c| c > 0)
                    .ok_or_else(|| anyhow!("the split size {k:?} must be positive"))?;
                (0..dim).step_by(c).map(|i| c.min(dim - i)).collect()
            } else {
                k.iter()
                    .map(|&d| usize::try_from(d).map_err(|_| anyhow!("negative split size {d}")))
                    .collect::<Result<_>>()?
            };
            if sizes.iter().sum::<usize>() != dim {
                bail!("split sizes {sizes:?} do not add up to {dim}");
            }
            (sizes, false)
        }
        None => (vec![1; dim], n.int("keepdims", 1) == 0),
    };
    let v = cx.ir(x)?;
    let pieces = cx.g.push("", Op::Split(Split { axis: ax, sizes }), &[v])?;
    if !squeeze {
        return Ok(pieces);
    }
    let mut shape = s.clone();
    shape.remove(ax);
    pieces
        .into_iter()
        .map(|p| {
            Ok(cx.g.push1(
                "",
                Op::Reshape(Reshape {
                    shape: shape.clone(),
                }),
                &[p],
            )?)
        })
        .collect()
}

/// The pieces of sequence `name`.
fn sequence<'c>(cx: &'c Ctx, name: &str) -> Result<&'c Vec<ValueId>> {
    cx.seqs.get(name).ok_or_else(|| {
        anyhow!("'{name}' is not a sequence from SplitToSequence (other sequences are not supported; {OP_TABLE_REF})")
    })
}

/// SequenceAt with a constant position (negative counts from the end).
pub fn sequence_at(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let pos = as_ints(&cx.konst(n.req(1)?)?);
    let seq = sequence(cx, n.req(0)?)?;
    let len = seq.len() as i64;
    let p = pos.first().copied().unwrap_or(0);
    let i = if p < 0 { p + len } else { p };
    usize::try_from(i)
        .ok()
        .and_then(|i| seq.get(i).copied())
        .ok_or_else(|| anyhow!("position {p} is outside a sequence of {len}"))
}

/// ConcatFromSequence: the pieces concatenated along `axis`, or stacked on a new axis there.
pub fn concat_from_sequence(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let seq = sequence(cx, n.req(0)?)?.clone();
    let new_axis = n.int("new_axis", 0) != 0;
    let first = seq
        .first()
        .ok_or_else(|| anyhow!("ConcatFromSequence of an empty sequence"))?;
    let rank = cx.g.shape(*first).len();
    let ax = axis(n.int("axis", 0), rank + usize::from(new_axis))?;
    let mut parts = Vec::with_capacity(seq.len());
    for v in seq {
        if new_axis {
            let mut shape = cx.g.shape(v).to_vec();
            shape.insert(ax, 1);
            parts.push(cx.g.push1("", Op::Reshape(Reshape { shape }), &[v])?);
        } else {
            parts.push(v);
        }
    }
    if let [one] = parts.as_slice() {
        return Ok(*one);
    }
    Ok(cx.g.push1("", Op::Concat(Concat { axis: ax }), &parts)?)
}

/// Normalised Slice bounds per axis of `shape`: (start, end, step), ONNX clamping rules.
pub fn slice_bounds(cx: &mut Ctx, n: &NodeRef, shape: &[usize]) -> Result<Vec<(i64, i64, i64)>> {
    let r = shape.len();
    let get = |cx: &mut Ctx, i: usize, attr: &str| -> Result<Option<Vec<i64>>> {
        if cx.opset >= 10 {
            match n.input(i) {
                Some(nm) => Ok(Some(as_ints(&cx.konst(nm)?))),
                None => Ok(None),
            }
        } else {
            Ok(n.ints(attr))
        }
    };
    let starts = get(cx, 1, "starts")?.ok_or_else(|| anyhow!("starts are missing"))?;
    let ends = get(cx, 2, "ends")?.ok_or_else(|| anyhow!("ends are missing"))?;
    let ax: Vec<i64> = get(cx, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = get(cx, 4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || ax.len() != starts.len() || steps.len() != starts.len() {
        bail!("starts, ends, axes and steps differ in length");
    }
    let mut out: Vec<(i64, i64, i64)> = shape.iter().map(|&d| (0, d as i64, 1)).collect();
    for i in 0..starts.len() {
        let a = axis(ax[i], r)?;
        let d = shape[a] as i64;
        let step = steps[i];
        if step == 0 {
            bail!("slice step 0");
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = if step > 0 || d == 0 {
            (norm(starts[i]).clamp(0, d), norm(ends[i]).clamp(0, d))
        } else {
            (
                norm(starts[i]).clamp(0, d - 1),
                norm(ends[i]).clamp(-1, d - 1),
            )
        };
        out[a] = (s, e, step);
    }
    Ok(out)
}

/// Slice of a run-time value (unit steps only, as the IR's Slice).
pub fn slice(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let s = cx.shape(x)?;
    let b = slice_bounds(cx, n, &s)?;
    if b.iter().any(|&(_, _, st)| st != 1) {
        bail!("steps other than 1 are not supported ({OP_TABLE_REF})");
    }
    let starts: Vec<usize> = b.iter().map(|&(s, _, _)| s as usize).collect();
    let ends: Vec<usize> = b.iter().map(|&(s, e, _)| e.max(s) as usize).collect();
    let v = cx.ir(x)?;
    if starts.iter().all(|&s| s == 0) && ends == s {
        return Ok(v);
    }
    Ok(cx.g.push1("", Op::Slice(Slice { starts, ends }), &[v])?)
}

/// Unit-step slice of one axis.
pub fn slice_axis(
    cx: &mut Ctx,
    v: ValueId,
    ax: usize,
    start: usize,
    end: usize,
) -> Result<ValueId> {
    let s = cx.g.shape(v).to_vec();
    if start == 0 && end == s[ax] {
        return Ok(v);
    }
    let mut starts = vec![0; s.len()];
    let mut ends = s;
    starts[ax] = start;
    ends[ax] = end;
    Ok(cx.g.push1("", Op::Slice(Slice { starts, ends }), &[v])?)
}

/// Gather with constant indices.
pub fn gather(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let ind = n.req(1)?;
    let s = cx.shape(x)?;
    let ax = axis(n.int("axis", 0), s.len())?;
    let idx = match cx.as_const(ind) {
        Some(t) => t.clone(),
        None => bail!("indices must be constant ({OP_TABLE_REF})"),
    };
    let d = s[ax];
    let ids: Vec<usize> = as_ints(&idx)
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + d as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < d)
                .ok_or_else(|| anyhow!("index {i} is out of range for {d}"))
        })
        .collect::<Result<_>>()?;
    let mut out_shape = s[..ax].to_vec();
    out_shape.extend_from_slice(&idx.shape);
    out_shape.extend_from_slice(&s[ax + 1..]);
    let v = cx.ir(x)?;
    if ids.is_empty() {
        bail!("empty indices are not supported");
    }
    let picked = cx.g.take(v, ax, ids)?;
    Ok(cx.g.reshape(picked, &out_shape)?)
}

/// Pad (constant mode; negative pads crop).
pub fn pad(cx: &mut Ctx, n: &NodeRef) -> Result<ValueId> {
    let x = n.req(0)?;
    let s = cx.shape(x)?;
    let r = s.len();
    let mode = n.string("mode", "constant");
    if mode != "constant" {
        bail!("mode '{mode}' is not supported ({OP_TABLE_REF})");
    }
    let pads = match n.input(1) {
        Some(p) => as_ints(&cx.konst(p)?),
        None => n.ints("pads").ok_or_else(|| anyhow!("pads are missing"))?,
    };
    let value = match n.input(2) {
        Some(c) => cx.konst(c)?.data.first().copied().unwrap_or(0.0),
        None => n.float("value", 0.0),
    };
    let ax: Vec<usize> = match n.input(3) {
        Some(a) => as_ints(&cx.konst(a)?)
            .into_iter()
            .map(|a| axis(a, r))
            .collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * ax.len() || pads.iter().any(|p| p.unsigned_abs() > 1 << 24) {
        bail!("pads {pads:?} do not fit {} axes", ax.len());
    }
    let (mut begins, mut ends) = (vec![0i64; r], vec![0i64; r]);
    for (k, &a) in ax.iter().enumerate() {
        begins[a] = pads[k];
        ends[a] = pads[k + ax.len()];
    }
    let mut v = cx.ir(x)?;
    // Crop first (negative pads), then pad.
    for a in 0..r {
        let d = cx.g.shape(v)[a] as i64;
        let (cb, ce) = ((-begins[a]).max(0), (-ends[a]).max(0));
        if cb + ce > d {
            bail!("pads {pads:?} crop more than axis {a} holds");
        }
        if cb > 0 || ce > 0 {
            v = slice_axis(cx, v, a, cb as usize, (d - ce) as usize)?;
        }
    }
    let b: Vec<usize> = begins.iter().map(|&p| p.max(0) as usize).collect();
    let e: Vec<usize> = ends.iter().map(|&p| p.max(0) as usize).collect();
    if b.iter().chain(&e).all(|&p| p == 0) {
        return Ok(v);
    }
    Ok(cx.g.push1(
        "",
        Op::Pad(Pad {
            begins: b,
            ends: e,
            value,
        }),
        &[v],
    )?)
}

/// A float constant of the graph's float type.
pub fn fconst(cx: &mut Ctx, shape: Vec<usize>, data: Vec<f64>) -> ValueId {
    let dt = cx.fdt;
    let data = data
        .into_iter()
        .map(|v| super::proto::round_to(dt, v))
        .collect();
    cx.g.constant(Tensor::new(dt, shape, data))
}
