//! Convolution and its adjoint. Both are bilinear; each derivative is the other op or the
//! weight-gradient correlation, which is itself a grouped convolution of transposed operands, so
//! the family is closed under differentiation.

use crate::compiler::ir::{ConvAttrs, DType, Graph, IrError, Node, Op, ValueId, ValueInfo};

/// Spatial output extent of a convolution.
pub fn conv_out(a: &ConvAttrs, input: &[usize], kernel: &[usize]) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(input.len());
    for i in 0..input.len() {
        let span = a.dilations[i] * (kernel[i] - 1) + 1;
        let padded = input[i] + a.pads_begin[i] + a.pads_end[i];
        if padded < span || a.strides[i] == 0 {
            return Err(format!(
                "kernel {kernel:?} does not fit input {input:?} on axis {i}"
            ));
        }
        out.push((padded - span) / a.strides[i] + 1);
    }
    Ok(out)
}

fn check_attrs(a: &ConvAttrs, x: &ValueInfo, w: &ValueInfo) -> Result<usize, String> {
    let r = x.shape.len();
    if r < 3 || w.shape.len() != r {
        return Err(format!(
            "input {:?} and weight {:?} ranks do not fit",
            x.shape, w.shape
        ));
    }
    let sp = r - 2;
    if a.strides.len() != sp
        || a.dilations.len() != sp
        || a.pads_begin.len() != sp
        || a.pads_end.len() != sp
    {
        return Err(format!("attributes need {sp} spatial entries"));
    }
    if x.dtype != w.dtype || !x.dtype.is_float() {
        return Err("input and weight must be floats of one type".into());
    }
    if a.group == 0 || !w.shape[0].is_multiple_of(a.group) {
        return Err(format!(
            "weight {:?} does not split into {} groups",
            w.shape, a.group
        ));
    }
    Ok(sp)
}

/// Shape rule of `Conv(x [N,C,…], w [O,C/g,k…]) → [N,O,…]`.
pub fn infer_conv(
    a: &ConvAttrs,
    x: &ValueInfo,
    w: &ValueInfo,
) -> Result<Vec<(DType, Vec<usize>)>, String> {
    check_attrs(a, x, w)?;
    if x.shape[1] != w.shape[1] * a.group {
        return Err(format!(
            "input has {} channels, weight {:?} with {} groups expects {}",
            x.shape[1],
            w.shape,
            a.group,
            w.shape[1] * a.group
        ));
    }
    let mut s = vec![x.shape[0], w.shape[0]];
    s.extend(conv_out(a, &x.shape[2..], &w.shape[2..])?);
    Ok(vec![(x.dtype, s)])
}

/// Shape rule of `ConvTranspose(y [N,O,…], w [O,C/g,k…]) → [N,C,out…]`.
pub fn infer_conv_transpose(
    a: &ConvAttrs,
    out: &[usize],
    y: &ValueInfo,
    w: &ValueInfo,
) -> Result<Vec<(DType, Vec<usize>)>, String> {
    check_attrs(a, y, w)?;
    if y.shape[1] != w.shape[0] {
        return Err(format!(
            "input has {} channels, weight {:?} expects {}",
            y.shape[1], w.shape, w.shape[0]
        ));
    }
    if conv_out(a, out, &w.shape[2..])? != y.shape[2..] {
        return Err(format!(
            "output extent {out:?} is not the preimage of {:?}",
            &y.shape[2..]
        ));
    }
    let mut s = vec![y.shape[0], w.shape[1] * a.group];
    s.extend_from_slice(out);
    Ok(vec![(y.dtype, s)])
}

/// `∂⟨gy, Conv(x, w)⟩/∂w`. With unit strides and one group (the common case) it is one matrix
/// product per kernel offset between the output gradient and a shifted window of the input,
/// which the backends run as large GEMMs; otherwise it is a grouped convolution of transposed
/// operands (stride and dilation swap roles, the result is cut to the kernel extent).
pub fn weight_grad(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    if a.group == 1 && a.strides.iter().all(|&s| s == 1) {
        weight_grad_windows(g, a, x, gy, kernel)
    } else {
        weight_grad_conv(g, a, x, gy, kernel)
    }
}

/// `dW[o,i,k] = Σ_{n,p} gy[n,o,p] · xpad[n,i,p + k·d]` as one MatMul per kernel offset `k`.
fn weight_grad_windows(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    let sp = kernel.len();
    let sy = g.shape(gy).to_vec();
    let (n, o, ci) = (sy[0], sy[1], g.shape(x)[1]);
    let out_sp = sy[2..].to_vec();
    let xp = if a.pads_begin.iter().chain(&a.pads_end).any(|&p| p > 0) {
        let mut begins = vec![0, 0];
        begins.extend(&a.pads_begin);
        let mut ends = vec![0, 0];
        ends.extend(&a.pads_end);
        g.push1(
            "",
            Op::Pad {
                begins,
                ends,
                value: 0.0,
            },
            &[x],
        )?
    } else {
        x
    };
    // Channels last, so a window flattens to [N·P, Ci] without another transpose.
    let mut perm = vec![0];
    perm.extend(2..2 + sp);
    perm.push(1);
    let xt = g.transpose(xp, &perm)?;
    let xts = g.shape(xt).to_vec();
    let mut gperm = vec![1, 0];
    gperm.extend(2..2 + sp);
    let gt = g.transpose(gy, &gperm)?;
    let rows: usize = n * out_sp.iter().product::<usize>();
    let gt = g.reshape(gt, &[o, rows])?;
    let mut parts = Vec::new();
    let count: usize = kernel.iter().product();
    for flat in 0..count {
        // Row-major kernel offset.
        let mut off = vec![0; sp];
        let mut r = flat;
        for ax in (0..sp).rev() {
            off[ax] = r % kernel[ax];
            r /= kernel[ax];
        }
        let mut starts = vec![0];
        let mut ends = vec![n];
        for ax in 0..sp {
            starts.push(off[ax] * a.dilations[ax]);
            ends.push(off[ax] * a.dilations[ax] + out_sp[ax]);
        }
        starts.push(0);
        ends.push(ci);
        let win = if starts.iter().all(|&s| s == 0) && ends == xts {
            xt
        } else {
            g.push1("", Op::Slice { starts, ends }, &[xt])?
        };
        let win = g.reshape(win, &[rows, ci])?;
        let m = g.matmul(gt, win)?;
        parts.push(g.reshape(m, &[1, o, ci])?);
    }
    let cat = if parts.len() == 1 {
        parts[0]
    } else {
        g.push1("", Op::Concat { axis: 0 }, &parts)?
    };
    let t = g.transpose(cat, &[1, 2, 0])?;
    let mut ws = vec![o, ci];
    ws.extend_from_slice(kernel);
    g.reshape(t, &ws)
}

fn weight_grad_conv(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    let sx = g.shape(x).to_vec();
    let sy = g.shape(gy).to_vec();
    let (n, grp) = (sx[0], a.group);
    let (ci, co) = (sx[1] / grp, sy[1] / grp);
    let sp = sx.len() - 2;
    let tail = |v: &[usize]| v[2..].to_vec();
    // x [N, G·ci, S] → [ci, G·N, S]
    let mut s5 = vec![n, grp, ci];
    s5.extend(tail(&sx));
    let x5 = g.reshape(x, &s5)?;
    let mut perm = vec![2, 1, 0];
    perm.extend(3..3 + sp);
    let xt = g.transpose(x5, &perm)?;
    let mut s3 = vec![ci, grp * n];
    s3.extend(tail(&sx));
    let xr = g.reshape(xt, &s3)?;
    // gy [N, G·co, So] → [G·co, N, So]
    let mut t5 = vec![n, grp, co];
    t5.extend(tail(&sy));
    let y5 = g.reshape(gy, &t5)?;
    let mut perm = vec![1, 2, 0];
    perm.extend(3..3 + sp);
    let yt = g.transpose(y5, &perm)?;
    let mut t3 = vec![grp * co, n];
    t3.extend(tail(&sy));
    let yr = g.reshape(yt, &t3)?;
    let swapped = ConvAttrs {
        strides: a.dilations.clone(),
        dilations: a.strides.clone(),
        pads_begin: a.pads_begin.clone(),
        pads_end: a.pads_end.clone(),
        group: grp,
    };
    let full = g.push1("", Op::Conv(swapped), &[xr, yr])?; // [ci, G·co, K'…], K' ≥ k
    let mut ends = vec![ci, grp * co];
    ends.extend_from_slice(kernel);
    let cut = if g.shape(full) == ends.as_slice() {
        full
    } else {
        g.push1(
            "",
            Op::Slice {
                starts: vec![0; ends.len()],
                ends,
            },
            &[full],
        )?
    };
    let mut perm = vec![1, 0];
    perm.extend(2..2 + sp);
    g.transpose(cut, &perm)
}

/// Derivative rules for `Conv` and `ConvTranspose`.
pub fn vjp(g: &mut Graph, node: &Node, gy: ValueId) -> Result<Vec<Option<ValueId>>, IrError> {
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let kernel = g.shape(w)[2..].to_vec();
    match &node.op {
        Op::Conv(a) => {
            let out_spatial = g.shape(x)[2..].to_vec();
            let dx = g.push1(
                "",
                Op::ConvTranspose {
                    conv: a.clone(),
                    out_spatial,
                },
                &[gy, w],
            )?;
            let dw = weight_grad(g, a, x, gy, &kernel)?;
            Ok(vec![Some(dx), Some(dw)])
        }
        Op::ConvTranspose { conv, .. } => {
            // ⟨h, Convᵀ_w(y)⟩ = ⟨Conv_w(h), y⟩.
            let dy = g.push1("", Op::Conv(conv.clone()), &[gy, w])?;
            let dw = weight_grad(g, conv, gy, x, &kernel)?;
            Ok(vec![Some(dy), Some(dw)])
        }
        other => unreachable!("{} is not a convolution", other.name()),
    }
}
