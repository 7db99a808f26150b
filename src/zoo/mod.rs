//! Built-in architectures, generated as forward graphs whose parameters are graph inputs.
pub mod convnet;
