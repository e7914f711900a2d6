//! Face detection with an OpenCV Haar cascade, and the OpenCV helpers we need.

use opencv::core::{Mat, Rect, Scalar, Size, Vector, CV_8UC1, CV_8UC3};
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// Detector settings; the defaults were measured on msceleb-samples (see README).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectorConfig {
    pub cascade: PathBuf,
    pub scale_factor: f64,
    pub min_neighbors: i32,
    /// Smallest face as a fraction of the photo's shorter side.
    pub min_face: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            cascade: PathBuf::from(
                "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
            ),
            scale_factor: 1.1,
            min_neighbors: 4,
            min_face: 0.15,
        }
    }
}

/// The chosen face and how many were found.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// `[x, y, w, h]` in pixels.
    pub rect: [f32; 4],
    pub faces_found: usize,
}

thread_local! {
    static CASCADE: RefCell<Option<(PathBuf, CascadeClassifier)>> = const { RefCell::new(None) };
}

/// Checks that the cascade loads (once, up front, for a clear error).
pub fn check_cascade(path: &Path) -> Result<(), String> {
    let p = path.to_str().ok_or("cascade path is not UTF-8")?;
    if !path.is_file() {
        return Err(format!(
            "face cascade {} not found; install it with `apt-get install opencv-data` or pass --cascade",
            path.display()
        ));
    }
    let c = CascadeClassifier::new(p).map_err(|e| format!("{}: {e}", path.display()))?;
    if c.empty().unwrap_or(true) {
        return Err(format!("{}: not a usable cascade file", path.display()));
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

/// Detects faces in a grey image and keeps the one a user meant: the largest, discounted
/// by its distance from the photo's centre.
pub fn detect(
    gray: &[u8],
    width: usize,
    height: usize,
    cfg: &DetectorConfig,
) -> opencv::Result<Option<Detection>> {
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
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let diag = (cx * cx + cy * cy).sqrt();
    let best = faces.iter().max_by(|a, b| {
        let score = |r: &Rect| {
            let (fx, fy) = (
                r.x as f64 + r.width as f64 / 2.0,
                r.y as f64 + r.height as f64 / 2.0,
            );
            let off = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt() / diag;
            (r.width as f64 * r.height as f64) * (1.0 - off)
        };
        score(a).total_cmp(&score(b))
    });
    Ok(best.map(|r| Detection {
        rect: [r.x as f32, r.y as f32, r.width as f32, r.height as f32],
        faces_found: faces.len(),
    }))
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
