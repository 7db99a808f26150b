//! ONNX `InstanceNormalization` as tract is given it: the same statistics as tract's own
//! expansion, with the per-channel scale and shift applied through one factor and one offset per
//! image and channel. tract's expansion multiplies and adds \[1, C, 1, …\] operands into the
//! whole activation, which its kernels broadcast element by element; an \[N, C, 1, …\] operand
//! gets its vectorised per-row kernel instead (ConvNet-D3's first layer at batch 256: the whole
//! norm 240 → 88 ms). The artifacts stay plain `InstanceNormalization`, which ONNX Runtime runs as
//! one fused kernel, faster than any written-out form.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::nn as hir_nn;

/// The ONNX framework of tract with `InstanceNormalization` built by this module.
pub(crate) fn onnx() -> tract_onnx::Onnx {
    let mut framework = tract_onnx::onnx();
    framework
        .op_register
        .insert("InstanceNormalization", instance_normalization);
    framework
}

fn instance_normalization(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr_opt("epsilon")?.unwrap_or(1e-5);
    Ok((expand(PerImageInstanceNorm { epsilon }), vec![]))
}

/// y = (x − μ) · a + b, with μ and σ² the mean and variance of each plane of x (n elements),
/// a = γ / √(σ² + ε) = γ√n / √(Σ(x − μ)² + nε) and b = β, both of shape \[N, C, 1, …\] before
/// they meet the activation.
#[derive(Debug, Clone)]
struct PerImageInstanceNorm {
    epsilon: f32,
}

impl Expansion for PerImageInstanceNorm {
    fn name(&self) -> StaticName {
        "PerImageInstanceNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].datum_type, &inputs[1].datum_type)?;
        s.equals(&inputs[0].datum_type, &inputs[2].datum_type)?;
        s.equals(&inputs[1].shape, &inputs[2].shape)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        s.equals(&inputs[1].shape[0], &inputs[0].shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let &[x, scale, bias] = inputs else {
            bail!(
                "{name}: InstanceNormalization takes 3 operands, got {}",
                inputs.len()
            );
        };
        let fact = model.outlet_fact(x)?.clone();
        let rank = fact.rank();
        let (Some(n), Some(c)) = (fact.shape.first(), fact.shape.get(1)) else {
            bail!("{name}: InstanceNormalization needs [N, C, D…], got rank {rank}");
        };
        let per_plane: Vec<usize> = [n.to_usize()?, c.to_usize()?]
            .into_iter()
            .chain(std::iter::repeat_n(1, rank - 2))
            .collect();
        let count = fact.shape.iter().skip(2).product::<TDim>().to_i64()? as f32;
        let dt = fact.datum_type;
        let mut constant = |stem: &str, t: Tensor| {
            let t = t.cast_to_dt(dt)?.into_owned();
            model.add_const(format!("{name}.{stem}"), t.into_arc_tensor())
        };
        let n_eps = constant(
            "count_epsilon",
            tensor0(count * self.epsilon).broadcast_into_rank(rank)?,
        )?;
        let sqrt_count = constant(
            "sqrt_count",
            tensor0(count.sqrt()).broadcast_into_rank(rank)?,
        )?;
        let zeros = constant("zeros", Tensor::zero::<f32>(&per_plane)?)?;
        let planes: Vec<i64> = (2..rank as i64).collect();
        let mean = hir_nn::Reduce::new(Some(planes.clone()), true, hir_nn::Reducer::Mean).wire(
            &format!("{name}.mean"),
            model,
            &[x],
        )?;
        let diff = model.wire_node(format!("{name}.diff"), math::sub(), &[x, mean[0]])?;
        let sqr = model.wire_node(format!("{name}.sqr"), math::square(), &diff)?;
        // 1/√(S/n + ε) = √n/√(S + nε): with no product by 1/n after the sum, tract keeps the
        // square and the sum apart instead of fusing them into its `MeanOfSquares` reduction,
        // which first copies the whole activation (20 to 470 ms at ConvNet-D3's first layer,
        // against 5 to 8 ms for the sum).
        let axes = planes.iter().map(|&a| a as usize).collect();
        let sum_sqr = model.wire_node(
            format!("{name}.sum_sqr"),
            Reduce::new(axes, Reducer::Sum),
            &sqr,
        )?;
        let s_eps =
            model.wire_node(format!("{name}.epsilon"), math::add(), &[sum_sqr[0], n_eps])?;
        let inv_sd = model.wire_node(format!("{name}.rsqrt"), math::rsqrt(), &s_eps)?;
        let channel_axes = |model: &mut TypedModel, stem: &str, v: OutletId| {
            let mut v = model.wire_node(format!("{name}.{stem}-axis-n"), AxisOp::Add(0), &[v])?;
            for i in 2..rank {
                v = model.wire_node(format!("{name}.{stem}-axis-{i}"), AxisOp::Add(2), &v)?;
            }
            TractResult::Ok(v[0])
        };
        let scale = channel_axes(model, "scale", scale)?;
        let scale =
            model.wire_node(format!("{name}.scale_n"), math::mul(), &[scale, sqrt_count])?;
        let factor = model.wire_node(
            format!("{name}.factor"),
            math::mul(),
            &[inv_sd[0], scale[0]],
        )?;
        // β plus a constant of zeros of the per-plane shape: tract folds a plain broadcast of β
        // back into the slow \[1, C, 1, …\] operand.
        let bias = channel_axes(model, "bias", bias)?;
        let offset = model.wire_node(format!("{name}.offset"), math::add(), &[bias, zeros])?;
        let scaled =
            model.wire_node(format!("{name}.scaled"), math::mul(), &[diff[0], factor[0]])?;
        model.wire_node(name, math::add(), &[scaled[0], offset[0]])
    }
}
