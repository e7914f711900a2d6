//! The face-identity teacher: dlib's ResNet face descriptor (`--teacher dlib-face` or a
//! `.dat` path), 128-d, run on the dlib chips that `preprocess` cuts beside each face.

use crate::teacher::TeacherError;
use std::path::{Path, PathBuf};

/// `--teacher` value that selects dlib's face descriptor.
pub const FACE_TEACHER: &str = "dlib-face";
pub const MODEL_FILE: &str = "dlib_face_recognition_resnet_model_v1.dat";
/// SHA-256 of dlib's published (decompressed) model file.
pub const MODEL_SHA256: &str = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30";
/// dlib's official download (bzip2), for the offer when no copy is found.
pub const MODEL_URL: &str = "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2";

pub fn is_face_teacher(spec: &str) -> bool {
    spec == FACE_TEACHER || spec.ends_with(".dat")
}

/// The project's model cache: `CELEB_TRANSFER_MODELS`, else `data/models`.
pub fn model_cache() -> PathBuf {
    std::env::var_os("CELEB_TRANSFER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data/models"))
}

/// Where `pip install face_recognition_models` put its copy, if Python has it.
fn python_package_copy() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import face_recognition_models as m; print(m.face_recognition_model_location())",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// Finds the model file: an explicit `.dat` path; the project's model cache; the Python
/// package `face_recognition_models`. Otherwise says how to get it.
pub fn locate(spec: &str) -> Result<PathBuf, TeacherError> {
    if spec != FACE_TEACHER {
        let p = Path::new(spec);
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(TeacherError::BadFile {
                path: p.to_path_buf(),
                problem: "no such file".into(),
            })
        };
    }
    let cached = model_cache().join(MODEL_FILE);
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(p) = python_package_copy() {
        tracing::info!(
            "face teacher from the Python package face_recognition_models: {}",
            p.display()
        );
        return Ok(p);
    }
    Err(TeacherError::BadFile {
        path: cached,
        problem: format!(
            "dlib's face descriptor model is not here: pass --teacher PATH/{MODEL_FILE}, \
             `pip install face_recognition_models`, or download {MODEL_URL}, decompress it \
             (bunzip2) into {} and check its SHA-256 ({MODEL_SHA256}); \
             `cargo xtask pipeline` offers that download when online",
            model_cache().display()
        ),
    })
}

/// `dlib-face:<file>#<digest>`, warning when the file is not dlib's published model.
pub fn identity(path: &Path) -> Result<String, TeacherError> {
    let d = artifacts::digest_file(path).map_err(|e| TeacherError::BadFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let hex = d.trim_start_matches("sha256:");
    if hex != MODEL_SHA256 {
        tracing::warn!(
            "{}: SHA-256 {hex} is not dlib's published face model; using it anyway",
            path.display()
        );
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!("dlib-face:{name}#{}", &hex[..16]))
}
