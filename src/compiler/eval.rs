//! A naive reference evaluator for the IR in f64. It is the oracle for finite-difference checks
//! (backends have no f64 kernels worth trusting) and the engine of constant folding. Clarity over
//! speed: every primitive's kernel (in `compiler::ops`) is written directly from its definition.

use super::ir::{DType, Graph, Op, Tensor, ValueId};
use ndarray::{ArrayD, IxDyn};
use thiserror::Error;

/// Evaluation failures.
#[derive(Debug, Error)]
pub enum EvalError {
    /// Wrong number of inputs.
    #[error("graph has {want} inputs, {got} were given")]
    Arity {
        /// Expected.
        want: usize,
        /// Given.
        got: usize,
    },
    /// An input of the wrong shape.
    #[error("input '{name}' has shape {got:?}, the graph expects {want:?}")]
    InputShape {
        /// Input name.
        name: String,
        /// Expected.
        want: Vec<usize>,
        /// Given.
        got: Vec<usize>,
    },
    /// An op the evaluator cannot run with these attributes.
    #[error("node '{node}' ({op}): {msg}")]
    Unsupported {
        /// Node.
        node: String,
        /// Op.
        op: &'static str,
        /// Why.
        msg: String,
    },
}

fn to_array(t: &Tensor) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone()).expect("tensor data matches its shape")
}

fn to_tensor(dtype: DType, a: ArrayD<f64>) -> Tensor {
    let shape = a.shape().to_vec();
    let data = a.as_standard_layout().iter().copied().collect();
    Tensor { dtype, shape, data }
}

/// Runs `g` on the given inputs (in graph-input order) and returns its outputs.
pub fn eval(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    let all = eval_values(g, inputs)?;
    Ok(g.outputs
        .iter()
        .map(|&o| to_tensor(g.dtype(o), all[o].clone().expect("outputs are computed")))
        .collect())
}

/// Runs `g` and returns every value it computes (`None` for values no node produced).
pub fn eval_values(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Option<ArrayD<f64>>>, EvalError> {
    if inputs.len() != g.inputs.len() {
        return Err(EvalError::Arity {
            want: g.inputs.len(),
            got: inputs.len(),
        });
    }
    let mut vals: Vec<Option<ArrayD<f64>>> = vec![None; g.values.len()];
    for (&id, t) in g.inputs.iter().zip(inputs) {
        if t.shape != g.shape(id) {
            return Err(EvalError::InputShape {
                name: g.info(id).name.clone(),
                want: g.shape(id).to_vec(),
                got: t.shape.clone(),
            });
        }
        vals[id] = Some(to_array(t));
    }
    for node in &g.nodes {
        let args: Vec<&ArrayD<f64>> = node
            .inputs
            .iter()
            .map(|&i| vals[i].as_ref().expect("topological order"))
            .collect();
        let outs =
            eval_op(g, &node.op, &args, &node.outputs).map_err(|msg| EvalError::Unsupported {
                node: node.name.clone(),
                op: node.op.name(),
                msg,
            })?;
        for (&o, v) in node.outputs.iter().zip(outs) {
            debug_assert_eq!(v.shape(), g.shape(o), "node {} output shape", node.name);
            vals[o] = Some(v);
        }
    }
    Ok(vals)
}

fn eval_op(
    g: &Graph,
    op: &Op,
    a: &[&ArrayD<f64>],
    outs: &[ValueId],
) -> Result<Vec<ArrayD<f64>>, String> {
    let shapes: Vec<&[usize]> = outs.iter().map(|&o| g.shape(o)).collect();
    op.rules().eval(a, &shapes)
}
