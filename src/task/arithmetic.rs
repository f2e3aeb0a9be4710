//! The arithmetic problem: expressions such as `10+6` or `12*3-7`, their exact values, and how
//! both are written down for the model (left-padded with spaces, optionally reversed).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::task::vocab::{Alphabet, PAD};

/// Longest input accepted, in characters: far beyond what an encoder LSTM can learn, and small
/// enough that a typo such as `--terms 100000000` fails at once instead of exhausting memory.
pub const MAX_INPUT_LEN: usize = 4096;

/// Largest magnitude of a result (and of any product on the way): `u64::MAX`, so that every
/// sum of two 64-bit terms is answered exactly. Values are computed in `i128`.
pub const MAX_RESULT: i128 = u64::MAX as i128;

/// The four operators, in the order they take in the alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    Add,
    Subtract,
    Multiply,
    Divide,
}

impl Operator {
    pub const ALL: [Operator; 4] = [Operator::Add, Operator::Subtract, Operator::Multiply, Operator::Divide];

    pub fn symbol(self) -> char {
        match self {
            Operator::Add => '+',
            Operator::Subtract => '-',
            Operator::Multiply => '*',
            Operator::Divide => '/',
        }
    }

    pub fn from_symbol(symbol: char) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.symbol() == symbol)
    }
}

/// A non-empty set of operators, written as their symbols in canonical order (`+-*/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operators(Vec<Operator>);

impl Operators {
    pub fn contains(&self, op: Operator) -> bool {
        self.0.contains(&op)
    }

    pub fn iter(&self) -> impl Iterator<Item = Operator> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for Operators {
    type Err = String;

    /// `+-` or `*/+`: any non-empty subset of `+ - * /`, in any order, each once.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut operators = Vec::new();
        for (position, symbol) in text.chars().enumerate() {
            let Some(op) = Operator::from_symbol(symbol) else {
                return Err(format!("{symbol:?} (character {}) is not an operator; choose from + - * /", position + 1));
            };
            if operators.contains(&op) {
                return Err(format!("operator {symbol:?} is listed twice"));
            }
            operators.push(op);
        }
        if operators.is_empty() {
            return Err("at least one operator is needed (+ - * /)".to_owned());
        }
        operators.sort();
        Ok(Self(operators))
    }
}

impl fmt::Display for Operators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.iter().try_for_each(|op| write!(f, "{}", op.symbol()))
    }
}

/// How often each operator is drawn while training: `*=4,/=2` draws `*` four times and `/`
/// twice as often as an operator left unnamed (weight 1). Hard operators learn faster when
/// they are seen more; the problem, and what evaluation draws, stay uniform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorWeights([u32; 4]);

impl OperatorWeights {
    /// Largest weight: a thousand to one is already an operator left out in all but name.
    pub const MAX: u32 = 1000;

    pub fn weight(&self, op: Operator) -> u32 {
        self.0[op as usize]
    }

    /// The operators given a weight other than 1.
    pub fn weighted(&self) -> impl Iterator<Item = Operator> + '_ {
        Operator::ALL.into_iter().filter(|&op| self.weight(op) != 1)
    }

    /// One of `choices` (non-empty), each as likely as its weight.
    fn choose<R: Rng + ?Sized>(&self, rng: &mut R, choices: &[Operator]) -> Operator {
        let total: u32 = choices.iter().map(|&op| self.weight(op)).sum();
        let mut drawn = rng.random_range(0..total);
        for &op in choices {
            match drawn.checked_sub(self.weight(op)) {
                Some(rest) => drawn = rest,
                None => return op,
            }
        }
        unreachable!("a draw below the total weight falls on an operator")
    }
}

impl FromStr for OperatorWeights {
    type Err = String;

    /// `OP=N` items separated by commas, each operator at most once, N in 1..=1000.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = [1; 4];
        let mut named = Vec::new();
        for item in text.split(',') {
            let Some((symbol, weight)) = item.split_once('=') else {
                return Err(format!("{item:?} is not OP=WEIGHT (e.g. *=4,/=2)"));
            };
            let op = match symbol.trim().chars().collect::<Vec<_>>()[..] {
                [symbol] => Operator::from_symbol(symbol),
                _ => None,
            };
            let Some(op) = op else {
                return Err(format!("{:?} (in {item:?}) is not an operator; choose from + - * /", symbol.trim()));
            };
            if named.contains(&op) {
                return Err(format!("operator {:?} is weighted twice", op.symbol()));
            }
            let weight = weight.trim();
            let weight = weight.parse::<u32>().ok().filter(|w| (1..=Self::MAX).contains(w)).ok_or_else(|| {
                format!("{weight:?} (the weight of {:?}) is not a whole number from 1 to {}", op.symbol(), Self::MAX)
            })?;
            named.push(op);
            weights[op as usize] = weight;
        }
        Ok(Self(weights))
    }
}

impl fmt::Display for OperatorWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> =
            Operator::ALL.iter().map(|&op| format!("{}={}", op.symbol(), self.weight(op))).collect();
        write!(f, "{}", items.join(","))
    }
}

/// Stores each type in config.json as the text users write on the command line (`+-*/`,
/// `+=1,-=1,*=6,/=6`): `Display` writes it, `FromStr` reads it back with the same errors.
macro_rules! serde_as_text {
    ($($kind:ty),+) => {$(
        impl Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $kind {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

serde_as_text!(Operators, OperatorWeights);

/// How many terms an expression has: `3`, or a range such as `2..4` (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermCount {
    pub min: usize,
    pub max: usize,
}

impl FromStr for TermCount {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim().parse::<usize>().map_err(|_| format!("{part:?} is not a number of terms (use N or MIN..MAX)"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max.strip_prefix('=').unwrap_or(max))?),
            None => (number(text)?, number(text)?),
        };
        if min > max {
            return Err(format!("{text:?}: the smallest number of terms exceeds the largest"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for TermCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}..{}", self.min, self.max) }
    }
}

/// Which expressions the model learns: `min_terms..=max_terms` terms, each drawn uniformly from
/// `1..=largest`, joined by operators drawn uniformly from `operators`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithmeticProblem {
    pub operators: Operators,
    pub min_terms: usize,
    pub max_terms: usize,
    pub largest: u64,
    /// The encoder reads each expression backwards (Sutskever et al., 2014); users still
    /// type and see it forwards.
    pub reverse: bool,
    /// The decoder writes each answer backwards, least significant digit first, so that carries
    /// flow in writing order; users still see answers forwards. Recorded only when set, so a
    /// forwards model's `config.json` is what it was before the option existed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse_output: bool,
    /// The symbols in class-index order that a saved model's `config.json` records (its
    /// top-level `alphabet`), which are then the source of truth; `None` for a new problem,
    /// whose alphabet follows from its operators ([`ArithmeticProblem::own_alphabet`]).
    #[serde(skip)]
    pub alphabet: Option<Alphabet>,
}

impl Default for ArithmeticProblem {
    /// The reference problem: three terms, each 1..=10, added (`10+10+10` is the longest input).
    fn default() -> Self {
        Self {
            operators: Operators(vec![Operator::Add]),
            min_terms: 3,
            max_terms: 3,
            largest: 10,
            reverse: false,
            reverse_output: false,
            alphabet: None,
        }
    }
}

/// One expression: `terms[0] operators[0] terms[1] ...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expression {
    pub terms: Vec<u64>,
    pub operators: Vec<Operator>,
}

impl Expression {
    /// The exact value with the usual precedence: `*` and `/` first, left to right; `/` is floor
    /// division. Terms are at least 1, so no divisor is ever zero.
    pub fn value(&self) -> i128 {
        let mut total: i128 = 0;
        let mut sign: i128 = 1;
        let mut product = i128::from(self.terms[0]);
        for (&op, &term) in self.operators.iter().zip(&self.terms[1..]) {
            let term = i128::from(term);
            match op {
                Operator::Multiply => product *= term,
                Operator::Divide => product = product.div_euclid(term),
                Operator::Add | Operator::Subtract => {
                    total += sign * product;
                    sign = if op == Operator::Add { 1 } else { -1 };
                    product = term;
                }
            }
        }
        total + sign * product
    }

    /// Which operators occur in the expression.
    pub fn uses(&self, op: Operator) -> bool {
        self.operators.contains(&op)
    }
}

impl fmt::Display for Expression {
    /// `10+6`: terms and operators, no spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.terms[0])?;
        for (op, term) in self.operators.iter().zip(&self.terms[1..]) {
            write!(f, "{}{term}", op.symbol())?;
        }
        Ok(())
    }
}

/// Number of decimal digits of `n` (1 for 0). Equals the reference's `ceil(log10(n+1))` for
/// n ≥ 1, computed exactly in integers.
fn decimal_digits(mut n: u128) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Characters of `value` written in decimal, minus sign included.
fn written_len(value: i128) -> usize {
    decimal_digits(value.unsigned_abs()) + usize::from(value < 0)
}

impl ArithmeticProblem {
    /// Checks the values before any work: sizes ≥ 1, inputs of a sane length, and results that fit
    /// 64-bit arithmetic.
    pub fn validate(&self) -> Result<()> {
        if self.min_terms == 0 {
            bail!("the number of terms must be at least 1");
        }
        if self.min_terms > self.max_terms {
            bail!("the smallest number of terms ({}) exceeds the largest ({})", self.min_terms, self.max_terms);
        }
        if self.largest == 0 {
            bail!("the largest term must be at least 1");
        }
        if self.checked_input_len().is_none_or(|len| len > MAX_INPUT_LEN) {
            bail!(
                "{} terms of up to {} make inputs longer than the {MAX_INPUT_LEN} characters this tool accepts",
                self.max_terms,
                self.largest
            );
        }
        if self.result_range().is_none() {
            bail!(
                "{} terms of up to {} joined by {} give results that overflow 64-bit arithmetic; \
                 choose fewer terms or a smaller --largest",
                self.max_terms,
                self.largest,
                self.operators
            );
        }
        if let Some(stored) = &self.alphabet
            && let Some(missing) = self.own_alphabet().symbols().find(|&symbol| stored.index_of(symbol).is_none())
        {
            bail!(
                "the alphabet \"{}\" lacks {missing:?}, which expressions of {} read or write",
                stored.as_string(),
                self.operators
            );
        }
        Ok(())
    }

    /// The symbols and their class indices: the saved model's when it has one, else
    /// [`ArithmeticProblem::own_alphabet`].
    pub fn alphabet(&self) -> Alphabet {
        self.alphabet.clone().unwrap_or_else(|| self.own_alphabet())
    }

    /// The characters this problem reads and writes: digits, its operators, the padding space,
    /// in that order. For the reference problem this is the reference's `0123456789+ `.
    pub fn own_alphabet(&self) -> Alphabet {
        let symbols: String = ('0'..='9').chain(self.operators.iter().map(Operator::symbol)).chain([PAD]).collect();
        Alphabet::from_symbols(&symbols).expect("digits, distinct operators and the pad are distinct")
    }

    /// Input length: `max_terms * ceil(log10(largest+1)) + max_terms - 1` (8 for the reference):
    /// every term as long as the largest, one character per operator.
    pub fn input_len(&self) -> usize {
        self.checked_input_len().expect("validated problem sizes do not overflow")
    }

    fn checked_input_len(&self) -> Option<usize> {
        // n·digits + n − 1 = n·(digits + 1) − 1, which cannot underflow for n ≥ 1.
        self.max_terms.checked_mul(decimal_digits(u128::from(self.largest)) + 1)?.checked_sub(1)
    }

    /// Output length: characters of the longest possible result, minus sign included. Addition
    /// alone keeps the reference's `ceil(log10(max_terms * (largest+1)))` (2 for the reference),
    /// a bound that can exceed the longest sum by one character.
    pub fn output_len(&self) -> usize {
        let (min, max) = self.result_range().expect("validated problems have results in range");
        if self.operators.iter().eq([Operator::Add]) {
            let terms = self.max_terms as u128;
            // ceil(log10(m)) is the digit count of m - 1 for every m ≥ 2.
            return decimal_digits(terms * (u128::from(self.largest) + 1) - 1);
        }
        written_len(min).max(written_len(max))
    }

    /// The smallest and largest values any expression of this problem can take, or `None` when
    /// some value (or product on the way) is larger in magnitude than [`MAX_RESULT`].
    ///
    /// An expression is a sum of products (chains joined by `*` and `/`), so the extremes follow
    /// from the extremes of one chain of `k` terms by dynamic programming over the term count.
    pub fn result_range(&self) -> Option<(i128, i128)> {
        let largest = i128::from(self.largest);
        let has_multiply = self.operators.contains(Operator::Multiply);
        let has_divide = self.operators.contains(Operator::Divide);
        // Extremes of one chain of k terms; None when no operator can join k terms into a chain.
        let chain = |k: usize| -> Option<Option<(i128, i128)>> {
            if k == 1 {
                return Some(Some((1, largest)));
            }
            if !has_multiply && !has_divide {
                return Some(None);
            }
            let max = if has_multiply { largest.checked_pow(u32::try_from(k).ok()?)? } else { largest };
            let min = if has_divide && largest >= 2 { 0 } else { 1 };
            Some(Some((min, max)))
        };
        let chains: Vec<Option<(i128, i128)>> = (0..=self.max_terms).map(|k| chain(k.max(1))).collect::<Option<_>>()?;
        if chains.iter().flatten().any(|&(_, max)| max > MAX_RESULT) {
            return None;
        }
        let (has_add, has_subtract) =
            (self.operators.contains(Operator::Add), self.operators.contains(Operator::Subtract));
        // rest[m]: extremes of the contribution of m terms that follow the first chain.
        let mut rest: Vec<Option<(i128, i128)>> = vec![Some((0, 0))];
        for m in 1..=self.max_terms {
            let mut best: Option<(i128, i128)> = None;
            for k in 1..=m {
                let (Some((chain_min, chain_max)), Some((rest_min, rest_max))) = (chains[k], rest[m - k]) else {
                    continue;
                };
                let contributions = match (has_add, has_subtract) {
                    (true, true) => Some((-chain_max, chain_max)),
                    (true, false) => Some((chain_min, chain_max)),
                    (false, true) => Some((-chain_max, -chain_min)),
                    (false, false) => None,
                };
                if let Some((low, high)) = contributions {
                    best = Some(match best {
                        None => (low + rest_min, high + rest_max),
                        Some((min, max)) => (min.min(low + rest_min), max.max(high + rest_max)),
                    });
                }
            }
            rest.push(best);
        }
        let mut range: Option<(i128, i128)> = None;
        for n in self.min_terms..=self.max_terms {
            for k in 1..=n {
                let (Some((chain_min, chain_max)), Some((rest_min, rest_max))) = (chains[k], rest[n - k]) else {
                    continue;
                };
                let (low, high) = (chain_min + rest_min, chain_max + rest_max);
                range = Some(range.map_or((low, high), |(min, max)| (min.min(low), max.max(high))));
            }
        }
        let (min, max) = range?;
        (min >= -MAX_RESULT && max <= MAX_RESULT).then_some((min, max))
    }

    /// Draws one expression into `expression` (its vectors are reused).
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, expression: &mut Expression) {
        self.draw_shaped(rng, expression, None, None);
    }

    /// Digits of the largest term.
    pub fn term_digits(&self) -> u32 {
        decimal_digits(u128::from(self.largest)) as u32
    }

    /// [`ArithmeticProblem::draw`] with terms of at most `digits` digits (fewer than
    /// [`ArithmeticProblem::term_digits`]), but for a quarter of them drawn from the whole range
    /// (the "mixed" curriculum of Zaremba & Sutskever, 2014, under which the hardest cases are
    /// never absent); operators drawn by `weights` rather than uniformly. With `None` for both,
    /// exactly what `draw` draws.
    pub fn draw_shaped<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        expression: &mut Expression,
        digits: Option<u32>,
        weights: Option<&OperatorWeights>,
    ) {
        // Nothing is drawn for a fixed choice, so the reference problem's samples are exactly
        // those of a generator that knows only addition.
        let n_terms = if self.min_terms == self.max_terms {
            self.max_terms
        } else {
            rng.random_range(self.min_terms..=self.max_terms)
        };
        expression.terms.clear();
        expression.terms.extend((0..n_terms).map(|_| {
            let Some(digits) = digits.filter(|_| rng.random_range(0..4) != 0) else {
                return rng.random_range(1..=self.largest);
            };
            let length = rng.random_range(1..=digits.max(1));
            let low = 10u64.pow(length - 1);
            rng.random_range(low..=low.saturating_mul(10).saturating_sub(1).min(self.largest))
        }));
        expression.operators.clear();
        let choices = &self.operators.0;
        expression.operators.extend((1..n_terms).map(|_| match (choices.len(), weights) {
            (1, _) => choices[0],
            (_, Some(weights)) => weights.choose(rng, choices),
            (n, None) => choices[rng.random_range(0..n)],
        }));
    }

    /// The expression as the user sees it: left-padded to `input_len`.
    pub fn display_input(&self, expression: &Expression) -> String {
        left_pad(&expression.to_string(), self.input_len())
    }

    /// The expression as the encoder reads it: reversed when the problem says so, then
    /// left-padded (the padding always comes first).
    pub fn model_input(&self, expression: &Expression) -> String {
        let text = expression.to_string();
        if self.reverse {
            left_pad(&text.chars().rev().collect::<String>(), self.input_len())
        } else {
            left_pad(&text, self.input_len())
        }
    }

    /// The answer as the model writes it: left-padded to `output_len`.
    pub fn format_output(&self, value: i128) -> String {
        self.output_formatter()(value)
    }

    /// [`ArithmeticProblem::format_output`] for callers that format many answers: the output
    /// length (an exact search over the operators) is computed once, not per answer.
    pub fn output_formatter(&self) -> impl Fn(i128) -> String + use<> {
        let output_len = self.output_len();
        move |value| left_pad(&value.to_string(), output_len)
    }

    /// What the decoder writes for a value: [`ArithmeticProblem::format_output`], backwards with
    /// [`ArithmeticProblem::reverse_output`].
    pub fn target_formatter(&self) -> impl Fn(i128) -> String + use<> {
        let (format_output, reverse) = (self.output_formatter(), self.reverse_output);
        move |value| {
            let text = format_output(value);
            if reverse { text.chars().rev().collect() } else { text }
        }
    }

    /// An answer as the decoder wrote it, put in reading order (forwards).
    pub fn as_read(&self, written: String) -> String {
        if self.reverse_output { written.chars().rev().collect() } else { written }
    }

    /// Per-character values of an answer in writing order, put in reading order.
    pub fn as_read_order<T: Copy>(&self, written: &[T]) -> Vec<T> {
        if self.reverse_output { written.iter().rev().copied().collect() } else { written.to_vec() }
    }

    /// Parses a user's expression such as `3+10` or ` 9*10-9`, checking that this model could
    /// have been trained on it.
    pub fn parse_expression(&self, line: &str) -> Result<Expression, ExpressionError> {
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
        let mut parsed = Expression::default();
        let mut term_start: Option<(usize, usize)> = None; // (byte offset, column) of the current term
        let close_term = |parsed: &mut Expression, start: Option<(usize, usize)>, end: usize, column: usize| {
            let Some((offset, term_column)) = start else {
                return Err(ExpressionError::MissingTerm { column });
            };
            let term = &expression[offset..end];
            match term.parse::<u64>().ok().filter(|v| (1..=self.largest).contains(v)) {
                Some(value) => {
                    parsed.terms.push(value);
                    Ok(())
                }
                None => Err(ExpressionError::TermOutOfRange {
                    term: term.to_owned(),
                    column: term_column,
                    largest: self.largest,
                }),
            }
        };
        for (position, (offset, character)) in expression.char_indices().enumerate() {
            let column = first_column + position;
            if character.is_ascii_digit() {
                term_start.get_or_insert((offset, column));
                continue;
            }
            let Some(op) = Operator::from_symbol(character) else {
                return Err(ExpressionError::Unexpected { character, column, operators: self.operators.to_string() });
            };
            if !self.operators.contains(op) {
                return Err(ExpressionError::UnsupportedOperator {
                    operator: character,
                    column,
                    operators: self.operators.to_string(),
                });
            }
            close_term(&mut parsed, term_start.take(), offset, column)?;
            parsed.operators.push(op);
        }
        close_term(&mut parsed, term_start, expression.len(), first_column + length)?;
        let found = parsed.terms.len();
        if !(self.min_terms..=self.max_terms).contains(&found) {
            return Err(ExpressionError::WrongTermCount {
                found,
                expected: TermCount { min: self.min_terms, max: self.max_terms },
            });
        }
        Ok(parsed)
    }

    /// One line saying what the problem is, for the start of a training run.
    pub fn describe(&self) -> String {
        let terms = TermCount { min: self.min_terms, max: self.max_terms };
        format!(
            "{terms} terms, each 1..={}, joined by {}{}; inputs of {} characters, outputs of {}",
            self.largest,
            self.operators,
            match (self.reverse, self.reverse_output) {
                (false, false) => "",
                (true, false) => ", read reversed",
                (false, true) => ", answers written reversed",
                (true, true) => ", read and answers written reversed",
            },
            self.input_len(),
            self.output_len()
        )
    }
}

fn is_false(flag: &bool) -> bool {
    !flag
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
    Unexpected { character: char, column: usize, operators: String },
    UnsupportedOperator { operator: char, column: usize, operators: String },
    MissingTerm { column: usize },
    TermOutOfRange { term: String, column: usize, largest: u64 },
    WrongTermCount { found: usize, expected: TermCount },
}

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty expression"),
            Self::TooLong { length, max } => {
                write!(f, "expression is {length} characters long; this model reads at most {max}")
            }
            Self::Unexpected { character, column, operators } => write!(
                f,
                "unexpected character {character:?} at column {column}; expressions are numbers joined by {operators}"
            ),
            Self::UnsupportedOperator { operator, column, operators } => {
                write!(f, "operator {operator:?} at column {column} is not one this model was trained on ({operators})")
            }
            Self::MissingTerm { column } => write!(f, "missing term at column {column}"),
            Self::TermOutOfRange { term, column, largest } => {
                write!(
                    f,
                    "term {term} at column {column} is outside 1..={largest}, the range this model was trained on"
                )
            }
            Self::WrongTermCount { found, expected } if expected.min == expected.max => {
                write!(f, "{found} terms given; this model was trained on exactly {}", expected.max)
            }
            Self::WrongTermCount { found, expected } => {
                write!(f, "{found} terms given; this model was trained on {} to {}", expected.min, expected.max)
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

    fn reference() -> ArithmeticProblem {
        ArithmeticProblem::default()
    }

    fn problem(operators: &str, terms: &str, largest: u64) -> ArithmeticProblem {
        let terms: TermCount = terms.parse().expect("valid term count");
        ArithmeticProblem {
            operators: operators.parse().expect("valid operators"),
            min_terms: terms.min,
            max_terms: terms.max,
            largest,
            reverse: false,
            reverse_output: false,
            alphabet: None,
        }
    }

    fn expression(text: &str, problem: &ArithmeticProblem) -> Expression {
        problem.parse_expression(text).expect("valid expression")
    }

    /// Every expression of a small problem, for exhaustive checks.
    fn all_expressions(problem: &ArithmeticProblem) -> Vec<Expression> {
        let mut all = Vec::new();
        for n in problem.min_terms..=problem.max_terms {
            let mut partial = vec![Expression { terms: vec![], operators: vec![] }];
            for position in 0..n {
                let mut next = Vec::new();
                for e in &partial {
                    for term in 1..=problem.largest {
                        if position == 0 {
                            next.push(Expression { terms: vec![term], operators: vec![] });
                        } else {
                            for op in problem.operators.iter() {
                                let mut e = e.clone();
                                e.terms.push(term);
                                e.operators.push(op);
                                next.push(e);
                            }
                        }
                    }
                }
                partial = next;
            }
            all.extend(partial);
        }
        all
    }

    #[test]
    fn lengths_follow_the_reference_worked_example() {
        assert_eq!(reference().input_len(), 8);
        assert_eq!(reference().output_len(), 2);
        assert_eq!(reference().alphabet().as_string(), "0123456789+ ");
    }

    #[test]
    fn addition_lengths_match_the_reference_float_formulas() {
        for n_terms in 1..=6usize {
            for largest in [1u64, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 123_456] {
                let problem = problem("+", &n_terms.to_string(), largest);
                let n = n_terms as f64;
                let input = n * ((largest as f64) + 1.0).log10().ceil() + n - 1.0;
                let output = (n * (largest as f64 + 1.0)).log10().ceil();
                assert_eq!(problem.input_len(), input as usize, "{problem:?}");
                assert_eq!(problem.output_len(), output as usize, "{problem:?}");
            }
        }
    }

    #[test]
    fn result_range_and_output_length_are_exact_for_every_operator_mix() {
        for operators in ["+", "-", "*", "/", "+-", "+*", "-*", "-/", "*/", "+-*", "+-/", "+-*/"] {
            for (terms, largest) in [("1", 9), ("2", 9), ("3", 9), ("1..3", 12), ("2..3", 1), ("2", 2)] {
                let problem = problem(operators, terms, largest);
                let values: Vec<i128> = all_expressions(&problem).iter().map(Expression::value).collect();
                let (min, max) = (*values.iter().min().unwrap(), *values.iter().max().unwrap());
                assert_eq!(problem.result_range(), Some((min, max)), "{operators} {terms} {largest}");
                let longest = values.iter().map(|&v| written_len(v)).max().unwrap();
                assert!(problem.output_len() >= longest, "{operators} {terms} {largest}");
                if operators != "+" {
                    assert_eq!(problem.output_len(), longest, "{operators} {terms} {largest}");
                }
                for v in values {
                    assert_eq!(problem.format_output(v).chars().count(), problem.output_len());
                }
            }
        }
    }

    #[test]
    fn evaluates_with_precedence_and_floor_division() {
        let calculator = problem("+-*/", "1..5", 999);
        for (text, value) in [
            ("2+3*4", 14),
            ("2*3+4", 10),
            ("10-2*3", 4),
            ("7/2", 3),
            ("7/2*2", 6),
            ("1-7/2", -2),
            ("3-10", -7),
            ("1-2-3", -4),
            ("100/7/2", 7),
            ("8/3+8/3", 4),
            ("2*3*4-1", 23),
        ] {
            assert_eq!(expression(text, &calculator).value(), value, "{text}");
        }
    }

    #[test]
    fn negative_results_get_the_minus_sign_and_room_for_it() {
        let subtraction = problem("+-", "2", 999);
        assert_eq!(subtraction.result_range(), Some((-998, 1998)));
        assert_eq!(subtraction.output_len(), 4);
        assert_eq!(subtraction.format_output(-998), "-998");
        assert_eq!(subtraction.format_output(5), "   5");
        assert_eq!(subtraction.alphabet().as_string(), "0123456789+- ");
        let calculator = problem("+-*/", "2", 999);
        assert_eq!(calculator.result_range(), Some((-998, 998_001)));
        assert_eq!(calculator.output_len(), 6);
        assert_eq!(calculator.input_len(), 7);
        assert_eq!(calculator.alphabet().as_string(), "0123456789+-*/ ");
    }

    #[test]
    fn formats_the_reference_worked_example() {
        let two_terms = problem("+", "2", 10);
        let e = Expression { terms: vec![3, 10], operators: vec![Operator::Add] };
        assert_eq!(two_terms.display_input(&e), " 3+10");
        assert_eq!(two_terms.model_input(&e), " 3+10");
        assert_eq!(two_terms.format_output(13), "13");
        assert_eq!(reference().format_output(9), " 9");
    }

    #[test]
    fn reversal_reads_backwards_after_the_padding() {
        let backwards = ArithmeticProblem { reverse_output: true, ..problem("+-", "2", 99) };
        assert_eq!(backwards.format_output(-98), "-98");
        assert_eq!(backwards.target_formatter()(-98), "89-");
        assert_eq!(backwards.target_formatter()(7), "7  ");
        assert_eq!(backwards.as_read("7  ".to_owned()), "  7");
        assert_eq!(backwards.as_read_order(&[1, 2, 3]), vec![3, 2, 1]);
        assert!(backwards.describe().contains("answers written reversed"), "{}", backwards.describe());
        let forwards = problem("+-", "2", 99);
        assert_eq!(forwards.target_formatter()(-98), "-98");
        assert_eq!(forwards.as_read("7  ".to_owned()), "7  ");
        let reversed = ArithmeticProblem { reverse: true, ..problem("+-", "2", 99) };
        let e = expression("12-3", &reversed);
        assert_eq!(reversed.display_input(&e), " 12-3");
        assert_eq!(reversed.model_input(&e), " 3-21");
    }

    #[test]
    fn variable_term_counts_are_padded_to_the_longest() {
        let variable = problem("+", "2..4", 10);
        assert_eq!(variable.input_len(), 11);
        assert_eq!(variable.output_len(), 2);
        let short = expression("1+2", &variable);
        assert_eq!(variable.display_input(&short), "        1+2");
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = [false; 5];
        let mut drawn = Expression::default();
        for _ in 0..500 {
            variable.draw(&mut rng, &mut drawn);
            seen[drawn.terms.len()] = true;
            assert_eq!(drawn.operators.len() + 1, drawn.terms.len());
            let shown = variable.display_input(&drawn);
            assert_eq!(shown.chars().count(), 11);
            assert_eq!(variable.parse_expression(&shown).as_ref(), Ok(&drawn));
        }
        assert_eq!(seen, [false, false, true, true, true], "2, 3 and 4 terms all appear");
    }

    #[test]
    fn draws_within_range_every_operator_deterministically() {
        let calculator = problem("+-*/", "2..3", 10);
        let mut first = StdRng::seed_from_u64(7);
        let mut second = StdRng::seed_from_u64(7);
        let (mut a, mut b) = (Expression::default(), Expression::default());
        let mut seen_terms = [false; 11];
        let mut seen_operators = [false; 4];
        for _ in 0..1000 {
            calculator.draw(&mut first, &mut a);
            calculator.draw(&mut second, &mut b);
            assert_eq!(a, b);
            for &term in &a.terms {
                assert!((1..=10).contains(&term));
                seen_terms[term as usize] = true;
            }
            for &op in &a.operators {
                seen_operators[op as usize] = true;
            }
            let (min, max) = calculator.result_range().unwrap();
            assert!((min..=max).contains(&a.value()));
        }
        assert!(seen_terms[1..].iter().all(|&s| s), "every term 1..=10 appears in 1000 draws");
        assert!(seen_operators.iter().all(|&s| s), "every operator appears in 1000 draws");
    }

    #[test]
    fn parses_expressions_with_or_without_padding() {
        assert_eq!(expression("9+10+9", &reference()).terms, vec![9, 10, 9]);
        assert_eq!(expression("  2+4+5\r\n", &reference()).terms, vec![2, 4, 5]);
        let calculator = problem("+-*/", "2", 999);
        let parsed = expression(" 12*3", &calculator);
        assert_eq!(parsed.operators, vec![Operator::Multiply]);
        assert_eq!(parsed.to_string(), "12*3");
    }

    #[test]
    fn names_what_is_wrong_and_where() {
        let problem = reference();
        let ops = || "+".to_owned();
        let exactly_three = TermCount { min: 3, max: 3 };
        let cases = [
            ("", ExpressionError::Empty),
            ("   ", ExpressionError::Empty),
            ("1+2+3+4+5", ExpressionError::TooLong { length: 9, max: 8 }),
            ("1+x+3", ExpressionError::Unexpected { character: 'x', column: 3, operators: ops() }),
            (" 1 +2+3", ExpressionError::Unexpected { character: ' ', column: 3, operators: ops() }),
            ("1*2+3", ExpressionError::UnsupportedOperator { operator: '*', column: 2, operators: ops() }),
            ("1++2", ExpressionError::MissingTerm { column: 3 }),
            ("+1+2", ExpressionError::MissingTerm { column: 1 }),
            ("1+2+", ExpressionError::MissingTerm { column: 5 }),
            ("1+2", ExpressionError::WrongTermCount { found: 2, expected: exactly_three }),
            ("1+11+3", ExpressionError::TermOutOfRange { term: "11".into(), column: 3, largest: 10 }),
            ("  0+1+3", ExpressionError::TermOutOfRange { term: "0".into(), column: 3, largest: 10 }),
        ];
        for (line, expected) in cases {
            assert_eq!(problem.parse_expression(line), Err(expected), "{line:?}");
        }
        let message = problem.parse_expression("1+2").unwrap_err().to_string();
        assert_eq!(message, "2 terms given; this model was trained on exactly 3");
    }

    #[test]
    fn rejects_sizes_that_overflow() {
        assert!(problem("+", "2", u64::MAX).validate().is_err());
        assert!(problem("+", "1", u64::MAX).validate().is_ok());
        assert!(problem("+", "2", u64::MAX / 2).validate().is_ok());
        assert!(problem("-", "2", u64::MAX).validate().is_ok(), "1 - u64::MAX still fits");
        assert!(problem("-", "3", u64::MAX).validate().is_err());
        assert!(problem("*", "3", 10_000_000).validate().is_err());
        assert!(problem("*", "3", 2_000_000).validate().is_ok());
        assert!(problem("+", "0", 10).validate().is_err());
        assert!(problem("+", "3", 0).validate().is_err());
        assert!(problem("+", "100000000", 1).validate().is_err());
        assert!(problem("+", &usize::MAX.to_string(), 1).validate().is_err());
        assert!(problem("+*", "2048", 1).validate().is_ok());
        assert!(reference().validate().is_ok());
    }

    #[test]
    fn parses_operator_sets_and_term_counts() {
        assert_eq!("*+".parse::<Operators>().map(|o| o.to_string()), Ok("+*".to_owned()));
        assert!("".parse::<Operators>().is_err());
        assert!("++".parse::<Operators>().is_err());
        assert!("+x".parse::<Operators>().is_err());
        assert_eq!("3".parse(), Ok(TermCount { min: 3, max: 3 }));
        assert_eq!("2..4".parse(), Ok(TermCount { min: 2, max: 4 }));
        assert_eq!("2..=4".parse(), Ok(TermCount { min: 2, max: 4 }));
        assert!("4..2".parse::<TermCount>().is_err());
        assert!("x".parse::<TermCount>().is_err());
    }

    #[test]
    fn parses_operator_weights_and_names_a_bad_item() {
        let weights: OperatorWeights = " * = 4,/=2".parse().expect("weights");
        assert_eq!(weights.to_string(), "+=1,-=1,*=4,/=2");
        assert_eq!(weights.to_string().parse(), Ok(weights), "what config.json records reads back");
        assert_eq!(weights.weighted().collect::<Vec<_>>(), vec![Operator::Multiply, Operator::Divide]);
        for (text, reason) in [
            ("", "\"\" is not OP=WEIGHT"),
            ("*4", "\"*4\" is not OP=WEIGHT"),
            ("x=2", "\"x\" (in \"x=2\") is not an operator"),
            ("**=2", "\"**\" (in \"**=2\") is not an operator"),
            ("*=2,*=3", "operator '*' is weighted twice"),
            ("*=0", "\"0\" (the weight of '*') is not a whole number from 1 to 1000"),
            ("/=1001", "\"1001\" (the weight of '/')"),
            ("-=1.5", "\"1.5\" (the weight of '-')"),
        ] {
            let error = text.parse::<OperatorWeights>().expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn weighted_operators_are_drawn_as_often_as_their_weights_say() {
        let calculator = problem("+-*/", "2", 999);
        let weights: OperatorWeights = "*=5,/=3".parse().expect("weights");
        let mut rng = StdRng::seed_from_u64(3);
        let mut expression = Expression::default();
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            calculator.draw_shaped(&mut rng, &mut expression, None, Some(&weights));
            counts[expression.operators[0] as usize] += 1;
        }
        // Shares 1/10, 1/10, 5/10, 3/10 of 20,000 draws: 2,000, 2,000, 10,000, 6,000, each
        // within about four standard deviations.
        for (count, expected) in counts.into_iter().zip([2000, 2000, 10_000, 6000]) {
            assert!(count.abs_diff(expected) < 300, "{counts:?}");
        }
        // An operator the problem does not draw is never drawn, whatever its weight.
        let sums = problem("+-", "2", 999);
        for _ in 0..1000 {
            sums.draw_shaped(&mut rng, &mut expression, None, Some(&weights));
            assert!(matches!(expression.operators[0], Operator::Add | Operator::Subtract));
        }
    }
}
