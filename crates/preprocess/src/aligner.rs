//! One photo -> its aligned faces: the per-photo work of a preprocessing run, as a value of
//! its own so that `predict` shows new photos to a model exactly as its training faces were
//! made (same detector, landmarks, alignment, mask and dlib chip).

use crate::config::{load_predictor, Mode, PreprocessConfig};
use crate::decode::{decode, Rgb};
use crate::detect::{self, Detection, DetectorKind};
use crate::dlib::{gray_like_dlib, ShapePredictor};
use crate::error::{FaceError, PreprocessError};
use crate::geometry::{
    align_weights, box_from_landmarks, centre, template, weighted_similarity_fit, Similarity,
    ALIGN_POINTS, EYE_IMAGE_LEFT, EYE_IMAGE_RIGHT, MOUTH,
};
use crate::mask::{apply_mask, gaussian_mask};
use artifacts::CHIP_SIZE;
use dlib_dnn::chip::{extract_chip, face_chip_details, RgbImage};
use std::path::Path;

/// One face, aligned as the configuration says.
#[derive(Debug, Clone)]
pub struct AlignedFace {
    /// The study's crop: `size x size` RGB, masked when the config says so.
    pub pixels: Vec<u8>,
    /// dlib's 150x150 face chip, cut from the photo with our landmarks (the face
    /// descriptor's input); black for `--as-is` inputs, which have no landmarks.
    pub chip: Vec<u8>,
    /// The detector's box `[x, y, w, h]` in decoded pixels.
    pub rect: [f32; 4],
    pub landmarks: Vec<[f32; 2]>,
    pub transform: [f32; 6],
    pub faces_found: usize,
    /// Whose box the face came from: `haar` or `cnn` (`as-is` inputs: `none`).
    pub found_by: &'static str,
}

/// The loaded models and tables of a (resolved) preprocessing config.
pub struct Aligner {
    cfg: PreprocessConfig,
    predictor: Option<ShapePredictor>,
    cnn: Option<dlib_dnn::FaceDetector>,
    template: Vec<[f32; 2]>,
    weights: Vec<f32>,
    mask: Option<Vec<f32>>,
}

impl Aligner {
    /// Loads what `cfg` needs: the cascade is checked, the landmark model and the CNN
    /// detector are read. `cfg` should be [`PreprocessConfig::resolved`].
    pub fn new(cfg: &PreprocessConfig) -> Result<Aligner, PreprocessError> {
        if cfg.size < 16 {
            return Err(PreprocessError::SizeTooSmall(cfg.size));
        }
        if cfg.mode != Mode::AsIs {
            detect::check_cascade(&cfg.detector.cascade)?;
        }
        let predictor = load_predictor(cfg)?;
        let cnn = match &cfg.detector.cnn_model {
            Some(path) if cfg.mode != Mode::AsIs => {
                let device = kernels::device::pick(cfg.device).map_err(PreprocessError::Device)?;
                let kernels = dlib_dnn::Kernels::best_for(&device, candle_core::DType::F32);
                Some(
                    dlib_dnn::FaceDetector::open(path, kernels, &device, candle_core::DType::F32)
                        .map_err(PreprocessError::CnnModel)?,
                )
            }
            _ => None,
        };
        Ok(Aligner {
            template: predictor
                .as_ref()
                .map(|p| template(&p.initial_shape, cfg.size))
                .unwrap_or_default(),
            weights: align_weights(cfg.eye_weight),
            mask: cfg.mask.then(|| gaussian_mask(cfg.size, cfg.sigma)),
            cfg: cfg.clone(),
            predictor,
            cnn,
        })
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    pub fn predictor(&self) -> Option<&ShapePredictor> {
        self.predictor.as_ref()
    }

    /// The canonical landmark positions in the output frame.
    pub fn template(&self) -> &[[f32; 2]] {
        &self.template
    }

    /// The one face a preprocessing run keeps from a photo file.
    pub fn process_file(&self, path: &Path) -> Result<AlignedFace, FaceError> {
        guarded(|| {
            let img = decode(path)?;
            match self.cfg.mode {
                Mode::AsIs => self.as_is(img),
                Mode::Align | Mode::CropOnly => {
                    let gray = gray_like_dlib(&img.data);
                    let det = self.find_face(&img, &gray)?;
                    self.align(&img, &gray, det)
                }
            }
        })
    }

    /// The faces of a decoded photo, left to right: every face the detector finds, or only
    /// the one preprocess keeps; each aligned, or the reason it could not be (its box
    /// kept); and the seconds spent detecting and aligning. `Err` only when detection
    /// itself fails; a photo without a face gives no faces. `--as-is` configs take the
    /// photo as one face.
    pub fn faces_timed(
        &self,
        img: &Rgb,
        search: FaceSearch,
    ) -> Result<(AllFaces, [f64; 2]), FaceError> {
        if self.cfg.mode == Mode::AsIs {
            let t = std::time::Instant::now();
            let whole = [0.0, 0.0, img.width as f32, img.height as f32];
            let copy = Rgb {
                width: img.width,
                height: img.height,
                data: img.data.clone(),
                valid_rows: img.valid_rows,
                scale: img.scale,
            };
            let face = self.as_is(copy).map_err(|reason| FaceFailure {
                rect: whole,
                reason,
            });
            return Ok((vec![face], [0.0, t.elapsed().as_secs_f64()]));
        }
        let t = std::time::Instant::now();
        let gray = gray_like_dlib(&img.data);
        let mut dets = match search {
            FaceSearch::Every => self.find_faces(img, &gray)?,
            FaceSearch::Main => match self.find_face(img, &gray) {
                Ok(d) => vec![d],
                Err(FaceError::NoFace | FaceError::NotConfirmed) => Vec::new(),
                Err(e) => return Err(e),
            },
        };
        dets.sort_by(|a, b| a.rect[0].total_cmp(&b.rect[0]));
        let detect = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let faces = dets
            .into_iter()
            .map(|d| {
                self.align(img, &gray, d).map_err(|reason| FaceFailure {
                    rect: d.rect,
                    reason,
                })
            })
            .collect();
        Ok((faces, [detect, t.elapsed().as_secs_f64()]))
    }

    fn as_is(&self, img: Rgb) -> Result<AlignedFace, FaceError> {
        if img.valid_rows < img.height {
            return Err(FaceError::TruncatedAsIs);
        }
        let s = self.cfg.size as u32;
        let src = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
            .ok_or(FaceError::BadBuffer)?;
        let mut pixels =
            image::imageops::resize(&src, s, s, image::imageops::FilterType::Triangle).into_raw();
        if let Some(m) = &self.mask {
            apply_mask(&mut pixels, m);
        }
        let (sx, sy) = (s as f32 / img.width as f32, s as f32 / img.height as f32);
        Ok(AlignedFace {
            pixels,
            chip: vec![0; CHIP_SIZE * CHIP_SIZE * 3],
            rect: [0.0, 0.0, img.width as f32, img.height as f32],
            landmarks: vec![[0.0, 0.0]; 68],
            transform: [sx, 0.0, 0.0, 0.0, sy, 0.0],
            faces_found: 0,
            found_by: "none",
        })
    }

    /// Landmarks, alignment (or the box's crop), mask and dlib chip for one detection.
    pub fn align(&self, img: &Rgb, gray: &[u8], det: Detection) -> Result<AlignedFace, FaceError> {
        let predictor = self.predictor.as_ref().ok_or(FaceError::NoLandmarkModel)?;
        let [x, y, w, h] = det.rect;
        let mut rect = [x, y, x + w - 1.0, y + h - 1.0];
        let mut lm = predictor.predict(gray, img.width, img.height, rect);
        if self.cfg.refine {
            rect = box_from_landmarks(&predictor.initial_shape, &lm);
            lm = predictor.predict(gray, img.width, img.height, rect);
        }
        plausible(&lm, rect[2] - rect[0])?;
        if img.valid_rows < img.height {
            // A truncated JPEG: keep it only when the face (and the chin below the last
            // landmark) lies in the rows that were decoded.
            let (top, bottom) = lm
                .iter()
                .fold((f32::MAX, f32::MIN), |(t, b), p| (t.min(p[1]), b.max(p[1])));
            if bottom + 0.3 * (bottom - top) >= img.valid_rows as f32 {
                return Err(FaceError::TruncatedFace);
            }
            tracing::info!("kept a truncated photo: its face lies in the decoded rows");
        }
        let size = self.cfg.size;
        let (transform, mut pixels) = match self.cfg.mode {
            Mode::Align => {
                let t = weighted_similarity_fit(
                    &lm[ALIGN_POINTS],
                    &self.template[ALIGN_POINTS],
                    &self.weights,
                );
                let m = t.matrix();
                (
                    m,
                    detect::warp(&img.data, img.width, img.height, m, size)
                        .map_err(FaceError::Warp)?,
                )
            }
            _ => {
                // Crop the detection box: a scale + translation.
                let s = size as f32 / w;
                let t = Similarity {
                    a: s,
                    b: 0.0,
                    tx: -x * s,
                    ty: -y * (size as f32 / h),
                };
                let m = [t.a, 0.0, t.tx, 0.0, size as f32 / h, t.ty];
                (
                    m,
                    detect::warp(&img.data, img.width, img.height, m, size)
                        .map_err(FaceError::Crop)?,
                )
            }
        };
        if let Some(mask) = &self.mask {
            apply_mask(&mut pixels, mask);
        }
        let chip = dlib_chip(img, &lm)?;
        Ok(AlignedFace {
            pixels,
            chip,
            rect: det.rect,
            landmarks: lm,
            transform,
            faces_found: det.faces_found,
            found_by: det.found_by,
        })
    }

    /// The face a preprocessing run aligns, by the configured detector: the cascade's
    /// main face when the CNN confirms it, else the CNN's main face.
    fn find_face(&self, img: &Rgb, gray: &[u8]) -> Result<Detection, FaceError> {
        let cfg = &self.cfg.detector;
        let rgb = rgb_view(img);
        let cnn_pick = |cnn: &dlib_dnn::FaceDetector| -> Result<Option<Detection>, FaceError> {
            let boxes = detect::cnn_faces(cnn, &rgb, cfg.upsample).map_err(FaceError::Cnn)?;
            Ok(
                detect::pick_face(&boxes, img.width, img.height).map(|i| Detection {
                    rect: boxes[i],
                    faces_found: boxes.len(),
                    found_by: "cnn",
                }),
            )
        };
        let haar = || detect::detect(gray, img.width, img.height, cfg).map_err(FaceError::Haar);
        match (cfg.kind, self.cnn.as_ref()) {
            (DetectorKind::Cnn, Some(cnn)) => cnn_pick(cnn)?.ok_or(FaceError::NoFace),
            (DetectorKind::HaarCnn, Some(cnn)) => match haar()? {
                Some(d) if !cfg.confirm => Ok(d),
                Some(d) => {
                    if detect::cnn_confirms(cnn, &rgb, d.rect).map_err(FaceError::Cnn)? {
                        return Ok(d);
                    }
                    // The cascade's box is not a face: a face the CNN finds elsewhere in
                    // the photo still counts.
                    cnn_pick(cnn)?.ok_or(FaceError::NotConfirmed)
                }
                None => cnn_pick(cnn)?.ok_or(FaceError::NoFace),
            },
            _ => haar()?.ok_or(FaceError::NoFace),
        }
    }

    /// Every face by the configured detector. `haar+cnn`: the cascade's boxes the CNN
    /// confirms, and the CNN's faces on the whole photo that overlap none of them (the
    /// cascade misses profiles and tilted faces; a group photo holds more than the one
    /// face preprocess keeps). So the face a preprocessing run keeps is among them, with
    /// the box it had.
    pub fn find_faces(&self, img: &Rgb, gray: &[u8]) -> Result<Vec<Detection>, FaceError> {
        let cfg = &self.cfg.detector;
        let rgb = rgb_view(img);
        let cnn_all = |cnn: &dlib_dnn::FaceDetector| {
            detect::cnn_faces(cnn, &rgb, cfg.upsample).map_err(FaceError::Cnn)
        };
        let haar = detect::haar_boxes;
        let mut boxes: Vec<([f32; 4], &'static str)> = match (cfg.kind, self.cnn.as_ref()) {
            (DetectorKind::Cnn, Some(cnn)) => {
                cnn_all(cnn)?.into_iter().map(|b| (b, "cnn")).collect()
            }
            (DetectorKind::HaarCnn, Some(cnn)) => {
                let found = haar(gray, img.width, img.height, cfg).map_err(FaceError::Haar)?;
                let mut kept = Vec::new();
                for b in &found {
                    if !cfg.confirm
                        || detect::cnn_confirms(cnn, &rgb, *b).map_err(FaceError::Cnn)?
                    {
                        kept.push((*b, "haar"));
                    }
                }
                for b in cnn_all(cnn)? {
                    if kept.iter().all(|(k, _)| detect::iou(*k, b) < 0.3) {
                        kept.push((b, "cnn"));
                    }
                }
                kept
            }
            _ => haar(gray, img.width, img.height, cfg)
                .map_err(FaceError::Haar)?
                .into_iter()
                .map(|b| (b, "haar"))
                .collect(),
        };
        let n = boxes.len();
        Ok(boxes
            .drain(..)
            .map(|(rect, found_by)| Detection {
                rect,
                faces_found: n,
                found_by,
            })
            .collect())
    }
}

/// Which faces of a photo to align.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaceSearch {
    /// Every face the detector finds.
    #[default]
    Every,
    /// Only the one preprocess keeps (the largest, most central): no whole-photo CNN pass
    /// where the cascade's face is confirmed, so faster on portraits.
    Main,
}

/// The faces of one photo, each aligned or the reason it could not be.
pub type AllFaces = Vec<Result<AlignedFace, FaceFailure>>;

/// A detected face that could not be aligned, and why.
#[derive(Debug)]
pub struct FaceFailure {
    pub rect: [f32; 4],
    pub reason: FaceError,
}

fn rgb_view(img: &Rgb) -> RgbImage<'_> {
    RgbImage {
        data: img.data.as_slice().into(),
        width: img.width,
        height: img.height,
    }
}

/// Runs `f`, turning a panic inside a codec into an error: one bad photo must not end a
/// run of thousands.
pub fn guarded<T, E: From<FaceError>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(FaceError::Panicked.into()))
}

/// Sanity of a landmark fit: eyes apart by a face-like share of the box, the mouth below
/// the eyes at a face-like distance.
fn plausible(lm: &[[f32; 2]], box_w: f32) -> Result<(), FaceError> {
    if lm.iter().any(|p| !p[0].is_finite() || !p[1].is_finite()) {
        return Err(FaceError::NonFinite);
    }
    let le = centre(lm, EYE_IMAGE_LEFT);
    let re = centre(lm, EYE_IMAGE_RIGHT);
    let mo = centre(lm, MOUTH);
    let (ex, ey) = (re[0] - le[0], re[1] - le[1]);
    let d = ex.hypot(ey);
    if d < 0.15 * box_w || d > 0.9 * box_w {
        return Err(FaceError::EyeDistance {
            eyes: d,
            width: box_w,
        });
    }
    let mid = [(le[0] + re[0]) / 2.0, (le[1] + re[1]) / 2.0];
    let (mx, my) = (mo[0] - mid[0], mo[1] - mid[1]);
    // Signed distance of the mouth below the eye line (image y grows downwards).
    let below = (ex * my - ey * mx) / d;
    if below < 0.5 * d || below > 2.0 * d {
        return Err(FaceError::MouthNotBelow);
    }
    Ok(())
}

/// dlib's face chip (`get_face_chip_details(shape, 150, 0.25)`, `extract_image_chip`).
fn dlib_chip(img: &Rgb, landmarks: &[[f32; 2]]) -> Result<Vec<u8>, FaceError> {
    let d = face_chip_details(landmarks, CHIP_SIZE, 0.25).ok_or(FaceError::NoChip)?;
    Ok(extract_chip(&rgb_view(img), &d))
}
