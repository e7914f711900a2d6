//! What a checkpoint records of its inputs: the digests its provenance lists (and
//! `--skip-if-fresh` compares), and the recipe `predict` re-runs to see new photos as the
//! training faces were seen.

use crate::data::Dataset;
use artifacts::Provenance;
use std::collections::BTreeMap;

/// Input name -> digest of one training run: the faces, the teacher's bottlenecks (modes
/// that distil or probe) and the exclusions file (when one was honoured). The one list of
/// train's inputs: the checkpoint's provenance and the up-to-date check both use it.
pub fn inputs(
    faces: String,
    bottlenecks: Option<String>,
    exclusions: Option<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("faces".to_string(), faces);
    if let Some(d) = bottlenecks {
        out.insert("bottlenecks".to_string(), d);
    }
    if let Some(d) = exclusions {
        out.insert("exclusions".to_string(), d);
    }
    out
}

/// [`inputs`] of the data a run trained on.
pub fn inputs_of(data: &Dataset) -> BTreeMap<String, String> {
    inputs(
        data.faces_digest.clone(),
        data.bottlenecks_digest.clone(),
        data.exclusions_digest.clone(),
    )
}

/// The provenance of a checkpoint trained with `config` on `data`.
pub fn of_checkpoint(config: &impl serde::Serialize, data: &Dataset) -> Provenance {
    Provenance {
        inputs: inputs_of(data),
        ..Provenance::new(
            env!("CARGO_PKG_NAME"),
            artifacts::build_version(),
            serde_json::to_value(config).expect("plain"),
        )
    }
}

/// A config's relative paths that exist made absolute, so the recipe works from any
/// folder (the stages record paths as they were typed).
fn absolute_paths(v: &mut serde_json::Value, keys: &[&[&str]]) {
    for path in keys {
        let Some(at) = path.iter().try_fold(&mut *v, |at, k| at.get_mut(*k)) else {
            continue;
        };
        if let Some(p) = at.as_str().map(std::path::PathBuf::from) {
            if p.is_relative() && p.exists() {
                if let Ok(abs) = std::fs::canonicalize(&p) {
                    *at = abs.display().to_string().into();
                }
            }
        }
    }
}

/// How the checkpoint's inputs were made: the faces artifact's producer, build and config
/// (the preprocessing), and the teacher's identity and config. `predict` re-runs these.
pub fn recipe(data: &Dataset) -> serde_json::Value {
    let f = &data.faces.provenance;
    let teacher = data.teacher.as_ref().map(|b| {
        let mut config = b.provenance.config.clone();
        absolute_paths(&mut config, &[&["teacher"]]);
        serde_json::json!({
            "identity": b.teacher,
            "layer": b.layer,
            "dim": b.dim,
            "producer": b.provenance.producer,
            "producer_version": b.provenance.producer_version,
            "config": config,
        })
    });
    let mut config = f.config.clone();
    absolute_paths(
        &mut config,
        &[
            &["landmarks"],
            &["detector", "cascade"],
            &["detector", "cnn_model"],
        ],
    );
    serde_json::json!({
        "faces": {
            "producer": f.producer,
            "producer_version": f.producer_version,
            "config": config,
            "inputs": f.inputs,
            "size": data.faces.height,
        },
        "teacher": teacher,
    })
}
