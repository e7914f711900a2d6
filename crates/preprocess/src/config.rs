//! The settings of a preprocessing run: what each photo becomes and with which models.
//! Its own module so that the per-photo work ([`crate::aligner`]), the quality report and
//! the run driver all read it without depending on each other.

use crate::detect::{DetectorConfig, DetectorKind};
use crate::dlib::ShapePredictor;
use crate::error::PreprocessError;
use crate::split::SplitFractions;
use std::path::PathBuf;

/// What each photo becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Detect, 68 landmarks, similarity alignment, mask (the study's final preprocessing).
    Align,
    /// The detected box cropped and resized, no landmarks used, no mask (the study's first).
    CropOnly,
    /// Photos already aligned and cropped: only resized (mask only if asked).
    AsIs,
}

/// Every setting of a preprocessing run; stored in the artifact's metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    pub mode: Mode,
    /// Output side in pixels.
    pub size: usize,
    /// Apply the gaussian mask.
    pub mask: bool,
    pub sigma: f32,
    pub fractions: SplitFractions,
    pub split_file: Option<PathBuf>,
    /// Salt for the split hash (0 = plain `<class>/<file>` hashing).
    pub seed: u64,
    pub detector: DetectorConfig,
    pub landmarks: PathBuf,
    /// Re-run the landmark cascade from the box that best fits the first fit (dlib's
    /// detector boxes differ from Haar boxes; measured to tighten alignment).
    pub refine: bool,
    /// Weight of the 12 eye landmarks in the alignment fit (1 = faceswap's plain fit). The
    /// study's aligned images hold the eyes fixed; 3 halves their spread at a small cost
    /// for the mouth (measured on msceleb-samples, see README).
    pub eye_weight: f32,
    /// Faces a shard holds at most, about (shards are a power of two in number, photos
    /// placed by a hash of their name, so the sizes vary a little).
    #[serde(default = "default_shard_size")]
    pub shard_size: usize,
    /// Where the CNN detector runs (CPU kernels, or candle on CUDA). Not a setting of the
    /// result, so not recorded.
    #[serde(skip)]
    pub device: kernels::device::DeviceChoice,
}

/// Default faces per shard: ~550 MB of pixels and chips a shard.
pub const DEFAULT_SHARD_SIZE: usize = 4096;

fn default_shard_size() -> usize {
    DEFAULT_SHARD_SIZE
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            mode: Mode::Align,
            size: 150,
            mask: true,
            sigma: 2.5,
            fractions: SplitFractions::default(),
            split_file: None,
            seed: 0,
            detector: DetectorConfig::default(),
            landmarks: PathBuf::from("/usr/share/dlib/shape_predictor_68_face_landmarks.dat"),
            refine: true,
            eye_weight: 3.0,
            shard_size: DEFAULT_SHARD_SIZE,
            device: kernels::device::DeviceChoice::Cpu,
        }
    }
}

impl PreprocessConfig {
    /// The settings a run really uses: the CNN detector's model located
    /// ([`artifacts::models::locate`]). Without one, the default detector falls back to the
    /// cascade alone with a warning; an explicit `--cnn-model` that is missing is an error.
    pub fn resolved(&self) -> Result<PreprocessConfig, PreprocessError> {
        let f = self.fractions;
        if !(0.0..=100.0).contains(&(f.val + f.test)) || f.val < 0.0 || f.test < 0.0 {
            return Err(PreprocessError::Fractions);
        }
        let mut cfg = self.clone();
        // Model files are recorded absolute: `predict` re-runs this preprocessing from any
        // folder.
        for p in [&mut cfg.landmarks, &mut cfg.detector.cascade] {
            if let Ok(abs) = std::fs::canonicalize(&*p) {
                *p = abs;
            }
        }
        if cfg.mode == Mode::AsIs || !cfg.detector.kind.needs_cnn() {
            cfg.detector.cnn_model = None;
            return Ok(cfg);
        }
        match artifacts::models::locate(
            &artifacts::models::FACE_DETECTOR,
            cfg.detector.cnn_model.as_deref(),
        ) {
            Ok(p) => cfg.detector.cnn_model = Some(std::fs::canonicalize(&p).unwrap_or(p)),
            Err(e)
                if cfg.detector.cnn_model.is_none()
                    && cfg.detector.kind == DetectorKind::HaarCnn =>
            {
                tracing::warn!(
                    "face detection by the Haar cascade alone (no CNN check, fewer faces): {e}"
                );
                cfg.detector.kind = DetectorKind::Haar;
            }
            Err(error) => {
                return Err(PreprocessError::DetectorModel {
                    kind: cfg.detector.kind,
                    error,
                })
            }
        }
        Ok(cfg)
    }
}

/// Loads the landmark model when the mode needs it.
/// In `--as-is` mode it is only needed to measure alignment quality, so a missing model
/// there is a warning, not an error.
pub fn load_predictor(cfg: &PreprocessConfig) -> Result<Option<ShapePredictor>, PreprocessError> {
    let p = match ShapePredictor::open(&cfg.landmarks) {
        Ok(p) => p,
        Err(e) if cfg.mode == Mode::AsIs => {
            tracing::warn!("no alignment-quality report: {e}");
            return Ok(None);
        }
        Err(error) => {
            return Err(PreprocessError::Landmarks {
                path: cfg.landmarks.clone(),
                error,
            })
        }
    };
    if p.num_parts() != 68 {
        return Err(PreprocessError::LandmarkCount {
            path: cfg.landmarks.clone(),
            parts: p.num_parts(),
        });
    }
    Ok(Some(p))
}
