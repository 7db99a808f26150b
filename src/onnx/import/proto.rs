//! Reading ONNX protobuf data: tensors (inline, typed fields or external data files) and node
//! attributes. Everything here treats the file as untrusted: sizes are checked before use and
//! every failure is an error, never a panic.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::compiler::ir::{DType, Tensor};
use crate::onnx::{onnx_dtype_name, pb};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// The IR type of an ONNX element type, with every float type mapped to `fdt` (the graph is
/// built in one float type).
pub fn ir_dtype(code: i32, fdt: DType) -> Result<DType> {
    use pb::tensor_proto::DataType as D;
    Ok(match D::try_from(code) {
        Ok(D::Float | D::Double | D::Float16 | D::Bfloat16) => fdt,
        Ok(
            D::Int64 | D::Int32 | D::Int16 | D::Int8 | D::Uint8 | D::Uint16 | D::Uint32 | D::Uint64,
        ) => DType::I64,
        Ok(D::Bool) => DType::Bool,
        _ => bail!("element type {} is not supported", onnx_dtype_name(code)),
    })
}

/// Rounds values to what the dtype can hold (f32 rounding, integer truncation).
pub fn round_to(dt: DType, v: f64) -> f64 {
    match dt {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::I64 => v.trunc(),
        DType::Bool => (v != 0.0) as u8 as f64,
    }
}

/// The shape of a tensor proto, checked.
pub fn dims(t: &pb::TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("negative dimension {d}")))
        .collect()
}

fn numel_checked(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as u32;
    let v = if exp == 0 {
        (man as f32) * 2f32.powi(-24)
    } else if exp == 31 {
        if man == 0 {
            f32::INFINITY
        } else {
            f32::NAN
        }
    } else {
        (1.0 + man as f32 / 1024.0) * 2f32.powi(exp - 15)
    };
    if sign == 1 {
        -v
    } else {
        v
    }
}

/// Bytes per element in raw data, per ONNX type.
fn elem_size(code: i32) -> Option<usize> {
    use pb::tensor_proto::DataType as D;
    Some(match D::try_from(code).ok()? {
        D::Float | D::Int32 | D::Uint32 => 4,
        D::Double | D::Int64 | D::Uint64 => 8,
        D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16 => 2,
        D::Int8 | D::Uint8 | D::Bool => 1,
        _ => return None,
    })
}

/// The `N`-byte elements of `raw` (a trailing partial element is ignored).
fn elems<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.as_chunks::<N>().0.iter().copied()
}

fn decode_raw(code: i32, raw: &[u8], n: usize) -> Result<Vec<f64>> {
    use pb::tensor_proto::DataType as D;
    let size = elem_size(code)
        .ok_or_else(|| anyhow!("element type {} is not supported", onnx_dtype_name(code)))?;
    let need = n
        .checked_mul(size)
        .ok_or_else(|| anyhow!("tensor too large"))?;
    if raw.len() != need {
        bail!("holds {} bytes, its shape needs {need}", raw.len());
    }
    Ok(
        match D::try_from(code).map_err(|_| anyhow!("unknown element type {code}"))? {
            D::Float => elems(raw).map(|a| f32::from_le_bytes(a) as f64).collect(),
            D::Double => elems(raw).map(f64::from_le_bytes).collect(),
            D::Int64 => elems(raw).map(|a| i64::from_le_bytes(a) as f64).collect(),
            D::Uint64 => elems(raw).map(|a| u64::from_le_bytes(a) as f64).collect(),
            D::Int32 => elems(raw).map(|a| i32::from_le_bytes(a) as f64).collect(),
            D::Uint32 => elems(raw).map(|a| u32::from_le_bytes(a) as f64).collect(),
            D::Int16 => elems(raw).map(|a| i16::from_le_bytes(a) as f64).collect(),
            D::Uint16 => elems(raw).map(|a| u16::from_le_bytes(a) as f64).collect(),
            D::Float16 => elems(raw)
                .map(|a| f16_to_f32(u16::from_le_bytes(a)) as f64)
                .collect(),
            D::Bfloat16 => elems(raw)
                .map(|a| f32::from_bits((u16::from_le_bytes(a) as u32) << 16) as f64)
                .collect(),
            D::Int8 => raw.iter().map(|&c| c as i8 as f64).collect(),
            D::Uint8 => raw.iter().map(|&c| c as f64).collect(),
            D::Bool => raw.iter().map(|&c| (c != 0) as u8 as f64).collect(),
            _ => bail!("element type {} is not supported", onnx_dtype_name(code)),
        },
    )
}

/// Reads the bytes of an externally stored tensor (ONNX external data: `location` relative to
/// the model's directory, optional `offset` and `length`).
fn read_external(t: &pb::TensorProto, base: Option<&Path>, want: usize) -> Result<Vec<u8>> {
    let mut location = None;
    let (mut offset, mut length) = (0u64, None::<u64>);
    for kv in &t.external_data {
        let v = kv.value.as_deref().unwrap_or("");
        match kv.key.as_deref().unwrap_or("") {
            "location" => location = Some(v.to_string()),
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| anyhow!("bad external data offset '{v}'"))?
            }
            "length" => {
                length = Some(
                    v.parse()
                        .map_err(|_| anyhow!("bad external data length '{v}'"))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| anyhow!("external data without a location"))?;
    let rel = Path::new(&location);
    // The ONNX rule: locations are relative and stay inside the model's directory.
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("external data location '{location}' must be a relative path inside the model's directory");
    }
    let base =
        base.ok_or_else(|| anyhow!("external data '{location}' but the model has no directory"))?;
    let path = base.join(rel);
    let mut f = std::fs::File::open(&path)
        .with_context(|| format!("cannot open external data file {}", path.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let len = length.unwrap_or(want as u64);
    if len != want as u64 {
        bail!("external data length {len} does not match the {want} bytes its shape needs");
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        bail!(
            "external data file {} ({size} bytes) is too short for offset {offset} + {len}",
            path.display()
        );
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; want];
    f.read_exact(&mut buf)
        .with_context(|| format!("cannot read external data file {}", path.display()))?;
    Ok(buf)
}

/// Decodes a tensor proto into an IR tensor (floats as `fdt`, integers as I64).
pub fn decode_tensor(t: &pb::TensorProto, base: Option<&Path>, fdt: DType) -> Result<Tensor> {
    let name = t.name.as_deref().unwrap_or("");
    decode_inner(t, base, fdt).with_context(|| format!("tensor '{name}'"))
}

fn decode_inner(t: &pb::TensorProto, base: Option<&Path>, fdt: DType) -> Result<Tensor> {
    let code = t.data_type.unwrap_or(0);
    let dt = ir_dtype(code, fdt)?;
    let shape = dims(t)?;
    let n = numel_checked(&shape)?;
    if t.segment.is_some() {
        bail!("segmented tensors are not supported");
    }
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    let data: Vec<f64> = if external {
        let size = elem_size(code)
            .ok_or_else(|| anyhow!("element type {} is not supported", onnx_dtype_name(code)))?;
        let want = n
            .checked_mul(size)
            .ok_or_else(|| anyhow!("tensor too large"))?;
        decode_raw(code, &read_external(t, base, want)?, n)?
    } else if let Some(raw) = &t.raw_data {
        decode_raw(code, raw, n)?
    } else {
        use pb::tensor_proto::DataType as D;
        let v: Vec<f64> = match D::try_from(code) {
            Ok(D::Float) => t.float_data.iter().map(|&x| x as f64).collect(),
            Ok(D::Double) => t.double_data.clone(),
            Ok(D::Int64) => t.int64_data.iter().map(|&x| x as f64).collect(),
            Ok(D::Uint32 | D::Uint64) => t.uint64_data.iter().map(|&x| x as f64).collect(),
            Ok(D::Float16) => t
                .int32_data
                .iter()
                .map(|&x| f16_to_f32(x as u16) as f64)
                .collect(),
            Ok(D::Bfloat16) => t
                .int32_data
                .iter()
                .map(|&x| f32::from_bits(((x as u32) & 0xffff) << 16) as f64)
                .collect(),
            Ok(D::Bool) => t
                .int32_data
                .iter()
                .map(|&x| (x != 0) as u8 as f64)
                .collect(),
            _ => t.int32_data.iter().map(|&x| x as f64).collect(),
        };
        if v.len() != n {
            if v.is_empty() {
                bail!("has no data (shape {shape:?}); were the weights exported?");
            }
            bail!("holds {} values, its shape {shape:?} needs {n}", v.len());
        }
        v
    };
    let data = data.into_iter().map(|v| round_to(dt, v)).collect();
    Ok(Tensor {
        dtype: dt,
        shape,
        data,
    })
}

/// Accessors for one node's inputs and attributes.
pub struct NodeRef<'a> {
    /// The node.
    pub p: &'a pb::NodeProto,
    /// Its name (or a generated one when the file has none).
    pub name: String,
    /// Its op type.
    pub op: &'a str,
}

impl<'a> NodeRef<'a> {
    /// The name of input `i`, or `None` when absent or empty (an omitted optional input).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.p
            .input
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }
    /// The name of a required input.
    pub fn req(&self, i: usize) -> Result<&'a str> {
        self.input(i).ok_or_else(|| anyhow!("input {i} is missing"))
    }
    /// Number of input slots.
    pub fn n_inputs(&self) -> usize {
        self.p.input.len()
    }
    /// An attribute by name.
    pub fn attr(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.p
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }
    /// An integer attribute, or the default.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    /// An integer-list attribute.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    /// A float attribute, or the default.
    pub fn float(&self, name: &str, default: f64) -> f64 {
        self.attr(name)
            .and_then(|a| a.f)
            .map(|f| f as f64)
            .unwrap_or(default)
    }
    /// A string attribute, or the default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }
}

/// Normalises a possibly negative axis for rank `r`.
pub fn axis(a: i64, r: usize) -> Result<usize> {
    let v = if a < 0 { a + r as i64 } else { a };
    if v < 0 || v >= r as i64 {
        bail!("axis {a} is out of range for rank {r}");
    }
    Ok(v as usize)
}

/// Normalises a list of axes (sorted, deduplicated).
pub fn axes(a: &[i64], r: usize) -> Result<Vec<usize>> {
    let mut v = a.iter().map(|&x| axis(x, r)).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// A tensor's values as integers (for shapes, axes, indices).
pub fn as_ints(t: &Tensor) -> Vec<i64> {
    t.data.iter().map(|&v| v as i64).collect()
}
