//! The whole ConvNet-D3, ResNet and ViT `step` and `pass2` graphs against central finite differences in
//! f64 on the reference evaluator.

mod common;
use common::*;
use tesla_distill::compiler::artifact::{logits_graph, pass2_graph, step_graph};
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Graph, Tensor};
use tesla_distill::compiler::model::ForwardModel;
use tesla_distill::compiler::ops::{Expand, Upsample};
use tesla_distill::zoo::convnet::{Act, ConvNet, Norm, Pool};
use tesla_distill::zoo::resnet::ResNet;
use tesla_distill::zoo::vit::Vit;

fn tiny(c: usize, norm: Norm, act: Act, pool: Pool) -> ForwardModel {
    ConvNet {
        width: 3,
        depth: 3,
        norm,
        act,
        pool,
    }
    .build(2, [c, 8, 8], 3)
    .unwrap()
}

fn softmax_rows(t: &mut Tensor) {
    for row in t.data.chunks_mut(t.shape[1]) {
        let s: f64 = row.iter().map(|v| v.exp()).sum();
        row.iter_mut().for_each(|v| *v = v.exp() / s);
    }
}

fn inputs(m: &ForwardModel, seed: u64) -> (Tensor, Tensor, Tensor, Tensor) {
    let mut r = rng(seed);
    let p = m.num_params();
    let theta = uniform(&mut r, &[p], -0.5, 0.5);
    let x = uniform(&mut r, m.graph.shape(m.x), -1.0, 1.0);
    let mut y = uniform(&mut r, m.graph.shape(m.logits), -1.0, 1.0);
    softmax_rows(&mut y);
    let v = uniform(&mut r, &[p], -1.0, 1.0);
    (theta, x, y, v)
}

fn run(g: &Graph, ins: &[Tensor]) -> Vec<Tensor> {
    eval(g, ins).unwrap()
}

fn rel_err(ad: &[f64], fd: &[f64]) -> f64 {
    max_rel_err(ad, fd, 1e-6)
}

/// Central differences of `f` with respect to input `k` of `ins`.
fn fd(f: &dyn Fn(&[Tensor]) -> f64, ins: &[Tensor], k: usize) -> Vec<f64> {
    let h = 1e-5;
    (0..ins[k].numel())
        .map(|j| {
            let mut p = ins.to_vec();
            p[k].data[j] += h;
            let mut m = ins.to_vec();
            m[k].data[j] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

fn check_model(m: &ForwardModel, seed: u64) {
    let (theta, x, y, v) = inputs(m, seed);
    let step = step_graph(m).unwrap();
    let names: Vec<&str> = step
        .inputs
        .iter()
        .map(|&i| step.info(i).name.as_str())
        .collect();
    assert_eq!(names, ["theta", "x", "y"]);
    let out = run(&step, &[theta.clone(), x.clone(), y.clone()]);
    let loss_of = |ins: &[Tensor]| run(&step, ins)[0].data[0];
    let base = [theta.clone(), x.clone(), y.clone()];
    let e = rel_err(&out[1].data, &fd(&loss_of, &base, 0));
    assert!(e <= 1e-6, "step grad vs finite differences: {e:e}");

    // The loss must match an independent evaluation through the logits graph.
    let lg = logits_graph(m).unwrap();
    let z = run(&lg, &[theta.clone(), x.clone()])[0].clone();
    let k = z.shape[1];
    let mut ce = 0.0;
    for (zr, yr) in z.data.chunks(k).zip(y.data.chunks(k)) {
        let mx = zr.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + zr.iter().map(|a| (a - mx).exp()).sum::<f64>().ln();
        ce -= zr.iter().zip(yr).map(|(a, b)| b * (a - lse)).sum::<f64>();
    }
    ce /= z.shape[0] as f64;
    assert!(
        (ce - out[0].data[0]).abs() < 1e-12 * ce.abs().max(1.0),
        "loss {} vs {}",
        out[0].data[0],
        ce
    );

    let p2 = pass2_graph(m, false).unwrap();
    let outs = run(&p2, &[theta.clone(), x.clone(), y.clone(), v.clone()]);
    let dot = |ins: &[Tensor]| {
        let g = &run(&step, ins)[1];
        g.data.iter().zip(&v.data).map(|(a, b)| a * b).sum::<f64>()
    };
    let ex = rel_err(&outs[0].data, &fd(&dot, &base, 1));
    let et = rel_err(&outs[1].data, &fd(&dot, &base, 0));
    let ey = rel_err(&outs[2].data, &fd(&dot, &base, 2));
    assert!(
        ex <= 1e-6 && et <= 1e-6 && ey <= 1e-6,
        "pass2 dx {ex:e} dtheta {et:e} dy {ey:e}"
    );
    assert!(
        rel_err(&outs[3].data, &out[1].data) < 1e-12,
        "pass2's grad equals step's"
    );

    let p2dx = pass2_graph(m, true).unwrap();
    let dx = run(&p2dx, &[theta, x, y, v]);
    assert_eq!(dx.len(), 1);
    assert!(rel_err(&dx[0].data, &outs[0].data) < 1e-12);
    assert!(
        p2dx.nodes.len() < p2.nodes.len(),
        "pruning removed the dtheta/dy part"
    );
}

#[test]
fn convnet_d3_instance_relu_avg() {
    check_model(&tiny(1, Norm::Instance, Act::Relu, Pool::Avg), 1);
    check_model(&tiny(3, Norm::Instance, Act::Relu, Pool::Avg), 2);
}

#[test]
fn convnet_variants() {
    check_model(&tiny(3, Norm::Layer, Act::LeakyRelu, Pool::Max), 3);
    check_model(&tiny(3, Norm::None, Act::Sigmoid, Pool::None), 4);
}

#[test]
fn resnet_with_identity_and_projection_shortcuts() {
    let m = ResNet {
        width: 1,
        blocks: [1, 1, 1, 1],
    }
    .build(2, [2, 12, 12], 3)
    .unwrap();
    check_model(&m, 5);
}

#[test]
fn vit_with_attention_layer_norm_and_gelu() {
    let m = Vit {
        patch: 2,
        dim: 4,
        depth: 2,
        heads: 2,
        dim_head: 3,
        mlp_dim: 5,
    }
    .build(2, [1, 4, 4], 3)
    .unwrap();
    check_model(&m, 6);
}

#[test]
fn parameter_layout_matches_pytorch() {
    let m = ConvNet::standard(3).build(1, [3, 32, 32], 10).unwrap();
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "features.0.weight",
            "features.0.bias",
            "features.1.weight",
            "features.1.bias",
            "features.4.weight",
            "features.4.bias",
            "features.5.weight",
            "features.5.bias",
            "features.8.weight",
            "features.8.bias",
            "features.9.weight",
            "features.9.bias",
            "classifier.weight",
            "classifier.bias"
        ]
    );
    // PyTorch's ConvNet(3, 10, 128, 3, 'relu', 'instancenorm', 'avgpooling') has 320,010 parameters.
    assert_eq!(m.num_params(), 320_010);
    assert_eq!(m.graph.dtype(m.logits), DType::F32);
    let fm = ConvNet::standard(3).build(1, [1, 28, 28], 10).unwrap();
    assert_eq!(fm.graph.shape(fm.logits), &[1, 10]);
    assert_eq!(
        fm.num_params(),
        1152 + 128 + 256 + 2 * (147456 + 128 + 256) + 2048 * 10 + 10
    );
}

/// The faster forms the passes give the backends (masks as products, pooling's upsampling as one
/// primitive) compute the very same values as the forms the derivative rules emit, through first
/// and second order, and leave none of the slow forms behind. Equal as numbers: a masked-out zero
/// may come out as −0.
/// A ReLU, mean pooling written as a reshape and a mean (as an imported graph may hold it, so
/// that its derivative is the upsampling the passes rewrite) and a max pool; the gradient `dx`
/// and, as pass 2, the gradient of ⟨dx, v⟩, which differentiates the masks again.
fn second_order_graph(r: &mut rand_chacha::ChaCha8Rng) -> Graph {
    use tesla_distill::compiler::autodiff::grad;
    use tesla_distill::compiler::ir::Op;
    use tesla_distill::compiler::lower::pool_2d;
    use tesla_distill::compiler::passes::set_outputs;
    let mut g = Graph::new();
    let x = g.input("x", DType::F64, vec![2, 3, 8, 8]);
    let v = g.input("v", DType::F64, vec![2, 3, 8, 8]);
    let h = g.unary(Op::Relu, x).unwrap();
    let windows = g.reshape(h, &[2, 3, 4, 2, 4, 2]).unwrap();
    let p = g.reduce_mean(windows, &[3, 5], false).unwrap();
    let q = pool_2d(&mut g, p, 2, true).unwrap();
    let loss = weighted_sum(&mut g, r, q);
    let dx = grad(&mut g, loss, &[x], None).unwrap()[0];
    let pr = g.mul(dx, v).unwrap();
    let dot = g.sum_all(pr).unwrap();
    let ddx = grad(&mut g, dot, &[x, v], None).unwrap();
    set_outputs(&mut g, &[(dx, "dx"), (ddx[0], "ddx"), (ddx[1], "dv")]).unwrap();
    g
}

/// Runs two graphs on the same inputs of [`second_order_graph`] and checks they give the same
/// bits, not all zero.
fn same_values(a: &Graph, b: &Graph, r: &mut rand_chacha::ChaCha8Rng) {
    let mut xs = distinct(r, &[2, 3, 8, 8]);
    xs.dtype = DType::F64;
    let vs = uniform(r, &[2, 3, 8, 8], -1.0, 1.0);
    let ta = run(a, &[xs.clone(), vs.clone()]);
    let tb = run(b, &[xs, vs]);
    assert_eq!(ta.len(), tb.len());
    for (ta, tb) in ta.iter().zip(&tb) {
        assert_eq!(ta.shape, tb.shape);
        assert!(ta.data.iter().all(|v| v.is_finite()));
        assert_eq!(ta.data, tb.data);
    }
    assert!(ta[0].data.iter().any(|&v| v != 0.0));
}

#[test]
fn fast_forms_compute_the_same_values() {
    use tesla_distill::compiler::ir::Op;
    use tesla_distill::compiler::passes::fast_forms;
    let mut r = rng(11);
    let g = second_order_graph(&mut r);
    let fast = fast_forms(&g);
    let count = |g: &Graph, f: &dyn Fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
    let is_where = |o: &Op| matches!(o, Op::Where);
    let is_expand = |o: &Op| matches!(o, Op::Expand(Expand { .. }));
    let is_upsample = |o: &Op| matches!(o, Op::Upsample(Upsample { .. }));
    assert!(count(&g, &is_where) >= 2 && count(&g, &is_expand) >= 1);
    // The max pool's tie mask is a Where against the cotangent, not zero: it stays.
    assert!(count(&fast, &is_where) < count(&g, &is_where));
    assert!(count(&fast, &is_upsample) >= 1);
    assert!(count(&fast, &is_expand) < count(&g, &is_expand));
    same_values(&g, &fast, &mut r);
}

#[test]
fn merged_twins_compute_the_same_values() {
    use tesla_distill::compiler::ir::Op;
    use tesla_distill::compiler::passes::{fast_forms, merge_duplicates, set_outputs};
    let mut r = rng(12);
    let fast = fast_forms(&second_order_graph(&mut r));
    let merged = merge_duplicates(&fast);
    assert!(
        merged.nodes.len() < fast.nodes.len(),
        "{} nodes before, {} after",
        fast.nodes.len(),
        merged.nodes.len()
    );
    // No two nodes left compute the same thing.
    for (i, a) in merged.nodes.iter().enumerate() {
        for b in &merged.nodes[i + 1..] {
            assert!(
                a.op != b.op || a.inputs != b.inputs,
                "{} and {} are twins",
                a.name,
                b.name
            );
        }
    }
    same_values(&fast, &merged, &mut r);
    // Two graph outputs computed alike both stay, each with its own value and name.
    let mut g = Graph::new();
    let x = g.input("x", DType::F64, vec![3]);
    let a = g.unary(Op::Relu, x).unwrap();
    let b = g.unary(Op::Relu, x).unwrap();
    set_outputs(&mut g, &[(a, "a"), (b, "b")]).unwrap();
    let m = merge_duplicates(&g);
    assert_eq!(m.nodes.len(), 2);
    assert_ne!(m.outputs[0], m.outputs[1]);
}

/// Artifacts in a cache directory are reused only by the compiler revision that wrote them: a
/// manifest from another revision (here: an older one, with a step graph that no longer loads)
/// is compiled again, never run.
#[test]
fn cached_artifacts_of_another_compiler_revision_are_compiled_again() {
    use tesla_distill::compile_cache::ProgramStore;
    use tesla_distill::compiler::manifest::{Manifest, COMPILER_REVISION};
    use tesla_distill::runtime::programs::Artifact;
    use tesla_distill::runtime::BackendKind;
    use tesla_distill::zoo::ModelSpec;
    let d = tempfile::tempdir().unwrap();
    let store = || {
        ProgramStore::new(
            ModelSpec::parse("convnet-d1-w2").unwrap(),
            [1, 8, 8],
            3,
            BackendKind::Tract,
            d.path(),
            &[Artifact::Step],
        )
    };
    let dir = {
        let mut s = store();
        let (_, man) = s.get(2).unwrap();
        assert_eq!(man.compiler, COMPILER_REVISION);
        s.dir(2)
    };
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["compiler"] = "an-older-revision".into();
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    std::fs::write(dir.join("step.onnx"), b"not the graph this revision writes").unwrap();
    let mut s = store();
    let (_, man) = s.get(2).unwrap();
    assert_eq!(man.compiler, COMPILER_REVISION);
    assert_eq!(Manifest::load(&dir).unwrap().compiler, COMPILER_REVISION);
    assert!(std::fs::read(dir.join("step.onnx")).unwrap().len() > 100);
}
