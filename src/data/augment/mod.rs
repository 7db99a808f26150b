//! Differentiable Siamese Augmentation (DSA), "S" mode, with exact adjoints.
//!
//! A [`Strategy`] (e.g. `color_crop_cutout_flip_scale_rotate`) draws a [`Draw`] for a batch
//! shape: the family chosen for this call and every image's parameters. A draw is a small,
//! serialisable value; [`apply`] and [`apply_adjoint`] are pure functions of it, so replaying a
//! stored draw is bit-identical (each image is processed by one thread in a fixed order).
//!
//! Every family is linear in the image except brightness, which adds a constant; the adjoint is
//! that of the linear part. Parameters follow the official `ParamDiffAug` (see [`Params`]).

mod affine;
mod color;
mod crop;
mod cutout;
mod flip;
mod rotate;
mod scale;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Result};
use ndarray::{Array4, ArrayView4};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An augmentation family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    /// Brightness, then saturation, then contrast.
    Color,
    /// Integer translation with zero padding.
    Crop,
    /// A zeroed square.
    Cutout,
    /// Horizontal flip.
    Flip,
    /// Anisotropic scaling (affine grid, bilinear).
    Scale,
    /// Rotation (affine grid, bilinear).
    Rotate,
}

impl Family {
    /// All families, in the order of the default strategy string.
    pub const ALL: [Family; 6] = [
        Family::Color,
        Family::Crop,
        Family::Cutout,
        Family::Flip,
        Family::Scale,
        Family::Rotate,
    ];

    /// The name used in strategy strings.
    pub fn name(self) -> &'static str {
        match self {
            Family::Color => "color",
            Family::Crop => "crop",
            Family::Cutout => "cutout",
            Family::Flip => "flip",
            Family::Scale => "scale",
            Family::Rotate => "rotate",
        }
    }
}

/// How families combine within one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// "S": one family drawn uniformly per call (what MTT and TESLA use).
    #[default]
    Single,
    /// "M": every family of the strategy, in order, each call.
    Multi,
}

/// Family parameters, the official `ParamDiffAug` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Probability of a flip.
    pub prob_flip: f32,
    /// Scale factors are uniform in `[1/ratio, ratio]`.
    pub ratio_scale: f32,
    /// Rotation angles are uniform in `±ratio` degrees.
    pub ratio_rotate: f32,
    /// Crop shifts are integers in `±round(ratio·side)`.
    pub ratio_crop_pad: f32,
    /// Cutout side is `round(ratio·side)`.
    pub ratio_cutout: f32,
    /// Brightness shift is `(U − 0.5)·brightness`.
    pub brightness: f32,
    /// Saturation factor is `U·saturation`.
    pub saturation: f32,
    /// Contrast factor is `U + contrast`.
    pub contrast: f32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            prob_flip: 0.5,
            ratio_scale: 1.2,
            ratio_rotate: 15.0,
            ratio_crop_pad: 0.125,
            ratio_cutout: 0.5,
            brightness: 1.0,
            saturation: 2.0,
            contrast: 0.5,
        }
    }
}

/// An augmentation strategy: which families, how they combine, their parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// Families (duplicates weight the draw in S mode, as in the reference).
    pub families: Vec<Family>,
    /// S or M mode.
    pub mode: Mode,
    /// Family parameters.
    pub params: Params,
}

/// The default strategy string.
pub const DEFAULT_STRATEGY: &str = "color_crop_cutout_flip_scale_rotate";

impl Default for Strategy {
    fn default() -> Self {
        Self {
            families: Family::ALL.to_vec(),
            mode: Mode::Single,
            params: Params::default(),
        }
    }
}

impl FromStr for Strategy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Strategy::parse(s)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.families.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.families.iter().map(|x| x.name()).collect();
        f.write_str(&names.join("_"))
    }
}

/// A seeded random generator for [`Strategy::draw`], ChaCha8 so that draws are reproducible
/// across platforms.
pub type AugRng = rand_chacha::ChaCha8Rng;

impl Strategy {
    /// Parses `color_crop_…` (any subset, any order), `none` or the empty string (no
    /// augmentation); S mode and default parameters.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let mut families = Vec::new();
        if s != "none" {
            for part in s.split('_').filter(|p| !p.is_empty()) {
                let f = Family::ALL
                    .iter()
                    .copied()
                    .find(|f| f.name() == part)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown augmentation `{part}` in `{s}`; use any of \
                             color, crop, cutout, flip, scale, rotate joined by `_`, or `none`"
                        )
                    })?;
                families.push(f);
            }
        }
        Ok(Self {
            families,
            ..Self::default()
        })
    }

    /// No augmentation.
    pub fn none() -> Self {
        Self {
            families: Vec::new(),
            ..Self::default()
        }
    }

    /// True when draws are always the identity.
    pub fn is_none(&self) -> bool {
        self.families.is_empty()
    }

    /// Draws the augmentation of one call on a batch of shape `[N, C, H, W]`.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, shape: [usize; 4]) -> Draw {
        let chosen: Vec<Family> = match self.mode {
            _ if self.families.is_empty() => Vec::new(),
            Mode::Single => vec![self.families[rng.random_range(0..self.families.len())]],
            Mode::Multi => self.families.clone(),
        };
        let mut ops = Vec::new();
        for f in chosen {
            draw_family(f, &self.params, rng, shape, &mut ops);
        }
        Draw { shape, ops }
    }

    /// [`Strategy::draw`] with a fresh [`AugRng`] seeded by `seed`.
    pub fn draw_seeded(&self, seed: u64, shape: [usize; 4]) -> Draw {
        self.draw(&mut AugRng::seed_from_u64(seed), shape)
    }
}

/// `int(x + 0.5)` as the reference computes pad and cutout sizes.
fn round_half_up(x: f32) -> usize {
    (x + 0.5).floor().max(0.0) as usize
}

fn draw_family<R: Rng + ?Sized>(
    f: Family,
    p: &Params,
    rng: &mut R,
    [n, _, h, w]: [usize; 4],
    ops: &mut Vec<Op>,
) {
    let mut u = || rng.random::<f32>();
    match f {
        Family::Color => {
            let shift = (0..n).map(|_| (u() - 0.5) * p.brightness).collect();
            ops.push(Op::Brightness { shift });
            let factor = (0..n).map(|_| u() * p.saturation).collect();
            ops.push(Op::Saturation { factor });
            let factor = (0..n).map(|_| u() + p.contrast).collect();
            ops.push(Op::Contrast { factor });
        }
        Family::Crop => {
            let py = round_half_up(h as f32 * p.ratio_crop_pad) as i32;
            let px = round_half_up(w as f32 * p.ratio_crop_pad) as i32;
            let shift = (0..n)
                .map(|_| [rng.random_range(-py..=py), rng.random_range(-px..=px)])
                .collect();
            ops.push(Op::Crop { shift });
        }
        Family::Cutout => {
            let size = [
                round_half_up(h as f32 * p.ratio_cutout),
                round_half_up(w as f32 * p.ratio_cutout),
            ];
            // Centres in [0, side + (1 − size % 2)), as the reference draws them.
            let hi_y = (h + 1 - size[0] % 2) as i32;
            let hi_x = (w + 1 - size[1] % 2) as i32;
            let center = (0..n)
                .map(|_| [rng.random_range(0..hi_y), rng.random_range(0..hi_x)])
                .collect();
            ops.push(Op::Cutout { size, center });
        }
        Family::Flip => {
            let flip = (0..n).map(|_| u() < p.prob_flip).collect();
            ops.push(Op::Flip { flip });
        }
        Family::Scale => {
            let r = p.ratio_scale;
            let factor = (0..n)
                .map(|_| [u() * (r - 1.0 / r) + 1.0 / r, u() * (r - 1.0 / r) + 1.0 / r])
                .collect();
            ops.push(Op::Scale { factor });
        }
        Family::Rotate => {
            let angle = (0..n)
                .map(|_| (u() - 0.5) * 2.0 * p.ratio_rotate / 180.0 * std::f32::consts::PI)
                .collect();
            ops.push(Op::Rotate { angle });
        }
    }
}

/// One elementary augmentation with one parameter per image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `x + shift[n]`.
    Brightness {
        /// Per-image additive shift.
        shift: Vec<f32>,
    },
    /// `factor[n]·(x − mean over channels) + mean over channels`, per pixel.
    Saturation {
        /// Per-image factor.
        factor: Vec<f32>,
    },
    /// `factor[n]·(x − image mean) + image mean`.
    Contrast {
        /// Per-image factor.
        factor: Vec<f32>,
    },
    /// `y[c,i,j] = x[c, i+dy, j+dx]`, zero outside.
    Crop {
        /// Per-image `[dy, dx]`.
        shift: Vec<[i32; 2]>,
    },
    /// Zero the `size` square whose rows start at `center[0] − size[0]/2` (same for columns).
    Cutout {
        /// `[height, width]` of the square.
        size: [usize; 2],
        /// Per-image `[row, column]` centre.
        center: Vec<[i32; 2]>,
    },
    /// Mirror along the width when true.
    Flip {
        /// Per-image flag.
        flip: Vec<bool>,
    },
    /// Affine scale `theta = [sx 0 0; 0 sy 0]`.
    Scale {
        /// Per-image `[sx, sy]`.
        factor: Vec<[f32; 2]>,
    },
    /// Affine rotation `theta = [cos −sin 0; sin cos 0]`.
    Rotate {
        /// Per-image angle in radians.
        angle: Vec<f32>,
    },
}

impl Op {
    /// Number of images the op has parameters for.
    pub fn len(&self) -> usize {
        match self {
            Op::Brightness { shift } => shift.len(),
            Op::Saturation { factor } | Op::Contrast { factor } => factor.len(),
            Op::Crop { shift } => shift.len(),
            Op::Cutout { center, .. } => center.len(),
            Op::Flip { flip } => flip.len(),
            Op::Scale { factor } => factor.len(),
            Op::Rotate { angle } => angle.len(),
        }
    }

    /// True when the op has no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the op (or the adjoint of its linear part) to image `n`.
    fn run(&self, n: usize, adjoint: bool, chw: [usize; 3], src: &[f32], dst: &mut [f32]) {
        let [c, h, w] = chw;
        match self {
            Op::Brightness { shift } => {
                if adjoint {
                    dst.copy_from_slice(src)
                } else {
                    color::brightness(shift[n], src, dst)
                }
            }
            Op::Saturation { factor } => color::saturation(factor[n], c, h * w, src, dst),
            Op::Contrast { factor } => color::contrast(factor[n], src, dst),
            Op::Crop { shift } => crop::crop(shift[n], adjoint, chw, src, dst),
            Op::Cutout { size, center } => cutout::cutout(*size, center[n], chw, src, dst),
            Op::Flip { flip } => flip::flip(flip[n], w, src, dst),
            Op::Scale { factor } => {
                affine::sample(&scale::theta(factor[n]), adjoint, chw, src, dst)
            }
            Op::Rotate { angle } => {
                affine::sample(&rotate::theta(angle[n]), adjoint, chw, src, dst)
            }
        }
    }
}

/// One augmentation call: the batch shape and the ops applied in order. Small, serialisable,
/// and replayable bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    /// `[N, C, H, W]` the draw was made for.
    pub shape: [usize; 4],
    /// Ops applied in order (empty: identity).
    pub ops: Vec<Op>,
}

impl Draw {
    /// The identity draw for `shape`.
    pub fn identity(shape: [usize; 4]) -> Self {
        Self {
            shape,
            ops: Vec::new(),
        }
    }

    /// True when the draw does nothing.
    pub fn is_identity(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks that every op has one parameter per image (a draw read back from disk may not).
    pub fn validate(&self) -> Result<()> {
        for (k, op) in self.ops.iter().enumerate() {
            ensure!(
                op.len() == self.shape[0],
                "augmentation op {k} has {} entries for a batch of {}",
                op.len(),
                self.shape[0]
            );
        }
        Ok(())
    }

    /// Names of the families in this draw (color appears as its three parts).
    pub fn describe(&self) -> String {
        if self.ops.is_empty() {
            return "none".into();
        }
        let names: Vec<&str> = self
            .ops
            .iter()
            .map(|o| match o {
                Op::Brightness { .. } => "brightness",
                Op::Saturation { .. } => "saturation",
                Op::Contrast { .. } => "contrast",
                Op::Crop { .. } => "crop",
                Op::Cutout { .. } => "cutout",
                Op::Flip { .. } => "flip",
                Op::Scale { .. } => "scale",
                Op::Rotate { .. } => "rotate",
            })
            .collect();
        names.join("+")
    }
}

fn run(draw: &Draw, x: ArrayView4<f32>, adjoint: bool) -> Result<Array4<f32>> {
    let (n, c, h, w) = x.dim();
    if [n, c, h, w] != draw.shape {
        bail!(
            "augmentation drawn for shape {:?} applied to {:?}",
            draw.shape,
            [n, c, h, w]
        );
    }
    draw.validate()?;
    let mut out = x.as_standard_layout().into_owned();
    if draw.ops.is_empty() || n == 0 {
        return Ok(out);
    }
    let per = c * h * w;
    let chw = [c, h, w];
    let Some(data) = out.as_slice_mut() else {
        unreachable!("as_standard_layout gives contiguous data")
    };
    data.par_chunks_mut(per.max(1)).enumerate().for_each_init(
        || vec![0f32; per],
        |tmp, (i, img)| {
            let step = |op: &Op, img: &mut [f32], tmp: &mut Vec<f32>| {
                op.run(i, adjoint, chw, img, tmp);
                img.copy_from_slice(tmp);
            };
            if adjoint {
                for op in draw.ops.iter().rev() {
                    step(op, img, tmp);
                }
            } else {
                for op in &draw.ops {
                    step(op, img, tmp);
                }
            }
        },
    );
    Ok(out)
}

/// Applies `draw` to a batch `x` (N×C×H×W), one image per rayon task.
///
/// # Panics
/// If `x` does not have the shape the draw was made for, or the draw is malformed (see
/// [`Draw::validate`]); use [`try_apply`] for a `Result`.
pub fn apply(draw: &Draw, x: ArrayView4<f32>) -> Array4<f32> {
    try_apply(draw, x).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Applies the adjoint of the linear part of `draw` to `gy`: for every `x`, `y`,
/// `⟨apply(x) − apply(0), y⟩ = ⟨x, apply_adjoint(y)⟩`. This maps the gradient with respect to
/// the augmented batch to the gradient with respect to the un-augmented one.
///
/// # Panics
/// As [`apply`]; use [`try_apply_adjoint`] for a `Result`.
pub fn apply_adjoint(draw: &Draw, gy: ArrayView4<f32>) -> Array4<f32> {
    try_apply_adjoint(draw, gy).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`apply`], returning an error instead of panicking.
pub fn try_apply(draw: &Draw, x: ArrayView4<f32>) -> Result<Array4<f32>> {
    run(draw, x, false)
}

/// [`apply_adjoint`], returning an error instead of panicking.
pub fn try_apply_adjoint(draw: &Draw, gy: ArrayView4<f32>) -> Result<Array4<f32>> {
    run(draw, gy, true)
}
