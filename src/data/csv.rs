//! Pairs in CSV files (RFC 4180: fields separated by commas, a field in double quotes may hold
//! commas and doubled quotes), as spreadsheets, pandas and Kaggle write them. A file is read as
//! CSV when its name ends in `.csv` (or `.csv.gz`). Its first line is the header that names the
//! columns; `--columns SOURCE,TARGET` picks two of them by name or number (the first two by
//! default). A quoted field may hold line breaks, as a spreadsheet's cell of several lines is
//! written: its record then spans those lines, up to [`MAX_RECORD_LINES`] lines and
//! [`MAX_LINE_BYTES`] bytes, so that a quote left open costs at most that many lines, not the
//! rest of the file.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::lines::MAX_LINE_BYTES;

/// Most lines one record may span (a quoted field holding line breaks): past them the quote is
/// taken to be left open by mistake, and the record is a bad one.
pub const MAX_RECORD_LINES: usize = 1_000;

/// Whether `path` names a CSV file: `.csv` or `.csv.gz`, in any case.
pub fn is_csv(path: &Path) -> bool {
    let name = path.file_name().map(|name| name.to_string_lossy().to_lowercase()).unwrap_or_default();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// Whether a line ended a record or left a quoted field open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The record ends on this line: its fields are ready.
    Record,
    /// A quoted field runs on to the next line.
    Continues,
}

/// One record's fields, unquoted.
#[derive(Debug)]
pub struct CsvRecord {
    reader: csv_core::Reader,
    text: Vec<u8>,
    ends: Vec<usize>,
    count: usize,
    /// Bytes and field ends written so far, and lines read, of a record still open.
    written: usize,
    fields: usize,
    lines: usize,
}

impl Default for CsvRecord {
    fn default() -> Self {
        // `Reader::new`, not csv_core's `Default`, which leaves the reader's state machine unbuilt.
        let mut reader = csv_core::Reader::new();
        // The reader drops a byte-order mark before its first record (and after each `reset`):
        // the line reader has already dropped the file's, so a first record is read here and the
        // reader is never reset, lest a field that starts with U+FEFF lose it.
        let _ = reader.read_record(b"primed\n", &mut [0; 8], &mut [0; 2]);
        Self { reader, text: Vec::new(), ends: Vec::new(), count: 0, written: 0, fields: 0, lines: 0 }
    }
}

impl CsvRecord {
    /// Reads `line` (its line end, if any, left out) into the record: the record ends there, or
    /// a quoted field runs on to the next line, or it cannot be read (why).
    pub fn parse(&mut self, line: &str) -> Result<Parsed, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() && !self.continues() {
            // csv_core reads an empty line as no record at all; here it is one empty field.
            self.ends.resize(1, 0);
            self.ends[0] = 0;
            self.count = 1;
            return Ok(Parsed::Record);
        }
        // Unquoting never lengthens a field, and a line of N bytes holds at most N + 1 fields;
        // the one byte more takes the line end.
        self.text.resize(self.written + line.len() + 1, 0);
        self.ends.resize(self.fields + line.len() + 2, 0);
        self.lines += 1;
        // An empty input would tell csv_core that the data has ended.
        for input in [line.as_bytes(), b"\n"].into_iter().filter(|input| !input.is_empty()) {
            let (result, _, out, ends) =
                self.reader.read_record(input, &mut self.text[self.written..], &mut self.ends[self.fields..]);
            self.written += out;
            self.fields += ends;
            match result {
                csv_core::ReadRecordResult::Record => {
                    self.count = self.fields;
                    (self.written, self.fields, self.lines) = (0, 0, 0);
                    return Ok(Parsed::Record);
                }
                csv_core::ReadRecordResult::InputEmpty => continue,
                other => {
                    self.reader.reset();
                    (self.written, self.fields, self.lines) = (0, 0, 0);
                    return Err(format!("CSV reader stopped early ({other:?}); please report this line"));
                }
            }
        }
        if self.lines >= MAX_RECORD_LINES || self.written > MAX_LINE_BYTES {
            let lines = self.lines;
            self.abandon();
            return Err(format!(
                "a quoted field opened on this record's first line is not closed within {} (a quote left open?)",
                match lines >= MAX_RECORD_LINES {
                    true => format!("{MAX_RECORD_LINES} lines"),
                    false => format!("{MAX_LINE_BYTES} bytes"),
                }
            ));
        }
        Ok(Parsed::Continues)
    }

    /// Whether a quoted field of the record read so far runs on to the next line.
    pub fn continues(&self) -> bool {
        self.lines > 0
    }

    /// Drops a record left open (the file ended, or its next line could not be read), closing
    /// its quote so that the next line starts a record.
    pub fn abandon(&mut self) {
        if !self.continues() {
            return;
        }
        let closed = self.reader.read_record(b"\"\n", &mut [0; 2], &mut [0; 2]).0;
        if closed != csv_core::ReadRecordResult::Record {
            self.reader.reset();
        }
        (self.written, self.fields, self.lines) = (0, 0, 0);
    }

    /// Fields in the record.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Field `index` (from 0). The line was UTF-8 and unquoting removes only ASCII quotes, so a
    /// field is UTF-8 too.
    pub fn field(&self, index: usize) -> Option<&str> {
        if index >= self.count {
            return None;
        }
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        std::str::from_utf8(&self.text[start..self.ends[index]]).ok()
    }

    /// The field of `column`, or why the line lacks it (`the source` is `side`).
    pub fn field_of(&self, column: &Column, side: &str) -> Result<&str, String> {
        self.field(column.index).ok_or_else(|| {
            let fields = self.count;
            format!("{fields} field{}, but the {side} is {column}", if fields == 1 { "" } else { "s" })
        })
    }
}

/// The columns that hold the source and the target, as the user names them (`--columns`): each
/// a name in the header, or else a number from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    pub source: String,
    pub target: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self { source: "1".to_owned(), target: "2".to_owned() }
    }
}

impl FromStr for Columns {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(source), Some(target), None) if !source.is_empty() && !target.is_empty() => {
                Ok(Self { source: source.to_owned(), target: target.to_owned() })
            }
            _ => Err(format!(
                "expected SOURCE,TARGET: two column names of the header, or numbers from 1 (e.g. english,french or 2,3), got {text:?}"
            )),
        }
    }
}

impl fmt::Display for Columns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.source, self.target)
    }
}

/// A column found in a header: its index from 0 and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub index: usize,
    pub name: String,
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {} ({:?})", self.index + 1, self.name)
    }
}

/// Finds `wanted` in `header`: a name first, then a number; `Err` if missing or unnamed.
fn find_column(header: &CsvRecord, wanted: &str, side: &str) -> Result<Column, String> {
    let names: Vec<&str> = (0..header.len()).map(|index| header.field(index).unwrap_or_default()).collect();
    let index = names.iter().position(|name| *name == wanted).or_else(|| {
        wanted.parse::<usize>().ok().filter(|number| (1..=names.len()).contains(number)).map(|number| number - 1)
    });
    let Some(index) = index else {
        let listed = names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ");
        let count = match names.len() {
            1 => "its one column".to_owned(),
            count => format!("its {count} columns"),
        };
        let advice = match names.iter().any(|name| name.contains('\t')) {
            true => "the header has tabs: a file named .tsv or .txt is read as `source<TAB>target` lines",
            false => "choose with --columns SOURCE,TARGET",
        };
        return Err(format!("the header has no column {wanted:?} for the {side} ({count}: {listed}); {advice}"));
    };
    let name = names[index].to_owned();
    if name.trim().is_empty() {
        return Err(format!(
            "column {} of the header, taken as the {side}, has no name (an index column written by pandas?); choose the columns with --columns SOURCE,TARGET",
            index + 1
        ));
    }
    Ok(Column { index, name })
}

/// Whether a CSV file must hold the target: training learns from it; prediction scores against
/// it where it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Required,
    Optional,
}

/// The lines a record spans, counted from 1: one, or more where a quoted field holds line breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLines {
    pub first: usize,
    pub last: usize,
}

impl RecordLines {
    /// A record of line `number` alone.
    pub fn one(number: usize) -> Self {
        Self { first: number, last: number }
    }

    /// How many lines the record spans.
    pub fn count(&self) -> usize {
        self.last - self.first + 1
    }
}

impl fmt::Display for RecordLines {
    /// `7`, or `7-9` for a record of three lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first == self.last {
            true => write!(f, "{}", self.first),
            false => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

/// What a line after the header gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// A quoted field runs on to the next line: the record goes on there.
    Continues,
    /// A record ended on this line: the lines it spans, and its source and target fields, or
    /// why it has none.
    Record(RecordLines, Result<(&'a str, Option<&'a str>), String>),
}

/// A CSV file's pairs, record by record, once its header has said which columns hold them.
#[derive(Debug)]
pub struct CsvPairs {
    columns: Columns,
    target: Target,
    /// The source column, and the target's where the header has it (always, when required).
    found: Option<(Column, Option<Column>)>,
    record: CsvRecord,
    /// The first line of a record still open.
    open_since: Option<usize>,
    /// Records that spanned more than one line, and the first of them.
    multi_line: usize,
    first_multi_line: Option<RecordLines>,
}

impl CsvPairs {
    pub fn new(columns: Columns, target: Target) -> Self {
        Self {
            columns,
            target,
            found: None,
            record: CsvRecord::default(),
            open_since: None,
            multi_line: 0,
            first_multi_line: None,
        }
    }

    /// The columns the header gave, once it is read.
    pub fn found(&self) -> Option<&(Column, Option<Column>)> {
        self.found.as_ref()
    }

    /// Reads the header line; `Err` says why the file cannot be read: the header lacks the source
    /// column, or the target's when it is required, or both are one column. The header must fit
    /// on its line.
    pub fn read_header(&mut self, text: &str) -> Result<(), String> {
        match self.record.parse(text) {
            Ok(Parsed::Record) => {}
            Ok(Parsed::Continues) => {
                self.record.abandon();
                return Err(
                    "the header: a quoted field is not closed on this line (a header must fit on one line)".to_owned()
                );
            }
            Err(reason) => return Err(format!("the header: {reason}")),
        }
        let source = find_column(&self.record, &self.columns.source, "source")?;
        let target = match (find_column(&self.record, &self.columns.target, "target"), self.target) {
            (Ok(target), _) if target.index == source.index => {
                return Err(format!("{source} is chosen as both the source and the target (--columns)"));
            }
            (Ok(target), _) => Some(target),
            (Err(reason), Target::Required) => return Err(reason),
            (Err(_), Target::Optional) => None,
        };
        self.found = Some((source, target));
        Ok(())
    }

    /// Whether a record is open: a quoted field ran past the last line read. A blank line then
    /// belongs to the field.
    pub fn continues(&self) -> bool {
        self.open_since.is_some()
    }

    /// Reads line `number` after the header. Where a record ends on it, splits the record into
    /// its source and target fields, or says why it cannot be: a required target's field must be
    /// there (empty or not); an optional one is `None` where the record lacks it or leaves it
    /// empty.
    pub fn split(&mut self, number: usize, text: &str) -> Split<'_> {
        let lines = RecordLines { first: self.open_since.unwrap_or(number), ..RecordLines::one(number) };
        let Some((source, target)) = &self.found else {
            return Split::Record(lines, Err("the header is read first".to_owned()));
        };
        match self.record.parse(text) {
            Ok(Parsed::Continues) => {
                self.open_since = Some(lines.first);
                return Split::Continues;
            }
            Ok(Parsed::Record) => {}
            Err(reason) => {
                self.open_since = None;
                return Split::Record(lines, Err(reason));
            }
        }
        self.open_since = None;
        if lines.first < lines.last {
            self.multi_line += 1;
            self.first_multi_line.get_or_insert(lines);
        }
        let fields = || {
            let source = self.record.field_of(source, "source")?;
            let target = match (target, self.target) {
                (Some(column), Target::Required) => Some(self.record.field_of(column, "target")?),
                (Some(column), Target::Optional) => self.record.field(column.index).filter(|field| !field.is_empty()),
                (None, _) => None,
            };
            Ok((source, target))
        };
        Split::Record(lines, fields())
    }

    /// Ends a record left open at line `number` (which could not be read, or is past the end of
    /// the file): the lines it spanned, to report as a bad record, or `None` if none was open.
    pub fn abandon(&mut self, number: usize) -> Option<RecordLines> {
        let first = self.open_since.take()?;
        self.record.abandon();
        Some(RecordLines { first, last: number.max(first) })
    }

    /// How many records held a line break in a quoted field, and the lines of the first: for a
    /// note, since a quote left open by mistake reads the same way until a later quote closes it.
    pub fn multi_line_records(&self) -> Option<(usize, RecordLines)> {
        self.first_multi_line.map(|first| (self.multi_line, first))
    }
}

/// Why a record left open at the end of its file is bad.
pub const OPEN_AT_THE_END: &str =
    "a quoted field opened on this record's first line is not closed at the end of the file";

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Result<Vec<String>, String> {
        let mut record = CsvRecord::default();
        if record.parse(line)? == Parsed::Continues {
            return Err("continues".to_owned());
        }
        Ok((0..record.len()).map(|index| record.field(index).expect("in range").to_owned()).collect())
    }

    proptest::proptest! {
        /// Fields of any text but line ends, quoted as Python's csv module quotes them, read
        /// back as they were; and no line at all makes the reader panic.
        #[test]
        fn quoted_fields_read_back_and_no_line_panics(
            written in proptest::collection::vec("[^\r\n]{0,8}", 1..6),
            any_line in "\\PC{0,40}",
        ) {
            let quote = |field: &String| match field.contains([',', '"']) || field.starts_with(' ') {
                true => format!("\"{}\"", field.replace('"', "\"\"")),
                false => field.clone(),
            };
            let line = written.iter().map(quote).collect::<Vec<_>>().join(",");
            proptest::prop_assert_eq!(fields(&line), Ok(written.clone()));
            let _ = fields(&any_line);
        }
    }

    #[test]
    fn quoted_fields_hold_commas_and_doubled_quotes() {
        assert_eq!(fields("a,b"), Ok(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(fields(r#""x, y","say ""hi""",z"#), Ok(vec!["x, y".into(), r#"say "hi""#.into(), "z".into()]));
        assert_eq!(fields("é,\"ü\",,"), Ok(vec!["é".into(), "ü".into(), "".into(), "".into()]));
        assert_eq!(fields(""), Ok(vec!["".to_owned()]));
        assert_eq!(fields("\r\n"), Ok(vec!["".to_owned()]), "a line end is no field");
        assert_eq!(fields("a,\"b\"\n"), Ok(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn a_quoted_field_may_hold_line_breaks_and_blank_lines() {
        let mut record = CsvRecord::default();
        assert_eq!(record.parse("a,\"one"), Ok(Parsed::Continues));
        assert!(record.continues());
        assert_eq!(record.parse(""), Ok(Parsed::Continues), "a blank line belongs to the field");
        assert_eq!(record.parse("two\r\n"), Ok(Parsed::Continues));
        assert_eq!(record.parse(r#"three "" end",z"#), Ok(Parsed::Record));
        assert_eq!((record.len(), record.field(0), record.field(2)), (3, Some("a"), Some("z")));
        assert_eq!(record.field(1), Some("one\n\ntwo\nthree \" end"));
        assert_eq!(record.parse("d,e"), Ok(Parsed::Record), "the next record");
        assert_eq!((record.len(), record.field(1)), (2, Some("e")));
    }

    #[test]
    fn a_quote_left_open_costs_at_most_the_record_limit_and_the_next_line_reads_normally() {
        let mut record = CsvRecord::default();
        assert_eq!(record.parse(r#"a,"b c"#), Ok(Parsed::Continues));
        for _ in 2..MAX_RECORD_LINES {
            assert_eq!(record.parse("x,y"), Ok(Parsed::Continues));
        }
        let error = record.parse("x,y").expect_err("past the limit");
        assert!(error.contains("not closed within 1000 lines"), "{error}");
        assert!(!record.continues());
        assert_eq!(record.parse("d,e"), Ok(Parsed::Record));
        assert_eq!((record.len(), record.field(1)), (2, Some("e")));
        for open in [r#""x"#, r#"a,"b"""#, r#"""""#] {
            assert_eq!(record.parse(open), Ok(Parsed::Continues), "{open}");
            record.abandon();
            assert_eq!(record.parse("\u{feff}f,g"), Ok(Parsed::Record), "after {open}");
            assert_eq!(record.field(0), Some("\u{feff}f"), "after {open}");
        }
        let long = "y".repeat(MAX_LINE_BYTES / 2 + 1);
        assert_eq!(record.parse(&format!("\"{long}")), Ok(Parsed::Continues));
        let error = record.parse(&long).expect_err("past the byte limit");
        assert!(error.contains(&format!("not closed within {MAX_LINE_BYTES} bytes")), "{error}");
        assert_eq!(record.parse("d,e"), Ok(Parsed::Record));
    }

    #[test]
    fn records_over_several_lines_are_located_by_their_lines_and_counted() {
        let mut pairs = CsvPairs::new(Columns::default(), Target::Required);
        pairs.read_header("source,target").expect("header");
        let record = |lines: (usize, usize), source: &'static str, target: &'static str| {
            Split::Record(RecordLines { first: lines.0, last: lines.1 }, Ok((source, Some(target))))
        };
        assert_eq!(pairs.split(2, "a,b"), record((2, 2), "a", "b"));
        assert_eq!(pairs.split(3, "\"c"), Split::Continues);
        assert!(pairs.continues());
        assert_eq!(pairs.split(4, "d\",e"), record((3, 4), "c\nd", "e"));
        assert_eq!(pairs.split(5, "f,\"g"), Split::Continues);
        assert_eq!(pairs.split(6, ""), Split::Continues);
        assert_eq!(pairs.split(7, "h\""), record((5, 7), "f", "g\n\nh"));
        assert_eq!(pairs.multi_line_records(), Some((2, RecordLines { first: 3, last: 4 })));
        assert_eq!(pairs.split(8, "\"i"), Split::Continues);
        assert_eq!(
            pairs.split(9, "j\""),
            Split::Record(
                RecordLines { first: 8, last: 9 },
                Err(r#"1 field, but the target is column 2 ("target")"#.to_owned())
            )
        );
        assert_eq!(pairs.split(10, "\"k"), Split::Continues);
        assert_eq!(pairs.abandon(11), Some(RecordLines { first: 10, last: 11 }));
        assert_eq!(pairs.abandon(12), None);
        assert_eq!(pairs.split(12, "l,m"), record((12, 12), "l", "m"));
        assert_eq!(RecordLines { first: 3, last: 4 }.to_string(), "3-4");
        assert_eq!(RecordLines { first: 3, last: 3 }.to_string(), "3");

        let mut header = CsvPairs::new(Columns::default(), Target::Required);
        let error = header.read_header("\"source,target").expect_err("open header");
        assert!(error.contains("a header must fit on one line"), "{error}");
        header.read_header("source,target").expect("the next line reads normally");
    }

    /// The columns that `columns` finds in `header`, the target as `need` asks.
    fn found(columns: &str, header: &str, need: Target) -> Result<(Column, Option<Column>), String> {
        let mut pairs = CsvPairs::new(columns.parse().expect("SOURCE,TARGET"), need);
        pairs.read_header(header)?;
        Ok(pairs.found().expect("read").clone())
    }

    fn column(index: usize, name: &str) -> Column {
        Column { index, name: name.to_owned() }
    }

    #[test]
    fn columns_are_found_by_name_then_number_and_missing_ones_named() {
        let header = "id,english,french";
        let required = |columns| found(columns, header, Target::Required);
        assert_eq!(required("english,french"), Ok((column(1, "english"), Some(column(2, "french")))));
        assert_eq!(required("3,1"), Ok((column(2, "french"), Some(column(0, "id")))));
        let error = required("english,german").expect_err("no german");
        assert!(
            error.contains(r#"no column "german" for the target"#) && error.contains(r#""id", "english""#),
            "{error}"
        );
        assert!(required("1,2").is_ok());
        assert!(required("4,1").is_err());
        assert!(required("2,2").expect_err("the same column").contains("both"));
        let error = found("1,2", "source\ttarget", Target::Required).expect_err("one column");
        assert!(error.contains("its one column") && error.contains("a file named .tsv or .txt"), "{error}");
        let error = found("1,2", ",english,french", Target::Required).expect_err("unnamed index");
        assert!(error.contains("column 1 of the header, taken as the source, has no name"), "{error}");
        for bad in ["english", "a,b,c", ",b", ""] {
            assert!(bad.parse::<Columns>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_optional_target_may_be_missing_from_the_header_and_from_a_line() {
        let optional = |columns| found(columns, "id,english,french", Target::Optional);
        assert_eq!(optional("english,german"), Ok((column(1, "english"), None)));
        assert!(optional("2,2").expect_err("the same column").contains("both"));
        assert!(optional("german,english").expect_err("no source").contains("for the source"));

        fn fields<'a>(pairs: &'a mut CsvPairs, line: &str) -> Result<(&'a str, Option<&'a str>), String> {
            match pairs.split(1, line) {
                Split::Record(_, fields) => fields,
                Split::Continues => panic!("{line} is one record"),
            }
        }
        let mut pairs = CsvPairs::new("english,french".parse().expect("names"), Target::Optional);
        assert_eq!(fields(&mut pairs, "1,one,un"), Err("the header is read first".to_owned()));
        pairs.read_header("id,english,french").expect("header");
        assert_eq!(fields(&mut pairs, "1,one,un"), Ok(("one", Some("un"))));
        assert_eq!(fields(&mut pairs, "2,two,"), Ok(("two", None)), "an empty field is no target");
        assert_eq!(fields(&mut pairs, "3,three"), Ok(("three", None)), "nor is a missing one");
        assert!(fields(&mut pairs, "4").expect_err("no source").contains("but the source is column 2"));

        let mut pairs = CsvPairs::new("english,french".parse().expect("names"), Target::Required);
        pairs.read_header("id,english,french").expect("header");
        assert_eq!(fields(&mut pairs, "2,two,"), Ok(("two", Some(""))), "the reader of pairs says it is empty");
        let error = fields(&mut pairs, "3,three").expect_err("no target");
        assert_eq!(error, r#"2 fields, but the target is column 3 ("french")"#);
    }

    #[test]
    fn csv_files_are_known_by_their_names() {
        for (name, csv) in [("a.csv", true), ("A.CSV", true), ("a.csv.gz", true), ("a.tsv", false), ("csv", false)] {
            assert_eq!(is_csv(Path::new(name)), csv, "{name}");
        }
    }
}
