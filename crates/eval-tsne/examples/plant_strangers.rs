//! Planted strangers: faces of people not in the data (with their face-teacher
//! descriptors) are added to the data's folders in turn, and the identity analysis is asked
//! how many it calls strangers.
//! `cargo run --release -p eval-tsne --example plant_strangers -- FACES BOTTLENECKS STRANGER_FACES STRANGER_BOTTLENECKS`

use artifacts::{Bottlenecks, Faces};
use eval_tsne::identity::{analyse, IdentityConfig, Verdict};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [faces, bottlenecks, sfaces, sbottlenecks] = a.as_slice() else {
        anyhow::bail!(
            "usage: plant_strangers FACES BOTTLENECKS STRANGER_FACES STRANGER_BOTTLENECKS"
        );
    };
    let f = Faces::read(faces.as_ref())?;
    let b = Bottlenecks::read(bottlenecks.as_ref())?;
    let sf = Faces::read(sfaces.as_ref())?;
    let sb = Bottlenecks::read(sbottlenecks.as_ref())?;
    anyhow::ensure!(
        b.dim == sb.dim,
        "descriptor widths differ: {} and {}",
        b.dim,
        sb.dim
    );
    let classes = f.class_names.len() as u32;
    let mut features = b.features.clone();
    features.extend_from_slice(&sb.features);
    let mut labels = f.labels.clone();
    labels.extend((0..sf.len() as u32).map(|i| i % classes));
    let mut sources = f.sources.clone();
    sources.extend(sf.sources.iter().map(|s| format!("planted:{s}")));
    let r = analyse(
        &features,
        b.dim,
        &labels,
        &f.class_names,
        &sources,
        &IdentityConfig::default(),
    );
    let planted = |s: &&eval_tsne::identity::IdentitySuspect| s.index >= f.len();
    let flagged = r.suspects.iter().filter(planted).count();
    let strangers = r
        .suspects
        .iter()
        .filter(planted)
        .filter(|s| s.verdict == Verdict::Stranger)
        .count();
    println!(
        "{}",
        serde_json::json!({
            "planted": sf.len(), "flagged": flagged, "flagged_as_strangers": strangers,
            "share_strangers": strangers as f64 / sf.len().max(1) as f64,
            "split_folders": r.split_folders.iter().map(|s| (&s.class, &s.sizes)).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
