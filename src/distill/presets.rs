//! Named distillation settings: the paper's Table 6 (with the image learning rate of this
//! project's gradient, the official value halved) and the reduced Fashion-MNIST runs of
//! docs/results.md.

use anyhow::{bail, Result};

/// A named set of distillation settings.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// Dataset kind (the spec still needs its directory).
    pub dataset: &'static str,
    /// Model.
    pub model: &'static str,
    /// Images per class.
    pub ipc: usize,
    /// T.
    pub syn_steps: usize,
    /// M.
    pub expert_epochs: usize,
    /// Max start epoch.
    pub max_start_epoch: usize,
    /// Student batch (`None`: all).
    pub batch_syn: Option<usize>,
    /// ZCA.
    pub zca: bool,
    /// Image learning rate for the docs/method.md gradient (the official value halved).
    pub lr_img: f64,
}

/// The paper's Table 6 and our Fashion-MNIST settings.
pub fn preset(name: &str) -> Result<Preset> {
    let p =
        |dataset, model, ipc, syn_steps, expert_epochs, max_start_epoch, batch_syn, zca, lr_img| {
            Preset {
                dataset,
                model,
                ipc,
                syn_steps,
                expert_epochs,
                max_start_epoch,
                batch_syn,
                zca,
                lr_img,
            }
        };
    Ok(match name {
        "cifar10-ipc1" => p("cifar10", "convnet-d3", 1, 50, 2, 3, None, true, 500.0),
        "cifar10-ipc10" => p("cifar10", "convnet-d3", 10, 30, 2, 20, None, true, 500.0),
        "cifar10-ipc50" => p("cifar10", "convnet-d3", 50, 30, 3, 40, None, false, 50.0),
        "cifar100-ipc1" => p("cifar100", "convnet-d3", 1, 20, 3, 20, None, true, 500.0),
        "cifar100-ipc10" => p("cifar100", "convnet-d3", 10, 15, 3, 30, None, false, 500.0),
        "cifar100-ipc50" => p("cifar100", "convnet-d3", 50, 50, 2, 40, Some(100), true, 500.0),
        "imagenet-ipc1" => p("imagenet64", "convnet-d4", 1, 10, 3, 6, Some(100), false, 5000.0),
        "imagenet-ipc2" => p("imagenet64", "convnet-d4", 2, 15, 3, 10, Some(100), false, 5000.0),
        "imagenet-ipc10" => p("imagenet64", "convnet-d4", 10, 20, 3, 10, Some(500), false, 5000.0),
        "imagenet-ipc50" => p("imagenet64", "convnet-d4", 50, 100, 3, 25, Some(500), false, 5000.0),
        // The README's reduced-scale Fashion-MNIST runs.
        "fmnist-ipc1" => p("fashion-mnist", "convnet-d3-w32", 1, 20, 2, 4, None, false, 10.0),
        "fmnist-ipc10" => p("fashion-mnist", "convnet-d3-w32", 10, 20, 2, 5, Some(20), false, 50.0),
        other => bail!("unknown preset '{other}': cifar10-ipc1|10|50, cifar100-ipc1|10|50, imagenet-ipc1|2|10|50, fmnist-ipc1|10"),
    })
}
