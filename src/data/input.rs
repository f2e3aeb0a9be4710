//! Users' inputs for `predict` and `encode`: read from arguments, a file or standard input,
//! parsed for the model's task, refused with their location when bad, and handed on in batches.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::data::csv::{Columns, CsvPairs, OPEN_AT_THE_END, RecordLines, Split, Target, is_csv};
use crate::data::lines::{Line, LineReader, MAX_LINE_BYTES, describe_utf8_error};
use crate::output::plain_io_message;

use crate::task::{Samples, Task};

/// Where users' inputs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    Arguments(Vec<String>),
    /// A file of inputs; for a model of pairs, a CSV file (by its name) read in `columns` (the
    /// model's, or the first two, when `None`).
    File {
        path: PathBuf,
        columns: Option<Columns>,
    },
    /// Standard input: a source per line, or CSV read in `columns` when they are given (the
    /// name of a file says CSV; standard input has none).
    Stdin {
        columns: Option<Columns>,
    },
}

/// Counts of what happened to the inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputSummary {
    pub accepted: usize,
    pub rejected: usize,
}

/// Parses every input of `source` for `task` and calls `on_batch` with up to `batch_size`
/// accepted inputs at a time, in input order. Each bad input costs one line on `errors`
/// (`LOCATION: reason: "text"`) and does not stop the others. Memory stays bounded by one batch.
pub fn for_each_batch<'t>(
    source: &InputSource,
    task: &'t Task,
    batch_size: usize,
    errors: &mut dyn Write,
    on_batch: impl FnMut(&Samples<'t>) -> Result<()>,
) -> Result<InputSummary> {
    let pending = Samples::of(task);
    let mut batcher = Batcher { batch_size, errors, on_batch, pending, summary: Default::default() };
    match source {
        InputSource::Arguments(arguments) => {
            for (number, argument) in arguments.iter().enumerate() {
                batcher.push(&format!("argument {}", number + 1), Ok(argument))?;
            }
        }
        InputSource::File { path, columns } => {
            let csv = csv_inputs(task, Some(path), columns.as_ref())?;
            let file = File::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {}", path.display(), plain_io_message(&e)))?;
            if file.metadata().is_ok_and(|metadata| metadata.is_dir()) {
                anyhow::bail!("{} is a directory, not a file of inputs", path.display());
            }
            let descriptor = file.as_raw_fd();
            read_lines(&file, Some(descriptor), Some(path), csv, &mut batcher)?;
        }
        InputSource::Stdin { columns } => {
            let csv = csv_inputs(task, None, columns.as_ref())?;
            // Read through a descriptor of our own, unbuffered by Rust, so that polling it tells
            // whether a line is waiting.
            let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().context("cannot read standard input")?);
            read_lines(&stdin, Some(stdin.as_raw_fd()), None, csv, &mut batcher)?;
        }
    }
    batcher.finish()
}

/// Collects accepted inputs into batches and reports refused ones.
struct Batcher<'a, 't, F> {
    batch_size: usize,
    errors: &'a mut dyn Write,
    on_batch: F,
    pending: Samples<'t>,
    summary: InputSummary,
}

impl<'t, F: FnMut(&Samples<'t>) -> Result<()>> Batcher<'_, 't, F> {
    /// One input at `location`; `Err` carries why a line is not text at all.
    fn push(&mut self, location: &str, text: Result<&str, &str>) -> Result<()> {
        match text {
            Ok(text) => {
                let parsed = self.pending.parse_into(text).map(<[_]>::to_vec).map_err(|error| error.to_string());
                self.settle(location, text, parsed)
            }
            Err(reason) => self.settle(location, "", Err(reason.to_owned())),
        }
    }

    /// A source and its expected target, read from the columns of a CSV line at `location`.
    fn push_pair(&mut self, location: &str, source: &str, target: Option<&str>) -> Result<()> {
        let parsed = self.pending.parse_pair_into(source, target).map(<[_]>::to_vec).map_err(|error| error.to_string());
        self.settle(location, source, parsed)
    }

    /// Reports what parsing `text` gave: its unknown tokens, or why it was refused.
    fn settle(&mut self, location: &str, text: &str, parsed: Result<Vec<(usize, String)>, String>) -> Result<()> {
        match parsed {
            Ok(unknown) => {
                for (column, token) in unknown {
                    writeln!(
                        self.errors,
                        "{location}: token {column} ({token:?}) is not in the model's vocabulary; read as <unk>"
                    )?;
                }
                self.accepted()?
            }
            Err(reason) => {
                self.summary.rejected += 1;
                let shown = text.trim_end_matches(['\n', '\r']);
                if shown.trim().is_empty() {
                    writeln!(self.errors, "{location}: {reason}")?;
                } else {
                    writeln!(self.errors, "{location}: {reason}: {:?}", abbreviate(shown))?;
                }
            }
        }
        Ok(())
    }

    /// Counts the input just parsed into `pending`, and hands on a full batch.
    fn accepted(&mut self) -> Result<()> {
        self.summary.accepted += 1;
        if self.pending.len() >= self.batch_size {
            (self.on_batch)(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Hands on the inputs accepted so far, however few.
    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            (self.on_batch)(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<InputSummary> {
        self.flush()?;
        Ok(self.summary)
    }
}

/// Reads `source` line by line as bytes, so that a line of invalid UTF-8 is one bad line. When
/// the next line is not there yet (a pipe or a person typing), the inputs read so far are
/// answered first, so that nobody waits for a full batch.
fn read_lines<'t, F: FnMut(&Samples<'t>) -> Result<()>>(
    source: impl Read,
    descriptor: Option<RawFd>,
    path: Option<&Path>,
    mut csv: Option<CsvPairs>,
    batcher: &mut Batcher<'_, 't, F>,
) -> Result<()> {
    let mut reader = LineReader::new(source, descriptor);
    let cannot_read = |error: io::Error| match path {
        Some(path) => anyhow::anyhow!("cannot read {}: {}", path.display(), plain_io_message(&error)),
        None => anyhow::anyhow!("cannot read standard input: {}", plain_io_message(&error)),
    };
    let located = |lines: RecordLines| match path {
        Some(path) => format!("{}:{lines}", path.display()),
        None if lines.count() == 1 => format!("line {lines}"),
        None => format!("lines {lines}"),
    };
    let mut last = 0;
    for number in 1.. {
        if !reader.next_line_is_ready() {
            batcher.flush()?;
        }
        let Some(line) = reader.next_line().map_err(cannot_read)? else { break };
        last = number;
        let text = match line {
            Line::TooLong => Err(format!("longer than {MAX_LINE_BYTES} bytes (the limit of a line); skipped")),
            Line::Text(bytes) => std::str::from_utf8(bytes).map_err(describe_utf8_error),
        };
        let text = text.as_ref().map(|text| *text).map_err(String::as_str);
        match csv.as_mut() {
            Some(csv) => push_csv_line(csv, number, &located, text, batcher)?,
            None => batcher.push(&located(RecordLines::one(number)), text)?,
        }
    }
    if let Some(lines) = csv.as_mut().and_then(|csv| csv.abandon(last)) {
        batcher.push(&located(lines), Err(OPEN_AT_THE_END))?;
    }
    Ok(())
}

/// How a model of pairs reads `path` (standard input when `None`) as CSV: a file when its name
/// says so, standard input when `columns` are given; in `columns`, else the model's, else the
/// first two. `None` for other inputs and tasks (an autoencoder's `.csv` holds its lines).
fn csv_inputs(task: &Task, path: Option<&Path>, columns: Option<&Columns>) -> Result<Option<CsvPairs>> {
    let Task::Pairs(problem) = task else {
        if columns.is_some() {
            anyhow::bail!("--columns picks the source and target columns of a CSV file for a model of pairs");
        }
        return Ok(None);
    };
    match path {
        Some(path) if !is_csv(path) => {
            if columns.is_some() {
                anyhow::bail!(
                    "--columns picks the columns of a CSV file, but {} is read one source per line (a file is read \
                     as CSV when its name ends in .csv or .csv.gz, standard input with --file - --columns)",
                    path.display()
                );
            }
            return Ok(None);
        }
        None if columns.is_none() => return Ok(None),
        _ => {}
    }
    let columns = columns.or(problem.data.columns.as_ref()).cloned().unwrap_or_default();
    Ok(Some(CsvPairs::new(columns, Target::Optional)))
}

/// Reads the header of a CSV file (a file without the source column is refused whole), or hands
/// on the source and target of a record that ends on line `number` (located by `located`).
fn push_csv_line<'t, F: FnMut(&Samples<'t>) -> Result<()>>(
    csv: &mut CsvPairs,
    number: usize,
    located: &impl Fn(RecordLines) -> String,
    text: Result<&str, &str>,
    batcher: &mut Batcher<'_, 't, F>,
) -> Result<()> {
    let this_line = RecordLines::one(number);
    if csv.found().is_none() {
        let location = located(this_line);
        let text = text.map_err(|reason| anyhow::anyhow!("{location}: the header: {reason}"))?;
        if text.trim().is_empty() {
            return Ok(());
        }
        return csv.read_header(text).map_err(|reason| anyhow::anyhow!("{location}: {reason}"));
    }
    let text = match text {
        Ok(text) => text,
        Err(reason) => return batcher.push(&located(csv.abandon(number).unwrap_or(this_line)), Err(reason)),
    };
    match csv.split(number, text) {
        Split::Continues => Ok(()),
        Split::Record(lines, Ok((source, target))) => batcher.push_pair(&located(lines), source, target),
        Split::Record(lines, Err(reason)) => batcher.push(&located(lines), Err(&reason)),
    }
}

/// Long lines are shown by their first characters only.
fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(SHOWN).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{ArithmeticProblem, SequenceProblem};
    use proptest::prelude::*;

    fn calculator() -> Task {
        Task::Arithmetic(ArithmeticProblem {
            operators: "+-*/".parse().expect("valid operators"),
            min_terms: 1,
            max_terms: 4,
            largest: 999,
            reverse: true,
            reverse_output: false,
            alphabet: None,
        })
    }

    /// Runs raw bytes through the line reader as a file would be; returns the summary, the size of
    /// each batch handed on, and the messages.
    fn read(bytes: &[u8], task: &Task, batch_size: usize) -> (InputSummary, Vec<usize>, String) {
        let mut errors = Vec::new();
        let mut batch_sizes = Vec::new();
        let mut batcher = Batcher {
            batch_size,
            errors: &mut errors,
            on_batch: |batch: &Samples<'_>| {
                assert!(batch.len() <= batch_size);
                batch_sizes.push(batch.len());
                Ok(())
            },
            pending: Samples::of(task),
            summary: InputSummary::default(),
        };
        read_lines(bytes, None, Some(Path::new("input.txt")), None, &mut batcher).expect("reading memory cannot fail");
        let summary = batcher.finish().expect("no write fails");
        (summary, batch_sizes, String::from_utf8(errors).expect("messages are UTF-8"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any bytes at all, invalid UTF-8 and NUL included: every line is answered or refused
        /// with its location, and nothing panics.
        #[test]
        fn every_line_of_random_bytes_is_accepted_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for task in [calculator(), Task::Autoencoder(SequenceProblem { length: 3, ..Default::default() })] {
                let (summary, batch_sizes, errors) = read(&bytes, &task, 3);
                let lines = bytes.split_inclusive(|&b| b == b'\n').count();
                prop_assert_eq!(summary.accepted + summary.rejected, lines);
                prop_assert_eq!(batch_sizes.iter().sum::<usize>(), summary.accepted);
                prop_assert_eq!(errors.lines().count(), summary.rejected);
                prop_assert!(errors.lines().all(|line| line.starts_with("input.txt:")));
            }
        }

        /// Text made of the calculator's own characters: parsing never panics, and whatever is
        /// accepted prints back as an expression that parses to the same thing.
        #[test]
        fn accepted_expressions_round_trip(text in "[0-9+*/ -]{0,20}") {
            let Task::Arithmetic(problem) = calculator() else { panic!("the calculator is arithmetic") };
            if let Ok(expression) = problem.parse_expression(&text) {
                prop_assert_eq!(problem.parse_expression(&problem.display_input(&expression)), Ok(expression.clone()));
                let (min, max) = problem.result_range().expect("a valid problem");
                prop_assert!((min..=max).contains(&expression.value()));
            }
        }

        /// Arbitrary Unicode, control characters included, in either task's parser.
        #[test]
        fn parsers_never_panic_on_any_string(text in "\\PC*") {
            for task in [calculator(), Task::Autoencoder(SequenceProblem::default())] {
                let _ = Samples::of(&task).parse_into(&text);
            }
        }
    }

    #[test]
    fn a_one_megabyte_line_is_refused_and_quoted_briefly() {
        let mut bytes = vec![b'1'; 1 << 20];
        bytes.extend_from_slice(b"\n1+2\n\0\n");
        let (summary, batch_sizes, errors) = read(&bytes, &calculator(), 1000);
        assert_eq!((summary.accepted, summary.rejected), (1, 2));
        assert_eq!(batch_sizes, vec![1]);
        assert!(errors.starts_with("input.txt:1: expression is 1048576 characters long"), "{errors}");
        assert!(errors.lines().next().is_some_and(|line| line.len() < 200), "the long line is abbreviated");
        assert!(errors.contains("input.txt:3: unexpected character '\\0' at column 1"), "{errors}");
    }

    #[test]
    fn an_endless_line_is_refused_once_and_held_within_the_limit() {
        // Three lines: one far past the limit, a good one, and one past it without a line end.
        let mut bytes = vec![b'7'; 3 * MAX_LINE_BYTES];
        bytes.extend_from_slice(b"\n1+2\n");
        bytes.extend(std::iter::repeat_n(b'8', MAX_LINE_BYTES + 5));
        let (summary, batch_sizes, errors) = read(&bytes, &calculator(), 10);
        assert_eq!((summary.accepted, summary.rejected), (1, 2), "{errors}");
        assert!(errors.starts_with("input.txt:1: longer than 1048576 bytes"), "{errors}");
        assert!(errors.contains("input.txt:3: longer than"), "{errors}");
        assert_eq!(batch_sizes, vec![1]);
    }

    #[test]
    fn a_byte_order_mark_starts_the_first_line_only() {
        let (summary, _, errors) = read(b"\xEF\xBB\xBF1+2\n\xEF\xBB\xBF3+4\n", &calculator(), 10);
        assert_eq!((summary.accepted, summary.rejected), (1, 1), "{errors}");
        assert!(errors.starts_with("input.txt:2:"), "{errors}");
    }

    #[test]
    fn lines_that_wait_on_a_pipe_do_not_hold_back_those_before_them() {
        let (mut fds, task) = ([0 as libc::c_int; 2], calculator());
        // SAFETY: a valid array of two descriptors for pipe to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just opened by pipe and are owned here alone.
        let (reader, mut writer) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        writer.write_all(b"1+2\n3+4\n").expect("write into the pipe");
        let (batches_tx, batches_rx) = std::sync::mpsc::channel();
        let reading = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut batcher = Batcher {
                batch_size: 1000,
                errors: &mut errors,
                on_batch: |batch: &Samples<'_>| {
                    batches_tx.send(batch.len()).expect("the test listens");
                    Ok(())
                },
                pending: Samples::of(&task),
                summary: InputSummary::default(),
            };
            read_lines(&reader, Some(reader.as_raw_fd()), None, None, &mut batcher).expect("read the pipe");
            batcher.finish().expect("finish")
        });
        // The two lines are handed on while the pipe is still open and the batch is far from full.
        let first = batches_rx.recv_timeout(std::time::Duration::from_secs(20)).expect("a batch before the end");
        assert_eq!(first, 2);
        writer.write_all(b"5+6\n").expect("write");
        drop(writer);
        assert_eq!(reading.join().expect("reader").accepted, 3);
        assert_eq!(batches_rx.iter().sum::<usize>(), 1);
    }
}
