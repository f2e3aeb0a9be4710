//! The user's own data: sequence pairs (or real-valued sequences) read from files, held packed
//! as token ids in flat arrays, with the vocabulary of each side, length limits, a held-out
//! split drawn from the seed, and the scores that compare sequences of tokens.

pub mod batches;
pub mod load;
pub mod read;
pub mod sequences;
pub mod vocabulary;

use std::collections::HashMap;
use std::sync::Mutex;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::mix_seed;

pub use vocabulary::{PAD_ID, TokenKind, UNKNOWN_ID, Vocabulary};

/// Sequences of token ids, one after another in one array: a million pairs cost their tokens
/// and one offset each, not a `String` per token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    ids: Vec<u32>,
    /// `ends[i]` is where sequence `i` ends in `ids`.
    ends: Vec<u64>,
}

impl Packed {
    pub fn push(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.ends.push(self.ids.len() as u64);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Sequence `index`.
    pub fn get(&self, index: usize) -> &[u32] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        &self.ids[start..self.ends[index] as usize]
    }

    /// The longest sequence's length (0 when empty).
    pub fn longest(&self) -> usize {
        (0..self.len()).map(|i| self.get(i).len()).max().unwrap_or(0)
    }

    /// Bytes held, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * size_of::<u32>() + self.ends.capacity() * size_of::<u64>()
    }

    /// Replaces every id by `map[id]`.
    fn remap(&mut self, map: &[u32]) {
        for id in &mut self.ids {
            *id = map[*id as usize];
        }
    }

    /// The sequences at `indices`, in that order.
    fn select(&self, indices: &[usize]) -> Packed {
        let mut selected = Packed::default();
        for &index in indices {
            selected.push(self.get(index));
        }
        selected
    }
}

/// Pairs of token-id sequences with the vocabulary of each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCorpus {
    pub sources: Packed,
    pub targets: Packed,
    pub source_vocabulary: Vocabulary,
    pub target_vocabulary: Vocabulary,
    /// The text (source, target) of the scored pairs in which a token became `<unk>`, by pair
    /// index: what `evaluate --errors` shows, where the ids would only spell `<unk>`.
    pub spelled: HashMap<u32, (String, String)>,
}

impl Default for PairCorpus {
    fn default() -> Self {
        let empty = Vocabulary::from_counts([], 1);
        Self {
            sources: Packed::default(),
            targets: Packed::default(),
            source_vocabulary: empty.clone(),
            target_vocabulary: empty,
            spelled: HashMap::new(),
        }
    }
}

/// How a corpus was cut to the lengths a model reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthLimits {
    pub source: usize,
    pub target: usize,
    /// Pairs left out because a side was longer.
    pub left_out: usize,
    /// Pairs before that.
    pub of: usize,
}

impl LengthLimits {
    /// `left out 12 of 112,361 pairs longer than 40/40 tokens`, or `None` when none was.
    pub fn describe(&self) -> Option<String> {
        (self.left_out > 0).then(|| {
            format!(
                "left out {} of {} pairs longer than {}/{} tokens",
                thousands(self.left_out),
                thousands(self.of),
                self.source,
                self.target
            )
        })
    }
}

/// `112361` → `112,361`.
pub fn thousands(number: usize) -> String {
    let digits = number.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

impl PairCorpus {
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Keeps the pairs whose source and target fit `max_source` / `max_target` tokens (the
    /// longest of each side when `None`); returns the limits applied.
    pub fn limit_lengths(&mut self, max_source: Option<usize>, max_target: Option<usize>) -> LengthLimits {
        let source = max_source.unwrap_or_else(|| self.sources.longest());
        let target = max_target.unwrap_or_else(|| self.targets.longest());
        let of = self.len();
        let kept: Vec<usize> =
            (0..of).filter(|&i| self.sources.get(i).len() <= source && self.targets.get(i).len() <= target).collect();
        if kept.len() < of {
            self.sources = self.sources.select(&kept);
            self.targets = self.targets.select(&kept);
            let mut spelled = std::mem::take(&mut self.spelled);
            self.spelled = (0..)
                .zip(&kept)
                .filter_map(|(new, &old)| spelled.remove(&(old as u32)).map(|text| (new, text)))
                .collect();
        }
        LengthLimits { source, target, left_out: of - kept.len(), of }
    }

    /// The text of pair `index` as the user wrote it, where a token of it became `<unk>`.
    pub fn spelling(&self, index: usize) -> Option<&(String, String)> {
        u32::try_from(index).ok().and_then(|index| self.spelled.get(&index))
    }

    /// How many pairs of `other` also occur here (ids compared, so both must share vocabularies).
    /// A pair of `other` that holds `<unk>` is not compared, only counted: two different rare
    /// tokens read alike there. Only `other`'s pairs are held, borrowed: it is the smaller side
    /// (pairs scored against the training pairs).
    pub fn overlap(&self, other: &PairCorpus) -> Overlap {
        fn pair(corpus: &PairCorpus, index: usize) -> (&[u32], &[u32]) {
            (corpus.sources.get(index), corpus.targets.get(index))
        }
        let mut counts: HashMap<(&[u32], &[u32]), usize> = HashMap::new();
        let mut uncompared = 0;
        for index in 0..other.len() {
            let (source, target) = pair(other, index);
            if source.contains(&UNKNOWN_ID) || target.contains(&UNKNOWN_ID) {
                uncompared += 1;
            } else {
                *counts.entry((source, target)).or_default() += 1;
            }
        }
        let shared = (0..self.len()).filter_map(|index| counts.remove(&pair(self, index))).sum();
        Overlap { shared, uncompared }
    }

    /// Bytes the packed pairs hold.
    pub fn heap_bytes(&self) -> usize {
        self.sources.heap_bytes() + self.targets.heap_bytes()
    }
}

/// What [`PairCorpus::overlap`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// Pairs of the other side that also occur here.
    pub shared: usize,
    /// Pairs of the other side holding `<unk>`, left out of the comparison.
    pub uncompared: usize,
}

impl Overlap {
    /// ", besides N pairs ... not compared" for a message, or nothing when every pair was.
    pub fn uncompared_clause(&self) -> String {
        match self.uncompared {
            0 => String::new(),
            1 => "; 1 pair holding a token outside the vocabulary was not compared".to_owned(),
            n => format!("; {} pairs holding tokens outside the vocabulary were not compared", thousands(n)),
        }
    }
}

/// The order in which epoch `epoch` visits `len` samples of a file: a shuffle drawn from
/// (seed, epoch) by ChaCha8, whose stream rand_chacha promises to keep across versions.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(seed) ^ mix_seed(epoch as u64 + 1)));
    order
}

/// Which samples of a file each batch holds: the first `len` of them, in file order for scoring,
/// or in [`epoch_order`] for training (drawn once per epoch). Every file-backed source batches
/// through one.
pub struct Visits {
    len: usize,
    shuffle: Option<u64>,
    /// The order of the last epoch asked for.
    order: Mutex<Option<(usize, Vec<u32>)>>,
}

impl Visits {
    /// All `len` samples, shuffled every epoch from `shuffle` when given.
    pub fn new(len: usize, shuffle: Option<u64>) -> Self {
        Self { len, shuffle, order: Mutex::new(None) }
    }

    /// Only the first `count` samples (all when there are fewer).
    pub fn first(mut self, count: usize) -> Self {
        self.len = self.len.min(count);
        self
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The samples of batch `index` of `epoch`, in batches of `batch_size`.
    pub fn batch(&self, epoch: usize, index: usize, batch_size: usize) -> Vec<usize> {
        let start = (index * batch_size).min(self.len);
        let end = (start + batch_size).min(self.len);
        let Some(seed) = self.shuffle else { return (start..end).collect() };
        let mut cached = self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *cached = Some((epoch, epoch_order(self.len, seed, epoch)));
        }
        let (_, order) = cached.as_ref().expect("filled above");
        order[start..end].iter().map(|&i| i as usize).collect()
    }
}

/// Levenshtein edits that turn `predicted` into `reference`.
pub fn edit_distance(predicted: &[u32], reference: &[u32]) -> usize {
    strsim::generic_levenshtein(&predicted.to_vec(), &reference.to_vec())
}

/// Sums for the token error rate: edits over reference tokens, over a whole set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorRate {
    pub edits: usize,
    pub reference_tokens: usize,
}

impl ErrorRate {
    pub fn add(&mut self, predicted: &[u32], reference: &[u32]) {
        self.edits += edit_distance(predicted, reference);
        self.reference_tokens += reference.len();
    }

    /// The character error rate for `chars`, the word (or phoneme) error rate for `words`.
    pub fn rate(&self) -> f64 {
        self.edits as f64 / self.reference_tokens.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(pairs: &[(&[u32], &[u32])]) -> PairCorpus {
        let mut corpus = PairCorpus::default();
        for (source, target) in pairs {
            corpus.sources.push(source);
            corpus.targets.push(target);
        }
        corpus
    }

    #[test]
    fn packed_sequences_come_back_as_pushed() {
        let mut packed = Packed::default();
        packed.push(&[3, 4]);
        packed.push(&[]);
        packed.push(&[5]);
        assert_eq!((packed.get(0), packed.get(1), packed.get(2)), (&[3, 4][..], &[][..], &[5][..]));
        assert_eq!((packed.len(), packed.longest()), (3, 2));
        packed.remap(&[0, 0, 0, 9, 8, 7]);
        assert_eq!(packed.get(0), [9, 8]);
    }

    #[test]
    fn overlap_counts_every_pair_of_the_other_side_found_here() {
        let training = corpus(&[(&[2, 3], &[3, 2]), (&[4], &[4]), (&[2, 3], &[3, 2])]);
        // A pair twice counts twice; the same source with another target, or the reverse, not at all.
        let scored = corpus(&[(&[2, 3], &[3, 2]), (&[2, 3], &[3, 2]), (&[2, 3], &[2, 3]), (&[4], &[4]), (&[5], &[5])]);
        assert_eq!(training.overlap(&scored), Overlap { shared: 3, uncompared: 0 });
        assert_eq!(scored.overlap(&training), Overlap { shared: 3, uncompared: 0 });
        assert_eq!(training.overlap(&PairCorpus::default()), Overlap { shared: 0, uncompared: 0 });
    }

    #[test]
    fn overlap_leaves_pairs_with_an_unknown_token_uncompared() {
        // `<unk>` in either side stands for any rare token, so an equal pair of ids proves nothing.
        let training = corpus(&[(&[UNKNOWN_ID, 3], &[3]), (&[4], &[UNKNOWN_ID]), (&[5], &[5])]);
        let scored = corpus(&[(&[UNKNOWN_ID, 3], &[3]), (&[4], &[UNKNOWN_ID]), (&[5], &[5])]);
        let overlap = training.overlap(&scored);
        assert_eq!(overlap, Overlap { shared: 1, uncompared: 2 });
        assert_eq!(overlap.uncompared_clause(), "; 2 pairs holding tokens outside the vocabulary were not compared");
        assert_eq!(Overlap { shared: 1, uncompared: 0 }.uncompared_clause(), "");
    }

    #[test]
    fn long_pairs_are_left_out_and_counted() {
        let mut pairs = corpus(&[(&[2, 2, 2], &[3]), (&[2, 3], &[2]), (&[2], &[3, 3, 3, 3])]);
        pairs.spelled.insert(1, ("ab".to_owned(), "a".to_owned()));
        let limits = pairs.limit_lengths(Some(2), Some(3));
        // The kept pair's text follows it to its new index.
        assert_eq!(pairs.spelling(0), Some(&("ab".to_owned(), "a".to_owned())));
        assert_eq!(limits, LengthLimits { source: 2, target: 3, left_out: 2, of: 3 });
        assert_eq!(limits.describe().as_deref(), Some("left out 2 of 3 pairs longer than 2/3 tokens"));
        assert_eq!(pairs.len(), 1);
        let limits = pairs.limit_lengths(None, None);
        assert_eq!((limits.source, limits.target, limits.describe()), (2, 1, None));
        assert_eq!(thousands(112_361), "112,361");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn epoch_orders_visit_every_pair_once_and_differ_by_epoch() {
        let mut pairs = PairCorpus::default();
        for i in 0..100 {
            pairs.sources.push(&[i + 2]);
            pairs.targets.push(&[i + 2]);
        }
        let first = epoch_order(pairs.len(), 1, 0);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(first, epoch_order(pairs.len(), 1, 0));
        assert_ne!(first, epoch_order(pairs.len(), 1, 1));
        // A training source's batches are that order in slices; a scoring one's the file order.
        let visits = Visits::new(100, Some(1));
        assert_eq!(visits.batch(0, 1, 32), first[32..64].iter().map(|&i| i as usize).collect::<Vec<_>>());
        assert_eq!(visits.batch(0, 3, 32).len(), 4);
        assert_eq!(Visits::new(100, None).first(40).batch(5, 1, 32), (32..40).collect::<Vec<_>>());
        // Pinned: the shuffle is part of what makes a seed reproduce a run.
        assert_eq!(&first[..5], &GOLDEN_ORDER);
    }

    /// The first five of `epoch_order(1, 0)` over 100 pairs.
    const GOLDEN_ORDER: [u32; 5] = [27, 54, 74, 1, 9];

    #[test]
    fn token_error_rate_counts_edits_over_reference_tokens() {
        let mut rate = ErrorRate::default();
        rate.add(&[1, 2, 3], &[1, 2, 3]);
        rate.add(&[1, 3], &[1, 2, 3, 4]);
        assert_eq!(rate, ErrorRate { edits: 2, reference_tokens: 7 });
        assert!((rate.rate() - 2.0 / 7.0).abs() < 1e-12);
        assert_eq!(edit_distance(&[5, 6], &[]), 2);
    }
}
