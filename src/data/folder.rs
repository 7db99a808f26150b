//! Image folders (one sub-folder per class, PNG/JPEG) and the Tiny-ImageNet layout.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::dataset::{norm, Dataset, Split};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

/// Sub-directories of `dir`, sorted by name.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Image files directly inside `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    v.sort();
    Ok(v)
}

/// The most bytes one image may take as RGB: the image crate's default decoding budget.
const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// The most pixels a PNG or JPEG file can hold per byte. A PNG's scanlines take at least one bit
/// per pixel and deflate expands at most 1032:1, so a PNG holds at most 8 · 1032 pixels per byte;
/// a JPEG codes every 8×8 block with at least one bit, at most 512 pixels per byte.
const MAX_PIXELS_PER_BYTE: u64 = 8 * 1032;

/// The size in a header, checked against the file's length ([`MAX_PIXELS_PER_BYTE`]) and
/// [`MAX_IMAGE_BYTES`]: headers are read before pixels, and a corrupt one (a 700-byte JPEG
/// claiming 137 megapixels) is refused there instead of being decoded for seconds into gigabytes
/// of buffers.
fn checked_dimensions(p: &Path) -> Result<(u32, u32)> {
    let (w, h) =
        image::image_dimensions(p).with_context(|| format!("reading image {}", p.display()))?;
    let len = std::fs::metadata(p)
        .with_context(|| format!("reading image {}", p.display()))?
        .len();
    let pixels = u64::from(w) * u64::from(h);
    ensure!(
        pixels <= len.saturating_mul(MAX_PIXELS_PER_BYTE),
        "image {} declares {w}×{h} pixels, more than its {len} bytes can hold (corrupt?)",
        p.display()
    );
    ensure!(
        pixels.checked_mul(3).is_some_and(|b| b <= MAX_IMAGE_BYTES),
        "image {} declares {w}×{h} pixels, more than {} MiB as RGB",
        p.display(),
        MAX_IMAGE_BYTES >> 20
    );
    Ok((w, h))
}

/// Decodes one image whose header passes [`checked_dimensions`].
fn open_image(p: &Path) -> Result<image::DynamicImage> {
    checked_dimensions(p)?;
    image::open(p).with_context(|| format!("decoding image {}", p.display()))
}

/// Decodes every file to planar u8 at `size` (default: the first image's size); 1 channel when
/// `allow_grey` and every image is grey-level, else RGB.
fn decode_all(
    items: &[(PathBuf, u32)],
    size: Option<(usize, usize)>,
    allow_grey: bool,
) -> Result<(Vec<u8>, [usize; 3])> {
    let first = &items.first().context("no images found")?.0;
    let (h, w) = match size {
        Some(s) => s,
        None => {
            let (w, h) = checked_dimensions(first)?;
            (h as usize, w as usize)
        }
    };
    ensure!(h > 0 && w > 0, "image size {h}×{w} is empty");
    let decoded: Vec<(Vec<u8>, bool)> = items
        .par_iter()
        .map(|(p, _)| -> Result<(Vec<u8>, bool)> {
            let img = open_image(p)?;
            let grey = !img.color().has_color();
            let mut rgb = img.to_rgb8();
            if rgb.dimensions() != (w as u32, h as u32) {
                rgb = image::imageops::resize(
                    &rgb,
                    w as u32,
                    h as u32,
                    image::imageops::FilterType::Triangle,
                );
            }
            let mut planes: [Vec<u8>; 3] = std::array::from_fn(|_| Vec::with_capacity(h * w));
            for px in rgb.pixels() {
                for (plane, &v) in planes.iter_mut().zip(&px.0) {
                    plane.push(v);
                }
            }
            Ok((planes.concat(), grey))
        })
        .collect::<Result<_>>()?;
    let grey = allow_grey && decoded.iter().all(|(_, g)| *g);
    let c = if grey { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(items.len() * c * h * w);
    for (mut d, _) in decoded {
        d.truncate(c * h * w);
        pixels.extend_from_slice(&d);
    }
    Ok((pixels, [c, h, w]))
}

fn finish(
    name: &str,
    items: Vec<(PathBuf, u32)>,
    classes: Vec<String>,
    size: Option<(usize, usize)>,
    allow_grey: bool,
) -> Result<Dataset> {
    let (pixels, chw) = decode_all(&items, size, allow_grey)?;
    let (mean, std) = if chw[0] == 1 {
        (norm::GREY_MEAN.to_vec(), norm::GREY_STD.to_vec())
    } else {
        (norm::IMAGENET_MEAN.to_vec(), norm::IMAGENET_STD.to_vec())
    };
    let labels = items.iter().map(|(_, l)| *l).collect();
    Dataset::from_u8(name, pixels, chw, labels, classes, mean, std)
}

/// Loads an image folder.
///
/// Layout: `DIR/train/<class>/*` with `DIR/test/<class>/*` (or `DIR/val/…`) for the test split;
/// or `DIR/<class>/*` alone, which is the training split (the test split then is an error, so
/// that no one evaluates on training images by accident). Classes are the training
/// sub-folders in name order; images are resized to `size` (default: the first image's size);
/// the set is grey-level (1 channel) when every training image is. Normalisation uses the
/// ImageNet constants (their average for grey-level sets).
pub fn load_folder(
    name: &str,
    dir: &Path,
    split: Split,
    size: Option<(usize, usize)>,
) -> Result<Dataset> {
    ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let train_dir = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.to_path_buf()
    };
    let classes: Vec<String> = subdirs(&train_dir)?.into_iter().map(|(n, _)| n).collect();
    ensure!(
        !classes.is_empty(),
        "{} has no class sub-folders",
        train_dir.display()
    );
    let split_dir = match split {
        Split::Train => train_dir.clone(),
        Split::Test => {
            let t = ["test", "val"]
                .iter()
                .map(|s| dir.join(s))
                .find(|p| p.is_dir());
            match t {
                Some(t) if train_dir != dir => t,
                _ => bail!(
                    "{}: no train/ and test/ (or val/) sub-folders, so there is no test split",
                    dir.display()
                ),
            }
        }
    };
    let index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut items = Vec::new();
    for (cname, cdir) in subdirs(&split_dir)? {
        let l = *index.get(cname.as_str()).with_context(|| {
            format!(
                "class folder {} is not among the training classes",
                cdir.display()
            )
        })?;
        items.extend(image_files(&cdir)?.into_iter().map(|p| (p, l)));
    }
    ensure!(
        !items.is_empty(),
        "no PNG/JPEG images under {}",
        split_dir.display()
    );
    // Grey-level detection must not depend on the split, so a test set follows its train set.
    let allow_grey = match split {
        Split::Train => true,
        Split::Test => load_is_grey(&train_dir)?,
    };
    finish(name, items, classes, size, allow_grey)
}

/// True when every training image is grey-level (decides the channel count of both splits).
fn load_is_grey(train_dir: &Path) -> Result<bool> {
    for (_, cdir) in subdirs(train_dir)? {
        for p in image_files(&cdir)? {
            let img = open_image(&p)?;
            if img.color().has_color() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Loads Tiny-ImageNet: `train/<wnid>/images/*.JPEG`; `val/images/*.JPEG` labelled by
/// `val/val_annotations.txt` (`file<TAB>wnid<TAB>…`), or `val/<wnid>/…` when re-organised.
/// Classes are the training wnids in name order (torchvision `ImageFolder` order), named from
/// `words.txt` when present. Default size 64×64, always RGB, ImageNet normalisation.
pub fn load_tiny(
    name: &str,
    dir: &Path,
    split: Split,
    size: Option<(usize, usize)>,
) -> Result<Dataset> {
    let train = dir.join("train");
    let wnids: Vec<(String, PathBuf)> = subdirs(&train)?;
    ensure!(
        !wnids.is_empty(),
        "{} has no class folders",
        train.display()
    );
    let index: HashMap<String, u32> = wnids
        .iter()
        .enumerate()
        .map(|(i, (w, _))| (w.clone(), i as u32))
        .collect();
    let mut items = Vec::new();
    match split {
        Split::Train => {
            for ((_, p), l) in wnids.iter().zip(0u32..) {
                let imgs = if p.join("images").is_dir() {
                    p.join("images")
                } else {
                    p.clone()
                };
                items.extend(image_files(&imgs)?.into_iter().map(|f| (f, l)));
            }
        }
        Split::Test => {
            let val = dir.join("val");
            let ann = val.join("val_annotations.txt");
            if ann.is_file() {
                let text = std::fs::read_to_string(&ann)
                    .with_context(|| format!("reading {}", ann.display()))?;
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let mut f = line.split('\t');
                    let (file, wnid) = match (f.next(), f.next()) {
                        (Some(a), Some(b)) => (a.trim(), b.trim()),
                        _ => bail!("{}: line {} is not `file<TAB>wnid…`", ann.display(), i + 1),
                    };
                    let l = *index.get(wnid).with_context(|| {
                        format!("{}: line {}: unknown wnid {wnid}", ann.display(), i + 1)
                    })?;
                    items.push((val.join("images").join(file), l));
                }
            } else {
                for (w, p) in subdirs(&val)? {
                    let l = *index
                        .get(&w)
                        .with_context(|| format!("{}: unknown class folder", p.display()))?;
                    let imgs = if p.join("images").is_dir() {
                        p.join("images")
                    } else {
                        p
                    };
                    items.extend(image_files(&imgs)?.into_iter().map(|f| (f, l)));
                }
            }
        }
    }
    ensure!(
        !items.is_empty(),
        "no images for the {} split in {}",
        split.name(),
        dir.display()
    );
    let mut words: HashMap<String, String> = HashMap::new();
    if let Ok(s) = std::fs::read_to_string(dir.join("words.txt")) {
        for line in s.lines() {
            if let Some((w, n)) = line.split_once('\t') {
                let first = n.split(',').next().unwrap_or(n).trim();
                words.insert(w.to_string(), first.to_string());
            }
        }
    }
    let classes = wnids
        .iter()
        .map(|(w, _)| words.get(w).cloned().unwrap_or_else(|| w.clone()))
        .collect();
    finish(name, items, classes, Some(size.unwrap_or((64, 64))), false)
}
