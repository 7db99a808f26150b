//! Scale (DSA `rand_scale`): `theta = [sx 0 0; 0 sy 0]`, sampled bilinearly.

/// The affine matrix of a scale draw `(sx, sy)`.
pub(super) fn theta([sx, sy]: [f32; 2]) -> [f32; 6] {
    [sx, 0.0, 0.0, 0.0, sy, 0.0]
}
