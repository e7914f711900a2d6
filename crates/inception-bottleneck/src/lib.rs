//! The teacher: Inception-v3 in candle, weight loading from the Hugging Face hub or local
//! files, and cached extraction of pooled bottlenecks into a `Bottlenecks` artifact.

pub mod cache;
/// The NHWC CPU kernels, shared with dlib's networks.
pub use artifacts::nhwc as cpu_kernels;
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
    #[error("{0}")]
    Config(String),
}
