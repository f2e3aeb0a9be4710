//! What an arithmetic model gets wrong (`evaluate --errors`): its most confident mistakes, and
//! accuracy broken down by output position and by the size of the true answer, which show where a
//! model that is "95% right" fails (the carry digit, the longest answers).

use std::cmp::Reverse;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::evaluate::Answers;

use crate::task::vocab::Alphabet;
use crate::task::{ArithmeticProblem, Expression};

/// One wrong answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    pub input: String,
    /// What the model wrote, without its padding.
    pub prediction: String,
    pub expected: i128,
    /// How many of the samples were this input (small problems repeat expressions).
    pub count: usize,
    /// Product over the output characters of the probability the model gave the one it wrote:
    /// near 1 for a mistake the model is sure of.
    pub confidence: f64,
}

/// Character accuracy at one output position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionAccuracy {
    /// 1-based, from the left of the padded answer.
    pub position: usize,
    pub char_accuracy: f64,
}

/// Sequence accuracy over the samples whose true value has `digits` digits and that sign.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizeAccuracy {
    pub digits: usize,
    pub negative: bool,
    pub samples: usize,
    pub sequence_accuracy: f64,
}

impl SizeAccuracy {
    /// `2 digits`, `negative, 1 digit`.
    pub fn label(&self) -> String {
        let digits = if self.digits == 1 { "1 digit".to_owned() } else { format!("{} digits", self.digits) };
        if self.negative { format!("negative, {digits}") } else { digits }
    }
}

/// What `evaluate --errors` adds to the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Samples with at least one wrong character.
    pub wrong: usize,
    /// Distinct inputs among them.
    pub distinct_wrong: usize,
    /// The most confident mistakes first, one per distinct input, at most as many as asked for.
    pub errors: Vec<Mistake>,
    pub by_position: Vec<PositionAccuracy>,
    /// Negative values first (largest magnitude first), then values of 1, 2, ... digits.
    pub by_size: Vec<SizeAccuracy>,
}

/// Gathers an [`ErrorReport`] batch by batch, from the outputs `evaluate` computes anyway.
pub struct MistakeTally {
    /// For the order answers are written in.
    problem: ArithmeticProblem,
    alphabet: Alphabet,
    output_len: usize,
    limit: usize,
    correct_at: Vec<usize>,
    samples: usize,
    /// (negative, digits) → (samples, correct)
    sizes: Vec<((bool, usize), (usize, usize))>,
    mistakes: Vec<Mistake>,
    index_of: HashMap<String, usize>,
    wrong: usize,
}

impl MistakeTally {
    /// A tally for `problem` that will keep the `limit` most confident mistakes. Memory grows
    /// with the number of distinct wrong inputs.
    pub fn new(problem: &ArithmeticProblem, limit: usize) -> Self {
        Self {
            problem: problem.clone(),
            alphabet: problem.alphabet(),
            output_len: problem.output_len(),
            limit,
            correct_at: vec![0; problem.output_len()],
            samples: 0,
            sizes: Vec::new(),
            mistakes: Vec::new(),
            index_of: HashMap::new(),
            wrong: 0,
        }
    }

    /// Adds one batch of `expressions`, the `targets` written for them and the model's answers.
    pub fn add(&mut self, expressions: &[Expression], targets: &Tensor, answers: &Answers) {
        let output_len = self.output_len;
        let probabilities = answers.probabilities();
        let predicted =
            Vec::<i64>::try_from(answers.ids().flatten(0, -1).to_device(Device::Cpu)).expect("int64 class indices");
        let probabilities = Vec::<f64>::try_from(probabilities.flatten(0, -1).to_device(Device::Cpu))
            .expect("softmax in double precision");
        let targets = Vec::<i64>::try_from(targets.flatten(0, -1).to_device(Device::Cpu))
            .expect("targets are int64 class indices");
        assert_eq!(targets.len(), expressions.len() * output_len, "a target row per expression");
        for (index, expression) in expressions.iter().enumerate() {
            let row = index * output_len..(index + 1) * output_len;
            let mut all_right = true;
            for (position, (p, t)) in predicted[row.clone()].iter().zip(&targets[row.clone()]).enumerate() {
                self.correct_at[position] += usize::from(p == t);
                all_right &= p == t;
            }
            self.samples += 1;
            let value = expression.value();
            let key = (value < 0, value.unsigned_abs().to_string().len());
            let slot = self.sizes.iter().position(|(k, _)| *k == key).unwrap_or_else(|| {
                self.sizes.push((key, (0, 0)));
                self.sizes.len() - 1
            });
            let tally = &mut self.sizes[slot].1;
            tally.0 += 1;
            tally.1 += usize::from(all_right);
            if all_right {
                continue;
            }
            self.wrong += 1;
            let input = expression.to_string();
            if let Some(&seen) = self.index_of.get(&input) {
                self.mistakes[seen].count += 1;
                continue;
            }
            self.index_of.insert(input.clone(), self.mistakes.len());
            self.mistakes.push(Mistake {
                input,
                prediction: self.problem.as_read(self.alphabet.decode(&predicted[row.clone()])).trim_start().to_owned(),
                expected: value,
                count: 1,
                confidence: probabilities[row].iter().product(),
            });
        }
    }

    /// The report over every batch added.
    pub fn finish(self) -> ErrorReport {
        let MistakeTally { problem, limit, correct_at, samples, mut sizes, mut mistakes, wrong, .. } = self;
        // Positions count from the left of the answer as read, whichever way it was written.
        let correct_at = problem.as_read_order(&correct_at);
        let distinct_wrong = mistakes.len();
        keep_most_confident(&mut mistakes, limit);
        // Negative values first, largest magnitude first: the number line from left to right.
        sizes.sort_by_key(|&((negative, digits), _)| {
            (!negative, if negative { Reverse(digits) } else { Reverse(0) }, digits)
        });
        ErrorReport {
            wrong,
            distinct_wrong,
            errors: mistakes,
            by_position: correct_at
                .iter()
                .enumerate()
                .map(|(position, &correct)| PositionAccuracy {
                    position: position + 1,
                    char_accuracy: correct as f64 / samples.max(1) as f64,
                })
                .collect(),
            by_size: sizes
                .into_iter()
                .map(|((negative, digits), (samples, correct))| SizeAccuracy {
                    digits,
                    negative,
                    samples,
                    sequence_accuracy: correct as f64 / samples.max(1) as f64,
                })
                .collect(),
        }
    }
}

/// Sorts the most confident mistakes first (ties in input order) and keeps `limit` of them.
fn keep_most_confident(mistakes: &mut Vec<Mistake>, limit: usize) {
    mistakes.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    mistakes.truncate(limit);
}

impl ErrorReport {
    /// The report as text, after the usual figures.
    pub fn describe(&self, samples: usize, problem: &ArithmeticProblem) -> String {
        let mut lines = vec![format!("Wrong: {} of {samples} ({} distinct inputs).", self.wrong, self.distinct_wrong)];
        if !self.errors.is_empty() {
            let width = problem.input_len().max("input".len());
            let answer_width = problem.output_len().max("expected".len());
            lines.push(format!("The {} most confident mistakes:", self.errors.len()));
            lines.push(format!(
                "  {:>width$}  {:>answer_width$}  {:>answer_width$}  confidence  times",
                "input", "predicted", "expected"
            ));
            for mistake in &self.errors {
                lines.push(format!(
                    "  {:>width$}  {:>answer_width$}  {:>answer_width$}  {:>10.4}  {:>5}",
                    mistake.input, mistake.prediction, mistake.expected, mistake.confidence, mistake.count
                ));
            }
        }
        lines.push("Character accuracy by output position (1 = leftmost):".to_owned());
        for position in &self.by_position {
            lines.push(format!("  position {}: {:6.2}%", position.position, 100.0 * position.char_accuracy));
        }
        lines.push("Sequence accuracy by the true value's size:".to_owned());
        for size in &self.by_size {
            lines.push(format!("  {:>18}: {:6.2}% of {}", size.label(), 100.0 * size.sequence_accuracy, size.samples));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistake(input: &str, confidence: f64) -> Mistake {
        Mistake { input: input.to_owned(), prediction: "1".to_owned(), expected: 2, count: 1, confidence }
    }

    #[test]
    fn most_confident_mistakes_come_first_and_ties_keep_their_order() {
        let mut mistakes = vec![mistake("a", 0.2), mistake("b", 0.9), mistake("c", 0.2), mistake("d", 0.5)];
        keep_most_confident(&mut mistakes, 3);
        let order: Vec<&str> = mistakes.iter().map(|m| m.input.as_str()).collect();
        assert_eq!(order, ["b", "d", "a"]);
    }

    #[test]
    fn size_labels_name_digits_and_sign() {
        let size = SizeAccuracy { digits: 1, negative: false, samples: 3, sequence_accuracy: 1.0 };
        assert_eq!(size.label(), "1 digit");
        assert_eq!(SizeAccuracy { digits: 3, negative: true, ..size }.label(), "negative, 3 digits");
    }
}
