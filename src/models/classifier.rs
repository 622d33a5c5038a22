//! A pretrained image classifier as a zero-shot teacher, next to CLIP: a label map sends each
//! task class to a few of the classifier's classes; the teacher's logit for a task class is the
//! log-sum-exp of its mapped logits (the log of their summed probability, up to the shared
//! normaliser), and its prototype is the mean of the mapped classifier rows.
//!
//! The classifier's class names come from `config.json`'s `id2label` (the Hugging Face layout).
//! A label-map file has one line per task class, `task class: name | name | #index`, where a
//! name is one of the classifier's class names (case-insensitive) and `#index` a class index;
//! `#` starts a comment line. Without a map, the classifier's classes must be the task's
//! classes by name (a classifier trained on the task, e.g. a linear probe).

use crate::dataset::Class;
use crate::mat::Mat;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// The classifier's class names in index order, from `config.json`'s `id2label`.
pub fn class_names(config: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = super::layers::read_config(config, "model")?;
    let map = v
        .get("id2label")
        .and_then(|m| m.as_object())
        .with_context(|| {
            format!(
                "{}: no id2label (a classifier teacher needs its class names)",
                config.display()
            )
        })?;
    let mut names = vec![None; map.len()];
    for (k, name) in map {
        let i: usize = k
            .parse()
            .ok()
            .filter(|&i| i < names.len())
            .with_context(|| {
                format!(
                    "{}: id2label key '{k}' is not 0..{}",
                    config.display(),
                    names.len()
                )
            })?;
        names[i] = Some(
            name.as_str()
                .with_context(|| format!("{}: id2label['{k}'] is not a string", config.display()))?
                .to_string(),
        );
    }
    Ok(names
        .into_iter()
        .map(|n| n.expect("every key 0..len seen once"))
        .collect())
}

/// A linear classifier's logits x·Wᵀ + b (x: N × D, W: K × D, b: K).
pub fn logits(x: &Mat, w: &Mat, b: &[f32]) -> Result<Mat> {
    let mut z = crate::geometry::matmul_nt(x, w)?;
    for r in 0..z.rows {
        z.row_mut(r).iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    Ok(z)
}

/// For each task class, the classifier classes it maps to.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMap {
    pub targets: Vec<Vec<usize>>,
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

impl LabelMap {
    /// Each task class to the classifier class of the same name.
    pub fn identity(task: &[Class], labels: &[String]) -> Result<LabelMap> {
        let index: HashMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, n)| (norm(n), i))
            .collect();
        let targets = task
            .iter()
            .map(|c| {
                index
                    .get(&norm(&c.name))
                    .map(|&i| vec![i])
                    .with_context(|| {
                        format!(
                            "task class '{}' is not one of the classifier's {} classes; pass a \
                         --label-map",
                            c.name,
                            labels.len()
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LabelMap { targets })
    }

    /// Read a label-map file (see the module doc); every task class needs exactly one line.
    pub fn read(path: &Path, task: &[Class], labels: &[String]) -> Result<LabelMap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the label map", path.display()))?;
        let index: HashMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, n)| (norm(n), i))
            .collect();
        let task_index: HashMap<String, usize> = task
            .iter()
            .enumerate()
            .map(|(i, c)| (norm(&c.name), i))
            .collect();
        let mut targets: Vec<Option<Vec<usize>>> = vec![None; task.len()];
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| anyhow::anyhow!("{}:{}: {msg}", path.display(), no + 1);
            let (class, rest) = line
                .rsplit_once(':')
                .ok_or_else(|| at("expected 'task class: name | name | #index'".into()))?;
            let &c = task_index
                .get(&norm(class))
                .ok_or_else(|| at(format!("'{}' is not a task class", class.trim())))?;
            let mut to = Vec::new();
            for item in rest.split('|').map(str::trim).filter(|s| !s.is_empty()) {
                let i = match item.strip_prefix('#') {
                    Some(n) => n.parse::<usize>().ok().filter(|&i| i < labels.len()),
                    None => index.get(&norm(item)).copied(),
                }
                .ok_or_else(|| at(format!("'{item}' is not one of the classifier's classes")))?;
                if !to.contains(&i) {
                    to.push(i);
                }
            }
            if to.is_empty() {
                return Err(at(format!("'{}' maps to no class", class.trim())));
            }
            if targets[c].replace(to).is_some() {
                return Err(at(format!("'{}' is mapped twice", class.trim())));
            }
        }
        let targets = targets
            .into_iter()
            .zip(task)
            .map(|(t, c)| {
                t.with_context(|| {
                    format!("{}: no line for task class '{}'", path.display(), c.name)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LabelMap { targets })
    }

    /// The map with the classifier's names, for logs and the cache's content key.
    pub fn describe(&self, task: &[Class], labels: &[String]) -> Vec<String> {
        self.targets
            .iter()
            .zip(task)
            .map(|(t, c)| {
                let to: Vec<String> = t.iter().map(|&i| format!("{} (#{i})", labels[i])).collect();
                format!("{}: {}", c.name, to.join(" | "))
            })
            .collect()
    }

    /// Task logits (N × C) from the classifier's logits (N × K): log-sum-exp over each class's
    /// mapped logits.
    pub fn task_logits(&self, full: &Mat) -> Result<Mat> {
        let mut out = Mat::zeros(full.rows, self.targets.len());
        for r in 0..full.rows {
            let z = full.row(r);
            for (o, t) in out.row_mut(r).iter_mut().zip(&self.targets) {
                let m = t.iter().map(|&i| z[i]).fold(f32::NEG_INFINITY, f32::max);
                *o = m + t.iter().map(|&i| (z[i] - m).exp()).sum::<f32>().ln();
            }
        }
        if out.data.iter().any(|v| !v.is_finite()) {
            bail!("the classifier gave non-finite logits");
        }
        Ok(out)
    }

    /// Prototypes (C × D): the mean of each class's mapped classifier rows (weights K × D).
    pub fn prototypes(&self, weights: &Mat) -> Mat {
        let mut out = Mat::zeros(self.targets.len(), weights.cols);
        for (c, t) in self.targets.iter().enumerate() {
            for &i in t {
                for (o, w) in out.row_mut(c).iter_mut().zip(weights.row(i)) {
                    *o += w / t.len() as f32;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<Class> {
        names
            .iter()
            .map(|n| Class {
                name: n.to_string(),
                synonyms: vec![],
            })
            .collect()
    }

    fn labels() -> Vec<String> {
        ["running shoe", "purse", "backpack", "jean", "cowboy boot"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_map_file_resolves_names_and_indices_and_rejects_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let task = classes(&["Sneaker", "Bag", "T-shirt/top"]);
        let p = dir.path().join("map.txt");
        let write = |s: &str| std::fs::write(&p, s).unwrap();
        write("# comment\nsneaker: Running Shoe\nBag: purse | backpack | #2\n\nT-shirt/top: #3\n");
        let m = LabelMap::read(&p, &task, &labels()).unwrap();
        assert_eq!(m.targets, vec![vec![0], vec![1, 2], vec![3]]);
        assert_eq!(
            m.describe(&task, &labels())[1],
            "Bag: purse (#1) | backpack (#2)"
        );
        for (text, want) in [
            (
                "Sneaker: running shoe\nBag: purse\n",
                "no line for task class 'T-shirt/top'",
            ),
            (
                "Sneaker: sandal\nBag: purse\nT-shirt/top: jean\n",
                "'sandal' is not one",
            ),
            (
                "Sneaker: #9\nBag: purse\nT-shirt/top: jean\n",
                "'#9' is not one",
            ),
            ("Boot: jean\n", "'Boot' is not a task class"),
            ("Sneaker: jean\nsneaker: purse\n", "mapped twice"),
            ("Sneaker jean\n", "expected 'task class"),
        ] {
            write(text);
            let e = format!("{:#}", LabelMap::read(&p, &task, &labels()).unwrap_err());
            assert!(e.contains(want) && e.contains("map.txt"), "{text:?}: {e}");
        }
        assert!(LabelMap::identity(&task, &labels()).is_err());
        let m = LabelMap::identity(&classes(&["Jean", "purse"]), &labels()).unwrap();
        assert_eq!(m.targets, vec![vec![3], vec![1]]);
    }

    #[test]
    fn task_logits_are_the_log_of_the_summed_probabilities() {
        let m = LabelMap {
            targets: vec![vec![0], vec![1, 2], vec![3, 4]],
        };
        let full = Mat::new(1, 5, vec![1.0, 0.0, 2.0, -500.0, 800.0]).unwrap();
        let t = m.task_logits(&full).unwrap();
        let p: Vec<f64> = full
            .data
            .iter()
            .map(|&v| (v as f64 - 800.0).exp())
            .collect();
        // softmax over the task logits = mapped probability mass, renormalised
        let want = [p[0], p[1] + p[2], p[3] + p[4]];
        let z: Vec<f64> = t.data.iter().map(|&v| (v as f64 - 800.0).exp()).collect();
        for (a, b) in z.iter().zip(want) {
            assert!((a - b).abs() <= 1e-6 * b.max(1e-300), "{a} vs {b}");
        }
        assert!((t.data[2] - 800.0).abs() < 1e-4);
        let w = Mat::new(5, 2, vec![1., 0., 2., 0., 4., 2., 0., 0., 0., 6.]).unwrap();
        assert_eq!(m.prototypes(&w).data, vec![1., 0., 3., 1., 0., 3.]);
    }
}
