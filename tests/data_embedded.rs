//! The embedded `fmnist-small` set: class-balanced, and exactly the first 500/100 images per
//! class of the installed Fashion-MNIST (what `tools/make_fmnist_small.py` selects).

mod common;

use tesla_distill::data::{load, Split};

#[test]
fn embedded_set_is_class_balanced() {
    let train = load("fmnist-small", Split::Train, None).unwrap();
    let test = load("fmnist-small", Split::Test, None).unwrap();
    assert_eq!(train.shape(), [5000, 1, 28, 28]);
    assert_eq!(test.shape(), [1000, 1, 28, 28]);
    assert_eq!(train.class_names()[0], "T-shirt/top");
    assert_eq!(train.mean(), &[0.2861]);
    for c in 0..10 {
        assert_eq!(train.class_indices(c).len(), 500);
        assert_eq!(test.class_indices(c).len(), 100);
    }
    assert!(load("fmnist-small:/tmp", Split::Train, None).is_err());

    // Any reader's output can be resized on load (bilinear), keeping the mean intensity.
    let big = load("fmnist-small", Split::Test, Some((32, 32))).unwrap();
    assert_eq!(big.shape(), [1000, 1, 32, 32]);
    assert_eq!(big.labels(), test.labels());
    let mean = |p: &[u8]| p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
    let (a, b) = (
        mean(test.pixels_u8(0).unwrap()),
        mean(big.pixels_u8(0).unwrap()),
    );
    assert!(
        (a - b).abs() < 3.0,
        "mean intensity {a} vs {b} after resizing"
    );
}

#[test]
fn embedded_set_matches_the_installed_fashion_mnist() {
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        common::missing(&format!(
            "{} (Debian package dataset-fashion-mnist)",
            dir.display()
        ));
        return;
    }
    for (split, k) in [(Split::Train, 500), (Split::Test, 100)] {
        let small = load("fmnist-small", split, None).unwrap();
        let full = load("fashion-mnist", split, None).unwrap();
        // First k of each class, in file order.
        let mut want: Vec<usize> = (0..10)
            .flat_map(|c| full.class_indices(c)[..k].to_vec())
            .collect();
        want.sort_unstable();
        for (i, &j) in want.iter().enumerate() {
            assert_eq!(small.labels()[i], full.labels()[j]);
            assert_eq!(
                small.pixels_u8(i),
                full.pixels_u8(j),
                "image {i} (source {j})"
            );
        }
    }
}
