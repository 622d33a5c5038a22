//! `vlal export --format label-studio`: a round's queries as Label Studio tasks, for a team that
//! labels in Label Studio. Each task carries the image reference, the sample id, the query rank
//! and the strategy's acquisition score (task data fields, to sort by), and the student's top
//! class with its probability as a pre-annotation. A labeling config (one `Choices` of the
//! dataset's classes) is written beside it. Label Studio's JSON export of those tasks goes back
//! in with `vlal label --round R --from-file export.json`.

use crate::cache::Cache;
use crate::config::RunSpec;
use crate::rounds::person_queries;
use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where the tasks go by default: `<run>/export/round-NNN.label-studio.json`.
pub fn default_out(spec: &RunSpec, round: usize) -> PathBuf {
    spec.run_dir()
        .join("export")
        .join(format!("round-{round:03}.label-studio.json"))
}

/// The labeling config beside a tasks file: `X.label-studio.json` → `X.label-config.xml`.
pub fn config_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("tasks.json");
    let stem = name
        .strip_suffix(".label-studio.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(name);
    out.with_file_name(format!("{stem}.label-config.xml"))
}

/// The image reference of a task: `prefix` + the path without its leading `/` (Label Studio's
/// local files: `/data/local-files/?d=` with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/), or a
/// URL prefix under which the images are served.
fn image_ref(prefix: &str, path: &Path) -> String {
    let p = path.display().to_string();
    format!("{prefix}{}", p.trim_start_matches('/'))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Write round `round`'s queries as Label Studio tasks to `out` and the labeling config beside
/// it (each through a temporary file and a rename).
pub fn label_studio(
    spec: &RunSpec,
    cache: &Cache,
    round: usize,
    out: &Path,
    prefix: &str,
) -> Result<()> {
    let queries = person_queries(spec, cache, round, 1)?;
    let run_id = spec.run_id();
    let tasks: Vec<serde_json::Value> = queries
        .iter()
        .map(|q| {
            let (c, p) = q.student[0];
            json!({
                "data": {
                    "image": q.path.as_deref().map(|p| image_ref(prefix, p)),
                    "sample_id": q.sample_id,
                    "rank": q.rank,
                    "acquisition_score": q.score,
                    "round": round,
                    "run_id": run_id,
                },
                "predictions": [{
                    "model_version": run_id,
                    "score": p,
                    "result": [{
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [cache.classes[c]]},
                    }],
                }],
            })
        })
        .collect();
    let mut config = String::from(
        "<View>\n  <Image name=\"image\" value=\"$image\"/>\n  <Choices name=\"label\" toName=\"image\" choice=\"single\" showInline=\"true\">\n",
    );
    for c in &cache.classes {
        config += &format!("    <Choice value=\"{}\"/>\n", xml_escape(c));
    }
    config += "  </Choices>\n</View>\n";
    let text = serde_json::to_string_pretty(&tasks).expect("serialisable");
    crate::table::write_file_atomic(out, text.as_bytes())?;
    let cfg = config_path(out);
    crate::table::write_file_atomic(&cfg, config.as_bytes())?;
    crate::progress::log(format!(
        "wrote {} ({} tasks) and its labeling config {}",
        out.display(),
        tasks.len(),
        cfg.display()
    ));
    Ok(())
}
