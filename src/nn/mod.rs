//! The numerics: the encoder-decoder model, its LSTM passes written out by hand with their
//! fused CPU cell arithmetic, the saveable Adam, and the choice of device. Imports nothing from
//! the command line or the model directory.

pub mod cell;
pub mod device;
pub mod feedback;
pub mod lstm;
pub mod model;
pub mod optim;
