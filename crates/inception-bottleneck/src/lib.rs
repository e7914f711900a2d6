//! The teacher stage: every face through a teacher network, its outputs cached and
//! written as a `Bottlenecks` artifact the student trains against.
//!
//! Two teachers ([`extract::TeacherNet`]): the study's Inception-v3 in candle (weights
//! from the Hugging Face hub or local files; its 2048-d pool or any block, optionally
//! pooled on a grid), and dlib's face descriptor (`--teacher dlib-face`, 128-d, run on
//! dlib's face chips that preprocess stores beside the crops; see [`face_teacher`]). The
//! crate keeps its design-card name; a new teacher is a `TeacherNet` variant.

pub mod cache;
/// The NHWC CPU kernels, shared with dlib's networks.
pub use kernels::nhwc as cpu_kernels;
pub mod extract;
pub mod face_teacher;
pub mod inception;
pub mod retrain;
pub mod teacher;
pub mod weights;

pub use extract::{export_retrain, extract, ExtractConfig, Summary, Teacher};
pub use inception::InceptionV3;

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error(transparent)]
    Teacher(#[from] teacher::TeacherError),
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error(transparent)]
    Retrain(#[from] retrain::RetrainError),
    #[error(transparent)]
    Dlib(#[from] dlib_dnn::Error),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("--batch must be at least 1")]
    ZeroBatch,
    #[error("--grid must be at least 1")]
    ZeroGrid,
    #[error("unknown --layer `{0}`; use `pool` or a block name such as Mixed_6c")]
    UnknownLayer(String),
    #[error("--layer and --grid choose an Inception layer; dlib's face teacher has one output (the 128-d descriptor)")]
    FaceTeacherLayer,
    #[error("unknown --dtype `{0}` (f32, f16, bf16)")]
    UnknownDtype(String),
    #[error("{0} holds no faces")]
    NoFaces(PathBuf),
    /// `--shard`/`--merge` on a faces artifact that is one file.
    #[error("{0} is a single-file faces artifact, not sharded: run without --shard/--merge (or make it again with today's preprocess)")]
    NotSharded(PathBuf),
    /// The merge found bottleneck shards missing or made otherwise than this run would.
    #[error("{dir}: {} of {count} shards cannot be merged:\n  {}\nmake them with `inception-bottleneck` (the same options; `--shard I/N` for part I of N)", problems.len(), problems.join("\n  "))]
    Shards {
        dir: PathBuf,
        count: usize,
        problems: Vec<String>,
    },
    #[error(
        "{0} holds no dlib face chips (made by an older preprocess, or --as-is): re-run preprocess"
    )]
    NoChips(PathBuf),
    /// Boxed: a photo's path and reason would make every result of the crate large.
    #[error(transparent)]
    Views(Box<preprocess::views::ViewError>),
    #[error("--views needs --photos: the folder preprocess read, where the views are cut from")]
    ViewsNeedPhotos,
    #[error("--views needs the teacher itself: retrain.py files hold one output per face")]
    ViewsNeedTeacher,
    #[error("--mirror needs the teacher itself: retrain.py files hold no mirrored views")]
    MirrorNeedsTeacher,
    #[error("{bottlenecks} has {rows} rows but {faces_path} has {faces} faces")]
    RowCount {
        bottlenecks: PathBuf,
        rows: usize,
        faces_path: PathBuf,
        faces: usize,
    },
}

impl From<preprocess::views::ViewError> for Error {
    fn from(e: preprocess::views::ViewError) -> Self {
        Error::Views(Box::new(e))
    }
}
