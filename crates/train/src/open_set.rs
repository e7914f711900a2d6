//! Saying "unknown": the open-set rule a checkpoint carries ([`OpenSet`], stored and read
//! back by [`OpenSet::store`] / [`OpenSet::from_checkpoint`], the one schema `train` writes
//! and `predict` reads), sealed into the checkpoint with the recipe of its inputs
//! ([`crate::provenance::recipe`]) by [`seal`].
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
use crate::layout::{OPEN_SET_CONFIG_KEY, RECIPE_CONFIG_KEY};
use crate::{Dataset, Partition, TrainError};
use artifacts::{Checkpoint, NamedTensor};
use candle_core::Device;
use std::path::Path;

pub use crate::layout::{GALLERY_KEY, GALLERY_LABELS_KEY, OPEN_SET_PREFIX as PREFIX};
/// Gallery faces per person the score averages over.
pub const GALLERY_K: usize = 5;
/// A training face joins the gallery within this distance of its folder's centre.
pub const GALLERY_RADIUS: f32 = 0.5;
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

/// A stored open-set rule that does not fit (the messages `predict` shows).
#[derive(Debug, thiserror::Error)]
pub enum OpenSetError {
    #[error("open-set rule: {0}")]
    Rule(serde_json::Error),
    #[error("the open-set rule lacks `{0}`")]
    Missing(&'static str),
    #[error("gallery shapes {features:?} / {labels:?} do not fit")]
    GalleryShape {
        features: Vec<usize>,
        labels: Vec<usize>,
    },
}

impl OpenSet {
    /// Stores the rule in `ck`'s model config ([`OPEN_SET_CONFIG_KEY`]) and the gallery,
    /// when the score uses one, as the tensors [`GALLERY_KEY`] and [`GALLERY_LABELS_KEY`].
    pub fn store(&self, gallery: Option<&Gallery>, ck: &mut Checkpoint) {
        ck.model_config[OPEN_SET_CONFIG_KEY] = serde_json::to_value(self).expect("plain");
        if let Some(g) = gallery {
            ck.weights.insert(
                GALLERY_KEY.into(),
                NamedTensor {
                    shape: vec![g.labels.len(), g.dim],
                    data: g.features.clone(),
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

    /// The rule stored with `ck`; `None` when it has none (no validation faces).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Option<OpenSet>, OpenSetError> {
        match &ck.model_config[OPEN_SET_CONFIG_KEY] {
            serde_json::Value::Null => Ok(None),
            v => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(OpenSetError::Rule),
        }
    }
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

use kernels::stats::median;

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

    /// The gallery stored with `ck` by [`OpenSet::store`], checked to fit `classes`.
    pub fn from_checkpoint(ck: &Checkpoint, classes: usize) -> Result<Gallery, OpenSetError> {
        let get = |k: &'static str| ck.weights.get(k).ok_or(OpenSetError::Missing(k));
        let (f, l) = (get(GALLERY_KEY)?, get(GALLERY_LABELS_KEY)?);
        let ok = f.shape.len() == 2
            && l.shape == [f.shape[0]]
            && l.data.iter().all(|&c| c >= 0.0 && (c as usize) < classes);
        if !ok {
            return Err(OpenSetError::GalleryShape {
                features: f.shape.clone(),
                labels: l.shape.clone(),
            });
        }
        Ok(Gallery {
            dim: f.shape[1],
            features: f.data.clone(),
            labels: l.data.iter().map(|&c| c as u32).collect(),
            classes,
            members: Vec::new(),
        })
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

/// Adds the recipe and the open-set rule (chosen on `part.val`) to the checkpoint at
/// `path`, rewriting it atomically. Without validation faces the rule is left out (with a
/// warning): `predict` then names every face unless given `--unknown-threshold`.
pub fn seal(data: &Dataset, part: &Partition, rate: f64, path: &Path) -> Result<(), TrainError> {
    let device = Device::Cpu;
    let (predictor, mut ck) = Predictor::load(path, &device)?;
    ck.model_config[RECIPE_CONFIG_KEY] = crate::provenance::recipe(data);
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
            rule.store(gallery.as_ref(), &mut ck);
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
    let face = data
        .teacher
        .as_ref()
        .filter(|b| artifacts::is_face_teacher(&b.teacher));
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
