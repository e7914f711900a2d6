//! The face teacher (`--teacher dlib-face` / a `.dat` path) through the extraction stage.

use artifacts::{Bottlenecks, FaceGeometry, Faces, Provenance, Split};
use inception_bottleneck::{export_retrain, extract, ExtractConfig};
use std::path::Path;
use test_support::fixture::{Fixture, DLIB_FACE};

/// A faces artifact of `n` faces; `chips` (u8 [n,150,150,3]) as its dlib chips.
fn faces(path: &Path, n: usize, chips: Option<Vec<u8>>) {
    let geometry = chips.map(|c| FaceGeometry {
        boxes: vec![[0.0; 4]; n],
        landmarks: vec![0.0; n * 136],
        transforms: vec![0.0; n * 6],
        chips: Some(c.into()),
    });
    Faces {
        height: 8,
        width: 8,
        images: vec![7; n * 8 * 8 * 3].into(),
        labels: (0..n as u32).map(|i| i % 2).collect(),
        splits: vec![Split::Train; n],
        class_names: vec!["a".into(), "b".into()],
        sources: (0..n)
            .map(|i| format!("{}/{i}.jpg", ["a", "b"][i % 2]))
            .collect(),
        geometry,
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    }
    .write(path)
    .unwrap();
}

#[test]
fn faces_without_chips_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("faces.safetensors");
    faces(&p, 2, None);
    let cfg = ExtractConfig {
        teacher: dir.path().join("model.dat").display().to_string(),
        cache_dir: None,
        ..Default::default()
    };
    let e = extract(&p, &dir.path().join("b.safetensors"), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no dlib face chips") && e.contains("re-run preprocess"),
        "{e}"
    );
    // Inception's layer options do not apply to it.
    faces(&p, 2, Some(vec![0; 2 * 67500]));
    let cfg = ExtractConfig { grid: 2, ..cfg };
    let e = extract(&p, &dir.path().join("b.safetensors"), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--grid"), "{e}");
}

#[test]
#[ignore = "needs ../shared (dlib's model and its reference descriptors)"]
fn extraction_gives_dlibs_descriptors_and_caches_them() {
    let fixture = Fixture::open(DLIB_FACE);
    let chips = fixture.bytes("chips");
    let want = fixture.f32s("descriptors");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("faces.safetensors");
    faces(&p, 28, Some(chips));
    let cfg = ExtractConfig {
        teacher: test_support::descriptor_model().display().to_string(),
        cache_dir: Some(dir.path().join("cache")),
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let out = dir.path().join("b.safetensors");
    let s = extract(&p, &out, &cfg).unwrap();
    assert_eq!((s.computed, s.dim), (28, 128));
    assert!(
        s.teacher.starts_with("dlib-face:") && s.teacher.contains("55533b28a95800a5"),
        "{}",
        s.teacher
    );
    let b = Bottlenecks::read(&out).unwrap();
    assert!(b.layer.contains("dlib chips"), "{}", b.layer);
    let err = b
        .features
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err <= 1e-4, "max abs error {err}");
    // Again: everything from the content-addressed cache, the same values.
    let s2 = extract(&p, &out, &cfg).unwrap();
    assert_eq!((s2.computed, s2.from_cache), (0, 28));
    assert_eq!(Bottlenecks::read(&out).unwrap().features, b.features);
    // retrain.py's text format works for this teacher too.
    let n = export_retrain(&p, &out, &dir.path().join("retrain")).unwrap();
    assert_eq!(n, 28);
}

/// `--views K` on real photos: view 0's descriptor is the face's own, the other views
/// differ but stay the same person's (dlib's distance under its 0.6 threshold), a second
/// run takes every view from the cache, and the bank survives the artifact round trip.
#[test]
#[ignore = "needs ../shared (dlib's models, msceleb photos) and Debian data packages"]
fn views_of_real_faces() {
    use preprocess::views::{ViewJitter, ViewRecipe};
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    test_support::msceleb_photos(&photos, &["m.06w2sn5"], 8);
    let faces = dir.path().join("faces.safetensors");
    let mut pre = preprocess::PreprocessConfig::default();
    pre.detector.cnn_model = Some(test_support::cnn_detector_model());
    preprocess::run(&photos, &faces, &pre).unwrap();
    let cfg = ExtractConfig {
        teacher: test_support::shared()
            .join("models/dlib/dlib_face_recognition_resnet_model_v1.dat")
            .display()
            .to_string(),
        views: 3,
        view_recipe: Some(ViewRecipe {
            seed: 0,
            jitter: ViewJitter::default(),
            photos: photos.clone(),
        }),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let out = dir.path().join("b.safetensors");
    extract(&faces, &out, &cfg).unwrap();
    let b = Bottlenecks::read(&out).unwrap();
    let bank = b.views.as_ref().unwrap();
    assert_eq!(bank.k, 3);
    let dist = |a: &[f32], c: &[f32]| {
        a.iter()
            .zip(c)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    };
    for i in 0..b.len() {
        assert_eq!(
            bank.row(b.dim, i, 0),
            b.row(i),
            "face {i}: view 0 is the face"
        );
        for v in 1..3 {
            let d = dist(bank.row(b.dim, i, v), b.row(i));
            assert!(d > 0.0 && d < 0.6, "face {i} view {v}: distance {d}");
        }
    }
    let again = extract(&faces, &out, &cfg).unwrap();
    assert_eq!(again.computed, 0);
    assert_eq!(Bottlenecks::read(&out).unwrap(), b);
    // Without the photos' folder the views cannot be cut: a clear error.
    let e = extract(
        &faces,
        &out,
        &ExtractConfig {
            view_recipe: None,
            ..cfg
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("--photos"), "{e}");
}
