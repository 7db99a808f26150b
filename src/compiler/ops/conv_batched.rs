//! The ONNX form of a convolution whose output has few positions per image (ResNet's later
//! stages on small images): one matrix product over the whole batch, `W [O, C·K] · cols [C·K,
//! N·P]`, with the columns gathered from shifted windows of the padded input.
//!
//! ONNX Runtime runs a `Conv` whose weight is a graph input as one product per image, `[O, C·K]
//! · [C·K, P]`; with few positions P that product is nearly a matrix-vector one and reads the
//! whole weight again for every image (3.1 ms for ResNet-18's 256-channel 3×3 layer on 2×2
//! maps at batch 32). The columns are no larger than K copies of the input, which is small
//! exactly when P is.

use super::conv::{concat, pad_spatial, tap_windows, window};
use crate::compiler::ir::{ConvAttrs, Graph, IrError, ValueId};

/// Output positions per image up to which the batched form is used: beyond it, each image's
/// product is wide enough to run near the machine's peak on its own.
const MAX_POSITIONS: usize = 16;

/// Whether a convolution with these attributes over `x` (its full shape) and `kernel` is written
/// in the batched form: one group, unit strides, several images and few output positions.
pub fn applies(a: &ConvAttrs, x: &[usize], kernel: &[usize]) -> bool {
    if a.group != 1 || a.strides.iter().any(|&s| s != 1) || x.len() != kernel.len() + 2 {
        return false;
    }
    let Ok(out) = super::conv::conv_out(a, &x[2..], kernel) else {
        return false;
    };
    x[0] > 1 && out.iter().product::<usize>() <= MAX_POSITIONS
}

/// `Conv(x, w) [+ bias]` in the batched form (the caller checked [`applies`]).
pub fn conv(
    g: &mut Graph,
    a: &ConvAttrs,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
) -> Result<ValueId, IrError> {
    let sx = g.shape(x).to_vec();
    let sw = g.shape(w).to_vec();
    let (n, c, o) = (sx[0], sx[1], sw[0]);
    let kernel = sw[2..].to_vec();
    let taps: usize = kernel.iter().product();
    let out_sp = super::conv::conv_out(a, &sx[2..], &kernel).map_err(|msg| IrError::Shape {
        node: String::new(),
        op: "Conv",
        msg,
    })?;
    let positions: usize = out_sp.iter().product();
    let xp = pad_spatial(g, a, x, 2)?;
    let mut parts = Vec::with_capacity(taps);
    for win in tap_windows(a, &kernel, &out_sp) {
        let part = window(g, xp, 2, &win)?;
        parts.push(g.reshape(part, &[n, c, 1, positions])?);
    }
    let cols = concat(g, &parts, 2)?; // [N, C, K, P]
    let cols = g.transpose(cols, &[1, 2, 0, 3])?;
    let cols = g.reshape(cols, &[c * taps, n * positions])?;
    let wr = g.reshape(w, &[o, c * taps])?;
    let mut y = g.matmul(wr, cols)?; // [O, N·P]
    if let Some(b) = bias {
        let b = g.reshape(b, &[o, 1])?;
        y = g.add(y, b)?;
    }
    let mut shape = vec![o, n];
    shape.extend(&out_sp);
    let y = g.reshape(y, &shape)?;
    let mut perm = vec![1, 0];
    perm.extend(2..2 + out_sp.len());
    g.transpose(y, &perm)
}
