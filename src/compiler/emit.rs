//! Short constructors for emitting primitives into a [`Graph`]; the derivative rules, lowerings and
//! builders are written with these.

use super::ir::{DType, Graph, IrError, Op, Tensor, ValueId};
use crate::compiler::ops::{Expand, Gather, ReduceSum, Reshape, Slice, Transpose};

/// Result of emitting one value.
pub type R = Result<ValueId, IrError>;

impl Graph {
    /// a + b.
    pub fn add(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Add, &[a, b])
    }
    /// a − b.
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Sub, &[a, b])
    }
    /// a · b.
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Mul, &[a, b])
    }
    /// a / b.
    pub fn div(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Div, &[a, b])
    }
    /// −a.
    pub fn neg(&mut self, a: ValueId) -> R {
        self.push1("", Op::Neg, &[a])
    }
    /// Applies a one-operand op.
    pub fn unary(&mut self, op: Op, a: ValueId) -> R {
        self.push1("", op, &[a])
    }
    /// a · c for a float constant c (of a's dtype).
    pub fn scale(&mut self, a: ValueId, c: f64) -> R {
        if c == 1.0 {
            return Ok(a);
        }
        let s = self.scalar(self.dtype(a), c);
        self.mul(a, s)
    }
    /// cond ? a : b.
    pub fn where_(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Where, &[cond, a, b])
    }
    /// a > b.
    pub fn greater(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::Greater, &[a, b])
    }
    /// Matrix product.
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> R {
        self.push1("", Op::MatMul, &[a, b])
    }
    /// Axis permutation (no node for the identity permutation).
    pub fn transpose(&mut self, a: ValueId, perm: &[usize]) -> R {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(a);
        }
        self.push1(
            "",
            Op::Transpose(Transpose {
                perm: perm.to_vec(),
            }),
            &[a],
        )
    }
    /// Swaps the last two axes.
    pub fn transpose_last2(&mut self, a: ValueId) -> R {
        let r = self.shape(a).len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(a, &perm)
    }
    /// Reshape (no node when the shape is unchanged).
    pub fn reshape(&mut self, a: ValueId, shape: &[usize]) -> R {
        if self.shape(a) == shape {
            return Ok(a);
        }
        self.push1(
            "",
            Op::Reshape(Reshape {
                shape: shape.to_vec(),
            }),
            &[a],
        )
    }
    /// Broadcast to a shape (no node when unchanged).
    pub fn expand(&mut self, a: ValueId, shape: &[usize]) -> R {
        if self.shape(a) == shape {
            return Ok(a);
        }
        self.push1(
            "",
            Op::Expand(Expand {
                shape: shape.to_vec(),
            }),
            &[a],
        )
    }
    /// Sum over axes (no node for an empty axis list).
    pub fn reduce_sum(&mut self, a: ValueId, axes: &[usize], keepdims: bool) -> R {
        if axes.is_empty() {
            return Ok(a);
        }
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        self.push1("", Op::ReduceSum(ReduceSum { axes, keepdims }), &[a])
    }
    /// Mean over axes.
    pub fn reduce_mean(&mut self, a: ValueId, axes: &[usize], keepdims: bool) -> R {
        let n: usize = axes.iter().map(|&i| self.shape(a)[i]).product();
        let s = self.reduce_sum(a, axes, keepdims)?;
        self.scale(s, 1.0 / n as f64)
    }
    /// Sum of all elements, as a scalar.
    pub fn sum_all(&mut self, a: ValueId) -> R {
        let axes: Vec<usize> = (0..self.shape(a).len()).collect();
        let s = self.reduce_sum(a, &axes, false)?;
        self.reshape(s, &[])
    }
    /// The adjoint of broadcasting: sums `a` down to `shape`.
    pub fn sum_to(&mut self, a: ValueId, shape: &[usize]) -> R {
        let from = self.shape(a).to_vec();
        if from == shape {
            return Ok(a);
        }
        let lead = from.len() - shape.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && from[lead + i] != 1 {
                axes.push(lead + i);
            }
        }
        let s = self.reduce_sum(a, &axes, true)?;
        self.reshape(s, shape)
    }
    /// A float scalar constant with a's dtype.
    pub fn scalar_like(&mut self, a: ValueId, v: f64) -> ValueId {
        let dt = self.dtype(a);
        self.scalar(dt, v)
    }
    /// Zeros with the type and shape of `a` (a scalar broadcast, so files stay small).
    pub fn zeros_like(&mut self, a: ValueId) -> R {
        let z = self.scalar_like(a, 0.0);
        let shape = self.shape(a).to_vec();
        self.expand(z, &shape)
    }
    /// A constant f64-valued tensor of the given dtype.
    pub fn const_tensor(&mut self, dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> ValueId {
        self.constant(Tensor::new(dtype, shape, data))
    }
    /// Entries `indices` of `axis`: a slice where they are one consecutive run (a scalar index,
    /// `x[:, a:b]`; no node for the whole axis), else a gather, whose adjoint is gathers again.
    pub fn take(&mut self, x: ValueId, axis: usize, indices: Vec<usize>) -> R {
        let shape = self.shape(x).to_vec();
        let run = indices
            .first()
            .filter(|&&f| indices.iter().enumerate().all(|(r, &i)| i == f + r));
        if let (Some(&first), Some(&extent)) = (run, shape.get(axis)) {
            let end = first + indices.len();
            if first == 0 && end == extent {
                return Ok(x);
            }
            let mut starts = vec![0; shape.len()];
            let mut ends = shape;
            starts[axis] = first;
            ends[axis] = end;
            return self.push1("", Op::Slice(Slice { starts, ends }), &[x]);
        }
        self.push1("", Op::Gather(Gather { axis, indices }), &[x])
    }
    /// Adds `b` to an optional running sum.
    pub fn accumulate(&mut self, acc: Option<ValueId>, b: ValueId) -> R {
        match acc {
            None => Ok(b),
            Some(a) => self.add(a, b),
        }
    }
}
