//! t-SNE (van der Maaten 2014) with exact k-nearest-neighbour affinities and Barnes-Hut
//! repulsion, seeded and deterministic.
//!
//! - Affinities: for each point, its k = 3 x perplexity nearest neighbours (squared
//!   distances from one matrix product per block of rows), a binary search on the
//!   Gaussian precision to match the perplexity, then symmetrised: `P = (P|i + P|j) / 2N`.
//! - Initialisation: the first two principal components, scaled to std 1e-4.
//! - Optimisation as openTSNE 1.0 does it, so that KL values compare: early exaggeration
//!   12 for 250 iterations, then 500 plain ones; momentum 0.8; gradient without the
//!   customary factor 4; learning rate N / exaggeration in each phase (N/12, then N);
//!   delta-bar-delta gains (+0.2 on a sign flip, x0.8 + 0.01 otherwise); each point's step
//!   clipped to norm 5. Keeping N/12 in the main phase leaves the map under-converged
//!   after 500 iterations (KL ~40% higher at N = 1000).
//! - The reported KL divergence uses the exact normaliser Z (an O(N^2) pass, done once):
//!   `KL = sum P log P - sum P log q + log Z`.

use rayon::prelude::*;

/// Largest step one point may take in one iteration (openTSNE's `max_step_norm`).
const MAX_STEP: f64 = 5.0;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TsneConfig {
    pub perplexity: f64,
    pub theta: f64,
    pub early_exaggeration: f64,
    pub exaggeration_iters: usize,
    pub iters: usize,
    /// `None` = N / exaggeration of the current phase (at least 50).
    pub learning_rate: Option<f64>,
    pub seed: u64,
}

impl Default for TsneConfig {
    fn default() -> Self {
        TsneConfig {
            perplexity: 30.0,
            theta: 0.5,
            early_exaggeration: 12.0,
            exaggeration_iters: 250,
            iters: 750,
            learning_rate: None,
            seed: 42,
        }
    }
}

/// The 2-D map and its KL divergence.
#[derive(Debug, Clone)]
pub struct TsneResult {
    pub embedding: Vec<[f64; 2]>,
    pub kl: f64,
    pub seconds: f64,
    pub knn_seconds: f64,
    /// Seconds spent in the PCA initialisation.
    pub init_seconds: f64,
}

/// Sparse symmetric affinities in CSR form.
pub struct Affinities {
    pub indptr: Vec<usize>,
    pub indices: Vec<usize>,
    pub values: Vec<f64>,
}

/// k nearest neighbours (excluding self) and their squared distances, exact.
pub fn knn(x: &[f32], n: usize, d: usize, k: usize) -> (Vec<usize>, Vec<f32>) {
    let k = k.min(n.saturating_sub(1));
    let norms: Vec<f32> = (0..n)
        .map(|i| x[i * d..(i + 1) * d].iter().map(|v| v * v).sum())
        .collect();
    let mut idx = vec![0usize; n * k];
    let mut dist = vec![0f32; n * k];
    // Squared distances block by block: |a|^2 + |b|^2 - 2 a.b, the dot products as one
    // matrix product per block of rows (gemm), which dominates naive loops on 2048-d data.
    let all =
        candle_core::Tensor::from_slice(x, (n, d), &candle_core::Device::Cpu).expect("n*d floats");
    let all_t = all.t().expect("2-d");
    let block = 256;
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        let mut dm = all
            .narrow(0, start, end - start)
            .and_then(|b| b.matmul(&all_t))
            .and_then(|m| m.flatten_all())
            .and_then(|m| m.to_vec1::<f32>())
            .expect("in-memory matmul of valid shapes");
        for (r, row) in dm.chunks_mut(n).enumerate() {
            let ni = norms[start + r];
            for (j, v) in row.iter_mut().enumerate() {
                *v = (ni + norms[j] - 2.0 * *v).max(0.0);
            }
        }
        idx[start * k..end * k]
            .par_chunks_mut(k.max(1))
            .zip(dist[start * k..end * k].par_chunks_mut(k.max(1)))
            .enumerate()
            .for_each(|(r, (ir, dr))| {
                if k == 0 {
                    return;
                }
                let i = start + r;
                let row = &dm[r * n..(r + 1) * n];
                let mut cand: Vec<(f32, usize)> = row
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, &v)| (v, j))
                    .collect();
                cand.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut top = cand[..k].to_vec();
                top.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for (t, (v, j)) in top.into_iter().enumerate() {
                    ir[t] = j;
                    dr[t] = v;
                }
            });
        start = end;
    }
    (idx, dist)
}

/// The affinities t-SNE fits: exact k = 3 x perplexity neighbours, then [`affinities`].
/// Public so that a benchmark can score another tool's map against the same P.
pub fn input_affinities(x: &[f32], n: usize, d: usize, perplexity: f64) -> Affinities {
    let k = ((3.0 * perplexity) as usize).clamp(1, n.saturating_sub(1).max(1));
    let (idx, dist) = knn(x, n, d, k);
    affinities(&idx, &dist, n, k, perplexity)
}

/// Perplexity-calibrated conditional affinities, symmetrised and normalised to sum 1.
pub fn affinities(idx: &[usize], dist: &[f32], n: usize, k: usize, perplexity: f64) -> Affinities {
    let target = perplexity.min((k as f64).max(1.0)).ln();
    let cond: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let d = &dist[i * k..(i + 1) * k];
            let dmin = d.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
            let (mut lo, mut hi, mut beta) = (0f64, f64::INFINITY, 1f64);
            let mut p = vec![0f64; k];
            for _ in 0..200 {
                let mut sum = 0.0;
                for (t, &dv) in d.iter().enumerate() {
                    p[t] = (-(dv as f64 - dmin) * beta).exp();
                    sum += p[t];
                }
                let sum = sum.max(1e-300);
                let mut h = 0.0;
                for (t, &dv) in d.iter().enumerate() {
                    h += beta * (dv as f64 - dmin) * p[t];
                }
                let entropy = h / sum + sum.ln();
                if (entropy - target).abs() < 1e-6 {
                    break;
                }
                if entropy > target {
                    lo = beta;
                    beta = if hi.is_finite() {
                        (beta + hi) / 2.0
                    } else {
                        beta * 2.0
                    };
                } else {
                    hi = beta;
                    beta = (beta + lo) / 2.0;
                }
            }
            let s: f64 = p.iter().sum::<f64>().max(1e-300);
            p.iter().map(|v| v / s).collect()
        })
        .collect();
    // Symmetrise: P_ij = (p_j|i + p_i|j) / 2N over the union of neighbour lists.
    let mut rows: Vec<std::collections::BTreeMap<usize, f64>> = vec![Default::default(); n];
    for i in 0..n {
        for t in 0..k {
            let j = idx[i * k + t];
            let v = cond[i][t] / (2.0 * n as f64);
            *rows[i].entry(j).or_default() += v;
            *rows[j].entry(i).or_default() += v;
        }
    }
    let mut indptr = vec![0];
    let mut indices = Vec::new();
    let mut values = Vec::new();
    for r in rows {
        for (j, v) in r {
            indices.push(j);
            values.push(v);
        }
        indptr.push(indices.len());
    }
    Affinities {
        indptr,
        indices,
        values,
    }
}

/// Dot product with eight independent accumulators, so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows per parallel work item; fixed so that sums do not depend on the thread count.
const ROW_BLOCK: usize = 64;

/// First two principal components of `x` by power iteration, scaled to std 1e-4.
/// Rows are centred once; each iteration is two passes over contiguous rows
/// (`Xc v`, then `Xc^T (Xc v)` as a sum of scaled rows), so it runs at memory speed.
pub fn pca_init(x: &[f32], n: usize, d: usize, seed: u64) -> Vec<[f64; 2]> {
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let xc: Vec<f32> = x
        .chunks_exact(d)
        .flat_map(|row| row.iter().zip(&mean).map(|(&v, &m)| (v as f64 - m) as f32))
        .collect();
    let mut comps: Vec<Vec<f32>> = Vec::new();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for _ in 0..2 {
        let mut v: Vec<f32> = (0..d)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5) as f32
            })
            .collect();
        for _ in 0..200 {
            // w = Xc^T Xc v, with the components already found projected out.
            let partial: Vec<Vec<f32>> = xc
                .par_chunks(ROW_BLOCK * d)
                .map(|block| {
                    let mut w = vec![0f32; d];
                    for row in block.chunks_exact(d) {
                        let a = dot(row, &v);
                        w.iter_mut().zip(row).for_each(|(w, &r)| *w += a * r);
                    }
                    w
                })
                .collect();
            let mut w = vec![0f32; d];
            for p in &partial {
                w.iter_mut().zip(p).for_each(|(w, &p)| *w += p);
            }
            for c in &comps {
                let a = dot(&w, c);
                w.iter_mut().zip(c).for_each(|(w, &c)| *w -= a * c);
            }
            let norm = dot(&w, &w).sqrt();
            if norm == 0.0 || !norm.is_finite() {
                break;
            }
            w.iter_mut().for_each(|a| *a /= norm);
            let cos = dot(&w, &v) / dot(&v, &v).sqrt().max(1e-30);
            v = w;
            if 1.0 - cos.abs() < 1e-7 {
                break;
            }
        }
        // Fix the sign for determinism across platforms.
        let big = v
            .iter()
            .cloned()
            .fold(0f32, |m, a| if a.abs() > m.abs() { a } else { m });
        if big < 0.0 {
            v.iter_mut().for_each(|a| *a = -*a);
        }
        comps.push(v);
    }
    let mut y: Vec<[f64; 2]> = xc
        .chunks_exact(d)
        .map(|row| [dot(row, &comps[0]) as f64, dot(row, &comps[1]) as f64])
        .collect();
    let std = (y.iter().map(|p| p[0] * p[0]).sum::<f64>() / n.max(1) as f64)
        .sqrt()
        .max(1e-12);
    y.iter_mut().for_each(|p| {
        p[0] *= 1e-4 / std;
        p[1] *= 1e-4 / std;
    });
    y
}

/// A Barnes-Hut quadtree over the current map.
struct QuadTree {
    nodes: Vec<Node>,
}

struct Node {
    cx: f64,
    cy: f64,
    half: f64,
    /// Centre of mass and number of points.
    mx: f64,
    my: f64,
    count: usize,
    /// Children indices (0 = none) in NW, NE, SW, SE order.
    children: [usize; 4],
    /// A single point stored in a leaf.
    point: Option<usize>,
}

impl QuadTree {
    fn build(y: &[[f64; 2]]) -> QuadTree {
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for p in y {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
        let half = ((x1 - x0).max(y1 - y0) / 2.0).max(1e-12) * (1.0 + 1e-9);
        let mut t = QuadTree {
            nodes: vec![Node::new((x0 + x1) / 2.0, (y0 + y1) / 2.0, half)],
        };
        for (i, p) in y.iter().enumerate() {
            t.insert(0, i, *p, y, 0);
        }
        t
    }

    fn insert(&mut self, node: usize, i: usize, p: [f64; 2], y: &[[f64; 2]], depth: usize) {
        {
            let nd = &mut self.nodes[node];
            nd.mx = (nd.mx * nd.count as f64 + p[0]) / (nd.count + 1) as f64;
            nd.my = (nd.my * nd.count as f64 + p[1]) / (nd.count + 1) as f64;
            nd.count += 1;
            if nd.count == 1 {
                nd.point = Some(i);
                return;
            }
        }
        // Duplicate points (or too deep): keep them lumped in this node.
        if depth > 48 {
            return;
        }
        if let Some(old) = self.nodes[node].point.take() {
            let q = y[old];
            let c = self.child_for(node, q);
            self.insert(c, old, q, y, depth + 1);
        }
        let c = self.child_for(node, p);
        self.insert(c, i, p, y, depth + 1);
    }

    fn child_for(&mut self, node: usize, p: [f64; 2]) -> usize {
        let (cx, cy, half) = (
            self.nodes[node].cx,
            self.nodes[node].cy,
            self.nodes[node].half,
        );
        let q = usize::from(p[0] >= cx) + 2 * usize::from(p[1] >= cy);
        if self.nodes[node].children[q] == 0 {
            let h = half / 2.0;
            let nx = if p[0] >= cx { cx + h } else { cx - h };
            let ny = if p[1] >= cy { cy + h } else { cy - h };
            self.nodes.push(Node::new(nx, ny, h));
            let id = self.nodes.len() - 1;
            self.nodes[node].children[q] = id;
        }
        self.nodes[node].children[q]
    }

    /// Repulsive force numerator and the share of Z for point `p` (`i` excluded).
    fn repulse(&self, i: usize, p: [f64; 2], theta2: f64) -> (f64, f64, f64) {
        let (mut fx, mut fy, mut z) = (0.0, 0.0, 0.0);
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            let nd = &self.nodes[n];
            if nd.count == 0 || (nd.count == 1 && nd.point == Some(i)) {
                continue;
            }
            let dx = p[0] - nd.mx;
            let dy = p[1] - nd.my;
            let d2 = dx * dx + dy * dy;
            let leaf = nd.children.iter().all(|&c| c == 0);
            let size = 2.0 * nd.half;
            if leaf || size * size < theta2 * d2 {
                // A leaf may hold point i itself among duplicates: leave it out.
                let count = if leaf && nd.point.is_none() && d2 == 0.0 {
                    nd.count.saturating_sub(1)
                } else {
                    nd.count
                } as f64;
                let q = 1.0 / (1.0 + d2);
                z += count * q;
                let q2 = count * q * q;
                fx += q2 * dx;
                fy += q2 * dy;
            } else {
                stack.extend(nd.children.iter().filter(|&&c| c != 0));
            }
        }
        (fx, fy, z)
    }
}

impl Node {
    fn new(cx: f64, cy: f64, half: f64) -> Node {
        Node {
            cx,
            cy,
            half,
            mx: 0.0,
            my: 0.0,
            count: 0,
            children: [0; 4],
            point: None,
        }
    }
}

/// Exact KL divergence of P (sparse) to the map's Student-t similarities.
pub fn kl_divergence(p: &Affinities, y: &[[f64; 2]]) -> f64 {
    let n = y.len();
    let z: f64 = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut s = 0.0;
            for j in 0..n {
                if j != i {
                    let dx = y[i][0] - y[j][0];
                    let dy = y[i][1] - y[j][1];
                    s += 1.0 / (1.0 + dx * dx + dy * dy);
                }
            }
            s
        })
        .sum();
    let mut kl = 0.0;
    for i in 0..n {
        for t in p.indptr[i]..p.indptr[i + 1] {
            let j = p.indices[t];
            let pij = p.values[t];
            if pij <= 0.0 {
                continue;
            }
            let dx = y[i][0] - y[j][0];
            let dy = y[i][1] - y[j][1];
            let q = 1.0 / (1.0 + dx * dx + dy * dy) / z;
            kl += pij * (pij / q.max(1e-300)).ln();
        }
    }
    kl
}

/// Runs t-SNE on `n` rows of `d` floats.
pub fn tsne(x: &[f32], n: usize, d: usize, cfg: &TsneConfig) -> TsneResult {
    let start = std::time::Instant::now();
    if n < 3 {
        return TsneResult {
            embedding: (0..n).map(|i| [i as f64, 0.0]).collect(),
            kl: 0.0,
            seconds: 0.0,
            knn_seconds: 0.0,
            init_seconds: 0.0,
        };
    }
    let p = input_affinities(x, n, d, cfg.perplexity);
    let knn_seconds = start.elapsed().as_secs_f64();
    let mut y = pca_init(x, n, d, cfg.seed);
    let init_seconds = start.elapsed().as_secs_f64() - knn_seconds;
    let mut update = vec![[0f64; 2]; n];
    let mut gains = vec![[1f64; 2]; n];
    let theta2 = cfg.theta * cfg.theta;
    for it in 0..cfg.iters {
        let exag = if it < cfg.exaggeration_iters {
            cfg.early_exaggeration
        } else {
            1.0
        };
        let momentum = 0.8;
        let lr = cfg.learning_rate.unwrap_or((n as f64 / exag).max(50.0));
        let tree = QuadTree::build(&y);
        let rep: Vec<(f64, f64, f64)> = (0..n)
            .into_par_iter()
            .map(|i| tree.repulse(i, y[i], theta2))
            .collect();
        let z: f64 = rep.iter().map(|r| r.2).sum::<f64>().max(1e-300);
        let grads: Vec<[f64; 2]> = (0..n)
            .into_par_iter()
            .map(|i| {
                let (mut ax, mut ay) = (0.0, 0.0);
                for t in p.indptr[i]..p.indptr[i + 1] {
                    let j = p.indices[t];
                    let dx = y[i][0] - y[j][0];
                    let dy = y[i][1] - y[j][1];
                    let q = 1.0 / (1.0 + dx * dx + dy * dy);
                    ax += p.values[t] * q * dx;
                    ay += p.values[t] * q * dy;
                }
                [exag * ax - rep[i].0 / z, exag * ay - rep[i].1 / z]
            })
            .collect();
        for i in 0..n {
            for c in 0..2 {
                let g = grads[i][c];
                gains[i][c] = if (g > 0.0) != (update[i][c] > 0.0) {
                    gains[i][c] + 0.2
                } else {
                    gains[i][c] * 0.8 + 0.01
                };
                update[i][c] = momentum * update[i][c] - lr * gains[i][c] * g;
            }
            let norm = (update[i][0] * update[i][0] + update[i][1] * update[i][1]).sqrt();
            if norm > MAX_STEP {
                update[i][0] *= MAX_STEP / norm;
                update[i][1] *= MAX_STEP / norm;
            }
            y[i][0] += update[i][0];
            y[i][1] += update[i][1];
        }
        // Keep the map centred.
        let (mx, my) = y.iter().fold((0.0, 0.0), |(a, b), p| (a + p[0], b + p[1]));
        let (mx, my) = (mx / n as f64, my / n as f64);
        y.iter_mut().for_each(|p| {
            p[0] -= mx;
            p[1] -= my;
        });
    }
    let kl = kl_divergence(&p, &y);
    TsneResult {
        embedding: y,
        kl,
        seconds: start.elapsed().as_secs_f64(),
        knn_seconds,
        init_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters(per: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut s = seed;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for c in 0..4 {
            for _ in 0..per {
                for k in 0..d {
                    let centre = if k % 4 == c { 6.0 } else { 0.0 };
                    x.push(centre + rnd());
                }
                labels.push(c);
            }
        }
        (x, labels)
    }

    #[test]
    fn separated_clusters_stay_apart() {
        let (x, labels) = clusters(50, 32, 7);
        let n = labels.len();
        let r = tsne(
            &x,
            n,
            32,
            &TsneConfig {
                perplexity: 15.0,
                iters: 500,
                ..Default::default()
            },
        );
        // 5-NN accuracy in the map.
        let mut ok = 0;
        for i in 0..n {
            let mut d: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        (r.embedding[i][0] - r.embedding[j][0]).powi(2)
                            + (r.embedding[i][1] - r.embedding[j][1]).powi(2),
                        j,
                    )
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            let votes = d[..5]
                .iter()
                .filter(|(_, j)| labels[*j] == labels[i])
                .count();
            ok += usize::from(votes >= 3);
        }
        assert!(ok as f64 / n as f64 >= 0.95, "{ok}/{n}");
        assert!(r.kl.is_finite() && r.kl > 0.0);
    }

    #[test]
    fn deterministic_with_a_seed() {
        let (x, labels) = clusters(20, 8, 3);
        let cfg = TsneConfig {
            perplexity: 5.0,
            iters: 300,
            ..Default::default()
        };
        let a = tsne(&x, labels.len(), 8, &cfg);
        let b = tsne(&x, labels.len(), 8, &cfg);
        assert_eq!(a.embedding, b.embedding);
        assert_eq!(a.kl, b.kl);
    }

    #[test]
    fn kl_matches_a_small_case_computed_by_hand() {
        // 3 points, P uniform over pairs: P_ij = 1/6 for i != j.
        let p = Affinities {
            indptr: vec![0, 2, 4, 6],
            indices: vec![1, 2, 0, 2, 0, 1],
            values: vec![1.0 / 6.0; 6],
        };
        let y = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]];
        // q: d2(0,1)=1 -> 1/2; d2(0,2)=4 -> 1/5; d2(1,2)=5 -> 1/6.
        let z = 2.0 * (0.5 + 0.2 + 1.0 / 6.0);
        let want: f64 = [0.5f64, 0.2, 1.0 / 6.0]
            .iter()
            .map(|q| 2.0 * (1.0 / 6.0) * ((1.0 / 6.0) / (q / z)).ln())
            .sum();
        assert!((kl_divergence(&p, &y) - want).abs() < 1e-12);
    }

    #[test]
    fn knn_is_exact() {
        let x: Vec<f32> = vec![0.0, 0.0, 1.0, 0.0, 5.0, 5.0, 1.1, 0.1];
        let (idx, dist) = knn(&x, 4, 2, 2);
        assert_eq!(&idx[0..2], &[1, 3]);
        assert!((dist[0] - 1.0).abs() < 1e-6);
        assert_eq!(&idx[4..6], &[3, 1]);
    }
}
