//! The user's pairs as a [`SampleSource`]: a finite set, visited once per epoch in an order
//! drawn from (seed, epoch) when training, in file order when scoring.

use std::sync::Arc;

use tch::Tensor;

use super::{PairCorpus, Visits};
use crate::data::{Batch, SampleSource};
use crate::task::{PairInput, PairsProblem, Samples, Task};

/// Pairs of a corpus, batched for a model of `task`.
pub struct PairSource {
    /// The task as the rest of the program sees it, and its problem for encoding.
    task: Task,
    problem: PairsProblem,
    corpus: Arc<PairCorpus>,
    visits: Visits,
}

impl PairSource {
    /// `corpus` must use the vocabularies of `problem`; training shuffles every epoch with
    /// `shuffle`, scoring (`None`) keeps the file's order.
    pub fn new(problem: &PairsProblem, corpus: Arc<PairCorpus>, shuffle: Option<u64>) -> Self {
        let visits = Visits::new(corpus.len(), shuffle);
        Self { task: Task::Pairs(Box::new(problem.clone())), problem: problem.clone(), corpus, visits }
    }

    /// Only the first `pairs` pairs (all when there are fewer).
    pub fn first(mut self, pairs: usize) -> Self {
        self.visits = self.visits.first(pairs);
        self
    }
}

impl SampleSource for PairSource {
    fn task(&self) -> &Task {
        &self.task
    }

    fn len(&self) -> usize {
        self.visits.len()
    }

    fn batch(&self, epoch: usize, index: usize, batch_size: usize, keep_samples: bool) -> Batch<'_> {
        let problem = &self.problem;
        let pairs = self.visits.batch(epoch, index, batch_size);
        let size = pairs.len();
        let mut inputs = Vec::with_capacity(size * problem.input_len());
        let mut targets = Vec::with_capacity(size * problem.output_len());
        let mut samples = Vec::new();
        for &pair in &pairs {
            let (source, target) = (self.corpus.sources.get(pair), self.corpus.targets.get(pair));
            problem.encode_source(source, &mut inputs);
            problem.encode_target(target, &mut targets);
            if keep_samples {
                let as_ids = |ids: &[u32]| ids.iter().map(|&id| i64::from(id)).collect::<Vec<_>>();
                // The user's text where a token became `<unk>`; the ids spell the rest exactly.
                let (text, expected) = match self.corpus.spelling(pair) {
                    Some((source, target)) => (source.clone(), target.clone()),
                    None => (source_text(problem, source), problem.target_text(&as_ids(target))),
                };
                let expected = (expected, target.to_vec());
                samples.push(PairInput {
                    text,
                    source: source.to_vec(),
                    expected: Some(expected),
                    unknown: Vec::new(),
                });
            }
        }
        Batch {
            inputs: Tensor::from_slice(&inputs).view([size as i64, problem.input_len() as i64]),
            targets: Tensor::from_slice(&targets).view([size as i64, problem.output_len() as i64]),
            size,
            samples: Samples::Pairs(problem, samples),
        }
    }
}

/// The text of source ids, as the model's vocabulary spells them.
pub fn source_text(problem: &PairsProblem, ids: &[u32]) -> String {
    problem.source_tokens.join(ids.iter().map(|&id| problem.source_vocabulary.token(id)))
}
