//! A student or training batch run as several graph calls of fewer images each.
//!
//! When every image is treated on its own, a batch's step, pass-2 product, logits and label VJP
//! are sums (or concatenations) of the same graphs over parts of it: the loss is the mean over the
//! batch, so part `c` of `b` rows contributes `b/B` of its mean and of its gradients. The smaller
//! calls keep each intermediate a tenth of the size, which is faster on a CPU (ConvNet-D3 at batch
//! 100 against ten calls of 10: 578 against 516 ms for the pass-2 product, 285 against 241 ms for
//! the step) and holds a tenth of the activations. The unrolled graph couples every image of a
//! step with the next step's parameters, so it is never split.

use super::programs::{Artifact, Exec, Scalar};
use anyhow::{anyhow, bail, Result};
use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, Slice};

/// The most images one call takes when a batch is split: at ConvNet-D3's (width 32) and
/// ConvNet-D4's shapes calls of 10 ran fastest of 4, 10, 20, 50 and 100.
pub const MAX_ROWS_PER_CALL: usize = 10;

/// The fewest images a split call takes: below this a call's fixed cost and the small matrix
/// products outweigh the smaller intermediates, so such a batch runs whole.
const MIN_ROWS_PER_CALL: usize = 4;

/// The size up to which a call's largest intermediate keeps the calls fast: about one core's
/// cache, where the elementwise passes over it stay. ConvNet-D3 at width 128 (512 KiB an image at
/// its first layer) ran pass 2 in the images, the product tesla mode runs at every step, 3 to 6 %
/// faster as calls of 4 or 5 than of 8 or 10, two side by side, and held fewer activations;
/// ConvNet-D4 at 64×64 (2 MiB an image) overflows it at any call size and ran as fast as calls of
/// 10. A constant, not the machine's cache, so that a batch is cut the same way on every machine.
pub const CALL_ACTIVATION_BYTES: usize = 5 << 19;

/// The number of calls a split batch is cut into a multiple of, where it can be: the programs run
/// calls side by side (`runtime::side_by_side`), two on a 2-core machine, and an odd count
/// leaves a lane idle through the last round. It is a constant, not the machine's lane count, so
/// that a batch is cut the same way, and sums to the same bits, on every machine.
pub const CALLS_IN_STEPS_OF: usize = 2;

/// The most images a call takes for a model whose largest intermediate is `image_bytes` per image:
/// as many as keep that intermediate within [`CALL_ACTIVATION_BYTES`], from 4 to
/// [`MAX_ROWS_PER_CALL`]; where even 4 overflow it, [`MAX_ROWS_PER_CALL`], so that the call's
/// fixed work (the weights' transposes, the parameter gradient's sums) is shared by more images.
pub fn most_rows_per_call(image_bytes: usize) -> usize {
    match CALL_ACTIVATION_BYTES.checked_div(image_bytes) {
        Some(r) if r >= MIN_ROWS_PER_CALL => r.min(MAX_ROWS_PER_CALL),
        _ => MAX_ROWS_PER_CALL,
    }
}

/// How many images each graph call of a `batch`-image student batch takes. When images are
/// independent: the largest divisor of `batch` from 4 to [`most_rows_per_call`] of `image_bytes`
/// (the model's largest intermediate for one image), or failing one to [`MAX_ROWS_PER_CALL`], that
/// cuts it into a multiple of [`CALLS_IN_STEPS_OF`] calls (a batch of 10: two calls of 5, which
/// ran ConvNet-D3's step 1.2 to 1.3 times as fast as one call of 10 on both cores); failing that,
/// the whole batch when it is at most 10, or the largest such divisor at all (in the same order of
/// ranges), or the whole batch when it has none. A model with batch statistics runs whole.
/// `requested` (from `TESLA_ROWS_PER_CALL`) overrides the rule and must divide the batch.
pub fn rows_per_call(
    batch: usize,
    images_independent: bool,
    image_bytes: usize,
    requested: Option<usize>,
) -> Result<usize> {
    if let Some(r) = requested {
        if r == 0 || !batch.is_multiple_of(r) {
            bail!("TESLA_ROWS_PER_CALL={r} must divide the student batch ({batch})");
        }
        if r != batch && !images_independent {
            bail!(
                "TESLA_ROWS_PER_CALL={r} splits the batch, but the model normalises with batch \
                 statistics, so its images cannot be run apart"
            );
        }
        return Ok(r);
    }
    if !images_independent {
        return Ok(batch);
    }
    // Within the cache size first; where no divisor is, up to the most a call takes at all.
    let limits = [most_rows_per_call(image_bytes), MAX_ROWS_PER_CALL];
    let divisors = |most: usize| {
        (MIN_ROWS_PER_CALL..=most)
            .rev()
            .filter(move |&r| batch.is_multiple_of(r))
    };
    let even = |r: &usize| (batch / r).is_multiple_of(CALLS_IN_STEPS_OF);
    if let Some(r) = limits.iter().find_map(|&m| divisors(m).find(even)) {
        return Ok(r);
    }
    if batch <= MAX_ROWS_PER_CALL {
        return Ok(batch);
    }
    Ok(limits
        .iter()
        .find_map(|&m| divisors(m).next())
        .unwrap_or(batch))
}

/// `TESLA_ROWS_PER_CALL` when set: a number of images per graph call, for measurements.
pub fn requested_rows_per_call() -> Result<Option<usize>> {
    match std::env::var("TESLA_ROWS_PER_CALL") {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("TESLA_ROWS_PER_CALL must be a number of images, not {v:?}")),
        Err(_) => Ok(None),
    }
}

/// How an artifact's output combines over the calls.
#[derive(Clone, Copy)]
enum Combine {
    /// One row per image, from the batch's mean loss: the part's rows times `b/B`.
    RowsOfMean,
    /// One row per image of a sum over the rows: the part's rows as they are.
    Rows,
    /// A mean over the batch (the loss) or its derivative with respect to θ: `b/B` of each part's.
    Mean,
}

/// The inputs with one row per image, and how each output combines, for an artifact that can be
/// split; `None` for the unrolled graph.
fn layout(which: Artifact) -> Option<(&'static [usize], &'static [Combine])> {
    use Combine::*;
    match which {
        Artifact::Step => Some((&[1, 2], &[Mean, Mean])),
        Artifact::Pass2 => Some((&[1, 2], &[RowsOfMean, Mean, RowsOfMean, Mean])),
        Artifact::Pass2Dx => Some((&[1, 2], &[RowsOfMean])),
        Artifact::Logits => Some((&[1], &[Rows])),
        Artifact::LabelVjp => Some((&[1, 2], &[Rows])),
        Artifact::Unrolled => None,
    }
}

/// Programs for batches of `rows` images over programs compiled for `per_call` images of a model
/// that treats each image on its own.
pub struct RowChunks<'a, F: Scalar = f32> {
    inner: &'a mut dyn Exec<F>,
    rows: usize,
    per_call: usize,
}

impl<'a, F: Scalar> RowChunks<'a, F> {
    /// Runs `rows`-image batches as calls of `per_call` images on `inner` (compiled for
    /// `per_call`); `per_call` must divide `rows`, and the caller has checked that the model's
    /// images are independent (see [`rows_per_call`]).
    pub fn new(
        inner: &'a mut dyn Exec<F>,
        rows: usize,
        per_call: usize,
    ) -> Result<RowChunks<'a, F>> {
        if per_call == 0 || !rows.is_multiple_of(per_call) {
            bail!("a batch of {rows} images cannot be run in calls of {per_call}");
        }
        Ok(RowChunks {
            inner,
            rows,
            per_call,
        })
    }
}

impl<F: Scalar> Exec<F> for RowChunks<'_, F> {
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, F>]) -> Result<Vec<ArrayD<F>>> {
        if self.per_call == self.rows {
            return self.inner.run(which, inputs);
        }
        let Some((row_inputs, combine)) = layout(which) else {
            bail!("the {which:?} graph runs whole batches and cannot be split into calls");
        };
        for &i in row_inputs {
            let n = inputs.get(i).and_then(|a| a.shape().first().copied());
            if n != Some(self.rows) {
                bail!(
                    "input {i} of the {which:?} graph has {n:?} rows, the batch {}",
                    self.rows
                );
            }
        }
        let share = F::narrow(self.per_call as f64 / self.rows as f64);
        let mut sums: Vec<Option<ArrayD<F>>> = vec![None; combine.len()];
        let mut parts: Vec<Vec<ArrayD<F>>> = vec![Vec::new(); combine.len()];
        let starts: Vec<usize> = (0..self.rows).step_by(self.per_call).collect();
        // As many calls at once as the programs run side by side, so that at most that many
        // calls' outputs are held before they are added up.
        for round in starts.chunks(self.inner.lanes().max(1)) {
            let calls: Vec<Vec<ArrayViewD<'_, F>>> = round
                .iter()
                .map(|&start| {
                    inputs
                        .iter()
                        .enumerate()
                        .map(|(i, a)| {
                            if row_inputs.contains(&i) {
                                a.slice_axis(Axis(0), Slice::from(start..start + self.per_call))
                            } else {
                                a.view()
                            }
                        })
                        .collect()
                })
                .collect();
            for outs in self.inner.run_side_by_side(which, &calls)? {
                if outs.len() != combine.len() {
                    bail!(
                        "the {which:?} graph returned {} outputs, not {}",
                        outs.len(),
                        combine.len()
                    );
                }
                for (k, (out, how)) in outs.into_iter().zip(combine).enumerate() {
                    match how {
                        Combine::Mean => match &mut sums[k] {
                            Some(s) if s.shape() == out.shape() => *s += &out,
                            Some(_) => bail!("the {which:?} graph's output {k} changed shape"),
                            None => sums[k] = Some(out),
                        },
                        Combine::RowsOfMean | Combine::Rows => parts[k].push(out),
                    }
                }
            }
        }
        combine
            .iter()
            .zip(sums.into_iter().zip(parts))
            .map(|(how, (sum, rows))| match how {
                Combine::Mean => sum
                    .map(|s| s * share)
                    .ok_or_else(|| anyhow!("the batch had no rows")),
                Combine::Rows | Combine::RowsOfMean => {
                    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                    let joined = concatenate(Axis(0), &views)?;
                    Ok(match how {
                        Combine::RowsOfMean => joined * share,
                        _ => joined,
                    })
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cut of a `batch` of independent images of `image_bytes` each, nothing requested.
    fn cut(batch: usize, image_bytes: usize) -> usize {
        rows_per_call(batch, true, image_bytes, None).unwrap()
    }

    #[test]
    fn the_largest_divisor_up_to_ten_and_at_least_four_in_an_even_count() {
        // 128 KiB an image: calls of up to 10 stay within the cache size.
        let rule = |b| cut(b, 128 << 10);
        assert_eq!(rule(100), 10);
        assert_eq!(rule(1000), 10);
        assert_eq!(rule(256), 8);
        assert_eq!(rule(12), 6);
        // Ten images: two calls of 5; eight: two of 4.
        assert_eq!(rule(10), 5);
        assert_eq!(rule(8), 4);
        // 30 as calls of 10 is three calls; as calls of 5, six.
        assert_eq!(rule(30), 5);
        // No even count: the largest divisor, or the whole batch.
        assert_eq!(rule(6), 6);
        assert_eq!(rule(7), 7);
        assert_eq!(rule(45), 9);
        // No divisor from 4 to 10: the batch runs whole.
        assert_eq!(rule(22), 22);
        assert_eq!(rule(97), 97);
        assert_eq!(rows_per_call(100, false, 128 << 10, None).unwrap(), 100);
        assert_eq!(rows_per_call(10, false, 128 << 10, None).unwrap(), 10);
    }

    #[test]
    fn larger_images_take_fewer_rows_until_none_fit() {
        // 512 KiB an image (ConvNet-D3, width 128, at its first layer): at most 5 rows.
        let rule = |b| cut(b, 512 << 10);
        assert_eq!(rule(256), 4);
        assert_eq!(rule(100), 5);
        assert_eq!(rule(10), 5);
        assert_eq!(rule(40), 5);
        // No divisor from 4 to 5 in an even count: one up to 10 in an even count (28 as four
        // calls of 7, not seven of 4), else a small batch whole and a large one as calls of its
        // largest divisor up to 10 (63 as seven of 9), never whole.
        assert_eq!(rule(28), 7);
        assert_eq!(rule(12), 6);
        assert_eq!(rule(9), 9);
        assert_eq!(rule(63), 9);
        assert_eq!(rule(45), 5);
        assert_eq!(rule(97), 97);
        assert_eq!(most_rows_per_call(512 << 10), 5);
        assert_eq!(most_rows_per_call(640 << 10), 4);
        // Four rows overflow the cache size: the largest calls again.
        assert_eq!(most_rows_per_call(641 << 10), MAX_ROWS_PER_CALL);
        assert_eq!(most_rows_per_call(2 << 20), MAX_ROWS_PER_CALL);
        assert_eq!(cut(100, 2 << 20), 10);
        // Small images: capped at the most rows a call takes.
        assert_eq!(most_rows_per_call(1 << 10), MAX_ROWS_PER_CALL);
        assert_eq!(most_rows_per_call(0), MAX_ROWS_PER_CALL);
    }

    #[test]
    fn a_requested_size_must_divide_and_keep_batch_statistics_whole() {
        let ask = |independent, r| rows_per_call(100, independent, 128 << 10, Some(r));
        let refused = |independent, r| ask(independent, r).unwrap_err().to_string();
        assert_eq!(ask(true, 25).unwrap(), 25);
        assert_eq!(ask(false, 100).unwrap(), 100);
        let e = refused(true, 30);
        assert!(e.contains("must divide"), "{e}");
        let e = refused(true, 0);
        assert!(e.contains("must divide"), "{e}");
        let e = refused(false, 10);
        assert!(e.contains("batch statistics"), "{e}");
    }
}
