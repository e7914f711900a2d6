//! Face detection: OpenCV's Haar cascade, dlib's CNN face detector (`dlib_dnn::mmod`), or
//! the cascade first with the CNN confirming its box and taking over where it finds
//! nothing; and the OpenCV helpers we need.

use opencv::core::{Mat, Rect, Scalar, Size, Vector, CV_8UC1, CV_8UC3};
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// Which detector finds the faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DetectorKind {
    /// OpenCV's frontal Haar cascade only (no model file needed).
    #[serde(rename = "haar")]
    Haar,
    /// dlib's CNN face detector on every photo.
    #[serde(rename = "cnn")]
    Cnn,
    /// The cascade first; the CNN confirms its box (on the box's neighbourhood) and runs on
    /// the whole photo when the cascade finds nothing or its box is not confirmed.
    #[serde(rename = "haar+cnn")]
    HaarCnn,
}

impl DetectorKind {
    pub fn needs_cnn(self) -> bool {
        self != DetectorKind::Haar
    }
}

/// A `--detector` value that names no detector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown detector `{0}` (haar, cnn or haar+cnn)")]
pub struct UnknownDetector(pub String);

impl std::str::FromStr for DetectorKind {
    type Err = UnknownDetector;
    fn from_str(s: &str) -> Result<Self, UnknownDetector> {
        match s {
            "haar" => Ok(DetectorKind::Haar),
            "cnn" => Ok(DetectorKind::Cnn),
            "haar+cnn" => Ok(DetectorKind::HaarCnn),
            o => Err(UnknownDetector(o.to_string())),
        }
    }
}

impl std::fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DetectorKind::Haar => "haar",
            DetectorKind::Cnn => "cnn",
            DetectorKind::HaarCnn => "haar+cnn",
        })
    }
}

/// Detector settings; the defaults were measured on msceleb-samples (see README).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectorConfig {
    pub kind: DetectorKind,
    pub cascade: PathBuf,
    pub scale_factor: f64,
    pub min_neighbors: i32,
    /// Smallest face as a fraction of the photo's shorter side.
    pub min_face: f64,
    /// dlib's `mmod_human_face_detector.dat`; `None` until located
    /// ([`crate::PreprocessConfig::resolved`]).
    pub cnn_model: Option<PathBuf>,
    /// Times the CNN doubles the photo first (dlib's `upsample_num_times`): each finds
    /// faces half as small (80 px at 0) at 4x the cost. 0 by default: on msceleb-samples
    /// `haar+cnn` keeps 98.5% of the photos at 0 and 99.5% at 1, at 2.6x the time (README).
    pub upsample: usize,
    /// With `haar+cnn`: a cascade box the CNN does not confirm is not a face.
    pub confirm: bool,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            kind: DetectorKind::HaarCnn,
            cascade: PathBuf::from(
                "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
            ),
            scale_factor: 1.1,
            min_neighbors: 4,
            min_face: 0.15,
            cnn_model: None,
            upsample: 0,
            confirm: true,
        }
    }
}

/// The chosen face and how many were found.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// `[x, y, w, h]` in pixels.
    pub rect: [f32; 4],
    pub faces_found: usize,
    /// `haar` or `cnn`: whose box it is.
    pub found_by: &'static str,
}

/// Of several faces, the one a user meant: the largest, discounted by its distance from
/// the photo's centre. Boxes are `[x, y, w, h]`.
pub fn pick_face(boxes: &[[f32; 4]], width: usize, height: usize) -> Option<usize> {
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let diag = (cx * cx + cy * cy).sqrt();
    let score = |r: &[f32; 4]| {
        let [x, y, w, h] = r.map(|v| v as f64);
        let off = ((x + w / 2.0 - cx).powi(2) + (y + h / 2.0 - cy).powi(2)).sqrt() / diag;
        w * h * (1.0 - off)
    };
    (0..boxes.len()).max_by(|&a, &b| score(&boxes[a]).total_cmp(&score(&boxes[b])))
}

/// The CNN's faces in a photo, `[x, y, w, h]`.
pub fn cnn_faces(
    cnn: &dlib_dnn::FaceDetector,
    img: &dlib_dnn::chip::RgbImage,
    upsample: usize,
) -> candle_core::Result<Vec<[f32; 4]>> {
    Ok(cnn
        .detect(img, upsample, 0.0)?
        .iter()
        .map(|d| d.rect.xywh())
        .collect())
}

/// Whether the CNN finds a face on `haar`'s box: it runs on the box's neighbourhood (1.6
/// times the box's side), scaled so the box is 1.25 detector windows, over the first four
/// pyramid levels only (faces 0.8 to 1.7 times the box's side; a fifth of the full
/// pyramid's work); a CNN box must cover at least half of the smaller of the two boxes.
pub fn cnn_confirms(
    cnn: &dlib_dnn::FaceDetector,
    img: &dlib_dnn::chip::RgbImage,
    haar: [f32; 4],
) -> candle_core::Result<bool> {
    use dlib_dnn::mmod::{resize_rgb, Rect};
    let [x, y, w, h] = haar;
    let side = 1.6 * w.max(h);
    let (cx, cy) = (x + w / 2.0, y + h / 2.0);
    let x0 = (cx - side / 2.0).floor().max(0.0) as usize;
    let y0 = (cy - side / 2.0).floor().max(0.0) as usize;
    let x1 = ((cx + side / 2.0).ceil() as usize).min(img.width);
    let y1 = ((cy + side / 2.0).ceil() as usize).min(img.height);
    if x1 <= x0 || y1 <= y0 {
        return Ok(false);
    }
    let (cw, ch) = (x1 - x0, y1 - y0);
    let mut crop = Vec::with_capacity(cw * ch * 3);
    for row in y0..y1 {
        crop.extend_from_slice(&img.data[(row * img.width + x0) * 3..(row * img.width + x1) * 3]);
    }
    let crop = dlib_dnn::chip::RgbImage {
        data: crop.into(),
        width: cw,
        height: ch,
    };
    let s = 1.25 * cnn.window().0 / w.max(1.0) as f64;
    let scaled = resize_rgb(
        &crop,
        ((cw as f64 * s).round() as usize).max(1),
        ((ch as f64 * s).round() as usize).max(1),
    );
    let (sx, sy) = (
        cw as f64 / scaled.width as f64,
        ch as f64 / scaled.height as f64,
    );
    let haar = Rect::new(x as i64, y as i64, (x + w) as i64 - 1, (y + h) as i64 - 1);
    for d in cnn.detect_levels(&scaled, 4, 0.0)? {
        let r = d.rect;
        let back = Rect::new(
            (r.left as f64 * sx) as i64 + x0 as i64,
            (r.top as f64 * sy) as i64 + y0 as i64,
            (r.right as f64 * sx) as i64 + x0 as i64,
            (r.bottom as f64 * sy) as i64 + y0 as i64,
        );
        let inner = back.intersect(&haar).area() as f64;
        if inner >= 0.5 * back.area().min(haar.area()) as f64 {
            return Ok(true);
        }
    }
    Ok(false)
}

thread_local! {
    static CASCADE: RefCell<Option<(PathBuf, CascadeClassifier)>> = const { RefCell::new(None) };
}

/// Why the Haar cascade's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    /// OpenCV takes the path as a UTF-8 string.
    #[error("cascade path is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("face cascade {0} not found; install it with `apt-get install opencv-data` or pass --cascade")]
    Missing(PathBuf),
    #[error("{path}: {error}")]
    Load { path: PathBuf, error: opencv::Error },
    #[error("{0}: not a usable cascade file")]
    Unusable(PathBuf),
}

/// Checks that the cascade loads (once, up front, for a clear error).
pub fn check_cascade(path: &Path) -> Result<(), CascadeError> {
    let p = path
        .to_str()
        .ok_or_else(|| CascadeError::NotUtf8(path.to_path_buf()))?;
    if !path.is_file() {
        return Err(CascadeError::Missing(path.to_path_buf()));
    }
    let c = CascadeClassifier::new(p).map_err(|error| CascadeError::Load {
        path: path.to_path_buf(),
        error,
    })?;
    if c.empty().unwrap_or(true) {
        return Err(CascadeError::Unusable(path.to_path_buf()));
    }
    Ok(())
}

/// A grey `Mat` over our own buffer (copied).
pub fn gray_mat(gray: &[u8], width: usize, height: usize) -> opencv::Result<Mat> {
    let mut m =
        Mat::new_rows_cols_with_default(height as i32, width as i32, CV_8UC1, Scalar::all(0.0))?;
    m.data_bytes_mut()?.copy_from_slice(gray);
    Ok(m)
}

/// An RGB `Mat` (channel order is ours; OpenCV does not care for warping).
pub fn rgb_mat(rgb: &[u8], width: usize, height: usize) -> opencv::Result<Mat> {
    let mut m =
        Mat::new_rows_cols_with_default(height as i32, width as i32, CV_8UC3, Scalar::all(0.0))?;
    m.data_bytes_mut()?.copy_from_slice(rgb);
    Ok(m)
}

/// Every face the cascade finds in a grey image, `[x, y, w, h]`.
pub fn haar_boxes(
    gray: &[u8],
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> opencv::Result<Vec<[f32; 4]>> {
    let src = gray_mat(gray, width, height)?;
    let mut eq = Mat::default();
    opencv::imgproc::equalize_hist(&src, &mut eq)?;
    let min_side = (width.min(height) as f64 * cfg.min_face).max(20.0) as i32;
    let mut faces = Vector::<Rect>::new();
    CASCADE.with(|slot| -> opencv::Result<()> {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|(p, _)| p != &cfg.cascade) {
            let p = cfg.cascade.to_string_lossy().into_owned();
            *slot = Some((cfg.cascade.clone(), CascadeClassifier::new(&p)?));
        }
        let (_, c) = slot.as_mut().expect("just set");
        c.detect_multi_scale(
            &eq,
            &mut faces,
            cfg.scale_factor,
            cfg.min_neighbors,
            0,
            Size::new(min_side, min_side),
            Size::new(0, 0),
        )
    })?;
    Ok(faces
        .iter()
        .map(|r| [r.x as f32, r.y as f32, r.width as f32, r.height as f32])
        .collect())
}

/// Detects faces in a grey image with the cascade and keeps the one a user meant
/// ([`pick_face`]).
pub fn detect(
    gray: &[u8],
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> opencv::Result<Option<Detection>> {
    let boxes = haar_boxes(gray, width, height, cfg)?;
    Ok(pick_face(&boxes, width, height).map(|i| Detection {
        rect: boxes[i],
        faces_found: boxes.len(),
        found_by: "haar",
    }))
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if ix <= 0.0 || iy <= 0.0 {
        return 0.0;
    }
    let inter = ix * iy;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// Warps an RGB image with a 2x3 affine matrix into a `size x size` frame (bilinear,
/// black border).
pub fn warp(
    rgb: &[u8],
    width: usize,
    height: usize,
    m: [f32; 6],
    size: usize,
) -> opencv::Result<Vec<u8>> {
    let src = rgb_mat(rgb, width, height)?;
    let m = Mat::from_slice_2d(&[
        [m[0] as f64, m[1] as f64, m[2] as f64],
        [m[3] as f64, m[4] as f64, m[5] as f64],
    ])?;
    let mut dst = Mat::default();
    opencv::imgproc::warp_affine(
        &src,
        &mut dst,
        &m,
        Size::new(size as i32, size as i32),
        opencv::imgproc::INTER_LINEAR,
        opencv::core::BORDER_CONSTANT,
        Scalar::all(0.0),
    )?;
    Ok(dst.data_bytes()?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_names_round_trip() {
        for k in [DetectorKind::Haar, DetectorKind::Cnn, DetectorKind::HaarCnn] {
            assert_eq!(k.to_string().parse::<DetectorKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(serde_json::from_str::<DetectorKind>(&json).unwrap(), k);
        }
        assert!("hog"
            .parse::<DetectorKind>()
            .unwrap_err()
            .to_string()
            .contains("haar+cnn"));
        assert!(!DetectorKind::Haar.needs_cnn() && DetectorKind::HaarCnn.needs_cnn());
    }

    #[test]
    fn the_face_kept_is_large_and_central() {
        // A big face in a corner loses to a slightly smaller one in the middle, and a
        // small central one loses to both.
        let boxes = [
            [0.0, 0.0, 60.0, 60.0],
            [70.0, 70.0, 55.0, 55.0],
            [90.0, 90.0, 20.0, 20.0],
        ];
        assert_eq!(pick_face(&boxes, 200, 200), Some(1));
        assert_eq!(pick_face(&boxes[..1], 200, 200), Some(0));
        assert_eq!(pick_face(&[], 200, 200), None);
    }

    #[test]
    fn overlap_of_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(a, a), 1.0);
        assert_eq!(iou(a, [20.0, 0.0, 10.0, 10.0]), 0.0);
        assert!((iou(a, [5.0, 0.0, 10.0, 10.0]) - 50.0 / 150.0).abs() < 1e-6);
    }
}
