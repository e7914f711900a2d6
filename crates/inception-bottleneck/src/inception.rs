//! Inception-v3 (Szegedy et al. 2015) in candle, with torchvision/timm key names.
//!
//! BatchNorm runs in eval mode (eps 0.001) and is folded into the convolution at load
//! time, so each `BasicConv2d` is one convolution plus bias and ReLU. Branch average pools
//! follow torchvision: 3x3, stride 1, zero padding 1 counted in the divisor.
//!
//! Two layouts: on the CPU in f32 the network runs in NHWC on [`crate::cpu_kernels`]
//! (faster there); elsewhere (CUDA, f16/bf16) in NCHW on candle's own ops. Block outputs
//! handed out are NCHW either way.

use crate::cpu_kernels::{AvgPool3x3Same, ConvBiasRelu, MaxPool3x3S2};
use crate::weights::{Weights, WeightsError};
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

const BN_EPS: f64 = 1e-3;

/// Blocks in forward order; any of them can be the bottleneck layer.
pub const BLOCKS: &[&str] = &[
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
];

/// Channels of each block's output, for `--layer` dimension checks.
pub fn block_channels(name: &str) -> Option<usize> {
    Some(match name {
        "Conv2d_1a_3x3" | "Conv2d_2a_3x3" => 32,
        "Conv2d_2b_3x3" | "maxpool1" => 64,
        "Conv2d_3b_1x1" => 80,
        "Conv2d_4a_3x3" | "maxpool2" => 192,
        "Mixed_5b" => 256,
        "Mixed_5c" | "Mixed_5d" => 288,
        "Mixed_6a" | "Mixed_6b" | "Mixed_6c" | "Mixed_6d" | "Mixed_6e" => 768,
        "Mixed_7a" => 1280,
        "Mixed_7b" | "Mixed_7c" | "pool" => 2048,
        _ => return None,
    })
}

/// Conv + folded BatchNorm + ReLU, with per-dimension (asymmetric-kernel) padding.
struct BasicConv2d {
    imp: ConvImpl,
}

enum ConvImpl {
    /// NCHW on candle's conv2d.
    Candle {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        pad: (usize, usize),
    },
    /// NHWC CPU kernel.
    Cpu(ConvBiasRelu),
}

impl BasicConv2d {
    fn new(
        w: Weights,
        c_in: usize,
        c_out: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let conv = w.pp("conv").get(&[c_out, c_in, k.0, k.1], "weight")?;
        let bn = w.pp("bn");
        let gamma = bn.get(&[c_out], "weight")?;
        let beta = bn.get(&[c_out], "bias")?;
        let mean = bn.get(&[c_out], "running_mean")?;
        let var = bn.get(&[c_out], "running_var")?;
        // Fold in f32 or wider, then cast to the model dtype.
        let work = if w.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let scale = (gamma.to_dtype(work)? / (var.to_dtype(work)? + BN_EPS)?.sqrt()?)?;
        let bias = (beta.to_dtype(work)? - (mean.to_dtype(work)? * &scale)?)?;
        let weight = conv
            .to_dtype(work)?
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?
            .to_dtype(w.dtype)?;
        if w.cpu_kernels {
            let op = ConvBiasRelu::new(
                &weight.flatten_all()?.to_vec1::<f32>()?,
                &bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                [c_out, c_in, k.0, k.1],
                stride,
                pad,
            );
            return Ok(BasicConv2d {
                imp: ConvImpl::Cpu(op),
            });
        }
        let bias = bias.reshape((1, c_out, 1, 1))?.to_dtype(w.dtype)?;
        Ok(BasicConv2d {
            imp: ConvImpl::Candle {
                weight,
                bias,
                stride,
                pad,
            },
        })
    }
    fn sq(
        w: Weights,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        Self::new(w, c_in, c_out, (k, k), stride, (pad, pad))
    }
}

impl BasicConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias, stride, (ph, pw)) = match &self.imp {
            ConvImpl::Cpu(op) => return x.apply_op1_no_bwd(op),
            ConvImpl::Candle {
                weight,
                bias,
                stride,
                pad,
            } => (weight, bias, *stride, *pad),
        };
        let y = if ph == pw {
            x.conv2d(weight, ph, stride, 1, 1)?
        } else {
            // candle's conv padding is symmetric over both dims: pad the odd one by hand.
            let x = if ph > 0 {
                x.pad_with_zeros(2, ph, ph)?
            } else {
                x.clone()
            };
            let x = if pw > 0 {
                x.pad_with_zeros(3, pw, pw)?
            } else {
                x
            };
            x.conv2d(weight, 0, stride, 1, 1)?
        };
        y.broadcast_add(bias)?.relu()
    }
}

/// Tensor layout of a forward pass; decides the channel dimension and the pool kernels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lay {
    Nchw,
    Nhwc,
}

impl Lay {
    fn channels(self) -> usize {
        match self {
            Lay::Nchw => 1,
            Lay::Nhwc => 3,
        }
    }
}

/// torchvision's `avg_pool2d(3, stride=1, padding=1)` with the padding counted.
fn avg_pool_3x3_same(x: &Tensor, lay: Lay) -> Result<Tensor> {
    match lay {
        Lay::Nhwc => x.apply_op1_no_bwd(&AvgPool3x3Same),
        Lay::Nchw => x
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .avg_pool2d_with_stride(3, 1),
    }
}

fn max_pool_3x3_s2(x: &Tensor, lay: Lay) -> Result<Tensor> {
    match lay {
        Lay::Nhwc => x.apply_op1_no_bwd(&MaxPool3x3S2),
        Lay::Nchw => x.max_pool2d_with_stride(3, 2),
    }
}

struct InceptionA {
    b1x1: BasicConv2d,
    b5x5_1: BasicConv2d,
    b5x5_2: BasicConv2d,
    b3dbl_1: BasicConv2d,
    b3dbl_2: BasicConv2d,
    b3dbl_3: BasicConv2d,
    pool: BasicConv2d,
}

impl InceptionA {
    fn new(w: Weights, c_in: usize, pool_features: usize) -> Result<Self> {
        Ok(InceptionA {
            b1x1: BasicConv2d::sq(w.pp("branch1x1"), c_in, 64, 1, 1, 0)?,
            b5x5_1: BasicConv2d::sq(w.pp("branch5x5_1"), c_in, 48, 1, 1, 0)?,
            b5x5_2: BasicConv2d::sq(w.pp("branch5x5_2"), 48, 64, 5, 1, 2)?,
            b3dbl_1: BasicConv2d::sq(w.pp("branch3x3dbl_1"), c_in, 64, 1, 1, 0)?,
            b3dbl_2: BasicConv2d::sq(w.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
            b3dbl_3: BasicConv2d::sq(w.pp("branch3x3dbl_3"), 96, 96, 3, 1, 1)?,
            pool: BasicConv2d::sq(w.pp("branch_pool"), c_in, pool_features, 1, 1, 0)?,
        })
    }
}

impl InceptionA {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = self.b5x5_2.forward(&self.b5x5_1.forward(x)?)?;
        let c = self
            .b3dbl_3
            .forward(&self.b3dbl_2.forward(&self.b3dbl_1.forward(x)?)?)?;
        let d = self.pool.forward(&avg_pool_3x3_same(x, lay)?)?;
        Tensor::cat(&[a, b, c, d], lay.channels())
    }
}

struct InceptionB {
    b3x3: BasicConv2d,
    b3dbl_1: BasicConv2d,
    b3dbl_2: BasicConv2d,
    b3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(w: Weights, c_in: usize) -> Result<Self> {
        Ok(InceptionB {
            b3x3: BasicConv2d::sq(w.pp("branch3x3"), c_in, 384, 3, 2, 0)?,
            b3dbl_1: BasicConv2d::sq(w.pp("branch3x3dbl_1"), c_in, 64, 1, 1, 0)?,
            b3dbl_2: BasicConv2d::sq(w.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
            b3dbl_3: BasicConv2d::sq(w.pp("branch3x3dbl_3"), 96, 96, 3, 2, 0)?,
        })
    }
}

impl InceptionB {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        let a = self.b3x3.forward(x)?;
        let b = self
            .b3dbl_3
            .forward(&self.b3dbl_2.forward(&self.b3dbl_1.forward(x)?)?)?;
        let c = max_pool_3x3_s2(x, lay)?;
        Tensor::cat(&[a, b, c], lay.channels())
    }
}

struct InceptionC {
    b1x1: BasicConv2d,
    b7: [BasicConv2d; 3],
    b7dbl: [BasicConv2d; 5],
    pool: BasicConv2d,
}

impl InceptionC {
    fn new(w: Weights, c_in: usize, c7: usize) -> Result<Self> {
        let row = |name: &str, i, o| BasicConv2d::new(w.pp(name), i, o, (1, 7), 1, (0, 3));
        let col = |name: &str, i, o| BasicConv2d::new(w.pp(name), i, o, (7, 1), 1, (3, 0));
        Ok(InceptionC {
            b1x1: BasicConv2d::sq(w.pp("branch1x1"), c_in, 192, 1, 1, 0)?,
            b7: [
                BasicConv2d::sq(w.pp("branch7x7_1"), c_in, c7, 1, 1, 0)?,
                row("branch7x7_2", c7, c7)?,
                col("branch7x7_3", c7, 192)?,
            ],
            b7dbl: [
                BasicConv2d::sq(w.pp("branch7x7dbl_1"), c_in, c7, 1, 1, 0)?,
                col("branch7x7dbl_2", c7, c7)?,
                row("branch7x7dbl_3", c7, c7)?,
                col("branch7x7dbl_4", c7, c7)?,
                row("branch7x7dbl_5", c7, 192)?,
            ],
            pool: BasicConv2d::sq(w.pp("branch_pool"), c_in, 192, 1, 1, 0)?,
        })
    }
}

fn chain(convs: &[BasicConv2d], x: &Tensor) -> Result<Tensor> {
    let mut h = x.clone();
    for c in convs {
        h = c.forward(&h)?;
    }
    Ok(h)
}

impl InceptionC {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = chain(&self.b7, x)?;
        let c = chain(&self.b7dbl, x)?;
        let d = self.pool.forward(&avg_pool_3x3_same(x, lay)?)?;
        Tensor::cat(&[a, b, c, d], lay.channels())
    }
}

struct InceptionD {
    b3: [BasicConv2d; 2],
    b7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(w: Weights, c_in: usize) -> Result<Self> {
        Ok(InceptionD {
            b3: [
                BasicConv2d::sq(w.pp("branch3x3_1"), c_in, 192, 1, 1, 0)?,
                BasicConv2d::sq(w.pp("branch3x3_2"), 192, 320, 3, 2, 0)?,
            ],
            b7x3: [
                BasicConv2d::sq(w.pp("branch7x7x3_1"), c_in, 192, 1, 1, 0)?,
                BasicConv2d::new(w.pp("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
                BasicConv2d::new(w.pp("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
                BasicConv2d::sq(w.pp("branch7x7x3_4"), 192, 192, 3, 2, 0)?,
            ],
        })
    }
}

impl InceptionD {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        let a = chain(&self.b3, x)?;
        let b = chain(&self.b7x3, x)?;
        let c = max_pool_3x3_s2(x, lay)?;
        Tensor::cat(&[a, b, c], lay.channels())
    }
}

struct InceptionE {
    b1x1: BasicConv2d,
    b3_1: BasicConv2d,
    b3_2a: BasicConv2d,
    b3_2b: BasicConv2d,
    b3dbl_1: BasicConv2d,
    b3dbl_2: BasicConv2d,
    b3dbl_3a: BasicConv2d,
    b3dbl_3b: BasicConv2d,
    pool: BasicConv2d,
}

impl InceptionE {
    fn new(w: Weights, c_in: usize) -> Result<Self> {
        let row = |name: &str| BasicConv2d::new(w.pp(name), 384, 384, (1, 3), 1, (0, 1));
        let col = |name: &str| BasicConv2d::new(w.pp(name), 384, 384, (3, 1), 1, (1, 0));
        Ok(InceptionE {
            b1x1: BasicConv2d::sq(w.pp("branch1x1"), c_in, 320, 1, 1, 0)?,
            b3_1: BasicConv2d::sq(w.pp("branch3x3_1"), c_in, 384, 1, 1, 0)?,
            b3_2a: row("branch3x3_2a")?,
            b3_2b: col("branch3x3_2b")?,
            b3dbl_1: BasicConv2d::sq(w.pp("branch3x3dbl_1"), c_in, 448, 1, 1, 0)?,
            b3dbl_2: BasicConv2d::sq(w.pp("branch3x3dbl_2"), 448, 384, 3, 1, 1)?,
            b3dbl_3a: row("branch3x3dbl_3a")?,
            b3dbl_3b: col("branch3x3dbl_3b")?,
            pool: BasicConv2d::sq(w.pp("branch_pool"), c_in, 192, 1, 1, 0)?,
        })
    }
}

impl InceptionE {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let h = self.b3_1.forward(x)?;
        let b = Tensor::cat(
            &[self.b3_2a.forward(&h)?, self.b3_2b.forward(&h)?],
            lay.channels(),
        )?;
        let h = self.b3dbl_2.forward(&self.b3dbl_1.forward(x)?)?;
        let c = Tensor::cat(
            &[self.b3dbl_3a.forward(&h)?, self.b3dbl_3b.forward(&h)?],
            lay.channels(),
        )?;
        let d = self.pool.forward(&avg_pool_3x3_same(x, lay)?)?;
        Tensor::cat(&[a, b, c, d], lay.channels())
    }
}

enum Block {
    Conv(BasicConv2d),
    MaxPool,
    A(InceptionA),
    B(InceptionB),
    C(InceptionC),
    D(InceptionD),
    E(InceptionE),
}

impl Block {
    fn forward(&self, x: &Tensor, lay: Lay) -> Result<Tensor> {
        match self {
            Block::Conv(m) => m.forward(x),
            Block::MaxPool => max_pool_3x3_s2(x, lay),
            Block::A(m) => m.forward(x, lay),
            Block::B(m) => m.forward(x, lay),
            Block::C(m) => m.forward(x, lay),
            Block::D(m) => m.forward(x, lay),
            Block::E(m) => m.forward(x, lay),
        }
    }
}

/// Inception-v3 up to the chosen block (blocks after it are not even loaded).
pub struct InceptionV3 {
    blocks: Vec<(&'static str, Block)>,
    lay: Lay,
    fc: Option<(Tensor, Tensor)>,
    /// Keys in the file the model did not use (aux head, `num_batches_tracked`, ...).
    pub unused_keys: Vec<String>,
}

impl InceptionV3 {
    /// Builds the network from torchvision-named tensors. `until`: the last block to
    /// build (`None` = all, plus `fc` when the file has it). Missing keys are an error
    /// that lists them all.
    pub fn load(
        tensors: HashMap<String, Tensor>,
        until: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<InceptionV3, WeightsError> {
        let cpu = device.is_cpu() && dtype == DType::F32;
        Self::load_with(tensors, until, dtype, device, cpu)
    }

    /// [`Self::load`] with the kernel choice made by the caller: `cpu_kernels` = the NHWC
    /// CPU kernels (CPU and f32 only), otherwise candle's NCHW ops. For comparisons.
    pub fn load_with(
        tensors: HashMap<String, Tensor>,
        until: Option<&str>,
        dtype: DType,
        device: &Device,
        cpu_kernels: bool,
    ) -> std::result::Result<InceptionV3, WeightsError> {
        if cpu_kernels && !(device.is_cpu() && dtype == DType::F32) {
            return Err(WeightsError::Candle(candle_core::Error::Msg(
                "the NHWC kernels run on the CPU in f32 only".into(),
            )));
        }
        if let Some(u) = until {
            if !BLOCKS.contains(&u) {
                return Err(WeightsError::Candle(candle_core::Error::Msg(format!(
                    "unknown layer `{u}`; choose one of {} or `pool`",
                    BLOCKS.join(", ")
                ))));
            }
        }
        let mut w = Weights::new(tensors, dtype, device);
        w.cpu_kernels = cpu_kernels;
        let mut blocks = Vec::new();
        for &name in BLOCKS {
            let p = w.pp(name);
            let block = match name {
                "Conv2d_1a_3x3" => Block::Conv(BasicConv2d::sq(p, 3, 32, 3, 2, 0)?),
                "Conv2d_2a_3x3" => Block::Conv(BasicConv2d::sq(p, 32, 32, 3, 1, 0)?),
                "Conv2d_2b_3x3" => Block::Conv(BasicConv2d::sq(p, 32, 64, 3, 1, 1)?),
                "maxpool1" | "maxpool2" => Block::MaxPool,
                "Conv2d_3b_1x1" => Block::Conv(BasicConv2d::sq(p, 64, 80, 1, 1, 0)?),
                "Conv2d_4a_3x3" => Block::Conv(BasicConv2d::sq(p, 80, 192, 3, 1, 0)?),
                "Mixed_5b" => Block::A(InceptionA::new(p, 192, 32)?),
                "Mixed_5c" => Block::A(InceptionA::new(p, 256, 64)?),
                "Mixed_5d" => Block::A(InceptionA::new(p, 288, 64)?),
                "Mixed_6a" => Block::B(InceptionB::new(p, 288)?),
                "Mixed_6b" => Block::C(InceptionC::new(p, 768, 128)?),
                "Mixed_6c" | "Mixed_6d" => Block::C(InceptionC::new(p, 768, 160)?),
                "Mixed_6e" => Block::C(InceptionC::new(p, 768, 192)?),
                "Mixed_7a" => Block::D(InceptionD::new(p, 768)?),
                "Mixed_7b" => Block::E(InceptionE::new(p, 1280)?),
                "Mixed_7c" => Block::E(InceptionE::new(p, 2048)?),
                _ => unreachable!("BLOCKS lists only these"),
            };
            blocks.push((name, block));
            if Some(name) == until {
                break;
            }
        }
        let fc = if until.is_none() && w.contains("fc.weight") {
            let fcw = w.pp("fc");
            let n = fcw.get_shape("weight").map(|s| s[0]).unwrap_or(0);
            Some((fcw.get(&[n, 2048], "weight")?, fcw.get(&[n], "bias")?))
        } else {
            None
        };
        let unused_keys = w.finish()?;
        Ok(InceptionV3 {
            blocks,
            lay: if cpu_kernels { Lay::Nhwc } else { Lay::Nchw },
            fc,
            unused_keys,
        })
    }

    pub fn has_fc(&self) -> bool {
        self.fc.is_some()
    }

    /// Runs the blocks in order, handing each output (NCHW) to `sink`; stops after
    /// `until`. Returns that block's output in the model's own layout.
    fn run(&self, x: &Tensor, until: &str, mut sink: impl FnMut(&str, &Tensor)) -> Result<Tensor> {
        let mut h = match self.lay {
            Lay::Nhwc => x.permute((0, 2, 3, 1))?.contiguous()?,
            Lay::Nchw => x.clone(),
        };
        for (name, block) in &self.blocks {
            h = block.forward(&h, self.lay)?;
            sink(name, &self.nchw(&h)?);
            if *name == until {
                return Ok(h);
            }
        }
        let complete = self.blocks.last().map(|b| b.0) == Some("Mixed_7c");
        if complete && (until == "Mixed_7c" || until == "pool") {
            return Ok(h);
        }
        candle_core::bail!("layer `{until}` is not part of this loaded model")
    }

    /// Runs the blocks in order, handing each output to `sink`; stops after `until`.
    /// Input and outputs are NCHW.
    pub fn forward_blocks(
        &self,
        x: &Tensor,
        until: &str,
        sink: impl FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        self.nchw(&self.run(x, until, sink)?)?.contiguous()
    }

    /// A view of a block output in NCHW, whatever the model's layout.
    fn nchw(&self, h: &Tensor) -> Result<Tensor> {
        match self.lay {
            Lay::Nhwc => h.permute((0, 3, 1, 2)),
            Lay::Nchw => Ok(h.clone()),
        }
    }

    /// Output of Mixed_7c, [N,2048,8,8] for 299 px inputs.
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_blocks(x, "Mixed_7c", |_, _| {})
    }

    /// Global average pool of a block's output (`pool` = after Mixed_7c), [N,C].
    pub fn bottleneck(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        self.pooled(x, layer, 1)
    }

    /// A block's output averaged over a `grid` x `grid` partition of the image, [N, grid*grid*C]
    /// (cell-major: the cells row by row, each cell's C channels together). `grid` 1 is the
    /// global pool. Cells follow PyTorch's `adaptive_avg_pool2d` (cell i spans
    /// floor(i*H/g)..ceil((i+1)*H/g), so neighbours overlap when g does not divide H).
    pub fn pooled(&self, x: &Tensor, layer: &str, grid: usize) -> Result<Tensor> {
        let until = if layer == "pool" { "Mixed_7c" } else { layer };
        let h = self.run(x, until, |_, _| {})?;
        let nhwc = match self.lay {
            Lay::Nhwc => h,
            Lay::Nchw => h.permute((0, 2, 3, 1))?,
        };
        let (_, hh, ww, _) = nhwc.dims4()?;
        if grid == 0 || grid > hh.min(ww) {
            candle_core::bail!("a {grid}x{grid} grid does not fit the {hh}x{ww} output of {layer}");
        }
        let span = |i: usize, size: usize| (i * size / grid, ((i + 1) * size).div_ceil(grid));
        let mut cells = Vec::with_capacity(grid * grid);
        for gy in 0..grid {
            let (y0, y1) = span(gy, hh);
            for gx in 0..grid {
                let (x0, x1) = span(gx, ww);
                let cell = nhwc.narrow(1, y0, y1 - y0)?.narrow(2, x0, x1 - x0)?;
                cells.push(cell.mean(1)?.mean(1)?);
            }
        }
        Tensor::cat(&cells, 1)
    }

    /// Class logits [N,classes]; needs `fc` in the checkpoint.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let Some((w, b)) = &self.fc else {
            candle_core::bail!("this checkpoint has no `fc` head");
        };
        let pooled = self.bottleneck(x, "pool")?;
        pooled.matmul(&w.t()?)?.broadcast_add(b)
    }
}
