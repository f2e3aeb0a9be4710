//! `info`: the machine's versions and devices, or with `--model DIR` what a saved model is (its
//! problem, layers, training and scores), read from its directory and checked as `predict`
//! would load it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use tch::Device;

use crate::commands::evaluate::describe_evaluation;
use crate::evaluate::Evaluation;
use crate::nn::device::RuntimeInfo;
use crate::nn::model::ModelConfig;
use crate::nn::optim::Betas;
use crate::output::Report;
use crate::store::checkpoint::{self, Versions};
use crate::train::{DEFAULT_VALIDATION_SAMPLES, LrSchedule, TrainConfig};

impl Report for RuntimeInfo {
    fn text(&self) -> String {
        self.describe()
    }
}

/// Versions, CUDA availability, the device count and threads.
pub fn info() -> RuntimeInfo {
    RuntimeInfo::now()
}

/// Whether a model directory's training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Finished,
    /// A run that `train --resume` continues.
    Checkpoint,
}

/// What a saved model is.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub model: PathBuf,
    pub state: ModelState,
    pub samples_trained: usize,
    /// Of the whole run: every epoch's samples.
    pub samples_planned: usize,
    pub training_seconds: f64,
    pub trained_on: String,
    pub problem: String,
    pub parameters: i64,
    pub architecture: ModelConfig,
    pub training: TrainConfig,
    /// The held-out samples of a model of your own data (`None`: generated samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<usize>,
    /// With `--restore-best`: the samples seen at the validation row whose weights it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_best_after: Option<u64>,
    /// The scores `train` gave the finished model (none for a checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Evaluation>,
    pub versions: Versions,
    /// The layer table, as `train` prints it.
    #[serde(skip)]
    layers: String,
    /// The scores in words.
    #[serde(skip)]
    scores_text: Option<String>,
}

/// Reads the model directory `dir` (weights included, so that a damaged one is named here) and
/// says what it holds.
pub fn model_info(dir: &Path) -> Result<ModelInfo> {
    let loaded = checkpoint::load(dir, Device::Cpu)?;
    let config = loaded.config;
    let planned = config.training.total_samples();
    let (state, trained) = match &config.checkpoint {
        Some(position) => (ModelState::Checkpoint, position.samples_seen(&config.training)),
        None => (ModelState::Finished, config.stopped_early_after.unwrap_or(planned)),
    };
    let scores_text = config.metrics.as_ref().map(|scores| describe_evaluation(&config.task, scores));
    Ok(ModelInfo {
        model: dir.to_owned(),
        state,
        samples_trained: trained,
        samples_planned: planned,
        training_seconds: config.training_seconds,
        trained_on: config.trained_on.clone(),
        problem: config.task.describe(),
        parameters: loaded.model.parameter_count(),
        layers: loaded.model.summary(),
        architecture: config.model.clone(),
        training: config.training.clone(),
        held_out: config.task.held_out(),
        restored_best_after: config.restored_best_after,
        scores: config.metrics.clone(),
        scores_text,
        versions: config.versions.clone(),
    })
}

impl Report for ModelInfo {
    fn text(&self) -> String {
        let dir = self.model.display();
        let (seconds, device) = (self.training_seconds, &self.trained_on);
        let state = match self.state {
            ModelState::Checkpoint => format!(
                "a checkpoint after {} of {} samples ({seconds:.1} s of training on {device}); continue with: \
                 seq2seq train --resume {dir}",
                self.samples_trained, self.samples_planned
            ),
            ModelState::Finished => {
                let early = match self.samples_trained < self.samples_planned {
                    true => format!(" (stopped early, of {} planned)", self.samples_planned),
                    false => String::new(),
                };
                let best = match self.restored_best_after {
                    Some(at) => format!("; the weights of its best validation row, after {at} samples"),
                    None => String::new(),
                };
                format!(
                    "a finished model, trained on {} samples{early} in {seconds:.1} s on {device}{best}",
                    self.samples_trained
                )
            }
        };
        let scores =
            self.scores_text.clone().unwrap_or_else(|| format!("Not scored yet: seq2seq evaluate --model {dir}"));
        let Versions { seq2seq, libtorch } = &self.versions;
        [
            format!("{dir}: {state}"),
            format!("Problem: {}", self.problem),
            self.layers.clone(),
            format!("Training: {}", describe_training(&self.training, self.held_out)),
            scores,
            format!("Written by seq2seq {seq2seq} on libtorch {libtorch}"),
        ]
        .join("\n")
    }
}

/// `batches of 32, 1 epoch of 75000 samples, Adam at 0.001, seed 1, 1 thread`, with the
/// schedule, curriculum and operator weights where the run had them.
fn describe_training(training: &TrainConfig, held_out: Option<usize>) -> String {
    let plural = |count: usize, one: &str| if count == 1 { format!("1 {one}") } else { format!("{count} {one}s") };
    let mut parts = vec![
        format!("batches of {}", training.batch_size),
        format!("{} of {} samples", plural(training.epochs, "epoch"), training.samples),
        format!("Adam at {}", training.learning_rate),
    ];
    if training.warmup > 0 {
        parts.push(format!("warm-up over {} samples", training.warmup));
    }
    let decay = match training.lr_schedule {
        LrSchedule::Constant => None,
        LrSchedule::Linear => Some("linear"),
        LrSchedule::Cosine => Some("cosine"),
    };
    if let Some(decay) = decay {
        parts.push(format!("{decay} decay to {}", training.final_learning_rate));
    }
    if training.curriculum > 0 {
        parts.push(format!("curriculum over {} samples", training.curriculum));
    }
    if let Some(weights) = &training.operator_weights {
        parts.push(format!("operators drawn {weights}"));
    }
    if let Some(norm) = training.max_grad_norm {
        parts.push(format!("gradients clipped to norm {norm}"));
    }
    if !training.adam_betas.is_default() {
        let Betas(beta1, beta2) = training.adam_betas;
        parts.push(format!("Adam's betas {beta1} and {beta2}"));
    }
    if let Some(rows) = training.patience {
        parts.push(format!("early stopping after {} without a better validation loss", plural(rows, "row")));
    }
    if training.restore_best {
        parts.push("the best validation row's weights kept".to_owned());
    }
    // Your own data's rows score at most its held-out part.
    match (training.validation_samples, held_out) {
        (0, _) => parts.push("no validation rows".to_owned()),
        (DEFAULT_VALIDATION_SAMPLES, _) => {}
        (samples, held_out) => {
            let scored = held_out.map_or(samples, |held_out| held_out.min(samples));
            parts.push(format!("validation rows on {}", plural(scored, "sample")));
        }
    }
    parts.push(format!("seed {}", training.seed));
    parts.push(plural(training.threads, "thread"));
    parts.join(", ")
}
