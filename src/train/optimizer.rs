//! SGD with momentum, as PyTorch's `torch.optim.SGD` computes it: the one update rule shared by
//! expert and evaluation training (with weight decay) and by distillation's updates of the
//! images, β and learned labels (momentum 0.5, the reference code's optimisers).

use crate::runtime::programs::Scalar;
use anyhow::{bail, Result};

/// Step size, momentum and weight decay of one parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MomentumSgd<F> {
    /// Learning rate.
    pub lr: F,
    /// Momentum (0: plain SGD, no buffer).
    pub momentum: F,
    /// Weight decay, added to the gradient.
    pub weight_decay: F,
}

impl<F: Scalar> MomentumSgd<F> {
    /// Plain momentum SGD without weight decay.
    pub fn new(lr: F, momentum: F) -> Self {
        MomentumSgd {
            lr,
            momentum,
            weight_decay: F::zero(),
        }
    }

    /// One step on `params` with gradient `grad`: `d = g + λθ`, `v ← μv + d`, `θ ← θ − lr·v`
    /// (`θ ← θ − lr·d` without a buffer). A buffer of zeros makes the first step the plain
    /// gradient, as PyTorch's, which starts the buffer at the first gradient.
    pub fn step(&self, params: &mut [F], velocity: Option<&mut [F]>, grad: &[F]) -> Result<()> {
        if grad.len() != params.len() {
            bail!(
                "an update of {} parameters got a gradient of {} values",
                params.len(),
                grad.len()
            );
        }
        if let Some(v) = velocity.as_ref().filter(|v| v.len() != params.len()) {
            bail!(
                "an update of {} parameters got a momentum buffer of {} values",
                params.len(),
                v.len()
            );
        }
        let wd = self.weight_decay;
        match velocity {
            Some(v) => {
                for ((p, v), &g) in params.iter_mut().zip(v.iter_mut()).zip(grad) {
                    *v = self.momentum * *v + (g + wd * *p);
                    *p -= self.lr * *v;
                }
            }
            None => {
                for (p, &g) in params.iter_mut().zip(grad) {
                    *p -= self.lr * (g + wd * *p);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pytorch_sgd_by_hand() {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01) from p = 1 with
        // gradients 2 then 3: d1 = 2.01, v1 = 2.01, p1 = 0.799; d2 = 3.00799,
        // v2 = 0.9·2.01 + 3.00799 = 4.81699, p2 = 0.799 − 0.481699 = 0.317301.
        let opt = MomentumSgd {
            lr: 0.1f64,
            momentum: 0.9,
            weight_decay: 0.01,
        };
        let (mut p, mut v) = ([1.0], [0.0]);
        opt.step(&mut p, Some(&mut v), &[2.0]).unwrap();
        assert!((p[0] - 0.799).abs() < 1e-12);
        opt.step(&mut p, Some(&mut v), &[3.0]).unwrap();
        assert!((v[0] - 4.81699).abs() < 1e-12, "{}", v[0]);
        assert!((p[0] - 0.317301).abs() < 1e-12, "{}", p[0]);
        let mut q = [1.0];
        MomentumSgd::new(0.5f64, 0.0)
            .step(&mut q, None, &[2.0])
            .unwrap();
        assert_eq!(q[0], 0.0);
        assert!(opt.step(&mut q, None, &[1.0, 2.0]).is_err());
    }
}
