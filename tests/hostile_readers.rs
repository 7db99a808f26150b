//! Files the fuzzer (`examples/fuzz.rs`, `tools/fuzz.sh`) found breaking a reader, reduced to
//! what matters: each now gives an error naming the file, not a panic, a wrapped count or an
//! allocation sized by the file. Reproducers that only an allocation cap can tell apart (a
//! gzip trailer claiming 4 GiB) are committed as corpus files under `fuzz/corpus/` instead,
//! which `tests/fuzz_short.rs` replays under the fuzzer's 2 GiB cap.

use std::collections::BTreeMap;
use std::path::Path;
use tesla_distill::compiler::manifest::{Manifest, ParamEntry, FORMAT, OPSET};
use tesla_distill::compiler::model::InitRule;
use tesla_distill::runtime::write_safetensors;

fn manifest(params: Vec<ParamEntry>, num_params: usize) -> Manifest {
    Manifest {
        format: FORMAT,
        model: "test".into(),
        source_hash: String::new(),
        compiler: String::new(),
        opset: OPSET,
        batch: 2,
        input: vec![1, 4, 4],
        classes: 2,
        num_params,
        params,
        graphs: BTreeMap::new(),
        warnings: Vec::new(),
        batchnorm: BTreeMap::new(),
    }
}

fn param(name: &str, shape: &[usize], offset: usize, init: InitRule) -> ParamEntry {
    ParamEntry {
        name: name.into(),
        shape: shape.to_vec(),
        offset,
        len: shape.iter().product(),
        init,
    }
}

fn write_init(dir: &Path, n: usize) {
    let theta = ndarray::ArrayD::from_shape_vec(vec![n], vec![0.5f32; n]).unwrap();
    write_safetensors(
        &dir.join("init.safetensors"),
        &[("theta".to_string(), theta)],
        None,
    )
    .unwrap();
}

fn write_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(m).unwrap(),
    )
    .unwrap();
}

/// The fuzzer's first find: an offset past `init.safetensors` indexed it out of range (a panic
/// in `initial_theta`).
#[test]
fn manifest_offsets_outside_theta_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    write_init(d.path(), 6);
    let good = manifest(
        vec![
            param("w", &[2, 2], 0, InitRule::FromFile),
            param("b", &[2], 4, InitRule::FromFile),
        ],
        6,
    );
    write_manifest(d.path(), &good);
    let m = Manifest::load(d.path()).unwrap();
    assert_eq!(m.initial_theta(d.path(), 0).unwrap(), vec![0.5; 6]);

    // Offsets from the file, as the fuzzer left them: far past the stored values.
    let mut bad = good.clone();
    bad.params[1].offset = 4_294_968_120;
    write_manifest(d.path(), &bad);
    let e = format!("{:#}", Manifest::load(d.path()).unwrap_err());
    assert!(e.contains("manifest.json") && e.contains("'b'"), "{e}");
    // A manifest built in code is checked by initial_theta too.
    let e = format!("{:#}", bad.initial_theta(d.path(), 0).unwrap_err());
    assert!(e.contains("'b'"), "{e}");

    // A layout that is consistent but longer than init.safetensors.
    let mut long = good.clone();
    long.params[1] = param("b", &[4], 4, InitRule::FromFile);
    long.num_params = 8;
    let e = format!("{:#}", long.initial_theta(d.path(), 0).unwrap_err());
    assert!(e.contains("init.safetensors holds 6 values"), "{e}");

    // A length that disagrees with the shape, and a count that disagrees with the lengths.
    let mut len = good.clone();
    len.params[0].len = 5;
    assert!(len.initial_theta(d.path(), 0).is_err());
    let mut count = good.clone();
    count.num_params = 7;
    assert!(count.initial_theta(d.path(), 0).is_err());
}

/// Counts from the file sized buffers: a manifest declaring 2⁴⁰ drawn parameters asked for
/// 4 TiB before anything was checked.
#[test]
fn manifest_parameter_counts_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let huge = manifest(
        vec![param("w", &[1 << 20, 1 << 20], 0, InitRule::Zeros)],
        1 << 40,
    );
    write_manifest(d.path(), &huge);
    let e = format!("{:#}", Manifest::load(d.path()).unwrap_err());
    assert!(
        e.contains("manifest.json") && e.contains("parameters"),
        "{e}"
    );
    let e = format!("{:#}", huge.initial_theta(d.path(), 0).unwrap_err());
    assert!(e.contains("parameters"), "{e}");
    // Shapes whose product overflows are an error, not a wrapped length.
    let wrap = manifest(
        vec![ParamEntry {
            name: "w".into(),
            shape: vec![1 << 32, 1 << 32],
            offset: 0,
            len: 0,
            init: InitRule::Zeros,
        }],
        0,
    );
    assert!(wrap.initial_theta(d.path(), 0).is_err());
}

/// An expert whose metadata claims `usize::MAX` epochs wrapped `epochs + 1` to 0, which matched
/// an empty trajectory: the file opened and held no epoch.
#[test]
fn expert_epoch_counts_do_not_wrap() {
    use tesla_distill::experts::trajectory::{ExpertMeta, Trajectory};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("expert_0000.safetensors");
    let mut meta = ExpertMeta {
        model: "convnet-d1-w2".into(),
        dataset: "fmnist-small".into(),
        zca: false,
        epochs: usize::MAX,
        params: vec![param("w", &[2], 0, InitRule::Zeros)],
        lr: 0.01,
        momentum: 0.0,
    };
    let empty = ndarray::ArrayD::<f32>::zeros(vec![0, 2]);
    write_safetensors(
        &p,
        &[("trajectory".to_string(), empty)],
        Some(meta.to_map().unwrap()),
    )
    .unwrap();
    let e = format!("{:#}", Trajectory::open(&p).err().expect("an error"));
    assert!(
        e.contains("expert_0000.safetensors") && e.contains("does not match"),
        "{e}"
    );
    // Parameter lengths whose sum wraps to the tensor's width are caught the same way.
    meta.epochs = 0;
    meta.params = vec![
        param("a", &[2], 0, InitRule::Zeros),
        ParamEntry {
            len: usize::MAX,
            ..param("b", &[1], 2, InitRule::Zeros)
        },
    ];
    let one = ndarray::ArrayD::<f32>::zeros(vec![1, 1]);
    write_safetensors(
        &p,
        &[("trajectory".to_string(), one)],
        Some(meta.to_map().unwrap()),
    )
    .unwrap();
    let e = format!("{:#}", Trajectory::open(&p).err().expect("an error"));
    assert!(e.contains("too many params"), "{e}");
}
