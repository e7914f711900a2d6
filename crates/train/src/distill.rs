//! `--distill`: function matching on consistent views (Beyer et al. 2022) with losses for a
//! metric teacher. The student trains on view v of a face (cut from the photo by
//! `preprocess::views`, the pixels the teacher stage embedded) and is pulled towards the
//! teacher's output on that same view: its class probabilities (the teacher's descriptor
//! read by a linear probe fitted here, with a temperature), the descriptor itself (cosine)
//! and the distances between the faces of a batch (RKD), beside the labels' cross entropy.
//!
//! The views come from a bank (K views a face, embedded once by the teacher stage) or, with
//! `--online-teacher`, are drawn fresh at every step and embedded there and then by dlib's
//! face descriptor (the recipe's own way: the student never sees the same view twice).

use crate::data::Dataset;
use crate::{ConfigError, TrainError};
use artifacts::ViewBank;
use candle_core::{DType, Device, Tensor, Var, D};
use preprocess::views::{ViewJitter, ViewParams, ViewRecipe, ViewSource};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Which teacher output a view is compared with.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ViewTargets {
    /// The teacher's output on the very view the student sees (function matching).
    #[default]
    Consistent,
    /// The teacher's output on the unaugmented face, whatever view the student sees (one
    /// fixed target per photo: the study's way, for the ablation).
    Fixed,
}

/// The loss weights and view settings of `--distill`; saved in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DistillConfig {
    /// Cross entropy on the (mixed) labels.
    pub ce: f64,
    /// KL to the teacher probe's probabilities at `temperature` (Hinton's T^2 scaling).
    pub kl: f64,
    pub temperature: f64,
    /// Cosine distance between the student's embedding and the teacher's descriptor.
    pub cos: f64,
    /// RKD distance loss on the batch's pairwise distances (Park et al. 2019).
    pub rkd: f64,
    /// RKD angle loss on the batch's triplets.
    pub angle: f64,
    /// Share of batches mixed up (two views blended, and their targets; online, the
    /// teacher's outputs are its own on the blend).
    pub mixup: f64,
    pub view_targets: ViewTargets,
    /// Use only the bank's first views (0 = all): the ablation of K without another
    /// teacher run (view v of a face is the same in every bank with the same seed).
    pub max_views: usize,
    /// `--online-teacher`: a fresh view of every face at every step, the face teacher run
    /// on it there and then (the recipe's way), instead of the bank's K views.
    pub online: bool,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            ce: 1.0,
            kl: 1.0,
            temperature: 4.0,
            cos: 1.0,
            rkd: 1.0,
            angle: 0.0,
            mixup: 0.0,
            view_targets: ViewTargets::Consistent,
            max_views: 0,
            online: false,
        }
    }
}

impl DistillConfig {
    pub fn objective(&self) -> losses::Objective {
        losses::Objective::Distill {
            ce: self.ce,
            kl: self.kl,
            temperature: self.temperature,
            cos: self.cos,
            rkd: self.rkd,
            angle: self.angle,
        }
    }
}

/// What `--distill` trains from: per training face, K views' student pixels and the
/// teacher's centred descriptors and probe probabilities on them.
pub struct DistillData {
    pub k: usize,
    /// No view bank: the faces as preprocess cut them (the trainer then flips and shifts
    /// them as the study's modes do, with the face's one target).
    pub plain: bool,
    /// Face index -> its slot in `pixels` (training faces only).
    slot: Vec<Option<usize>>,
    /// u8 [slots, K, H, W, 3].
    pixels: Vec<u8>,
    image_len: usize,
    /// Centred teacher rows [N, K, D] (the bank's, or the one face row repeated).
    pub targets: Vec<f32>,
    pub dim: usize,
    /// The probe's probabilities at the temperature [N, K, C] (rows of training faces).
    pub probs: Vec<f32>,
    pub classes: usize,
    /// The per-dimension training mean subtracted from the teacher's rows.
    pub mean: Vec<f32>,
    /// Test accuracy of the teacher probe on the face rows (what the teacher knows).
    pub probe_val_acc: Option<f64>,
    /// `--online-teacher`: the teacher and the probe that read it on fresh views.
    online: Option<OnlineTeacher>,
}

/// `--online-teacher`: dlib's face descriptor run on a fresh view of each face as training
/// goes, read by the probe fitted on the bank (the probe and the centring stay fixed).
struct OnlineTeacher {
    /// None when no term reads the teacher (labels alone need only the fresh views).
    net: Option<dlib_dnn::FaceDescriptor>,
    recipe: ViewRecipe,
    probe: Option<Probe>,
    temperature: f64,
    device: Device,
}

/// One `--online-teacher` batch: the fresh views' student pixels (unmixed: the caller
/// blends them as it blends a bank's) and the teacher's outputs on them (empty when no
/// term reads the teacher), computed on the mixed chips when the batch is mixed up.
pub struct OnlineBatch {
    pub pixels: Vec<u8>,
    pub targets: Vec<f32>,
    pub probs: Vec<f32>,
}

/// A mixed-up batch: row j is `lam[j]` x (sample j) + (1 - `lam[j]`) x (sample
/// `partner[j]`), positions within the batch.
pub struct Mixup {
    pub partner: Vec<usize>,
    pub lam: Vec<f32>,
}

impl Mixup {
    /// Blends rows of `width` values (row j of `rows` with its partner's row).
    pub fn blend(&self, rows: &[f32], width: usize) -> Vec<f32> {
        self.rows(rows, width, |l, a, b| l * a + (1.0 - l) * b)
    }

    /// The mixed image the teacher sees: the blend of two `u8` chips, rounded.
    fn blend_u8(&self, rows: &[u8], width: usize) -> Vec<u8> {
        self.rows(rows, width, |l, a, b| {
            (l * a as f32 + (1.0 - l) * b as f32).round() as u8
        })
    }

    /// `mix(lam[j], value of row j, value of its partner's row)` for every value.
    fn rows<T: Copy, U>(&self, rows: &[T], width: usize, mix: impl Fn(f32, T, T) -> U) -> Vec<U> {
        let row = |j: usize| &rows[j * width..(j + 1) * width];
        let mut out = Vec::with_capacity(self.lam.len() * width);
        for (j, (&l, &p)) in self.lam.iter().zip(&self.partner).enumerate() {
            out.extend(row(j).iter().zip(row(p)).map(|(&a, &b)| mix(l, a, b)));
        }
        out
    }
}

impl DistillData {
    /// Cuts the views of the training faces from their photos (the bank's recipe; `photos`
    /// overrides its folder), centres the teacher's rows and fits the teacher's probe.
    pub fn build(
        data: &Dataset,
        train: &[usize],
        val: &[usize],
        cfg: &DistillConfig,
        photos: Option<&PathBuf>,
        teacher_model: Option<&Path>,
        device: &Device,
    ) -> Result<DistillData, TrainError> {
        let b = data
            .teacher
            .as_ref()
            .ok_or(ConfigError::NeedsTeacher("distill"))?;
        let (n, dim) = (b.len(), b.dim);
        let faces = &data.faces;
        let image_len = faces.height * faces.width * 3;
        let mut slot = vec![None; n];
        for (s, &i) in train.iter().enumerate() {
            slot[i] = Some(s);
        }
        let recipe = match &b.views {
            Some(bank) => {
                let mut r: ViewRecipe = serde_json::from_value(bank.recipe.clone())
                    .map_err(|e| ConfigError::ViewRecipe(e.to_string()))?;
                if let Some(p) = photos {
                    r.photos = p.clone();
                }
                Some(r)
            }
            None => photos.map(|p| ViewRecipe {
                seed: 0,
                jitter: ViewJitter::default(),
                photos: p.clone(),
            }),
        };
        let needed = cfg.kl > 0.0 || cfg.cos > 0.0 || cfg.rkd > 0.0 || cfg.angle > 0.0;
        let online_net = match (cfg.online, needed) {
            (false, _) => None,
            // Labels alone on fresh views: the teacher is not run.
            (true, false) => Some(None),
            (true, true) => {
                // The file the teacher stage read, when it is still there.
                let recorded = b.provenance.config["teacher"]
                    .as_str()
                    .map(PathBuf::from)
                    .filter(|p| p.is_file());
                let model = teacher_model.or(recorded.as_deref());
                Some(Some(open_online_teacher(cfg, &b.teacher, model, device)?))
            }
        };
        let (k, raw, pixels) = match &b.views {
            Some(bank) => {
                let k = match cfg.max_views {
                    0 => bank.k,
                    m => m.min(bank.k),
                };
                let pixels = match (&online_net, &recipe) {
                    (None, Some(r)) => cut_views(data, bank, k, train, r)?,
                    _ => vec![],
                };
                let rows = (0..n)
                    .flat_map(|i| (0..k).flat_map(move |v| bank.row(dim, i, v)))
                    .copied()
                    .collect();
                (k, rows, pixels)
            }
            None if cfg.online => (1, b.features.clone(), vec![]),
            None => {
                tracing::warn!(
                    "the bottlenecks hold no views (inception-bottleneck --views K): --distill \
                     trains on the faces as preprocess cut them (flipped and shifted with \
                     --augment), with the face's one target"
                );
                let mut px = Vec::with_capacity(train.len() * image_len);
                for &i in train {
                    px.extend_from_slice(&faces.image(i));
                }
                (1, b.features.clone(), px)
            }
        };
        // Centre by the training faces' own rows (view 0 is the face itself).
        let mut mean = vec![0f32; dim];
        for &i in train {
            for (m, v) in mean.iter_mut().zip(&raw[i * k * dim..i * k * dim + dim]) {
                *m += v / train.len() as f32;
            }
        }
        let mut targets = raw;
        for row in targets.chunks_exact_mut(dim) {
            row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
        }
        if cfg.view_targets == ViewTargets::Fixed {
            for face in targets.chunks_exact_mut(k * dim) {
                let (first, rest) = face.split_at_mut(dim);
                rest.chunks_exact_mut(dim)
                    .for_each(|r| r.copy_from_slice(first));
            }
        }
        let classes = data.num_classes();
        let (probs, probe_val_acc, probe) = if cfg.kl > 0.0 {
            let labels = &faces.labels;
            let probe = fit_probe(&targets, k, dim, labels, train, classes, device)?;
            let acc = probe.accuracy(&targets, k, labels, val, device)?;
            tracing::info!(
                "teacher probe for the KL term: validation accuracy {}",
                acc.map(|a| format!("{a:.3}"))
                    .unwrap_or_else(|| "n/a".into())
            );
            // Online, the probabilities are computed on each fresh view instead.
            let probs = match online_net {
                Some(_) => vec![],
                None => probe.probs(&targets, cfg.temperature, device)?,
            };
            (probs, acc, Some(probe))
        } else {
            (vec![], None, None)
        };
        let online = match online_net {
            Some(net) => Some(OnlineTeacher {
                net,
                recipe: recipe.ok_or(ConfigError::OnlineNeedsPhotos)?,
                probe,
                temperature: cfg.temperature,
                device: device.clone(),
            }),
            None => None,
        };
        Ok(DistillData {
            k,
            plain: b.views.is_none() && !cfg.online,
            slot,
            pixels,
            image_len,
            targets,
            dim,
            probs,
            classes,
            mean,
            probe_val_acc,
            online,
        })
    }

    /// Whether views are fresh every step (`--online-teacher`).
    pub fn is_online(&self) -> bool {
        self.online.is_some()
    }

    /// `--online-teacher`: one fresh view of each face of `chunk` (its jitter drawn from
    /// `rng`), cut from its photo, and the teacher's centred descriptor and probe
    /// probabilities on that view, or with `mix` on the blend of two views' chips: the
    /// recipe's function matching, the teacher's output on the very image the student
    /// sees, which a blend of two outputs is not.
    pub fn online_batch(
        &self,
        faces: &artifacts::Faces,
        chunk: &[usize],
        mix: Option<&Mixup>,
        rng: &mut impl rand::Rng,
    ) -> Result<OnlineBatch, TrainError> {
        let t = self.online.as_ref().expect("an online teacher");
        let params: Vec<ViewParams> = chunk
            .iter()
            .map(|_| {
                t.recipe
                    .jitter
                    .view(&std::array::from_fn(|_| rng.gen::<f32>()))
            })
            .collect();
        let source = ViewSource::new(faces, &t.recipe.photos)?;
        let views = chunk
            .par_iter()
            .zip(&params)
            .map(|(&i, p)| Ok(source.render(i, std::slice::from_ref(p))?.remove(0)))
            .collect::<Result<Vec<_>, TrainError>>()?;
        let pixels = views.iter().flat_map(|v| v.face.iter().copied()).collect();
        let Some(net) = &t.net else {
            return Ok(OnlineBatch {
                pixels,
                targets: vec![],
                probs: vec![],
            });
        };
        let mut chips: Vec<u8> = views.iter().flat_map(|v| v.chip.iter().copied()).collect();
        if let Some(m) = mix {
            chips = m.blend_u8(&chips, chips.len() / chunk.len());
        }
        let mut targets = net
            .descriptors(&chips, chunk.len())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for row in targets.chunks_exact_mut(self.dim) {
            row.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
        }
        let probs = match &t.probe {
            Some(p) => p.probs(&targets, t.temperature, &t.device)?,
            None => vec![],
        };
        Ok(OnlineBatch {
            pixels,
            targets,
            probs,
        })
    }

    /// Student pixels of training face `i`'s view `v`.
    pub fn pixels(&self, i: usize, v: usize) -> &[u8] {
        let s = self.slot[i].expect("a training face") * self.k + v;
        &self.pixels[s * self.image_len..(s + 1) * self.image_len]
    }

    pub fn target(&self, i: usize, v: usize) -> &[f32] {
        let o = (i * self.k + v) * self.dim;
        &self.targets[o..o + self.dim]
    }

    pub fn prob(&self, i: usize, v: usize) -> Option<&[f32]> {
        let o = (i * self.k + v) * self.classes;
        self.probs.get(o..o + self.classes)
    }
}

/// dlib's face descriptor for `--online-teacher`: the file the bottlenecks were made with
/// (their teacher names its digest), so the probe fitted on their rows reads it.
fn open_online_teacher(
    cfg: &DistillConfig,
    teacher: &str,
    model: Option<&Path>,
    device: &Device,
) -> Result<dlib_dnn::FaceDescriptor, TrainError> {
    if cfg.view_targets == ViewTargets::Fixed {
        return Err(ConfigError::OnlineFixed.into());
    }
    if !artifacts::is_face_teacher(teacher) {
        return Err(ConfigError::OnlineNeedsFaceTeacher(teacher.into()).into());
    }
    let path =
        artifacts::models::locate(&artifacts::models::FACE_DESCRIPTOR, model).map_err(|e| {
            ConfigError::OnlineModel {
                path: e.path,
                problem: e.problem,
            }
        })?;
    let (id, _) = artifacts::face_teacher_of_file(&path)?;
    if !artifacts::same_face_teacher(teacher, &id) {
        return Err(ConfigError::OnlineOtherTeacher {
            path,
            teacher: teacher.into(),
        }
        .into());
    }
    let kernels = dlib_dnn::Kernels::best_for(device, DType::F32);
    let net = dlib_dnn::FaceDescriptor::open(&path, kernels, device, DType::F32).map_err(|e| {
        ConfigError::OnlineModel {
            path: path.clone(),
            problem: e.to_string(),
        }
    })?;
    tracing::info!(
        "online teacher {} on a fresh view of every face at every step",
        path.display()
    );
    Ok(net)
}

/// The student's pixels of every view of the training faces, cut from their photos.
fn cut_views(
    data: &Dataset,
    bank: &ViewBank,
    k: usize,
    train: &[usize],
    recipe: &ViewRecipe,
) -> Result<Vec<u8>, TrainError> {
    let source = ViewSource::new(&data.faces, &recipe.photos)?;
    let bar = indicatif::ProgressBar::new(train.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("views {bar:40} {pos}/{len} [{elapsed_precise}]")
            .expect("valid template"),
    );
    let per_face: Vec<Vec<u8>> = train
        .par_iter()
        .map(|&i| {
            let params: Vec<ViewParams> = (0..k)
                .map(|v| ViewParams::from_row(bank.params_of(i, v)))
                .collect();
            let views = source.render(i, &params)?;
            bar.inc(1);
            Ok(views.into_iter().flat_map(|v| v.face).collect())
        })
        .collect::<Result<_, TrainError>>()?;
    bar.finish_and_clear();
    tracing::info!(
        "cut {k} views of {} training faces from {}",
        train.len(),
        recipe.photos.display()
    );
    Ok(per_face.concat())
}

/// The teacher's descriptor read by a linear softmax classifier: the teacher's class
/// probabilities on any view, the targets of the KL term.
struct Probe {
    w: Tensor,
    b: Tensor,
}

/// Full-batch softmax regression on the training faces' view rows (AdamW, 300 steps,
/// light weight decay); the rows are centred descriptors, so no scaling is needed.
fn fit_probe(
    rows: &[f32],
    k: usize,
    dim: usize,
    labels: &[u32],
    train: &[usize],
    classes: usize,
    device: &Device,
) -> Result<Probe, TrainError> {
    let mut x = Vec::with_capacity(train.len() * k * dim);
    let mut y = Vec::with_capacity(train.len() * k);
    for &i in train {
        x.extend_from_slice(&rows[i * k * dim..(i + 1) * k * dim]);
        y.extend(std::iter::repeat_n(labels[i], k));
    }
    let m = y.len();
    let x = Tensor::from_vec(x, (m, dim), device)?;
    let y = Tensor::from_vec(y, m, device)?;
    let w = Var::zeros((dim, classes), DType::F32, device)?;
    let b = Var::zeros(classes, DType::F32, device)?;
    let mut opt = crate::optim::AdamW::new(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        crate::optim::AdamWConfig {
            lr: 0.05,
            weight_decay: 1e-3,
            ..Default::default()
        },
    )?;
    for _ in 0..300 {
        let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        let loss = losses::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss, 0.05, &|_| false)?;
    }
    Ok(Probe {
        w: w.as_tensor().detach(),
        b: b.as_tensor().detach(),
    })
}

impl Probe {
    fn logits(&self, rows: &[f32], dim: usize, device: &Device) -> candle_core::Result<Tensor> {
        let x = Tensor::from_slice(rows, (rows.len() / dim, dim), device)?;
        x.matmul(&self.w)?.broadcast_add(&self.b)
    }

    /// softmax(logits / T) of every row.
    fn probs(&self, rows: &[f32], t: f64, device: &Device) -> Result<Vec<f32>, TrainError> {
        let dim = self.w.dim(0)?;
        let p = candle_nn::ops::softmax(&(self.logits(rows, dim, device)? / t)?, D::Minus1)?;
        Ok(p.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Accuracy on the faces `idx` (their view-0 rows).
    fn accuracy(
        &self,
        rows: &[f32],
        k: usize,
        labels: &[u32],
        idx: &[usize],
        device: &Device,
    ) -> Result<Option<f64>, TrainError> {
        if idx.is_empty() {
            return Ok(None);
        }
        let dim = self.w.dim(0)?;
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&i| rows[i * k * dim..i * k * dim + dim].iter().copied())
            .collect();
        let pred = self
            .logits(&x, dim, device)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        let ok = pred
            .iter()
            .zip(idx)
            .filter(|(p, &i)| **p == labels[i])
            .count();
        Ok(Some(ok as f64 / idx.len() as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::Mixup;

    #[test]
    fn mixup_blends_each_row_with_its_partner() {
        let m = Mixup {
            partner: vec![1, 0, 2],
            lam: vec![0.25, 1.0, 0.5],
        };
        let rows = [0.0, 4.0, 8.0, 0.0, 2.0, 2.0];
        assert_eq!(m.blend(&rows, 2), vec![6.0, 1.0, 8.0, 0.0, 2.0, 2.0]);
        let chips = [0u8, 255, 100, 0, 7, 9];
        assert_eq!(m.blend_u8(&chips, 2), vec![75, 64, 100, 0, 7, 9]);
    }
}
