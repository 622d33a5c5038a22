//! `--shard I/N`: part I (0-based) of N of a stage's work — the runs of a pipeline (every N-th
//! in pipeline order), the shards of a corpus (by a stable hash of the file name) — so that the
//! N parts are disjoint, cover everything, and are the same in every process (a Slurm array task
//! or a Ray task each).

use anyhow::{bail, Result};

/// Part `index` of `count` (0-based): the items k, in their fixed order, with k mod count = index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Shard> {
        let bad = || anyhow::anyhow!("expected I/N with 0 ≤ I < N (e.g. 0/4 … 3/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 {
            bail!("N must be at least 1");
        }
        if index >= count {
            bail!(
                "I must be below N = {count} (0/{count} … {}/{count})",
                count - 1
            );
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether item `k` (in the fixed order) belongs to this part.
    pub fn holds(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// Whether the item named `name` belongs to this part, by a stable hash of the name (sha256):
    /// an item keeps its part when others are added or removed.
    pub fn holds_name(&self, name: &str) -> bool {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(name.as_bytes());
        let h = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        (h % self.count as u64) as usize == self.index
    }
}

/// `{stem}.part-I-of-N.parquet`: the file part I of N of a sharded stage writes.
pub fn part_file(stem: &str, s: Shard) -> String {
    format!("{stem}.part-{}-of-{}.parquet", s.index, s.count)
}

/// The part files `{stem}.part-I-of-M.parquet` in `dir` of a split into M ≠ `n` parts (sorted).
pub fn other_parts(dir: &std::path::Path, stem: &str, n: usize) -> Vec<std::path::PathBuf> {
    let prefix = format!("{stem}.part-");
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix(prefix.as_str()))
                .and_then(|r| r.strip_suffix(".parquet"))
                .and_then(|r| r.split_once("-of-"))
                .is_some_and(|(i, count)| {
                    i.parse::<usize>().is_ok() && count.parse::<usize>().is_ok_and(|c| c != n)
                })
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_disjoint_and_cover_everything_and_bad_ones_are_refused() {
        let parts: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for k in 0..10 {
            assert_eq!(parts.iter().filter(|p| p.holds(k)).count(), 1);
        }
        assert_eq!(parts[2].to_string(), "2/3");
        for name in ["part-00000.parquet", "part-00001.parquet", "x"] {
            assert_eq!(parts.iter().filter(|p| p.holds_name(name)).count(), 1);
        }
        for (bad, says) in [
            ("3/2", "below N = 2"),
            ("0/0", "at least 1"),
            ("x", "I/N"),
            ("1/", "I/N"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn part_files_of_another_count_are_found() {
        let d = tempfile::tempdir().unwrap();
        let s = |i, n| Shard { index: i, count: n };
        for f in [
            part_file("train", s(0, 2)),
            part_file("train", s(1, 3)),
            part_file("test", s(0, 3)),
        ] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        std::fs::write(d.path().join("train.part-x-of-3.parquet"), b"").unwrap();
        assert_eq!(part_file("train", s(1, 3)), "train.part-1-of-3.parquet");
        let found = other_parts(d.path(), "train", 2);
        assert_eq!(found, vec![d.path().join("train.part-1-of-3.parquet")]);
        assert!(other_parts(d.path(), "train", 3).len() == 1);
        assert!(other_parts(d.path(), "none", 2).is_empty());
    }
}
