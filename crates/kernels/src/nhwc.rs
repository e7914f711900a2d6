//! Inference kernels on the CPU in NHWC layout (f32), shared by the teachers (Inception-v3,
//! dlib's ResNet) and dlib's face detector.
//!
//! Why: candle's CPU conv2d copies its input into patches even for 1x1 kernels, multiplies
//! image by image, then transposes the result back to NCHW; bias, ReLU, asymmetric padding
//! and the pools' padding are more full passes over memory. In NHWC a 1x1 convolution is
//! one GEMM over the whole batch with no copy, a kxk one gathers its patches (padding
//! included) once, and bias + ReLU are applied in one pass over the GEMM's output.

use crate::cpu::{f32_slice, gemm_into, kernel_to_patch_major, Mat};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// Convolution + bias (BatchNorm or dlib's affine already folded in), then ReLU when
/// `relu` is set; NHWC in and out.
pub struct ConvBiasRelu {
    pub relu: bool,
    /// `[kh*kw*c_in, c_out]`, rows in (dy, dx, channel) order to match the patches.
    kernel: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
}

impl ConvBiasRelu {
    /// From a PyTorch-layout `[c_out, c_in, kh, kw]` kernel and a `[c_out]` bias.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        dims: [usize; 4],
        stride: usize,
        pad: (usize, usize),
    ) -> Self {
        let [c_out, c_in, kh, kw] = dims;
        ConvBiasRelu {
            relu: true,
            kernel: kernel_to_patch_major(weight, dims),
            bias: bias.to_vec(),
            c_in,
            c_out,
            k: (kh, kw),
            stride,
            pad,
        }
    }

    /// Without the ReLU (a residual branch's last convolution, a detector's output).
    pub fn linear(mut self) -> Self {
        self.relu = false;
        self
    }

    fn pointwise(&self) -> bool {
        self.k == (1, 1) && self.stride == 1 && self.pad == (0, 0)
    }
}

/// Output side of a window sweep, or an error when the window does not fit.
pub fn out_size(input: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
    if input + 2 * pad < k || stride == 0 {
        candle_core::bail!("window {k} (stride {stride}, pad {pad}) does not fit {input}");
    }
    Ok((input + 2 * pad - k) / stride + 1)
}

impl CustomOp1 for ConvBiasRelu {
    fn name(&self) -> &'static str {
        "conv-bias-relu-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, h, w, c) = l.shape().dims4()?;
        if c != self.c_in {
            candle_core::bail!("conv expects {} channels, got {c}", self.c_in);
        }
        let ((kh, kw), (ph, pw), st) = (self.k, self.pad, self.stride);
        let (oh, ow) = (out_size(h, kh, st, ph)?, out_size(w, kw, st, pw)?);
        let m = n * oh * ow;
        let kk = kh * kw * c;
        let patches;
        let lhs = if self.pointwise() {
            x
        } else {
            // One row per output pixel: for each (dy, dx) its c input channels, or zeros
            // where the window hangs over the border.
            let mut cols = vec![0f32; m * kk];
            cols.par_chunks_mut(ow * kk)
                .enumerate()
                .for_each(|(row, out)| {
                    let (b, oy) = (row / oh, row % oh);
                    for dy in 0..kh {
                        let iy = (oy * st + dy) as isize - ph as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let line = (b * h + iy as usize) * w;
                        for ox in 0..ow {
                            for dx in 0..kw {
                                let ix = (ox * st + dx) as isize - pw as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let src = (line + ix as usize) * c;
                                let dst = ox * kk + (dy * kw + dx) * c;
                                out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                            }
                        }
                    }
                });
            patches = cols;
            &patches
        };
        let mut out: Vec<f32> = Vec::with_capacity(m * self.c_out);
        gemm_into(
            Mat::rows(lhs, kk),
            Mat::rows(&self.kernel, self.c_out),
            m,
            kk,
            self.c_out,
            &mut out.spare_capacity_mut()[..m * self.c_out],
        );
        // SAFETY: `gemm_into` initialised all m * c_out elements.
        unsafe { out.set_len(m * self.c_out) };
        out.par_chunks_mut(self.c_out * 64).for_each(|rows| {
            for px in rows.chunks_exact_mut(self.c_out) {
                if self.relu {
                    for (v, b) in px.iter_mut().zip(&self.bias) {
                        *v = (*v + b).max(0.0);
                    }
                } else {
                    for (v, b) in px.iter_mut().zip(&self.bias) {
                        *v += b;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, self.c_out))))
    }
}

/// torchvision's `avg_pool2d(3, stride=1, padding=1)` (padding counted: always / 9), NHWC.
pub struct AvgPool3x3Same;

impl CustomOp1 for AvgPool3x3Same {
    fn name(&self) -> &'static str {
        "avg-pool-3x3-same-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, h, w, c) = l.shape().dims4()?;
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut(w * c).enumerate().for_each(|(row, o)| {
            let (b, y) = (row / h, row % h);
            for iy in y.saturating_sub(1)..(y + 2).min(h) {
                let line = &x[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
                for ox in 0..w {
                    let dst = &mut o[ox * c..(ox + 1) * c];
                    for ix in ox.saturating_sub(1)..(ox + 2).min(w) {
                        for (d, v) in dst.iter_mut().zip(&line[ix * c..(ix + 1) * c]) {
                            *d += v;
                        }
                    }
                }
            }
            o.iter_mut().for_each(|v| *v /= 9.0);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// `max_pool2d(3, stride=2)` without padding, NHWC.
pub struct MaxPool3x3S2;

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, h, w, c) = l.shape().dims4()?;
        let (oh, ow) = (out_size(h, 3, 2, 0)?, out_size(w, 3, 2, 0)?);
        let mut out = vec![f32::NEG_INFINITY; n * oh * ow * c];
        out.par_chunks_mut(ow * c).enumerate().for_each(|(row, o)| {
            let (b, y) = (row / oh, row % oh);
            for iy in 2 * y..2 * y + 3 {
                let line = &x[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
                for ox in 0..ow {
                    let dst = &mut o[ox * c..(ox + 1) * c];
                    for ix in 2 * ox..2 * ox + 3 {
                        for (d, v) in dst.iter_mut().zip(&line[ix * c..(ix + 1) * c]) {
                            *d = d.max(*v);
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }
}

/// How a pooling window treats positions that hang over the border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The maximum of the positions inside the image.
    Max,
    /// The mean of the positions inside the image (padding left out of the divisor).
    AvgInside,
    /// The sum over the window divided by its full size (padding counted as zeros).
    AvgPadded,
}

/// A general 2-D pool (window, stride, padding per axis), NHWC.
#[derive(Debug, Clone, Copy)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub k: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "pool2d-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, h, w, c) = l.shape().dims4()?;
        let ((kh, kw), (sy, sx), (py, px)) = (self.k, self.stride, self.pad);
        let (oh, ow) = (out_size(h, kh, sy, py)?, out_size(w, kw, sx, px)?);
        let init = if self.kind == PoolKind::Max {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        let mut out = vec![init; n * oh * ow * c];
        let kind = self.kind;
        out.par_chunks_mut(ow * c).enumerate().for_each(|(row, o)| {
            let (b, oy) = (row / oh, row % oh);
            let y0 = (oy * sy) as isize - py as isize;
            let (ya, yb) = (
                y0.max(0) as usize,
                ((y0 + kh as isize).min(h as isize)).max(0) as usize,
            );
            for ox in 0..ow {
                let x0 = (ox * sx) as isize - px as isize;
                let (xa, xb) = (
                    x0.max(0) as usize,
                    ((x0 + kw as isize).min(w as isize)).max(0) as usize,
                );
                let dst = &mut o[ox * c..(ox + 1) * c];
                for iy in ya..yb {
                    let line = &x[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
                    for ix in xa..xb {
                        let src = &line[ix * c..(ix + 1) * c];
                        if kind == PoolKind::Max {
                            for (d, v) in dst.iter_mut().zip(src) {
                                *d = d.max(*v);
                            }
                        } else {
                            for (d, v) in dst.iter_mut().zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
                let count = match kind {
                    PoolKind::Max => continue,
                    PoolKind::AvgInside => ((yb - ya) * (xb - xa)).max(1),
                    PoolKind::AvgPadded => kh * kw,
                };
                let inv = 1.0 / count as f32;
                dst.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }
}
