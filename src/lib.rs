//! tesla-distill: dataset distillation by matching training trajectories with constant memory
//! (TESLA), on ONNX graphs.
//!
//! The three jobs are each a typed configuration and one call that reports its progress to a
//! [`progress::Observer`] (the `tesla` command line is a shell over these; see
//! docs/architecture.md for the layers below them):
//!
//! - [`train_experts`] with an [`ExpertsConfig`]: expert trajectories, resumable;
//! - [`distill`] with a [`DistillConfig`] (the run directory's `config.json`): the distilled set,
//!   resumable, returning the final [`distill::run::State`];
//! - [`evaluate`] with an [`EvalConfig`]: fresh networks of one model trained on a set, its
//!   [`eval::ModelResult`]; [`distill::set_eval::evaluate_set`] and
//!   [`eval::baseline::evaluate_baseline`] run it over several models for a distilled set file
//!   and for real-image baselines.
//!
//! ```no_run
//! use tesla_distill::{distill, progress, DistillConfig};
//! # fn main() -> anyhow::Result<()> {
//! let cfg: DistillConfig = serde_json::from_str(&std::fs::read_to_string("config.json")?)?;
//! let state = distill(cfg, /* resume */ true, &progress::quiet())?;
//! println!("{} iterations, β = {}", state.iteration, state.beta);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
pub mod atomic_file;
pub mod block_cache;
pub mod cli;
pub mod compile_cache;
pub mod compiler;
pub mod config_file;
pub mod data;
pub mod distill;
pub mod eval;
pub mod experts;
pub mod onnx;
pub mod progress;
pub mod runtime;
pub mod tensor_file;
pub mod train;
pub mod zoo;

pub use distill::run::{run_with as distill, DistillConfig};
pub use eval::{evaluate, EvalConfig};
pub use experts::{run_experts_with as train_experts, ExpertsConfig};
