//! The training loop: Adam on the task's loss, with progress reporting, periodic checkpoints,
//! Ctrl-C, and resumption at any batch.

pub mod interrupt;
pub mod patience;
pub mod shared_step;

use std::io::IsTerminal;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::{BatchStream, mix_seed};
use crate::evaluate::{DEFAULT_EVALUATION_SAMPLES, MetricSums, Metrics};
use crate::nn::lstm::Masks;
use crate::nn::model::Seq2Seq;
use crate::nn::optim::{Adam, Betas};
use crate::output::BestEffort;
use crate::task::OperatorWeights;
use interrupt::StopSignal;
use shared_step::SharedStep;

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
    /// Fresh samples scored when training ends.
    #[serde(default = "default_evaluation_samples")]
    pub evaluation_samples: usize,
    /// Samples between checkpoints of the model directory (none when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Minutes of training between checkpoints, whatever the samples (0: none), so that a run
    /// killed outright (SIGKILL, the out-of-memory killer, a power cut) loses at most this much.
    /// Runs recorded before it existed get the default.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    /// Samples between rows of `metrics.csv` (`None`: [`TrainConfig::log_every_samples`]'s default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_every: Option<usize>,
    /// Samples scored for the validation columns of each `metrics.csv` row (at most the held-out
    /// pairs of your own data); 0: no validation columns. Runs recorded before it existed
    /// scored [`DEFAULT_VALIDATION_SAMPLES`].
    #[serde(default = "default_validation_samples")]
    pub validation_samples: usize,
    /// How the learning rate moves over the run (after any warm-up).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Samples over which the learning rate rises linearly from near 0 to `learning_rate`.
    #[serde(default)]
    pub warmup: usize,
    /// Where a decaying schedule ends, at the last sample.
    #[serde(default)]
    pub final_learning_rate: f64,
    /// CPU threads sharing each batch's rows (the weights depend on it; see [`crate::train::shared_step`]).
    #[serde(default = "one_thread")]
    pub threads: usize,
    /// Samples over which a generated arithmetic problem's terms grow from one digit to all of
    /// them (see [`crate::data::generated::Generated::with_curriculum`]); 0: none, the reference.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub curriculum: usize,
    /// How often a generated arithmetic problem's training samples draw each operator; `None`:
    /// uniformly, the reference. Evaluation and validation samples are drawn uniformly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_weights: Option<OperatorWeights>,
    /// Each batch's gradient is scaled down to at most this L2 norm over every weight
    /// together (PyTorch's `clip_grad_norm_`); `None`: no clipping, the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Adam's decay rates of its moments; PyTorch's and Keras's 0.9 and 0.999 unless set, and
    /// then left out of config.json as before the option existed.
    #[serde(default, skip_serializing_if = "Betas::is_default")]
    pub adam_betas: Betas,
    /// Stop once this many validation rows of `metrics.csv` in a row have not improved on the
    /// best validation loss before them ([`patience`]); `None`: train to the end, the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// The finished model holds the weights of the validation row with the lowest validation
    /// loss, not the last step's (Keras's `restore_best_weights`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub restore_best: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn is_zero(samples: &usize) -> bool {
    *samples == 0
}

/// `--log-every`: how often `metrics.csv` gains a row. Rows also come at each epoch's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCadence {
    /// Every this many samples.
    Samples(usize),
    /// At each epoch's end only: Keras's cadence, which makes `--patience` count epochs.
    Epoch,
}

impl LogCadence {
    /// The samples between rows, for a run of `epoch_samples` per epoch.
    pub fn samples(self, epoch_samples: usize) -> usize {
        match self {
            LogCadence::Samples(samples) => samples,
            LogCadence::Epoch => epoch_samples,
        }
    }
}

impl std::str::FromStr for LogCadence {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "epoch" {
            return Ok(LogCadence::Epoch);
        }
        text.parse()
            .map(LogCadence::Samples)
            .map_err(|_| format!("{text:?} is neither a number of samples nor `epoch`"))
    }
}

/// The learning rate's course over a run, after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The learning rate throughout.
    #[default]
    Constant,
    /// A straight line down to the final learning rate.
    Linear,
    /// Half a cosine down to the final learning rate.
    Cosine,
}

fn one_thread() -> usize {
    1
}

/// [`TrainConfig::checkpoint_minutes`] unless the user says otherwise: a checkpoint of the
/// reference model takes milliseconds, one of a large vocabulary's a second.
pub const DEFAULT_CHECKPOINT_MINUTES: f64 = 10.0;

fn default_checkpoint_minutes() -> f64 {
    DEFAULT_CHECKPOINT_MINUTES
}

fn default_evaluation_samples() -> usize {
    DEFAULT_EVALUATION_SAMPLES
}

/// [`TrainConfig::validation_samples`] unless the user says otherwise: enough for a smooth
/// curve, few enough to score at every row in a fraction of the row's training time.
pub const DEFAULT_VALIDATION_SAMPLES: usize = 1000;

fn default_validation_samples() -> usize {
    DEFAULT_VALIDATION_SAMPLES
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            samples: 75_000,
            batch_size: 32,
            epochs: 1,
            learning_rate: 0.001,
            seed: 1,
            evaluation_samples: DEFAULT_EVALUATION_SAMPLES,
            checkpoint_every: None,
            checkpoint_minutes: DEFAULT_CHECKPOINT_MINUTES,
            log_every: None,
            validation_samples: DEFAULT_VALIDATION_SAMPLES,
            lr_schedule: LrSchedule::Constant,
            warmup: 0,
            final_learning_rate: 0.0,
            threads: 1,
            curriculum: 0,
            operator_weights: None,
            max_grad_norm: None,
            adam_betas: Betas::default(),
            patience: None,
            restore_best: false,
        }
    }
}

/// Most samples per epoch (and scored at the end): a billion.
pub const MAX_SAMPLES: usize = 1_000_000_000;
/// Largest batch: a million samples.
pub const MAX_BATCH_SIZE: usize = 1_000_000;
/// Most epochs.
pub const MAX_EPOCHS: usize = 1_000_000;
/// Most threads sharing a batch (and `--threads` of any command): far more than these models
/// use, few enough to start in a moment.
pub const MAX_THREADS: usize = 256;

/// Rows of `metrics.csv` in a run without `--log-every`: enough for a smooth curve, few enough
/// that scoring the validation samples costs little.
const DEFAULT_LOG_ROWS: usize = 20;

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, value, most) in [
            ("the number of training samples", self.samples, MAX_SAMPLES),
            ("the batch size", self.batch_size, MAX_BATCH_SIZE),
            ("the number of epochs", self.epochs, MAX_EPOCHS),
            ("the number of evaluation samples", self.evaluation_samples, MAX_SAMPLES),
        ] {
            if !(1..=most).contains(&value) {
                bail!("{name} must be between 1 and {most}, got {value}");
            }
        }
        // Above f32's range the step itself overflows.
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("the learning rate must be a positive number, got {}", self.learning_rate);
        }
        if self.learning_rate > f32::MAX as f64 {
            bail!(
                "the learning rate must be at most {:e} (the largest float32), got {:e}",
                f32::MAX,
                self.learning_rate
            );
        }
        if self.checkpoint_every == Some(0) {
            bail!("--checkpoint-every must be at least 1 sample");
        }
        if !(self.checkpoint_minutes.is_finite() && self.checkpoint_minutes >= 0.0) {
            bail!(
                "--checkpoint-minutes must be a number of minutes, at least 0 (none), got {}",
                self.checkpoint_minutes
            );
        }
        if self.log_every == Some(0) {
            bail!("--log-every must be at least 1 sample");
        }
        if !(self.final_learning_rate.is_finite() && self.final_learning_rate >= 0.0) {
            bail!("the final learning rate must be a number at least 0, got {}", self.final_learning_rate);
        }
        if self.final_learning_rate > self.learning_rate {
            bail!(
                "the final learning rate ({}) is above the learning rate ({}): a schedule only decays",
                self.final_learning_rate,
                self.learning_rate
            );
        }
        if self.lr_schedule == LrSchedule::Constant && self.final_learning_rate != 0.0 {
            bail!("a final learning rate needs a decaying schedule (--lr-schedule linear or cosine)");
        }
        if self.curriculum > self.samples {
            bail!(
                "--curriculum {} is longer than an epoch's {} samples: each epoch draws the same samples, so the \
                 terms would never reach their whole range",
                self.curriculum,
                self.samples
            );
        }
        if let Some(norm) = self.max_grad_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            bail!("--max-grad-norm must be a positive number, got {norm}");
        }
        self.adam_betas.check().map_err(anyhow::Error::msg)?;
        if self.patience == Some(0) {
            bail!("--patience must be at least 1 validation row");
        }
        if self.validation_samples > MAX_SAMPLES {
            bail!("--validation-samples must be at most {MAX_SAMPLES}, got {}", self.validation_samples);
        }
        if self.validation_samples == 0 {
            for (flag, used) in [("--patience", self.patience.is_some()), ("--restore-best", self.restore_best)] {
                if used {
                    bail!("{flag} watches the validation rows, which --validation-samples 0 leaves out");
                }
            }
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            bail!("--threads must be between 1 and {MAX_THREADS}, got {}", self.threads);
        }
        Ok(())
    }

    /// The learning rate of the step that starts after `samples_seen` samples: rising over the
    /// warm-up to `learning_rate` at its end, then following the schedule to
    /// `final_learning_rate` at the end of the run. A function of the position alone, so that a
    /// resumed run takes the same steps; without warm-up or schedule, exactly `learning_rate`.
    pub fn learning_rate_at(&self, samples_seen: usize) -> f64 {
        let next = samples_seen.saturating_add(self.batch_size) as f64;
        if samples_seen < self.warmup {
            return self.learning_rate * (next / self.warmup as f64).min(1.0);
        }
        let (span, done) = (self.total_samples().saturating_sub(self.warmup), samples_seen - self.warmup);
        let progress = if span == 0 { 1.0 } else { (done as f64 / span as f64).min(1.0) };
        let remaining = match self.lr_schedule {
            LrSchedule::Constant => return self.learning_rate,
            LrSchedule::Linear => 1.0 - progress,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * remaining
    }

    /// Samples between metrics reports: `log_every`, or a twentieth of the run but at least one batch.
    pub fn log_every_samples(&self) -> usize {
        self.log_every.unwrap_or_else(|| (self.total_samples() / DEFAULT_LOG_ROWS).max(self.batch_size))
    }

    /// Samples in the whole run.
    pub fn total_samples(&self) -> usize {
        self.samples.saturating_mul(self.epochs)
    }
}

/// Where a run stands: the next batch to train is step `step` of epoch `epoch` (both 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    pub step: usize,
}

impl Position {
    /// Samples trained on before this position.
    pub fn samples_seen(&self, config: &TrainConfig) -> usize {
        let steps = self.step.saturating_mul(config.batch_size).min(config.samples);
        self.epoch * config.samples + steps
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

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainOutcome {
    Finished {
        seconds: f64,
    },
    /// `on_report` asked to stop (early stopping): the weights are those after `position`,
    /// and no checkpoint was written for it.
    StoppedEarly {
        position: Position,
        seconds: f64,
    },
    /// A stop signal: stopped at `position`, after the checkpoint was written (or, stopped
    /// before a resumed run's first step, with the checkpoint it resumed from).
    Interrupted {
        position: Position,
        seconds: f64,
        signal: StopSignal,
    },
}

/// The running figures at one report of the metrics log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Samples trained on so far, over all epochs (a resumed run counts those before it).
    pub samples_seen: usize,
    /// 0-based.
    pub epoch: usize,
    pub elapsed_seconds: f64,
    /// Means over the samples since the previous report (or the start of the epoch).
    pub running: Metrics,
    /// The L2 norm of the last batch's gradient before the report, before any clipping.
    pub gradient_norm: f64,
}

/// When the loop calls `on_report`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReportDue<'r> {
    /// A row of the log: every [`TrainConfig::log_every_samples`] samples and at each epoch's end.
    Row(&'r Report),
    /// A resumed run, before its first step. If a stop signal cut short the validation of the row
    /// at the checkpoint's position, that row can be scored now: the weights are the ones it was
    /// to score, so the row, and what early stopping makes of it, are the uninterrupted run's.
    Resumed,
}

/// What the run does after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReport {
    GoOn,
    /// Stop here, as if the run had ended (early stopping).
    Stop,
}

/// Steps between read-backs of the running metrics (each one synchronises a GPU).
const READ_EVERY_STEPS: usize = 50;

/// The model's forward pass (no gradients, dropout off) as the loop shares it among its threads.
pub type Forward<'a> = dyn Fn(&Tensor) -> Result<Tensor> + 'a;

/// What the loop needs besides the model and the data.
pub struct TrainLoop<'a> {
    pub config: &'a TrainConfig,
    pub progress: Progress,
    /// Where to start: the beginning, or a checkpoint's position.
    pub start: Position,
    /// Seconds already trained before `start` (a resumed run keeps counting).
    pub seconds_before: f64,
    /// Writes a checkpoint for a position (every `checkpoint_every` samples, and on Ctrl-C).
    pub save_checkpoint: &'a mut dyn FnMut(Position, &Adam, f64) -> Result<()>,
    /// Receives a report every [`TrainConfig::log_every_samples`] samples and at each epoch's end,
    /// with the model's forward pass shared among the training threads. It may score the model
    /// (without gradients, in evaluation mode): that changes nothing here.
    pub on_report: &'a mut dyn FnMut(ReportDue<'_>, &Forward<'_>) -> Result<AfterReport>,
    /// Standard output for the progress: a failure there silences it and training goes on.
    pub console: &'a mut BestEffort,
}

/// Fits `model` to the batches of `data` with `optimizer`, from `run.start` to the end.
pub fn train(model: &Seq2Seq, optimizer: &mut Adam, data: &BatchStream, run: TrainLoop<'_>) -> Result<TrainOutcome> {
    // Only the CPU shares batches; a GPU takes a batch whole.
    let threads = if model.shares_batches() { run.config.threads } else { 1 };
    thread::scope(|scope| {
        let mut shared = SharedStep::start(scope, model, optimizer, threads, run.config.max_grad_norm);
        if threads > 1 {
            // Each share's thread runs libtorch on one thread, this one included.
            tch::set_num_threads(1);
        }
        train_steps(model, optimizer, data, &mut shared, run)
    })
}

/// The loop of [`train`], each step's gradient from `shared`.
fn train_steps(
    model: &Seq2Seq,
    optimizer: &mut Adam,
    data: &BatchStream,
    shared: &mut SharedStep<'_>,
    run: TrainLoop<'_>,
) -> Result<TrainOutcome> {
    let uses_dropout = model.config().dropout > 0.0;
    let shape = model.shape();
    let config = run.config;
    let total = config.total_samples();
    let mut reporter = Reporter::new(run.progress, total, config.epochs, run.console);
    reporter.advance(run.start.samples_seen(config));
    let start = Instant::now();
    let elapsed = || run.seconds_before + start.elapsed().as_secs_f64();
    interrupt::install();
    let mut samples_at_last_checkpoint = run.start.samples_seen(config);
    // At most a year: Duration cannot hold every f64.
    let checkpoint_interval = (config.checkpoint_minutes > 0.0)
        .then(|| Duration::from_secs_f64(config.checkpoint_minutes.min(525_600.0) * 60.0));
    let mut last_checkpoint = Instant::now();
    let log_every = config.log_every_samples();
    let mut samples_at_last_report = run.start.samples_seen(config);
    if samples_at_last_report > 0 {
        let after = (run.on_report)(ReportDue::Resumed, &|inputs| shared.forward(inputs))?;
        if let Some(signal) = interrupt::requested() {
            reporter.finish();
            return Ok(TrainOutcome::Interrupted { position: run.start, seconds: elapsed(), signal });
        }
        if after == AfterReport::Stop {
            reporter.finish();
            return Ok(TrainOutcome::StoppedEarly { position: run.start, seconds: elapsed() });
        }
    }
    for epoch in run.start.epoch..config.epochs {
        let mut sums = MetricSums::new(data.device(), shape.output).for_task(data.task());
        // The epoch's running sums when the previous report was made: a report covers the difference.
        let mut reported = Metrics::default();
        let steps = data.num_batches();
        let first_step = if epoch == run.start.epoch { run.start.step } else { 0 };
        for step in first_step..steps {
            // Dropout masks from (seed, step) alone, so that a resumed run draws the same ones.
            let mask_seed = mix_seed(config.seed ^ mix_seed((epoch * steps + step) as u64));
            let masks = if shared.threads() > 1 { Masks::Seeded(mask_seed) } else { Masks::Global };
            if uses_dropout && masks == Masks::Global {
                tch::manual_seed(mask_seed as i64);
            }
            let batch = data.batch_of_epoch(epoch, step);
            optimizer.set_learning_rate(config.learning_rate_at(Position { epoch, step }.samples_seen(config)));
            let (output, loss) = shared.step(&batch.inputs, &batch.targets, masks, optimizer)?;
            sums.add(&output, &batch.targets, &loss, batch.size);
            reporter.advance(batch.size);

            let next = Position { epoch, step: step + 1 };
            let samples_seen = next.samples_seen(config);
            let checkpoint_due =
                config.checkpoint_every.is_some_and(|every| samples_seen / every > samples_at_last_checkpoint / every)
                    || checkpoint_interval.is_some_and(|interval| last_checkpoint.elapsed() >= interval);
            let signal = interrupt::requested();
            let stop = signal.is_some();
            let epoch_ends = step + 1 == steps;
            let report_due = epoch_ends || samples_seen / log_every > samples_at_last_report / log_every;
            if (step + 1) % READ_EVERY_STEPS == 0 || epoch_ends || checkpoint_due || stop || report_due {
                let running = sums.read();
                if let Some(batch) = sums.first_non_finite_batch() {
                    reporter.finish();
                    let diverged_at = Position { epoch, step: first_step + batch }.samples_seen(config);
                    let before = match diverged_at {
                        0 => "at the first batch".to_owned(),
                        samples => format!("after {samples} samples"),
                    };
                    bail!(
                        "training diverged: the loss became {} at step {} of epoch {} ({before}); \
                         no checkpoint was written after it",
                        running.loss,
                        first_step + batch + 1,
                        epoch + 1,
                    );
                }
                reporter.show(epoch, &running, start.elapsed(), samples_seen - run.start.samples_seen(config));
                if report_due {
                    let report = Report {
                        samples_seen,
                        epoch,
                        elapsed_seconds: elapsed(),
                        running: running.since(&reported),
                        gradient_norm: optimizer.gradient_norm(),
                    };
                    let after = (run.on_report)(ReportDue::Row(&report), &|inputs| shared.forward(inputs))?;
                    reported = running;
                    samples_at_last_report = samples_seen;
                    if after == AfterReport::Stop && samples_seen < total {
                        reporter.finish();
                        return Ok(TrainOutcome::StoppedEarly { position: next, seconds: elapsed() });
                    }
                }
            }
            // A stop that arrived during the report (cutting its validation short) is taken here,
            // at the row's position, so that the resumed run scores the row with these weights;
            // even after the last step, whose row is the run's last.
            let signal = signal.or_else(interrupt::requested);
            if checkpoint_due || signal.is_some() {
                // A finished run is saved whole by the caller; no checkpoint is needed at its end.
                let finished = samples_seen == total;
                if !finished || signal.is_some() {
                    (run.save_checkpoint)(next, optimizer, elapsed())?;
                    samples_at_last_checkpoint = samples_seen;
                    last_checkpoint = Instant::now();
                }
                if let Some(signal) = signal {
                    reporter.finish();
                    return Ok(TrainOutcome::Interrupted { position: next, seconds: elapsed(), signal });
                }
            }
        }
    }
    reporter.finish();
    Ok(TrainOutcome::Finished { seconds: elapsed() })
}

/// Draws the progress bar or prints the progress lines.
struct Reporter<'a> {
    console: &'a mut BestEffort,
    mode: Progress,
    bar: Option<ProgressBar>,
    total: usize,
    epochs: usize,
    done: usize,
    next_line_at: usize,
}

impl<'a> Reporter<'a> {
    fn new(mode: Progress, total: usize, epochs: usize, console: &'a mut BestEffort) -> Self {
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
        Self { console, mode, bar, total, epochs, done: 0, next_line_at: total.div_ceil(10).max(1) }
    }

    fn advance(&mut self, samples: usize) {
        self.done += samples;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    /// `trained` samples were trained in `elapsed` by this process (a resumed run started later).
    fn show(&mut self, epoch: usize, running: &Metrics, elapsed: Duration, trained: usize) {
        let rate = trained as f64 / elapsed.as_secs_f64().max(1e-9);
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
                self.console
                    .line(format!("{epoch_label}{}/{} samples {figures} ETA {remaining:.0}s", self.done, self.total));
                while self.next_line_at <= self.done {
                    self.next_line_at += self.total.div_ceil(10).max(1);
                }
            }
            Progress::Lines | Progress::Quiet => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            // indicatif leaves the cursor at the end of the bar's line.
            self.console.line("");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_follows_its_schedule() {
        let constant = TrainConfig { samples: 1000, batch_size: 10, ..TrainConfig::default() };
        assert!((0..1000).step_by(10).all(|seen| constant.learning_rate_at(seen) == constant.learning_rate));
        let cosine = TrainConfig {
            learning_rate: 0.01,
            final_learning_rate: 0.001,
            lr_schedule: LrSchedule::Cosine,
            warmup: 100,
            ..constant.clone()
        };
        // Up over the warm-up: the first step at a tenth, the last at the peak.
        assert!((cosine.learning_rate_at(0) - 0.001).abs() < 1e-12);
        assert!((cosine.learning_rate_at(90) - 0.01).abs() < 1e-12);
        let rates: Vec<f64> = (100..1000).step_by(10).map(|seen| cosine.learning_rate_at(seen)).collect();
        assert!((rates[0] - 0.01).abs() < 1e-12);
        assert!(rates.windows(2).all(|pair| pair[1] < pair[0]), "decays at every step");
        assert!((cosine.learning_rate_at(550) - 0.0055).abs() < 1e-12, "halfway: halfway down");
        assert!(rates[rates.len() - 1] - 0.001 < 1e-4 && rates[rates.len() - 1] > 0.001);
        let linear = TrainConfig { lr_schedule: LrSchedule::Linear, warmup: 0, ..cosine.clone() };
        assert!((linear.learning_rate_at(500) - 0.0055).abs() < 1e-12);
        assert!((linear.learning_rate_at(250) - 0.00775).abs() < 1e-12);
        // A second epoch continues the same course.
        let two_epochs = TrainConfig { epochs: 2, samples: 500, ..linear };
        assert!((two_epochs.learning_rate_at(500) - 0.0055).abs() < 1e-12);
    }

    #[test]
    fn rejects_zero_sizes_and_bad_learning_rates() {
        let reference = TrainConfig::default();
        assert!(reference.validate().is_ok());
        assert!(TrainConfig { batch_size: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { samples: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { epochs: 0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { learning_rate: f64::NAN, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { learning_rate: -1.0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { final_learning_rate: 0.01, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { final_learning_rate: 1e-4, ..reference.clone() }.validate().is_err(), "constant");
        let cosine = TrainConfig { final_learning_rate: 1e-4, lr_schedule: LrSchedule::Cosine, ..reference.clone() };
        assert!(cosine.validate().is_ok());
        assert!(TrainConfig { final_learning_rate: f64::INFINITY, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { checkpoint_minutes: -1.0, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { checkpoint_minutes: f64::NAN, ..reference.clone() }.validate().is_err());
        assert!(TrainConfig { checkpoint_minutes: 0.0, ..reference.clone() }.validate().is_ok(), "none");
        assert!(TrainConfig { threads: 0, ..reference }.validate().is_err());
    }
}
