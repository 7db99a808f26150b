//! TESLA distillation: the two-pass constant-memory loop, the exact reverse sweep and the unrolled baseline.
pub mod checkpoint;
pub mod config;
pub mod gradient;
pub mod init;
pub mod labels;
pub mod presets;
pub mod run;
pub mod set_eval;
pub mod set_file;
