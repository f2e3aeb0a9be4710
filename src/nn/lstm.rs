//! A stack of LSTM layers whose forward and backward passes are written out by hand.
//!
//! libtorch's `lstm` op under autograd was most of a training step on the reference model: it
//! records a dozen graph nodes per time step, multiplies one-hot inputs by a matrix, multiplies
//! the zero initial state by `W_hh`, projects the repeated decoder input at every step, and
//! computes gradients nobody asks for (the one-hot input's, the initial state's). The passes
//! here do the arithmetic of PyTorch's `nn.LSTM` without any of that: a one-hot input's share
//! of the gates is a row of `W_ih^T`, a repeated input is projected once, the first step has
//! no recurrent product, and each weight's gradient is one matrix product over all steps.
//!
//! Matrix products are libtorch's; the element-wise work of a step is one pass of
//! [`crate::nn::cell`] over the tensors' memory, so these passes are for float32 on the CPU. On a
//! GPU, libtorch's `lstm` op is cuDNN's fused kernel, and [`Lstm::forward_with_lstm_op`] runs
//! it (the tests also hold the hand-written passes to it). Tensors are time-major
//! (`[time, batch, ...]`), so that a step is a contiguous slice.

use std::ops::Range;
use std::sync::Mutex;

use tch::kind::Element;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::data::mix_seed;
use crate::nn::cell;

/// One layer's parameters, named and laid out as in PyTorch's `nn.LSTM`: gates stacked as
/// input, forget, cell, output (Keras's order too).
#[derive(Debug)]
pub(crate) struct Layer {
    /// `[4·hidden, inputs]`.
    pub(crate) w_ih: Tensor,
    /// `[4·hidden, hidden]`.
    pub(crate) w_hh: Tensor,
    b_ih: Tensor,
    /// Keras keeps one bias per layer, libtorch two: this one is a frozen zero buffer, so that
    /// the trainable parameters match the reference and the names load into `nn.LSTM`.
    b_hh: Tensor,
}

/// Where one layer's parameter gradients go (views into the optimiser's gradient buffer).
#[derive(Debug)]
pub struct LayerGradients {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Tensor,
}

/// What a layer reads (the first one, any of these; the others, the outputs below them).
pub enum StepInputs {
    /// Class indices `[time, batch]` (int64): the one-hot vectors are never built, since
    /// multiplying one by `W_ih` picks a column of it.
    Classes { indices: Tensor, classes: i64 },
    /// Features `[time, batch, features]`.
    Dense(Tensor),
    /// The same features `[batch, features]` at every one of `steps` steps (RepeatVector).
    Repeated { features: Tensor, steps: i64 },
}

impl StepInputs {
    fn steps(&self) -> i64 {
        match self {
            StepInputs::Classes { indices, .. } => indices.size()[0],
            StepInputs::Dense(features) => features.size()[0],
            StepInputs::Repeated { steps, .. } => *steps,
        }
    }
}

/// The gradient arriving at the top layer's outputs.
#[derive(Clone, Copy)]
pub enum OutputGradient<'a> {
    /// No output was used, only the final states (whose gradients come apart).
    StateOnly,
    /// Only the last step's hidden state was used (an encoder): `[batch, hidden]`.
    Last(&'a Tensor),
    /// Every step's hidden state was used: `[time, batch, hidden]`.
    Every(&'a Tensor),
}

/// What one layer's forward pass keeps for its backward pass; all `[time, batch, ...]`.
struct LayerTape {
    input: StepInputs,
    /// The dropout mask (already scaled by `1 / (1 - p)`) applied to this layer's input.
    mask: Option<Tensor>,
    /// The gates' activations `[.., 4·hidden]`: `σ(i)`, `σ(f)`, `tanh(g)`, `σ(o)`.
    gates: Tensor,
    cell: Tensor,
    tanh_cell: Tensor,
    hidden: Tensor,
}

/// The input's share of a layer's gate pre-activations (`x·W_ih^T + b`).
enum InputShare {
    /// Already computed for every step, `[time, batch, 4·hidden]`: where the gates are built.
    Gates(Tensor),
    /// Row `indices[t, b]` of `table` `[classes, 4·hidden]` (a one-hot input's).
    Rows { table: Tensor, indices: Tensor },
    /// The same `[batch, 4·hidden]` at every step (a repeated input's).
    Repeated(Tensor),
}

/// A batch's rows ordered by how many padding tokens they begin with, fewest first: at step
/// `t` the first `active[t]` rows have read a token other than padding, and every other row
/// has read padding alone, so all of those have the same state. The first of them (row
/// `active[t]`, if any) stands for them all: a step computes rows `0..=active[t]` only.
#[derive(Clone, Copy)]
struct Alike<'a> {
    active: &'a [i64],
}

impl Alike<'_> {
    /// Rows that step `t` computes: the active ones and the one standing for the others.
    fn computed(&self, t: i64, batch: i64) -> i64 {
        (self.active[t as usize] + 1).min(batch)
    }
}

/// The dtype and device of `like`, for new buffers.
fn options(like: &Tensor) -> (Kind, Device) {
    (like.kind(), like.device())
}

/// A forward pass through the stack, kept for [`Lstm::backward`].
pub struct Tape {
    layers: Vec<LayerTape>,
}

impl Tape {
    /// The top layer's hidden state at every step `[time, batch, hidden]`.
    pub fn outputs(&self) -> &Tensor {
        &self.layers.last().expect("a stack has at least one layer").hidden
    }

    /// The top layer's hidden state after the last step `[batch, hidden]`.
    pub fn last_output(&self) -> Tensor {
        self.outputs().get(-1)
    }

    /// Every layer's state after the last step.
    pub fn final_state(&self) -> State {
        let last = |buffer: fn(&LayerTape) -> &Tensor| {
            Tensor::stack(&self.layers.iter().map(|layer| buffer(layer).get(-1)).collect::<Vec<_>>(), 0)
        };
        State { h: last(|layer| &layer.hidden), c: last(|layer| &layer.cell) }
    }
}

/// Where a training pass's dropout masks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masks {
    /// libtorch's global generator, as the caller seeded it: for one thread.
    Global,
    /// Layer `l`'s mask from the global generator seeded with `mix_seed(seed ^ mix_seed(l))`, under
    /// [`with_global_generator`]'s lock: threads drawing side by side get the same masks whatever
    /// their timing.
    Seeded(u64),
}

impl Masks {
    /// The dropout mask for `like` of the `stream`th masked input (an LSTM layer's index),
    /// or `None` without dropout.
    pub(crate) fn draw(self, like: &Tensor, p: f64, stream: u64) -> Option<Tensor> {
        match self {
            _ if p == 0.0 => None,
            Masks::Global => Some(dropout_mask(like, p)),
            Masks::Seeded(seed) => {
                Some(with_global_generator(mix_seed(seed ^ mix_seed(stream)), || dropout_mask(like, p)))
            }
        }
    }
}

/// Runs `draw` with libtorch's global generator seeded with `seed`, holding a lock so that no
/// other thread draws from it in between.
pub fn with_global_generator<R>(seed: u64, draw: impl FnOnce() -> R) -> R {
    static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());
    let _guard = GLOBAL_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    draw()
}

/// Every layer's hidden and cell state, `[layers, batch, hidden]` each (libtorch's `h_n`, `c_n`).
#[derive(Debug)]
pub struct State {
    pub h: Tensor,
    pub c: Tensor,
}

impl State {
    /// The rows of `index` (beam search's reordering of hypotheses).
    pub fn select(&self, index: &Tensor) -> State {
        State { h: self.h.index_select(1, index), c: self.c.index_select(1, index) }
    }
}

/// A stacked LSTM with Keras's initialisation and dropout between layers (as `nn.LSTM`'s).
#[derive(Debug)]
pub struct Lstm {
    layers: Vec<Layer>,
    hidden: i64,
    dropout: f64,
}

impl Lstm {
    pub fn new(vs: nn::Path, input_size: usize, hidden: usize, layers: usize, dropout: f64) -> Self {
        let (hidden, gates) = (hidden as i64, 4 * hidden as i64);
        let layers = (0..layers)
            .map(|layer| {
                let input_size = if layer == 0 { input_size as i64 } else { hidden };
                // Glorot-uniform on the input kernel, fans as Keras computes them for (input, 4·units).
                let limit = (6.0 / (input_size + gates) as f64).sqrt();
                let w_ih = vs.var(
                    &format!("weight_ih_l{layer}"),
                    &[gates, input_size],
                    Init::Uniform { lo: -limit, up: limit },
                );
                let w_hh = vs.var(&format!("weight_hh_l{layer}"), &[gates, hidden], Init::Orthogonal { gain: 1.0 });
                let b_ih = vs.var(&format!("bias_ih_l{layer}"), &[gates], Init::Const(0.0));
                // Keras's unit_forget_bias: the forget gate's quarter starts at 1.
                let _ = tch::no_grad(|| b_ih.narrow(0, hidden, hidden).fill_(1.0));
                let b_hh = vs.zeros_no_train(&format!("bias_hh_l{layer}"), &[gates]);
                Layer { w_ih, w_hh, b_ih, b_hh }
            })
            .collect();
        Self { layers, hidden, dropout }
    }

    /// Moves the weights into one buffer in cuDNN's layout, as `nn.LSTM.flatten_parameters` does.
    /// Otherwise cuDNN copies them into one at every call of the `lstm` op, and libtorch warns
    /// that "RNN module weights are not part of single contiguous chunk of memory". The
    /// variables keep their names and values and become views of that buffer, so loading,
    /// saving and the optimiser, which all work on the variables in place, see no difference.
    pub(crate) fn share_one_cudnn_buffer(&self) {
        const LSTM_MODE: i64 = 2; // cuDNN's CUDNN_LSTM, as in libtorch's RNN.cpp
        let input_size = self.layers[0].w_ih.size()[1];
        let weights: Vec<&Tensor> =
            self.layers.iter().flat_map(|layer| [&layer.w_ih, &layer.w_hh, &layer.b_ih, &layer.b_hh]).collect();
        let layers = self.layers.len() as i64;
        let _ = tch::no_grad(|| {
            Tensor::internal_cudnn_rnn_flatten_weight(
                &weights,
                4,
                input_size,
                LSTM_MODE,
                self.hidden,
                0,
                layers,
                true,
                false,
            )
        });
    }

    /// Another handle on the same weights (see [`crate::nn::model::Seq2Seq::replica`]).
    pub fn replica(&self) -> Lstm {
        let layers = self
            .layers
            .iter()
            .map(|layer| Layer {
                w_ih: layer.w_ih.shallow_clone(),
                w_hh: layer.w_hh.shallow_clone(),
                b_ih: layer.b_ih.shallow_clone(),
                b_hh: layer.b_hh.shallow_clone(),
            })
            .collect();
        Lstm { layers, hidden: self.hidden, dropout: self.dropout }
    }

    /// Trainable parameters of each layer (the frozen `b_hh` is not one).
    pub fn layer_parameter_counts(&self) -> Vec<i64> {
        self.layers
            .iter()
            .map(|layer| [&layer.w_ih, &layer.w_hh, &layer.b_ih].map(|t| t.numel() as i64).iter().sum())
            .collect()
    }

    pub fn parameter_count(&self) -> i64 {
        self.layer_parameter_counts().iter().sum()
    }

    /// `(w_ih, w_hh, b_ih)` of every layer, bottom first: where [`Lstm::backward`] writes.
    pub fn trainable(&self) -> impl Iterator<Item = [&Tensor; 3]> {
        self.layers.iter().map(|layer| [&layer.w_ih, &layer.w_hh, &layer.b_ih])
    }

    /// libtorch's `lstm` op (cuDNN on a GPU) on batch-first `input`, which autograd can
    /// differentiate: every step's output of the top layer, and its final hidden state. It runs
    /// the model where the hand-written passes do not (anything but float32 on the CPU), and
    /// the tests compare those with it.
    pub fn forward_with_lstm_op(&self, input: &Tensor, train: bool) -> (Tensor, Tensor) {
        let (output, state) = self.run_with_lstm_op(input, &self.zero_state(input), train);
        (output, state.h.get(self.layers.len() as i64 - 1))
    }

    /// The zero state of every layer for the batch of `input` (batch first), of its kind and device.
    pub fn zero_state(&self, input: &Tensor) -> State {
        let zeros =
            Tensor::zeros([self.layers.len() as i64, input.size()[0], self.hidden], (input.kind(), input.device()));
        State { h: zeros.shallow_clone(), c: zeros }
    }

    /// [`Lstm::forward_with_lstm_op`] from `state` (every layer's): every step's output of the
    /// top layer, and the state after the last step.
    pub fn run_with_lstm_op(&self, input: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let weights: Vec<&Tensor> =
            self.layers.iter().flat_map(|layer| [&layer.w_ih, &layer.w_hh, &layer.b_ih, &layer.b_hh]).collect();
        let layers = self.layers.len() as i64;
        let (output, h, c) =
            input.lstm(&[&state.h, &state.c], &weights, true, layers, self.dropout, train, false, true);
        (output, State { h, c })
    }

    pub fn hidden(&self) -> i64 {
        self.hidden
    }

    /// The layers, bottom first, for passes written elsewhere (a decoder's steps).
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub(crate) fn dropout(&self) -> f64 {
        self.dropout
    }

    /// Runs the stack from a zero state, on float32 CPU tensors. With `masks` (training),
    /// dropout (if any) masks each upper layer's input, drawn from there.
    pub fn forward(&self, input: StepInputs, masks: Option<Masks>) -> Tape {
        self.forward_with_mask_streams(input, masks, 0)
    }

    /// [`Lstm::forward`], layer `l`'s dropout mask drawn as stream `first_stream + l` (another
    /// stack's masks from other streams than the encoder's).
    pub fn forward_with_mask_streams(&self, mut input: StepInputs, masks: Option<Masks>, first_stream: u64) -> Tape {
        let steps = input.steps();
        let mut mask = None;
        let mut tapes: Vec<LayerTape> = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let tape = layer.forward(input, mask, steps, None);
            mask = masks.and_then(|masks| masks.draw(&tape.hidden, self.dropout, first_stream + index as u64));
            input = StepInputs::Dense(match &mask {
                Some(mask) => &tape.hidden * mask,
                None => tape.hidden.shallow_clone(),
            });
            tapes.push(tape);
        }
        Tape { layers: tapes }
    }

    /// Inference from a zero state on class inputs `[time, batch]` whose rows are ordered by
    /// how many padding tokens they begin with, fewest first: `active[t]` rows have read a
    /// token other than padding by step `t`. The rows still reading padding at a step all have
    /// the same state, so each step computes the active rows and the first of the others,
    /// which stands for them all; they take its state when they begin to read (and after the
    /// last step), so the tape's final state and last output are every row's, its earlier
    /// steps only the computed rows'. On the reference problem most rows begin with two or
    /// three spaces, so this skips about a third of the encoder's work. The active rows'
    /// products have fewer rows, which MKL may round differently in the last bit; answers
    /// agree (tested).
    pub fn forward_sharing_padding(&self, indices: &Tensor, classes: i64, active: &[i64]) -> Tape {
        let steps = indices.size()[0];
        let alike = Alike { active };
        let mut input = StepInputs::Classes { indices: indices.shallow_clone(), classes };
        let mut tapes: Vec<LayerTape> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let tape = layer.forward(input, None, steps, Some(alike));
            input = StepInputs::Dense(tape.hidden.shallow_clone());
            tapes.push(tape);
        }
        Tape { layers: tapes }
    }

    /// Back-propagates `output` through the tape, writing each layer's parameter gradients
    /// into `gradients` (bottom first). With `input_gradient`, returns the gradient of the
    /// stack's input when that is dense or repeated features (`[time, batch, features]` or
    /// `[batch, features]`); a class input has none.
    ///
    /// With `final_state`, the gradient also reaching every layer's state after the last step.
    pub fn backward(
        &self,
        tape: &Tape,
        output: OutputGradient<'_>,
        final_state: Option<&State>,
        gradients: &mut [LayerGradients],
        input_gradient: bool,
    ) -> Option<Tensor> {
        let mut upper: Option<Tensor> = None;
        for (index, (layer, layer_tape)) in self.layers.iter().zip(&tape.layers).enumerate().rev() {
            let output = upper.as_ref().map_or(output, OutputGradient::Every);
            let needed = index > 0 || input_gradient;
            let last = final_state.map(|state| (state.h.get(index as i64), state.c.get(index as i64)));
            let input_gradient = layer.backward(layer_tape, output, last, &mut gradients[index], self.hidden, needed);
            upper = match (input_gradient, &layer_tape.mask) {
                (Some(gradient), Some(mask)) => Some(gradient * mask),
                (gradient, _) => gradient,
            };
        }
        upper
    }
}

/// Inverted dropout's mask for `like`: 0 with probability `p`, else `1 / (1 - p)`.
pub(crate) fn dropout_mask(like: &Tensor, p: f64) -> Tensor {
    let mut mask = Tensor::empty_like(like);
    let _ = mask.bernoulli_float_(1.0 - p);
    mask / (1.0 - p)
}

impl Layer {
    /// The gates' bias: libtorch's two added (the second is the frozen zero).
    pub(crate) fn bias(&self) -> Tensor {
        &self.b_ih + &self.b_hh
    }

    /// `steps` time steps from a zero state; with `alike`, only the rows each step needs (see
    /// [`Lstm::forward_sharing_padding`]).
    fn forward(&self, input: StepInputs, mask: Option<Tensor>, steps: i64, alike: Option<Alike<'_>>) -> LayerTape {
        let hidden = self.w_hh.size()[1];
        let bias = self.bias();
        let w_ih_t = self.w_ih.transpose(0, 1);
        // The input's share of the gate pre-activations, bias included, in the cheapest form.
        let share = match &input {
            // A one-hot input picks a row of W_ih^T: no product at all.
            StepInputs::Classes { indices, .. } => {
                InputShare::Rows { table: (w_ih_t + &bias).contiguous(), indices: indices.shallow_clone() }
            }
            StepInputs::Dense(features) => {
                InputShare::Gates(bias.addmm(&features.reshape([-1, features.size()[2]]), &w_ih_t).view([
                    steps,
                    -1,
                    4 * hidden,
                ]))
            }
            // The same input at every step: projected once.
            StepInputs::Repeated { features, .. } => InputShare::Repeated(bias.addmm(features, &w_ih_t)),
        };
        let (gates, [cell, tanh_cell, outputs]) = self.run_steps(&share, steps, hidden, alike);
        LayerTape { input, mask, gates, cell, tanh_cell, hidden: outputs }
    }

    /// The steps, each a matrix product (none for the first) and one pass of
    /// [`cell::forward`], which also adds the input's share. Returns the gates' activations
    /// and the cell state, its `tanh` and the output at every step. With `alike`, only the
    /// active rows are computed and the others take the padding's state.
    fn run_steps(
        &self,
        share: &InputShare,
        steps: i64,
        hidden: i64,
        alike: Option<Alike<'_>>,
    ) -> (Tensor, [Tensor; 3]) {
        let (gates, batch) = match share {
            InputShare::Gates(gates) => (gates.shallow_clone(), gates.size()[1]),
            InputShare::Rows { table, indices } => {
                (Tensor::empty([steps, indices.size()[1], 4 * hidden], options(table)), indices.size()[1])
            }
            InputShare::Repeated(once) => {
                (Tensor::empty([steps, once.size()[0], 4 * hidden], options(once)), once.size()[0])
            }
        };
        let [cell, tanh_cell] = [0; 2].map(|_| Tensor::empty([steps, batch, hidden], options(&gates)));
        // The next layer's input share is computed for every row, those a step skipped too:
        // they must hold numbers (only the last step's state is complete for every row).
        let outputs = match alike {
            Some(_) => Tensor::zeros([steps, batch, hidden], options(&gates)),
            None => Tensor::empty([steps, batch, hidden], options(&gates)),
        };
        let w_hh_t = self.w_hh.transpose(0, 1);
        for t in 0..steps {
            let rows = alike.map_or(batch, |alike| alike.computed(t, batch));
            // The first step has no recurrent share: the state starts at zero.
            if t > 0 && rows > 0 {
                let (mut gates_t, previous) = (gates.get(t).narrow(0, 0, rows), outputs.get(t - 1).narrow(0, 0, rows));
                let _ = match share {
                    InputShare::Gates(_) => gates_t.addmm_(&previous, &w_hh_t),
                    _ => previous.mm_out(&gates_t, &w_hh_t),
                };
            }
            // The first `rows` rows of a step's buffer.
            let (rows, width, units) = (rows as usize, 4 * hidden as usize, hidden as usize);
            // SAFETY: contiguous float32 CPU buffers (int64 for the indices): step t of the
            // four allocated above is written, the rest read, and no other reference is alive.
            unsafe {
                let input = match share {
                    InputShare::Gates(_) => cell::Input::InGates,
                    InputShare::Rows { table, indices } => {
                        cell::Input::Rows { table: floats(table), indices: &step(indices, t)[..rows] }
                    }
                    InputShare::Repeated(once) => cell::Input::Same(floats(once)),
                };
                cell::forward(cell::Forward {
                    gates: &mut step_mut(&gates, t)[..rows * width],
                    input,
                    c_prev: (t > 0).then(|| &step(&cell, t - 1)[..rows * units]),
                    c: &mut step_mut(&cell, t)[..rows * units],
                    tanh_c: &mut step_mut(&tanh_cell, t)[..rows * units],
                    h: &mut step_mut(&outputs, t)[..rows * units],
                    hidden: units,
                })
            }
            if let Some(alike) = alike {
                // Rows that begin to read at the next step (all of them, after the last) take
                // the state of the row that stood for them, the last one computed.
                let next = if t + 1 < steps { alike.computed(t + 1, batch) as usize } else { batch as usize };
                for buffer in [&cell, &outputs] {
                    // SAFETY: as above; step t's rows `rows..next` are written, row `rows - 1` read.
                    spread_row(unsafe { step_mut(buffer, t) }, units, rows - 1, next)
                }
            }
        }
        (gates, [cell, tanh_cell, outputs])
    }

    /// Back-propagation through time, from the gradient reaching the outputs and, with `last`,
    /// the final hidden and cell state. Writes the parameter gradients into `gradients`;
    /// returns the gradient of a dense or repeated input if `input_gradient`.
    fn backward(
        &self,
        tape: &LayerTape,
        output: OutputGradient<'_>,
        last: Option<(Tensor, Tensor)>,
        gradients: &mut LayerGradients,
        hidden: i64,
        input_gradient: bool,
    ) -> Option<Tensor> {
        let steps = tape.gates.size()[0];
        let d_gates = Tensor::empty_like(&tape.gates);
        // The gradient reaching h_t (from above and from step t + 1) and c_t (from step t + 1).
        let from_output = match output {
            OutputGradient::StateOnly => None,
            OutputGradient::Last(last) => Some(last.shallow_clone()),
            OutputGradient::Every(every) => Some(every.get(steps - 1)),
        };
        let (mut d_h, d_c) = match (from_output, last) {
            (Some(d_h), None) => (d_h.contiguous(), d_h.zeros_like()),
            (Some(d_h), Some((h, c))) => (d_h + h, c.copy()),
            (None, Some((h, c))) => (h.copy(), c.copy()),
            (None, None) => unreachable!("a layer's backward pass starts from some gradient"),
        };
        for t in (0..steps).rev() {
            let d_gates_t = d_gates.get(t);
            // SAFETY: contiguous float32 CPU buffers: `d_gates` and `d_c` are written, the
            // tape and `d_h` read, and no other reference to them is alive.
            unsafe {
                cell::backward(cell::Backward {
                    d_h: floats(&d_h),
                    d_c: floats_mut(&d_c),
                    gates: step(&tape.gates, t),
                    c_prev: (t > 0).then(|| step(&tape.cell, t - 1)),
                    tanh_c: step(&tape.tanh_cell, t),
                    d_gates: step_mut(&d_gates, t),
                    hidden: hidden as usize,
                })
            }
            if t > 0 {
                d_h = match output {
                    OutputGradient::Last(_) | OutputGradient::StateOnly => d_gates_t.mm(&self.w_hh),
                    OutputGradient::Every(every) => every.get(t - 1).addmm(&d_gates_t, &self.w_hh),
                };
            }
        }
        let flat = d_gates.view([-1, 4 * hidden]);
        let _ = flat.sum_intlist_out(&gradients.b_ih, 0, false, flat.kind());
        if steps > 1 {
            // Σ_t d_gates_t^T · h_{t-1}: h_{-1} is zero, so step 0 adds nothing.
            let later = d_gates.narrow(0, 1, steps - 1).reshape([-1, 4 * hidden]);
            let earlier = tape.hidden.narrow(0, 0, steps - 1).reshape([-1, hidden]);
            let _ = later.transpose(0, 1).mm_out(&gradients.w_hh, &earlier);
        } else {
            let _ = gradients.w_hh.zero_();
        }
        match &tape.input {
            StepInputs::Classes { indices, classes } => {
                // Each step's gate gradient adds to the column of W_ih its class picked.
                let table = Tensor::zeros([*classes, 4 * hidden], (flat.kind(), flat.device()));
                let table = table.index_add(0, &indices.reshape([-1]), &flat);
                gradients.w_ih.copy_(&table.transpose(0, 1));
                None
            }
            StepInputs::Dense(features) => {
                let features = features.reshape([-1, features.size()[2]]);
                let _ = flat.transpose(0, 1).mm_out(&gradients.w_ih, &features);
                input_gradient.then(|| flat.mm(&self.w_ih).view([steps, -1, features.size()[1]]))
            }
            StepInputs::Repeated { features, .. } => {
                let summed = d_gates.sum_dim_intlist(0, false, d_gates.kind());
                let _ = summed.transpose(0, 1).mm_out(&gradients.w_ih, features);
                input_gradient.then(|| summed.mm(&self.w_ih))
            }
        }
    }
}

/// Copies row `from` of `[.., width]` `buffer` into rows `from + 1..end`.
fn spread_row(buffer: &mut [f32], width: usize, from: usize, end: usize) {
    let (head, tail) = buffer.split_at_mut((from + 1) * width);
    let source = &head[from * width..];
    for row in tail[..(end - from - 1) * width].chunks_exact_mut(width) {
        row.copy_from_slice(source);
    }
}

/// The elements of a contiguous CPU tensor of `T`s.
///
/// # Safety
/// Nothing may write to the tensor's memory while the slice is alive.
pub(crate) unsafe fn floats<T: Element>(tensor: &Tensor) -> &[T] {
    check_layout::<T>(tensor);
    // SAFETY: the tensor owns `numel` contiguous `T`s at `data_ptr`; the caller keeps writers away.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const T, tensor.numel()) }
}

/// The elements of a contiguous float32 CPU tensor, to write.
///
/// # Safety
/// No other reference to the tensor's memory may be alive while the slice is.
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn floats_mut(tensor: &Tensor) -> &mut [f32] {
    check_layout::<f32>(tensor);
    // SAFETY: as in `floats`, and the caller guarantees exclusive access.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, tensor.numel()) }
}

/// Elements `range` of a contiguous float32 CPU tensor, to write: threads may each hold a
/// disjoint range of one tensor.
///
/// # Safety
/// No other reference to those elements may be alive while the slice is.
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn float_range_mut(tensor: &Tensor, range: Range<usize>) -> &mut [f32] {
    check_layout::<f32>(tensor);
    assert!(range.start <= range.end && range.end <= tensor.numel(), "{range:?} lies within the tensor");
    // SAFETY: the range lies within the tensor's contiguous floats; the caller guarantees
    // exclusive access to it.
    unsafe { std::slice::from_raw_parts_mut((tensor.data_ptr() as *mut f32).add(range.start), range.len()) }
}

/// Step `t` of a time-major buffer `[time, ...]`, as [`floats`].
///
/// # Safety
/// As [`floats`], for the step's memory.
pub(crate) unsafe fn step<T: Element>(buffer: &Tensor, t: i64) -> &[T] {
    let (start, length) = step_range::<T>(buffer, t);
    // SAFETY: the step lies within the buffer; the caller keeps writers away.
    unsafe { std::slice::from_raw_parts((buffer.data_ptr() as *const T).add(start), length) }
}

/// Step `t` of a time-major buffer `[time, ...]`, as [`floats_mut`].
///
/// # Safety
/// As [`floats_mut`], for the step's memory.
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn step_mut(buffer: &Tensor, t: i64) -> &mut [f32] {
    let (start, length) = step_range::<f32>(buffer, t);
    // SAFETY: the step lies within the buffer; the caller guarantees exclusive access to it.
    unsafe { std::slice::from_raw_parts_mut((buffer.data_ptr() as *mut f32).add(start), length) }
}

/// Where step `t` of a time-major buffer `[time, ...]` lies: (first element, length).
fn step_range<T: Element>(buffer: &Tensor, t: i64) -> (usize, usize) {
    check_layout::<T>(buffer);
    let steps = buffer.size()[0];
    assert!((0..steps).contains(&t), "step {t} of {steps}");
    let length = buffer.numel() / steps as usize;
    (t as usize * length, length)
}

/// The raw views above read memory as contiguous `T`s on the CPU; anything else is a bug.
fn check_layout<T: Element>(tensor: &Tensor) {
    assert!(
        tensor.is_contiguous() && tensor.kind() == T::KIND && tensor.device() == Device::Cpu,
        "expected a contiguous {:?} CPU tensor, got {:?} on {:?}",
        T::KIND,
        tensor.kind(),
        tensor.device()
    );
}
