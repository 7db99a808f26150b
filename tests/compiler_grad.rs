//! Every derivative rule against central finite differences in f64 (reference evaluator), at
//! first order and at second order (the gradient of ⟨v, ∇f⟩, which differentiates the emitted
//! derivative graph again).

mod common;
use common::*;
use rand_chacha::ChaCha8Rng;
use tesla_distill::compiler::ir::{ConvAttrs, DType, Graph, Op, Tensor, ValueId};
use tesla_distill::compiler::lower;
use tesla_distill::compiler::ops::{
    Concat, ConvTranspose, ConvWeightGrad, Gather, LeakyRelu, Pad, ReduceMax, Slice, Split,
    Upsample,
};

const TOL: f64 = 1e-6;

type Gen = fn(&mut ChaCha8Rng, &[usize]) -> Tensor;

fn smooth(r: &mut ChaCha8Rng, s: &[usize]) -> Tensor {
    uniform(r, s, -1.0, 1.0)
}
fn positive(r: &mut ChaCha8Rng, s: &[usize]) -> Tensor {
    uniform(r, s, 0.5, 2.0)
}

/// Builds `out = Σ R ⊙ build(inputs)` and checks first and second derivatives.
fn check(name: &str, ins: &[(&[usize], Gen)], build: impl Fn(&mut Graph, &[ValueId]) -> ValueId) {
    let mut r = rng(name.len() as u64 * 7919);
    let mut g = Graph::new();
    let vals: Vec<ValueId> = ins
        .iter()
        .enumerate()
        .map(|(i, (s, _))| g.input(&format!("in{i}"), DType::F32, s.to_vec()))
        .collect();
    let y = build(&mut g, &vals);
    let out = weighted_sum(&mut g, &mut r, y);
    let data: Vec<Tensor> = ins.iter().map(|(s, gen)| gen(&mut r, s)).collect();
    let e1 = grad_error(&g, out, &data);
    let e2 = hvp_error(&g, out, &data, 17);
    assert!(e1 <= TOL, "{name}: first-order relative error {e1:e}");
    assert!(e2 <= TOL, "{name}: second-order relative error {e2:e}");
}

#[test]
fn elementwise_binary_with_broadcasting() {
    for (name, op) in [("add", Op::Add), ("sub", Op::Sub), ("mul", Op::Mul)] {
        check(name, &[(&[2, 3, 4], smooth), (&[3, 1], smooth)], |g, v| {
            g.push1("", op.clone(), &[v[0], v[1]]).unwrap()
        });
        check(name, &[(&[4], smooth), (&[2, 3, 4], smooth)], |g, v| {
            g.push1("", op.clone(), &[v[0], v[1]]).unwrap()
        });
    }
    check("div", &[(&[2, 3], smooth), (&[3], positive)], |g, v| {
        g.div(v[0], v[1]).unwrap()
    });
    check(
        "div2",
        &[(&[1, 3], positive), (&[2, 3], positive)],
        |g, v| g.div(v[0], v[1]).unwrap(),
    );
}

#[test]
fn elementwise_unary() {
    let smooth_ops = [Op::Neg, Op::Exp, Op::Sigmoid, Op::Tanh, Op::Erf];
    for op in smooth_ops {
        check(op.name(), &[(&[3, 4], smooth)], |g, v| {
            g.unary(op.clone(), v[0]).unwrap()
        });
    }
    check("log", &[(&[3, 4], positive)], |g, v| {
        g.unary(Op::Log, v[0]).unwrap()
    });
    check("sqrt", &[(&[3, 4], positive)], |g, v| {
        g.unary(Op::Sqrt, v[0]).unwrap()
    });
    // Kinked ops are tested away from the kink; the product keeps the second derivative non-zero.
    for op in [Op::Relu, Op::LeakyRelu(LeakyRelu { alpha: 0.1 })] {
        check(
            op.name(),
            &[(&[3, 4], away_from_zero), (&[3, 4], smooth)],
            |g, v| {
                let a = g.unary(op.clone(), v[0]).unwrap();
                let b = g.mul(a, v[0]).unwrap();
                g.mul(b, v[1]).unwrap()
            },
        );
    }
}

#[test]
fn where_and_comparisons() {
    check(
        "where",
        &[(&[3, 4], away_from_zero), (&[3, 4], smooth), (&[4], smooth)],
        |g, v| {
            let z = g.scalar(DType::F32, 0.0);
            let c = g.greater(v[0], z).unwrap();
            let a = g.mul(v[1], v[0]).unwrap();
            let b = g.mul(v[2], v[2]).unwrap();
            g.where_(c, a, b).unwrap()
        },
    );
}

#[test]
fn matmul_batched_and_broadcast() {
    check(
        "matmul2d",
        &[(&[3, 4], smooth), (&[4, 2], smooth)],
        |g, v| g.matmul(v[0], v[1]).unwrap(),
    );
    check(
        "matmul-batch",
        &[(&[2, 3, 4], smooth), (&[4, 5], smooth)],
        |g, v| g.matmul(v[0], v[1]).unwrap(),
    );
    check(
        "matmul-bcast",
        &[(&[2, 1, 3, 4], smooth), (&[3, 4, 2], smooth)],
        |g, v| g.matmul(v[0], v[1]).unwrap(),
    );
}

#[test]
fn reductions() {
    check("reduce-sum", &[(&[2, 3, 4], smooth)], |g, v| {
        let s = g.reduce_sum(v[0], &[0, 2], false).unwrap();
        g.mul(s, s).unwrap()
    });
    check("reduce-sum-keep", &[(&[2, 3, 4], smooth)], |g, v| {
        let s = g.reduce_sum(v[0], &[1], true).unwrap();
        let e = g.unary(Op::Exp, s).unwrap();
        g.mul(e, v[0]).unwrap()
    });
    check("reduce-max", &[(&[2, 3, 4], distinct)], |g, v| {
        let m = g
            .push1(
                "",
                Op::ReduceMax(ReduceMax {
                    axes: vec![2],
                    keepdims: false,
                }),
                &[v[0]],
            )
            .unwrap();
        g.mul(m, m).unwrap()
    });
    check("reduce-mean", &[(&[2, 3, 4], smooth)], |g, v| {
        let m = g.reduce_mean(v[0], &[1, 2], true).unwrap();
        let d = g.sub(v[0], m).unwrap();
        g.mul(d, d).unwrap()
    });
}

#[test]
fn layout_ops() {
    check("transpose", &[(&[2, 3, 4], smooth)], |g, v| {
        let t = g.transpose(v[0], &[2, 0, 1]).unwrap();
        g.mul(t, t).unwrap()
    });
    check("reshape", &[(&[2, 6], smooth)], |g, v| {
        let t = g.reshape(v[0], &[3, 4]).unwrap();
        g.mul(t, t).unwrap()
    });
    check("expand", &[(&[3, 1], smooth)], |g, v| {
        let t = g.expand(v[0], &[2, 3, 4]).unwrap();
        g.mul(t, t).unwrap()
    });
    check("concat", &[(&[2, 3], smooth), (&[2, 2], smooth)], |g, v| {
        let t = g
            .push1("", Op::Concat(Concat { axis: 1 }), &[v[0], v[1]])
            .unwrap();
        g.mul(t, t).unwrap()
    });
    check("split", &[(&[5, 2], smooth)], |g, v| {
        let p = g
            .push(
                "",
                Op::Split(Split {
                    axis: 0,
                    sizes: vec![2, 3],
                }),
                &[v[0]],
            )
            .unwrap();
        let a = g.sum_all(p[0]).unwrap();
        let b = g.mul(p[1], p[1]).unwrap();
        g.mul(b, a).unwrap()
    });
    check("split-partial", &[(&[5, 2], smooth)], |g, v| {
        let p = g
            .push(
                "",
                Op::Split(Split {
                    axis: 0,
                    sizes: vec![2, 3],
                }),
                &[v[0]],
            )
            .unwrap();
        g.mul(p[1], p[1]).unwrap()
    });
    check("slice", &[(&[4, 5], smooth)], |g, v| {
        let t = g
            .push1(
                "",
                Op::Slice(Slice {
                    starts: vec![1, 0],
                    ends: vec![3, 4],
                }),
                &[v[0]],
            )
            .unwrap();
        g.mul(t, t).unwrap()
    });
    // Repeats and an entry picked by none (the adjoint's zero entry), and a permutation (one
    // gather back).
    for (name, axis, indices) in [
        ("gather-repeats", 1, vec![2, 0, 2, 1, 2]),
        ("gather-permutation", 0, vec![2, 0, 1]),
    ] {
        check(name, &[(&[3, 4], smooth)], |g, v| {
            let t = g
                .push1(
                    "",
                    Op::Gather(Gather {
                        axis,
                        indices: indices.clone(),
                    }),
                    &[v[0]],
                )
                .unwrap();
            g.mul(t, t).unwrap()
        });
    }
    check("pad", &[(&[2, 3], smooth)], |g, v| {
        let t = g
            .push1(
                "",
                Op::Pad(Pad {
                    begins: vec![1, 0],
                    ends: vec![0, 2],
                    value: 0.5,
                }),
                &[v[0]],
            )
            .unwrap();
        g.mul(t, t).unwrap()
    });
}

fn conv_attrs(s: usize, pb: usize, pe: usize, d: usize, group: usize) -> ConvAttrs {
    ConvAttrs {
        strides: vec![s, s],
        pads_begin: vec![pb, pb],
        pads_end: vec![pe, pe],
        dilations: vec![d, d],
        group,
    }
}

#[test]
fn convolution_variants() {
    let cases = [
        (
            "conv-plain",
            conv_attrs(1, 1, 1, 1, 1),
            [1usize, 2, 5, 5],
            [3usize, 2, 3, 3],
        ),
        (
            "conv-stride",
            conv_attrs(2, 1, 0, 1, 1),
            [2, 2, 6, 5],
            [2, 2, 3, 3],
        ),
        (
            "conv-dilation",
            conv_attrs(1, 2, 1, 2, 1),
            [1, 1, 6, 6],
            [2, 1, 3, 3],
        ),
        (
            "conv-group",
            conv_attrs(2, 0, 1, 1, 2),
            [1, 4, 5, 5],
            [4, 2, 2, 2],
        ),
    ];
    for (name, a, xs, ws) in cases {
        check(name, &[(&xs, smooth), (&ws, smooth)], |g, v| {
            g.push1("", Op::Conv(a.clone()), &[v[0], v[1]]).unwrap()
        });
    }
    // The bias as the convolution's third operand.
    let a = conv_attrs(2, 1, 0, 1, 2);
    check(
        "conv-bias",
        &[
            (&[1, 4, 5, 5], smooth),
            (&[4, 2, 3, 3], smooth),
            (&[4], smooth),
        ],
        |g, v| {
            g.push1("", Op::Conv(a.clone()), &[v[0], v[1], v[2]])
                .unwrap()
        },
    );
    // ConvTranspose as its own op: the adjoint of a strided, padded, grouped convolution.
    let a = conv_attrs(2, 1, 0, 1, 2);
    check(
        "conv-transpose",
        &[(&[1, 4, 3, 3], smooth), (&[4, 1, 3, 3], smooth)],
        |g, v| {
            g.push1(
                "",
                Op::ConvTranspose(ConvTranspose {
                    conv: a.clone(),
                    out_spatial: vec![6, 6],
                }),
                &[v[0], v[1]],
            )
            .unwrap()
        },
    );
}

#[test]
fn convolution_weight_gradient_as_its_own_op() {
    // Unit stride and one group (written as windows in ONNX) and strided, dilated, grouped ones
    // (written as a convolution of transposed operands): first and second order of the primitive
    // itself, whose derivatives are a convolution and a transposed convolution.
    let cases = [
        (
            "wgrad-windows",
            conv_attrs(1, 1, 1, 1, 1),
            [2usize, 2, 5, 5],
            [3usize, 5, 5],
            [3usize, 3],
        ),
        (
            "wgrad-strided",
            conv_attrs(2, 1, 0, 1, 2),
            [1, 4, 6, 6],
            [4, 3, 3],
            [2, 2],
        ),
        (
            "wgrad-dilated",
            conv_attrs(1, 2, 1, 2, 1),
            [1, 2, 6, 6],
            [2, 5, 5],
            [3, 3],
        ),
    ];
    for (name, a, xs, gys, kernel) in cases {
        let gy_shape = [xs[0], gys[0], gys[1], gys[2]];
        check(name, &[(&xs, smooth), (&gy_shape, smooth)], |g, v| {
            let wg = ConvWeightGrad {
                conv: a.clone(),
                kernel: kernel.to_vec(),
            };
            g.push1("", Op::ConvWeightGrad(wg), &[v[0], v[1]]).unwrap()
        });
    }
}

#[test]
fn lowered_composites() {
    check(
        "instance-norm",
        &[(&[2, 3, 4, 4], smooth), (&[3], smooth), (&[3], smooth)],
        |g, v| lower::instance_norm(g, v[0], Some(v[1]), Some(v[2]), 1e-5).unwrap(),
    );
    check("instance-norm-1d", &[(&[3, 2, 5], smooth)], |g, v| {
        lower::instance_norm(g, v[0], None, None, 1e-3).unwrap()
    });
    check(
        "layer-norm",
        &[
            (&[2, 3, 2, 2], smooth),
            (&[3, 2, 2], smooth),
            (&[3, 2, 2], smooth),
        ],
        |g, v| lower::layer_norm(g, v[0], 1, Some(v[1]), Some(v[2]), 1e-5).unwrap(),
    );
    check("avg-pool", &[(&[1, 2, 4, 6], smooth)], |g, v| {
        let p = lower::pool_2d(g, v[0], 2, false).unwrap();
        g.mul(p, p).unwrap()
    });
    check("avg-pool-floor", &[(&[2, 3, 5, 7], smooth)], |g, v| {
        let p = lower::pool_2d(g, v[0], 2, false).unwrap();
        g.mul(p, p).unwrap()
    });
    // Pooling's adjoint as a primitive of its own, by unequal factors.
    check("upsample", &[(&[2, 3, 2, 3], smooth)], |g, v| {
        let u = g
            .push1("", Op::Upsample(Upsample { kh: 2, kw: 3 }), &[v[0]])
            .unwrap();
        g.mul(u, u).unwrap()
    });
    check("max-pool", &[(&[1, 2, 5, 4], distinct)], |g, v| {
        let p = lower::pool_2d(g, v[0], 2, true).unwrap();
        g.mul(p, p).unwrap()
    });
    check("log-softmax", &[(&[3, 5], smooth)], |g, v| {
        lower::log_softmax(g, v[0], &[1]).unwrap()
    });
    check("softmax", &[(&[3, 5], smooth)], |g, v| {
        lower::softmax(g, v[0], &[1]).unwrap()
    });
    check(
        "soft-ce",
        &[(&[3, 5], smooth), (&[3, 5], positive)],
        |g, v| {
            let l = lower::soft_cross_entropy(g, v[0], v[1]).unwrap();
            g.reshape(l, &[1]).unwrap()
        },
    );
}
