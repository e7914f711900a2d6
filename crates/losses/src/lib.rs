//! Losses for distilling a teacher's bottleneck into the student.
//!
//! All functions take batched tensors and return a scalar (rank-0) tensor, so they compose
//! and backpropagate through candle's autograd.

use candle_core::{DType, Result, Tensor, D};

/// Mean squared error between student and teacher bottlenecks, averaged over all elements.
pub fn bottleneck_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    (student - teacher)?.sqr()?.mean_all()
}

/// Softmax cross entropy from logits [N,C] and integer labels [N], mean over the batch.
/// Stable: uses log-sum-exp with the row maximum subtracted.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_p = shifted.broadcast_sub(&lse)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = log_p.gather(&labels, 1)?;
    picked.mean_all()?.neg()
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

/// Mean cosine distance over the batch.
pub fn cosine_distance(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    cosine_distance_rows(a, b)?.mean_all()
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

/// The terms of one objective, kept apart for logging.
#[derive(Debug)]
pub struct LossTerms {
    pub total: Tensor,
    pub cross_entropy: Option<Tensor>,
    pub mse: Option<Tensor>,
    pub cosine: Option<Tensor>,
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
}

impl Objective {
    /// Evaluates the objective. `bottleneck`/`teacher` are needed by Mse and Cosine.
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
                    total: mse.clone(),
                    cross_entropy: None,
                    mse: Some(mse),
                    cosine: None,
                })
            }
            Objective::CrossEntropy => {
                let ce = cross_entropy(logits, labels)?;
                Ok(LossTerms {
                    total: ce.clone(),
                    cross_entropy: Some(ce),
                    mse: None,
                    cosine: None,
                })
            }
            Objective::Cosine { beta } => {
                let (b, t) = need()?;
                let ce = cross_entropy(logits, labels)?;
                let cos = cosine_distance(b, t)?;
                let total = (&ce + (&cos * beta)?)?;
                Ok(LossTerms {
                    total,
                    cross_entropy: Some(ce),
                    mse: None,
                    cosine: Some(cos),
                })
            }
        }
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
}
