//! `vlal train`: fit the run's student head on the labels of a round and write the round's
//! predictions (train pool and test split) and the head as safetensors.

use super::{labeled_rows, read_labels, require};
use crate::cache::Cache;
use crate::config::RunSpec;
use crate::mat::Mat;
use crate::schema::Table;
use crate::{rng, table, teacher, train};
use anyhow::{bail, Result};
use std::time::Instant;

pub fn run(spec: &RunSpec, cache: &Cache, round: usize) -> Result<()> {
    let lpath = spec.labels_path(round);
    require(&lpath, "vlal label")?;
    let rows = read_labels(&lpath)?;
    let (labeled, labels) = labeled_rows(&lpath, cache, &rows)?;
    let device = train::device(&spec.pipeline.device)?;
    let start = Instant::now();
    let p = &spec.pipeline;
    let teacher = match spec.trainer.as_str() {
        "dho" => cache.teacher_logits.clone(),
        "dho-clap" => {
            let (Some(image), Some(protos)) = (&cache.teacher_image, &cache.prototypes) else {
                bail!("the dho-clap trainer needs the teacher's image embeddings and prototypes");
            };
            Some(teacher::clap_logits(
                &p.clap, image, protos, cache.tau, &labeled, &labels, &device,
            )?)
        }
        _ => None,
    };
    let teacher = teacher
        .map(|l| teacher::logit_adjust(&l, &p.teacher.la, p.teacher.la_tau))
        .transpose()?;
    let teacher = teacher.as_ref().map(|m| (m, cache.tau));
    let data = train::TrainData {
        features: &cache.train.features,
        labeled: &labeled,
        labels: &labels,
        n_classes: cache.n_classes(),
        teacher,
    };
    let mut r = rng::stream(spec.seed, "train", round);
    let (head, losses) = train::fit(&spec.trainer, p, &data, &mut r, &device)?;
    let p_train = head.predict(&cache.train.features)?;
    let p_test = head.predict(&cache.test.features)?;
    let train_s = start.elapsed().as_secs_f64();

    let n = p_train.rows + p_test.rows;
    let mut probs = p_train.data;
    probs.extend(p_test.data);
    let probs = Mat::new(n, cache.n_classes(), probs)?;
    let ids: Vec<&str> = cache
        .train
        .ids
        .iter()
        .chain(&cache.test.ids)
        .map(String::as_str)
        .collect();
    let splits: Vec<&str> = (0..n)
        .map(|i| {
            if i < cache.train.ids.len() {
                "train"
            } else {
                "test"
            }
        })
        .collect();
    head.save(&spec.head_path(round))?;
    table::write(
        &spec.predictions_path(round),
        Table::Predictions,
        vec![
            ("round", table::i32s(&vec![round as i32; n])),
            ("sample_id", table::utf8(&ids)),
            ("split", table::utf8(&splits)),
            ("probs", table::fixed_list(&probs)?),
        ],
        &[
            ("trainer", spec.trainer.clone()),
            ("train_s", format!("{train_s}")),
            ("config_hash", spec.config_hash()),
            (
                "final_loss",
                format!("{}", losses.last().copied().unwrap_or(f32::NAN)),
            ),
        ],
        table::Mode::Replace,
    )?;
    Ok(())
}
