//! Every artifact round-trips; corrupt, foreign and inconsistent files give clear errors.

use artifacts::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn prov() -> Provenance {
    Provenance::new("test", "0.0.0", serde_json::json!({"size": 4})).with_input("x", "sha256:00")
}

fn faces(n: usize, geometry: bool) -> Faces {
    Faces {
        height: 4,
        width: 5,
        images: (0..n * 4 * 5 * 3).map(|i| (i % 251) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 2).collect(),
        splits: (0..n)
            .map(|i| [Split::Train, Split::Val, Split::Test][i % 3])
            .collect(),
        class_names: vec!["alice".into(), "bob".into()],
        sources: (0..n).map(|i| format!("c/{i}.jpg")).collect(),
        geometry: geometry.then(|| FaceGeometry {
            boxes: (0..n).map(|i| [i as f32, 1.0, 2.0, 3.0]).collect(),
            landmarks: (0..n * 136).map(|i| i as f32 * 0.5).collect(),
            transforms: (0..n * 6).map(|i| i as f32).collect(),
            chips: Some((0..n * 150 * 150 * 3).map(|i| (i % 7) as u8).collect()),
        }),
        provenance: prov(),
    }
}

#[test]
fn faces_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for geometry in [false, true] {
        let p = dir.path().join("faces.safetensors");
        let f = faces(7, geometry);
        f.write(&p).unwrap();
        assert_eq!(Faces::read(&p).unwrap(), f);
        let h = read_header(&p).unwrap();
        assert_eq!(h.schema, FACES_SCHEMA);
        assert_eq!(h.provenance.producer, "test");
    }
    // No temp files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn bottlenecks_checkpoint_embeddings_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bottlenecks {
        views: None,
        dim: 3,
        features: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        mirrored: None,
        teacher: "hf:timm/inception_v3.tv_in1k@abc".into(),
        layer: "pool".into(),
        faces_digest: "sha256:ff".into(),
        provenance: prov(),
    };
    let p = dir.path().join("b.safetensors");
    b.write(&p).unwrap();
    assert_eq!(Bottlenecks::read(&p).unwrap(), b);
    // The mirrored views travel as a second tensor, which must match the first's shape.
    let bm = Bottlenecks {
        mirrored: Some(vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        ..b.clone()
    };
    let pm = dir.path().join("bm.safetensors");
    bm.write(&pm).unwrap();
    assert_eq!(Bottlenecks::read(&pm).unwrap(), bm);
    let short = Bottlenecks {
        mirrored: Some(vec![1.0; 3]),
        ..b.clone()
    };
    assert!(short.write(&dir.path().join("short.safetensors")).is_err());
    // A bank of 2 views per face, with its recipe; one of the wrong size is refused.
    let bank = artifacts::ViewBank {
        k: 2,
        features: (0..12).map(|v| v as f32).collect(),
        params: vec![0.5; 2 * 2 * 8],
        params_width: 8,
        recipe: serde_json::json!({"seed": 1, "photos": "/p"}),
    };
    let bv = Bottlenecks {
        views: Some(bank.clone()),
        ..b.clone()
    };
    let pv = dir.path().join("bv.safetensors");
    bv.write(&pv).unwrap();
    let back = Bottlenecks::read(&pv).unwrap();
    assert_eq!(back, bv);
    assert_eq!(back.views.unwrap().row(3, 1, 1), &[9.0, 10.0, 11.0]);
    let bad = Bottlenecks {
        views: Some(artifacts::ViewBank { k: 3, ..bank }),
        ..b.clone()
    };
    assert!(bad.write(&dir.path().join("bad.safetensors")).is_err());

    let mut weights = BTreeMap::new();
    weights.insert(
        "conv1.weight".to_string(),
        NamedTensor {
            shape: vec![2, 3],
            data: vec![0.5; 6],
        },
    );
    weights.insert(
        "fc1.bias".to_string(),
        NamedTensor {
            shape: vec![2],
            data: vec![-1.0, 1.0],
        },
    );
    let mut optimizer = BTreeMap::new();
    optimizer.insert(
        "m/fc1.bias".to_string(),
        NamedTensor {
            shape: vec![2],
            data: vec![0.1, 0.2],
        },
    );
    let c = Checkpoint {
        weights,
        optimizer,
        mean_image: NamedTensor {
            shape: vec![2, 2, 3],
            data: (0..12).map(|i| i as f32).collect(),
        },
        model_config: serde_json::json!({"num_classes": 2}),
        train_state: serde_json::json!({"epoch": 3, "rng": [1, 2]}),
        provenance: prov(),
    };
    let p = dir.path().join("c.safetensors");
    c.write(&p).unwrap();
    assert_eq!(Checkpoint::read(&p).unwrap(), c);

    let e = Embeddings {
        dim: 2,
        features: vec![0.0, 1.0, 2.0, 3.0],
        tsne: vec![0.5, 0.5, -0.5, -0.5],
        teacher_tsne: Some(vec![1.0, 1.0, 2.0, 2.0]),
        labels: vec![0, 1],
        predictions: vec![0, 0],
        splits: vec![Split::Train, Split::Test],
        class_names: vec!["a".into(), "b".into()],
        sources: vec!["a/1.jpg".into(), "b/2.jpg".into()],
        kl: vec![0.7, 0.8],
        provenance: prov(),
    };
    let p = dir.path().join("e.safetensors");
    e.write(&p).unwrap();
    assert_eq!(Embeddings::read(&p).unwrap(), e);
}

fn err_of<T: std::fmt::Debug>(r: Result<T, ArtifactError>) -> String {
    r.expect_err("must fail").to_string()
}

#[test]
fn corrupt_and_foreign_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("faces.safetensors");
    faces(3, true).write(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    // Truncated in the tensor data.
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let m = err_of(Faces::read(&p));
    assert!(
        m.contains("truncated.safetensors") && m.contains("not a safetensors file"),
        "{m}"
    );

    // Truncated inside the header, and an empty file.
    std::fs::write(&p, &bytes[..20]).unwrap();
    assert!(err_of(Faces::read(&p)).contains("not a safetensors file"));
    std::fs::write(&p, b"").unwrap();
    assert!(err_of(Faces::read(&p)).contains("not a safetensors file"));

    // A JPEG (or any other format).
    let p = dir.path().join("photo.jpg");
    std::fs::write(
        &p,
        [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1,
        ],
    )
    .unwrap();
    assert!(err_of(Faces::read(&p)).contains("photo.jpg"));

    // A valid safetensors file from elsewhere, without our metadata.
    let p = dir.path().join("foreign.safetensors");
    let data: Vec<u8> = vec![0; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    std::fs::write(&p, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    let m = err_of(Faces::read(&p));
    assert!(m.contains("not a celeb-transfer artifact"), "{m}");

    // The wrong kind of artifact.
    let m = err_of(Bottlenecks::read(&good));
    assert!(
        m.contains("expected a `bottlenecks` artifact, found `faces`"),
        "{m}"
    );

    // A future schema version.
    let mut header = read_header(&good).unwrap();
    header.schema_version = 99;
    let p = dir.path().join("future.safetensors");
    write_raw(
        &p,
        &header,
        &[
            ("images", vec![3, 4, 5, 3], vec![0u8; 180]),
            ("labels", vec![3], vec![0u8; 12]),
            ("splits", vec![3], vec![0u8; 3]),
        ],
    );
    let m = err_of(Faces::read(&p));
    assert!(m.contains("version 99"), "{m}");

    // N disagrees between tensors.
    let header = read_header(&good).unwrap();
    let p = dir.path().join("mismatch.safetensors");
    write_raw(
        &p,
        &header,
        &[
            ("images", vec![3, 4, 5, 3], vec![0u8; 180]),
            ("labels", vec![2], vec![0u8; 8]),
            ("splits", vec![3], vec![0u8; 3]),
        ],
    );
    let m = err_of(Faces::read(&p));
    assert!(
        m.contains("mismatch.safetensors") && m.contains("labels") && m.contains("N = 3"),
        "{m}"
    );

    // A label out of range of the class names.
    let p = dir.path().join("labels.safetensors");
    let mut labels = vec![0u8; 12];
    labels[4] = 9;
    write_raw(
        &p,
        &header,
        &[
            ("images", vec![3, 4, 5, 3], vec![0u8; 180]),
            ("labels", vec![3], labels),
            ("splits", vec![3], vec![0u8; 3]),
        ],
    );
    assert!(err_of(Faces::read(&p)).contains("label 9"));
}

/// Writes a file with our header but hand-made tensors (u8 images, u32 labels, u8 splits).
fn write_raw(path: &Path, header: &Header, tensors: &[(&str, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let dtype = if *name == "labels" {
                safetensors::Dtype::U32
            } else {
                safetensors::Dtype::U8
            };
            (
                name.to_string(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> =
        [(META_KEY.to_string(), serde_json::to_string(header).unwrap())].into();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn writing_refuses_inconsistent_data_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("faces.safetensors");
    let f = faces(3, false);
    f.write(&p).unwrap();
    let mut bad = f.clone();
    bad.sources.pop();
    assert!(bad.write(&p).is_err());
    assert_eq!(
        Faces::read(&p).unwrap(),
        f,
        "a failed write leaves the old file intact"
    );
}

#[test]
fn digests_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b"abc").unwrap();
    let d = digest_file(&p).unwrap();
    assert_eq!(
        d,
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(d, digest_bytes(b"abc"));
}

#[test]
fn up_to_date_needs_this_build_these_settings_and_these_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("faces.safetensors");
    let config = serde_json::json!({"size": 4});
    let inputs: BTreeMap<String, String> = [("x".to_string(), "sha256:00".to_string())].into();
    assert!(!up_to_date(&p, FACES_SCHEMA, &config, &inputs), "missing");
    let mut f = faces(3, false);
    f.provenance =
        Provenance::new("test", build_version(), config.clone()).with_input("x", "sha256:00");
    f.write(&p).unwrap();
    assert!(up_to_date(&p, FACES_SCHEMA, &config, &inputs));
    assert!(!up_to_date(&p, BOTTLENECKS_SCHEMA, &config, &inputs));
    assert!(!up_to_date(
        &p,
        FACES_SCHEMA,
        &serde_json::json!({"size": 5}),
        &inputs
    ));
    let other: BTreeMap<String, String> = [("x".to_string(), "sha256:01".to_string())].into();
    assert!(!up_to_date(&p, FACES_SCHEMA, &config, &other));
    // Same settings and inputs, made by another build: stale.
    f.provenance.producer_version = "0.0.0+000000000000".into();
    f.write(&p).unwrap();
    assert!(!up_to_date(&p, FACES_SCHEMA, &config, &inputs));
    assert!(build_version().starts_with(env!("CARGO_PKG_VERSION")));
    assert!(!build_version().ends_with("unknown"), "{}", build_version());
}

/// Writes `f` as a sharded artifact at `index`, `per` faces a shard; returns the shards.
fn write_sharded(f: &Faces, index: &Path, per: usize) -> Vec<ShardRef> {
    let g = f.geometry.as_ref().unwrap();
    let mut refs = Vec::new();
    for (k, start) in (0..f.len()).step_by(per).enumerate() {
        let file = shards::shard_ref_path(index, k);
        let path = index.parent().unwrap().join(&file);
        let mut w = FaceShardWriter::create(&path, [f.height, f.width], true).unwrap();
        for i in start..(start + per).min(f.len()) {
            w.push(ShardFace {
                image: &f.image(i),
                chip: g.chip(i).as_deref(),
                source: f.sources[i].clone(),
                rect: g.boxes[i],
                landmarks: &g.landmarks[i * 136..(i + 1) * 136],
                transform: &g.transforms[i * 6..(i + 1) * 6],
            })
            .unwrap();
        }
        let rows = w.len();
        let written = w.finish(prov(), serde_json::json!({})).unwrap();
        refs.push(ShardRef {
            file,
            rows,
            bytes: written.bytes,
            digest: written.digest,
        });
    }
    f.write_index(index, refs.clone()).unwrap();
    refs
}

#[test]
fn sharded_faces_read_like_one_file_and_name_a_bad_shard() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("faces.safetensors");
    let f = faces(7, true);
    let refs = write_sharded(&f, &index, 3);
    assert_eq!(refs.len(), 3);
    let back = Faces::read(&index).unwrap();
    assert!(!back.images.in_memory());
    assert_eq!(back, f);
    assert_eq!(Faces::shards_of(&index).unwrap().unwrap(), refs);
    // Each shard is a plain safetensors file with its own pixels and digest.
    let shard1 = dir.path().join(&refs[1].file);
    let bytes = std::fs::read(&shard1).unwrap();
    assert_eq!(digest_bytes(&bytes), refs[1].digest);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("images").unwrap().shape(), &[3, 4, 5, 3]);
    assert_eq!(
        st.tensor("images").unwrap().data(),
        &*f.images.sub(3 * 60, 3 * 60).to_vec()
    );
    let s = FaceShard::read(&index, &refs[1]).unwrap();
    assert_eq!(s.sources, f.sources[3..6]);
    // The rows of one shard, as their own set.
    assert_eq!(back.rows(3, 6).image(1), f.image(4));

    // Truncated: named, with the sizes.
    std::fs::write(&shard1, &bytes[..bytes.len() - 10]).unwrap();
    let m = err_of(Faces::read(&index));
    assert!(
        m.contains("00001.safetensors") && m.contains("truncated"),
        "{m}"
    );
    // Missing.
    std::fs::remove_file(&shard1).unwrap();
    let m = err_of(Faces::read(&index));
    assert!(
        m.contains("00001.safetensors") && m.contains("missing"),
        "{m}"
    );
    // Foreign: another artifact of the same size in its place.
    let other = dir.path().join("other.safetensors");
    faces(3, false).write(&other).unwrap();
    std::fs::copy(&other, &shard1).unwrap();
    let mut refs2 = refs.clone();
    refs2[1].bytes = std::fs::metadata(&shard1).unwrap().len();
    f.write_index(&index, refs2).unwrap();
    let m = err_of(Faces::read(&index));
    assert!(
        m.contains("00001.safetensors") && m.contains("`faces` artifact"),
        "{m}"
    );
}

/// The face teacher's id has one writer; ids agree when the weights do, whatever the file
/// is called, and an Inception id never matches one.
#[test]
fn face_teacher_ids_compare_by_digest() {
    let hex = "55533b28a95800a5aaaabbbbccccdddd";
    let a = face_teacher_id(
        Path::new("/m/dlib_face_recognition_resnet_model_v1.dat"),
        hex,
    );
    assert_eq!(
        a,
        "dlib-face:dlib_face_recognition_resnet_model_v1.dat#55533b28a95800a5"
    );
    assert!(is_face_teacher(&a));
    let renamed = face_teacher_id(Path::new("copy.dat"), hex);
    assert!(same_face_teacher(&a, &renamed));
    let other = face_teacher_id(Path::new("copy.dat"), "0123456789abcdef00");
    assert!(!same_face_teacher(&a, &other));
    assert!(!same_face_teacher(&a, "dir:inception-v3#55533b28a95800a5"));
    assert!(!same_face_teacher("dlib-face:x#", "dlib-face:y#"));
    // From a file: its content's digest, and not dlib's published model.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-face-model.dat");
    std::fs::write(&file, b"not dlib's weights").unwrap();
    let (id, published) = artifacts::face_teacher_of_file(&file).unwrap();
    let hex = artifacts::digest_file(&file).unwrap();
    assert_eq!(id, face_teacher_id(&file, &hex["sha256:".len()..]));
    assert!(id.starts_with("dlib-face:my-face-model.dat#") && !published);
    assert!(artifacts::face_teacher_of_file(&dir.path().join("missing.dat")).is_err());
}
