//! Euler's method on the probability-flow ODE in EDM's form (Karras et al. 2022, Algorithm 1
//! with `S_churn = 0`; k-diffusion's `sample_euler`):
//!
//! ```text
//! dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃
//! dᵢ     = (x̃ᵢ − D(x̃ᵢ; σ̃ᵢ))/σ̃ᵢ
//! x̃ᵢ₊₁   = x̃ᵢ + (σ̃ᵢ₊₁ − σ̃ᵢ)·dᵢ
//! ```
//!
//! First order, one model evaluation per step. A step to `σ̃ = 0` returns `D(x̃ᵢ; σ̃ᵢ)`.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// Euler steps `x̃ ← x̃ + (σ̃ᵢ₊₁ − σ̃ᵢ)·(x̃ − D(x̃; σ̃ᵢ))/σ̃ᵢ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Euler;

impl<const D: usize> Step<D> for Euler {
    type State = ();

    fn name(&self) -> &'static str {
        "Euler"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _state: &mut (),
    ) -> Result<StepOutput<D>> {
        let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
        let denoised = ctx.denoise_at(&x, i)?;
        let d = (x.clone() - denoised.clone()).div_scalar(sigma);
        Ok(StepOutput { x: x + d.mul_scalar(next - sigma), denoised })
    }
}
