use anyhow::Result;
use clap::{Parser, ValueEnum};
use preprocess::split::SplitFractions;
use preprocess::Mode;
use preprocess::PreprocessConfig;
use std::path::PathBuf;

/// Turn a folder of class folders of raw photos into a Faces artifact of aligned, masked
/// faces: face detection (OpenCV's Haar cascade and dlib's CNN detector), dlib's 68
/// landmarks, similarity alignment, gaussian mask. Every skipped file is listed with its
/// reason in rejects.json.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Folder of class folders: <input>/<class>/<image>.
    #[arg(long, default_value = "data/raw")]
    input: PathBuf,
    /// Faces artifact to write (rejects.json, montage.png and alignment-quality.json go beside it).
    #[arg(long, default_value = "data/artifacts/faces.safetensors")]
    output: PathBuf,
    /// Output side in pixels [default: 150, or 100 with --crop-only].
    #[arg(long)]
    size: Option<usize>,
    /// Gaussian mask sigma over linspace(-3, 3).
    #[arg(long, default_value_t = 2.5)]
    sigma: f32,
    /// Turn the gaussian mask off (default: on, except with --as-is and --crop-only).
    #[arg(long, conflicts_with = "mask")]
    no_mask: bool,
    /// Turn the gaussian mask on (for --as-is or --crop-only).
    #[arg(long)]
    mask: bool,
    /// The study's first preprocessing: the detected box, cropped and resized, no alignment.
    #[arg(long, conflicts_with = "as_is")]
    crop_only: bool,
    /// Photos are already aligned and cropped: only resize them.
    #[arg(long)]
    as_is: bool,
    /// Percent of images for validation.
    #[arg(long, default_value_t = 10.0)]
    val_percent: f64,
    /// Percent of images for test.
    #[arg(long, default_value_t = 20.0)]
    test_percent: f64,
    /// A published split instead of hashing: CSV rows `entity,image,split`.
    #[arg(long, value_name = "CSV")]
    split_file: Option<PathBuf>,
    /// Salt for the split hash; 0 hashes `<class>/<file>` as is.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// Face detector: `haar` (OpenCV's cascade), `cnn` (dlib's CNN detector on every
    /// photo), or `haar+cnn` (the cascade first, its box confirmed by the CNN, the CNN on
    /// the photo where the cascade finds nothing) [default: cnn on CUDA, else haar+cnn;
    /// haar with a warning when the CNN's model is not found].
    #[arg(long, value_name = "haar|cnn|haar+cnn")]
    detector: Option<preprocess::detect::DetectorKind>,
    /// dlib's `mmod_human_face_detector.dat` [default: found in data/models
    /// (CELEB_TRANSFER_MODELS) or the Python package face_recognition_models].
    #[arg(long, value_name = "FILE")]
    cnn_model: Option<PathBuf>,
    /// Times the CNN doubles the photo before detecting (dlib's upsample_num_times): finds
    /// faces down to 80 px / 2^N, at about 4^N the cost.
    #[arg(long, default_value_t = 0)]
    upsample: usize,
    /// With haar+cnn, keep cascade boxes the CNN does not confirm as faces.
    #[arg(long)]
    no_confirm: bool,
    /// Where the CNN detector runs.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda")]
    device: kernels::device::DeviceChoice,
    /// OpenCV Haar cascade for face detection.
    #[arg(
        long,
        default_value = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml"
    )]
    cascade: PathBuf,
    /// Cascade scale step.
    #[arg(long, default_value_t = 1.1)]
    scale_factor: f64,
    /// Cascade minNeighbors: higher finds fewer, surer faces.
    #[arg(long, default_value_t = 4)]
    min_neighbors: i32,
    /// dlib's 68-landmark shape predictor.
    #[arg(
        long,
        default_value = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
    )]
    landmarks: PathBuf,
    /// Weight of the eye landmarks in the alignment fit (1 = faceswap's plain fit).
    #[arg(long, default_value_t = 3.0)]
    eye_weight: f32,
    /// Skip the second landmark pass from the refitted box.
    #[arg(long)]
    no_refine: bool,
    /// Do nothing when the output was made with the same settings from the same photos.
    /// (Shards are always skipped when up to date, index or not.)
    #[arg(long)]
    skip_if_fresh: bool,
    /// Faces a shard file holds at most, about: the unit of work of `--shard` and of
    /// re-runs (a shard whose photos did not change is not made again).
    #[arg(long, default_value_t = preprocess::config::DEFAULT_SHARD_SIZE)]
    shard_size: usize,
    /// Make only part I of N of the shards (0-based; its share, dealt by size), e.g. one
    /// Slurm array task each; then `--merge` writes the index. Without it: all shards and
    /// the merge in one process.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<artifacts::JobPart>,
    /// Write the index (and rejects.json, montage, quality report) over the shards that
    /// `--shard` jobs made; fails naming each missing or differently made shard.
    #[arg(long)]
    merge: bool,
    /// Output format for the summary.
    #[arg(long, value_enum, default_value = "text")]
    summary: SummaryFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SummaryFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    kernels::runtime::main(|| {
        kernels::runtime::single_arena();
        run(Cli::parse())
    })
}

fn run(cli: Cli) -> Result<()> {
    kernels::runtime::set_jobs(cli.jobs)?;
    let cfg = config(&cli).resolved()?;
    if cli.shard_size == 0 {
        anyhow::bail!("--shard-size must be at least 1");
    }
    if let Some(part) = cli.shard {
        let p = preprocess::shards::make_part(&cli.input, &cli.output, &cfg, part)?;
        match cli.summary {
            SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(&p)?),
            SummaryFormat::Text => println!(
                "preprocess: part {} of {} shards: made {:?} ({} photos -> {} faces, {:.1}s), up to date {:?}",
                p.part, p.shards, p.made, p.photos, p.faces, p.seconds, p.up_to_date
            ),
        }
        return Ok(());
    }
    if cli.skip_if_fresh && !cli.merge {
        let inputs = preprocess::pipeline::provenance_inputs(&cli.input, &cfg)?;
        if artifacts::up_to_date(
            &cli.output,
            artifacts::FACES_SCHEMA,
            &serde_json::to_value(&cfg)?,
            &inputs,
        ) {
            println!("preprocess: up to date, skipped ({})", cli.output.display());
            return Ok(());
        }
    }
    let s = if cli.merge {
        preprocess::shards::merge(&cli.input, &cli.output, &cfg, std::time::Instant::now())?
    } else {
        preprocess::run(&cli.input, &cli.output, &cfg)?
    };
    match cli.summary {
        SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        SummaryFormat::Text => print!("{}", s.report(&cli.output, cfg.detector.kind)),
    }
    Ok(())
}

/// The run's settings from the command line (defaults that depend on the mode and the
/// device filled in).
fn config(cli: &Cli) -> PreprocessConfig {
    let mode = if cli.crop_only {
        Mode::CropOnly
    } else if cli.as_is {
        Mode::AsIs
    } else {
        Mode::Align
    };
    PreprocessConfig {
        mode,
        size: cli
            .size
            .unwrap_or(if mode == Mode::CropOnly { 100 } else { 150 }),
        mask: if mode == Mode::Align {
            !cli.no_mask
        } else {
            cli.mask
        },
        sigma: cli.sigma,
        fractions: SplitFractions {
            val: cli.val_percent,
            test: cli.test_percent,
        },
        split_file: cli.split_file.clone(),
        seed: cli.seed,
        detector: preprocess::detect::DetectorConfig {
            kind: cli
                .detector
                .unwrap_or(if kernels::device::cuda_available(cli.device) {
                    preprocess::detect::DetectorKind::Cnn
                } else {
                    preprocess::detect::DetectorKind::HaarCnn
                }),
            cascade: cli.cascade.clone(),
            scale_factor: cli.scale_factor,
            min_neighbors: cli.min_neighbors,
            cnn_model: cli.cnn_model.clone(),
            upsample: cli.upsample,
            confirm: !cli.no_confirm,
            ..Default::default()
        },
        landmarks: cli.landmarks.clone(),
        refine: !cli.no_refine,
        eye_weight: cli.eye_weight,
        shard_size: cli.shard_size,
        device: cli.device,
    }
}
