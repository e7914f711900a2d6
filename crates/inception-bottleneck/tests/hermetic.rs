//! Tests that need nothing but this repository: shapes, key checks, config parsing,
//! hub-cache resolution offline, and the extraction cache.

use artifacts::{Faces, Provenance, Split};
use candle_core::{DType, Device, Tensor};
use inception_bottleneck::inception::{block_channels, BLOCKS};
use inception_bottleneck::teacher::{self, Preprocessing};
use inception_bottleneck::{weights::WeightsError, ExtractConfig, InceptionV3};
use std::collections::HashMap;
use std::path::Path;

/// A complete random Inception-v3 state dict, torchvision names, small values.
/// Built by asking the loader which keys it needs (every missing key is reported with its
/// shape through the error), then filling those.
fn random_state_dict(with_fc: bool) -> HashMap<String, Tensor> {
    let needed = required_keys();
    let mut m = HashMap::new();
    for (k, shape) in needed {
        let t = if k.ends_with("running_var") || k.ends_with("bn.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu).unwrap()
        } else if k.ends_with("conv.weight") {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(
                0f32,
                (2.0 / fan_in as f32).sqrt(),
                shape.as_slice(),
                &Device::Cpu,
            )
            .unwrap()
        } else {
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap()
        };
        m.insert(k, t);
    }
    if with_fc {
        m.insert(
            "fc.weight".into(),
            Tensor::randn(0f32, 0.01, (10, 2048), &Device::Cpu).unwrap(),
        );
        m.insert(
            "fc.bias".into(),
            Tensor::zeros(10, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    m.insert(
        "AuxLogits.fc.weight".into(),
        Tensor::zeros((10, 768), DType::F32, &Device::Cpu).unwrap(),
    );
    m.insert(
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    m
}

/// Keys and shapes, found by probing: a model built from an empty map reports all missing
/// keys; shapes come from giving each key a dummy and reading the shape error.
fn required_keys() -> Vec<(String, Vec<usize>)> {
    let Err(WeightsError::Missing(keys)) =
        InceptionV3::load(HashMap::new(), None, DType::F32, &Device::Cpu)
    else {
        panic!("an empty state dict must be reported as missing keys");
    };
    let dummies: HashMap<String, Tensor> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let Err(WeightsError::Shape(problems)) =
        InceptionV3::load(dummies, None, DType::F32, &Device::Cpu)
    else {
        panic!("dummy shapes must be reported");
    };
    problems
        .iter()
        .map(|p| {
            let (key, rest) = p.split_once(": file").unwrap();
            let model = rest.split("model ").nth(1).unwrap();
            let shape: Vec<usize> = serde_json::from_str(model).unwrap();
            (key.to_string(), shape)
        })
        .collect()
}

#[test]
fn missing_keys_are_listed_not_invented() {
    let keys = required_keys();
    // 94 BasicConv2d blocks x (conv.weight + 4 bn tensors).
    assert_eq!(keys.len(), 94 * 5);
    let mut sd = random_state_dict(false);
    sd.remove("Mixed_6c.branch7x7_2.conv.weight");
    sd.remove("Mixed_7c.branch_pool.bn.running_var");
    let err = InceptionV3::load(sd, None, DType::F32, &Device::Cpu)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("Mixed_6c.branch7x7_2.conv.weight"), "{msg}");
    assert!(msg.contains("Mixed_7c.branch_pool.bn.running_var"), "{msg}");
    assert!(msg.contains("2 weight(s)"), "{msg}");
}

#[test]
fn shapes_and_ignored_keys() {
    let model = InceptionV3::load(random_state_dict(true), None, DType::F32, &Device::Cpu).unwrap();
    assert!(model.has_fc());
    assert_eq!(
        model.unused_keys,
        vec![
            "AuxLogits.fc.weight",
            "Conv2d_1a_3x3.bn.num_batches_tracked"
        ]
    );
    let x = Tensor::randn(0f32, 1.0, (1, 3, 299, 299), &Device::Cpu).unwrap();
    let mut seen = Vec::new();
    let f = model
        .forward_blocks(&x, "Mixed_7c", |name, t| {
            seen.push((name.to_string(), t.dims()[1]))
        })
        .unwrap();
    assert_eq!(f.dims(), &[1, 2048, 8, 8]);
    for (name, c) in &seen {
        assert_eq!(Some(*c), block_channels(name), "{name}");
    }
    assert_eq!(seen.len(), BLOCKS.len());
    assert_eq!(model.bottleneck(&x, "pool").unwrap().dims(), &[1, 2048]);
    assert_eq!(model.bottleneck(&x, "Mixed_6c").unwrap().dims(), &[1, 768]);
    assert_eq!(model.logits(&x).unwrap().dims(), &[1, 10]);
    // A truncated model only needs the keys up to its layer.
    let sd: HashMap<_, _> = random_state_dict(false)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("Mixed_7"))
        .collect();
    let m = InceptionV3::load(sd, Some("Mixed_6e"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.bottleneck(&x, "Mixed_6e").unwrap().dims(), &[1, 768]);
    assert!(m.bottleneck(&x, "pool").is_err());
}

#[test]
fn timm_config_parsing() {
    let j: serde_json::Value = serde_json::from_str(
        r#"{"architecture":"inception_v3","pretrained_cfg":{"input_size":[3,299,299],"interpolation":"bicubic","mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225],"crop_pct":0.875}}"#,
    )
    .unwrap();
    let p = Preprocessing::from_timm_config(&j).unwrap();
    assert_eq!(p.size, 299);
    assert_eq!(p.interpolation, "bicubic");
    assert_eq!(p.mean, [0.485, 0.456, 0.406]);
    let bad: serde_json::Value =
        serde_json::from_str(r#"{"pretrained_cfg":{"input_size":[3,299,300]}}"#).unwrap();
    assert!(Preprocessing::from_timm_config(&bad).is_err());
    let bad: serde_json::Value =
        serde_json::from_str(r#"{"pretrained_cfg":{"std":[0,1,1]}}"#).unwrap();
    assert!(Preprocessing::from_timm_config(&bad).is_err());
    assert_eq!(
        Preprocessing::from_timm_config(&serde_json::json!({})).unwrap(),
        Preprocessing::default()
    );
}

fn write_state_dict(path: &Path, sd: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(sd, path).unwrap();
}

/// Lays out a Hugging Face hub cache folder by hand and resolves it offline.
/// Env vars are process-wide, so this is the only test that sets them.
#[test]
fn fake_hub_cache_resolves_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo_dir = home.path().join("hub/models--acme--inception_v3.test");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    write_state_dict(&snap.join("model.safetensors"), &random_state_dict(false));
    std::fs::write(
        snap.join("config.json"),
        r#"{"pretrained_cfg":{"input_size":[3,299,299],"interpolation":"bilinear","mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]}}"#,
    )
    .unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let r = teacher::resolve("acme/inception_v3.test", "main", Preprocessing::default()).unwrap();
    assert_eq!(r.identity, format!("hf:acme/inception_v3.test@{commit}"));
    assert!(r.weights.ends_with("model.safetensors"));
    let err = teacher::resolve("acme/not-there", "main", Preprocessing::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("HF_HUB_OFFLINE") && msg.contains("--teacher DIR"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one sentence: {msg}");
    let err = teacher::resolve("not a repo", "main", Preprocessing::default()).unwrap_err();
    assert!(matches!(err, teacher::TeacherError::BadSpec(_)));

    // Extraction through the offline hub teacher, then the cache skips all work.
    let dir = tempfile::tempdir().unwrap();
    let faces_path = dir.path().join("faces.safetensors");
    let n = 3;
    let size = 40;
    let mut images = Vec::new();
    for i in 0..n {
        images.extend((0..size * size * 3).map(|j| ((i * 37 + j * 11) % 256) as u8));
    }
    Faces {
        height: size,
        width: size,
        images: images.into(),
        labels: vec![0, 1, 0],
        splits: vec![Split::Train, Split::Test, Split::Val],
        class_names: vec!["a".into(), "b".into()],
        sources: vec!["a/1.jpg".into(), "b/2.jpg".into(), "a/3.jpg".into()],
        geometry: None,
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    }
    .write(&faces_path)
    .unwrap();
    let cfg = ExtractConfig {
        teacher: "acme/inception_v3.test".into(),
        layer: "Mixed_5d".into(),
        batch: 2,
        size: Some(75),
        cache_dir: Some(dir.path().join("cache")),
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let out = dir.path().join("b.safetensors");
    let s1 = inception_bottleneck::extract(&faces_path, &out, &cfg).unwrap();
    assert_eq!((s1.computed, s1.from_cache, s1.dim), (3, 0, 288));
    let b1 = artifacts::Bottlenecks::read(&out).unwrap();
    assert_eq!(b1.len(), 3);
    assert_eq!(b1.layer, "Mixed_5d");
    assert_eq!(
        b1.faces_digest,
        artifacts::digest_file(&faces_path).unwrap()
    );
    let s2 = inception_bottleneck::extract(&faces_path, &out, &cfg).unwrap();
    assert_eq!((s2.computed, s2.from_cache), (0, 3));
    let b2 = artifacts::Bottlenecks::read(&out).unwrap();
    assert_eq!(b1.features, b2.features);
    // Mirrored views: the unflipped rows come from the cache, the flipped ones are new,
    // and they are what the teacher gives for a faces file of flipped images (found in the
    // cache by their pixels).
    let mirror_out = dir.path().join("mirror.safetensors");
    let mirror_cfg = ExtractConfig {
        mirror: true,
        ..cfg.clone()
    };
    let sm = inception_bottleneck::extract(&faces_path, &mirror_out, &mirror_cfg).unwrap();
    assert_eq!((sm.computed, sm.from_cache), (3, 3));
    let bm = artifacts::Bottlenecks::read(&mirror_out).unwrap();
    assert_eq!(bm.features, b1.features);
    let mirrored = bm.mirrored.clone().expect("features_mirrored");
    assert_ne!(mirrored, b1.features);
    let mut flipped = Faces::read(&faces_path).unwrap();
    flipped.images = (0..n)
        .flat_map(|i| inception_bottleneck::extract::mirror_hwc(&flipped.image(i), size, size))
        .collect();
    let flipped_path = dir.path().join("flipped.safetensors");
    flipped.write(&flipped_path).unwrap();
    let flipped_out = dir.path().join("flipped-b.safetensors");
    let sf = inception_bottleneck::extract(&flipped_path, &flipped_out, &cfg).unwrap();
    assert_eq!((sf.computed, sf.from_cache), (0, 3));
    assert_eq!(
        artifacts::Bottlenecks::read(&flipped_out).unwrap().features,
        mirrored
    );
    // Without the cache, the same numbers are computed again.
    let s3 = inception_bottleneck::extract(
        &faces_path,
        &out,
        &ExtractConfig {
            cache_dir: None,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(s3.computed, 3);
    let b3 = artifacts::Bottlenecks::read(&out).unwrap();
    let max_diff = b1
        .features
        .iter()
        .zip(&b3.features)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "{max_diff}");
    // A 2x2 grid: 4x the width, its own cache entries (not the global pool's), and a
    // layer name that says so.
    let grid_out = dir.path().join("grid.safetensors");
    let grid_cfg = ExtractConfig {
        grid: 2,
        ..cfg.clone()
    };
    let sg = inception_bottleneck::extract(&faces_path, &grid_out, &grid_cfg).unwrap();
    assert_eq!((sg.computed, sg.dim), (3, 4 * 288));
    let bg = artifacts::Bottlenecks::read(&grid_out).unwrap();
    assert_eq!(bg.layer, "Mixed_5d grid 2x2");
    // The grid's cells average to the global pool (7x7 block: equal 4x4 cells overlap
    // in the middle row and column, so only roughly).
    let cells_mean: Vec<f32> = (0..288)
        .map(|c| (0..4).map(|k| bg.features[k * 288 + c]).sum::<f32>() / 4.0)
        .collect();
    let global = &b3.features[..288];
    let scale = global.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let off = cells_mean
        .iter()
        .zip(global)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(off < 0.5 * scale, "{off} vs {scale}");
    assert!(inception_bottleneck::extract(
        &faces_path,
        &grid_out,
        &ExtractConfig {
            grid: 0,
            ..cfg.clone()
        }
    )
    .is_err());
    // The retrain.py export/import round trip reproduces the artifact.
    let rt = dir.path().join("retrain");
    inception_bottleneck::extract::export_retrain(&faces_path, &out, &rt).unwrap();
    let imported = dir.path().join("imported.safetensors");
    inception_bottleneck::extract::import_retrain(&faces_path, &rt, &imported, &cfg).unwrap();
    assert!(inception_bottleneck::extract::import_retrain(
        &faces_path,
        &rt,
        &imported,
        &mirror_cfg
    )
    .is_err());
    assert_eq!(
        artifacts::Bottlenecks::read(&imported).unwrap().features,
        b3.features
    );
}

/// The NHWC CPU kernels and candle's NCHW ops compute the same network: every block
/// output and the pooled bottleneck agree (odd input size: padding and pool borders).
#[test]
fn cpu_kernels_equal_candle_ops() {
    let dev = Device::Cpu;
    let sd = random_state_dict(false);
    let fast = InceptionV3::load_with(sd.clone(), None, DType::F32, &dev, true).unwrap();
    let slow = InceptionV3::load_with(sd, None, DType::F32, &dev, false).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 163, 171), &dev).unwrap();
    let sum_sq = |t: &Tensor| {
        t.sqr()
            .and_then(|t| t.sum_all()?.to_scalar::<f32>())
            .unwrap()
    };
    let rel = |a: &Tensor, b: &Tensor| (sum_sq(&(a - b).unwrap()) / sum_sq(b).max(1e-30)).sqrt();
    let mut a = Vec::new();
    let mut b = Vec::new();
    fast.forward_blocks(&x, "Mixed_7c", |n, t| a.push((n.to_string(), t.clone())))
        .unwrap();
    slow.forward_blocks(&x, "Mixed_7c", |n, t| b.push((n.to_string(), t.clone())))
        .unwrap();
    assert_eq!(a.len(), BLOCKS.len());
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        assert_eq!(ta.dims(), tb.dims(), "{name}");
        assert!(rel(ta, tb) < 1e-4, "{name}: {}", rel(ta, tb));
    }
    let (pa, pb) = (
        fast.bottleneck(&x, "Mixed_6c").unwrap(),
        slow.bottleneck(&x, "Mixed_6c").unwrap(),
    );
    assert!(rel(&pa, &pb) < 1e-4);
    // Grid pooling: same values in both layouts, and each cell is the mean of its
    // adaptive-pool window of the block output (Mixed_6c is 8x9 here: rows 0..4 and 4..8,
    // columns 0..5 and 4..9, so the column windows overlap).
    let (ga, gb) = (
        fast.pooled(&x, "Mixed_6c", 2).unwrap(),
        slow.pooled(&x, "Mixed_6c", 2).unwrap(),
    );
    assert_eq!(ga.dims(), &[x.dims()[0], 4 * 768]);
    assert!(rel(&ga, &gb) < 1e-4);
    let block = &a.iter().find(|(n, _)| n == "Mixed_6c").unwrap().1;
    assert_eq!(&block.dims()[2..], &[8, 9]);
    for (cell, (y0, x0)) in [(0, 0), (0, 4), (4, 0), (4, 4)].into_iter().enumerate() {
        let want = block
            .narrow(2, y0, 4)
            .and_then(|t| t.narrow(3, x0, 5)?.mean(3)?.mean(2))
            .unwrap();
        let got = ga.narrow(1, cell * 768, 768).unwrap();
        assert!(rel(&got, &want) < 1e-5, "cell {cell}");
    }
    assert!(rel(&fast.pooled(&x, "Mixed_6c", 1).unwrap(), &pa) < 1e-6);
    assert!(fast.pooled(&x, "Mixed_6c", 9).is_err());
    assert!(
        InceptionV3::load_with(random_state_dict(false), None, DType::F16, &dev, true).is_err()
    );
}
