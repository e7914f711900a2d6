//! `Checkpoint`: student weights, model config, the training-set mean image and the
//! state needed to resume training.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::{Header, Provenance, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const CHECKPOINT_SCHEMA: &str = "checkpoint";
const VERSION: u32 = 1;
const MEAN: &str = "mean_image";
const OPTIM_PREFIX: &str = "optim/";

/// An f32 tensor by value.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Weights are stored under their candle `VarMap` names, optimiser moments under
/// `optim/<name>`, the mean image as `mean_image` f32 [H,W,3] (0..255 scale).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub weights: BTreeMap<String, NamedTensor>,
    pub optimizer: BTreeMap<String, NamedTensor>,
    pub mean_image: NamedTensor,
    pub model_config: serde_json::Value,
    /// Training config and progress (epoch, step, RNG state, best validation score, ...).
    pub train_state: serde_json::Value,
    pub provenance: Provenance,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    model_config: serde_json::Value,
    train_state: serde_json::Value,
}

impl Checkpoint {
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (name, t) in &self.weights {
            if name == MEAN || name.starts_with(OPTIM_PREFIX) {
                return Err(crate::ArtifactError::Invalid {
                    path: path.to_path_buf(),
                    problem: format!("weight name `{name}` is reserved"),
                });
            }
            tensors.push(OutTensor::f32(name.clone(), t.shape.clone(), &t.data));
        }
        for (name, t) in &self.optimizer {
            tensors.push(OutTensor::f32(
                format!("{OPTIM_PREFIX}{name}"),
                t.shape.clone(),
                &t.data,
            ));
        }
        tensors.push(OutTensor::f32(
            MEAN,
            self.mean_image.shape.clone(),
            &self.mean_image.data,
        ));
        let header = Header {
            schema: CHECKPOINT_SCHEMA.into(),
            schema_version: VERSION,
            provenance: self.provenance.clone(),
            extra: serde_json::to_value(Extra {
                model_config: self.model_config.clone(),
                train_state: self.train_state.clone(),
            })
            .expect("json values"),
        };
        write_artifact(path, &header, &tensors)
    }

    pub fn read(path: &Path) -> Result<Checkpoint> {
        let l = Loaded::open(path, CHECKPOINT_SCHEMA, VERSION)?;
        let (ms, mean) = l.f32(MEAN, Some(3))?;
        if ms[2] != 3 {
            return Err(l.bad(MEAN, format!("shape {ms:?}, expected [H,W,3]")));
        }
        let mut weights = BTreeMap::new();
        let mut optimizer = BTreeMap::new();
        for name in l.names() {
            if name == MEAN {
                continue;
            }
            let (shape, data) = l.f32(&name, None)?;
            if data.iter().any(|v| !v.is_finite()) {
                return Err(l.bad(&name, "contains NaN or infinite values"));
            }
            let t = NamedTensor { shape, data };
            match name.strip_prefix(OPTIM_PREFIX) {
                Some(rest) => optimizer.insert(rest.to_string(), t),
                None => weights.insert(name, t),
            };
        }
        if weights.is_empty() {
            return Err(l.meta_err("no weights in checkpoint"));
        }
        let extra: Extra = l.extra()?;
        Ok(Checkpoint {
            weights,
            optimizer,
            mean_image: NamedTensor {
                shape: ms,
                data: mean,
            },
            model_config: extra.model_config,
            train_state: extra.train_state,
            provenance: l.header.provenance,
        })
    }
}
