//! Content keys of `extract`'s files (sha256 over what determines a file) and the image hashes
//! they are built from; an image that cannot be read becomes a [`Reject`].

use crate::dataset::Sample;
use crate::models::hub::{self, ModelDir};
use crate::{progress, table, TOOL_VERSION};
use anyhow::Result;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub const KEY_VERSION: &str = "vlal-extract-1";

/// An image that could not be read, kept out of the cache.
#[derive(Clone, Debug)]
pub struct Reject {
    pub sample: Sample,
    pub error: String,
}

/// The content key stored in a file's metadata, if the file exists and has one.
pub fn stored_key(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    table::read_meta(path)
        .ok()
        .and_then(|m| m.get("content_key").cloned())
}

pub fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hub::hex(&h.finalize())
}

/// sha256 of every readable image; unreadable ones come back as rejects.
pub fn hash_images(samples: &[Sample]) -> (HashMap<String, String>, Vec<Reject>) {
    let pb = progress::bar(samples.len() as u64, "hashing");
    let res: Vec<(usize, Result<String>)> = samples
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut h = Sha256::new();
            let r = hub::hash_file(&s.path, &mut h).map(|_| hub::hex(&h.finalize()));
            pb.inc(1);
            (i, r)
        })
        .collect();
    pb.finish_and_clear();
    let mut ok = HashMap::new();
    let mut bad = Vec::new();
    for (i, r) in res {
        match r {
            Ok(h) => {
                ok.insert(samples[i].id.clone(), h);
            }
            Err(e) => bad.push(Reject {
                sample: samples[i].clone(),
                error: format!("{e:#}"),
            }),
        }
    }
    (ok, bad)
}

/// The metadata rows every table of a model carries.
pub fn model_meta(m: &ModelDir, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("model_id", m.id.clone()),
        ("revision", m.revision.clone()),
        ("commit", m.commit.clone().unwrap_or_default()),
        ("fingerprint", m.fingerprint.clone()),
        ("created_by", TOOL_VERSION.to_string()),
        ("content_key", key.to_string()),
    ]
}
