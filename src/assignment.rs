//! Minimum-cost assignment of n rows to distinct columns of an n × m cost matrix (n ≤ m): the
//! Hungarian algorithm with potentials (Kuhn 1955, Munkres 1957; the O(n²m) shortest-augmenting-
//! path form), as scipy's `linear_sum_assignment` solves it. CCMA's released code uses it to
//! realign the teacher's class prototypes to the labels.

use anyhow::{bail, Result};

/// For each row, its column in a minimum-cost assignment. `cost` is row-major n × m.
pub fn min_cost(cost: &[f64], n: usize, m: usize) -> Result<Vec<usize>> {
    if n > m || cost.len() != n * m {
        bail!(
            "assignment: {n} × {m} costs ({} values); rows must not outnumber columns",
            cost.len()
        );
    }
    if cost.iter().any(|c| !c.is_finite()) {
        bail!("assignment: costs must be finite");
    }
    // 1-based: u (rows), v (columns) potentials; way[j] the previous column on the path to j;
    // owner[j] the row matched to column j (0: none)
    let (mut u, mut v) = (vec![0f64; n + 1], vec![0f64; m + 1]);
    let (mut owner, mut way) = (vec![0usize; m + 1], vec![0usize; m + 1]);
    for i in 1..=n {
        owner[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = owner[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if owner[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            owner[j0] = owner[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col = vec![0usize; n];
    for j in 1..=m {
        if owner[j] > 0 {
            col[owner[j] - 1] = j - 1;
        }
    }
    Ok(col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The least total cost over every injective row → column map, by enumeration.
    fn brute(cost: &[f64], n: usize, m: usize) -> f64 {
        fn go(r: usize, n: usize, m: usize, cost: &[f64], used: &mut Vec<bool>) -> f64 {
            if r == n {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..m {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[r * m + j] + go(r + 1, n, m, cost, used));
                    used[j] = false;
                }
            }
            best
        }
        go(0, n, m, cost, &mut vec![false; m])
    }

    #[test]
    fn matches_enumeration_on_random_matrices() {
        let mut r = crate::rng::stream(3, "assign", 0);
        for (n, m) in [(1, 1), (2, 3), (4, 4), (5, 7), (6, 6)] {
            for _ in 0..20 {
                let cost: Vec<f64> = crate::rng::uniform(n * m, 1.0, &mut r)
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let col = min_cost(&cost, n, m).unwrap();
                let mut seen = col.clone();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), n, "columns repeat: {col:?}");
                let total: f64 = col.iter().enumerate().map(|(i, &j)| cost[i * m + j]).sum();
                assert!((total - brute(&cost, n, m)).abs() < 1e-9, "{n}×{m}");
            }
        }
        // the classic 3 × 3 example
        let c = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        assert_eq!(min_cost(&c, 3, 3).unwrap(), vec![1, 0, 2]);
        assert!(min_cost(&c, 3, 2).is_err());
    }
}
