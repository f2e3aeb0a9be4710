//! The LSTM cell's element-wise arithmetic on the CPU, one pass over memory per time step.
//!
//! Between its two matrix products, a time step of the reference model is a dozen element-wise
//! ops on a few thousand numbers each (three sigmoids, two tanh, products and sums, and as many
//! again backwards). Issued as libtorch ops, their dispatch cost more than their arithmetic:
//! about half of a training step on the reference model. Here each direction of a step is one
//! loop that the compiler vectorises, with `exp` written out so that it vectorises too.
//!
//! Gates are laid out as in PyTorch's `nn.LSTM`: per sample, `4·hidden` values in the order
//! input, forget, cell, output. After [`forward`], a step's gate buffer holds the activations
//! `σ(i)`, `σ(f)`, `tanh(g)`, `σ(o)`, which is what [`backward`] reads.

/// The input's share of a step's gate pre-activations, per sample `4·hidden` values.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Already in the gate buffer.
    InGates,
    /// Row `indices[sample]` of `table` (a one-hot input's product with the weights).
    Rows { table: &'a [f32], indices: &'a [i64] },
    /// The same rows at every step, one per sample.
    Same(&'a [f32]),
}

/// One time step forward for every sample of a batch: see [`forward`].
pub struct Forward<'a> {
    /// `[batch, 4·hidden]`: the recurrent share of the pre-activations (nothing at the first
    /// step), replaced by the activations.
    pub gates: &'a mut [f32],
    pub input: Input<'a>,
    /// The previous cell state `[batch, hidden]`; `None` at the first step (a zero state).
    pub c_prev: Option<&'a [f32]>,
    pub c: &'a mut [f32],
    pub tanh_c: &'a mut [f32],
    pub h: &'a mut [f32],
    pub hidden: usize,
}

/// One time step backward for every sample of a batch: see [`backward`].
pub struct Backward<'a> {
    /// The gradient reaching this step's output (from above and from the next step).
    pub d_h: &'a [f32],
    /// The gradient reaching this step's cell from the next step (zeros at the last step),
    /// replaced by the gradient reaching the previous step's cell.
    pub d_c: &'a mut [f32],
    /// What [`forward`] left: the activations, the previous cell state and `tanh(c)`.
    pub gates: &'a [f32],
    pub c_prev: Option<&'a [f32]>,
    pub tanh_c: &'a [f32],
    /// Receives the gradient of the gate pre-activations.
    pub d_gates: &'a mut [f32],
    pub hidden: usize,
}

/// Adds the input's share to the gates, replaces the pre-activations with the activations, and
/// writes the cell state `c = f·c_prev + i·g`, `tanh(c)` and the output `h = o·tanh(c)`.
pub fn forward(step: Forward<'_>) {
    #[cfg(target_arch = "x86_64")]
    if wide_vectors() {
        // SAFETY: the processor has the features `forward_avx2` is compiled for.
        return unsafe { forward_avx2(step) };
    }
    forward_portable(step)
}

/// Writes the gradient of the gate pre-activations and passes the cell's gradient back a step.
pub fn backward(step: Backward<'_>) {
    #[cfg(target_arch = "x86_64")]
    if wide_vectors() {
        // SAFETY: the processor has the features `backward_avx2` is compiled for.
        return unsafe { backward_avx2(step) };
    }
    backward_portable(step)
}

/// AVX2 and FMA: eight lanes instead of SSE2's four. Both builds compile the same source, and
/// Rust never contracts `a * b + c` into a fused multiply-add, so they round identically.
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_vectors() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_avx2(step: Forward<'_>) {
    forward_portable(step)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_avx2(step: Backward<'_>) {
    backward_portable(step)
}

#[inline(always)]
fn forward_portable(step: Forward<'_>) {
    let Forward { gates, input, c_prev, c, tanh_c, h, hidden } = step;
    let width = 4 * hidden;
    for (sample, gates) in gates.chunks_exact_mut(width).enumerate() {
        let share = match input {
            Input::InGates => None,
            Input::Rows { table, indices } => {
                let row = usize::try_from(indices[sample]).expect("class indices are not negative");
                Some(&table[row * width..][..width])
            }
            Input::Same(rows) => Some(&rows[sample * width..][..width]),
        };
        match (share, c_prev) {
            (None, _) => {}
            (Some(share), Some(_)) => gates.iter_mut().zip(share).for_each(|(gate, share)| *gate += share),
            (Some(share), None) => gates.copy_from_slice(share),
        }
        // The activations first, over runs of the row as long as possible (σ over i and f
        // together): a short loop leaves a larger share to its scalar remainder.
        let (i_f, rest) = gates.split_at_mut(2 * hidden);
        let (g, o) = rest.split_at_mut(hidden);
        for x in i_f.iter_mut() {
            *x = sigmoid(*x);
        }
        for x in g.iter_mut() {
            *x = tanh(*x);
        }
        for x in o.iter_mut() {
            *x = sigmoid(*x);
        }
        let (i, f) = i_f.split_at(hidden);
        let units = sample * hidden..(sample + 1) * hidden;
        let (c, tanh_c, h) = (&mut c[units.clone()], &mut tanh_c[units.clone()], &mut h[units.clone()]);
        match c_prev {
            Some(c_prev) => {
                let c_prev = &c_prev[units];
                for j in 0..hidden {
                    c[j] = f[j] * c_prev[j] + i[j] * g[j];
                }
            }
            None => {
                for j in 0..hidden {
                    c[j] = i[j] * g[j];
                }
            }
        }
        for j in 0..hidden {
            tanh_c[j] = tanh(c[j]);
            h[j] = o[j] * tanh_c[j];
        }
    }
}

#[inline(always)]
fn backward_portable(step: Backward<'_>) {
    let Backward { d_h, d_c, gates, c_prev, tanh_c, d_gates, hidden } = step;
    for (sample, (gates, d_gates)) in
        gates.chunks_exact(4 * hidden).zip(d_gates.chunks_exact_mut(4 * hidden)).enumerate()
    {
        let units = sample * hidden..(sample + 1) * hidden;
        let (i, rest) = gates.split_at(hidden);
        let (f, rest) = rest.split_at(hidden);
        let (g, o) = rest.split_at(hidden);
        let (d_i, rest) = d_gates.split_at_mut(hidden);
        let (d_f, rest) = rest.split_at_mut(hidden);
        let (d_g, d_o) = rest.split_at_mut(hidden);
        let (d_h, d_c, tanh_c) = (&d_h[units.clone()], &mut d_c[units.clone()], &tanh_c[units.clone()]);
        let c_prev = c_prev.map(|c_prev| &c_prev[units]);
        for j in 0..hidden {
            // h = o·tanh(c), c = f·c_prev + i·g; each gate's derivative through its activation.
            let d_cell = d_h[j] * o[j] * (1.0 - tanh_c[j] * tanh_c[j]) + d_c[j];
            d_o[j] = d_h[j] * tanh_c[j] * (o[j] * (1.0 - o[j]));
            d_i[j] = d_cell * g[j] * (i[j] * (1.0 - i[j]));
            d_g[j] = d_cell * i[j] * (1.0 - g[j] * g[j]);
            d_f[j] = match c_prev {
                Some(c_prev) => d_cell * c_prev[j] * (f[j] * (1.0 - f[j])),
                None => 0.0,
            };
            d_c[j] = d_cell * f[j];
        }
    }
}

/// `e^x`, as Cephes's `expf` computes it (within a couple of ulps over the range that matters
/// here), written without branches so that a loop of it vectorises. Inputs are clamped to
/// where the result is a normal number.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5e-1;
    // 2^n built from its exponent bits. `n as i32` would not vectorise (it saturates and
    // checks for NaN), so the integer comes from adding 2^23, which leaves n + 127 in the
    // mantissa's low bits (n + 127 is in 1..=254 after the clamp).
    let biased = (n + 127.0 + 8_388_608.0).to_bits().wrapping_sub(0x4B00_0000);
    let scale = f32::from_bits(biased << 23);
    (p * r * r + r + 1.0) * scale
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh x` as a rational function (Eigen's `generic_fast_tanh_float`): odd polynomials of
/// degree 13 over 6, fitted on [-8, 8], beyond which tanh rounds to ±1 anyway. It needs no `exp`,
/// which makes it about twice as fast as `1 - 2/(e^2x + 1)`; the test holds it to 4 ulps.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.998_811_7;
    let clamped = x.clamp(-CLAMP, CLAMP);
    let z = clamped * clamped;
    let numerator = ((((((-2.760_768_5e-16 * z + 2.000_188e-13) * z - 8.604_672e-11) * z + 5.122_297e-8) * z
        + 1.485_722_4e-5)
        * z
        + 6.372_619_3e-4)
        * z
        + 4.893_524_6e-3)
        * clamped;
    let denominator = ((1.198_258_4e-6 * z + 1.185_347_1e-4) * z + 2.268_434_6e-3) * z + 4.893_525e-3;
    // Near zero the quotient loses the last bits that x itself has.
    if x.abs() < 0.0004 { x } else { numerator / denominator }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 1/1024 over [-30, 30], plus the edges of the branches and of the clamp.
    fn inputs() -> impl Iterator<Item = f32> {
        (-30 * 1024..=30 * 1024).map(|k| k as f32 / 1024.0).chain([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-7,
            0.624_999_9,
            0.625,
            -0.625,
            87.0,
            88.3,
            100.0,
            -100.0,
            1e30,
            -1e30,
        ])
    }

    /// |ours - exact| ≤ ulps units in the last place of the exact value (with a floor at the
    /// smallest normal, for results near zero).
    fn assert_close(name: &str, x: f32, ours: f32, exact: f64, ulps: f64) {
        let unit = (exact.abs().max(f32::MIN_POSITIVE as f64) * f32::EPSILON as f64).max(f32::MIN_POSITIVE as f64);
        assert!((ours as f64 - exact).abs() <= ulps * unit, "{name}({x}) = {ours}, exactly {exact}");
    }

    #[test]
    fn exp_is_within_two_ulps() {
        for x in inputs().filter(|x| (-87.3..=88.3).contains(x)) {
            assert_close("exp", x, exp(x), (x as f64).exp(), 2.0);
        }
    }

    #[test]
    fn sigmoid_and_tanh_are_within_a_few_ulps() {
        for x in inputs() {
            let exact_sigmoid = 1.0 / (1.0 + (-x as f64).exp());
            // Below e^-87.3 the clamp keeps the result a normal number: 1e-38 instead of less.
            if exact_sigmoid > 1e-37 {
                assert_close("sigmoid", x, sigmoid(x), exact_sigmoid, 4.0);
            } else {
                assert!(sigmoid(x) < 1e-37, "sigmoid({x}) = {}", sigmoid(x));
            }
            assert_close("tanh", x, tanh(x), (x as f64).tanh(), 4.0);
        }
    }

    #[test]
    fn infinities_saturate_and_not_a_number_stays_one() {
        assert!(exp(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan() && tanh(f32::NAN).is_nan());
        assert_eq!((sigmoid(f32::INFINITY), sigmoid(f32::NEG_INFINITY)), (1.0, sigmoid(-100.0)));
        assert_close("tanh", f32::INFINITY, tanh(f32::INFINITY), 1.0, 4.0);
        assert_close("tanh", f32::NEG_INFINITY, tanh(f32::NEG_INFINITY), -1.0, 4.0);
    }

    /// The cell's equations, one value at a time in double precision.
    #[test]
    fn a_step_forward_and_back_follows_the_equations() {
        let hidden = 3;
        let pre: Vec<f32> = (0..2 * 4 * hidden).map(|k| (k as f32 * 0.37).sin() * 2.0).collect();
        let c_prev: Vec<f32> = (0..2 * hidden).map(|k| (k as f32 * 0.71).cos()).collect();
        let (mut gates, mut c, mut tanh_c, mut h) = (pre.clone(), vec![0.0; 6], vec![0.0; 6], vec![0.0; 6]);
        let previous = Some(c_prev.as_slice());
        forward(Forward {
            gates: &mut gates,
            input: Input::InGates,
            c_prev: previous,
            c: &mut c,
            tanh_c: &mut tanh_c,
            h: &mut h,
            hidden,
        });
        let d_h: Vec<f32> = (0..6).map(|k| 0.5 - k as f32 * 0.2).collect();
        let d_c_next: Vec<f32> = (0..6).map(|k| k as f32 * 0.1 - 0.3).collect();
        let (mut d_c, mut d_gates) = (d_c_next.clone(), vec![0.0; 24]);
        backward(Backward {
            d_h: &d_h,
            d_c: &mut d_c,
            gates: &gates,
            c_prev: previous,
            tanh_c: &tanh_c,
            d_gates: &mut d_gates,
            hidden,
        });
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        for sample in 0..2 {
            for j in 0..hidden {
                let at = |quarter: usize| sample * 4 * hidden + quarter * hidden + j;
                let unit = sample * hidden + j;
                let [i, f, g, o] = [at(0), at(1), at(2), at(3)].map(|k| pre[k] as f64);
                let (i, f, g, o) = (sig(i), sig(f), g.tanh(), sig(o));
                let cell = f * c_prev[unit] as f64 + i * g;
                let out = o * cell.tanh();
                let close = |ours: f32, exact: f64| assert!((ours as f64 - exact).abs() < 1e-6, "{ours} vs {exact}");
                close(c[unit], cell);
                close(h[unit], out);
                let d_cell = d_h[unit] as f64 * o * (1.0 - cell.tanh().powi(2)) + d_c_next[unit] as f64;
                close(d_gates[at(0)], d_cell * g * i * (1.0 - i));
                close(d_gates[at(1)], d_cell * c_prev[unit] as f64 * f * (1.0 - f));
                close(d_gates[at(2)], d_cell * i * (1.0 - g * g));
                close(d_gates[at(3)], d_h[unit] as f64 * cell.tanh() * o * (1.0 - o));
                close(d_c[unit], d_cell * f);
            }
        }
    }
}
