//! Evaluation of a trained student (or probe): metrics on the test and validation splits,
//! the student's bottleneck embeddings, t-SNE maps of student and teacher, PNG plots, a
//! self-contained HTML report, and dirty-data suspects.

mod figures;
pub mod identity;
pub mod metrics;
pub mod plots;
pub mod report;
mod steps;
pub mod suspects;
pub mod tsne;

use kernels::device::DeviceChoice;
use std::path::{Path, PathBuf};

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error(transparent)]
    Train(#[from] train::TrainError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Font(#[from] draw::FontError),
    #[error("plot: {0}")]
    Plot(#[from] plots::PlotError),
    #[error("{bottlenecks} does not belong to {faces} (stale?)")]
    StaleBottlenecks {
        bottlenecks: PathBuf,
        faces: PathBuf,
    },
    #[error("this checkpoint is a probe: pass --bottlenecks")]
    ProbeNeedsBottlenecks,
    #[error("inputs changed during the evaluation")]
    InputsChanged,
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
            font: draw::DEFAULT_FONT.into(),
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
    /// With a face-identity teacher: test accuracy on the faces it does not flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_unflagged: Option<Unflagged>,
    pub files: Vec<String>,
}

/// Accuracy on the test faces whose labels the identity analysis trusts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Unflagged {
    pub faces: usize,
    pub top1: f64,
}

impl Report {
    /// What `eval-tsne` prints: the metrics, the maps' KL, the counts of suspects and the
    /// report's path (`out` is the evaluation's folder).
    pub fn summary(&self, out: &Path) -> String {
        let fmt = |m: &Option<metrics::Metrics>| {
            m.as_ref()
                .map(|m| {
                    format!(
                        "top-1 {:.4} top-3 {:.4} macro-F1 {:.4} (n={})",
                        m.top1, m.top3, m.macro_f1, m.n
                    )
                })
                .unwrap_or_else(|| "n/a".into())
        };
        let mut s = format!("{} test: {}\n", self.mode, fmt(&self.test));
        s += &format!("{} val:  {}\n", self.mode, fmt(&self.val));
        s += &format!(
            "t-SNE KL: student {:.4}{}\n",
            self.tsne_kl_student,
            self.tsne_kl_teacher
                .map(|k| format!(", teacher {k:.4}"))
                .unwrap_or_default()
        );
        if self.excluded > 0 {
            s += &format!(
                "exclusions: {} faces left out of the metrics\n",
                self.excluded
            );
        }
        s += &format!("dirty-data suspects: {}\n", self.suspects.len());
        if let Some(u) = &self.test_unflagged {
            s += &format!(
                "test accuracy on the {} faces the identity analysis does not flag: {:.4}\n",
                u.faces, u.top1
            );
        }
        if let Some(id) = &self.identity {
            s += &format!(
                "by identity: {} faces of another person, {} strangers, {} folders of two people; flags.csv: {}\n",
                id.other_person,
                id.strangers,
                id.split_folders.len(),
                out.join("flags.csv").display()
            );
        }
        s += &format!("report: {}\n", out.join("report.html").display());
        s
    }
}

/// Runs the whole evaluation and writes everything into `cfg.out`: the embeddings, the
/// pictures, `flags.csv` (with a face-identity teacher), `report.json` and `report.html`.
pub fn evaluate(cfg: &EvalConfig) -> Result<Report, EvalError> {
    let run = steps::load(cfg)?;
    let scored = steps::score(cfg, &run)?;
    let maps = steps::maps(cfg, &run, &scored);
    let (emb, emb_path) = steps::write_embeddings(cfg, &run, &scored, &maps)?;
    let faces = &run.faces;
    let mut overview = figures::overview(
        &cfg.out,
        faces,
        &emb,
        &maps.student,
        maps.teacher.as_ref(),
        scored.test.as_ref(),
    )?;
    overview.extend(figures::curve(&cfg.out, &cfg.checkpoint)?);
    let sus = steps::suspects(cfg, &run, &scored);
    let suspect_images = figures::suspects(&cfg.out, faces, &sus)?;
    let identity = steps::identity(&run, &scored.dropped);
    let identity_images = match &identity {
        Some(id) => {
            steps::write_flags(&cfg.out, id)?;
            figures::identity(&cfg.out, faces, id)?
        }
        None => Vec::new(),
    };
    let pictures = steps::Pictures {
        overview,
        suspects: suspect_images,
        identity: identity_images,
    };
    let files = steps::files(&emb_path, &pictures);
    let report = steps::report(cfg, &run, &scored, &maps, (sus, identity), files);
    steps::write_report(cfg, &run, &report, pictures)?;
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
