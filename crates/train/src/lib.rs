//! Training the student the study's two ways (2step, cosine), plus the no-transfer base
//! model and a linear probe on the teacher, with exact resume and k-fold cross-validation.
//!
//! Split like burn's guide: [`data`] (artifacts -> tensors), [`training`] (the loop),
//! [`inference`] (checkpoint -> predictions), [`distill`] (consistent views and a metric
//! teacher's losses), [`probe`], [`optim`], [`cv`]; [`open_set`]
//! (the "unknown" rule stored with a checkpoint), [`provenance`] (what a checkpoint
//! records of its inputs), [`layout`] (the names a checkpoint stores them under), [`cli`]
//! (the `train` command), [`error`].

pub mod cli;
pub mod cv;
pub mod data;
pub mod distill;
pub mod error;
pub mod inference;
pub mod layout;
pub mod open_set;
pub mod optim;
pub mod probe;
pub mod provenance;
pub mod training;

pub use data::{Dataset, TargetNorm};
pub use error::{CheckpointError, ConfigError, DataError, TrainError};
pub use training::{Outcome, Partition, RunFiles, TrainConfig, TrainMode, Trainer};

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
