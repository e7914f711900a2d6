//! `cargo xtask bench [preprocess|bottleneck|train|tsne|predict|group|student|all]`: release builds, 2 threads,
//! one table, JSON in `target/bench/`. Python peers (torchvision, PyTorch, openTSNE) run in
//! the same invocation on the same data when they are importable. `bench scale` (not in
//! `all`: it takes most of an hour) is in `scale.rs`.

use crate::util::{cargo, python_has, run_capture, shared_dir};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const THREADS: &str = "2";

fn example(pkg: &str, name: &str, args: &[String]) -> Result<Vec<Value>> {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-q", "-p", pkg, "--example", name, "--"])
        .args(args)
        .env("RAYON_NUM_THREADS", THREADS);
    let out = run_capture(&mut cmd)?;
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn python(script: &str, args: &[String]) -> Result<Vec<Value>> {
    let out = run_capture(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .env("OMP_NUM_THREADS", THREADS)
            .env("MKL_NUM_THREADS", THREADS),
    )?;
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

const TORCH_INCEPTION: &str = r#"
import sys, time, json, torch, torchvision
from safetensors.torch import load_file
torch.set_num_threads(2)
m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1000)
sd = {k: v.float() for k, v in load_file(sys.argv[1]).items() if not k.startswith('AuxLogits')}
m.load_state_dict(sd, strict=False); m.fc = torch.nn.Identity(); m.eval()
for b in map(int, sys.argv[2:]):
    x = torch.randn(b, 3, 299, 299)
    with torch.no_grad():
        m(x); reps = max(2, min(16, 64 // b)); t = time.time()
        for _ in range(reps): m(x)
    s = time.time() - t
    print(json.dumps({"batch": b, "images_per_second": b * reps / s}))
"#;

const TORCH_TRAIN: &str = r#"
import sys, time, json, torch
torch.set_num_threads(2)
class S(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.c = torch.nn.Sequential(torch.nn.ZeroPad2d((1,1,1,1)), torch.nn.Conv2d(3,32,4,2,bias=False), torch.nn.ReLU(),
            torch.nn.ZeroPad2d((1,2,1,2)), torch.nn.Conv2d(32,32,4,2,bias=False), torch.nn.ReLU(), torch.nn.Conv2d(32,8,2,2,bias=False), torch.nn.ReLU())
        s.f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2888,100), torch.nn.ReLU(), torch.nn.Dropout(0.25), torch.nn.Linear(100,100), torch.nn.ReLU())
        s.b = torch.nn.Linear(100, 2048); s.o = torch.nn.Linear(2048, 14)
    def forward(s, x):
        h = s.f(s.c(x)); b = s.b(h); return s.o(torch.relu(b)), b
m = S(); opt = torch.optim.AdamW(m.parameters(), 1e-3, weight_decay=1e-4)
n = 640; X = torch.randn(n, 3, 150, 150); Y = torch.randint(0, 14, (n,)); T = torch.rand(n, 2048)
runs = int(sys.argv[1])
for b in map(int, sys.argv[2:]):
    rates = []
    for rep in range(runs):
        t = time.time(); seen = 0
        for ep in range(2):
            for i in range(0, n, b):
                x, y, tt = X[i:i+b], Y[i:i+b], T[i:i+b]
                logits, bn = m(x)
                loss = torch.nn.functional.cross_entropy(logits, y) + 0.1 * (1 - torch.nn.functional.cosine_similarity(bn, tt)).mean()
                opt.zero_grad(); loss.backward(); opt.step(); seen += len(x)
        rates.append(seen / (time.time() - t))
    print(json.dumps({"batch": b, "samples_per_second": sorted(rates)[len(rates) // 2], "runs": rates}))
"#;

const OPENTSNE: &str = r#"
import sys, time, json, numpy as np
from openTSNE import TSNE
n = int(sys.argv[2]); x = np.fromfile(sys.argv[1], dtype=np.float32).reshape(n, 2048)
t = time.time(); e = TSNE(n_jobs=2, random_state=42).fit(x); s = time.time() - t
np.asarray(e, dtype='<f8').tofile(sys.argv[3])
print(json.dumps({"n": n, "seconds": s, "kl_own": float(e.kl_divergence)}))
"#;

const DLIB_FACE: &str = r#"
import sys, time, json, os, numpy as np, dlib
from safetensors.numpy import load_file
net = dlib.face_recognition_model_v1(sys.argv[1])
chips = load_file(sys.argv[2])["chips"]
for b in map(int, sys.argv[3:]):
    batch = [np.ascontiguousarray(chips[i % len(chips)]) for i in range(b)]
    net.compute_face_descriptor(batch)
    reps = max(3, min(32, 64 // b)); t = time.time()
    for _ in range(reps): net.compute_face_descriptor(batch)
    s = time.time() - t
    print(json.dumps({"batch": b, "chips_per_second": b * reps / s, "threads": len(os.listdir("/proc/self/task"))}))
"#;

const DLIB_MMOD: &str = r#"
import sys, time, json, dlib
det = dlib.cnn_face_detection_model_v1(sys.argv[1])
imgs = [dlib.load_rgb_image(p) for p in sys.argv[3:]]
for up in map(int, sys.argv[2].split(',')):
    det(imgs[0], up); t = time.time(); found = 0
    for im in imgs: found += len(det(im, up)) > 0
    s = time.time() - t
    print(json.dumps({"upsample": up, "photos": len(imgs), "photos_per_second": len(imgs) / s, "photos_with_a_face": found}))
"#;

/// face_recognition's recipe in dlib's Python module, as its CLI runs it per photo: HOG
/// detector (upsample 1), 68 landmarks, the 128-d descriptor of every face, then the
/// distance to each known face (here 800 random ones, as cheap as it is).
const DLIB_RECOGNISE: &str = r#"
import sys, time, json, numpy as np, dlib
det = dlib.get_frontal_face_detector()
sp = dlib.shape_predictor(sys.argv[1]); net = dlib.face_recognition_model_v1(sys.argv[2])
known = np.random.default_rng(0).normal(size=(800, 128)).astype(np.float32)
paths = sys.argv[3:]
t = time.time(); faces = 0; tl = 0
for p in paths:
    t0 = time.time(); im = dlib.load_rgb_image(p); tl += time.time() - t0
    for r in det(im, 1):
        d = np.array(net.compute_face_descriptor(im, sp(im, r)), dtype=np.float32)
        np.linalg.norm(known - d, axis=1).min(); faces += 1
s = time.time() - t
print(json.dumps({"photos": len(paths), "faces": faces, "seconds": s, "photos_per_second": len(paths) / s, "decode_seconds": tl}))
"#;

/// One line of the printed table: the benchmark, our figure, the peer's, the ratio.
type Row = (String, String, String, String);

/// Our example's JSON lines and, when the Python `modules` import, the peer `script`'s on
/// the same arguments (None when they do not).
fn ours_and_peer(
    pkg: &str,
    name: &str,
    args: &[String],
    modules: &str,
    script: &str,
) -> Result<(Vec<Value>, Option<Vec<Value>>)> {
    let ours = example(pkg, name, args)?;
    let peer = if python_has(modules) {
        Some(python(script, args)?)
    } else {
        None
    };
    Ok((ours, peer))
}

/// Every `n`th photo of a person-per-folder tree (two levels, sorted), as arguments.
fn every_nth_photo(data: &Path, n: usize) -> Result<Vec<String>> {
    let mut photos: Vec<PathBuf> = Vec::new();
    for class in std::fs::read_dir(data)?.flatten() {
        for f in std::fs::read_dir(class.path())?.flatten() {
            photos.push(f.path());
        }
    }
    photos.sort();
    Ok(photos
        .iter()
        .step_by(n)
        .map(|p| p.display().to_string())
        .collect())
}

/// Median of a few runs (the upper middle one for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn ratio(ours: f64, peer: f64) -> String {
    format!("{:.2}x", ours / peer)
}

const WHAT: &[&str] = &[
    "preprocess",
    "bottleneck",
    "train",
    "tsne",
    "predict",
    "group",
    "student",
    "all",
];

pub fn run(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str).unwrap_or("all");
    if what == "scale" {
        return crate::scale::run(&args[1..]);
    }
    if !WHAT.contains(&what) {
        bail!("bench what? preprocess, bottleneck, train, tsne, predict, group, student, all or scale");
    }
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let wanted = |name: &str| what == "all" || what == name;
    let mut table: Vec<Row> = Vec::new();
    let mut results = json!({});
    if wanted("preprocess") {
        results["preprocess"] = bench_preprocess(&dir, &mut table)?;
    }
    if wanted("bottleneck") {
        results["bottleneck"] = bench_bottleneck(&mut table)?;
    }
    if wanted("train") {
        results["train"] = bench_train(&mut table)?;
    }
    if wanted("tsne") {
        results["tsne"] = bench_tsne(&dir, &mut table)?;
    }
    if wanted("predict") {
        results["predict"] = bench_predict(args, &dir, &mut table)?;
    }
    if wanted("group") {
        results["group"] = bench_group(args, &dir, &mut table)?;
    }
    if wanted("student") {
        results["student"] = bench_student(&mut table)?;
    }
    println!(
        "
{:<36} {:<26} {:<28} ratio",
        "benchmark", "celeb-transfer", "peer (same run)"
    );
    for (a, b, c, d) in &table {
        println!("{a:<36} {b:<26} {c:<28} {d}");
    }
    let path = dir.join(format!("{what}.json"));
    artifacts::write_json_atomic(&path, &results)?;
    println!("\nresults: {}", path.display());
    Ok(())
}

/// `bench preprocess`: the whole stage with each detector setting on the msceleb photos,
/// then the CNN detector alone against dlib's.
fn bench_preprocess(dir: &Path, table: &mut Vec<Row>) -> Result<Value> {
    let shared = shared_dir().context("bench preprocess needs ../shared/data/msceleb-samples")?;
    let mut build = cargo();
    run_capture(build.args(["build", "--release", "-q", "-p", "preprocess"]))?;
    let photos = shared.join("data/msceleb-samples");
    let cnn = shared.join("models/dlib/mmod_human_face_detector.dat");
    let mut runs = Vec::new();
    for (label, extra) in [
        ("haar", &["--detector", "haar"][..]),
        ("haar+cnn (default)", &["--detector", "haar+cnn"][..]),
        (
            "haar+cnn, upsample 1",
            &["--detector", "haar+cnn", "--upsample", "1"][..],
        ),
        ("cnn", &["--detector", "cnn"][..]),
        (
            "cnn, upsample 1",
            &["--detector", "cnn", "--upsample", "1"][..],
        ),
    ] {
        let v = preprocess_once(dir, &photos, &cnn, extra)?;
        let (faces, all) = (
            v["faces"].as_f64().unwrap_or(0.0),
            v["candidates"].as_f64().unwrap_or(1.0),
        );
        table.push((
            format!("preprocess --detector {label} (msceleb, 1375 photos)"),
            format!(
                "{:.1} images/s",
                v["images_per_second"].as_f64().unwrap_or(0.0)
            ),
            format!(
                "{:.1} s, {:.1}% kept",
                v["seconds"].as_f64().unwrap_or(0.0),
                100.0 * faces / all
            ),
            "-".into(),
        ));
        runs.push(json!({"detector": label, "summary": v}));
    }
    let (ours, peer) = bench_cnn_detector(&photos, &cnn, table)?;
    Ok(json!({"runs": runs, "cnn_detector": ours, "dlib_cnn_detector": peer}))
}

/// One preprocess run with the detector flags `extra`; returns its JSON summary.
fn preprocess_once(dir: &Path, photos: &Path, cnn: &Path, extra: &[&str]) -> Result<Value> {
    let out = run_capture(
        Command::new("target/release/preprocess")
            .args([
                "--jobs",
                THREADS,
                "--summary",
                "json",
                "--device",
                "cpu",
                "--input",
            ])
            .arg(photos)
            .arg("--cnn-model")
            .arg(cnn)
            .args(extra)
            .arg("--output")
            .arg(dir.join("faces.safetensors")),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// The CNN detector alone against dlib's, on every 28th photo (decoded beforehand).
fn bench_cnn_detector(
    photos: &Path,
    cnn: &Path,
    table: &mut Vec<Row>,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let sample = every_nth_photo(photos, 28)?;
    let mut a = vec![cnn.display().to_string(), "0,1".into()];
    a.extend(sample.clone());
    let (ours, peer) = ours_and_peer("dlib-dnn", "bench_mmod", &a, "dlib", DLIB_MMOD)?;
    let peer = peer.unwrap_or_else(|| {
        eprintln!(
            "bench: `import dlib` fails (pip install dlib-bin): no peer for the CNN detector"
        );
        Vec::new()
    });
    for o in &ours {
        let up = o["upsample"].as_u64().unwrap_or(0);
        let rate = o["photos_per_second"].as_f64().unwrap_or(0.0);
        let p = peer
            .iter()
            .find(|p| p["upsample"].as_u64() == Some(up))
            .and_then(|p| p["photos_per_second"].as_f64());
        table.push((
            format!("CNN face detector, upsample {up} ({} photos)", sample.len()),
            format!("{rate:.2} photos/s"),
            p.map(|p| format!("dlib {p:.2} photos/s"))
                .unwrap_or_else(|| "-".into()),
            p.map(|p| ratio(rate, p)).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok((ours, peer))
}

/// `bench bottleneck`: both teachers' forward passes (candle ops and the NHWC kernels)
/// against torchvision's Inception-v3 and dlib's own face descriptor.
fn bench_bottleneck(table: &mut Vec<Row>) -> Result<Value> {
    let weights = shared_dir()
        .map(|s| s.join("models/inception-v3-nsfwjs/model.safetensors"))
        .filter(|p| p.exists())
        .context("bench bottleneck needs ../shared/models/inception-v3-nsfwjs")?;
    let batches: Vec<String> = ["1", "8", "32"].iter().map(|s| s.to_string()).collect();
    let (ours, peer) = bench_inception(&weights, &batches, table)?;
    let shared = shared_dir().context("bench bottleneck needs ../shared")?;
    let (face, dlib) = bench_face(&shared, &batches, table)?;
    Ok(json!({"candle": ours, "torch": peer, "face": face, "dlib": dlib}))
}

/// Inception-v3 on random images at each batch size, against torchvision.
fn bench_inception(
    weights: &Path,
    batches: &[String],
    table: &mut Vec<Row>,
) -> Result<(Vec<Value>, Option<Vec<Value>>)> {
    let mut a = vec![weights.display().to_string()];
    a.extend(batches.iter().cloned());
    let (ours, peer) = ours_and_peer(
        "inception-bottleneck",
        "bench_bottleneck",
        &a,
        "torch, torchvision, safetensors",
        TORCH_INCEPTION,
    )?;
    for (i, r) in ours.iter().enumerate() {
        let o = r["images_per_second"].as_f64().unwrap_or(0.0);
        let c = r["candle_ops_images_per_second"].as_f64().unwrap_or(0.0);
        table.push((
            format!("inception-v3 batch {} (candle ops)", r["batch"]),
            format!("{c:.2} images/s"),
            format!("NHWC kernels {o:.2}"),
            ratio(o, c),
        ));
        let p = peer
            .as_ref()
            .and_then(|p| p.get(i))
            .and_then(|p| p["images_per_second"].as_f64());
        table.push((
            format!("inception-v3 batch {}", r["batch"]),
            format!("{o:.2} images/s"),
            p.map(|p| format!("torch {p:.2}"))
                .unwrap_or_else(|| "torch not importable".into()),
            p.map(|p| ratio(o, p)).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok((ours, peer))
}

/// The face teacher on dlib's fixture chips, against dlib's own Python module.
fn bench_face(
    shared: &Path,
    batches: &[String],
    table: &mut Vec<Row>,
) -> Result<(Vec<Value>, Option<Vec<Value>>)> {
    let f = face_bench_args(shared, batches);
    let (face, dlib) = ours_and_peer(
        "dlib-dnn",
        "bench_face",
        &f,
        "dlib, numpy, safetensors",
        DLIB_FACE,
    )?;
    for (i, r) in face.iter().enumerate() {
        let o = r["chips_per_second"].as_f64().unwrap_or(0.0);
        let c = r["candle_ops_chips_per_second"].as_f64().unwrap_or(0.0);
        table.push((
            format!("dlib face resnet batch {} (candle ops)", r["batch"]),
            format!("{c:.2} chips/s"),
            format!(
                "NHWC kernels {o:.2} ({:.1} GFLOP/s)",
                r["gflop_per_second"].as_f64().unwrap_or(0.0)
            ),
            ratio(o, c),
        ));
        let p = dlib.as_ref().and_then(|p| p.get(i));
        let pr = p.and_then(|p| p["chips_per_second"].as_f64());
        table.push((
            format!("dlib face resnet batch {}", r["batch"]),
            format!("{o:.2} chips/s"),
            pr.map(|x| {
                format!(
                    "dlib {x:.2} ({} threads)",
                    p.map(|p| p["threads"].clone()).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "dlib not importable (pip install dlib-bin)".into()),
            pr.map(|x| ratio(o, x)).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok((face, dlib))
}

/// dlib-dnn's `bench_face` arguments: the face descriptor's model, dlib's fixture chips,
/// then the batch sizes.
fn face_bench_args(shared: &Path, batches: &[String]) -> Vec<String> {
    let mut args = vec![
        shared
            .join("models/dlib/dlib_face_recognition_resnet_model_v1.dat")
            .display()
            .to_string(),
        shared
            .join("fixtures/dlib-face-recognition/reference.safetensors")
            .display()
            .to_string(),
    ];
    args.extend(batches.iter().cloned());
    args
}

/// `bench train`: student training steps against the same network in PyTorch.
fn bench_train(table: &mut Vec<Row>) -> Result<Value> {
    // Rounds alternate between us and the peer, one run per batch size each, so that
    // the load of a shared VM falls on both sides; each side's figure is its median.
    const ROUNDS: usize = 3;
    let batches = [20usize, 64];
    let has_torch = python_has("torch");
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
    let mut peer: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
    let once: Vec<String> = ["--runs".to_string(), "1".to_string()]
        .into_iter()
        .chain(batches.map(|b| b.to_string()))
        .collect();
    for _ in 0..ROUNDS {
        for (i, r) in example("train", "bench_train", &once)?.iter().enumerate() {
            ours[i].push(r["samples_per_second"].as_f64().unwrap_or(0.0));
        }
        if has_torch {
            for (i, r) in python(TORCH_TRAIN, &once[1..])?.iter().enumerate() {
                peer[i].push(r["samples_per_second"].as_f64().unwrap_or(0.0));
            }
        }
    }
    let mut rows = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let o = median(&ours[i]);
        let p = has_torch.then(|| median(&peer[i]));
        table.push((
            format!("student training batch {b}"),
            format!("{o:.1} samples/s"),
            p.map(|p| format!("torch {p:.1}"))
                .unwrap_or_else(|| "torch not importable".into()),
            p.map(|p| ratio(o, p)).unwrap_or_else(|| "-".into()),
        ));
        rows.push(json!({
            "batch": b,
            "candle": {"samples_per_second": o, "runs": ours[i]},
            "torch": p.map(|p| json!({"samples_per_second": p, "runs": peer[i]})),
        }));
    }
    Ok(json!({"rounds": ROUNDS, "interleaved": true, "batches": rows}))
}

/// `bench student`: the students' CPU throughput at batch 32 (eval) against the face
/// teacher's on the same CPU in the same run: a distilled student is only worth having when
/// it is much cheaper than the teacher it imitates (#25: at least 5x).
fn bench_student(table: &mut Vec<Row>) -> Result<Value> {
    let students = example("model", "student_speed", &["32".into(), THREADS.into()])?;
    let teacher = match shared_dir() {
        Some(shared) => {
            let args = face_bench_args(&shared, &["32".into()]);
            example("dlib-dnn", "bench_face", &args)?.into_iter().next()
        }
        None => None,
    };
    let chips = teacher
        .as_ref()
        .and_then(|t| t["chips_per_second"].as_f64());
    for s in &students {
        let ips = s["images_per_s"].as_f64().unwrap_or(0.0);
        table.push((
            format!(
                "student {} ({:.0} MFLOP, {:.2} M params) batch 32",
                s["student"].as_str().unwrap_or(""),
                s["mflop_per_image"].as_f64().unwrap_or(0.0),
                s["parameters"].as_f64().unwrap_or(0.0) / 1e6
            ),
            format!("{ips:.0} images/s"),
            chips
                .map(|c| format!("dlib face teacher {c:.1} chips/s"))
                .unwrap_or_else(|| "teacher needs ../shared".into()),
            chips.map(|c| ratio(ips, c)).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok(json!({"students": students, "face_teacher": teacher}))
}

/// `bench tsne`: our t-SNE against openTSNE at two sizes, both maps scored by our exact KL.
fn bench_tsne(dir: &Path, table: &mut Vec<Row>) -> Result<Value> {
    let mut rows = Vec::new();
    for n in [1000usize, 5000] {
        rows.push(tsne_once(dir, n, table)?);
    }
    Ok(json!(rows))
}

fn tsne_once(dir: &Path, n: usize, table: &mut Vec<Row>) -> Result<Value> {
    let dump = dir.join(format!("tsne-{n}.f32"));
    let ours = example(
        "eval-tsne",
        "bench_tsne",
        &[n.to_string(), dump.display().to_string()],
    )?;
    let o = ours.first().cloned().unwrap_or(Value::Null);
    let map = dir.join(format!("opentsne-{n}.f64"));
    let peer = if python_has("openTSNE, numpy") {
        let args = [
            dump.display().to_string(),
            n.to_string(),
            map.display().to_string(),
        ];
        let mut p = python(OPENTSNE, &args)?.first().cloned();
        // openTSNE's own KL estimate is not ours: score its map with our exact KL.
        let kl = example(
            "eval-tsne",
            "bench_tsne",
            &[n.to_string(), "--kl-of".into(), map.display().to_string()],
        )?;
        if let (Some(p), Some(k)) = (p.as_mut(), kl.first()) {
            p["kl"] = k["kl"].clone();
        }
        p
    } else {
        None
    };
    let (os, ok) = (
        o["seconds"].as_f64().unwrap_or(0.0),
        o["kl"].as_f64().unwrap_or(0.0),
    );
    let ps = peer.as_ref().and_then(|p| p["seconds"].as_f64());
    let pk = peer.as_ref().and_then(|p| p["kl"].as_f64());
    table.push((
        format!("t-SNE N={n} (2048-d)"),
        format!("{os:.1} s, KL {ok:.3}"),
        match (ps, pk) {
            (Some(s), Some(k)) => format!("openTSNE {s:.1} s, KL {k:.3}"),
            _ => "openTSNE not importable".into(),
        },
        match (ps, pk) {
            (Some(s), Some(k)) => format!(
                "{:.2}x faster, KL {:+.1}%",
                s / os.max(1e-9),
                100.0 * (ok / k - 1.0)
            ),
            _ => "-".into(),
        },
    ));
    let _ = std::fs::remove_file(&dump);
    let _ = std::fs::remove_file(&map);
    Ok(json!({"ours": o, "opentsne": peer}))
}

/// The models `bench predict` times: label, train mode, train flags, predict flags.
const PREDICT_MODELS: [(&str, &str, &[&str], &[&str]); 4] = [
    (
        "student (base, no teacher)",
        "base",
        &["--epochs", "2"],
        &[],
    ),
    (
        "student (face cosine; teacher for the unknown rule)",
        "cosine",
        &["--epochs", "2"],
        &[],
    ),
    ("probe (face teacher)", "probe", &["--epochs", "8"], &[]),
    (
        "probe, --main-face",
        "probe",
        &["--epochs", "8"],
        &["--main-face"],
    ),
];

/// `bench predict`: photos/s end to end for a student and a probe, trained here (short)
/// on a pipeline run's faces and face descriptors, on every 7th msceleb photo.
fn bench_predict(args: &[String], dir: &Path, table: &mut Vec<Row>) -> Result<Value> {
    let shared = shared_dir().context("bench predict needs ../shared/data/msceleb-samples")?;
    let pipeline = pipeline_dir(args)?;
    run_capture(cargo().args(["build", "--release", "-q", "-p", "train", "-p", "predict"]))?;
    let work = dir.join("predict");
    std::fs::create_dir_all(&work)?;
    let sample = every_nth_photo(&shared.join("data/msceleb-samples"), 7)?;
    let mut runs = Vec::new();
    let mut trained = std::collections::BTreeSet::new();
    for (label, mode, extra, predict_extra) in PREDICT_MODELS {
        let ck = work.join(format!("{mode}.safetensors"));
        if trained.insert(mode) {
            train_for_predict(&pipeline, mode, extra, &ck)?;
        }
        let t = time_predict(&work, mode, &ck, predict_extra, &sample)?;
        table.push((
            format!("predict, {label} ({} photos)", sample.len()),
            format!(
                "{:.1} photos/s",
                t["photos_per_second"].as_f64().unwrap_or(0.0)
            ),
            format!("most time: {}", t["dominant"].as_str().unwrap_or("?")),
            "-".into(),
        ));
        runs.push(json!({"model": label, "timings": t}));
    }
    let peer = predict_peer(&shared, &sample, &runs, table)?;
    Ok(
        json!({"pipeline": pipeline, "photos": sample.len(), "runs": runs, "dlib_face_recognition_recipe": peer}),
    )
}

/// dlib's Chinese whispers on the same descriptors and link (dlib's Python module).
const DLIB_GROUP: &str = r#"
import sys, time, json, numpy as np, dlib
rows = np.fromfile(sys.argv[1], dtype='<f4').reshape(int(sys.argv[2]), -1)
vs = [dlib.vector(r.astype(float).tolist()) for r in rows]
times = []
for _ in range(5):
    t = time.time(); labels = dlib.chinese_whispers_clustering(vs, float(sys.argv[3])); times.append(time.time() - t)
times.sort()
print(json.dumps({"group_seconds": times[2], "groups": len(set(labels))}))
"#;

/// `bench group`: `predict --group-unknowns`'s clustering of 1,000 unknown faces (their
/// descriptors computed: a pipeline run's face descriptors), against dlib's own.
fn bench_group(args: &[String], dir: &Path, table: &mut Vec<Row>) -> Result<Value> {
    let pipeline = pipeline_dir(args)?;
    let rows = dir.join("group-descriptors.f32");
    let n = 1000;
    let ours = example(
        "predict",
        "bench_group",
        &[
            pipeline
                .join("bottlenecks-face.safetensors")
                .display()
                .to_string(),
            n.to_string(),
            rows.display().to_string(),
        ],
    )?;
    let ours = ours
        .first()
        .cloned()
        .context("bench_group printed nothing")?;
    let secs = ours["group_seconds"].as_f64().unwrap_or(0.0);
    let peer = if python_has("dlib, numpy") {
        let link = ours["link"].as_f64().unwrap_or(0.6).to_string();
        python(
            DLIB_GROUP,
            &[rows.display().to_string(), n.to_string(), link],
        )?
        .first()
        .cloned()
    } else {
        None
    };
    let p = peer.as_ref().and_then(|p| p["group_seconds"].as_f64());
    table.push((
        format!("group {n} unknown faces"),
        format!("{secs:.3} s ({} groups)", ours["groups"]),
        p.map(|p| format!("dlib {p:.3} s"))
            .unwrap_or_else(|| "dlib not importable (pip install dlib-bin)".into()),
        p.map(|p| ratio(p, secs)).unwrap_or_else(|| "-".into()),
    ));
    Ok(json!({"ours": ours, "dlib": peer}))
}

/// `--pipeline DIR`, else CI's or the default run folder when it has face descriptors.
fn pipeline_dir(args: &[String]) -> Result<PathBuf> {
    crate::util::flag_value(args, "--pipeline")
        .map(PathBuf::from)
        .or_else(|| {
            ["target/ci-pipeline", "data/artifacts"]
                .map(PathBuf::from)
                .into_iter()
                .find(|d| d.join("bottlenecks-face.safetensors").exists())
        })
        .context("bench predict needs a pipeline run with the face teacher (--pipeline DIR: faces.safetensors, bottlenecks-face.safetensors)")
}

/// A short training of `mode` on the pipeline run's faces and face descriptors.
fn train_for_predict(pipeline: &Path, mode: &str, extra: &[&str], ck: &Path) -> Result<()> {
    run_capture(
        Command::new("target/release/train")
            .arg(format!("--{mode}"))
            .arg("--faces")
            .arg(pipeline.join("faces.safetensors"))
            .arg("--bottlenecks")
            .arg(pipeline.join("bottlenecks-face.safetensors"))
            .args(["--min-steps", "0", "--device", "cpu", "--jobs", THREADS])
            .args(extra)
            .arg("--output")
            .arg(ck),
    )?;
    Ok(())
}

/// predict on the sample with the model `ck`; returns its `--timings` JSON.
fn time_predict(
    work: &Path,
    mode: &str,
    ck: &Path,
    predict_extra: &[&str],
    sample: &[String],
) -> Result<Value> {
    let timings = work.join(format!("{mode}.timings.json"));
    run_capture(
        Command::new("target/release/predict")
            .arg("--model")
            .arg(ck)
            .args(predict_extra)
            .args([
                "--device", "cpu", "--jobs", THREADS, "--format", "json", "--output",
            ])
            .arg(work.join(format!("{mode}.json")))
            .arg("--timings")
            .arg(&timings)
            .args(sample),
    )?;
    Ok(serde_json::from_str(&std::fs::read_to_string(&timings)?)?)
}

/// face_recognition's recipe in dlib's Python module on the same photos, set against
/// the probes (None when dlib does not import).
fn predict_peer(
    shared: &Path,
    sample: &[String],
    runs: &[Value],
    table: &mut Vec<Row>,
) -> Result<Option<Value>> {
    let peer = if python_has("dlib, numpy") {
        let mut a = vec![
            "/usr/share/dlib/shape_predictor_68_face_landmarks.dat".to_string(),
            shared
                .join("models/dlib/dlib_face_recognition_resnet_model_v1.dat")
                .display()
                .to_string(),
        ];
        a.extend(sample.iter().cloned());
        python(DLIB_RECOGNISE, &a)?.into_iter().next()
    } else {
        eprintln!("bench: `import dlib` fails (pip install dlib-bin): no peer for predict");
        None
    };
    if let Some(p) = &peer {
        let theirs = p["photos_per_second"].as_f64().unwrap_or(1.0);
        for r in runs {
            let model = r["model"].as_str().unwrap_or("");
            if !model.starts_with("probe") {
                continue;
            }
            let ours = r["timings"]["photos_per_second"].as_f64().unwrap_or(0.0);
            table.push((
                format!("  {model} vs face_recognition's recipe"),
                format!("{ours:.1} photos/s"),
                format!("dlib HOG+68+descriptor {theirs:.1} photos/s"),
                ratio(ours, theirs),
            ));
        }
    }
    Ok(peer)
}
