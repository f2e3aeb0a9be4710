//! The addition problem: what a sample is, how it is written down, and how long it can be.

use std::fmt;

use anyhow::{Result, bail};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::vocab::PAD;

/// Longest input accepted, in characters: far beyond what an encoder LSTM can learn, and small
/// enough that a typo such as `--terms 100000000` fails at once instead of exhausting memory.
pub const MAX_INPUT_LEN: usize = 4096;

/// Which sums the model learns: `n_terms` terms, each drawn uniformly from `1..=largest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemConfig {
    pub n_terms: usize,
    pub largest: u64,
}

impl Default for ProblemConfig {
    /// The reference problem: three terms, each 1..=10 (`10+10+10` is the longest input).
    fn default() -> Self {
        Self { n_terms: 3, largest: 10 }
    }
}

/// Number of decimal digits of `n` (1 for 0). Equals the reference's `ceil(log10(n+1))` for
/// n ≥ 1, computed exactly in integers.
fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

impl ProblemConfig {
    /// Checks the values before any work: sizes ≥ 1 and sums that fit 64-bit arithmetic.
    pub fn validate(&self) -> Result<()> {
        if self.n_terms == 0 {
            bail!("the number of terms must be at least 1");
        }
        if self.largest == 0 {
            bail!("the largest term must be at least 1");
        }
        if self.checked_input_len().is_none_or(|len| len > MAX_INPUT_LEN) {
            bail!(
                "{} terms of up to {} make inputs longer than the {MAX_INPUT_LEN} characters this tool accepts",
                self.n_terms,
                self.largest
            );
        }
        if self.bound().is_none() {
            bail!(
                "{} terms of up to {} overflow 64-bit arithmetic; choose fewer terms or a smaller --largest",
                self.n_terms,
                self.largest
            );
        }
        Ok(())
    }

    /// `n_terms * (largest + 1)`, the reference's bound on any sum; `None` on overflow.
    fn bound(&self) -> Option<u64> {
        let terms = u64::try_from(self.n_terms).ok()?;
        terms.checked_mul(self.largest.checked_add(1)?)
    }

    /// Input length: `n_terms * ceil(log10(largest+1)) + n_terms - 1` (8 for the reference).
    pub fn input_len(&self) -> usize {
        self.checked_input_len().expect("validated problem sizes do not overflow")
    }

    /// [`ProblemConfig::input_len`], or `None` when it does not fit a `usize`.
    fn checked_input_len(&self) -> Option<usize> {
        // n·digits + n − 1 = n·(digits + 1) − 1, which cannot underflow for n ≥ 1.
        self.n_terms.checked_mul(decimal_digits(self.largest) + 1)?.checked_sub(1)
    }

    /// Output length: `ceil(log10(n_terms * (largest+1)))` (2 for the reference).
    pub fn output_len(&self) -> usize {
        let bound = self.bound().expect("validated problem sizes do not overflow");
        // ceil(log10(m)) is the digit count of m - 1 for every m ≥ 2.
        decimal_digits(bound - 1)
    }

    /// Draws one sample's terms into `terms` (cleared first).
    pub fn draw_terms<R: Rng + ?Sized>(&self, rng: &mut R, terms: &mut Vec<u64>) {
        terms.clear();
        terms.extend((0..self.n_terms).map(|_| rng.random_range(1..=self.largest)));
    }

    /// The exact answer for `terms`.
    pub fn answer(&self, terms: &[u64]) -> u64 {
        terms.iter().sum()
    }

    /// The input as the model reads it: terms joined by `+`, left-padded to `input_len`.
    pub fn format_input(&self, terms: &[u64]) -> String {
        let joined = terms.iter().map(u64::to_string).collect::<Vec<_>>().join("+");
        left_pad(&joined, self.input_len())
    }

    /// The answer as the model writes it: left-padded to `output_len`.
    pub fn format_output(&self, answer: u64) -> String {
        left_pad(&answer.to_string(), self.output_len())
    }

    /// Parses a user's expression such as `3+10` or ` 9+10+9` into its terms, checking
    /// that this model could have been trained on it.
    pub fn parse_expression(&self, line: &str) -> Result<Vec<u64>, ExpressionError> {
        let expression = line.trim();
        if expression.is_empty() {
            return Err(ExpressionError::Empty);
        }
        // Columns are 1-based character positions in the line as given.
        let first_column = line[..line.len() - line.trim_start().len()].chars().count() + 1;
        let length = expression.chars().count();
        if length > self.input_len() {
            return Err(ExpressionError::TooLong { length, max: self.input_len() });
        }
        if let Some((offset, character)) =
            expression.chars().enumerate().find(|&(_, c)| !(c.is_ascii_digit() || c == '+'))
        {
            return Err(ExpressionError::Unexpected { character, column: first_column + offset });
        }

        let mut terms = Vec::with_capacity(self.n_terms);
        let mut column = first_column;
        for term in expression.split('+') {
            if term.is_empty() {
                return Err(ExpressionError::MissingTerm { column });
            }
            let value = term.parse::<u64>().ok().filter(|v| (1..=self.largest).contains(v));
            let Some(value) = value else {
                return Err(ExpressionError::TermOutOfRange { term: term.to_owned(), column, largest: self.largest });
            };
            terms.push(value);
            column += term.len() + 1;
        }
        if terms.len() != self.n_terms {
            return Err(ExpressionError::WrongTermCount { found: terms.len(), expected: self.n_terms });
        }
        Ok(terms)
    }
}

fn left_pad(text: &str, width: usize) -> String {
    let padding = width.saturating_sub(text.chars().count());
    let mut padded = String::with_capacity(width.max(text.len()));
    padded.extend(std::iter::repeat_n(PAD, padding));
    padded.push_str(text);
    padded
}

/// Why a user's expression cannot be given to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpressionError {
    Empty,
    TooLong { length: usize, max: usize },
    Unexpected { character: char, column: usize },
    MissingTerm { column: usize },
    TermOutOfRange { term: String, column: usize, largest: u64 },
    WrongTermCount { found: usize, expected: usize },
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty expression"),
            Self::TooLong { length, max } => {
                write!(f, "expression is {length} characters long; this model reads at most {max}")
            }
            Self::Unexpected { character, column } => {
                write!(f, "unexpected character {character:?} at column {column}; expressions are digits joined by '+'")
            }
            Self::MissingTerm { column } => write!(f, "missing term at column {column}"),
            Self::TermOutOfRange { term, column, largest } => {
                write!(
                    f,
                    "term {term} at column {column} is outside 1..={largest}, the range this model was trained on"
                )
            }
            Self::WrongTermCount { found, expected } => {
                write!(f, "{found} terms given; this model was trained on exactly {expected}")
            }
        }
    }
}

impl std::error::Error for ExpressionError {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn reference() -> ProblemConfig {
        ProblemConfig::default()
    }

    #[test]
    fn lengths_follow_the_reference_worked_example() {
        assert_eq!(reference().input_len(), 8);
        assert_eq!(reference().output_len(), 2);
    }

    #[test]
    fn lengths_match_the_float_formulas_across_sizes() {
        for n_terms in 1..=6usize {
            for largest in [1u64, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 123_456] {
                let problem = ProblemConfig { n_terms, largest };
                let n = n_terms as f64;
                let input = n * ((largest as f64) + 1.0).log10().ceil() + n - 1.0;
                let output = (n * (largest as f64 + 1.0)).log10().ceil();
                assert_eq!(problem.input_len(), input as usize, "{problem:?}");
                assert_eq!(problem.output_len(), output as usize, "{problem:?}");
                let longest_sum = problem.format_output(problem.answer(&vec![largest; n_terms]));
                assert_eq!(longest_sum.len(), problem.output_len(), "{problem:?}");
            }
        }
    }

    #[test]
    fn formats_the_reference_worked_example() {
        let two_terms = ProblemConfig { n_terms: 2, largest: 10 };
        assert_eq!(two_terms.format_input(&[3, 10]), " 3+10");
        assert_eq!(two_terms.format_output(13), "13");
        assert_eq!(reference().format_input(&[10, 10, 10]), "10+10+10");
        assert_eq!(reference().format_output(9), " 9");
    }

    #[test]
    fn draws_terms_within_range_and_deterministically() {
        let problem = reference();
        let mut first = StdRng::seed_from_u64(7);
        let mut second = StdRng::seed_from_u64(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut seen = [false; 11];
        for _ in 0..1000 {
            problem.draw_terms(&mut first, &mut a);
            problem.draw_terms(&mut second, &mut b);
            assert_eq!(a, b);
            assert_eq!(a.len(), 3);
            for &term in &a {
                assert!((1..=10).contains(&term));
                seen[term as usize] = true;
            }
        }
        assert!(seen[1..].iter().all(|&s| s), "every term 1..=10 appears in 1000 draws");
    }

    #[test]
    fn parses_expressions_with_or_without_padding() {
        assert_eq!(reference().parse_expression("9+10+9"), Ok(vec![9, 10, 9]));
        assert_eq!(reference().parse_expression("  2+4+5\r\n"), Ok(vec![2, 4, 5]));
    }

    #[test]
    fn names_what_is_wrong_and_where() {
        let problem = reference();
        let cases = [
            ("", ExpressionError::Empty),
            ("   ", ExpressionError::Empty),
            ("1+2+3+4+5", ExpressionError::TooLong { length: 9, max: 8 }),
            ("1+x+3", ExpressionError::Unexpected { character: 'x', column: 3 }),
            (" 1 +2+3", ExpressionError::Unexpected { character: ' ', column: 3 }),
            ("1++2", ExpressionError::MissingTerm { column: 3 }),
            ("+1+2", ExpressionError::MissingTerm { column: 1 }),
            ("1+2+", ExpressionError::MissingTerm { column: 5 }),
            ("1+2", ExpressionError::WrongTermCount { found: 2, expected: 3 }),
            ("1+11+3", ExpressionError::TermOutOfRange { term: "11".into(), column: 3, largest: 10 }),
            ("  0+1+3", ExpressionError::TermOutOfRange { term: "0".into(), column: 3, largest: 10 }),
        ];
        for (line, expected) in cases {
            assert_eq!(problem.parse_expression(line), Err(expected), "{line:?}");
        }
    }

    #[test]
    fn rejects_sizes_that_overflow() {
        assert!(ProblemConfig { n_terms: 2, largest: u64::MAX }.validate().is_err());
        assert!(ProblemConfig { n_terms: 0, largest: 10 }.validate().is_err());
        assert!(ProblemConfig { n_terms: 3, largest: 0 }.validate().is_err());
        assert!(ProblemConfig { n_terms: 100_000_000, largest: 1 }.validate().is_err());
        assert!(ProblemConfig { n_terms: usize::MAX, largest: 1 }.validate().is_err());
        assert!(ProblemConfig { n_terms: 2048, largest: 1 }.validate().is_ok());
        assert!(reference().validate().is_ok());
    }
}
