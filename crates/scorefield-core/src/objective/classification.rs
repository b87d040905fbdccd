//! Training a noise-conditional classifier for classifier guidance (Dhariwal & Nichol 2021;
//! score_sde's conditional sampler): the cross-entropy of the true class at data perturbed as
//! denoising score matching perturbs it,
//!
//! ```text
//! L(φ) = E_{x₀, y, t, z} [ −log p_φ(y | m·x₀ + σ·z, t) ]
//! ```
//!
//! with the levels drawn by a [`DenoisingScoreMatching`] objective (its weighting is not
//! used: each sample counts once). The minimiser is the exact `p(y | xₜ)` of the noisy data,
//! whose gradient [`ClassifierGuidance`](crate::guidance::ClassifierGuidance) adds to an
//! unconditional score.

use burn::tensor::Tensor;
use rand::RngCore;

use super::denoising::DenoisingScoreMatching;
use super::exact::check_data;
use super::{ConditionalObjective, LossOutput, check_conditions};
use crate::condition::Labels;
use crate::error::{Error, Result};
use crate::guidance::NoisyClassifier;

/// The noisy cross-entropy (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct NoisyClassification {
    levels: DenoisingScoreMatching,
}

impl NoisyClassification {
    /// Cross-entropy at the levels `levels` draws (e.g.
    /// [`DenoisingScoreMatching::multi_scale`], or the continuous schedule the guided sampler
    /// runs on).
    pub fn new(levels: DenoisingScoreMatching) -> Self {
        NoisyClassification { levels }
    }
}

impl<M: NoisyClassifier<D>, const D: usize> ConditionalObjective<M, D, Labels>
    for NoisyClassification
{
    /// Per sample `−log p(yᵢ | xᵢ, levelᵢ)`, the loss their mean. Errors with
    /// [`Error::InvalidParameter`] for a null label (a classifier learns real classes),
    /// [`Error::ShapeMismatch`] unless there is one label per sample or if the classifier's
    /// output is not one value per sample, [`Error::NonFinite`] on non-finite data.
    fn loss_given(
        &self,
        model: &M,
        x0: Tensor<D>,
        y: &Labels,
        rng: &mut dyn RngCore,
    ) -> Result<LossOutput> {
        const CONTEXT: &str = "NoisyClassification";
        check_data(CONTEXT, &x0)?;
        check_conditions(CONTEXT, &x0, y)?;
        if y.ids().iter().any(Option::is_none) {
            return Err(Error::invalid("label", "∅", "a classifier is trained on real classes"));
        }
        let p = self.levels.perturb(&x0, rng)?;
        let log_p = model.log_prob(p.x, &p.level, y);
        if log_p.dims() != [y.len()] {
            return Err(Error::ShapeMismatch {
                context: CONTEXT,
                expected: format!("[{}] (one log-probability per sample)", y.len()),
                got: format!("{:?}", log_p.dims()),
            });
        }
        let per_sample = log_p.neg();
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: Some(p.level) })
    }
}
