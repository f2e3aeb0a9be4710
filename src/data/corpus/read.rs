//! Reading a corpus from the user's files: one pair per line (`source<TAB>target`, further
//! columns ignored, the Anki/Tatoeba layout), a CSV file with a header ([`crate::data::csv`]),
//! or two line-aligned files (the OpenNMT layout).
//! UTF-8, `\r\n` accepted, a byte-order mark skipped, gzip read decompressed. Every bad line is
//! located (FILE:LINE) and said what is wrong with it.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::vocabulary::{PAD_ID, TokenKind, UNKNOWN_ID, Vocabulary};
use super::{Packed, PairCorpus};
use crate::data::csv::{Column, Columns, CsvPairs, OPEN_AT_THE_END, RecordLines, Split, Target, is_csv};
use crate::data::lines::{Line, LineReader, MAX_LINE_BYTES, describe_utf8_error};
use crate::data::mix_seed;
use crate::output::plain_io_message;
use crate::store::files::open_regular;

/// Largest data file read (compressed size for gzip): far above a million pairs.
pub const MAX_DATA_BYTES: u64 = 64 << 30;
/// Bad lines shown before training refuses to start.
pub const BAD_LINES_SHOWN: usize = 10;

/// Where pairs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairFiles {
    /// `source<TAB>target` on each line.
    Tabbed(PathBuf),
    /// A CSV file: a header, then a pair per line in the chosen columns.
    Csv { path: PathBuf, columns: Option<Columns> },
    /// Line N of one file is the source of line N of the other.
    Aligned { source: PathBuf, target: PathBuf },
}

impl fmt::Display for PairFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairFiles::Tabbed(path) | PairFiles::Csv { path, .. } => write!(f, "{}", path.display()),
            PairFiles::Aligned { source, target } => write!(f, "{} and {}", source.display(), target.display()),
        }
    }
}

impl PairFiles {
    /// The file of `--data`: CSV when its name says so, read in `columns` (when `None`, a
    /// model's own or the first two); otherwise `source<TAB>target` lines, which have no
    /// columns to choose, so `columns` is then refused rather than ignored.
    pub fn one_file(path: PathBuf, columns: Option<Columns>) -> Result<PairFiles> {
        if columns.is_some() && !is_csv(&path) {
            bail!(
                "--columns picks the columns of a CSV file, but {} is read as `source<TAB>target` lines (a file is \
                 read as CSV when its name ends in .csv or .csv.gz)",
                path.display()
            );
        }
        Ok(PairFiles::of_model(path, columns))
    }

    /// A file named by a model's `config.json` (its training or held-out pairs): CSV when its
    /// name says so, read in the model's `columns`.
    pub fn of_model(path: PathBuf, columns: Option<Columns>) -> PairFiles {
        match is_csv(&path) {
            true => PairFiles::Csv { path, columns },
            false => PairFiles::Tabbed(path),
        }
    }

    /// These files, with `columns` (a model's) for a CSV file given none of its own.
    pub fn with_default_columns(self, columns: Option<&Columns>) -> PairFiles {
        match self {
            PairFiles::Csv { path, columns: None } => PairFiles::Csv { path, columns: columns.cloned() },
            files => files,
        }
    }

    /// The one file of `--data`, or `None` for aligned files.
    pub fn single_path(&self) -> Option<&Path> {
        match self {
            PairFiles::Tabbed(path) | PairFiles::Csv { path, .. } => Some(path),
            PairFiles::Aligned { .. } => None,
        }
    }

    /// The CSV columns given for these files, if any.
    pub fn columns(&self) -> Option<&Columns> {
        match self {
            PairFiles::Csv { columns, .. } => columns.as_ref(),
            _ => None,
        }
    }
}

/// How lines become token ids.
#[derive(Debug, Clone)]
pub struct Tokenizing<'v> {
    pub source_tokens: TokenKind,
    pub target_tokens: TokenKind,
    /// `None`: build the vocabularies from this data (training); otherwise map onto a model's,
    /// unknown tokens becoming `<unk>`.
    pub vocabularies: Option<(&'v Vocabulary, &'v Vocabulary)>,
}

/// A line that could not be used, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// `FILE:LINE`.
    pub location: String,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// The first [`BAD_LINES_SHOWN`] of what reading found wrong, and how many there were in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstFew<T> {
    pub shown: Vec<T>,
    /// What the items stand for in all (lines: a bad CSV record may span several).
    pub count: usize,
    /// Items recorded, shown or not.
    pub recorded: usize,
}

impl<T> Default for FirstFew<T> {
    fn default() -> Self {
        Self { shown: Vec::new(), count: 0, recorded: 0 }
    }
}

impl<T> FirstFew<T> {
    fn record(&mut self, item: T) {
        self.record_counting(item, 1);
    }

    /// Records `item`, which stands for `count` of what is counted (a bad record of several lines).
    fn record_counting(&mut self, item: T, count: usize) {
        self.count += count;
        self.recorded += 1;
        if self.shown.len() < BAD_LINES_SHOWN {
            self.shown.push(item);
        }
    }
}

/// Pairs read, with what was wrong on the way.
#[derive(Debug)]
pub struct ReadPairs {
    pub corpus: PairCorpus,
    /// The pairs held out by [`HoldOut`] (empty without one), in the same vocabularies.
    pub held_out: PairCorpus,
    /// Lines read (of the source file, for aligned files).
    pub lines: usize,
    pub bad: FirstFew<BadLine>,
    /// Unknown source tokens met when mapping onto a model's vocabulary: (location, column,
    /// token).
    pub unknown: FirstFew<(String, usize, String)>,
    /// Target tokens not in a model's vocabulary: it cannot write them.
    pub unknown_targets: usize,
    /// For a CSV file, the source and target columns its header gave.
    pub columns: Option<(Column, Column)>,
    /// For a CSV file, how many records spanned several lines, and the lines of the first.
    pub multi_line: Option<(usize, RecordLines)>,
}

impl ReadPairs {
    /// `pairs.csv: the source is column 2 ("english"), the target column 3 ("french")`, for a CSV file.
    pub fn describe_columns(&self, files: &PairFiles) -> Option<String> {
        let (source, target) = self.columns.as_ref()?;
        Some(format!("{files}: the source is {source}, the target {target}"))
    }

    /// `2 records of pairs.csv span several lines ...`, where a quoted field held line breaks:
    /// said because a quote left open by mistake reads the same way, until a later quote.
    pub fn describe_multi_line(&self, files: &PairFiles) -> Option<String> {
        let (count, first) = self.multi_line?;
        let (records, verb) = match count {
            1 => ("1 record".to_owned(), "spans"),
            count => (format!("{} records", super::thousands(count)), "span"),
        };
        Some(format!(
            "{records} of {files} {verb} several lines, a quoted field holding line breaks (the first: lines {first})"
        ))
    }
}

/// Holds out about `fraction` of the pairs, chosen by a hash of each pair's text salted with
/// `seed`: identical pairs land on the same side (the parts never overlap), the same file and
/// seed always give the same split, and the held-out tokens take no part in the vocabularies
/// (a token seen only there reads as `<unk>`, as it would in new data).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldOut {
    pub fraction: f64,
    pub seed: u64,
}

impl HoldOut {
    /// Whether the sample whose content is `content` is held out.
    pub fn holds(&self, content: impl IntoIterator<Item = u64>) -> bool {
        let hash =
            content.into_iter().fold(mix_seed(self.seed ^ 0x7661_6c69_6400_0000), |hash, item| mix_seed(hash ^ item));
        (hash as f64) < self.fraction.clamp(0.0, 1.0) * u64::MAX as f64
    }

    /// [`HoldOut::holds`] for a pair, by the bytes of its source and target.
    fn holds_pair(&self, source: &str, target: &str) -> bool {
        self.holds(source.bytes().chain([0xff]).chain(target.bytes()).map(u64::from))
    }
}

/// A file's lines, decompressed when the file is gzip.
fn open_lines(path: &Path) -> Result<LineReader<Box<dyn Read>>> {
    if path.is_dir() {
        bail!("{} is a directory, not a data file", path.display());
    }
    let (mut file, size) = open_regular(path, MAX_DATA_BYTES).map_err(|e| match path.exists() {
        true => anyhow::anyhow!("{e:#} (data files are read whole, so pipes and devices are refused)"),
        false => e,
    })?;
    if size == 0 {
        bail!("{} is empty", path.display());
    }
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), plain_io_message(&e)))?;
    let source: Box<dyn Read> = if gzip { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
    Ok(LineReader::new(source, None))
}

/// The next line of `reader` as text without its line end, or why it is bad; `None` at the end.
fn next_text(
    reader: &mut LineReader<Box<dyn Read>>,
    path: &Path,
    number: usize,
) -> Result<Option<Result<String, String>>> {
    let line = reader
        .next_line()
        .map_err(|e| anyhow::anyhow!("cannot read {} (line {number}): {}", path.display(), plain_io_message(&e)))?;
    Ok(line.map(|line| match line {
        Line::TooLong => Err(format!("longer than {MAX_LINE_BYTES} bytes, the limit of a line")),
        Line::Text(bytes) => {
            let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if let Some(column) = bytes.iter().position(|&b| b == 0) {
                return Err(format!("a NUL byte at byte {}", column + 1));
            }
            String::from_utf8(bytes.to_vec()).map_err(|e| describe_utf8_error(e.utf8_error()))
        }
    }))
}

/// Whether a line read by [`next_text`] is empty: it holds nothing, and is skipped rather than
/// called bad (a blank line at the end of a file is an editor's habit, and pandas skips them too).
fn is_blank(line: &Result<String, String>) -> bool {
    matches!(line, Ok(text) if text.is_empty())
}

/// One side's ids as they are read: fixed by a model's vocabulary, or provisional (a new id for
/// each new token, counted) until the vocabulary is built.
enum SideIds<'v> {
    Fixed(&'v Vocabulary),
    Counting { ids: HashMap<String, u32>, tokens: Vec<String>, counts: Vec<u64> },
}

impl SideIds<'_> {
    /// Appends the ids of `text`'s tokens to `out`; returns each unknown token with its column.
    /// Held-out text (`counted` false) gets ids but adds nothing to the counts.
    fn push(&mut self, kind: TokenKind, text: &str, counted: bool, out: &mut Vec<u32>) -> Vec<(usize, String)> {
        let mut unknown = Vec::new();
        let mut column = 0;
        kind.split(text, |token| {
            column += 1;
            match self {
                SideIds::Fixed(vocabulary) => out.push(vocabulary.id(token).unwrap_or_else(|| {
                    unknown.push((column, token.to_owned()));
                    UNKNOWN_ID
                })),
                SideIds::Counting { ids, tokens, counts } => {
                    let id = *ids.entry(token.to_owned()).or_insert_with(|| {
                        tokens.push(token.to_owned());
                        counts.push(0);
                        (tokens.len() - 1) as u32
                    });
                    counts[id as usize] += u64::from(counted);
                    out.push(id);
                }
            }
        });
        unknown
    }

    /// The side's vocabulary, and the map from provisional ids to final ones.
    fn finish(self, min_count: u64) -> (Vocabulary, Option<Vec<u32>>) {
        match self {
            SideIds::Fixed(vocabulary) => (vocabulary.clone(), None),
            SideIds::Counting { tokens, counts, .. } => {
                let vocabulary = Vocabulary::from_counts(tokens.iter().cloned().zip(counts), min_count);
                let remap = tokens.iter().map(|token| vocabulary.id(token).unwrap_or(UNKNOWN_ID)).collect();
                (vocabulary, Some(remap))
            }
        }
    }
}

fn side_ids(fixed: Option<&Vocabulary>) -> SideIds<'_> {
    match fixed {
        Some(vocabulary) => SideIds::Fixed(vocabulary),
        None => SideIds::Counting { ids: HashMap::new(), tokens: Vec::new(), counts: Vec::new() },
    }
}

/// Splits a tabbed line into its source and target, or says why it cannot be.
fn split_tabbed(text: &str) -> Result<(&str, &str), String> {
    let mut columns = text.split('\t');
    let source = columns.next().unwrap_or_default();
    let Some(target) = columns.next() else {
        let hint = if text.contains(',') {
            " (this line has a comma: a file is read as CSV only when its name ends in .csv or .csv.gz)"
        } else {
            ""
        };
        return Err(format!("no tab: a pair is `source<TAB>target`{hint}"));
    };
    Ok((source, target))
}

/// Reads every pair of `files`, holding out some with `hold_out`. `min_count` applies when the
/// vocabularies are built here. The held-out pairs in which a token becomes `<unk>` keep their
/// text (they are scored, and `evaluate --errors` shows them); with `spell_all`, the others too.
pub fn read_pairs(
    files: &PairFiles,
    tokenizing: &Tokenizing<'_>,
    min_count: u64,
    hold_out: Option<HoldOut>,
    spell_all: bool,
) -> Result<ReadPairs> {
    let (fixed_source, fixed_target) = match tokenizing.vocabularies {
        Some((source, target)) => (Some(source), Some(target)),
        None => (None, None),
    };
    let mut source_ids = side_ids(fixed_source);
    let mut target_ids = side_ids(fixed_target);
    let (mut sources, mut targets) = (Packed::default(), Packed::default());
    let (mut held_sources, mut held_targets) = (Packed::default(), Packed::default());
    let mut read = ReadPairs {
        corpus: PairCorpus::default(),
        held_out: PairCorpus::default(),
        lines: 0,
        bad: FirstFew::default(),
        unknown: FirstFew::default(),
        unknown_targets: 0,
        columns: None,
        multi_line: None,
    };
    // The text of pairs with a token the vocabulary lacks, by index; while the vocabularies
    // are still counted, every held-out pair's, kept below if one of its tokens ends up `<unk>`.
    let counting = tokenizing.vocabularies.is_none();
    let (mut spelled, mut held_spelled) = (HashMap::new(), HashMap::new());
    let (first_path, second_path) = match files {
        PairFiles::Tabbed(path) | PairFiles::Csv { path, .. } => (path.as_path(), None),
        PairFiles::Aligned { source, target } => (source.as_path(), Some(target.as_path())),
    };
    let mut csv = match files {
        PairFiles::Csv { columns, .. } => Some(CsvPairs::new(columns.clone().unwrap_or_default(), Target::Required)),
        _ => None,
    };
    let mut first = open_lines(first_path)?;
    let mut second = second_path.map(open_lines).transpose()?;
    let mut scratch = (Vec::new(), Vec::new());
    for number in 1.. {
        let line = next_text(&mut first, first_path, number)?;
        let other = match (&mut second, second_path) {
            (Some(reader), Some(path)) => Some(next_text(reader, path, number)?),
            _ => None,
        };
        let (line, other) = match (line, other) {
            (None, None | Some(None)) => break,
            (Some(line), None) => (line, None),
            (Some(line), Some(Some(other))) => (line, Some(other)),
            (None, Some(Some(_))) | (Some(_), Some(None)) => {
                let count = |path: &Path| count_lines(path).map_or_else(|e| format!("? ({e:#})"), |n| n.to_string());
                let (source, target) = (first_path, second_path.expect("aligned files have two paths"));
                bail!(
                    "{} has {} lines but {} has {}: aligned files must have one line per pair",
                    source.display(),
                    count(source),
                    target.display(),
                    count(target)
                );
            }
        };
        read.lines = number;
        let in_record = csv.as_ref().is_some_and(CsvPairs::continues);
        if is_blank(&line) && other.as_ref().is_none_or(is_blank) && !in_record {
            continue;
        }
        // The lines of the record that ends here: more than this one where a CSV field held line breaks.
        let mut lines = RecordLines::one(number);
        if let Some(csv) = csv.as_mut().filter(|csv| csv.found().is_none()) {
            match line.as_ref().map_err(|reason| format!("the header: {reason}")).and_then(|text| csv.read_header(text))
            {
                Ok(()) => continue,
                Err(reason) => bail!("{}:{number}: {reason}", first_path.display()),
            }
        }
        let texts = match (&line, &other) {
            (Err(reason), _) => {
                if let Some(abandoned) = csv.as_mut().and_then(|csv| csv.abandon(number)) {
                    lines = abandoned;
                }
                Err(reason.clone())
            }
            (Ok(_), Some(Err(reason))) => {
                Err(format!("{}:{number}: {reason}", second_path.map(Path::display).expect("aligned")))
            }
            (Ok(text), Some(Ok(target))) => Ok((text.as_str(), target.as_str())),
            (Ok(text), None) => match csv.as_mut() {
                Some(csv) => match csv.split(number, text) {
                    Split::Continues => continue,
                    Split::Record(record, fields) => {
                        lines = record;
                        fields.map(|(source, target)| (source, target.unwrap_or_default()))
                    }
                },
                None => split_tabbed(text),
            },
        };
        let location = format!("{}:{lines}", first_path.display());
        let (source_text, target_text) = match texts {
            Ok(texts) => texts,
            Err(reason) => {
                read.bad.record_counting(BadLine { location, reason }, lines.count());
                continue;
            }
        };
        scratch.0.clear();
        scratch.1.clear();
        let held = hold_out.is_some_and(|hold_out| hold_out.holds_pair(source_text, target_text));
        let unknown_source = source_ids.push(tokenizing.source_tokens, source_text, !held, &mut scratch.0);
        let unknown_target = target_ids.push(tokenizing.target_tokens, target_text, !held, &mut scratch.1).len();
        let empty = match (scratch.0.is_empty(), scratch.1.is_empty()) {
            (true, _) => Some("the source is empty"),
            (_, true) => Some("the target is empty"),
            _ => None,
        };
        if let Some(reason) = empty {
            read.bad.record_counting(BadLine { location, reason: reason.to_owned() }, lines.count());
            continue;
        }
        let spell = (held || spell_all) && (!unknown_source.is_empty() || unknown_target > 0 || counting);
        read.unknown_targets += unknown_target;
        for (column, token) in unknown_source {
            read.unknown.record((location.clone(), column, token));
        }
        if spell {
            let (spelled, index) = if held { (&mut held_spelled, &held_sources) } else { (&mut spelled, &sources) };
            spelled.insert(index.len() as u32, (source_text.to_owned(), target_text.to_owned()));
        }
        if held {
            held_sources.push(&scratch.0);
            held_targets.push(&scratch.1);
        } else {
            sources.push(&scratch.0);
            targets.push(&scratch.1);
        }
    }
    if let Some(lines) = csv.as_mut().and_then(|csv| csv.abandon(read.lines)) {
        let location = format!("{}:{lines}", first_path.display());
        read.bad.record_counting(BadLine { location, reason: OPEN_AT_THE_END.to_owned() }, lines.count());
    }
    let (source_vocabulary, source_remap) = source_ids.finish(min_count);
    let (target_vocabulary, target_remap) = target_ids.finish(min_count);
    for (packed, remap) in [
        (&mut sources, &source_remap),
        (&mut held_sources, &source_remap),
        (&mut targets, &target_remap),
        (&mut held_targets, &target_remap),
    ] {
        if let Some(remap) = remap {
            packed.remap(remap);
        }
    }
    debug_assert!(sources.ids.iter().chain(&targets.ids).all(|&id| id != PAD_ID));
    let has_unknown = |sources: &Packed, targets: &Packed, index: u32| {
        [sources, targets].iter().any(|side| side.get(index as usize).contains(&UNKNOWN_ID))
    };
    held_spelled.retain(|&index, _| has_unknown(&held_sources, &held_targets, index));
    spelled.retain(|&index, _| has_unknown(&sources, &targets, index));
    read.held_out = PairCorpus {
        sources: held_sources,
        targets: held_targets,
        source_vocabulary: source_vocabulary.clone(),
        target_vocabulary: target_vocabulary.clone(),
        spelled: held_spelled,
    };
    read.corpus = PairCorpus { sources, targets, source_vocabulary, target_vocabulary, spelled };
    read.columns =
        csv.as_ref().and_then(CsvPairs::found).and_then(|(source, target)| Some((source.clone(), target.clone()?)));
    read.multi_line = csv.as_ref().and_then(CsvPairs::multi_line_records);
    Ok(read)
}

/// Lines of a file, for the message about aligned files of different lengths.
fn count_lines(path: &Path) -> Result<usize> {
    let mut reader = open_lines(path)?;
    let mut lines = 0;
    while reader.next_line()?.is_some() {
        lines += 1;
    }
    Ok(lines)
}

/// Real-valued sequences read from a file, one per line, comma-separated, all of one length.
#[derive(Debug)]
pub struct ReadSequences {
    /// `length` values per sequence, one after the other.
    pub values: Vec<f32>,
    pub length: usize,
    pub lines: usize,
    pub bad: FirstFew<BadLine>,
}

/// Reads a file of sequences for the autoencoder. Sequences must all have the length of the
/// first good one (the model reads and writes a fixed number of steps); others are bad lines.
pub fn read_sequences(path: &Path, length: Option<usize>) -> Result<ReadSequences> {
    let mut reader = open_lines(path)?;
    let mut read =
        ReadSequences { values: Vec::new(), length: length.unwrap_or(0), lines: 0, bad: FirstFew::default() };
    let mut row = Vec::new();
    for number in 1.. {
        let Some(line) = next_text(&mut reader, path, number)? else { break };
        read.lines = number;
        if is_blank(&line) {
            continue;
        }
        let location = format!("{}:{number}", path.display());
        let text = match line {
            Ok(text) => text,
            Err(reason) => {
                read.bad.record(BadLine { location, reason });
                continue;
            }
        };
        row.clear();
        let parsed = crate::task::sequence::parse_values(&text, &mut row).map_err(|e| e.to_string());
        match parsed {
            Err(reason) => read.bad.record(BadLine { location, reason }),
            Ok(()) if read.length == 0 => {
                read.length = row.len();
                read.values.extend_from_slice(&row);
            }
            Ok(()) if row.len() != read.length => {
                let reason = format!(
                    "{} values, but the sequences have {} (every sequence of a file must have the same length)",
                    row.len(),
                    read.length
                );
                read.bad.record(BadLine { location, reason });
            }
            Ok(()) => read.values.extend_from_slice(&row),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chars() -> Tokenizing<'static> {
        Tokenizing { source_tokens: TokenKind::Chars, target_tokens: TokenKind::Chars, vocabularies: None }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write a test file");
        path
    }

    fn texts(read: &ReadPairs) -> Vec<(String, String)> {
        let corpus = &read.corpus;
        (0..corpus.len())
            .map(|i| {
                let side = |packed: &Packed, vocabulary: &Vocabulary| {
                    packed.get(i).iter().map(|&id| vocabulary.token(id).to_owned()).collect::<Vec<_>>().join("|")
                };
                (side(&corpus.sources, &corpus.source_vocabulary), side(&corpus.targets, &corpus.target_vocabulary))
            })
            .collect()
    }

    #[test]
    fn tabbed_lines_with_crlf_bom_and_extra_columns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "fra.txt", "\u{feff}Go.\tVa !\tCC-BY 2.0\r\nHi.\tSalut !\n".as_bytes());
        let read = read_pairs(&PairFiles::Tabbed(path), &chars(), 1, None, true).expect("read");
        assert_eq!(read.bad.count, 0, "{:?}", read.bad.shown);
        assert_eq!(texts(&read), [("G|o|.".into(), "V|a| |!".into()), ("H|i|.".into(), "S|a|l|u|t| |!".into())]);
        // Most frequent first after the two special tokens.
        assert_eq!(read.corpus.target_vocabulary.token(2), " ");
    }

    #[test]
    fn aligned_files_words_and_gzip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = write(dir.path(), "words.txt", b"hello\nworld\n");
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(b"HH AH0 L OW1\nW ER1 L D\n").expect("compress");
        let target = write(dir.path(), "phones.txt.gz", &gzip.finish().expect("compress"));
        let tokenizing = Tokenizing { target_tokens: TokenKind::Words, ..chars() };
        let read = read_pairs(&PairFiles::Aligned { source: source.clone(), target }, &tokenizing, 1, None, true)
            .expect("read");
        assert_eq!(texts(&read)[0], ("h|e|l|l|o".into(), "HH|AH0|L|OW1".into()));
        assert_eq!(read.corpus.targets.get(1).len(), 4);

        let short = write(dir.path(), "short.txt", b"HH\n");
        let error = read_pairs(&PairFiles::Aligned { source, target: short }, &tokenizing, 1, None, true)
            .expect_err("1 vs 2 lines");
        let message = format!("{error:#}");
        assert!(message.contains("words.txt has 2 lines but") && message.contains("short.txt has 1"), "{message}");
    }

    #[test]
    fn blank_lines_are_skipped_and_the_lines_after_them_keep_their_numbers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "pairs.tsv", b"ab\tba\n\n\r\nno tab\ncd\tdc\n\n");
        let read = read_pairs(&PairFiles::Tabbed(path.clone()), &chars(), 1, None, true).expect("read");
        assert_eq!((read.corpus.len(), read.bad.count, read.lines), (2, 1, 6), "{:?}", read.bad.shown);
        let shown = read.bad.shown[0].to_string();
        assert!(shown.starts_with(&format!("{}:4: ", path.display())) && shown.contains("no tab"), "{shown}");

        // Aligned files: a line blank in both is skipped; blank in one only, the pair is bad.
        let source = write(dir.path(), "source.txt", b"ab\n\n\ncd\n");
        let target = write(dir.path(), "target.txt", b"ba\n\nx\ndc\n");
        let read = read_pairs(&PairFiles::Aligned { source, target }, &chars(), 1, None, true).expect("read");
        assert_eq!((read.corpus.len(), read.bad.count), (2, 1), "{:?}", read.bad.shown);
        assert!(read.bad.shown[0].to_string().contains(":3: the source is empty"), "{:?}", read.bad.shown);

        let sequences = write(dir.path(), "sequences.txt", b"1,2,3\n\n4,5,6\n\n");
        let read = read_sequences(&sequences, None).expect("read");
        assert_eq!((read.values.len(), read.length, read.bad.count), (6, 3, 0));
    }

    #[test]
    fn every_bad_line_is_located_and_explained() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = b"ok\tfine\nno tab here\n\tempty source\nempty target\t\nbad \xff utf8\tx\nnul\0\tx\n".to_vec();
        bytes.extend(vec![b'a'; MAX_LINE_BYTES + 10]);
        bytes.extend_from_slice(b"\tlong\nlast\tgood");
        let path = write(dir.path(), "pairs.tsv", &bytes);
        let read = read_pairs(&PairFiles::Tabbed(path.clone()), &chars(), 1, None, true).expect("read");
        assert_eq!((read.corpus.len(), read.bad.count, read.lines), (2, 6, 8), "{:?}", read.bad.shown);
        let shown: Vec<String> = read.bad.shown.iter().map(ToString::to_string).collect();
        let at = |line: usize| format!("{}:{line}: ", path.display());
        for (line, reason) in [
            (2, "no tab"),
            (3, "the source is empty"),
            (4, "the target is empty"),
            (5, "not valid UTF-8 (byte 5)"),
            (6, "a NUL byte at byte 4"),
            (7, "longer than 1048576 bytes"),
        ] {
            assert!(shown.iter().any(|s| s.starts_with(&at(line)) && s.contains(reason)), "line {line}: {shown:?}");
        }
        assert_eq!((read.bad.count, read.lines), (6, 8));
        assert!(!shown[0].contains("CSV"), "no comma, no hint: {}", shown[0]);
    }

    #[test]
    fn a_comma_separated_line_of_a_tabbed_file_says_how_csv_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "pairs.txt", b"source,target\nabc,cba\n");
        let read = read_pairs(&PairFiles::Tabbed(path.clone()), &chars(), 1, None, true).expect("read");
        assert_eq!(read.bad.count, 2);
        let shown = read.bad.shown[1].to_string();
        assert!(shown.starts_with(&format!("{}:2: no tab", path.display())), "{shown}");
        assert!(shown.contains("a file is read as CSV only when its name ends in .csv"), "{shown}");
    }

    #[test]
    fn a_csv_file_is_read_in_the_columns_its_header_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = "\u{feff}id,english,french\r\n1,Go.,Va !\n\n2,\"Hi, you\",\"Salut \"\"toi\"\"\"\n3,only two\n5,,vide\n6,\"Two\r\n\nlines\",\"Deux\nlignes\"\n4,\"open,x\n8,y,z\n"
            .as_bytes();
        let path = write(dir.path(), "pairs.csv", bytes);
        let columns = Some("english,french".parse().expect("columns"));
        let files = PairFiles::one_file(path.clone(), columns).expect("a CSV name");
        let read = read_pairs(&files, &chars(), 1, None, true).expect("read");
        assert_eq!(
            texts(&read),
            [
                ("G|o|.".into(), "V|a| |!".into()),
                ("H|i|,| |y|o|u".into(), "S|a|l|u|t| |\"|t|o|i|\"".into()),
                ("T|w|o|\n|\n|l|i|n|e|s".into(), "D|e|u|x|\n|l|i|g|n|e|s".into())
            ]
        );
        let shown: Vec<String> = read.bad.shown.iter().map(ToString::to_string).collect();
        let at = |line: &str| format!("{}:{line}: ", path.display());
        for (line, reason) in [
            ("5", "2 fields, but the target is column 3 (\"french\")"),
            ("6", "the source is empty"),
            ("11-12", OPEN_AT_THE_END),
        ] {
            assert!(shown.iter().any(|s| s.starts_with(&at(line)) && s.contains(reason)), "line {line}: {shown:?}");
        }
        assert_eq!(read.bad.count, 4, "{shown:?}: the record left open counts its two lines");
        assert_eq!(read.bad.recorded, 3, "{shown:?}: three bad records");
        assert_eq!(
            read.describe_multi_line(&files),
            Some(format!(
                "1 record of {} spans several lines, a quoted field holding line breaks (the first: lines 7-10)",
                path.display()
            ))
        );
        assert_eq!(
            read.describe_columns(&files).as_deref(),
            Some(format!("{}: the source is column 2 (\"english\"), the target column 3 (\"french\")", path.display()))
                .as_deref()
        );

        // By default the first two columns; a column the header lacks refuses the whole file.
        let read =
            read_pairs(&PairFiles::Csv { path: path.clone(), columns: None }, &chars(), 1, None, true).expect("read");
        assert_eq!(texts(&read)[0], ("1".into(), "G|o|.".into()));
        let missing = PairFiles::Csv { path: path.clone(), columns: Some("english,german".parse().expect("columns")) };
        let error = read_pairs(&missing, &chars(), 1, None, true).expect_err("no german column");
        let message = format!("{error:#}");
        assert!(message.starts_with(&at("1")) && message.contains("no column \"german\" for the target"), "{message}");

        // --columns names CSV columns: a tabbed file refuses it rather than ignoring it.
        let tabbed = write(dir.path(), "pairs.tsv", b"a\tb\n");
        let error = PairFiles::one_file(tabbed, Some(Columns::default())).expect_err("not CSV");
        assert!(format!("{error:#}").contains("read as `source<TAB>target` lines"), "{error:#}");
    }

    #[test]
    fn missing_empty_directories_and_devices_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = write(dir.path(), "empty.tsv", b"");
        for (path, expected) in [
            (dir.path().join("missing.tsv"), "does not exist"),
            (empty, "is empty"),
            (dir.path().to_owned(), "is a directory"),
            (PathBuf::from("/dev/zero"), "is a character device"),
        ] {
            let error = read_pairs(&PairFiles::Tabbed(path), &chars(), 1, None, true).expect_err("refused");
            assert!(format!("{error:#}").contains(expected), "{error:#}");
        }
    }

    #[test]
    fn a_models_vocabulary_maps_unknown_tokens_and_says_where() {
        let dir = tempfile::tempdir().expect("temp dir");
        let training = write(dir.path(), "train.tsv", b"abc\tx\nabd\ty\n");
        let trained = read_pairs(&PairFiles::Tabbed(training), &chars(), 2, None, true).expect("read");
        // `c` and `d` occur once: below --min-count 2 they are unknown already in training.
        assert_eq!(trained.corpus.source_vocabulary.tokens(), ["<pad>", "<unk>", "a", "b"]);
        assert_eq!(trained.corpus.sources.get(0), [2, 3, UNKNOWN_ID]);
        let vocabularies = (&trained.corpus.source_vocabulary, &trained.corpus.target_vocabulary);
        let tokenizing = Tokenizing { vocabularies: Some(vocabularies), ..chars() };
        let other = write(dir.path(), "other.tsv", b"bza\tx\n");
        let read = read_pairs(&PairFiles::Tabbed(other.clone()), &tokenizing, 1, None, true).expect("read");
        assert_eq!(read.unknown.shown, [(format!("{}:1", other.display()), 2, "z".to_owned())]);
        assert_eq!(read.corpus.sources.get(0), [3, UNKNOWN_ID, 2]);
    }

    #[test]
    fn pairs_with_a_token_read_as_unknown_keep_their_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let training = write(dir.path(), "train.tsv", b"abc\tx\nabd\ty\nab\tx\n");
        let spelled = |read: &ReadPairs| {
            let mut spelled: Vec<_> = read.corpus.spelled.iter().map(|(&i, t)| (i, t.clone())).collect();
            spelled.sort();
            spelled
        };
        // Counted here: `c`, `d` and `y` fall below --min-count 2; `ab x` keeps no text.
        let trained = read_pairs(&PairFiles::Tabbed(training.clone()), &chars(), 2, None, true).expect("read");
        let text = |source: &str, target: &str| (source.to_owned(), target.to_owned());
        assert_eq!(spelled(&trained), [(0, text("abc", "x")), (1, text("abd", "y"))]);
        // Not asked for: training pairs are never shown.
        let unspelled = read_pairs(&PairFiles::Tabbed(training.clone()), &chars(), 2, None, false).expect("read");
        assert!(unspelled.corpus.spelled.is_empty());
        // Held out, they are scored: their text is kept, asked for or not.
        let everything = HoldOut { fraction: 1.0, seed: 1 };
        let held = read_pairs(&PairFiles::Tabbed(training), &chars(), 1, Some(everything), false).expect("read");
        assert_eq!((held.corpus.len(), held.held_out.len(), held.held_out.spelled.len()), (0, 3, 3));

        // Mapped onto a model's vocabulary: the unknown target tokens are counted.
        let vocabularies = (&trained.corpus.source_vocabulary, &trained.corpus.target_vocabulary);
        let tokenizing = Tokenizing { vocabularies: Some(vocabularies), ..chars() };
        let other = write(dir.path(), "other.tsv", b"ab\tx\nab\tqq\n");
        let read = read_pairs(&PairFiles::Tabbed(other), &tokenizing, 1, None, true).expect("read");
        assert_eq!((spelled(&read), read.unknown_targets), (vec![(1, text("ab", "qq"))], 2));
    }

    #[test]
    fn sequences_of_one_length_are_read_and_others_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "seq.csv", b"0.1,0.2,0.3\n0.4, 0.5 ,0.6\r\n1,2\nx,1,2\n");
        let read = read_sequences(&path, None).expect("read");
        assert_eq!((read.length, read.values.len(), read.bad.count), (3, 6, 2));
        assert!(
            read.bad.shown[0].to_string().ends_with(
                ":3: 2 values, but the sequences have 3 (every sequence of a file must have the same length)"
            )
        );
        assert!(read.bad.shown[1].reason.contains("is not a finite number"), "{:?}", read.bad.shown);
    }
}
