use anyhow::Result;
use clap::Parser;
use eval_tsne::{evaluate, EvalConfig};
use kernels::device::DeviceChoice;
use std::path::PathBuf;

/// Evaluate a trained student (or probe): top-1/top-3 accuracy, per-class precision,
/// recall and F1, confusion matrix, t-SNE maps of student and teacher bottlenecks, a
/// self-contained report.html, and a list of dirty-data suspects.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Checkpoint made by `train`.
    #[arg(long, default_value = "data/artifacts/student-cosine.safetensors")]
    checkpoint: PathBuf,
    #[arg(long, default_value = "data/artifacts/faces.safetensors")]
    faces: PathBuf,
    /// Teacher bottlenecks (for the teacher's map and the suspects); skipped when missing.
    #[arg(long, default_value = "data/artifacts/bottlenecks.safetensors")]
    bottlenecks: PathBuf,
    /// Output folder [default: eval-<mode> beside the checkpoint].
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 30.0)]
    perplexity: f64,
    /// Barnes-Hut accuracy (0 = exact, slower).
    #[arg(long, default_value_t = 0.5)]
    theta: f64,
    /// Total t-SNE iterations (the first 250 with early exaggeration 12).
    #[arg(long, default_value_t = 750)]
    iters: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// TTF font for plot text.
    #[arg(long, default_value = draw::DEFAULT_FONT)]
    font: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Do nothing when the evaluation was made with the same settings from the same inputs.
    #[arg(long)]
    skip_if_fresh: bool,
    /// Threads [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// The cleaning loop's CSV (flags.csv, edited): faces marked `drop` count in no metric.
    #[arg(long, value_name = "CSV")]
    exclusions: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    kernels::runtime::main(|| run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    kernels::runtime::set_jobs(cli.jobs)?;
    let out = cli
        .out
        .unwrap_or_else(|| eval_tsne::default_out(&cli.checkpoint));
    let cfg = EvalConfig {
        checkpoint: cli.checkpoint,
        faces: cli.faces,
        bottlenecks: Some(cli.bottlenecks),
        out: out.clone(),
        tsne: eval_tsne::tsne::TsneConfig {
            perplexity: cli.perplexity,
            theta: cli.theta,
            iters: cli.iters,
            seed: cli.seed,
            ..Default::default()
        },
        font: cli.font,
        device: cli.device,
        exclusions: cli.exclusions,
        ..Default::default()
    };
    if cli.skip_if_fresh && eval_tsne::up_to_date(&cfg) {
        println!("eval-tsne: up to date, skipped ({})", out.display());
        return Ok(());
    }
    print!("{}", evaluate(&cfg)?.summary(&out));
    Ok(())
}
