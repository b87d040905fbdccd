//! Denoising score matching (Vincent 2011) at one noise level, over a discrete set of levels
//! (NCSN, Song & Ermon 2019) or over continuous time (score SDE, Song et al. 2021).
//!
//! Perturb `xₜ = m·x₀ + σ·z`, `z ~ N(0, I)`; the score of the kernel is `−z/σ`, and
//!
//! ```text
//! ℓ(θ; t) = ½ λ(t) E‖s_θ(xₜ, t) + z/σ‖² = ½ (λ(t)/σ²) E‖σ·s_θ(xₜ, t) + z‖²
//! ```
//!
//! equals `½ λ E‖s_θ − ∇ log pₜ‖²` up to a θ-free constant, so its minimiser is the score of
//! the perturbed data. The second form is what is computed (`σ·s + z` is of unit order at
//! every level). The weighting `λ`:
//!
//! | [`Weighting`] | `λ(t)` | per-sample term |
//! | --- | --- | --- |
//! | `Unit` | 1 | `½‖s + z/σ‖²` (Vincent; default of [`DenoisingScoreMatching::single`]) |
//! | `Variance` | `σ²` | `½‖σ s + z‖²` (NCSN, score SDE default) |
//! | `Likelihood` | `g(t)²` | `½ (g²/σ²)‖σ s + z‖²` (bounds the NLL, Song et al. 2021) |
//! | `Edm` | `σ⁴·(σ² + σ_d²)/(σ·σ_d)²` | `½ (σ² + σ_d²)/σ_d²·‖σ s + z‖² = ½ λ_EDM‖D − x₀‖²` (Karras et al. 2022) |
//!
//! [`DenoisingScoreMatching::edm`] is EDM's training: `ln σ ~ N(P_mean, P_std²)` per sample
//! (no schedule: `t = σ`, `m = 1`, EDM's σ-parameterisation) with the `Edm` weighting, under
//! which the loss is half EDM's `λ(σ)‖D(x₀ + σz; σ) − x₀‖²`, `λ(σ) = (σ² + σ_d²)/(σ·σ_d)²`,
//! since `D − x₀ = σ²·s + σ·z = σ·(σ s + z)` for the denoiser `D = x + σ²·s`.
//!
//! The level of each sample is drawn on the host from the objective's `rng`
//! ([`LevelSampling`]): uniformly (an index of the discrete levels, or `t ~ U(t_min, t_max)`),
//! or by importance sampling with density `q ∝ λ/σ²`, the coefficient of the unit-order term,
//! with the term reweighted by `(uniform density)/q`, so the estimate stays unbiased and every
//! sample gets the same coefficient `mean(λ/σ²)`. For the likelihood weighting in continuous
//! time, `g²/σ² = d/dt ln(σ²/m²)` (from `(σ²)' = 2fσ² + g²` and `m' = f m`), so `t` is drawn
//! by inverting the log noise-to-signal ratio `ρ(t) = ln(σ²/m²)`: `ρ(t) ~ U(ρ(t_min), ρ(t_max))`,
//! and the coefficient is `(ρ(t_max) − ρ(t_min))/(t_max − t_min)`.
//!
//! Note the factor ½ (as NCSN); score_sde's losses omit it, which scales the loss by 2 and
//! changes nothing else.
//!
//! ```
//! use rand::SeedableRng;
//! use scorefield_core::analytic::GaussianMixture;
//! use scorefield_core::objective::{DenoisingScoreMatching, Objective};
//! use scorefield_core::schedule::GeometricSigmas;
//!
//! let device = scorefield_core::device("flex")?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.3, 0.3])?;
//! let x = data.sample(256, &device, &mut rng);
//! let ncsn = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
//! // The mixture is its own exact perturbed score: a model at the optimum.
//! let out = ncsn.loss(&data, x, &mut rng)?;
//! assert_eq!(out.per_sample.dims(), [256]);
//! let sigmas = out.level.expect("DSM reports the level of each sample").sigma;
//! assert_eq!(sigmas.dims(), [256]);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;

use burn::tensor::{Distribution as TensorDistribution, Tensor};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngCore};
use rand_distr::StandardNormal;

use super::exact::{check_data, host_column, squared_norm};
use super::{LossOutput, Objective};
use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::random::standard_normal;
use crate::schedule::NoiseSchedule;
use crate::score::{NoiseLevel, ScoreModel, check_batch, check_model, check_output, vector};

/// The weight `λ(t)` of each noise level in the denoising loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// `λ = 1`: `½‖s + z/σ‖²`.
    Unit,
    /// `λ = σ²`: `½‖σ s + z‖²`, every level of comparable magnitude (NCSN, score SDE).
    Variance,
    /// `λ = g(t)²`, the diffusion coefficient squared: the likelihood weighting, under which
    /// the continuous-time loss bounds the negative log-likelihood.
    Likelihood,
    /// EDM's `λ(σ)‖D − x₀‖²` with `λ = (σ² + σ_d²)/(σ·σ_d)²`: per sample
    /// `½ (σ² + σ_d²)/σ_d²·‖σ s + z‖²` (`σ_d` from [`DenoisingScoreMatching::edm`]).
    Edm,
}

/// How the noise level of each sample is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LevelSampling {
    /// A uniform index of the discrete levels, or `t ~ U(t_min, t_max)`.
    #[default]
    Uniform,
    /// Density `q ∝ λ/σ²`, term reweighted to stay unbiased (see the module docs). In
    /// continuous time available for [`Weighting::Likelihood`] (`t ∝ g²/σ²`) and
    /// [`Weighting::Variance`] (where it is uniform).
    Importance,
}

/// One discrete level: time, marginal and `g(t)²`.
#[derive(Debug, Clone, Copy)]
struct Level {
    t: f64,
    scale: f64,
    std: f64,
    g2: f64,
}

#[derive(Clone)]
enum Levels {
    Discrete(Vec<Level>),
    Continuous {
        schedule: Arc<dyn NoiseSchedule + Send + Sync>,
        range: (f64, f64),
    },
    /// `ln σ ~ N(p_mean, p_std²)`, `t = σ`, `m = 1`.
    LogNormal {
        p_mean: f64,
        p_std: f64,
    },
}

/// Denoising score matching: per sample `½ (λ/σ²)‖σ·s_θ(m·x₀ + σ·z, t) + z‖²` (times an
/// importance weight), with `t` drawn per sample; the loss is the batch mean.
#[derive(Clone)]
pub struct DenoisingScoreMatching {
    levels: Levels,
    weighting: Weighting,
    sampling: LevelSampling,
    sigma_data: f64,
    device_noise: bool,
}

impl DenoisingScoreMatching {
    /// One noise level `σ`, the perturbation `x̃ = x + σ z`, loss `½‖s(x̃, σ) + z/σ‖²`. The model
    /// sees the level `t = σ, m = 1, σ` (the Karras parameterisation `σ(t) = t`, where
    /// `g² = 2σ`). Errors with [`Error::InvalidParameter`] unless `σ > 0` and finite.
    pub fn single(sigma: f64) -> Result<Self> {
        ensure_positive("sigma", sigma)?;
        let level = Level { t: sigma, scale: 1.0, std: sigma, g2: 2.0 * sigma };
        Ok(Self {
            levels: Levels::Discrete(vec![level]),
            weighting: Weighting::Unit,
            sampling: LevelSampling::Uniform,
            device_noise: false,
            sigma_data: 0.5,
        })
    }

    /// NCSN's multi-scale loss over the `n` levels of `schedule.grid(n)` (e.g. a
    /// [`GeometricSigmas`](crate::schedule::GeometricSigmas) with `n` = its level count),
    /// `λ(σ) = σ²`, a uniform level index per sample. Errors as [`Self::at_times`] and
    /// [`NoiseSchedule::grid`].
    pub fn multi_scale<S: NoiseSchedule + ?Sized>(schedule: &S, n: usize) -> Result<Self> {
        Self::at_times(schedule, &schedule.grid(n)?)
    }

    /// The multi-scale loss over the levels of `schedule` at the given `times`, `λ = σ²`.
    /// Errors with [`Error::InvalidParameter`] if `times` is empty or a level has a
    /// non-finite time or marginal, or `σ(t) = 0`.
    pub fn at_times<S: NoiseSchedule + ?Sized>(schedule: &S, times: &[f64]) -> Result<Self> {
        if times.is_empty() {
            return Err(Error::invalid("times", "[]", "at least one noise level is needed"));
        }
        let levels = times.iter().map(|&t| level_of(schedule, t)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            levels: Levels::Discrete(levels),
            weighting: Weighting::Variance,
            sampling: LevelSampling::Uniform,
            device_noise: false,
            sigma_data: 0.5,
        })
    }

    /// The continuous-time loss of the score SDE: `t ~ U(t_min, t_max)` from
    /// [`NoiseSchedule::time_range`] (`t_min` is the schedule's `ε`), `λ = σ²`. Errors with
    /// [`Error::InvalidParameter`] if `σ(t_min) = 0` (give the schedule an `ε > 0`) or the
    /// range is empty.
    pub fn continuous<S: NoiseSchedule + Send + Sync + 'static>(schedule: S) -> Result<Self> {
        let (lo, hi) = schedule.time_range();
        level_of(&schedule, lo)?;
        level_of(&schedule, hi)?;
        crate::error::ensure_less("t_min", lo, "t_max", hi)?;
        Ok(Self {
            levels: Levels::Continuous { schedule: Arc::new(schedule), range: (lo, hi) },
            weighting: Weighting::Variance,
            sampling: LevelSampling::Uniform,
            device_noise: false,
            sigma_data: 0.5,
        })
    }

    /// EDM's training loss (Karras et al. 2022): `ln σ ~ N(P_mean, P_std²)` per sample, the
    /// model at `t = σ`, `m = 1` (the σ-parameterisation), and the [`Weighting::Edm`] of data
    /// with standard deviation `σ_data`. EDM: `P_mean = −1.2`, `P_std = 1.2`, `σ_data = 0.5`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `P_mean` is finite and `P_std`,
    /// `σ_data` are finite and `> 0`.
    pub fn edm(p_mean: f64, p_std: f64, sigma_data: f64) -> Result<Self> {
        ensure_finite("p_mean", p_mean)?;
        ensure_positive("p_std", p_std)?;
        ensure_positive("sigma_data", sigma_data)?;
        Ok(Self {
            levels: Levels::LogNormal { p_mean, p_std },
            weighting: Weighting::Edm,
            sampling: LevelSampling::Uniform,
            device_noise: false,
            sigma_data,
        })
    }

    /// The same loss with weighting `λ`.
    pub fn with_weighting(self, weighting: Weighting) -> Self {
        Self { weighting, ..self }
    }

    /// The same loss with the levels drawn by `sampling`.
    pub fn with_sampling(self, sampling: LevelSampling) -> Self {
        Self { sampling, ..self }
    }

    /// The same loss with the noise `z` drawn on the device (`true`) by the backend's own
    /// generator, seeded from the loss's `rng` (so a step stays a function of its seed on one
    /// backend), instead of on the host and uploaded (`false`, the default: the same numbers
    /// on every backend). For GPU training, where the host-side draw and the upload of a
    /// batch-sized tensor per step are what is saved; the levels are still drawn on the host
    /// (`B` numbers). Reseeds the device's generator ([`Device::seed`](burn::tensor::Device::seed))
    /// at every loss.
    pub fn with_device_noise(self, device_noise: bool) -> Self {
        Self { device_noise, ..self }
    }

    /// Whether the noise is drawn on the device ([`with_device_noise`](Self::with_device_noise)).
    pub fn device_noise(&self) -> bool {
        self.device_noise
    }

    /// The weighting `λ`.
    pub fn weighting(&self) -> Weighting {
        self.weighting
    }

    /// How levels are drawn.
    pub fn sampling(&self) -> LevelSampling {
        self.sampling
    }

    /// `λ/σ²` at a level.
    fn coefficient(&self, level: &Level) -> f64 {
        match self.weighting {
            Weighting::Unit => 1.0 / (level.std * level.std),
            Weighting::Variance => 1.0,
            Weighting::Likelihood => level.g2 / (level.std * level.std),
            Weighting::Edm => {
                let sd2 = self.sigma_data * self.sigma_data;
                (level.std * level.std + sd2) / sd2
            }
        }
    }

    /// Draws `b` levels and the coefficient of the unit-order term of each.
    fn draw(&self, b: usize, rng: &mut dyn RngCore) -> Result<Vec<(Level, f64)>> {
        match (&self.levels, self.sampling) {
            (Levels::Discrete(levels), LevelSampling::Uniform) => Ok((0..b)
                .map(|_| levels[rng.random_range(0..levels.len())])
                .map(|l| (l, self.coefficient(&l)))
                .collect()),
            (Levels::Discrete(levels), LevelSampling::Importance) => {
                let c: Vec<f64> = levels.iter().map(|l| self.coefficient(l)).collect();
                let mean = c.iter().sum::<f64>() / c.len() as f64;
                let pick = WeightedIndex::new(&c).map_err(|e| {
                    Error::invalid("weighting", format!("{:?}", self.weighting), e.to_string())
                })?;
                Ok((0..b).map(|_| (levels[pick.sample(rng)], mean)).collect())
            }
            (Levels::LogNormal { p_mean, p_std }, _) => Ok((0..b)
                .map(|_| {
                    let n: f64 = StandardNormal.sample(&mut *rng);
                    let sigma = (p_mean + p_std * n).exp();
                    let l = Level { t: sigma, scale: 1.0, std: sigma, g2: 2.0 * sigma };
                    (l, self.coefficient(&l))
                })
                .collect()),
            (Levels::Continuous { schedule, range: (lo, hi) }, sampling) => {
                let uniform = |rng: &mut dyn RngCore| lo + rng.random::<f64>() * (hi - lo);
                let importance = sampling == LevelSampling::Importance;
                match (importance, self.weighting) {
                    (false, _) | (true, Weighting::Variance) => (0..b)
                        .map(|_| {
                            let l = level_of(schedule.as_ref(), uniform(rng))?;
                            Ok((l, self.coefficient(&l)))
                        })
                        .collect(),
                    (true, Weighting::Likelihood) => {
                        let rho = |t: f64| log_noise_to_signal(schedule.as_ref(), t);
                        let (r_lo, r_hi) = (rho(*lo), rho(*hi));
                        if !(r_hi - r_lo).is_finite() {
                            return Err(Error::invalid(
                                "sampling",
                                "Importance",
                                "ln(σ²/m²) must be finite at both ends of the time range",
                            ));
                        }
                        let coefficient = (r_hi - r_lo) / (hi - lo);
                        (0..b)
                            .map(|_| {
                                let target = r_lo + rng.random::<f64>() * (r_hi - r_lo);
                                let t = invert_increasing(rho, target, *lo, *hi);
                                Ok((level_of(schedule.as_ref(), t)?, coefficient))
                            })
                            .collect()
                    }
                    (true, Weighting::Unit | Weighting::Edm) => Err(Error::invalid(
                        "sampling",
                        "Importance",
                        "continuous-time importance sampling needs Likelihood or Variance weighting",
                    )),
                }
            }
        }
    }
}

impl<M: ScoreModel<D>, const D: usize> Objective<M, D> for DenoisingScoreMatching {
    /// Per sample `½ c·‖σ·s_θ(m·x₀ + σ·z, t) + z‖²`, `c = λ/σ²` (or the importance-sampled
    /// coefficient); [`LossOutput::level`] holds each sample's level, in the dtype of `x0`.
    /// Errors with [`Error::NonFinite`] on non-finite data, [`Error::ShapeMismatch`] if `x0`
    /// does not fit the model or the model's output has another shape than its input, and
    /// [`Error::DTypeMismatch`] if `x0` is not in the model's
    /// [`float_dtype`](ScoreModel::float_dtype) or the output has another dtype.
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput> {
        const CONTEXT: &str = "DenoisingScoreMatching";
        check_data(CONTEXT, &x0)?;
        check_model(CONTEXT, model, &x0)?;
        let p = self.perturb(&x0, rng)?;
        check_batch(CONTEXT, &x0, model.sample_shape().as_deref(), &p.level)?;
        let score = model.score(p.x.clone(), &p.level);
        check_output(CONTEXT, &score, &p.x)?;
        let residual = score.mul(p.std).add(p.z);
        let per_sample = squared_norm(residual).mul(p.coef).mul_scalar(0.5);
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: Some(p.level) })
    }
}

/// A batch perturbed as denoising score matching perturbs it: `x = m·x₀ + σ·z`.
pub(crate) struct Perturbed<const D: usize> {
    /// The noisy batch.
    pub x: Tensor<D>,
    /// The standard normal noise `z`.
    pub z: Tensor<D>,
    /// Each sample's level.
    pub level: NoiseLevel,
    /// `σ` per sample, broadcastable against `x`.
    pub std: Tensor<D>,
    /// The per-sample loss coefficient `λ/σ²` (or its importance-sampled value), `[B]`.
    pub coef: Tensor<1>,
}

impl DenoisingScoreMatching {
    /// Draws a level per sample of `x0` and perturbs it (`x0` already checked finite).
    pub(crate) fn perturb<const D: usize>(
        &self,
        x0: &Tensor<D>,
        rng: &mut dyn RngCore,
    ) -> Result<Perturbed<D>> {
        let (dims, run) = (x0.dims(), (&x0.device(), x0.dtype()));
        let drawn = self.draw(dims[0], rng)?;
        let column = |f: fn(&(Level, f64)) -> f64| drawn.iter().map(f).collect::<Vec<f64>>();
        let (t, scale, std, coef) =
            (column(|l| l.0.t), column(|l| l.0.scale), column(|l| l.0.std), column(|l| l.1));
        let level =
            NoiseLevel { t: vector(&t, run), scale: vector(&scale, run), sigma: vector(&std, run) };
        let z = if self.device_noise {
            run.0.seed(rng.next_u64());
            Tensor::random(dims, TensorDistribution::Normal(0.0, 1.0), run)
        } else {
            standard_normal(dims, run, rng)
        };
        let std = host_column(&std, x0);
        let x = x0.clone().mul(host_column(&scale, x0)).add(z.clone().mul(std.clone()));
        let coef = host_column(&coef, x0).reshape([dims[0]]);
        Ok(Perturbed { x, z, level, std, coef })
    }
}

impl fmt::Debug for DenoisingScoreMatching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("DenoisingScoreMatching");
        match &self.levels {
            Levels::Discrete(levels) => {
                s.field("sigmas", &levels.iter().map(|l| l.std).collect::<Vec<_>>())
            }
            Levels::Continuous { range, .. } => s.field("continuous_time_range", range),
            Levels::LogNormal { p_mean, p_std } => {
                s.field("log_normal", &(p_mean, p_std)).field("sigma_data", &self.sigma_data)
            }
        };
        s.field("weighting", &self.weighting).field("sampling", &self.sampling);
        s.field("device_noise", &self.device_noise).finish()
    }
}

/// The level of `schedule` at `t`, validated: finite time and marginal, `σ > 0`.
fn level_of<S: NoiseSchedule + ?Sized>(schedule: &S, t: f64) -> Result<Level> {
    ensure_finite("t", t)?;
    let m = schedule.marginal(t);
    ensure_finite("scale", m.scale)?;
    if !(m.std > 0.0 && m.std.is_finite()) {
        return Err(Error::invalid("t", t, format!("σ(t) = {} must be finite and > 0", m.std)));
    }
    let g = schedule.diffusion(t);
    ensure_finite("g", g)?;
    Ok(Level { t, scale: m.scale, std: m.std, g2: g * g })
}

/// `ρ(t) = ln(σ(t)²/m(t)²)`, increasing in `t`, with `ρ' = g²/σ²`.
fn log_noise_to_signal<S: NoiseSchedule + ?Sized>(schedule: &S, t: f64) -> f64 {
    let m = schedule.marginal(t);
    2.0 * (m.std / m.scale).ln()
}

/// The `t ∈ [lo, hi]` with `f(t) = target` for increasing `f`, by bisection to f64 precision.
fn invert_increasing(f: impl Fn(f64) -> f64, target: f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < target { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}
