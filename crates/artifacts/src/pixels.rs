//! `Pixels`: the u8 image rows of a faces artifact (the crops, dlib's chips), held in memory
//! or left in their shard files and read a row at a time.
//!
//! Why: pixels are ~135 KB a face, so a stage that holds them all grows with the data set
//! (135 GB for a million faces). Stored rows are read with positioned reads (`pread`) when
//! a stage asks for them; the kernel's page cache does the caching, so a stage's resident
//! memory is the rows it works on, whatever the number of faces. (A memory map would do the
//! same for speed, but every page it touches counts as the process's memory until the map
//! is dropped, and a truncated file is a SIGBUS instead of an error.)

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A byte range of an open shard file.
#[derive(Debug, Clone)]
struct Stored {
    file: Arc<File>,
    path: Arc<PathBuf>,
    offset: u64,
    len: usize,
}

#[derive(Debug, Clone)]
enum Part {
    Owned(Vec<u8>),
    Stored(Stored),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Owned(v) => v.len(),
            Part::Stored(s) => s.len,
        }
    }
}

/// A byte array made of parts (one per shard). A row never straddles two parts.
#[derive(Debug, Clone, Default)]
pub struct Pixels {
    parts: Vec<Part>,
    /// Byte offset of each part's start, for the part lookup.
    starts: Vec<usize>,
    len: usize,
}

impl From<Vec<u8>> for Pixels {
    fn from(v: Vec<u8>) -> Self {
        let mut p = Pixels::default();
        p.push(Part::Owned(v));
        p
    }
}

impl FromIterator<u8> for Pixels {
    fn from_iter<I: IntoIterator<Item = u8>>(it: I) -> Self {
        Pixels::from(it.into_iter().collect::<Vec<u8>>())
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        let mut at = 0;
        while at < self.len {
            let n = (1 << 20)
                .min(self.contiguous_from(at))
                .min(other.contiguous_from(at));
            if self.slice(at, n) != other.slice(at, n) {
                return false;
            }
            at += n;
        }
        true
    }
}

impl Pixels {
    fn push(&mut self, part: Part) {
        self.starts.push(self.len);
        self.len += part.len();
        self.parts.push(part);
    }

    /// Appends `len` bytes at `offset` of `file` (opened and checked by the caller).
    pub(crate) fn push_stored(
        &mut self,
        file: Arc<File>,
        path: Arc<PathBuf>,
        offset: u64,
        len: usize,
    ) {
        self.push(Part::Stored(Stored {
            file,
            path,
            offset,
            len,
        }));
    }

    /// Bytes from `at` to the end of the part that holds it.
    fn contiguous_from(&self, at: usize) -> usize {
        let k = self.starts.partition_point(|&s| s <= at) - 1;
        self.starts[k] + self.parts[k].len() - at
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the bytes are in memory (no file reads).
    pub fn in_memory(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Owned(_)))
    }

    /// `len` bytes from byte `start`, which must lie inside one part (a row does): borrowed
    /// when in memory, read from the shard file otherwise.
    ///
    /// # Panics
    /// When the range is out of bounds, or a shard file that was checked when the artifact
    /// was opened can no longer be read (deleted or truncated under a running stage).
    pub fn slice(&self, start: usize, len: usize) -> Cow<'_, [u8]> {
        self.try_slice(start, len).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Pixels::slice`] with the read error returned.
    pub fn try_slice(&self, start: usize, len: usize) -> Result<Cow<'_, [u8]>, String> {
        if start + len > self.len {
            return Err(format!(
                "pixel range {start}+{len} past the end ({})",
                self.len
            ));
        }
        let k = self.starts.partition_point(|&s| s <= start) - 1;
        let local = start - self.starts[k];
        match &self.parts[k] {
            Part::Owned(v) => v
                .get(local..local + len)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("pixel range {start}+{len} straddles two shards")),
            Part::Stored(s) => {
                if local + len > s.len {
                    return Err(format!("pixel range {start}+{len} straddles two shards"));
                }
                let mut buf = vec![0u8; len];
                s.file
                    .read_exact_at(&mut buf, s.offset + local as u64)
                    .map_err(|e| {
                        format!(
                            "{}: cannot read pixels it held when opened ({e}); was the shard changed during the run?",
                            s.path.display()
                        )
                    })?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// All bytes in one vector (reads every stored part: for small artifacts and writers).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for (k, p) in self.parts.iter().enumerate() {
            out.extend_from_slice(&self.slice(self.starts[k], p.len()));
        }
        out
    }

    /// Bytes `[start, start + len)` as their own `Pixels`, sharing the open files (a
    /// shard's rows of a whole set, without reading them). The range must start and end
    /// on part boundaries or inside one part.
    pub fn sub(&self, start: usize, len: usize) -> Pixels {
        let mut out = Pixels::default();
        let end = start + len;
        for (k, p) in self.parts.iter().enumerate() {
            let (ps, pe) = (self.starts[k], self.starts[k] + p.len());
            let (s, e) = (start.max(ps), end.min(pe));
            if s >= e {
                continue;
            }
            match p {
                Part::Owned(v) => out.push(Part::Owned(v[s - ps..e - ps].to_vec())),
                Part::Stored(st) => out.push(Part::Stored(Stored {
                    offset: st.offset + (s - ps) as u64,
                    len: e - s,
                    ..st.clone()
                })),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_parts_read_like_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, [9u8, 9, 1, 2, 3, 4]).unwrap();
        std::fs::write(&b, [5u8, 6, 7, 8]).unwrap();
        let mut p = Pixels::default();
        for (path, off, len) in [(&a, 2u64, 4usize), (&b, 0, 4)] {
            let f = Arc::new(File::open(path).unwrap());
            p.push_stored(f, Arc::new(path.clone()), off, len);
        }
        assert_eq!(p.to_vec(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p, Pixels::from(vec![1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(&*p.slice(4, 2), &[5, 6]);
        assert!(p.try_slice(3, 2).unwrap_err().contains("straddles"));
        assert_eq!(p.sub(2, 4).to_vec(), vec![3, 4, 5, 6]);
        assert!(!p.in_memory());
        // A shard truncated under a running stage is an error naming it, not garbage.
        std::fs::write(&b, [5u8]).unwrap();
        assert!(p.try_slice(4, 4).unwrap_err().contains("/b"));
    }
}
