//! Photos -> named faces: decode, every face detected and aligned as in training, the
//! teacher where the model needs it, the model, the open-set rule.

use crate::model::Model;
use crate::PredictError;
use artifacts::{Bottlenecks, Faces, Provenance, Split};
use preprocess::decode::{decode, Rgb};
use preprocess::AlignedFace;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
use train::open_set::ScoreKind;

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Guess {
    pub person: String,
    pub probability: f32,
}

/// One face of a photo.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaceResult {
    /// `[x, y, w, h]` in the photo's pixels (after its EXIF orientation).
    #[serde(rename = "box")]
    pub rect: [f32; 4],
    /// The detector whose box it is: `haar` or `cnn`.
    pub found_by: String,
    /// The person, or `None` for "unknown" (or when the face could not be aligned).
    pub person: Option<String>,
    /// The model's best guess and its probability, even when the face is unknown.
    pub best: Option<Guess>,
    pub top: Vec<Guess>,
    /// The open-set score (larger: less like anyone known) and whether it passed.
    pub score: Option<f32>,
    pub unknown: bool,
    /// Why a detected face got no prediction (its landmarks did not fit, say).
    pub error: Option<String>,
    /// dlib's face descriptor of an unknown face, when the model's teacher is the face
    /// teacher (for grouping the unknown faces; not printed).
    #[serde(skip)]
    pub descriptor: Option<Vec<f32>>,
}

/// One photo.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhotoResult {
    pub path: PathBuf,
    /// The photo's size, after its EXIF orientation (0 when unreadable).
    pub width: usize,
    pub height: usize,
    pub faces: Vec<FaceResult>,
    /// Why the photo could not be read (the same reasons as preprocess's rejects).
    pub error: Option<String>,
    /// Photo pixels per decoded pixel (photos are decoded to at most 1600 px a side):
    /// maps boxes back to the ones a faces artifact records.
    #[serde(skip)]
    pub decoded_scale: f32,
}

impl PhotoResult {
    pub fn status(&self) -> &'static str {
        match (&self.error, self.faces.is_empty()) {
            (Some(_), _) => "error",
            (None, true) => "no face",
            (None, false) => "ok",
        }
    }
}

/// Where the time went: per-photo stages summed over threads (CPU-seconds), batched
/// stages as wall time.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub photos: usize,
    pub faces: usize,
    pub decode_cpu_s: f64,
    pub detect_cpu_s: f64,
    pub align_cpu_s: f64,
    pub per_photo_wall_s: f64,
    pub teacher_wall_s: f64,
    pub model_wall_s: f64,
    pub total_wall_s: f64,
}

impl Timings {
    pub fn photos_per_second(&self) -> f64 {
        self.photos as f64 / self.total_wall_s.max(1e-9)
    }

    /// The stage with the most wall time (the per-photo ones split by their CPU shares).
    pub fn dominant(&self) -> (&'static str, f64) {
        let cpu = (self.decode_cpu_s + self.detect_cpu_s + self.align_cpu_s).max(1e-12);
        let share = |v: f64| self.per_photo_wall_s * v / cpu;
        let stages = [
            ("decode", share(self.decode_cpu_s)),
            ("detect", share(self.detect_cpu_s)),
            ("landmarks+align", share(self.align_cpu_s)),
            ("teacher", self.teacher_wall_s),
            ("model", self.model_wall_s),
        ];
        stages
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("five stages")
    }
}

/// Photos decoded and aligned per step; the teacher and model then run on all its faces.
pub const PHOTOS_PER_STEP: usize = 16;

struct Aligned {
    photo: PhotoResult,
    image: Option<Rgb>,
    faces: Vec<Option<AlignedFace>>,
    secs: [f64; 3],
}

/// Runs the model on `photos`, calling `each` with every photo's result, its decoded image
/// (for `--annotate`) and its aligned faces (`[k]` is face `k`; for `--group-unknowns`),
/// in input order.
pub fn predict_photos(
    model: &Model,
    photos: &[PathBuf],
    mut each: impl FnMut(&PhotoResult, Option<&Rgb>, &[Option<AlignedFace>]) -> Result<(), PredictError>,
) -> Result<(Vec<PhotoResult>, Timings), PredictError> {
    let start = Instant::now();
    let mut t = Timings {
        photos: photos.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(photos.len());
    for chunk in photos.chunks(PHOTOS_PER_STEP) {
        let step = Instant::now();
        let mut aligned: Vec<Aligned> = chunk.par_iter().map(|p| align_photo(model, p)).collect();
        t.per_photo_wall_s += step.elapsed().as_secs_f64();
        for a in &aligned {
            t.decode_cpu_s += a.secs[0];
            t.detect_cpu_s += a.secs[1];
            t.align_cpu_s += a.secs[2];
        }
        let faces: Vec<&[Option<AlignedFace>]> = aligned.iter().map(|a| &a.faces[..]).collect();
        let mut named: Vec<PhotoResult> = aligned.iter().map(|a| a.photo.clone()).collect();
        classify(model, &faces, &mut named, &mut t)?;
        for (a, photo) in aligned.iter_mut().zip(named) {
            each(&photo, a.image.as_ref(), &a.faces)?;
            t.faces += photo.faces.len();
            out.push(photo);
        }
    }
    t.total_wall_s = start.elapsed().as_secs_f64();
    Ok((out, t))
}

/// Several models on the same photos, which are decoded, detected and aligned once: the
/// models must share their preprocessing (as the models of one pipeline run do).
/// Returns each model's results, in the order of `models`.
pub fn predict_photos_many(
    models: &[&Model],
    photos: &[PathBuf],
) -> Result<Vec<Vec<PhotoResult>>, PredictError> {
    let Some(first) = models.first() else {
        return Ok(Vec::new());
    };
    if let Some(other) = models
        .iter()
        .find(|m| m.aligner.config() != first.aligner.config())
    {
        return Err(PredictError::MixedPreprocessing {
            first: first.path.clone(),
            other: other.path.clone(),
        });
    }
    let mut out = vec![Vec::with_capacity(photos.len()); models.len()];
    let mut t = Timings::default();
    for chunk in photos.chunks(PHOTOS_PER_STEP) {
        let aligned: Vec<Aligned> = chunk.par_iter().map(|p| align_photo(first, p)).collect();
        let faces: Vec<&[Option<AlignedFace>]> = aligned.iter().map(|a| &a.faces[..]).collect();
        for (m, model) in models.iter().enumerate() {
            let mut named: Vec<PhotoResult> = aligned.iter().map(|a| a.photo.clone()).collect();
            classify(model, &faces, &mut named, &mut t)?;
            out[m].extend(named);
        }
    }
    Ok(out)
}

fn align_photo(model: &Model, path: &Path) -> Aligned {
    let mut secs = [0f64; 3];
    let mut photo = PhotoResult {
        path: path.to_path_buf(),
        width: 0,
        height: 0,
        faces: Vec::new(),
        error: None,
        decoded_scale: 1.0,
    };
    let aligner = &model.aligner;
    let result = preprocess::aligner::guarded(|| {
        let t0 = Instant::now();
        let img = decode(path).map_err(|e| e.to_string())?;
        secs[0] = t0.elapsed().as_secs_f64();
        let (faces, t) = aligner.faces_timed(&img, model.search)?;
        secs[1] = t[0];
        secs[2] = t[1];
        Ok((img, faces))
    });
    match result {
        Ok((img, faces)) => {
            let s = img.scale;
            photo.decoded_scale = s;
            photo.width = (img.width as f32 * s).round() as usize;
            photo.height = (img.height as f32 * s).round() as usize;
            let scaled = |r: [f32; 4]| r.map(|v| v * s);
            let mut kept = Vec::new();
            for f in faces {
                match f {
                    Ok(f) => {
                        photo.faces.push(FaceResult {
                            rect: scaled(f.rect),
                            found_by: f.found_by.to_string(),
                            person: None,
                            best: None,
                            top: Vec::new(),
                            score: None,
                            unknown: false,
                            error: None,
                            descriptor: None,
                        });
                        kept.push(Some(f));
                    }
                    Err(fail) => {
                        photo.faces.push(FaceResult {
                            rect: scaled(fail.rect),
                            found_by: String::new(),
                            person: None,
                            best: None,
                            top: Vec::new(),
                            score: None,
                            unknown: false,
                            error: Some(fail.reason.to_string()),
                            descriptor: None,
                        });
                        kept.push(None);
                    }
                }
            }
            Aligned {
                photo,
                image: Some(img),
                faces: kept,
                secs,
            }
        }
        Err(e) => {
            photo.error = Some(e);
            Aligned {
                photo,
                image: None,
                faces: Vec::new(),
                secs,
            }
        }
    }
}

/// The teacher (where needed) and the model on every aligned face of a step (`faces[p]`
/// are photo `p`'s), filling in `photos[p].faces`. The aligned faces are only read, so
/// several models can name the same step.
fn classify(
    model: &Model,
    faces: &[&[Option<AlignedFace>]],
    photos: &mut [PhotoResult],
    t: &mut Timings,
) -> Result<(), PredictError> {
    let mut refs: Vec<(usize, usize)> = Vec::new();
    for (p, fs) in faces.iter().enumerate() {
        for (k, f) in fs.iter().enumerate() {
            if f.is_some() {
                refs.push((p, k));
            }
        }
    }
    if refs.is_empty() {
        return Ok(());
    }
    let face = |&(p, k): &(usize, usize)| faces[p][k].as_ref().expect("listed");
    let s = model.face_size;
    let n = refs.len();
    let mut images = Vec::with_capacity(n * s * s * 3);
    for r in &refs {
        images.extend_from_slice(&face(r).pixels);
    }
    let t0 = Instant::now();
    let bottlenecks = match &model.teacher {
        Some(teacher) => {
            let mut rows = Vec::with_capacity(n * teacher.dim());
            for part in refs.chunks(8) {
                let prepared: Vec<f32> = part
                    .par_iter()
                    .flat_map_iter(|r| {
                        let f = face(r);
                        if teacher.uses_chips() {
                            teacher.prepare(&f.chip, artifacts::CHIP_SIZE, artifacts::CHIP_SIZE)
                        } else {
                            teacher.prepare(&f.pixels, s, s)
                        }
                    })
                    .collect();
                rows.extend(teacher.embed(&prepared, part.len())?);
            }
            Some(Bottlenecks {
                views: None,
                dim: teacher.dim(),
                features: rows,
                mirrored: None,
                teacher: model.teacher_identity.clone().unwrap_or_default(),
                layer: String::new(),
                faces_digest: String::new(),
                provenance: Provenance::new("predict", "", serde_json::Value::Null),
            })
        }
        None => None,
    };
    t.teacher_wall_s += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let faces = Faces {
        height: s,
        width: s,
        images: images.into(),
        labels: vec![0; n],
        splits: vec![Split::Test; n],
        class_names: model.class_names.clone(),
        sources: vec![String::new(); n],
        geometry: None,
        provenance: Provenance::new("predict", "", serde_json::Value::Null),
    };
    let idx: Vec<usize> = (0..n).collect();
    let pred = model
        .predictor
        .predict(&faces, bottlenecks.as_ref(), &idx, &model.device)
        .map_err(|source| PredictError::Classifier {
            path: model.path.clone(),
            source: Box::new(source),
        })?;
    t.model_wall_s += t1.elapsed().as_secs_f64();
    let c = pred.num_classes;
    for (j, &(p, k)) in refs.iter().enumerate() {
        let probs = &pred.probs[j * c..(j + 1) * c];
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
        let guess = |i: usize| Guess {
            person: model.class_names[i].clone(),
            probability: probs[i],
        };
        let best = guess(order[0]);
        let score = model.rule.as_ref().map(|r| match r.score {
            ScoreKind::GalleryDistance => {
                let b = bottlenecks.as_ref().expect("loaded for the rule");
                let gallery = model.gallery.as_ref().expect("loaded for the rule");
                gallery.score(b.row(j)).1
            }
            ScoreKind::Probability => 1.0 - best.probability,
        });
        let unknown = match (&model.rule, score) {
            (Some(r), Some(v)) => v > r.threshold,
            _ => false,
        };
        let f = &mut photos[p].faces[k];
        f.person = (!unknown).then(|| best.person.clone());
        f.top = order.iter().take(3).map(|&i| guess(i)).collect();
        f.best = Some(best);
        f.score = score;
        f.unknown = unknown;
        f.descriptor = match (&model.teacher, &bottlenecks) {
            (Some(t), Some(b)) if unknown && t.uses_chips() => Some(b.row(j).to_vec()),
            _ => None,
        };
    }
    Ok(())
}
