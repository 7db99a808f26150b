//! Downsampled ImageNet (32×32 or 64×64) in npz form: `train_data_batch_1.npz` …
//! `train_data_batch_10.npz` and `val_data.npz`, each with `data` (uint8, N×3·S·S, planar RGB)
//! and `labels` (1-based).
//!
//! Memory stays at one byte per pixel: the headers are read first to size one buffer, then every
//! batch streams into its slice of it (no second copy of the set).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::dataset::{norm, Dataset, Split};
use super::npz::Npz;

/// Number of ImageNet-1K classes.
pub const CLASSES: usize = 1000;

/// The batch files of `split` in `dir`, in batch order.
fn batch_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    match split {
        Split::Test => {
            let p = dir.join("val_data.npz");
            ensure!(p.is_file(), "no val_data.npz in {}", dir.display());
            Ok(vec![p])
        }
        Split::Train => {
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let k = name
                        .strip_prefix("train_data_batch_")?
                        .strip_suffix(".npz")?
                        .parse()
                        .ok()?;
                    Some((k, e.path()))
                })
                .collect();
            ensure!(
                !found.is_empty(),
                "no train_data_batch_*.npz in {}",
                dir.display()
            );
            found.sort();
            Ok(found.into_iter().map(|(_, p)| p).collect())
        }
    }
}

/// Class names from `map_clsloc.txt` (`wnid index name` per line) when present, else "1"…"1000".
fn class_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = (1..=CLASSES).map(|i| i.to_string()).collect();
    if let Ok(s) = std::fs::read_to_string(dir.join("map_clsloc.txt")) {
        for line in s.lines() {
            let mut it = line.split_whitespace();
            if let (Some(_), Some(idx), Some(name)) = (it.next(), it.next(), it.next()) {
                // 1-based; out-of-range indices are ignored.
                if let Some(slot) = idx
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|k| names.get_mut(k))
                {
                    *slot = name.to_string();
                }
            }
        }
    }
    names
}

/// Loads downsampled ImageNet with side `side` (32 or 64) from `dir`.
pub fn load(name: &str, dir: &Path, split: Split, side: usize) -> Result<Dataset> {
    let files = batch_files(dir, split)?;
    let per = 3 * side * side;
    let mut counts = Vec::with_capacity(files.len());
    for f in &files {
        let h = Npz::open(f)?.header("data")?;
        match *h.shape.as_slice() {
            [n, p] if p == per => counts.push(n),
            _ => bail!(
                "{}: data has shape {:?}, expected N×{per} for {side}×{side} RGB",
                f.display(),
                h.shape
            ),
        }
    }
    let total: usize = counts.iter().sum();
    let bytes = total.checked_mul(per).context("dataset size overflows")?;
    let mut pixels = vec![0u8; bytes];
    let mut labels = Vec::with_capacity(total);
    let mut at = 0;
    for (f, &n) in files.iter().zip(&counts) {
        let mut z = Npz::open(f)?;
        // In range: the buffer was sized from these counts.
        let dst = pixels.get_mut(at * per..(at + n) * per).with_context(|| {
            format!(
                "{}: {n} images do not fit the buffer sized from the headers",
                f.display()
            )
        })?;
        z.read_u8_into("data", dst)?;
        let (_, l) = z.read_ints("labels")?;
        ensure!(
            l.len() == n,
            "{}: {} labels for {n} images",
            f.display(),
            l.len()
        );
        for (i, &v) in l.iter().enumerate() {
            if !(1..=CLASSES as i64).contains(&v) {
                bail!(
                    "{}: label {v} at position {i} is not in 1..={CLASSES}",
                    f.display()
                );
            }
            labels.push((v - 1) as u32);
        }
        at += n;
    }
    Dataset::from_u8(
        name,
        pixels,
        [3, side, side],
        labels,
        class_names(dir),
        norm::IMAGENET_MEAN.to_vec(),
        norm::IMAGENET_STD.to_vec(),
    )
}
