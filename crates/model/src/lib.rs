//! The students as configurable candle modules.
//!
//! [`Arch::Study`], the study's student: `conv(4,s2)-conv(4,s2)-conv(2,s2)` with
//! TensorFlow SAME padding and ReLU, then `FC 100 -> dropout -> FC 100 -> FC 2048
//! "bottleneck" -> FC classes`. The `base` variant (the study's first notebook) has no
//! bottleneck layer. [`Arch::Deep`]: a deeper trunk ([`DEEP_TRUNK`]) under the same head.
//! Variable names (`conv1.conv.weight`, `res1.conv.weight`, `fc1.weight`,
//! `bottleneck.weight`, `classifier.weight`, ...) are what checkpoints store.

pub mod conv_cpu;

pub use conv_cpu::ConvSpec;

use candle_core::{Module, ModuleT, Result, Tensor, D};
use candle_nn::{BatchNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which student network a [`StudentConfig`] builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The study's student: three convolutions shaped by `filters`, `kernels`, `stride`.
    #[default]
    Study,
    /// [`DEEP_TRUNK`], a student with room to imitate a face descriptor; ignores
    /// `filters`, `kernels` and `stride`.
    Deep,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Study, Arch::Deep];

    /// The name used by serde, [`FromStr`] and [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            Arch::Study => "study",
            Arch::Deep => "deep",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A student architecture name that is not one of [`Arch::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown student architecture {0:?}; valid: {valid}",
    valid = Arch::ALL.map(Arch::name).join(", ")
)]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownArch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

/// One trunk convolution: its variable prefix, kernel, stride and filters. A residual one
/// adds its output (after ReLU) to its input, so it has stride 1 and keeps the width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkConv {
    pub name: &'static str,
    pub k: usize,
    pub stride: usize,
    pub filters: usize,
    pub residual: bool,
}

impl TrunkConv {
    const fn down(name: &'static str, k: usize, filters: usize) -> Self {
        TrunkConv {
            name,
            k,
            stride: 2,
            filters,
            residual: false,
        }
    }
}

/// [`Arch::Deep`]'s trunk: five stride-2 convolutions and a residual one, 75 -> 38 -> 19
/// -> 10 -> 5 -> 5 -> 3 px on its default 2x2-pooled input (150 -> ... -> 5 px unpooled).
/// Fixed rather than configured because the widths are its cost budget: 0.04 GFLOP per face
/// pooled, 0.15 unpooled ([`StudentConfig::flops`]), against 0.54 for the dlib face
/// descriptor it imitates, so the student stays worth running instead.
pub const DEEP_TRUNK: [TrunkConv; 6] = [
    TrunkConv::down("conv1", 4, 32),
    TrunkConv::down("conv2", 3, 48),
    TrunkConv::down("conv3", 3, 96),
    TrunkConv::down("conv4", 3, 128),
    TrunkConv {
        name: "res1",
        k: 3,
        stride: 1,
        filters: 128,
        residual: true,
    },
    TrunkConv::down("conv5", 3, 128),
];

/// A trunk convolution where a config puts it: its input channels and side.
struct Placed {
    conv: TrunkConv,
    c_in: usize,
    input: usize,
}

impl Placed {
    /// Output side and (before, after) SAME padding.
    fn same(&self) -> (usize, usize, usize) {
        same_padding(self.input, self.conv.k, self.conv.stride)
    }
    fn weights(&self) -> usize {
        self.conv.filters * self.c_in * self.conv.k * self.conv.k
    }
    /// Over the whole window, padding taps included (what the im2col GEMM computes).
    fn multiply_adds(&self) -> usize {
        let side = self.same().0;
        side * side * self.weights()
    }
}

/// Everything that shapes the student; saved as JSON in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StudentConfig {
    /// Input side in pixels (square, RGB).
    pub image_size: usize,
    /// Filters of the three conv layers.
    pub filters: [usize; 3],
    /// Kernel sizes of the three conv layers.
    pub kernels: [usize; 3],
    /// Stride of every conv layer.
    pub stride: usize,
    /// Widths of the two hidden FC layers.
    pub hidden: [usize; 2],
    /// Width of the bottleneck layer that mimics the teacher; `None` = the base model.
    pub bottleneck: Option<usize>,
    pub num_classes: usize,
    /// Dropout keep probability while training (the study's 0.75).
    pub keep_prob: f32,
    /// BatchNorm after each conv (not in the study; off by default).
    pub batch_norm: bool,
    /// Absent in older checkpoints, which read as the study's student.
    pub arch: Arch,
    /// Average-pool the input by this factor first (1 = none). Why: the trunk's cost grows
    /// with the pixels, and identity survives at 75 px (the deep student at 2: 0.04 GFLOP
    /// a face instead of 0.15, trained ~3.5x faster on the CPU).
    pub input_pool: usize,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            image_size: 150,
            filters: [32, 32, 8],
            kernels: [4, 4, 2],
            stride: 2,
            hidden: [100, 100],
            bottleneck: Some(2048),
            num_classes: 4,
            keep_prob: 0.75,
            batch_norm: false,
            arch: Arch::Study,
            input_pool: 1,
        }
    }
}

/// Output size and (before, after) padding of TensorFlow's SAME padding.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (out, total / 2, total - total / 2)
}

impl StudentConfig {
    /// Rejects a config no network can be built from (zero sizes, a keep probability
    /// outside (0, 1]); [`Student::new`] calls it, and CLIs call it before loading data.
    pub fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.num_classes == 0 {
            candle_core::bail!("student config needs image_size > 0 and num_classes > 0");
        }
        if self.input_pool == 0 || !self.image_size.is_multiple_of(self.input_pool) {
            candle_core::bail!(
                "input pooling {} must divide the image size {}",
                self.input_pool,
                self.image_size
            );
        }
        if self.filters.contains(&0) || self.hidden.contains(&0) {
            candle_core::bail!(
                "student filters {:?} and hidden widths {:?} must be positive",
                self.filters,
                self.hidden
            );
        }
        if self.kernels.contains(&0) || self.stride == 0 || self.bottleneck == Some(0) {
            candle_core::bail!("student kernels, stride and bottleneck width must be positive");
        }
        if !(self.keep_prob > 0.0 && self.keep_prob <= 1.0) {
            candle_core::bail!(
                "dropout keep probability must be in (0, 1], got {}",
                self.keep_prob
            );
        }
        Ok(())
    }

    /// The base model: same trunk, no bottleneck layer.
    pub fn base(mut self) -> Self {
        self.bottleneck = None;
        self
    }

    /// [`Arch::Deep`]'s defaults: the input pooled 2x2 (75 px), hidden [256, 256] (wider
    /// than the study's 100), keep probability 0.75.
    pub fn deep() -> Self {
        StudentConfig {
            arch: Arch::Deep,
            hidden: [256, 256],
            keep_prob: 0.75,
            input_pool: 2,
            ..Default::default()
        }
    }

    /// The trunk's convolutions in order, placed at this image size.
    fn trunk(&self) -> Vec<Placed> {
        let convs: Vec<TrunkConv> = match self.arch {
            Arch::Study => ["conv1", "conv2", "conv3"]
                .into_iter()
                .enumerate()
                .map(|(i, name)| TrunkConv {
                    name,
                    k: self.kernels[i],
                    stride: self.stride,
                    filters: self.filters[i],
                    residual: false,
                })
                .collect(),
            Arch::Deep => DEEP_TRUNK.to_vec(),
        };
        let (mut c_in, mut input) = (3, self.image_size / self.input_pool.max(1));
        convs
            .into_iter()
            .map(|conv| {
                let p = Placed { conv, c_in, input };
                (c_in, input) = (conv.filters, p.same().0);
                p
            })
            .collect()
    }

    /// Spatial side after each trunk convolution: 150 -> 75 -> 38 -> 19 for the study.
    pub fn feature_sizes(&self) -> Vec<usize> {
        self.trunk().iter().map(|p| p.same().0).collect()
    }
    /// Length of the flattened conv output.
    pub fn flat_features(&self) -> usize {
        let trunk = self.trunk();
        let last = trunk.last().expect("every trunk has a convolution");
        let side = last.same().0;
        side * side * last.conv.filters
    }

    /// (inputs, outputs) of the FC layers: fc1, fc2, the bottleneck if any, the classifier.
    fn fc_shapes(&self) -> Vec<(usize, usize)> {
        let mut fcs = vec![
            (self.flat_features(), self.hidden[0]),
            (self.hidden[0], self.hidden[1]),
        ];
        let last = match self.bottleneck {
            Some(b) => {
                fcs.push((self.hidden[1], b));
                b
            }
            None => self.hidden[1],
        };
        fcs.push((last, self.num_classes));
        fcs
    }

    /// Number of trainable parameters, computed from the config (BatchNorm's running
    /// statistics are not counted).
    pub fn parameter_count(&self) -> usize {
        let bn = usize::from(self.batch_norm) * 2;
        let convs: usize = self
            .trunk()
            .iter()
            .map(|p| p.weights() + bn * p.conv.filters)
            .sum();
        let fcs: usize = self.fc_shapes().iter().map(|&(i, o)| i * o + o).sum();
        convs + fcs
    }

    /// FLOPs of one forward pass for one image: multiply-adds x 2 of the convolutions
    /// (padding taps included) and FC layers, as dlib's face descriptor's 0.54 GFLOP is
    /// counted; biases, ReLUs, BatchNorm and the residual addition are left out (< 1%).
    pub fn flops(&self) -> usize {
        let convs: usize = self.trunk().iter().map(Placed::multiply_adds).sum();
        let fcs: usize = self.fc_shapes().iter().map(|&(i, o)| i * o).sum();
        2 * (convs + fcs)
    }
}

/// Train or eval: decides dropout and BatchNorm behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct StudentOutput {
    pub logits: Tensor,
    /// Bottleneck before ReLU (what the study's cosine loss used), [N,B].
    pub bottleneck_pre: Option<Tensor>,
    /// Bottleneck after ReLU, [N,B].
    pub bottleneck: Option<Tensor>,
    /// Output of the second hidden FC layer, [N,hidden].
    pub hidden: Tensor,
}

struct ConvLayer {
    /// PyTorch layout [out, in, k, k] (what checkpoints store).
    weight: Tensor,
    bn: Option<BatchNorm>,
    spec: ConvSpec,
    residual: bool,
}

impl ConvLayer {
    fn new(p: &Placed, bn: bool, vb: VarBuilder) -> Result<Self> {
        let (c_in, c_out, k) = (p.c_in, p.conv.filters, p.conv.k);
        let (_, before, after) = p.same();
        let bound = (6.0 / (c_in * k * k) as f64).sqrt();
        let weight = vb.pp("conv").get_with_hints(
            (c_out, c_in, k, k),
            "weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bn = if bn {
            Some(candle_nn::batch_norm(c_out, 1e-3, vb.pp("bn"))?)
        } else {
            None
        };
        // Without BatchNorm the ReLU directly follows the convolution: fuse it.
        let spec = ConvSpec {
            k,
            stride: p.conv.stride,
            pad: (before, after),
            relu: bn.is_none(),
        };
        Ok(ConvLayer {
            weight,
            bn,
            spec,
            residual: p.conv.residual,
        })
    }

    /// NHWC in, NHWC out.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = conv_nhwc(x, &self.weight, self.spec)?;
        let y = match &self.bn {
            Some(bn) => bn
                .forward_t(&y.permute((0, 3, 1, 2))?, mode == Mode::Train)?
                .permute((0, 2, 3, 1))?
                .relu()?,
            None => y,
        };
        if self.residual {
            x + y
        } else {
            Ok(y)
        }
    }
}

/// Convolution of an NHWC tensor with a [out, in, k, k] kernel, zero padding
/// `(before, after)` on both spatial dims and an optional ReLU (all in `spec`), as one
/// matrix product over gathered patches.
///
/// Why: candle's CPU conv2d backward (a transposed convolution for the input gradient and
/// an output-sized convolution for the kernel gradient) dominated training time. On the
/// CPU (f32) this is [`conv_cpu::ConvNhwc`], a custom op with its own backward; elsewhere
/// [`conv_nhwc_graph`], the same computation from candle ops.
pub fn conv_nhwc(x: &Tensor, weight: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let op = conv_cpu::ConvNhwc::new(spec, x.track_op() || weight.track_op());
        return x.contiguous()?.apply_op2(&weight.contiguous()?, op);
    }
    let (a, b) = spec.pad;
    let x = if a + b > 0 {
        x.pad_with_zeros(1, a, b)?.pad_with_zeros(2, a, b)?
    } else {
        x.clone()
    };
    let y = conv_nhwc_graph(&x, weight, spec.k, spec.stride)?;
    if spec.relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// [`conv_nhwc`] (input already padded) from candle ops: the patches are one `index_select` of pixel rows (whose
/// backward is one scatter-add), the rest a matmul. Runs on every device.
pub fn conv_nhwc_graph(x: &Tensor, weight: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    if c_in != c || kh != k || kw != k || stride == 0 {
        candle_core::bail!(
            "conv_nhwc: input has {c} channels, kernel {:?}, stride {stride}",
            weight.dims()
        );
    }
    if h < k || w < k {
        candle_core::bail!("conv_nhwc: {h}x{w} input is smaller than the {k}x{k} kernel");
    }
    let (oh, ow) = ((h - k) / stride + 1, (w - k) / stride + 1);
    // Row index (into the [n*h*w, c] pixel matrix) of every (patch, dy, dx).
    let mut idx = Vec::with_capacity(n * oh * ow * k * k);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for dy in 0..k {
                    let row = (b * h + oy * stride + dy) * w + ox * stride;
                    for dx in 0..k {
                        idx.push((row + dx) as u32);
                    }
                }
            }
        }
    }
    let idx = Tensor::from_vec(idx, n * oh * ow * k * k, x.device())?;
    let cols = x
        .reshape((n * h * w, c))?
        .index_select(&idx, 0)?
        .reshape((n * oh * ow, k * k * c))?;
    let wmat = weight.permute((0, 2, 3, 1))?.reshape((c_out, k * k * c))?;
    cols.matmul(&wmat.t()?)?.reshape((n, oh, ow, c_out))
}

/// The student network, either [`Arch`]: the trunk's convolutions, then the FC head.
pub struct Student {
    pub config: StudentConfig,
    convs: Vec<ConvLayer>,
    fc1: Linear,
    fc2: Linear,
    bottleneck: Option<Linear>,
    classifier: Linear,
}

impl Student {
    /// Builds the network, creating or loading variables through `vb`.
    pub fn new(config: &StudentConfig, vb: VarBuilder) -> Result<Student> {
        config.validate()?;
        let convs = config
            .trunk()
            .iter()
            .map(|p| ConvLayer::new(p, config.batch_norm, vb.pp(p.conv.name)))
            .collect::<Result<Vec<_>>>()?;
        let fc1 = candle_nn::linear(config.flat_features(), config.hidden[0], vb.pp("fc1"))?;
        let fc2 = candle_nn::linear(config.hidden[0], config.hidden[1], vb.pp("fc2"))?;
        let (bottleneck, last) = match config.bottleneck {
            Some(b) => (
                Some(candle_nn::linear(config.hidden[1], b, vb.pp("bottleneck"))?),
                b,
            ),
            None => (None, config.hidden[1]),
        };
        let classifier = candle_nn::linear(last, config.num_classes, vb.pp("classifier"))?;
        Ok(Student {
            config: config.clone(),
            convs,
            fc1,
            fc2,
            bottleneck,
            classifier,
        })
    }

    /// `x`: [N,3,H,W] (PyTorch's layout), already mean-subtracted and scaled.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<StudentOutput> {
        self.forward_impl(&x.permute((0, 2, 3, 1))?, mode, None)
    }

    /// `x`: [N,H,W,3], the layout the convolutions run in (TensorFlow's); saves the
    /// transpose of [`Student::forward`], a strided copy (5-13% of a training step here).
    pub fn forward_nhwc(&self, x: &Tensor, mode: Mode) -> Result<StudentOutput> {
        self.forward_impl(x, mode, None)
    }

    /// Training forward pass on NHWC `x` with a caller-made dropout mask [N, hidden0] of 0
    /// and 1/keep_prob, so that a seeded RNG outside candle makes training reproducible.
    pub fn forward_masked(&self, x: &Tensor, dropout_mask: &Tensor) -> Result<StudentOutput> {
        self.forward_impl(x, Mode::Train, Some(dropout_mask))
    }

    /// `x` is NHWC. Flattening the NHWC conv output matches the study's reshape.
    /// The NHWC input averaged over `input_pool` x `input_pool` blocks.
    fn pool_input(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.config.input_pool;
        if p <= 1 {
            return Ok(x.clone());
        }
        let (n, h, w, c) = x.dims4()?;
        x.reshape((n * h / p, p, w / p, p * c))?
            .sum(1)?
            .reshape((n, h / p, w / p, p, c))?
            .sum(3)?
            .affine(1.0 / (p * p) as f64, 0.0)
    }

    fn forward_impl(&self, x: &Tensor, mode: Mode, mask: Option<&Tensor>) -> Result<StudentOutput> {
        let mut h = self.pool_input(x)?;
        for c in &self.convs {
            h = c.forward(&h, mode)?;
        }
        let h = h.flatten_from(1)?;
        let h = self.fc1.forward(&h)?.relu()?;
        let h = match (mode, mask) {
            (Mode::Train, Some(m)) => h.mul(m)?,
            (Mode::Train, None) if self.config.keep_prob < 1.0 => {
                candle_nn::ops::dropout(&h, 1.0 - self.config.keep_prob)?
            }
            _ => h,
        };
        let hidden = self.fc2.forward(&h)?.relu()?;
        let (pre, post, last) = match &self.bottleneck {
            Some(b) => {
                let pre = b.forward(&hidden)?;
                let post = pre.relu()?;
                (Some(pre), Some(post.clone()), post)
            }
            None => (None, None, hidden.clone()),
        };
        let logits = self.classifier.forward(&last)?;
        Ok(StudentOutput {
            logits,
            bottleneck_pre: pre,
            bottleneck: post,
            hidden,
        })
    }

    /// Class probabilities in eval mode.
    pub fn predict_proba(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(x, Mode::Eval)?.logits, D::Minus1)
    }

    /// Variable-name prefixes of the trunk (everything before the classifier), for
    /// freezing; one list for every [`Arch`].
    pub fn trunk_prefixes() -> &'static [&'static str] {
        &[
            "conv1.",
            "conv2.",
            "conv3.",
            "conv4.",
            "res1.",
            "conv5.",
            "fc1.",
            "fc2.",
            "bottleneck.",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(cfg: &StudentConfig) -> (VarMap, Student) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let s = Student::new(cfg, vb).unwrap();
        (vm, s)
    }

    #[test]
    fn same_padding_sizes_match_tensorflow() {
        assert_eq!(same_padding(150, 4, 2), (75, 1, 1));
        assert_eq!(same_padding(75, 4, 2), (38, 1, 2));
        assert_eq!(same_padding(38, 2, 2), (19, 0, 0));
        assert_eq!(same_padding(100, 4, 2), (50, 1, 1));
        assert_eq!(same_padding(50, 4, 2), (25, 1, 1));
        assert_eq!(same_padding(25, 2, 2), (13, 0, 1));
        let c = StudentConfig::default();
        assert_eq!(c.feature_sizes(), [75, 38, 19]);
        let c100 = StudentConfig {
            image_size: 100,
            ..Default::default()
        };
        assert_eq!(c100.feature_sizes(), [50, 25, 13]);
    }

    #[test]
    fn output_shapes_at_150_and_100() {
        for (size, classes) in [(150, 4), (100, 14)] {
            let cfg = StudentConfig {
                image_size: size,
                num_classes: classes,
                ..Default::default()
            };
            let (_, s) = build(&cfg);
            let x = Tensor::randn(0f32, 1.0, (2, 3, size, size), &Device::Cpu).unwrap();
            let out = s.forward(&x, Mode::Eval).unwrap();
            assert_eq!(out.logits.dims(), &[2, classes]);
            assert_eq!(out.bottleneck_pre.unwrap().dims(), &[2, 2048]);
            assert_eq!(out.bottleneck.unwrap().dims(), &[2, 2048]);
            let (_, b) = build(&cfg.clone().base());
            let out = b.forward(&x, Mode::Eval).unwrap();
            assert_eq!(out.logits.dims(), &[2, classes]);
            assert!(out.bottleneck.is_none());
        }
    }

    #[test]
    fn parameter_counts_by_hand() {
        // convs: 3*32*16 + 32*32*16 + 32*8*4 = 1536 + 16384 + 1024 = 18944
        // fc1: 19*19*8 = 2888 -> 100: 288900; fc2: 10100; bottleneck: 100*2048+2048 = 206848
        // classifier (4): 2048*4+4 = 8196
        let cfg = StudentConfig::default();
        assert_eq!(
            cfg.parameter_count(),
            18944 + 288900 + 10100 + 206848 + 8196
        );
        let (vm, _) = build(&cfg);
        let total: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(total, cfg.parameter_count());
        // base at 100 px: fc1 13*13*8 = 1352 -> 100: 135300; classifier 100*4+4 = 404
        let base = StudentConfig {
            image_size: 100,
            ..Default::default()
        }
        .base();
        assert_eq!(base.parameter_count(), 18944 + 135300 + 10100 + 404);
        let (vm, _) = build(&base);
        let total: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(total, base.parameter_count());
    }

    #[test]
    fn nhwc_input_matches_nchw() {
        let cfg = StudentConfig {
            image_size: 32,
            ..Default::default()
        };
        let (_, s) = build(&cfg);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let a = s.forward(&x, Mode::Eval).unwrap().logits;
        let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let b = s.forward_nhwc(&nhwc, Mode::Eval).unwrap().logits;
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn configs_without_a_network_are_rejected() {
        assert!(StudentConfig::default().validate().is_ok());
        let bad = [
            StudentConfig {
                filters: [32, 0, 8],
                ..Default::default()
            },
            StudentConfig {
                hidden: [100, 0],
                ..Default::default()
            },
            StudentConfig {
                stride: 0,
                ..Default::default()
            },
            StudentConfig {
                bottleneck: Some(0),
                ..Default::default()
            },
            StudentConfig {
                keep_prob: 0.0,
                ..Default::default()
            },
            StudentConfig {
                keep_prob: 1.5,
                ..Default::default()
            },
            StudentConfig {
                num_classes: 0,
                ..Default::default()
            },
            StudentConfig {
                hidden: [256, 0],
                ..StudentConfig::deep()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
            let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
            assert!(Student::new(&cfg, vb).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn dropout_only_in_training() {
        let cfg = StudentConfig {
            image_size: 32,
            ..Default::default()
        };
        let (_, s) = build(&cfg);
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
        let a = s.forward(&x, Mode::Eval).unwrap().logits;
        let b = s.forward(&x, Mode::Eval).unwrap().logits;
        let diff = (a.clone() - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(
            diff.to_scalar::<f32>().unwrap(),
            0.0,
            "eval is deterministic"
        );
        let t1 = s.forward(&x, Mode::Train).unwrap().logits;
        let diff = (a - t1).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            diff.to_scalar::<f32>().unwrap() > 0.0,
            "train mode drops units"
        );
    }

    #[test]
    fn im2col_conv_equals_candle_conv2d() {
        let dev = Device::Cpu;
        for (size, k, s) in [(9usize, 4usize, 2usize), (10, 2, 2), (7, 3, 1), (8, 4, 2)] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, size, size), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (3, 5, k, k), &dev).unwrap();
            let want = x.conv2d(&w, 0, s, 1, 1).unwrap();
            let spec = ConvSpec {
                k,
                stride: s,
                pad: (0, 0),
                relu: false,
            };
            let got = conv_nhwc(&x.permute((0, 2, 3, 1)).unwrap(), &w, spec)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "size {size} k {k} s {s}: {diff}");
        }
    }

    /// The CPU custom op and the candle-graph version agree on values and on both
    /// gradients (input and kernel); an untracked input gets no gradient.
    #[test]
    fn conv_op_gradients_equal_the_graph_version() {
        let dev = Device::Cpu;
        let max_abs = |t: &Tensor| {
            t.abs()
                .and_then(|t| t.max_all()?.to_scalar::<f32>())
                .unwrap()
        };
        let max_diff = |a: &Tensor, b: &Tensor| max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-6);
        let cases = [
            (9usize, 5usize, 4usize, 2usize, (1usize, 2usize)),
            (10, 3, 2, 2, (0, 0)),
            (7, 4, 3, 1, (1, 1)),
            (8, 2, 4, 2, (1, 1)),
        ];
        for ((size, c, k, s, pad), relu) in cases.into_iter().flat_map(|c| [(c, false), (c, true)])
        {
            let x = candle_core::Var::randn(0f32, 1.0, (2, size, size, c), &dev).unwrap();
            let w = candle_core::Var::randn(0f32, 1.0, (6, c, k, k), &dev).unwrap();
            let spec = ConvSpec {
                k,
                stride: s,
                pad,
                relu,
            };
            let graph = |x: &Tensor| {
                let p = x.pad_with_zeros(1, pad.0, pad.1).unwrap();
                let p = p.pad_with_zeros(2, pad.0, pad.1).unwrap();
                let y = conv_nhwc_graph(&p, &w, k, s).unwrap();
                if relu {
                    y.relu().unwrap()
                } else {
                    y
                }
            };
            let probe = Tensor::randn(0f32, 1.0, graph(&x).shape(), &dev).unwrap();
            let loss = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap();
            let ya = conv_nhwc(&x, &w, spec).unwrap();
            let yb = graph(&x);
            assert!(max_diff(&ya, &yb) < 1e-5);
            if relu {
                // Some outputs are clamped, so the mask is exercised.
                let zeros = ya.eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
                assert!(zeros.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
            }
            let ga = loss(ya).backward().unwrap();
            let gb = loss(yb).backward().unwrap();
            for v in [&x, &w] {
                let (a, b) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                assert!(max_diff(a, b) < 1e-5, "size {size} k {k} s {s} relu {relu}");
            }
            // Images (no gradient wanted): only the kernel gets one.
            let img = x.as_tensor().detach();
            let g = loss(conv_nhwc(&img, &w, spec).unwrap()).backward().unwrap();
            assert!(g.get(&img).is_none() && g.get(&w).is_some());
        }
    }

    fn var_count(vm: &VarMap) -> usize {
        vm.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    fn deep(bottleneck: Option<usize>, num_classes: usize) -> StudentConfig {
        StudentConfig {
            bottleneck,
            num_classes,
            ..StudentConfig::deep()
        }
    }

    #[test]
    fn deep_output_shapes_at_150() {
        // Its default: the face pooled 2x2 first.
        let pooled = deep(Some(128), 14);
        assert_eq!(pooled.feature_sizes(), [38, 19, 10, 5, 5, 3]);
        assert_eq!(pooled.flat_features(), 3 * 3 * 128);
        let x = Tensor::randn(0f32, 1.0, (2, 150, 150, 3), &Device::Cpu).unwrap();
        let (_, s) = build(&pooled);
        assert_eq!(
            s.forward_nhwc(&x, Mode::Eval).unwrap().logits.dims(),
            &[2, 14]
        );
        let cfg = StudentConfig {
            input_pool: 1,
            ..pooled
        };
        assert_eq!(cfg.feature_sizes(), [75, 38, 19, 10, 10, 5]);
        assert_eq!(cfg.flat_features(), 5 * 5 * 128);
        let x = Tensor::randn(0f32, 1.0, (2, 150, 150, 3), &Device::Cpu).unwrap();
        let (_, s) = build(&cfg);
        let out = s.forward_nhwc(&x, Mode::Eval).unwrap();
        assert_eq!(out.logits.dims(), &[2, 14]);
        assert_eq!(out.bottleneck_pre.unwrap().dims(), &[2, 128]);
        assert_eq!(out.bottleneck.unwrap().dims(), &[2, 128]);
        assert_eq!(out.hidden.dims(), &[2, 256]);
        let (_, b) = build(&cfg.base());
        let out = b.forward_nhwc(&x, Mode::Eval).unwrap();
        assert_eq!(out.logits.dims(), &[2, 14]);
        assert!(out.bottleneck.is_none() && out.bottleneck_pre.is_none());
    }

    /// The input pooling averages 2x2 blocks, and a side it does not divide is refused.
    #[test]
    fn input_pooling_averages_blocks() {
        let cfg = StudentConfig {
            image_size: 4,
            input_pool: 2,
            ..StudentConfig::default()
        };
        let (_, s) = build(&cfg);
        // Channel c of pixel (y, x) = 100c + 10y + x: the 2x2 means are known.
        let v: Vec<f32> = (0..4 * 4 * 3)
            .map(|i| (100 * (i % 3) + 10 * (i / 12) + (i / 3) % 4) as f32)
            .collect();
        let x = Tensor::from_vec(v, (1, 4, 4, 3), &Device::Cpu).unwrap();
        let pooled = s.pool_input(&x).unwrap();
        assert_eq!(pooled.dims(), &[1, 2, 2, 3]);
        let got: Vec<f32> = pooled.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .iter()
            .flat_map(|&(y, x)| (0..3).map(move |c| (100 * c + 20 * y + 2 * x) as f32 + 5.5))
            .collect();
        assert_eq!(got, want);
        let odd = StudentConfig {
            image_size: 5,
            input_pool: 2,
            ..StudentConfig::default()
        };
        assert!(odd.validate().is_err());
    }

    #[test]
    fn parameter_counts_match_the_varmap() {
        // Deep convs: 3*32*16 + 32*48*9 + 48*96*9 + 96*128*9 + 2 * 128*128*9
        //   = 1536 + 13824 + 41472 + 110592 + 294912 = 462336
        // fc1 3200*256+256 = 819456; fc2 65792; bottleneck 256*128+128 = 32896;
        // classifier 128*14+14 = 1806
        let cfg = StudentConfig {
            input_pool: 1,
            ..deep(Some(128), 14)
        };
        assert_eq!(
            cfg.parameter_count(),
            462336 + 819456 + 65792 + 32896 + 1806
        );
        // Pooled (the default), fc1 reads 3*3*128: 1152*256+256 = 295168.
        let pooled = deep(Some(128), 14);
        assert_eq!(
            pooled.parameter_count(),
            462336 + 295168 + 65792 + 32896 + 1806
        );
        let study = StudentConfig {
            bottleneck: Some(128),
            num_classes: 14,
            ..Default::default()
        };
        for cfg in [cfg.clone(), cfg.base(), pooled, study.clone(), study.base()] {
            let (vm, _) = build(&cfg);
            assert_eq!(var_count(&vm), cfg.parameter_count(), "{cfg:?}");
        }
    }

    #[test]
    fn study_flops_by_hand() {
        // Multiply-adds (output pixels x filters x window):
        // conv1 75*75 * 32 * (4*4*3)  = 5625 * 1536 =  8_640_000
        // conv2 38*38 * 32 * (4*4*32) = 1444 * 16384 = 23_658_496
        // conv3 19*19 *  8 * (2*2*32) =  361 * 1024 =     369_664
        // fc1 2888*100 + fc2 100*100 + bottleneck 100*2048 + classifier 2048*4
        //   = 288_800 + 10_000 + 204_800 + 8_192 = 511_792
        // total 33_179_952 multiply-adds = 66_359_904 FLOPs
        assert_eq!(StudentConfig::default().flops(), 66_359_904);
        // The base model drops the bottleneck: 100*4 replaces 204_800 + 8_192.
        assert_eq!(
            StudentConfig::default().base().flops(),
            2 * (32_668_160 + 288_800 + 10_000 + 400)
        );
    }

    #[test]
    fn deep_gradients_reach_the_first_conv_through_the_residual() {
        let cfg = deep(Some(128), 14);
        let (vm, s) = build(&cfg);
        let x = Tensor::randn(0f32, 1.0, (3, 150, 150, 3), &Device::Cpu).unwrap();
        let keep = 1.0 / cfg.keep_prob as f64;
        let mask = Tensor::ones((3, cfg.hidden[0]), DType::F32, &Device::Cpu)
            .unwrap()
            .affine(keep, 0.0)
            .unwrap();
        let out = s.forward_masked(&x, &mask).unwrap();
        let labels = Tensor::new(&[0u32, 5, 13], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let vars = vm.data().lock().unwrap();
        for name in ["conv1.conv.weight", "res1.conv.weight", "conv5.conv.weight"] {
            let g = grads.get(&vars[name]).unwrap();
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
        }
    }

    #[test]
    fn trunk_prefixes_cover_all_but_the_classifier() {
        for cfg in [StudentConfig::default(), deep(Some(128), 14)] {
            let (vm, _) = build(&cfg);
            for name in vm.data().lock().unwrap().keys() {
                let trunk = Student::trunk_prefixes()
                    .iter()
                    .any(|p| name.starts_with(p));
                assert_eq!(trunk, !name.starts_with("classifier."), "{name}");
            }
        }
    }

    #[test]
    fn arch_names() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        let err = "resnet".parse::<Arch>().unwrap_err().to_string();
        assert!(
            err.contains("resnet") && err.contains("study, deep"),
            "{err}"
        );
    }

    #[test]
    fn config_json_round_trip() {
        let cfg = deep(Some(128), 14);
        let j = serde_json::to_string(&cfg).unwrap();
        assert!(j.contains(r#""arch":"deep""#), "{j}");
        assert_eq!(serde_json::from_str::<StudentConfig>(&j).unwrap(), cfg);
        // A checkpoint written before `arch` existed reads as the study's student.
        let old = r#"{"image_size": 150, "filters": [32, 32, 8], "num_classes": 14}"#;
        let cfg = serde_json::from_str::<StudentConfig>(old).unwrap();
        assert_eq!(cfg.arch, Arch::Study);
        assert_eq!(cfg.num_classes, 14);
    }

    #[test]
    fn base_config_json_round_trip() {
        let cfg = StudentConfig {
            num_classes: 14,
            ..Default::default()
        }
        .base();
        let j = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<StudentConfig>(&j).unwrap(), cfg);
    }
}
