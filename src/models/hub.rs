//! Where a model's files come from: a local directory in the Hugging Face layout, or a hub id
//! (`owner/name`) resolved through `hf-hub` — from its local cache when offline, downloaded
//! otherwise. The result names the model (`id@revision`, the cache folder) and fingerprints its
//! content, so that `extract` can tell a changed checkpoint from an unchanged one.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The checkpoint layouts `extract` reads, each a config file and its weight files (the first
/// one present is read): Hugging Face's, and OpenCLIP's.
pub const LAYOUTS: [(&str, &[&str]); 2] = [
    ("config.json", &["model.safetensors"]),
    (super::open_clip::CONFIG, &super::open_clip::WEIGHTS),
];
const NEEDS: &str = "config.json and model.safetensors, or open_clip_config.json and \
                     open_clip_model.safetensors (or open_clip_pytorch_model.bin)";
/// Files `extract` may read besides a layout's.
pub const OPTIONAL: [&str; 3] = [
    "tokenizer.json",
    "preprocessor_config.json",
    "bpe_simple_vocab_16e6.txt.gz",
];

/// A resolved checkpoint: its folder and what identifies it.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// Folder holding config.json, model.safetensors and the optional files.
    pub dir: PathBuf,
    /// The hub id, or the name given to a local folder (default: its folder name).
    pub id: String,
    /// The revision asked for (hub branch, tag or commit; `local` for a folder by default).
    pub revision: String,
    /// The hub commit the revision resolved to (None for a local folder).
    pub commit: Option<String>,
    /// sha256 over the files' bytes (local folder) or the commit (hub: content-addressed).
    pub fingerprint: String,
}

impl ModelDir {
    /// `id@revision`: the model's folder under the dataset cache and its name in every row.
    pub fn key(&self) -> String {
        format!("{}@{}", self.id, self.revision)
    }
}

/// How to resolve a model argument.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// Hub revision (default `main`) or the revision label of a local folder (default `local`).
    pub revision: Option<String>,
    /// The id a local folder is recorded under (default: the folder's name).
    pub name: Option<String>,
    /// Never touch the network: resolve hub ids from the hf-hub cache only (also when the
    /// environment sets HF_HUB_OFFLINE=1).
    pub offline: bool,
}

/// Resolve `spec`: an existing directory is used as is; anything else is a hub id.
pub fn resolve(spec: &str, src: &Source) -> Result<ModelDir> {
    let p = Path::new(spec);
    if p.is_dir() {
        local(p, src)
    } else if spec.contains("://") || spec.starts_with('.') || spec.starts_with('/') {
        bail!("{spec}: no such model directory")
    } else {
        hub(spec, src)
    }
}

fn local(dir: &Path, src: &Source) -> Result<ModelDir> {
    let has = |f: &str| dir.join(f).is_file();
    if !LAYOUTS
        .iter()
        .any(|(c, ws)| has(c) && ws.iter().any(|w| has(w)))
    {
        // the first missing file of the layout whose config is there (Hugging Face's otherwise)
        let (c, ws) = LAYOUTS.iter().find(|(c, _)| has(c)).unwrap_or(&LAYOUTS[0]);
        let missing = if has(c) { ws[0] } else { c };
        bail!(
            "{}: missing (a checkpoint folder needs {NEEDS})",
            dir.join(missing).display()
        );
    }
    let name = match &src.name {
        Some(n) => n.clone(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
            .ok_or_else(|| anyhow!("{}: cannot name this folder; pass a name", dir.display()))?,
    };
    check_name(&name)?;
    let revision = src.revision.clone().unwrap_or_else(|| "local".into());
    check_name(&revision)?;
    Ok(ModelDir {
        dir: dir.to_path_buf(),
        fingerprint: folder_fingerprint(dir)?,
        id: name,
        revision,
        commit: None,
    })
}

/// sha256 over the names and bytes of the files `extract` reads from `dir`.
pub fn folder_fingerprint(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let layouts = LAYOUTS
        .iter()
        .flat_map(|(c, ws)| std::iter::once(c).chain(ws.iter()));
    for f in layouts.chain(OPTIONAL.iter()) {
        let path = dir.join(f);
        if !path.is_file() {
            continue;
        }
        h.update(f.as_bytes());
        h.update([0]);
        hash_file(&path, &mut h)?;
    }
    Ok(hex(&h.finalize()))
}

/// Feed a file's bytes to `h`.
pub fn hash_file(path: &Path, h: &mut Sha256) -> Result<()> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name that is safe as (part of) a folder name.
fn check_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
    if !ok {
        bail!("'{s}': model names and revisions may use letters, digits and -_.+ only");
    }
    Ok(())
}

/// The hf-hub cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the Python client's order).
fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => hf_hub::Cache::new(PathBuf::from(p)),
        _ => hf_hub::Cache::from_env(),
    }
}

/// Whether a hub error says the file does not exist (HTTP 404), as opposed to a failed request.
fn not_found(e: &hf_hub::api::sync::ApiError) -> bool {
    matches!(e, hf_hub::api::sync::ApiError::RequestError(r)
        if matches!(**r, ureq::Error::Status(404, _)))
}

fn hub(id: &str, src: &Source) -> Result<ModelDir> {
    let (owner, name) = id.split_once('/').unwrap_or(("", id));
    check_name(name).with_context(|| format!("'{id}' is neither a folder nor a hub id"))?;
    if !owner.is_empty() {
        check_name(owner).with_context(|| format!("'{id}' is neither a folder nor a hub id"))?;
    }
    let revision = src.revision.clone().unwrap_or_else(|| "main".into());
    check_name(&revision)?;
    let offline = src.offline
        || std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let repo =
        hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.clone());
    let cache = hub_cache();
    // a cached file (by the revision's ref, or a commit's snapshot folder), else a download
    let cached = |file: &str| -> Option<PathBuf> {
        cache.repo(repo.clone()).get(file).or_else(|| {
            let p = cache
                .path()
                .join(repo.folder_name())
                .join("snapshots")
                .join(&revision)
                .join(file);
            p.is_file().then_some(p)
        })
    };
    let api = if offline {
        None
    } else {
        let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(!crate::progress::is_quiet());
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            b = b.with_endpoint(endpoint);
        }
        // the token file under HF_HOME is read by the builder; HF_TOKEN wins, as in Python
        if let Some(token) = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            b = b.with_token(Some(token.trim().to_string()));
        }
        Some(
            b.build()
                .map_err(|e| anyhow!("{id}: cannot start the hub client ({e})"))?,
        )
    };
    // Ok(None): the hub has no such file
    let get = |file: &str| -> Result<Option<PathBuf>, String> {
        if let Some(p) = cached(file) {
            return Ok(Some(p));
        }
        match &api {
            None => Ok(None),
            Some(api) => match api.repo(repo.clone()).download(file) {
                Ok(p) => Ok(Some(p)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    };
    let unavailable = |f: &str, e: Option<String>| -> anyhow::Error {
        match e {
            None if offline => anyhow!(
                "{id}@{revision}: {f}: not in the hf-hub cache (offline); pass a local checkpoint \
                 folder instead"
            ),
            None => anyhow!("{id}@{revision}: {f}: not on the hub (a checkpoint needs {NEEDS})"),
            Some(e) => anyhow!(
                "{id}@{revision}: {f}: cannot download it ({e}); pass a local checkpoint folder \
                 instead"
            ),
        }
    };
    // the Hugging Face layout, unless its config has no text tower and the repo has an
    // OpenCLIP config (timm's repos: a timm image-tower config beside the open_clip files)
    let hf_config = get(LAYOUTS[0].0).map_err(|e| unavailable(LAYOUTS[0].0, Some(e)))?;
    let open_config = match &hf_config {
        Some(p) if super::open_clip::has_text_tower(p) => None,
        _ => get(LAYOUTS[1].0).map_err(|e| unavailable(LAYOUTS[1].0, Some(e)))?,
    };
    let mut files = Vec::new();
    let layout = match (hf_config, open_config) {
        (_, Some(p)) => Some((p, LAYOUTS[1].1)),
        (Some(p), None) => Some((p, LAYOUTS[0].1)),
        (None, None) => None,
    };
    if let Some((config, weights)) = layout {
        files.push(config);
        let mut found = None;
        for w in weights {
            match get(w) {
                Ok(Some(p)) => {
                    found = Some(p);
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(unavailable(w, Some(e))),
            }
        }
        files.push(found.ok_or_else(|| unavailable(weights[0], None))?);
    }
    if files.is_empty() {
        return Err(unavailable(LAYOUTS[0].0, None));
    }
    let mut dir: Option<PathBuf> = None;
    for path in files {
        let parent = path.parent().map(Path::to_path_buf);
        match (&dir, parent) {
            (None, p) => dir = p,
            (Some(d), Some(p)) if *d != p => {
                bail!(
                    "{id}@{revision}: files resolved to different snapshots ({} and {})",
                    d.display(),
                    p.display()
                )
            }
            _ => {}
        }
    }
    for f in OPTIONAL {
        if let Err(e) = get(f) {
            bail!("{id}@{revision}: {f}: {e}");
        }
    }
    let dir = dir.ok_or_else(|| anyhow!("{id}@{revision}: no snapshot folder"))?;
    // the hf-hub cache stores a revision's files under snapshots/<commit>/
    let commit = dir
        .file_name()
        .map(|c| c.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{}: not a snapshot folder", dir.display()))?;
    Ok(ModelDir {
        dir,
        id: id.to_string(),
        revision,
        fingerprint: format!("hub:{id}:{commit}"),
        commit: Some(commit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), "weights").unwrap();
    }

    #[test]
    fn a_local_folder_is_named_and_fingerprinted_by_content() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tiny-clip");
        checkpoint(&d);
        let m = resolve(d.to_str().unwrap(), &Source::default()).unwrap();
        assert_eq!(m.key(), "tiny-clip@local");
        let f0 = m.fingerprint.clone();
        // the same bytes give the same fingerprint; a changed weight file a different one
        assert_eq!(folder_fingerprint(&d).unwrap(), f0);
        std::fs::write(d.join("model.safetensors"), "weightz").unwrap();
        assert_ne!(folder_fingerprint(&d).unwrap(), f0);
        // an optional tokenizer file counts too
        let f1 = folder_fingerprint(&d).unwrap();
        std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
        assert_ne!(folder_fingerprint(&d).unwrap(), f1);
        let named = Source {
            name: Some("mine".into()),
            revision: Some("v2".into()),
            ..Source::default()
        };
        assert_eq!(
            resolve(d.to_str().unwrap(), &named).unwrap().key(),
            "mine@v2"
        );
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let e = resolve(d.to_str().unwrap(), &Source::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.safetensors: missing"), "{e}");
        // an OpenCLIP folder: its config and either weight file
        let oc = t.path().join("laion");
        std::fs::create_dir_all(&oc).unwrap();
        std::fs::write(oc.join("open_clip_config.json"), "{}").unwrap();
        let e = resolve(oc.to_str().unwrap(), &Source::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("open_clip_model.safetensors: missing"), "{e}");
        std::fs::write(oc.join("open_clip_pytorch_model.bin"), "pickle").unwrap();
        let m = resolve(oc.to_str().unwrap(), &Source::default()).unwrap();
        std::fs::write(oc.join("open_clip_pytorch_model.bin"), "pickles").unwrap();
        assert_ne!(folder_fingerprint(&oc).unwrap(), m.fingerprint);
        let e = resolve("./no/such/dir", &Source::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such model directory"), "{e}");
        let e = resolve("bad name/x y", &Source::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a folder nor a hub id"), "{e}");
    }
}
