//! The model directory on disk: `config.json` and the weights, the training state of a
//! checkpoint, the metrics log, the lock that gives a directory one owner, and file writes and
//! reads that are safe whatever a path turns out to be.

pub mod checkpoint;
pub mod files;
pub mod lock;
pub mod metrics_log;
