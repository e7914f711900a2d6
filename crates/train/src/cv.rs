//! Stratified k-fold cross-validation over all images (ignoring the stored split), to tune
//! and report without touching a test split.

use crate::training::{Partition, RunFiles, TrainConfig};
use crate::{train, ConfigError, Dataset, TrainError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CvReport {
    pub folds: usize,
    pub accuracies: Vec<f64>,
    pub mean: f64,
}

/// Stratified folds: each class's images shuffled with `seed`, dealt round-robin.
pub fn folds(labels: &[u32], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let classes = labels
        .iter()
        .copied()
        .max()
        .map(|m| m as usize + 1)
        .unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![Vec::new(); k];
    let mut next = 0;
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] as usize == c)
            .collect();
        idx.shuffle(&mut rng);
        for i in idx {
            out[next % k].push(i);
            next += 1;
        }
    }
    out
}

/// Trains `k` times, each fold held out once as the test set; within the rest,
/// `val_fraction` of each class (stratified) validates when > 0.
/// `pool`: the images to fold (all of them, or only the training split when tuning, so
/// that a test split stays unseen).
pub fn cross_validate(
    data: &Dataset,
    cfg: &TrainConfig,
    pool: &[usize],
    k: usize,
    seed: u64,
) -> Result<CvReport, TrainError> {
    if k < 2 {
        return Err(ConfigError::TooFewFolds.into());
    }
    let labels: Vec<u32> = pool.iter().map(|&i| data.faces.labels[i]).collect();
    let fs: Vec<Vec<usize>> = folds(&labels, k, seed)
        .into_iter()
        .map(|f| f.into_iter().map(|j| pool[j]).collect())
        .collect();
    let mut accs = Vec::new();
    for (i, test) in fs.iter().enumerate() {
        let train: Vec<usize> = fs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        let part = Partition {
            train,
            val: vec![],
            test: test.clone(),
        };
        let out = train_fold(data, cfg, &part)?;
        tracing::info!("fold {}/{k}: test accuracy {:.4}", i + 1, out);
        accs.push(out);
    }
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    Ok(CvReport {
        folds: k,
        accuracies: accs,
        mean,
    })
}

fn train_fold(data: &Dataset, cfg: &TrainConfig, part: &Partition) -> Result<f64, TrainError> {
    let files = RunFiles {
        progress: false,
        ..Default::default()
    };
    Ok(train(data, cfg, part, &files)?.test_acc.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    #[test]
    fn folds_are_stratified_and_cover_everything() {
        let labels: Vec<u32> = (0..40).map(|i| (i % 4) as u32).collect();
        let f = super::folds(&labels, 5, 1);
        let mut all: Vec<usize> = f.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        for fold in &f {
            assert_eq!(fold.len(), 8);
            for c in 0..4 {
                assert_eq!(fold.iter().filter(|&&i| labels[i] == c).count(), 2);
            }
        }
    }
}
