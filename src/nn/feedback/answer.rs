//! A feedback decoder's step when it answers (greedy or beam), written out by hand for float32
//! on the CPU, as training's teacher-forced pass is in `teacher.rs`.
//!
//! Through libtorch's `lstm` op a step reads the previous token one-hot, multiplies it with the
//! first layer's input weights and sets up a oneDNN primitive for every call. Here the token's
//! share of the gates is a row of those weights (bias included, made once per batch), and a
//! layer's step is two matrix products and one pass of [`cell`]. Attention's scores, softmax
//! and context are one loop per row ([`context`]) where libtorch ran two batched products of
//! a dozen steps each, a mask, a softmax and a concatenation; its keys are computed only where
//! the input is a token.
//!
//! The answers are those of libtorch's ops (tested against them, and 40,000 of 40,000 on the
//! bench's model); the log-probabilities differ in float32's rounding, so a near tie could
//! fall the other way, as between any two float32 kernels.

use tch::{Kind, Tensor};

use super::{Attention, Encoded, Feedback, Memory, Parts};
use crate::nn::cell;
use crate::nn::lstm::{State, floats, floats_mut};
use crate::task::Features;

/// How a decoder step runs when answering.
pub enum Stepper {
    /// libtorch's ops (on a GPU, or when autograd is forced): the previous token one-hot.
    Ops,
    /// The hand-written step, with the weights it reads arranged once.
    ByHand(HandWeights),
}

/// The decoder's weights as [`Feedback::step_by_hand`] reads them.
pub struct HandWeights {
    /// Row `id`: token `id`'s share of the first layer's gates, bias included, `[classes + 1, 4·units]`.
    token_gates: Tensor,
    /// With attention: the fed attentional state's weights, `[units, 4·units]`.
    fed: Option<Tensor>,
    /// Every layer's `W_hhᵀ`.
    recurrent: Vec<Tensor>,
    /// Every layer's `W_ihᵀ` and bias (the first layer's unused).
    upper: Vec<(Tensor, Tensor)>,
}

impl Stepper {
    /// Whether the step reads attention's memory through [`Memory`]'s row map, so that rows
    /// that leave or repeat need no copy of it.
    pub fn reads_by_reference(&self) -> bool {
        matches!(self, Stepper::ByHand(_))
    }

    /// The hand-written step where `by_hand` and the decoder writes classes, else libtorch's ops.
    pub fn new(feedback: &Feedback, parts: &Parts, by_hand: bool) -> Stepper {
        let Features::Classes(classes) = feedback.output else { return Stepper::Ops };
        if !by_hand {
            return Stepper::Ops;
        }
        let layers = parts.decoder.layers();
        let token_width = classes as i64 + 1;
        let first = &layers[0];
        Stepper::ByHand(HandWeights {
            token_gates: (first.w_ih.narrow(1, 0, token_width).tr() + first.bias()).contiguous(),
            fed: feedback.attention.as_ref().map(|_| first.w_ih.narrow(1, token_width, feedback.units).tr()),
            recurrent: layers.iter().map(|layer| layer.w_hh.tr()).collect(),
            upper: layers.iter().map(|layer| (layer.w_ih.tr(), layer.bias())).collect(),
        })
    }
}

impl Feedback {
    /// One decoder step after the tokens `previous` (class ids `[rows]`, the start token's id
    /// one past the classes): what the output layer reads, the new state and what the next
    /// step is fed (see [`Feedback::step`]).
    pub(super) fn answer_step(
        &self,
        stepper: &Stepper,
        parts: &Parts,
        memory: Option<&Memory>,
        previous: &Tensor,
        state: &State,
        fed: &Tensor,
    ) -> (Tensor, State, Tensor) {
        match stepper {
            Stepper::Ops => {
                let input = self.written_input(previous, &parts.output.ws);
                self.step(parts, memory, &input, state, fed, false)
            }
            Stepper::ByHand(weights) => self.step_by_hand(weights, memory, previous, state, fed),
        }
    }

    /// [`Feedback::answer_step`] by the hand-written cell.
    fn step_by_hand(
        &self,
        weights: &HandWeights,
        memory: Option<&Memory>,
        previous: &Tensor,
        state: &State,
        fed: &Tensor,
    ) -> (Tensor, State, Tensor) {
        let layers = weights.recurrent.len() as i64;
        let rows = previous.size()[0];
        let units = self.units;
        let buffer = |shape: &[i64]| Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
        let next = State { h: buffer(&[layers, rows, units]), c: buffer(&[layers, rows, units]) };
        let tanh_cell = buffer(&[rows, units]);
        for l in 0..layers {
            let mut gates = if l == 0 {
                let mut gates = weights.token_gates.index_select(0, previous);
                if let Some(fed_weights) = &weights.fed {
                    let _ = gates.addmm_(fed, fed_weights);
                }
                gates
            } else {
                let (input_weights, bias) = &weights.upper[l as usize];
                bias.addmm(&next.h.get(l - 1), input_weights)
            };
            let _ = gates.addmm_(&state.h.get(l), &weights.recurrent[l as usize]);
            let (c_prev, c, h) = (state.c.get(l), next.c.get(l), next.h.get(l));
            // SAFETY: contiguous float32 CPU buffers made here or by the step before: the gates,
            // the new cell, its tanh and the new output are written, the previous cell read,
            // and no other reference to them is alive.
            unsafe {
                cell::forward(cell::Forward {
                    gates: floats_mut(&gates),
                    input: cell::Input::InGates,
                    c_prev: Some(floats(&c_prev)),
                    c: floats_mut(&c),
                    tanh_c: floats_mut(&tanh_cell),
                    h: floats_mut(&h),
                    hidden: units as usize,
                })
            }
        }
        let top = next.h.get(layers - 1);
        match (&self.attention, memory) {
            (Some(attention), Some(memory)) => {
                let attentional = attention.attend_by_hand(memory, &top);
                (attentional.shallow_clone(), next, attentional)
            }
            _ => (top, next, fed.shallow_clone()),
        }
    }
}

impl Attention {
    /// The memory's keys `h̄_s W_aᵀ` `[batch, input_len, units]` where the input is a token,
    /// zeros where it is padding (which attention leaves out): a third of the bench's steps.
    pub(super) fn keys_of_tokens(&self, encoded: &Encoded) -> Tensor {
        let Some(padding) = &encoded.padding else { return self.keys(encoded) };
        let [batch, steps, width] = encoded.outputs.size()[..] else {
            unreachable!("outputs are [batch, steps, width]")
        };
        let tokens = padding.logical_not().view([-1]).nonzero().squeeze_dim(1);
        let mut keys = Tensor::zeros([batch * steps, self.score.size()[0]], (Kind::Float, tch::Device::Cpu));
        let read = encoded.outputs.reshape([-1, width]).index_select(0, &tokens);
        let _ = keys.index_copy_(0, &tokens, &read.matmul(&self.score.tr()));
        keys.view([batch, steps, -1])
    }

    /// [`Attention::attend`] with the context computed by [`context`].
    fn attend_by_hand(&self, memory: &Memory, top: &Tensor) -> Tensor {
        let [_, steps, width] = memory.outputs.size()[..] else { unreachable!("the memory is [batch, steps, width]") };
        let [rows, units] = top.size()[..] else { unreachable!("the decoder's output is [rows, units]") };
        let contexts = self.heads * width;
        let joined = Tensor::empty([rows, contexts + units], (Kind::Float, tch::Device::Cpu));
        joined.narrow(1, contexts, units).copy_(top);
        let (outputs, keys) = (memory.outputs.contiguous(), memory.keys.contiguous());
        let padding = memory.padding.as_ref().map(Tensor::contiguous);
        // SAFETY: contiguous CPU buffers of the kinds read (float32, and bool for the padding);
        // `joined` is made above and written only here.
        unsafe {
            context(Context {
                outputs: floats(&outputs),
                keys: floats(&keys),
                padding: padding.as_ref().map(|padding| floats::<bool>(padding)),
                rows: memory.rows.as_deref(),
                top: floats(top),
                joined: floats_mut(&joined),
                steps: steps as usize,
                width: width as usize,
                units: units as usize,
                heads: self.heads as usize,
            })
        }
        joined.matmul(&self.combine.tr()).tanh()
    }
}

/// What [`context`] reads and writes, row-major.
struct Context<'a> {
    /// The encoder's outputs `[rows, steps, width]` and their keys `h̄_s W_aᵀ` as the heads read
    /// them, `[rows, heads, steps, units / heads]`.
    outputs: &'a [f32],
    keys: &'a [f32],
    /// Where the input is padding, `[rows, steps]`.
    padding: Option<&'a [bool]>,
    /// The memory row (of `outputs`, `keys` and `padding`) each row reads; `None`: its own.
    rows: Option<&'a [i64]>,
    /// The decoder's output `h_t`, `[rows, units]`.
    top: &'a [f32],
    /// `[rows, heads · width + units]`: receives head `k`'s context `c_k` in each row's
    /// columns `k · width..(k + 1) · width`.
    joined: &'a mut [f32],
    steps: usize,
    width: usize,
    units: usize,
    heads: usize,
}

/// For every row and head: the scores `h_t[k]ᵀ (W_a h̄_s)[k]` of its memory's steps over the
/// head's slice `k` of the units, padding left out, their softmax, and the context
/// `c_k = Σ_s a_s h̄_s`.
fn context(args: Context<'_>) {
    #[cfg(target_arch = "x86_64")]
    if cell::wide_vectors() {
        // SAFETY: the processor has the features `context_avx2` is compiled for.
        return unsafe { context_avx2(args) };
    }
    context_portable(args)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn context_avx2(args: Context<'_>) {
    context_portable(args)
}

#[inline(always)]
fn context_portable(args: Context<'_>) {
    let Context { outputs, keys, padding, rows, top, joined, steps, width, units, heads } = args;
    let slice = units / heads;
    let mut weights = vec![0f32; steps];
    for (row, joined) in joined.chunks_exact_mut(heads * width + units).enumerate() {
        let read = rows.map_or(row, |rows| rows[row] as usize);
        let keys = &keys[read * steps * units..][..steps * units];
        let outputs = &outputs[read * steps * width..][..steps * width];
        let padded = |step: usize| padding.is_some_and(|padding| padding[read * steps + step]);
        for (head, context) in joined[..heads * width].chunks_exact_mut(width).enumerate() {
            let query = &top[row * units + head * slice..][..slice];
            let mut largest = f32::NEG_INFINITY;
            let keys = &keys[head * steps * slice..][..steps * slice];
            for (step, (weight, key)) in weights.iter_mut().zip(keys.chunks_exact(slice)).enumerate() {
                *weight = if padded(step) { f32::NEG_INFINITY } else { dot(key, query) };
                largest = largest.max(*weight);
            }
            let mut total = 0.0;
            for weight in weights.iter_mut() {
                *weight = (*weight - largest).exp();
                total += *weight;
            }
            context.fill(0.0);
            for (weight, output) in weights.iter().zip(outputs.chunks_exact(width)) {
                let weight = weight / total;
                if weight != 0.0 {
                    context.iter_mut().zip(output).for_each(|(c, o)| *c += weight * o);
                }
            }
        }
    }
}

/// `a · b` over eight running sums, which vectorise (a single sum would not: float addition
/// does not reassociate).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_blocks.remainder().iter().zip(b_blocks.remainder()).map(|(x, y)| x * y).sum();
    for (a, b) in a_blocks.zip(b_blocks) {
        for lane in 0..8 {
            sums[lane] += a[lane] * b[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}
