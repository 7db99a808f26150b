//! The graph IR: plain data. Values carry a dtype and a static shape; nodes hold one primitive
//! [`Op`] each and are kept in topological order. Composite ONNX ops (norms, softmax, Gemm, pooling
//! …) are lowered to these primitives on import, so the derivative rules stay few.

use super::ops::{self, Primitive};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// Element types the IR knows. Integer and boolean values never carry gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float (what artifacts run in).
    F32,
    /// 64-bit float (finite-difference checks).
    F64,
    /// 64-bit integer (indices, shapes).
    I64,
    /// Boolean (masks).
    Bool,
}

impl DType {
    /// Whether values of this type are differentiable.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

/// A dense constant tensor. Every dtype is stored as `f64`: exact for f32, bool and the integer
/// ranges that shapes and indices use, and it keeps the evaluator and the folder to one code path.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor from its parts; `data.len()` must equal the product of `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor { dtype, shape, data }
    }
    /// A scalar (rank 0).
    pub fn scalar(dtype: DType, v: f64) -> Tensor {
        Tensor {
            dtype,
            shape: vec![],
            data: vec![v],
        }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Product of a shape's dimensions.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Type and shape of one value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Name (unique within a graph; used for graph inputs and outputs on export).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Vec<usize>,
}

/// Declares [`Op`] from one line per primitive: a unit primitive names the type whose rules it
/// has, a primitive with attributes holds them in a type that has the rules.
macro_rules! primitives {
    (
        $( $(#[$udoc:meta])* $unit:ident => $rules:path, )*
        ;
        $( $(#[$adoc:meta])* $attrs:ident($ty:ty), )*
    ) => {
        /// The primitive operations. Attributes are static; shapes are known at build time.
        /// Each primitive's rules (shape, derivative, reference kernel, ONNX form, cost) are its
        /// [`Primitive`] implementation in `compiler::ops`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $( $(#[$udoc])* $unit, )*
            $( $(#[$adoc])* $attrs($ty), )*
        }

        impl Op {
            /// The rules of this primitive.
            pub fn rules(&self) -> &dyn Primitive {
                match self {
                    $( Op::$unit => &$rules, )*
                    $( Op::$attrs(p) => p, )*
                }
            }
        }
    };
}

primitives! {
    /// Pass-through.
    Identity => ops::Identity,
    /// Pass-through whose derivative is zero (the max in a stable softmax, say).
    StopGradient => ops::StopGradient,
    /// a + b, broadcasting.
    Add => ops::Add,
    /// a − b, broadcasting.
    Sub => ops::Sub,
    /// a · b, broadcasting.
    Mul => ops::Mul,
    /// a / b, broadcasting.
    Div => ops::Div,
    /// −x.
    Neg => ops::Neg,
    /// eˣ.
    Exp => ops::Exp,
    /// ln x.
    Log => ops::Log,
    /// √x.
    Sqrt => ops::Sqrt,
    /// max(x, 0).
    Relu => ops::Relu,
    /// 1/(1+e⁻ˣ).
    Sigmoid => ops::Sigmoid,
    /// tanh x.
    Tanh => ops::Tanh,
    /// The error function.
    Erf => ops::Erf,
    /// a > b (bool, broadcasting; no gradient).
    Greater => ops::Greater,
    /// a == b (bool, broadcasting; no gradient).
    Equal => ops::Equal,
    /// cond ? a : b, broadcasting; gradient flows to a and b.
    Where => ops::Where,
    /// Matrix product with batch broadcasting (both ranks ≥ 2 after import).
    MatMul => ops::MatMul,
    ;
    /// A constant tensor (no inputs).
    Constant(Tensor),
    /// x for x > 0, αx otherwise.
    LeakyRelu(ops::LeakyRelu),
    /// Element type conversion (no gradient unless float → float).
    Cast(ops::Cast),
    /// Axis permutation.
    Transpose(ops::Transpose),
    /// Same elements, another static shape.
    Reshape(ops::Reshape),
    /// Numpy broadcast to a static shape.
    Expand(ops::Expand),
    /// Sum over axes.
    ReduceSum(ops::ReduceSum),
    /// Max over axes (ties pass the gradient to every maximal element).
    ReduceMax(ops::ReduceMax),
    /// Concatenation along an axis.
    Concat(ops::Concat),
    /// Split along an axis into pieces of the given sizes (one output per piece).
    Split(ops::Split),
    /// Unit-step slice, static bounds per axis.
    Slice(ops::Slice),
    /// Constant padding, `begins`/`ends` per axis.
    Pad(ops::Pad),
    /// Entries of one axis picked by constant indices.
    Gather(ops::Gather),
    /// N-d convolution: x \[N,C,…\], w \[O,C/g,k…\] and an optional bias \[O\].
    Conv(ConvAttrs),
    /// The adjoint of [`Op::Conv`] with the same attributes and weight layout.
    ConvTranspose(ops::ConvTranspose),
    /// The gradient of [`Op::Conv`] with respect to its weight.
    ConvWeightGrad(ops::ConvWeightGrad),
    /// Instance normalisation with a per-channel scale and bias.
    InstanceNorm(ops::InstanceNorm),
    /// Mean over non-overlapping square windows.
    AvgPool(ops::AvgPool),
    /// Nearest-neighbour upsampling by whole factors (average pooling's adjoint, up to scale).
    Upsample(ops::Upsample),
}

/// Convolution attributes (spatial rank = `strides.len()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvAttrs {
    /// Stride per spatial axis.
    pub strides: Vec<usize>,
    /// Padding before, per spatial axis.
    pub pads_begin: Vec<usize>,
    /// Padding after, per spatial axis.
    pub pads_end: Vec<usize>,
    /// Dilation per spatial axis.
    pub dilations: Vec<usize>,
    /// Group count.
    pub group: usize,
}

/// One node: an op applied to values, producing values.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name (kept from ONNX where imported; used in messages).
    pub name: String,
    /// The primitive.
    pub op: Op,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result values.
    pub outputs: Vec<ValueId>,
}

/// A typed graph: values, nodes in topological order, inputs and outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Every value, indexed by [`ValueId`].
    pub values: Vec<ValueInfo>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Graph inputs, in order.
    pub inputs: Vec<ValueId>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueId>,
}

/// Errors raised while building or checking a graph.
#[derive(Debug, Error)]
pub enum IrError {
    /// Operands whose shapes or types the op cannot take.
    #[error("node '{node}' ({op}): {msg}")]
    Shape {
        /// Node name.
        node: String,
        /// Op name.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The info of a value.
    pub fn info(&self, v: ValueId) -> &ValueInfo {
        &self.values[v]
    }

    /// The shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v].shape
    }

    /// The dtype of a value.
    pub fn dtype(&self, v: ValueId) -> DType {
        self.values[v].dtype
    }

    /// A fresh value name with the given stem.
    pub(crate) fn fresh_name(&self, stem: &str) -> String {
        format!("{stem}_{}", self.values.len())
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<usize>) -> ValueId {
        let id = self.values.len();
        self.values.push(ValueInfo {
            name: name.to_string(),
            dtype,
            shape,
        });
        self.inputs.push(id);
        id
    }

    /// Adds a constant.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        let id = self.values.len();
        let name = self.fresh_name("const");
        self.values.push(ValueInfo {
            name,
            dtype: t.dtype,
            shape: t.shape.clone(),
        });
        let node_name = format!("Constant_{}", self.nodes.len());
        self.nodes.push(Node {
            name: node_name,
            op: Op::Constant(t),
            inputs: vec![],
            outputs: vec![id],
        });
        id
    }

    /// A scalar constant of the given float type.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> ValueId {
        self.constant(Tensor::scalar(dtype, v))
    }

    /// Renames a value (graph inputs and outputs keep their names on export).
    pub fn rename(&mut self, v: ValueId, name: &str) {
        self.values[v].name = name.to_string();
    }
}
