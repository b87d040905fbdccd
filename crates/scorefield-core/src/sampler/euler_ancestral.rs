//! Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`): an Euler step of the
//! probability-flow ODE down to `σ_down`, then fresh noise up to `σ̃ᵢ₊₁`, so that the step
//! has the variance of DDPM's ancestral step (Ho et al. 2020) scaled by `η`:
//!
//! ```text
//! σ_up   = min(σ̃ᵢ₊₁, η·√(σ̃ᵢ₊₁²·(σ̃ᵢ² − σ̃ᵢ₊₁²)/σ̃ᵢ²)),   σ_down = √(σ̃ᵢ₊₁² − σ_up²)
//! x̃ᵢ₊₁   = x̃ᵢ + (σ_down − σ̃ᵢ)·(x̃ᵢ − D(x̃ᵢ; σ̃ᵢ))/σ̃ᵢ + S_noise·σ_up·z
//! ```
//!
//! `η = 0` is [`Euler`](super::Euler); `η = 1` adds the posterior's noise. One evaluation
//! per step; no noise on a step to `σ̃ = 0`.
//!
//! In the σ-parameterisation this is DDIM (Song et al. 2021) with the same `η`: DDIM's noise
//! `c = η·√((1 − ᾱ_s)/(1 − ᾱₜ))·√(1 − ᾱₜ/ᾱ_s)` is `√ᾱ_s·σ_up`, its direction coefficient
//! `√(1 − ᾱ_s − c²)` is `√ᾱ_s·σ_down`, and its `ε̂` is `(x̃ − D)/σ̃`; with
//! [`EulerAncestral::with_clip`] the denoised estimate is clipped first and `ε̂` recomputed
//! from it, as DDIM's clipping. [`Ddim`](super::Ddim) runs this step.

use burn::tensor::Tensor;

use crate::error::{Result, ensure_non_negative, ensure_positive};
use crate::sampler::ddpm::clip_range;
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// Euler ancestral with stochasticity `η` and noise scale `S_noise`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EulerAncestral {
    eta: f64,
    noise: f64,
    clip: Option<(f64, f64)>,
}

impl Default for EulerAncestral {
    /// `η = 1`, `S_noise = 1`.
    fn default() -> Self {
        EulerAncestral { eta: 1.0, noise: 1.0, clip: None }
    }
}

impl EulerAncestral {
    /// Errors with [`Error::InvalidParameter`](crate::Error::InvalidParameter) unless `η ≥ 0` and `S_noise > 0`, finite.
    pub fn new(eta: f64, noise: f64) -> Result<Self> {
        ensure_non_negative("eta", eta)?;
        Ok(EulerAncestral { eta, noise: ensure_positive("s_noise", noise)?, clip: None })
    }

    /// The same step with the denoised estimate clipped to `[lo, hi]` (DDIM's and DDPM's
    /// clipping of `x̂₀`).
    ///
    /// Errors with [`Error::InvalidParameter`](crate::Error::InvalidParameter) unless `lo < hi`, both finite.
    pub fn with_clip(self, lo: f64, hi: f64) -> Result<Self> {
        Ok(EulerAncestral { clip: Some(clip_range(lo, hi)?), ..self })
    }
}

/// `(σ_down, σ_up)` of an ancestral step from `σ` to `σ_next` with stochasticity `η`.
pub fn ancestral_split(sigma: f64, next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || next == 0.0 {
        return (next, 0.0);
    }
    let up =
        (eta * (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt()).min(next);
    ((next * next - up * up).sqrt(), up)
}

impl<const D: usize> Step<D> for EulerAncestral {
    type State = ();

    fn name(&self) -> &'static str {
        "Euler ancestral"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _state: &mut (),
    ) -> Result<StepOutput<D>> {
        let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
        let (down, up) = ancestral_split(sigma, next, self.eta);
        let mut denoised = ctx.denoise_at(&x, i)?;
        if let Some((lo, hi)) = self.clip {
            denoised = denoised.clamp(lo, hi);
        }
        let d = (x - denoised.clone()).div_scalar(sigma); // ε̂
        let mut x = denoised.clone() + d.mul_scalar(down);
        if up > 0.0 {
            let z = ctx.noise(&x)?;
            x = x + z.mul_scalar(self.noise * up);
        }
        Ok(StepOutput { x, denoised })
    }
}
