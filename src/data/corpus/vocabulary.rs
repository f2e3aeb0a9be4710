//! The tokens of one side of a corpus (sources or targets) and their ids, built from the
//! training data and stored in `config.json`, so that a saved model never needs its training
//! file again.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// How a line is cut into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Every character is a token (spelling, transliteration, dates).
    #[default]
    Chars,
    /// Tokens are separated by whitespace (`HH AH0 L OW1`, tokenised sentences); they are
    /// printed joined by single spaces.
    Words,
}

impl TokenKind {
    /// Calls `each` with every token of `text`, in order.
    pub fn split<'t>(self, text: &'t str, mut each: impl FnMut(&'t str)) {
        match self {
            TokenKind::Chars => {
                for (at, character) in text.char_indices() {
                    each(&text[at..at + character.len_utf8()]);
                }
            }
            TokenKind::Words => text.split_whitespace().for_each(each),
        }
    }

    /// Tokens joined back into text: as they were for `chars`, by single spaces for `words`.
    pub fn join<'a>(self, tokens: impl IntoIterator<Item = &'a str>) -> String {
        let separator = match self {
            TokenKind::Chars => "",
            TokenKind::Words => " ",
        };
        tokens.into_iter().collect::<Vec<_>>().join(separator)
    }
}

/// Id of the padding token: sources are left-padded with it, targets right-padded, and a
/// prediction ends at the first one the model writes.
pub const PAD_ID: u32 = 0;
/// Id of the unknown token: a token rarer than `--min-count`, or not seen in training.
pub const UNKNOWN_ID: u32 = 1;
/// How padding and unknown tokens are shown and stored.
pub const PAD_TOKEN: &str = "<pad>";
pub const UNKNOWN_TOKEN: &str = "<unk>";

/// Tokens in id order: `<pad>`, `<unk>`, then the training data's tokens, most frequent first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Vocabulary {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl TryFrom<Vec<String>> for Vocabulary {
    type Error = anyhow::Error;

    fn try_from(tokens: Vec<String>) -> Result<Self> {
        Self::from_tokens(tokens)
    }
}

impl From<Vocabulary> for Vec<String> {
    fn from(vocabulary: Vocabulary) -> Self {
        vocabulary.tokens
    }
}

impl Vocabulary {
    /// From `counts` (token, occurrences): every token seen at least `min_count` times, most
    /// frequent first and ties in text order, so that the same data always gives the same ids.
    pub fn from_counts(counts: impl IntoIterator<Item = (String, u64)>, min_count: u64) -> Self {
        // A literal `<unk>` or `<pad>` in the data (word-level corpora often hold `<unk>`) is
        // read as the unknown token, never as a token of its own.
        let special = |token: &str| token == PAD_TOKEN || token == UNKNOWN_TOKEN;
        let mut kept: Vec<(String, u64)> =
            counts.into_iter().filter(|(token, count)| *count >= min_count && !special(token)).collect();
        kept.sort_by(|(a, a_count), (b, b_count)| b_count.cmp(a_count).then_with(|| a.cmp(b)));
        let tokens =
            [PAD_TOKEN.to_owned(), UNKNOWN_TOKEN.to_owned()].into_iter().chain(kept.into_iter().map(|(t, _)| t));
        Self::from_tokens(tokens.collect()).expect("counted tokens are distinct and not special")
    }

    /// From the token list that `config.json` stores (special tokens first).
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self> {
        if tokens.first().map(String::as_str) != Some(PAD_TOKEN)
            || tokens.get(1).map(String::as_str) != Some(UNKNOWN_TOKEN)
        {
            bail!("a vocabulary starts with {PAD_TOKEN} and {UNKNOWN_TOKEN}");
        }
        if tokens.len() > u32::MAX as usize {
            bail!("a vocabulary holds at most {} tokens", u32::MAX);
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if token.is_empty() {
                bail!("the vocabulary holds an empty token (id {id})");
            }
            if ids.insert(token.clone(), id as u32).is_some() {
                bail!("the vocabulary lists {token:?} twice");
            }
        }
        Ok(Self { tokens, ids })
    }

    /// The tokens in id order, as `config.json` stores them.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Number of ids: the one-hot width, or the number of output classes.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: the special tokens are there.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether the vocabulary holds any token of the data, beside `<pad>` and `<unk>`.
    pub fn has_tokens(&self) -> bool {
        self.tokens.len() > 2
    }

    /// The id of `token`, if the vocabulary has it; a literal `<pad>` in text has none (padding
    /// is never part of a sequence), and reads as unknown.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied().filter(|&id| id != PAD_ID)
    }

    /// The token of `id` (`<unk>` for an id past the end).
    pub fn token(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or(UNKNOWN_TOKEN, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_by_kind_and_join_back() {
        let mut chars = Vec::new();
        TokenKind::Chars.split("héllo", |t| chars.push(t));
        assert_eq!(chars, ["h", "é", "l", "l", "o"]);
        assert_eq!(TokenKind::Chars.join(chars.iter().copied()), "héllo");
        let mut words = Vec::new();
        TokenKind::Words.split("  HH AH0\tL OW1 ", |t| words.push(t));
        assert_eq!(words, ["HH", "AH0", "L", "OW1"]);
        assert_eq!(TokenKind::Words.join(words), "HH AH0 L OW1");
    }

    #[test]
    fn ids_follow_frequency_then_text_and_rare_tokens_are_left_out() {
        let counts = [("b", 3), ("a", 3), ("c", 5), ("rare", 1)].map(|(t, n)| (t.to_owned(), n));
        let vocabulary = Vocabulary::from_counts(counts.clone(), 2);
        assert_eq!(vocabulary.tokens(), [PAD_TOKEN, UNKNOWN_TOKEN, "c", "a", "b"]);
        assert_eq!(vocabulary.id("a"), Some(3));
        assert_eq!(vocabulary.id("rare"), None);
        assert_eq!(vocabulary.token(99), UNKNOWN_TOKEN);
        assert_eq!(Vocabulary::from_counts(counts, 1).len(), 6);
        let stored = Vocabulary::from_tokens(vocabulary.tokens().to_vec()).expect("round trip");
        assert_eq!(stored, vocabulary);
    }

    #[test]
    fn stored_vocabularies_are_checked() {
        let tokens = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert!(Vocabulary::from_tokens(tokens(&["a", "b"])).is_err());
        assert!(Vocabulary::from_tokens(tokens(&[PAD_TOKEN, UNKNOWN_TOKEN, "a", "a"])).is_err());
        assert!(Vocabulary::from_tokens(tokens(&[PAD_TOKEN, UNKNOWN_TOKEN, ""])).is_err());
        assert!(Vocabulary::from_tokens(tokens(&[PAD_TOKEN, UNKNOWN_TOKEN])).is_ok());
    }

    #[test]
    fn special_tokens_in_the_data_read_as_unknown() {
        let counts = [(PAD_TOKEN, 4), (UNKNOWN_TOKEN, 9), ("a", 2)].map(|(t, n)| (t.to_owned(), n));
        let vocabulary = Vocabulary::from_counts(counts, 1);
        assert_eq!(vocabulary.tokens(), [PAD_TOKEN, UNKNOWN_TOKEN, "a"]);
        assert_eq!(vocabulary.id(PAD_TOKEN), None);
        assert_eq!(vocabulary.id(UNKNOWN_TOKEN), Some(UNKNOWN_ID));
    }
}
