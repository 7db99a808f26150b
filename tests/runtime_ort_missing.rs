//! With ORT_DYLIB_PATH pointing nowhere, the ONNX Runtime backends fail with one clear line that
//! says how to fix it. A separate test binary, since the library is loaded once per process.

use tesla_distill::runtime::{backend, BackendKind};

#[test]
fn missing_library_is_a_clear_error() {
    // Safe here: this binary has a single test, so no other thread reads the environment.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    for kind in [BackendKind::Ort, BackendKind::OrtCuda] {
        let e = match backend(kind) {
            Ok(_) => panic!("{kind}: loaded a library that does not exist"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so"),
            "{e}"
        );
        assert!(e.contains("pip install onnxruntime==1.32.0"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // tract needs nothing.
    assert!(backend(BackendKind::Tract).is_ok());
}
