//! The strategies' settings (the `[select]` table of a pipeline and its per-method tables) and
//! which of them enter a run's config hash.

use crate::conformal::CcmaCfg;
use crate::train::params::TeacherCfg;
use serde::{Deserialize, Serialize};

/// Strategy parameters, one table per method, with the defaults of METHODS.md and the papers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectCfg {
    /// Write CCMA's teacher–student diagnostics table every round (needs the teacher's logits).
    pub diagnostics: bool,
    pub ccma: CcmaCfg,
    pub mc: McCfg,
    pub dropquery: DropQueryCfg,
    pub alfamix: AlfaMixCfg,
    pub typiclust: TypiClustCfg,
    pub probcover: ProbCoverCfg,
    pub uherding: UHerdingCfg,
}

/// MC dropout (BALD, PowerBALD): passes through the head's dropout.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct McCfg {
    pub passes: usize,
    /// Dropout rate; default: the linear probe's training rate.
    pub dropout: Option<f32>,
    /// PowerBALD's exponent β (sample ∝ I^β without replacement).
    pub power_beta: f64,
}

impl Default for McCfg {
    fn default() -> Self {
        Self {
            passes: 20,
            dropout: None,
            power_beta: 1.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropQueryCfg {
    pub passes: usize,
    /// Dropout rate; default: the linear probe's training rate.
    pub dropout: Option<f32>,
}

impl Default for DropQueryCfg {
    fn default() -> Self {
        Self {
            passes: 3,
            dropout: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlfaMixCfg {
    /// The cap ε of the interpolation factors α ∈ [0, ε] grows by this step …
    pub eps_step: f32,
    /// … until more than B candidates are found or it passes this value (released code).
    pub eps_max: f32,
}

impl Default for AlfaMixCfg {
    fn default() -> Self {
        Self {
            eps_step: 0.03125,
            eps_max: 1.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TypiClustCfg {
    /// Neighbours of the typicality 1 / mean distance.
    pub k_nn: usize,
    /// Clusters smaller than this are never sampled.
    pub min_cluster_size: usize,
    pub max_clusters: usize,
}

impl Default for TypiClustCfg {
    fn default() -> Self {
        Self {
            k_nn: 20,
            min_cluster_size: 5,
            max_clusters: 500,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbCoverCfg {
    /// Ball radius δ (Euclidean on L2-normalised features); default: the largest δ on a grid
    /// whose ball purity under k-means (K = C) pseudo-labels is ≥ `purity`.
    pub delta: Option<f32>,
    pub purity: f64,
    /// Points used to estimate the purity.
    pub purity_sample: usize,
}

impl Default for ProbCoverCfg {
    fn default() -> Self {
        Self {
            delta: None,
            purity: 0.95,
            purity_sample: 5000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UHerdingCfg {
    /// Candidates and coverage targets are a seeded sample of at most this many pool points
    /// (the kernel matrix is max_points² floats).
    pub max_points: usize,
}

impl Default for UHerdingCfg {
    fn default() -> Self {
        Self { max_points: 5000 }
    }
}

impl SelectCfg {
    /// The parameters a strategy reads (part of its run's config hash), or null.
    /// `default_dropout` is the MC-dropout rate used when a table leaves it unset (the linear
    /// probe's), so it is hashed as the rate in effect.
    pub fn params_for(
        &self,
        strategy: &str,
        teacher: &TeacherCfg,
        default_dropout: f32,
    ) -> serde_json::Value {
        let v = match strategy {
            s if s.starts_with("ccma") => serde_json::to_value((&self.ccma, teacher.tau)),
            "bald" | "power-bald" => {
                serde_json::to_value((&self.mc, self.mc.dropout.unwrap_or(default_dropout)))
            }
            "dropquery" => serde_json::to_value((
                &self.dropquery,
                self.dropquery.dropout.unwrap_or(default_dropout),
            )),
            "alfa-mix" => serde_json::to_value(&self.alfamix),
            "typiclust" => serde_json::to_value(&self.typiclust),
            "probcover" => serde_json::to_value(&self.probcover),
            "uherding" => serde_json::to_value(&self.uherding),
            _ => Ok(serde_json::Value::Null),
        };
        v.expect("serialisable")
    }
}
