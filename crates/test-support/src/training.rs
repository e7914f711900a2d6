//! Short trainings for the tests above the train stage: a model in seconds, on the CPU.

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
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    }
}

/// Trains `cfg` on `faces` (and the teacher's `bottlenecks` when the mode needs them) on
/// the stored split into `dir/student-<mode>.safetensors`, quietly; the checkpoint's path.
pub fn train_student(
    faces: &Path,
    bottlenecks: Option<&Path>,
    cfg: &train::TrainConfig,
    dir: &Path,
) -> PathBuf {
    let teacher = bottlenecks.filter(|_| cfg.mode.needs_teacher());
    let data = train::Dataset::load(faces, teacher).unwrap();
    let ck = dir.join(format!("student-{}.safetensors", cfg.mode.name()));
    let mut files = train::RunFiles::beside(&ck);
    files.progress = false;
    train::train(&data, cfg, &train::stored_partition(&data), &files).unwrap();
    ck
}

/// [`short`] training of `mode`, `batch` images a step, by [`train_student`].
pub fn train_short(
    faces: &Path,
    bottlenecks: Option<&Path>,
    (mode, epochs, batch): (train::TrainMode, usize, usize),
    dir: &Path,
) -> PathBuf {
    let cfg = train::TrainConfig {
        batch,
        ..short(mode, epochs)
    };
    train_student(faces, bottlenecks, &cfg, dir)
}
