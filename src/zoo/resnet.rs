//! ResNet-18 as the MTT/TESLA reference code builds it for cross-architecture evaluation
//! (`networks.ResNet18`, norm `instancenorm`): a 3×3 stem, four stages of BasicBlocks (64, 128,
//! 256, 512 channels; the first block of stages 2-4 has stride 2 and a 1×1 projection shortcut),
//! instance norm (`GroupNorm(C, C)` with affine), ReLU, then average pooling of the last feature map
//! and one linear layer. Convolutions have no bias. The reference pools with `avg_pool2d(out, 4)`,
//! which is the global average for 28×28 and 32×32 inputs (the last map is 4×4); this builder always
//! takes the global average, so other input sizes work too.

use super::builder::ModelBuilder;
use crate::compiler::ir::{ConvAttrs, DType, Op, ValueId};
use crate::compiler::lower;
use crate::compiler::model::{ForwardModel, InitRule};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// ResNet hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResNet {
    /// Channels of the stem and the first stage; stage `s` has `width · 2^s` (64 in ResNet-18).
    pub width: usize,
    /// BasicBlocks per stage (`[2, 2, 2, 2]` in ResNet-18).
    pub blocks: [usize; 4],
}

impl ResNet {
    /// ResNet-18: width 64, two blocks per stage.
    pub fn resnet18() -> ResNet {
        ResNet {
            width: 64,
            blocks: [2, 2, 2, 2],
        }
    }

    /// Builds the forward graph for input `[batch, c, h, w]` and `classes` outputs.
    pub fn build(&self, batch: usize, input: [usize; 3], classes: usize) -> Result<ForwardModel> {
        let [c, h, w] = input;
        if self.width == 0 || classes == 0 || batch == 0 || c == 0 || h == 0 || w == 0 {
            bail!("ResNet needs positive width, classes, batch and input size");
        }
        let mut b = ModelBuilder::new();
        let x = b.g.input("x", DType::F32, vec![batch, c, h, w]);
        let mut cur = b.conv("conv1", x, c, self.width, 3, 1)?;
        cur = b.norm("bn1", cur, self.width)?;
        cur = b.g.unary(Op::Relu, cur)?;
        let mut ch = self.width;
        for (s, &n) in self.blocks.iter().enumerate() {
            let planes = self.width << s;
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                cur = b.basic_block(&format!("layer{}.{i}", s + 1), cur, ch, planes, stride)?;
                ch = planes;
            }
        }
        let pooled = b.g.reduce_mean(cur, &[2, 3], false)?;
        let logits = b.linear("classifier", pooled, ch, classes, true)?;
        let source = format!("resnet width={} blocks={:?}", self.width, self.blocks);
        Ok(b.finish(x, logits, source))
    }
}

// The ResNet's layers, in the order its modules register their parameters: conv1, bn1, conv2,
// bn2, shortcut.
impl ModelBuilder {
    /// A bias-free k×k convolution with padding k/2.
    fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Result<ValueId> {
        let w = self.param(
            &format!("{name}.weight"),
            vec![cout, cin, k, k],
            InitRule::KaimingUniform {
                fan_in: cin * k * k,
            },
        );
        let attrs = ConvAttrs {
            strides: vec![stride; 2],
            pads_begin: vec![k / 2; 2],
            pads_end: vec![k / 2; 2],
            dilations: vec![1, 1],
            group: 1,
        };
        Ok(self.g.push1(name, Op::Conv(attrs), &[x, w])?)
    }

    /// `GroupNorm(c, c, affine=True)`: instance norm with a per-channel scale and shift.
    fn norm(&mut self, name: &str, x: ValueId, c: usize) -> Result<ValueId> {
        let s = self.param(&format!("{name}.weight"), vec![c], InitRule::Ones);
        let b = self.param(&format!("{name}.bias"), vec![c], InitRule::Zeros);
        Ok(lower::instance_norm(
            &mut self.g,
            x,
            Some(s),
            Some(b),
            1e-5,
        )?)
    }

    /// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
    fn basic_block(
        &mut self,
        name: &str,
        x: ValueId,
        cin: usize,
        planes: usize,
        stride: usize,
    ) -> Result<ValueId> {
        let mut out = self.conv(&format!("{name}.conv1"), x, cin, planes, 3, stride)?;
        out = self.norm(&format!("{name}.bn1"), out, planes)?;
        out = self.g.unary(Op::Relu, out)?;
        out = self.conv(&format!("{name}.conv2"), out, planes, planes, 3, 1)?;
        out = self.norm(&format!("{name}.bn2"), out, planes)?;
        let short = if stride != 1 || cin != planes {
            let s = self.conv(&format!("{name}.shortcut.0"), x, cin, planes, 1, stride)?;
            self.norm(&format!("{name}.shortcut.1"), s, planes)?
        } else {
            x
        };
        let sum = self.g.add(out, short)?;
        Ok(self.g.unary(Op::Relu, sum)?)
    }
}
