//! Samplers: from an initial state (usually a prior sample) to samples of the data
//! distribution, driven by a score model.
//!
//! A [`Sampler`] reports every step to an [`Observer`] (progress bars, trajectories, early
//! stopping) instead of printing; [`check_finite`] turns a diverged state into
//! [`Error::NonFinite`].
//!
//! The fast solvers are [`Step`]s run by one [`Driver`] along a caller-chosen [`Grid`]
//! (`driver.rs`, `grid.rs`, `noise.rs`), one file each:
//!
//! | step | file | order | NFE per step | paper |
//! | --- | --- | --- | --- | --- |
//! | [`Euler`] | `euler.rs` | 1 | 1 | Karras et al. 2022, Alg. 1 |
//! | [`Heun`] (churn) | `heun.rs` | 2 | 2 (1 on the last step to σ = 0) | Karras et al. 2022, Alg. 2 |
//! | [`EulerAncestral`] | `euler_ancestral.rs` | 1 (SDE) | 1 | Ho et al. 2020; k-diffusion |
//! | [`DpmSolverPp2M`] | `dpmpp_2m.rs` | 2 | 1 | Lu et al. 2022 (DPM-Solver++) |
//! | [`DpmSolverPp2MSde`] | `dpmpp_2m_sde.rs` | 2 (ODE), SDE | 1 | Lu et al. 2022 |
//! | [`DpmSolverPp3MSde`] | `dpmpp_3m_sde.rs` | 3 (ODE), SDE | 1 | Lu et al. 2022 |
//! | [`UniPc`] | `unipc.rs` | order + 1 with the corrector | 1 | Zhao et al. 2023 |
//!
//! The classic samplers are steps on the same driver, each with a `driver()` that builds its
//! grid: [`Langevin`] and [`AnnealedLangevin`] dwell at their levels (a
//! [`Grid::stationary`]), [`ReverseSde`] (predictor and corrector in one step), [`DdpmAncestral`]
//! and [`ProbabilityFlow`]'s fixed-step solvers (Euler, Heun, RK4 in `t`) step in the caller's
//! coordinates with their own schedule, and [`Ddim`] is [`EulerAncestral`]. The samplers that
//! step in `t` take the caller's times (`with_times`, checked by [`check_times`]). What the
//! driver cannot run stays in `ode.rs`, the one module of ODE integrators that sampling and
//! the likelihood share: adaptive Dormand–Prince (it chooses its own steps), encoding (data →
//! prior, the other way) and the likelihood's augmented state.

pub mod annealed;
pub mod ddpm;
pub mod dpmpp_2m;
pub mod dpmpp_2m_sde;
pub mod dpmpp_3m_sde;
pub mod driver;
pub mod euler;
pub mod euler_ancestral;
pub mod grid;
pub mod heun;
pub mod inpaint;
pub mod langevin;
pub mod noise;
pub mod ode;
pub mod reverse_sde;
pub mod unipc;

pub use annealed::AnnealedLangevin;
pub use ddpm::{Ddim, DdpmAncestral, DdpmVariance};
pub use dpmpp_2m::DpmSolverPp2M;
pub use dpmpp_2m_sde::{DpmSolverPp2MSde, SdeSolverType};
pub use dpmpp_3m_sde::DpmSolverPp3MSde;
pub use driver::{Driver, FiniteCheck, Sampled, Step, StepContext, StepOutput};
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use grid::{Grid, Node, Spacing, check_times, exponential_sigmas, karras_sigmas, vp_sigmas};
pub use heun::Heun;
pub use inpaint::{Inpaint, InpaintState};
pub use langevin::Langevin;
pub use noise::{DeviceNoise, FixedNoise, NoiseSource, PerSampleNoise, RngNoise};
pub use ode::{OdeSolver, ProbabilityFlow, SolveStats};
pub use reverse_sde::{Corrector, Predictor, ReverseSde};
pub use unipc::{UniPc, UniPcVariant};

use core::ops::ControlFlow;

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result};
use crate::random::standard_normal;
use crate::score::{NoiseLevel, ScoreModel, check_batch, check_model};

/// One step of a sampler, as reported to an [`Observer`].
#[derive(Debug)]
pub struct SampleStep<'a, const D: usize> {
    /// The index of this step, from 0.
    pub step: usize,
    /// The total number of steps the sampler will take.
    pub total: usize,
    /// The time `t` of the state after this step.
    pub t: f64,
    /// The noise level `σ(t)` of the state after this step.
    pub sigma: f64,
    /// The state after this step.
    pub x: &'a Tensor<D>,
    /// The denoised estimate `x̂₀` the step computed, where the sampler has one.
    pub denoised: Option<&'a Tensor<D>>,
}

/// Receives the steps of a sampler. Returning `ControlFlow::Break(())` stops the sampler,
/// which then returns the state reached so far (no error).
pub trait Observer<const D: usize> {
    /// Called after every step.
    fn on_step(&mut self, step: &SampleStep<'_, D>) -> ControlFlow<()>;
}

/// The observer that does nothing.
impl<const D: usize> Observer<D> for () {
    fn on_step(&mut self, _step: &SampleStep<'_, D>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Any `FnMut(&SampleStep) -> ControlFlow<()>` closure is an observer.
impl<const D: usize, F> Observer<D> for F
where
    F: FnMut(&SampleStep<'_, D>) -> ControlFlow<()>,
{
    fn on_step(&mut self, step: &SampleStep<'_, D>) -> ControlFlow<()> {
        self(step)
    }
}

/// A sampler that draws samples from a model `M`, starting from `init` (shape `[B, ...]`).
///
/// Randomness is drawn from the `rng` the caller passes: the same seed gives the same samples
/// on one backend.
pub trait Sampler<M, const D: usize> {
    /// Runs the sampler from `init`, reporting each step to `observer`.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>>;
}

/// Returns [`Error::NonFinite`] if `x` holds a NaN or an infinity. `context` names where,
/// e.g. `"annealed Langevin step 17"`.
pub fn check_finite<const D: usize>(x: &Tensor<D>, context: impl FnOnce() -> String) -> Result<()> {
    let all_finite = x.clone().is_finite().all().into_scalar::<bool>();
    if all_finite { Ok(()) } else { Err(Error::NonFinite { context: context() }) }
}

/// Checks a sampler's initial state and returns its batch size: a non-empty batch
/// (`[B, ...]`, `B ≥ 1`) of the model's [`ScoreModel::sample_shape`] if it declares one
/// ([`Error::ShapeMismatch`]), in the model's [`ScoreModel::float_dtype`] if it declares one
/// ([`Error::DTypeMismatch`]), with finite values ([`Error::NonFinite`]).
pub fn check_init<M: ScoreModel<D> + ?Sized, const D: usize>(
    context: &'static str,
    model: &M,
    init: &Tensor<D>,
) -> Result<usize> {
    let dims = init.dims();
    let batch = dims.first().copied().unwrap_or(0);
    if batch == 0 {
        return Err(Error::ShapeMismatch {
            context,
            expected: "a batch [B, ...] of at least one sample".into(),
            got: format!("{dims:?}"),
        });
    }
    if let Some(expected) = model.batch_size()
        && expected != batch
    {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("a batch of {expected} (one per condition the model is given)"),
            got: format!("{dims:?}"),
        });
    }
    let level = NoiseLevel::clean(batch, (&init.device(), init.dtype()));
    check_batch(context, init, model.sample_shape().as_deref(), &level)?;
    check_model(context, model, init)?;
    check_finite(init, || format!("{context} initial state"))?;
    Ok(batch)
}

/// `z ~ N(0, I)` of the shape, device and dtype of `x`, from the caller's `rng`.
pub fn noise_like<const D: usize>(x: &Tensor<D>, rng: &mut dyn RngCore) -> Tensor<D> {
    standard_normal(x.dims(), (&x.device(), x.dtype()), rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn check_finite_reports_nan_and_infinity() {
        let device = crate::device("flex").unwrap();
        let ok = Tensor::<2>::from_floats([[1.0, -2.0], [0.0, 3.0]], &device);
        assert!(check_finite(&ok, || "ok".into()).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let x =
                Tensor::<2>::from_data(TensorData::new(vec![1.0, bad, 0.0, 3.0], [2, 2]), &device);
            let err = check_finite(&x, || "step 3".into()).unwrap_err();
            assert_eq!(err, Error::NonFinite { context: "step 3".into() });
        }
    }

    #[test]
    fn closures_are_observers_and_can_stop_a_sampler() {
        let device = crate::device("flex").unwrap();
        let x = Tensor::<1>::zeros([2], &device);
        let mut seen = Vec::new();
        let mut observer = |s: &SampleStep<'_, 1>| {
            seen.push(s.step);
            if s.step == 1 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        };
        let step = |i| SampleStep { step: i, total: 3, t: 0.0, sigma: 0.0, x: &x, denoised: None };
        assert!(Observer::on_step(&mut observer, &step(0)).is_continue());
        assert!(Observer::on_step(&mut observer, &step(1)).is_break());
        assert_eq!(seen, [0, 1]);
    }
}
