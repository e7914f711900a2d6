//! Training the student the study's two ways (2step, cosine), plus the no-transfer base
//! model and a linear probe on the teacher, with exact resume and k-fold cross-validation.
//!
//! Split like burn's guide: [`data`] (artifacts -> tensors), [`training`] (the loop),
//! [`inference`] (checkpoint -> predictions), [`probe`], [`optim`], [`cv`].

pub mod cv;
pub mod data;
pub mod inference;
pub mod open_set;
pub mod optim;
pub mod probe;
pub mod training;

pub use data::{Dataset, TargetNorm};
pub use training::{Outcome, Partition, RunFiles, TrainConfig, TrainMode, Trainer};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Config(String),
    #[error("stopped after {0} epochs as asked; continue with --resume")]
    Interrupted(usize),
    #[error("the loss became NaN or infinite in phase {phase}, epoch {epoch}, batch {batch}; lower --lr or check the inputs (last good checkpoint: {})", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()))]
    NonFinite {
        phase: usize,
        epoch: usize,
        batch: usize,
        checkpoint: Option<PathBuf>,
    },
}

/// The split stored in the faces artifact as a [`Partition`].
pub fn stored_partition(data: &Dataset) -> Partition {
    use artifacts::Split;
    Partition {
        train: data.indices(Split::Train),
        val: data.indices(Split::Val),
        test: data.indices(Split::Test),
    }
}

/// Trains one mode on one partition; the checkpoint written (if any) gets the recipe of
/// its inputs and the open-set rule ([`open_set::seal`]).
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    part: &Partition,
    files: &RunFiles,
) -> Result<Outcome, TrainError> {
    let out = match cfg.mode {
        TrainMode::Probe => probe::train(data, cfg, part, files)?,
        _ => Trainer::new(data, cfg, part)?.run(part, files)?,
    };
    if let Some(path) = &files.output {
        open_set::seal(data, part, cfg.unknown_rate, path)?;
    }
    Ok(out)
}
