use anyhow::{bail, Context, Result};
use clap::Parser;
use kernels::device::DeviceChoice;
use predict::output::{self, Format};
use predict::{Model, ModelOptions, UnknownRule};
use std::path::PathBuf;
use std::process::ExitCode;

/// Name the people in photos with a trained model: every face of every photo, its box, the
/// person (or "unknown" for a stranger), the probability and the top 3.
///
/// The photos are preprocessed exactly as the model's training faces were (detector,
/// landmarks, alignment, mask, mean image, and the teacher for a probe or a face-teacher
/// model), from the settings recorded in the checkpoint, never re-typed here.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 every photo was read (with or without faces); 1 an error \
(model, settings, output); 2 a usage error; 3 some photos could not be read (the others \
are still reported)."
)]
struct Cli {
    /// Photos, and folders searched recursively for photos.
    #[arg(required_unless_present = "add_groups", value_name = "PHOTO|FOLDER")]
    photos: Vec<PathBuf>,
    /// A checkpoint made by `train` (a student or a probe) [default: the best model of the
    /// last `cargo xtask pipeline` by validation accuracy, from <PIPELINE>/summary.json].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The pipeline's output folder, for the default model.
    #[arg(long, default_value = "data/artifacts")]
    pipeline: PathBuf,
    /// How to print the results.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the results to this file (atomically) instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Write a copy of every photo with its faces boxed and named into this folder.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    /// Call a face unknown above this score instead of the checkpoint's threshold (the
    /// score is, for face-teacher models, the face descriptor's mean distance to the
    /// closest known person's 5 nearest training faces; else 1 - the top probability).
    #[arg(long, value_name = "SCORE", conflicts_with = "closed_set")]
    unknown_threshold: Option<f32>,
    /// Name every face: no "unknown".
    #[arg(long)]
    closed_set: bool,
    /// Only the face preprocess would keep from each photo (the largest, most central),
    /// not every face: faster on portraits (with `haar+cnn`, no CNN pass over the whole
    /// photo when the cascade's face is confirmed).
    #[arg(long)]
    main_face: bool,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// TTF font for --annotate.
    #[arg(long, default_value = draw::DEFAULT_FONT)]
    font: PathBuf,
    /// Group the faces called unknown, over all the photos, into people (dlib's face
    /// descriptor: faces linked below a distance, then groups merged whose centres are
    /// close; both thresholds calibrated on the model's training faces) and write each
    /// group into this folder: `unknown-001/` (face crops, links to their photos, a
    /// montage), ... largest first, faces seen once last, with `groups.csv` and
    /// `groups.json`. Rename a group's folder to the person's name to name them. An
    /// existing non-empty folder is never overwritten.
    #[arg(long, value_name = "DIR", conflicts_with = "closed_set")]
    group_unknowns: Option<PathBuf>,
    /// Add the named groups of a `--group-unknowns` folder to the training data (`--data`)
    /// and exit: each face as a crop of its photo, into the folder of the group's name
    /// (renamed folder or `--name`), a new person or one already there. All or nothing:
    /// a bad name, an empty group or a group added before changes nothing. Then run
    /// `cargo xtask pipeline` to train with them (`cargo xtask pipeline --add DIR` does both).
    #[arg(long, value_name = "DIR", requires = "data")]
    add_groups: Option<PathBuf>,
    /// The training data (`<DATA>/<person>/<photo>`) that `--add-groups` adds to.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Names a group not renamed: `--name unknown-003=Ada` (repeatable).
    #[arg(long, value_name = "GROUP=NAME", requires = "add_groups")]
    name: Vec<String>,
    /// Write where the time went (per stage) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    kernels::runtime::init();
    kernels::runtime::single_arena();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    kernels::runtime::set_jobs(cli.jobs).context("--jobs")?;
    if let (Some(groups), Some(data)) = (&cli.add_groups, &cli.data) {
        let added = predict::add::apply(predict::add::plan(groups, &cli.name, data)?, data)?;
        for note in &added.notes {
            tracing::info!("{note}");
        }
        for (name, n, new) in &added.people {
            let what = if *new { "new person" } else { "added to" };
            println!("{what} {name}: {n} faces -> {}", data.join(name).display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if cli.unknown_threshold.is_some_and(|t| !t.is_finite()) {
        bail!("--unknown-threshold must be a number");
    }
    let photos = predict::list_photos(&cli.photos)?;
    if photos.is_empty() {
        bail!("no photos found in {:?}", cli.photos);
    }
    let model_path = match &cli.model {
        Some(p) => p.clone(),
        None => predict::best_of_pipeline(&cli.pipeline)?,
    };
    if cli.annotate.is_some() {
        draw::load_font(&cli.font)?;
    }
    if let Some(dir) = &cli.group_unknowns {
        predict::group::check_target(dir)?;
    }
    let opts = ModelOptions {
        device: cli.device,
        unknown: UnknownRule::from_flags(cli.closed_set, cli.unknown_threshold),
        faces: match cli.main_face {
            true => preprocess::FaceSearch::Main,
            false => preprocess::FaceSearch::Every,
        },
    };
    let model = Model::open(&model_path, &opts)?;
    let about = predict::describe(&model);
    tracing::info!("{}", predict::describe_line(&model));
    let bar = indicatif::ProgressBar::new(photos.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "predict {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .expect("valid template"),
    );
    let paths: Vec<PathBuf> = photos.iter().map(|p| p.path.clone()).collect();
    let mut k = 0;
    let mut annotate_failed = 0;
    let mut unknowns = predict::group::Unknowns::default();
    let (results, timings) = predict::predict_photos(&model, &paths, |photo, img, aligned| {
        if cli.group_unknowns.is_some() {
            unknowns.take(photo, aligned);
        }
        if let (Some(dir), Some(img)) = (&cli.annotate, img) {
            let out = predict::annotate::annotated_path(dir, &photos[k].relative);
            if let Err(e) = predict::annotate::annotate(img, photo, &out) {
                tracing::warn!("{}: no annotated copy: {e}", photo.path.display());
                annotate_failed += 1;
            }
        }
        k += 1;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let text = output::render(cli.format, &results, &about);
    match &cli.output {
        Some(p) => artifacts::write_atomic(p, text.as_bytes())?,
        None => print!("{text}"),
    }
    if let Some(p) = &cli.timings {
        artifacts::write_json_atomic(p, &output::timings_json(&timings, &about))?;
    }
    tracing::info!("{}", output::summary_line(&results, &timings));
    if let Some(dir) = &cli.group_unknowns {
        let s = predict::group::group_unknowns(&model, unknowns, cli.device, dir)?;
        tracing::info!("{}", s.line());
    }
    if annotate_failed > 0 {
        bail!("{annotate_failed} annotated copies could not be written");
    }
    let unreadable = results.iter().any(|r| r.error.is_some());
    Ok(if unreadable {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
