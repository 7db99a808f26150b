//! Shared helpers for the gradient tests: random tensors and finite-difference checks in f64 on
//! the reference evaluator.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tesla_distill::compiler::autodiff::grad;
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{numel, DType, Graph, Tensor, ValueId};

/// A seeded generator.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [lo, hi).
pub fn uniform(r: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    Tensor::new(
        DType::F32,
        shape.to_vec(),
        (0..numel(shape)).map(|_| r.random_range(lo..hi)).collect(),
    )
}

/// Values with |x| in [0.2, 1.2) and random sign: away from the kinks of ReLU-like ops.
pub fn away_from_zero(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let data = (0..numel(shape))
        .map(|_| {
            let m = r.random_range(0.2..1.2);
            if r.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::new(DType::F32, shape.to_vec(), data)
}

/// Distinct values (a shuffled ramp with jitter): no ties for max-like ops.
pub fn distinct(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = numel(shape);
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0) * 0.1 + r.random_range(0.0..0.02))
        .collect();
    for i in (1..n).rev() {
        let j = r.random_range(0..=i);
        v.swap(i, j);
    }
    Tensor::new(DType::F32, shape.to_vec(), v)
}

/// Turns a value into a scalar by a random weighted sum, so every output element has its own
/// cotangent.
pub fn weighted_sum(g: &mut Graph, r: &mut ChaCha8Rng, v: ValueId) -> ValueId {
    let s = g.shape(v).to_vec();
    let w = uniform(r, &s, -1.0, 1.0);
    let c = g.constant(w);
    let p = g.mul(v, c).unwrap();
    g.sum_all(p).unwrap()
}

/// Max relative error of the autodiff gradient of scalar `out` against central differences, over
/// every float graph input; `g`'s outputs are replaced.
pub fn grad_error(g: &Graph, out: ValueId, inputs: &[Tensor]) -> f64 {
    let mut gg = g.clone();
    let wrt: Vec<ValueId> = gg
        .inputs
        .iter()
        .copied()
        .filter(|&i| gg.dtype(i).is_float())
        .collect();
    let grads = grad(&mut gg, out, &wrt, None).unwrap();
    gg.outputs = grads.clone();
    let ad = eval(&gg, inputs).unwrap();
    let mut f = g.clone();
    f.outputs = vec![out];
    let val = |ins: &[Tensor]| eval(&f, ins).unwrap()[0].data[0];
    let mut worst: f64 = 0.0;
    for (k, &w) in wrt.iter().enumerate() {
        let pos = g.inputs.iter().position(|&i| i == w).unwrap();
        let scale_fd = 1e-5;
        let mut fd = Vec::with_capacity(inputs[pos].numel());
        for j in 0..inputs[pos].numel() {
            let mut plus = inputs.to_vec();
            plus[pos].data[j] += scale_fd;
            let mut minus = inputs.to_vec();
            minus[pos].data[j] -= scale_fd;
            fd.push((val(&plus) - val(&minus)) / (2.0 * scale_fd));
        }
        let norm = fd.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
        let err = ad[k]
            .data
            .iter()
            .zip(&fd)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / norm);
    }
    worst
}

/// The same check one order up: the gradient of ⟨v, ∇f⟩ (v random), which makes the transform
/// differentiate the graph it emitted.
pub fn hvp_error(g: &Graph, out: ValueId, inputs: &[Tensor], seed: u64) -> f64 {
    let mut r = rng(seed);
    let mut gg = g.clone();
    let wrt: Vec<ValueId> = gg
        .inputs
        .iter()
        .copied()
        .filter(|&i| gg.dtype(i).is_float())
        .collect();
    let grads = grad(&mut gg, out, &wrt, None).unwrap();
    let mut acc = None;
    for d in grads {
        let s = weighted_sum(&mut gg, &mut r, d);
        acc = Some(match acc {
            None => s,
            Some(a) => gg.add(a, s).unwrap(),
        });
    }
    grad_error(&gg, acc.unwrap(), inputs)
}
