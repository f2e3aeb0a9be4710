//! A training step with each batch's rows shared among threads: this one and helpers, each
//! running the hand-written passes on its rows with one libtorch thread, as `predict` does.
//!
//! The result depends on the number of threads, never on their timing: the rows are split by a
//! fixed rule, each share's gradient lands in its own buffer, and the buffers are summed in share
//! order, each weighted by its share of the rows. With one thread a step is exactly the
//! single-threaded one.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::Scope;

use anyhow::{Result, anyhow};
use tch::Tensor;

use crate::data::mix_seed;
use crate::lstm::Masks;
use crate::model::{Gradients, Seq2Seq};
use crate::optim::Adam;

/// Fewer rows than this per share are not worth a thread.
const MIN_ROWS_PER_SHARE: i64 = 8;

/// One share of a batch, sent to a helper.
struct Share {
    inputs: Tensor,
    targets: Tensor,
    masks: Masks,
}

/// A helper thread: shares in, (output, mean loss) back, its gradient in `gradient`.
struct Helper {
    shares: Sender<Share>,
    results: Receiver<(Tensor, Tensor)>,
    /// Laid out as the optimiser's gradient buffer; the helper writes it, this thread reads it
    /// once the helper's result has arrived.
    gradient: Tensor,
}

/// Runs [`Seq2Seq::forward_backward`] on a batch shared among threads, leaving the batch's
/// gradient in the optimiser's slots.
pub struct SharedStep<'a> {
    model: &'a Seq2Seq,
    /// This thread's share writes straight into the optimiser's slots.
    own: Gradients,
    buffer: Tensor,
    helpers: Vec<Helper>,
}

impl<'a> SharedStep<'a> {
    /// Starts `threads - 1` helpers in `scope`, each with its own handle on the weights and its
    /// own gradient buffer laid out as `optimizer`'s. They end when the value is dropped.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        model: &'a Seq2Seq,
        optimizer: &Adam,
        threads: usize,
    ) -> Self {
        let helpers = (1..threads.max(1))
            .map(|_| {
                let (shares, shares_in) = mpsc::channel::<Share>();
                let (results_out, results) = mpsc::channel();
                let gradient = optimizer.new_gradient_buffer();
                let replica = model.replica();
                let mut gradients = replica.gradients(|variable| optimizer.gradient_slot_in(&gradient, variable));
                scope.spawn(move || {
                    // OpenMP's thread count is per thread: a new one starts at every core.
                    tch::set_num_threads(1);
                    for share in shares_in {
                        let result =
                            replica.forward_backward_with_masks(&share.inputs, &share.targets, &mut gradients, share.masks);
                        if results_out.send(result).is_err() {
                            break;
                        }
                    }
                });
                Helper { shares, results, gradient }
            })
            .collect();
        let own = model.gradients(|variable| optimizer.gradient_slot(variable));
        Self { model, own, buffer: optimizer.gradient_buffer(), helpers }
    }

    /// Threads that share a batch (this one included).
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// How a batch of `rows` is split: as evenly as possible, the first shares one row longer,
    /// no share under [`MIN_ROWS_PER_SHARE`] rows (unless there is only one), at most `threads`.
    pub fn share_sizes(rows: i64, threads: usize) -> Vec<i64> {
        let shares = (rows / MIN_ROWS_PER_SHARE).clamp(1, threads.max(1) as i64);
        (0..shares).map(|share| rows / shares + i64::from(share < rows % shares)).collect()
    }

    /// The model's output and mean loss on the batch; its gradient is left in the optimiser's
    /// slots. With several shares, share `i` draws its dropout masks from
    /// `Masks::Seeded(mix_seed(seed ^ mix_seed(i)))` for `masks` `Seeded(seed)`.
    pub fn step(&mut self, inputs: &Tensor, targets: &Tensor, masks: Masks) -> Result<(Tensor, Tensor)> {
        let rows = inputs.size()[0];
        let sizes = Self::share_sizes(rows, self.threads());
        if sizes.len() == 1 {
            return Ok(self.model.forward_backward_with_masks(inputs, targets, &mut self.own, masks));
        }
        let share_masks = |share: usize| match masks {
            Masks::Global => Masks::Global,
            Masks::Seeded(seed) => Masks::Seeded(mix_seed(seed ^ mix_seed(share as u64))),
        };
        let input_shares = inputs.split_with_sizes(&sizes, 0);
        let target_shares = targets.split_with_sizes(&sizes, 0);
        let helpers = &self.helpers[..sizes.len() - 1];
        for (share, helper) in helpers.iter().enumerate() {
            let share = share + 1;
            let job = Share {
                inputs: input_shares[share].shallow_clone(),
                targets: target_shares[share].shallow_clone(),
                masks: share_masks(share),
            };
            helper.shares.send(job).map_err(|_| anyhow!("a training thread stopped"))?;
        }
        let (own_output, own_loss) =
            self.model.forward_backward_with_masks(&input_shares[0], &target_shares[0], &mut self.own, share_masks(0));
        // The batch's mean is the rows-weighted mean of the shares' means, for the loss and
        // its gradient alike; summed in share order, whatever order the helpers finish in.
        let weight = |share: usize| sizes[share] as f64 / rows as f64;
        let mut outputs = vec![own_output];
        let mut loss = own_loss * weight(0);
        tch::no_grad(|| -> Result<()> {
            let _ = self.buffer.g_mul_scalar_(weight(0));
            for (share, helper) in helpers.iter().enumerate() {
                let share = share + 1;
                let (output, share_loss) = helper.results.recv().map_err(|_| anyhow!("a training thread stopped"))?;
                let _ = self.buffer.g_add_(&(&helper.gradient * weight(share)));
                loss += share_loss * weight(share);
                outputs.push(output);
            }
            Ok(())
        })?;
        Ok((Tensor::cat(&outputs, 0), loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_never_too_small() {
        assert_eq!(SharedStep::share_sizes(32, 1), vec![32]);
        assert_eq!(SharedStep::share_sizes(32, 2), vec![16, 16]);
        assert_eq!(SharedStep::share_sizes(33, 2), vec![17, 16]);
        assert_eq!(SharedStep::share_sizes(32, 16), vec![8, 8, 8, 8]);
        assert_eq!(SharedStep::share_sizes(7, 4), vec![7]);
        assert_eq!(SharedStep::share_sizes(1000, 3), vec![334, 333, 333]);
        for (rows, threads) in [(1, 1), (24, 2), (1024, 16), (100, 7)] {
            assert_eq!(SharedStep::share_sizes(rows, threads).iter().sum::<i64>(), rows);
        }
    }
}
