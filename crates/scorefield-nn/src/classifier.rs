//! A noise-conditional classifier for classifier guidance: an MLP on `[x, ln σ̃]`,
//!
//! ```text
//! h₀ = a(W₀ [x, ln σ̃] + b₀),  hᵢ = a(Wᵢ hᵢ₋₁ + bᵢ),  logits = W_out h_{L−1} + b_out
//! log p(y | x, σ) = log_softmax(logits)_y
//! ```
//!
//! with `σ̃ = σ/m` (clamped below at 1e-12) and `a` = SiLU. Train it with
//! [`NoisyClassification`](scorefield_core::objective::NoisyClassification) on data perturbed
//! as the sampler perturbs it; [`ClassifierGuidance`](scorefield_core::guidance::ClassifierGuidance)
//! differentiates its `log p(y | x, σ)` with respect to `x`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::{Int, Tensor, TensorData};
use scorefield_core::NoiseLevel;
use scorefield_core::condition::Labels;
use scorefield_core::guidance::NoisyClassifier;

/// Builds a [`NoisyClassifierMlp`]; its fields are the network's hyper-parameters.
#[derive(Config, Debug)]
pub struct NoisyClassifierMlpConfig {
    /// The data dimension `d` of the flattened samples.
    pub dim: usize,
    /// The number of classes `K ≥ 2`.
    pub classes: usize,
    /// The hidden width.
    #[config(default = 128)]
    pub hidden: usize,
    /// The number of hidden layers `L ≥ 1`.
    #[config(default = 3)]
    pub layers: usize,
}

impl NoisyClassifierMlpConfig {
    /// Initialises the network on `device`.
    ///
    /// # Panics
    /// If `dim`, `hidden` or `layers` is zero or `classes < 2` (configuration errors).
    pub fn init(&self, device: &burn::tensor::Device) -> NoisyClassifierMlp {
        assert!(
            self.dim > 0 && self.hidden > 0 && self.layers > 0 && self.classes >= 2,
            "NoisyClassifierMlpConfig: empty network or fewer than two classes"
        );
        let h = self.hidden;
        NoisyClassifierMlp {
            layers: (0..self.layers)
                .map(|i| LinearConfig::new(if i == 0 { self.dim + 1 } else { h }, h).init(device))
                .collect(),
            output: LinearConfig::new(h, self.classes).init(device),
        }
    }
}

/// A noise-conditional MLP classifier (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct NoisyClassifierMlp {
    layers: Vec<Linear>,
    output: Linear,
}

impl NoisyClassifierMlp {
    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.output.weight.dims()[1]
    }

    /// `log p(· | x, σ)` for every class, `[B, K]`, of a batch `x` of any rank (flattened
    /// to `[B, d]`).
    pub fn log_probs<const D: usize>(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<2> {
        let b = x.dims()[0];
        let x: Tensor<2> = x.flatten(1, D - 1);
        let sigma = level.sigma.clone().div(level.scale.clone()).clamp_min(1e-12);
        let mut h = Tensor::cat(vec![x.clone(), sigma.log().reshape([b, 1]).cast(x.dtype())], 1);
        for layer in &self.layers {
            h = silu(layer.forward(h));
        }
        log_softmax(self.output.forward(h), 1)
    }
}

impl<const D: usize> NoisyClassifier<D> for NoisyClassifierMlp {
    /// `log p(yᵢ | xᵢ, σᵢ)`; a null label (which gets no guidance) reads class 0.
    fn log_prob(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<1> {
        let b = x.dims()[0];
        let all = self.log_probs(x, level);
        let k = self.classes();
        let ids: Vec<i64> =
            y.ids().iter().take(b).map(|c| c.filter(|&c| c < k).unwrap_or(0) as i64).collect();
        let n = ids.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &all.device());
        all.gather(1, ids).reshape([n])
    }
}
