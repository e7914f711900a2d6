//! TensorFlow `retrain.py`'s bottleneck cache format: `<class>/<image>.txt`, one line of
//! comma-separated floats. Lets the study's TensorFlow bottlenecks be used directly.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: value {index} (`{value}`) is not a number")]
    Parse {
        path: PathBuf,
        index: usize,
        value: String,
    },
    #[error("{path}: {found} values, expected {expected} like the other files")]
    Dim {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("{count} face(s) have no bottleneck file under {dir}, e.g. {examples}")]
    Missing {
        dir: PathBuf,
        count: usize,
        examples: String,
    },
}

/// Parses one `retrain.py` bottleneck file.
pub fn parse(path: &Path, text: &str) -> Result<Vec<f32>, RetrainError> {
    text.trim()
        .split(',')
        .enumerate()
        .map(|(index, v)| {
            v.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| RetrainError::Parse {
                    path: path.to_path_buf(),
                    index,
                    value: v.chars().take(20).collect(),
                })
        })
        .collect()
}

/// Formats a vector the way `retrain.py` writes it.
pub fn format(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The file for a face whose source is `<class>/<image>`.
pub fn file_for(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{source}.txt"))
}

/// Reads the bottleneck of every source, in order. All must exist and share one dimension.
pub fn import(dir: &Path, sources: &[String]) -> Result<(usize, Vec<f32>), RetrainError> {
    let missing: Vec<&String> = sources
        .iter()
        .filter(|s| !file_for(dir, s).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(RetrainError::Missing {
            dir: dir.to_path_buf(),
            count: missing.len(),
            examples: missing
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut dim = 0;
    let mut out = Vec::new();
    for s in sources {
        let path = file_for(dir, s);
        let text = std::fs::read_to_string(&path).map_err(|source| RetrainError::Io {
            path: path.clone(),
            error: source,
        })?;
        let v = parse(&path, &text)?;
        if dim == 0 {
            dim = v.len();
        } else if v.len() != dim {
            return Err(RetrainError::Dim {
                path,
                found: v.len(),
                expected: dim,
            });
        }
        out.extend(v);
    }
    Ok((dim, out))
}

/// Writes one file per source; each atomically.
pub fn export(
    dir: &Path,
    sources: &[String],
    dim: usize,
    features: &[f32],
) -> Result<(), RetrainError> {
    for (i, s) in sources.iter().enumerate() {
        let path = file_for(dir, s);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| RetrainError::Io {
                path: parent.to_path_buf(),
                error: source,
            })?;
        }
        artifacts::write_atomic(&path, format(&features[i * dim..(i + 1) * dim]).as_bytes())
            .map_err(|e| RetrainError::Io {
                path: path.clone(),
                error: std::io::Error::other(e.to_string()),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sources = vec!["a/x.jpg".to_string(), "b/y.jpg".to_string()];
        let feats = vec![0.1f32, 2.5e-7, 3.0, 0.0, 1.0, 0.333_333_34];
        export(dir.path(), &sources, 3, &feats).unwrap();
        assert!(dir.path().join("a/x.jpg.txt").is_file());
        let (d, back) = import(dir.path(), &sources).unwrap();
        assert_eq!(d, 3);
        assert_eq!(back, feats, "Display of f32 round-trips exactly");
        let err = import(dir.path(), &["c/z.jpg".to_string()]).unwrap_err();
        assert!(err.to_string().contains("c/z.jpg"), "{err}");
        std::fs::write(dir.path().join("b/y.jpg.txt"), "1,2,oops").unwrap();
        let err = import(dir.path(), &sources).unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        std::fs::write(dir.path().join("b/y.jpg.txt"), "1,2").unwrap();
        assert!(matches!(
            import(dir.path(), &sources),
            Err(RetrainError::Dim { .. })
        ));
    }
}
