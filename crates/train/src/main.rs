use anyhow::Result;
use artifacts::device::DeviceChoice;
use clap::{ArgGroup, Parser};
use model::StudentConfig;
use std::path::PathBuf;
use train::training::{BottleneckSource, Schedule};
use train::{Dataset, RunFiles, TargetNorm, TrainConfig, TrainMode};

/// Train the student: `--cosine` (cross entropy + beta x cosine distance to the teacher's
/// bottleneck, the default), `--two-step` (MSE to the teacher, then cross entropy),
/// `--base` (no transfer) or `--probe` (linear classifier on the teacher's features).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
#[command(group(ArgGroup::new("mode").args(["cosine", "two_step", "base", "probe"])))]
struct Cli {
    /// Cross entropy + beta x cosine distance to the teacher bottleneck (default mode).
    #[arg(long)]
    cosine: bool,
    /// Phase 1: MSE to the teacher bottleneck; phase 2: cross entropy.
    #[arg(long)]
    two_step: bool,
    /// Cross entropy only, without the bottleneck layer: the no-transfer baseline.
    #[arg(long)]
    base: bool,
    /// A linear softmax classifier on the teacher's bottlenecks alone.
    #[arg(long)]
    probe: bool,
    /// Faces artifact.
    #[arg(long, default_value = "data/artifacts/faces.safetensors")]
    faces: PathBuf,
    /// Teacher bottlenecks artifact (not needed by --base).
    #[arg(long, default_value = "data/artifacts/bottlenecks.safetensors")]
    bottlenecks: PathBuf,
    /// Checkpoint to write [default: data/artifacts/student-<mode>.safetensors].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Epochs of the main (cross-entropy) phase.
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    /// Epochs of --two-step's MSE phase.
    #[arg(long, default_value_t = 40)]
    phase1_epochs: usize,
    /// At least this many optimiser steps per phase (small data sets get more epochs).
    #[arg(long, default_value_t = 800)]
    min_steps: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Decoupled (AdamW) weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: Schedule,
    /// Stop a phase after this many epochs without a better validation score (0 = never).
    #[arg(long, default_value_t = 20)]
    patience: usize,
    /// Weight of the cosine distance in --cosine.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Student activation compared with the teacher.
    #[arg(long, value_enum, default_value = "pre")]
    bottleneck_source: BottleneckSource,
    /// How teacher vectors are scaled before they become targets.
    #[arg(long, value_enum, default_value = "standardize")]
    target_norm: TargetNorm,
    /// --two-step phase 2 trains only the classifier.
    #[arg(long)]
    freeze_trunk: bool,
    /// Random horizontal flips and shifts of up to 4 px while training (`--augment false`
    /// turns it off; the teacher target of the unaugmented image is kept).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    augment: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Filters of the student's three conv layers (the study's 32,32,8).
    #[arg(long, value_delimiter = ',', num_args = 1, default_value = "32,32,8")]
    filters: Vec<usize>,
    /// Widths of the student's two hidden FC layers (the study's 100,100).
    #[arg(long, value_delimiter = ',', num_args = 1, default_value = "100,100")]
    hidden: Vec<usize>,
    /// Dropout keep probability after the first hidden layer (the study's 0.75; 1 = off).
    #[arg(long, default_value_t = 0.75)]
    keep_prob: f32,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Continue an interrupted run from its last epoch checkpoint.
    #[arg(long)]
    resume: bool,
    /// Instead of training on the stored split: stratified k-fold cross-validation over all images.
    #[arg(long, value_name = "K")]
    cv: Option<usize>,
    /// Which images --cv folds: `all`, or only the `train` split (for tuning without
    /// looking at the test split).
    #[arg(long, default_value = "all", value_parser = ["all", "train"])]
    cv_scope: String,
    /// Do nothing when the checkpoint was made with the same settings from the same inputs.
    #[arg(long)]
    skip_if_fresh: bool,
    /// The cleaning loop's CSV (eval-tsne's flags.csv, edited): faces marked `drop` are
    /// left out of training, validation and test; recorded in the checkpoint.
    #[arg(long, value_name = "CSV")]
    exclusions: Option<PathBuf>,
    /// The open-set rule stored with the checkpoint for `predict`: at most this share of
    /// the validation faces the model names correctly is called "unknown" (the threshold
    /// is chosen so).
    #[arg(long, default_value_t = train::open_set::DEFAULT_RATE, value_name = "SHARE")]
    unknown_rate: f64,
    /// Threads for the CPU backend [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> std::process::ExitCode {
    artifacts::runtime::main(|| run(Cli::parse()))
}

/// The architecture flags as a [`StudentConfig`]; image size, classes and bottleneck width
/// come from the data later.
fn student_config(cli: &Cli) -> Result<StudentConfig> {
    let filters: [usize; 3] = cli.filters.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "--filters takes three numbers, e.g. 32,32,8 (got {:?})",
            cli.filters
        )
    })?;
    let hidden: [usize; 2] = cli.hidden.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "--hidden takes two numbers, e.g. 100,100 (got {:?})",
            cli.hidden
        )
    })?;
    let cfg = StudentConfig {
        filters,
        hidden,
        keep_prob: cli.keep_prob,
        ..StudentConfig::default()
    };
    // Before the data is loaded, so that a bad flag fails at once.
    cfg.validate()?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
    if let Some(j) = cli.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(j)
            .build_global()?;
    }
    let mode = if cli.two_step {
        TrainMode::TwoStep
    } else if cli.base {
        TrainMode::Base
    } else if cli.probe {
        TrainMode::Probe
    } else {
        TrainMode::Cosine
    };
    let cfg = TrainConfig {
        mode,
        epochs: cli.epochs,
        phase1_epochs: cli.phase1_epochs,
        min_steps: cli.min_steps,
        batch: cli.batch,
        optim: train::optim::AdamWConfig {
            lr: cli.lr,
            weight_decay: cli.weight_decay,
            ..Default::default()
        },
        schedule: cli.schedule,
        patience: cli.patience,
        beta: cli.beta,
        bottleneck_source: cli.bottleneck_source,
        target_norm: cli.target_norm,
        freeze_trunk: cli.freeze_trunk,
        augment: cli.augment,
        seed: cli.seed,
        device: cli.device,
        student: student_config(&cli)?,
        unknown_rate: cli.unknown_rate,
    };
    let output = cli.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "data/artifacts/student-{}.safetensors",
            mode.name()
        ))
    });
    if cli.skip_if_fresh && cli.cv.is_none() {
        let mut inputs = std::collections::BTreeMap::new();
        inputs.insert("faces".to_string(), artifacts::digest_file(&cli.faces)?);
        if mode.needs_teacher() {
            inputs.insert(
                "bottlenecks".to_string(),
                artifacts::digest_file(&cli.bottlenecks)?,
            );
        }
        if let Some(p) = &cli.exclusions {
            inputs.insert("exclusions".to_string(), artifacts::digest_file(p)?);
        }
        if artifacts::up_to_date(
            &output,
            artifacts::CHECKPOINT_SCHEMA,
            &serde_json::to_value(&cfg)?,
            &inputs,
        ) {
            println!(
                "train {}: up to date, skipped ({})",
                mode.name(),
                output.display()
            );
            return Ok(());
        }
    }
    let mut data = Dataset::load(
        &cli.faces,
        mode.needs_teacher().then_some(cli.bottlenecks.as_path()),
    )?;
    if let Some(k) = cli.cv {
        let pool: Vec<usize> = if cli.cv_scope == "train" {
            data.indices(artifacts::Split::Train)
        } else {
            (0..data.faces.len()).collect()
        };
        let r = train::cv::cross_validate(&data, &cfg, &pool, k, cfg.seed)?;
        println!(
            "{} {k}-fold cross-validation: mean accuracy {:.4} (folds: {})",
            mode.name(),
            r.mean,
            r.accuracies
                .iter()
                .map(|a| format!("{a:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let mut files = RunFiles::beside(&output);
    files.resume = cli.resume;
    let mut part = train::stored_partition(&data);
    if let Some(p) = &cli.exclusions {
        let n = data.exclude(&mut part, p)?;
        println!(
            "exclusions: {n} faces marked drop in {} left out",
            p.display()
        );
    }
    let out = train::train(&data, &cfg, &part, &files)?;
    let summary = output.with_extension("summary.json");
    artifacts::write_atomic(&summary, serde_json::to_string_pretty(&out)?.as_bytes())?;
    println!(
        "{}: test accuracy {} val accuracy {} ({} train / {} val / {} test images), {:.1}s, {:.0} samples/s on {} -> {}",
        mode.name(),
        out.test_acc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into()),
        out.val_acc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into()),
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
