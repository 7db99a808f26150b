//! Backends against each other and against the f64 reference evaluator; every artifact passes
//! `onnx.checker.check_model(full_check=True)`; the committed `graphs/` regenerate byte for byte.

mod common;
use common::*;
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use tesla_distill::compiler::manifest::Manifest;
use tesla_distill::onnx::artifacts::{compile_dir, standard_set};
use tesla_distill::runtime::programs::{Artifact, BackendExec, Exec, ReferenceExec};
use tesla_distill::runtime::{backend, ort_library_path, BackendKind};
use tesla_distill::zoo::standard::{write_standard_graphs, STANDARD_GRAPHS};
use tesla_distill::zoo::ModelSpec;

fn graphs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs")
}

fn ort_available() -> bool {
    match ort_library_path() {
        Ok(_) => true,
        Err(e) => {
            common::missing(&format!("the ONNX Runtime half: {e}"));
            false
        }
    }
}

/// Random inputs for an artifact of `man`.
fn inputs_for(man: &Manifest, role: &str, dir: &Path, seed: u64) -> Vec<ArrayD<f64>> {
    let mut r = rng(seed);
    let g = &man.graphs[role];
    let theta: Vec<f64> = man
        .initial_theta(dir, seed)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    g.inputs
        .iter()
        .map(|io| match io.name.as_str() {
            "theta" => ArrayD::from_shape_vec(IxDyn(&io.shape), theta.clone()).unwrap(),
            "y" => {
                let t = uniform(&mut r, &io.shape, 0.0, 1.0);
                let mut a = ArrayD::from_shape_vec(IxDyn(&io.shape), t.data).unwrap();
                for mut row in a.rows_mut() {
                    let s = row.sum();
                    row.mapv_inplace(|v| v / s);
                }
                a
            }
            "v" => ArrayD::from_shape_vec(
                IxDyn(&io.shape),
                uniform(&mut r, &io.shape, -1e-2, 1e-2).data,
            )
            .unwrap(),
            _ => {
                ArrayD::from_shape_vec(IxDyn(&io.shape), uniform(&mut r, &io.shape, -1.0, 1.0).data)
                    .unwrap()
            }
        })
        .collect()
}

fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let n = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / n
}

fn role_artifact(role: &str) -> Artifact {
    match role {
        "step" => Artifact::Step,
        "pass2" => Artifact::Pass2,
        "pass2_dx" => Artifact::Pass2Dx,
        "logits" => Artifact::Logits,
        "label_vjp" => Artifact::LabelVjp,
        _ => Artifact::Unrolled,
    }
}

#[test]
fn tract_and_ort_agree_on_the_standard_set() {
    if !ort_available() {
        return;
    }
    for (name, _, _, _) in STANDARD_GRAPHS {
        let dir = graphs_dir().join(name);
        let man = Manifest::load(&dir).unwrap();
        let mut tr = BackendExec::new(backend(BackendKind::Tract).unwrap(), &dir);
        let mut ort = BackendExec::new(backend(BackendKind::Ort).unwrap(), &dir);
        for role in man.graphs.keys() {
            let ins: Vec<ArrayD<f32>> = inputs_for(&man, role, &dir, 3)
                .into_iter()
                .map(|a| a.mapv(|v| v as f32))
                .collect();
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            let a = tr.run(role_artifact(role), &views).unwrap();
            let b = ort.run(role_artifact(role), &views).unwrap();
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                let e = rel(&x.mapv(f64::from), &y.mapv(f64::from));
                assert!(
                    e <= 1e-5,
                    "{name}/{role} output {k}: tract vs ort relative error {e:e}"
                );
            }
        }
    }
}

#[test]
fn backends_match_the_f64_reference() {
    match_reference("convnet-d3-w4", [3, 8, 8], 1e-4);
    // Strided convolutions, 1×1 projections and residual adds. Seventeen normalised conv layers
    // instead of three: the f32 rounding of the second-order pass-2 graph grows with depth.
    match_reference("resnet18-w2", [3, 12, 12], 5e-4);
    // Attention, layer norms, GELU, the class token and the patch rearrangement.
    match_reference("vit-p2-d8-l2-h2-m16", [3, 8, 8], 5e-4);
}

fn match_reference(model: &str, input: [usize; 3], tol: f64) {
    let m = ModelSpec::parse(model).unwrap().build(3, input, 4).unwrap();
    let mut which = standard_set();
    which.push(Artifact::Unrolled);
    which.push(Artifact::LabelVjp);
    let d = tempfile::tempdir().unwrap();
    let man = compile_dir(&m, &which, 2, d.path()).unwrap();
    let mut reference = ReferenceExec::new([
        (
            Artifact::Step,
            tesla_distill::compiler::artifact::step_graph(&m).unwrap(),
        ),
        (
            Artifact::Pass2,
            tesla_distill::compiler::artifact::pass2_graph(&m, false).unwrap(),
        ),
        (
            Artifact::Pass2Dx,
            tesla_distill::compiler::artifact::pass2_graph(&m, true).unwrap(),
        ),
        (
            Artifact::Logits,
            tesla_distill::compiler::artifact::logits_graph(&m).unwrap(),
        ),
        (
            Artifact::Unrolled,
            tesla_distill::compiler::artifact::unrolled_graph(&m, 2).unwrap(),
        ),
        (
            Artifact::LabelVjp,
            tesla_distill::compiler::artifact::label_vjp_graph(&m).unwrap(),
        ),
    ]);
    let mut kinds = vec![BackendKind::Tract];
    if ort_available() {
        kinds.push(BackendKind::Ort);
    }
    for kind in kinds {
        let mut ex = BackendExec::new(backend(kind).unwrap(), d.path());
        for role in man.graphs.keys() {
            let mut ins = inputs_for(&man, role, d.path(), 11);
            if role == "unrolled" {
                // theta0, target, beta, xs, ys: a sensible β and soft label rows.
                ins[2].fill(0.1);
                for mut row in ins[4].rows_mut() {
                    row.mapv_inplace(f64::abs);
                    let s = row.sum();
                    row.mapv_inplace(|v| v / s);
                }
            }
            // The backends compute in f32; the reference gets the same values in f64.
            let ins32: Vec<ArrayD<f32>> = ins.iter().map(|a| a.mapv(|v| v as f32)).collect();
            let ins: Vec<ArrayD<f64>> = ins32.iter().map(|a| a.mapv(f64::from)).collect();
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            let views32: Vec<_> = ins32.iter().map(|a| a.view()).collect();
            let want = reference.run(role_artifact(role), &views).unwrap();
            let got = ex.run(role_artifact(role), &views32).unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let e = rel(&g.mapv(f64::from), w);
                assert!(
                    e <= tol,
                    "{model} on {kind}: {role} output {k} vs f64 reference: {e:e}"
                );
            }
        }
    }
}

#[test]
fn every_artifact_passes_the_onnx_full_check() {
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, _, _, _) in STANDARD_GRAPHS {
        for e in std::fs::read_dir(graphs_dir().join(name)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "onnx") {
                files.push(p);
            }
        }
    }
    // The unrolled and label-VJP graphs are not in the committed set: check one of each too.
    let d = tempfile::tempdir().unwrap();
    let m = ModelSpec::parse("convnet-d3-w4")
        .unwrap()
        .build(2, [1, 8, 8], 3)
        .unwrap();
    compile_dir(&m, &[Artifact::Unrolled, Artifact::LabelVjp], 3, d.path()).unwrap();
    files.push(d.path().join("unrolled.onnx"));
    files.push(d.path().join("label_vjp.onnx"));
    // And the ResNet and ViT builders' artifacts.
    for (model, input) in [
        ("resnet18-w2", [3, 12, 12]),
        ("vit-p2-d8-l2-h2-m16", [3, 8, 8]),
    ] {
        let r = ModelSpec::parse(model).unwrap().build(2, input, 3).unwrap();
        let rd = d.path().join(model);
        compile_dir(&r, &standard_set(), 0, &rd).unwrap();
        for e in std::fs::read_dir(&rd).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "onnx") {
                files.push(p);
            }
        }
    }
    let list: Vec<String> = files
        .iter()
        .map(|p| format!("r'{}'", p.display()))
        .collect();
    let script = format!(
        "import onnx\nfor f in [{}]:\n    onnx.checker.check_model(onnx.load(f), full_check=True)\nprint('checked', {})\n",
        list.join(", "),
        files.len()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'onnx'") => {
            common::missing("the python onnx package (pip install onnx)");
        }
        Ok(o) => assert!(
            o.status.success(),
            "onnx.checker failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => common::missing(&format!("python3 ({e})")),
    }
}

#[test]
fn committed_graphs_regenerate_identically() {
    let d = tempfile::tempdir().unwrap();
    write_standard_graphs(d.path()).unwrap();
    for (name, _, _, _) in STANDARD_GRAPHS {
        for e in std::fs::read_dir(d.path().join(name)).unwrap() {
            let p = e.unwrap().path();
            let committed = graphs_dir().join(name).join(p.file_name().unwrap());
            let a = std::fs::read(&p).unwrap();
            let b = std::fs::read(&committed).unwrap_or_else(|_| {
                panic!(
                    "{} is not committed; run `tesla graphs`",
                    committed.display()
                )
            });
            assert!(
                a == b,
                "{} differs from a fresh `tesla graphs`",
                committed.display()
            );
        }
    }
}
