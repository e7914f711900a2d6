use anyhow::Result;
use clap::Parser;
use inception_bottleneck::{extract, ExtractConfig};
use kernels::device::DeviceChoice;
use preprocess::views::{ViewJitter, ViewRecipe};
use std::path::PathBuf;

/// The teacher stage: run every face through a teacher and keep its output, the
/// bottleneck the student learns from. Inception-v3's pooled features (TensorFlow's
/// `pool_3`, 2048-d) by default, or dlib's 128-d face descriptor with `--teacher
/// dlib-face`. Results are cached per image, so re-running after adding photos computes
/// only the new ones.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Faces artifact made by `preprocess`.
    #[arg(long, default_value = "data/artifacts/faces.safetensors")]
    faces: PathBuf,
    /// Bottlenecks artifact to write.
    #[arg(long, default_value = "data/artifacts/bottlenecks.safetensors")]
    output: PathBuf,
    /// `dlib-face` (or a path to dlib's face model `.dat`) for the face teacher; else
    /// Inception-v3 from a Hugging Face repo id, a local folder (model.safetensors +
    /// config.json, timm layout), or a single .safetensors/.pth file. HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 are honoured.
    #[arg(long, default_value = inception_bottleneck::teacher::DEFAULT_TEACHER)]
    teacher: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    revision: String,
    /// Block to pool: `pool` (2048-d, after Mixed_7c) or a block name like Mixed_6c (768-d).
    #[arg(long, default_value = "pool")]
    layer: String,
    /// Average the block over a GRID x GRID partition of the image instead of globally
    /// (GRID*GRID*C features). Aligned faces put eyes, nose and mouth in fixed cells, so a
    /// grid keeps where a feature fires, which a global pool throws away.
    #[arg(long, default_value_t = 1, value_name = "GRID")]
    grid: usize,
    /// Also embed every face flipped left-right, stored as `features_mirrored`: `train`
    /// then gives a flipped training image the teacher's view of that flipped image as its
    /// target, instead of the unflipped one's. Doubles the teacher's work.
    #[arg(long)]
    mirror: bool,
    /// Also run the teacher on K views of every face (view 0 the face itself, the others
    /// jittered: rotation, zoom, shift, mirror, colour), each cut from its photo exactly as
    /// the student's input will be (`view_features` [N,K,D], `view_params` [N,K,8]): the
    /// consistent targets of `train --distill`. Costs K teacher passes a face (cached).
    #[arg(long, default_value_t = 0, value_name = "K")]
    views: usize,
    /// The folder preprocess read (`<class>/<file>`): where --views cuts its views from.
    #[arg(long, value_name = "DIR")]
    photos: Option<PathBuf>,
    /// Seed of the views' jitter (the views of a face depend only on it and the face's path).
    #[arg(long, default_value_t = 0)]
    view_seed: u64,
    /// Largest rotation of a view, degrees.
    #[arg(long, default_value_t = 10.0)]
    view_rotate: f32,
    /// Largest relative zoom of a view (0.1: 0.9x to 1.1x).
    #[arg(long, default_value_t = 0.1)]
    view_scale: f32,
    /// Largest shift of a view, pixels of the 150-px face.
    #[arg(long, default_value_t = 8.0)]
    view_shift: f32,
    /// Largest relative brightness / contrast / saturation change of a view.
    #[arg(long, default_value_t = 0.2)]
    view_color: f32,
    /// Mirror half of the views.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    view_flip: bool,
    /// Images per forward pass (8: the fastest on 2 CPU cores in `cargo xtask bench
    /// bottleneck`, with 1-32 within 20%; larger batches help on CUDA).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// f32, or f16/bf16 on CUDA.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Override the teacher's input size.
    #[arg(long)]
    size: Option<usize>,
    /// Override the per-channel mean, e.g. 0.485,0.456,0.406.
    #[arg(long, value_parser = parse_triple)]
    mean: Option<[f32; 3]>,
    /// Override the per-channel std.
    #[arg(long, value_parser = parse_triple)]
    std: Option<[f32; 3]>,
    /// Override the resize interpolation (bilinear, bicubic, nearest).
    #[arg(long)]
    interpolation: Option<String>,
    /// Bottleneck cache folder.
    #[arg(long, default_value = "data/artifacts/bottleneck-cache")]
    cache_dir: PathBuf,
    /// Compute everything, neither reading nor writing the cache.
    #[arg(long)]
    no_cache: bool,
    /// Read TensorFlow retrain.py bottleneck files (`<class>/<image>.txt`) instead of running a model.
    #[arg(long, value_name = "DIR", conflicts_with = "export_retrain")]
    import_retrain: Option<PathBuf>,
    /// After extracting, also write the bottlenecks in retrain.py's text format.
    #[arg(long, value_name = "DIR")]
    export_retrain: Option<PathBuf>,
    /// Do nothing when the output was made with the same settings from the same faces and teacher.
    #[arg(long)]
    skip_if_fresh: bool,
    /// Worker threads for image preparation (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Of a sharded faces artifact, make only the bottlenecks of its share of the shards, dealt by size
    /// (0-based; one Slurm array task each); then `--merge` writes the output.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["merge", "import_retrain"])]
    shard: Option<artifacts::JobPart>,
    /// Write the output from the bottleneck shards that `--shard` jobs made; fails naming
    /// each shard that is missing or was made for other faces, teacher or settings.
    #[arg(long, conflicts_with = "import_retrain")]
    merge: bool,
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|_| "expected three comma-separated numbers".to_string())
}

fn main() -> std::process::ExitCode {
    kernels::runtime::main(|| run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    kernels::runtime::set_jobs(cli.jobs)?;
    let cfg = ExtractConfig {
        // A path is recorded absolute: `predict` reloads the teacher from any folder.
        teacher: match std::fs::canonicalize(&cli.teacher) {
            Ok(p) if std::path::Path::new(&cli.teacher).is_relative() => p.display().to_string(),
            _ => cli.teacher,
        },
        revision: cli.revision,
        layer: cli.layer,
        grid: cli.grid,
        mirror: cli.mirror,
        views: cli.views,
        view_recipe: match (&cli.photos, cli.views) {
            (_, 0) => None,
            (None, _) => return Err(inception_bottleneck::Error::ViewsNeedPhotos.into()),
            (Some(p), _) => Some(ViewRecipe {
                seed: cli.view_seed,
                jitter: ViewJitter {
                    rotate_deg: cli.view_rotate,
                    scale: cli.view_scale,
                    shift_px: cli.view_shift,
                    flip: cli.view_flip,
                    color: cli.view_color,
                },
                // Absolute: `train` re-cuts the views from any folder.
                photos: std::fs::canonicalize(p)
                    .map_err(|e| anyhow::anyhow!("--photos {}: {e}", p.display()))?,
            }),
        },
        batch: cli.batch,
        device: cli.device,
        dtype: cli.dtype,
        size: cli.size,
        mean: cli.mean,
        std: cli.std,
        interpolation: cli.interpolation,
        cache_dir: (!cli.no_cache).then_some(cli.cache_dir),
    };
    if cli.merge {
        let b = inception_bottleneck::extract::merge(&cli.faces, &cli.output, &cfg)?;
        println!(
            "bottlenecks: merged {} rows, {}-d, teacher {} -> {}",
            b.len(),
            b.dim,
            b.teacher,
            cli.output.display()
        );
        return Ok(());
    }
    if let Some(part) = cli.shard {
        let s = inception_bottleneck::extract::extract_part(&cli.faces, &cli.output, &cfg, part)?;
        println!(
            "bottlenecks: part {part}: {} computed, {} cached, {:.1}s -> {}",
            s.computed,
            s.from_cache,
            s.seconds,
            artifacts::shards::shard_dir(&cli.output).display()
        );
        return Ok(());
    }
    if cli.skip_if_fresh && cli.import_retrain.is_none() {
        let inputs = inception_bottleneck::extract::provenance_inputs(&cli.faces, &cfg)?;
        if artifacts::up_to_date(
            &cli.output,
            artifacts::BOTTLENECKS_SCHEMA,
            &serde_json::to_value(&cfg)?,
            &inputs,
        ) {
            println!(
                "inception-bottleneck: up to date, skipped ({})",
                cli.output.display()
            );
            return Ok(());
        }
    }
    let summary = match &cli.import_retrain {
        Some(dir) => {
            inception_bottleneck::extract::import_retrain(&cli.faces, dir, &cli.output, &cfg)?
        }
        None => extract(&cli.faces, &cli.output, &cfg)?,
    };
    if let Some(dir) = &cli.export_retrain {
        inception_bottleneck::extract::export_retrain(&cli.faces, &cli.output, dir)?;
    }
    println!(
        "bottlenecks: {} images{} ({} computed, {} cached), {}-d, teacher {}, {:.1}s -> {}",
        summary.images,
        match (cfg.mirror, cfg.views) {
            (_, k) if k > 0 => format!(" + {k} views each"),
            (true, _) => " x 2 views".into(),
            _ => String::new(),
        },
        summary.computed,
        summary.from_cache,
        summary.dim,
        summary.teacher,
        summary.seconds,
        cli.output.display()
    );
    Ok(())
}
