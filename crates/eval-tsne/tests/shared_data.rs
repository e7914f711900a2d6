//! On the study's msceleb faces (needs ../shared): preprocess, a short training and the
//! whole evaluation. After `cargo xtask ci`'s pipeline (`CELEB_PIPELINE_OUT`,
//! [`test_support::pipeline_out`]) its faces and its no-teacher student are evaluated
//! instead of preprocessing and training again.

use eval_tsne::{evaluate, EvalConfig};
use test_support::training::train_student;
use train::{TrainConfig, TrainMode};

#[test]
#[ignore = "needs ../shared and Debian data packages"]
fn msceleb_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (faces, checkpoint) = match test_support::pipeline_out() {
        Some(out) => (
            out.join("faces.safetensors"),
            out.join("student-base.safetensors"),
        ),
        None => {
            let faces = dir.path().join("faces.safetensors");
            let s = preprocess::run(
                &test_support::shared().join("data/msceleb-samples"),
                &faces,
                &preprocess::PreprocessConfig::default(),
            )
            .unwrap();
            assert!(s.faces > 1000);
            let cfg = TrainConfig {
                mode: TrainMode::Base,
                epochs: 6,
                min_steps: 0,
                device: kernels::device::DeviceChoice::Cpu,
                ..Default::default()
            };
            let ck = train_student(&faces, None, &cfg, dir.path());
            (faces, ck)
        }
    };
    let out = dir.path().join("eval");
    let r = evaluate(&EvalConfig {
        checkpoint,
        faces,
        bottlenecks: None,
        out: out.clone(),
        ..Default::default()
    })
    .unwrap();
    let test = r.test.unwrap();
    assert_eq!(test.per_class.len(), 14);
    assert!(test.top1 > 3.0 / 14.0, "{}", test.top1);
    assert!(!r.suspects.is_empty(), "dirty folders give suspects");
    assert!(out.join("report.html").exists());
}
