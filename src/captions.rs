//! Whole-word, case-insensitive matching of class names and synonyms in captions: the text
//! filter of LAION-style retrieval (ALOR, §3.1), shared by `retrieve` and `corpus`.

use aho_corasick::AhoCorasick;
use anyhow::{anyhow, bail, Result};
use std::borrow::Cow;

/// Whole-word, case-insensitive matching of class phrases in captions.
pub struct Matcher {
    ac: AhoCorasick,
    /// The class of each pattern.
    class_of: Vec<usize>,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Matcher {
    /// `phrases[c]`: the names of class c (its name and synonyms).
    pub fn new(phrases: &[Vec<String>]) -> Result<Matcher> {
        let mut pats = Vec::new();
        let mut class_of = Vec::new();
        for (c, names) in phrases.iter().enumerate() {
            for n in names {
                let p = n.trim().to_lowercase();
                if p.is_empty() {
                    bail!("class {c} has an empty name or synonym");
                }
                pats.push(p);
                class_of.push(c);
            }
        }
        let ac = AhoCorasick::new(&pats).map_err(|e| anyhow!("class phrases: {e}"))?;
        Ok(Matcher { ac, class_of })
    }

    /// The classes whose phrases occur in `caption` as whole words, ascending.
    pub fn classes(&self, caption: &str) -> Vec<usize> {
        let lower: Cow<str> =
            if caption.is_ascii() && !caption.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Borrowed(caption)
            } else {
                Cow::Owned(caption.to_lowercase())
            };
        let s = lower.as_ref();
        let mut out: Vec<usize> = Vec::new();
        for m in self.ac.find_overlapping_iter(s) {
            let before = s[..m.start()].chars().next_back();
            let after = s[m.end()..].chars().next();
            if before.is_some_and(is_word) || after.is_some_and(is_word) {
                continue;
            }
            let c = self.class_of[m.pattern().as_usize()];
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(classes: &[&[&str]]) -> Matcher {
        Matcher::new(
            &classes
                .iter()
                .map(|c| c.iter().map(|s| s.to_string()).collect())
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn whole_words_only_case_insensitive() {
        let mt = m(&[&["cat"], &["dog"]]);
        assert_eq!(mt.classes("a cat on a mat"), vec![0]);
        assert_eq!(mt.classes("Cat."), vec![0]);
        assert_eq!(mt.classes("CAT's toy"), vec![0]);
        assert!(mt.classes("a category of cats").is_empty());
        assert!(mt.classes("concatenate; bobcat; cat_food").is_empty());
        assert_eq!(mt.classes("dog-friendly cat café"), vec![0, 1]);
        assert!(mt.classes("").is_empty());
        // a non-ASCII neighbour is a word character: no match inside "caté"
        assert!(mt.classes("catépillar").is_empty());
        assert_eq!(mt.classes("ÉCOLE cat"), vec![0]);
    }

    #[test]
    fn synonyms_and_phrases() {
        let mt = m(&[&["ankle boot", "bootie"], &["t-shirt", "tee"], &["boot"]]);
        assert_eq!(mt.classes("Leather ANKLE BOOT, brown"), vec![0, 2]);
        assert_eq!(mt.classes("a bootie for winter"), vec![0]);
        assert_eq!(mt.classes("white tee"), vec![1]);
        assert_eq!(mt.classes("vintage T-Shirt"), vec![1]);
        assert!(mt.classes("teenager in bootcamp").is_empty());
        // overlapping phrases both count
        assert_eq!(mt.classes("boot"), vec![2]);
        assert!(Matcher::new(&[vec![" ".into()]]).is_err());
    }
}
