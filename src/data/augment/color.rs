//! Color: brightness (+b), saturation (×s around the per-pixel channel mean), contrast (×c
//! around the image mean). Saturation and contrast are `k·I + (1−k)·P` with `P` an orthogonal
//! averaging projector, so each is self-adjoint; brightness is a shift whose linear part is the
//! identity.

/// `dst = src + b`.
pub(super) fn brightness(b: f32, src: &[f32], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s + b;
    }
}

/// `dst[c,p] = s·(src[c,p] − m_p) + m_p`, `m_p` the mean over channels at pixel `p`.
/// Self-adjoint, so the same function serves as its adjoint.
pub(super) fn saturation(s: f32, c: usize, hw: usize, src: &[f32], dst: &mut [f32]) {
    let inv = 1.0 / c as f32;
    for p in 0..hw {
        let mut m = 0f32;
        for ch in 0..c {
            m += src[ch * hw + p];
        }
        m *= inv;
        for ch in 0..c {
            dst[ch * hw + p] = s * (src[ch * hw + p] - m) + m;
        }
    }
}

/// `dst = k·(src − m) + m`, `m` the mean of the whole image. Self-adjoint.
pub(super) fn contrast(k: f32, src: &[f32], dst: &mut [f32]) {
    // f64 accumulation keeps the mean independent of the image size to within rounding.
    let m = (src.iter().map(|&v| f64::from(v)).sum::<f64>() / src.len() as f64) as f32;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = k * (s - m) + m;
    }
}
