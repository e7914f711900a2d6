//! Where dlib's published model files are found: an explicit path, the project's model
//! cache, or the copy that `pip install face_recognition_models` ships. One finder for
//! every stage that needs one of them.

use std::path::{Path, PathBuf};

/// One of dlib's published model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFile {
    /// File name in dlib's downloads and in the cache.
    pub file: &'static str,
    /// SHA-256 of the decompressed file.
    pub sha256: &'static str,
    /// dlib's official download (bzip2).
    pub url: &'static str,
    /// Size of the `.bz2` download, about (for a download's progress bar).
    pub bz2_bytes: u64,
    /// The function of the Python package `face_recognition_models` that returns its copy.
    pub python_fn: &'static str,
    /// What it is, for messages.
    pub what: &'static str,
}

/// dlib's ResNet face descriptor (`dnn_face_recognition_ex.cpp`).
pub const FACE_DESCRIPTOR: ModelFile = ModelFile {
    file: "dlib_face_recognition_resnet_model_v1.dat",
    sha256: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    url: "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2",
    bz2_bytes: 21_428_389,
    python_fn: "face_recognition_model_location",
    what: "dlib's face descriptor model",
};

/// dlib's CNN face detector (`dnn_mmod_face_detection_ex.cpp`).
pub const FACE_DETECTOR: ModelFile = ModelFile {
    file: "mmod_human_face_detector.dat",
    sha256: "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
    url: "http://dlib.net/files/mmod_human_face_detector.dat.bz2",
    bz2_bytes: 694_709,
    python_fn: "cnn_face_detector_model_location",
    what: "dlib's CNN face detector model",
};

/// The project's model cache: `CELEB_TRANSFER_MODELS`, else `data/models`.
pub fn model_cache() -> PathBuf {
    std::env::var_os("CELEB_TRANSFER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data/models"))
}

/// Where `face_recognition_models` put its copy, if Python has the package.
pub fn python_package_copy(m: &ModelFile) -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import face_recognition_models as m; print(m.{}())",
                m.python_fn
            ),
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// A model file that is not where it was looked for, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct NotFound {
    pub path: PathBuf,
    pub problem: String,
}

/// Finds `m`: `explicit` when given (it must exist), else the model cache, else the
/// Python package. The error says how to get the file.
pub fn locate(m: &ModelFile, explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(NotFound {
                path: p.to_path_buf(),
                problem: "no such file".into(),
            })
        };
    }
    let cached = model_cache().join(m.file);
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(p) = python_package_copy(m) {
        tracing::info!(
            "{} from the Python package face_recognition_models: {}",
            m.what,
            p.display()
        );
        return Ok(p);
    }
    Err(NotFound {
        problem: format!(
            "{} is not here: pass its path ({}), `pip install face_recognition_models`, or \
             download {}, decompress it (bunzip2) into {} and check its SHA-256 ({}); \
             `cargo xtask pipeline` offers that download when online",
            m.what,
            m.file,
            m.url,
            model_cache().display(),
            m.sha256
        ),
        path: cached,
    })
}
