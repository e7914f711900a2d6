//! Generic safetensors reading and atomic writing with the celeb-transfer header.

use crate::{ArtifactError, Provenance, Result, META_KEY};
use safetensors::tensor::{Dtype, View};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The JSON document stored under [`META_KEY`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub schema: String,
    pub schema_version: u32,
    #[serde(flatten)]
    pub provenance: Provenance,
    /// Schema-specific fields (class names, teacher identity, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// `sha256:<hex>` of some bytes.
pub fn digest_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file's content, streamed.
pub fn digest_file(path: &Path) -> Result<String> {
    let io_err = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Writes `value` as pretty JSON to `path` atomically: the one
/// writer of the JSON reports and summaries the stages leave beside their artifacts.
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ArtifactError::Invalid {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
/// A crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// A tensor to be written: raw little-endian bytes with dtype and shape.
pub(crate) struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OutTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: &[f32]) -> Self {
        OutTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn u32(name: impl Into<String>, shape: Vec<usize>, data: &[u32]) -> Self {
        OutTensor {
            name: name.into(),
            dtype: Dtype::U32,
            shape,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn u8(name: impl Into<String>, shape: Vec<usize>, data: Vec<u8>) -> Self {
        OutTensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape,
            data,
        }
    }
}

impl View for &OutTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises tensors and header, checking that every tensor's byte length matches its shape.
pub(crate) fn write_artifact(path: &Path, header: &Header, tensors: &[OutTensor]) -> Result<()> {
    for t in tensors {
        let expect = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if expect != t.data.len() {
            return Err(ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: format!(
                    "tensor `{}` has {} bytes for shape {:?}",
                    t.name,
                    t.data.len(),
                    t.shape
                ),
            });
        }
    }
    let json = serde_json::to_string(header).map_err(|e| ArtifactError::Invalid {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let meta: HashMap<String, String> = [(META_KEY.to_string(), json)].into();
    let bytes = safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), Some(meta))
        .map_err(|e| ArtifactError::Invalid {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Reads only the header of an artifact (cheap: the tensors are not loaded).
pub fn read_header(path: &Path) -> Result<Header> {
    let io_err = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let file_len = f.metadata().map_err(io_err)?.len();
    let not_st = |reason: String| ArtifactError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| not_st(format!("only {file_len} bytes")))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || n + 8 > file_len {
        return Err(not_st(format!(
            "header length {n} does not fit in {file_len} bytes"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(io_err)?;
    let doc: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| not_st(format!("header is not JSON: {e}")))?;
    let meta = doc
        .get("__metadata__")
        .and_then(|m| m.get(META_KEY))
        .and_then(|m| m.as_str())
        .ok_or_else(|| ArtifactError::Foreign {
            path: path.to_path_buf(),
        })?;
    serde_json::from_str(meta).map_err(|e| ArtifactError::BadMeta {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// Why a file's tensor layout cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayoutError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Bad(String),
}

/// A safetensors file's tensor layout, validated once: offsets contiguous and the data
/// exactly filling the file (a truncated file fails here). Returns the layout and the
/// file offset where the data starts. The one reader of the layout, for whole artifacts
/// and for shards.
pub(crate) fn read_layout(
    mut file: &std::fs::File,
) -> std::result::Result<(safetensors::tensor::Metadata, u64), LayoutError> {
    let file_len = file.metadata().map_err(LayoutError::Io)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(LayoutError::Io)?;
    let n = u64::from_le_bytes(n);
    if n + 8 > file_len {
        return Err(LayoutError::Bad(format!(
            "header length {n} does not fit in {file_len} bytes"
        )));
    }
    let mut head = vec![0u8; n as usize];
    file.read_exact(&mut head).map_err(LayoutError::Io)?;
    let layout: safetensors::tensor::Metadata =
        serde_json::from_slice(&head).map_err(|e| LayoutError::Bad(e.to_string()))?;
    let end = layout
        .tensors()
        .values()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0) as u64;
    if 8 + n + end != file_len {
        return Err(LayoutError::Bad(format!(
            "its tensors need {} bytes, the file has {file_len}",
            8 + n + end
        )));
    }
    Ok((layout, 8 + n))
}

/// An artifact opened and validated against a schema: header and tensor layout read,
/// each tensor read from the file when asked for (a stage that needs a shard's small
/// tensors does not read its pixels).
pub(crate) struct Loaded {
    pub path: PathBuf,
    file: std::fs::File,
    layout: safetensors::tensor::Metadata,
    data_start: u64,
    pub header: Header,
}

impl Loaded {
    pub fn open(path: &Path, schema: &str, version: u32) -> Result<Loaded> {
        let header = read_header(path)?;
        if header.schema != schema {
            return Err(ArtifactError::WrongSchema {
                path: path.to_path_buf(),
                expected: schema.into(),
                found: header.schema,
            });
        }
        if header.schema_version != version {
            return Err(ArtifactError::WrongVersion {
                path: path.to_path_buf(),
                schema: schema.into(),
                found: header.schema_version,
                supported: version,
            });
        }
        let file = std::fs::File::open(path).map_err(|error| ArtifactError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let (layout, data_start) = read_layout(&file).map_err(|e| match e {
            LayoutError::Io(error) => ArtifactError::Io {
                path: path.to_path_buf(),
                error,
            },
            LayoutError::Bad(reason) => ArtifactError::NotSafetensors {
                path: path.to_path_buf(),
                reason,
            },
        })?;
        Ok(Loaded {
            path: path.to_path_buf(),
            file,
            layout,
            data_start,
            header,
        })
    }

    pub fn bad(&self, name: &str, problem: impl Into<String>) -> ArtifactError {
        ArtifactError::BadTensor {
            path: self.path.clone(),
            name: name.into(),
            problem: problem.into(),
        }
    }

    pub fn meta_err(&self, problem: impl Into<String>) -> ArtifactError {
        ArtifactError::BadMeta {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.layout.info(name).is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.layout.tensors().into_keys().collect()
    }

    fn raw(&self, name: &str, dtype: Dtype, rank: Option<usize>) -> Result<(Vec<usize>, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let t = self
            .layout
            .info(name)
            .ok_or_else(|| self.bad(name, "missing"))?;
        if t.dtype != dtype {
            return Err(self.bad(name, format!("dtype {:?}, expected {:?}", t.dtype, dtype)));
        }
        if let Some(r) = rank {
            if t.shape.len() != r {
                return Err(self.bad(name, format!("shape {:?}, expected rank {r}", t.shape)));
            }
        }
        let (s, e) = t.data_offsets;
        if t.shape.iter().product::<usize>() * dtype.bitsize() / 8 != e - s {
            return Err(self.bad(name, format!("{} bytes for shape {:?}", e - s, t.shape)));
        }
        let mut data = vec![0u8; e - s];
        self.file
            .read_exact_at(&mut data, self.data_start + s as u64)
            .map_err(|error| ArtifactError::Io {
                path: self.path.clone(),
                error,
            })?;
        Ok((t.shape.clone(), data))
    }

    pub fn f32(&self, name: &str, rank: Option<usize>) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = self.raw(name, Dtype::F32, rank)?;
        let v = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, v))
    }

    pub fn u32(&self, name: &str, rank: Option<usize>) -> Result<(Vec<usize>, Vec<u32>)> {
        let (shape, data) = self.raw(name, Dtype::U32, rank)?;
        let v = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, v))
    }

    pub fn u8(&self, name: &str, rank: Option<usize>) -> Result<(Vec<usize>, Vec<u8>)> {
        self.raw(name, Dtype::U8, rank)
    }

    /// Checks that dimension 0 of `shape` equals `n`.
    pub fn expect_n(&self, name: &str, shape: &[usize], n: usize) -> Result<()> {
        if shape.first() != Some(&n) {
            return Err(self.bad(
                name,
                format!("shape {shape:?} disagrees with N = {n} of the other tensors"),
            ));
        }
        Ok(())
    }

    pub fn extra<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.header.extra.clone()).map_err(|e| self.meta_err(e.to_string()))
    }
}
