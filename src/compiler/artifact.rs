//! Training artifacts: the graphs the scheduler composes, built from a forward model.
//!
//! - `step`: `theta` \[P\], `x` \[B,C,H,W\], `y` \[B,K\] → `loss` \[\], `grad` \[P\].
//! - `pass2`: `theta`, `x`, `y`, `v` \[P\] → `dx` = ∂⟨v,grad⟩/∂x, `dtheta` = ∂⟨v,grad⟩/∂theta,
//!   `dy` = ∂⟨v,grad⟩/∂y, and `grad` (free: pass 2 computes it on the way).
//! - `pass2_dx`: the same, pruned to `dx`.
//! - `logits`: `theta`, `x` → `logits` \[B,K\].
//! - `label_vjp`: `theta`, `x`, `w` \[B,K\] → `dx` = ∂⟨w, softmax(f(theta, x))⟩/∂x, the images'
//!   share of a gradient that flows through teacher-assigned soft labels.
//! - `unrolled`: T student steps in one graph, the MTT baseline.

use super::autodiff::grad;
use super::ir::{numel, DType, Graph, IrError, Op, ValueId};
use super::lower::{soft_cross_entropy, softmax};
use super::model::ForwardModel;
use super::passes::{inline, prune, set_outputs, simplify};
use crate::compiler::ops::Split;

/// The role of an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Artifact {
    /// `step.onnx`: theta, x, y → loss, grad.
    Step,
    /// `pass2.onnx`: theta, x, y, v → dx, dtheta, dy, grad.
    Pass2,
    /// `pass2_dx.onnx`: theta, x, y, v → dx.
    Pass2Dx,
    /// `logits.onnx`: theta, x → logits.
    Logits,
    /// `label_vjp.onnx`: theta, x, w → dx = ∂⟨w, softmax(f(theta, x))⟩/∂x.
    LabelVjp,
    /// `unrolled.onnx`: theta0, target, beta, xs, ys → loss, dxs, dys, dbeta.
    Unrolled,
}

impl Artifact {
    /// The file name inside an artifact directory.
    pub fn file(self) -> &'static str {
        match self {
            Artifact::Step => "step.onnx",
            Artifact::Pass2 => "pass2.onnx",
            Artifact::Pass2Dx => "pass2_dx.onnx",
            Artifact::Logits => "logits.onnx",
            Artifact::LabelVjp => "label_vjp.onnx",
            Artifact::Unrolled => "unrolled.onnx",
        }
    }
}

/// Binds the forward model into `g` with its parameters carved out of one flat vector `theta`.
/// Returns the logits.
pub fn forward_from_theta(
    g: &mut Graph,
    m: &ForwardModel,
    theta: ValueId,
    x: ValueId,
) -> Result<ValueId, IrError> {
    let sizes: Vec<usize> = m.params.iter().map(|p| numel(&p.shape)).collect();
    let parts = if sizes.len() == 1 {
        vec![theta]
    } else {
        g.push("split_theta", Op::Split(Split { axis: 0, sizes }), &[theta])?
    };
    let mut args = Vec::with_capacity(m.graph.inputs.len());
    for &inp in &m.graph.inputs {
        if inp == m.x {
            args.push(x);
        } else {
            let k = m
                .params
                .iter()
                .position(|p| p.value == inp)
                .ok_or_else(|| IrError::Shape {
                    node: m.graph.info(inp).name.clone(),
                    op: "Input",
                    msg: "graph input is neither the image nor a parameter".into(),
                })?;
            args.push(g.reshape(parts[k], &m.params[k].shape)?);
        }
    }
    let outs = inline(g, &m.graph, &args)?;
    let pos = m
        .graph
        .outputs
        .iter()
        .position(|&o| o == m.logits)
        .unwrap_or(0);
    Ok(outs[pos])
}

/// The float type of the model's graph (F32 for artifacts; F64 when imported for checks), which
/// every artifact input takes.
fn float_type(m: &ForwardModel) -> DType {
    m.graph.dtype(m.x)
}

struct StepParts {
    g: Graph,
    theta: ValueId,
    x: ValueId,
    y: ValueId,
    loss: ValueId,
    grad: ValueId,
}

fn step_parts(m: &ForwardModel) -> Result<StepParts, IrError> {
    let mut g = Graph::new();
    let p = m.num_params();
    let xs = m.graph.shape(m.x).to_vec();
    let ls = m.graph.shape(m.logits).to_vec();
    let theta = g.input("theta", float_type(m), vec![p]);
    let x = g.input("x", float_type(m), xs);
    let y = g.input("y", float_type(m), ls);
    let logits = forward_from_theta(&mut g, m, theta, x)?;
    let loss = soft_cross_entropy(&mut g, logits, y)?;
    let gr = grad(&mut g, loss, &[theta], None)?[0];
    Ok(StepParts {
        g,
        theta,
        x,
        y,
        loss,
        grad: gr,
    })
}

/// The per-step gradient graph.
pub fn step_graph(m: &ForwardModel) -> Result<Graph, IrError> {
    let mut s = step_parts(m)?;
    set_outputs(&mut s.g, &[(s.loss, "loss"), (s.grad, "grad")])?;
    Ok(simplify(&s.g))
}

/// The pass-2 graph (reverse-over-reverse through the step graph). With `dx_only` it is pruned to
/// the image gradient, which is all the TESLA mode needs.
pub fn pass2_graph(m: &ForwardModel, dx_only: bool) -> Result<Graph, IrError> {
    let mut s = step_parts(m)?;
    let g = &mut s.g;
    let p = m.num_params();
    let v = g.input("v", float_type(m), vec![p]);
    let prod = g.mul(s.grad, v)?;
    let dot = g.sum_all(prod)?;
    let d = grad(g, dot, &[s.x, s.theta, s.y], None)?;
    if dx_only {
        set_outputs(g, &[(d[0], "dx")])?;
    } else {
        set_outputs(
            g,
            &[
                (d[0], "dx"),
                (d[1], "dtheta"),
                (d[2], "dy"),
                (s.grad, "grad"),
            ],
        )?;
    }
    Ok(simplify(g))
}

/// The logits graph.
pub fn logits_graph(m: &ForwardModel) -> Result<Graph, IrError> {
    let mut g = Graph::new();
    let theta = g.input("theta", float_type(m), vec![m.num_params()]);
    let x = g.input("x", float_type(m), m.graph.shape(m.x).to_vec());
    let z = forward_from_theta(&mut g, m, theta, x)?;
    set_outputs(&mut g, &[(z, "logits")])?;
    Ok(simplify(&g))
}

/// The label VJP graph: how a cotangent `w` on a teacher's soft labels `softmax(f(theta, x))`
/// moves the images. Soft label assignment makes the labels a function of the images; this graph
/// carries ∂L/∂Y back to ∂L/∂X̃ for the runs that differentiate through it.
pub fn label_vjp_graph(m: &ForwardModel) -> Result<Graph, IrError> {
    let mut g = Graph::new();
    let theta = g.input("theta", float_type(m), vec![m.num_params()]);
    let x = g.input("x", float_type(m), m.graph.shape(m.x).to_vec());
    let ls = m.graph.shape(m.logits).to_vec();
    let w = g.input("w", float_type(m), ls);
    let z = forward_from_theta(&mut g, m, theta, x)?;
    let p = softmax(&mut g, z, &[1])?;
    let wp = g.mul(w, p)?;
    let dot = g.sum_all(wp)?;
    let dx = grad(&mut g, dot, &[x], None)?[0];
    set_outputs(&mut g, &[(dx, "dx")])?;
    Ok(simplify(&g))
}

/// The unrolled MTT baseline: `T` student steps in one graph and the normalised matching loss,
/// differentiated end to end. Inputs: `theta0` \[P\], `target` \[P\], `beta` \[1\], `xs` \[T,B,C,H,W\],
/// `ys` \[T,B,K\]. Outputs: `loss` \[\], `dxs`, `dys`, `dbeta` \[1\]. Its memory grows with T: every
/// step's activations stay alive for the backward sweep.
pub fn unrolled_graph(m: &ForwardModel, steps: usize) -> Result<Graph, IrError> {
    let mut g = Graph::new();
    let p = m.num_params();
    let xs_shape = m.graph.shape(m.x).to_vec();
    let ls = m.graph.shape(m.logits).to_vec();
    let step = {
        let s = step_parts(m)?;
        let mut sg = s.g;
        sg.outputs = vec![s.grad];
        prune(&sg)
    };
    let theta0 = g.input("theta0", float_type(m), vec![p]);
    let target = g.input("target", float_type(m), vec![p]);
    let beta = g.input("beta", float_type(m), vec![1]);
    let mut tx = vec![steps];
    tx.extend(&xs_shape);
    let mut ty = vec![steps];
    ty.extend(&ls);
    let xs = g.input("xs", float_type(m), tx);
    let ys = g.input("ys", float_type(m), ty);
    let xparts = g.push(
        "split_xs",
        Op::Split(Split {
            axis: 0,
            sizes: vec![1; steps],
        }),
        &[xs],
    )?;
    let yparts = g.push(
        "split_ys",
        Op::Split(Split {
            axis: 0,
            sizes: vec![1; steps],
        }),
        &[ys],
    )?;
    let mut theta = theta0;
    for i in 0..steps {
        let xi = g.reshape(xparts[i], &xs_shape)?;
        let yi = g.reshape(yparts[i], &ls)?;
        let gi = inline(&mut g, &step, &[theta, xi, yi])?[0];
        let bg = g.mul(beta, gi)?;
        theta = g.sub(theta, bg)?;
    }
    let d0 = g.sub(theta0, target)?;
    let dd = g.mul(d0, d0)?;
    let denom = g.sum_all(dd)?;
    let r = g.sub(theta, target)?;
    let rr = g.mul(r, r)?;
    let num = g.sum_all(rr)?;
    let loss = g.div(num, denom)?;
    let d = grad(&mut g, loss, &[xs, ys, beta], None)?;
    set_outputs(
        &mut g,
        &[
            (loss, "loss"),
            (d[0], "dxs"),
            (d[1], "dys"),
            (d[2], "dbeta"),
        ],
    )?;
    Ok(simplify(&g))
}

/// Floating-point operations of the graph per sample of a batch-`batch` graph, each primitive
/// costed by its own rule.
pub fn flops_per_sample(g: &Graph, batch: usize) -> f64 {
    let mut f = 0.0;
    for n in &g.nodes {
        let ins: Vec<&[usize]> = n.inputs.iter().map(|&v| g.shape(v)).collect();
        let outs: Vec<&[usize]> = n.outputs.iter().map(|&v| g.shape(v)).collect();
        f += n.op.rules().flops(&ins, &outs);
    }
    f / batch.max(1) as f64
}
