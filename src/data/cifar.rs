//! CIFAR-10 and CIFAR-100, binary versions.
//!
//! CIFAR-10 records are `label, 3072 pixels` (`data_batch_1.bin` … `data_batch_5.bin`,
//! `test_batch.bin`); CIFAR-100 records are `coarse, fine, 3072 pixels` (`train.bin`,
//! `test.bin`), of which the fine label is used. Pixels are planar R, G, B, 32×32 each.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::dataset::{norm, Dataset, Split};

/// CIFAR-10 class names.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names, by fine label.
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

const PIXELS: usize = 3 * 32 * 32;

/// The directory holding the batches: `dir` itself or its usual archive sub-folder.
fn batch_dir(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    if !dir.join(probe).is_file() && dir.join(sub).join(probe).is_file() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

/// Class names from a metadata file (one per line) when present and of the right count.
fn names_from(path: &Path, default: &[&str]) -> Vec<String> {
    let from_file = std::fs::read_to_string(path).ok().map(|s| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    });
    match from_file {
        Some(v) if v.len() == default.len() => v,
        _ => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// Appends the records of one binary batch file to `pixels`/`labels`.
fn read_records(
    path: &Path,
    label_bytes: usize,
    label_at: usize,
    classes: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rec = label_bytes + PIXELS;
    ensure!(
        !bytes.is_empty() && bytes.len() % rec == 0,
        "{}: {} bytes is not a whole number of {rec}-byte records (truncated or not a CIFAR \
         binary file)",
        path.display(),
        bytes.len()
    );
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let (Some(&l), Some(px)) = (r.get(label_at), r.get(label_bytes..)) else {
            bail!(
                "{}: record {i} is shorter than its {label_bytes} label bytes",
                path.display()
            );
        };
        if l as usize >= classes {
            bail!(
                "{}: record {i} has label {l}, not below {classes}",
                path.display()
            );
        }
        labels.push(u32::from(l));
        pixels.extend_from_slice(px);
    }
    Ok(())
}

/// Loads CIFAR-10 (`fine == false`) or CIFAR-100 from `dir`.
pub fn load(name: &str, dir: &Path, split: Split, hundred: bool) -> Result<Dataset> {
    let (files, dir, label_bytes, label_at, classes): (Vec<String>, PathBuf, _, _, Vec<String>) =
        if hundred {
            let d = batch_dir(dir, "cifar-100-binary", "test.bin");
            let f = match split {
                Split::Train => vec!["train.bin".to_string()],
                Split::Test => vec!["test.bin".to_string()],
            };
            let names = names_from(&d.join("fine_label_names.txt"), &CIFAR100_CLASSES);
            (f, d, 2, 1, names)
        } else {
            let d = batch_dir(dir, "cifar-10-batches-bin", "test_batch.bin");
            let f = match split {
                Split::Train => (1..=5).map(|k| format!("data_batch_{k}.bin")).collect(),
                Split::Test => vec!["test_batch.bin".to_string()],
            };
            let names = names_from(&d.join("batches.meta.txt"), &CIFAR10_CLASSES);
            (f, d, 1, 0, names)
        };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        read_records(
            &dir.join(f),
            label_bytes,
            label_at,
            classes.len(),
            &mut pixels,
            &mut labels,
        )?;
    }
    Dataset::from_u8(
        name,
        pixels,
        [3, 32, 32],
        labels,
        classes,
        norm::CIFAR_MEAN.to_vec(),
        norm::CIFAR_STD.to_vec(),
    )
}
