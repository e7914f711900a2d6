//! Alignment quality: run the landmark predictor again on the produced faces and measure
//! how much the eye centres, nose tip and mouth centre still move between images.

use crate::config::Mode;
use crate::dlib::{gray_like_dlib, ShapePredictor};
use crate::geometry::{
    box_from_landmarks, centre, EYE_IMAGE_LEFT, EYE_IMAGE_RIGHT, MOUTH, NOSE_TIP,
};
use artifacts::Faces;
use rayon::prelude::*;

/// Spreads (root mean squared distance from the mean position, in pixels of a 150x150
/// frame) of facial features across all produced faces.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    pub images: usize,
    pub eye_left: f64,
    pub eye_right: f64,
    pub eye_centres: f64,
    pub nose_tip: f64,
    pub mouth: f64,
    /// Mean positions (150x150 frame) of left eye, right eye, nose tip, mouth centre.
    pub means: [[f64; 2]; 4],
}

fn mean(points: &[[f32; 2]]) -> [f64; 2] {
    let n = points.len().max(1) as f64;
    let (x, y) = points
        .iter()
        .fold((0f64, 0f64), |(x, y), p| (x + p[0] as f64, y + p[1] as f64));
    [x / n, y / n]
}

fn spread(points: &[[f32; 2]]) -> f64 {
    let n = points.len().max(1) as f64;
    let (mx, my) = points
        .iter()
        .fold((0f64, 0f64), |(x, y), p| (x + p[0] as f64, y + p[1] as f64));
    let (mx, my) = (mx / n, my / n);
    (points
        .iter()
        .map(|p| (p[0] as f64 - mx).powi(2) + (p[1] as f64 - my).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// The four feature points (eye centres, nose tip, mouth centre; 150x150 frame) the
/// predictor finds on one produced face.
pub type FeaturePoints = [[f32; 2]; 4];

/// The box the predictor starts from on a produced face: for aligned faces, the box in
/// which the mean shape sits on the template; for crops, the whole crop (the detection box).
pub fn start_box(p: &ShapePredictor, mode: Mode, template: &[[f32; 2]], size: usize) -> [f32; 4] {
    match mode {
        Mode::CropOnly => [0.0, 0.0, size as f32 - 1.0, size as f32 - 1.0],
        Mode::Align | Mode::AsIs => box_from_landmarks(&p.initial_shape, template),
    }
}

/// The feature points of one produced face (`size x size` HWC RGB), from `rect`.
pub fn feature_points(
    p: &ShapePredictor,
    image: &[u8],
    size: usize,
    rect: [f32; 4],
) -> FeaturePoints {
    let gray = gray_like_dlib(image);
    let lm = p.predict(&gray, size, size, rect);
    let to150 = 150.0 / size as f32;
    let s = |q: [f32; 2]| [q[0] * to150, q[1] * to150];
    [
        s(centre(&lm, EYE_IMAGE_LEFT)),
        s(centre(&lm, EYE_IMAGE_RIGHT)),
        s(lm[NOSE_TIP]),
        s(centre(&lm, MOUTH)),
    ]
}

/// The spreads of the faces' feature points.
pub fn summarize(feats: &[FeaturePoints]) -> Quality {
    let col = |k: usize| feats.iter().map(|f| f[k]).collect::<Vec<_>>();
    let (l, r) = (spread(&col(0)), spread(&col(1)));
    Quality {
        images: feats.len(),
        eye_left: l,
        eye_right: r,
        eye_centres: (l + r) / 2.0,
        nose_tip: spread(&col(2)),
        mouth: spread(&col(3)),
        means: [mean(&col(0)), mean(&col(1)), mean(&col(2)), mean(&col(3))],
    }
}

/// The spreads over all faces of an artifact.
pub fn measure(p: &ShapePredictor, faces: &Faces, mode: Mode, template: &[[f32; 2]]) -> Quality {
    let rect = start_box(p, mode, template, faces.width);
    let feats: Vec<FeaturePoints> = (0..faces.len())
        .into_par_iter()
        .map(|i| feature_points(p, &faces.image(i), faces.width, rect))
        .collect();
    summarize(&feats)
}
