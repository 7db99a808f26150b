//! DSA augmentation: exact adjoints, bit-identical replay, hand-computed cases, and scale/rotate
//! against a direct bilinear-sampling formula.

use ndarray::{Array4, ArrayView4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tesla_distill::data::augment::{
    apply, apply_adjoint, Draw, Family, Mode, Op, Strategy, DEFAULT_STRATEGY,
};

fn random(shape: [usize; 4], seed: u64) -> Array4<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_fn((shape[0], shape[1], shape[2], shape[3]), |_| {
        rng.random::<f32>() * 2.0 - 1.0
    })
}

fn dot(a: ArrayView4<f32>, b: ArrayView4<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum()
}

/// Checks ⟨A x − A 0, y⟩ = ⟨x, Aᵀ y⟩ (A 0 removes brightness's constant). `y` is made
/// correlated with `A x` so the inner product is never near zero and the relative error is
/// meaningful.
fn check_adjoint(draw: &Draw, seed: u64) -> f64 {
    let shape = draw.shape;
    let x = random(shape, seed);
    let zero = Array4::<f32>::zeros((shape[0], shape[1], shape[2], shape[3]));
    let ax = &apply(draw, x.view()) - &apply(draw, zero.view());
    let y = &random(shape, seed + 1000) + &ax;
    let aty = apply_adjoint(draw, y.view());
    let lhs = dot(ax.view(), y.view());
    let rhs = dot(x.view(), aty.view());
    let rel = (lhs - rhs).abs() / lhs.abs();
    assert!(
        rel < 1e-5,
        "{}: <Ax,y> = {lhs}, <x,A^T y> = {rhs}, relative error {rel}",
        draw.describe()
    );
    rel
}

const SHAPES: [[usize; 4]; 3] = [[4, 3, 9, 7], [3, 1, 8, 8], [2, 3, 32, 32]];

#[test]
fn every_family_has_an_exact_adjoint() {
    let mut worst = 0f64;
    for f in Family::ALL {
        let s = Strategy::parse(f.name()).unwrap();
        for shape in SHAPES {
            for seed in 0..8 {
                let d = s.draw_seeded(seed, shape);
                assert!(!d.is_identity());
                worst = worst.max(check_adjoint(&d, seed));
            }
        }
    }
    eprintln!("worst relative adjoint error: {worst:e}");
}

#[test]
fn composed_draws_have_exact_adjoints() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for k in 0..24u64 {
        // A random non-empty subset of families in random order, applied all together (M mode).
        let mut fams: Vec<Family> = Family::ALL
            .iter()
            .copied()
            .filter(|_| rng.random::<bool>())
            .collect();
        if fams.is_empty() {
            fams.push(Family::Rotate);
        }
        for i in (1..fams.len()).rev() {
            fams.swap(i, rng.random_range(0..=i));
        }
        let s = Strategy {
            families: fams,
            mode: Mode::Multi,
            ..Strategy::default()
        };
        let d = s.draw_seeded(k, SHAPES[(k % 3) as usize]);
        check_adjoint(&d, k);
        // Also the default S-mode strategy.
        let d = Strategy::default().draw_seeded(k, SHAPES[(k % 3) as usize]);
        check_adjoint(&d, k + 7);
    }
}

#[test]
fn replay_is_bit_identical() {
    let s: Strategy = DEFAULT_STRATEGY.parse().unwrap();
    let m = Strategy {
        mode: Mode::Multi,
        ..Strategy::default()
    };
    let shape = [16, 3, 12, 10];
    let x = random(shape, 1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for seed in 0..12 {
        let strat = if seed % 2 == 0 { &s } else { &m };
        let d = strat.draw_seeded(seed, shape);
        assert_eq!(d, strat.draw_seeded(seed, shape), "same seed, same draw");
        // Stored as JSON and read back, then applied on one thread and on the global pool.
        let stored = serde_json::to_string(&d).unwrap();
        let back: Draw = serde_json::from_str(&stored).unwrap();
        let a = apply(&d, x.view());
        let b = pool.install(|| apply(&back, x.view()));
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        let ga = apply_adjoint(&d, x.view());
        let gb = pool.install(|| apply_adjoint(&back, x.view()));
        assert!(ga
            .iter()
            .zip(gb.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

#[test]
fn strategy_strings_and_draw_ranges() {
    assert_eq!(Strategy::parse("none").unwrap().families.len(), 0);
    assert!(Strategy::parse("").unwrap().is_none());
    assert_eq!(
        Strategy::parse("flip_rotate").unwrap().to_string(),
        "flip_rotate"
    );
    assert_eq!(Strategy::default().to_string(), DEFAULT_STRATEGY);
    assert!(Strategy::parse("color_blur").is_err());
    let x = random([2, 3, 4, 4], 0);
    let id = Strategy::none().draw_seeded(0, [2, 3, 4, 4]);
    assert_eq!(apply(&id, x.view()), x);

    // S mode: exactly one family per call, each family drawn, parameters in the official ranges.
    let s = Strategy::default();
    let mut seen = std::collections::HashSet::new();
    for seed in 0..300 {
        let d = s.draw_seeded(seed, [8, 3, 32, 32]);
        seen.insert(d.describe());
        for op in &d.ops {
            match op {
                Op::Brightness { shift } => assert!(shift.iter().all(|b| b.abs() <= 0.5)),
                Op::Saturation { factor } => {
                    assert!(factor.iter().all(|&f| (0.0..=2.0).contains(&f)))
                }
                Op::Contrast { factor } => {
                    assert!(factor.iter().all(|&f| (0.5..=1.5).contains(&f)))
                }
                Op::Crop { shift } => assert!(shift.iter().flatten().all(|s| s.abs() <= 4)),
                Op::Cutout { size, center } => {
                    assert_eq!(*size, [16, 16]);
                    assert!(center.iter().flatten().all(|&c| (0..=32).contains(&c)));
                }
                Op::Flip { .. } => {}
                Op::Scale { factor } => assert!(factor
                    .iter()
                    .flatten()
                    .all(|&f| (1.0 / 1.2 - 1e-6..=1.2 + 1e-6).contains(&f))),
                Op::Rotate { angle } => {
                    assert!(angle.iter().all(|a| a.abs() <= 15f32.to_radians() + 1e-6))
                }
            }
        }
    }
    let want: std::collections::HashSet<String> = [
        "brightness+saturation+contrast",
        "crop",
        "cutout",
        "flip",
        "scale",
        "rotate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(seen, want);
    // Odd sides: pad round(0.125·28) = 4 (int(3.5 + 0.5)), cutout round(0.5·28) = 14.
    let d = Strategy::parse("cutout")
        .unwrap()
        .draw_seeded(1, [64, 1, 28, 28]);
    match &d.ops[0] {
        Op::Cutout { size, center } => {
            assert_eq!(*size, [14, 14]);
            // Even cutout size: centres in [0, 28].
            assert!(center.iter().flatten().all(|&c| (0..=28).contains(&c)));
        }
        other => panic!("{other:?}"),
    }
}

fn arr(shape: [usize; 4], v: &[f32]) -> Array4<f32> {
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), v.to_vec()).unwrap()
}

#[test]
fn flip_crop_cutout_color_hand_cases() {
    // Flip mirrors along the width; no flip is the identity.
    let x = arr(
        [2, 1, 2, 3],
        &[1., 2., 3., 4., 5., 6., 1., 2., 3., 4., 5., 6.],
    );
    let d = Draw {
        shape: [2, 1, 2, 3],
        ops: vec![Op::Flip {
            flip: vec![true, false],
        }],
    };
    assert_eq!(
        apply(&d, x.view()),
        arr(
            [2, 1, 2, 3],
            &[3., 2., 1., 6., 5., 4., 1., 2., 3., 4., 5., 6.]
        )
    );

    // Crop by (dy, dx) = (1, −1): y[i,j] = x[i+1, j−1], zero outside.
    let x = arr([1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let d = Draw {
        shape: [1, 1, 3, 3],
        ops: vec![Op::Crop {
            shift: vec![[1, -1]],
        }],
    };
    assert_eq!(
        apply(&d, x.view()),
        arr([1, 1, 3, 3], &[0., 4., 5., 0., 7., 8., 0., 0., 0.])
    );
    // Its adjoint moves values back: x[a,b] ← y[a−1, b+1].
    assert_eq!(
        apply_adjoint(&d, x.view()),
        arr([1, 1, 3, 3], &[0., 0., 0., 2., 3., 0., 5., 6., 0.])
    );

    // Cutout 2×2 centred at (1, 2): rows 0–1, columns 1–2; at (0, 0) clipped to one pixel.
    let x = arr([2, 1, 4, 4], &[1.0; 32]);
    let d = Draw {
        shape: [2, 1, 4, 4],
        ops: vec![Op::Cutout {
            size: [2, 2],
            center: vec![[1, 2], [0, 0]],
        }],
    };
    #[rustfmt::skip]
    let want = arr([2, 1, 4, 4], &[
        1., 0., 0., 1.,  1., 0., 0., 1.,  1., 1., 1., 1.,  1., 1., 1., 1.,
        0., 1., 1., 1.,  1., 1., 1., 1.,  1., 1., 1., 1.,  1., 1., 1., 1.,
    ]);
    assert_eq!(apply(&d, x.view()), want);

    // Color on 2 channels × 2 pixels: brightness +0.5, saturation ×2 around the per-pixel
    // channel mean, contrast ×0.5 around the image mean.
    //   +0.5:        ch0 [1.5, 3.5]   ch1 [5.5, 7.5]
    //   saturation:  pixel means 3.5, 5.5 → ch0 [−0.5, 1.5]  ch1 [7.5, 9.5]
    //   contrast:    mean 4.5 → ch0 [2, 3]  ch1 [6, 7]
    let x = arr([1, 2, 1, 2], &[1., 3., 5., 7.]);
    let d = Draw {
        shape: [1, 2, 1, 2],
        ops: vec![
            Op::Brightness { shift: vec![0.5] },
            Op::Saturation { factor: vec![2.0] },
            Op::Contrast { factor: vec![0.5] },
        ],
    };
    assert_eq!(apply(&d, x.view()), arr([1, 2, 1, 2], &[2., 3., 6., 7.]));
    // Adjoint of the linear part (contrast then saturation; brightness drops out):
    //   contrast ×0.5 on [1,3,5,7] (mean 4): [2.5, 3.5, 4.5, 5.5]
    //   saturation ×2: pixel means 3.5, 4.5 → [1.5, 2.5, 5.5, 6.5]
    assert_eq!(
        apply_adjoint(&d, x.view()),
        arr([1, 2, 1, 2], &[1.5, 2.5, 5.5, 6.5])
    );
}

/// `grid_sample(affine_grid(theta, align_corners=True), bilinear, zeros, align_corners=True)`
/// written out directly in f64.
fn reference_affine(x: &Array4<f32>, theta: [f64; 6]) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    let px = |b: usize, ch: usize, i: i64, j: i64| -> f64 {
        if i < 0 || j < 0 || i >= h as i64 || j >= w as i64 {
            0.0
        } else {
            x[[b, ch, i as usize, j as usize]] as f64
        }
    };
    Array4::from_shape_fn((n, c, h, w), |(b, ch, i, j)| {
        let xn = -1.0 + 2.0 * j as f64 / (w - 1) as f64;
        let yn = -1.0 + 2.0 * i as f64 / (h - 1) as f64;
        let gx = theta[0] * xn + theta[1] * yn + theta[2];
        let gy = theta[3] * xn + theta[4] * yn + theta[5];
        let ix = (gx + 1.0) / 2.0 * (w - 1) as f64;
        let iy = (gy + 1.0) / 2.0 * (h - 1) as f64;
        let (x0, y0) = (ix.floor(), iy.floor());
        let (ax, ay) = (ix - x0, iy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        (1.0 - ay) * (1.0 - ax) * px(b, ch, y0, x0)
            + (1.0 - ay) * ax * px(b, ch, y0, x0 + 1)
            + ay * (1.0 - ax) * px(b, ch, y0 + 1, x0)
            + ay * ax * px(b, ch, y0 + 1, x0 + 1)
    })
}

fn max_diff(a: &Array4<f32>, b: &Array4<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(&p, &q)| (p as f64 - q).abs())
        .fold(0.0, f64::max)
}

#[test]
fn scale_and_rotate_match_direct_bilinear_sampling() {
    let shape = [3, 2, 5, 6];
    let x = random(shape, 11);
    let scales = [[1.1f32, 0.9], [0.85, 1.2], [1.0, 1.0]];
    let d = Draw {
        shape,
        ops: vec![Op::Scale {
            factor: scales.to_vec(),
        }],
    };
    let y = apply(&d, x.view());
    for (b, s) in scales.iter().enumerate() {
        let one = x.slice(ndarray::s![b..b + 1, .., .., ..]).to_owned();
        let want = reference_affine(&one, [s[0] as f64, 0.0, 0.0, 0.0, s[1] as f64, 0.0]);
        let got = y.slice(ndarray::s![b..b + 1, .., .., ..]).to_owned();
        assert!(max_diff(&got, &want) < 1e-5, "scale {s:?}");
    }
    // Scale 1 is the identity.
    let last = y.slice(ndarray::s![2, .., .., ..]);
    let orig = x.slice(ndarray::s![2, .., .., ..]);
    assert!(last
        .iter()
        .zip(orig.iter())
        .all(|(a, b)| (a - b).abs() < 1e-6));

    let angles = [0.2f32, -0.26, std::f32::consts::FRAC_PI_2];
    let d = Draw {
        shape,
        ops: vec![Op::Rotate {
            angle: angles.to_vec(),
        }],
    };
    let y = apply(&d, x.view());
    for (b, &a) in angles.iter().enumerate() {
        let one = x.slice(ndarray::s![b..b + 1, .., .., ..]).to_owned();
        let (s, c) = (a.sin() as f64, a.cos() as f64);
        let want = reference_affine(&one, [c, -s, 0.0, s, c, 0.0]);
        let got = y.slice(ndarray::s![b..b + 1, .., .., ..]).to_owned();
        assert!(max_diff(&got, &want) < 1e-5, "rotate {a}");
    }
}

#[test]
fn wrong_shape_is_an_error() {
    let d = Strategy::default().draw_seeded(0, [2, 3, 8, 8]);
    let x = random([3, 3, 8, 8], 0);
    assert!(tesla_distill::data::augment::try_apply(&d, x.view()).is_err());
    let mut bad = Strategy::parse("flip")
        .unwrap()
        .draw_seeded(0, [2, 3, 8, 8]);
    if let Op::Flip { flip } = &mut bad.ops[0] {
        flip.pop();
    }
    let x = random([2, 3, 8, 8], 0);
    assert!(tesla_distill::data::augment::try_apply_adjoint(&bad, x.view()).is_err());
}
