//! Times the optimiser on the reference model: `seq2seq::optim::Adam` against tch's `nn::Adam`
//! (libtorch's C++ Adam), one libtorch thread as `train` uses. Prints medians over rounds that
//! alternate between the two, in this thread's CPU time (steadier than wall time on a busy
//! machine, and all the work is on this thread).
//!
//! Run: `source scripts/libtorch.sh && cargo run --release --example adam_step_time`

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use seq2seq::model::{ModelConfig, ModelShape, Seq2Seq};
use seq2seq::optim::Adam;
use seq2seq::problem::Features;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Tensor};

const SHAPE: ModelShape = ModelShape { features: Features::Classes(12), input_len: 8, output_len: 2 };
const ROUNDS: usize = 7;
const STEPS: usize = 2000;
const TRAIN_STEPS: usize = 500;

/// The two optimisers behind one face.
trait Optimiser {
    fn step(&mut self);
    fn backward_step(&mut self, loss: &Tensor);
}

impl Optimiser for Adam {
    fn step(&mut self) {
        Adam::step(self)
    }
    fn backward_step(&mut self, loss: &Tensor) {
        Adam::backward_step(self, loss)
    }
}

impl Optimiser for nn::Optimizer {
    fn step(&mut self) {
        nn::Optimizer::step(self)
    }
    fn backward_step(&mut self, loss: &Tensor) {
        nn::Optimizer::backward_step(self, loss)
    }
}

/// Seconds of CPU time this thread has used.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime only writes into `now`.
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread CPU clock exists on Linux");
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

struct Bench {
    vs: nn::VarStore,
    model: Seq2Seq,
    inputs: Tensor,
    targets: Tensor,
}

impl Bench {
    fn new() -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), SHAPE, 1);
        let mut rng = StdRng::seed_from_u64(5);
        let mut indices = |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(0..12)).collect() };
        let inputs = Tensor::from_slice(&indices(32 * 8)).view([32, 8]);
        let targets = Tensor::from_slice(&indices(32 * 2)).view([32, 2]);
        Self { vs, model, inputs, targets }
    }

    fn loss(&self) -> Tensor {
        self.model.loss(&self.model.forward_t(&self.inputs, true), &self.targets)
    }

    /// Microseconds per call of `step` alone (from the gradients a `backward` left in `.grad`)
    /// and of a whole training step (forward, loss, `backward_step`).
    fn time(&self, optimiser: &mut dyn Optimiser) -> [f64; 2] {
        self.loss().backward();
        let per_call = |start: f64, calls: usize| (thread_cpu_seconds() - start) * 1e6 / calls as f64;
        let start = thread_cpu_seconds();
        for _ in 0..STEPS {
            optimiser.step();
        }
        let step = per_call(start, STEPS);
        let start = thread_cpu_seconds();
        for _ in 0..TRAIN_STEPS {
            optimiser.backward_step(&self.loss());
        }
        [step, per_call(start, TRAIN_STEPS)]
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (ours_bench, tch_bench) = (Bench::new(), Bench::new());
        let mut ours_adam = Adam::new(&ours_bench.vs, 0.001);
        let mut tch_adam = nn::Adam::default().build(&tch_bench.vs, 0.001)?;
        if round % 2 == 0 {
            ours.push(ours_bench.time(&mut ours_adam));
            theirs.push(tch_bench.time(&mut tch_adam));
        } else {
            theirs.push(tch_bench.time(&mut tch_adam));
            ours.push(ours_bench.time(&mut ours_adam));
        }
    }
    println!("median of {ROUNDS} rounds, µs of CPU time per call, 1 libtorch thread");
    println!("{:<22}{:>8}{:>24}", "", "step", "forward+backward_step");
    for (label, runs) in [("seq2seq::optim::Adam", &ours), ("tch nn::Adam", &theirs)] {
        let column = |i: usize| median(runs.iter().map(|r| r[i]).collect());
        println!("{label:<22}{:>8.1}{:>24.1}", column(0), column(1));
    }
    Ok(())
}
