//! CPU kernels the stages share: a strided f32 GEMM (the `gemm` crate candle itself uses)
//! and access to a CPU tensor's contiguous data, for custom ops that avoid candle's
//! per-op copies on hot paths.

use candle_core::{CpuStorage, Layout, Result};
use std::mem::MaybeUninit;

/// A contiguous f32 slice of a CPU storage.
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("expected an f32 tensor");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[rows, cols]` matrix, without a copy.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `[m, k] x [k, n] -> [m, n]` (row-major result) on all of rayon's threads; the operands
/// may be strided views, which the GEMM packs itself.
pub fn gemm(a: Mat, b: Mat, m: usize, k: usize, n: usize) -> Vec<f32> {
    gemm_vec(a, b, m, k, n, rayon_threads())
}

/// [`gemm`] into `out` (exactly m*n elements, row-major), which it only writes: every
/// element is initialised on return.
pub fn gemm_into(a: Mat, b: Mat, m: usize, k: usize, n: usize, out: &mut [MaybeUninit<f32>]) {
    gemm_with(a, b, m, k, n, out, rayon_threads())
}

/// [`gemm`] on the calling thread only, for callers that already run one product per
/// rayon task.
pub fn gemm_one_thread(a: Mat, b: Mat, m: usize, k: usize, n: usize) -> Vec<f32> {
    gemm_vec(a, b, m, k, n, gemm::Parallelism::None)
}

fn rayon_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

/// The product in a new row-major vector.
fn gemm_vec(a: Mat, b: Mat, m: usize, k: usize, n: usize, threads: gemm::Parallelism) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    gemm_with(
        a,
        b,
        m,
        k,
        n,
        &mut out.spare_capacity_mut()[..m * n],
        threads,
    );
    // SAFETY: `gemm_with` initialised all m*n elements.
    unsafe { out.set_len(m * n) };
    out
}

/// `aᵀ b` for row-major `a: [rows, m]` and `b: [rows, n]`, a reduction over many rows
/// into a small `[m, n]` (a kernel gradient: patches x output gradients).
///
/// Why: the GEMM splits only m and n across threads, so with a small result and a long
/// reduction one thread did most of the work. Here fixed blocks of rows are reduced in
/// parallel, one thread each, and the partial sums are added in block order, so the
/// result does not depend on the thread count.
pub fn gemm_at_b(a: &[f32], b: &[f32], rows: usize, m: usize, n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(a.len() == rows * m && b.len() == rows * n && m > 0 && n > 0);
    /// Rows per block: large enough for the GEMM to run at speed, small enough that a
    /// batch gives every thread several blocks.
    const BLOCK: usize = 2048;
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(BLOCK))
        .into_par_iter()
        .map(|i| {
            let (lo, hi) = (i * BLOCK, ((i + 1) * BLOCK).min(rows));
            gemm_one_thread(
                Mat::transposed(&a[lo * m..hi * m], m),
                Mat::rows(&b[lo * n..hi * n], n),
                m,
                hi - lo,
                n,
            )
        })
        .collect();
    let mut sum = vec![0f32; m * n];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sum
}

fn gemm_with(
    a: Mat,
    b: Mat,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [MaybeUninit<f32>],
    threads: gemm::Parallelism,
) {
    let last = |v: &Mat, r: usize, c: usize| (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(m > 0 && k > 0 && n > 0 && out.len() == m * n);
    assert!(last(&a, m, k) < a.data.len() && last(&b, k, n) < b.data.len());
    // SAFETY: every index the strides reach is inside its slice (checked above); `out`
    // holds m*n elements, is not aliased, and is only written (`read_dst` is false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr() as *mut f32,
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0f32,
            1f32,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Index of element (o, c, dy, dx) of a PyTorch `[out, in, kh, kw]` kernel, and of the
/// same element in the patch-major `[kh*kw*in, out]` matrix (rows in (dy, dx, channel)
/// order) that an NHWC im2col GEMM multiplies by.
fn kernel_indices(dims: [usize; 4]) -> impl Iterator<Item = (usize, usize)> {
    let [c_out, c_in, kh, kw] = dims;
    (0..c_out).flat_map(move |o| {
        (0..c_in).flat_map(move |c| {
            (0..kh).flat_map(move |dy| {
                (0..kw).map(move |dx| {
                    (
                        ((o * c_in + c) * kh + dy) * kw + dx,
                        ((dy * kw + dx) * c_in + c) * c_out + o,
                    )
                })
            })
        })
    })
}

/// A PyTorch-layout `[out, in, kh, kw]` kernel as the patch-major `[kh*kw*in, out]` matrix.
pub fn kernel_to_patch_major(weight: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let mut m = vec![0f32; weight.len()];
    for (torch, patch) in kernel_indices(dims) {
        m[patch] = weight[torch];
    }
    m
}

/// The inverse of [`kernel_to_patch_major`] (for kernel gradients).
pub fn kernel_from_patch_major(m: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let mut w = vec![0f32; m.len()];
    for (torch, patch) in kernel_indices(dims) {
        w[torch] = m[patch];
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_layouts_round_trip() {
        let dims = [2, 3, 2, 1];
        let w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let m = kernel_to_patch_major(&w, dims);
        // Row (dy=1, dx=0, c=2) = 5, columns o = 0, 1: w[0,2,1,0] = 5, w[1,2,1,0] = 11.
        assert_eq!(&m[10..12], &[5., 11.]);
        assert_eq!(kernel_from_patch_major(&m, dims), w);
    }

    #[test]
    fn gemm_with_transposed_views() {
        // a = [[1,2,3],[4,5,6]] (2x3), b = [[1,0],[0,1],[1,1]] (3x2)
        let a = [1f32, 2., 3., 4., 5., 6.];
        let b = [1f32, 0., 0., 1., 1., 1.];
        assert_eq!(
            gemm(Mat::rows(&a, 3), Mat::rows(&b, 2), 2, 3, 2),
            [4., 5., 10., 11.]
        );
        // a^T (3x2) x a (2x3) from the same storage.
        let ata = gemm(Mat::transposed(&a, 3), Mat::rows(&a, 3), 3, 2, 3);
        assert_eq!(ata, [17., 22., 27., 22., 29., 36., 27., 36., 45.]);
        assert_eq!(gemm_at_b(&a, &a, 2, 3, 3), ata);
    }

    /// Blocked reduction equals the one-call GEMM across several blocks and a ragged end.
    #[test]
    fn blocked_at_b_equals_gemm() {
        let (rows, m, n) = (5000, 7, 3);
        let a: Vec<f32> = (0..rows * m)
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let b: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 104729) % 11) as f32 - 5.0)
            .collect();
        let want = gemm(Mat::transposed(&a, m), Mat::rows(&b, n), m, rows, n);
        // Small integers: both sums are exact.
        assert_eq!(gemm_at_b(&a, &b, rows, m, n), want);
    }
}
