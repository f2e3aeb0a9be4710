//! Encoder-decoder LSTMs for sequence-to-sequence problems, on libtorch.
//!
//! The folders are the layers, and data flows one way through them:
//! `task` (what a sample is: arithmetic, the autoencoder's sequences, the user's pairs, each
//! behind the `Problem` trait; `Samples` hold a batch of one of them with its problem) →
//! [`data`] (batches from a `SampleSource`: generated, or the user's files in [`data::corpus`];
//! users' lines to answer) →
//! [`nn`] (the model, its hand-written LSTM passes, Adam, devices) →
//! [`train`] (the loop, its threads, stop signals) and `evaluate` (scores, mistakes) →
//! `store` (the model directory on disk: config, weights, training state, metrics log, safe
//! file writes and the directory lock) → `commands` (one function per subcommand, returning
//! a report; predict and encode stream) ← [`cli`] (clap definitions and shell completions).
//! Beside them: `viz` (PCA and PNG pictures) and [`output`] (the one writer of stdout, which
//! renders the reports as text or JSON).
//!
//! Public are only the modules that the binary and the examples use (linked above); the rest is
//! `pub(crate)`, so that the compiler reports what nothing uses.

pub mod cli;
pub(crate) mod commands;
pub mod data;
pub(crate) mod evaluate;
pub mod nn;
pub mod output;
pub(crate) mod store;
pub(crate) mod task;
pub mod train;
pub(crate) mod viz;
