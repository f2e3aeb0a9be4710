//! The autoencoder's own data: real-valued sequences read from a file, one per line,
//! comma-separated. The model reads and writes a fixed number of steps, so every sequence of a
//! file must have the length of the first good one; a line of another length is a bad line
//! (refused, or left out with `--skip-bad-lines`), never padded.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use tch::Tensor;

use super::load::{absolute, check_valid_fraction, refuse_or_note_bad_lines};
use super::read::{HoldOut, read_sequences};
use super::{Visits, thousands};
use crate::data::{Batch, SampleSource, mix_seed};
use crate::task::sequence::{SequenceData, SequenceKind, SequenceProblem};
use crate::task::{Samples, Task};

/// What `train --task autoencoder --data FILE` was asked to read.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSettings {
    pub data: PathBuf,
    pub valid: Option<PathBuf>,
    pub valid_fraction: f64,
    pub skip_bad_lines: bool,
}

/// Sequences of one length, one after another in one array.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sequences {
    pub values: Vec<f32>,
    pub length: usize,
}

impl Sequences {
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.length).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> &[f32] {
        &self.values[index * self.length..(index + 1) * self.length]
    }
}

/// A model's sequences, read.
pub struct LoadedSequences {
    pub problem: SequenceProblem,
    pub training: Arc<Sequences>,
    pub validation: Arc<Sequences>,
    pub notes: Vec<String>,
}

/// Reads the sequences of a new training run.
pub fn load_for_training(settings: &SequenceSettings, seed: u64) -> Result<LoadedSequences> {
    check_valid_fraction(settings.valid_fraction)?;
    let data = SequenceData {
        data: absolute(&settings.data),
        valid: settings.valid.as_ref().map(absolute),
        valid_fraction: settings.valid_fraction,
        skip_bad_lines: settings.skip_bad_lines,
        training_sequences: 0,
        fingerprint: String::new(),
        held_out_sequences: 0,
        held_out_fingerprint: String::new(),
    };
    let mut loaded = read(&data, None, seed)?;
    let (training, validation) = (&loaded.training, &loaded.validation);
    let (low, high) = training
        .values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &v| (low.min(f64::from(v)), high.max(f64::from(v))));
    loaded.problem = SequenceProblem {
        length: training.length,
        sequence: SequenceKind::Random,
        low,
        high,
        data: Some(SequenceData {
            training_sequences: training.len(),
            fingerprint: fingerprint(training),
            held_out_sequences: validation.len(),
            held_out_fingerprint: fingerprint(validation),
            ..data
        }),
    };
    Ok(loaded)
}

/// Reads a trained model's sequences again; refuses files that changed.
pub fn reload(problem: &SequenceProblem, seed: u64) -> Result<LoadedSequences> {
    let Some(data) = &problem.data else { bail!("this autoencoder was trained on generated sequences, not a file") };
    let mut loaded = read(data, Some(problem.length), seed)?;
    for (part, sequences, count, print) in [
        ("training", &loaded.training, data.training_sequences, &data.fingerprint),
        ("held-out", &loaded.validation, data.held_out_sequences, &data.held_out_fingerprint),
    ] {
        if sequences.len() != count || fingerprint(sequences) != *print {
            bail!(
                "{} changed since the model was trained: it now gives {} {part} sequences, not the {} of then \
                 (or the same number with other values)",
                data.data.display(),
                thousands(sequences.len()),
                thousands(count)
            );
        }
    }
    loaded.problem = problem.clone();
    Ok(loaded)
}

/// Reads one file of sequences of `length` (the first good line's when `None`).
pub fn read_file(
    path: &std::path::Path,
    length: Option<usize>,
    skip: bool,
    notes: &mut Vec<String>,
) -> Result<Sequences> {
    let read = read_sequences(path, length)?;
    refuse_or_note_bad_lines(&read.bad, read.lines, &path.display().to_string(), skip, notes)?;
    if read.values.is_empty() {
        bail!("{} holds no good sequence", path.display());
    }
    Ok(Sequences { values: read.values, length: read.length })
}

fn read(data: &SequenceData, length: Option<usize>, seed: u64) -> Result<LoadedSequences> {
    let mut notes = Vec::new();
    let all = read_file(&data.data, length, data.skip_bad_lines, &mut notes)?;
    let (training, validation) = match &data.valid {
        Some(valid) => {
            let validation = read_file(valid, Some(all.length), data.skip_bad_lines, &mut notes)?;
            (all, validation)
        }
        None => hold_out(&all, data.valid_fraction, seed),
    };
    if training.is_empty() || validation.is_empty() {
        bail!(
            "{} gives {} training and {} held-out sequences: both parts need some (more lines, another \
             --valid-fraction, or a --valid FILE)",
            data.data.display(),
            training.len(),
            validation.len()
        );
    }
    let problem = SequenceProblem { length: training.length, data: Some(data.clone()), ..Default::default() };
    Ok(LoadedSequences { problem, training: Arc::new(training), validation: Arc::new(validation), notes })
}

/// Splits off about `fraction` of the sequences by [`HoldOut`] over their values: equal
/// sequences land on the same side.
fn hold_out(all: &Sequences, fraction: f64, seed: u64) -> (Sequences, Sequences) {
    let hold_out = HoldOut { fraction, seed };
    let mut training = Sequences { values: Vec::new(), length: all.length };
    let mut held_out = training.clone();
    for index in 0..all.len() {
        let sequence = all.get(index);
        let held = hold_out.holds(sequence.iter().map(|value| u64::from(value.to_bits())));
        let part = if held { &mut held_out } else { &mut training };
        part.values.extend_from_slice(sequence);
    }
    (training, held_out)
}

/// A hash of every value, in order, as 16 hex digits.
fn fingerprint(sequences: &Sequences) -> String {
    let hash =
        sequences.values.iter().fold(0x7365_7175_656e_6365u64, |hash, v| mix_seed(hash ^ u64::from(v.to_bits())));
    format!("{:016x}", mix_seed(hash ^ sequences.length as u64))
}

/// Sequences as a [`SampleSource`]: shuffled every epoch when training, in file order when scoring.
pub struct SequenceSource {
    /// The task as the rest of the program sees it, and its problem for the samples.
    task: Task,
    problem: SequenceProblem,
    sequences: Arc<Sequences>,
    visits: Visits,
}

impl SequenceSource {
    pub fn new(problem: &SequenceProblem, sequences: Arc<Sequences>, shuffle: Option<u64>) -> Self {
        let visits = Visits::new(sequences.len(), shuffle);
        Self { task: Task::Autoencoder(problem.clone()), problem: problem.clone(), sequences, visits }
    }

    /// Only the first `count` sequences.
    pub fn first(mut self, count: usize) -> Self {
        self.visits = self.visits.first(count);
        self
    }
}

impl SampleSource for SequenceSource {
    fn task(&self) -> &Task {
        &self.task
    }

    fn len(&self) -> usize {
        self.visits.len()
    }

    fn batch(&self, epoch: usize, index: usize, batch_size: usize, keep_samples: bool) -> Batch<'_> {
        let indices = self.visits.batch(epoch, index, batch_size);
        let size = indices.len();
        let length = self.sequences.length;
        let mut values = Vec::with_capacity(size * length);
        let mut samples = Vec::new();
        for &index in &indices {
            values.extend_from_slice(self.sequences.get(index));
            if keep_samples {
                samples.push(self.sequences.get(index).to_vec());
            }
        }
        let tensor = Tensor::from_slice(&values).view([size as i64, length as i64]);
        Batch {
            inputs: tensor.shallow_clone(),
            targets: tensor,
            size,
            samples: Samples::Sequences(&self.problem, samples),
        }
    }
}
