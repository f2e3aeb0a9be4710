//! Encoder-decoder LSTMs for sequence-to-sequence problems, on libtorch.
//!
//! Data flows one way: [`problem`] and [`vocab`] → [`data`] → [`model`] (built on [`lstm`],
//! whose CPU arithmetic is [`cell`]) →
//! [`train`] / [`evaluate`] (with [`mistakes`]) / [`predict`] / [`encode`] (users' lines through [`input`]) →
//! [`checkpoint`] → [`commands`] ← [`cli`].
//! [`optim`] and [`interrupt`] serve the training loop. Beside them: [`metrics_log`]
//! (`metrics.csv`), [`pca`], [`plot`] (PNG pictures of both) and [`completions`] (shell scripts
//! from the clap definition).

pub mod cell;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod completions;
pub mod corpus;
pub mod data;
pub mod device;
pub mod encode;
pub mod evaluate;
pub mod files;
pub mod input;
pub mod interrupt;
pub mod lines;
pub mod lock;
pub mod lstm;
pub mod metrics_log;
pub mod mistakes;
pub mod model;
pub mod optim;
pub mod output;
pub mod pca;
pub mod plot;
pub mod predict;
pub mod problem;
pub mod shared_step;
pub mod train;
pub mod vocab;
