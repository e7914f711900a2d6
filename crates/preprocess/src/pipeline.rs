//! The preprocessing run: walk the input folder, process photos in parallel, assign
//! splits, write the artifact, `rejects.json`, a montage and the alignment-quality report.

use crate::aligner::{AlignedFace, Aligner};
use crate::config::{Mode, PreprocessConfig};
use crate::detect::DetectorKind;
use crate::dlib::ShapePredictor;
use crate::error::{FaceError, PreprocessError};
use crate::quality::Quality;
use crate::split::{assign, read_split_file};
use artifacts::CHIP_SIZE;
use artifacts::{FaceGeometry, Faces, Provenance, Split};
use indicatif::ParallelProgressIterator;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A skipped file and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    pub path: String,
    pub reason: String,
}

/// A photo to process.
#[derive(Debug, Clone)]
struct Candidate {
    class: String,
    file: String,
    path: PathBuf,
}

/// Lists `<root>/<class>/<file>`; unreadable entries become rejects.
fn list_inputs(root: &Path) -> Result<(Vec<Candidate>, Vec<Reject>), PreprocessError> {
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

/// Runs preprocessing from `input` to `output`.
pub fn run(
    input: &Path,
    output: &Path,
    cfg: &PreprocessConfig,
) -> Result<RunSummary, PreprocessError> {
    let start = std::time::Instant::now();
    let cfg = &cfg.resolved()?;
    let (candidates, mut rejects) = list_inputs(input)?;
    if candidates.is_empty() {
        return Err(PreprocessError::NoImages(input.to_path_buf()));
    }
    let split_file = match &cfg.split_file {
        Some(p) => Some(read_split_file(p)?),
        None => None,
    };
    let aligner = Aligner::new(cfg)?;
    let results = align_all(&aligner, &candidates);
    let kept = keep(results, &candidates, split_file.as_ref(), &mut rejects);
    if kept.is_empty() {
        write_rejects(output, &rejects)?;
        return Err(PreprocessError::NothingKept(rejects.len()));
    }
    let splits = splits_of(&kept, &candidates, split_file.as_ref(), cfg);
    let mut faces = assemble(&kept, &candidates, splits, cfg);
    faces.provenance.inputs = provenance_inputs(input, cfg)?;
    faces.write(output)?;
    let rejects_file = write_rejects(output, &rejects)?;
    let montage_file = write_montage(output, &faces);
    let by_detector = faces_by_detector(&kept);
    let (quality, quality_by_detector) = match aligner.predictor() {
        Some(p) => write_quality(output, p, &aligner, &faces, &by_detector)?,
        None => (None, BTreeMap::new()),
    };
    let seconds = start.elapsed().as_secs_f64();
    Ok(RunSummary {
        candidates: candidates.len(),
        faces: kept.len(),
        rejected: rejects.len(),
        reasons: reason_counts(&rejects),
        per_class: per_class(&kept, &candidates),
        multiple_faces: kept.iter().filter(|(_, p)| p.faces_found > 1).count(),
        found_by: by_detector
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect(),
        seconds,
        images_per_second: candidates.len() as f64 / seconds,
        quality,
        quality_by_detector,
        rejects_file,
        montage_file,
    })
}

/// Every candidate through the aligner, in parallel, with a progress bar.
fn align_all(aligner: &Aligner, candidates: &[Candidate]) -> Vec<Result<AlignedFace, FaceError>> {
    let bar = indicatif::ProgressBar::new(candidates.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "preprocess {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .expect("valid template"),
    );
    let results = candidates
        .par_iter()
        .progress_with(bar.clone())
        .map(|c| aligner.process_file(&c.path))
        .collect();
    bar.finish_and_clear();
    results
}

/// The faces kept (with their candidate's index); the others become rejects. A
/// `--split-file` run keeps only the photos the file lists.
fn keep(
    results: Vec<Result<AlignedFace, FaceError>>,
    candidates: &[Candidate],
    split_file: Option<&SplitFile>,
    rejects: &mut Vec<Reject>,
) -> Vec<(usize, AlignedFace)> {
    let mut kept = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let c = &candidates[i];
        let r = r.and_then(|p| match split_file {
            Some(m) if !m.contains_key(&(c.class.clone(), c.file.clone())) => {
                Err(FaceError::NotInSplitFile)
            }
            _ => Ok(p),
        });
        match r {
            Ok(p) => kept.push((i, p)),
            Err(reason) => rejects.push(Reject {
                path: c.path.display().to_string(),
                reason: reason.to_string(),
            }),
        }
    }
    kept
}

/// The split-file's photo -> split table.
type SplitFile = HashMap<(String, String), Split>;

/// Each kept face's split: from the split file, or by hashing `<class>/<file>` (salted by
/// the seed).
fn splits_of(
    kept: &[(usize, AlignedFace)],
    candidates: &[Candidate],
    split_file: Option<&SplitFile>,
    cfg: &PreprocessConfig,
) -> Vec<Split> {
    if let Some(m) = split_file {
        return kept
            .iter()
            .map(|(i, _)| m[&(candidates[*i].class.clone(), candidates[*i].file.clone())])
            .collect();
    }
    let keys: Vec<(String, String)> = kept
        .iter()
        .map(|(i, _)| {
            let c = &candidates[*i];
            let file = if cfg.seed == 0 {
                c.file.clone()
            } else {
                format!("{}#{}", c.file, cfg.seed)
            };
            (c.class.clone(), file)
        })
        .collect();
    assign(&keys, cfg.fractions)
}

/// The artifact of the kept faces: classes are the folders that kept at least one face.
fn assemble(
    kept: &[(usize, AlignedFace)],
    candidates: &[Candidate],
    splits: Vec<Split>,
    cfg: &PreprocessConfig,
) -> Faces {
    let mut class_names: Vec<String> = kept
        .iter()
        .map(|(i, _)| candidates[*i].class.clone())
        .collect();
    class_names.sort();
    class_names.dedup();
    let class_idx: HashMap<&str, u32> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let (n, size) = (kept.len(), cfg.size);
    let mut images = Vec::with_capacity(n * size * size * 3);
    let mut labels = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut geometry = FaceGeometry {
        boxes: Vec::new(),
        landmarks: Vec::new(),
        transforms: Vec::new(),
        chips: Some(Vec::with_capacity(n * CHIP_SIZE * CHIP_SIZE * 3)),
    };
    for (i, p) in kept {
        let c = &candidates[*i];
        images.extend_from_slice(&p.pixels);
        labels.push(class_idx[c.class.as_str()]);
        sources.push(format!("{}/{}", c.class, c.file));
        geometry.boxes.push(p.rect);
        geometry.landmarks.extend(p.landmarks.iter().flatten());
        geometry.transforms.extend(p.transform);
        if let Some(chips) = &mut geometry.chips {
            chips.extend_from_slice(&p.chip);
        }
    }
    Faces {
        height: size,
        width: size,
        images,
        labels,
        splits,
        class_names,
        sources,
        geometry: Some(geometry),
        provenance: Provenance::new(
            env!("CARGO_PKG_NAME"),
            artifacts::build_version(),
            serde_json::to_value(cfg).expect("plain config"),
        ),
    }
}

/// The montage beside the artifact; a failure to draw it is a warning, not the run's end.
fn write_montage(output: &Path, faces: &Faces) -> PathBuf {
    let montage_file = side_file(output, "montage.png");
    let views: Vec<&[u8]> = (0..faces.len()).map(|i| faces.image(i)).collect();
    if let Err(e) = crate::montage::write_montage(
        &montage_file,
        faces.width,
        &views,
        &faces.labels,
        faces.class_names.len(),
        12,
        64,
    ) {
        tracing::warn!("montage not written: {e}");
    }
    montage_file
}

/// The kept faces' indices by the detector whose box they came from.
fn faces_by_detector(kept: &[(usize, AlignedFace)]) -> BTreeMap<String, Vec<usize>> {
    let mut by_detector: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (face, (_, p)) in kept.iter().enumerate() {
        by_detector
            .entry(p.found_by.to_string())
            .or_default()
            .push(face);
    }
    by_detector
}

/// The alignment-quality report (overall, and per detector when there are several),
/// written beside the artifact.
fn write_quality(
    output: &Path,
    predictor: &ShapePredictor,
    aligner: &Aligner,
    faces: &Faces,
    by_detector: &BTreeMap<String, Vec<usize>>,
) -> Result<(Option<Quality>, BTreeMap<String, Quality>), PreprocessError> {
    let mode = aligner.config().mode;
    let q = crate::quality::measure(predictor, faces, mode, aligner.template());
    let mut quality_by_detector = BTreeMap::new();
    if by_detector.len() > 1 {
        for (name, which) in by_detector {
            quality_by_detector.insert(
                name.clone(),
                crate::quality::measure_some(predictor, faces, mode, aligner.template(), which),
            );
        }
    }
    let mut json = serde_json::to_value(&q).expect("plain");
    json["by_detector"] = serde_json::to_value(&quality_by_detector).expect("plain");
    artifacts::write_json_atomic(&side_file(output, "alignment-quality.json"), &json)?;
    Ok((Some(q), quality_by_detector))
}

/// Faces kept per class folder.
fn per_class(kept: &[(usize, AlignedFace)], candidates: &[Candidate]) -> BTreeMap<String, usize> {
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    for (i, _) in kept {
        *per_class.entry(candidates[*i].class.clone()).or_default() += 1;
    }
    per_class
}

/// Rejects counted by their reason's kind (the text before the first `:`).
fn reason_counts(rejects: &[Reject]) -> BTreeMap<String, usize> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in rejects {
        let key = r.reason.split(':').next().unwrap_or(&r.reason).to_string();
        *reasons.entry(key).or_default() += 1;
    }
    reasons
}

fn write_rejects(output: &Path, rejects: &[Reject]) -> Result<PathBuf, PreprocessError> {
    let path = side_file(output, "rejects.json");
    let json = serde_json::json!({ "count": rejects.len(), "rejects": rejects });
    artifacts::write_json_atomic(&path, &json)?;
    Ok(path)
}
