//! One function per subcommand: each validates its request, does the work and returns what it
//! found as a [`Report`] for [`crate::output::render`] (predict and encode stream their output).

pub mod encode;
pub mod evaluate;
pub mod info;
pub mod predict;
mod watch;

use std::cell::{Cell, RefCell};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tch::{Device, nn};

use crate::commands::encode::{EncodeFormat, Encoder, Inputs, KeptVectors};
use crate::commands::predict::{AnswerStyle, Decoding, Predictor};
use crate::commands::watch::ValidationWatch;
use crate::data::corpus::batches::PairSource;
use crate::data::corpus::load::{self, DataSettings, LoadedPairs, load_for_training};
use crate::data::corpus::sequences::{self, LoadedSequences, SequenceSource};
use crate::data::corpus::thousands;
use crate::data::generated::Generated;
use crate::data::input::{InputSource, InputSummary};
use crate::data::{Batch, BatchStream, SampleSource, Stream};
use crate::evaluate::{Answers, Evaluation, Metrics, evaluate_batches};
use crate::nn::device::{DeviceChoice, FORCE_AUTOGRAD_VARIABLE, autograd_forced, describe};
use crate::nn::model::{ModelConfig, ModelShape, Seq2Seq};
use crate::nn::optim::Adam;
use crate::output::{self, BestEffort, Report, Stdout};
use crate::store::checkpoint::{self, BestWeights, SavedConfig, Versions};
use crate::store::lock::DirLock;
use crate::store::metrics_log::{METRICS_FILE, MetricsLog, MetricsRow, read_metrics};
use crate::task::Task;
use crate::train::interrupt::{self, Stopped};
use crate::train::{
    self, AfterReport, DEFAULT_VALIDATION_SAMPLES, LogCadence, Position, Progress, ReportDue, TrainConfig, TrainLoop,
    TrainOutcome,
};
use crate::viz::{pca, plot};

pub use crate::evaluate::DEFAULT_EVALUATION_SAMPLES;
pub use crate::store::metrics_log::LEARNING_CURVE_FILE;
/// Evaluation needs no small batches: they only cost time.
pub const EVALUATION_BATCH_SIZE: usize = 1000;
/// Output numbers (logits) one evaluation or prediction batch may hold: 128 MiB of float32, so
/// that a word-level model with a large target vocabulary scores in smaller batches.
const OUTPUT_BUDGET: usize = 1 << 25;

/// [`EVALUATION_BATCH_SIZE`], or fewer rows when a batch's outputs would pass [`OUTPUT_BUDGET`].
pub fn evaluation_batch_size(shape: &ModelShape) -> usize {
    let per_row = (shape.output_len * shape.output.width()).max(1);
    EVALUATION_BATCH_SIZE.min(OUTPUT_BUDGET / per_row).max(1)
}
/// Validation samples above which a run makes their batches again at every row of
/// `metrics.csv` rather than holding them all in memory.
const VALIDATION_BATCHES_KEPT: usize = 10_000;

/// Everything `train` needs.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// The generated problem; unused when `data` is given.
    pub task: Task,
    /// The user's files to read, for a model of them.
    pub data: Option<DataSettings>,
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub device: DeviceChoice,
    pub out: Option<PathBuf>,
    /// Replace the model or checkpoint that `out` may hold.
    pub overwrite: bool,
    /// `--log-every`, which sets `training.log_every` once an epoch's size is known (your own
    /// data's is its training pairs); `None`: the default cadence.
    pub log_every: Option<LogCadence>,
    pub progress: Progress,
}

/// `--curriculum` and `--op-weights` shape a generated arithmetic problem's samples: on any
/// other run they are errors rather than ignored, as are weights of operators not drawn.
fn refuse_arithmetic_settings_elsewhere(request: &TrainRequest) -> Result<()> {
    let problem = match (&request.task, &request.data) {
        (Task::Arithmetic(problem), None) => Some(problem),
        _ => None,
    };
    let kind = || if request.data.is_some() { "a model of your own data" } else { request.task.model_kind() };
    if request.training.curriculum > 0 && problem.is_none() {
        bail!("--curriculum grows the terms of a generated arithmetic problem; this run trains {}", kind());
    }
    if let Some(weights) = &request.training.operator_weights {
        let Some(problem) = problem else {
            bail!("--op-weights weighs the operators of a generated arithmetic problem; this run trains {}", kind());
        };
        if let Some(op) = weights.weighted().find(|&op| !problem.operators.contains(op)) {
            bail!("--op-weights weighs {:?}, which --ops {} does not draw", op.symbol(), problem.operators);
        }
    }
    Ok(())
}

/// A warm-up longer than the run would end it before the learning rate reaches its peak: most
/// likely a count of steps given for one of samples. Checked once the run's length is known
/// (with your own data, the pairs), and not on resume, where it is the checkpoint's.
fn refuse_endless_warmup(training: &TrainConfig, own_data: bool) -> Result<()> {
    let total = training.total_samples();
    if training.warmup > total {
        let epoch = match own_data {
            true => format!("{} training pairs", training.samples),
            false => format!("--samples {}", training.samples),
        };
        bail!(
            "--warmup {} is longer than the run ({total} samples: {epoch} × --epochs {}), so the learning rate \
             would never reach --learning-rate {}; --warmup counts samples, not batches",
            training.warmup,
            training.epochs,
            training.learning_rate
        );
    }
    Ok(())
}

/// Trains a model, scores it on fresh samples and saves it; returns its directory.
pub fn train(request: &TrainRequest) -> Result<PathBuf> {
    let TrainRequest { model: model_config, .. } = request;
    model_config.validate()?;
    request.training.validate()?;
    refuse_arithmetic_settings_elsewhere(request)?;
    let mut training = request.training.clone();
    let (task, data) = match &request.data {
        None => (request.task.clone(), RunData::generated(&request.task, &training)?),
        Some(DataSettings::Pairs(settings)) => {
            let loaded = load_for_training(settings, training.seed)?;
            loaded.notes.iter().for_each(output::note);
            // An epoch is every training pair.
            training.samples = loaded.training.len();
            (Task::Pairs(Box::new(loaded.problem.clone())), RunData::pairs(&loaded, &training))
        }
        Some(DataSettings::Sequences(settings)) => {
            let loaded = sequences::load_for_training(settings, training.seed)?;
            loaded.notes.iter().for_each(output::note);
            training.samples = loaded.training.len();
            (Task::Autoencoder(loaded.problem.clone()), RunData::sequences(&loaded, &training))
        }
    };
    if let Some(cadence) = request.log_every {
        training.log_every = Some(cadence.samples(training.samples));
    }
    let (task, training) = (&task, &training);
    if let Some(signal) = interrupt::requested() {
        return Err(
            Stopped { signal, message: "stopped while reading the data; nothing was written".to_owned() }.into()
        );
    }
    task.validate()?;
    training.validate()?;
    refuse_endless_warmup(training, request.data.is_some())?;
    // Asked for more than there are (the default quietly takes what there is).
    if let Some(held_out) = task.held_out()
        && training.validation_samples > held_out
        && training.validation_samples != DEFAULT_VALIDATION_SAMPLES
    {
        output::note(format!(
            "note: the validation rows score all {} held-out samples, fewer than --validation-samples {}",
            thousands(held_out),
            training.validation_samples
        ));
    }
    if model_config.dropout > 0.0 && model_config.encoder_layers == 1 && model_config.decoder_layers == 1 {
        bail!(
            "--dropout applies between stacked LSTM layers, and one encoder and one decoder layer have none \
             between them: add --encoder-layers 2 or --decoder-layers 2, or leave --dropout out"
        );
    }
    model_config.check_memory(&ModelShape::for_task(task), Some(training.batch_size))?;
    let device = request.device.resolve()?;
    let out = checkpoint::prepare_output_dir(request.out.as_deref(), request.overwrite)?;
    let (dir, made) = (out.path.clone(), out.made);

    // Weights are drawn on the CPU so that a seed gives the same start on every device.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new_seeded(&vs.root(), model_config, ModelShape::for_task(task), training.seed);
    model.place(&mut vs, device);
    let mut optimizer = Adam::new(&vs, training.learning_rate).with_betas(training.adam_betas);
    let trained = run_training(
        Session {
            dir: out.path,
            _lock: out.lock,
            run_id: Some(checkpoint::new_run_id()),
            task: task.clone(),
            data,
            model_config: model_config.clone(),
            training: training.clone(),
            model,
            vs,
            start: Position::default(),
            seconds_before: 0.0,
            validation_seconds: Cell::new(0.0),
            stopped_early_after: None,
            best: None,
            restored_best_after: None,
            device,
            progress: request.progress,
        },
        &mut optimizer,
    );
    if trained.is_err() {
        checkpoint::remove_unsaved_run(&dir, made);
    }
    trained
}

/// Everything `train --resume` needs.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    pub dir: PathBuf,
    /// Replace the checkpoint cadences the run was started with, when given.
    pub checkpoint_every: Option<usize>,
    pub checkpoint_minutes: Option<f64>,
    /// Replaces the number of samples scored at the end, when given.
    pub evaluation_samples: Option<usize>,
    /// Replaces the metrics log's cadence, when given.
    pub log_every: Option<LogCadence>,
    /// Replaces the run's thread count, when given (the weights then differ from an
    /// uninterrupted run's with the recorded count).
    pub threads: Option<usize>,
    pub device: DeviceChoice,
    pub progress: Progress,
}

/// Continues an interrupted run from its checkpoint, in its directory, to the same end.
pub fn resume(request: &ResumeRequest) -> Result<PathBuf> {
    let device = request.device.resolve()?;
    let lock = checkpoint::lock_for_resume(&request.dir)?;
    let checkpoint = checkpoint::load_checkpoint(&request.dir, device)?;
    let mut training = checkpoint.config.training.clone();
    if request.checkpoint_every.is_some() {
        training.checkpoint_every = request.checkpoint_every;
    }
    if let Some(minutes) = request.checkpoint_minutes {
        training.checkpoint_minutes = minutes;
    }
    if let Some(samples) = request.evaluation_samples {
        training.evaluation_samples = samples;
    }
    if let Some(cadence) = request.log_every {
        training.log_every = Some(cadence.samples(training.samples));
    }
    if let Some(threads) = request.threads {
        training.threads = threads;
    }
    training.validate()?;
    let task = &checkpoint.config.task;
    let data = match task {
        Task::Pairs(problem) => RunData::pairs(&load::reload(problem, training.seed)?, &training),
        Task::Autoencoder(problem) if problem.data.is_some() => {
            RunData::sequences(&sequences::reload(problem, training.seed)?, &training)
        }
        _ => RunData::generated(task, &training)?,
    };
    let mut optimizer = checkpoint.optimizer;
    run_training(
        Session {
            dir: request.dir.clone(),
            _lock: lock,
            run_id: checkpoint.config.run_id.clone(),
            task: task.clone(),
            data,
            model_config: checkpoint.config.model.clone(),
            training,
            model: checkpoint.model,
            vs: checkpoint.vs,
            start: checkpoint.position,
            seconds_before: checkpoint.config.training_seconds,
            validation_seconds: Cell::new(checkpoint.config.validation_seconds),
            stopped_early_after: None,
            best: checkpoint.best,
            restored_best_after: None,
            device,
            progress: request.progress,
        },
        &mut optimizer,
    )
}

/// The samples a run trains on and scores with.
struct RunData {
    training: Arc<dyn SampleSource>,
    /// Scored at every row of metrics.csv, the same ones at every row, so that the validation
    /// curve moves only because the model does; `None` with `--validation-samples 0`.
    validation: Option<Arc<dyn SampleSource>>,
    /// Scored once training ends, for the figures in config.json.
    evaluation: Arc<dyn SampleSource>,
}

impl RunData {
    /// A generated problem's streams: the validation rows score the first
    /// `validation_samples` of the evaluation stream; the final figures score
    /// `evaluation_samples` of it.
    fn generated(task: &Task, training: &TrainConfig) -> Result<Self> {
        let seed = training.seed;
        let validation = match training.validation_samples {
            0 => None,
            samples => {
                Some(Arc::new(Generated::new(task, seed, Stream::Evaluation, samples)?) as Arc<dyn SampleSource>)
            }
        };
        Ok(Self {
            training: Arc::new(
                Generated::new(task, seed, Stream::Training, training.samples)?
                    .with_curriculum(training.curriculum)
                    .with_operator_weights(training.operator_weights),
            ),
            validation,
            evaluation: Arc::new(Generated::new(task, seed, Stream::Evaluation, training.evaluation_samples)?),
        })
    }

    /// The user's pairs: training shuffled every epoch from the seed; the validation rows score
    /// the first `validation_samples` held-out pairs, the final figures all of them.
    fn pairs(loaded: &LoadedPairs, training: &TrainConfig) -> Self {
        let problem = &loaded.problem;
        let held_out = || PairSource::new(problem, Arc::clone(&loaded.validation), None);
        Self {
            training: Arc::new(PairSource::new(problem, Arc::clone(&loaded.training), Some(training.seed))),
            validation: Self::validation(training.validation_samples, |samples| held_out().first(samples)),
            evaluation: Arc::new(held_out()),
        }
    }

    /// The autoencoder's sequences from a file, as [`RunData::pairs`] takes pairs.
    fn sequences(loaded: &LoadedSequences, training: &TrainConfig) -> Self {
        let problem = &loaded.problem;
        let held_out = || SequenceSource::new(problem, Arc::clone(&loaded.validation), None);
        Self {
            training: Arc::new(SequenceSource::new(problem, Arc::clone(&loaded.training), Some(training.seed))),
            validation: Self::validation(training.validation_samples, |samples| held_out().first(samples)),
            evaluation: Arc::new(held_out()),
        }
    }

    /// `make(samples)`, the validation rows' source, unless `--validation-samples 0` asks for none.
    fn validation<S: SampleSource + 'static>(
        samples: usize,
        make: impl FnOnce(usize) -> S,
    ) -> Option<Arc<dyn SampleSource>> {
        (samples > 0).then(|| Arc::new(make(samples)) as Arc<dyn SampleSource>)
    }
}

/// A model being trained, from a fresh start or a checkpoint.
struct Session {
    dir: PathBuf,
    /// Held for the whole run: the directory has one writer.
    _lock: DirLock,
    run_id: Option<String>,
    task: Task,
    data: RunData,
    model_config: ModelConfig,
    training: TrainConfig,
    model: Seq2Seq,
    vs: nn::VarStore,
    start: Position,
    seconds_before: f64,
    /// Seconds spent scoring validation rows so far, by this run and the ones it resumes.
    validation_seconds: Cell<f64>,
    /// Samples seen when early stopping ended the run.
    stopped_early_after: Option<usize>,
    /// With `--restore-best`: the best validation row's weights so far (from the checkpoint on
    /// resume), and once restored, the samples seen at that row.
    best: Option<BestWeights>,
    restored_best_after: Option<u64>,
    device: Device,
    progress: Progress,
}

impl Session {
    /// The config to save, for a checkpoint at `checkpoint` or for the finished model.
    fn saved_config(&self, seconds: f64, metrics: Option<Evaluation>, checkpoint: Option<Position>) -> SavedConfig {
        SavedConfig {
            format_version: checkpoint::FORMAT_VERSION,
            task: self.task.clone(),
            alphabet: self.task.alphabet().map(|a| a.as_string()),
            input_len: self.task.input_len(),
            output_len: self.task.output_len(),
            model: self.model_config.clone(),
            training: self.training.clone(),
            trained_on: describe(self.device),
            training_seconds: seconds,
            validation_seconds: self.validation_seconds.get(),
            metrics,
            checkpoint,
            stopped_early_after: self.stopped_early_after,
            restored_best_after: self.restored_best_after,
            run_id: self.run_id.clone(),
            versions: Versions::current(),
        }
    }
}

/// Trains `session` with `optimizer` to the end (or to a stop signal), saves the model, then
/// scores it and saves the figures with it.
fn run_training(mut session: Session, optimizer: &mut Adam) -> Result<PathBuf> {
    let training = session.training.clone();
    let (device, dir) = (session.device, session.dir.clone());
    let mut console = BestEffort::default();
    if session.progress != Progress::Quiet {
        console.line(format!("Problem: {}", session.task.describe()));
        console.line(session.model.summary());
        let resumed = match session.start.samples_seen(&training) {
            0 => String::new(),
            seen => format!(", resuming after {seen}"),
        };
        let how = if session.model.shares_batches() && training.threads > 1 {
            format!(", each batch shared among {} threads", training.threads)
        } else if !session.model.runs_by_hand() && autograd_forced() {
            format!(" by libtorch's lstm op with autograd ({FORCE_AUTOGRAD_VARIABLE}=1)")
        } else {
            String::new()
        };
        console.line(format!(
            "Training on {}: {} samples in batches of {}, {} epoch(s), seed {}{how}{resumed}",
            describe(device),
            training.samples,
            training.batch_size,
            training.epochs,
            training.seed
        ));
    }
    let data = BatchStream::of(Arc::clone(&session.data.training), training.batch_size, device);
    let metrics_path = dir.join(METRICS_FILE);
    let seen = session.start.samples_seen(&training) as u64;
    let (mut metrics_log, mut logged) = match seen {
        0 => (MetricsLog::create(&metrics_path)?, Vec::new()),
        seen => MetricsLog::reopen(&metrics_path, seen)?,
    };
    // The row at the checkpoint's position, if a stop signal cut its validation short: scored
    // before the resumed run's first step (`ReportDue::Resumed`), and watched only then.
    let mut cut_short = match (&session.data.validation, logged.last()) {
        (Some(_), Some(row)) if row.samples_seen == seen && row.validation_loss.is_none() => logged.pop(),
        _ => None,
    };
    let watch = ValidationWatch::start(&training, &logged, &metrics_path, session.best.take())?;
    let watch = RefCell::new(watch);
    let evaluation_batch = evaluation_batch_size(&session.model.shape());
    let validation_data =
        session.data.validation.as_ref().map(|source| BatchStream::of(Arc::clone(source), evaluation_batch, device));
    let mut last_checkpoint: Option<usize> = None;
    let outcome = {
        let session = &session;
        let mut save_checkpoint = |position: Position, optimizer: &Adam, seconds: f64| {
            let config = session.saved_config(seconds, None, Some(position));
            let watch = watch.borrow();
            let best = watch.as_ref().and_then(ValidationWatch::best_weights);
            checkpoint::save_checkpoint(&dir, &config, &session.vs, optimizer, position, best)?;
            last_checkpoint = Some(position.samples_seen(&training));
            Ok(())
        };
        // Made at the first row, then scored again at every row (unless there are too many to hold).
        let mut validation_batches: Option<Vec<Batch<'_>>> = None;
        let mut on_report = |due: ReportDue<'_>, forward: &train::Forward<'_>| {
            let row = match due {
                ReportDue::Row(report) => metrics_row(report),
                ReportDue::Resumed => match cut_short.take() {
                    Some(row) => row,
                    None => return Ok(AfterReport::GoOn),
                },
            };
            let started = Instant::now();
            let features = session.model.shape().output;
            let answer = |inputs: &tch::Tensor| Ok(Answers::greedy(forward(inputs)?, features));
            let validation = match &validation_data {
                None => None,
                Some(data) if data.samples() > VALIDATION_BATCHES_KEPT => {
                    Some(evaluate_batches(&session.model, &answer, data, data.iter(), |_, _| {})?.metrics)
                }
                Some(data) => {
                    let batches = validation_batches.get_or_insert_with(|| data.iter().collect());
                    Some(evaluate_batches(&session.model, &answer, data, batches.iter(), |_, _| {})?.metrics)
                }
            };
            let seconds = &session.validation_seconds;
            seconds.set(seconds.get() + started.elapsed().as_secs_f64());
            // A stop signal cuts the validation short: its partial figures are not kept, and the
            // row is scored again when the run resumes.
            let validation = validation.filter(|_| interrupt::requested().is_none());
            let row = with_validation(row, validation.as_ref());
            match due {
                ReportDue::Row(_) => metrics_log.append(&row)?,
                ReportDue::Resumed if validation.is_some() => metrics_log.replace_last(&row)?,
                ReportDue::Resumed => return Ok(AfterReport::GoOn),
            }
            let stop = watch.borrow_mut().as_mut().is_some_and(|watch| watch.observe(&row, &session.vs));
            Ok(if stop { AfterReport::Stop } else { AfterReport::GoOn })
        };
        train::train(
            &session.model,
            optimizer,
            &data,
            TrainLoop {
                config: &training,
                progress: session.progress,
                start: session.start,
                seconds_before: session.seconds_before,
                save_checkpoint: &mut save_checkpoint,
                on_report: &mut on_report,
                console: &mut console,
            },
        )
    };
    let outcome = match (outcome, last_checkpoint) {
        (Err(error), Some(samples)) => bail!(
            "{error:#}. The last checkpoint, after {samples} samples, stays in {} (train --resume continues it)",
            dir.display()
        ),
        (outcome, _) => outcome?,
    };
    let seconds = match outcome {
        TrainOutcome::Interrupted { position, signal, .. } => {
            return Err(Stopped {
                signal,
                message: format!(
                    "the checkpoint after {} of {} samples is in {}; continue with: seq2seq train --resume {}",
                    position.samples_seen(&training),
                    training.total_samples(),
                    dir.display(),
                    dir.display()
                ),
            }
            .into());
        }
        TrainOutcome::Finished { seconds } => seconds,
        TrainOutcome::StoppedEarly { position, seconds } => {
            let samples = position.samples_seen(&training);
            if let Some(watch) = watch.borrow().as_ref() {
                console.line(watch.stop_line(samples, training.total_samples()));
            }
            session.stopped_early_after = Some(samples);
            seconds
        }
    };
    if let Some((loss, at)) = watch.into_inner().map(|watch| watch.restore_best(&session.vs)).transpose()?.flatten() {
        console.line(format!(
            "Kept the weights of the best validation row: loss {loss:.4} after {at} samples (--restore-best)"
        ));
        session.restored_best_after = Some(at);
    }

    // The trained weights are saved before the final evaluation, which can take long, so that
    // no stop from here on loses them; the save itself is shielded from a second Ctrl-C.
    let config = session.saved_config(seconds, None, None);
    interrupt::shielded(|| checkpoint::save(&dir, &config, &session.vs))?;
    let unscored = |signal| Stopped {
        signal,
        message: format!(
            "the trained model is saved in {} without its final scores; `seq2seq evaluate --model {}` scores it",
            dir.display(),
            dir.display()
        ),
    };
    if let Some(signal) = interrupt::requested() {
        return Err(unscored(signal).into());
    }
    let evaluation_data =
        BatchStream::of(Arc::clone(&session.data.evaluation), evaluation_batch, device).keeping_samples();
    let evaluation = crate::evaluate::evaluate(&session.model, &evaluation_data);
    if let Some(signal) = interrupt::requested() {
        return Err(unscored(signal).into());
    }
    // The weights on disk are these already: only the config gains the figures.
    let config = session.saved_config(seconds, Some(evaluation.clone()), None);
    interrupt::shielded(|| checkpoint::save_config(&dir, &config))?;
    console.line(format!(
        "Trained in {seconds:.1}s on {}. {}",
        describe(device),
        evaluate::describe_evaluation(&session.task, &evaluation)
    ));
    console.line(format!("Saved the model to {}", dir.display()));
    if let Err(error) = console.finish() {
        bail!("{error} (the model was saved to {})", dir.display());
    }
    Ok(dir)
}

/// One line of `metrics.csv`: a training report and the validation figures scored with it.
fn metrics_row(report: &train::Report) -> MetricsRow {
    MetricsRow {
        samples_seen: report.samples_seen as u64,
        epoch: report.epoch + 1,
        elapsed_seconds: report.elapsed_seconds,
        loss: report.running.loss,
        char_accuracy: report.running.char_accuracy,
        sequence_accuracy: report.running.sequence_accuracy,
        validation_loss: None,
        validation_char_accuracy: None,
        validation_sequence_accuracy: None,
        gradient_norm: Some(report.gradient_norm),
    }
}

/// `row` with the validation figures of `validation` (none: the columns stay empty).
fn with_validation(row: MetricsRow, validation: Option<&Metrics>) -> MetricsRow {
    MetricsRow {
        validation_loss: validation.map(|v| v.loss),
        validation_char_accuracy: validation.and_then(|v| v.char_accuracy),
        validation_sequence_accuracy: validation.and_then(|v| v.sequence_accuracy),
        ..row
    }
}

/// Everything `predict` needs.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub model_dir: PathBuf,
    pub source: InputSource,
    /// Inputs per forward pass; `None`: [`evaluation_batch_size`] of the model.
    pub batch_size: Option<usize>,
    pub device: DeviceChoice,
    pub json: bool,
    /// Show the probability of each output character (arithmetic).
    pub verbose: bool,
    /// Beam width (`None`: greedy, unless `n_best` asks for more).
    pub beam: Option<usize>,
    /// How many of the beam's answers to print.
    pub n_best: Option<usize>,
    /// CPU threads, each predicting a share of every batch.
    pub workers: usize,
}

/// Answers expressions with a saved model; fails (after answering the good lines) when any
/// line was rejected.
pub fn predict(request: &PredictRequest) -> Result<()> {
    if let Some(batch_size) = request.batch_size {
        check_batch_size(batch_size)?;
    }
    let device = request.device.resolve()?;
    let loaded = checkpoint::load(&request.model_dir, device)?;
    if request.verbose && matches!(loaded.config.task, Task::Autoencoder(_)) {
        bail!(
            "--verbose shows the probability of each token a model writes; {} holds {}, which writes values",
            request.model_dir.display(),
            loaded.config.task.model_kind()
        );
    }
    let decoding = Decoding::choose(request.beam, request.n_best, &loaded.model)?;
    // A beam holds `beam` hypotheses of every input, each with its scores over the vocabulary.
    let batch_size =
        request.batch_size.unwrap_or_else(|| (evaluation_batch_size(&loaded.model.shape()) / decoding.beam).max(1));
    // Someone typing at a terminal wants each answer as soon as the line is entered.
    let interactive = matches!(request.source, InputSource::Stdin { .. }) && io::stdin().is_terminal();
    let predictor = Predictor {
        model: &loaded.model,
        task: &loaded.config.task,
        device,
        batch_size: if interactive { 1 } else { batch_size },
        style: AnswerStyle { json: request.json, verbose: request.verbose, decoding },
        workers: request.workers,
    };
    let mut out = BufWriter::new(Stdout::lock());
    let summary = predictor.run(&request.source, &mut out, &mut io::stderr())?;
    out.flush()?;
    fail_on_rejections(&summary.inputs)
}

/// Prediction and encoding batches: the limits of training's.
fn check_batch_size(batch_size: usize) -> Result<()> {
    if !(1..=train::MAX_BATCH_SIZE).contains(&batch_size) {
        bail!("the batch size must be between 1 and {}, got {batch_size}", train::MAX_BATCH_SIZE);
    }
    Ok(())
}

/// Bad inputs are reported one by one as they come; the command still fails at the end.
fn fail_on_rejections(summary: &InputSummary) -> Result<()> {
    let (rejected, total) = (summary.rejected, summary.rejected + summary.accepted);
    match (rejected, total) {
        (0, _) => {}
        (1, 1) => bail!("the input was rejected (see the message above)"),
        (1, _) => bail!("1 of {total} inputs was rejected (see the message above)"),
        _ => bail!("{rejected} of {total} inputs were rejected (see the messages above)"),
    }
    Ok(())
}

/// Everything `encode` needs.
#[derive(Debug, Clone)]
pub struct EncodeRequest {
    pub model_dir: PathBuf,
    /// The inputs; `None` draws `samples` fresh samples of the evaluation stream (`--plot` alone).
    pub source: Option<InputSource>,
    /// How many samples to draw when `source` is `None`.
    pub samples: usize,
    pub format: EncodeFormat,
    /// Where to write the vectors; standard output when `None` (CSV only), unless `plot` is given:
    /// then no vectors are written.
    pub out: Option<PathBuf>,
    /// Draw the vectors' two principal components into this picture (PNG or SVG, by its name).
    pub plot: Option<PathBuf>,
    pub batch_size: usize,
    pub device: DeviceChoice,
}

/// Samples `encode --plot` draws when given no inputs.
pub const DEFAULT_PLOT_SAMPLES: usize = 2000;

/// Writes the encoder's vector for each input, and with `plot` draws them.
pub fn encode(request: &EncodeRequest) -> Result<()> {
    check_batch_size(request.batch_size)?;
    if request.format == EncodeFormat::Npy && request.out.is_none() {
        bail!("--format npy writes a binary file: name it with --out FILE.npy");
    }
    if request.source.is_none() && request.samples < 2 {
        bail!("--samples must be at least 2: a principal component needs two vectors to spread");
    }
    if let Some(path) = &request.plot {
        // Refused before the encoding, which can take a while, rather than after it.
        plot::ImageFormat::of(path).context("--plot")?;
    }
    let device = request.device.resolve()?;
    let loaded = checkpoint::load(&request.model_dir, device)?;
    let task = &loaded.config.task;
    let inputs = match &request.source {
        Some(source) => Inputs::Lines(source.clone()),
        None => Inputs::Samples(fresh_samples(task, loaded.config.training.seed, request.samples)?),
    };
    let encoder = Encoder { model: &loaded.model, task, device, batch_size: request.batch_size };
    let mut kept = request.plot.as_ref().map(|_| KeptVectors::default());
    let summary = match (&request.out, request.format, &mut kept) {
        (Some(path), EncodeFormat::Npy, keep) => encoder.write_npy(&inputs, path, &mut io::stderr(), keep.as_mut())?,
        (Some(path), EncodeFormat::Csv, keep) => {
            let mut summary = InputSummary::default();
            checkpoint::write_atomically(path, |temporary| {
                let mut file = BufWriter::new(std::fs::File::create(temporary)?);
                summary = encoder.write_csv(&inputs, &mut file, &mut io::stderr(), keep.as_mut())?;
                file.flush()?;
                Ok(())
            })?;
            summary
        }
        (None, _, Some(keep)) => encoder.collect(&inputs, &mut io::stderr(), keep)?,
        (None, _, None) => {
            let mut out = BufWriter::new(Stdout::lock());
            let summary = encoder.write_csv(&inputs, &mut out, &mut io::stderr(), None)?;
            out.flush()?;
            summary
        }
    };
    if let (Some(path), Some(kept)) = (&request.plot, &kept) {
        draw_encodings(task, kept, path)?;
        output::note(format!("Drew the vectors of {} inputs into {}", kept.values().len(), path.display()));
    }
    fail_on_rejections(&summary)
}

/// The first `samples` samples of the evaluation stream of `seed` (a model of pairs: of its
/// held-out part): inputs the model never trained on.
fn fresh_samples(task: &Task, seed: u64, samples: usize) -> Result<Arc<dyn SampleSource>> {
    let source: Arc<dyn SampleSource> = match task {
        Task::Pairs(problem) => {
            let pairs = load::reload(problem, seed)?;
            Arc::new(PairSource::new(problem, pairs.validation, None).first(samples))
        }
        Task::Autoencoder(problem) if problem.data.is_some() => {
            let file = sequences::reload(problem, seed)?;
            Arc::new(SequenceSource::new(problem, file.validation, None).first(samples))
        }
        _ => Arc::new(Generated::new(task, seed, Stream::Evaluation, samples)?),
    };
    Ok(source)
}

/// A scatter of the kept vectors' first two principal components, coloured by each input's value.
fn draw_encodings(task: &Task, kept: &KeptVectors, path: &Path) -> Result<()> {
    let Some(vectors) = kept.matrix().filter(|matrix| matrix.size()[0] >= 2) else {
        bail!("--plot needs at least 2 inputs to find principal components; got {}", kept.values().len());
    };
    let (points, explained) = pca::project_2d(&vectors)?;
    let axis = |number: usize| format!("PC{number} ({:.0}% of variance)", 100.0 * explained[number - 1]);
    let colour_label = match task {
        Task::Arithmetic(_) => "value of the expression",
        Task::Autoencoder(_) => "mean of the sequence",
        Task::Pairs(_) => "length of the source in tokens",
    };
    let title = format!("Encoder vectors of {} inputs", points.len());
    plot::scatter(&points, kept.values(), &title, &axis(1), &axis(2), colour_label, path)
}

/// Everything `plot` needs.
#[derive(Debug, Clone)]
pub struct PlotRequest {
    pub model_dir: PathBuf,
    /// Default: `learning_curve.png` in the model directory.
    pub out: Option<PathBuf>,
}

/// What `plot` drew.
#[derive(Debug, Serialize)]
pub struct PlotReport {
    /// Rows of the metrics log drawn.
    pub reports: usize,
    pub metrics: PathBuf,
    pub picture: PathBuf,
}

impl Report for PlotReport {
    fn text(&self) -> String {
        format!("Drew {} reports of {} into {}", self.reports, self.metrics.display(), self.picture.display())
    }
}

/// Draws the learning curve of a model directory's `metrics.csv`.
pub fn plot(request: &PlotRequest) -> Result<PlotReport> {
    let config = checkpoint::read_model_dir_config(&request.model_dir)?;
    let metrics_path = request.model_dir.join(METRICS_FILE);
    if !metrics_path.exists() {
        bail!("{} does not exist: the model was trained before train wrote it", metrics_path.display());
    }
    let rows = read_metrics(&metrics_path)?;
    let out = request.out.clone().unwrap_or_else(|| request.model_dir.join(LEARNING_CURVE_FILE));
    let title = format!("Learning curve: {}", config.task.describe());
    plot::learning_curve(&rows, &title, &out)?;
    Ok(PlotReport { reports: rows.len(), metrics: metrics_path, picture: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Features;

    #[test]
    fn evaluation_batches_shrink_only_for_large_outputs() {
        let reference = crate::nn::model::REFERENCE_SHAPE;
        assert_eq!(evaluation_batch_size(&reference), EVALUATION_BATCH_SIZE);
        let words = ModelShape { output: Features::Classes(30_002), output_len: 11, ..reference };
        assert_eq!(evaluation_batch_size(&words), (1 << 25) / (11 * 30_002));
        let enormous = ModelShape { output: Features::Classes(1 << 26), ..reference };
        assert_eq!(evaluation_batch_size(&enormous), 1);
    }
}
