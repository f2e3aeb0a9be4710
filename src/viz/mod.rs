//! Pictures: principal components of the encoder's vectors, and PNG plots of learning curves
//! and scatters.

pub mod pca;
pub mod plot;
