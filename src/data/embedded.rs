//! `fmnist-small`: a class-balanced Fashion-MNIST subset (500 train + 100 test images per class)
//! compiled into the binary; see `assets/README.md` for its origin and how it is regenerated.

use anyhow::{Context, Result};

use super::dataset::{norm, Dataset, Split};
use super::idx::{maybe_gunzip, parse_idx, to_dataset, FASHION_MNIST_CLASSES};

const TRAIN_IMAGES: &[u8] = include_bytes!("../../assets/fmnist-small/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../assets/fmnist-small/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../assets/fmnist-small/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../assets/fmnist-small/t10k-labels-idx1-ubyte.gz");

/// Images per class in the embedded training split.
pub const TRAIN_PER_CLASS: usize = 500;
/// Images per class in the embedded test split.
pub const TEST_PER_CLASS: usize = 100;

/// Loads the embedded Fashion-MNIST subset.
pub fn load(name: &str, split: Split) -> Result<Dataset> {
    let (img, lab, what) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, "train"),
        Split::Test => (TEST_IMAGES, TEST_LABELS, "t10k"),
    };
    let decode = |b: &[u8], kind: &str| {
        maybe_gunzip(b.to_vec())
            .map_err(anyhow::Error::from)
            .and_then(parse_idx)
            .with_context(|| format!("embedded fmnist-small {what}-{kind}"))
    };
    to_dataset(
        name,
        decode(img, "images")?,
        decode(lab, "labels")?,
        ("embedded images", "embedded labels"),
        &FASHION_MNIST_CLASSES,
        &norm::FASHION_MNIST_MEAN,
        &norm::FASHION_MNIST_STD,
    )
}
