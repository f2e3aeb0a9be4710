//! Gradient clipping by the global norm, as PyTorch's `torch.nn.utils.clip_grad_norm_` and
//! tch's `Optimizer::clip_grad_norm` do it: when the L2 norm of every weight's gradient
//! together exceeds the maximum, every gradient is multiplied by `max / (norm + 1e-6)`.
//!
//! On the CPU in float32 the norm is summed here in double precision, in a fixed order for a
//! given split of the elements, so that clipping keeps a run deterministic.

use tch::{Kind, Tensor};

/// Added to the norm before dividing, as PyTorch does, so that a zero gradient stays finite.
const NORM_EPS: f64 = 1e-6;

/// Independent partial sums: the additions of one lane wait for each other, not for the
/// other lanes'. A fixed number, so the rounding never depends on the machine.
const LANES: usize = 8;

/// The sum of the squares of `values`, in double precision: lane `i` sums the elements at
/// positions `i` modulo 8, then the lanes are added in order.
pub fn squared_norm(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(value) * f64::from(value);
        }
    }
    for (lane, &value) in lanes.iter_mut().zip(rest) {
        *lane += f64::from(value) * f64::from(value);
    }
    lanes.iter().sum()
}

/// The factor that brings a gradient of norm `norm` within `max_norm`; `None` where it already
/// is (PyTorch then multiplies by 1, which changes nothing).
pub fn scale_for(norm: f64, max_norm: f64) -> Option<f32> {
    let coefficient = max_norm / (norm + NORM_EPS);
    (coefficient < 1.0).then_some(coefficient as f32)
}

/// Clips `gradient` by libtorch's ops, as [`scale_for`] and [`scale`] do on the host, to the
/// bit: the norm and the factor stay on the tensor's device, since reading the norm back would
/// make a GPU finish every step before the next could be queued. Where the norm is within the
/// maximum the factor is 1, which changes no bit. Returns the norm before clipping, on the device.
pub fn scale_on_device(gradient: &mut Tensor, max_norm: f64) -> Tensor {
    let norm = gradient.to_kind(Kind::Double).norm();
    let coefficient = Tensor::full(Vec::<i64>::new(), max_norm, (Kind::Double, gradient.device())) / (&norm + NORM_EPS);
    let _ = gradient.g_mul_(&coefficient.clamp_max(1.0).to_kind(gradient.kind()));
    norm
}

/// Multiplies `values` by `factor`, rounding as libtorch's `mul_` by a scalar on float32.
pub fn scale(values: &mut [f32], factor: f32) {
    values.iter_mut().for_each(|value| *value *= factor);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_squared_norm_matches_libtorch() {
        let values: Vec<f32> = (0..1003).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let ours = squared_norm(&values).sqrt();
        let libtorch = Tensor::from_slice(&values).to_kind(Kind::Double).norm().double_value(&[]);
        assert!((ours - libtorch).abs() <= 1e-12 * libtorch, "{ours} against {libtorch}");
        assert_eq!(squared_norm(&[]), 0.0);
        assert_eq!(squared_norm(&[3.0, 4.0]), 25.0);
    }

    #[test]
    fn only_a_norm_above_the_maximum_is_scaled() {
        assert_eq!(scale_for(0.5, 1.0), None);
        assert_eq!(scale_for(0.0, 1.0), None);
        let factor = scale_for(10.0, 1.0).expect("10 exceeds 1");
        assert!((f64::from(factor) - 1.0 / (10.0 + 1e-6)).abs() < 1e-8);
        let mut gradient = vec![6.0f32, 8.0];
        scale(&mut gradient, factor);
        assert!((squared_norm(&gradient).sqrt() - 1.0).abs() < 1e-6, "{gradient:?}");
    }

    #[test]
    fn scaling_rounds_as_libtorch_mul_by_a_scalar() {
        let values: Vec<f32> = (0..257).map(|i| ((i as f32) * 1.3).cos() * 7.0).collect();
        let factor = scale_for(123.456, 5.0).expect("123 exceeds 5");
        let mut ours = values.clone();
        scale(&mut ours, factor);
        let libtorch = Tensor::from_slice(&values).g_mul_scalar_(f64::from(factor));
        assert_eq!(Vec::<f32>::try_from(&libtorch).expect("floats"), ours);
    }
}
