//! Batch prediction on users' inputs: answers to expressions in the reference's format, or
//! reconstructions of sequences; plain text or JSON lines.

use std::io::Write;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, Scope};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use tch::{Device, Kind};

use crate::data::input::{InputSource, InputSummary, for_each_batch};
use crate::nn::feedback::Hypothesis;
use crate::nn::model::Seq2Seq;
use crate::output::on_one_line;
use crate::task::sequence::format_sequence;
use crate::task::{Features, PairsProblem, Samples, Task};

/// Inputs predicted per forward pass unless the user says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Counts of what happened to the inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictSummary {
    /// Answered (accepted) and refused inputs.
    pub inputs: InputSummary,
    /// Expressions answered exactly right (arithmetic only).
    pub correct: usize,
}

/// One answered expression, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonAnswer<'a> {
    input: &'a str,
    prediction: &'a str,
    expected: i128,
    correct: bool,
    /// With `--verbose`: the probability of each written character, padding included.
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_best: Option<Vec<JsonHypothesis>>,
}

/// One of the beam's best answers, as `--json --n-best` lists them.
#[derive(Debug, Serialize)]
struct JsonHypothesis {
    prediction: String,
    log_prob: f64,
    /// `log_prob` over the written tokens, the end marker included: what the beam ranks by, so
    /// that a reader sees why a longer answer with a lower `log_prob` can come first.
    log_prob_per_token: f64,
}

/// One answered source of a model of pairs, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonTranslation<'a> {
    input: &'a str,
    prediction: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correct: Option<bool>,
    /// With `--verbose`: the probability of each written token, then the end marker's.
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_best: Option<Vec<JsonHypothesis>>,
}

/// One reconstructed sequence, as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonReconstruction<'a> {
    input: &'a [f32],
    reconstruction: &'a [f32],
    max_abs_error: f32,
}

/// Predicts every input of a source with one model.
pub struct Predictor<'a> {
    pub model: &'a Seq2Seq,
    pub task: &'a Task,
    pub device: Device,
    pub batch_size: usize,
    /// How answers are written.
    pub style: AnswerStyle,
    /// CPU threads that each answer a share of every batch (see [`SharedAnswers`]).
    pub workers: usize,
}

/// How answers are chosen and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerStyle {
    pub json: bool,
    /// Also show the probability the model gave each token it wrote.
    pub verbose: bool,
    pub decoding: Decoding,
}

/// How answers are chosen: the most probable token at each step, or from a beam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoding {
    /// Hypotheses kept at each step; below 2, greedy.
    pub beam: usize,
    /// How many of the beam's answers to list after each answer; `None` lists none.
    pub n_best: Option<usize>,
}

impl Decoding {
    /// The decoding that `--beam` and `--n-best` ask of `model`.
    pub fn choose(beam: Option<usize>, n_best: Option<usize>, model: &Seq2Seq) -> Result<Self> {
        if let (Some(beam), Some(n_best)) = (beam, n_best)
            && n_best > beam
        {
            bail!("--n-best {n_best} asks for more answers than --beam {beam} keeps");
        }
        let decoding = Decoding { beam: beam.unwrap_or(1).max(n_best.unwrap_or(1)), n_best };
        if decoding.searches() && !model.searches_beams() {
            let why = match model.shape().output {
                Features::Value => "a model of values writes no tokens to choose among".to_owned(),
                Features::Classes(_) => format!(
                    "this model's decoder is {}, whose steps do not read each other, so its greedy answer is \
                     already the most probable (train with --decoder feedback or attention)",
                    model.config().decoder.name()
                ),
            };
            let flags = if n_best.is_some() { "--beam and --n-best search" } else { "--beam searches" };
            bail!("{flags} among a decoder's answers; {why}");
        }
        Ok(decoding)
    }

    fn searches(&self) -> bool {
        self.beam > 1 || self.n_best.is_some()
    }
}

/// Fewer rows than this per worker are not worth a thread.
const MIN_ROWS_PER_WORKER: usize = 32;

/// The answers to some rows: their text and how many were right.
type Answered = Result<(Vec<u8>, usize)>;

/// Answers each batch with its rows shared among threads: this one and helpers that live as
/// long as the value, each running the whole network on its rows with one libtorch thread and
/// writing their answers, so that the text too is made in parallel. The shares' texts are
/// written in row order.
///
/// On the CPU this scales better than libtorch's own threads, which split each op in two: the
/// reference model's ops are small, and half of its time is the cell arithmetic in
/// [`crate::nn::cell`], which libtorch's threads do not share.
struct SharedAnswers<'t> {
    /// One (rows in, answers back) pair per helper thread.
    helpers: Vec<(Sender<Samples<'t>>, Receiver<Answered>)>,
}

impl<'t> SharedAnswers<'t> {
    /// Starts `helpers` threads in `scope`, each with its own handle on the weights (tensors may
    /// move between threads but not be shared). They end when the value is dropped.
    fn start<'scope>(scope: &'scope Scope<'scope, '_>, predictor: &'scope Predictor<'_>, helpers: usize) -> Self
    where
        't: 'scope,
    {
        let helpers = (0..helpers)
            .map(|_| {
                let (rows_in, rows) = mpsc::channel::<Samples<'t>>();
                let (answers, answers_back) = mpsc::channel();
                let replica = predictor.model.replica();
                let (device, style) = (predictor.device, predictor.style);
                scope.spawn(move || {
                    // OpenMP's thread count is per thread: a new one starts at every core.
                    tch::set_num_threads(1);
                    for share in rows {
                        if answers.send(answer(&replica, &share, device, style)).is_err() {
                            break;
                        }
                    }
                });
                (rows_in, answers_back)
            })
            .collect();
        Self { helpers }
    }

    /// Answers `batch` with the predictor's model and the helpers; returns how many answers were
    /// right.
    fn answer(&self, batch: &Samples<'t>, predictor: &Predictor<'_>, out: &mut dyn Write) -> Result<usize> {
        let shares = share_ranges(batch.len(), self.helpers.len() + 1);
        let helpers = &self.helpers[..shares.len() - 1];
        for ((rows_in, _), range) in helpers.iter().zip(&shares[1..]) {
            rows_in.send(batch.range(range.clone())).map_err(|_| anyhow!("a prediction thread stopped"))?;
        }
        let (model, device, style) = (predictor.model, predictor.device, predictor.style);
        let (text, mut correct) = match helpers {
            [] => answer(model, batch, device, style)?,
            _ => answer(model, &batch.range(shares[0].clone()), device, style)?,
        };
        out.write_all(&text)?;
        for (_, answers_back) in helpers {
            let (text, right) = answers_back.recv().map_err(|_| anyhow!("a prediction thread stopped"))??;
            out.write_all(&text)?;
            correct += right;
        }
        Ok(correct)
    }
}

/// How `rows` are split among at most `workers` threads: as `Tensor::chunk` splits them (shares
/// of `ceil(rows / shares)`, the last one shorter), none under [`MIN_ROWS_PER_WORKER`] rows.
fn share_ranges(rows: usize, workers: usize) -> Vec<Range<usize>> {
    let shares = workers.min(rows / MIN_ROWS_PER_WORKER).max(1);
    let size = rows.div_ceil(shares).max(1);
    (0..rows).step_by(size).map(|start| start..(start + size).min(rows)).collect()
}

impl Predictor<'_> {
    /// Writes one answer per good input to `out`, one message per bad one to `errors`.
    pub fn run(&self, source: &InputSource, out: &mut dyn Write, errors: &mut dyn Write) -> Result<PredictSummary> {
        let mut correct = 0;
        // A GPU runs a whole batch at once.
        let helpers = if self.device == Device::Cpu { self.workers.saturating_sub(1) } else { 0 };
        let inputs = thread::scope(|scope| {
            let shared = SharedAnswers::start(scope, self, helpers);
            for_each_batch(source, self.task, self.batch_size, errors, |batch| {
                correct += shared.answer(batch, self, out)?;
                out.flush()?;
                Ok(())
            })
        })?;
        Ok(PredictSummary { inputs, correct })
    }
}

/// Runs `model` on `samples` and writes their answers; returns the text and how many were right.
fn answer(model: &Seq2Seq, samples: &Samples<'_>, device: Device, style: AnswerStyle) -> Answered {
    let written = Written::by(model, samples, device, style);
    let mut out = Vec::new();
    let correct = write_answers(samples, &written, style, &mut out)?;
    Ok((out, correct))
}

/// What the model wrote for a batch, on the host: values for the autoencoder's sequences,
/// class ids for the other samples.
#[derive(Default)]
struct Written {
    /// Class ids `[rows · output_len]`.
    ids: Vec<i64>,
    /// With `--verbose`, the probability of each id.
    probabilities: Vec<f64>,
    /// With `--n-best`, the beam's best answers to each row.
    n_best: Vec<Vec<Hypothesis>>,
    /// Values `[rows · output_len]`.
    values: Vec<f32>,
}

impl Written {
    fn by(model: &Seq2Seq, samples: &Samples<'_>, device: Device, style: AnswerStyle) -> Written {
        let Decoding { beam, n_best } = style.decoding;
        let inputs = &samples.input_tensor(device);
        if let Samples::Sequences(..) = samples {
            let output = model.forward(inputs).flatten(0, -1).to_device(Device::Cpu);
            let values = Vec::<f32>::try_from(output).expect("the autoencoder writes float values");
            return Written { values, ..Written::default() };
        }
        if style.decoding.searches() {
            let mut answers = model.beam(inputs, beam).expect("Decoding::choose checked that the model searches");
            let (ids, mut probabilities) = Hypothesis::best_of(&answers);
            if !style.verbose {
                probabilities.clear();
            }
            answers.iter_mut().for_each(|hypotheses| hypotheses.truncate(n_best.unwrap_or(0)));
            return Written { ids, probabilities, n_best: answers, values: Vec::new() };
        }
        // The same answers as the full-length pass below, which also gives every step's
        // probabilities for --verbose.
        if let Some(ids) = model.greedy_until_end(inputs).filter(|_| !style.verbose) {
            let ids = Vec::<i64>::try_from(ids.flatten(0, -1).to_device(Device::Cpu)).expect("int64 class ids");
            return Written { ids, ..Written::default() };
        }
        let output = model.forward(inputs);
        let predicted = output.argmax(-1, true);
        let probabilities = if style.verbose {
            let chosen = output.softmax(-1, Kind::Double).gather(-1, &predicted, false);
            Vec::<f64>::try_from(chosen.flatten(0, -1).to_device(Device::Cpu)).expect("softmax in double precision")
        } else {
            Vec::new()
        };
        let predicted = predicted.flatten(0, -1).to_device(Device::Cpu);
        let ids = Vec::<i64>::try_from(predicted).expect("argmax yields int64 class indices");
        Written { ids, probabilities, ..Written::default() }
    }
}

/// The beam's answers to one row with their log-probabilities, each as `text` shows it.
fn listed(hypotheses: Option<&Vec<Hypothesis>>, text: impl Fn(&[i64]) -> String) -> Option<Vec<JsonHypothesis>> {
    hypotheses.filter(|h| !h.is_empty()).map(|hypotheses| {
        hypotheses
            .iter()
            .map(|hypothesis| JsonHypothesis {
                prediction: text(&hypothesis.ids),
                log_prob: hypothesis.log_prob,
                log_prob_per_token: hypothesis.score,
            })
            .collect()
    })
}

/// The text lines that list a row's best answers, after its answer.
fn write_listed(listed: &[JsonHypothesis], out: &mut dyn Write) -> Result<()> {
    for (rank, hypothesis) in listed.iter().enumerate() {
        let (log_prob, per_token) = (hypothesis.log_prob, hypothesis.log_prob_per_token);
        let prediction = on_one_line(&hypothesis.prediction);
        writeln!(out, "  {}. {prediction}  (log p {log_prob:.4}, per token {per_token:.4})", rank + 1)?;
    }
    Ok(())
}

/// Writes the answer of each sample from what the model wrote for them; returns how many were
/// right.
fn write_answers(batch: &Samples<'_>, written: &Written, style: AnswerStyle, out: &mut dyn Write) -> Result<usize> {
    let AnswerStyle { json, .. } = style;
    let mut correct = 0;
    match batch {
        Samples::Arithmetic(problem, expressions) => {
            let Written { ids: flat, probabilities, n_best, .. } = written;
            let alphabet = problem.alphabet();
            let output_len = problem.output_len();
            let format_output = problem.output_formatter();
            // Without the leading padding that a right answer has; anything else stays, so that
            // a malformed answer (`9 ` for `9`) shows as such and no two answers look alike.
            let shown = |ids: &[i64]| problem.as_read(alphabet.decode(ids)).trim_start().to_owned();
            for (index, (expression, row)) in expressions.iter().zip(flat.chunks(output_len)).enumerate() {
                // In reading order, as the answer is shown.
                let row_probabilities =
                    probabilities.get(index * output_len..(index + 1) * output_len).map(|p| problem.as_read_order(p));
                let predicted = problem.as_read(alphabet.decode(row));
                let value = expression.value();
                let expected = format_output(value);
                let is_correct = predicted == expected;
                correct += usize::from(is_correct);
                let listed = listed(n_best.get(index), shown);
                if json {
                    let answer = JsonAnswer {
                        input: &expression.to_string(),
                        prediction: predicted.trim_start(),
                        expected: value,
                        correct: is_correct,
                        probabilities: row_probabilities.as_deref(),
                        n_best: listed,
                    };
                    writeln!(out, "{}", serde_json::to_string(&answer)?)?;
                } else {
                    write!(out, "{} = {predicted} (expect {expected})", problem.display_input(expression))?;
                    if let Some(row_probabilities) = &row_probabilities {
                        let shown: Vec<String> = predicted
                            .chars()
                            .zip(row_probabilities)
                            .map(|(symbol, probability)| format!("'{symbol}' {probability:.2}"))
                            .collect();
                        write!(out, "  [{}]", shown.join(", "))?;
                    }
                    writeln!(out)?;
                    write_listed(listed.as_deref().unwrap_or_default(), out)?;
                }
            }
        }
        Samples::Pairs(problem, pairs) => {
            let Written { ids: written, probabilities, n_best, .. } = written;
            let output_len = problem.output_len();
            let shown = |ids: &[i64]| problem.target_text(problem.written(ids));
            for (index, (pair, row)) in pairs.iter().zip(written.chunks(output_len)).enumerate() {
                let ids = problem.written(row);
                let prediction = problem.target_text(ids);
                // The written tokens' and the end marker's (none when the answer filled every step).
                let row_probabilities = probabilities
                    .get(index * output_len..(index + 1) * output_len)
                    .map(|row| &row[..(ids.len() + 1).min(output_len)]);
                let expected = pair.expected.as_ref();
                let is_correct = expected.map(|(_, truth)| PairsProblem::is_right(ids, truth));
                correct += usize::from(is_correct == Some(true));
                let listed = listed(n_best.get(index), shown);
                if json {
                    let answer = JsonTranslation {
                        input: &pair.text,
                        prediction: &prediction,
                        expected: expected.map(|(text, _)| text.as_str()),
                        correct: is_correct,
                        probabilities: row_probabilities,
                        n_best: listed,
                    };
                    writeln!(out, "{}", serde_json::to_string(&answer)?)?;
                } else {
                    write!(out, "{}\t{}", on_one_line(&pair.text), on_one_line(&prediction))?;
                    if let (Some((text, _)), Some(right)) = (expected, is_correct) {
                        let verdict = if right { "right" } else { "wrong" };
                        write!(out, "\t(expect {}: {verdict})", on_one_line(text))?;
                    }
                    if let Some(row_probabilities) = row_probabilities {
                        let tokens = ids.iter().map(|&id| format!("{:?}", problem.target_text(&[id])));
                        let shown: Vec<String> = tokens
                            .chain(std::iter::once("end".to_owned()))
                            .zip(row_probabilities)
                            .map(|(token, probability)| format!("{token} {probability:.2}"))
                            .collect();
                        write!(out, "\t[{}]", shown.join(", "))?;
                    }
                    writeln!(out)?;
                    write_listed(listed.as_deref().unwrap_or_default(), out)?;
                }
            }
        }
        Samples::Sequences(problem, sequences) => {
            let flat = &written.values;
            for (values, reconstruction) in sequences.iter().zip(flat.chunks(problem.length)) {
                if json {
                    let max_abs_error =
                        values.iter().zip(reconstruction).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    let record = JsonReconstruction { input: values, reconstruction, max_abs_error };
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                } else {
                    writeln!(out, "{}", format_sequence(reconstruction))?;
                }
            }
        }
    }
    Ok(correct)
}
