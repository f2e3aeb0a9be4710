//! Generated samples: a batch is a pure function of `(seed, stream, batch index)`, so nothing is
//! held beyond the batch at hand, any batch can be drawn again on its own (resume, shuffling),
//! and evaluation samples never repeat the training stream.

use std::sync::Mutex;

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tch::Device;

use super::{Batch, SampleSource, Stream, mix_seed};
use crate::task::{ArithmeticProblem, Expression, OperatorWeights, Samples, SequenceProblem, Task};

/// A problem whose samples are drawn from a seed, not read from files.
enum Drawn {
    Arithmetic(ArithmeticProblem),
    Sequences(SequenceProblem),
}

/// `samples` samples of a generated task, drawn from `seed`'s `stream`.
pub struct Generated {
    task: Task,
    problem: Drawn,
    seed: u64,
    stream: Stream,
    samples: usize,
    /// Samples of the stream over which arithmetic terms grow from one digit to all of them
    /// (see [`Generated::with_curriculum`]); 0: none.
    curriculum: usize,
    /// How often each operator is drawn (see [`Generated::with_operator_weights`]); `None`: uniformly.
    operator_weights: Option<OperatorWeights>,
    /// The batch order of the last epoch asked for, drawn once per epoch.
    order: Mutex<Option<(usize, usize, Vec<usize>)>>,
}

impl Generated {
    /// An error for a task whose samples are read from the user's files.
    pub fn new(task: &Task, seed: u64, stream: Stream, samples: usize) -> Result<Self> {
        let problem = match task {
            Task::Arithmetic(problem) => Drawn::Arithmetic(problem.clone()),
            Task::Autoencoder(problem) if problem.data.is_none() => Drawn::Sequences(problem.clone()),
            _ => bail!("{} learns from the user's files: its samples cannot be generated", task.model_kind()),
        };
        Ok(Self {
            task: task.clone(),
            problem,
            seed,
            stream,
            samples,
            curriculum: 0,
            operator_weights: None,
            order: Mutex::new(None),
        })
    }

    /// The same stream with a curriculum over its first `samples` samples: a batch starting at
    /// sample `s` draws terms of at most `1 + s·D/samples` digits (of the `D` that the largest
    /// term has), a quarter of them from the whole range (see
    /// `ArithmeticProblem::draw_shaped`); after them, the whole range. A function of the
    /// batch's place in the stream, so that a resumed run draws the same samples.
    pub fn with_curriculum(self, samples: usize) -> Self {
        Self { curriculum: samples, ..self }
    }

    /// The same stream with arithmetic operators drawn as often as their weights say, for a
    /// training stream that shows hard operators more (evaluation streams stay uniform).
    pub fn with_operator_weights(self, weights: Option<OperatorWeights>) -> Self {
        Self { operator_weights: weights, ..self }
    }

    /// Most digits of a term in the batch that starts at sample `start`: `None` once the
    /// curriculum has grown them to the whole range (or without one).
    fn digits_at(&self, problem: &ArithmeticProblem, start: usize) -> Option<u32> {
        if start >= self.curriculum {
            return None;
        }
        let digits = problem.term_digits();
        let grown = 1 + (start as u128 * u128::from(digits) / self.curriculum as u128) as u32;
        (grown < digits).then_some(grown)
    }

    /// Which batch of the stream is step `step` of `epoch`: the first epoch takes them in stream
    /// order; each later one in a seeded shuffle, so that the same batches are seen in a new
    /// order (as Keras shuffles each epoch).
    fn batch_index(&self, epoch: usize, step: usize, batches: usize) -> usize {
        if epoch == 0 {
            return step;
        }
        let mut cached = self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match cached.as_ref() {
            Some((e, n, order)) if *e == epoch && *n == batches => order[step],
            _ => {
                let order = batch_order(batches, self.seed, epoch);
                let index = order[step];
                *cached = Some((epoch, batches, order));
                index
            }
        }
    }
}

impl SampleSource for Generated {
    fn task(&self) -> &Task {
        &self.task
    }

    fn len(&self) -> usize {
        self.samples
    }

    fn batch(&self, epoch: usize, step: usize, batch_size: usize, keep_samples: bool) -> Batch<'_> {
        let index = self.batch_index(epoch, step, self.samples.div_ceil(batch_size));
        let start = index * batch_size;
        let size = batch_size.min(self.samples.saturating_sub(start));
        let mut rng = StdRng::seed_from_u64(mix_seed(self.seed ^ self.stream.salt()) ^ mix_seed(index as u64));
        let mut samples = match &self.problem {
            Drawn::Arithmetic(problem) => {
                let digits = self.digits_at(problem, start);
                let draw = |_| {
                    let mut expression = Expression::default();
                    problem.draw_shaped(&mut rng, &mut expression, digits, self.operator_weights.as_ref());
                    expression
                };
                Samples::Arithmetic(problem, (0..size).map(draw).collect())
            }
            Drawn::Sequences(problem) => {
                let draw = |_| {
                    let mut values = Vec::with_capacity(problem.length);
                    problem.draw(&mut rng, &mut values);
                    values
                };
                Samples::Sequences(problem, (0..size).map(draw).collect())
            }
        };
        let (inputs, targets) = (samples.input_tensor(Device::Cpu), samples.target_tensor(Device::Cpu));
        if !keep_samples {
            samples.clear();
        }
        Batch { inputs, targets, size, samples }
    }
}

/// The seeded shuffle of `num_batches` batch indices for `epoch` (after the first).
fn batch_order(num_batches: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..num_batches).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix_seed(seed) ^ mix_seed(epoch as u64)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SampleSource;
    use crate::task::{Operator, Operators};

    /// Two terms up to 999 joined by `+` or `*`.
    fn sums_and_products() -> Task {
        Task::Arithmetic(ArithmeticProblem {
            operators: "+*".parse::<Operators>().expect("operators"),
            min_terms: 2,
            max_terms: 2,
            largest: 999,
            ..ArithmeticProblem::default()
        })
    }

    fn terms(source: &Generated, step: usize) -> Vec<u64> {
        let batch = source.batch(0, step, 100, true);
        let Samples::Arithmetic(_, expressions) = &batch.samples else { panic!("arithmetic samples") };
        expressions.iter().flat_map(|e| e.terms.clone()).collect()
    }

    #[test]
    fn a_curriculum_grows_the_terms_then_draws_as_without_one() {
        let task = sums_and_products();
        let plain = Generated::new(&task, 7, Stream::Training, 9000).expect("drawn");
        let taught = Generated::new(&task, 7, Stream::Training, 9000).expect("drawn").with_curriculum(3000);
        // Batches of 100 from sample 0 (one digit), 1000 (two) and 2000 (three: the whole range).
        for (step, digits) in [(0, 1), (10, 2), (20, 3)] {
            let drawn = terms(&taught, step);
            let short = drawn.iter().filter(|&&t| t < 10u64.pow(digits)).count();
            if digits < 3 {
                // Three quarters at most `digits` long, a quarter from 1..=999, which are mostly longer.
                assert!(short > drawn.len() * 7 / 10, "{digits} digits: {short} of {}", drawn.len());
                assert_ne!(drawn, terms(&plain, step));
            }
            assert!(drawn.iter().any(|&t| t >= 100), "the whole range is never absent: {drawn:?}");
            assert_eq!(drawn, terms(&taught, step), "a pure function of the batch's place");
        }
        for step in [20, 30, 89] {
            assert_eq!(terms(&taught, step), terms(&plain, step), "after the curriculum, the plain stream");
        }
    }

    #[test]
    fn operator_weights_shape_the_stream_and_redraw_the_same_batch() {
        let task = sums_and_products();
        let operators = |source: &Generated, step: usize| {
            let batch = source.batch(0, step, 1000, true);
            let Samples::Arithmetic(_, expressions) = &batch.samples else { panic!("arithmetic samples") };
            expressions.iter().map(|e| e.operators[0]).collect::<Vec<_>>()
        };
        let stream = || Generated::new(&task, 7, Stream::Training, 9000).expect("drawn");
        let weights = "*=9".parse().ok();
        let weighted = stream().with_operator_weights(weights);
        let drawn = operators(&weighted, 3);
        let products = drawn.iter().filter(|&&op| op == Operator::Multiply).count();
        assert!((850..=950).contains(&products), "nine in ten of 1,000 multiply: {products}");
        assert_eq!(
            drawn,
            operators(&stream().with_operator_weights(weights), 3),
            "a pure function of the batch's place"
        );
        assert_eq!(operators(&stream().with_operator_weights(None), 3), operators(&stream(), 3));
    }

    #[test]
    fn first_epoch_in_order_later_epochs_shuffled_and_reproducible() {
        let generated = Generated::new(&Task::default(), 1, Stream::Training, 3200).expect("the reference is drawn");
        assert_eq!((0..5).map(|step| generated.batch_index(0, step, 5)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        let second_epoch: Vec<usize> = (0..100).map(|step| generated.batch_index(1, step, 100)).collect();
        assert_eq!(second_epoch, batch_order(100, 1, 1));
        let second = batch_order(100, 1, 1);
        assert_ne!(second, (0..100).collect::<Vec<_>>());
        assert_eq!(second, batch_order(100, 1, 1));
        let mut sorted = second.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
