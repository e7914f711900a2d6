//! Slurm (#26): the expensive stages as job arrays on an existing scheduler.
//!
//! `cargo xtask pipeline --slurm [--shards N]` writes sbatch scripts into `<out>/slurm/` and
//! submits them: per sharded stage (preprocess, then each teacher's inception-bottleneck)
//! an array of N tasks, task I running the stage with `--shard I/N`, and a merge job
//! (`--merge`, after the array succeeded) that checks every shard and writes the index;
//! a teacher's array starts after the preprocess merge. Last, one job runs the plain
//! `cargo xtask pipeline` with the same options: it finds the merged artifacts up to date
//! (`--skip-if-fresh`) and trains and evaluates. Every task gets the pipeline's own stage
//! command (recorded from `pipeline.rs`, not rebuilt here) plus its shard flag.
//!
//! `cargo xtask slurm up|down` brings a one-machine cluster up on localhost (munge,
//! slurmctld, slurmd; no systemd), `cargo xtask slurm test` is CI's check: the same stages
//! in one process and as Slurm array tasks must write byte-identical shards.

use crate::pipeline::{bin, Options};
use crate::util::{flag_value, has_flag, is_root, run_capture, shared_dir, show};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Array tasks per sharded stage (`--shards`).
pub const DEFAULT_SHARDS: usize = 4;
/// Where Debian's slurmctld, slurmd and the client commands read their configuration.
const CONF: &str = "/etc/slurm/slurm.conf";
/// The first line of a configuration `slurm up` wrote; any other one is left alone.
const MARKER: &str = "# celeb-transfer: written by `cargo xtask slurm up`";
/// The local cluster's state, spool and logs (`--state`).
const DEFAULT_STATE: &str = "target/slurm-cluster";

const HELP: &str = "\
cargo xtask slurm up [--state DIR] [--install-deps]
    a one-machine Slurm cluster on localhost (munge, slurmctld, slurmd; state, spool and
    logs in DIR, default target/slurm-cluster; config /etc/slurm/slurm.conf); root
cargo xtask slurm down [--state DIR]
    stops its daemons
cargo xtask slurm test [--state DIR] [--install-deps] [--people P] [--photos N] [--shard-size S]
    CI's check: preprocess + the face teacher on P people of msceleb-samples (N photos
    each; default 3 x 60, shards of 32 photos), in one process and as 4 Slurm array tasks
    + merges; the outputs must be identical; prints both wall times (a larger set, e.g.
    --people 14 --photos 1000 --shard-size 256, shows the cost at scale)
";

pub fn cli(args: &[String]) -> Result<()> {
    let state = state_dir(args)?;
    let install = has_flag(args, "--install-deps");
    match args.first().map(String::as_str) {
        Some("up") => up(&state, install),
        Some("down") => down(&state),
        Some("test") => test(&state, install, &TestSize::parse(args)?),
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown slurm command `{other}`\n\n{HELP}"),
    }
}

fn state_dir(args: &[String]) -> Result<PathBuf> {
    let dir = PathBuf::from(flag_value(args, "--state").unwrap_or_else(|| DEFAULT_STATE.into()));
    Ok(std::env::current_dir()?.join(dir))
}

// ---------------------------------------------------------------------------------------
// `pipeline --slurm`: options

/// `pipeline`'s Slurm options.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmOptions {
    /// Array tasks per sharded stage.
    pub shards: usize,
    pub partition: Option<String>,
    /// Every job asks for one GPU (`--gres=gpu:1`) and the stages run with `--device cuda`.
    pub gpu: bool,
    /// CPUs per array task and merge.
    pub cpus: usize,
    /// CPUs of the dependent job that trains and evaluates.
    pub train_cpus: usize,
    /// Wait for the jobs (and fail when one fails); `--no-wait` returns after submitting.
    pub wait: bool,
    /// `pipeline`'s arguments for the dependent job: these options, `--add` and
    /// `--install-deps` left out (the submitting run did them).
    pub forward: Vec<String>,
}

const VALUE_FLAGS: &[&str] = &[
    "--shards",
    "--slurm-partition",
    "--slurm-cpus",
    "--slurm-train-cpus",
];
const SWITCHES: &[&str] = &["--slurm", "--slurm-gpu", "--no-wait"];

impl SlurmOptions {
    /// How many arguments one of these options takes up with its value; None: not one.
    pub fn arity(flag: &str) -> Option<usize> {
        if VALUE_FLAGS.contains(&flag) {
            Some(2)
        } else if SWITCHES.contains(&flag) {
            Some(1)
        } else {
            None
        }
    }

    /// The options from `pipeline`'s arguments; None without `--slurm`.
    pub fn parse(args: &[String]) -> Result<Option<SlurmOptions>> {
        if !has_flag(args, "--slurm") {
            if let Some(f) = args
                .iter()
                .find(|a| Self::arity(a).is_some() && *a != "--slurm")
            {
                bail!("{f} needs --slurm");
            }
            return Ok(None);
        }
        let count = |flag: &str, default: usize| -> Result<usize> {
            match flag_value(args, flag) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => bail!("{flag} {v}: expected a whole number >= 1"),
                },
            }
        };
        let gpu = has_flag(args, "--slurm-gpu");
        if gpu {
            if flag_value(args, "--features").as_deref() != Some("cuda") {
                bail!("--slurm-gpu needs --features cuda (the stages built with candle's CUDA backend)");
            }
            if let Some(d) = flag_value(args, "--device").filter(|d| d != "cuda") {
                bail!("--slurm-gpu runs every stage with --device cuda, not --device {d}");
            }
        }
        let mut forward = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if VALUE_FLAGS.contains(&a) || a == "--add" {
                i += 2;
                continue;
            }
            if !SWITCHES.contains(&a) && a != "--install-deps" && a != "--download-lfw" {
                forward.push(a.to_string());
            }
            i += 1;
        }
        if gpu && !has_flag(&forward, "--device") {
            forward.extend(["--device".to_string(), "cuda".to_string()]);
        }
        Ok(Some(SlurmOptions {
            shards: count("--shards", DEFAULT_SHARDS)?,
            partition: flag_value(args, "--slurm-partition"),
            gpu,
            cpus: count("--slurm-cpus", 1)?,
            train_cpus: count(
                "--slurm-train-cpus",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )?,
            wait: !has_flag(args, "--no-wait"),
            forward,
        }))
    }
}

// ---------------------------------------------------------------------------------------
// sbatch scripts

/// Where a run's scripts, logs and exit codes go, and what every job asks Slurm for.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The workspace root (absolute): every job starts there, as the pipeline does.
    root: PathBuf,
    /// `<out>/slurm` (absolute): the scripts, `logs/`, and `status/<job>[-<task>].rc`.
    dir: PathBuf,
    partition: Option<String>,
    gpu: bool,
    cpus: usize,
}

/// What one job runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// N tasks, task I with `--shard I/N`.
    Array(usize),
    /// The stage once more with `--merge`.
    Merge,
    /// The command as it is.
    Single,
}

/// A submitted job: its name (`preprocess`, `preprocess-merge`, ...), Slurm id, and tasks.
#[derive(Debug, Clone)]
struct Job {
    name: String,
    id: String,
    tasks: Option<usize>,
}

/// `s`, quoted for bash when it needs to be.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A job's name from a pipeline stage's (`bottlenecks face` -> `bottlenecks-face`).
fn job_name(stage: &str) -> String {
    stage
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

impl Batch {
    fn new(root: &Path, dir: &Path, partition: Option<String>, gpu: bool, cpus: usize) -> Batch {
        Batch {
            root: root.to_path_buf(),
            dir: root.join(dir),
            partition,
            gpu,
            cpus,
        }
    }

    /// Makes `logs/` and an empty `status/` (a rerun's exit codes are its own).
    fn prepare(&self) -> Result<()> {
        let status = self.dir.join("status");
        if status.exists() {
            std::fs::remove_dir_all(&status)?;
        }
        std::fs::create_dir_all(&status)?;
        std::fs::create_dir_all(self.dir.join("logs"))?;
        Ok(())
    }

    /// The exit code file of a job (an array task's with its index).
    fn rc_file(&self, name: &str, task: Option<usize>) -> PathBuf {
        let file = match task {
            Some(t) => format!("{name}-{t}.rc"),
            None => format!("{name}.rc"),
        };
        self.dir.join("status").join(file)
    }

    /// A job's log as Slurm names it (`%x-%A_%a.out` for array tasks, `%x-%j.out` else).
    fn log_file(&self, job: &Job, task: Option<usize>) -> PathBuf {
        let file = match task {
            Some(t) => format!("{}-{}_{t}.out", job.name, job.id),
            None => format!("{}-{}.out", job.name, job.id),
        };
        self.dir.join("logs").join(file)
    }

    /// The sbatch script of one job: `cmd` (program and arguments) run from the workspace
    /// root, with its shard (`Array`) or `--merge` flag; its exit code goes to the status
    /// folder, so a failure is seen without Slurm's accounting.
    fn script(
        &self,
        name: &str,
        cmd: &[String],
        kind: Kind,
        cpus: usize,
        after: &[String],
    ) -> String {
        let dir = self.dir.display();
        let mut s = String::from("#!/bin/bash\n");
        let mut directive = |d: String| s.push_str(&format!("#SBATCH {d}\n"));
        directive(format!("--job-name={name}"));
        if let Kind::Array(n) = kind {
            directive(format!("--array=0-{}", n - 1));
            directive(format!("--output={dir}/logs/%x-%A_%a.out"));
        } else {
            directive(format!("--output={dir}/logs/%x-%j.out"));
        }
        directive(format!("--cpus-per-task={cpus}"));
        directive(format!("--chdir={}", self.root.display()));
        if let Some(p) = &self.partition {
            directive(format!("--partition={p}"));
        }
        if self.gpu {
            directive("--gres=gpu:1".into());
        }
        if !after.is_empty() {
            directive(format!("--dependency=afterok:{}", after.join(":")));
        }
        s.push_str(&format!(
            "# cargo xtask pipeline --slurm (#26): {}\n",
            match kind {
                Kind::Array(n) => format!("{name}, shard $SLURM_ARRAY_TASK_ID of {n}"),
                Kind::Merge => format!("{name}: checks every shard, writes the index"),
                Kind::Single => name.to_string(),
            }
        ));
        s.push_str("set -u\n");
        s.push_str(&format!(
            "cd {} || exit 1\n",
            quote(&self.root.display().to_string())
        ));
        s.push_str("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\" OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n");
        let mut line: Vec<String> = cmd.iter().map(|a| quote(a)).collect();
        match kind {
            Kind::Array(n) => line.push(format!("--shard \"$SLURM_ARRAY_TASK_ID/{n}\"")),
            Kind::Merge => line.push("--merge".into()),
            Kind::Single => {}
        }
        let line = line.join(" ");
        // The command, as bash runs it (the task's shard expanded), heads the log.
        s.push_str(&format!(
            "set -x\n{line}\n{{ rc=$?; set +x; }} 2>/dev/null\n"
        ));
        let rc = match kind {
            Kind::Array(_) => format!(
                "{}/{name}-\"$SLURM_ARRAY_TASK_ID\".rc",
                quote(&format!("{dir}/status"))
            ),
            _ => quote(&self.rc_file(name, None).display().to_string()),
        };
        s.push_str(&format!("echo \"$rc\" > {rc}\nexit \"$rc\"\n"));
        s
    }

    /// Writes the script to `<dir>/<name>.sbatch` and submits it; returns the job.
    fn submit(
        &self,
        name: &str,
        cmd: &[String],
        kind: Kind,
        cpus: usize,
        after: &[String],
    ) -> Result<Job> {
        let path = self.dir.join(format!("{name}.sbatch"));
        std::fs::write(&path, self.script(name, cmd, kind, cpus, after))
            .with_context(|| format!("{}", path.display()))?;
        let out = sbatch().arg("--parsable").arg(&path).output().context(
            "cannot start sbatch: is Slurm installed? (`cargo xtask slurm up` brings a local cluster up)",
        )?;
        if !out.status.success() {
            bail!(
                "sbatch {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = parse_job_id(&String::from_utf8_lossy(&out.stdout))?;
        let tasks = match kind {
            Kind::Array(n) => Some(n),
            _ => None,
        };
        Ok(Job {
            name: name.to_string(),
            id,
            tasks,
        })
    }

    /// One sharded stage: its array, then its merge after it. Returns both.
    fn submit_sharded(
        &self,
        name: &str,
        cmd: &[String],
        shards: usize,
        after: &[String],
    ) -> Result<(Job, Job)> {
        let array = self.submit(name, cmd, Kind::Array(shards), self.cpus, after)?;
        let merge = self.submit(
            &format!("{name}-merge"),
            cmd,
            Kind::Merge,
            self.cpus,
            std::slice::from_ref(&array.id),
        )?;
        Ok((array, merge))
    }
}

/// `sbatch`, without the variables `cargo run` gave xtask (the jobs inherit the submitting
/// environment; `util::cargo` says why those must not reach a cargo run).
fn sbatch() -> Command {
    let mut c = Command::new("sbatch");
    for (k, v) in crate::util::cargo().get_envs() {
        if v.is_none() {
            c.env_remove(k);
        }
    }
    c
}

/// The job id in `sbatch --parsable`'s answer (`123` or `123;cluster`).
fn parse_job_id(out: &str) -> Result<String> {
    let id = out.trim().split(';').next().unwrap_or("").trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch --parsable answered `{}`, not a job id", out.trim());
    }
    Ok(id.to_string())
}

// ---------------------------------------------------------------------------------------
// Waiting for jobs

/// One line of `squeue -h -r -o '%F|%K|%T|%r'`: array (or plain) job id, task, state, reason.
#[derive(Debug, PartialEq)]
struct Queued {
    job: String,
    task: Option<usize>,
    state: String,
    reason: String,
}

fn parse_squeue(text: &str) -> Vec<Queued> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() >= 4).then(|| Queued {
                job: f[0].to_string(),
                task: f[1].parse().ok(),
                state: f[2].to_string(),
                reason: f[3].to_string(),
            })
        })
        .collect()
}

/// Our jobs still in Slurm's queue (pending, running, completing).
fn queued(jobs: &[Job]) -> Result<Vec<Queued>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%F|%K|%T|%r", "-j", &ids.join(",")])
        .output()
        .context("cannot start squeue")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Every id already left Slurm's memory of finished jobs.
        if err.contains("Invalid job id") {
            return Ok(vec![]);
        }
        bail!("squeue failed: {}", err.trim());
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|q| ids.contains(&q.job.as_str()))
        .collect())
}

/// A job's (or array task's) exit code from its status file, when it has written one.
fn exit_code(b: &Batch, job: &Job, task: Option<usize>) -> Option<i32> {
    std::fs::read_to_string(b.rc_file(&job.name, task))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn tasks(job: &Job) -> Vec<Option<usize>> {
    match job.tasks {
        Some(n) => (0..n).map(Some).collect(),
        None => vec![None],
    }
}

fn task_label(job: &Job, task: Option<usize>) -> String {
    match task {
        Some(t) => format!("{} task {t} (Slurm job {}_{t})", job.name, job.id),
        None => format!("{} (Slurm job {})", job.name, job.id),
    }
}

/// The first failed task: what it was, its exit code and its log.
fn first_failure(b: &Batch, jobs: &[Job]) -> Option<String> {
    for job in jobs {
        for t in tasks(job) {
            if let Some(rc) = exit_code(b, job, t).filter(|rc| *rc != 0) {
                return Some(format!(
                    "{} failed with exit code {rc}; its log: {}",
                    task_label(job, t),
                    b.log_file(job, t).display()
                ));
            }
        }
    }
    None
}

fn cancel(jobs: &[Job]) {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    if !ids.is_empty() {
        let _ = Command::new("scancel").args(&ids).status();
    }
}

/// Waits until every job has left the queue, polling every `poll`; fails (cancelling the
/// rest) with the first failed task's log, and when a job ended without an exit code
/// (cancelled, out of time or memory). Returns when each job finished (its last status
/// file's time).
fn wait(b: &Batch, jobs: &[Job], poll: Duration) -> Result<BTreeMap<String, SystemTime>> {
    let mut last = String::new();
    loop {
        let q = queued(jobs)?;
        if let Some(f) = first_failure(b, jobs) {
            cancel(jobs);
            bail!("{f}");
        }
        if let Some(stuck) = q.iter().find(|q| q.reason == "DependencyNeverSatisfied") {
            cancel(jobs);
            bail!(
                "Slurm job {} can never start (a job it depends on failed or was cancelled); logs in {}",
                stuck.job,
                b.dir.join("logs").display()
            );
        }
        let progress: Vec<String> = jobs
            .iter()
            .map(|j| {
                let t = tasks(j);
                let done = t.iter().filter(|&&t| exit_code(b, j, t).is_some()).count();
                format!("{} {done}/{}", j.name, t.len())
            })
            .collect();
        let progress = progress.join(", ");
        if progress != last {
            eprintln!("slurm: done: {progress}");
            last = progress;
        }
        if q.is_empty() {
            break;
        }
        std::thread::sleep(poll);
    }
    let mut finished = BTreeMap::new();
    for job in jobs {
        let mut end = SystemTime::UNIX_EPOCH;
        for t in tasks(job) {
            let rc = b.rc_file(&job.name, t);
            match exit_code(b, job, t) {
                Some(0) => end = end.max(std::fs::metadata(&rc)?.modified()?),
                _ => bail!(
                    "{} ended without an exit code (cancelled, out of time or memory, or its node failed): see {} and `scontrol show job {}`",
                    task_label(job, t),
                    b.log_file(job, t).display(),
                    job.id
                ),
            }
        }
        finished.insert(job.name.clone(), end);
    }
    Ok(finished)
}

fn print_jobs(b: &Batch, jobs: &[Job]) {
    println!("slurm: submitted (scripts in {}):", b.dir.display());
    for j in jobs {
        let what = match j.tasks {
            Some(n) => format!("array 0-{}", n - 1),
            None => "job".into(),
        };
        println!("  {:<10} {:<28} {what}", j.id, j.name);
    }
}

// ---------------------------------------------------------------------------------------
// `pipeline --slurm`

/// The arrays and merges of `stages`, preprocess first, then the pipeline's job after them;
/// each job joins `jobs` once submitted.
fn submit_pipeline(
    b: &Batch,
    s: &SlurmOptions,
    stages: &[(String, Vec<OsString>)],
    jobs: &mut Vec<Job>,
) -> Result<()> {
    let mut pre_merge: Vec<String> = Vec::new();
    let mut merges: Vec<String> = Vec::new();
    for (i, (stage, cmd)) in stages.iter().enumerate() {
        let cmd: Vec<String> = cmd
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = if i == 0 { vec![] } else { pre_merge.clone() };
        let array = b.submit(
            &job_name(stage),
            &cmd,
            Kind::Array(s.shards),
            b.cpus,
            &after,
        )?;
        let array_id = array.id.clone();
        jobs.push(array);
        let merge = b.submit(
            &format!("{}-merge", job_name(stage)),
            &cmd,
            Kind::Merge,
            b.cpus,
            &[array_id],
        )?;
        if i == 0 {
            pre_merge = vec![merge.id.clone()];
        }
        merges.push(merge.id.clone());
        jobs.push(merge);
    }
    let mut rest = vec!["cargo".to_string(), "xtask".into(), "pipeline".into()];
    rest.extend(s.forward.iter().cloned());
    jobs.push(b.submit("pipeline", &rest, Kind::Single, s.train_cpus, &merges)?);
    Ok(())
}

/// Submits the sharded stages (`stages`: the pipeline's stage commands as it would run
/// them, preprocess first) as arrays + merges, and the rest of the pipeline as a job after
/// them; waits (unless `--no-wait`) and returns the summary the last job wrote.
pub fn pipeline(
    o: &Options,
    s: &SlurmOptions,
    stages: Vec<(String, Vec<OsString>)>,
) -> Result<Value> {
    let root = std::env::current_dir()?;
    let b = Batch::new(
        &root,
        &o.out.join("slurm"),
        s.partition.clone(),
        s.gpu,
        s.cpus,
    );
    b.prepare()?;
    let mut jobs = Vec::new();
    if let Err(e) = submit_pipeline(&b, s, &stages, &mut jobs) {
        cancel(&jobs);
        return Err(e.context("submitting the jobs (those already submitted are cancelled)"));
    }
    print_jobs(&b, &jobs);
    let last = jobs.last().expect("the pipeline job").clone();
    let last_log = b.log_file(&last, None);
    if !s.wait {
        println!(
            "slurm: not waiting; follow with `squeue`, the train/eval job's log is {}",
            last_log.display()
        );
        return Ok(Value::Null);
    }
    wait(&b, &jobs, Duration::from_secs(5))?;
    if let Ok(text) = std::fs::read_to_string(&last_log) {
        let lines: Vec<&str> = text.lines().collect();
        println!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    }
    println!(
        "slurm: every job done; the train/eval job's log: {}",
        last_log.display()
    );
    crate::util::read_json(&o.out.join("summary.json"))
}

// ---------------------------------------------------------------------------------------
// `slurm up` / `slurm down`: a one-machine cluster

/// Whether Slurm's commands and daemons and munge are installed.
pub fn installed() -> bool {
    crate::deps::slurm_missing().is_empty()
}

fn hostname() -> String {
    Command::new("hostname")
        .arg("-s")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().split('.').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// MemTotal of `/proc/meminfo` in MB.
fn mem_total_mb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// The node's CPU layout: `slurmd -C`'s when it counts the CPUs this process may use
/// (Slurm drains a node whose layout differs from the one it finds), else `CPUs=N`.
fn cpu_layout(cpus: usize, slurmd_c: &str) -> String {
    let first = slurmd_c.lines().next().unwrap_or("");
    let field = |k: &str| {
        first
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let keys = [
        "Boards",
        "SocketsPerBoard",
        "CoresPerSocket",
        "ThreadsPerCore",
    ];
    match (field("CPUs"), keys.map(field)) {
        (Some(c), [Some(b), Some(s), Some(co), Some(t)]) if c == cpus.to_string() => {
            format!(
                "CPUs={c} Boards={b} SocketsPerBoard={s} CoresPerSocket={co} ThreadsPerCore={t}"
            )
        }
        _ => format!("CPUs={cpus}"),
    }
}

/// The local cluster's slurm.conf: one node (this machine, reached on 127.0.0.1), one
/// default partition, cores as the consumable (so one-CPU tasks share the node), no
/// cgroups, no accounting; state, spool, pid files and logs under `state`.
fn conf_text(host: &str, cpu_layout: &str, mem_mb: u64, state: &Path) -> String {
    let s = state.display();
    format!(
        "{MARKER} (state in {s})
ClusterName=celeb
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={s}/ctld
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=200000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName={host} NodeAddr=127.0.0.1 {cpu_layout} RealMemory={mem_mb} State=UNKNOWN
PartitionName=local Nodes={host} Default=YES MaxTime=INFINITE State=UP
"
    )
}

/// The pid in `file` when that process is alive and is `name`.
fn running(file: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == name).then_some(pid)
}

/// Starts a daemon that forks itself away; its own output (before it detaches) goes to
/// `log`, shown when it fails.
fn start_daemon(cmd: &mut Command, log: &Path) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let out = std::fs::File::create(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}): {}",
            show(cmd),
            std::fs::read_to_string(log).unwrap_or_default().trim()
        );
    }
    Ok(())
}

/// Runs a small command, silent unless it fails.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            show(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn munge_works() -> bool {
    Command::new("munge")
        .arg("-n")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// munged running as `munge` with a key only it reads (made when there is none).
fn munge_up(state: &Path) -> Result<()> {
    if munge_works() {
        return Ok(());
    }
    let key = Path::new("/etc/munge/munge.key");
    if !key.exists() {
        let mut bytes = vec![0u8; 1024];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        std::fs::create_dir_all("/etc/munge")?;
        std::fs::write(key, &bytes)?;
        eprintln!("slurm: made a munge key, {}", key.display());
    }
    for (dir, mode) in [
        ("/etc/munge", "700"),
        ("/run/munge", "755"),
        ("/var/lib/munge", "700"),
        ("/var/log/munge", "700"),
    ] {
        std::fs::create_dir_all(dir)?;
        quiet(Command::new("chown").args(["munge:munge", dir]))?;
        quiet(Command::new("chmod").args([mode, dir]))?;
    }
    quiet(Command::new("chown").args(["munge:munge", "/etc/munge/munge.key"]))?;
    quiet(Command::new("chmod").args(["400", "/etc/munge/munge.key"]))?;
    start_daemon(
        Command::new("runuser").args(["-u", "munge", "--", "/usr/sbin/munged"]),
        &state.join("log/munged.start.log"),
    )?;
    std::fs::write(state.join("munged.ours"), "")?;
    for _ in 0..50 {
        if munge_works() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("munged started but `munge -n` still fails; see /var/log/munge/munged.log")
}

/// The node's state as `sinfo` says it (`idle`, `mixed`, `down*`, ...).
fn node_state() -> String {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn ready(state: &str) -> bool {
    matches!(state, "idle" | "mixed" | "allocated" | "completing")
}

fn log_tails(state: &Path) -> String {
    let mut s = String::new();
    for f in [
        "slurmctld.log",
        "slurmd.log",
        "slurmctld.start.log",
        "slurmd.start.log",
    ] {
        let p = state.join("log").join(f);
        if let Ok(text) = std::fs::read_to_string(&p) {
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!(
                "\n--- {} (last lines)\n{}",
                p.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
    }
    s
}

/// `slurm up`: munge, the config, slurmctld and slurmd, then waits for the node to be idle.
/// Again on a running cluster: nothing (a changed config restarts the daemons).
pub fn up(state: &Path, install: bool) -> Result<()> {
    let t = Instant::now();
    if !is_root() {
        bail!("slurm up runs munged, slurmctld and slurmd and writes {CONF}: run it as root");
    }
    crate::deps::ensure_slurm(install)?;
    for d in ["ctld", "spool", "log"] {
        std::fs::create_dir_all(state.join(d))?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slurmd_c = Command::new("slurmd")
        .arg("-C")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_mb(&m))
        .context("no MemTotal in /proc/meminfo")?;
    let host = hostname();
    let text = conf_text(&host, &cpu_layout(cpus, &slurmd_c), mem * 9 / 10, state);
    let old = std::fs::read_to_string(CONF).ok();
    if let Some(old) = &old {
        if !old.starts_with(MARKER) {
            bail!("{CONF} was not written by `cargo xtask slurm up`: this machine has its own Slurm set-up; use it as it is (`cargo xtask pipeline --slurm`), or move that file away");
        }
    }
    let ctld_pid = state.join("slurmctld.pid");
    let slurmd_pid = state.join("slurmd.pid");
    if old.as_deref() != Some(text.as_str()) {
        if running(&ctld_pid, "slurmctld").is_some() || running(&slurmd_pid, "slurmd").is_some() {
            eprintln!("slurm: the configuration changed; restarting the daemons");
            stop_daemons(state)?;
        }
        std::fs::create_dir_all("/etc/slurm")?;
        std::fs::write(CONF, &text)?;
        eprintln!("slurm: wrote {CONF}");
    }
    munge_up(state)?;
    let log = state.join("log");
    if running(&ctld_pid, "slurmctld").is_none() {
        start_daemon(
            &mut Command::new("slurmctld"),
            &log.join("slurmctld.start.log"),
        )?;
    }
    if running(&slurmd_pid, "slurmd").is_none() {
        start_daemon(&mut Command::new("slurmd"), &log.join("slurmd.start.log"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = false;
    loop {
        let st = node_state();
        if ready(&st) {
            break;
        }
        if !resumed && (st.starts_with("down") || st.starts_with("drain")) && !st.ends_with('*') {
            // A node left down or drained by an earlier run: back to service.
            let _ = Command::new("scontrol")
                .args(["update", &format!("NodeName={host}"), "State=RESUME"])
                .status();
            resumed = true;
        }
        if Instant::now() > deadline {
            bail!(
                "the local Slurm node is not idle after 30 s (sinfo says `{st}`){}",
                log_tails(state)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "slurm: up in {:.1} s: node {host} ({}, {} MB), partition local; config {CONF}, logs in {}",
        t.elapsed().as_secs_f64(),
        cpu_layout(cpus, &slurmd_c),
        mem * 9 / 10,
        log.display()
    );
    Ok(())
}

/// Stops slurmctld and slurmd (`scontrol shutdown`, then their pids).
fn stop_daemons(state: &Path) -> Result<()> {
    let daemons = [
        (state.join("slurmctld.pid"), "slurmctld"),
        (state.join("slurmd.pid"), "slurmd"),
    ];
    if daemons.iter().all(|(f, n)| running(f, n).is_none()) {
        return Ok(());
    }
    let _ = Command::new("scontrol")
        .arg("shutdown")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    for i in 0..100 {
        if daemons.iter().all(|(f, n)| running(f, n).is_none()) {
            return Ok(());
        }
        if i == 50 {
            for (f, n) in &daemons {
                if let Some(pid) = running(f, n) {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("slurmctld or slurmd still runs after `scontrol shutdown` and SIGTERM")
}

/// `slurm down`: the daemons `up` started stop (munged too when `up` started it).
pub fn down(state: &Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(CONF) {
        if !text.starts_with(MARKER) {
            bail!("{CONF} was not written by `cargo xtask slurm up`: not stopping this machine's Slurm");
        }
    }
    stop_daemons(state)?;
    let ours = state.join("munged.ours");
    if ours.exists() {
        if let Some(pid) = running(Path::new("/run/munge/munged.pid"), "munged") {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        std::fs::remove_file(ours)?;
    }
    println!("slurm: down");
    Ok(())
}

fn cluster_up(state: &Path) -> bool {
    running(&state.join("slurmctld.pid"), "slurmctld").is_some()
        && running(&state.join("slurmd.pid"), "slurmd").is_some()
}

// ---------------------------------------------------------------------------------------
// `slurm test`

const TEST_SHARDS: usize = 4;

/// The test's photo folder: `people` of msceleb-samples, `photos` photos of each, in
/// shards of `shard_size` photos. CI's default (3 x 60, 32) makes 8 shards in seconds.
#[derive(Debug, Clone)]
pub struct TestSize {
    pub people: usize,
    pub photos: usize,
    pub shard_size: usize,
}

impl TestSize {
    fn parse(args: &[String]) -> Result<TestSize> {
        let count = |flag: &str, default: usize| -> Result<usize> {
            match flag_value(args, flag) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => bail!("{flag} {v}: expected a whole number above 0"),
                },
            }
        };
        Ok(TestSize {
            people: count("--people", 3)?,
            photos: count("--photos", 60)?,
            shard_size: count("--shard-size", 32)?,
        })
    }
}

/// The first `people` folders of `data` (by name), the first `photos` photos of each,
/// linked into `dest` (made anew).
fn sample_photos(data: &Path, dest: &Path, people: usize, photos: usize) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    let sorted = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    };
    for person in sorted(data)?
        .into_iter()
        .filter(|p| p.is_dir())
        .take(people)
    {
        let to = dest.join(person.file_name().expect("a folder name"));
        std::fs::create_dir_all(&to)?;
        for photo in sorted(&person)?
            .into_iter()
            .filter(|p| p.is_file())
            .take(photos)
        {
            std::os::unix::fs::symlink(
                std::fs::canonicalize(&photo)?,
                to.join(photo.file_name().expect("a file name")),
            )?;
        }
    }
    Ok(())
}

/// The test's two stages into `out`, as the pipeline runs them (with `--shard-size`).
fn test_stages(
    shared: &Path,
    photos: &Path,
    out: &Path,
    cache: &Path,
    shard_size: usize,
) -> Vec<(String, Vec<String>)> {
    let s = |p: &Path| p.display().to_string();
    let faces = out.join("faces.safetensors");
    vec![
        (
            "preprocess".into(),
            vec![
                s(&bin("preprocess")),
                "--skip-if-fresh".into(),
                "--device".into(),
                "cpu".into(),
                "--input".into(),
                s(photos),
                "--output".into(),
                s(&faces),
                "--cnn-model".into(),
                s(&shared.join("models/dlib/mmod_human_face_detector.dat")),
                "--shard-size".into(),
                shard_size.to_string(),
            ],
        ),
        (
            "bottlenecks-face".into(),
            vec![
                s(&bin("inception-bottleneck")),
                "--skip-if-fresh".into(),
                "--faces".into(),
                s(&faces),
                "--output".into(),
                s(&out.join("bottlenecks-face.safetensors")),
                "--device".into(),
                "cpu".into(),
                "--cache-dir".into(),
                s(cache),
                "--teacher".into(),
                s(&shared.join("models/dlib/dlib_face_recognition_resnet_model_v1.dat")),
                "--views".into(),
                "4".into(),
                "--photos".into(),
                s(photos),
            ],
        ),
    ]
}

fn command(cmd: &[String]) -> Command {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    c
}

fn secs(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

/// `slurm test`: up (when it is not), a small photo folder, preprocess and the face
/// teacher in one process and as Slurm arrays + merges, then: the merged artifacts are up
/// to date for a one-process run (what the pipeline's last job relies on), and both runs
/// wrote the same files. Leaves the cluster as it found it.
pub fn test(state: &Path, install: bool, size: &TestSize) -> Result<()> {
    let was_up = cluster_up(state);
    let t = Instant::now();
    up(state, install)?;
    let up_s = t.elapsed().as_secs_f64();
    let r = test_on_cluster(up_s, size);
    if !was_up {
        if let Err(e) = down(state) {
            eprintln!("slurm: could not stop the test's cluster: {e:#}");
        }
    }
    r
}

fn test_on_cluster(up_s: f64, size: &TestSize) -> Result<()> {
    let shared = shared_dir().context(
        "../shared not found (or CELEB_SHARED unset): the Slurm test needs msceleb-samples and dlib's models",
    )?;
    // Incremental: after CI's test build, nothing to do.
    crate::pipeline::build_stages(false)?;
    // A build beside the test that replaced a stage binary halfway would show up as
    // differences (each artifact records its producer's digest): seen and named instead.
    let stamp = || -> Vec<Option<(u64, SystemTime)>> {
        ["preprocess", "inception-bottleneck"]
            .map(|b| {
                let m = std::fs::metadata(bin(b)).ok()?;
                Some((m.len(), m.modified().ok()?))
            })
            .to_vec()
    };
    let binaries = stamp();
    let root = std::env::current_dir()?;
    let base = PathBuf::from("target/slurm-test");
    let photos = base.join("photos");
    sample_photos(
        &shared.join("data/msceleb-samples"),
        &photos,
        size.people,
        size.photos,
    )?;
    let (one, array) = (base.join("one"), base.join("array"));
    // One cache path for both runs (the teacher's config records it), emptied before each.
    let cache = base.join("bottleneck-cache");
    for d in [&one, &array, &cache] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    std::fs::create_dir_all(&one)?;
    std::fs::create_dir_all(&array)?;

    let mut one_s = Vec::new();
    for (name, cmd) in test_stages(&shared, &photos, &one, &cache, size.shard_size) {
        let t = Instant::now();
        run_capture(&mut command(&cmd)).with_context(|| format!("one process: {name}"))?;
        one_s.push(t.elapsed().as_secs_f64());
    }

    std::fs::remove_dir_all(&cache)?;
    let b = Batch::new(&root, &array.join("slurm"), None, false, 1);
    b.prepare()?;
    let stages = test_stages(&shared, &photos, &array, &cache, size.shard_size);
    let start = SystemTime::now();
    let (pre, pre_merge) = b.submit_sharded(&stages[0].0, &stages[0].1, TEST_SHARDS, &[])?;
    let (teach, teach_merge) = b.submit_sharded(
        &stages[1].0,
        &stages[1].1,
        TEST_SHARDS,
        std::slice::from_ref(&pre_merge.id),
    )?;
    let jobs = [pre, pre_merge.clone(), teach, teach_merge.clone()];
    print_jobs(&b, &jobs);
    let done = wait(&b, &jobs, Duration::from_millis(500))?;
    let pre_end = done[&pre_merge.name];
    let array_s = [secs(start, pre_end), secs(pre_end, done[&teach_merge.name])];

    // First the outputs as the array left them; then each stage once more without
    // --shard, as the pipeline's last job runs it: it must find its output up to date.
    let mut diffs = compare_dirs(&root, &one, &array)?;
    for (name, cmd) in &stages {
        let out = run_capture(&mut command(cmd))?;
        if !out.contains("up to date, skipped") {
            diffs.push(format!("{name} without --shard did not find the merged output up to date (the pipeline's train/eval job would make it again)"));
        }
    }
    println!("\nslurm test: wall time (s)        one process   {TEST_SHARDS} array tasks + merge");
    for (i, name) in ["preprocess", "face teacher (4 views)"].iter().enumerate() {
        println!("  {name:<30} {:>11.1} {:>21.1}", one_s[i], array_s[i]);
    }
    println!(
        "  {:<30} {:>11.1} {:>21.1}",
        "total",
        one_s.iter().sum::<f64>(),
        array_s.iter().sum::<f64>()
    );
    println!(
        "  (cluster up: {up_s:.1} s; array times from submission, Slurm's scheduling included)"
    );
    failures_are_reported(&root)?;
    if stamp() != binaries {
        bail!("target/release/preprocess or inception-bottleneck was rebuilt while the test ran (a build beside it?): the runs cannot be compared; run it again");
    }
    if !diffs.is_empty() {
        bail!(
            "one process ({}) and the Slurm array ({}) disagree:\n  {}",
            one.display(),
            array.display(),
            diffs.join("\n  ")
        );
    }
    println!(
        "slurm test: the outputs are identical (shards byte for byte, indexes and side files), and up to date for a one-process run"
    );
    Ok(())
}

/// The way a failure is seen: task 1 of a 2-task array exits with 3; waiting must fail
/// naming that task, its exit code and its log, and cancel the merge that depended on it.
fn failures_are_reported(root: &Path) -> Result<()> {
    let b = Batch::new(
        root,
        Path::new("target/slurm-test/failing/slurm"),
        None,
        false,
        1,
    );
    b.prepare()?;
    let cmd: Vec<String> = ["sh", "-c", "case $2 in 1/*) exit 3;; esac", "sh"]
        .map(String::from)
        .to_vec();
    let (array, merge) = b.submit_sharded("failing", &cmd, 2, &[])?;
    let jobs = [array.clone(), merge];
    let err = match wait(&b, &jobs, Duration::from_millis(300)) {
        Ok(_) => bail!("a task that exited with 3 was not reported as failed"),
        Err(e) => format!("{e:#}"),
    };
    let log = b.log_file(&array, Some(1));
    let want = format!(
        "failing task 1 (Slurm job {}_1) failed with exit code 3; its log: {}",
        array.id,
        log.display()
    );
    if err != want || !log.is_file() {
        bail!("a failed task was reported as `{err}`, expected `{want}` (and that log file)");
    }
    std::thread::sleep(Duration::from_millis(500));
    if !queued(&jobs)?.is_empty() {
        bail!("the jobs after a failed task were not cancelled");
    }
    println!("slurm test: a failed array task is reported with its exit code and log, and the jobs after it cancelled");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Comparing two runs' outputs

/// Every file under `dir` (relative paths), leaving out `slurm/` (scripts and logs).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
            if rel == Path::new("slurm") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A safetensors file: its metadata and each tensor's dtype, shape and bytes.
struct Tensors<'a> {
    metadata: BTreeMap<String, String>,
    tensors: BTreeMap<String, (String, Vec<u64>, &'a [u8])>,
}

fn parse_safetensors(bytes: &[u8]) -> Result<Tensors<'_>> {
    let n =
        u64::from_le_bytes(bytes.get(..8).context("shorter than 8 bytes")?.try_into()?) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(bytes.get(8..8 + n).context("header past the end")?)?;
    let data = &bytes[8 + n..];
    let mut t = Tensors {
        metadata: BTreeMap::new(),
        tensors: BTreeMap::new(),
    };
    for (k, v) in header {
        if k == "__metadata__" {
            for (mk, mv) in v.as_object().into_iter().flatten() {
                t.metadata
                    .insert(mk.clone(), mv.as_str().unwrap_or_default().to_string());
            }
            continue;
        }
        let offsets: Vec<usize> = v["data_offsets"]
            .as_array()
            .context("no data_offsets")?
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as usize))
            .collect();
        let (a, b) = (offsets[0], offsets[1]);
        t.tensors.insert(
            k,
            (
                v["dtype"].as_str().unwrap_or_default().to_string(),
                v["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_u64())
                    .collect(),
                data.get(a..b).context("tensor past the end")?,
            ),
        );
    }
    Ok(t)
}

/// How two tensors' bytes differ: the count of differing elements, and for f32 the largest
/// absolute difference.
fn tensor_diff(dtype: &str, a: &[u8], b: &[u8]) -> String {
    if dtype == "F32" && a.len() == b.len() {
        let f = |x: &[u8]| {
            x.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect::<Vec<_>>()
        };
        let (fa, fb) = (f(a), f(b));
        let differ = fa
            .iter()
            .zip(&fb)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        let max = fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        return format!("{differ} of {} values differ, max |diff| {max:e}", fa.len());
    }
    let differ = a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len());
    format!("{differ} of {} bytes differ", a.len().max(b.len()))
}

/// The differences between two safetensors files, with `one`'s folder written as `two`'s
/// in the metadata (an index may name its own folder); empty when they hold the same.
fn safetensors_diff(a: &[u8], b: &[u8], paths: &[(String, String)]) -> Result<Vec<String>> {
    let (ta, tb) = (parse_safetensors(a)?, parse_safetensors(b)?);
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        ta.tensors.keys().chain(tb.tensors.keys()).collect();
    for name in names {
        match (ta.tensors.get(name), tb.tensors.get(name)) {
            (Some(x), Some(y)) if x.0 != y.0 || x.1 != y.1 => out.push(format!(
                "tensor `{name}`: {} {:?} vs {} {:?}",
                x.0, x.1, y.0, y.1
            )),
            (Some(x), Some(y)) if x.2 != y.2 => {
                out.push(format!("tensor `{name}`: {}", tensor_diff(&x.0, x.2, y.2)))
            }
            (Some(_), Some(_)) => {}
            (Some(_), None) => out.push(format!("tensor `{name}` only in one process's")),
            (None, _) => out.push(format!("tensor `{name}` only in the array's")),
        }
    }
    let keys: std::collections::BTreeSet<&String> =
        ta.metadata.keys().chain(tb.metadata.keys()).collect();
    for k in keys {
        let ma = ta.metadata.get(k).map(|s| normalise(s, paths));
        let mb = tb.metadata.get(k).cloned();
        if ma == mb {
            continue;
        }
        match (
            ma.as_deref().map(serde_json::from_str::<Value>),
            mb.as_deref().map(serde_json::from_str::<Value>),
        ) {
            (Some(Ok(x)), Some(Ok(y))) => out.extend(
                json_diff(&x, &y, "")
                    .into_iter()
                    .map(|d| format!("metadata {k}{d}")),
            ),
            _ => out.push(format!("metadata `{k}` differs")),
        }
    }
    Ok(out)
}

fn normalise(s: &str, paths: &[(String, String)]) -> String {
    paths
        .iter()
        .fold(s.to_string(), |s, (a, b)| s.replace(a, b))
}

/// Where two JSON values differ (`.extra.class_names: ... vs ...`), at most a few.
fn json_diff(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    json_diff(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{at}.{k}"),
                    )
                })
                .take(5)
                .collect()
        }
        _ if a == b => vec![],
        _ => {
            let short = |v: &Value| {
                let s = v.to_string();
                if s.chars().count() > 120 {
                    format!("{}...", s.chars().take(120).collect::<String>())
                } else {
                    s
                }
            };
            vec![format!("{at}: {} vs {}", short(a), short(b))]
        }
    }
}

/// Every difference between the outputs of the one-process run and the array's: files only
/// in one of them, and files whose bytes differ (safetensors tensor by tensor, JSON key by
/// key; the run's own folder name aside). Empty when they are the same.
fn compare_dirs(root: &Path, one: &Path, array: &Path) -> Result<Vec<String>> {
    let paths = vec![
        (
            root.join(one).display().to_string(),
            root.join(array).display().to_string(),
        ),
        (one.display().to_string(), array.display().to_string()),
    ];
    let (fa, fb) = (files_under(one)?, files_under(array)?);
    let mut diffs = Vec::new();
    for f in fa.iter().filter(|f| !fb.contains(f)) {
        diffs.push(format!("{}: only in the one-process run", f.display()));
    }
    for f in fb.iter().filter(|f| !fa.contains(f)) {
        diffs.push(format!("{}: only in the array run", f.display()));
    }
    let mut same = 0;
    for f in fa.iter().filter(|f| fb.contains(f)) {
        let (a, b) = (std::fs::read(one.join(f))?, std::fs::read(array.join(f))?);
        if a == b {
            same += 1;
            continue;
        }
        let name = f.display().to_string();
        let found = match f.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => safetensors_diff(&a, &b, &paths)?,
            Some("json") => {
                let x: Value =
                    serde_json::from_str(&normalise(&String::from_utf8_lossy(&a), &paths))?;
                let y: Value = serde_json::from_slice(&b)?;
                json_diff(&x, &y, "")
            }
            _ => vec![format!("{}", tensor_diff("", &a, &b))],
        };
        if found.is_empty() {
            println!("slurm test: {name}: the same but for the run's own folder name");
        }
        diffs.extend(found.into_iter().map(|d| format!("{name}: {d}")));
    }
    println!(
        "slurm test: compared {} files: {same} byte for byte equal, {} differ",
        fa.len().max(fb.len()),
        diffs.len()
    );
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn batch(gpu: bool) -> Batch {
        Batch::new(
            Path::new("/w"),
            Path::new("out/slurm"),
            gpu.then(|| "gpu".to_string()),
            gpu,
            2,
        )
    }

    const CMD: &[&str] = &[
        "target/release/preprocess",
        "--skip-if-fresh",
        "--input",
        "my photos",
        "--output",
        "out/faces.safetensors",
    ];

    #[test]
    fn an_array_task_runs_its_shard_of_the_stage() {
        let s = batch(false).script("preprocess", &args(CMD), Kind::Array(4), 2, &[]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!/bin/bash");
        for d in [
            "#SBATCH --job-name=preprocess",
            "#SBATCH --array=0-3",
            "#SBATCH --output=/w/out/slurm/logs/%x-%A_%a.out",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --chdir=/w",
        ] {
            assert!(lines.contains(&d), "{d} in\n{s}");
        }
        assert!(!s.contains("--dependency") && !s.contains("--gres") && !s.contains("--partition"));
        assert!(lines.contains(
            &"target/release/preprocess --skip-if-fresh --input 'my photos' --output out/faces.safetensors --shard \"$SLURM_ARRAY_TASK_ID/4\""
        ), "{s}");
        assert!(s.contains(
            "\n{ rc=$?; set +x; } 2>/dev/null\necho \"$rc\" > /w/out/slurm/status/preprocess-\"$SLURM_ARRAY_TASK_ID\".rc\nexit \"$rc\"\n"
        ));
        // Directives come before the first command, or sbatch ignores them.
        let first_cmd = lines.iter().position(|l| !l.starts_with('#')).unwrap();
        assert!(lines[first_cmd..].iter().all(|l| !l.starts_with("#SBATCH")));
    }

    #[test]
    fn a_merge_runs_after_its_array_with_the_same_flags() {
        let s = batch(false).script(
            "preprocess-merge",
            &args(CMD),
            Kind::Merge,
            1,
            &["17".into()],
        );
        assert!(s.contains("#SBATCH --dependency=afterok:17\n"));
        assert!(s.contains("#SBATCH --output=/w/out/slurm/logs/%x-%j.out\n"));
        assert!(!s.contains("--array") && !s.contains("--shard"));
        assert!(
            s.contains(" --output out/faces.safetensors --merge\n"),
            "{s}"
        );
        assert!(s.contains("> /w/out/slurm/status/preprocess-merge.rc\n"));
        let s = batch(false).script(
            "pipeline",
            &args(&["cargo", "xtask", "pipeline"]),
            Kind::Single,
            2,
            &["3".into(), "5".into()],
        );
        assert!(s.contains("#SBATCH --dependency=afterok:3:5\n"));
        assert!(s.contains("\ncargo xtask pipeline\n"));
    }

    #[test]
    fn a_gpu_job_asks_for_one_on_its_partition() {
        let s = batch(true).script(
            "bottlenecks-face",
            &args(CMD),
            Kind::Array(2),
            2,
            &["9".into()],
        );
        assert!(s.contains("#SBATCH --gres=gpu:1\n#SBATCH --dependency=afterok:9\n"));
        assert!(s.contains("#SBATCH --partition=gpu\n"));
        assert!(s.contains("#SBATCH --array=0-1\n"));
        assert!(s.contains("--shard \"$SLURM_ARRAY_TASK_ID/2\""));
    }

    #[test]
    fn options_and_the_arguments_the_last_job_gets() {
        assert_eq!(SlurmOptions::parse(&args(&["--data", "d"])).unwrap(), None);
        let err = |a: &[&str]| format!("{:#}", SlurmOptions::parse(&args(a)).unwrap_err());
        assert_eq!(err(&["--shards", "3"]), "--shards needs --slurm");
        assert_eq!(
            err(&["--slurm", "--shards", "0"]),
            "--shards 0: expected a whole number >= 1"
        );
        assert!(err(&["--slurm", "--slurm-gpu"]).starts_with("--slurm-gpu needs --features cuda"));
        assert!(err(&[
            "--slurm",
            "--slurm-gpu",
            "--features",
            "cuda",
            "--device",
            "cpu"
        ])
        .contains("--device cuda"));
        let o = SlurmOptions::parse(&args(&[
            "--data",
            "d",
            "--slurm",
            "--shards",
            "8",
            "--install-deps",
            "--add",
            "g",
            "--no-wait",
            "--slurm-partition",
            "p",
            "--seed",
            "7",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((o.shards, o.cpus, o.wait, o.gpu), (8, 1, false, false));
        assert_eq!(o.partition.as_deref(), Some("p"));
        assert_eq!(o.forward, args(&["--data", "d", "--seed", "7"]));
        let o = SlurmOptions::parse(&args(&["--slurm", "--slurm-gpu", "--features", "cuda"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.shards, DEFAULT_SHARDS);
        assert_eq!(o.forward, args(&["--features", "cuda", "--device", "cuda"]));
        assert_eq!(SlurmOptions::arity("--shards"), Some(2));
        assert_eq!(SlurmOptions::arity("--slurm"), Some(1));
        assert_eq!(SlurmOptions::arity("--data"), None);
    }

    #[test]
    fn quoting_names_and_slurm_answers() {
        assert_eq!(quote("a/b-c.d"), "a/b-c.d");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(job_name("bottlenecks face"), "bottlenecks-face");
        assert_eq!(parse_job_id("42\n").unwrap(), "42");
        assert_eq!(parse_job_id("42;cluster\n").unwrap(), "42");
        assert!(parse_job_id("Submitted batch job 42").is_err());
        let q = parse_squeue("5|1|RUNNING|None\n9|N/A|PENDING|DependencyNeverSatisfied\n");
        assert_eq!(q[0].task, Some(1));
        assert_eq!((q[1].job.as_str(), q[1].task), ("9", None));
        assert_eq!(q[1].reason, "DependencyNeverSatisfied");
    }

    #[test]
    fn the_local_clusters_config() {
        let c = "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105\nUpTime=0-03:21:41\n";
        assert_eq!(
            cpu_layout(2, c),
            "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1"
        );
        assert_eq!(cpu_layout(1, c), "CPUs=1");
        assert_eq!(cpu_layout(4, ""), "CPUs=4");
        assert_eq!(
            mem_total_mb("MemTotal:       24683784 kB\nMemFree: 1 kB\n"),
            Some(24105)
        );
        let t = conf_text("vm", "CPUs=2", 21000, Path::new("/s"));
        assert!(t.starts_with(MARKER));
        for l in [
            "SlurmctldHost=vm(127.0.0.1)",
            "NodeName=vm NodeAddr=127.0.0.1 CPUs=2 RealMemory=21000 State=UNKNOWN",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SlurmUser=root",
            "StateSaveLocation=/s/ctld",
            "PartitionName=local Nodes=vm Default=YES MaxTime=INFINITE State=UP",
        ] {
            assert!(t.lines().any(|x| x == l), "{l}");
        }
    }

    #[test]
    fn safetensors_differences_are_named() {
        fn file(meta: &str, vals: &[f32]) -> Vec<u8> {
            let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            let header = serde_json::json!({
                "__metadata__": {"celeb_transfer": meta},
                "features": {"dtype": "F32", "shape": [vals.len()], "data_offsets": [0, data.len()]},
            })
            .to_string();
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend(header.as_bytes());
            out.extend(data);
            out
        }
        let paths = vec![("t/one".to_string(), "t/array".to_string())];
        let a = file(r#"{"cache":"t/one/c","n":1}"#, &[1.0, 2.0]);
        let b = file(r#"{"cache":"t/array/c","n":1}"#, &[1.0, 2.0]);
        assert!(safetensors_diff(&a, &b, &paths).unwrap().is_empty());
        let c = file(r#"{"cache":"t/array/c","n":2}"#, &[1.0, 2.5]);
        let d = safetensors_diff(&a, &c, &paths).unwrap();
        assert_eq!(
            d,
            [
                "tensor `features`: 1 of 2 values differ, max |diff| 5e-1",
                "metadata celeb_transfer.n: 1 vs 2"
            ]
        );
    }
}
