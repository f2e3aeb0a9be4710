//! Checks that `seq2seq::nn::optim::Adam` rounds exactly as `torch.optim.Adam` (default settings, CPU):
//! both run 30 steps on variables shaped like the reference model's, from the same values and
//! gradients (integer formulas, exact in float32), and every moment and weight must agree bit for bit.
//!
//! Needs a python3 that can import torch; with the PyTorch wheel that `scripts/libtorch.sh`
//! installs, it finds it beside $LIBTORCH.
//! Run: `source scripts/libtorch.sh && cargo run --release --example adam_vs_pytorch`

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use seq2seq::nn::optim::Adam;
use tch::{Device, Tensor, nn};

const SHAPES: [&[i64]; 8] = [&[300, 12], &[300, 75], &[300], &[200, 75], &[200, 50], &[200], &[12, 50], &[12]];
const STEPS: i64 = 30;

/// The same lines in Python: initial values (`salt` = variable index, scale 0.5) and the
/// gradient of variable `k` at step `s` (`salt` = 10 s + k, scale 0.01 (1 + s mod 3)).
const PYTHON: &str = r#"
import math, struct, sys, torch
torch.set_num_threads(1)
SHAPES = [(300, 12), (300, 75), (300,), (200, 75), (200, 50), (200,), (12, 50), (12,)]
def formula(n, salt, scale):
    return [(((i * 7919 + salt * 104729) % 2001) - 1000) / 1000.0 * scale for i in range(n)]
def tensor(shape, salt, scale):
    return torch.tensor(formula(math.prod(shape), salt, scale), dtype=torch.float32).view(shape)
variables = [tensor(s, k, 0.5).requires_grad_() for k, s in enumerate(SHAPES)]
optimizer = torch.optim.Adam(variables, lr=0.001)
for step in range(1, 31):
    optimizer.zero_grad()
    for k, (v, s) in enumerate(zip(variables, SHAPES)):
        v.grad = tensor(s, step * 10 + k, 0.01 * (1 + step % 3))
    optimizer.step()
for v in variables:
    state = optimizer.state[v]
    for t in (state["exp_avg"], state["exp_avg_sq"], v.detach()):
        sys.stdout.buffer.write(struct.pack(f"<{t.numel()}f", *t.flatten().tolist()))
"#;

fn formula(shape: &[i64], salt: i64, scale: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let values: Vec<f32> =
        (0..n).map(|i| ((((i * 7919 + salt * 104729) % 2001) - 1000) as f64 / 1000.0 * scale) as f32).collect();
    Tensor::from_slice(&values).view(shape)
}

/// Every moment and weight, in the order the Python script writes them.
fn ours() -> Result<Vec<(String, Vec<f32>)>> {
    let vs = nn::VarStore::new(Device::Cpu);
    // Names that sort in index order, so that the state lists them as Python does.
    let variables: Vec<Tensor> = SHAPES
        .iter()
        .enumerate()
        .map(|(k, shape)| vs.root().var_copy(&format!("v{k}"), &formula(shape, k as i64, 0.5)))
        .collect();
    let mut adam = Adam::new(&vs, 0.001);
    let mut slots: Vec<Tensor> = variables.iter().map(|variable| adam.gradient_slot(variable)).collect();
    for step in 1..=STEPS {
        // As `train` does: the gradients are written into the optimiser's buffer, then one step.
        for (k, (slot, shape)) in slots.iter_mut().zip(SHAPES).enumerate() {
            slot.copy_(&formula(shape, step * 10 + k as i64, 0.01 * (1 + step % 3) as f64));
        }
        adam.step_from_buffer();
    }
    let state = adam.state();
    let mut named = Vec::new();
    for (k, variable) in variables.iter().enumerate() {
        let moments = &state[1 + 2 * k..3 + 2 * k];
        for (name, tensor) in moments.iter().map(|(n, t)| (n.clone(), t)).chain([(format!("v{k}"), variable)]) {
            named.push((name, Vec::<f32>::try_from(&tensor.flatten(0, -1))?));
        }
    }
    Ok(named)
}

fn pytorch() -> Result<Vec<u8>> {
    let mut command = Command::new("python3");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        // The wheel's torch/ folder: its parent is what Python must search.
        if let Some(site) = Path::new(&libtorch).parent().filter(|_| libtorch.trim_end_matches('/').ends_with("torch"))
        {
            command.env("PYTHONPATH", site);
        }
    }
    let mut child = command
        .args(["-W", "ignore", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    child.stdin.take().context("python3's stdin")?.write_all(PYTHON.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("the PyTorch side failed ({}); can python3 import torch?", output.status);
    }
    Ok(output.stdout)
}

fn main() -> Result<()> {
    tch::set_num_threads(1);
    let ours = ours()?;
    let theirs = pytorch()?;
    let expected_bytes: usize = ours.iter().map(|(_, values)| 4 * values.len()).sum();
    if theirs.len() != expected_bytes {
        bail!("PyTorch wrote {} bytes, expected {expected_bytes}", theirs.len());
    }
    let mut offset = 0;
    let mut differing_tensors = 0;
    for (name, values) in &ours {
        let differing = values
            .iter()
            .enumerate()
            .filter(|&(i, value)| value.to_le_bytes()[..] != theirs[offset + 4 * i..offset + 4 * i + 4])
            .count();
        offset += 4 * values.len();
        if differing > 0 {
            differing_tensors += 1;
            println!("{name}: {differing} of {} elements differ", values.len());
        }
    }
    if differing_tensors > 0 {
        bail!("{differing_tensors} of {} tensors differ from torch.optim.Adam", ours.len());
    }
    println!("after {STEPS} steps, all {} tensors equal torch.optim.Adam's bit for bit", ours.len());
    Ok(())
}
