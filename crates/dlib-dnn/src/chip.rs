//! dlib's face chips: `get_face_chip_details(shape, size, padding)` (a similarity from the
//! 68 landmarks onto dlib's face template) and `extract_image_chip` (bilinear, through an
//! image pyramid when the chip shrinks the face a lot). dlib's face descriptor was trained
//! on exactly these chips.

use crate::geometry::similarity_fit;

/// dlib's mean face for landmarks 17..=67 in unit coordinates (x, then y); only the points
/// [`TEMPLATE_USED`] takes enter the fit (no brows, no lower lip).
const TEMPLATE_X: [f64; 51] = [
    0.000213256,
    0.0752622,
    0.18113,
    0.29077,
    0.393397,
    0.586856,
    0.689483,
    0.799124,
    0.904991,
    0.98004,
    0.490127,
    0.490127,
    0.490127,
    0.490127,
    0.36688,
    0.426036,
    0.490127,
    0.554217,
    0.613373,
    0.121737,
    0.187122,
    0.265825,
    0.334606,
    0.260918,
    0.182743,
    0.645647,
    0.714428,
    0.793132,
    0.858516,
    0.79751,
    0.719335,
    0.254149,
    0.340985,
    0.428858,
    0.490127,
    0.551395,
    0.639268,
    0.726104,
    0.642159,
    0.556721,
    0.490127,
    0.423532,
    0.338094,
    0.290379,
    0.428096,
    0.490127,
    0.552157,
    0.689874,
    0.553364,
    0.490127,
    0.42689,
];
const TEMPLATE_Y: [f64; 51] = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915,
    0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345,
    0.587326, 0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852,
    0.178758, 0.216423, 0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388,
    0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746,
    0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
];

/// The landmarks dlib fits: nose and eyes (27..=54 minus nothing) and the inner lips.
fn template_used(i: usize) -> bool {
    (27..=54).contains(&i) || (60..=64).contains(&i)
}

/// A rotated rectangle of the photo that becomes a `size` x `size` chip (dlib's
/// `chip_details`): `rect` is `[left, top, right, bottom]` before rotation about its centre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipDetails {
    pub rect: [f64; 4],
    pub angle: f64,
    pub size: usize,
}

/// dlib's `get_face_chip_details(shape, size, padding)` for 68 landmarks `(x, y)`.
pub fn face_chip_details(landmarks: &[[f32; 2]], size: usize, padding: f64) -> Option<ChipDetails> {
    if landmarks.len() != 68 || size < 2 {
        return None;
    }
    let (mut from, mut to) = (Vec::new(), Vec::new());
    for i in (17..68).filter(|&i| template_used(i)) {
        let k = i - 17;
        let s = size as f64;
        from.push([
            (s * (padding + TEMPLATE_X[k]) / (1.0 + 2.0 * padding)) as f32,
            (s * (padding + TEMPLATE_Y[k]) / (1.0 + 2.0 * padding)) as f32,
        ]);
        to.push(landmarks[i]);
    }
    if to.iter().flatten().any(|v| !v.is_finite()) {
        return None;
    }
    // chip -> photo
    let t = similarity_fit(&from, &to);
    let (a, b) = (t.a as f64, t.b as f64);
    let scale = a.hypot(b);
    if scale.is_nan() || scale <= 0.0 {
        return None;
    }
    let angle = b.atan2(a);
    let c = size as f64 / 2.0;
    let p = [a * c - b * c + t.tx as f64, b * c + a * c + t.ty as f64];
    let half = (size as f64 * scale - 1.0) / 2.0;
    Some(ChipDetails {
        rect: [p[0] - half, p[1] - half, p[0] + half, p[1] + half],
        angle,
        size,
    })
}

/// The chip's sampling grid in some image: chip pixel (x, y) -> `origin + x*ex + y*ey`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    origin: [f64; 2],
    ex: [f64; 2],
    ey: [f64; 2],
}

/// Chip (0,0), (size-1,0), (0,size-1) onto the rect's top-left, top-right, bottom-left
/// corners, rotated by `angle` about the rect's centre.
fn grid(rect: [f64; 4], angle: f64, size: usize) -> Grid {
    let [l, t, r, b] = rect;
    let (cx, cy) = ((l + r) / 2.0, (t + b) / 2.0);
    let (s, c) = angle.sin_cos();
    let rot = |x: f64, y: f64| {
        let (dx, dy) = (x - cx, y - cy);
        [cx + c * dx - s * dy, cy + s * dx + c * dy]
    };
    let (tl, tr, bl) = (rot(l, t), rot(r, t), rot(l, b));
    let n = (size - 1) as f64;
    Grid {
        origin: tl,
        ex: [(tr[0] - tl[0]) / n, (tr[1] - tl[1]) / n],
        ey: [(bl[0] - tl[0]) / n, (bl[1] - tl[1]) / n],
    }
}

/// An RGB image, HWC u8.
#[derive(Debug, Clone)]
pub struct RgbImage<'a> {
    pub data: std::borrow::Cow<'a, [u8]>,
    pub width: usize,
    pub height: usize,
}

/// dlib's `interpolate_bilinear` for RGB: black outside (the last row and column too, as
/// dlib needs both neighbours), computed in f64 and truncated.
fn bilinear(img: &RgbImage, x: f64, y: f64, out: &mut [u8]) {
    let (l, t) = (x.floor(), y.floor());
    if l < 0.0 || t < 0.0 || l + 1.0 >= img.width as f64 || t + 1.0 >= img.height as f64 {
        out.fill(0);
        return;
    }
    let (l, t) = (l as usize, t as usize);
    let (fx, fy) = (x - l as f64, y - t as f64);
    let w = img.width;
    let px = |xx: usize, yy: usize, ch: usize| img.data[(yy * w + xx) * 3 + ch] as f64;
    for (ch, o) in out.iter_mut().enumerate() {
        let v = (1.0 - fy) * ((1.0 - fx) * px(l, t, ch) + fx * px(l + 1, t, ch))
            + fy * ((1.0 - fx) * px(l, t + 1, ch) + fx * px(l + 1, t + 1, ch));
        *o = v as u8;
    }
}

/// dlib's `pyramid_down<2>::rect_down` on one corner.
fn point_down(p: [f64; 2]) -> [f64; 2] {
    [p[0] / 2.0 - 1.25, p[1] / 2.0 - 0.75]
}

fn rect_down(r: [f64; 4]) -> [f64; 4] {
    let tl = point_down([r[0], r[1]]);
    let br = point_down([r[2], r[3]]);
    [tl[0], tl[1], br[0], br[1]]
}

fn area(r: [f64; 4]) -> f64 {
    ((r[2] - r[0] + 1.0).max(0.0)) * ((r[3] - r[1] + 1.0).max(0.0))
}

/// dlib's `pyramid_down<2>` on an RGB image: a 5-tap [1 4 6 4 1] filter in each direction
/// over the valid region, every second pixel, integer arithmetic.
pub fn pyramid_down2(img: &RgbImage) -> Option<RgbImage<'static>> {
    if img.width <= 8 || img.height <= 8 {
        return None;
    }
    let (ow, oh) = ((img.width - 3) / 2, (img.height - 3) / 2);
    let k = [1u32, 4, 6, 4, 1];
    // Horizontal pass on every row: u32 sums of 16x.
    let w = img.width;
    let mut horiz = vec![0u32; img.height * ow * 3];
    for y in 0..img.height {
        for ox in 0..ow {
            for ch in 0..3 {
                let mut s = 0u32;
                for (a, kk) in k.iter().enumerate() {
                    s += kk * img.data[(y * w + 2 * ox + a) * 3 + ch] as u32;
                }
                horiz[(y * ow + ox) * 3 + ch] = s;
            }
        }
    }
    let mut out = vec![0u8; oh * ow * 3];
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..3 {
                let mut s = 0u32;
                for (a, kk) in k.iter().enumerate() {
                    s += kk * horiz[((2 * oy + a) * ow + ox) * 3 + ch];
                }
                out[(oy * ow + ox) * 3 + ch] = (s / 256) as u8;
            }
        }
    }
    Some(RgbImage {
        data: out.into(),
        width: ow,
        height: oh,
    })
}

/// dlib's `extract_image_chip` (bilinear) of one chip: `size*size*3` RGB bytes.
pub fn extract_chip(img: &RgbImage, d: &ChipDetails) -> Vec<u8> {
    let size = d.size;
    let mut out = vec![0u8; size * size * 3];
    // Pyramid depth: how many halvings keep the rect larger than the chip.
    let mut depth = 0;
    let mut r = d.rect;
    loop {
        let down = rect_down(r);
        if area(down) > (size * size) as f64 {
            depth += 1;
            r = down;
        } else {
            break;
        }
        if depth > 30 {
            break;
        }
    }
    let (src, rect): (std::borrow::Cow<RgbImage>, [f64; 4]) = if depth == 0 {
        (std::borrow::Cow::Borrowed(img), d.rect)
    } else {
        // The region the chip reads, grown for the filters, cut from the photo.
        let mut grow = 2.0;
        for _ in 0..depth {
            grow = 2.0 * grow + 2.0;
        }
        let g = grid(d.rect, d.angle, size);
        let n = (size - 1) as f64;
        let corners = [
            g.origin,
            [g.origin[0] + n * g.ex[0], g.origin[1] + n * g.ex[1]],
            [g.origin[0] + n * g.ey[0], g.origin[1] + n * g.ey[1]],
            [
                g.origin[0] + n * (g.ex[0] + g.ey[0]),
                g.origin[1] + n * (g.ex[1] + g.ey[1]),
            ],
        ];
        let minx = corners.iter().map(|c| c[0]).fold(f64::INFINITY, f64::min);
        let maxx = corners
            .iter()
            .map(|c| c[0])
            .fold(f64::NEG_INFINITY, f64::max);
        let miny = corners.iter().map(|c| c[1]).fold(f64::INFINITY, f64::min);
        let maxy = corners
            .iter()
            .map(|c| c[1])
            .fold(f64::NEG_INFINITY, f64::max);
        let l = ((minx.round() - grow).max(0.0)) as i64;
        let t = ((miny.round() - grow).max(0.0)) as i64;
        let rr = ((maxx.round() + grow).min(img.width as f64 - 1.0)) as i64;
        let b = ((maxy.round() + grow).min(img.height as f64 - 1.0)) as i64;
        if rr < l || b < t {
            return out;
        }
        let (cw, ch) = ((rr - l + 1) as usize, (b - t + 1) as usize);
        let mut crop = Vec::with_capacity(cw * ch * 3);
        for y in t as usize..=b as usize {
            let row = (y * img.width + l as usize) * 3;
            crop.extend_from_slice(&img.data[row..row + cw * 3]);
        }
        let mut level = RgbImage {
            data: crop.into(),
            width: cw,
            height: ch,
        };
        let mut rect = [
            d.rect[0] - l as f64,
            d.rect[1] - t as f64,
            d.rect[2] - l as f64,
            d.rect[3] - t as f64,
        ];
        for _ in 0..depth {
            match pyramid_down2(&level) {
                Some(next) => level = next,
                None => return out,
            }
            rect = rect_down(rect);
        }
        (std::borrow::Cow::Owned(level), rect)
    };
    let g = grid(rect, d.angle, size);
    for y in 0..size {
        for x in 0..size {
            let (xf, yf) = (x as f64, y as f64);
            let sx = g.origin[0] + xf * g.ex[0] + yf * g.ey[0];
            let sy = g.origin[1] + xf * g.ex[1] + yf * g.ey[1];
            bilinear(
                &src,
                sx,
                sy,
                &mut out[(y * size + x) * 3..(y * size + x + 1) * 3],
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Landmarks placed exactly on the template (scaled by `s`, shifted by `(dx, dy)`).
    fn on_template(s: f64, dx: f64, dy: f64, angle: f64) -> Vec<[f32; 2]> {
        let (sn, cs) = angle.sin_cos();
        (0..68)
            .map(|i| {
                let (x, y) = if i >= 17 {
                    (TEMPLATE_X[i - 17] * s, TEMPLATE_Y[i - 17] * s)
                } else {
                    (0.0, 0.0)
                };
                [(cs * x - sn * y + dx) as f32, (sn * x + cs * y + dy) as f32]
            })
            .collect()
    }

    #[test]
    fn chip_geometry_of_a_template_face() {
        // A face of 100 px in template units at (40, 60): with padding 0.25 and size 150 the
        // chip covers 150 px of photo (scale 1): chip point 100 m + 25 is photo point
        // 100 m + (40, 60), and the rect is the centre (90, 110) +- (150 - 1) / 2.
        let d = face_chip_details(&on_template(100.0, 40.0, 60.0, 0.0), 150, 0.25).unwrap();
        assert!(d.angle.abs() < 1e-6, "{d:?}");
        let want = [15.5, 35.5, 164.5, 184.5];
        for (g, w) in d.rect.iter().zip(want) {
            assert!((g - w).abs() < 1e-3, "{d:?} vs {want:?}");
        }
        // Rotated by 0.3 rad: the chip's angle follows, the size stays.
        let d = face_chip_details(&on_template(100.0, 40.0, 60.0, 0.3), 150, 0.25).unwrap();
        assert!((d.angle - 0.3).abs() < 1e-5, "{d:?}");
        assert!((d.rect[2] - d.rect[0] - 149.0).abs() < 1e-3);
        // Too few landmarks: no chip.
        assert!(face_chip_details(&on_template(1.0, 0.0, 0.0, 0.0)[..5], 150, 0.25).is_none());
    }

    #[test]
    fn an_axis_aligned_unit_chip_copies_pixels() {
        let (w, h) = (200, 180);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = RgbImage {
            data: data.clone().into(),
            width: w,
            height: h,
        };
        let d = ChipDetails {
            rect: [10.0, 20.0, 159.0, 169.0],
            angle: 0.0,
            size: 150,
        };
        let chip = extract_chip(&img, &d);
        for (y, x) in [(0, 0), (5, 149), (149, 3), (77, 88)] {
            let s = ((20 + y) * w + 10 + x) * 3;
            assert_eq!(
                &chip[(y * 150 + x) * 3..(y * 150 + x) * 3 + 3],
                &data[s..s + 3]
            );
        }
        // Half outside the photo: black there.
        let d = ChipDetails {
            rect: [-75.0, 0.0, 74.0, 149.0],
            angle: 0.0,
            size: 150,
        };
        let chip = extract_chip(&img, &d);
        assert_eq!(&chip[..3], &[0, 0, 0]);
    }

    #[test]
    fn pyramid_down_averages_flat_images_exactly() {
        let img = RgbImage {
            data: vec![200u8; 21 * 13 * 3].into(),
            width: 21,
            height: 13,
        };
        let d = pyramid_down2(&img).unwrap();
        assert_eq!((d.width, d.height), (9, 5));
        assert!(d.data.iter().all(|&v| v == 200));
    }
}
