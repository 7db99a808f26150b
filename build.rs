//! Generates the ONNX protobuf types from `proto/onnx.proto` with a pure-Rust protobuf compiler
//! (protox), so a fresh machine needs no system `protoc`.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generates the ONNX types");
}
