//! The student's convolution on the CPU as one custom op with its own backward.
//!
//! Why: built from candle ops (`index_select` patches, `matmul`), every intermediate of
//! the graph gets a gradient buffer that candle zero-fills and then adds into; for the
//! patch matrix (16x the input for a 4x4 kernel) those passes cost more than the matrix
//! products. Here the patches exist only inside the op: forward is im2col + one GEMM (the
//! patches are kept for the kernel gradient), backward reduces the kernel gradient in fixed
//! blocks and scatters each image's patch gradient straight back to its pixels (col2im),
//! in parallel over images, deterministically.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use kernels::cpu::{
    f32_slice as slice, gemm, gemm_at_b, gemm_one_thread, kernel_from_patch_major,
    kernel_to_patch_major, Mat,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// NHWC input convolved with a PyTorch-layout `[out, in, k, k]` kernel, with zero padding
/// `pad = (before, after)` on both spatial dimensions (TensorFlow's SAME is asymmetric),
/// and optionally a ReLU fused in.
///
/// Why fuse the ReLU: candle's ReLU backward (compare, cast, multiply) plus the gradient
/// buffers of the extra node made ~8 passes over the largest activation of the student;
/// fused, it is one clamp forward and one mask pass backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub k: usize,
    pub stride: usize,
    pub pad: (usize, usize),
    pub relu: bool,
}

/// The op: a [`ConvSpec`] plus the patch matrix of the forward pass, kept for the kernel
/// gradient when a backward pass may follow (building it again cost as much memory
/// traffic as the forward's own im2col).
pub struct ConvNhwc {
    spec: ConvSpec,
    keep_cols: bool,
    cols: std::sync::Mutex<Option<Vec<f32>>>,
}

impl ConvNhwc {
    /// `keep_cols`: hold the forward's patches until backward (or until the output is
    /// dropped); set it when the inputs track gradients.
    pub fn new(spec: ConvSpec, keep_cols: bool) -> Self {
        ConvNhwc {
            spec,
            keep_cols,
            cols: std::sync::Mutex::new(None),
        }
    }
}

struct Geometry {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
}

impl ConvSpec {
    fn geometry(&self, x: &Layout, w: &Layout) -> Result<(Geometry, usize)> {
        let (n, h, wd, c) = x.shape().dims4()?;
        let (c_out, c_in, kh, kw) = w.shape().dims4()?;
        let k = self.k;
        let (a, b) = self.pad;
        if c_in != c || kh != k || kw != k || self.stride == 0 || h + a + b < k || wd + a + b < k {
            candle_core::bail!(
                "conv: input {:?}, kernel {:?}, stride {}",
                x.shape(),
                w.shape(),
                self.stride
            );
        }
        let g = Geometry {
            n,
            h,
            w: wd,
            c,
            oh: (h + a + b - k) / self.stride + 1,
            ow: (wd + a + b - k) / self.stride + 1,
        };
        Ok((g, c_out))
    }

    /// Input column of output column `ox`, tap `dx` (None in the padding).
    fn source(&self, o: usize, d: usize, size: usize) -> Option<usize> {
        let i = (o * self.stride + d).checked_sub(self.pad.0)?;
        (i < size).then_some(i)
    }

    /// First input column of output column `o` when its whole window lies inside.
    fn window(&self, o: usize, size: usize) -> Option<usize> {
        let i = (o * self.stride).checked_sub(self.pad.0)?;
        (i + self.k <= size).then_some(i)
    }

    /// Patches `[n*oh*ow, k*k*c]`, columns in (dy, dx, channel) order: inside the image each
    /// (patch, dy) is one contiguous run of `k*c` values of the NHWC input; taps in the
    /// padding are zeros.
    fn im2col(&self, x: &[f32], g: &Geometry) -> Vec<f32> {
        let k = self.k;
        let run = k * g.c;
        let kk = k * run;
        let total = g.n * g.oh * g.ow * kk;
        let mut cols: Vec<f32> = Vec::with_capacity(total);
        cols.spare_capacity_mut()[..total]
            .par_chunks_mut(g.ow * kk)
            .enumerate()
            .for_each(|(row, out)| {
                let (b, oy) = (row / g.oh, row % g.oh);
                for ox in 0..g.ow {
                    for dy in 0..k {
                        let dst = &mut out[ox * kk + dy * run..ox * kk + (dy + 1) * run];
                        let Some(iy) = self.source(oy, dy, g.h) else {
                            dst.fill(MaybeUninit::new(0.0));
                            continue;
                        };
                        let line = (b * g.h + iy) * g.w;
                        if let Some(ix) = self.window(ox, g.w) {
                            // The whole window is inside the image: one copy.
                            write(dst, &x[(line + ix) * g.c..(line + ix + k) * g.c]);
                            continue;
                        }
                        for (dx, d) in dst.chunks_exact_mut(g.c).enumerate() {
                            match self.source(ox, dx, g.w) {
                                Some(ix) => write(d, &x[(line + ix) * g.c..(line + ix + 1) * g.c]),
                                None => d.fill(MaybeUninit::new(0.0)),
                            }
                        }
                    }
                }
            });
        // SAFETY: the loops above wrote every one of the `total` elements (each patch row
        // is `ow * kk` values: `ow` patches of `k` runs of `k * c`).
        unsafe { cols.set_len(total) };
        cols
    }

    /// The adjoint of [`Self::im2col`]: patch gradients summed back onto pixels, image by
    /// image in parallel. `image_cols(b)` gives image b's `[oh*ow, k*k*c]` patch gradients,
    /// made just before they are used, so they are still in cache.
    fn col2im(&self, g: &Geometry, image_cols: impl Fn(usize) -> Vec<f32> + Sync) -> Vec<f32> {
        let k = self.k;
        let run = k * g.c;
        let kk = k * run;
        let mut x = vec![0f32; g.n * g.h * g.w * g.c];
        x.par_chunks_mut(g.h * g.w * g.c)
            .enumerate()
            .for_each(|(b, img)| {
                let cols = image_cols(b);
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let patch = (oy * g.ow + ox) * kk;
                        for dy in 0..k {
                            let Some(iy) = self.source(oy, dy, g.h) else {
                                continue;
                            };
                            let src = &cols[patch + dy * run..patch + (dy + 1) * run];
                            if let Some(ix) = self.window(ox, g.w) {
                                let at = (iy * g.w + ix) * g.c;
                                img[at..at + run]
                                    .iter_mut()
                                    .zip(src)
                                    .for_each(|(a, b)| *a += b);
                                continue;
                            }
                            for (dx, g_px) in src.chunks_exact(g.c).enumerate() {
                                if let Some(ix) = self.source(ox, dx, g.w) {
                                    let at = (iy * g.w + ix) * g.c;
                                    img[at..at + g.c]
                                        .iter_mut()
                                        .zip(g_px)
                                        .for_each(|(a, b)| *a += b);
                                }
                            }
                        }
                    }
                }
            });
        x
    }
}

/// Runs `f` on the contiguous f32 values of a CPU tensor (the storage guard lives only as
/// long as the call, so the slice cannot be kept).
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("conv: CPU tensors only");
    };
    f(slice(cpu, layout)?)
}

/// `dst = src` (equal lengths) as one memcpy into not yet initialised memory.
fn write(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: equal lengths, and `dst` (uninitialised output) cannot overlap `src` (input).
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) }
}

impl CustomOp2 for ConvNhwc {
    fn name(&self) -> &'static str {
        "conv-nhwc"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, c_out) = self.spec.geometry(xl, wl)?;
        let (x, w) = (slice(xs, xl)?, slice(ws, wl)?);
        let cols = self.spec.im2col(x, &g);
        let kk = self.spec.k * self.spec.k * g.c;
        let km = kernel_to_patch_major(w, [c_out, g.c, self.spec.k, self.spec.k]);
        let m = g.n * g.oh * g.ow;
        let mut out = gemm(Mat::rows(&cols, kk), Mat::rows(&km, c_out), m, kk, c_out);
        if self.spec.relu {
            out.par_chunks_mut(1 << 14)
                .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        if self.keep_cols {
            *self.cols.lock().unwrap_or_else(|e| e.into_inner()) = Some(cols);
        }
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.oh, g.ow, c_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, c_out) = self.spec.geometry(x.layout(), w.layout())?;
        let (k, c) = (self.spec.k, g.c);
        let kk = k * k * c;
        let m = g.n * g.oh * g.ow;
        // Through the fused ReLU: the gradient passes where the output is positive.
        let gv = with_cpu_f32(grad, |gv| {
            if !self.spec.relu {
                // One copy, only with BatchNorm, whose permutes already copy more.
                return Ok(gv.to_vec());
            }
            with_cpu_f32(res, |rv| {
                let mut g = gv.to_vec();
                g.par_chunks_mut(1 << 14)
                    .zip(rv.par_chunks(1 << 14))
                    .for_each(|(g, r)| {
                        g.iter_mut()
                            .zip(r)
                            .for_each(|(g, &r)| *g = if r > 0.0 { *g } else { 0.0 })
                    });
                Ok(g)
            })
        })?;
        let gv = &gv[..];
        // dW[(dy,dx,c), o] = cols^T [kk, m] x grad [m, o].
        let kept = self.cols.lock().unwrap_or_else(|e| e.into_inner()).take();
        let cols = match kept {
            Some(cols) => cols,
            None => with_cpu_f32(x, |xv| Ok(self.spec.im2col(xv, &g)))?,
        };
        let dwm = gemm_at_b(&cols, gv, m, kk, c_out);
        drop(cols);
        let dw = kernel_from_patch_major(&dwm, [c_out, c, k, k]);
        let dw = Tensor::from_vec(dw, (c_out, c, k, k), w.device())?;
        // The input gradient only when something upstream wants it (not for images).
        let dx = if x.track_op() {
            let wv = w.flatten_all()?.to_vec1::<f32>()?;
            let km = kernel_to_patch_major(&wv, [c_out, c, k, k]);
            // Per image: its patch gradients grad_b [oh*ow, o] x W^T [o, kk], one thread
            // each (the images run in parallel), scattered while still in cache.
            let per_image = g.oh * g.ow;
            let dx = self.spec.col2im(&g, |b| {
                let grad_b = &gv[b * per_image * c_out..(b + 1) * per_image * c_out];
                gemm_one_thread(
                    Mat::rows(grad_b, c_out),
                    Mat::transposed(&km, c_out),
                    per_image,
                    c_out,
                    kk,
                )
            });
            Some(Tensor::from_vec(dx, (g.n, g.h, g.w, c), x.device())?)
        } else {
            None
        };
        Ok((dx, Some(dw)))
    }
}
