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
//! [`NoiseLevel`]. For NCSN's [`GeometricSigmas`], [`AnnealedLangevin::ncsn`] takes every level
//! (`tᵢ = time_of_level(i)`). For a schedule with `m(t) ≠ 1` each level samples the scaled
//! marginal `pₜ`, and the final step is Tweedie's `(x + σ_L²·s)/m_L`.

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::sampler::{Observer, SampleStep, Sampler, check_finite, check_init, noise_like};
use crate::schedule::{GeometricSigmas, NoiseSchedule};
use crate::score::{NoiseLevel, ScoreModel};

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

impl<S: NoiseSchedule, M: ScoreModel<D>, const D: usize> Sampler<M, D> for AnnealedLangevin<S> {
    /// Runs the `L·T` steps (and the denoising step) from `init`.
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
        let batch = check_init("annealed Langevin", model, &init)?;
        let device = init.device();
        let sigma_l = self.sigmas[self.sigmas.len() - 1];
        let total = self.times.len() * self.steps_per_level + usize::from(self.final_denoise);
        let mut x = init;
        let mut step = 0;
        for (&t, &sigma) in self.times.iter().zip(&self.sigmas) {
            let level = NoiseLevel::constant(&self.schedule, t, batch, &device);
            let alpha = self.eps * sigma * sigma / (sigma_l * sigma_l); // α_i = ε σ_i²/σ_L²
            for _ in 0..self.steps_per_level {
                let s = model.score(x.clone(), &level);
                let z = noise_like(&x, rng);
                x = x + s.mul_scalar(alpha / 2.0) + z.mul_scalar(alpha.sqrt());
                check_finite(&x, || format!("annealed Langevin step {step} (σ = {sigma})"))?;
                if observer
                    .on_step(&SampleStep { step, total, t, sigma, x: &x, denoised: None })
                    .is_break()
                {
                    return Ok(x);
                }
                step += 1;
            }
        }
        if self.final_denoise {
            let t_l = self.times[self.times.len() - 1];
            let m_l = self.schedule.marginal(t_l).scale;
            let level = NoiseLevel::constant(&self.schedule, t_l, batch, &device);
            let s = model.score(x.clone(), &level);
            x = (x + s.mul_scalar(sigma_l * sigma_l)).div_scalar(m_l); // (x + σ_L² s)/m_L
            check_finite(&x, || format!("annealed Langevin step {step} (final denoising)"))?;
            if observer
                .on_step(&SampleStep { step, total, t: 0.0, sigma: 0.0, x: &x, denoised: None })
                .is_break()
            {
                return Ok(x);
            }
        }
        Ok(x)
    }
}
