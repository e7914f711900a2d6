//! The synthetic data set the training tests share.
// Each test crate uses its own part of this module.
#![allow(dead_code)]

use artifacts::{Bottlenecks, Faces, Provenance, Split};
use train::Dataset;

pub const SIZE: usize = 32;

/// 3 classes told apart by colour and a bright square's position, with pixel noise.
pub fn dataset(n_per: usize) -> Dataset {
    let mut lcg = test_support::Lcg::new(7);
    let mut rnd = move || (lcg.next_u64() >> 33) as u32;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut splits = Vec::new();
    let mut feats = Vec::new();
    for c in 0..3u32 {
        for i in 0..n_per {
            for y in 0..SIZE {
                for x in 0..SIZE {
                    let inside = (x / 11) as u32 == c && (8..24).contains(&y);
                    for ch in 0..3 {
                        let base =
                            if ch as u32 == c { 150 } else { 60 } + if inside { 80 } else { 0 };
                        images.push((base + rnd() % 40) as u8);
                    }
                }
            }
            labels.push(c);
            splits.push(if i % 5 == 4 {
                Split::Test
            } else if i % 5 == 3 {
                Split::Val
            } else {
                Split::Train
            });
            for d in 0..16 {
                feats.push(if d % 3 == c as usize {
                    1.0 + (rnd() % 10) as f32 / 50.0
                } else {
                    (rnd() % 10) as f32 / 50.0
                });
            }
        }
    }
    let n = labels.len();
    let faces = Faces {
        height: SIZE,
        width: SIZE,
        images: images.into(),
        labels,
        splits,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        sources: (0..n).map(|i| format!("x/{i}.png")).collect(),
        geometry: None,
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    };
    let teacher = Bottlenecks {
        views: None,
        dim: 16,
        features: feats,
        mirrored: None,
        teacher: "synthetic".into(),
        layer: "pool".into(),
        faces_digest: String::new(),
        provenance: Provenance::new("test", "0", serde_json::json!({})),
    };
    Dataset {
        faces,
        teacher: Some(teacher),
        faces_digest: "sha256:faces".into(),
        bottlenecks_digest: Some("sha256:b".into()),
        exclusions_digest: None,
        shard_starts: vec![0],
    }
}
