//! Content-addressed bottleneck cache, like `retrain.py`'s bottleneck folder: one small
//! bincode file per (teacher+preprocessing+layer, image pixels), so adding photos later
//! computes only the new ones.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(bincode::Encode, bincode::Decode)]
struct Entry {
    key: String,
    values: Vec<f32>,
}

/// A cache folder for one teacher setting.
pub struct BottleneckCache {
    dir: PathBuf,
}

/// Digest of one image's pixels and size.
pub fn image_key(height: usize, width: usize, pixels: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((height as u64).to_le_bytes());
    h.update((width as u64).to_le_bytes());
    h.update(pixels);
    hex::encode(h.finalize())
}

impl BottleneckCache {
    /// `root/<digest of setting>/`; `setting` names the teacher, layer, preprocessing, dtype.
    pub fn open(root: &Path, setting: &str) -> std::io::Result<BottleneckCache> {
        let tag = hex::encode(Sha256::digest(setting.as_bytes()));
        let dir = root.join(&tag[..16]);
        std::fs::create_dir_all(&dir)?;
        // A human-readable note of what the folder holds.
        let note = dir.join("SETTING.txt");
        if !note.exists() {
            std::fs::write(note, setting)?;
        }
        Ok(BottleneckCache { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.bin"))
    }

    /// The cached vector, if present and intact (a damaged entry counts as absent).
    pub fn get(&self, key: &str, dim: Option<usize>) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let (e, _): (Entry, usize) =
            bincode::decode_from_slice(&bytes, bincode::config::standard()).ok()?;
        let ok = e.key == key
            && dim.is_none_or(|d| e.values.len() == d)
            && e.values.iter().all(|v| v.is_finite());
        ok.then_some(e.values)
    }

    pub fn put(&self, key: &str, values: &[f32]) -> std::io::Result<()> {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        let bytes = bincode::encode_to_vec(
            Entry {
                key: key.to_string(),
                values: values.to_vec(),
            },
            bincode::config::standard(),
        )
        .map_err(std::io::Error::other)?;
        artifacts::write_atomic(&path, &bytes).map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let c = BottleneckCache::open(dir.path(), "teacher x layer pool").unwrap();
        let k = image_key(2, 2, &[1; 12]);
        assert_ne!(k, image_key(2, 2, &[2; 12]));
        assert!(c.get(&k, Some(3)).is_none());
        c.put(&k, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(c.get(&k, Some(3)).unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(c.get(&k, Some(4)).is_none(), "dimension mismatch is a miss");
        std::fs::write(c.path(&k), b"garbage").unwrap();
        assert!(c.get(&k, None).is_none(), "damaged entry is a miss");
        let other = BottleneckCache::open(dir.path(), "another teacher").unwrap();
        assert_ne!(other.dir, c.dir);
    }
}
