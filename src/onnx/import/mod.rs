//! Import of forward models from ONNX files (PyTorch exports, chiefly).
//!
//! The importer walks the ONNX graph once, in order. Each value is either a known constant
//! (initializers of integer type, `Constant` nodes and everything computed from constants only,
//! which folds the integer shape sub-graphs exporters emit), a parameter candidate (a float
//! initializer, or a float graph input when the weights were not exported) or an IR value. Every
//! supported op is lowered to IR primitives by the rules in the family modules; composite ops
//! never reach the IR. A parameter candidate becomes a trainable [`Param`] (a graph input) the
//! first time an op consumes it as data; ops that need constant operands (reshape targets, pow
//! exponents, batch-norm statistics) read the values instead.
//!
//! What PyTorch's exporters really emit shaped this module: the dynamo exporter writes weights to
//! an external data file beside the model (read here); its optimizer (on by default), like the
//! TorchScript exporter's constant folding, folds norm affine parameters into new constants and
//! merges equal initializers, so that layers would train tied. Such files still import, and what
//! can be detected (a parameter feeding several layers, exporter-generated parameter names, norm
//! scales that are constants) is reported in [`ForwardModel::warnings`]. The keep-every-parameter
//! export calls (`tools/export_torch.py`) give parameters under their `named_parameters()`
//! names, in that order, with integer shape sub-graphs that are folded here. A BatchNorm folded
//! into the preceding convolution keeps the convolution's names and cannot be detected.

mod function;
mod math;
mod nn;
mod norm;
mod proto;
mod shape;
mod tensor;

use crate::compiler::ir::{DType, Graph, Tensor, ValueId};
use crate::compiler::model::{ForwardModel, InitRule, NormStatistics, Param};
use crate::onnx::{onnx_dtype_name, pb};
use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use proto::NodeRef;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Where the README lists what the importer supports (quoted by error messages).
pub const OP_TABLE_REF: &str = "see README.md, 'Supported ONNX ops'";
/// Where the README describes the recommended PyTorch export call.
pub const EXPORT_REF: &str = "see README.md, 'Exporting from PyTorch'";

/// The ONNX ops the importer lowers (default domain), with the limits of each lowering: the
/// source of the README's "Supported ONNX ops" table. Any op whose operands are all constants is
/// also folded when it appears in the folding list of the shape module.
pub const SUPPORTED_OPS: &[(&str, &str)] = &[
    ("Conv", "1-D to N-D; group, strides, dilations, pads, auto_pad (NOTSET, SAME_UPPER, SAME_LOWER, VALID); bias"),
    ("ConvTranspose", "as Conv, plus output_padding and output_shape"),
    ("Gemm", "transA, transB, alpha, beta"),
    ("MatMul", "batched with broadcasting; 1-D operands"),
    ("Add, Sub, Mul, Div", "numpy broadcasting"),
    ("Pow", "constant scalar exponent"),
    ("Neg, Abs, Reciprocal, Exp, Log, Sqrt, Erf", ""),
    ("Relu, LeakyRelu, Sigmoid, Tanh, Softplus, Elu, HardSigmoid, HardSwish, Clip", "Clip with constant bounds"),
    ("Gelu", "approximate = none or tanh"),
    ("Softmax, LogSoftmax", "any axis; opset < 13 semantics too"),
    ("ReduceSum, ReduceMean, ReduceMax, ReduceMin", "axes as attribute or constant input; keepdims; noop_with_empty_axes"),
    ("Greater, Less, Equal, GreaterOrEqual, LessOrEqual, Where", ""),
    ("Cast, CastLike", "all floats become the graph's float type"),
    ("AveragePool", "pads, auto_pad, strides, dilations, ceil_mode, count_include_pad (exact divisors)"),
    ("MaxPool", "pads, auto_pad, strides, dilations, ceil_mode; not the Indices output"),
    ("GlobalAveragePool, GlobalMaxPool", ""),
    ("BatchNormalization", "batch statistics (training_mode = 1, or the inference form with untouched statistics) or the file's running statistics; --batchnorm auto|batch|running"),
    ("InstanceNormalization, LayerNormalization, GroupNormalization", "GroupNormalization scale per channel or per group"),
    ("Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand", "constant shapes and axes; Reshape 0/−1 and allowzero"),
    ("Concat, Split", "Split by sizes, num_outputs or equal parts"),
    ("SplitToSequence, SequenceAt, ConcatFromSequence", "sequences from a static split (sizes, one chunk size, or pieces of 1 with keepdims); constant positions; new_axis"),
    ("Slice", "constant bounds; step 1 only (other steps only on constants)"),
    ("Gather", "constant indices"),
    ("Pad", "constant mode; negative pads crop"),
    ("Identity, Dropout, Constant", "Dropout as inference (identity)"),
    ("Shape, Size, ConstantOfShape, Range", "folded (static shapes)"),
];

/// Options of the importer.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The float type the graph is built in: every float tensor of the file is converted to it
    /// (F32 for artifacts, F64 for finite-difference checks).
    pub dtype: DType,
    /// Which statistics BatchNormalization nodes normalise with.
    pub batchnorm: BatchNormMode,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: DType::F32,
            batchnorm: BatchNormMode::Auto,
        }
    }
}

/// On what evidence [`BatchNormMode::Auto`] chose the statistics of an inference-form node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchNormReason {
    /// The exporter recorded the traced op (train() or eval()) in the node.
    Traced,
    /// The running statistics: untouched defaults, or trained values.
    Statistics,
}

/// How BatchNormalization nodes are lowered.
///
/// PyTorch trains batch norm with batch statistics. The TorchScript exporter in training mode
/// says so (`training_mode = 1`); the dynamo exporter writes every BatchNormalization in its
/// inference form (running statistics) even for a model in training mode, so the file alone
/// describes a network normalised by its initial statistics. `Auto` reads the file: a node the
/// exporter traced from a model in train() (it names the node after the ATen op) gets batch
/// statistics and one traced in eval() keeps the running ones; without that evidence, untouched
/// initial statistics (mean 0, variance 1, or no values at all) mean a network exported to be
/// trained and get batch statistics, trained statistics mean one exported for inference and are
/// kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchNormMode {
    /// Decide per node from the file (see above).
    #[default]
    Auto,
    /// Every node normalises with batch statistics.
    Batch,
    /// Every node normalises with the running statistics of the file.
    Running,
}

impl BatchNormMode {
    /// The name used on the command line and in model names.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchNormMode::Auto => "auto",
            BatchNormMode::Batch => "batch",
            BatchNormMode::Running => "running",
        }
    }
}

impl std::str::FromStr for BatchNormMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BatchNormMode::Auto),
            "batch" => Ok(BatchNormMode::Batch),
            "running" => Ok(BatchNormMode::Running),
            _ => bail!("unknown batch-norm mode '{s}': expected auto, batch or running"),
        }
    }
}

/// Reads and decodes an ONNX file. A file that is not a decodable `ModelProto` with a graph is
/// one error: `not a valid ONNX model: <file>: <reason>`.
pub fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = |why: String| anyhow!("not a valid ONNX model: {}: {why}", path.display());
    let m = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| invalid(e.to_string()))?;
    // Protobuf decoding is lenient (random bytes can parse as unknown fields): insist on the
    // parts every model has.
    let Some(g) = &m.graph else {
        return Err(invalid("no graph".into()));
    };
    if m.ir_version.is_none() {
        return Err(invalid("no IR version".into()));
    }
    if g.output.is_empty() || g.node.is_empty() {
        return Err(invalid("the graph has no nodes or no outputs".into()));
    }
    Ok(m)
}

/// Imports a forward classifier: reads `path` (with external weight files beside it), takes its
/// first non-initializer input as the image input `x` with the static shape `input` (\[B,C,H,W\]
/// for images) and its first output as the logits, which must come out as \[B, classes\].
pub fn import_onnx(path: &Path, input: &[usize], opts: &ImportOptions) -> Result<ForwardModel> {
    let m = read_model(path)?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    let fm = import_model(&m, base, input, opts, &format!("onnx:{}", path.display()))?;
    let s = fm.graph.shape(fm.logits);
    if s.len() != 2 || s[0] != input[0] {
        bail!(
            "the model's output has shape {s:?}; expected logits [batch = {}, classes]",
            input[0]
        );
    }
    Ok(fm)
}

/// Imports a decoded model (see [`import_onnx`]) without checking the output's shape, so any
/// single-output network can be lowered. `base` is the directory that external data locations
/// are relative to; `source` goes to [`ForwardModel::source`].
pub fn import_model(
    m: &pb::ModelProto,
    base: Option<&Path>,
    input: &[usize],
    opts: &ImportOptions,
    source: &str,
) -> Result<ForwardModel> {
    let graph = m
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("not a valid ONNX model: no graph"))?;
    if !opts.dtype.is_float() {
        bail!("the import dtype must be a float type");
    }
    if input.is_empty() || input.contains(&0) {
        bail!("the input shape {input:?} must be non-empty with non-zero dimensions");
    }
    let opset = m
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(1);
    let mut cx = Ctx::new(opts.dtype, opset, base.map(Path::to_path_buf));
    cx.batchnorm_mode = opts.batchnorm;
    cx.read_interface(graph, input)?;
    let nodes = function::inline(m, &graph.node)?;
    for (i, node) in nodes.iter().enumerate() {
        cx.node(node, i)?;
    }
    cx.finish(graph, source)
}

/// What the importer knows about an ONNX value.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// A constant (folded, `Constant`, or a non-parameter initializer).
    Const(Tensor),
    /// Parameter candidate `k` (not turned into a graph input yet).
    Param(usize),
    /// A value of the IR graph.
    Ir(ValueId),
}

/// A float initializer or float graph input that becomes a parameter when used as data.
struct Cand<'m> {
    name: String,
    shape: Vec<usize>,
    proto: Option<&'m pb::TensorProto>,
    /// Sort key: initializer order first, then graph input order (PyTorch `parameters()` order
    /// in both keep-mode exports).
    order: usize,
}

/// Import state; the lowering rules in the family modules work on it.
pub(crate) struct Ctx<'m> {
    /// The graph under construction.
    pub g: Graph,
    /// Float type of the graph.
    pub fdt: DType,
    /// Default-domain opset of the file.
    pub opset: i64,
    base: Option<PathBuf>,
    vals: HashMap<String, Val>,
    /// Why a name has no value (an unsupported optional output), for the error at its use.
    missing: HashMap<String, String>,
    cands: Vec<Cand<'m>>,
    cand_ir: HashMap<usize, ValueId>,
    initial: HashMap<usize, Tensor>,
    const_ir: HashMap<String, ValueId>,
    /// Sequences (from `SplitToSequence` of a static split): name → the pieces, in order.
    pub seqs: HashMap<String, Vec<ValueId>>,
    /// Value name → the candidate it is a pass-through view of (reshape, unsqueeze, cast …).
    origin: HashMap<String, usize>,
    /// Per candidate, the nodes (other than pass-through views) that consume it.
    uses: HashMap<usize, Vec<String>>,
    roles: HashMap<usize, InitRule>,
    /// Values that are normalised activations (a norm without affine, maybe reshaped).
    pub normalized: HashSet<String>,
    /// Normalised activations multiplied by a scale (the next `Add` is the norm's shift).
    pub norm_scaled: HashSet<String>,
    /// Outputs of `Reshape` nodes (GroupNorm is exported as Reshape → InstanceNormalization).
    pub reshaped: HashSet<String>,
    x: Option<ValueId>,
    /// Messages for the user.
    pub warnings: Vec<String>,
    /// The importer's batch-norm option.
    pub batchnorm_mode: BatchNormMode,
    /// The statistics each BatchNormalization node got, and on what evidence `Auto` chose them
    /// for an inference-form node (reported in one line per choice at the end).
    pub batchnorm: BTreeMap<String, (NormStatistics, Option<BatchNormReason>)>,
}

/// Largest tensor (elements) the importer accepts in a graph.
const MAX_ELEMENTS: usize = 1 << 40;

/// Ops that only change the view of their first input: a parameter seen through them is still
/// the same parameter.
const PASS_THROUGH: &[&str] = &[
    "Identity",
    "Dropout",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Transpose",
    "Cast",
    "CastLike",
    "Expand",
];

impl<'m> Ctx<'m> {
    fn new(fdt: DType, opset: i64, base: Option<PathBuf>) -> Ctx<'m> {
        Ctx {
            g: Graph::new(),
            fdt,
            opset,
            base,
            vals: HashMap::new(),
            missing: HashMap::new(),
            cands: Vec::new(),
            cand_ir: HashMap::new(),
            initial: HashMap::new(),
            const_ir: HashMap::new(),
            seqs: HashMap::new(),
            origin: HashMap::new(),
            uses: HashMap::new(),
            roles: HashMap::new(),
            normalized: HashSet::new(),
            norm_scaled: HashSet::new(),
            reshaped: HashSet::new(),
            x: None,
            warnings: Vec::new(),
            batchnorm_mode: BatchNormMode::Auto,
            batchnorm: BTreeMap::new(),
        }
    }

    /// Graph inputs and initializers: the image input, parameter candidates and constants.
    fn read_interface(&mut self, graph: &'m pb::GraphProto, input: &[usize]) -> Result<()> {
        let init_names: HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        for (k, t) in graph.initializer.iter().enumerate() {
            let name = t.name.clone().unwrap_or_default();
            let code = t.data_type.unwrap_or(0);
            let dt =
                proto::ir_dtype(code, self.fdt).with_context(|| format!("initializer '{name}'"))?;
            let shape = proto::dims(t).with_context(|| format!("initializer '{name}'"))?;
            // Rank-0 float initializers are the exporters' scalar constants, never PyTorch
            // parameters worth training.
            if dt.is_float() && !shape.is_empty() {
                self.origin.insert(name.clone(), self.cands.len());
                self.cands.push(Cand {
                    name: name.clone(),
                    shape,
                    proto: Some(t),
                    order: k,
                });
                self.vals.insert(name, Val::Param(self.cands.len() - 1));
            } else {
                let v = proto::decode_tensor(t, self.base.as_deref(), self.fdt)?;
                self.vals.insert(name, Val::Const(v));
            }
        }
        let n_init = graph.initializer.len();
        for (k, vi) in graph.input.iter().enumerate() {
            let name = vi.name.clone().unwrap_or_default();
            if init_names.contains(name.as_str()) {
                continue;
            }
            let (code, dims) = tensor_type(vi);
            if self.x.is_none() {
                self.image_input(&name, code, dims, input)?;
                continue;
            }
            let dt = proto::ir_dtype(code, self.fdt).ok().filter(|d| d.is_float()).ok_or_else(|| {
                anyhow!(
                    "graph input '{name}' has element type {}: only the image input and float parameters can be graph inputs",
                    onnx_dtype_name(code)
                )
            })?;
            let _ = dt;
            let shape = dims
                .map(|d| {
                    d.into_iter()
                        .map(|x| x.ok_or(()))
                        .collect::<Result<Vec<usize>, ()>>()
                })
                .transpose()
                .ok()
                .flatten()
                .ok_or_else(|| {
                    anyhow!(
                        "graph input '{name}' (a parameter without a value) needs a static shape"
                    )
                })?;
            self.origin.insert(name.clone(), self.cands.len());
            self.cands.push(Cand {
                name: name.clone(),
                shape,
                proto: None,
                order: n_init + k,
            });
            self.vals.insert(name, Val::Param(self.cands.len() - 1));
        }
        if self.x.is_none() {
            bail!("the model has no graph input besides its initializers");
        }
        Ok(())
    }

    fn image_input(
        &mut self,
        name: &str,
        code: i32,
        dims: Option<Vec<Option<usize>>>,
        input: &[usize],
    ) -> Result<()> {
        let float = proto::ir_dtype(code, self.fdt)
            .map(|d| d.is_float())
            .unwrap_or(false);
        if !float {
            bail!(
                "the model input '{name}' has element type {}; expected a float image tensor",
                onnx_dtype_name(code)
            );
        }
        if let Some(d) = dims {
            let show: Vec<String> = d
                .iter()
                .map(|x| x.map_or("?".into(), |v| v.to_string()))
                .collect();
            if d.len() != input.len() {
                bail!(
                    "the model input '{name}' has rank {} ([{}]) but the given input shape {input:?} has rank {}",
                    d.len(),
                    show.join(", "),
                    input.len()
                );
            }
            if d.iter().zip(input).any(|(a, b)| a.is_some_and(|a| a != *b)) {
                bail!(
                    "the model input '{name}' has static shape [{}], not the given {input:?}",
                    show.join(", ")
                );
            }
        }
        let x = self.g.input("x", self.fdt, input.to_vec());
        self.x = Some(x);
        self.vals.insert(name.to_string(), Val::Ir(x));
        Ok(())
    }

    // ----- value access for the lowering rules -----

    fn get(&self, name: &str) -> Result<&Val> {
        self.vals.get(name).ok_or_else(|| match self.missing.get(name) {
            Some(why) => anyhow!("value '{name}' is not available: {why}"),
            None => anyhow!("value '{name}' is not defined before its use (is the graph in topological order?)"),
        })
    }

    /// The value as an IR value (materialising constants and parameters).
    pub fn ir(&mut self, name: &str) -> Result<ValueId> {
        match self.get(name)?.clone() {
            Val::Ir(v) => Ok(v),
            Val::Const(t) => {
                if let Some(&v) = self.const_ir.get(name) {
                    return Ok(v);
                }
                let v = self.g.constant(t);
                self.const_ir.insert(name.to_string(), v);
                Ok(v)
            }
            Val::Param(k) => self.materialise(k),
        }
    }

    fn materialise(&mut self, k: usize) -> Result<ValueId> {
        if let Some(&v) = self.cand_ir.get(&k) {
            return Ok(v);
        }
        let (name, shape, proto) = {
            let c = &self.cands[k];
            (c.name.clone(), c.shape.clone(), c.proto)
        };
        if let Some(p) = proto {
            let t = proto::decode_tensor(p, self.base.as_deref(), self.fdt)?;
            self.initial.insert(k, t);
        }
        let v = self.g.input(&name, self.fdt, shape);
        self.cand_ir.insert(k, v);
        Ok(v)
    }

    /// The value as a constant tensor (an error for run-time values).
    pub fn konst(&mut self, name: &str) -> Result<Tensor> {
        match self.get(name)?.clone() {
            Val::Const(t) => Ok(t),
            Val::Param(k) => match self.cands[k].proto {
                Some(p) => proto::decode_tensor(p, self.base.as_deref(), self.fdt),
                None => {
                    bail!("'{name}' must be a constant, but it is a graph input without a value")
                }
            },
            Val::Ir(_) => bail!("'{name}' must be a constant, but it is computed from the input"),
        }
    }

    /// The constant behind `name` if it is a constant (not a parameter candidate).
    pub fn as_const(&self, name: &str) -> Option<&Tensor> {
        match self.vals.get(name) {
            Some(Val::Const(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether `name` is a float graph input without a value (weights not exported).
    pub fn is_valueless_input(&self, name: &str) -> bool {
        matches!(self.vals.get(name), Some(Val::Param(k)) if self.cands[*k].proto.is_none())
    }

    /// The static shape of a value.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(match self.get(name)? {
            Val::Const(t) => t.shape.clone(),
            Val::Param(k) => self.cands[*k].shape.clone(),
            Val::Ir(v) => self.g.shape(*v).to_vec(),
        })
    }

    /// The element type of a value.
    pub fn dtype(&self, name: &str) -> Result<DType> {
        Ok(match self.get(name)? {
            Val::Const(t) => t.dtype,
            Val::Param(_) => self.fdt,
            Val::Ir(v) => self.g.dtype(*v),
        })
    }

    /// The parameter candidate a value is a view of, if any.
    pub fn param_of(&self, name: &str) -> Option<usize> {
        self.origin.get(name).copied()
    }

    /// Records the PyTorch init rule of the parameter behind `name` (used when the file carries
    /// no values), keeping the first rule found.
    pub fn set_role(&mut self, name: &str, rule: InitRule) {
        if let Some(k) = self.param_of(name) {
            self.roles.entry(k).or_insert(rule);
        }
    }

    /// Adds a warning for the user.
    pub fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.warnings.push(msg);
        }
    }

    // ----- the walk -----

    fn node(&mut self, p: &pb::NodeProto, i: usize) -> Result<()> {
        let op = p.op_type.as_deref().unwrap_or("");
        let name = p
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{op}_{i}"));
        let n = NodeRef {
            p,
            name: name.clone(),
            op,
        };
        let domain = p.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") {
            bail!("unsupported op '{domain}.{op}' in node '{name}' ({OP_TABLE_REF})");
        }
        for inp in p.input.iter().filter(|s| !s.is_empty()) {
            // Sequences are not values; the sequence ops read them from `seqs`.
            if self.seqs.contains_key(inp) {
                continue;
            }
            self.get(inp)
                .with_context(|| format!("node '{name}' ({op})"))?;
        }
        let outs = match self.lower(&n) {
            Ok(Some(v)) => v,
            Ok(None) => bail!("unsupported op '{op}' in node '{name}' ({OP_TABLE_REF})"),
            Err(e) => bail!("node '{name}' ({op}): {e:#}"),
        };
        self.track(&n);
        // Static shapes from a file can be absurd; stop before anything sizes a buffer by them.
        for v in &outs {
            if let Val::Ir(id) = v {
                let s = self.g.shape(*id);
                if s.iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_none_or(|n| n > MAX_ELEMENTS)
                {
                    bail!("node '{name}' ({op}): its output shape {s:?} is too large");
                }
            }
        }
        for (k, o) in p.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            match outs.get(k) {
                Some(v) => {
                    self.vals.insert(o.clone(), v.clone());
                }
                None => {
                    self.missing.insert(
                        o.clone(),
                        format!(
                            "output {k} of node '{name}' ({op}) is not supported ({OP_TABLE_REF})"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Parameter provenance and layer uses, for the init rules and the folded/shared checks.
    fn track(&mut self, n: &NodeRef) {
        let outs: Vec<String> =
            n.p.output
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect();
        if PASS_THROUGH.contains(&n.op) {
            let Some(i0) = n.input(0) else { return };
            if let Some(k) = self.param_of(i0) {
                for o in &outs {
                    self.origin.insert(o.clone(), k);
                }
            }
            for set in [&mut self.normalized, &mut self.norm_scaled] {
                if set.contains(i0) {
                    set.extend(outs.iter().cloned());
                }
            }
        } else if !matches!(n.op, "Shape" | "Size") {
            for i in n.p.input.iter().filter(|s| !s.is_empty()) {
                if let Some(k) = self.param_of(i) {
                    let u = self.uses.entry(k).or_default();
                    if !u.contains(&n.name) {
                        u.push(n.name.clone());
                    }
                }
            }
        }
        if n.op == "Reshape" {
            self.reshaped.extend(outs);
        }
    }

    fn lower(&mut self, n: &NodeRef) -> Result<Option<Vec<Val>>> {
        if let Some(v) = shape::fold(self, n)? {
            return Ok(Some(v));
        }
        let one = |v: ValueId| Ok(Some(vec![Val::Ir(v)]));
        match n.op {
            "Constant" => Ok(Some(vec![Val::Const(shape::constant_node(self, n)?)])),
            "Identity" => Ok(Some(vec![self.get(n.req(0)?)?.clone()])),
            "Dropout" => {
                // Inference semantics: identity (the mask output, if used, is all true).
                let training = n
                    .input(2)
                    .and_then(|t| self.as_const(t))
                    .is_some_and(|t| t.data.iter().any(|&v| v != 0.0));
                let ratio = n
                    .input(1)
                    .and_then(|r| self.as_const(r))
                    .and_then(|t| t.data.first().copied())
                    .unwrap_or(0.5);
                if training && ratio > 0.0 {
                    self.warn(format!(
                        "Dropout in node '{}' (training mode, ratio {ratio}) is imported as the identity: artifacts have \
                         no random masks",
                        n.name
                    ));
                }
                let x = self.get(n.req(0)?)?.clone();
                let s = self.shape(n.req(0)?)?;
                let mask = Tensor::new(DType::Bool, s.clone(), vec![1.0; s.iter().product()]);
                Ok(Some(vec![x, Val::Const(mask)]))
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => one(math::binary(self, n)?),
            "Neg" | "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Erf"
            | "Reciprocal" | "Abs" | "Clip" | "Gelu" | "Softplus" | "Elu" | "HardSigmoid"
            | "HardSwish" => one(math::unary(self, n)?),
            "Greater" | "Less" | "Equal" | "GreaterOrEqual" | "LessOrEqual" => {
                one(math::compare(self, n)?)
            }
            "Where" => one(math::where_(self, n)?),
            "Cast" | "CastLike" => Ok(Some(vec![math::cast(self, n)?])),
            "Gemm" => one(math::gemm(self, n)?),
            "MatMul" => one(math::matmul(self, n)?),
            "Softmax" | "LogSoftmax" => one(math::softmax(self, n)?),
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" => one(math::reduce(self, n)?),
            "Conv" => one(nn::conv(self, n)?),
            "ConvTranspose" => one(nn::conv_transpose(self, n)?),
            "AveragePool" => one(nn::avg_pool(self, n)?),
            "MaxPool" => {
                if n.p.output.get(1).is_some_and(|s| !s.is_empty()) {
                    bail!("the Indices output is not supported ({OP_TABLE_REF})");
                }
                one(nn::max_pool(self, n)?)
            }
            "GlobalAveragePool" | "GlobalMaxPool" => one(nn::global_pool(self, n)?),
            "InstanceNormalization" => one(norm::instance_norm(self, n)?),
            "LayerNormalization" => Ok(Some(norm::layer_norm(self, n)?)),
            "GroupNormalization" => one(norm::group_norm(self, n)?),
            "BatchNormalization" => one(norm::batch_norm(self, n)?),
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => one(tensor::reshape_like(self, n)?),
            "Transpose" => one(tensor::transpose(self, n)?),
            "Expand" => one(tensor::expand(self, n)?),
            "Concat" => one(tensor::concat(self, n)?),
            "Split" => Ok(Some(tensor::split(self, n)?)),
            "SplitToSequence" => {
                let pieces = tensor::split_to_sequence(self, n)?;
                let out = n.p.output.first().cloned().unwrap_or_default();
                self.seqs.insert(out, pieces);
                // The sequence lives in `seqs`; only the sequence ops read it.
                Ok(Some(vec![]))
            }
            "SequenceAt" => one(tensor::sequence_at(self, n)?),
            "ConcatFromSequence" => one(tensor::concat_from_sequence(self, n)?),
            "Slice" => one(tensor::slice(self, n)?),
            "Gather" => one(tensor::gather(self, n)?),
            "Pad" => one(tensor::pad(self, n)?),
            _ => Ok(None),
        }
    }

    fn finish(mut self, graph: &pb::GraphProto, source: &str) -> Result<ForwardModel> {
        let out_name = graph
            .output
            .first()
            .and_then(|o| o.name.clone())
            .ok_or_else(|| anyhow!("the model has no output"))?;
        if graph.output.len() > 1 {
            self.warn(format!(
                "the model has {} outputs; only the first ('{out_name}') is used as the logits",
                graph.output.len()
            ));
        }
        let mut logits = match self.get(&out_name)? {
            Val::Ir(v) => *v,
            _ => bail!("the model output '{out_name}' does not depend on the input"),
        };
        let x = self.x.ok_or_else(|| anyhow!("the model has no input"))?;
        if logits == x || self.cand_ir.values().any(|&v| v == logits) {
            // The output must be a value of its own, named "logits".
            logits = self
                .g
                .push1("", crate::compiler::ir::Op::Identity, &[logits])?;
        }
        self.g.rename(logits, "logits");
        self.g.outputs = vec![logits];

        let mut ks: Vec<usize> = self.cand_ir.keys().copied().collect();
        ks.sort_by_key(|&k| self.cands[k].order);
        let mut params = Vec::with_capacity(ks.len());
        for &k in &ks {
            let c = &self.cands[k];
            let initial = self.initial.remove(&k);
            // A recognised layer gets PyTorch's default rule, so that every expert and every
            // evaluation network starts from its own draw; the file's values stay the initial
            // parameters of the artifacts (`init.safetensors`) and of layers without a rule.
            let init = match (&initial, self.roles.get(&k)) {
                (_, Some(r)) => r.clone(),
                (Some(_), None) => InitRule::FromFile,
                (None, None) => bail!(
                    "parameter '{}' has no value in the file and its layer is not recognised, so no PyTorch default \
                     initialisation applies; export the model with its weights ({EXPORT_REF})",
                    c.name
                ),
            };
            params.push(Param {
                name: c.name.clone(),
                value: self.cand_ir[&k],
                shape: c.shape.clone(),
                init,
                initial,
            });
        }
        // Folded or merged parameters: an initializer that feeds several layers, or one whose
        // name is an exporter's, not PyTorch's.
        for &k in &ks {
            let (name, shape, from_file) = {
                let c = &self.cands[k];
                (c.name.clone(), c.shape.clone(), c.proto.is_some())
            };
            if let Some(u) = self.uses.get(&k).filter(|u| u.len() > 1).cloned() {
                let shown: Vec<String> = u.iter().take(4).map(|s| format!("'{s}'")).collect();
                let msg = format!(
                    "parameter '{}' feeds {} layers (nodes {}{}): unless the model ties them, the exporter merged equal \
                     initializers and these layers would be trained tied; re-export keeping every parameter ({EXPORT_REF})",
                    name,
                    u.len(),
                    shown.join(", "),
                    if u.len() > 4 { ", …" } else { "" }
                );
                self.warn(msg);
            }
            if from_file && generated_name(&name) {
                self.warn(format!(
                    "parameter '{}' {:?} has an exporter-generated name, not a PyTorch parameter name: the exporter's \
                     optimizer may have folded parameters into it; re-export keeping every parameter ({EXPORT_REF})",
                    name, shape
                ));
            }
        }
        self.report_batchnorm();
        let mut inputs = vec![x];
        inputs.extend(params.iter().map(|p| p.value));
        self.g.inputs = inputs;
        Ok(ForwardModel {
            graph: self.g,
            x,
            logits,
            params,
            source: source.to_string(),
            warnings: self.warnings,
            batchnorm: self
                .batchnorm
                .into_iter()
                .map(|(k, (s, _))| (k, s))
                .collect(),
        })
    }

    /// One line for each choice `Auto` made from the file, naming the nodes it applies to.
    fn report_batchnorm(&mut self) {
        use BatchNormReason::{Statistics, Traced};
        use NormStatistics::{Batch, Running};
        for (stats, why, what) in [
            (
                Batch,
                Traced,
                "are in inference form, but the exporter traced them from a model in train(): they \
                 normalise with batch statistics, as PyTorch trains them (--batchnorm running keeps \
                 the file's running statistics)",
            ),
            (
                Running,
                Traced,
                "were traced from a model in eval(): they normalise with the file's running \
                 statistics, as PyTorch's eval() does (--batchnorm batch uses batch statistics)",
            ),
            (
                Batch,
                Statistics,
                "are in inference form with untouched running statistics (mean 0, variance 1), a \
                 network exported to be trained: they normalise with batch statistics, as PyTorch's \
                 train() does (--batchnorm running keeps the file's statistics)",
            ),
            (
                Running,
                Statistics,
                "carry trained running statistics (a network exported for inference): they \
                 normalise with the file's running statistics, as PyTorch's eval() does \
                 (--batchnorm batch uses batch statistics instead)",
            ),
        ] {
            let nodes: Vec<&str> = self
                .batchnorm
                .iter()
                .filter(|(_, &(s, w))| s == stats && w == Some(why))
                .map(|(n, _)| n.as_str())
                .collect();
            if nodes.is_empty() {
                continue;
            }
            let total = self.batchnorm.len();
            let shown: Vec<String> = nodes.iter().take(3).map(|n| format!("'{n}'")).collect();
            let more = match nodes.len() {
                n if n > 3 => format!(" and {} more", n - 3),
                _ => String::new(),
            };
            let msg = format!(
                "{} of {total} BatchNormalization nodes ({}{more}) {what}",
                nodes.len(),
                shown.join(", ")
            );
            self.warn(msg);
        }
    }
}

/// Names that exporters give to tensors they create (PyTorch parameter names are dotted paths
/// of identifiers).
fn generated_name(name: &str) -> bool {
    name.starts_with("val_")
        || name.starts_with("_val")
        || name.contains("::")
        || name.starts_with('/')
        || name.starts_with("const_")
        || name.starts_with("_tensor_constant")
}

/// Element type and (possibly partial) dims of a graph input's declared tensor type.
fn tensor_type(vi: &pb::ValueInfoProto) -> (i32, Option<Vec<Option<usize>>>) {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return (0, None);
    };
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                _ => None,
            })
            .collect()
    });
    (t.elem_type.unwrap_or(0), dims)
}
