//! Encoder-decoder LSTMs for sequence-to-sequence problems, on libtorch.
//!
//! The folders are the layers, and data flows one way through them:
//! [`task`] (what a sample is: arithmetic, the autoencoder's sequences, their alphabet) →
//! [`data`] (seeded batches, users' lines, and the user's own files in [`data::corpus`]) →
//! [`nn`] (the model, its hand-written LSTM passes, Adam, devices) →
//! [`train`] (the loop, its threads, stop signals) and [`evaluate`] (scores, mistakes) →
//! [`store`] (the model directory on disk: config, weights, training state, metrics log, safe
//! file writes and the directory lock) → [`commands`] (one function per subcommand, with
//! predict and encode) ← [`cli`] (clap definitions and shell completions).
//! Beside them: [`viz`] (PCA and PNG pictures) and [`output`] (the one writer of stdout).

pub mod cli;
pub mod commands;
pub mod data;
pub mod evaluate;
pub mod nn;
pub mod output;
pub mod store;
pub mod task;
pub mod train;
pub mod viz;
