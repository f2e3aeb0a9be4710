//! The encoder-decoder LSTM of the reference: LSTM → RepeatVector → LSTM → TimeDistributed(Dense).
//! The same network serves every task; only the ends differ (one-hot and softmax for symbols,
//! one value per step for the autoencoder). Beside the reference's decoder, two read what they
//! wrote ([`crate::nn::feedback`]), and the encoder may read both ways.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Device, Kind, Reduction, Tensor};

use crate::nn::device::autograd_forced;
use crate::nn::feedback::{
    DecoderGradients, Encoded, Feedback, FeedbackGradients, Hypothesis, Parts, reading_backwards,
};
pub use crate::nn::lstm::with_global_generator;
use crate::nn::lstm::{LayerGradients, Lstm, Masks, OutputGradient, State, StepInputs, Tape};
use crate::task::pairs::IGNORED;
use crate::task::{Features, Task};

/// The architecture's free choices. `Default` is the reference: encoder 75 cells, decoder 50.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub encoder_units: usize,
    pub decoder_units: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Dropout between stacked LSTM layers while training; off in evaluation and prediction.
    pub dropout: f64,
    /// What the decoder reads at each step. Recorded only when it is not the reference's.
    #[serde(default, skip_serializing_if = "DecoderKind::is_repeat")]
    pub decoder: DecoderKind,
    /// A second encoder stack reads each input backwards; the encoding is both stacks' states.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bidirectional: bool,
    /// Heads of the attention decoder, each scoring the memory with its own slice of the
    /// decoder's output. Recorded only when more than one.
    #[serde(default = "one_head", skip_serializing_if = "is_one_head")]
    pub attention_heads: usize,
}

fn one_head() -> usize {
    1
}

fn is_one_head(heads: &usize) -> bool {
    *heads == 1
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder_units: 75,
            decoder_units: 50,
            encoder_layers: 1,
            decoder_layers: 1,
            dropout: 0.0,
            decoder: DecoderKind::Repeat,
            bidirectional: false,
            attention_heads: 1,
        }
    }
}

/// What the decoder reads at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// The reference's: the encoding, the same at every step (RepeatVector).
    #[default]
    Repeat,
    /// Its previous token, starting from the encoder's final state (Sutskever et al., 2014).
    Feedback,
    /// Feedback, plus attention over every encoder output (Luong et al., 2015).
    Attention,
}

impl DecoderKind {
    fn is_repeat(&self) -> bool {
        *self == DecoderKind::Repeat
    }

    pub fn name(self) -> &'static str {
        match self {
            DecoderKind::Repeat => "repeat",
            DecoderKind::Feedback => "feedback",
            DecoderKind::Attention => "attention",
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, value, most) in [
            ("encoder units", self.encoder_units, MAX_UNITS),
            ("decoder units", self.decoder_units, MAX_UNITS),
            ("encoder layers", self.encoder_layers, MAX_LAYERS),
            ("decoder layers", self.decoder_layers, MAX_LAYERS),
        ] {
            if !(1..=most).contains(&value) {
                bail!("{name} must be between 1 and {most}, got {value}");
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        let heads = self.attention_heads;
        if heads != 1 && self.decoder != DecoderKind::Attention {
            bail!("attention heads ({heads}) need the attention decoder (--decoder attention)");
        }
        if heads == 0 || !self.decoder_units.is_multiple_of(heads) {
            bail!(
                "attention heads must divide the decoder units into equal slices: {} decoder units, {heads} heads",
                self.decoder_units
            );
        }
        Ok(())
    }

    /// Trainable numbers of this architecture for `shape`: each LSTM layer's input and
    /// recurrent weights and its trained bias, a feedback decoder's bridge and attention, then
    /// the output layer.
    pub fn parameter_count(&self, shape: &ModelShape) -> u128 {
        let lstm = |input: usize, units: usize, layers: usize| -> u128 {
            let (input, units) = (input as u128, units as u128);
            let first = 4 * units * (input + units + 1);
            first + (layers as u128).saturating_sub(1) * 4 * units * (2 * units + 1)
        };
        let width = shape.output.width() as u128;
        let (bridge, attention) = match self.decoder {
            DecoderKind::Repeat => (0, 0),
            _ => Feedback::parameter_counts(self.memory_width(), self.decoder_units, self.attention()),
        };
        self.encoder_directions() as u128 * lstm(shape.input.width(), self.encoder_units, self.encoder_layers)
            + lstm(self.decoder_input_width(shape), self.decoder_units, self.decoder_layers)
            + bridge
            + attention
            + (self.decoder_units as u128 + 1) * width
    }

    /// The attention decoder's heads; `None` for a decoder without attention.
    pub fn attention(&self) -> Option<usize> {
        (self.decoder == DecoderKind::Attention).then_some(self.attention_heads)
    }

    /// Encoder stacks: two when it reads both ways.
    fn encoder_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Width of each encoder output: both stacks' when the encoder reads both ways.
    pub fn memory_width(&self) -> usize {
        self.encoder_units * self.encoder_directions()
    }

    /// What the decoder's first layer reads at each step.
    fn decoder_input_width(&self, shape: &ModelShape) -> usize {
        match self.decoder {
            DecoderKind::Repeat => self.memory_width(),
            kind => Feedback::decoder_input_width(shape.output, self.decoder_units, kind == DecoderKind::Attention),
        }
    }

    /// Refuses a model that would not fit in this machine's memory before any tensor is made:
    /// its weights, and the activations of one batch (`training_batch`, or a prediction batch).
    pub fn check_memory(&self, shape: &ModelShape, training_batch: Option<usize>) -> Result<()> {
        let needed = self.memory_needed(shape, training_batch);
        let available = physical_memory();
        if needed > available {
            bail!(
                "this model ({} encoder units x {} layers, {} decoder units x {} layers) would need about {} to {}, \
                 and this machine has {}",
                self.encoder_units,
                self.encoder_layers,
                self.decoder_units,
                self.decoder_layers,
                human_bytes(needed),
                if training_batch.is_some() { "train" } else { "run" },
                human_bytes(available)
            );
        }
        Ok(())
    }

    /// Bytes to train (or, with `training_batch` `None`, to run) the model, about: its weights
    /// (times four when training: gradients and Adam's two moments) and the activations of one
    /// batch of `training_batch` samples (a prediction batch of 1,000 otherwise).
    fn memory_needed(&self, shape: &ModelShape, training_batch: Option<usize>) -> u128 {
        let copies = if training_batch.is_some() { 4 } else { 1 };
        let weights = self.parameter_count(shape) * copies * 4;
        let batch = training_batch.unwrap_or(1000) as u128;
        let steps = (shape.input_len + shape.output_len) as u128;
        let widest = self.encoder_units.max(self.decoder_units) as u128;
        let layers = self.encoder_layers.max(self.decoder_layers) as u128;
        // Per step and unit: four gates, the cell and hidden states and their tanh, kept for
        // the backward pass (an overestimate for prediction, which keeps none).
        let activations = batch * steps * widest * layers * 8 * 4
            + batch * steps * shape.input.width().max(shape.output.width()) as u128 * 8;
        // Per decoder step, each head's context and weights over the input, and their gradients.
        let attention = self.attention().map_or(0, |heads| {
            let per_head = (self.memory_width() + shape.input_len) as u128;
            batch * shape.output_len as u128 * heads as u128 * per_head * 2 * 4
        });
        weights + activations + attention
    }
}

/// Largest number of LSTM cells in a layer: 8192 cells make 0.5 billion weights per layer.
pub const MAX_UNITS: usize = 8192;
/// Largest number of stacked LSTM layers in the encoder or the decoder.
pub const MAX_LAYERS: usize = 16;

/// The machine's physical memory in bytes (unbounded when the system does not say).
fn physical_memory() -> u128 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page_size <= 0 { u128::MAX } else { pages as u128 * page_size as u128 }
}

/// `1.5 GiB`, `640.0 GiB`: a size for a message.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// What the problem fixes: what an input and an output step hold, and the sequence lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub input: Features,
    pub output: Features,
    pub input_len: usize,
    pub output_len: usize,
    /// Whether some target steps are `IGNORED` (the steps after a target's end marker): the
    /// loss then averages over the others. Off for the built-in problems, whose every step counts.
    pub padded_targets: bool,
    /// The class that pads inputs on the left, if any: attention leaves it out, and a backward
    /// encoder reads it first.
    pub input_padding: Option<i64>,
    /// The class that ends an answer, if any: a beam's hypothesis stops there.
    pub end_marker: Option<i64>,
}

/// The reference's shape (12 symbols, 8 steps in, 2 out), for tests across the crate.
#[cfg(test)]
pub(crate) const REFERENCE_SHAPE: ModelShape = ModelShape::uniform(Features::Classes(12), 8, 2);

impl ModelShape {
    pub fn for_task(task: &Task) -> Self {
        let problem = task.problem();
        Self {
            input: problem.input_features(),
            output: problem.output_features(),
            input_len: problem.input_len(),
            output_len: problem.output_len(),
            padded_targets: matches!(task, Task::Pairs(_)),
            input_padding: problem.input_padding(),
            end_marker: problem.end_marker(),
        }
    }

    /// The same features in and out, every step counted: the shape of the built-in problems.
    pub const fn uniform(features: Features, input_len: usize, output_len: usize) -> Self {
        Self {
            input: features,
            output: features,
            input_len,
            output_len,
            padded_targets: false,
            input_padding: None,
            end_marker: None,
        }
    }
}

/// Where a training step writes the gradient of every trainable parameter.
#[derive(Debug)]
pub struct Gradients {
    encoder: Vec<LayerGradients>,
    /// A bidirectional encoder's backward stack.
    encoder_reverse: Vec<LayerGradients>,
    decoder: Vec<LayerGradients>,
    output_weight: Tensor,
    output_bias: Tensor,
    /// A feedback decoder's bridge and attention.
    feedback: Option<FeedbackGradients>,
    /// Every trainable variable with its slot, for autograd's gradients.
    slots: Vec<(Tensor, Tensor)>,
}

/// The encoder's hand-written forward pass, kept for the backward pass.
struct EncoderTapes {
    forward: Tape,
    reverse: Option<ReverseTape>,
}

/// A bidirectional encoder's backward stack, run on each input read backwards after its padding.
struct ReverseTape {
    tape: Tape,
    /// [`reading_backwards`]'s order, `[batch, input_len, units]`.
    order: Tensor,
}

/// The backward stack's dropout masks are streams `REVERSE_MASKS + l`, apart from the forward
/// stack's `l`.
const REVERSE_MASKS: u64 = 2 << 32;

/// A forward pass, time-major, kept for the backward pass.
struct Pass {
    encoder: Tape,
    decoder: Tape,
    /// The decoder's outputs `[output_len · batch, decoder_units]`.
    decoded: Tensor,
    /// The output layer's `[output_len · batch, width]`: logits, or values (width 1).
    values: Tensor,
}

/// A batch's rows in order of how many padding tokens each begins with, fewest first.
struct AlikeRows {
    /// The inputs' rows in that order.
    order: Tensor,
    /// Where each input's row went: `order`'s inverse.
    back: Tensor,
    /// How many rows, in that order, have read a token other than padding by each step.
    active: Vec<i64>,
}

impl AlikeRows {
    /// For inputs `[batch, steps]` of class indices; `None` when no row begins with padding.
    fn of(inputs: &Tensor, padding: i64) -> Option<AlikeRows> {
        let [batch, steps] = inputs.size()[..] else { unreachable!("inputs are [batch, steps]") };
        let ids = Vec::<i64>::try_from(inputs.flatten(0, -1)).expect("class indices are int64");
        let leading: Vec<usize> =
            ids.chunks_exact(steps as usize).map(|row| row.iter().take_while(|&&id| id == padding).count()).collect();
        if leading.iter().all(|&count| count == 0) {
            return None;
        }
        let mut order: Vec<i64> = (0..batch).collect();
        order.sort_by_key(|&row| leading[row as usize]);
        let mut back = vec![0; order.len()];
        for (place, &row) in order.iter().enumerate() {
            back[row as usize] = place as i64;
        }
        let active = (0..steps as usize).map(|t| leading.iter().filter(|&&count| count <= t).count() as i64).collect();
        let device = inputs.device();
        Some(AlikeRows {
            order: Tensor::from_slice(&order).to(device),
            back: Tensor::from_slice(&back).to(device),
            active,
        })
    }
}

/// The reference's encoder-decoder, or one of its variants.
#[derive(Debug)]
pub struct Seq2Seq {
    encoder: Lstm,
    /// With `bidirectional`: the stack that reads each input backwards (after its padding).
    encoder_reverse: Option<Lstm>,
    decoder: Lstm,
    output: nn::Linear,
    /// A feedback or attention decoder's own parts; `None` for the reference's.
    feedback: Option<Feedback>,
    config: ModelConfig,
    shape: ModelShape,
}

impl Seq2Seq {
    /// Creates the variables under `vs` (`encoder.*`, `decoder.*`, `output.*`; a variant's also
    /// `encoder_reverse.*`, `bridge.*`, `attention.*`), drawing the initial weights from
    /// libtorch's global generator (seed it with `tch::manual_seed`).
    pub fn new(vs: &nn::Path, config: &ModelConfig, shape: ModelShape) -> Self {
        let width = shape.output.width();
        let encoder_stack = |name: &str| {
            Lstm::new(vs / name, shape.input.width(), config.encoder_units, config.encoder_layers, config.dropout)
        };
        let encoder = encoder_stack("encoder");
        let encoder_reverse = config.bidirectional.then(|| encoder_stack("encoder_reverse"));
        let decoder = Lstm::new(
            vs / "decoder",
            config.decoder_input_width(&shape),
            config.decoder_units,
            config.decoder_layers,
            config.dropout,
        );
        let limit = (6.0 / (config.decoder_units + width) as f64).sqrt();
        let output = nn::linear(
            vs / "output",
            config.decoder_units as i64,
            width as i64,
            nn::LinearConfig {
                ws_init: Init::Uniform { lo: -limit, up: limit },
                bs_init: Some(Init::Const(0.0)),
                bias: true,
            },
        );
        let feedback = (config.decoder != DecoderKind::Repeat).then(|| {
            Feedback::new(
                vs,
                config.memory_width(),
                config.decoder_units,
                config.decoder_layers,
                shape.output,
                config.attention(),
            )
        });
        Self { encoder, encoder_reverse, decoder, output, feedback, config: config.clone(), shape }
    }

    /// Moves the weights of `vs` (this model's) to `device`. On a GPU with cuDNN, each LSTM's
    /// weights then become views of one buffer in cuDNN's layout (see
    /// `Lstm::share_one_cudnn_buffer`); moving the VarStore gives every variable storage of its own.
    pub fn place(&self, vs: &mut nn::VarStore, device: Device) {
        vs.set_device(device);
        if device.is_cuda() && tch::Cuda::cudnn_is_available() {
            for lstm in [&self.encoder, &self.decoder].into_iter().chain(&self.encoder_reverse) {
                lstm.share_one_cudnn_buffer();
            }
        }
    }

    /// Like [`Seq2Seq::new`], with the initial weights drawn from `seed`. A lock keeps other
    /// threads from drawing from libtorch's global generator in between.
    pub fn new_seeded(vs: &nn::Path, config: &ModelConfig, shape: ModelShape, seed: u64) -> Self {
        with_global_generator(seed, || Self::new(vs, config, shape))
    }

    /// Another handle on the same weights, for another thread: tensors may be sent between
    /// threads but not shared, and reading one storage from several threads is safe.
    pub fn replica(&self) -> Seq2Seq {
        Seq2Seq {
            encoder: self.encoder.replica(),
            encoder_reverse: self.encoder_reverse.as_ref().map(Lstm::replica),
            decoder: self.decoder.replica(),
            output: nn::Linear {
                ws: self.output.ws.shallow_clone(),
                bs: self.output.bs.as_ref().map(Tensor::shallow_clone),
            },
            feedback: self.feedback.as_ref().map(Feedback::replica),
            config: self.config.clone(),
            shape: self.shape,
        }
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Length of the fixed-size encoding (both stacks' when the encoder reads both ways).
    pub fn encoding_width(&self) -> usize {
        self.config.memory_width()
    }

    /// The fixed-length encoding `[batch, encoding_width]` of inputs `[batch, input_len]` (class
    /// indices or values): the last encoder layer's final hidden state.
    pub fn encode(&self, inputs: &Tensor) -> Tensor {
        tch::no_grad(|| match self.runs_by_hand() {
            true => self.run_encoder(inputs, None).last_output(),
            false => self.encode_with_lstm_op(inputs, false),
        })
    }

    /// For inputs `[batch, input_len]`: logits `[batch, output_len, classes]` for a task of
    /// symbols, values `[batch, output_len]` for the autoencoder. Dropout is off; a feedback
    /// decoder reads its own most probable previous token (greedy decoding).
    pub fn forward(&self, inputs: &Tensor) -> Tensor {
        tch::no_grad(|| match (&self.feedback, self.runs_by_hand()) {
            (Some(feedback), _) => {
                let encoded = self.encode_for_answers(inputs);
                feedback.greedy(&self.parts(), &encoded, self.shape.output_len as i64, self.trains_by_hand())
            }
            (None, true) => self.infer_by_hand(inputs),
            (None, false) => self.forward_with_lstm_op(inputs, false),
        })
    }

    /// [`Seq2Seq::forward`] by the hand-written passes. Where inputs are left-padded, the rows
    /// are put in order of their padding (fewest first) and the encoder computes the stretch
    /// of padding they share once ([`Lstm::forward_sharing_padding`]); the answers come back
    /// in the inputs' order.
    fn infer_by_hand(&self, inputs: &Tensor) -> Tensor {
        let Some((classes, alike)) = self.rows_alike(inputs) else { return self.infer_every_row(inputs) };
        let ordered = inputs.index_select(0, &alike.order).transpose(0, 1).contiguous();
        let encoder = self.encoder.forward_sharing_padding(&ordered, classes as i64, &alike.active);
        let values = self.batch_major(&self.decode(encoder, None).values);
        values.index_select(0, &alike.back)
    }

    /// The input's classes and its rows in order of their leading padding, for a task of
    /// left-padded classes where some row begins with padding; `None` otherwise.
    fn rows_alike(&self, inputs: &Tensor) -> Option<(usize, AlikeRows)> {
        match (self.shape.input, self.shape.input_padding) {
            (Features::Classes(classes), Some(padding)) => AlikeRows::of(inputs, padding).map(|alike| (classes, alike)),
            _ => None,
        }
    }

    /// [`Seq2Seq::forward`] by the hand-written passes, every row computed as training does.
    fn infer_every_row(&self, inputs: &Tensor) -> Tensor {
        self.batch_major(&self.run(inputs, None).values)
    }

    /// The greedy answers' class ids `[batch, output_len]`, each row decoded only until it
    /// writes the end marker (see [`Feedback::greedy_until_end`]): for a feedback decoder on a
    /// task with an end marker; `None` otherwise, where [`Seq2Seq::forward`]'s argmax is the
    /// answer.
    pub fn greedy_until_end(&self, inputs: &Tensor) -> Option<Tensor> {
        let (feedback, end) = self.feedback.as_ref().zip(self.shape.end_marker)?;
        Some(tch::no_grad(|| {
            let encoded = self.encode_for_answers(inputs);
            let steps = self.shape.output_len as i64;
            feedback.greedy_until_end(&self.parts(), &encoded, steps, end, self.trains_by_hand())
        }))
    }

    /// The `beam` most probable answers to each input, best first (see [`Feedback::beam`]);
    /// `None` for the reference's decoder, whose steps do not depend on each other (its greedy
    /// answer is already the most probable), or a task of values.
    pub fn beam(&self, inputs: &Tensor, beam: usize) -> Option<Vec<Vec<Hypothesis>>> {
        let feedback = self.feedback.as_ref().filter(|_| matches!(self.shape.output, Features::Classes(_)))?;
        Some(tch::no_grad(|| {
            let encoded = self.encode_for_answers(inputs);
            let (steps, end) = (self.shape.output_len as i64, self.shape.end_marker);
            feedback.beam(&self.parts(), &encoded, steps, beam, end, true, self.trains_by_hand())
        }))
    }

    /// Whether [`Seq2Seq::beam`] has answers to search.
    pub fn searches_beams(&self) -> bool {
        self.feedback.is_some() && matches!(self.shape.output, Features::Classes(_))
    }

    fn parts(&self) -> Parts<'_> {
        Parts { decoder: &self.decoder, output: &self.output }
    }

    /// One training step's forward and backward passes (dropout on): writes the gradient of
    /// [`Seq2Seq::loss`] for every trainable parameter into `gradients` and returns what
    /// [`Seq2Seq::forward`] would, with the loss.
    pub fn forward_backward(&self, inputs: &Tensor, targets: &Tensor, gradients: &mut Gradients) -> (Tensor, Tensor) {
        self.forward_backward_with_masks(inputs, targets, gradients, Masks::Global)
    }

    /// [`Seq2Seq::forward_backward`] with dropout masks from `masks` (the hand-written passes;
    /// libtorch's op draws its own from the global generator).
    pub fn forward_backward_with_masks(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        gradients: &mut Gradients,
        masks: Masks,
    ) -> (Tensor, Tensor) {
        if !self.trains_by_hand() {
            return match masks {
                // Another thread's share: its dropout masks come from its own seed.
                Masks::Seeded(seed) if self.config.dropout > 0.0 => {
                    with_global_generator(seed, || self.forward_backward_with_autograd(inputs, targets, gradients))
                }
                _ => self.forward_backward_with_autograd(inputs, targets, gradients),
            };
        }
        // Autograd would only record what the backward pass below does by hand.
        tch::no_grad(|| match &self.feedback {
            Some(feedback) => self.forward_backward_feedback_by_hand(feedback, inputs, targets, gradients, masks),
            None => self.forward_backward_by_hand(inputs, targets, gradients, masks),
        })
    }

    /// Whether the hand-written passes of [`crate::nn::lstm`] run this model: float32 on the CPU,
    /// where they are several times faster than libtorch's LSTM, unless
    /// [`crate::nn::device::FORCE_AUTOGRAD_VARIABLE`] is set. Elsewhere (on a GPU, cuDNN) libtorch's `lstm` op
    /// runs it, and autograd computes the gradients.
    pub fn runs_by_hand(&self) -> bool {
        self.is_reference_architecture() && self.on_cpu_in_float32() && !autograd_forced()
    }

    /// Whether training runs hand-written passes: in float32 on the CPU unless autograd is
    /// forced, every model but the reference's decoder after a bidirectional encoder (a
    /// feedback decoder's teacher-forced pass and answering step are in
    /// [`crate::nn::feedback`]; it answers by hand too).
    pub fn trains_by_hand(&self) -> bool {
        (self.feedback.is_some() || self.encoder_reverse.is_none()) && self.on_cpu_in_float32() && !autograd_forced()
    }

    /// Whether training shares each batch's rows among threads: the hand-written passes, and on
    /// the CPU in float32 also the variants, which libtorch's ops run under autograd.
    pub fn shares_batches(&self) -> bool {
        self.trains_by_hand() || (self.on_cpu_in_float32() && !self.is_reference_architecture())
    }

    /// The reference's one-way encoder and repeat decoder, which the hand-written passes run.
    fn is_reference_architecture(&self) -> bool {
        self.feedback.is_none() && self.encoder_reverse.is_none()
    }

    fn on_cpu_in_float32(&self) -> bool {
        self.output.ws.device() == Device::Cpu && self.output.ws.kind() == Kind::Float
    }

    fn forward_backward_by_hand(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        gradients: &mut Gradients,
        masks: Masks,
    ) -> (Tensor, Tensor) {
        let pass = self.run(inputs, Some(masks));
        let (loss, d_values) = self.loss_and_gradient(&pass.values, targets);
        let _ = d_values.transpose(0, 1).mm_out(&gradients.output_weight, &pass.decoded);
        let _ = d_values.sum_intlist_out(&gradients.output_bias, 0, false, d_values.kind());
        let d_decoded = d_values.mm(&self.output.ws).view([self.shape.output_len as i64, -1, self.decoder_units()]);
        let d_encoding = self
            .decoder
            .backward(&pass.decoder, OutputGradient::Every(&d_decoded), None, &mut gradients.decoder, true)
            .expect("the decoder's input is the encoding");
        self.encoder.backward(&pass.encoder, OutputGradient::Last(&d_encoding), None, &mut gradients.encoder, false);
        (self.batch_major(&pass.values), loss)
    }

    /// The hand-written passes of a feedback decoder after its encoder (one-way or
    /// bidirectional).
    fn forward_backward_feedback_by_hand(
        &self,
        feedback: &Feedback,
        inputs: &Tensor,
        targets: &Tensor,
        gradients: &mut Gradients,
        masks: Masks,
    ) -> (Tensor, Tensor) {
        let (encoder, encoded) = self.encode_by_hand(inputs, Some(masks));
        let parts = self.parts();
        let tape = feedback.teacher_forced_by_hand(&parts, &encoded, targets, masks);
        let (loss, d_values) = self.loss_and_gradient(&tape.values, targets);
        let slots = DecoderGradients {
            layers: &gradients.decoder,
            output_weight: &gradients.output_weight,
            output_bias: &gradients.output_bias,
            own: gradients.feedback.as_ref().expect("a feedback model's gradients have its slots"),
        };
        let (d_outputs, d_state) = feedback.backward_by_hand(&parts, &tape, &encoded, &d_values, slots);
        self.encoder_backward_by_hand(&encoder, d_outputs.as_ref(), &d_state, gradients);
        (self.batch_major(&tape.values), loss)
    }

    /// The encoder's hand-written forward pass, for a feedback decoder: its tapes, and what it
    /// hands the decoder as [`Seq2Seq::encode_all`] does.
    fn encode_by_hand(&self, inputs: &Tensor, masks: Option<Masks>) -> (EncoderTapes, Encoded) {
        self.encode_stacks(inputs, |stack, inputs, first_stream| self.run_stack(stack, inputs, masks, first_stream))
    }

    /// What the encoder hands a feedback decoder that answers (no dropout). Where training
    /// runs by hand, so does this, and where inputs are left-padded the rows are put in order
    /// of their padding so that each stack computes the stretch they share once (as
    /// [`Seq2Seq::infer_by_hand`] does; a backward stack reads the padding first too). The
    /// waiting rows' outputs over their padding are zeros, which attention leaves out.
    fn encode_for_answers(&self, inputs: &Tensor) -> Encoded {
        if !self.trains_by_hand() {
            return self.encode_all(inputs, false);
        }
        let Some((classes, alike)) = self.rows_alike(inputs) else { return self.encode_by_hand(inputs, None).1 };
        let ordered = inputs.index_select(0, &alike.order);
        let (_, encoded) = self.encode_stacks(&ordered, |stack, inputs, _| {
            stack.forward_sharing_padding(&inputs.transpose(0, 1).contiguous(), classes as i64, &alike.active)
        });
        encoded.select(&alike.back)
    }

    /// Runs the encoder's stacks over `inputs` `[batch, steps]` with `run` (given a stack, its
    /// inputs and its first stream of dropout masks), and puts their outputs together as the
    /// decoder reads them: a backward stack reads each input's tokens in reverse after the
    /// padding, and its outputs are put back in reading order.
    fn encode_stacks(&self, inputs: &Tensor, run: impl Fn(&Lstm, &Tensor, u64) -> Tape) -> (EncoderTapes, Encoded) {
        let padding = self.shape.input_padding.map(|pad| inputs.eq(pad));
        let forward = run(&self.encoder, inputs, 0);
        let (outputs, state) = (forward.outputs().transpose(0, 1), forward.final_state());
        let Some(stack) = &self.encoder_reverse else {
            let encoded = Encoded { outputs: outputs.contiguous(), state, padding };
            return (EncoderTapes { forward, reverse: None }, encoded);
        };
        let [batch, length] = inputs.size()[..] else { unreachable!("inputs are [batch, steps]") };
        let order = reading_backwards(padding.as_ref(), batch, length, inputs.device());
        let tape = run(stack, &inputs.gather(1, &order, false), REVERSE_MASKS);
        let order = order.unsqueeze(-1).expand([batch, length, stack.hidden()], false);
        let reversed = tape.outputs().transpose(0, 1).gather(1, &order, false);
        let encoded = Encoded::of_both_directions((outputs, state), (reversed, tape.final_state()), padding);
        (EncoderTapes { forward, reverse: Some(ReverseTape { tape, order }) }, encoded)
    }

    /// Back-propagates the gradients of [`Seq2Seq::encode_by_hand`]'s outputs (`None` when
    /// only its final state was read) and final state through its stacks.
    fn encoder_backward_by_hand(
        &self,
        tapes: &EncoderTapes,
        d_outputs: Option<&Tensor>,
        d_state: &State,
        gradients: &mut Gradients,
    ) {
        let units = self.config.encoder_units as i64;
        // Each stack's share of the last axis, the forward stack's first.
        let share = |tensor: &Tensor, first: i64| tensor.narrow(-1, first, units).contiguous();
        let shares = |first: i64| {
            let state = State { h: share(&d_state.h, first), c: share(&d_state.c, first) };
            (d_outputs.map(|d| share(d, first)), state)
        };
        let backward = |stack: &Lstm, tape: &Tape, d_outputs: Option<Tensor>, d_state: &State, slots| {
            let d_outputs = d_outputs.map(|d| d.transpose(0, 1).contiguous());
            let output = d_outputs.as_ref().map_or(OutputGradient::StateOnly, OutputGradient::Every);
            stack.backward(tape, output, Some(d_state), slots, false);
        };
        let (d_forward, d_forward_state) = shares(0);
        backward(&self.encoder, &tapes.forward, d_forward, &d_forward_state, &mut gradients.encoder);
        if let (Some(stack), Some(reverse)) = (&self.encoder_reverse, &tapes.reverse) {
            let (d_reversed, d_reverse_state) = shares(units);
            // The order is its own inverse: gathering by it again puts the gradient in reading order.
            let d_reversed = d_reversed.map(|d| d.gather(1, &reverse.order, false));
            backward(stack, &reverse.tape, d_reversed, &d_reverse_state, &mut gradients.encoder_reverse);
        }
    }

    /// [`Seq2Seq::loss`] of the output layer's time-major `values` `[output_len · batch, width]`
    /// for `targets` `[batch, output_len]`, and its gradient with respect to `values`.
    fn loss_and_gradient(&self, values: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        let targets = targets.transpose(0, 1).reshape([-1]);
        match self.shape.output {
            Features::Classes(_) => {
                let log_probs = values.log_softmax(1, values.kind());
                // nll_loss leaves IGNORED steps out and averages over the others.
                let loss = log_probs.nll_loss(&targets);
                // d(mean of -log p[target]) / d log p, then through the log-softmax.
                let mut d_log_probs = log_probs.zeros_like();
                if self.shape.padded_targets {
                    let counted = targets.ne(IGNORED);
                    let count = counted.sum(Kind::Int64).int64_value(&[]).max(1) as f64;
                    let scale = counted.to_kind(log_probs.kind()).unsqueeze(1) * (-1.0 / count);
                    let _ = d_log_probs.scatter_(1, &targets.clamp_min(0).unsqueeze(1), &scale);
                } else {
                    let count = targets.size()[0] as f64;
                    let _ = d_log_probs.scatter_value_(1, &targets.unsqueeze(1), -1.0 / count);
                }
                let d_values =
                    Tensor::internal_log_softmax_backward_data(&d_log_probs, &log_probs, 1, log_probs.kind());
                (loss, d_values)
            }
            Features::Value => {
                let values = values.view([-1]);
                let loss = values.mse_loss(&targets, Reduction::Mean);
                let one = Tensor::ones([], (values.kind(), values.device()));
                (loss, values.mse_loss_backward(&one, &targets, Reduction::Mean).view([-1, 1]))
            }
        }
    }

    /// The gradients by libtorch's `lstm` op and autograd, copied into their slots.
    pub(crate) fn forward_backward_with_autograd(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        gradients: &mut Gradients,
    ) -> (Tensor, Tensor) {
        let output = match &self.feedback {
            Some(feedback) => {
                let encoded = self.encode_all(inputs, true);
                feedback.teacher_forced(&self.parts(), &encoded, targets, true)
            }
            None => self.forward_with_lstm_op(inputs, true),
        };
        let loss = self.loss(&output, targets);
        let variables: Vec<&Tensor> = gradients.slots.iter().map(|(variable, _)| variable).collect();
        let grads = Tensor::run_backward(&[&loss], &variables, false, false);
        tch::no_grad(|| {
            for ((_, slot), grad) in gradients.slots.iter_mut().zip(&grads) {
                slot.copy_(grad);
            }
        });
        (output.detach(), loss.detach())
    }

    /// Where [`Seq2Seq::forward_backward`] writes each parameter's gradient: `slot(variable)`
    /// gives a tensor shaped like `variable`.
    pub fn gradients(&self, slot: impl Fn(&Tensor) -> Tensor) -> Gradients {
        let layers = |lstm: &Lstm| {
            lstm.trainable()
                .map(|[w_ih, w_hh, b_ih]| LayerGradients { w_ih: slot(w_ih), w_hh: slot(w_hh), b_ih: slot(b_ih) })
                .collect()
        };
        let bias = self.output.bs.as_ref().expect("the output layer has a bias");
        let mut variables: Vec<&Tensor> = self.encoder.trainable().flatten().collect();
        variables.extend(self.encoder_reverse.iter().flat_map(Lstm::trainable).flatten());
        variables.extend(self.decoder.trainable().flatten());
        variables.extend([&self.output.ws, bias]);
        variables.extend(self.feedback.iter().flat_map(Feedback::trainable));
        Gradients {
            encoder: layers(&self.encoder),
            encoder_reverse: self.encoder_reverse.as_ref().map(layers).unwrap_or_default(),
            decoder: layers(&self.decoder),
            output_weight: slot(&self.output.ws),
            output_bias: slot(bias),
            feedback: self.feedback.as_ref().map(|feedback| feedback.gradients(&slot)),
            slots: variables.into_iter().map(|variable| (variable.shallow_clone(), slot(variable))).collect(),
        }
    }

    /// [`Seq2Seq::encode`] by libtorch's `lstm` op, differentiable by autograd.
    fn encode_with_lstm_op(&self, inputs: &Tensor, train: bool) -> Tensor {
        let layers = self.config.encoder_layers as i64;
        self.encode_all(inputs, train).state.h.get(layers - 1)
    }

    /// Everything the encoder makes of `inputs` by libtorch's `lstm` op: its outputs, its final
    /// state and where the inputs are padding. A backward stack reads each input's tokens in
    /// reverse after the padding (as `pack_padded_sequence` would have it read them); its
    /// outputs are put back in reading order.
    fn encode_all(&self, inputs: &Tensor, train: bool) -> Encoded {
        let kind = self.output.ws.kind();
        let steps = match self.shape.input {
            Features::Classes(n) => inputs.one_hot(n as i64).to_kind(kind),
            Features::Value => inputs.unsqueeze(-1),
        };
        let padding = self.shape.input_padding.map(|pad| inputs.eq(pad));
        let (outputs, state) = self.encoder.run_with_lstm_op(&steps, &self.encoder.zero_state(&steps), train);
        let Some(reverse) = &self.encoder_reverse else { return Encoded { outputs, state, padding } };
        let [batch, length] = inputs.size()[..] else { unreachable!("inputs are [batch, steps]") };
        let order = reading_backwards(padding.as_ref(), batch, length, inputs.device()).unsqueeze(-1);
        let backwards = steps.gather(1, &order.expand([batch, length, steps.size()[2]], false), false);
        let (reversed, reverse_state) = reverse.run_with_lstm_op(&backwards, &reverse.zero_state(&backwards), train);
        let reversed = reversed.gather(1, &order.expand([batch, length, reverse.hidden()], false), false);
        Encoded::of_both_directions((outputs, state), (reversed, reverse_state), padding)
    }

    /// [`Seq2Seq::forward`] by libtorch's `lstm` op, differentiable by autograd: how a GPU runs
    /// the model, and the oracle that the tests hold the hand-written passes to.
    pub(crate) fn forward_with_lstm_op(&self, inputs: &Tensor, train: bool) -> Tensor {
        let encoded = self.encode_with_lstm_op(inputs, train);
        let [batch, units] = encoded.size()[..] else { unreachable!("the encoding is two-dimensional") };
        let repeated = encoded.unsqueeze(1).expand([batch, self.shape.output_len as i64, units], false);
        let (decoded, _) = self.decoder.forward_with_lstm_op(&repeated, train);
        let output = nn::Module::forward(&self.output, &decoded);
        match self.shape.output {
            Features::Classes(_) => output,
            Features::Value => output.squeeze_dim(-1),
        }
    }

    fn decoder_units(&self) -> i64 {
        self.config.decoder_units as i64
    }

    fn run_encoder(&self, inputs: &Tensor, masks: Option<Masks>) -> Tape {
        self.run_stack(&self.encoder, inputs, masks, 0)
    }

    /// An encoder stack's hand-written forward pass over `inputs` `[batch, input_len]`, its
    /// dropout masks from streams `first_stream` on.
    fn run_stack(&self, stack: &Lstm, inputs: &Tensor, masks: Option<Masks>, first_stream: u64) -> Tape {
        let time_major = inputs.transpose(0, 1).contiguous();
        let steps = match self.shape.input {
            Features::Classes(classes) => StepInputs::Classes { indices: time_major, classes: classes as i64 },
            Features::Value => StepInputs::Dense(time_major.unsqueeze(-1)),
        };
        stack.forward_with_mask_streams(steps, masks, first_stream)
    }

    /// The whole network, time-major.
    fn run(&self, inputs: &Tensor, masks: Option<Masks>) -> Pass {
        self.decode(self.run_encoder(inputs, masks), masks)
    }

    /// The repeat decoder and output layer over the encoder's pass.
    fn decode(&self, encoder: Tape, masks: Option<Masks>) -> Pass {
        // RepeatVector: the same encoding is the decoder's input at every output step.
        let steps = self.shape.output_len as i64;
        let decoder = self.decoder.forward(StepInputs::Repeated { features: encoder.last_output(), steps }, masks);
        // TimeDistributed(Dense): one linear layer shared by every output step.
        let decoded = decoder.outputs().view([-1, self.decoder_units()]);
        let bias = self.output.bs.as_ref().expect("the output layer has a bias");
        let values = bias.addmm(&decoded, &self.output.ws.transpose(0, 1));
        Pass { encoder, decoder, decoded, values }
    }

    /// `[output_len · batch, width]` → `[batch, output_len, classes]` or `[batch, output_len]`.
    fn batch_major(&self, values: &Tensor) -> Tensor {
        let by_step = values.view([self.shape.output_len as i64, -1, values.size()[1]]).transpose(0, 1).contiguous();
        match self.shape.output {
            Features::Classes(_) => by_step,
            Features::Value => by_step.squeeze_dim(-1),
        }
    }

    /// Characters: mean categorical cross-entropy over every output character (the softmax is in
    /// the loss). Values: mean squared error over every output step.
    pub fn loss(&self, output: &Tensor, targets: &Tensor) -> Tensor {
        match self.shape.output {
            Features::Classes(classes) => output.view([-1, classes as i64]).cross_entropy_loss::<Tensor>(
                &targets.view([-1]),
                None,
                Reduction::Mean,
                IGNORED,
                0.0,
            ),
            Features::Value => output.mse_loss(targets, Reduction::Mean),
        }
    }

    /// Trainable parameters, the number Keras's summary calls "Total params".
    pub fn parameter_count(&self) -> i64 {
        let output = self.output.ws.numel() as i64 + self.output.bs.as_ref().map_or(0, |b| b.numel() as i64);
        let reverse = self.encoder_reverse.as_ref().map_or(0, Lstm::parameter_count);
        let feedback: i64 = self.feedback.iter().flat_map(Feedback::trainable).map(|t| t.numel() as i64).sum();
        self.encoder.parameter_count() + reverse + self.decoder.parameter_count() + feedback + output
    }

    /// A table like Keras's `model.summary()`: every layer, its output shape, its parameters.
    pub fn summary(&self) -> String {
        let ModelShape { output: features, input_len, output_len, .. } = self.shape;
        let (enc, dec, dropout) = (self.config.encoder_units, self.config.decoder_units, self.config.dropout);
        let mut rows: Vec<(String, String, i64)> = Vec::new();
        let stack = |rows: &mut Vec<(String, String, i64)>,
                     name: &str,
                     lstm: &Lstm,
                     steps: usize,
                     units: usize,
                     last_returns_sequence: bool| {
            let counts = lstm.layer_parameter_counts();
            let layers = counts.len();
            for (layer, params) in counts.into_iter().enumerate() {
                let label = if layers > 1 { format!("{name}_{} (LSTM)", layer + 1) } else { format!("{name} (LSTM)") };
                let returns_sequence = layer + 1 < layers || last_returns_sequence;
                let shape =
                    if returns_sequence { format!("(None, {steps}, {units})") } else { format!("(None, {units})") };
                rows.push((label, shape.clone(), params));
                if layer + 1 < layers && dropout > 0.0 {
                    rows.push((format!("{name}_dropout_{} (Dropout {dropout})", layer + 1), shape, 0));
                }
            }
        };
        // A feedback decoder attends to every encoder step, and a repeat one reads the last.
        let encoder_sequence = self.feedback.as_ref().is_some_and(Feedback::attends);
        stack(&mut rows, "encoder", &self.encoder, input_len, enc, encoder_sequence);
        if let Some(reverse) = &self.encoder_reverse {
            stack(&mut rows, "encoder_reverse", reverse, input_len, enc, encoder_sequence);
        }
        let memory = self.config.memory_width();
        let width = features.width();
        let (bridge, attention) = match self.config.decoder {
            DecoderKind::Repeat => {
                rows.push(("repeat (RepeatVector)".to_owned(), format!("(None, {output_len}, {memory})"), 0));
                (0, 0)
            }
            _ => Feedback::parameter_counts(memory, dec, self.config.attention()),
        };
        if self.feedback.is_some() {
            rows.push(("bridge (Dense h, c)".to_owned(), format!("(None, {dec})"), bridge as i64));
            let token = format!("(None, {output_len}, {})", width + 1);
            rows.push(("previous token (one-hot + start)".to_owned(), token, 0));
        }
        stack(&mut rows, "decoder", &self.decoder, output_len, dec, true);
        if attention > 0 {
            let heads = match self.config.attention_heads {
                1 => String::new(),
                heads => format!(", {heads} heads"),
            };
            rows.push((
                format!("attention (Luong general, fed{heads})"),
                format!("(None, {output_len}, {dec})"),
                attention as i64,
            ));
        }
        let output_shape = format!("(None, {output_len}, {width})");
        rows.push(("output (TimeDistributed(Dense))".to_owned(), output_shape, (dec * width + width) as i64));
        // Keras's columns, widened where a name or shape would run into the next column.
        let widest = |column: fn(&(String, String, i64)) -> &String, least: usize| {
            rows.iter().map(|row| column(row).chars().count() + 1).max().unwrap_or(0).max(least)
        };
        let (names, shapes) = (widest(|row| &row.0, 34), widest(|row| &row.1, 24));
        let (rule, double_rule) = ("_".repeat(names + shapes + 14), "=".repeat(names + shapes + 14));
        let mut text =
            format!("{rule}\n{:<names$}{:<shapes$}{:>14}\n{double_rule}\n", "Layer (type)", "Output Shape", "Param #");
        for (name, shape, params) in rows {
            text.push_str(&format!("{name:<names$}{shape:<shapes$}{:>14}\n", group_thousands(params)));
        }
        let total = group_thousands(self.parameter_count());
        text.push_str(&format!(
            "{double_rule}\nTotal params: {total}\nTrainable params: {total}\nNon-trainable params: 0\n{rule}"
        ));
        text
    }
}

/// `52212` → `52,212`, as Keras prints parameter counts.
fn group_thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use tch::{Device, Kind};

    /// The count that sizes the memory check is the one the built model has.
    #[test]
    fn parameter_count_from_the_config_matches_the_built_model() {
        let shapes = [ModelShape::uniform(Features::Classes(12), 8, 2), ModelShape::uniform(Features::Value, 9, 9)];
        for shape in shapes {
            for config in [
                ModelConfig::default(),
                variant(DecoderKind::Feedback, false),
                ModelConfig { encoder_layers: 3, decoder_layers: 2, ..variant(DecoderKind::Attention, true) },
                ModelConfig { attention_heads: 5, ..variant(DecoderKind::Attention, true) },
                ModelConfig { encoder_layers: 1, decoder_layers: 2, ..variant(DecoderKind::Repeat, true) },
                ModelConfig {
                    encoder_units: 7,
                    decoder_units: 5,
                    encoder_layers: 3,
                    decoder_layers: 2,
                    dropout: 0.1,
                    ..Default::default()
                },
            ] {
                let vs = nn::VarStore::new(Device::Cpu);
                let model = Seq2Seq::new_seeded(&vs.root(), &config, shape, 1);
                assert_eq!(config.parameter_count(&shape), model.parameter_count() as u128, "{config:?} {shape:?}");
            }
        }
    }

    #[test]
    fn sizes_past_the_limits_or_the_memory_are_refused() {
        let shape = ModelShape::uniform(Features::Classes(12), 8, 2);
        let huge = ModelConfig {
            encoder_units: MAX_UNITS,
            decoder_units: MAX_UNITS,
            encoder_layers: MAX_LAYERS,
            decoder_layers: MAX_LAYERS,
            ..Default::default()
        };
        huge.validate().expect("within each limit");
        let error = huge.check_memory(&shape, Some(32)).expect_err("far beyond any machine's memory").to_string();
        assert!(error.contains("would need about") && error.contains("GiB to train"), "{error}");
        ModelConfig::default().check_memory(&shape, Some(32)).expect("the reference fits");
        // Each head of attention reads the whole memory at every step of the answer.
        let words = ModelShape::uniform(Features::Classes(40), 64, 64);
        let attention = |heads| ModelConfig {
            decoder: DecoderKind::Attention,
            attention_heads: heads,
            encoder_units: 64,
            decoder_units: 64,
            bidirectional: true,
            ..Default::default()
        };
        let (one, many) = (attention(1), attention(64));
        let heads_parameters = (many.parameter_count(&words) - one.parameter_count(&words)) * 4 * 4;
        let contexts = 4096 * 64 * 63 * (128 + 64) * 2 * 4;
        assert_eq!(
            many.memory_needed(&words, Some(4096)) - one.memory_needed(&words, Some(4096)),
            heads_parameters + contexts
        );
        assert!(ModelConfig { encoder_units: MAX_UNITS + 1, ..ModelConfig::default() }.validate().is_err());
        assert!(ModelConfig { decoder_layers: MAX_LAYERS + 1, ..ModelConfig::default() }.validate().is_err());
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    /// A batch of 16 from a private generator (libtorch's global one belongs to the
    /// constructors, which other tests run in parallel).
    fn random_batch(shape: ModelShape, kind: Kind, seed: u64) -> (Tensor, Tensor) {
        let mut rng = StdRng::seed_from_u64(seed);
        let draw = |rng: &mut StdRng, steps: usize| match shape.input {
            Features::Classes(n) => {
                let indices: Vec<i64> = (0..16 * steps).map(|_| rng.random_range(0..n as i64)).collect();
                Tensor::from_slice(&indices).view([16, steps as i64])
            }
            Features::Value => {
                let values: Vec<f64> = (0..16 * steps).map(|_| rng.random_range(-1.0..1.0)).collect();
                Tensor::from_slice(&values).view([16, steps as i64]).to_kind(kind)
            }
        };
        let inputs = draw(&mut rng, shape.input_len);
        let targets = match shape.output {
            Features::Classes(n) => {
                // Each row ends after a random step; with padded targets the steps after it are IGNORED.
                let mut ids: Vec<i64> = (0..16 * shape.output_len).map(|_| rng.random_range(0..n as i64)).collect();
                if shape.padded_targets {
                    for row in ids.chunks_mut(shape.output_len) {
                        let end = rng.random_range(0..shape.output_len);
                        row[end + 1..].fill(IGNORED);
                    }
                }
                Tensor::from_slice(&ids).view([16, shape.output_len as i64])
            }
            Features::Value => draw(&mut rng, shape.output_len),
        };
        (inputs, targets)
    }

    /// `forward_backward`'s output, loss and gradients (by variable name).
    fn by_hand(
        vs: &nn::VarStore,
        model: &Seq2Seq,
        batch: &(Tensor, Tensor),
    ) -> (Tensor, Tensor, BTreeMap<String, Tensor>) {
        let slots: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, variable)| variable.requires_grad())
            .map(|(name, variable)| (name, variable.zeros_like()))
            .collect();
        let variables = vs.variables();
        let mut gradients = model.gradients(|variable| {
            let (name, _) = variables.iter().find(|(_, v)| v.data_ptr() == variable.data_ptr()).expect("a variable");
            slots[name].shallow_clone()
        });
        let (output, loss) = model.forward_backward(&batch.0, &batch.1, &mut gradients);
        (output, loss, slots)
    }

    /// The same from libtorch's `lstm` op and autograd (no dropout).
    fn by_autograd(
        vs: &nn::VarStore,
        model: &Seq2Seq,
        batch: &(Tensor, Tensor),
    ) -> (Tensor, Tensor, BTreeMap<String, Tensor>) {
        let output = match &model.feedback {
            Some(feedback) => {
                feedback.teacher_forced(&model.parts(), &model.encode_all(&batch.0, false), &batch.1, false)
            }
            None => model.forward_with_lstm_op(&batch.0, false),
        };
        let loss = model.loss(&output, &batch.1);
        let trainable: BTreeMap<String, Tensor> =
            vs.variables().into_iter().filter(|(_, variable)| variable.requires_grad()).collect();
        let variables: Vec<&Tensor> = trainable.values().collect();
        let grads = Tensor::run_backward(&[&loss], &variables, false, false);
        (output.detach(), loss.detach(), trainable.into_keys().zip(grads).collect())
    }

    /// Largest difference, relative to the largest magnitude of `expected`.
    fn relative_difference(ours: &Tensor, expected: &Tensor) -> f64 {
        let scale = expected.abs().max().double_value(&[]).max(1e-30);
        (ours - expected).abs().max().double_value(&[]) / scale
    }

    fn assert_matches_autograd(config: ModelConfig, shape: ModelShape) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &config, shape, 4);
        let batch = random_batch(shape, Kind::Float, 9);
        let (output, loss, grads) = by_hand(&vs, &model, &batch);
        let inference = model.forward(&batch.0);
        let (expected_output, expected_loss, expected_grads) = by_autograd(&vs, &model, &batch);
        assert!(relative_difference(&output, &expected_output) < 1e-5, "outputs differ");
        // A feedback decoder's inference reads its own tokens, not the targets. The reference's
        // decoder computes every row as training does, but for the rows that share leading
        // padding in inference, which round in the last bits (see the test of alike rows).
        let every_row = || tch::no_grad(|| model.infer_every_row(&batch.0));
        assert!(model.feedback.is_some() || every_row().equal(&output), "forward and forward_backward differ");
        assert!(model.feedback.is_some() || relative_difference(&inference, &output) < 1e-6, "inference differs");
        assert!(relative_difference(&loss, &expected_loss) < 1e-6, "{loss} vs {expected_loss}");
        assert_eq!(grads.keys().collect::<Vec<_>>(), expected_grads.keys().collect::<Vec<_>>());
        for (name, grad) in &grads {
            let difference = relative_difference(grad, &expected_grads[name]);
            assert!(difference < 1e-4, "{name}: relative difference {difference:e}");
        }
    }

    fn stacked() -> ModelConfig {
        ModelConfig {
            encoder_units: 20,
            decoder_units: 16,
            encoder_layers: 2,
            decoder_layers: 3,
            dropout: 0.0,
            ..Default::default()
        }
    }

    /// A model of pairs: other widths in and out, and the steps after each target's end left
    /// out of the loss and its gradient.
    #[test]
    fn hand_written_passes_match_autograd_with_padded_targets() {
        let pairs = ModelShape {
            input: Features::Classes(7),
            output: Features::Classes(11),
            input_len: 5,
            output_len: 4,
            padded_targets: true,
            input_padding: Some(0),
            end_marker: Some(0),
        };
        assert_matches_autograd(ModelConfig::default(), pairs);
        assert_matches_autograd(stacked(), pairs);
    }

    #[test]
    fn hand_written_passes_match_autograd_on_the_reference_model() {
        assert_matches_autograd(ModelConfig::default(), REFERENCE_SHAPE);
    }

    #[test]
    fn hand_written_passes_match_autograd_on_stacked_layers_and_values() {
        let values = ModelShape::uniform(Features::Value, 6, 6);
        let one_step = ModelShape::uniform(Features::Classes(5), 1, 1);
        assert_matches_autograd(stacked(), REFERENCE_SHAPE);
        assert_matches_autograd(ModelConfig::default(), values);
        assert_matches_autograd(stacked(), values);
        assert_matches_autograd(stacked(), one_step);
    }

    /// A feedback decoder's teacher-forced pass by hand, after the hand-written encoder (one-way
    /// and bidirectional): with and without attention (one head and two), padded pairs, values,
    /// one step, and stacks where the decoder has more layers than the encoder (the bridge reads
    /// one encoder layer twice) and fewer.
    #[test]
    fn hand_written_feedback_passes_match_autograd() {
        let pairs = ModelShape { input: Features::Classes(7), output: Features::Classes(11), ..PADDED };
        let values = ModelShape::uniform(Features::Value, 6, 5);
        let one_step = ModelShape::uniform(Features::Classes(5), 3, 1);
        for (decoder, bidirectional) in
            [DecoderKind::Feedback, DecoderKind::Attention].into_iter().flat_map(|d| [(d, false), (d, true)])
        {
            let one = variant(decoder, bidirectional);
            let taller = ModelConfig { encoder_layers: 2, decoder_layers: 3, ..one.clone() };
            let shorter = ModelConfig { encoder_layers: 3, decoder_layers: 2, ..one.clone() };
            let heads =
                (decoder == DecoderKind::Attention).then(|| ModelConfig { attention_heads: 2, ..shorter.clone() });
            for config in [one, taller, shorter].into_iter().chain(heads) {
                for shape in [pairs, REFERENCE_SHAPE, values, one_step] {
                    let vs = nn::VarStore::new(Device::Cpu);
                    assert!(Seq2Seq::new_seeded(&vs.root(), &config, shape, 0).trains_by_hand());
                    assert_matches_autograd(config.clone(), shape);
                }
            }
        }
    }

    /// Anything but float32 on the CPU (a GPU's case) trains by libtorch's op and autograd:
    /// in double precision, its gradients land in the same slots as the hand-written ones.
    #[test]
    fn the_lstm_op_path_fills_every_gradient_slot() {
        for shape in [REFERENCE_SHAPE, ModelShape::uniform(Features::Value, 4, 4)] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = Seq2Seq::new_seeded(&vs.root(), &stacked(), shape, 8);
            let batch = random_batch(shape, Kind::Float, 4);
            let (output, loss, grads) = by_hand(&vs, &model, &batch);
            vs.double();
            let values = if shape.input == Features::Value { Kind::Double } else { Kind::Int64 };
            let batch = (batch.0.to_kind(values), batch.1.to_kind(values));
            let (double_output, double_loss, double_grads) = by_hand(&vs, &model, &batch);
            assert_eq!(double_output.kind(), Kind::Double);
            assert!(relative_difference(&output.to_kind(Kind::Double), &double_output) < 1e-5);
            assert!(relative_difference(&loss.to_kind(Kind::Double), &double_loss) < 1e-6);
            for (name, grad) in &grads {
                let difference = relative_difference(&grad.to_kind(Kind::Double), &double_grads[name]);
                assert!(difference < 1e-4, "{name}: relative difference {difference:e}");
            }
        }
    }

    /// With dropout, libtorch's op draws other masks, so the gradient is checked against the
    /// loss itself: a central difference along a random unit direction, with the same masks
    /// drawn each time. In float32 the two agree to 0.15% here; leaving the masks out of the
    /// backward pass, for one, puts them 16% apart (the attention decoder's alone, 8%; a
    /// bidirectional encoder's backward stack's alone, 1.5%).
    #[test]
    fn gradients_with_dropout_match_finite_differences() {
        let decoders = [(DecoderKind::Repeat, false), (DecoderKind::Attention, false), (DecoderKind::Attention, true)];
        for (features, (decoder, bidirectional)) in
            [Features::Classes(12), Features::Value].into_iter().flat_map(|f| decoders.map(|d| (f, d)))
        {
            let shape = ModelShape::uniform(features, 5, 3);
            let vs = nn::VarStore::new(Device::Cpu);
            let config = ModelConfig { dropout: 0.4, decoder, bidirectional, ..stacked() };
            let model = Seq2Seq::new_seeded(&vs.root(), &config, shape, 2);
            assert!(model.trains_by_hand());
            let batch = random_batch(shape, Kind::Float, 3);
            let loss_and_grads = || with_global_generator(17, || by_hand(&vs, &model, &batch));
            let (_, _, grads) = loss_and_grads();
            let mut rng = StdRng::seed_from_u64(1);
            let variables = vs.variables();
            let mut direction: BTreeMap<&String, Tensor> = grads
                .iter()
                .map(|(name, grad)| {
                    let values: Vec<f32> = (0..grad.numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
                    (name, Tensor::from_slice(&values).view(grad.size().as_slice()))
                })
                .collect();
            let norm = direction.values().map(|d| d.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
            direction.values_mut().for_each(|d| *d /= norm);
            let analytic: f64 =
                grads.iter().map(|(name, grad)| (grad * &direction[name]).sum(Kind::Double).double_value(&[])).sum();
            // Larger than float32's rounding of the loss over smaller steps (2% at 0.01 here).
            let step = 0.1;
            let shifted_loss = |by: f64| {
                tch::no_grad(|| {
                    for (name, d) in &direction {
                        let _ = variables[*name].shallow_clone().g_add_(&(d * by));
                    }
                });
                let loss = loss_and_grads().1.double_value(&[]);
                tch::no_grad(|| {
                    for (name, d) in &direction {
                        let _ = variables[*name].shallow_clone().g_sub_(&(d * by));
                    }
                });
                loss
            };
            let numeric = (shifted_loss(step) - shifted_loss(-step)) / (2.0 * step);
            assert!(
                (numeric - analytic).abs() < 1e-2 * analytic.abs(),
                "{numeric} vs {analytic} ({features:?}, {decoder:?})"
            );
        }
    }

    /// Tests run in parallel threads: every model is built under the generator lock.
    fn reference_model(vs: &nn::VarStore) -> Seq2Seq {
        Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), REFERENCE_SHAPE, 0)
    }

    #[test]
    fn has_the_reference_parameter_count_per_layer() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = reference_model(&vs);
        assert_eq!(model.encoder.parameter_count(), 26_400);
        assert_eq!(model.decoder.parameter_count(), 25_200);
        assert_eq!(model.parameter_count(), 52_212);
        let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(trainable, 52_212);
        let summary = model.summary();
        assert!(summary.contains("Total params: 52,212"), "{summary}");
        assert!(summary.contains("(None, 2, 75)"), "{summary}");
    }

    #[test]
    fn outputs_one_distribution_per_output_step() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = reference_model(&vs);
        let inputs = Tensor::from_slice(&[11i64, 3, 10, 1, 0, 10, 1, 0]).view([1, 8]).repeat([5, 1]);
        assert_eq!(model.forward(&inputs).size(), vec![5, 2, 12]);
        assert_eq!(model.encode(&inputs).size(), vec![5, 75]);
    }

    #[test]
    fn initialises_as_keras_does() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), REFERENCE_SHAPE, 3);
        let vars = vs.variables();
        let w_hh = &vars["encoder.weight_hh_l0"];
        // Orthogonal: the 75 columns of the [300, 75] recurrent kernel are orthonormal.
        let gram = w_hh.transpose(0, 1).matmul(w_hh);
        let identity = Tensor::eye(75, (Kind::Float, Device::Cpu));
        assert!(gram.allclose(&identity, 1e-4, 1e-4, false));
        // Glorot-uniform: bounded by sqrt(6 / (12 + 300)) and spread over most of that range.
        let limit = (6.0f64 / 312.0).sqrt();
        let w_ih = &vars["encoder.weight_ih_l0"];
        let max = w_ih.abs().max().double_value(&[]);
        assert!(max <= limit && max > 0.9 * limit, "max {max} vs limit {limit}");
        // Forget-gate bias 1, every other bias 0.
        let bias = Vec::<f32>::try_from(&vars["decoder.bias_ih_l0"]).expect("float bias");
        assert!(bias[..50].iter().all(|&b| b == 0.0));
        assert!(bias[50..100].iter().all(|&b| b == 1.0));
        assert!(bias[100..].iter().all(|&b| b == 0.0));
        assert_eq!(vars["decoder.bias_hh_l0"].abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(vars["output.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn same_seed_same_weights() {
        let weights = |seed| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), REFERENCE_SHAPE, seed);
            vs.variables()["decoder.weight_hh_l0"].copy()
        };
        assert!(weights(11).equal(&weights(11)));
        assert!(!weights(11).equal(&weights(12)));
    }

    #[test]
    fn summary_shows_every_stacked_layer_and_dropout() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig { encoder_layers: 2, decoder_layers: 3, dropout: 0.2, ..Default::default() };
        let model = Seq2Seq::new_seeded(&vs.root(), &config, REFERENCE_SHAPE, 0);
        let summary = model.summary();
        for row in ["encoder_1 (LSTM)", "encoder_2 (LSTM)", "decoder_3 (LSTM)", "decoder_dropout_2", "(None, 8, 75)"] {
            assert!(summary.contains(row), "{row} missing from\n{summary}");
        }
        // Second encoder layer: 4·75·(75 + 75) + 4·75 parameters.
        assert!(summary.contains("45,300"), "{summary}");
        let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(model.parameter_count(), trainable);
        let inputs = Tensor::zeros([4, 8], (Kind::Int64, Device::Cpu));
        // Not in training mode: dropout would draw from the generator that other tests seed.
        assert_eq!(model.forward(&inputs).size(), vec![4, 2, 12]);
        assert_eq!(summary.lines().next().map(str::len), Some(72), "Keras's width where every name fits");

        // Longer names widen their column rather than run into the shapes.
        let config = ModelConfig {
            decoder: DecoderKind::Attention,
            attention_heads: 5,
            bidirectional: true,
            encoder_layers: 2,
            dropout: 0.125,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let summary = Seq2Seq::new_seeded(&vs.root(), &config, REFERENCE_SHAPE, 0).summary();
        assert!(summary.contains("attention (Luong general, fed, 5 heads)   (None, 2, 50)"), "{summary}");
        assert!(summary.contains("encoder_reverse_dropout_1 (Dropout 0.125) (None"), "{summary}");
        let widths: Vec<usize> = summary.lines().filter(|line| line.contains("(None")).map(str::len).collect();
        assert!(widths.windows(2).all(|pair| pair[0] == pair[1]), "{summary}");
    }

    #[test]
    fn autoencoder_reads_and_writes_one_value_per_step() {
        let vs = nn::VarStore::new(Device::Cpu);
        let shape = ModelShape::uniform(Features::Value, 9, 9);
        let model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), shape, 0);
        // Not Tensor::rand: other tests seed libtorch's global generator in parallel.
        let inputs = Tensor::arange(27, (Kind::Float, Device::Cpu)).view([3, 9]) / 27.0;
        let output = model.forward(&inputs);
        assert_eq!(output.size(), vec![3, 9]);
        assert_eq!(model.encode(&inputs).size(), vec![3, 75]);
        let loss = model.loss(&output, &inputs);
        let expected = (&output - &inputs).square().mean(Kind::Float);
        assert!(loss.allclose(&expected, 1e-6, 1e-7, false));
        // Encoder input kernel [300, 1], output layer [1, 50] + [1].
        assert_eq!(model.parameter_count(), (300 + 300 * 75 + 300) + 25_200 + 51);
    }

    #[test]
    fn rejects_empty_layers_and_bad_dropout() {
        assert!(ModelConfig { encoder_units: 0, ..Default::default() }.validate().is_err());
        assert!(ModelConfig { dropout: 1.0, ..Default::default() }.validate().is_err());
        assert!(ModelConfig::default().validate().is_ok());
    }

    /// Heads slice the decoder's units evenly, and only the attention decoder has them.
    #[test]
    fn attention_heads_divide_the_units_of_an_attention_decoder() {
        let heads = |decoder, attention_heads| ModelConfig { attention_heads, ..variant(decoder, false) }.validate();
        assert!(heads(DecoderKind::Attention, 2).is_ok());
        assert!(heads(DecoderKind::Attention, 10).is_ok());
        let uneven = heads(DecoderKind::Attention, 3).expect_err("10 units in 3 heads");
        assert!(uneven.to_string().contains("10 decoder units, 3 heads"), "{uneven}");
        assert!(heads(DecoderKind::Attention, 0).is_err());
        let elsewhere = heads(DecoderKind::Feedback, 2).expect_err("feedback has no attention");
        assert!(elsewhere.to_string().contains("--decoder attention"), "{elsewhere}");
        assert!(heads(DecoderKind::Repeat, 1).is_ok());
    }

    fn variant(decoder: DecoderKind, bidirectional: bool) -> ModelConfig {
        ModelConfig { encoder_units: 12, decoder_units: 10, decoder, bidirectional, ..Default::default() }
    }

    /// A small padded task of symbols: 6 classes, inputs left-padded with class 0, answers of 4
    /// steps that may end at class 0.
    const PADDED: ModelShape = ModelShape {
        input: Features::Classes(6),
        output: Features::Classes(6),
        input_len: 5,
        output_len: 4,
        padded_targets: true,
        input_padding: Some(0),
        end_marker: Some(0),
    };

    fn padded_inputs() -> Tensor {
        Tensor::from_slice(&[0i64, 0, 3, 1, 2, 5, 4, 3, 2, 1, 0, 0, 0, 2, 2]).view([3, 5])
    }

    /// Greedy decoding feeds back the most probable token; teacher forcing on those very
    /// tokens must then give the same outputs (one op over all steps without attention, a
    /// loop of steps with it). The same for values.
    #[test]
    fn greedy_decoding_is_teacher_forcing_on_its_own_answers() {
        for (decoder, bidirectional) in
            [(DecoderKind::Feedback, false), (DecoderKind::Attention, false), (DecoderKind::Attention, true)]
        {
            let vs = nn::VarStore::new(Device::Cpu);
            let config = ModelConfig { decoder_layers: 2, encoder_layers: 2, ..variant(decoder, bidirectional) };
            let model = Seq2Seq::new_seeded(&vs.root(), &config, PADDED, 5);
            let inputs = padded_inputs();
            let greedy = model.forward(&inputs);
            let answers = greedy.argmax(-1, false);
            let feedback = model.feedback.as_ref().expect("a feedback decoder");
            let forced = tch::no_grad(|| {
                feedback.teacher_forced(&model.parts(), &model.encode_all(&inputs, false), &answers, false)
            });
            assert!(greedy.allclose(&forced, 1e-5, 1e-6, false), "{decoder:?} {bidirectional}");

            let values = ModelShape::uniform(Features::Value, 4, 3);
            let model = Seq2Seq::new_seeded(&(&vs.root() / "values"), &config, values, 5);
            let inputs = Tensor::from_slice(&[0.1f32, 0.5, -0.3, 0.9, 0.2, 0.2, 0.7, -1.0]).view([2, 4]);
            let greedy = model.forward(&inputs);
            let feedback = model.feedback.as_ref().expect("a feedback decoder");
            let forced = tch::no_grad(|| {
                feedback.teacher_forced(&model.parts(), &model.encode_all(&inputs, false), &greedy, false)
            });
            assert_eq!(greedy.size(), [2, 3]);
            assert!(greedy.allclose(&forced, 1e-5, 1e-6, false), "values, {decoder:?}");
        }
    }

    /// The sum of the log-probabilities of `ids` `[steps]` for row `row` of `inputs`, by
    /// teacher forcing, up to and including the first end marker (if `end`).
    fn log_prob_of(model: &Seq2Seq, inputs: &Tensor, row: i64, ids: &[i64], end: Option<i64>) -> f64 {
        let feedback = model.feedback.as_ref().expect("a feedback decoder");
        let input = inputs.narrow(0, row, 1);
        let targets = Tensor::from_slice(ids).view([1, -1]);
        let logits =
            tch::no_grad(|| feedback.teacher_forced(&model.parts(), &model.encode_all(&input, false), &targets, false));
        let log_probs = Vec::<f64>::try_from(
            logits.log_softmax(-1, Kind::Double).gather(-1, &targets.unsqueeze(-1), false).view([-1]),
        )
        .expect("double");
        let written = ids.iter().position(|&id| Some(id) == end).map_or(ids.len(), |at| at + 1);
        log_probs[..written].iter().sum()
    }

    /// A beam as wide as every answer of 3 classes and 3 steps holds all 27, ranked as their
    /// own log-probabilities rank them; a beam of one is greedy decoding.
    #[test]
    fn a_beam_as_wide_as_every_answer_ranks_them_all_and_a_beam_of_one_is_greedy() {
        let shape = ModelShape { input_len: 4, output_len: 3, ..ModelShape::uniform(Features::Classes(3), 4, 3) };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &variant(DecoderKind::Attention, false), shape, 9);
        let inputs = Tensor::from_slice(&[0i64, 1, 2, 1, 2, 2, 0, 1]).view([2, 4]);
        let answers = model.beam(&inputs, 27).expect("the model searches");
        for (row, hypotheses) in answers.iter().enumerate() {
            assert_eq!(hypotheses.len(), 27);
            let mut expected: Vec<(f64, Vec<i64>)> = (0..27i64)
                .map(|n| {
                    let ids = vec![n / 9, n / 3 % 3, n % 3];
                    (log_prob_of(&model, &inputs, row as i64, &ids, None), ids)
                })
                .collect();
            expected.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (hypothesis, (log_prob, ids)) in hypotheses.iter().zip(&expected) {
                assert_eq!(&hypothesis.ids, ids);
                assert!((hypothesis.log_prob - log_prob).abs() < 1e-5, "{} vs {log_prob}", hypothesis.log_prob);
                assert!((hypothesis.score - log_prob / 3.0).abs() < 1e-5);
                let sum: f64 = hypothesis.token_log_probs.iter().sum();
                assert!((sum - hypothesis.log_prob).abs() < 1e-9);
            }
        }
        let greedy = model.forward(&inputs).argmax(-1, false);
        let one = model.beam(&inputs, 1).expect("the model searches");
        for (row, hypotheses) in one.iter().enumerate() {
            assert_eq!(hypotheses[0].ids, Vec::<i64>::try_from(greedy.get(row as i64)).expect("ids"));
        }
    }

    /// With an end marker, a hypothesis stops there: it writes the marker again to the last
    /// step, its log-probability counts its steps up to the marker, and the beam ranks by that
    /// per written token.
    #[test]
    fn beam_hypotheses_end_at_the_end_marker_and_are_ranked_per_token() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &variant(DecoderKind::Feedback, true), PADDED, 3);
        let inputs = padded_inputs();
        let answers = model.beam(&inputs, 6).expect("the model searches");
        assert_eq!(answers.len(), 3);
        let mut ended = 0;
        for (row, hypotheses) in answers.iter().enumerate() {
            assert_eq!(hypotheses.len(), 6);
            for hypothesis in hypotheses {
                let end = hypothesis.ids.iter().position(|&id| id == 0);
                if let Some(end) = end {
                    ended += 1;
                    assert!(hypothesis.ids[end..].iter().all(|&id| id == 0), "{:?}", hypothesis.ids);
                }
                let length = end.map_or(4, |at| at + 1) as f64;
                let expected = log_prob_of(&model, &inputs, row as i64, &hypothesis.ids, Some(0));
                assert!((hypothesis.log_prob - expected).abs() < 1e-5, "{} vs {expected}", hypothesis.log_prob);
                assert!((hypothesis.score - expected / length).abs() < 1e-5);
            }
            assert!(hypotheses.windows(2).all(|pair| pair[0].score >= pair[1].score));
        }
        assert!(ended > 0, "some hypothesis of an untrained model of 6 classes ends early");
    }

    /// `rows` random inputs of [`PADDED`]'s 6 classes, the last step never padding (class 0).
    fn random_padded_inputs(rows: i64) -> Tensor {
        with_global_generator(7, || {
            Tensor::cat(
                &[
                    Tensor::randint(6, [rows, 4], (Kind::Int64, Device::Cpu)),
                    Tensor::randint_low(1, 6, [rows, 1], (Kind::Int64, Device::Cpu)),
                ],
                1,
            )
        })
    }

    /// An input leaves the beam search once all its hypotheses have ended: the answers are
    /// those of searching every input to the last step, their log-probabilities and scores too
    /// but for float32's rounding.
    #[test]
    fn inputs_whose_hypotheses_all_ended_leave_the_search_unchanged() {
        let shape = ModelShape { output_len: 8, ..PADDED };
        let inputs = random_padded_inputs(40);
        let mut left_early = 0;
        for (decoder, seed) in [(DecoderKind::Feedback, 3), (DecoderKind::Attention, 4)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Seq2Seq::new_seeded(&vs.root(), &variant(decoder, false), shape, seed);
            let feedback = model.feedback.as_ref().expect("a feedback decoder");
            let search = |drop_ended| {
                tch::no_grad(|| {
                    let encoded = model.encode_all(&inputs, false);
                    feedback.beam(&model.parts(), &encoded, 8, 3, Some(0), drop_ended, model.trains_by_hand())
                })
            };
            let (dropping, plain) = (search(true), search(false));
            assert_eq!(dropping.len(), 40);
            for (dropping, plain) in dropping.iter().zip(&plain) {
                assert_eq!(dropping.len(), plain.len());
                for (a, b) in dropping.iter().zip(plain) {
                    assert_eq!(a.ids, b.ids, "{decoder:?}");
                    // Fewer rows round the float32 products differently, in the 8th digit.
                    let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
                    assert!(a.token_log_probs.iter().zip(&b.token_log_probs).all(|(&x, &y)| close(x, y)));
                    assert!(close(a.log_prob, b.log_prob) && close(a.score, b.score), "{a:?} vs {b:?}");
                }
                // Every hypothesis ended before the last step: the input left the search early.
                left_early += usize::from(plain.iter().all(|h| h.ids[..7].contains(&0)));
            }
        }
        assert!(left_early > 0 && left_early < 80, "inputs that left early: {left_early} of 80");
    }

    /// On the CPU in float32 a feedback decoder answers by the hand-written passes (the
    /// encoder sharing the rows' leading padding): the same answers as libtorch's ops, whose
    /// path a GPU runs, and the same log-probabilities but for float32's rounding.
    #[test]
    fn answers_by_hand_are_those_of_libtorchs_ops() {
        let inputs = random_padded_inputs(40);
        let shape = ModelShape { output_len: 6, ..PADDED };
        for (decoder, bidirectional, heads) in [
            (DecoderKind::Feedback, false, 1),
            (DecoderKind::Attention, false, 1),
            (DecoderKind::Attention, true, 1),
            (DecoderKind::Attention, true, 2),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let config = ModelConfig {
                decoder_layers: 2,
                encoder_layers: 2,
                attention_heads: heads,
                ..variant(decoder, bidirectional)
            };
            let model = Seq2Seq::new_seeded(&vs.root(), &config, shape, 6);
            assert!(model.trains_by_hand());
            let feedback = model.feedback.as_ref().expect("a feedback decoder");
            let by_ops = tch::no_grad(|| model.encode_all(&inputs, false));
            let greedy_by_ops = tch::no_grad(|| feedback.greedy_until_end(&model.parts(), &by_ops, 6, 0, false));
            let greedy = model.greedy_until_end(&inputs).expect("a feedback decoder with an end marker");
            assert!(greedy.equal(&greedy_by_ops), "{decoder:?} {bidirectional}");
            let beam_by_ops = tch::no_grad(|| feedback.beam(&model.parts(), &by_ops, 6, 3, Some(0), true, false));
            let beam = model.beam(&inputs, 3).expect("the model searches");
            for (ours, theirs) in beam.iter().flatten().zip(beam_by_ops.iter().flatten()) {
                assert_eq!(ours.ids, theirs.ids, "{decoder:?} {bidirectional}");
                assert!((ours.log_prob - theirs.log_prob).abs() < 1e-5, "{ours:?} vs {theirs:?}");
            }
            assert_eq!(beam.iter().flatten().count(), beam_by_ops.iter().flatten().count());
        }
    }

    /// Decoding until the end marker, rows leaving the batch as they finish, writes what the
    /// whole batch's greedy decode writes up to each row's end marker, then only the marker.
    #[test]
    fn greedy_until_end_writes_the_greedy_answers_up_to_their_end() {
        let inputs = random_padded_inputs(40);
        let (mut early, mut late) = (0, 0);
        for (decoder, seed) in [(DecoderKind::Feedback, 3), (DecoderKind::Attention, 4), (DecoderKind::Attention, 5)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Seq2Seq::new_seeded(&vs.root(), &variant(decoder, false), PADDED, seed);
            let whole = Vec::<i64>::try_from(model.forward(&inputs).argmax(-1, false).flatten(0, -1)).expect("ids");
            let until_end = model.greedy_until_end(&inputs).expect("a feedback decoder with an end marker");
            assert_eq!(until_end.size(), [40, 4]);
            let until_end = Vec::<i64>::try_from(until_end.flatten(0, -1)).expect("ids");
            for (whole, until_end) in whole.chunks(4).zip(until_end.chunks(4)) {
                let end = whole.iter().position(|&id| id == 0).map_or(4, |at| at + 1);
                assert_eq!(whole[..end], until_end[..end], "{decoder:?}");
                assert!(until_end[end..].iter().all(|&id| id == 0), "{decoder:?} {until_end:?}");
                early += usize::from(end < 4);
                late += usize::from(end == 4);
            }
        }
        assert!(early > 0 && late > 0, "rows that end early ({early}) and rows that write every step ({late})");
        let vs = nn::VarStore::new(Device::Cpu);
        let repeat = Seq2Seq::new_seeded(&vs.root(), &variant(DecoderKind::Repeat, false), PADDED, 3);
        assert!(repeat.greedy_until_end(&inputs).is_none(), "the reference's decoder writes every step at once");
    }

    /// Every trainable tensor of a variant gets a gradient, so Adam trains all of them.
    #[test]
    fn every_part_of_a_variant_gets_a_gradient() {
        for config in [variant(DecoderKind::Attention, true), variant(DecoderKind::Feedback, false)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Seq2Seq::new_seeded(&vs.root(), &config, PADDED, 2);
            let targets = Tensor::from_slice(&[1i64, 2, 0, IGNORED, 3, 0, IGNORED, IGNORED, 5, 4, 3, 0]).view([3, 4]);
            let (_, loss, grads) = by_hand(&vs, &model, &(padded_inputs(), targets));
            assert!(loss.double_value(&[]) > 0.0);
            assert_eq!(grads.len(), vs.trainable_variables().len());
            for (name, grad) in &grads {
                assert!(grad.abs().sum(Kind::Double).double_value(&[]) > 0.0, "{name} has no gradient");
            }
            let names: Vec<&String> = grads.keys().collect();
            for part in ["bridge.h.weight", "bridge.c.bias", "decoder.weight_ih_l0", "output.weight"] {
                assert!(names.iter().any(|name| *name == part), "{part} missing from {names:?}");
            }
            assert_eq!(
                names.iter().any(|name| name.starts_with("attention.")),
                config.decoder == DecoderKind::Attention
            );
            assert_eq!(names.iter().any(|name| name.starts_with("encoder_reverse.")), config.bidirectional);
        }
    }

    /// Attention gives padded input steps no weight: changing the memory there changes nothing,
    /// and changing it at a token does.
    #[test]
    fn attention_leaves_the_padding_out() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &variant(DecoderKind::Attention, false), PADDED, 4);
        let feedback = model.feedback.as_ref().expect("a feedback decoder");
        let inputs = padded_inputs();
        let decode =
            |encoded: &Encoded| tch::no_grad(|| feedback.greedy(&model.parts(), encoded, 4, model.trains_by_hand()));
        let encoded = tch::no_grad(|| model.encode_all(&inputs, false));
        let plain = decode(&encoded);
        let shifted = |step: i64| {
            let outputs = encoded.outputs.copy();
            let _ = outputs.narrow(1, step, 1).g_add_scalar_(3.0);
            let state = State { h: encoded.state.h.copy(), c: encoded.state.c.copy() };
            Encoded { outputs, state, padding: encoded.padding.as_ref().map(Tensor::copy) }
        };
        // Step 0 is padding in every row but the second; compare the other rows.
        let rows = Tensor::from_slice(&[0i64, 2]);
        let at_padding = decode(&shifted(0));
        assert!(at_padding.index_select(0, &rows).equal(&plain.index_select(0, &rows)));
        assert!(!at_padding.get(1).equal(&plain.get(1)), "the second row's step 0 is a token");
        assert!(!decode(&shifted(4)).equal(&plain));
    }

    #[test]
    fn groups_thousands_like_keras() {
        assert_eq!(group_thousands(52212), "52,212");
        assert_eq!(group_thousands(612), "612");
        assert_eq!(group_thousands(1_000_000), "1,000,000");
    }

    /// Rows that begin with padding share their encoder steps until their first real token:
    /// the answers are those of every row computed on its own, whatever the order of the
    /// rows, for one layer and three, rows without padding and rows of padding alone.
    #[test]
    fn rows_alike_in_their_leading_padding_are_computed_once() {
        let padding = 10;
        let shape = ModelShape { input_padding: Some(padding), ..REFERENCE_SHAPE };
        // Leading padding of 0 to 8 steps (8: padding alone), in no particular order.
        let leading = [3i64, 0, 8, 5, 1, 3, 7, 0, 2, 6, 4, 3];
        let rows: Vec<i64> = leading
            .iter()
            .enumerate()
            .flat_map(|(row, &count)| {
                (0..8).map(move |t| if t < count { padding } else { (row as i64 * 7 + t * 3) % 12 })
            })
            .collect();
        let inputs = Tensor::from_slice(&rows).view([leading.len() as i64, 8]);
        for layers in [1, 3] {
            let config = ModelConfig { encoder_layers: layers, decoder_layers: layers, ..ModelConfig::default() };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Seq2Seq::new_seeded(&vs.root(), &config, shape, 3);
            let shared = model.forward(&inputs);
            let every_row = tch::no_grad(|| model.infer_every_row(&inputs));
            let by_lstm_op = tch::no_grad(|| model.forward_with_lstm_op(&inputs, false));
            for expected in [&every_row, &by_lstm_op] {
                assert!(relative_difference(&shared, expected) < 1e-5, "{layers} layers");
                assert!(shared.argmax(-1, false).equal(&expected.argmax(-1, false)), "{layers} layers");
            }
            // Without leading padding nothing is shared: the very same arithmetic.
            let unpadded = inputs.narrow(0, 1, 1);
            assert!(model.forward(&unpadded).equal(&tch::no_grad(|| model.infer_every_row(&unpadded))));
        }
    }
}
