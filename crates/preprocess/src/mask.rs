//! The study's 2-D gaussian mask that darkens hair and background.

/// `size x size` weights: a 1-D gaussian over `linspace(-3, 3, size)` (mu 0, `sigma`),
/// outer product with itself, divided by its maximum (centre 1.0).
pub fn gaussian_mask(size: usize, sigma: f32) -> Vec<f32> {
    let g: Vec<f64> = (0..size)
        .map(|i| {
            let x = if size > 1 {
                -3.0 + 6.0 * i as f64 / (size - 1) as f64
            } else {
                0.0
            };
            (-(x * x) / (2.0 * sigma as f64 * sigma as f64)).exp()
        })
        .collect();
    let max = g.iter().cloned().fold(0.0, f64::max);
    let mut out = Vec::with_capacity(size * size);
    for gy in &g {
        for gx in &g {
            out.push((gy * gx / (max * max)) as f32);
        }
    }
    out
}

/// Multiplies an HWC RGB image by the mask, rounding to nearest.
pub fn apply_mask(rgb: &mut [u8], mask: &[f32]) {
    for (px, m) in rgb.chunks_exact_mut(3).zip(mask) {
        for c in px {
            *c = (*c as f32 * m).round() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_150() {
        let m = gaussian_mask(150, 2.5);
        let at = |y: usize, x: usize| m[y * 150 + x];
        let max = m.iter().cloned().fold(0.0, f32::max);
        assert!((max - 1.0).abs() < 1e-6);
        assert!((at(74, 74) - 1.0).abs() < 1e-6 && (at(75, 75) - 1.0).abs() < 1e-6);
        // Edge midpoint exp(-9/12.5) = 0.4868, corner its square 0.2369.
        assert!((at(0, 74) - 0.4868).abs() < 1e-3, "{}", at(0, 74));
        assert!((at(0, 0) - 0.2369).abs() < 1e-3, "{}", at(0, 0));
        assert!((at(149, 149) - at(0, 0)).abs() < 1e-7, "symmetric");
        let mut img = vec![200u8; 150 * 150 * 3];
        apply_mask(&mut img, &m);
        assert_eq!(img[(74 * 150 + 74) * 3], 200);
        assert_eq!(img[0], (200.0f32 * at(0, 0)).round() as u8);
    }
}
