//! Data-movement primitives: transpose, reshape, expand, concat, split, slice, pad, gather. Each
//! one's adjoint is another of them.

use super::export_form::{ints, pad_node, usizes, AttrValue, Export, ExportNode, Operand};
use super::{
    broadcast_shapes, operand, operands, per_result_element, result_cotangent, Cotangents,
    OutTypes, Primitive,
};
use crate::compiler::ir::{numel, Graph, Node, Op, ValueId, ValueInfo};
use ndarray::{ArrayD, Axis, IxDyn};

/// Axis permutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transpose {
    /// Output axis i is input axis perm\[i\].
    pub perm: Vec<usize>,
}

/// Same elements, another static shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reshape {
    /// Target shape.
    pub shape: Vec<usize>,
}

/// Numpy broadcast to a static shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expand {
    /// Target shape.
    pub shape: Vec<usize>,
}

/// Concatenation along an axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concat {
    /// Axis.
    pub axis: usize,
}

/// Split along an axis into pieces of the given sizes (one output per piece).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Axis.
    pub axis: usize,
    /// Piece sizes (sum = the axis' extent).
    pub sizes: Vec<usize>,
}

/// Unit-step slice, static bounds per axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Start per axis (all axes, non-negative).
    pub starts: Vec<usize>,
    /// End per axis (exclusive).
    pub ends: Vec<usize>,
}

/// Entries of one axis picked by constant indices (repeats allowed): result entry `r` along
/// `axis` is operand entry `indices[r]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gather {
    /// Axis.
    pub axis: usize,
    /// Operand index of each result entry along `axis`.
    pub indices: Vec<usize>,
}

/// Constant padding, `begins`/`ends` per axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Pad {
    /// Elements added before, per axis.
    pub begins: Vec<usize>,
    /// Elements added after, per axis.
    pub ends: Vec<usize>,
    /// The fill value.
    pub value: f64,
}

impl Primitive for Transpose {
    fn name(&self) -> &'static str {
        "Transpose"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let perm = &self.perm;
        let mut seen = vec![false; a.shape.len()];
        if perm.len() != a.shape.len()
            || perm
                .iter()
                .any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
        {
            return Err(format!(
                "perm {perm:?} is not a permutation of the axes of {:?}",
                a.shape
            ));
        }
        Ok(vec![(a.dtype, perm.iter().map(|&p| a.shape[p]).collect())])
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(vec![Some(g.transpose(c, &inv)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        Ok(vec![operand(inputs, 0)?
            .clone()
            .permuted_axes(IxDyn(&self.perm))
            .as_standard_layout()
            .into_owned()])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Transpose", 1)
                .attr("perm", AttrValue::Ints(usizes(&self.perm))),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Reshape {
    fn name(&self) -> &'static str {
        "Reshape"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        if numel(&self.shape) != numel(&a.shape) {
            return Err(format!("cannot reshape {:?} to {:?}", a.shape, self.shape));
        }
        Ok(vec![(a.dtype, self.shape.clone())])
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let sx = g.shape(node.inputs[0]).to_vec();
        Ok(vec![Some(g.reshape(c, &sx)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let flat: Vec<f64> = operand(inputs, 0)?
            .as_standard_layout()
            .iter()
            .copied()
            .collect();
        Ok(vec![
            ArrayD::from_shape_vec(IxDyn(&self.shape), flat).map_err(|e| e.to_string())?
        ])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Reshape", 1).constant("shape", ints(&usizes(&self.shape))),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        0.0
    }
}

impl Primitive for Expand {
    fn name(&self) -> &'static str {
        "Expand"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let b = broadcast_shapes(&a.shape, &self.shape)?;
        if b != self.shape {
            return Err(format!("cannot expand {:?} to {:?}", a.shape, self.shape));
        }
        Ok(vec![(a.dtype, b)])
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let sx = g.shape(node.inputs[0]).to_vec();
        Ok(vec![Some(g.sum_to(c, &sx)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        Ok(vec![x
            .broadcast(IxDyn(&self.shape))
            .ok_or("broadcast")?
            .to_owned()])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Expand", 1).constant("shape", ints(&usizes(&self.shape))),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Concat {
    fn name(&self) -> &'static str {
        "Concat"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let axis = self.axis;
        let a = inputs.first().ok_or("expects at least 1 operand")?;
        if axis >= a.shape.len() {
            return Err(format!("axis {axis} out of range for {:?}", a.shape));
        }
        let mut s = a.shape.clone();
        s[axis] = 0;
        for b in inputs {
            let same = b.shape.len() == a.shape.len()
                && b.shape
                    .iter()
                    .zip(&a.shape)
                    .enumerate()
                    .all(|(i, (x, y))| i == axis || x == y);
            if !same || b.dtype != a.dtype {
                return Err(format!(
                    "operands {:?} and {:?} do not concatenate on axis {axis}",
                    a.shape, b.shape
                ));
            }
            s[axis] += b.shape[axis];
        }
        Ok(vec![(a.dtype, s)])
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let sizes: Vec<usize> = node.inputs.iter().map(|&i| g.shape(i)[self.axis]).collect();
        let split = Split {
            axis: self.axis,
            sizes,
        };
        let parts = g.push("", Op::Split(split), &[c])?;
        Ok(parts.into_iter().map(Some).collect())
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
        Ok(vec![
            ndarray::concatenate(Axis(self.axis), &views).map_err(|e| e.to_string())?
        ])
    }
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Concat", inputs.len())
                .attr("axis", AttrValue::Int(self.axis as i64)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Split {
    fn name(&self) -> &'static str {
        "Split"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let (axis, sizes) = (self.axis, &self.sizes);
        if axis >= a.shape.len() || sizes.iter().sum::<usize>() != a.shape[axis] {
            return Err(format!(
                "sizes {sizes:?} do not split axis {axis} of {:?}",
                a.shape
            ));
        }
        Ok(sizes
            .iter()
            .map(|&n| {
                let mut s = a.shape.clone();
                s[axis] = n;
                (a.dtype, s)
            })
            .collect())
    }
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        if cots.iter().all(Option::is_none) {
            return Ok(vec![None]);
        }
        let mut parts = Vec::with_capacity(cots.len());
        for (k, c) in cots.iter().enumerate() {
            parts.push(match c {
                Some(c) => *c,
                None => {
                    let o = node.outputs[k];
                    g.zeros_like(o)?
                }
            });
        }
        let concat = Concat { axis: self.axis };
        Ok(vec![Some(g.push1("", Op::Concat(concat), &parts)?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        let mut start = 0;
        let mut v = Vec::with_capacity(self.sizes.len());
        for &n in &self.sizes {
            v.push(
                x.slice_axis(Axis(self.axis), ndarray::Slice::from(start..start + n))
                    .to_owned(),
            );
            start += n;
        }
        Ok(v)
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Split", 1)
                .constant("split", ints(&usizes(&self.sizes)))
                .attr("axis", AttrValue::Int(self.axis as i64)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Slice {
    fn name(&self) -> &'static str {
        "Slice"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let (starts, ends) = (&self.starts, &self.ends);
        let r = a.shape.len();
        if starts.len() != r || ends.len() != r {
            return Err(format!("needs bounds for all {r} axes"));
        }
        let mut s = Vec::with_capacity(r);
        for i in 0..r {
            if starts[i] > ends[i] || ends[i] > a.shape[i] {
                return Err(format!(
                    "bounds {}..{} out of range for axis {i} of {:?}",
                    starts[i], ends[i], a.shape
                ));
            }
            s.push(ends[i] - starts[i]);
        }
        Ok(vec![(a.dtype, s)])
    }
    /// The adjoint of a slice pads the cotangent back with zeros.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let sx = g.shape(node.inputs[0]).to_vec();
        let tail: Vec<usize> = self.ends.iter().zip(&sx).map(|(e, d)| d - e).collect();
        let pad = Pad {
            begins: self.starts.clone(),
            ends: tail,
            value: 0.0,
        };
        Ok(vec![Some(g.push1("", Op::Pad(pad), &[c])?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        let s = x.slice_each_axis(|ax| {
            let i = ax.axis.index();
            ndarray::Slice::from(self.starts[i]..self.ends[i])
        });
        Ok(vec![s.to_owned()])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        let axes: Vec<i64> = (0..self.starts.len() as i64).collect();
        Export::node(
            ExportNode::on_operands("Slice", 1)
                .constant("starts", ints(&usizes(&self.starts)))
                .constant("ends", ints(&usizes(&self.ends)))
                .constant("axes", ints(&axes)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Pad {
    fn name(&self) -> &'static str {
        "Pad"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let (begins, ends) = (&self.begins, &self.ends);
        if begins.len() != a.shape.len() || ends.len() != a.shape.len() {
            return Err(format!("needs pads for all {} axes", a.shape.len()));
        }
        Ok(vec![(
            a.dtype,
            a.shape
                .iter()
                .enumerate()
                .map(|(i, &d)| d + begins[i] + ends[i])
                .collect(),
        )])
    }
    /// The adjoint of a pad slices the cotangent back.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let sx = g.shape(node.inputs[0]).to_vec();
        let ends: Vec<usize> = self.begins.iter().zip(&sx).map(|(b, d)| b + d).collect();
        let slice = Slice {
            starts: self.begins.clone(),
            ends,
        };
        Ok(vec![Some(g.push1("", Op::Slice(slice), &[c])?)])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        let shape: Vec<usize> = x
            .shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| d + self.begins[i] + self.ends[i])
            .collect();
        let mut out = ArrayD::from_elem(IxDyn(&shape), self.value);
        out.slice_each_axis_mut(|ax| {
            let i = ax.axis.index();
            ndarray::Slice::from(self.begins[i]..self.begins[i] + x.shape()[i])
        })
        .assign(x);
        Ok(vec![out])
    }
    fn export(&self, inputs: &[&ValueInfo]) -> Export {
        let dtype = inputs
            .first()
            .map_or(crate::compiler::ir::DType::F32, |a| a.dtype);
        Export::node(pad_node(
            Operand::Input(0),
            &self.begins,
            &self.ends,
            self.value,
            dtype,
        ))
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}

impl Primitive for Gather {
    fn name(&self) -> &'static str {
        "Gather"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        let [a] = operands::<1>(inputs)?;
        let d = *a
            .shape
            .get(self.axis)
            .ok_or_else(|| format!("axis {} is out of range for {:?}", self.axis, a.shape))?;
        if let Some(i) = self.indices.iter().find(|&&i| i >= d) {
            return Err(format!(
                "index {i} is out of range for axis {} of {:?}",
                self.axis, a.shape
            ));
        }
        let mut s = a.shape.clone();
        s[self.axis] = self.indices.len();
        Ok(vec![(a.dtype, s)])
    }
    /// The adjoint sums the cotangent entries gathered from each operand entry. It is written as
    /// gathers again: the `k`-th gather takes, for every operand entry, the `k`-th result entry
    /// that picked it, or a zero entry appended to the cotangent where fewer did; with indices
    /// that repeat nothing it is one gather.
    fn vjp(&self, g: &mut Graph, node: &Node, cots: &[Option<ValueId>]) -> Cotangents {
        let c = result_cotangent(node, cots)?;
        let d = g.shape(node.inputs[0])[self.axis];
        let mut picked_by: Vec<Vec<usize>> = vec![Vec::new(); d];
        for (r, &i) in self.indices.iter().enumerate() {
            picked_by[i].push(r);
        }
        let layers = picked_by.iter().map(Vec::len).max().unwrap_or(0);
        let zero_row = self.indices.len();
        let needs_zero = picked_by.iter().any(|p| p.len() < layers);
        let src = if needs_zero {
            let rank = g.shape(c).len();
            let mut ends = vec![0; rank];
            ends[self.axis] = 1;
            let pad = Pad {
                begins: vec![0; rank],
                ends,
                value: 0.0,
            };
            g.push1("", Op::Pad(pad), &[c])?
        } else {
            c
        };
        let mut sum: Option<ValueId> = None;
        for k in 0..layers {
            let indices = picked_by
                .iter()
                .map(|p| p.get(k).copied().unwrap_or(zero_row))
                .collect();
            let part = g.push1(
                "",
                Op::Gather(Gather {
                    axis: self.axis,
                    indices,
                }),
                &[src],
            )?;
            sum = Some(g.accumulate(sum, part)?);
        }
        // With no entry picked at all nothing flows back.
        Ok(vec![sum])
    }
    fn eval(
        &self,
        inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        let x = operand(inputs, 0)?;
        Ok(vec![x.select(Axis(self.axis), &self.indices)])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::node(
            ExportNode::on_operands("Gather", 1)
                .constant("indices", ints(&usizes(&self.indices)))
                .attr("axis", AttrValue::Int(self.axis as i64)),
        )
    }
    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> f64 {
        per_result_element(outputs)
    }
}
