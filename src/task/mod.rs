//! What a sample is. Three tasks share the encoder-decoder: arithmetic (characters in,
//! characters out, cross-entropy), the sequence autoencoder (real values in and out,
//! mean-squared error) and the user's own pairs (tokens in, tokens out, cross-entropy).
//!
//! Each task is one type behind the [`Problem`] trait; [`Task`] is the enum that `config.json`
//! stores, and [`Task::problem`] is the one place that dispatches on it.

pub mod arithmetic;
pub mod pairs;
pub mod samples;
pub mod sequence;
pub mod vocab;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use arithmetic::{ArithmeticProblem, Expression, ExpressionError, Operator, OperatorWeights, Operators, TermCount};
pub use pairs::{PairError, PairInput, PairsProblem};
pub use samples::Samples;
pub use sequence::{SequenceError, SequenceKind, SequenceProblem};

use crate::data::corpus::vocabulary::PAD_ID;
use crate::task::vocab::Alphabet;

/// The problem a model is trained on, as `config.json` records it under `task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Task {
    Arithmetic(ArithmeticProblem),
    Autoencoder(SequenceProblem),
    Pairs(Box<PairsProblem>),
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

/// Why a user's input line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    Expression(ExpressionError),
    Sequence(SequenceError),
    Pair(PairError),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Expression(e) => e.fmt(f),
            InputError::Sequence(e) => e.fmt(f),
            InputError::Pair(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InputError {}

/// What every task tells the rest of the program: the shape of its samples and how to say what
/// it is. The samples themselves, parsed or drawn, are [`Samples`], which carry their problem.
pub trait Problem {
    fn validate(&self) -> Result<()>;
    /// What an input step holds.
    fn input_features(&self) -> Features;
    /// What an output step holds.
    fn output_features(&self) -> Features;
    /// Time steps the encoder reads.
    fn input_len(&self) -> usize;
    /// Time steps the decoder writes.
    fn output_len(&self) -> usize;
    /// One line saying what the problem is.
    fn describe(&self) -> String;
    /// The class that pads inputs (on the left), if inputs are padded.
    fn input_padding(&self) -> Option<i64> {
        None
    }
    /// The class that ends an answer, if answers end before the last step.
    fn end_marker(&self) -> Option<i64> {
        None
    }
}

impl Problem for ArithmeticProblem {
    fn validate(&self) -> Result<()> {
        ArithmeticProblem::validate(self)
    }
    fn input_features(&self) -> Features {
        Features::Classes(self.alphabet().len())
    }
    fn output_features(&self) -> Features {
        self.input_features()
    }
    fn input_len(&self) -> usize {
        ArithmeticProblem::input_len(self)
    }
    fn output_len(&self) -> usize {
        ArithmeticProblem::output_len(self)
    }
    fn describe(&self) -> String {
        ArithmeticProblem::describe(self)
    }
    fn input_padding(&self) -> Option<i64> {
        self.alphabet().index_of(vocab::PAD)
    }
}

impl Problem for SequenceProblem {
    fn validate(&self) -> Result<()> {
        SequenceProblem::validate(self)
    }
    fn input_features(&self) -> Features {
        Features::Value
    }
    fn output_features(&self) -> Features {
        Features::Value
    }
    fn input_len(&self) -> usize {
        self.length
    }
    fn output_len(&self) -> usize {
        self.length
    }
    fn describe(&self) -> String {
        SequenceProblem::describe(self)
    }
}

impl Problem for PairsProblem {
    fn validate(&self) -> Result<()> {
        PairsProblem::validate(self)
    }
    fn input_features(&self) -> Features {
        Features::Classes(self.source_vocabulary.len())
    }
    fn output_features(&self) -> Features {
        Features::Classes(self.target_vocabulary.len())
    }
    fn input_len(&self) -> usize {
        PairsProblem::input_len(self)
    }
    fn output_len(&self) -> usize {
        PairsProblem::output_len(self)
    }
    fn describe(&self) -> String {
        PairsProblem::describe(self)
    }
    fn input_padding(&self) -> Option<i64> {
        Some(i64::from(PAD_ID))
    }
    fn end_marker(&self) -> Option<i64> {
        Some(i64::from(PAD_ID))
    }
}

impl Task {
    /// The task's problem behind its interface: the one match on the kind of task that the
    /// shape, parsing and description go through.
    pub fn problem(&self) -> &dyn Problem {
        match self {
            Task::Arithmetic(problem) => problem,
            Task::Autoencoder(problem) => problem,
            Task::Pairs(problem) => problem.as_ref(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.problem().validate()
    }

    /// The alphabet of the arithmetic task (which follows from its operators).
    pub fn alphabet(&self) -> Option<Alphabet> {
        match self {
            Task::Arithmetic(problem) => Some(problem.alphabet()),
            _ => None,
        }
    }

    pub fn input_len(&self) -> usize {
        self.problem().input_len()
    }

    pub fn output_len(&self) -> usize {
        self.problem().output_len()
    }

    pub fn describe(&self) -> String {
        self.problem().describe()
    }

    /// The target class that is never a right answer: a model of pairs reads a target token
    /// its vocabulary lacks as `<unk>`, and writing `<unk>` does not write that token.
    pub fn never_right_class(&self) -> Option<i64> {
        match self {
            Task::Pairs(_) => Some(i64::from(crate::data::corpus::UNKNOWN_ID)),
            _ => None,
        }
    }

    /// The held-out samples of a problem read from files (which bound its validation rows);
    /// `None` for generated samples, which never run out.
    pub fn held_out(&self) -> Option<usize> {
        match self {
            Task::Arithmetic(_) => None,
            Task::Autoencoder(problem) => problem.data.as_ref().map(|data| data.held_out_sequences),
            Task::Pairs(problem) => Some(problem.data.held_out_pairs),
        }
    }

    /// What kind of model this task makes, for messages: `an autoencoder`.
    pub fn model_kind(&self) -> &'static str {
        match self {
            Task::Arithmetic(_) => "an arithmetic model",
            Task::Autoencoder(_) => "an autoencoder",
            Task::Pairs(_) => "a model of sequence pairs",
        }
    }
}
