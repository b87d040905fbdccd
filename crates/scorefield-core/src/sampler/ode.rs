//! The probability-flow ODE (Song et al. 2021): the deterministic process with the same
//! marginals `pₜ` as the forward SDE `dx = f(t)·x dt + g(t) dw`,
//!
//! ```text
//! dx/dt = f̃(x, t) = f(t)·x − ½ g(t)² s(x, t),     s(x, t) ≈ ∇ₓ log pₜ(x),
//! ```
//!
//! integrated from `T` to `ε` to sample (prior → data) and from `ε` to `T` to encode
//! (data → prior latent). The map is deterministic and invertible: no randomness is drawn.
//!
//! Solvers ([`OdeSolver`]), with `h` the signed step and `F(t, y)` the right-hand side:
//!
//! ```text
//! Euler:  y ← y + h F(t, y)                                              order 1, 1 eval/step
//! Heun:   k₁ = F(t, y),  k₂ = F(t + h, y + h k₁),  y ← y + h/2 (k₁ + k₂)  order 2, 2 evals/step
//! RK4:    k₁ = F(t, y),  k₂ = F(t + h/2, y + h/2 k₁),  k₃ = F(t + h/2, y + h/2 k₂),
//!         k₄ = F(t + h, y + h k₃),  y ← y + h/6 (k₁ + 2k₂ + 2k₃ + k₄)     order 4, 4 evals/step
//! Dormand–Prince 5(4): adaptive, 6 evals/step (first-same-as-last), see OdeSolver::DormandPrince
//! ```
//!
//! The fixed-step solvers step along the schedule's own grid ([`NoiseSchedule::grid`]), so a
//! schedule decides where the steps go, or along the caller's times
//! ([`ProbabilityFlow::with_times`]); sampling with them is a [`Step`] on the shared
//! [`Driver`] ([`ProbabilityFlow::driver`]), like every other sampler's. Dormand–Prince
//! chooses its steps by error control,
//! as score_sde does with `scipy.integrate.solve_ivp(method="RK45")`. Within a step the
//! schedule's `f` and `g` are read strictly inside the step (one-sided limits at its ends), so
//! a rate that jumps on the grid, as DDPM's does at its integer steps, costs no accuracy.
//! Encoding (either solver), Dormand–Prince sampling and the likelihood
//! ([`log_likelihood`](crate::likelihood::log_likelihood)) run the integrators of this module
//! directly: they run both ways or on an augmented state, which a one-way grid of `x` does not
//! fit.
//!
//! ```
//! use rand::SeedableRng;
//! use rand::rngs::StdRng;
//! use scorefield_core::analytic::Gaussian;
//! use scorefield_core::sampler::{OdeSolver, ProbabilityFlow};
//! use scorefield_core::schedule::VpSde;
//! use scorefield_core::NoiseSchedule;
//!
//! let device = scorefield_core::device("flex")?;
//! let data = Gaussian::isotropic(&[1.0, -1.0], 0.5)?; // exact score under any schedule
//! let vp = VpSde::new(0.1, 20.0)?;
//! let flow = ProbabilityFlow::new(vp, OdeSolver::default())?; // RK45, rtol = atol = 1e-5
//! let x_t = vp.prior_sample([16, 2], &device, &mut StdRng::seed_from_u64(0));
//! let (x0, stats) = flow.sample_with_stats(&data, x_t.clone(), &mut ())?;
//! let latent = flow.encode(&data, x0, &mut ())?; // and back: x_T again
//! assert!(latent.sub(x_t).abs().max().into_scalar::<f32>() < 1e-3);
//! assert!(stats.score_evaluations > 0);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use core::ops::ControlFlow;

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_positive};
use crate::sampler::grid::check_times;
use crate::sampler::{
    Driver, Grid, Node, NoiseSource, Observer, SampleStep, Sampler, Step, StepContext, StepOutput,
    check_finite,
};
use crate::schedule::NoiseSchedule;
use crate::score::{NoiseLevel, ScoreModel, check_batch, check_output};

/// How the probability-flow ODE is integrated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OdeSolver {
    /// Explicit Euler on `steps + 1` grid points: `y ← y + h F(t, y)`; global error `O(h)`.
    Euler {
        /// The number of steps (`≥ 1`).
        steps: usize,
    },
    /// Heun's method (explicit trapezoid): `k₁ = F(t, y)`, `k₂ = F(t + h, y + h k₁)`,
    /// `y ← y + h/2 (k₁ + k₂)`; global error `O(h²)`.
    Heun {
        /// The number of steps (`≥ 1`).
        steps: usize,
    },
    /// The classic fourth-order Runge–Kutta method,
    /// `y ← y + h/6 (k₁ + 2k₂ + 2k₃ + k₄)`; global error `O(h⁴)`.
    Rk4 {
        /// The number of steps (`≥ 1`).
        steps: usize,
    },
    /// The adaptive Dormand–Prince 5(4) pair (RK45) with local extrapolation:
    /// `y ← y + h Σᵢ bᵢ kᵢ` (fifth order), error estimate `e = h Σᵢ (bᵢ − b̂ᵢ) kᵢ` against the
    /// embedded fourth-order solution. A step is accepted when
    /// `‖e / (atol + rtol·max(|y|, |y_new|))‖_RMS ≤ 1` (the RMS over every element of the
    /// batch, which shares one step size), and the next step is
    /// `h · clamp(0.9 · err^(−1/5), 0.2, 10)`. Defaults as score_sde: `rtol = atol = 1e-5`.
    DormandPrince {
        /// Relative tolerance (`> 0`).
        rtol: f64,
        /// Absolute tolerance (`> 0`).
        atol: f64,
        /// The most step attempts (accepted and rejected) before giving up (`≥ 1`).
        max_steps: usize,
        /// The first step size `|h₀|` (`> 0`); `None` chooses it with the standard
        /// heuristic of Hairer, Nørsett & Wanner (one extra evaluation).
        initial_step: Option<f64>,
    },
}

impl OdeSolver {
    /// Dormand–Prince with the given tolerances, `max_steps = 10 000` and an automatic first
    /// step.
    pub fn dormand_prince(rtol: f64, atol: f64) -> Self {
        OdeSolver::DormandPrince { rtol, atol, max_steps: 10_000, initial_step: None }
    }

    /// Checks the solver's parameters: `steps ≥ 1`; `rtol`, `atol`, `initial_step` finite and
    /// positive and `max_steps ≥ 1`. Errors with [`Error::InvalidParameter`].
    pub fn validate(&self) -> Result<()> {
        match *self {
            OdeSolver::Euler { steps } | OdeSolver::Heun { steps } | OdeSolver::Rk4 { steps } => {
                if steps == 0 {
                    return Err(Error::invalid("steps", steps, "an ODE solver needs ≥ 1 step"));
                }
            }
            OdeSolver::DormandPrince { rtol, atol, max_steps, initial_step } => {
                ensure_positive("rtol", rtol)?;
                ensure_positive("atol", atol)?;
                if max_steps == 0 {
                    return Err(Error::invalid("max_steps", max_steps, "must be ≥ 1"));
                }
                if let Some(h) = initial_step {
                    ensure_positive("initial_step", h)?;
                }
            }
        }
        Ok(())
    }
}

/// Dormand–Prince with score_sde's tolerances `rtol = atol = 1e-5`.
impl Default for OdeSolver {
    fn default() -> Self {
        OdeSolver::dormand_prince(1e-5, 1e-5)
    }
}

/// What one ODE solve cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SolveStats {
    /// The number of evaluations of the right-hand side, i.e. of calls to the score model
    /// (each on the whole batch).
    pub score_evaluations: usize,
    /// The number of accepted steps.
    pub steps: usize,
    /// The number of rejected steps (Dormand–Prince only).
    pub rejected_steps: usize,
}

/// The probability-flow ODE sampler `dx/dt = f(t)·x − ½ g(t)² s(x, t)` of a schedule,
/// integrated by `solver` from `T` to `ε` ([`Sampler::sample`]) or from `ε` to `T`
/// ([`encode`](Self::encode)).
///
/// Deterministic: the `rng` of [`Sampler::sample`] is never used.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilityFlow<S> {
    schedule: S,
    solver: OdeSolver,
    /// The caller's grid `t₀ > … > t_N` of a fixed-step solver; `None`: the schedule's.
    times: Option<Vec<f64>>,
}

impl<S: NoiseSchedule> ProbabilityFlow<S> {
    /// The probability-flow sampler of `schedule`; a fixed-step solver steps along
    /// `schedule.grid(steps + 1)`. Errors if the solver's parameters are invalid (see
    /// [`OdeSolver::validate`]).
    pub fn new(schedule: S, solver: OdeSolver) -> Result<Self> {
        solver.validate()?;
        Ok(ProbabilityFlow { schedule, solver, times: None })
    }

    /// The same fixed-step sampler on the caller's times `t₀ > t₁ > … > t_N` (sampling runs
    /// from `t₀` to `t_N`, encoding back; `N` steps, whatever the solver's `steps` said).
    ///
    /// Errors with [`Error::InvalidParameter`] for Dormand–Prince (it chooses its own steps),
    /// fewer than two times, a time that is not finite or outside the schedule's
    /// `time_range()`, or times that do not strictly decrease.
    pub fn with_times(self, times: &[f64]) -> Result<Self> {
        let steps = times.len().saturating_sub(1);
        let solver = match self.solver {
            OdeSolver::Euler { .. } => OdeSolver::Euler { steps },
            OdeSolver::Heun { .. } => OdeSolver::Heun { steps },
            OdeSolver::Rk4 { .. } => OdeSolver::Rk4 { steps },
            OdeSolver::DormandPrince { .. } => {
                let reason = "is adaptive and chooses its own steps; a time grid is for \
                              Euler, Heun and RK4";
                return Err(Error::invalid("solver", "Dormand–Prince", reason));
            }
        };
        check_times(&self.schedule, times)?;
        Ok(ProbabilityFlow { solver, times: Some(times.to_vec()), ..self })
    }

    /// The noise schedule, which gives `f(t)`, `g(t)`, the time range `[ε, T]` and the grid
    /// of the fixed-step solvers.
    pub fn schedule(&self) -> &S {
        &self.schedule
    }

    /// The ODE solver.
    pub fn solver(&self) -> OdeSolver {
        self.solver
    }

    /// The times `t₀ = T > … > t_N` a fixed-step solver steps along: the caller's
    /// ([`with_times`](Self::with_times)) or `schedule.grid(steps + 1)`.
    ///
    /// Errors with [`Error::InvalidParameter`] for Dormand–Prince, which has no fixed grid,
    /// and whatever [`NoiseSchedule::grid`] returns.
    pub fn times(&self) -> Result<Vec<f64>> {
        match (self.solver, &self.times) {
            (OdeSolver::DormandPrince { .. }, _) => {
                let reason = "is adaptive: its steps are chosen during the solve";
                Err(Error::invalid("solver", "Dormand–Prince", reason))
            }
            (_, Some(times)) => Ok(times.clone()),
            (
                OdeSolver::Euler { steps } | OdeSolver::Heun { steps } | OdeSolver::Rk4 { steps },
                _,
            ) => {
                self.solver.validate()?;
                self.schedule.grid(steps + 1)
            }
        }
    }

    /// The driver that samples with a fixed-step solver: this sampler's [`Step`] on the grid
    /// of [`times`](Self::times).
    ///
    /// Errors as [`times`](Self::times).
    pub fn driver(&self) -> Result<Driver<&Self>> {
        let nodes = self.times()?.iter().map(|&t| Node::at(&self.schedule, t)).collect();
        Ok(Driver::new(self, Grid::from_nodes(nodes)?))
    }

    /// The ODE's velocity `f̃(x, t) = f(t)·x − ½ g(t)² s(x, t)` at one time for a batch `x`.
    /// Errors with [`Error::ShapeMismatch`] if the model returns a score of another shape.
    pub fn velocity<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x: Tensor<D>,
        t: f64,
    ) -> Result<Tensor<D>> {
        self.velocity_at(model, x, Stage { t, coefficient_t: t })
    }

    fn velocity_at<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x: Tensor<D>,
        at: Stage,
    ) -> Result<Tensor<D>> {
        let level =
            NoiseLevel::constant(&self.schedule, at.t, x.dims()[0], (&x.device(), x.dtype()));
        let score = model.score(x.clone(), &level);
        check_output("score model output", &score, &x)?;
        Ok(velocity_from_score(&self.schedule, x, score, at.coefficient_t))
    }

    /// Integrates from `T` to `ε`: `x_T` (shape `[B, ...]`, usually a prior sample) to
    /// `x_ε`, reporting each accepted step to `observer`, and returns what the solve cost.
    ///
    /// For Dormand–Prince the step count is not known in advance: each [`SampleStep::total`]
    /// is an estimate, the steps taken plus the remaining time over the current step size.
    /// Errors with [`Error::InvalidParameter`] for an invalid solver, [`Error::SolverFailed`]
    /// when Dormand–Prince runs out of `max_steps` or its step underflows, [`Error::ShapeMismatch`] for an empty batch, one the model does not accept
    /// or a score of the wrong shape, and [`Error::NonFinite`] for a non-finite `x_T` or
    /// state; an observer's error stops the solve and is returned.
    pub fn sample_with_stats<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x_t: Tensor<D>,
        observer: &mut dyn Observer<D>,
    ) -> Result<(Tensor<D>, SolveStats)> {
        self.solve(model, x_t, Direction::ToData, observer)
    }

    /// Integrates from `ε` to `T`: data `x₀` (taken as the state at `t = ε`, shape `[B, ...]`)
    /// to its prior latent `x_T`, the inverse of [`Sampler::sample`] up to solver error.
    pub fn encode<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        Ok(self.encode_with_stats(model, x0, observer)?.0)
    }

    /// [`encode`](Self::encode), also returning what the solve cost.
    pub fn encode_with_stats<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        observer: &mut dyn Observer<D>,
    ) -> Result<(Tensor<D>, SolveStats)> {
        self.solve(model, x0, Direction::ToPrior, observer)
    }

    fn solve<M: ScoreModel<D>, const D: usize>(
        &self,
        model: &M,
        x: Tensor<D>,
        direction: Direction,
        observer: &mut dyn Observer<D>,
    ) -> Result<(Tensor<D>, SolveStats)> {
        self.solver.validate()?;
        check_input(model.sample_shape().as_deref(), &x, &self.schedule, "probability flow")?;
        let fixed = !matches!(self.solver, OdeSolver::DormandPrince { .. });
        if fixed && direction == Direction::ToData {
            let out = self.driver()?.run(model, x, &mut Deterministic, observer)?;
            let stats = SolveStats {
                score_evaluations: out.evaluations,
                steps: out.steps,
                rejected_steps: 0,
            };
            return Ok((out.x, stats));
        }
        let times = if fixed { Some(self.times()?) } else { None };
        let shape = x.dims();
        let [b, n] = flat_dims(&shape);
        let rhs = |at: Stage, y: Tensor<2>| -> Result<Tensor<2>> {
            Ok(self.velocity_at(model, y.reshape(shape), at)?.reshape([b, n]))
        };
        let on_step = |step: usize, total: usize, t: f64, y: &Tensor<2>| {
            let x = y.clone().reshape(shape);
            let sigma = self.schedule.marginal(t).std;
            observer.on_step(&SampleStep { step, total, t, sigma, x: &x, denoised: None })
        };
        let (y, stats) = integrate(
            &self.solver,
            &self.schedule,
            times.as_deref(),
            direction,
            x.reshape([b, n]),
            rhs,
            on_step,
        )?;
        Ok((y.reshape(shape), stats))
    }
}

/// Step `i` of a fixed-step solver, from `t = tᵢ` to `tᵢ₊₁` (`h = tᵢ₊₁ − tᵢ < 0`), on
/// `x = m(t)·x̃`: one Euler, Heun or RK4 step of `dx/dt = f(t)·x − ½ g(t)² s(x, t)` (the
/// formulas in the module documentation), the first stage's score giving the denoised
/// estimate `x̂₀ = (x + σ²·s)/m`. Dormand–Prince is no step: it errors here.
impl<S: NoiseSchedule, const D: usize> Step<D> for ProbabilityFlow<S> {
    type State = ();

    fn name(&self) -> &'static str {
        "probability-flow ODE"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _: &mut (),
    ) -> Result<StepOutput<D>> {
        let (node, next) = (ctx.node(i), ctx.node(i + 1));
        let (t, h) = (node.t, next.t - node.t);
        let s = ctx.score(&x, node)?;
        let denoised = x.clone() + s.clone().mul_scalar(node.sigma * node.sigma / node.scale);
        let y = x.mul_scalar(node.scale);
        let k1 = velocity_from_score(
            &self.schedule,
            y.clone(),
            s,
            Stage::of_step(t, h, 0.0).coefficient_t,
        );
        let mut f = |at: Stage, y: Tensor<D>| -> Result<Tensor<D>> {
            let stage = Node::at(&self.schedule, at.t);
            let s = ctx.score(&y.clone().div_scalar(stage.scale), stage)?;
            Ok(velocity_from_score(&self.schedule, y, s, at.coefficient_t))
        };
        let y = fixed_step(&self.solver, &mut f, t, h, y, k1)?;
        Ok(StepOutput { x: y.div_scalar(next.scale), denoised })
    }
}

/// The noise source of a deterministic solve: the probability-flow step draws none.
struct Deterministic;

impl<const D: usize> NoiseSource<D> for Deterministic {
    fn standard_normal(&mut self, _like: &Tensor<D>) -> Result<Tensor<D>> {
        let reason = "the probability-flow ODE is deterministic";
        Err(Error::invalid("noise", "requested", reason))
    }
}

impl<M: ScoreModel<D>, S: NoiseSchedule, const D: usize> Sampler<M, D> for ProbabilityFlow<S> {
    /// Integrates the probability-flow ODE from `T` to `ε` (a fixed-step solver on
    /// [`ProbabilityFlow::driver`]); `rng` is not used.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        _rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        Ok(self.sample_with_stats(model, init, observer)?.0)
    }
}

/// `f(t)·x − ½ g(t)² s`, the coefficients read at `t`.
pub(crate) fn velocity_from_score<S: NoiseSchedule, const D: usize>(
    schedule: &S,
    x: Tensor<D>,
    score: Tensor<D>,
    t: f64,
) -> Tensor<D> {
    let g = schedule.diffusion(t);
    x.mul_scalar(schedule.drift_coefficient(t)).sub(score.mul_scalar(0.5 * g * g))
}

/// Checks an ODE's initial state: a non-empty batch, of the model's sample shape, finite.
pub(crate) fn check_input<S: NoiseSchedule, const D: usize>(
    sample_shape: Option<&[usize]>,
    x: &Tensor<D>,
    schedule: &S,
    context: &'static str,
) -> Result<()> {
    let dims = x.dims();
    if dims.contains(&0) {
        return Err(Error::ShapeMismatch {
            context,
            expected: "a non-empty batch [B, ...]".into(),
            got: format!("{dims:?}"),
        });
    }
    let level =
        NoiseLevel::constant(schedule, schedule.time_range().1, dims[0], (&x.device(), x.dtype()));
    check_batch(context, x, sample_shape, &level)?;
    check_finite(x, || format!("{context}: initial state"))
}

/// `[B, numel / B]` for a batch shape `[B, ...]`.
pub(crate) fn flat_dims<const D: usize>(shape: &[usize; D]) -> [usize; 2] {
    [shape[0], shape[1..].iter().product()]
}

/// Which way the ODE runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From `T` to `ε` (sampling).
    ToData,
    /// From `ε` to `T` (encoding, likelihood).
    ToPrior,
}

/// Where a solver evaluates the right-hand side: the stage time `t`, at which the model is
/// evaluated, and `coefficient_t`, at which the schedule's `f` and `g` are read: `t` moved
/// strictly inside the current step, so that at a step's ends the coefficients are the
/// one-sided limits from inside the step. Piecewise-constant rates whose jumps sit on the
/// solver's grid (DDPM's, on its integer steps) are then integrated as if they were smooth;
/// for continuous coefficients the shift (`1e-9` of a step) is immaterial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stage {
    /// The stage time.
    pub t: f64,
    /// The time the schedule's coefficients are read at.
    pub coefficient_t: f64,
}

impl Stage {
    /// The stage `t + c·h` of the step from `t` to `t + h`.
    fn of_step(t: f64, h: f64, c: f64) -> Self {
        let (lo, hi) = if h < 0.0 { (t + h, t) } else { (t, t + h) };
        let inset = 1e-9 * h.abs();
        let at = t + c * h;
        Stage { t: at, coefficient_t: at.clamp(lo + inset, hi - inset) }
    }
}

/// Integrates `dy/dt = rhs(stage, y)` for a flattened batch `y` (shape `[B, n]`) across the
/// schedule's time range in `direction`, calling `on_step(step, total, t, y)` after every
/// accepted step and checking that the state stays finite. A fixed-step solver steps along
/// `times` (largest first; reversed to encode), or `schedule.grid(steps + 1)` if `None`.
pub(crate) fn integrate<S, F, O>(
    solver: &OdeSolver,
    schedule: &S,
    times: Option<&[f64]>,
    direction: Direction,
    y0: Tensor<2>,
    mut rhs: F,
    mut on_step: O,
) -> Result<(Tensor<2>, SolveStats)>
where
    S: NoiseSchedule,
    F: FnMut(Stage, Tensor<2>) -> Result<Tensor<2>>,
    O: FnMut(usize, usize, f64, &Tensor<2>) -> ControlFlow<()>,
{
    let mut stats = SolveStats::default();
    let mut f = |at: Stage, y: Tensor<2>| {
        stats.score_evaluations += 1;
        rhs(at, y)
    };
    let steps = match *solver {
        OdeSolver::Euler { steps } | OdeSolver::Heun { steps } | OdeSolver::Rk4 { steps } => steps,
        OdeSolver::DormandPrince { rtol, atol, max_steps, initial_step } => {
            let (eps, t_max) = schedule.time_range();
            let (t0, t1) = match direction {
                Direction::ToData => (t_max, eps),
                Direction::ToPrior => (eps, t_max),
            };
            let tol = Tolerance { rtol, atol };
            let control = StepControl { max_steps, initial_step };
            let (y, steps, rejected) =
                dormand_prince(&mut f, &mut on_step, y0, t0, t1, tol, control)?;
            stats.steps = steps;
            stats.rejected_steps = rejected;
            return Ok((y, stats));
        }
    };
    if steps == 0 {
        return Err(Error::invalid("steps", steps, "an ODE solver needs ≥ 1 step"));
    }
    let mut grid = match times {
        Some(times) => times.to_vec(),
        None => schedule.grid(steps + 1)?,
    };
    let steps = grid.len() - 1;
    if direction == Direction::ToPrior {
        grid.reverse();
    }
    let mut y = y0;
    for (i, w) in grid.windows(2).enumerate() {
        let (t, h) = (w[0], w[1] - w[0]);
        let k1 = f(Stage::of_step(t, h, 0.0), y.clone())?;
        y = fixed_step(solver, &mut f, t, h, y, k1)?;
        check_finite(&y, || format!("probability-flow ODE step {i} (t = {})", w[1]))?;
        if on_step(i, steps, w[1], &y).is_break() {
            stats.steps = i + 1;
            return Ok((y, stats));
        }
    }
    stats.steps = steps;
    Ok((y, stats))
}

/// `y + h Σ cᵢ kᵢ`, skipping zero coefficients.
fn combine<const D: usize>(y: &Tensor<D>, h: f64, terms: &[(f64, &Tensor<D>)]) -> Tensor<D> {
    terms
        .iter()
        .filter(|(c, _)| *c != 0.0)
        .fold(y.clone(), |acc, (c, k)| acc.add((*k).clone().mul_scalar(h * c)))
}

/// One Euler, Heun or RK4 step of `dy/dt = F(t, y)` from `t` to `t + h`, given
/// `k₁ = F(t, y)`. Errors with [`Error::InvalidParameter`] for Dormand–Prince, which is not a
/// fixed-step solver.
fn fixed_step<F, const D: usize>(
    solver: &OdeSolver,
    f: &mut F,
    t: f64,
    h: f64,
    y: Tensor<D>,
    k1: Tensor<D>,
) -> Result<Tensor<D>>
where
    F: FnMut(Stage, Tensor<D>) -> Result<Tensor<D>>,
{
    let at = |c: f64| Stage::of_step(t, h, c);
    match solver {
        OdeSolver::Euler { .. } => Ok(combine(&y, h, &[(1.0, &k1)])),
        OdeSolver::Heun { .. } => {
            let k2 = f(at(1.0), combine(&y, h, &[(1.0, &k1)]))?;
            Ok(combine(&y, h, &[(0.5, &k1), (0.5, &k2)]))
        }
        OdeSolver::Rk4 { .. } => {
            let k2 = f(at(0.5), combine(&y, h, &[(0.5, &k1)]))?;
            let k3 = f(at(0.5), combine(&y, h, &[(0.5, &k2)]))?;
            let k4 = f(at(1.0), combine(&y, h, &[(1.0, &k3)]))?;
            let w = [(1.0 / 6.0, &k1), (1.0 / 3.0, &k2), (1.0 / 3.0, &k3), (1.0 / 6.0, &k4)];
            Ok(combine(&y, h, &w))
        }
        OdeSolver::DormandPrince { .. } => {
            let reason = "is adaptive: it has no fixed step";
            Err(Error::invalid("solver", "Dormand–Prince", reason))
        }
    }
}

/// The Dormand–Prince nodes `cᵢ`.
const DP_C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
/// The Dormand–Prince coupling coefficients `aᵢⱼ` (row `i` has `i` entries); the last row is
/// also the fifth-order weights `bᵢ`, which is what makes the method first-same-as-last.
const DP_A: [&[f64]; 7] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
    &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
/// `bᵢ − b̂ᵢ`: fifth-order minus embedded fourth-order weights.
const DP_E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

#[derive(Debug, Clone, Copy)]
struct Tolerance {
    rtol: f64,
    atol: f64,
}

impl Tolerance {
    /// `‖v / (atol + rtol·|y|)‖_RMS`, with `y` the elementwise larger magnitude of the given
    /// states.
    fn norm(&self, v: Tensor<2>, y: &Tensor<2>, y_new: Option<&Tensor<2>>) -> f64 {
        let mut size = y.clone().abs();
        if let Some(y_new) = y_new {
            size = size.max_pair(y_new.clone().abs());
        }
        let scaled = v.div(size.mul_scalar(self.rtol).add_scalar(self.atol));
        scaled.square().mean().into_scalar::<f64>().sqrt()
    }
}

#[derive(Debug, Clone, Copy)]
struct StepControl {
    max_steps: usize,
    initial_step: Option<f64>,
}

/// Adaptive Dormand–Prince 5(4) from `t0` to `t1` (either direction). Returns the final state
/// and the numbers of accepted and rejected steps.
fn dormand_prince<F, O>(
    f: &mut F,
    on_step: &mut O,
    y0: Tensor<2>,
    t0: f64,
    t1: f64,
    tol: Tolerance,
    control: StepControl,
) -> Result<(Tensor<2>, usize, usize)>
where
    F: FnMut(Stage, Tensor<2>) -> Result<Tensor<2>>,
    O: FnMut(usize, usize, f64, &Tensor<2>) -> ControlFlow<()>,
{
    let dir = (t1 - t0).signum();
    let span = (t1 - t0).abs();
    let (mut t, mut y) = (t0, y0);
    let mut k1 = f(Stage::of_step(t0, t1 - t0, 0.0), y.clone())?;
    let mut h = match control.initial_step {
        Some(h) => h,
        None => initial_step(f, &tol, t, dir, span, &y, &k1)?,
    }
    .min(span);
    let (mut accepted, mut rejected) = (0, 0);
    while (t1 - t) * dir > 0.0 {
        if accepted + rejected >= control.max_steps {
            return Err(Error::SolverFailed {
                solver: "Dormand–Prince",
                reason: format!(
                    "ran out of its {} steps at t = {t} on its way to {t1}",
                    control.max_steps
                ),
            });
        }
        let last = h >= (t1 - t).abs();
        let hs = if last { t1 - t } else { dir * h };
        let mut k = vec![k1.clone()];
        let mut y_new = y.clone();
        for i in 1..7 {
            let terms: Vec<(f64, &Tensor<2>)> = DP_A[i].iter().copied().zip(&k).collect();
            y_new = combine(&y, hs, &terms);
            k.push(f(Stage::of_step(t, hs, DP_C[i]), y_new.clone())?);
        }
        // The last stage (a₇ⱼ = bⱼ) is the fifth-order solution, and k₇ = F(t + h, y_new).
        let err_terms: Vec<(f64, &Tensor<2>)> = DP_E.iter().copied().zip(&k).collect();
        let err = combine(&y.zeros_like(), hs, &err_terms);
        let norm = tol.norm(err, &y, Some(&y_new));
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                context: format!("Dormand–Prince error estimate at t = {t}"),
            });
        }
        let factor = if norm == 0.0 { 10.0 } else { 0.9 * norm.powf(-0.2) };
        if norm <= 1.0 {
            t = if last { t1 } else { t + hs };
            y = y_new;
            k1 = k.pop().expect("seven stages");
            check_finite(&y, || format!("probability-flow ODE step {accepted} (t = {t})"))?;
            h *= factor.min(10.0);
            let remaining = ((t1 - t).abs() / h).ceil() as usize;
            accepted += 1;
            if on_step(accepted - 1, accepted + remaining, t, &y).is_break() {
                break;
            }
        } else {
            rejected += 1;
            h *= factor.max(0.2);
        }
        if h <= 1e-12 * span.max(t.abs()) {
            return Err(Error::SolverFailed {
                solver: "Dormand–Prince",
                reason: format!("step size underflow at t = {t}: rtol = {} is too tight", tol.rtol),
            });
        }
    }
    Ok((y, accepted, rejected))
}

/// The first step of Hairer, Nørsett & Wanner (Solving ODEs I, II.4): `h₀ = 0.01‖y₀‖/‖F₀‖`,
/// then `h₁ = (0.01 / max(‖F₀‖, ‖F(t + h₀, y₀ + h₀F₀) − F₀‖/h₀))^(1/5)`, and
/// `min(100 h₀, h₁)`, norms scaled by the tolerances.
fn initial_step<F>(
    f: &mut F,
    tol: &Tolerance,
    t: f64,
    dir: f64,
    span: f64,
    y: &Tensor<2>,
    f0: &Tensor<2>,
) -> Result<f64>
where
    F: FnMut(Stage, Tensor<2>) -> Result<Tensor<2>>,
{
    let d0 = tol.norm(y.clone(), y, None);
    let d1 = tol.norm(f0.clone(), y, None);
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 }.min(span);
    let f1 = f(Stage::of_step(t, dir * h0, 1.0), combine(y, dir * h0, &[(1.0, f0)]))?;
    let d2 = tol.norm(f1.sub(f0.clone()), y, None) / h0;
    let dmax = d1.max(d2);
    let h1 = if dmax <= 1e-15 { (h0 * 1e-3).max(1e-6) } else { (0.01 / dmax).powf(0.2) };
    let h = (100.0 * h0).min(h1);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Error::NonFinite { context: format!("Dormand–Prince initial step at t = {t}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tableau's consistency conditions: `Σⱼ aᵢⱼ = cᵢ`, `Σ bᵢ = 1`, `Σ (bᵢ − b̂ᵢ) = 0`,
    /// and the fifth-order quadrature conditions `Σ bᵢ cᵢ^(q−1) = 1/q`, `q = 1..5`.
    #[test]
    fn dormand_prince_tableau_is_consistent() {
        for (row, c) in DP_A.iter().zip(DP_C) {
            assert!((row.iter().sum::<f64>() - c).abs() < 1e-14, "row sum {c}");
        }
        assert!(DP_E.iter().sum::<f64>().abs() < 1e-15);
        let b = DP_A[6];
        for q in 1..=5 {
            let sum: f64 = b.iter().zip(DP_C).map(|(b, c)| b * c.powi(q - 1)).sum();
            assert!((sum - 1.0 / q as f64).abs() < 1e-14, "order condition q = {q}");
        }
    }

    #[test]
    fn stages_read_coefficients_strictly_inside_their_step() {
        for (t, h) in [(1000.0, -1.0), (1.0, 1.0), (0.5, -0.01)] {
            let (lo, hi) = if h < 0.0 { (t + h, t) } else { (t, t + h) };
            for c in [0.0, 0.5, 1.0] {
                let s = Stage::of_step(t, h, c);
                assert_eq!(s.t, t + c * h);
                assert!(lo < s.coefficient_t && s.coefficient_t < hi);
                assert!((s.coefficient_t - s.t).abs() <= 1.001e-9 * h.abs());
            }
        }
    }

    #[test]
    fn solver_defaults_are_score_sde_s() {
        assert_eq!(
            OdeSolver::default(),
            OdeSolver::DormandPrince {
                rtol: 1e-5,
                atol: 1e-5,
                max_steps: 10_000,
                initial_step: None
            }
        );
        assert!(OdeSolver::default().validate().is_ok());
    }
}
