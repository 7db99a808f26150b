//! The shared sampler of scale and rotate: PyTorch `affine_grid(theta, align_corners=True)`
//! followed by `grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True)`.
//!
//! `theta = [t0 t1 t2; t3 t4 t5]` maps normalised output coordinates `(x, y) ∈ [−1, 1]²`
//! (x along the width) to normalised input coordinates. The map is linear in the image; the
//! adjoint scatters each output value back onto the same four taps with the same weights.

/// One bilinear tap: output pixel, input pixel (both `i·w + j`), weight.
type Tap = (u32, u32, f32);

/// `linspace(−1, 1, n)[k]`, as `affine_grid` builds its base grid (n = 1 gives −1).
fn base(k: usize, n: usize) -> f64 {
    if n > 1 {
        -1.0 + 2.0 * k as f64 / (n - 1) as f64
    } else {
        -1.0
    }
}

/// All in-bounds taps of the sampling grid of `theta` on an `h×w` image.
fn taps(theta: &[f32; 6], h: usize, w: usize) -> Vec<Tap> {
    let t: Vec<f64> = theta.iter().map(|&v| f64::from(v)).collect();
    let mut out = Vec::with_capacity(4 * h * w);
    for oi in 0..h {
        let yn = base(oi, h);
        for oj in 0..w {
            let xn = base(oj, w);
            let gx = t[0] * xn + t[1] * yn + t[2];
            let gy = t[3] * xn + t[4] * yn + t[5];
            let ix = (gx + 1.0) / 2.0 * (w as f64 - 1.0);
            let iy = (gy + 1.0) / 2.0 * (h as f64 - 1.0);
            let (x0, y0) = (ix.floor(), iy.floor());
            let (fx, fy) = (ix - x0, iy - y0);
            let o = (oi * w + oj) as u32;
            for (dy, wy) in [(0.0, 1.0 - fy), (1.0, fy)] {
                let y = y0 + dy;
                if y < 0.0 || y > (h - 1) as f64 || wy == 0.0 {
                    continue;
                }
                for (dx, wx) in [(0.0, 1.0 - fx), (1.0, fx)] {
                    let x = x0 + dx;
                    if x < 0.0 || x > (w - 1) as f64 || wx == 0.0 {
                        continue;
                    }
                    out.push((o, (y as usize * w + x as usize) as u32, (wy * wx) as f32));
                }
            }
        }
    }
    out
}

/// Forward (`adjoint = false`) or adjoint sampling of one C×H×W image.
pub(super) fn sample(
    theta: &[f32; 6],
    adjoint: bool,
    [c, h, w]: [usize; 3],
    src: &[f32],
    dst: &mut [f32],
) {
    let taps = taps(theta, h, w);
    let hw = h * w;
    dst.fill(0.0);
    for ch in 0..c {
        let s = &src[ch * hw..(ch + 1) * hw];
        let d = &mut dst[ch * hw..(ch + 1) * hw];
        if adjoint {
            for &(o, i, wt) in &taps {
                d[i as usize] += wt * s[o as usize];
            }
        } else {
            for &(o, i, wt) in &taps {
                d[o as usize] += wt * s[i as usize];
            }
        }
    }
}
