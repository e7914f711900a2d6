//! A trained checkpoint with everything it needs to see new photos as it saw its faces:
//! the preprocessing, the teacher, the mean image and the open-set rule, all read from what
//! `train` recorded (`train::provenance::recipe`, `train::open_set::OpenSet`), none re-typed on the command line.

use crate::PredictError;
use artifacts::Checkpoint;
use candle_core::Device;
use inception_bottleneck::{ExtractConfig, Teacher};
use kernels::device::DeviceChoice;
use preprocess::{Aligner, PreprocessConfig};
use std::path::{Path, PathBuf};
use train::inference::Predictor;
use train::layout::RECIPE_CONFIG_KEY;
use train::open_set::{Gallery, OpenSet, ScoreKind};

/// How `predict` decides "unknown".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnknownRule {
    /// The threshold stored with the checkpoint.
    Stored,
    /// This threshold on the checkpoint's score.
    Threshold(f32),
    /// Name every face (closed set).
    Off,
}

impl UnknownRule {
    /// `--closed-set` and `--unknown-threshold` (which clap keeps apart) as a rule.
    pub fn from_flags(closed_set: bool, threshold: Option<f32>) -> UnknownRule {
        match (closed_set, threshold) {
            (true, _) => UnknownRule::Off,
            (false, Some(t)) => UnknownRule::Threshold(t),
            (false, None) => UnknownRule::Stored,
        }
    }
}

/// What the user chose beyond the model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: DeviceChoice,
    pub unknown: UnknownRule,
    /// Every face of a photo, or only the one preprocess would keep.
    pub faces: preprocess::FaceSearch,
}

/// The open-set rule in force.
#[derive(Debug, Clone)]
pub struct Rule {
    pub score: ScoreKind,
    pub threshold: f32,
    /// Where the threshold came from: `checkpoint` or `--unknown-threshold`.
    pub source: &'static str,
    /// The calibration stored with the checkpoint, if any.
    pub stored: Option<OpenSet>,
}

/// A loaded model, ready for photos.
pub struct Model {
    pub path: PathBuf,
    pub kind: String,
    pub class_names: Vec<String>,
    pub predictor: Predictor,
    pub aligner: Aligner,
    /// The teacher, when the model reads its features (a probe) or the rule scores by it.
    pub teacher: Option<Teacher>,
    pub teacher_identity: Option<String>,
    /// The known faces of the descriptor score.
    pub gallery: Option<Gallery>,
    pub rule: Option<Rule>,
    pub face_size: usize,
    pub device: Device,
    pub search: preprocess::FaceSearch,
}

fn bad(path: &Path, problem: impl Into<String>) -> PredictError {
    PredictError::Model {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The workspace version of a `producer_version` (`0.1.0+exe.<digest>`).
fn release_of(producer_version: &str) -> &str {
    producer_version
        .split('+')
        .next()
        .unwrap_or(producer_version)
}

impl Model {
    pub fn open(path: &Path, opts: &ModelOptions) -> Result<Model, PredictError> {
        let device = kernels::device::pick(opts.device).map_err(PredictError::Device)?;
        let ck = Checkpoint::read(path).map_err(|source| PredictError::Checkpoint {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        check_producer(path, &ck)?;
        let recipe = recipe_of(path, &ck)?;
        let kind = ck.model_config["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let class_names: Vec<String> =
            serde_json::from_value(ck.model_config["class_names"].clone())
                .map_err(|e| bad(path, format!("class names: {e}")))?;
        let (predictor, _) =
            Predictor::load(path, &device).map_err(|source| PredictError::Classifier {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let aligner = aligner_from(path, &recipe["faces"], opts.device)?;
        let face_size = aligner.config().size;
        let open_set_err = |source| PredictError::OpenSet {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let stored = OpenSet::from_checkpoint(&ck).map_err(open_set_err)?;
        let rule = rule_in_force(path, opts.unknown, stored);
        let by_descriptor = rule
            .as_ref()
            .is_some_and(|r| r.score == ScoreKind::GalleryDistance);
        let gallery = by_descriptor
            .then(|| Gallery::from_checkpoint(&ck, class_names.len()))
            .transpose()
            .map_err(open_set_err)?;
        let needs_teacher = predictor.needs_teacher() || by_descriptor;
        let (teacher, teacher_identity) = match needs_teacher {
            true => {
                let (teacher, id) = teacher_of(path, recipe, opts.device)?;
                (Some(teacher), Some(id))
            }
            false => (None, None),
        };
        Ok(Model {
            path: path.to_path_buf(),
            kind,
            class_names,
            predictor,
            aligner,
            teacher,
            teacher_identity,
            gallery,
            rule,
            face_size,
            device,
            search: opts.faces,
        })
    }
}

/// The checkpoint was made by `train` of this release (its recipe and rule are read as
/// this release writes them).
fn check_producer(path: &Path, ck: &Checkpoint) -> Result<(), PredictError> {
    let ours = env!("CARGO_PKG_VERSION");
    if ck.provenance.producer != "train" {
        return Err(bad(
            path,
            format!("made by `{}`, not by `train`", ck.provenance.producer),
        ));
    }
    let theirs = release_of(&ck.provenance.producer_version);
    if theirs != ours {
        return Err(bad(
            path,
            format!("made by celeb-transfer {theirs}; this is {ours}: retrain the model with this release or predict with that one"),
        ));
    }
    Ok(())
}

/// The recipe `train` recorded ([`train::provenance::recipe`]).
fn recipe_of<'c>(path: &Path, ck: &'c Checkpoint) -> Result<&'c serde_json::Value, PredictError> {
    let recipe = &ck.model_config[RECIPE_CONFIG_KEY];
    if recipe.is_null() {
        return Err(bad(
            path,
            "records no preprocessing (a checkpoint from before `predict`, or a resume file): retrain it",
        ));
    }
    Ok(recipe)
}

/// The open-set rule the user's choice and the stored calibration give.
fn rule_in_force(path: &Path, unknown: UnknownRule, stored: Option<OpenSet>) -> Option<Rule> {
    match (unknown, &stored) {
        (UnknownRule::Off, _) => None,
        (UnknownRule::Threshold(t), Some(s)) => Some(Rule {
            score: s.score,
            threshold: t,
            source: "--unknown-threshold",
            stored: stored.clone(),
        }),
        (UnknownRule::Threshold(t), None) => Some(Rule {
            score: ScoreKind::Probability,
            threshold: t,
            source: "--unknown-threshold",
            stored: None,
        }),
        (UnknownRule::Stored, Some(s)) => Some(Rule {
            score: s.score,
            threshold: s.threshold,
            source: "checkpoint",
            stored: stored.clone(),
        }),
        (UnknownRule::Stored, None) => {
            tracing::warn!(
                "{}: no unknown-face threshold stored (no validation faces); every face gets a name",
                path.display()
            );
            None
        }
    }
}

/// The recipe's teacher, for a model that needs one.
fn teacher_of(
    path: &Path,
    recipe: &serde_json::Value,
    device: DeviceChoice,
) -> Result<(Teacher, String), PredictError> {
    let t = &recipe["teacher"];
    if t.is_null() {
        return Err(bad(path, "needs a teacher but records none"));
    }
    teacher_from(path, t, device)
}

/// The preprocessing the faces were made with, checked against what it recorded: the same
/// landmark model (path and size) and CNN detector (digest); a file that moved or changed
/// is an error, not a silent other preprocessing.
fn aligner_from(
    path: &Path,
    faces: &serde_json::Value,
    device: DeviceChoice,
) -> Result<Aligner, PredictError> {
    if faces["producer"].as_str() != Some("preprocess") {
        return Err(bad(path, "its faces were not made by `preprocess`"));
    }
    let mut cfg: PreprocessConfig =
        serde_json::from_value(faces["config"].clone()).map_err(|e| {
            bad(
                path,
                format!("recorded preprocessing does not parse here: {e}"),
            )
        })?;
    cfg.device = device;
    let inputs = &faces["inputs"];
    if cfg.mode != preprocess::Mode::AsIs {
        if let Some(want) = inputs["landmarks"].as_str() {
            let len = std::fs::metadata(&cfg.landmarks).map(|m| m.len()).ok();
            let have = len.map(|l| format!("{}:{l}", cfg.landmarks.display()));
            if have.as_deref() != Some(want) {
                return Err(bad(
                    path,
                    format!(
                        "trained on faces aligned with the landmark model {want} (path:size); {} is {}",
                        cfg.landmarks.display(),
                        if len.is_some() { "another file" } else { "missing" }
                    ),
                ));
            }
        }
        if let Some(model) = &cfg.detector.cnn_model {
            let want = inputs["cnn_model"].as_str().unwrap_or_default();
            let have = artifacts::digest_file(model).map_err(|source| PredictError::Detector {
                path: path.to_path_buf(),
                detector: model.clone(),
                source: Box::new(source),
            })?;
            if have != want {
                return Err(bad(
                    path,
                    format!(
                        "{} is not the CNN detector its faces were found with ({want})",
                        model.display()
                    ),
                ));
            }
        }
    }
    Aligner::new(&cfg).map_err(|e| bad(path, format!("its preprocessing cannot run here: {e}")))
}

/// The teacher of the recipe, checked to be the same network (identity).
fn teacher_from(
    path: &Path,
    t: &serde_json::Value,
    device: DeviceChoice,
) -> Result<(Teacher, String), PredictError> {
    let mut cfg: ExtractConfig = serde_json::from_value(t["config"].clone()).map_err(|e| {
        bad(
            path,
            format!("recorded teacher settings do not parse here: {e}"),
        )
    })?;
    cfg.cache_dir = None;
    cfg.device = device;
    let want = t["identity"].as_str().unwrap_or_default().to_string();
    let teacher = Teacher::load(&cfg).map_err(|e| {
        bad(
            path,
            format!("its teacher {} cannot be loaded: {e}", cfg.teacher),
        )
    })?;
    if teacher.resolved.identity != want {
        return Err(bad(
            path,
            format!(
                "trained with teacher {want}, but {} is {}",
                cfg.teacher, teacher.resolved.identity
            ),
        ));
    }
    if t["layer"].as_str() != Some(teacher.layer_name().as_str()) {
        return Err(bad(
            path,
            format!(
                "trained on the teacher's layer {}, not {}",
                t["layer"],
                teacher.layer_name()
            ),
        ));
    }
    if t["dim"].as_u64() != Some(teacher.dim() as u64) {
        return Err(bad(
            path,
            "the teacher's width differs from the recorded one",
        ));
    }
    Ok((teacher, want))
}
