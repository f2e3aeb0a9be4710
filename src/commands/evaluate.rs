//! `evaluate`: scores a saved model on fresh samples, on the user's file, or on the held-out
//! part of the file it was trained on, and returns what it found as an [`EvaluateReport`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use serde::{Serialize, Serializer};
use tch::Device;

use super::evaluation_batch_size;
use super::predict::Decoding;
use crate::data::corpus::batches::PairSource;
use crate::data::corpus::load;
use crate::data::corpus::read::PairFiles;
use crate::data::corpus::sequences::{self, SequenceSource};
use crate::data::corpus::{PairCorpus, thousands};
use crate::data::{BatchStream, Stream};
use crate::evaluate::mistakes::{ErrorReport, MistakeTally};
use crate::evaluate::pair_mistakes::{PairMistake, PairMistakes};
use crate::evaluate::{self, Choice, DEFAULT_EVALUATION_SAMPLES, Evaluation};
use crate::nn::device::{DeviceChoice, describe};
use crate::nn::model::ModelShape;
use crate::output::{self, Report, on_one_line};
use crate::store::checkpoint;
use crate::task::{PairsProblem, Samples, SequenceProblem, Task};
use crate::train;

/// Everything `evaluate` needs.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    pub model_dir: PathBuf,
    /// Fresh samples of a generated problem (default: [`DEFAULT_EVALUATION_SAMPLES`]); a model
    /// of files scores the whole file, so giving it is an error there.
    pub samples: Option<usize>,
    /// Defaults to the training seed, which reproduces the figures saved in `config.json`.
    pub seed: Option<u64>,
    pub device: DeviceChoice,
    /// List this many wrong predictions, with accuracy by output position and by answer size.
    pub errors: Option<usize>,
    /// Score the best answer of a beam this wide (1: greedy) for models whose decoder searches.
    pub beam: usize,
    /// Pairs to score a model of pairs on (default: its own held-out part).
    pub data: Option<PairFiles>,
    pub skip_bad_lines: bool,
}

/// What `evaluate` found: the figures, where they come from, and the mistakes when asked for.
#[derive(Debug)]
pub enum EvaluateReport {
    /// A generated problem, on fresh samples of `seed`.
    Fresh { task: Task, seed: u64, device: String, evaluation: Evaluation, mistakes: Option<ErrorReport> },
    /// A model of pairs, on the pairs of `origin`: with `--errors`, how many were wrong and the
    /// most confident of them.
    Pairs { origin: String, device: String, evaluation: Evaluation, mistakes: Option<(usize, Vec<PairMistake>)> },
    /// An autoencoder, on the sequences of `origin`.
    Sequences { origin: String, device: String, evaluation: Evaluation },
}

impl Report for EvaluateReport {
    fn text(&self) -> String {
        match self {
            EvaluateReport::Fresh { task, seed, device, evaluation, mistakes } => {
                let mut text = format!("{} (seed {seed}, {device})", describe_evaluation(task, evaluation));
                if let (Task::Arithmetic(problem), Some(report)) = (task, mistakes) {
                    text.push('\n');
                    text.push_str(&report.describe(evaluation.metrics.samples, problem));
                }
                text
            }
            EvaluateReport::Pairs { origin, device, evaluation, mistakes } => {
                let samples = evaluation.metrics.samples;
                let mut text = format!("On {samples} pairs of {origin}: {} ({device})", describe_pairs(evaluation));
                if let Some((wrong, kept)) = mistakes {
                    match (wrong, kept.is_empty()) {
                        (0, _) => text.push_str(&format!("\nnone of {samples} wrong")),
                        // `--errors 0`: the count alone.
                        (_, true) => text.push_str(&format!("\n{wrong} of {samples} wrong")),
                        (_, false) => text.push_str(&format!("\n{wrong} of {samples} wrong; the most confident:")),
                    }
                    for mistake in kept {
                        text.push_str(&format!(
                            "\n  {}  →  {}  (expected {}, confidence {:.2})",
                            on_one_line(&mistake.input),
                            on_one_line(&mistake.prediction),
                            on_one_line(&mistake.expected),
                            mistake.confidence
                        ));
                    }
                }
                text
            }
            EvaluateReport::Sequences { origin, device, evaluation } => {
                let figures = evaluation.metrics.describe();
                format!("On {} sequences of {origin}: {figures} ({device})", evaluation.metrics.samples)
            }
        }
    }
}

/// What `evaluate --json` prints: the figures, and with `--errors` the [`ErrorReport`]'s keys
/// (`wrong`, `errors`, `by_position`, `by_size`).
#[derive(Debug, Serialize)]
struct EvaluateJson<'a> {
    #[serde(flatten)]
    evaluation: &'a Evaluation,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    mistakes: Option<&'a ErrorReport>,
}

/// What `evaluate --json` prints for a model of pairs.
#[derive(Debug, Serialize)]
struct PairEvaluationJson<'a> {
    samples: usize,
    loss: f64,
    token_accuracy: Option<f64>,
    sequence_accuracy: Option<f64>,
    token_error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrong: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [PairMistake]>,
}

impl Serialize for EvaluateReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EvaluateReport::Fresh { evaluation, mistakes, .. } => {
                EvaluateJson { evaluation, mistakes: mistakes.as_ref() }.serialize(serializer)
            }
            EvaluateReport::Pairs { evaluation, mistakes, .. } => {
                let metrics = &evaluation.metrics;
                PairEvaluationJson {
                    samples: metrics.samples,
                    loss: metrics.loss,
                    token_accuracy: metrics.char_accuracy,
                    sequence_accuracy: metrics.sequence_accuracy,
                    token_error_rate: evaluation.token_error_rate,
                    wrong: mistakes.as_ref().map(|(wrong, _)| *wrong),
                    errors: mistakes.as_ref().map(|(_, kept)| kept.as_slice()),
                }
                .serialize(serializer)
            }
            EvaluateReport::Sequences { evaluation, .. } => evaluation.serialize(serializer),
        }
    }
}

/// Scores a saved model: a generated problem on fresh samples, a model of files on `--data` or
/// its own held-out part.
pub fn evaluate(request: &EvaluateRequest) -> Result<EvaluateReport> {
    let device = request.device.resolve()?;
    let loaded = checkpoint::load(&request.model_dir, device)?;
    Decoding::choose(Some(request.beam), None, &loaded.model)?;
    if let Task::Pairs(problem) = &loaded.config.task {
        return evaluate_pairs(request, &loaded, problem, device);
    }
    if let Task::Autoencoder(problem) = &loaded.config.task
        && (request.data.is_some() || problem.data.is_some())
    {
        return evaluate_sequences(request, &loaded, problem, device);
    }
    if request.data.is_some() {
        bail!(
            "--data scores a model of your own pairs or an autoencoder; {} holds {}, scored on fresh samples \
             without it",
            request.model_dir.display(),
            loaded.config.task.model_kind()
        );
    }
    let samples = request.samples.unwrap_or(DEFAULT_EVALUATION_SAMPLES);
    if !(1..=train::MAX_SAMPLES).contains(&samples) {
        bail!("the number of samples must be between 1 and {}, got {samples}", train::MAX_SAMPLES);
    }
    let seed = request.seed.unwrap_or(loaded.config.training.seed);
    let task = &loaded.config.task;
    let mut tally = match (task, request.errors) {
        (Task::Arithmetic(problem), Some(limit)) => Some(MistakeTally::new(problem, limit)),
        (_, None) => None,
        (_, Some(_)) => bail!(
            "--errors lists wrong answers of arithmetic models; {} holds {}, whose errors are \
             the mean squared and largest absolute error that evaluate prints without it",
            request.model_dir.display(),
            task.model_kind()
        ),
    };
    let (batch, choice) = batches(&ModelShape::for_task(task), request.beam);
    let data = BatchStream::new(task, seed, Stream::Evaluation, samples, batch, device)?.keeping_samples();
    let evaluation = evaluate::evaluate_observed(&loaded.model, &data, choice, |batch, answers| {
        if let (Some(tally), Samples::Arithmetic(_, expressions)) = (tally.as_mut(), &batch.samples) {
            tally.add(expressions, &batch.targets, answers);
        }
    })?;
    let mistakes = tally.map(MistakeTally::finish);
    let device = decoded_on(device, request.beam);
    Ok(EvaluateReport::Fresh { task: task.clone(), seed, device, evaluation, mistakes })
}

/// Scores a model of pairs on `--data`, or on its own held-out part.
fn evaluate_pairs(
    request: &EvaluateRequest,
    loaded: &checkpoint::LoadedModel,
    problem: &PairsProblem,
    device: Device,
) -> Result<EvaluateReport> {
    if request.seed.is_some() || request.samples.is_some() {
        bail!(
            "--seed and --samples draw fresh samples of a generated problem; a model of pairs scores every pair \
             it is given (its held-out part, or --data)"
        );
    }
    let (corpus, origin) = match &request.data {
        Some(files) => {
            let files = files.clone().with_default_columns(problem.data.columns.as_ref());
            let mut notes = Vec::new();
            let mut corpus = load::read_for_model(problem, &files, request.skip_bad_lines, &mut notes)?;
            let limits = corpus.limit_lengths(Some(problem.max_source_len), Some(problem.max_target_len));
            notes.extend(limits.describe().map(|text| format!("{text}, which this model cannot read or write")));
            for line in notes {
                output::note(line);
            }
            if corpus.is_empty() {
                bail!("{files} holds no pair this model can score");
            }
            note_training_pairs(problem, loaded.config.training.seed, &corpus);
            (Arc::new(corpus), files.to_string())
        }
        None => {
            let pairs = load::reload(problem, loaded.config.training.seed)?;
            (pairs.validation, format!("the held-out part of {}", problem.data.files()?))
        }
    };
    let source = PairSource::new(problem, corpus, None);
    let (batch, choice) = batches(&loaded.model.shape(), request.beam);
    let data = BatchStream::of(Arc::new(source), batch, device).keeping_samples();
    let mut mistakes = request.errors.map(|limit| PairMistakes::new(problem, limit));
    let evaluation = evaluate::evaluate_observed(&loaded.model, &data, choice, |batch, answers| {
        if let (Some(mistakes), Samples::Pairs(_, pairs)) = (mistakes.as_mut(), &batch.samples) {
            mistakes.add(pairs, answers);
        }
    })?;
    let mistakes = mistakes.map(PairMistakes::finish);
    Ok(EvaluateReport::Pairs { origin, device: decoded_on(device, request.beam), evaluation, mistakes })
}

/// Says how many of the pairs to score are pairs the model was trained on (a test file that
/// overlaps the training data flatters the figures), when the training data can still be read
/// as it was; otherwise nothing, as the check is only a courtesy.
fn note_training_pairs(problem: &PairsProblem, seed: u64, scored: &PairCorpus) {
    let Ok(trained) = load::reload(problem, seed) else { return };
    let overlap = trained.training.overlap(scored);
    if overlap.shared > 0 {
        output::note(format!(
            "note: {} of the {} pairs scored are pairs this model was trained on: its figures on them say less \
             about pairs it has not seen{}",
            thousands(overlap.shared),
            thousands(scored.len()),
            overlap.uncompared_clause()
        ));
    }
}

/// Scores an autoencoder on a file of sequences (`--data`), or on the held-out part of the file
/// it was trained on.
fn evaluate_sequences(
    request: &EvaluateRequest,
    loaded: &checkpoint::LoadedModel,
    problem: &SequenceProblem,
    device: Device,
) -> Result<EvaluateReport> {
    if request.seed.is_some() || request.samples.is_some() || request.errors.is_some() {
        bail!("--seed, --samples and --errors do not apply to an autoencoder scored on a file of sequences");
    }
    let (held, origin) = match &request.data {
        Some(files) if files.columns().is_some() => {
            bail!("--columns picks the source and target columns of pairs; an autoencoder reads one sequence per line")
        }
        Some(PairFiles::Tabbed(path) | PairFiles::Csv { path, .. }) => {
            let mut notes = Vec::new();
            let held = sequences::read_file(path, Some(problem.length), request.skip_bad_lines, &mut notes)?;
            notes.iter().for_each(output::note);
            (Arc::new(held), path.display().to_string())
        }
        Some(PairFiles::Aligned { .. }) => {
            bail!("an autoencoder reads one file of sequences: give it with --data FILE, not --source/--target")
        }
        None => {
            let file = sequences::reload(problem, loaded.config.training.seed)?;
            let origin = problem.data.as_ref().map_or_else(String::new, |data| data.data.display().to_string());
            (file.validation, format!("the held-out part of {origin}"))
        }
    };
    let source = SequenceSource::new(problem, held, None);
    let data = BatchStream::of(Arc::new(source), evaluation_batch_size(&loaded.model.shape()), device);
    let evaluation = evaluate::evaluate(&loaded.model, &data);
    Ok(EvaluateReport::Sequences { origin, device: describe(device), evaluation })
}

/// Where the answers were made, and how when not greedily: `the CPU, beam 5`.
fn decoded_on(device: Device, beam: usize) -> String {
    match beam {
        1 => describe(device),
        _ => format!("{}, beam {beam}", describe(device)),
    }
}

/// Rows per batch, the same with or without a beam (so that the greedy loss is the same figure),
/// and the answers to score: a beam holds `beam` hypotheses of every input, so it searches
/// `beam` times fewer rows at a time, as `predict --beam` does by default.
fn batches(shape: &ModelShape, beam: usize) -> (usize, Choice) {
    let batch = evaluation_batch_size(shape);
    let choice = match beam {
        1 => Choice::Greedy,
        width => Choice::Beam { width, rows: (batch / width).max(1) },
    };
    (batch, choice)
}

/// The final figures in words: on fresh samples of a generated problem, on the held-out part of
/// the user's file.
pub(super) fn describe_evaluation(task: &Task, evaluation: &Evaluation) -> String {
    let samples = evaluation.metrics.samples;
    match task {
        Task::Pairs(_) => return format!("On {samples} held-out pairs: {}", describe_pairs(evaluation)),
        Task::Autoencoder(problem) if problem.data.is_some() => {
            return format!("On {samples} held-out sequences: {}", evaluation.metrics.describe());
        }
        _ => {}
    }
    let mut text = format!("On {} fresh samples: {}", evaluation.metrics.samples, evaluation.metrics.describe());
    if !evaluation.by_operator.is_empty() {
        let parts: Vec<String> = evaluation
            .by_operator
            .iter()
            .map(|o| match o.samples {
                0 => format!("{} not drawn", o.operator),
                samples => format!("{} {:.2}% of {samples}", o.operator, 100.0 * o.sequence_accuracy),
            })
            .collect();
        text.push_str(&format!("\nSequence accuracy of expressions using each operator: {}", parts.join(", ")));
    }
    text
}

/// `loss 0.1234, token accuracy 97.10%, sequence accuracy 80.00%, token error rate 4.20%`.
fn describe_pairs(evaluation: &Evaluation) -> String {
    let metrics = &evaluation.metrics;
    let percent = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |v| format!("{:.2}%", 100.0 * v));
    format!(
        "loss {:.4}, token accuracy {}, sequence accuracy {}, token error rate {}",
        metrics.loss,
        percent(metrics.char_accuracy),
        percent(metrics.sequence_accuracy),
        percent(evaluation.token_error_rate)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::Metrics;

    fn pairs_report(mistakes: Option<(usize, Vec<PairMistake>)>) -> EvaluateReport {
        let metrics = Metrics {
            loss: 0.5,
            char_accuracy: Some(0.9),
            sequence_accuracy: Some(0.75),
            max_abs_error: None,
            samples: 4,
        };
        let evaluation = Evaluation { metrics, by_operator: Vec::new(), token_error_rate: Some(0.125) };
        EvaluateReport::Pairs { origin: "test.tsv".to_owned(), device: "the CPU".to_owned(), evaluation, mistakes }
    }

    #[test]
    fn a_report_of_pairs_renders_the_same_figures_as_text_and_as_json() {
        let mistake = PairMistake {
            input: "cat".to_owned(),
            prediction: "K AE".to_owned(),
            expected: "K AE T".to_owned(),
            confidence: 0.5,
        };
        let counted = pairs_report(Some((3, Vec::new()))).text();
        assert!(counted.ends_with("\n3 of 4 wrong"), "--errors 0 counts without a list: {counted}");
        let report = pairs_report(Some((1, vec![mistake])));
        let text = report.text();
        assert!(text.starts_with("On 4 pairs of test.tsv: loss 0.5000, token accuracy 90.00%"), "{text}");
        assert!(text.contains("sequence accuracy 75.00%, token error rate 12.50% (the CPU)"), "{text}");
        assert!(
            text.ends_with("1 of 4 wrong; the most confident:\n  cat  →  K AE  (expected K AE T, confidence 0.50)")
        );
        let json: serde_json::Value = serde_json::to_value(&report).expect("serialisable");
        assert_eq!(json["samples"], 4);
        assert_eq!(json["token_accuracy"], 0.9);
        assert_eq!(json["token_error_rate"], 0.125);
        assert_eq!(json["wrong"], 1);
        assert_eq!(json["errors"][0]["expected"], "K AE T");
        let plain = serde_json::to_value(pairs_report(None)).expect("serialisable");
        assert!(plain.get("wrong").is_none() && plain.get("errors").is_none(), "{plain}");
    }
}
