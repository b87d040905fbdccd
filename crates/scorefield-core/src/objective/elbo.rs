//! The DDPM objectives (Ho et al. 2020) for the discrete chain [`Ddpm`], with the noise
//! prediction `ε_θ(xₜ, t) = −σₜ·s_θ(xₜ, t)`, `σₜ = √(1 − ᾱₜ)`, of any score model (an
//! ε-network enters as [`FromEpsilon`](crate::score::FromEpsilon), for which this is its own
//! output):
//!
//! ```text
//! L_simple = E_{t ~ U{1..T}, ε} ‖ε − ε_θ(√ᾱₜ x₀ + √(1−ᾱₜ) ε, t)‖² / d,
//! L        = L_T + Σ_{t=2..T} L_{t−1} + L₀                                   (bits/dim),
//! L_T      = KL(q(x_T | x₀) ‖ N(0, I)),
//! L_{t−1}  = KL(q(x_{t−1} | xₜ, x₀) ‖ p_θ(x_{t−1} | xₜ)),   t = 2..T,
//! L₀       = −log p_θ(x₀ | x₁)   (discretised Gaussian decoder, 256 bins on [−1, 1]),
//! ```
//!
//! with `p_θ(x_{t−1} | xₜ) = N(μ_θ, σ²ₜ I)`, `μ_θ = (xₜ − βₜ/√(1−ᾱₜ)·ε_θ)/√αₜ` and the fixed
//! variance `σ²ₜ` of [`ModelVariance`]. Each KL between Gaussians is in closed form,
//! `½[ln(v_p/v_q) + v_q/v_p − 1 + (μ_q − μ_p)²/v_p]` per dimension. Bits per dimension divide the
//! nats of a sample by `d·ln 2`. `L_simple` averages over dimensions, as DDPM's code does.

use burn::tensor::Tensor;
use rand::{Rng, RngCore};

use super::exact::{check_data, host_column, squared_norm};
use super::{LossOutput, Objective};
use crate::error::{Error, Result};
use crate::random::standard_normal;
use crate::schedule::Ddpm;
use crate::score::{NoiseLevel, ScoreModel, check_batch, check_model, check_output, per_sample};

/// Half the width of a decoder bin: the 256 values `−1 + 2k/255` sit in bins `x ± 1/255`.
const HALF_BIN: f64 = 1.0 / 255.0;

/// The fixed reverse-process variance `σ²ₜ` of `p_θ(x_{t−1} | xₜ)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelVariance {
    /// `σ²ₜ = βₜ` (DDPM's "fixed large"); the decoder at `t = 1` uses `β₁`.
    #[default]
    Beta,
    /// `σ²ₜ = β̃ₜ` (DDPM's "fixed small"); the decoder at `t = 1`, where `β̃₁ = 0`, uses `β̃₂`.
    PosteriorBeta,
}

/// Which loss [`EpsilonElbo`] trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElboLoss {
    /// `L_simple`: per sample `‖ε − ε_θ‖²/d` at `t ~ U{1..T}`.
    #[default]
    Simple,
    /// The unbiased one-step estimate of the bound, per sample `L_T + T·L_{t−1}` at
    /// `t ~ U{1..T}`, in bits/dim.
    Bound,
}

/// The DDPM objectives over an ε-prediction: `L_simple` or the variational bound, and the
/// bound's per-step terms for evaluation ([`EpsilonElbo::terms`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EpsilonElbo {
    ddpm: Ddpm,
    loss: ElboLoss,
    variance: ModelVariance,
}

/// The terms of the variational bound for each sample of a batch, in bits/dim.
#[derive(Debug, Clone)]
pub struct VlbTerms {
    /// `L_T`, shape `[B]`.
    pub prior: Tensor<1>,
    /// `[B, T]`: column `t − 1` is `L_{t−1}`; column 0 is the decoder `L₀`.
    pub steps: Tensor<2>,
}

impl VlbTerms {
    /// The bound `L_T + Σₜ L_{t−1}` per sample, `[B]`, in bits/dim.
    pub fn total(&self) -> Tensor<1> {
        let b = self.prior.dims()[0];
        self.steps.clone().sum_dim(1).reshape([b]).add(self.prior.clone())
    }
}

impl EpsilonElbo {
    /// `L_simple` on the chain `ddpm`.
    pub fn simple(ddpm: Ddpm) -> Self {
        Self { ddpm, loss: ElboLoss::Simple, variance: ModelVariance::Beta }
    }

    /// The variational bound (in bits/dim) on the chain `ddpm` with reverse variance
    /// `variance`.
    pub fn bound(ddpm: Ddpm, variance: ModelVariance) -> Self {
        Self { ddpm, loss: ElboLoss::Bound, variance }
    }

    /// The same objective with reverse variance `variance` (used by the bound and its terms).
    pub fn with_variance(self, variance: ModelVariance) -> Self {
        Self { variance, ..self }
    }

    /// The chain.
    pub fn ddpm(&self) -> &Ddpm {
        &self.ddpm
    }

    /// The reverse variance `σ²ₜ` for `t = 1..=T` (at `t = 1` the decoder's), see
    /// [`ModelVariance`]. Errors with [`Error::InvalidParameter`] outside `1..=T`.
    pub fn model_variance(&self, t: usize) -> Result<f64> {
        self.check_step(t)?;
        Ok(match (self.variance, t) {
            (ModelVariance::Beta, _) => self.ddpm.betas()[t - 1],
            (ModelVariance::PosteriorBeta, 1) => self.ddpm.posterior_variance(2),
            (ModelVariance::PosteriorBeta, _) => self.ddpm.posterior_variance(t),
        })
    }

    /// The prior term `L_T = KL(N(√ᾱ_T x₀, (1−ᾱ_T) I) ‖ N(0, I))` per sample, in bits/dim:
    /// per dimension `½[ᾱ_T x₀² − ᾱ_T − ln(1 − ᾱ_T)]`, the constant computed in f64.
    /// Errors with [`Error::NonFinite`] on non-finite data.
    pub fn prior_term<const D: usize>(&self, x0: Tensor<D>) -> Result<Tensor<1>> {
        check_data("EpsilonElbo::prior_term", &x0)?;
        let steps = self.ddpm.steps();
        let dims = x0.dims();
        let d = dims[1..].iter().product::<usize>() as f64;
        let alpha_bar = self.ddpm.alpha_bar(steps);
        let constant = -alpha_bar - self.ddpm.one_minus_alpha_bar(steps).ln();
        let nats = squared_norm(x0).mul_scalar(0.5 * alpha_bar).add_scalar(0.5 * d * constant);
        Ok(nats.div_scalar(d * core::f64::consts::LN_2))
    }

    /// `L_{t−1}` per sample, in bits/dim, at the step `steps[b]` of each sample (`1..=T`;
    /// `t = 1` gives the decoder `L₀`), with `xₜ` drawn from `q(xₜ | x₀)` using `rng`.
    /// Errors with [`Error::InvalidParameter`] on a step outside `1..=T`, and as
    /// [`Objective::loss`].
    pub fn step_term<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        steps: &[usize],
        rng: &mut dyn RngCore,
    ) -> Result<Tensor<1>> {
        let f = self.forward(model, x0, steps, rng)?;
        let (b, d) = (steps.len(), f.x0.dims()[1..].iter().product::<usize>() as f64);
        let each = |g: &dyn Fn(usize) -> f64| steps.iter().map(|&t| g(t)).collect::<Vec<f64>>();
        let var_p = steps.iter().map(|&t| self.model_variance(t)).collect::<Result<Vec<_>>>()?;
        let alphas = self.ddpm.alphas();
        let k_eps = each(&|t| self.ddpm.betas()[t - 1] / self.ddpm.one_minus_alpha_bar(t).sqrt());
        let inv_sqrt_alpha = each(&|t| 1.0 / alphas[t - 1].sqrt());
        // μ_θ = (xₜ − βₜ/√(1−ᾱₜ)·ε_θ)/√αₜ
        let mean_p =
            f.xt.clone()
                .sub(f.eps_hat.clone().mul(host_column(&k_eps, &f.x0)))
                .mul(host_column(&inv_sqrt_alpha, &f.x0));
        let first: Vec<f64> = steps.iter().map(|&t| if t == 1 { 1.0 } else { 0.0 }).collect();
        let nats = match first.iter().sum::<f64>() as usize {
            n if n == b => self.decoder_nats(&f.x0, mean_p, &var_p),
            0 => self.posterior_kl_nats(&f, mean_p, steps, &var_p),
            _ => {
                // A mixed batch: the decoder where t = 1, the KL elsewhere.
                let mask = host_column(&first, &f.x0).reshape([b]);
                let kl = self.posterior_kl_nats(&f, mean_p.clone(), steps, &var_p);
                let decoder = self.decoder_nats(&f.x0, mean_p, &var_p);
                decoder.mul(mask.clone()).add(kl.mul(mask.neg().add_scalar(1.0)))
            }
        };
        Ok(nats.div_scalar(d * core::f64::consts::LN_2))
    }

    /// Every term of the bound for the batch `x0`: `L_T` and `L_{t−1}` for `t = 1..=T` (one
    /// model call per step, each on a fresh `xₜ ~ q(xₜ | x₀)`), in bits/dim.
    pub fn terms<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        rng: &mut dyn RngCore,
    ) -> Result<VlbTerms> {
        let b = x0.dims()[0];
        let prior = self.prior_term(x0.clone())?;
        let steps = (1..=self.ddpm.steps())
            .map(|t| self.step_term(model, x0.clone(), &vec![t; b], rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(VlbTerms { prior, steps: Tensor::stack(steps, 1) })
    }

    /// `KL(q(x_{t−1} | xₜ, x₀) ‖ N(μ_θ, v_p))` per sample in nats: `½ Σ (μ̃ − μ_θ)²/v_p` plus
    /// `½ d [ln(v_p/β̃ₜ) + β̃ₜ/v_p − 1]` computed in f64 (set to 0 at `t = 1`, where `β̃₁ = 0`).
    fn posterior_kl_nats<const D: usize>(
        &self,
        f: &Forward<D>,
        mean_p: Tensor<D>,
        steps: &[usize],
        var_p: &[f64],
    ) -> Tensor<1> {
        let d = f.x0.dims()[1..].iter().product::<usize>() as f64;
        let each = |g: &dyn Fn(usize) -> f64| steps.iter().map(|&t| g(t)).collect::<Vec<f64>>();
        let c0 = each(&|t| self.ddpm.posterior_mean_coefficients(t).0);
        let c1 = each(&|t| self.ddpm.posterior_mean_coefficients(t).1);
        let mean_q =
            f.x0.clone()
                .mul(host_column(&c0, &f.x0))
                .add(f.xt.clone().mul(host_column(&c1, &f.x0)));
        let inv_std: Vec<f64> = var_p.iter().map(|v| v.sqrt().recip()).collect();
        let diff = mean_q.sub(mean_p).mul(host_column(&inv_std, &f.x0));
        let constant: Vec<f64> = steps
            .iter()
            .zip(var_p)
            .map(|(&t, &vp)| {
                let vq = self.ddpm.posterior_variance(t);
                if t == 1 { 0.0 } else { 0.5 * d * ((vp / vq).ln() + vq / vp - 1.0) }
            })
            .collect();
        squared_norm(diff).mul_scalar(0.5).add(host_column(&constant, &f.x0).reshape([steps.len()]))
    }

    /// `−Σ log p(x₀ | μ, σ²)` per sample under the discretised decoder, in nats.
    fn decoder_nats<const D: usize>(
        &self,
        x0: &Tensor<D>,
        mean: Tensor<D>,
        var: &[f64],
    ) -> Tensor<1> {
        let std: Vec<f64> = var.iter().map(|v| v.sqrt()).collect();
        let log_p = discretized_gaussian_log_likelihood(x0.clone(), mean, host_column(&std, x0));
        let b = var.len();
        let d = x0.dims()[1..].iter().product::<usize>();
        log_p.reshape([b, d]).sum_dim(1).reshape([b]).neg()
    }

    /// Draws `xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε` at the given steps and evaluates `ε_θ = −σₜ·s_θ`.
    fn forward<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        steps: &[usize],
        rng: &mut dyn RngCore,
    ) -> Result<Forward<D>> {
        const CONTEXT: &str = "EpsilonElbo";
        check_data(CONTEXT, &x0)?;
        for &t in steps {
            self.check_step(t)?;
        }
        check_model(CONTEXT, model, &x0)?;
        let run = (&x0.device(), x0.dtype());
        let times: Vec<f64> = steps.iter().map(|&t| t as f64).collect();
        let level = NoiseLevel::at_times(&self.ddpm, &times, run);
        check_batch(CONTEXT, &x0, model.sample_shape().as_deref(), &level)?;
        let scale: Vec<f64> = steps.iter().map(|&t| self.ddpm.alpha_bar(t).sqrt()).collect();
        let std: Vec<f64> =
            steps.iter().map(|&t| self.ddpm.one_minus_alpha_bar(t).sqrt()).collect();
        let eps = standard_normal(x0.dims(), run, rng);
        let std = host_column(&std, &x0);
        let xt = x0.clone().mul(host_column(&scale, &x0)).add(eps.clone().mul(std.clone()));
        // ε_θ = −σ·s with the σ the model saw, so that `FromEpsilon(net)` returns `net`'s own ε.
        let sigma = per_sample(&level.sigma, &xt);
        let score = model.score(xt.clone(), &level);
        check_output(CONTEXT, &score, &xt)?;
        let eps_hat = score.mul(sigma).neg();
        Ok(Forward { x0, xt, eps, eps_hat })
    }

    fn check_step(&self, t: usize) -> Result<()> {
        if (1..=self.ddpm.steps()).contains(&t) {
            Ok(())
        } else {
            Err(Error::invalid(
                "t",
                t,
                format!("DDPM steps run from 1 to T = {}", self.ddpm.steps()),
            ))
        }
    }
}

/// One forward evaluation of the chain and the model.
struct Forward<const D: usize> {
    x0: Tensor<D>,
    xt: Tensor<D>,
    eps: Tensor<D>,
    eps_hat: Tensor<D>,
}

impl<M: ScoreModel<D>, const D: usize> Objective<M, D> for EpsilonElbo {
    /// [`ElboLoss::Simple`]: per sample `‖ε − ε_θ‖²/d`; [`ElboLoss::Bound`]: per sample
    /// `L_T + T·L_{t−1}` in bits/dim; `t ~ U{1..T}` per sample from `rng`. Errors with
    /// [`Error::NonFinite`] on non-finite data, [`Error::ShapeMismatch`] if `x0` does not fit
    /// the model or the model's output has another shape than its input, and
    /// [`Error::DTypeMismatch`] if `x0` is not in the model's
    /// [`float_dtype`](ScoreModel::float_dtype) or the output has another dtype.
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput> {
        let b = x0.dims()[0];
        let steps: Vec<usize> = (0..b).map(|_| rng.random_range(1..=self.ddpm.steps())).collect();
        let level = NoiseLevel::at_times(
            &self.ddpm,
            &steps.iter().map(|&t| t as f64).collect::<Vec<_>>(),
            (&x0.device(), x0.dtype()),
        );
        let per_sample = match self.loss {
            ElboLoss::Simple => {
                let f = self.forward(model, x0, &steps, rng)?;
                let d = f.x0.dims()[1..].iter().product::<usize>() as f64;
                squared_norm(f.eps.sub(f.eps_hat)).div_scalar(d)
            }
            ElboLoss::Bound => {
                let prior = self.prior_term(x0.clone())?;
                let step = self.step_term(model, x0, &steps, rng)?;
                step.mul_scalar(self.ddpm.steps() as f64).add(prior)
            }
        };
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: Some(level) })
    }
}

/// `KL(N(μ_q, v_q) ‖ N(μ_p, v_p))` elementwise:
/// `½[ln(v_p/v_q) + v_q/v_p − 1 + (μ_q − μ_p)²/v_p]`, in nats.
pub fn gaussian_kl<const D: usize>(
    mean_q: Tensor<D>,
    var_q: Tensor<D>,
    mean_p: Tensor<D>,
    var_p: Tensor<D>,
) -> Tensor<D> {
    let ratio = var_q.div(var_p.clone());
    let mahalanobis = mean_q.sub(mean_p).square().div(var_p);
    ratio.clone().log().neg().add(ratio).add_scalar(-1.0).add(mahalanobis).mul_scalar(0.5)
}

/// `log P(x)` elementwise under the discretised Gaussian `N(μ, σ²)` on 256 bins of `[−1, 1]`:
///
/// ```text
/// P(x) = Φ((x + 1/255 − μ)/σ) − Φ((x − 1/255 − μ)/σ),   with Φ(−∞) at x = −1, Φ(+∞) at x = 1,
/// ```
///
/// (bin edges `x ± 1/255`, the end bins open to `±∞`), `Φ(z) = ½(1 + erf(z/√2))`, and
/// `log max(P, 1e-12)` so that a bin far in the tail contributes a large but finite cost (as in
/// DDPM). Values below `−1 + 1/255` or above `1 − 1/255` count as the end bins. `std`
/// broadcasts against `x`. With f32 tensors, probabilities below `~1e-6` lose relative
/// accuracy (the difference of two `Φ` near 1); use f64 tensors for exact evaluation.
pub fn discretized_gaussian_log_likelihood<const D: usize>(
    x: Tensor<D>,
    mean: Tensor<D>,
    std: Tensor<D>,
) -> Tensor<D> {
    let phi = |z: Tensor<D>| {
        z.mul_scalar(core::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5)
    };
    let inv = std.recip();
    let centered = x.clone().sub(mean);
    let upper = phi(centered.clone().add_scalar(HALF_BIN).mul(inv.clone()));
    let lower = phi(centered.sub_scalar(HALF_BIN).mul(inv));
    let upper = upper.mask_fill(x.clone().greater_scalar(1.0 - HALF_BIN), 1.0);
    let lower = lower.mask_fill(x.lower_scalar(-1.0 + HALF_BIN), 0.0);
    upper.sub(lower).clamp_min(1e-12).log()
}
