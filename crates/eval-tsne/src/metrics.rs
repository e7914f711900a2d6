//! Classification metrics from predicted probabilities.

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub top1: f64,
    pub top3: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Metrics of `probs` ([n, classes]) against `labels`. Classes without support count in
/// the macro averages only when something was predicted for them (as scikit-learn's
/// `labels=present` behaviour would have it: absent classes are skipped).
pub fn compute(probs: &[f32], labels: &[u32], class_names: &[String]) -> Metrics {
    let c = class_names.len();
    let n = labels.len();
    let mut confusion = vec![vec![0usize; c]; c];
    let (mut top1, mut top3) = (0usize, 0usize);
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * c..(i + 1) * c];
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        confusion[l as usize][order[0]] += 1;
        top1 += usize::from(order[0] == l as usize);
        top3 += usize::from(order.iter().take(3).any(|&o| o == l as usize));
    }
    let mut per_class = Vec::new();
    let (mut sp, mut sr, mut sf, mut counted) = (0.0, 0.0, 0.0, 0usize);
    for k in 0..c {
        let tp = confusion[k][k] as f64;
        let support: usize = confusion[k].iter().sum();
        let predicted: usize = (0..c).map(|t| confusion[t][k]).sum();
        let precision = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        if support > 0 || predicted > 0 {
            sp += precision;
            sr += recall;
            sf += f1;
            counted += 1;
        }
        per_class.push(ClassMetrics {
            class: class_names[k].clone(),
            support,
            precision,
            recall,
            f1,
        });
    }
    let m = counted.max(1) as f64;
    Metrics {
        n,
        top1: top1 as f64 / n.max(1) as f64,
        top3: top3 as f64 / n.max(1) as f64,
        macro_precision: sp / m,
        macro_recall: sr / m,
        macro_f1: sf / m,
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_predictions() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // true: a a b b c ; predicted: a b b b a ; c is never predicted.
        let probs = [
            0.8, 0.1, 0.1, //
            0.3, 0.6, 0.1, //
            0.1, 0.7, 0.2, //
            0.2, 0.5, 0.3, //
            0.5, 0.2, 0.3f32,
        ];
        let m = compute(&probs, &[0, 0, 1, 1, 2], &names);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert!((m.top1 - 0.6).abs() < 1e-12);
        assert!((m.top3 - 1.0).abs() < 1e-12);
        // a: P 1/2 R 1/2 F 1/2; b: P 2/3 R 1 F 0.8; c: 0 0 0.
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!((m.macro_f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        // top-2 only: rank 3 matters for the last sample (label c has prob 0.3, 2nd).
        let m2 = compute(&probs[..6], &[2, 2], &names);
        assert_eq!(m2.top1, 0.0);
        assert_eq!(m2.top3, 1.0);
    }
}
