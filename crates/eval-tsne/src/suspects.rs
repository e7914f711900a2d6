//! Dirty-data suspects: images whose nearest neighbours mostly carry another label, or
//! that lie far from their class's medoid, in the teacher's (or student's) feature space.

/// A flagged image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Suspect {
    pub index: usize,
    pub source: String,
    pub label: String,
    /// Share of the k nearest neighbours with another label.
    pub neighbour_disagreement: f64,
    /// Cosine distance to the class medoid, in robust z-units of the class.
    pub medoid_z: f64,
    /// The label most neighbours carry.
    pub neighbours_say: String,
    /// Larger = more suspicious (disagreement + z / 4).
    pub score: f64,
}

/// When an image counts as a suspect.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SuspectConfig {
    /// Neighbours consulted.
    pub k: usize,
    /// Flag when at least this share of the neighbours carries another label and one
    /// other class holds at least half of them.
    pub min_disagreement: f64,
    /// Flag when the distance to the class medoid is at least this many robust z-units.
    pub max_z: f64,
}

impl Default for SuspectConfig {
    fn default() -> Self {
        SuspectConfig {
            k: 10,
            min_disagreement: 0.7,
            max_z: 4.0,
        }
    }
}

/// Flags images per `cfg`. Features are standardised per dimension (so that a few
/// large-valued channels do not decide), then compared by cosine similarity.
pub fn find(
    features: &[f32],
    dim: usize,
    labels: &[u32],
    class_names: &[String],
    sources: &[String],
    cfg: &SuspectConfig,
) -> Vec<Suspect> {
    let (k, min_disagreement, max_z) = (cfg.k, cfg.min_disagreement, cfg.max_z);
    let n = labels.len();
    if n < 3 || dim == 0 {
        return vec![];
    }
    let mut mean = vec![0f64; dim];
    for i in 0..n {
        for d in 0..dim {
            mean[d] += features[i * dim + d] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut sd = vec![0f64; dim];
    for i in 0..n {
        for d in 0..dim {
            sd[d] += (features[i * dim + d] as f64 - mean[d]).powi(2);
        }
    }
    sd.iter_mut()
        .for_each(|v| *v = (*v / n as f64).sqrt().max(1e-6));
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        let mut norm = 0f64;
        for d in 0..dim {
            let v = (features[i * dim + d] as f64 - mean[d]) / sd[d];
            x[i * dim + d] = v as f32;
            norm += v * v;
        }
        let norm = norm.sqrt().max(1e-12) as f32;
        x[i * dim..(i + 1) * dim]
            .iter_mut()
            .for_each(|v| *v /= norm);
    }
    let sim = |i: usize, j: usize| -> f32 {
        x[i * dim..(i + 1) * dim]
            .iter()
            .zip(&x[j * dim..(j + 1) * dim])
            .map(|(a, b)| a * b)
            .sum()
    };
    use rayon::prelude::*;
    // No N x N matrix (1.9 GB at 22k faces): each class's medoid from its own pairs, and
    // each face's neighbours from one row of similarities at a time.
    let classes = class_names.len();
    // Medoid per class and the distances of members to it.
    let mut medoid_dist = vec![0f64; n];
    let mut z = vec![0f64; n];
    for c in 0..classes {
        let members: Vec<usize> = (0..n).filter(|&i| labels[i] as usize == c).collect();
        if members.len() < 3 {
            continue;
        }
        let sums: Vec<f32> = members
            .par_iter()
            .map(|&a| members.iter().map(|&m| sim(a, m)).sum())
            .collect();
        let medoid = members[(0..members.len())
            .max_by(|&a, &b| sums[a].total_cmp(&sums[b]))
            .expect("non-empty")];
        for &m in &members {
            medoid_dist[m] = 1.0 - sim(m, medoid) as f64;
        }
        let mut d: Vec<f64> = members.iter().map(|&m| medoid_dist[m]).collect();
        d.sort_by(f64::total_cmp);
        let med = d[d.len() / 2];
        let mut dev: Vec<f64> = d.iter().map(|v| (v - med).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad = (dev[dev.len() / 2] * 1.4826).max(1e-6);
        for &m in &members {
            z[m] = (medoid_dist[m] - med) / mad;
        }
    }
    let k = k.min(n - 1);
    // Most similar first, ties by the lower index: a total order, so the k first are the
    // same whether the whole row is sorted or only they are selected.
    let nearest: Vec<Vec<usize>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut row: Vec<(f32, usize)> =
                (0..n).filter(|&j| j != i).map(|j| (sim(i, j), j)).collect();
            let order =
                |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            if k < row.len() {
                row.select_nth_unstable_by(k, order);
                row.truncate(k);
            }
            row.sort_by(order);
            // Copied out, not `into_iter().collect()`: that would reuse the row's whole
            // allocation (N entries) for each face's k neighbours.
            row.iter().map(|&(_, j)| j).collect()
        })
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        let nn = &nearest[i];
        let other = nn.iter().filter(|&&j| labels[j] != labels[i]).count();
        let disagreement = other as f64 / k as f64;
        let mut votes = vec![0usize; classes];
        nn.iter().for_each(|&j| votes[labels[j] as usize] += 1);
        let says = votes
            .iter()
            .enumerate()
            .max_by_key(|(c, v)| (**v, usize::MAX - c))
            .map(|(c, _)| c)
            .unwrap_or(0);
        let majority_other = says != labels[i] as usize && votes[says] * 2 >= k;
        if (disagreement >= min_disagreement && majority_other) || z[i] >= max_z {
            out.push(Suspect {
                index: i,
                source: sources[i].clone(),
                label: class_names[labels[i] as usize].clone(),
                neighbour_disagreement: disagreement,
                medoid_z: z[i],
                neighbours_say: class_names[says].clone(),
                score: disagreement + z[i].max(0.0) / 4.0,
            });
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mislabelled_point_is_flagged() {
        // Two tight clusters; point 0 sits in cluster B but is labelled A.
        let mut f = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            let (c, v) = if i < 10 {
                (0u32, [1.0f32, 0.0, 0.01 * i as f32])
            } else {
                (1, [0.0, 1.0, 0.01 * i as f32])
            };
            f.extend_from_slice(&v);
            labels.push(c);
        }
        f[0] = 0.0;
        f[1] = 1.0;
        let names = vec!["a".to_string(), "b".to_string()];
        let sources: Vec<String> = (0..20).map(|i| format!("{i}.jpg")).collect();
        let s = super::find(
            &f,
            3,
            &labels,
            &names,
            &sources,
            &super::SuspectConfig {
                k: 5,
                min_disagreement: 0.6,
                max_z: 3.5,
            },
        );
        assert!(!s.is_empty());
        assert_eq!(s[0].index, 0);
        assert_eq!(s[0].neighbours_say, "b");
        assert!(s.iter().all(|x| x.index == 0 || x.score < s[0].score));
    }
}
