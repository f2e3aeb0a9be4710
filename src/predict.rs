//! Batch prediction on user expressions: read lines, reject bad ones with their location,
//! answer the rest in batches, print in the reference's format or as JSON lines.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Tensor};

use crate::data::to_device;
use crate::model::Seq2Seq;
use crate::problem::ProblemConfig;
use crate::vocab::Alphabet;

/// Expressions predicted per forward pass unless the user says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Where expressions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    Arguments(Vec<String>),
    File(PathBuf),
    Stdin,
}

/// Counts of what happened to the inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictSummary {
    pub answered: usize,
    pub correct: usize,
    pub rejected: usize,
}

/// One answered expression, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonPrediction<'a> {
    input: &'a str,
    prediction: &'a str,
    expected: u64,
    correct: bool,
}

struct Pending {
    input: String,
    terms: Vec<u64>,
}

/// Predicts every expression of `source`, writing answers to `out` and one message per bad
/// line to `errors`. Bad lines do not stop the others.
pub struct Predictor<'a> {
    pub model: &'a Seq2Seq,
    pub problem: &'a ProblemConfig,
    pub alphabet: &'a Alphabet,
    pub device: Device,
    pub batch_size: usize,
    pub json: bool,
}

impl Predictor<'_> {
    pub fn run(&self, source: &InputSource, out: &mut dyn Write, errors: &mut dyn Write) -> Result<PredictSummary> {
        let mut run = Run { predictor: self, out, errors, pending: Vec::new(), summary: PredictSummary::default() };
        match source {
            InputSource::Arguments(arguments) => {
                for (number, argument) in arguments.iter().enumerate() {
                    run.push(&format!("argument {}", number + 1), Ok(argument))?;
                }
            }
            InputSource::File(path) => {
                let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                run.read_lines(BufReader::new(file), Some(path))?;
            }
            InputSource::Stdin => run.read_lines(io::stdin().lock(), None)?,
        }
        run.flush()?;
        Ok(run.summary)
    }

    /// The model's answer strings (padded, as decoded) for a batch of parsed expressions.
    fn predict_batch(&self, batch: &[Pending]) -> Vec<String> {
        let input_len = self.problem.input_len();
        let mut indices = Vec::with_capacity(batch.len() * input_len);
        for pending in batch {
            self.alphabet.encode_into(&self.problem.format_input(&pending.terms), &mut indices);
        }
        let inputs = to_device(Tensor::from_slice(&indices).view([batch.len() as i64, input_len as i64]), self.device);
        let predicted = tch::no_grad(|| self.model.forward_t(&inputs, false).argmax(-1, false));
        let output_len = self.problem.output_len();
        let flat = Vec::<i64>::try_from(predicted.flatten(0, -1).to_device(Device::Cpu))
            .expect("argmax yields int64 class indices");
        flat.chunks(output_len).map(|row| self.alphabet.decode(row)).collect()
    }
}

struct Run<'p, 'w> {
    predictor: &'p Predictor<'p>,
    out: &'w mut dyn Write,
    errors: &'w mut dyn Write,
    pending: Vec<Pending>,
    summary: PredictSummary,
}

impl Run<'_, '_> {
    /// Reads `reader` line by line as bytes, so that a line of invalid UTF-8 is one bad line.
    fn read_lines(&mut self, mut reader: impl BufRead, path: Option<&Path>) -> Result<()> {
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
            let text = std::str::from_utf8(&line).map_err(|_| "not valid UTF-8");
            self.push(&location, text)?;
        }
        Ok(())
    }

    fn push(&mut self, location: &str, text: Result<&str, &str>) -> Result<()> {
        let text = match text {
            Ok(text) => text,
            Err(reason) => return self.reject(location, "", reason),
        };
        match self.predictor.problem.parse_expression(text) {
            Ok(terms) => {
                self.pending.push(Pending { input: text.trim().to_owned(), terms });
                if self.pending.len() >= self.predictor.batch_size {
                    self.flush()?;
                }
                Ok(())
            }
            Err(error) => self.reject(location, text, &error.to_string()),
        }
    }

    fn reject(&mut self, location: &str, text: &str, reason: &str) -> Result<()> {
        self.summary.rejected += 1;
        let shown = text.trim_end_matches(['\n', '\r']);
        if shown.is_empty() {
            writeln!(self.errors, "{location}: {reason}")?;
        } else {
            writeln!(self.errors, "{location}: {reason}: {:?}", abbreviate(shown))?;
        }
        Ok(())
    }

    /// Predicts and prints the pending expressions, in input order.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let predictor = self.predictor;
        let predictions = predictor.predict_batch(&self.pending);
        for (pending, predicted) in self.pending.iter().zip(&predictions) {
            let answer = predictor.problem.answer(&pending.terms);
            let expected = predictor.problem.format_output(answer);
            let correct = *predicted == expected;
            self.summary.answered += 1;
            self.summary.correct += usize::from(correct);
            if predictor.json {
                let record =
                    JsonPrediction { input: &pending.input, prediction: predicted.trim(), expected: answer, correct };
                writeln!(self.out, "{}", serde_json::to_string(&record)?)?;
            } else {
                let input = predictor.problem.format_input(&pending.terms);
                writeln!(self.out, "{input} = {predicted} (expect {expected})")?;
            }
        }
        self.pending.clear();
        self.out.flush()?;
        Ok(())
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
