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
// vectors in f32, as the backends compute), the convolution weight gradient as one primitive,
// and the fast ONNX forms: instance normalisation, average pooling and the convolution's bias
// fused (`InstanceNormalization`, `AveragePool`, `Conv`'s bias operand), the first layer's weight
// gradient as per-image products, and the unit-stride adjoint convolution as a `Conv` with
// flipped taps. The same functions summed in another order: the graphs' f32 outputs move by
// rounding only (within 2e-6 of the composite forms' on random inputs), and the pins with them.
const PIN_EXPERT: &str = "2f2cdf32dd6fa97cbfa655b4522f2983d5e0236e5c6c03e9b94bf4c84e425d94";
const PIN_TESLA: &str = "b1e364ed6d70372be19988ad2f77189b06e8f720ffd51789c6725dd16af62aca";
const PIN_EXACT: &str = "7ce0552ecf22357bab340b2f12daedc16a176ac588cb11a86e88a41e0b1f69d4";
