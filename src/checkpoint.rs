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
use crate::evaluate::Metrics;
use crate::model::{ModelConfig, ModelShape, Seq2Seq};
use crate::problem::ProblemConfig;
use crate::train::TrainConfig;
use crate::vocab::Alphabet;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Bumped whenever `config.json` changes meaning; loading refuses versions it does not know.
pub const FORMAT_VERSION: u32 = 1;

/// Everything `config.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub format_version: u32,
    pub problem: ProblemConfig,
    /// Symbols in class-index order.
    pub alphabet: String,
    pub input_len: usize,
    pub output_len: usize,
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub trained_on: String,
    pub training_seconds: f64,
    /// Scores on fresh samples after training (evaluation stream of `training.seed`).
    pub metrics: Metrics,
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
        ModelShape { n_chars: self.alphabet.chars().count(), input_len: self.input_len, output_len: self.output_len }
    }
}

/// A model read back from its directory, ready for evaluation or prediction.
pub struct LoadedModel {
    pub config: SavedConfig,
    pub alphabet: Alphabet,
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
    let alphabet =
        Alphabet::from_symbols(&config.alphabet).with_context(|| format!("{}: bad alphabet", config_path.display()))?;
    check_consistent(&config, &alphabet).with_context(|| format!("{} is inconsistent", config_path.display()))?;

    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Seq2Seq::new(&vs.root(), &config.model, config.shape());
    let weights_path = dir.join(WEIGHTS_FILE);
    load_weights(&vs, &weights_path).with_context(|| format!("{}", weights_path.display()))?;
    vs.set_device(device);
    Ok(LoadedModel { config, alphabet, model, vs })
}

fn read_config(path: &Path) -> Result<SavedConfig> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("{} is missing: not a model directory", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    match value.get("format_version").and_then(serde_json::Value::as_u64) {
        Some(version) if version == u64::from(FORMAT_VERSION) => {}
        Some(version) => {
            bail!("{} has format version {version}; this seq2seq reads version {FORMAT_VERSION}", path.display())
        }
        None => bail!("{} has no format_version: not a seq2seq model config", path.display()),
    }
    serde_json::from_value(value).with_context(|| format!("{} does not describe a model", path.display()))
}

/// The config's parts must agree: alphabet and lengths follow from the problem.
fn check_consistent(config: &SavedConfig, alphabet: &Alphabet) -> Result<()> {
    config.problem.validate()?;
    config.model.validate()?;
    if *alphabet != Alphabet::addition() {
        bail!("alphabet {:?} is not the addition problem's {:?}", config.alphabet, Alphabet::addition().as_string());
    }
    let (input_len, output_len) = (config.problem.input_len(), config.problem.output_len());
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
