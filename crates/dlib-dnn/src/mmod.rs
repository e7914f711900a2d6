//! dlib's CNN face detector: the max-margin object detector of dlib's
//! `examples/dnn_mmod_face_detection_ex.cpp` (`mmod_human_face_detector.dat`).
//!
//! The photo and its 5/6-scaled copies are tiled into one image
//! (`input_rgb_image_pyramid<pyramid_down<6>>`), the network runs once over it, and every
//! output above the threshold becomes the detector window centred there, mapped back
//! through the tiling to photo coordinates, then non-maximum suppressed (`loss_mmod`).
//! Rectangles are dlib's: inclusive integer corners.

use crate::chip::RgbImage;
use crate::dnn::{BoxOverlap, Input, Layer, Loss, Net};
use crate::graph::{Graph, Kernels};
use crate::{Error, NetworkError};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// dlib's `rectangle`: inclusive corners; empty when right < left or bottom < top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub left: i64,
    pub top: i64,
    pub right: i64,
    pub bottom: i64,
}

impl Rect {
    pub fn new(left: i64, top: i64, right: i64, bottom: i64) -> Rect {
        Rect {
            left,
            top,
            right,
            bottom,
        }
    }

    /// `rectangle(nc, nr)`: the `w x h` rectangle at the origin.
    pub fn sized(w: usize, h: usize) -> Rect {
        Rect::new(0, 0, w as i64 - 1, h as i64 - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.right < self.left || self.bottom < self.top
    }

    pub fn width(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.right - self.left + 1
        }
    }

    pub fn height(&self) -> i64 {
        if self.is_empty() {
            0
        } else {
            self.bottom - self.top + 1
        }
    }

    pub fn area(&self) -> i64 {
        self.width() * self.height()
    }

    pub fn intersect(&self, o: &Rect) -> Rect {
        Rect::new(
            self.left.max(o.left),
            self.top.max(o.top),
            self.right.min(o.right),
            self.bottom.min(o.bottom),
        )
    }

    /// dlib's `a + b`: the smallest rectangle holding both (not the union's area).
    pub fn bounding(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        Rect::new(
            self.left.min(o.left),
            self.top.min(o.top),
            self.right.max(o.right),
            self.bottom.max(o.bottom),
        )
    }

    fn contains(&self, x: i64, y: i64) -> bool {
        self.left <= x && x <= self.right && self.top <= y && y <= self.bottom
    }

    /// Intersection over the area of both boxes' bounding box (dlib's `test_box_overlap`).
    pub fn overlap(&self, o: &Rect) -> f64 {
        let inner = self.intersect(o).area() as f64;
        if inner == 0.0 {
            0.0
        } else {
            inner / self.bounding(o).area() as f64
        }
    }

    /// `[x, y, w, h]` in pixels.
    pub fn xywh(&self) -> [f32; 4] {
        [
            self.left as f32,
            self.top as f32,
            self.width() as f32,
            self.height() as f32,
        ]
    }
}

/// dlib's `drectangle` (corners in f64), as far as the detector needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DRect {
    l: f64,
    t: f64,
    r: f64,
    b: f64,
}

impl DRect {
    /// `operator rectangle`: each corner `lround`ed.
    fn round(&self) -> Rect {
        Rect::new(
            self.l.round() as i64,
            self.t.round() as i64,
            self.r.round() as i64,
            self.b.round() as i64,
        )
    }
}

/// One detected face.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub rect: Rect,
    /// The network's score at the window's centre; dlib's `detection_confidence`.
    pub confidence: f64,
}

/// dlib's `test_box_overlap`.
pub fn overlaps(o: &BoxOverlap, a: &Rect, b: &Rect) -> bool {
    let inner = a.intersect(b).area() as f64;
    if inner == 0.0 {
        return false;
    }
    let outer = a.bounding(b).area() as f64;
    inner / outer > o.iou
        || inner / a.area() as f64 > o.percent_covered
        || inner / b.area() as f64 > o.percent_covered
}

/// Greedy non-maximum suppression as `loss_mmod::to_label`: by confidence, highest first,
/// a detection is dropped when it overlaps one already kept.
pub fn nms(mut dets: Vec<Detection>, o: &BoxOverlap) -> Vec<Detection> {
    dets.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if !kept.iter().any(|k| overlaps(o, &k.rect, &d.rect)) {
            kept.push(d);
        }
    }
    kept
}

/// `pyramid_down<6>`'s rate, as dlib computes it.
const RATE: f64 = 5.0 / 6.0;

/// Where each level of the tiled pyramid lies, and the tiled image's size.
#[derive(Debug, Clone, PartialEq)]
pub struct PyramidLayout {
    /// Level 0 (the photo) first, each next one 5/6 of the previous; in tiled coordinates.
    pub rects: Vec<Rect>,
    pub width: usize,
    pub height: usize,
}

/// dlib's `compute_tiled_image_pyramid_details` for `pyramid_down<6>`: levels down to 5
/// rows; the first column holds the photo and the levels below it until the rest fits
/// beside them, the rest climb up the right edge. Unsigned arithmetic as dlib's.
pub fn pyramid_layout(nr: usize, nc: usize, padding: usize, outer_padding: usize) -> PyramidLayout {
    pyramid_layout_levels(nr, nc, padding, outer_padding, usize::MAX)
}

/// [`pyramid_layout`] with at most `max_levels` levels: when the face's scale is known
/// (confirming another detector's box), the small levels are wasted work.
pub fn pyramid_layout_levels(
    nr: usize,
    nc: usize,
    padding: usize,
    outer_padding: usize,
    max_levels: usize,
) -> PyramidLayout {
    if nr == 0 || nc == 0 {
        return PyramidLayout {
            rects: Vec::new(),
            width: 0,
            height: 0,
        };
    }
    let mut sizes = vec![(nc as i64, nr as i64)];
    let (mut r, mut c) = (nr as i64, nc as i64);
    loop {
        r = (RATE * r as f64).floor() as i64;
        c = (RATE * c as f64).floor() as i64;
        if r * c == 0 || r < 5 || sizes.len() >= max_levels {
            break;
        }
        sizes.push((c, r));
    }
    let pad = padding as u64;
    let (w0, h0) = (sizes[0].0 as u64, sizes[0].1 as u64);
    let mut total_height: i64 = 0;
    for &(_, h) in &sizes {
        total_height += h + padding as i64;
    }
    total_height -= 2 * padding as i64;
    let mut height: i64 = 0;
    let mut prev_width: i64 = 0;
    for (i, &(w, h)) in sizes.iter().enumerate() {
        // dlib compares these as unsigned longs: a negative right side wraps to huge (which
        // lets level 1 end the column when the rest is short). The photo itself always
        // opens the column (dlib's arithmetic breaks for photos under `padding` px wide).
        let fits_beside =
            i > 0 && (w as u64) <= w0.wrapping_sub(prev_width as u64).wrapping_sub(pad);
        let column_done = (height as u64).wrapping_sub(h0).wrapping_mul(2)
            >= (total_height as u64).wrapping_sub(h0);
        if fits_beside && column_done {
            break;
        }
        height += h + padding as i64;
        prev_width = w;
    }
    height -= padding as i64;
    let width = w0 as i64;
    let op = outer_padding as i64;
    let mut rects: Vec<Rect> = Vec::with_capacity(sizes.len());
    let mut y = op;
    let mut i = 0;
    while y < height + op && i < sizes.len() {
        let (w, h) = sizes[i];
        rects.push(Rect::new(op, y, op + w - 1, y + h - 1));
        y += h + padding as i64;
        i += 1;
    }
    y -= padding as i64;
    while i < sizes.len() {
        let (w, h) = sizes[i];
        let (px, py) = (op + width - 1, y - 1);
        let rect = Rect::new(px - (w - 1), py - (h - 1), px, py);
        if !rects[0].intersect(&rect).is_empty() {
            break;
        }
        rects.push(rect);
        y -= h + padding as i64;
        i += 1;
    }
    PyramidLayout {
        rects,
        width: (width + 2 * op) as usize,
        height: (height + 2 * op) as usize,
    }
}

/// Where one output pixel of dlib's bilinear `resize_image` samples, as its two code paths
/// compute it (both the float-plane and the RGB versions run this scheme).
enum Tap {
    /// The 4-lane f32 path: corners `(top | bottom, left | left + 1)`, weights `[tl, tr,
    /// bl, br]` in f32.
    Lane {
        top: i64,
        bottom: i64,
        left: i64,
        w: [f32; 4],
    },
    /// The scalar tail: corners `(top | bottom, left | right)`, fractions in f64.
    Tail {
        top: i64,
        bottom: i64,
        left: i64,
        right: i64,
        tb: f64,
        lr: f64,
    },
}

/// Visits every output pixel `(row, column)` of a `sw x sh -> dw x dh` resize in dlib's
/// order: positions step in f64 by rows; along a row four f32 lanes step together
/// (truncated to columns) until the fourth lane's right neighbour leaves the image, then
/// the rest of the row in f64.
fn bilinear_taps(sw: i64, sh: i64, dw: i64, dh: i64, mut visit: impl FnMut(i64, i64, Tap)) {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return;
    }
    let x_scale = (sw - 1) as f64 / (dw - 1).max(1) as f64;
    let y_scale = (sh - 1) as f64 / (dh - 1).max(1) as f64;
    let mut y = -y_scale;
    for r in 0..dh {
        y += y_scale;
        let top = y.floor() as i64;
        let bottom = (top + 1).min(sh - 1);
        let tb = y - top as f64;
        let (tb_f, inv_tb_f) = (tb as f32, (1.0 - tb) as f32);
        let x0 = -4.0 * x_scale;
        let step = (4.0 * x_scale) as f32;
        let mut lanes = [
            x0 as f32,
            (x0 + x_scale) as f32,
            (x0 + 2.0 * x_scale) as f32,
            (x0 + 3.0 * x_scale) as f32,
        ];
        let mut c: i64 = 0;
        loop {
            let mut left = [0i64; 4];
            let mut lr = [0f32; 4];
            for k in 0..4 {
                lanes[k] += step;
                left[k] = lanes[k] as i32 as i64;
                lr[k] = lanes[k] - left[k] as i32 as f32;
            }
            if left[3] + 1 >= sw {
                break;
            }
            for k in 0..4 {
                let inv_lr = 1.0 - lr[k];
                let w = [
                    inv_tb_f * inv_lr,
                    inv_tb_f * lr[k],
                    tb_f * inv_lr,
                    tb_f * lr[k],
                ];
                visit(
                    r,
                    c + k as i64,
                    Tap::Lane {
                        top,
                        bottom,
                        left: left[k],
                        w,
                    },
                );
            }
            c += 4;
        }
        let mut x = -x_scale + c as f64 * x_scale;
        while c < dw {
            x += x_scale;
            let left = x.floor() as i64;
            let right = (left + 1).min(sw - 1);
            let lr = x - left as f64;
            visit(
                r,
                c,
                Tap::Tail {
                    top,
                    bottom,
                    left,
                    right,
                    tb,
                    lr,
                },
            );
            c += 1;
        }
    }
}

/// dlib's bilinear `resize_image` of one float plane (as the CPU build of
/// `tt::resize_bilinear` runs it), within a tiled plane: lane sums in f32; the tail takes
/// its column fraction in f32 and its row fraction in f64, as dlib's mixed arithmetic does.
fn resize_plane(plane: &mut [f32], stride: usize, src: Rect, dst: Rect) {
    let at = |r: i64, c: i64| (src.top + r) as usize * stride + (src.left + c) as usize;
    let out = |r: i64, c: i64| (dst.top + r) as usize * stride + (dst.left + c) as usize;
    bilinear_taps(
        src.width(),
        src.height(),
        dst.width(),
        dst.height(),
        |r, c, tap| {
            plane[out(r, c)] = match tap {
                Tap::Lane {
                    top,
                    bottom,
                    left,
                    w,
                } => {
                    w[0] * plane[at(top, left)]
                        + w[1] * plane[at(top, left + 1)]
                        + w[2] * plane[at(bottom, left)]
                        + w[3] * plane[at(bottom, left + 1)]
                }
                Tap::Tail {
                    top,
                    bottom,
                    left,
                    right,
                    tb,
                    lr,
                } => {
                    let lr = lr as f32;
                    let (tl, tr) = (plane[at(top, left)], plane[at(top, right)]);
                    let (bl, br) = (plane[at(bottom, left)], plane[at(bottom, right)]);
                    ((1.0 - tb) * ((1.0 - lr) * tl + lr * tr) as f64
                        + tb * ((1.0 - lr) * bl + lr * br) as f64) as f32
                }
            };
        },
    );
}

/// The network's input for one photo, planar `[3, H, W]`: `(pixel - avg) / 256` at level
/// 0, zero in the gaps, each further level resized from the one before it.
pub fn pyramid_planes(img: &RgbImage, avg: [f32; 3], layout: &PyramidLayout) -> Vec<f32> {
    let (w, h) = (layout.width, layout.height);
    let mut out = vec![0f32; 3 * w * h];
    let Some(r0) = layout.rects.first() else {
        return out;
    };
    for (ch, plane) in out.chunks_exact_mut(w * h).enumerate() {
        for y in 0..img.height {
            let row = (r0.top as usize + y) * w + r0.left as usize;
            for x in 0..img.width {
                plane[row + x] = (img.data[(y * img.width + x) * 3 + ch] as f32 - avg[ch]) / 256.0;
            }
        }
        for i in 1..layout.rects.len() {
            resize_plane(plane, w, layout.rects[i - 1], layout.rects[i]);
        }
    }
    out
}

/// `tiled_pyramid_to_image`: the level whose rectangle is nearest the box's centre, then
/// `pyramid_down<6>::point_up` (`p * 6/5 + 0.3`) once per level.
fn tiled_to_image(rects: &[Rect], r: DRect) -> DRect {
    let round = |v: f64| (v + 0.5).floor() as i64;
    let (cx, cy) = (round((r.l + r.r) / 2.0), round((r.t + r.b) / 2.0));
    let mut level = 0;
    let mut best = f64::INFINITY;
    for (i, q) in rects.iter().enumerate() {
        if q.contains(cx, cy) {
            level = i;
            break;
        }
        let nx = cx.clamp(q.left, q.right);
        let ny = cy.clamp(q.top, q.bottom);
        let d = (((nx - cx) * (nx - cx) + (ny - cy) * (ny - cy)) as f64).sqrt();
        if d < best {
            best = d;
            level = i;
        }
    }
    let (ox, oy) = (rects[level].left as f64, rects[level].top as f64);
    let ratio = 6.0 / (6.0 - 1.0);
    let up = |mut v: f64| {
        for _ in 0..level {
            v = v * ratio + 0.3;
        }
        v
    };
    DRect {
        l: up(r.l - ox),
        t: up(r.t - oy),
        r: up(r.r - ox),
        b: up(r.b - oy),
    }
}

/// `loss_mmod::to_label` before suppression: each output above `threshold` is the window
/// (`w x h`) centred over input position `p * scale + offset`, mapped back through the
/// tiling to photo coordinates, with the output as its confidence.
pub fn decode(
    scan: &Scan,
    scale: f64,
    offset: f64,
    window: (f64, f64),
    threshold: f64,
) -> Vec<Detection> {
    let mut out = Vec::new();
    let (hw, hh) = ((window.0 - 1.0) / 2.0, (window.1 - 1.0) / 2.0);
    for r in 0..scan.map_height {
        for c in 0..scan.map_width {
            let score = scan.map[r * scan.map_width + c] as f64;
            if score > threshold {
                let (px, py) = (c as f64 * scale + offset, r as f64 * scale + offset);
                let rect = DRect {
                    l: px - hw,
                    t: py - hh,
                    r: px + hw,
                    b: py + hh,
                };
                out.push(Detection {
                    rect: tiled_to_image(&scan.layout.rects, rect).round(),
                    confidence: score,
                });
            }
        }
    }
    out
}

/// dlib's `pyramid_up` with `pyramid_down<2>`: the image doubled (plus dlib's extra row
/// and columns: `rect_up` of the image's rectangle), bilinear.
pub fn pyramid_up2(img: &RgbImage) -> RgbImage<'static> {
    let up_x = |v: f64| ((v + 1.25) * 2.0).round() as i64;
    let up_y = |v: f64| ((v + 0.75) * 2.0).round() as i64;
    let w = (up_x(img.width as f64 - 1.0) + 1).max(0) as usize;
    let h = (up_y(img.height as f64 - 1.0) + 1).max(0) as usize;
    resize_rgb(img, w, h)
}

/// `pyramid_down<2>::rect_down`: the inverse map of [`pyramid_up2`], `levels` times.
fn rect_down2(r: Rect, levels: usize) -> Rect {
    let (mut l, mut t, mut rr, mut b) =
        (r.left as f64, r.top as f64, r.right as f64, r.bottom as f64);
    for _ in 0..levels {
        l = l / 2.0 - 1.25;
        rr = rr / 2.0 - 1.25;
        t = t / 2.0 - 0.75;
        b = b / 2.0 - 0.75;
    }
    DRect { l, t, r: rr, b }.round()
}

/// dlib's bilinear `resize_image` for RGB bytes: lane sums in f32, the tail in f64, both
/// truncated.
pub fn resize_rgb(img: &RgbImage, w: usize, h: usize) -> RgbImage<'static> {
    let mut out = vec![0u8; w * h * 3];
    let snc = img.width as i64;
    let px = |r: i64, c: i64, ch: usize| img.data[((r * snc + c) * 3) as usize + ch];
    bilinear_taps(snc, img.height as i64, w as i64, h as i64, |r, c, tap| {
        let o = (r as usize * w + c as usize) * 3;
        for ch in 0..3 {
            out[o + ch] = match tap {
                Tap::Lane {
                    top,
                    bottom,
                    left,
                    w,
                } => {
                    (w[0] * px(top, left, ch) as f32
                        + w[1] * px(top, left + 1, ch) as f32
                        + w[2] * px(bottom, left, ch) as f32
                        + w[3] * px(bottom, left + 1, ch) as f32) as i32 as u8
                }
                Tap::Tail {
                    top,
                    bottom,
                    left,
                    right,
                    tb,
                    lr,
                } => {
                    ((1.0 - tb)
                        * ((1.0 - lr) * px(top, left, ch) as f64 + lr * px(top, right, ch) as f64)
                        + tb * ((1.0 - lr) * px(bottom, left, ch) as f64
                            + lr * px(bottom, right, ch) as f64)) as u8
                }
            };
        }
    });
    RgbImage {
        data: out.into(),
        width: w,
        height: h,
    }
}

/// The layer kinds of the detector, input side first: the strided downsampler, three
/// 5x5 layers of 45 filters, the 9x9 one-channel output.
pub fn architecture() -> Vec<&'static str> {
    let mut k = Vec::new();
    for _ in 0..6 {
        k.extend(["con", "affine", "relu"]);
    }
    k.push("con");
    k
}

/// dlib's CNN face detector, ready to run.
pub struct FaceDetector {
    graph: Graph,
    avg: [f32; 3],
    padding: usize,
    outer_padding: usize,
    window: (f64, f64),
    nms: BoxOverlap,
    /// Output position `p` lies over input position `p * scale + offset` (dlib's
    /// `output_tensor_to_input_tensor` through the conv layers).
    scale: f64,
    offset: f64,
}

/// What a run of the network saw: its input layout and output map, for tests and tools.
pub struct Scan {
    pub layout: PyramidLayout,
    /// `[out_h, out_w]` scores, row-major.
    pub map: Vec<f32>,
    pub map_height: usize,
    pub map_width: usize,
}

impl FaceDetector {
    /// Checks that `net` is dlib's CNN face detector and builds it.
    pub fn from_net(
        net: &Net,
        kernels: Kernels,
        device: &Device,
        dtype: DType,
    ) -> Result<FaceDetector, NetworkError> {
        let Input::RgbImagePyramid {
            avg,
            padding,
            outer_padding,
        } = net.input
        else {
            return Err(NetworkError::Input {
                found: format!("{:?}", net.input),
                expected: "input_rgb_image_pyramid<pyramid_down<6>>",
            });
        };
        let Loss::Mmod(opts) = &net.loss else {
            return Err(NetworkError::Loss("loss_mmod"));
        };
        let found = net.kinds();
        let want = architecture();
        if found != want {
            return Err(NetworkError::Architecture {
                net: "dlib's CNN face detector",
                detail: format!("layers {found:?}, expected {want:?}"),
            });
        }
        if opts.windows.len() != 1 || opts.use_bounding_box_regression {
            return Err(NetworkError::Windows {
                count: opts.windows.len(),
                regression: opts.use_bounding_box_regression,
            });
        }
        // Output to input, output side first: p -> p * stride - pad + k / 2.
        let (mut scale, mut offset) = (1.0, 0.0);
        for l in net.layers.iter().rev() {
            if let Layer::Con(c) = l {
                if c.stride.0 != c.stride.1 || c.pad.0 != c.pad.1 || c.nr != c.nc {
                    return Err(NetworkError::Architecture {
                        net: "a network these kernels run",
                        detail: "asymmetric conv layers are not supported".into(),
                    });
                }
                let (s, p, k) = (c.stride.0 as f64, c.pad.0 as f64, (c.nr / 2) as f64);
                offset = offset * s - p + k;
                scale *= s;
            }
        }
        let graph = Graph::build(net, &[], kernels, device, dtype)?;
        let w = &opts.windows[0];
        Ok(FaceDetector {
            graph,
            avg,
            padding,
            outer_padding,
            window: (w.width as f64, w.height as f64),
            nms: opts.overlaps_nms,
            scale,
            offset,
        })
    }

    /// Reads and builds from a `.dat` file.
    pub fn open(
        path: &Path,
        kernels: Kernels,
        device: &Device,
        dtype: DType,
    ) -> Result<FaceDetector, Error> {
        crate::open_net(path, |net| {
            FaceDetector::from_net(net, kernels, device, dtype)
        })
    }

    pub fn kernels(&self) -> Kernels {
        self.graph.kernels()
    }

    /// The smallest face (window side, pixels) found without upsampling.
    pub fn window(&self) -> (f64, f64) {
        self.window
    }

    /// Runs the network over the tiled pyramid of `img`.
    pub fn scan(&self, img: &RgbImage) -> candle_core::Result<Scan> {
        self.scan_levels(img, usize::MAX)
    }

    /// [`Self::scan`] over the first `max_levels` levels of the pyramid only.
    pub fn scan_levels(&self, img: &RgbImage, max_levels: usize) -> candle_core::Result<Scan> {
        let layout = pyramid_layout_levels(
            img.height,
            img.width,
            self.padding,
            self.outer_padding,
            max_levels,
        );
        if layout.rects.is_empty() {
            return Ok(Scan {
                layout,
                map: Vec::new(),
                map_height: 0,
                map_width: 0,
            });
        }
        let planes = pyramid_planes(img, self.avg, &layout);
        let (h, w) = (layout.height, layout.width);
        let dev = self.graph.device();
        let x = match self.graph.kernels() {
            Kernels::Candle => Tensor::from_vec(planes, (1, 3, h, w), dev)?,
            Kernels::CpuNhwc => {
                let mut hwc = vec![0f32; planes.len()];
                let n = h * w;
                for i in 0..n {
                    for c in 0..3 {
                        hwc[i * 3 + c] = planes[c * n + i];
                    }
                }
                Tensor::from_vec(hwc, (1, h, w, 3), dev)?
            }
        };
        let y = self.graph.forward(&x)?.to_dtype(DType::F32)?;
        let (mh, mw) = match self.graph.kernels() {
            Kernels::Candle => (y.dim(2)?, y.dim(3)?),
            Kernels::CpuNhwc => (y.dim(1)?, y.dim(2)?),
        };
        Ok(Scan {
            layout,
            map: y.flatten_all()?.to_vec1::<f32>()?,
            map_height: mh,
            map_width: mw,
        })
    }

    /// Every window scoring above `threshold` (dlib's `adjust_threshold`, 0 by default),
    /// in photo coordinates, before suppression.
    pub fn candidates(&self, scan: &Scan, threshold: f64) -> Vec<Detection> {
        decode(scan, self.scale, self.offset, self.window, threshold)
    }

    /// Faces in `img` as dlib's `cnn_face_detection_model_v1(img, upsample)`: the photo
    /// doubled `upsample` times first (finds faces down to 80/2^upsample px), boxes mapped
    /// back, highest confidence first.
    pub fn detect(
        &self,
        img: &RgbImage,
        upsample: usize,
        threshold: f64,
    ) -> candle_core::Result<Vec<Detection>> {
        let mut up: Option<RgbImage<'static>> = None;
        for _ in 0..upsample {
            let next = pyramid_up2(up.as_ref().unwrap_or(img));
            up = Some(next);
        }
        let scan = self.scan(up.as_ref().unwrap_or(img))?;
        self.finish(&scan, threshold, upsample)
    }

    /// Faces of sizes between the window's and `window * (6/5)^(max_levels-1)` only (no
    /// upsampling): the first levels of the pyramid.
    pub fn detect_levels(
        &self,
        img: &RgbImage,
        max_levels: usize,
        threshold: f64,
    ) -> candle_core::Result<Vec<Detection>> {
        self.finish(&self.scan_levels(img, max_levels)?, threshold, 0)
    }

    fn finish(
        &self,
        scan: &Scan,
        threshold: f64,
        upsample: usize,
    ) -> candle_core::Result<Vec<Detection>> {
        let kept = nms(self.candidates(scan, threshold), &self.nms);
        Ok(kept
            .into_iter()
            .map(|d| Detection {
                rect: rect_down2(d.rect, upsample),
                ..d
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_square_photo_tiles_without_overlap() {
        let l = pyramid_layout(300, 300, 10, 11);
        assert_eq!(l.rects[0], Rect::new(11, 11, 310, 310));
        // Sizes shrink by 5/6, floor, down to 5 rows.
        let sizes: Vec<i64> = l.rects.iter().map(|r| r.width()).collect();
        assert_eq!(&sizes[..4], &[300, 250, 208, 173]);
        assert!(sizes.iter().all(|&s| s >= 5));
        for (i, a) in l.rects.iter().enumerate() {
            assert!(a.left >= 11 && a.top >= 11, "{a:?}");
            assert!(a.right < l.width as i64 - 11 && a.bottom < l.height as i64 - 11);
            for b in &l.rects[i + 1..] {
                assert!(a.intersect(b).is_empty(), "{a:?} {b:?}");
            }
        }
        assert_eq!(l.width, 322);
    }

    #[test]
    fn a_layout_can_stop_after_a_few_levels() {
        let full = pyramid_layout(300, 300, 10, 11);
        let three = pyramid_layout_levels(300, 300, 10, 11, 3);
        assert_eq!(three.rects.len(), 3);
        assert_eq!(three.rects[..2], full.rects[..2]);
        assert!(three.height < full.height);
    }

    #[test]
    fn a_tiny_photo_is_a_single_level() {
        let l = pyramid_layout(5, 8, 10, 11);
        assert_eq!(l.rects, vec![Rect::new(11, 11, 18, 15)]);
        assert_eq!((l.width, l.height), (30, 27));
        assert!(pyramid_layout(0, 10, 10, 11).rects.is_empty());
    }

    #[test]
    fn resizing_keeps_flat_planes_flat_and_ramps_linear() {
        let l = pyramid_layout(40, 64, 10, 11);
        let img = RgbImage {
            data: (0..40 * 64)
                .flat_map(|i| {
                    let x = (i % 64) as u8;
                    [100u8, x * 2, 7]
                })
                .collect::<Vec<u8>>()
                .into(),
            width: 64,
            height: 40,
        };
        let p = pyramid_planes(&img, [100.0, 0.0, 0.0], &l);
        let n = l.width * l.height;
        for r in &l.rects {
            for y in r.top..=r.bottom {
                for x in r.left..=r.right {
                    let i = y as usize * l.width + x as usize;
                    assert_eq!(p[i], 0.0);
                    assert!((p[2 * n + i] - 7.0 / 256.0).abs() < 1e-6);
                }
            }
            // Green is linear in x: each level samples it at the mapped position.
            let sx = 63.0 / (r.width() - 1) as f64;
            let y = r.top as usize;
            for c in 0..r.width() {
                let got = p[n + y * l.width + (r.left + c) as usize] as f64 * 256.0;
                assert!((got - 2.0 * c as f64 * sx).abs() < 1e-3, "{got} at {c}");
            }
        }
        // Gaps stay zero.
        assert_eq!(p[0], 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let o = BoxOverlap {
            iou: 0.338,
            percent_covered: 1.0,
        };
        let d = |l, c| Detection {
            rect: Rect::new(l, 0, l + 79, 79),
            confidence: c,
        };
        let kept = nms(vec![d(0, 0.5), d(10, 0.9), d(200, 0.1), d(60, 0.3)], &o);
        // 10 beats 0 (heavy overlap); 60 overlaps 10 by 30/(130)*... = below the threshold.
        let lefts: Vec<i64> = kept.iter().map(|k| k.rect.left).collect();
        assert_eq!(lefts, vec![10, 60, 200]);
        assert!((d(0, 0.0).rect.overlap(&d(10, 0.0).rect) - 70.0 / 90.0).abs() < 1e-12);
    }

    #[test]
    fn boxes_map_back_through_the_tiling() {
        let l = pyramid_layout(300, 300, 10, 11);
        // A box at level 0 maps back by the outer padding only.
        let r = DRect {
            l: 50.0,
            t: 60.0,
            r: 129.0,
            b: 139.0,
        };
        assert_eq!(
            tiled_to_image(&l.rects, r).round(),
            Rect::new(39, 49, 118, 128)
        );
        // One at level 1 is scaled by 6/5 (+0.3) from that level's corner.
        let o = l.rects[1];
        let r = DRect {
            l: o.left as f64 + 10.0,
            t: o.top as f64 + 20.0,
            r: o.left as f64 + 89.0,
            b: o.top as f64 + 99.0,
        };
        let m = tiled_to_image(&l.rects, r);
        assert!((m.l - 12.3).abs() < 1e-9 && (m.b - (99.0 * 1.2 + 0.3)).abs() < 1e-9);
    }

    #[test]
    fn decoding_a_hand_made_output_map() {
        // 300x300 photo: level 0 at (11, 11). Output (c, r) lies over input 8c + 14.
        let layout = pyramid_layout(300, 300, 10, 11);
        let (mh, mw) = (20, 10);
        let mut map = vec![-1.0f32; mh * mw];
        map[3 * mw + 4] = 0.9; // input (46, 38): level 0
        map[3 * mw + 5] = 0.2; // its neighbour, suppressed
        map[2 * mw] = 0.0; // not above the threshold
        let scan = Scan {
            layout: layout.clone(),
            map,
            map_height: mh,
            map_width: mw,
        };
        let c = decode(&scan, 8.0, 14.0, (80.0, 80.0), 0.0);
        assert_eq!(c.len(), 2);
        // Centre (46, 38) -> (35, 27) in the photo; corners at +-39.5, rounded half away
        // from zero (dlib's lround): -4.5 -> -5, 74.5 -> 75.
        assert_eq!(c[0].rect, Rect::new(-5, -13, 75, 67));
        assert_eq!(c[0].confidence as f32, 0.9);
        let o = BoxOverlap {
            iou: 0.338,
            percent_covered: 1.0,
        };
        let kept = nms(c, &o);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].confidence as f32, 0.9);
        // A window centred on level 1 comes back scaled by 6/5.
        let l1 = layout.rects[1];
        let mut map = vec![-1.0f32; 200 * 60];
        let (c1, r1) = (
            ((l1.left + 40 - 14) / 8) as usize,
            ((l1.top + 40 - 14) / 8) as usize,
        );
        map[r1 * 60 + c1] = 1.0;
        let scan = Scan {
            layout,
            map,
            map_height: 200,
            map_width: 60,
        };
        let d = decode(&scan, 8.0, 14.0, (80.0, 80.0), 0.0);
        assert_eq!(d.len(), 1);
        // 79 px between the corners, times 6/5: 94.8.
        assert!((95..=96).contains(&d[0].rect.width()), "{:?}", d[0].rect);
    }

    #[test]
    fn upsampling_doubles_and_maps_back() {
        let img = RgbImage {
            data: vec![50u8; 30 * 20 * 3].into(),
            width: 30,
            height: 20,
        };
        let up = pyramid_up2(&img);
        assert_eq!((up.width, up.height), (62, 41));
        // dlib truncates: a flat 50 may come out 49 where the f32 weights sum below 1.
        assert!(up.data.iter().all(|&v| v == 50 || v == 49));
        assert!(up.data.iter().filter(|&&v| v == 50).count() * 2 > up.data.len());
        let r = Rect::new(100, 100, 179, 179);
        assert_eq!(rect_down2(r, 1), Rect::new(49, 49, 88, 89));
        assert_eq!(rect_down2(r, 0), r);
    }
}
