//! The alphabet: which characters a model reads and writes, and their indices.

use anyhow::{Result, bail};

/// An ordered set of symbols; a symbol's position is its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alphabet {
    symbols: Vec<char>,
}

/// The padding symbol. Inputs and outputs are left-padded with it, as in the reference.
pub const PAD: char = ' ';

impl Alphabet {
    /// The reference alphabet for the addition problem: `0`..`9`, `+`, space (space = 11).
    pub fn addition() -> Self {
        Self { symbols: "0123456789+ ".chars().collect() }
    }

    /// An alphabet from its symbols in index order; each symbol may appear once.
    pub fn from_symbols(symbols: &str) -> Result<Self> {
        let symbols: Vec<char> = symbols.chars().collect();
        for (position, symbol) in symbols.iter().enumerate() {
            if symbols[..position].contains(symbol) {
                bail!("alphabet {:?} lists {symbol:?} twice", String::from_iter(&symbols));
            }
        }
        if !symbols.contains(&PAD) {
            bail!("alphabet {:?} has no padding symbol (space)", String::from_iter(&symbols));
        }
        Ok(Self { symbols })
    }

    /// The symbols in index order, as one string (how `config.json` stores them).
    pub fn as_string(&self) -> String {
        self.symbols.iter().collect()
    }

    /// The symbols in index order.
    pub fn symbols(&self) -> impl Iterator<Item = char> + '_ {
        self.symbols.iter().copied()
    }

    /// Number of symbols: the one-hot width and the number of output classes.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Always false: an alphabet holds at least the padding symbol.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The class index of `symbol`, if the alphabet has it.
    pub fn index_of(&self, symbol: char) -> Option<i64> {
        self.symbols.iter().position(|&s| s == symbol).map(|i| i as i64)
    }

    /// Indices of every character of `text`; `Err` carries the first character not in the alphabet.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, char> {
        text.chars().map(|c| self.index_of(c).ok_or(c)).collect()
    }

    /// Appends the indices of `text` to `out`. Callers pass text built from this alphabet.
    pub fn encode_into(&self, text: &str, out: &mut Vec<i64>) {
        for c in text.chars() {
            out.push(self.index_of(c).expect("generated text uses only alphabet symbols"));
        }
    }

    /// The string for a sequence of class indices; an index outside the alphabet shows as `?`.
    pub fn decode(&self, indices: &[i64]) -> String {
        indices
            .iter()
            .map(|&i| usize::try_from(i).ok().and_then(|i| self.symbols.get(i)).copied().unwrap_or('?'))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_alphabet_has_twelve_symbols_with_space_last() {
        let alphabet = Alphabet::addition();
        assert_eq!(alphabet.len(), 12);
        assert_eq!(alphabet.index_of(' '), Some(11));
        assert_eq!(alphabet.index_of('+'), Some(10));
        assert_eq!(alphabet.index_of('7'), Some(7));
    }

    #[test]
    fn encodes_the_reference_worked_example() {
        let alphabet = Alphabet::addition();
        assert_eq!(alphabet.encode(" 3+10"), Ok(vec![11, 3, 10, 1, 0]));
        assert_eq!(alphabet.encode("13"), Ok(vec![1, 3]));
        assert_eq!(alphabet.decode(&[11, 3, 10, 1, 0]), " 3+10");
    }

    #[test]
    fn reports_the_first_unknown_character() {
        assert_eq!(Alphabet::addition().encode("1+x+y"), Err('x'));
    }

    #[test]
    fn rejects_duplicate_or_padless_alphabets() {
        assert!(Alphabet::from_symbols("01 1").is_err());
        assert!(Alphabet::from_symbols("01+").is_err());
        assert_eq!(Alphabet::from_symbols("0123456789+ ").ok(), Some(Alphabet::addition()));
    }
}
