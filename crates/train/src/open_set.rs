//! Saying "unknown": the open-set rule a checkpoint carries, and the record of how its
//! inputs were made, so that `predict` can show new photos to it as its faces were shown.
//!
//! A closed-set classifier names everybody. Each face gets a score, larger meaning less
//! like any known person: with dlib's face teacher, the distance of the face's descriptor
//! to the nearest class centre (dlib's own rule calls below 0.6 the same person); with
//! any other model, one minus its top probability. The threshold is the score that at most
//! `rate` of the validation faces the model names correctly exceed. Correctly named ones,
//! not all: the folders are dirty (about a fifth of msceleb-samples' faces are flagged as
//! another person), and counting those strangers as "known" would push the threshold into
//! the strangers' range.

use crate::inference::Predictor;
use crate::{Dataset, Partition, TrainError};
use artifacts::{Bottlenecks, NamedTensor};
use candle_core::Device;
use std::path::Path;

/// Checkpoint tensor holding the class centres [classes, dim] of the descriptor score.
pub const CENTRES_KEY: &str = "open_set.centres";
/// Prefix of the open-set tensors: not weights of the model.
pub const PREFIX: &str = "open_set.";
/// Default share of correctly named validation faces the rule may reject.
pub const DEFAULT_RATE: f64 = 0.02;

/// What a face's score is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Euclidean distance of the teacher's descriptor to the nearest class centre.
    DescriptorDistance,
    /// One minus the model's top class probability.
    Probability,
}

impl ScoreKind {
    pub fn describe(self) -> &'static str {
        match self {
            ScoreKind::DescriptorDistance => {
                "distance of the face descriptor to the nearest class centre"
            }
            ScoreKind::Probability => "1 - the top class probability",
        }
    }
}

/// The rule stored in a checkpoint's model config (`open_set`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenSet {
    pub score: ScoreKind,
    /// A face whose score is above this is "unknown".
    pub threshold: f32,
    /// The share of correctly named validation faces above the threshold, as asked.
    pub rate: f64,
    /// Correctly named validation faces it was chosen on (of `validation_faces`).
    pub calibrated_on: usize,
    pub validation_faces: usize,
    /// The share of all validation faces (dirty ones included) above the threshold.
    pub validation_rejected: f64,
}

/// Per-class centres [classes, dim]: the per-dimension median of the class's faces in
/// `idx` (a median, so the folder's strays do not pull it); NaN for a class without faces
/// there (never the nearest).
pub fn class_centres(
    features: &[f32],
    dim: usize,
    labels: &[u32],
    idx: &[usize],
    classes: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; classes * dim];
    for c in 0..classes {
        let rows: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| labels[i] as usize == c)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut col = Vec::with_capacity(rows.len());
        for d in 0..dim {
            col.clear();
            col.extend(rows.iter().map(|&i| features[i * dim + d]));
            col.sort_by(f32::total_cmp);
            let m = col.len() / 2;
            out[c * dim + d] = if col.len() % 2 == 1 {
                col[m]
            } else {
                0.5 * (col[m - 1] + col[m])
            };
        }
    }
    out
}

/// The nearest centre to `x` and its distance.
pub fn nearest_centre(x: &[f32], centres: &[f32]) -> (usize, f32) {
    let dim = x.len();
    centres
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, m)| {
            let d2: f32 = x.iter().zip(m).map(|(a, b)| (a - b) * (a - b)).sum();
            (c, d2.sqrt())
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f32::INFINITY))
}

/// The smallest threshold that at most `rate` of `scores` exceed (`None` without scores).
pub fn threshold_for(scores: &[f32], rate: f64) -> Option<f32> {
    let mut s: Vec<f32> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f32::total_cmp);
    let allowed = ((rate.clamp(0.0, 1.0) * s.len() as f64).floor() as usize).min(s.len() - 1);
    Some(s[s.len() - 1 - allowed])
}

/// Whether a bottlenecks artifact is dlib's face descriptor (its identity says so).
pub fn is_face_teacher(b: &Bottlenecks) -> bool {
    b.teacher.starts_with("dlib-face:")
}

/// How the checkpoint's inputs were made: the faces artifact's producer, build and config
/// (the preprocessing), and the teacher's identity and config. `predict` re-runs these.
pub fn recipe(data: &Dataset) -> serde_json::Value {
    let f = &data.faces.provenance;
    let teacher = data.teacher.as_ref().map(|b| {
        serde_json::json!({
            "identity": b.teacher,
            "layer": b.layer,
            "dim": b.dim,
            "producer": b.provenance.producer,
            "producer_version": b.provenance.producer_version,
            "config": b.provenance.config,
        })
    });
    serde_json::json!({
        "faces": {
            "producer": f.producer,
            "producer_version": f.producer_version,
            "config": f.config,
            "inputs": f.inputs,
            "size": data.faces.height,
        },
        "teacher": teacher,
    })
}

/// Adds the recipe and the open-set rule (chosen on `part.val`) to the checkpoint at
/// `path`, rewriting it atomically. Without validation faces the rule is left out (with a
/// warning): `predict` then names every face unless given `--unknown-threshold`.
pub fn seal(data: &Dataset, part: &Partition, rate: f64, path: &Path) -> Result<(), TrainError> {
    let device = Device::Cpu;
    let (predictor, mut ck) = Predictor::load(path, &device)?;
    ck.model_config["recipe"] = recipe(data);
    let rule = calibrate(data, part, rate, &predictor, &device)?;
    match rule {
        Some((rule, centres)) => {
            tracing::info!(
                "open set: unknown above {:.3} ({}): {} of {} validation faces rejected",
                rule.threshold,
                rule.score.describe(),
                (rule.validation_rejected * rule.validation_faces as f64).round(),
                rule.validation_faces
            );
            ck.model_config["open_set"] = serde_json::to_value(&rule).expect("plain");
            if let Some((classes, dim, c)) = centres {
                ck.weights.insert(
                    CENTRES_KEY.into(),
                    NamedTensor {
                        shape: vec![classes, dim],
                        data: c,
                    },
                );
            }
        }
        None => tracing::warn!(
            "no correctly named validation faces: the checkpoint has no unknown-face threshold"
        ),
    }
    Ok(ck.write(path)?)
}

type Centres = Option<(usize, usize, Vec<f32>)>;

fn calibrate(
    data: &Dataset,
    part: &Partition,
    rate: f64,
    predictor: &Predictor,
    device: &Device,
) -> Result<Option<(OpenSet, Centres)>, TrainError> {
    if part.val.is_empty() {
        return Ok(None);
    }
    let p = predictor.predict(&data.faces, data.teacher.as_ref(), &part.val, device)?;
    let pred = p.argmax();
    let labels = &data.faces.labels;
    let classes = data.num_classes();
    let (kind, scores, centres): (ScoreKind, Vec<f32>, Centres) = match &data.teacher {
        Some(b) if is_face_teacher(b) => {
            let c = class_centres(&b.features, b.dim, labels, &part.train, classes);
            let s = part
                .val
                .iter()
                .map(|&i| nearest_centre(b.row(i), &c).1)
                .collect();
            (ScoreKind::DescriptorDistance, s, Some((classes, b.dim, c)))
        }
        _ => {
            let s = p
                .probs
                .chunks_exact(p.num_classes)
                .map(|r| 1.0 - r.iter().copied().fold(0f32, f32::max))
                .collect();
            (ScoreKind::Probability, s, None)
        }
    };
    let correct: Vec<f32> = part
        .val
        .iter()
        .zip(&pred)
        .zip(&scores)
        .filter(|((&i, &y), _)| labels[i] == y)
        .map(|(_, &s)| s)
        .collect();
    let Some(threshold) = threshold_for(&correct, rate) else {
        return Ok(None);
    };
    let rejected = scores.iter().filter(|&&s| s > threshold).count();
    Ok(Some((
        OpenSet {
            score: kind,
            threshold,
            rate,
            calibrated_on: correct.len(),
            validation_faces: scores.len(),
            validation_rejected: rejected as f64 / scores.len() as f64,
        },
        centres,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_rejects_at_most_the_rate() {
        let scores: Vec<f32> = (1..=100).map(|v| v as f32 / 100.0).collect();
        // 2% of 100: the two largest scores (0.99, 1.00) lie above the threshold.
        let t = threshold_for(&scores, 0.02).unwrap();
        assert_eq!(t, 0.98);
        assert_eq!(scores.iter().filter(|&&s| s > t).count(), 2);
        // A rate below one face rejects none; a rate of 1 keeps only the smallest.
        assert_eq!(threshold_for(&scores, 0.005), Some(1.0));
        assert_eq!(threshold_for(&scores, 1.0), Some(0.01));
        // Ties: never more rejected than allowed.
        let tied = [0.5f32, 0.5, 0.5, 0.5];
        let t = threshold_for(&tied, 0.5).unwrap();
        assert_eq!(tied.iter().filter(|&&s| s > t).count(), 0);
        assert_eq!(threshold_for(&[], 0.1), None);
        assert_eq!(threshold_for(&[f32::NAN], 0.1), None);
    }

    #[test]
    fn centres_are_medians_and_the_nearest_is_found() {
        // Class 0: three faces near (0, 0) and one stray far away; class 1 near (1, 1).
        let feats = [0.0, 0.1, 0.1, 0.0, -0.1, 0.0, 9.0, 9.0, 1.0, 1.0, 1.2, 0.8];
        let labels = [0, 0, 0, 0, 1, 1];
        let c = class_centres(&feats, 2, &labels, &[0, 1, 2, 3, 4, 5], 3);
        assert_eq!(&c[0..2], &[0.05, 0.05]); // the stray does not move it far
        assert_eq!(&c[2..4], &[1.1, 0.9]);
        assert!(c[4..6].iter().all(|v| v.is_nan())); // no faces
        let (k, d) = nearest_centre(&[0.0, 0.0], &c);
        assert_eq!(k, 0, "an empty class is never the nearest");
        assert!((d - 0.05f32.hypot(0.05)).abs() < 1e-6);
        let (k, d) = nearest_centre(&[1.1, 1.0], &c);
        assert_eq!(k, 1);
        assert!((d - 0.1).abs() < 1e-6);
    }
}
