//! Annealed Langevin dynamics (Song & Ermon 2019, NCSN Algorithm 1), with NCSNv2's optional
//! final denoising step (Song & Ermon 2020).
//!
//! ```text
//! for i = 1..L   (σ_1 > σ_2 > … > σ_L):
//!     α_i = ε·σ_i²/σ_L²
//!     for k = 1..T:   x ← x + (α_i/2)·s(x, σ_i) + √α_i·z,   z ~ N(0, I)
//! optionally (NCSNv2):  x ← x + σ_L²·s(x, σ_L)          (Tweedie's E[x₀ | x])
//! ```
//!
//! The step follows the library's Langevin convention `x + (α/2)·s + √α·z`
//! (`docs/conventions.md`); the NCSN code's `x + α·s + √(2α)·z` takes an `ε` half of ours for
//! the same update. NCSN: `σ` from 1 to 0.01 in 10 levels, `ε = 2e-5`, `T = 100`.
//!
//! The levels are the noise levels of any [`NoiseSchedule`] at a list of times, largest noise
//! first; σ_i is the schedule's `σ(tᵢ)` and the model is conditioned on its full
//! [`NoiseLevel`](crate::NoiseLevel). For NCSN's [`GeometricSigmas`], [`AnnealedLangevin::ncsn`] takes every level
//! (`tᵢ = time_of_level(i)`). For a schedule with `m(t) ≠ 1` each level samples the scaled
//! marginal `pₜ`, and the final step is Tweedie's `(x + σ_L²·s)/m_L`.

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::sampler::{Driver, Grid, Node, Observer, Sampler, Step, StepContext, StepOutput};
use crate::schedule::{GeometricSigmas, NoiseSchedule};
use crate::score::ScoreModel;

/// NCSN's annealed Langevin dynamics over the noise levels `σ_1 > … > σ_L` of a schedule:
/// `T` steps `x ← x + (α_i/2)·s(x, σ_i) + √α_i·z` per level with `α_i = ε·σ_i²/σ_L²`, then
/// optionally the denoising step `x ← (x + σ_L²·s(x, σ_L))/m_L`.
///
/// The sampler reports `L·T` steps (plus one for the denoising step, reported with `t = 0`
/// and `σ = 0`: its output estimates the clean data).
#[derive(Debug, Clone, PartialEq)]
pub struct AnnealedLangevin<S> {
    schedule: S,
    times: Vec<f64>,
    sigmas: Vec<f64>,
    steps_per_level: usize,
    eps: f64,
    final_denoise: bool,
}

impl AnnealedLangevin<GeometricSigmas> {
    /// NCSN's sampler over every level of `levels` (`tᵢ = levels.time_of_level(i)`), `T =
    /// steps_per_level` steps per level, step scale `ε = eps`; no final denoising.
    ///
    /// Errors as [`AnnealedLangevin::new`].
    pub fn ncsn(levels: GeometricSigmas, steps_per_level: usize, eps: f64) -> Result<Self> {
        let times: Vec<f64> = (0..levels.levels()).map(|i| levels.time_of_level(i)).collect();
        Self::new(levels, &times, steps_per_level, eps)
    }
}

impl<S: NoiseSchedule> AnnealedLangevin<S> {
    /// Annealed Langevin over the levels of `schedule` at `times` (largest noise first),
    /// `T = steps_per_level` steps per level, step scale `ε = eps`; no final denoising.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `eps > 0`, `steps_per_level ≥ 1`, `times`
    /// is non-empty and finite, and `σ(tᵢ)` is finite, `> 0` and strictly decreasing.
    pub fn new(schedule: S, times: &[f64], steps_per_level: usize, eps: f64) -> Result<Self> {
        ensure_positive("eps", eps)?;
        if steps_per_level == 0 {
            return Err(Error::invalid("steps_per_level", 0, "at least one step is needed"));
        }
        if times.is_empty() {
            return Err(Error::invalid("times", "[]", "at least one noise level is needed"));
        }
        let mut sigmas = Vec::with_capacity(times.len());
        for &t in times {
            ensure_finite("times", t)?;
            let sigma = ensure_positive("sigma", schedule.marginal(t).std)?;
            if let Some(&prev) = sigmas.last()
                && sigma >= prev
            {
                let reason = format!("σ({t}) = {sigma} must be < the previous level's σ = {prev}");
                return Err(Error::invalid("times", t, reason));
            }
            sigmas.push(sigma);
        }
        let times = times.to_vec();
        Ok(Self { schedule, times, sigmas, steps_per_level, eps, final_denoise: false })
    }

    /// The same sampler with (`true`) or without NCSNv2's final denoising step
    /// `x ← (x + σ_L²·s(x, σ_L))/m_L`.
    pub fn with_final_denoise(self, final_denoise: bool) -> Self {
        Self { final_denoise, ..self }
    }

    /// The schedule the levels come from.
    pub fn schedule(&self) -> &S {
        &self.schedule
    }

    /// The times `tᵢ` of the levels, largest noise first.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The noise levels `σ_i = σ(tᵢ)`, largest first.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The number of steps per level `T`.
    pub fn steps_per_level(&self) -> usize {
        self.steps_per_level
    }

    /// The step scale `ε` of `α_i = ε·σ_i²/σ_L²`.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether the final denoising step is taken.
    pub fn final_denoise(&self) -> bool {
        self.final_denoise
    }
}

impl<S: NoiseSchedule> AnnealedLangevin<S> {
    /// The driver that runs this sampler: `T` steps per level on the
    /// [stationary](Grid::stationary) grid of the levels, then the clean level if it
    /// denoises at the end.
    pub fn driver(&self) -> Result<Driver<&Self>> {
        let levels: Vec<Node> = self.times.iter().map(|&t| Node::at(&self.schedule, t)).collect();
        let grid = Grid::stationary(&levels, self.steps_per_level)?;
        let grid = if self.final_denoise { grid.with_zero() } else { grid };
        Ok(Driver::new(self, grid))
    }
}

/// One step on `x̃ = x/m`: at level `i` (node `i + 1`) the Langevin step
/// `x̃ ← x̃ + (α_i/2m)·s(m·x̃, σ_i) + (√α_i/m)·z` (the module's update divided by `m`); onto
/// the clean level, the denoising step `x̃ ← x̃ + (σ_L²/m_L)·s`, i.e. `(x + σ_L²·s)/m_L`.
impl<S: NoiseSchedule, const D: usize> Step<D> for AnnealedLangevin<S> {
    type State = ();

    fn name(&self) -> &'static str {
        "annealed Langevin"
    }

    fn dwells(&self) -> bool {
        true
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _: &mut (),
    ) -> Result<StepOutput<D>> {
        let (node, next) = (ctx.node(i), ctx.node(i + 1));
        if next.sigma == 0.0 {
            let x = ctx.denoise(&x, node)?; // (x + σ_L² s)/m_L
            return Ok(StepOutput { x: x.clone(), denoised: x });
        }
        let sigma_l = self.sigmas[self.sigmas.len() - 1];
        let alpha = self.eps * next.sigma * next.sigma / (sigma_l * sigma_l); // α_i = ε σ_i²/σ_L²
        let m = next.scale;
        let s = ctx.score(&x, next)?;
        let denoised = x.clone() + s.clone().mul_scalar(next.sigma * next.sigma / m);
        let z = ctx.noise(&x)?;
        let x = x + s.mul_scalar(alpha / (2.0 * m)) + z.mul_scalar(alpha.sqrt() / m);
        Ok(StepOutput { x, denoised })
    }
}

impl<S: NoiseSchedule, M: ScoreModel<D>, const D: usize> Sampler<M, D> for AnnealedLangevin<S> {
    /// Runs the `L·T` steps (and the denoising step) from `init` on
    /// [`AnnealedLangevin::driver`].
    ///
    /// Errors with [`Error::ShapeMismatch`] if `init` is not a non-empty batch of the model's
    /// sample shape or the model's output has another shape, and with [`Error::NonFinite`]
    /// if `init` or a step is not finite.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        self.driver()?.sample(model, init, rng, observer)
    }
}
