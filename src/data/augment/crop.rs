//! Crop: an integer translation with zero padding (DSA `rand_crop`: pad, then shift by
//! `(dy, dx) ∈ [−pad, pad]²`).

/// Forward: `dst[c,i,j] = src[c,i+dy,j+dx]` inside the image, 0 outside.
/// Adjoint (`adjoint = true`): `dst[c,a,b] = src[c,a−dy,b−dx]`, the transpose of the forward map.
pub(super) fn crop(
    shift: [i32; 2],
    adjoint: bool,
    [c, h, w]: [usize; 3],
    src: &[f32],
    dst: &mut [f32],
) {
    let (dy, dx) = if adjoint {
        (-(shift[0] as isize), -(shift[1] as isize))
    } else {
        (shift[0] as isize, shift[1] as isize)
    };
    let (h, w) = (h as isize, w as isize);
    dst.fill(0.0);
    // Output columns whose source column j+dx lies in [0, w).
    let j0 = (-dx).clamp(0, w);
    let j1 = (w - dx).clamp(0, w);
    if j0 >= j1 {
        return;
    }
    for ch in 0..c as isize {
        for i in 0..h {
            let si = i + dy;
            if si < 0 || si >= h {
                continue;
            }
            let drow = ((ch * h + i) * w) as usize;
            let srow = ((ch * h + si) * w) as usize;
            dst[drow + j0 as usize..drow + j1 as usize]
                .copy_from_slice(&src[srow + (j0 + dx) as usize..srow + (j1 + dx) as usize]);
        }
    }
}
