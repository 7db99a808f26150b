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
/// Taps and weights are computed once per output pixel (shared by channels and identical in
/// both directions, which is what makes the adjoint exact).
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
    let hw = h * w;
    let (hm, wm) = ((h - 1) as f64, (w - 1) as f64);
    dst.fill(0.0);
    for (oi, &yn) in ys.iter().enumerate() {
        for (oj, &xn) in xs.iter().enumerate() {
            let gx = t[0] * xn + t[1] * yn + t[2];
            let gy = t[3] * xn + t[4] * yn + t[5];
            let ix = (gx + 1.0) / 2.0 * wm;
            let iy = (gy + 1.0) / 2.0 * hm;
            let (x0, y0) = (floor(ix), floor(iy));
            let (fx, fy) = (ix - x0, iy - y0);
            let mut taps = [(0usize, 0f32); 4];
            let mut k = 0;
            for (y, wy) in [(y0, 1.0 - fy), (y0 + 1.0, fy)] {
                if y < 0.0 || y > hm || wy == 0.0 {
                    continue;
                }
                for (x, wx) in [(x0, 1.0 - fx), (x0 + 1.0, fx)] {
                    if x < 0.0 || x > wm || wx == 0.0 {
                        continue;
                    }
                    taps[k] = (y as usize * w + x as usize, (wy * wx) as f32);
                    k += 1;
                }
            }
            let taps = &taps[..k];
            let o = oi * w + oj;
            for ch in 0..c {
                let b = ch * hw;
                if adjoint {
                    let g = src[b + o];
                    for &(i, wt) in taps {
                        dst[b + i] += wt * g;
                    }
                } else {
                    let mut acc = 0f32;
                    for &(i, wt) in taps {
                        acc += wt * src[b + i];
                    }
                    dst[b + o] = acc;
                }
            }
        }
    }
}
