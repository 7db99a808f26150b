//! Pooling primitives. Average pooling is one primitive rather than a reshape and a sum over two
//! strided axes because backends run ONNX `AveragePool` as one pass, where their strided
//! reductions are several times slower.

use super::conv::ConvTranspose;
use super::export_form::{usizes, AttrValue, Export, ExportNode};
use super::{operand, operands, result_cotangent, Cotangents, OutTypes, Primitive};
use crate::compiler::ir::{numel, ConvAttrs, Graph, Node, Op, Tensor, ValueId, ValueInfo};
use ndarray::{ArrayD, Axis, IxDyn};

/// The mean of each non-overlapping `k`×`k` window of x \[N,C,H,W\] (stride `k`, H and W
/// multiples of `k`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvgPool {
    /// Window side and stride.
    pub k: usize,
}

impl Primitive for AvgPool {
    fn name(&self) -> &'static str {
        "AvgPool"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [x] = operands::<1>(inputs)?;
        let k = self.k;
        match x.shape.as_slice() {
            &[n, c, h, w] if x.dtype.is_float() && k > 0 && h % k == 0 && w % k == 0 => {
                Ok(vec![(x.dtype, vec![n, c, h / k, w / k])])
            }
            s => Err(format!(
                "needs a float [N, C, H, W] operand with H and W multiples of {k}, got {:?} {s:?}",
                x.dtype
            )),
        }
    }
    /// Each input element gets 1/k² of its window's cotangent: a depthwise transposed
    /// convolution with a constant kernel, whose own derivative is a convolution.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let x = node.inputs[0];
        let (dt, s) = (g.dtype(x), g.shape(x).to_vec());
        let (c, k) = (s[1], self.k);
        let share = 1.0 / (k * k) as f64;
        let kernel = g.constant(Tensor::new(dt, vec![c, 1, k, k], vec![share; c * k * k]));
        let spread = ConvTranspose {
            conv: ConvAttrs {
                strides: vec![k, k],
                pads_begin: vec![0, 0],
                pads_end: vec![0, 0],
                dilations: vec![1, 1],
                group: c,
            },
            out_spatial: s[2..].to_vec(),
        };
        let gx = g.push1("", Op::ConvTranspose(spread), &[gy, kernel])?;
        Ok(vec![Some(gx)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        let k = self.k;
        let &[n, c, ho, wo] = outs.first().copied().unwrap_or_default() else {
            return Err("the result is not [N, C, H, W]".into());
        };
        let windows = x
            .to_shape(IxDyn(&[n, c, ho, k, wo, k]))
            .map_err(|e| e.to_string())?;
        let sums = windows.sum_axis(Axis(5)).sum_axis(Axis(3));
        Ok(vec![sums.mapv(|v| v / (k * k) as f64)])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        let k = usizes(&[self.k, self.k]);
        Export::node(
            ExportNode::on_operands("AveragePool", 1)
                .attr("kernel_shape", AttrValue::Ints(k.clone()))
                .attr("strides", AttrValue::Ints(k)),
        )
    }
    /// One addition per input element.
    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        inputs.first().map_or(0.0, |s| numel(s) as f64)
    }
}
