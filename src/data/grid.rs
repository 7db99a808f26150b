//! Grid pictures of image batches, as the reference visualisation draws them: inverse ZCA,
//! de-normalise, clip at mean ± 2.5 std of the whole batch, scale each image to [0, 1]
//! (`make_grid(normalize=True, scale_each=True)`), upscale small images by nearest neighbour.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use image::RgbImage;
use ndarray::{Array4, ArrayView4};

use super::zca::Zca;

/// How a grid is drawn.
#[derive(Clone, Debug)]
pub struct GridOptions {
    /// Clip at `mean ± clip_sigma·std` of the whole batch (0 or negative: no clipping).
    pub clip_sigma: f32,
    /// Nearest-neighbour upscale factor; `None` picks one so an image is about 128 px wide.
    pub upscale: Option<usize>,
    /// Black border between images, in output pixels.
    pub padding: usize,
    /// With labels, one row per class is used when no class has more images than this.
    pub max_per_row: usize,
    /// Columns when not drawing one row per class.
    pub columns: usize,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            clip_sigma: 2.5,
            upscale: None,
            padding: 2,
            max_per_row: 20,
            columns: 10,
        }
    }
}

/// Longest side of a grid before the automatic upscale factor is reduced.
const MAX_SIDE: usize = 8192;

/// Cells of the grid: `(row, col)` for each image.
fn layout(
    n: usize,
    labels: Option<&[u32]>,
    opts: &GridOptions,
) -> (Vec<(usize, usize)>, usize, usize) {
    if let Some(l) = labels.filter(|l| l.len() == n && n > 0) {
        let mut classes: Vec<u32> = l.to_vec();
        classes.sort_unstable();
        classes.dedup();
        let mut counts = vec![0usize; classes.len()];
        let mut cells = Vec::with_capacity(n);
        for &lab in l {
            let r = classes.binary_search(&lab).unwrap_or(0);
            cells.push((r, counts[r]));
            counts[r] += 1;
        }
        let cols = counts.iter().copied().max().unwrap_or(1);
        if cols <= opts.max_per_row.max(1) {
            return (cells, classes.len(), cols);
        }
    }
    let cols = opts.columns.max(1).min(n.max(1));
    let rows = n.div_ceil(cols).max(1);
    ((0..n).map(|i| (i / cols, i % cols)).collect(), rows, cols)
}

/// Renders `images` (normalised N×C×H×W, C = 1 or 3, in ZCA space when `zca` is given) to an RGB
/// grid. `labels` (one per image) put each class on its own row when that fits.
pub fn render_grid(
    images: ArrayView4<f32>,
    labels: Option<&[u32]>,
    mean: &[f32],
    std: &[f32],
    zca: Option<&Zca>,
    opts: &GridOptions,
) -> Result<RgbImage> {
    let (n, c, h, w) = images.dim();
    ensure!(n > 0, "no images to draw");
    ensure!(
        c == 1 || c == 3,
        "can only draw 1- or 3-channel images, not {c}"
    );
    ensure!(
        mean.len() == c && std.len() == c,
        "mean/std need {c} entries"
    );
    let mut x: Array4<f32> = match zca {
        Some(z) => z.inverse(images)?,
        None => images.to_owned(),
    };
    for ch in 0..c {
        x.slice_mut(ndarray::s![.., ch, .., ..])
            .mapv_inplace(|v| v * std[ch] + mean[ch]);
    }
    if opts.clip_sigma > 0.0 {
        let cnt = x.len() as f64;
        let m = x.iter().map(|&v| f64::from(v)).sum::<f64>() / cnt;
        let var = x.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / (cnt - 1.0).max(1.0);
        let s = var.sqrt();
        let (lo, hi) = (
            (m - f64::from(opts.clip_sigma) * s) as f32,
            (m + f64::from(opts.clip_sigma) * s) as f32,
        );
        x.mapv_inplace(|v| v.clamp(lo, hi));
    }
    let (cells, rows, cols) = layout(n, labels, opts);
    let pad = opts.padding;
    let size_at = |f: usize| (pad + cols * (w * f + pad), pad + rows * (h * f + pad));
    let f = match opts.upscale {
        Some(f) => f.max(1),
        None => {
            let mut f = (128 / h.max(w).max(1)).clamp(1, 8);
            while f > 1 && {
                let (gw, gh) = size_at(f);
                gw.max(gh) > MAX_SIDE
            } {
                f -= 1;
            }
            f
        }
    };
    let (gw, gh) = size_at(f);
    if gw > u32::MAX as usize || gh > u32::MAX as usize {
        bail!("grid of {gw}×{gh} pixels is too large");
    }
    let mut out = RgbImage::new(gw as u32, gh as u32);
    for (i, &(r, col)) in cells.iter().enumerate() {
        let img = x.slice(ndarray::s![i, .., .., ..]);
        let lo = img.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = img.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let range = (hi - lo).max(1e-5);
        let (x0, y0) = (pad + col * (w * f + pad), pad + r * (h * f + pad));
        for yy in 0..h * f {
            for xx in 0..w * f {
                let px: [u8; 3] = std::array::from_fn(|k| {
                    let ch = if c == 1 { 0 } else { k };
                    let v = (img[[ch, yy / f, xx / f]] - lo) / range;
                    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
                });
                out.put_pixel((x0 + xx) as u32, (y0 + yy) as u32, image::Rgb(px));
            }
        }
    }
    Ok(out)
}

/// [`render_grid`], written as a PNG atomically (temporary file, then rename).
pub fn save_grid(
    path: &Path,
    images: ArrayView4<f32>,
    labels: Option<&[u32]>,
    mean: &[f32],
    std: &[f32],
    zca: Option<&Zca>,
    opts: &GridOptions,
) -> Result<()> {
    let img = render_grid(images, labels, mean, std, zca, opts)?;
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)?;
    crate::atomic_file::write(path, &buf)
}
