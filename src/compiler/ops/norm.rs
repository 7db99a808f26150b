//! Normalisation primitives. Instance normalisation is one primitive rather than its seven
//! elementwise steps because backends run ONNX `InstanceNormalization` as one pass over the
//! activations, where the composite form reads and writes them seven times; its derivative is
//! written in the other primitives, so the transform stays closed.

use super::export_form::{AttrValue, Export, ExportNode};
use super::{operand, operands, result_cotangent, Cotangents, OutTypes, Primitive};
use crate::compiler::ir::{numel, Graph, IrError, Node, Op, ValueId, ValueInfo};
use ndarray::ArrayD;

/// Instance normalisation with a per-channel affine map: for x \[N,C,…\], scale and bias \[C\],
/// `scale[c]·(x − mean)/√(var + eps) + bias[c]`, the mean and the biased variance taken over the
/// spatial axes of each (n, c) plane (PyTorch `GroupNorm(C, C)`, ONNX `InstanceNormalization`).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNorm {
    /// Added to the variance.
    pub eps: f64,
}

/// `(x − mean) / √(var + eps)` over `axes` (the biased variance, as PyTorch's norms), with the
/// mean and `1/√(var + eps)` (reduced axes kept): the composite form every normalisation lowers
/// to, and what [`InstanceNorm`]'s derivative recomputes, since the fused form exposes neither.
pub fn standardize(
    g: &mut Graph,
    x: ValueId,
    axes: &[usize],
    eps: f64,
) -> Result<(ValueId, ValueId, ValueId), IrError> {
    let mean = g.reduce_mean(x, axes, true)?;
    let xc = g.sub(x, mean)?;
    let sq = g.mul(xc, xc)?;
    // 1/√(var + eps) as √n/√(Σ(x − mean)² + n·eps): tract fuses a square, a sum and a product by
    // 1/n into one reduction that copies the whole activation first (up to 40× slower than the
    // square and the sum, at ConvNet-D3's first layer); a sum that meets no 1/n it leaves apart.
    let n: usize = axes.iter().map(|&i| g.shape(x)[i]).product();
    let sum_sq = g.reduce_sum(sq, axes, true)?;
    let e = g.scalar_like(x, n as f64 * eps);
    let se = g.add(sum_sq, e)?;
    let sd = g.unary(Op::Sqrt, se)?;
    let root_n = g.scalar_like(x, (n as f64).sqrt());
    let inv = g.div(root_n, sd)?;
    let y = g.mul(xc, inv)?;
    Ok((y, mean, inv))
}

/// Axes 2.. of a rank-`r` activation.
fn spatial_axes(r: usize) -> Vec<usize> {
    (2..r).collect()
}

/// The shape `[1, C, 1, …]` that broadcasts a per-channel vector over a rank-`r` activation.
fn channel_shape(c: usize, r: usize) -> Vec<usize> {
    let mut s = vec![1; r];
    s[1] = c;
    s
}

impl Primitive for InstanceNorm {
    fn name(&self) -> &'static str {
        "InstanceNorm"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [x, scale, bias] = operands::<3>(inputs)?;
        if !x.dtype.is_float() || x.shape.len() < 3 {
            return Err(format!(
                "needs a float [N, C, spatial…] operand, got {:?} {:?}",
                x.dtype, x.shape
            ));
        }
        let c = x.shape[1];
        for (what, p) in [("scale", scale), ("bias", bias)] {
            if p.dtype != x.dtype || p.shape != [c] {
                return Err(format!(
                    "{what} must be {:?} [{c}], got {:?} {:?}",
                    x.dtype, p.dtype, p.shape
                ));
            }
        }
        Ok(vec![(x.dtype, x.shape.clone())])
    }
    /// With x̂ the standardized input, s = 1/√(var + eps), ḡ the result's cotangent and means
    /// over each plane: x̄ = scale·s·(ḡ − mean ḡ − x̂·mean(ḡ·x̂)), scalē = Σ ḡ·x̂, bias̄ = Σ ḡ.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let (x, scale) = (node.inputs[0], node.inputs[1]);
        let shape = g.shape(x).to_vec();
        let r = shape.len();
        let axes = spatial_axes(r);
        let plane = numel(&shape[2..]) as f64;
        let (xh, _, inv) = standardize(g, x, &axes, self.eps)?;
        let gxh = g.mul(gy, xh)?;
        // Per-plane sums, reused for the per-channel sums: the activation is read once less for
        // each. Summed unscaled: with the per-plane means scaled back up instead, tract 0.23
        // failed to run ResNet-18's pass 2 (its optimizer left a placeholder op in the plan).
        let (nb, c) = (shape[0], shape[1]);
        let sum_g = g.reduce_sum(gy, &axes, true)?;
        let sum_gxh = g.reduce_sum(gxh, &axes, true)?;
        let per_channel = |g: &mut Graph, m: ValueId| -> Result<ValueId, IrError> {
            let m = g.reshape(m, &[nb, c])?;
            g.reduce_sum(m, &[0], false)
        };
        let gscale = per_channel(g, sum_gxh)?;
        let gbias = per_channel(g, sum_g)?;
        let mean_g = g.scale(sum_g, 1.0 / plane)?;
        let mean_gxh = g.scale(sum_gxh, 1.0 / plane)?;
        let centred = g.sub(gy, mean_g)?;
        let along = g.mul(xh, mean_gxh)?;
        let projected = g.sub(centred, along)?;
        let sc = g.reshape(scale, &channel_shape(shape[1], r))?;
        let k = g.mul(sc, inv)?;
        let gx = g.mul(projected, k)?;
        Ok(vec![Some(gx), Some(gscale), Some(gbias)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?.as_standard_layout();
        let (scale, bias) = (operand(inputs, 1)?, operand(inputs, 2)?);
        let shape = outs
            .first()
            .copied()
            .ok_or_else(|| "result 0 is missing".to_string())?;
        let c = *shape.get(1).ok_or("the operand has no channel axis")?;
        let scale: Vec<f64> = scale.iter().copied().collect();
        let bias: Vec<f64> = bias.iter().copied().collect();
        let plane = numel(&shape[2..]);
        let xs = x.as_slice().ok_or("the operand is not contiguous")?;
        let mut y = vec![0.0; xs.len()];
        for (k, (src, dst)) in xs
            .chunks(plane.max(1))
            .zip(y.chunks_mut(plane.max(1)))
            .enumerate()
        {
            let ch = k % c;
            let mean = src.iter().sum::<f64>() / plane as f64;
            let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / plane as f64;
            let inv = 1.0 / (var + self.eps).sqrt();
            let (Some(&a), Some(&b)) = (scale.get(ch), bias.get(ch)) else {
                return Err(format!("no scale and bias for channel {ch}"));
            };
            for (d, s) in dst.iter_mut().zip(src) {
                *d = a * (s - mean) * inv + b;
            }
        }
        ArrayD::from_shape_vec(shape.to_vec(), y)
            .map(|a| vec![a])
            .map_err(|e| e.to_string())
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("InstanceNormalization", 3)
                .attr("epsilon", AttrValue::Float(self.eps)),
        )
    }
    /// The mean, the centring, the squares, the variance, the scaling and the affine map: about
    /// eight operations per element.
    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        8.0 * inputs.first().map_or(0.0, |s| numel(s) as f64)
    }
}
