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

use std::cell::Cell;

use burn::tensor::Tensor;
use rand::RngCore;

use crate::condition::{Condition, ConditionalScoreModel, Given, Labels};
use crate::error::{Error, Result};
use crate::score::NoiseLevel;

thread_local! {
    /// Whether [`without_data_check`] is running on this thread.
    static DATA_CHECK_DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the objectives' check that the data batch is finite left out.
///
/// Every objective of this crate checks its batch `x₀` before the loss and errors with
/// [`Error::NonFinite`] on a NaN or an infinity: one device-to-host read, which on a GPU
/// stalls the queue until the batch is computed. A training loop that checks the loss itself
/// later (as `scorefield-nn`'s `Trainer::step_deferred` does) runs the objective inside this
/// function: non-finite data then shows as a non-finite loss. The shape checks stay. Applies
/// to this thread, for the duration of `f` (also if `f` panics).
///
/// ```
/// use burn::tensor::Tensor;
/// use rand::SeedableRng;
/// use scorefield_core::analytic::Gaussian;
/// use scorefield_core::objective::{DenoisingScoreMatching, Objective, without_data_check};
///
/// let device = scorefield_core::device("flex")?;
/// let model = Gaussian::isotropic(&[0.0, 0.0], 1.0)?;
/// let dsm = DenoisingScoreMatching::single(0.1)?;
/// let x = Tensor::<2>::from_data([[f32::NAN, 0.0]], &device);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// assert!(dsm.loss(&model, x.clone(), &mut rng).is_err()); // checked: an error
/// let out = without_data_check(|| dsm.loss(&model, x, &mut rng))?; // left to the caller
/// assert!(out.loss.into_scalar::<f64>().is_nan());
/// # Ok::<(), scorefield_core::Error>(())
/// ```
pub fn without_data_check<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DATA_CHECK_DEFERRED.set(self.0);
        }
    }
    let _restore = Restore(DATA_CHECK_DEFERRED.replace(true));
    f()
}

/// Whether the data checks are left out on this thread ([`without_data_check`]).
pub(crate) fn data_check_deferred() -> bool {
    DATA_CHECK_DEFERRED.get()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytic::Gaussian;
    use crate::objective::DenoisingScoreMatching;
    use rand::SeedableRng;

    /// Inside `without_data_check` a NaN batch passes the check (and gives a NaN loss); outside
    /// it, before and after (also after a panic inside, and after nesting), it is an error;
    /// empty batches are refused either way.
    #[test]
    fn the_data_check_is_left_out_only_inside_without_data_check() {
        let device = crate::device("flex").unwrap();
        let model = Gaussian::isotropic(&[0.0, 0.0], 1.0).unwrap();
        let dsm = DenoisingScoreMatching::single(0.1).unwrap();
        let nan = Tensor::<2>::from_data([[f32::NAN, 0.0], [0.0, 1.0]], &device);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let checked = |rng: &mut rand::rngs::StdRng| {
            let err = dsm.loss(&model, nan.clone(), rng).unwrap_err();
            assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        };
        checked(&mut rng);
        let out = without_data_check(|| {
            without_data_check(|| {});
            dsm.loss(&model, nan.clone(), &mut rng).unwrap()
        });
        assert!(out.loss.into_scalar::<f64>().is_nan());
        assert!(!out.per_sample.into_data().iter::<f64>().next().unwrap().is_finite());
        checked(&mut rng);
        let panicked = std::panic::catch_unwind(|| without_data_check(|| panic!("inside")));
        assert!(panicked.is_err());
        checked(&mut rng);
        let empty = Tensor::<2>::zeros([0, 2], &device);
        let err = without_data_check(|| dsm.loss(&model, empty, &mut rng)).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }
}
