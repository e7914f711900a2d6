//! The preprocessing run: walk the input folder, process photos in parallel, assign
//! splits, write the artifact, `rejects.json`, a montage and the alignment-quality report.

use crate::aligner::{AlignedFace, Aligner};
use crate::detect::{DetectorConfig, DetectorKind};
use crate::dlib::ShapePredictor;
use crate::split::{assign, read_split_file, SplitFractions};
use artifacts::CHIP_SIZE;
use artifacts::{FaceGeometry, Faces, Provenance, Split};
use indicatif::ParallelProgressIterator;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What each photo becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Detect, 68 landmarks, similarity alignment, mask (the study's final preprocessing).
    Align,
    /// The detected box cropped and resized, no landmarks used, no mask (the study's first).
    CropOnly,
    /// Photos already aligned and cropped: only resized (mask only if asked).
    AsIs,
}

/// Every setting of a preprocessing run; stored in the artifact's metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    pub mode: Mode,
    /// Output side in pixels.
    pub size: usize,
    /// Apply the gaussian mask.
    pub mask: bool,
    pub sigma: f32,
    pub fractions: SplitFractions,
    pub split_file: Option<PathBuf>,
    /// Salt for the split hash (0 = plain `<class>/<file>` hashing).
    pub seed: u64,
    pub detector: DetectorConfig,
    pub landmarks: PathBuf,
    /// Re-run the landmark cascade from the box that best fits the first fit (dlib's
    /// detector boxes differ from Haar boxes; measured to tighten alignment).
    pub refine: bool,
    /// Weight of the 12 eye landmarks in the alignment fit (1 = faceswap's plain fit). The
    /// study's aligned images hold the eyes fixed; 3 halves their spread at a small cost
    /// for the mouth (measured on msceleb-samples, see README).
    pub eye_weight: f32,
    /// Where the CNN detector runs (CPU kernels, or candle on CUDA). Not a setting of the
    /// result, so not recorded.
    #[serde(skip)]
    pub device: artifacts::device::DeviceChoice,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            mode: Mode::Align,
            size: 150,
            mask: true,
            sigma: 2.5,
            fractions: SplitFractions::default(),
            split_file: None,
            seed: 0,
            detector: DetectorConfig::default(),
            landmarks: PathBuf::from("/usr/share/dlib/shape_predictor_68_face_landmarks.dat"),
            refine: true,
            eye_weight: 3.0,
            device: artifacts::device::DeviceChoice::Cpu,
        }
    }
}

impl PreprocessConfig {
    /// The settings a run really uses: the CNN detector's model located
    /// ([`dlib_dnn::models::locate`]). Without one, the default detector falls back to the
    /// cascade alone with a warning; an explicit `--cnn-model` that is missing is an error.
    pub fn resolved(&self) -> Result<PreprocessConfig, PreprocessError> {
        let mut cfg = self.clone();
        // Model files are recorded absolute: `predict` re-runs this preprocessing from any
        // folder.
        for p in [&mut cfg.landmarks, &mut cfg.detector.cascade] {
            if let Ok(abs) = std::fs::canonicalize(&*p) {
                *p = abs;
            }
        }
        if cfg.mode == Mode::AsIs || !cfg.detector.kind.needs_cnn() {
            cfg.detector.cnn_model = None;
            return Ok(cfg);
        }
        match dlib_dnn::models::locate(
            &dlib_dnn::models::FACE_DETECTOR,
            cfg.detector.cnn_model.as_deref(),
        ) {
            Ok(p) => cfg.detector.cnn_model = Some(std::fs::canonicalize(&p).unwrap_or(p)),
            Err(e)
                if cfg.detector.cnn_model.is_none()
                    && cfg.detector.kind == DetectorKind::HaarCnn =>
            {
                tracing::warn!(
                    "face detection by the Haar cascade alone (no CNN check, fewer faces): {e}"
                );
                cfg.detector.kind = DetectorKind::Haar;
            }
            Err(e) => {
                return Err(PreprocessError::Config(format!(
                    "--detector {}: {e}",
                    cfg.detector.kind
                )))
            }
        }
        Ok(cfg)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("input folder {0} does not exist; put photos in <folder>/<class>/<image>.jpg")]
    MissingInput(PathBuf),
    #[error("no images found under {0}; expected <folder>/<class>/<image> files")]
    NoImages(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("landmark model {path}: {error}; install it with `apt-get install libdlib-data` or pass --landmarks")]
    Landmarks {
        path: PathBuf,
        error: crate::dlib::DlibError,
    },
    #[error("{0}")]
    Config(String),
    #[error("no photo produced a face ({0} rejected); see the rejects file")]
    NothingKept(usize),
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
}

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

/// Loads the landmark model when the mode needs it.
/// In `--as-is` mode it is only needed to measure alignment quality, so a missing model
/// there is a warning, not an error.
pub fn load_predictor(cfg: &PreprocessConfig) -> Result<Option<ShapePredictor>, PreprocessError> {
    let p = match ShapePredictor::open(&cfg.landmarks) {
        Ok(p) => p,
        Err(e) if cfg.mode == Mode::AsIs => {
            tracing::warn!("no alignment-quality report: {e}");
            return Ok(None);
        }
        Err(error) => {
            return Err(PreprocessError::Landmarks {
                path: cfg.landmarks.clone(),
                error,
            })
        }
    };
    if p.num_parts() != 68 {
        return Err(PreprocessError::Config(format!(
            "{}: {} landmarks; the 68-point model is needed",
            cfg.landmarks.display(),
            p.num_parts()
        )));
    }
    Ok(Some(p))
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
        Some(p) => Some(read_split_file(p).map_err(PreprocessError::Config)?),
        None => None,
    };
    let aligner = Aligner::new(cfg)?;
    let bar = indicatif::ProgressBar::new(candidates.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "preprocess {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .expect("valid template"),
    );
    let results: Vec<Result<AlignedFace, String>> = candidates
        .par_iter()
        .progress_with(bar.clone())
        .map(|c| aligner.process_file(&c.path))
        .collect();
    bar.finish_and_clear();

    // Keep the faces; classes are the folders that kept at least one face.
    let mut kept: Vec<(usize, AlignedFace)> = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let c = &candidates[i];
        let r = r.and_then(|p| match &split_file {
            Some(m) if !m.contains_key(&(c.class.clone(), c.file.clone())) => {
                Err("not listed in the split file".to_string())
            }
            _ => Ok(p),
        });
        match r {
            Ok(p) => kept.push((i, p)),
            Err(reason) => rejects.push(Reject {
                path: c.path.display().to_string(),
                reason,
            }),
        }
    }
    if kept.is_empty() {
        write_rejects(output, &rejects)?;
        return Err(PreprocessError::NothingKept(rejects.len()));
    }
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
    let splits: Vec<Split> = match &split_file {
        Some(m) => kept
            .iter()
            .map(|(i, _)| m[&(candidates[*i].class.clone(), candidates[*i].file.clone())])
            .collect(),
        None => assign(&keys, cfg.fractions),
    };
    let n = kept.len();
    let size = cfg.size;
    let mut faces = Faces {
        height: size,
        width: size,
        images: Vec::with_capacity(n * size * size * 3),
        labels: Vec::with_capacity(n),
        splits,
        class_names: class_names.clone(),
        sources: Vec::with_capacity(n),
        geometry: None,
        provenance: Provenance::new(
            env!("CARGO_PKG_NAME"),
            artifacts::build_version(),
            serde_json::to_value(cfg).expect("plain config"),
        ),
    };
    faces.provenance.inputs = provenance_inputs(input, cfg)?;
    let mut geometry = FaceGeometry {
        boxes: Vec::new(),
        landmarks: Vec::new(),
        transforms: Vec::new(),
        chips: Some(Vec::with_capacity(kept.len() * CHIP_SIZE * CHIP_SIZE * 3)),
    };
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    let mut multiple = 0;
    let mut by_detector: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (face, (i, p)) in kept.iter().enumerate() {
        by_detector
            .entry(p.found_by.to_string())
            .or_default()
            .push(face);
        let c = &candidates[*i];
        faces.images.extend_from_slice(&p.pixels);
        faces.labels.push(class_idx[c.class.as_str()]);
        faces.sources.push(format!("{}/{}", c.class, c.file));
        geometry.boxes.push(p.rect);
        geometry.landmarks.extend(p.landmarks.iter().flatten());
        geometry.transforms.extend(p.transform);
        if let Some(chips) = &mut geometry.chips {
            chips.extend_from_slice(&p.chip);
        }
        *per_class.entry(c.class.clone()).or_default() += 1;
        multiple += usize::from(p.faces_found > 1);
    }
    faces.geometry = Some(geometry);
    faces.write(output)?;
    let rejects_file = write_rejects(output, &rejects)?;
    let montage_file = side_file(output, "montage.png");
    let views: Vec<&[u8]> = (0..n).map(|i| faces.image(i)).collect();
    if let Err(e) = crate::montage::write_montage(
        &montage_file,
        size,
        &views,
        &faces.labels,
        class_names.len(),
        12,
        64,
    ) {
        tracing::warn!("montage not written: {e}");
    }
    let mut quality_by_detector = BTreeMap::new();
    let quality = match aligner.predictor() {
        Some(p) => {
            let q = crate::quality::measure(p, &faces, cfg.mode, aligner.template());
            if by_detector.len() > 1 {
                for (name, which) in &by_detector {
                    quality_by_detector.insert(
                        name.clone(),
                        crate::quality::measure_some(
                            p,
                            &faces,
                            cfg.mode,
                            aligner.template(),
                            which,
                        ),
                    );
                }
            }
            let mut json = serde_json::to_value(&q).expect("plain");
            json["by_detector"] = serde_json::to_value(&quality_by_detector).expect("plain");
            let path = side_file(output, "alignment-quality.json");
            artifacts::write_atomic(
                &path,
                serde_json::to_string_pretty(&json)
                    .expect("plain")
                    .as_bytes(),
            )?;
            Some(q)
        }
        None => None,
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rejects {
        let key = r.reason.split(':').next().unwrap_or(&r.reason).to_string();
        *reasons.entry(key).or_default() += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(RunSummary {
        candidates: candidates.len(),
        faces: n,
        rejected: rejects.len(),
        reasons,
        per_class,
        multiple_faces: multiple,
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

fn write_rejects(output: &Path, rejects: &[Reject]) -> Result<PathBuf, PreprocessError> {
    let path = side_file(output, "rejects.json");
    let json = serde_json::json!({ "count": rejects.len(), "rejects": rejects });
    artifacts::write_atomic(
        &path,
        serde_json::to_string_pretty(&json)
            .expect("plain")
            .as_bytes(),
    )?;
    Ok(path)
}
