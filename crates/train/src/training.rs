//! The training loop: phases, seeded batches, AdamW, validation-based selection, atomic
//! per-epoch checkpoints that resume exactly, and a NaN guard.

use crate::data::{input_batch, normalize_targets, pixels_batch, rows, Dataset, TargetNorm};
use crate::distill::{DistillConfig, DistillData};
use crate::inference::weights_of;
use crate::optim::{AdamW, AdamWConfig};
use crate::{CheckpointError, ConfigError, DataError, TrainError};
use artifacts::{Checkpoint, NamedTensor};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use kernels::device::DeviceChoice;
use losses::{LossTerms, Objective};
use model::{Mode as NetMode, Student, StudentConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which study variant to train.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    /// Cross entropy only, no bottleneck layer: the no-transfer baseline.
    Base,
    /// Phase 1: MSE to the teacher bottleneck; phase 2: cross entropy.
    TwoStep,
    /// Cross entropy + beta x cosine distance to the teacher bottleneck.
    Cosine,
    /// Linear softmax classifier on the teacher's bottlenecks alone.
    Probe,
    /// Function matching on consistent views: cross entropy + KL to the teacher's probe +
    /// cosine to its descriptor + RKD on the batch's distances ([`crate::distill`]).
    Distill,
}

impl TrainMode {
    pub fn name(self) -> &'static str {
        match self {
            TrainMode::Base => "base",
            TrainMode::TwoStep => "two-step",
            TrainMode::Cosine => "cosine",
            TrainMode::Probe => "probe",
            TrainMode::Distill => "distill",
        }
    }
    pub fn needs_teacher(self) -> bool {
        self != TrainMode::Base
    }
}

/// Which student activation the teacher is compared with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BottleneckSource {
    /// Before the ReLU (what the study's cosine loss used).
    Pre,
    /// After the ReLU.
    Post,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Cosine decay to 1% of the learning rate over the phase's epochs.
    Cosine,
}

/// Every training setting; saved in the checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub mode: TrainMode,
    /// Epochs of the main (cross-entropy) phase.
    pub epochs: usize,
    /// Epochs of two-step's MSE phase.
    pub phase1_epochs: usize,
    /// Lower bound on optimiser steps per phase: small data sets get more epochs
    /// (64 images at batch 16 are 4 steps an epoch; the distillation term needs hundreds
    /// of steps to move, measured on the study's 4x20 subset).
    pub min_steps: usize,
    pub batch: usize,
    pub optim: AdamWConfig,
    pub schedule: Schedule,
    /// Stop a phase after this many epochs without a better validation score (0 = never).
    pub patience: usize,
    pub beta: f64,
    pub bottleneck_source: BottleneckSource,
    pub target_norm: TargetNorm,
    /// Two-step phase 2: train only the classifier.
    pub freeze_trunk: bool,
    /// Horizontal flips and shifts of up to 4 px (on by default: +4.7 points in a 5-fold
    /// cross-validation inside the seed-4x20 training split, and +11 / +5 points of
    /// validation accuracy for base / cosine on msceleb-samples).
    pub augment: bool,
    pub seed: u64,
    pub device: DeviceChoice,
    /// Student architecture (image size, classes and bottleneck width come from the data).
    pub student: StudentConfig,
    /// Share of the correctly named validation faces the open-set rule may call unknown
    /// ([`crate::open_set`]).
    #[serde(default = "default_unknown_rate")]
    pub unknown_rate: f64,
    /// Epochs of linear learning-rate warm-up before the schedule (0 = none).
    #[serde(default)]
    pub warmup: usize,
    /// `--distill`'s loss weights and views.
    #[serde(default)]
    pub distill: DistillConfig,
    /// Where `--distill` cuts the views from, instead of the folder the bank recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photos: Option<PathBuf>,
    /// `--online-teacher`'s model file, when not the located one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_model: Option<PathBuf>,
}

fn default_unknown_rate() -> f64 {
    crate::open_set::DEFAULT_RATE
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            mode: TrainMode::Cosine,
            epochs: 60,
            phase1_epochs: 40,
            min_steps: 800,
            batch: 16,
            optim: AdamWConfig::default(),
            schedule: Schedule::Cosine,
            patience: 20,
            beta: 0.1,
            bottleneck_source: BottleneckSource::Pre,
            target_norm: TargetNorm::Standardize,
            freeze_trunk: false,
            augment: true,
            seed: 42,
            device: DeviceChoice::Auto,
            student: StudentConfig::default(),
            unknown_rate: crate::open_set::DEFAULT_RATE,
            warmup: 0,
            distill: DistillConfig::default(),
            photos: None,
            teacher_model: None,
        }
    }
}

/// Which images train, select and test.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// Files of a run; all optional so cross-validation can train in memory.
#[derive(Debug, Clone, Default)]
pub struct RunFiles {
    /// Final checkpoint (the selected epoch's weights).
    pub output: Option<PathBuf>,
    /// Per-epoch resumable state.
    pub resume_file: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
    /// Continue from `resume_file`.
    pub resume: bool,
    pub progress: bool,
    /// Stop (with [`TrainError::Interrupted`]) after this many epochs in this process, as
    /// if killed: the resume file holds everything to continue.
    pub interrupt_after: Option<usize>,
}

impl RunFiles {
    /// `<dir>/<stem>.resume.safetensors` and `<dir>/<stem>.metrics.jsonl` beside `output`.
    pub fn beside(output: &Path) -> RunFiles {
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = output.parent().unwrap_or(Path::new("."));
        RunFiles {
            output: Some(output.to_path_buf()),
            resume_file: Some(dir.join(format!("{stem}.resume.safetensors"))),
            metrics: Some(dir.join(format!("{stem}.metrics.jsonl"))),
            resume: false,
            progress: true,
            interrupt_after: None,
        }
    }
}

/// One line of the metrics file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub phase: usize,
    pub epoch: usize,
    pub loss: f64,
    pub cross_entropy: Option<f64>,
    pub mse: Option<f64>,
    pub cosine: Option<f64>,
    /// `--distill`'s terms (absent in other modes' lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rkd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle: Option<f64>,
    pub train_acc: f64,
    pub val_acc: Option<f64>,
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub mode: TrainMode,
    pub test_acc: Option<f64>,
    pub val_acc: Option<f64>,
    pub best_epochs: Vec<usize>,
    pub epochs_run: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub device: String,
    /// Flipped training images were given the teacher's mirrored views as targets.
    pub mirrored_targets: bool,
}

/// Progress that survives a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    phase: usize,
    /// Epochs finished in this phase.
    epoch: usize,
    step: u64,
    best_score: f64,
    best_epoch: usize,
    bad_epochs: usize,
    best_epochs: Vec<usize>,
    train_seconds: f64,
    samples: u64,
}

impl State {
    fn fresh() -> State {
        State {
            phase: 0,
            epoch: 0,
            step: 0,
            best_score: f64::NEG_INFINITY,
            best_epoch: 0,
            bad_epochs: 0,
            best_epochs: vec![],
            train_seconds: 0.0,
            samples: 0,
        }
    }
}

/// The student being trained and the variables it was built on.
struct Net {
    student: Student,
    varmap: VarMap,
}

/// What changes as training goes: progress, optimiser and the selected epoch's weights
/// (all three go into the resume file).
struct Progress {
    state: State,
    best: BTreeMap<String, Tensor>,
    opt: AdamW,
}

/// Where epochs are reported: the metrics file and the progress bar.
struct EpochLog {
    file: Option<std::fs::File>,
    bar: indicatif::ProgressBar,
}

/// A loss term's sum over an epoch's samples, and whether the objective has it.
#[derive(Default)]
struct TermSum {
    sum: f64,
    seen: bool,
}

impl TermSum {
    fn add(&mut self, t: &Option<Tensor>, k: f64) -> candle_core::Result<()> {
        if let Some(t) = t {
            self.sum += scalar(t)? * k;
            self.seen = true;
        }
        Ok(())
    }
    fn mean(&self, n: f64) -> Option<f64> {
        self.seen.then_some(self.sum / n)
    }
}

/// An epoch's running sums.
#[derive(Default)]
struct EpochSums {
    loss: f64,
    n_seen: usize,
    correct: usize,
    ce: TermSum,
    mse: TermSum,
    cos: TermSum,
    kl: TermSum,
    rkd: TermSum,
    angle: TermSum,
}

impl EpochSums {
    /// One batch of `n` samples (its loss terms are batch means).
    fn add(&mut self, terms: &LossTerms, loss: f64, n: usize) -> candle_core::Result<()> {
        let k = n as f64;
        self.ce.add(&terms.cross_entropy, k)?;
        self.mse.add(&terms.mse, k)?;
        self.cos.add(&terms.cosine, k)?;
        self.kl.add(&terms.kl, k)?;
        self.rkd.add(&terms.rkd, k)?;
        self.angle.add(&terms.angle, k)?;
        self.loss += loss * k;
        self.n_seen += n;
        Ok(())
    }

    /// The metrics line; `val` is (accuracy, loss) when there is a validation split.
    fn metrics(
        &self,
        state: &State,
        val: Option<(f64, f64)>,
        lr: f64,
        seconds: f64,
    ) -> EpochMetrics {
        let n = self.n_seen.max(1) as f64;
        EpochMetrics {
            phase: state.phase + 1,
            epoch: state.epoch,
            loss: self.loss / n,
            cross_entropy: self.ce.mean(n),
            mse: self.mse.mean(n),
            cosine: self.cos.mean(n),
            kl: self.kl.mean(n),
            rkd: self.rkd.mean(n),
            angle: self.angle.mean(n),
            train_acc: self.correct as f64 / n,
            val_acc: val.map(|v| v.0),
            val_loss: val.map(|v| v.1),
            lr,
            seconds,
        }
    }
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// The metrics file, created (or, resuming, trimmed to the resume point and appended to).
fn open_metrics(files: &RunFiles, state: &State) -> Result<Option<std::fs::File>, TrainError> {
    let Some(p) = &files.metrics else {
        return Ok(None);
    };
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| TrainError::Io(d.to_path_buf(), e))?;
    }
    if files.resume {
        trim_metrics(p, state)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(files.resume)
        .write(true)
        .truncate(!files.resume)
        .open(p)
        .map_err(|e| TrainError::Io(p.clone(), e))?;
    Ok(Some(f))
}

/// The epochs bar over all phases, at the position `state` has reached.
fn progress_bar(files: &RunFiles, phases: &[Phase], state: &State) -> indicatif::ProgressBar {
    let total_epochs: usize = phases.iter().map(|p| p.epochs).sum();
    let bar = if files.progress {
        indicatif::ProgressBar::new(total_epochs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "train {msg} {bar:30} epoch {pos}/{len} [{elapsed_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(
        phases[..state.phase.min(phases.len())]
            .iter()
            .map(|p| p.epochs)
            .sum::<usize>() as u64
            + state.epoch as u64,
    );
    bar
}

struct Phase {
    objective: Objective,
    epochs: usize,
    /// Select by validation accuracy (true) or by validation loss (MSE phase).
    by_accuracy: bool,
    freeze_trunk: bool,
}

fn phases(cfg: &TrainConfig, n_train: usize) -> Vec<Phase> {
    let steps_per_epoch = n_train.div_ceil(cfg.batch.max(1)).max(1);
    let at_least = |epochs: usize| {
        if epochs == 0 {
            0
        } else {
            epochs.max(cfg.min_steps.div_ceil(steps_per_epoch))
        }
    };
    let ce = |freeze| Phase {
        objective: Objective::CrossEntropy,
        epochs: at_least(cfg.epochs),
        by_accuracy: true,
        freeze_trunk: freeze,
    };
    match cfg.mode {
        TrainMode::Base | TrainMode::Probe => vec![ce(false)],
        TrainMode::TwoStep => vec![
            Phase {
                objective: Objective::Mse,
                epochs: at_least(cfg.phase1_epochs),
                by_accuracy: false,
                freeze_trunk: false,
            },
            ce(cfg.freeze_trunk),
        ],
        TrainMode::Cosine => vec![Phase {
            objective: Objective::Cosine { beta: cfg.beta },
            epochs: at_least(cfg.epochs),
            by_accuracy: true,
            freeze_trunk: false,
        }],
        TrainMode::Distill => vec![Phase {
            objective: cfg.distill.objective(),
            epochs: at_least(cfg.epochs),
            by_accuracy: true,
            freeze_trunk: false,
        }],
    }
}

/// The learning rate of `epoch` (0-based) of a phase of `total` epochs: a linear warm-up
/// over `cfg.warmup` epochs, then the schedule over the rest.
fn lr_at(cfg: &TrainConfig, epoch: usize, total: usize) -> f64 {
    let warm = cfg.warmup.min(total.saturating_sub(1));
    if epoch < warm {
        return cfg.optim.lr * (epoch + 1) as f64 / (warm + 1) as f64;
    }
    let (epoch, total) = (epoch - warm, total - warm);
    match cfg.schedule {
        Schedule::Constant => cfg.optim.lr,
        Schedule::Cosine => {
            let t = epoch as f64 / total.max(1) as f64;
            let floor = 0.01 * cfg.optim.lr;
            floor + 0.5 * (cfg.optim.lr - floor) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Drops the metrics lines of epochs after the resume checkpoint's `state`, and a line cut
/// short by a kill: a run killed after logging an epoch but before checkpointing it
/// replays that epoch, and must not log it twice.
fn trim_metrics(path: &Path, state: &State) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::Io(path.to_path_buf(), e)),
    };
    let covered = |m: &EpochMetrics| {
        m.phase < state.phase + 1 || (m.phase == state.phase + 1 && m.epoch <= state.epoch)
    };
    let mut kept = String::new();
    let mut dropped = 0usize;
    for line in text.lines() {
        match serde_json::from_str::<EpochMetrics>(line) {
            Ok(m) if covered(&m) => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        tracing::info!(
            "{}: dropped {dropped} line(s) logged after the last checkpoint",
            path.display()
        );
        artifacts::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// A seeded RNG per (seed, phase, epoch): resuming at an epoch boundary replays exactly.
fn epoch_rng(seed: u64, phase: usize, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ ((phase as u64 + 1) << 40) ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// The trainer for the student modes (base, two-step, cosine).
pub struct Trainer<'a> {
    pub data: &'a Dataset,
    pub cfg: TrainConfig,
    pub device: Device,
    pub student_cfg: StudentConfig,
    mean: Vec<f32>,
    targets: Option<(Vec<f32>, usize)>,
    target_stats: (Vec<f32>, Vec<f32>),
    /// `Some(n)`: rows `n..2n` of `targets` are the teacher's mirrored views, the targets
    /// of flipped training images.
    mirror_offset: Option<usize>,
    /// `--distill`: the views and the teacher's outputs on them.
    distill: Option<DistillData>,
}

impl<'a> Trainer<'a> {
    pub fn new(
        data: &'a Dataset,
        cfg: &TrainConfig,
        part: &Partition,
    ) -> Result<Trainer<'a>, TrainError> {
        if cfg.mode == TrainMode::Probe {
            return Err(ConfigError::ProbeIsNotAStudent.into());
        }
        if cfg.batch == 0 {
            return Err(ConfigError::ZeroBatch.into());
        }
        if part.train.is_empty() {
            return Err(DataError::EmptyTrainSplit.into());
        }
        let f = &data.faces;
        if f.height != f.width {
            return Err(DataError::NotSquare {
                height: f.height,
                width: f.width,
            }
            .into());
        }
        let device = kernels::device::pick(cfg.device)?;
        if cfg.mode == TrainMode::Distill {
            return Self::new_distill(data, cfg, part, device);
        }
        let targets = if cfg.mode.needs_teacher() {
            let b = data
                .teacher
                .as_ref()
                .ok_or(ConfigError::NeedsTeacher(cfg.mode.name()))?;
            Some(b)
        } else {
            None
        };
        let (targets, target_stats, mirror_offset) = match targets {
            Some(b) => {
                // The mirrored rows follow the unflipped ones; the standardisation statistics
                // come from unflipped training rows only (all `part.train` indices are < n).
                let mirrored = b.mirrored.as_ref().filter(|_| cfg.augment);
                let joined;
                let rows: &[f32] = match mirrored {
                    Some(m) => {
                        joined = [b.features.as_slice(), m.as_slice()].concat();
                        &joined
                    }
                    None => &b.features,
                };
                if cfg.augment {
                    match mirrored {
                        Some(_) => tracing::info!(
                            "flipped training images get the teacher's mirrored view as target"
                        ),
                        None => tracing::info!(
                            "flipped training images keep the unflipped image's target (the \
                             bottlenecks hold no mirrored views: inception-bottleneck --mirror)"
                        ),
                    }
                }
                let (t, m, s) = normalize_targets(rows, b.dim, &part.train, cfg.target_norm);
                (Some((t, b.dim)), (m, s), mirrored.map(|_| b.len()))
            }
            None => (None, (vec![], vec![]), None),
        };
        let student_cfg = StudentConfig {
            image_size: f.height,
            num_classes: data.num_classes(),
            bottleneck: match cfg.mode {
                TrainMode::Base => None,
                _ => Some(targets.as_ref().map(|t| t.1).unwrap_or(2048)),
            },
            ..cfg.student.clone()
        };
        Ok(Trainer {
            mean: data.mean_image(&part.train),
            data,
            cfg: cfg.clone(),
            device,
            student_cfg,
            targets,
            target_stats,
            mirror_offset,
            distill: None,
        })
    }

    /// `--distill`: the student's embedding is as wide as the teacher's descriptor; its
    /// targets come from the views ([`DistillData`]), centred, not standardised (a
    /// metric teacher's distances are what the student should keep).
    fn new_distill(
        data: &'a Dataset,
        cfg: &TrainConfig,
        part: &Partition,
        device: Device,
    ) -> Result<Trainer<'a>, TrainError> {
        let d = DistillData::build(
            data,
            &part.train,
            &part.val,
            &cfg.distill,
            cfg.photos.as_ref(),
            cfg.teacher_model.as_deref(),
            &device,
        )?;
        let f = &data.faces;
        let student_cfg = StudentConfig {
            image_size: f.height,
            num_classes: data.num_classes(),
            bottleneck: Some(d.dim),
            ..cfg.student.clone()
        };
        Ok(Trainer {
            mean: data.mean_image(&part.train),
            data,
            cfg: cfg.clone(),
            device,
            student_cfg,
            targets: None,
            target_stats: (d.mean.clone(), vec![1.0; d.dim]),
            mirror_offset: None,
            distill: Some(d),
        })
    }

    fn labels(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let l: Vec<u32> = idx.iter().map(|&i| self.data.faces.labels[i]).collect();
        Tensor::from_vec(l, idx.len(), &self.device)
    }

    /// Targets of `idx`; `flipped[k]` picks sample k's mirrored view when there is one.
    fn teacher_rows(
        &self,
        idx: &[usize],
        flipped: Option<&[bool]>,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some((t, d)) = &self.targets else {
            return Ok(None);
        };
        let picked: Vec<usize> = match (self.mirror_offset, flipped) {
            (Some(n), Some(f)) => idx
                .iter()
                .zip(f)
                .map(|(&i, &flip)| if flip { i + n } else { i })
                .collect(),
            _ => idx.to_vec(),
        };
        rows(t, *d, &picked, &self.device).map(Some)
    }

    /// Whether flipped training images get the teacher's mirrored views as targets.
    pub fn mirrored_targets(&self) -> bool {
        self.mirror_offset.is_some()
    }

    fn pick_bottleneck<'o>(&self, out: &'o model::StudentOutput) -> Option<&'o Tensor> {
        match self.cfg.bottleneck_source {
            BottleneckSource::Pre => out.bottleneck_pre.as_ref(),
            BottleneckSource::Post => out.bottleneck.as_ref(),
        }
    }

    /// Mean loss and accuracy of `objective` over `idx`, in eval mode.
    pub fn evaluate(
        &self,
        student: &Student,
        idx: &[usize],
        objective: &Objective,
    ) -> Result<(f64, f64), TrainError> {
        if idx.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        // A distilled student is selected by its labels' cross entropy: the teacher's
        // outputs on the validation faces' views are not the point there.
        let objective = match objective {
            Objective::Distill { .. } => &Objective::CrossEntropy,
            o => o,
        };
        let (mut loss, mut correct) = (0f64, 0usize);
        for chunk in idx.chunks(128) {
            let x = input_batch(&self.data.faces, chunk, &self.mean, None, &self.device)?;
            let out = student.forward_nhwc(&x, NetMode::Eval)?;
            let y = self.labels(chunk)?;
            let t = self.teacher_rows(chunk, None)?;
            let terms =
                objective.compute(&out.logits, &y, self.pick_bottleneck(&out), t.as_ref())?;
            loss += terms.total.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
            correct += count_correct(&out.logits, chunk, &self.data.faces.labels)?;
        }
        Ok((loss / idx.len() as f64, correct as f64 / idx.len() as f64))
    }

    /// Trains through all phases; writes checkpoints and metrics per `files`.
    pub fn run(&self, part: &Partition, files: &RunFiles) -> Result<Outcome, TrainError> {
        let start = std::time::Instant::now();
        let net = self.seeded_student()?;
        let phases = phases(&self.cfg, part.train.len());
        let mut p = Progress {
            state: State::fresh(),
            best: snapshot(&net.varmap)?,
            opt: AdamW::new(vars_of(&net.varmap), self.cfg.optim)?,
        };
        if files.resume {
            self.resume(&net.varmap, &mut p, files)?;
        }
        let mut log = EpochLog {
            file: open_metrics(files, &p.state)?,
            bar: progress_bar(files, &phases, &p.state),
        };
        self.train_phases(&net, &mut p, &phases, part, files, &mut log)?;
        log.bar.finish_and_clear();
        let test_acc = self.final_accuracy(&net.student, &part.test)?;
        let val_acc = self.final_accuracy(&net.student, &part.val)?;
        if let Some(out) = &files.output {
            self.checkpoint(&net.varmap, None, &p.state)?.write(out)?;
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(Outcome {
            mode: self.cfg.mode,
            test_acc,
            val_acc,
            best_epochs: p.state.best_epochs.clone(),
            epochs_run: phases.iter().map(|p| p.epochs).sum(),
            seconds: secs,
            samples_per_second: p.state.samples as f64 / p.state.train_seconds.max(1e-9),
            device: kernels::device::describe(&self.device),
            mirrored_targets: self.mirrored_targets(),
        })
    }

    /// The student with every weight drawn from the run's seed: candle's own RNG is not
    /// seedable on every backend, so the initial weights are drawn here (same shapes and
    /// scales).
    fn seeded_student(&self) -> Result<Net, TrainError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &self.device);
        let student = Student::new(&self.student_cfg, vb)?;
        reinit_seeded(&varmap, self.cfg.seed)?;
        Ok(Net { student, varmap })
    }

    /// `--resume`: weights, optimiser moments, the best epoch's weights and the progress
    /// from the resume file, when it exists and was made with the same settings.
    fn resume(
        &self,
        varmap: &VarMap,
        p: &mut Progress,
        files: &RunFiles,
    ) -> Result<(), TrainError> {
        let path = files
            .resume_file
            .as_ref()
            .ok_or(ConfigError::NoResumeFile)?;
        if !path.exists() {
            tracing::warn!(
                "--resume: {} does not exist; starting afresh",
                path.display()
            );
            return Ok(());
        }
        let ck = Checkpoint::read(path)?;
        let parse_err = |error| CheckpointError::ResumeState {
            path: path.clone(),
            error,
        };
        let saved: TrainConfig =
            serde_json::from_value(ck.train_state["config"].clone()).map_err(parse_err)?;
        if saved != self.cfg {
            return Err(ConfigError::ResumeSettings(path.clone()).into());
        }
        p.state = serde_json::from_value(ck.train_state["state"].clone()).map_err(parse_err)?;
        load_into(varmap, &ck.weights, &self.device)?;
        for (name, t) in &ck.optimizer {
            let tensor = Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device)?;
            if let Some(n) = name.strip_prefix("m/") {
                p.opt.m.insert(n.to_string(), tensor);
            } else if let Some(n) = name.strip_prefix("v/") {
                p.opt.v.insert(n.to_string(), tensor);
            } else if let Some(n) = name.strip_prefix("best/") {
                p.best.insert(n.to_string(), tensor);
            }
        }
        p.opt.step = p.state.step;
        tracing::info!(
            "resumed from {} at phase {} epoch {}",
            path.display(),
            p.state.phase,
            p.state.epoch
        );
        Ok(())
    }

    /// The epochs of every phase from where `p` stands; a resume checkpoint after each.
    fn train_phases(
        &self,
        net: &Net,
        p: &mut Progress,
        phases: &[Phase],
        part: &Partition,
        files: &RunFiles,
        log: &mut EpochLog,
    ) -> Result<(), TrainError> {
        let mut epochs_here = 0usize;
        while p.state.phase < phases.len() {
            let ph = &phases[p.state.phase];
            let done = p.state.epoch >= ph.epochs
                || (self.cfg.patience > 0 && p.state.bad_epochs >= self.cfg.patience);
            if done {
                self.next_phase(&net.varmap, p, files)?;
                continue;
            }
            let m = self.epoch(net, p, part, ph, files)?;
            self.log_epoch(&m, p.state.phase, log, files)?;
            self.save_resume(&net.varmap, p, files)?;
            epochs_here += 1;
            if files.interrupt_after == Some(epochs_here) {
                return Err(TrainError::Interrupted(epochs_here));
            }
        }
        Ok(())
    }

    /// End of phase: continue from (and keep) the selected epoch's weights, with a fresh
    /// optimiser.
    fn next_phase(
        &self,
        varmap: &VarMap,
        p: &mut Progress,
        files: &RunFiles,
    ) -> Result<(), TrainError> {
        let state = &mut p.state;
        if state.epoch > 0 {
            load_tensors(varmap, &p.best)?;
        }
        state.best_epochs.push(state.best_epoch);
        state.phase += 1;
        state.epoch = 0;
        state.best_score = f64::NEG_INFINITY;
        state.bad_epochs = 0;
        state.step = 0;
        p.opt = AdamW::new(vars_of(varmap), self.cfg.optim)?;
        self.save_resume(varmap, p, files)
    }

    /// The resume file, when the run keeps one.
    fn save_resume(
        &self,
        varmap: &VarMap,
        p: &Progress,
        files: &RunFiles,
    ) -> Result<(), TrainError> {
        if let Some(path) = &files.resume_file {
            self.checkpoint(varmap, Some((&p.opt, &p.best)), &p.state)?
                .write(path)?;
        }
        Ok(())
    }

    /// One metrics line and the progress bar's message.
    fn log_epoch(
        &self,
        m: &EpochMetrics,
        phase: usize,
        log: &mut EpochLog,
        files: &RunFiles,
    ) -> Result<(), TrainError> {
        if let Some(f) = log.file.as_mut() {
            let line = serde_json::to_string(m).expect("plain");
            writeln!(f, "{line}")
                .map_err(|e| TrainError::Io(files.metrics.clone().unwrap_or_default(), e))?;
        }
        log.bar.set_message(format!(
            "{} p{} loss {:.4} acc {:.3}{}",
            self.cfg.mode.name(),
            phase + 1,
            m.loss,
            m.train_acc,
            m.val_acc
                .map(|v| format!(" val {v:.3}"))
                .unwrap_or_default()
        ));
        log.bar.inc(1);
        Ok(())
    }

    /// Accuracy on `idx` at the end (`None` for an empty split).
    fn final_accuracy(&self, student: &Student, idx: &[usize]) -> Result<Option<f64>, TrainError> {
        if idx.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.evaluate(student, idx, &Objective::CrossEntropy)?.1,
        ))
    }

    /// One epoch of `ph`: shuffled seeded batches, updates, validation, selection.
    fn epoch(
        &self,
        net: &Net,
        p: &mut Progress,
        part: &Partition,
        ph: &Phase,
        files: &RunFiles,
    ) -> Result<EpochMetrics, TrainError> {
        let t0 = std::time::Instant::now();
        let lr = lr_at(&self.cfg, p.state.epoch, ph.epochs);
        let mut rng = epoch_rng(self.cfg.seed, p.state.phase, p.state.epoch);
        let order = crate::data::epoch_order(
            &part.train,
            &self.data.shard_starts,
            crate::data::SHUFFLE_SHARDS,
            &mut rng,
        );
        let frozen = |name: &str| {
            ph.freeze_trunk
                && Student::trunk_prefixes()
                    .iter()
                    .any(|p| name.starts_with(p))
        };
        let mut sums = EpochSums::default();
        for (b, chunk) in order.chunks(self.cfg.batch).enumerate() {
            let (out, terms) = self.forward_batch(&net.student, chunk, &mut rng, ph)?;
            let loss = scalar(&terms.total)?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    phase: p.state.phase + 1,
                    epoch: p.state.epoch + 1,
                    batch: b + 1,
                    checkpoint: files.resume_file.clone(),
                });
            }
            p.opt.backward_step(&terms.total, lr, &frozen)?;
            sums.add(&terms, loss, chunk.len())?;
            sums.correct += count_correct(&out.logits, chunk, &self.data.faces.labels)?;
        }
        p.state.samples += sums.n_seen as u64;
        p.state.step = p.opt.step;
        let (val_loss, val_acc) = self.evaluate(&net.student, &part.val, &ph.objective)?;
        self.select(&net.varmap, p, part, ph, (val_loss, val_acc))?;
        let secs = t0.elapsed().as_secs_f64();
        p.state.train_seconds += secs;
        let has_val = !part.val.is_empty();
        Ok(sums.metrics(&p.state, has_val.then_some((val_acc, val_loss)), lr, secs))
    }

    /// One training batch forward: augmentation and dropout drawn from `rng` (in that
    /// order), the student's outputs and the phase's loss terms.
    fn forward_batch(
        &self,
        student: &Student,
        chunk: &[usize],
        rng: &mut StdRng,
        ph: &Phase,
    ) -> Result<(model::StudentOutput, losses::LossTerms), TrainError> {
        if let Some(d) = &self.distill {
            return self.distill_batch(d, student, chunk, rng, ph);
        }
        let aug = self.cfg.augment.then(|| flips_and_shifts(rng, chunk.len()));
        let x = input_batch(
            &self.data.faces,
            chunk,
            &self.mean,
            aug.as_deref(),
            &self.device,
        )?;
        let mask = self.dropout_mask(chunk.len(), rng)?;
        let out = student.forward_masked(&x, &mask)?;
        let y = self.labels(chunk)?;
        let flipped: Option<Vec<bool>> = aug.as_ref().map(|a| a.iter().map(|s| s.0).collect());
        let t = self.teacher_rows(chunk, flipped.as_deref())?;
        let terms =
            ph.objective
                .compute(&out.logits, &y, self.pick_bottleneck(&out), t.as_ref())?;
        Ok((out, terms))
    }

    /// One `--distill` batch: a random view of each face (drawn before dropout), mixed up
    /// with another face of the batch when the batch is chosen for it, and the teacher's
    /// outputs on exactly those views: a bank's outputs mixed alike, the online teacher's
    /// computed on the mixed chips.
    fn distill_batch(
        &self,
        d: &DistillData,
        student: &Student,
        chunk: &[usize],
        rng: &mut StdRng,
        ph: &Phase,
    ) -> Result<(model::StudentOutput, losses::LossTerms), TrainError> {
        let n = chunk.len();
        let views: Vec<usize> = match d.is_online() {
            true => vec![0; n],
            false => chunk.iter().map(|_| rng.gen_range(0..d.k)).collect(),
        };
        let mix = (self.cfg.distill.mixup > 0.0 && rng.gen_bool(self.cfg.distill.mixup.min(1.0)))
            .then(|| {
                let mut partner: Vec<usize> = (0..n).collect();
                partner.shuffle(rng);
                let lam = (0..n).map(|_| rng.gen::<f32>()).collect();
                crate::distill::Mixup { partner, lam }
            });
        let online = match d.is_online() {
            true => Some(d.online_batch(&self.data.faces, chunk, mix.as_ref(), rng)?),
            false => None,
        };
        let (h, w) = (self.data.faces.height, self.data.faces.width);
        let aug = (d.plain && self.cfg.augment).then(|| flips_and_shifts(rng, n));
        let len = h * w * 3;
        let x = pixels_batch(
            |j| match &online {
                Some(o) => o.pixels[j * len..(j + 1) * len].into(),
                None => d.pixels(chunk[j], views[j]).into(),
            },
            n,
            (h, w),
            &self.mean,
            aug.as_deref(),
            &self.device,
        )?;
        let x = match &mix {
            Some(m) => {
                let l = Tensor::from_slice(&m.lam, (n, 1, 1, 1), &self.device)?;
                let p: Vec<u32> = m.partner.iter().map(|&j| j as u32).collect();
                let xp = x.index_select(&Tensor::from_vec(p, n, &self.device)?, 0)?;
                (x.broadcast_mul(&l)? + xp.broadcast_mul(&(1.0 - &l)?)?)?
            }
            None => x,
        };
        // Rows of `width` values per face, mixed alike unless `mixed` already (the online
        // teacher's outputs on the mixed chips).
        let rows = |v: Vec<f32>, width: usize, mixed: bool| {
            let v = match (&mix, mixed) {
                (Some(m), false) => m.blend(&v, width),
                _ => v,
            };
            Tensor::from_vec(v, (n, width), &self.device)
        };
        let classes = d.classes;
        let mut onehot = vec![0f32; n * classes];
        for (j, &i) in chunk.iter().enumerate() {
            onehot[j * classes + self.data.faces.labels[i] as usize] = 1.0;
        }
        let labels = rows(onehot, classes, false)?;
        let (teacher, probs) = match online {
            Some(o) => {
                let t = (!o.targets.is_empty())
                    .then(|| rows(o.targets, d.dim, true))
                    .transpose()?;
                let p = (!o.probs.is_empty())
                    .then(|| rows(o.probs, classes, true))
                    .transpose()?;
                (t, p)
            }
            None => {
                let t = (0..n).flat_map(|j| d.target(chunk[j], views[j]).iter().copied());
                let t = rows(t.collect(), d.dim, false)?;
                let p = (!d.probs.is_empty())
                    .then(|| {
                        let p = (0..n).flat_map(|j| {
                            d.prob(chunk[j], views[j]).unwrap_or(&[]).iter().copied()
                        });
                        rows(p.collect(), classes, false)
                    })
                    .transpose()?;
                (Some(t), p)
            }
        };
        let mask = self.dropout_mask(n, rng)?;
        let out = student.forward_masked(&x, &mask)?;
        let terms = ph.objective.compute_distill(
            &out.logits,
            &losses::DistillTargets {
                labels: &labels,
                embedding: self.pick_bottleneck(&out),
                teacher: teacher.as_ref(),
                teacher_probs: probs.as_ref(),
            },
        )?;
        Ok((out, terms))
    }

    /// Inverted dropout after the first hidden layer: kept units scaled by 1/keep.
    fn dropout_mask(&self, n: usize, rng: &mut StdRng) -> candle_core::Result<Tensor> {
        let keep = self.student_cfg.keep_prob;
        let hidden = self.student_cfg.hidden[0];
        let mask: Vec<f32> = (0..n * hidden)
            .map(|_| {
                if rng.gen::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(mask, (n, hidden), &self.device)
    }

    /// Selection after an epoch: accuracy, ties broken by loss; the MSE phase by loss
    /// alone. Without a validation split the latest epoch is kept.
    fn select(
        &self,
        varmap: &VarMap,
        p: &mut Progress,
        part: &Partition,
        ph: &Phase,
        (val_loss, val_acc): (f64, f64),
    ) -> candle_core::Result<()> {
        let state = &mut p.state;
        let score = if part.val.is_empty() {
            state.epoch as f64
        } else if ph.by_accuracy {
            val_acc - 1e-6 * val_loss
        } else {
            -val_loss
        };
        state.epoch += 1;
        if score > state.best_score {
            state.best_score = score;
            state.best_epoch = state.epoch;
            state.bad_epochs = 0;
            p.best = snapshot(varmap)?;
        } else {
            state.bad_epochs += 1;
        }
        Ok(())
    }

    fn checkpoint(
        &self,
        varmap: &VarMap,
        train: Option<(&AdamW, &BTreeMap<String, Tensor>)>,
        state: &State,
    ) -> Result<Checkpoint, TrainError> {
        let mut optimizer = BTreeMap::new();
        if let Some((opt, best)) = train {
            for (k, t) in &opt.m {
                optimizer.insert(format!("m/{k}"), named(t)?);
            }
            for (k, t) in &opt.v {
                optimizer.insert(format!("v/{k}"), named(t)?);
            }
            for (k, t) in best {
                optimizer.insert(format!("best/{k}"), named(t)?);
            }
        }
        if !self.target_stats.0.is_empty() {
            let d = self.target_stats.0.len();
            optimizer.insert(
                "target/mean".into(),
                NamedTensor {
                    shape: vec![d],
                    data: self.target_stats.0.clone(),
                },
            );
            optimizer.insert(
                "target/std".into(),
                NamedTensor {
                    shape: vec![d],
                    data: self.target_stats.1.clone(),
                },
            );
        }
        let f = &self.data.faces;
        Ok(Checkpoint {
            weights: weights_of(varmap)?,
            optimizer,
            mean_image: NamedTensor {
                shape: vec![f.height, f.width, 3],
                data: self.mean.clone(),
            },
            model_config: serde_json::json!({ "kind": "student", "student": self.student_cfg, "class_names": f.class_names }),
            train_state: serde_json::json!({ "config": self.cfg, "state": state, "final": train.is_none(), "mirrored_targets": self.mirrored_targets() }),
            provenance: crate::provenance::of_checkpoint(&self.cfg, self.data),
        })
    }
}

pub(crate) fn named(t: &Tensor) -> Result<NamedTensor, TrainError> {
    Ok(NamedTensor {
        shape: t.dims().to_vec(),
        data: t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
    })
}

fn vars_of(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn snapshot(varmap: &VarMap) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn load_tensors(varmap: &VarMap, ts: &BTreeMap<String, Tensor>) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        if let Some(t) = ts.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

fn load_into(
    varmap: &VarMap,
    ws: &BTreeMap<String, NamedTensor>,
    device: &Device,
) -> Result<(), TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    let missing: Vec<String> = data
        .keys()
        .filter(|k| !ws.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingWeights(missing).into());
    }
    for (k, v) in data.iter() {
        let w = &ws[k];
        v.set(&Tensor::from_slice(&w.data, w.shape.as_slice(), device)?)?;
    }
    Ok(())
}

/// Re-draws every weight from a seeded RNG: Kaiming-uniform-like for matrices and kernels
/// (bound 1/sqrt(fan_in), as candle-nn does), zeros for biases.
fn reinit_seeded(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with(".bias") || dims.len() < 2 {
            if name.contains(".bn.") && name.ends_with("weight") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            }
        } else {
            // He-uniform: keeps ReLU activations at a steady scale.
            let fan_in: usize = dims[1..].iter().product();
            let bound = (6.0 / fan_in as f32).sqrt().min(1.0);
            (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
        };
        var.set(&Tensor::from_vec(
            values,
            dims.as_slice(),
            var.as_tensor().device(),
        )?)?;
    }
    Ok(())
}

/// The study modes' augmentation for `n` images: a coin flip for mirroring and shifts of
/// up to 4 px, drawn in that order per image.
fn flips_and_shifts(rng: &mut StdRng, n: usize) -> Vec<(bool, i32, i32)> {
    (0..n)
        .map(|_| {
            (
                rng.gen_bool(0.5),
                rng.gen_range(-4..=4),
                rng.gen_range(-4..=4),
            )
        })
        .collect()
}

/// How many rows of `logits` pick the label of the image they stand for (`idx[r]`).
pub(crate) fn count_correct(
    logits: &Tensor,
    idx: &[usize],
    labels: &[u32],
) -> candle_core::Result<usize> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(pred
        .iter()
        .zip(idx)
        .filter(|(p, &i)| **p == labels[i])
        .count())
}
