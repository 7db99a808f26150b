//! Readers: every format round-trips fixture files written here in that exact format; corrupt
//! or truncated files give one error naming the file; real Fashion-MNIST loads in full.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use tesla_distill::data::{load, Dataset, Split};

/// Deterministic pseudo-random bytes (the fixtures need no real randomness).
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as u8
        })
        .collect()
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn all_pixels(ds: &Dataset) -> Vec<u8> {
    (0..ds.len())
        .flat_map(|i| ds.pixels_u8(i).unwrap().to_vec())
        .collect()
}

fn err_text(r: anyhow::Result<Dataset>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Writes an MNIST-layout directory; returns (train pixels, train labels).
fn write_mnist(dir: &Path, n_train: usize, n_test: usize, gzipped: bool) -> (Vec<u8>, Vec<u8>) {
    let mut first = None;
    for (prefix, n, seed) in [("train", n_train, 1), ("t10k", n_test, 2)] {
        let px = bytes(n * 28 * 28, seed);
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let img = idx_bytes(&[n as u32, 28, 28], &px);
        let lab = idx_bytes(&[n as u32], &labels);
        let (img, lab, ext) = if gzipped {
            (gz(&img), gz(&lab), ".gz")
        } else {
            (img, lab, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
        first.get_or_insert((px, labels));
    }
    first.unwrap()
}

#[test]
fn idx_round_trip_gz_and_raw() {
    for gzipped in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let (px, labels) = write_mnist(d.path(), 30, 20, gzipped);
        let spec = format!("mnist:{}", d.path().display());
        let ds = load(&spec, Split::Train, None).unwrap();
        assert_eq!(ds.shape(), [30, 1, 28, 28]);
        assert_eq!(all_pixels(&ds), px);
        assert_eq!(
            ds.labels(),
            labels.iter().map(|&l| l as u32).collect::<Vec<_>>()
        );
        assert_eq!(ds.class_indices(3), &[3, 13, 23]);
        // Normalisation: (v/255 − mean)/std with the MNIST constants.
        let x = ds.batch(&[0]);
        let want = (px[5] as f32 / 255.0 - 0.1307) / 0.3081;
        assert!((x[[0, 0, 0, 5]] - want).abs() < 1e-6);
        let test = load(&spec, Split::Test, None).unwrap();
        assert_eq!(test.len(), 20);
        // The same files read as Fashion-MNIST get its constants and class names.
        let f = load(
            &format!("fashion-mnist:{}", d.path().display()),
            Split::Train,
            None,
        )
        .unwrap();
        assert_eq!(f.mean(), &[0.2861]);
        assert_eq!(f.class_names()[9], "Ankle boot");
    }
}

#[test]
fn idx_corrupt_and_truncated_files_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    write_mnist(d.path(), 10, 10, true);
    let spec = format!("mnist:{}", d.path().display());
    let img = d.path().join("train-images-idx3-ubyte.gz");
    let full = std::fs::read(&img).unwrap();

    // Truncated gzip stream.
    std::fs::write(&img, &full[..full.len() / 2]).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(e.contains("train-images-idx3-ubyte.gz"), "{e}");

    // Valid gzip, truncated IDX body.
    let raw = idx_bytes(&[10, 28, 28], &bytes(10 * 28 * 28 - 7, 3));
    std::fs::write(&img, gz(&raw)).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("truncated"),
        "{e}"
    );

    // Garbage magic.
    std::fs::write(&img, gz(b"hello, this is not an idx file")).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("magic"),
        "{e}"
    );

    // Label out of range.
    std::fs::write(&img, gz(&idx_bytes(&[10, 28, 28], &bytes(7840, 3)))).unwrap();
    let lab = d.path().join("train-labels-idx1-ubyte.gz");
    std::fs::write(
        &lab,
        gz(&idx_bytes(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 42])),
    )
    .unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(
        e.contains("train-labels-idx1-ubyte.gz") && e.contains("42"),
        "{e}"
    );

    // Count mismatch between images and labels.
    std::fs::write(&lab, gz(&idx_bytes(&[9], &[0; 9]))).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(e.contains("train-labels-idx1-ubyte.gz"), "{e}");

    // Missing directory.
    let e = err_text(load("mnist:/nonexistent/dir", Split::Train, None));
    assert!(e.contains("/nonexistent/dir"), "{e}");
}

fn cifar_record(label: &[u8], px: &[u8]) -> Vec<u8> {
    let mut r = label.to_vec();
    r.extend_from_slice(px);
    r
}

#[test]
fn cifar10_round_trip() {
    let d = tempfile::tempdir().unwrap();
    // The usual archive sub-folder is found too.
    let root = d.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    let mut want_px = Vec::new();
    let mut want_lab = Vec::new();
    for k in 1..=5 {
        let mut f = Vec::new();
        for i in 0..4 {
            let px = bytes(3072, k * 100 + i);
            let l = ((k + i) % 10) as u8;
            f.extend(cifar_record(&[l], &px));
            want_px.extend(px);
            want_lab.push(u32::from(l));
        }
        std::fs::write(root.join(format!("data_batch_{k}.bin")), f).unwrap();
    }
    let test_px = bytes(3 * 3072, 999);
    let mut t = Vec::new();
    for i in 0..3 {
        t.extend(cifar_record(&[i as u8], &test_px[i * 3072..(i + 1) * 3072]));
    }
    std::fs::write(root.join("test_batch.bin"), t).unwrap();

    let spec = format!("cifar10:{}", d.path().display());
    let ds = load(&spec, Split::Train, None).unwrap();
    assert_eq!(ds.shape(), [20, 3, 32, 32]);
    assert_eq!(all_pixels(&ds), want_px);
    assert_eq!(ds.labels(), want_lab.as_slice());
    assert_eq!(ds.class_names()[0], "airplane");
    assert_eq!(ds.mean(), &[0.4914, 0.4822, 0.4465]);
    // Channel 2 (blue) normalised with its own constants.
    let x = ds.batch(&[1]);
    let v = want_px[3072 + 2 * 1024 + 7];
    assert!((x[[0, 2, 0, 7]] - (v as f32 / 255.0 - 0.4465) / 0.2010).abs() < 1e-6);
    let test = load(&spec, Split::Test, None).unwrap();
    assert_eq!(all_pixels(&test), test_px);

    // Truncated batch file: error names it.
    let p = root.join("data_batch_3.bin");
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 100]).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn cifar100_round_trip_uses_fine_labels() {
    let d = tempfile::tempdir().unwrap();
    let px = bytes(5 * 3072, 7);
    for name in ["train.bin", "test.bin"] {
        let mut f = Vec::new();
        for i in 0..5 {
            // Coarse label first, then fine.
            f.extend(cifar_record(
                &[19 - i as u8, 90 + i as u8],
                &px[i * 3072..(i + 1) * 3072],
            ));
        }
        std::fs::write(d.path().join(name), f).unwrap();
    }
    let spec = format!("cifar100:{}", d.path().display());
    for split in [Split::Train, Split::Test] {
        let ds = load(&spec, split, None).unwrap();
        assert_eq!(ds.num_classes(), 100);
        assert_eq!(ds.labels(), &[90, 91, 92, 93, 94]);
        assert_eq!(ds.class_names()[90], "train");
        assert_eq!(all_pixels(&ds), px);
    }
    // A fine label ≥ 100 is reported with the file.
    let mut bad = std::fs::read(d.path().join("train.bin")).unwrap();
    bad[3074 + 1] = 200;
    std::fs::write(d.path().join("train.bin"), bad).unwrap();
    let e = err_text(load(&spec, Split::Train, None));
    assert!(e.contains("train.bin") && e.contains("200"), "{e}");
}

/// An `.npy` (version 1) holding `data` with NumPy type `descr` and `shape`.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

/// Writes an ImageNet-npz batch with `n` images of side `s` and 1-based int64 labels.
fn write_imagenet_batch(
    path: &Path,
    n: usize,
    s: usize,
    seed: u32,
    deflate: bool,
) -> (Vec<u8>, Vec<u32>) {
    let px = bytes(n * 3 * s * s, seed);
    let labels: Vec<i64> = (0..n)
        .map(|i| 1 + ((i as i64 * 37 + seed as i64) % 1000))
        .collect();
    let lab_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let mean = vec![0u8; 4 * 3 * s * s];
    write_npz(
        path,
        &[
            ("data.npy", npy("|u1", &[n, 3 * s * s], &px)),
            ("labels.npy", npy("<i8", &[n], &lab_bytes)),
            ("mean.npy", npy("<f4", &[3 * s * s], &mean)),
        ],
        deflate,
    );
    (px, labels.iter().map(|&l| (l - 1) as u32).collect())
}

#[test]
fn imagenet_npz_round_trip() {
    for (kind, s) in [("imagenet32", 32), ("imagenet64", 64)] {
        let d = tempfile::tempdir().unwrap();
        let mut want_px = Vec::new();
        let mut want_lab = Vec::new();
        // Batch order is numeric (10 after 2), stored and deflated members both read.
        for (k, n) in [(1, 5), (2, 3), (10, 4)] {
            let (px, l) = write_imagenet_batch(
                &d.path().join(format!("train_data_batch_{k}.npz")),
                n,
                s,
                k,
                k % 2 == 0,
            );
            want_px.extend(px);
            want_lab.extend(l);
        }
        let (vpx, vl) = write_imagenet_batch(&d.path().join("val_data.npz"), 6, s, 77, true);
        let spec = format!("{kind}:{}", d.path().display());
        let ds = load(&spec, Split::Train, None).unwrap();
        assert_eq!(ds.shape(), [12, 3, s, s]);
        assert_eq!(ds.num_classes(), 1000);
        assert_eq!(all_pixels(&ds), want_px);
        assert_eq!(ds.labels(), want_lab.as_slice());
        assert_eq!(ds.mean(), &[0.485, 0.456, 0.406]);
        let v = load(&spec, Split::Test, None).unwrap();
        assert_eq!(all_pixels(&v), vpx);
        assert_eq!(v.labels(), vl.as_slice());
    }
}

#[test]
fn imagenet_npz_errors_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("val_data.npz");
    write_imagenet_batch(&p, 4, 32, 1, false);
    let spec = format!("imagenet32:{}", d.path().display());

    // Truncated archive.
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let e = err_text(load(&spec, Split::Test, None));
    assert!(e.contains("val_data.npz"), "{e}");

    // Wrong image side for the spec.
    write_imagenet_batch(&p, 4, 32, 1, false);
    let e = err_text(load(
        &format!("imagenet64:{}", d.path().display()),
        Split::Test,
        None,
    ));
    assert!(e.contains("val_data.npz") && e.contains("12288"), "{e}");

    // Label 0 (labels are 1-based).
    let lab: Vec<u8> = [0i64, 1, 2, 3]
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    write_npz(
        &p,
        &[
            ("data.npy", npy("|u1", &[4, 3072], &bytes(4 * 3072, 1))),
            ("labels.npy", npy("<i8", &[4], &lab)),
        ],
        false,
    );
    let e = err_text(load(&spec, Split::Test, None));
    assert!(e.contains("val_data.npz") && e.contains("label 0"), "{e}");

    // Data member shorter than its header says.
    let mut short = npy("|u1", &[4, 3072], &bytes(4 * 3072, 1));
    short.truncate(short.len() - 10);
    let lab: Vec<u8> = [1i64, 1, 2, 3]
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    write_npz(
        &p,
        &[("data.npy", short), ("labels.npy", npy("<i8", &[4], &lab))],
        true,
    );
    let e = err_text(load(&spec, Split::Test, None));
    assert!(e.contains("val_data.npz") && e.contains("truncated"), "{e}");

    // A header announcing far more data than the file holds is an error, not a huge allocation.
    let lab: Vec<u8> = [1i64].iter().flat_map(|l| l.to_le_bytes()).collect();
    write_npz(
        &p,
        &[
            ("data.npy", npy("|u1", &[1 << 40, 3072], &bytes(3072, 1))),
            ("labels.npy", npy("<i8", &[1], &lab)),
        ],
        false,
    );
    let e = err_text(load(&spec, Split::Test, None));
    assert!(e.contains("val_data.npz") && e.contains("corrupt"), "{e}");

    // Not a zip at all.
    std::fs::write(&p, b"plain text").unwrap();
    let e = err_text(load(&spec, Split::Test, None));
    assert!(
        e.contains("val_data.npz") && e.contains("not a valid npz"),
        "{e}"
    );

    let e = err_text(load(&spec, Split::Train, None));
    assert!(e.contains("train_data_batch"), "{e}");
}

/// Writes PNGs `DIR/<class>/<k>.png`; returns the planar pixels in load order.
fn write_class_pngs(dir: &Path, classes: &[&str], per: usize, rgb: bool, seed: u32) -> Vec<u8> {
    let mut want = Vec::new();
    for (ci, c) in classes.iter().enumerate() {
        let cd = dir.join(c);
        std::fs::create_dir_all(&cd).unwrap();
        for k in 0..per {
            let (h, w) = (5usize, 4usize);
            let ch = if rgb { 3 } else { 1 };
            let px = bytes(h * w * ch, seed + (ci * 10 + k) as u32);
            let p = cd.join(format!("{k}.png"));
            if rgb {
                image::RgbImage::from_raw(w as u32, h as u32, px.clone())
                    .unwrap()
                    .save(&p)
                    .unwrap();
                for c in 0..3 {
                    want.extend((0..h * w).map(|i| px[i * 3 + c]));
                }
            } else {
                image::GrayImage::from_raw(w as u32, h as u32, px.clone())
                    .unwrap()
                    .save(&p)
                    .unwrap();
                want.extend(px);
            }
        }
    }
    want
}

#[test]
fn folder_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let train = write_class_pngs(&d.path().join("train"), &["cat", "dog", "eel"], 3, true, 1);
    let test = write_class_pngs(&d.path().join("test"), &["dog", "eel"], 2, true, 50);
    // A stray non-image file is ignored.
    std::fs::write(d.path().join("train/cat/notes.txt"), "x").unwrap();
    let spec = format!("folder:{}", d.path().display());
    let ds = load(&spec, Split::Train, None).unwrap();
    assert_eq!(ds.shape(), [9, 3, 5, 4]);
    assert_eq!(ds.class_names(), &["cat", "dog", "eel"]);
    assert_eq!(ds.labels(), &[0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(all_pixels(&ds), train);
    let t = load(&spec, Split::Test, None).unwrap();
    assert_eq!(t.labels(), &[1, 1, 2, 2]);
    assert_eq!(t.num_classes(), 3);
    assert_eq!(all_pixels(&t), test);

    // Resizing to a requested size.
    let r = load(&spec, Split::Train, Some((10, 8))).unwrap();
    assert_eq!(r.shape(), [9, 3, 10, 8]);

    // Grey-level folders give one channel; a bare folder has no test split.
    let g = tempfile::tempdir().unwrap();
    let grey = write_class_pngs(g.path(), &["a", "b"], 2, false, 9);
    let gs = format!("folder:{}", g.path().display());
    let ds = load(&gs, Split::Train, None).unwrap();
    assert_eq!(ds.shape(), [4, 1, 5, 4]);
    assert_eq!(all_pixels(&ds), grey);
    let e = err_text(load(&gs, Split::Test, None));
    assert!(e.contains("test"), "{e}");

    // A corrupt image names its file.
    std::fs::write(g.path().join("b/1.png"), b"not a png").unwrap();
    let e = err_text(load(&gs, Split::Train, None));
    assert!(e.contains("1.png"), "{e}");
}

/// Writes one smooth JPEG (JPEG is lossy; smooth content keeps the error small).
fn write_jpeg(p: &Path, seed: u8) -> Vec<u8> {
    let (h, w) = (64usize, 64usize);
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([seed.wrapping_mul(40), (x * 2) as u8, (y * 3) as u8])
    });
    img.save(p).unwrap();
    let mut planar = Vec::new();
    for c in 0..3 {
        planar.extend(img.pixels().map(|px| px.0[c]));
    }
    planar
}

#[test]
fn tiny_imagenet_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let wnids = ["n01443537", "n01629819"];
    let mut want = Vec::new();
    for (i, w) in wnids.iter().enumerate() {
        let dir = d.path().join("train").join(w).join("images");
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..2 {
            want.push(write_jpeg(
                &dir.join(format!("{w}_{k}.JPEG")),
                (i * 2 + k) as u8,
            ));
        }
        // Tiny-ImageNet also ships bounding boxes beside images/.
        std::fs::write(
            d.path()
                .join("train")
                .join(w)
                .join(format!("{w}_boxes.txt")),
            "",
        )
        .unwrap();
    }
    let val = d.path().join("val");
    std::fs::create_dir_all(val.join("images")).unwrap();
    let mut ann = String::new();
    let mut want_val = Vec::new();
    for k in 0..3 {
        want_val.push(write_jpeg(
            &val.join("images").join(format!("val_{k}.JPEG")),
            10 + k as u8,
        ));
        ann += &format!("val_{k}.JPEG\t{}\t0\t0\t10\t10\n", wnids[(k + 1) % 2]);
    }
    std::fs::write(val.join("val_annotations.txt"), ann).unwrap();
    std::fs::write(
        d.path().join("words.txt"),
        "n01443537\tgoldfish, Carassius auratus\n",
    )
    .unwrap();

    let spec = format!("tiny:{}", d.path().display());
    let ds = load(&spec, Split::Train, None).unwrap();
    assert_eq!(ds.shape(), [4, 3, 64, 64]);
    assert_eq!(ds.labels(), &[0, 0, 1, 1]);
    assert_eq!(ds.class_names(), &["goldfish", "n01629819"]);
    let close = |ds: &Dataset, want: &[Vec<u8>]| {
        for (i, w) in want.iter().enumerate() {
            let got = ds.pixels_u8(i).unwrap();
            let mean_err = got
                .iter()
                .zip(w)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / w.len() as f64;
            assert!(mean_err < 3.0, "image {i}: mean abs error {mean_err}");
        }
    };
    close(&ds, &want);
    let v = load(&spec, Split::Test, None).unwrap();
    assert_eq!(v.labels(), &[1, 0, 1]);
    close(&v, &want_val);
    let small = load(&spec, Split::Test, Some((32, 32))).unwrap();
    assert_eq!(small.shape(), [3, 3, 32, 32]);

    // An annotation naming an unknown wnid is reported with the file and line.
    std::fs::write(
        val.join("val_annotations.txt"),
        "val_0.JPEG\tn99999999\t0\n",
    )
    .unwrap();
    let e = err_text(load(&spec, Split::Test, None));
    assert!(
        e.contains("val_annotations.txt") && e.contains("n99999999"),
        "{e}"
    );
}

#[test]
fn spec_errors() {
    let e = err_text(load("cifar10", Split::Train, None));
    assert!(e.contains("cifar10:DIR"), "{e}");
    let e = err_text(load("nonsense:/x", Split::Train, None));
    assert!(e.contains("unknown dataset"), "{e}");
}

/// Found by the fuzzer (`examples/fuzz.rs`): a 370-byte JPEG whose header claims 49827×9625
/// pixels took over 10 s and 1.2 GiB to decode and resize. Headers are checked first now.
#[test]
fn images_declaring_huge_sizes_are_refused_before_decoding() {
    let d = tempfile::tempdir().unwrap();
    write_class_pngs(d.path(), &["a", "b"], 1, false, 3);
    let p = d.path().join("b/huge.jpg");
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let mut jpeg = jpeg.into_inner();
    // Start of frame: marker, length, precision, then height and width (big-endian).
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&49827u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&9625u16.to_be_bytes());
    std::fs::write(&p, &jpeg).unwrap();
    let t0 = std::time::Instant::now();
    let e = err_text(load(
        &format!("folder:{}", d.path().display()),
        Split::Train,
        None,
    ));
    assert!(e.contains("huge.jpg") && e.contains("declares"), "{e}");
    assert!(t0.elapsed().as_secs() < 5, "took {:?}", t0.elapsed());
}

#[test]
fn real_fashion_mnist() {
    let dir = PathBuf::from("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        common::missing(&format!(
            "{} (Debian package dataset-fashion-mnist)",
            dir.display()
        ));
        return;
    }
    let train = load("fashion-mnist", Split::Train, None).unwrap();
    let test = load("fashion-mnist", Split::Test, None).unwrap();
    assert_eq!(train.shape(), [60000, 1, 28, 28]);
    assert_eq!(test.shape(), [10000, 1, 28, 28]);
    for c in 0..10 {
        assert_eq!(train.class_indices(c).len(), 6000);
        assert_eq!(test.class_indices(c).len(), 1000);
    }
    // The normalised training set has mean ≈ 0 and std ≈ 1 with the docs/method.md constants.
    let x = train.batch(&(0..60000).step_by(7).collect::<Vec<_>>());
    let n = x.len() as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let s = (x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
    assert!(m.abs() < 0.01 && (s - 1.0).abs() < 0.01, "mean {m} std {s}");
}
