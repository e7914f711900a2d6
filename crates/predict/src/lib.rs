//! Using a trained model: name the people in new photos, every face of each, and say
//! "unknown" for faces too far from everyone the model knows.
//!
//! [`model`] loads a checkpoint with its recorded preprocessing, teacher and open-set rule;
//! [`run`] takes photos through them; [`output`] prints; [`annotate`] draws; [`group`]
//! gathers the unknown faces into people and [`add`] adds the named ones to the data.

pub mod add;
pub mod annotate;
pub mod group;
pub mod model;
pub mod output;
pub mod run;

pub use model::{Model, ModelOptions, UnknownRule};
pub use run::{predict_photos, FaceResult, PhotoResult, Timings};

use std::path::{Path, PathBuf};

/// What can go wrong in predicting: the model (each failure names the checkpoint), the
/// default model's lookup, the photos, the teacher.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The checkpoint cannot be used here (the problem says why).
    #[error("model {path}: {problem}")]
    Model { path: PathBuf, problem: String },
    #[error("model {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        source: Box<artifacts::ArtifactError>,
    },
    /// Loading or running the trained classifier failed.
    #[error("model {path}: {source}")]
    Classifier {
        path: PathBuf,
        source: Box<train::TrainError>,
    },
    #[error("model {path}: {source}")]
    OpenSet {
        path: PathBuf,
        source: Box<train::open_set::OpenSetError>,
    },
    /// The CNN detector the faces were found with cannot be read.
    #[error("model {path}: its faces were found by the CNN detector {}: {source}", detector.display())]
    Detector {
        path: PathBuf,
        detector: PathBuf,
        source: Box<artifacts::ArtifactError>,
    },
    #[error("{0}")]
    Device(candle_core::Error),
    #[error("no trained model given and {summary} is unreadable ({source}); run `cargo xtask pipeline` or pass --model")]
    NoPipelineSummary {
        summary: PathBuf,
        source: std::io::Error,
    },
    #[error("{summary}: {source}")]
    PipelineSummary {
        summary: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0} names no best model (did every training fail?); pass --model")]
    NoBestModel(PathBuf),
    #[error("{summary} names {checkpoint} as the best model, but it is missing")]
    BestModelMissing {
        summary: PathBuf,
        checkpoint: PathBuf,
    },
    /// Models run together must share their preprocessing.
    #[error("{first} and {other} were trained on faces preprocessed differently")]
    MixedPreprocessing { first: PathBuf, other: PathBuf },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("teacher: {0}")]
    Teacher(#[from] inception_bottleneck::Error),
}

/// File extensions taken from folders (named files are taken whatever their name).
pub const PHOTO_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "jfif",
];

/// A photo to predict and its path below the argument it came from (for `--annotate`).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub relative: PathBuf,
}

/// The photos named by `args`: files as given, folders searched recursively for photo
/// extensions (hidden entries skipped), sorted within each folder. A missing path is an
/// error.
pub fn list_photos(args: &[PathBuf]) -> Result<Vec<Input>, PredictError> {
    let mut out = Vec::new();
    for a in args {
        let meta = std::fs::metadata(a).map_err(|e| PredictError::Io(a.clone(), e))?;
        if meta.is_dir() {
            // Each real folder once: a link back up the tree is skipped (and logged).
            let found = preprocess::walk::walk(a, is_photo_name)
                .map_err(|e| PredictError::Io(a.clone(), e))?
                .files;
            out.extend(found.into_iter().map(|p| Input {
                relative: p.strip_prefix(a).unwrap_or(&p).to_path_buf(),
                path: p,
            }));
        } else {
            out.push(Input {
                relative: a
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| a.clone()),
                path: a.clone(),
            });
        }
    }
    Ok(out)
}

fn is_photo_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PHOTO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The model `cargo xtask pipeline` found best by validation accuracy, from its
/// `summary.json` in `dir`.
pub fn best_of_pipeline(dir: &Path) -> Result<PathBuf, PredictError> {
    let summary = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&summary).map_err(|source| PredictError::NoPipelineSummary {
            summary: summary.clone(),
            source,
        })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| PredictError::PipelineSummary {
            summary: summary.clone(),
            source,
        })?;
    let ck = v["best"]["checkpoint"]
        .as_str()
        .ok_or_else(|| PredictError::NoBestModel(summary.clone()))?;
    let ck = PathBuf::from(ck);
    // Recorded relative to where the pipeline ran; also look beside the summary.
    if ck.exists() {
        return Ok(ck);
    }
    let beside = dir.join(ck.file_name().unwrap_or_default());
    if beside.exists() {
        return Ok(beside);
    }
    Err(PredictError::BestModelMissing {
        summary,
        checkpoint: ck,
    })
}

/// The model and rule in one log line.
pub fn describe_line(model: &Model) -> String {
    format!(
        "model {} ({}, {} people){}",
        model.path.display(),
        model.kind,
        model.class_names.len(),
        match &model.rule {
            Some(r) => format!(
                "; unknown above {:.3} ({}, from the {})",
                r.threshold,
                r.score.describe(),
                r.source
            ),
            None => "; closed set".into(),
        }
    )
}

/// The model and rule, as the JSON output and the log describe them.
pub fn describe(model: &Model) -> serde_json::Value {
    serde_json::json!({
        "checkpoint": model.path,
        "kind": model.kind,
        "classes": model.class_names,
        "teacher": model.teacher_identity,
        "detector": model.aligner.config().detector.kind.to_string(),
        "unknown_rule": model.rule.as_ref().map(|r| serde_json::json!({
            "score": r.score,
            "threshold": r.threshold,
            "source": r.source,
            "calibration": r.stored,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_searched_and_files_taken_as_given() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for f in [
            "a/1.jpg",
            "a/b/2.PNG",
            "a/notes.txt",
            "a/.hidden.jpg",
            "x.data",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let got = list_photos(&[root.join("a"), root.join("x.data")]).unwrap();
        let rel: Vec<String> = got
            .iter()
            .map(|i| i.relative.display().to_string())
            .collect();
        assert_eq!(rel, ["1.jpg", "b/2.PNG", "x.data"]);
        assert!(matches!(
            list_photos(&[root.join("missing")]),
            Err(PredictError::Io(..))
        ));
    }

    #[test]
    fn the_pipeline_best_model_is_found_or_the_reason_given() {
        let d = tempfile::tempdir().unwrap();
        let e = best_of_pipeline(d.path()).unwrap_err().to_string();
        assert!(e.contains("cargo xtask pipeline"), "{e}");
        std::fs::write(d.path().join("m.safetensors"), b"").unwrap();
        std::fs::write(
            d.path().join("summary.json"),
            r#"{"best": {"checkpoint": "elsewhere/m.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            best_of_pipeline(d.path()).unwrap(),
            d.path().join("m.safetensors")
        );
        std::fs::write(d.path().join("summary.json"), r#"{"best": null}"#).unwrap();
        assert!(best_of_pipeline(d.path())
            .unwrap_err()
            .to_string()
            .contains("no best model"));
    }
}
