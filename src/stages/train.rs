//! `vlal train`: fit the run's student head on the labels of a round and write the round's
//! predictions (train pool and test split) and the head as safetensors. A `+rda` run trains on
//! the labeled ∪ retrieved samples: the retrieved rows are stacked under the pool's.

use crate::cache::Cache;
use crate::config::RunSpec;
use crate::mat::Mat;
use crate::rounds::Round;
use crate::schema::Table;
use crate::train::TeacherSignal;
use crate::{rng, table, teacher, train};
use anyhow::{bail, Result};
use std::time::Instant;

pub fn run(spec: &RunSpec, cache: &Cache, round: usize) -> Result<()> {
    let r = Round::read(&spec.labels_path(round), round, cache)?;
    run_round(spec, cache, &r).map(|_| ())
}

/// [`run`] on labels already read; returns the trained head (also saved).
pub fn run_round(spec: &RunSpec, cache: &Cache, r: &Round) -> Result<train::Head> {
    let round = r.round;
    let (mut labeled, mut labels) = (r.labeled.clone(), r.labels.clone());
    let device = train::device(&spec.pipeline.device)?;
    let start = Instant::now();
    let p = &spec.pipeline;
    let trainer = spec.build_trainer()?;
    let teacher = match trainer.teacher() {
        TeacherSignal::Logits => cache.teacher_logits.clone(),
        TeacherSignal::Clap => {
            let (Some(image), Some(protos)) = (&cache.teacher_image, &cache.prototypes) else {
                bail!("the dho-clap trainer needs the teacher's image embeddings and prototypes");
            };
            Some(teacher::clap_logits(
                &p.clap, image, protos, cache.tau, &labeled, &labels, &device,
            )?)
        }
        TeacherSignal::None => None,
    };
    let mut features = None;
    let mut teacher = teacher;
    if spec.rda {
        let Some(ret) = &cache.retrieved else {
            bail!(
                "{}: a +rda run needs the retrieved samples",
                spec.strategy_name()
            );
        };
        let n = cache.train.ids.len();
        labeled.extend(n..n + ret.ids.len());
        labels.extend(ret.label_ids());
        features = Some(cache.train.features.vstack(&ret.features)?);
        teacher = match (teacher, trainer.teacher()) {
            (None, _) => None,
            (Some(t), TeacherSignal::Logits) => {
                let rl = cache
                    .retrieved_logits
                    .as_ref()
                    .expect("loaded with the logits");
                Some(t.vstack(rl)?)
            }
            (Some(_), _) => bail!(
                "the {} trainer does not take retrieved data (+rda)",
                trainer.name()
            ),
        };
        if let Some(first) = cache.retrieved_skipped.first() {
            crate::progress::log(format!(
                "the {} trainer trains on {}'s features: {} retrieved sample(s) without an image \
                 have none and are skipped (e.g. {first})",
                trainer.name(),
                cache.feature_model.key,
                cache.retrieved_skipped.len()
            ));
        }
        crate::progress::log(format!(
            "training on {} labeled + {} retrieved samples",
            r.rows.len(),
            ret.ids.len()
        ));
    }
    let teacher = teacher
        .map(|l| teacher::logit_adjust(&l, &p.teacher.la, p.teacher.la_tau))
        .transpose()?;
    let teacher = teacher.as_ref().map(|m| (m, cache.tau));
    // the labeled calibration split, for a trainer that tunes its inference on it
    let validation = cache.calib.as_ref().map(|c| (&c.features, c.label_ids()));
    let data = train::TrainData {
        features: features.as_ref().unwrap_or(&cache.train.features),
        prototypes: cache.prototypes.as_ref(),
        validation: validation.as_ref().map(|(x, y)| (*x, y.as_slice())),
        labeled: &labeled,
        labels: &labels,
        n_classes: cache.n_classes(),
        teacher,
        class_names: &cache.classes,
        feature_model: &cache.feature_model,
    };
    // the fit with subnormals flushed (the same bits, far fewer stalls); the predictions without,
    // so that the table keeps the softmax's subnormal tail bit for bit
    let (head, losses) = crate::mat::flushing_subnormals(|| -> Result<_> {
        let mut stream = rng::stream(spec.seed, "train", round);
        Ok(if labeled.is_empty() {
            (zero_shot(trainer.as_ref(), &data, &device, r)?, Vec::new())
        } else {
            trainer.fit(&data, &mut stream, &device)?
        })
    })?;
    let parts = [
        ("train", Some(&cache.train)),
        ("calib", cache.calib.as_ref()),
        ("test", Some(&cache.test)),
    ];
    // one buffer of the final size, filled a block of rows at a time and handed to Arrow without
    // a copy: at 1.28M × 1000 classes a copy is 5 GB
    let rows: usize = parts.iter().flat_map(|(_, p)| p).map(|p| p.ids.len()).sum();
    let mut probs = Vec::with_capacity(rows * cache.n_classes());
    let mut ids: Vec<&str> = Vec::new();
    let mut splits: Vec<&str> = Vec::new();
    for (name, part) in parts {
        let Some(part) = part else { continue };
        let all: Vec<usize> = (0..part.ids.len()).collect();
        train::for_blocks(&part.features, &all, |_, x| {
            probs.extend_from_slice(&head.predict(x)?.data);
            Ok(())
        })?;
        ids.extend(part.ids.iter().map(String::as_str));
        splits.extend(std::iter::repeat_n(name, part.ids.len()));
    }
    let train_s = start.elapsed().as_secs_f64();
    let n = ids.len();
    let probs = Mat::new(n, cache.n_classes(), probs)?;
    head.save(&spec.head_path(round))?;
    table::write(
        &spec.predictions_path(round),
        Table::Predictions,
        vec![
            ("round", table::i32s(&vec![round as i32; n])),
            ("sample_id", table::utf8(&ids)),
            ("split", table::utf8(&splits)),
            ("probs", table::fixed_list_owned(probs)?),
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
    Ok(head)
}

/// The head of a round without labels: the teacher's zero-shot classifier, for the trainers
/// that have one (coop, ct); the others need labels.
fn zero_shot(
    trainer: &dyn train::Trainer,
    data: &train::TrainData,
    device: &candle_core::Device,
    r: &Round,
) -> Result<train::Head> {
    match trainer.zero_shot(data, device) {
        Some(h) => {
            crate::progress::log(format!(
                "round {}: no labels yet; the {} head is the teacher's zero-shot classifier",
                r.round,
                trainer.name()
            ));
            h
        }
        None => bail!(
            "{}: no labeled samples to train on (the {} trainer needs labels; coop and ct start from the teacher's zero-shot classifier)",
            r.path.display(),
            trainer.name()
        ),
    }
}
