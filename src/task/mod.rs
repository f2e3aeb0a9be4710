//! What a sample is. Two tasks share the encoder-decoder: arithmetic (characters in, characters
//! out, cross-entropy) and the sequence autoencoder (real values in and out, mean-squared error).

pub mod arithmetic;
pub mod sequence;
pub mod vocab;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use arithmetic::{ArithmeticProblem, Expression, ExpressionError, Operator, Operators, TermCount};
pub use sequence::{SequenceError, SequenceKind, SequenceProblem};

use crate::task::vocab::Alphabet;

/// The problem a model is trained on, as `config.json` records it under `task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Task {
    Arithmetic(ArithmeticProblem),
    Autoencoder(SequenceProblem),
}

impl Default for Task {
    /// The reference: three terms of 1..=10, added.
    fn default() -> Self {
        Task::Arithmetic(ArithmeticProblem::default())
    }
}

/// What one time step holds, on the way in and on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// One of `n` symbols: one-hot in, a softmax over `n` classes out.
    Classes(usize),
    /// One real value in, one out.
    Value,
}

impl Features {
    /// Width of a time step's vector.
    pub fn width(self) -> usize {
        match self {
            Features::Classes(n) => n,
            Features::Value => 1,
        }
    }
}

/// A user's input, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Expression(Expression),
    Sequence(Vec<f32>),
}

/// Why a user's input line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    Expression(ExpressionError),
    Sequence(SequenceError),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Expression(e) => e.fmt(f),
            InputError::Sequence(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InputError {}

impl Task {
    pub fn validate(&self) -> Result<()> {
        match self {
            Task::Arithmetic(problem) => problem.validate(),
            Task::Autoencoder(problem) => problem.validate(),
        }
    }

    /// The alphabet of a character task; `None` for real-valued sequences.
    pub fn alphabet(&self) -> Option<Alphabet> {
        match self {
            Task::Arithmetic(problem) => Some(problem.alphabet()),
            Task::Autoencoder(_) => None,
        }
    }

    pub fn features(&self) -> Features {
        match self {
            Task::Arithmetic(problem) => Features::Classes(problem.alphabet().len()),
            Task::Autoencoder(_) => Features::Value,
        }
    }

    /// Time steps the encoder reads.
    pub fn input_len(&self) -> usize {
        match self {
            Task::Arithmetic(problem) => problem.input_len(),
            Task::Autoencoder(problem) => problem.length,
        }
    }

    /// Time steps the decoder writes.
    pub fn output_len(&self) -> usize {
        match self {
            Task::Arithmetic(problem) => problem.output_len(),
            Task::Autoencoder(problem) => problem.length,
        }
    }

    /// Parses one line of user input (an expression, or comma-separated values).
    pub fn parse_input(&self, line: &str) -> Result<Input, InputError> {
        match self {
            Task::Arithmetic(problem) => {
                problem.parse_expression(line).map(Input::Expression).map_err(InputError::Expression)
            }
            Task::Autoencoder(problem) => {
                problem.parse_sequence(line).map(Input::Sequence).map_err(InputError::Sequence)
            }
        }
    }

    /// One line saying what the problem is.
    pub fn describe(&self) -> String {
        match self {
            Task::Arithmetic(problem) => problem.describe(),
            Task::Autoencoder(problem) => problem.describe(),
        }
    }
}
