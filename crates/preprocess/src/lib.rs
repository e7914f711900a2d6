//! Preprocessing: a folder of class folders of raw photos -> a `Faces` artifact of
//! aligned, masked faces, with every skipped file and its reason in `rejects.json`.
//!
//! Per photo: decode (bounded memory) -> Haar-cascade face detection (OpenCV) -> 68 dlib
//! landmarks (our own evaluator of dlib's model file) -> similarity alignment of faceswap's
//! `ALIGN_POINTS` onto a canonical template -> bilinear warp -> gaussian mask.

pub mod aligner;
pub mod config;
pub mod decode;
pub mod detect;
pub mod dlib;
pub mod error;
pub mod geometry;
pub mod mask;
pub mod montage;
pub mod pipeline;
pub mod quality;
pub mod shards;
pub mod split;
pub mod views;
pub mod walk;

pub use aligner::{AlignedFace, Aligner, FaceSearch};
pub use config::{Mode, PreprocessConfig};
pub use error::{FaceError, PreprocessError};
pub use pipeline::{run, Reject, RunSummary};
