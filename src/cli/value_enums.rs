//! The command-line spellings and help of the library's choice enums: the library knows nothing
//! of clap, so their `clap::ValueEnum` implementations live here.

use crate::distill::gradient::Mode;
use crate::distill::run::{FinalLabels, Labels, PixInit};
use crate::runtime::BackendKind;
use clap::builder::PossibleValue;

/// Implements `clap::ValueEnum` for a library enum: each variant with its flag value and help.
macro_rules! value_enum {
    ($ty:ty { $($variant:path => $name:literal: $help:literal),+ $(,)? }) => {
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($variant => PossibleValue::new($name).help($help)),+
                })
            }
        }
    };
}

value_enum!(BackendKind {
    BackendKind::Tract => "tract": "tract, pure Rust (needs nothing installed)",
    BackendKind::Ort => "ort": "ONNX Runtime with the CPU execution provider",
    BackendKind::OrtCuda => "ort-cuda":
        "ONNX Runtime with the CUDA execution provider (no silent fallback to the CPU)",
});

value_enum!(Mode {
    Mode::Tesla => "tesla": "The paper's two passes: one fixed `v` for every step (drops the Hessian terms)",
    Mode::Exact => "exact":
        "The reverse sweep with Hessian-vector products: the exact gradient, constant graph memory",
    Mode::Unrolled => "unrolled": "The MTT baseline: the whole T-step graph, memory linear in T",
});

value_enum!(Labels {
    Labels::Target => "target": "Soft labels from the teacher at the target epoch (TESLA's default)",
    Labels::Last => "last": "Soft labels from the teacher at its last epoch",
    Labels::Hard => "hard": "One-hot labels",
    Labels::Learned => "learned": "Learned label logits (initialised at 10 for the class, 0 elsewhere)",
});

value_enum!(FinalLabels {
    FinalLabels::Last => "last":
        "The rows the last iteration assigned (the official code): one randomly drawn teacher's opinion",
    FinalLabels::Mean => "mean":
        "The mean of the rows every teacher the run samples from (each expert at each target epoch \
         for `--labels target`, at its last epoch for `--labels last`) gives the current images",
});

value_enum!(PixInit {
    PixInit::Real => "real": "A class-balanced random real subset",
    PixInit::Noise => "noise": "Standard normal noise",
    PixInit::RealCorrect => "real-correct":
        "A class-balanced random real subset of images that every target-step teacher classifies correctly",
});
