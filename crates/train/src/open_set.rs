//! Saying "unknown": the open-set rule a checkpoint carries, and the record of how its
//! inputs were made, so that `predict` can show new photos to it as its faces were shown.
//!
//! A closed-set classifier names everybody. Each face gets a score, larger meaning less
//! like any known person: with dlib's face teacher, how far the face's descriptor is from
//! the known people's faces (dlib's own rule calls below 0.6 the same person): the mean
//! distance to the [`GALLERY_K`] nearest gallery faces of the closest person, the gallery
//! being the training faces within [`GALLERY_RADIUS`] of their folder's centre (the
//! folder's person, its strays left out); with any other model, one minus its top
//! probability. The threshold is the score that at most `rate` of the validation faces
//! the model names correctly exceed. Correctly named ones, not all: the folders are dirty
//! (about a fifth of msceleb-samples' faces are flagged as another person), and counting
//! those strangers as "known" would push the threshold into the strangers' range.
//!
//! Measured on msceleb-samples, two people left out at a time (README): the distance to
//! the nearest class centre rejects far fewer strangers at the same cost in known faces
//! than the gallery's nearest faces, which follow a person's many looks.

use crate::inference::Predictor;
use crate::{Dataset, Partition, TrainError};
use artifacts::{Bottlenecks, NamedTensor};
use candle_core::Device;
use std::path::Path;

/// Checkpoint tensors of the descriptor score: gallery descriptors [n, dim] and their
/// classes [n] (as f32).
pub const GALLERY_KEY: &str = "open_set.gallery";
pub const GALLERY_LABELS_KEY: &str = "open_set.gallery_labels";
/// Gallery faces per person the score averages over.
pub const GALLERY_K: usize = 5;
/// A training face joins the gallery within this distance of its folder's centre.
pub const GALLERY_RADIUS: f32 = 0.5;
/// Prefix of the open-set tensors: not weights of the model.
pub const PREFIX: &str = "open_set.";
/// Default share of correctly named validation faces the rule may reject.
pub const DEFAULT_RATE: f64 = 0.05;

/// What a face's score is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Mean distance of the teacher's descriptor to its nearest gallery faces of the
    /// closest person.
    GalleryDistance,
    /// One minus the model's top class probability.
    Probability,
}

impl ScoreKind {
    pub fn describe(self) -> &'static str {
        match self {
            ScoreKind::GalleryDistance => {
                "the face descriptor's mean distance to the closest person's 5 nearest known faces"
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
    /// Training faces scored leave-one-out it was chosen on too (gallery score only).
    #[serde(default)]
    pub training_faces: usize,
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
        let rows: Vec<&[f32]> = idx
            .iter()
            .filter(|&&i| labels[i] as usize == c)
            .map(|&i| &features[i * dim..(i + 1) * dim])
            .collect();
        if !rows.is_empty() {
            out[c * dim..(c + 1) * dim].copy_from_slice(&median(&rows, dim));
        }
    }
    out
}

/// The per-dimension median of `points` (zeros for none); also the identity analysis's
/// folder centre (`eval_tsne::identity`).
pub fn median(points: &[&[f32]], dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|d| {
            let mut v: Vec<f32> = points.iter().map(|p| p[d]).collect();
            v.sort_by(f32::total_cmp);
            let n = v.len();
            if n == 0 {
                0.0
            } else if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        })
        .collect()
}

/// A person's known faces in descriptor space.
#[derive(Debug, Clone, PartialEq)]
pub struct Gallery {
    pub dim: usize,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub classes: usize,
    /// The face (index into the training data) of each gallery row, while calibrating;
    /// empty in a loaded checkpoint.
    pub members: Vec<usize>,
}

impl Gallery {
    /// The training faces `idx` within [`GALLERY_RADIUS`] of their class's centre.
    pub fn of(
        features: &[f32],
        dim: usize,
        labels: &[u32],
        idx: &[usize],
        classes: usize,
    ) -> Gallery {
        let centres = class_centres(features, dim, labels, idx, classes);
        let mut g = Gallery {
            dim,
            features: Vec::new(),
            labels: Vec::new(),
            classes,
            members: Vec::new(),
        };
        for &i in idx {
            let x = &features[i * dim..(i + 1) * dim];
            let c = labels[i] as usize;
            let d: f32 = x
                .iter()
                .zip(&centres[c * dim..(c + 1) * dim])
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            if d <= GALLERY_RADIUS {
                g.features.extend_from_slice(x);
                g.labels.push(c as u32);
                g.members.push(i);
            }
        }
        g
    }

    /// The closest person to `x` and the score: the mean distance to that person's
    /// [`GALLERY_K`] nearest gallery faces (fewer if the person has fewer).
    pub fn score(&self, x: &[f32]) -> (usize, f32) {
        self.score_without(x, None)
    }

    /// [`Self::score`] with gallery row `skip` left out: a training face scored as if it
    /// were new (leave-one-out).
    pub fn score_without(&self, x: &[f32], skip: Option<usize>) -> (usize, f32) {
        let mut per: Vec<Vec<f32>> = vec![Vec::new(); self.classes];
        for (r, (row, &c)) in self
            .features
            .chunks_exact(self.dim)
            .zip(&self.labels)
            .enumerate()
        {
            if Some(r) == skip {
                continue;
            }
            let d2: f32 = x.iter().zip(row).map(|(a, b)| (a - b) * (a - b)).sum();
            per[c as usize].push(d2.sqrt());
        }
        per.iter_mut()
            .enumerate()
            .filter(|(_, d)| !d.is_empty())
            .map(|(c, d)| {
                d.sort_by(f32::total_cmp);
                let k = d.len().min(GALLERY_K);
                (c, d[..k].iter().sum::<f32>() / k as f32)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f32::INFINITY))
    }
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

/// A config's relative paths that exist made absolute, so the recipe works from any
/// folder (the stages record paths as they were typed).
fn absolute_paths(v: &mut serde_json::Value, keys: &[&[&str]]) {
    for path in keys {
        let Some(at) = path.iter().try_fold(&mut *v, |at, k| at.get_mut(*k)) else {
            continue;
        };
        if let Some(p) = at.as_str().map(std::path::PathBuf::from) {
            if p.is_relative() && p.exists() {
                if let Ok(abs) = std::fs::canonicalize(&p) {
                    *at = abs.display().to_string().into();
                }
            }
        }
    }
}

/// How the checkpoint's inputs were made: the faces artifact's producer, build and config
/// (the preprocessing), and the teacher's identity and config. `predict` re-runs these.
pub fn recipe(data: &Dataset) -> serde_json::Value {
    let f = &data.faces.provenance;
    let teacher = data.teacher.as_ref().map(|b| {
        let mut config = b.provenance.config.clone();
        absolute_paths(&mut config, &[&["teacher"]]);
        serde_json::json!({
            "identity": b.teacher,
            "layer": b.layer,
            "dim": b.dim,
            "producer": b.provenance.producer,
            "producer_version": b.provenance.producer_version,
            "config": config,
        })
    });
    let mut config = f.config.clone();
    absolute_paths(
        &mut config,
        &[
            &["landmarks"],
            &["detector", "cascade"],
            &["detector", "cnn_model"],
        ],
    );
    serde_json::json!({
        "faces": {
            "producer": f.producer,
            "producer_version": f.producer_version,
            "config": config,
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
        Some((rule, gallery)) => {
            tracing::info!(
                "open set: unknown above {:.3} ({}): {} of {} validation faces rejected",
                rule.threshold,
                rule.score.describe(),
                (rule.validation_rejected * rule.validation_faces as f64).round(),
                rule.validation_faces
            );
            ck.model_config["open_set"] = serde_json::to_value(&rule).expect("plain");
            if let Some(g) = gallery {
                ck.weights.insert(
                    GALLERY_KEY.into(),
                    NamedTensor {
                        shape: vec![g.labels.len(), g.dim],
                        data: g.features,
                    },
                );
                ck.weights.insert(
                    GALLERY_LABELS_KEY.into(),
                    NamedTensor {
                        shape: vec![g.labels.len()],
                        data: g.labels.iter().map(|&l| l as f32).collect(),
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

fn calibrate(
    data: &Dataset,
    part: &Partition,
    rate: f64,
    predictor: &Predictor,
    device: &Device,
) -> Result<Option<(OpenSet, Option<Gallery>)>, TrainError> {
    if part.val.is_empty() {
        return Ok(None);
    }
    let p = predictor.predict(&data.faces, data.teacher.as_ref(), &part.val, device)?;
    let pred = p.argmax();
    let labels = &data.faces.labels;
    let classes = data.num_classes();
    let face = data.teacher.as_ref().filter(|b| is_face_teacher(b));
    let gallery = face.map(|b| Gallery::of(&b.features, b.dim, labels, &part.train, classes));
    let scores: Vec<f32> = match (&gallery, face) {
        (Some(g), Some(b)) => part.val.iter().map(|&i| g.score(b.row(i)).1).collect(),
        _ => p
            .probs
            .chunks_exact(p.num_classes)
            .map(|r| 1.0 - r.iter().copied().fold(0f32, f32::max))
            .collect(),
    };
    // The validation faces the model names correctly...
    let mut calibration: Vec<f32> = part
        .val
        .iter()
        .zip(&pred)
        .zip(&scores)
        .filter(|((&i, &y), _)| labels[i] == y)
        .map(|(_, &s)| s)
        .collect();
    let from_validation = calibration.len();
    // ...and, for the gallery score, the training faces scored leave-one-out whose
    // closest person is their own: ~110 validation faces alone put msceleb-samples'
    // threshold anywhere in 0.51-0.67 by which four fall in the tail; pooled, 0.55-0.61.
    if let (Some(g), Some(b)) = (&gallery, face) {
        let row_of: std::collections::HashMap<usize, usize> =
            g.members.iter().enumerate().map(|(r, &i)| (i, r)).collect();
        for &i in &part.train {
            let (c, s) = g.score_without(b.row(i), row_of.get(&i).copied());
            if c as u32 == labels[i] {
                calibration.push(s);
            }
        }
    }
    let Some(threshold) = threshold_for(&calibration, rate) else {
        return Ok(None);
    };
    let rejected = scores.iter().filter(|&&s| s > threshold).count();
    Ok(Some((
        OpenSet {
            score: if gallery.is_some() {
                ScoreKind::GalleryDistance
            } else {
                ScoreKind::Probability
            },
            threshold,
            rate,
            calibrated_on: from_validation,
            training_faces: calibration.len() - from_validation,
            validation_faces: scores.len(),
            validation_rejected: rejected as f64 / scores.len() as f64,
        },
        gallery,
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
    fn centres_are_medians() {
        // Class 0: three faces near (0, 0) and one stray far away; class 1 near (1, 1).
        let feats = [0.0, 0.1, 0.1, 0.0, -0.1, 0.0, 9.0, 9.0, 1.0, 1.0, 1.2, 0.8];
        let labels = [0, 0, 0, 0, 1, 1];
        let c = class_centres(&feats, 2, &labels, &[0, 1, 2, 3, 4, 5], 3);
        assert_eq!(&c[0..2], &[0.05, 0.05]); // the stray does not move it far
        assert_eq!(&c[2..4], &[1.1, 0.9]);
        assert!(c[4..6].iter().all(|v| v.is_nan())); // no faces
    }

    #[test]
    fn the_gallery_leaves_strays_out_and_scores_by_the_nearest_faces() {
        // Class 0: four faces around (0, 0) and a stray at (3, 0); class 1: two at (1, 1).
        let feats = [
            0.0, 0.1, 0.1, 0.0, -0.1, 0.0, 0.0, -0.1, 3.0, 0.0, 1.0, 1.0, 1.0, 1.1,
        ];
        let labels = [0, 0, 0, 0, 0, 1, 1];
        let g = Gallery::of(&feats, 2, &labels, &[0, 1, 2, 3, 4, 5, 6], 2);
        assert_eq!(
            g.labels,
            [0, 0, 0, 0, 1, 1],
            "the stray is not in the gallery"
        );
        // Where the stray was: far from every gallery face, although the stray is class 0.
        let (_, s) = g.score(&[3.0, 0.0]);
        assert!(s > 2.0, "{s}");
        // Class 1 has two faces: the mean of both.
        let (c, s) = g.score(&[1.0, 1.05]);
        assert_eq!(c, 1);
        assert!((s - 0.05).abs() < 1e-6, "{s}");
        // Leave-one-out: gallery row 4, the face (1, 1) itself, does not count.
        assert_eq!(g.members, [0, 1, 2, 3, 5, 6]);
        let (c, s) = g.score_without(&[1.0, 1.0], Some(4));
        assert_eq!(c, 1);
        assert!((s - 0.1).abs() < 1e-6, "{s}");
    }
}
