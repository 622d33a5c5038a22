//! Model definitions on candle, one file per model in the candle-transformers style (`Config`,
//! `load`, forwards), reading checkpoints in the Hugging Face layout.

pub mod classifier;
pub mod clip;
pub mod clip_tokenizer;
pub mod dinov2;
pub mod efficientnet_lite;
pub mod encoder;
pub mod hub;
pub mod layers;
pub mod open_clip;
pub mod siglip;
pub mod testing;

pub use layers::keep_freed_memory;
#[cfg(test)]
pub(crate) use testing::random_checkpoint;
pub use testing::{write_random_checkpoint, write_word_tokenizer};
