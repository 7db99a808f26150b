//! Cutout: zero a `size`-sided square centred at `center` (DSA `rand_cutout`: rows
//! `center − size/2 … center − size/2 + size − 1`, clipped to the image). A diagonal 0/1 mask,
//! so self-adjoint.

/// `dst = src · mask`.
pub(super) fn cutout(
    size: [usize; 2],
    center: [i32; 2],
    [c, h, w]: [usize; 3],
    src: &[f32],
    dst: &mut [f32],
) {
    dst.copy_from_slice(src);
    let range = |centre: i32, s: usize, n: usize| {
        let lo = i64::from(centre) - (s / 2) as i64;
        let a = lo.clamp(0, n as i64) as usize;
        let b = (lo + s as i64).clamp(0, n as i64) as usize;
        (a, b)
    };
    let (r0, r1) = range(center[0], size[0], h);
    let (c0, c1) = range(center[1], size[1], w);
    for ch in 0..c {
        for i in r0..r1 {
            let row = (ch * h + i) * w;
            dst[row + c0..row + c1].fill(0.0);
        }
    }
}
