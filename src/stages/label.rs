//! `vlal label`: the oracle. `--init` draws the seed labels of round 0; by default the queries of
//! a round are answered from the manifest's ground truth (a simulated annotator); `--from-file`
//! imports a person's answers (CSV or Parquet with columns sample_id, label — a class id or name).
//! Writes the labels of the next round: every earlier label plus the new ones.

use super::seed_count;
use crate::cache::Cache;
use crate::config::{Pipeline, RunSpec};
use crate::rounds::{read_labels, require, write_labels, LabelRow, Round};
use crate::schema::Table;
use crate::{progress, rng, table};
use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The train samples of each class, from the ground truth (a sample without one is an error:
/// seed labels then come from a file).
fn members_by_class(p: &Pipeline, cache: &Cache) -> Result<Vec<Vec<usize>>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); cache.n_classes()];
    for (i, l) in cache.train.labels.iter().enumerate() {
        match l {
            Some(l) => by_class[*l as usize].push(i),
            None => bail!(
                "{}: train sample '{}' has no ground-truth label; import seed labels with `vlal label --init --from-file`",
                crate::cache::manifest_path(&p.dataset.root).display(),
                cache.train.ids[i]
            ),
        }
    }
    Ok(by_class)
}

/// Round 0: `initial_per_class` random samples of each class (seeded by the run's seed only, so
/// every strategy of a seed starts from the same labels).
pub fn init(spec: &RunSpec, cache: &Cache) -> Result<()> {
    let path = spec.labels_path(0);
    if path.exists() {
        progress::log(format!("{} exists; keeping it", path.display()));
        return Ok(());
    }
    let k = spec.pipeline.initial_per_class;
    if k == 0 {
        // a pool without labels (no ground truth needed): round 0 starts cold
        write_labels(&path, &[])?;
        return Ok(());
    }
    seed_count(&spec.pipeline, cache)?;
    let by_class = members_by_class(&spec.pipeline, cache)?;
    let mut r = rng::stream(spec.seed, "init", 0);
    let mut rows = Vec::new();
    for (c, members) in by_class.iter().enumerate() {
        let mut picked = rng::sample(members, k, &mut r);
        picked.sort();
        for i in picked {
            rows.push(LabelRow {
                round: 0,
                sample_id: cache.train.ids[i].clone(),
                label: c as i32,
                kind: "seed".into(),
                cost: 1.0,
            });
        }
    }
    write_labels(&path, &rows)?;
    Ok(())
}

fn next_rows(spec: &RunSpec, round: usize) -> Result<(Vec<LabelRow>, HashSet<String>)> {
    let lpath = spec.labels_path(round);
    require(&lpath, "vlal label")?;
    let rows = read_labels(&lpath)?;
    let known = rows.iter().map(|r| r.sample_id.clone()).collect();
    Ok((rows, known))
}

/// A round's picks: sample id and, under selective querying, the free pseudo-label.
fn query_rows(spec: &RunSpec, round: usize) -> Result<Vec<(String, Option<i32>)>> {
    let q = spec.queries_path(round);
    require(&q, "vlal select")?;
    let t = table::read(&q, Table::Queries)?;
    Ok(t.strings("sample_id")?
        .into_iter()
        .zip(t.i32s("pseudo_label")?)
        .collect())
}

/// How many of round `round`'s queries for a person (those not pseudo-labelled) the run's
/// answers file answers or skips, of how many.
pub fn answered(spec: &RunSpec, round: usize) -> Result<(usize, usize)> {
    let asked: HashSet<String> = query_rows(spec, round)?
        .into_iter()
        .filter(|(_, p)| p.is_none())
        .map(|(id, _)| id)
        .collect();
    let path = spec.answers_path(round);
    let done = if path.exists() {
        crate::rounds::read_answers(&path)?
            .iter()
            .filter(|(id, _)| asked.contains(id))
            .count()
    } else {
        0
    };
    Ok((done, asked.len()))
}

/// The label row of a pick that selective querying pseudo-labelled (cost 0).
fn pseudo_row(round: usize, id: &str, label: i32) -> LabelRow {
    LabelRow {
        round: round as i32 + 1,
        sample_id: id.to_string(),
        label,
        kind: "pseudo".into(),
        cost: 0.0,
    }
}

/// Answer round `round`'s queries from the ground truth; writes labels of round+1.
pub fn oracle(spec: &RunSpec, cache: &Cache, round: usize) -> Result<()> {
    let (rows, known) = next_rows(spec, round)?;
    oracle_from(spec, cache, round, rows, known)
}

/// [`oracle`] on the round's labels already read.
pub fn oracle_round(spec: &RunSpec, cache: &Cache, r: &Round) -> Result<()> {
    let known = r.rows.iter().map(|l| l.sample_id.clone()).collect();
    oracle_from(spec, cache, r.round, r.rows.clone(), known)
}

fn oracle_from(
    spec: &RunSpec,
    cache: &Cache,
    round: usize,
    mut rows: Vec<LabelRow>,
    known: HashSet<String>,
) -> Result<()> {
    let qpath = spec.queries_path(round);
    for (id, pseudo) in query_rows(spec, round)? {
        let Some(&i) = cache.train.index.get(&id) else {
            bail!(
                "{}: sample '{id}' is not in the train pool",
                qpath.display()
            );
        };
        if known.contains(&id) {
            bail!("{}: sample '{id}' is already labeled", qpath.display());
        }
        if let Some(p) = pseudo {
            rows.push(pseudo_row(round, &id, p));
            continue;
        }
        let Some(label) = cache.train.labels[i] else {
            bail!("{}: sample '{id}' has no ground-truth label to simulate the oracle with; answer with --from-file", qpath.display());
        };
        rows.push(LabelRow {
            round: round as i32 + 1,
            sample_id: id,
            label,
            kind: "oracle".into(),
            cost: 1.0,
        });
    }
    write_labels(&spec.labels_path(round + 1), &rows)?;
    Ok(())
}

/// Import a person's labels for round `round`'s queries; writes labels of round+1.
/// With `round = None`, the file holds the seed labels of round 0 instead.
pub fn from_file(spec: &RunSpec, cache: &Cache, round: Option<usize>, file: &Path) -> Result<()> {
    let name = file.display().to_string();
    let answers = crate::rounds::read_answers(file)?;
    let (out, kind, new_round) = match round {
        Some(r) => (spec.labels_path(r + 1), "oracle", r as i32 + 1),
        None => (spec.labels_path(0), "seed", 0),
    };
    if round.is_none() && out.exists() {
        bail!("{}: seed labels exist already", out.display());
    }
    let (mut rows, known) = match round {
        Some(r) => next_rows(spec, r)?,
        None => (Vec::new(), HashSet::new()),
    };
    let round = round.unwrap_or(0);
    // selective querying's pseudo-labels are added as they are; the person answers the rest
    let mut pseudo: Vec<LabelRow> = Vec::new();
    // answers for round r are answers to its queries: without them (a wrong round number, or
    // `select` not run yet) nothing says which samples were asked
    let asked: Option<HashSet<String>> = if new_round > 0 {
        let mut a = HashSet::new();
        for (id, p) in query_rows(spec, round)? {
            match p {
                Some(l) => pseudo.push(pseudo_row(round, &id, l)),
                None => {
                    a.insert(id);
                }
            }
        }
        Some(a)
    } else {
        None
    };
    let by_name: HashMap<&str, usize> = cache
        .classes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let c = cache.n_classes();
    let mut seen = HashSet::new();
    if !answers.is_empty()
        && answers
            .iter()
            .all(|(id, _)| !cache.train.index.contains_key(id))
    {
        bail!(
            "{name}: none of its {} sample ids is in the train pool of dataset '{}' (answers of another project?)",
            answers.len(),
            cache.dataset
        );
    }
    let mut skipped = 0;
    for (line, (id, label)) in answers.iter().enumerate() {
        let row = line + 1;
        if !cache.train.index.contains_key(id) {
            bail!("{name}: row {row}: unknown sample_id '{id}' (not in the train pool of dataset '{}')", cache.dataset);
        }
        if let Some(a) = &asked {
            if !a.contains(id) {
                bail!("{name}: row {row}: sample '{id}' was not queried in round {round} (or was pseudo-labelled)");
            }
        }
        if known.contains(id) || !seen.insert(id.clone()) {
            bail!("{name}: row {row}: sample '{id}' is already labeled");
        }
        let Some(label) = label else {
            skipped += 1;
            continue;
        };
        let class = match label.trim().parse::<i64>() {
            Ok(v) if v >= 0 && (v as usize) < c => v as usize,
            Ok(v) => bail!("{name}: row {row}: label {v} is outside 0..{c}"),
            Err(_) => *by_name.get(label.trim()).ok_or_else(|| {
                anyhow!("{name}: row {row}: unknown class '{label}' (not in classes.parquet)")
            })?,
        };
        rows.push(LabelRow {
            round: new_round,
            sample_id: id.clone(),
            label: class as i32,
            kind: kind.into(),
            cost: 1.0,
        });
    }
    if skipped > 0 {
        progress::log(format!(
            "{name}: {skipped} sample(s) skipped (not sure); they stay in the pool"
        ));
    }
    if let Some(a) = &asked {
        let missing = a.iter().filter(|id| !seen.contains(*id)).count();
        if missing > 0 {
            progress::log(format!(
                "{name}: {missing} of round {round}'s {} queries have no answer",
                a.len()
            ));
        }
    }
    rows.extend(pseudo);
    write_labels(&out, &rows)?;
    Ok(())
}
