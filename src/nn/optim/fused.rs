//! Adam's update for float32 on the CPU in two passes over the elements around libtorch's
//! `sqrt`, rounding as the ops of [`super::Buffers::advance`] and `addcdiv_` do, bit for bit.
//! On models of this size those ops cost more in dispatch than in arithmetic, and they run on
//! one thread while the others wait for the next batch.
//!
//! libtorch's kernels are compiled with contraction, so `lerp` and `addcmul` round as one fused
//! multiply-add in their vector and their scalar loops alike; here that is `mul_add`. Its
//! `sqrt` is MKL's, which is not correctly rounded (it differs from `f32::sqrt` in about one
//! value in six), so that one op stays libtorch's.

use super::{Betas, EPS};
#[cfg(target_arch = "x86_64")]
use crate::nn::cell::wide_vectors;

/// The step's scalars, rounded to float32 as libtorch rounds a `Scalar` for a float32 op.
#[derive(Clone, Copy, Debug)]
pub struct Constants {
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    negative_step_size: f32,
}

impl Constants {
    pub fn new(Betas(beta1, beta2): Betas, bias_correction2_sqrt: f64, step_size: f64) -> Self {
        Self {
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            eps: EPS as f32,
            negative_step_size: (-step_size) as f32,
        }
    }
}

/// The moments from the gradient: `exp_avg.lerp_(grad, 1 - beta1)`, then
/// `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`.
pub fn moments(exp_avg: &mut [f32], exp_avg_sq: &mut [f32], grad: &[f32], constants: &Constants) {
    #[cfg(target_arch = "x86_64")]
    if wide_vectors() {
        // SAFETY: the processor has the features `moments_avx2` is compiled for.
        return unsafe { moments_avx2(exp_avg, exp_avg_sq, grad, constants) };
    }
    moments_portable(exp_avg, exp_avg_sq, grad, constants)
}

/// With AVX2 and FMA the loop runs eight lanes wide and `mul_add` is one instruction; the
/// rounding is the same either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn moments_avx2(exp_avg: &mut [f32], exp_avg_sq: &mut [f32], grad: &[f32], constants: &Constants) {
    moments_portable(exp_avg, exp_avg_sq, grad, constants)
}

#[inline(always)]
fn moments_portable(exp_avg: &mut [f32], exp_avg_sq: &mut [f32], grad: &[f32], c: &Constants) {
    for ((m, v), &g) in exp_avg.iter_mut().zip(exp_avg_sq.iter_mut()).zip(grad) {
        *m = c.lerp_weight.mul_add(g - *m, *m);
        *v = (g * c.one_minus_beta2).mul_add(g, *v * c.beta2);
    }
}

/// The weights' move, given `sqrt` of the second moments in `denom`:
/// `param.addcdiv_(exp_avg, denom / bias_correction2_sqrt + eps, value=-step_size)`.
pub fn weights(weights: &mut [f32], exp_avg: &[f32], denom: &[f32], constants: &Constants) {
    #[cfg(target_arch = "x86_64")]
    if wide_vectors() {
        // SAFETY: the processor has the features `weights_avx2` is compiled for.
        return unsafe { weights_avx2(weights, exp_avg, denom, constants) };
    }
    weights_portable(weights, exp_avg, denom, constants)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn weights_avx2(weights: &mut [f32], exp_avg: &[f32], denom: &[f32], constants: &Constants) {
    weights_portable(weights, exp_avg, denom, constants)
}

#[inline(always)]
fn weights_portable(weights: &mut [f32], exp_avg: &[f32], denom: &[f32], c: &Constants) {
    for ((p, &m), &root) in weights.iter_mut().zip(exp_avg).zip(denom) {
        *p += (m * c.negative_step_size) / (root / c.bias_correction2_sqrt + c.eps);
    }
}
