//! The ResNet-18 builder: PyTorch's parameter names, order and count, and logits equal to a
//! direct implementation of the reference network written here with plain loops.

mod common;
use common::*;
use std::collections::HashMap;
use tesla_distill::compiler::artifact::logits_graph;
use tesla_distill::compiler::eval::eval;
use tesla_distill::zoo::resnet::ResNet;
use tesla_distill::zoo::ModelSpec;

/// `[N,C,H,W]` activations as nested vectors.
type Act4 = Vec<Vec<Vec<Vec<f64>>>>;

fn conv(x: &Act4, w: &[f64], cout: usize, k: usize, stride: usize) -> Act4 {
    let (cin, h, wd) = (x[0].len(), x[0][0].len(), x[0][0][0].len());
    let pad = k / 2;
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    x.iter()
        .map(|img| {
            (0..cout)
                .map(|o| {
                    (0..ho)
                        .map(|i| {
                            (0..wo)
                                .map(|j| {
                                    let mut s = 0.0;
                                    for c in 0..cin {
                                        for a in 0..k {
                                            for b in 0..k {
                                                let (r, q) = (i * stride + a, j * stride + b);
                                                if r < pad
                                                    || q < pad
                                                    || r - pad >= h
                                                    || q - pad >= wd
                                                {
                                                    continue;
                                                }
                                                s += w[((o * cin + c) * k + a) * k + b]
                                                    * img[c][r - pad][q - pad];
                                            }
                                        }
                                    }
                                    s
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn instance_norm(x: &Act4, g: &[f64], b: &[f64]) -> Act4 {
    x.iter()
        .map(|img| {
            img.iter()
                .enumerate()
                .map(|(c, m)| {
                    let n = (m.len() * m[0].len()) as f64;
                    let mean = m.iter().flatten().sum::<f64>() / n;
                    let var = m.iter().flatten().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let d = (var + 1e-5).sqrt();
                    m.iter()
                        .map(|r| r.iter().map(|v| (v - mean) / d * g[c] + b[c]).collect())
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn map2(a: &Act4, b: Option<&Act4>, f: impl Fn(f64, f64) -> f64) -> Act4 {
    let mut out = a.clone();
    for (n, img) in out.iter_mut().enumerate() {
        for (c, m) in img.iter_mut().enumerate() {
            for (i, r) in m.iter_mut().enumerate() {
                for (j, v) in r.iter_mut().enumerate() {
                    *v = f(*v, b.map_or(0.0, |b| b[n][c][i][j]));
                }
            }
        }
    }
    out
}

fn relu(x: &Act4) -> Act4 {
    map2(x, None, |a, _| a.max(0.0))
}

/// The reference `networks.ResNet` forward (instance norm, global average pooling).
fn reference_logits(
    net: &ResNet,
    p: &HashMap<String, Vec<f64>>,
    x: &Act4,
    classes: usize,
) -> Vec<Vec<f64>> {
    let cbn = |x: &Act4, conv_name: &str, bn: &str, cout: usize, k: usize, stride: usize| {
        let y = conv(x, &p[&format!("{conv_name}.weight")], cout, k, stride);
        instance_norm(&y, &p[&format!("{bn}.weight")], &p[&format!("{bn}.bias")])
    };
    let mut cur = relu(&cbn(x, "conv1", "bn1", net.width, 3, 1));
    let mut cin = net.width;
    for (s, &n) in net.blocks.iter().enumerate() {
        let planes = net.width << s;
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let pre = format!("layer{}.{i}", s + 1);
            let a = relu(&cbn(
                &cur,
                &format!("{pre}.conv1"),
                &format!("{pre}.bn1"),
                planes,
                3,
                stride,
            ));
            let a = cbn(
                &a,
                &format!("{pre}.conv2"),
                &format!("{pre}.bn2"),
                planes,
                3,
                1,
            );
            let short = if stride != 1 || cin != planes {
                cbn(
                    &cur,
                    &format!("{pre}.shortcut.0"),
                    &format!("{pre}.shortcut.1"),
                    planes,
                    1,
                    stride,
                )
            } else {
                cur.clone()
            };
            cur = relu(&map2(&a, Some(&short), |u, v| u + v));
            cin = planes;
        }
    }
    let (w, b) = (&p["classifier.weight"], &p["classifier.bias"]);
    cur.iter()
        .map(|img| {
            let feat: Vec<f64> = img
                .iter()
                .map(|m| {
                    let n = (m.len() * m[0].len()) as f64;
                    m.iter().flatten().sum::<f64>() / n
                })
                .collect();
            (0..classes)
                .map(|k| b[k] + (0..cin).map(|c| w[k * cin + c] * feat[c]).sum::<f64>())
                .collect()
        })
        .collect()
}

#[test]
fn logits_equal_a_direct_implementation() {
    // Two blocks in the first stage (identity shortcuts) and projection shortcuts after it.
    let net = ResNet {
        width: 2,
        blocks: [2, 1, 1, 1],
    };
    let (n, c, h, w, classes) = (2, 3, 12, 10, 4);
    let m = net.build(n, [c, h, w], classes).unwrap();
    let mut r = rng(7);
    let theta = uniform(&mut r, &[m.num_params()], -0.5, 0.5);
    let x = uniform(&mut r, &[n, c, h, w], -1.0, 1.0);
    let params = params_by_name(&m, &theta.data);
    let img: Act4 = (0..n)
        .map(|a| {
            (0..c)
                .map(|b| {
                    (0..h)
                        .map(|i| {
                            (0..w)
                                .map(|j| x.data[((a * c + b) * h + i) * w + j])
                                .collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let want = reference_logits(&net, &params, &img, classes);
    let got = eval(&logits_graph(&m).unwrap(), &[theta, x]).unwrap()[0].clone();
    assert_eq!(got.shape, vec![n, classes]);
    for (row, want) in got.data.chunks(classes).zip(&want) {
        for (a, b) in row.iter().zip(want) {
            assert!(
                (a - b).abs() < 1e-9,
                "logit {a} vs the direct forward's {b}"
            );
        }
    }
}

#[test]
fn resnet18_has_pytorchs_parameters() {
    let spec = ModelSpec::parse("resnet18").unwrap();
    assert_eq!(spec.name(), "resnet18");
    let m = spec.build(1, [3, 32, 32], 10).unwrap();
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        &names[..9],
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.0.bn1.bias",
            "layer1.0.conv2.weight",
            "layer1.0.bn2.weight",
            "layer1.0.bn2.bias",
        ]
    );
    let i = names
        .iter()
        .position(|n| *n == "layer2.0.shortcut.0.weight")
        .unwrap();
    assert_eq!(
        &names[i - 1..i + 4],
        [
            "layer2.0.bn2.bias",
            "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.weight",
            "layer2.0.shortcut.1.bias",
            "layer2.1.conv1.weight",
        ]
    );
    assert_eq!(
        &names[names.len() - 2..],
        ["classifier.weight", "classifier.bias"]
    );
    assert!(!names.contains(&"layer1.0.shortcut.0.weight"));
    // The CIFAR ResNet-18 (BasicBlock, [2,2,2,2], affine norms) has 11,173,962 parameters.
    assert_eq!(m.num_params(), 11_173_962);
    let g = ModelSpec::parse("resnet18")
        .unwrap()
        .build(2, [1, 28, 28], 10)
        .unwrap();
    assert_eq!(g.graph.shape(g.logits), &[2, 10]);
    assert_eq!(g.num_params(), 11_173_962 - 2 * 64 * 9);
    let narrow = ModelSpec::parse("resnet18-w8").unwrap();
    assert_eq!(narrow.name(), "resnet18-w8");
    assert!(ModelSpec::parse("resnet18-x").is_err());
}
