//! End to end against dlib: our detector, our 68 landmarks, our dlib chip and our port of
//! dlib's face descriptor on the 28 photos of dlib's fixture.

use artifacts::Faces;
use candle_core::{DType, Device};
use dlib_dnn::{FaceDescriptor, Kernels};
use preprocess::{run, PreprocessConfig};
use std::path::PathBuf;
use test_support::fixture::{Fixture, DLIB_FACE};
use test_support::shared;

#[test]
#[ignore = "needs ../shared (dlib's descriptors of 28 photos) and Debian data packages"]
fn our_pipeline_gives_dlibs_descriptors() {
    let fixture = Fixture::open(DLIB_FACE);
    let photos = fixture.photos();
    let want = fixture.f32s("descriptors");
    // The photos as a class-folder tree (links), so preprocess sees them as it would.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photos");
    for p in &photos {
        let src = shared().join(p).canonicalize().unwrap();
        let rel = PathBuf::from(p);
        let class = rel.parent().unwrap().file_name().unwrap();
        std::fs::create_dir_all(input.join(class)).unwrap();
        std::os::unix::fs::symlink(&src, input.join(class).join(rel.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("faces.safetensors");
    let mut cfg = PreprocessConfig::default();
    cfg.detector.cnn_model = Some(test_support::cnn_detector_model());
    run(&input, &out, &cfg).unwrap();
    let faces = Faces::read(&out).unwrap();
    let g = faces.geometry.as_ref().unwrap();
    let chips = g.chips.as_ref().unwrap();
    let net = FaceDescriptor::open(
        &test_support::descriptor_model(),
        Kernels::CpuNhwc,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let got: Vec<f32> = net
        .descriptors(&chips.to_vec(), faces.len())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 1.0f32;
    let mut found = 0;
    for (i, p) in photos.iter().enumerate() {
        let key = p.trim_start_matches("data/msceleb-samples/");
        let Some(j) = faces.sources.iter().position(|s| s == key) else {
            eprintln!("{p}: no face kept by our preprocess");
            continue;
        };
        found += 1;
        let (a, b) = (&got[j * 128..(j + 1) * 128], &want[i * 128..(i + 1) * 128]);
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (na * nb);
        let dist: f32 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt();
        eprintln!("{p}: cosine {cos:.4}, distance {dist:.3}");
        worst = worst.min(cos);
    }
    eprintln!(
        "{found} of {} photos, worst cosine {worst:.4}",
        photos.len()
    );
    // dlib's HOG detector found all 28; the Haar cascade alone misses m.06w2sn5/1, which
    // dlib's CNN detector finds. Every face must give dlib's descriptor.
    assert!(
        found == photos.len(),
        "only {found} of {} photos gave a face",
        photos.len()
    );
    assert!(worst >= 0.98, "worst cosine {worst}");
}
