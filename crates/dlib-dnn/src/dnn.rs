//! dlib's DNN serialization (`dlib::serialize(net)`): the generic layer stack, the layer
//! kinds of dlib's face descriptor ResNet and CNN face detector, their inputs and losses.
//!
//! The file is the loss layer, then a run of wrapper versions (outermost layer first),
//! then the input layer, then the layer bodies innermost (next to the input) first. Each
//! `add_layer` wrapper writes its version, recurses, then writes its layer's body and
//! training state (three bools and three empty tensors). Tag and skip wrappers write only
//! a version (1): their IDs, and which tag an `add_prev` adds, live in the C++ types, not
//! in the file, so a network's builder supplies them ([`crate::graph`]).

use crate::serialize::{FormatError, Reader};

/// A convolution (`con_`): cross-correlation, symmetric zero padding, with a bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Con {
    pub filters: usize,
    pub in_channels: usize,
    pub nr: usize,
    pub nc: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    /// `[filters, in_channels, nr, nc]`, row-major (dlib's and PyTorch's order).
    pub weight: Vec<f32>,
    /// `[filters]`, or None when the file says `use_bias = false`.
    pub bias: Option<Vec<f32>>,
}

/// A pooling layer; `nr == nc == 0` is dlib's `*_pool_everything` (the whole input).
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub max: bool,
    pub nr: usize,
    pub nc: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

/// A fully connected layer: `out = x · W (+ b)`, `x` flattened in (k, r, c) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fc {
    pub inputs: usize,
    pub outputs: usize,
    /// `[inputs, outputs]`, row-major.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// One layer of the stack, input side first.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Con(Con),
    /// Per-channel `gamma * x + beta` (dlib's `affine_` in CONV mode, or a `bn_con`
    /// converted with its running statistics, as dlib does when it loads one as affine).
    Affine {
        gamma: Vec<f32>,
        beta: Vec<f32>,
    },
    Relu,
    Pool(Pool),
    /// Adds the output of a tagged layer (zero-extending both to the larger shape).
    AddPrev,
    Fc(Fc),
    /// A tag or a skip wrapper: the file cannot tell which, nor its ID.
    TagOrSkip,
}

impl Layer {
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Con(_) => "con",
            Layer::Affine { .. } => "affine",
            Layer::Relu => "relu",
            Layer::Pool(p) if p.max => "max_pool",
            Layer::Pool(_) => "avg_pool",
            Layer::AddPrev => "add_prev",
            Layer::Fc(_) => "fc",
            Layer::TagOrSkip => "tag/skip",
        }
    }
}

/// The input layer: how pixels become the network's tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `input_rgb_image_sized<NR, NC>`: planar R, G, B, `(pixel - avg) / 256`.
    RgbImageSized { avg: [f32; 3], nr: usize, nc: usize },
    /// `input_rgb_image_pyramid<pyramid_down<6>>`: the photo and its 5/6 downscales tiled
    /// into one image.
    RgbImagePyramid {
        avg: [f32; 3],
        padding: usize,
        outer_padding: usize,
    },
}

/// A detector window of `loss_mmod`.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorWindow {
    pub width: usize,
    pub height: usize,
    pub label: String,
}

/// dlib's `test_box_overlap`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxOverlap {
    pub iou: f64,
    pub percent_covered: f64,
}

/// `mmod_options`, the part that inference needs and the rest for the record.
#[derive(Debug, Clone, PartialEq)]
pub struct MmodOptions {
    pub windows: Vec<DetectorWindow>,
    pub loss_per_false_alarm: f64,
    pub loss_per_missed_target: f64,
    pub truth_match_iou_threshold: f64,
    pub overlaps_nms: BoxOverlap,
    pub overlaps_ignore: BoxOverlap,
    pub use_bounding_box_regression: bool,
    pub bbr_lambda: f64,
}

/// The loss layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// `loss_metric`: the output vector is the descriptor.
    Metric {
        margin: f32,
        dist_thresh: f32,
    },
    Mmod(MmodOptions),
}

/// A parsed network file.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub input: Input,
    /// Input side first.
    pub layers: Vec<Layer>,
    pub loss: Loss,
}

impl Net {
    /// Parses a whole file; trailing bytes are an error.
    pub fn from_bytes(buf: &[u8]) -> Result<Net, FormatError> {
        let mut r = Reader::new(buf);
        r.expect_int("add_loss_layer version", 1)?;
        let loss = loss(&mut r)?;
        // Wrapper versions, outermost first, until the input layer's name.
        let mut chain = Vec::new();
        loop {
            if peek_is_string(&r) {
                break;
            }
            let at = r.pos();
            // 1: tag/skip, 2: a layer, 3: the layer over the input.
            let v = r.int_in("layer wrapper version", 1, 3)?;
            if chain.len() > 100_000 {
                return Err(r.err("more than 100000 layers"));
            }
            chain.push((at, v));
        }
        match chain.last() {
            Some((_, 3)) => {}
            Some(&(at, v)) => {
                return Err(r.err_at(
                    at,
                    format!("the layer next to the input has wrapper version {v}, expected 3 (an add_layer over the input)"),
                ))
            }
            None => return Err(r.err("no layers between the loss and the input")),
        }
        let input = input(&mut r)?;
        let mut layers = Vec::with_capacity(chain.len());
        for (i, &(at, v)) in chain.iter().rev().enumerate() {
            if v == 1 {
                layers.push(Layer::TagOrSkip);
                continue;
            }
            if v == 3 && i != 0 {
                return Err(r.err_at(at, "wrapper version 3 above the first layer"));
            }
            layers.push(body(&mut r)?);
            // Training state: three bools, x_grad, cached_output, params_grad/grad_final.
            for _ in 0..3 {
                r.bool()?;
            }
            for _ in 0..3 {
                tensor(&mut r)?;
            }
            if v == 3 {
                r.uint("sample_expansion_factor", 1 << 20)?;
            }
        }
        if r.remaining() != 0 {
            return Err(r.err(format!(
                "{} bytes after the end of the network",
                r.remaining()
            )));
        }
        Ok(Net {
            input,
            layers,
            loss,
        })
    }

    /// Reads a `.dat` file; errors name the file, the byte offset and what was expected.
    pub fn open(path: &std::path::Path) -> Result<Net, crate::Error> {
        let bytes = crate::read_file(path)?;
        Net::from_bytes(&bytes).map_err(|e| crate::Error::Format {
            path: path.to_path_buf(),
            offset: e.offset,
            what: e.what,
        })
    }

    /// Kinds in order, e.g. for "another network" messages and tests.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.layers.iter().map(Layer::kind).collect()
    }
}

/// Whether the next item looks like a string: an integer length followed by a printable
/// name starting with "input" (wrapper versions are 1..3, never followed by letters).
fn peek_is_string(r: &Reader) -> bool {
    let mut probe = Reader::new(&r.buffer()[r.pos()..]);
    let Ok(n) = probe.int() else { return false };
    if !(5..=64).contains(&n) {
        return false;
    }
    probe
        .bytes(n as usize, "name")
        .map(|b| b.starts_with(b"input"))
        .unwrap_or(false)
}

/// A `resizable_tensor`: version 2, n, k, nr, nc, then raw little-endian f32.
/// Returns (shape, values).
fn tensor(r: &mut Reader) -> Result<([usize; 4], Vec<f32>), FormatError> {
    r.expect_int("tensor version", 2)?;
    let mut dims = [0usize; 4];
    for d in &mut dims {
        *d = r.uint("tensor dimension", 1 << 31)?;
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= r.remaining() / 4)
        .ok_or_else(|| r.err(format!("tensor {dims:?} runs past the end of file")))?;
    Ok((dims, r.f32s_le(n, "tensor data")?))
}

/// An `alias_tensor`: version 1 and a shape, no data.
fn alias(r: &mut Reader) -> Result<[usize; 4], FormatError> {
    r.expect_int("alias_tensor version", 1)?;
    let mut dims = [0usize; 4];
    for d in &mut dims {
        *d = r.uint("alias dimension", 1 << 31)?;
    }
    Ok(dims)
}

/// A window's geometry as con_ and the pools store it: nr, nc, strides, paddings.
#[allow(clippy::type_complexity)]
fn window(r: &mut Reader) -> Result<(usize, usize, (usize, usize), (usize, usize)), FormatError> {
    Ok((
        r.uint("nr", 1 << 16)?,
        r.uint("nc", 1 << 16)?,
        (r.uint("stride_y", 1 << 16)?, r.uint("stride_x", 1 << 16)?),
        (r.uint("padding_y", 1 << 16)?, r.uint("padding_x", 1 << 16)?),
    ))
}

fn doubles(r: &mut Reader, n: usize) -> Result<Vec<f64>, FormatError> {
    (0..n).map(|_| r.double()).collect()
}

/// One layer's record: its name, then the fields its kind serialises.
fn body(r: &mut Reader) -> Result<Layer, FormatError> {
    let at = r.pos();
    let name = r
        .string()
        .map_err(|e| r.err_at(at, format!("expected a layer name ({})", e.what)))?;
    match name.as_str() {
        "con_4" | "con_5" | "con_6" => con(r, at, &name),
        "affine_" | "affine_2" => affine(r, at, &name),
        "bn_con2" => bn_con(r, at),
        "relu_" | "relu_2" => {
            if name == "relu_2" {
                r.bool()?;
            }
            Ok(Layer::Relu)
        }
        "max_pool_2" | "avg_pool_2" => pool(r, at, &name),
        "add_prev_" => Ok(Layer::AddPrev),
        "fc_2" | "fc_3" => fc(r, at, &name),
        other => Err(r.err_at(
            at,
            format!("layer \"{other}\" is not a kind this reader knows (con, affine, bn_con, relu, max_pool, avg_pool, add_prev, fc)"),
        )),
    }
}

/// `con_`: filters, window, stride, padding; `con_6` adds a fused-ReLU flag.
fn con(r: &mut Reader, at: usize, name: &str) -> Result<Layer, FormatError> {
    let (_, params) = tensor(r)?;
    let filters = r.uint("num_filters", 1 << 20)?;
    let (nr, nc, (sy, sx), (py, px)) = window(r)?;
    let fdims = alias(r)?;
    let bdims = alias(r)?;
    doubles(r, 4)?;
    let use_bias = if name != "con_4" { r.bool()? } else { true };
    if name == "con_6" && r.bool()? {
        return Err(r.err_at(at, "con_6 with a fused ReLU is not supported"));
    }
    let k = fdims[1];
    if fdims != [filters, k, nr, nc] || sy == 0 || sx == 0 {
        return Err(r.err_at(
            at,
            format!("con: filter shape {fdims:?} disagrees with {filters} filters of {nr}x{nc}"),
        ));
    }
    let nw = filters * k * nr * nc;
    let nb = if use_bias { filters } else { 0 };
    if params.len() != nw + nb || (use_bias && bdims[1] != filters) {
        return Err(r.err_at(
            at,
            format!("con: {} parameters, expected {}", params.len(), nw + nb),
        ));
    }
    Ok(Layer::Con(Con {
        filters,
        in_channels: k,
        nr,
        nc,
        stride: (sy, sx),
        pad: (py, px),
        weight: params[..nw].to_vec(),
        bias: use_bias.then(|| params[nw..].to_vec()),
    }))
}

/// `affine_`: per-channel gamma and beta (CONV mode only).
fn affine(r: &mut Reader, at: usize, name: &str) -> Result<Layer, FormatError> {
    let (_, params) = tensor(r)?;
    let g = alias(r)?;
    let b = alias(r)?;
    let mode = r.int()?;
    if name == "affine_2" {
        r.bool()?;
    }
    let k = g[1];
    if mode != 0 || g != [1, k, 1, 1] || b != g || params.len() != 2 * k {
        return Err(r.err_at(at, format!("affine: only CONV mode with per-channel parameters is supported (mode {mode}, gamma {g:?})")));
    }
    Ok(Layer::Affine {
        gamma: params[..k].to_vec(),
        beta: params[k..].to_vec(),
    })
}

/// `bn_con`: batch norm, folded into an affine layer from its running statistics.
fn bn_con(r: &mut Reader, at: usize) -> Result<Layer, FormatError> {
    let (_, params) = tensor(r)?;
    let g = alias(r)?;
    alias(r)?;
    let k = g[1];
    let (_, _means) = tensor(r)?;
    let (_, _invstds) = tensor(r)?;
    let (_, rmean) = tensor(r)?;
    let (_, rvar) = tensor(r)?;
    r.uint("num_updates", u64::MAX)?;
    r.uint("running_stats_window_size", u64::MAX)?;
    let d = doubles(r, 5)?;
    let eps = d[4];
    if params.len() != 2 * k || rmean.len() != k || rvar.len() != k {
        return Err(r.err_at(at, "bn_con: parameter sizes disagree"));
    }
    // As dlib converts a bn_ into an affine_ at load: g = gamma / sqrt(var + eps).
    let mut gamma = Vec::with_capacity(k);
    let mut beta = Vec::with_capacity(k);
    for c in 0..k {
        let gc = params[c] / (rvar[c] + eps as f32).sqrt();
        gamma.push(gc);
        beta.push(params[k + c] - gc * rmean[c]);
    }
    Ok(Layer::Affine { gamma, beta })
}

/// `max_pool_` / `avg_pool_`: window, stride, padding (a zero window is global).
fn pool(r: &mut Reader, at: usize, name: &str) -> Result<Layer, FormatError> {
    let (nr, nc, (sy, sx), (py, px)) = window(r)?;
    if sy == 0 || sx == 0 || (nr == 0) != (nc == 0) {
        return Err(r.err_at(at, "pool: zero stride or half-global window"));
    }
    Ok(Layer::Pool(Pool {
        max: name == "max_pool_2",
        nr,
        nc,
        stride: (sy, sx),
        pad: (py, px),
    }))
}

/// `fc_`: outputs, inputs, weights and (by its bias mode) a bias.
fn fc(r: &mut Reader, at: usize, name: &str) -> Result<Layer, FormatError> {
    let outputs = r.uint("num_outputs", 1 << 24)?;
    let inputs = r.uint("num_inputs", 1 << 24)?;
    let (_, params) = tensor(r)?;
    alias(r)?;
    alias(r)?;
    let mode = r.int()?;
    doubles(r, 4)?;
    let mut has_bias = mode == 0;
    if name == "fc_3" {
        has_bias &= r.bool()?;
    }
    let nw = inputs * outputs;
    if !(0..=1).contains(&mode) || params.len() != nw + if has_bias { outputs } else { 0 } {
        return Err(r.err_at(
            at,
            format!(
                "fc: {} parameters for {inputs}x{outputs} (bias mode {mode})",
                params.len()
            ),
        ));
    }
    Ok(Layer::Fc(Fc {
        inputs,
        outputs,
        weight: params[..nw].to_vec(),
        bias: has_bias.then(|| params[nw..].to_vec()),
    }))
}

fn input(r: &mut Reader) -> Result<Input, FormatError> {
    let at = r.pos();
    let name = r.string()?;
    let mut avg = [0f32; 3];
    match name.as_str() {
        "input_rgb_image_sized" => {
            for a in &mut avg {
                *a = r.float()?;
            }
            let nr = r.uint("NR", 1 << 16)?;
            let nc = r.uint("NC", 1 << 16)?;
            Ok(Input::RgbImageSized { avg, nr, nc })
        }
        "input_rgb_image_pyramid" | "input_rgb_image_pyramid2" => {
            for a in &mut avg {
                *a = r.float()?;
            }
            let (padding, outer_padding) = if name.ends_with('2') {
                (r.uint("pyramid_padding", 1 << 16)?, r.uint("pyramid_outer_padding", 1 << 16)?)
            } else {
                // The first version stored no paddings: dlib's defaults.
                (10, 11)
            };
            Ok(Input::RgbImagePyramid {
                avg,
                padding,
                outer_padding,
            })
        }
        other => Err(r.err_at(at, format!("input layer \"{other}\", expected input_rgb_image_sized or input_rgb_image_pyramid"))),
    }
}

fn overlap(r: &mut Reader) -> Result<BoxOverlap, FormatError> {
    Ok(BoxOverlap {
        iou: r.double()?,
        percent_covered: r.double()?,
    })
}

fn loss(r: &mut Reader) -> Result<Loss, FormatError> {
    let at = r.pos();
    let name = r.string()?;
    match name.as_str() {
        "loss_metric_" => Ok(Loss::Metric {
            margin: 0.1,
            dist_thresh: 0.75,
        }),
        "loss_metric_2" => Ok(Loss::Metric {
            margin: r.float()?,
            dist_thresh: r.float()?,
        }),
        "loss_mmod_" => {
            let version = r.int_in("mmod_options version", 1, 4)?;
            let windows = if version == 1 {
                vec![DetectorWindow {
                    width: r.uint("window width", 1 << 16)?,
                    height: r.uint("window height", 1 << 16)?,
                    label: String::new(),
                }]
            } else {
                let n = r.uint("window count", 1 << 12)?;
                let mut w = Vec::with_capacity(n);
                for _ in 0..n {
                    let v = r.int_in("detector window version", 1, 2)?;
                    let width = r.uint("window width", 1 << 16)?;
                    let height = r.uint("window height", 1 << 16)?;
                    let label = if v == 2 { r.string()? } else { String::new() };
                    w.push(DetectorWindow {
                        width,
                        height,
                        label,
                    });
                }
                w
            };
            let loss_per_false_alarm = r.double()?;
            let loss_per_missed_target = r.double()?;
            let truth_match_iou_threshold = r.double()?;
            let overlaps_nms = overlap(r)?;
            let overlaps_ignore = overlap(r)?;
            if version >= 3 {
                r.bytes(1, "assume_image_pyramid")?;
            }
            let (use_bounding_box_regression, bbr_lambda) = if version >= 4 {
                (r.bool()?, r.double()?)
            } else {
                (false, 100.0)
            };
            if windows.is_empty() || windows.iter().any(|w| w.width == 0 || w.height == 0) {
                return Err(r.err_at(at, "loss_mmod without usable detector windows"));
            }
            Ok(Loss::Mmod(MmodOptions {
                windows,
                loss_per_false_alarm,
                loss_per_missed_target,
                truth_match_iou_threshold,
                overlaps_nms,
                overlaps_ignore,
                use_bounding_box_regression,
                bbr_lambda,
            }))
        }
        other => Err(r.err_at(
            at,
            format!("loss layer \"{other}\", expected loss_metric or loss_mmod"),
        )),
    }
}

/// Writers for tests that build small network files (every layer kind this reader knows).
pub mod write {
    use crate::serialize::write::*;

    pub fn tensor(out: &mut Vec<u8>, dims: [usize; 4], v: &[f32]) {
        int(out, 2);
        for d in dims {
            int(out, d as i64);
        }
        f32s_le(out, v);
    }

    pub fn alias(out: &mut Vec<u8>, dims: [usize; 4]) {
        int(out, 1);
        for d in dims {
            int(out, d as i64);
        }
    }

    /// The training state after a layer body (`first`: the layer over the input).
    pub fn trailer(out: &mut Vec<u8>, first: bool) {
        for _ in 0..3 {
            bool(out, true);
        }
        for _ in 0..3 {
            tensor(out, [0; 4], &[]);
        }
        if first {
            int(out, 1);
        }
    }

    /// A `con_4` layer (square window, equal strides and paddings).
    pub fn con(out: &mut Vec<u8>, c: &crate::dnn::Con) {
        string(out, "con_4");
        let mut p = c.weight.clone();
        p.extend_from_slice(c.bias.as_deref().unwrap_or(&[]));
        tensor(out, [p.len(), 1, 1, 1], &p);
        for v in [
            c.filters, c.nr, c.nc, c.stride.0, c.stride.1, c.pad.0, c.pad.1,
        ] {
            int(out, v as i64);
        }
        alias(out, [c.filters, c.in_channels, c.nr, c.nc]);
        alias(out, [1, c.filters, 1, 1]);
        for _ in 0..4 {
            double(out, 1.0);
        }
    }

    pub fn affine(out: &mut Vec<u8>, gamma: &[f32], beta: &[f32]) {
        string(out, "affine_");
        let mut p = gamma.to_vec();
        p.extend_from_slice(beta);
        tensor(out, [p.len(), 1, 1, 1], &p);
        alias(out, [1, gamma.len(), 1, 1]);
        alias(out, [1, gamma.len(), 1, 1]);
        int(out, 0);
    }

    pub fn pool(out: &mut Vec<u8>, max: bool, size: usize, stride: usize, pad: usize) {
        string(out, if max { "max_pool_2" } else { "avg_pool_2" });
        for v in [size, size, stride, stride, pad, pad] {
            int(out, v as i64);
        }
    }

    pub fn fc_no_bias(out: &mut Vec<u8>, inputs: usize, outputs: usize, w: &[f32]) {
        string(out, "fc_2");
        int(out, outputs as i64);
        int(out, inputs as i64);
        tensor(out, [inputs, outputs, 1, 1], w);
        alias(out, [inputs, outputs, 1, 1]);
        alias(out, [0; 4]);
        int(out, 1);
        for _ in 0..4 {
            double(out, 1.0);
        }
    }
}
