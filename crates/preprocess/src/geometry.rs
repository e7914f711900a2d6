//! The canonical face template the aligned faces are warped to; the similarity transforms
//! live in [`dlib_dnn::geometry`] (dlib's face chips use the same fit).

pub use dlib_dnn::geometry::{similarity_fit, weighted_similarity_fit, Similarity};

/// faceswap.py's `ALIGN_POINTS`: brows (17-26), nose (27-35), eyes (36-47), mouth (48-60).
pub const ALIGN_POINTS: std::ops::Range<usize> = 17..61;
/// Weights of [`ALIGN_POINTS`] for the alignment fit: eye landmarks count `eye_weight`
/// times, the rest once.
pub fn align_weights(eye_weight: f32) -> Vec<f32> {
    ALIGN_POINTS
        .map(|i| {
            if (36..48).contains(&i) {
                eye_weight
            } else {
                1.0
            }
        })
        .collect()
}

/// The eye seen on the image's left (the person's right eye) in iBUG 68 numbering.
pub const EYE_IMAGE_LEFT: std::ops::Range<usize> = 36..42;
pub const EYE_IMAGE_RIGHT: std::ops::Range<usize> = 42..48;
pub const NOSE_TIP: usize = 30;
pub const MOUTH: std::ops::Range<usize> = 48..68;

/// Mean of a range of landmarks.
pub fn centre(points: &[[f32; 2]], range: std::ops::Range<usize>) -> [f32; 2] {
    let n = range.len() as f32;
    let (x, y) = points[range]
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
    [x / n, y / n]
}

/// Where the study's aligned 150x150 images put the features: eyes near (43,27) and
/// (105,27), mouth centre near (74,94). Scaled for other output sizes.
pub fn anchor_targets(size: usize) -> [[f32; 2]; 3] {
    let s = size as f32 / 150.0;
    [
        [43.0 * s, 27.0 * s],
        [105.0 * s, 27.0 * s],
        [74.0 * s, 94.0 * s],
    ]
}

/// The canonical template: the predictor's mean shape placed by the similarity that best
/// puts its eye and mouth centres on [`anchor_targets`]. Returns all landmarks.
pub fn template(mean_shape: &[f32], size: usize) -> Vec<[f32; 2]> {
    let pts: Vec<[f32; 2]> = mean_shape.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
    let from = [
        centre(&pts, EYE_IMAGE_LEFT),
        centre(&pts, EYE_IMAGE_RIGHT),
        centre(&pts, MOUTH),
    ];
    let t = similarity_fit(&from, &anchor_targets(size));
    pts.iter().map(|p| t.apply(*p)).collect()
}

/// The box `[l, t, r, b]` in which the predictor's mean shape best matches `landmarks`
/// (least squares per axis): where dlib's own detector would have put the face.
pub fn box_from_landmarks(mean: &[f32], landmarks: &[[f32; 2]]) -> [f32; 4] {
    let fit = |axis: usize| {
        let n = landmarks.len() as f64;
        let (mut sm, mut sp, mut smm, mut smp) = (0f64, 0f64, 0f64, 0f64);
        for (i, p) in landmarks.iter().enumerate() {
            let m = mean[2 * i + axis] as f64;
            let v = p[axis] as f64;
            sm += m;
            sp += v;
            smm += m * m;
            smp += m * v;
        }
        let scale = (n * smp - sm * sp) / (n * smm - sm * sm);
        let off = (sp - scale * sm) / n;
        (off as f32, (off + scale) as f32)
    };
    let (l, r) = fit(0);
    let (t, b) = fit(1);
    [l, t, r, b]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_transform() {
        let truth = Similarity {
            a: 1.3 * 0.4f32.cos(),
            b: 1.3 * 0.4f32.sin(),
            tx: 12.0,
            ty: -7.5,
        };
        let from: Vec<[f32; 2]> = (0..20)
            .map(|i| [(i * 7 % 13) as f32, (i * 5 % 11) as f32 * 1.5])
            .collect();
        let to: Vec<[f32; 2]> = from.iter().map(|p| truth.apply(*p)).collect();
        let fit = similarity_fit(&from, &to);
        assert!((fit.scale() - 1.3).abs() < 1e-5);
        assert!((fit.angle() - 0.4).abs() < 1e-5);
        assert!((fit.tx - 12.0).abs() < 1e-4 && (fit.ty + 7.5).abs() < 1e-4);
    }

    #[test]
    fn weights_pull_the_fit_towards_heavy_points() {
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        let to = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]];
        let even = similarity_fit(&from, &to);
        let heavy = weighted_similarity_fit(&from, &to, &[10.0, 10.0, 0.1]);
        let err = |t: Similarity, i: usize| {
            let p = t.apply(from[i]);
            (p[0] - to[i][0]).hypot(p[1] - to[i][1])
        };
        assert!(err(heavy, 1) < err(even, 1));
        assert_eq!(align_weights(3.0).len(), ALIGN_POINTS.len());
    }

    #[test]
    fn a_mirrored_set_gives_no_reflection() {
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
        let to: Vec<[f32; 2]> = from.iter().map(|p| [-p[0], p[1]]).collect();
        let fit = similarity_fit(&from, &to);
        // det of [a -b; b a] = a^2 + b^2 >= 0: never a flip.
        assert!(fit.a * fit.a + fit.b * fit.b >= 0.0);
        let m = fit.matrix();
        assert!(m[0] * m[4] - m[1] * m[3] >= 0.0);
    }

    #[test]
    fn template_puts_eyes_where_the_study_did() {
        // A symmetric toy mean shape: 68 points with eyes and mouth placed.
        let mut shape = vec![0.5f32; 136];
        for i in 36..42 {
            shape[2 * i] = 0.3;
            shape[2 * i + 1] = 0.4;
        }
        for i in 42..48 {
            shape[2 * i] = 0.7;
            shape[2 * i + 1] = 0.4;
        }
        for i in 48..68 {
            shape[2 * i] = 0.5;
            shape[2 * i + 1] = 0.8;
        }
        let t = template(&shape, 150);
        let le = centre(&t, EYE_IMAGE_LEFT);
        let re = centre(&t, EYE_IMAGE_RIGHT);
        assert!((le[1] - re[1]).abs() < 1e-3, "eyes level");
        assert!(
            (le[0] - 43.0).abs() < 3.0 && (re[0] - 105.0).abs() < 3.0,
            "{le:?} {re:?}"
        );
    }
}
