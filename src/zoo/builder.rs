//! What the ResNet and ViT builders share: the graph under construction, its parameters in
//! PyTorch `parameters()` order, `nn.Linear`, and the finished [`ForwardModel`].

use crate::compiler::ir::{DType, Graph, ValueId};
use crate::compiler::model::{ForwardModel, InitRule, Param};
use anyhow::Result;

/// A forward model under construction. Parameters are graph inputs, declared in the order the
/// reference modules register them.
pub(crate) struct ModelBuilder {
    /// The graph.
    pub g: Graph,
    /// The parameters declared so far.
    pub params: Vec<Param>,
}

impl ModelBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        ModelBuilder {
            g: Graph::new(),
            params: Vec::new(),
        }
    }

    /// Declares the next parameter.
    pub fn param(&mut self, name: &str, shape: Vec<usize>, init: InitRule) -> ValueId {
        let v = self.g.input(name, DType::F32, shape.clone());
        self.params.push(Param {
            name: name.to_string(),
            value: v,
            shape,
            init,
            initial: None,
        });
        v
    }

    /// `nn.Linear(din, dout, bias)` on the last axis.
    pub fn linear(
        &mut self,
        name: &str,
        x: ValueId,
        din: usize,
        dout: usize,
        bias: bool,
    ) -> Result<ValueId> {
        let w = self.param(
            &format!("{name}.weight"),
            vec![dout, din],
            InitRule::KaimingUniform { fan_in: din },
        );
        let bias = bias.then(|| {
            self.param(
                &format!("{name}.bias"),
                vec![dout],
                InitRule::UniformBias { fan_in: din },
            )
        });
        let wt = self.g.transpose(w, &[1, 0])?;
        let y = self.g.matmul(x, wt)?;
        Ok(match bias {
            Some(b) => self.g.add(y, b)?,
            None => y,
        })
    }

    /// The finished model with `logits` as its only output.
    pub fn finish(mut self, x: ValueId, logits: ValueId, source: String) -> ForwardModel {
        self.g.rename(logits, "logits");
        self.g.outputs = vec![logits];
        ForwardModel {
            graph: self.g,
            x,
            logits,
            params: self.params,
            source,
            warnings: vec![],
            batchnorm: Default::default(),
        }
    }
}
