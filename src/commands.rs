//! One function per subcommand: each validates its request, does the work, prints the result.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Result, bail};
use tch::{Device, nn};

use crate::checkpoint::{self, SavedConfig, Versions};
use crate::data::{BatchStream, Stream};
use crate::device::{DeviceChoice, describe, runtime_report};
use crate::evaluate::{self, Metrics};
use crate::model::{ModelConfig, ModelShape, Seq2Seq};
use crate::predict::{InputSource, Predictor};
use crate::problem::ProblemConfig;
use crate::train::{self, Progress, TrainConfig};
use crate::vocab::Alphabet;

/// Samples scored after training and by `evaluate` unless the user says otherwise.
pub const DEFAULT_EVALUATION_SAMPLES: usize = 10_000;
/// Evaluation needs no small batches: they only cost time.
pub const EVALUATION_BATCH_SIZE: usize = 1000;

/// Everything `train` needs.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub problem: ProblemConfig,
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub evaluation_samples: usize,
    pub device: DeviceChoice,
    pub out: Option<PathBuf>,
    pub progress: Progress,
}

/// Trains a model, scores it on fresh samples and saves it; returns its directory.
pub fn train(request: &TrainRequest) -> Result<PathBuf> {
    let TrainRequest { problem, model: model_config, training, .. } = request;
    problem.validate()?;
    model_config.validate()?;
    training.validate()?;
    if request.evaluation_samples == 0 {
        bail!("the number of evaluation samples must be at least 1");
    }
    let device = request.device.resolve()?;
    let out = checkpoint::prepare_output_dir(request.out.as_deref())?;

    let alphabet = Alphabet::addition();
    let shape =
        ModelShape { n_chars: alphabet.len(), input_len: problem.input_len(), output_len: problem.output_len() };
    // Weights are drawn on the CPU so that a seed gives the same start on every device.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new_seeded(&vs.root(), model_config, shape, training.seed);
    vs.set_device(device);

    let chatty = request.progress != Progress::Quiet;
    if chatty {
        println!(
            "Problem: {} terms, each 1..={}; inputs of {} characters, outputs of {}",
            problem.n_terms, problem.largest, shape.input_len, shape.output_len
        );
        println!("{}", model.summary());
        println!(
            "Training on {}: {} samples in batches of {}, {} epoch(s), seed {}",
            describe(device),
            training.samples,
            training.batch_size,
            training.epochs,
            training.seed
        );
    }
    let data = BatchStream::new(
        problem,
        &alphabet,
        training.seed,
        Stream::Training,
        training.samples,
        training.batch_size,
        device,
    );
    let outcome = train::train(&model, &vs, &data, training, request.progress)?;

    let evaluation = BatchStream::new(
        problem,
        &alphabet,
        training.seed,
        Stream::Evaluation,
        request.evaluation_samples,
        EVALUATION_BATCH_SIZE,
        device,
    );
    let metrics = evaluate::evaluate(&model, &evaluation);

    let config = SavedConfig {
        format_version: checkpoint::FORMAT_VERSION,
        problem: problem.clone(),
        alphabet: alphabet.as_string(),
        input_len: shape.input_len,
        output_len: shape.output_len,
        model: model_config.clone(),
        training: training.clone(),
        trained_on: describe(device),
        training_seconds: outcome.seconds,
        metrics,
        versions: Versions::current(),
    };
    // Saved before anything more is printed: a reader that goes away must not cost the model.
    checkpoint::save(&out, &config, &vs)?;
    println!("Trained in {:.1}s on {}. {}", outcome.seconds, describe(device), describe_metrics(&metrics));
    println!("Saved the model to {}", out.display());
    Ok(out)
}

fn describe_metrics(metrics: &Metrics) -> String {
    format!(
        "On {} fresh samples: loss {:.4}, character accuracy {:.2}%, sequence accuracy {:.2}%",
        metrics.samples,
        metrics.loss,
        100.0 * metrics.char_accuracy,
        100.0 * metrics.sequence_accuracy
    )
}

/// Everything `evaluate` needs.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    pub model_dir: PathBuf,
    pub samples: usize,
    /// Defaults to the training seed, which reproduces the figures saved in `config.json`.
    pub seed: Option<u64>,
    pub device: DeviceChoice,
    pub json: bool,
}

/// Scores a saved model on fresh samples.
pub fn evaluate(request: &EvaluateRequest) -> Result<Metrics> {
    if request.samples == 0 {
        bail!("the number of samples must be at least 1");
    }
    let device = request.device.resolve()?;
    let loaded = checkpoint::load(&request.model_dir, device)?;
    let seed = request.seed.unwrap_or(loaded.config.training.seed);
    let data = BatchStream::new(
        &loaded.config.problem,
        &loaded.alphabet,
        seed,
        Stream::Evaluation,
        request.samples,
        EVALUATION_BATCH_SIZE,
        device,
    );
    let metrics = evaluate::evaluate(&loaded.model, &data);
    if request.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        println!("{} (seed {seed}, {})", describe_metrics(&metrics), describe(device));
    }
    Ok(metrics)
}

/// Everything `predict` needs.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub model_dir: PathBuf,
    pub source: InputSource,
    pub batch_size: usize,
    pub device: DeviceChoice,
    pub json: bool,
}

/// Answers expressions with a saved model; fails (after answering the good lines) when any
/// line was rejected.
pub fn predict(request: &PredictRequest) -> Result<()> {
    if request.batch_size == 0 {
        bail!("the batch size must be at least 1");
    }
    let device = request.device.resolve()?;
    let loaded = checkpoint::load(&request.model_dir, device)?;
    // Someone typing at a terminal wants each answer as soon as the line is entered.
    let interactive = request.source == InputSource::Stdin && io::stdin().is_terminal();
    let predictor = Predictor {
        model: &loaded.model,
        problem: &loaded.config.problem,
        alphabet: &loaded.alphabet,
        device,
        batch_size: if interactive { 1 } else { request.batch_size },
        json: request.json,
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let summary = predictor.run(&request.source, &mut out, &mut io::stderr())?;
    out.flush()?;
    if summary.rejected > 0 {
        bail!(
            "{} of {} inputs were rejected (see the messages above)",
            summary.rejected,
            summary.rejected + summary.answered
        );
    }
    Ok(())
}

/// Prints versions, CUDA availability and the device count.
pub fn info() {
    println!("{}", runtime_report());
}
