//! DPM-Solver++ 2M SDE (Lu et al. 2022, the SDE solver of DPM-Solver++ in multistep form;
//! k-diffusion's `sample_dpmpp_2m_sde`), in the σ-parameterisation (`λ = −ln σ̃`,
//! `h = λᵢ₊₁ − λᵢ`, stochasticity `η`, `ĥ = (1 + η)·h`):
//!
//! ```text
//! x̃ᵢ₊₁ = (σ̃ᵢ₊₁/σ̃ᵢ)·e^{−ηh}·x̃ᵢ + (1 − e^{−ĥ})·Dᵢ
//!        + c·(Dᵢ − Dᵢ₋₁)/rᵢ                         (i ≥ 1, rᵢ = hᵢ₋₁/hᵢ)
//!        + σ̃ᵢ₊₁·√(1 − e^{−2ηh})·S_noise·z
//! c = ½(1 − e^{−ĥ})         (midpoint)
//! c = (e^{−ĥ} − 1)/ĥ + 1     (Heun)
//! ```
//!
//! `η = 0` is the deterministic 2M (with the midpoint correction); `η = 1` is the SDE. One
//! evaluation per step; a step to `σ̃ = 0` returns `Dᵢ`.

use burn::tensor::Tensor;

use crate::error::{Result, ensure_non_negative, ensure_positive};
use crate::sampler::dpmpp_2m::History;
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// How 2M SDE weighs its second-order correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SdeSolverType {
    /// `c = ½(1 − e^{−ĥ})` (k-diffusion's default).
    #[default]
    Midpoint,
    /// `c = (e^{−ĥ} − 1)/ĥ + 1`.
    Heun,
}

/// DPM-Solver++ 2M SDE with stochasticity `η`, noise scale `S_noise` and a correction type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmSolverPp2MSde {
    eta: f64,
    noise: f64,
    solver: SdeSolverType,
}

impl Default for DpmSolverPp2MSde {
    /// `η = 1`, `S_noise = 1`, midpoint.
    fn default() -> Self {
        DpmSolverPp2MSde { eta: 1.0, noise: 1.0, solver: SdeSolverType::Midpoint }
    }
}

impl DpmSolverPp2MSde {
    /// Errors with [`Error::InvalidParameter`](crate::Error::InvalidParameter) unless `η ≥ 0` and `S_noise > 0`, finite.
    pub fn new(eta: f64, noise: f64, solver: SdeSolverType) -> Result<Self> {
        ensure_non_negative("eta", eta)?;
        Ok(DpmSolverPp2MSde { eta, noise: ensure_positive("s_noise", noise)?, solver })
    }
}

impl<const D: usize> Step<D> for DpmSolverPp2MSde {
    type State = History<D>;

    fn name(&self) -> &'static str {
        "DPM-Solver++ 2M SDE"
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
        let (mut x, h, h_hat) = first_order_sde(x, &denoised, (sigma, next), self.eta);
        let phi = -(-h_hat).exp_m1(); // 1 − e^{−ĥ}
        if let Some((prev, h_prev)) = state.last.take() {
            let r = h_prev / h;
            let c = match self.solver {
                SdeSolverType::Midpoint => 0.5 * phi,
                SdeSolverType::Heun => (-h_hat).exp_m1() / h_hat + 1.0,
            };
            x = x + (denoised.clone() - prev).mul_scalar(c / r);
        }
        let x = add_sde_noise(ctx, x, next, self.eta * h, self.noise)?;
        state.last = Some((denoised.clone(), h));
        Ok(StepOutput { x, denoised })
    }
}

/// The first-order DPM-Solver++ SDE step from `σ̃` to `σ̃'` (both `> 0`) with stochasticity
/// `η`, before its noise: `(σ̃'/σ̃)·e^{−ηh}·x̃ + (1 − e^{−ĥ})·D`; returns it with `h` and
/// `ĥ = (1 + η)·h`. The 2M and 3M SDE solvers add their corrections to it.
pub(crate) fn first_order_sde<const D: usize>(
    x: Tensor<D>,
    denoised: &Tensor<D>,
    (sigma, next): (f64, f64),
    eta: f64,
) -> (Tensor<D>, f64, f64) {
    let h = sigma.ln() - next.ln();
    let (eta_h, h_hat) = (eta * h, (1.0 + eta) * h);
    let x = x.mul_scalar(next / sigma * (-eta_h).exp())
        + denoised.clone().mul_scalar(-(-h_hat).exp_m1());
    (x, h, h_hat)
}

/// `x̃ + σ̃'·√(1 − e^{−2ηh})·S_noise·z`, the SDE solvers' noise (no draw when `ηh = 0`).
pub(crate) fn add_sde_noise<const D: usize>(
    ctx: &mut StepContext<'_, D>,
    x: Tensor<D>,
    next: f64,
    eta_h: f64,
    s_noise: f64,
) -> Result<Tensor<D>> {
    if eta_h == 0.0 {
        return Ok(x);
    }
    let z = ctx.noise(&x)?;
    Ok(x + z.mul_scalar(next * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise))
}
