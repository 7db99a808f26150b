//! A naive reference evaluator for the IR in f64. It is the oracle for finite-difference checks
//! (backends have no f64 kernels worth trusting) and the engine of constant folding. Clarity over
//! speed: every op is written directly from its definition.

use super::ir::{ConvAttrs, DType, Graph, Op, Tensor, ValueId};
use ndarray::{ArrayD, Axis, IxDyn, Slice, Zip};
use thiserror::Error;

/// Evaluation failures.
#[derive(Debug, Error)]
pub enum EvalError {
    /// Wrong number of inputs.
    #[error("graph has {want} inputs, {got} were given")]
    Arity {
        /// Expected.
        want: usize,
        /// Given.
        got: usize,
    },
    /// An input of the wrong shape.
    #[error("input '{name}' has shape {got:?}, the graph expects {want:?}")]
    InputShape {
        /// Input name.
        name: String,
        /// Expected.
        want: Vec<usize>,
        /// Given.
        got: Vec<usize>,
    },
    /// An op the evaluator cannot run with these attributes.
    #[error("node '{node}' ({op}): {msg}")]
    Unsupported {
        /// Node.
        node: String,
        /// Op.
        op: &'static str,
        /// Why.
        msg: String,
    },
}

fn to_array(t: &Tensor) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone()).expect("tensor data matches its shape")
}

fn to_tensor(dtype: DType, a: ArrayD<f64>) -> Tensor {
    let shape = a.shape().to_vec();
    let data = a.as_standard_layout().iter().copied().collect();
    Tensor { dtype, shape, data }
}

/// Runs `g` on the given inputs (in graph-input order) and returns its outputs.
pub fn eval(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    let all = eval_values(g, inputs)?;
    Ok(g.outputs
        .iter()
        .map(|&o| to_tensor(g.dtype(o), all[o].clone().expect("outputs are computed")))
        .collect())
}

/// Runs `g` and returns every value it computes (`None` for values no node produced).
pub fn eval_values(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Option<ArrayD<f64>>>, EvalError> {
    if inputs.len() != g.inputs.len() {
        return Err(EvalError::Arity {
            want: g.inputs.len(),
            got: inputs.len(),
        });
    }
    let mut vals: Vec<Option<ArrayD<f64>>> = vec![None; g.values.len()];
    for (&id, t) in g.inputs.iter().zip(inputs) {
        if t.shape != g.shape(id) {
            return Err(EvalError::InputShape {
                name: g.info(id).name.clone(),
                want: g.shape(id).to_vec(),
                got: t.shape.clone(),
            });
        }
        vals[id] = Some(to_array(t));
    }
    for node in &g.nodes {
        let args: Vec<&ArrayD<f64>> = node
            .inputs
            .iter()
            .map(|&i| vals[i].as_ref().expect("topological order"))
            .collect();
        let outs =
            eval_op(g, &node.op, &args, &node.outputs).map_err(|msg| EvalError::Unsupported {
                node: node.name.clone(),
                op: node.op.name(),
                msg,
            })?;
        for (&o, v) in node.outputs.iter().zip(outs) {
            debug_assert_eq!(v.shape(), g.shape(o), "node {} output shape", node.name);
            vals[o] = Some(v);
        }
    }
    Ok(vals)
}

fn broadcast2(
    a: &ArrayD<f64>,
    b: &ArrayD<f64>,
    f: impl Fn(f64, f64) -> f64,
) -> Result<ArrayD<f64>, String> {
    let shape = super::ops::broadcast_shapes(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast")?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

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

fn eval_op(
    g: &Graph,
    op: &Op,
    a: &[&ArrayD<f64>],
    outs: &[ValueId],
) -> Result<Vec<ArrayD<f64>>, String> {
    let un = |f: fn(f64) -> f64| a[0].mapv(f);
    let one = |x: ArrayD<f64>| Ok(vec![x]);
    match op {
        Op::Constant(t) => one(to_array(t)),
        Op::Identity | Op::StopGradient => one(a[0].clone()),
        Op::Add => one(broadcast2(a[0], a[1], |x, y| x + y)?),
        Op::Sub => one(broadcast2(a[0], a[1], |x, y| x - y)?),
        Op::Mul => one(broadcast2(a[0], a[1], |x, y| x * y)?),
        Op::Div => one(broadcast2(a[0], a[1], |x, y| x / y)?),
        Op::Greater => one(broadcast2(a[0], a[1], |x, y| f64::from(u8::from(x > y)))?),
        Op::Equal => one(broadcast2(a[0], a[1], |x, y| f64::from(u8::from(x == y)))?),
        Op::Where => {
            let shape = g.shape(outs[0]).to_vec();
            let c = a[0].broadcast(IxDyn(&shape)).ok_or("broadcast")?;
            let x = a[1].broadcast(IxDyn(&shape)).ok_or("broadcast")?;
            let y = a[2].broadcast(IxDyn(&shape)).ok_or("broadcast")?;
            one(Zip::from(&c)
                .and(&x)
                .and(&y)
                .map_collect(|&c, &x, &y| if c != 0.0 { x } else { y }))
        }
        Op::Neg => one(un(|x| -x)),
        Op::Exp => one(un(f64::exp)),
        Op::Log => one(un(f64::ln)),
        Op::Sqrt => one(un(f64::sqrt)),
        Op::Relu => one(un(|x| x.max(0.0))),
        Op::Sigmoid => one(un(|x| 1.0 / (1.0 + (-x).exp()))),
        Op::Tanh => one(un(f64::tanh)),
        Op::Erf => one(un(erf)),
        Op::LeakyRelu { alpha } => {
            let al = *alpha;
            one(a[0].mapv(|x| if x > 0.0 { x } else { al * x }))
        }
        Op::Cast { to } => {
            let to = *to;
            one(a[0].mapv(|x| round_to(to, x)))
        }
        Op::MatMul => one(matmul(a[0], a[1], g.shape(outs[0]))?),
        Op::Transpose { perm } => one(a[0]
            .clone()
            .permuted_axes(IxDyn(perm))
            .as_standard_layout()
            .into_owned()),
        Op::Reshape { shape } => {
            let flat: Vec<f64> = a[0].as_standard_layout().iter().copied().collect();
            one(ArrayD::from_shape_vec(IxDyn(shape), flat).map_err(|e| e.to_string())?)
        }
        Op::Expand { shape } => one(a[0].broadcast(IxDyn(shape)).ok_or("broadcast")?.to_owned()),
        Op::ReduceSum { axes, keepdims } => one(reduce(a[0], axes, *keepdims, 0.0, |s, x| s + x)),
        Op::ReduceMax { axes, keepdims } => {
            one(reduce(a[0], axes, *keepdims, f64::NEG_INFINITY, f64::max))
        }
        Op::Concat { axis } => {
            let views: Vec<_> = a.iter().map(|x| x.view()).collect();
            one(ndarray::concatenate(Axis(*axis), &views).map_err(|e| e.to_string())?)
        }
        Op::Split { axis, sizes } => {
            let mut start = 0;
            let mut v = Vec::with_capacity(sizes.len());
            for &n in sizes {
                v.push(
                    a[0].slice_axis(Axis(*axis), Slice::from(start..start + n))
                        .to_owned(),
                );
                start += n;
            }
            Ok(v)
        }
        Op::Slice { starts, ends } => {
            let s = a[0]
                .slice_each_axis(|ax| Slice::from(starts[ax.axis.index()]..ends[ax.axis.index()]));
            one(s.to_owned())
        }
        Op::Pad {
            begins,
            ends,
            value,
        } => {
            let shape: Vec<usize> = a[0]
                .shape()
                .iter()
                .enumerate()
                .map(|(i, &d)| d + begins[i] + ends[i])
                .collect();
            let mut out = ArrayD::from_elem(IxDyn(&shape), *value);
            out.slice_each_axis_mut(|ax| {
                let i = ax.axis.index();
                Slice::from(begins[i]..begins[i] + a[0].shape()[i])
            })
            .assign(a[0]);
            one(out)
        }
        Op::Conv(c) => one(conv(a[0], a[1], c, g.shape(outs[0]))?),
        Op::ConvTranspose { conv: c, .. } => one(conv_transpose(a[0], a[1], c, g.shape(outs[0]))?),
    }
}

fn matmul(a: &ArrayD<f64>, b: &ArrayD<f64>, out_shape: &[usize]) -> Result<ArrayD<f64>, String> {
    let r = out_shape.len();
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
    out.into_shape_with_order(IxDyn(out_shape))
        .map_err(|e| e.to_string())
}

fn reduce(
    x: &ArrayD<f64>,
    axes: &[usize],
    keepdims: bool,
    init: f64,
    f: impl Fn(f64, f64) -> f64 + Copy,
) -> ArrayD<f64> {
    let mut out = x.clone();
    for &ax in axes.iter().rev() {
        out = out.fold_axis(Axis(ax), init, |&s, &v| f(s, v));
        if keepdims {
            out = out.insert_axis(Axis(ax));
        }
    }
    out
}

/// Spatial geometry of a 2-d convolution after lifting 1-d to 2-d.
struct Geo {
    s: [usize; 2],
    d: [usize; 2],
    p: [usize; 2],
}

fn geo(c: &ConvAttrs) -> Result<Geo, String> {
    match c.strides.len() {
        1 => Ok(Geo {
            s: [1, c.strides[0]],
            d: [1, c.dilations[0]],
            p: [0, c.pads_begin[0]],
        }),
        2 => Ok(Geo {
            s: [c.strides[0], c.strides[1]],
            d: [c.dilations[0], c.dilations[1]],
            p: [c.pads_begin[0], c.pads_begin[1]],
        }),
        r => Err(format!(
            "the reference evaluator handles 1-d and 2-d convolutions, not {r}-d"
        )),
    }
}

fn as4(x: &ArrayD<f64>) -> ndarray::Array4<f64> {
    let s = x.shape();
    let s4 = if s.len() == 3 {
        [s[0], s[1], 1, s[2]]
    } else {
        [s[0], s[1], s[2], s[3]]
    };
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order(s4)
        .expect("rank checked")
}

fn conv(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    c: &ConvAttrs,
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let gm = geo(c)?;
    let (x, w) = (as4(x), as4(w));
    let (n, cin, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    let os = as4(&ArrayD::zeros(IxDyn(out_shape))).dim();
    let (oh, ow) = (os.2, os.3);
    let og = o / c.group;
    let mut out = ndarray::Array4::<f64>::zeros((n, o, oh, ow));
    for b in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0.0;
                    for ic in 0..cg {
                        let ch = grp * cg + ic;
                        debug_assert!(ch < cin);
                        for a in 0..kh {
                            let hi = (i * gm.s[0] + a * gm.d[0]) as isize - gm.p[0] as isize;
                            if hi < 0 || hi >= h as isize {
                                continue;
                            }
                            for bb in 0..kw {
                                let wi = (j * gm.s[1] + bb * gm.d[1]) as isize - gm.p[1] as isize;
                                if wi < 0 || wi >= wd as isize {
                                    continue;
                                }
                                acc += x[[b, ch, hi as usize, wi as usize]] * w[[oc, ic, a, bb]];
                            }
                        }
                    }
                    out[[b, oc, i, j]] = acc;
                }
            }
        }
    }
    out.into_shape_with_order(IxDyn(out_shape))
        .map_err(|e| e.to_string())
}

fn conv_transpose(
    y: &ArrayD<f64>,
    w: &ArrayD<f64>,
    c: &ConvAttrs,
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let gm = geo(c)?;
    let (y, w) = (as4(y), as4(w));
    let (n, o, ih, iw) = y.dim();
    let (_, cg, kh, kw) = w.dim();
    let os = as4(&ArrayD::zeros(IxDyn(out_shape))).dim();
    let (cout, oh, ow) = (os.1, os.2, os.3);
    let og = o / c.group;
    let mut out = ndarray::Array4::<f64>::zeros((n, cout, oh, ow));
    for b in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for i in 0..ih {
                for j in 0..iw {
                    let v = y[[b, oc, i, j]];
                    for ic in 0..cg {
                        let ch = grp * cg + ic;
                        for a in 0..kh {
                            let hi = (i * gm.s[0] + a * gm.d[0]) as isize - gm.p[0] as isize;
                            if hi < 0 || hi >= oh as isize {
                                continue;
                            }
                            for bb in 0..kw {
                                let wi = (j * gm.s[1] + bb * gm.d[1]) as isize - gm.p[1] as isize;
                                if wi < 0 || wi >= ow as isize {
                                    continue;
                                }
                                out[[b, ch, hi as usize, wi as usize]] += v * w[[oc, ic, a, bb]];
                            }
                        }
                    }
                }
            }
        }
    }
    out.into_shape_with_order(IxDyn(out_shape))
        .map_err(|e| e.to_string())
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
