//! The model directory: `config.json` (enough to rebuild the model) beside `model.safetensors`
//! (the VarStore's weights). Both are written atomically and checked against each other on load.
//! A checkpoint of an unfinished run adds `training_state.safetensors`: the weights, Adam's state
//! and the position in the sample stream, in one file, so that resuming never mixes two moments.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::evaluate::Evaluation;
use crate::nn::device::{LIBTORCH_VERSION, dtype_name};
use crate::nn::model::{ModelConfig, ModelShape, Seq2Seq};
use crate::nn::optim::Adam;
use crate::store::files::{self, check_safetensors, read_text};
use crate::store::lock::{DirLock, lock_dir};
use crate::task::Task;
use crate::task::vocab::Alphabet;
use crate::train::{Position, TrainConfig};

pub use crate::store::files::write_atomically;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TRAINING_STATE_FILE: &str = "training_state.safetensors";
/// Names in the training state: `model.<variable>`, Adam's `adam.*`, and the position.
const STATE_WEIGHTS_PREFIX: &str = "model.";
const STATE_EPOCH: &str = "position.epoch";
const STATE_STEP: &str = "position.step";
/// The settings of the run that wrote the training state, as JSON bytes: a resume refuses a
/// config.json edited since (see [`run_settings`]).
const STATE_SETTINGS: &str = "run.settings";
/// The run's id, as UTF-8 bytes: a training state copied in from another run is refused.
const STATE_RUN_ID: &str = "run.id";
/// With `--restore-best`: the weights of the best validation row so far (`best_model.<variable>`)
/// and the samples seen at that row.
const STATE_BEST_PREFIX: &str = "best_model.";
const STATE_BEST_AT: &str = "best_row.samples_seen";
/// Largest config.json read (a few kilobytes in practice).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The files a model directory holds, which `train --overwrite` replaces.
pub const MODEL_FILES: [&str; 3] = [CONFIG_FILE, TRAINING_STATE_FILE, WEIGHTS_FILE];
/// What `train --overwrite` sets aside (renamed with [`SET_ASIDE_SUFFIX`]) until the new run
/// first saves, so that a run that fails before then gives the old model back: the model's
/// files, its metrics.csv and `plot`'s picture of it. Other files are the user's, and stay.
fn set_aside_files() -> impl Iterator<Item = &'static str> {
    use crate::store::metrics_log::{LEARNING_CURVE_FILE, METRICS_FILE};
    MODEL_FILES.into_iter().chain([METRICS_FILE, LEARNING_CURVE_FILE])
}
const SET_ASIDE_SUFFIX: &str = ".replaced";
/// Bumped whenever `config.json` changes meaning; loading refuses versions it does not know.
/// Version 1 (addition only, `problem: {n_terms, largest}`) is still read.
pub const FORMAT_VERSION: u32 = 2;

/// Everything `config.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub format_version: u32,
    pub task: Task,
    /// Symbols in class-index order, for arithmetic: the source of truth for its class
    /// indices once saved (a model of pairs keeps its vocabularies in the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<String>,
    pub input_len: usize,
    pub output_len: usize,
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub trained_on: String,
    pub training_seconds: f64,
    /// Of `training_seconds`, the time spent scoring the validation rows of `metrics.csv`
    /// (0 in directories written before it was recorded).
    #[serde(default)]
    pub validation_seconds: f64,
    /// Scores on fresh samples after training (evaluation stream of `training.seed`); a
    /// checkpoint has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Evaluation>,
    /// Where an unfinished run stopped; `None` once training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Position>,
    /// The samples seen when early stopping (`training.patience`) ended the run; `None` for a
    /// run that trained to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early_after: Option<usize>,
    /// With `training.restore_best`: the samples seen at the validation row whose weights the
    /// finished model holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_best_after: Option<u64>,
    /// Names one training run (drawn when it starts): a checkpoint's training state must carry
    /// the same id. Absent in directories written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub versions: Versions,
}

/// The software that wrote a model directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub seq2seq: String,
    pub libtorch: String,
}

impl Versions {
    pub fn current() -> Self {
        Self { seq2seq: env!("CARGO_PKG_VERSION").to_owned(), libtorch: LIBTORCH_VERSION.to_owned() }
    }
}

impl SavedConfig {
    pub fn shape(&self) -> ModelShape {
        ModelShape::for_task(&self.task)
    }
}

/// A model read back from its directory, ready for evaluation or prediction.
pub struct LoadedModel {
    pub config: SavedConfig,
    pub model: Seq2Seq,
}

/// A fresh run id: random, so that two runs of the same settings are told apart.
pub fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A training run's output directory, locked for the run.
pub struct OutputDir {
    pub path: PathBuf,
    pub lock: DirLock,
    /// Whether the run made the directory: it is removed again if the run saves nothing.
    pub made: bool,
}

/// The directory a training run writes to, locked for the run: `out` when given (new, empty,
/// or with `overwrite` holding a model or checkpoint, whose files are removed first), else a
/// fresh `runs/run-NNN`.
pub fn prepare_output_dir(out: Option<&Path>, overwrite: bool) -> Result<OutputDir> {
    let Some(out) = out else {
        fs::create_dir_all("runs").context("cannot create the directory runs/")?;
        for number in 1.. {
            let candidate = PathBuf::from(format!("runs/run-{number:03}"));
            match fs::create_dir(&candidate) {
                Ok(()) => {
                    let lock = lock_dir(&candidate, "seq2seq train")?;
                    return Ok(OutputDir { path: candidate, lock, made: true });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", candidate.display())),
            }
        }
        unreachable!("some run number is free")
    };
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    // A directory of other things is left untouched, not even locked; one that holds a model
    // may hold the user's files beside it (predictions, notes), which --overwrite keeps.
    let holds_run = |name: &&str| out.join(name).exists() || out.join(set_aside_name(name)).exists();
    if out.is_dir() && !MODEL_FILES.iter().any(holds_run) {
        let ours: Vec<String> = set_aside_files()
            .flat_map(|name| [name.to_string(), set_aside_name(name)])
            .chain([crate::store::lock::LOCK_FILE.to_owned()])
            .collect();
        let entries = fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        let foreign = entries.filter_map(|entry| entry.ok()).map(|entry| entry.file_name()).find(|name| {
            let name = name.to_string_lossy();
            !ours.iter().any(|ours| *ours == name) && !files::is_temporary_name(&name)
        });
        if let Some(name) = foreign {
            bail!(
                "--out {} is not empty (it holds {}) and holds no model ({CONFIG_FILE}); choose a new directory",
                out.display(),
                name.to_string_lossy()
            );
        }
    }
    let made = !out.exists();
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Looked at only under the lock: another run may be writing it.
    let lock = lock_dir(out, "seq2seq train")?;
    clear_stale_temporaries(out)?;
    let holds = |name: &str| out.join(name).exists();
    let holds_set_aside = MODEL_FILES.iter().any(|name| holds(&set_aside_name(name)));
    let holds_model = MODEL_FILES.iter().any(|name| holds(name));
    if !overwrite && holds_set_aside && !holds_model {
        bail!(
            "--out {} holds a model that an interrupted `train --overwrite` set aside (its files end in \
             {SET_ASIDE_SUFFIX}): rename them back to keep it, or add --overwrite to replace it",
            out.display()
        );
    }
    if holds_model {
        if !overwrite {
            if !holds(CONFIG_FILE) {
                bail!(
                    "--out {} holds a run's weights or training state but no {CONFIG_FILE} (a run stopped while \
                     writing its first checkpoint, or a damaged directory): nothing there can be resumed; add \
                     --overwrite to start afresh",
                    out.display()
                );
            }
            let is_checkpoint = holds(TRAINING_STATE_FILE)
                || read_model_dir_config(out).is_ok_and(|config| config.checkpoint.is_some());
            if is_checkpoint {
                bail!(
                    "--out {} holds the checkpoint of an unfinished run: continue it with `seq2seq train --resume {}`, \
                     or add --overwrite to discard it and start afresh",
                    out.display(),
                    out.display()
                );
            }
            bail!(
                "--out {} already holds a trained model: choose another directory, or add --overwrite to replace it",
                out.display()
            );
        }
        // Set aside, not removed: the old model is deleted at the new run's first save.
        for name in set_aside_files().filter(|name| holds(name)) {
            let (from, to) = (out.join(name), out.join(set_aside_name(name)));
            fs::rename(&from, &to).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(OutputDir { path: out.to_owned(), lock, made })
}

/// The name of a file that `train --overwrite` set aside.
fn set_aside_name(name: &str) -> String {
    format!("{name}{SET_ASIDE_SUFFIX}")
}

/// Deletes what `train --overwrite` set aside in `dir`, once the new run has saved. Best
/// effort: the new model is saved; a file left is only named on standard error.
fn discard_set_aside(dir: &Path) {
    for name in set_aside_files() {
        let path = dir.join(set_aside_name(name));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                crate::output::note(format!("Could not remove {}, which the new model replaces: {e}", path.display()))
            }
            _ => {}
        }
    }
}

/// Clears what a run that failed before saving anything (no config.json) left in `dir`: its
/// metrics.csv, and the directory itself when the run made it (`made`), so that no stub is
/// mistaken for a model; what `train --overwrite` set aside is put back. Best effort: the
/// run's own error is what the user needs to read.
pub fn remove_unsaved_run(dir: &Path, made: bool) {
    if dir.join(CONFIG_FILE).exists() {
        return;
    }
    let _ = fs::remove_file(dir.join(crate::store::metrics_log::METRICS_FILE));
    for name in set_aside_files() {
        let _ = fs::rename(dir.join(set_aside_name(name)), dir.join(name));
    }
    if made {
        // Fails, leaving it, if anything else is in it.
        let _ = fs::remove_dir(dir);
    }
}

/// Removes what writers killed mid-write left in `dir`, saying so on standard error.
pub fn clear_stale_temporaries(dir: &Path) -> Result<()> {
    for name in files::remove_stale_temporaries(dir)? {
        crate::output::note(format!(
            "Removed {name}, left in {} by a process that was stopped while writing",
            dir.display()
        ));
    }
    Ok(())
}

/// Locks the checkpoint directory `dir` for `train --resume`.
pub fn lock_for_resume(dir: &Path) -> Result<DirLock> {
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory: --resume takes the directory of an interrupted run", dir.display());
    }
    let lock = lock_dir(dir, "seq2seq train --resume")?;
    clear_stale_temporaries(dir)?;
    Ok(lock)
}

/// Saves a finished model: the weights, then the config, each through a temporary file and a
/// rename; then removes the training state of any earlier checkpoint (there is nothing to resume).
pub fn save(dir: &Path, config: &SavedConfig, vs: &nn::VarStore) -> Result<()> {
    save_model(dir, config, vs)?;
    let state_path = dir.join(TRAINING_STATE_FILE);
    match fs::remove_file(&state_path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", state_path.display()))
        }
        _ => Ok(()),
    }
}

fn save_model(dir: &Path, config: &SavedConfig, vs: &nn::VarStore) -> Result<()> {
    let variables = cpu_variables(vs, "");
    write_safetensors(&dir.join(WEIGHTS_FILE), &variables)?;
    save_config(dir, config)?;
    discard_set_aside(dir);
    Ok(())
}

/// Replaces `config.json` alone: for a saved model whose weights are already on disk (the final
/// figures, added after the evaluation).
pub fn save_config(dir: &Path, config: &SavedConfig) -> Result<()> {
    let json = serde_json::to_string_pretty(config).context("cannot serialise the model config")?;
    write_atomically(&dir.join(CONFIG_FILE), |temporary| {
        fs::write(temporary, format!("{json}\n")).map_err(anyhow::Error::from)
    })
}

/// The VarStore's variables on the CPU, names prefixed with `prefix`.
fn cpu_variables(vs: &nn::VarStore, prefix: &str) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, tensor)| (format!("{prefix}{name}"), tensor.to_device(Device::Cpu)))
        .collect()
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    write_atomically(path, |temporary| Tensor::write_safetensors(&named, temporary).map_err(plain_tch_error))
}

/// tch's errors, with an I/O failure told in plain words (its own message shows Rust's
/// `IoError(Os { .. })`).
fn plain_tch_error(error: tch::TchError) -> anyhow::Error {
    match error {
        tch::TchError::SafeTensorError { err: safetensors::SafeTensorError::IoError(io), .. }
        | tch::TchError::Io(io) => {
            anyhow::anyhow!("{}", crate::output::plain_io_message(&io))
        }
        other => other.into(),
    }
}

/// Saves a checkpoint of an unfinished run at `position`: the training state first (one file
/// holding everything resume needs), then the weights and config as for a finished model, so
/// that `evaluate` and `predict` work on a checkpoint too. Each file is replaced atomically: a
/// crash at any moment leaves every file whole, from this checkpoint or the one before.
pub fn save_checkpoint(
    dir: &Path,
    config: &SavedConfig,
    vs: &nn::VarStore,
    optimizer: &Adam,
    position: Position,
    best: Option<&BestWeights>,
) -> Result<()> {
    let mut state = cpu_variables(vs, STATE_WEIGHTS_PREFIX);
    state.extend(optimizer.state());
    if let Some(best) = best {
        for (name, tensor) in &best.weights {
            state.insert(format!("{STATE_BEST_PREFIX}{name}"), tensor.to_device(Device::Cpu));
        }
        let at = i64::try_from(best.samples_seen).context("position beyond 2^63")?;
        state.insert(STATE_BEST_AT.to_owned(), Tensor::from_slice(&[at]).reshape([]));
    }
    for (name, value) in [(STATE_EPOCH, position.epoch), (STATE_STEP, position.step)] {
        let value = i64::try_from(value).context("position beyond 2^63")?;
        state.insert(name.to_owned(), Tensor::from_slice(&[value]).reshape([]));
    }
    let settings = serde_json::to_vec(&run_settings(config)).context("cannot serialise the run's settings")?;
    state.insert(STATE_SETTINGS.to_owned(), Tensor::from_slice(&settings));
    if let Some(run_id) = &config.run_id {
        state.insert(STATE_RUN_ID.to_owned(), Tensor::from_slice(run_id.as_bytes()));
    }
    write_safetensors(&dir.join(TRAINING_STATE_FILE), &state)?;
    save_model(dir, config, vs)
}

/// A checkpoint read back for resuming: its config, and the model and optimiser restored to the
/// moment the training state was written, on `device`.
pub struct Checkpoint {
    pub config: SavedConfig,
    pub model: Seq2Seq,
    pub vs: nn::VarStore,
    pub optimizer: Adam,
    pub position: Position,
    /// The best validation row's weights, where the run keeps them (`--restore-best`) and had
    /// a validation row.
    pub best: Option<BestWeights>,
}

/// A copy of a model's weights at one validation row, kept for `--restore-best`.
#[derive(Debug)]
pub struct BestWeights {
    /// Samples seen at the row.
    pub samples_seen: u64,
    weights: BTreeMap<String, Tensor>,
}

impl BestWeights {
    /// A copy of the weights of `vs` now, on their device.
    pub fn of(vs: &nn::VarStore, samples_seen: u64) -> Self {
        let weights =
            tch::no_grad(|| vs.variables().into_iter().map(|(name, tensor)| (name, tensor.detach().copy())).collect());
        Self { samples_seen, weights }
    }

    /// Puts these weights back into `vs`.
    pub fn restore_into(&self, vs: &nn::VarStore) -> Result<()> {
        copy_weights(vs, &self.weights)
    }
}

/// Reads the checkpoint in `dir` for `train --resume`.
pub fn load_checkpoint(dir: &Path, device: Device) -> Result<Checkpoint> {
    let config = read_model_dir_config(dir)?;
    if config.checkpoint.is_none() {
        bail!("{} holds a finished model, not a checkpoint: there is nothing to resume", dir.display());
    }
    let state_path = dir.join(TRAINING_STATE_FILE);
    let context = || format!("{}", state_path.display());
    if !state_path.exists() {
        bail!("{} is missing: the checkpoint cannot be resumed", state_path.display());
    }
    let stored = read_safetensors(&state_path)?;
    check_same_run(&config, &stored)
        .with_context(|| format!("{} does not continue the run that config.json describes", state_path.display()))?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new(&vs.root(), &config.model, config.shape());
    let weights: BTreeMap<String, Tensor> = stored
        .iter()
        .filter_map(|(name, t)| name.strip_prefix(STATE_WEIGHTS_PREFIX).map(|n| (n.to_owned(), t.shallow_clone())))
        .collect();
    copy_weights(&vs, &weights).with_context(context)?;
    model.place(&mut vs, device);
    let mut optimizer = Adam::new(&vs, config.training.learning_rate).with_betas(config.training.adam_betas);
    optimizer.load_state(&stored).with_context(context)?;
    let best_weights: BTreeMap<String, Tensor> = stored
        .iter()
        .filter_map(|(name, t)| name.strip_prefix(STATE_BEST_PREFIX).map(|n| (n.to_owned(), t.to_device(device))))
        .collect();
    let best = match (stored.get(STATE_BEST_AT), best_weights.is_empty()) {
        (None, true) => None,
        (Some(at), false) => {
            check_weights(&vs, &best_weights).with_context(|| format!("{}: the best row's weights", context()))?;
            let samples_seen = u64::try_from(at.f_int64_value(&[])?).with_context(context)?;
            Some(BestWeights { samples_seen, weights: best_weights })
        }
        _ => bail!("{}: the best row's weights are incomplete", state_path.display()),
    };
    let read_position = |name: &str| -> Result<usize> {
        let value = stored.get(name).map(|t| t.f_int64_value(&[])).transpose()?;
        let value = value.with_context(|| format!("{}: no {name}", state_path.display()))?;
        usize::try_from(value).with_context(|| format!("{}: {name} is {value}", state_path.display()))
    };
    let position = Position { epoch: read_position(STATE_EPOCH)?, step: read_position(STATE_STEP)? };
    let steps_per_epoch = config.training.samples.div_ceil(config.training.batch_size);
    if position.epoch >= config.training.epochs || position.step > steps_per_epoch {
        bail!(
            "{}: the position (epoch {}, step {}) lies outside the run ({} epoch(s) of {steps_per_epoch} steps)",
            state_path.display(),
            position.epoch + 1,
            position.step,
            config.training.epochs
        );
    }
    Ok(Checkpoint { config, model, vs, optimizer, position, best })
}

/// The settings a resumed run must share with the run that wrote its training state: all of
/// config.json's task, model and training, but the four that `--resume` may change.
pub fn run_settings(config: &SavedConfig) -> serde_json::Value {
    let mut training = serde_json::to_value(&config.training).unwrap_or_default();
    if let Some(training) = training.as_object_mut() {
        for changeable in ["checkpoint_every", "checkpoint_minutes", "evaluation_samples", "log_every"] {
            training.remove(changeable);
        }
    }
    serde_json::json!({
        "task": config.task,
        "model": config.model,
        "training": training,
    })
}

/// Refuses a training state written by another run, or with other settings, than config.json's.
fn check_same_run(config: &SavedConfig, stored: &BTreeMap<String, Tensor>) -> Result<()> {
    let bytes = |name: &str| -> Result<Option<Vec<u8>>> {
        stored
            .get(name)
            .map(|tensor| {
                Vec::<u8>::try_from(tensor.flatten(0, -1)).with_context(|| format!("{name} is not a byte string"))
            })
            .transpose()
    };
    let state_run_id = bytes(STATE_RUN_ID)?.map(|id| String::from_utf8_lossy(&id).into_owned());
    if state_run_id != config.run_id {
        bail!(
            "it was written by run {}, and config.json belongs to run {} (was it copied from another run?)",
            state_run_id.as_deref().unwrap_or("(no id)"),
            config.run_id.as_deref().unwrap_or("(no id)")
        );
    }
    // Training states written before the settings were recorded carry none.
    let Some(settings) = bytes(STATE_SETTINGS)? else { return Ok(()) };
    let recorded: serde_json::Value =
        serde_json::from_slice(&settings).context("its record of the run's settings is not JSON")?;
    let current = run_settings(config);
    let differences = differing_settings(&recorded, &current, "");
    if !differences.is_empty() {
        bail!("config.json was edited since the checkpoint: {}", differences.join("; "));
    }
    Ok(())
}

/// `name: A in the training state, B in config.json` for each leaf that differs.
fn differing_settings(recorded: &serde_json::Value, current: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    match (recorded, current) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|key| {
                    let name = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    differing_settings(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &name)
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{path} is {b} in config.json but was {a} when the run started")],
    }
}

/// A safetensors file's tensors, after checking that it is a regular file whose header fits.
fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    check_safetensors(path)?;
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file ({})", path.display(), plain_tch_error(e)))?
        .into_iter()
        .collect())
}

/// Reads a model directory, checks the config against itself and the weights against the
/// config, and places the model on `device`.
pub fn load(dir: &Path, device: Device) -> Result<LoadedModel> {
    let config = read_model_dir_config(dir)?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new(&vs.root(), &config.model, config.shape());
    let weights_path = dir.join(WEIGHTS_FILE);
    load_weights(&vs, &weights_path)?;
    model.place(&mut vs, device);
    Ok(LoadedModel { config, model })
}

/// The checked config of the model directory `dir`, without its weights.
pub fn read_model_dir_config(dir: &Path) -> Result<SavedConfig> {
    if !dir.exists() {
        bail!("model directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory: --model takes the directory that `train` wrote", dir.display());
    }
    let config_path = dir.join(CONFIG_FILE);
    let mut config = read_config(&config_path)?;
    adopt_alphabet(&mut config)
        .and_then(|()| check_consistent(&config))
        .with_context(|| format!("{} is inconsistent", config_path.display()))?;
    Ok(config)
}

/// Hands the alphabet that `config.json` records to an arithmetic task, whose class indices it
/// then decides; the task's validation checks that it holds every symbol the problem needs.
fn adopt_alphabet(config: &mut SavedConfig) -> Result<()> {
    match (&mut config.task, &config.alphabet) {
        (Task::Arithmetic(problem), Some(symbols)) => problem.alphabet = Some(Alphabet::from_symbols(symbols)?),
        (Task::Arithmetic(_), None) => bail!("it records no alphabet, which an arithmetic model needs"),
        (task, Some(_)) => bail!("it records an alphabet, which {} does not have", task.model_kind()),
        (_, None) => {}
    }
    Ok(())
}

fn read_config(path: &Path) -> Result<SavedConfig> {
    if !path.exists() && fs::symlink_metadata(path).is_err() {
        let set_aside = path.with_file_name(set_aside_name(CONFIG_FILE));
        if set_aside.exists() {
            bail!(
                "{} is missing, but {} is there: a `train --overwrite` was stopped before its first save; \
                 rename the files ending in {SET_ASIDE_SUFFIX} back to use the old model",
                path.display(),
                set_aside.display()
            );
        }
        // config.json is missing, so any of the model's files means a run wrote the others.
        if MODEL_FILES.iter().any(|name| path.with_file_name(name).exists()) {
            bail!(
                "{} is missing beside the run's other files: the run was stopped while writing its first \
                 checkpoint (or the file was removed), so there is nothing to load or resume; train again \
                 with --overwrite",
                path.display()
            );
        }
        bail!("{} is missing: not a model directory", path.display());
    }
    let text = read_text(path, MAX_CONFIG_BYTES)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    match value.get("format_version").and_then(serde_json::Value::as_u64) {
        Some(version) if version == u64::from(FORMAT_VERSION) => {}
        Some(1) => upgrade_from_version_1(&mut value),
        Some(version) => {
            bail!("{} has format version {version}; this seq2seq reads version {FORMAT_VERSION}", path.display())
        }
        None => bail!("{} has no format_version: not a seq2seq model config", path.display()),
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        // "." is the whole document: there is no field to name.
        let field = match error.path().to_string() {
            root if root == "." => String::new(),
            field => format!("field {field}: "),
        };
        anyhow!("{} does not describe a model: {field}{}", path.display(), error.into_inner())
    })
}

/// Version 1 knew only addition: `problem: {n_terms, largest}` becomes an arithmetic task.
fn upgrade_from_version_1(value: &mut serde_json::Value) {
    let Some(object) = value.as_object_mut() else { return };
    if let Some(problem) = object.remove("problem") {
        let task = serde_json::json!({
            "kind": "arithmetic",
            "operators": "+",
            "min_terms": problem.get("n_terms"),
            "max_terms": problem.get("n_terms"),
            "largest": problem.get("largest"),
            "reverse": false,
        });
        object.insert("task".to_owned(), task);
    }
    object.insert("format_version".to_owned(), FORMAT_VERSION.into());
}

/// The config's parts must agree: the lengths follow from the task.
fn check_consistent(config: &SavedConfig) -> Result<()> {
    config.task.validate()?;
    config.model.validate()?;
    config.training.validate()?;
    config.model.check_memory(&config.shape(), None)?;
    let (input_len, output_len) = (config.task.input_len(), config.task.output_len());
    if (config.input_len, config.output_len) != (input_len, output_len) {
        bail!(
            "input/output lengths {}/{} do not follow from the problem ({input_len}/{output_len})",
            config.input_len,
            config.output_len
        );
    }
    Ok(())
}

/// Reads the weights file into `vs`.
fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{}: missing: the model directory has no weights", path.display());
    }
    copy_weights(vs, &read_safetensors(path)?).with_context(|| format!("{}", path.display()))
}

/// Copies `stored` into `vs` after [`check_weights`] (a plain copy would silently broadcast a
/// wrong shape).
fn copy_weights(vs: &nn::VarStore, stored: &BTreeMap<String, Tensor>) -> Result<()> {
    check_weights(vs, stored)?;
    tch::no_grad(|| {
        for (name, mut variable) in vs.variables() {
            variable.copy_(&stored[&name]);
        }
    });
    Ok(())
}

/// Checks that `stored` holds exactly the variables of `vs`, by name, shape and dtype.
fn check_weights(vs: &nn::VarStore, stored: &BTreeMap<String, Tensor>) -> Result<()> {
    let expected = vs.variables();
    for name in stored.keys() {
        if !expected.contains_key(name) {
            bail!("holds tensor {name:?}, which this model (per config.json) does not have");
        }
    }
    for (name, variable) in &expected {
        let Some(tensor) = stored.get(name) else {
            bail!("has no tensor {name:?}; config.json describes a different model");
        };
        if tensor.size() != variable.size() {
            bail!("tensor {name:?} has shape {:?}, but config.json implies {:?}", tensor.size(), variable.size());
        }
        if tensor.kind() != Kind::Float {
            bail!("tensor {name:?} is {}, expected float32", dtype_name(tensor.kind()));
        }
    }
    Ok(())
}
