//! What goes wrong: [`PreprocessError`] ends a run (or a model's set-up); [`FaceError`] is
//! why one photo gives no face, the reason its reject records. The texts are what users
//! (and `rejects.json`) see, so they say what to do where there is something to do.

use crate::decode::DecodeError;
use crate::detect::{CascadeError, DetectorKind};
use crate::split::SplitFileError;
use std::path::PathBuf;

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
    /// The landmark model is not the 68-point one the alignment's points index.
    #[error("{path}: {parts} landmarks; the 68-point model is needed")]
    LandmarkCount { path: PathBuf, parts: usize },
    /// Below 16 pixels the mask and the landmark re-fit of the quality report break down.
    #[error("--val-percent and --test-percent must be >= 0 and add up to at most 100")]
    Fractions,
    #[error("--size must be at least 16")]
    SizeTooSmall(usize),
    /// The detector asked for needs the CNN's model file, and it is not there.
    #[error("--detector {kind}: {error}")]
    DetectorModel {
        kind: DetectorKind,
        error: artifacts::models::NotFound,
    },
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    /// The device the CNN detector was to run on cannot be used.
    #[error("{0}")]
    Device(candle_core::Error),
    /// dlib's CNN detector file cannot be read.
    #[error("{0}")]
    CnnModel(dlib_dnn::Error),
    #[error(transparent)]
    SplitFile(#[from] SplitFileError),
    #[error("no photo produced a face ({0} rejected); see the rejects file")]
    NothingKept(usize),
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    /// The merge found shards missing or made otherwise than this run would make them.
    #[error("{dir}: {} of {count} shards cannot be merged:\n  {}\nmake them with `preprocess` (the same options; `--shard I/N` for part I of N)", problems.len(), problems.join("\n  "))]
    Shards {
        dir: std::path::PathBuf,
        count: usize,
        problems: Vec<String>,
    },
}

/// Why a photo gives no face (or no face that is kept): a reject's reason. The summary
/// groups rejects by the text before the first `:`, so details go after one.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("no face found")]
    NoFace,
    /// `haar+cnn`: the cascade's box is not a face and the CNN finds none elsewhere.
    #[error("not confirmed as a face (the CNN finds no face on the Haar box or elsewhere)")]
    NotConfirmed,
    #[error("face detection failed: {0}")]
    Haar(opencv::Error),
    #[error("CNN face detection failed: {0}")]
    Cnn(candle_core::Error),
    #[error("no landmark model loaded")]
    NoLandmarkModel,
    #[error("landmark fit failed: non-finite points")]
    NonFinite,
    #[error("landmark fit failed: eye distance {eyes:.0}px for a {width:.0}px face")]
    EyeDistance { eyes: f32, width: f32 },
    #[error("landmark fit failed: mouth not below the eyes")]
    MouthNotBelow,
    /// A truncated JPEG whose face reaches the rows the decoder filled in.
    #[error("truncated file (the face reaches the part of the photo that is missing)")]
    TruncatedFace,
    #[error("truncated file (an --as-is image is used whole, missing rows and all)")]
    TruncatedAsIs,
    #[error("bad buffer")]
    BadBuffer,
    #[error("warp failed: {0}")]
    Warp(opencv::Error),
    #[error("crop failed: {0}")]
    Crop(opencv::Error),
    #[error("landmarks give no face chip (degenerate shape)")]
    NoChip,
    /// A codec panicked on the photo (caught by [`crate::aligner::guarded`]).
    #[error("internal error while decoding (the photo is likely corrupt)")]
    Panicked,
    /// A `--split-file` run keeps only the photos the file lists.
    #[error("not listed in the split file")]
    NotInSplitFile,
}

/// For callers that keep a photo's failure as text (`predict`'s per-photo `error`), so
/// that `?` works in their closures passed to [`crate::aligner::guarded`].
impl From<FaceError> for String {
    fn from(e: FaceError) -> String {
        e.to_string()
    }
}
