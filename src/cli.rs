//! The command line: clap definitions, turned into plain requests at the door.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::commands::{self, DEFAULT_EVALUATION_SAMPLES, EvaluateRequest, PredictRequest, TrainRequest};
use crate::device::DeviceChoice;
use crate::model::ModelConfig;
use crate::predict::{DEFAULT_BATCH_SIZE, InputSource};
use crate::problem::ProblemConfig;
use crate::train::{Progress, TrainConfig};

const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("SEQ2SEQ_LIBTORCH_VERSION"), ")");

/// Train, evaluate and run encoder-decoder LSTMs on the addition problem.
#[derive(Debug, Parser)]
#[command(name = "seq2seq", version, long_version = LONG_VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// CPU threads libtorch may use. Default: 1 for `train` (the reference model's matrices are
    /// too small to gain from more; measured in the README), libtorch's choice otherwise.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on generated samples, score it and save it as a directory.
    ///
    /// Example: seq2seq train --seed 7 --out runs/seed7
    Train(TrainArgs),
    /// Score a saved model on fresh samples.
    ///
    /// Example: seq2seq evaluate --model runs/seed7 --samples 10000 --json
    Evaluate(EvaluateArgs),
    /// Answer expressions with a saved model.
    ///
    /// Example: seq2seq predict --model runs/seed7 9+10+9 2+4+5
    Predict(PredictArgs),
    /// Show versions, whether CUDA is available and the number of CUDA devices.
    Info,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Terms per expression.
    #[arg(long, default_value_t = ProblemConfig::default().n_terms)]
    pub terms: usize,
    /// Largest value of a term (terms are drawn from 1..=largest).
    #[arg(long, default_value_t = ProblemConfig::default().largest)]
    pub largest: u64,
    /// Generated training samples per epoch.
    #[arg(long, default_value_t = TrainConfig::default().samples)]
    pub samples: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    pub learning_rate: f64,
    /// LSTM cells of the encoder: the length of the fixed-size encoding.
    #[arg(long, default_value_t = ModelConfig::default().encoder_units)]
    pub encoder_units: usize,
    /// LSTM cells of the decoder.
    #[arg(long, default_value_t = ModelConfig::default().decoder_units)]
    pub decoder_units: usize,
    /// Seeds the initial weights and every generated sample.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Fresh samples scored after training.
    #[arg(long, default_value_t = DEFAULT_EVALUATION_SAMPLES)]
    pub eval_samples: usize,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Model directory to write (default: a new runs/run-NNN).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No summary and no progress: only the final figures and the model's location.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Model directory written by `train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Fresh samples to score.
    #[arg(long, default_value_t = DEFAULT_EVALUATION_SAMPLES)]
    pub samples: usize,
    /// Seed of the samples (default: the training seed, which reproduces the saved figures).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print one JSON object: loss, char_accuracy, sequence_accuracy, samples.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model directory written by `train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Expressions such as 9+10+9 (default: read --file, or standard input, one per line).
    #[arg(value_name = "EXPRESSION")]
    pub expressions: Vec<String>,
    /// Read expressions from this file, one per line ('-' for standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "expressions")]
    pub file: Option<PathBuf>,
    /// Expressions predicted per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print one JSON object per line: input, prediction, expected, correct.
    #[arg(long)]
    pub json: bool,
}

impl TrainArgs {
    fn into_request(self) -> TrainRequest {
        TrainRequest {
            problem: ProblemConfig { n_terms: self.terms, largest: self.largest },
            model: ModelConfig {
                encoder_units: self.encoder_units,
                decoder_units: self.decoder_units,
                ..ModelConfig::default()
            },
            training: TrainConfig {
                samples: self.samples,
                batch_size: self.batch_size,
                epochs: self.epochs,
                learning_rate: self.learning_rate,
                seed: self.seed,
            },
            evaluation_samples: self.eval_samples,
            device: self.device,
            out: self.out,
            progress: Progress::for_stdout(self.quiet),
        }
    }
}

impl EvaluateArgs {
    fn into_request(self) -> EvaluateRequest {
        EvaluateRequest {
            model_dir: self.model,
            samples: self.samples,
            seed: self.seed,
            device: self.device,
            json: self.json,
        }
    }
}

impl PredictArgs {
    fn into_request(self) -> PredictRequest {
        let source = match self.file {
            Some(path) if path.as_os_str() == "-" => InputSource::Stdin,
            Some(path) => InputSource::File(path),
            None if !self.expressions.is_empty() => InputSource::Arguments(self.expressions),
            None => InputSource::Stdin,
        };
        PredictRequest {
            model_dir: self.model,
            source,
            batch_size: self.batch_size,
            device: self.device,
            json: self.json,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let threads = match (cli.threads, &cli.command) {
        (Some(0), _) => bail!("--threads must be at least 1"),
        (Some(threads), _) => Some(threads),
        (None, Command::Train(_)) => Some(1),
        (None, _) => None,
    };
    if let Some(threads) = threads {
        tch::set_num_threads(threads as i32);
    }
    match cli.command {
        Command::Train(args) => commands::train(&args.into_request()).map(|_| ()),
        Command::Evaluate(args) => commands::evaluate(&args.into_request()).map(|_| ()),
        Command::Predict(args) => commands::predict(&args.into_request()),
        Command::Info => {
            commands::info();
            Ok(())
        }
    }
}
