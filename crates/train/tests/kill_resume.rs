//! The `train` binary killed mid-run (SIGKILL: no chance to clean up), then run again with
//! `--resume`, ends with the same weights and the same metrics log as a run never stopped.
#![cfg(unix)]

use artifacts::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

/// The shared synthetic data set (90 images), written as artifacts.
fn write_artifacts(dir: &Path) -> (PathBuf, PathBuf) {
    let data = common::dataset(30);
    let fp = dir.join("faces.safetensors");
    data.faces.write(&fp).unwrap();
    let mut b = data.teacher.expect("the data set has teacher features");
    b.faces_digest = artifacts::digest_file(&fp).unwrap();
    let bp = dir.join("bottlenecks.safetensors");
    b.write(&bp).unwrap();
    (fp, bp)
}

fn train_cmd(dir: &Path, name: &str, faces: &Path, bottlenecks: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.args([
        "--cosine",
        "--epochs",
        "8",
        "--min-steps",
        "0",
        "--batch",
        "4",
    ])
    .args([
        "--patience",
        "0",
        "--jobs",
        "2",
        "--device",
        "cpu",
        "--seed",
        "5",
    ])
    .arg("--faces")
    .arg(faces)
    .arg("--bottlenecks")
    .arg(bottlenecks)
    .arg("--output")
    .arg(dir.join(format!("{name}.safetensors")))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    c
}

/// The metrics log's complete lines, with the wall-clock field zeroed.
fn log(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(dir.join(format!("{name}.metrics.jsonl"))).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            let mut m: serde_json::Value = serde_json::from_str(l).unwrap();
            m["seconds"] = 0.into();
            m
        })
        .collect()
}

#[test]
fn killed_mid_epoch_then_resumed_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (faces, bottlenecks) = write_artifacts(d);
    let status = train_cmd(d, "whole", &faces, &bottlenecks)
        .status()
        .unwrap();
    assert!(status.success());
    let whole = log(d, "whole");
    assert_eq!(whole.len(), 8);

    // Kill halfway through the third epoch (timed from the first two).
    let mut child = train_cmd(d, "parts", &faces, &bottlenecks).spawn().unwrap();
    let t0 = Instant::now();
    while log(d, "parts").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let epoch = t0.elapsed() / 2;
    std::thread::sleep(epoch / 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let done = log(d, "parts").len();
    assert!(done < 8, "the kill came after the run ended");
    assert!(
        !d.join("parts.safetensors").exists(),
        "no final checkpoint from a killed run"
    );

    let status = train_cmd(d, "parts", &faces, &bottlenecks)
        .arg("--resume")
        .status()
        .unwrap();
    assert!(status.success());
    let a = Checkpoint::read(&d.join("whole.safetensors")).unwrap();
    let b = Checkpoint::read(&d.join("parts.safetensors")).unwrap();
    assert_eq!(a.weights, b.weights, "killed at epoch {done}");
    assert_eq!(whole, log(d, "parts"));
}
