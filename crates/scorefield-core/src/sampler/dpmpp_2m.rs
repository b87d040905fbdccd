//! DPM-Solver++ 2M (Lu et al. 2022, "DPM-Solver++", Algorithm 2), the multistep
//! second-order solver of the probability-flow ODE in data prediction, in the
//! σ-parameterisation (`λ = −ln σ̃`, `hᵢ = λᵢ₊₁ − λᵢ`):
//!
//! ```text
//! first order (DDIM):  x̃ᵢ₊₁ = (σ̃ᵢ₊₁/σ̃ᵢ)·x̃ᵢ − (e^{−hᵢ} − 1)·D̂
//!                      D̂ = Dᵢ = D(x̃ᵢ; σ̃ᵢ)
//! 2M (i ≥ 1):          D̂ = (1 + 1/(2rᵢ))·Dᵢ − 1/(2rᵢ)·Dᵢ₋₁,   rᵢ = hᵢ₋₁/hᵢ
//! ```
//!
//! One evaluation per step. The first step (no history) and a step to `σ̃ = 0` (where it
//! returns `Dᵢ`) are first order, as in k-diffusion and diffusers (`lower_order_final`).

use burn::tensor::Tensor;

use crate::error::Result;
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// DPM-Solver++ 2M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DpmSolverPp2M;

/// What 2M keeps: the previous denoised estimate and its step length `h`.
#[derive(Debug, Default, Clone)]
pub struct History<const D: usize> {
    pub(crate) last: Option<(Tensor<D>, f64)>,
}

impl<const D: usize> Step<D> for DpmSolverPp2M {
    type State = History<D>;

    fn name(&self) -> &'static str {
        "DPM-Solver++ 2M"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        state: &mut History<D>,
    ) -> Result<StepOutput<D>> {
        let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
        let denoised = ctx.denoise_at(&x, i)?;
        if next == 0.0 {
            return Ok(StepOutput { x: denoised.clone(), denoised });
        }
        let h = sigma.ln() - next.ln();
        let estimate = match state.last.take() {
            None => denoised.clone(),
            Some((prev, h_prev)) => {
                let r = h_prev / h;
                denoised.clone().mul_scalar(1.0 + 0.5 / r) - prev.mul_scalar(0.5 / r)
            }
        };
        let x = x.mul_scalar(next / sigma) - estimate.mul_scalar((-h).exp_m1());
        state.last = Some((denoised.clone(), h));
        Ok(StepOutput { x, denoised })
    }
}
