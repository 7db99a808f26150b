//! `tesla bench data`: augmentation throughput and Fashion-MNIST loading cost.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use ndarray::Array4;
use rand::{Rng, SeedableRng};

use super::augment::{self, Family, Strategy};
use super::dataset::Split;

/// Peak resident set size of this process in KiB (`VmHWM`), when the kernel reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Seconds per call of `f`, the median of `reps` timed calls after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Measures augmentation throughput (forward and adjoint, per family and for the default S-mode
/// strategy) on a 256×3×32×32 batch, and the load time and peak RSS of Fashion-MNIST (train and
/// test; the embedded `fmnist-small` when the system copy is absent). Returns a printable report.
pub fn bench_data() -> Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "data bench ({} rayon threads)",
        rayon::current_num_threads()
    )?;

    let rss0 = peak_rss_kib();
    let spec = if Path::new(super::idx::FASHION_MNIST_DIR).is_dir() {
        "fashion-mnist"
    } else {
        "fmnist-small"
    };
    let t = Instant::now();
    let train = super::load(spec, Split::Train, None)?;
    let test = super::load(spec, Split::Test, None)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss1 = peak_rss_kib();
    writeln!(
        r,
        "load {spec}: {} train + {} test images in {:.3} s; peak RSS {} (before load {})",
        train.len(),
        test.len(),
        load_s,
        rss1.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        rss0.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
    )?;
    let idx: Vec<usize> = (0..train.len()).collect();
    let tb = time(3, || {
        std::hint::black_box(train.batch(&idx));
    });
    writeln!(
        r,
        "normalise all {} train images (u8 → f32): {:.3} s ({:.0} images/s)",
        train.len(),
        tb,
        train.len() as f64 / tb
    )?;
    drop((train, test));

    let shape = [256, 3, 32, 32];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x = Array4::from_shape_fn((256, 3, 32, 32), |_| rng.random::<f32>() - 0.5);
    writeln!(
        r,
        "augmentation on 256×3×32×32, images/s (16 seeded draws per line, median of 3 runs):"
    )?;
    let mut cases: Vec<(String, Strategy)> = Family::ALL
        .iter()
        .map(|f| {
            let s = Strategy::parse(f.name()).unwrap_or_else(|_| Strategy::none());
            (f.name().to_string(), s)
        })
        .collect();
    cases.push(("S-mode default".into(), Strategy::default()));
    // 16 draws per case, applied in turn: the S-mode figure then averages over the families.
    for (name, s) in cases {
        let draws: Vec<_> = (0..16).map(|k| s.draw_seeded(k, shape)).collect();
        let fwd = time(3, || {
            for d in &draws {
                std::hint::black_box(augment::apply(d, x.view()));
            }
        }) / draws.len() as f64;
        let adj = time(3, || {
            for d in &draws {
                std::hint::black_box(augment::apply_adjoint(d, x.view()));
            }
        }) / draws.len() as f64;
        writeln!(
            r,
            "  {name:<15} forward {:>10.0}   adjoint {:>10.0}",
            256.0 / fwd,
            256.0 / adj
        )?;
    }
    Ok(r)
}
