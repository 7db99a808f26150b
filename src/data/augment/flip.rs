//! Horizontal flip (PyTorch `x.flip(3)`): a permutation that is its own inverse and adjoint.

/// `dst[c,i,j] = src[c,i,w−1−j]` when `flip`, else a copy.
pub(super) fn flip(flip: bool, w: usize, src: &[f32], dst: &mut [f32]) {
    if !flip {
        dst.copy_from_slice(src);
        return;
    }
    for (drow, srow) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
        for (d, s) in drow.iter_mut().zip(srow.iter().rev()) {
            *d = *s;
        }
    }
}
