//! Small statistics over feature rows, shared by the stages that summarise descriptors, and
//! the one seeded generator for their reproducible draws.

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

/// Marsaglia's xorshift64 (shifts 13, 7, 17): the project's one small seeded generator,
/// for draws that must repeat exactly and need no statistical quality (Chinese whispers'
/// visiting order, sampled calibration sets, planted errors).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// `seed` must not be 0 (a zero state stays zero).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A draw in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Moves a random `k` of `items` to its front (a partial Fisher-Yates shuffle).
    pub fn pick_front<T>(&mut self, items: &mut [T], k: usize) {
        for s in 0..k.min(items.len()) {
            let t = s + self.below(items.len() - s);
            items.swap(s, t);
        }
    }
}
