//! The encoder on its own: the fixed-length vector of each input, as CSV or NumPy `.npy`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use tch::{Device, Tensor};

use crate::data::input::{InputSource, InputSummary, for_each_batch};
use crate::data::{BatchStream, SampleSource};
use crate::nn::model::Seq2Seq;
use crate::store::checkpoint::write_atomically;
use crate::task::{Samples, Task};

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncodeFormat {
    /// One line of comma-separated numbers per input (loads with `numpy.loadtxt(f, delimiter=",")`).
    Csv,
    /// One float32 array `[inputs, encoder_units]` (loads with `numpy.load`).
    Npy,
}

/// What `encode` encodes: users' lines, or samples the program takes itself (`encode --plot`
/// without inputs: fresh samples, or a model's held-out pairs), accepted as they are.
#[derive(Clone)]
pub enum Inputs {
    Lines(InputSource),
    Samples(Arc<dyn SampleSource>),
}

/// Encodes every input of a source with one model.
pub struct Encoder<'a> {
    pub model: &'a Seq2Seq,
    pub task: &'a Task,
    pub device: Device,
    pub batch_size: usize,
}

impl Encoder<'_> {
    /// Calls `on_batch` with up to a batch of accepted inputs at a time, in order; a bad line
    /// costs a message on `errors`.
    fn for_each_batch(
        &self,
        inputs: &Inputs,
        errors: &mut dyn Write,
        mut on_batch: impl FnMut(&Samples<'_>) -> Result<()>,
    ) -> Result<InputSummary> {
        match inputs {
            Inputs::Lines(source) => {
                for_each_batch(source, self.task, self.batch_size, errors, |batch| on_batch(batch))
            }
            Inputs::Samples(source) => {
                let stream = BatchStream::of(Arc::clone(source), self.batch_size, Device::Cpu).keeping_samples();
                let mut summary = InputSummary::default();
                for batch in stream.iter() {
                    on_batch(&batch.samples)?;
                    summary.accepted += batch.samples.len();
                }
                Ok(summary)
            }
        }
    }

    /// The vectors of one batch, `[batch, encoder_units]` on the CPU, also added to `keep`.
    fn encode_batch(&self, batch: &Samples<'_>, keep: &mut Option<&mut KeptVectors>) -> Tensor {
        let vectors = self.model.encode(&batch.input_tensor(self.device)).to_device(Device::Cpu);
        if let Some(keep) = keep {
            keep.add(batch, &vectors);
        }
        vectors
    }

    /// Encodes every good input into `keep` only, writing no vectors.
    pub fn collect(&self, inputs: &Inputs, errors: &mut dyn Write, keep: &mut KeptVectors) -> Result<InputSummary> {
        let mut keep = Some(keep);
        self.for_each_batch(inputs, errors, |batch| {
            // The vectors are in `keep` now; nothing else needs them.
            let _ = self.encode_batch(batch, &mut keep);
            Ok(())
        })
    }

    /// Writes one CSV row per good input to `out` (keeping the vectors in `keep` when given).
    pub fn write_csv(
        &self,
        inputs: &Inputs,
        out: &mut dyn Write,
        errors: &mut dyn Write,
        mut keep: Option<&mut KeptVectors>,
    ) -> Result<InputSummary> {
        self.for_each_batch(inputs, errors, |batch| {
            let vectors = self.encode_batch(batch, &mut keep);
            let units = vectors.size()[1] as usize;
            let flat = Vec::<f32>::try_from(vectors.flatten(0, -1)).expect("the encoding is float32");
            for row in flat.chunks(units) {
                let line: Vec<String> = row.iter().map(f32::to_string).collect();
                writeln!(out, "{}", line.join(","))?;
            }
            out.flush()?;
            Ok(())
        })
    }

    /// Writes all good inputs' vectors to `path` as one `.npy` array, atomically (keeping them in
    /// `keep` when given).
    pub fn write_npy(
        &self,
        inputs: &Inputs,
        path: &Path,
        errors: &mut dyn Write,
        mut keep: Option<&mut KeptVectors>,
    ) -> Result<InputSummary> {
        if crate::store::files::is_special_file(path) {
            anyhow::bail!(
                "{} is not a regular file: --format npy fills in its header when done and needs one (--format csv streams)",
                path.display()
            );
        }
        let units = self.model.encoding_width();
        let mut summary = InputSummary::default();
        write_atomically(path, |temporary| {
            let mut file = BufWriter::new(File::create(temporary)?);
            // The row count is known only at the end: reserve a fixed-size header, fill it in last.
            file.write_all(&npy_header(0, units))?;
            let mut rows = 0usize;
            summary = self.for_each_batch(inputs, errors, |batch| {
                let vectors = self.encode_batch(batch, &mut keep);
                let flat = Vec::<f32>::try_from(vectors.flatten(0, -1)).expect("the encoding is float32");
                for value in flat {
                    file.write_all(&value.to_le_bytes())?;
                }
                rows += batch.len();
                Ok(())
            })?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&npy_header(rows, units))?;
            file.flush()?;
            Ok(())
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(summary)
    }
}

/// The vectors of the inputs encoded so far and the value each is coloured by, kept in memory
/// for `encode --plot`.
#[derive(Debug, Default)]
pub struct KeptVectors {
    batches: Vec<Tensor>,
    values: Vec<f64>,
}

impl KeptVectors {
    fn add(&mut self, batch: &Samples<'_>, vectors: &Tensor) {
        self.batches.push(vectors.shallow_clone());
        add_colour_values(batch, &mut self.values);
    }

    /// All vectors, `[inputs, encoder_units]`, or `None` when there are none.
    pub fn matrix(&self) -> Option<Tensor> {
        (!self.batches.is_empty()).then(|| Tensor::cat(&self.batches, 0))
    }

    /// One value per vector, in the same order.
    pub fn values(&self) -> &[f64] {
        &self.values
    }
}

/// What each point of the picture is coloured by: an expression's exact value, a sequence's
/// mean, a source's length in tokens.
fn add_colour_values(samples: &Samples<'_>, values: &mut Vec<f64>) {
    match samples {
        Samples::Arithmetic(_, expressions) => values.extend(expressions.iter().map(|e| e.value() as f64)),
        Samples::Pairs(_, pairs) => values.extend(pairs.iter().map(|pair| pair.source.len() as f64)),
        Samples::Sequences(_, sequences) => values.extend(
            sequences.iter().map(|s| s.iter().map(|&value| f64::from(value)).sum::<f64>() / s.len().max(1) as f64),
        ),
    }
}

/// Size of the `.npy` header: magic, version, length and the padded dictionary.
const NPY_HEADER_LEN: usize = 128;

/// A version 1.0 `.npy` header for a little-endian float32 C-order array `[rows, columns]`,
/// always [`NPY_HEADER_LEN`] bytes so that it can be rewritten in place.
fn npy_header(rows: usize, columns: usize) -> Vec<u8> {
    let dictionary = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let dictionary_len = NPY_HEADER_LEN - header.len() - 2;
    header.extend_from_slice(&(dictionary_len as u16).to_le_bytes());
    header.extend_from_slice(dictionary.as_bytes());
    header.resize(NPY_HEADER_LEN - 1, b' ');
    header.push(b'\n');
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_has_a_fixed_aligned_size_and_the_shape() {
        for (rows, columns) in [(0, 75), (1000, 75), (usize::MAX, usize::MAX)] {
            let header = npy_header(rows, columns);
            assert_eq!(header.len(), NPY_HEADER_LEN);
            assert_eq!(header.len() % 64, 0, "numpy aligns the data to 64 bytes");
            assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
            let declared = u16::from_le_bytes([header[8], header[9]]) as usize;
            assert_eq!(10 + declared, header.len());
            let text = String::from_utf8_lossy(&header[10..]);
            assert!(text.contains(&format!("'shape': ({rows}, {columns})")), "{text}");
            assert!(text.ends_with('\n'));
        }
    }
}
