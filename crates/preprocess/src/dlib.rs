//! dlib's `shape_predictor` (Kazemi & Sullivan's ensemble of regression trees), read from
//! dlib's own serialization and evaluated exactly as dlib evaluates it, in plain Rust.
//!
//! File layout (dlib `serialize`): version (int, 1), initial_shape (column matrix of
//! floats, x0 y0 x1 y1 ... in box-normalised coordinates), forests (vector of cascades,
//! each a vector of trees: splits {idx1, idx2, thresh} and leaf shape updates), anchor_idx
//! (per cascade, the landmark each feature pixel is anchored to), deltas (per cascade, the
//! offset of each feature pixel from its anchor in mean-shape coordinates).

use crate::geometry::{similarity_fit, Similarity};
use dlib_dnn::serialize::{FormatError, Reader};
use std::path::Path;

impl From<FormatError> for DlibError {
    fn from(e: FormatError) -> Self {
        DlibError::Format {
            what: e.what,
            offset: e.offset,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlibError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("not a dlib shape predictor: {what} at byte {offset}")]
    Format { what: String, offset: usize },
}

/// A split node: compares two feature pixels' intensity difference with a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub idx1: u32,
    pub idx2: u32,
    pub thresh: f32,
}

/// A complete binary tree stored breadth-first: children of node i are 2i+1 and 2i+2.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub splits: Vec<Split>,
    /// One shape update (2 x parts floats) per leaf, flattened.
    pub leaves: Vec<f32>,
}

/// The parsed model.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapePredictor {
    /// Mean shape in box-normalised coordinates, `[x0, y0, x1, y1, ...]`.
    pub initial_shape: Vec<f32>,
    pub cascades: Vec<Vec<Tree>>,
    pub anchor_idx: Vec<Vec<u32>>,
    pub deltas: Vec<Vec<[f32; 2]>>,
}

impl ShapePredictor {
    /// Parses a shape predictor from dlib's serialization.
    pub fn from_bytes(buf: &[u8]) -> Result<ShapePredictor, DlibError> {
        let mut r = Reader::new(buf);
        let version = r.int()?;
        if version != 1 {
            return Err(r
                .err(format!("unsupported shape_predictor version {version}"))
                .into());
        }
        let initial_shape = r.column()?;
        if initial_shape.is_empty() || initial_shape.len() % 2 != 0 {
            return Err(r.err("initial shape must hold x,y pairs").into());
        }
        let dims = initial_shape.len();
        let n_cascades = r.uint("cascade count", 1000)?;
        let mut cascades = Vec::with_capacity(n_cascades);
        for _ in 0..n_cascades {
            let n_trees = r.uint("tree count", 100_000)?;
            let mut trees = Vec::with_capacity(n_trees);
            for _ in 0..n_trees {
                let n_splits = r.uint("split count", 1 << 20)?;
                let mut splits = Vec::with_capacity(n_splits);
                for _ in 0..n_splits {
                    let idx1 = r.uint("split idx1", u32::MAX as u64)? as u32;
                    let idx2 = r.uint("split idx2", u32::MAX as u64)? as u32;
                    let thresh = r.float()?;
                    splits.push(Split { idx1, idx2, thresh });
                }
                let n_leaves = r.uint("leaf count", 1 << 21)?;
                if n_leaves != n_splits + 1 {
                    return Err(r
                        .err(format!("{n_leaves} leaves for {n_splits} splits"))
                        .into());
                }
                let mut leaves = Vec::with_capacity(n_leaves * dims);
                for _ in 0..n_leaves {
                    let v = r.column()?;
                    if v.len() != dims {
                        return Err(r
                            .err(format!("leaf of {} values, shape has {dims}", v.len()))
                            .into());
                    }
                    leaves.extend(v);
                }
                trees.push(Tree { splits, leaves });
            }
            cascades.push(trees);
        }
        let n = r.uint("anchor cascade count", 1000)?;
        let mut anchor_idx = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.uint("anchor count", 1 << 20)?;
            let v = (0..k)
                .map(|_| {
                    r.uint("anchor index", (dims / 2 - 1) as u64)
                        .map(|x| x as u32)
                })
                .collect::<Result<Vec<_>, _>>()?;
            anchor_idx.push(v);
        }
        let n = r.uint("delta cascade count", 1000)?;
        let mut deltas = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.uint("delta count", 1 << 20)?;
            let v = (0..k)
                .map(|_| Ok([r.float()?, r.float()?]))
                .collect::<Result<Vec<_>, DlibError>>()?;
            deltas.push(v);
        }
        if anchor_idx.len() != cascades.len() || deltas.len() != cascades.len() {
            return Err(r.err("cascade, anchor and delta counts differ").into());
        }
        for (c, trees) in cascades.iter().enumerate() {
            let pixels = anchor_idx[c].len();
            if deltas[c].len() != pixels {
                return Err(r
                    .err(format!("cascade {c}: anchors and deltas differ in length"))
                    .into());
            }
            if trees
                .iter()
                .flat_map(|t| &t.splits)
                .any(|s| s.idx1 as usize >= pixels || s.idx2 as usize >= pixels)
            {
                return Err(r
                    .err(format!(
                        "cascade {c}: a split refers to a missing feature pixel"
                    ))
                    .into());
            }
        }
        Ok(ShapePredictor {
            initial_shape,
            cascades,
            anchor_idx,
            deltas,
        })
    }

    /// Reads a `.dat` file (memory-mapped; the 68-landmark model is ~95 MB).
    pub fn open(path: &Path) -> Result<ShapePredictor, DlibError> {
        let io = |source| DlibError::Io {
            path: path.display().to_string(),
            error: source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only mapping of a file we only read; a concurrent truncation
        // could fault, which is the usual caveat of mmap for model files.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(&map)
    }

    pub fn num_parts(&self) -> usize {
        self.initial_shape.len() / 2
    }

    /// Landmarks `(x, y)` in image pixels for the face in `rect = [left, top, right, bottom]`
    /// (dlib's inclusive corners) of a grey image (`intensity[y * width + x]`).
    pub fn predict(
        &self,
        gray: &[u8],
        width: usize,
        height: usize,
        rect: [f32; 4],
    ) -> Vec<[f32; 2]> {
        let [l, t, r, b] = rect;
        // unnormalizing_tform: (0,0) -> (l,t), (1,0) -> (r,t), (1,1) -> (r,b).
        let to_img = |p: [f32; 2]| [l + p[0] * (r - l), t + p[1] * (b - t)];
        let mut shape = self.initial_shape.clone();
        let parts = self.num_parts();
        let mut features: Vec<f32> = Vec::new();
        let init: Vec<[f32; 2]> = (0..parts)
            .map(|i| [self.initial_shape[2 * i], self.initial_shape[2 * i + 1]])
            .collect();
        for (c, trees) in self.cascades.iter().enumerate() {
            // Only the linear part of the mean-shape -> current-shape similarity moves deltas.
            let cur: Vec<[f32; 2]> = (0..parts)
                .map(|i| [shape[2 * i], shape[2 * i + 1]])
                .collect();
            let Similarity { a, b: bb, .. } = similarity_fit(&init, &cur);
            features.clear();
            for (anchor, d) in self.anchor_idx[c].iter().zip(&self.deltas[c]) {
                let k = *anchor as usize;
                let p = [
                    a * d[0] - bb * d[1] + shape[2 * k],
                    bb * d[0] + a * d[1] + shape[2 * k + 1],
                ];
                let q = to_img(p);
                // dlib converts to an integer point by rounding to nearest.
                let x = (q[0] + 0.5).floor();
                let y = (q[1] + 0.5).floor();
                let v = if x >= 0.0 && y >= 0.0 && (x as usize) < width && (y as usize) < height {
                    gray[y as usize * width + x as usize] as f32
                } else {
                    0.0
                };
                features.push(v);
            }
            for tree in trees {
                let mut i = 0usize;
                let n = tree.splits.len();
                while i < n {
                    let s = &tree.splits[i];
                    i = if features[s.idx1 as usize] - features[s.idx2 as usize] > s.thresh {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    };
                }
                let leaf = &tree.leaves[(i - n) * shape.len()..(i - n + 1) * shape.len()];
                for (s, u) in shape.iter_mut().zip(leaf) {
                    *s += u;
                }
            }
        }
        (0..parts)
            .map(|i| to_img([shape[2 * i], shape[2 * i + 1]]))
            .collect()
    }
}

/// dlib's intensity of an RGB pixel: the integer mean of the three channels.
pub fn gray_like_dlib(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((p[0] as u16 + p[1] as u16 + p[2] as u16) / 3) as u8)
        .collect()
}

/// Writers of dlib's serialization, for tests that build tiny models.
pub use dlib_dnn::serialize::write;
