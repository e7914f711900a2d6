//! The what-the-teacher-knows reference: a linear softmax classifier on the teacher's
//! standardised bottlenecks.

use crate::data::{normalize_targets, rows, Dataset, TargetNorm};
use crate::optim::AdamW;
use crate::training::{count_correct, Outcome, Partition, RunFiles, TrainConfig, TrainMode};
use crate::TrainError;
use artifacts::{Checkpoint, NamedTensor, Provenance};
use candle_core::{DType, Tensor, Var};
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
    let b = data.teacher.as_ref().ok_or_else(|| {
        TrainError::Config("--probe needs the teacher's bottlenecks (--bottlenecks FILE)".into())
    })?;
    if part.train.is_empty() {
        return Err(TrainError::Data("the training split is empty".into()));
    }
    let device = artifacts::device::pick(cfg.device)?;
    let (z, mean, std) =
        normalize_targets(&b.features, b.dim, &part.train, TargetNorm::Standardize);
    let classes = data.num_classes();
    let w = Var::zeros((classes, b.dim), DType::F32, &device)?;
    let bias = Var::zeros(classes, DType::F32, &device)?;
    let mut opt = AdamW::new(
        vec![
            ("probe.weight".into(), w.clone()),
            ("probe.bias".into(), bias.clone()),
        ],
        cfg.optim,
    )?;
    let labels = |idx: &[usize]| {
        Tensor::from_vec(
            idx.iter()
                .map(|&i| data.faces.labels[i])
                .collect::<Vec<u32>>(),
            idx.len(),
            &device,
        )
    };
    let accuracy = |idx: &[usize]| -> Result<f64, TrainError> {
        if idx.is_empty() {
            return Ok(f64::NAN);
        }
        let x = rows(&z, b.dim, idx, &device)?;
        let logits = x
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())?;
        Ok(count_correct(&logits, idx, &data.faces.labels)? as f64 / idx.len() as f64)
    };
    let mut best = (
        f64::NEG_INFINITY,
        0usize,
        w.as_tensor().copy()?,
        bias.as_tensor().copy()?,
    );
    let mut bad = 0;
    let mut samples = 0u64;
    for epoch in 0..cfg.epochs {
        let mut rng =
            StdRng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order = part.train.clone();
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let x = rows(&z, b.dim, chunk, &device)?;
            let logits = x
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(bias.as_tensor())?;
            let loss = losses::cross_entropy(&logits, &labels(chunk)?)?;
            opt.backward_step(&loss, cfg.optim.lr, &|_| false)?;
            samples += chunk.len() as u64;
        }
        let score = if part.val.is_empty() {
            epoch as f64
        } else {
            accuracy(&part.val)?
        };
        if score > best.0 {
            best = (
                score,
                epoch + 1,
                w.as_tensor().copy()?,
                bias.as_tensor().copy()?,
            );
            bad = 0;
        } else {
            bad += 1;
            if cfg.patience > 0 && bad >= cfg.patience {
                break;
            }
        }
    }
    w.set(&best.2)?;
    bias.set(&best.3)?;
    let test_acc = (!part.test.is_empty())
        .then(|| accuracy(&part.test))
        .transpose()?;
    let val_acc = (!part.val.is_empty())
        .then(|| accuracy(&part.val))
        .transpose()?;
    if let Some(out) = &files.output {
        let named = |t: &Tensor| -> Result<NamedTensor, TrainError> {
            Ok(NamedTensor {
                shape: t.dims().to_vec(),
                data: t.flatten_all()?.to_vec1::<f32>()?,
            })
        };
        let mut weights = BTreeMap::new();
        weights.insert("probe.weight".to_string(), named(w.as_tensor())?);
        weights.insert("probe.bias".to_string(), named(bias.as_tensor())?);
        weights.insert(
            "probe.feature_mean".to_string(),
            NamedTensor {
                shape: vec![b.dim],
                data: mean,
            },
        );
        weights.insert(
            "probe.feature_std".to_string(),
            NamedTensor {
                shape: vec![b.dim],
                data: std,
            },
        );
        let f = &data.faces;
        Checkpoint {
            weights,
            optimizer: BTreeMap::new(),
            mean_image: NamedTensor { shape: vec![f.height, f.width, 3], data: data.mean_image(&part.train) },
            model_config: serde_json::json!({ "kind": "probe", "dim": b.dim, "num_classes": classes, "class_names": f.class_names }),
            train_state: serde_json::json!({ "config": cfg, "best_epoch": best.1, "final": true }),
            provenance: {
                let p = Provenance::new(env!("CARGO_PKG_NAME"), artifacts::build_version(), serde_json::to_value(cfg).expect("plain"))
                    .with_input("faces", data.faces_digest.clone())
                    .with_input("bottlenecks", data.bottlenecks_digest.clone().unwrap_or_default());
                match &data.exclusions_digest {
                    Some(d) => p.with_input("exclusions", d.clone()),
                    None => p,
                }
            },
        }
        .write(out)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        mode: TrainMode::Probe,
        test_acc,
        val_acc,
        best_epochs: vec![best.1],
        epochs_run: cfg.epochs,
        seconds: secs,
        samples_per_second: samples as f64 / secs.max(1e-9),
        device: artifacts::device::describe(&device),
        mirrored_targets: false,
    })
}
