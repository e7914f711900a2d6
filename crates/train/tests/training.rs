//! Training on small synthetic data: the student fits, the mean image is the training
//! split's, runs are deterministic, resume equals an uninterrupted run, NaN stops cleanly.

use artifacts::Checkpoint;
use std::path::Path;
use train::training::{BottleneckSource, Schedule};
use train::{Partition, RunFiles, TargetNorm, TrainConfig, TrainError, TrainMode};

mod common;
use common::{dataset, SIZE};

fn cfg(mode: TrainMode) -> TrainConfig {
    TrainConfig {
        mode,
        epochs: 12,
        phase1_epochs: 4,
        min_steps: 0,
        batch: 8,
        patience: 0,
        schedule: Schedule::Cosine,
        bottleneck_source: BottleneckSource::Pre,
        target_norm: TargetNorm::Standardize,
        // The fitting tests are about the objectives; determinism covers augmentation.
        augment: false,
        device: kernels::device::DeviceChoice::Cpu,
        optim: train::optim::AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn files(dir: &Path, name: &str) -> RunFiles {
    let mut f = RunFiles::beside(&dir.join(format!("{name}.safetensors")));
    f.progress = false;
    f
}

fn metrics(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("{name}.metrics.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// [`metrics`] with the timings zeroed: what two equal runs must log alike.
fn metrics_untimed(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    metrics(dir, name)
        .into_iter()
        .map(|mut m| {
            m["seconds"] = 0.into();
            m
        })
        .collect()
}

#[test]
fn every_mode_fits_the_synthetic_data() {
    let data = dataset(20);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    for mode in [
        TrainMode::Base,
        TrainMode::TwoStep,
        TrainMode::Cosine,
        TrainMode::Probe,
    ] {
        let out = train::train(&data, &cfg(mode), &part, &files(dir.path(), mode.name())).unwrap();
        let acc = out.test_acc.unwrap();
        assert!(acc >= 0.8, "{}: test accuracy {acc}", mode.name());
        if mode != TrainMode::Probe {
            let m = metrics(dir.path(), mode.name());
            let last = m.last().unwrap();
            let first = m.iter().find(|e| e["phase"] == last["phase"]).unwrap();
            assert!(
                last["loss"].as_f64() < first["loss"].as_f64(),
                "{}: loss did not fall",
                mode.name()
            );
            assert!(last["train_acc"].as_f64().unwrap() >= first["train_acc"].as_f64().unwrap());
            assert!(last["lr"].is_number() && last["seconds"].is_number());
        }
    }
    let m = metrics(dir.path(), "cosine");
    assert!(m[0]["cosine"].is_number() && m[0]["cross_entropy"].is_number());
    let m = metrics(dir.path(), "two-step");
    assert!(m[0]["mse"].is_number() && m.last().unwrap()["cross_entropy"].is_number());
}

#[test]
fn mean_image_comes_from_the_training_split_and_is_stored() {
    let data = dataset(10);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    train::train(
        &data,
        &TrainConfig {
            epochs: 1,
            ..cfg(TrainMode::Base)
        },
        &part,
        &files(dir.path(), "m"),
    )
    .unwrap();
    let ck = Checkpoint::read(&dir.path().join("m.safetensors")).unwrap();
    assert_eq!(ck.mean_image.shape, vec![SIZE, SIZE, 3]);
    let want = data.mean_image(&part.train);
    assert_eq!(ck.mean_image.data, want);
    let all: Vec<usize> = (0..data.faces.len()).collect();
    assert_ne!(
        data.mean_image(&all),
        want,
        "test/val images must not leak into the mean"
    );
    // The input really is mean-subtracted: a training image equal to the mean is all zeros.
    let x = train::data::input_batch(
        &data.faces,
        &[0],
        &vec![0.0; SIZE * SIZE * 3],
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let y = train::data::input_batch(&data.faces, &[0], &want, None, &candle_core::Device::Cpu)
        .unwrap();
    let dx = (x - y)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(dx > 0.1);
}

#[test]
fn same_seed_same_result() {
    let data = dataset(10);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        epochs: 3,
        augment: true,
        ..cfg(TrainMode::Cosine)
    };
    train::train(&data, &c, &part, &files(dir.path(), "a")).unwrap();
    train::train(&data, &c, &part, &files(dir.path(), "b")).unwrap();
    let a = Checkpoint::read(&dir.path().join("a.safetensors")).unwrap();
    let b = Checkpoint::read(&dir.path().join("b.safetensors")).unwrap();
    assert_eq!(a.weights, b.weights);
    assert_eq!(
        metrics_untimed(dir.path(), "a"),
        metrics_untimed(dir.path(), "b")
    );
    train::train(
        &data,
        &TrainConfig { seed: 7, ..c },
        &part,
        &files(dir.path(), "c"),
    )
    .unwrap();
    let c7 = Checkpoint::read(&dir.path().join("c.safetensors")).unwrap();
    assert_ne!(a.weights, c7.weights, "another seed, other weights");
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let data = dataset(10);
    let part = Partition {
        ..train::stored_partition(&data)
    };
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        epochs: 4,
        phase1_epochs: 3,
        augment: true,
        ..cfg(TrainMode::TwoStep)
    };
    train::train(&data, &c, &part, &files(dir.path(), "whole")).unwrap();
    // Killed after 2 epochs (phase 1), then after 2 more (into phase 2), then finished.
    let mut f = files(dir.path(), "parts");
    f.interrupt_after = Some(2);
    assert!(matches!(
        train::train(&data, &c, &part, &f),
        Err(TrainError::Interrupted(2))
    ));
    assert!(
        !dir.path().join("parts.safetensors").exists(),
        "no final checkpoint yet"
    );
    f.resume = true;
    assert!(matches!(
        train::train(&data, &c, &part, &f),
        Err(TrainError::Interrupted(2))
    ));
    // As if killed after logging the next epoch but before checkpointing it, and again
    // halfway through writing a line: resuming must not log that epoch twice.
    let log = dir.path().join("parts.metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    let mut next: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    next["epoch"] = (next["epoch"].as_u64().unwrap() + 1).into();
    text.push_str(&format!("{next}\n{{\"phase\":2,\"ep"));
    std::fs::write(&log, text).unwrap();
    f.interrupt_after = None;
    train::train(&data, &c, &part, &f).unwrap();
    let whole = Checkpoint::read(&dir.path().join("whole.safetensors")).unwrap();
    let parts = Checkpoint::read(&dir.path().join("parts.safetensors")).unwrap();
    assert_eq!(whole.weights, parts.weights);
    assert_eq!(
        metrics_untimed(dir.path(), "whole"),
        metrics_untimed(dir.path(), "parts")
    );
    // Resuming with other settings is refused.
    let other = TrainConfig { beta: 0.5, ..c };
    let mut f2 = files(dir.path(), "parts");
    f2.resume = true;
    assert!(matches!(
        train::train(&data, &other, &part, &f2),
        Err(TrainError::Config(_))
    ));
}

#[test]
fn nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let data = dataset(10);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    let good = TrainConfig {
        epochs: 2,
        ..cfg(TrainMode::Base)
    };
    let mut f = files(dir.path(), "nan");
    train::train(&data, &good, &part, &f).unwrap();
    let before = std::fs::read(dir.path().join("nan.resume.safetensors")).unwrap();
    let bad = TrainConfig {
        optim: train::optim::AdamWConfig {
            lr: 1e38,
            ..Default::default()
        },
        ..good
    };
    f.resume = false;
    let err = train::train(&data, &bad, &part, &f).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{msg}");
    assert!(msg.contains("epoch") && msg.contains("batch"), "{msg}");
    // The failed run wrote no epoch, so the last good checkpoint file is intact.
    assert_eq!(
        std::fs::read(dir.path().join("nan.resume.safetensors")).unwrap(),
        before
    );
}

/// Flipped training images take the teacher's mirrored views as targets when the
/// bottlenecks hold them: views equal to the unflipped ones train exactly as no views do
/// (same rows, same standardisation), other views change the run, and without
/// augmentation nothing is flipped, so the views are not used.
#[test]
fn flipped_images_get_the_mirrored_targets() {
    let plain = dataset(10);
    let part = train::stored_partition(&plain);
    let dir = tempfile::tempdir().unwrap();
    let with_views = |views: Vec<f32>| {
        let mut d = dataset(10);
        d.teacher.as_mut().unwrap().mirrored = Some(views);
        d
    };
    let features = plain.teacher.as_ref().unwrap().features.clone();
    let same = with_views(features.clone());
    let other = with_views(features.iter().rev().copied().collect());
    let run = |data: &train::Dataset, augment: bool, name: &str| {
        let c = TrainConfig {
            epochs: 2,
            augment,
            ..cfg(TrainMode::Cosine)
        };
        let out = train::train(data, &c, &part, &files(dir.path(), name)).unwrap();
        let ck = Checkpoint::read(&dir.path().join(format!("{name}.safetensors"))).unwrap();
        (out.mirrored_targets, ck.weights)
    };
    let (used, w_plain) = run(&plain, true, "plain");
    assert!(!used);
    let (used, w_same) = run(&same, true, "same");
    assert!(used);
    assert_eq!(w_plain, w_same);
    let (used, w_other) = run(&other, true, "other");
    assert!(used);
    assert_ne!(w_plain, w_other);
    let (used, w_plain_noaug) = run(&plain, false, "plain-noaug");
    assert!(!used);
    let (used, w_other_noaug) = run(&other, false, "other-noaug");
    assert!(!used);
    assert_eq!(w_plain_noaug, w_other_noaug);
}

#[test]
fn excluded_faces_leave_every_split_and_the_checkpoint_says_so() {
    let mut data = dataset(10);
    let mut part = train::stored_partition(&data);
    let (tr, te) = (part.train[0], part.test[0]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("exclusions.csv");
    let flag = |i: usize, drop: bool| artifacts::exclusions::Flag {
        drop,
        source: data.faces.sources[i].clone(),
        label: String::new(),
        verdict: "stranger".into(),
        looks_like: String::new(),
        distance: 0.8,
    };
    artifacts::exclusions::write(
        &csv,
        &[flag(tr, true), flag(te, true), flag(part.val[0], false)],
    )
    .unwrap();
    let before = part.train.len() + part.val.len() + part.test.len();
    assert_eq!(data.exclude(&mut part, &csv).unwrap(), 2);
    assert_eq!(
        part.train.len() + part.val.len() + part.test.len(),
        before - 2
    );
    assert!(!part.train.contains(&tr) && !part.test.contains(&te));
    train::train(
        &data,
        &cfg(TrainMode::Probe),
        &part,
        &files(dir.path(), "p"),
    )
    .unwrap();
    let ck = Checkpoint::read(&dir.path().join("p.safetensors")).unwrap();
    assert_eq!(
        ck.provenance.inputs.get("exclusions"),
        Some(&artifacts::digest_file(&csv).unwrap())
    );
}

/// `--distill` without views (the bottlenecks hold none: the faces and their one target),
/// on the deep student with its pooled input: it fits, logs every teacher term, and a
/// zero weight really switches its term off.
#[test]
fn distill_fits_and_logs_its_terms() {
    let data = dataset(20);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    let deep = model::StudentConfig {
        image_size: SIZE,
        ..model::StudentConfig::deep()
    };
    let c = TrainConfig {
        student: deep.clone(),
        epochs: 15,
        ..cfg(TrainMode::Distill)
    };
    let out = train::train(&data, &c, &part, &files(dir.path(), "distill")).unwrap();
    assert!(out.test_acc.unwrap() >= 0.8, "{:?}", out.test_acc);
    let m = metrics(dir.path(), "distill");
    for term in ["cross_entropy", "kl", "cosine", "rkd"] {
        assert!(m[0][term].is_number(), "{term} logged: {}", m[0]);
    }
    assert!(m.last().unwrap()["loss"].as_f64() < m[0]["loss"].as_f64());
    let ck = Checkpoint::read(&dir.path().join("distill.safetensors")).unwrap();
    assert_eq!(ck.model_config["student"]["arch"], "deep");
    assert_eq!(ck.model_config["student"]["bottleneck"], 16);
    // Labels only: the teacher's terms are neither computed nor logged.
    let labels_only = TrainConfig {
        distill: train::distill::DistillConfig {
            kl: 0.0,
            cos: 0.0,
            rkd: 0.0,
            ..Default::default()
        },
        ..c
    };
    train::train(&data, &labels_only, &part, &files(dir.path(), "base")).unwrap();
    let m = metrics(dir.path(), "base");
    assert!(m[0]["cross_entropy"].is_number());
    for term in ["kl", "cosine", "rkd"] {
        assert!(
            m[0].get(term).is_none_or(|v| v.is_null()),
            "{term}: {}",
            m[0]
        );
    }
}

/// `--online-teacher` runs dlib's face descriptor on fresh views: other teachers' rows and
/// the fixed-target ablation are refused with what to do, before any training.
#[test]
fn online_teacher_refuses_what_it_cannot_run() {
    let data = dataset(5);
    let part = train::stored_partition(&data);
    let dir = tempfile::tempdir().unwrap();
    let online = |view_targets| TrainConfig {
        distill: train::distill::DistillConfig {
            online: true,
            view_targets,
            ..Default::default()
        },
        ..cfg(TrainMode::Distill)
    };
    let consistent = train::distill::ViewTargets::Consistent;
    let e = train::train(&data, &online(consistent), &part, &files(dir.path(), "a"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--teacher dlib-face") && e.contains("synthetic"),
        "{e}"
    );
    let fixed = train::distill::ViewTargets::Fixed;
    let e = train::train(&data, &online(fixed), &part, &files(dir.path(), "b"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--view-targets fixed"), "{e}");
    assert!(!dir.path().join("a.safetensors").exists());
}
