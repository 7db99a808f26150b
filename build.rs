//! Generates the ONNX protobuf types from `proto/onnx.proto` with a pure-Rust protobuf compiler
//! (protox), so a fresh machine needs no system `protoc`, and names the compiler's revision (a
//! hash of the sources that decide what the artifacts contain), so compiled artifacts from another
//! revision are never reused.
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// FNV-1a over the relative paths and contents of the compiler's and exporter's sources.
fn compiler_revision() -> String {
    let mut files = Vec::new();
    for dir in ["src/compiler", "src/onnx"] {
        println!("cargo:rerun-if-changed={dir}");
        rust_files(Path::new(dir), &mut files);
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in &files {
        let text = std::fs::read(f).unwrap_or_default();
        for b in f.to_string_lossy().bytes().chain(text) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn main() {
    println!(
        "cargo:rustc-env=TESLA_COMPILER_REVISION={}",
        compiler_revision()
    );
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generates the ONNX types");
}
