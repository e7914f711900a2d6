//! `cargo xtask <command>`: the whole study in one command, CI, benchmarks, CUDA build check.

mod bench;
mod ci;
mod cuda;
mod deps;
mod front;
mod lfw;
mod models;
mod pipeline;
mod scale;
mod slurm;
mod util;

use anyhow::{bail, Result};

const HELP: &str = "\
cargo xtask <command> [options]

commands:
  pipeline     preprocess -> inception-bottleneck -> train (all modes) -> eval-tsne, cached
               --data DIR (data/raw)  --out DIR (data/artifacts)
               --teacher REPO|DIR (timm/inception_v3.tv_in1k)  --teacher-layer NAME (pool)
               --teacher-grid G (1: average the layer over a GxG grid of face regions)
               --face-teacher dlib-face|FILE.dat  --teachers inception,face
               --cnn-model FILE (dlib's CNN face detector for preprocess; else looked up)
               --exclusions FILE (the cleaning loop: flags.csv edited; default
               <out>/exclusions.csv when present: faces marked drop leave training and eval)
               --modes base,two-step,cosine,probe,distill-base,distill
               --views K (4: views per face the face teacher embeds for the distill modes)
               --inception-views K (0: the same for Inception, ~8x the cost a view)
               --online-teacher (face-distill and distill-base on fresh views, the face
               teacher run at every step: ~3-5x an epoch's cost on a CPU)
               --device auto|cpu|cuda  --seed N (42)
               --config pipeline.toml (each stage's extra flags: [preprocess], [bottleneck],
               [train], [train-distill], one run's [train-<run>] e.g. [train-face-distill],
               [eval])  --features cuda  --install-deps
               --download-lfw (when data/raw is missing: fetch LFW, people with >= 20
               photos, checksum verified; asked interactively without the flag)
               --add DIR (a `predict --group-unknowns` folder: its renamed groups join
               --data as people, then the stages redo what changed)
               --slurm [--shards N (4)] [--slurm-partition P] [--slurm-gpu]
               [--slurm-cpus C (1)] [--slurm-train-cpus C] [--no-wait]: preprocess and
               each teacher as Slurm job arrays + merges, then train and eval as a job
               after them (scripts and logs in <out>/slurm/)
  ci           fmt, clippy, tests (with ../shared: including ignored ones, except the 5-seed
               sweep), a pipeline run on ../shared/data/msceleb-samples with both teachers;
               prints the time of each part (also in target/ci-times.json);
               --pipeline-only skips fmt, clippy and the tests
  bench [preprocess|bottleneck|train|tsne|predict|group|student|all] [--pipeline DIR]
               throughput benchmarks (release, 2 threads), JSON in target/bench/
  bench scale [--factors 1,4,16] [--stages preprocess,teacher,train,eval] [--out target/scale]
               [--epochs 3] [--project]: each stage on the msceleb photos replicated k times;
               wall/CPU s, peak RSS, bytes written, RSS growth, projection (not in `all`)
  deps         check the Debian packages the build and the stages need; --install
               installs the missing ones (root, or through sudo), the Slurm group too
  slurm up|down|test [--state DIR] [--install-deps]
               a one-machine Slurm cluster on localhost (root); `test`: preprocess and the
               face teacher as Slurm array tasks must match one process (CI runs it;
               --people P --photos N --shard-size S for a larger photo folder)
  check-cuda   type-check the workspace with --features cuda, candle's kernels compiled by
               nvcc (from PATH/CUDA_HOME, or PyPI's CUDA 13.0 wheels); --build links release
               binaries for a GPU machine into CUDA_TARGET_DIR (~/.cache/celeb-transfer/cuda-target)
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.downcast_ref::<util::Exit>().map(|x| x.0).unwrap_or(1)
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(());
    };
    util::cd_workspace_root()?;
    match cmd.as_str() {
        "pipeline" => pipeline::run(&pipeline::Options::parse(rest)?).map(|_| ()),
        "ci" => ci::ci(rest),
        "bench" => bench::run(rest),
        "check-cuda" => cuda::check(rest),
        "deps" => deps::cli(rest),
        "slurm" => slurm::cli(rest),
        "-h" | "--help" | "help" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}
