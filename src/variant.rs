//! Which form of a method runs where its paper and its released code differ: the paper's (the
//! default) or the released code's. A method's `Params` names one option per difference; an
//! option left at `paper` is not written into the run's config hash, so runs from before the
//! option existed keep their ids.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Paper,
    Released,
}

impl Variant {
    /// For `skip_serializing_if`: the default form stays out of the hash.
    pub fn is_paper(&self) -> bool {
        *self == Variant::Paper
    }
    pub fn released(&self) -> bool {
        *self == Variant::Released
    }
}

/// For `skip_serializing_if` on a switch that is off by default.
pub fn is_false(b: &bool) -> bool {
    !*b
}
