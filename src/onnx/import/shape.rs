//! Constant folding while importing: `Shape` of any value (shapes are static), and every
//! supported op whose operands are all known constants is evaluated on the spot. This removes
//! the integer shape sub-graphs that exporters emit (`Shape → Gather → Unsqueeze → Concat →
//! Reshape`, `Range`, `CastLike`, `ConstantOfShape` …) before anything reaches the IR.
//! Parameter candidates are never folded: they must stay trainable.

use super::proto::{as_ints, axes, axis, decode_tensor, ir_dtype, round_to, NodeRef};
use super::tensor::{perm_of, reshape_like_shape, slice_bounds};
use super::{Ctx, Val};
use crate::compiler::ir::{numel, DType, Tensor};
use crate::compiler::ops::broadcast_shapes;
use anyhow::{anyhow, bail, Result};

/// Folding materialises tensors; beyond this many elements the op is lowered instead.
const MAX_FOLD: usize = 1 << 22;

const FOLDABLE: &[&str] = &[
    "Identity",
    "Cast",
    "CastLike",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Expand",
    "Concat",
    "Gather",
    "Slice",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Min",
    "Max",
    "Mod",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Floor",
    "Ceil",
    "Reciprocal",
    "Relu",
    "Sign",
    "Where",
    "Range",
    "ConstantOfShape",
    "ReduceProd",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceMean",
];

/// The tensor of a `Constant` node.
pub fn constant_node(cx: &mut Ctx, n: &NodeRef) -> Result<Tensor> {
    let fdt = cx.fdt;
    let f = |v: Vec<f64>, shape: Vec<usize>| {
        Tensor::new(
            fdt,
            shape,
            v.into_iter().map(|x| round_to(fdt, x)).collect(),
        )
    };
    if let Some(t) = n.attr("value").and_then(|a| a.t.as_ref()) {
        return decode_tensor(t, None, fdt);
    }
    if let Some(a) = n.attr("value_float") {
        return Ok(f(vec![a.f.unwrap_or(0.0) as f64], vec![]));
    }
    if let Some(a) = n.attr("value_floats") {
        return Ok(f(
            a.floats.iter().map(|&x| x as f64).collect(),
            vec![a.floats.len()],
        ));
    }
    if let Some(a) = n.attr("value_int") {
        return Ok(Tensor::scalar(DType::I64, a.i.unwrap_or(0) as f64));
    }
    if let Some(a) = n.attr("value_ints") {
        return Ok(Tensor::new(
            DType::I64,
            vec![a.ints.len()],
            a.ints.iter().map(|&x| x as f64).collect(),
        ));
    }
    bail!("only tensor, float and int constants are supported")
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `t`'s elements broadcast to `shape` (which must be a broadcast of t's shape).
fn broadcast_to(t: &Tensor, shape: &[usize]) -> Vec<f64> {
    let r = shape.len();
    let lead = r - t.shape.len();
    let ins = strides(&t.shape);
    let outs = strides(shape);
    (0..numel(shape))
        .map(|flat| {
            let mut src = 0;
            for i in 0..t.shape.len() {
                let k = (flat / outs[lead + i]) % shape[lead + i];
                if t.shape[i] != 1 {
                    src += k * ins[i];
                }
            }
            t.data[src]
        })
        .collect()
}

fn nary(ts: &[&Tensor], dtype: DType, f: impl Fn(&[f64]) -> f64) -> Result<Tensor> {
    let mut shape: Vec<usize> = vec![];
    for t in ts {
        shape = broadcast_shapes(&shape, &t.shape).map_err(|e| anyhow!(e))?;
    }
    let cols: Vec<Vec<f64>> = ts.iter().map(|t| broadcast_to(t, &shape)).collect();
    let mut buf = vec![0.0; ts.len()];
    let data = (0..numel(&shape))
        .map(|i| {
            for (b, c) in buf.iter_mut().zip(&cols) {
                *b = c[i];
            }
            round_to(dtype, f(&buf))
        })
        .collect();
    Ok(Tensor { dtype, shape, data })
}

fn gather_axis(t: &Tensor, ax: usize, idx: &[usize], idx_shape: &[usize]) -> Tensor {
    let (a, d, b) = (
        numel(&t.shape[..ax]),
        t.shape[ax],
        numel(&t.shape[ax + 1..]),
    );
    let mut data = Vec::with_capacity(a * idx.len() * b);
    for i in 0..a {
        for &j in idx {
            data.extend_from_slice(&t.data[(i * d + j) * b..(i * d + j + 1) * b]);
        }
    }
    let mut shape = t.shape[..ax].to_vec();
    shape.extend_from_slice(idx_shape);
    shape.extend_from_slice(&t.shape[ax + 1..]);
    Tensor {
        dtype: t.dtype,
        shape,
        data,
    }
}

fn reduce(t: &Tensor, ax: &[usize], keep: bool, init: f64, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let kept: Vec<usize> = t
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if ax.contains(&i) { 1 } else { d })
        .collect();
    let ks = strides(&kept);
    let is = strides(&t.shape);
    let mut out = vec![init; numel(&kept)];
    for (flat, &v) in t.data.iter().enumerate() {
        let mut o = 0;
        for i in 0..t.shape.len() {
            if !ax.contains(&i) {
                o += ((flat / is[i]) % t.shape[i]) * ks[i];
            }
        }
        out[o] = f(out[o], v);
    }
    let shape = if keep {
        kept
    } else {
        t.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !ax.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Tensor {
        dtype: t.dtype,
        shape,
        data: out,
    }
}

/// Folds `n` when it is `Shape`/`Size` or all its operands are constants; `None` otherwise.
pub fn fold(cx: &mut Ctx, n: &NodeRef) -> Result<Option<Vec<Val>>> {
    match n.op {
        "Shape" => {
            let s = cx.shape(n.req(0)?)?;
            let r = s.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (a, b) = (clampi(n.int("start", 0)), clampi(n.int("end", r)));
            let d: Vec<f64> = s[a..b.max(a)].iter().map(|&x| x as f64).collect();
            return Ok(Some(vec![Val::Const(Tensor::new(
                DType::I64,
                vec![d.len()],
                d,
            ))]));
        }
        "Size" => {
            let s = cx.shape(n.req(0)?)?;
            return Ok(Some(vec![Val::Const(Tensor::scalar(
                DType::I64,
                numel(&s) as f64,
            ))]));
        }
        "ConstantOfShape" => {}
        op if !FOLDABLE.contains(&op) => return Ok(None),
        _ => {}
    }
    let mut ins: Vec<Option<Tensor>> = Vec::with_capacity(n.n_inputs());
    for i in 0..n.n_inputs() {
        match n.input(i) {
            None => ins.push(None),
            Some(nm) => match cx.as_const(nm) {
                Some(t) => ins.push(Some(t.clone())),
                None => return Ok(None),
            },
        }
    }
    let t = |i: usize| -> Result<&Tensor> {
        ins.get(i)
            .and_then(|t| t.as_ref())
            .ok_or_else(|| anyhow!("input {i} is missing"))
    };
    let fdt = cx.fdt;
    let out: Tensor = match n.op {
        "Identity" => t(0)?.clone(),
        "Cast" | "CastLike" => {
            let to = if n.op == "Cast" {
                ir_dtype(n.int("to", 1) as i32, fdt)?
            } else {
                t(1)?.dtype
            };
            let x = t(0)?;
            Tensor {
                dtype: to,
                shape: x.shape.clone(),
                data: x.data.iter().map(|&v| round_to(to, v)).collect(),
            }
        }
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            let x = t(0)?.clone();
            let shape = reshape_like_shape(cx, n, &x.shape)?;
            Tensor { shape, ..x }
        }
        "Transpose" => {
            let x = t(0)?;
            let perm = perm_of(n, x.shape.len())?;
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
            let (is, os) = (strides(&x.shape), strides(&shape));
            let data = (0..x.data.len())
                .map(|flat| {
                    let mut src = 0;
                    for (i, &p) in perm.iter().enumerate() {
                        src += ((flat / os[i]) % shape[i]) * is[p];
                    }
                    x.data[src]
                })
                .collect();
            Tensor {
                dtype: x.dtype,
                shape,
                data,
            }
        }
        "Expand" => {
            let x = t(0)?;
            let spec: Vec<usize> = as_ints(t(1)?)
                .into_iter()
                .map(|d| d.max(0) as usize)
                .collect();
            let shape = broadcast_shapes(&x.shape, &spec).map_err(|e| anyhow!(e))?;
            if numel(&shape) > MAX_FOLD {
                return Ok(None);
            }
            Tensor {
                dtype: x.dtype,
                data: broadcast_to(x, &shape),
                shape,
            }
        }
        "Concat" => {
            let parts: Vec<&Tensor> = ins.iter().flatten().collect();
            let first = parts.first().ok_or_else(|| anyhow!("no operands"))?;
            let r = first.shape.len();
            let ax = axis(n.int("axis", 0), r)?;
            let mut shape = first.shape.clone();
            shape[ax] = 0;
            for p in &parts {
                if p.shape.len() != r || (0..r).any(|i| i != ax && p.shape[i] != first.shape[i]) {
                    bail!(
                        "operands {:?} and {:?} do not concatenate on axis {ax}",
                        first.shape,
                        p.shape
                    );
                }
                shape[ax] += p.shape[ax];
            }
            let outer = numel(&shape[..ax]);
            let mut data = Vec::with_capacity(numel(&shape));
            for o in 0..outer {
                for p in &parts {
                    let chunk = numel(&p.shape[ax..]);
                    data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
                }
            }
            Tensor {
                dtype: first.dtype,
                shape,
                data,
            }
        }
        "Gather" => {
            let x = t(0)?;
            let ax = axis(n.int("axis", 0), x.shape.len())?;
            let d = x.shape[ax] as i64;
            let idx = t(1)?;
            let ids: Vec<usize> = as_ints(idx)
                .into_iter()
                .map(|i| {
                    let j = if i < 0 { i + d } else { i };
                    if j < 0 || j >= d {
                        bail!("index {i} is out of range for {d}")
                    }
                    Ok(j as usize)
                })
                .collect::<Result<_>>()?;
            gather_axis(x, ax, &ids, &idx.shape)
        }
        "Slice" => {
            let x = t(0)?.clone();
            let b = slice_bounds(cx, n, &x.shape)?;
            let mut cur = x;
            for (ax, &(s, e, st)) in b.iter().enumerate() {
                let idx: Vec<usize> = if st > 0 {
                    (s..e).step_by(st as usize).map(|v| v as usize).collect()
                } else {
                    let mut v = Vec::new();
                    let mut i = s;
                    while i > e {
                        v.push(i as usize);
                        i += st;
                    }
                    v
                };
                if idx.len() != cur.shape[ax] || idx.iter().enumerate().any(|(k, &i)| k != i) {
                    cur = gather_axis(&cur, ax, &idx, &[idx.len()]);
                }
            }
            cur
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Min" | "Max" | "Mod" => {
            let (a, b) = (t(0)?, t(1)?);
            let int = !a.dtype.is_float();
            let op = n.op;
            nary(&[a, b], a.dtype, |v| match op {
                "Add" => v[0] + v[1],
                "Sub" => v[0] - v[1],
                "Mul" => v[0] * v[1],
                "Div" if int => {
                    if v[1] == 0.0 {
                        0.0
                    } else {
                        (v[0] / v[1]).trunc()
                    }
                }
                "Div" => v[0] / v[1],
                "Pow" => v[0].powf(v[1]),
                "Min" => v[0].min(v[1]),
                "Max" => v[0].max(v[1]),
                _ if int => {
                    if v[1] == 0.0 {
                        0.0
                    } else {
                        v[0] - (v[0] / v[1]).floor() * v[1]
                    }
                }
                _ => v[0] % v[1],
            })?
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let op = n.op;
            nary(&[t(0)?, t(1)?], DType::Bool, |v| {
                let r = match op {
                    "Equal" => v[0] == v[1],
                    "Less" => v[0] < v[1],
                    "Greater" => v[0] > v[1],
                    "LessOrEqual" => v[0] <= v[1],
                    "GreaterOrEqual" => v[0] >= v[1],
                    "And" => v[0] != 0.0 && v[1] != 0.0,
                    "Or" => v[0] != 0.0 || v[1] != 0.0,
                    _ => (v[0] != 0.0) != (v[1] != 0.0),
                };
                r as u8 as f64
            })?
        }
        "Not" | "Neg" | "Abs" | "Sqrt" | "Exp" | "Log" | "Floor" | "Ceil" | "Reciprocal"
        | "Relu" | "Sign" => {
            let x = t(0)?;
            let op = n.op;
            let dt = x.dtype;
            nary(&[x], dt, |v| match op {
                "Not" => (v[0] == 0.0) as u8 as f64,
                "Neg" => -v[0],
                "Abs" => v[0].abs(),
                "Sqrt" => v[0].sqrt(),
                "Exp" => v[0].exp(),
                "Log" => v[0].ln(),
                "Floor" => v[0].floor(),
                "Ceil" => v[0].ceil(),
                "Reciprocal" => 1.0 / v[0],
                "Relu" => v[0].max(0.0),
                _ => v[0].signum() * (v[0] != 0.0) as u8 as f64,
            })?
        }
        "Where" => {
            let (c, a, b) = (t(0)?, t(1)?, t(2)?);
            nary(
                &[c, a, b],
                a.dtype,
                |v| if v[0] != 0.0 { v[1] } else { v[2] },
            )?
        }
        "Range" => {
            let (s, l, d) = (t(0)?, t(1)?, t(2)?);
            let first = |t: &Tensor| {
                t.data
                    .first()
                    .copied()
                    .ok_or_else(|| anyhow!("range bounds must be scalars"))
            };
            let (s0, l0, d0) = (first(s)?, first(l)?, first(d)?);
            if d0 == 0.0 {
                bail!("range with delta 0");
            }
            let cnt = ((l0 - s0) / d0).ceil().max(0.0) as usize;
            if cnt > MAX_FOLD {
                bail!("range of {cnt} elements is too large");
            }
            let data = (0..cnt)
                .map(|i| round_to(s.dtype, s0 + i as f64 * d0))
                .collect();
            Tensor {
                dtype: s.dtype,
                shape: vec![cnt],
                data,
            }
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = as_ints(t(0)?)
                .into_iter()
                .map(|d| usize::try_from(d).map_err(|_| anyhow!("negative dimension {d}")))
                .collect::<Result<_>>()?;
            if numel(&shape) > MAX_FOLD {
                return Ok(None);
            }
            let v = match n.attr("value").and_then(|a| a.t.as_ref()) {
                Some(tp) => decode_tensor(tp, None, fdt)?,
                None => Tensor::scalar(fdt, 0.0),
            };
            let fill = v.data.first().copied().unwrap_or(0.0);
            Tensor {
                dtype: v.dtype,
                data: vec![fill; numel(&shape)],
                shape,
            }
        }
        "ReduceProd" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceMean" => {
            let x = t(0)?;
            let r = x.shape.len();
            let a = match ins.get(1).and_then(|t| t.as_ref()) {
                Some(a) => Some(as_ints(a)),
                None => n.ints("axes"),
            };
            let ax = match a {
                Some(a) if !a.is_empty() => axes(&a, r)?,
                _ if n.int("noop_with_empty_axes", 0) != 0 => {
                    return Ok(Some(vec![Val::Const(x.clone())]))
                }
                _ => (0..r).collect(),
            };
            let keep = n.int("keepdims", 1) != 0;
            let mut out = match n.op {
                "ReduceProd" => reduce(x, &ax, keep, 1.0, |a, b| a * b),
                "ReduceMax" => reduce(x, &ax, keep, f64::NEG_INFINITY, f64::max),
                "ReduceMin" => reduce(x, &ax, keep, f64::INFINITY, f64::min),
                _ => reduce(x, &ax, keep, 0.0, |a, b| a + b),
            };
            if n.op == "ReduceMean" {
                let cnt: usize = ax.iter().map(|&i| x.shape[i]).product();
                out.data.iter_mut().for_each(|v| *v /= cnt.max(1) as f64);
            }
            out.data
                .iter_mut()
                .for_each(|v| *v = round_to(out.dtype, *v));
            out
        }
        _ => return Ok(None),
    };
    Ok(Some(vec![Val::Const(out)]))
}
