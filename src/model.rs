//! The encoder-decoder LSTM of the reference: LSTM → RepeatVector → LSTM → TimeDistributed(Dense).
//! The same network serves both tasks; only the ends differ (one-hot and softmax for characters,
//! one value per step for the autoencoder).

use std::sync::Mutex;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, Module};
use tch::{Kind, Reduction, Tensor};

use crate::problem::{Features, Task};
use crate::vocab::one_hot;

/// The architecture's free choices. `Default` is the reference: encoder 75 cells, decoder 50.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub encoder_units: usize,
    pub decoder_units: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Dropout between stacked LSTM layers while training; off in evaluation and prediction.
    pub dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { encoder_units: 75, decoder_units: 50, encoder_layers: 1, decoder_layers: 1, dropout: 0.0 }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("encoder units", self.encoder_units),
            ("decoder units", self.decoder_units),
            ("encoder layers", self.encoder_layers),
            ("decoder layers", self.decoder_layers),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }
}

/// What the problem fixes: what a time step holds, and the sequence lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub features: Features,
    pub input_len: usize,
    pub output_len: usize,
}

impl ModelShape {
    pub fn for_task(task: &Task) -> Self {
        Self { features: task.features(), input_len: task.input_len(), output_len: task.output_len() }
    }
}

/// A stacked LSTM with Keras's initialisation, run by libtorch's fused `lstm` op.
///
/// Keras keeps one bias per layer; libtorch's op takes two (`b_ih + b_hh`). The second one is a
/// frozen zero buffer, so the trainable parameters and their count match the reference exactly,
/// and the saved names (`weight_ih_l0`, ..., `bias_hh_l0`) load into PyTorch's `nn.LSTM`.
#[derive(Debug)]
struct Lstm {
    flat_weights: Vec<Tensor>,
    hidden: i64,
    layers: i64,
    dropout: f64,
}

impl Lstm {
    fn new(vs: nn::Path, input_size: usize, hidden: usize, layers: usize, dropout: f64) -> Self {
        let (hidden, gates) = (hidden as i64, 4 * hidden as i64);
        let mut flat_weights = Vec::with_capacity(4 * layers);
        for layer in 0..layers {
            let input_size = if layer == 0 { input_size as i64 } else { hidden };
            // Glorot-uniform on the input kernel, fans as Keras computes them for (input, 4·units).
            let limit = (6.0 / (input_size + gates) as f64).sqrt();
            let w_ih =
                vs.var(&format!("weight_ih_l{layer}"), &[gates, input_size], Init::Uniform { lo: -limit, up: limit });
            let w_hh = vs.var(&format!("weight_hh_l{layer}"), &[gates, hidden], Init::Orthogonal { gain: 1.0 });
            let b_ih = vs.var(&format!("bias_ih_l{layer}"), &[gates], Init::Const(0.0));
            // Gates are ordered input, forget, cell, output in both Keras and libtorch:
            // Keras's unit_forget_bias sets the second quarter to 1.
            let _ = tch::no_grad(|| b_ih.narrow(0, hidden, hidden).fill_(1.0));
            let b_hh = vs.zeros_no_train(&format!("bias_hh_l{layer}"), &[gates]);
            flat_weights.extend([w_ih, w_hh, b_ih, b_hh]);
        }
        Self { flat_weights, hidden, layers: layers as i64, dropout }
    }

    /// Runs `input` `[batch, time, features]` from a zero state; returns every step's output
    /// of the last layer `[batch, time, hidden]` and the last layer's final hidden state.
    fn forward_t(&self, input: &Tensor, train: bool) -> (Tensor, Tensor) {
        let zeros = Tensor::zeros([self.layers, input.size()[0], self.hidden], (Kind::Float, input.device()));
        let weights: Vec<&Tensor> = self.flat_weights.iter().collect();
        let (output, h_n, _c_n) =
            input.lstm(&[&zeros, &zeros], &weights, true, self.layers, self.dropout, train, false, true);
        (output, h_n.get(self.layers - 1))
    }

    /// Trainable parameters of each layer (the frozen `b_hh`, every fourth tensor, is not one).
    fn layer_parameter_counts(&self) -> Vec<i64> {
        self.flat_weights.chunks(4).map(|layer| layer[..3].iter().map(|t| t.numel() as i64).sum()).collect()
    }

    fn parameter_count(&self) -> i64 {
        self.layer_parameter_counts().iter().sum()
    }
}

/// The reference's encoder-decoder.
#[derive(Debug)]
pub struct Seq2Seq {
    encoder: Lstm,
    decoder: Lstm,
    output: nn::Linear,
    config: ModelConfig,
    shape: ModelShape,
}

impl Seq2Seq {
    /// Creates the variables under `vs` (`encoder.*`, `decoder.*`, `output.*`), drawing the
    /// initial weights from libtorch's global generator (seed it with `tch::manual_seed`).
    pub fn new(vs: &nn::Path, config: &ModelConfig, shape: ModelShape) -> Self {
        let width = shape.features.width();
        let encoder = Lstm::new(vs / "encoder", width, config.encoder_units, config.encoder_layers, config.dropout);
        let decoder = Lstm::new(
            vs / "decoder",
            config.encoder_units,
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
        Self { encoder, decoder, output, config: config.clone(), shape }
    }

    /// Like [`Seq2Seq::new`], with the initial weights drawn from `seed`. A lock keeps other
    /// threads from drawing from libtorch's global generator in between.
    pub fn new_seeded(vs: &nn::Path, config: &ModelConfig, shape: ModelShape, seed: u64) -> Self {
        static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());
        let _guard = GLOBAL_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tch::manual_seed(seed as i64);
        Self::new(vs, config, shape)
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Length of the fixed-size encoding.
    pub fn encoder_units(&self) -> usize {
        self.config.encoder_units
    }

    /// The fixed-length encoding `[batch, encoder_units]` of inputs `[batch, input_len]` (class
    /// indices or values): the last encoder layer's final hidden state.
    pub fn encode(&self, inputs: &Tensor, train: bool) -> Tensor {
        let steps = match self.shape.features {
            Features::Classes(n) => one_hot(inputs, n),
            Features::Value => inputs.unsqueeze(-1),
        };
        self.encoder.forward_t(&steps, train).1
    }

    /// For inputs `[batch, input_len]`: logits `[batch, output_len, classes]` for a character task,
    /// values `[batch, output_len]` for the autoencoder.
    pub fn forward_t(&self, inputs: &Tensor, train: bool) -> Tensor {
        let encoded = self.encode(inputs, train);
        let [batch, units] = encoded.size()[..] else { unreachable!("the encoding is two-dimensional") };
        // RepeatVector: the same encoding is the decoder's input at every output step.
        let repeated = encoded.unsqueeze(1).expand([batch, self.shape.output_len as i64, units], false);
        let (decoded, _) = self.decoder.forward_t(&repeated, train);
        // TimeDistributed(Dense): one linear layer shared by every output step.
        let output = self.output.forward(&decoded);
        match self.shape.features {
            Features::Classes(_) => output,
            Features::Value => output.squeeze_dim(-1),
        }
    }

    /// Characters: mean categorical cross-entropy over every output character (the softmax is in
    /// the loss). Values: mean squared error over every output step.
    pub fn loss(&self, output: &Tensor, targets: &Tensor) -> Tensor {
        match self.shape.features {
            Features::Classes(classes) => output.view([-1, classes as i64]).cross_entropy_loss::<Tensor>(
                &targets.view([-1]),
                None,
                Reduction::Mean,
                -100,
                0.0,
            ),
            Features::Value => output.mse_loss(targets, Reduction::Mean),
        }
    }

    /// Trainable parameters, the number Keras's summary calls "Total params".
    pub fn parameter_count(&self) -> i64 {
        let output = self.output.ws.numel() as i64 + self.output.bs.as_ref().map_or(0, |b| b.numel() as i64);
        self.encoder.parameter_count() + self.decoder.parameter_count() + output
    }

    /// A table like Keras's `model.summary()`: every layer, its output shape, its parameters.
    pub fn summary(&self) -> String {
        let ModelShape { features, input_len, output_len } = self.shape;
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
        stack(&mut rows, "encoder", &self.encoder, input_len, enc, false);
        rows.push(("repeat (RepeatVector)".to_owned(), format!("(None, {output_len}, {enc})"), 0));
        stack(&mut rows, "decoder", &self.decoder, output_len, dec, true);
        let width = features.width();
        let output_shape = format!("(None, {output_len}, {width})");
        rows.push(("output (TimeDistributed(Dense))".to_owned(), output_shape, (dec * width + width) as i64));
        let rule = "_".repeat(72);
        let mut text =
            format!("{rule}\n{:<34}{:<24}{:>14}\n{}\n", "Layer (type)", "Output Shape", "Param #", "=".repeat(72));
        for (name, shape, params) in rows {
            text.push_str(&format!("{name:<34}{shape:<24}{:>14}\n", group_thousands(params)));
        }
        let total = group_thousands(self.parameter_count());
        text.push_str(&format!(
            "{}\nTotal params: {total}\nTrainable params: {total}\nNon-trainable params: 0\n{rule}",
            "=".repeat(72)
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
    use tch::Device;

    fn reference_shape() -> ModelShape {
        ModelShape { features: Features::Classes(12), input_len: 8, output_len: 2 }
    }

    /// Tests run in parallel threads: every model is built under the generator lock.
    fn reference_model(vs: &nn::VarStore) -> Seq2Seq {
        Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), reference_shape(), 0)
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
        assert_eq!(model.forward_t(&inputs, false).size(), vec![5, 2, 12]);
        assert_eq!(model.encode(&inputs, false).size(), vec![5, 75]);
    }

    #[test]
    fn initialises_as_keras_does() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), reference_shape(), 3);
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
            let _model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), reference_shape(), seed);
            vs.variables()["decoder.weight_hh_l0"].copy()
        };
        assert!(weights(11).equal(&weights(11)));
        assert!(!weights(11).equal(&weights(12)));
    }

    #[test]
    fn summary_shows_every_stacked_layer_and_dropout() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig { encoder_layers: 2, decoder_layers: 3, dropout: 0.2, ..Default::default() };
        let model = Seq2Seq::new_seeded(&vs.root(), &config, reference_shape(), 0);
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
        assert_eq!(model.forward_t(&inputs, false).size(), vec![4, 2, 12]);
    }

    #[test]
    fn autoencoder_reads_and_writes_one_value_per_step() {
        let vs = nn::VarStore::new(Device::Cpu);
        let shape = ModelShape { features: Features::Value, input_len: 9, output_len: 9 };
        let model = Seq2Seq::new_seeded(&vs.root(), &ModelConfig::default(), shape, 0);
        // Not Tensor::rand: other tests seed libtorch's global generator in parallel.
        let inputs = Tensor::arange(27, (Kind::Float, Device::Cpu)).view([3, 9]) / 27.0;
        let output = model.forward_t(&inputs, false);
        assert_eq!(output.size(), vec![3, 9]);
        assert_eq!(model.encode(&inputs, false).size(), vec![3, 75]);
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

    #[test]
    fn groups_thousands_like_keras() {
        assert_eq!(group_thousands(52212), "52,212");
        assert_eq!(group_thousands(612), "612");
        assert_eq!(group_thousands(1_000_000), "1,000,000");
    }
}
