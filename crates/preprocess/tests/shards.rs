//! Sharded preprocessing (#26): jobs that each make part of the shards, merged, equal one
//! process to the byte; a re-run makes only what is missing; shards made otherwise are
//! refused with the difference named. Needs ../shared (photos) and Debian's data packages.

use artifacts::{Faces, JobPart};
use preprocess::shards::{make_part, merge};
use preprocess::PreprocessConfig;
use std::path::{Path, PathBuf};
use test_support::shared;

/// 3 people x 12 photos of msceleb-samples, linked into `dir/photos`.
fn photos(dir: &Path) -> PathBuf {
    let root = dir.join("photos");
    let src = shared().join("data/msceleb-samples");
    let mut people: Vec<_> = std::fs::read_dir(&src).unwrap().flatten().collect();
    people.sort_by_key(|e| e.file_name());
    for p in people.iter().take(3) {
        let out = root.join(p.file_name());
        std::fs::create_dir_all(&out).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(p.path()).unwrap().flatten().collect();
        files.sort_by_key(|e| e.file_name());
        for f in files.iter().take(12) {
            std::os::unix::fs::symlink(f.path(), out.join(f.file_name())).unwrap();
        }
    }
    root
}

/// Haar only (fast, no model file needed), 8 faces a shard: 36 photos give 8 shards.
fn config() -> PreprocessConfig {
    let mut cfg = PreprocessConfig {
        shard_size: 8,
        ..Default::default()
    };
    cfg.detector.kind = preprocess::detect::DetectorKind::Haar;
    cfg.resolved().unwrap()
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs ../shared and Debian data packages"]
fn parts_merged_equal_one_process_and_reruns_make_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let input = photos(dir.path());
    let cfg = config();
    let one = dir.path().join("one/faces.safetensors");
    let s = preprocess::run(&input, &one, &cfg).unwrap();
    assert_eq!((s.candidates, s.shards), (36, 8));

    // Three jobs, then the merge: the same index and shards, byte for byte.
    let three = dir.path().join("three/faces.safetensors");
    let mut made = Vec::new();
    for i in 0..3 {
        let part = JobPart { index: i, count: 3 };
        let p = make_part(&input, &three, &cfg, part).unwrap();
        assert!(!p.made.is_empty(), "{p:?}");
        made.extend(p.made);
    }
    // Every shard made by exactly one job.
    made.sort_unstable();
    assert_eq!(made, (0..8).collect::<Vec<_>>());
    // What a killed job leaves (a spool file) is cleared by the merge.
    let spool = three.with_file_name("faces.shards/.00001.safetensors.images.7.spool");
    std::fs::write(&spool, b"half").unwrap();
    let m = merge(&input, &three, &cfg, std::time::Instant::now()).unwrap();
    assert_eq!((m.faces, m.rejected), (s.faces, s.rejected));
    assert!(!spool.exists());
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&three).unwrap());
    let shards = |p: &Path| files_of(&p.with_file_name("faces.shards"));
    assert_eq!(shards(&one), shards(&three));
    assert_eq!(Faces::read(&one).unwrap(), Faces::read(&three).unwrap());

    // A deleted shard: the merge names it; a re-run makes it and nothing else.
    let gone = three.with_file_name("faces.shards/00005.safetensors");
    std::fs::remove_file(&gone).unwrap();
    let e = merge(&input, &three, &cfg, std::time::Instant::now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard 5"), "{e}");
    let again = make_part(&input, &three, &cfg, JobPart::ALL).unwrap();
    assert_eq!(again.made, vec![5]);
    assert_eq!(again.up_to_date.len(), 7);
    merge(&input, &three, &cfg, std::time::Instant::now()).unwrap();
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&three).unwrap());
    // A truncated shard is an error naming it when the faces are read.
    let bytes = std::fs::read(&gone).unwrap();
    std::fs::write(&gone, &bytes[..bytes.len() / 2]).unwrap();
    let e = Faces::read(&three).unwrap_err().to_string();
    assert!(
        e.contains("00005.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
#[ignore = "needs ../shared and Debian data packages"]
fn shards_made_with_other_settings_are_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let input = photos(dir.path());
    let cfg = config();
    let out = dir.path().join("faces.safetensors");
    make_part(&input, &out, &cfg, JobPart { index: 0, count: 2 }).unwrap();
    let other = PreprocessConfig {
        sigma: 2.0,
        ..cfg.clone()
    };
    make_part(&input, &out, &other, JobPart { index: 1, count: 2 }).unwrap();
    let e = merge(&input, &out, &cfg, std::time::Instant::now())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("4 of 8 shards") && e.contains("shard 1: made with other settings (sigma"),
        "{e}"
    );
    assert!(!out.exists(), "no index over mixed shards");
}
