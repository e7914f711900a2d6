//! Sharded artifacts: an index file naming shard files of bounded size.
//!
//! Why: one file holding every face is read whole by every stage and made by one process.
//! A sharded artifact is `faces.safetensors`, the index (labels, splits, sources, geometry:
//! the small per-face rows, and the list of shards with their rows, sizes and digests),
//! plus `faces.shards/00000.safetensors ...`, each a plain safetensors file with its faces'
//! pixels that Python opens on its own. Shards are made independently (one job each, on
//! any machine) and written atomically; the index is written last, by the merge.

use crate::io::{read_header, read_layout, Header};
use crate::{ArtifactError, Result, META_KEY};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// One shard as an index names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardRef {
    /// Path relative to the index's folder (`faces.shards/00003.safetensors`).
    pub file: String,
    pub rows: usize,
    pub bytes: u64,
    /// `sha256:` of the shard file, computed as it was written.
    pub digest: String,
}

/// The folder of an artifact's shards: `x/faces.safetensors` -> `x/faces.shards`.
pub fn shard_dir(artifact: &Path) -> PathBuf {
    let stem = artifact
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    artifact.with_file_name(format!("{stem}.shards"))
}

/// File name of shard `i`.
pub fn shard_file_name(i: usize) -> String {
    format!("{i:05}.safetensors")
}

/// `ShardRef::file` of shard `i` of `artifact`.
pub fn shard_ref_path(artifact: &Path, i: usize) -> String {
    let dir = shard_dir(artifact);
    let dir = dir
        .file_name()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{dir}/{}", shard_file_name(i))
}

/// Which shard a photo belongs to, of `count` (a power of two): the first 8 bytes of
/// `sha256("shard:<key>")`. Why a hash and a power of two: a photo's shard depends only on
/// its own name, so adding photos changes few shards (their caches stay valid) until the
/// count doubles, when each shard splits in two.
pub fn shard_of(key: &str, count: usize) -> usize {
    debug_assert!(count.is_power_of_two());
    let d = Sha256::digest(format!("shard:{key}").as_bytes());
    (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) as usize) & (count - 1)
}

/// The number of shards for `items` rows of at most about `shard_size` each: the
/// smallest power of two that gives <= `shard_size` rows a shard on average.
pub fn shard_count(items: usize, shard_size: usize) -> usize {
    items.div_ceil(shard_size.max(1)).max(1).next_power_of_two()
}

/// `I/N`: job `I` (0-based) of `N`, each making a share of the shards ([`JobPart::mine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobPart {
    pub index: usize,
    pub count: usize,
}

impl JobPart {
    pub const ALL: JobPart = JobPart { index: 0, count: 1 };

    /// Which of the shards (of `sizes[s]` photos or faces each) this job makes: the
    /// largest shard first to the job with least work so far (ties: the shard and the job
    /// of lower index). Hashing fills shards unevenly, and a job array takes as long as
    /// its longest job, so shards are dealt by size rather than `s % N`; every job deals
    /// the same from the same sizes.
    pub fn mine(&self, sizes: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&s| (std::cmp::Reverse(sizes[s]), s));
        let mut load = vec![0usize; self.count.max(1)];
        let mut mine = Vec::new();
        for s in order {
            let job = (0..load.len())
                .min_by_key(|&j| (load[j], j))
                .expect("at least one job");
            load[job] += sizes[s];
            if job == self.index {
                mine.push(s);
            }
        }
        mine.sort_unstable();
        mine
    }
}

impl std::str::FromStr for JobPart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected I/N, e.g. 0/4 (job I of N, from 0)"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}`: `{v}` is not a whole number"))
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= I < N"));
        }
        Ok(JobPart { index, count })
    }
}

impl std::fmt::Display for JobPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A tensor whose rows arrive one at a time.
struct Spool {
    name: String,
    dtype: Dtype,
    row_shape: Vec<usize>,
    row_bytes: usize,
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

/// A small tensor given whole at the end: name, dtype, shape, little-endian bytes.
pub struct WholeTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl WholeTensor {
    pub fn f32(name: &str, shape: Vec<usize>, v: &[f32]) -> Self {
        WholeTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    pub fn u8(name: &str, shape: Vec<usize>, v: Vec<u8>) -> Self {
        WholeTensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape,
            data: v,
        }
    }
}

/// What a finished shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub digest: String,
}

/// Writes a safetensors file whose big tensors arrive row by row: rows go to spool files
/// beside the target, so memory holds one row, not the shard. `finish` writes header,
/// small tensors and the spooled rows into a temp file, fsyncs it and renames it into
/// place; a killed job leaves spool files (removed on the next run), never a half shard.
pub struct RowWriter {
    path: PathBuf,
    spools: Vec<Spool>,
    rows: usize,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ArtifactError + '_ {
    move |error| ArtifactError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl RowWriter {
    /// `row_tensors`: (name, shape of one row) of the u8 tensors filled by [`RowWriter::push`].
    pub fn create(path: &Path, row_tensors: &[(&str, Vec<usize>)]) -> Result<RowWriter> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut spools = Vec::new();
        for (name, shape) in row_tensors {
            let sp = dir.join(format!(".{file}.{name}.{}.spool", std::process::id()));
            let f = std::fs::File::create(&sp).map_err(io_err(&sp))?;
            spools.push(Spool {
                name: name.to_string(),
                dtype: Dtype::U8,
                row_shape: shape.clone(),
                row_bytes: shape.iter().product(),
                path: sp,
                out: BufWriter::with_capacity(1 << 20, f),
            });
        }
        Ok(RowWriter {
            path: path.to_path_buf(),
            spools,
            rows: 0,
        })
    }

    /// Appends one row to each row tensor, in the order given to `create`.
    pub fn push(&mut self, row: &[&[u8]]) -> Result<()> {
        if row.len() != self.spools.len() {
            return Err(self.invalid(format!(
                "{} row parts for {} tensors",
                row.len(),
                self.spools.len()
            )));
        }
        for (s, r) in self.spools.iter_mut().zip(row) {
            if r.len() != s.row_bytes {
                return Err(ArtifactError::Invalid {
                    path: self.path.clone(),
                    problem: format!(
                        "a `{}` row of {} bytes, expected {}",
                        s.name,
                        r.len(),
                        s.row_bytes
                    ),
                });
            }
            s.out.write_all(r).map_err(io_err(&s.path))?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn invalid(&self, problem: String) -> ArtifactError {
        ArtifactError::Invalid {
            path: self.path.clone(),
            problem,
        }
    }

    /// Writes the file: `header` as the celeb-transfer metadata, `small` tensors first,
    /// then the spooled row tensors.
    pub fn finish(mut self, header: &Header, small: Vec<WholeTensor>) -> Result<Written> {
        let mut infos = Vec::new();
        let mut at = 0usize;
        for t in &small {
            let expect = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
            if expect != t.data.len() {
                return Err(self.invalid(format!(
                    "tensor `{}` has {} bytes for shape {:?}",
                    t.name,
                    t.data.len(),
                    t.shape
                )));
            }
            infos.push((
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                (at, at + t.data.len()),
            ));
            at += t.data.len();
        }
        for s in &mut self.spools {
            s.out.flush().map_err(io_err(&s.path))?;
            let len = self.rows * s.row_bytes;
            let mut shape = vec![self.rows];
            shape.extend(&s.row_shape);
            infos.push((s.name.clone(), s.dtype, shape, (at, at + len)));
            at += len;
        }
        let json = serde_json::to_string(header).map_err(|e| self.invalid(e.to_string()))?;
        let meta: HashMap<String, String> = [(META_KEY.to_string(), json)].into();
        let tensors = infos
            .into_iter()
            .map(|(name, dtype, shape, data_offsets)| {
                (
                    name,
                    TensorInfo {
                        dtype,
                        shape,
                        data_offsets,
                    },
                )
            })
            .collect();
        let metadata =
            Metadata::new(Some(meta), tensors).map_err(|e| self.invalid(e.to_string()))?;
        let mut head = serde_json::to_vec(&metadata).map_err(|e| self.invalid(e.to_string()))?;
        // safetensors aligns the data to 8 bytes by padding the header with spaces.
        head.resize(head.len().next_multiple_of(8), b' ');

        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = (|| -> std::io::Result<Written> {
            let f = std::fs::File::create(&tmp)?;
            let mut out = HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, f),
                hash: Sha256::new(),
                bytes: 0,
            };
            out.write_all(&(head.len() as u64).to_le_bytes())?;
            out.write_all(&head)?;
            for t in &small {
                out.write_all(&t.data)?;
            }
            let mut buf = vec![0u8; 1 << 20];
            for s in &self.spools {
                let mut r = std::fs::File::open(&s.path)?;
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])?;
                }
            }
            let (f, hash, bytes) = (out.inner.into_inner()?, out.hash, out.bytes);
            f.sync_all()?;
            Ok(Written {
                bytes,
                digest: format!("sha256:{}", hex::encode(hash.finalize())),
            })
        })();
        let written = written.and_then(|w| std::fs::rename(&tmp, &self.path).map(|_| w));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io_err(&self.path))
    }
}

impl Drop for RowWriter {
    fn drop(&mut self) {
        for s in &self.spools {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An opened shard: its header, tensor layout and open file, checked against the index.
pub(crate) struct OpenShard {
    pub path: PathBuf,
    pub file: std::sync::Arc<std::fs::File>,
    pub layout: Metadata,
    /// File offset of the data section.
    pub data_start: u64,
}

impl OpenShard {
    /// Opens shard `r` of the index at `index`: present, of the size the index says, a
    /// safetensors file, a celeb-transfer artifact of `schema`. Each failure names the shard.
    pub fn open(index: &Path, r: &ShardRef, schema: &str) -> Result<OpenShard> {
        let path = index.parent().unwrap_or(Path::new(".")).join(&r.file);
        let bad = |problem: String| ArtifactError::BadShard {
            index: index.to_path_buf(),
            shard: path.clone(),
            problem,
        };
        let file = std::fs::File::open(&path).map_err(|e| {
            bad(if e.kind() == std::io::ErrorKind::NotFound {
                "missing (re-run the stage to make it)".into()
            } else {
                e.to_string()
            })
        })?;
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        if len != r.bytes {
            return Err(bad(format!(
                "{len} bytes, the index says {} (truncated or replaced)",
                r.bytes
            )));
        }
        let header = read_header(&path).map_err(|e| bad(e.to_string()))?;

        if header.schema != schema {
            return Err(bad(format!(
                "a `{}` artifact, expected `{schema}`",
                header.schema
            )));
        }
        let (layout, data_start) = read_layout(&file).map_err(|e| bad(e.to_string()))?;
        Ok(OpenShard {
            path,
            file: std::sync::Arc::new(file),
            layout,
            data_start,
        })
    }

    /// Tensor `name`'s shape and file byte range, checked to be u8 with `rows` rows.
    pub fn u8_rows(
        &self,
        index: &Path,
        name: &str,
        rows: usize,
    ) -> Result<(Vec<usize>, u64, usize)> {
        let bad = |problem: String| ArtifactError::BadShard {
            index: index.to_path_buf(),
            shard: self.path.clone(),
            problem,
        };
        let t = self
            .layout
            .info(name)
            .ok_or_else(|| bad(format!("no `{name}` tensor")))?;
        if t.dtype != Dtype::U8 || t.shape.first() != Some(&rows) {
            return Err(bad(format!(
                "`{name}` is {:?} {:?}, expected U8 with {rows} rows",
                t.dtype, t.shape
            )));
        }
        let (s, e) = t.data_offsets;
        Ok((t.shape.clone(), self.data_start + s as u64, e - s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provenance;

    #[test]
    fn row_writer_makes_a_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let mut w = RowWriter::create(&path, &[("img", vec![2, 3]), ("c", vec![4])]).unwrap();
        for k in 0..3u8 {
            w.push(&[&[k; 6], &[10 + k; 4]]).unwrap();
        }
        assert!(w.push(&[&[0; 5], &[0; 4]]).is_err());
        let header = Header {
            schema: "test".into(),
            schema_version: 1,
            provenance: Provenance::new("t", "0", serde_json::json!({})),
            extra: serde_json::json!({}),
        };
        let written = w
            .finish(
                &header,
                vec![WholeTensor::f32("small", vec![2], &[1.0, 2.0])],
            )
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.digest, crate::digest_bytes(&bytes));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("img").unwrap().shape(), &[3, 2, 3]);
        assert_eq!(st.tensor("img").unwrap().data()[6..12], [1; 6]);
        assert_eq!(st.tensor("c").unwrap().data()[8..], [12; 4]);
        assert_eq!(
            st.tensor("small").unwrap().data(),
            &[0, 0, 128, 63, 0, 0, 0, 64]
        );
        assert_eq!(read_header(&path).unwrap().schema, "test");
        // No spool or temp file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn shards_split_by_name_and_parts_parse() {
        assert_eq!(shard_count(1354, 4096), 1);
        assert_eq!(shard_count(22000, 4096), 8);
        assert_eq!(shard_count(0, 4096), 1);
        // Doubling the count splits a shard in two: s -> s or s + count.
        for k in ["a/1.jpg", "b/2.jpg", "m.0x/77.png"] {
            let (s4, s8) = (shard_of(k, 4), shard_of(k, 8));
            assert!(s8 == s4 || s8 == s4 + 4);
        }
        let p: JobPart = "1/4".parse().unwrap();
        assert_eq!(p, JobPart { index: 1, count: 4 });
        // Dealt by size: 8 uneven shards to 4 jobs, every shard to one job, loads even.
        let sizes = [26, 20, 24, 20, 27, 19, 24, 20];
        let parts: Vec<Vec<usize>> = (0..4)
            .map(|i| JobPart { index: i, count: 4 }.mine(&sizes))
            .collect();
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        let loads: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(|&s| sizes[s]).sum())
            .collect();
        assert_eq!(loads, [46, 46, 44, 44], "{parts:?}"); // s % 4: 53, 39, 48, 40
        assert_eq!(JobPart::ALL.mine(&sizes), (0..8).collect::<Vec<_>>());
        // More jobs than shards: the extra jobs make nothing.
        assert!(JobPart {
            index: 9,
            count: 10
        }
        .mine(&sizes)
        .is_empty());
        assert!("4/4".parse::<JobPart>().is_err());
        assert!("x".parse::<JobPart>().is_err());
        assert_eq!(
            shard_dir(Path::new("/o/faces.safetensors")),
            PathBuf::from("/o/faces.shards")
        );
        assert_eq!(
            shard_ref_path(Path::new("/o/faces.safetensors"), 3),
            "faces.shards/00003.safetensors"
        );
    }
}
