//! Choosing where tensors live: `auto`, `cpu`, `cuda` or `cuda:N`, checked against libtorch.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Result, bail};
use tch::{Cuda, Device};

/// The libtorch this binary was built against (from build.rs).
pub const LIBTORCH_VERSION: &str = env!("SEQ2SEQ_LIBTORCH_VERSION");

/// A device as the user names it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA device when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("unknown device {text:?}: use auto, cpu, cuda or cuda:N");
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let index = text.strip_prefix("cuda:").ok_or_else(unknown)?;
                index.parse().map(Self::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceChoice {
    /// The device to use; asking for a CUDA device libtorch does not see is an error.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto if Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(index) => {
                let count = Cuda::device_count() as usize;
                if count == 0 {
                    bail!(
                        "CUDA device {self} was asked for, but libtorch {LIBTORCH_VERSION} sees no CUDA device on this machine; \
                         use --device cpu (or auto), and see `seq2seq info`"
                    );
                }
                if index >= count {
                    bail!(
                        "--device {self} was asked for, but this machine has {count} CUDA device(s): cuda:0..cuda:{}",
                        count - 1
                    );
                }
                Ok(Device::Cuda(index))
            }
        }
    }
}

/// A tensor element type as PyTorch names it (`float32`, `int64`), for messages.
pub fn dtype_name(kind: tch::Kind) -> String {
    use tch::Kind;
    let name = match kind {
        Kind::Uint8 => "uint8",
        Kind::Int8 => "int8",
        Kind::Int16 => "int16",
        Kind::Int => "int32",
        Kind::Int64 => "int64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Bool => "bool",
        other => return format!("{other:?}").to_lowercase(),
    };
    name.to_owned()
}

/// A device's name as the output and `config.json` show it.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        Device::Cpu => "cpu".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The environment variable that, set to `1`, makes the CPU run the model in float32 as a GPU
/// does: libtorch's `lstm` op with autograd, gradients copied into the optimiser's slots (and
/// no sharing of batches among threads). The tests run the end-to-end suite once through it.
pub const FORCE_AUTOGRAD_VARIABLE: &str = "SEQ2SEQ_FORCE_AUTOGRAD";

/// Whether [`FORCE_AUTOGRAD_VARIABLE`] is `1` (read once per process).
pub fn autograd_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os(FORCE_AUTOGRAD_VARIABLE).is_some_and(|value| value == "1"))
}

/// What `seq2seq info` reports: versions, CUDA availability, the device count, threads, and
/// whether [`FORCE_AUTOGRAD_VARIABLE`] is set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeInfo {
    pub seq2seq: &'static str,
    pub libtorch: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub cpu_threads: i32,
    /// The CPU runs libtorch's lstm op with autograd, as a GPU does ([`FORCE_AUTOGRAD_VARIABLE`]).
    pub autograd_forced: bool,
}

impl RuntimeInfo {
    pub fn now() -> Self {
        Self {
            seq2seq: env!("CARGO_PKG_VERSION"),
            libtorch: LIBTORCH_VERSION,
            cuda_available: Cuda::is_available(),
            cuda_devices: Cuda::device_count(),
            cudnn_available: Cuda::cudnn_is_available(),
            cpu_threads: tch::get_num_threads(),
            autograd_forced: autograd_forced(),
        }
    }

    /// One `name: value` line each, as `seq2seq info` prints them.
    pub fn describe(&self) -> String {
        let yes_no = |flag: bool| if flag { "yes" } else { "no" };
        let forced = if self.autograd_forced {
            format!("\n{FORCE_AUTOGRAD_VARIABLE}=1: the CPU runs libtorch's lstm op with autograd, as a GPU does")
        } else {
            String::new()
        };
        format!(
            "seq2seq {}\nlibtorch {}\ncuda available: {}\ncuda devices: {}\ncudnn available: {}\ncpu threads: {}",
            self.seq2seq,
            self.libtorch,
            yes_no(self.cuda_available),
            self.cuda_devices,
            yes_no(self.cudnn_available),
            self.cpu_threads,
        ) + &forced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            let error = bad.parse::<DeviceChoice>().expect_err(bad);
            assert!(error.contains("unknown device"), "{error}");
        }
    }

    #[test]
    fn cpu_always_resolves_and_missing_cuda_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve().ok(), Some(Device::Cpu));
        if !Cuda::is_available() {
            let error = DeviceChoice::Cuda(0).resolve().expect_err("no CUDA here");
            assert!(error.to_string().contains("sees no CUDA device"), "{error}");
            assert_eq!(DeviceChoice::Auto.resolve().ok(), Some(Device::Cpu));
        }
    }
}
