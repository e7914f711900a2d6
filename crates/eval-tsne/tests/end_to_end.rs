//! Hermetic: a tiny trained student through the whole evaluation (report, PNGs, HTML).
//! The same on the study's msceleb faces is in `shared_data.rs`.

use artifacts::{Faces, Provenance, Split};
use eval_tsne::{evaluate, EvalConfig};
use std::path::{Path, PathBuf};
use test_support::training::train_student;
use train::{TrainConfig, TrainMode};

fn font_or_skip() -> Option<PathBuf> {
    let p = PathBuf::from(eval_tsne::plots::DEFAULT_FONT);
    p.exists().then_some(p)
}

fn synthetic_faces(path: &Path) {
    let size = 32;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut splits = Vec::new();
    for c in 0..3u32 {
        for i in 0..15 {
            for y in 0..size {
                for x in 0..size {
                    for ch in 0..3u32 {
                        let v =
                            if ch == c { 170 } else { 50 } + ((x * 7 + y * 3 + i * 11) % 30) as u32;
                        images.push(v as u8);
                    }
                }
            }
            labels.push(c);
            splits.push(if i % 5 == 0 {
                Split::Test
            } else {
                Split::Train
            });
        }
    }
    let n = labels.len();
    Faces {
        height: size,
        width: size,
        images: images.into(),
        labels,
        splits,
        class_names: vec!["red".into(), "green".into(), "blue".into()],
        sources: (0..n).map(|i| format!("c/{i}.png")).collect(),
        geometry: None,
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    }
    .write(path)
    .unwrap();
}

#[test]
fn report_and_pictures_are_produced() {
    let Some(font) = font_or_skip() else {
        panic!(
            "{} missing: install fonts-dejavu-core (see README)",
            eval_tsne::plots::DEFAULT_FONT
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces.safetensors");
    synthetic_faces(&faces);
    let cfg = TrainConfig {
        mode: TrainMode::Base,
        epochs: 8,
        min_steps: 0,
        batch: 8,
        patience: 0,
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let ck = train_student(&faces, None, &cfg, dir.path());
    let out = dir.path().join("eval");
    let ecfg = EvalConfig {
        checkpoint: ck,
        faces,
        bottlenecks: None,
        out: out.clone(),
        font,
        tsne: eval_tsne::tsne::TsneConfig {
            perplexity: 5.0,
            iters: 300,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = evaluate(&ecfg).unwrap();
    let test = r.test.as_ref().unwrap();
    assert_eq!(test.n, 9);
    assert!(test.top1 >= 0.66, "{}", test.top1);
    for f in [
        "report.json",
        "report.html",
        "tsne.png",
        "confusion.png",
        "embeddings.safetensors",
    ] {
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len > 1000, "{f}: {len} bytes");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("Test split"));
    let png = image::open(out.join("tsne.png")).unwrap().to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 8, "the map has colours");
    let emb = artifacts::Embeddings::read(&out.join("embeddings.safetensors")).unwrap();
    assert_eq!(emb.len(), 45);
    assert!(eval_tsne::up_to_date(&ecfg));
}
