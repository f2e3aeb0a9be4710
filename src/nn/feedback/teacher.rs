//! A feedback decoder's teacher-forced training pass, forward and backward written out by hand
//! for float32 on the CPU, as [`crate::nn::lstm`] writes the reference's.
//!
//! Under autograd a decoder step was libtorch's `lstm` op on one time step (oneDNN sets up a
//! primitive for every call), a dozen small ops of attention, the output layer, and a graph
//! node for each to replay backwards. Here a step is a few matrix products and one pass of
//! [`cell`] per layer; what does not depend on the step before is done once for every step:
//! the target tokens' share of the first layer's gates (a row of its weights each), the output
//! layer, and every weight's gradient (one matrix product over all steps).
//!
//! Tensors are time-major (`[time, batch, ...]`) but for attention's memory, which is batch
//! first as [`Encoded`] holds it.

use tch::{Kind, Tensor};

use super::{Encoded, Feedback, Parts, teacher_ids};
use crate::nn::cell;
use crate::nn::lstm::{LayerGradients, Masks, State, floats, floats_mut, step, step_mut};
use crate::task::Features;

/// Decoder layer `l`'s dropout masks are stream `DECODER_MASKS + l`, apart from the encoder's
/// (whose streams are its layer indices, a backward stack's `REVERSE_MASKS + l`).
const DECODER_MASKS: u64 = 1 << 32;

/// The passes' buffers: float32 on the CPU.
const FLOAT: (Kind, tch::Device) = (Kind::Float, tch::Device::Cpu);

/// What the decoder reads as its previous token at every step.
enum Tokens {
    /// Class ids `[time, batch]`, the start token's id (one past the classes) first.
    Classes(Tensor),
    /// `[time, batch, 2]`: the previous value and the start flag.
    Values(Tensor),
}

/// One decoder layer's steps, `[time, batch, ...]` each.
struct LayerSteps {
    /// The gates' activations (see [`cell`]).
    gates: Tensor,
    cell: Tensor,
    tanh_cell: Tensor,
    hidden: Tensor,
    /// Above the first layer, with dropout: the layer's input, the masked output below.
    masked_input: Option<Tensor>,
    mask: Option<Tensor>,
}

/// Attention's steps.
struct AttentionSteps {
    /// The memory's keys `h̄_s W_aᵀ` as the heads read them, `[batch, heads, input_len, units / heads]`.
    keys: Tensor,
    /// Each head's, `[time, batch, heads, input_len]`.
    weights: Tensor,
    /// `[c_1; …; c_H; h_t]`, `[time, batch, heads · memory + units]`.
    joined: Tensor,
    /// `h̃_t`, `[time, batch, units]`.
    attentional: Tensor,
}

/// A teacher-forced forward pass, kept for [`Feedback::backward_by_hand`].
pub struct DecoderTape {
    tokens: Tokens,
    /// The encoder's final states that the bridge read, `[decoder layers, batch, memory]`.
    bridged: State,
    /// The decoder's first state, `[decoder layers, batch, units]`.
    start: State,
    layers: Vec<LayerSteps>,
    attention: Option<AttentionSteps>,
    /// What the output layer read, `[time · batch, units]`.
    top: Tensor,
    /// The output layer's `[time · batch, width]`: logits, or values.
    pub values: Tensor,
}

/// Where [`Feedback::backward_by_hand`] writes the decoder's gradients.
pub struct DecoderGradients<'a> {
    pub layers: &'a [LayerGradients],
    pub output_weight: &'a Tensor,
    pub output_bias: &'a Tensor,
    pub own: &'a FeedbackGradients,
}

/// Where the bridge's and attention's gradients go (views into the optimiser's gradient buffer).
#[derive(Debug)]
pub struct FeedbackGradients {
    /// Weight and bias of `bridge.h`, then of `bridge.c`.
    bridge: [[Tensor; 2]; 2],
    /// `attention.score` and `attention.combine`.
    attention: Option<[Tensor; 2]>,
}

impl Feedback {
    /// Where [`Feedback::backward_by_hand`] writes: `slot(variable)` gives a tensor shaped like
    /// `variable`.
    pub fn gradients(&self, slot: impl Fn(&Tensor) -> Tensor) -> FeedbackGradients {
        let linear = |l: &tch::nn::Linear| [slot(&l.ws), slot(l.bs.as_ref().expect("the bridge has a bias"))];
        FeedbackGradients {
            bridge: [linear(&self.bridge_h), linear(&self.bridge_c)],
            attention: self.attention.as_ref().map(|a| [slot(&a.score), slot(&a.combine)]),
        }
    }

    /// The decoder's outputs for `targets` `[batch, output_len]` under teacher forcing, from
    /// the encoder's `encoded`, with dropout between layers drawn from `masks`.
    pub fn teacher_forced_by_hand(
        &self,
        parts: &Parts,
        encoded: &Encoded,
        targets: &Tensor,
        masks: Masks,
    ) -> DecoderTape {
        let [batch, steps] = targets.size()[..] else { unreachable!("targets are [batch, steps]") };
        let (units, layers) = (self.units, parts.decoder.layers());
        let tokens = self.teacher_tokens(targets);
        let bridged = self.bridged(encoded);
        let start = self.bridge(&bridged);
        let first_cells: Vec<Tensor> = (0..layers.len() as i64).map(|l| start.c.get(l)).collect();
        let token_width = self.output.width() as i64 + 1;
        let token_weights = layers[0].w_ih.narrow(1, 0, token_width);
        // The tokens' share of the first layer's gates at every step, bias included.
        let first_gates = match &tokens {
            Tokens::Classes(ids) => (token_weights.tr() + layers[0].bias()).index_select(0, &ids.view([-1])),
            Tokens::Values(values) => layers[0].bias().addmm(&values.view([-1, token_width]), &token_weights.tr()),
        };
        let mut first_gates = Some(first_gates.view([steps, batch, 4 * units]));
        let steps_of: Vec<LayerSteps> = (0..layers.len())
            .map(|l| {
                let buffer = || Tensor::empty([steps, batch, units], FLOAT);
                let mask = if l == 0 {
                    None
                } else {
                    masks.draw(&buffer(), parts.decoder.dropout(), DECODER_MASKS + l as u64)
                };
                LayerSteps {
                    gates: first_gates.take().unwrap_or_else(|| Tensor::empty([steps, batch, 4 * units], FLOAT)),
                    cell: buffer(),
                    tanh_cell: buffer(),
                    hidden: buffer(),
                    masked_input: mask.as_ref().map(|_| buffer()),
                    mask,
                }
            })
            .collect();
        let recurrent: Vec<Tensor> = layers.iter().map(|layer| layer.w_hh.tr()).collect();
        let upper: Vec<(Tensor, Tensor)> = layers.iter().map(|layer| (layer.w_ih.tr(), layer.bias())).collect();
        let memory = self.attention.as_ref().map(|attention| (attention, attention.memory(encoded)));
        let fed_weights = memory.as_ref().map(|_| layers[0].w_ih.narrow(1, token_width, units).tr());
        let mut attended: Vec<super::Attended> = Vec::new();
        for t in 0..steps {
            for l in 0..layers.len() {
                let this = &steps_of[l];
                let mut gates = this.gates.get(t);
                if l == 0 {
                    // Input feeding: the previous step's attentional state.
                    if let (Some(fed_weights), Some(previous)) = (&fed_weights, attended.last()) {
                        let _ = gates.addmm_(&previous.attentional, fed_weights);
                    }
                } else {
                    let below = steps_of[l - 1].hidden.get(t);
                    let input = match (&this.masked_input, &this.mask) {
                        (Some(input), Some(mask)) => below.mul_out(&input.get(t), &mask.get(t)),
                        _ => below,
                    };
                    let (weights, bias) = &upper[l];
                    let _ = bias.addmm_out(&gates, &input, weights);
                }
                let previous = if t == 0 { start.h.get(l as i64) } else { this.hidden.get(t - 1) };
                let _ = gates.addmm_(&previous, &recurrent[l]);
                // SAFETY: contiguous float32 CPU buffers: step t of this layer's gates, cell,
                // tanh and hidden are written, the previous cell read, and no other reference
                // to them is alive.
                unsafe {
                    cell::forward(cell::Forward {
                        gates: step_mut(&this.gates, t),
                        input: cell::Input::InGates,
                        c_prev: Some(if t == 0 { floats(&first_cells[l]) } else { step(&this.cell, t - 1) }),
                        c: step_mut(&this.cell, t),
                        tanh_c: step_mut(&this.tanh_cell, t),
                        h: step_mut(&this.hidden, t),
                        hidden: units as usize,
                    })
                }
            }
            if let Some((attention, memory)) = &memory {
                let top = steps_of[layers.len() - 1].hidden.get(t);
                attended.push(attention.attend_keeping(memory, &top));
            }
        }
        let attention = memory.map(|(_, memory)| {
            let stack = |part: fn(&super::Attended) -> &Tensor| {
                Tensor::stack(&attended.iter().map(part).collect::<Vec<_>>(), 0)
            };
            AttentionSteps {
                keys: memory.keys,
                weights: stack(|a| &a.weights),
                joined: stack(|a| &a.joined),
                attentional: stack(|a| &a.attentional),
            }
        });
        let top = match &attention {
            Some(attention) => attention.attentional.view([-1, units]),
            None => steps_of[layers.len() - 1].hidden.view([-1, units]),
        };
        let bias = parts.output.bs.as_ref().expect("the output layer has a bias");
        let values = bias.addmm(&top, &parts.output.ws.tr());
        DecoderTape { tokens, bridged, start, layers: steps_of, attention, top, values }
    }

    /// Back-propagates `d_values` (the loss's gradient of [`DecoderTape::values`]) through the
    /// decoder, writing its gradients into `gradients`. Returns the gradient reaching the
    /// encoder: its outputs (`[batch, input_len, memory]`, with attention) and its final state.
    pub fn backward_by_hand(
        &self,
        parts: &Parts,
        tape: &DecoderTape,
        encoded: &Encoded,
        d_values: &Tensor,
        gradients: DecoderGradients,
    ) -> (Option<Tensor>, State) {
        let layers = parts.decoder.layers();
        let [steps, batch, _] = tape.layers[0].hidden.size()[..] else { unreachable!("steps are time-major") };
        let units = self.units;
        let token_width = self.output.width() as i64 + 1;
        let _ = d_values.tr().mm_out(gradients.output_weight, &tape.top);
        let _ = d_values.sum_intlist_out(gradients.output_bias, 0, false, Kind::Float);
        let d_top = d_values.mm(&parts.output.ws).view([steps, batch, units]);
        let d_gates: Vec<Tensor> = tape.layers.iter().map(|this| Tensor::empty_like(&this.gates)).collect();
        let d_cells: Vec<Tensor> = tape.layers.iter().map(|_| Tensor::zeros([batch, units], FLOAT)).collect();
        let first_cells: Vec<Tensor> = (0..layers.len() as i64).map(|l| tape.start.c.get(l)).collect();
        let fed_weights = self.attention.as_ref().map(|_| layers[0].w_ih.narrow(1, token_width, units));
        let memory_width = encoded.outputs.size()[2];
        let memory_transposed = encoded.outputs.transpose(1, 2);
        let heads = self.attention.as_ref().map_or(1, |attention| attention.heads);
        let contexts = heads * memory_width;
        let keys_by_head =
            tape.attention.as_ref().map(|steps_of| steps_of.keys.reshape([batch * heads, -1, units / heads]));
        // Per step of attention, latest first: d(pre-activation of h̃), d(scores), d(contexts).
        let mut d_attention: Vec<[Tensor; 3]> = Vec::new();
        for t in (0..steps).rev() {
            let mut d_h = d_top.get(t);
            if let (Some(attention), Some(steps_of), Some(fed_weights), Some(keys_by_head)) =
                (&self.attention, &tape.attention, &fed_weights, &keys_by_head)
            {
                if t + 1 < steps {
                    d_h = d_h.addmm(&d_gates[0].get(t + 1), fed_weights);
                }
                let d_pre = Tensor::tanh_backward(&d_h, &steps_of.attentional.get(t));
                let d_joined = d_pre.mm(&attention.combine);
                let d_context = d_joined.narrow(1, 0, contexts);
                let d_weights = d_context.view([batch, heads, memory_width]).bmm(&memory_transposed);
                let d_scores =
                    Tensor::internal_softmax_backward_data(&d_weights, &steps_of.weights.get(t), -1, Kind::Float);
                let d_queries = d_scores.view([batch * heads, 1, -1]).bmm(keys_by_head).view([batch, units]);
                d_h = d_joined.narrow(1, contexts, units) + d_queries;
                d_attention.push([d_pre, d_scores, d_context]);
            }
            for l in (0..layers.len()).rev() {
                let this = &tape.layers[l];
                if t + 1 < steps {
                    d_h = d_h.addmm(&d_gates[l].get(t + 1), &layers[l].w_hh);
                }
                let d_h_t = d_h.contiguous();
                // SAFETY: contiguous float32 CPU buffers: step t of `d_gates[l]` and the
                // running `d_cells[l]` are written, the tape and `d_h_t` read, and no other
                // reference to them is alive.
                unsafe {
                    cell::backward(cell::Backward {
                        d_h: floats(&d_h_t),
                        d_c: floats_mut(&d_cells[l]),
                        gates: step(&this.gates, t),
                        c_prev: Some(if t == 0 { floats(&first_cells[l]) } else { step(&this.cell, t - 1) }),
                        tanh_c: step(&this.tanh_cell, t),
                        d_gates: step_mut(&d_gates[l], t),
                        hidden: units as usize,
                    })
                }
                if l > 0 {
                    d_h = d_gates[l].get(t).mm(&layers[l].w_ih);
                    if let Some(mask) = &this.mask {
                        d_h *= mask.get(t);
                    }
                }
            }
        }
        for (l, (this, d_gates)) in tape.layers.iter().zip(&d_gates).enumerate() {
            let slots = &gradients.layers[l];
            let flat = d_gates.view([-1, 4 * units]);
            let _ = flat.sum_intlist_out(&slots.b_ih, 0, false, Kind::Float);
            let _ = flat.tr().mm_out(&slots.w_hh, &after(&tape.start.h.get(l as i64), &this.hidden, units));
            if l > 0 {
                let input = this.masked_input.as_ref().unwrap_or(&tape.layers[l - 1].hidden);
                let _ = flat.tr().mm_out(&slots.w_ih, &input.view([-1, units]));
                continue;
            }
            let d_token_weights = match &tape.tokens {
                // Each step's gate gradient adds to the column of W_ih its token picked.
                Tokens::Classes(ids) => {
                    Tensor::zeros([token_width, 4 * units], FLOAT).index_add(0, &ids.view([-1]), &flat).tr()
                }
                Tokens::Values(values) => flat.tr().mm(&values.view([-1, token_width])),
            };
            slots.w_ih.narrow(1, 0, token_width).copy_(&d_token_weights);
            if let Some(steps_of) = &tape.attention {
                // h̃_{-1} is zero: the first step's fed state adds nothing.
                let fed = after(&Tensor::zeros([batch, units], FLOAT), &steps_of.attentional, units);
                slots.w_ih.narrow(1, token_width, units).copy_(&flat.tr().mm(&fed));
            }
        }
        let slots = gradients.own;
        let d_memory = self.attention.as_ref().zip(tape.attention.as_ref()).map(|(attention, steps_of)| {
            let [d_score, d_combine] = slots.attention.as_ref().expect("attention has gradient slots");
            d_attention.reverse();
            let stack = |part: usize| Tensor::stack(&d_attention.iter().map(|d| &d[part]).collect::<Vec<_>>(), 0);
            let (d_pre, d_scores, d_context) = (stack(0), stack(1), stack(2));
            let _ = d_pre.view([-1, units]).tr().mm_out(d_combine, &steps_of.joined.view([-1, contexts + units]));
            // Summed over the steps (and heads): each head's scores s_t = keys · h_t and context
            // c_t = weights_t · memory, over its slice of the keys and of h_t.
            let slice = units / heads;
            let input_len = encoded.outputs.size()[1];
            let top_hidden = tape.layers[layers.len() - 1].hidden.view([steps, batch, heads, slice]);
            let top_by_head = top_hidden.permute([1, 2, 0, 3]).reshape([batch * heads, steps, slice]);
            let d_scores_by_head = d_scores.permute([1, 2, 3, 0]).reshape([batch * heads, input_len, steps]);
            let d_keys = d_scores_by_head.bmm(&top_by_head).view([batch, heads, input_len, slice]).transpose(1, 2);
            let d_keys = d_keys.reshape([batch, input_len, units]);
            let _ = d_keys.reshape([-1, units]).tr().mm_out(d_score, &encoded.outputs.reshape([-1, memory_width]));
            let weights_over_steps = steps_of.weights.permute([1, 3, 0, 2]).reshape([batch, input_len, steps * heads]);
            let d_context_over_steps =
                d_context.view([steps, batch, heads, memory_width]).transpose(0, 1).reshape([batch, steps * heads, -1]);
            weights_over_steps.bmm(&d_context_over_steps) + d_keys.matmul(&attention.score)
        });
        let d_start_h = Tensor::stack(
            &(0..layers.len() as i64)
                .map(|l| d_gates[l as usize].get(0).mm(&layers[l as usize].w_hh))
                .collect::<Vec<_>>(),
            0,
        );
        let d_start = State { h: Tensor::tanh_backward(&d_start_h, &tape.start.h), c: Tensor::stack(&d_cells, 0) };
        let encoder_layers = encoded.state.h.size()[0];
        let index = self.bridged_layers(encoder_layers, tch::Device::Cpu);
        let mut d_encoder = Vec::with_capacity(2);
        for (bridge, d_pre, read, [d_weight, d_bias]) in [
            (&self.bridge_h, &d_start.h, &tape.bridged.h, &slots.bridge[0]),
            (&self.bridge_c, &d_start.c, &tape.bridged.c, &slots.bridge[1]),
        ] {
            let flat = d_pre.view([-1, units]);
            let _ = flat.tr().mm_out(d_weight, &read.reshape([-1, memory_width]));
            let _ = flat.sum_intlist_out(d_bias, 0, false, Kind::Float);
            let d_read = d_pre.matmul(&bridge.ws);
            d_encoder.push(Tensor::zeros([encoder_layers, batch, memory_width], FLOAT).index_add(0, &index, &d_read));
        }
        let c = d_encoder.pop().expect("two states");
        let h = d_encoder.pop().expect("two states");
        (d_memory, State { h, c })
    }

    /// The previous token of every step under teacher forcing, time-major (an ignored step
    /// reads as class 0: whatever it reads, its loss and the later steps' are ignored too).
    fn teacher_tokens(&self, targets: &Tensor) -> Tokens {
        match self.output {
            Features::Classes(classes) => Tokens::Classes(teacher_ids(targets, classes).transpose(0, 1).contiguous()),
            Features::Value => Tokens::Values(self.teacher_inputs(targets, Kind::Float).transpose(0, 1).contiguous()),
        }
    }
}

/// `[first; steps[..time - 1]]` flattened to `[time · batch, width]`: what each step read from
/// the step before (`first` for the first step).
fn after(first: &Tensor, steps: &Tensor, width: i64) -> Tensor {
    let time = steps.size()[0];
    Tensor::cat(&[first.unsqueeze(0), steps.narrow(0, 0, time - 1)], 0).view([-1, width])
}
