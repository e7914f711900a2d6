//! Parity with torchvision's Inception3 and extraction with real weights (needs ../shared).

use candle_core::{DType, Device, Tensor};
use inception_bottleneck::teacher::load_tensors;
use inception_bottleneck::InceptionV3;
use test_support::shared;

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    num.to_scalar::<f64>().unwrap() / den.to_scalar::<f64>().unwrap()
}

#[test]
#[ignore = "needs ../shared (fixtures/inception-v3-random)"]
fn matches_torchvision_on_random_weights() {
    let dir = shared().join("fixtures/inception-v3-random");
    let tensors = load_tensors(&dir.join("weights.safetensors")).unwrap();
    let model = InceptionV3::load(tensors, None, DType::F32, &Device::Cpu).unwrap();
    assert!(model.has_fc());
    assert!(model
        .unused_keys
        .iter()
        .any(|k| k.starts_with("AuxLogits.")));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let input = &reference["input"];
    let first = input.narrow(0, 0, 1).unwrap();
    let mut blocks = std::collections::HashMap::new();
    model
        .forward_blocks(&first, "Mixed_7c", |name, t| {
            blocks.insert(name.to_string(), t.clone());
        })
        .unwrap();
    let mut checked = 0;
    for (name, want) in &reference {
        if let Some(got) = blocks.get(name) {
            assert_eq!(got.dims(), want.dims(), "{name}");
            let e = rel_err(got, want);
            assert!(e < 1e-4, "{name}: relative error {e}");
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} block outputs compared");
    let pool = model.bottleneck(input, "pool").unwrap();
    let e = rel_err(&pool, &reference["pool"]);
    assert!(e < 1e-4, "pool: relative error {e}");
    let logits = model.logits(input).unwrap();
    let e = rel_err(&logits, &reference["logits"]);
    assert!(e < 1e-4, "logits: relative error {e}");
}

#[test]
#[ignore = "needs ../shared (models/inception-v3-nsfwjs, data/seed-4x20)"]
fn stand_in_teacher_on_study_faces_and_tensorflow_import() {
    use artifacts::{Bottlenecks, Faces, Provenance, Split};
    let seed = shared().join("data/seed-4x20/aligned_multi_gaus_mask_4_20");
    let dir = tempfile::tempdir().unwrap();
    // Faces straight from the study's aligned corpus (as is), all 80.
    let mut images = Vec::new();
    let mut sources = Vec::new();
    let mut labels = Vec::new();
    let mut classes: Vec<String> = std::fs::read_dir(seed.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    for (c, class) in classes.iter().enumerate() {
        let mut files: Vec<String> = std::fs::read_dir(seed.join("corpus").join(class))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in files.iter() {
            let img = image::open(seed.join("corpus").join(class).join(f))
                .unwrap()
                .to_rgb8();
            let img =
                image::imageops::resize(&img, 150, 150, image::imageops::FilterType::Triangle);
            images.extend(img.into_raw());
            sources.push(format!("{class}/{f}"));
            labels.push(c as u32);
        }
    }
    let n = labels.len();
    let faces_path = dir.path().join("faces.safetensors");
    Faces {
        height: 150,
        width: 150,
        images: images.into(),
        labels,
        splits: vec![Split::Train; n],
        class_names: classes,
        sources,
        geometry: None,
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    }
    .write(&faces_path)
    .unwrap();
    let cfg = inception_bottleneck::ExtractConfig {
        teacher: shared()
            .join("models/inception-v3-nsfwjs")
            .display()
            .to_string(),
        layer: "Mixed_6c".into(),
        cache_dir: None,
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let out = dir.path().join("b.safetensors");
    let s = inception_bottleneck::extract(&faces_path, &out, &cfg).unwrap();
    assert_eq!((s.images, s.dim), (n, 768));
    let b = Bottlenecks::read(&out).unwrap();
    assert!(b.teacher.starts_with("dir:inception-v3-nsfwjs#"));
    assert!(
        b.features.iter().all(|v| v.is_finite() && *v >= 0.0),
        "pooled post-ReLU features"
    );
    // The features identify people: leave-one-out 1-NN on centred features, 4 people.
    let dim = b.dim;
    let mut mean = vec![0f32; dim];
    for i in 0..n {
        for (m, v) in mean.iter_mut().zip(b.row(i)) {
            *m += v / n as f32;
        }
    }
    let centred: Vec<Vec<f32>> = (0..n)
        .map(|i| b.row(i).iter().zip(&mean).map(|(v, m)| v - m).collect())
        .collect();
    let cos = |a: &[f32], c: &[f32]| {
        let d: f32 = a.iter().zip(c).map(|(x, y)| x * y).sum();
        d / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * c.iter().map(|x| x * x).sum::<f32>().sqrt())
        .max(1e-12)
    };
    let labels = artifacts::Faces::read(&faces_path).unwrap().labels;
    let correct = (0..n)
        .filter(|&i| {
            let nn = (0..n)
                .filter(|&j| j != i)
                .max_by(|&a, &c| {
                    cos(&centred[i], &centred[a]).total_cmp(&cos(&centred[i], &centred[c]))
                })
                .unwrap();
            labels[nn] == labels[i]
        })
        .count();
    let acc = correct as f64 / n as f64;
    eprintln!("stand-in teacher, Mixed_6c, leave-one-out 1-NN on the study's 80 faces: {acc:.3}");
    assert!(acc >= 0.5, "1-NN accuracy {acc} (chance 0.25)");
    // The study's TensorFlow bottlenecks for the same files import in the same order.
    let imported = dir.path().join("tf.safetensors");
    let s = inception_bottleneck::extract::import_retrain(
        &faces_path,
        &seed.join("bottleneck"),
        &imported,
        &cfg,
    )
    .unwrap();
    assert_eq!(s.dim, 2048);
    let tf = Bottlenecks::read(&imported).unwrap();
    assert_eq!(tf.len(), n);
}
