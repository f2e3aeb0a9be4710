//! Batch prediction on users' inputs: answers to expressions in the reference's format, or
//! reconstructions of sequences; plain text or JSON lines.

use std::io::Write;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, Scope};

use anyhow::{Result, anyhow};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::input::{InputSource, InputSummary, for_each_batch};
use crate::nn::model::Seq2Seq;
use crate::task::sequence::format_sequence;
use crate::task::{PairsProblem, Samples, Task};

/// Inputs predicted per forward pass unless the user says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Counts of what happened to the inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictSummary {
    /// Answered (accepted) and refused inputs.
    pub inputs: InputSummary,
    /// Expressions answered exactly right (arithmetic only).
    pub correct: usize,
}

/// One answered expression, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonAnswer<'a> {
    input: &'a str,
    prediction: &'a str,
    expected: i128,
    correct: bool,
    /// With `--verbose`: the probability of each written character, padding included.
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f64]>,
}

/// One answered source of a model of pairs, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonTranslation<'a> {
    input: &'a str,
    prediction: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correct: Option<bool>,
}

/// One reconstructed sequence, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonReconstruction<'a> {
    input: &'a [f32],
    reconstruction: &'a [f32],
    max_abs_error: f32,
}

/// Predicts every input of a source with one model.
pub struct Predictor<'a> {
    pub model: &'a Seq2Seq,
    pub task: &'a Task,
    pub device: Device,
    pub batch_size: usize,
    /// How answers are written.
    pub style: AnswerStyle,
    /// CPU threads that each answer a share of every batch (see [`SharedAnswers`]).
    pub workers: usize,
}

/// How answers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerStyle {
    pub json: bool,
    /// Arithmetic: also show the probability the model gave each character it wrote.
    pub verbose: bool,
}

/// Fewer rows than this per worker are not worth a thread.
const MIN_ROWS_PER_WORKER: usize = 32;

/// The answers to some rows: their text and how many were right.
type Answered = Result<(Vec<u8>, usize)>;

/// Answers each batch with its rows shared among threads: this one and helpers that live as
/// long as the value, each running the whole network on its rows with one libtorch thread and
/// writing their answers, so that the text too is made in parallel. The shares' texts are
/// written in row order.
///
/// On the CPU this scales better than libtorch's own threads, which split each op in two: the
/// reference model's ops are small, and half of its time is the cell arithmetic in
/// [`crate::nn::cell`], which libtorch's threads do not share.
struct SharedAnswers<'t> {
    /// One (rows in, answers back) pair per helper thread.
    helpers: Vec<(Sender<Samples<'t>>, Receiver<Answered>)>,
}

impl<'t> SharedAnswers<'t> {
    /// Starts `helpers` threads in `scope`, each with its own handle on the weights (tensors may
    /// move between threads but not be shared). They end when the value is dropped.
    fn start<'scope>(scope: &'scope Scope<'scope, '_>, predictor: &'scope Predictor<'_>, helpers: usize) -> Self
    where
        't: 'scope,
    {
        let helpers = (0..helpers)
            .map(|_| {
                let (rows_in, rows) = mpsc::channel::<Samples<'t>>();
                let (answers, answers_back) = mpsc::channel();
                let replica = predictor.model.replica();
                let (device, style) = (predictor.device, predictor.style);
                scope.spawn(move || {
                    // OpenMP's thread count is per thread: a new one starts at every core.
                    tch::set_num_threads(1);
                    for share in rows {
                        if answers.send(answer(&replica, &share, device, style)).is_err() {
                            break;
                        }
                    }
                });
                (rows_in, answers_back)
            })
            .collect();
        Self { helpers }
    }

    /// Answers `batch` with the predictor's model and the helpers; returns how many answers were
    /// right.
    fn answer(&self, batch: &Samples<'t>, predictor: &Predictor<'_>, out: &mut dyn Write) -> Result<usize> {
        let shares = share_ranges(batch.len(), self.helpers.len() + 1);
        let helpers = &self.helpers[..shares.len() - 1];
        for ((rows_in, _), range) in helpers.iter().zip(&shares[1..]) {
            rows_in.send(batch.range(range.clone())).map_err(|_| anyhow!("a prediction thread stopped"))?;
        }
        let (model, device, style) = (predictor.model, predictor.device, predictor.style);
        let (text, mut correct) = match helpers {
            [] => answer(model, batch, device, style)?,
            _ => answer(model, &batch.range(shares[0].clone()), device, style)?,
        };
        out.write_all(&text)?;
        for (_, answers_back) in helpers {
            let (text, right) = answers_back.recv().map_err(|_| anyhow!("a prediction thread stopped"))??;
            out.write_all(&text)?;
            correct += right;
        }
        Ok(correct)
    }
}

/// How `rows` are split among at most `workers` threads: as `Tensor::chunk` splits them (shares
/// of `ceil(rows / shares)`, the last one shorter), none under [`MIN_ROWS_PER_WORKER`] rows.
fn share_ranges(rows: usize, workers: usize) -> Vec<Range<usize>> {
    let shares = workers.min(rows / MIN_ROWS_PER_WORKER).max(1);
    let size = rows.div_ceil(shares).max(1);
    (0..rows).step_by(size).map(|start| start..(start + size).min(rows)).collect()
}

impl Predictor<'_> {
    /// Writes one answer per good input to `out`, one message per bad one to `errors`.
    pub fn run(&self, source: &InputSource, out: &mut dyn Write, errors: &mut dyn Write) -> Result<PredictSummary> {
        let mut correct = 0;
        // A GPU runs a whole batch at once.
        let helpers = if self.device == Device::Cpu { self.workers.saturating_sub(1) } else { 0 };
        let inputs = thread::scope(|scope| {
            let shared = SharedAnswers::start(scope, self, helpers);
            for_each_batch(source, self.task, self.batch_size, errors, |batch| {
                correct += shared.answer(batch, self, out)?;
                out.flush()?;
                Ok(())
            })
        })?;
        Ok(PredictSummary { inputs, correct })
    }
}

/// Runs `model` on `samples` and writes their answers; returns the text and how many were right.
fn answer(model: &Seq2Seq, samples: &Samples<'_>, device: Device, style: AnswerStyle) -> Answered {
    let output = model.forward(&samples.input_tensor(device));
    let mut out = Vec::new();
    let correct = write_answers(samples, &output, style, &mut out)?;
    Ok((out, correct))
}

/// Writes the answer of each sample from the model's `output` for them; returns how many were
/// right.
fn write_answers(batch: &Samples<'_>, output: &Tensor, style: AnswerStyle, out: &mut dyn Write) -> Result<usize> {
    let AnswerStyle { json, verbose } = style;
    let mut correct = 0;
    match batch {
        Samples::Arithmetic(problem, expressions) => {
            let alphabet = problem.alphabet();
            let predicted = output.argmax(-1, true);
            let probabilities = if verbose {
                let chosen = output.softmax(-1, Kind::Double).gather(-1, &predicted, false);
                Vec::<f64>::try_from(chosen.flatten(0, -1).to_device(Device::Cpu)).expect("softmax in double precision")
            } else {
                Vec::new()
            };
            let predicted = predicted.flatten(0, -1).to_device(Device::Cpu);
            let flat = Vec::<i64>::try_from(predicted).expect("argmax yields int64 class indices");
            let output_len = problem.output_len();
            let format_output = problem.output_formatter();
            for (index, (expression, row)) in expressions.iter().zip(flat.chunks(output_len)).enumerate() {
                // In reading order, as the answer is shown.
                let row_probabilities =
                    probabilities.get(index * output_len..(index + 1) * output_len).map(|p| problem.as_read_order(p));
                let predicted = problem.as_read(alphabet.decode(row));
                let value = expression.value();
                let expected = format_output(value);
                let is_correct = predicted == expected;
                correct += usize::from(is_correct);
                if json {
                    let answer = JsonAnswer {
                        input: &expression.to_string(),
                        prediction: predicted.trim(),
                        expected: value,
                        correct: is_correct,
                        probabilities: row_probabilities.as_deref(),
                    };
                    writeln!(out, "{}", serde_json::to_string(&answer)?)?;
                } else {
                    write!(out, "{} = {predicted} (expect {expected})", problem.display_input(expression))?;
                    if let Some(row_probabilities) = &row_probabilities {
                        let shown: Vec<String> = predicted
                            .chars()
                            .zip(row_probabilities)
                            .map(|(symbol, probability)| format!("'{symbol}' {probability:.2}"))
                            .collect();
                        write!(out, "  [{}]", shown.join(", "))?;
                    }
                    writeln!(out)?;
                }
            }
        }
        Samples::Pairs(problem, pairs) => {
            let written = output.argmax(-1, false).flatten(0, -1).to_device(Device::Cpu);
            let written = Vec::<i64>::try_from(written).expect("argmax yields int64 class indices");
            for (pair, row) in pairs.iter().zip(written.chunks(problem.output_len())) {
                let ids = problem.written(row);
                let prediction = problem.target_text(ids);
                let expected = pair.expected.as_ref();
                let is_correct = expected.map(|(_, truth)| PairsProblem::is_right(ids, truth));
                correct += usize::from(is_correct == Some(true));
                if json {
                    let answer = JsonTranslation {
                        input: &pair.text,
                        prediction: &prediction,
                        expected: expected.map(|(text, _)| text.as_str()),
                        correct: is_correct,
                    };
                    writeln!(out, "{}", serde_json::to_string(&answer)?)?;
                } else {
                    match (expected, is_correct) {
                        (Some((text, _)), Some(right)) => {
                            let verdict = if right { "right" } else { "wrong" };
                            writeln!(out, "{}\t{prediction}\t(expect {text}: {verdict})", pair.text)?;
                        }
                        _ => writeln!(out, "{}\t{prediction}", pair.text)?,
                    }
                }
            }
        }
        Samples::Sequences(problem, sequences) => {
            let flat = Vec::<f32>::try_from(output.flatten(0, -1).to_device(Device::Cpu))
                .expect("the autoencoder writes float values");
            for (values, reconstruction) in sequences.iter().zip(flat.chunks(problem.length)) {
                if json {
                    let max_abs_error =
                        values.iter().zip(reconstruction).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    let record = JsonReconstruction { input: values, reconstruction, max_abs_error };
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                } else {
                    writeln!(out, "{}", format_sequence(reconstruction))?;
                }
            }
        }
    }
    Ok(correct)
}
