//! The seeded stream of training and evaluation batches.
//!
//! A batch is a pure function of `(seed, stream, batch index)`: nothing is held in memory
//! beyond the batch at hand, any batch can be regenerated on its own (resume, shuffling),
//! and evaluation samples never repeat the training stream.

pub mod corpus;
pub mod input;
pub mod lines;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::{Device, Tensor};

use crate::task::{ArithmeticProblem, Expression, Input, Task};

/// Independent streams of samples drawn from one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Training,
    Evaluation,
}

impl Stream {
    fn salt(self) -> u64 {
        match self {
            Stream::Training => 0x7472_6169_6e00_0000,
            Stream::Evaluation => 0x6576_616c_0000_0000,
        }
    }
}

/// One batch on the target device; one-hot encoding happens in the model.
pub struct Batch {
    /// `[size, input_len]`: int64 class indices, or float values.
    pub inputs: Tensor,
    /// `[size, output_len]`: int64 class indices, or float values.
    pub targets: Tensor,
    pub size: usize,
    /// The samples themselves, kept on the host only when the stream was asked to
    /// (evaluation breaks its figures down by them).
    pub samples: Vec<Input>,
}

/// `samples` samples in batches of `batch_size` (the last one may be smaller).
pub struct BatchStream {
    task: Task,
    seed: u64,
    stream: Stream,
    samples: usize,
    batch_size: usize,
    device: Device,
    keep_samples: bool,
}

/// SplitMix64's finaliser: spreads nearby inputs (seed, index) over unrelated generator seeds.
pub fn mix_seed(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl BatchStream {
    pub fn new(task: &Task, seed: u64, stream: Stream, samples: usize, batch_size: usize, device: Device) -> Self {
        assert!(batch_size > 0, "batch size is validated before a stream is built");
        Self { task: task.clone(), seed, stream, samples, batch_size, device, keep_samples: false }
    }

    /// Keeps each batch's samples on the host as well, in [`Batch::samples`].
    pub fn keeping_samples(mut self) -> Self {
        self.keep_samples = true;
        self
    }

    pub fn task(&self) -> &Task {
        &self.task
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    pub fn num_batches(&self) -> usize {
        self.samples.div_ceil(self.batch_size)
    }

    /// Batch `index` of the stream, generated on the host and copied to the device.
    pub fn batch(&self, index: usize) -> Batch {
        let start = index * self.batch_size;
        let size = self.batch_size.min(self.samples.saturating_sub(start));
        let mut rng = StdRng::seed_from_u64(mix_seed(self.seed ^ self.stream.salt()) ^ mix_seed(index as u64));
        let samples: Vec<Input> = (0..size)
            .map(|_| match &self.task {
                Task::Arithmetic(problem) => {
                    let mut expression = Expression::default();
                    problem.draw(&mut rng, &mut expression);
                    Input::Expression(expression)
                }
                Task::Autoencoder(problem) => {
                    let mut values = Vec::with_capacity(problem.length);
                    problem.draw(&mut rng, &mut values);
                    Input::Sequence(values)
                }
            })
            .collect();
        Batch {
            inputs: input_tensor(&self.task, &samples, self.device),
            targets: target_tensor(&self.task, &samples, self.device),
            size,
            samples: if self.keep_samples { samples } else { Vec::new() },
        }
    }

    /// Every batch in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch> + '_ {
        (0..self.num_batches()).map(|index| self.batch(index))
    }
}

/// What the encoder reads for `samples`, `[samples, input_len]` on `device`: the one place
/// where training data and users' inputs are turned into tensors.
pub fn input_tensor(task: &Task, samples: &[Input], device: Device) -> Tensor {
    let host = match task {
        Task::Arithmetic(problem) => expression_indices(problem, samples, |expression| problem.model_input(expression)),
        Task::Autoencoder(_) => Tensor::from_slice(&sequence_values(samples)),
    };
    to_device(host.view([samples.len() as i64, task.input_len() as i64]), device)
}

/// What the decoder should write for `samples`, `[samples, output_len]` on `device`.
pub fn target_tensor(task: &Task, samples: &[Input], device: Device) -> Tensor {
    let host = match task {
        Task::Arithmetic(problem) => {
            let format_output = problem.output_formatter();
            expression_indices(problem, samples, |expression| format_output(expression.value()))
        }
        // An autoencoder's target is its input.
        Task::Autoencoder(_) => Tensor::from_slice(&sequence_values(samples)),
    };
    to_device(host.view([samples.len() as i64, task.output_len() as i64]), device)
}

/// The class indices of `text` of each expression, one after the other.
fn expression_indices(problem: &ArithmeticProblem, samples: &[Input], text: impl Fn(&Expression) -> String) -> Tensor {
    let alphabet = problem.alphabet();
    let mut indices = Vec::new();
    for sample in samples {
        let Input::Expression(expression) = sample else { unreachable!("arithmetic samples are expressions") };
        alphabet.encode_into(&text(expression), &mut indices);
    }
    Tensor::from_slice(&indices)
}

fn sequence_values(samples: &[Input]) -> Vec<f32> {
    let mut values = Vec::new();
    for sample in samples {
        let Input::Sequence(sequence) = sample else { unreachable!("autoencoder samples are sequences") };
        values.extend_from_slice(sequence);
    }
    values
}

/// Copies host data to `device`; to a GPU through pinned memory, without waiting for the copy.
pub fn to_device(host: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => host,
        _ => host.pin_memory(device).to_device_(device, host.kind(), true, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::task::{ArithmeticProblem, SequenceKind, SequenceProblem};

    fn stream(seed: u64, kind: Stream) -> BatchStream {
        BatchStream::new(&Task::default(), seed, kind, 100, 32, Device::Cpu)
    }

    fn rows(batch: &Batch) -> (Vec<i64>, Vec<i64>) {
        let inputs = Vec::<i64>::try_from(batch.inputs.flatten(0, -1)).expect("int64 inputs");
        let targets = Vec::<i64>::try_from(batch.targets.flatten(0, -1)).expect("int64 targets");
        (inputs, targets)
    }

    #[test]
    fn splits_samples_into_batches_with_a_short_last_one() {
        let stream = stream(1, Stream::Training);
        assert_eq!(stream.num_batches(), 4);
        let sizes: Vec<usize> = stream.iter().map(|b| b.size).collect();
        assert_eq!(sizes, vec![32, 32, 32, 4]);
        let last = stream.batch(3);
        assert_eq!(last.inputs.size(), vec![4, 8]);
        assert_eq!(last.targets.size(), vec![4, 2]);
    }

    #[test]
    fn same_seed_same_batches_other_seed_or_stream_other_batches() {
        let a = rows(&stream(5, Stream::Training).batch(2));
        assert_eq!(a, rows(&stream(5, Stream::Training).batch(2)));
        assert_ne!(a, rows(&stream(6, Stream::Training).batch(2)));
        assert_ne!(a, rows(&stream(5, Stream::Evaluation).batch(2)));
        assert_ne!(a, rows(&stream(5, Stream::Training).batch(1)));
    }

    #[test]
    fn every_target_is_the_value_of_its_input() {
        let problem: ArithmeticProblem = ArithmeticProblem {
            operators: "+-*/".parse().expect("valid operators"),
            min_terms: 2,
            max_terms: 3,
            largest: 20,
            reverse: true,
        };
        let task = Task::Arithmetic(problem.clone());
        let batch = BatchStream::new(&task, 9, Stream::Training, 64, 64, Device::Cpu).keeping_samples().batch(0);
        let alphabet = problem.alphabet();
        let (input_len, output_len) = (problem.input_len(), problem.output_len());
        let (inputs, targets) = rows(&batch);
        for ((input, target), sample) in inputs.chunks(input_len).zip(targets.chunks(output_len)).zip(&batch.samples) {
            let Input::Expression(expression) = sample else { panic!("arithmetic samples are expressions") };
            let read: String = alphabet.decode(input);
            let forwards: String = read.trim_start().chars().rev().collect();
            assert_eq!(problem.parse_expression(&forwards).as_ref(), Ok(expression), "reversed, padded first");
            assert!(read.starts_with(' ') || read.trim().len() == input_len);
            assert_eq!(alphabet.decode(target), problem.format_output(expression.value()));
        }
    }

    #[test]
    fn autoencoder_targets_are_the_inputs() {
        let task = Task::Autoencoder(SequenceProblem { sequence: SequenceKind::Random, ..Default::default() });
        let batch = BatchStream::new(&task, 3, Stream::Training, 10, 10, Device::Cpu).batch(0);
        assert_eq!(batch.inputs.size(), vec![10, 9]);
        assert!(batch.inputs.equal(&batch.targets));
        assert_eq!(batch.inputs.kind(), tch::Kind::Float);
    }
}
