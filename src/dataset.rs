//! What `extract` reads before any model runs: the samples of a dataset — an image folder (one
//! sub-folder per class, optionally under `train/`, `calib/` (or `val/`), `test/`) or a manifest
//! file (CSV or Parquet with columns path, label, split and optionally sample_id) — and the class
//! names with their synonyms (a text file, one class per line: `name | synonym | synonym`).

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A class: its name (prompted into the templates) and optional synonyms.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub name: String,
    pub synonyms: Vec<String>,
}

/// One image of the dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub id: String,
    pub path: PathBuf,
    pub split: String,
    pub label: Option<i32>,
}

#[derive(Debug)]
pub struct Dataset {
    pub classes: Vec<Class>,
    pub samples: Vec<Sample>,
}

pub const SPLITS: [&str; 3] = ["train", "calib", "test"];
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Read a class-name file: one class per line, `name | synonym | …`; blank lines and lines
/// starting with `#` are skipped.
pub fn read_class_file(path: &Path) -> Result<Vec<Class>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the class-name file", path.display()))?;
    let mut out: Vec<Class> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split('|').map(str::trim);
        let name = parts.next().unwrap_or_default().to_string();
        let synonyms: Vec<String> = parts.map(str::to_string).collect();
        if name.is_empty() || synonyms.iter().any(String::is_empty) {
            bail!(
                "{}:{}: an empty class name or synonym",
                path.display(),
                i + 1
            );
        }
        if out.iter().any(|c| c.name == name) {
            bail!(
                "{}:{}: class '{name}' is listed twice",
                path.display(),
                i + 1
            );
        }
        out.push(Class { name, synonyms });
    }
    if out.len() < 2 {
        bail!("{}: needs at least 2 classes", path.display());
    }
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list", dir.display()))?;
    v.sort();
    Ok(v)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir() && !name_of(p).starts_with('.'))
        .collect())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The split a held-out fraction puts `id` in: a hash of the id, so adding images never moves
/// the others.
fn holdout_split(id: &str, test: f64, calib: f64) -> &'static str {
    let h = Sha256::digest(id.as_bytes());
    let u = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64);
    if u < test {
        "test"
    } else if u < test + calib {
        "calib"
    } else {
        "train"
    }
}

/// Map folder names to class ids: with a class file, by name when every folder is named in
/// it, else by sorted position when the counts agree (ImageNet-style folder ids); without one,
/// the folder names are the classes.
fn folder_classes(
    root: &Path,
    folders: &BTreeSet<String>,
    classes: Option<Vec<Class>>,
    class_file: Option<&Path>,
) -> Result<(Vec<Class>, HashMap<String, i32>)> {
    let Some(classes) = classes else {
        let classes: Vec<Class> = folders
            .iter()
            .map(|f| Class {
                name: f.replace('_', " "),
                synonyms: Vec::new(),
            })
            .collect();
        let map = folders
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i as i32))
            .collect();
        return Ok((classes, map));
    };
    let file = class_file.expect("classes come from a file").display();
    let by_name: HashMap<&str, i32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as i32))
        .collect();
    let map: HashMap<String, i32> = if folders.iter().all(|f| by_name.contains_key(f.as_str())) {
        folders
            .iter()
            .map(|f| (f.clone(), by_name[f.as_str()]))
            .collect()
    } else if folders.len() == classes.len() {
        crate::progress::log(format!(
            "{file}: class folders of {} matched to its lines by sorted folder name",
            root.display()
        ));
        folders
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i as i32))
            .collect()
    } else {
        let missing = folders
            .iter()
            .find(|f| !by_name.contains_key(f.as_str()))
            .expect("one");
        bail!(
            "{file}: has {} classes and no line for folder '{missing}' of {} ({} class folders)",
            classes.len(),
            root.display(),
            folders.len()
        );
    };
    Ok((classes, map))
}

/// An image folder: `root/<class>/*` or `root/<split>/<class>/*` (split = train, calib, val,
/// test). Without split folders, `test` and `calib` fractions are held out by a hash of the path.
pub fn from_folder(
    root: &Path,
    class_file: Option<&Path>,
    test_fraction: f64,
    calib_fraction: f64,
) -> Result<Dataset> {
    if !root.is_dir() {
        bail!("{}: not a folder", root.display());
    }
    if !(0.0..1.0).contains(&(test_fraction + calib_fraction))
        || test_fraction < 0.0
        || calib_fraction < 0.0
    {
        bail!("test and calib fractions must be ≥ 0 and sum to less than 1");
    }
    let classes = class_file.map(read_class_file).transpose()?;
    let top = subdirs(root)?;
    let split_of = |n: &str| match n {
        "train" => Some("train"),
        "calib" | "val" => Some("calib"),
        "test" => Some("test"),
        _ => None,
    };
    let split_layout = !top.is_empty() && top.iter().all(|d| split_of(&name_of(d)).is_some());
    // (split or None, class folder)
    let mut class_dirs: Vec<(Option<&'static str>, PathBuf)> = Vec::new();
    if split_layout {
        for s in &top {
            for c in subdirs(s)? {
                class_dirs.push((split_of(&name_of(s)), c));
            }
        }
    } else {
        class_dirs.extend(top.into_iter().map(|c| (None, c)));
    }
    let folders: BTreeSet<String> = class_dirs.iter().map(|(_, c)| name_of(c)).collect();
    if folders.len() < 2 {
        bail!("{}: needs at least 2 class folders", root.display());
    }
    let (classes, map) = folder_classes(root, &folders, classes, class_file)?;
    let mut samples = Vec::new();
    let mut ignored = 0usize;
    for (split, dir) in class_dirs {
        let label = map[&name_of(&dir)];
        for p in sorted_entries(&dir)? {
            if !p.is_file() {
                continue;
            }
            if !is_image(&p) {
                ignored += 1;
                continue;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let id = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let split = split.unwrap_or_else(|| holdout_split(&id, test_fraction, calib_fraction));
            samples.push(Sample {
                id,
                path: p,
                split: split.to_string(),
                label: Some(label),
            });
        }
    }
    if ignored > 0 {
        crate::progress::log(format!(
            "{}: ignored {ignored} files that are not .jpg, .jpeg or .png",
            root.display()
        ));
    }
    finish(root, classes, samples)
}

/// A manifest: CSV (header row) or Parquet with columns `path` (relative to the manifest's
/// folder or absolute), `label` (class name or id; empty for an unlabeled pool image), `split`
/// (train, calib, test) and optional `sample_id` (default: the path as written).
pub fn from_manifest(path: &Path, class_file: Option<&Path>) -> Result<Dataset> {
    let cols = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        read_parquet_columns(path)?
    } else {
        read_csv_columns(path)?
    };
    let col = |name: &str| -> Result<&Vec<Option<String>>> {
        cols.get(name).ok_or_else(|| {
            anyhow!(
                "{}: no '{name}' column (needs path, label, split)",
                path.display()
            )
        })
    };
    let (paths, labels, splits) = (col("path")?, col("label")?, col("split")?);
    let ids = cols.get("sample_id");
    let classes = match class_file {
        Some(f) => read_class_file(f)?,
        None => {
            let names: BTreeSet<&str> = labels
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|l| !l.is_empty())
                .collect();
            if names.iter().all(|n| n.parse::<i64>().is_ok()) {
                bail!(
                    "{}: labels are class ids; pass the class-name file",
                    path.display()
                );
            }
            names
                .into_iter()
                .map(|n| Class {
                    name: n.to_string(),
                    synonyms: Vec::new(),
                })
                .collect()
        }
    };
    let by_name: HashMap<&str, i32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as i32))
        .collect();
    let base = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::with_capacity(paths.len());
    for i in 0..paths.len() {
        let row = i + 2; // 1-based, after the header
        let p = paths[i]
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow!("{}: row {row}: empty path", path.display()))?;
        let split = match splits[i].as_deref() {
            Some("train") => "train",
            Some("calib") | Some("val") => "calib",
            Some("test") => "test",
            other => bail!(
                "{}: row {row}: split {:?} is not train, calib or test",
                path.display(),
                other.unwrap_or("")
            ),
        };
        let label = match labels[i].as_deref().filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => Some(match by_name.get(l) {
                Some(&id) => id,
                None => match l.parse::<i32>() {
                    Ok(id) if id >= 0 && (id as usize) < classes.len() => id,
                    _ => bail!(
                        "{}: row {row}: label '{l}' is neither a class name nor an id in 0..{}",
                        path.display(),
                        classes.len()
                    ),
                },
            }),
        };
        let id = match ids.and_then(|c| c[i].clone()) {
            Some(id) if !id.is_empty() => id,
            _ => p.to_string(),
        };
        samples.push(Sample {
            id,
            path: base.join(p),
            split: split.to_string(),
            label,
        });
    }
    finish(path, classes, samples)
}

fn finish(source: &Path, classes: Vec<Class>, samples: Vec<Sample>) -> Result<Dataset> {
    let mut seen = HashSet::new();
    for s in &samples {
        if !seen.insert(s.id.as_str()) {
            bail!("{}: sample id '{}' appears twice", source.display(), s.id);
        }
    }
    for split in ["train", "test"] {
        if !samples.iter().any(|s| s.split == split) {
            bail!(
                "{}: no '{split}' images (a dataset needs train and test; hold out a test \
                 fraction or add a test folder)",
                source.display()
            );
        }
    }
    Ok(Dataset { classes, samples })
}

fn read_csv_columns(path: &Path) -> Result<HashMap<String, Vec<Option<String>>>> {
    let mut r = csv::Reader::from_path(path)
        .with_context(|| format!("{}: cannot read the manifest", path.display()))?;
    let header: Vec<String> = r
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::new(); header.len()];
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        for (j, c) in cols.iter_mut().enumerate() {
            c.push(rec.get(j).map(|v| v.trim().to_string()));
        }
    }
    Ok(header.into_iter().zip(cols).collect())
}

fn read_parquet_columns(path: &Path) -> Result<HashMap<String, Vec<Option<String>>>> {
    let t = crate::table::read_any(path)?;
    t.columns
        .iter()
        .map(|(n, _)| Ok((n.clone(), t.texts(n)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    /// The committed name lists parse as class files, in the index order of their datasets.
    #[test]
    fn shipped_class_lists_parse() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let inet = read_class_file(&data.join("imagenet.classes.txt")).unwrap();
        assert_eq!(inet.len(), 1000);
        assert_eq!(inet[0].name, "tench");
        assert_eq!(inet[281].name, "tabby");
        assert_eq!(inet[770].name, "running shoe");
        let fm = read_class_file(&data.join("fashion-mnist.classes.txt")).unwrap();
        let names: Vec<&str> = fm.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], "T-shirt/top");
        assert_eq!(names[9], "Ankle boot");
        assert_eq!(names.len(), 10);
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn class_files_parse_synonyms_and_reject_bad_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("classes.txt");
        std::fs::write(&p, "# animals\ncat | kitty | house cat\n\ndog\n").unwrap();
        let c = read_class_file(&p).unwrap();
        assert_eq!(c[0].name, "cat");
        assert_eq!(c[0].synonyms, vec!["kitty", "house cat"]);
        assert_eq!(c[1].synonyms, Vec::<String>::new());
        std::fs::write(&p, "cat\ncat\n").unwrap();
        let e = read_class_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("classes.txt:2: class 'cat' is listed twice"),
            "{e}"
        );
        std::fs::write(&p, "cat | \ndog\n").unwrap();
        assert!(read_class_file(&p)
            .unwrap_err()
            .to_string()
            .contains("classes.txt:1:"));
    }

    #[test]
    fn folders_with_and_without_split_level() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("flat");
        for i in 0..50 {
            touch(&r.join(format!("golden_retriever/{i}.jpg")));
            touch(&r.join(format!("tabby/{i}.PNG")));
        }
        touch(&r.join("tabby/notes.txt"));
        let d = from_folder(&r, None, 0.2, 0.1).unwrap();
        assert_eq!(d.classes[0].name, "golden retriever");
        assert_eq!(d.samples.len(), 100);
        assert!(d
            .samples
            .iter()
            .any(|s| s.id == "tabby/3.PNG" && s.label == Some(1)));
        let n = |s: &str| d.samples.iter().filter(|x| x.split == s).count();
        assert!(
            n("test") > 5 && n("calib") > 2 && n("train") > 50,
            "{} {} {}",
            n("train"),
            n("calib"),
            n("test")
        );
        // the hold-out is a function of the id: same again
        let d2 = from_folder(&r, None, 0.2, 0.1).unwrap();
        assert_eq!(d.samples, d2.samples);

        let r = t.path().join("split");
        touch(&r.join("train/n02/a.jpg"));
        touch(&r.join("train/n01/b.jpg"));
        touch(&r.join("val/n01/c.jpg"));
        touch(&r.join("test/n02/d.jpg"));
        let names = t.path().join("names.txt");
        std::fs::write(&names, "tench | Tinca tinca\ngoldfish\n").unwrap();
        // folder ids matched to the file's lines in sorted order
        let d = from_folder(&r, Some(&names), 0.0, 0.0).unwrap();
        let s: Vec<(&str, &str, Option<i32>)> = d
            .samples
            .iter()
            .map(|s| (s.id.as_str(), s.split.as_str(), s.label))
            .collect();
        assert!(s.contains(&("train/n01/b.jpg", "train", Some(0))));
        assert!(s.contains(&("train/n02/a.jpg", "train", Some(1))));
        assert!(s.contains(&("val/n01/c.jpg", "calib", Some(0))));
        assert!(s.contains(&("test/n02/d.jpg", "test", Some(1))));
        assert_eq!(d.classes[0].synonyms, vec!["Tinca tinca"]);
        std::fs::write(&names, "a\nb\nc\n").unwrap();
        let e = from_folder(&r, Some(&names), 0.0, 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("names.txt: has 3 classes and no line for folder 'n01'"),
            "{e}"
        );
        // no test split and nothing held out
        let e = from_folder(&t.path().join("flat"), None, 0.0, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no 'test' images"), "{e}");
    }

    #[test]
    fn csv_and_parquet_manifests() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.csv");
        std::fs::write(
            &p,
            "path,label,split\nimg/a.jpg,cat,train\nimg/b.jpg,,train\nimg/c.jpg,dog,test\n",
        )
        .unwrap();
        let d = from_manifest(&p, None).unwrap();
        assert_eq!(
            d.classes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["cat", "dog"]
        );
        assert_eq!(d.samples[0].path, t.path().join("img/a.jpg"));
        assert_eq!(d.samples[1].label, None);
        assert_eq!(d.samples[2].label, Some(1));
        assert_eq!(d.samples[2].id, "img/c.jpg");
        std::fs::write(&p, "path,label,split\na.jpg,cow,train\n").unwrap();
        let names = t.path().join("names.txt");
        std::fs::write(&names, "cat\ndog\n").unwrap();
        let e = from_manifest(&p, Some(&names)).unwrap_err().to_string();
        assert!(e.contains("m.csv: row 2: label 'cow' is neither"), "{e}");
        std::fs::write(&p, "path,label,split\na.jpg,1,dev\n").unwrap();
        let e = from_manifest(&p, Some(&names)).unwrap_err().to_string();
        assert!(e.contains("m.csv: row 2: split \"dev\""), "{e}");
        std::fs::write(&p, "file,label,split\n").unwrap();
        let e = from_manifest(&p, Some(&names)).unwrap_err().to_string();
        assert!(e.contains("m.csv: no 'path' column"), "{e}");

        // Parquet with integer labels and explicit ids
        let pq = t.path().join("m.parquet");
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "sample_id",
                std::sync::Arc::new(StringArray::from(vec!["x", "y"])) as arrow::array::ArrayRef,
            ),
            (
                "path",
                std::sync::Arc::new(StringArray::from(vec!["/abs/x.png", "y.png"])) as _,
            ),
            (
                "label",
                std::sync::Arc::new(arrow::array::Int32Array::from(vec![1, 0])) as _,
            ),
            (
                "split",
                std::sync::Arc::new(StringArray::from(vec!["train", "test"])) as _,
            ),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&pq).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let d = from_manifest(&pq, Some(&names)).unwrap();
        assert_eq!(d.samples[0].id, "x");
        assert_eq!(d.samples[0].path, PathBuf::from("/abs/x.png"));
        assert_eq!(d.samples[0].label, Some(1));
        let e = from_manifest(&pq, None).unwrap_err().to_string();
        assert!(
            e.contains("labels are class ids; pass the class-name file"),
            "{e}"
        );
    }
}
