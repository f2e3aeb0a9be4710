//! The training metrics log `metrics.csv` in the model directory: one line per report, written
//! and flushed as it happens, so that a crash keeps every finished line and a plot can be drawn
//! from a run that is still going.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::store::files::{read_text, write_atomically};

/// Largest log read back: millions of rows.
const MAX_LOG_BYTES: u64 = 1 << 30;

/// File name of the log inside the model directory.
pub const METRICS_FILE: &str = "metrics.csv";
/// The learning curve's file name inside the model directory, unless `plot --out` says
/// otherwise: a picture of [`METRICS_FILE`], replaced with it by `train --overwrite`.
pub const LEARNING_CURVE_FILE: &str = "learning_curve.png";

/// Column names, in the order every line holds them.
const COLUMNS: [&str; 10] = [
    "samples_seen",
    "epoch",
    "elapsed_seconds",
    "loss",
    "char_accuracy",
    "sequence_accuracy",
    "validation_loss",
    "validation_char_accuracy",
    "validation_sequence_accuracy",
    "gradient_norm",
];

/// Logs written before the gradient norm was logged hold the columns before it; they are read
/// as they are, and rebuilt with the column (empty in their rows) when a run resumes.
const OLDER_COLUMNS: usize = 9;

/// One report of a training run. `None` means "not applicable" and is written as an empty field:
/// regression tasks have no accuracies, and validation is not scored at every report.
/// Accuracies are fractions in `[0, 1]`, as in [`crate::evaluate::Metrics`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsRow {
    /// Training samples processed so far, over all epochs.
    pub samples_seen: u64,
    /// The epoch this report falls in, counted from 1.
    pub epoch: usize,
    /// Wall time since training started.
    pub elapsed_seconds: f64,
    /// Mean training loss since the previous report.
    pub loss: f64,
    pub char_accuracy: Option<f64>,
    pub sequence_accuracy: Option<f64>,
    pub validation_loss: Option<f64>,
    pub validation_char_accuracy: Option<f64>,
    pub validation_sequence_accuracy: Option<f64>,
    /// The L2 norm of the last batch's gradient before the report, before any clipping (`None`
    /// in logs older than the column).
    pub gradient_norm: Option<f64>,
}

/// An open `metrics.csv` that training appends to.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Creates (or truncates) the log at `path` and writes the header line.
    pub fn create(path: &Path) -> Result<Self> {
        let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(format!("{}\n", COLUMNS.join(",")).as_bytes())
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { file, path: path.to_owned() })
    }

    /// Opens the log of an interrupted run to append to, for `train --resume` from a checkpoint
    /// after `samples_seen` samples. Rows past the checkpoint (written before a crash, and about to
    /// be trained again) are dropped, as is a last line cut short, so that the resumed run's rows
    /// follow on without repeats. A run without a log (older than the log) gets a new one.
    /// Returns the log and the rows it kept, which early stopping takes up.
    pub fn reopen(path: &Path, samples_seen: u64) -> Result<(Self, Vec<MetricsRow>)> {
        if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == ErrorKind::NotFound) {
            return Ok((Self::create(path)?, Vec::new()));
        }
        let (text, (kept, rows, damage)) = match read_text(path, MAX_LOG_BYTES) {
            Ok(text) => {
                let good = good_rows(path, &text, samples_seen);
                (Some(text), good)
            }
            // Not text at all (NUL bytes from a crash are text; bytes cut mid-character are not).
            Err(error) if path.is_file() => (None, (String::new(), Vec::new(), Some(format!("{error:#}")))),
            Err(error) => return Err(error),
        };
        if let Some(damage) = damage {
            let rows = rows.len();
            crate::output::note(format!(
                "{damage}: kept the {rows} good row(s) before it and rebuilt {} from there",
                path.display()
            ));
        }
        let kept = format!("{}\n{kept}", COLUMNS.join(","));
        if text.as_deref() != Some(kept.as_str()) {
            write_atomically(path, |temporary| std::fs::write(temporary, &kept).map_err(anyhow::Error::from))?;
        }
        Ok((Self { file: open_for_appending(path)?, path: path.to_owned() }, rows))
    }

    /// Replaces the last row, which is `row`'s (the same samples seen), with `row`: a row whose
    /// validation a stop signal cut short, scored when the run resumes. The file is rewritten
    /// whole and atomically, so that a crash leaves either row.
    pub fn replace_last(&mut self, row: &MetricsRow) -> Result<()> {
        let text = read_text(&self.path, MAX_LOG_BYTES)?;
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let last = body.rfind('\n').map_or(0, |newline| newline + 1);
        if last == 0 || !body[last..].starts_with(&format!("{},", row.samples_seen)) {
            bail!("{} does not end with the row after {} samples", self.path.display(), row.samples_seen);
        }
        let replaced = format!("{}{}", &text[..last], format_row(row));
        write_atomically(&self.path, |temporary| std::fs::write(temporary, &replaced).map_err(anyhow::Error::from))?;
        self.file = open_for_appending(&self.path)?;
        Ok(())
    }

    /// Writes one line in a single call and flushes it.
    pub fn append(&mut self, row: &MetricsRow) -> Result<()> {
        let line = format_row(row);
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// The log at `path`, opened to append rows after the ones it holds.
fn open_for_appending(path: &Path) -> Result<File> {
    OpenOptions::new().append(true).open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// One CSV line, newline included. `{}` prints the shortest text that parses back to the same
/// `f64`, so a round trip is exact.
fn format_row(row: &MetricsRow) -> String {
    let optional = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        row.samples_seen,
        row.epoch,
        row.elapsed_seconds,
        row.loss,
        optional(row.char_accuracy),
        optional(row.sequence_accuracy),
        optional(row.validation_loss),
        optional(row.validation_char_accuracy),
        optional(row.validation_sequence_accuracy),
        optional(row.gradient_norm),
    )
}

/// Reads a log written by [`MetricsLog`]. Errors name the file and the (1-based) line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = read_text(path, MAX_LOG_BYTES)?;
    let mut lines = text.lines();
    let columns = check_header(path, lines.next())?;
    lines
        .enumerate()
        .map(|(index, line)| parse_row(line, columns).with_context(|| format!("{} line {}", path.display(), index + 2)))
        .collect()
}

/// The rows of a log's `text` up to `samples_seen`: as text, each with its line end (and with
/// every column: an older log's rows gain an empty gradient norm), and parsed; and a description
/// of the first damaged line when there is one (rows after it are dropped too).
fn good_rows(path: &Path, text: &str, samples_seen: u64) -> (String, Vec<MetricsRow>, Option<String>) {
    let mut lines = text.split_inclusive('\n');
    let columns = match check_header(path, lines.next()) {
        Ok(columns) => columns,
        Err(error) => return (String::new(), Vec::new(), Some(format!("{error:#}"))),
    };
    let (mut kept, mut rows) = (String::new(), Vec::new());
    for (index, line) in lines.enumerate() {
        // A last line cut short by a crash is no damage: it is dropped, and trained again.
        if !line.ends_with('\n') {
            break;
        }
        match parse_row(line.trim_end(), columns) {
            Ok(row) if row.samples_seen <= samples_seen => {
                match columns == COLUMNS.len() {
                    true => kept.push_str(line),
                    false => kept.push_str(&format!("{},\n", line.trim_end())),
                }
                rows.push(row);
            }
            Ok(_) => {}
            Err(error) => {
                // The damage may be NUL bytes or other control characters: not for a terminal.
                let error: String =
                    format!("{error:#}").chars().map(|c| if c.is_control() { '?' } else { c }).collect();
                return (kept, rows, Some(format!("{} line {} is damaged ({error})", path.display(), index + 2)));
            }
        }
    }
    (kept, rows, None)
}

/// The number of columns the log's lines hold: all of them, or an older log's.
fn check_header(path: &Path, first_line: Option<&str>) -> Result<usize> {
    let expected_header = COLUMNS.join(",");
    match first_line.map(str::trim_end) {
        Some(header) if header == expected_header => Ok(COLUMNS.len()),
        Some(header) if header == COLUMNS[..OLDER_COLUMNS].join(",") => Ok(OLDER_COLUMNS),
        Some(header) => bail!("{} line 1: expected the header `{expected_header}`, found `{header}`", path.display()),
        None => bail!("{} is empty: expected the header `{expected_header}`", path.display()),
    }
}

/// A line of a log whose lines hold the first `columns` of [`COLUMNS`].
fn parse_row(line: &str, columns: usize) -> Result<MetricsRow> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != columns {
        bail!("expected {columns} comma-separated fields, found {}: `{line}`", fields.len());
    }
    let optional = |index: usize| fields.get(index).map_or(Ok(None), |text| parse_optional(COLUMNS[index], text));
    Ok(MetricsRow {
        samples_seen: parse_field(COLUMNS[0], fields[0])?,
        epoch: parse_field(COLUMNS[1], fields[1])?,
        elapsed_seconds: parse_field(COLUMNS[2], fields[2])?,
        loss: parse_field(COLUMNS[3], fields[3])?,
        char_accuracy: optional(4)?,
        sequence_accuracy: optional(5)?,
        validation_loss: optional(6)?,
        validation_char_accuracy: optional(7)?,
        validation_sequence_accuracy: optional(8)?,
        gradient_norm: optional(9)?,
    })
}

fn parse_field<T: std::str::FromStr>(column: &str, text: &str) -> Result<T> {
    text.trim().parse().map_err(|_| anyhow::anyhow!("column {column}: `{text}` is not a valid number"))
}

fn parse_optional(column: &str, text: &str) -> Result<Option<f64>> {
    if text.trim().is_empty() { Ok(None) } else { parse_field(column, text).map(Some) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classification_row(samples_seen: u64) -> MetricsRow {
        MetricsRow {
            samples_seen,
            epoch: 1,
            elapsed_seconds: 12.345678901234,
            loss: 1.0 / 3.0,
            char_accuracy: Some(0.8125),
            sequence_accuracy: Some(0.1),
            validation_loss: None,
            validation_char_accuracy: None,
            validation_sequence_accuracy: None,
            gradient_norm: Some(0.75),
        }
    }

    #[test]
    fn round_trip_keeps_every_value_exactly() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let rows = vec![
            classification_row(3_200),
            MetricsRow {
                samples_seen: 75_000,
                epoch: 2,
                validation_loss: Some(0.25),
                validation_char_accuracy: Some(0.9),
                validation_sequence_accuracy: Some(0.0),
                ..classification_row(0)
            },
            // A regression task: no accuracies at all.
            MetricsRow {
                char_accuracy: None,
                sequence_accuracy: None,
                validation_loss: Some(1e-7),
                ..classification_row(u64::MAX)
            },
        ];
        let mut log = MetricsLog::create(&path).expect("create the log");
        for row in &rows {
            log.append(row).expect("append a row");
        }
        assert_eq!(read_metrics(&path).expect("read the log back"), rows);
    }

    #[test]
    fn appended_lines_are_on_disk_before_the_log_is_dropped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let mut log = MetricsLog::create(&path).expect("create the log");
        assert_eq!(read_metrics(&path).expect("a header-only log reads"), vec![]);
        log.append(&classification_row(32)).expect("append a row");
        assert_eq!(read_metrics(&path).expect("read while still open"), vec![classification_row(32)]);
        drop(log);
    }

    #[test]
    fn reopening_keeps_rows_up_to_the_checkpoint_and_appends_after_them() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let mut log = MetricsLog::create(&path).expect("create the log");
        for samples in [32, 64, 96] {
            log.append(&classification_row(samples)).expect("append a row");
        }
        drop(log);
        // A crash in the middle of a line leaves it without its newline.
        let mut text = std::fs::read_to_string(&path).expect("read the log");
        text.push_str("128,1,0.5");
        std::fs::write(&path, text).expect("write a torn line");

        let (mut log, kept) = MetricsLog::reopen(&path, 64).expect("reopen after 64 samples");
        assert_eq!(kept, vec![classification_row(32), classification_row(64)], "the rows kept, parsed");
        log.append(&classification_row(96)).expect("append after resuming");
        let samples: Vec<u64> = read_metrics(&path).expect("read").iter().map(|row| row.samples_seen).collect();
        assert_eq!(samples, vec![32, 64, 96]);

        let missing = dir.path().join("new.csv");
        assert!(MetricsLog::reopen(&missing, 64).expect("a missing log is created").1.is_empty());
        assert_eq!(read_metrics(&missing).expect("a new log reads"), vec![]);

        // Damage does not cost the checkpoint: the log keeps its good rows before the damage.
        let good = std::fs::read_to_string(&path).expect("read the log");
        let damaged = good.replacen("\n64,", "\n\0\0,", 1);
        assert_ne!(damaged, good);
        std::fs::write(&path, damaged).expect("damage a row");
        drop(MetricsLog::reopen(&path, 96).expect("a damaged log is rebuilt"));
        let samples: Vec<u64> = read_metrics(&path).expect("read").iter().map(|row| row.samples_seen).collect();
        assert_eq!(samples, vec![32]);

        std::fs::write(&path, "step,loss\n1,2\n").expect("write a foreign csv");
        drop(MetricsLog::reopen(&path, 64).expect("a foreign header is rebuilt"));
        assert_eq!(read_metrics(&path).expect("read"), vec![]);
    }

    #[test]
    fn the_last_row_is_replaced_in_place_and_appending_goes_on_after_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let mut log = MetricsLog::create(&path).expect("create the log");
        let unscored = MetricsRow { validation_loss: None, ..classification_row(64) };
        for row in [classification_row(32), unscored] {
            log.append(&row).expect("append a row");
        }
        let error = log.replace_last(&classification_row(32)).expect_err("not the last row");
        assert!(format!("{error:#}").contains("does not end with the row after 32 samples"), "{error:#}");
        log.replace_last(&classification_row(64)).expect("replace the last row");
        log.append(&classification_row(96)).expect("append after it");
        let rows = read_metrics(&path).expect("read");
        assert_eq!(rows, [32, 64, 96].map(classification_row));

        let mut empty = MetricsLog::create(&dir.path().join("empty.csv")).expect("create");
        assert!(empty.replace_last(&classification_row(32)).is_err(), "a header is no row");
    }

    #[test]
    fn an_older_log_reads_without_gradient_norms_and_gains_the_column_on_resume() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let older = format!("{}\n32,1,0.5,2,0.25,0,,,\n64,1,1,1.5,0.5,0.125,1.25,0.5,0.25\n", COLUMNS[..9].join(","));
        std::fs::write(&path, &older).expect("write an older log");
        let rows = read_metrics(&path).expect("an older log reads");
        assert_eq!((rows.len(), rows[1].validation_sequence_accuracy, rows[1].gradient_norm), (2, Some(0.25), None));
        std::fs::write(&path, format!("{older}96,1,1.5,1,0.5,0.125,,,,\n")).expect("a row of the new width");
        assert!(format!("{:#}", read_metrics(&path).expect_err("mixed widths")).contains("line 4"));

        std::fs::write(&path, &older).expect("write an older log");
        let (mut log, kept) = MetricsLog::reopen(&path, 64).expect("resume an older run");
        assert_eq!(kept.iter().map(|row| row.gradient_norm).collect::<Vec<_>>(), vec![None, None]);
        log.append(&classification_row(96)).expect("append after resuming");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(&format!("{}\n32,1,0.5,2,0.25,0,,,,\n", COLUMNS.join(","))), "{text}");
        let rows = read_metrics(&path).expect("the rebuilt log reads");
        let norms: Vec<Option<f64>> = rows.iter().map(|row| row.gradient_norm).collect();
        assert_eq!(norms, vec![None, None, Some(0.75)]);
    }

    #[test]
    fn empty_fields_are_written_for_missing_values() {
        let line = format_row(&classification_row(64));
        assert!(line.ends_with(",0.8125,0.1,,,,0.75\n"), "{line}");
    }

    #[test]
    fn damaged_line_is_reported_with_file_and_line_number() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        let mut log = MetricsLog::create(&path).expect("create the log");
        log.append(&classification_row(32)).expect("append a row");
        log.append(&classification_row(64)).expect("append a row");
        let text = std::fs::read_to_string(&path).expect("read the log");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[2] = lines[2].replace(",0.8125,", ",0.81x5,");
        std::fs::write(&path, lines.join("\n")).expect("write the damaged log");

        let message = format!("{:#}", read_metrics(&path).expect_err("line 3 is damaged"));
        assert!(message.contains(&format!("{} line 3", path.display())), "{message}");
        assert!(message.contains("char_accuracy") && message.contains("0.81x5"), "{message}");
    }

    #[test]
    fn truncated_line_and_wrong_header_are_errors() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, format!("{}\n32,1,0.5", COLUMNS.join(","))).expect("write a truncated log");
        let message = format!("{:#}", read_metrics(&path).expect_err("line 2 is cut short"));
        assert!(message.contains("line 2") && message.contains("found 3"), "{message}");

        std::fs::write(&path, "step,loss\n").expect("write a foreign csv");
        let message = format!("{:#}", read_metrics(&path).expect_err("the header is wrong"));
        assert!(message.contains("line 1"), "{message}");

        let missing = dir.path().join("absent.csv");
        let message = format!("{:#}", read_metrics(&missing).expect_err("no file"));
        assert!(message.contains("absent.csv"), "{message}");
    }
}
