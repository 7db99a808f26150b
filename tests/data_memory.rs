//! Downsampled-ImageNet loading keeps one byte per pixel: the peak resident memory grows by
//! about the size of the pixels, never twice it. Its own test binary, so that the process peak
//! (VmHWM) measures this load alone.

use std::io::Write;

fn npy_u8(shape: [usize; 2], fill: u8) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}), }}",
        shape[0], shape[1]
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.resize(v.len() + shape[0] * shape[1], fill);
    v
}

fn npy_labels(n: usize) -> Vec<u8> {
    let mut h = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({n},), }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    for i in 0..n {
        v.extend_from_slice(&(1 + (i % 1000) as i64).to_le_bytes());
    }
    v
}

fn peak_kib() -> u64 {
    tesla_distill::data::bench::peak_rss_kib().unwrap_or(0)
}

#[test]
fn imagenet64_load_peak_memory_is_about_one_copy() {
    if peak_kib() == 0 {
        eprintln!("SKIPPED: /proc/self/status has no VmHWM here");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (batches, n, per) = (4, 2000, 3 * 64 * 64);
    for k in 1..=batches {
        let f = std::fs::File::create(d.path().join(format!("train_data_batch_{k}.npz"))).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let method = if k == 1 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let o = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file("data.npy", o).unwrap();
        z.write_all(&npy_u8([n, per], k as u8)).unwrap();
        z.start_file("labels.npy", o).unwrap();
        z.write_all(&npy_labels(n)).unwrap();
        z.finish().unwrap();
    }
    let before = peak_kib();
    let ds = tesla_distill::data::load(
        &format!("imagenet64:{}", d.path().display()),
        tesla_distill::data::Split::Train,
        None,
    )
    .unwrap();
    let grown = peak_kib().saturating_sub(before) as f64 / 1024.0;
    let pixels = (batches * n * per) as f64 / (1024.0 * 1024.0);
    eprintln!("pixels {pixels:.1} MiB, peak RSS grew by {grown:.1} MiB");
    assert_eq!(ds.len(), batches * n);
    assert_eq!(ds.pixels_u8(n * 2).unwrap()[0], 3);
    assert!(
        grown < 1.25 * pixels,
        "peak grew {grown:.1} MiB for {pixels:.1} MiB of pixels"
    );
}
