//! `extract`'s dataset tables: the manifest (the images every model embedded), the classes, and
//! the rejects (every sample the manifest leaves out, with its error).

use super::keys::{sha, stored_key, Reject, KEY_VERSION};
use super::staging::Staging;
use crate::cache::{classes_path, manifest_path};
use crate::dataset::{Dataset, Sample};
use crate::schema::Table;
use crate::{table, TOOL_VERSION};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A sample's manifest (split, source): retrieved samples are training data from elsewhere.
pub fn manifest_split(s: &Sample) -> (&str, &str) {
    if s.split == "retrieved" {
        ("train", "retrieved")
    } else {
        (s.split.as_str(), "task")
    }
}

/// Stage the manifest, classes and rejects tables (each unless its key is stored); returns the
/// rejects table's path and how many samples it lists.
pub fn write(
    out: &Path,
    data: &Dataset,
    kept_ids: &HashMap<&'static str, HashSet<String>>,
    mut rejects: Vec<Reject>,
    staging: &mut Staging,
) -> Result<(PathBuf, usize)> {
    // the manifest lists the images every model embedded
    let rows: Vec<&Sample> = data
        .samples
        .iter()
        .filter(|s| {
            kept_ids
                .get(s.split.as_str())
                .is_some_and(|k| k.contains(&s.id))
        })
        .collect();
    let mut parts: Vec<String> = vec![KEY_VERSION.to_string()];
    for s in &rows {
        parts.extend([
            s.id.clone(),
            s.path.display().to_string(),
            s.split.clone(),
            format!("{:?}", s.label),
        ]);
    }
    let mkey = sha(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    if stored_key(&manifest_path(out)).as_deref() != Some(mkey.as_str()) {
        let ids: Vec<&str> = rows.iter().map(|s| s.id.as_str()).collect();
        staging.write(
            &manifest_path(out),
            Table::Manifest,
            vec![
                ("sample_id", table::utf8(&ids)),
                (
                    "path",
                    table::opt_utf8(
                        &rows
                            .iter()
                            .map(|s| {
                                let empty = s.path.as_os_str().is_empty();
                                (!empty).then(|| s.path.display().to_string())
                            })
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "split",
                    table::utf8(&rows.iter().map(|s| manifest_split(s).0).collect::<Vec<_>>()),
                ),
                (
                    "label",
                    table::opt_i32s(&rows.iter().map(|s| s.label).collect::<Vec<_>>()),
                ),
                (
                    "source",
                    table::utf8(&rows.iter().map(|s| manifest_split(s).1).collect::<Vec<_>>()),
                ),
            ],
            &[
                ("content_key", mkey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    let ckey = sha(&data
        .classes
        .iter()
        .map(|c| format!("{}|{}", c.name, c.synonyms.join("|")))
        .collect::<Vec<_>>()
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    if stored_key(&classes_path(out)).as_deref() != Some(ckey.as_str()) {
        let c = data.classes.len();
        staging.write(
            &classes_path(out),
            Table::Classes,
            vec![
                ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
                (
                    "name",
                    table::utf8(
                        &data
                            .classes
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "synonyms",
                    table::list_utf8(
                        &data
                            .classes
                            .iter()
                            .map(|c| c.synonyms.clone())
                            .collect::<Vec<_>>(),
                    ),
                ),
            ],
            &[
                ("content_key", ckey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    // Every sample the manifest leaves out is a reject: its error from this run, else from the
    // previous rejects table (the split's embeddings are cached), so the table always matches.
    let rpath = out.join("rejects.parquet");
    let mut errors: HashMap<String, String> = HashMap::new();
    if rpath.exists() {
        let f = table::read(&rpath, Table::Rejects)?;
        errors.extend(f.strings("sample_id")?.into_iter().zip(f.strings("error")?));
    }
    errors.extend(rejects.drain(..).map(|r| (r.sample.id, r.error)));
    let in_manifest: HashSet<&str> = rows.iter().map(|s| s.id.as_str()).collect();
    let rejects: Vec<Reject> = data
        .samples
        .iter()
        .filter(|s| !in_manifest.contains(s.id.as_str()))
        .map(|s| Reject {
            sample: s.clone(),
            error: errors
                .get(&s.id)
                .cloned()
                .unwrap_or_else(|| "left out of the cached embeddings".into()),
        })
        .collect();
    let rkey = sha(&rejects
        .iter()
        .flat_map(|r| [r.sample.id.as_str(), r.error.as_str()])
        .collect::<Vec<_>>());
    if !rejects.is_empty() && stored_key(&rpath).as_deref() != Some(rkey.as_str()) {
        staging.write(
            &rpath,
            Table::Rejects,
            vec![
                (
                    "sample_id",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.id.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "path",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.path.display().to_string())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "split",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.split.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "error",
                    table::utf8(&rejects.iter().map(|r| r.error.as_str()).collect::<Vec<_>>()),
                ),
            ],
            &[
                ("content_key", rkey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    Ok((rpath, rejects.len()))
}
