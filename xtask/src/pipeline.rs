//! `cargo xtask pipeline`: every stage in order, skipping the ones that are up to date
//! (each stage decides that itself from the config and input digests in its output's
//! metadata), then one comparison table.

use crate::util::{
    cargo, flag_value, fmt, has_flag, read_json, run as sh, run_capture, shared_dir, Exit,
};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub const MODES: &[&str] = &[
    "base",
    "two-step",
    "cosine",
    "probe",
    "distill-base",
    "distill",
];
/// Modes that train on the teacher stage's views (`--views`); `distill-base` is `distill`'s
/// student, views and schedule from the labels alone (no teacher term): the base row a
/// distilled student is compared with.
const VIEW_MODES: &[&str] = &["distill-base", "distill"];
/// Default views per face for the face teacher (`--views`): K = 4 did as well as 16 on
/// validation (0.776 / 0.767, seed 42) at a quarter of the teacher passes (README).
pub const DEFAULT_VIEWS: usize = 4;
/// The teachers a run compares: the study's ImageNet Inception-v3 and dlib's face descriptor.
pub const TEACHERS: &[&str] = &["inception", "face"];

#[derive(Debug, Clone)]
pub struct Options {
    pub data: PathBuf,
    pub out: PathBuf,
    /// The study's teacher (Inception-v3: hub id, folder or file).
    pub teacher: String,
    /// The face-identity teacher: `dlib-face` (found on disk) or a `.dat` path.
    pub face_teacher: String,
    /// Which teachers to run: `inception`, `face` or both.
    pub teachers: Vec<String>,
    /// dlib's CNN face detector for preprocess (else preprocess looks for it itself).
    pub cnn_model: Option<PathBuf>,
    /// The cleaning loop's CSV (else `<out>/exclusions.csv` when present).
    pub exclusions: Option<PathBuf>,
    pub teacher_layer: String,
    /// Side of the pooling grid over the teacher layer (1 = global average pool).
    pub teacher_grid: usize,
    pub modes: Vec<String>,
    /// Views per face the face teacher embeds for the distill modes (0: none).
    pub views: usize,
    /// The same for Inception, whose passes cost ~8x the face teacher's (0 by default: its
    /// distill student then trains on the faces with one target each).
    pub inception_views: usize,
    /// `--online-teacher`: the face teacher's distill student (and distill-base) train on
    /// fresh views, the teacher run at every step (~3-5x an epoch's cost on a CPU).
    pub online_teacher: bool,
    pub device: String,
    pub seed: u64,
    /// Each stage's extra flags from the config file (`--config`, else `pipeline.toml`).
    pub stage_args: StageArgs,
    pub cuda: bool,
    pub install_deps: bool,
    pub download_lfw: bool,
    /// A `predict --group-unknowns` folder whose named groups join the data first.
    pub add: Option<PathBuf>,
    /// `--slurm`: the sharded stages as Slurm job arrays, train and eval after them (#26).
    pub slurm: Option<crate::slurm::SlurmOptions>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options> {
        let known = [
            "--data",
            "--out",
            "--teacher",
            "--face-teacher",
            "--cnn-model",
            "--exclusions",
            "--teachers",
            "--teacher-layer",
            "--teacher-grid",
            "--modes",
            "--views",
            "--inception-views",
            "--device",
            "--seed",
            "--config",
            "--features",
            "--add",
        ];
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if known.contains(&a) {
                i += 2;
            } else if a == "--install-deps" || a == "--download-lfw" || a == "--online-teacher" {
                i += 1;
            } else if let Some(n) = crate::slurm::SlurmOptions::arity(a) {
                i += n;
            } else {
                bail!("unknown option `{a}` for pipeline (see `cargo xtask --help`)");
            }
        }
        let modes = list_flag(args, "--modes", MODES, |bad| {
            format!("unknown mode `{bad}` (base, two-step, cosine, probe)")
        })?;
        let teachers = list_flag(args, "--teachers", TEACHERS, |bad| {
            format!("unknown teacher `{bad}` in --teachers (inception, face)")
        })?;
        let features = flag_value(args, "--features").unwrap_or_default();
        if !features.is_empty() && features != "cuda" {
            bail!("--features: only `cuda` is known");
        }
        let stage_args = match flag_value(args, "--config") {
            Some(path) => StageArgs::read(Path::new(&path))?,
            None if Path::new("pipeline.toml").exists() => {
                StageArgs::read(Path::new("pipeline.toml"))?
            }
            None => StageArgs::default(),
        };
        Ok(Options {
            data: flag_value(args, "--data")
                .unwrap_or_else(|| "data/raw".into())
                .into(),
            out: flag_value(args, "--out")
                .unwrap_or_else(|| "data/artifacts".into())
                .into(),
            teacher: flag_value(args, "--teacher")
                .unwrap_or_else(|| "timm/inception_v3.tv_in1k".into()),
            face_teacher: flag_value(args, "--face-teacher").unwrap_or_else(|| "dlib-face".into()),
            teachers,
            cnn_model: flag_value(args, "--cnn-model").map(PathBuf::from),
            exclusions: flag_value(args, "--exclusions").map(PathBuf::from),
            teacher_layer: flag_value(args, "--teacher-layer").unwrap_or_else(|| "pool".into()),
            teacher_grid: number_flag(args, "--teacher-grid", 1)?,
            views: number_flag(args, "--views", DEFAULT_VIEWS)?,
            inception_views: number_flag(args, "--inception-views", 0)?,
            online_teacher: has_flag(args, "--online-teacher"),
            modes,
            device: flag_value(args, "--device").unwrap_or_else(|| {
                // --slurm-gpu: every job gets a GPU; the stages must be told to use it.
                if has_flag(args, "--slurm-gpu") {
                    "cuda"
                } else {
                    "auto"
                }
                .into()
            }),
            seed: number_flag(args, "--seed", 42)?,
            stage_args,
            cuda: features == "cuda",
            install_deps: has_flag(args, "--install-deps"),
            download_lfw: has_flag(args, "--download-lfw"),
            add: flag_value(args, "--add").map(PathBuf::from),
            slurm: crate::slurm::SlurmOptions::parse(args)?,
        })
    }
}

/// A comma-separated list flag (`--modes`, `--teachers`), else all of `known`; an item not
/// in `known` is an error worded by `unknown`.
fn list_flag(
    args: &[String],
    flag: &str,
    known: &[&str],
    unknown: impl Fn(&str) -> String,
) -> Result<Vec<String>> {
    let items: Vec<String> = flag_value(args, flag)
        .map(|m| m.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|| known.iter().map(|s| s.to_string()).collect());
    if let Some(bad) = items.iter().find(|m| !known.contains(&m.as_str())) {
        bail!("{}", unknown(bad));
    }
    Ok(items)
}

/// A numeric flag's value, else `default`; a value that does not parse names the flag.
fn number_flag<T>(args: &[String], flag: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(flag_value(args, flag)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| flag.to_string())?
        .unwrap_or(default))
}

/// Extra per-stage arguments from `pipeline.toml`: `[preprocess] args = [...]`, and the
/// same for `bottleneck`, `train` and `eval` (a flag there is the stage's own CLI flag,
/// so there is one definition of each setting: the stage's), `[train-distill]` and
/// `[train-<run>]` after `[train]`. Read once, when the options are parsed, so a bad file
/// fails before any stage runs.
#[derive(Debug, Clone, Default)]
pub struct StageArgs(BTreeMap<String, Vec<String>>);

impl StageArgs {
    /// The `args` list of every section of the TOML file at `path`.
    pub fn read(path: &Path) -> Result<StageArgs> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("{}: not valid TOML", path.display()))?;
        let mut sections = BTreeMap::new();
        for (stage, section) in doc {
            let Some(args) = section.get("args") else {
                continue;
            };
            let Some(args) = args.as_array() else {
                bail!("{}: [{stage}] args must be a list of flags", path.display());
            };
            let args = args
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            sections.insert(stage, args);
        }
        Ok(StageArgs(sections))
    }

    /// The flags of `[stage]` (none when the file has no such section).
    pub fn get(&self, stage: &str) -> &[String] {
        self.0.get(stage).map(Vec::as_slice).unwrap_or_default()
    }
}

/// A stage binary, as `build_stages` leaves it.
pub fn bin(name: &str) -> PathBuf {
    PathBuf::from("target/release").join(name)
}

/// What the stages of one run did: when it started, which stages ran, which were up to
/// date, and how long each took.
struct StageLog {
    start: Instant,
    ran: Vec<String>,
    skipped: Vec<String>,
    timings: Vec<(String, f64)>,
    /// `--slurm`: the stages' commands are recorded here instead of run.
    plan: Option<Vec<(String, Vec<OsString>)>>,
}

impl StageLog {
    fn new() -> StageLog {
        StageLog {
            start: Instant::now(),
            ran: Vec::new(),
            skipped: Vec::new(),
            timings: Vec::new(),
            plan: None,
        }
    }

    /// Runs one stage; its stdout says whether it was skipped.
    fn stage(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        if let Some(plan) = &mut self.plan {
            let args = cmd.get_args().map(|a| a.to_os_string());
            plan.push((
                name.into(),
                [cmd.get_program().into()].into_iter().chain(args).collect(),
            ));
            return Ok(());
        }
        let t = Instant::now();
        let out = run_capture(cmd).with_context(|| format!("stage {name}"))?;
        if out.contains("up to date, skipped") {
            self.skipped.push(name.to_string());
        } else {
            self.ran.push(name.to_string());
        }
        self.timings
            .push((name.to_string(), t.elapsed().as_secs_f64()));
        Ok(())
    }
}

/// One student to train and evaluate: a mode on one teacher's bottlenecks (base: none).
struct Run<'a> {
    teacher: Option<&'a str>,
    mode: &'a str,
    bottlenecks: PathBuf,
}

impl Run<'_> {
    /// The run's name in file names and the stage list: `face-cosine`, `base`.
    fn tag(&self) -> String {
        match self.teacher {
            Some(t) => format!("{t}-{}", self.mode),
            None => self.mode.to_string(),
        }
    }
}

/// The whole study: every stage in order (each skips itself when up to date), then
/// `summary.json`, `index.html` and the comparison table. Returns the summary.
pub fn run(o: &Options) -> Result<Value> {
    let mut log = StageLog::new();
    crate::deps::ensure(o.install_deps)?;
    find_data(o)?;
    build_stages(o.cuda)?;
    if let Some(groups) = &o.add {
        add_groups(o, groups)?;
    }
    std::fs::create_dir_all(&o.out)?;
    if let Some(s) = &o.slurm {
        // The sharded stages' commands, exactly as they would run here, become job arrays.
        log.plan = Some(Vec::new());
        let faces = preprocess(o, &mut log)?;
        bottlenecks(o, &faces, &mut log)?;
        return crate::slurm::pipeline(o, s, log.plan.take().unwrap_or_default());
    }
    let faces = preprocess(o, &mut log)?;
    let teachers = bottlenecks(o, &faces, &mut log)?;
    let exclusions = exclusions(o)?;
    let excl_args: Vec<OsString> = exclusions
        .iter()
        .flat_map(|p| ["--exclusions".into(), p.clone().into_os_string()])
        .collect();
    let mut rows = Vec::new();
    for r in planned_runs(o, &teachers) {
        rows.push(train_and_eval(o, &mut log, &faces, &excl_args, &r)?);
    }
    let best = mark_best(&mut rows);
    copy_flags(o, &rows)?;
    let summary = summary_json(o, &faces, &teachers, &exclusions, rows, best, &log)?;
    artifacts::write_json_atomic(&o.out.join("summary.json"), &summary)?;
    artifacts::write_atomic(
        &o.out.join("index.html"),
        crate::front::index_html(&summary, &o.out).as_bytes(),
    )?;
    print_table(&summary);
    print_footer(o, &log, best.is_some());
    Ok(summary)
}

/// The named groups of `groups` join the data (`predict --add-groups`, all or nothing);
/// the stages below then redo what the new photos change (the teacher's cache keeps every
/// other face's output).
fn add_groups(o: &Options, groups: &Path) -> Result<()> {
    crate::util::run(
        Command::new(bin("predict"))
            .arg("--add-groups")
            .arg(groups)
            .arg("--data")
            .arg(&o.data),
    )
}

/// The photos folder must exist: LFW is offered for the default folder (or with
/// `--download-lfw`); otherwise it says what to put there and exits with code 2.
fn find_data(o: &Options) -> Result<()> {
    let default_data = o.data == Path::new("data/raw");
    if !o.data.is_dir()
        && (default_data || o.download_lfw)
        && crate::lfw::offer(&o.data, o.download_lfw)?
    {
        eprintln!("using {} (LFW)", o.data.display());
    }
    if !o.data.is_dir() {
        eprintln!(
            "no photos at {}: put one folder of photos per person there (<folder>/<person>/<photo>.jpg), or pass --data DIR{}",
            o.data.display(),
            if shared_dir().is_some() { " (e.g. --data ../shared/data/msceleb-samples)" } else { "" }
        );
        eprintln!("(a public benchmark that fits: Labeled Faces in the Wild, people with at least 20 photos, one folder each)");
        return Err(Exit(2).into());
    }
    Ok(())
}

/// Builds the stage binaries (incremental after the first time).
/// Builds the stage binaries (release; `cuda`: with the CUDA feature): the one build
/// step of the pipeline, `bench scale` and the Slurm test.
pub fn build_stages(cuda: bool) -> Result<()> {
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "preprocess",
        "-p",
        "inception-bottleneck",
        "-p",
        "train",
        "-p",
        "eval-tsne",
        "-p",
        "predict",
    ]);
    if cuda {
        build.args([
            "--features",
            "preprocess/cuda,inception-bottleneck/cuda,train/cuda,eval-tsne/cuda,predict/cuda",
        ]);
    }
    sh(&mut build)
}

/// Preprocess: the photos to aligned faces. Returns the faces artifact.
fn preprocess(o: &Options, log: &mut StageLog) -> Result<PathBuf> {
    let faces = o.out.join("faces.safetensors");
    let mut pre = Command::new(bin("preprocess"));
    pre.args(["--skip-if-fresh", "--device", &o.device, "--input"])
        .arg(&o.data)
        .arg("--output")
        .arg(&faces);
    match &o.cnn_model {
        Some(p) => {
            pre.arg("--cnn-model").arg(p);
        }
        None => {
            // Offers the download; preprocess falls back to the cascade alone without it.
            crate::models::available(
                &crate::models::FACE_DETECTOR,
                "faces found by the Haar cascade alone",
                "--cnn-model PATH",
            )?;
        }
    }
    log.stage("preprocess", pre.args(o.stage_args.get("preprocess")))?;
    Ok(faces)
}

/// One bottlenecks artifact per teacher (none when only base runs; the face teacher is
/// left out when its model cannot be had). Returns each teacher with its artifact.
fn bottlenecks<'a>(
    o: &'a Options,
    faces: &Path,
    log: &mut StageLog,
) -> Result<Vec<(&'a str, PathBuf)>> {
    let mut teachers = Vec::new();
    if !o.modes.iter().any(|m| m != "base") {
        return Ok(teachers);
    }
    for t in &o.teachers {
        let path = o.out.join(format!("bottlenecks-{t}.safetensors"));
        let mut cmd = Command::new(bin("inception-bottleneck"));
        cmd.args(["--skip-if-fresh", "--faces"])
            .arg(faces)
            .arg("--output")
            .arg(&path)
            .args(["--device", &o.device, "--cache-dir"])
            .arg(o.out.join("bottleneck-cache"));
        if t == "face" {
            let Some(model) = crate::models::face_teacher(&o.face_teacher)? else {
                continue;
            };
            cmd.arg("--teacher").arg(model);
        } else {
            cmd.args([
                "--teacher",
                &o.teacher,
                "--layer",
                &o.teacher_layer,
                "--grid",
                &o.teacher_grid.to_string(),
            ])
            .args(o.stage_args.get("bottleneck"));
        }
        let views = if t == "face" {
            o.views
        } else {
            o.inception_views
        };
        if views > 0 && o.modes.iter().any(|m| VIEW_MODES.contains(&m.as_str())) {
            cmd.args(["--views", &views.to_string(), "--photos"])
                .arg(&o.data);
        }
        log.stage(&format!("bottlenecks {t}"), &mut cmd)?;
        teachers.push((t.as_str(), path));
    }
    Ok(teachers)
}

/// Every mode on every teacher; base (no teacher) trains once. Eval needs some teacher
/// features for its teacher t-SNE; base uses the first one's.
fn planned_runs<'a>(o: &'a Options, teachers: &[(&'a str, PathBuf)]) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    for mode in &o.modes {
        if mode == "base" || mode == "distill-base" {
            // distill-base cuts its views from the face teacher's bank (its views are the
            // ones the distill student it is compared with sees).
            let b = teachers
                .iter()
                .find(|t| mode == "distill-base" && t.0 == "face")
                .or(teachers.first())
                .map(|t| t.1.clone())
                .unwrap_or_else(|| o.out.join("bottlenecks.safetensors"));
            runs.push(Run {
                teacher: None,
                mode,
                bottlenecks: b,
            });
        } else {
            for (t, b) in teachers {
                runs.push(Run {
                    teacher: Some(t),
                    mode,
                    bottlenecks: b.clone(),
                });
            }
        }
    }
    runs
}

/// The cleaning loop: `--exclusions FILE`, else `<out>/exclusions.csv` when a person
/// has made one (from the `flags.csv` a face-teacher run writes, edited).
fn exclusions(o: &Options) -> Result<Option<PathBuf>> {
    let exclusions = o
        .exclusions
        .clone()
        .or_else(|| Some(o.out.join("exclusions.csv")).filter(|p| p.is_file()));
    if let Some(p) = &exclusions {
        if !p.is_file() {
            bail!("--exclusions {}: no such file", p.display());
        }
        println!(
            "exclusions: faces marked drop in {} are left out",
            p.display()
        );
    }
    Ok(exclusions)
}

/// Train then eval for one run; returns its row of the comparison table.
fn train_and_eval(
    o: &Options,
    log: &mut StageLog,
    faces: &Path,
    excl_args: &[OsString],
    r: &Run,
) -> Result<Value> {
    let tag = r.tag();
    let seed = o.seed.to_string();
    let ck = o.out.join(format!("student-{tag}.safetensors"));
    let (mode_args, extra) = mode_args(r.mode);
    let mut extra_train = o.stage_args.get("train").to_vec();
    if VIEW_MODES.contains(&r.mode) {
        extra_train.extend_from_slice(o.stage_args.get("train-distill"));
        // Fresh views need the face teacher (distill-base cuts the face teacher's views).
        if o.online_teacher && (r.teacher == Some("face") || r.mode == "distill-base") {
            extra_train.push("--online-teacher".into());
            extra_train.push("--photos".into());
            extra_train.push(o.data.display().to_string());
        }
    }
    // One run's own flags last (`[train-inception-distill]`, `[train-base]`, ...).
    extra_train.extend_from_slice(o.stage_args.get(&format!("train-{tag}")));
    log.stage(
        &format!("train {tag}"),
        Command::new(bin("train"))
            .args(mode_args)
            .args([
                "--skip-if-fresh",
                "--seed",
                &seed,
                "--device",
                &o.device,
                "--faces",
            ])
            .arg(faces)
            .arg("--bottlenecks")
            .arg(&r.bottlenecks)
            .arg("--output")
            .arg(&ck)
            .args(excl_args)
            .args(extra_train)
            .args(extra),
    )?;
    let eval_dir = o.out.join(format!("eval-{tag}"));
    log.stage(
        &format!("eval {tag}"),
        Command::new(bin("eval-tsne"))
            .args([
                "--skip-if-fresh",
                "--seed",
                &seed,
                "--device",
                &o.device,
                "--checkpoint",
            ])
            .arg(&ck)
            .arg("--faces")
            .arg(faces)
            .arg("--bottlenecks")
            .arg(&r.bottlenecks)
            .arg("--out")
            .arg(&eval_dir)
            .args(excl_args)
            .args(o.stage_args.get("eval")),
    )?;
    result_row(r, &ck, &eval_dir)
}

/// `train`'s flags for a pipeline mode, and flags that must come after the config's
/// (`distill-base` switches every teacher term off, whatever `[train-distill]` says).
fn mode_args(mode: &str) -> (Vec<String>, Vec<&'static str>) {
    // The distill modes' schedule (a config's `[train]` / `[train-distill]` /
    // `[train-<run>]` flags come after these and win): chosen on validation accuracy, see
    // the README.
    let distill = || -> Vec<String> { DISTILL_TRAIN.iter().map(|s| s.to_string()).collect() };
    match mode {
        "distill" => (distill(), vec![]),
        "distill-base" => (
            distill(),
            vec!["--kl", "0", "--cos", "0", "--rkd", "0", "--angle", "0"],
        ),
        m => (vec![format!("--{m}")], vec![]),
    }
}

/// `train`'s flags for the distill modes in a pipeline run.
const DISTILL_TRAIN: &[&str] = &[
    "--distill",
    "--epochs",
    "100",
    "--min-steps",
    "0",
    "--patience",
    "0",
    "--batch",
    "64",
    "--lr",
    "2e-3",
    "--warmup",
    "5",
];

/// A run's row: eval's report and the training summary beside the checkpoint.
fn result_row(r: &Run, ck: &Path, eval_dir: &Path) -> Result<Value> {
    let report: Value = read_json(&eval_dir.join("report.json"))?;
    let summary: Value = read_json(&ck.with_extension("summary.json")).unwrap_or(Value::Null);
    Ok(json!({
        "teacher": r.teacher.unwrap_or("none"),
        "mode": r.mode,
        "checkpoint": ck.display().to_string(),
        "val_top1": report["val"]["top1"],
        "test_top1": report["test"]["top1"],
        "test_macro_f1": report["test"]["macro_f1"],
        "test_n": report["test"]["n"],
        "val_n": report["val"]["n"],
        "test_unflagged_top1": report["test_unflagged"]["top1"],
        "train_seconds": summary["seconds"],
        "samples_per_second": summary["samples_per_second"],
        "device": summary["device"],
        "suspects": report["suspects"].as_array().map(|a| a.len()),
        "report": eval_dir.join("report.html").display().to_string(),
        "eval_dir": eval_dir.display().to_string(),
    }))
}

/// Marks the best model by validation accuracy (ties: the first) for the user; returns
/// its row's index.
fn mark_best(rows: &mut [Value]) -> Option<usize> {
    let best = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r["val_top1"].as_f64().map(|v| (i, v)))
        .fold(None, |acc: Option<(usize, f64)>, (i, v)| match acc {
            Some((_, bv)) if bv >= v => acc,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i);
    if let Some(i) = best {
        rows[i]["best"] = json!(true);
    }
    best
}

/// The flags to review: the best face-teacher model's, at the top of the output.
fn copy_flags(o: &Options, rows: &[Value]) -> Result<()> {
    let face_rows: Vec<&Value> = rows.iter().filter(|r| r["teacher"] == "face").collect();
    let flag_row = face_rows
        .iter()
        .find(|r| r["best"] == json!(true))
        .or(face_rows.first());
    if let Some(r) = flag_row {
        let src = PathBuf::from(r["eval_dir"].as_str().unwrap_or("")).join("flags.csv");
        if src.is_file() {
            std::fs::copy(&src, o.out.join("flags.csv"))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// `summary.json`: the settings, the rows, the best one, and the stages' times.
fn summary_json(
    o: &Options,
    faces: &Path,
    teachers: &[(&str, PathBuf)],
    exclusions: &Option<PathBuf>,
    rows: Vec<Value>,
    best: Option<usize>,
    log: &StageLog,
) -> Result<Value> {
    let faces_meta = artifacts::read_header(faces)?.extra;
    let classes = faces_meta["class_names"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    Ok(json!({
        "data": o.data.display().to_string(),
        "out": o.out.display().to_string(),
        "seed": o.seed,
        "device": o.device,
        "teacher": o.teacher,
        "face_teacher": o.face_teacher,
        "teachers": teachers.iter().map(|t| t.0).collect::<Vec<_>>(),
        "exclusions": exclusions.as_ref().map(|p| p.display().to_string()),
        "best": best.map(|i| rows[i].clone()),
        "timings": stage_timings(&log.timings, &log.skipped, &o.out.join("summary.json")),
        "teacher_layer": o.teacher_layer,
        "teacher_grid": o.teacher_grid,
        "classes": classes,
        "modes": rows,
        "stages_run": log.ran,
        "stages_skipped": log.skipped,
        "seconds": log.start.elapsed().as_secs_f64(),
    }))
}

/// The comparison table on stdout: teacher x mode, the best one marked.
fn print_table(summary: &Value) {
    println!(
        "\n{:<10} {:<10} {:>8} {:>9} {:>14} {:>10} {:>9}",
        "teacher", "mode", "val acc", "test acc", "test macro-F1", "train (s)", "suspects"
    );
    for r in summary["modes"].as_array().expect("array") {
        println!(
            "{:<10} {:<10} {:>8} {:>9} {:>14} {:>10} {:>9}{}",
            r["teacher"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            fmt(&r["val_top1"], 4),
            fmt(&r["test_top1"], 4),
            fmt(&r["test_macro_f1"], 4),
            fmt(&r["train_seconds"], 1),
            r["suspects"],
            if r["best"] == json!(true) {
                "  <- best (validation)"
            } else {
                ""
            }
        );
    }
}

/// What ran, what was skipped, where the outputs are, and how to use the best model.
fn print_footer(o: &Options, log: &StageLog, has_best: bool) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "\nran: {}; skipped (up to date): {}; {:.1}s; summary: {}; index: {}",
        list(&log.ran),
        list(&log.skipped),
        log.start.elapsed().as_secs_f64(),
        o.out.join("summary.json").display(),
        o.out.join("index.html").display()
    );
    if has_best {
        println!(
            "name the people in new photos with the best model: cargo run --release -p predict -- --pipeline {} PHOTO|FOLDER ...",
            o.out.display()
        );
    }
}

/// Seconds per stage; a stage skipped as up to date keeps the time of the run that made its
/// output (from the previous summary), so the page shows what each stage costs.
fn stage_timings(timings: &[(String, f64)], skipped: &[String], previous: &Path) -> Vec<Value> {
    let old: Vec<Value> = read_json(previous)
        .ok()
        .and_then(|v| v["timings"].as_array().cloned())
        .unwrap_or_default();
    timings
        .iter()
        .map(|(stage, secs)| {
            if skipped.contains(stage) {
                if let Some(o) = old
                    .iter()
                    .find(|o| o["stage"] == json!(stage) && o["skipped"] != json!(true))
                {
                    return json!({"stage": stage, "seconds": o["seconds"], "earlier": true});
                }
                return json!({"stage": stage, "seconds": secs, "skipped": true});
            }
            json!({"stage": stage, "seconds": secs})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_defaults_lists_and_numbers() {
        let o = Options::parse(&args(&[])).unwrap();
        assert_eq!(o.modes, MODES);
        assert_eq!(o.teachers, TEACHERS);
        assert_eq!((o.seed, o.teacher_grid), (42, 1));
        let o = Options::parse(&args(&[
            "--modes",
            "base, probe",
            "--teachers",
            "face",
            "--seed",
            "7",
            "--teacher-grid",
            "2",
        ]))
        .unwrap();
        assert_eq!(o.modes, ["base", "probe"]);
        assert_eq!(o.teachers, ["face"]);
        assert_eq!((o.seed, o.teacher_grid), (7, 2));
        let err = |a: &[&str]| format!("{:#}", Options::parse(&args(a)).unwrap_err());
        assert_eq!(
            err(&["--modes", "foo"]),
            "unknown mode `foo` (base, two-step, cosine, probe)"
        );
        assert_eq!(
            err(&["--teachers", "x"]),
            "unknown teacher `x` in --teachers (inception, face)"
        );
        assert!(err(&["--seed", "x"]).starts_with("--seed: "));
        assert!(err(&["--teacher-grid", "-1"]).starts_with("--teacher-grid: "));
    }

    #[test]
    fn stage_args_are_read_once_and_bad_sections_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[train]\nargs = [\"--epochs\", 8]\n[train-face-distill]\nargs = [\"--kl\", \"0\"]\n[eval]\n",
        )
        .unwrap();
        let a = StageArgs::read(&path).unwrap();
        assert_eq!(a.get("train"), ["--epochs", "8"]);
        assert_eq!(a.get("train-face-distill"), ["--kl", "0"]);
        assert!(a.get("eval").is_empty() && a.get("preprocess").is_empty());
        std::fs::write(&path, "[train]\nargs = \"--epochs 8\"\n").unwrap();
        let err = format!("{:#}", StageArgs::read(&path).unwrap_err());
        assert!(
            err.ends_with("[train] args must be a list of flags"),
            "{err}"
        );
        std::fs::write(&path, "[train\n").unwrap();
        let err = format!("{:#}", StageArgs::read(&path).unwrap_err());
        assert!(err.contains("not valid TOML"), "{err}");
        let err = format!(
            "{:#}",
            Options::parse(&args(&["--config", "no/such.toml"])).unwrap_err()
        );
        assert!(err.starts_with("no/such.toml"), "{err}");
    }

    #[test]
    fn the_best_row_is_the_first_highest_validation_accuracy() {
        let mut rows = vec![
            json!({"val_top1": 0.5}),
            json!({"val_top1": 0.7}),
            json!({"val_top1": null}),
            json!({"val_top1": 0.7}),
        ];
        assert_eq!(mark_best(&mut rows), Some(1));
        assert_eq!(rows[1]["best"], json!(true));
        assert!(rows[3].get("best").is_none());
        assert_eq!(mark_best(&mut []), None);
    }

    #[test]
    fn base_trains_once_on_the_first_teachers_features() {
        let mut o = Options::parse(&args(&["--out", "o"])).unwrap();
        o.modes = args(&["base", "cosine"]);
        let teachers = vec![
            (
                "inception",
                PathBuf::from("o/bottlenecks-inception.safetensors"),
            ),
            ("face", PathBuf::from("o/bottlenecks-face.safetensors")),
        ];
        let runs = planned_runs(&o, &teachers);
        let tags: Vec<String> = runs.iter().map(|r| r.tag()).collect();
        assert_eq!(tags, ["base", "inception-cosine", "face-cosine"]);
        assert_eq!(runs[0].bottlenecks, teachers[0].1);
        let none = planned_runs(&o, &[]);
        assert_eq!(
            none[0].bottlenecks,
            PathBuf::from("o/bottlenecks.safetensors")
        );
    }
}
