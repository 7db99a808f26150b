//! Pooling primitives and their adjoint. Average pooling is one primitive rather than a reshape
//! and a sum over two strided axes, and nearest-neighbour upsampling (its adjoint, up to the
//! 1/k² share) is another, because backends run each as one pass where their strided reductions
//! and broadcasts over inner axes are several times slower.

use super::export_form::{usizes, AttrValue, Export, ExportNode, Operand};
use super::{operand, operands, result_cotangent, Cotangents, OutTypes, Primitive};
use crate::compiler::ir::{numel, ConvAttrs, DType, Graph, Node, Op, Tensor, ValueId, ValueInfo};
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
    /// Each input element gets 1/k² of its window's cotangent: the cotangent scaled once, then
    /// copied to every position of its window.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let k = self.k;
        let share = g.scalar(g.dtype(gy), 1.0 / (k * k) as f64);
        let scaled = g.push1("", Op::Mul, &[gy, share])?;
        let gx = g.push1("", Op::Upsample(Upsample { kh: k, kw: k }), &[scaled])?;
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
    /// A depthwise `Conv` with a constant 1/k² kernel: the same means, and tract runs it about
    /// sixteen times faster than its `AveragePool`, ONNX Runtime as fast.
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        let (c, dtype) = inputs.first().map_or((0, DType::F32), |x| {
            (x.shape.get(1).copied().unwrap_or(0), x.dtype)
        });
        let k = self.k;
        let kernel = Tensor::new(
            dtype,
            vec![c, 1, k, k],
            vec![1.0 / (k * k) as f64; c * k * k],
        );
        Export::node(
            ExportNode::on_operands("Conv", 1)
                .constant("share", kernel)
                .attr("group", AttrValue::Int(c as i64))
                .attr("kernel_shape", AttrValue::Ints(usizes(&[k, k])))
                .attr("strides", AttrValue::Ints(usizes(&[k, k]))),
        )
    }
    /// One multiply-add per input element.
    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        inputs.first().map_or(0.0, |s| 2.0 * numel(s) as f64)
    }
}

/// Nearest-neighbour upsampling of x \[N,C,H,W\] by whole factors: every element copied to a
/// `kh`×`kw` block of the result \[N,C,H·kh,W·kw\].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upsample {
    /// Rows per input row.
    pub kh: usize,
    /// Columns per input column.
    pub kw: usize,
}

impl Primitive for Upsample {
    fn name(&self) -> &'static str {
        "Upsample"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [x] = operands::<1>(inputs)?;
        let (kh, kw) = (self.kh, self.kw);
        match x.shape.as_slice() {
            &[n, c, h, w] if x.dtype.is_float() && kh > 0 && kw > 0 => {
                Ok(vec![(x.dtype, vec![n, c, h * kh, w * kw])])
            }
            s => Err(format!(
                "needs a float [N, C, H, W] operand and factors above 0, got {:?} {s:?} by {kh}×{kw}",
                x.dtype
            )),
        }
    }
    /// Each input element collects the cotangents of its block: a depthwise convolution with a
    /// kernel of ones and the factors as strides.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let x = node.inputs[0];
        let (dt, c) = (g.dtype(x), g.shape(x)[1]);
        let (kh, kw) = (self.kh, self.kw);
        let ones = g.constant(Tensor::new(dt, vec![c, 1, kh, kw], vec![1.0; c * kh * kw]));
        let sum = ConvAttrs {
            strides: vec![kh, kw],
            pads_begin: vec![0, 0],
            pads_end: vec![0, 0],
            dilations: vec![1, 1],
            group: c,
        };
        let gx = g.push1("", Op::Conv(sum), &[gy, ones])?;
        Ok(vec![Some(gx)])
    }
    fn eval(&self, inputs: &[&ArrayD<f64>], outs: &[&[usize]]) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        let (kh, kw) = (self.kh, self.kw);
        let &[n, c, h, w] = x.shape() else {
            return Err("the operand is not [N, C, H, W]".into());
        };
        let out = outs.first().copied().unwrap_or_default();
        let blocks = x
            .to_shape(IxDyn(&[n, c, h, 1, w, 1]))
            .map_err(|e| e.to_string())?
            .broadcast(IxDyn(&[n, c, h, kh, w, kw]))
            .ok_or("the blocks do not broadcast")?
            .to_owned();
        let y = blocks
            .into_shape_with_order(IxDyn(out))
            .map_err(|e| e.to_string())?;
        Ok(vec![y])
    }
    /// ONNX `Resize` in nearest mode, where output position p reads input position ⌊p / k⌋.
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        let scales = Tensor::new(
            DType::F32,
            vec![4],
            vec![1.0, 1.0, self.kh as f64, self.kw as f64],
        );
        let mut node = ExportNode::on_operands("Resize", 1);
        node.inputs.push(Operand::Absent);
        Export::node(
            node.constant("scales", scales)
                .attr("mode", AttrValue::Str("nearest"))
                .attr(
                    "coordinate_transformation_mode",
                    AttrValue::Str("asymmetric"),
                )
                .attr("nearest_mode", AttrValue::Str("floor")),
        )
    }
    /// A copy: no arithmetic.
    fn flops(&self, _inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        0.0
    }
}
