//! Classifier guidance (Dhariwal & Nichol 2021; score_sde's conditional sampler): an
//! unconditional score model steered by a noise-conditional classifier,
//!
//! ```text
//! s_w(x | y) = s(x) + w·∇ₓ log p(y | x, σ)
//! ```
//!
//! The gradient is ordinary backpropagation with respect to the input: `x` is lifted onto
//! Burn's autodiff backend, the classifier's `log p(y | x, σ)` summed over the batch is
//! differentiated, and the gradient returns to `x`'s device without autodiff. At `w = 1` with
//! the exact classifier this is the exact class-conditional score, by Bayes' rule
//! (`∇ log p(x | y) = ∇ log p(x) + ∇ log p(y | x)`).

use burn::tensor::{DType, Tensor};

use crate::condition::{ConditionalScoreModel, Labels};
use crate::error::{Result, ensure_finite};
use crate::score::{NoiseLevel, ScoreModel};

/// A noise-conditional classifier: `log p(yᵢ | xᵢ, levelᵢ)` for each sample of a batch,
/// differentiable with respect to `x` (computed with tensor operations on `x`).
pub trait NoisyClassifier<const D: usize> {
    /// `log p(yᵢ | xᵢ, levelᵢ)`, shape `[B]`.
    fn log_prob(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<1>;
}

/// `s(x) + w·∇ₓ log p(y | x, σ)` (see the module documentation).
#[derive(Debug, Clone)]
pub struct ClassifierGuidance<M, K> {
    model: M,
    classifier: K,
    weight: f64,
}

impl<M, K> ClassifierGuidance<M, K> {
    /// The unconditional `model` guided by `classifier` with weight `w`.
    ///
    /// Errors with [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a
    /// non-finite `w`.
    pub fn new(model: M, classifier: K, weight: f64) -> Result<Self> {
        ensure_finite("guidance weight", weight)?;
        Ok(ClassifierGuidance { model, classifier, weight })
    }
}

impl<M, K, const D: usize> ConditionalScoreModel<D, Labels> for ClassifierGuidance<M, K>
where
    M: ScoreModel<D>,
    K: NoisyClassifier<D>,
{
    /// Null labels (`∅`) get no guidance.
    fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<D> {
        let score = self.model.score(x.clone(), level);
        let lifted = x.clone().autodiff().require_grad();
        let log_p = self.classifier.log_prob(lifted.clone(), level, y).sum();
        let grad = if log_p.is_tracked() {
            lifted.grad(&log_p.backward()).unwrap_or_else(|| x.zeros_like())
        } else {
            x.zeros_like() // a classifier that ignores x has no gradient
        };
        let guided: Vec<f64> =
            y.ids().iter().map(|c| if c.is_some() { 1.0 } else { 0.0 }).collect();
        let on =
            crate::score::per_sample(&Tensor::<1>::from_floats(guided.as_slice(), &x.device()), &x);
        score + grad.cast(x.dtype()).mul(on).mul_scalar(self.weight)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.model.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.model.float_dtype()
    }

    /// The unconditional model must score as it is ([`ScoreModel::validate`]).
    fn validate_condition(&self, _y: &Labels) -> Result<()> {
        self.model.validate()
    }
}
