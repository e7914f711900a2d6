//! The evaluation's steps that compute and record (the pictures are in `figures`): what
//! [`crate::evaluate`] runs, in its order.

use crate::{identity, metrics, suspects, tsne, EvalConfig, EvalError, Report};
use artifacts::{Bottlenecks, Checkpoint, Embeddings, Faces, Provenance, Split};
use candle_core::Device;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use train::inference::{Predictions, Predictor};

/// What the evaluation reads: the faces, the teacher's bottlenecks of those faces (when
/// present), and the model.
pub(crate) struct Loaded {
    pub device: Device,
    pub faces: Faces,
    pub teacher: Option<Bottlenecks>,
    pub predictor: Predictor,
    pub checkpoint: Checkpoint,
}

/// Checks the font first (so a missing one fails before minutes of t-SNE), makes the
/// output folder, and reads the inputs, refusing bottlenecks of other faces and a probe
/// without its bottlenecks.
pub(crate) fn load(cfg: &EvalConfig) -> Result<Loaded, EvalError> {
    draw::load_font(&cfg.font)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| EvalError::Io(cfg.out.clone(), e))?;
    let device = kernels::device::pick(cfg.device)?;
    let faces = Faces::read(&cfg.faces)?;
    let faces_digest = artifacts::digest_file(&cfg.faces)?;
    let teacher = match &cfg.bottlenecks {
        Some(p) if p.exists() => {
            let b = Bottlenecks::read(p)?;
            if b.faces_digest != faces_digest || b.len() != faces.len() {
                return Err(EvalError::StaleBottlenecks {
                    bottlenecks: p.clone(),
                    faces: cfg.faces.clone(),
                });
            }
            Some(b)
        }
        _ => None,
    };
    let (predictor, checkpoint) = Predictor::load(&cfg.checkpoint, &device)?;
    if checkpoint.provenance.inputs.get("faces") != Some(&faces_digest) {
        tracing::warn!(
            "{} was trained on another faces file; evaluating anyway",
            cfg.checkpoint.display()
        );
    }
    if predictor.needs_teacher() && teacher.is_none() {
        return Err(EvalError::ProbeNeedsBottlenecks);
    }
    Ok(Loaded {
        device,
        faces,
        teacher,
        predictor,
        checkpoint,
    })
}

/// The model's outputs on every face and the metrics of the faces the exclusions keep.
pub(crate) struct Scored {
    pub pred: Predictions,
    /// Predicted class per face.
    pub predicted: Vec<u32>,
    /// Sources the exclusions file marks `drop`.
    pub dropped: BTreeSet<String>,
    /// Faces of the artifact that `dropped` leaves out.
    pub excluded: usize,
    pub test: Option<metrics::Metrics>,
    pub val: Option<metrics::Metrics>,
}

/// Test accuracy on the faces the identity analysis does not flag (another person's face
/// or a stranger in the folder): what the model gets where the labels are right.
fn unflagged_accuracy(
    run: &Loaded,
    scored: &Scored,
    id: &identity::IdentityReport,
) -> Option<crate::Unflagged> {
    let faces = &run.faces;
    let flagged: BTreeSet<usize> = id.suspects.iter().map(|s| s.index).collect();
    let kept: Vec<usize> = (0..faces.len())
        .filter(|&i| faces.splits[i] == artifacts::Split::Test)
        .filter(|i| !flagged.contains(i) && !scored.dropped.contains(&faces.sources[*i]))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let right = kept
        .iter()
        .filter(|&&i| scored.predicted[i] == faces.labels[i])
        .count();
    Some(crate::Unflagged {
        faces: kept.len(),
        top1: right as f64 / kept.len() as f64,
    })
}

/// Runs the model on all faces and scores the test and validation splits.
pub(crate) fn score(cfg: &EvalConfig, run: &Loaded) -> Result<Scored, EvalError> {
    let faces = &run.faces;
    let all: Vec<usize> = (0..faces.len()).collect();
    let pred = run
        .predictor
        .predict(faces, run.teacher.as_ref(), &all, &run.device)?;
    let predicted = pred.argmax();
    let dropped = match &cfg.exclusions {
        Some(p) => artifacts::exclusions::dropped(p)?,
        None => Default::default(),
    };
    let excluded = faces
        .sources
        .iter()
        .filter(|s| dropped.contains(*s))
        .count();
    let test = split_metrics(faces, &pred, &dropped, Split::Test);
    let val = split_metrics(faces, &pred, &dropped, Split::Val);
    Ok(Scored {
        pred,
        predicted,
        dropped,
        excluded,
        test,
        val,
    })
}

/// The metrics of `split`'s kept faces; `None` when it has none.
fn split_metrics(
    faces: &Faces,
    pred: &Predictions,
    dropped: &BTreeSet<String>,
    split: Split,
) -> Option<metrics::Metrics> {
    let mut idx = faces.indices(split);
    idx.retain(|&i| !dropped.contains(&faces.sources[i]));
    if idx.is_empty() {
        return None;
    }
    let c = pred.num_classes;
    let probs: Vec<f32> = idx
        .iter()
        .flat_map(|&i| pred.probs[i * c..(i + 1) * c].iter().copied())
        .collect();
    let labels: Vec<u32> = idx.iter().map(|&i| faces.labels[i]).collect();
    Some(metrics::compute(&probs, &labels, &faces.class_names))
}

/// The t-SNE maps of the student's embeddings and of the teacher's bottlenecks.
pub(crate) struct Maps {
    pub student: tsne::TsneResult,
    pub teacher: Option<tsne::TsneResult>,
}

/// Student first, then teacher: each run seeds its own generator from `cfg.tsne`.
pub(crate) fn maps(cfg: &EvalConfig, run: &Loaded, scored: &Scored) -> Maps {
    let (pred, n) = (&scored.pred, run.faces.len());
    Maps {
        student: tsne::tsne(&pred.embeddings, n, pred.dim, &cfg.tsne),
        teacher: run
            .teacher
            .as_ref()
            .map(|b| tsne::tsne(&b.features, n, b.dim, &cfg.tsne)),
    }
}

fn flat(m: &tsne::TsneResult) -> Vec<f32> {
    m.embedding
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect()
}

/// Writes `embeddings.safetensors` (embeddings, maps, predictions, with the settings and
/// input digests that `up_to_date` compares); returns it and its path.
pub(crate) fn write_embeddings(
    cfg: &EvalConfig,
    run: &Loaded,
    scored: &Scored,
    maps: &Maps,
) -> Result<(Embeddings, PathBuf), EvalError> {
    let faces = &run.faces;
    let mut provenance = Provenance::new(
        env!("CARGO_PKG_NAME"),
        artifacts::build_version(),
        serde_json::to_value(cfg).expect("plain"),
    );
    provenance.inputs = crate::provenance_inputs(cfg).ok_or(EvalError::InputsChanged)?;
    let emb = Embeddings {
        dim: scored.pred.dim,
        features: scored.pred.embeddings.clone(),
        tsne: flat(&maps.student),
        teacher_tsne: maps.teacher.as_ref().map(flat),
        labels: faces.labels.clone(),
        predictions: scored.predicted.clone(),
        splits: faces.splits.clone(),
        class_names: faces.class_names.clone(),
        sources: faces.sources.clone(),
        kl: std::iter::once(maps.student.kl)
            .chain(maps.teacher.as_ref().map(|m| m.kl))
            .collect(),
        provenance,
    };
    let path = cfg.out.join("embeddings.safetensors");
    emb.write(&path)?;
    Ok((emb, path))
}

/// Neighbour/medoid suspects in the teacher's feature space when present, else the
/// student's.
pub(crate) fn suspects(cfg: &EvalConfig, run: &Loaded, scored: &Scored) -> Vec<suspects::Suspect> {
    let (features, dim) = match &run.teacher {
        Some(b) => (&b.features, b.dim),
        None => (&scored.pred.embeddings, scored.pred.dim),
    };
    let faces = &run.faces;
    suspects::find(
        features,
        dim,
        &faces.labels,
        &faces.class_names,
        &faces.sources,
        &cfg.suspects,
    )
}

/// Identity suspects and split folders, when the teacher knows identities; over the faces
/// the exclusions keep, so a person who drops a folder's largest cluster makes the next
/// one its person. Indices are the faces artifact's.
pub(crate) fn identity(
    run: &Loaded,
    dropped: &BTreeSet<String>,
) -> Option<identity::IdentityReport> {
    let b = run
        .teacher
        .as_ref()
        .filter(|b| artifacts::is_face_teacher(&b.teacher))?;
    let faces = &run.faces;
    let kept: Vec<usize> = (0..faces.len())
        .filter(|&i| !dropped.contains(&faces.sources[i]))
        .collect();
    let feats: Vec<f32> = kept
        .iter()
        .flat_map(|&i| b.features[i * b.dim..(i + 1) * b.dim].iter().copied())
        .collect();
    let labels: Vec<u32> = kept.iter().map(|&i| faces.labels[i]).collect();
    let sources: Vec<String> = kept.iter().map(|&i| faces.sources[i].clone()).collect();
    let mut r = identity::analyse(
        &feats,
        b.dim,
        &labels,
        &faces.class_names,
        &sources,
        &identity::IdentityConfig::default(),
    );
    // Back to the faces artifact's indices.
    r.suspects.iter_mut().for_each(|s| s.index = kept[s.index]);
    r.split_folders
        .iter_mut()
        .flat_map(|f| f.members.iter_mut().flatten())
        .for_each(|i| *i = kept[*i]);
    Some(r)
}

/// The cleaning loop's file, `flags.csv`: every identity flag, ranked, `drop` prefilled; a
/// person edits it and passes it back as `--exclusions`.
pub(crate) fn write_flags(out: &Path, id: &identity::IdentityReport) -> Result<(), EvalError> {
    let flags: Vec<artifacts::exclusions::Flag> = id
        .suspects
        .iter()
        .map(|s| artifacts::exclusions::Flag {
            drop: true,
            source: s.source.clone(),
            label: s.label.clone(),
            verdict: s.verdict.kind().into(),
            looks_like: s.verdict.looks_like().unwrap_or_default().into(),
            distance: s.own_distance,
        })
        .collect();
    artifacts::exclusions::write(&out.join("flags.csv"), &flags)?;
    Ok(())
}

/// The pictures, in the order the report lists them after the embeddings.
pub(crate) struct Pictures {
    /// Titled: the maps, the confusion matrix, the misclassified faces.
    pub overview: Vec<(String, PathBuf)>,
    pub suspects: Vec<PathBuf>,
    pub identity: Vec<PathBuf>,
}

/// `report.json`'s content.
pub(crate) fn report(
    cfg: &EvalConfig,
    run: &Loaded,
    scored: &Scored,
    maps: &Maps,
    found: (Vec<suspects::Suspect>, Option<identity::IdentityReport>),
    files: Vec<String>,
) -> Report {
    let (suspects, identity) = found;
    let test_unflagged = identity
        .as_ref()
        .and_then(|id| unflagged_accuracy(run, scored, id));
    Report {
        test_unflagged,
        checkpoint: cfg.checkpoint.display().to_string(),
        mode: run.checkpoint.train_state["config"]["mode"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        test: scored.test.clone(),
        val: scored.val.clone(),
        tsne_kl_student: maps.student.kl,
        tsne_kl_teacher: maps.teacher.as_ref().map(|m| m.kl),
        excluded: scored.excluded,
        suspects,
        identity,
        files,
    }
}

/// Every file the evaluation wrote that the report lists: the embeddings, then the
/// pictures.
pub(crate) fn files(embeddings: &Path, pictures: &Pictures) -> Vec<String> {
    std::iter::once(embeddings)
        .chain(pictures.overview.iter().map(|(_, p)| p.as_path()))
        .chain(pictures.suspects.iter().map(PathBuf::as_path))
        .chain(pictures.identity.iter().map(PathBuf::as_path))
        .map(|p| p.display().to_string())
        .collect()
}

/// Writes `report.json` (pretty JSON, as the report's readers expect) and `report.html`.
pub(crate) fn write_report(
    cfg: &EvalConfig,
    run: &Loaded,
    report: &Report,
    pictures: Pictures,
) -> Result<(), EvalError> {
    artifacts::write_json_atomic(&cfg.out.join("report.json"), report)?;
    let page = crate::report::Page {
        title: format!("celeb-transfer evaluation: {}", report.mode),
        summary: summary(cfg, run, report),
        test: report.test.as_ref(),
        val: report.val.as_ref(),
        images: pictures.overview,
        suspects: &report.suspects,
        suspect_images: pictures.suspects,
        identity: report.identity.as_ref(),
        identity_images: pictures.identity,
    };
    crate::report::write(&cfg.out.join("report.html"), &page)?;
    Ok(())
}

/// The page's table of what was evaluated.
fn summary(cfg: &EvalConfig, run: &Loaded, report: &Report) -> Vec<(String, String)> {
    let faces = &run.faces;
    let mut rows = vec![
        ("checkpoint".into(), cfg.checkpoint.display().to_string()),
        (
            "faces".into(),
            format!(
                "{} ({} images, {} classes)",
                cfg.faces.display(),
                faces.len(),
                faces.class_names.len()
            ),
        ),
        (
            "teacher".into(),
            run.teacher
                .as_ref()
                .map(|b| format!("{} ({}, {}-d)", b.teacher, b.layer, b.dim))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "t-SNE KL (student / teacher)".into(),
            format!(
                "{:.4} / {}",
                report.tsne_kl_student,
                report
                    .tsne_kl_teacher
                    .map(|kl| format!("{kl:.4}"))
                    .unwrap_or_else(|| "-".into())
            ),
        ),
    ];
    if let Some(u) = &report.test_unflagged {
        rows.push((
            "test accuracy, faces the identity analysis does not flag".into(),
            format!("{:.4} ({} faces)", u.top1, u.faces),
        ));
    }
    rows
}
