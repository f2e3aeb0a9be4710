//! The model directory: `config.json` (enough to rebuild the model) beside `model.safetensors`
//! (the VarStore's weights). Both are written atomically and checked against each other on load.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::device::LIBTORCH_VERSION;
use crate::evaluate::Evaluation;
use crate::model::{ModelConfig, ModelShape, Seq2Seq};
use crate::problem::Task;
use crate::train::TrainConfig;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Bumped whenever `config.json` changes meaning; loading refuses versions it does not know.
/// Version 1 (addition only, `problem: {n_terms, largest}`) is still read.
pub const FORMAT_VERSION: u32 = 2;

/// Everything `config.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub format_version: u32,
    pub task: Task,
    /// Symbols in class-index order, for character tasks (recorded for readers; it follows
    /// from the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<String>,
    pub input_len: usize,
    pub output_len: usize,
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub trained_on: String,
    pub training_seconds: f64,
    /// Scores on fresh samples after training (evaluation stream of `training.seed`).
    pub metrics: Evaluation,
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
    pub vs: nn::VarStore,
}

/// The directory a training run writes to: `out` when given (new, empty, or holding a model
/// that will be replaced), else a fresh `runs/run-NNN`.
pub fn prepare_output_dir(out: Option<&Path>) -> Result<PathBuf> {
    let Some(out) = out else {
        fs::create_dir_all("runs").context("cannot create the directory runs/")?;
        for number in 1.. {
            let candidate = PathBuf::from(format!("runs/run-{number:03}"));
            match fs::create_dir(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", candidate.display())),
            }
        }
        unreachable!("some run number is free")
    };
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {} exists and is not a directory", out.display());
        }
        let is_empty = fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.next().is_none();
        if !is_empty && !out.join(CONFIG_FILE).exists() {
            bail!("--out {} is not empty and holds no model ({CONFIG_FILE}); choose a new directory", out.display());
        }
    } else {
        fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    Ok(out.to_owned())
}

/// Writes the weights, then the config, each through a temporary file and a rename.
pub fn save(dir: &Path, config: &SavedConfig, vs: &nn::VarStore) -> Result<()> {
    let variables: BTreeMap<String, Tensor> =
        vs.variables().into_iter().map(|(name, tensor)| (name, tensor.to_device(Device::Cpu))).collect();
    let named: Vec<(&String, &Tensor)> = variables.iter().collect();
    let weights_path = dir.join(WEIGHTS_FILE);
    write_atomically(&weights_path, |temporary| {
        Tensor::write_safetensors(&named, temporary).map_err(anyhow::Error::from)
    })?;
    let json = serde_json::to_string_pretty(config).context("cannot serialise the model config")?;
    write_atomically(&dir.join(CONFIG_FILE), |temporary| {
        fs::write(temporary, format!("{json}\n")).map_err(anyhow::Error::from)
    })
}

/// Runs `write` on a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`: a crash leaves the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&temporary)
        .and_then(|()| {
            let file = File::open(&temporary)?;
            file.sync_all()?;
            fs::rename(&temporary, path)?;
            // Make the rename itself durable.
            File::open(dir)?.sync_all()?;
            Ok(())
        })
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Reads a model directory, checks the config against itself and the weights against the
/// config, and places the model on `device`.
pub fn load(dir: &Path, device: Device) -> Result<LoadedModel> {
    if !dir.exists() {
        bail!("model directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory: --model takes the directory that `train` wrote", dir.display());
    }
    let config_path = dir.join(CONFIG_FILE);
    let config = read_config(&config_path)?;
    check_consistent(&config).with_context(|| format!("{} is inconsistent", config_path.display()))?;

    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new(&vs.root(), &config.model, config.shape());
    let weights_path = dir.join(WEIGHTS_FILE);
    load_weights(&vs, &weights_path).with_context(|| format!("{}", weights_path.display()))?;
    vs.set_device(device);
    Ok(LoadedModel { config, model, vs })
}

fn read_config(path: &Path) -> Result<SavedConfig> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("{} is missing: not a model directory", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
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
    serde_json::from_value(value).with_context(|| format!("{} does not describe a model", path.display()))
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

/// The config's parts must agree: alphabet and lengths follow from the task.
fn check_consistent(config: &SavedConfig) -> Result<()> {
    config.task.validate()?;
    config.model.validate()?;
    let alphabet = config.task.alphabet().map(|a| a.as_string());
    if config.alphabet != alphabet {
        bail!("alphabet {:?} does not follow from the task ({:?})", config.alphabet, alphabet);
    }
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

/// Copies the file's tensors into `vs` after checking names, shapes and dtypes one by one
/// (a plain copy would silently broadcast a wrong shape).
fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("missing: the model directory has no weights");
    }
    let stored: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| anyhow::anyhow!("not a readable safetensors file ({e})"))?
        .into_iter()
        .collect();
    let mut expected = vs.variables();
    for name in stored.keys() {
        if !expected.contains_key(name) {
            bail!("holds tensor {name:?}, which this model (per config.json) does not have");
        }
    }
    tch::no_grad(|| {
        for (name, variable) in expected.iter_mut() {
            let Some(tensor) = stored.get(name) else {
                bail!("has no tensor {name:?}; config.json describes a different model");
            };
            if tensor.size() != variable.size() {
                bail!("tensor {name:?} has shape {:?}, but config.json implies {:?}", tensor.size(), variable.size());
            }
            if tensor.kind() != Kind::Float {
                bail!("tensor {name:?} is {:?}, expected float32", tensor.kind());
            }
            variable.copy_(tensor);
        }
        Ok(())
    })
}
