//! The trainers' settings: the `[linear]`, `[dho]`, `[teacher]`, `[clap]`, `[coop]` and `[ct]`
//! tables of a pipeline. They sit together because trainers share them (`dho`, `dho-clap` and
//! `ce` read `[dho]`; both distilling trainers read `[teacher]`); each trainer hashes the ones
//! it reads (`Trainer::params`).

use crate::variant::Variant;
use serde::{Deserialize, Serialize};

/// Every trainer's settings, as [`super::by_name`] takes them.
#[derive(Clone, Debug, Default)]
pub struct TrainParams {
    pub linear: LinearCfg,
    pub dho: DhoCfg,
    pub teacher: TeacherCfg,
    pub clap: ClapCfg,
    pub coop: CoopCfg,
    pub ct: CtCfg,
}

/// CLAP few-shot teacher, re-fitted on the labels of every round (trainer `dho-clap`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClapCfg {
    pub epochs: usize,
    pub lr: f64,
}

impl Default for ClapCfg {
    fn default() -> Self {
        Self {
            epochs: 300,
            lr: 0.01,
        }
    }
}

/// Linear probe: BatchNorm (no affine) → Dropout → Linear, AdamW, cross-entropy, cold start.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearCfg {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub dropout: f32,
    pub batch_size: usize,
}

impl Default for LinearCfg {
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 1e-2,
            weight_decay: 1e-2,
            dropout: 0.75,
            batch_size: 64,
        }
    }
}

/// DHO dual-head distillation (and its CE-only ablation, trainer `ce`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhoCfg {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Labeled and unlabeled batch sizes.
    pub batch_labeled: usize,
    pub batch_unlabeled: usize,
    /// Loss weight of the CE head: λ·CE + (1−λ)·KD.
    pub lambda: f64,
    /// Distillation temperature η (the KL is multiplied by η²).
    pub eta: f64,
    /// Teacher temperature ζ: p_T^η = softmax(cos/(ζ·η)).
    pub zeta: f64,
    /// Prediction mixing: α·softmax(g_CE) + (1−α)·softmax(g_KD/β).
    pub alpha: f64,
    pub beta: f64,
    /// `released`: the PCoreSet repository's mix (1−α)·softmax(g_CE) + α·softmax(g_KD/β), the
    /// paper's with α and 1−α swapped.
    #[serde(skip_serializing_if = "Variant::is_paper")]
    pub mix: Variant,
    /// The DHO repository's inference: after training, α ∈ {0, 0.05, …, 1} and
    /// β ∈ {0.5, 0.75, 1, 1.25, 1.5, 2, 4} are grid-searched for the best accuracy on the
    /// labeled calibration split (β outer, α inner, the first best kept).
    #[serde(skip_serializing_if = "crate::variant::is_false")]
    pub tune: bool,
}

impl Default for DhoCfg {
    fn default() -> Self {
        Self {
            epochs: 200,
            lr: 1e-3,
            weight_decay: 1e-2,
            batch_labeled: 64,
            batch_unlabeled: 64,
            lambda: 0.5,
            eta: 2.0,
            zeta: 0.01,
            alpha: 0.5,
            beta: 1.0,
            mix: Variant::Paper,
            tune: false,
        }
    }
}

/// Which learnable contexts CoOp trains (CB+SQ paper, eq. 14): one shared by all classes, one
/// per class, or both with their cosine similarities averaged.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoopMode {
    Unified,
    ClassWise,
    Both,
}

/// CoOp prompt learning (trainer `coop`): the task model is the teacher CLIP itself, with learned
/// context vectors in its text prompts, trained on the cached teacher image embeddings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoopCfg {
    /// The teacher's CLIP checkpoint (a folder in the HF layout or a hub id): the same model
    /// whose image embeddings `extract` cached under `dataset.teacher`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Hub revision of `model` (default `main`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Context tokens M per prompt.
    pub n_ctx: usize,
    pub epochs: usize,
    /// SGD learning rate, decayed to 0 by a cosine over the epochs.
    pub lr: f64,
    pub batch_size: usize,
    pub mode: CoopMode,
    /// Temperature of cos/τ (CLIP's logit scale 100 → 0.01).
    pub tau: f64,
}

impl Default for CoopCfg {
    fn default() -> Self {
        Self {
            model: None,
            revision: None,
            n_ctx: 16,
            epochs: 200,
            lr: 0.002,
            batch_size: 32,
            mode: CoopMode::Both,
            tau: 0.01,
        }
    }
}

/// Contrastive tuning (trainer `ct`, ALOR): the teacher's class prototypes as the classifier and
/// a projection of its cached image embeddings, trained with CLIP's contrastive loss.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtCfg {
    pub epochs: usize,
    /// AdamW learning rate and weight decay.
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Temperature of cos/τ.
    pub tau: f64,
    /// Train a D × D projection of the image features (initialised to the identity) with the
    /// class embeddings; `false`: the class embeddings alone (much cheaper at large D).
    pub projection: bool,
}

impl Default for CtCfg {
    fn default() -> Self {
        Self {
            projection: true,
            epochs: 50,
            lr: 1e-4,
            weight_decay: 1e-2,
            batch_size: 64,
            tau: 0.07,
        }
    }
}

/// How the teacher's logits are used by the distilling trainers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherCfg {
    /// Logit adjustment: "none", "hard" (argmax frequencies) or "soft" (mean probabilities).
    pub la: String,
    /// τ_LA of l' = l − τ_LA·log π.
    pub la_tau: f64,
    /// Re-temper the cached logits to cos/τ (CCMA's code uses 0.03); default: the cache's τ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
}

impl Default for TeacherCfg {
    fn default() -> Self {
        Self {
            la: "none".into(),
            la_tau: 1.0,
            tau: None,
        }
    }
}
