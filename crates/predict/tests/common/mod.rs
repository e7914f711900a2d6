//! What the predict tests share: a short training run on a faces artifact, and a model
//! opened on the CPU.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// CI-length training: `epochs` epochs, no minimum step count, no early stop, on the CPU
/// (as the `strangers` example trains).
pub fn short(mode: train::TrainMode, epochs: usize) -> train::TrainConfig {
    train::TrainConfig {
        mode,
        epochs,
        phase1_epochs: epochs.div_ceil(2),
        min_steps: 0,
        patience: 0,
        device: artifacts::device::DeviceChoice::Cpu,
        ..Default::default()
    }
}

/// Trains `mode` on `faces` (and the teacher's `bottlenecks` when the mode needs them)
/// into `dir/student-<mode>.safetensors`, `batch` images a step.
pub fn train_short(
    faces: &Path,
    bottlenecks: Option<&Path>,
    (mode, epochs, batch): (train::TrainMode, usize, usize),
    dir: &Path,
) -> PathBuf {
    let data = train::Dataset::load(faces, bottlenecks.filter(|_| mode.needs_teacher())).unwrap();
    let ck = dir.join(format!("student-{}.safetensors", mode.name()));
    let mut files = train::RunFiles::beside(&ck);
    files.progress = false;
    let cfg = train::TrainConfig {
        batch,
        ..short(mode, epochs)
    };
    train::train(&data, &cfg, &train::stored_partition(&data), &files).unwrap();
    ck
}

pub fn open(
    ck: &Path,
    unknown: predict::UnknownRule,
    faces: preprocess::FaceSearch,
) -> predict::Model {
    predict::Model::open(
        ck,
        &predict::ModelOptions {
            device: artifacts::device::DeviceChoice::Cpu,
            unknown,
            faces,
        },
    )
    .unwrap()
}
