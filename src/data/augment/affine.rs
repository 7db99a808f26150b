//! The shared sampler of scale and rotate: PyTorch `affine_grid(theta, align_corners=True)`
//! followed by `grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True)`.
//!
//! `theta = [t0 t1 t2; t3 t4 t5]` maps normalised output coordinates `(x, y) ∈ [−1, 1]²`
//! (x along the width) to normalised input coordinates. The map is linear in the image; the
//! adjoint scatters each output value back onto the same four taps with the same weights.

/// `linspace(−1, 1, n)`, as `affine_grid` builds its base grid (n = 1 gives −1).
fn base(n: usize) -> Vec<f64> {
    (0..n)
        .map(|k| {
            if n > 1 {
                -1.0 + 2.0 * k as f64 / (n - 1) as f64
            } else {
                -1.0
            }
        })
        .collect()
}

/// `v.floor()` without the libm call the baseline x86-64 target makes (no SSE4.1 `roundsd`);
/// exact for the pixel-range values it gets here.
#[inline]
fn floor(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v {
        t - 1.0
    } else {
        t
    }
}

/// Forward (`adjoint = false`) or adjoint sampling of one C×H×W image.
///
/// Taps and weights are computed once per output pixel, shared by the channels and identical in
/// both directions (which is what makes the adjoint exact). Sampling goes through a zero-padded
/// copy of each plane (one pixel before, two after) with coordinates clamped into it, so every
/// output pixel reads four taps without bounds branches; a clamped coordinate lands on the zero
/// border or gets weight 0, exactly as `padding_mode="zeros"` gives.
pub(super) fn sample(
    theta: &[f32; 6],
    adjoint: bool,
    [c, h, w]: [usize; 3],
    src: &[f32],
    dst: &mut [f32],
) {
    if h == 0 || w == 0 {
        return;
    }
    let t: [f64; 6] = theta.map(f64::from);
    let (xs, ys) = (base(w), base(h));
    let (hm, wm) = ((h - 1) as f64, (w - 1) as f64);
    let pw = w + 3;
    let mut taps: Vec<(usize, [f32; 4])> = Vec::with_capacity(h * w);
    for &yn in &ys {
        for &xn in &xs {
            let gx = t[0] * xn + t[1] * yn + t[2];
            let gy = t[3] * xn + t[4] * yn + t[5];
            let ix = ((gx + 1.0) / 2.0 * wm).clamp(-1.0, w as f64);
            let iy = ((gy + 1.0) / 2.0 * hm).clamp(-1.0, h as f64);
            let (x0, y0) = (floor(ix), floor(iy));
            let (fx, fy) = (ix - x0, iy - y0);
            // Padded coordinates: x0 + 1 ∈ [0, w + 1], so x0 + 2 ≤ w + 2 < pw.
            let at = (y0 + 1.0) as usize * pw + (x0 + 1.0) as usize;
            let wts = [
                ((1.0 - fy) * (1.0 - fx)) as f32,
                ((1.0 - fy) * fx) as f32,
                (fy * (1.0 - fx)) as f32,
                (fy * fx) as f32,
            ];
            taps.push((at, wts));
        }
    }
    let hw = h * w;
    let mut pad = vec![0f32; (h + 3) * pw];
    for ch in 0..c {
        let s = &src[ch * hw..(ch + 1) * hw];
        let d = &mut dst[ch * hw..(ch + 1) * hw];
        if adjoint {
            pad.fill(0.0);
            for (&(at, k), &g) in taps.iter().zip(s) {
                pad[at] += k[0] * g;
                pad[at + 1] += k[1] * g;
                pad[at + pw] += k[2] * g;
                pad[at + pw + 1] += k[3] * g;
            }
            for (i, row) in d.chunks_exact_mut(w).enumerate() {
                let from = (i + 1) * pw + 1;
                row.copy_from_slice(&pad[from..from + w]);
            }
        } else {
            for (i, row) in s.chunks_exact(w).enumerate() {
                let from = (i + 1) * pw + 1;
                pad[from..from + w].copy_from_slice(row);
            }
            for (o, &(at, k)) in d.iter_mut().zip(&taps) {
                *o = k[0] * pad[at]
                    + k[1] * pad[at + 1]
                    + k[2] * pad[at + pw]
                    + k[3] * pad[at + pw + 1];
            }
        }
    }
}
