//! A scorefield objective under burn-train (feature `burn-train`): [`ObjectiveStep`] wraps a
//! model and an [`Objective`] into a burn-train model, so that burn-train's `Learner` and its
//! strategies (one device, several devices, DDP) run it, with burn-train's metrics
//! ([`ScoreOutput`] feeds its `LossMetric`), checkpoints and renderers.
//!
//! One [`TrainStep::step`] on a [`ScoreBatch`] `{ x0, seed }`:
//!
//! ```text
//! L(θ) = objective.loss(θ, x0, StdRng(seed));   grads = ∇_θ L   (burn-train then steps its optimizer)
//! ```
//!
//! The seed travels with the batch (the batcher chooses it, e.g. from the indices of the
//! batch's items), so a run is reproducible for a fixed data order, on any strategy: under DDP
//! every device draws the noise of its own batches. The same seed gives the same gradient as
//! [`Trainer::step`](super::Trainer::step) when the trainer's stream has that seed (the tests
//! check it). What burn-train's loop does not have: the scorefield trainer's EMA, post-hoc
//! EMA, global-norm clipping (burn-optim's per-parameter `GradientClippingConfig` is another
//! rule) and bit-exact resume; see `docs/training.md`.
//!
//! ```
//! use burn::tensor::Tensor;
//! use burn_train::TrainStep;
//! use scorefield_core::objective::DenoisingScoreMatching;
//! use scorefield_core::schedule::GeometricSigmas;
//! use scorefield_nn::ScoreMlpConfig;
//! use scorefield_nn::train::burn_train::{ObjectiveStep, ScoreBatch};
//!
//! let device = scorefield_core::device("flex")?;
//! let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
//! let model = ScoreMlpConfig::new(2).with_hidden(16).init(&device).train();
//! let step = ObjectiveStep::<_, _, 2>::new(model, objective);
//! let x0 = Tensor::<2>::zeros([8, 2], &device);
//! let out = step.step(ScoreBatch { x0, seed: 7 });
//! assert!(!out.grads.is_empty());
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use std::sync::Arc;

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{ExecutionError, Tensor};
use burn_train::metric::{Adaptor, LossInput};
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield_core::{LossOutput, Objective};

/// One batch for an [`ObjectiveStep`]: the data `x0` (`[B, ...]`) and the seed of the
/// objective's random numbers for it (noise levels, noise, projections).
#[derive(Debug, Clone)]
pub struct ScoreBatch<const D: usize> {
    /// The data batch.
    pub x0: Tensor<D>,
    /// The seed of the objective's generator for this batch.
    pub seed: u64,
}

/// What a step gives burn-train's metrics: the scalar loss (`LossMetric` reads it) and the
/// loss of each batch element.
#[derive(Debug, Clone)]
pub struct ScoreOutput {
    /// The scalar loss, shape `[1]`.
    pub loss: Tensor<1>,
    /// The per-sample losses, shape `[B]`.
    pub per_sample: Tensor<1>,
}

impl From<LossOutput> for ScoreOutput {
    fn from(out: LossOutput) -> Self {
        ScoreOutput { loss: out.loss, per_sample: out.per_sample }
    }
}

impl Adaptor<LossInput> for ScoreOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl ItemLazy for ScoreOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        // As burn-train's own outputs: flush the device, leave autodiff so that the metric
        // thread holds no graph.
        self.loss.device().flush()?;
        Ok(ScoreOutput {
            loss: self.loss.without_autodiff(),
            per_sample: self.per_sample.without_autodiff(),
        })
    }
}

/// A model `M` and a scorefield objective `O` over batches of rank `D`, as one burn-train
/// model: [`TrainStep`] runs the objective's forward and backward pass, [`InferenceStep`]
/// its forward pass (for validation). The objective is shared between clones (and the
/// devices of a multi-device strategy), the model's parameters are the module's.
///
/// An objective that fails (a non-finite batch, a shape that does not fit the model) panics
/// in the step: burn-train's steps cannot return errors.
#[derive(Module, Debug)]
pub struct ObjectiveStep<M: Module, O: Send + Sync + std::fmt::Debug + 'static, const D: usize> {
    /// The model being trained.
    pub model: M,
    #[module(skip)]
    objective: Arc<O>,
}

impl<M: Module, O: Send + Sync + std::fmt::Debug + 'static, const D: usize> ObjectiveStep<M, O, D> {
    /// Wraps `model` (on an autodiff device to train it) and `objective`.
    pub fn new(model: M, objective: O) -> Self {
        ObjectiveStep { model, objective: Arc::new(objective) }
    }

    /// The objective.
    pub fn objective(&self) -> &O {
        &self.objective
    }

    /// The objective's loss of the model on `batch`, with `StdRng(batch.seed)`.
    fn loss(&self, batch: ScoreBatch<D>) -> LossOutput
    where
        O: Objective<M, D>,
    {
        let mut rng = StdRng::seed_from_u64(batch.seed);
        match self.objective.loss(&self.model, batch.x0, &mut rng) {
            Ok(out) => out,
            Err(e) => panic!("scorefield objective failed in a burn-train step: {e}"),
        }
    }
}

/// The objectives an [`ObjectiveStep`] runs: an [`Objective`] that threads can share (burn-train
/// runs steps on worker threads) and that Burn's `Module` derive can clone.
pub trait StepObjective<M, const D: usize>:
    Objective<M, D> + Clone + Send + Sync + std::fmt::Debug + 'static
{
}

impl<M, O, const D: usize> StepObjective<M, D> for O where
    O: Objective<M, D> + Clone + Send + Sync + std::fmt::Debug + 'static
{
}

impl<M: Module + ModuleDisplay, O: StepObjective<M, D>, const D: usize> TrainStep
    for ObjectiveStep<M, O, D>
{
    type Input = ScoreBatch<D>;
    type Output = ScoreOutput;

    fn step(&self, batch: ScoreBatch<D>) -> TrainOutput<ScoreOutput> {
        let out = self.loss(batch);
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out.into())
    }
}

impl<M: Module + ModuleDisplay, O: StepObjective<M, D>, const D: usize> InferenceStep
    for ObjectiveStep<M, O, D>
{
    type Input = ScoreBatch<D>;
    type Output = ScoreOutput;

    fn step(&self, batch: ScoreBatch<D>) -> ScoreOutput {
        self.loss(batch).into()
    }
}

#[cfg(test)]
mod tests;
