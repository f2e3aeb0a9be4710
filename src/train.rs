//! The training loop: Adam on the mean cross-entropy, with progress reporting.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};

use crate::data::{BatchStream, mix_seed};
use crate::evaluate::{MetricSums, Metrics};
use crate::model::Seq2Seq;

/// How the model is fitted. `Default` is the reference: 75,000 samples in batches of 32,
/// one epoch, Adam with learning rate 0.001.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Samples per epoch. Each epoch visits the same samples, in a new batch order.
    pub samples: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Seeds the initial weights and every sample.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { samples: 75_000, batch_size: 32, epochs: 1, learning_rate: 0.001, seed: 1 }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            bail!("the number of training samples must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        if self.epochs == 0 {
            bail!("the number of epochs must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("the learning rate must be a positive number, got {}", self.learning_rate);
        }
        Ok(())
    }
}

/// How training reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live progress bar (stdout is a terminal).
    Bar,
    /// A plain line at every tenth of the run (stdout is a file or a pipe).
    Lines,
    Quiet,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn for_stdout(quiet: bool) -> Self {
        match (quiet, std::io::stdout().is_terminal()) {
            (true, _) => Progress::Quiet,
            (false, true) => Progress::Bar,
            (false, false) => Progress::Lines,
        }
    }
}

/// What a finished training run reports.
#[derive(Debug, Clone, Copy)]
pub struct TrainOutcome {
    /// Wall time of the loop, data generation included.
    pub seconds: f64,
}

/// Steps between read-backs of the running metrics (each one synchronises a GPU).
const READ_EVERY_STEPS: usize = 50;

/// Fits `model` (whose variables live in `vs`) to the batches of `data`.
pub fn train(
    model: &Seq2Seq,
    vs: &nn::VarStore,
    data: &BatchStream,
    config: &TrainConfig,
    progress: Progress,
) -> Result<TrainOutcome> {
    let mut optimizer = nn::Adam::default().build(vs, config.learning_rate)?;
    let mut reporter = Reporter::new(progress, data.samples() * config.epochs, config.epochs);
    let start = Instant::now();
    for epoch in 0..config.epochs {
        let shape = model.shape();
        let mut sums = MetricSums::new(data.device(), shape.features, shape.output_len);
        let order = batch_order(data.num_batches(), config.seed, epoch);
        for (step, &index) in order.iter().enumerate() {
            let batch = data.batch(index);
            let output = model.forward_t(&batch.inputs, true);
            let loss = model.loss(&output, &batch.targets);
            optimizer.backward_step(&loss);
            sums.add(&output, &batch.targets, &loss, batch.size);
            reporter.advance(batch.size);
            if (step + 1) % READ_EVERY_STEPS == 0 || step + 1 == order.len() {
                let running = sums.read();
                if !running.loss.is_finite() {
                    reporter.finish();
                    bail!(
                        "training diverged: the running loss became {} by step {} of epoch {}",
                        running.loss,
                        step + 1,
                        epoch + 1
                    );
                }
                reporter.show(epoch, &running, start.elapsed());
            }
        }
    }
    reporter.finish();
    Ok(TrainOutcome { seconds: start.elapsed().as_secs_f64() })
}

/// The first epoch takes batches in stream order; each later one in a seeded shuffle, so
/// that the same batches are seen in a new order (as Keras shuffles each epoch).
fn batch_order(num_batches: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..num_batches).collect();
    if epoch > 0 {
        order.shuffle(&mut StdRng::seed_from_u64(mix_seed(seed) ^ mix_seed(epoch as u64)));
    }
    order
}

/// Draws the progress bar or prints the progress lines.
struct Reporter {
    mode: Progress,
    bar: Option<ProgressBar>,
    total: usize,
    epochs: usize,
    done: usize,
    next_line_at: usize,
}

impl Reporter {
    fn new(mode: Progress, total: usize, epochs: usize) -> Self {
        let bar = (mode == Progress::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
            let style =
                // Fits an 80-column terminal: a bar that wraps redraws badly.
                ProgressStyle::with_template("{prefix}[{bar:16}] {human_pos}/{human_len} {msg} ETA {eta}")
                    .expect("the progress template is valid")
                    .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self { mode, bar, total, epochs, done: 0, next_line_at: total.div_ceil(10) }
    }

    fn advance(&mut self, samples: usize) {
        self.done += samples;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    fn show(&mut self, epoch: usize, running: &Metrics, elapsed: Duration) {
        let rate = self.done as f64 / elapsed.as_secs_f64().max(1e-9);
        let figures = match (running.char_accuracy, running.sequence_accuracy) {
            (Some(chars), Some(sequences)) => {
                format!("loss {:.4} acc {:.1}% seq {:.1}% {rate:.0}/s", running.loss, 100.0 * chars, 100.0 * sequences)
            }
            _ => format!("mse {:.5} {rate:.0}/s", running.loss),
        };
        let epoch_label = if self.epochs > 1 { format!("epoch {}/{} ", epoch + 1, self.epochs) } else { String::new() };
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_prefix(epoch_label);
                    bar.set_message(figures);
                }
            }
            Progress::Lines if self.done >= self.next_line_at || self.done == self.total => {
                let remaining = (self.total - self.done) as f64 / rate;
                println!("{epoch_label}{}/{} samples {figures} ETA {remaining:.0}s", self.done, self.total);
                let _ = std::io::stdout().flush();
                while self.next_line_at <= self.done {
                    self.next_line_at += self.total.div_ceil(10);
                }
            }
            Progress::Lines | Progress::Quiet => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            // indicatif leaves the cursor at the end of the bar's line.
            println!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_epoch_in_order_later_epochs_shuffled_and_reproducible() {
        assert_eq!(batch_order(5, 1, 0), vec![0, 1, 2, 3, 4]);
        let second = batch_order(100, 1, 1);
        assert_ne!(second, (0..100).collect::<Vec<_>>());
        assert_eq!(second, batch_order(100, 1, 1));
        let mut sorted = second.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn rejects_zero_sizes_and_bad_learning_rates() {
        let reference = TrainConfig::default();
        assert!(reference.validate().is_ok());
        assert!(TrainConfig { batch_size: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { samples: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { epochs: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { learning_rate: f64::NAN, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { learning_rate: -1.0, ..reference }.validate().is_err());
    }
}
