//! The preprocessing run: walk the input folder, make the shards (photos aligned in
//! parallel, see `shards`), and merge them into the index with `rejects.json`, a montage
//! and the alignment-quality report.

use crate::config::{Mode, PreprocessConfig};
use crate::detect::DetectorKind;
use crate::error::PreprocessError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A skipped file and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    pub path: String,
    pub reason: String,
}

/// A photo to process.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub class: String,
    pub file: String,
    pub path: PathBuf,
}

/// Lists `<root>/<class>/<file>`; unreadable entries become rejects.
pub(crate) fn list_inputs(root: &Path) -> Result<(Vec<Candidate>, Vec<Reject>), PreprocessError> {
    if !root.is_dir() {
        return Err(PreprocessError::MissingInput(root.to_path_buf()));
    }
    let mut rejects = Vec::new();
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| PreprocessError::Io(root.to_path_buf(), e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let shown = path.display().to_string();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Some(class) = name.to_str().map(str::to_string) else {
            rejects.push(Reject {
                path: shown,
                reason: "folder name is not valid UTF-8".into(),
            });
            continue;
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                rejects.push(Reject {
                    path: shown,
                    reason: "not inside a class folder".into(),
                });
                continue;
            }
            Err(err) => {
                rejects.push(Reject {
                    path: shown,
                    reason: format!("unreadable: {err}"),
                });
                continue;
            }
        }
        let files = match std::fs::read_dir(&path) {
            Ok(it) => it,
            Err(err) => {
                rejects.push(Reject {
                    path: shown,
                    reason: format!("unreadable folder: {err}"),
                });
                continue;
            }
        };
        let mut files: Vec<_> = files.filter_map(|f| f.ok()).collect();
        files.sort_by_key(|f| f.file_name());
        for f in files {
            let fpath = f.path();
            let fname = f.file_name();
            if fname.to_string_lossy().starts_with('.') {
                continue;
            }
            let shown = fpath.display().to_string();
            // A name that is not UTF-8 is kept; artifacts record it lossily (U+FFFD).
            let file = fname.to_string_lossy().into_owned();
            match std::fs::metadata(&fpath) {
                Ok(m) if m.is_file() => out.push(Candidate {
                    class: class.clone(),
                    file,
                    path: fpath,
                }),
                Ok(m) if m.is_dir() => rejects.push(Reject {
                    path: shown,
                    reason: "nested folder (only <class>/<image> is read)".into(),
                }),
                Ok(_) => rejects.push(Reject {
                    path: shown,
                    reason: "not a regular file".into(),
                }),
                Err(err) => rejects.push(Reject {
                    path: shown,
                    reason: format!("unreadable: {err}"),
                }),
            }
        }
    }
    Ok((out, rejects))
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub candidates: usize,
    pub faces: usize,
    pub rejected: usize,
    pub reasons: BTreeMap<String, usize>,
    pub per_class: BTreeMap<String, usize>,
    pub multiple_faces: usize,
    /// Faces by the detector whose box they came from (`haar`, `cnn`).
    pub found_by: BTreeMap<String, usize>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub quality: Option<crate::quality::Quality>,
    /// The same spreads for each detector's faces.
    pub quality_by_detector: BTreeMap<String, crate::quality::Quality>,
    pub rejects_file: PathBuf,
    pub montage_file: PathBuf,
    /// Shard files the faces are in (`<output stem>.shards/`).
    pub shards: usize,
}

impl RunSummary {
    /// The summary as the command line prints it, one line per figure.
    pub fn report(&self, output: &Path, detector: DetectorKind) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "preprocess: {} photos -> {} faces ({:.1}%), {} rejected, {:.1}s ({:.1} images/s) -> {}",
            self.candidates,
            self.faces,
            100.0 * self.faces as f64 / self.candidates.max(1) as f64,
            self.rejected,
            self.seconds,
            self.images_per_second,
            output.display()
        );
        for (reason, n) in &self.reasons {
            let _ = writeln!(t, "  rejected {n:>5}: {reason}");
        }
        let found: Vec<String> = self
            .found_by
            .iter()
            .map(|(k, n)| format!("{n} by {k}"))
            .collect();
        let _ = writeln!(t, "  detector {detector}: faces {}", found.join(", "));
        if let Some(q) = &self.quality {
            let _ = writeln!(
                t,
                "  alignment spread (px @150): eyes {:.2}, nose tip {:.2}, mouth {:.2}",
                q.eye_centres, q.nose_tip, q.mouth
            );
        }
        for (k, q) in &self.quality_by_detector {
            let _ = writeln!(
                t,
                "    faces by {k:<5} ({:>4}): eyes {:.2}, nose tip {:.2}, mouth {:.2}",
                q.images, q.eye_centres, q.nose_tip, q.mouth
            );
        }
        let _ = writeln!(
            t,
            "  rejects: {}  montage: {}",
            self.rejects_file.display(),
            self.montage_file.display()
        );
        t
    }
}

/// Side files sit next to the artifact: `rejects.json` for `faces.safetensors`, else
/// `<stem>.rejects.json`.
pub fn side_file(output: &Path, name: &str) -> PathBuf {
    let dir = output.parent().unwrap_or(Path::new("."));
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == "faces" {
        dir.join(name)
    } else {
        dir.join(format!("{stem}.{name}"))
    }
}

/// Digest of an input folder's listing (relative paths, sizes, modification times):
/// cheap, and changes whenever a photo is added, removed or replaced.
pub fn tree_digest(root: &Path) -> String {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 2_000_000 {
                break;
            }
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if m.is_dir() && p.parent() == Some(root) {
                stack.push(p);
            } else {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                entries.push(format!("{rel}\t{}\t{mtime}", m.len()));
            }
        }
    }
    entries.sort();
    artifacts::digest_bytes(entries.join("\n").as_bytes())
}

/// What a run's artifact records as its inputs (used for up-to-date checks).
pub fn provenance_inputs(
    input: &Path,
    cfg: &PreprocessConfig,
) -> Result<BTreeMap<String, String>, PreprocessError> {
    let mut m = BTreeMap::new();
    m.insert("input".to_string(), tree_digest(input));
    if let Some(p) = &cfg.split_file {
        m.insert("split_file".to_string(), artifacts::digest_file(p)?);
    }
    if cfg.mode != Mode::AsIs {
        let len = std::fs::metadata(&cfg.landmarks)
            .map(|m| m.len())
            .unwrap_or(0);
        m.insert(
            "landmarks".to_string(),
            format!("{}:{len}", cfg.landmarks.display()),
        );
        if let Some(p) = &cfg.detector.cnn_model {
            m.insert("cnn_model".to_string(), artifacts::digest_file(p)?);
        }
    }
    Ok(m)
}

/// Runs preprocessing from `input` to `output` in one process: every shard not already
/// up to date, then the merge (the index, rejects, montage and quality report).
pub fn run(
    input: &Path,
    output: &Path,
    cfg: &PreprocessConfig,
) -> Result<RunSummary, PreprocessError> {
    let start = std::time::Instant::now();
    let cfg = &cfg.resolved()?;
    crate::shards::make_part(input, output, cfg, artifacts::JobPart::ALL)?;
    crate::shards::merge(input, output, cfg, start)
}

/// Rejects counted by their reason's kind (the text before the first `:`).
pub(crate) fn reason_counts(rejects: &[Reject]) -> BTreeMap<String, usize> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in rejects {
        let key = r.reason.split(':').next().unwrap_or(&r.reason).to_string();
        *reasons.entry(key).or_default() += 1;
    }
    reasons
}
