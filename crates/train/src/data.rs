//! Loading the faces and the teacher's bottlenecks into training tensors.

use crate::TrainError;
use artifacts::{Bottlenecks, Faces, Split};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Faces as NCHW floats, labels, splits, and teacher features when given.
pub struct Dataset {
    pub faces: Faces,
    pub teacher: Option<Bottlenecks>,
    pub faces_digest: String,
    pub bottlenecks_digest: Option<String>,
}

impl Dataset {
    /// Reads the artifacts and checks that the bottlenecks belong to these faces.
    pub fn load(faces_path: &Path, bottlenecks_path: Option<&Path>) -> Result<Dataset, TrainError> {
        let faces = Faces::read(faces_path)?;
        if faces.is_empty() {
            return Err(TrainError::Data(format!(
                "{} holds no faces",
                faces_path.display()
            )));
        }
        let faces_digest = artifacts::digest_file(faces_path)?;
        let (teacher, bottlenecks_digest) = match bottlenecks_path {
            Some(p) => {
                let b = Bottlenecks::read(p)?;
                if b.len() != faces.len() {
                    return Err(TrainError::Data(format!(
                        "{} has {} rows but {} has {} faces; re-run inception-bottleneck",
                        p.display(),
                        b.len(),
                        faces_path.display(),
                        faces.len()
                    )));
                }
                if b.faces_digest != faces_digest {
                    return Err(TrainError::Data(format!(
                        "{} was made from another faces file (stale); re-run inception-bottleneck",
                        p.display()
                    )));
                }
                let d = artifacts::digest_file(p)?;
                (Some(b), Some(d))
            }
            None => (None, None),
        };
        Ok(Dataset {
            faces,
            teacher,
            faces_digest,
            bottlenecks_digest,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.faces.class_names.len()
    }

    pub fn indices(&self, split: Split) -> Vec<usize> {
        self.faces.indices(split)
    }

    /// Per-pixel mean image [H,W,3] (0..255) over `train`.
    pub fn mean_image(&self, train: &[usize]) -> Vec<f32> {
        let px = self.faces.height * self.faces.width * 3;
        let mut acc = vec![0f64; px];
        for &i in train {
            for (a, &v) in acc.iter_mut().zip(self.faces.image(i)) {
                *a += v as f64;
            }
        }
        let n = train.len().max(1) as f64;
        acc.iter().map(|a| (*a / n) as f32).collect()
    }
}

/// Subtracts the mean image and scales to about [-1, 1]: NCHW f32 for `idx`.
/// `flip`/`shift` per sample implement the optional augmentation.
pub fn input_batch(
    faces: &Faces,
    idx: &[usize],
    mean: &[f32],
    aug: Option<&[(bool, i32, i32)]>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (h, w) = (faces.height, faces.width);
    let plane = h * w;
    let mut out = vec![0f32; idx.len() * 3 * plane];
    for (k, &i) in idx.iter().enumerate() {
        let img = faces.image(i);
        let (flip, dx, dy) = aug.map(|a| a[k]).unwrap_or((false, 0, 0));
        let dst = &mut out[k * 3 * plane..(k + 1) * 3 * plane];
        for y in 0..h {
            let sy = y as i32 - dy;
            for x in 0..w {
                let xs = if flip { w - 1 - x } else { x } as i32 - dx;
                for c in 0..3 {
                    // Outside the shifted image: the mean (so 0 after subtraction).
                    let v = if sy >= 0 && (sy as usize) < h && xs >= 0 && (xs as usize) < w {
                        let p = (sy as usize * w + xs as usize) * 3 + c;
                        (img[p] as f32 - mean[(y * w + x) * 3 + c]) / 128.0
                    } else {
                        0.0
                    };
                    dst[c * plane + y * w + x] = v;
                }
            }
        }
    }
    Tensor::from_vec(out, (idx.len(), 3, h, w), device)
}

/// Rows of a [N,D] feature matrix.
pub fn rows(
    features: &[f32],
    dim: usize,
    idx: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut out = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        out.extend_from_slice(&features[i * dim..(i + 1) * dim]);
    }
    Tensor::from_vec(out, (idx.len(), dim), device)
}

/// How teacher vectors are scaled before they become targets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetNorm {
    /// Raw values (post-ReLU Inception features are unevenly scaled).
    None,
    /// Per dimension: subtract the training mean, divide by the training std.
    Standardize,
    /// Each vector scaled to unit length.
    L2,
}

/// Applies `norm` to [N,D] features using statistics of the `train` rows; returns the
/// transformed copy and the (mean, std) used (empty for None/L2).
pub fn normalize_targets(
    features: &[f32],
    dim: usize,
    train: &[usize],
    norm: TargetNorm,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match norm {
        TargetNorm::None => (features.to_vec(), vec![], vec![]),
        TargetNorm::L2 => {
            let mut out = features.to_vec();
            for row in out.chunks_exact_mut(dim) {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= n);
            }
            (out, vec![], vec![])
        }
        TargetNorm::Standardize => {
            let n = train.len().max(1) as f64;
            let mut mean = vec![0f64; dim];
            let mut sq = vec![0f64; dim];
            for &i in train {
                for d in 0..dim {
                    let v = features[i * dim + d] as f64;
                    mean[d] += v;
                    sq[d] += v * v;
                }
            }
            let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
            let std: Vec<f32> = sq
                .iter()
                .zip(&mean)
                .map(|(s, m)| ((s / n - (*m as f64).powi(2)).max(0.0).sqrt() as f32).max(1e-3))
                .collect();
            let mut out = features.to_vec();
            for row in out.chunks_exact_mut(dim) {
                for d in 0..dim {
                    row[d] = (row[d] - mean[d]) / std[d];
                }
            }
            (out, mean, std)
        }
    }
}
