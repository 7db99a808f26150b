//! Datasets, augmentation (DSA with exact adjoints), ZCA whitening, selection and image grids.
//!
//! Entry points: [`load`] (a dataset from a spec string), [`augment::Strategy`] /
//! [`augment::apply`] / [`augment::apply_adjoint`], [`zca::Zca`], [`select::select_per_class`],
//! [`grid::save_grid`], [`bench::bench_data`].

pub mod augment;
pub mod bench;
pub mod cifar;
pub mod dataset;
pub mod embedded;
pub mod folder;
pub mod grid;
pub mod idx;
pub mod imagenet;
pub mod npz;
pub mod select;
pub mod zca;

use std::path::Path;

use anyhow::{bail, Context, Result};

pub use dataset::{class_name, Dataset, Split};

/// The dataset specs [`load`] understands, for help texts.
pub const SPECS: &str = "fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, \
     imagenet64:DIR, imagenet32:DIR, tiny:DIR, folder:DIR, fmnist-small";

/// Loads a dataset split from a spec string.
///
/// Specs: `fashion-mnist[:DIR]` (default DIR `/usr/share/datasets/fashion-mnist`), `mnist:DIR`
/// (IDX, gzipped or raw), `cifar10:DIR`, `cifar100:DIR` (binary versions), `imagenet64:DIR`,
/// `imagenet32:DIR` (npz batches), `tiny:DIR` (Tiny-ImageNet), `folder:DIR` (one sub-folder per
/// class) and `fmnist-small` (embedded). `size = Some((h, w))` resizes images (bilinear) to that
/// size; `None` keeps the native size (64×64 for Tiny-ImageNet, the first image's for folders).
/// Resizing an npz/IDX/CIFAR set briefly holds both copies; ImageNet should be loaded at its
/// native size (pick `imagenet32` or `imagenet64`).
pub fn load(spec: &str, split: Split, size: Option<(usize, usize)>) -> Result<Dataset> {
    let (kind, dir) = match spec.split_once(':') {
        Some((k, d)) => (k, Some(d)),
        None => (spec, None),
    };
    let need = || -> Result<&Path> {
        match dir {
            Some(d) if !d.is_empty() => Ok(Path::new(d)),
            _ => bail!("dataset spec `{spec}` needs a directory: `{kind}:DIR`"),
        }
    };
    let ds = match kind {
        "fashion-mnist" | "fmnist" => {
            let d = dir
                .filter(|d| !d.is_empty())
                .unwrap_or(idx::FASHION_MNIST_DIR);
            idx::load_dir(spec, Path::new(d), split, true)
        }
        "mnist" => idx::load_dir(spec, need()?, split, false),
        "cifar10" => cifar::load(spec, need()?, split, false),
        "cifar100" => cifar::load(spec, need()?, split, true),
        "imagenet64" => imagenet::load(spec, need()?, split, 64),
        "imagenet32" => imagenet::load(spec, need()?, split, 32),
        "tiny" => folder::load_tiny(spec, need()?, split, size),
        "folder" => folder::load_folder(spec, need()?, split, size),
        "fmnist-small" => {
            if dir.is_some() {
                bail!("`fmnist-small` is embedded and takes no directory");
            }
            embedded::load(spec, split)
        }
        _ => bail!("unknown dataset `{spec}`; known: {SPECS}"),
    }
    .with_context(|| format!("loading the {} split of `{spec}`", split.name()))?;
    match size {
        Some(s) if (ds.image_shape()[1], ds.image_shape()[2]) != s => resized(ds, s),
        _ => Ok(ds),
    }
}

/// `ds` with every image resized to `size` (only u8-backed sets, which all readers produce).
fn resized(ds: Dataset, size: (usize, usize)) -> Result<Dataset> {
    let [c, h, w] = ds.image_shape();
    let mut pixels = Vec::with_capacity(ds.len() * c * h * w);
    for i in 0..ds.len() {
        pixels.extend_from_slice(ds.pixels_u8(i).context("resizing needs u8 storage")?);
    }
    let out = dataset::resize_u8(&pixels, [c, h, w], size)?;
    drop(pixels);
    Dataset::from_u8(
        ds.name(),
        out,
        [c, size.0, size.1],
        ds.labels().to_vec(),
        ds.class_names().to_vec(),
        ds.mean().to_vec(),
        ds.std().to_vec(),
    )
}
