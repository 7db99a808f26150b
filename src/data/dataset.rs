//! The in-memory dataset: images (u8 pixels or normalised f32), labels, class names,
//! normalisation constants and a per-class index.

use anyhow::{bail, ensure, Result};
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set.
    Train,
    /// The test (or validation) set.
    Test,
}

impl Split {
    /// Lower-case name, as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Per-channel normalisation constants (docs/method.md, Preprocessing).
pub mod norm {
    /// Fashion-MNIST mean.
    pub const FASHION_MNIST_MEAN: [f32; 1] = [0.2861];
    /// Fashion-MNIST std.
    pub const FASHION_MNIST_STD: [f32; 1] = [0.3530];
    /// MNIST mean (the usual torchvision constant).
    pub const MNIST_MEAN: [f32; 1] = [0.1307];
    /// MNIST std.
    pub const MNIST_STD: [f32; 1] = [0.3081];
    /// CIFAR mean (the CIFAR-10 constants, used for CIFAR-100 too).
    pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
    /// CIFAR std.
    pub const CIFAR_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];
    /// ImageNet mean (also Tiny-ImageNet and RGB image folders).
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet std.
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
    /// Grey-level image folders: the average of the ImageNet channel constants.
    pub const GREY_MEAN: [f32; 1] = [0.449];
    /// Grey-level image folders std.
    pub const GREY_STD: [f32; 1] = [0.226];
}

/// Pixel storage. u8 keeps ImageNet-scale sets at one byte per value; normalised f32 is
/// produced per batch. F32 holds values that are already normalised (e.g. after ZCA).
#[derive(Clone, Debug)]
enum Storage {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// A labelled image set, N×C×H×W, with the constants needed to normalise and de-normalise it.
///
/// Images come out normalised, `(pixel/255 − mean_c)/std_c`, through [`Dataset::batch`] or
/// [`Dataset::images`]; u8-backed sets normalise lazily so memory stays at one byte per value.
#[derive(Clone)]
pub struct Dataset {
    name: String,
    n: usize,
    chw: [usize; 3],
    storage: Storage,
    labels: Vec<u32>,
    class_names: Vec<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
    class_index: Vec<Vec<usize>>,
    /// u8 → normalised f32 lookup table per channel (256 entries each).
    lut: Vec<f32>,
}

impl Dataset {
    /// Builds a dataset from raw u8 pixels laid out N×C×H×W.
    ///
    /// Errors if the sizes disagree, a label is out of range, or mean/std do not have one entry
    /// per channel.
    pub fn from_u8(
        name: impl Into<String>,
        pixels: Vec<u8>,
        chw: [usize; 3],
        labels: Vec<u32>,
        class_names: Vec<String>,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self> {
        let per = chw.iter().product::<usize>();
        ensure!(per > 0, "image shape {chw:?} is empty");
        ensure!(
            pixels.len() == labels.len() * per,
            "{} pixel bytes for {} images of shape {chw:?}",
            pixels.len(),
            labels.len()
        );
        Self::build(
            name.into(),
            Storage::U8(pixels),
            chw,
            labels,
            class_names,
            mean,
            std,
        )
    }

    /// Builds a dataset from already-normalised f32 values laid out N×C×H×W.
    pub fn from_f32(
        name: impl Into<String>,
        images: Array4<f32>,
        labels: Vec<u32>,
        class_names: Vec<String>,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self> {
        let (n, c, h, w) = images.dim();
        ensure!(n == labels.len(), "{n} images but {} labels", labels.len());
        let data = images.as_standard_layout().iter().copied().collect();
        Self::build(
            name.into(),
            Storage::F32(data),
            [c, h, w],
            labels,
            class_names,
            mean,
            std,
        )
    }

    fn build(
        name: String,
        storage: Storage,
        chw: [usize; 3],
        labels: Vec<u32>,
        class_names: Vec<String>,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Result<Self> {
        ensure!(
            mean.len() == chw[0] && std.len() == chw[0],
            "mean/std have {}/{} entries for {} channels",
            mean.len(),
            std.len(),
            chw[0]
        );
        ensure!(std.iter().all(|s| *s > 0.0), "std must be positive");
        let k = class_names.len();
        let mut class_index = vec![Vec::new(); k];
        for (i, &l) in labels.iter().enumerate() {
            match class_index.get_mut(l as usize) {
                Some(v) => v.push(i),
                None => bail!("label {l} of image {i} is out of range for {k} classes"),
            }
        }
        let lut = mean
            .iter()
            .zip(&std)
            .flat_map(|(&m, &s)| (0..256).map(move |v| (v as f32 / 255.0 - m) / s))
            .collect();
        Ok(Self {
            name,
            n: labels.len(),
            chw,
            storage,
            labels,
            class_names,
            mean,
            std,
            class_index,
            lut,
        })
    }

    /// Name of the source (the spec it was loaded from).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        self.chw
    }
    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.chw[0], self.chw[1], self.chw[2]]
    }
    /// Label of every image, `0 ≤ label < num_classes()`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    /// Per-channel mean used for normalisation (pixel space in [0, 1]).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Per-channel std used for normalisation.
    pub fn std(&self) -> &[f32] {
        &self.std
    }
    /// Indices of the images of class `c` (ascending); empty for an unknown class.
    pub fn class_indices(&self, c: usize) -> &[usize] {
        self.class_index.get(c).map_or(&[], |v| v.as_slice())
    }
    /// True when pixels are stored as u8 (normalised per batch).
    pub fn is_u8(&self) -> bool {
        matches!(self.storage, Storage::U8(_))
    }
    /// Raw u8 pixels of image `i` (C·H·W values), when the storage is u8.
    pub fn pixels_u8(&self, i: usize) -> Option<&[u8]> {
        let per = self.per_image();
        match &self.storage {
            Storage::U8(v) => v.get(i * per..(i + 1) * per),
            Storage::F32(_) => None,
        }
    }

    fn per_image(&self) -> usize {
        self.chw.iter().product()
    }

    /// Normalised images at `idx`, in that order, as a new `len(idx)×C×H×W` array.
    ///
    /// # Panics
    /// If an index is out of range (indices come from the program, not from files).
    pub fn batch(&self, idx: &[usize]) -> Array4<f32> {
        let per = self.per_image();
        let hw = self.chw[1] * self.chw[2];
        let mut out = vec![0f32; idx.len() * per];
        out.par_chunks_mut(per.max(1))
            .zip(idx.par_iter())
            .for_each(|(dst, &i)| {
                assert!(
                    i < self.n,
                    "image index {i} out of range ({} images)",
                    self.n
                );
                match &self.storage {
                    Storage::U8(v) => {
                        let src = &v[i * per..(i + 1) * per];
                        for (k, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                            *d = self.lut[(k / hw) * 256 + s as usize];
                        }
                    }
                    Storage::F32(v) => dst.copy_from_slice(&v[i * per..(i + 1) * per]),
                }
            });
        let [c, h, w] = self.chw;
        Array4::from_shape_vec((idx.len(), c, h, w), out)
            .unwrap_or_else(|_| unreachable!("buffer sized from the shape"))
    }

    /// Labels at `idx`, in that order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn batch_labels(&self, idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| self.labels[i]).collect()
    }

    /// All images, normalised, as one f32 array (fine for small sets; ImageNet-scale sets should
    /// use [`Dataset::batch`]).
    pub fn images(&self) -> Array4<f32> {
        let all: Vec<usize> = (0..self.n).collect();
        self.batch(&all)
    }

    /// A new dataset holding the images at `idx` (same classes and constants).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let per = self.per_image();
        let storage = match &self.storage {
            Storage::U8(v) => Storage::U8(
                idx.iter()
                    .flat_map(|&i| v[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
            Storage::F32(v) => Storage::F32(
                idx.iter()
                    .flat_map(|&i| v[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
        };
        Self::build(
            self.name.clone(),
            storage,
            self.chw,
            self.batch_labels(idx),
            self.class_names.clone(),
            self.mean.clone(),
            self.std.clone(),
        )
        .unwrap_or_else(|_| unreachable!("labels and constants were already validated"))
    }

    /// Replaces the images with already-normalised f32 values produced batch by batch by `f`
    /// (e.g. ZCA whitening), keeping labels, classes and constants. `f` gets and returns
    /// `B×C×H×W` arrays and must keep the shape.
    pub fn map_batches(
        &self,
        batch_size: usize,
        mut f: impl FnMut(ArrayView4<f32>) -> Result<Array4<f32>>,
    ) -> Result<Dataset> {
        let per = self.per_image();
        let mut data = Vec::with_capacity(self.n * per);
        let bs = batch_size.max(1);
        for start in (0..self.n).step_by(bs) {
            let idx: Vec<usize> = (start..(start + bs).min(self.n)).collect();
            let x = self.batch(&idx);
            let y = f(x.view())?;
            ensure!(y.dim() == x.dim(), "batch map changed shape");
            data.extend(y.as_standard_layout().iter().copied());
        }
        Self::build(
            self.name.clone(),
            Storage::F32(data),
            self.chw,
            self.labels.clone(),
            self.class_names.clone(),
            self.mean.clone(),
            self.std.clone(),
        )
    }
}

// Pixels and the per-class index can be gigabytes: Debug prints a summary.
impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("shape", &self.shape())
            .field("storage", &if self.is_u8() { "u8" } else { "f32" })
            .field("classes", &self.class_names.len())
            .field("mean", &self.mean)
            .field("std", &self.std)
            .finish()
    }
}

/// Resizes every u8 image (C×H×W planar) to `to = (h, w)` with bilinear filtering.
pub(crate) fn resize_u8(pixels: &[u8], chw: [usize; 3], to: (usize, usize)) -> Result<Vec<u8>> {
    let [c, h, w] = chw;
    let (th, tw) = to;
    ensure!(th > 0 && tw > 0, "requested size {th}×{tw} is empty");
    if (h, w) == (th, tw) {
        return Ok(pixels.to_vec());
    }
    let per = c * h * w;
    let per_out = c * th * tw;
    let n = pixels.len() / per.max(1);
    let mut out = vec![0u8; n * per_out];
    out.par_chunks_mut(per_out)
        .zip(pixels.par_chunks(per))
        .try_for_each(|(dst, src)| -> Result<()> {
            for ch in 0..c {
                let plane = src[ch * h * w..(ch + 1) * h * w].to_vec();
                let img = image::GrayImage::from_raw(w as u32, h as u32, plane)
                    .ok_or_else(|| anyhow::anyhow!("bad plane size"))?;
                let r = image::imageops::resize(
                    &img,
                    tw as u32,
                    th as u32,
                    image::imageops::FilterType::Triangle,
                );
                dst[ch * th * tw..(ch + 1) * th * tw].copy_from_slice(r.as_raw());
            }
            Ok(())
        })?;
    Ok(out)
}

/// The name of class `k` in `names`, or `class k` where the dataset names none.
pub fn class_name(names: &[String], k: usize) -> String {
    names
        .get(k)
        .cloned()
        .unwrap_or_else(|| format!("class {k}"))
}
