//! What can go wrong in training, by kind: a bad setting, data that does not fit, a
//! checkpoint that does not fit, or the run itself (interrupted, diverged).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Boxed: a photo's path and reason would make every result of the crate large.
    #[error(transparent)]
    Views(Box<preprocess::views::ViewError>),
    #[error("stopped after {0} epochs as asked; continue with --resume")]
    Interrupted(usize),
    #[error("the loss became NaN or infinite in phase {phase}, epoch {epoch}, batch {batch}; lower --lr or check the inputs (last good checkpoint: {})", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()))]
    NonFinite {
        phase: usize,
        epoch: usize,
        batch: usize,
        checkpoint: Option<PathBuf>,
    },
}

/// Settings that cannot work (found before or without touching the data).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the probe is trained by probe::train")]
    ProbeIsNotAStudent,
    #[error("the bottlenecks' view recipe is unreadable (made by another release?): {0}")]
    ViewRecipe(String),
    #[error("--batch must be at least 1")]
    ZeroBatch,
    /// The mode (its name, e.g. `cosine`) distils from a teacher that was not given.
    #[error("--{0} needs the teacher's bottlenecks (--bottlenecks FILE)")]
    NeedsTeacher(&'static str),
    #[error("the probe needs the teacher's bottlenecks")]
    ProbeNeedsTeacher,
    #[error("no resume file")]
    NoResumeFile,
    #[error("{} was made with other settings; resume with the same flags or start afresh without --resume", .0.display())]
    ResumeSettings(PathBuf),
    #[error("cross-validation needs at least 2 folds")]
    TooFewFolds,
    #[error("--filters takes three numbers, e.g. 32,32,8 (got {0:?})")]
    Filters(Vec<usize>),
    #[error("--hidden takes two numbers, e.g. 100,100 (got {0:?})")]
    Hidden(Vec<usize>),
    #[error("--online-teacher runs dlib's face descriptor; these bottlenecks are {0:?}'s (make them with --teacher dlib-face)")]
    OnlineNeedsFaceTeacher(String),
    #[error("--online-teacher: {} is not the bottlenecks' teacher ({teacher}): the probe fitted on their rows would read another descriptor", path.display())]
    OnlineOtherTeacher { path: PathBuf, teacher: String },
    #[error("--online-teacher: {}: {problem}", path.display())]
    OnlineModel { path: PathBuf, problem: String },
    #[error("--online-teacher cuts views from the photos: the bottlenecks hold no views, so --photos DIR must name the folder preprocess read")]
    OnlineNeedsPhotos,
    #[error("--online-teacher computes the teacher on each fresh view: --view-targets fixed is the bank's ablation")]
    OnlineFixed,
    /// The student architecture flags do not make a network.
    #[error(transparent)]
    Student(candle_core::Error),
}

/// Artifacts whose contents cannot be trained on.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{} holds no faces", .0.display())]
    NoFaces(PathBuf),
    #[error("{} has {rows} rows but {} has {faces} faces; re-run inception-bottleneck", bottlenecks.display(), faces_path.display())]
    RowCount {
        bottlenecks: PathBuf,
        rows: usize,
        faces_path: PathBuf,
        faces: usize,
    },
    #[error("{} was made from another faces file (stale); re-run inception-bottleneck", .0.display())]
    StaleBottlenecks(PathBuf),
    #[error("the training split is empty")]
    EmptyTrainSplit,
    #[error("faces are {height}x{width}; the student needs square images")]
    NotSquare { height: usize, width: usize },
}

/// A checkpoint (final or resume file) that does not fit the model or this code.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint lacks weights: {0:?}")]
    MissingWeights(Vec<String>),
    #[error("checkpoint model config: {0}")]
    ModelConfig(serde_json::Error),
    #[error("checkpoint does not fit the model: missing {missing:?}, unexpected {extra:?}")]
    Misfit {
        missing: Vec<String>,
        extra: Vec<String>,
    },
    #[error("weight {name}: shape {shape:?}, model {model:?}")]
    WeightShape {
        name: String,
        shape: Vec<usize>,
        model: Vec<usize>,
    },
    #[error("{}: probe lacks `{key}`", path.display())]
    ProbeLacks { path: PathBuf, key: &'static str },
    #[error("{}: unknown model kind {kind:?}", path.display())]
    UnknownKind { path: PathBuf, kind: Option<String> },
    /// The resume file's training state does not parse.
    #[error("{}: {error}", path.display())]
    ResumeState {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl From<preprocess::views::ViewError> for TrainError {
    fn from(e: preprocess::views::ViewError) -> Self {
        TrainError::Views(Box::new(e))
    }
}
