//! Training and evaluation batches from a [`SampleSource`]: generated problems
//! ([`generated`]) or the user's files ([`corpus`]); and users' inputs for `predict` and
//! `encode` ([`input`]).

pub mod corpus;
pub mod csv;
pub mod generated;
pub mod input;
pub mod lines;

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::task::{ArithmeticProblem, Expression, Samples, Task};
use generated::Generated;

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
pub struct Batch<'t> {
    /// `[size, input_len]`: int64 class indices, or float values.
    pub inputs: Tensor,
    /// `[size, output_len]`: int64 class indices (or `IGNORED`), or
    /// float values.
    pub targets: Tensor,
    pub size: usize,
    /// The samples themselves, kept on the host only when the stream was asked to
    /// (evaluation breaks its figures down by them); otherwise none.
    pub samples: Samples<'t>,
}

/// Where samples come from: generated from a seed ([`generated::Generated`], as many as asked
/// for) or read from the user's files ([`corpus::batches::PairSource`], a finite set). Training,
/// evaluation, `encode --plot` and the metrics log see only this.
pub trait SampleSource: Send + Sync {
    /// The task whose samples these are.
    fn task(&self) -> &Task;
    /// Samples in one pass (an epoch).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Batch `index` of pass `epoch` in batches of `batch_size`, as host tensors; with
    /// `keep_samples`, the samples too. Every pass visits every sample once.
    fn batch(&self, epoch: usize, index: usize, batch_size: usize, keep_samples: bool) -> Batch<'_>;
}

/// A source's samples in batches of `batch_size` (the last one may be smaller), on a device.
#[derive(Clone)]
pub struct BatchStream {
    source: Arc<dyn SampleSource>,
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
    /// `samples` generated samples of `task` from `seed`'s `stream`; an error for a task
    /// whose samples are read from files.
    pub fn new(
        task: &Task,
        seed: u64,
        stream: Stream,
        samples: usize,
        batch_size: usize,
        device: Device,
    ) -> anyhow::Result<Self> {
        Ok(Self::of(Arc::new(Generated::new(task, seed, stream, samples)?), batch_size, device))
    }

    /// Batches of any source.
    pub fn of(source: Arc<dyn SampleSource>, batch_size: usize, device: Device) -> Self {
        assert!(batch_size > 0, "batch size is validated before a stream is built");
        Self { source, batch_size, device, keep_samples: false }
    }

    /// Keeps each batch's samples on the host as well, in [`Batch::samples`].
    pub fn keeping_samples(mut self) -> Self {
        self.keep_samples = true;
        self
    }

    pub fn task(&self) -> &Task {
        self.source.task()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn samples(&self) -> usize {
        self.source.len()
    }

    pub fn num_batches(&self) -> usize {
        self.source.len().div_ceil(self.batch_size)
    }

    /// Batch `index` of the first pass, in the source's own order.
    pub fn batch(&self, index: usize) -> Batch<'_> {
        self.batch_of_epoch(0, index)
    }

    /// Batch `index` of pass `epoch`, on the device.
    pub fn batch_of_epoch(&self, epoch: usize, index: usize) -> Batch<'_> {
        let host = self.source.batch(epoch, index, self.batch_size, self.keep_samples);
        Batch { inputs: to_device(host.inputs, self.device), targets: to_device(host.targets, self.device), ..host }
    }

    /// Every batch of the first pass, in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch<'_>> + '_ {
        (0..self.num_batches()).map(|index| self.batch(index))
    }
}

impl Samples<'_> {
    /// What the encoder reads, `[samples, input_len]` on `device`: the one place where training
    /// data and users' inputs are turned into tensors.
    pub fn input_tensor(&self, device: Device) -> Tensor {
        let (host, width) = match self {
            Samples::Arithmetic(problem, expressions) => {
                (expression_indices(problem, expressions, |e| problem.model_input(e)), problem.input_len())
            }
            Samples::Sequences(problem, sequences) => (Tensor::from_slice(&sequences.concat()), problem.length),
            Samples::Pairs(problem, pairs) => {
                let mut ids = Vec::with_capacity(pairs.len() * problem.input_len());
                for pair in pairs {
                    problem.encode_source(&pair.source, &mut ids);
                }
                (Tensor::from_slice(&ids), problem.input_len())
            }
        };
        to_device(host.view([self.len() as i64, width as i64]), device)
    }

    /// What the decoder should write, `[samples, output_len]` on `device`.
    pub fn target_tensor(&self, device: Device) -> Tensor {
        let (host, width) = match self {
            Samples::Arithmetic(problem, expressions) => {
                let written = problem.target_formatter();
                let indices = expression_indices(problem, expressions, |e| written(e.value()));
                (indices, problem.output_len())
            }
            // An autoencoder's target is its input.
            Samples::Sequences(problem, sequences) => (Tensor::from_slice(&sequences.concat()), problem.length),
            Samples::Pairs(problem, pairs) => {
                let mut ids = Vec::with_capacity(pairs.len() * problem.output_len());
                for pair in pairs {
                    let expected = pair.expected.as_ref().map_or(&[][..], |(_, ids)| ids.as_slice());
                    problem.encode_target(expected, &mut ids);
                }
                (Tensor::from_slice(&ids), problem.output_len())
            }
        };
        to_device(host.view([self.len() as i64, width as i64]), device)
    }
}

/// The class indices of `text` of each expression, one after the other.
fn expression_indices(
    problem: &ArithmeticProblem,
    expressions: &[Expression],
    text: impl Fn(&Expression) -> String,
) -> Tensor {
    let alphabet = problem.alphabet();
    let mut indices = Vec::new();
    for expression in expressions {
        alphabet.encode_into(&text(expression), &mut indices);
    }
    Tensor::from_slice(&indices)
}

/// Copies host data to `device`; to a GPU through pinned memory, without waiting for the copy.
/// `_pin_memory` is what `pin_memory` calls: tch's `pin_memory` passes a device, which libtorch
/// 2.11 deprecates with a warning at every call (twice a batch), and `host` is never pinned yet.
pub fn to_device(host: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => host,
        _ => host.internal_pin_memory(device).to_device_(device, host.kind(), true, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::task::{ArithmeticProblem, SequenceKind, SequenceProblem};

    fn stream(seed: u64, kind: Stream) -> BatchStream {
        BatchStream::new(&Task::default(), seed, kind, 100, 32, Device::Cpu).expect("the reference draws samples")
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
            reverse_output: false,
            alphabet: None,
        };
        let task = Task::Arithmetic(problem.clone());
        let stream = BatchStream::new(&task, 9, Stream::Training, 64, 64, Device::Cpu).expect("arithmetic is drawn");
        let stream = stream.keeping_samples();
        let batch = stream.batch(0);
        let alphabet = problem.alphabet();
        let (input_len, output_len) = (problem.input_len(), problem.output_len());
        let (inputs, targets) = rows(&batch);
        let Samples::Arithmetic(_, expressions) = &batch.samples else { panic!("arithmetic samples are expressions") };
        assert_eq!(expressions.len(), 64);
        for ((input, target), expression) in inputs.chunks(input_len).zip(targets.chunks(output_len)).zip(expressions) {
            let read: String = alphabet.decode(input);
            let forwards: String = read.trim_start().chars().rev().collect();
            assert_eq!(problem.parse_expression(&forwards).as_ref(), Ok(expression), "reversed, padded first");
            assert!(read.starts_with(' ') || read.trim().len() == input_len);
            assert_eq!(problem.as_read(alphabet.decode(target)), problem.format_output(expression.value()));
        }
    }

    #[test]
    fn autoencoder_targets_are_the_inputs() {
        let task = Task::Autoencoder(SequenceProblem { sequence: SequenceKind::Random, ..Default::default() });
        let stream = BatchStream::new(&task, 3, Stream::Training, 10, 10, Device::Cpu).expect("ramps are drawn");
        let batch = stream.batch(0);
        assert_eq!(batch.inputs.size(), vec![10, 9]);
        assert!(batch.inputs.equal(&batch.targets));
        assert_eq!(batch.inputs.kind(), tch::Kind::Float);
    }
}
