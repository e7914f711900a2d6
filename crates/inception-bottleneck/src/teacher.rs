//! Finding the teacher's weights and preprocessing: a Hugging Face repo id (through the
//! standard hub cache), a timm-style local folder, or a single weights file.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The product's default teacher: torchvision's ImageNet Inception-v3 as published by timm.
pub const DEFAULT_TEACHER: &str = "timm/inception_v3.tv_in1k";

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("teacher `{repo}` is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: run once online, set HF_HOME/HF_HUB_CACHE to a cache that has it, or pass a local folder with --teacher DIR (model.safetensors + config.json)")]
    OfflineMiss { repo: String, cache: String },
    #[error("could not download teacher `{repo}` ({detail}): check the repo id and the network, or pass a local folder with --teacher DIR, or set HF_HUB_OFFLINE=1 to use the cache in {cache}")]
    Download {
        repo: String,
        detail: String,
        cache: String,
    },
    #[error("--teacher `{0}` is neither an existing folder or file nor a hub repo id like `timm/inception_v3.tv_in1k`")]
    BadSpec(String),
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
}

/// Why a timm `config.json` gives no preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum TimmConfigError {
    #[error("{key}: {error}")]
    Field {
        key: &'static str,
        error: serde_json::Error,
    },
    #[error("input_size {0:?}: expected [3, S, S]")]
    InputSize(Vec<usize>),
    #[error("std must be positive")]
    StdNotPositive,
    #[error("interpolation `{0}` (bilinear, bicubic or nearest)")]
    Interpolation(String),
}

/// How images are turned into the teacher's input tensor (timm's `pretrained_cfg`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessing {
    pub size: usize,
    /// `bilinear` or `bicubic`.
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocessing {
    /// torchvision's Inception-v3 expects inputs scaled to [-1, 1].
    fn default() -> Self {
        Preprocessing {
            size: 299,
            interpolation: "bilinear".into(),
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }
}

impl Preprocessing {
    /// Reads timm's `config.json` (`pretrained_cfg` with `input_size`, `interpolation`,
    /// `mean`, `std`); missing fields keep the defaults.
    pub fn from_timm_config(json: &serde_json::Value) -> Result<Preprocessing, TimmConfigError> {
        let cfg = json.get("pretrained_cfg").unwrap_or(json);
        let mut p = Preprocessing::default();
        if let Some(size) = cfg.get("input_size") {
            let v: Vec<usize> =
                serde_json::from_value(size.clone()).map_err(|error| TimmConfigError::Field {
                    key: "input_size",
                    error,
                })?;
            match v.as_slice() {
                [3, h, w] if h == w && *h > 0 => p.size = *h,
                other => return Err(TimmConfigError::InputSize(other.to_vec())),
            }
        }
        if let Some(i) = cfg.get("interpolation").and_then(|v| v.as_str()) {
            p.interpolation = i.to_string();
        }
        let triple = |key: &'static str| -> Result<Option<[f32; 3]>, TimmConfigError> {
            match cfg.get(key) {
                None => Ok(None),
                Some(v) => serde_json::from_value::<[f32; 3]>(v.clone())
                    .map(Some)
                    .map_err(|error| TimmConfigError::Field { key, error }),
            }
        };
        if let Some(m) = triple("mean")? {
            p.mean = m;
        }
        if let Some(s) = triple("std")? {
            if s.iter().any(|&x| x <= 0.0) {
                return Err(TimmConfigError::StdNotPositive);
            }
            p.std = s;
        }
        if !matches!(p.interpolation.as_str(), "bilinear" | "bicubic" | "nearest") {
            return Err(TimmConfigError::Interpolation(p.interpolation));
        }
        Ok(p)
    }
}

/// A teacher found on disk, ready to load.
#[derive(Debug, Clone)]
pub struct ResolvedTeacher {
    /// `hf:<repo>@<commit>`, `dir:<name>#<digest>` or `file:<name>#<digest>`.
    pub identity: String,
    pub weights: PathBuf,
    pub preprocessing: Preprocessing,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

fn short_digest(path: &Path) -> Result<String, TeacherError> {
    let d = artifacts::digest_file(path).map_err(|e| TeacherError::BadFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    Ok(d.trim_start_matches("sha256:")[..16].to_string())
}

fn read_config(path: &Path) -> Result<Preprocessing, TeacherError> {
    let bad = |problem: String| TeacherError::BadFile {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Preprocessing::from_timm_config(&json).map_err(|e| bad(e.to_string()))
}

/// Resolves `--teacher`: an existing folder (timm layout), an existing weights file
/// (`.safetensors` or `.pth`, preprocessing from `file_preprocessing`), or a hub repo id.
pub fn resolve(
    spec: &str,
    revision: &str,
    file_preprocessing: Preprocessing,
) -> Result<ResolvedTeacher, TeacherError> {
    let path = Path::new(spec);
    if path.is_dir() {
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| TeacherError::BadFile {
                path: path.to_path_buf(),
                problem: "no model.safetensors or pytorch_model.bin in this folder".into(),
            })?;
        let cfg = path.join("config.json");
        let preprocessing = if cfg.exists() {
            read_config(&cfg)?
        } else {
            tracing::warn!(
                "{}: no config.json; using default preprocessing",
                path.display()
            );
            file_preprocessing
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(ResolvedTeacher {
            identity: format!("dir:{name}#{}", short_digest(&weights)?),
            weights,
            preprocessing,
        });
    }
    if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(ResolvedTeacher {
            identity: format!("file:{name}#{}", short_digest(path)?),
            weights: path.to_path_buf(),
            preprocessing: file_preprocessing,
        });
    }
    let parts: Vec<&str> = spec.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) || spec.contains(char::is_whitespace)
    {
        return Err(TeacherError::BadSpec(spec.into()));
    }
    resolve_hub(spec, revision)
}

fn resolve_hub(repo_id: &str, revision: &str) -> Result<ResolvedTeacher, TeacherError> {
    use hf_hub::{Repo, RepoType};
    let cache_dir = hub_cache_dir();
    let cache = hf_hub::Cache::new(cache_dir.clone());
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let cached = cache.repo(repo.clone());
    let (weights, config) = match (cached.get("model.safetensors"), cached.get("config.json")) {
        (Some(w), Some(c)) => (w, c),
        _ if env_flag("HF_HUB_OFFLINE") => {
            return Err(TeacherError::OfflineMiss {
                repo: repo_id.into(),
                cache: cache_dir.display().to_string(),
            })
        }
        _ => {
            let download_err = |e: hf_hub::api::sync::ApiError| TeacherError::Download {
                repo: repo_id.into(),
                detail: first_line(&e.to_string()),
                cache: cache_dir.display().to_string(),
            };
            let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                .with_progress(true)
                .build()
                .map_err(download_err)?;
            let r = api.repo(repo.clone());
            let w = r.get("model.safetensors").map_err(download_err)?;
            let c = r.get("config.json").map_err(download_err)?;
            (w, c)
        }
    };
    // The snapshot folder name is the commit hash.
    let commit = weights
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| revision.to_string());
    Ok(ResolvedTeacher {
        identity: format!("hf:{repo_id}@{commit}"),
        preprocessing: read_config(&config)?,
        weights,
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.chars().take(200).collect()
}

/// Loads every tensor of a `.safetensors` or PyTorch pickle (`.pth`/`.bin`) file on the CPU,
/// stripping a `module.` prefix that DataParallel checkpoints carry.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, TeacherError> {
    let bad = |problem: String| TeacherError::BadFile {
        path: path.to_path_buf(),
        problem,
    };
    let is_st = path.extension().is_some_and(|e| e == "safetensors");
    let pairs: Vec<(String, Tensor)> = if is_st {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(path)
            .map_err(|e| bad(format!("not a readable PyTorch checkpoint: {e}")))?
    };
    Ok(pairs
        .into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("module.").map(str::to_string).unwrap_or(k),
                v,
            )
        })
        .collect())
}
