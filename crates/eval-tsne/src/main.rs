use anyhow::Result;
use artifacts::device::DeviceChoice;
use clap::Parser;
use eval_tsne::{evaluate, EvalConfig};
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
    #[arg(long, default_value = eval_tsne::plots::DEFAULT_FONT)]
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
    artifacts::runtime::main(|| run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    if let Some(j) = cli.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(j)
            .build_global()?;
    }
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
    let r = evaluate(&cfg)?;
    let fmt = |m: &Option<eval_tsne::metrics::Metrics>| {
        m.as_ref()
            .map(|m| {
                format!(
                    "top-1 {:.4} top-3 {:.4} macro-F1 {:.4} (n={})",
                    m.top1, m.top3, m.macro_f1, m.n
                )
            })
            .unwrap_or_else(|| "n/a".into())
    };
    println!("{} test: {}", r.mode, fmt(&r.test));
    println!("{} val:  {}", r.mode, fmt(&r.val));
    println!(
        "t-SNE KL: student {:.4}{}",
        r.tsne_kl_student,
        r.tsne_kl_teacher
            .map(|k| format!(", teacher {k:.4}"))
            .unwrap_or_default()
    );
    if r.excluded > 0 {
        println!("exclusions: {} faces left out of the metrics", r.excluded);
    }
    println!("dirty-data suspects: {}", r.suspects.len());
    if let Some(id) = &r.identity {
        println!(
            "by identity: {} faces of another person, {} strangers, {} folders of two people; flags.csv: {}",
            id.other_person,
            id.strangers,
            id.split_folders.len(),
            out.join("flags.csv").display()
        );
    }
    println!("report: {}", out.join("report.html").display());
    Ok(())
}
