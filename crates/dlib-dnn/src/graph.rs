//! A dlib layer stack made runnable: convolutions with their affine layers folded in and
//! ReLUs fused, tags wired, run on the CPU in NHWC on the shared kernels
//! ([`kernels::nhwc`]) or on any device in NCHW with candle ops.

use crate::dnn::{Con, Fc, Layer, Net, Pool};
use crate::NetworkError;
use candle_core::{DType, Device, Result, Tensor};
use kernels::nhwc::{ConvBiasRelu, Pool2d, PoolKind};
use std::collections::HashMap;

/// What a tag/skip wrapper or an add_prev refers to; the file does not say, the network's
/// definition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Tag(u32),
    Skip(u32),
    AddPrev(u32),
}

enum Op {
    Conv {
        cpu: Option<ConvBiasRelu>,
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        pad: usize,
        relu: bool,
    },
    Relu,
    Pool(Pool),
    Tag(u32),
    Skip(u32),
    AddPrev {
        tag: u32,
        relu: bool,
    },
    Fc {
        weight: Tensor,
        bias: Option<Tensor>,
    },
}

/// Which kernels run the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// NHWC on the shared CPU kernels (f32, CPU only).
    CpuNhwc,
    /// NCHW on candle's ops (any device and float dtype).
    Candle,
}

impl Kernels {
    /// The fastest kernels that run on `device` in `dtype`: the NHWC CPU kernels for f32 on
    /// the CPU, candle's ops everywhere else (CUDA, half precision).
    pub fn best_for(device: &Device, dtype: DType) -> Self {
        if device.is_cpu() && dtype == DType::F32 {
            Kernels::CpuNhwc
        } else {
            Kernels::Candle
        }
    }
}

/// A runnable network.
pub struct Graph {
    ops: Vec<Op>,
    kernels: Kernels,
    device: Device,
    dtype: DType,
}

impl Graph {
    /// Builds from a parsed file and one wire per tag/skip and add_prev, in file order.
    pub fn build(
        net: &Net,
        wires: &[Wire],
        kernels: Kernels,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Graph, NetworkError> {
        if kernels == Kernels::CpuNhwc && !(device.is_cpu() && dtype == DType::F32) {
            return Err(NetworkError::CpuKernelsNeedCpuF32);
        }
        let mut ops = Vec::new();
        let mut wires = wires.iter();
        let mut next_wire = |what| wires.next().copied().ok_or(NetworkError::MissingWire(what));
        let layers = &net.layers;
        let followed_by_relu = |i: usize| matches!(layers.get(i + 1), Some(Layer::Relu));
        let unsupported = |layer, problem| Err(NetworkError::Layer { layer, problem });
        let mut i = 0;
        while i < layers.len() {
            match &layers[i] {
                Layer::Con(c) => {
                    let (op, used) = conv_op(layers, i, c, kernels, device, dtype)?;
                    ops.push(op);
                    i += used;
                }
                Layer::Affine { .. } => {
                    return unsupported(i, "an affine layer not after a con is not supported")
                }
                Layer::Relu => ops.push(Op::Relu),
                Layer::Pool(p) => {
                    if kernels == Kernels::Candle && (p.pad != (0, 0)) {
                        return unsupported(i, "padded pooling runs on the CPU kernels only");
                    }
                    ops.push(Op::Pool(p.clone()))
                }
                Layer::TagOrSkip => match next_wire("tag/skip")? {
                    Wire::Tag(t) => ops.push(Op::Tag(t)),
                    Wire::Skip(t) => ops.push(Op::Skip(t)),
                    Wire::AddPrev(_) => {
                        return unsupported(i, "an add_prev wire for a tag/skip layer")
                    }
                },
                Layer::AddPrev => {
                    let Wire::AddPrev(tag) = next_wire("add_prev")? else {
                        return unsupported(i, "a tag wire for an add_prev layer");
                    };
                    let relu = followed_by_relu(i);
                    if relu {
                        i += 1;
                    }
                    ops.push(Op::AddPrev { tag, relu });
                }
                Layer::Fc(f) => ops.push(fc_op(f, device, dtype)?),
            }
            i += 1;
        }
        if next_wire("end").is_ok() {
            return Err(NetworkError::ExtraWires);
        }
        Ok(Graph {
            ops,
            kernels,
            device: device.clone(),
            dtype,
        })
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs on `x`, `[N,H,W,C]` for [`Kernels::CpuNhwc`] or `[N,C,H,W]` for candle.
    /// Returns the last op's output: `[N,outputs]` after an fc, else a 4-D map in the
    /// graph's layout.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let nhwc = self.kernels == Kernels::CpuNhwc;
        let mut x = x.to_dtype(self.dtype)?;
        let mut tags: HashMap<u32, Tensor> = HashMap::new();
        for op in &self.ops {
            x = match op {
                Op::Conv { cpu: Some(k), .. } => x.apply_op1_no_bwd(k)?,
                Op::Conv {
                    weight,
                    bias,
                    stride,
                    pad,
                    relu,
                    ..
                } => {
                    let y = x.conv2d(weight, *pad, *stride, 1, 1)?.broadcast_add(bias)?;
                    if *relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Op::Relu => x.relu()?,
                Op::Pool(p) => pool(&x, p, nhwc)?,
                Op::Tag(t) => {
                    tags.insert(*t, x.clone());
                    x
                }
                Op::Skip(t) => tags
                    .get(t)
                    .ok_or_else(|| candle_core::Error::Msg(format!("skip{t} before any tag{t}")))?
                    .clone(),
                Op::AddPrev { tag, relu } => {
                    let other = tags.get(tag).ok_or_else(|| {
                        candle_core::Error::Msg(format!("add_prev{tag} before any tag{tag}"))
                    })?;
                    let y = add_zero_extended(&x, other)?;
                    if *relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Op::Fc { weight, bias } => {
                    let flat = if nhwc && x.rank() == 4 {
                        x.permute((0, 3, 1, 2))?.contiguous()?
                    } else {
                        x.clone()
                    };
                    let n = flat.dim(0)?;
                    let y = flat.reshape((n, ()))?.matmul(weight)?;
                    match bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }
                }
            };
        }
        Ok(x)
    }
}

/// dlib's pooling: floor output size, padding left out (max ignores it, average divides by
/// the in-bounds count); a 0x0 window is the whole input.
fn pool(x: &Tensor, p: &Pool, nhwc: bool) -> Result<Tensor> {
    let (h, w) = if nhwc {
        (x.dim(1)?, x.dim(2)?)
    } else {
        (x.dim(2)?, x.dim(3)?)
    };
    let k = if p.nr == 0 { (h, w) } else { (p.nr, p.nc) };
    if nhwc {
        let op = Pool2d {
            kind: if p.max {
                PoolKind::Max
            } else {
                PoolKind::AvgInside
            },
            k,
            stride: if p.nr == 0 { (1, 1) } else { p.stride },
            pad: p.pad,
        };
        return x.apply_op1_no_bwd(&op);
    }
    if p.nr == 0 {
        return if p.max {
            x.max_keepdim(3)?.max_keepdim(2)
        } else {
            x.mean_keepdim((2, 3))
        };
    }
    if p.max {
        x.max_pool2d_with_stride(k, p.stride)
    } else {
        x.avg_pool2d_with_stride(k, p.stride)
    }
}

/// dlib's `add(dest, a, b)`: the result has the larger of each dimension; positions outside
/// one operand count as zero (both aligned at index 0).
pub fn add_zero_extended(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (da, db) = (a.dims().to_vec(), b.dims().to_vec());
    if da == db {
        return a + b;
    }
    if da.len() != db.len() || da[0] != db[0] {
        candle_core::bail!("add_prev of {da:?} and {db:?}");
    }
    let extend = |t: &Tensor, d: &[usize]| -> Result<Tensor> {
        let mut t = t.clone();
        for dim in 1..d.len() {
            let want = da[dim].max(db[dim]);
            if d[dim] < want {
                t = t.pad_with_zeros(dim, 0, want - d[dim])?;
            }
        }
        Ok(t)
    };
    extend(a, &da)? + extend(b, &db)?
}

/// dlib's input layers: RGB pixels (HWC) to `(pixel - avg) / 256`, still HWC.
pub fn normalise_rgb(pixels: &[u8], avg: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(pixels.len());
    for p in pixels.chunks_exact(3) {
        for c in 0..3 {
            out.push((p[c] as f32 - avg[c]) / 256.0);
        }
    }
    out
}

/// Normalised HWC floats of `n` images as the graph's input, in its layout.
pub fn input_tensor(
    v: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    kernels: Kernels,
    device: &Device,
) -> Result<Tensor> {
    if v.len() != n * h * w * 3 {
        candle_core::bail!("{} values for {n} images of {h}x{w}x3", v.len());
    }
    let t = Tensor::from_vec(v, (n, h, w, 3), device)?;
    match kernels {
        Kernels::CpuNhwc => Ok(t),
        Kernels::Candle => t.permute((0, 3, 1, 2))?.contiguous(),
    }
}

/// The con at `i` with the affine (folded into its weights) and ReLU that follow it; also
/// how many of the following layers it used.
fn conv_op(
    layers: &[Layer],
    i: usize,
    c: &Con,
    kernels: Kernels,
    device: &Device,
    dtype: DType,
) -> std::result::Result<(Op, usize), NetworkError> {
    let mut w = c.weight.clone();
    let mut b = c.bias.clone().unwrap_or_else(|| vec![0.0; c.filters]);
    let mut used = 0;
    if let Some(Layer::Affine { gamma, beta }) = layers.get(i + 1) {
        if gamma.len() != c.filters {
            return Err(NetworkError::AffineChannels {
                layer: i + 1,
                affine: gamma.len(),
                con: c.filters,
            });
        }
        let per = c.in_channels * c.nr * c.nc;
        for f in 0..c.filters {
            w[f * per..(f + 1) * per]
                .iter_mut()
                .for_each(|v| *v *= gamma[f]);
            b[f] = b[f] * gamma[f] + beta[f];
        }
        used += 1;
    }
    let relu = matches!(layers.get(i + used + 1), Some(Layer::Relu));
    if relu {
        used += 1;
    }
    if c.stride.0 != c.stride.1 || c.pad.0 != c.pad.1 {
        return Err(NetworkError::Layer {
            layer: i + used,
            problem: "asymmetric conv stride/padding is not supported",
        });
    }
    let dims = [c.filters, c.in_channels, c.nr, c.nc];
    let cpu = (kernels == Kernels::CpuNhwc).then(|| {
        let op = ConvBiasRelu::new(&w, &b, dims, c.stride.0, c.pad);
        if relu {
            op
        } else {
            op.linear()
        }
    });
    let weight = Tensor::from_vec(w, dims.to_vec(), device)?.to_dtype(dtype)?;
    let bias = Tensor::from_vec(b, (1, c.filters, 1, 1), device)?.to_dtype(dtype)?;
    let op = Op::Conv {
        cpu,
        weight,
        bias,
        stride: c.stride.0,
        pad: c.pad.0,
        relu,
    };
    Ok((op, used))
}

/// A fully connected layer's weights (and bias) on the device.
fn fc_op(f: &Fc, device: &Device, dtype: DType) -> std::result::Result<Op, NetworkError> {
    let weight =
        Tensor::from_vec(f.weight.clone(), (f.inputs, f.outputs), device)?.to_dtype(dtype)?;
    let bias = match &f.bias {
        Some(b) => Some(Tensor::from_vec(b.clone(), (1, f.outputs), device)?.to_dtype(dtype)?),
        None => None,
    };
    Ok(Op::Fc { weight, bias })
}
