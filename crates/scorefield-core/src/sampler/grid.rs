//! Sampling grids: the noise levels a sampler steps through, largest first, chosen by the
//! caller and validated once.
//!
//! A [`Grid`] is a list of [`Node`]s of one [`NoiseSchedule`]; node `i` is the level
//! `(tᵢ, m(tᵢ), σ(tᵢ))` the model is evaluated at. The solvers of the
//! [`Driver`](super::Driver) work in EDM's σ-parameterisation (Karras et al. 2022, eq. 4–5):
//! the state `x̃ = x/m` and the level `σ̃ = σ/m`, in which every schedule becomes the
//! variance-exploding one, `x̃ = x₀ + σ̃·z`; so one solver serves VE and VP schedules alike, and
//! a grid may be given in `t` or in `σ̃`:
//!
//! ```text
//! Karras (ρ):      σ̃ᵢ = (σ̃_max^{1/ρ} + i/(n−1)·(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ       (EDM, ρ = 7)
//! exponential:     ln σ̃ᵢ = ln σ̃_max + i/(n−1)·(ln σ̃_min − ln σ̃_max)              (log-uniform)
//! VP (EDM's):      tᵢ = 1 + i/(n−1)·(ε_s − 1),  σ̃ᵢ = √(exp(½β_d tᵢ² + β_min tᵢ) − 1)
//! uniform in t:    tᵢ = T + i/(n−1)·(t_min − T)
//! the schedule's:  NoiseSchedule::grid(n)
//! DDPM spacings:   diffusers' "leading", "trailing", "linspace" timesteps ([`Spacing`])
//! ```
//!
//! A σ̃ value is placed on the schedule by inverting `σ̃(t)`, which increases with `t`
//! (bisection to the last bit). [`Grid::with_zero`] appends the clean level `t = 0`, `σ = 0`
//! (EDM's final `σ_N = 0`): the last step then returns the denoised estimate.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::schedule::{Ddpm, NoiseSchedule, linspace};

/// One noise level of a grid: the time `t`, the mean coefficient `m(t)` (`scale`) and the
/// standard deviation `σ(t)` of `xₜ = m·x₀ + σ·z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// The time `t` the model is conditioned on.
    pub t: f64,
    /// The mean coefficient `m(t)`.
    pub scale: f64,
    /// The noise standard deviation `σ(t)`.
    pub sigma: f64,
}

impl Node {
    /// The clean level: `t = 0`, `m = 1`, `σ = 0`.
    pub const CLEAN: Node = Node { t: 0.0, scale: 1.0, sigma: 0.0 };

    /// The level of `schedule` at time `t`.
    pub fn at<S: NoiseSchedule + ?Sized>(schedule: &S, t: f64) -> Node {
        let m = schedule.marginal(t);
        Node { t, scale: m.scale, sigma: m.std }
    }

    /// `σ̃ = σ/m`, the level in EDM's σ-parameterisation.
    pub fn sigma_tilde(&self) -> f64 {
        self.sigma / self.scale
    }

    /// `λ = ln(m/σ) = −ln σ̃`, the half log signal-to-noise ratio of DPM-Solver (`+∞` at the
    /// clean level).
    pub fn lambda(&self) -> f64 {
        -self.sigma_tilde().ln()
    }
}

/// A validated sampling grid: `n ≥ 2` nodes with `σ̃` strictly decreasing (every node inside
/// its schedule's time range except a final clean node), or, built by
/// [`Grid::stationary`], levels repeated for the Langevin-type steps that dwell at a level.
#[derive(Clone)]
pub struct Grid {
    nodes: Vec<Node>,
    schedule: Option<Arc<dyn NoiseSchedule + Send + Sync>>,
    repeats: bool,
}

impl fmt::Debug for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grid").field("nodes", &self.nodes).finish_non_exhaustive()
    }
}

impl PartialEq for Grid {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Grid {
    /// The grid at the given times of `schedule`, largest noise first. A last time of exactly
    /// `0` below the schedule's range (DDPM's `t = 0`, after `t_min = 1`) is the clean level.
    ///
    /// Errors with [`Error::InvalidParameter`] if there are fewer than two times, a time is
    /// not finite or outside the schedule's `time_range()`, or `σ̃(tᵢ)` does not strictly
    /// decrease (a non-monotone grid).
    pub fn from_times<S>(schedule: S, times: &[f64]) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        let (lo, hi) = schedule.time_range();
        let slack = 1e-12 * hi.abs().max(1.0);
        let mut nodes = Vec::with_capacity(times.len());
        for (i, &t) in times.iter().enumerate() {
            ensure_finite("grid time", t)?;
            if t == 0.0 && lo > 0.0 && i + 1 == times.len() && i > 0 {
                nodes.push(Node::CLEAN);
            } else if t < lo - slack || t > hi + slack {
                let reason = format!("outside the schedule's time range [{lo}, {hi}]");
                return Err(Error::invalid("grid time", t, reason));
            } else {
                nodes.push(Node::at(&schedule, t.clamp(lo, hi)));
            }
        }
        Self::validated(nodes, Some(Arc::new(schedule)), false)
    }

    /// The grid at the given levels `σ̃ = σ/m` of `schedule` (largest first), each placed at
    /// the time where the schedule reaches it. A last level of exactly `0` is the clean level.
    ///
    /// Errors with [`Error::InvalidParameter`] if there are fewer than two levels, a level is
    /// not finite, `≤ 0` before the last, outside the schedule's range of `σ̃`, or the levels
    /// do not strictly decrease.
    pub fn from_sigmas<S>(schedule: S, sigmas: &[f64]) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        let schedule: Arc<dyn NoiseSchedule + Send + Sync> = Arc::new(schedule);
        let mut nodes = Vec::with_capacity(sigmas.len());
        for (i, &s) in sigmas.iter().enumerate() {
            ensure_finite("grid sigma", s)?;
            if s == 0.0 && i + 1 == sigmas.len() && i > 0 {
                nodes.push(Node::CLEAN);
            } else {
                ensure_positive("grid sigma", s)?;
                nodes.push(node_at_sigma(schedule.as_ref(), s)?);
            }
        }
        Self::validated(nodes, Some(schedule), false)
    }

    /// The schedule's own grid of `n` times ([`NoiseSchedule::grid`]).
    pub fn schedule<S>(schedule: S, n: usize) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        let times = schedule.grid(n)?;
        Self::from_times(schedule, &times)
    }

    /// `n` times uniform in `t` from `T` to the schedule's `t_min`.
    pub fn uniform_time<S>(schedule: S, n: usize) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        ensure_len(n)?;
        let (lo, hi) = schedule.time_range();
        Self::from_times(schedule, &linspace(hi, lo, n))
    }

    /// EDM's grid of `n` levels uniform in `σ̃^{1/ρ}` across the schedule's range of `σ̃`
    /// ([`karras_sigmas`]); EDM uses `ρ = 7`.
    pub fn karras<S>(schedule: S, n: usize, rho: f64) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        let (lo, hi) = sigma_range(&schedule);
        Self::from_sigmas(schedule, &karras_sigmas(n, lo, hi, rho)?)
    }

    /// `n` levels uniform in `ln σ̃` across the schedule's range of `σ̃`
    /// ([`exponential_sigmas`]).
    pub fn exponential<S>(schedule: S, n: usize) -> Result<Self>
    where
        S: NoiseSchedule + Send + Sync + 'static,
    {
        let (lo, hi) = sigma_range(&schedule);
        Self::from_sigmas(schedule, &exponential_sigmas(n, lo, hi)?)
    }

    /// diffusers' DDPM timestep `spacing` for `n` steps of a `Ddpm` chain of `T` steps
    /// ([`Spacing::timesteps`]), then the clean level: diffusers' timestep `k` (0-based) is
    /// this library's step `t = k + 1` (`ᾱ` of the same value).
    pub fn ddpm(schedule: Ddpm, n: usize, spacing: Spacing) -> Result<Self> {
        let steps = spacing.timesteps(schedule.steps(), n)?;
        let mut times: Vec<f64> = steps.iter().map(|&k| (k + 1) as f64).collect();
        times.push(0.0);
        Self::from_times(schedule, &times)
    }

    /// As [`Grid::ddpm`] with the timesteps of diffusers' multistep schedulers
    /// (DPM-Solver++, UniPC: [`Spacing::multistep_timesteps`]).
    pub fn ddpm_multistep(schedule: Ddpm, n: usize, spacing: Spacing) -> Result<Self> {
        let steps = spacing.multistep_timesteps(schedule.steps(), n)?;
        let mut times: Vec<f64> = steps.iter().map(|&k| (k + 1) as f64).collect();
        times.push(0.0);
        Self::from_times(schedule, &times)
    }

    /// The same grid with the clean level `t = 0`, `σ = 0` appended (unless it ends there).
    pub fn with_zero(mut self) -> Self {
        if self.nodes.last().is_some_and(|n| n.sigma > 0.0) {
            self.nodes.push(Node::CLEAN);
        }
        self
    }

    /// The nodes, largest noise first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The number of steps, one fewer than the nodes.
    pub fn steps(&self) -> usize {
        self.nodes.len() - 1
    }

    /// The levels `σ̃ᵢ = σᵢ/mᵢ`.
    pub fn sigmas(&self) -> Vec<f64> {
        self.nodes.iter().map(Node::sigma_tilde).collect()
    }

    /// The times `tᵢ`.
    pub fn times(&self) -> Vec<f64> {
        self.nodes.iter().map(|n| n.t).collect()
    }

    /// The schedule the grid lies on; `None` for a grid built from its nodes
    /// ([`Grid::from_nodes`], [`Grid::stationary`]).
    pub fn noise_schedule(&self) -> Option<&(dyn NoiseSchedule + Send + Sync)> {
        self.schedule.as_deref()
    }

    /// Whether a level repeats (a [`Grid::stationary`] grid): only steps that
    /// [dwell](super::Step::dwells) run on such a grid.
    pub fn repeats(&self) -> bool {
        self.repeats
    }

    /// The node of the grid's schedule at level `σ̃` (off the grid: stochastic solvers that
    /// raise the noise, as EDM's churn, evaluate the model there). `0` is the clean level.
    ///
    /// Errors with [`Error::InvalidParameter`] if `σ̃` is negative, not finite or outside the
    /// schedule's range of `σ̃`, or the grid has no schedule.
    pub fn node_at(&self, sigma_tilde: f64) -> Result<Node> {
        if sigma_tilde == 0.0 {
            return Ok(Node::CLEAN);
        }
        let Some(schedule) = self.schedule.as_deref() else {
            let reason = "a grid built from nodes has no schedule to place an off-grid level on";
            return Err(Error::invalid("grid sigma", sigma_tilde, reason));
        };
        node_at_sigma(schedule, ensure_positive("sigma", sigma_tilde)?)
    }

    /// The grid of the given nodes, largest noise first, without a schedule (for steps that
    /// carry their own, as the reverse-SDE predictors; [`node_at`](Self::node_at) then
    /// errors).
    ///
    /// Errors with [`Error::InvalidParameter`] if there are fewer than two nodes, a node's
    /// `m` is not finite and `> 0` or its `σ` not finite and `≥ 0`, or `σ̃` does not strictly
    /// decrease.
    pub fn from_nodes(nodes: Vec<Node>) -> Result<Self> {
        Self::validated(nodes, None, false)
    }

    /// The grid that starts at the first of `levels` and stays `per_level` steps at each
    /// level in turn: nodes `[l₁, l₁ ×K, l₂ ×K, …, l_L ×K]` with `K = per_level`, for
    /// Langevin-type steps that sample one level by MCMC before moving to the next (NCSN's
    /// annealed Langevin; Langevin at one level is `L = 1`).
    ///
    /// Errors with [`Error::InvalidParameter`] if `levels` is empty, `per_level = 0`, a
    /// level's `m` or `σ` is invalid (as [`Grid::from_nodes`]) or `σ̃` does not strictly
    /// decrease from one level to the next.
    pub fn stationary(levels: &[Node], per_level: usize) -> Result<Self> {
        if per_level == 0 {
            return Err(Error::invalid("per_level", 0, "at least one step per level is needed"));
        }
        Self::check_decreasing(levels)?;
        let Some(&first) = levels.first() else {
            return Err(Error::invalid("levels", "[]", "at least one level is needed"));
        };
        let mut nodes = vec![first];
        for &level in levels {
            nodes.extend(std::iter::repeat_n(level, per_level));
        }
        Self::validated(nodes, None, true)
    }

    fn validated(
        nodes: Vec<Node>,
        schedule: Option<Arc<dyn NoiseSchedule + Send + Sync>>,
        repeats: bool,
    ) -> Result<Self> {
        if nodes.len() < 2 {
            let reason = "a grid needs at least two levels (one step)";
            return Err(Error::invalid("grid", format!("{} level(s)", nodes.len()), reason));
        }
        for n in &nodes {
            if !(n.scale.is_finite() && n.scale > 0.0 && n.sigma.is_finite() && n.sigma >= 0.0) {
                let reason = "the schedule's m(t) must be finite and > 0, σ(t) finite and ≥ 0";
                return Err(Error::invalid("grid", format!("{n:?}"), reason));
            }
        }
        if !repeats {
            Self::check_decreasing(&nodes)?;
        }
        Ok(Grid { nodes, schedule, repeats })
    }

    /// Errors unless `σ̃` strictly decreases along `nodes`.
    fn check_decreasing(nodes: &[Node]) -> Result<()> {
        for (i, pair) in nodes.windows(2).enumerate() {
            let (a, b) = (pair[0].sigma_tilde(), pair[1].sigma_tilde());
            if b >= a || b.is_nan() {
                let reason =
                    format!("σ̃ must strictly decrease: node {i} has {a}, node {} {b}", i + 1);
                return Err(Error::invalid("grid", format!("{a} → {b}"), reason));
            }
        }
        Ok(())
    }
}

/// Checks a caller's time grid for a sampler that steps in `t` on its own schedule (the
/// probability-flow ODE, the reverse SDE): at least two times, each finite and inside the
/// schedule's `time_range()`, strictly decreasing.
///
/// Errors with [`Error::InvalidParameter`] naming `"times"` (count, order) or `"time"` (one
/// value).
pub fn check_times<S: NoiseSchedule + ?Sized>(schedule: &S, times: &[f64]) -> Result<()> {
    if times.len() < 2 {
        return Err(Error::invalid("times", times.len(), "at least two times are needed"));
    }
    let (lo, hi) = schedule.time_range();
    for &t in times {
        ensure_finite("time", t)?;
        if t < lo || t > hi {
            let reason = format!("outside the schedule's time range [{lo}, {hi}]");
            return Err(Error::invalid("time", t, reason));
        }
    }
    for w in times.windows(2) {
        if w[1] >= w[0] {
            let reason = "times must strictly decrease (sampling runs from T towards ε)";
            return Err(Error::invalid("times", format!("{} then {}", w[0], w[1]), reason));
        }
    }
    Ok(())
}

/// `(σ̃(t_min), σ̃(t_max))` of a schedule.
fn sigma_range<S: NoiseSchedule + ?Sized>(schedule: &S) -> (f64, f64) {
    let (lo, hi) = schedule.time_range();
    (Node::at(schedule, lo).sigma_tilde(), Node::at(schedule, hi).sigma_tilde())
}

/// The node where `σ̃(t) = target`, by bisection on `[t_min, t_max]` (`σ̃` increases with `t`).
fn node_at_sigma<S: NoiseSchedule + ?Sized>(schedule: &S, target: f64) -> Result<Node> {
    let (mut lo, mut hi) = schedule.time_range();
    let (s_lo, s_hi) = sigma_range(schedule);
    let slack = 1e-12 * s_hi;
    if target < s_lo - slack || target > s_hi + slack {
        let reason = format!("outside the schedule's range of σ/m, [{s_lo}, {s_hi}]");
        return Err(Error::invalid("grid sigma", target, reason));
    }
    if target <= s_lo {
        return Ok(Node::at(schedule, lo));
    }
    if target >= s_hi {
        return Ok(Node::at(schedule, hi));
    }
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if Node::at(schedule, mid).sigma_tilde() < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (a, b) = (Node::at(schedule, lo), Node::at(schedule, hi));
    let closer =
        if (a.sigma_tilde() - target).abs() <= (b.sigma_tilde() - target).abs() { a } else { b };
    Ok(closer)
}

/// EDM's levels (Karras et al. 2022, eq. 5): `n` values
/// `σᵢ = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`, from `σ_max` to `σ_min`.
///
/// Errors with [`Error::InvalidParameter`] unless `n ≥ 2`, `0 < σ_min < σ_max` and `ρ > 0`,
/// all finite.
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    ensure_positive("rho", rho)?;
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut s: Vec<f64> = linspace(a, b, n).into_iter().map(|u| u.powf(rho)).collect();
    (s[0], s[n - 1]) = (sigma_max, sigma_min);
    Ok(s)
}

/// `n` levels uniform in `ln σ` from `σ_max` to `σ_min` (k-diffusion's "exponential").
///
/// Errors as [`karras_sigmas`].
pub fn exponential_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    let mut s: Vec<f64> =
        linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect();
    (s[0], s[n - 1]) = (sigma_max, sigma_min);
    Ok(s)
}

/// EDM's VP levels (Karras et al. 2022, Table 1): `tᵢ = 1 + i/(n−1)·(ε_s − 1)` and
/// `σᵢ = √(exp(½β_d tᵢ² + β_min tᵢ) − 1)`; EDM uses `β_d = 19.9`, `β_min = 0.1`,
/// `ε_s = 1e-3`.
///
/// Errors with [`Error::InvalidParameter`] unless `n ≥ 2`, `β_d > 0`, `β_min > 0` and
/// `0 < ε_s < 1`.
pub fn vp_sigmas(n: usize, beta_d: f64, beta_min: f64, eps_s: f64) -> Result<Vec<f64>> {
    ensure_len(n)?;
    ensure_positive("beta_d", beta_d)?;
    ensure_positive("beta_min", beta_min)?;
    ensure_positive("eps_s", eps_s)?;
    if eps_s >= 1.0 {
        return Err(Error::invalid("eps_s", eps_s, "must be < 1"));
    }
    let sigma = |t: f64| (0.5 * beta_d * t * t + beta_min * t).exp_m1().sqrt();
    Ok(linspace(1.0, eps_s, n).into_iter().map(sigma).collect())
}

/// diffusers' timestep spacings of a discrete DDPM chain (0-based timesteps `0..T`, largest
/// first), with `steps_offset = 0`. The single-step schedulers (DDIM, DDPM, Euler) and the
/// multistep ones (DPM-Solver++, UniPC) space `leading` and `linspace` differently:
/// [`Spacing::timesteps`] and [`Spacing::multistep_timesteps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `round(linspace(0, T − 1, n))`, reversed (multistep: `n + 1` points, the last dropped).
    Linspace,
    /// `k·⌊T/n⌋` for `k = 0..n`, reversed (multistep: `k·⌊T/(n+1)⌋` for `k = n..1`).
    Leading,
    /// `round(T − k·T/n) − 1` for `k = 0..n` (starts at `T − 1`; Lin et al. 2024).
    Trailing,
}

impl Spacing {
    /// The `n` timesteps (0-based, largest first) of a chain of `t_train` steps.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `1 ≤ n ≤ t_train`.
    pub fn timesteps(self, t_train: usize, n: usize) -> Result<Vec<usize>> {
        if n == 0 || n > t_train {
            let reason = format!("needs 1 ≤ n ≤ T = {t_train}");
            return Err(Error::invalid("n", n, reason));
        }
        let (t, nf) = (t_train as f64, n as f64);
        let mut steps: Vec<usize> = match self {
            Spacing::Linspace => {
                let last = (t_train - 1) as f64;
                (0..n)
                    .map(|k| if n == 1 { 0.0 } else { last * k as f64 / (nf - 1.0) })
                    .map(|v| round_half_even(v) as usize)
                    .collect()
            }
            Spacing::Leading => (0..n).map(|k| k * (t_train / n)).collect(),
            Spacing::Trailing => {
                (0..n).map(|k| round_half_even(t - k as f64 * t / nf) as usize - 1).rev().collect()
            }
        };
        steps.reverse();
        Ok(steps)
    }

    /// The `n` timesteps of diffusers' multistep schedulers (`DPMSolverMultistepScheduler`,
    /// `UniPCMultistepScheduler`): `linspace` and `leading` lay out `n + 1` points and drop
    /// the last (0); `trailing` is as [`Spacing::timesteps`].
    ///
    /// Errors with [`Error::InvalidParameter`] unless `1 ≤ n < t_train`.
    pub fn multistep_timesteps(self, t_train: usize, n: usize) -> Result<Vec<usize>> {
        if n == 0 || n >= t_train {
            return Err(Error::invalid("n", n, format!("needs 1 ≤ n < T = {t_train}")));
        }
        Ok(match self {
            Spacing::Linspace => {
                let last = (t_train - 1) as f64;
                (1..=n)
                    .rev()
                    .map(|k| round_half_even(last * k as f64 / n as f64) as usize)
                    .collect()
            }
            Spacing::Leading => (1..=n).rev().map(|k| k * (t_train / (n + 1))).collect(),
            Spacing::Trailing => self.timesteps(t_train, n)?,
        })
    }
}

/// NumPy's `round`: halves to even.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - v.signum() } else { r }
}

fn ensure_len(n: usize) -> Result<()> {
    if n < 2 {
        Err(Error::invalid("n", n, "a grid needs at least two levels (one step)"))
    } else {
        Ok(())
    }
}

fn check_range(n: usize, sigma_min: f64, sigma_max: f64) -> Result<()> {
    ensure_len(n)?;
    ensure_positive("sigma_min", sigma_min)?;
    ensure_positive("sigma_max", sigma_max)?;
    crate::error::ensure_less("sigma_min", sigma_min, "sigma_max", sigma_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Karras, VpSde};

    #[test]
    fn karras_sigmas_match_edm_s_closed_form() {
        // EDM, n = 18: the first three and the last levels (σ = 80 … 0.002, ρ = 7).
        let s = karras_sigmas(18, 0.002, 80.0, 7.0).unwrap();
        let want = |i: f64| {
            (80f64.powf(1.0 / 7.0) + i / 17.0 * (0.002f64.powf(1.0 / 7.0) - 80f64.powf(1.0 / 7.0)))
                .powi(7)
        };
        for i in [0usize, 1, 2, 9, 17] {
            assert!((s[i] - want(i as f64)).abs() <= 1e-12 * want(i as f64), "{i}");
        }
        assert_eq!((s[0], s[17]), (80.0, 0.002));
    }

    #[test]
    fn stationary_grids_repeat_each_level_and_validate_them() {
        let (a, b) =
            (Node { t: 2.0, scale: 1.0, sigma: 2.0 }, Node { t: 1.0, scale: 1.0, sigma: 1.0 });
        let grid = Grid::stationary(&[a, b], 3).unwrap();
        assert_eq!(grid.nodes(), [a, a, a, a, b, b, b]);
        assert!(grid.repeats() && grid.noise_schedule().is_none());
        assert_eq!(grid.clone().with_zero().nodes().last(), Some(&Node::CLEAN));
        // One level, K steps: Langevin at a fixed level (here the clean one).
        assert_eq!(Grid::stationary(&[Node::CLEAN], 2).unwrap().nodes(), [Node::CLEAN; 3]);
        let invalid = |r: Result<Grid>| matches!(r, Err(Error::InvalidParameter { .. }));
        assert!(invalid(Grid::stationary(&[], 3)));
        assert!(invalid(Grid::stationary(&[a], 0)));
        assert!(invalid(Grid::stationary(&[b, a], 2))); // increasing levels
        assert!(invalid(Grid::stationary(&[a, a], 2))); // a level given twice
        let bad = Node { t: 1.0, scale: 0.0, sigma: 1.0 };
        assert!(invalid(Grid::stationary(&[bad], 1)));
        // A grid of nodes is strict, and without a schedule it cannot place an off-grid level.
        assert!(invalid(Grid::from_nodes(vec![a, a])));
        let grid = Grid::from_nodes(vec![a, b]).unwrap();
        assert!(!grid.repeats());
        assert!(matches!(grid.node_at(1.5), Err(Error::InvalidParameter { .. })));
    }

    #[test]
    fn grids_in_sigma_land_on_the_schedule() {
        let vp = VpSde::new(0.1, 20.0).unwrap();
        let grid = Grid::karras(vp, 10, 7.0).unwrap().with_zero();
        assert_eq!(grid.steps(), 10);
        let sigmas = grid.sigmas();
        let (lo, hi) = sigma_range(&vp);
        let want = karras_sigmas(10, lo, hi, 7.0).unwrap();
        for (got, want) in sigmas.iter().zip(&want) {
            assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        }
        assert_eq!(*grid.nodes().last().unwrap(), Node::CLEAN);
        // A schedule whose range starts at 0 keeps its own level there (NCSN's σ_min).
        let ncsn = crate::schedule::GeometricSigmas::ncsn();
        let grid = Grid::schedule(ncsn, 10).unwrap();
        assert!((grid.nodes()[9].sigma - 0.01).abs() < 1e-12);
        // On EDM's own schedule the time is the level.
        let edm = Grid::from_sigmas(Karras::edm(), &[80.0, 1.0, 0.002, 0.0]).unwrap();
        assert_eq!(edm.times(), [80.0, 1.0, 0.002, 0.0]);
    }

    #[test]
    fn bad_grids_are_typed_errors() {
        let edm = Karras::edm;
        let invalid = |r: Result<Grid>| matches!(r, Err(Error::InvalidParameter { .. }));
        assert!(invalid(Grid::from_sigmas(edm(), &[])));
        assert!(invalid(Grid::from_sigmas(edm(), &[1.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[1.0, 2.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[2.0, 2.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[2.0, 0.0, 0.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[2.0, -1.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[f64::NAN, 1.0])));
        assert!(invalid(Grid::from_sigmas(edm(), &[200.0, 1.0])));
        assert!(invalid(Grid::from_times(VpSde::new(0.1, 20.0).unwrap(), &[1.5, 0.5])));
        assert!(invalid(Grid::from_times(VpSde::new(0.1, 20.0).unwrap(), &[0.5, 0.7])));
        assert!(invalid(karras_sigmas(1, 0.1, 1.0, 7.0).map(|_| unreachable!())));
        assert!(invalid(karras_sigmas(5, 0.1, 1.0, -7.0).map(|_| unreachable!())));
        assert!(invalid(Spacing::Leading.timesteps(10, 11).map(|_| unreachable!())));
    }

    #[test]
    fn diffusers_spacings() {
        // diffusers' documented examples for T = 1000, n = 10.
        assert_eq!(
            Spacing::Leading.timesteps(1000, 10).unwrap(),
            [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
        );
        assert_eq!(
            Spacing::Trailing.timesteps(1000, 10).unwrap(),
            [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
        );
        assert_eq!(
            Spacing::Linspace.timesteps(1000, 10).unwrap(),
            [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
        );
        assert_eq!(
            Spacing::Linspace.multistep_timesteps(1000, 10).unwrap(),
            [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(
            Spacing::Leading.multistep_timesteps(1000, 10).unwrap(),
            [900, 810, 720, 630, 540, 450, 360, 270, 180, 90]
        );
        let grid = Grid::ddpm(Ddpm::linear(1000).unwrap(), 10, Spacing::Trailing).unwrap();
        assert_eq!(grid.times()[0], 1000.0);
        assert_eq!(grid.steps(), 10);
    }
}
