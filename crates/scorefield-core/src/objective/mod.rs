//! Training objectives for score models.
//!
//! An [`Objective`] maps a model and a batch of data `x₀` to a scalar loss that ordinary
//! first-order backprop minimises, plus the per-sample losses and the noise level each was
//! evaluated at, so that callers can report the loss per noise level.

pub mod classification;
pub mod denoising;
pub mod elbo;
pub mod exact;
pub mod sliced;

pub use classification::NoisyClassification;
pub use denoising::{DenoisingScoreMatching, LevelSampling, Weighting};
pub use elbo::{ElboLoss, EpsilonElbo, ModelVariance, VlbTerms};
pub use exact::{DataLevel, ExactScoreMatching};
pub use sliced::{Projection, SlicedScoreMatching};

use burn::tensor::Tensor;
use rand::RngCore;

use crate::condition::{Condition, ConditionalScoreModel, Given, Labels};
use crate::error::{Error, Result};
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

/// An objective over a model that takes a per-sample condition `y` (class [`Labels`] by
/// default) with each data batch: conditional score models, noise-conditional classifiers.
///
/// Every score-matching [`Objective`] is one, through the blanket implementation: the loss of
/// a [`ConditionalScoreModel`] given `y` is the objective's loss of the score model
/// [`Given`]`(model, y)`, so denoising score matching, the ε-bound and the rest train
/// conditional models unchanged. Label dropout for classifier-free guidance happens in the
/// labels the caller passes ([`Labels::dropout`]).
pub trait ConditionalObjective<M, const D: usize, C: Condition = Labels> {
    /// The loss of `model` on the data batch `x0` (shape `[B, ...]`) with conditions `y` (one
    /// per sample).
    fn loss_given(
        &self,
        model: &M,
        x0: Tensor<D>,
        y: &C,
        rng: &mut dyn RngCore,
    ) -> Result<LossOutput>;
}

impl<O, M, C, const D: usize> ConditionalObjective<M, D, C> for O
where
    O: for<'a> Objective<Given<&'a M, C>, D> + ?Sized,
    M: ConditionalScoreModel<D, C>,
    C: Condition + Clone,
{
    /// The objective's loss of [`Given`]`(model, y)`. Errors with [`Error::ShapeMismatch`]
    /// unless `y` has one condition per sample of `x0`, and as the objective.
    fn loss_given(
        &self,
        model: &M,
        x0: Tensor<D>,
        y: &C,
        rng: &mut dyn RngCore,
    ) -> Result<LossOutput> {
        check_conditions("ConditionalObjective", &x0, y)?;
        self.loss(&Given::new(model, y.clone())?, x0, rng)
    }
}

/// Checks that `y` holds one condition per sample of `x` ([`Error::ShapeMismatch`]).
pub(crate) fn check_conditions<const D: usize, C: Condition>(
    context: &'static str,
    x: &Tensor<D>,
    y: &C,
) -> Result<()> {
    let batch = x.dims()[0];
    if y.batch_size() != batch {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("one condition per sample ({batch})"),
            got: format!("{} conditions", y.batch_size()),
        });
    }
    Ok(())
}
