//! The ViT builder: DC-bench's parameter names and order, and logits equal to a direct
//! implementation of the reference forward written here with plain loops.

mod common;
use common::*;
use std::collections::HashMap;
use tesla_distill::compiler::artifact::logits_graph;
use tesla_distill::compiler::eval::eval;
use tesla_distill::zoo::vit::Vit;
use tesla_distill::zoo::ModelSpec;

type Mat = Vec<Vec<f64>>;

/// `x · Wᵀ (+ b)` for `W` stored `[out, in]` row-major.
fn linear(x: &Mat, w: &[f64], b: Option<&[f64]>, dout: usize) -> Mat {
    x.iter()
        .map(|r| {
            (0..dout)
                .map(|o| {
                    let s: f64 = r
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * w[o * r.len() + i])
                        .sum();
                    s + b.map_or(0.0, |b| b[o])
                })
                .collect()
        })
        .collect()
}

fn layer_norm(x: &Mat, g: &[f64], b: &[f64]) -> Mat {
    x.iter()
        .map(|r| {
            let n = r.len() as f64;
            let m = r.iter().sum::<f64>() / n;
            let v = r.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n;
            r.iter()
                .enumerate()
                .map(|(i, a)| (a - m) / (v + 1e-5).sqrt() * g[i] + b[i])
                .collect()
        })
        .collect()
}

fn erf(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 3.0 {
        // Maclaurin series: 2/√π Σ (−1)^k x^(2k+1) / (k! (2k+1)).
        let (mut sum, mut term) = (0.0f64, a);
        for k in 0..200 {
            let t = term / (2 * k + 1) as f64;
            sum += t;
            if t.abs() < 1e-18 {
                break;
            }
            term *= -a * a / (k + 1) as f64;
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc by its continued fraction x + (1/2)/(x + 1/(x + (3/2)/(x + …))).
        let mut t = a;
        for k in (1..=80).rev() {
            t = a + (k as f64 / 2.0) / t;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / t
    };
    v.copysign(x)
}

fn add(a: &Mat, b: &Mat) -> Mat {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(x, y)| x + y).collect())
        .collect()
}

/// One image's logits through the reference `ViT.forward` (pool 'cls', no dropout).
fn reference(
    net: &Vit,
    p: &HashMap<String, Vec<f64>>,
    img: &[f64],
    c: usize,
    h: usize,
    w: usize,
    classes: usize,
) -> Vec<f64> {
    let ps = net.patch;
    let (gh, gw) = (h / ps, w / ps);
    // 'c (h p1) (w p2) -> (h w) (p1 p2 c)'
    let mut patches: Mat = Vec::new();
    for i in 0..gh {
        for j in 0..gw {
            let mut row = Vec::new();
            for a in 0..ps {
                for b in 0..ps {
                    for ch in 0..c {
                        row.push(img[(ch * h + i * ps + a) * w + j * ps + b]);
                    }
                }
            }
            patches.push(row);
        }
    }
    let d = net.dim;
    let emb = linear(
        &patches,
        &p["to_patch_embedding.1.weight"],
        Some(&p["to_patch_embedding.1.bias"]),
        d,
    );
    let mut x: Mat = vec![p["cls_token"].clone()];
    x.extend(emb);
    let n = x.len();
    for (t, row) in x.iter_mut().enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v += p["pos_embedding"][t * d + k];
        }
    }
    let (hn, dh) = (net.heads, net.dim_head);
    let inner = hn * dh;
    for l in 0..net.depth {
        let pre = format!("transformer.layers.{l}");
        let q = |s: &str| &p[&format!("{pre}.{s}")];
        let a = layer_norm(&x, q("0.norm.weight"), q("0.norm.bias"));
        let qkv = linear(&a, q("0.fn.to_qkv.weight"), None, 3 * inner);
        let mut out: Mat = vec![vec![0.0; inner]; n];
        for hh in 0..hn {
            let at = |t: usize, part: usize, k: usize| qkv[t][part * inner + hh * dh + k];
            for (t, row) in out.iter_mut().enumerate() {
                let dots: Vec<f64> = (0..n)
                    .map(|s| {
                        (0..dh).map(|k| at(t, 0, k) * at(s, 1, k)).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let m = dots.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = dots.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for k in 0..dh {
                    row[hh * dh + k] = (0..n).map(|s| e[s] / z * at(s, 2, k)).sum();
                }
            }
        }
        let o = linear(
            &out,
            q("0.fn.to_out.0.weight"),
            Some(q("0.fn.to_out.0.bias")),
            d,
        );
        x = add(&o, &x);
        let f = layer_norm(&x, q("1.norm.weight"), q("1.norm.bias"));
        let f = linear(
            &f,
            q("1.fn.net.0.weight"),
            Some(q("1.fn.net.0.bias")),
            net.mlp_dim,
        );
        let f: Mat = f
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))
                    .collect()
            })
            .collect();
        let f = linear(&f, q("1.fn.net.3.weight"), Some(q("1.fn.net.3.bias")), d);
        x = add(&f, &x);
    }
    let hd = layer_norm(
        &x[..1].to_vec(),
        &p["mlp_head.0.weight"],
        &p["mlp_head.0.bias"],
    );
    linear(
        &hd,
        &p["mlp_head.1.weight"],
        Some(&p["mlp_head.1.bias"]),
        classes,
    )
    .remove(0)
}

#[test]
fn logits_equal_a_direct_implementation() {
    let net = Vit {
        patch: 2,
        dim: 6,
        depth: 2,
        heads: 2,
        dim_head: 3,
        mlp_dim: 5,
    };
    let (n, c, h, w, classes) = (2, 2, 4, 6, 3);
    let m = net.build(n, [c, h, w], classes).unwrap();
    let mut r = rng(3);
    let theta = uniform(&mut r, &[m.num_params()], -0.7, 0.7);
    let x = uniform(&mut r, &[n, c, h, w], -1.0, 1.0);
    let params = params_by_name(&m, &theta.data);
    let got = eval(&logits_graph(&m).unwrap(), &[theta, x.clone()]).unwrap()[0].clone();
    assert_eq!(got.shape, vec![n, classes]);
    let per = c * h * w;
    for i in 0..n {
        let want = reference(
            &net,
            &params,
            &x.data[i * per..(i + 1) * per],
            c,
            h,
            w,
            classes,
        );
        for (a, b) in got.data[i * classes..(i + 1) * classes].iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-9,
                "logit {a} vs the direct forward's {b}"
            );
        }
    }
}

#[test]
fn dc_bench_vit_has_the_reference_parameters() {
    let spec = ModelSpec::parse("vit").unwrap();
    assert_eq!(spec.name(), "vit");
    let m = spec.build(1, [3, 32, 32], 10).unwrap();
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        &names[..12],
        [
            "pos_embedding",
            "cls_token",
            "to_patch_embedding.1.weight",
            "to_patch_embedding.1.bias",
            "transformer.layers.0.0.norm.weight",
            "transformer.layers.0.0.norm.bias",
            "transformer.layers.0.0.fn.to_qkv.weight",
            "transformer.layers.0.0.fn.to_out.0.weight",
            "transformer.layers.0.0.fn.to_out.0.bias",
            "transformer.layers.0.1.norm.weight",
            "transformer.layers.0.1.norm.bias",
            "transformer.layers.0.1.fn.net.0.weight",
        ]
    );
    assert_eq!(
        &names[names.len() - 4..],
        [
            "mlp_head.0.weight",
            "mlp_head.0.bias",
            "mlp_head.1.weight",
            "mlp_head.1.bias"
        ]
    );
    // Shapes of the reference modules: pos [1,65,512], cls [1,1,512], patch Linear(48,512),
    // six layers of LayerNorm(512) + Linear(512,1536,no bias) + Linear(512,512) + LayerNorm(512)
    // + Linear(512,512) + Linear(512,512), then LayerNorm(512) + Linear(512,10).
    let layer = 1024 + 512 * 1536 + (512 * 512 + 512) + 1024 + 2 * (512 * 512 + 512);
    assert_eq!(
        m.num_params(),
        65 * 512 + 512 + (48 * 512 + 512) + 6 * layer + 1024 + 5130
    );
    let fm = spec.build(2, [1, 28, 28], 10).unwrap();
    assert_eq!(fm.graph.shape(fm.logits), &[2, 10]);
    let small = ModelSpec::parse("vit-p7-d32-l2-h2-m64").unwrap();
    assert_eq!(small.name(), "vit-p7-d32-l2-h2-m64");
    assert!(small.build(1, [1, 28, 28], 10).is_ok());
    let e = format!(
        "{:#}",
        ModelSpec::parse("vit")
            .unwrap()
            .build(1, [1, 30, 30], 10)
            .unwrap_err()
    );
    assert!(e.contains("not divisible by the patch size 4"), "{e}");
    assert!(ModelSpec::parse("vit-q3").is_err());
}
