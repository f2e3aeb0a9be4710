//! Scoring a model: loss, per-character accuracy and whole-sequence (exact-match) accuracy.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::BatchStream;
use crate::model::Seq2Seq;

/// Scores over a number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean categorical cross-entropy per output character.
    pub loss: f64,
    /// Fraction of output characters predicted right (what Keras calls accuracy here).
    pub char_accuracy: f64,
    /// Fraction of samples whose every output character is right.
    pub sequence_accuracy: f64,
    pub samples: usize,
}

/// Running sums kept on the device, so that a training step never waits for a read-back;
/// [`MetricSums::read`] is the one place that synchronises.
///
/// A step only records its predictions and weighted loss (three small ops); they are compared
/// with the targets in one go every [`FOLD_EVERY`] batches, which costs far fewer op dispatches
/// than scoring each small batch on its own.
pub struct MetricSums {
    weighted_loss: Tensor,
    correct_chars: Tensor,
    correct_sequences: Tensor,
    pending_predictions: Vec<Tensor>,
    pending_targets: Vec<Tensor>,
    pending_losses: Vec<Tensor>,
    samples: usize,
    chars_per_sample: usize,
}

/// Batches recorded before they are scored together.
const FOLD_EVERY: usize = 50;

impl MetricSums {
    pub fn new(device: Device, chars_per_sample: usize) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Self {
            weighted_loss: zero(),
            correct_chars: zero(),
            correct_sequences: zero(),
            pending_predictions: Vec::with_capacity(FOLD_EVERY),
            pending_targets: Vec::with_capacity(FOLD_EVERY),
            pending_losses: Vec::with_capacity(FOLD_EVERY),
            samples: 0,
            chars_per_sample,
        }
    }

    /// Adds one batch: `logits` `[batch, len, classes]`, `targets` `[batch, len]`, and the
    /// batch's mean `loss`.
    pub fn add(&mut self, logits: &Tensor, targets: &Tensor, loss: &Tensor, batch_size: usize) {
        tch::no_grad(|| {
            self.pending_predictions.push(logits.argmax(-1, false));
            self.pending_targets.push(targets.shallow_clone());
            self.pending_losses.push(loss.detach() * batch_size as f64);
        });
        self.samples += batch_size;
        if self.pending_predictions.len() >= FOLD_EVERY {
            self.fold();
        }
    }

    /// Scores the recorded batches into the running sums (still on the device).
    fn fold(&mut self) {
        if self.pending_predictions.is_empty() {
            return;
        }
        tch::no_grad(|| {
            let correct = Tensor::cat(&self.pending_predictions, 0).eq_tensor(&Tensor::cat(&self.pending_targets, 0));
            self.correct_chars += correct.sum(Kind::Double);
            self.correct_sequences += correct.all_dim(1, false).sum(Kind::Double);
            self.weighted_loss += Tensor::stack(&self.pending_losses, 0).sum(Kind::Double);
        });
        self.pending_predictions.clear();
        self.pending_targets.clear();
        self.pending_losses.clear();
    }

    /// The means so far (reads the device).
    pub fn read(&mut self) -> Metrics {
        self.fold();
        let samples = self.samples.max(1) as f64;
        Metrics {
            loss: self.weighted_loss.double_value(&[]) / samples,
            char_accuracy: self.correct_chars.double_value(&[]) / (samples * self.chars_per_sample as f64),
            sequence_accuracy: self.correct_sequences.double_value(&[]) / samples,
            samples: self.samples,
        }
    }
}

/// Scores `model` on every batch of `data`, without gradients and with dropout off.
pub fn evaluate(model: &Seq2Seq, data: &BatchStream) -> Metrics {
    let mut sums = MetricSums::new(data.device(), model.shape().output_len);
    tch::no_grad(|| {
        for batch in data.iter() {
            let logits = model.forward_t(&batch.inputs, false);
            let loss = Seq2Seq::loss(&logits, &batch.targets);
            sums.add(&logits, &batch.targets, &loss, batch.size);
        }
    });
    sums.read()
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
        let mut sums = MetricSums::new(Device::Cpu, 2);
        sums.add(&logits, &targets, &Tensor::from(0.5f32), 2);
        // A second batch, one sample with both characters wrong, scored in the same fold.
        let wrong = Tensor::from_slice(&[0.0f32, 9., 0., 0., 0., 9.]).view([1, 2, 3]);
        sums.add(&wrong, &Tensor::from_slice(&[0i64, 0]).view([1, 2]), &Tensor::from(2.0f32), 1);
        let metrics = sums.read();
        assert_eq!(metrics.samples, 3);
        assert_eq!(metrics.char_accuracy, 3.0 / 6.0);
        assert_eq!(metrics.sequence_accuracy, 1.0 / 3.0);
        // Weighted by batch size: (0.5 * 2 + 2.0 * 1) / 3.
        assert!((metrics.loss - 1.0).abs() < 1e-12);
    }
}
