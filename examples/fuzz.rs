//! Mutation fuzzing, without coverage feedback and on stable Rust, of every reader of outside
//! bytes: ONNX models (import, then compiling the artifacts), the dataset formats (IDX, CIFAR,
//! ImageNet npz, PNG/JPEG folders, Tiny-ImageNet), the safetensors inputs of `tesla run`, expert
//! files, distilled sets, checkpoints, `config.json` and `manifest.json`.
//!
//! ```text
//! cargo run --release --example fuzz -- [--seconds N] [--target NAME[,NAME...]] [--corpus DIR]
//!                                       [--seed S] [--list] [--replay FILE --target NAME]
//! ```
//!
//! Each target writes valid seed files of its format (the harness builds them, as the tests do),
//! then until its share of `--seconds` (split evenly across targets) is spent: picks a seed or a
//! corpus entry, applies a few random mutations (bit flips, the bytes 0/0xff/0x7f/0x80, inserted,
//! deleted or duplicated ranges, truncation at random points and at section boundaries, huge
//! little- and big-endian integers, huge numbers in text, splices of two inputs), writes the
//! result and calls the reader inside `catch_unwind`. Failures, each input saved once per kind as
//! `fuzz/crashes/TARGET-<hash>.bin`:
//! - a panic;
//! - a single allocation over [`ALLOC_CAP`] (2 GiB): the global allocator refuses it, so a reader
//!   that handles the refusal still fails, and one that does not aborts;
//! - an input that takes over 10 s (a watchdog saves it and ends the process).
//!
//! An abort (a refused allocation nobody handles, a stack overflow) would end the fuzzer with it,
//! so `main` runs each target in a child process of itself (`--worker`): when a child dies, the
//! parent saves the input it had in flight as a crash, tells the next child to skip it and
//! restarts it for the rest of the target's time.
//!
//! Inputs that produce a new kind of error (the first 60 characters of the innermost message,
//! digits and paths blanked) are kept in `fuzz/corpus/TARGET/` (at most 20 per target, each under
//! 64 KiB) and replayed first by every later run. An input of one file is stored as that file;
//! one of several (a dataset directory, a manifest with its `init.safetensors`) as a small
//! container: `TFZ1`, then per file a u16 name length, the name, a u32 length and the bytes, all
//! little-endian. `--replay FILE --target NAME` runs one saved input and prints the outcome.
//!
//! `tests/fuzz_short.rs` includes this file and runs every target in-process for about 40 s in
//! all, so CI replays the corpus and fuzzes a little on every run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashSet};
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ------------------------------------------------------------------------------------------------
// Allocation cap and peak tracking.

/// The largest single allocation a reader may ask for (2 GiB): none of the inputs fuzzed here
/// needs more, so a bigger request means sizes taken from the file unchecked.
pub const ALLOC_CAP: usize = 2 << 30;

/// `std::alloc::System`, refusing (null) any single allocation over [`ALLOC_CAP`] and tracking
/// the bytes currently allocated and their peak.
pub struct CappedAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The largest refused request since the last [`take_refused`] (0: none).
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// What the allocator prints after a refusal (where the input in flight is): a fixed buffer,
/// since the allocator must not allocate.
const NOTE_CAP: usize = 480;
static NOTE: [AtomicU8; NOTE_CAP] = [const { AtomicU8::new(0) }; NOTE_CAP];
static NOTE_LEN: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(n: usize) {
    CURRENT.fetch_sub(n, Relaxed);
}

/// Records a refused request and says so on stderr, without allocating (the process may abort
/// right after, when the caller does not handle the failure).
fn refuse(size: usize) {
    REFUSED.fetch_max(size, Relaxed);
    let mut buf = [0u8; 640];
    let mut at = 0;
    let mut put = |b: &[u8], at: &mut usize| {
        let n = b.len().min(buf.len() - *at);
        buf[*at..*at + n].copy_from_slice(&b[..n]);
        *at += n;
    };
    put(b"fuzz: refused a single allocation of ", &mut at);
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    let mut v = size;
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[k..], &mut at);
    put(b" bytes (cap 2 GiB); ", &mut at);
    let n = NOTE_LEN.load(Relaxed).min(NOTE_CAP);
    let mut note = [0u8; NOTE_CAP];
    for (d, s) in note.iter_mut().zip(&NOTE).take(n) {
        *d = s.load(Relaxed);
    }
    put(&note[..n], &mut at);
    put(b"\n", &mut at);
    // SAFETY: writing an initialised stack buffer to stderr; a short write only loses the note.
    let _ = unsafe { libc::write(2, buf.as_ptr().cast(), at) };
}

/// Sets the text the allocator prints after a refusal.
fn set_note(s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(NOTE_CAP);
    for (d, &s) in NOTE.iter().zip(&b[..n]) {
        d.store(s, Relaxed);
    }
    NOTE_LEN.store(n, Relaxed);
}

/// The largest request refused since the last call (0: none).
fn take_refused() -> usize {
    REFUSED.swap(0, Relaxed)
}

/// Peak bytes allocated since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

/// Restarts the peak at the bytes allocated now.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's layout; only requests over the
// cap are answered with null, which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

// ------------------------------------------------------------------------------------------------
// Inputs.

/// One fuzz input: the files a reader is given, by path relative to its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// `(relative path, bytes)`, in writing order.
    pub files: Vec<(String, Vec<u8>)>,
}

const CONTAINER_MAGIC: &[u8; 4] = b"TFZ1";

impl Input {
    /// An input of one file.
    pub fn one(name: &str, bytes: Vec<u8>) -> Input {
        Input {
            files: vec![(name.to_string(), bytes)],
        }
    }

    /// The stored form: the file itself for one file, else the container.
    pub fn encode(&self) -> Vec<u8> {
        if let [(_, b)] = self.files.as_slice() {
            return b.clone();
        }
        let mut v = CONTAINER_MAGIC.to_vec();
        for (name, b) in &self.files {
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    /// Reads the stored form: a container when it parses as one (with safe relative names),
    /// else one file named `default_name`.
    pub fn decode(bytes: &[u8], default_name: &str) -> Input {
        Self::decode_container(bytes).unwrap_or_else(|| Input::one(default_name, bytes.to_vec()))
    }

    fn decode_container(bytes: &[u8]) -> Option<Input> {
        let mut rest = bytes.strip_prefix(CONTAINER_MAGIC.as_slice())?;
        let mut files = Vec::new();
        while !rest.is_empty() {
            let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(rest.get(2..2 + n)?).ok()?.to_string();
            rest = &rest[2 + n..];
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let data = rest.get(4..4 + len)?.to_vec();
            rest = &rest[4 + len..];
            let p = Path::new(&name);
            if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
                return None;
            }
            files.push((name, data));
        }
        (!files.is_empty()).then_some(Input { files })
    }

    /// Total bytes of its files.
    pub fn size(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }

    /// Writes the files under `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        for (name, b) in &self.files {
            let p = dir.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&p, b).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: names saved inputs and recognises skipped ones.
pub fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ------------------------------------------------------------------------------------------------
// Mutations.

const INTERESTING_BYTES: [u8; 6] = [0, 0xff, 0x7f, 0x80, 1, 0xfe];
const INTERESTING_INTS: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 48,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];
/// Numbers written over a number in text (JSON, npy headers, metadata strings).
const INTERESTING_TEXT: [&str; 18] = [
    "0",
    "-1",
    "1",
    "2",
    "65536",
    "2147483648",
    "4294967296",
    "9007199254740993",
    "1099511627776",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e309",
    "-1e309",
    "NaN",
    "0.5",
    "-0",
];

/// Offsets where a section of `b` starts or ends, found by format (gzip, PNG, JPEG, zip, npy,
/// IDX, safetensors, protobuf fields two levels deep): truncation and integer overwrites aim at
/// them, since lengths and counts live there.
pub fn boundaries(b: &[u8]) -> Vec<usize> {
    let mut v = vec![0, b.len() / 2];
    let n = b.len();
    if b.starts_with(&[0x1f, 0x8b]) {
        v.extend([10, n.saturating_sub(8), n.saturating_sub(4)]);
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        let mut p = 8;
        while p + 8 <= n && v.len() < 4096 {
            let len = u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as usize;
            v.extend([p, p + 4, p + 8]);
            p = match p.checked_add(12).and_then(|q| q.checked_add(len)) {
                Some(q) => q,
                None => break,
            };
            v.push(p.saturating_sub(4));
        }
    }
    if b.starts_with(&[0xff, 0xd8]) {
        let mut p = 2;
        while p + 4 <= n && b[p] == 0xff && v.len() < 4096 {
            v.push(p);
            let marker = b[p + 1];
            if marker == 0x01 || (0xd0..=0xd9).contains(&marker) {
                p += 2;
                continue;
            }
            let len = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
            v.push(p + 2);
            if (0xc0..=0xc3).contains(&marker) {
                // Start of frame: the height and width.
                v.extend([p + 5, p + 7]);
            }
            p += 2 + len;
            if marker == 0xda {
                v.push(p);
                break;
            }
        }
    }
    if b.starts_with(b"PK") {
        for (sig, head) in [
            (b"PK\x03\x04", 30usize),
            (b"PK\x01\x02", 46),
            (b"PK\x05\x06", 22),
        ] {
            let mut from = 0;
            while let Some(k) = find(&b[from..], sig) {
                let p = from + k;
                v.extend([p, p + 4, p + head]);
                if head == 30 && p + 30 <= n {
                    let name = u16::from_le_bytes([b[p + 26], b[p + 27]]) as usize;
                    let extra = u16::from_le_bytes([b[p + 28], b[p + 29]]) as usize;
                    v.extend([p + 14, p + 18, p + 22, p + 30 + name + extra]);
                }
                from = p + 4;
                if v.len() > 4096 {
                    break;
                }
            }
        }
    }
    if let Some(k) = find(b, b"\x93NUMPY") {
        v.extend([k + 8, k + 10]);
        if let Some(h) = b.get(k + 8..k + 10) {
            v.push(k + 10 + u16::from_le_bytes([h[0], h[1]]) as usize);
        }
    }
    if b.len() >= 4 && b[0] == 0 && b[1] == 0 && b[2] == 8 && (1..=4).contains(&b[3]) {
        let r = b[3] as usize;
        v.extend((0..=r).map(|i| 4 + 4 * i));
    }
    if let Some(h) = b.get(..8) {
        let hl = u64::from_le_bytes(h.try_into().unwrap_or([0; 8]));
        if hl > 0 && hl <= n.saturating_sub(8) as u64 {
            let start = 8 + hl as usize;
            v.extend([8, start]);
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&b[8..start]) {
                for t in m.values() {
                    if let Some(o) = t.get("data_offsets").and_then(|o| o.as_array()) {
                        v.extend(
                            o.iter()
                                .filter_map(|x| x.as_u64())
                                .map(|x| start + x as usize),
                        );
                    }
                }
            }
        }
    }
    protobuf_fields(b, 0, 0, &mut v);
    v.retain(|&p| p <= n);
    v.sort_unstable();
    v.dedup();
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn varint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*p)?;
        *p += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Field starts (and length-prefixed payload starts) of `b` read as a protobuf message, and of
/// length-delimited fields that parse as messages, down to `depth` 2.
fn protobuf_fields(b: &[u8], base: usize, depth: usize, out: &mut Vec<usize>) {
    let mut p = 0;
    let mut found = Vec::new();
    while p < b.len() && out.len() + found.len() < 8192 {
        let start = p;
        let Some(key) = varint(b, &mut p) else { return };
        if key >> 3 == 0 {
            return;
        }
        match key & 7 {
            0 => {
                if varint(b, &mut p).is_none() {
                    return;
                }
            }
            1 => p += 8,
            5 => p += 4,
            2 => {
                let len_at = p;
                let Some(len) = varint(b, &mut p) else { return };
                let Some(end) = p.checked_add(len as usize).filter(|&e| e <= b.len()) else {
                    return;
                };
                found.push((start, len_at, p, end));
                p = end;
            }
            _ => return,
        }
        if p > b.len() {
            return;
        }
    }
    for &(start, len_at, payload, end) in &found {
        out.extend([base + start, base + len_at, base + payload, base + end]);
        if depth < 2 && end - payload >= 2 {
            protobuf_fields(&b[payload..end], base + payload, depth + 1, out);
        }
    }
}

/// A position in `0..=len`, near a boundary half the time.
fn pick_pos(rng: &mut ChaCha8Rng, len: usize, bounds: &[usize]) -> usize {
    if !bounds.is_empty() && rng.random_bool(0.5) {
        bounds[rng.random_range(0..bounds.len())].min(len)
    } else {
        rng.random_range(0..=len)
    }
}

/// Applies one to four random mutations to `data`; `other` (another input's file) feeds splices.
pub fn mutate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: Option<&[u8]>) {
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        mutate_once(rng, data, other);
    }
}

fn mutate_once(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: Option<&[u8]>) {
    let len = data.len();
    let bounds = boundaries(data);
    match rng.random_range(0..12) {
        // Bit flip.
        0 if len > 0 => {
            let p = rng.random_range(0..len);
            data[p] ^= 1 << rng.random_range(0..8);
        }
        // An interesting or random byte.
        1 | 2 if len > 0 => {
            let p = pick_pos(rng, len - 1, &bounds);
            data[p] = if rng.random_bool(0.7) {
                INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())]
            } else {
                rng.random()
            };
        }
        // Insert random bytes.
        3 => {
            let p = pick_pos(rng, len, &bounds);
            let k = rng.random_range(1..=32);
            let ins: Vec<u8> = (0..k).map(|_| rng.random()).collect();
            data.splice(p..p, ins);
        }
        // Delete a range.
        4 if len > 0 => {
            let p = pick_pos(rng, len - 1, &bounds);
            let max = if rng.random_bool(0.8) { 64 } else { len };
            let k = rng.random_range(1..=max.min(len - p));
            data.drain(p..p + k);
        }
        // Duplicate a range somewhere else.
        5 if len > 0 => {
            let a = rng.random_range(0..len);
            let k = rng.random_range(1..=(len - a).min(256));
            let chunk = data[a..a + k].to_vec();
            let p = pick_pos(rng, len, &bounds);
            data.splice(p..p, chunk);
        }
        // Truncate at a random point or at a boundary.
        6 => data.truncate(rng.random_range(0..=len)),
        7 => data.truncate(bounds[rng.random_range(0..bounds.len())]),
        // A 2-, 4- or 8-byte integer, little- or big-endian, with an interesting value.
        8 | 9 if len >= 2 => {
            let w = [2usize, 4, 4, 8][rng.random_range(0..4)].min(len);
            let p = pick_pos(rng, len - w, &bounds);
            let v = match rng.random_range(0..4) {
                0 => (len as u64)
                    .wrapping_add(rng.random_range(0..16))
                    .wrapping_sub(8),
                1 => rng.random(),
                _ => INTERESTING_INTS[rng.random_range(0..INTERESTING_INTS.len())],
            };
            let bytes = if rng.random_bool(0.6) {
                v.to_le_bytes()
            } else {
                (v << (64 - 8 * w as u32).min(63)).to_be_bytes()
            };
            data[p..p + w].copy_from_slice(&bytes[..w]);
        }
        // A number in text replaced by an interesting one.
        10 if len > 0 => {
            let from = rng.random_range(0..len);
            let at = data[from..]
                .iter()
                .position(u8::is_ascii_digit)
                .map(|k| from + k)
                .or_else(|| data.iter().position(u8::is_ascii_digit));
            if let Some(mut s) = at {
                if s > 0 && data[s - 1] == b'-' {
                    s -= 1;
                }
                let e = s
                    + 1
                    + data[s + 1..]
                        .iter()
                        .position(|c| !(c.is_ascii_digit() || b".eE+-".contains(c)))
                        .unwrap_or(len - s - 1);
                let t = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
                data.splice(s..e, t.bytes());
            } else {
                data.truncate(rng.random_range(0..=len));
            }
        }
        // Splice: a prefix of this input and a suffix of the other.
        11 => {
            if let Some(o) = other.filter(|o| !o.is_empty()) {
                let a = pick_pos(rng, len, &bounds);
                let b = rng.random_range(0..o.len());
                data.truncate(a);
                data.extend_from_slice(&o[b..]);
            } else if len > 0 {
                let p = rng.random_range(0..len);
                data[p] = rng.random();
            }
        }
        _ => {
            if len > 0 {
                let p = rng.random_range(0..len);
                data[p] ^= 0xff;
            } else {
                data.push(rng.random());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Structure-aware mutations: byte mutations alone rarely get past a checksum (gzip, PNG, zip) or
// keep a protobuf or JSON document well-formed, so half the time the fuzzer mutates inside the
// format and re-encodes it.

/// Mutates `data` (the file `name`) inside its format when it has one this knows; false when it
/// has none (the caller then mutates bytes).
pub fn mutate_structured(rng: &mut ChaCha8Rng, name: &str, data: &mut Vec<u8>) -> bool {
    let out = if data.starts_with(&[0x1f, 0x8b]) {
        regzip(rng, data)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        mutate(rng, data, None);
        fix_png_crcs(data);
        return true;
    } else if data.starts_with(b"PK\x03\x04") {
        rezip(rng, data)
    } else if name.ends_with(".onnx") {
        mutate_onnx(rng, data)
    } else if name.ends_with(".safetensors") {
        mutate_safetensors_header(rng, data)
    } else if name.ends_with(".json") {
        serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .map(|mut v| {
                mutate_json(rng, &mut v);
                if rng.random_bool(0.5) {
                    serde_json::to_vec_pretty(&v).unwrap_or_default()
                } else {
                    serde_json::to_vec(&v).unwrap_or_default()
                }
            })
    } else {
        None
    };
    match out {
        Some(v) => {
            *data = v;
            true
        }
        None => false,
    }
}

/// Decompresses, mutates the content and compresses again (a valid gzip of a mutated file).
fn regzip(rng: &mut ChaCha8Rng, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(64 << 20)
        .read_to_end(&mut raw)
        .ok()?;
    mutate(rng, &mut raw, None);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).ok()?;
    e.finish().ok()
}

/// Rewrites the CRC of every whole PNG chunk, so that mutated chunks reach the decoder.
fn fix_png_crcs(b: &mut [u8]) {
    let mut p = 8;
    while p + 12 <= b.len() {
        let len = u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as usize;
        let Some(end) = (p + 8).checked_add(len).filter(|&e| e + 4 <= b.len()) else {
            return;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&b[p + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        p = end + 4;
    }
}

/// Reads every member of a zip (npz) archive, mutates one and writes the archive again, each
/// member stored or deflated at random (valid checksums, mutated content).
fn rezip(rng: &mut ChaCha8Rng, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).ok()?;
    let mut members = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).ok()?;
        let mut b = Vec::new();
        (&mut f).take(64 << 20).read_to_end(&mut b).ok()?;
        members.push((f.name().to_string(), b));
    }
    if members.is_empty() {
        return None;
    }
    let k = rng.random_range(0..members.len());
    match rng.random_range(0..8) {
        0 => {
            members.remove(k);
        }
        1 => {
            let m = members[k].clone();
            members.push(m);
        }
        2 => members[k].0 = format!("x{}", members[k].0),
        _ => mutate(rng, &mut members[k].1, None),
    }
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, b) in &members {
        let method = if rng.random_bool(0.5) {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(name.as_str(), opts).ok()?;
        w.write_all(b).ok()?;
    }
    Some(w.finish().ok()?.into_inner())
}

const INTERESTING_I64: [i64; 16] = [
    -1,
    0,
    1,
    2,
    3,
    -2,
    4,
    7,
    64,
    1000,
    1 << 20,
    1 << 31,
    1 << 40,
    i64::MAX,
    i64::MIN,
    i32::MAX as i64,
];

fn interesting_i64(rng: &mut ChaCha8Rng, old: i64) -> i64 {
    match rng.random_range(0..4) {
        0 => old.wrapping_add(rng.random_range(-3..=3)),
        1 => old.wrapping_mul(-1),
        _ => INTERESTING_I64[rng.random_range(0..INTERESTING_I64.len())],
    }
}

/// Decodes an ONNX model, changes one thing that the importer reads (an attribute, a tensor's
/// dims or type, a graph input's dims, a node's op or inputs, the node list, the opset) and
/// encodes it again.
fn mutate_onnx(rng: &mut ChaCha8Rng, data: &[u8]) -> Option<Vec<u8>> {
    use prost::Message;
    use tesla_distill::onnx::pb;
    let mut m = pb::ModelProto::decode(data).ok()?;
    let g = m.graph.as_mut()?;
    let nodes = g.node.len();
    match rng.random_range(0..10) {
        // An attribute's integer, integer list or float.
        0..=2 if nodes > 0 => {
            let n = &mut g.node[rng.random_range(0..nodes)];
            if n.attribute.is_empty() {
                return None;
            }
            let k = rng.random_range(0..n.attribute.len());
            let a = &mut n.attribute[k];
            if let Some(i) = a.i.as_mut() {
                *i = interesting_i64(rng, *i);
            } else if !a.ints.is_empty() {
                match rng.random_range(0..4) {
                    0 => {
                        a.ints.pop();
                    }
                    1 => a.ints.push(interesting_i64(rng, 1)),
                    _ => {
                        let j = rng.random_range(0..a.ints.len());
                        a.ints[j] = interesting_i64(rng, a.ints[j]);
                    }
                }
            } else if let Some(f) = a.f.as_mut() {
                *f = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30, -0.0][rng.random_range(0..6)];
            } else if let Some(t) = a.t.as_mut() {
                mutate_tensor(rng, t);
            } else {
                n.attribute.remove(k);
            }
        }
        // An initializer's dims or element type.
        3 | 4 if !g.initializer.is_empty() => {
            let k = rng.random_range(0..g.initializer.len());
            mutate_tensor(rng, &mut g.initializer[k]);
        }
        // A graph input's or output's dims.
        5 => {
            use pb::tensor_shape_proto::dimension::Value;
            let vis = if rng.random_bool(0.7) {
                &mut g.input
            } else {
                &mut g.output
            };
            if vis.is_empty() {
                return None;
            }
            let k = rng.random_range(0..vis.len());
            let Some(pb::type_proto::Value::TensorType(t)) =
                vis[k].r#type.as_mut().and_then(|t| t.value.as_mut())
            else {
                return None;
            };
            let s = t.shape.as_mut()?;
            if s.dim.is_empty() || rng.random_bool(0.2) {
                s.dim.push(Default::default());
            } else {
                let j = rng.random_range(0..s.dim.len());
                s.dim[j].value = match rng.random_range(0..3) {
                    0 => Some(Value::DimParam("n".into())),
                    1 => None,
                    _ => Some(Value::DimValue(interesting_i64(rng, 1))),
                };
            }
        }
        // Another node's op type.
        6 if nodes > 1 => {
            let a = rng.random_range(0..nodes);
            let b = rng.random_range(0..nodes);
            g.node[a].op_type = g.node[b].op_type.clone();
        }
        // A node's inputs: dropped, swapped or taken from another node.
        7 if nodes > 0 => {
            let a = rng.random_range(0..nodes);
            let b = rng.random_range(0..nodes);
            let from = g.node[b].input.clone();
            let n = &mut g.node[a];
            match rng.random_range(0..3) {
                0 => {
                    n.input.pop();
                }
                1 if n.input.len() > 1 => n.input.swap(0, 1),
                _ => n.input = from,
            }
        }
        // The node list: one removed or duplicated.
        8 if nodes > 0 => {
            let a = rng.random_range(0..nodes);
            if rng.random_bool(0.5) {
                g.node.remove(a);
            } else {
                let n = g.node[a].clone();
                g.node.insert(rng.random_range(0..=nodes), n);
            }
        }
        _ => {
            let o = m.opset_import.first_mut()?;
            o.version = Some([1, 6, 9, 11, 12, 13, 17, 18, 21, 99][rng.random_range(0..10)]);
        }
    }
    Some(m.encode_to_vec())
}

/// Changes a tensor's element type, its dims, or one of its values (shape operands such as
/// Reshape targets, Expand shapes, Slice bounds and Gather indices are integer tensors).
fn mutate_tensor(rng: &mut ChaCha8Rng, t: &mut tesla_distill::onnx::pb::TensorProto) {
    match rng.random_range(0..7) {
        0 => t.data_type = Some(rng.random_range(0..=22)),
        1 => {
            t.dims.pop();
        }
        2 => t.dims.push(interesting_i64(rng, 1)),
        3 if !t.dims.is_empty() => {
            let j = rng.random_range(0..t.dims.len());
            t.dims[j] = interesting_i64(rng, t.dims[j]);
        }
        _ => {
            let w = match t.data_type {
                Some(7) => 8,
                Some(6 | 1) => 4,
                _ => 0,
            };
            if let Some(raw) = t.raw_data.as_mut().filter(|r| w > 0 && r.len() >= w) {
                let j = rng.random_range(0..raw.len() / w) * w;
                let old = if w == 8 {
                    i64::from_le_bytes(raw[j..j + 8].try_into().unwrap_or([0; 8]))
                } else {
                    i64::from(i32::from_le_bytes(
                        raw[j..j + 4].try_into().unwrap_or([0; 4]),
                    ))
                };
                let v = interesting_i64(rng, old);
                match t.data_type {
                    Some(7) => raw[j..j + 8].copy_from_slice(&v.to_le_bytes()),
                    Some(6) => raw[j..j + 4].copy_from_slice(&(v as i32).to_le_bytes()),
                    _ => raw[j..j + 4].copy_from_slice(&(v as f32).to_le_bytes()),
                }
            } else if !t.int64_data.is_empty() {
                let j = rng.random_range(0..t.int64_data.len());
                t.int64_data[j] = interesting_i64(rng, t.int64_data[j]);
            } else if !t.int32_data.is_empty() {
                let j = rng.random_range(0..t.int32_data.len());
                t.int32_data[j] = interesting_i64(rng, t.int32_data[j].into()) as i32;
            } else if !t.float_data.is_empty() {
                let j = rng.random_range(0..t.float_data.len());
                t.float_data[j] = [f32::NAN, 1e30, -1.0, 0.0][rng.random_range(0..4)];
            } else {
                t.dims.push(1);
            }
        }
    }
}

/// Mutates the JSON header of a safetensors file (shapes, offsets, dtypes, metadata) and writes
/// it back with its new length; the data bytes stay.
fn mutate_safetensors_header(rng: &mut ChaCha8Rng, data: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    let mut v: serde_json::Value = serde_json::from_slice(header).ok()?;
    mutate_json(rng, &mut v);
    let h = serde_json::to_vec(&v).ok()?;
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data[8 + n..]);
    Some(out)
}

fn count_json(v: &serde_json::Value) -> usize {
    1 + match v {
        serde_json::Value::Array(a) => a.iter().map(count_json).sum(),
        serde_json::Value::Object(o) => o.values().map(count_json).sum(),
        _ => 0,
    }
}

/// Applies `f` to the `k`-th node of `v` in depth-first order; true once applied.
fn at_json(
    v: &mut serde_json::Value,
    k: &mut usize,
    f: &mut dyn FnMut(&mut serde_json::Value),
) -> bool {
    if *k == 0 {
        f(v);
        return true;
    }
    *k -= 1;
    match v {
        serde_json::Value::Array(a) => a.iter_mut().any(|x| at_json(x, k, f)),
        serde_json::Value::Object(o) => o.values_mut().any(|x| at_json(x, k, f)),
        _ => false,
    }
}

const INTERESTING_JSON_NUMBERS: [&str; 14] = [
    "0",
    "-1",
    "1",
    "2",
    "0.5",
    "-0.0",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "1099511627776",
    "65537",
];

/// Changes one node of a JSON document: a number to an interesting one, a string (recursing
/// into strings that hold JSON, like expert metadata and saved configs), an array or object
/// element removed or duplicated, or a node replaced by another type.
pub fn mutate_json(rng: &mut ChaCha8Rng, v: &mut serde_json::Value) {
    let mut k = rng.random_range(0..count_json(v));
    at_json(v, &mut k, &mut |node| mutate_json_node(rng, node));
}

fn mutate_json_node(rng: &mut ChaCha8Rng, node: &mut serde_json::Value) {
    use serde_json::Value;
    if rng.random_range(0..8) == 0 {
        *node = match rng.random_range(0..5) {
            0 => Value::Null,
            1 => Value::Array(Vec::new()),
            2 => Value::Object(Default::default()),
            3 => Value::String("x".into()),
            _ => Value::from(0),
        };
        return;
    }
    match node {
        Value::Number(_) => {
            let t = INTERESTING_JSON_NUMBERS[rng.random_range(0..INTERESTING_JSON_NUMBERS.len())];
            if let Ok(n) = serde_json::from_str::<Value>(t) {
                *node = n;
            }
        }
        Value::String(s) => {
            if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                if inner.is_object() || inner.is_array() {
                    mutate_json(rng, &mut inner);
                    *s = inner.to_string();
                    return;
                }
            }
            *s = match rng.random_range(0..6) {
                0 => String::new(),
                1 => s.repeat(3),
                2 => "18446744073709551616".into(),
                3 => "-1".into(),
                4 => s.chars().rev().collect(),
                _ => format!("{s}x"),
            };
        }
        Value::Array(a) if !a.is_empty() => {
            let j = rng.random_range(0..a.len());
            match rng.random_range(0..3) {
                0 => {
                    a.remove(j);
                }
                1 => {
                    let x = a[j].clone();
                    a.insert(j, x);
                }
                _ => a.clear(),
            }
        }
        Value::Object(o) if !o.is_empty() => {
            let key = o.keys().nth(rng.random_range(0..o.len())).cloned();
            if let Some(key) = key {
                if rng.random_bool(0.5) {
                    o.remove(&key);
                } else if let Some(x) = o.remove(&key) {
                    o.insert(format!("{key}_"), x);
                }
            }
        }
        Value::Bool(b) => *b = !*b,
        _ => *node = Value::from(1),
    }
}

// ------------------------------------------------------------------------------------------------
// Targets.

/// One reader and the seed files of its format.
pub struct Target {
    /// Name used by `--target` and in saved file names.
    pub name: &'static str,
    /// What it reads, for `--list`.
    pub about: &'static str,
    /// The file name a stored single-file input gets.
    pub default_file: &'static str,
    /// Valid inputs of the format; `scratch` is an empty directory to build them in.
    pub seeds: fn(scratch: &Path) -> Result<Vec<Input>>,
    /// Runs the reader on the input already written under `dir` (a fresh directory).
    pub run: fn(dir: &Path, input: &Input) -> Result<()>,
}

/// Every target, in the order they run.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "onnx",
            about: "onnx::import::import_onnx, then onnx::artifacts::compile_dir (standard set)",
            default_file: "model.onnx",
            seeds: seeds::onnx,
            run: run::onnx,
        },
        Target {
            name: "idx",
            about: "data::load(fashion-mnist:DIR): IDX images and labels, raw and gzipped",
            default_file: "train-images-idx3-ubyte",
            seeds: seeds::idx,
            run: run::idx,
        },
        Target {
            name: "cifar10",
            about: "data::load(cifar10:DIR): five binary batches and batches.meta.txt",
            default_file: "data_batch_1.bin",
            seeds: seeds::cifar10,
            run: run::cifar10,
        },
        Target {
            name: "cifar100",
            about: "data::load(cifar100:DIR): train.bin and fine_label_names.txt",
            default_file: "train.bin",
            seeds: seeds::cifar100,
            run: run::cifar100,
        },
        Target {
            name: "imagenet",
            about: "data::load(imagenet64:DIR): npz batches (stored and deflated), map_clsloc.txt",
            default_file: "train_data_batch_1.npz",
            seeds: seeds::imagenet,
            run: run::imagenet,
        },
        Target {
            name: "folder",
            about: "data::load(folder:DIR), both splits: PNG and JPEG class folders",
            default_file: "train/a/0.png",
            seeds: seeds::folder,
            run: run::folder,
        },
        Target {
            name: "tiny",
            about: "data::load(tiny:DIR), both splits: JPEGs, val_annotations.txt, words.txt",
            default_file: "train/n0001/images/0.JPEG",
            seeds: seeds::tiny,
            run: run::tiny,
        },
        Target {
            name: "run-inputs",
            about: "runtime::read_safetensors_with_metadata (the reader of `tesla run`'s inputs)",
            default_file: "inputs.safetensors",
            seeds: seeds::run_inputs,
            run: run::run_inputs,
        },
        Target {
            name: "expert",
            about: "experts::trajectory::Trajectory::open, then .epoch(0) and the last epoch",
            default_file: "expert_0000.safetensors",
            seeds: seeds::expert,
            run: run::expert,
        },
        Target {
            name: "distilled",
            about: "distill::set_file::DistilledSet::read",
            default_file: "distilled.safetensors",
            seeds: seeds::distilled,
            run: run::distilled,
        },
        Target {
            name: "checkpoint",
            about: "distill::run::run(cfg, resume = true) reading checkpoint/state.safetensors \
                    (stops at the backend, which is invalid on purpose)",
            default_file: "checkpoint/state.safetensors",
            seeds: seeds::checkpoint,
            run: run::checkpoint,
        },
        Target {
            name: "config",
            about: "config.json: serde_json into distill::run::DistillConfig, then validate and \
                    the model, strategy and backend parsers",
            default_file: "config.json",
            seeds: seeds::config,
            run: run::config,
        },
        Target {
            name: "manifest",
            about: "compiler::manifest::Manifest::load, then initial_theta (init.safetensors)",
            default_file: "manifest.json",
            seeds: seeds::manifest,
            run: run::manifest,
        },
    ]
}

/// Seed builders: valid files of each format, written the way the tests write them.
mod seeds {
    use super::Input;
    use anyhow::{Context, Result};
    use ndarray::{Array1, Array2, Array4, ArrayD};
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use tesla_distill::compiler::manifest::ParamEntry;
    use tesla_distill::compiler::model::InitRule;
    use tesla_distill::distill::run::{DistillConfig, Labels, PixInit};
    use tesla_distill::experts::trajectory::ExpertMeta;
    use tesla_distill::runtime::write_safetensors;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    /// Deterministic pseudo-random bytes.
    pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as u8
            })
            .collect()
    }

    fn gz(data: &[u8]) -> Result<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data)?;
        Ok(e.finish()?)
    }

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    /// Small models of both exporters, one with external data, and the smallest torchvision
    /// exports.
    pub fn onnx(_: &Path) -> Result<Vec<Input>> {
        let mut v = Vec::new();
        for (name, data) in [
            ("convnet_noparams.onnx", None),
            ("zoo_bnnet_ts_keep.onnx", None),
            (
                "zoo_deconv_dynamo_keep.onnx",
                Some("zoo_deconv_dynamo_keep.onnx.data"),
            ),
            ("zoo_vit_ts_default.onnx", None),
            ("convnet_keep.onnx", None),
            ("torchvision/shufflenet_v2_ts.onnx", None),
            ("torchvision/regnet_y_ts.onnx", None),
        ] {
            let p = fixture(name);
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            let mut files = vec![(
                file.into_owned(),
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            )];
            if let Some(d) = data {
                files.push((d.to_string(), std::fs::read(fixture(d))?));
            }
            v.push(Input { files });
        }
        Ok(v)
    }

    /// Three 28×28 images and their labels, raw and gzipped.
    pub fn idx(_: &Path) -> Result<Vec<Input>> {
        let n = 3;
        let img = idx_bytes(&[n, 28, 28], &bytes(n as usize * 784, 1));
        let lab = idx_bytes(&[n], &[0, 7, 9]);
        let (i, l) = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte");
        Ok(vec![
            Input {
                files: vec![(i.into(), img.clone()), (l.into(), lab.clone())],
            },
            Input {
                files: vec![(i.into(), gz(&img)?), (l.into(), gz(&lab)?)],
            },
        ])
    }

    fn record(label: &[u8], seed: u32) -> Vec<u8> {
        let mut r = label.to_vec();
        r.extend(bytes(3072, seed));
        r
    }

    /// One record per training batch and the class names.
    pub fn cifar10(_: &Path) -> Result<Vec<Input>> {
        let mut files: Vec<(String, Vec<u8>)> = (1..=5u8)
            .map(|k| (format!("data_batch_{k}.bin"), record(&[k], k.into())))
            .collect();
        let names = tesla_distill::data::cifar::CIFAR10_CLASSES.join("\n");
        files.push(("batches.meta.txt".into(), names.into_bytes()));
        let plain = Input {
            files: files[..5].to_vec(),
        };
        Ok(vec![Input { files }, plain])
    }

    /// Two records (coarse, fine label) and the fine class names.
    pub fn cifar100(_: &Path) -> Result<Vec<Input>> {
        let mut train = record(&[3, 42], 7);
        train.extend(record(&[1, 99], 8));
        let names = tesla_distill::data::cifar::CIFAR100_CLASSES.join("\n");
        Ok(vec![Input {
            files: vec![
                ("train.bin".into(), train),
                ("fine_label_names.txt".into(), names.into_bytes()),
            ],
        }])
    }

    /// An `.npy` (version 1) holding `data` with NumPy type `descr` and `shape`.
    fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let shape_s = match shape {
            [n] => format!("({n},)"),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Result<Vec<u8>> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, data) in members {
            z.start_file(*name, opts)?;
            z.write_all(data)?;
        }
        Ok(z.finish()?.into_inner())
    }

    fn imagenet_batch(n: usize, seed: u32, labels_descr: &str, deflate: bool) -> Result<Vec<u8>> {
        let s = 64;
        let px = bytes(n * 3 * s * s, seed);
        let labels: Vec<i64> = (0..n).map(|i| 1 + (i as i64 * 37 + 5) % 1000).collect();
        let lab: Vec<u8> = match labels_descr {
            "<i8" => labels.iter().flat_map(|l| l.to_le_bytes()).collect(),
            _ => labels
                .iter()
                .flat_map(|&l| (l as i32).to_le_bytes())
                .collect(),
        };
        npz(
            &[
                ("data.npy", npy("|u1", &[n, 3 * s * s], &px)),
                ("labels.npy", npy(labels_descr, &[n], &lab)),
            ],
            deflate,
        )
    }

    /// Two 64×64 batches (one stored, one deflated) and a class map.
    pub fn imagenet(_: &Path) -> Result<Vec<Input>> {
        let map = b"n01440764 1 tench\nn01443537 2 goldfish\n".to_vec();
        Ok(vec![
            Input {
                files: vec![
                    (
                        "train_data_batch_1.npz".into(),
                        imagenet_batch(2, 1, "<i8", false)?,
                    ),
                    (
                        "train_data_batch_2.npz".into(),
                        imagenet_batch(1, 2, "<i4", true)?,
                    ),
                    ("map_clsloc.txt".into(), map),
                ],
            },
            Input::one("train_data_batch_1.npz", imagenet_batch(1, 3, "<i8", true)?),
        ])
    }

    fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Result<Vec<u8>> {
        let mut c = std::io::Cursor::new(Vec::new());
        img.write_to(&mut c, format)?;
        Ok(c.into_inner())
    }

    fn rgb(w: u32, h: u32, seed: u32) -> Result<image::DynamicImage> {
        image::RgbImage::from_raw(w, h, bytes((w * h * 3) as usize, seed))
            .map(image::DynamicImage::ImageRgb8)
            .context("image buffer size")
    }

    fn grey(w: u32, h: u32, seed: u32) -> Result<image::DynamicImage> {
        image::GrayImage::from_raw(w, h, bytes((w * h) as usize, seed))
            .map(image::DynamicImage::ImageLuma8)
            .context("image buffer size")
    }

    /// A train/test folder of PNG and JPEG images, and a bare grey-level one.
    pub fn folder(_: &Path) -> Result<Vec<Input>> {
        use image::ImageFormat::{Jpeg, Png};
        let mixed = Input {
            files: vec![
                ("train/a/0.png".into(), encode(rgb(4, 5, 1)?, Png)?),
                ("train/a/1.jpg".into(), encode(rgb(8, 8, 2)?, Jpeg)?),
                ("train/b/0.png".into(), encode(rgb(4, 5, 3)?, Png)?),
                ("test/a/0.jpeg".into(), encode(rgb(8, 8, 4)?, Jpeg)?),
                ("test/b/0.png".into(), encode(rgb(4, 5, 5)?, Png)?),
            ],
        };
        let bare = Input {
            files: vec![
                ("a/0.png".into(), encode(grey(4, 5, 6)?, Png)?),
                ("b/0.png".into(), encode(grey(4, 5, 7)?, Png)?),
            ],
        };
        // The first image (by name) sets the size of all: a JPEG here, whose header has no
        // checksum.
        let jpeg_first = Input {
            files: vec![
                ("train/a/0.jpg".into(), encode(rgb(8, 8, 8)?, Jpeg)?),
                ("train/b/0.png".into(), encode(grey(4, 5, 9)?, Png)?),
                ("test/b/0.jpg".into(), encode(grey(8, 8, 10)?, Jpeg)?),
            ],
        };
        Ok(vec![mixed, bare, jpeg_first])
    }

    /// Tiny-ImageNet layout: two classes, a validation annotation file and class words.
    pub fn tiny(_: &Path) -> Result<Vec<Input>> {
        use image::ImageFormat::{Jpeg, Png};
        let ann = b"v0.JPEG\tn0001\t0\t0\t8\t8\nv1.JPEG\tn0002\t0\t0\t8\t8\n".to_vec();
        let words = b"n0001\tcat, feline\nn0002\tdog\n".to_vec();
        Ok(vec![Input {
            files: vec![
                (
                    "train/n0001/images/0.JPEG".into(),
                    encode(rgb(8, 8, 1)?, Jpeg)?,
                ),
                (
                    "train/n0002/images/0.JPEG".into(),
                    encode(rgb(8, 8, 2)?, Jpeg)?,
                ),
                (
                    "train/n0002/images/1.png".into(),
                    encode(rgb(6, 6, 3)?, Png)?,
                ),
                ("val/images/v0.JPEG".into(), encode(rgb(8, 8, 4)?, Jpeg)?),
                ("val/images/v1.JPEG".into(), encode(grey(8, 8, 5)?, Jpeg)?),
                ("val/val_annotations.txt".into(), ann),
                ("words.txt".into(), words),
            ],
        }])
    }

    fn safetensors(
        scratch: &Path,
        tensors: Vec<(&str, ArrayD<f32>)>,
        meta: Option<HashMap<String, String>>,
    ) -> Result<Vec<u8>> {
        let p = scratch.join("seed.safetensors");
        let t: Vec<(String, ArrayD<f32>)> = tensors
            .into_iter()
            .map(|(n, a)| (n.to_string(), a))
            .collect();
        write_safetensors(&p, &t, meta)?;
        Ok(std::fs::read(&p)?)
    }

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (i % 13) as f32 * scale - 0.5).collect()
    }

    /// Graph inputs as `tesla run` reads them, with and without metadata.
    pub fn run_inputs(scratch: &Path) -> Result<Vec<Input>> {
        let x = ArrayD::from_shape_vec(vec![2, 1, 3, 3], ramp(18, 0.1))?;
        let y = ArrayD::from_shape_vec(vec![4], ramp(4, 1.0))?;
        let meta = HashMap::from([("graph".to_string(), "step.onnx".to_string())]);
        Ok(vec![
            Input::one(
                "inputs.safetensors",
                safetensors(scratch, vec![("x", x.clone()), ("y", y)], Some(meta))?,
            ),
            Input::one(
                "inputs.safetensors",
                safetensors(scratch, vec![("x", x)], None)?,
            ),
        ])
    }

    /// An expert of 2 epochs over 8 parameters, as `tesla experts` writes it.
    pub fn expert(scratch: &Path) -> Result<Vec<Input>> {
        let meta = ExpertMeta {
            model: "convnet-d1-w2".into(),
            dataset: "fmnist-small".into(),
            zca: false,
            epochs: 2,
            params: vec![
                ParamEntry {
                    name: "w".into(),
                    shape: vec![2, 3],
                    offset: 0,
                    len: 6,
                    init: InitRule::KaimingUniform { fan_in: 3 },
                },
                ParamEntry {
                    name: "b".into(),
                    shape: vec![2],
                    offset: 6,
                    len: 2,
                    init: InitRule::Zeros,
                },
            ],
            lr: 0.01,
            momentum: 0.9,
        };
        let t = ArrayD::from_shape_vec(vec![3, 8], ramp(24, 0.01))?;
        Ok(vec![Input::one(
            "expert_0000.safetensors",
            safetensors(scratch, vec![("trajectory", t)], Some(meta.to_map()?))?,
        )])
    }

    fn set_meta() -> HashMap<String, String> {
        [
            ("dataset", "fmnist-small"),
            ("model", "convnet-d3-w4"),
            ("zca", "none"),
            ("labels", "soft"),
            ("mean", "[0.2861]"),
            ("std", "[0.353]"),
            ("format", tesla_distill::distill::set_file::FORMAT),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Three 1×4×4 images with one-hot and with soft labels.
    pub fn distilled(scratch: &Path) -> Result<Vec<Input>> {
        let images = Array4::from_shape_vec((3, 1, 4, 4), ramp(48, 0.1))?.into_dyn();
        let hard = Array2::from_shape_fn((3, 3), |(i, j)| f32::from(i == j)).into_dyn();
        let soft = Array2::from_shape_fn((3, 3), |(i, j)| if i == j { 0.5 } else { 0.25 });
        let classes = Array1::from(vec![0.0f32, 1.0, 2.0]).into_dyn();
        let lr = Array1::from(vec![0.01f32]).into_dyn();
        let mut v = Vec::new();
        for (labels, with_lr) in [(hard, true), (soft.into_dyn(), false)] {
            let mut t = vec![
                ("images", images.clone()),
                ("labels", labels),
                ("classes", classes.clone()),
            ];
            if with_lr {
                t.push(("lr", lr.clone()));
            }
            v.push(Input::one(
                "distilled.safetensors",
                safetensors(scratch, t, Some(set_meta()))?,
            ));
        }
        Ok(v)
    }

    /// A run configuration that [`tesla_distill::distill::run::validate`] accepts.
    pub fn config_value(out: &Path) -> DistillConfig {
        DistillConfig {
            dataset: "fmnist-small".into(),
            model: "convnet-d3-w4".into(),
            experts: out.join("experts"),
            ipc: 1,
            syn_steps: 2,
            expert_epochs: 1,
            max_start_epoch: 1,
            iterations: 3,
            lr_img: 10.0,
            lr_lr: 1e-5,
            lr_init: Some(0.01),
            lr_label: 2.0,
            batch_syn: None,
            pix_init: PixInit::Real,
            labels: Labels::Learned,
            label_grad: false,
            final_labels: Default::default(),
            gradient: tesla_distill::distill::gradient::Mode::Tesla,
            zca: false,
            dsa_strategy: tesla_distill::data::augment::Strategy::default().to_string(),
            backend: "tract".into(),
            seed: 0,
            eval_every: 0,
            eval_epochs: 300,
            eval_runs: 1,
            checkpoint_every: 1,
            out: out.to_path_buf(),
        }
    }

    /// Checkpoints as `distill::run::save` writes them, with and without learned labels.
    pub fn checkpoint(scratch: &Path) -> Result<Vec<Input>> {
        let (n, k) = (3, 3);
        let images = Array4::from_shape_vec((n, 1, 4, 4), ramp(48, 0.1))?.into_dyn();
        let mom = Array4::from_shape_vec((n, 1, 4, 4), ramp(48, 0.01))?.into_dyn();
        let classes = Array1::from(vec![0.0f32, 1.0, 2.0]).into_dyn();
        let beta = Array1::from(vec![0.01f32, 0.0]).into_dyn();
        let labels = Array2::from_shape_fn((n, k), |(i, j)| f32::from(i == j)).into_dyn();
        let mut meta = HashMap::new();
        meta.insert("iteration".to_string(), "2".to_string());
        meta.insert(
            "config".to_string(),
            serde_json::to_string(&config_value(Path::new("/run")))?,
        );
        let mut v = Vec::new();
        for learned in [false, true] {
            let mut t = vec![
                ("images", images.clone()),
                ("images_mom", mom.clone()),
                ("classes", classes.clone()),
                ("beta", beta.clone()),
                ("last_labels", labels.clone()),
            ];
            if learned {
                t.push(("label_logits", labels.mapv(|v| v * 10.0)));
                t.push(("label_mom", labels.mapv(|v| v * 0.1)));
            }
            v.push(Input::one(
                "checkpoint/state.safetensors",
                safetensors(scratch, t, Some(meta.clone()))?,
            ));
        }
        Ok(v)
    }

    /// `config.json` as a run writes it (pretty) and compact, with optional fields left out.
    pub fn config(_: &Path) -> Result<Vec<Input>> {
        let cfg = config_value(Path::new("/run"));
        let pretty = serde_json::to_string_pretty(&cfg)?;
        let mut compact: serde_json::Value = serde_json::to_value(&cfg)?;
        if let Some(o) = compact.as_object_mut() {
            for k in ["lr_init", "label_grad", "final_labels"] {
                o.remove(k);
            }
        }
        Ok(vec![
            Input::one("config.json", pretty.into_bytes()),
            Input::one("config.json", serde_json::to_vec(&compact)?),
        ])
    }

    /// The artifact directory of a small imported model (`manifest.json`, `init.safetensors`),
    /// as compiled, and with every parameter read from `init.safetensors`.
    pub fn manifest(scratch: &Path) -> Result<Vec<Input>> {
        use tesla_distill::onnx::import::{import_onnx, ImportOptions};
        let m = import_onnx(
            &fixture("zoo_bnnet_ts_keep.onnx"),
            &[2, 3, 16, 16],
            &ImportOptions::default(),
        )?;
        let dir = scratch.join("artifacts");
        tesla_distill::onnx::artifacts::compile_dir(
            &m,
            &[tesla_distill::compiler::artifact::Artifact::Logits],
            0,
            &dir,
        )?;
        let manifest = std::fs::read(dir.join("manifest.json"))?;
        let init = std::fs::read(dir.join("init.safetensors"))?;
        let mut all: serde_json::Value = serde_json::from_slice(&manifest)?;
        if let Some(ps) = all.get_mut("params").and_then(|p| p.as_array_mut()) {
            for p in ps {
                p["init"] = serde_json::json!({ "rule": "from_file" });
            }
        }
        Ok(vec![
            Input {
                files: vec![
                    ("manifest.json".into(), manifest),
                    ("init.safetensors".into(), init.clone()),
                ],
            },
            Input {
                files: vec![
                    ("manifest.json".into(), serde_json::to_vec_pretty(&all)?),
                    ("init.safetensors".into(), init),
                ],
            },
        ])
    }
}

/// The readers, each given the directory the input was written to.
mod run {
    use super::Input;
    use anyhow::{Context, Result};
    use std::collections::HashSet;
    use std::path::Path;
    use tesla_distill::data::{load, Dataset, Split};

    /// The image shape a user would pass: the model's declared input dims (symbolic ones 2 for
    /// the batch, 16 elsewhere; each at most 8 for the batch, 64 elsewhere, so a mutated dim
    /// cannot make the graph huge), or `[2, 3, 16, 16]` when it declares none.
    fn image_shape(path: &Path) -> Vec<usize> {
        use tesla_distill::onnx::pb;
        use tesla_distill::onnx::pb::tensor_shape_proto::dimension::Value;
        let fallback = vec![2, 3, 16, 16];
        let Ok(m) = tesla_distill::onnx::import::read_model(path) else {
            return fallback;
        };
        let Some(g) = &m.graph else { return fallback };
        let inits: HashSet<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let Some(vi) = g
            .input
            .iter()
            .find(|vi| !inits.contains(vi.name.as_deref().unwrap_or("")))
        else {
            return fallback;
        };
        let Some(pb::type_proto::Value::TensorType(t)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return fallback;
        };
        let Some(s) = &t.shape else { return fallback };
        if s.dim.is_empty() || s.dim.len() > 6 {
            return fallback;
        }
        s.dim
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let max = if k == 0 { 8 } else { 64 };
                match d.value {
                    Some(Value::DimValue(v)) if v > 0 => (v as usize).min(max),
                    _ if k == 0 => 2,
                    _ => 16,
                }
            })
            .collect()
    }

    pub fn onnx(dir: &Path, input: &Input) -> Result<()> {
        use tesla_distill::onnx::artifacts::{compile_dir, standard_set};
        use tesla_distill::onnx::import::{import_onnx, ImportOptions};
        let name = input
            .files
            .iter()
            .map(|(n, _)| n)
            .find(|n| n.ends_with(".onnx"))
            .context("no .onnx file in the input")?;
        let path = dir.join(name);
        let m = import_onnx(&path, &image_shape(&path), &ImportOptions::default())?;
        compile_dir(&m, &standard_set(), 0, &dir.join("artifacts"))?;
        Ok(())
    }

    /// Reads the first and the last image back one at a time, as a training batch would (a
    /// batch of the whole set as f32 would be the harness's allocation, not the reader's).
    fn touch(ds: &Dataset) {
        if !ds.is_empty() {
            for i in [0, ds.len() - 1] {
                let _ = ds.batch(&[i]);
                let _ = ds.batch_labels(&[i]);
            }
        }
    }

    fn load_touch(spec: &str, dir: &Path, splits: &[Split]) -> Result<()> {
        let spec = format!("{spec}:{}", dir.display());
        let mut first = None;
        for &s in splits {
            match load(&spec, s, None) {
                Ok(ds) => touch(&ds),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub fn idx(dir: &Path, _: &Input) -> Result<()> {
        load_touch("fashion-mnist", dir, &[Split::Train])
    }

    pub fn cifar10(dir: &Path, _: &Input) -> Result<()> {
        load_touch("cifar10", dir, &[Split::Train])
    }

    pub fn cifar100(dir: &Path, _: &Input) -> Result<()> {
        load_touch("cifar100", dir, &[Split::Train])
    }

    pub fn imagenet(dir: &Path, _: &Input) -> Result<()> {
        load_touch("imagenet64", dir, &[Split::Train])
    }

    pub fn folder(dir: &Path, _: &Input) -> Result<()> {
        load_touch("folder", dir, &[Split::Train, Split::Test])
    }

    pub fn tiny(dir: &Path, _: &Input) -> Result<()> {
        load_touch("tiny", dir, &[Split::Train, Split::Test])
    }

    pub fn run_inputs(dir: &Path, _: &Input) -> Result<()> {
        tesla_distill::runtime::read_safetensors_with_metadata(&dir.join("inputs.safetensors"))?;
        Ok(())
    }

    pub fn expert(dir: &Path, _: &Input) -> Result<()> {
        let t = tesla_distill::experts::trajectory::Trajectory::open(
            &dir.join("expert_0000.safetensors"),
        )?;
        t.epoch(0)?;
        t.epoch(t.snapshots.saturating_sub(1))?;
        let _ = t.meta.effective_lr();
        Ok(())
    }

    pub fn distilled(dir: &Path, _: &Input) -> Result<()> {
        tesla_distill::distill::set_file::DistilledSet::read(&dir.join("distilled.safetensors"))?;
        Ok(())
    }

    /// The checkpoint is read by `run` itself (its reader is private); the backend given is
    /// invalid, so a checkpoint that loads stops the run right after, before any work.
    pub fn checkpoint(dir: &Path, _: &Input) -> Result<()> {
        let mut cfg = super::seeds::config_value(dir);
        cfg.backend = "fuzz-no-backend".into();
        tesla_distill::distill::run::run(cfg, true)?;
        Ok(())
    }

    pub fn config(dir: &Path, _: &Input) -> Result<()> {
        use tesla_distill::distill::run::{validate, DistillConfig};
        let p = dir.join("config.json");
        let bytes = std::fs::read(&p)?;
        let cfg: DistillConfig = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a run configuration", p.display()))?;
        validate(&cfg)?;
        tesla_distill::zoo::ModelSpec::parse(&cfg.model)?;
        tesla_distill::data::augment::Strategy::parse(&cfg.dsa_strategy)?;
        cfg.backend.parse::<tesla_distill::runtime::BackendKind>()?;
        Ok(())
    }

    pub fn manifest(dir: &Path, _: &Input) -> Result<()> {
        let m = tesla_distill::compiler::manifest::Manifest::load(dir)?;
        m.initial_theta(dir, 0)?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// The fuzz loop.

/// How [`fuzz_target`] runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time for the target, seeds and corpus replay included.
    pub budget: Duration,
    /// Seed of the mutation generator.
    pub seed: u64,
    /// Corpus root (`DIR/TARGET/*`): replayed first; new kinds of error are added when
    /// `save_corpus`.
    pub corpus: Option<PathBuf>,
    /// Whether to add inputs to the corpus.
    pub save_corpus: bool,
    /// Where failing inputs are saved.
    pub crashes: PathBuf,
    /// An input running longer than this is a hang.
    pub hang_after: Duration,
    /// Shared with the supervisor: `failures.tsv` (kinds already saved), `skip.txt` (input
    /// hashes that killed a worker), `stats.txt` (this worker's counters), `inflight.bin`.
    pub state: Option<PathBuf>,
}

impl Options {
    /// Defaults: the repository's `fuzz/corpus` and `fuzz/crashes`, a 10 s hang limit.
    pub fn new(budget: Duration, seed: u64) -> Options {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        Options {
            budget,
            seed,
            corpus: Some(root.join("corpus")),
            save_corpus: true,
            crashes: root.join("crashes"),
            hang_after: Duration::from_secs(10),
            state: None,
        }
    }
}

/// What one target's run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Target name.
    pub target: String,
    /// Inputs run.
    pub execs: u64,
    /// Distinct failures (panics, refused allocations, slow inputs) saved.
    pub crashes: u64,
    /// Inputs over the time limit (counted in `crashes` too).
    pub hangs: u64,
    /// Peak bytes allocated.
    pub peak: usize,
    /// Distinct kinds of error seen.
    pub kinds: usize,
    /// Inputs the reader accepted.
    pub accepted: u64,
    /// Inputs added to the corpus.
    pub corpus_added: usize,
    /// One line per saved failure.
    pub failures: Vec<String>,
}

/// The text of the panic being unwound (set by the hook, taken after `catch_unwind`).
static PANIC_TEXT: Mutex<Option<String>> = Mutex::new(None);
/// Start of the input in flight, in ms after [`base`] (0: none).
static EXEC_START: AtomicU64 = AtomicU64::new(0);
static EXEC_LIMIT_MS: AtomicU64 = AtomicU64::new(10_000);
/// (target, in-flight input file, crash directory, failures file) for the watchdog.
type WatchInfo = (String, PathBuf, PathBuf, Option<PathBuf>);
static WATCH: Mutex<Option<WatchInfo>> = Mutex::new(None);
/// Exit code of a process the watchdog ended on a hang (already saved).
pub const HANG_EXIT: u8 = 86;

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64 + 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A line on stderr that output capture (tests) does not hold back.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A new temporary directory, in memory where the system has one (`/dev/shm`): every input is
/// written to files and read back, and a disk-backed `/tmp` makes that the slowest part of an
/// execution. `FUZZ_TMPDIR` overrides the place.
fn scratch_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let root = match std::env::var_os("FUZZ_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("tesla-fuzz-")
        .tempdir_in(&root)
        .or_else(|_| tempfile::tempdir())
        .with_context(|| format!("creating a work directory in {}", root.display()))
}

/// Saves `bytes` as `dir/TARGET-<hash>.bin`; returns the path.
fn save_crash(dir: &Path, target: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(format!("{target}-{:016x}.bin", fnv64(bytes)));
    let _ = std::fs::create_dir_all(dir);
    if let Err(e) = std::fs::write(&p, bytes) {
        say(&format!("fuzz: cannot save {}: {e}", p.display()));
    }
    p
}

fn append(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Starts the thread that ends the process when an input runs past the limit, once.
fn start_watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            let s = EXEC_START.load(Relaxed);
            if s == 0 || now_ms().saturating_sub(s) <= EXEC_LIMIT_MS.load(Relaxed) {
                continue;
            }
            let info = lock(&WATCH).clone();
            if let Some((target, inflight, crashes, failures)) = info {
                let bytes = std::fs::read(&inflight).unwrap_or_default();
                let p = save_crash(&crashes, &target, &bytes);
                let line = format!(
                    "HANG {target}: an input ran over {} s; saved {}",
                    EXEC_LIMIT_MS.load(Relaxed) / 1000,
                    p.display()
                );
                say(&line);
                if let Some(f) = failures {
                    append(&f, &format!("hang\t{}\t{line}", p.display()));
                }
            }
            std::process::exit(HANG_EXIT.into());
        });
    });
}

/// The kind of an error: its innermost message with the input directory blanked, quoted text
/// emptied, every word holding a digit (numbers, hex bytes, sizes) replaced by `#` and lists of
/// them collapsed to one, first 60 characters.
fn error_kind(e: &anyhow::Error, dir: &Path) -> String {
    let s = e
        .root_cause()
        .to_string()
        .replace(&*dir.to_string_lossy(), "");
    let mut out = String::new();
    let mut word = String::new();
    let mut quote = None;
    let flush = |word: &mut String, out: &mut String| {
        let hex = word.len() >= 4 && word.chars().all(|c| c.is_ascii_hexdigit());
        if hex || word.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if let Some(q) = quote {
            if c == q {
                out.push(c);
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        // Bytes of the file shown as characters (a PNG chunk type, say) vary without meaning.
        let c = if c.is_ascii_graphic() || c == ' ' {
            c
        } else {
            '?'
        };
        // An apostrophe inside a word (`model's`) opens no quote.
        let after_word = !word.is_empty();
        flush(&mut word, &mut out);
        out.push(c);
        if matches!(c, '\'' | '"' | '`') && !after_word {
            quote = Some(c);
        }
    }
    flush(&mut word, &mut out);
    for (from, to) in [("#, #", "#"), ("#,#", "#"), ("#.#", "#"), ("??", "?")] {
        while out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out.chars().take(60).collect()
}

/// A saved failure's dedup key: the panic's location, or the failure kind.
fn failure_key(kind: &str, text: &str) -> String {
    match kind {
        "panic" => format!("panic {}", text.split(": ").next().unwrap_or(text)),
        k => k.to_string(),
    }
}

enum Outcome {
    Error(String),
    Accepted,
    Failure,
    Skipped,
}

struct Fuzzer<'a> {
    t: &'a Target,
    o: &'a Options,
    work: tempfile::TempDir,
    inflight: PathBuf,
    failures_file: Option<PathBuf>,
    seen_failures: HashSet<String>,
    skip: HashSet<u64>,
    kinds: HashSet<String>,
    corpus_files: usize,
    stats: Stats,
    last_stats: Instant,
}

impl Fuzzer<'_> {
    fn dir(&self) -> PathBuf {
        self.work.path().join("in")
    }

    fn write_stats(&mut self) {
        self.stats.peak = self.stats.peak.max(peak_bytes());
        if let Some(s) = &self.o.state {
            let st = &self.stats;
            let line = format!(
                "{} {} {} {} {} {} {}\n",
                st.execs, st.crashes, st.hangs, st.peak, st.kinds, st.accepted, st.corpus_added
            );
            let _ = std::fs::write(s.join("stats.txt"), line);
        }
        self.last_stats = Instant::now();
    }

    fn fail(&mut self, kind: &str, text: &str, bytes: &[u8]) {
        let key = failure_key(kind, text);
        if !self.seen_failures.insert(key.clone()) {
            return;
        }
        let p = save_crash(&self.o.crashes, self.t.name, bytes);
        let first = text.lines().next().unwrap_or("");
        let line = format!(
            "CRASH {} ({kind}): {first}; saved {}",
            self.t.name,
            p.display()
        );
        say(&line);
        if let Some(f) = &self.failures_file {
            append(f, &format!("{key}\t{}\t{line}", p.display()));
        }
        self.stats.crashes += 1;
        if kind == "slow" {
            self.stats.hangs += 1;
        }
        self.stats.failures.push(line);
    }

    fn exec(&mut self, input: &Input) -> Outcome {
        let bytes = input.encode();
        if self.skip.contains(&fnv64(&bytes)) {
            return Outcome::Skipped;
        }
        let dir = self.dir();
        let _ = std::fs::write(&self.inflight, &bytes);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|_| input.write_to(&dir))
        {
            say(&format!("fuzz: cannot write the input: {e:#}"));
            return Outcome::Skipped;
        }
        take_refused();
        *lock(&PANIC_TEXT) = None;
        let t0 = Instant::now();
        EXEC_START.store(now_ms(), Relaxed);
        let r = panic::catch_unwind(AssertUnwindSafe(|| (self.t.run)(&dir, input)));
        EXEC_START.store(0, Relaxed);
        let took = t0.elapsed();
        self.stats.execs += 1;
        let refused = take_refused();
        let outcome = match r {
            Err(payload) => {
                let text = lock(&PANIC_TEXT).take().unwrap_or_else(|| {
                    payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                });
                self.fail("panic", &text, &bytes);
                Outcome::Failure
            }
            Ok(_) if refused > 0 => {
                let text = format!("a single allocation of {refused} bytes was refused");
                self.fail("allocation", &text, &bytes);
                Outcome::Failure
            }
            Ok(_) if took > self.o.hang_after => {
                let text = format!("one input took {:.1} s", took.as_secs_f64());
                self.fail("slow", &text, &bytes);
                Outcome::Failure
            }
            Ok(Ok(())) => {
                self.stats.accepted += 1;
                Outcome::Accepted
            }
            Ok(Err(e)) => Outcome::Error(error_kind(&e, &dir)),
        };
        if self.last_stats.elapsed() > Duration::from_secs(1) {
            self.write_stats();
        }
        outcome
    }

    /// Records the outcome's kind; true when it is new (and the input worth keeping).
    fn new_kind(&mut self, o: &Outcome, input: &Input) -> bool {
        let kind = match o {
            Outcome::Error(k) => k.clone(),
            Outcome::Accepted => "(accepted)".to_string(),
            Outcome::Failure | Outcome::Skipped => return false,
        };
        if !self.kinds.insert(kind.clone()) {
            return false;
        }
        if std::env::var_os("FUZZ_VERBOSE").is_some_and(|v| v == "2") {
            say(&format!("{} new kind: {kind}", self.t.name));
        }
        self.stats.kinds = self.kinds.len();
        let bytes = input.encode();
        if self.o.save_corpus && self.corpus_files < 20 && bytes.len() < 64 * 1024 {
            if let Some(c) = &self.o.corpus {
                let d = c.join(self.t.name);
                let p = d.join(format!("{:016x}.bin", fnv64(&bytes)));
                if std::fs::create_dir_all(&d).is_ok() && std::fs::write(&p, &bytes).is_ok() {
                    self.corpus_files += 1;
                    self.stats.corpus_added += 1;
                }
            }
        }
        true
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The corpus entries of `t` under `root`, sorted by name.
fn corpus_entries(root: &Path, t: &Target) -> Vec<(PathBuf, Input)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(t.name))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            Some((p, Input::decode(&b, t.default_file)))
        })
        .collect()
}

/// Runs `t` in this process for `o.budget`: seeds and corpus first, then mutations.
pub fn fuzz_target(t: &Target, o: &Options) -> Result<Stats> {
    let deadline = Instant::now() + o.budget;
    // Under a supervisor, inside its state directory, which it removes even when this process
    // dies without cleaning up.
    let work = match &o.state {
        Some(s) => tempfile::tempdir_in(s).context("creating the work directory")?,
        None => scratch_dir()?,
    };
    let inflight = match &o.state {
        Some(s) => s.join("inflight.bin"),
        None => work.path().join("inflight.bin"),
    };
    set_note(&format!(
        "target {}, the input in flight is {}",
        t.name,
        inflight.display()
    ));
    EXEC_LIMIT_MS.store(o.hang_after.as_millis() as u64, Relaxed);
    let failures_file = o.state.as_ref().map(|s| s.join("failures.tsv"));
    *lock(&WATCH) = Some((
        t.name.to_string(),
        inflight.clone(),
        o.crashes.clone(),
        failures_file.clone(),
    ));
    start_watchdog();
    let seen_failures = failures_file
        .as_deref()
        .map(read_lines)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    let skip = o
        .state
        .as_ref()
        .map(|s| read_lines(&s.join("skip.txt")))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
        .collect();
    let corpus = o
        .corpus
        .as_deref()
        .map(|c| corpus_entries(c, t))
        .unwrap_or_default();
    let scratch = work.path().join("seeds");
    std::fs::create_dir_all(&scratch)?;
    reset_peak();
    let seeds = (t.seeds)(&scratch).with_context(|| format!("building the {} seeds", t.name))?;
    if seeds.is_empty() {
        bail!("target {} has no seeds", t.name);
    }
    let mut f = Fuzzer {
        t,
        o,
        work,
        inflight,
        failures_file,
        seen_failures,
        skip,
        kinds: HashSet::new(),
        corpus_files: corpus.len(),
        stats: Stats {
            target: t.name.to_string(),
            ..Stats::default()
        },
        last_stats: Instant::now(),
    };
    let mut pool: Vec<Input> = Vec::new();
    let verbose = std::env::var_os("FUZZ_VERBOSE").is_some();
    for (i, s) in seeds.into_iter().enumerate() {
        let out = f.exec(&s);
        if verbose {
            let what = match &out {
                Outcome::Error(k) => format!("error: {k}"),
                Outcome::Accepted => "accepted".into(),
                Outcome::Failure => "FAILURE".into(),
                Outcome::Skipped => "skipped".into(),
            };
            say(&format!("{} seed {i}: {what}", t.name));
        }
        f.new_kind(&out, &s);
        pool.push(s);
    }
    for (_, c) in corpus {
        let out = f.exec(&c);
        // Replayed entries set the kinds but are not saved again.
        if let Outcome::Error(k) = &out {
            f.kinds.insert(k.clone());
        } else if let Outcome::Accepted = out {
            f.kinds.insert("(accepted)".into());
        }
        pool.push(c);
    }
    f.stats.kinds = f.kinds.len();
    let fixed = pool.len();
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ fnv64(t.name.as_bytes()));
    while Instant::now() < deadline {
        let mut input = pool[rng.random_range(0..pool.len())].clone();
        let k = rng.random_range(0..input.files.len());
        let name = input.files[k].0.clone();
        let other = {
            let o = &pool[rng.random_range(0..pool.len())];
            o.files
                .iter()
                .find(|(n, _)| *n == name)
                .or_else(|| o.files.first())
                .map(|(_, b)| b.clone())
        };
        if !(rng.random_bool(0.4) && mutate_structured(&mut rng, &name, &mut input.files[k].1)) {
            mutate(&mut rng, &mut input.files[k].1, other.as_deref());
        }
        let out = f.exec(&input);
        if f.new_kind(&out, &input) {
            // In-memory extras beyond the fixed pool are capped; a new one replaces a random one.
            if pool.len() < fixed + 64 {
                pool.push(input);
            } else {
                let i = rng.random_range(fixed..pool.len());
                pool[i] = input;
            }
        }
    }
    f.write_stats();
    Ok(f.stats)
}

/// Installs the hook that records panic texts (with their location) instead of printing them,
/// and returns the previous one.
pub fn quiet_panics() -> Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static> {
    let prev = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        // Outside a reader (in the harness itself) the panic is not caught: say it.
        if EXEC_START.load(Relaxed) == 0 {
            say(&format!("fuzz: harness panic at {loc}: {msg}"));
        }
        let mut slot = lock(&PANIC_TEXT);
        if slot.is_none() {
            *slot = Some(format!("{loc}: {msg}"));
        }
    }));
    prev
}

/// Runs `names` (all targets when empty) in this process, `total` split evenly; the panic hook
/// is restored afterwards.
pub fn fuzz_in_process(names: &[String], total: Duration, o: &Options) -> Result<Vec<Stats>> {
    let ts = selected(names)?;
    let per = total / ts.len() as u32;
    let prev = quiet_panics();
    let mut out = Vec::new();
    let mut err = None;
    for t in &ts {
        let opts = Options {
            budget: per,
            ..o.clone()
        };
        match fuzz_target(t, &opts) {
            Ok(s) => out.push(s),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    panic::set_hook(prev);
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn selected(names: &[String]) -> Result<Vec<Target>> {
    let all = targets();
    if names.is_empty() {
        return Ok(all);
    }
    let known: BTreeSet<&str> = all.iter().map(|t| t.name).collect();
    for n in names {
        if !known.contains(n.as_str()) {
            bail!(
                "unknown target '{n}'; known: {}",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| names.iter().any(|n| n == t.name))
        .collect())
}

/// The table printed at the end.
pub fn table(stats: &[Stats]) -> String {
    let mut s = format!(
        "{:<12} {:>11} {:>8} {:>6} {:>6} {:>9} {:>9}\n",
        "target", "executions", "crashes", "hangs", "kinds", "accepted", "peak MiB"
    );
    for st in stats {
        s += &format!(
            "{:<12} {:>11} {:>8} {:>6} {:>6} {:>9} {:>9.1}\n",
            st.target,
            st.execs,
            st.crashes,
            st.hangs,
            st.kinds,
            st.accepted,
            st.peak as f64 / (1u64 << 20) as f64
        );
    }
    let sum = |f: fn(&Stats) -> u64| stats.iter().map(f).sum::<u64>();
    s += &format!(
        "{:<12} {:>11} {:>8} {:>6}\n",
        "total",
        sum(|s| s.execs),
        sum(|s| s.crashes),
        sum(|s| s.hangs)
    );
    s
}

// ------------------------------------------------------------------------------------------------
// Command line and supervision.

struct Args {
    seconds: f64,
    targets: Vec<String>,
    corpus: PathBuf,
    crashes: PathBuf,
    seed: u64,
    replay: Option<PathBuf>,
    list: bool,
    in_process: bool,
    worker: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut a = Args {
        seconds: 600.0,
        targets: Vec::new(),
        corpus: root.join("corpus"),
        crashes: root.join("crashes"),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        replay: None,
        list: false,
        in_process: false,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => a.seconds = val()?.parse().context("--seconds")?,
            "--target" => a.targets.extend(val()?.split(',').map(str::to_string)),
            "--corpus" => a.corpus = PathBuf::from(val()?),
            "--crashes" => a.crashes = PathBuf::from(val()?),
            "--seed" => a.seed = val()?.parse().context("--seed")?,
            "--replay" => a.replay = Some(PathBuf::from(val()?)),
            "--worker" => a.worker = Some(PathBuf::from(val()?)),
            "--list" => a.list = true,
            "--in-process" => a.in_process = true,
            "-h" | "--help" => {
                println!(
                    "usage: fuzz [--seconds N] [--target NAME[,NAME...]] [--corpus DIR] \
                     [--crashes DIR] [--seed S] [--in-process] [--list] \
                     [--replay FILE --target NAME]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    if !(a.seconds >= 0.0 && a.seconds.is_finite()) {
        bail!("--seconds must be a non-negative number");
    }
    Ok(a)
}

/// Runs one saved input on one target and prints what happened.
fn replay(a: &Args) -> Result<ExitCode> {
    let [name] = a.targets.as_slice() else {
        bail!("--replay needs exactly one --target");
    };
    let t = selected(std::slice::from_ref(name))?.remove(0);
    let bytes = std::fs::read(a.replay.as_deref().unwrap_or(Path::new("")))?;
    let input = Input::decode(&bytes, t.default_file);
    let work = scratch_dir()?;
    input.write_to(work.path())?;
    let t0 = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(work.path(), &input)));
    let took = t0.elapsed().as_secs_f64();
    let refused = take_refused();
    match r {
        Ok(Ok(())) => println!("accepted in {took:.2} s"),
        Ok(Err(e)) => println!("error in {took:.2} s: {e:#}"),
        Err(_) => {
            println!("PANIC after {took:.2} s (message above)");
            return Ok(ExitCode::FAILURE);
        }
    }
    if refused > 0 {
        println!("REFUSED an allocation of {refused} bytes");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Worker mode: one target in this process, talking to the supervisor through `state`.
fn worker(a: &Args, state: &Path) -> Result<ExitCode> {
    let [name] = a.targets.as_slice() else {
        bail!("--worker needs exactly one --target");
    };
    let t = selected(std::slice::from_ref(name))?.remove(0);
    let o = Options {
        budget: Duration::from_secs_f64(a.seconds),
        seed: a.seed,
        corpus: Some(a.corpus.clone()),
        save_corpus: true,
        crashes: a.crashes.clone(),
        hang_after: Duration::from_secs(10),
        state: Some(state.to_path_buf()),
    };
    let _prev = quiet_panics();
    fuzz_target(&t, &o)?;
    Ok(ExitCode::SUCCESS)
}

/// Supervisor: each target in worker processes, restarted after a crash for the time left.
fn supervise(a: &Args) -> Result<Vec<Stats>> {
    let ts = selected(&a.targets)?;
    let per = Duration::from_secs_f64(a.seconds / ts.len() as f64);
    let exe = std::env::current_exe().context("locating this program")?;
    let mut all = Vec::new();
    for (ti, t) in ts.iter().enumerate() {
        let state = scratch_dir()?;
        let deadline = Instant::now() + per;
        let mut st = Stats {
            target: t.name.to_string(),
            ..Stats::default()
        };
        let mut restarts = 0;
        let mut aborts = HashSet::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = std::fs::remove_file(state.path().join("stats.txt"));
            let mut cmd = std::process::Command::new(&exe);
            // One line per failure: `--replay` shows the backtrace of a saved input.
            if std::env::var_os("FUZZ_BACKTRACE").is_none() {
                cmd.env("RUST_BACKTRACE", "0");
            }
            let status = cmd
                .arg("--worker")
                .arg(state.path())
                .args(["--target", t.name])
                .args(["--seconds", &format!("{:.3}", left.as_secs_f64())])
                .args([
                    "--seed",
                    &(a.seed.wrapping_add(ti as u64 * 1000 + restarts)).to_string(),
                ])
                .arg("--corpus")
                .arg(&a.corpus)
                .arg("--crashes")
                .arg(&a.crashes)
                .status()
                .context("starting a worker")?;
            let nums: Vec<u64> = std::fs::read_to_string(state.path().join("stats.txt"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [execs, _, _, peak, kinds, accepted, added] = nums[..] {
                st.execs += execs;
                st.peak = st.peak.max(peak as usize);
                st.kinds = st.kinds.max(kinds as usize);
                st.accepted += accepted;
                st.corpus_added += added as usize;
            }
            if status.success() {
                break;
            }
            // 2: the worker's own error; 101: a panic outside the reader (in the harness).
            if matches!(status.code(), Some(2 | 101)) {
                bail!("the {} worker failed ({status})", t.name);
            }
            st.execs += 1;
            let key = format!("abort {status}");
            if status.code() != Some(i32::from(HANG_EXIT)) && aborts.insert(key.clone()) {
                // Died with the input in flight: an abort (a refused allocation nobody handled,
                // a stack overflow) or a signal. Saved once per kind of death, like panics.
                let bytes = std::fs::read(state.path().join("inflight.bin")).unwrap_or_default();
                let p = save_crash(&a.crashes, t.name, &bytes);
                let line = format!("CRASH {} ({status}); saved {}", t.name, p.display());
                say(&line);
                append(
                    &state.path().join("failures.tsv"),
                    &format!("{key}\t{}\t{line}", p.display()),
                );
            }
            append(
                &state.path().join("skip.txt"),
                &format!(
                    "{:016x}",
                    fnv64(&std::fs::read(state.path().join("inflight.bin")).unwrap_or_default())
                ),
            );
            restarts += 1;
            if Instant::now() + Duration::from_millis(500) >= deadline || restarts > 50 {
                break;
            }
        }
        let lines = read_lines(&state.path().join("failures.tsv"));
        let mut keys = HashSet::new();
        for l in &lines {
            let mut parts = l.splitn(3, '\t');
            let key = parts.next().unwrap_or("");
            if keys.insert(key.to_string()) {
                st.failures.push(parts.nth(1).unwrap_or("").to_string());
                if key == "hang" || key == "slow" {
                    st.hangs += 1;
                }
            }
        }
        st.crashes = keys.len() as u64;
        all.push(st);
    }
    Ok(all)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            say(&format!("fuzz: {e:#}"));
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let a = parse_args()?;
    if a.list {
        for t in targets() {
            println!("{:<12} {}", t.name, t.about);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.replay.is_some() {
        return replay(&a);
    }
    if let Some(state) = &a.worker {
        return worker(&a, state);
    }
    let n = selected(&a.targets)?.len();
    println!(
        "fuzzing {n} targets for {:.0} s ({:.1} s each), seed {}; crashes go to {}",
        a.seconds,
        a.seconds / n as f64,
        a.seed,
        a.crashes.display()
    );
    let stats = if a.in_process {
        let o = Options {
            corpus: Some(a.corpus.clone()),
            crashes: a.crashes.clone(),
            ..Options::new(Duration::ZERO, a.seed)
        };
        fuzz_in_process(&a.targets, Duration::from_secs_f64(a.seconds), &o)?
    } else {
        supervise(&a)?
    };
    print!("{}", table(&stats));
    let failures: Vec<&String> = stats.iter().flat_map(|s| &s.failures).collect();
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} failure(s):", failures.len());
    for f in failures {
        println!("  {f}");
    }
    Ok(ExitCode::FAILURE)
}
