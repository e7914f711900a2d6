//! Preprocessing in shards: each photo belongs to one shard (by a hash of its
//! `<class>/<file>`), a job makes some shards (`--shard I/N`, one process or one Slurm array
//! task each), and the merge writes the index over them (labels and splits need every
//! shard, so only the merge assigns them).
//!
//! Memory is bounded: a shard's faces are aligned a chunk at a time and their pixels spooled
//! to disk (`artifacts::FaceShardWriter`), so a job holds one chunk of faces, whatever the
//! size of the shard or the data set. A shard is skipped when its note says it was made
//! by this build, with these settings, from exactly these photos (paths, sizes, times).

use crate::aligner::Aligner;
use crate::config::PreprocessConfig;
use crate::error::{FaceError, PreprocessError};
use crate::pipeline::{list_inputs, provenance_inputs, side_file, Candidate, Reject, RunSummary};
use crate::quality::{self, FeaturePoints, Quality};
use crate::split::{assign, read_split_file};
use artifacts::shards::{shard_count, shard_dir, shard_file_name, shard_of, shard_ref_path};
use artifacts::{
    FaceGeometry, FaceShard, FaceShardWriter, Faces, JobPart, Pixels, Provenance, ShardFace,
    ShardRef, Split,
};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Photos aligned at once: what a job holds in memory (~135 KB a face).
const CHUNK: usize = 128;

/// Which photos go to which shard, and what identifies each shard's inputs.
pub struct Plan {
    candidates: Vec<Candidate>,
    listing_rejects: Vec<Reject>,
    /// Candidate indices of each shard, in listing order.
    members: Vec<Vec<usize>>,
    config: serde_json::Value,
    /// Inputs besides the photos (models, split file), as the index records them.
    models: BTreeMap<String, String>,
}

/// What a shard's job leaves beside it (`faces.shards/00003.json`): the key it was made
/// for, the shard's reference, and the per-photo results the merge needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ShardNote {
    key: String,
    build: String,
    config: serde_json::Value,
    shard: ShardRef,
    candidates: usize,
    rejects: Vec<Reject>,
    found_by: Vec<String>,
    faces_found: Vec<u32>,
    /// Alignment-quality feature points of each face (empty without a landmark model).
    points: Vec<FeaturePoints>,
}

impl Plan {
    pub fn new(input: &Path, cfg: &PreprocessConfig) -> Result<Plan, PreprocessError> {
        let (candidates, listing_rejects) = list_inputs(input)?;
        if candidates.is_empty() {
            return Err(PreprocessError::NoImages(input.to_path_buf()));
        }
        let count = shard_count(candidates.len(), cfg.shard_size);
        let mut members = vec![Vec::new(); count];
        for (i, c) in candidates.iter().enumerate() {
            members[shard_of(&format!("{}/{}", c.class, c.file), count)].push(i);
        }
        let mut models = provenance_inputs(input, cfg)?;
        models.remove("input");
        Ok(Plan {
            candidates,
            listing_rejects,
            members,
            config: serde_json::to_value(cfg).expect("plain config"),
            models,
        })
    }

    pub fn shards(&self) -> usize {
        self.members.len()
    }

    /// Digest of everything shard `s` is made from.
    fn key(&self, s: usize) -> String {
        let photos: Vec<String> = self.members[s]
            .iter()
            .map(|&i| {
                let c = &self.candidates[i];
                let (len, mtime) = std::fs::metadata(&c.path)
                    .map(|m| {
                        let t = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_nanos())
                            .unwrap_or(0);
                        (m.len(), t)
                    })
                    .unwrap_or((0, 0));
                format!("{}/{}\t{len}\t{mtime}", c.class, c.file)
            })
            .collect();
        let doc = serde_json::json!({
            "build": artifacts::build_version(),
            "config": self.config,
            "models": self.models,
            "shard": [s, self.shards()],
            "photos": photos,
        });
        artifacts::digest_bytes(doc.to_string().as_bytes())
    }
}

fn note_path(output: &Path, s: usize) -> PathBuf {
    shard_dir(output).join(shard_file_name(s).replace(".safetensors", ".json"))
}

fn read_note(output: &Path, s: usize) -> Option<ShardNote> {
    let text = std::fs::read(note_path(output, s)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// True when the shard a note describes is on disk at the size the note says.
fn on_disk(output: &Path, note: &ShardNote) -> bool {
    let file = output
        .parent()
        .unwrap_or(Path::new("."))
        .join(&note.shard.file);
    std::fs::metadata(file).is_ok_and(|m| m.len() == note.shard.bytes)
}

/// True when shard `s` is on disk as its note says and the note is for `key`.
fn is_fresh(output: &Path, s: usize, key: &str) -> bool {
    read_note(output, s).is_some_and(|n| n.key == key && on_disk(output, &n))
}

/// What one job did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartSummary {
    pub part: String,
    pub shards: usize,
    pub made: Vec<usize>,
    pub up_to_date: Vec<usize>,
    pub photos: usize,
    pub faces: usize,
    pub seconds: f64,
}

/// Makes the shards of `part` that are not up to date.
pub fn make_part(
    input: &Path,
    output: &Path,
    cfg: &PreprocessConfig,
    part: JobPart,
) -> Result<PartSummary, PreprocessError> {
    let start = Instant::now();
    let plan = Plan::new(input, cfg)?;
    let split_file = match &cfg.split_file {
        Some(p) => Some(read_split_file(p)?),
        None => None,
    };
    let sizes: Vec<usize> = plan.members.iter().map(Vec::len).collect();
    let mine = part.mine(&sizes);
    let (mut made, mut up_to_date) = (Vec::new(), Vec::new());
    let todo: Vec<(usize, String)> = mine
        .iter()
        .map(|&s| (s, plan.key(s)))
        .filter(|(s, key)| {
            let fresh = is_fresh(output, *s, key);
            if fresh {
                up_to_date.push(*s);
            }
            !fresh
        })
        .collect();
    let (mut photos, mut faces) = (0, 0);
    if !todo.is_empty() {
        let aligner = Aligner::new(cfg)?;
        let total: usize = todo.iter().map(|(s, _)| plan.members[*s].len()).sum();
        let bar = bar(total as u64);
        for (s, key) in todo {
            let note = make_shard(&plan, &aligner, split_file.as_ref(), output, s, key, &bar)?;
            photos += note.candidates;
            faces += note.shard.rows;
            made.push(s);
        }
        bar.finish_and_clear();
    }
    Ok(PartSummary {
        part: part.to_string(),
        shards: plan.shards(),
        made,
        up_to_date,
        photos,
        faces,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn bar(len: u64) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "preprocess {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .expect("valid template"),
    )
}

/// The split file's photo -> split table.
type SplitFile = HashMap<(String, String), Split>;

/// Aligns shard `s`'s photos a chunk at a time into its file, then writes its note.
fn make_shard(
    plan: &Plan,
    aligner: &Aligner,
    split_file: Option<&SplitFile>,
    output: &Path,
    s: usize,
    key: String,
    bar: &indicatif::ProgressBar,
) -> Result<ShardNote, PreprocessError> {
    let cfg = aligner.config();
    let file = shard_ref_path(output, s);
    let path = output.parent().unwrap_or(Path::new(".")).join(&file);
    let mut w = FaceShardWriter::create(&path, [cfg.size, cfg.size], true)?;
    let predictor = aligner.predictor();
    let rect = predictor.map(|p| quality::start_box(p, cfg.mode, aligner.template(), cfg.size));
    let mut note = ShardNote {
        key: key.clone(),
        build: artifacts::build_version().to_string(),
        config: plan.config.clone(),
        shard: ShardRef {
            file,
            rows: 0,
            bytes: 0,
            digest: String::new(),
        },
        candidates: plan.members[s].len(),
        rejects: Vec::new(),
        found_by: Vec::new(),
        faces_found: Vec::new(),
        points: Vec::new(),
    };
    for chunk in plan.members[s].chunks(CHUNK) {
        let results: Vec<_> = chunk
            .par_iter()
            .map(|&i| {
                let c = &plan.candidates[i];
                // Aligned first, so a photo the split file leaves out but that has no face
                // is rejected for having no face, as in one pass.
                let r = aligner
                    .process_file(&c.path)
                    .and_then(|f| match split_file {
                        Some(m) if !m.contains_key(&(c.class.clone(), c.file.clone())) => {
                            Err(FaceError::NotInSplitFile)
                        }
                        _ => Ok(f),
                    });
                let pts = match (&r, predictor, rect) {
                    (Ok(f), Some(p), Some(rect)) => {
                        Some(quality::feature_points(p, &f.pixels, cfg.size, rect))
                    }
                    _ => None,
                };
                (r, pts)
            })
            .collect();
        for ((r, pts), &i) in results.into_iter().zip(chunk) {
            let c = &plan.candidates[i];
            match r {
                Ok(f) => {
                    let landmarks: Vec<f32> = f.landmarks.iter().flatten().copied().collect();
                    w.push(ShardFace {
                        image: &f.pixels,
                        chip: Some(&f.chip),
                        source: format!("{}/{}", c.class, c.file),
                        rect: f.rect,
                        landmarks: &landmarks,
                        transform: &f.transform,
                    })?;
                    note.found_by.push(f.found_by.to_string());
                    note.faces_found.push(f.faces_found as u32);
                    note.points.extend(pts);
                }
                Err(reason) => note.rejects.push(Reject {
                    path: c.path.display().to_string(),
                    reason: reason.to_string(),
                }),
            }
        }
        bar.inc(chunk.len() as u64);
    }
    note.shard.rows = w.len();
    let provenance = Provenance::new(
        env!("CARGO_PKG_NAME"),
        artifacts::build_version(),
        plan.config.clone(),
    )
    .with_input("photos", key);
    let written = w.finish(
        provenance,
        serde_json::json!({ "shard": [s, plan.shards()] }),
    )?;
    note.shard.bytes = written.bytes;
    note.shard.digest = written.digest;
    // The note last: a shard without its note is made again.
    artifacts::write_json_atomic(&note_path(output, s), &note)?;
    Ok(note)
}

/// Why shard `s`'s note does not fit this run, in words.
fn difference(plan: &Plan, s: usize, note: &ShardNote) -> String {
    if note.build != artifacts::build_version() {
        return format!(
            "made by build {}, this is {}",
            note.build,
            artifacts::build_version()
        );
    }
    if note.config != plan.config {
        return format!(
            "made with other settings ({})",
            artifacts::config_difference(&note.config, &plan.config)
        );
    }
    if note.candidates != plan.members[s].len() {
        return format!(
            "made from {} photos, the folder now gives it {}",
            note.candidates,
            plan.members[s].len()
        );
    }
    "made from other photos or models (sizes, times or model files differ)".into()
}

/// Writes the index over every shard (which must all be made and fresh), `rejects.json`,
/// the montage and the alignment-quality report.
pub fn merge(
    input: &Path,
    output: &Path,
    cfg: &PreprocessConfig,
    start: Instant,
) -> Result<RunSummary, PreprocessError> {
    let plan = Plan::new(input, cfg)?;
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    for s in 0..plan.shards() {
        let key = plan.key(s);
        match read_note(output, s) {
            None => problems.push(format!("shard {s}: not made")),
            Some(n) if n.key != key => {
                problems.push(format!("shard {s}: {}", difference(&plan, s, &n)))
            }
            Some(n) if !on_disk(output, &n) => problems.push(format!(
                "shard {s}: its file is missing or not the size its note says (deleted or cut short)"
            )),
            Some(n) => notes.push(n),
        }
    }
    if !problems.is_empty() {
        return Err(PreprocessError::Shards {
            dir: shard_dir(output),
            count: plan.shards(),
            problems,
        });
    }
    tidy(output, plan.shards());
    let mut rejects = plan.listing_rejects.clone();
    let mut table = Table::default();
    let mut refs = Vec::new();
    for n in &notes {
        let shard = FaceShard::read(output, &n.shard)?;
        table.add(shard, n);
        rejects.extend(n.rejects.iter().cloned());
        refs.push(n.shard.clone());
    }
    if table.sources.is_empty() {
        write_rejects(output, &rejects)?;
        return Err(PreprocessError::NothingKept(rejects.len()));
    }
    let split_file = match &cfg.split_file {
        Some(p) => Some(read_split_file(p)?),
        None => None,
    };
    let mut faces = table.index(cfg, split_file.as_ref());
    faces.provenance.inputs = provenance_inputs(input, cfg)?;
    faces.write_index(output, refs)?;
    let rejects_file = write_rejects(output, &rejects)?;
    let faces = Faces::read(output)?;
    let montage_file = write_montage(output, &faces);
    let (quality, quality_by_detector) = write_quality(output, &table)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    for l in &faces.labels {
        *per_class
            .entry(faces.class_names[*l as usize].clone())
            .or_default() += 1;
    }
    let mut found_by: BTreeMap<String, usize> = BTreeMap::new();
    for k in &table.found_by {
        *found_by.entry(k.clone()).or_default() += 1;
    }
    Ok(RunSummary {
        candidates: plan.candidates.len(),
        faces: faces.len(),
        rejected: rejects.len(),
        reasons: crate::pipeline::reason_counts(&rejects),
        per_class,
        multiple_faces: table.faces_found.iter().filter(|&&k| k > 1).count(),
        found_by,
        seconds,
        images_per_second: plan.candidates.len() as f64 / seconds,
        quality,
        quality_by_detector,
        rejects_file,
        montage_file,
        shards: plan.shards(),
    })
}

/// Removes what killed jobs and an earlier, larger shard count left in the shard folder.
fn tidy(output: &Path, count: usize) {
    let Ok(rd) = std::fs::read_dir(shard_dir(output)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let leftover =
            name.starts_with('.') && (name.ends_with(".spool") || name.ends_with(".tmp"));
        let beyond = name
            .split('.')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|s| s >= count);
        if leftover || beyond {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The per-face rows of every shard, in shard order: what the index is made of.
#[derive(Default)]
struct Table {
    sources: Vec<String>,
    boxes: Vec<[f32; 4]>,
    landmarks: Vec<f32>,
    transforms: Vec<f32>,
    found_by: Vec<String>,
    faces_found: Vec<u32>,
    points: Vec<FeaturePoints>,
}

impl Table {
    fn add(&mut self, shard: FaceShard, note: &ShardNote) {
        self.sources.extend(shard.sources);
        self.boxes.extend(shard.geometry.boxes);
        self.landmarks.extend(shard.geometry.landmarks);
        self.transforms.extend(shard.geometry.transforms);
        self.found_by.extend(note.found_by.iter().cloned());
        self.faces_found.extend(&note.faces_found);
        self.points.extend(&note.points);
    }

    /// The index's faces: classes are the folders that kept at least one face; splits by
    /// the split file, or by hashing `<class>/<file>` (salted by the seed).
    fn index(&self, cfg: &PreprocessConfig, split_file: Option<&SplitFile>) -> Faces {
        let keys: Vec<(String, String)> = self
            .sources
            .iter()
            .map(|s| {
                let (c, f) = s.split_once('/').unwrap_or((s, ""));
                (c.to_string(), f.to_string())
            })
            .collect();
        let mut class_names: Vec<String> = keys.iter().map(|(c, _)| c.clone()).collect();
        class_names.sort();
        class_names.dedup();
        let class_idx: HashMap<&str, u32> = class_names
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect();
        let labels = keys.iter().map(|(c, _)| class_idx[c.as_str()]).collect();
        let splits = match split_file {
            Some(m) => keys.iter().map(|k| m[k]).collect(),
            None => {
                let salted: Vec<(String, String)> = keys
                    .iter()
                    .map(|(c, f)| {
                        let f = if cfg.seed == 0 {
                            f.clone()
                        } else {
                            format!("{f}#{}", cfg.seed)
                        };
                        (c.clone(), f)
                    })
                    .collect();
                assign(&salted, cfg.fractions)
            }
        };
        Faces {
            height: cfg.size,
            width: cfg.size,
            images: Pixels::default(),
            labels,
            splits,
            class_names,
            sources: self.sources.clone(),
            geometry: Some(FaceGeometry {
                boxes: self.boxes.clone(),
                landmarks: self.landmarks.clone(),
                transforms: self.transforms.clone(),
                chips: Some(Pixels::default()),
            }),
            provenance: Provenance::new(
                env!("CARGO_PKG_NAME"),
                artifacts::build_version(),
                serde_json::to_value(cfg).expect("plain config"),
            ),
        }
    }
}

/// The montage beside the artifact; a failure to draw it is a warning, not the run's end.
fn write_montage(output: &Path, faces: &Faces) -> PathBuf {
    let montage_file = side_file(output, "montage.png");
    if let Err(e) = crate::montage::write_montage(
        &montage_file,
        faces.width,
        &|i| faces.image(i),
        &faces.labels,
        faces.class_names.len(),
        12,
        64,
    ) {
        tracing::warn!("montage not written: {e}");
    }
    montage_file
}

/// The alignment-quality report (overall, and per detector when there are several).
fn write_quality(
    output: &Path,
    table: &Table,
) -> Result<(Option<Quality>, BTreeMap<String, Quality>), PreprocessError> {
    if table.points.len() != table.sources.len() {
        return Ok((None, BTreeMap::new()));
    }
    let q = quality::summarize(&table.points);
    let mut by: BTreeMap<String, Vec<FeaturePoints>> = BTreeMap::new();
    for (k, p) in table.found_by.iter().zip(&table.points) {
        by.entry(k.clone()).or_default().push(*p);
    }
    let quality_by_detector: BTreeMap<String, Quality> = if by.len() > 1 {
        by.iter()
            .map(|(k, v)| (k.clone(), quality::summarize(v)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut json = serde_json::to_value(&q).expect("plain");
    json["by_detector"] = serde_json::to_value(&quality_by_detector).expect("plain");
    artifacts::write_json_atomic(&side_file(output, "alignment-quality.json"), &json)?;
    Ok((Some(q), quality_by_detector))
}

pub(crate) fn write_rejects(output: &Path, rejects: &[Reject]) -> Result<PathBuf, PreprocessError> {
    let path = side_file(output, "rejects.json");
    let json = serde_json::json!({ "count": rejects.len(), "rejects": rejects });
    artifacts::write_json_atomic(&path, &json)?;
    Ok(path)
}
