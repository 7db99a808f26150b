//! tesla-distill: dataset distillation by matching training trajectories with constant memory
//! (TESLA), on ONNX graphs.
#![warn(missing_docs)]
pub mod atomic_file;
pub mod cli;
pub mod compile_cache;
pub mod compiler;
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
