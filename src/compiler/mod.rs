//! The compiler: IR, primitive ops with shape and derivative rules, automatic differentiation,
//! graph passes and training artifacts.
pub mod artifact;
pub mod autodiff;
pub mod emit;
pub mod eval;
pub mod ir;
pub mod lower;
pub mod manifest;
pub mod model;
pub mod ops;
pub mod passes;
