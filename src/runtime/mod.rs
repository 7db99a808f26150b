//! Backends that run ONNX artifacts: tract (pure Rust) and ONNX Runtime.
