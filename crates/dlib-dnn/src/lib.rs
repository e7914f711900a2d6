//! dlib's model files and networks: the serialization primitives (shared with the
//! 68-landmark shape predictor in `preprocess`), the DNN layer stack, a runnable graph on
//! the shared NHWC CPU kernels or candle ops, dlib's face descriptor and face chips.

pub mod chip;
pub mod dnn;
pub mod face;
pub mod geometry;
pub mod graph;
pub mod mmod;
pub mod serialize;

pub use dnn::Net;
pub use face::FaceDescriptor;
pub use graph::Kernels;
pub use mmod::FaceDetector;

use std::path::{Path, PathBuf};

/// Everything that can go wrong when loading a dlib model file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a dlib model file as expected: at byte {offset}: {what}")]
    Format {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    #[error("{path}: {error}")]
    Network { path: PathBuf, error: NetworkError },
}

/// Why a parsed file is not the network asked for, or cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("input is {found}, expected {expected}")]
    Input {
        found: String,
        expected: &'static str,
    },
    #[error("loss is not {0}")]
    Loss(&'static str),
    #[error("not {net}: {detail}")]
    Architecture { net: &'static str, detail: String },
    #[error("{count} detector windows{}: only one window without box regression is supported", if *.regression { " with box regression" } else { "" })]
    Windows { count: usize, regression: bool },
    #[error("the NHWC CPU kernels need the CPU and f32")]
    CpuKernelsNeedCpuF32,
    #[error("no wire given for the {0}")]
    MissingWire(&'static str),
    #[error("more wires than tag/skip and add_prev layers")]
    ExtraWires,
    /// A layer (by index in the file) this graph cannot run.
    #[error("layer {layer}: {problem}")]
    Layer { layer: usize, problem: &'static str },
    #[error("layer {layer}: affine of {affine} channels after a con of {con}")]
    AffineChannels {
        layer: usize,
        affine: usize,
        con: usize,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Memory-maps a model file.
pub fn read_file(path: &Path) -> Result<memmap2::Mmap, Error> {
    let io = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a read-only mapping of a model file we only read.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Reads a network file and builds one of dlib's networks from it, naming the file in
/// every error.
pub(crate) fn open_net<T>(
    path: &Path,
    build: impl FnOnce(&Net) -> Result<T, NetworkError>,
) -> Result<T, Error> {
    let net = Net::open(path)?;
    build(&net).map_err(|error| Error::Network {
        path: path.to_path_buf(),
        error,
    })
}
