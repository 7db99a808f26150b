//! Pins the exact output of a small run (experts, then distillation with soft labels and DSA, on
//! tract): a restructuring of the library must leave every bit of it unchanged. A change that
//! moves the numbers on purpose (another precision, another order of operations) updates the
//! pins here, in its own commit, saying why.

mod common;

use common::tensor_hash;
use std::path::Path;
use tesla_distill::distill::gradient::Mode;
use tesla_distill::distill::run::{run, DistillConfig, Labels};
use tesla_distill::experts::run_experts;

fn distill_config(experts: &Path, out: &Path, gradient: Mode) -> DistillConfig {
    DistillConfig {
        gradient,
        ..common::tiny_distill_config(experts, out, 4, Labels::Target)
    }
}

#[test]
fn a_small_run_gives_the_pinned_experts_and_images() {
    let d = tempfile::tempdir().unwrap();
    let experts = d.path().join("experts");
    run_experts(&common::tiny_experts_config(&experts, 1, 2, 1)).unwrap();
    let got_expert = tensor_hash(&experts.join("expert_0000.safetensors"), &["trajectory"]);
    let mut got = vec![("expert".to_string(), got_expert)];
    for mode in [Mode::Tesla, Mode::Exact] {
        let out = d.path().join(format!("{mode:?}"));
        run(distill_config(&experts, &out, mode), false).unwrap();
        got.push((
            format!("{mode:?}"),
            tensor_hash(
                &out.join("distilled.safetensors"),
                &["images", "labels", "classes", "lr"],
            ),
        ));
    }
    let want = [
        ("expert", PIN_EXPERT),
        ("Tesla", PIN_TESLA),
        ("Exact", PIN_EXACT),
    ];
    for (name, h) in &got {
        eprintln!("{name}: {h}");
    }
    for ((name, h), (_, w)) in got.iter().zip(want) {
        assert_eq!(h, w, "{name}: the output moved");
    }
}

// Pinned with the f32 scheduler (parameters, images, momentum buffers and the stored parameter
// vectors in f32, as the backends compute) and the convolution weight gradient as one primitive,
// whose derivative in pass 2 is a convolution and a transposed convolution (the sums run in
// another order than through the windows: images within 3e-6 of the windowed form's).
const PIN_EXPERT: &str = "9b31f749f0ab6c1e8c2ce18ceb18c2254e0705b52b9dbaff2a75fbbc7f41e9fb";
const PIN_TESLA: &str = "ad97aa0196642becafae22b4fb081f4177b39e2adf16e85e6955d3070a0f2047";
const PIN_EXACT: &str = "2d3e6d513d9ebd0fc4dd64d6c1a83757d5922cd1dd88aa85beddd7620137f3af";
