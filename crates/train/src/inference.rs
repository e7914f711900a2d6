//! Loading a trained checkpoint and running it: class scores and embeddings per face.

use crate::data::{input_batch, rows};
use crate::layout::OPEN_SET_PREFIX;
use crate::{CheckpointError, ConfigError, TrainError};
use artifacts::{Bottlenecks, Checkpoint, Faces, NamedTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use model::{Mode, Student, StudentConfig};
use std::collections::BTreeMap;
use std::path::Path;

/// Every variable of a `VarMap`, by name.
pub fn weights_of(varmap: &VarMap) -> Result<BTreeMap<String, NamedTensor>, TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| {
            let t = v.as_tensor();
            Ok((
                k.clone(),
                NamedTensor {
                    shape: t.dims().to_vec(),
                    data: t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                },
            ))
        })
        .collect()
}

/// Builds the student of a checkpoint. The checkpoint's names must be exactly the model's
/// (a `VarMap` would otherwise invent missing weights silently).
pub fn student_from_weights(
    ck: &Checkpoint,
    device: &Device,
) -> Result<(Student, StudentConfig), TrainError> {
    let cfg: StudentConfig = serde_json::from_value(ck.model_config["student"].clone())
        .map_err(CheckpointError::ModelConfig)?;
    let varmap = VarMap::new();
    let student = Student::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    {
        let data = varmap.data().lock().expect("varmap lock");
        let missing: Vec<String> = data
            .keys()
            .filter(|k| !ck.weights.contains_key(*k))
            .cloned()
            .collect();
        let extra: Vec<String> = ck
            .weights
            .keys()
            .filter(|k| !data.contains_key(*k) && !k.starts_with(OPEN_SET_PREFIX))
            .cloned()
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(CheckpointError::Misfit { missing, extra }.into());
        }
        for (k, v) in data.iter() {
            let w = &ck.weights[k];
            if w.shape != v.as_tensor().dims() {
                return Err(CheckpointError::WeightShape {
                    name: k.clone(),
                    shape: w.shape.clone(),
                    model: v.as_tensor().dims().to_vec(),
                }
                .into());
            }
            v.set(&Tensor::from_slice(&w.data, w.shape.as_slice(), device)?)?;
        }
    }
    Ok((student, cfg))
}

/// Scores and embeddings for a set of faces.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub num_classes: usize,
    /// [n, classes] softmax probabilities.
    pub probs: Vec<f32>,
    pub dim: usize,
    /// [n, dim]: the student's bottleneck after ReLU (its last hidden layer for base), or
    /// the probe's standardised teacher features.
    pub embeddings: Vec<f32>,
}

impl Predictions {
    pub fn argmax(&self) -> Vec<u32> {
        self.probs
            .chunks_exact(self.num_classes)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as u32)
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A trained classifier of either kind.
pub enum Predictor {
    Student {
        student: Student,
        mean: Vec<f32>,
    },
    Probe {
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        std: Tensor,
    },
}

impl Predictor {
    pub fn load(path: &Path, device: &Device) -> Result<(Predictor, Checkpoint), TrainError> {
        let ck = Checkpoint::read(path)?;
        let p = match ck.model_config["kind"].as_str() {
            Some("student") => {
                let (student, _) = student_from_weights(&ck, device)?;
                Predictor::Student {
                    student,
                    mean: ck.mean_image.data.clone(),
                }
            }
            Some("probe") => {
                let get = |k: &'static str| -> Result<Tensor, TrainError> {
                    let w = ck
                        .weights
                        .get(k)
                        .ok_or_else(|| CheckpointError::ProbeLacks {
                            path: path.to_path_buf(),
                            key: k,
                        })?;
                    Ok(Tensor::from_slice(&w.data, w.shape.as_slice(), device)?)
                };
                Predictor::Probe {
                    weight: get("probe.weight")?,
                    bias: get("probe.bias")?,
                    mean: get("probe.feature_mean")?,
                    std: get("probe.feature_std")?,
                }
            }
            other => {
                return Err(CheckpointError::UnknownKind {
                    path: path.to_path_buf(),
                    kind: other.map(str::to_string),
                }
                .into())
            }
        };
        Ok((p, ck))
    }

    pub fn needs_teacher(&self) -> bool {
        matches!(self, Predictor::Probe { .. })
    }

    /// Runs on faces `idx` (in batches); the probe reads the teacher's rows instead.
    pub fn predict(
        &self,
        faces: &Faces,
        teacher: Option<&Bottlenecks>,
        idx: &[usize],
        device: &Device,
    ) -> Result<Predictions, TrainError> {
        let mut probs = Vec::new();
        let mut emb = Vec::new();
        let (mut classes, mut dim) = (0, 0);
        for chunk in idx.chunks(128) {
            let (logits, e) = match self {
                Predictor::Student { student, mean } => {
                    let x = input_batch(faces, chunk, mean, None, device)?;
                    let out = student.forward_nhwc(&x, Mode::Eval)?;
                    let e = out.bottleneck.unwrap_or(out.hidden);
                    (out.logits, e)
                }
                Predictor::Probe {
                    weight,
                    bias,
                    mean,
                    std,
                } => {
                    let b = teacher.ok_or(ConfigError::ProbeNeedsTeacher)?;
                    let x = rows(&b.features, b.dim, chunk, device)?;
                    let z = x.broadcast_sub(mean)?.broadcast_div(std)?;
                    (z.matmul(&weight.t()?)?.broadcast_add(bias)?, z)
                }
            };
            classes = logits.dim(1)?;
            dim = e.dim(1)?;
            let p = candle_nn::ops::softmax(&logits, 1)?;
            probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
            emb.extend(e.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Predictions {
            num_classes: classes,
            probs,
            dim,
            embeddings: emb,
        })
    }
}
