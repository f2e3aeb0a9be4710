//! The seeded stream of training and evaluation batches.
//!
//! A batch is a pure function of `(seed, stream, batch index)`: nothing is held in memory
//! beyond the batch at hand, any batch can be regenerated on its own (resume, shuffling),
//! and evaluation samples never repeat the training stream.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::{Device, Tensor};

use crate::problem::ProblemConfig;
use crate::vocab::Alphabet;

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

/// One batch, as class indices on the target device; one-hot encoding happens in the model.
pub struct Batch {
    /// `[size, input_len]` int64.
    pub inputs: Tensor,
    /// `[size, output_len]` int64.
    pub targets: Tensor,
    pub size: usize,
}

/// `samples` samples in batches of `batch_size` (the last one may be smaller).
pub struct BatchStream {
    problem: ProblemConfig,
    alphabet: Alphabet,
    seed: u64,
    stream: Stream,
    samples: usize,
    batch_size: usize,
    device: Device,
}

/// SplitMix64's finaliser: spreads nearby inputs (seed, index) over unrelated generator seeds.
pub fn mix_seed(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl BatchStream {
    pub fn new(
        problem: &ProblemConfig,
        alphabet: &Alphabet,
        seed: u64,
        stream: Stream,
        samples: usize,
        batch_size: usize,
        device: Device,
    ) -> Self {
        assert!(batch_size > 0, "batch size is validated before a stream is built");
        Self { problem: problem.clone(), alphabet: alphabet.clone(), seed, stream, samples, batch_size, device }
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
        let (input_len, output_len) = (self.problem.input_len(), self.problem.output_len());
        let mut inputs = Vec::with_capacity(size * input_len);
        let mut targets = Vec::with_capacity(size * output_len);
        let mut terms = Vec::with_capacity(self.problem.n_terms);
        for _ in 0..size {
            self.problem.draw_terms(&mut rng, &mut terms);
            let answer = self.problem.answer(&terms);
            self.alphabet.encode_into(&self.problem.format_input(&terms), &mut inputs);
            self.alphabet.encode_into(&self.problem.format_output(answer), &mut targets);
        }
        Batch {
            inputs: to_device(Tensor::from_slice(&inputs).view([size as i64, input_len as i64]), self.device),
            targets: to_device(Tensor::from_slice(&targets).view([size as i64, output_len as i64]), self.device),
            size,
        }
    }

    /// Every batch in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch> + '_ {
        (0..self.num_batches()).map(|index| self.batch(index))
    }
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

    fn stream(seed: u64, kind: Stream) -> BatchStream {
        BatchStream::new(&ProblemConfig::default(), &Alphabet::addition(), seed, kind, 100, 32, Device::Cpu)
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
    fn every_target_is_the_sum_of_its_input() {
        let problem = ProblemConfig::default();
        let alphabet = Alphabet::addition();
        let (inputs, targets) = rows(&stream(9, Stream::Training).batch(0));
        for (input, target) in inputs.chunks(8).zip(targets.chunks(2)) {
            let expression = alphabet.decode(input);
            let terms = problem.parse_expression(&expression).expect("generated expressions parse");
            assert_eq!(alphabet.decode(target), problem.format_output(problem.answer(&terms)));
            assert_eq!(expression, problem.format_input(&terms), "left-padded with spaces");
        }
    }
}
