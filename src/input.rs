//! Users' inputs for `predict` and `encode`: read from arguments, a file or standard input,
//! parsed for the model's task, refused with their location when bad, and handed on in batches.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::problem::{Input, Task};

/// Where inputs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    Arguments(Vec<String>),
    File(PathBuf),
    Stdin,
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
pub fn for_each_batch(
    source: &InputSource,
    task: &Task,
    batch_size: usize,
    errors: &mut dyn Write,
    mut on_batch: impl FnMut(&[Input]) -> Result<()>,
) -> Result<InputSummary> {
    let mut summary = InputSummary::default();
    let mut pending: Vec<Input> = Vec::with_capacity(batch_size.min(1 << 16));
    let mut each = |location: &str, text: Result<&str, &str>| -> Result<()> {
        let parsed = match text {
            Ok(text) => task.parse_input(text).map_err(|error| (text, error.to_string())),
            Err(reason) => Err(("", reason.to_owned())),
        };
        match parsed {
            Ok(input) => {
                summary.accepted += 1;
                pending.push(input);
                if pending.len() >= batch_size {
                    on_batch(&pending)?;
                    pending.clear();
                }
            }
            Err((text, reason)) => {
                summary.rejected += 1;
                let shown = text.trim_end_matches(['\n', '\r']);
                if shown.trim().is_empty() {
                    writeln!(errors, "{location}: {reason}")?;
                } else {
                    writeln!(errors, "{location}: {reason}: {:?}", abbreviate(shown))?;
                }
            }
        }
        Ok(())
    };
    match source {
        InputSource::Arguments(arguments) => {
            for (number, argument) in arguments.iter().enumerate() {
                each(&format!("argument {}", number + 1), Ok(argument))?;
            }
        }
        InputSource::File(path) => {
            let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            read_lines(BufReader::new(file), Some(path), &mut each)?;
        }
        InputSource::Stdin => read_lines(io::stdin().lock(), None, &mut each)?,
    }
    if !pending.is_empty() {
        on_batch(&pending)?;
    }
    Ok(summary)
}

/// Reads `reader` line by line as bytes, so that a line of invalid UTF-8 is one bad line.
fn read_lines(
    mut reader: impl BufRead,
    path: Option<&Path>,
    each: &mut impl FnMut(&str, Result<&str, &str>) -> Result<()>,
) -> Result<()> {
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).with_context(|| match path {
            Some(path) => format!("cannot read {}", path.display()),
            None => "cannot read standard input".to_owned(),
        })?;
        if read == 0 {
            break;
        }
        let location = match path {
            Some(path) => format!("{}:{number}", path.display()),
            None => format!("line {number}"),
        };
        each(&location, std::str::from_utf8(&line).map_err(|_| "not valid UTF-8"))?;
    }
    Ok(())
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
