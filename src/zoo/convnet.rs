//! The ConvNet of MTT/TESLA (`utils.ConvNet` in the reference code): `depth` blocks of
//! 3×3 conv → norm → activation → 2×2 pooling, then one linear layer.

use crate::compiler::ir::{ConvAttrs, DType, Graph, Op};
use crate::compiler::lower;
use crate::compiler::model::{ForwardModel, InitRule, Param};
use crate::compiler::ops::LeakyRelu;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Normalisation layer of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// `GroupNorm(C, C, affine)`: instance norm with per-channel affine.
    Instance,
    /// `LayerNorm([C,H,W])` with elementwise affine.
    Layer,
    /// No normalisation.
    None,
}

/// Activation of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// ReLU.
    Relu,
    /// LeakyReLU(0.01).
    LeakyRelu,
    /// Sigmoid.
    Sigmoid,
}

/// Pooling of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// 2×2 average pooling, stride 2.
    Avg,
    /// 2×2 max pooling, stride 2.
    Max,
    /// No pooling.
    None,
}

/// ConvNet hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNet {
    /// Channels of every conv layer (128 in the paper).
    pub width: usize,
    /// Number of blocks (3 for 32×32, 4 for 64×64).
    pub depth: usize,
    /// Normalisation.
    pub norm: Norm,
    /// Activation.
    pub act: Act,
    /// Pooling.
    pub pool: Pool,
}

impl ConvNet {
    /// The paper's ConvNet of the given depth (width 128, instance norm, ReLU, average pooling).
    pub fn standard(depth: usize) -> ConvNet {
        ConvNet {
            width: 128,
            depth,
            norm: Norm::Instance,
            act: Act::Relu,
            pool: Pool::Avg,
        }
    }

    /// Builds the forward graph for input `[batch, c, h, w]` and `classes` outputs.
    pub fn build(&self, batch: usize, input: [usize; 3], classes: usize) -> Result<ForwardModel> {
        let [c, h, w] = input;
        if self.width == 0 || self.depth == 0 || classes == 0 || batch == 0 || c == 0 {
            bail!("ConvNet needs positive width, depth, classes, batch and channels");
        }
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![batch, c, h, w]);
        let mut params = Vec::new();
        let mut param = |g: &mut Graph, name: String, shape: Vec<usize>, init: InitRule| {
            let v = g.input(&name, DType::F32, shape.clone());
            params.push(Param {
                name,
                value: v,
                shape,
                init,
                initial: None,
            });
            v
        };
        let (mut ch, mut hh, mut ww) = (c, h, w);
        let mut cur = x;
        let mut idx = 0; // index into PyTorch's `features` Sequential
        for d in 0..self.depth {
            // MTT pads the first layer by 3 for 1-channel (28×28) input, which makes it act as 32×32.
            let pad = if c == 1 && d == 0 { 3 } else { 1 };
            let fan_in = ch * 9;
            let wgt = param(
                &mut g,
                format!("features.{idx}.weight"),
                vec![self.width, ch, 3, 3],
                InitRule::KaimingUniform { fan_in },
            );
            let b = param(
                &mut g,
                format!("features.{idx}.bias"),
                vec![self.width],
                InitRule::UniformBias { fan_in },
            );
            let attrs = ConvAttrs {
                strides: vec![1, 1],
                pads_begin: vec![pad; 2],
                pads_end: vec![pad; 2],
                dilations: vec![1, 1],
                group: 1,
            };
            cur = g.push1(&format!("features.{idx}"), Op::Conv(attrs), &[cur, wgt, b])?;
            ch = self.width;
            hh = hh + 2 * pad - 2;
            ww = ww + 2 * pad - 2;
            idx += 1;
            match self.norm {
                Norm::Instance => {
                    let s = param(
                        &mut g,
                        format!("features.{idx}.weight"),
                        vec![ch],
                        InitRule::Ones,
                    );
                    let bb = param(
                        &mut g,
                        format!("features.{idx}.bias"),
                        vec![ch],
                        InitRule::Zeros,
                    );
                    cur = lower::instance_norm(&mut g, cur, Some(s), Some(bb), 1e-5)?;
                    idx += 1;
                }
                Norm::Layer => {
                    let s = param(
                        &mut g,
                        format!("features.{idx}.weight"),
                        vec![ch, hh, ww],
                        InitRule::Ones,
                    );
                    let bb = param(
                        &mut g,
                        format!("features.{idx}.bias"),
                        vec![ch, hh, ww],
                        InitRule::Zeros,
                    );
                    cur = lower::layer_norm(&mut g, cur, 1, Some(s), Some(bb), 1e-5)?;
                    idx += 1;
                }
                Norm::None => {}
            }
            cur = match self.act {
                Act::Relu => g.unary(Op::Relu, cur)?,
                Act::LeakyRelu => g.unary(Op::LeakyRelu(LeakyRelu { alpha: 0.01 }), cur)?,
                Act::Sigmoid => g.unary(Op::Sigmoid, cur)?,
            };
            idx += 1;
            if self.pool != Pool::None {
                if hh < 2 || ww < 2 {
                    bail!(
                        "input {c}×{h}×{w} is too small for a depth-{} ConvNet with pooling",
                        self.depth
                    );
                }
                cur = lower::pool_2d(&mut g, cur, 2, self.pool == Pool::Max)?;
                hh /= 2;
                ww /= 2;
                idx += 1;
            }
        }
        let feat = ch * hh * ww;
        let flat = g.reshape(cur, &[batch, feat])?;
        let wl = param(
            &mut g,
            "classifier.weight".into(),
            vec![classes, feat],
            InitRule::KaimingUniform { fan_in: feat },
        );
        let bl = param(
            &mut g,
            "classifier.bias".into(),
            vec![classes],
            InitRule::UniformBias { fan_in: feat },
        );
        let wt = g.transpose(wl, &[1, 0])?;
        let z = g.matmul(flat, wt)?;
        let bl2 = g.reshape(bl, &[1, classes])?;
        let logits = g.add(z, bl2)?;
        g.rename(logits, "logits");
        g.outputs = vec![logits];
        Ok(ForwardModel {
            graph: g,
            x,
            logits,
            params,
            source: format!(
                "convnet width={} depth={} norm={:?} act={:?} pool={:?}",
                self.width, self.depth, self.norm, self.act, self.pool
            ),
            warnings: vec![],
            batchnorm: Default::default(),
        })
    }
}
