//! Class-balanced selection, dataset batches and subsets, and grid pictures.

use ndarray::Array4;
use tesla_distill::data::grid::{render_grid, save_grid, GridOptions};
use tesla_distill::data::select::select_per_class;
use tesla_distill::data::zca::Zca;
use tesla_distill::data::Dataset;

/// 3 classes with 4, 5 and 6 images of 1×2×2 u8 pixels (pixel value = image index).
fn small_u8() -> Dataset {
    let labels: Vec<u32> = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 2, 2].to_vec();
    let pixels: Vec<u8> = (0..labels.len()).flat_map(|i| [i as u8; 4]).collect();
    Dataset::from_u8(
        "small",
        pixels,
        [1, 2, 2],
        labels,
        vec!["a".into(), "b".into(), "c".into()],
        vec![0.5],
        vec![0.25],
    )
    .unwrap()
}

#[test]
fn select_k_per_class() {
    let ds = small_u8();
    let s = select_per_class(&ds, 4, 7).unwrap();
    assert_eq!(s.indices.len(), 12);
    assert_eq!(s.labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    for (&i, &l) in s.indices.iter().zip(&s.labels) {
        assert_eq!(ds.labels()[i], l);
    }
    let mut u = s.indices.clone();
    u.sort_unstable();
    u.dedup();
    assert_eq!(u.len(), 12, "indices are distinct");
    assert_eq!(
        select_per_class(&ds, 4, 7).unwrap(),
        s,
        "same seed, same selection"
    );
    let differs = (0..20).any(|seed| {
        select_per_class(&ds, 2, seed).unwrap() != select_per_class(&ds, 2, 100).unwrap()
    });
    assert!(differs);
    let img = s.images(&ds);
    assert_eq!(img.dim(), (12, 1, 2, 2));
    let e = format!("{:#}", select_per_class(&ds, 5, 0).unwrap_err());
    assert!(e.contains("class 0") && e.contains("only 4"), "{e}");
}

#[test]
fn batches_subsets_and_whitened_sets() {
    let ds = small_u8();
    let b = ds.batch(&[3, 0]);
    assert_eq!(b[[0, 0, 1, 1]], (3.0 / 255.0 - 0.5) / 0.25);
    assert_eq!(b[[1, 0, 0, 0]], (0.0 - 0.5) / 0.25);
    let sub = ds.subset(&[14, 2, 1]);
    assert_eq!(sub.labels(), &[2, 2, 1]);
    assert_eq!(sub.class_indices(2), &[0, 1]);
    assert_eq!(sub.batch(&[0]), ds.batch(&[14]));
    let doubled = ds.map_batches(4, |x| Ok(x.mapv(|v| 2.0 * v))).unwrap();
    assert!(!doubled.is_u8());
    assert_eq!(doubled.images(), ds.images().mapv(|v| 2.0 * v));
}

/// Two classes × 2 images of 3×4×4: left half 0, right half 1 (normalised space).
fn halves() -> (Array4<f32>, Vec<u32>) {
    let x = Array4::from_shape_fn(
        (4, 3, 4, 4),
        |(n, _, _, j)| if j < 2 { 0.0 } else { 1.0 + n as f32 },
    );
    (x, vec![1, 0, 1, 0])
}

#[test]
fn grid_layout_scaling_and_upscale() {
    let (x, labels) = halves();
    // Equal channel constants keep the de-normalised image grey.
    let mean = [0.5, 0.5, 0.5];
    let std = [0.2, 0.2, 0.2];
    let opts = GridOptions::default();
    let img = render_grid(x.view(), Some(&labels), &mean, &std, None, &opts).unwrap();
    // One row per class (2 rows, 2 columns), auto upscale 128/4 → 8 (capped), padding 2.
    let cell = 4 * 8 + 2;
    assert_eq!(
        img.dimensions(),
        ((2 + 2 * cell) as u32, (2 + 2 * cell) as u32)
    );
    // Image 0 has label 1: row 1, column 0. Each image is scaled to [0, 1] on its own, so its
    // left half is black and right half white; nearest-neighbour blocks are uniform.
    let (x0, y0) = (2u32, (2 + cell) as u32);
    for dy in 0..32 {
        for dx in 0..32 {
            let want = if dx < 16 { 0 } else { 255 };
            assert_eq!(img.get_pixel(x0 + dx, y0 + dy).0, [want; 3], "({dx},{dy})");
        }
    }
    // Padding stays black.
    assert_eq!(img.get_pixel(0, 0).0, [0; 3]);

    // Too many images per class for one row each: plain grid with `columns` columns.
    let many = Array4::<f32>::from_shape_fn((25, 1, 2, 2), |(n, _, i, j)| (n + i + j) as f32);
    let l = vec![0u32; 25];
    let g = render_grid(many.view(), Some(&l), &[0.5], &[0.5], None, &opts).unwrap();
    let cell = 2 * 8 + 2;
    assert_eq!(
        g.dimensions(),
        ((2 + 10 * cell) as u32, (2 + 3 * cell) as u32)
    );
}

#[test]
fn grid_clips_outliers_at_mean_plus_2_5_std() {
    // One bright outlier pixel; without clipping it squeezes every other pixel to near black.
    let mut x = Array4::from_shape_fn((1, 1, 32, 32), |(_, _, i, j)| {
        ((i * 32 + j) % 5) as f32 * 0.1
    });
    x[[0, 0, 0, 0]] = 10.0;
    let probe = |clip: f32| {
        let opts = GridOptions {
            clip_sigma: clip,
            upscale: Some(1),
            padding: 0,
            ..GridOptions::default()
        };
        render_grid(x.view(), None, &[0.0], &[1.0], None, &opts).unwrap()
    };
    let clipped = probe(2.5);
    let raw = probe(0.0);
    // Pixel (0, 4) has value 0.4, the largest non-outlier.
    // Unclipped: 0.4/10 of the range; clipped at about 1.07: well above.
    assert!(raw.get_pixel(4, 0).0[0] <= 11);
    assert!(
        clipped.get_pixel(4, 0).0[0] > 60,
        "{:?}",
        clipped.get_pixel(4, 0)
    );
    // The outlier is clipped to the top of the range.
    assert_eq!(clipped.get_pixel(0, 0).0[0], 255);
}

#[test]
fn grid_inverts_zca_and_writes_atomically() {
    let x = Array4::from_shape_fn((40, 1, 3, 3), |(n, _, i, j)| {
        ((n * 7 + i * 3 + j * 5) % 11) as f32 / 11.0
    });
    let z = Zca::fit(x.view(), 0.1).unwrap();
    let white = z.transform(x.view()).unwrap();
    let opts = GridOptions::default();
    let a = render_grid(white.view(), None, &[0.3], &[0.2], Some(&z), &opts).unwrap();
    let b = render_grid(x.view(), None, &[0.3], &[0.2], None, &opts).unwrap();
    let diff = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (p.0[0] as i32 - q.0[0] as i32).abs())
        .max()
        .unwrap();
    assert!(
        diff <= 1,
        "inverse ZCA then draw equals drawing the original ({diff})"
    );

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grid.png");
    save_grid(&p, x.view(), None, &[0.3], &[0.2], None, &opts).unwrap();
    let back = image::open(&p).unwrap().to_rgb8();
    assert_eq!(back, b);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    assert!(save_grid(
        &dir.path().join("no/such/dir/g.png"),
        x.view(),
        None,
        &[0.3],
        &[0.2],
        None,
        &opts
    )
    .is_err());
}
