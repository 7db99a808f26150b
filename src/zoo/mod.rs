//! Built-in architectures, generated as forward graphs whose parameters are graph inputs, and the
//! `--model` argument that selects one of them or an ONNX file.
mod builder;
pub mod convnet;
pub mod resnet;
pub mod standard;
pub mod vit;

use crate::compiler::model::ForwardModel;
use crate::onnx::import::{BatchNormMode, ImportOptions};
use anyhow::{bail, Context, Result};
use convnet::{Act, ConvNet, Norm, Pool};
use resnet::ResNet;
use std::path::PathBuf;
use vit::Vit;

/// What `--model` names: a built-in builder or a forward ONNX file. In configuration files it is
/// the same string (`convnet-d3-w32`, `path/to/model.onnx[batchnorm=batch]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSpec {
    /// A ConvNet (`convnet-d3`, `convnet-d4`, with options such as `convnet-d3-w32-ln-max-leaky`).
    ConvNet(ConvNet),
    /// ResNet-18 with instance norm (`resnet18`, `resnet18-w16` for a narrower one).
    ResNet(ResNet),
    /// DC-bench's ViT (`vit`, with options `-pN` patch, `-dN` dim, `-lN` layers, `-hN` heads,
    /// `-mN` MLP width).
    Vit(Vit),
    /// A forward graph exported from PyTorch, and how its batch-norm nodes are lowered.
    Onnx(PathBuf, BatchNormMode),
}

/// What follows an ONNX model's path in its name when its batch-norm mode is not `auto`.
const BATCHNORM_SUFFIX: &str = "[batchnorm=";

impl TryFrom<String> for ModelSpec {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<ModelSpec> {
        ModelSpec::parse(&s)
    }
}

impl From<ModelSpec> for String {
    fn from(m: ModelSpec) -> String {
        m.name()
    }
}

impl ModelSpec {
    /// The same model with its batch-norm nodes lowered as `mode` says (built-in models have
    /// none: they are returned as they are).
    pub fn with_batchnorm(self, mode: BatchNormMode) -> ModelSpec {
        match self {
            ModelSpec::Onnx(p, _) => ModelSpec::Onnx(p, mode),
            other => other,
        }
    }

    /// The same model with an ONNX file's path made absolute, so that a name recorded in a run's
    /// files (experts, distilled sets) still names the file when read from another directory.
    pub fn resolved(self) -> Result<ModelSpec> {
        match self {
            ModelSpec::Onnx(p, mode) => {
                let abs = std::fs::canonicalize(&p)
                    .with_context(|| format!("cannot read the model file {}", p.display()))?;
                Ok(ModelSpec::Onnx(abs, mode))
            }
            other => Ok(other),
        }
    }

    /// [`ModelSpec::with_batchnorm`] when a mode is given, else the model as it is.
    pub fn with_batchnorm_given(self, mode: Option<BatchNormMode>) -> ModelSpec {
        match mode {
            Some(m) => self.with_batchnorm(m),
            None => self,
        }
    }

    /// Parses `convnet-dN[-wW][-in|-ln|-nonorm][-relu|-leaky|-sigmoid][-avg|-max|-nopool]`,
    /// `resnet18[-wW]`, `vit[-pP][-dD][-lL][-hH][-mM]` or a path ending in `.onnx`, optionally
    /// followed by `[batchnorm=MODE]` (the form [`ModelSpec::name`] writes into run metadata).
    pub fn parse(s: &str) -> Result<ModelSpec> {
        if s.ends_with(".onnx") {
            return Ok(ModelSpec::Onnx(PathBuf::from(s), BatchNormMode::Auto));
        }
        if let Some((path, mode)) = s
            .strip_suffix(']')
            .and_then(|r| r.rsplit_once(BATCHNORM_SUFFIX))
            .filter(|(p, _)| p.ends_with(".onnx"))
        {
            return Ok(ModelSpec::Onnx(PathBuf::from(path), mode.parse()?));
        }
        let mut parts = s.split('-');
        match parts.next() {
            Some("convnet") => {}
            Some("resnet18") => {
                let mut net = ResNet::resnet18();
                for p in parts {
                    match p.strip_prefix('w') {
                        Some(v) => {
                            net.width = v
                                .parse()
                                .with_context(|| format!("bad width in model '{s}'"))?
                        }
                        None => bail!("unknown option '{p}' in model '{s}' (resnet18 takes -wN)"),
                    }
                }
                return Ok(ModelSpec::ResNet(net));
            }
            Some("vit") => {
                let mut net = Vit::dc_bench();
                for p in parts {
                    let (key, val) = p.split_at(p.len().min(1));
                    let v: usize = val
                        .parse()
                        .with_context(|| format!("bad option '{p}' in model '{s}'"))?;
                    match key {
                        "p" => net.patch = v,
                        "d" => net.dim = v,
                        "l" => net.depth = v,
                        "h" => net.heads = v,
                        "m" => net.mlp_dim = v,
                        _ => bail!("unknown option '{p}' in model '{s}' (vit takes -pN -dN -lN -hN -mN)"),
                    }
                }
                return Ok(ModelSpec::Vit(net));
            }
            _ => bail!("unknown model '{s}': expected convnet-d3, convnet-d4 (options -wN, -ln, -nonorm, -leaky, -sigmoid, -max, -nopool), resnet18 (option -wN), vit (options -pN -dN -lN -hN -mN) or a path to a .onnx file"),
        }
        let mut net = ConvNet::standard(3);
        for p in parts {
            match p {
                "in" => net.norm = Norm::Instance,
                "ln" => net.norm = Norm::Layer,
                "nonorm" => net.norm = Norm::None,
                "relu" => net.act = Act::Relu,
                "leaky" => net.act = Act::LeakyRelu,
                "sigmoid" => net.act = Act::Sigmoid,
                "avg" => net.pool = Pool::Avg,
                "max" => net.pool = Pool::Max,
                "nopool" => net.pool = Pool::None,
                _ if p.starts_with('d') => {
                    net.depth = p[1..]
                        .parse()
                        .with_context(|| format!("bad depth in model '{s}'"))?
                }
                _ if p.starts_with('w') => {
                    net.width = p[1..]
                        .parse()
                        .with_context(|| format!("bad width in model '{s}'"))?
                }
                _ => bail!("unknown option '{p}' in model '{s}'"),
            }
        }
        Ok(ModelSpec::ConvNet(net))
    }

    /// The forward model for a batch of `batch` images of shape `input` and `classes` outputs.
    pub fn build(&self, batch: usize, input: [usize; 3], classes: usize) -> Result<ForwardModel> {
        match self {
            ModelSpec::ConvNet(n) => n.build(batch, input, classes),
            ModelSpec::ResNet(n) => n.build(batch, input, classes),
            ModelSpec::Vit(n) => n.build(batch, input, classes),
            ModelSpec::Onnx(p, batchnorm) => {
                let shape = [batch, input[0], input[1], input[2]];
                let opts = ImportOptions {
                    batchnorm: *batchnorm,
                    ..Default::default()
                };
                let m = crate::onnx::import::import_onnx(p, &shape, &opts).map_err(|e| {
                    // Every import error names the file once.
                    let file = p.display().to_string();
                    if format!("{e:#}").contains(&file) {
                        e
                    } else {
                        e.context(file)
                    }
                })?;
                let k = m.graph.shape(m.logits).get(1).copied().unwrap_or(0);
                if k != classes {
                    bail!(
                        "{}: the model has {k} outputs, the data has {classes} classes",
                        p.display()
                    );
                }
                Ok(m)
            }
        }
    }

    /// [`ModelSpec::name`] made safe as one folder name (a path-given model's name has `/` and `.`).
    pub fn folder_name(&self) -> String {
        self.name().replace(['/', '.', '[', ']', '='], "_")
    }

    /// A short stable name (for manifests, run metadata and cache keys).
    pub fn name(&self) -> String {
        match self {
            ModelSpec::ConvNet(n) => {
                let mut s = format!("convnet-d{}", n.depth);
                if n.width != 128 {
                    s += &format!("-w{}", n.width);
                }
                s += match n.norm {
                    Norm::Instance => "",
                    Norm::Layer => "-ln",
                    Norm::None => "-nonorm",
                };
                s += match n.act {
                    Act::Relu => "",
                    Act::LeakyRelu => "-leaky",
                    Act::Sigmoid => "-sigmoid",
                };
                s += match n.pool {
                    Pool::Avg => "",
                    Pool::Max => "-max",
                    Pool::None => "-nopool",
                };
                s
            }
            ModelSpec::ResNet(n) if n.width == 64 => "resnet18".to_string(),
            ModelSpec::ResNet(n) => format!("resnet18-w{}", n.width),
            ModelSpec::Vit(n) => {
                let d = Vit::dc_bench();
                let mut s = "vit".to_string();
                for (k, v, dv) in [
                    ("p", n.patch, d.patch),
                    ("d", n.dim, d.dim),
                    ("l", n.depth, d.depth),
                    ("h", n.heads, d.heads),
                    ("m", n.mlp_dim, d.mlp_dim),
                ] {
                    if v != dv {
                        s += &format!("-{k}{v}");
                    }
                }
                s
            }
            ModelSpec::Onnx(p, BatchNormMode::Auto) => p.display().to_string(),
            ModelSpec::Onnx(p, mode) => {
                format!("{}{BATCHNORM_SUFFIX}{}]", p.display(), mode.as_str())
            }
        }
    }
}
