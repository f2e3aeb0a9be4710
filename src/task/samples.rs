//! Samples of one task, held together with the problem they belong to.
//!
//! Each variant pairs a problem with its own kind of sample, so no code can hand one task's
//! samples to another task's problem. Parsing users' lines (here), the tensors the model reads
//! and writes ([`crate::data`]) and what the commands print match on [`Samples`] alone.

use super::{ArithmeticProblem, Expression, InputError, PairInput, PairsProblem, SequenceProblem, Task};

/// Samples of one task, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples<'t> {
    /// Expressions of an arithmetic problem.
    Arithmetic(&'t ArithmeticProblem, Vec<Expression>),
    /// The autoencoder's sequences, each `problem.length` values long.
    Sequences(&'t SequenceProblem, Vec<Vec<f32>>),
    /// Sources of a model of pairs, each with its expected target when one is known.
    Pairs(&'t PairsProblem, Vec<PairInput>),
}

impl<'t> Samples<'t> {
    /// No samples yet, of `task`'s kind.
    pub fn of(task: &'t Task) -> Self {
        match task {
            Task::Arithmetic(problem) => Samples::Arithmetic(problem, Vec::new()),
            Task::Autoencoder(problem) => Samples::Sequences(problem, Vec::new()),
            Task::Pairs(problem) => Samples::Pairs(problem, Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Samples::Arithmetic(_, expressions) => expressions.len(),
            Samples::Sequences(_, sequences) => sequences.len(),
            Samples::Pairs(_, pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the samples in `range`.
    pub fn range(&self, range: std::ops::Range<usize>) -> Self {
        match self {
            Samples::Arithmetic(problem, expressions) => Samples::Arithmetic(problem, expressions[range].to_vec()),
            Samples::Sequences(problem, sequences) => Samples::Sequences(problem, sequences[range].to_vec()),
            Samples::Pairs(problem, pairs) => Samples::Pairs(problem, pairs[range].to_vec()),
        }
    }

    /// Forgets the samples, keeping the problem (and the memory, for the next batch).
    pub fn clear(&mut self) {
        match self {
            Samples::Arithmetic(_, expressions) => expressions.clear(),
            Samples::Sequences(_, sequences) => sequences.clear(),
            Samples::Pairs(_, pairs) => pairs.clear(),
        }
    }

    /// Parses one line of user input and appends it. Returns the source tokens that the model's
    /// vocabulary lacks and reads as `<unk>` (column, token): only a model of pairs has any.
    pub fn parse_into(&mut self, line: &str) -> Result<&[(usize, String)], InputError> {
        match self {
            Samples::Arithmetic(problem, expressions) => {
                expressions.push(problem.parse_expression(line).map_err(InputError::Expression)?);
                Ok(&[])
            }
            Samples::Sequences(problem, sequences) => {
                sequences.push(problem.parse_sequence(line).map_err(InputError::Sequence)?);
                Ok(&[])
            }
            Samples::Pairs(problem, pairs) => {
                pairs.push(problem.parse_line(line).map_err(InputError::Pair)?);
                Ok(pairs.last().map_or(&[], |pair| pair.unknown.as_slice()))
            }
        }
    }

    /// Appends a source and its expected target, read from the columns of a CSV file, to
    /// samples of pairs; other tasks read `source` as a line.
    pub fn parse_pair_into(&mut self, source: &str, target: Option<&str>) -> Result<&[(usize, String)], InputError> {
        match self {
            Samples::Pairs(problem, pairs) => {
                pairs.push(problem.parse_pair(source, target).map_err(InputError::Pair)?);
                Ok(pairs.last().map_or(&[], |pair| pair.unknown.as_slice()))
            }
            _ => self.parse_into(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_line_leaves_the_samples_as_they_were() {
        let task = Task::default();
        let mut samples = Samples::of(&task);
        assert_eq!(samples.parse_into("1+2+3"), Ok(&[][..]));
        assert!(samples.parse_into("1+x").is_err());
        assert_eq!(samples.len(), 1);
        let Samples::Arithmetic(_, expressions) = &samples else { panic!("the reference is arithmetic") };
        assert_eq!(expressions[0].value(), 6);
        samples.clear();
        assert!(samples.is_empty());
    }
}
