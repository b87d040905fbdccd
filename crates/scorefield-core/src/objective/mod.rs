//! Training objectives for score models.
//!
//! An [`Objective`] maps a model and a batch of data `x₀` to a scalar loss that ordinary
//! first-order backprop minimises, plus the per-sample losses and the noise level each was
//! evaluated at, so that callers can report the loss per noise level.

pub mod denoising;
pub mod elbo;
pub mod exact;
pub mod sliced;

pub use denoising::{DenoisingScoreMatching, LevelSampling, Weighting};
pub use elbo::{ElboLoss, EpsilonElbo, ModelVariance, VlbTerms};
pub use exact::{DataLevel, ExactScoreMatching};
pub use sliced::{Projection, SlicedScoreMatching};

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::Result;
use crate::score::NoiseLevel;

/// What an objective returns for one batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar loss (shape `[1]`) to call `.backward()` on.
    pub loss: Tensor<1>,
    /// The loss of each batch element (shape `[B]`), with `loss` their (possibly weighted)
    /// mean.
    pub per_sample: Tensor<1>,
    /// The noise level each batch element was evaluated at, for objectives that perturb the
    /// data (`None` for exact and sliced score matching on clean data).
    pub level: Option<NoiseLevel>,
}

/// A score-matching objective `J(θ)` over a model `M` and data batches of rank `D`.
///
/// Randomness (noise, levels, projections) is drawn from the `rng` the caller passes, so a
/// seeded generator gives the same loss every time.
pub trait Objective<M, const D: usize> {
    /// The loss of `model` on the data batch `x0` (shape `[B, ...]`).
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput>;
}
