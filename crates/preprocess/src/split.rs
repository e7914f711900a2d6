//! Train/val/test assignment: stable per-image hashing like TensorFlow's `retrain.py`, or a
//! published split from a CSV file.

use artifacts::Split;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Percent of images per split; train takes the rest.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitFractions {
    pub val: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            val: 10.0,
            test: 20.0,
        }
    }
}

/// A number in [0, 100) from `sha256("<class>/<file>")`: the image's fixed place in the split.
pub fn hash_percent(class: &str, file: &str) -> f64 {
    let d = Sha256::digest(format!("{class}/{file}").as_bytes());
    let v = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    v as f64 / (u64::MAX as f64 + 1.0) * 100.0
}

/// Assigns splits to `(class, file)` pairs. Each image's split depends only on its own
/// name, so adding photos never moves existing ones, with one documented exception: a
/// class with at least 5 images whose hashes put none in test gets its lowest-hash image
/// moved to test (it returns to its hashed split once a naturally-test photo arrives).
pub fn assign(items: &[(String, String)], f: SplitFractions) -> Vec<Split> {
    let pct: Vec<f64> = items.iter().map(|(c, n)| hash_percent(c, n)).collect();
    let mut out: Vec<Split> = pct
        .iter()
        .map(|&p| {
            if p < f.test {
                Split::Test
            } else if p < f.test + f.val {
                Split::Val
            } else {
                Split::Train
            }
        })
        .collect();
    if f.test > 0.0 {
        let mut by_class: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (c, _)) in items.iter().enumerate() {
            by_class.entry(c.as_str()).or_default().push(i);
        }
        for idx in by_class.values() {
            if idx.len() >= 5 && !idx.iter().any(|&i| out[i] == Split::Test) {
                let lowest = *idx
                    .iter()
                    .min_by(|&&a, &&b| pct[a].total_cmp(&pct[b]))
                    .expect("non-empty");
                out[lowest] = Split::Test;
            }
        }
    }
    out
}

/// Why a `--split-file` cannot be used; each names the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum SplitFileError {
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: expected `entity,image,split`")]
    Columns { path: PathBuf, line: usize },
    /// The third column is not a split name (the text says which are).
    #[error("{path}:{line}: {problem}")]
    Split {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{0}: no rows")]
    Empty(PathBuf),
}

/// Reads `entity,image,split` rows (header optional), e.g. the study's `split_study.csv`.
pub fn read_split_file(path: &Path) -> Result<HashMap<(String, String), Split>, SplitFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| SplitFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut map = HashMap::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (no == 0 && line.to_ascii_lowercase().starts_with("entity,")) {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let [class, image, split] = cols.as_slice() else {
            return Err(SplitFileError::Columns {
                path: path.to_path_buf(),
                line: no + 1,
            });
        };
        let split: Split = split.parse().map_err(|problem| SplitFileError::Split {
            path: path.to_path_buf(),
            line: no + 1,
            problem,
        })?;
        map.insert((class.to_string(), image.to_string()), split);
    }
    if map.is_empty() {
        return Err(SplitFileError::Empty(path.to_path_buf()));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(classes: usize, per: usize, tag: &str) -> Vec<(String, String)> {
        (0..classes)
            .flat_map(|c| (0..per).map(move |i| (format!("class{c}"), format!("{tag}{i}.jpg"))))
            .collect()
    }

    #[test]
    fn stable_when_files_are_added() {
        let f = SplitFractions::default();
        let old = items(6, 40, "a");
        let before = assign(&old, f);
        let mut grown = old.clone();
        grown.extend(items(6, 25, "b"));
        let after = assign(&grown, f);
        assert_eq!(
            &after[..old.len()],
            &before[..],
            "existing images keep their split"
        );
        // Roughly the requested proportions.
        let test = after.iter().filter(|s| **s == Split::Test).count() as f64 / after.len() as f64;
        assert!((0.1..0.3).contains(&test), "{test}");
    }

    #[test]
    fn every_class_with_five_images_has_test() {
        for seed in 0..50 {
            let its = items(1, 5, &format!("s{seed}_"));
            let s = assign(&its, SplitFractions::default());
            assert!(s.contains(&Split::Test), "seed {seed}");
        }
    }

    #[test]
    fn split_file_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "entity,image,split\nm.1,a.jpg,train\nm.1,b.jpg,test\n").unwrap();
        let m = read_split_file(&p).unwrap();
        assert_eq!(m[&("m.1".to_string(), "b.jpg".to_string())], Split::Test);
        std::fs::write(&p, "m.1,a.jpg,holdout\n").unwrap();
        assert!(read_split_file(&p)
            .unwrap_err()
            .to_string()
            .contains("holdout"));
    }
}
