//! The sequence autoencoder's problem: real-valued sequences that the model reconstructs
//! through its fixed-length encoding.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::ValueEnum;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Longest sequence accepted: the same bound as for arithmetic inputs.
pub const MAX_SEQUENCE_LEN: usize = 4096;

/// Which sequences the autoencoder learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SequenceKind {
    /// The reference's ramp: `length` evenly spaced values strictly between low and high
    /// (0.1, 0.2, ... 0.9 for the defaults). Every sample is the same sequence.
    Ramp,
    /// Each value drawn uniformly from [low, high].
    Random,
}

/// Sequences of `length` values in `[low, high]`, generated, or read from the user's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceProblem {
    pub length: usize,
    pub sequence: SequenceKind,
    /// The range generated values are drawn from (a file's: its smallest and largest value).
    pub low: f64,
    pub high: f64,
    /// The file the sequences come from (`train --task autoencoder --data FILE`); `None` for
    /// generated ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<SequenceData>,
}

/// Where an autoencoder's sequences came from, so that `train --resume` and `evaluate` can read
/// them again, and what they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceData {
    pub data: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<PathBuf>,
    pub valid_fraction: f64,
    pub skip_bad_lines: bool,
    pub training_sequences: usize,
    pub fingerprint: String,
    pub held_out_sequences: usize,
    pub held_out_fingerprint: String,
}

impl Default for SequenceProblem {
    /// The reference: the ramp 0.1, 0.2, ... 0.9.
    fn default() -> Self {
        Self { length: 9, sequence: SequenceKind::Ramp, low: 0.0, high: 1.0, data: None }
    }
}

impl SequenceProblem {
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_SEQUENCE_LEN).contains(&self.length) {
            bail!("the sequence length must be between 1 and {MAX_SEQUENCE_LEN}, got {}", self.length);
        }
        if self.data.is_some() {
            return Ok(());
        }
        if !(self.low.is_finite() && self.high.is_finite() && self.low < self.high) {
            bail!("the value range must be finite with low < high, got {}..{}", self.low, self.high);
        }
        // The model computes in float32 (whose range also keeps a uniform draw's width finite).
        let largest = f64::from(f32::MAX);
        if self.low < -largest || self.high > largest {
            bail!(
                "the value range {:e}..{:e} does not fit float32, whose numbers lie within ±{:e}: \
                 choose --low and --high inside it",
                self.low,
                self.high,
                f32::MAX
            );
        }
        Ok(())
    }

    /// `length` evenly spaced values strictly inside (low, high).
    pub fn ramp(&self) -> Vec<f32> {
        let step = (self.high - self.low) / (self.length + 1) as f64;
        (1..=self.length).map(|i| (self.low + step * i as f64) as f32).collect()
    }

    /// Appends one sample's values to `out`.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, out: &mut Vec<f32>) {
        match self.sequence {
            SequenceKind::Ramp => out.extend(self.ramp()),
            SequenceKind::Random => {
                out.extend((0..self.length).map(|_| rng.random_range(self.low..=self.high) as f32));
            }
        }
    }

    /// Parses a line of comma-separated numbers such as `0.1, 0.2, 0.3`.
    pub fn parse_sequence(&self, line: &str) -> Result<Vec<f32>, SequenceError> {
        let mut values = Vec::with_capacity(self.length);
        parse_values(line, &mut values)?;
        if values.len() != self.length {
            return Err(SequenceError::WrongLength { found: values.len(), expected: self.length });
        }
        Ok(values)
    }

    /// One line saying what the problem is, for the start of a training run.
    pub fn describe(&self) -> String {
        if let Some(data) = &self.data {
            return format!("autoencoder on the sequences of {}, {} values each", data.data.display(), self.length);
        }
        let kind = match self.sequence {
            SequenceKind::Ramp => "the ramp",
            SequenceKind::Random => "random sequences",
        };
        format!("autoencoder on {kind} of {} values in [{}, {}]", self.length, self.low, self.high)
    }
}

/// Appends the comma-separated finite numbers of `line` to `values`, of any count.
pub fn parse_values(line: &str, values: &mut Vec<f32>) -> Result<(), SequenceError> {
    let text = line.trim();
    if text.is_empty() {
        return Err(SequenceError::Empty);
    }
    for (index, field) in text.split(',').enumerate() {
        let field = field.trim();
        match field.parse::<f32>() {
            Ok(value) if value.is_finite() => values.push(value),
            // A finite decimal that float32 rounds to infinity is a number, only too large.
            Ok(_) if field.parse::<f64>().is_ok_and(f64::is_finite) => {
                return Err(SequenceError::TooLarge { position: index + 1, text: field.to_owned() });
            }
            _ => return Err(SequenceError::NotANumber { position: index + 1, text: field.to_owned() }),
        }
    }
    Ok(())
}

/// Values as `predict` prints them: comma-separated, four decimals.
pub fn format_sequence(values: &[f32]) -> String {
    values.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(",")
}

/// Why a user's line is not a sequence this model reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceError {
    Empty,
    NotANumber { position: usize, text: String },
    TooLarge { position: usize, text: String },
    WrongLength { found: usize, expected: usize },
}

impl fmt::Display for SequenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty sequence"),
            Self::NotANumber { position, text } => {
                write!(f, "value {position} ({text:?}) is not a finite number")
            }
            Self::TooLarge { position, text } => {
                write!(
                    f,
                    "value {position} ({text:?}) is beyond float32's range (±{:e}), which the model computes in",
                    f32::MAX
                )
            }
            Self::WrongLength { found, expected } => {
                write!(f, "{found} values given; this model reads sequences of {expected}")
            }
        }
    }
}

impl std::error::Error for SequenceError {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_reference_ramp_is_point_one_to_point_nine() {
        let ramp = SequenceProblem::default().ramp();
        let expected = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
        assert_eq!(ramp.len(), 9);
        for (got, want) in ramp.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{ramp:?}");
        }
    }

    #[test]
    fn random_sequences_stay_in_range_and_vary() {
        let problem = SequenceProblem { sequence: SequenceKind::Random, length: 5, low: -2.0, high: 3.0, data: None };
        let mut rng = StdRng::seed_from_u64(1);
        let mut values = Vec::new();
        for _ in 0..200 {
            problem.draw(&mut rng, &mut values);
        }
        assert_eq!(values.len(), 1000);
        assert!(values.iter().all(|v| (-2.0..=3.0).contains(v)));
        let mean = values.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.2, "mean {mean}");
    }

    #[test]
    fn parses_lines_and_names_the_bad_value() {
        let problem = SequenceProblem { length: 3, ..Default::default() };
        assert_eq!(problem.parse_sequence("0.1, 0.2,0.3\n"), Ok(vec![0.1, 0.2, 0.3]));
        assert_eq!(problem.parse_sequence("  "), Err(SequenceError::Empty));
        assert_eq!(
            problem.parse_sequence("0.1,x,0.3"),
            Err(SequenceError::NotANumber { position: 2, text: "x".into() })
        );
        assert_eq!(
            problem.parse_sequence("0.1,inf,0.3"),
            Err(SequenceError::NotANumber { position: 2, text: "inf".into() })
        );
        assert_eq!(
            problem.parse_sequence("0.1,-1e300,0.3"),
            Err(SequenceError::TooLarge { position: 2, text: "-1e300".into() })
        );
        assert_eq!(problem.parse_sequence("0.1,0.2"), Err(SequenceError::WrongLength { found: 2, expected: 3 }));
        assert_eq!(format_sequence(&[0.1, -2.0]), "0.1000,-2.0000");
    }

    #[test]
    fn rejects_bad_sizes_and_ranges() {
        assert!(SequenceProblem::default().validate().is_ok());
        assert!(SequenceProblem { length: 0, ..Default::default() }.validate().is_err());
        assert!(SequenceProblem { low: 1.0, high: 1.0, ..Default::default() }.validate().is_err());
        assert!(SequenceProblem { high: f64::NAN, ..Default::default() }.validate().is_err());
        // Finite in f64, but wider than f64 can hold, or beyond float32.
        let huge = |low: f64, high: f64| SequenceProblem { low, high, ..Default::default() }.validate();
        assert!(huge(-1e308, 1e308).is_err());
        assert!(huge(0.0, 1e300).is_err());
        assert!(huge(-3e38, 3e38).is_ok());
    }
}
