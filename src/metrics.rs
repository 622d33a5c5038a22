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

/// Area under the learning curve of one run: the trapezoid area of accuracy over labels,
/// divided by the label range (so in [0, 1]); a single point gives its accuracy.
pub fn aulc(points: &mut [(f64, f64)]) -> f64 {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return f64::NAN;
    };
    let range = last.0 - first.0;
    if range <= 0.0 {
        return points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    }
    let area: f64 = points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    area / range
}

#[cfg(test)]
mod tests {
    #[test]
    fn aulc_is_the_normalised_trapezoid_area() {
        // accuracy 0.5 → 1.0 linearly over 10 → 30 labels: mean height 0.75
        let mut p = vec![(30.0, 1.0), (10.0, 0.5), (20.0, 0.75)];
        assert!((aulc(&mut p) - 0.75).abs() < 1e-12);
        // a step: 0.2 on [0, 10], then 0.8 at 20 → (10·0.2 + 10·0.5)/20
        let mut q = vec![(0.0, 0.2), (10.0, 0.2), (20.0, 0.8)];
        assert!((aulc(&mut q) - 0.35).abs() < 1e-12);
        assert_eq!(aulc(&mut [(5.0, 0.4)]), 0.4);
        assert!(aulc(&mut []).is_nan());
    }

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
