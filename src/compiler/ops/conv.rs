//! Convolution and its adjoint. Both are bilinear; each derivative is the other op or the
//! weight-gradient correlation, which is itself a grouped convolution of transposed operands, so
//! the family is closed under differentiation.

use super::conv_point::OnePosition;
use super::export_form::{pad_node, usizes, AttrValue, Export, ExportNode, Operand, Output};
use super::layout::{Concat, Pad, Slice};
use super::{operand, operands, result_cotangent, result_shape, Cotangents, OutTypes, Primitive};
use crate::compiler::ir::{numel, ConvAttrs, DType, Graph, IrError, Node, Op, ValueId, ValueInfo};
use ndarray::{ArrayD, IxDyn};

/// `∂⟨gy, Conv(x, w)⟩/∂w` for a convolution with these attributes and kernel extent: operands
/// x \[N,C,…\] and gy \[N,O,…\], result \[O,C/g,k…\]. Being bilinear, its derivatives are a
/// convolution and a transposed convolution with the cotangent as their weight, which the
/// backends run as such; in ONNX (which has no such op) it is written as the matrix products of
/// [`weight_grad`]. Kept as one primitive, pass 2 differentiates it in two kernels instead of
/// through a window per kernel tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvWeightGrad {
    /// Attributes of the convolution whose weight gradient this is.
    pub conv: ConvAttrs,
    /// Spatial kernel extent.
    pub kernel: Vec<usize>,
}

/// The adjoint of the convolution (`Op::Conv`) with the same attributes and weight layout,
/// mapping \[N,O,…\] to \[N,C,…\]; `out_spatial` fixes the spatial output extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvTranspose {
    /// Attributes of the convolution this is the adjoint of.
    pub conv: ConvAttrs,
    /// Spatial extent of the output.
    pub out_spatial: Vec<usize>,
}

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
fn infer_conv(
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
fn infer_conv_transpose(
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

/// `∂⟨gy, Conv(x, w)⟩/∂w` in other primitives: the ONNX form of [`ConvWeightGrad`]. With unit
/// strides and one group (the common case) it is made of matrix products between the output
/// gradient and shifted windows of the input, which the backends run as large GEMMs; otherwise
/// it is a grouped convolution of transposed operands (stride and dilation swap roles, the result
/// is cut to the kernel extent).
pub fn weight_grad(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    if let Some(p) = OnePosition::of(a, &g.shape(x)[2..], kernel) {
        return p.weight_grad(g, x, gy, kernel);
    }
    if a.group != 1 || a.strides.iter().any(|&s| s != 1) {
        return weight_grad_conv(g, a, x, gy, kernel);
    }
    let taps: usize = kernel.iter().product();
    let positions: usize = g.shape(gy)[2..].iter().product();
    if taps * g.shape(x)[1] <= positions {
        weight_grad_per_image(g, a, x, gy, kernel)
    } else {
        weight_grad_windows(g, a, x, gy, kernel)
    }
}

/// The kernel offsets in row-major order, each with the window of the padded input it reads:
/// the start and end of every spatial axis.
pub(super) fn tap_windows(
    a: &ConvAttrs,
    kernel: &[usize],
    out_sp: &[usize],
) -> Vec<Vec<(usize, usize)>> {
    let sp = kernel.len();
    let count: usize = kernel.iter().product();
    (0..count)
        .map(|flat| {
            let mut off = vec![0; sp];
            let mut r = flat;
            for ax in (0..sp).rev() {
                off[ax] = r % kernel[ax];
                r /= kernel[ax];
            }
            (0..sp)
                .map(|ax| {
                    let s = off[ax] * a.dilations[ax];
                    (s, s + out_sp[ax])
                })
                .collect()
        })
        .collect()
}

/// Zero padding of the spatial axes `first..first + sp` of `x` (none when the conv has none).
pub(super) fn pad_spatial(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    first: usize,
) -> Result<ValueId, IrError> {
    if a.pads_begin.iter().chain(&a.pads_end).all(|&p| p == 0) {
        return Ok(x);
    }
    let r = g.shape(x).len();
    let (mut begins, mut ends) = (vec![0; r], vec![0; r]);
    for (ax, (&b, &e)) in a.pads_begin.iter().zip(&a.pads_end).enumerate() {
        begins[first + ax] = b;
        ends[first + ax] = e;
    }
    g.push1(
        "",
        Op::Pad(Pad {
            begins,
            ends,
            value: 0.0,
        }),
        &[x],
    )
}

/// `x[.., window, ..]` on the spatial axes from `first`, or `x` itself when the window is all of
/// it.
pub(super) fn window(
    g: &mut Graph,
    x: ValueId,
    first: usize,
    win: &[(usize, usize)],
) -> Result<ValueId, IrError> {
    let shape = g.shape(x).to_vec();
    let mut starts = vec![0; shape.len()];
    let mut ends = shape.clone();
    for (ax, &(s, e)) in win.iter().enumerate() {
        starts[first + ax] = s;
        ends[first + ax] = e;
    }
    if starts.iter().all(|&s| s == 0) && ends == shape {
        return Ok(x);
    }
    g.push1("", Op::Slice(Slice { starts, ends }), &[x])
}

/// The pieces joined along `axis` (no node for a single piece).
pub(super) fn concat(g: &mut Graph, parts: &[ValueId], axis: usize) -> Result<ValueId, IrError> {
    match parts {
        [one] => Ok(*one),
        _ => g.push1("", Op::Concat(Concat { axis }), parts),
    }
}

/// `dW[o,i,k] = Σ_{n,p} gy[n,o,p] · xpad[n,i,p + k·d]` as one MatMul per kernel offset `k`,
/// over all images at once: for layers whose input has many channels.
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
    // Channels last, so a window flattens to [N·P, Ci] without another transpose; padded after
    // the transpose, where each padded row is one contiguous run (ONNX Runtime pads NCHW rows
    // of a few elements several times slower).
    let mut perm = vec![0];
    perm.extend(2..2 + sp);
    perm.push(1);
    let xt = g.transpose(x, &perm)?;
    let xt = pad_spatial(g, a, xt, 1)?;
    let mut gperm = vec![1, 0];
    gperm.extend(2..2 + sp);
    let gt = g.transpose(gy, &gperm)?;
    let rows: usize = n * out_sp.iter().product::<usize>();
    let gt = g.reshape(gt, &[o, rows])?;
    let mut parts = Vec::new();
    for win in tap_windows(a, kernel, &out_sp) {
        let w = window(g, xt, 1, &win)?;
        let w = g.reshape(w, &[rows, ci])?;
        let m = g.matmul(gt, w)?;
        parts.push(g.reshape(m, &[1, o, ci])?);
    }
    let cat = concat(g, &parts, 0)?;
    let t = g.transpose(cat, &[1, 2, 0])?;
    let mut ws = vec![o, ci];
    ws.extend_from_slice(kernel);
    g.reshape(t, &ws)
}

/// The same sum as one batched MatMul per image, `gy[n] [O, P] · cols[n]ᵀ [P, K·Ci]`, summed over
/// the images: for layers with few input channels (the first), where the per-offset form is a
/// matrix-vector product that reads the output gradient once per offset. The columns and the
/// per-image products are no larger than the output gradient, since `K·Ci ≤ P`.
fn weight_grad_per_image(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    let sy = g.shape(gy).to_vec();
    let (n, o, ci) = (sy[0], sy[1], g.shape(x)[1]);
    let out_sp = sy[2..].to_vec();
    let positions: usize = out_sp.iter().product();
    let taps: usize = kernel.iter().product();
    let xp = pad_spatial(g, a, x, 2)?;
    let mut parts = Vec::new();
    for win in tap_windows(a, kernel, &out_sp) {
        parts.push(window(g, xp, 2, &win)?);
    }
    let cols = concat(g, &parts, 1)?;
    let cols = g.reshape(cols, &[n, taps * ci, positions])?;
    let cols = g.transpose(cols, &[0, 2, 1])?;
    let gyr = g.reshape(gy, &[n, o, positions])?;
    let per_image = g.matmul(gyr, cols)?;
    let summed = g.reduce_sum(per_image, &[0], false)?;
    let r = g.reshape(summed, &[o, taps, ci])?;
    let t = g.transpose(r, &[0, 2, 1])?;
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
            Op::Slice(Slice {
                starts: vec![0; ends.len()],
                ends,
            }),
            &[full],
        )?
    };
    let mut perm = vec![1, 0];
    perm.extend(2..2 + sp);
    g.transpose(cut, &perm)
}

/// The weight gradient as the [`ConvWeightGrad`] primitive.
fn weight_grad_of(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    gy: ValueId,
    kernel: &[usize],
) -> Result<ValueId, IrError> {
    let wg = ConvWeightGrad {
        conv: a.clone(),
        kernel: kernel.to_vec(),
    };
    g.push1("", Op::ConvWeightGrad(wg), &[x, gy])
}

impl Primitive for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "ConvWeightGrad"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [x, gy] = operands::<2>(inputs)?;
        let a = &self.conv;
        let r = x.shape.len();
        if r < 3 || gy.shape.len() != r || self.kernel.len() != r - 2 {
            return Err(format!(
                "input {:?}, output gradient {:?} and kernel {:?} ranks do not fit",
                x.shape, gy.shape, self.kernel
            ));
        }
        if a.group == 0
            || !x.shape[1].is_multiple_of(a.group)
            || !gy.shape[1].is_multiple_of(a.group)
        {
            return Err(format!(
                "channels {} and {} do not split into {} groups",
                x.shape[1], gy.shape[1], a.group
            ));
        }
        let mut ws = vec![gy.shape[1], x.shape[1] / a.group];
        ws.extend_from_slice(&self.kernel);
        let w = ValueInfo {
            name: String::new(),
            dtype: x.dtype,
            shape: ws.clone(),
        };
        let out = infer_conv(a, x, &w)?;
        if out.first().map(|(_, s)| s.as_slice()) != Some(gy.shape.as_slice())
            || gy.dtype != x.dtype
        {
            return Err(format!(
                "output gradient {:?} is not the shape of the convolution of {:?} by {ws:?}",
                gy.shape, x.shape
            ));
        }
        Ok(vec![(x.dtype, ws)])
    }
    /// `⟨h, ∂⟨gy, Conv_w(x)⟩/∂w⟩ = ⟨gy, Conv_h(x)⟩ = ⟨Convᵀ_h(gy), x⟩`.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let h = result_cotangent(node, cots)?;
        let (x, gy) = (node.inputs[0], node.inputs[1]);
        let adjoint = ConvTranspose {
            conv: self.conv.clone(),
            out_spatial: g.shape(x)[2..].to_vec(),
        };
        let dx = g.push1("", Op::ConvTranspose(adjoint), &[gy, h])?;
        let dgy = g.push1("", Op::Conv(self.conv.clone()), &[x, h])?;
        Ok(vec![Some(dx), Some(dgy)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let (x, gy) = (operand(inputs, 0)?, operand(inputs, 1)?);
        Ok(vec![reference_weight_grad(
            x,
            gy,
            &self.conv,
            result_shape(outs, 0)?,
        )?])
    }
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        let mut sub = Graph::new();
        let (Some(x), Some(gy)) = (inputs.first(), inputs.get(1)) else {
            return Export::Graph(sub);
        };
        let xv = sub.input("x", x.dtype, x.shape.clone());
        let gv = sub.input("gy", gy.dtype, gy.shape.clone());
        // The shapes were checked when the node was made, so the lowering cannot fail here; an
        // empty graph would be refused by any ONNX checker rather than run wrong.
        if let Ok(dw) = weight_grad(&mut sub, &self.conv, xv, gv, &self.kernel) {
            sub.outputs = vec![dw];
        }
        Export::Graph(sub)
    }
    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        let taps = self.kernel.iter().product::<usize>() as f64;
        let cg =
            inputs.first().and_then(|x| x.get(1)).copied().unwrap_or(0) / self.conv.group.max(1);
        2.0 * inputs.get(1).map_or(0, |gy| numel(gy)) as f64 * cg as f64 * taps
    }
}

/// The ONNX attributes of a convolution with this kernel.
fn conv_attrs(a: &ConvAttrs, kernel: &[usize]) -> Vec<(&'static str, AttrValue)> {
    let mut pads = a.pads_begin.clone();
    pads.extend_from_slice(&a.pads_end);
    vec![
        ("kernel_shape", AttrValue::Ints(usizes(kernel))),
        ("strides", AttrValue::Ints(usizes(&a.strides))),
        ("dilations", AttrValue::Ints(usizes(&a.dilations))),
        ("pads", AttrValue::Ints(usizes(&pads))),
        ("group", AttrValue::Int(a.group as i64)),
    ]
}

/// The spatial kernel extent of a weight operand.
fn kernel_of(w: Option<&&ValueInfo>) -> Vec<usize> {
    w.map_or_else(Vec::new, |w| w.shape.get(2..).unwrap_or_default().to_vec())
}

/// Multiply-adds of a weight with these dimensions per element of `per`.
fn conv_flops(per: Option<&&[usize]>, w: Option<&&[usize]>) -> f64 {
    let per = per.map_or(0, |s| numel(s)) as f64;
    let taps = w.map_or(0, |w| numel(w.get(1..).unwrap_or_default())) as f64;
    2.0 * per * taps
}

/// N-d convolution (no bias): x \[N,C,…\], w \[O,C/g,k…\]; the primitive is its attributes.
impl Primitive for ConvAttrs {
    fn name(&self) -> &'static str {
        "Conv"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    /// Operands x, w and an optional bias \[O\], added to every output position (ONNX `Conv`'s
    /// third input: one pass over the output less than a separate addition).
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let (x, w, bias) = match inputs {
            [x, w] => (x, w, None),
            [x, w, b] => (x, w, Some(b)),
            _ => return Err(format!("expects 2 or 3 operands, got {}", inputs.len())),
        };
        let out = infer_conv(self, x, w)?;
        if let Some(b) = bias {
            if b.dtype != x.dtype || b.shape != [w.shape[0]] {
                return Err(format!(
                    "bias must be {:?} [{}], got {:?} {:?}",
                    x.dtype, w.shape[0], b.dtype, b.shape
                ));
            }
        }
        Ok(out)
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let kernel = g.shape(w)[2..].to_vec();
        let out_spatial = g.shape(x)[2..].to_vec();
        let adjoint = ConvTranspose {
            conv: self.clone(),
            out_spatial,
        };
        let dx = g.push1("", Op::ConvTranspose(adjoint), &[gy, w])?;
        let dw = weight_grad_of(g, self, x, gy, &kernel)?;
        let mut cot = vec![Some(dx), Some(dw)];
        if node.inputs.len() == 3 {
            let mut axes = vec![0];
            axes.extend(2..g.shape(gy).len());
            cot.push(Some(g.reduce_sum(gy, &axes, false)?));
        }
        Ok(cot)
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let (x, w) = (operand(inputs, 0)?, operand(inputs, 1)?);
        let mut y = reference_conv(x, w, self, result_shape(outs, 0)?)?;
        if let Some(b) = inputs.get(2) {
            if b.len() != y.shape().get(1).copied().unwrap_or(0) {
                return Err(format!("bias {:?} for output {:?}", b.shape(), y.shape()));
            }
            for (o, &v) in b.iter().enumerate() {
                y.index_axis_mut(ndarray::Axis(1), o)
                    .mapv_inplace(|e| e + v);
            }
        }
        Ok(vec![y])
    }
    /// ONNX `Conv`, or one matrix product over the batch where the output has few positions.
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        let kernel = kernel_of(inputs.get(1));
        if let Some(g) = one_position_conv(self, inputs, &kernel) {
            return Export::Graph(g);
        }
        Export::node(ExportNode {
            attrs: conv_attrs(self, &kernel),
            ..ExportNode::on_operands("Conv", inputs.len())
        })
    }
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        conv_flops(outputs.first(), inputs.get(1))
    }
}

/// `Conv(x, w [, b])` as the matrix product of [`OnePosition`] or, for a few output positions,
/// of the batched form; `None` where neither applies.
fn one_position_conv(a: &ConvAttrs, inputs: &[&ValueInfo], kernel: &[usize]) -> Option<Graph> {
    let (x, w) = (inputs.first()?, inputs.get(1)?);
    let p = OnePosition::of(a, x.shape.get(2..)?, kernel);
    if p.is_none() && !super::conv_batched::applies(a, &x.shape, kernel) {
        return None;
    }
    let mut g = Graph::new();
    let xv = g.input("x", x.dtype, x.shape.clone());
    let wv = g.input("w", w.dtype, w.shape.clone());
    let bv = inputs
        .get(2)
        .map(|b| g.input("b", b.dtype, b.shape.clone()));
    let y = match p {
        Some(p) => p.conv(&mut g, xv, wv, bv),
        None => super::conv_batched::conv(&mut g, a, xv, wv, bv),
    }
    .ok()?;
    g.outputs = vec![y];
    Some(g)
}

impl ConvTranspose {
    /// `Convᵀ_w(y)` as the matrix product of [`OnePosition`], where the convolution has one
    /// output position.
    fn one_position(&self, inputs: &[&ValueInfo]) -> Option<Graph> {
        let (y, w) = (inputs.first()?, inputs.get(1)?);
        let p = OnePosition::of(&self.conv, &self.out_spatial, w.shape.get(2..)?)?;
        let mut g = Graph::new();
        let yv = g.input("y", y.dtype, y.shape.clone());
        let wv = g.input("w", w.dtype, w.shape.clone());
        let x = p.conv_transpose(&mut g, yv, wv, &self.out_spatial).ok()?;
        g.outputs = vec![x];
        Some(g)
    }

    /// `Convᵀ_w(y)` as `Conv_{w'}(y)` for unit strides and one group: `w'[c, o, t] = w[o, c,
    /// k − 1 − t]`, begin pads `d·(k − 1) − pb` and end pads that give the IR's output extent.
    /// `None` where the strides, the groups or a negative pad rule it out.
    fn as_flipped_conv(&self, inputs: &[&ValueInfo]) -> Option<Graph> {
        let a = &self.conv;
        let (y, w) = (inputs.first()?, inputs.get(1)?);
        if a.group != 1 || a.strides.iter().any(|&s| s != 1) {
            return None;
        }
        let kernel = w.shape.get(2..)?.to_vec();
        let sp = kernel.len();
        let (mut pads_begin, mut pads_end) = (Vec::new(), Vec::new());
        for (i, &k) in kernel.iter().enumerate() {
            let reach = a.dilations.get(i)? * k.checked_sub(1)?;
            pads_begin.push(reach.checked_sub(*a.pads_begin.get(i)?)?);
            let ny = *y.shape.get(2 + i)?;
            pads_end.push((self.out_spatial.get(i)? + a.pads_begin[i]).checked_sub(ny)?);
        }
        let (o, c) = (*w.shape.first()?, *w.shape.get(1)?);
        let taps: usize = kernel.iter().product();
        let mut g = Graph::new();
        let yv = g.input("y", y.dtype, y.shape.clone());
        let wv = g.input("w", w.dtype, w.shape.clone());
        let mut perm = vec![1, 0];
        perm.extend(2..2 + sp);
        let wt = g.transpose(wv, &perm).ok()?;
        let flipped = if taps > 1 {
            // Reversing the row-major tap index reverses every spatial axis at once.
            let rows = g.reshape(wt, &[c * o, taps]).ok()?;
            let mut rev = vec![0.0; taps * taps];
            for t in 0..taps {
                rev[t * taps + (taps - 1 - t)] = 1.0;
            }
            let r = g.const_tensor(w.dtype, vec![taps, taps], rev);
            let m = g.matmul(rows, r).ok()?;
            let mut ws = vec![c, o];
            ws.extend(&kernel);
            g.reshape(m, &ws).ok()?
        } else {
            wt
        };
        let conv = ConvAttrs {
            strides: a.strides.clone(),
            pads_begin,
            pads_end,
            dilations: a.dilations.clone(),
            group: 1,
        };
        let x = g.push1("", Op::Conv(conv), &[yv, flipped]).ok()?;
        let mut want = vec![*y.shape.first()?, c];
        want.extend(&self.out_spatial);
        if g.shape(x) != want.as_slice() {
            return None;
        }
        g.outputs = vec![x];
        Some(g)
    }
}

impl Primitive for ConvTranspose {
    fn name(&self) -> &'static str {
        "ConvTranspose"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [y, w] = operands::<2>(inputs)?;
        infer_conv_transpose(&self.conv, &self.out_spatial, y, w)
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let kernel = g.shape(w)[2..].to_vec();
        // ⟨h, Convᵀ_w(y)⟩ = ⟨Conv_w(h), y⟩.
        let dy = g.push1("", Op::Conv(self.conv.clone()), &[gy, w])?;
        let dw = weight_grad_of(g, &self.conv, gy, x, &kernel)?;
        Ok(vec![Some(dy), Some(dw)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let (y, w) = (operand(inputs, 0)?, operand(inputs, 1)?);
        Ok(vec![reference_conv_transpose(
            y,
            w,
            &self.conv,
            result_shape(outs, 0)?,
        )?])
    }
    /// With one output position, the matrix product of [`OnePosition`]. With unit strides and one
    /// group, a convolution with the weight's channel axes swapped and
    /// its taps reversed: ONNX Runtime runs its `Conv` up to 1.5 times faster than its
    /// `ConvTranspose` on the same work (79 against 121 ms for ConvNet-D3's second layer at batch
    /// 256), and tract about as much. Otherwise ONNX `ConvTranspose` with its end pads chosen
    /// to crop to the IR's output extent, followed by a zero `Pad` at the spatial ends where that
    /// extent exceeds what any window reaches.
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        if let Some(g) = self.one_position(inputs) {
            return Export::Graph(g);
        }
        if let Some(g) = self.as_flipped_conv(inputs) {
            return Export::Graph(g);
        }
        let conv = &self.conv;
        let kernel = kernel_of(inputs.get(1));
        let sy = inputs.first().map_or(&[][..], |y| &y.shape[..]);
        // The adjoint writes input position j·s + t·d − pb for every output j and tap t: up to
        // `reach` = s·(in−1) + (k−1)·d + 1 − pb positions. The IR conv's own pads_end only fixed
        // the forward extent, so ONNX gets pads_end = reach − out (crop to exactly
        // out_spatial), or 0 and a zero Pad for positions no window reaches.
        let mut pads_end = Vec::with_capacity(kernel.len());
        let mut rest = Vec::with_capacity(kernel.len());
        for (i, &k) in kernel.iter().enumerate() {
            let span = conv.dilations[i] * (k - 1) + 1;
            let extent = sy.get(2 + i).copied().unwrap_or(1);
            let reach = (conv.strides[i] * (extent - 1) + span).saturating_sub(conv.pads_begin[i]);
            pads_end.push(reach.saturating_sub(self.out_spatial[i]));
            rest.push(self.out_spatial[i].saturating_sub(reach));
        }
        let onnx_conv = ConvAttrs {
            pads_end,
            ..conv.clone()
        };
        let mut attrs = conv_attrs(&onnx_conv, &kernel);
        attrs.push(("output_padding", AttrValue::Ints(vec![0; kernel.len()])));
        let transposed = ExportNode {
            attrs,
            ..ExportNode::on_operands("ConvTranspose", 2)
        };
        if rest.iter().all(|&r| r == 0) {
            return Export::node(transposed);
        }
        let mut ends = vec![0, 0];
        ends.extend(rest);
        let begins = vec![0; ends.len()];
        let dtype = inputs.first().map_or(DType::F32, |y| y.dtype);
        let pad = ExportNode {
            name_suffix: "_pad".into(),
            ..pad_node(Operand::Temp("natural".into()), &begins, &ends, 0.0, dtype)
        };
        Export::Nodes(vec![
            ExportNode {
                outputs: vec![Output::Temp("natural".into())],
                ..transposed
            },
            pad,
        ])
    }
    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        conv_flops(inputs.first(), inputs.get(1))
    }
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

fn as4(x: &ArrayD<f64>) -> Result<ndarray::Array4<f64>, String> {
    let s = x.shape();
    let s4 = match *s {
        [a, b, c] => [a, b, 1, c],
        [a, b, c, d] => [a, b, c, d],
        _ => return Err(format!("a convolution operand of shape {s:?}")),
    };
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order(s4)
        .map_err(|e| e.to_string())
}

fn shape4(s: &[usize]) -> Result<(usize, usize, usize, usize), String> {
    Ok(as4(&ArrayD::zeros(IxDyn(s)))?.dim())
}

/// One multiply-add of a 2-d convolution: image `b`, output channel `oc` at output position
/// `(i, j)`, input channel `ch` (the `ic`-th of its group) at input position `(hi, wi)`, kernel
/// tap `(ka, kb)`.
struct Tap {
    b: usize,
    oc: usize,
    i: usize,
    j: usize,
    ch: usize,
    ic: usize,
    hi: usize,
    wi: usize,
    ka: usize,
    kb: usize,
}

/// The extents a convolution's multiply-adds range over.
struct Extents {
    images: usize,
    out_channels: usize,
    channels_per_group: usize,
    output: (usize, usize),
    input: (usize, usize),
    kernel: (usize, usize),
}

/// Calls `f` for every multiply-add of the convolution, in one fixed order, skipping taps that
/// fall in the padding. The convolution, its adjoint and its weight gradient are the same sum
/// with a different operand written to.
fn for_each_tap(c: &ConvAttrs, e: &Extents, mut f: impl FnMut(&Tap)) -> Result<(), String> {
    let gm = geo(c)?;
    let per_group = (e.out_channels / c.group.max(1)).max(1);
    let inside =
        |pos: usize, pad: usize, extent: usize| pos.checked_sub(pad).filter(|&p| p < extent);
    for b in 0..e.images {
        for oc in 0..e.out_channels {
            let grp = oc / per_group;
            for i in 0..e.output.0 {
                for j in 0..e.output.1 {
                    for ic in 0..e.channels_per_group {
                        let ch = grp * e.channels_per_group + ic;
                        for ka in 0..e.kernel.0 {
                            let pos = i * gm.s[0] + ka * gm.d[0];
                            let Some(hi) = inside(pos, gm.p[0], e.input.0) else {
                                continue;
                            };
                            for kb in 0..e.kernel.1 {
                                let pos = j * gm.s[1] + kb * gm.d[1];
                                let Some(wi) = inside(pos, gm.p[1], e.input.1) else {
                                    continue;
                                };
                                f(&Tap {
                                    b,
                                    oc,
                                    i,
                                    j,
                                    ch,
                                    ic,
                                    hi,
                                    wi,
                                    ka,
                                    kb,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The sum over every tap of `term`, which names the output element a tap adds to and what it
/// adds, into zeros of `dims`, returned with the IR's `out_shape`.
fn sum_over_taps(
    c: &ConvAttrs,
    e: &Extents,
    dims: (usize, usize, usize, usize),
    out_shape: &[usize],
    term: impl Fn(&Tap) -> ([usize; 4], f64),
) -> Result<ArrayD<f64>, String> {
    let mut out = ndarray::Array4::<f64>::zeros(dims);
    for_each_tap(c, e, |t| {
        let (at, v) = term(t);
        out[at] += v;
    })?;
    out.into_shape_with_order(IxDyn(out_shape))
        .map_err(|e| e.to_string())
}

/// The convolution written from its definition.
fn reference_conv(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    c: &ConvAttrs,
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let (x, w) = (as4(x)?, as4(w)?);
    let (n, _, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    let (_, _, oh, ow) = shape4(out_shape)?;
    let e = Extents {
        images: n,
        out_channels: o,
        channels_per_group: cg,
        output: (oh, ow),
        input: (h, wd),
        kernel: (kh, kw),
    };
    sum_over_taps(c, &e, (n, o, oh, ow), out_shape, |t| {
        let v = x[[t.b, t.ch, t.hi, t.wi]] * w[[t.oc, t.ic, t.ka, t.kb]];
        ([t.b, t.oc, t.i, t.j], v)
    })
}

/// The adjoint of [`reference_conv`], scattering each output back over its window.
fn reference_conv_transpose(
    y: &ArrayD<f64>,
    w: &ArrayD<f64>,
    c: &ConvAttrs,
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let (y, w) = (as4(y)?, as4(w)?);
    let (n, o, ih, iw) = y.dim();
    let (_, cg, kh, kw) = w.dim();
    let (_, cout, oh, ow) = shape4(out_shape)?;
    let e = Extents {
        images: n,
        out_channels: o,
        channels_per_group: cg,
        output: (ih, iw),
        input: (oh, ow),
        kernel: (kh, kw),
    };
    sum_over_taps(c, &e, (n, cout, oh, ow), out_shape, |t| {
        let v = y[[t.b, t.oc, t.i, t.j]] * w[[t.oc, t.ic, t.ka, t.kb]];
        ([t.b, t.ch, t.hi, t.wi], v)
    })
}

/// The weight gradient written from its definition:
/// `dW[o,c,a,b] = Σ gy[n,o,i,j]·x[n,c',i·s+a·d−p,j·s+b·d−p]`.
fn reference_weight_grad(
    x: &ArrayD<f64>,
    gy: &ArrayD<f64>,
    c: &ConvAttrs,
    out_shape: &[usize],
) -> Result<ArrayD<f64>, String> {
    let (x, gy) = (as4(x)?, as4(gy)?);
    let (n, _, h, wd) = x.dim();
    let (_, o, oh, ow) = gy.dim();
    let (_, cg, kh, kw) = shape4(out_shape)?;
    let e = Extents {
        images: n,
        out_channels: o,
        channels_per_group: cg,
        output: (oh, ow),
        input: (h, wd),
        kernel: (kh, kw),
    };
    sum_over_taps(c, &e, (o, cg, kh, kw), out_shape, |t| {
        let v = gy[[t.b, t.oc, t.i, t.j]] * x[[t.b, t.ch, t.hi, t.wi]];
        ([t.oc, t.ic, t.ka, t.kb], v)
    })
}
