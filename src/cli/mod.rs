//! The command line: clap definitions, turned into plain requests at the door.
//!
//! The argument structs' doc comments are clap's help texts, written for the terminal
//! (`source<TAB>target`, `${fpath[1]}`), not as rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

pub mod completions;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::cli::completions::write_completions;
use crate::commands::encode::EncodeFormat;
use crate::commands::evaluate::EvaluateRequest;
use crate::commands::predict::DEFAULT_BATCH_SIZE;
use crate::commands::{
    self, DEFAULT_EVALUATION_SAMPLES, DEFAULT_PLOT_SAMPLES, EncodeRequest, PlotRequest, PredictRequest, ResumeRequest,
    TrainRequest,
};
use crate::data::corpus::TokenKind;
use crate::data::corpus::load::{DEFAULT_VALID_FRACTION, DataSettings, PairSettings};
use crate::data::corpus::read::PairFiles;
use crate::data::corpus::sequences::SequenceSettings;
use crate::data::csv::Columns;
use crate::data::input::InputSource;
use crate::nn::device::DeviceChoice;
use crate::nn::model::{DecoderKind, ModelConfig};
use crate::nn::optim::Betas;
use crate::output::{self, Stdout};
use crate::task::{ArithmeticProblem, OperatorWeights, Operators, SequenceKind, SequenceProblem, Task, TermCount};
use crate::train::{
    DEFAULT_CHECKPOINT_MINUTES, DEFAULT_VALIDATION_SAMPLES, LogCadence, LrSchedule, Progress, TrainConfig,
};

/// Most CPU threads: far more than these models use, few enough to start in a moment.
pub const MAX_THREADS: u64 = crate::train::MAX_THREADS as u64;

const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("SEQ2SEQ_LIBTORCH_VERSION"), ")");

/// Train, evaluate and run encoder-decoder LSTMs on sequence-to-sequence problems: arithmetic
/// expressions (the reference's addition problem by default), the sequence autoencoder, and
/// your own pairs of token sequences read from files.
#[derive(Debug, Parser)]
#[command(name = "seq2seq", version, long_version = LONG_VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// CPU threads. `train` shares each batch's rows among this many threads (default 1: the
    /// weights depend on the count, which config.json records and --resume reuses; more pays
    /// from batches of about 64 up, see the README). `predict` shares each batch among this many
    /// (default: libtorch's choice, the cores); other commands give it to libtorch.
    /// At most 256.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on generated samples or your own pairs, score it and save it as a directory
    ///
    /// Examples: seq2seq train --seed 7 --out runs/seed7
    ///           seq2seq train --ops +- --terms 2 --largest 999 --reverse
    ///           seq2seq train --task autoencoder --sequence random
    ///           seq2seq train --data words.tsv --target-tokens words --epochs 20 --out runs/words
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Train(Box<TrainArgs>),
    /// Score a saved model on fresh samples, or a model of your pairs on a file of pairs
    ///
    /// Examples: seq2seq evaluate --model runs/seed7 --samples 10000 --json
    ///           seq2seq evaluate --model runs/seed7 --errors 10
    ///           seq2seq evaluate --model runs/words --data test.tsv
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Evaluate(EvaluateArgs),
    /// Answer expressions, reconstruct sequences or write targets with a saved model
    ///
    /// Examples: seq2seq predict --model runs/seed7 9+10+9 2+4+5
    ///           seq2seq predict --model runs/seed7 --verbose 9+10+9
    ///           seq2seq predict --model runs/words --file test.tsv --json
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Predict(PredictArgs),
    /// Write the encoder's fixed-length vector for each input, as CSV or .npy
    ///
    /// Examples: seq2seq encode --model runs/seed7 --file inputs.txt --format npy --out vectors.npy
    ///           seq2seq encode --model runs/seed7 --plot encodings.png
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Encode(EncodeArgs),
    /// Draw a model's learning curve from its metrics.csv, as a PNG or an SVG
    ///
    /// Loss and accuracies, training and validation, against samples seen.
    ///
    /// Example: seq2seq plot --model runs/seed7 --out seed7.png
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Plot(PlotArgs),
    /// Print a shell completion script to standard output
    ///
    /// Example: seq2seq completions bash > ~/.local/share/bash-completion/completions/seq2seq
    ///          seq2seq completions zsh > "${fpath[1]}/_seq2seq"
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Show versions, whether CUDA is available and the number of CUDA devices; with --model,
    /// what a saved model is: its problem, layers, training and scores.
    ///
    /// Example: seq2seq info
    ///          seq2seq info --model runs/reference
    // Verbatim: clap would join the example lines into one.
    #[command(verbatim_doc_comment)]
    Info(InfoArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model directory written by `train` (a checkpoint works too): say what it holds.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Model directory written by `train` (a checkpoint of a run still going works too).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Picture to write, replaced atomically: FILE.png or FILE.svg. [default:
    /// DIR/learning_curve.png]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// What `--task` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskKind {
    /// Expressions such as 10+6 → 16 (characters in, characters out).
    Arithmetic,
    /// Real-valued sequences reconstructed through the encoding (mean-squared error).
    Autoencoder,
}

/// Files of sequence pairs, for `train` and `evaluate`.
#[derive(Debug, Args)]
pub struct PairFileArgs {
    /// Pairs, one per line: source<TAB>target (further columns ignored), or CSV with a header
    /// when the name ends in .csv (see --columns); with --task autoencoder, one sequence per
    /// line, comma-separated, all of one length. UTF-8, .gz read decompressed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["source", "target"], help_heading = "Your own data")]
    pub data: Option<PathBuf>,
    /// Sources, one per line, line-aligned with --target (the OpenNMT layout).
    #[arg(long, value_name = "FILE", requires = "target", help_heading = "Your own data")]
    pub source: Option<PathBuf>,
    /// Targets, one per line, line-aligned with --source.
    #[arg(long, value_name = "FILE", requires = "source", help_heading = "Your own data")]
    pub target: Option<PathBuf>,
    /// The source and target columns of a CSV --data file (a name ending in .csv or .csv.gz;
    /// its first line is the header): names from the header, or numbers from 1. [default: the
    /// first two]
    #[arg(long, value_name = "SOURCE,TARGET", requires = "data", help_heading = "Your own data")]
    pub columns: Option<Columns>,
    /// Leave out bad lines (no tab, an empty side, invalid UTF-8, a NUL byte, over 1 MiB) and
    /// say how many, instead of refusing the file.
    #[arg(long, help_heading = "Your own data")]
    pub skip_bad_lines: bool,
}

impl PairFileArgs {
    fn files(&self) -> Result<Option<PairFiles>> {
        Ok(match (&self.data, &self.source, &self.target) {
            (Some(data), _, _) => Some(PairFiles::one_file(data.clone(), self.columns.clone())?),
            (None, Some(source), Some(target)) => {
                Some(PairFiles::Aligned { source: source.clone(), target: target.clone() })
            }
            _ => None,
        })
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The generated problem [default: arithmetic]. --data or --source/--target train on your own
    /// pairs instead; --task autoencoder --data FILE on your own sequences.
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    #[command(flatten)]
    pub files: PairFileArgs,
    /// Held-out pairs (same layout as --data), for metrics.csv's validation columns and the
    /// final figures. [default: --valid-fraction of the data]
    #[arg(long, value_name = "FILE", help_heading = "Your own data")]
    pub valid: Option<PathBuf>,
    /// Share of the pairs held out when no --valid is given, drawn from --seed by each pair's
    /// text (identical pairs stay together).
    #[arg(
        long,
        value_name = "F",
        default_value_t = DEFAULT_VALID_FRACTION,
        help_heading = "Your own data",
        allow_negative_numbers = true,
        conflicts_with = "valid"
    )]
    pub valid_fraction: f64,
    /// Tokens seen fewer times in the training pairs read as <unk>.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Your own data")]
    pub min_count: u64,
    /// Longest source read, in tokens; longer pairs are left out. [default: the longest]
    #[arg(long, value_name = "N", help_heading = "Your own data")]
    pub max_source_len: Option<usize>,
    /// Longest target written, in tokens; longer pairs are left out. [default: the longest]
    #[arg(long, value_name = "N", help_heading = "Your own data")]
    pub max_target_len: Option<usize>,
    /// chars: every character is a token; words: whitespace separates tokens.
    #[arg(long, value_enum, default_value_t = TokenKind::Chars, help_heading = "Your own data")]
    pub source_tokens: TokenKind,
    /// chars or words; predictions of words are joined by single spaces.
    #[arg(long, value_enum, default_value_t = TokenKind::Chars, help_heading = "Your own data")]
    pub target_tokens: TokenKind,
    /// Operators, any of + - * / (ordinary precedence; / is floor division). [default: +]
    #[arg(long, value_name = "OPS", help_heading = "Arithmetic")]
    pub ops: Option<Operators>,
    /// Terms per expression: N, or MIN..MAX for a variable number. [default: 3]
    #[arg(long, value_name = "N|MIN..MAX", help_heading = "Arithmetic")]
    pub terms: Option<TermCount>,
    /// Largest value of a term (terms are drawn from 1..=largest). [default: 10]
    #[arg(long, help_heading = "Arithmetic")]
    pub largest: Option<u64>,
    /// The encoder reads each expression reversed (Sutskever et al., 2014).
    #[arg(long, help_heading = "Arithmetic")]
    pub reverse: bool,
    /// The decoder writes each answer reversed, least significant digit first, so that carries
    /// flow in writing order; answers are still shown forwards.
    #[arg(long, help_heading = "Arithmetic")]
    pub reverse_output: bool,
    /// Values per sequence. [default: 9]
    #[arg(long, help_heading = "Autoencoder")]
    pub length: Option<usize>,
    /// ramp: the reference's 0.1, 0.2, ... 0.9; random: uniform values. [default: ramp]
    #[arg(long, value_enum, help_heading = "Autoencoder")]
    pub sequence: Option<SequenceKind>,
    /// Smallest value. [default: 0]
    #[arg(long, allow_negative_numbers = true, help_heading = "Autoencoder")]
    pub low: Option<f64>,
    /// Largest value. [default: 1]
    #[arg(long, allow_negative_numbers = true, help_heading = "Autoencoder")]
    pub high: Option<f64>,
    /// LSTM cells of the encoder: the length of the fixed-size encoding.
    #[arg(long, default_value_t = ModelConfig::default().encoder_units, help_heading = "Model")]
    pub encoder_units: usize,
    /// LSTM cells of the decoder.
    #[arg(long, default_value_t = ModelConfig::default().decoder_units, help_heading = "Model")]
    pub decoder_units: usize,
    /// Stacked LSTM layers in the encoder.
    #[arg(long, default_value_t = ModelConfig::default().encoder_layers, help_heading = "Model")]
    pub encoder_layers: usize,
    /// Stacked LSTM layers in the decoder.
    #[arg(long, default_value_t = ModelConfig::default().decoder_layers, help_heading = "Model")]
    pub decoder_layers: usize,
    /// Dropout between stacked LSTM layers while training (off in evaluation and prediction).
    #[arg(long, default_value_t = ModelConfig::default().dropout, help_heading = "Model", allow_negative_numbers = true)]
    pub dropout: f64,
    /// What the decoder reads at each step: repeat, the reference's encoding at every step;
    /// feedback, its previous token, from the encoder's final state; attention, feedback plus
    /// attention over every encoder step.
    #[arg(long, value_enum, default_value_t = DecoderKind::Repeat, value_name = "KIND", help_heading = "Model")]
    pub decoder: DecoderKind,
    /// A second encoder reads each input backwards; the decoder sees both.
    #[arg(long, help_heading = "Model")]
    pub bidirectional: bool,
    /// Heads of attention (--decoder attention): each scores the encoder's steps with its own
    /// slice of the decoder's output, so that one step can read several input positions.
    /// Must divide --decoder-units.
    #[arg(long, default_value_t = ModelConfig::default().attention_heads, value_name = "N", help_heading = "Model")]
    pub attention_heads: usize,
    /// Generated training samples per epoch (with your own data, an epoch is every training
    /// pair). [default: 75000]
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Adam's learning rate (the peak, with a schedule).
    #[arg(long, default_value_t = TrainConfig::default().learning_rate, allow_negative_numbers = true)]
    pub learning_rate: f64,
    /// How the learning rate moves after the warm-up: constant, or decaying to
    /// --final-learning-rate at the last sample along a straight line or half a cosine.
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant, value_name = "SCHEDULE")]
    pub lr_schedule: LrSchedule,
    /// Samples over which the learning rate rises linearly to --learning-rate (at most the run's
    /// samples: --samples × --epochs, or your pairs × --epochs).
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().warmup)]
    pub warmup: usize,
    /// Where a decaying --lr-schedule ends.
    #[arg(long, value_name = "LR", default_value_t = TrainConfig::default().final_learning_rate, allow_negative_numbers = true)]
    pub final_learning_rate: f64,
    /// Scale each batch's gradient down to at most this L2 norm over every weight together
    /// (PyTorch's clip_grad_norm_, OpenNMT's -max_grad_norm). [default: no clipping]
    #[arg(long, value_name = "NORM", allow_negative_numbers = true)]
    pub max_grad_norm: Option<f64>,
    /// Adam's decay rates of its first and second moments (PyTorch's betas, Keras's beta_1 and
    /// beta_2); a lower second, such as 0.98, follows a changing gradient scale sooner, which
    /// can keep a high learning rate stable. [default: 0.9,0.999]
    #[arg(long, value_name = "B1,B2", allow_negative_numbers = true)]
    pub adam_betas: Option<Betas>,
    /// Stop early once N validation rows of metrics.csv in a row have not improved on the best
    /// validation loss before them (Keras's EarlyStopping(patience=N) on val_loss; rows come
    /// every --log-every samples, and with --log-every epoch once an epoch, as Keras counts).
    /// The model saved is the last one (see --restore-best).
    /// [default: train to the end]
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// Save the weights of the validation row with the lowest validation loss, not the last
    /// step's (Keras's restore_best_weights), with or without --patience.
    #[arg(long)]
    pub restore_best: bool,
    /// Arithmetic: samples over which the terms grow from one digit to as many as --largest
    /// has (a quarter of them drawn from the whole range throughout); then the whole range.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().curriculum)]
    pub curriculum: usize,
    /// Arithmetic: how often training draws each operator, as OP=WEIGHT items (e.g. `*=4,/=2`:
    /// `*` four times and `/` twice as often as an operator left unnamed, which weighs 1).
    /// Evaluation still draws them uniformly. [default: all alike]
    // A value may start with `-` (`-=3`), which is the operator here, not a flag.
    #[arg(long, value_name = "OP=W,...", allow_hyphen_values = true)]
    pub op_weights: Option<OperatorWeights>,
    /// Seeds the initial weights and every generated sample (with your own data: the held-out
    /// split and each epoch's order).
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Fresh samples scored after training, for generated problems (your own data scores every
    /// held-out pair). [default: 10000]
    #[arg(long, value_name = "N")]
    pub eval_samples: Option<usize>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Model directory to write (default: a new runs/run-NNN). A directory that holds a model or
    /// a checkpoint is refused unless --overwrite is given.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the model or checkpoint in --out DIR (its files are removed before training).
    #[arg(long, requires = "out")]
    pub overwrite: bool,
    /// No summary and no progress: only the final figures and the model's location.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write a resumable checkpoint to the model directory every N samples (Ctrl-C always
    /// writes one).
    #[arg(long, value_name = "N", help_heading = "Checkpoints")]
    pub checkpoint_every: Option<usize>,
    /// Also write one after every M minutes of training, so that a run killed outright loses at
    /// most that much (0: only --checkpoint-every and Ctrl-C). [default: 10]
    #[arg(long, value_name = "M", help_heading = "Checkpoints", allow_negative_numbers = true)]
    pub checkpoint_minutes: Option<f64>,
    /// Add a row to the model directory's metrics.csv every N samples (and at each epoch's end):
    /// running loss and accuracies, and the same figures on the validation samples. `epoch`: at
    /// each epoch's end only, as Keras logs (then --patience counts epochs).
    /// [default: a twentieth of the run, at least one batch]
    #[arg(long, value_name = "N|epoch")]
    pub log_every: Option<LogCadence>,
    /// Samples scored for the validation columns of every metrics.csv row, the same ones at every
    /// row: the first N of the fresh evaluation samples, or of your own held-out pairs (at most
    /// all of them). 0 leaves the columns empty and the time to score them out.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VALIDATION_SAMPLES)]
    pub validation_samples: usize,
    /// Continue the interrupted run whose checkpoint is in DIR, to the same weights an
    /// uninterrupted run would reach (on the CPU). Takes its settings from the checkpoint.
    #[arg(long, value_name = "DIR", help_heading = "Checkpoints", conflicts_with_all = [
        "task", "data", "source", "target", "valid", "valid_fraction", "min_count", "max_source_len",
        "max_target_len", "source_tokens", "target_tokens", "skip_bad_lines", "ops", "terms", "largest", "reverse", "reverse_output", "length", "sequence", "low", "high", "encoder_units",
        "decoder_units", "encoder_layers", "decoder_layers", "dropout", "decoder", "bidirectional", "attention_heads", "samples", "batch_size", "epochs",
        "learning_rate", "seed", "out", "overwrite", "lr_schedule", "warmup", "final_learning_rate", "curriculum", "op_weights",
        "max_grad_norm", "adam_betas", "patience", "restore_best", "validation_samples",
    ])]
    pub resume: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Model directory written by `train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Fresh samples to score, for generated problems (a model of your pairs scores every pair
    /// of --data, or of its own held-out part). [default: 10000]
    #[arg(long)]
    pub samples: Option<usize>,
    #[command(flatten)]
    pub files: PairFileArgs,
    /// Seed of the samples (default: the training seed, which reproduces the saved figures).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print one JSON object: loss, char_accuracy, sequence_accuracy, samples (and with
    /// --errors: wrong, errors, by_position, by_size). Models of your pairs: samples, loss,
    /// token_accuracy, sequence_accuracy, token_error_rate (and errors).
    #[arg(long)]
    pub json: bool,
    /// Also list the N most confident wrong predictions (arithmetic models: and accuracy by
    /// output position and by the true value's number of digits).
    #[arg(long, value_name = "N")]
    pub errors: Option<usize>,
    /// Score the best answer of a beam N wide, ranked by log-probability per token (feedback
    /// and attention decoders); the loss stays the greedy answer's. [default: 1, greedy]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub beam: Option<u16>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model directory written by `train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Inputs predicted per forward pass. [default: 1000, fewer for a model whose outputs per
    /// input pass 32,768 numbers (a large target vocabulary)]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print one JSON object per line (arithmetic: input, prediction, expected, correct;
    /// autoencoder: input, reconstruction, max_abs_error; pairs: input, prediction, and expected
    /// and correct where a target was given).
    #[arg(long)]
    pub json: bool,
    /// After each answer, the probability the model gave each token it wrote (arithmetic: each
    /// character, padding included; pairs: each token, then the end marker's; with --json: a
    /// "probabilities" list).
    #[arg(long, short)]
    pub verbose: bool,
    /// Search N answers wide for the most probable one, ranked by log-probability per token
    /// (feedback and attention decoders). [default: 1, greedy]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub beam: Option<u16>,
    /// Also print the K best answers of the beam with their log-probabilities (with --json: an
    /// "n_best" list); the beam is at least K wide.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub n_best: Option<u16>,
}

/// Where `predict` and `encode` read their inputs.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Expressions such as 9+10+9, sequences such as 0.1,0.2,0.3, or sources of a model of your
    /// pairs (source<TAB>target also shows the expected target and whether it was right)
    /// (default: read --file, or standard input, one per line). Put `--` before an input that
    /// starts with '-'.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Read inputs from this file, one per line ('-' for standard input). For a model of pairs,
    /// a file named .csv or .csv.gz is CSV: a header, then a source (and its expected target)
    /// per line, in the model's --columns.
    #[arg(long, value_name = "PATH", conflicts_with = "inputs")]
    pub file: Option<PathBuf>,
    /// The source and target columns of a CSV --file: names from its header, or numbers from 1.
    /// With `--file -`, standard input is read as CSV (it is otherwise one source per line).
    /// [default: the model's, or the first two]
    #[arg(long, value_name = "SOURCE,TARGET", requires = "file")]
    pub columns: Option<Columns>,
}

impl InputArgs {
    fn source(self) -> Result<InputSource> {
        Ok(match self.file {
            Some(path) if path.as_os_str() == "-" => InputSource::Stdin { columns: self.columns },
            Some(path) => InputSource::File { path, columns: self.columns },
            // clap lets the arguments stand in for --file, which --columns requires.
            None if self.columns.is_some() => {
                bail!("--columns picks the columns of a CSV --file; inputs given as arguments are sources")
            }
            None if !self.inputs.is_empty() => InputSource::Arguments(self.inputs),
            None => InputSource::Stdin { columns: None },
        })
    }
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Model directory written by `train` (any task).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
    #[arg(long, value_enum, default_value_t = EncodeFormat::Csv)]
    pub format: EncodeFormat,
    /// File to write, replaced atomically (default: standard output; required for npy; with
    /// --plot, no vectors are written unless --out names a file).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Draw the vectors' first two principal components as a 1000x800 PNG (an SVG when FILE ends in
    /// .svg), coloured by each input's value (an expression's value, a sequence's mean). Without
    /// inputs, encodes --samples fresh samples instead of reading standard input.
    #[arg(long, value_name = "FILE.png|FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Fresh samples drawn for --plot when no inputs are given.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PLOT_SAMPLES, requires = "plot")]
    pub samples: usize,
    /// Inputs encoded per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

impl TrainArgs {
    /// The request, with each batch shared among `threads` threads.
    fn into_request(self, threads: usize) -> Result<TrainRequest> {
        let task = self.task()?;
        let data = self.data_settings()?;
        if data.is_some() && self.eval_samples.is_some() {
            bail!(
                "--eval-samples sets how many fresh samples of a generated problem are scored; with your own data \
                 the final figures score every held-out pair (--valid or --valid-fraction sets them)"
            );
        }
        if data.is_some() && self.samples.is_some() {
            bail!(
                "--samples sets how many samples are generated; with your own pairs an epoch is every training pair (--epochs sets how many)"
            );
        }
        Ok(TrainRequest {
            task,
            data,
            model: ModelConfig {
                encoder_units: self.encoder_units,
                decoder_units: self.decoder_units,
                encoder_layers: self.encoder_layers,
                decoder_layers: self.decoder_layers,
                dropout: self.dropout,
                decoder: self.decoder,
                bidirectional: self.bidirectional,
                attention_heads: self.attention_heads,
            },
            training: TrainConfig {
                samples: self.samples.unwrap_or(TrainConfig::default().samples),
                batch_size: self.batch_size,
                epochs: self.epochs,
                learning_rate: self.learning_rate,
                seed: self.seed,
                evaluation_samples: self.eval_samples.unwrap_or(DEFAULT_EVALUATION_SAMPLES),
                checkpoint_every: self.checkpoint_every,
                checkpoint_minutes: self.checkpoint_minutes.unwrap_or(DEFAULT_CHECKPOINT_MINUTES),
                log_every: None,
                validation_samples: self.validation_samples,
                lr_schedule: self.lr_schedule,
                warmup: self.warmup,
                final_learning_rate: self.final_learning_rate,
                threads,
                curriculum: self.curriculum,
                operator_weights: self.op_weights,
                max_grad_norm: self.max_grad_norm,
                adam_betas: self.adam_betas.unwrap_or_default(),
                patience: self.patience,
                restore_best: self.restore_best,
            },
            device: self.device,
            out: self.out,
            overwrite: self.overwrite,
            log_every: self.log_every,
            progress: Progress::for_stdout(self.quiet),
        })
    }

    /// What to read for a model of the user's data; `None` for a generated problem. Flags of
    /// files without files are errors rather than ignored.
    fn data_settings(&self) -> Result<Option<DataSettings>> {
        let Some(files) = self.files.files()? else {
            let held_out = [
                ("--valid", self.valid.is_some()),
                ("--valid-fraction", self.valid_fraction != DEFAULT_VALID_FRACTION),
            ];
            let pair_flags =
                held_out.into_iter().chain(self.token_flags()).chain([("--skip-bad-lines", self.files.skip_bad_lines)]);
            if let Some((flag, _)) = pair_flags.into_iter().find(|(_, given)| *given) {
                bail!("{flag} applies to your own pairs: give them with --data FILE or --source/--target");
            }
            return Ok(None);
        };
        match self.task {
            Some(TaskKind::Autoencoder) => return self.sequence_settings(&files).map(Some),
            Some(TaskKind::Arithmetic) => {
                bail!("--task arithmetic generates its samples; leave it out to train on {files}")
            }
            None => {}
        }
        Ok(Some(DataSettings::Pairs(PairSettings {
            files,
            valid: self.valid.clone(),
            valid_fraction: self.valid_fraction,
            min_count: self.min_count,
            skip_bad_lines: self.files.skip_bad_lines,
            source_tokens: self.source_tokens,
            target_tokens: self.target_tokens,
            max_source_len: self.max_source_len,
            max_target_len: self.max_target_len,
        })))
    }

    /// The flags that only pairs of tokens take, and whether each was given.
    fn token_flags(&self) -> [(&'static str, bool); 5] {
        [
            ("--min-count", self.min_count != 1),
            ("--max-source-len", self.max_source_len.is_some()),
            ("--max-target-len", self.max_target_len.is_some()),
            ("--source-tokens", self.source_tokens != TokenKind::Chars),
            ("--target-tokens", self.target_tokens != TokenKind::Chars),
        ]
    }

    /// `--task autoencoder --data FILE`: one sequence per line; the flags of token pairs do not apply.
    fn sequence_settings(&self, files: &PairFiles) -> Result<DataSettings> {
        if self.files.columns.is_some() {
            bail!(
                "--columns picks the source and target columns of pairs; the autoencoder reads one sequence per line"
            );
        }
        let Some(data) = files.single_path() else {
            bail!("--task autoencoder reads one file of sequences: give it with --data FILE, not --source/--target");
        };
        if let Some((flag, _)) = self.token_flags().into_iter().find(|(_, given)| *given) {
            bail!("{flag} applies to pairs of tokens, not to the autoencoder's sequences of values");
        }
        Ok(DataSettings::Sequences(SequenceSettings {
            data: data.to_path_buf(),
            valid: self.valid.clone(),
            valid_fraction: self.valid_fraction,
            skip_bad_lines: self.files.skip_bad_lines,
        }))
    }

    /// The task from its flags; a flag of the other task is an error rather than ignored.
    fn task(&self) -> Result<Task> {
        let arithmetic_flags = [
            ("--ops", self.ops.is_some()),
            ("--terms", self.terms.is_some()),
            ("--largest", self.largest.is_some()),
            ("--reverse", self.reverse),
            ("--reverse-output", self.reverse_output),
        ];
        let autoencoder_flags = [
            ("--length", self.length.is_some()),
            ("--sequence", self.sequence.is_some()),
            ("--low", self.low.is_some()),
            ("--high", self.high.is_some()),
        ];
        let kind = self.task.unwrap_or(TaskKind::Arithmetic);
        if self.files.files()?.is_some() {
            let generated = arithmetic_flags.iter().chain(&autoencoder_flags).find(|(_, given)| *given);
            if let Some((flag, _)) = generated {
                bail!("{flag} describes a generated problem; it does not apply to your own pairs");
            }
        }
        let (foreign, task_name): (&[(&str, bool)], _) = match kind {
            TaskKind::Arithmetic => (&autoencoder_flags, "arithmetic"),
            TaskKind::Autoencoder => (&arithmetic_flags, "autoencoder"),
        };
        if let Some((flag, _)) = foreign.iter().find(|(_, given)| *given) {
            bail!("{flag} does not apply to --task {task_name}");
        }
        Ok(match kind {
            TaskKind::Arithmetic => {
                let reference = ArithmeticProblem::default();
                let terms = self.terms.unwrap_or(TermCount { min: reference.min_terms, max: reference.max_terms });
                Task::Arithmetic(ArithmeticProblem {
                    operators: self.ops.clone().unwrap_or(reference.operators),
                    min_terms: terms.min,
                    max_terms: terms.max,
                    largest: self.largest.unwrap_or(reference.largest),
                    reverse: self.reverse,
                    reverse_output: self.reverse_output,
                    alphabet: None,
                })
            }
            TaskKind::Autoencoder => {
                let reference = SequenceProblem::default();
                Task::Autoencoder(SequenceProblem {
                    length: self.length.unwrap_or(reference.length),
                    sequence: self.sequence.unwrap_or(reference.sequence),
                    low: self.low.unwrap_or(reference.low),
                    high: self.high.unwrap_or(reference.high),
                    data: None,
                })
            }
        })
    }
}

impl EvaluateArgs {
    fn into_request(self) -> Result<EvaluateRequest> {
        Ok(EvaluateRequest {
            model_dir: self.model,
            samples: self.samples,
            data: self.files.files()?,
            skip_bad_lines: self.files.skip_bad_lines,
            seed: self.seed,
            device: self.device,
            errors: self.errors,
            beam: self.beam.map_or(1, usize::from),
        })
    }
}

impl PredictArgs {
    fn into_request(self, workers: usize) -> Result<PredictRequest> {
        Ok(PredictRequest {
            model_dir: self.model,
            source: self.inputs.source()?,
            batch_size: self.batch_size,
            device: self.device,
            json: self.json,
            verbose: self.verbose,
            beam: self.beam.map(usize::from),
            n_best: self.n_best.map(usize::from),
            workers,
        })
    }
}

impl EncodeArgs {
    fn into_request(self) -> Result<EncodeRequest> {
        let no_inputs = self.inputs.inputs.is_empty() && self.inputs.file.is_none();
        Ok(EncodeRequest {
            model_dir: self.model,
            // With --plot and nothing to read, draw samples rather than wait on standard input.
            source: if no_inputs && self.plot.is_some() { None } else { Some(self.inputs.source()?) },
            samples: self.samples,
            format: self.format,
            out: self.out,
            plot: self.plot,
            batch_size: self.batch_size,
            device: self.device,
        })
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let asked = match cli.threads {
        Some(threads) if !(1..=MAX_THREADS).contains(&threads) => {
            bail!("--threads must be between 1 and {MAX_THREADS}, got {threads}")
        }
        // At most MAX_THREADS, so it fits.
        asked => asked.map(|threads| threads as usize),
    };
    if matches!(cli.command, Command::Train(_)) {
        // Before any thread starts, so that every one blocks the stop signals (see interrupt).
        crate::train::interrupt::install();
    }
    let threads = match (asked, &cli.command) {
        (Some(threads), _) => Some(threads),
        (None, Command::Train(_)) => Some(1),
        (None, _) => None,
    };
    if let Some(threads) = threads {
        tch::set_num_threads(threads as i32);
    }
    match cli.command {
        Command::Train(args) => match args.resume.clone() {
            Some(dir) => commands::resume(&ResumeRequest {
                dir,
                checkpoint_every: args.checkpoint_every,
                checkpoint_minutes: args.checkpoint_minutes,
                evaluation_samples: args.eval_samples,
                log_every: args.log_every,
                threads: asked,
                device: args.device,
                progress: Progress::for_stdout(args.quiet),
            }),
            None => commands::train(&args.into_request(threads.unwrap_or(1))?),
        }
        .map(|_| ()),
        Command::Evaluate(args) => {
            let json = args.json;
            output::render(&commands::evaluate::evaluate(&args.into_request()?)?, json)
        }
        Command::Predict(args) => {
            // predict shares each batch among that many threads of its own, each running
            // libtorch on one.
            let workers = tch::get_num_threads().max(1) as usize;
            tch::set_num_threads(1);
            commands::predict(&args.into_request(workers)?)
        }
        Command::Encode(args) => commands::encode(&args.into_request()?),
        Command::Plot(args) => {
            output::render(&commands::plot(&PlotRequest { model_dir: args.model, out: args.out })?, false)
        }
        Command::Completions(args) => {
            // Written whole into memory first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            write_completions(args.shell, &mut Cli::command(), &mut script);
            let mut out = Stdout::lock();
            out.write_all(&script).and_then(|()| out.flush())?;
            Ok(())
        }
        Command::Info(args) => match &args.model {
            Some(dir) => output::render(&commands::info::model_info(dir)?, args.json),
            None => output::render(&commands::info::info(), args.json),
        },
    }
}
