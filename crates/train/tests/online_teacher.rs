//! `--online-teacher` on real faces: every step cuts a fresh view of each face from its
//! photo and runs dlib's face descriptor on that very view.

use artifacts::Bottlenecks;
use inception_bottleneck::ExtractConfig;
use rand::SeedableRng;
use std::path::Path;
use train::distill::{DistillConfig, DistillData};

fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Two people's photos (6 each) from msceleb-samples, preprocessed, with the face
/// teacher's bottlenecks (no bank of views).
fn two_people(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let photos = dir.join("photos");
    test_support::msceleb_photos(&photos, &["m.01kk_s6", "m.01yrkh"], 6);
    let faces = dir.join("faces.safetensors");
    let mut pre = preprocess::PreprocessConfig::default();
    pre.detector.cnn_model = Some(test_support::cnn_detector_model());
    preprocess::run(&photos, &faces, &pre).unwrap();
    let bottlenecks = dir.join("b.safetensors");
    let cfg = ExtractConfig {
        teacher: face_model().display().to_string(),
        cache_dir: Some(dir.join("cache")),
        ..Default::default()
    };
    inception_bottleneck::extract(&faces, &bottlenecks, &cfg).unwrap();
    (photos, faces, bottlenecks)
}

fn face_model() -> std::path::PathBuf {
    test_support::descriptor_model()
}

/// The online batch's teacher rows are the descriptors of the view the student sees: a
/// view of the same face (within dlib's same-person distance of the face's own row, never
/// equal to it), fresh at every draw; training with them runs and records the setting.
#[test]
#[ignore = "needs ../shared (dlib's models, msceleb photos) and Debian data packages"]
fn online_views_match_the_teacher_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, faces_path, b_path) = two_people(dir.path());
    let data = train::Dataset::load(&faces_path, Some(&b_path)).unwrap();
    let part = train::stored_partition(&data);
    let cfg = DistillConfig {
        online: true,
        ..Default::default()
    };
    let device = candle_core::Device::Cpu;
    let model = face_model();
    let d = DistillData::build(
        &data,
        &part.train,
        &part.val,
        &cfg,
        Some(&photos),
        Some(&model),
        &device,
    )
    .unwrap();
    assert!(d.is_online());
    let b = Bottlenecks::read(&b_path).unwrap();
    let chunk: Vec<usize> = part.train.iter().copied().take(4).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let first = d.online_batch(&data.faces, &chunk, None, &mut rng).unwrap();
    let second = d.online_batch(&data.faces, &chunk, None, &mut rng).unwrap();
    let image_len = data.faces.height * data.faces.width * 3;
    assert_eq!(first.pixels.len(), chunk.len() * image_len);
    assert_eq!(first.probs.len(), chunk.len() * data.num_classes());
    for (j, &i) in chunk.iter().enumerate() {
        let own: Vec<f32> = b.row(i).iter().zip(&d.mean).map(|(x, m)| x - m).collect();
        for batch in [&first, &second] {
            let t = &batch.targets[j * d.dim..(j + 1) * d.dim];
            let dd = dist(t, &own);
            assert!(dd > 0.0 && dd < 0.6, "face {i}: view at distance {dd}");
        }
        assert_ne!(
            first.pixels[j * image_len..(j + 1) * image_len],
            second.pixels[j * image_len..(j + 1) * image_len],
            "face {i}: a fresh view each draw"
        );
    }
    // The probe reads the fresh views: each row is a distribution.
    for p in first.probs.chunks_exact(data.num_classes()) {
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{p:?}");
    }
    // Mixed up, the teacher runs on the blended chips (function matching): a row blended
    // with weight 1 is the unmixed row, a half-and-half row is the teacher's output on
    // the half-and-half image, which is not the blend of the two outputs. The student's
    // pixels come back unmixed (the trainer blends them as a bank's).
    let mix = train::distill::Mixup {
        partner: vec![1, 0, 3, 2],
        lam: vec![1.0, 0.0, 0.5, 0.5],
    };
    let draw = |m: Option<&train::distill::Mixup>| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        d.online_batch(&data.faces, &chunk, m, &mut rng).unwrap()
    };
    let (plain, mixed) = (draw(None), draw(Some(&mix)));
    assert_eq!(plain.pixels, mixed.pixels);
    let row = |v: &[f32], j: usize| v[j * d.dim..(j + 1) * d.dim].to_vec();
    assert_eq!(row(&mixed.targets, 0), row(&plain.targets, 0));
    assert_eq!(row(&mixed.targets, 1), row(&plain.targets, 0));
    let halfway = mix.blend(&plain.targets, d.dim);
    let same = dist(&row(&mixed.targets, 2), &row(&mixed.targets, 3));
    assert!(same < 1e-4, "one mixed chip, two batch rows: {same}");
    let off = dist(&row(&mixed.targets, 2), &row(&halfway, 2));
    assert!(
        off > 0.05,
        "the teacher on the mixed chip vs the mixed outputs: {off}"
    );
    // Labels alone on fresh views: the teacher is neither opened nor run.
    let labels_only = DistillConfig {
        kl: 0.0,
        cos: 0.0,
        rkd: 0.0,
        ..cfg
    };
    let nowhere = dir.path().join("no-such-model.dat");
    let d0 = DistillData::build(
        &data,
        &part.train,
        &part.val,
        &labels_only,
        Some(&photos),
        Some(&nowhere),
        &device,
    )
    .unwrap();
    let plain = d0
        .online_batch(&data.faces, &chunk, None, &mut rng)
        .unwrap();
    assert_eq!(plain.pixels.len(), chunk.len() * image_len);
    assert!(plain.targets.is_empty() && plain.probs.is_empty());
    // Training with the online teacher (half the batches mixed up): a few epochs, every
    // term logged, the setting saved.
    let tc = train::TrainConfig {
        mode: train::TrainMode::Distill,
        epochs: 2,
        batch: 4,
        min_steps: 0,
        patience: 0,
        distill: DistillConfig { mixup: 0.5, ..cfg },
        photos: Some(photos.clone()),
        teacher_model: None, // the file the bottlenecks recorded
        student: model::StudentConfig::deep(),
        ..Default::default()
    };
    let mut files = train::RunFiles::beside(&dir.path().join("s.safetensors"));
    files.progress = false;
    train::train(&data, &tc, &part, &files).unwrap();
    let ck = artifacts::Checkpoint::read(&dir.path().join("s.safetensors")).unwrap();
    assert_eq!(
        ck.train_state["config"]["distill"]["online"], true,
        "{}",
        ck.train_state
    );
}
