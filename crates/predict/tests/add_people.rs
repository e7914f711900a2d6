//! Closing the loop from unknown faces to a model that knows them (needs ../shared; two
//! pipeline runs, ~10 min on 2 cores, so not part of `cargo xtask ci`):
//!
//! `cargo test --release -p predict --test add_people -- --ignored --nocapture`
//!
//! The study's 4x20 crops are four people none of msceleb-samples' 14: 15 photos of each
//! go through `predict --group-unknowns` with the pipeline's face probe; each group is
//! named by the person most of its faces are (the user looking at its montage) and the
//! faces of anyone else deleted (the user's cleaning); `cargo xtask pipeline --add` adds
//! them and trains again. The new model must name the 5 held-back photos of each of the
//! four (>= 0.9), and lose at most 1 point on the 14 people's test faces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELD_BACK: usize = 5;

/// `cargo xtask pipeline` with the face teacher's probe only, from the workspace root.
fn pipeline(data: &Path, out: &Path, add: Option<&Path>) -> serde_json::Value {
    let shared = test_support::shared();
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(test_support::workspace_root())
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "xtask",
            "--",
            "pipeline",
            "--data",
        ])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--teachers", "face", "--modes", "probe", "--device", "cpu"])
        .arg("--face-teacher")
        .arg(test_support::descriptor_model())
        .arg("--cnn-model")
        .arg(shared.join("models/dlib/mmod_human_face_detector.dat"));
    if let Some(g) = add {
        c.arg("--add").arg(g);
    }
    let status = c.status().unwrap();
    assert!(status.success(), "pipeline failed");
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// The probe's test accuracy over `classes` only, from its evaluation's per-class recall.
fn accuracy_on(summary: &serde_json::Value, classes: &[String]) -> (f64, usize) {
    let row = &summary["best"];
    let dir = PathBuf::from(row["eval_dir"].as_str().unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let (mut right, mut all) = (0.0, 0usize);
    for c in report["test"]["per_class"].as_array().unwrap() {
        if classes.iter().any(|k| c["class"] == k.as_str()) {
            let n = c["support"].as_u64().unwrap() as usize;
            right += c["recall"].as_f64().unwrap() * n as f64;
            all += n;
        }
    }
    (right / all.max(1) as f64, all)
}

fn link(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(std::fs::canonicalize(from).unwrap(), to).unwrap();
}

#[test]
#[ignore = "needs ../shared (msceleb-samples, seed-4x20, dlib's models); ~10 min"]
fn named_groups_teach_the_model_new_people() {
    let shared = test_support::shared();
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    std::fs::create_dir_all(&data).unwrap();
    let mut known = Vec::new();
    for e in std::fs::read_dir(shared.join("data/msceleb-samples"))
        .unwrap()
        .flatten()
    {
        link(&e.path(), &data.join(e.file_name()));
        known.push(e.file_name().to_string_lossy().into_owned());
    }
    // 15 photos of each new person to group, 5 held back.
    let strangers = tmp.path().join("strangers");
    let mut held_back: Vec<(PathBuf, String)> = Vec::new();
    let corpus = shared.join("data/seed-4x20/crop_4_20/corpus");
    for e in std::fs::read_dir(&corpus).unwrap().flatten() {
        let person = e.file_name().to_string_lossy().into_owned();
        let mut photos: Vec<PathBuf> = std::fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .map(|f| f.path())
            .collect();
        photos.sort();
        let cut = photos.len() - HELD_BACK;
        std::fs::create_dir_all(strangers.join(&person)).unwrap();
        for p in &photos[..cut] {
            link(p, &strangers.join(&person).join(p.file_name().unwrap()));
        }
        held_back.extend(photos[cut..].iter().map(|p| (p.clone(), person.clone())));
    }
    let before = pipeline(&data, &out, None);
    let (acc_before, n_before) = accuracy_on(&before, &known);
    let ck = before["best"]["checkpoint"].as_str().unwrap().to_string();

    let groups = tmp.path().join("groups");
    let predict = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(env!("CARGO_BIN_EXE_predict"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let t = std::time::Instant::now();
    predict(&[
        "--model".as_ref(),
        ck.as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--format".as_ref(),
        "csv".as_ref(),
        "--group-unknowns".as_ref(),
        groups.as_os_str(),
        strangers.as_os_str(),
    ]);
    let group_seconds = t.elapsed().as_secs_f64();
    // The user: each group named by whom most of its faces are, the others' faces deleted.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(groups.join("groups.json")).unwrap())
            .unwrap();
    let (mut named, mut deleted, mut grouped) = (0, 0, 0);
    let mut names: Vec<String> = Vec::new();
    for g in record["groups"].as_array().unwrap() {
        let folder = groups.join(g["group"].as_str().unwrap());
        let who = |f: &serde_json::Value| {
            let p = PathBuf::from(f["photo"].as_str().unwrap());
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        let faces = g["faces"].as_array().unwrap();
        for f in faces {
            *votes.entry(who(f)).or_default() += 1;
        }
        let (person, _) = votes.iter().max_by_key(|(_, n)| **n).unwrap();
        for f in faces {
            grouped += 1;
            if who(f) != *person {
                std::fs::remove_file(folder.join(f["face"].as_str().unwrap())).unwrap();
                deleted += 1;
            }
        }
        // The first group of a person is renamed; another group of the same person keeps
        // its folder and is named on the command line (both join one person).
        let name = format!("new-{person}");
        if groups.join(&name).exists() {
            names.push(format!("{}={name}", g["group"].as_str().unwrap()));
        } else {
            std::fs::rename(&folder, groups.join(&name)).unwrap();
        }
        named += 1;
    }
    let mut args: Vec<std::ffi::OsString> = vec!["--add-groups".into(), groups.clone().into()];
    args.extend(["--data".into(), data.clone().into()]);
    for n in &names {
        args.extend(["--name".into(), n.into()]);
    }
    let t = std::time::Instant::now();
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    println!("{}", predict(&refs));
    let add_seconds = t.elapsed().as_secs_f64();
    // Adding the same groups again is refused, and changes nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(&refs)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already added"));

    let t = std::time::Instant::now();
    let after = pipeline(&data, &out, None);
    let retrain_seconds = t.elapsed().as_secs_f64();
    let (acc_after, n_after) = accuracy_on(&after, &known);
    let ck = after["best"]["checkpoint"].as_str().unwrap().to_string();
    let photos: Vec<&std::ffi::OsStr> = held_back.iter().map(|(p, _)| p.as_os_str()).collect();
    let mut a: Vec<&std::ffi::OsStr> = vec![
        "--model".as_ref(),
        ck.as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--closed-set".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
    ];
    a.extend(photos);
    let res: serde_json::Value = serde_json::from_str(&predict(&a)).unwrap();
    let mut right = 0;
    for (photo, (_, person)) in res["photos"].as_array().unwrap().iter().zip(&held_back) {
        let got = photo["faces"][0]["person"].as_str().unwrap_or("");
        right += usize::from(got == format!("new-{person}"));
    }
    let new_acc = right as f64 / held_back.len() as f64;
    println!(
        "add: {grouped} of 60 faces grouped into {named} groups ({deleted} deleted as not the \
         group's person) in {group_seconds:.1}s; added in {add_seconds:.1}s; pipeline again \
         {retrain_seconds:.0}s (stages run: {}); held-back photos of the 4 new people named \
         {right}/{} ({new_acc:.3}); the 14 people's test accuracy {acc_before:.3} ({n_before} \
         faces) -> {acc_after:.3} ({n_after} faces)",
        after["stages_run"],
        held_back.len()
    );
    assert!(new_acc >= 0.9, "{new_acc}");
    assert!(
        acc_after >= acc_before - 0.01,
        "{acc_before} -> {acc_after}"
    );
}
