//! Planted label errors: moves a seeded share of the faces into another class and reports
//! how many the identity analysis flags (recall), and how many of the flags that are new
//! against the untouched data are moved faces (precision). With a face teacher's
//! bottlenecks the identity rules run (`identity::analyse`), with any other teacher the
//! neighbour/medoid rules (`suspects::find`).
//! `cargo run --release -p eval-tsne --example plant_errors -- FACES BOTTLENECKS [SHARE] [SEED]`

use artifacts::{Bottlenecks, Faces};
use eval_tsne::identity::{analyse, IdentityConfig};
use std::collections::BTreeSet;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (Some(faces), Some(bottlenecks)) = (a.first(), a.get(1)) else {
        anyhow::bail!("usage: plant_errors FACES BOTTLENECKS [SHARE] [SEED]");
    };
    let share: f64 = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(0.05);
    let seed: u64 = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let f = Faces::read(faces.as_ref())?;
    let b = Bottlenecks::read(bottlenecks.as_ref())?;
    let cfg = IdentityConfig::default();
    let identity = artifacts::is_face_teacher(&b.teacher);
    let flagged = |labels: &[u32]| -> BTreeSet<usize> {
        if identity {
            analyse(&b.features, b.dim, labels, &f.class_names, &f.sources, &cfg)
                .suspects
                .iter()
                .map(|s| s.index)
                .collect()
        } else {
            eval_tsne::suspects::find(
                &b.features,
                b.dim,
                labels,
                &f.class_names,
                &f.sources,
                &Default::default(),
            )
            .iter()
            .map(|s| s.index)
            .collect()
        }
    };
    let base = flagged(&f.labels);
    let n = f.labels.len();
    let classes = f.class_names.len() as u64;
    let mut draw = kernels::stats::XorShift::new(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut next = || draw.next_u64();
    let mut labels = f.labels.clone();
    let mut moved = BTreeSet::new();
    while (moved.len() as f64) < share * n as f64 {
        let i = (next() % n as u64) as usize;
        if moved.insert(i) {
            let shift = 1 + next() % (classes - 1);
            labels[i] = ((labels[i] as u64 + shift) % classes) as u32;
        }
    }
    let planted = flagged(&labels);
    // Of the moved faces the identity rules flag, how many are named as their true class.
    let named = if identity {
        analyse(
            &b.features,
            b.dim,
            &labels,
            &f.class_names,
            &f.sources,
            &cfg,
        )
        .suspects
        .iter()
        .filter(|s| moved.contains(&s.index))
        .filter(|s| {
            s.verdict
                == eval_tsne::identity::Verdict::OtherPerson {
                    class: f.class_names[f.labels[s.index] as usize].clone(),
                }
        })
        .count()
    } else {
        0
    };
    let caught = moved.iter().filter(|i| planted.contains(i)).count();
    let new: Vec<&usize> = planted.iter().filter(|i| !base.contains(i)).collect();
    let new_moved = new.iter().filter(|i| moved.contains(i)).count();
    println!(
        "{}",
        serde_json::json!({
            "faces": n, "moved": moved.len(), "flagged_untouched": base.len(),
            "flagged_planted": planted.len(), "recall": caught as f64 / moved.len() as f64,
            "new_flags": new.len(), "precision_new": new_moved as f64 / new.len().max(1) as f64,
            "seed": seed, "moved_named_as_their_class": named, "rules": if identity { "identity" } else { "neighbours and medoid" },
        })
    );
    Ok(())
}
