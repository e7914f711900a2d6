//! Evaluation of a trained student (or probe): metrics on the test and validation splits,
//! the student's bottleneck embeddings, t-SNE maps of student and teacher, PNG plots, a
//! self-contained HTML report, and dirty-data suspects.

pub mod identity;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod suspects;
pub mod tsne;

use artifacts::device::DeviceChoice;
use artifacts::{Bottlenecks, Embeddings, Faces, Provenance, Split};
use std::path::{Path, PathBuf};
use train::inference::Predictor;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error(transparent)]
    Train(#[from] train::TrainError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Data(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Everything `eval-tsne` needs; saved in the embeddings artifact.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalConfig {
    pub checkpoint: PathBuf,
    pub faces: PathBuf,
    pub bottlenecks: Option<PathBuf>,
    pub out: PathBuf,
    pub tsne: tsne::TsneConfig,
    pub font: PathBuf,
    pub device: DeviceChoice,
    pub suspects: suspects::SuspectConfig,
    /// The cleaning loop's CSV: faces marked `drop` count in no metric.
    #[serde(default)]
    pub exclusions: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            checkpoint: "data/artifacts/student-cosine.safetensors".into(),
            faces: "data/artifacts/faces.safetensors".into(),
            bottlenecks: Some("data/artifacts/bottlenecks.safetensors".into()),
            out: "data/artifacts/eval-cosine".into(),
            tsne: tsne::TsneConfig::default(),
            font: plots::DEFAULT_FONT.into(),
            device: DeviceChoice::Auto,
            suspects: suspects::SuspectConfig::default(),
            exclusions: None,
        }
    }
}

/// `report.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub checkpoint: String,
    pub mode: String,
    pub test: Option<metrics::Metrics>,
    pub val: Option<metrics::Metrics>,
    pub tsne_kl_student: f64,
    pub tsne_kl_teacher: Option<f64>,
    /// Faces left out of the metrics by the exclusions file.
    #[serde(default)]
    pub excluded: usize,
    pub suspects: Vec<suspects::Suspect>,
    /// With a face-identity teacher: faces far from their folder's person (another person
    /// of the data, or a stranger) and folders that hold two people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<identity::IdentityReport>,
    pub files: Vec<String>,
}

/// Runs the whole evaluation and writes everything into `cfg.out`.
pub fn evaluate(cfg: &EvalConfig) -> Result<Report, EvalError> {
    plots::load_font(&cfg.font).map_err(EvalError::Plot)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| EvalError::Io(cfg.out.clone(), e))?;
    let device = artifacts::device::pick(cfg.device)?;
    let faces = Faces::read(&cfg.faces)?;
    let faces_digest = artifacts::digest_file(&cfg.faces)?;
    let teacher = match &cfg.bottlenecks {
        Some(p) if p.exists() => {
            let b = Bottlenecks::read(p)?;
            if b.faces_digest != faces_digest || b.len() != faces.len() {
                return Err(EvalError::Data(format!(
                    "{} does not belong to {} (stale?)",
                    p.display(),
                    cfg.faces.display()
                )));
            }
            Some(b)
        }
        _ => None,
    };
    let (predictor, ck) = Predictor::load(&cfg.checkpoint, &device)?;
    if ck.provenance.inputs.get("faces") != Some(&faces_digest) {
        tracing::warn!(
            "{} was trained on another faces file; evaluating anyway",
            cfg.checkpoint.display()
        );
    }
    if predictor.needs_teacher() && teacher.is_none() {
        return Err(EvalError::Data(
            "this checkpoint is a probe: pass --bottlenecks".into(),
        ));
    }
    let n = faces.len();
    let all: Vec<usize> = (0..n).collect();
    let pred = predictor.predict(&faces, teacher.as_ref(), &all, &device)?;
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
    let split_metrics = |split: Split| -> Option<metrics::Metrics> {
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
    };
    let test = split_metrics(Split::Test);
    let val = split_metrics(Split::Val);

    let student_map = tsne::tsne(&pred.embeddings, n, pred.dim, &cfg.tsne);
    let teacher_map = teacher
        .as_ref()
        .map(|b| tsne::tsne(&b.features, n, b.dim, &cfg.tsne));
    let flat = |m: &tsne::TsneResult| {
        m.embedding
            .iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect::<Vec<f32>>()
    };
    let mut provenance = Provenance::new(
        env!("CARGO_PKG_NAME"),
        artifacts::build_version(),
        serde_json::to_value(cfg).expect("plain"),
    );
    provenance.inputs = provenance_inputs(cfg)
        .ok_or_else(|| EvalError::Data("inputs changed during the evaluation".into()))?;
    let emb = Embeddings {
        dim: pred.dim,
        features: pred.embeddings.clone(),
        tsne: flat(&student_map),
        teacher_tsne: teacher_map.as_ref().map(flat),
        labels: faces.labels.clone(),
        predictions: predicted.clone(),
        splits: faces.splits.clone(),
        class_names: faces.class_names.clone(),
        sources: faces.sources.clone(),
        kl: std::iter::once(student_map.kl)
            .chain(teacher_map.as_ref().map(|m| m.kl))
            .collect(),
        provenance,
    };
    let emb_path = cfg.out.join("embeddings.safetensors");
    emb.write(&emb_path)?;

    // Pictures.
    let is_test: Vec<bool> = faces.splits.iter().map(|s| *s == Split::Test).collect();
    let wrong: Vec<bool> = (0..n)
        .map(|i| predicted[i] != faces.labels[i] && faces.splits[i] != Split::Train)
        .collect();
    let mut panels = vec![plots::MapPanel {
        title: format!("student bottleneck (KL {:.3})", student_map.kl),
        points: &emb.tsne,
    }];
    if let (Some(t), Some(m)) = (&emb.teacher_tsne, &teacher_map) {
        panels.push(plots::MapPanel {
            title: format!("teacher bottleneck (KL {:.3})", m.kl),
            points: t,
        });
    }
    let tsne_png = cfg.out.join("tsne.png");
    plots::tsne_png(
        &tsne_png,
        &panels,
        &faces.labels,
        &is_test,
        &wrong,
        &faces.class_names,
    )
    .map_err(EvalError::Plot)?;
    let mut images = vec![("t-SNE of the bottlenecks".to_string(), tsne_png.clone())];
    if let Some(m) = &test {
        let p = cfg.out.join("confusion.png");
        plots::confusion_png(&p, &m.confusion, &faces.class_names).map_err(EvalError::Plot)?;
        images.push(("Confusion matrix (test)".into(), p));
    }
    let wrong_test: Vec<usize> = (0..n)
        .filter(|&i| is_test[i] && predicted[i] != faces.labels[i])
        .collect();
    if !wrong_test.is_empty() {
        let tiles: Vec<plots::Tile> = wrong_test
            .iter()
            .take(120)
            .map(|&i| plots::Tile {
                pixels: faces.image(i),
                caption: vec![
                    format!("true {}", faces.class_names[faces.labels[i] as usize]),
                    format!("pred {}", faces.class_names[predicted[i] as usize]),
                ],
            })
            .collect();
        let p = cfg.out.join("misclassified.png");
        plots::montage_png(
            &p,
            &format!("misclassified test faces ({})", wrong_test.len()),
            &tiles,
            faces.width,
            96,
            10,
        )
        .map_err(EvalError::Plot)?;
        images.push(("Misclassified test faces".into(), p));
    }
    // Suspects: the teacher's features when present, else the student's.
    let (sf, sd) = match &teacher {
        Some(b) => (&b.features, b.dim),
        None => (&pred.embeddings, pred.dim),
    };
    let sus = suspects::find(
        sf,
        sd,
        &faces.labels,
        &faces.class_names,
        &faces.sources,
        &cfg.suspects,
    );
    let mut suspect_images = Vec::new();
    for (c, name) in faces.class_names.iter().enumerate() {
        let tiles: Vec<plots::Tile> = sus
            .iter()
            .filter(|s| faces.labels[s.index] as usize == c)
            .take(30)
            .map(|s| plots::Tile {
                pixels: faces.image(s.index),
                caption: vec![
                    s.source.rsplit('/').next().unwrap_or(&s.source).to_string(),
                    format!("score {:.2}", s.score),
                ],
            })
            .collect();
        if tiles.is_empty() {
            continue;
        }
        let p = cfg.out.join(format!("suspects-{}.png", sanitize(name)));
        plots::montage_png(
            &p,
            &format!("suspects labelled {name}"),
            &tiles,
            faces.width,
            96,
            10,
        )
        .map_err(EvalError::Plot)?;
        suspect_images.push(p);
    }
    // Identity suspects and split folders, when the teacher knows identities; over the
    // faces the exclusions keep, so a person who drops a folder's largest cluster makes
    // the next one its person.
    let identity = teacher
        .as_ref()
        .filter(|b| b.teacher.starts_with("dlib-face:"))
        .map(|b| {
            let kept: Vec<usize> = (0..n)
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
            r
        });
    let mut identity_images = Vec::new();
    if let Some(id) = &identity {
        // The cleaning loop's file: every flag, ranked, `drop` prefilled; a person edits it
        // and passes it back as `--exclusions`.
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
        artifacts::exclusions::write(&cfg.out.join("flags.csv"), &flags)?;
        let tile = |i: usize, caption: String| plots::Tile {
            pixels: faces.image(i),
            caption: vec![
                faces.sources[i]
                    .rsplit('/')
                    .next()
                    .unwrap_or(&faces.sources[i])
                    .to_string(),
                caption,
            ],
        };
        for (c, name) in faces.class_names.iter().enumerate() {
            let tiles: Vec<plots::Tile> = id
                .suspects
                .iter()
                .filter(|s| faces.labels[s.index] as usize == c)
                .take(40)
                .map(|s| {
                    tile(
                        s.index,
                        format!("{} {:.2}", s.verdict.describe(), s.own_distance),
                    )
                })
                .collect();
            if tiles.is_empty() {
                continue;
            }
            let p = cfg
                .out
                .join(format!("identity-suspects-{}.png", sanitize(name)));
            plots::montage_png(
                &p,
                &format!("{name}: faces far from the folder's person (distance to it)"),
                &tiles,
                faces.width,
                96,
                10,
            )
            .map_err(EvalError::Plot)?;
            identity_images.push(p);
        }
        for f in &id.split_folders {
            for (k, members) in f.members.iter().enumerate() {
                let tiles: Vec<plots::Tile> = members
                    .iter()
                    .take(30)
                    .map(|&i| tile(i, format!("cluster {}", k + 1)))
                    .collect();
                let p = cfg
                    .out
                    .join(format!("split-{}-{}.png", sanitize(&f.class), k + 1));
                plots::montage_png(
                    &p,
                    &format!(
                        "{}: person {} of {} ({} faces{})",
                        f.class,
                        k + 1,
                        f.sizes.len(),
                        members.len(),
                        if k == 0 {
                            ", taken as the folder's"
                        } else {
                            ""
                        }
                    ),
                    &tiles,
                    faces.width,
                    96,
                    10,
                )
                .map_err(EvalError::Plot)?;
                identity_images.push(p);
            }
        }
    }
    let mode = ck.train_state["config"]["mode"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let report = Report {
        checkpoint: cfg.checkpoint.display().to_string(),
        mode: mode.clone(),
        test: test.clone(),
        val: val.clone(),
        tsne_kl_student: student_map.kl,
        tsne_kl_teacher: teacher_map.as_ref().map(|m| m.kl),
        excluded,
        suspects: sus.clone(),
        identity: identity.clone(),
        files: std::iter::once(emb_path.clone())
            .chain(images.iter().map(|(_, p)| p.clone()))
            .chain(suspect_images.iter().cloned())
            .chain(identity_images.iter().cloned())
            .map(|p| p.display().to_string())
            .collect(),
    };
    artifacts::write_atomic(
        &cfg.out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("plain")
            .as_bytes(),
    )?;
    let page = report::Page {
        title: format!("celeb-transfer evaluation: {mode}"),
        summary: vec![
            ("checkpoint".into(), cfg.checkpoint.display().to_string()),
            (
                "faces".into(),
                format!(
                    "{} ({} images, {} classes)",
                    cfg.faces.display(),
                    n,
                    faces.class_names.len()
                ),
            ),
            (
                "teacher".into(),
                teacher
                    .as_ref()
                    .map(|b| format!("{} ({}, {}-d)", b.teacher, b.layer, b.dim))
                    .unwrap_or_else(|| "none".into()),
            ),
            (
                "t-SNE KL (student / teacher)".into(),
                format!(
                    "{:.4} / {}",
                    student_map.kl,
                    teacher_map
                        .as_ref()
                        .map(|m| format!("{:.4}", m.kl))
                        .unwrap_or_else(|| "-".into())
                ),
            ),
        ],
        test: test.as_ref(),
        val: val.as_ref(),
        images,
        suspects: &sus,
        suspect_images,
        identity: identity.as_ref(),
        identity_images,
    };
    report::write(&cfg.out.join("report.html"), &page).map_err(EvalError::Plot)?;
    Ok(report)
}

/// The inputs an evaluation records; `None` when one cannot be read.
fn provenance_inputs(cfg: &EvalConfig) -> Option<std::collections::BTreeMap<String, String>> {
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "faces".to_string(),
        artifacts::digest_file(&cfg.faces).ok()?,
    );
    m.insert(
        "checkpoint".to_string(),
        artifacts::digest_file(&cfg.checkpoint).ok()?,
    );
    if let Some(p) = cfg.bottlenecks.as_ref().filter(|p| p.exists()) {
        m.insert("bottlenecks".to_string(), artifacts::digest_file(p).ok()?);
    }
    if let Some(p) = &cfg.exclusions {
        m.insert("exclusions".to_string(), artifacts::digest_file(p).ok()?);
    }
    Some(m)
}

/// True when `cfg.out` holds an evaluation of exactly these inputs and settings.
pub fn up_to_date(cfg: &EvalConfig) -> bool {
    let Some(inputs) = provenance_inputs(cfg) else {
        return false;
    };
    cfg.out.join("report.html").exists()
        && artifacts::up_to_date(
            &cfg.out.join("embeddings.safetensors"),
            artifacts::EMBEDDINGS_SCHEMA,
            &serde_json::to_value(cfg).expect("plain"),
            &inputs,
        )
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Default output folder for a checkpoint: `<dir>/eval-<mode>` from `student-<mode>`.
pub fn default_out(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = stem.strip_prefix("student-").unwrap_or(&stem);
    checkpoint
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("eval-{mode}"))
}
