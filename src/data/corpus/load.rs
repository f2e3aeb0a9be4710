//! From the user's files to the training and held-out pairs of a model: reading, refusing or
//! skipping bad lines, length limits, the held-out split, and the problem `config.json` keeps.
//! A resumed run and `evaluate` read the same files again through [`reload`], with the stored
//! vocabularies, and get the same pairs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};

use super::read::{BadLine, FirstFew, HoldOut, PairFiles, ReadPairs, Tokenizing, read_pairs};
use super::{PairCorpus, TokenKind, thousands};
use crate::data::mix_seed;
use crate::task::pairs::{MAX_PAIR_LEN, PairData, PairsProblem};

/// What a training run reads: the user's pairs, or the autoencoder's sequences.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSettings {
    Pairs(PairSettings),
    Sequences(super::sequences::SequenceSettings),
}

/// What `train` was asked to read for pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSettings {
    pub files: PairFiles,
    pub valid: Option<PathBuf>,
    pub valid_fraction: f64,
    pub min_count: u64,
    pub skip_bad_lines: bool,
    pub source_tokens: TokenKind,
    pub target_tokens: TokenKind,
    pub max_source_len: Option<usize>,
    pub max_target_len: Option<usize>,
}

/// The held-out part when no `--valid` file is given.
pub const DEFAULT_VALID_FRACTION: f64 = 0.05;

/// A model's pairs, read.
pub struct LoadedPairs {
    pub problem: PairsProblem,
    pub training: Arc<PairCorpus>,
    pub validation: Arc<PairCorpus>,
    /// What reading found, in plain words (left out, skipped, overlapping pairs).
    pub notes: Vec<String>,
}

/// Reads the pairs of a new training run, building the vocabularies from the training part.
pub fn load_for_training(settings: &PairSettings, seed: u64) -> Result<LoadedPairs> {
    check_valid_fraction(settings.valid_fraction)?;
    if settings.min_count == 0 {
        bail!("--min-count must be at least 1");
    }
    for (flag, limit) in [("--max-source-len", settings.max_source_len), ("--max-target-len", settings.max_target_len)]
    {
        if let Some(limit) = limit.filter(|limit| !(1..=MAX_PAIR_LEN).contains(limit)) {
            bail!("{flag} must be between 1 and {MAX_PAIR_LEN}, got {limit}");
        }
    }
    let (data, source, target) = match &settings.files {
        PairFiles::Tabbed(path) | PairFiles::Csv { path, .. } => (Some(absolute(path)), None, None),
        PairFiles::Aligned { source, target } => (None, Some(absolute(source)), Some(absolute(target))),
    };
    let data = PairData {
        data,
        source,
        target,
        valid: settings.valid.as_ref().map(absolute),
        columns: settings.files.columns().cloned(),
        valid_fraction: settings.valid_fraction,
        min_count: settings.min_count,
        skip_bad_lines: settings.skip_bad_lines,
        max_source_len: settings.max_source_len,
        max_target_len: settings.max_target_len,
        training_pairs: 0,
        fingerprint: String::new(),
        held_out_pairs: 0,
        held_out_fingerprint: String::new(),
    };
    let tokenizing =
        Tokenizing { source_tokens: settings.source_tokens, target_tokens: settings.target_tokens, vocabularies: None };
    let Read { mut training, held_out, mut notes } = read_training(&data, &tokenizing, seed)?;
    for (side, vocabulary) in [("source", &training.source_vocabulary), ("target", &training.target_vocabulary)] {
        if !training.is_empty() && !vocabulary.has_tokens() {
            bail!(
                "no {side} token of {} occurs --min-count {} times in the training pairs: every one would read \
                 as <unk>; lower --min-count",
                settings.files,
                data.min_count
            );
        }
    }
    let longest = (training.sources.longest(), training.targets.longest());
    let limits = training.limit_lengths(settings.max_source_len, settings.max_target_len);
    for (side, length, flag) in
        [("source", limits.source, "--max-source-len"), ("target", limits.target, "--max-target-len")]
    {
        if length > MAX_PAIR_LEN {
            bail!(
                "the longest {side} of {} has {length} tokens, more than the {MAX_PAIR_LEN} a model takes: \
                 {flag} N leaves longer pairs out",
                settings.files
            );
        }
    }
    notes.extend(limits.describe());
    if training.is_empty() {
        bail!(
            "no training pair of {} fits {}/{} tokens (longest {}/{})",
            settings.files,
            limits.source,
            limits.target,
            longest.0,
            longest.1
        );
    }
    let mut problem = PairsProblem {
        source_tokens: settings.source_tokens,
        target_tokens: settings.target_tokens,
        source_vocabulary: training.source_vocabulary.clone(),
        target_vocabulary: training.target_vocabulary.clone(),
        max_source_len: limits.source,
        max_target_len: limits.target,
        data: PairData { training_pairs: training.len(), fingerprint: fingerprint(&training), ..data },
    };
    let validation = validation(&problem, &training, held_out, &mut notes)?;
    problem.data.held_out_pairs = validation.len();
    problem.data.held_out_fingerprint = fingerprint(&validation);
    Ok(LoadedPairs { problem, training: Arc::new(training), validation: Arc::new(validation), notes })
}

/// A held-out share must leave both parts something.
pub fn check_valid_fraction(fraction: f64) -> Result<()> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!(
            "--valid-fraction must be above 0 and below 1, got {fraction}; to train on every line of the \
             file, give held-out data in a file of its own with --valid FILE"
        );
    }
    Ok(())
}

/// `path` made absolute, as a model stores its data files: `evaluate` and `--resume` may run
/// from another directory.
pub fn absolute(path: &PathBuf) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.clone())
}

/// Reads a trained model's pairs again (resume, `evaluate` without `--data`); refuses data that
/// no longer gives the training pairs the model was trained on.
pub fn reload(problem: &PairsProblem, seed: u64) -> Result<LoadedPairs> {
    let tokenizing = Tokenizing {
        source_tokens: problem.source_tokens,
        target_tokens: problem.target_tokens,
        vocabularies: Some((&problem.source_vocabulary, &problem.target_vocabulary)),
    };
    let Read { mut training, held_out, mut notes } = read_training(&problem.data, &tokenizing, seed)?;
    training.limit_lengths(Some(problem.max_source_len), Some(problem.max_target_len));
    let files = problem.data.files()?;
    if training.len() != problem.data.training_pairs || fingerprint(&training) != problem.data.fingerprint {
        bail!(
            "{files} changed since the model was trained: it now gives {} training pairs, not the {} trained on \
             (or the same number with other contents)",
            thousands(training.len()),
            thousands(problem.data.training_pairs)
        );
    }
    let validation = validation(problem, &training, held_out, &mut notes)?;
    if validation.len() != problem.data.held_out_pairs || fingerprint(&validation) != problem.data.held_out_fingerprint
    {
        let origin = problem.data.valid.as_ref().map_or_else(|| files.to_string(), |valid| valid.display().to_string());
        bail!(
            "{origin} changed since the model was trained: it now gives {} held-out pairs, not the {} scored then \
             (or the same number with other contents)",
            thousands(validation.len()),
            thousands(problem.data.held_out_pairs)
        );
    }
    let problem = problem.clone();
    Ok(LoadedPairs { problem, training: Arc::new(training), validation: Arc::new(validation), notes })
}

/// A training file read: its training pairs, the pairs it held out, and what reading found.
struct Read {
    training: PairCorpus,
    held_out: PairCorpus,
    notes: Vec<String>,
}

/// Reads `data`'s training file(s), holding out `valid_fraction` when there is no valid file.
fn read_training(data: &PairData, tokenizing: &Tokenizing<'_>, seed: u64) -> Result<Read> {
    let files = data.files()?;
    let hold_out = data.valid.is_none().then_some(HoldOut { fraction: data.valid_fraction, seed });
    let read = read_pairs(&files, tokenizing, data.min_count, hold_out, false)?;
    let mut notes = Vec::from_iter(read.describe_columns(&files));
    notes.extend(read.describe_multi_line(&files));
    check_bad_lines(&read, &files, data.skip_bad_lines, &mut notes)?;
    if read.corpus.is_empty() && read.held_out.is_empty() {
        bail!("{files} holds no good pair");
    }
    Ok(Read { training: read.corpus, held_out: read.held_out, notes })
}

/// The held-out pairs of `problem`: its valid file read with the training vocabularies, or the
/// part split off the training file (`held_out`); both cut to the model's lengths.
fn validation(
    problem: &PairsProblem,
    training: &PairCorpus,
    held_out: PairCorpus,
    notes: &mut Vec<String>,
) -> Result<PairCorpus> {
    let data = &problem.data;
    let mut validation = match data.valid_files() {
        Some(valid) => read_for_model(problem, &valid, data.skip_bad_lines, notes)?,
        None => held_out,
    };
    let limits = validation.limit_lengths(Some(problem.max_source_len), Some(problem.max_target_len));
    if let Some(left_out) = limits.describe() {
        notes.push(format!("held-out pairs: {left_out}"));
    }
    if validation.is_empty() {
        bail!(
            "the held-out part of {} is empty: give more pairs, a larger --valid-fraction or a --valid FILE",
            data.files()?
        );
    }
    if data.valid.is_some() {
        let overlap = training.overlap(&validation);
        if overlap.shared > 0 {
            notes.push(format!(
                "{} of the {} held-out pairs also occur in the training data{}",
                thousands(overlap.shared),
                thousands(validation.len()),
                overlap.uncompared_clause()
            ));
        }
    }
    Ok(validation)
}

/// Reads a file of pairs for a trained model: its tokens and vocabularies, nothing held out.
fn read_pairs_for(problem: &PairsProblem, files: &PairFiles) -> Result<ReadPairs> {
    let tokenizing = Tokenizing {
        source_tokens: problem.source_tokens,
        target_tokens: problem.target_tokens,
        vocabularies: Some((&problem.source_vocabulary, &problem.target_vocabulary)),
    };
    read_pairs(files, &tokenizing, 1, None, true)
}

/// The pairs of `files` for a trained model (its tokens and vocabularies), bad lines refused or
/// with `skip` left out, and the source tokens it does not know counted in `notes`.
pub fn read_for_model(
    problem: &PairsProblem,
    files: &PairFiles,
    skip: bool,
    notes: &mut Vec<String>,
) -> Result<PairCorpus> {
    let read = read_pairs_for(problem, files)?;
    notes.extend(read.describe_columns(files));
    notes.extend(read.describe_multi_line(files));
    check_bad_lines(&read, files, skip, notes)?;
    if read.unknown.count > 0 {
        notes.push(format!(
            "{} source tokens of {files} are not in the model's vocabulary and read as <unk>",
            thousands(read.unknown.count)
        ));
    }
    if read.unknown_targets > 0 {
        notes.push(format!(
            "{} target tokens of {files} are not in the model's vocabulary: the model cannot write them, and \
             the answers they belong to count as wrong",
            thousands(read.unknown_targets)
        ));
    }
    Ok(read.corpus)
}

/// Refuses bad lines, or with `skip` notes how many were skipped.
fn check_bad_lines(read: &ReadPairs, files: &PairFiles, skip: bool, notes: &mut Vec<String>) -> Result<()> {
    refuse_or_note_bad_lines(&read.bad, read.lines, &files.to_string(), skip, notes)
}

/// Refuses a file with bad lines, after printing the first ones with their locations; with
/// `skip`, notes how many were left out instead.
pub fn refuse_or_note_bad_lines(
    bad: &FirstFew<BadLine>,
    lines: usize,
    files: &str,
    skip: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    match (bad.count, skip) {
        (0, _) => Ok(()),
        (count, false) => {
            for line in &bad.shown {
                crate::output::note(line.to_string());
            }
            let which = if bad.recorded > bad.shown.len() {
                format!("the first {} above", bad.shown.len())
            } else {
                "above".to_owned()
            };
            let verb = if count == 1 { "is" } else { "are" };
            bail!(
                "{} of {} lines of {files} {verb} bad ({which}); --skip-bad-lines leaves them out and uses the good ones",
                thousands(count),
                thousands(lines)
            )
        }
        (count, true) => {
            let noun = if count == 1 { "line" } else { "lines" };
            notes.push(format!("skipped {} bad {noun} of {} lines of {files}", thousands(count), thousands(lines)));
            Ok(())
        }
    }
}

/// A hash of every pair's ids, in order, as 16 hex digits.
fn fingerprint(corpus: &PairCorpus) -> String {
    let mut hash = 0x6669_6e67_6572_7072u64;
    for index in 0..corpus.len() {
        for &id in corpus.sources.get(index).iter().chain(&[u32::MAX]).chain(corpus.targets.get(index)) {
            hash = mix_seed(hash ^ u64::from(id));
        }
        hash = mix_seed(hash ^ 0xfffe);
    }
    format!("{hash:016x}")
}
