//! `cargo xtask bench scale`: what the stages cost in memory, time and storage as the data
//! grows (#26): the study's photos replicated 1x, 4x, 16x, every stage run as a child
//! process and measured, and a projection to 100,000 and 10,000,000 photos.
//!
//! Replicas: copy 0 of a photo is the original (a hard link); copies 1..k-1 are the same
//! photo with a small deterministic jitter (0-3 px cropped off each border, brightness
//! x0.97-1.03, re-encoded as JPEG quality 92) named `<stem>~r{n}.jpg`: distinct files, the
//! same face. The `image` crate does it (neither PIL nor ImageMagick is a given here).
//!
//! Peak RSS: `wait4`'s `ru_maxrss` of the child (kernel-exact, the whole run up to its
//! exit). The child is forked (not vfork/posix_spawn, where the parent's own peak would
//! count), so the figure has a floor of xtask's resident set at the fork, recorded as
//! `floor_kib` (a few MiB). `/proc/<pid>/status` VmHWM polled every 50 ms is kept beside
//! it as a cross-check (`polled_hwm_kib`; it can miss the last 50 ms).

use crate::pipeline::bin;
use crate::util::{flag_value, has_flag, shared_dir, show};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Threads every stage gets (`RAYON_NUM_THREADS` and `--jobs`), as in the other benches.
const THREADS: usize = 2;
pub const STAGES: &[&str] = &["preprocess", "teacher", "train", "eval"];
/// The stages the aim is about (eval is measured, not held to it).
const AIM_STAGES: &[&str] = &["preprocess", "teacher", "train"];
/// The aim: peak RSS grows less than this from the smallest to the largest factor, apart
/// from the per-face feature rows.
const AIM_GROWTH_PERCENT: f64 = 10.0;
const JPEG_QUALITY: u8 = 92;
/// Photo counts the projection is made for.
const PROJECT_PHOTOS: &[f64] = &[1e5, 1e7];
const PROJECT_NODES: &[f64] = &[1.0, 10.0, 100.0];
/// A GPU node's speed-up over this 2-core node, by stage. Nothing on a GPU is measured in
/// the README: these are assumptions, printed as such (`--gpu-speedup` changes them).
/// preprocess: decoding, the Haar cascade and the landmarks stay on the CPU, only the CNN
/// detector moves; teacher: a ResNet forward pass, batch-bound on a GPU; train: a small
/// CNN; eval: t-SNE runs on the CPU.
const GPU_SPEEDUP: &[(&str, f64)] = &[
    ("preprocess", 3.0),
    ("teacher", 20.0),
    ("train", 10.0),
    ("eval", 1.0),
];

pub struct Options {
    factors: Vec<u32>,
    stages: Vec<String>,
    out: PathBuf,
    epochs: u32,
    project: bool,
    build: bool,
    /// Where the stage binaries are taken from (target/release, built first, by default).
    bins: Option<PathBuf>,
    gpu_speedup: BTreeMap<String, f64>,
}

const VALUE_FLAGS: &[&str] = &[
    "--factors",
    "--stages",
    "--out",
    "--epochs",
    "--gpu-speedup",
    "--bins",
];
const BOOL_FLAGS: &[&str] = &["--project", "--no-build"];

impl Options {
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if VALUE_FLAGS.contains(&a) {
                i += 2;
            } else if BOOL_FLAGS.contains(&a) {
                i += 1;
            } else {
                bail!(
                    "bench scale: unknown argument `{a}` (flags: {} {})",
                    VALUE_FLAGS.join(" "),
                    BOOL_FLAGS.join(" ")
                );
            }
        }
        let factors = flag_value(args, "--factors").unwrap_or_else(|| "1,4,16".into());
        let mut factors: Vec<u32> = factors
            .split(',')
            .map(|f| match f.trim().parse::<u32>() {
                Ok(k) if k >= 1 => Ok(k),
                _ => bail!("--factors: `{f}` is not a whole number >= 1"),
            })
            .collect::<Result<_>>()?;
        factors.sort_unstable();
        factors.dedup();
        let stages: Vec<String> = flag_value(args, "--stages")
            .unwrap_or_else(|| STAGES.join(","))
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        if let Some(bad) = stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
            bail!(
                "--stages: unknown stage `{bad}` (known: {})",
                STAGES.join(",")
            );
        }
        let epochs = match flag_value(args, "--epochs") {
            Some(e) => e
                .parse()
                .ok()
                .filter(|&e: &u32| e >= 1)
                .with_context(|| format!("--epochs: `{e}` is not a whole number >= 1"))?,
            None => 3,
        };
        let mut gpu_speedup: BTreeMap<String, f64> = GPU_SPEEDUP
            .iter()
            .map(|(s, x)| (s.to_string(), *x))
            .collect();
        if let Some(list) = flag_value(args, "--gpu-speedup") {
            for item in list.split(',') {
                let parsed = item
                    .split_once('=')
                    .and_then(|(s, x)| Some((s.trim(), x.trim().parse::<f64>().ok()?)));
                match parsed {
                    Some((s, x)) if STAGES.contains(&s) && x > 0.0 => {
                        gpu_speedup.insert(s.to_string(), x);
                    }
                    _ => bail!("--gpu-speedup: `{item}` is not STAGE=FACTOR (e.g. teacher=20)"),
                }
            }
        }
        Ok(Options {
            factors,
            stages: STAGES
                .iter()
                .filter(|s| stages.iter().any(|x| x == *s))
                .map(|s| s.to_string())
                .collect(),
            out: flag_value(args, "--out")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target/scale")),
            epochs,
            project: has_flag(args, "--project"),
            build: !has_flag(args, "--no-build") && !has_flag(args, "--bins"),
            bins: flag_value(args, "--bins").map(PathBuf::from),
            gpu_speedup,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Replicas

/// A copy's jitter: pixels cropped off each border, and a brightness factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub left: u32,
    pub top: u32,
    pub right: u32,
    pub bottom: u32,
    pub brightness: f32,
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The jitter of copy `copy` of the photo `key` (`<class>/<file>`): a function of the two
/// alone, so a replica folder is the same on every machine. At least one pixel is cropped.
pub fn jitter(key: &str, copy: u32) -> Jitter {
    let mut state = fnv1a(key) ^ splitmix64(copy as u64);
    let mut next = || {
        state = splitmix64(state);
        state
    };
    let mut crop = [0u32; 4];
    for c in &mut crop {
        *c = (next() % 4) as u32;
    }
    if crop == [0; 4] {
        crop[(next() % 4) as usize] = 1;
    }
    let unit = (next() >> 11) as f64 / (1u64 << 53) as f64;
    Jitter {
        left: crop[0],
        top: crop[1],
        right: crop[2],
        bottom: crop[3],
        brightness: (0.97 + 0.06 * unit) as f32,
    }
}

/// `<stem>~r{n}.jpg`.
pub fn copy_name(file: &str, copy: u32) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string());
    format!("{stem}~r{copy}.jpg")
}

/// A JPEG that stops before its end-of-image marker: copied as it is, so the copy is
/// rejected as truncated exactly as the original (re-encoding would fill it in).
fn jpeg_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The photo at `src`, oriented as its EXIF says (as preprocess reads it), jittered and
/// re-encoded. None when it cannot be decoded (then the copy is the file's bytes as they
/// are, so preprocess rejects it for the same reason).
fn jittered_jpeg(src: &Path, j: &Jitter) -> Option<Vec<u8>> {
    use image::{DynamicImage, ImageDecoder, ImageReader};
    let bytes = std::fs::read(src).ok()?;
    if !jpeg_complete(&bytes) {
        return None;
    }
    let mut dec = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    let orientation = dec
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).ok()?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    let (l, t, r, b) = if w > 16 && h > 16 {
        (j.left, j.top, j.right, j.bottom)
    } else {
        (0, 0, 0, 0)
    };
    let mut out = image::imageops::crop_imm(&rgb, l, t, w - l - r, h - t - b).to_image();
    for v in out.iter_mut() {
        *v = (*v as f32 * j.brightness).round().clamp(0.0, 255.0) as u8;
    }
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
        .encode_image(&out)
        .ok()?;
    Some(buf)
}

/// A replica folder: where, how many photos, how long it took (0 when it was cached).
struct Replica {
    dir: PathBuf,
    photos: u64,
    verbatim: u64,
    seconds: f64,
    cached: bool,
}

/// `<class>/<file>` of every photo under `root` (hidden entries skipped, as preprocess
/// skips them), sorted.
fn list_photos(root: &Path) -> Result<Vec<(String, String)>> {
    let visible = |e: &std::fs::DirEntry| !e.file_name().to_string_lossy().starts_with('.');
    let mut out = Vec::new();
    for class in std::fs::read_dir(root)
        .with_context(|| format!("{}", root.display()))?
        .flatten()
    {
        if !visible(&class) || !class.path().is_dir() {
            continue;
        }
        let cname = class.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(class.path())?.flatten() {
            if visible(&f) && f.path().is_file() {
                out.push((cname.clone(), f.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `<out>/photos-x{k}`: every photo of `source` k times. A folder with its marker
/// (`photos-x{k}.complete`, written last) is reused; a partial one is completed (each
/// file is written under a hidden name and renamed).
fn replicate(source: &Path, out: &Path, k: u32) -> Result<Replica> {
    let dir = out.join(format!("photos-x{k}"));
    let marker = out.join(format!("photos-x{k}.complete"));
    if let Ok(m) = crate::util::read_json(&marker) {
        if let Some(n) = m["photos"].as_u64() {
            return Ok(Replica {
                dir,
                photos: n,
                verbatim: m["verbatim"].as_u64().unwrap_or(0),
                seconds: 0.0,
                cached: true,
            });
        }
    }
    let t = Instant::now();
    let photos = list_photos(source)?;
    if photos.is_empty() {
        bail!("{}: no photos in class folders", source.display());
    }
    let mut jobs = Vec::new();
    for (class, file) in &photos {
        std::fs::create_dir_all(dir.join(class))?;
        for copy in 0..k {
            let name = if copy == 0 {
                file.clone()
            } else {
                copy_name(file, copy)
            };
            let dst = dir.join(class).join(&name);
            if !dst.exists() {
                jobs.push((class, file, copy, dst));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let verbatim = AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None::<anyhow::Error>);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((class, file, copy, dst)) = jobs.get(i) else {
                    break;
                };
                let src = source.join(class).join(file);
                let r = (|| -> Result<()> {
                    let tmp = dst.with_file_name(format!(".tmp-{}", copy_name(file, *copy)));
                    if *copy == 0 {
                        if std::fs::hard_link(&src, dst).is_err() {
                            std::fs::copy(&src, &tmp)?;
                            std::fs::rename(&tmp, dst)?;
                        }
                        return Ok(());
                    }
                    let key = format!("{class}/{file}");
                    let bytes = match jittered_jpeg(&src, &jitter(&key, *copy)) {
                        Some(b) => b,
                        None => {
                            verbatim.fetch_add(1, Ordering::Relaxed);
                            std::fs::read(&src)?
                        }
                    };
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, dst)?;
                    Ok(())
                })()
                .with_context(|| format!("replicating {}", src.display()));
                if let Err(e) = r {
                    *failed.lock().unwrap() = Some(e);
                    next.store(jobs.len(), Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    let n = photos.len() as u64 * k as u64;
    let verbatim = verbatim.into_inner() as u64;
    let seconds = t.elapsed().as_secs_f64();
    artifacts::write_json_atomic(
        &marker,
        &json!({"factor": k, "originals": photos.len(), "photos": n, "verbatim": verbatim,
                "seconds": seconds, "jpeg_quality": JPEG_QUALITY}),
    )?;
    Ok(Replica {
        dir,
        photos: n,
        verbatim,
        seconds,
        cached: false,
    })
}

// ---------------------------------------------------------------------------------------
// Measuring a child

/// What one child process used.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
    pub polled_hwm_kib: Option<u64>,
    pub floor_kib: u64,
    pub exit_code: Option<i32>,
}

/// A `kB` figure of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), when the process's `Name`
/// is `comm` (after its exec; before it, the fork is still xtask).
fn proc_status_kib(pid: &str, field: &str, comm: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if let Some(comm) = comm {
        let name = text.lines().find_map(|l| l.strip_prefix("Name:"))?.trim();
        if name != comm {
            return None;
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
}

/// Runs `cmd` to its end and measures it with `wait4`. The child's stdio is whatever
/// `cmd` says (the stages' go to log files).
pub fn measure(cmd: &mut Command) -> Result<Usage> {
    use std::os::unix::process::CommandExt;
    // A pre_exec hook makes std fork the child instead of vfork/posix_spawn: a vforked
    // child shares xtask's address space, and the kernel folds that space's high-water
    // mark into the child's ru_maxrss at exec. Forked, the floor is xtask's resident set.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    let comm: String = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let floor_kib = proc_status_kib("self", "VmRSS", None).unwrap_or(0);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    let pid = child.id() as libc::pid_t;
    let done = AtomicBool::new(false);
    let (status, ru, polled) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut best: Option<u64> = None;
            let p = pid.to_string();
            while !done.load(Ordering::Acquire) {
                if let Some(kib) = proc_status_kib(&p, "VmHWM", Some(&comm)) {
                    best = Some(best.map_or(kib, |b| b.max(kib)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            best
        });
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = loop {
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r == pid {
                break Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                break Err(e);
            }
        };
        done.store(true, Ordering::Release);
        let polled = poller.join().unwrap_or(None);
        r.map(|()| (status, ru, polled))
    })
    .context("wait4")?;
    // Reaped by wait4 above; dropping the handle neither waits nor kills.
    drop(child);
    Ok(Usage {
        wall_s: start.elapsed().as_secs_f64(),
        user_s: seconds(ru.ru_utime),
        sys_s: seconds(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
        polled_hwm_kib: polled,
        floor_kib,
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
    })
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().ok()));
            }
        }
    }
    out
}

/// Bytes and files that are new or changed in `after`.
fn written(
    before: &BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    after: &BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
) -> (u64, u64) {
    after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .fold((0, 0), |(b, n), (_, (len, _))| (b + len, n + 1))
}

/// The shape of tensor `name` in a safetensors file's header (None: no such tensor, or
/// not a safetensors file).
fn header_shape(file: &Path, name: &str) -> Option<Vec<u64>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 200_000_000 || len + 8 > f.metadata().ok()?.len() {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).ok()?;
    let doc: Value = serde_json::from_slice(&buf).ok()?;
    let shape = doc.get(name)?.get("shape")?.as_array()?;
    Some(shape.iter().filter_map(Value::as_u64).collect())
}

/// The first dimension of an artifact's tensor `name`, and the rest of its shape: from
/// the file itself, else (sharded) summed over the `*.safetensors` in a folder of that
/// name, in `<stem>.shards/`, or named `<stem>*.safetensors` beside it. Reads headers only.
fn tensor_shape(path: &Path, name: &str) -> Option<(u64, Vec<u64>)> {
    if let Some(shape) = path.is_file().then(|| header_shape(path, name)).flatten() {
        return Some((
            shape.first().copied().unwrap_or(0),
            shape.get(1..)?.to_vec(),
        ));
    }
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let parent = path.parent()?;
    let from_dir = |dir: &Path, prefix: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.starts_with(prefix) && f.ends_with(".safetensors") && e.path() != path
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    };
    let files = if path.is_dir() {
        from_dir(path, "")
    } else {
        let shards = from_dir(&parent.join(format!("{stem}.shards")), "");
        if shards.is_empty() {
            from_dir(parent, &stem)
        } else {
            shards
        }
    };
    let mut rows = 0;
    let mut rest = None;
    for f in files {
        if let Some(shape) = header_shape(&f, name) {
            rows += shape.first().copied().unwrap_or(0);
            rest = Some(shape.get(1..).unwrap_or(&[]).to_vec());
        }
    }
    rest.map(|r| (rows, r))
}

// ---------------------------------------------------------------------------------------
// The stages

/// Where one factor's stages read and write: one folder per stage under `x{k}/`, so a
/// stage's outputs are removed before it runs and its bytes are its own.
struct Paths {
    root: PathBuf,
    photos: PathBuf,
    faces: PathBuf,
    bottlenecks: PathBuf,
    cache: PathBuf,
    checkpoint: PathBuf,
    eval: PathBuf,
}

impl Paths {
    fn new(out: &Path, k: u32, photos: &Path) -> Paths {
        let root = out.join(format!("x{k}"));
        Paths {
            photos: photos.to_path_buf(),
            faces: root.join("preprocess/faces.safetensors"),
            bottlenecks: root.join("teacher/bottlenecks-face.safetensors"),
            cache: root.join("teacher/bottleneck-cache"),
            checkpoint: root.join("train/student-face-cosine.safetensors"),
            eval: root.join("eval/eval-face-cosine"),
            root,
        }
    }

    fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }
}

/// The models the stages need, from ../shared, and the folder of the stage binaries.
struct Models {
    cnn: PathBuf,
    face: PathBuf,
    bins: PathBuf,
}

/// The stage binaries, by the stage that runs them.
const BINARIES: &[&str] = &["preprocess", "inception-bottleneck", "train", "eval-tsne"];

/// Copies the stage binaries from `from` into `to` (a run measures one build even if
/// target/release is rebuilt meanwhile) and returns each one's `--version` and SHA-256.
fn snapshot_binaries(from: &Path, to: &Path) -> Result<Value> {
    std::fs::create_dir_all(to)?;
    let mut out = serde_json::Map::new();
    for b in BINARIES {
        let (src, dst) = (from.join(b), to.join(b));
        let tmp = to.join(format!(".{b}.tmp"));
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::rename(&tmp, &dst)?;
        let version = Command::new(&dst)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let modified = std::fs::metadata(&src)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let sha256 = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(std::fs::read(&dst)?);
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        out.insert(
            b.to_string(),
            json!({"from": src, "version": version, "modified_unix": modified, "sha256": sha256}),
        );
    }
    Ok(Value::Object(out))
}

/// The command of one stage (as the pipeline runs it, without `--skip-if-fresh`; the face
/// teacher with no views; cosine training for a fixed number of epochs).
fn stage_command(stage: &str, p: &Paths, m: &Models, epochs: u32) -> Command {
    let jobs = THREADS.to_string();
    let mut c;
    match stage {
        "preprocess" => {
            c = Command::new(m.bins.join("preprocess"));
            c.args(["--device", "cpu", "--summary", "json", "--jobs", &jobs])
                .arg("--input")
                .arg(&p.photos)
                .arg("--output")
                .arg(&p.faces)
                .arg("--cnn-model")
                .arg(&m.cnn);
        }
        "teacher" => {
            c = Command::new(m.bins.join("inception-bottleneck"));
            c.arg("--faces")
                .arg(&p.faces)
                .arg("--output")
                .arg(&p.bottlenecks)
                .arg("--teacher")
                .arg(&m.face)
                .args(["--views", "0", "--device", "cpu", "--jobs", &jobs])
                .arg("--cache-dir")
                .arg(&p.cache);
        }
        "train" => {
            c = Command::new(m.bins.join("train"));
            c.args([
                "--cosine", "--seed", "42", "--device", "cpu", "--jobs", &jobs,
            ])
            .args(["--epochs", &epochs.to_string(), "--min-steps", "0"])
            .arg("--faces")
            .arg(&p.faces)
            .arg("--bottlenecks")
            .arg(&p.bottlenecks)
            .arg("--output")
            .arg(&p.checkpoint);
        }
        _ => {
            c = Command::new(m.bins.join("eval-tsne"));
            c.args(["--seed", "42", "--device", "cpu", "--jobs", &jobs])
                .arg("--checkpoint")
                .arg(&p.checkpoint)
                .arg("--faces")
                .arg(&p.faces)
                .arg("--bottlenecks")
                .arg(&p.bottlenecks)
                .arg("--out")
                .arg(&p.eval);
        }
    }
    c.env("RAYON_NUM_THREADS", &jobs).env("NO_COLOR", "1");
    c
}

/// One stage at one factor, measured.
#[derive(Debug, Clone, Default)]
pub struct StageRun {
    pub stage: String,
    pub factor: u32,
    pub photos: u64,
    pub faces: Option<u64>,
    /// The teacher's feature rows: N and D (f32).
    pub features: Option<(u64, u64)>,
    pub usage: Usage,
    pub bytes_written: u64,
    pub files_written: u64,
    pub command: String,
}

impl StageRun {
    pub fn cpu_s(&self) -> f64 {
        self.usage.user_s + self.usage.sys_s
    }
    pub fn rss_mib(&self) -> f64 {
        self.usage.max_rss_kib as f64 / 1024.0
    }
    pub fn cpu_ms_per_photo(&self) -> f64 {
        1e3 * self.cpu_s() / self.photos.max(1) as f64
    }
    pub fn bytes_per_photo(&self) -> f64 {
        self.bytes_written as f64 / self.photos.max(1) as f64
    }
    /// N x D x 4: the feature rows this stage holds (the teacher writes them, train and
    /// eval read them; preprocess has none).
    pub fn feature_bytes(&self) -> Option<u64> {
        if self.stage == "preprocess" {
            return None;
        }
        self.features.map(|(n, d)| n * d * 4)
    }

    fn to_json(&self) -> Value {
        json!({
            "stage": self.stage,
            "factor": self.factor,
            "photos": self.photos,
            "faces": self.faces,
            "features_n": self.features.map(|f| f.0),
            "features_d": self.features.map(|f| f.1),
            "feature_bytes": self.feature_bytes(),
            "wall_s": self.usage.wall_s,
            "user_s": self.usage.user_s,
            "sys_s": self.usage.sys_s,
            "cpu_s": self.cpu_s(),
            "peak_rss_kib": self.usage.max_rss_kib,
            "polled_hwm_kib": self.usage.polled_hwm_kib,
            "floor_kib": self.usage.floor_kib,
            "bytes_written": self.bytes_written,
            "files_written": self.files_written,
            "cpu_ms_per_photo": self.cpu_ms_per_photo(),
            "bytes_per_photo": self.bytes_per_photo(),
            "command": self.command,
        })
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The JSON document in a stage's stdout (preprocess `--summary json`).
fn json_in(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&text[text.find('{')?..]).ok())
}

fn run_stage(
    stage: &str,
    k: u32,
    photos: u64,
    p: &Paths,
    m: &Models,
    o: &Options,
) -> Result<StageRun> {
    let sdir = p.stage_dir(stage);
    if sdir.exists() {
        std::fs::remove_dir_all(&sdir)?;
    }
    std::fs::create_dir_all(&sdir)?;
    let logs = o.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let (out_log, err_log) = (
        logs.join(format!("x{k}-{stage}.out")),
        logs.join(format!("x{k}-{stage}.err")),
    );
    let mut cmd = stage_command(stage, p, m, o.epochs);
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_log)?)
        .stderr(std::fs::File::create(&err_log)?);
    let command = show(&cmd);
    eprintln!("+ {command}");
    let before = snapshot(&p.root);
    let usage = measure(&mut cmd)?;
    if usage.exit_code != Some(0) {
        bail!(
            "`{command}` failed ({:?}); last lines of {}:\n{}",
            usage.exit_code,
            err_log.display(),
            tail(&err_log, 20)
        );
    }
    let (bytes_written, files_written) = written(&before, &snapshot(&p.root));
    let summary = json_in(&std::fs::read_to_string(&out_log).unwrap_or_default());
    let faces = summary
        .as_ref()
        .filter(|_| stage == "preprocess")
        .and_then(|s| s["faces"].as_u64())
        .or_else(|| tensor_shape(&p.faces, "labels").map(|s| s.0));
    let features = (stage != "preprocess")
        .then(|| tensor_shape(&p.bottlenecks, "features"))
        .flatten()
        .map(|(n, rest)| (n, rest.iter().product::<u64>()));
    Ok(StageRun {
        stage: stage.to_string(),
        factor: k,
        photos,
        faces,
        features,
        usage,
        bytes_written,
        files_written,
        command,
    })
}

// ---------------------------------------------------------------------------------------
// Tables

/// A plain text table: the first column left-aligned, the others right-aligned.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        let mut cells: Vec<&str> = r.iter().map(String::as_str).collect();
        cells.resize(cols, "");
        out.push_str(&line(cells));
    }
    out
}

/// Bytes in decimal units: `512 B`, `1.5 kB`, `12.3 MB`, `4.56 GB`, `1.20 TB`.
pub fn human_bytes(b: f64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    match u {
        0 => format!("{v:.0} B"),
        _ if v < 10.0 => format!("{v:.2} {}", UNITS[u]),
        _ if v < 100.0 => format!("{v:.1} {}", UNITS[u]),
        _ => format!("{v:.0} {}", UNITS[u]),
    }
}

/// A duration: `45 s`, `12.5 min`, `3.2 h`, `4.1 d`, `2.3 y`.
pub fn human_duration(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 90.0 * 60.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s < 365.0 * 86400.0 {
        format!("{:.1} d", s / 86400.0)
    } else {
        format!("{:.1} y", s / (365.0 * 86400.0))
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// Stage x factor: counts, wall and CPU time, peak RSS, bytes, per photo.
pub fn measure_table(runs: &[StageRun]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.stage.clone(),
                format!("{}x", r.factor),
                r.photos.to_string(),
                opt(r.faces),
                format!("{:.1}", r.usage.wall_s),
                format!("{:.1}", r.cpu_s()),
                format!("{:.0}", r.rss_mib()),
                human_bytes(r.bytes_written as f64),
                format!("{:.1}", r.cpu_ms_per_photo()),
                human_bytes(r.bytes_per_photo()),
                r.feature_bytes()
                    .map(|b| human_bytes(b as f64))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format_table(
        &[
            "stage",
            "factor",
            "photos",
            "faces",
            "wall s",
            "CPU s",
            "peak RSS MiB",
            "written",
            "CPU ms/photo",
            "bytes/photo",
            "features NxDx4",
        ],
        &rows,
    )
}

/// Peak RSS from the smallest to the largest factor of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    pub stage: String,
    pub from: u32,
    pub to: u32,
    pub rss_from_kib: u64,
    pub rss_to_kib: u64,
    /// Growth of the feature rows (N x D x 4) between the two, bytes.
    pub feature_delta: Option<u64>,
}

impl Growth {
    pub fn percent(&self) -> f64 {
        100.0 * (self.rss_to_kib as f64 - self.rss_from_kib as f64)
            / self.rss_from_kib.max(1) as f64
    }
    /// The growth less the feature rows' growth: what the aim is about.
    pub fn percent_less_features(&self) -> f64 {
        let delta_kib = self.feature_delta.unwrap_or(0) as f64 / 1024.0;
        100.0 * (self.rss_to_kib as f64 - self.rss_from_kib as f64 - delta_kib)
            / self.rss_from_kib.max(1) as f64
    }
    pub fn meets_aim(&self) -> bool {
        self.percent_less_features() < AIM_GROWTH_PERCENT
    }
}

pub fn growth(runs: &[StageRun]) -> Vec<Growth> {
    let mut out = Vec::new();
    for stage in STAGES {
        let mut rs: Vec<&StageRun> = runs.iter().filter(|r| r.stage == *stage).collect();
        rs.sort_by_key(|r| r.factor);
        let (Some(a), Some(b)) = (rs.first(), rs.last()) else {
            continue;
        };
        if a.factor == b.factor {
            continue;
        }
        let feature_delta = match (a.feature_bytes(), b.feature_bytes()) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        };
        out.push(Growth {
            stage: stage.to_string(),
            from: a.factor,
            to: b.factor,
            rss_from_kib: a.usage.max_rss_kib,
            rss_to_kib: b.usage.max_rss_kib,
            feature_delta,
        });
    }
    out
}

pub fn growth_table(g: &[Growth]) -> String {
    let rows: Vec<Vec<String>> = g
        .iter()
        .map(|g| {
            let aim = AIM_STAGES.contains(&g.stage.as_str());
            vec![
                g.stage.clone(),
                format!("{}x -> {}x", g.from, g.to),
                format!("{:.0}", g.rss_from_kib as f64 / 1024.0),
                format!("{:.0}", g.rss_to_kib as f64 / 1024.0),
                format!("{:+.1}%", g.percent()),
                g.feature_delta
                    .map(|d| format!("+{}", human_bytes(d as f64)))
                    .unwrap_or_else(|| "-".into()),
                format!("{:+.1}%", g.percent_less_features()),
                match (aim, g.meets_aim()) {
                    (false, _) => "(not in the aim)".into(),
                    (true, true) => format!("yes (< {AIM_GROWTH_PERCENT}%)"),
                    (true, false) => "no".into(),
                },
            ]
        })
        .collect();
    format_table(
        &[
            "stage",
            "factors",
            "RSS MiB",
            "RSS MiB",
            "growth",
            "feature rows",
            "growth less rows",
            "aim met",
        ],
        &rows,
    )
}

// ---------------------------------------------------------------------------------------
// Projection

/// One stage's cost as a fixed part (start-up, model loading, a checkpoint, plots) plus a
/// part per photo, fitted through its smallest and largest measured factor (one factor:
/// all of it per photo). A sum of stages names them in `parts`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerPhoto {
    pub stage: String,
    pub parts: Vec<String>,
    pub fixed_cpu_s: f64,
    pub cpu_s: f64,
    pub fixed_bytes: f64,
    pub bytes: f64,
}

/// A stage's cost for `photos` photos on `nodes` nodes of `cores` cores each, `speedup`
/// times this node's speed: (wall seconds, core-seconds on this kind of node, bytes). The
/// photos shard evenly over the nodes, every core is busy, each node pays the fixed CPU
/// part once; the fixed bytes are written once.
pub fn project(p: &PerPhoto, photos: f64, nodes: f64, cores: f64, speedup: f64) -> (f64, f64, f64) {
    let wall = (p.fixed_cpu_s + photos / nodes * p.cpu_s) / (cores * speedup);
    let cpu = nodes * p.fixed_cpu_s + photos * p.cpu_s;
    (wall, cpu, p.fixed_bytes + photos * p.bytes)
}

/// `total = fixed + per * photos` through (p0, y0) and (p1, y1): (fixed, per). A negative
/// slope or intercept (noise) falls back to all of y1 per photo.
pub fn fit(p0: f64, y0: f64, p1: f64, y1: f64) -> (f64, f64) {
    let all_per_photo = (0.0, y1 / p1.max(1.0));
    if p1 <= p0 {
        return all_per_photo;
    }
    let per = (y1 - y0) / (p1 - p0);
    let fixed = y0 - per * p0;
    if per < 0.0 || fixed < 0.0 {
        return all_per_photo;
    }
    (fixed, per)
}

pub fn per_photo(runs: &[StageRun]) -> Vec<PerPhoto> {
    STAGES
        .iter()
        .filter_map(|s| {
            let lo = runs
                .iter()
                .filter(|r| r.stage == *s)
                .min_by_key(|r| r.factor)?;
            let hi = runs
                .iter()
                .filter(|r| r.stage == *s)
                .max_by_key(|r| r.factor)?;
            let (p0, p1) = (lo.photos as f64, hi.photos as f64);
            let (fixed_cpu_s, cpu_s) = fit(p0, lo.cpu_s(), p1, hi.cpu_s());
            let (fixed_bytes, bytes) =
                fit(p0, lo.bytes_written as f64, p1, hi.bytes_written as f64);
            Some(PerPhoto {
                stage: s.to_string(),
                parts: vec![s.to_string()],
                fixed_cpu_s,
                cpu_s,
                fixed_bytes,
                bytes,
            })
        })
        .collect()
}

/// The stages, then the aim's stages summed (`preprocess+teacher+train`), then every stage
/// summed when eval is there too.
fn with_totals(per: &[PerPhoto]) -> Vec<PerPhoto> {
    let mut out = per.to_vec();
    let sum = |label: Option<&str>, keep: &dyn Fn(&str) -> bool| {
        let s: Vec<&PerPhoto> = per.iter().filter(|p| keep(&p.stage)).collect();
        let parts: Vec<String> = s.iter().map(|p| p.stage.clone()).collect();
        (s.len() > 1).then(|| PerPhoto {
            stage: label.map(str::to_string).unwrap_or_else(|| parts.join("+")),
            fixed_cpu_s: s.iter().map(|p| p.fixed_cpu_s).sum(),
            cpu_s: s.iter().map(|p| p.cpu_s).sum(),
            fixed_bytes: s.iter().map(|p| p.fixed_bytes).sum(),
            bytes: s.iter().map(|p| p.bytes).sum(),
            parts,
        })
    };
    out.extend(sum(None, &|s| AIM_STAGES.contains(&s)));
    if per.iter().any(|p| !AIM_STAGES.contains(&p.stage.as_str())) {
        out.extend(sum(Some("all stages"), &|_| true));
    }
    out
}

/// The fitted cost of each stage: fixed and per photo.
pub fn fit_table(per: &[PerPhoto]) -> String {
    let rows: Vec<Vec<String>> = per
        .iter()
        .map(|p| {
            vec![
                p.stage.clone(),
                format!("{:.1}", p.fixed_cpu_s),
                format!("{:.1}", 1e3 * p.cpu_s),
                human_bytes(p.fixed_bytes),
                human_bytes(p.bytes),
            ]
        })
        .collect();
    format_table(
        &[
            "stage",
            "fixed CPU s",
            "CPU ms/photo",
            "fixed bytes",
            "bytes/photo",
        ],
        &rows,
    )
}

/// Wall time on 1, 10, 100 nodes of this kind and of a GPU kind (a sum's GPU time is its
/// stages' GPU times summed), the core-hours and the bytes, for each photo count.
pub fn projection_table(
    per: &[PerPhoto],
    cores: f64,
    gpu: &BTreeMap<String, f64>,
    epochs: u32,
) -> String {
    let mut rows = Vec::new();
    for p in with_totals(per) {
        for &photos in PROJECT_PHOTOS {
            let label = match p.stage.as_str() {
                "train" => format!("train ({epochs} epochs)"),
                s => s.to_string(),
            };
            let mut row = vec![label, format!("{photos:.0}")];
            for &n in PROJECT_NODES {
                row.push(human_duration(project(&p, photos, n, cores, 1.0).0));
            }
            for &n in PROJECT_NODES {
                let wall: f64 = per
                    .iter()
                    .filter(|x| p.parts.contains(&x.stage))
                    .map(|x| {
                        let speedup = gpu.get(&x.stage).copied().unwrap_or(1.0);
                        project(x, photos, n, cores, speedup).0
                    })
                    .sum();
                row.push(human_duration(wall));
            }
            let (_, cpu, bytes) = project(&p, photos, 1.0, cores, 1.0);
            row.push(if cpu < 36_000.0 {
                format!("{:.1}", cpu / 3600.0)
            } else {
                format!("{:.0}", cpu / 3600.0)
            });
            row.push(human_bytes(bytes));
            rows.push(row);
        }
    }
    format_table(
        &[
            "stage",
            "photos",
            "1 node",
            "10 nodes",
            "100 nodes",
            "1 GPU node*",
            "10 GPU*",
            "100 GPU*",
            "core-hours",
            "storage",
        ],
        &rows,
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------

pub const HELP: &str = "\
cargo xtask bench scale [--factors 1,4,16] [--stages preprocess,teacher,train,eval]
                        [--out target/scale] [--epochs 3] [--project] [--no-build]
                        [--bins DIR (stage binaries to measure; default target/release,
                        built first)]
                        [--gpu-speedup preprocess=3,teacher=20,train=10,eval=1]
  replicates ../shared/data/msceleb-samples k times (jittered JPEG copies, cached), runs
  each stage on it as a child process (release, 2 threads; the binaries are copied to
  <out>/bin first, so a rebuild during the run changes nothing) and measures wall and CPU
  seconds, peak RSS (wait4's ru_maxrss), bytes written; scale.json and tables in --out.
  --project: time and storage for 1e5 and 1e7 photos on 1/10/100 such nodes (GPU: assumed
  speed-ups, marked *)";

pub fn run(args: &[String]) -> Result<()> {
    if has_flag(args, "--help") || has_flag(args, "-h") {
        println!("{HELP}");
        return Ok(());
    }
    let o = Options::parse(args)?;
    let shared = shared_dir().context(
        "bench scale needs ../shared (or CELEB_SHARED) with data/msceleb-samples and models/dlib",
    )?;
    let source = shared.join("data/msceleb-samples");
    let models = Models {
        cnn: shared.join("models/dlib/mmod_human_face_detector.dat"),
        face: shared.join("models/dlib/dlib_face_recognition_resnet_model_v1.dat"),
        bins: o.out.join("bin"),
    };
    for p in [&source, &models.cnn, &models.face] {
        if !p.exists() {
            bail!("bench scale: {} is missing", p.display());
        }
    }
    if o.build {
        crate::pipeline::build_stages(false)?;
    }
    std::fs::create_dir_all(&o.out)?;
    let from = o
        .bins
        .clone()
        .unwrap_or_else(|| bin("preprocess").with_file_name(""));
    let binaries = snapshot_binaries(&from, &models.bins)?;
    let mut runs: Vec<StageRun> = Vec::new();
    let mut factors = Vec::new();
    for &k in &o.factors {
        let t = Instant::now();
        let rep = replicate(&source, &o.out, k)?;
        println!(
            "scale x{k}: {} photos in {} ({}{})",
            rep.photos,
            rep.dir.display(),
            if rep.cached {
                "cached".to_string()
            } else {
                format!("made in {:.1} s", rep.seconds)
            },
            if rep.verbatim > 0 {
                format!(", {} undecodable copies kept byte for byte", rep.verbatim)
            } else {
                String::new()
            }
        );
        let paths = Paths::new(&o.out, k, &rep.dir);
        for stage in &o.stages {
            let r = run_stage(stage, k, rep.photos, &paths, &models, &o)?;
            println!(
                "scale x{k} {stage}: {:.1} s wall, {:.1} s CPU, peak RSS {:.0} MiB (polled {}), {} written",
                r.usage.wall_s,
                r.cpu_s(),
                r.rss_mib(),
                r.usage
                    .polled_hwm_kib
                    .map(|x| format!("{:.0} MiB", x as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into()),
                human_bytes(r.bytes_written as f64)
            );
            runs.push(r);
        }
        let total = t.elapsed().as_secs_f64();
        println!("scale x{k}: {} in all", human_duration(total));
        factors.push(
            json!({"factor": k, "photos": rep.photos, "replica_seconds": rep.seconds,
            "replica_cached": rep.cached, "verbatim_copies": rep.verbatim, "total_seconds": total}),
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(THREADS) as f64;
    let g = growth(&runs);
    let per = per_photo(&runs);
    println!("\n{}", measure_table(&runs));
    if !g.is_empty() {
        println!("peak RSS growth (the aim: < {AIM_GROWTH_PERCENT}% apart from the feature rows N x D x 4)");
        println!("{}", growth_table(&g));
    }
    let floor = runs.iter().map(|r| r.usage.floor_kib).max().unwrap_or(0);
    println!(
        "peak RSS: wait4's ru_maxrss of each stage's process (floor: xtask's resident set at the fork, at most {:.0} MiB)",
        floor as f64 / 1024.0
    );
    if o.project {
        println!(
            "\nprojection: each stage's cost as a fixed part plus a part per photo, fitted through the smallest and largest factor measured"
        );
        println!("{}", fit_table(&per));
        println!(
            "on nodes of this kind ({cores:.0} cores, {}): photos sharded evenly, every core busy, the fixed CPU once per node",
            cpu_model()
        );
        println!(
            "{}",
            projection_table(&per, cores, &o.gpu_speedup, o.epochs)
        );
        let speedups: Vec<String> = o
            .gpu_speedup
            .iter()
            .map(|(s, x)| format!("{s} {x}x"))
            .collect();
        println!(
            "* estimate: no GPU timing is measured (the README has none); assumed speed-ups of a GPU node over one of these nodes: {} (--gpu-speedup)",
            speedups.join(", ")
        );
        println!(
            "train and eval run as one process today: their 10- and 100-node figures assume they would split over nodes"
        );
    }
    let doc = json!({
        "factors": factors,
        "binaries": binaries,
        "stages": o.stages,
        "epochs": o.epochs,
        "threads": THREADS,
        "cores": cores,
        "cpu": cpu_model(),
        "jpeg_quality": JPEG_QUALITY,
        "rss_method": "wait4 ru_maxrss of the forked child (floor_kib: xtask's VmRSS at the fork); polled_hwm_kib: /proc/<pid>/status VmHWM every 50 ms",
        "runs": runs.iter().map(StageRun::to_json).collect::<Vec<_>>(),
        "growth": g.iter().map(|g| json!({
            "stage": g.stage, "from": g.from, "to": g.to,
            "rss_from_kib": g.rss_from_kib, "rss_to_kib": g.rss_to_kib,
            "percent": g.percent(), "feature_delta_bytes": g.feature_delta,
            "percent_less_features": g.percent_less_features(),
            "in_aim": AIM_STAGES.contains(&g.stage.as_str()), "meets_aim": g.meets_aim(),
        })).collect::<Vec<_>>(),
        "per_photo": per.iter().map(|p| json!({"stage": p.stage, "cpu_s": p.cpu_s, "bytes": p.bytes,
            "fixed_cpu_s": p.fixed_cpu_s, "fixed_bytes": p.fixed_bytes})).collect::<Vec<_>>(),
        "projection": {
            "photos": PROJECT_PHOTOS, "nodes": PROJECT_NODES, "cores_per_node": cores,
            "gpu_speedup_assumed": o.gpu_speedup,
            "rows": with_totals(&per).iter().flat_map(|p| PROJECT_PHOTOS.iter().map(move |&n| {
                let (wall1, cpu, bytes) = project(p, n, 1.0, cores, 1.0);
                json!({"stage": p.stage, "photos": n, "wall_s_one_node": wall1, "core_s": cpu, "bytes": bytes})
            })).collect::<Vec<_>>(),
        },
    });
    let path = o.out.join("scale.json");
    artifacts::write_json_atomic(&path, &doc)?;
    println!("results: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_default_and_parse() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!(o.factors, vec![1, 4, 16]);
        assert_eq!(o.stages, STAGES);
        assert_eq!(o.out, PathBuf::from("target/scale"));
        assert_eq!(o.epochs, 3);
        assert!(o.build && !o.project);
        let o = Options::parse(&args(&[
            "--factors",
            "4,1,4",
            "--stages",
            "train,preprocess",
            "--project",
            "--no-build",
            "--gpu-speedup",
            "teacher=50",
        ]))
        .unwrap();
        assert_eq!(o.factors, vec![1, 4]);
        assert_eq!(o.stages, vec!["preprocess", "train"]);
        assert!(o.project && !o.build);
        assert_eq!(o.gpu_speedup["teacher"], 50.0);
        assert_eq!(o.gpu_speedup["train"], 10.0);
        for bad in [
            &["--factors", "0"][..],
            &["--stages", "bottleneck"],
            &["--epochs", "x"],
            &["--gpu-speedup", "teacher"],
            &["--frobnicate"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jitter_is_deterministic_in_range_and_differs_between_copies() {
        let a = jitter("m.01yrkh/12-FaceId-0.jpg", 1);
        assert_eq!(a, jitter("m.01yrkh/12-FaceId-0.jpg", 1));
        let mut distinct = std::collections::BTreeSet::new();
        for copy in 1..200 {
            for key in ["a/1.jpg", "b/2.jpg", "m.01yrkh/12-FaceId-0.jpg"] {
                let j = jitter(key, copy);
                for c in [j.left, j.top, j.right, j.bottom] {
                    assert!(c <= 3);
                }
                assert!(j.left + j.top + j.right + j.bottom >= 1);
                assert!((0.97..=1.03).contains(&j.brightness), "{j:?}");
                distinct.insert((j.left, j.top, j.right, j.bottom, j.brightness.to_bits()));
            }
        }
        assert!(distinct.len() > 550, "{} distinct of 597", distinct.len());
        assert_ne!(jitter("a/1.jpg", 1), jitter("a/1.jpg", 2));
        assert_ne!(jitter("a/1.jpg", 1), jitter("a/2.jpg", 1));
    }

    #[test]
    fn jitter_values_are_pinned() {
        // The same key and copy give the same jitter on every machine and build.
        let j = jitter("a/1.jpg", 3);
        assert_eq!((j.left, j.top, j.right, j.bottom), (0, 3, 0, 2));
        assert!((j.brightness - 0.993_133_8).abs() < 1e-6, "{j:?}");
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn copies_are_named_after_the_stem() {
        assert_eq!(copy_name("12-FaceId-0.jpg", 3), "12-FaceId-0~r3.jpg");
        assert_eq!(copy_name("x.jpeg", 1), "x~r1.jpg");
        assert_eq!(copy_name("noext", 2), "noext~r2.jpg");
    }

    #[test]
    fn replicas_are_jittered_jpegs_and_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("p1")).unwrap();
        std::fs::create_dir_all(src.join(".hidden")).unwrap();
        let img =
            image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100]));
        img.save(src.join("p1/a.jpg")).unwrap();
        std::fs::write(src.join("p1/broken.jpg"), b"not a jpeg").unwrap();
        let out = tmp.path().join("out");
        let r = replicate(&src, &out, 3).unwrap();
        assert!(!r.cached);
        assert_eq!(r.photos, 6);
        assert_eq!(r.verbatim, 2);
        let mut names: Vec<String> = std::fs::read_dir(out.join("photos-x3/p1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "a.jpg",
                "a~r1.jpg",
                "a~r2.jpg",
                "broken.jpg",
                "broken~r1.jpg",
                "broken~r2.jpg"
            ]
        );
        let copy = image::open(out.join("photos-x3/p1/a~r1.jpg")).unwrap();
        let j = jitter("p1/a.jpg", 1);
        assert_eq!(copy.width(), 40 - j.left - j.right);
        assert_eq!(copy.height(), 30 - j.top - j.bottom);
        assert_eq!(
            std::fs::read(out.join("photos-x3/p1/broken~r2.jpg")).unwrap(),
            b"not a jpeg"
        );
        assert!(out.join("photos-x3.complete").is_file());
        let again = replicate(&src, &out, 3).unwrap();
        assert!(again.cached);
        assert_eq!(again.photos, 6);
    }

    #[test]
    fn measure_reports_exit_code_and_rss() {
        let u = measure(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(u.exit_code, Some(3));
        assert!(u.max_rss_kib > 0);
        assert!(u.floor_kib > 0);
    }

    #[test]
    fn written_counts_new_and_changed_files() {
        let t = SystemTime::UNIX_EPOCH;
        let before: BTreeMap<_, _> = [
            (PathBuf::from("a"), (5, Some(t))),
            (PathBuf::from("b"), (7, Some(t))),
        ]
        .into();
        let mut after = before.clone();
        after.insert(PathBuf::from("b"), (9, Some(t)));
        after.insert(PathBuf::from("c"), (100, Some(t)));
        assert_eq!(written(&before, &after), (109, 2));
    }

    #[test]
    fn tensor_shapes_come_from_headers_and_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |p: &Path, n: u64| {
            let header =
                json!({"features": {"dtype": "F32", "shape": [n, 128], "data_offsets": [0, 0]}});
            let h = serde_json::to_vec(&header).unwrap();
            let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
            bytes.extend(h);
            std::fs::write(p, bytes).unwrap();
        };
        let one = tmp.path().join("b.safetensors");
        write(&one, 10);
        assert_eq!(tensor_shape(&one, "features"), Some((10, vec![128])));
        assert_eq!(tensor_shape(&one, "labels"), None);
        let dir = tmp.path().join("shards.safetensors");
        std::fs::create_dir(&dir).unwrap();
        write(&dir.join("00.safetensors"), 4);
        write(&dir.join("01.safetensors"), 3);
        assert_eq!(tensor_shape(&dir, "features"), Some((7, vec![128])));
        write(&tmp.path().join("c-00000.safetensors"), 2);
        write(&tmp.path().join("c-00001.safetensors"), 5);
        assert_eq!(
            tensor_shape(&tmp.path().join("c.safetensors"), "features"),
            Some((7, vec![128]))
        );
        // An index without the tensor: its `<stem>.shards/` hold it.
        let index = tmp.path().join("faces.safetensors");
        write(&index, 0);
        let text = std::fs::read(&index).unwrap();
        std::fs::write(
            &index,
            String::from_utf8_lossy(&text).replace("features", "featurez"),
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("faces.shards")).unwrap();
        write(&tmp.path().join("faces.shards/00000.safetensors"), 6);
        write(&tmp.path().join("faces.shards/00001.safetensors"), 1);
        std::fs::write(tmp.path().join("faces.shards/00000.json"), "{}").unwrap();
        assert_eq!(tensor_shape(&index, "features"), Some((7, vec![128])));
    }

    fn run_of(stage: &str, factor: u32, rss_mib: u64, n: u64) -> StageRun {
        StageRun {
            stage: stage.into(),
            factor,
            photos: 1000 * factor as u64,
            faces: Some(n),
            features: Some((n, 128)),
            usage: Usage {
                wall_s: 10.0,
                user_s: 15.0 * factor as f64,
                sys_s: 5.0 * factor as f64,
                max_rss_kib: rss_mib * 1024,
                ..Usage::default()
            },
            bytes_written: 2_000_000 * factor as u64,
            ..StageRun::default()
        }
    }

    #[test]
    fn growth_subtracts_the_feature_rows() {
        // 1000 -> 16000 faces of 128 floats: +7.68 MB of rows (7500 KiB).
        let runs = [
            run_of("teacher", 1, 100, 1000),
            run_of("teacher", 16, 100 + 7500 / 1024 + 5, 16000),
            run_of("preprocess", 1, 200, 1000),
            run_of("preprocess", 4, 260, 4000),
        ];
        let g = growth(&runs);
        assert_eq!(g.len(), 2);
        let pre = g.iter().find(|g| g.stage == "preprocess").unwrap();
        assert_eq!((pre.from, pre.to), (1, 4));
        assert_eq!(pre.feature_delta, None);
        assert!((pre.percent() - 30.0).abs() < 1e-9);
        assert_eq!(pre.percent(), pre.percent_less_features());
        assert!(!pre.meets_aim());
        let t = g.iter().find(|g| g.stage == "teacher").unwrap();
        assert_eq!(t.feature_delta, Some(15000 * 128 * 4));
        assert!(t.percent() > 10.0);
        let rows_kib = 15000.0 * 128.0 * 4.0 / 1024.0;
        let want = 100.0 * ((7 + 5) as f64 * 1024.0 - rows_kib) / (100.0 * 1024.0);
        assert!((t.percent_less_features() - want).abs() < 1e-9);
        assert!(t.meets_aim());
        // One factor only: no growth to show.
        assert!(growth(&runs[..1]).is_empty());
    }

    #[test]
    fn projection_arithmetic() {
        let p = PerPhoto {
            stage: "preprocess".into(),
            parts: vec!["preprocess".into()],
            fixed_cpu_s: 0.0,
            cpu_s: 0.2,
            fixed_bytes: 0.0,
            bytes: 150_000.0,
        };
        // 100,000 photos x 0.2 CPU s = 20,000 core-s; 2 cores: 10,000 s on one node.
        let (wall, cpu, bytes) = project(&p, 1e5, 1.0, 2.0, 1.0);
        assert!((wall - 10_000.0).abs() < 1e-6);
        assert!((cpu - 20_000.0).abs() < 1e-6);
        assert!((bytes - 15e9).abs() < 1e-3);
        let (wall, cpu, _) = project(&p, 1e7, 100.0, 2.0, 4.0);
        assert!((wall - 2e6 / 800.0).abs() < 1e-6);
        assert!((cpu - 2e6).abs() < 1e-6);
        // A fixed part: paid once per node in CPU, written once in bytes.
        let q = PerPhoto {
            fixed_cpu_s: 10.0,
            fixed_bytes: 1e6,
            ..p.clone()
        };
        let (wall, cpu, bytes) = project(&q, 1e5, 10.0, 2.0, 1.0);
        assert!((wall - (10.0 + 1e4 * 0.2) / 2.0).abs() < 1e-6);
        assert!((cpu - (100.0 + 2e4)).abs() < 1e-6);
        assert!((bytes - (1e6 + 15e9)).abs() < 1e-3);
        // The fit: 89 s at 1375 photos, 328 s at 5500 -> ~57.9 ms a photo + ~9.5 s.
        let (fixed, per) = fit(1375.0, 89.2, 5500.0, 327.8);
        assert!((per - 238.6 / 4125.0).abs() < 1e-12);
        assert!((fixed - (89.2 - 1375.0 * per)).abs() < 1e-9);
        // Noise that makes the slope or the intercept negative: all of it per photo.
        assert_eq!(fit(1000.0, 10.0, 4000.0, 9.0), (0.0, 9.0 / 4000.0));
        assert_eq!(fit(1000.0, 10.0, 4000.0, 100.0), (0.0, 100.0 / 4000.0));
        assert_eq!(fit(1000.0, 10.0, 1000.0, 10.0), (0.0, 0.01));
        let runs = [
            run_of("teacher", 1, 1, 1),
            run_of("teacher", 4, 1, 1),
            run_of("preprocess", 1, 1, 1),
        ];
        let per = per_photo(&runs);
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].stage, "preprocess");
        // teacher: 20 CPU s at 1000 photos, 80 at 4000 -> 20 ms a photo, nothing fixed.
        assert!((per[1].cpu_s - 0.02).abs() < 1e-12);
        assert!((per[1].bytes - 2000.0).abs() < 1e-9);
        assert!(per[1].fixed_cpu_s.abs() < 1e-9 && per[1].fixed_bytes.abs() < 1e-6);
        let totals = with_totals(&per);
        assert_eq!(totals.last().unwrap().stage, "preprocess+teacher");
        assert_eq!(totals.last().unwrap().parts, ["preprocess", "teacher"]);
        assert!((totals.last().unwrap().cpu_s - 0.04).abs() < 1e-12);
    }

    #[test]
    fn tables_align_and_units_read() {
        let t = format_table(
            &["stage", "n"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long".into(), "12345".into()],
            ],
        );
        assert_eq!(
            t,
            "stage      n\n-----  -----\na          1\nlong   12345\n"
        );
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1500.0), "1.50 kB");
        assert_eq!(human_bytes(12_345_678.0), "12.3 MB");
        assert_eq!(human_bytes(456e9), "456 GB");
        assert_eq!(human_duration(42.0), "42 s");
        assert_eq!(human_duration(750.0), "12.5 min");
        assert_eq!(human_duration(3.0 * 3600.0), "3.0 h");
        assert_eq!(human_duration(5.0 * 86400.0), "5.0 d");
        let runs = [
            run_of("preprocess", 1, 300, 900),
            run_of("teacher", 1, 120, 900),
        ];
        let m = measure_table(&runs);
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("stage"));
        // preprocess holds no feature rows; the teacher 900 x 128 x 4 bytes.
        assert!(lines[2].trim_end().ends_with('-'), "{}", lines[2]);
        assert!(lines[3].trim_end().ends_with("461 kB"), "{}", lines[3]);
        let per = per_photo(&runs);
        let p = projection_table(
            &per,
            2.0,
            &GPU_SPEEDUP
                .iter()
                .map(|(s, x)| (s.to_string(), *x))
                .collect(),
            3,
        );
        // preprocess, teacher, their total: two photo counts each, below two header lines.
        assert_eq!(p.lines().count(), 2 + 3 * 2);
        assert!(p.contains("preprocess+teacher"));
    }
}
