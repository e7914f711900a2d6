//! Loading the faces and the teacher's bottlenecks into training tensors.

use crate::{DataError, TrainError};
use artifacts::{Bottlenecks, Faces, Split};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The faces artifact (u8 HWC images, labels, splits) and the teacher features when given.
pub struct Dataset {
    pub faces: Faces,
    pub teacher: Option<Bottlenecks>,
    pub faces_digest: String,
    pub bottlenecks_digest: Option<String>,
    /// Digest of the exclusions file the run honours (recorded in the checkpoint).
    pub exclusions_digest: Option<String>,
    /// First row of each shard of a sharded faces artifact (`[0]` for one file): the
    /// epoch order reads a few shards at a time (see [`epoch_order`]).
    pub shard_starts: Vec<usize>,
}

/// Shards whose training rows are shuffled together: the shuffle buffer of a sharded set.
pub const SHUFFLE_SHARDS: usize = 4;

/// An epoch's training order. One shard: a permutation of `train`. Several: the shards in
/// a random order, `window` at a time, the rows of each window shuffled together, so an
/// epoch reads a few shards at a time (their pages stay in the page cache, or on a network
/// filesystem come in large reads) while every row still meets rows of other shards.
pub fn epoch_order(
    train: &[usize],
    shard_starts: &[usize],
    window: usize,
    rng: &mut impl rand::Rng,
) -> Vec<usize> {
    use rand::seq::SliceRandom;
    if shard_starts.len() <= 1 {
        let mut order = train.to_vec();
        order.shuffle(rng);
        return order;
    }
    let mut by_shard = vec![Vec::new(); shard_starts.len()];
    for &i in train {
        by_shard[shard_starts.partition_point(|&s| s <= i) - 1].push(i);
    }
    by_shard.shuffle(rng);
    let mut order = Vec::with_capacity(train.len());
    for group in by_shard.chunks(window.max(1)) {
        let start = order.len();
        order.extend(group.iter().flatten());
        order[start..].shuffle(rng);
    }
    order
}

impl Dataset {
    /// Reads the artifacts and checks that the bottlenecks belong to these faces.
    pub fn load(faces_path: &Path, bottlenecks_path: Option<&Path>) -> Result<Dataset, TrainError> {
        let faces = Faces::read(faces_path)?;
        let mut shard_starts = vec![0];
        if let Some(shards) = Faces::shards_of(faces_path)? {
            for s in &shards[..shards.len().saturating_sub(1)] {
                shard_starts.push(shard_starts.last().expect("non-empty") + s.rows);
            }
        }
        if faces.is_empty() {
            return Err(DataError::NoFaces(faces_path.to_path_buf()).into());
        }
        let faces_digest = artifacts::digest_file(faces_path)?;
        let (teacher, bottlenecks_digest) = match bottlenecks_path {
            Some(p) => {
                let b = Bottlenecks::read(p)?;
                if b.len() != faces.len() {
                    return Err(DataError::RowCount {
                        bottlenecks: p.to_path_buf(),
                        rows: b.len(),
                        faces_path: faces_path.to_path_buf(),
                        faces: faces.len(),
                    }
                    .into());
                }
                if b.faces_digest != faces_digest {
                    return Err(DataError::StaleBottlenecks(p.to_path_buf()).into());
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
            exclusions_digest: None,
            shard_starts,
        })
    }

    /// Leaves the faces marked `drop` in an exclusions file (`artifacts::exclusions`) out
    /// of every split of `part`; returns how many it left out.
    pub fn exclude(
        &mut self,
        part: &mut crate::Partition,
        path: &Path,
    ) -> Result<usize, TrainError> {
        let dropped = artifacts::exclusions::dropped(path)?;
        let keep = |i: &usize| !dropped.contains(&self.faces.sources[*i]);
        let before = part.train.len() + part.val.len() + part.test.len();
        part.train.retain(keep);
        part.val.retain(keep);
        part.test.retain(keep);
        self.exclusions_digest = Some(artifacts::digest_file(path)?);
        Ok(before - part.train.len() - part.val.len() - part.test.len())
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
            for (a, &v) in acc.iter_mut().zip(self.faces.image(i).iter()) {
                *a += v as f64;
            }
        }
        let n = train.len().max(1) as f64;
        acc.iter().map(|a| (*a / n) as f32).collect()
    }
}

/// Subtracts the mean image and scales to about [-1, 1]: NHWC f32 for `idx`, the layout
/// the faces are stored in and the student's convolutions run in (no transpose per batch).
/// `flip`/`shift` per sample implement the optional augmentation.
pub fn input_batch(
    faces: &Faces,
    idx: &[usize],
    mean: &[f32],
    aug: Option<&[(bool, i32, i32)]>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    pixels_batch(
        |k| faces.image(idx[k]),
        idx.len(),
        (faces.height, faces.width),
        mean,
        aug,
        device,
    )
}

/// [`input_batch`] over any `n` HWC images `image(0..n)` of size `(h, w)` (the faces, or
/// `--distill`'s views).
pub fn pixels_batch<'a>(
    image: impl Fn(usize) -> std::borrow::Cow<'a, [u8]>,
    n: usize,
    (h, w): (usize, usize),
    mean: &[f32],
    aug: Option<&[(bool, i32, i32)]>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let row = w * 3;
    let mut out = vec![0f32; n * h * row];
    for k in 0..n {
        let img = image(k);
        let (flip, dx, dy) = aug.map(|a| a[k]).unwrap_or((false, 0, 0));
        let dst = &mut out[k * h * row..(k + 1) * h * row];
        for y in 0..h {
            let sy = y as i32 - dy;
            // Outside the shifted image stays 0: the mean, after subtraction.
            if sy < 0 || sy as usize >= h {
                continue;
            }
            let src = &img[sy as usize * row..(sy as usize + 1) * row];
            let m = &mean[y * row..(y + 1) * row];
            let d = &mut dst[y * row..(y + 1) * row];
            for x in 0..w {
                let xs = if flip { w - 1 - x } else { x } as i32 - dx;
                if xs < 0 || xs as usize >= w {
                    continue;
                }
                for c in 0..3 {
                    d[x * 3 + c] = (src[xs as usize * 3 + c] as f32 - m[x * 3 + c]) / 128.0;
                }
            }
        }
    }
    Tensor::from_vec(out, (n, h, w, 3), device)
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

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_order_reads_a_window_of_shards_at_a_time() {
        use rand::SeedableRng;
        let train: Vec<usize> = (0..40).filter(|i| i % 5 != 0).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let one = super::epoch_order(&train, &[0], 4, &mut rng);
        let mut sorted = one.clone();
        sorted.sort();
        assert_eq!(sorted, train);
        // 4 shards of 10 rows, 2 at a time: the first half of the order is two whole shards.
        let order = super::epoch_order(&train, &[0, 10, 20, 30], 2, &mut rng);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, train);
        let mut first: Vec<usize> = order[..16].iter().map(|i| i / 10).collect();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 2, "{order:?}");
        // Rows are mixed inside the window, not shard after shard.
        assert_ne!(
            order[..8].iter().map(|i| i / 10).min(),
            order[..8].iter().map(|i| i / 10).max()
        );
    }

    use super::*;
    use artifacts::Provenance;

    /// One 2x3 image whose pixel (y, x, c) is 10 * (3y + x) + c.
    fn tiny() -> Faces {
        let (h, w) = (2, 3);
        let images = (0..h * w * 3)
            .map(|i| (10 * (i / 3) + i % 3) as u8)
            .collect();
        Faces {
            height: h,
            width: w,
            images,
            labels: vec![0],
            splits: vec![Split::Train],
            class_names: vec!["a".into()],
            sources: vec!["a/0.jpg".into()],
            geometry: None,
            provenance: Provenance::new("test", "0", serde_json::Value::Null),
        }
    }

    fn batch(aug: Option<(bool, i32, i32)>) -> Vec<f32> {
        let f = tiny();
        let mean = vec![1.0; 18];
        let aug = aug.map(|a| vec![a]);
        let t = input_batch(&f, &[0], &mean, aug.as_deref(), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 2, 3, 3], "NHWC");
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Value at (y, x, c) of the input for source pixel (sy, sx), or 0 outside.
    fn want(src: Option<(usize, usize)>, c: usize) -> f32 {
        src.map(|(sy, sx)| ((10 * (3 * sy + sx) + c) as f32 - 1.0) / 128.0)
            .unwrap_or(0.0)
    }

    #[test]
    fn input_is_mean_subtracted_nhwc() {
        let got = batch(None);
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..3 {
                    assert_eq!(got[(y * 3 + x) * 3 + c], want(Some((y, x)), c));
                }
            }
        }
    }

    #[test]
    fn flip_and_shift_move_pixels_and_fill_with_the_mean() {
        // Flip, then shift right by 1 and down by 1: output (y, x) reads source
        // (y - 1, 2 - x - 1) when inside the image.
        let got = batch(Some((true, 1, 1)));
        for y in 0..2i32 {
            for x in 0..3i32 {
                let (sy, sx) = (y - 1, 2 - x - 1);
                let src = (sy >= 0 && sx >= 0).then_some((sy as usize, sx as usize));
                for c in 0..3 {
                    assert_eq!(
                        got[((y * 3 + x) * 3) as usize + c],
                        want(src, c),
                        "({y},{x},{c})"
                    );
                }
            }
        }
    }
}
