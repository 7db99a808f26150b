//! The constant primitive: a tensor is the node that produces itself.

use super::export_form::Export;
use super::{operands, Cotangents, OutTypes, Primitive};
use crate::compiler::ir::{Graph, Node, Tensor, ValueId, ValueInfo};
use ndarray::{ArrayD, IxDyn};

impl Primitive for Tensor {
    fn name(&self) -> &'static str {
        "Constant"
    }
    fn broadcasts(&self) -> bool {
        false
    }
    fn infer(&self, inputs: &[&ValueInfo]) -> OutTypes {
        operands::<0>(inputs)?;
        Ok(vec![(self.dtype, self.shape.clone())])
    }
    fn vjp(&self, _g: &mut Graph, node: &Node, _cots: &[Option<ValueId>]) -> Cotangents {
        Ok(vec![None; node.inputs.len()])
    }
    fn eval(
        &self,
        _inputs: &[&ArrayD<f64>],
        _outs: &[&[usize]],
    ) -> Result<Vec<ArrayD<f64>>, String> {
        Ok(vec![ArrayD::from_shape_vec(
            IxDyn(&self.shape),
            self.data.clone(),
        )
        .map_err(|e| e.to_string())?])
    }
    fn export(&self, _inputs: &[&ValueInfo]) -> Export {
        Export::Initializer(self.clone())
    }
    fn flops(&self, _inputs: &[&[usize]], _outputs: &[&[usize]]) -> f64 {
        0.0
    }
}
