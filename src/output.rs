//! Standard output: the one place that writes to it. Commands return a [`Report`], which
//! [`render`] writes as text or JSON; what streams (predictions, encodings) goes through
//! [`Stdout`], and progress that the work must not depend on through [`BestEffort`]. A failed
//! write is an error that names standard output, never a panic, and a reader that went away (a
//! closed pipe) ends the command quietly.

use std::fmt;
use std::io::{self, Write};

use anyhow::Result;
use serde::Serialize;

/// A write to standard output that failed.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write to stdout: {}", plain_io_message(&self.0))
    }
}

impl std::error::Error for StdoutError {}

/// Prints `text` and a newline to standard output, flushed at once.
pub fn print_line(text: impl fmt::Display) -> Result<()> {
    write_line(text).map_err(|error| StdoutError(error).into())
}

fn write_line(text: impl fmt::Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush())
}

/// What a command found once its work is done, as data: [`render`] writes it for people as
/// text, or for programs as one JSON object (its `Serialize` form).
pub trait Report: Serialize {
    /// The text for people: one or more lines.
    fn text(&self) -> String;
}

/// Writes `report` to standard output: its JSON form when `json`, else its text.
pub fn render(report: &impl Report, json: bool) -> Result<()> {
    if json { print_line(serde_json::to_string(report)?) } else { print_line(report.text()) }
}

/// Standard output for commands that stream many lines (predict, encode, completions): each
/// failed write comes back as an `io::Error` of the same kind whose message names stdout.
pub struct Stdout(io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Self {
        Self(io::stdout().lock())
    }
}

fn labelled(error: io::Error) -> io::Error {
    io::Error::new(error.kind(), StdoutError(error))
}

impl Write for Stdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes).map_err(labelled)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(labelled)
    }
}

/// A message for the person at the terminal (warnings, notes) on standard error. A standard
/// error that cannot be written to has no one reading it, so its failures are ignored.
pub fn note(text: impl fmt::Display) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// Whether `error` is, at bottom, a write to a pipe whose reader has gone: the normal end of
/// `seq2seq ... | head`, not a failure.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io_error =
            cause.downcast_ref::<StdoutError>().map(|StdoutError(e)| e).or_else(|| cause.downcast_ref::<io::Error>());
        io_error.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// An I/O error's message without Rust's " (os error N)" suffix: `No space left on device`.
pub fn plain_io_message(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// `text` with its line breaks and tabs written `\n`, `\r` and `\t`, for output read one line
/// per answer and split at tabs (a CSV field may hold both); `--json` keeps the text exact.
pub fn on_one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\n', '\r', '\t']) {
        return text.into();
    }
    text.replace('\n', "\\n").replace('\r', "\\r").replace('\t', "\\t").into()
}

/// Progress lines that the work must not depend on: the first failed write silences every later
/// one (a full disk or a closed pipe stops the progress, not the training), and is kept so that
/// the command can report it once its work is safe.
#[derive(Debug, Default)]
pub struct BestEffort {
    failure: Option<io::Error>,
}

impl BestEffort {
    /// Prints `text` and a newline, unless an earlier line failed.
    pub fn line(&mut self, text: impl fmt::Display) {
        if self.failure.is_some() {
            return;
        }
        if let Err(error) = write_line(text) {
            self.failure = Some(error);
        }
    }

    /// The first failure, as an error; a closed pipe is no failure.
    pub fn finish(self) -> Result<()> {
        match self.failure {
            Some(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(StdoutError(error).into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_drop_the_os_error_number() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(plain_io_message(&full), "No space left on device");
        assert_eq!(StdoutError(full).to_string(), "cannot write to stdout: No space left on device");
        let custom = io::Error::other("odd (os error 5) in the middle");
        assert_eq!(plain_io_message(&custom), "odd (os error 5) in the middle");
    }

    #[test]
    fn line_breaks_and_tabs_are_shown_escaped_on_one_line() {
        assert_eq!(on_one_line("two\r\nlines\tand a tab"), "two\\r\\nlines\\tand a tab");
        assert!(matches!(on_one_line("plain"), std::borrow::Cow::Borrowed("plain")));
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let pipe: anyhow::Error = StdoutError(io::Error::from(io::ErrorKind::BrokenPipe)).into();
        assert!(is_closed_pipe(&pipe.context("while predicting")));
        let full: anyhow::Error = StdoutError(io::Error::from_raw_os_error(libc::ENOSPC)).into();
        assert!(!is_closed_pipe(&full));
        assert!(is_closed_pipe(&anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))));
    }
}
