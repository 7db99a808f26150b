//! The tract backend: pure Rust, optimized typed plan, one reusable execution state per session.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use ndarray::{ArrayD, ArrayViewD};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::{
    catch_panic, check_bind, one_line, side_by_side, unbound_error, Backend, IoSpec, ModelInfo,
    Session,
};

/// Loads graphs with `tract-onnx` and runs their optimized plans.
pub(crate) struct TractBackend;

impl TractBackend {
    pub(crate) fn new() -> Self {
        prepare_process();
        TractBackend
    }
}

/// What every tract run in this process needs set up once: its thread pool and the heap.
pub(crate) fn prepare_process() {
    use_every_core();
    super::heap::keep_freed_memory();
}

/// Points tract's kernels at a pool of one thread per core (tract runs on the calling thread
/// alone otherwise), once per process.
fn use_every_core() {
    static POOL: std::sync::Once = std::sync::Once::new();
    POOL.call_once(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Built here rather than by `Executor::multithread`, which panics where a pool cannot
        // be made; without one tract stays on the calling thread.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("tract-{i}"))
            .build();
        if let (true, Ok(pool)) = (n > 1, pool) {
            use tract_linalg::multithread::set_default_executor;
            set_default_executor(Executor::MultiThread(Arc::new(pool)));
        }
    });
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, path: &Path) -> Result<Box<dyn Session>> {
        let (info, state) = load_state(path)?;
        let bound = vec![None; info.inputs.len()];
        Ok(Box::new(TractSession {
            info,
            state,
            bound,
            one_thread: false,
        }))
    }

    fn lanes(&self) -> usize {
        super::default_lanes(super::BackendKind::Tract)
    }

    /// One optimized plan, with a state of its own for each lane; a lane with one thread's share
    /// of the cores runs its kernels on its own thread rather than on the pool of every core.
    fn load_lanes(&self, path: &Path, lanes: usize) -> Result<Vec<Box<dyn Session>>> {
        let (info, first) = load_state(path)?;
        let one_thread = side_by_side::threads_per_lane(super::cpu_threads(), lanes) == 1;
        let mut states = vec![first];
        for _ in 1..lanes {
            let state = TypedSimpleState::new(states[0].plan())
                .map_err(|e| anyhow!("cannot load {} with tract: {e:#}", path.display()))?;
            states.push(state);
        }
        let sessions: Vec<Box<dyn Session>> = states
            .into_iter()
            .map(|state| {
                Box::new(TractSession {
                    bound: vec![None; info.inputs.len()],
                    info: info.clone(),
                    state,
                    one_thread,
                }) as Box<dyn Session>
            })
            .collect();
        Ok(sessions)
    }
}

/// The graph at `path`: its input/output contract and a fresh execution state of its optimized
/// plan, with one error line for a file tract cannot load.
pub(crate) fn load_state(path: &Path) -> Result<(ModelInfo, TypedSimpleState)> {
    let info = ModelInfo::from_path(path)?;
    let plan = catch_panic(&format!("cannot load {}", path.display()), || {
        build_plan(path, &info).map_err(|e| {
            anyhow!(
                "cannot load {} with tract: {}",
                path.display(),
                one_line(&format!("{e:#}"))
            )
        })
    })?;
    let state = TypedSimpleState::new(&plan)
        .map_err(|e| anyhow!("cannot load {} with tract: {e:#}", path.display()))?;
    Ok((info, state))
}

/// The optimized plan of the graph at `path`, every input pinned to its declared f32 shape.
fn build_plan(path: &Path, info: &ModelInfo) -> TractResult<Arc<TypedSimplePlan>> {
    let mut model = super::tract_instance_norm::onnx().model_for_path(path)?;
    // Pin every input to its declared f32 static shape: tract then optimizes for exactly these
    // shapes and never has to resolve symbols at run time.
    let outlets = model.input_outlets()?.to_vec();
    if outlets.len() != info.inputs.len() {
        bail!(
            "tract sees {} graph inputs, the ONNX file declares {}",
            outlets.len(),
            info.inputs.len()
        );
    }
    for (ix, (outlet, spec)) in outlets.iter().zip(&info.inputs).enumerate() {
        let tract_name = &model.node(outlet.node).name;
        if tract_name != &spec.name {
            bail!(
                "input {ix}: tract names it '{tract_name}', the ONNX file '{}'",
                spec.name
            );
        }
        model.set_input_fact(ix, InferenceFact::dt_shape(f32::datum_type(), &spec.shape))?;
    }
    let typed = model.into_optimized()?;
    for (ix, spec) in info.outputs.iter().enumerate() {
        let fact = typed.output_fact(ix)?;
        let shape = fact.shape.as_concrete();
        if fact.datum_type != f32::datum_type() || shape != Some(spec.shape.as_slice()) {
            bail!(
                "output '{}': tract infers {:?}, the ONNX file declares f32 {:?}",
                spec.name,
                fact,
                spec.shape
            );
        }
    }
    typed.into_runnable()
}

struct TractSession {
    info: ModelInfo,
    /// Reused across runs so tract does not rebuild per-node state each step.
    state: TypedSimpleState,
    /// Converted at bind time and shared (not copied) into each run.
    bound: Vec<Option<TValue>>,
    /// Whether runs keep tract's kernels on the calling thread (a lane beside others).
    one_thread: bool,
}

impl Session for TractSession {
    fn inputs(&self) -> &[IoSpec] {
        &self.info.inputs
    }

    fn outputs(&self) -> &[IoSpec] {
        &self.info.outputs
    }

    fn bind(&mut self, name: &str, value: ArrayViewD<'_, f32>) -> Result<()> {
        let ix = check_bind(&self.info.inputs, name, value.shape())?;
        let contiguous = value.as_standard_layout();
        let data = contiguous
            .as_slice()
            .ok_or_else(|| anyhow!("input '{name}': array is not contiguous"))?;
        let tensor = Tensor::from_shape::<f32>(value.shape(), data)
            .map_err(|e| anyhow!("input '{name}': {e:#}"))?;
        self.bound[ix] = Some(tensor.into_tvalue());
        Ok(())
    }

    fn run(&mut self) -> Result<Vec<ArrayD<f32>>> {
        if let Some(e) = unbound_error(&self.info.inputs, |ix| self.bound[ix].is_some()) {
            return Err(e);
        }
        // Cloning a TValue bumps an Arc; the tensor data stays where bind() put it.
        let inputs: TVec<TValue> = self.bound.iter().flatten().cloned().collect();
        let state = &mut self.state;
        let one_thread = self.one_thread;
        let result = catch_panic("tract run failed", || {
            let run = || {
                state
                    .run(inputs)
                    .map_err(|e| anyhow!("tract run failed: {}", one_line(&format!("{e:#}"))))
            };
            if one_thread {
                multithread_tract_scope(Executor::SingleThread, run)
            } else {
                run()
            }
        });
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(e) => {
                // A failed or panicked run may leave per-node state half updated; start the next
                // run from a fresh state rather than trust it.
                if let Ok(fresh) = TypedSimpleState::new(self.state.plan()) {
                    self.state = fresh;
                }
                return Err(e);
            }
        };
        if outputs.len() != self.info.outputs.len() {
            bail!(
                "tract returned {} outputs, the graph declares {}",
                outputs.len(),
                self.info.outputs.len()
            );
        }
        outputs
            .iter()
            .zip(&self.info.outputs)
            .map(|(t, spec)| {
                // tract 0.23 shares ndarray 0.17 with this crate, so the view converts directly.
                t.to_plain_array_view::<f32>()
                    .map(|v| v.to_owned())
                    .map_err(|e| anyhow!("output '{}': {e:#}", spec.name))
            })
            .collect()
    }
}
