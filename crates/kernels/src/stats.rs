//! Small statistics over feature rows, shared by the stages that summarise descriptors.

/// The per-dimension median of `points` (zeros for none): a centre that a few faces of
/// another person do not pull. The open-set rule's gallery centres (`train::open_set`)
/// and the identity analysis's folder centres (`eval_tsne::identity`) both use it.
pub fn median(points: &[&[f32]], dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|d| {
            let mut v: Vec<f32> = points.iter().map(|p| p[d]).collect();
            v.sort_by(f32::total_cmp);
            let n = v.len();
            if n == 0 {
                0.0
            } else if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        })
        .collect()
}
