//! ZCA whitening: inverse(transform(x)) = x, whitened covariance eigenvalues λ/(λ+eps), agreement
//! with the Kornia formula written out directly, save/load.

use faer::{Mat, Side};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tesla_distill::data::zca::{Zca, DEFAULT_EPS};
use tesla_distill::data::Dataset;

/// Correlated data: a random linear mix of independent features with very different scales,
/// plus an offset, so the covariance has a wide spread of eigenvalues.
fn correlated(n: usize, chw: [usize; 3], seed: u64) -> Array4<f32> {
    let d: usize = chw.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mix: Vec<f32> = (0..d * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let scale: Vec<f32> = (0..d).map(|k| 2f32.powi(-(k as i32) / 3)).collect();
    let mut out = Array4::<f32>::zeros((n, chw[0], chw[1], chw[2]));
    for (i, mut img) in out.outer_iter_mut().enumerate() {
        let z: Vec<f32> = (0..d)
            .map(|k| (rng.random::<f32>() - 0.5) * 8.0 * scale[k])
            .collect();
        for (j, v) in img.iter_mut().enumerate() {
            *v = 0.3
                + 0.01 * i as f32 / n as f32
                + (0..d).map(|k| z[k] * mix[k * d + j]).sum::<f32>();
        }
    }
    out
}

/// Centred covariance (N−1 denominator) of the flattened rows, in f64.
fn covariance(x: &Array4<f32>) -> Mat<f64> {
    let n = x.dim().0;
    let d = x.len() / n;
    let rows: Vec<&[f32]> = x.as_slice().unwrap().chunks_exact(d).collect();
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
        .collect();
    Mat::from_fn(d, d, |a, b| {
        rows.iter()
            .map(|r| (r[a] as f64 - mean[a]) * (r[b] as f64 - mean[b]))
            .sum::<f64>()
            / (n as f64 - 1.0)
    })
}

fn eigenvalues(m: &Mat<f64>) -> Vec<f64> {
    m.self_adjoint_eigenvalues(Side::Lower).unwrap()
}

#[test]
fn inverse_undoes_transform() {
    for chw in [[3, 3, 3], [1, 4, 5]] {
        let x = correlated(400, chw, 1);
        let z = Zca::fit(x.view(), DEFAULT_EPS).unwrap();
        let y = z.transform(x.view()).unwrap();
        let back = z.inverse(y.view()).unwrap();
        let err = x
            .iter()
            .zip(back.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "max |inverse(transform(x)) − x| = {err}");
        // Also on images it was not fitted on.
        let other = correlated(20, chw, 2);
        let back = z
            .inverse(z.transform(other.view()).unwrap().view())
            .unwrap();
        let err = other
            .iter()
            .zip(back.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "held-out max error {err}");
    }
}

#[test]
fn whitened_covariance_has_eigenvalues_lambda_over_lambda_plus_eps() {
    let x = correlated(500, [2, 3, 4], 3);
    let z = Zca::fit(x.view(), DEFAULT_EPS).unwrap();
    let lam = eigenvalues(&covariance(&x));
    let y = z.transform(x.view()).unwrap();
    let got = eigenvalues(&covariance(&y));
    assert!(
        lam.iter().any(|&l| l > 1.0) && lam.iter().any(|&l| l < 0.01),
        "spread {lam:?}"
    );
    for (k, (&l, &g)) in lam.iter().zip(&got).enumerate() {
        let want = l.max(0.0) / (l.max(0.0) + 0.1);
        assert!(
            (g - want).abs() < 1e-4,
            "eigenvalue {k}: whitened {g}, expected λ/(λ+0.1) = {want} (λ = {l})"
        );
    }
    // The stored eigenvalues are those of the training covariance.
    for (&s, &l) in z.eigenvalues().iter().zip(&lam) {
        assert!((s as f64 - l.max(0.0)).abs() < 1e-4 * (1.0 + l.abs()));
    }
}

#[test]
fn matches_the_kornia_formula() {
    // W = U diag(1/sqrt(λ+eps)) Uᵀ, y = (x − mean)·W, built here in f64 from faer's eigenvectors.
    let x = correlated(200, [1, 3, 3], 4);
    let n = x.dim().0;
    let d = 9;
    let cov = covariance(&x);
    let evd = cov.self_adjoint_eigen(Side::Lower).unwrap();
    let u = evd.U();
    let s = evd.S().column_vector();
    let w = Mat::<f64>::from_fn(d, d, |a, b| {
        (0..d)
            .map(|k| u[(a, k)] * u[(b, k)] / (s[k].max(0.0) + 0.1).sqrt())
            .sum()
    });
    let flat = x.as_slice().unwrap();
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| flat[i * d + j] as f64).sum::<f64>() / n as f64)
        .collect();
    let z = Zca::fit(x.view(), 0.1).unwrap();
    let y = z.transform(x.view()).unwrap();
    let ys = y.as_slice().unwrap();
    for i in 0..n {
        for b in 0..d {
            let want: f64 = (0..d)
                .map(|a| (flat[i * d + a] as f64 - mean[a]) * w[(a, b)])
                .sum();
            assert!(
                (ys[i * d + b] as f64 - want).abs() < 1e-4,
                "row {i} col {b}"
            );
        }
    }
}

#[test]
fn save_load_and_dataset_fit() {
    let x = correlated(300, [3, 2, 2], 5);
    let labels: Vec<u32> = (0..300).map(|i| (i % 3) as u32).collect();
    let ds = Dataset::from_f32(
        "t",
        x.clone(),
        labels,
        vec!["a".into(), "b".into(), "c".into()],
        vec![0.0; 3],
        vec![1.0; 3],
    )
    .unwrap();
    let z1 = Zca::fit(x.view(), DEFAULT_EPS).unwrap();
    let z2 = Zca::fit_dataset(&ds, DEFAULT_EPS).unwrap();
    let (y1, y2) = (
        z1.transform(x.view()).unwrap(),
        z2.transform(x.view()).unwrap(),
    );
    assert!(y1.iter().zip(y2.iter()).all(|(a, b)| (a - b).abs() < 1e-5));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zca.safetensors");
    z1.save(&p).unwrap();
    let back = Zca::load(&p).unwrap();
    assert_eq!(back.eps(), DEFAULT_EPS);
    assert_eq!(back.image_shape(), [3, 2, 2]);
    let y3 = back.transform(x.view()).unwrap();
    assert!(y1
        .iter()
        .zip(y3.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    let whitened = z1.transform_dataset(&ds).unwrap();
    assert_eq!(whitened.images(), y1);

    // Wrong image shape and a corrupt file are errors (the latter naming the file).
    assert!(z1.transform(correlated(2, [1, 2, 2], 0).view()).is_err());
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() / 3]).unwrap();
    let e = format!("{:#}", Zca::load(&p).unwrap_err());
    assert!(e.contains("zca.safetensors"), "{e}");
}

/// CIFAR-scale fit (50 000 × 3072); slow in debug builds, so run on demand:
/// `cargo test --release --test data_zca -- --ignored --nocapture`.
#[test]
#[ignore]
fn cifar_scale_fit_takes_seconds() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x = Array4::from_shape_fn((50_000, 3, 32, 32), |_| rng.random::<f32>());
    let t = std::time::Instant::now();
    let z = Zca::fit(x.view(), DEFAULT_EPS).unwrap();
    let fit = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let y = z.transform(x.view()).unwrap();
    let tr = t.elapsed().as_secs_f64();
    eprintln!(
        "ZCA fit 50000×3072: {fit:.1} s; transform: {tr:.1} s ({} threads)",
        rayon::current_num_threads()
    );
    assert_eq!(y.dim(), (50_000, 3, 32, 32));
    assert!(fit < 120.0);
}
