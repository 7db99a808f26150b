//! IDX files (MNIST, Fashion-MNIST), gzipped or raw.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::dataset::{norm, Dataset, Split};

/// Fashion-MNIST class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Default location of the Debian package `dataset-fashion-mnist`.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A decoded IDX array of u8 values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<u8>,
}

/// The most deflate can expand its input (RFC 1951's longest match per shortest code, about
/// 1032:1): an upper bound on a gzip file's uncompressed size that does not trust its trailer.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Decompresses `bytes` when they start with the gzip magic, else returns them as they are.
pub(crate) fn maybe_gunzip(bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // The gzip trailer holds the uncompressed size mod 2³²: reserving it exactly avoids the
        // doubling growth of the output buffer (peak memory during loading). The trailer is
        // read from the file unchecked, so the reservation is bounded by what deflate can
        // expand to (at most 1032:1); a corrupt trailer then costs growth, not a 4 GiB buffer.
        let isize = bytes
            .last_chunk::<4>()
            .map(|&t| u32::from_le_bytes(t) as usize)
            .unwrap_or(0)
            .min(bytes.len().saturating_mul(MAX_DEFLATE_RATIO));
        let cap = if isize >= bytes.len() {
            isize
        } else {
            bytes.len() * 4
        };
        let mut out = Vec::with_capacity(cap);
        flate2::read::MultiGzDecoder::new(bytes.as_slice()).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses an IDX byte stream (already decompressed) holding unsigned bytes; the data bytes
/// are moved out of `bytes`, not copied.
pub fn parse_idx(mut bytes: Vec<u8>) -> Result<IdxArray> {
    let &[m0, m1, ty, ndim] = bytes
        .first_chunk::<4>()
        .with_context(|| format!("too short for an IDX header ({} bytes)", bytes.len()))?;
    ensure!(
        m0 == 0 && m1 == 0,
        "bad IDX magic {m0:02x}{m1:02x}{ty:02x}{ndim:02x}"
    );
    ensure!(
        ty == 0x08,
        "IDX element type 0x{ty:02x} is not unsigned byte (0x08)"
    );
    let ndim = ndim as usize;
    ensure!((1..=4).contains(&ndim), "IDX rank {ndim} is not 1..4");
    let header = 4 + 4 * ndim;
    let (dim_bytes, body) = bytes
        .get(4..header)
        .zip(bytes.get(header..))
        .with_context(|| format!("truncated IDX header: {} bytes, need {header}", bytes.len()))?;
    let dims: Vec<usize> = dim_bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|&b| u32::from_be_bytes(b) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("IDX dimensions overflow")?;
    ensure!(
        body.len() >= count,
        "truncated: dimensions {dims:?} need {count} data bytes, found {}",
        body.len()
    );
    ensure!(
        body.len() == count,
        "{} trailing bytes after {count} data bytes for dimensions {dims:?}",
        body.len() - count
    );
    bytes.drain(..header);
    Ok(IdxArray { dims, data: bytes })
}

/// Reads an IDX file, gzipped or raw; errors name the file.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = maybe_gunzip(raw).with_context(|| format!("decompressing {}", path.display()))?;
    parse_idx(bytes).with_context(|| format!("parsing IDX file {}", path.display()))
}

/// Finds `stem` in `dir` as `stem.gz`, `stem`, or with the alternative `.idx` spelling.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let alt = stem.replacen("-idx", ".idx", 1);
    for name in [
        format!("{stem}.gz"),
        stem.to_string(),
        format!("{alt}.gz"),
        alt,
    ] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no {stem}[.gz] in {}", dir.display())
}

/// Combines an image and a label IDX array into a dataset, checking they agree.
pub(crate) fn to_dataset(
    name: &str,
    images: IdxArray,
    labels: IdxArray,
    files: (&str, &str),
    classes: &[&str],
    mean: &[f32],
    std: &[f32],
) -> Result<Dataset> {
    let &[n_images, h, w] = images.dims.as_slice() else {
        bail!(
            "{}: image file has rank {}, expected 3 (N×H×W)",
            files.0,
            images.dims.len()
        );
    };
    let &[n_labels] = labels.dims.as_slice() else {
        bail!(
            "{}: label file has rank {}, expected 1",
            files.1,
            labels.dims.len()
        );
    };
    ensure!(
        n_images == n_labels,
        "{} holds {n_images} images but {} holds {n_labels} labels",
        files.0,
        files.1
    );
    if let Some((pos, l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes.len())
    {
        bail!(
            "{}: label {l} at position {pos} is not below {}",
            files.1,
            classes.len()
        );
    }
    Dataset::from_u8(
        name,
        images.data,
        [1, h, w],
        labels.data.into_iter().map(u32::from).collect(),
        classes.iter().map(|s| s.to_string()).collect(),
        mean.to_vec(),
        std.to_vec(),
    )
}

/// Loads MNIST-layout IDX files from `dir` (`train-images-idx3-ubyte[.gz]`, `t10k-…`).
pub fn load_dir(name: &str, dir: &Path, split: Split, fashion: bool) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&ip)?;
    let labels = read_idx(&lp)?;
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let digit_refs: Vec<&str> = digits.iter().map(String::as_str).collect();
    let (classes, mean, std): (&[&str], &[f32], &[f32]) = if fashion {
        (
            &FASHION_MNIST_CLASSES,
            &norm::FASHION_MNIST_MEAN,
            &norm::FASHION_MNIST_STD,
        )
    } else {
        (&digit_refs, &norm::MNIST_MEAN, &norm::MNIST_STD)
    };
    to_dataset(
        name,
        images,
        labels,
        (&ip.display().to_string(), &lp.display().to_string()),
        classes,
        mean,
        std,
    )
}
