//! Scoring a model. Characters: loss, per-character and whole-sequence (exact-match) accuracy,
//! and accuracy per operator. Values: mean squared error and the largest absolute error.

pub mod mistakes;
pub mod pair_mistakes;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::corpus::ErrorRate;
use crate::data::{Batch, BatchStream};
use crate::nn::feedback::Hypothesis;
use crate::nn::model::Seq2Seq;
use crate::task::pairs::IGNORED;
use crate::task::{Features, Operator, PairsProblem, Samples, Task};

/// Samples scored after training and by `evaluate` unless the user says otherwise.
pub const DEFAULT_EVALUATION_SAMPLES: usize = 10_000;

/// Scores over a number of samples. Accuracies belong to character tasks, the largest error to
/// the autoencoder; the other kind is `None` and left out of JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean categorical cross-entropy per output character, or mean squared error per value.
    pub loss: f64,
    /// Fraction of output characters predicted right (what Keras calls accuracy here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub char_accuracy: Option<f64>,
    /// Fraction of samples whose every output character is right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_accuracy: Option<f64>,
    /// Largest absolute difference between a value and its reconstruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    pub samples: usize,
}

impl Metrics {
    /// One line for people: `loss 0.0123, character accuracy 99.1%, ...`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.char_accuracy, self.sequence_accuracy, self.max_abs_error) {
            (Some(chars), Some(sequences), _) => {
                parts.push(format!("loss {:.4}", self.loss));
                parts.push(format!("character accuracy {:.2}%", 100.0 * chars));
                parts.push(format!("sequence accuracy {:.2}%", 100.0 * sequences));
            }
            (_, _, Some(max_abs_error)) => {
                parts.push(format!("mean squared error {:.3e}", self.loss));
                parts.push(format!("max absolute error {max_abs_error:.4}"));
            }
            _ => parts.push(format!("loss {:.4}", self.loss)),
        }
        parts.join(", ")
    }

    /// The figures of the samples counted here but not in `earlier`, a previous reading of the
    /// same running sums. The largest error cannot be split: it stays the one over all samples.
    pub fn since(&self, earlier: &Metrics) -> Metrics {
        if earlier.samples == 0 || earlier.samples >= self.samples {
            return *self;
        }
        let (now, before) = (self.samples as f64, earlier.samples as f64);
        // The difference of two rounded products can fall an ulp below the figures' least
        // (one right answer in 3,325,056, then none in the next 174,944: -6e-22).
        let mean_of_new = |total: f64, previous: f64| ((total * now - previous * before) / (now - before)).max(0.0);
        let both = |total: Option<f64>, previous: Option<f64>| Some(mean_of_new(total?, previous?).min(1.0));
        Metrics {
            loss: mean_of_new(self.loss, earlier.loss),
            char_accuracy: both(self.char_accuracy, earlier.char_accuracy),
            sequence_accuracy: both(self.sequence_accuracy, earlier.sequence_accuracy),
            max_abs_error: self.max_abs_error,
            samples: self.samples - earlier.samples,
        }
    }
}

/// Running sums kept on the device, so that a training step never waits for a read-back;
/// [`MetricSums::read`] is the one place that synchronises.
///
/// A step only records its predictions and weighted loss (a few small ops); they are compared
/// with the targets in one go every `FOLD_EVERY` batches, which costs far fewer op dispatches
/// than scoring each small batch on its own.
pub struct MetricSums {
    features: Features,
    /// A target class that no answer matches (see [`Task::never_right_class`]).
    never_right: Option<i64>,
    weighted_loss: Tensor,
    correct_chars: Tensor,
    correct_sequences: Tensor,
    /// Output steps scored: every step, less the [`IGNORED`] ones after a target's end.
    counted_chars: Tensor,
    max_abs_error: Tensor,
    pending_predictions: Vec<Tensor>,
    pending_targets: Vec<Tensor>,
    pending_losses: Vec<Tensor>,
    samples: usize,
    /// Batches recorded so far, and the first whose loss was not finite (0-based).
    batches: usize,
    first_non_finite_batch: Option<usize>,
}

/// Batches recorded before they are scored together.
const FOLD_EVERY: usize = 50;

impl MetricSums {
    pub fn new(device: Device, features: Features) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Self {
            features,
            never_right: None,
            weighted_loss: zero(),
            correct_chars: zero(),
            correct_sequences: zero(),
            counted_chars: zero(),
            max_abs_error: zero(),
            pending_predictions: Vec::with_capacity(FOLD_EVERY),
            pending_targets: Vec::with_capacity(FOLD_EVERY),
            pending_losses: Vec::with_capacity(FOLD_EVERY),
            samples: 0,
            batches: 0,
            first_non_finite_batch: None,
        }
    }

    /// Scores the targets of `task`'s [`Task::never_right_class`] as wrong whatever is written.
    pub fn for_task(mut self, task: &Task) -> Self {
        self.never_right = task.never_right_class();
        self
    }

    /// Adds one batch: the model's `output`, the `targets` and the batch's mean `loss`.
    pub fn add(&mut self, output: &Tensor, targets: &Tensor, loss: &Tensor, batch_size: usize) {
        match self.features {
            Features::Classes(_) => self.add_written(&output.argmax(-1, false), targets, loss, batch_size),
            Features::Value => {
                let largest = tch::no_grad(|| (output - targets).abs().max());
                self.add_pending(largest, loss, batch_size);
            }
        }
    }

    /// Adds one batch of a class task by the ids written for it (`[batch, steps]`: the output's
    /// argmax, or a beam's best answer), the `targets` and the batch's mean `loss`.
    pub fn add_written(&mut self, written: &Tensor, targets: &Tensor, loss: &Tensor, batch_size: usize) {
        self.pending_targets.push(targets.shallow_clone());
        self.add_pending(written.shallow_clone(), loss, batch_size);
    }

    fn add_pending(&mut self, prediction: Tensor, loss: &Tensor, batch_size: usize) {
        self.pending_predictions.push(prediction);
        self.pending_losses.push(tch::no_grad(|| loss.detach() * batch_size as f64));
        self.samples += batch_size;
        self.batches += 1;
        if self.pending_losses.len() >= FOLD_EVERY {
            self.fold();
        }
    }

    /// Scores the recorded batches into the running sums (still on the device).
    fn fold(&mut self) {
        if self.pending_losses.is_empty() {
            return;
        }
        tch::no_grad(|| {
            match self.features {
                Features::Classes(_) => {
                    let targets = Tensor::cat(&self.pending_targets, 0);
                    let mut correct = Tensor::cat(&self.pending_predictions, 0).eq_tensor(&targets);
                    if let Some(class) = self.never_right {
                        correct = correct.logical_and(&targets.ne(class));
                    }
                    let counted = targets.ne(IGNORED);
                    self.correct_chars += correct.logical_and(&counted).sum(Kind::Double);
                    self.counted_chars += counted.sum(Kind::Double);
                    // A sequence is right when every counted step is.
                    self.correct_sequences +=
                        correct.logical_or(&counted.logical_not()).all_dim(1, false).sum(Kind::Double);
                }
                Features::Value => {
                    let largest = Tensor::stack(&self.pending_predictions, 0).max().to_kind(Kind::Double);
                    self.max_abs_error = self.max_abs_error.maximum(&largest);
                }
            }
            let losses = Tensor::stack(&self.pending_losses, 0);
            self.weighted_loss += losses.sum(Kind::Double);
            if self.first_non_finite_batch.is_none() {
                // One read-back per fold, which happens at the training loop's read-backs anyway.
                let finite = Vec::<bool>::try_from(losses.isfinite().to_device(Device::Cpu)).expect("bools");
                if let Some(offset) = finite.iter().position(|&ok| !ok) {
                    self.first_non_finite_batch = Some(self.batches - self.pending_losses.len() + offset);
                }
            }
        });
        self.pending_predictions.clear();
        self.pending_targets.clear();
        self.pending_losses.clear();
    }

    /// The first recorded batch (0-based) whose loss was NaN or infinite, up to the last read.
    pub fn first_non_finite_batch(&self) -> Option<usize> {
        self.first_non_finite_batch
    }

    /// The means so far (reads the device).
    pub fn read(&mut self) -> Metrics {
        self.fold();
        let samples = self.samples.max(1) as f64;
        let is_classes = matches!(self.features, Features::Classes(_));
        Metrics {
            loss: self.weighted_loss.double_value(&[]) / samples,
            char_accuracy: is_classes
                .then(|| self.correct_chars.double_value(&[]) / self.counted_chars.double_value(&[]).max(1.0)),
            sequence_accuracy: is_classes.then(|| self.correct_sequences.double_value(&[]) / samples),
            max_abs_error: (!is_classes).then(|| self.max_abs_error.double_value(&[])),
            samples: self.samples,
        }
    }
}

/// Sequence accuracy over the samples whose expression uses one operator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OperatorAccuracy {
    pub operator: char,
    pub samples: usize,
    pub sequence_accuracy: f64,
}

/// What `evaluate` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Arithmetic with more than one operator: one entry per operator of the problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_operator: Vec<OperatorAccuracy>,
    /// Pairs: Levenshtein edits from the written target to the true one, over the true one's
    /// tokens (the character error rate for characters, the word or phoneme error rate for words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_error_rate: Option<f64>,
}

/// A batch as the model answered it: the output its loss is computed on and, for a task of
/// classes, the ids written (the output's argmax, or the best answer of a beam).
pub struct Answers {
    /// The model's output `[batch, steps, width]`.
    pub output: Tensor,
    /// Class ids `[batch, steps]`; `None` for values.
    pub written: Option<Tensor>,
    /// A beam's probability of each written id given the ones before it, `[batch, steps]`
    /// (double); `None` where they are the output's own.
    searched: Option<Tensor>,
}

impl Answers {
    /// The greedy answers in `output`: its most probable class at every step.
    pub fn greedy(output: Tensor, features: Features) -> Answers {
        let written = matches!(features, Features::Classes(_)).then(|| output.argmax(-1, false));
        Answers { output, written, searched: None }
    }

    /// The best answer of a beam `width` wide to each row of `inputs` (for models that search
    /// beams), searched `rows` inputs at a time, with the greedy decode's output for the loss,
    /// so that the loss is the same figure as without a beam.
    pub fn beam(model: &Seq2Seq, inputs: &Tensor, width: usize, rows: usize) -> Option<Answers> {
        let mut answers = Vec::new();
        for part in inputs.split(rows.max(1) as i64, 0) {
            answers.extend(model.beam(&part, width)?);
        }
        let output = model.forward(inputs);
        let (rows, steps) = (answers.len() as i64, model.shape().output_len as i64);
        let (ids, chances) = Hypothesis::best_of(&answers);
        let device = output.device();
        Some(Answers {
            written: Some(Tensor::from_slice(&ids).view([rows, steps]).to_device(device)),
            searched: Some(Tensor::from_slice(&chances).view([rows, steps]).to_device(device)),
            output,
        })
    }

    /// The probability the model gave each written id, `[batch, steps]` in double precision.
    pub fn probabilities(&self) -> Tensor {
        if let Some(searched) = &self.searched {
            return searched.shallow_clone();
        }
        let written = self.ids().unsqueeze(-1);
        self.output.softmax(-1, Kind::Double).gather(-1, &written, false).squeeze_dim(-1)
    }

    /// The written ids, for a task of classes.
    pub fn ids(&self) -> &Tensor {
        self.written.as_ref().expect("a task of classes writes ids")
    }
}

/// Which answers are scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// The most probable class at every step.
    Greedy,
    /// The best answer of a beam `width` wide, searched `rows` inputs at a time.
    Beam { width: usize, rows: usize },
}

/// Scores `model` on every batch of `data`, without gradients and with dropout off.
pub fn evaluate(model: &Seq2Seq, data: &BatchStream) -> Evaluation {
    evaluate_observed(model, data, Choice::Greedy, |_, _| {}).expect("a plain forward pass cannot fail")
}

/// [`evaluate`] of the answers `choice` picks, handing each batch and the model's answers to it
/// to `observe` as well, so that further analyses need no second pass.
pub fn evaluate_observed(
    model: &Seq2Seq,
    data: &BatchStream,
    choice: Choice,
    observe: impl FnMut(&Batch, &Answers),
) -> anyhow::Result<Evaluation> {
    let features = model.shape().output;
    let answer = |inputs: &Tensor| match choice {
        Choice::Greedy => Ok(Answers::greedy(model.forward(inputs), features)),
        Choice::Beam { width, rows } => {
            Answers::beam(model, inputs, width, rows).ok_or_else(|| anyhow::anyhow!("this model searches no beam"))
        }
    };
    evaluate_by(model, &answer, data, observe)
}

/// [`evaluate_observed`] with the model's answers from `answer` (a pass shared among threads,
/// say), which may fail.
pub fn evaluate_by(
    model: &Seq2Seq,
    answer: &dyn Fn(&Tensor) -> anyhow::Result<Answers>,
    data: &BatchStream,
    observe: impl FnMut(&Batch, &Answers),
) -> anyhow::Result<Evaluation> {
    evaluate_batches(model, answer, data, data.iter(), observe)
}

/// [`evaluate_by`] on `batches` of `data` made earlier: a training run scores the same
/// validation batches at every `metrics.csv` row, and makes them once.
pub fn evaluate_batches<'b>(
    model: &Seq2Seq,
    answer: &dyn Fn(&Tensor) -> anyhow::Result<Answers>,
    data: &BatchStream,
    batches: impl IntoIterator<Item = impl std::borrow::Borrow<Batch<'b>>>,
    mut observe: impl FnMut(&Batch, &Answers),
) -> anyhow::Result<Evaluation> {
    let shape = model.shape();
    let mut sums = MetricSums::new(data.device(), shape.output).for_task(data.task());
    // The breakdown says something only when there is more than one operator.
    let operators: Vec<Operator> = match data.task() {
        Task::Arithmetic(problem) if problem.operators.iter().count() > 1 => problem.operators.iter().collect(),
        _ => Vec::new(),
    };
    // (samples, correct) per operator.
    let mut tallies = vec![(0usize, 0usize); operators.len()];
    let pairs = match data.task() {
        Task::Pairs(problem) => Some(problem),
        _ => None,
    };
    let mut errors = ErrorRate::default();
    tch::no_grad(|| -> anyhow::Result<()> {
        for batch in batches {
            let batch = batch.borrow();
            // A training run's stop signal cuts its final evaluation short (the caller checks).
            if crate::train::interrupt::requested().is_some() {
                break;
            }
            let answers = answer(&batch.inputs)?;
            let loss = model.loss(&answers.output, &batch.targets);
            match &answers.written {
                Some(written) => sums.add_written(written, &batch.targets, &loss, batch.size),
                None => sums.add(&answers.output, &batch.targets, &loss, batch.size),
            }
            observe(batch, &answers);
            if let Some(problem) = pairs {
                add_edits(problem, answers.ids(), &batch.targets, &mut errors);
            }
            if operators.is_empty() {
                continue;
            }
            let correct = answers.ids().eq_tensor(&batch.targets).all_dim(1, false);
            let correct = Vec::<bool>::try_from(correct.to_device(Device::Cpu)).expect("a bool per sample");
            let Samples::Arithmetic(_, expressions) = &batch.samples else { continue };
            for (expression, is_correct) in expressions.iter().zip(correct) {
                for (tally, &op) in tallies.iter_mut().zip(&operators) {
                    if expression.uses(op) {
                        tally.0 += 1;
                        tally.1 += usize::from(is_correct);
                    }
                }
            }
        }
        Ok(())
    })?;
    let by_operator = operators
        .iter()
        .zip(tallies)
        .map(|(op, (samples, correct))| OperatorAccuracy {
            operator: op.symbol(),
            samples,
            sequence_accuracy: correct as f64 / samples.max(1) as f64,
        })
        .collect();
    let token_error_rate = pairs.map(|_| errors.rate());
    Ok(Evaluation { metrics: sums.read(), by_operator, token_error_rate })
}

/// The edits of each written target (up to its end marker) from the true one; a true `<unk>`
/// (a token the model cannot write) matches nothing written.
fn add_edits(problem: &PairsProblem, written: &Tensor, targets: &Tensor, errors: &mut ErrorRate) {
    let width = problem.output_len();
    let written = Vec::<i64>::try_from(written.flatten(0, -1).to_device(Device::Cpu)).expect("int64 class ids");
    let truth = Vec::<i64>::try_from(targets.flatten(0, -1).to_device(Device::Cpu)).expect("int64 targets");
    let ids = |row: &[i64]| row.iter().map(|&id| id as u32).collect::<Vec<u32>>();
    let unwritable = |row: &[i64]| row.iter().map(|&id| PairsProblem::truth_id(id as u32)).collect::<Vec<u32>>();
    for (written, truth) in written.chunks(width).zip(truth.chunks(width)) {
        errors.add(&ids(problem.written(written)), &unwritable(problem.written(truth)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_and_whole_sequences() {
        // Two samples of two characters over three classes: the first fully right,
        // the second right in its first character only.
        let logits = Tensor::from_slice(&[9.0f32, 0., 0., 0., 9., 0., 0., 0., 9., 9., 0., 0.]).view([2, 2, 3]);
        let targets = Tensor::from_slice(&[0i64, 1, 2, 1]).view([2, 2]);
        let mut sums = MetricSums::new(Device::Cpu, Features::Classes(3));
        sums.add(&logits, &targets, &Tensor::from(0.5f32), 2);
        // A second batch, one sample with both characters wrong, scored in the same fold.
        let wrong = Tensor::from_slice(&[0.0f32, 9., 0., 0., 0., 9.]).view([1, 2, 3]);
        sums.add(&wrong, &Tensor::from_slice(&[0i64, 0]).view([1, 2]), &Tensor::from(2.0f32), 1);
        let metrics = sums.read();
        assert_eq!(metrics.samples, 3);
        assert_eq!(metrics.char_accuracy, Some(3.0 / 6.0));
        assert_eq!(metrics.sequence_accuracy, Some(1.0 / 3.0));
        assert_eq!(metrics.max_abs_error, None);
        // Weighted by batch size: (0.5 * 2 + 2.0 * 1) / 3.
        assert!((metrics.loss - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_target_the_model_cannot_write_is_never_right() {
        // Class 1 stands for tokens the vocabulary lacks: writing it matches none of them.
        let written = Tensor::from_slice(&[2i64, 1, 2, 2]).view([2, 2]);
        let targets = Tensor::from_slice(&[2i64, 1, 2, 2]).view([2, 2]);
        let mut sums = MetricSums::new(Device::Cpu, Features::Classes(3));
        sums.never_right = Some(1);
        sums.add_written(&written, &targets, &Tensor::from(0.5f32), 2);
        let metrics = sums.read();
        assert_eq!((metrics.char_accuracy, metrics.sequence_accuracy), (Some(3.0 / 4.0), Some(1.0 / 2.0)));
    }

    #[test]
    fn figures_since_an_earlier_reading_cover_only_the_new_samples() {
        let earlier = Metrics {
            loss: 2.0,
            char_accuracy: Some(0.5),
            sequence_accuracy: Some(0.25),
            max_abs_error: None,
            samples: 100,
        };
        let now = Metrics { loss: 1.5, char_accuracy: Some(0.6), sequence_accuracy: Some(0.4), ..earlier };
        let now = Metrics { samples: 200, ..now };
        let new = now.since(&earlier);
        assert_eq!(new.samples, 100);
        // 200 * 1.5 - 100 * 2.0 = 100 over 100 new samples.
        assert!((new.loss - 1.0).abs() < 1e-12, "{new:?}");
        assert!((new.char_accuracy.unwrap() - 0.7).abs() < 1e-12, "{new:?}");
        assert!((new.sequence_accuracy.unwrap() - 0.55).abs() < 1e-12, "{new:?}");
        assert_eq!(now.since(&Metrics::default()), now, "nothing earlier: all of it");
        // No rate falls below zero by rounding: one right answer, then none.
        let earlier = Metrics { samples: 3_325_056, sequence_accuracy: Some(1.0 / 3_325_056.0), ..earlier };
        let now = Metrics { samples: 3_500_000, sequence_accuracy: Some(1.0 / 3_500_000.0), ..earlier };
        assert_eq!(now.since(&earlier).sequence_accuracy, Some(0.0));
    }

    #[test]
    fn greedy_answers_write_the_most_probable_class_with_its_probability() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 0.0, 1.0, 0.0, 0.0]).view([1, 2, 3]);
        let answers = Answers::greedy(logits, Features::Classes(3));
        let written = Vec::<i64>::try_from(answers.written.as_ref().expect("ids").view([-1])).expect("int64");
        assert_eq!(written, [1, 0]);
        let chances = Vec::<f64>::try_from(answers.probabilities().view([-1])).expect("double");
        let (e, two) = (std::f64::consts::E, (2.0f64).exp());
        assert!((chances[0] - two / (two + 2.0)).abs() < 1e-6, "{chances:?}");
        assert!((chances[1] - e / (e + 2.0)).abs() < 1e-6, "{chances:?}");
        assert!(Answers::greedy(Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)), Features::Value).written.is_none());
    }

    #[test]
    fn tracks_the_largest_error_of_values() {
        let mut sums = MetricSums::new(Device::Cpu, Features::Value);
        let targets = Tensor::from_slice(&[0.1f32, 0.2, 0.3]).view([1, 3]);
        let output = Tensor::from_slice(&[0.1f32, 0.25, 0.2]).view([1, 3]);
        sums.add(&output, &targets, &Tensor::from(0.01f32), 1);
        let metrics = sums.read();
        assert!((metrics.max_abs_error.unwrap() - 0.1).abs() < 1e-6);
        assert_eq!(metrics.char_accuracy, None);
        assert!(metrics.describe().contains("max absolute error 0.1000"));
    }
}
