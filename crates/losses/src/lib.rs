//! Losses for distilling a teacher into the student: its bottleneck (MSE, cosine), its class
//! probabilities (KL at a temperature) and, for a metric teacher such as a face descriptor, the
//! geometry of its embedding space (relational KD: distances and angles within the batch).
//!
//! All functions take batched tensors and return a scalar (rank-0) tensor, so they compose
//! and backpropagate through candle's autograd.

use candle_core::{DType, Result, Tensor, D};

/// Mean squared error between student and teacher bottlenecks, averaged over all elements.
pub fn bottleneck_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    (student - teacher)?.sqr()?.mean_all()
}

/// Log-softmax over the last dimension. Stable: log-sum-exp with the row maximum subtracted.
/// The maximum stays in the graph (as the study's cross entropy always had it): detaching it
/// is the same in exact arithmetic but not in floats, and moved the study split's seed-42
/// cosine student by one test image.
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Softmax cross entropy from logits [N,C] and integer labels [N], mean over the batch.
/// Stable: uses log-sum-exp with the row maximum subtracted.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_p = log_softmax(logits)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = log_p.gather(&labels, 1)?;
    picked.mean_all()?.neg()
}

/// Cross entropy against a label *distribution* [N,C] (rows summing to 1), mean over the batch:
/// `mean_n -sum_c p_nc log softmax(logits_n)_c`. Mixup's mixed labels are not one class, so
/// [`cross_entropy`] cannot take them; for one-hot rows the two agree.
pub fn soft_cross_entropy(logits: &Tensor, target_probs: &Tensor) -> Result<Tensor> {
    (target_probs.to_dtype(logits.dtype())? * log_softmax(logits)?)?
        .sum(D::Minus1)?
        .mean_all()?
        .neg()
}

/// `log p` where `p > 0` and 0 where `p == 0`, so that `p * safe_log(p)` is 0 there (not NaN).
fn safe_log(p: &Tensor) -> Result<Tensor> {
    (p + p.eq(0.0)?.to_dtype(p.dtype())?)?.log()
}

/// Checks a distillation temperature and returns it.
fn check_temperature(temperature: f64) -> Result<f64> {
    if !(temperature.is_finite() && temperature > 0.0) {
        candle_core::bail!("distillation temperature must be finite and > 0, got {temperature}");
    }
    Ok(temperature)
}

/// `T^2 * mean_n sum_c p_nc (log p_nc - log softmax(student_n / T)_c)`: the KL term shared by
/// [`kl_distill`] (which has the teacher's exact log-probabilities) and [`kl_distill_probs`].
/// The teacher side is detached: it is a target.
fn kl_from_teacher(
    student_logits: &Tensor,
    teacher_p: &Tensor,
    teacher_log_p: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let t = check_temperature(temperature)?;
    let student_log_q = log_softmax(&(student_logits / t)?)?;
    let p = teacher_p.detach().to_dtype(student_log_q.dtype())?;
    let diff = teacher_log_p
        .detach()
        .to_dtype(student_log_q.dtype())?
        .sub(&student_log_q)?;
    (p * diff)?.sum(D::Minus1)?.mean_all()? * (t * t)
}

/// Hinton et al.'s knowledge distillation term, from the teacher's logits [N,C]:
/// `T^2 * mean_n KL(softmax(teacher_n / T) || softmax(student_n / T))`.
/// The temperature softens both distributions so the teacher's ranking of the wrong classes
/// carries signal; `T^2` keeps the gradient's scale independent of `T`. Zero when the logits
/// agree up to a per-row constant; stable (log-softmax) for large logits.
pub fn kl_distill(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let t = check_temperature(temperature)?;
    let teacher_log_p = log_softmax(&(teacher_logits.detach() / t)?)?;
    kl_from_teacher(student_logits, &teacher_log_p.exp()?, &teacher_log_p, t)
}

/// [`kl_distill`] from the teacher's probabilities at the temperature, `softmax(teacher / T)`
/// [N,C], instead of its logits: mixup mixes probabilities (a mix of logits is not the mix of
/// the distributions). Zero probabilities are allowed.
pub fn kl_distill_probs(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    kl_from_teacher(
        student_logits,
        teacher_probs,
        &safe_log(teacher_probs)?,
        temperature,
    )
}

/// Below this product of norms a pair counts as containing a zero vector: cos = 0.
pub const COSINE_EPS: f64 = 1e-8;

/// `1 - cos(a, b)` per row, [N]. A zero vector has cosine 0 to anything (distance 1),
/// instead of the NaN a plain division gives.
pub fn cosine_distance_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    let denom = (na * nb)?.clamp(COSINE_EPS, f64::INFINITY)?;
    1.0 - (dot / denom)?
}

/// Mean cosine distance over the batch, `mean_n (1 - cos(a_n, b_n))`: the normalised-cosine
/// distillation loss. Only the direction of the student's embedding is matched, so the student
/// may live at another scale than the teacher's descriptor.
pub fn cosine_distance(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    cosine_distance_rows(a, b)?.mean_all()
}

/// Squared lengths below this are clamped before the square root in the RKD losses: the
/// derivative of `sqrt` is infinite at 0 (the diagonal `|x_i - x_i|`, or duplicate rows).
pub const RKD_EPS: f64 = 1e-12;

/// Smooth L1 (Huber, delta 1) per element: `0.5 x^2` for `|x| < 1`, `|x| - 0.5` beyond.
fn smooth_l1(x: &Tensor) -> Result<Tensor> {
    let a = x.abs()?;
    let m = a.minimum(1.0)?;
    (m.sqr()? * 0.5)? + (a - m)?
}

/// `[N,N]` mask that is 1 off the diagonal and 0 on it.
fn off_diagonal(n: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::eye(n, like.dtype(), like.device())?.affine(-1.0, 1.0)
}

/// Checks that the student and teacher are both `[N, *]` with the same N, and returns N.
fn paired_rows(student: &Tensor, teacher: &Tensor) -> Result<usize> {
    let (n, _) = student.dims2()?;
    let (nt, _) = teacher.dims2()?;
    if n != nt {
        candle_core::bail!("RKD: student has {n} rows, teacher {nt}");
    }
    Ok(n)
}

/// Pairwise differences `d[j, i] = x_i - x_j` [N,N,D] and their stable lengths [N,N]
/// (squared length clamped at [`RKD_EPS`] before the square root).
fn pairwise_differences(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let diff = x.unsqueeze(0)?.broadcast_sub(&x.unsqueeze(1)?)?;
    let len = diff.sqr()?.sum(D::Minus1)?.maximum(RKD_EPS)?.sqrt()?;
    Ok((diff, len))
}

/// Pairwise Euclidean distances [N,N], divided by their mean over the off-diagonal pairs;
/// the diagonal is zeroed.
fn normalized_distances(x: &Tensor, mask: &Tensor, pairs: f64) -> Result<Tensor> {
    let (_, len) = pairwise_differences(x)?;
    let d = (len * mask)?;
    let mean = (d.sum_all()? / pairs)?;
    d.broadcast_div(&mean)
}

/// Park et al. 2019, "Relational Knowledge Distillation", distance-wise loss: the batch's
/// pairwise Euclidean distances, each side divided by its mean distance, compared with
/// Smooth L1 and averaged over the `N(N-1)` ordered pairs `i != j`. It transfers the *geometry*
/// of a metric teacher (who is near whom) rather than its coordinates, and is invariant to the
/// scale of either space, so the student's embedding may have any dimension and scale.
/// The teacher is detached. Zero (no pairs) for `N < 2`.
pub fn rkd_distance(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let n = paired_rows(student, teacher)?;
    if n < 2 {
        return Tensor::zeros((), student.dtype(), student.device());
    }
    let pairs = (n * (n - 1)) as f64;
    let mask = off_diagonal(n, student)?;
    let s = normalized_distances(student, &mask, pairs)?;
    let t = normalized_distances(&teacher.detach().to_dtype(student.dtype())?, &mask, pairs)?;
    (smooth_l1(&(s - t)?)? * mask)?.sum_all()? / pairs
}

/// Cosines of the angles of every triplet, `a[j, i, k] = <e_ji, e_jk>` [N,N,N] with the unit
/// difference `e_ji = (x_i - x_j) / |x_i - x_j|` (vertex `j`). Built as `[N,N,D]` unit
/// differences and one batched matmul per anchor, never an `[N,N,N,D]` tensor. Entries with a
/// repeated index are meaningless (zero vectors) and must be masked by the caller.
fn triplet_cosines(x: &Tensor) -> Result<Tensor> {
    let (diff, len) = pairwise_differences(x)?;
    let unit = diff.broadcast_div(&len.unsqueeze(D::Minus1)?)?;
    unit.matmul(&unit.t()?)
}

/// Park et al. 2019's angle-wise RKD loss: for every triplet of distinct samples, the cosine of
/// the angle at the middle one, compared between student and teacher with Smooth L1 and averaged
/// over the `N(N-1)(N-2)` ordered triplets. Angles are higher-order structure than distances and
/// invariant to scale (and rotation, translation) of either space. Memory `O(N^2 D + N^3)`.
/// The teacher is detached. Zero (no triplets) for `N < 3`. (The paper's code averages over all
/// `N^3` index triples, the degenerate ones adding 0; averaging over the real triplets only keeps
/// the loss's scale independent of the batch size. Likewise for [`rkd_distance`]'s pairs.)
pub fn rkd_angle(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let n = paired_rows(student, teacher)?;
    if n < 3 {
        return Tensor::zeros((), student.dtype(), student.device());
    }
    let triplets = (n * (n - 1) * (n - 2)) as f64;
    // mask[j, i, k] = [i != j][k != j][i != k]
    let off = off_diagonal(n, student)?;
    let mask = off
        .unsqueeze(2)?
        .broadcast_mul(&off.unsqueeze(1)?)?
        .broadcast_mul(&off.unsqueeze(0)?)?;
    let s = triplet_cosines(student)?;
    let t = triplet_cosines(&teacher.detach().to_dtype(student.dtype())?)?;
    (smooth_l1(&(s - t)?)? * mask)?.sum_all()? / triplets
}

/// Classification accuracy of logits against labels, as f64.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?;
    let labels = labels.to_dtype(DType::U32)?;
    let correct = pred
        .eq(&labels)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(correct as f64 / labels.dims1()?.max(1) as f64)
}

/// `x`, or an error saying that the `term` of a distillation objective needs `what`.
fn required<'a>(x: Option<&'a Tensor>, what: &str, term: &str) -> Result<&'a Tensor> {
    match x {
        Some(x) => Ok(x),
        None => candle_core::bail!("distill: the {term} term has a nonzero weight but no {what}"),
    }
}

/// The terms of one objective, kept apart for logging.
#[derive(Debug)]
pub struct LossTerms {
    pub total: Tensor,
    pub cross_entropy: Option<Tensor>,
    pub mse: Option<Tensor>,
    pub cosine: Option<Tensor>,
    /// Distillation KL to the teacher's softened probabilities ([`kl_distill_probs`]).
    pub kl: Option<Tensor>,
    /// RKD distance-wise term ([`rkd_distance`]).
    pub rkd: Option<Tensor>,
    /// RKD angle-wise term ([`rkd_angle`]).
    pub angle: Option<Tensor>,
}

impl LossTerms {
    /// Terms with only a total, every optional term absent.
    fn total_only(total: Tensor) -> Self {
        LossTerms {
            total,
            cross_entropy: None,
            mse: None,
            cosine: None,
            kl: None,
            rkd: None,
            angle: None,
        }
    }
}

/// What [`Objective::compute_distill`] compares the student with.
#[derive(Debug, Clone, Copy)]
pub struct DistillTargets<'a> {
    /// Label distribution per sample [N,C] (one-hot, or mixed by mixup).
    pub labels: &'a Tensor,
    /// The student's embedding [N,D] compared with the teacher's descriptor.
    pub embedding: Option<&'a Tensor>,
    /// The teacher's descriptor for the same view [N,D].
    pub teacher: Option<&'a Tensor>,
    /// The teacher's class probabilities at the temperature [N,C] (its probe on the same view).
    pub teacher_probs: Option<&'a Tensor>,
}

/// The training objectives of the study.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Objective {
    /// Phase 1 of 2step: MSE to the teacher bottleneck.
    Mse,
    /// Cross entropy on labels only (2step phase 2, base, probe).
    CrossEntropy,
    /// Cross entropy + beta x mean cosine distance to the teacher bottleneck.
    Cosine { beta: f64 },
    /// Distillation of a metric teacher, a weighted sum (a zero weight skips its term):
    /// `ce` x soft cross entropy on the (possibly mixed) labels, `kl` x [`kl_distill_probs`] at
    /// `temperature` to the teacher's probabilities, `cos` x [`cosine_distance`], `rkd` x
    /// [`rkd_distance`] and `angle` x [`rkd_angle`] between the student's embedding and the
    /// teacher's descriptor. Evaluated by [`Objective::compute_distill`].
    Distill {
        ce: f64,
        kl: f64,
        temperature: f64,
        cos: f64,
        rkd: f64,
        angle: f64,
    },
}

impl Objective {
    /// Evaluates the objective. `bottleneck`/`teacher` are needed by Mse and Cosine.
    /// Distill has more inputs (label distributions, teacher probabilities) and is an error
    /// here: use [`Objective::compute_distill`].
    pub fn compute(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        bottleneck: Option<&Tensor>,
        teacher: Option<&Tensor>,
    ) -> Result<LossTerms> {
        let need = || -> Result<(&Tensor, &Tensor)> {
            match (bottleneck, teacher) {
                (Some(b), Some(t)) => Ok((b, t)),
                _ => {
                    candle_core::bail!("{self:?} needs the student bottleneck and teacher targets")
                }
            }
        };
        match *self {
            Objective::Mse => {
                let (b, t) = need()?;
                let mse = bottleneck_mse(b, t)?;
                Ok(LossTerms {
                    mse: Some(mse.clone()),
                    ..LossTerms::total_only(mse)
                })
            }
            Objective::CrossEntropy => {
                let ce = cross_entropy(logits, labels)?;
                Ok(LossTerms {
                    cross_entropy: Some(ce.clone()),
                    ..LossTerms::total_only(ce)
                })
            }
            Objective::Cosine { beta } => {
                let (b, t) = need()?;
                let ce = cross_entropy(logits, labels)?;
                let cos = cosine_distance(b, t)?;
                let total = (&ce + (&cos * beta)?)?;
                Ok(LossTerms {
                    cross_entropy: Some(ce),
                    cosine: Some(cos),
                    ..LossTerms::total_only(total)
                })
            }
            Objective::Distill { .. } => candle_core::bail!(
                "{self:?} needs label distributions and teacher probabilities: \
                 use Objective::compute_distill"
            ),
        }
    }

    /// Evaluates [`Objective::Distill`] on the student's `logits` [N,C]. Each term with a
    /// nonzero weight is computed and returned for logging; the inputs it needs must be in
    /// `targets` (an error names what is missing). Other objectives are an error: use
    /// [`Objective::compute`].
    pub fn compute_distill(&self, logits: &Tensor, targets: &DistillTargets) -> Result<LossTerms> {
        let Objective::Distill {
            ce,
            kl,
            temperature,
            cos,
            rkd,
            angle,
        } = *self
        else {
            candle_core::bail!("{self:?} is not a distillation objective: use Objective::compute");
        };
        // The student's embedding and the teacher's descriptor, a detached target in the
        // embedding's dtype.
        let metric = |term: &str| -> Result<(&Tensor, Tensor)> {
            let e = required(targets.embedding, "the student's embedding", term)?;
            let t = required(targets.teacher, "the teacher's descriptor", term)?;
            Ok((e, t.detach().to_dtype(e.dtype())?))
        };
        let term = |weight: f64, f: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
            if weight == 0.0 {
                Ok(None)
            } else {
                f().map(Some)
            }
        };
        let ce_term = term(ce, &|| soft_cross_entropy(logits, targets.labels))?;
        let kl_term = term(kl, &|| {
            let probs = required(targets.teacher_probs, "the teacher's probabilities", "kl")?;
            kl_distill_probs(logits, probs, temperature)
        })?;
        let cos_term = term(cos, &|| {
            let (e, t) = metric("cos")?;
            cosine_distance(e, &t)
        })?;
        let rkd_term = term(rkd, &|| {
            let (e, t) = metric("rkd")?;
            rkd_distance(e, &t)
        })?;
        let angle_term = term(angle, &|| {
            let (e, t) = metric("angle")?;
            rkd_angle(e, &t)
        })?;
        let mut total = Tensor::zeros((), logits.dtype(), logits.device())?;
        for (weight, value) in [
            (ce, &ce_term),
            (kl, &kl_term),
            (cos, &cos_term),
            (rkd, &rkd_term),
            (angle, &angle_term),
        ] {
            if let Some(value) = value {
                total = (total + (value * weight)?)?;
            }
        }
        Ok(LossTerms {
            total,
            cross_entropy: ce_term,
            mse: None,
            cosine: cos_term,
            kl: kl_term,
            rkd: rkd_term,
            angle: angle_term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }
    fn scalar(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn mse_by_hand() {
        let a = t(&[1., 2., 3., 4.], (2, 2));
        let b = t(&[1., 0., 0., 4.], (2, 2));
        // (0 + 4 + 9 + 0) / 4
        assert!((scalar(&bottleneck_mse(&a, &b).unwrap()) - 3.25).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_by_hand_and_stable() {
        let logits = t(&[0., 0., 1000., 0.], (2, 2));
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        // row 0: uniform -> ln 2; row 1: label 0 has logit 1000 vs 0 -> ~0
        let ce = scalar(&cross_entropy(&logits, &labels).unwrap());
        assert!((ce - std::f64::consts::LN_2 / 2.0).abs() < 1e-6, "{ce}");
        let logits = t(&[2., 1., 0.1, 0., 0., 0.], (2, 3));
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let r0 = -(2f64.exp() / (2f64.exp() + 1f64.exp() + 0.1f64.exp())).ln();
        let r1 = 3f64.ln();
        let ce = scalar(&cross_entropy(&logits, &labels).unwrap());
        assert!((ce - (r0 + r1) / 2.0).abs() < 1e-5, "{ce}");
    }

    #[test]
    fn cosine_by_hand_and_zero_guard() {
        let a = t(&[1., 0., 1., 1., 0., 0.], (3, 2));
        let b = t(&[0., 1., 2., 2., 5., 5.], (3, 2));
        let d = cosine_distance_rows(&a, &b)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((d[0] - 1.0).abs() < 1e-6); // orthogonal
        assert!(d[1].abs() < 1e-6); // parallel
        assert!((d[2] - 1.0).abs() < 1e-6 && d[2].is_finite()); // zero vector
        let opposite = cosine_distance(&t(&[1., 0.], (1, 2)), &t(&[-3., 0.], (1, 2))).unwrap();
        assert!((scalar(&opposite) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn objectives_combine_terms() {
        let logits = t(&[0., 0.], (1, 2));
        let labels = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let b = t(&[1., 0.], (1, 2));
        let teacher = t(&[0., 1.], (1, 2));
        let terms = Objective::Cosine { beta: 0.5 }
            .compute(&logits, &labels, Some(&b), Some(&teacher))
            .unwrap();
        assert!((scalar(&terms.total) - (std::f64::consts::LN_2 + 0.5)).abs() < 1e-6);
        let mse = Objective::Mse
            .compute(&logits, &labels, Some(&b), Some(&teacher))
            .unwrap();
        assert!((scalar(&mse.total) - 1.0).abs() < 1e-6);
        assert!(Objective::Mse
            .compute(&logits, &labels, None, None)
            .is_err());
    }

    /// Central finite differences in f64 against candle's backprop.
    fn check_grad(f: impl Fn(&Tensor) -> Tensor, x0: &[f64], shape: (usize, usize)) {
        let var = Var::from_tensor(&Tensor::from_slice(x0, shape, &Device::Cpu).unwrap()).unwrap();
        let loss = f(var.as_tensor());
        let grads = loss.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let h = 1e-6;
        for i in 0..x0.len() {
            let mut p = x0.to_vec();
            p[i] += h;
            let mut m = x0.to_vec();
            m[i] -= h;
            let fp = scalar(&f(&Tensor::from_slice(&p, shape, &Device::Cpu).unwrap()));
            let fm = scalar(&f(&Tensor::from_slice(&m, shape, &Device::Cpu).unwrap()));
            let num = (fp - fm) / (2.0 * h);
            assert!(
                (num - g[i]).abs() < 1e-5 * (1.0 + num.abs()),
                "grad {i}: numeric {num} vs autograd {}",
                g[i]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x0 = [0.3, -1.2, 2.0, 0.7, 0.1, -0.4];
        let other =
            Tensor::from_slice(&[1.0f64, 0.5, -0.3, 0.2, 0.9, 1.1], (2, 3), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        check_grad(|x| bottleneck_mse(x, &other).unwrap(), &x0, (2, 3));
        check_grad(|x| cross_entropy(x, &labels).unwrap(), &x0, (2, 3));
        check_grad(|x| cosine_distance(x, &other).unwrap(), &x0, (2, 3));
    }

    fn t64(v: &[f64], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    /// A fixed pseudo-random [n, d] f64 matrix in [-1, 1).
    fn points(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n * d)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn softmax_rows(x: &Tensor) -> Tensor {
        log_softmax(x).unwrap().exp().unwrap()
    }

    /// True when `x` has no gradient in `grads` (or an all-zero one).
    fn no_grad(grads: &candle_core::backprop::GradStore, x: &Tensor) -> bool {
        grads
            .get(x)
            .map(|g| scalar(&g.abs().unwrap().sum_all().unwrap()) == 0.0)
            .unwrap_or(true)
    }

    #[test]
    fn soft_cross_entropy_matches_cross_entropy_on_one_hot_and_is_linear_in_targets() {
        let logits = t64(&points(3, 4, 1), (3, 4));
        let a = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1u32, 1, 0], &Device::Cpu).unwrap();
        let one_hot = |l: &Tensor| candle_nn::encoding::one_hot(l.clone(), 4, 1f64, 0f64).unwrap();
        let (ya, yb) = (one_hot(&a), one_hot(&b));
        let ce_a = scalar(&cross_entropy(&logits, &a).unwrap());
        let ce_b = scalar(&cross_entropy(&logits, &b).unwrap());
        let soft_a = scalar(&soft_cross_entropy(&logits, &ya).unwrap());
        assert!((soft_a - ce_a).abs() < 1e-12, "{soft_a} vs {ce_a}");
        // mixup: lambda ya + (1 - lambda) yb gives lambda ce_a + (1 - lambda) ce_b
        let lambda = 0.3;
        let mixed = ((&ya * lambda).unwrap() + (&yb * (1.0 - lambda)).unwrap()).unwrap();
        let soft = scalar(&soft_cross_entropy(&logits, &mixed).unwrap());
        assert!((soft - (lambda * ce_a + (1.0 - lambda) * ce_b)).abs() < 1e-12);
        // stable for huge logits
        let huge = t64(&[1000., 0., -1000., 0.], (2, 2));
        let y = t64(&[1., 0., 0.5, 0.5], (2, 2));
        let v = scalar(&soft_cross_entropy(&huge, &y).unwrap());
        // row 0: ~0; row 1: -(0.5 ln p0 + 0.5 ln p1) = 0.5 x 1000 + ~0
        assert!((v - 250.0).abs() < 1e-9, "{v}");
        check_grad(
            |x| soft_cross_entropy(x, &mixed).unwrap(),
            &points(3, 4, 2),
            (3, 4),
        );
    }

    #[test]
    fn kl_distill_by_hand() {
        // teacher (ln 3, 0): p = (3/4, 1/4); student (0, 0): q = (1/2, 1/2)
        let kl = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
        let student = t64(&[0., 0.], (1, 2));
        let v = scalar(&kl_distill(&student, &t64(&[3f64.ln(), 0.], (1, 2)), 1.0).unwrap());
        assert!((v - kl).abs() < 1e-12, "{v} vs {kl}");
        // at T = 2 the teacher's logits are halved, the student's (0, 0) stay uniform: T^2 x KL
        let v = scalar(&kl_distill(&student, &t64(&[2. * 3f64.ln(), 0.], (1, 2)), 2.0).unwrap());
        assert!((v - 4.0 * kl).abs() < 1e-12, "{v} vs {}", 4.0 * kl);
        // the same from the probabilities
        let v = scalar(&kl_distill_probs(&student, &t64(&[0.75, 0.25], (1, 2)), 2.0).unwrap());
        assert!((v - 4.0 * kl).abs() < 1e-12, "{v}");
        // a zero probability: KL((1, 0) || (1/2, 1/2)) = ln 2, finite
        let v = scalar(&kl_distill_probs(&student, &t64(&[1., 0.], (1, 2)), 1.0).unwrap());
        assert!((v - std::f64::consts::LN_2).abs() < 1e-12, "{v}");
        assert!(kl_distill(&student, &student, 0.0).is_err());
        assert!(kl_distill_probs(&student, &student, f64::NAN).is_err());
    }

    #[test]
    fn kl_distill_zero_for_equal_logits_and_stable() {
        let x = t64(&points(4, 5, 3), (4, 5));
        for temp in [0.5, 1.0, 4.0] {
            assert!(scalar(&kl_distill(&x, &x, temp).unwrap()).abs() < 1e-12);
            // a per-row constant does not change the softmax
            let shifted = x.broadcast_add(&t64(&[1., -7., 30., 0.], (4, 1))).unwrap();
            assert!(scalar(&kl_distill(&shifted, &x, temp).unwrap()).abs() < 1e-12);
        }
        let huge = t64(&[1000., 0., -1000., 5.], (2, 2));
        let v = scalar(&kl_distill(&huge, &huge, 1.0).unwrap());
        assert!(v.is_finite() && v.abs() < 1e-12, "{v}");
        let v = scalar(&kl_distill(&huge, &huge.neg().unwrap(), 1.0).unwrap());
        assert!(v.is_finite() && v > 100.0, "{v}");
    }

    #[test]
    fn kl_distill_probs_agrees_with_logits_and_gradients_match() {
        let teacher = t64(&points(3, 4, 4), (3, 4));
        let x0 = points(3, 4, 5);
        let student = t64(&x0, (3, 4));
        for temp in [1.0, 3.0] {
            let probs = softmax_rows(&(&teacher / temp).unwrap());
            let a = scalar(&kl_distill(&student, &teacher, temp).unwrap());
            let b = scalar(&kl_distill_probs(&student, &probs, temp).unwrap());
            assert!(a > 0.0 && (a - b).abs() < 1e-12, "{a} vs {b}");
            check_grad(|x| kl_distill(x, &teacher, temp).unwrap(), &x0, (3, 4));
            check_grad(|x| kl_distill_probs(x, &probs, temp).unwrap(), &x0, (3, 4));
        }
        // the teacher is a target: no gradient reaches it
        let tv = Var::from_tensor(&teacher).unwrap();
        let sv = Var::from_tensor(&student).unwrap();
        let grads = kl_distill(sv.as_tensor(), tv.as_tensor(), 2.0)
            .unwrap()
            .backward()
            .unwrap();
        assert!(no_grad(&grads, tv.as_tensor()));
        assert!(!no_grad(&grads, sv.as_tensor()));
    }

    #[test]
    fn rkd_distance_by_hand() {
        // student on a line at 0, 1, 2: distances (1, 2, 1) / mean 4/3 = (3/4, 3/2, 3/4);
        // teacher an equilateral triangle: (1, 1, 1). Huber of (-1/4, 1/2, -1/4) = (1/32, 1/8,
        // 1/32), mean 1/16.
        let student = t64(&[0., 0., 1., 0., 2., 0.], (3, 2));
        let h = 3f64.sqrt() / 2.0;
        let teacher = t64(&[0., 0., 1., 0., 0.5, h], (3, 2));
        let v = scalar(&rkd_distance(&student, &teacher).unwrap());
        assert!((v - 1.0 / 16.0).abs() < 1e-12, "{v}");
    }

    #[test]
    fn rkd_distance_scale_invariant_and_positive_when_permuted() {
        let x0 = points(6, 4, 6);
        let teacher = t64(&x0, (6, 4));
        for scale in [1.0, 0.01, 37.0] {
            let student = (&teacher * scale).unwrap();
            let v = scalar(&rkd_distance(&student, &teacher).unwrap());
            assert!(v.abs() < 1e-12, "scale {scale}: {v}");
        }
        // a different embedding dimension is fine: only distances are compared
        let wide = Tensor::cat(&[&teacher, &teacher.zeros_like().unwrap()], 1).unwrap();
        assert!(scalar(&rkd_distance(&wide, &teacher).unwrap()).abs() < 1e-12);
        let perm = Tensor::new(&[1u32, 0, 2, 3, 5, 4], &Device::Cpu).unwrap();
        let permuted = teacher.index_select(&perm, 0).unwrap();
        assert!(scalar(&rkd_distance(&permuted, &teacher).unwrap()) > 1e-4);
        assert!(rkd_distance(&teacher, &t64(&x0[..20], (5, 4))).is_err());
    }

    #[test]
    fn rkd_distance_gradients_and_edge_cases() {
        let teacher = t64(&points(5, 3, 7), (5, 3));
        let x0 = points(5, 3, 8);
        check_grad(|x| rkd_distance(x, &teacher).unwrap(), &x0, (5, 3));
        // the teacher is detached
        let tv = Var::from_tensor(&teacher).unwrap();
        let sv = Var::from_tensor(&t64(&x0, (5, 3))).unwrap();
        let grads = rkd_distance(sv.as_tensor(), tv.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        assert!(no_grad(&grads, tv.as_tensor()));
        // N = 2: one distance each side, both normalise to 1
        let two = t64(&[0.1, 0.2, -0.3, 0.4], (2, 2));
        let v = rkd_distance(&two, &t64(&[5., 5., 1., 2.], (2, 2))).unwrap();
        assert!(scalar(&v).abs() < 1e-12);
        check_grad(
            |x| rkd_distance(x, &t64(&[5., 5., 1., 2.], (2, 2))).unwrap(),
            &[0.1, 0.2, -0.3, 0.4],
            (2, 2),
        );
        // N = 1: no pairs
        let one = t64(&[1., 2.], (1, 2));
        assert_eq!(scalar(&rkd_distance(&one, &one).unwrap()), 0.0);
        // duplicate student rows (and a collapsed teacher): finite value and gradient
        let mut dup = x0.clone();
        dup.copy_within(0..3, 3);
        let sv = Var::from_tensor(&t64(&dup, (5, 3))).unwrap();
        for t in [&teacher, &teacher.zeros_like().unwrap()] {
            let v = rkd_distance(sv.as_tensor(), t).unwrap();
            assert!(scalar(&v).is_finite());
            let g = v.backward().unwrap();
            let g = g.get(sv.as_tensor()).unwrap().sum_all().unwrap();
            assert!(scalar(&g).is_finite());
        }
    }

    #[test]
    fn rkd_angle_by_hand() {
        // student on a line at 0, 1, 2: cosines 1 at the ends, -1 in the middle; teacher an
        // equilateral triangle: 1/2 everywhere. Huber of (1/2, -3/2, 1/2) = (1/8, 1, 1/8).
        let student = t64(&[0., 0., 1., 0., 2., 0.], (3, 2));
        let h = 3f64.sqrt() / 2.0;
        let teacher = t64(&[0., 0., 1., 0., 0.5, h], (3, 2));
        let v = scalar(&rkd_angle(&student, &teacher).unwrap());
        assert!((v - 1.25 / 3.0).abs() < 1e-12, "{v}");
    }

    #[test]
    fn rkd_angle_invariant_to_scale_and_positive_otherwise() {
        let x0 = points(6, 4, 9);
        let teacher = t64(&x0, (6, 4));
        for scale in [1.0, 0.01, 37.0] {
            let student = (&teacher * scale).unwrap().affine(1.0, 3.0).unwrap();
            let v = scalar(&rkd_angle(&student, &teacher).unwrap());
            assert!(v.abs() < 1e-12, "scale {scale}: {v}");
        }
        let other = t64(&points(6, 4, 10), (6, 4));
        assert!(scalar(&rkd_angle(&other, &teacher).unwrap()) > 1e-3);
        let perm = Tensor::new(&[1u32, 0, 2, 3, 5, 4], &Device::Cpu).unwrap();
        let permuted = teacher.index_select(&perm, 0).unwrap();
        assert!(scalar(&rkd_angle(&permuted, &teacher).unwrap()) > 1e-4);
    }

    #[test]
    fn rkd_angle_gradients_and_edge_cases() {
        let teacher = t64(&points(4, 3, 11), (4, 3));
        let x0 = points(4, 3, 12);
        check_grad(|x| rkd_angle(x, &teacher).unwrap(), &x0, (4, 3));
        let tv = Var::from_tensor(&teacher).unwrap();
        let sv = Var::from_tensor(&t64(&x0, (4, 3))).unwrap();
        let grads = rkd_angle(sv.as_tensor(), tv.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        assert!(no_grad(&grads, tv.as_tensor()));
        // N = 3: the smallest batch with a triangle
        let x3 = points(3, 2, 13);
        let t3 = t64(&points(3, 2, 14), (3, 2));
        assert!(scalar(&rkd_angle(&t64(&x3, (3, 2)), &t3).unwrap()).is_finite());
        check_grad(|x| rkd_angle(x, &t3).unwrap(), &x3, (3, 2));
        // N = 2: no triplets
        let two = t64(&[0.1, 0.2, -0.3, 0.4], (2, 2));
        assert_eq!(scalar(&rkd_angle(&two, &two).unwrap()), 0.0);
        // duplicate student rows: finite value and gradient
        let mut dup = x0.clone();
        dup.copy_within(0..3, 3);
        let sv = Var::from_tensor(&t64(&dup, (4, 3))).unwrap();
        let v = rkd_angle(sv.as_tensor(), &teacher).unwrap();
        assert!(scalar(&v).is_finite());
        let g = v.backward().unwrap();
        assert!(scalar(&g.get(sv.as_tensor()).unwrap().sum_all().unwrap()).is_finite());
    }

    #[test]
    fn rkd_works_in_f32() {
        let teacher = t64(&points(5, 3, 15), (5, 3)).to_dtype(DType::F32).unwrap();
        let student = (&teacher * 2.0).unwrap();
        assert!(scalar(&rkd_distance(&student, &teacher).unwrap()).abs() < 1e-6);
        assert!(scalar(&rkd_angle(&student, &teacher).unwrap()).abs() < 1e-6);
        // an f64 teacher with an f32 student is converted
        let t64_teacher = teacher.to_dtype(DType::F64).unwrap();
        assert!(scalar(&rkd_distance(&student, &t64_teacher).unwrap()).abs() < 1e-6);
    }

    fn distill(ce: f64, kl: f64, cos: f64, rkd: f64, angle: f64) -> Objective {
        Objective::Distill {
            ce,
            kl,
            temperature: 2.0,
            cos,
            rkd,
            angle,
        }
    }

    #[test]
    fn distill_objective_sums_weighted_terms() {
        let logits = t64(&points(4, 3, 16), (4, 3));
        let labels = t64(
            &[1., 0., 0., 0., 0.5, 0.5, 0., 0., 1., 0.2, 0.8, 0.],
            (4, 3),
        );
        let probs = softmax_rows(&t64(&points(4, 3, 17), (4, 3)));
        let emb = t64(&points(4, 5, 18), (4, 5));
        let teacher = t64(&points(4, 5, 19), (4, 5));
        let targets = DistillTargets {
            labels: &labels,
            embedding: Some(&emb),
            teacher: Some(&teacher),
            teacher_probs: Some(&probs),
        };
        let terms = distill(1.0, 0.5, 0.25, 2.0, 3.0)
            .compute_distill(&logits, &targets)
            .unwrap();
        let ce = scalar(&soft_cross_entropy(&logits, &labels).unwrap());
        let kl = scalar(&kl_distill_probs(&logits, &probs, 2.0).unwrap());
        let cos = scalar(&cosine_distance(&emb, &teacher).unwrap());
        let rkd = scalar(&rkd_distance(&emb, &teacher).unwrap());
        let angle = scalar(&rkd_angle(&emb, &teacher).unwrap());
        let want = ce + 0.5 * kl + 0.25 * cos + 2.0 * rkd + 3.0 * angle;
        assert!((scalar(&terms.total) - want).abs() < 1e-12);
        assert_eq!(scalar(terms.cross_entropy.as_ref().unwrap()), ce);
        assert_eq!(scalar(terms.kl.as_ref().unwrap()), kl);
        assert_eq!(scalar(terms.cosine.as_ref().unwrap()), cos);
        assert_eq!(scalar(terms.rkd.as_ref().unwrap()), rkd);
        assert_eq!(scalar(terms.angle.as_ref().unwrap()), angle);
        assert!(terms.mse.is_none());

        // zero weights skip their terms, and their inputs may be absent
        let bare = DistillTargets {
            labels: &labels,
            embedding: None,
            teacher: None,
            teacher_probs: None,
        };
        let terms = distill(1.0, 0.0, 0.0, 0.0, 0.0)
            .compute_distill(&logits, &bare)
            .unwrap();
        assert_eq!(scalar(&terms.total), ce);
        assert!(terms.kl.is_none() && terms.cosine.is_none());
        assert!(terms.rkd.is_none() && terms.angle.is_none());
        let terms = distill(0.0, 0.0, 0.0, 0.0, 0.0)
            .compute_distill(&logits, &bare)
            .unwrap();
        assert_eq!(scalar(&terms.total), 0.0);
        assert!(terms.cross_entropy.is_none());
    }

    #[test]
    fn distill_objective_errors_instead_of_panicking() {
        let logits = t64(&points(3, 2, 20), (3, 2));
        let labels = t64(&[1., 0., 0., 1., 1., 0.], (3, 2));
        let emb = t64(&points(3, 4, 21), (3, 4));
        let only_labels = DistillTargets {
            labels: &labels,
            embedding: None,
            teacher: None,
            teacher_probs: None,
        };
        let err = |o: Objective, targets: &DistillTargets| {
            o.compute_distill(&logits, targets).unwrap_err().to_string()
        };
        assert!(err(distill(1.0, 1.0, 0.0, 0.0, 0.0), &only_labels).contains("probabilities"));
        assert!(err(distill(0.0, 0.0, 1.0, 0.0, 0.0), &only_labels).contains("embedding"));
        let no_teacher = DistillTargets {
            embedding: Some(&emb),
            ..only_labels
        };
        assert!(err(distill(0.0, 0.0, 0.0, 1.0, 0.0), &no_teacher).contains("descriptor"));
        assert!(err(distill(0.0, 0.0, 0.0, 0.0, 1.0), &no_teacher).contains("angle"));
        // the other entry point says where to go
        let int_labels = Tensor::new(&[0u32, 1, 0], &Device::Cpu).unwrap();
        let e = distill(1.0, 0.0, 0.0, 0.0, 0.0)
            .compute(&logits, &int_labels, None, None)
            .unwrap_err();
        assert!(e.to_string().contains("compute_distill"), "{e}");
        let e = Objective::CrossEntropy
            .compute_distill(&logits, &only_labels)
            .unwrap_err();
        assert!(e.to_string().contains("Objective::compute"), "{e}");
        // a bad temperature is an error too
        let probs = softmax_rows(&logits);
        let with_probs = DistillTargets {
            teacher_probs: Some(&probs),
            ..only_labels
        };
        let cold = Objective::Distill {
            ce: 0.0,
            kl: 1.0,
            temperature: 0.0,
            cos: 0.0,
            rkd: 0.0,
            angle: 0.0,
        };
        assert!(cold.compute_distill(&logits, &with_probs).is_err());
    }

    #[test]
    fn distill_objective_backpropagates_to_logits_and_embedding() {
        let logits = Var::from_tensor(&t64(&points(4, 3, 22), (4, 3))).unwrap();
        let emb = Var::from_tensor(&t64(&points(4, 5, 23), (4, 5))).unwrap();
        let teacher = Var::from_tensor(&t64(&points(4, 5, 24), (4, 5))).unwrap();
        let labels = t64(&[1., 0., 0., 0., 1., 0., 0., 0., 1., 0.5, 0.5, 0.], (4, 3));
        let probs = softmax_rows(&t64(&points(4, 3, 25), (4, 3)));
        let targets = DistillTargets {
            labels: &labels,
            embedding: Some(emb.as_tensor()),
            teacher: Some(teacher.as_tensor()),
            teacher_probs: Some(&probs),
        };
        let terms = distill(1.0, 1.0, 1.0, 1.0, 1.0)
            .compute_distill(logits.as_tensor(), &targets)
            .unwrap();
        let grads = terms.total.backward().unwrap();
        assert!(!no_grad(&grads, logits.as_tensor()));
        assert!(!no_grad(&grads, emb.as_tensor()));
        assert!(no_grad(&grads, teacher.as_tensor()));
    }

    #[test]
    fn distill_objective_takes_f64_targets_for_an_f32_student() {
        let f32_ = |x: Tensor| x.to_dtype(DType::F32).unwrap();
        let logits = f32_(t64(&points(4, 3, 26), (4, 3)));
        let emb = f32_(t64(&points(4, 5, 27), (4, 5)));
        let labels = t64(&[1., 0., 0., 0., 1., 0., 0., 0., 1., 0.5, 0.5, 0.], (4, 3));
        let probs = softmax_rows(&t64(&points(4, 3, 28), (4, 3)));
        let teacher = t64(&points(4, 5, 29), (4, 5));
        let targets = DistillTargets {
            labels: &labels,
            embedding: Some(&emb),
            teacher: Some(&teacher),
            teacher_probs: Some(&probs),
        };
        let terms = distill(1.0, 1.0, 1.0, 1.0, 1.0)
            .compute_distill(&logits, &targets)
            .unwrap();
        assert_eq!(terms.total.dtype(), DType::F32);
        assert!(scalar(&terms.total).is_finite());
    }

    #[test]
    fn objective_serde_keeps_the_tagged_format() {
        let o = distill(1.0, 0.5, 0.0, 2.0, 4.0);
        let json = serde_json::to_value(o).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "distill", "ce": 1.0, "kl": 0.5, "temperature": 2.0,
                "cos": 0.0, "rkd": 2.0, "angle": 4.0})
        );
        assert_eq!(serde_json::from_value::<Objective>(json).unwrap(), o);
        for (o, s) in [
            (Objective::Mse, r#"{"kind":"mse"}"#),
            (Objective::CrossEntropy, r#"{"kind":"crossentropy"}"#),
            (
                Objective::Cosine { beta: 0.5 },
                r#"{"kind":"cosine","beta":0.5}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&o).unwrap(), s);
            assert_eq!(serde_json::from_str::<Objective>(s).unwrap(), o);
        }
    }
}
