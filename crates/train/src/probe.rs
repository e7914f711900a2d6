//! The what-the-teacher-knows reference: a linear softmax classifier on the teacher's
//! standardised bottlenecks.

use crate::data::{normalize_targets, rows, Dataset, TargetNorm};
use crate::optim::AdamW;
use crate::training::{count_correct, named, Outcome, Partition, RunFiles, TrainConfig, TrainMode};
use crate::{ConfigError, DataError, TrainError};
use artifacts::{Checkpoint, NamedTensor};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;

/// Trains the probe; selects the epoch by validation accuracy when there is a validation split.
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    part: &Partition,
    files: &RunFiles,
) -> Result<Outcome, TrainError> {
    let start = std::time::Instant::now();
    let b = data
        .teacher
        .as_ref()
        .ok_or(ConfigError::NeedsTeacher(TrainMode::Probe.name()))?;
    if part.train.is_empty() {
        return Err(DataError::EmptyTrainSplit.into());
    }
    let device = kernels::device::pick(cfg.device)?;
    let (z, mean, std) =
        normalize_targets(&b.features, b.dim, &part.train, TargetNorm::Standardize);
    let probe = Probe::zeros(data, z, b.dim, &device)?;
    let fit = probe.fit(cfg, part)?;
    let test_acc = probe.split_accuracy(&part.test)?;
    let val_acc = probe.split_accuracy(&part.val)?;
    if let Some(out) = &files.output {
        probe
            .checkpoint(cfg, part, fit.best_epoch, (mean, std))?
            .write(out)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        mode: TrainMode::Probe,
        test_acc,
        val_acc,
        best_epochs: vec![fit.best_epoch],
        epochs_run: cfg.epochs,
        seconds: secs,
        samples_per_second: fit.samples as f64 / secs.max(1e-9),
        device: kernels::device::describe(&device),
        mirrored_targets: false,
    })
}

/// The probe's weights and the standardised teacher features it reads.
struct Probe<'a> {
    data: &'a Dataset,
    /// Standardised teacher features [n, dim].
    z: Vec<f32>,
    dim: usize,
    w: Var,
    bias: Var,
    device: Device,
}

/// What fitting reports.
struct Fit {
    /// 1-based epoch whose weights were kept.
    best_epoch: usize,
    samples: u64,
}

impl<'a> Probe<'a> {
    fn zeros(
        data: &'a Dataset,
        z: Vec<f32>,
        dim: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let classes = data.num_classes();
        Ok(Probe {
            data,
            z,
            dim,
            w: Var::zeros((classes, dim), DType::F32, device)?,
            bias: Var::zeros(classes, DType::F32, device)?,
            device: device.clone(),
        })
    }

    fn logits(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let x = rows(&self.z, self.dim, idx, &self.device)?;
        x.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }

    fn labels(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let l: Vec<u32> = idx.iter().map(|&i| self.data.faces.labels[i]).collect();
        Tensor::from_vec(l, idx.len(), &self.device)
    }

    fn accuracy(&self, idx: &[usize]) -> Result<f64, TrainError> {
        if idx.is_empty() {
            return Ok(f64::NAN);
        }
        let logits = self.logits(idx)?;
        Ok(count_correct(&logits, idx, &self.data.faces.labels)? as f64 / idx.len() as f64)
    }

    /// Accuracy on a split, `None` when it is empty.
    fn split_accuracy(&self, idx: &[usize]) -> Result<Option<f64>, TrainError> {
        (!idx.is_empty()).then(|| self.accuracy(idx)).transpose()
    }

    /// AdamW on seeded shuffled batches; keeps the epoch with the best validation accuracy
    /// (the latest without a validation split), stopping after `patience` worse epochs.
    fn fit(&self, cfg: &TrainConfig, part: &Partition) -> Result<Fit, TrainError> {
        let mut opt = AdamW::new(
            vec![
                ("probe.weight".into(), self.w.clone()),
                ("probe.bias".into(), self.bias.clone()),
            ],
            cfg.optim,
        )?;
        let mut best = (f64::NEG_INFINITY, 0usize, self.copy()?);
        let mut bad = 0;
        let mut samples = 0u64;
        for epoch in 0..cfg.epochs {
            samples += self.epoch(&mut opt, cfg, part, epoch)?;
            let score = if part.val.is_empty() {
                epoch as f64
            } else {
                self.accuracy(&part.val)?
            };
            if score > best.0 {
                best = (score, epoch + 1, self.copy()?);
                bad = 0;
            } else {
                bad += 1;
                if cfg.patience > 0 && bad >= cfg.patience {
                    break;
                }
            }
        }
        self.w.set(&best.2 .0)?;
        self.bias.set(&best.2 .1)?;
        Ok(Fit {
            best_epoch: best.1,
            samples,
        })
    }

    /// One epoch of updates; returns the samples seen.
    fn epoch(
        &self,
        opt: &mut AdamW,
        cfg: &TrainConfig,
        part: &Partition,
        epoch: usize,
    ) -> Result<u64, TrainError> {
        let mut rng =
            StdRng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order = part.train.clone();
        order.shuffle(&mut rng);
        let mut samples = 0u64;
        for chunk in order.chunks(cfg.batch.max(1)) {
            let logits = self.logits(chunk)?;
            let loss = losses::cross_entropy(&logits, &self.labels(chunk)?)?;
            opt.backward_step(&loss, cfg.optim.lr, &|_| false)?;
            samples += chunk.len() as u64;
        }
        Ok(samples)
    }

    /// A copy of the weights (for selection).
    fn copy(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.w.as_tensor().copy()?, self.bias.as_tensor().copy()?))
    }

    /// The probe's checkpoint: its weights, the feature standardisation (`mean`, `std`),
    /// and the config and provenance of the run.
    fn checkpoint(
        &self,
        cfg: &TrainConfig,
        part: &Partition,
        best_epoch: usize,
        (mean, std): (Vec<f32>, Vec<f32>),
    ) -> Result<Checkpoint, TrainError> {
        let dim = self.dim;
        let mut weights = BTreeMap::new();
        weights.insert("probe.weight".to_string(), named(self.w.as_tensor())?);
        weights.insert("probe.bias".to_string(), named(self.bias.as_tensor())?);
        weights.insert(
            "probe.feature_mean".to_string(),
            NamedTensor {
                shape: vec![dim],
                data: mean,
            },
        );
        weights.insert(
            "probe.feature_std".to_string(),
            NamedTensor {
                shape: vec![dim],
                data: std,
            },
        );
        let f = &self.data.faces;
        Ok(Checkpoint {
            weights,
            optimizer: BTreeMap::new(),
            mean_image: NamedTensor {
                shape: vec![f.height, f.width, 3],
                data: self.data.mean_image(&part.train),
            },
            model_config: serde_json::json!({ "kind": "probe", "dim": dim, "num_classes": self.data.num_classes(), "class_names": f.class_names }),
            train_state: serde_json::json!({ "config": cfg, "best_epoch": best_epoch, "final": true }),
            provenance: crate::provenance::of_checkpoint(cfg, self.data),
        })
    }
}
