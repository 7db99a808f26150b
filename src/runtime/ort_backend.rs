//! The ONNX Runtime backend, through `ort` with `load-dynamic`: the shared library is found at run
//! time (never downloaded at build time), on the CPU or the CUDA execution provider.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, ArrayViewD};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::IoBinding;
use ort::value::Tensor;

use super::{
    catch_panic, check_bind, one_line, side_by_side, unbound_error, Backend, IoSpec, ModelInfo,
    Session,
};

/// The onnxruntime release whose C API the pinned `ort` crate expects.
const ORT_PIP_PIN: &str = "onnxruntime==1.32.0";

/// Where the ONNX Runtime shared library is: `ORT_DYLIB_PATH` if set, else the `capi/`
/// directory of the `onnxruntime` package that `python3` imports.
pub fn ort_library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        if !path.is_file() {
            bail!(
                "ORT_DYLIB_PATH={} does not name a file; point it at libonnxruntime.so, or unset it and `pip install {ORT_PIP_PIN}`",
                path.display()
            );
        }
        return Ok(path);
    }
    let pkg_dir = python_onnxruntime_dir().map_err(|why| {
        anyhow!(
            "ONNX Runtime library not found ({why}); install it with `pip install {ORT_PIP_PIN}` or set ORT_DYLIB_PATH to libonnxruntime.so"
        )
    })?;
    let capi = pkg_dir.join("capi");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&capi)
        .with_context(|| format!("cannot list {}", capi.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_ort_library_name)
        })
        .collect();
    // Prefer the fully versioned file (what the unversioned symlink, if any, points to).
    candidates.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    candidates.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no libonnxruntime shared library in {}; reinstall with `pip install {ORT_PIP_PIN}` or set ORT_DYLIB_PATH",
            capi.display()
        )
    })
}

fn is_ort_library_name(name: &str) -> bool {
    name.starts_with("libonnxruntime.so")
        || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"))
        || name == "onnxruntime.dll"
}

fn python_onnxruntime_dir() -> std::result::Result<PathBuf, String> {
    let script = "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))";
    let mut last = String::from("no python3 on PATH");
    for python in ["python3", "python"] {
        match Command::new(python).args(["-c", script]).output() {
            Ok(out) if out.status.success() => {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !dir.is_empty() {
                    return Ok(PathBuf::from(dir));
                }
                last = format!("{python} printed no onnxruntime directory");
            }
            Ok(_) => last = format!("`{python} -c 'import onnxruntime'` failed"),
            Err(_) => {}
        }
    }
    Err(last)
}

/// One environment per process (ort refuses a second); the error is kept so every caller sees it.
static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(|| init_environment().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn init_environment() -> Result<Environment> {
    let lib = ort_library_path()?;
    // ONNX Runtime does not promise the same sums for another thread count: runs are compared
    // with the same count, which TESLA_THREADS fixes (default: every core).
    let threads = super::cpu_threads();
    catch_panic("cannot initialize ONNX Runtime", || {
        // Loads the library; nothing in `ort` may touch the C API before this.
        let builder = ort::init_from(&lib)
            .map_err(|e| {
                anyhow!(
                    "cannot load ONNX Runtime from {}: {e}; install it with `pip install {ORT_PIP_PIN}` or set ORT_DYLIB_PATH to its libonnxruntime.so",
                    lib.display()
                )
            })?;
        // One global pool shared by all sessions: a training loop alternates step/pass2/logits
        // sessions, and per-session pools would each spin their own threads on the same cores.
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_inter_threads(1))
            // Spinning between parallel regions measured ~25% faster on a 300-op elementwise
            // chain (benches/runtime.rs), the shape of a backward graph.
            .and_then(|p| p.with_spin_control(true))
            // Subnormal floats flushed to zero, off the CPU's slow path for them: the iteration
            // at which a distillation's matching loss jumped took 25.8 s, and 20.9 s flushed
            // (ConvNet-D3, IPC 10, T 20, the others 18-19 s either way); values that small
            // vanish beside any normal f32 value they meet in a sum.
            .and_then(|p| p.with_flush_to_zero())
            .map_err(|e| anyhow!("cannot configure ONNX Runtime threads: {e}"))?;
        builder
            .with_name("tesla")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| anyhow!("cannot initialize ONNX Runtime from {}: {e}", lib.display()))
    })
}

/// CUDA EP options. TF32 is off because artifacts are checked against the CPU at 1e-5 relative
/// and TF32 matmuls/convs are only good to about 1e-3.
const CUDA_OPTIONS: [(&std::ffi::CStr, &std::ffi::CStr); 1] = [(c"use_tf32", c"0")];

/// Appends the CUDA execution provider through the C API directly: the `ort` crate's own CUDA
/// wrapper needs its `cuda` feature, and its dispatch path falls back to the CPU silently by
/// default. A failure here is returned as is, so there is no fallback.
fn append_cuda(builder: &mut SessionBuilder) -> Result<()> {
    use ort::AsPointer;
    let unavailable = |e: ort::Error| {
        anyhow!(
            "CUDA execution provider not available: {}",
            one_line(&e.to_string())
        )
    };
    let api = ort::api();
    let mut options: *mut ort::sys::OrtCUDAProviderOptionsV2 = std::ptr::null_mut();
    // SAFETY: plain C API call writing one pointer.
    unsafe { ort::Error::result_from_status((api.CreateCUDAProviderOptions)(&mut options)) }
        .map_err(unavailable)?;
    if options.is_null() {
        bail!("CUDA execution provider not available: ONNX Runtime returned no provider options");
    }
    let keys: Vec<*const std::ffi::c_char> = CUDA_OPTIONS.iter().map(|(k, _)| k.as_ptr()).collect();
    let values: Vec<*const std::ffi::c_char> =
        CUDA_OPTIONS.iter().map(|(_, v)| v.as_ptr()).collect();
    // SAFETY: `options` was created above; the key/value arrays hold `len` NUL-terminated
    // strings that outlive the call; the session options copy what they need when appending.
    let result = unsafe {
        ort::Error::result_from_status((api.UpdateCUDAProviderOptions)(
            options,
            keys.as_ptr(),
            values.as_ptr(),
            keys.len(),
        ))
        .and_then(|()| {
            ort::Error::result_from_status((api.SessionOptionsAppendExecutionProvider_CUDA_V2)(
                builder.ptr_mut(),
                options,
            ))
        })
    };
    // SAFETY: created by CreateCUDAProviderOptions, released exactly once, not used after.
    unsafe { (api.ReleaseCUDAProviderOptions)(options) };
    result.map_err(unavailable)
}

/// Whether sessions keep ONNX Runtime's CPU arena: only when `TESLA_ORT_ARENA=1` asks for it.
///
/// Each session's arena keeps the chunks it grew to for as long as the session lives, so a run
/// held the peak of every graph it had loaded (step, pass 2, logits) at once, not the largest.
/// Without it every intermediate goes to the C heap, which [`super::heap`] keeps from handing
/// memory back between runs, so later runs still write into pages already touched. At the
/// ImageNet-1K shape (ConvNet-D4, 64×64, batch 100) a tesla-mode iteration peaked at 5574 MiB
/// with the arena and 3111 MiB without, and ran in 51.9 against 44.1 s; ConvNet-D3's step at
/// batch 256 ran at the same speed in 4.2 against 1.6-2.2 GB.
fn cpu_arena_wanted() -> bool {
    std::env::var("TESLA_ORT_ARENA").is_ok_and(|v| v.trim() == "1")
}

/// Loads graphs into ONNX Runtime sessions.
pub(crate) struct OrtBackend {
    cuda: bool,
    /// For the sessions of [`Backend::load_lanes`]: the threads of each.
    lane_threads: Option<usize>,
}

impl OrtBackend {
    pub(crate) fn new(cuda: bool) -> Result<Self> {
        let backend = OrtBackend {
            cuda,
            lane_threads: None,
        };
        // Fail at selection time, not at the first load deep inside a run.
        backend.session_builder()?;
        Ok(backend)
    }

    fn session_builder(&self) -> Result<SessionBuilder> {
        let env = environment()?;
        let builder = ort::session::Session::builder(env)
            .map_err(|e| anyhow!("cannot create an ONNX Runtime session: {e}"))?;
        let builder = if let Some(threads) = self.lane_threads {
            // A lane computes on its share of the cores, beside the other lanes, not on the
            // process's pool of every core.
            let threads_error = |e: ort::Error<SessionBuilder>| {
                anyhow!("cannot configure ONNX Runtime threads: {e}")
            };
            builder
                .with_independent_thread_pool()
                .map_err(threads_error)?
                .with_intra_threads(threads)
                .map_err(threads_error)?
                .with_inter_threads(1)
                .map_err(threads_error)?
        } else {
            builder
        };
        let mut builder = builder
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| anyhow!("cannot set ONNX Runtime optimization level: {e}"))?
            // The memory pattern, planned from the first run, is allocated as one block at the
            // second while the arena keeps the first run's chunks: every graph's peak doubled
            // (the unrolled graph at T = 10 from 6.2 to 12.4 GiB, its second run 2.5 times
            // slower), and a tesla-mode iteration ran no faster with it (20.8 s against 16.5).
            .with_memory_pattern(false)
            .map_err(|e| anyhow!("cannot configure ONNX Runtime memory planning: {e}"))?;
        if !cpu_arena_wanted() {
            use ort::AsPointer;
            super::heap::keep_freed_memory();
            let api = ort::api();
            // SAFETY: plain C API call on the live session options `builder` owns.
            unsafe { ort::Error::result_from_status((api.DisableCpuMemArena)(builder.ptr_mut())) }
                .map_err(|e| anyhow!("cannot configure ONNX Runtime's CPU allocator: {e}"))?;
        }
        if self.cuda {
            catch_panic("CUDA execution provider not available", || {
                append_cuda(&mut builder)
            })?;
        }
        Ok(builder)
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        if self.cuda {
            "ort-cuda"
        } else {
            "ort"
        }
    }

    fn load(&self, path: &Path) -> Result<Box<dyn Session>> {
        self.load_session(path)
    }

    fn lanes(&self) -> usize {
        super::default_lanes(if self.cuda {
            super::BackendKind::OrtCuda
        } else {
            super::BackendKind::Ort
        })
    }

    fn load_lanes(&self, path: &Path, lanes: usize) -> Result<Vec<Box<dyn Session>>> {
        if self.cuda {
            return (0..lanes).map(|_| self.load_session(path)).collect();
        }
        let lane = OrtBackend {
            cuda: false,
            lane_threads: Some(side_by_side::threads_per_lane(super::cpu_threads(), lanes)),
        };
        (0..lanes).map(|_| lane.load_session(path)).collect()
    }
}

impl OrtBackend {
    fn load_session(&self, path: &Path) -> Result<Box<dyn Session>> {
        let info = ModelInfo::from_path(path)?;
        let mut builder = self.session_builder()?;
        let what = format!("cannot load {} with ONNX Runtime", path.display());
        let session = catch_panic(&what, || {
            builder
                .commit_from_file(path)
                .map_err(|e| anyhow!("{what}: {}", one_line(&e.to_string())))
        })?;
        check_names(
            "input",
            session.inputs().iter().map(|o| o.name()),
            &info.inputs,
            &what,
        )?;
        check_names(
            "output",
            session.outputs().iter().map(|o| o.name()),
            &info.outputs,
            &what,
        )?;
        let mut binding = session
            .create_binding()
            .map_err(|e| anyhow!("{what}: cannot create I/O binding: {e}"))?;
        // Outputs always land in host memory, so run() can hand back plain arrays whatever the EP.
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(|e| anyhow!("{what}: {e}"))?;
        for out in &info.outputs {
            binding
                .bind_output_to_device(out.name.as_str(), &host)
                .map_err(|e| anyhow!("{what}: cannot bind output '{}': {e}", out.name))?;
        }
        let bound = vec![false; info.inputs.len()];
        let held = info.inputs.iter().map(|_| None).collect();
        Ok(Box::new(OrtSession {
            info,
            session,
            binding,
            bound,
            held,
            flush_subnormals: self.lane_threads.is_some(),
        }))
    }
}

/// Runs `f` with subnormal floats flushed to zero on this thread when `flush` (x86-64 only), and
/// the thread's previous setting restored after, even if `f` panics: ONNX Runtime sets it on its
/// own pool's threads, and subnormals in a diverging run's gradients made one iteration 25.8 s
/// instead of 20.9 s.
fn subnormals_flushed<T>(flush: bool, f: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        /// Restores the saved control register when dropped.
        struct Restore(u32);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: ldmxcsr writes this thread's SSE control register only, with the
                // value stmxcsr read from it before.
                unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &self.0, options(nostack)) };
            }
        }
        if flush {
            // Flush to zero (bit 15) and denormals are zero (bit 6).
            const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
            let mut saved: u32 = 0;
            // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE control register only;
            // the flags change how subnormal values round in the engine's code that runs until
            // `Restore` puts the previous value back.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack));
                let flushed = saved | FTZ_DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack));
            }
            let _restore = Restore(saved);
            return f();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = flush;
    f()
}

fn check_names<'a>(
    role: &str,
    engine: impl Iterator<Item = &'a str>,
    declared: &[IoSpec],
    what: &str,
) -> Result<()> {
    let engine: Vec<&str> = engine.collect();
    let declared_names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
    if engine != declared_names {
        bail!("{what}: ONNX Runtime sees {role}s {engine:?}, the ONNX file declares {declared_names:?}");
    }
    Ok(())
}

struct OrtSession {
    info: ModelInfo,
    session: ort::session::Session,
    /// Holds the bound input values: ONNX Runtime copies a host value to the device once, when it
    /// is bound, so θ stays resident on the GPU between runs.
    binding: IoBinding,
    bound: Vec<bool>,
    /// The host tensor of each input, reused by the next value of the same shape.
    held: Vec<Option<Tensor<f32>>>,
    /// Whether a run flushes subnormal floats to zero on the calling thread, as the process's
    /// pool does on its threads: a lane computes on the thread that calls it.
    flush_subnormals: bool,
}

impl Session for OrtSession {
    fn inputs(&self) -> &[IoSpec] {
        &self.info.inputs
    }

    fn outputs(&self) -> &[IoSpec] {
        &self.info.outputs
    }

    fn bind(&mut self, name: &str, value: ArrayViewD<'_, f32>) -> Result<()> {
        let ix = check_bind(&self.info.inputs, name, value.shape())?;
        // A value of the same shape is written into the tensor already bound: a fresh tensor the
        // size of θ costs a page-faulted allocation per call (20 ms for ResNet-18's 45 MB), a copy
        // into mapped memory a few.
        let held = self.held.get_mut(ix).and_then(Option::as_mut).filter(|t| {
            let (shape, _) = t.extract_tensor();
            shape
                .iter()
                .map(|&d| d as usize)
                .eq(value.shape().iter().copied())
        });
        if let Some(t) = held {
            let (_, dst) = t.extract_tensor_mut();
            match value.as_slice() {
                Some(s) => dst.copy_from_slice(s),
                None => dst.iter_mut().zip(value.iter()).for_each(|(d, &v)| *d = v),
            }
        } else {
            let shape: Vec<i64> = value.shape().iter().map(|&d| d as i64).collect();
            let data: Vec<f32> = match value.as_slice() {
                Some(s) => s.to_vec(),
                None => value.iter().copied().collect(),
            };
            let tensor =
                Tensor::from_array((shape, data)).map_err(|e| anyhow!("input '{name}': {e}"))?;
            if let Some(slot) = self.held.get_mut(ix) {
                *slot = Some(tensor);
            }
        }
        let tensor = self
            .held
            .get(ix)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("input '{name}': no tensor to bind"))?;
        // Binding again is what copies the value to the device for the CUDA provider; on the CPU
        // ONNX Runtime reads the tensor in place.
        catch_panic(&format!("input '{name}'"), || {
            self.binding
                .bind_input(name, tensor)
                .map_err(|e| anyhow!("input '{name}': cannot bind: {}", one_line(&e.to_string())))
        })?;
        self.bound[ix] = true;
        Ok(())
    }

    fn run(&mut self) -> Result<Vec<ArrayD<f32>>> {
        if let Some(e) = unbound_error(&self.info.inputs, |ix| self.bound[ix]) {
            return Err(e);
        }
        let session = &mut self.session;
        let binding = &self.binding;
        let specs = &self.info.outputs;
        let flush = self.flush_subnormals;
        catch_panic("ONNX Runtime run failed", || {
            let outputs = subnormals_flushed(flush, || session.run_binding(binding))
                .map_err(|e| anyhow!("ONNX Runtime run failed: {}", one_line(&e.to_string())))?;
            specs
                .iter()
                .map(|spec| {
                    let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
                        anyhow!("ONNX Runtime returned no output '{}'", spec.name)
                    })?;
                    let view = value
                        .try_extract_array::<f32>()
                        .map_err(|e| anyhow!("output '{}': {e}", spec.name))?;
                    Ok(view.to_owned())
                })
                .collect()
        })
    }
}
