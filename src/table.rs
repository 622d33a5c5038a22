//! Parquet I/O for the tables of `schemas/`: zstd-compressed, checked on read and on write, and
//! written to a temporary file in the target folder then renamed, so no half-written file exists.

use crate::mat::Mat;
use crate::schema::Table;
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A table read from one file: its checked columns and its file-level metadata.
pub struct Frame {
    pub path: String,
    pub columns: Vec<(String, ArrayRef)>,
    pub meta: BTreeMap<String, String>,
    pub rows: usize,
}

impl Frame {
    fn col(&self, name: &str) -> Result<&ArrayRef> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| anyhow!("{}: missing column '{name}'", self.path))
    }

    fn typed<T: 'static>(&self, name: &str) -> Result<&T> {
        self.col(name)?
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| anyhow!("{}: column '{name}' has an unexpected type", self.path))
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .typed::<StringArray>(name)?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    }

    pub fn opt_strings(&self, name: &str) -> Result<Vec<Option<String>>> {
        Ok(self
            .typed::<StringArray>(name)?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    }

    /// A `list<utf8>` column (a null list reads as empty).
    pub fn list_strings(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let l = self.typed::<arrow::array::ListArray>(name)?;
        (0..l.len())
            .map(|i| {
                if l.is_null(i) {
                    return Ok(Vec::new());
                }
                let v = l.value(i);
                let s = v.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    anyhow!("{}: column '{name}' is not a list of strings", self.path)
                })?;
                Ok(s.iter()
                    .map(|x| x.unwrap_or_default().to_string())
                    .collect())
            })
            .collect()
    }

    pub fn i32s(&self, name: &str) -> Result<Vec<Option<i32>>> {
        Ok(self.typed::<Int32Array>(name)?.iter().collect())
    }

    pub fn i64s(&self, name: &str) -> Result<Vec<Option<i64>>> {
        Ok(self.typed::<Int64Array>(name)?.iter().collect())
    }

    pub fn f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        Ok(self.typed::<Float64Array>(name)?.iter().collect())
    }

    pub fn bools(&self, name: &str) -> Result<Vec<Option<bool>>> {
        Ok(self
            .typed::<arrow::array::BooleanArray>(name)?
            .iter()
            .collect())
    }

    /// A fixed-size-list<float32> column as a matrix, one row per table row.
    pub fn mat(&self, name: &str) -> Result<Mat> {
        let list = self.typed::<FixedSizeListArray>(name)?;
        let dim = list.value_length() as usize;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| anyhow!("{}: column '{name}' is not float32", self.path))?;
        let start = list.offset() * dim;
        Mat::new(
            list.len(),
            dim,
            values.values()[start..start + list.len() * dim].to_vec(),
        )
    }

    /// A column of any numeric type as f64 (nulls stay `None`).
    pub fn numbers(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let a = self.col(name)?;
        if !a.data_type().is_numeric() {
            bail!(
                "{}: column '{name}' holds {}, not numbers",
                self.path,
                a.data_type()
            );
        }
        let c = arrow::compute::cast(a, &DataType::Float64)
            .map_err(|e| anyhow!("{}: column '{name}': {e}", self.path))?;
        let c = c
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to f64");
        Ok(c.iter().collect())
    }

    /// A column of text, or of numbers written as text (nulls stay `None`).
    pub fn texts(&self, name: &str) -> Result<Vec<Option<String>>> {
        let a = self.col(name)?;
        let c = arrow::compute::cast(a, &DataType::Utf8).map_err(|_| {
            anyhow!(
                "{}: column '{name}' holds {}, not text",
                self.path,
                a.data_type()
            )
        })?;
        let c = c
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to utf8");
        Ok(c.iter().map(|v| v.map(str::to_string)).collect())
    }

    /// Whether the file has the column.
    pub fn has(&self, name: &str) -> bool {
        self.columns.iter().any(|(n, _)| n == name)
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        meta_value(&self.path, &self.meta, key)
    }
}

/// A key of a file's metadata (as [`read_meta`] returns it); one error line naming the file
/// when it is missing.
pub fn meta_value<'a>(
    file: &str,
    meta: &'a BTreeMap<String, String>,
    key: &str,
) -> Result<&'a str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("{file}: missing file metadata key '{key}'"))
}

/// A file opened for reading, with the name its errors carry.
fn open(path: &Path) -> Result<(String, ParquetRecordBatchReaderBuilder<File>)> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{name}: not a readable Parquet file ({e})"))?;
    Ok((name, builder))
}

/// Every batch of a reader as one, its columns named.
fn collect(name: &str, builder: ParquetRecordBatchReaderBuilder<File>) -> Result<Frame> {
    use arrow::array::RecordBatchReader;
    let meta = key_values(builder.metadata().file_metadata());
    let reader = builder.build().map_err(|e| anyhow!("{name}: {e}"))?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{name}: corrupt Parquet data ({e})"))?;
    let batch =
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| anyhow!("{name}: {e}"))?;
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| (f.name().clone(), a.clone()))
        .collect();
    Ok(Frame {
        path: name.to_string(),
        columns,
        meta,
        rows: batch.num_rows(),
    })
}

/// Read and check a table.
pub fn read(path: &Path, table: Table) -> Result<Frame> {
    let (name, builder) = open(path)?;
    let mut frame = collect(&name, builder)?;
    frame.columns = table.check(&name, std::mem::take(&mut frame.columns), &frame.meta)?;
    Ok(frame)
}

/// Rows per batch of a streamed read ([`read_rows`]): 8192 rows of a 1000-d vector are 32 MB.
const STREAM_BATCH: usize = 8192;

/// Each row of a table's vector column (`fixed_size_list<float32>`) whose sample id is in one of
/// the lists: `each(list k, position in list k, the vector)`, in file order; returns the vector
/// length and the file's metadata. The file is read batch by batch, each batch checked as
/// `table` says (row numbers in errors count from the file's start), so it holds one batch at a
/// time whatever the file's size: a 1.28M × 1000 predictions table is 5 GB, and reading it whole
/// took three copies of that. Every id asked for must be in the file,
/// and its `sample_id`s must be unique.
pub fn visit_rows(
    path: &Path,
    table: Table,
    column: &str,
    ids: &[&[String]],
    mut each: impl FnMut(usize, usize, &[f32]),
) -> Result<(usize, BTreeMap<String, String>)> {
    use arrow::array::RecordBatchReader;
    use std::collections::{HashMap, HashSet};
    let (name, builder) = open(path)?;
    let meta = key_values(builder.metadata().file_metadata());
    let reader = builder
        .with_batch_size(STREAM_BATCH)
        .build()
        .map_err(|e| anyhow!("{name}: {e}"))?;
    let schema = reader.schema();
    // the types and the metadata, also for a file without rows
    let named = |b: &RecordBatch| -> Vec<(String, ArrayRef)> {
        schema
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, a)| (f.name().clone(), a.clone()))
            .collect()
    };
    table.check(&name, named(&RecordBatch::new_empty(schema.clone())), &meta)?;
    let dim = match schema.field_with_name(column).map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(_, d)) => *d as usize,
        _ => bail!("{name}: column '{column}' is not a fixed-size list"),
    };
    let wanted: Vec<HashMap<&str, usize>> = ids
        .iter()
        .map(|l| l.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect())
        .collect();
    let mut found: Vec<Vec<bool>> = ids.iter().map(|l| vec![false; l.len()]).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut first_row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("{name}: corrupt Parquet data ({e})"))?;
        let cols = table.check_from(&name, named(&batch), &meta, first_row)?;
        let col = |n: &str| &cols.iter().find(|(c, _)| c == n).expect("checked").1;
        let sids = col("sample_id")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("checked utf8");
        let (values, _) = crate::schema::f32_rows(col(column));
        for (r, sid) in sids.iter().enumerate() {
            let sid = sid.expect("checked not null");
            if !seen.insert(sid.to_string()) {
                bail!("{name}: duplicate sample_id '{sid}'");
            }
            for (k, w) in wanted.iter().enumerate() {
                if let Some(&i) = w.get(sid) {
                    each(k, i, &values[r * dim..(r + 1) * dim]);
                    found[k][i] = true;
                }
            }
        }
        first_row += batch.num_rows();
    }
    for (k, f) in found.iter().enumerate() {
        if let Some(i) = f.iter().position(|&x| !x) {
            bail!("{name}: no row for sample '{}'", ids[k][i]);
        }
    }
    Ok((dim, meta))
}

/// The rows of a table's vector column for each list of sample ids, in that list's order, and
/// the file's metadata: [`visit_rows`] into one matrix per list, so memory is the result plus
/// one batch whatever the file's size.
pub fn read_rows(
    path: &Path,
    table: Table,
    column: &str,
    ids: &[&[String]],
) -> Result<(Vec<Mat>, BTreeMap<String, String>)> {
    let mut out: Vec<Mat> = Vec::new();
    let (dim, meta) = visit_rows(path, table, column, ids, |k, i, v| {
        if out.is_empty() {
            out = ids.iter().map(|l| Mat::zeros(l.len(), v.len())).collect();
        }
        out[k].row_mut(i).copy_from_slice(v);
    })?;
    if out.is_empty() {
        out = ids.iter().map(|l| Mat::zeros(l.len(), dim)).collect();
    }
    Ok((out, meta))
}

/// [`read_rows`] for one list of ids.
pub fn read_aligned(
    path: &Path,
    table: Table,
    column: &str,
    ids: &[String],
) -> Result<(Mat, BTreeMap<String, String>)> {
    let (mut m, meta) = read_rows(path, table, column, &[ids])?;
    Ok((m.pop().expect("one list"), meta))
}

/// Every column of a file, without checking the table (a user's manifest or answers).
pub fn read_any(path: &Path) -> Result<Frame> {
    let (name, builder) = open(path)?;
    collect(&name, builder)
}

/// Those of `columns` that a file has, without the others and without checking the table
/// (e.g. results files of every version for `report`; a missing column is an error only when
/// it is asked for).
pub fn read_columns(path: &Path, columns: &[&str]) -> Result<Frame> {
    let (name, builder) = open(path)?;
    let present: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| builder.schema().field_with_name(c).is_ok())
        .collect();
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), present);
    collect(&name, builder.with_projection(mask))
}

/// How a write treats an existing file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Replace an existing file atomically.
    Replace,
    /// Never touch an existing file: results are appended, never rewritten.
    /// Returns `Ok(false)` if the file already exists.
    NoClobber,
}

/// Check and write a table: zstd, temporary file in the target folder, then rename.
pub fn write(
    path: &Path,
    table: Table,
    columns: Vec<(&str, ArrayRef)>,
    meta: &[(&str, String)],
    mode: Mode,
) -> Result<bool> {
    write_as(
        path,
        &path.display().to_string(),
        table,
        columns,
        meta,
        mode,
        true,
    )
}

/// Write a table to `path` in a staging folder; errors name `dest`, where it will be moved.
pub fn write_staged(
    path: &Path,
    dest: &Path,
    table: Table,
    columns: Vec<(&str, ArrayRef)>,
    meta: &[(&str, String)],
) -> Result<()> {
    let name = dest.display().to_string();
    write_as(path, &name, table, columns, meta, Mode::Replace, false).map(|_| ())
}

/// One utf8 column of a file, without reading the others (e.g. the ids of a large embeddings
/// table); the table is not checked beyond that column's presence and type.
pub fn read_utf8_column(path: &Path, column: &str) -> Result<Vec<String>> {
    Ok(read_columns(path, &[column])?
        .texts(column)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// A file's key–value metadata (the footer only; the table is not read or checked).
pub fn read_meta(path: &Path) -> Result<BTreeMap<String, String>> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{name}: not a readable Parquet file ({e})"))?;
    use parquet::file::reader::FileReader;
    Ok(key_values(reader.metadata().file_metadata()))
}

/// The key–value metadata of a Parquet footer, without Arrow's embedded schema.
fn key_values(fm: &parquet::file::metadata::FileMetaData) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    for KeyValue { key, value } in fm.key_value_metadata().into_iter().flatten() {
        if key != "ARROW:schema" {
            meta.insert(key.clone(), value.clone().unwrap_or_default());
        }
    }
    meta
}

fn write_as(
    path: &Path,
    name: &str,
    table: Table,
    columns: Vec<(&str, ArrayRef)>,
    meta: &[(&str, String)],
    mode: Mode,
    log: bool,
) -> Result<bool> {
    let name = name.to_string();
    let meta: BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let columns: Vec<(String, ArrayRef)> = columns
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    let columns = table.check(&name, columns, &meta)?;
    let dims: Vec<(&str, usize)> = columns
        .iter()
        .filter_map(|(n, a)| match a.data_type() {
            DataType::FixedSizeList(_, d) => Some((n.as_str(), *d as usize)),
            _ => None,
        })
        .collect();
    let schema = Arc::new(table.arrow_schema(&dims, &BTreeMap::new())?);
    let arrays: Vec<ArrayRef> = columns.into_iter().map(|(_, a)| a).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .with_context(|| format!("{name}: building table"))?;

    if mode == Mode::NoClobber && path.exists() {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let tmp = temp_file_for(path)?;
    let kv: Vec<KeyValue> = meta
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(rows_per_group(&batch)))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut writer = ArrowWriter::try_new(tmp.as_file().try_clone()?, schema, Some(props))?;
    writer
        .write(&batch)
        .with_context(|| format!("{name}: writing"))?;
    writer.close().with_context(|| format!("{name}: writing"))?;
    tmp.as_file().sync_all()?;
    fault_point();
    match mode {
        Mode::Replace => {
            tmp.persist(path)
                .map_err(|e| anyhow!("{name}: cannot rename into place ({})", e.error))?;
        }
        Mode::NoClobber => match tmp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if path.exists() => {
                drop(e);
                return Ok(false);
            }
            Err(e) => bail!("{name}: cannot rename into place ({})", e.error),
        },
    }
    if log {
        crate::progress::log(format!("wrote {name} ({} rows)", batch.num_rows()));
    }
    Ok(true)
}

/// Rows per Parquet row group, for groups of at most ~128 MiB: the writer holds a whole group in
/// memory until it flushes it, and Parquet's default of 1M rows is 4 GB of 1000-d vectors (the
/// writer's own byte limit cuts only between batches, and a table is written as one batch). A
/// table smaller than that is one row group, as before. A row's size is estimated from the
/// column types alone (text as 32 bytes), so the same table is cut the same way however it was
/// built.
fn rows_per_group(batch: &RecordBatch) -> usize {
    const GROUP_BYTES: usize = 128 << 20;
    const DEFAULT_ROWS: usize = 1024 * 1024;
    let row_bytes: usize = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::FixedSizeList(item, d) => {
                item.data_type().primitive_width().unwrap_or(8) * *d as usize
            }
            t => t.primitive_width().unwrap_or(32),
        })
        .sum();
    (GROUP_BYTES / row_bytes.max(1)).clamp(1024, DEFAULT_ROWS)
}

// ---- temporary files and folders, and the leftovers of killed processes ---------------------

/// When this process started (set by `main`; else the first call).
static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// A folder written whole or not at all: built under a hidden temporary name beside `dest` and
/// renamed to `dest` by [`StagedDir::commit`]; dropped uncommitted, it is removed.
pub struct StagedDir {
    tmp: tempfile::TempDir,
    dest: std::path::PathBuf,
}

impl StagedDir {
    /// `tag` names the stage in the folder's temporary name (see [`staging_dir_in`]).
    pub fn new(dest: &Path, tag: &str) -> Result<StagedDir> {
        use anyhow::Context;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        sweep_stale(parent, false);
        let tmp = staging_dir_in(parent, tag)?;
        Ok(StagedDir {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn commit(self) -> Result<()> {
        use anyhow::Context;
        let staged = self.tmp.keep();
        std::fs::rename(&staged, &self.dest)
            .with_context(|| format!("{}: cannot move into place", self.dest.display()))
    }

    /// [`StagedDir::commit`], replacing an existing `dest`: the old folder is moved aside (under
    /// a temporary name that a later sweep removes if this process dies), then deleted.
    pub fn commit_replacing(self) -> Result<()> {
        use anyhow::Context;
        if !self.dest.exists() {
            return self.commit();
        }
        let parent = self.tmp.path().parent().expect("a parent").to_path_buf();
        let old = staging_dir_in(&parent, "replaced")?.keep();
        let aside = old.join("old");
        std::fs::rename(&self.dest, &aside)
            .with_context(|| format!("{}: cannot move aside", self.dest.display()))?;
        let staged = self.tmp.keep();
        std::fs::rename(&staged, &self.dest)
            .with_context(|| format!("{}: cannot move into place", self.dest.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))
    }
}

/// Mark the process start: leftovers older than it, of processes no longer alive, are stale.
pub fn mark_process_start() {
    STARTED.get_or_init(std::time::SystemTime::now);
}

/// This process's owner token in temporary names: `{pid}_{host}`, host the first 8 hex digits of
/// a sha256 of the host name, so that a sweep on one machine of a shared folder (NFS, Lustre)
/// never judges another machine's processes by its own process table.
fn owner_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| format!("{}_{}", std::process::id(), host_tag()))
        .clone()
}

/// The first 8 hex digits of sha256(host name).
fn host_tag() -> String {
    use sha2::{Digest, Sha256};
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates (then the name is the buffer's prefix, the same on every call).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name: &[u8] = if r == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        &buf[..end]
    } else {
        b""
    };
    Sha256::digest(name)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temporary file beside `dest`, named `.{file name}.{pid}_{host}.{random}.tmp`, removed when
/// dropped unpersisted; a killed process's is removed by the next [`sweep_stale`] of its folder
/// on the same machine.
pub fn temp_file_for(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", owner_token()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))
}

/// Write a small file whole (a person's answers, a Label Studio export): a temporary file in
/// the same folder (made if missing), synced, then renamed over `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    let mut tmp = temp_file_for(path)?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("{}: cannot write ({})", path.display(), e.error))?;
    Ok(())
}

/// A staging folder in `parent`, named `.{tag}-staging-{pid}_{host}-{random}`.
pub fn staging_dir_in(parent: &Path, tag: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".{tag}-staging-{}-", owner_token()))
        .tempdir_in(parent)
        .with_context(|| format!("{}: cannot create a staging folder", parent.display()))
}

/// The owner of a temporary name of [`temp_file_for`] or [`staging_dir_in`]: its process id and,
/// when the name carries one, its host tag (names of older versions have none).
fn temp_owner(name: &str) -> Option<(u32, Option<&str>)> {
    let rest = name.strip_prefix('.')?;
    let token = if let Some(stem) = rest.strip_suffix(".tmp") {
        // {file name}.{owner}.{random}
        let mut parts = stem.rsplitn(3, '.');
        let (_random, owner, _name) = (parts.next()?, parts.next()?, parts.next()?);
        owner
    } else {
        // {tag}-staging-{owner}-{random}
        let (_, tail) = rest.split_once("-staging-")?;
        tail.split('-').next()?
    };
    match token.split_once('_') {
        Some((pid, host)) => Some((pid.parse().ok()?, Some(host))),
        None => Some((token.parse().ok()?, None)),
    }
}

/// A temporary name's owner is gone: a process of this machine (or of an unnamed one) that has
/// exited. Another machine's names are never judged here.
fn owner_gone(pid: u32, host: Option<&str>) -> bool {
    host.is_none_or(|h| h == host_tag()) && !alive(pid)
}

fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove the temporary files and staging folders that killed processes left in `dir` (and its
/// subfolders with `recursive`): only names of this module's temporary naming, whose process is
/// gone, last modified before this process started. Logs what it removed; returns the count.
pub fn sweep_stale(dir: &Path, recursive: bool) -> usize {
    let started = *STARTED.get_or_init(std::time::SystemTime::now);
    let mut removed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let stale = temp_owner(&name).is_some_and(|(pid, host)| owner_gone(pid, host))
                && md.modified().is_ok_and(|t| t < started);
            if stale {
                let gone = if md.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if gone.is_ok() {
                    removed.push(name);
                }
            } else if recursive && md.is_dir() && !name.starts_with('.') {
                stack.push(path);
            }
        }
    }
    if !removed.is_empty() {
        removed.sort();
        crate::progress::log(format!(
            "{}: removed {} leftover(s) of stopped processes ({})",
            dir.display(),
            removed.len(),
            removed.join(", ")
        ));
    }
    removed.len()
}

/// Fault injection for the resume tests: with `VLAL_FAULT_ABORT_AFTER_WRITES=N`, the process
/// aborts (no destructors, like a kill) at its N-th table write, after the temporary file is
/// complete and before it is renamed into place.
fn fault_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    if let Some(n) = std::env::var("VLAL_FAULT_ABORT_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        if WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= n {
            eprintln!("vlal: fault injection: aborting at table write {n}");
            std::process::abort();
        }
    }
}

// ---- column builders -------------------------------------------------------------------------

pub fn utf8<S: AsRef<str>>(v: &[S]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v.iter().map(|s| s.as_ref())))
}

pub fn opt_utf8(v: &[Option<String>]) -> ArrayRef {
    Arc::new(StringArray::from(
        v.iter().map(|s| s.as_deref()).collect::<Vec<_>>(),
    ))
}

pub fn i32s(v: &[i32]) -> ArrayRef {
    Arc::new(Int32Array::from(v.to_vec()))
}

pub fn opt_i32s(v: &[Option<i32>]) -> ArrayRef {
    Arc::new(Int32Array::from(v.to_vec()))
}

pub fn i64s(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

pub fn f64s(v: &[f64]) -> ArrayRef {
    Arc::new(Float64Array::from(v.to_vec()))
}

pub fn opt_f64s(v: &[Option<f64>]) -> ArrayRef {
    Arc::new(Float64Array::from(v.to_vec()))
}

pub fn bools(v: &[bool]) -> ArrayRef {
    Arc::new(arrow::array::BooleanArray::from(v.to_vec()))
}

/// A matrix as a fixed-size-list<float32> column.
pub fn fixed_list(m: &Mat) -> Result<ArrayRef> {
    fixed_list_owned(m.clone())
}

/// [`fixed_list`] taking the matrix: its values become the column without a copy.
pub fn fixed_list_owned(m: Mat) -> Result<ArrayRef> {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(m.data));
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        m.cols as i32,
        values,
        None,
    )?))
}

/// A list<float64> column (None: a null list).
pub fn opt_list_f64(rows: &[Option<Vec<f64>>]) -> ArrayRef {
    Arc::new(arrow::array::ListArray::from_iter_primitive::<
        arrow::datatypes::Float64Type,
        _,
        _,
    >(rows.iter().map(|r| {
        r.as_ref()
            .map(|r| r.iter().map(|v| Some(*v)).collect::<Vec<_>>())
    })))
}

pub fn list_utf8(rows: &[Vec<String>]) -> ArrayRef {
    let mut b = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
    for r in rows {
        for s in r {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// A list<utf8> column as nested vectors.
pub fn read_list_utf8(frame: &Frame, name: &str) -> Result<Vec<Vec<String>>> {
    let arr = frame.col(name)?;
    let list = arr
        .as_any()
        .downcast_ref::<arrow::array::ListArray>()
        .ok_or_else(|| anyhow!("{}: column '{name}' is not a list", frame.path))?;
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        let v = list.value(i);
        let s = v
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| anyhow!("{}: '{name}' items", frame.path))?;
        out.push(
            s.iter()
                .map(|x| x.unwrap_or_default().to_string())
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb_cols(ids: &[&str], m: &Mat) -> Vec<(&'static str, ArrayRef)> {
        vec![("sample_id", utf8(ids)), ("vector", fixed_list(m).unwrap())]
    }

    fn emb_meta() -> Vec<(&'static str, String)> {
        ["model_id", "revision", "preprocessing", "dim", "created_by"]
            .iter()
            .map(|k| (*k, "x".to_string()))
            .collect()
    }

    #[test]
    fn round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/e.parquet");
        let m = Mat::new(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
        write(
            &p,
            Table::Embeddings,
            emb_cols(&["a", "b"], &m),
            &emb_meta(),
            Mode::Replace,
        )
        .unwrap();
        let f = read(&p, Table::Embeddings).unwrap();
        assert_eq!(f.mat("vector").unwrap(), m);
        assert_eq!(f.strings("sample_id").unwrap(), vec!["a", "b"]);
        assert_eq!(f.meta("model_id").unwrap(), "x");
        // no temporary file is left behind
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    /// An embeddings file written as is (no checks), in one row group per `group` rows.
    fn raw_file(p: &Path, ids: &[String], m: &Mat, group: usize) {
        let cols = emb_cols(&ids.iter().map(String::as_str).collect::<Vec<_>>(), m);
        let schema = Arc::new(
            Table::Embeddings
                .arrow_schema(&[("vector", m.cols)], &BTreeMap::new())
                .unwrap(),
        );
        let batch =
            RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect()).unwrap();
        let kv = emb_meta()
            .into_iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v))
            .collect();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(kv))
            .set_max_row_group_row_count(Some(group))
            .build();
        let mut w = ArrowWriter::try_new(File::create(p).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn streamed_rows_equal_the_whole_read_across_batches_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let n = 2 * STREAM_BATCH + 100;
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let m = Mat::new(n, 3, (0..3 * n).map(|v| v as f32).collect()).unwrap();
        raw_file(&p, &ids, &m, 5000);
        // two lists, out of file order, one row in both
        let a: Vec<String> = [n - 1, 0, STREAM_BATCH, 7]
            .iter()
            .map(|&i| ids[i].clone())
            .collect();
        let b: Vec<String> = [STREAM_BATCH + 1, 7]
            .iter()
            .map(|&i| ids[i].clone())
            .collect();
        let (out, meta) = read_rows(&p, Table::Embeddings, "vector", &[&a, &b]).unwrap();
        assert_eq!(out[0], m.select_rows(&[n - 1, 0, STREAM_BATCH, 7]));
        assert_eq!(out[1], m.select_rows(&[STREAM_BATCH + 1, 7]));
        assert_eq!(meta["model_id"], "x");
        let (all, _) = read_aligned(&p, Table::Embeddings, "vector", &ids).unwrap();
        assert_eq!(
            all,
            read(&p, Table::Embeddings).unwrap().mat("vector").unwrap()
        );
        let missing = vec!["s0".to_string(), "nope".to_string()];
        let e = read_aligned(&p, Table::Embeddings, "vector", &missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: no row for sample 'nope'", p.display())
        );
    }

    #[test]
    fn streamed_reads_check_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let n = STREAM_BATCH + 10;
        let mut ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let mut m = Mat::zeros(n, 2);
        // a non-finite value in the second batch: the row is the file's
        m.row_mut(STREAM_BATCH + 3)[1] = f32::INFINITY;
        raw_file(&p, &ids, &m, n);
        let want = vec!["s0".to_string()];
        let e = read_aligned(&p, Table::Embeddings, "vector", &want).unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "non-finite value (inf) in row {} (sample_id 's{}')",
                STREAM_BATCH + 3,
                STREAM_BATCH + 3
            )),
            "{e}"
        );
        // a sample id twice, in two batches
        m.row_mut(STREAM_BATCH + 3)[1] = 0.0;
        ids[n - 1] = "s1".to_string();
        raw_file(&p, &ids, &m, n);
        let e = read_aligned(&p, Table::Embeddings, "vector", &want).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: duplicate sample_id 's1'", p.display())
        );
    }

    #[test]
    fn large_tables_are_cut_into_row_groups_of_bounded_size() {
        use parquet::file::reader::FileReader;
        let groups = |p: &Path| {
            parquet::file::reader::SerializedFileReader::new(File::open(p).unwrap())
                .unwrap()
                .metadata()
                .num_row_groups()
        };
        // 1000-d f32 + a sample id: ≈ 4 KB a row, ≈ 33k rows a group
        let schema = Table::Predictions
            .arrow_schema(&[("probs", 1000)], &BTreeMap::new())
            .unwrap();
        let rows = rows_per_group(&RecordBatch::new_empty(Arc::new(schema)));
        assert_eq!(rows, (128 << 20) / (4 + 32 + 32 + 4000));
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("s.parquet");
        let n = 3000;
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let m = Mat::new(n, 2, (0..2 * n).map(|v| v as f32).collect()).unwrap();
        let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
        write(
            &small,
            Table::Embeddings,
            emb_cols(&idr, &m),
            &emb_meta(),
            Mode::Replace,
        )
        .unwrap();
        assert_eq!(groups(&small), 1);
        // a 40000-d vector (160 KB a row) would make groups of 838 rows: at least 1024
        let wide = Table::Embeddings
            .arrow_schema(&[("vector", 40_000)], &BTreeMap::new())
            .unwrap();
        assert_eq!(
            rows_per_group(&RecordBatch::new_empty(Arc::new(wide))),
            1024
        );
    }

    #[test]
    fn non_finite_vectors_are_rejected_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let m = Mat::new(2, 2, vec![1., 2., f32::NAN, 0.]).unwrap();
        let e = write(
            &p,
            Table::Embeddings,
            emb_cols(&["a", "b"], &m),
            &emb_meta(),
            Mode::Replace,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("non-finite value (NaN) in row 1 (sample_id 'b')"),
            "{e}"
        );
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_clobber_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let m1 = Mat::new(1, 1, vec![1.]).unwrap();
        let m2 = Mat::new(1, 1, vec![2.]).unwrap();
        assert!(write(
            &p,
            Table::Embeddings,
            emb_cols(&["a"], &m1),
            &emb_meta(),
            Mode::NoClobber
        )
        .unwrap());
        assert!(!write(
            &p,
            Table::Embeddings,
            emb_cols(&["a"], &m2),
            &emb_meta(),
            Mode::NoClobber
        )
        .unwrap());
        assert_eq!(
            read(&p, Table::Embeddings).unwrap().mat("vector").unwrap(),
            m1
        );
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        // a pid that cannot be alive (above Linux's pid_max)
        let dead = 4_194_400;
        let me = std::process::id();
        // written an hour ago, before this process started
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let age = |p: &Path| File::open(p).unwrap().set_modified(past).unwrap();
        let touch = |rel: &str| {
            std::fs::write(d.join(rel), b"x").unwrap();
            age(&d.join(rel));
        };
        touch(&format!("sub/.round-001.parquet.{dead}.AbC123.tmp"));
        let staging = d.join(format!(".extract-staging-{dead}_{}-Xy12", host_tag()));
        std::fs::create_dir_all(staging.join("a")).unwrap();
        age(&staging);
        let keep = [
            format!("sub/.round-002.parquet.{me}.AbC123.tmp"), // this process: alive
            // a dead pid, but of another machine sharing the folder: not ours to judge
            format!("sub/.round-005.parquet.{dead}_00000000.AbC123.tmp"),
            "sub/.round-003.parquet.AbC123.tmp".to_string(), // no pid: not ours to judge
            "sub/round-004.parquet".to_string(),
            format!("sub/x.{dead}.AbC123.tmp"), // not hidden: not a temporary name
        ];
        for k in &keep {
            touch(k);
        }
        assert_eq!(sweep_stale(d, false), 1, "the staging folder only");
        assert!(d
            .join(format!("sub/.round-001.parquet.{dead}.AbC123.tmp"))
            .exists());
        assert_eq!(sweep_stale(d, true), 1);
        for k in &keep {
            assert!(d.join(k).exists(), "{k}");
        }
        assert_eq!(
            temp_owner(&format!(".a.b.parquet.{dead}.zz.tmp")),
            Some((dead, None))
        );
        assert_eq!(
            temp_owner(&format!(".run-staging-{dead}_ab12cd34-q")),
            Some((dead, Some("ab12cd34")))
        );
        assert_eq!(temp_owner(".a.parquet.zz.tmp"), None);
        // this process's own names parse back to it
        let t = temp_file_for(&d.join("x.parquet")).unwrap();
        let name = t.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(temp_owner(&name), Some((me, Some(host_tag().as_str()))));
    }

    #[test]
    fn garbage_file_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.parquet");
        std::fs::write(&p, b"not parquet at all").unwrap();
        let e = read(&p, Table::Manifest).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!("{}: not a readable Parquet file", p.display())),
            "{e}"
        );
    }
}
