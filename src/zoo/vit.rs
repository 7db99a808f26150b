//! The ViT of DC-bench's cross-architecture evaluation (its `networks/vit.py`, after lucidrains'
//! `vit-pytorch`): non-overlapping patches flattened in `(p1 p2 c)` order and embedded by a linear
//! layer, a class token, learned position embeddings, pre-norm transformer layers (multi-head
//! attention with a bias-free `to_qkv`, then a GELU MLP, each added back to its input), and a
//! LayerNorm + linear head on the class token. DC-bench's CIFAR setting is patch 4, dim 512,
//! depth 6, 8 heads of 64, MLP 512. Dropout is left out: the graph is deterministic, as evaluation
//! and trajectory matching need.

use super::builder::ModelBuilder;
use crate::compiler::ir::{DType, Op, ValueId};
use crate::compiler::lower;
use crate::compiler::model::{ForwardModel, InitRule};
use crate::compiler::ops::{Concat, Slice, Split};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// ViT hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vit {
    /// Side of the square patches.
    pub patch: usize,
    /// Token width.
    pub dim: usize,
    /// Transformer layers.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
}

impl Vit {
    /// DC-bench's CIFAR ViT: patch 4, dim 512, depth 6, 8 heads of 64, MLP 512.
    pub fn dc_bench() -> Vit {
        Vit {
            patch: 4,
            dim: 512,
            depth: 6,
            heads: 8,
            dim_head: 64,
            mlp_dim: 512,
        }
    }

    /// Builds the forward graph for input `[batch, c, h, w]` and `classes` outputs.
    pub fn build(&self, batch: usize, input: [usize; 3], classes: usize) -> Result<ForwardModel> {
        let [c, h, w] = input;
        let p = self.patch;
        if [
            p,
            self.dim,
            self.depth,
            self.heads,
            self.dim_head,
            self.mlp_dim,
            classes,
            batch,
            c,
        ]
        .contains(&0)
        {
            bail!("ViT needs positive patch, dim, depth, heads, head width, MLP width, classes, batch and channels");
        }
        if h % p != 0 || w % p != 0 {
            bail!("ViT: the input {h}×{w} is not divisible by the patch size {p}");
        }
        let (gh, gw) = (h / p, w / p);
        let n = gh * gw + 1;
        let (dim, inner) = (self.dim, self.heads * self.dim_head);
        let mut b = ModelBuilder::new();
        let x = b.g.input("x", DType::F32, vec![batch, c, h, w]);
        // The model's own parameters come before its sub-modules' in PyTorch's parameters().
        let pos = b.param(
            "pos_embedding",
            vec![1, n, dim],
            InitRule::Normal { std: 1.0 },
        );
        let cls = b.param("cls_token", vec![1, 1, dim], InitRule::Normal { std: 1.0 });

        // 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        let r = b.g.reshape(x, &[batch, c, gh, p, gw, p])?;
        let r = b.g.transpose(r, &[0, 2, 4, 3, 5, 1])?;
        let patches = b.g.reshape(r, &[batch, gh * gw, p * p * c])?;
        let tokens = b.linear("to_patch_embedding.1", patches, p * p * c, dim, true)?;
        let cls_b = b.g.expand(cls, &[batch, 1, dim])?;
        let seq =
            b.g.push1("", Op::Concat(Concat { axis: 1 }), &[cls_b, tokens])?;
        let mut cur = b.g.add(seq, pos)?;

        let scale = (self.dim_head as f64).powf(-0.5);
        let project_out = !(self.heads == 1 && self.dim_head == dim);
        for l in 0..self.depth {
            let pre = format!("transformer.layers.{l}");
            let a = b.layer_norm(&format!("{pre}.0.norm"), cur, dim)?;
            let qkv = b.linear(&format!("{pre}.0.fn.to_qkv"), a, dim, 3 * inner, false)?;
            let parts = b.g.push(
                "",
                Op::Split(Split {
                    axis: 2,
                    sizes: vec![inner; 3],
                }),
                &[qkv],
            )?;
            // 'b n (h d) -> b h n d'
            let mut heads = Vec::with_capacity(3);
            for &t in &parts {
                let t = b.g.reshape(t, &[batch, n, self.heads, self.dim_head])?;
                heads.push(b.g.transpose(t, &[0, 2, 1, 3])?);
            }
            let kt = b.g.transpose_last2(heads[1])?;
            let dots = b.g.matmul(heads[0], kt)?;
            let dots = b.g.scale(dots, scale)?;
            let attn = lower::softmax(&mut b.g, dots, &[3])?;
            let o = b.g.matmul(attn, heads[2])?;
            let o = b.g.transpose(o, &[0, 2, 1, 3])?;
            let mut o = b.g.reshape(o, &[batch, n, inner])?;
            if project_out {
                o = b.linear(&format!("{pre}.0.fn.to_out.0"), o, inner, dim, true)?;
            }
            cur = b.g.add(o, cur)?;

            let f = b.layer_norm(&format!("{pre}.1.norm"), cur, dim)?;
            let f = b.linear(&format!("{pre}.1.fn.net.0"), f, dim, self.mlp_dim, true)?;
            let f = lower::gelu(&mut b.g, f)?;
            let f = b.linear(&format!("{pre}.1.fn.net.3"), f, self.mlp_dim, dim, true)?;
            cur = b.g.add(f, cur)?;
        }
        let first = b.g.push1(
            "",
            Op::Slice(Slice {
                starts: vec![0; 3],
                ends: vec![batch, 1, dim],
            }),
            &[cur],
        )?;
        let first = b.g.reshape(first, &[batch, dim])?;
        let hd = b.layer_norm("mlp_head.0", first, dim)?;
        let logits = b.linear("mlp_head.1", hd, dim, classes, true)?;
        let source = format!(
            "vit patch={p} dim={dim} depth={} heads={} dim_head={} mlp={}",
            self.depth, self.heads, self.dim_head, self.mlp_dim
        );
        Ok(b.finish(x, logits, source))
    }
}

impl ModelBuilder {
    /// `nn.LayerNorm(dim)` over the last axis.
    fn layer_norm(&mut self, name: &str, x: ValueId, dim: usize) -> Result<ValueId> {
        let s = self.param(&format!("{name}.weight"), vec![dim], InitRule::Ones);
        let b = self.param(&format!("{name}.bias"), vec![dim], InitRule::Zeros);
        let axis = self.g.shape(x).len() - 1;
        Ok(lower::layer_norm(
            &mut self.g,
            x,
            axis,
            Some(s),
            Some(b),
            1e-5,
        )?)
    }
}
