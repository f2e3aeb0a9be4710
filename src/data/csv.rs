//! Pairs in CSV files (RFC 4180: fields separated by commas, a field in double quotes may hold
//! commas and doubled quotes), as spreadsheets, pandas and Kaggle write them. A file is read as
//! CSV when its name ends in `.csv` (or `.csv.gz`). Its first line is the header that names the
//! columns; `--columns SOURCE,TARGET` picks two of them by name or number (the first two by
//! default). Each record is one line: a quoted field that runs past the end of its line is a bad
//! line, so that an unclosed quote costs that line, not the rest of the file.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether `path` names a CSV file: `.csv` or `.csv.gz`, in any case.
pub fn is_csv(path: &Path) -> bool {
    let name = path.file_name().map(|name| name.to_string_lossy().to_lowercase()).unwrap_or_default();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// One line's fields, unquoted.
#[derive(Debug)]
pub struct CsvRecord {
    reader: csv_core::Reader,
    text: Vec<u8>,
    ends: Vec<usize>,
    count: usize,
}

impl Default for CsvRecord {
    fn default() -> Self {
        // `Reader::new`, not csv_core's `Default`, which leaves the reader's state machine unbuilt.
        let mut reader = csv_core::Reader::new();
        // The reader drops a byte-order mark before its first record (and after each `reset`):
        // the line reader has already dropped the file's, so a first record is read here and the
        // reader is never reset, lest a field that starts with U+FEFF lose it.
        let _ = reader.read_record(b"primed\n", &mut [0; 8], &mut [0; 2]);
        Self { reader, text: Vec::new(), ends: Vec::new(), count: 0 }
    }
}

impl CsvRecord {
    /// Splits `line` (its line end, if any, left out) into fields, or says why it cannot be.
    pub fn parse(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            // csv_core reads an empty line as no record at all; here it is one empty field.
            self.ends.resize(1, 0);
            self.ends[0] = 0;
            self.count = 1;
            return Ok(());
        }
        // Unquoting never lengthens a field, and a line of N bytes holds at most N + 1 fields;
        // the one byte more takes the line end that an unclosed quote swallows.
        self.text.resize(line.len() + 1, 0);
        self.ends.resize(line.len() + 2, 0);
        let (mut written, mut fields) = (0, 0);
        for input in [line.as_bytes(), b"\n"] {
            let (result, _, out, ends) =
                self.reader.read_record(input, &mut self.text[written..], &mut self.ends[fields..]);
            written += out;
            fields += ends;
            match result {
                csv_core::ReadRecordResult::Record => {
                    self.count = fields;
                    return Ok(());
                }
                csv_core::ReadRecordResult::InputEmpty => continue,
                other => {
                    self.reader.reset();
                    return Err(format!("CSV reader stopped early ({other:?}); please report this line"));
                }
            }
        }
        // Close the open quote and end the record, so that the next line starts a record.
        let closed = self.reader.read_record(b"\"\n", &mut [0; 2], &mut [0; 2]).0;
        if closed != csv_core::ReadRecordResult::Record {
            self.reader.reset();
        }
        Err("a quoted field is not closed on this line (a record must fit on one line)".to_owned())
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

/// A CSV file's pairs, line by line, once its header has said which columns hold them.
#[derive(Debug)]
pub struct CsvPairs {
    columns: Columns,
    target: Target,
    /// The source column, and the target's where the header has it (always, when required).
    found: Option<(Column, Option<Column>)>,
    record: CsvRecord,
}

impl CsvPairs {
    pub fn new(columns: Columns, target: Target) -> Self {
        Self { columns, target, found: None, record: CsvRecord::default() }
    }

    /// The columns the header gave, once it is read.
    pub fn found(&self) -> Option<&(Column, Option<Column>)> {
        self.found.as_ref()
    }

    /// Reads the header line; `Err` says why the file cannot be read: the header lacks the source
    /// column, or the target's when it is required, or both are one column.
    pub fn read_header(&mut self, text: &str) -> Result<(), String> {
        self.record.parse(text).map_err(|reason| format!("the header: {reason}"))?;
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

    /// Splits a line after the header into its source and target fields, or says why it cannot
    /// be. A required target's field must be on the line (empty or not); an optional one is
    /// `None` where the line lacks it or leaves it empty.
    pub fn split(&mut self, text: &str) -> Result<(&str, Option<&str>), String> {
        let Some((source, target)) = &self.found else {
            return Err("the header is read first".to_owned());
        };
        self.record.parse(text)?;
        let source = self.record.field_of(source, "source")?;
        let target = match (target, self.target) {
            (Some(column), Target::Required) => Some(self.record.field_of(column, "target")?),
            (Some(column), Target::Optional) => self.record.field(column.index).filter(|field| !field.is_empty()),
            (None, _) => None,
        };
        Ok((source, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Result<Vec<String>, String> {
        let mut record = CsvRecord::default();
        record.parse(line)?;
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
    fn a_quote_left_open_is_refused_and_the_next_line_reads_normally() {
        let mut record = CsvRecord::default();
        let error = record.parse(r#"a,"b c"#).expect_err("unclosed");
        assert!(error.contains("not closed on this line"), "{error}");
        record.parse("d,e").expect("the next line");
        assert_eq!((record.len(), record.field(1)), (2, Some("e")));
        for open in [r#""x"#, r#"a,"b"""#, r#"""""#] {
            assert!(record.parse(open).is_err(), "{open}");
            record.parse("\u{feff}f,g").expect("the next line");
            assert_eq!(record.field(0), Some("\u{feff}f"), "after {open}");
        }
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

        let mut pairs = CsvPairs::new("english,french".parse().expect("names"), Target::Optional);
        assert_eq!(pairs.split("1,one,un"), Err("the header is read first".to_owned()));
        pairs.read_header("id,english,french").expect("header");
        assert_eq!(pairs.split("1,one,un"), Ok(("one", Some("un"))));
        assert_eq!(pairs.split("2,two,"), Ok(("two", None)), "an empty field is no target");
        assert_eq!(pairs.split("3,three"), Ok(("three", None)), "nor is a missing one");
        assert!(pairs.split("4").expect_err("no source").contains("but the source is column 2"));

        let mut pairs = CsvPairs::new("english,french".parse().expect("names"), Target::Required);
        pairs.read_header("id,english,french").expect("header");
        assert_eq!(pairs.split("2,two,"), Ok(("two", Some(""))), "the reader of pairs says it is empty");
        let error = pairs.split("3,three").expect_err("no target");
        assert_eq!(error, r#"2 fields, but the target is column 3 ("french")"#);
    }

    #[test]
    fn csv_files_are_known_by_their_names() {
        for (name, csv) in [("a.csv", true), ("A.CSV", true), ("a.csv.gz", true), ("a.tsv", false), ("csv", false)] {
            assert_eq!(is_csv(Path::new(name)), csv, "{name}");
        }
    }
}
