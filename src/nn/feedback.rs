//! Decoders that read what they wrote. The encoder's final state starts the decoder, which reads
//! its previous token at every step (Sutskever et al., 2014), optionally attending over every
//! encoder output (Luong et al., 2015: the "general" score with input feeding).
//!
//! Training feeds the target's previous token (teacher forcing); prediction feeds the decoder's
//! own, chosen greedily ([`Feedback::greedy`]; [`Feedback::greedy_until_end`] when only the
//! answers are wanted) or from a beam ([`Feedback::beam`]). These run on
//! libtorch's ops under autograd, on the CPU and on a GPU alike; on the CPU in float32, training
//! runs the hand-written passes of `feedback/teacher.rs` instead, and answering the step of
//! `feedback/answer.rs`.
//!
//! The previous token is read one-hot, with one more column for the start token: the decoder's
//! `weight_ih_l0` holds the token embedding folded into its input weights (a value task reads the
//! value and a start flag).

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use crate::nn::lstm::{Lstm, State};
use crate::task::Features;

mod answer;
mod teacher;
use answer::Stepper;
pub use teacher::{DecoderGradients, DecoderTape, FeedbackGradients};

/// What the encoder hands a feedback decoder (batch first).
#[derive(Debug)]
pub struct Encoded {
    /// Every step's output of the top encoder layer(s), `[batch, input_len, memory]`.
    pub outputs: Tensor,
    /// Every encoder layer's final state, `[layers, batch, memory]` each.
    pub state: State,
    /// Where the input is padding, `[batch, input_len]`, when the task pads its inputs.
    pub padding: Option<Tensor>,
}

impl Encoded {
    /// A bidirectional encoder's: each stack's outputs `[batch, input_len, units]` (the
    /// backward stack's put back in reading order) and final state, side by side, the forward
    /// stack's first.
    pub fn of_both_directions(forward: (Tensor, State), backward: (Tensor, State), padding: Option<Tensor>) -> Encoded {
        let ((outputs, state), (reversed, reverse_state)) = (forward, backward);
        Encoded {
            outputs: Tensor::cat(&[outputs, reversed], 2),
            state: State {
                h: Tensor::cat(&[state.h, reverse_state.h], 2),
                c: Tensor::cat(&[state.c, reverse_state.c], 2),
            },
            padding,
        }
    }

    /// The rows of `index` (a beam's copies of each input; the inputs put back in order).
    pub fn select(&self, index: &Tensor) -> Encoded {
        Encoded {
            outputs: self.outputs.index_select(0, index),
            state: self.state.select(index),
            padding: self.padding.as_ref().map(|padding| padding.index_select(0, index)),
        }
    }
}

/// The decoder's LSTM and output layer, which the model owns for every kind of decoder.
pub struct Parts<'a> {
    pub decoder: &'a Lstm,
    pub output: &'a nn::Linear,
}

/// The parts a feedback decoder adds to the reference's: the bridge from the encoder's state to
/// the decoder's, and optionally attention.
#[derive(Debug)]
pub struct Feedback {
    /// `h = tanh(W h_enc + b)` for every decoder layer, from the encoder layer level with it
    /// counted from the top (the lowest encoder layer again, when the decoder has more).
    bridge_h: nn::Linear,
    /// `c = W c_enc + b`, likewise.
    bridge_c: nn::Linear,
    attention: Option<Attention>,
    output: Features,
    decoder_layers: i64,
    units: i64,
}

/// Luong's "general" attention with input feeding, in one head or several.
///
/// With `H` heads, head `k` scores the memory with its slice `k` of the decoder's output and of
/// the keys (`units / H` wide each): `s_k = h_t[k]ᵀ (W_a h̄_s)[k]`, and reads its own context
/// `c_k`; `h̃_t = tanh(W_c [c_1; …; c_H; h_t])`. One head is Luong's score exactly.
#[derive(Debug)]
struct Attention {
    /// `W_a` of the score `h_tᵀ W_a h̄_s`: `[decoder_units, memory]` (`nn.Linear(memory, units, bias=False)`).
    score: Tensor,
    /// `W_c` of `h̃_t = tanh(W_c [c_1; …; c_H; h_t])`: `[decoder_units, heads · memory + decoder_units]`.
    combine: Tensor,
    heads: i64,
}

/// The encoder's outputs as attention reads them at every step.
struct Memory {
    outputs: Tensor,
    /// `h̄_s W_aᵀ` as the heads read it, `[batch, heads, input_len, units / heads]`: the score's
    /// product with the memory, made once per batch (a view of that product for one head).
    keys: Tensor,
    padding: Option<Tensor>,
    /// The memory row that each decoding row reads (`None`: row `i` reads row `i`). The
    /// hand-written step follows it rather than copying the memory whenever answers end or a
    /// beam repeats its input; libtorch's ops need the rows in place. Kept on the host, where
    /// the step reads it, so that it is made once per selection rather than once per step.
    rows: Option<Vec<i64>>,
}

impl Memory {
    /// `encoded`'s outputs and padding, with `keys` made from them (in the heads' layout).
    fn of(encoded: &Encoded, keys: Tensor) -> Memory {
        let padding = encoded.padding.as_ref().map(Tensor::shallow_clone);
        Memory { outputs: encoded.outputs.shallow_clone(), keys, padding, rows: None }
    }

    /// The decoding rows of `index` (the answers still being written, a beam's copies of each
    /// input): by reference when `by_reference`, else copied into place.
    fn select(&self, index: &Tensor, by_reference: bool) -> Memory {
        if by_reference {
            let index = Vec::<i64>::try_from(index).expect("int64 row indices");
            let rows = match &self.rows {
                Some(rows) => index.iter().map(|&row| rows[row as usize]).collect(),
                None => index,
            };
            return Memory {
                outputs: self.outputs.shallow_clone(),
                keys: self.keys.shallow_clone(),
                padding: self.padding.as_ref().map(Tensor::shallow_clone),
                rows: Some(rows),
            };
        }
        let rows = match &self.rows {
            Some(rows) => Tensor::from_slice(rows).to_device(index.device()).index_select(0, index),
            None => index.shallow_clone(),
        };
        Memory {
            outputs: self.outputs.index_select(0, &rows),
            keys: self.keys.index_select(0, &rows),
            padding: self.padding.as_ref().map(|padding| padding.index_select(0, &rows)),
            rows: None,
        }
    }
}

/// A beam's hypotheses, a row each: their class ids and token log-probabilities `[rows,
/// steps so far]`, log-probabilities and written lengths `[rows]` (double).
struct Searched {
    ids: Tensor,
    token_log_probs: Tensor,
    scores: Tensor,
    lengths: Tensor,
}

impl Searched {
    fn select(&self, rows: &Tensor) -> Searched {
        Searched {
            ids: self.ids.index_select(0, rows),
            token_log_probs: self.token_log_probs.index_select(0, rows),
            scores: self.scores.index_select(0, rows),
            lengths: self.lengths.index_select(0, rows),
        }
    }

    /// Writes `from`'s rows (its steps so far) into rows `rows` of this full-length record.
    fn store(&self, rows: &Tensor, from: &Searched) {
        let written = from.ids.size()[1];
        let _ = self.ids.narrow(1, 0, written).index_copy_(0, rows, &from.ids);
        let _ = self.token_log_probs.narrow(1, 0, written).index_copy_(0, rows, &from.token_log_probs);
        let _ = self.scores.shallow_clone().index_copy_(0, rows, &from.scores);
        let _ = self.lengths.shallow_clone().index_copy_(0, rows, &from.lengths);
    }

    /// Each input's hypotheses that have a score, best first by their score per written token.
    fn hypotheses(&self, batch: usize, beam: usize, steps: usize) -> Vec<Vec<Hypothesis>> {
        let normalised = &self.scores / self.lengths.clamp_min(1.0);
        let host = |t: &Tensor, kind| t.to_kind(kind).to_device(tch::Device::Cpu).contiguous();
        let ids = Vec::<i64>::try_from(host(&self.ids, Kind::Int64).view([-1])).expect("int64 ids");
        let token_log_probs = Vec::<f64>::try_from(host(&self.token_log_probs, Kind::Double).view([-1]))
            .expect("double log-probabilities");
        let scores = Vec::<f64>::try_from(host(&self.scores, Kind::Double)).expect("double scores");
        let normalised = Vec::<f64>::try_from(host(&normalised, Kind::Double)).expect("double scores");
        let mut answers: Vec<Vec<Hypothesis>> = Vec::with_capacity(batch);
        for input in 0..batch {
            let mut hypotheses: Vec<Hypothesis> = (0..beam)
                .map(|k| input * beam + k)
                .filter(|&row| scores[row].is_finite())
                .map(|row| Hypothesis {
                    ids: ids[row * steps..(row + 1) * steps].to_vec(),
                    token_log_probs: token_log_probs[row * steps..(row + 1) * steps].to_vec(),
                    log_prob: scores[row],
                    score: normalised[row],
                })
                .collect();
            hypotheses.sort_by(|a, b| b.score.total_cmp(&a.score));
            answers.push(hypotheses);
        }
        answers
    }
}

/// The rows of a beam `beam` wide that belong to `inputs`, in order.
fn rows_of(inputs: &Tensor, beam: i64) -> Tensor {
    let within = Tensor::arange(beam, (Kind::Int64, inputs.device())).unsqueeze(0);
    (inputs.unsqueeze(1) * beam + within).view([-1])
}

/// One of the beam's answers to an input.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Every written step's class id (after an end marker, the end marker again).
    pub ids: Vec<i64>,
    /// The log-probability of each written step, given the steps before it.
    pub token_log_probs: Vec<f64>,
    /// Their sum up to and including the end marker: the hypothesis's log-probability.
    pub log_prob: f64,
    /// `log_prob` per written token, the end marker included: what the beam ranks by.
    pub score: f64,
}

impl Hypothesis {
    /// The best hypothesis of each input's beam, laid end to end: every written step's class id
    /// and the probability it was given after the steps before it.
    pub fn best_of(answers: &[Vec<Hypothesis>]) -> (Vec<i64>, Vec<f64>) {
        let best = || answers.iter().map(|hypotheses| &hypotheses[0]);
        let ids = best().flat_map(|best| best.ids.iter().copied()).collect();
        let probabilities = best().flat_map(|best| best.token_log_probs.iter().map(|p| p.exp())).collect();
        (ids, probabilities)
    }
}

/// Glorot-uniform, as the output layer and Keras's kernels start.
fn glorot(fan_in: i64, fan_out: i64) -> Init {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -limit, up: limit }
}

impl Feedback {
    /// Width of what the decoder reads at each step: the previous token (one column more than
    /// the output's, for the start token) and, with attention, the previous attentional state.
    pub fn decoder_input_width(output: Features, units: usize, attention: bool) -> usize {
        output.width() + 1 + if attention { units } else { 0 }
    }

    /// Creates `bridge.{h,c}` and, with attention (`Some(heads)`), `attention.{score,combine}`
    /// under `vs`.
    pub fn new(
        vs: &nn::Path,
        memory: usize,
        units: usize,
        decoder_layers: usize,
        output: Features,
        attention_heads: Option<usize>,
    ) -> Self {
        let (memory, units_i) = (memory as i64, units as i64);
        let bridge = |name: &str| {
            let config =
                nn::LinearConfig { ws_init: glorot(memory, units_i), bs_init: Some(Init::Const(0.0)), bias: true };
            nn::linear(vs / "bridge" / name, memory, units_i, config)
        };
        let (bridge_h, bridge_c) = (bridge("h"), bridge("c"));
        let attention = attention_heads.map(|heads| {
            let path = vs / "attention";
            let contexts = heads as i64 * memory;
            Attention {
                score: (&path / "score").var("weight", &[units_i, memory], glorot(memory, units_i)),
                combine: (&path / "combine").var(
                    "weight",
                    &[units_i, contexts + units_i],
                    glorot(contexts + units_i, units_i),
                ),
                heads: heads as i64,
            }
        });
        Self { bridge_h, bridge_c, attention, output, decoder_layers: decoder_layers as i64, units: units_i }
    }

    /// Another handle on the same weights (see [`crate::nn::model::Seq2Seq::replica`]).
    pub fn replica(&self) -> Feedback {
        let linear =
            |l: &nn::Linear| nn::Linear { ws: l.ws.shallow_clone(), bs: l.bs.as_ref().map(Tensor::shallow_clone) };
        Feedback {
            bridge_h: linear(&self.bridge_h),
            bridge_c: linear(&self.bridge_c),
            attention: self.attention.as_ref().map(|a| Attention {
                score: a.score.shallow_clone(),
                combine: a.combine.shallow_clone(),
                heads: a.heads,
            }),
            output: self.output,
            decoder_layers: self.decoder_layers,
            units: self.units,
        }
    }

    /// The trainable tensors this adds, in the order they were made.
    pub fn trainable(&self) -> Vec<&Tensor> {
        let mut variables = Vec::new();
        for bridge in [&self.bridge_h, &self.bridge_c] {
            variables.push(&bridge.ws);
            variables.extend(bridge.bs.as_ref());
        }
        if let Some(attention) = &self.attention {
            variables.extend([&attention.score, &attention.combine]);
        }
        variables
    }

    /// Trainable numbers of the bridge and of the attention (`Some(heads)`), apart.
    pub fn parameter_counts(memory: usize, units: usize, attention_heads: Option<usize>) -> (u128, u128) {
        let (memory, units) = (memory as u128, units as u128);
        let bridge = 2 * (memory * units + units);
        let attention = attention_heads.map_or(0, |heads| units * memory + units * (heads as u128 * memory + units));
        (bridge, attention)
    }

    pub fn attends(&self) -> bool {
        self.attention.is_some()
    }

    /// Decoder outputs `[batch, output_len, width]` for `targets` `[batch, output_len]` (class
    /// ids, or values), each step reading the target's previous token (teacher forcing).
    pub fn teacher_forced(&self, parts: &Parts, encoded: &Encoded, targets: &Tensor, train: bool) -> Tensor {
        let steps = targets.size()[1];
        let kind = parts.output.ws.kind();
        let previous = self.teacher_inputs(targets, kind);
        if self.attention.is_none() {
            // Every input is known: one op over all steps.
            let (outputs, _) = parts.decoder.run_with_lstm_op(&previous, &self.start(encoded), train);
            return self.shaped(parts.output.forward(&outputs));
        }
        self.shaped(
            self.unroll(parts, encoded, steps, train, previous.narrow(1, 0, 1), |t, _| previous.narrow(1, t + 1, 1)),
        )
    }

    /// Decoder outputs `[batch, steps, width]` from the start token, each step reading the
    /// decoder's own most probable previous token (a value task, its previous value); with
    /// `by_hand`, a task of classes runs the hand-written step (float32 on the CPU).
    pub fn greedy(&self, parts: &Parts, encoded: &Encoded, steps: i64, by_hand: bool) -> Tensor {
        let batch = encoded.outputs.size()[0];
        if let Features::Value = self.output {
            let first = self.start_input(batch, &parts.output.ws);
            let output = self.unroll(parts, encoded, steps, false, first, |_, values| {
                self.written_input(&values.squeeze_dim(-1), &parts.output.ws)
            });
            return self.shaped(output);
        }
        let stepper = Stepper::new(self, parts, by_hand);
        let (memory, mut state, mut fed) = self.begin(encoded, &parts.output.ws, &stepper);
        let mut previous = self.start_ids(batch, encoded.outputs.device());
        let mut outputs = Vec::with_capacity(steps as usize);
        for _ in 0..steps {
            let (top, next_state, next_fed) =
                self.answer_step(&stepper, parts, memory.as_ref(), &previous, &state, &fed);
            (state, fed) = (next_state, next_fed);
            let output = parts.output.forward(&top);
            previous = output.argmax(-1, false);
            outputs.push(output);
        }
        Tensor::stack(&outputs, 1)
    }

    /// The greedy answers' class ids `[batch, steps]`, as [`Feedback::greedy`]'s argmax writes
    /// them up to each row's first `end`; a row that has written `end` leaves the batch, so
    /// that the later steps cost only the rows still writing, and its remaining steps hold
    /// `end`. For class outputs only; `by_hand` as for [`Feedback::greedy`].
    pub fn greedy_until_end(&self, parts: &Parts, encoded: &Encoded, steps: i64, end: i64, by_hand: bool) -> Tensor {
        let batch = encoded.outputs.size()[0];
        let device = encoded.outputs.device();
        let ids = Tensor::full([batch, steps], end, (Kind::Int64, device));
        let stepper = Stepper::new(self, parts, by_hand);
        let (mut memory, mut state, mut fed) = self.begin(encoded, &parts.output.ws, &stepper);
        let mut previous = self.start_ids(batch, device);
        // The batch row of each row still writing.
        let mut writing = Tensor::arange(batch, (Kind::Int64, device));
        for t in 0..steps {
            let (top, next_state, next_fed) =
                self.answer_step(&stepper, parts, memory.as_ref(), &previous, &state, &fed);
            (state, fed) = (next_state, next_fed);
            let token = parts.output.forward(&top).argmax(-1, false);
            let _ = ids.narrow(1, t, 1).index_copy_(0, &writing, &token.unsqueeze(1));
            let going = token.ne(end);
            let still = i64::try_from(going.sum(Kind::Int64)).expect("a count");
            if still == 0 {
                break;
            }
            if still < token.size()[0] {
                let kept = going.nonzero().squeeze_dim(1);
                writing = writing.index_select(0, &kept);
                memory = memory.map(|memory| memory.select(&kept, stepper.reads_by_reference()));
                state = state.select(&kept);
                fed = fed.index_select(0, &kept);
                previous = token.index_select(0, &kept);
            } else {
                previous = token;
            }
        }
        ids
    }

    /// The `beam` most probable answers to each input by beam search, best first by their
    /// log-probability per written token (OpenNMT-py's `avg` length penalty). A hypothesis ends
    /// at `end` (a class id), after which it keeps its score; without one, every answer is
    /// `steps` long. With `drop_ended`, an input whose every hypothesis has ended leaves the
    /// search, whose later steps then cost only the inputs still searched; without, every input
    /// is searched to the last step (the tests' oracle: an ended input's hypotheses only write
    /// the end marker again, at no cost). For class outputs only; `by_hand` as for
    /// [`Feedback::greedy`].
    #[allow(clippy::too_many_arguments)]
    pub fn beam(
        &self,
        parts: &Parts,
        encoded: &Encoded,
        steps: i64,
        beam: usize,
        end: Option<i64>,
        drop_ended: bool,
        by_hand: bool,
    ) -> Vec<Vec<Hypothesis>> {
        let Features::Classes(classes) = self.output else { unreachable!("a beam is searched over classes") };
        let (batch, beam, classes) = (encoded.outputs.size()[0], beam as i64, classes as i64);
        let device = encoded.outputs.device();
        let rows = batch * beam;
        let copies = Tensor::arange(batch, (Kind::Int64, device)).repeat_interleave_self_int(beam, None, None);
        let stepper = Stepper::new(self, parts, by_hand);
        let (mut memory, mut state, mut fed) = if stepper.reads_by_reference() {
            // Each input's hypotheses read its memory: begun once, the copies by reference.
            let (memory, state, fed) = self.begin(encoded, &parts.output.ws, &stepper);
            (memory.map(|memory| memory.select(&copies, true)), state.select(&copies), fed.index_select(0, &copies))
        } else {
            self.begin(&encoded.select(&copies), &parts.output.ws, &stepper)
        };
        let mut previous = self.start_ids(rows, device);
        // Only the first copy of each input starts, so that the first step's choices differ.
        let scores = Tensor::full([batch, beam], f64::NEG_INFINITY, (Kind::Double, device));
        let _ = scores.narrow(1, 0, 1).fill_(0.0);
        let mut searched = Searched {
            ids: Tensor::zeros([rows, 0], (Kind::Int64, device)),
            token_log_probs: Tensor::zeros([rows, 0], (Kind::Double, device)),
            scores: scores.view([rows]),
            lengths: Tensor::zeros([rows], (Kind::Double, device)),
        };
        let mut finished = Tensor::zeros([rows], (Kind::Bool, device));
        // Every input's hypotheses, filled in as the input leaves the search.
        let ended = Searched {
            ids: Tensor::full([rows, steps], end.unwrap_or(0), (Kind::Int64, device)),
            token_log_probs: Tensor::zeros([rows, steps], (Kind::Double, device)),
            scores: Tensor::zeros([rows], (Kind::Double, device)),
            lengths: Tensor::zeros([rows], (Kind::Double, device)),
        };
        // The inputs still searched, by their index in the batch.
        let mut inputs = Tensor::arange(batch, (Kind::Int64, device));
        // A finished hypothesis can only write the end marker again, at no cost.
        let carried = end.map(|end| {
            let carried = Tensor::full([1, classes], f64::NEG_INFINITY, (Kind::Double, device));
            let _ = carried.narrow(1, end, 1).fill_(0.0);
            carried
        });
        for t in 0..steps {
            let searching = inputs.size()[0];
            let (top, next_state, next_fed) =
                self.answer_step(&stepper, parts, memory.as_ref(), &previous, &state, &fed);
            let mut log_probs = parts.output.forward(&top).log_softmax(-1, Kind::Double);
            if let Some(carried) = &carried {
                log_probs = log_probs.where_self(&finished.logical_not().unsqueeze(1), carried);
            }
            let candidates = (searched.scores.unsqueeze(1) + &log_probs).view([searching, beam * classes]);
            let (best, index) = candidates.topk(beam, -1, true, true);
            let first_rows = Tensor::arange(searching, (Kind::Int64, device)).unsqueeze(1) * beam;
            let origin = (&first_rows + index.floor_divide_scalar(classes)).view([-1]);
            let mut token = index.remainder(classes).view([-1]);
            let chosen = log_probs.index_select(0, &origin).gather(1, &token.unsqueeze(1), false);
            state = next_state.select(&origin);
            fed = next_fed.index_select(0, &origin);
            finished = finished.index_select(0, &origin);
            searched = Searched {
                lengths: searched.lengths.index_select(0, &origin) + finished.logical_not().to_kind(Kind::Double),
                ids: Tensor::cat(&[searched.ids.index_select(0, &origin), token.unsqueeze(1)], 1),
                token_log_probs: Tensor::cat(&[searched.token_log_probs.index_select(0, &origin), chosen], 1),
                scores: best.view([-1]),
            };
            if let Some(end) = end {
                finished = finished.logical_or(&token.eq(end));
            }
            let done = (drop_ended && end.is_some() && t + 1 < steps)
                .then(|| finished.view([searching, beam]).all_dim(1, false));
            let leaving = done.as_ref().map_or(0, |done| i64::try_from(done.sum(Kind::Int64)).expect("a count"));
            if let Some(done) = done.filter(|_| leaving > 0) {
                let left = done.nonzero().squeeze_dim(1);
                ended.store(&rows_of(&inputs.index_select(0, &left), beam), &searched.select(&rows_of(&left, beam)));
                if leaving == searching {
                    inputs = inputs.narrow(0, 0, 0);
                    break;
                }
                let kept_inputs = done.logical_not().nonzero().squeeze_dim(1);
                let kept = rows_of(&kept_inputs, beam);
                inputs = inputs.index_select(0, &kept_inputs);
                memory = memory.map(|memory| memory.select(&kept, stepper.reads_by_reference()));
                state = state.select(&kept);
                fed = fed.index_select(0, &kept);
                finished = finished.index_select(0, &kept);
                searched = searched.select(&kept);
                token = token.index_select(0, &kept);
            }
            previous = token;
        }
        if inputs.size()[0] > 0 {
            ended.store(&rows_of(&inputs, beam), &searched);
        }
        ended.hypotheses(batch as usize, beam as usize, steps as usize)
    }

    /// Runs `steps` decoder steps from `first`: after step `t`, `next(t, outputs)` gives what
    /// step `t + 1` reads. Returns the output layer's `[batch, steps, width]`.
    fn unroll(
        &self,
        parts: &Parts,
        encoded: &Encoded,
        steps: i64,
        train: bool,
        first: Tensor,
        mut next: impl FnMut(i64, &Tensor) -> Tensor,
    ) -> Tensor {
        let (memory, mut state, mut fed) = self.begin(encoded, &parts.output.ws, &Stepper::Ops);
        let mut input = first;
        let mut outputs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            let (top, next_state, next_fed) = self.step(parts, memory.as_ref(), &input, &state, &fed, train);
            (state, fed) = (next_state, next_fed);
            let output = parts.output.forward(&top);
            if t + 1 < steps {
                input = next(t, &output);
            }
            outputs.push(output);
        }
        Tensor::stack(&outputs, 1)
    }

    /// One decoder step on `input` `[batch, 1, token width]`: what the output layer reads
    /// `[batch, units]` (with attention, the attentional state `h̃_t`), the new state, and what
    /// the next step is fed besides its token (`h̃_t`; unused without attention).
    fn step(
        &self,
        parts: &Parts,
        memory: Option<&Memory>,
        input: &Tensor,
        state: &State,
        fed: &Tensor,
        train: bool,
    ) -> (Tensor, State, Tensor) {
        match (&self.attention, memory) {
            (Some(attention), Some(memory)) => {
                let input = Tensor::cat(&[input, &fed.unsqueeze(1)], -1);
                let (output, state) = parts.decoder.run_with_lstm_op(&input, state, train);
                let attentional = attention.attend(memory, &output.squeeze_dim(1));
                (attentional.shallow_clone(), state, attentional)
            }
            _ => {
                let (output, state) = parts.decoder.run_with_lstm_op(input, state, train);
                (output.squeeze_dim(1), state, fed.shallow_clone())
            }
        }
    }

    /// What decoding starts from: attention's memory (with attention), the decoder's first state
    /// and a zero attentional state `h~_0` for the first step to be fed, like `like`'s kind.
    /// With `stepper` by hand, attention's keys are computed only where the input is not
    /// padding ([`Attention::keys_of_tokens`]).
    fn begin(&self, encoded: &Encoded, like: &Tensor, stepper: &Stepper) -> (Option<Memory>, State, Tensor) {
        let memory = self.attention.as_ref().map(|attention| match stepper {
            Stepper::ByHand(_) => Memory::of(encoded, attention.keys_by_head(&attention.keys_of_tokens(encoded))),
            Stepper::Ops => attention.memory(encoded),
        });
        let batch = encoded.outputs.size()[0];
        let fed = Tensor::zeros([batch, self.units], (like.kind(), like.device()));
        (memory, self.start(encoded), fed)
    }

    /// The decoder's first state from the encoder's, through the bridge.
    fn start(&self, encoded: &Encoded) -> State {
        self.bridge(&self.bridged(encoded))
    }

    /// The encoder layer each decoder layer starts from: level with it counted from the top,
    /// the lowest encoder layer again when the decoder has more.
    fn bridged_layers(&self, encoder_layers: i64, device: tch::Device) -> Tensor {
        let from_top = |layer: i64| (self.decoder_layers - 1 - layer).min(encoder_layers - 1);
        let index: Vec<i64> = (0..self.decoder_layers).map(|layer| encoder_layers - 1 - from_top(layer)).collect();
        Tensor::from_slice(&index).to_device(device)
    }

    /// The encoder's final state of the layer each decoder layer starts from, `[decoder layers, batch, memory]`.
    fn bridged(&self, encoded: &Encoded) -> State {
        let index = self.bridged_layers(encoded.state.h.size()[0], encoded.outputs.device());
        State { h: encoded.state.h.index_select(0, &index), c: encoded.state.c.index_select(0, &index) }
    }

    /// `h = tanh(W h_enc + b)`, `c = W c_enc + b` of [`Feedback::bridged`]'s states.
    fn bridge(&self, bridged: &State) -> State {
        State {
            h: self.bridge_h.forward(&bridged.h).tanh().contiguous(),
            c: self.bridge_c.forward(&bridged.c).contiguous(),
        }
    }

    /// What each step reads under teacher forcing, `[batch, steps, token width]`: the start
    /// token, then the target's previous steps (an ignored step reads as class 0: whatever it
    /// reads, its loss and the later steps' are ignored too).
    fn teacher_inputs(&self, targets: &Tensor, kind: Kind) -> Tensor {
        let [batch, steps] = targets.size()[..] else { unreachable!("targets are [batch, steps]") };
        let device = targets.device();
        let before = targets.narrow(1, 0, steps - 1);
        match self.output {
            Features::Classes(classes) => teacher_ids(targets, classes).one_hot(classes as i64 + 1).to_kind(kind),
            Features::Value => {
                let values = Tensor::cat(&[Tensor::zeros([batch, 1], (kind, device)), before.to_kind(kind)], 1);
                let flags = Tensor::zeros([batch, steps], (kind, device));
                let _ = flags.narrow(1, 0, 1).fill_(1.0);
                Tensor::stack(&[values, flags], -1)
            }
        }
    }

    /// The start token for `batch` rows, `[batch, 1, token width]`, like `like`'s kind and device.
    fn start_input(&self, batch: i64, like: &Tensor) -> Tensor {
        let width = self.output.width() as i64 + 1;
        let input = Tensor::zeros([batch, 1, width], (like.kind(), like.device()));
        let _ = input.narrow(2, width - 1, 1).fill_(1.0);
        input
    }

    /// The start token's class id (one past the classes) for `rows` rows.
    fn start_ids(&self, rows: i64, device: tch::Device) -> Tensor {
        Tensor::full([rows], self.output.width() as i64, (Kind::Int64, device))
    }

    /// What the next step reads after writing `written` `[batch]` (class ids, or values).
    fn written_input(&self, written: &Tensor, like: &Tensor) -> Tensor {
        match self.output {
            Features::Classes(classes) => written.one_hot(classes as i64 + 1).to_kind(like.kind()).unsqueeze(1),
            Features::Value => {
                let flag = written.zeros_like();
                Tensor::stack(&[written.shallow_clone(), flag], -1).unsqueeze(1)
            }
        }
    }

    /// `[batch, steps, width]` as the model's outputs are shaped: values lose their last axis.
    fn shaped(&self, output: Tensor) -> Tensor {
        match self.output {
            Features::Classes(_) => output,
            Features::Value => output.squeeze_dim(-1),
        }
    }
}

impl Attention {
    fn memory(&self, encoded: &Encoded) -> Memory {
        Memory::of(encoded, self.keys_by_head(&self.keys(encoded)))
    }

    /// The memory's keys `h̄_s W_aᵀ` over every step.
    fn keys(&self, encoded: &Encoded) -> Tensor {
        encoded.outputs.matmul(&self.score.tr())
    }

    /// `keys` `[batch, steps, units]` as the heads read them, `[batch, heads, steps, units /
    /// heads]`: each head's slice of every step side by side (a view for one head).
    fn keys_by_head(&self, keys: &Tensor) -> Tensor {
        let [batch, steps, units] = keys.size()[..] else { unreachable!("keys are [batch, steps, units]") };
        keys.view([batch, steps, self.heads, units / self.heads]).transpose(1, 2).contiguous()
    }

    /// `h̃_t = tanh(W_c [c_t; h_t])`, where the context `c_t` weighs the memory by the softmax
    /// of the scores over the input's steps, padding left out (with several heads, each head's
    /// context side by side).
    fn attend(&self, memory: &Memory, top: &Tensor) -> Tensor {
        self.attend_keeping(memory, top).attentional
    }

    /// [`Attention::attend`], keeping what its backward pass reads.
    fn attend_keeping(&self, memory: &Memory, top: &Tensor) -> Attended {
        debug_assert!(memory.rows.is_none(), "libtorch's ops read the memory's rows in place");
        let [batch, units] = top.size()[..] else { unreachable!("the decoder's output is [batch, units]") };
        let slice = units / self.heads;
        let queries = top.view([batch * self.heads, slice, 1]);
        let keys = memory.keys.reshape([batch * self.heads, -1, slice]);
        let scores = keys.bmm(&queries).view([batch, self.heads, -1]);
        let scores = match &memory.padding {
            Some(padding) => scores.masked_fill(&padding.unsqueeze(1), f64::NEG_INFINITY),
            None => scores,
        };
        let weights = scores.softmax(-1, scores.kind());
        let context = weights.bmm(&memory.outputs).view([batch, -1]);
        let joined = Tensor::cat(&[&context, top], 1);
        let attentional = joined.matmul(&self.combine.tr()).tanh();
        Attended { weights, joined, attentional }
    }
}

/// One step of attention, `[batch, ...]` each.
struct Attended {
    /// The softmax of each head's scores over the input's steps, `[batch, heads, input_len]`.
    weights: Tensor,
    /// `[c_1; …; c_H; h_t]`: the heads' contexts and the decoder's output.
    joined: Tensor,
    /// `h̃_t`.
    attentional: Tensor,
}

/// The class id each step reads under teacher forcing, `[batch, steps]`: the start token (one
/// past the `classes`), then the target's previous steps, an ignored step as class 0.
fn teacher_ids(targets: &Tensor, classes: usize) -> Tensor {
    let [batch, steps] = targets.size()[..] else { unreachable!("targets are [batch, steps]") };
    let start = Tensor::full([batch, 1], classes as i64, (Kind::Int64, targets.device()));
    Tensor::cat(&[start, targets.narrow(1, 0, steps - 1).clamp_min(0)], 1)
}

/// For each row of `padding` `[batch, steps]` (left padding): the steps in the order that reads
/// the row's tokens backwards after its padding, `[batch, steps]`. It is its own inverse, so it
/// also puts a backward pass's outputs back in reading order.
pub fn reading_backwards(padding: Option<&Tensor>, batch: i64, steps: i64, device: tch::Device) -> Tensor {
    let step = Tensor::arange(steps, (Kind::Int64, device)).unsqueeze(0).expand([batch, steps], false);
    let pads = match padding {
        Some(padding) => padding.sum_dim_intlist(1, true, Kind::Int64),
        None => Tensor::zeros([batch, 1], (Kind::Int64, device)),
    };
    let backwards = &pads + (steps - 1) - &step;
    step.where_self(&step.lt_tensor(&pads), &backwards).contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With several heads, each head is Luong's one-head attention over its slice of the keys
    /// and of the decoder's output, padding left out; the contexts stand side by side.
    #[test]
    fn each_head_attends_with_its_own_slice() {
        let (batch, steps, memory, units, heads) = (3, 5, 6, 8, 4);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let feedback =
            Feedback::new(&vs.root(), memory as usize, units as usize, 1, Features::Classes(4), Some(heads as usize));
        let attention = feedback.attention.as_ref().expect("attention");
        let outputs = Tensor::randn([batch, steps, memory], (Kind::Float, tch::Device::Cpu));
        let padding = Tensor::from_slice(&[true, true, false, false, false])
            .view([1, steps])
            .repeat([batch, 1])
            .logical_and(&Tensor::from_slice(&[true, false, true]).view([batch, 1]));
        let zeros = || Tensor::zeros([1, batch, memory], (Kind::Float, tch::Device::Cpu));
        let state = State { h: zeros(), c: zeros() };
        let encoded = Encoded { outputs: outputs.shallow_clone(), state, padding: Some(padding.shallow_clone()) };
        let top = Tensor::randn([batch, units], (Kind::Float, tch::Device::Cpu));
        let attended = tch::no_grad(|| attention.attend_keeping(&attention.memory(&encoded), &top));
        let slice = units / heads;
        let keys = outputs.matmul(&attention.score.tr());
        for head in 0..heads {
            let query = top.narrow(1, head * slice, slice);
            let scores = keys.narrow(2, head * slice, slice).bmm(&query.unsqueeze(2)).squeeze_dim(2);
            let weights = scores.masked_fill(&padding, f64::NEG_INFINITY).softmax(-1, Kind::Float);
            let context = weights.unsqueeze(1).bmm(&outputs).squeeze_dim(1);
            let got = attended.joined.narrow(1, head * memory, memory);
            assert!(got.allclose(&context, 1e-5, 1e-6, false), "head {head}");
            assert!(attended.weights.select(1, head).allclose(&weights, 1e-5, 1e-6, false), "head {head}");
        }
        assert!(attended.joined.narrow(1, heads * memory, units).equal(&top));
        let expected = attended.joined.matmul(&attention.combine.tr()).tanh();
        assert!(attended.attentional.allclose(&expected, 1e-5, 1e-6, false));
    }

    #[test]
    fn reading_backwards_keeps_the_padding_first() {
        let padding =
            Tensor::from_slice(&[true, true, false, false, false, false, false, false, false, false]).view([2, 5]);
        let order = reading_backwards(Some(&padding), 2, 5, tch::Device::Cpu);
        let order = Vec::<i64>::try_from(order.view([-1])).expect("int64");
        assert_eq!(order, [0, 1, 4, 3, 2, 4, 3, 2, 1, 0]);
    }
}
