//! A training step with each batch's rows shared among threads: this one and helpers, each
//! running the hand-written passes on its rows with one libtorch thread, as `predict` does.
//!
//! The result depends on the number of threads, never on their timing: the rows are split by a
//! fixed rule, each share's gradient lands in its own buffer, and the buffers are summed in share
//! order, each weighted by its share of the rows. The threads then split the sum and the
//! optimiser's update of the weights by ranges of elements, each element's arithmetic the same
//! wherever the ranges fall. Clipping by the gradient's norm puts a round between the sum and
//! the update: each range's sum of squares, added in range order. With one thread a step is
//! exactly the single-threaded one.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, RecvError, Sender, TryRecvError};
use std::thread::Scope;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tch::{Kind, Tensor};

use crate::data::mix_seed;
use crate::nn::lstm::{Masks, float_range_mut};
use crate::nn::model::{Gradients, Seq2Seq};
use crate::nn::optim::{Adam, RangeUpdate, StepConstants, clip};
use crate::task::pairs::IGNORED;

/// How long a thread polls for its next message before it sleeps: a step's serial part (Adam,
/// the next batch) takes about this long on the reference model, and waking a sleeping thread
/// costs tens of microseconds, on a virtual machine more.
const POLL_FOR: Duration = Duration::from_micros(300);

/// The next message of `receiver`: polled for [`POLL_FOR`], then waited for.
fn receive<T>(receiver: &Receiver<T>) -> Result<T, RecvError> {
    let start = Instant::now();
    loop {
        match receiver.try_recv() {
            Ok(message) => return Ok(message),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) if start.elapsed() < POLL_FOR => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return receiver.recv(),
        }
    }
}

/// Share 0's gradient in `range` of `buffers` (every share's, in share order) made the
/// batch's: scaled by its weight, then each other share's added with its own, in share order,
/// rounded as libtorch's `mul_` by a scalar, then `mul` and `add_` (Rust never fuses a product
/// and a sum into one rounding).
///
/// # Safety
/// Nothing else reads or writes `range` of share 0's buffer, or writes it in the others,
/// meanwhile.
unsafe fn combine(buffers: &[Tensor], weights: &[f32], range: Range<usize>) {
    // SAFETY: the caller keeps every writer away from `range`, and every other reader from the
    // first buffer's.
    let total = unsafe { float_range_mut(&buffers[0], range.clone()) };
    total.iter_mut().for_each(|x| *x *= weights[0]);
    for (buffer, &weight) in buffers.iter().zip(weights).skip(1) {
        let gradient = unsafe { float_range_mut(buffer, range.clone()) };
        total.iter_mut().zip(gradient.iter()).for_each(|(x, &g)| *x += g * weight);
    }
}

/// The batch's gradient in `range` made from the shares' (as [`combine`]), and the sum of its
/// squares there (clipping's first round).
///
/// # Safety
/// As [`combine`] and [`RangeUpdate::gradient_squared_norm`].
unsafe fn combined_squared_norm(buffers: &[Tensor], weights: &[f32], update: &RangeUpdate, range: Range<usize>) -> f64 {
    // SAFETY: the caller keeps every other reference away from `range`.
    unsafe {
        combine(&buffers[..weights.len()], weights, range.clone());
        update.gradient_squared_norm(range)
    }
}

/// The update of `range` with its gradient first multiplied by `scale`, where given.
///
/// # Safety
/// As [`RangeUpdate::run`].
unsafe fn scaled_update(update: &RangeUpdate, range: Range<usize>, scale: Option<f32>, constants: &StepConstants) {
    // SAFETY: the caller keeps every other reference away from `range`.
    unsafe {
        if let Some(factor) = scale {
            update.scale_gradient(range.clone(), factor);
        }
        update.run(range, constants);
    }
}

/// How `elements` are split among `parts` threads for a step's update: equal ranges in
/// order, each but the last a multiple of 16 elements (a cache line), so that no two
/// threads write one line.
fn update_ranges(elements: usize, parts: usize) -> Vec<Range<usize>> {
    let length = elements.div_ceil(parts.max(1)).next_multiple_of(16);
    (0..parts).map(|part| (part * length).min(elements)..((part + 1) * length).min(elements)).collect()
}

/// Fewer rows than this per share are not worth a thread.
const MIN_ROWS_PER_SHARE: i64 = 8;

/// One message to a helper.
enum Share {
    /// A training step's forward and backward passes.
    Step { inputs: Tensor, targets: Tensor, masks: Masks },
    /// A forward pass without gradients (validation).
    Forward(Tensor),
    /// The step's gradient in `range` made the batch's from the shares' (`weights` in share
    /// order), then the optimiser's update of that range.
    Update { range: Range<usize>, weights: Vec<f32>, constants: StepConstants },
    /// As `Update`'s first half alone, answered with the sum of the range's squares: clipping
    /// needs the whole gradient's norm before any range is updated.
    Combine { range: Range<usize>, weights: Vec<f32> },
    /// The optimiser's update of `range` after a `Combine`, its gradient first multiplied by
    /// `scale` where clipping asks for it.
    ScaledUpdate { range: Range<usize>, scale: Option<f32>, constants: StepConstants },
}

/// A helper's answer to a [`Share`].
enum Reply {
    /// A step's outputs and mean loss; its gradient is in the helper's buffer.
    Step(Tensor, Tensor),
    Forward(Tensor),
    Updated,
    /// The sum of the squares of a combined range.
    Combined(f64),
}

/// A helper thread: shares in, replies back.
struct Helper {
    shares: Sender<Share>,
    replies: Receiver<Reply>,
}

impl Helper {
    fn send(&self, share: Share) -> Result<()> {
        self.shares.send(share).map_err(|_| anyhow!("a training thread stopped"))
    }

    fn reply(&self) -> Result<Reply> {
        receive(&self.replies).map_err(|_| anyhow!("a training thread stopped"))
    }

    /// Waits for the sum of the squares of the helper's combined range.
    fn combined(&self) -> Result<f64> {
        let Reply::Combined(squared_norm) = self.reply()? else {
            bail!("a training thread answered out of turn");
        };
        Ok(squared_norm)
    }

    /// Waits for the helper to finish its range of an update.
    fn updated(&self) -> Result<()> {
        let Reply::Updated = self.reply()? else {
            bail!("a training thread answered out of turn");
        };
        Ok(())
    }
}

/// Runs [`Seq2Seq::forward_backward`] on a batch shared among threads, then the optimiser's
/// update of the weights, also shared where the optimiser allows it.
pub struct SharedStep<'a> {
    model: &'a Seq2Seq,
    /// This thread's share writes straight into the optimiser's slots.
    own: Gradients,
    /// Each share's gradient buffer, laid out as the optimiser's, in share order: the
    /// optimiser's own first, then each helper's. A helper writes its buffer during a step's
    /// passes; every thread reads its range of all of them during the update.
    buffers: Vec<Tensor>,
    /// This thread's handles for updating its range of the weights; `None` where the optimiser
    /// runs libtorch's ops, and this thread then takes the whole update.
    update: Option<RangeUpdate>,
    helpers: Vec<Helper>,
    /// Where given, each step's gradient is clipped to this L2 norm before the update.
    max_grad_norm: Option<f64>,
}

impl<'a> SharedStep<'a> {
    /// Starts `threads - 1` helpers in `scope`, each with its own handle on the weights and its
    /// own gradient buffer laid out as `optimizer`'s. They end when the value is dropped.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        model: &'a Seq2Seq,
        optimizer: &Adam,
        threads: usize,
        max_grad_norm: Option<f64>,
    ) -> Self {
        let helpers = threads.max(1) - 1;
        let buffers: Vec<Tensor> = std::iter::once(optimizer.gradient_buffer())
            .chain((0..helpers).map(|_| optimizer.new_gradient_buffer()))
            .collect();
        let helpers = buffers[1..]
            .iter()
            .map(|gradient| {
                let (shares, shares_in) = mpsc::channel::<Share>();
                let (replies_out, replies) = mpsc::channel();
                let replica = model.replica();
                let mut gradients = replica.gradients(|variable| optimizer.gradient_slot_in(gradient, variable));
                let buffers: Vec<Tensor> = buffers.iter().map(Tensor::shallow_clone).collect();
                let update = optimizer.range_update();
                scope.spawn(move || {
                    // OpenMP's thread count is per thread: a new one starts at every core.
                    tch::set_num_threads(1);
                    let fused = || update.as_ref().expect("updates are shared only where they run fused");
                    while let Ok(share) = receive(&shares_in) {
                        let reply = match share {
                            Share::Step { inputs, targets, masks } => {
                                let (output, loss) =
                                    replica.forward_backward_with_masks(&inputs, &targets, &mut gradients, masks);
                                Reply::Step(output, loss)
                            }
                            Share::Forward(inputs) => Reply::Forward(replica.forward(&inputs)),
                            Share::Update { range, weights, constants } => {
                                // SAFETY: each thread updates its own range, and only once
                                // every share's passes have finished.
                                unsafe {
                                    combine(&buffers[..weights.len()], &weights, range.clone());
                                    fused().run(range, &constants);
                                }
                                Reply::Updated
                            }
                            Share::Combine { range, weights } => {
                                // SAFETY: as for `Update`.
                                Reply::Combined(unsafe { combined_squared_norm(&buffers, &weights, fused(), range) })
                            }
                            Share::ScaledUpdate { range, scale, constants } => {
                                // SAFETY: as for `Update`; every range has been combined.
                                unsafe { scaled_update(fused(), range, scale, &constants) };
                                Reply::Updated
                            }
                        };
                        if replies_out.send(reply).is_err() {
                            break;
                        }
                    }
                });
                Helper { shares, replies }
            })
            .collect();
        let own = model.gradients(|variable| optimizer.gradient_slot(variable));
        Self { model, own, buffers, update: optimizer.range_update(), helpers, max_grad_norm }
    }

    /// Threads that share a batch (this one included).
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// How a batch of `rows` is split: as evenly as possible, the first shares one row longer,
    /// no share under `MIN_ROWS_PER_SHARE` rows (unless there is only one), at most `threads`.
    pub fn share_sizes(rows: i64, threads: usize) -> Vec<i64> {
        let shares = (rows / MIN_ROWS_PER_SHARE).clamp(1, threads.max(1) as i64);
        (0..shares).map(|share| rows / shares + i64::from(share < rows % shares)).collect()
    }

    /// The model's output and mean loss on the batch, after `optimizer`'s update from the
    /// batch's gradient (left in its slots). With several shares, share `i` draws its dropout
    /// masks from `Masks::Seeded(mix_seed(seed ^ mix_seed(i)))` for `masks` `Seeded(seed)`,
    /// and the threads that computed shares update a range of the weights each.
    pub fn step(
        &mut self,
        inputs: &Tensor,
        targets: &Tensor,
        masks: Masks,
        optimizer: &mut Adam,
    ) -> Result<(Tensor, Tensor)> {
        let rows = inputs.size()[0];
        let sizes = Self::share_sizes(rows, self.threads());
        if sizes.len() == 1 {
            let result = self.model.forward_backward_with_masks(inputs, targets, &mut self.own, masks);
            self.step_whole(optimizer);
            return Ok(result);
        }
        let share_masks = |share: usize| match masks {
            Masks::Global => Masks::Global,
            Masks::Seeded(seed) => Masks::Seeded(mix_seed(seed ^ mix_seed(share as u64))),
        };
        let input_shares = inputs.split_with_sizes(&sizes, 0);
        let target_shares = targets.split_with_sizes(&sizes, 0);
        let helpers = &self.helpers[..sizes.len() - 1];
        for (share, helper) in helpers.iter().enumerate() {
            let share = share + 1;
            helper.send(Share::Step {
                inputs: input_shares[share].shallow_clone(),
                targets: target_shares[share].shallow_clone(),
                masks: share_masks(share),
            })?;
        }
        let (own_output, own_loss) =
            self.model.forward_backward_with_masks(&input_shares[0], &target_shares[0], &mut self.own, share_masks(0));
        // The batch's mean is the weighted mean of the shares' means, for the loss and its
        // gradient alike; summed in share order, whatever order the helpers finish in. A share
        // weighs its rows, or with padded targets the target steps it counts.
        let counted: Vec<f64> = if self.model.shape().padded_targets {
            target_shares.iter().map(|targets| targets.ne(IGNORED).sum(Kind::Int64).int64_value(&[]) as f64).collect()
        } else {
            sizes.iter().map(|&size| size as f64).collect()
        };
        let total: f64 = counted.iter().sum::<f64>().max(1.0);
        let weights: Vec<f32> = counted.iter().map(|&count| (count / total) as f32).collect();
        let mut outputs = vec![own_output];
        let mut loss = own_loss * (counted[0] / total);
        for (share, helper) in helpers.iter().enumerate() {
            let Reply::Step(output, share_loss) = helper.reply()? else {
                bail!("a training thread answered out of turn");
            };
            loss += tch::no_grad(|| share_loss * (counted[share + 1] / total));
            outputs.push(output);
        }
        self.update(helpers, &weights, optimizer)?;
        Ok((Tensor::cat(&outputs, 0), loss))
    }

    /// The batch's gradient from the shares' (weighted by `weights`), then the optimiser's
    /// update: each thread that computed a share takes a range of the elements where the
    /// optimiser runs fused, this thread all of them where it does not.
    fn update(&self, helpers: &[Helper], weights: &[f32], optimizer: &mut Adam) -> Result<()> {
        let buffers = &self.buffers[..weights.len()];
        let Some(update) = &self.update else {
            // SAFETY: the helpers' passes have finished; nothing else touches the buffers.
            unsafe { combine(buffers, weights, 0..buffers[0].numel()) };
            self.step_whole(optimizer);
            return Ok(());
        };
        let ranges = update_ranges(update.elements, weights.len());
        if let Some(max_norm) = self.max_grad_norm {
            return self.clipped_update(helpers, weights, optimizer, update, &ranges, max_norm);
        }
        let constants = optimizer.begin_step();
        for (helper, range) in helpers.iter().zip(&ranges[1..]) {
            helper.send(Share::Update { range: range.clone(), weights: weights.to_vec(), constants })?;
        }
        // SAFETY: every share's passes have finished, and each thread takes its own range.
        unsafe {
            combine(buffers, weights, ranges[0].clone());
            update.run(ranges[0].clone(), &constants);
        }
        for helper in helpers {
            helper.updated()?;
        }
        Ok(())
    }

    /// [`SharedStep::update`] with clipping, in two rounds: each thread combines its range and
    /// sums its squares, then, once the norm is known (the ranges' sums added in order), scales
    /// and updates it.
    fn clipped_update(
        &self,
        helpers: &[Helper],
        weights: &[f32],
        optimizer: &mut Adam,
        update: &RangeUpdate,
        ranges: &[Range<usize>],
        max_norm: f64,
    ) -> Result<()> {
        for (helper, range) in helpers.iter().zip(&ranges[1..]) {
            helper.send(Share::Combine { range: range.clone(), weights: weights.to_vec() })?;
        }
        // SAFETY: every share's passes have finished, and each thread takes its own range.
        let mut squared_norm = unsafe { combined_squared_norm(&self.buffers, weights, update, ranges[0].clone()) };
        for helper in helpers {
            squared_norm += helper.combined()?;
        }
        optimizer.note_pre_clip_norm(squared_norm.sqrt());
        let scale = clip::scale_for(squared_norm.sqrt(), max_norm);
        let constants = optimizer.begin_step();
        for (helper, range) in helpers.iter().zip(&ranges[1..]) {
            helper.send(Share::ScaledUpdate { range: range.clone(), scale, constants })?;
        }
        // SAFETY: every range has been combined, and each thread takes its own.
        unsafe { scaled_update(update, ranges[0].clone(), scale, &constants) };
        for helper in helpers {
            helper.updated()?;
        }
        Ok(())
    }

    /// The optimiser's update of every element on this thread, from the gradient in its slots,
    /// clipped first where clipping is asked for.
    fn step_whole(&self, optimizer: &mut Adam) {
        if let Some(max_norm) = self.max_grad_norm {
            optimizer.clip_gradient(max_norm);
        }
        optimizer.step_from_buffer();
    }

    /// [`Seq2Seq::forward`] on `inputs`, its rows shared as a step's are. With one share it is
    /// `forward` itself; with several, each row's output may round differently.
    pub fn forward(&self, inputs: &Tensor) -> Result<Tensor> {
        let sizes = Self::share_sizes(inputs.size()[0], self.threads());
        if sizes.len() == 1 {
            return Ok(self.model.forward(inputs));
        }
        let shares = inputs.split_with_sizes(&sizes, 0);
        let helpers = &self.helpers[..sizes.len() - 1];
        for (helper, share) in helpers.iter().zip(&shares[1..]) {
            helper.send(Share::Forward(share.shallow_clone()))?;
        }
        let mut outputs = vec![self.model.forward(&shares[0])];
        for helper in helpers {
            let Reply::Forward(output) = helper.reply()? else {
                bail!("a training thread answered out of turn");
            };
            outputs.push(output);
        }
        Ok(Tensor::cat(&outputs, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use tch::{Device, Kind, nn};

    use crate::nn::model::{ModelConfig, ModelShape, REFERENCE_SHAPE};

    /// Batches of random class indices from a private generator (the global one belongs to the
    /// constructors, which other tests run in parallel).
    fn batches(count: usize, rows: usize) -> Vec<(Tensor, Tensor)> {
        let mut rng = StdRng::seed_from_u64(11);
        let mut indices = |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(0..12)).collect() };
        (0..count)
            .map(|_| {
                let inputs = Tensor::from_slice(&indices(rows * REFERENCE_SHAPE.input_len)).view([rows as i64, 8]);
                (inputs, Tensor::from_slice(&indices(rows * REFERENCE_SHAPE.output_len)).view([rows as i64, 2]))
            })
            .collect()
    }

    fn stacked_with_dropout() -> ModelConfig {
        ModelConfig {
            encoder_units: 20,
            decoder_units: 16,
            encoder_layers: 2,
            decoder_layers: 2,
            dropout: 0.3,
            ..Default::default()
        }
    }

    /// The weights after Adam steps on `batches`, each step's gradient from a [`SharedStep`] of
    /// `threads` (dropout masks `Seeded` by the step), and the first step's gradient.
    fn train_shared(config: &ModelConfig, threads: usize, batches: &[(Tensor, Tensor)]) -> (Vec<Tensor>, Tensor) {
        train_shared_on(REFERENCE_SHAPE, config, threads, batches, None)
    }

    fn train_shared_on(
        shape: ModelShape,
        config: &ModelConfig,
        threads: usize,
        batches: &[(Tensor, Tensor)],
        max_grad_norm: Option<f64>,
    ) -> (Vec<Tensor>, Tensor) {
        one_libtorch_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), config, shape, 5);
        let mut adam = Adam::new(&vs, 0.01);
        let first_gradient = thread::scope(|scope| {
            let mut shared = SharedStep::start(scope, &model, &adam, threads, max_grad_norm);
            let mut first = None;
            for (step, (inputs, targets)) in batches.iter().enumerate() {
                let _ = shared.step(inputs, targets, Masks::Seeded(step as u64), &mut adam).expect("the helpers run");
                first.get_or_insert_with(|| adam.gradient_buffer().copy());
            }
            first.expect("at least one batch")
        });
        (weights(&vs), first_gradient)
    }

    /// The same steps as `train` took them before batches were shared: one forward_backward on
    /// the whole batch into the optimiser's slots, masks from the global generator.
    fn train_plain(config: &ModelConfig, batches: &[(Tensor, Tensor)]) -> Vec<Tensor> {
        one_libtorch_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), config, REFERENCE_SHAPE, 5);
        let mut adam = Adam::new(&vs, 0.01);
        let mut gradients = model.gradients(|variable| adam.gradient_slot(variable));
        for (step, (inputs, targets)) in batches.iter().enumerate() {
            let _ = crate::nn::model::with_global_generator(step as u64, || {
                model.forward_backward(inputs, targets, &mut gradients)
            });
            adam.step_from_buffer();
        }
        weights(&vs)
    }

    /// As `train` runs: a thread count that changes halfway (MKL's is global, and helpers of
    /// tests running beside this one set it to 1) would change the products' rounding.
    fn one_libtorch_thread() {
        tch::set_num_threads(1);
    }

    /// Every variable's value, in name order (a VarStore's own order is a hash map's).
    fn weights(vs: &nn::VarStore) -> Vec<Tensor> {
        vs.variables().into_iter().collect::<std::collections::BTreeMap<_, _>>().values().map(Tensor::copy).collect()
    }

    fn all_equal(a: &[Tensor], b: &[Tensor]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.equal(b))
    }

    #[test]
    fn one_thread_takes_exactly_the_unshared_steps() {
        let batches = batches(6, 32);
        let config = ModelConfig::default();
        assert!(all_equal(&train_shared(&config, 1, &batches).0, &train_plain(&config, &batches)));
    }

    #[test]
    fn shared_gradients_are_the_batch_gradient_and_repeat_bit_for_bit() {
        let batches = batches(4, 30);
        let config = ModelConfig::default();
        let (one_weights, one_gradient) = train_shared(&config, 1, &batches);
        let (weights, gradient) = train_shared(&config, 3, &batches);
        // Shares of 10 rows: the same gradient up to float32 rounding (a share left unweighted,
        // or one left out, is off by a third or more).
        let scale = one_gradient.abs().max().double_value(&[]);
        let difference = (&gradient - &one_gradient).abs().max().double_value(&[]) / scale;
        assert!(difference < 1e-5, "relative difference {difference:e}");
        assert!(!all_equal(&weights, &one_weights), "three shares round differently from one");
        assert!(all_equal(&weights, &train_shared(&config, 3, &batches).0));
    }

    /// With targets padded after their end, a share weighs the target steps it counts: here the
    /// first share's rows count two steps each and the others' one.
    #[test]
    fn shared_gradients_with_padded_targets_are_the_batch_gradient() {
        let shape = ModelShape { padded_targets: true, ..REFERENCE_SHAPE };
        let (inputs, _) = batches(1, 30).remove(0);
        let rows: Vec<i64> = (0..30).flat_map(|row| if row < 10 { [3, 0] } else { [0, IGNORED] }).collect();
        let batch = [(inputs, Tensor::from_slice(&rows).view([30, 2]))];
        let config = ModelConfig::default();
        let (_, one_gradient) = train_shared_on(shape, &config, 1, &batch, None);
        let (_, gradient) = train_shared_on(shape, &config, 3, &batch, None);
        let scale = one_gradient.abs().max().double_value(&[]);
        let difference = (&gradient - &one_gradient).abs().max().double_value(&[]) / scale;
        assert!(difference < 1e-5, "relative difference {difference:e}");
    }

    /// The gradient the update used (left in the optimiser's slots) is the batch's scaled to
    /// the maximum norm, alike for one thread and for three, which clip in two rounds; a
    /// maximum above every norm changes nothing, bit for bit.
    #[test]
    fn clipped_steps_use_the_batch_gradient_scaled_to_the_maximum_norm() {
        let batches = batches(4, 30);
        let config = ModelConfig::default();
        let norm = |gradient: &Tensor| gradient.to_kind(Kind::Double).norm().double_value(&[]);
        let (_, unclipped) = train_shared_on(REFERENCE_SHAPE, &config, 1, &batches, None);
        let max_norm = norm(&unclipped) / 4.0;
        let (one_weights, one_gradient) = train_shared_on(REFERENCE_SHAPE, &config, 1, &batches, Some(max_norm));
        let (weights, gradient) = train_shared_on(REFERENCE_SHAPE, &config, 3, &batches, Some(max_norm));
        for clipped in [&one_gradient, &gradient] {
            assert!((norm(clipped) / max_norm - 1.0).abs() < 1e-5, "norm {} against {max_norm}", norm(clipped));
            let direction = (clipped * 4.0 - &unclipped).abs().max().double_value(&[]);
            assert!(direction < 1e-5 * unclipped.abs().max().double_value(&[]), "off by {direction:e}");
        }
        assert!(all_equal(&weights, &train_shared_on(REFERENCE_SHAPE, &config, 3, &batches, Some(max_norm)).0));
        assert!(!all_equal(&one_weights, &train_shared(&config, 1, &batches).0), "clipping changed the steps");
        for threads in [1, 3] {
            let never = train_shared_on(REFERENCE_SHAPE, &config, threads, &batches, Some(1e9)).0;
            assert!(all_equal(&never, &train_shared(&config, threads, &batches).0));
        }
    }

    #[test]
    fn dropout_masks_of_shared_steps_repeat_bit_for_bit() {
        let batches = batches(4, 32);
        let (weights, gradient) = train_shared(&stacked_with_dropout(), 2, &batches);
        assert!(gradient.abs().sum(Kind::Double).double_value(&[]) > 0.0);
        assert!(all_equal(&weights, &train_shared(&stacked_with_dropout(), 2, &batches).0));
    }

    #[test]
    fn update_ranges_cover_every_element_once_in_whole_cache_lines() {
        for (elements, parts) in [(55_012, 2), (100, 16), (16, 3), (1, 1), (1_000_003, 7)] {
            let ranges = update_ranges(elements, parts);
            assert_eq!(ranges.len(), parts);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, elements);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{elements} elements in {parts}: {ranges:?}");
                assert!(pair[0].end % 16 == 0 || pair[0].end == elements);
            }
        }
        assert_eq!(update_ranges(100, 2), vec![0..64, 64..100]);
    }

    #[test]
    fn shares_are_even_and_never_too_small() {
        assert_eq!(SharedStep::share_sizes(32, 1), vec![32]);
        assert_eq!(SharedStep::share_sizes(32, 2), vec![16, 16]);
        assert_eq!(SharedStep::share_sizes(33, 2), vec![17, 16]);
        assert_eq!(SharedStep::share_sizes(32, 16), vec![8, 8, 8, 8]);
        assert_eq!(SharedStep::share_sizes(7, 4), vec![7]);
        assert_eq!(SharedStep::share_sizes(1000, 3), vec![334, 333, 333]);
        for (rows, threads) in [(1, 1), (24, 2), (1024, 16), (100, 7)] {
            assert_eq!(SharedStep::share_sizes(rows, threads).iter().sum::<i64>(), rows);
        }
    }
}
