//! Model definitions on candle, one file per model in the candle-transformers style (`Config`,
//! `load`, forwards), reading checkpoints in the Hugging Face layout.

pub mod clip;
