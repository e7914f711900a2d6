//! Views of an aligned face for consistent distillation ("a good teacher is patient and
//! consistent", Beyer et al. 2022): the teacher and the student must see the *same*
//! augmented picture. A view is the photo jittered by a similarity about the face (rotation,
//! scale, shift), then aligned exactly as preprocess aligned it, then recoloured and
//! possibly mirrored; both the student's masked 150x150 face and dlib's chip (the face
//! teacher's input) are cut from the photo with that one jitter, never a crop of a crop
//! (so a rotated view has real pixels in its corners, not black).
//!
//! The jitter is drawn from a hash of (seed, the face's source path, view index), so the
//! teacher stage and `train` rebuild the same pixels from the same recorded numbers.

use crate::config::{Mode, PreprocessConfig};
use crate::decode::{decode, Rgb};
use crate::error::FaceError;
use crate::mask::{apply_mask, gaussian_mask};
use artifacts::{Faces, CHIP_SIZE};
use dlib_dnn::chip::{extract_chip, face_chip_details, RgbImage};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why views of a faces artifact cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("views need faces aligned with landmarks (preprocess --mode align); this faces artifact was made with {0:?}")]
    NotAligned(Mode),
    #[error("the faces artifact has no landmarks and transforms (made by an older preprocess): re-run preprocess")]
    NoGeometry,
    #[error("the faces artifact's preprocessing settings are unreadable: {0}")]
    Config(serde_json::Error),
    #[error("{path}: {reason} (views are cut from the photos the faces came from: --photos names their folder)")]
    Photo { path: PathBuf, reason: FaceError },
}

/// A faces artifact's photos, ready to cut views of its faces.
pub struct ViewSource<'a> {
    faces: &'a Faces,
    photos: PathBuf,
    size: usize,
    mask: Option<Vec<f32>>,
}

impl<'a> ViewSource<'a> {
    /// `photos` is the folder preprocess read (`<class>/<file>` below it).
    pub fn new(faces: &'a Faces, photos: &Path) -> Result<ViewSource<'a>, ViewError> {
        let cfg: PreprocessConfig =
            serde_json::from_value(faces.provenance.config.clone()).map_err(ViewError::Config)?;
        if cfg.mode != Mode::Align {
            return Err(ViewError::NotAligned(cfg.mode));
        }
        if faces.geometry.is_none() {
            return Err(ViewError::NoGeometry);
        }
        Ok(ViewSource {
            faces,
            photos: photos.to_path_buf(),
            size: cfg.size,
            mask: cfg.mask.then(|| gaussian_mask(cfg.size, cfg.sigma)),
        })
    }

    /// Views `params` of face `i`, from one decode of its photo.
    pub fn render(&self, i: usize, params: &[ViewParams]) -> Result<Vec<FaceView>, ViewError> {
        let g = self.faces.geometry.as_ref().ok_or(ViewError::NoGeometry)?;
        let path = self.photos.join(&self.faces.sources[i]);
        let fail = |reason| ViewError::Photo {
            path: path.clone(),
            reason,
        };
        let img = decode(&path).map_err(|e| fail(e.into()))?;
        let t: [f32; 6] = g.transforms[i * 6..(i + 1) * 6]
            .try_into()
            .expect("six values");
        let lm: Vec<[f32; 2]> = g.landmarks[i * 136..(i + 1) * 136]
            .chunks_exact(2)
            .map(|p| [p[0], p[1]])
            .collect();
        params
            .iter()
            .map(|p| render(&img, &t, &lm, self.size, self.mask.as_deref(), p).map_err(&fail))
            .collect()
    }
}

/// Ranges of the random views (each value drawn uniformly in `[-r, r]`, or `1 +- r`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewJitter {
    /// Rotation about the face centre, degrees.
    pub rotate_deg: f32,
    /// Relative zoom (0.1: 0.9x to 1.1x).
    pub scale: f32,
    /// Shift in pixels of the 150-px face.
    pub shift_px: f32,
    /// Mirror half of the views.
    pub flip: bool,
    /// Relative brightness, contrast and saturation change (0.2: factors 0.8 to 1.2).
    pub color: f32,
}

impl ViewJitter {
    /// The view that eight uniforms in [0, 1) pick from these ranges: the one mapping used
    /// by the bank's hashed draws and by `train --online-teacher`'s fresh ones.
    pub fn view(&self, u: &[f32; 8]) -> ViewParams {
        let sym = |i: usize, r: f32| (2.0 * u[i] - 1.0) * r;
        ViewParams {
            angle_deg: sym(0, self.rotate_deg),
            scale: 1.0 + sym(1, self.scale),
            dx: sym(2, self.shift_px),
            dy: sym(3, self.shift_px),
            flip: self.flip && u[4] < 0.5,
            brightness: 1.0 + sym(5, self.color),
            contrast: 1.0 + sym(6, self.color),
            saturation: 1.0 + sym(7, self.color),
        }
    }
}

impl Default for ViewJitter {
    /// Ranges a face detector's own jitter covers (landmark noise is a few degrees and
    /// pixels); colour as in common face-recognition training.
    fn default() -> Self {
        ViewJitter {
            rotate_deg: 10.0,
            scale: 0.1,
            shift_px: 8.0,
            flip: true,
            color: 0.2,
        }
    }
}

/// How a bank of views was drawn; recorded in the bottlenecks artifact so `train` cuts the
/// same pixels.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewRecipe {
    pub seed: u64,
    pub jitter: ViewJitter,
    /// The folder preprocess read (absolute), where the views are cut from.
    pub photos: PathBuf,
}

/// Numbers per view stored in the bottlenecks artifact (`view_params` [N,K,8]).
pub const VIEW_PARAMS: usize = 8;

/// One view's jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    pub angle_deg: f32,
    pub scale: f32,
    pub dx: f32,
    pub dy: f32,
    pub flip: bool,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

impl ViewParams {
    /// The face as preprocess cut it.
    pub const IDENTITY: ViewParams = ViewParams {
        angle_deg: 0.0,
        scale: 1.0,
        dx: 0.0,
        dy: 0.0,
        flip: false,
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
    };

    pub fn to_row(&self) -> [f32; VIEW_PARAMS] {
        [
            self.angle_deg,
            self.scale,
            self.dx,
            self.dy,
            self.flip as u8 as f32,
            self.brightness,
            self.contrast,
            self.saturation,
        ]
    }

    pub fn from_row(r: &[f32]) -> ViewParams {
        ViewParams {
            angle_deg: r[0],
            scale: r[1],
            dx: r[2],
            dy: r[3],
            flip: r[4] > 0.5,
            brightness: r[5],
            contrast: r[6],
            saturation: r[7],
        }
    }

    fn is_geometric_identity(&self) -> bool {
        self.angle_deg == 0.0 && self.scale == 1.0 && self.dx == 0.0 && self.dy == 0.0
    }
}

/// `k` views of the face from `source`: view 0 is the face itself (so one view is the
/// unaugmented target), the others drawn from `jitter`, deterministically.
pub fn draw_views(jitter: &ViewJitter, seed: u64, source: &str, k: usize) -> Vec<ViewParams> {
    (0..k)
        .map(|v| {
            if v == 0 {
                return ViewParams::IDENTITY;
            }
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(source.as_bytes());
            h.update((v as u64).to_le_bytes());
            let d = h.finalize();
            // Eight uniforms in [0, 1) from the digest's 32 bytes.
            let us: [f32; 8] = std::array::from_fn(|i| {
                u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]) as f32
                    / 4_294_967_296.0
            });
            jitter.view(&us)
        })
        .collect()
}

/// A view's two pictures, HWC RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceView {
    /// The student's input: `size` x `size`, masked like preprocess's faces.
    pub face: Vec<u8>,
    /// dlib's 150x150 chip of the same view (the face teacher's input).
    pub chip: Vec<u8>,
}

/// A 2x3 affine `[a, b, tx, c, d, ty]` (x' = a x + b y + tx, y' = c x + d y + ty).
type Affine = [f32; 6];

fn compose(outer: &Affine, inner: &Affine) -> Affine {
    let [a, b, c, d, e, f] = *outer;
    let [p, q, r, s, t, u] = *inner;
    [
        a * p + b * s,
        a * q + b * t,
        a * r + b * u + c,
        d * p + e * s,
        d * q + e * t,
        d * r + e * u + f,
    ]
}

fn invert(m: &Affine) -> Option<Affine> {
    let [a, b, tx, c, d, ty] = *m;
    let det = a * d - b * c;
    if det.abs() < 1e-12 || !det.is_finite() {
        return None;
    }
    let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
    Some([ia, ib, -(ia * tx + ib * ty), ic, id, -(ic * tx + id * ty)])
}

fn apply(m: &Affine, p: [f32; 2]) -> [f32; 2] {
    [
        m[0] * p[0] + m[1] * p[1] + m[2],
        m[3] * p[0] + m[4] * p[1] + m[5],
    ]
}

/// The jitter in the face's output frame: rotate and zoom about the centre, then shift.
fn output_jitter(p: &ViewParams, size: usize) -> Affine {
    let o = size as f32 / 2.0;
    let (s, c) = p.angle_deg.to_radians().sin_cos();
    let (a, b) = (p.scale * c, -p.scale * s);
    let (cc, d) = (p.scale * s, p.scale * c);
    [
        a,
        b,
        o - a * o - b * o + p.dx,
        cc,
        d,
        o - cc * o - d * o + p.dy,
    ]
}

/// Cuts view `p` of one face from its decoded photo. `transform` is the face's stored
/// photo -> face affine, `landmarks` its 68 points; `mask` the preprocessing mask (if any).
pub fn render(
    img: &Rgb,
    transform: &Affine,
    landmarks: &[[f32; 2]],
    size: usize,
    mask: Option<&[f32]>,
    p: &ViewParams,
) -> Result<FaceView, FaceError> {
    let j = output_jitter(p, size);
    let face_m = compose(&j, transform);
    let mut face = crate::detect::warp(&img.data, img.width, img.height, face_m, size)
        .map_err(FaceError::Warp)?;
    // The chip of the jittered photo: dlib's fit to the landmarks moved by the inverse
    // photo jitter (a similarity fit commutes with a similarity of its target points).
    let inv_t = invert(transform).ok_or(FaceError::NoChip)?;
    let inv_j = invert(&j).ok_or(FaceError::NoChip)?;
    let photo_inv = compose(&inv_t, &compose(&inv_j, transform));
    let moved: Vec<[f32; 2]> = if p.is_geometric_identity() {
        landmarks.to_vec()
    } else {
        landmarks.iter().map(|&q| apply(&photo_inv, q)).collect()
    };
    let details = face_chip_details(&moved, CHIP_SIZE, 0.25).ok_or(FaceError::NoChip)?;
    let view = RgbImage {
        data: img.data.as_slice().into(),
        width: img.width,
        height: img.height,
    };
    let mut chip = extract_chip(&view, &details);
    recolour(&mut face, p);
    recolour(&mut chip, p);
    if let Some(m) = mask {
        apply_mask(&mut face, m);
    }
    if p.flip {
        mirror(&mut face, size);
        mirror(&mut chip, CHIP_SIZE);
    }
    Ok(FaceView { face, chip })
}

/// Saturation (blend with the pixel's grey), contrast about mid-grey, then brightness.
fn recolour(rgb: &mut [u8], p: &ViewParams) {
    if p.brightness == 1.0 && p.contrast == 1.0 && p.saturation == 1.0 {
        return;
    }
    for px in rgb.chunks_exact_mut(3) {
        let grey = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
        for c in px.iter_mut() {
            let v = grey + p.saturation * (*c as f32 - grey);
            let v = (v - 128.0) * p.contrast + 128.0;
            *c = (v * p.brightness).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Mirrors a square HWC image left-right in place.
fn mirror(rgb: &mut [u8], side: usize) {
    for row in rgb.chunks_exact_mut(side * 3) {
        for x in 0..side / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (side - 1 - x) * 3 + c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_inverse_and_composition() {
        let m = [1.2, -0.3, 5.0, 0.3, 1.2, -7.0];
        let i = invert(&m).unwrap();
        let id = compose(&m, &i);
        for (a, b) in id.iter().zip([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) {
            assert!((a - b).abs() < 1e-5, "{id:?}");
        }
        let p = apply(&m, [3.0, 4.0]);
        let q = apply(&i, p);
        assert!((q[0] - 3.0).abs() < 1e-4 && (q[1] - 4.0).abs() < 1e-4);
    }

    #[test]
    fn the_output_jitter_turns_about_the_centre() {
        let p = ViewParams {
            angle_deg: 90.0,
            ..ViewParams::IDENTITY
        };
        let j = output_jitter(&p, 150);
        let c = apply(&j, [75.0, 75.0]);
        assert!((c[0] - 75.0).abs() < 1e-4 && (c[1] - 75.0).abs() < 1e-4);
        // A point right of the centre goes below it (image y down, positive angle).
        let r = apply(&j, [85.0, 75.0]);
        assert!(
            (r[0] - 75.0).abs() < 1e-3 && (r[1] - 85.0).abs() < 1e-3,
            "{r:?}"
        );
    }

    #[test]
    fn views_are_deterministic_and_the_first_is_the_face() {
        let j = ViewJitter::default();
        let a = draw_views(&j, 7, "ann/1.jpg", 6);
        assert_eq!(a, draw_views(&j, 7, "ann/1.jpg", 6));
        assert_ne!(a, draw_views(&j, 8, "ann/1.jpg", 6));
        assert_eq!(a[0], ViewParams::IDENTITY);
        for v in &a[1..] {
            assert!(v.angle_deg.abs() <= 10.0 && (v.scale - 1.0).abs() <= 0.1);
            assert!(v.dx.abs() <= 8.0 && (v.brightness - 1.0).abs() <= 0.2);
            assert_eq!(ViewParams::from_row(&v.to_row()), *v);
        }
        assert!(a[1..].iter().any(|v| v.flip) || a[1..].iter().any(|v| !v.flip));
    }

    #[test]
    fn recolour_and_mirror() {
        let mut px = vec![100u8, 150, 200];
        recolour(
            &mut px,
            &ViewParams {
                brightness: 1.1,
                ..ViewParams::IDENTITY
            },
        );
        assert_eq!(px, vec![110, 165, 220]);
        let mut img: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8).collect();
        mirror(&mut img, 2);
        assert_eq!(img, vec![3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]);
    }
}
