//! Rotate (DSA `rand_rotate`): `theta = [cos −sin 0; sin cos 0]` for an angle in radians,
//! sampled bilinearly.

/// The affine matrix of a rotation by `angle` radians.
pub(super) fn theta(angle: f32) -> [f32; 6] {
    let (s, c) = angle.sin_cos();
    [c, -s, 0.0, s, c, 0.0]
}
