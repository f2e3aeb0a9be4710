//! What a model of the user's pairs gets wrong (`evaluate --errors N`): its most confident
//! mistakes, each with the source, what the model wrote and the true target.

use serde::Serialize;
use tch::Device;

use crate::evaluate::Answers;

use crate::task::{PairInput, PairsProblem};

/// One wrong target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairMistake {
    pub input: String,
    pub prediction: String,
    pub expected: String,
    /// Product of the probabilities the model gave each token it wrote, the end marker
    /// included: near 1 for a mistake the model is sure of.
    pub confidence: f64,
}

/// Keeps the `limit` most confident mistakes seen, and counts them all.
pub struct PairMistakes<'a> {
    problem: &'a PairsProblem,
    limit: usize,
    kept: Vec<PairMistake>,
    pub wrong: usize,
}

impl<'a> PairMistakes<'a> {
    pub fn new(problem: &'a PairsProblem, limit: usize) -> Self {
        Self { problem, limit, kept: Vec::new(), wrong: 0 }
    }

    /// Looks at one scored batch of `pairs` and the model's answers to it.
    pub fn add(&mut self, pairs: &[PairInput], answers: &Answers) {
        let width = self.problem.output_len();
        let best = answers.probabilities();
        let best = Vec::<f64>::try_from(best.flatten(0, -1).to_device(Device::Cpu)).expect("double probabilities");
        let written = Vec::<i64>::try_from(answers.ids().flatten(0, -1).to_device(Device::Cpu)).expect("int64 classes");
        for ((pair, row), chances) in pairs.iter().zip(written.chunks(width)).zip(best.chunks(width)) {
            let Some((expected, truth)) = &pair.expected else { continue };
            let written = self.problem.written(row);
            if PairsProblem::is_right(written, truth) {
                continue;
            }
            self.wrong += 1;
            // The written tokens and the step that ends them (the whole row when none does).
            let steps = (written.len() + 1).min(width);
            let confidence = chances[..steps].iter().product();
            self.kept.push(PairMistake {
                input: pair.text.clone(),
                prediction: self.problem.target_text(written),
                expected: expected.clone(),
                confidence,
            });
            if self.kept.len() >= 4 * self.limit.max(16) {
                self.keep_most_confident();
            }
        }
    }

    fn keep_most_confident(&mut self) {
        self.kept.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then_with(|| a.input.cmp(&b.input)));
        self.kept.truncate(self.limit);
    }

    /// The most confident mistakes, most confident first.
    pub fn finish(mut self) -> (usize, Vec<PairMistake>) {
        self.keep_most_confident();
        (self.wrong, self.kept)
    }
}
