//! Batch prediction on users' inputs: answers to expressions in the reference's format, or
//! reconstructions of sequences; plain text or JSON lines.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind};

use crate::data::input_tensor;
use crate::input::{InputSource, InputSummary, for_each_batch};
use crate::model::Seq2Seq;
use crate::problem::sequence::format_sequence;
use crate::problem::{Input, Task};

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
    pub json: bool,
    /// Arithmetic: also show the probability the model gave each character it wrote.
    pub verbose: bool,
}

impl Predictor<'_> {
    /// Writes one answer per good input to `out`, one message per bad one to `errors`.
    pub fn run(&self, source: &InputSource, out: &mut dyn Write, errors: &mut dyn Write) -> Result<PredictSummary> {
        let mut correct = 0;
        let inputs = for_each_batch(source, self.task, self.batch_size, errors, |batch| {
            correct += self.predict_batch(batch, out)?;
            out.flush()?;
            Ok(())
        })?;
        Ok(PredictSummary { inputs, correct })
    }

    /// Predicts and prints one batch; returns how many answers were right.
    fn predict_batch(&self, batch: &[Input], out: &mut dyn Write) -> Result<usize> {
        let inputs = input_tensor(self.task, batch, self.device);
        let output = self.model.forward(&inputs);
        let mut correct = 0;
        match self.task {
            Task::Arithmetic(problem) => {
                let alphabet = problem.alphabet();
                let predicted = output.argmax(-1, true);
                let probabilities = if self.verbose {
                    let chosen = output.softmax(-1, Kind::Double).gather(-1, &predicted, false);
                    Vec::<f64>::try_from(chosen.flatten(0, -1).to_device(Device::Cpu))
                        .expect("softmax in double precision")
                } else {
                    Vec::new()
                };
                let predicted = predicted.flatten(0, -1).to_device(Device::Cpu);
                let flat = Vec::<i64>::try_from(predicted).expect("argmax yields int64 class indices");
                let output_len = problem.output_len();
                let format_output = problem.output_formatter();
                for (index, (input, row)) in batch.iter().zip(flat.chunks(output_len)).enumerate() {
                    let row_probabilities = probabilities.get(index * output_len..(index + 1) * output_len);
                    let Input::Expression(expression) = input else {
                        unreachable!("arithmetic inputs are expressions")
                    };
                    let predicted = alphabet.decode(row);
                    let value = expression.value();
                    let expected = format_output(value);
                    let is_correct = predicted == expected;
                    correct += usize::from(is_correct);
                    if self.json {
                        let answer = JsonAnswer {
                            input: &expression.to_string(),
                            prediction: predicted.trim(),
                            expected: value,
                            correct: is_correct,
                            probabilities: row_probabilities,
                        };
                        writeln!(out, "{}", serde_json::to_string(&answer)?)?;
                    } else {
                        write!(out, "{} = {predicted} (expect {expected})", problem.display_input(expression))?;
                        if let Some(row_probabilities) = row_probabilities {
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
            Task::Autoencoder(problem) => {
                let flat = Vec::<f32>::try_from(output.flatten(0, -1).to_device(Device::Cpu))
                    .expect("the autoencoder writes float values");
                for (input, reconstruction) in batch.iter().zip(flat.chunks(problem.length)) {
                    let Input::Sequence(values) = input else { unreachable!("autoencoder inputs are sequences") };
                    if self.json {
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
}
