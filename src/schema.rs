//! The table definitions of `schemas/*.json` (the contract between stages) and the check that
//! every file a stage reads or writes passes: columns, types, nulls, allowed values, unique keys,
//! finite vectors and required metadata.

use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// The tables of `schemas/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Manifest,
    Classes,
    Embeddings,
    Prototypes,
    TeacherLogits,
    Labels,
    Predictions,
    Queries,
    Results,
    Diagnostics,
    Stopping,
    Rejects,
    Retrieved,
}

#[derive(Debug, Deserialize)]
pub struct TableDef {
    pub table: String,
    pub doc: String,
    pub file: String,
    pub columns: Vec<ColumnDef>,
    pub metadata: Vec<String>,
    /// Keys some writers add (documentation; not checked).
    #[serde(default)]
    pub optional_metadata: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub finite: bool,
}

impl Table {
    pub const ALL: [Table; 13] = [
        Table::Manifest,
        Table::Classes,
        Table::Embeddings,
        Table::Prototypes,
        Table::TeacherLogits,
        Table::Labels,
        Table::Predictions,
        Table::Queries,
        Table::Results,
        Table::Diagnostics,
        Table::Stopping,
        Table::Rejects,
        Table::Retrieved,
    ];

    fn json(self) -> &'static str {
        match self {
            Table::Manifest => include_str!("../schemas/manifest.json"),
            Table::Classes => include_str!("../schemas/classes.json"),
            Table::Embeddings => include_str!("../schemas/embeddings.json"),
            Table::Prototypes => include_str!("../schemas/prototypes.json"),
            Table::TeacherLogits => include_str!("../schemas/teacher_logits.json"),
            Table::Labels => include_str!("../schemas/labels.json"),
            Table::Predictions => include_str!("../schemas/predictions.json"),
            Table::Queries => include_str!("../schemas/queries.json"),
            Table::Results => include_str!("../schemas/results.json"),
            Table::Diagnostics => include_str!("../schemas/diagnostics.json"),
            Table::Stopping => include_str!("../schemas/stopping.json"),
            Table::Rejects => include_str!("../schemas/rejects.json"),
            Table::Retrieved => include_str!("../schemas/retrieved.json"),
        }
    }

    pub fn def(self) -> TableDef {
        serde_json::from_str(self.json())
            .expect("schemas/*.json are valid (checked by a unit test)")
    }

    /// The Arrow schema of this table; `dims` gives the list size of each fixed-size-list column.
    pub fn arrow_schema(
        self,
        dims: &[(&str, usize)],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Schema> {
        let def = self.def();
        let mut fields = Vec::new();
        for c in &def.columns {
            let dim = dims.iter().find(|(n, _)| *n == c.name).map(|(_, d)| *d);
            fields.push(Field::new(&c.name, arrow_type(&c.ty, dim)?, c.nullable));
        }
        let meta: std::collections::HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Schema::new_with_metadata(fields, meta))
    }

    /// Check columns against the definition. String columns stored as large/view strings are
    /// accepted and returned cast to plain utf8, so readers see one type.
    pub fn check(
        self,
        file: &str,
        columns: Vec<(String, ArrayRef)>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, ArrayRef)>> {
        self.check_from(file, columns, metadata, 0)
    }

    /// [`Table::check`] on a part of a file whose first row is the file's row `first_row` (a
    /// batch of a streamed read; errors give the row in the file). A unique column is checked
    /// within the part only: the caller checks across parts.
    pub fn check_from(
        self,
        file: &str,
        columns: Vec<(String, ArrayRef)>,
        metadata: &BTreeMap<String, String>,
        first_row: usize,
    ) -> Result<Vec<(String, ArrayRef)>> {
        let def = self.def();
        let mut out = Vec::with_capacity(columns.len());
        for c in &def.columns {
            let Some((_, arr)) = columns.iter().find(|(n, _)| *n == c.name) else {
                bail!(
                    "{file}: missing column '{}' (expected {}) of table '{}'",
                    c.name,
                    c.ty,
                    def.table
                );
            };
            let arr = check_type(file, c, arr)?;
            if !c.nullable && arr.null_count() > 0 {
                bail!(
                    "{file}: column '{}' has {} null value(s); it may not be null",
                    c.name,
                    arr.null_count()
                );
            }
            if let Some(values) = &c.values {
                let s = arr
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("checked utf8");
                for v in s.iter().flatten() {
                    if !values.iter().any(|x| x == v) {
                        bail!(
                            "{file}: column '{}' has value '{v}', expected one of {values:?}",
                            c.name
                        );
                    }
                }
            }
            if c.unique {
                check_unique(file, &c.name, &arr)?;
            }
            if c.finite {
                check_finite(file, &c.name, &arr, &columns, first_row)?;
            }
            out.push((c.name.clone(), arr));
        }
        for key in &def.metadata {
            if !metadata.contains_key(key) {
                bail!(
                    "{file}: missing file metadata key '{key}' of table '{}'",
                    def.table
                );
            }
        }
        Ok(out)
    }
}

/// Arrow type of a schema type name.
pub fn arrow_type(ty: &str, dim: Option<usize>) -> Result<DataType> {
    Ok(match ty {
        "utf8" => DataType::Utf8,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "bool" => DataType::Boolean,
        "list<utf8>" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        "list<float64>" => DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        "fixed_size_list<float32>" => {
            let d = dim.ok_or_else(|| anyhow!("fixed_size_list column needs a dimension"))?;
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                d as i32,
            )
        }
        other => bail!("unknown schema type '{other}'"),
    })
}

fn type_matches(ty: &str, dt: &DataType) -> bool {
    match (ty, dt) {
        ("utf8", DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
        ("int32", DataType::Int32) | ("int64", DataType::Int64) => true,
        ("float32", DataType::Float32) | ("float64", DataType::Float64) => true,
        ("bool", DataType::Boolean) => true,
        ("list<utf8>", DataType::List(f) | DataType::LargeList(f)) => {
            matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        }
        ("list<float64>", DataType::List(f) | DataType::LargeList(f)) => {
            f.data_type() == &DataType::Float64
        }
        ("fixed_size_list<float32>", DataType::FixedSizeList(f, _)) => {
            f.data_type() == &DataType::Float32
        }
        _ => false,
    }
}

fn check_type(file: &str, c: &ColumnDef, arr: &ArrayRef) -> Result<ArrayRef> {
    if !type_matches(&c.ty, arr.data_type()) {
        bail!(
            "{file}: column '{}' has type {}, expected {}",
            c.name,
            arr.data_type(),
            c.ty
        );
    }
    let target = match (c.ty.as_str(), arr.data_type()) {
        ("utf8", DataType::LargeUtf8 | DataType::Utf8View) => Some(DataType::Utf8),
        ("list<utf8>", DataType::List(f) | DataType::LargeList(f))
            if f.data_type() != &DataType::Utf8 =>
        {
            Some(arrow_type("list<utf8>", None)?)
        }
        ("list<utf8>", DataType::LargeList(_)) => Some(arrow_type("list<utf8>", None)?),
        _ => None,
    };
    match target {
        Some(t) => arrow::compute::cast(arr, &t)
            .with_context(|| format!("{file}: casting column '{}'", c.name)),
        None => Ok(arr.clone()),
    }
}

fn check_unique(file: &str, name: &str, arr: &ArrayRef) -> Result<()> {
    if let Some(s) = arr.as_any().downcast_ref::<StringArray>() {
        let mut seen = HashSet::with_capacity(s.len());
        for v in s.iter().flatten() {
            if !seen.insert(v) {
                bail!("{file}: duplicate {name} '{v}'");
            }
        }
    } else if let Some(s) = arr.as_any().downcast_ref::<arrow::array::Int32Array>() {
        let mut seen = HashSet::with_capacity(s.len());
        for v in s.iter().flatten() {
            if !seen.insert(v) {
                bail!("{file}: duplicate {name} {v}");
            }
        }
    }
    Ok(())
}

/// The values of a column checked as `fixed_size_list<float32>`, row after row, and its
/// dimension.
pub fn f32_rows(arr: &ArrayRef) -> (&[f32], usize) {
    let list = arr
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .expect("checked fixed_size_list");
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .expect("checked float32");
    let dim = list.value_length() as usize;
    let start = list.offset() * dim;
    (&values.values()[start..start + list.len() * dim], dim)
}

fn check_finite(
    file: &str,
    name: &str,
    arr: &ArrayRef,
    columns: &[(String, ArrayRef)],
    first_row: usize,
) -> Result<()> {
    let (values, dim) = f32_rows(arr);
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        let row = pos / dim.max(1);
        let id = columns
            .iter()
            .find(|(n, _)| n == "sample_id")
            .and_then(|(_, a)| {
                a.as_any()
                    .downcast_ref::<StringArray>()
                    .map(|s| s.value(row).to_string())
            })
            .map(|s| format!(" (sample_id '{s}')"))
            .unwrap_or_default();
        bail!(
            "{file}: column '{name}' has a non-finite value ({}) in row {}{id}",
            values[pos],
            first_row + row
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    #[test]
    fn every_schema_file_parses_and_builds() {
        for t in Table::ALL {
            let def = t.def();
            assert!(!def.columns.is_empty(), "{}", def.table);
            let dims: Vec<(&str, usize)> =
                def.columns.iter().map(|c| (c.name.as_str(), 4)).collect();
            t.arrow_schema(&dims, &BTreeMap::new()).unwrap();
        }
    }

    #[test]
    fn wrong_type_names_column_and_expected_type() {
        let cols = vec![
            (
                "sample_id".to_string(),
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
            (
                "path".to_string(),
                Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
            ),
            (
                "split".to_string(),
                Arc::new(StringArray::from(vec!["train"])) as ArrayRef,
            ),
            (
                "label".to_string(),
                Arc::new(arrow::array::Int64Array::from(vec![1i64])) as ArrayRef,
            ),
            (
                "source".to_string(),
                Arc::new(StringArray::from(vec!["task"])) as ArrayRef,
            ),
        ];
        let err = Table::Manifest
            .check("m.parquet", cols, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.parquet: column 'label' has type Int64, expected int32"
        );
    }

    #[test]
    fn bad_values_duplicates_and_nulls_are_rejected() {
        let mk = |ids: Vec<&str>, split: &str| {
            vec![
                (
                    "sample_id".to_string(),
                    Arc::new(StringArray::from(ids)) as ArrayRef,
                ),
                (
                    "path".to_string(),
                    Arc::new(StringArray::from(vec![None::<&str>, None])) as ArrayRef,
                ),
                (
                    "split".to_string(),
                    Arc::new(StringArray::from(vec![split, split])) as ArrayRef,
                ),
                (
                    "label".to_string(),
                    Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef,
                ),
                (
                    "source".to_string(),
                    Arc::new(StringArray::from(vec!["task", "task"])) as ArrayRef,
                ),
            ]
        };
        let m = BTreeMap::new();
        assert!(Table::Manifest
            .check("f", mk(vec!["a", "b"], "train"), &m)
            .is_ok());
        let e = Table::Manifest
            .check("f", mk(vec!["a", "a"], "train"), &m)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "f: duplicate sample_id 'a'");
        let e = Table::Manifest
            .check("f", mk(vec!["a", "b"], "val"), &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 'split' has value 'val'"), "{e}");
    }
}
