//! Compiled artifacts for one model at several batch sizes, compiled on first use into a cache
//! directory and reused while the model's source hash and the compiler's revision are unchanged.

use crate::compiler::ir::numel;
use crate::compiler::manifest::Manifest;
use crate::compiler::model::{ForwardModel, NormStatistics};
use crate::onnx::artifacts::compile_dir;
use crate::progress::{Event, SharedObserver};
use crate::runtime::batches::BatchPrograms;
use crate::runtime::programs::{Artifact, BackendExec, Exec};
use crate::runtime::row_chunks;
use crate::runtime::{backend, BackendKind};
use crate::zoo::ModelSpec;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Programs for one model, keyed by batch size.
pub struct ProgramStore {
    model: ModelSpec,
    input: [usize; 3],
    classes: usize,
    kind: BackendKind,
    root: PathBuf,
    which: Vec<Artifact>,
    unrolled_steps: usize,
    execs: HashMap<usize, (BackendExec, Manifest)>,
    observer: SharedObserver,
    /// What cuts a batch into calls, once the model was built to find out.
    call_sizing: Option<CallSizing>,
}

/// What [`ProgramStore::rows_per_call`] reads off the model.
#[derive(Clone, Copy)]
struct CallSizing {
    /// Whether each image's outputs depend on that image alone.
    images_independent: bool,
    /// Bytes of the model's largest intermediate for one image.
    image_bytes: usize,
}

impl ProgramStore {
    /// A store compiling `which` artifacts of `model` under `root/b{batch}`.
    pub fn new(
        model: ModelSpec,
        input: [usize; 3],
        classes: usize,
        kind: BackendKind,
        root: &Path,
        which: &[Artifact],
    ) -> ProgramStore {
        ProgramStore {
            model,
            input,
            classes,
            kind,
            root: root.to_path_buf(),
            which: which.to_vec(),
            unrolled_steps: 0,
            execs: HashMap::new(),
            observer: crate::progress::quiet(),
            call_sizing: None,
        }
    }

    /// Reports the importer's warnings (batch-norm choices, replaced values) to `observer`, once
    /// per compiled batch size; the default drops them.
    pub fn observed(mut self, observer: &SharedObserver) -> ProgramStore {
        self.observer = observer.clone();
        self
    }

    /// Also compile the unrolled T-step graph (the MTT baseline).
    pub fn with_unrolled(mut self, steps: usize) -> ProgramStore {
        if !self.which.contains(&Artifact::Unrolled) {
            self.which.push(Artifact::Unrolled);
        }
        self.unrolled_steps = steps;
        self
    }

    /// The model this store compiles.
    pub fn model(&self) -> &ModelSpec {
        &self.model
    }

    /// How many images each graph call of a `batch`-image batch takes (see
    /// [`row_chunks::rows_per_call`]): a few when each image's outputs depend on that image alone
    /// (as [`Manifest::images_independent`] says, found from the model before anything is
    /// compiled, once per store), else the whole batch; `TESLA_ROWS_PER_CALL` overrides it. The
    /// artifacts compiled for this size are the ones a caller runs, through
    /// [`row_chunks::RowChunks`].
    pub fn rows_per_call(&mut self, batch: usize) -> Result<usize> {
        let sizing = match self.call_sizing {
            Some(v) => v,
            None => {
                let m = self.model.build(batch, self.input, self.classes)?;
                *self.call_sizing.insert(CallSizing {
                    images_independent: m.batchnorm.values().all(|s| *s != NormStatistics::Batch),
                    image_bytes: largest_activation_per_image(&m),
                })
            }
        };
        row_chunks::rows_per_call(
            batch,
            sizing.images_independent,
            sizing.image_bytes,
            row_chunks::requested_rows_per_call()?,
        )
    }

    /// The directory holding the artifacts for `batch`.
    pub fn dir(&self, batch: usize) -> PathBuf {
        self.root.join(format!("b{batch}"))
    }

    /// The programs (and manifest) for `batch`, compiling them if needed.
    pub fn get(&mut self, batch: usize) -> Result<(&mut BackendExec, &Manifest)> {
        if !self.execs.contains_key(&batch) {
            let dir = self.dir(batch);
            let m = self.model.build(batch, self.input, self.classes)?;
            for w in &m.warnings {
                self.observer.event(Event::Warning(w));
            }
            let fresh = crate::onnx::export::to_model_proto(&m.graph);
            let hash = {
                use sha2::Digest;
                format!(
                    "{:x}",
                    sha2::Sha256::digest(prost::Message::encode_to_vec(&fresh))
                )
            };
            let reuse = Manifest::load(&dir).ok().filter(|man| {
                man.source_hash == hash
                    && man.compiler == crate::compiler::manifest::COMPILER_REVISION
                    && self.which.iter().all(|a| dir.join(a.file()).exists())
                    && (self.unrolled_steps == 0
                        || man.graphs.get("unrolled").is_some_and(|g| {
                            g.inputs.iter().any(|i| {
                                i.name == "xs" && i.shape.first() == Some(&self.unrolled_steps)
                            })
                        }))
            });
            let manifest =
                match reuse {
                    Some(man) => man,
                    None => compile_dir(&m, &self.which, self.unrolled_steps, &dir).with_context(
                        || format!("compiling {} for batch {batch}", self.model.name()),
                    )?,
                };
            let exec = BackendExec::new(backend(self.kind)?, &dir);
            self.execs.insert(batch, (exec, manifest));
        }
        let (e, m) = self.execs.get_mut(&batch).expect("inserted above");
        Ok((e, m))
    }

    /// The store's programs for batches of `batch` images (see [`StoreBatches`]).
    pub fn batches(&mut self, batch: usize) -> Result<StoreBatches<'_>> {
        let pads = self.get(batch)?.1.images_independent();
        Ok(StoreBatches {
            store: self,
            batch,
            pads,
        })
    }
}

/// Bytes of the largest value `model`'s forward graph computes, per image, in f32: what sizes
/// the calls a batch is cut into (see [`row_chunks::rows_per_call`]).
fn largest_activation_per_image(model: &ForwardModel) -> usize {
    let g = &model.graph;
    let batch = g.shape(model.x).first().copied().unwrap_or(1).max(1);
    g.nodes
        .iter()
        .flat_map(|n| &n.outputs)
        .map(|&v| numel(g.shape(v)) * 4 / batch)
        .max()
        .unwrap_or(0)
}

/// A store's programs for one batch size, as [`BatchPrograms`]: a short batch is padded when the
/// manifest says each image is treated on its own, and otherwise runs on the programs compiled for
/// its own size (compiled once, then cached like any other).
pub struct StoreBatches<'a> {
    store: &'a mut ProgramStore,
    batch: usize,
    pads: bool,
}

impl BatchPrograms<f32> for StoreBatches<'_> {
    fn rows(&self) -> usize {
        self.batch
    }

    fn pads_exactly(&self) -> bool {
        self.pads
    }

    fn at(&mut self, rows: usize) -> Result<&mut dyn Exec<f32>> {
        Ok(self.store.get(rows)?.0)
    }
}
