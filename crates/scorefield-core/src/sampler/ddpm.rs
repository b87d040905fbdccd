//! The DDPM ancestral sampler (Ho et al. 2020, Algorithm 2) and DDIM (Song, Meng & Ermon
//! 2021) on the discrete [`Ddpm`] chain.
//!
//! Both take any [`ScoreModel`]: the noise prediction is recovered from the score as
//! `ε̂ = −σₜ·s(xₜ, t)` with `σₜ = √(1 − ᾱₜ)` (the inverse of [`FromEpsilon`]'s `s = −ε̂/σ`, so
//! an ε-network wrapped in `FromEpsilon` gives back its own `ε̂`).
//!
//! ```text
//! DDPM, t = T..1:  xₜ₋₁ = (xₜ − βₜ/√(1 − ᾱₜ)·ε̂)/√αₜ + σₜ·z,   σₜ² = βₜ or β̃ₜ,  z = 0 at t = 1
//!   clipped:       x̂₀ = clip((xₜ − √(1 − ᾱₜ)·ε̂)/√ᾱₜ),   xₜ₋₁ = μ̃ₜ(x̂₀, xₜ) + σₜ·z
//! DDIM, t → s on a grid T = τ₁ > … > τ_S (then s = 0, ᾱ₀ = 1):
//!   x̂₀ = (xₜ − √(1 − ᾱₜ)·ε̂)/√ᾱₜ
//!   c  = η·√((1 − ᾱ_s)/(1 − ᾱₜ))·√(1 − ᾱₜ/ᾱ_s)
//!   x_s = √ᾱ_s·x̂₀ + √(1 − ᾱ_s − c²)·ε̂ + c·z
//!   clipped:  x̂₀ ← clip(x̂₀),  ε̂ ← (xₜ − √ᾱₜ·x̂₀)/√(1 − ᾱₜ)  (the pair still gives back xₜ)
//! ```
//!
//! Without clipping the two DDPM lines are the same step (`μ̃ₜ` with `x̂₀` substituted is
//! Algorithm 2's mean). DDIM with `η = 0` is deterministic; `η = 1` on the full grid is DDPM
//! with `σₜ² = β̃ₜ`, with or without clipping (the step is linear in `(x̂₀, xₜ)` with the same
//! coefficients). The last DDIM step lands on `ᾱ₀ = 1` and returns `x̂₀`, so a clipped DDIM
//! ends inside the clipping range.
//!
//! [`FromEpsilon`]: crate::score::FromEpsilon

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_finite, ensure_less};
use crate::sampler::{
    Driver, EulerAncestral, Grid, Observer, RngNoise, Sampler, Step, StepContext, StepOutput,
};
use crate::schedule::{Ddpm, NoiseSchedule};
use crate::score::ScoreModel;

/// The variance `σₜ²` of the DDPM reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdpmVariance {
    /// `σₜ² = βₜ` (optimal for `x₀ ~ N(0, I)`; "fixed large").
    Beta,
    /// `σₜ² = β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ)·βₜ`, the posterior variance (optimal for a single
    /// data point; "fixed small").
    BetaTilde,
}

/// DDPM's ancestral sampler (Algorithm 2) over all `T` steps of a [`Ddpm`] chain:
/// `xₜ₋₁ = (xₜ − βₜ/√(1 − ᾱₜ)·ε̂)/√αₜ + σₜ·z` with `ε̂ = −√(1 − ᾱₜ)·s(xₜ, t)`, optionally
/// clipping the implied `x̂₀` to a range (then `xₜ₋₁ = μ̃ₜ(x̂₀, xₜ) + σₜ·z`).
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmAncestral {
    schedule: Ddpm,
    variance: DdpmVariance,
    clip: Option<(f64, f64)>,
}

impl DdpmAncestral {
    /// The sampler over every step of `schedule`, with reverse variance `variance`, no
    /// clipping. Start it from `x_T ~ N(0, I)`.
    pub fn new(schedule: Ddpm, variance: DdpmVariance) -> Self {
        Self { schedule, variance, clip: None }
    }

    /// The same sampler, clipping `x̂₀` to `[lo, hi]` at every step (DDPM clips to `[−1, 1]`).
    ///
    /// Errors with [`Error::InvalidParameter`] unless `lo < hi`, both finite.
    pub fn with_clip(self, lo: f64, hi: f64) -> Result<Self> {
        Ok(Self { clip: Some(clip_range(lo, hi)?), ..self })
    }

    /// The DDPM chain.
    pub fn schedule(&self) -> &Ddpm {
        &self.schedule
    }

    /// The reverse variance.
    pub fn variance(&self) -> DdpmVariance {
        self.variance
    }

    /// The clipping range of `x̂₀`, if any.
    pub fn clip(&self) -> Option<(f64, f64)> {
        self.clip
    }
}

impl DdpmAncestral {
    /// The driver that runs this sampler: its step on the grid `t = T, …, 1, 0` of the chain.
    pub fn driver(&self) -> Result<Driver<&Self>> {
        let times: Vec<f64> = (0..=self.schedule.steps()).rev().map(|t| t as f64).collect();
        Ok(Driver::new(self, Grid::from_times(self.schedule.clone(), &times)?))
    }
}

/// Step `k`, from `t = T − k` to `t − 1`, on `x = √ᾱₜ·x̃`: Algorithm 2 (or the clipped
/// posterior mean) and its noise, divided by `√ᾱₜ₋₁`.
impl<const D: usize> Step<D> for DdpmAncestral {
    type State = ();

    fn name(&self) -> &'static str {
        "DDPM ancestral"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _: &mut (),
    ) -> Result<StepOutput<D>> {
        let (node, next) = (ctx.node(i), ctx.node(i + 1));
        let d = &self.schedule;
        let t = d.steps() - i;
        let (beta, alpha, sigma_t) = (d.betas()[t - 1], d.alphas()[t - 1], node.sigma);
        let eps = ctx.score(&x, node)?.mul_scalar(-sigma_t); // ε̂ = −σₜ s
        let x = x.mul_scalar(node.scale);
        let x0 = (x.clone() - eps.clone().mul_scalar(sigma_t)).div_scalar(node.scale);
        let mean = match self.clip {
            None => (x - eps.mul_scalar(beta / sigma_t)).div_scalar(alpha.sqrt()),
            Some((lo, hi)) => {
                let (c0, c1) = d.posterior_mean_coefficients(t);
                x0.clone().clamp(lo, hi).mul_scalar(c0) + x.mul_scalar(c1)
            }
        };
        let x = if t > 1 {
            let var = match self.variance {
                DdpmVariance::Beta => beta,
                DdpmVariance::BetaTilde => d.posterior_variance(t),
            };
            let z = ctx.noise(&mean)?;
            mean + z.mul_scalar(var.sqrt())
        } else {
            mean
        };
        Ok(StepOutput { x: x.div_scalar(next.scale), denoised: x0 })
    }
}

impl<M: ScoreModel<D>, const D: usize> Sampler<M, D> for DdpmAncestral {
    /// Runs the `T` steps from `init` (`x_T`) on [`DdpmAncestral::driver`]; step `k` goes
    /// from `t = T − k` to `t − 1` and is reported with `t − 1` and `σ = √(1 − ᾱₜ₋₁)`.
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

/// DDIM on the steps `Ddpm::grid(steps)` (`T = τ₁ > … > τ_S ≥ 1`, then `ᾱ₀ = 1`):
/// `x_s = √ᾱ_s·x̂₀ + √(1 − ᾱ_s − c²)·ε̂ + c·z` with `x̂₀ = (xₜ − √(1 − ᾱₜ)·ε̂)/√ᾱₜ`,
/// `c = η·√((1 − ᾱ_s)/(1 − ᾱₜ))·√(1 − ᾱₜ/ᾱ_s)` and `ε̂ = −√(1 − ᾱₜ)·s(xₜ, t)`; optionally
/// clipping `x̂₀` to a range (then `ε̂` is recomputed from the clipped `x̂₀`).
///
/// ```
/// use scorefield_core::sampler::Ddim;
/// use scorefield_core::schedule::Ddpm;
///
/// // 50 deterministic steps, images kept in [−1, 1] as DDPM's data.
/// let ddim = Ddim::new(Ddpm::linear(1000)?, 50, 0.0)?.with_clip(-1.0, 1.0)?;
/// assert_eq!(ddim.times().len(), 50);
/// assert_eq!(ddim.clip(), Some((-1.0, 1.0)));
/// # Ok::<(), scorefield_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Ddim {
    schedule: Ddpm,
    times: Vec<usize>,
    eta: f64,
    clip: Option<(f64, f64)>,
}

impl Ddim {
    /// DDIM with `steps` model evaluations at `schedule.grid(steps)` and stochasticity `eta`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `η ∈ [0, 1]` and `1 ≤ steps ≤ T`.
    pub fn new(schedule: Ddpm, steps: usize, eta: f64) -> Result<Self> {
        ensure_finite("eta", eta)?;
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::invalid("eta", eta, "must be in [0, 1]"));
        }
        if steps == 0 {
            return Err(Error::invalid("steps", 0, "at least one step is needed"));
        }
        // The grid's times are integers in [1, T].
        let times = schedule.grid(steps)?.into_iter().map(|t| t.round() as usize).collect();
        Ok(Self { schedule, times, eta, clip: None })
    }

    /// The same sampler, clipping `x̂₀` to `[lo, hi]` at every step and recomputing `ε̂` from
    /// it, so that the samples end inside `[lo, hi]`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `lo < hi`, both finite.
    pub fn with_clip(self, lo: f64, hi: f64) -> Result<Self> {
        Ok(Self { clip: Some(clip_range(lo, hi)?), ..self })
    }

    /// The clipping range of `x̂₀`, if any.
    pub fn clip(&self) -> Option<(f64, f64)> {
        self.clip
    }

    /// The DDPM chain.
    pub fn schedule(&self) -> &Ddpm {
        &self.schedule
    }

    /// The steps `τ₁ > … > τ_S` the model is evaluated at.
    pub fn times(&self) -> &[usize] {
        &self.times
    }

    /// The stochasticity `η`.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The driver that runs this DDIM: [`EulerAncestral`] with `η` (and the clipping) on the
    /// grid `τ₁ > … > τ_S` and the clean level, in the σ-parameterisation, where DDIM is
    /// exactly that step (see `euler_ancestral.rs`).
    pub fn driver(&self) -> Result<Driver<EulerAncestral>> {
        let mut times: Vec<f64> = self.times.iter().map(|&t| t as f64).collect();
        times.push(0.0);
        let grid = Grid::from_times(self.schedule.clone(), &times)?;
        let mut step = EulerAncestral::new(self.eta, 1.0)?;
        if let Some((lo, hi)) = self.clip {
            step = step.with_clip(lo, hi)?;
        }
        Ok(Driver::new(step, grid).with_name("DDIM"))
    }
}

impl<M: ScoreModel<D>, const D: usize> Sampler<M, D> for Ddim {
    /// Runs the `S` steps from `init` (`x_T`) with [`Ddim::driver`]; step `k` goes from
    /// `τₖ₊₁` to the next grid step (or 0) and is reported with that time and `σ = √(1 − ᾱ)`.
    ///
    /// Errors with [`Error::ShapeMismatch`] if `init` is not a non-empty batch of the model's
    /// sample shape, and with [`Error::NonFinite`] if `init` or a step is not finite.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        Ok(self.driver()?.run(model, init, &mut RngNoise(rng), observer)?.x)
    }
}

/// Validates a clipping range `[lo, hi]`: both finite, `lo < hi`.
pub(crate) fn clip_range(lo: f64, hi: f64) -> Result<(f64, f64)> {
    ensure_finite("lo", lo)?;
    ensure_finite("hi", hi)?;
    ensure_less("lo", lo, "hi", hi)?;
    Ok((lo, hi))
}
