//! Hostile distilled sets and checkpoints: every malformed or out-of-range file gets one error
//! line naming the file and the field, a non-zero exit and no panic, before any work starts; a
//! well-formed but wrong value (labels of another width, a class id out of range, a NaN pixel)
//! is never evaluated into a meaningless accuracy.

mod common;

use common::tesla;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tesla_distill::runtime::{read_safetensors_with_metadata, write_safetensors};

/// [`common::fails_with`], and nothing on stdout that looks like a result.
fn refused(args: &[&str], needles: &[&str]) {
    let out = common::fails_with(args, needles);
    assert!(!out.contains('%'), "{args:?} printed a result: {out}");
}

type Tensors = Vec<(String, ndarray::ArrayD<f32>)>;

/// A well-formed IPC-1 set for fmnist-small (10 classes, 1×28×28).
fn good_set() -> (Tensors, HashMap<String, String>) {
    let n = 10;
    let images = ndarray::Array4::<f32>::from_shape_fn((n, 1, 28, 28), |(i, _, h, w)| {
        ((i * 7 + h * 3 + w) % 11) as f32 / 11.0 - 0.5
    });
    let labels = ndarray::Array2::<f32>::from_shape_fn((n, 10), |(i, j)| f32::from(i == j));
    let classes = ndarray::Array1::<f32>::from_iter((0..n).map(|c| c as f32));
    let lr = ndarray::Array1::<f32>::from(vec![0.01]);
    let tensors = vec![
        ("images".to_string(), images.into_dyn()),
        ("labels".to_string(), labels.into_dyn()),
        ("classes".to_string(), classes.into_dyn()),
        ("lr".to_string(), lr.into_dyn()),
    ];
    let meta = HashMap::from([
        ("dataset".to_string(), "fmnist-small".to_string()),
        ("model".to_string(), "convnet-d3-w4".to_string()),
        ("zca".to_string(), "none".to_string()),
    ]);
    (tensors, meta)
}

fn write(dir: &Path, name: &str, tensors: &Tensors, meta: &HashMap<String, String>) -> PathBuf {
    let p = dir.join(name);
    write_safetensors(&p, tensors, Some(meta.clone())).unwrap();
    p
}

fn with(tensors: &Tensors, name: &str, f: impl Fn(&mut ndarray::ArrayD<f32>)) -> Tensors {
    let mut t = tensors.clone();
    for (n, a) in t.iter_mut() {
        if n == name {
            f(a);
        }
    }
    t
}

fn eval_args(file: &Path) -> Vec<String> {
    [
        "eval",
        "--distilled",
        file.to_str().unwrap(),
        "--dataset",
        "fmnist-small",
        "--models",
        "convnet-d3-w4",
        "--runs",
        "1",
        "--epochs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn eval_fails(file: &Path, needles: &[&str]) {
    let a = eval_args(file);
    refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), needles);
}

#[test]
fn hostile_distilled_sets_are_refused_before_evaluation() {
    let d = tempfile::tempdir().unwrap();
    let (good, meta) = good_set();
    // The well-formed set evaluates (the refusals below are not a reader that refuses all).
    let ok = write(d.path(), "ok.safetensors", &good, &meta);
    let a = eval_args(&ok);
    let (code, out, err) = tesla(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('%'), "{out}");

    let cases: Vec<(&str, Tensors, Vec<&str>)> = vec![
        (
            "width.safetensors",
            with(&good, "labels", |a| {
                *a = ndarray::Array2::<f32>::from_shape_fn((10, 12), |(i, j)| f32::from(i == j))
                    .into_dyn();
            }),
            vec!["width.safetensors", "12 columns", "10 classes"],
        ),
        (
            "class.safetensors",
            with(&good, "classes", |a| a[[3]] = 12.0),
            vec!["class.safetensors", "classes[3] = 12"],
        ),
        (
            "fraction.safetensors",
            with(&good, "classes", |a| a[[2]] = 1.5),
            vec!["classes[2] = 1.5"],
        ),
        (
            "nan.safetensors",
            with(&good, "images", |a| a[[4, 0, 5, 6]] = f32::NAN),
            vec!["nan.safetensors", "images[4, 0, 5, 6] is NaN"],
        ),
        (
            "inf.safetensors",
            with(&good, "images", |a| a[[0, 0, 0, 1]] = f32::INFINITY),
            vec!["images[0, 0, 0, 1] is inf"],
        ),
        (
            "logits.safetensors",
            with(&good, "labels", |a| a.mapv_inplace(|v| v * 10.0 - 2.0)),
            vec!["labels[0, 1] = -2", "probabilities"],
        ),
        (
            "rowsum.safetensors",
            with(&good, "labels", |a| a[[5, 5]] = 0.5),
            vec!["label row 5 sums to 0.5"],
        ),
        (
            "lr.safetensors",
            with(&good, "lr", |a| a[[0]] = f32::NAN),
            vec!["'lr'"],
        ),
        (
            "rows.safetensors",
            with(&good, "classes", |a| {
                *a = ndarray::Array1::<f32>::zeros(9).into_dyn()
            }),
            vec!["10 images", "9 classes"],
        ),
        (
            "shape.safetensors",
            with(&good, "images", |a| {
                *a = ndarray::Array4::<f32>::zeros((10, 3, 28, 28)).into_dyn()
            }),
            vec!["[3, 28, 28]", "[1, 28, 28]"],
        ),
        (
            "rank.safetensors",
            with(&good, "images", |a| {
                *a = ndarray::Array2::<f32>::zeros((10, 784)).into_dyn()
            }),
            vec!["'images' must be [N, C, H, W]"],
        ),
        (
            "missing.safetensors",
            good.iter()
                .filter(|(n, _)| n != "labels")
                .cloned()
                .collect(),
            vec!["no 'labels' tensor"],
        ),
    ];
    for (name, tensors, needles) in cases {
        let p = write(d.path(), name, &tensors, &meta);
        eval_fails(&p, &needles);
    }

    // Bytes that are not what a safetensors writer makes: truncated at every section boundary
    // (inside the length, the header, the data), a header whose offsets run past the end, a
    // tensor of another dtype.
    let bytes = std::fs::read(&ok).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [0, 4, 8, 8 + header_len / 2, 8 + header_len, bytes.len() - 1] {
        let p = d.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        eval_fails(&p, &[&format!("cut{cut}.safetensors")]);
    }
    let header = br#"{"images":{"dtype":"F32","shape":[1000000000,1,28,28],"data_offsets":[0,3136000000000]}}"#;
    let mut lying = (header.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(header);
    lying.extend_from_slice(&[0u8; 64]);
    let p = d.path().join("lying.safetensors");
    std::fs::write(&p, &lying).unwrap();
    eval_fails(&p, &["lying.safetensors"]);
    let header = br#"{"images":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut wrong = (header.len() as u64).to_le_bytes().to_vec();
    wrong.extend_from_slice(header);
    wrong.extend_from_slice(&[0u8; 8]);
    let p = d.path().join("dtype.safetensors");
    std::fs::write(&p, &wrong).unwrap();
    eval_fails(&p, &["dtype.safetensors", "I64"]);
}

/// A resumed run whose checkpoint was damaged stops with one line naming the file and the field.
#[test]
fn hostile_checkpoints_are_refused_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let experts = d.path().join("experts");
    common::tesla_ok(&common::tiny_experts_args(&experts, 1, 2, 100));
    let run = d.path().join("run");
    let owned =
        common::tiny_distill_args(&experts, &run, 2, &["--checkpoint-every", "1", "--resume"]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (code, _, err) = tesla(&args);
    assert_eq!(code, 0, "{err}");
    let state = run.join("checkpoint").join("state.safetensors");
    let (good, meta) = read_safetensors_with_metadata(&state).unwrap();
    let cases: Vec<(Tensors, Vec<&str>)> = vec![
        (
            with(&good, "beta", |a| {
                *a = ndarray::Array1::<f32>::from(vec![0.01]).into_dyn()
            }),
            vec!["'beta'"],
        ),
        (
            with(&good, "classes", |a| a[[0]] = 40.0),
            vec!["classes[0] = 40", "10 classes"],
        ),
        (
            with(&good, "images", |a| a[[0, 0, 0, 0]] = f32::NAN),
            vec!["'images'", "NaN"],
        ),
        (
            with(&good, "images_mom", |a| {
                *a = ndarray::Array4::<f32>::zeros((3, 1, 28, 28)).into_dyn()
            }),
            vec!["disagree"],
        ),
        (
            good.iter()
                .filter(|(n, _)| n != "last_labels")
                .cloned()
                .collect(),
            vec!["lacks 'last_labels'"],
        ),
    ];
    for (tensors, needles) in cases {
        write_safetensors(&state, &tensors, Some(meta.clone())).unwrap();
        let mut n = vec!["state.safetensors"];
        n.extend(needles);
        refused(&args, &n);
    }
}

/// A partial expert trajectory or epoch log that does not fit the run is an error naming the
/// file, never silently restarted over (which would lose the work) or resumed into a mix.
#[test]
fn hostile_partial_experts_are_refused_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let e = d.path().join("experts");
    std::fs::create_dir_all(&e).unwrap();
    let owned = common::tiny_experts_args(&e, 1, 2, 100);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let partial = e.join("expert_0000.partial.safetensors");
    let wrong = ndarray::Array2::<f32>::zeros((2, 17)).into_dyn();
    write_safetensors(&partial, &[("trajectory".to_string(), wrong)], None).unwrap();
    refused(&args, &["expert_0000.partial.safetensors", "17"]);
    std::fs::remove_file(&partial).unwrap();
    // The right width needs the model's parameter count: take it from a finished expert.
    let (code, _, err) = tesla(&args);
    assert_eq!(code, 0, "{err}");
    let done = e.join("expert_0000.safetensors");
    let (t, meta) = read_safetensors_with_metadata(&done).unwrap();
    let p = t[0].1.shape()[1];
    std::fs::rename(&done, d.path().join("done.safetensors")).unwrap();
    let mut first = t[0].1.clone();
    first.slice_collapse(ndarray::s![0..1, ..]);
    let mut bad = first.clone();
    bad[[0, p / 2]] = f32::NAN;
    write_safetensors(
        &partial,
        &[("trajectory".to_string(), bad)],
        Some(meta.clone()),
    )
    .unwrap();
    refused(&args, &["expert_0000.partial.safetensors", "NaN"]);
    write_safetensors(&partial, &[("trajectory".to_string(), first)], Some(meta)).unwrap();
    std::fs::write(e.join("expert_0000.json"), b"{ not json").unwrap();
    refused(&args, &["expert_0000.json", "not an epoch log"]);
}
