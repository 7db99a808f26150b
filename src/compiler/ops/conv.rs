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
    if a.group == 0 || w.shape[0] % a.group != 0 {
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

/// `∂⟨gy, Conv(x, w)⟩/∂w` as one grouped convolution of transposed operands: the roles of
/// stride and dilation swap, and the result is cut to the kernel extent.
pub fn weight_grad(
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
