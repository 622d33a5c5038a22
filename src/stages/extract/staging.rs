//! `extract`'s staging folder: every file is written there first and moved into the cache only
//! when the whole extract succeeded.

use crate::mat::Mat;
use crate::schema::Table;
use crate::{progress, table};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Files written to the staging folder, moved into `out` at the end. Dropped uncommitted (a
/// failed extract), the staging folder goes, and `out` too if this run created it.
pub struct Staging {
    dir: Option<tempfile::TempDir>,
    files: Vec<PathBuf>,
    /// Files this extract replaces (a sharded extract's parts), removed after the commit.
    consumed: Vec<PathBuf>,
    out: PathBuf,
    created_out: bool,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging> {
        let created_out = !out.exists();
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create the cache folder", out.display()))?;
        // what killed extracts left: their staging folders and temporary files
        table::sweep_stale(out, true);
        Ok(Staging {
            dir: Some(table::staging_dir_in(out, "extract")?),
            files: Vec::new(),
            consumed: Vec::new(),
            out: out.to_path_buf(),
            created_out,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("until committed").path()
    }

    /// Write a table that will land at `path` (a path under `out`).
    pub fn write(
        &mut self,
        path: &Path,
        t: Table,
        cols: Vec<(&str, arrow::array::ArrayRef)>,
        meta: &[(&str, String)],
    ) -> Result<()> {
        let rel = path
            .strip_prefix(&self.out)
            .expect("under the cache folder");
        table::write_staged(&self.dir().join(rel), path, t, cols, meta)?;
        self.files.push(rel.to_path_buf());
        Ok(())
    }

    /// A teacher-logits table (its metadata: the model's, τ and the class count).
    pub fn write_logits(
        &mut self,
        path: &Path,
        ids: &[String],
        logits: &Mat,
        mut meta: Vec<(&str, String)>,
        tau: &str,
    ) -> Result<()> {
        meta.push(("tau", tau.to_string()));
        meta.push(("classes", logits.cols.to_string()));
        self.write(
            path,
            Table::TeacherLogits,
            vec![
                ("sample_id", table::utf8(ids)),
                ("logits", table::fixed_list(logits)?),
            ],
            &meta,
        )
    }

    /// Remove `path` once everything is committed (it is merged into a staged file).
    pub fn consumed(&mut self, path: PathBuf) {
        self.consumed.push(path);
    }

    /// Move every staged file into place, then remove the consumed files.
    pub fn commit(mut self) -> Result<usize> {
        self.created_out = false;
        for rel in &self.files {
            let to = self.out.join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("{}: cannot create folder", p.display()))?;
            }
            std::fs::rename(self.dir().join(rel), &to)
                .with_context(|| format!("{}: cannot move into place", to.display()))?;
            progress::log(format!("wrote {}", to.display()));
        }
        for p in &self.consumed {
            if std::fs::remove_file(p).is_ok() {
                progress::log(format!("removed {} (merged)", p.display()));
            }
        }
        Ok(self.files.len())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.dir.take());
        if self.created_out {
            let _ = std::fs::remove_dir(&self.out); // only if empty
        }
    }
}
