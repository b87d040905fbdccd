//! EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2).
//!
//! ```text
//! γᵢ = min(S_churn/N, √2 − 1)  if σ̃ᵢ ∈ [S_tmin, S_tmax],  else 0          (N steps)
//! σ̂  = σ̃ᵢ·(1 + γᵢ),   x̂ = x̃ᵢ + √(σ̂² − σ̃ᵢ²)·S_noise·z                  (churn: raise the noise)
//! d  = (x̂ − D(x̂; σ̂))/σ̂
//! x̃ᵢ₊₁ = x̂ + (σ̃ᵢ₊₁ − σ̂)·d                                               (Euler)
//! if σ̃ᵢ₊₁ ≠ 0:  d' = (x̃ᵢ₊₁ − D(x̃ᵢ₊₁; σ̃ᵢ₊₁))/σ̃ᵢ₊₁,
//!               x̃ᵢ₊₁ = x̂ + (σ̃ᵢ₊₁ − σ̂)·(d + d')/2                          (trapezoid)
//! ```
//!
//! Second order without churn; two evaluations per step, one on a last step to `σ̃ = 0`
//! (EDM: 18 levels and a final 0 give 35 evaluations). Noise is drawn only where `γᵢ > 0`.
//! EDM's stochastic settings for ImageNet-64: `S_churn = 40`, `S_tmin = 0.05`,
//! `S_tmax = 50`, `S_noise = 1.003`.

use burn::tensor::Tensor;

use crate::error::{Error, Result, ensure_non_negative, ensure_positive};
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// EDM's Heun sampler with churn `(S_churn, S_tmin, S_tmax, S_noise)`; the default is the
/// deterministic one (`S_churn = 0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heun {
    churn: f64,
    t_min: f64,
    t_max: f64,
    noise: f64,
}

impl Default for Heun {
    fn default() -> Self {
        Heun { churn: 0.0, t_min: 0.0, t_max: f64::INFINITY, noise: 1.0 }
    }
}

impl Heun {
    /// Heun with churn: `γᵢ = min(S_churn/N, √2 − 1)` on levels `σ̃ᵢ ∈ [S_tmin, S_tmax]`, the
    /// added noise scaled by `S_noise`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `S_churn ≥ 0`, `0 ≤ S_tmin ≤ S_tmax`
    /// and `S_noise > 0` (`S_tmax` may be `+∞`).
    pub fn with_churn(churn: f64, t_min: f64, t_max: f64, noise: f64) -> Result<Self> {
        ensure_non_negative("s_churn", churn)?;
        ensure_non_negative("s_tmin", t_min)?;
        if t_max.is_nan() || t_max < t_min {
            return Err(Error::invalid(
                "s_tmax",
                t_max,
                format!("needs 0 ≤ s_tmin = {t_min} ≤ s_tmax"),
            ));
        }
        ensure_positive("s_noise", noise)?;
        Ok(Heun { churn, t_min, t_max, noise })
    }

    /// `γᵢ` at level `σ̃` of a grid of `steps` steps.
    pub fn gamma(&self, sigma: f64, steps: usize) -> f64 {
        if self.churn > 0.0 && (self.t_min..=self.t_max).contains(&sigma) {
            (self.churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }
}

impl<const D: usize> Step<D> for Heun {
    type State = ();

    fn name(&self) -> &'static str {
        "Heun"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _state: &mut (),
    ) -> Result<StepOutput<D>> {
        let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
        let gamma = self.gamma(sigma, ctx.grid().steps());
        let (x_hat, s_hat, node_hat) = if gamma > 0.0 {
            let s_hat = sigma * (1.0 + gamma);
            let z = ctx.noise(&x)?;
            let x_hat = x + z.mul_scalar((s_hat * s_hat - sigma * sigma).sqrt() * self.noise);
            (x_hat, s_hat, ctx.grid().node_at(s_hat)?)
        } else {
            (x, sigma, ctx.node(i))
        };
        let denoised = ctx.denoise(&x_hat, node_hat)?;
        let d = (x_hat.clone() - denoised.clone()).div_scalar(s_hat);
        let euler = x_hat.clone() + d.clone().mul_scalar(next - s_hat);
        if next == 0.0 {
            return Ok(StepOutput { x: euler, denoised });
        }
        let d2 = (euler.clone() - ctx.denoise_at(&euler, i + 1)?).div_scalar(next);
        Ok(StepOutput { x: x_hat + (d + d2).mul_scalar(0.5 * (next - s_hat)), denoised })
    }
}
