//! GGUF reader (versions 2 and 3, little-endian).
//!
//! Layout of a GGUF file:
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, value_type u32, value)
//! n_tensors × (name: string, n_dims u32, dims u64 × n_dims, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data (each tensor at data_start + offset, offset aligned)
//! ```
//! Strings are `len u64` + UTF-8 bytes. The reader only parses the header;
//! tensor bytes are addressed by absolute file offset ([`TensorInfo::offset`]),
//! so the caller decides where the bytes live (a file, a heap blob, …).
//!
//! Every count and length in the header is attacker-controlled: each one is
//! checked against hard caps *and* against the bytes that remain before any
//! allocation, so a hostile or truncated file yields a [`GgufError`], never a
//! panic or a huge allocation.

use crate::tensor::GgmlType;
use std::collections::BTreeMap;

/// Hard caps on what a header may claim.
pub mod caps {
    /// Metadata entries (real models have well under 100).
    pub const MAX_KV: u64 = 1 << 16;
    /// Tensors (a 70B model has ~700).
    pub const MAX_TENSORS: u64 = 1 << 16;
    /// Elements in one metadata array (vocabularies and merges: ~260k).
    pub const MAX_ARRAY_LEN: u64 = 1 << 24;
    /// Bytes in one string (chat templates are a few KiB).
    pub const MAX_STRING_LEN: u64 = 1 << 24;
    /// Nesting of arrays inside arrays.
    pub const MAX_ARRAY_DEPTH: u32 = 2;
    /// Dimensions of one tensor (ggml's GGML_MAX_DIMS).
    pub const MAX_DIMS: u32 = 4;
    /// Elements in one tensor.
    pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
    /// Largest accepted alignment.
    pub const MAX_ALIGNMENT: u32 = 1 << 16;
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u32 = 32;

/// Why a GGUF file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is truncated: needed {needed} bytes at offset {offset}, file has {len}")]
    Truncated { offset: u64, needed: u64, len: u64 },
    #[error("GGUF header claims {what} = {value}, above the limit {limit}")]
    OverLimit { what: &'static str, value: u64, limit: u64 },
    #[error("GGUF metadata value type {0} is unknown")]
    BadValueType(u32),
    #[error("GGUF string at offset {0} is not valid UTF-8")]
    BadUtf8(u64),
    #[error("GGUF metadata key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("GGUF tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("GGUF alignment {0} is not a power of two in 1..=65536")]
    BadAlignment(u32),
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("metadata key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative values refused).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float (or integer) type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// Where one tensor's data lies and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Byte range of the data in the file.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.size) as usize
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u32,
    /// Absolute offset where tensor data starts.
    pub data_offset: u64,
    /// Size of the whole file the header was checked against.
    pub file_len: u64,
}

impl Gguf {
    /// Parses the header of a complete GGUF file held in `bytes` and checks
    /// that every tensor lies inside it.
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        Self::parse_header(bytes, bytes.len() as u64)
    }

    /// Parses a header from a prefix of a file whose full size is `file_len`
    /// (lets a caller read only the first megabytes of a large file).
    pub fn parse_header(prefix: &[u8], file_len: u64) -> Result<Gguf, GgufError> {
        let mut r = Reader { bytes: prefix, pos: 0 };
        let magic: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        check_limit("tensor count", n_tensors, caps::MAX_TENSORS)?;
        check_limit("metadata count", n_kv, caps::MAX_KV)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let value_type = r.u32()?;
            let value = r.value(value_type, 0)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::BadKey {
                    key: "general.alignment".into(),
                    reason: format!("expected an integer, found {}", v.type_name()),
                })?;
                let a = u32::try_from(a).map_err(|_| GgufError::BadAlignment(u32::MAX))?;
                if a == 0 || !a.is_power_of_two() || a > caps::MAX_ALIGNMENT {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        let mut raw = Vec::with_capacity(n_tensors.min(1024) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > caps::MAX_DIMS {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("{n_dims} dimensions (1..={} allowed)", caps::MAX_DIMS),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let type_id = r.u32()?;
            let offset = r.u64()?;
            raw.push((name, dims, type_id, offset));
        }

        let data_offset = align_up(r.pos as u64, alignment as u64);
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::BTreeSet::new();
        for (name, dims, type_id, rel_offset) in raw {
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            let info = resolve_tensor(name, dims, type_id, rel_offset, data_offset, alignment, file_len)?;
            tensors.push(info);
        }

        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A required string key.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong_type(key, "a string", v))
    }

    /// A required non-negative integer key.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| wrong_type(key, "a non-negative integer", v))
    }

    /// A required number key.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| wrong_type(key, "a number", v))
    }

    /// A required array key.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong_type(key, "an array", v))
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::BadKey {
            key: key.into(),
            reason: "missing".into(),
        })
    }
}

fn wrong_type(key: &str, expected: &str, v: &Value) -> GgufError {
    GgufError::BadKey {
        key: key.into(),
        reason: format!("expected {expected}, found {}", v.type_name()),
    }
}

fn check_limit(what: &'static str, value: u64, limit: u64) -> Result<(), GgufError> {
    if value > limit {
        return Err(GgufError::OverLimit { what, value, limit });
    }
    Ok(())
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Checks one tensor's type, shape and extent against the file.
fn resolve_tensor(
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    rel_offset: u64,
    data_offset: u64,
    alignment: u32,
    file_len: u64,
) -> Result<TensorInfo, GgufError> {
    let bad = |name: &str, reason: String| GgufError::BadTensor {
        name: name.to_string(),
        reason,
    };
    let ty = GgmlType::from_id(type_id)
        .ok_or_else(|| bad(&name, format!("unknown or unsupported ggml type id {type_id}")))?;
    let mut n: u64 = 1;
    for &d in &dims {
        if d == 0 {
            return Err(bad(&name, format!("zero dimension in {dims:?}")));
        }
        n = n
            .checked_mul(d)
            .filter(|&n| n <= caps::MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| bad(&name, format!("shape {dims:?} has too many elements")))?;
    }
    let block = ty.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(bad(
            &name,
            format!(
                "row length {} is not a multiple of the {ty:?} block size {block}",
                dims[0]
            ),
        ));
    }
    let size = n / block * ty.block_bytes() as u64;
    if !rel_offset.is_multiple_of(alignment as u64) {
        return Err(bad(&name, format!("offset {rel_offset} is not aligned to {alignment}")));
    }
    let offset = data_offset
        .checked_add(rel_offset)
        .ok_or_else(|| bad(&name, format!("offset {rel_offset} overflows")))?;
    let end = offset
        .checked_add(size)
        .ok_or_else(|| bad(&name, format!("offset {rel_offset} overflows")))?;
    if end > file_len {
        return Err(bad(
            &name,
            format!("data [{offset}, {end}) lies past the end of the file ({file_len} bytes)"),
        ));
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        size,
    })
}

/// A bounds-checked little-endian cursor over the header bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($name:ident, $t:ty) => {
        fn $name(&mut self) -> Result<$t, GgufError> {
            let b = self.take(std::mem::size_of::<$t>())?;
            Ok(<$t>::from_le_bytes(b.try_into().expect("exact size")))
        }
    };
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                needed: n as u64,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    read_le!(u8, u8);
    read_le!(i8, i8);
    read_le!(u16, u16);
    read_le!(i16, i16);
    read_le!(u32, u32);
    read_le!(i32, i32);
    read_le!(u64, u64);
    read_le!(i64, i64);
    read_le!(f32, f32);
    read_le!(f64, f64);

    fn string(&mut self) -> Result<String, GgufError> {
        let start = self.pos as u64;
        let len = self.u64()?;
        check_limit("string length", len, caps::MAX_STRING_LEN)?;
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::BadUtf8(start))
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.i8()?),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.i16()?),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.i32()?),
            6 => Value::F32(self.f32()?),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::BadKey {
                        key: format!("<bool at offset {}>", self.pos - 1),
                        reason: format!("bool byte {b}"),
                    })
                }
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= caps::MAX_ARRAY_DEPTH {
                    return Err(GgufError::OverLimit {
                        what: "array nesting",
                        value: depth as u64 + 1,
                        limit: caps::MAX_ARRAY_DEPTH as u64,
                    });
                }
                let elem_type = self.u32()?;
                let len = self.u64()?;
                check_limit("array length", len, caps::MAX_ARRAY_LEN)?;
                // Every element takes at least one byte: refuse before allocating.
                let min_elem = min_value_size(elem_type).ok_or(GgufError::BadValueType(elem_type))?;
                let needed = len.saturating_mul(min_elem);
                if needed > self.remaining() {
                    return Err(GgufError::Truncated {
                        offset: self.pos as u64,
                        needed,
                        len: self.bytes.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.i64()?),
            12 => Value::F64(self.f64()?),
            t => return Err(GgufError::BadValueType(t)),
        })
    }
}

/// The fewest bytes a value of this type can occupy.
fn min_value_size(value_type: u32) -> Option<u64> {
    Some(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Writes GGUF files: used by tests (corrupt-file walks, synthetic models) and
/// by the CLI's `synth`.
pub mod writer {
    use super::{Value, DEFAULT_ALIGNMENT, MAGIC};
    use crate::tensor::GgmlType;

    /// A tensor to write: name, ggml-order dims, type and raw bytes.
    pub struct TensorData {
        pub name: String,
        pub dims: Vec<u64>,
        pub ty: GgmlType,
        pub bytes: Vec<u8>,
    }

    /// A file's metadata and tensors (with their bytes), as [`write`] takes them.
    pub type Parts = (Vec<(String, Value)>, Vec<TensorData>);

    /// A whole GGUF file as [`Parts`], ready to be edited and written again
    /// with [`write`] (tests and tools that rewrite a model).
    pub fn parts_of(bytes: &[u8]) -> Result<Parts, super::GgufError> {
        let gguf = super::Gguf::parse(bytes)?;
        let metadata = gguf.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let tensors = gguf
            .tensors
            .iter()
            .map(|t| TensorData {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                bytes: bytes[t.byte_range()].to_vec(),
            })
            .collect();
        Ok((metadata, tensors))
    }

    /// A tensor's header entry, for writing the data separately
    /// ([`write_header`]): name, ggml-order dims and type.
    pub struct TensorHeader {
        pub name: String,
        pub dims: Vec<u64>,
        pub ty: GgmlType,
    }

    impl TensorHeader {
        /// Bytes of the tensor's data (`dims[0]` a multiple of the block size).
        pub fn data_bytes(&self) -> u64 {
            let rows: u64 = self.dims.iter().skip(1).product();
            self.ty.row_bytes(self.dims[0] as usize) as u64 * rows
        }
    }

    /// The alignment the metadata asks for (`general.alignment`, default 32).
    pub fn alignment(metadata: &[(String, Value)]) -> u64 {
        metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT as u64)
    }

    /// Zero bytes that pad `len` up to a multiple of `alignment`.
    pub fn padding(len: u64, alignment: u64) -> usize {
        (len.div_ceil(alignment) * alignment - len) as usize
    }

    /// Serializes a version-3 GGUF header, padded up to where tensor data
    /// starts. Streaming writers then write each tensor's
    /// [`TensorHeader::data_bytes`] bytes in the given order, each but the
    /// first preceded by [`padding`] to the alignment (the file ends right
    /// after the last tensor).
    pub fn write_header(metadata: &[(String, Value)], tensors: &[TensorHeader]) -> Vec<u8> {
        let alignment = alignment(metadata);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_string(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty.id()).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += t.data_bytes();
            offset += padding(offset, alignment) as u64;
        }
        let pad = padding(out.len() as u64, alignment);
        out.resize(out.len() + pad, 0);
        out
    }

    /// Serializes a version-3 GGUF file.
    pub fn write(metadata: &[(String, Value)], tensors: &[TensorData]) -> Vec<u8> {
        let alignment = alignment(metadata);
        let headers: Vec<TensorHeader> = tensors
            .iter()
            .map(|t| TensorHeader {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
            })
            .collect();
        let mut out = write_header(metadata, &headers);
        for (i, t) in tensors.iter().enumerate() {
            if i > 0 {
                let pad = padding(out.len() as u64, alignment);
                out.resize(out.len() + pad, 0);
            }
            out.extend_from_slice(&t.bytes);
        }
        out
    }

    fn put_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn value_type(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_string(out, s),
            Value::Array(items) => {
                // An empty array (which keeps no element type here) is written
                // as an array of strings: the empty arrays GGUF files carry
                // are string lists (a BPE vocabulary's `tokenizer.ggml.merges`),
                // and llama.cpp refuses merges of any other type.
                let elem = items.first().map(value_type).unwrap_or(8);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    put_value(out, it);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write, TensorData};
    use super::*;

    fn sample_file() -> Vec<u8> {
        let md = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("x.count".to_string(), Value::U32(7)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
            ("x.f".to_string(), Value::F32(1.5)),
        ];
        let t = vec![
            TensorData {
                name: "a".into(),
                dims: vec![4, 2],
                ty: GgmlType::F32,
                bytes: vec![1; 32],
            },
            TensorData {
                name: "b".into(),
                dims: vec![3],
                ty: GgmlType::F16,
                bytes: vec![2; 6],
            },
        ];
        write(&md, &t)
    }

    #[test]
    fn round_trips_metadata_and_tensors() {
        let bytes = sample_file();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("x.count").unwrap(), 7);
        assert_eq!(g.get_f64("x.f").unwrap(), 1.5);
        assert_eq!(g.get_array("x.list").unwrap().len(), 2);
        let a = g.tensor("a").unwrap();
        assert_eq!(a.size, 32);
        assert_eq!(&bytes[a.byte_range()], &[1u8; 32][..]);
        let b = g.tensor("b").unwrap();
        assert_eq!(b.offset % 32, 0);
        assert_eq!(&bytes[b.byte_range()], &[2u8; 6][..]);
    }

    #[test]
    fn an_empty_array_is_written_as_a_string_array() {
        let md = vec![("tokenizer.ggml.merges".to_string(), Value::Array(Vec::new()))];
        let bytes = write(&md, &[]);
        // magic, version, n_tensors, n_kv, key (len + bytes), value type 9,
        // then the element type: 8 (string), as llama.cpp requires of merges.
        let at = 4 + 4 + 8 + 8 + 8 + "tokenizer.ggml.merges".len() + 4;
        assert_eq!(u32::from_le_bytes(bytes[at - 4..at].try_into().unwrap()), 9);
        assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 8);
        assert_eq!(
            Gguf::parse(&bytes)
                .unwrap()
                .get_array("tokenizer.ggml.merges")
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_file();
        for cut in 0..bytes.len() - 1 {
            // The last tensor ends 2 bytes before the padded end? No: it ends exactly at len.
            assert!(Gguf::parse(&bytes[..cut]).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn absurd_counts_are_refused_without_allocating() {
        let mut bytes = sample_file();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // n_kv
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::OverLimit { .. })));
        let mut bytes = sample_file();
        bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes()); // n_tensors
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::OverLimit { .. })));
    }

    #[test]
    fn bad_magic_and_version() {
        let mut bytes = sample_file();
        bytes[0] = b'X';
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::BadMagic(_))));
        let mut bytes = sample_file();
        bytes[4] = 1;
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::UnsupportedVersion(1))));
    }
}
