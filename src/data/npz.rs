//! NumPy `.npy` headers and `.npz` archives (a zip of `.npy` members), read by streaming so a
//! large `uint8` array goes straight into its destination buffer.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// The header of a `.npy` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// NumPy type string, e.g. `|u1` or `<i8`.
    pub descr: String,
    /// Column-major storage flag.
    pub fortran_order: bool,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Bytes before the first data byte (preamble and header).
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements.
    pub fn count(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .context("npy shape overflows")
    }
}

/// The value of `'key': …` in a Python dict literal, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let (_, rest) = header
        .split_once(&format!("'{key}':"))
        .with_context(|| format!("npy header has no '{key}': {header}"))?;
    let rest = rest.trim_start();
    let value = if rest.starts_with('(') {
        rest.split_inclusive(')')
            .next()
            .filter(|v| v.ends_with(')'))
    } else {
        rest.split_once([',', '}']).map(|(v, _)| v)
    }
    .with_context(|| format!("unterminated '{key}' in npy header: {header}"))?;
    Ok(value.trim())
}

/// Reads and parses the header of a `.npy` stream, leaving `r` at the first data byte.
pub fn read_npy_header(r: &mut impl Read) -> Result<NpyHeader> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).context("truncated npy preamble")?;
    let [magic @ .., major, _minor] = pre;
    ensure!(magic == *b"\x93NUMPY", "not an npy array (bad magic)");
    let (len, len_bytes) = match major {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .context("truncated npy header length")?;
            (u16::from_le_bytes(b) as usize, 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .context("truncated npy header length")?;
            (u32::from_le_bytes(b) as usize, 4)
        }
        v => bail!("unsupported npy version {v}"),
    };
    ensure!(len <= 1 << 20, "npy header length {len} is implausible");
    let mut h = vec![0u8; len];
    r.read_exact(&mut h).context("truncated npy header")?;
    let h = String::from_utf8_lossy(&h).into_owned();
    let descr = dict_value(&h, "descr")?
        .trim_matches(['\'', '"'])
        .to_string();
    let fortran_order = match dict_value(&h, "fortran_order")? {
        "True" => true,
        "False" => false,
        v => bail!("bad fortran_order {v} in npy header"),
    };
    let shape_s = dict_value(&h, "shape")?;
    let shape = shape_s
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .with_context(|| format!("bad npy shape {shape_s}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
        data_offset: 8 + len_bytes + len,
    })
}

/// Decodes integer elements of type `descr` from `bytes`.
fn decode_ints(descr: &str, bytes: &[u8]) -> Result<Vec<i64>> {
    let (order, ty) = match (descr.get(..1), descr.get(1..)) {
        (Some(o), Some(t)) => (o, t),
        _ => bail!("unsupported npy dtype {descr}"),
    };
    let big = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => bail!("unsupported npy dtype {descr}"),
    };
    macro_rules! conv {
        ($t:ty) => {{
            const S: usize = std::mem::size_of::<$t>();
            bytes
                .as_chunks::<S>()
                .0
                .iter()
                .map(|&a| {
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as i64
                })
                .collect()
        }};
    }
    Ok(match ty {
        "u1" => bytes.iter().map(|&b| i64::from(b)).collect(),
        "i1" => bytes.iter().map(|&b| i64::from(b as i8)).collect(),
        "u2" => conv!(u16),
        "i2" => conv!(i16),
        "u4" => conv!(u32),
        "i4" => conv!(i32),
        "i8" => conv!(i64),
        "u8" => conv!(u64),
        _ => bail!("unsupported npy integer dtype {descr}"),
    })
}

fn elem_size(descr: &str) -> Option<usize> {
    descr.get(2..).and_then(|s| s.parse().ok())
}

/// An open `.npz` archive.
pub struct Npz {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<File>>,
}

impl Npz {
    /// Opens `path` as a zip archive.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let zip = zip::ZipArchive::new(BufReader::new(f))
            .with_context(|| format!("{} is not a valid npz (zip) archive", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            zip,
        })
    }

    fn member(&mut self, name: &str) -> Result<zip::read::ZipFile<'_, BufReader<File>>> {
        let file = format!("{name}.npy");
        let real = if self.zip.index_for_name(&file).is_some() {
            file
        } else if self.zip.index_for_name(name).is_some() {
            name.to_string()
        } else {
            bail!("{} has no array '{name}'", self.path.display());
        };
        self.zip
            .by_name(&real)
            .with_context(|| format!("{}: reading member {real}", self.path.display()))
    }

    /// Opens array `name`: its header, checked against the member's size so that a corrupt
    /// header cannot ask for more memory than the file holds, and the stream at its data.
    fn open_array(
        &mut self,
        name: &str,
    ) -> Result<(NpyHeader, zip::read::ZipFile<'_, BufReader<File>>)> {
        let path = self.path.clone();
        let mut m = self.member(name)?;
        let ctx = || format!("{}: array '{name}'", path.display());
        let h = read_npy_header(&mut m).with_context(ctx)?;
        let elem = elem_size(&h.descr)
            .with_context(|| format!("{}: unsupported dtype {}", ctx(), h.descr))?;
        let want = h
            .count()
            .ok()
            .and_then(|c| c.checked_mul(elem))
            .with_context(|| format!("{}: shape {:?} overflows", ctx(), h.shape))?;
        let have = (m.size() as usize).saturating_sub(h.data_offset);
        ensure!(
            want == have,
            "{}: header announces {want} data bytes but the member holds {have} (truncated or \
             corrupt)",
            ctx()
        );
        Ok((h, m))
    }

    /// The header of array `name`.
    pub fn header(&mut self, name: &str) -> Result<NpyHeader> {
        Ok(self.open_array(name)?.0)
    }

    /// Streams the uint8 array `name` into `dst`, which must have exactly its element count.
    pub fn read_u8_into(&mut self, name: &str, dst: &mut [u8]) -> Result<NpyHeader> {
        let path = self.path.clone();
        let ctx = || format!("{}: array '{name}'", path.display());
        let (h, mut m) = self.open_array(name)?;
        ensure!(
            h.descr == "|u1" || h.descr == "<u1",
            "{}: dtype {} is not uint8",
            ctx(),
            h.descr
        );
        ensure!(
            !h.fortran_order || h.shape.len() <= 1,
            "{}: Fortran order unsupported",
            ctx()
        );
        let count = h.count().with_context(ctx)?;
        ensure!(
            count == dst.len(),
            "{}: {count} elements, expected {}",
            ctx(),
            dst.len()
        );
        m.read_exact(dst)
            .with_context(|| format!("{}: truncated data", ctx()))?;
        Ok(h)
    }

    /// Reads integer array `name` (any integer dtype) as i64.
    pub fn read_ints(&mut self, name: &str) -> Result<(NpyHeader, Vec<i64>)> {
        let path = self.path.clone();
        let ctx = || format!("{}: array '{name}'", path.display());
        let (h, mut m) = self.open_array(name)?;
        // open_array checked that this many bytes are in the member.
        let mut bytes = vec![0u8; (m.size() as usize).saturating_sub(h.data_offset)];
        m.read_exact(&mut bytes)
            .with_context(|| format!("{}: truncated data", ctx()))?;
        let v = decode_ints(&h.descr, &bytes).with_context(ctx)?;
        Ok((h, v))
    }
}
