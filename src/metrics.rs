//! Classification scores of a round: accuracy, macro-F1 and per-class accuracy (recall).

pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class_acc: Vec<f64>,
}

/// Scores of predictions `pred` against `truth`, labels in 0..n_classes. A class absent from
/// `truth` has accuracy NaN-free 0 and is left out of the macro-F1 average.
pub fn score(pred: &[usize], truth: &[usize], n_classes: usize) -> Scores {
    let mut tp = vec![0usize; n_classes];
    let mut fp = vec![0usize; n_classes];
    let mut support = vec![0usize; n_classes];
    let mut correct = 0usize;
    for (&p, &t) in pred.iter().zip(truth) {
        support[t] += 1;
        if p == t {
            tp[t] += 1;
            correct += 1;
        } else {
            fp[p] += 1;
        }
    }
    let per_class_acc: Vec<f64> = (0..n_classes)
        .map(|c| {
            if support[c] > 0 {
                tp[c] as f64 / support[c] as f64
            } else {
                0.0
            }
        })
        .collect();
    let present: Vec<usize> = (0..n_classes).filter(|&c| support[c] > 0).collect();
    let f1s: Vec<f64> = present
        .iter()
        .map(|&c| {
            let denom = 2 * tp[c] + fp[c] + (support[c] - tp[c]);
            if denom == 0 {
                0.0
            } else {
                2.0 * tp[c] as f64 / denom as f64
            }
        })
        .collect();
    Scores {
        accuracy: if truth.is_empty() {
            0.0
        } else {
            correct as f64 / truth.len() as f64
        },
        macro_f1: if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        },
        per_class_acc,
    }
}

/// Shannon entropy in nats (0·log 0 = 0).
pub fn entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_scores() {
        // truth: 0 0 1 1 ; pred: 0 1 1 1
        let s = score(&[0, 1, 1, 1], &[0, 0, 1, 1], 2);
        assert_eq!(s.accuracy, 0.75);
        assert_eq!(s.per_class_acc, vec![0.5, 1.0]);
        // F1 class0: tp1 fp0 fn1 → 2/3 ; class1: tp2 fp1 fn0 → 4/5
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
    }
}
