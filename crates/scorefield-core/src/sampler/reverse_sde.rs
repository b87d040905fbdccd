//! The reverse-time SDE (Anderson 1982) and predictor–corrector sampling (Song et al. 2021).
//!
//! For the forward SDE `dx = f(t)·x dt + g(t) dw` of a [`NoiseSchedule`], the reverse process
//!
//! ```text
//! dx = [f(t)·x − g(t)²·∇ log pₜ(x)] dt + g(t) dw̄
//! ```
//!
//! runs from the prior at `T` to `ε` (the schedule's `time_range()`: 1e-5 for VE, 1e-3 for
//! VP/sub-VP) on the grid `t₀ = T > t₁ > … > t_N = ε` (`grid(N + 1)`). Step `i` goes from
//! `t = tᵢ` to `t' = tᵢ₊₁` (`Δt = t' − t < 0`), `s = s(x, t)`, `z ~ N(0, I)`:
//!
//! ```text
//! corrector at t, then the predictor from t to t' (score_sde's order):
//! EulerMaruyama:     x ← x + [f(t)·x − g(t)²·s]·Δt + g(t)·√|Δt|·z
//! ReverseDiffusion:  x ← (2 − a)·x + G²·s + G·z,   from the forward step x_t = a·x_t' + G·z:
//!                    a = m(t)/m(t'),  G² = σ(t)² − a²·σ(t')²
//! Ancestral (VE, m = 1):       x ← x + (σ² − σ'²)·s + √(σ'²(σ² − σ'²)/σ²)·z
//! Ancestral (VP, m² + σ² = 1): x ← (x + β·s)/√(1 − β) + √β·z,   β = 1 − a²
//! ```
//!
//! `ReverseDiffusion` is the reversed forward discretisation of score_sde, taken exactly from
//! the schedule's marginals (for VE it is score_sde's `σᵢ² − σᵢ₋₁²`, for VP `βᵢ = 1 − a²`).
//! `Ancestral` is score_sde's `AncestralSamplingPredictor` (the DDPM / NCSN posterior step) and
//! needs a variance-exploding or variance-preserving schedule.
//!
//! Correctors (`α = a² = (m(t)/m(t'))²`, which is 1 for VE), each of `M` steps in score_sde's
//! form `x ← x + ε·s + √(2ε)·z` (the library's `x + (α_L/2)·s + √α_L·z` with `α_L = 2ε`):
//!
//! ```text
//! Langevin:          ε = 2α·(snr·‖z‖/‖s‖)²   (‖·‖ per sample, averaged over the batch)
//! AnnealedLangevin:  ε = 2α·(snr·σ(t))²       (NCSN's α_i ∝ σ_i²)
//! ```
//!
//! so that `‖ε·s‖/‖√(2ε)·z‖ = snr` (the signal-to-noise ratio of the step). score_sde uses
//! snr 0.16 (CIFAR-10, VE) and one corrector step. The norms are averaged over the batch as
//! in score_sde: per-sample ratios `‖z‖/‖s‖` are heavy-tailed in low dimensions and would give
//! single samples huge steps. With `denoise` the last predictor step returns its mean (no
//! noise).

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_positive};
use crate::sampler::grid::check_times;
use crate::sampler::{Driver, Grid, Node, Observer, Sampler, Step, StepContext, StepOutput};
use crate::schedule::NoiseSchedule;
use crate::score::ScoreModel;

/// The predictor: one step of the reverse SDE from `t` to `t' < t` (formulas in the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    /// `x ← x + [f(t)·x − g(t)²·s]·Δt + g(t)·√|Δt|·z`.
    EulerMaruyama,
    /// `x ← (2 − a)·x + G²·s + G·z` with `a = m(t)/m(t')`, `G² = σ(t)² − a²σ(t')²`.
    ReverseDiffusion,
    /// score_sde's ancestral sampling: `x ← x + (σ² − σ'²)·s + √(σ'²(σ² − σ'²)/σ²)·z` for a
    /// variance-exploding schedule (`m = 1`), `x ← (x + β·s)/√(1 − β) + √β·z` with
    /// `β = 1 − (m(t)/m(t'))²` for a variance-preserving one (`m² + σ² = 1`).
    Ancestral,
}

/// The corrector: Langevin steps `x ← x + ε·s(x, t) + √(2ε)·z` at the predictor's time `t`,
/// before each predictor step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corrector {
    /// No corrector: plain reverse-SDE sampling.
    None,
    /// score_sde's Langevin corrector, `ε = 2α·(snr·‖z‖/‖s‖)²`.
    Langevin {
        /// The signal-to-noise ratio `‖ε·s‖/‖√(2ε)·z‖`, `> 0` (score_sde: 0.16).
        snr: f64,
        /// Corrector steps per predictor step, `≥ 1`.
        steps: usize,
    },
    /// NCSN's annealed Langevin as a corrector, `ε = 2α·(snr·σ(t))²`.
    AnnealedLangevin {
        /// The signal-to-noise ratio, `> 0`.
        snr: f64,
        /// Corrector steps per predictor step, `≥ 1`.
        steps: usize,
    },
}

/// Whether the schedule on the grid is variance exploding or variance preserving (for the
/// ancestral predictor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Exploding,
    Preserving,
    Other,
}

impl Family {
    /// `Exploding` if `m(t) = 1` on the whole grid, `Preserving` if `m(t)² + σ(t)² = 1`.
    fn of<S: NoiseSchedule>(schedule: &S, times: &[f64]) -> Self {
        let marginals = times.iter().map(|&t| schedule.marginal(t));
        if marginals.clone().all(|m| (m.scale - 1.0).abs() <= 1e-12) {
            Family::Exploding
        } else if marginals.clone().all(|m| (m.scale.powi(2) + m.std.powi(2) - 1.0).abs() <= 1e-9) {
            Family::Preserving
        } else {
            Family::Other
        }
    }
}

/// Predictor–corrector sampling of the reverse SDE of `schedule` from `T` to `ε` in `N` steps
/// (see the module documentation for the formulas).
#[derive(Debug, Clone, PartialEq)]
pub struct ReverseSde<S> {
    schedule: S,
    predictor: Predictor,
    corrector: Corrector,
    times: Vec<f64>,
    denoise: bool,
    family: Family,
}

impl<S: NoiseSchedule> ReverseSde<S> {
    /// `steps = N` predictor steps on `schedule.grid(N + 1)`, each preceded by the corrector;
    /// the last step returns its mean (`denoise`, score_sde's default; see
    /// [`with_denoise`](Self::with_denoise)).
    ///
    /// Errors with [`Error::InvalidParameter`] if `steps = 0`, the schedule has no grid of
    /// `N + 1` points, a corrector has `snr ≤ 0` (or not finite) or `steps = 0`, or the
    /// predictor is [`Predictor::Ancestral`] and the schedule is neither variance exploding
    /// (`m = 1`) nor variance preserving (`m² + σ² = 1`) on the grid.
    pub fn new(
        schedule: S,
        predictor: Predictor,
        corrector: Corrector,
        steps: usize,
    ) -> Result<Self> {
        if steps == 0 {
            return Err(Error::invalid("steps", 0, "at least one step is needed"));
        }
        if let Corrector::Langevin { snr, steps } | Corrector::AnnealedLangevin { snr, steps } =
            corrector
        {
            ensure_positive("snr", snr)?;
            if steps == 0 {
                return Err(Error::invalid("corrector steps", 0, "use Corrector::None instead"));
            }
        }
        let times = schedule.grid(steps + 1)?;
        Grid::from_nodes(times.iter().map(|&t| Node::at(&schedule, t)).collect())?; // σ̃ ↓
        let family = Family::of(&schedule, &times);
        if predictor == Predictor::Ancestral && family == Family::Other {
            return Err(ancestral_needs_ve_or_vp());
        }
        Ok(Self { schedule, predictor, corrector, times, denoise: true, family })
    }

    /// The same sampler on the caller's times `t₀ > t₁ > … > t_N` instead of
    /// `schedule.grid(N + 1)` (`N` steps).
    ///
    /// Errors with [`Error::InvalidParameter`] for fewer than two times, a time that is not
    /// finite or outside the schedule's `time_range()`, times that do not strictly decrease,
    /// or (for [`Predictor::Ancestral`]) a schedule that is neither variance exploding nor
    /// variance preserving on them.
    pub fn with_times(self, times: &[f64]) -> Result<Self> {
        check_times(&self.schedule, times)?;
        let family = Family::of(&self.schedule, times);
        if self.predictor == Predictor::Ancestral && family == Family::Other {
            return Err(ancestral_needs_ve_or_vp());
        }
        Ok(Self { times: times.to_vec(), family, ..self })
    }

    /// The same sampler, returning the mean of the last predictor step (`true`) or the noisy
    /// state (`false`).
    pub fn with_denoise(self, denoise: bool) -> Self {
        Self { denoise, ..self }
    }

    /// The schedule.
    pub fn schedule(&self) -> &S {
        &self.schedule
    }

    /// The predictor.
    pub fn predictor(&self) -> Predictor {
        self.predictor
    }

    /// The corrector.
    pub fn corrector(&self) -> Corrector {
        self.corrector
    }

    /// The grid `T = t₀ > … > t_N = ε`.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Whether the last step returns its mean.
    pub fn denoise(&self) -> bool {
        self.denoise
    }

    /// The predictor's mean and noise scale for a step from `t` to `t2` with score `s`.
    fn predict<const D: usize>(
        &self,
        x: Tensor<D>,
        s: Tensor<D>,
        t: f64,
        t2: f64,
    ) -> (Tensor<D>, f64) {
        let (now, next) = (self.schedule.marginal(t), self.schedule.marginal(t2));
        let a = now.scale / next.scale; // x_t = a·x_t' + G·z
        let g2 = (now.std.powi(2) - a * a * next.std.powi(2)).max(0.0);
        match (self.predictor, self.family) {
            (Predictor::EulerMaruyama, _) => {
                let (f, g, dt) =
                    (self.schedule.drift_coefficient(t), self.schedule.diffusion(t), t2 - t);
                let drift = x.clone().mul_scalar(f) - s.mul_scalar(g * g); // f·x − g²·s
                (x + drift.mul_scalar(dt), g * (-dt).sqrt())
            }
            (Predictor::ReverseDiffusion, _) => {
                (x.mul_scalar(2.0 - a) + s.mul_scalar(g2), g2.sqrt())
            }
            (Predictor::Ancestral, Family::Exploding) => {
                let (var, var2) = (now.std.powi(2), next.std.powi(2));
                (x + s.mul_scalar(var - var2), (var2 * (var - var2) / var).sqrt())
            }
            (Predictor::Ancestral, _) => {
                let beta = 1.0 - a * a;
                ((x + s.mul_scalar(beta)).div_scalar((1.0 - beta).sqrt()), beta.sqrt())
            }
        }
    }

    /// The corrector's steps at node `node` (time `t`) on `x̃ = x/m`, with
    /// `α = (m(t)/m(t'))²`: `x ← x + ε·s + √(2ε)·z`, divided by `m`.
    fn correct<const D: usize>(
        &self,
        mut x: Tensor<D>,
        node: Node,
        alpha: f64,
        ctx: &mut StepContext<'_, D>,
    ) -> Result<Tensor<D>> {
        let (snr, steps) = match self.corrector {
            Corrector::None => return Ok(x),
            Corrector::Langevin { snr, steps } | Corrector::AnnealedLangevin { snr, steps } => {
                (snr, steps)
            }
        };
        let m = node.scale;
        for _ in 0..steps {
            let s = ctx.score(&x, node)?;
            let z = ctx.noise(&x)?;
            let eps = match self.corrector {
                Corrector::AnnealedLangevin { .. } => 2.0 * alpha * (snr * node.sigma).powi(2),
                _ => 2.0 * alpha * (snr * mean_norm(&z) / mean_norm(&s)).powi(2),
            };
            x = x + s.mul_scalar(eps / m) + z.mul_scalar((2.0 * eps).sqrt() / m); // (x + ε s + √(2ε) z)/m
        }
        Ok(x)
    }

    /// The driver that runs this sampler: its steps on the grid of its times (without a
    /// schedule of its own: the predictors read `f`, `g` and the marginals from
    /// [`schedule`](Self::schedule)).
    pub fn driver(&self) -> Result<Driver<&Self>> {
        let nodes = self.times.iter().map(|&t| Node::at(&self.schedule, t)).collect();
        Ok(Driver::new(self, Grid::from_nodes(nodes)?))
    }
}

/// Step `i`, from `t = tᵢ` to `t' = tᵢ₊₁`: the corrector at `t`, then the predictor, on
/// `x = m(t)·x̃`; the state returned is `x'/m(t')`. The last step returns the predictor's
/// mean if [`denoise`](ReverseSde::denoise) is set.
impl<S: NoiseSchedule, const D: usize> Step<D> for ReverseSde<S> {
    type State = ();

    fn name(&self) -> &'static str {
        "reverse SDE"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _: &mut (),
    ) -> Result<StepOutput<D>> {
        let (node, next) = (ctx.node(i), ctx.node(i + 1));
        let alpha = (node.scale / next.scale).powi(2);
        let x = self.correct(x, node, alpha, ctx)?;
        let s = ctx.score(&x, node)?;
        let denoised = x.clone() + s.clone().mul_scalar(node.sigma * node.sigma / node.scale);
        let (mean, std) =
            self.predict(x.mul_scalar(node.scale), s, self.times[i], self.times[i + 1]);
        let x = if self.denoise && i + 1 == self.times.len() - 1 {
            mean
        } else {
            let z = ctx.noise(&mean)?;
            mean + z.mul_scalar(std)
        };
        Ok(StepOutput { x: x.div_scalar(next.scale), denoised })
    }
}

impl<S: NoiseSchedule, M: ScoreModel<D>, const D: usize> Sampler<M, D> for ReverseSde<S> {
    /// Runs the `N` corrector + predictor steps from `init` (a prior sample at `T`) on
    /// [`ReverseSde::driver`]; step `i` is reported with the time `tᵢ₊₁` it ends at.
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

fn ancestral_needs_ve_or_vp() -> Error {
    let reason = "needs a variance-exploding (m = 1) or variance-preserving (m² + σ² = 1) schedule";
    Error::invalid("predictor", "Ancestral", reason)
}

/// `mean_b ‖x_b‖`: the Euclidean norm of each sample of a batch, averaged over the batch.
fn mean_norm<const D: usize>(x: &Tensor<D>) -> f64 {
    let dims = x.dims();
    let n: usize = dims[1..].iter().product();
    x.clone().reshape([dims[0], n]).square().sum_dim(1).sqrt().mean().into_scalar::<f64>()
}
