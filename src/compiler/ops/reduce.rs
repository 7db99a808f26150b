//! Reductions over static axes.

use super::export_form::{ints, usizes, AttrValue, Export, ExportNode, Operand, Output};
use super::{
    operand, operands, per_result_element, result_cotangent, Cotangents, OutTypes, Primitive,
};
use crate::compiler::ir::{DType, Graph, Node, Op, ValueId, ValueInfo};
use ndarray::{ArrayD, Axis};

/// Sum over axes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReduceSum {
    /// Axes (non-negative, sorted).
    pub axes: Vec<usize>,
    /// Keep reduced axes as size 1.
    pub keepdims: bool,
}

/// Max over axes (ties pass the gradient to every maximal element).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReduceMax {
    /// Axes (non-negative, sorted).
    pub axes: Vec<usize>,
    /// Keep reduced axes as size 1.
    pub keepdims: bool,
}

/// The shape a reduction keeps (reduced axes set to 1).
pub fn kept_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

/// Shape rule of both reductions.
fn reduced(inputs: &[&ValueInfo], axes: &[usize], keepdims: bool) -> OutTypes {
    let [a] = operands::<1>(inputs)?;
    if let Some(&bad) = axes.iter().find(|&&ax| ax >= a.shape.len()) {
        return Err(format!("axis {bad} out of range for shape {:?}", a.shape));
    }
    let shape = if keepdims {
        kept_shape(&a.shape, axes)
    } else {
        a.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(vec![(a.dtype, shape)])
}

/// The reference kernel of both reductions.
fn fold(
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

impl Primitive for ReduceSum {
    fn name(&self) -> &'static str {
        "ReduceSum"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        reduced(inputs, &self.axes, self.keepdims)
    }
    /// Broadcast the cotangent back.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let sx = g.shape(node.inputs[0]).to_vec();
        let gk = g.reshape(gy, &kept_shape(&sx, &self.axes))?;
        Ok(vec![Some(g.expand(gk, &sx)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        Ok(vec![fold(x, &self.axes, self.keepdims, 0.0, |s, x| s + x)])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        if self.axes.is_empty() {
            // ONNX reads empty axes as "all axes"; the IR means "none".
            return Export::plain("Identity", 1);
        }
        Export::node(
            ExportNode::on_operands("ReduceSum", 1)
                .constant("axes", ints(&usizes(&self.axes)))
                .attr("keepdims", AttrValue::Int(self.keepdims as i64)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for ReduceMax {
    fn name(&self) -> &'static str {
        "ReduceMax"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        reduced(inputs, &self.axes, self.keepdims)
    }
    /// Route the cotangent to the maximal elements (every tied one).
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let gy = result_cotangent(node, cots)?;
        let x = node.inputs[0];
        let sx = g.shape(x).to_vec();
        if let [axis] = self.axes[..] {
            // On the value seen as [outer, extent, inner]: tract's and ONNX Runtime's
            // broadcasting compare and select run 3–4 times faster at rank 3 than at max
            // pooling's rank 5.
            let [outer, extent, inner] = around_axis(&sx, axis);
            let x3 = g.reshape(x, &[outer, extent, inner])?;
            let y3 = g.reshape(node.outputs[0], &[outer, 1, inner])?;
            let g3 = g.reshape(gy, &[outer, 1, inner])?;
            let hit = g.push1("", Op::Equal, &[x3, y3])?;
            let z = g.scalar_like(x3, 0.0);
            let w = g.where_(hit, g3, z)?;
            return Ok(vec![Some(g.reshape(w, &sx)?)]);
        }
        let keep = kept_shape(&sx, &self.axes);
        let gk = g.reshape(gy, &keep)?;
        let yk = g.reshape(node.outputs[0], &keep)?;
        let hit = g.push1("", Op::Equal, &[x, yk])?;
        let z = g.scalar_like(x, 0.0);
        let w = g.where_(hit, gk, z)?;
        Ok(vec![Some(g.expand(w, &sx)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        Ok(vec![fold(
            x,
            &self.axes,
            self.keepdims,
            f64::NEG_INFINITY,
            f64::max,
        )])
    }
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        if self.axes.is_empty() {
            return Export::plain("Identity", 1);
        }
        if let Some(pooled) = max_as_pool(inputs, &self.axes, self.keepdims) {
            return pooled;
        }
        // Opset 17's ReduceMax takes its axes as an attribute (an input only from opset 18).
        Export::node(
            ExportNode::on_operands("ReduceMax", 1)
                .attr("axes", AttrValue::Ints(usizes(&self.axes)))
                .attr("keepdims", AttrValue::Int(self.keepdims as i64)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

/// `shape` as [outer, extent, inner] around `axis` (in range): the elements before, along and
/// after it.
fn around_axis(shape: &[usize], axis: usize) -> [usize; 3] {
    [
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ]
}

/// A max over one axis of an f32 value as `MaxPool` over that axis, the value seen as
/// [outer, 1, extent, inner]: tract runs `ReduceMax` some hundred times slower than its pool
/// (30 ms against 0.2 ms for max pooling's 9 taps of a [32, 64, 8, 8] map), ONNX Runtime both
/// alike. `None` where the plain form is kept: several axes, an empty or a trivial axis, or
/// another element type.
fn max_as_pool(inputs: &[&ValueInfo], axes: &[usize], keepdims: bool) -> Option<Export> {
    let (x, &[axis]) = (inputs.first()?, axes) else {
        return None;
    };
    if axis >= x.shape.len() {
        return None;
    }
    let [outer, extent, inner] = around_axis(&x.shape, axis);
    if x.dtype != DType::F32 || extent < 2 || x.shape.contains(&0) {
        return None;
    }
    let result = reduced(inputs, axes, keepdims).ok()?.into_iter().next()?.1;
    Some(Export::Nodes(vec![
        ExportNode {
            outputs: vec![Output::Temp("taps".into())],
            ..ExportNode::on_operands("Reshape", 1)
                .constant("taps_shape", ints(&usizes(&[outer, 1, extent, inner])))
        },
        ExportNode {
            op_type: "MaxPool",
            name_suffix: "_pool".into(),
            inputs: vec![Operand::Temp("taps".into())],
            outputs: vec![Output::Temp("pooled".into())],
            attrs: vec![("kernel_shape", AttrValue::Ints(usizes(&[extent, 1])))],
        },
        ExportNode {
            op_type: "Reshape",
            name_suffix: "_shape".into(),
            inputs: vec![
                Operand::Temp("pooled".into()),
                Operand::Constant("shape".into(), ints(&usizes(&result))),
            ],
            outputs: vec![Output::Results],
            attrs: vec![],
        },
    ]))
}
