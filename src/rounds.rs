//! A run's per-round state as the stages share it: the labels table (one row per labeled
//! sample), the id → train-row lookups, the unlabeled pool and a round's predictions.

use crate::cache::Cache;
use crate::mat::Mat;
use crate::schema::Table;
use crate::table;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// One row of a `labels` table.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelRow {
    pub round: i32,
    pub sample_id: String,
    pub label: i32,
    pub kind: String,
    pub cost: f64,
}

pub fn read_labels(path: &Path) -> Result<Vec<LabelRow>> {
    let f = table::read(path, Table::Labels)?;
    let (r, id, l, k, c) = (
        f.i32s("round")?,
        f.strings("sample_id")?,
        f.i32s("label")?,
        f.strings("kind")?,
        f.f64s("cost")?,
    );
    Ok((0..f.rows)
        .map(|i| LabelRow {
            round: r[i].unwrap_or(0),
            sample_id: id[i].clone(),
            label: l[i].unwrap_or(0),
            kind: k[i].clone(),
            cost: c[i].unwrap_or(0.0),
        })
        .collect())
}

/// Write a labels table; `Ok(false)` if it already exists (a run's state is never rewritten).
pub fn write_labels(path: &Path, rows: &[LabelRow]) -> Result<bool> {
    let round: Vec<i32> = rows.iter().map(|r| r.round).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.sample_id.as_str()).collect();
    let labels: Vec<i32> = rows.iter().map(|r| r.label).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let cost: Vec<f64> = rows.iter().map(|r| r.cost).collect();
    table::write(
        path,
        Table::Labels,
        vec![
            ("round", table::i32s(&round)),
            ("sample_id", table::utf8(&ids)),
            ("label", table::i32s(&labels)),
            ("kind", table::utf8(&kinds)),
            ("cost", table::f64s(&cost)),
        ],
        &[],
        table::Mode::NoClobber,
    )
}

/// The unlabeled train rows, ascending.
pub fn pool_rows(cache: &Cache, labeled: &[usize]) -> Vec<usize> {
    let mut is_labeled = vec![false; cache.train.ids.len()];
    labeled.iter().for_each(|&i| is_labeled[i] = true);
    (0..is_labeled.len()).filter(|&i| !is_labeled[i]).collect()
}

/// The train rows and labels of a labels table; every id must be in the train pool and every
/// label in 0..C.
pub fn labeled_rows(
    path: &Path,
    cache: &Cache,
    rows: &[LabelRow],
) -> Result<(Vec<usize>, Vec<u32>)> {
    let c = cache.n_classes();
    let mut idx = Vec::with_capacity(rows.len());
    let mut lab = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(&i) = cache.train.index.get(&r.sample_id) else {
            bail!(
                "{}: sample '{}' is not in the train pool of dataset '{}'",
                path.display(),
                r.sample_id,
                cache.dataset
            );
        };
        if r.label < 0 || r.label as usize >= c {
            bail!(
                "{}: sample '{}' has label {}, outside 0..{c}",
                path.display(),
                r.sample_id,
                r.label
            );
        }
        idx.push(i);
        lab.push(r.label as u32);
    }
    Ok((idx, lab))
}

/// Require a file that an earlier stage writes.
pub fn require(path: &Path, made_by: &str) -> Result<()> {
    if !path.exists() {
        bail!("{}: missing (run `{made_by}` first)", path.display());
    }
    Ok(())
}

/// A round's predictions table: its metadata at once, its probabilities streamed when asked for
/// (the pool's can be 5 GB: 1.28M × 1000 classes).
pub struct Predictions {
    pub path: std::path::PathBuf,
    pub meta: std::collections::BTreeMap<String, String>,
}

impl Predictions {
    pub fn read(path: &Path) -> Result<Predictions> {
        require(path, "vlal train")?;
        Ok(Predictions {
            path: path.to_path_buf(),
            meta: table::read_meta(path)?,
        })
    }

    /// A file metadata key (one error line naming the file when it is missing).
    pub fn meta(&self, key: &str) -> Result<&str> {
        table::meta_value(&self.path.display().to_string(), &self.meta, key)
    }

    /// Student probabilities of the rows `ids` (train, calib or test), in that order.
    pub fn probs(&self, cache: &Cache, ids: &[String]) -> Result<Mat> {
        Ok(self.probs_of(cache, &[ids])?.pop().expect("one list"))
    }

    /// The probabilities of the train pool and, when `with_calib` and the cache has a calib
    /// split, of the calib rows: one pass over the file.
    pub fn train_and_calib(&self, cache: &Cache, with_calib: bool) -> Result<(Mat, Option<Mat>)> {
        let mut lists: Vec<&[String]> = vec![&cache.train.ids];
        if let (Some(c), true) = (&cache.calib, with_calib) {
            lists.push(&c.ids);
        }
        let mut out = self.probs_of(cache, &lists)?.into_iter();
        Ok((out.next().expect("train"), out.next()))
    }

    /// [`Predictions::probs`] of several lists of rows, in one pass over the file.
    pub fn probs_of(&self, cache: &Cache, ids: &[&[String]]) -> Result<Vec<Mat>> {
        let (out, _) = table::read_rows(&self.path, Table::Predictions, "probs", ids)?;
        if let Some(m) = out.iter().find(|m| m.cols != cache.n_classes()) {
            return Err(self.classes_differ(cache, m.cols));
        }
        Ok(out)
    }

    /// `each(position in ids, probabilities)` for the rows `ids`, in file order, without
    /// holding more than a batch of the file (the pool's can be 5 GB).
    pub fn visit(
        &self,
        cache: &Cache,
        ids: &[String],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        let c = cache.n_classes();
        let (dim, _) = table::visit_rows(
            &self.path,
            Table::Predictions,
            "probs",
            &[ids],
            |_, i, p| {
                if p.len() == c {
                    each(i, p)
                }
            },
        )?;
        if dim != c {
            return Err(self.classes_differ(cache, dim));
        }
        Ok(())
    }

    fn classes_differ(&self, cache: &Cache, cols: usize) -> anyhow::Error {
        anyhow!(
            "{}: probs have {cols} classes, the dataset has {}",
            self.path.display(),
            cache.n_classes()
        )
    }
}

/// A query put to a person: what `vlal annotate` shows and `vlal export` writes.
pub struct Query {
    pub sample_id: String,
    pub rank: i32,
    /// The strategy's acquisition score.
    pub score: f64,
    /// The image (None: the sample has none in the manifest).
    pub path: Option<PathBuf>,
    /// The student's (this round's predictions) and the teacher's top classes with their
    /// probabilities, most likely first.
    pub student: Vec<(usize, f32)>,
    pub teacher: Option<Vec<(usize, f32)>>,
}

/// The `k` most probable classes of a row, most probable first (lower class on ties).
pub fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|c| (c, p[c])).collect()
}

/// Round `round`'s queries for a person, in query order: those selective querying did not
/// pseudo-label, each with its image and the student's and (when the cache has them) the
/// teacher's `k` top classes.
pub fn person_queries(
    spec: &crate::config::RunSpec,
    cache: &Cache,
    round: usize,
    k: usize,
) -> Result<Vec<Query>> {
    let qpath = spec.queries_path(round);
    require(&qpath, "vlal select")?;
    let q = table::read(&qpath, Table::Queries)?;
    let (ids, ranks, scores, pseudo) = (
        q.strings("sample_id")?,
        q.i32s("rank")?,
        q.f64s("score")?,
        q.i32s("pseudo_label")?,
    );
    let keep: Vec<usize> = (0..q.rows).filter(|&i| pseudo[i].is_none()).collect();
    let ids: Vec<String> = keep.iter().map(|&i| ids[i].clone()).collect();
    let student = Predictions::read(&spec.predictions_path(round))?.probs(cache, &ids)?;
    let teacher = match &cache.teacher_logits {
        Some(t) => {
            let rows = ids
                .iter()
                .map(|id| {
                    cache.train.index.get(id).copied().ok_or_else(|| {
                        anyhow!(
                            "{}: sample '{id}' is not in the train pool",
                            qpath.display()
                        )
                    })
                })
                .collect::<Result<Vec<usize>>>()?;
            Some(crate::mat::softmax_rows(&t.select_rows(&rows), 1.0))
        }
        None => None,
    };
    let paths = crate::cache::image_paths(&spec.pipeline.dataset.root, &ids)?;
    Ok(keep
        .iter()
        .enumerate()
        .map(|(j, &i)| Query {
            sample_id: ids[j].clone(),
            rank: ranks[i].unwrap_or(j as i32),
            score: scores[i].unwrap_or(f64::NAN),
            path: paths[j].clone(),
            student: top_k(student.row(j), k),
            teacher: teacher.as_ref().map(|t| top_k(t.row(j), k)),
        })
        .collect())
}

/// One round's labels, read and resolved to train rows once: `vlal run` hands it from stage to
/// stage (train, select, eval, label) instead of each reading the labels file again.
pub struct Round {
    pub round: usize,
    /// The labels file it was read from (errors name it).
    pub path: PathBuf,
    pub rows: Vec<LabelRow>,
    /// The labeled train rows and their labels (row i ↔ labels[i]).
    pub labeled: Vec<usize>,
    pub labels: Vec<u32>,
}

impl Round {
    pub fn read(path: &Path, round: usize, cache: &Cache) -> Result<Round> {
        require(path, "vlal label")?;
        let rows = read_labels(path)?;
        let (labeled, labels) = labeled_rows(path, cache, &rows)?;
        Ok(Round {
            round,
            path: path.to_path_buf(),
            rows,
            labeled,
            labels,
        })
    }
}

/// (sample_id, label-as-text) pairs from a CSV or Parquet file, or a Label Studio JSON export;
/// `None` for a sample the person skipped (CSV/Parquet column `skipped` true, or a Label Studio
/// task whose annotation was cancelled).
pub fn read_answers(file: &Path) -> Result<Vec<(String, Option<String>)>> {
    let name = file.display().to_string();
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "json" {
        return label_studio_answers(file);
    }
    let skipped = |v: Option<&str>| {
        v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    };
    if ext == "parquet" {
        let t = table::read_any(file)?;
        let (ids, labels) = (t.texts("sample_id")?, t.texts("label")?);
        let skips = if t.has("skipped") {
            t.texts("skipped")?
        } else {
            vec![None; t.rows]
        };
        ids.into_iter()
            .zip(labels)
            .zip(skips)
            .enumerate()
            .map(|(i, ((id, label), skip))| match (id, label) {
                (Some(id), _) if skipped(skip.as_deref()) => Ok((id, None)),
                (Some(id), Some(label)) => Ok((id, Some(label))),
                _ => bail!("{name}: row {}: empty sample_id or label", i + 1),
            })
            .collect()
    } else {
        let mut rdr =
            csv::Reader::from_path(file).with_context(|| format!("{name}: cannot open"))?;
        let headers = rdr.headers().map_err(|e| anyhow!("{name}: {e}"))?.clone();
        let find = |c: &str| headers.iter().position(|h| h.trim() == c);
        let pos = |c: &str| find(c).ok_or_else(|| anyhow!("{name}: missing column '{c}'"));
        let (pi, pl, ps) = (pos("sample_id")?, pos("label")?, find("skipped"));
        let mut out = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| anyhow!("{name}: row {}: {e}", i + 1))?;
            let id = rec.get(pi).unwrap_or("").trim().to_string();
            if skipped(ps.and_then(|p| rec.get(p))) {
                out.push((id, None));
            } else {
                out.push((id, Some(rec.get(pl).unwrap_or("").to_string())));
            }
        }
        Ok(out)
    }
}

/// Write a round's answers (`sample_id,label,skipped`; label = class name, empty when skipped)
/// atomically: a temporary file in the same folder, then a rename.
pub fn write_answers(path: &Path, rows: &[(String, Option<String>)]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["sample_id", "label", "skipped"])?;
    for (id, label) in rows {
        let skipped = if label.is_some() { "false" } else { "true" };
        w.write_record([id.as_str(), label.as_deref().unwrap_or(""), skipped])?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    table::write_file_atomic(path, &bytes)
}

/// The answers in a Label Studio JSON export (a list of tasks; see `vlal export --format
/// label-studio`): each task's `data.sample_id` and the class of its last annotation that was
/// not cancelled (a `choices` result with one choice); a task whose annotations were all
/// cancelled is a skip, one without annotations has no answer.
pub fn label_studio_answers(file: &Path) -> Result<Vec<(String, Option<String>)>> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("{name}: cannot read"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{name}: not JSON ({e})"))?;
    let Some(tasks) = v.as_array() else {
        bail!("{name}: a Label Studio JSON export is a list of tasks");
    };
    let mut out = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let task = i + 1;
        let Some(id) = t.pointer("/data/sample_id").and_then(|v| v.as_str()) else {
            bail!("{name}: task {task}: no data.sample_id (import the tasks `vlal export --format label-studio` wrote)");
        };
        let anns = t
            .get("annotations")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        if anns.is_empty() {
            continue;
        }
        let kept = anns.iter().rev().find(|a| {
            !a.get("was_cancelled")
                .and_then(|c| c.as_bool())
                .unwrap_or(false)
        });
        let Some(ann) = kept else {
            out.push((id.to_string(), None));
            continue;
        };
        let choices: Vec<&str> = ann
            .get("result")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter(|r| r.get("type").and_then(|t| t.as_str()) == Some("choices"))
            .filter_map(|r| r.pointer("/value/choices").and_then(|c| c.as_array()))
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        match choices.as_slice() {
            [one] => out.push((id.to_string(), Some(one.to_string()))),
            [] => bail!("{name}: task {task} ('{id}'): its annotation has no choice"),
            more => bail!(
                "{name}: task {task} ('{id}'): {} choices; one class per image",
                more.len()
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_most_probable_first_lower_class_on_ties() {
        assert_eq!(
            top_k(&[0.2, 0.5, 0.2, 0.1], 3),
            vec![(1, 0.5), (0, 0.2), (2, 0.2)]
        );
    }

    #[test]
    fn answers_round_trip_and_label_studio_exports_read_as_answers() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a/round-000.csv");
        let rows = vec![
            ("x,1".to_string(), Some("cat".to_string())),
            ("y".to_string(), None),
        ];
        write_answers(&csv, &rows).unwrap();
        assert_eq!(read_answers(&csv).unwrap(), rows);

        let ls = dir.path().join("export.json");
        let choice = |c: &str| {
            serde_json::json!([{"type": "choices", "from_name": "label", "to_name": "image",
                                "value": {"choices": [c]}}])
        };
        let tasks = serde_json::json!([
            // the last annotation that was not cancelled counts
            {"data": {"sample_id": "a"}, "annotations": [
                {"result": choice("cat"), "was_cancelled": false},
                {"result": choice("dog"), "was_cancelled": false},
                {"result": choice("cow"), "was_cancelled": true}]},
            // all cancelled: skipped; none: no answer
            {"data": {"sample_id": "b"}, "annotations": [{"result": [], "was_cancelled": true}]},
            {"data": {"sample_id": "c"}, "annotations": []},
            {"data": {"sample_id": "d"}},
        ]);
        std::fs::write(&ls, tasks.to_string()).unwrap();
        assert_eq!(
            read_answers(&ls).unwrap(),
            vec![("a".into(), Some("dog".into())), ("b".into(), None)]
        );
        let bad = |v: serde_json::Value| {
            std::fs::write(&ls, v.to_string()).unwrap();
            read_answers(&ls).unwrap_err().to_string()
        };
        let name = ls.display();
        assert_eq!(
            bad(serde_json::json!({"tasks": []})),
            format!("{name}: a Label Studio JSON export is a list of tasks")
        );
        assert!(bad(serde_json::json!([{"data": {"image": "x"}}]))
            .starts_with(&format!("{name}: task 1: no data.sample_id")));
        let two = serde_json::json!([{"type": "choices", "value": {"choices": ["a", "b"]}}]);
        assert_eq!(
            bad(
                serde_json::json!([{"data": {"sample_id": "a"}, "annotations": [{"result": two}]}])
            ),
            format!("{name}: task 1 ('a'): 2 choices; one class per image")
        );
        std::fs::write(&ls, "[{").unwrap();
        assert!(read_answers(&ls)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("{name}: not JSON")));
    }
}
