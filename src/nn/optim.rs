//! Adam whose moments and step count can be saved and restored, so that a resumed run
//! continues bit for bit. (tch's `nn::Adam` wraps libtorch's C++ optimiser and hides its state.)
//!
//! The update is `torch.optim.Adam`'s on the CPU (the single-tensor path: betas 0.9/0.999
//! unless [`Betas`] says otherwise, eps 1e-8, no weight decay, no amsgrad), with PyTorch's rounding: on a GPU op for
//! op, and for float32 on the CPU in one pass over the elements (`fused`) that rounds as
//! those ops' kernels do, bit for bit.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::nn::device::{autograd_forced, dtype_name};
use crate::nn::lstm::float_range_mut;

pub mod clip;
mod fused;

pub use fused::Constants as StepConstants;

const EPS: f64 = 1e-8;

/// Adam's decay rates of its two moment estimates (PyTorch's `betas`, Keras's `beta_1` and
/// `beta_2`); written `B1,B2` and stored as `[B1, B2]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Betas(pub f64, pub f64);

impl Default for Betas {
    /// PyTorch's and Keras's: 0.9 and 0.999.
    fn default() -> Self {
        Betas(0.9, 0.999)
    }
}

impl Betas {
    /// These betas, or why Adam cannot use them.
    pub fn check(self) -> Result<Self, String> {
        match [self.0, self.1].iter().all(|beta| (0.0..1.0).contains(beta)) {
            true => Ok(self),
            false => Err(format!("Adam's betas must each be at least 0 and below 1, got {self}")),
        }
    }

    /// Whether these are the defaults, which config.json leaves unwritten.
    pub fn is_default(&self) -> bool {
        *self == Betas::default()
    }
}

impl std::str::FromStr for Betas {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |part: &str| part.trim().parse::<f64>().ok();
        match text.split_once(',').and_then(|(first, second)| Some((number(first)?, number(second)?))) {
            Some((beta1, beta2)) => Betas(beta1, beta2).check(),
            None => Err(format!("{text:?} is not two numbers B1,B2 (e.g. 0.9,0.98)")),
        }
    }
}

impl std::fmt::Display for Betas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.0, self.1)
    }
}

/// The name of the step counter in [`Adam::state`].
pub const STEP_NAME: &str = "adam.step";
const EXP_AVG_PREFIX: &str = "adam.exp_avg.";
const EXP_AVG_SQ_PREFIX: &str = "adam.exp_avg_sq.";

/// Adam's moments and scratch space for some elements: for one variable (shaped like it), or
/// for every variable end to end (flat).
#[derive(Debug)]
struct Buffers {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The gradients: each variable's slice is its slot ([`Adam::gradient_slot`]).
    grad: Tensor,
    denom: Tensor,
    /// `(1 - beta2) * grad`, then `-step_size * exp_avg`.
    scaled: Tensor,
}

impl Buffers {
    /// PyTorch's single-tensor update up to the parameter change, whose lines the comments quote:
    /// afterwards the parameter moves by `scaled / denom` (`addcdiv_`).
    fn advance(&mut self, grad: &Tensor, Betas(beta1, beta2): Betas, bias_correction2_sqrt: f64, step_size: f64) {
        // exp_avg.lerp_(grad, 1 - beta1)
        let _ = self.exp_avg.lerp_(grad, 1.0 - beta1);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): tch's addcmul_ has no
        // `value`, and the kernel computes self + (value * t1) * t2, so scaling t1 first rounds
        // identically.
        let _ = self.exp_avg_sq.g_mul_scalar_(beta2);
        let _ = grad.mul_scalar_out(&self.scaled, 1.0 - beta2);
        let _ = self.exp_avg_sq.addcmul_(&self.scaled, grad);
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let _ = self.exp_avg_sq.sqrt_out(&self.denom);
        let _ = self.denom.g_div_scalar_(bias_correction2_sqrt);
        let _ = self.denom.g_add_scalar_(EPS);
        // param.addcdiv_(exp_avg, denom, value=-step_size), with `value` folded in as above.
        let _ = self.exp_avg.mul_scalar_out(&self.scaled, -step_size);
    }
}

/// One trainable variable, with its slices of the flat buffers.
#[derive(Debug)]
struct Parameter {
    name: String,
    /// Where its elements start in the flat buffers.
    start: i64,
    /// Shares storage with the VarStore's variable: updating it updates the model.
    variable: Tensor,
    buffers: Buffers,
}

/// Adam over a VarStore's trainable variables, taken in name order so that the state's layout
/// does not depend on hash order.
///
/// The state lives in flat buffers, so that most of a step is a few ops over one long tensor
/// rather than the same ops on each variable: on the reference model the per-op overhead is
/// larger than the arithmetic.
#[derive(Debug)]
pub struct Adam {
    parameters: Vec<Parameter>,
    flat: Buffers,
    /// Where steps run as passes in Rust ([`fused`]) rather than libtorch's ops (fixed by the
    /// variables' device and dtype when the optimiser is built), the handles those passes use.
    fused: Option<RangeUpdate>,
    learning_rate: f64,
    betas: Betas,
    steps: u64,
    /// The last step's gradient norm before clipping scaled the gradient, where it was clipped.
    pre_clip_norm: Option<PreClipNorm>,
}

/// A gradient's norm as clipping computed it: on the host, or left on a GPU so that no step
/// waits to read it back.
#[derive(Debug)]
enum PreClipNorm {
    Host(f64),
    Device(Tensor),
}

impl Adam {
    /// Adam over the variables of `vs` that require a gradient (frozen buffers such as the
    /// LSTMs' `bias_hh_l0` are left alone), with zero moments as PyTorch starts. Build it after
    /// the VarStore has reached its device.
    pub fn new(vs: &nn::VarStore, learning_rate: f64) -> Adam {
        let variables: BTreeMap<String, Tensor> =
            vs.variables().into_iter().filter(|(_, variable)| variable.requires_grad()).collect();
        let kind = variables.values().next().map_or(Kind::Float, Tensor::kind);
        assert!(variables.values().all(|v| v.kind() == kind), "a VarStore's trainable variables share one dtype");
        let total: i64 = variables.values().map(|v| v.numel() as i64).sum();
        let zeros = || Tensor::zeros([total], (kind, vs.device()));
        let flat = Buffers { exp_avg: zeros(), exp_avg_sq: zeros(), grad: zeros(), denom: zeros(), scaled: zeros() };
        let mut offset = 0;
        let parameters = variables
            .into_iter()
            .map(|(name, variable)| {
                let (length, shape) = (variable.numel() as i64, variable.size());
                let start = offset;
                offset += length;
                let slice = |buffer: &Tensor| buffer.narrow(0, start, length).view(shape.as_slice());
                let buffers = Buffers {
                    exp_avg: slice(&flat.exp_avg),
                    exp_avg_sq: slice(&flat.exp_avg_sq),
                    grad: slice(&flat.grad),
                    denom: slice(&flat.denom),
                    scaled: slice(&flat.scaled),
                };
                Parameter { name, start, variable, buffers }
            })
            .collect();
        let betas = Betas::default();
        let mut adam = Adam { parameters, flat, learning_rate, betas, steps: 0, fused: None, pre_clip_norm: None };
        adam.fused = adam.can_run_fused().then(|| adam.new_range_update());
        adam
    }

    /// The same optimiser with other decay rates of its moments (`--adam-betas`).
    pub fn with_betas(mut self, betas: Betas) -> Adam {
        self.betas = betas;
        self
    }

    /// The slice of the gradient buffer that belongs to `variable` (shaped like it), where
    /// [`crate::nn::model::Seq2Seq::forward_backward`] writes its gradient before
    /// [`Adam::step_from_buffer`]. Panics if `variable` is not one of this optimiser's.
    pub fn gradient_slot(&self, variable: &Tensor) -> Tensor {
        self.gradient_slot_in(&self.flat.grad, variable)
    }

    /// The optimiser's whole gradient buffer, every variable's slot end to end in name order.
    pub fn gradient_buffer(&self) -> Tensor {
        self.flat.grad.shallow_clone()
    }

    /// A new buffer laid out as [`Adam::gradient_buffer`], for gradients computed elsewhere.
    pub fn new_gradient_buffer(&self) -> Tensor {
        self.flat.grad.zeros_like()
    }

    /// `variable`'s slot in `buffer`, a buffer laid out as [`Adam::gradient_buffer`]. Panics if
    /// `variable` is not one of this optimiser's.
    pub fn gradient_slot_in(&self, buffer: &Tensor, variable: &Tensor) -> Tensor {
        self.parameters
            .iter()
            .find(|parameter| parameter.variable.data_ptr() == variable.data_ptr())
            .map(|parameter| {
                buffer.narrow(0, parameter.start, parameter.variable.numel() as i64).view(variable.size().as_slice())
            })
            .expect("a trainable variable of the optimiser's VarStore")
    }

    /// The learning rate of the steps from now on (a schedule changes it between steps).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// One Adam update from the gradients written into the [`Adam::gradient_slot`]s.
    pub fn step_from_buffer(&mut self) {
        self.step(self.fused.is_some());
    }

    /// One update, in passes over the elements ([`RangeUpdate`]) or by libtorch's ops.
    fn step(&mut self, fused: bool) {
        if fused && let Some(update) = self.fused.take() {
            let constants = self.begin_step();
            // SAFETY: this optimiser owns the buffers; nothing else touches them, or the
            // variables, during the step.
            unsafe { update.run(0..update.elements, &constants) };
            self.fused = Some(update);
        } else {
            let (bias_correction2_sqrt, step_size) = self.next_step();
            tch::no_grad(|| self.step_flat(bias_correction2_sqrt, step_size));
        }
    }

    /// Clips the gradient in the slots to an L2 norm of `max_norm` over every weight together
    /// ([`clip`]: PyTorch's `clip_grad_norm_`).
    pub fn clip_gradient(&mut self, max_norm: f64) {
        self.clip(max_norm, self.fused.is_some());
    }

    /// [`Adam::clip_gradient`] in one pass in Rust (`fused`) or by libtorch's ops
    /// ([`clip::scale_on_device`]).
    fn clip(&mut self, max_norm: f64, fused: bool) {
        if fused && let Some(update) = &self.fused {
            let everything = 0..update.elements;
            // SAFETY: this optimiser owns the gradient buffer; nothing else touches it now.
            let norm = unsafe { update.gradient_squared_norm(everything.clone()) }.sqrt();
            if let Some(factor) = clip::scale_for(norm, max_norm) {
                // SAFETY: as above.
                unsafe { update.scale_gradient(everything, factor) };
            }
            self.pre_clip_norm = Some(PreClipNorm::Host(norm));
            return;
        }
        let norm = tch::no_grad(|| clip::scale_on_device(&mut self.flat.grad, max_norm));
        self.pre_clip_norm = Some(PreClipNorm::Device(norm));
    }

    /// Records the norm of this step's gradient where clipping ran outside the optimiser (on
    /// ranges of the buffer, by several threads), before it scaled the gradient.
    pub fn note_pre_clip_norm(&mut self, norm: f64) {
        self.pre_clip_norm = Some(PreClipNorm::Host(norm));
    }

    /// The L2 norm of the last step's gradient over every weight together, before any
    /// clipping: what `metrics.csv` logs. It may read a value back from a GPU, so it is for
    /// reports, not for every step; between steps, when nothing else touches the buffer.
    pub fn gradient_norm(&self) -> f64 {
        match (&self.pre_clip_norm, &self.fused) {
            (Some(PreClipNorm::Host(norm)), _) => *norm,
            (Some(PreClipNorm::Device(norm)), _) => norm.double_value(&[]),
            // SAFETY: between steps no other thread touches the gradient buffer.
            (None, Some(update)) => unsafe { update.gradient_squared_norm(0..update.elements) }.sqrt(),
            (None, None) => tch::no_grad(|| self.flat.grad.to_kind(Kind::Double).norm().double_value(&[])),
        }
    }

    /// Handles with which other threads run parts of a step ([`RangeUpdate::run`]), where
    /// steps run as passes in Rust (float32 on the CPU); `None` where they run libtorch's ops.
    pub fn range_update(&self) -> Option<RangeUpdate> {
        self.fused.clone()
    }

    /// Counts a step whose update the caller runs over every element with
    /// [`RangeUpdate::run`], in ranges, instead of [`Adam::step_from_buffer`].
    pub fn begin_step(&mut self) -> StepConstants {
        let (bias_correction2_sqrt, step_size) = self.next_step();
        StepConstants::new(self.betas, bias_correction2_sqrt, step_size)
    }

    fn new_range_update(&self) -> RangeUpdate {
        RangeUpdate {
            exp_avg: self.flat.exp_avg.shallow_clone(),
            exp_avg_sq: self.flat.exp_avg_sq.shallow_clone(),
            grad: self.flat.grad.shallow_clone(),
            denom: self.flat.denom.shallow_clone(),
            variables: self.parameters.iter().map(|p| (p.start as usize, p.variable.shallow_clone())).collect(),
            elements: self.flat.grad.numel(),
        }
    }

    /// Whether steps run as one pass in Rust ([`fused`]): float32 on the CPU, as the
    /// hand-written LSTM passes. A GPU, and the CPU under [`crate::nn::device::FORCE_AUTOGRAD_VARIABLE`]
    /// (which stands in for one in the tests), run libtorch's ops.
    fn can_run_fused(&self) -> bool {
        let on_cpu = |tensor: &Tensor| tensor.device() == Device::Cpu && tensor.kind() == Kind::Float;
        !autograd_forced()
            && on_cpu(&self.flat.grad)
            && self.parameters.iter().all(|p| on_cpu(&p.variable) && p.variable.is_contiguous())
    }

    /// Counts a step; returns its `(sqrt of the second bias correction, step size)`, which
    /// PyTorch computes in double precision from the step count.
    fn next_step(&mut self) -> (f64, f64) {
        self.steps += 1;
        let step = self.steps as f64;
        let Betas(beta1, beta2) = self.betas;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2_sqrt = (1.0 - beta2.powf(step)).sqrt();
        (bias_correction2_sqrt, self.learning_rate / bias_correction1)
    }

    /// The update run once over the flat buffers (each op rounds element by element, so this is
    /// bit for bit the per-variable update), then each variable moved by its slice.
    fn step_flat(&mut self, bias_correction2_sqrt: f64, step_size: f64) {
        let grad = self.flat.grad.shallow_clone();
        self.flat.advance(&grad, self.betas, bias_correction2_sqrt, step_size);
        for parameter in &mut self.parameters {
            let _ = parameter.variable.addcdiv_(&parameter.buffers.scaled, &parameter.buffers.denom);
        }
    }

    /// Steps taken since the start (restored by [`Adam::load_state`]).
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// A CPU copy of the state: `adam.step` (an int64 scalar), then `adam.exp_avg.<variable>`
    /// and `adam.exp_avg_sq.<variable>` for each trainable variable, in name order.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let steps = i64::try_from(self.steps).expect("fewer than 2^63 steps");
        let mut named = vec![(STEP_NAME.to_owned(), Tensor::from_slice(&[steps]).reshape([]))];
        for parameter in &self.parameters {
            named.push((format!("{EXP_AVG_PREFIX}{}", parameter.name), cpu_copy(&parameter.buffers.exp_avg)));
            named.push((format!("{EXP_AVG_SQ_PREFIX}{}", parameter.name), cpu_copy(&parameter.buffers.exp_avg_sq)));
        }
        named
    }

    /// Restores a state written by [`Adam::state`] from `named`, which may also hold other
    /// tensors (the weights, say) under names outside `adam.`. Every tensor is checked (name,
    /// shape, dtype, finite values) before any is copied, so a refused state changes nothing.
    pub fn load_state(&mut self, named: &BTreeMap<String, Tensor>) -> Result<()> {
        let steps = read_steps(named)?;
        let mut expected = vec![STEP_NAME.to_owned()];
        let mut sources = Vec::with_capacity(self.parameters.len());
        for parameter in &self.parameters {
            let exp_avg_name = format!("{EXP_AVG_PREFIX}{}", parameter.name);
            let exp_avg_sq_name = format!("{EXP_AVG_SQ_PREFIX}{}", parameter.name);
            let exp_avg = checked_moment(named, &exp_avg_name, &parameter.variable, false)?;
            let exp_avg_sq = checked_moment(named, &exp_avg_sq_name, &parameter.variable, true)?;
            sources.push((exp_avg, exp_avg_sq));
            expected.extend([exp_avg_name, exp_avg_sq_name]);
        }
        if let Some(name) = named.keys().find(|name| name.starts_with("adam.") && !expected.contains(name)) {
            bail!("optimiser state tensor {name:?} belongs to no trainable variable of this model");
        }
        tch::no_grad(|| {
            for (parameter, (exp_avg, exp_avg_sq)) in self.parameters.iter_mut().zip(sources) {
                parameter.buffers.exp_avg.copy_(exp_avg);
                parameter.buffers.exp_avg_sq.copy_(exp_avg_sq);
            }
        });
        self.steps = steps;
        Ok(())
    }
}

/// Handles on a fused optimiser's flat buffers and variables (sharing their storage) with which
/// any thread updates a range of the elements: the threads that shared a batch's passes share
/// its update too. Each element's update reads and writes that element alone, so the result
/// does not depend on how the elements are split.
#[derive(Debug)]
pub struct RangeUpdate {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    denom: Tensor,
    /// Each trainable variable, with where its elements start in the flat buffers.
    variables: Vec<(usize, Tensor)>,
    /// The length of the flat buffers.
    pub elements: usize,
}

impl Clone for RangeUpdate {
    fn clone(&self) -> Self {
        Self {
            exp_avg: self.exp_avg.shallow_clone(),
            exp_avg_sq: self.exp_avg_sq.shallow_clone(),
            grad: self.grad.shallow_clone(),
            denom: self.denom.shallow_clone(),
            variables: self.variables.iter().map(|(start, variable)| (*start, variable.shallow_clone())).collect(),
            elements: self.elements,
        }
    }
}

impl RangeUpdate {
    /// The sum of the squares of the gradient's elements in `range` (for clipping).
    ///
    /// # Safety
    /// Nothing writes these elements of the gradient meanwhile.
    pub unsafe fn gradient_squared_norm(&self, range: Range<usize>) -> f64 {
        // SAFETY: the caller keeps writers away from `range`; this only reads it.
        clip::squared_norm(unsafe { float_range_mut(&self.grad, range) })
    }

    /// Multiplies the gradient's elements in `range` by `factor` (clipping).
    ///
    /// # Safety
    /// Nothing else reads or writes these elements of the gradient meanwhile.
    pub unsafe fn scale_gradient(&self, range: Range<usize>, factor: f32) {
        // SAFETY: the caller keeps every other reference away from `range`.
        clip::scale(unsafe { float_range_mut(&self.grad, range) }, factor);
    }

    /// The step's update of elements `range` (PyTorch's single-tensor Adam, rounded as
    /// its ops' kernels round) in two passes around libtorch's `sqrt`, which rounds each element
    /// alike wherever a range starts.
    ///
    /// # Safety
    /// Nothing else reads or writes these elements of the buffers or the variables meanwhile;
    /// other threads may run other, disjoint ranges.
    pub unsafe fn run(&self, range: Range<usize>, constants: &StepConstants) {
        if range.is_empty() {
            return;
        }
        // SAFETY: the caller keeps every other reference away from `range`.
        let (exp_avg, exp_avg_sq, grad) = unsafe {
            (
                float_range_mut(&self.exp_avg, range.clone()),
                float_range_mut(&self.exp_avg_sq, range.clone()),
                float_range_mut(&self.grad, range.clone()),
            )
        };
        fused::moments(exp_avg, exp_avg_sq, grad, constants);
        let (start, length) = (range.start as i64, range.len() as i64);
        let _ = self.exp_avg_sq.narrow(0, start, length).sqrt_out(&self.denom.narrow(0, start, length));
        // SAFETY: as above; `sqrt_out` has finished writing `denom`.
        let denom = unsafe { float_range_mut(&self.denom, range.clone()) };
        for (first, variable) in &self.variables {
            let (from, to) = (range.start.max(*first), range.end.min(first + variable.numel()));
            if from < to {
                // SAFETY: as above; these are the variable's elements within `range`.
                let weights = unsafe { float_range_mut(variable, from - first..to - first) };
                let within = from - range.start..to - range.start;
                fused::weights(weights, &exp_avg[within.clone()], &denom[within], constants);
            }
        }
    }
}

/// A copy on the CPU that later steps do not change.
fn cpu_copy(tensor: &Tensor) -> Tensor {
    if tensor.device() == Device::Cpu { tensor.copy() } else { tensor.to_device(Device::Cpu) }
}

fn read_steps(named: &BTreeMap<String, Tensor>) -> Result<u64> {
    let Some(tensor) = named.get(STEP_NAME) else {
        bail!("optimiser state tensor {STEP_NAME:?} is missing");
    };
    if tensor.kind() != Kind::Int64 {
        bail!("optimiser state tensor {STEP_NAME:?} is {}, expected int64", dtype_name(tensor.kind()));
    }
    if !tensor.size().is_empty() {
        bail!("optimiser state tensor {STEP_NAME:?} has shape {:?}, expected a scalar []", tensor.size());
    }
    let steps = tensor.f_int64_value(&[])?;
    u64::try_from(steps).map_err(|_| anyhow::anyhow!("optimiser state tensor {STEP_NAME:?} holds {steps} steps"))
}

/// The tensor `name` of `named` if it can stand for a moment of `variable`.
fn checked_moment<'a>(
    named: &'a BTreeMap<String, Tensor>,
    name: &str,
    variable: &Tensor,
    non_negative: bool,
) -> Result<&'a Tensor> {
    let Some(tensor) = named.get(name) else {
        bail!("optimiser state tensor {name:?} is missing");
    };
    if tensor.size() != variable.size() {
        bail!("optimiser state tensor {name:?} has shape {:?}, expected {:?}", tensor.size(), variable.size());
    }
    if tensor.kind() != variable.kind() {
        bail!(
            "optimiser state tensor {name:?} is {}, expected {}",
            dtype_name(tensor.kind()),
            dtype_name(variable.kind())
        );
    }
    // NaN fails both tests; a negative second moment would turn the next step's sqrt into NaN.
    let finite = tensor.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
    let in_range = !non_negative || tensor.f_ge(0.0)?.f_all()?.f_int64_value(&[])? != 0;
    if !finite || !in_range {
        let what = if non_negative { "finite and non-negative" } else { "finite" };
        bail!("optimiser state tensor {name:?} holds values that are not {what}");
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::{ModelConfig, REFERENCE_SHAPE, Seq2Seq};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use tch::nn::OptimizerConfig;

    const LEARNING_RATE: f64 = 0.001;

    struct Batch {
        inputs: Tensor,
        targets: Tensor,
    }

    /// Random class indices from a private generator (libtorch's global one belongs to the
    /// model constructors, which other tests run in parallel).
    fn batches(count: usize) -> Vec<Batch> {
        let mut rng = StdRng::seed_from_u64(5);
        let mut indices = |n: usize| -> Vec<i64> {
            (0..n).map(|_| rng.random_range(0..REFERENCE_SHAPE.input.width() as i64)).collect()
        };
        (0..count)
            .map(|_| Batch {
                inputs: Tensor::from_slice(&indices(32 * REFERENCE_SHAPE.input_len))
                    .view([32, REFERENCE_SHAPE.input_len as i64]),
                targets: Tensor::from_slice(&indices(32 * REFERENCE_SHAPE.output_len))
                    .view([32, REFERENCE_SHAPE.output_len as i64]),
            })
            .collect()
    }

    /// Also gives this test's thread one libtorch thread: with MKL choosing its own thread
    /// count as the machine's load varies (its default), two runs of the same steps in one
    /// test, beside other tests, differed in the last bit in about one run in six.
    fn model(seed: u64) -> (nn::VarStore, Seq2Seq) {
        tch::set_num_threads(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), REFERENCE_SHAPE, seed);
        (vs, model)
    }

    fn loss(model: &Seq2Seq, batch: &Batch) -> Tensor {
        model.loss(&model.forward_with_lstm_op(&batch.inputs, true), &batch.targets)
    }

    /// Steps as `train` takes them where libtorch's lstm op runs the model (tch's Adam below
    /// gets the same autograd gradients).
    fn train(model: &Seq2Seq, adam: &mut Adam, batches: &[Batch]) {
        let mut gradients = model.gradients(|variable| adam.gradient_slot(variable));
        for batch in batches {
            let _ = model.forward_backward_with_autograd(&batch.inputs, &batch.targets, &mut gradients);
            adam.step_from_buffer();
        }
    }

    fn weights(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
        vs.variables().into_iter().map(|(name, tensor)| (name, tensor.copy())).collect()
    }

    #[test]
    fn matches_tch_adam() {
        let batches = batches(20);
        let mut moved = Vec::new();
        for betas in [Betas::default(), Betas(0.8, 0.98)] {
            let (ours_vs, ours_model) = model(1);
            let mut ours = Adam::new(&ours_vs, LEARNING_RATE).with_betas(betas);
            train(&ours_model, &mut ours, &batches);

            let (tch_vs, tch_model) = model(1);
            let settings = nn::Adam { beta1: betas.0, beta2: betas.1, ..nn::Adam::default() };
            let mut reference = settings.build(&tch_vs, LEARNING_RATE).expect("tch builds Adam");
            for batch in &batches {
                reference.backward_step(&loss(&tch_model, batch));
            }

            let (ours, reference) = (weights(&ours_vs), weights(&tch_vs));
            assert_eq!(ours.len(), 10);
            for (name, expected) in &reference {
                let difference = (&ours[name] - expected).abs().max().double_value(&[]);
                let scale = expected.abs().max().double_value(&[]).max(1e-3);
                assert!(difference <= 1e-6 * scale, "{betas}: {name} differs by {difference}, scale {scale}");
            }
            moved.push(reference["encoder.weight_ih_l0"].copy());
        }
        // The weights moved, and the betas moved them differently: the comparisons are not
        // between untouched models, nor of betas that go unused.
        let (untouched_vs, _) = model(1);
        assert!(!moved[0].equal(&weights(&untouched_vs)["encoder.weight_ih_l0"]));
        assert!(!moved[0].equal(&moved[1]));
    }

    #[test]
    fn betas_read_as_two_numbers_below_one() {
        assert_eq!("0.9,0.98".parse::<Betas>(), Ok(Betas(0.9, 0.98)));
        assert_eq!(" 0 , 0.5 ".parse::<Betas>(), Ok(Betas(0.0, 0.5)));
        for (text, why) in
            [("0.9", "not two numbers"), ("0.9,1", "below 1"), ("-0.1,0.9", "at least 0"), ("a,b", "not two")]
        {
            let error = text.parse::<Betas>().expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
        }
        assert!(Betas::default().is_default() && !Betas(0.9, 0.98).is_default());
    }

    /// Clipping as tch's `clip_grad_norm` (libtorch's float32 norms where ours are summed in
    /// double precision, hence a tolerance), at a maximum below every step's norm.
    #[test]
    fn clipping_matches_tch_clip_grad_norm() {
        const MAX_NORM: f64 = 0.02;
        let batches = batches(20);
        let (ours_vs, ours_model) = model(1);
        let mut ours = Adam::new(&ours_vs, LEARNING_RATE);
        let mut gradients = ours_model.gradients(|variable| ours.gradient_slot(variable));
        let mut norms = Vec::new();
        for batch in &batches {
            let _ = ours_model.forward_backward_with_autograd(&batch.inputs, &batch.targets, &mut gradients);
            norms.push(ours.flat.grad.to_kind(Kind::Double).norm().double_value(&[]));
            ours.clip_gradient(MAX_NORM);
            ours.step_from_buffer();
        }
        assert!(norms.iter().all(|&norm| norm > 2.0 * MAX_NORM), "every step clipped: {norms:?}");

        let (tch_vs, tch_model) = model(1);
        let mut reference = nn::Adam::default().build(&tch_vs, LEARNING_RATE).expect("tch builds Adam");
        for batch in &batches {
            reference.backward_step_clip_norm(&loss(&tch_model, batch), MAX_NORM);
        }
        let (ours, reference) = (weights(&ours_vs), weights(&tch_vs));
        for (name, expected) in &reference {
            let difference = (&ours[name] - expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]).max(1e-3);
            assert!(difference <= 1e-6 * scale, "{name}: differs by {difference}, scale {scale}");
        }
        let (unclipped_vs, unclipped_model) = model(1);
        let mut unclipped = Adam::new(&unclipped_vs, LEARNING_RATE);
        train(&unclipped_model, &mut unclipped, &batches);
        let moved = (&ours["encoder.weight_ih_l0"] - &weights(&unclipped_vs)["encoder.weight_ih_l0"]).abs().max();
        assert!(moved.double_value(&[]) > 1e-5, "clipping changed the steps");
    }

    /// libtorch's clipping, which keeps the factor on the device, gives the bits of the factor
    /// computed on the host by [`clip::scale_for`] and applied in Rust, above the maximum and
    /// within it (where nothing may change).
    #[test]
    fn clipping_by_libtorchs_ops_rounds_as_the_factor_read_back() {
        const MAX_NORM: f64 = 0.5;
        let vs = nn::VarStore::new(Device::Cpu);
        for (name, shape) in [("a", vec![300i64, 91]), ("b", vec![75])] {
            let _ = vs.root().var(name, &shape, nn::Init::Const(0.0));
        }
        let mut adam = Adam::new(&vs, 0.003);
        let mut rng = StdRng::seed_from_u64(3);
        let total = adam.gradient_buffer().numel();
        for scale in [1.0f32, 1e-3, 30.0, 1e-6] {
            let values: Vec<f32> = (0..total).map(|_| scale * rng.random_range(-1.0f32..1.0)).collect();
            adam.gradient_buffer().copy_(&Tensor::from_slice(&values));
            let mut expected = values.clone();
            let norm = Tensor::from_slice(&values).to_kind(Kind::Double).norm().double_value(&[]);
            if let Some(factor) = clip::scale_for(norm, MAX_NORM) {
                clip::scale(&mut expected, factor);
            }
            adam.clip(MAX_NORM, false);
            let clipped = Vec::<f32>::try_from(adam.gradient_buffer()).expect("float32 values");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&clipped) == bits(&expected), "scale {scale}: the clipped gradients differ");
        }
    }

    /// Three optimisers over equal variables whose lengths leave every kind of remainder at the
    /// end of the flat buffer, fed the same gradients: one pass in Rust, libtorch's ops, and
    /// the pass split into ranges on threads (as threads that share a batch run it) agree to
    /// the last bit, in the weights and in both moments.
    #[test]
    fn the_fused_pass_rounds_as_libtorchs_ops_in_any_ranges() {
        const STEPS: usize = 25;
        let build = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let root = vs.root();
            for (name, shape) in [("a", vec![300i64, 91]), ("b", vec![75]), ("c", vec![13, 3]), ("d", vec![5])] {
                let _ = root.var(name, &shape, nn::Init::Uniform { lo: -0.5, up: 0.5 });
            }
            vs
        };
        let (fused_vs, ops_vs, ranged_vs) = (build(), build(), build());
        tch::no_grad(|| {
            for (name, mut variable) in ops_vs.variables().into_iter().chain(ranged_vs.variables()) {
                variable.copy_(&fused_vs.variables()[&name]);
            }
        });
        // Betas other than the defaults, so that every constant of the step is the configured one.
        let adam = |vs: &nn::VarStore| Adam::new(vs, 0.003).with_betas(Betas(0.85, 0.98));
        let (mut fused, mut ops, mut ranged) = (adam(&fused_vs), adam(&ops_vs), adam(&ranged_vs));
        let total = fused.gradient_buffer().numel();
        assert_ne!(total % 16, 0, "some elements take libtorch's scalar remainder");
        let mut rng = StdRng::seed_from_u64(9);
        for step in 0..STEPS {
            // Gradients of very different sizes, as a training run's first and later steps see.
            let scale = [1.0f32, 1e-3, 30.0, 1e-6][step % 4];
            let values: Vec<f32> = (0..total).map(|_| scale * rng.random_range(-1.0f32..1.0)).collect();
            for adam in [&fused, &ops, &ranged] {
                adam.gradient_buffer().copy_(&Tensor::from_slice(&values));
            }
            fused.step(true);
            ops.step(false);
            // The same update in three ranges on three threads, split at other places each step.
            let constants = ranged.begin_step();
            let cuts = [0, 1 + step * 7 % 90, 1000 + step * 331, total];
            std::thread::scope(|scope| {
                for range in cuts.windows(2) {
                    let update = ranged.range_update().expect("float32 on the CPU runs fused");
                    // SAFETY: the ranges are disjoint, and nothing else touches the optimiser.
                    scope.spawn(move || unsafe { update.run(range[0]..range[1], &constants) });
                }
            });
        }
        // The positions whose bits differ, as few as there are.
        let differing = |a: &Tensor, b: &Tensor| -> Vec<usize> {
            let floats = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).expect("float32 values");
            floats(a)
                .iter()
                .zip(floats(b))
                .enumerate()
                .filter(|(_, (x, y))| x.to_bits() != y.to_bits())
                .map(|(i, _)| i)
                .collect()
        };
        let first = |positions: Vec<usize>| (positions.len(), positions.into_iter().take(8).collect::<Vec<_>>());
        for (other, other_vs) in [(&ops, &ops_vs), (&ranged, &ranged_vs)] {
            assert_eq!(first(differing(&fused.flat.exp_avg, &other.flat.exp_avg)), (0, vec![]), "first moments");
            assert_eq!(first(differing(&fused.flat.exp_avg_sq, &other.flat.exp_avg_sq)), (0, vec![]), "second moments");
            for (name, variable) in fused_vs.variables() {
                assert_eq!(first(differing(&variable, &other_vs.variables()[&name])), (0, vec![]), "weights of {name}");
            }
        }
    }

    #[test]
    fn resumes_bit_for_bit() {
        let batches = batches(20);
        let (straight_vs, straight_model) = model(1);
        let mut straight = Adam::new(&straight_vs, LEARNING_RATE);
        train(&straight_model, &mut straight, &batches);

        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("resume.safetensors");
        {
            let (vs, model) = model(1);
            let mut adam = Adam::new(&vs, LEARNING_RATE);
            train(&model, &mut adam, &batches[..10]);
            let mut named = adam.state();
            named.extend(weights(&vs));
            Tensor::write_safetensors(&named, &path).expect("the state is written");
        }

        // A different seed, so that only the file can make the weights equal.
        let (resumed_vs, resumed_model) = model(2);
        let mut resumed = Adam::new(&resumed_vs, LEARNING_RATE);
        let stored: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&path).expect("the state is read back").into_iter().collect();
        tch::no_grad(|| {
            for (name, mut variable) in resumed_vs.variables() {
                variable.copy_(&stored[&name]);
            }
        });
        resumed.load_state(&stored).expect("the state loads");
        assert_eq!(resumed.steps_taken(), 10);
        train(&resumed_model, &mut resumed, &batches[10..]);

        assert_eq!(resumed.steps_taken(), 20);
        let (straight_weights, resumed_weights) = (weights(&straight_vs), weights(&resumed_vs));
        for (name, expected) in &straight_weights {
            assert!(resumed_weights[name].equal(expected), "{name} differs after resuming");
        }
        for ((name, expected), (_, actual)) in straight.state().iter().zip(resumed.state()) {
            assert!(actual.equal(expected), "{name} differs after resuming");
        }
    }

    #[test]
    fn state_names_every_trainable_variable_and_skips_frozen_ones() {
        let (vs, _model) = model(1);
        let names: Vec<String> = Adam::new(&vs, LEARNING_RATE).state().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names.len(), 1 + 2 * 8);
        assert_eq!(names[0], STEP_NAME);
        assert!(names.contains(&"adam.exp_avg.encoder.weight_ih_l0".to_owned()));
        assert!(names.contains(&"adam.exp_avg_sq.output.bias".to_owned()));
        assert!(!names.iter().any(|name| name.contains("bias_hh")), "{names:?}");
    }

    /// The error `load_state` gives for `good` changed by `damage`.
    fn refusal(
        adam: &mut Adam,
        good: &BTreeMap<String, Tensor>,
        damage: impl FnOnce(&mut BTreeMap<String, Tensor>),
    ) -> String {
        let mut named: BTreeMap<String, Tensor> = good.iter().map(|(name, t)| (name.clone(), t.copy())).collect();
        damage(&mut named);
        format!("{:#}", adam.load_state(&named).expect_err("a damaged state is refused"))
    }

    #[test]
    fn refuses_a_damaged_state_and_names_the_tensor() {
        let (vs, model) = model(1);
        let mut adam = Adam::new(&vs, LEARNING_RATE);
        train(&model, &mut adam, &batches(1));
        let good: BTreeMap<String, Tensor> = adam.state().into_iter().collect();
        let before = adam.state();
        let moment = "adam.exp_avg.decoder.weight_hh_l0";
        let squares = "adam.exp_avg_sq.output.weight";
        let stranger = "adam.exp_avg.encoder.weight_ih_l1";
        let replace = |name: &'static str, tensor: fn(&Tensor) -> Tensor| {
            move |named: &mut BTreeMap<String, Tensor>| {
                let replacement = tensor(&named[name]);
                named.insert(name.to_owned(), replacement);
            }
        };
        let cases: [(String, &str, &str); 9] = [
            (refusal(&mut adam, &good, |named| drop(named.remove(moment))), moment, "missing"),
            (refusal(&mut adam, &good, |named| drop(named.remove(STEP_NAME))), STEP_NAME, "missing"),
            (refusal(&mut adam, &good, replace(moment, |t| t.narrow(1, 0, 49).copy())), moment, "shape [200, 49]"),
            (
                refusal(&mut adam, &good, replace(moment, |t| t.to_kind(Kind::Double))),
                moment,
                "is float64, expected float32",
            ),
            (
                refusal(&mut adam, &good, replace(STEP_NAME, |t| t.to_kind(Kind::Float))),
                STEP_NAME,
                "is float32, expected int64",
            ),
            (refusal(&mut adam, &good, replace(STEP_NAME, |t| t.reshape([1]))), STEP_NAME, "shape [1]"),
            (refusal(&mut adam, &good, replace(squares, |t| -t.ones_like())), squares, "non-negative"),
            (refusal(&mut adam, &good, replace(moment, |t| t.full_like(f64::NAN))), moment, "finite"),
            (
                refusal(&mut adam, &good, |named| drop(named.insert(stranger.to_owned(), named[moment].copy()))),
                stranger,
                "no trainable variable",
            ),
        ];
        for (error, culprit, reason) in cases {
            assert!(error.contains(&format!("{culprit:?}")) && error.contains(reason), "{error}");
        }
        // Refused states changed nothing.
        assert_eq!(adam.steps_taken(), 1);
        for ((name, expected), (_, actual)) in before.iter().zip(adam.state()) {
            assert!(actual.equal(expected), "{name} changed");
        }
    }
}
