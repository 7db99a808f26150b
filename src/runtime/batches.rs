//! Running a graph compiled for a fixed batch over any number of rows. A short last batch is
//! padded to the compiled size when each image's outputs depend on that image alone; a model
//! that normalises with batch statistics runs it at its own size instead, because padding rows
//! would enter the statistics of the real ones and change their outputs.

use super::programs::{Exec, Scalar};
use anyhow::{bail, Result};

/// Programs for batches of [`rows`](BatchPrograms::rows) images, and for the other sizes a short
/// batch needs when it cannot be padded.
pub trait BatchPrograms<F: Scalar = f32> {
    /// The batch size the programs are compiled for.
    fn rows(&self) -> usize;
    /// Whether a short batch may be padded to [`rows`](BatchPrograms::rows): true when no op
    /// mixes the images of a batch.
    fn pads_exactly(&self) -> bool;
    /// The programs for batches of `rows` images.
    fn at(&mut self, rows: usize) -> Result<&mut dyn Exec<F>>;
}

/// One compiled batch size and nothing else: for a caller whose row count the batch divides, or
/// whose model is known to treat each image on its own.
pub struct OneBatch<'a, F: Scalar = f32> {
    exec: &'a mut dyn Exec<F>,
    rows: usize,
    pads: bool,
}

impl<'a, F: Scalar> OneBatch<'a, F> {
    /// The programs `exec`, compiled for `rows` images; a short batch is an error, since nothing
    /// here says whether the model mixes images.
    pub fn new(exec: &'a mut dyn Exec<F>, rows: usize) -> OneBatch<'a, F> {
        OneBatch {
            exec,
            rows,
            pads: false,
        }
    }

    /// The programs `exec`, compiled for `rows` images of a model that treats each image on its
    /// own (as [`Manifest::images_independent`](crate::compiler::manifest::Manifest::images_independent)
    /// says), so a short batch is padded.
    pub fn padded(exec: &'a mut dyn Exec<F>, rows: usize) -> OneBatch<'a, F> {
        OneBatch {
            exec,
            rows,
            pads: true,
        }
    }
}

impl<F: Scalar> BatchPrograms<F> for OneBatch<'_, F> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn pads_exactly(&self) -> bool {
        self.pads
    }

    fn at(&mut self, rows: usize) -> Result<&mut dyn Exec<F>> {
        if rows != self.rows {
            bail!(
                "a batch of {rows} images does not fit programs compiled for {} images",
                self.rows
            );
        }
        Ok(&mut *self.exec)
    }
}

/// One batch as the graph takes it: rows `start..end` of the caller's array, and `rows`, the
/// indices to gather for the graph (the real rows, then any padding, which repeats `start`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// First real row.
    pub start: usize,
    /// One past the last real row.
    pub end: usize,
    /// Rows to gather, `end - start` real ones first.
    pub rows: Vec<usize>,
}

impl Batch {
    /// Number of real rows.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the batch has no real rows (never, for the batches [`for_each_batch`] gives).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Calls `f` with the programs and rows of each batch covering `n` rows in order (see the
/// module's doc for how a short last batch runs).
pub fn for_each_batch<F: Scalar>(
    programs: &mut dyn BatchPrograms<F>,
    n: usize,
    mut f: impl FnMut(&mut dyn Exec<F>, &Batch) -> Result<()>,
) -> Result<()> {
    let b = programs.rows();
    if b == 0 {
        bail!("programs compiled for batches of 0 images");
    }
    let pad = programs.pads_exactly();
    for start in (0..n).step_by(b) {
        let end = (start + b).min(n);
        let mut rows: Vec<usize> = (start..end).collect();
        let size = if rows.len() < b && pad {
            rows.resize(b, start);
            b
        } else {
            rows.len()
        };
        f(programs.at(size)?, &Batch { start, end, rows })?;
    }
    Ok(())
}
