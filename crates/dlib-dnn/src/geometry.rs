//! Similarity transforms (rotation, uniform scale, translation) and their least-squares
//! fit: used by dlib's face chips here and by the study's alignment in `preprocess`.

/// `x' = a*x - b*y + tx`, `y' = b*x + a*y + ty`: scale `hypot(a,b)`, angle `atan2(b,a)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f32,
    pub b: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Similarity {
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.tx,
            self.b * p[0] + self.a * p[1] + self.ty,
        ]
    }
    pub fn scale(&self) -> f32 {
        self.a.hypot(self.b)
    }
    pub fn angle(&self) -> f32 {
        self.b.atan2(self.a)
    }
    /// As an OpenCV-style 2x3 matrix `[a, -b, tx, b, a, ty]`.
    pub fn matrix(&self) -> [f32; 6] {
        [self.a, -self.b, self.tx, self.b, self.a, self.ty]
    }
}

/// Least-squares similarity mapping `from` onto `to` (Umeyama 1991 in 2-D).
///
/// In 2-D the optimum over scale x rotation has a closed form: with centred points,
/// `a = sum(f.t) / sum|f|^2`, `b = sum(f x t) / sum|f|^2`. It is Umeyama's solution with
/// the reflection guard built in: `[a -b; b a]` can never be a reflection, so a mirrored
/// point set gets the best proper rotation instead of a flip.
pub fn similarity_fit(from: &[[f32; 2]], to: &[[f32; 2]]) -> Similarity {
    weighted_similarity_fit(from, to, &vec![1.0; from.len()])
}

/// [`similarity_fit`] with a non-negative weight per point pair.
pub fn weighted_similarity_fit(from: &[[f32; 2]], to: &[[f32; 2]], w: &[f32]) -> Similarity {
    assert!(
        from.len() == to.len() && w.len() == from.len(),
        "point sets must pair up"
    );
    let total: f64 = w
        .iter()
        .map(|&x| x as f64)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let mean = |ps: &[[f32; 2]]| {
        let (sx, sy) = ps.iter().zip(w).fold((0f64, 0f64), |(x, y), (p, &w)| {
            (x + w as f64 * p[0] as f64, y + w as f64 * p[1] as f64)
        });
        (sx / total, sy / total)
    };
    let (fx, fy) = mean(from);
    let (tx, ty) = mean(to);
    let (mut dot, mut cross, mut norm) = (0f64, 0f64, 0f64);
    for ((f, t), &w) in from.iter().zip(to).zip(w) {
        let w = w as f64;
        let (ax, ay) = (f[0] as f64 - fx, f[1] as f64 - fy);
        let (bx, by) = (t[0] as f64 - tx, t[1] as f64 - ty);
        dot += w * (ax * bx + ay * by);
        cross += w * (ax * by - ay * bx);
        norm += w * (ax * ax + ay * ay);
    }
    if norm == 0.0 {
        // One distinct point: a pure translation.
        return Similarity {
            a: 1.0,
            b: 0.0,
            tx: (tx - fx) as f32,
            ty: (ty - fy) as f32,
        };
    }
    let a = dot / norm;
    let b = cross / norm;
    Similarity {
        a: a as f32,
        b: b as f32,
        tx: (tx - (a * fx - b * fy)) as f32,
        ty: (ty - (b * fx + a * fy)) as f32,
    }
}
