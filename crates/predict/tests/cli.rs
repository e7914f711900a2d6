//! Hermetic: the `predict` binary on photos the test paints, with a model trained on them
//! here (`--as-is` preprocessing: the photo is the face, so no detector or landmark model is
//! needed): formats, exit codes, the unknown rule, annotated copies, refused checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use test_support::training::train_short;

const CLASSES: [&str; 3] = ["red", "green", "blue"];

/// A 64x64 photo mostly of the class's colour, with a per-image pattern.
fn paint(path: &Path, class: usize, i: usize) {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        let n = ((x * 7 + y * 3 + i as u32 * 11) % 40) as u8;
        let mut p = [40 + n, 40 + n, 40 + n];
        p[class] = 180 + n;
        image::Rgb(p)
    });
    img.save(path).unwrap();
}

struct Trained {
    _dir: tempfile::TempDir,
    root: PathBuf,
    photos: PathBuf,
    model: PathBuf,
}

fn trained() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let photos = root.join("photos");
    for (c, name) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(photos.join(name)).unwrap();
        for i in 0..14 {
            paint(&photos.join(name).join(format!("{i}.png")), c, i);
        }
    }
    let faces = root.join("faces.safetensors");
    let cfg = preprocess::PreprocessConfig {
        mode: preprocess::Mode::AsIs,
        size: 32,
        mask: false,
        ..Default::default()
    };
    preprocess::run(&photos, &faces, &cfg).unwrap();
    let model = train_short(&faces, None, (train::TrainMode::Base, 10, 8), &root);
    Trained {
        _dir: dir,
        root,
        photos,
        model,
    }
}

fn predict(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `predict` on the red photos with `t`'s model in `format`, then the `extra` flags.
fn predict_red(t: &Trained, format: &str, extra: &[&str]) -> Output {
    let red = t.photos.join("red");
    let mut args = vec![
        red.as_os_str(),
        os("--model"),
        t.model.as_os_str(),
        os("--format"),
        os(format),
    ];
    args.extend(extra.iter().copied().map(os));
    predict(&args)
}

#[test]
fn usage_errors_exit_with_2() {
    assert_eq!(predict(&[]).status.code(), Some(2));
    assert_eq!(
        predict(&[os("--format"), os("xml"), os("x.jpg")])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_missing_or_foreign_model_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let photo = d.path().join("a.png");
    paint(&photo, 0, 0);
    let missing = d.path().join("nope.safetensors");
    let out = predict(&[photo.as_os_str(), os("--model"), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.safetensors"), "{err}");
    let out = predict(&[photo.as_os_str(), os("--model"), photo.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a safetensors"));
    // No model given and no pipeline run: says how to get one.
    let out = predict(&[photo.as_os_str(), os("--pipeline"), d.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo xtask pipeline"));
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    // Our fields here hold no commas or quotes.
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn photos_are_named_in_every_format_and_bad_files_reported() {
    let t = trained();
    let model = t.model.as_os_str();
    // Closed set first: every painted photo gets its folder's colour.
    let out = predict(&[
        t.photos.as_os_str(),
        os("--model"),
        model,
        os("--format"),
        os("csv"),
        os("--closed-set"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = csv_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows.len(), 3 * 14);
    let right = rows
        .iter()
        .filter(|r| r[0].contains(&format!("/{}/", r[8])))
        .count();
    assert!(right >= 40, "{right} of 42 named right");
    assert!(rows.iter().all(|r| r[1] == "ok" && r[9] == "false"));

    // JSON: the model's rule is described; the stored threshold is the checkpoint's.
    let out = predict_red(&t, "json", &[]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"]["unknown_rule"]["source"], "checkpoint");
    assert_eq!(v["model"]["unknown_rule"]["score"], "probability");
    assert_eq!(v["photos"].as_array().unwrap().len(), 14);
    assert_eq!(v["photos"][0]["faces"][0]["box"][2], 64.0);
    assert_eq!(
        v["photos"][0]["faces"][0]["top"].as_array().unwrap().len(),
        3
    );

    // --main-face: the same faces here (an --as-is model takes the photo as its face).
    let out = predict_red(&t, "csv", &["--main-face"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(csv_rows(&String::from_utf8_lossy(&out.stdout)).len(), 14);

    // A threshold of 0 on (1 - probability) calls every face unknown.
    let out = predict_red(&t, "csv", &["--unknown-threshold", "0"]);
    let rows = csv_rows(&String::from_utf8_lossy(&out.stdout));
    assert!(
        rows.iter()
            .all(|r| r[8] == "unknown" && r[9] == "true" && r[10] == "red"),
        "{rows:?}"
    );

    // An unreadable photo: reported with its reason, the rest still named, exit code 3.
    let mixed = t.root.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(t.photos.join("blue/0.png"), mixed.join("good.png")).unwrap();
    std::fs::write(mixed.join("bad.jpg"), b"not a jpeg").unwrap();
    std::fs::write(mixed.join("empty.png"), b"").unwrap();
    let annotated = t.root.join("annotated");
    let out = predict(&[
        mixed.as_os_str(),
        os("--model"),
        model,
        os("--annotate"),
        annotated.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains("bad.jpg") && l.contains("error: not an image")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("empty.png") && l.contains("error: empty file")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("good.png") && l.contains("blue")),
        "{table}"
    );
    // Only the readable photo has an annotated copy, the photo's size, with a box drawn.
    let copy = image::open(annotated.join("good.png")).unwrap().to_rgb8();
    assert_eq!(copy.dimensions(), (64, 64));
    let original = image::open(mixed.join("good.png")).unwrap().to_rgb8();
    assert_ne!(
        copy.get_pixel(0, 32),
        original.get_pixel(0, 32),
        "the box's edge"
    );
    assert!(!annotated.join("bad.jpg").exists());
}

#[test]
fn checkpoints_whose_settings_cannot_be_honoured_are_refused() {
    let t = trained();
    let photo = t.photos.join("red/0.png");
    let edit = |name: &str, f: &dyn Fn(&mut artifacts::Checkpoint)| -> String {
        let mut ck = artifacts::Checkpoint::read(&t.model).unwrap();
        f(&mut ck);
        let p = t.root.join(name);
        ck.write(&p).unwrap();
        let out = predict(&[photo.as_os_str(), os("--model"), p.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = edit("old.safetensors", &|ck| {
        ck.model_config.as_object_mut().unwrap().remove("recipe");
    });
    assert!(e.contains("records no preprocessing"), "{e}");
    let e = edit("other.safetensors", &|ck| {
        ck.provenance.producer_version = "9.9.9+exe.0".into();
    });
    assert!(e.contains("made by celeb-transfer 9.9.9"), "{e}");
    let e = edit("moved.safetensors", &|ck| {
        ck.model_config["recipe"]["faces"]["config"]["mode"] = "align".into();
        ck.model_config["recipe"]["faces"]["config"]["landmarks"] = "/nowhere/landmarks.dat".into();
    });
    assert!(e.contains("/nowhere/landmarks.dat"), "{e}");
    let e = edit("teacherless.safetensors", &|ck| {
        ck.model_config["kind"] = "probe".into();
    });
    assert!(e.contains("probe"), "{e}");
}
