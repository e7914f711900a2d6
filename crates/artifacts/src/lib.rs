//! The artifact contract of celeb-transfer.
//!
//! Every stage writes one safetensors file whose `__metadata__` holds, under the key
//! [`META_KEY`], a JSON document: schema name and version, the producing crate and version,
//! the config used and the digests of its inputs. Later stages (and `cargo xtask pipeline`)
//! compare those digests to tell what is stale. Any Python user can open the files with
//! `safetensors.numpy.load_file` and read `safe_open(path, "np").metadata()`.
//!
//! This crate is the contract floor: no candle, so `xtask` and any tool that only reads
//! artifacts builds in seconds. It also holds the table of dlib's model files
//! ([`models`]) that the stages load and `xtask` offers to download.

mod bottlenecks;
mod checkpoint;
mod embeddings;
pub mod exclusions;
mod faces;
mod io;
pub mod models;
mod pixels;
pub mod shards;

pub use bottlenecks::{Bottlenecks, ViewBank, BOTTLENECKS_SCHEMA};
pub use checkpoint::{Checkpoint, NamedTensor, CHECKPOINT_SCHEMA};
pub use embeddings::{Embeddings, EMBEDDINGS_SCHEMA};
pub use faces::{
    FaceGeometry, FaceShard, FaceShardWriter, Faces, ShardFace, CHIP_SIZE, FACES_SCHEMA,
    FACES_SHARD_SCHEMA,
};
pub use io::{digest_bytes, digest_file, read_header, write_atomic, write_json_atomic, Header};
pub use pixels::Pixels;
pub use shards::{JobPart, ShardRef};

use std::path::{Path, PathBuf};

/// The `__metadata__` key holding the JSON document.
pub const META_KEY: &str = "celeb_transfer";

/// Errors reading or writing artifacts. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: not a safetensors file ({reason}); was it truncated or is it another format?"
    )]
    NotSafetensors { path: PathBuf, reason: String },
    #[error(
        "{path}: a safetensors file, but not a celeb-transfer artifact (no `{META_KEY}` metadata)"
    )]
    Foreign { path: PathBuf },
    #[error("{path}: expected a `{expected}` artifact, found `{found}`")]
    WrongSchema {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: `{schema}` schema version {found} is not supported (this build reads version {supported}); re-run the stage that made it")]
    WrongVersion {
        path: PathBuf,
        schema: String,
        found: u32,
        supported: u32,
    },
    #[error("{path}: tensor `{name}`: {problem}")]
    BadTensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    /// A shard of a sharded artifact that is missing, truncated or not what the index says.
    #[error("{shard} (a shard of {index}): {problem}")]
    BadShard {
        index: PathBuf,
        shard: PathBuf,
        problem: String,
    },
    #[error("{path}: metadata: {problem}")]
    BadMeta { path: PathBuf, problem: String },
    #[error("cannot write {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    /// A text file a person edits (the exclusions CSV) that does not parse.
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Which part of the data an image belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train = 0,
    Val = 1,
    Test = 2,
}

impl Split {
    pub fn from_u8(v: u8) -> Option<Split> {
        match v {
            0 => Some(Split::Train),
            1 => Some(Split::Val),
            2 => Some(Split::Test),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split `{other}` (train, val or test)")),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The build every stage writes into its artifacts' `producer_version`: the workspace
/// version and a digest of the running executable. Any code change that reaches the
/// binary (or another compiler, or other features) changes it; a README edit does not.
/// `up_to_date` treats another build's artifact as stale, since its numbers may come
/// from other code.
pub fn build_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| digest_file(&p).ok())
            .map(|d| d.trim_start_matches("sha256:")[..16].to_string())
            .unwrap_or_else(|| "unknown".into());
        format!("{}+exe.{exe}", env!("CARGO_PKG_VERSION"))
    })
}

/// Who made an artifact, how, and from what: the provenance every artifact carries.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// Producing crate name, e.g. `preprocess`.
    pub producer: String,
    /// Producing crate version.
    pub producer_version: String,
    /// The config the producer ran with (its own JSON form).
    pub config: serde_json::Value,
    /// Input name -> `sha256:<hex>` digest (files) or config digest.
    pub inputs: std::collections::BTreeMap<String, String>,
}

impl Provenance {
    pub fn new(producer: &str, producer_version: &str, config: serde_json::Value) -> Self {
        Provenance {
            producer: producer.to_string(),
            producer_version: producer_version.to_string(),
            config,
            inputs: Default::default(),
        }
    }
    pub fn with_input(mut self, name: &str, digest: impl Into<String>) -> Self {
        self.inputs.insert(name.to_string(), digest.into());
        self
    }
}

/// True when `output` exists, is a `schema` artifact, and was made by this build
/// ([`build_version`]) with exactly this config from inputs with exactly these digests:
/// the stage can be skipped.
pub fn up_to_date(
    output: &std::path::Path,
    schema: &str,
    config: &serde_json::Value,
    inputs: &std::collections::BTreeMap<String, String>,
) -> bool {
    let Ok(h) = read_header(output) else {
        return false;
    };
    let stale = if h.schema != schema {
        Some("another kind of artifact".to_string())
    } else if h.provenance.producer_version != build_version() {
        Some(format!(
            "made by build {}, this is {}",
            h.provenance.producer_version,
            build_version()
        ))
    } else if &h.provenance.config != config {
        Some("other settings".to_string())
    } else if &h.provenance.inputs != inputs {
        Some("other inputs".to_string())
    } else {
        None
    };
    if let Some(why) = &stale {
        tracing::info!("{} is stale ({why}); remaking it", output.display());
    }
    stale.is_none()
}

/// The top-level settings in which config `there` (an artifact's) differs from `here`
/// (this run's), as `name: <here> here, <there> there; ...`: how a refusal to use or merge
/// something made otherwise names the difference.
pub fn config_difference(there: &serde_json::Value, here: &serde_json::Value) -> String {
    match (there.as_object(), here.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
            };
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: {} here, {} there", show(b.get(k)), show(a.get(k))))
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => "another config".into(),
    }
}

/// The teacher id prefix of dlib's face descriptor (`dlib-face:<file>#<digest>`): the one
/// test for "these features are a metric face descriptor", used wherever a stage treats
/// identity features differently (open-set gallery, identity analysis).
pub const FACE_TEACHER_PREFIX: &str = "dlib-face:";

/// True when `teacher` (a bottlenecks artifact's teacher id) is dlib's face descriptor.
pub fn is_face_teacher(teacher: &str) -> bool {
    teacher.starts_with(FACE_TEACHER_PREFIX)
}

/// The teacher id of dlib's face descriptor read from `path` whose SHA-256 is `sha256_hex`:
/// `dlib-face:<file name>#<first 16 hex digits>`. The one writer of that id.
pub fn face_teacher_id(path: &Path, sha256_hex: &str) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short = sha256_hex.get(..16).unwrap_or(sha256_hex);
    format!("{FACE_TEACHER_PREFIX}{name}#{short}")
}

/// The face-teacher id of the model file at `path` (its content digested), and whether the
/// file is dlib's published model: what the teacher stage records and the online teacher
/// checks against the bottlenecks' teacher.
pub fn face_teacher_of_file(path: &Path) -> Result<(String, bool)> {
    let d = digest_file(path)?;
    let hex = d.trim_start_matches("sha256:");
    Ok((
        face_teacher_id(path, hex),
        hex == models::FACE_DESCRIPTOR.sha256,
    ))
}

/// True when two face-teacher ids name the same weights (the digests agree; the file may
/// have been renamed or moved).
pub fn same_face_teacher(a: &str, b: &str) -> bool {
    fn digest(t: &str) -> Option<&str> {
        let (_, d) = t.strip_prefix(FACE_TEACHER_PREFIX)?.rsplit_once('#')?;
        Some(d).filter(|d| !d.is_empty())
    }
    matches!((digest(a), digest(b)), (Some(x), Some(y)) if x == y)
}
