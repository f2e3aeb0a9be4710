//! The user's own sequence pairs: a source sequence of tokens in, a target sequence of tokens
//! out (spellings and pronunciations, words and lemmas, raw and normalised dates).
//!
//! The model reads `max_source_len` steps, the source left-padded with `<pad>` so that its last
//! token comes last, as the reference pads its expressions. It writes `max_target_len + 1`
//! steps: the target's tokens, then one `<pad>` that says where the target ends; the steps after
//! that are left out of the loss and the scores ([`IGNORED`]).

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::corpus::read::PairFiles;
use crate::data::corpus::{PAD_ID, TokenKind, UNKNOWN_ID, Vocabulary};
use crate::data::csv::Columns;

/// The target id of an output step after the end marker: libtorch's default `ignore_index`,
/// left out of the loss and of every score.
pub const IGNORED: i64 = -100;
/// Longest source or target a model reads or writes, in tokens.
pub const MAX_PAIR_LEN: usize = 4096;

/// Where a model's pairs came from, so that `train --resume` and `evaluate` can read them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairData {
    /// `source<TAB>target` lines (`train --data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Line-aligned files (`train --source/--target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// The held-out file, when given; otherwise `valid_fraction` of the data is held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<PathBuf>,
    /// The CSV columns of source and target (`--columns`), when given: a CSV file given later
    /// (`evaluate --data`, `predict --file`) is read in the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Columns>,
    pub valid_fraction: f64,
    pub min_count: u64,
    pub skip_bad_lines: bool,
    /// The length limits asked for (`None`: the longest of the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_source_len: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_target_len: Option<usize>,
    /// Training pairs, and a hash of their token ids: a resumed run refuses data that changed.
    pub training_pairs: usize,
    pub fingerprint: String,
    /// The same for the held-out pairs.
    #[serde(default)]
    pub held_out_pairs: usize,
    #[serde(default)]
    pub held_out_fingerprint: String,
}

impl PairData {
    /// The held-out file, read as the training file is.
    pub fn valid_files(&self) -> Option<PairFiles> {
        self.valid.clone().map(|valid| PairFiles::of_model(valid, self.columns.clone()))
    }

    /// The training files as the reader takes them.
    pub fn files(&self) -> Result<PairFiles> {
        match (&self.data, &self.source, &self.target) {
            (Some(data), None, None) => Ok(PairFiles::of_model(data.clone(), self.columns.clone())),
            (None, Some(source), Some(target)) => {
                Ok(PairFiles::Aligned { source: source.clone(), target: target.clone() })
            }
            _ => bail!("the task names its data as either `data` or both `source` and `target`"),
        }
    }
}

/// A model of the user's pairs: how lines are cut into tokens, the vocabulary of each side (the
/// source of truth for every id), and the lengths read and written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsProblem {
    pub source_tokens: TokenKind,
    pub target_tokens: TokenKind,
    pub source_vocabulary: Vocabulary,
    pub target_vocabulary: Vocabulary,
    pub max_source_len: usize,
    pub max_target_len: usize,
    pub data: PairData,
}

/// One source line, as ids the model reads, with what it said.
#[derive(Debug, Clone, PartialEq)]
pub struct PairInput {
    /// The source as the user wrote it.
    pub text: String,
    pub source: Vec<u32>,
    /// The expected target, when the line gave one (`source<TAB>target`).
    pub expected: Option<(String, Vec<u32>)>,
    /// Tokens not in the model's vocabulary, read as `<unk>`: (column, token).
    pub unknown: Vec<(usize, String)>,
}

/// Why a source line cannot be read by a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairError {
    Empty,
    /// A tab, then no target token.
    EmptyTarget,
    TooLong {
        tokens: usize,
        limit: usize,
    },
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::Empty => write!(f, "the source is empty"),
            PairError::EmptyTarget => write!(f, "the target after the tab is empty"),
            PairError::TooLong { tokens, limit } => {
                write!(f, "{tokens} tokens; this model reads sources of at most {limit}")
            }
        }
    }
}

impl std::error::Error for PairError {}

impl PairsProblem {
    pub fn validate(&self) -> Result<()> {
        for (side, length) in [("source", self.max_source_len), ("target", self.max_target_len)] {
            if !(1..=MAX_PAIR_LEN).contains(&length) {
                bail!("the longest {side} must be between 1 and {MAX_PAIR_LEN} tokens, got {length}");
            }
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) {
            bail!("--valid-fraction must be at least 0 and below 1, got {}", self.data.valid_fraction);
        }
        Ok(())
    }

    pub fn input_len(&self) -> usize {
        self.max_source_len
    }

    /// The target's tokens and the end marker.
    pub fn output_len(&self) -> usize {
        self.max_target_len + 1
    }

    /// Parses a line: a source, or `source<TAB>target` (the target is then the expected answer).
    pub fn parse_line(&self, line: &str) -> Result<PairInput, PairError> {
        let line = line.trim_end_matches(['\n', '\r']);
        match line.split_once('\t') {
            Some((source, rest)) => self.parse_pair(source, Some(rest.split('\t').next().unwrap_or_default())),
            None => self.parse_pair(line, None),
        }
    }

    /// Parses a source, with its expected target when one is given.
    pub fn parse_pair(&self, text: &str, target: Option<&str>) -> Result<PairInput, PairError> {
        let mut unknown = Vec::new();
        let source = ids_of(&self.source_vocabulary, self.source_tokens, text, Some(&mut unknown));
        if source.is_empty() {
            return Err(PairError::Empty);
        }
        if source.len() > self.max_source_len {
            return Err(PairError::TooLong { tokens: source.len(), limit: self.max_source_len });
        }
        let expected = match target {
            None => None,
            Some(target) => {
                let ids = ids_of(&self.target_vocabulary, self.target_tokens, target, None);
                if ids.is_empty() {
                    return Err(PairError::EmptyTarget);
                }
                Some((self.target_tokens.join(target_tokens(self.target_tokens, target).iter().copied()), ids))
            }
        };
        Ok(PairInput { text: text.to_owned(), source, expected, unknown })
    }

    /// The source ids of `input` left-padded to the model's input length, appended to `out`.
    pub fn encode_source(&self, source: &[u32], out: &mut Vec<i64>) {
        let padding = self.max_source_len.saturating_sub(source.len());
        out.extend(std::iter::repeat_n(i64::from(PAD_ID), padding));
        out.extend(source.iter().map(|&id| i64::from(id)));
    }

    /// The target ids, then the end marker, then [`IGNORED`] to the output length.
    pub fn encode_target(&self, target: &[u32], out: &mut Vec<i64>) {
        out.extend(target.iter().map(|&id| i64::from(id)));
        out.push(i64::from(PAD_ID));
        out.extend(std::iter::repeat_n(IGNORED, self.output_len().saturating_sub(target.len() + 1)));
    }

    /// A written row of class ids up to the end marker (the first `<pad>`).
    pub fn written<'a>(&self, row: &'a [i64]) -> &'a [i64] {
        let end = row.iter().position(|&id| id == i64::from(PAD_ID)).unwrap_or(row.len());
        &row[..end]
    }

    /// Whether `written` (class ids, from [`PairsProblem::written`]) is exactly the target
    /// `truth`. A true `<unk>` stands for a token the model's vocabulary lacks: writing `<unk>`
    /// does not write it.
    pub fn is_right(written: &[i64], truth: &[u32]) -> bool {
        written.len() == truth.len() && written.iter().zip(truth).all(|(&w, &t)| w == i64::from(Self::truth_id(t)))
    }

    /// A true target id as answers are compared with it: `<unk>` becomes an id nothing is
    /// written as.
    pub fn truth_id(id: u32) -> u32 {
        if id == UNKNOWN_ID { u32::MAX } else { id }
    }

    /// The text of target ids.
    pub fn target_text(&self, ids: &[i64]) -> String {
        let vocabulary = &self.target_vocabulary;
        self.target_tokens.join(ids.iter().map(|&id| vocabulary.token(u32::try_from(id).unwrap_or(UNKNOWN_ID))))
    }

    /// One line saying what the problem is.
    pub fn describe(&self) -> String {
        let files = self.data.files().map_or_else(|_| "?".to_owned(), |files| files.to_string());
        format!(
            "pairs of {files}: sources of up to {} {} (vocabulary {}) to targets of up to {} {} (vocabulary {})",
            self.max_source_len,
            kind_name(self.source_tokens),
            self.source_vocabulary.len(),
            self.max_target_len,
            kind_name(self.target_tokens),
            self.target_vocabulary.len()
        )
    }
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Chars => "characters",
        TokenKind::Words => "words",
    }
}

fn target_tokens(kind: TokenKind, text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    kind.split(text, |token| tokens.push(token));
    tokens
}

/// The ids of `text`'s tokens; an unknown one becomes `<unk>` and, with `unknown`, is noted.
fn ids_of(
    vocabulary: &Vocabulary,
    kind: TokenKind,
    text: &str,
    mut unknown: Option<&mut Vec<(usize, String)>>,
) -> Vec<u32> {
    let mut ids = Vec::new();
    kind.split(text, |token| {
        let id = vocabulary.id(token).unwrap_or_else(|| {
            if let Some(unknown) = unknown.as_deref_mut() {
                unknown.push((ids.len() + 1, token.to_owned()));
            }
            UNKNOWN_ID
        });
        ids.push(id);
    });
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn problem() -> PairsProblem {
        let vocabulary = |tokens: &[&str]| {
            let counts = tokens.iter().map(|t| (t.to_string(), 1));
            Vocabulary::from_counts(counts, 1)
        };
        PairsProblem {
            source_tokens: TokenKind::Chars,
            target_tokens: TokenKind::Words,
            source_vocabulary: vocabulary(&["a", "b", "c"]),
            target_vocabulary: vocabulary(&["AH", "B", "K"]),
            max_source_len: 4,
            max_target_len: 3,
            data: PairData {
                data: Some("pairs.tsv".into()),
                source: None,
                target: None,
                valid: None,
                columns: None,
                valid_fraction: 0.05,
                min_count: 1,
                skip_bad_lines: false,
                max_source_len: None,
                max_target_len: None,
                training_pairs: 2,
                fingerprint: String::new(),
                held_out_pairs: 0,
                held_out_fingerprint: String::new(),
            },
        }
    }

    #[test]
    fn sources_are_left_padded_and_targets_end_with_the_marker() {
        let problem = problem();
        let input = problem.parse_line("ab").expect("a source");
        let mut row = Vec::new();
        problem.encode_source(&input.source, &mut row);
        let (a, b) = (problem.source_vocabulary.id("a"), problem.source_vocabulary.id("b"));
        assert_eq!(row, [0, 0, i64::from(a.unwrap()), i64::from(b.unwrap())]);
        let mut target = Vec::new();
        problem.encode_target(&[5], &mut target);
        assert_eq!(target, [5, 0, IGNORED, IGNORED]);
        assert_eq!(problem.written(&[3, 4, 0, 3]), [3, 4]);
        assert_eq!(problem.written(&[3, 4, 2, 3]), [3, 4, 2, 3]);
        assert!(PairsProblem::is_right(problem.written(&[3, 4, 0, 3]), &[3, 4]));
        assert!(!PairsProblem::is_right(problem.written(&[3, 4, 0, 3]), &[3, 4, 5]));
        assert!(!PairsProblem::is_right(&[3, 5], &[3, 4]));
        // A target token the vocabulary lacks is never written, not even as `<unk>`.
        let unknown = i64::from(UNKNOWN_ID);
        assert!(!PairsProblem::is_right(&[3, unknown], &[3, UNKNOWN_ID]));
    }

    #[test]
    fn unknown_tokens_are_noted_with_their_column_and_long_sources_refused() {
        let problem = problem();
        let input = problem.parse_line("axb\tAH  B").expect("a source");
        assert_eq!(input.unknown, [(2, "x".to_owned())]);
        assert_eq!(input.source[1], UNKNOWN_ID);
        let (text, ids) = input.expected.expect("a target");
        assert_eq!(text, "AH B");
        assert_eq!(problem.target_text(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()), "AH B");
        assert_eq!(problem.parse_line("abcab"), Err(PairError::TooLong { tokens: 5, limit: 4 }));
        assert_eq!(problem.parse_line(""), Err(PairError::Empty));
        assert_eq!(problem.parse_line("ab\t"), Err(PairError::EmptyTarget));
        assert_eq!(problem.parse_line("ab\t  "), Err(PairError::EmptyTarget));
    }
}
