//! `vlal`: active learning guided by vision–language models, on a Parquet feature cache.
//!
//! Stages (`vlal <stage>`) communicate only through the tables defined in `schemas/`;
//! this library holds the pieces the stages are built from.

pub mod assignment;
pub mod cache;
pub mod captions;
pub mod config;
pub mod conformal;
pub mod dataset;
pub mod geometry;
pub mod idx;
pub mod kmeans;
pub mod mat;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod preprocess;
pub mod progress;
pub mod rng;
pub mod rounds;
pub mod schema;
pub mod shard;
pub mod stages;
pub mod stopping;
pub mod strategy;
pub mod table;
pub mod teacher;
pub mod train;
pub mod variant;

/// Version of the tool, recorded in every results row and cache file.
pub const TOOL_VERSION: &str = concat!("vlal ", env!("CARGO_PKG_VERSION"));
