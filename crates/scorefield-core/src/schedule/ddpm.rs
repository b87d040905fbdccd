//! The discrete DDPM forward chain (Ho et al. 2020) and its β schedules.
//!
//! `T` steps `q(xₜ | xₜ₋₁) = N(√αₜ xₜ₋₁, βₜ I)`, `αₜ = 1 − βₜ`, `t = 1..=T`, with marginal and
//! posterior
//!
//! ```text
//! ᾱₜ = ∏_{s ≤ t} α_s,   q(xₜ | x₀) = N(√ᾱₜ x₀, (1 − ᾱₜ) I),
//! q(xₜ₋₁ | xₜ, x₀) = N(μ̃ₜ, β̃ₜ I),
//! μ̃ₜ = √ᾱₜ₋₁ βₜ/(1 − ᾱₜ) · x₀ + √αₜ (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · xₜ,
//! β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ.
//! ```
//!
//! β schedules ([`BetaSchedule`]), for `i = 0..T−1` (step `t = i + 1`):
//!
//! ```text
//! Linear:     βᵢ = linspace(β_start, β_end, T)ᵢ                 (DDPM: 1e-4 → 0.02)
//! Quadratic:  βᵢ = linspace(√β_start, √β_end, T)ᵢ²
//! Cosine:     f(u) = cos²((u + s)/(1 + s) · π/2),
//!             βᵢ = min(1 − f((i+1)/T)/f(i/T), max_beta)         (Nichol & Dhariwal: s = 0.008,
//!                                                               max_beta = 0.999)
//! ```
//!
//! For the cosine schedule `ᾱₜ = f(t/T)/f(0)` exactly wherever no β was clipped (the product
//! telescopes), e.g. `ᾱ₅₀₀ = f(½)/f(0) ≈ 0.493844` for `T = 1000`.
//!
//! As a [`NoiseSchedule`], time is continuous in `[0, T]` and the integer times are the DDPM
//! steps. Between steps `ln ᾱ` is interpolated linearly, which is the VP SDE with the
//! piecewise-constant rate
//!
//! ```text
//! b(t) = −ln(1 − β_k)  for t ∈ (k−1, k]   (step 1 at t = 0),
//! f(t) = −½ b(t),   g(t) = √b(t),
//! m(t) = √ᾱ(t),   std(t) = √(1 − ᾱ(t)),   ln ᾱ(t) = ln ᾱ_k − (k − t) ln(1 − β_k),
//! ```
//!
//! whose marginals at the integers are exactly the discrete chain's. Times outside `[0, T]`
//! are clamped. The sampling range is `[1, T]` and the prior is `N(0, I)`.

use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::schedule::{Marginal, NoiseSchedule, ensure_grid_len, linspace};

/// How the DDPM variances `β₁..β_T` are laid out over the `T` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaSchedule {
    /// `βᵢ = linspace(beta_start, beta_end, T)ᵢ` (Ho et al.).
    Linear {
        /// `β₁`, in `(0, beta_end]`.
        beta_start: f64,
        /// `β_T`, in `[beta_start, 1)`.
        beta_end: f64,
    },
    /// `βᵢ = min(1 − f((i+1)/T)/f(i/T), max_beta)` with `f(u) = cos²((u + s)/(1 + s)·π/2)`
    /// (Nichol & Dhariwal), so that `ᾱₜ ≈ f(t/T)/f(0)`.
    Cosine {
        /// The offset that keeps `β` from vanishing near `t = 0`; `≥ 0`.
        s: f64,
        /// The clip on `β` (the last steps would otherwise reach 1); in `(0, 1)`.
        max_beta: f64,
    },
    /// `βᵢ = linspace(√beta_start, √beta_end, T)ᵢ²`.
    Quadratic {
        /// `β₁`, in `(0, beta_end]`.
        beta_start: f64,
        /// `β_T`, in `[beta_start, 1)`.
        beta_end: f64,
    },
}

impl BetaSchedule {
    /// DDPM's linear schedule: β from `1e-4` to `0.02`.
    pub fn linear() -> Self {
        BetaSchedule::Linear { beta_start: 1e-4, beta_end: 0.02 }
    }

    /// Nichol & Dhariwal's cosine schedule: `s = 0.008`, `max_beta = 0.999`.
    pub fn cosine() -> Self {
        BetaSchedule::Cosine { s: 0.008, max_beta: 0.999 }
    }

    /// Checks the parameters (see the variants for the ranges).
    fn validate(&self) -> Result<()> {
        match *self {
            BetaSchedule::Linear { beta_start, beta_end }
            | BetaSchedule::Quadratic { beta_start, beta_end } => {
                ensure_positive("beta_start", beta_start)?;
                ensure_finite("beta_end", beta_end)?;
                if beta_end >= 1.0 {
                    return Err(Error::invalid("beta_end", beta_end, "must be < 1"));
                }
                if beta_start > beta_end {
                    return Err(Error::invalid(
                        "beta_start",
                        beta_start,
                        format!("must be ≤ beta_end = {beta_end}"),
                    ));
                }
            }
            BetaSchedule::Cosine { s, max_beta } => {
                ensure_finite("s", s)?;
                if s < 0.0 {
                    return Err(Error::invalid("s", s, "must be ≥ 0"));
                }
                ensure_positive("max_beta", max_beta)?;
                if max_beta >= 1.0 {
                    return Err(Error::invalid("max_beta", max_beta, "must be < 1"));
                }
            }
        }
        Ok(())
    }

    /// The `steps` values `β₁..β_T` (parameters already validated, `steps ≥ 2`).
    fn betas(&self, steps: usize) -> Vec<f64> {
        match *self {
            BetaSchedule::Linear { beta_start, beta_end } => linspace(beta_start, beta_end, steps),
            BetaSchedule::Quadratic { beta_start, beta_end } => {
                linspace(beta_start.sqrt(), beta_end.sqrt(), steps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::Cosine { s, max_beta } => {
                let f = |u: f64| {
                    let c = ((u + s) / (1.0 + s) * core::f64::consts::FRAC_PI_2).cos();
                    c * c
                };
                let n = steps as f64;
                (0..steps)
                    .map(|i| (1.0 - f((i + 1) as f64 / n) / f(i as f64 / n)).min(max_beta))
                    .collect()
            }
        }
    }
}

/// The discrete DDPM forward chain: the tables `βₜ`, `αₜ = 1 − βₜ`, `ᾱₜ = ∏ α` for
/// `t = 1..=T`, the posterior `q(xₜ₋₁ | xₜ, x₀)`, and a continuous-time embedding as a
/// [`NoiseSchedule`] on `[0, T]`.
///
/// Tables are indexed from 0: entry `i` belongs to step `t = i + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ddpm {
    schedule: BetaSchedule,
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alpha_bars: Vec<f64>,
    /// `ln ᾱₜ = Σ ln(1 − β)`, accumulated with `ln_1p`.
    log_alpha_bars: Vec<f64>,
    /// `1 − ᾱₜ = −expm1(ln ᾱₜ)`, accurate at small `t`.
    one_minus_alpha_bars: Vec<f64>,
}

impl Ddpm {
    /// The chain with `steps = T` steps of the given β schedule.
    ///
    /// Errors with [`Error::InvalidParameter`] if `steps < 2` or the schedule's parameters
    /// are out of range (see [`BetaSchedule`]), or if they produce a `β` outside `(0, 1)`.
    pub fn new(schedule: BetaSchedule, steps: usize) -> Result<Self> {
        if steps < 2 {
            return Err(Error::invalid("steps", steps, "at least 2 steps are needed"));
        }
        schedule.validate()?;
        let betas = schedule.betas(steps);
        if let Some((i, &beta)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            let (name, value) = match schedule {
                BetaSchedule::Cosine { s, .. } => ("s", s),
                BetaSchedule::Linear { beta_start, .. }
                | BetaSchedule::Quadratic { beta_start, .. } => ("beta_start", beta_start),
            };
            return Err(Error::invalid(
                name,
                value,
                format!("gives β = {beta} at step {}, outside (0, 1)", i + 1),
            ));
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alpha_bars: Vec<f64> = alphas
            .iter()
            .scan(1.0, |prod, a| {
                *prod *= a;
                Some(*prod)
            })
            .collect();
        let log_alpha_bars: Vec<f64> = betas
            .iter()
            .scan(0.0, |sum, b| {
                *sum += (-b).ln_1p();
                Some(*sum)
            })
            .collect();
        let one_minus_alpha_bars = log_alpha_bars.iter().map(|l| -l.exp_m1()).collect();
        Ok(Self { schedule, betas, alphas, alpha_bars, log_alpha_bars, one_minus_alpha_bars })
    }

    /// DDPM's linear schedule (β 1e-4 → 0.02) with `steps` steps.
    pub fn linear(steps: usize) -> Result<Self> {
        Self::new(BetaSchedule::linear(), steps)
    }

    /// Nichol & Dhariwal's cosine schedule (`s = 0.008`, `max_beta = 0.999`) with `steps`
    /// steps.
    pub fn cosine(steps: usize) -> Result<Self> {
        Self::new(BetaSchedule::cosine(), steps)
    }

    /// The β schedule the tables were built from.
    pub fn schedule(&self) -> BetaSchedule {
        self.schedule
    }

    /// The number of steps `T`.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// `β₁..β_T`; index `i` is step `t = i + 1`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `α₁..α_T`, `αₜ = 1 − βₜ`; index `i` is step `t = i + 1`.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    /// `ᾱ₁..ᾱ_T`, the cumulative products of the `α`; index `i` is step `t = i + 1`.
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }

    /// `ᾱₜ` for `t = 0..=T`, with `ᾱ₀ = 1`.
    ///
    /// # Panics
    /// If `t > T`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        if t == 0 { 1.0 } else { self.alpha_bars[t - 1] }
    }

    /// `1 − ᾱₜ` for `t = 0..=T`, computed as `−expm1(Σ ln(1 − β))` so that it keeps its
    /// relative accuracy at small `t` (where `1 − ᾱₜ` itself would cancel).
    ///
    /// # Panics
    /// If `t > T`.
    pub fn one_minus_alpha_bar(&self, t: usize) -> f64 {
        if t == 0 { 0.0 } else { self.one_minus_alpha_bars[t - 1] }
    }

    /// The posterior variance `β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ` of `q(xₜ₋₁ | xₜ, x₀)`, for
    /// `t = 1..=T`; `β̃₁ = 0`.
    ///
    /// # Panics
    /// If `t == 0` or `t > T`.
    pub fn posterior_variance(&self, t: usize) -> f64 {
        assert!(t >= 1, "the DDPM posterior is defined for t = 1..=T, got t = 0");
        self.one_minus_alpha_bar(t - 1) / self.one_minus_alpha_bar(t) * self.betas[t - 1]
    }

    /// The coefficients `(c₀, c₁)` of the posterior mean `μ̃ₜ = c₀·x₀ + c₁·xₜ` of
    /// `q(xₜ₋₁ | xₜ, x₀)`, for `t = 1..=T`:
    /// `c₀ = √ᾱₜ₋₁ βₜ/(1 − ᾱₜ)`, `c₁ = √αₜ (1 − ᾱₜ₋₁)/(1 − ᾱₜ)`; at `t = 1` they are `(1, 0)`.
    ///
    /// # Panics
    /// If `t == 0` or `t > T`.
    pub fn posterior_mean_coefficients(&self, t: usize) -> (f64, f64) {
        assert!(t >= 1, "the DDPM posterior is defined for t = 1..=T, got t = 0");
        let denom = self.one_minus_alpha_bar(t);
        let c0 = self.alpha_bar(t - 1).sqrt() * self.betas[t - 1] / denom;
        let c1 = self.alphas[t - 1].sqrt() * self.one_minus_alpha_bar(t - 1) / denom;
        (c0, c1)
    }

    /// The step `k ∈ 1..=T` whose interval `(k−1, k]` holds `t` (clamped; step 1 at `t ≤ 0`).
    fn step_of(&self, t: f64) -> usize {
        let t = t.clamp(0.0, self.steps() as f64);
        // A NaN `t` casts to 0 and lands on step 1.
        (t.ceil() as usize).clamp(1, self.steps())
    }

    /// The rate `b(t) = −ln(1 − β_k)` of the step `k` holding `t`.
    fn rate(&self, t: f64) -> f64 {
        -(-self.betas[self.step_of(t) - 1]).ln_1p()
    }
}

impl NoiseSchedule for Ddpm {
    /// `(1, T)`.
    fn time_range(&self) -> (f64, f64) {
        (1.0, self.steps() as f64)
    }

    /// `{ scale: √ᾱ(t), std: √(1 − ᾱ(t)) }`: the tables at integer `t` (`{1, 0}` at `t = 0`),
    /// `ln ᾱ` interpolated linearly in between; `t` is clamped to `[0, T]`.
    fn marginal(&self, t: f64) -> Marginal {
        let t = t.clamp(0.0, self.steps() as f64);
        if t == t.floor() {
            let k = t as usize;
            return Marginal {
                scale: self.alpha_bar(k).sqrt(),
                std: self.one_minus_alpha_bar(k).sqrt(),
            };
        }
        let k = self.step_of(t);
        let log_alpha_bar = self.log_alpha_bars[k - 1] + (k as f64 - t) * self.rate(t);
        Marginal {
            scale: (0.5 * log_alpha_bar).exp(),
            std: (-log_alpha_bar.exp_m1()).max(0.0).sqrt(),
        }
    }

    /// `f(t) = −½ b(t)`, `b(t) = −ln(1 − β_{⌈t⌉})` (step 1 at `t = 0`; `t` clamped to `[0, T]`).
    fn drift_coefficient(&self, t: f64) -> f64 {
        -0.5 * self.rate(t)
    }

    /// `g(t) = √b(t)`, `b(t) = −ln(1 − β_{⌈t⌉})` (step 1 at `t = 0`; `t` clamped to `[0, T]`).
    fn diffusion(&self, t: f64) -> f64 {
        self.rate(t).sqrt()
    }

    /// `1`.
    fn prior_std(&self) -> f64 {
        1.0
    }

    /// `n` integer times `round(linspace(T, 1, n))`, strictly decreasing from `T` to `1`
    /// (`n = T` gives every step, `n = 1` gives `[T]`). Errors unless `1 ≤ n ≤ T`.
    fn grid(&self, n: usize) -> Result<Vec<f64>> {
        ensure_grid_len(n, 1)?;
        let steps = self.steps();
        if n > steps {
            return Err(Error::invalid(
                "n",
                n,
                format!("a DDPM grid has at most T = {steps} points"),
            ));
        }
        if n == 1 {
            return Ok(vec![steps as f64]);
        }
        // The spacing (T − 1)/(n − 1) ≥ 1, so the rounded times stay strictly decreasing.
        Ok(linspace(steps as f64, 1.0, n).into_iter().map(f64::round).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<Ddpm>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    fn linear(beta_start: f64, beta_end: f64) -> BetaSchedule {
        BetaSchedule::Linear { beta_start, beta_end }
    }

    fn quadratic(beta_start: f64, beta_end: f64) -> BetaSchedule {
        BetaSchedule::Quadratic { beta_start, beta_end }
    }

    fn cosine(s: f64, max_beta: f64) -> BetaSchedule {
        BetaSchedule::Cosine { s, max_beta }
    }

    #[test]
    fn rejects_fewer_than_two_steps() {
        for steps in [0, 1] {
            assert_eq!(invalid_name(Ddpm::new(BetaSchedule::linear(), steps)), "steps");
            assert_eq!(invalid_name(Ddpm::new(BetaSchedule::cosine(), steps)), "steps");
        }
    }

    #[test]
    fn rejects_bad_beta_start() {
        for make in [linear, quadratic] {
            for beta_start in [f64::NAN, f64::INFINITY, 0.0, -1e-4] {
                assert_eq!(invalid_name(Ddpm::new(make(beta_start, 0.02), 100)), "beta_start");
            }
        }
    }

    #[test]
    fn rejects_bad_beta_end() {
        for make in [linear, quadratic] {
            for beta_end in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0, 1.5] {
                assert_eq!(invalid_name(Ddpm::new(make(1e-4, beta_end), 100)), "beta_end");
            }
        }
    }

    #[test]
    fn rejects_beta_start_above_beta_end() {
        for make in [linear, quadratic] {
            assert_eq!(invalid_name(Ddpm::new(make(0.02, 1e-4), 100)), "beta_start");
            assert!(Ddpm::new(make(0.01, 0.01), 100).is_ok());
        }
    }

    #[test]
    fn rejects_bad_cosine_s() {
        for s in [f64::NAN, f64::INFINITY, -0.008] {
            assert_eq!(invalid_name(Ddpm::new(cosine(s, 0.999), 100)), "s");
        }
        assert!(Ddpm::new(cosine(0.0, 0.999), 100).is_ok());
    }

    #[test]
    fn rejects_bad_cosine_max_beta() {
        for max_beta in [f64::NAN, f64::INFINITY, 0.0, -0.5, 1.0, 1.5] {
            assert_eq!(invalid_name(Ddpm::new(cosine(0.008, max_beta), 100)), "max_beta");
        }
    }

    #[test]
    fn rejects_bad_grid_sizes() {
        let d = Ddpm::linear(10).unwrap();
        assert!(matches!(d.grid(0), Err(Error::InvalidParameter { name: "n", .. })));
        assert!(matches!(d.grid(11), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn linear_alpha_bars() {
        let d = Ddpm::linear(1000).unwrap();
        assert_eq!(d.steps(), 1000);
        assert_eq!(d.schedule(), BetaSchedule::linear());
        let ab = d.alpha_bars();
        assert_relative_eq!(ab[0], 0.99990, max_relative = 1e-4);
        assert_relative_eq!(ab[499], 0.078587, max_relative = 1e-4);
        assert_relative_eq!(ab[999], 4.0358e-5, max_relative = 1e-4);
        assert_eq!((d.betas()[0], d.betas()[999]), (1e-4, 0.02));
        for (i, (&alpha, &beta)) in d.alphas().iter().zip(d.betas()).enumerate() {
            assert_eq!(alpha, 1.0 - beta);
            assert_eq!(d.alpha_bar(i + 1), ab[i]);
            assert_relative_eq!(d.one_minus_alpha_bar(i + 1), 1.0 - ab[i], max_relative = 1e-11);
        }
        assert_eq!((d.alpha_bar(0), d.one_minus_alpha_bar(0)), (1.0, 0.0));
        // 1 − ᾱ₁ = β₁ to full precision.
        assert_relative_eq!(d.one_minus_alpha_bar(1), 1e-4, max_relative = 1e-15);
    }

    #[test]
    fn cosine_alpha_bars() {
        let d = Ddpm::cosine(1000).unwrap();
        assert_relative_eq!(d.alpha_bars()[499], 0.49384, max_relative = 1e-4);
        // Telescoping: ᾱₜ = f(t/T)/f(0) wherever no β was clipped.
        let f = |u: f64| ((u + 0.008) / 1.008 * core::f64::consts::FRAC_PI_2).cos().powi(2);
        for t in [1, 10, 100, 500, 900, 990] {
            assert_relative_eq!(
                d.alpha_bar(t),
                f(t as f64 / 1000.0) / f(0.0),
                max_relative = 1e-10
            );
        }
        assert_relative_eq!(d.alpha_bar(500), 0.4938436, max_relative = 1e-7);
        // The last β would be 1 (f(1) = 0) and is clipped.
        assert_eq!(d.betas()[999], 0.999);
        assert!(d.betas().iter().all(|&b| b > 0.0 && b <= 0.999));
        assert!(d.betas().windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn quadratic_betas() {
        let d = Ddpm::new(quadratic(1e-4, 0.02), 101).unwrap();
        let b = d.betas();
        assert_relative_eq!(b[0], 1e-4, max_relative = 1e-14);
        assert_relative_eq!(b[100], 0.02, max_relative = 1e-14);
        let mid = (1e-4f64.sqrt() + 0.02f64.sqrt()) / 2.0;
        assert_relative_eq!(b[50], mid * mid, max_relative = 1e-14);
    }

    /// The posterior from Gaussian conditioning of the joint `(xₜ₋₁, xₜ) | x₀`, built from the
    /// chain: `xₜ₋₁ = √ᾱₜ₋₁ x₀ + √(1 − ᾱₜ₋₁) ε`, `xₜ = √αₜ xₜ₋₁ + √βₜ ε'`.
    #[test]
    fn posterior_is_gaussian_conditioning() {
        for d in [Ddpm::linear(1000).unwrap(), Ddpm::cosine(1000).unwrap()] {
            for t in [2, 3, 10, 100, 500, 999, 1000] {
                let (ab_prev, ab) = (d.alpha_bar(t - 1), d.alpha_bar(t));
                let (alpha, beta) = (d.alphas()[t - 1], d.betas()[t - 1]);
                let var_prev = 1.0 - ab_prev;
                let var_t = alpha * var_prev + beta;
                let cov = alpha.sqrt() * var_prev;
                // The chain's variance at t is the table's.
                assert_relative_eq!(var_t, 1.0 - ab, max_relative = 1e-10);
                // E[xₜ₋₁ | xₜ, x₀] = √ᾱₜ₋₁ x₀ + k (xₜ − √ᾱₜ x₀),  k = cov / var_t.
                let k = cov / var_t;
                let (c0, c1) = d.posterior_mean_coefficients(t);
                assert_relative_eq!(c1, k, max_relative = 1e-10);
                assert_relative_eq!(c0, ab_prev.sqrt() - k * ab.sqrt(), max_relative = 1e-9);
                // Mean of xₜ₋₁ given x₀ alone: c₀ + c₁√ᾱₜ = √ᾱₜ₋₁.
                assert_relative_eq!(c0 + c1 * ab.sqrt(), ab_prev.sqrt(), max_relative = 1e-12);
                // Var(xₜ₋₁ | xₜ, x₀) = Var(xₜ₋₁|x₀) − cov²/Var(xₜ|x₀) = β̃ₜ, and total variance:
                // Var(xₜ₋₁|x₀) = β̃ₜ + c₁² Var(xₜ|x₀).
                let bt = d.posterior_variance(t);
                assert_relative_eq!(bt, var_prev - cov * cov / var_t, max_relative = 1e-9);
                assert_relative_eq!(bt, var_prev - c1 * c1 * (1.0 - ab), max_relative = 1e-9);
                assert!(bt > 0.0 && bt < beta);
            }
        }
    }

    #[test]
    fn posterior_at_first_step() {
        let d = Ddpm::linear(1000).unwrap();
        assert_eq!(d.posterior_variance(1), 0.0);
        let (c0, c1) = d.posterior_mean_coefficients(1);
        assert_relative_eq!(c0, 1.0, max_relative = 1e-12);
        assert_eq!(c1, 0.0);
    }

    #[test]
    fn marginal_at_integers_is_the_chain() {
        let d = Ddpm::linear(1000).unwrap();
        assert_eq!(d.marginal(0.0), Marginal { scale: 1.0, std: 0.0 });
        for t in [1usize, 2, 10, 500, 1000] {
            let m = d.marginal(t as f64);
            assert_eq!(m.scale, d.alpha_bar(t).sqrt());
            assert_relative_eq!(m.std, (1.0 - d.alpha_bar(t)).sqrt(), max_relative = 1e-10);
        }
        // Clamping.
        assert_eq!(d.marginal(-3.0), d.marginal(0.0));
        assert_eq!(d.marginal(1e6), d.marginal(1000.0));
        assert_eq!(d.diffusion(-3.0), d.diffusion(0.0));
        assert_eq!(d.diffusion(1e6), d.diffusion(1000.0));
    }

    #[test]
    fn marginal_interpolates_log_alpha_bar() {
        let d = Ddpm::cosine(1000).unwrap();
        for k in [1usize, 2, 37, 500, 1000] {
            let m = d.marginal(k as f64 - 0.5);
            let want = 0.5 * (d.alpha_bar(k - 1).ln() + d.alpha_bar(k).ln());
            assert_relative_eq!(m.scale, (0.5 * want).exp(), max_relative = 1e-10);
            assert_relative_eq!(m.std * m.std + m.scale * m.scale, 1.0, max_relative = 1e-12);
        }
        // Continuous across the integers.
        for k in [1usize, 250, 999] {
            let (lo, hi) = (d.marginal(k as f64 - 1e-9), d.marginal(k as f64 + 1e-9));
            assert_relative_eq!(lo.scale, hi.scale, max_relative = 1e-6);
            assert_relative_eq!(lo.std, hi.std, max_relative = 1e-6);
        }
    }

    #[test]
    fn rates_are_per_step() {
        let d = Ddpm::linear(1000).unwrap();
        let b = |k: usize| -(1.0 - d.betas()[k - 1]).ln();
        assert_relative_eq!(d.diffusion(0.0), b(1).sqrt(), max_relative = 1e-12);
        assert_relative_eq!(d.diffusion(1.0), b(1).sqrt(), max_relative = 1e-12);
        assert_relative_eq!(d.diffusion(1.5), b(2).sqrt(), max_relative = 1e-12);
        assert_relative_eq!(d.diffusion(2.0), b(2).sqrt(), max_relative = 1e-12);
        assert_relative_eq!(d.drift_coefficient(999.2), -0.5 * b(1000), max_relative = 1e-12);
    }

    #[test]
    fn trait_values() {
        let d = Ddpm::linear(1000).unwrap();
        assert_eq!(d.time_range(), (1.0, 1000.0));
        assert_eq!(d.prior_std(), 1.0);
    }

    #[test]
    fn grid_values() {
        let d = Ddpm::linear(1000).unwrap();
        let full = d.grid(1000).unwrap();
        assert_eq!(full, (1..=1000).rev().map(|t| t as f64).collect::<Vec<_>>());
        assert_eq!(d.grid(1).unwrap(), vec![1000.0]);
        assert_eq!(d.grid(2).unwrap(), vec![1000.0, 1.0]);
        assert_eq!(d.grid(4).unwrap(), vec![1000.0, 667.0, 334.0, 1.0]);
        let small = Ddpm::linear(50).unwrap();
        for n in 1..=50 {
            let grid = small.grid(n).unwrap();
            assert_eq!(grid.len(), n);
            assert_eq!(grid[0], 50.0);
            if n > 1 {
                assert_eq!(grid[n - 1], 1.0);
            }
            assert!(grid.windows(2).all(|w| w[1] < w[0]), "n = {n}: {grid:?}");
            assert!(grid.iter().all(|t| *t == t.round()));
        }
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences inside
    /// the steps (the rate is piecewise constant).
    #[test]
    fn satisfies_variance_ode() {
        for d in [Ddpm::linear(1000).unwrap(), Ddpm::cosine(1000).unwrap()] {
            let h = 1e-4;
            for t in [0.5, 1.3, 10.5, 250.25, 500.5, 900.7, 999.5] {
                let (lo, mid, hi) = (d.marginal(t - h), d.marginal(t), d.marginal(t + h));
                let f = d.drift_coefficient(t);
                let g = d.diffusion(t);
                let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
                assert_relative_eq!(
                    dvar,
                    2.0 * f * mid.std * mid.std + g * g,
                    max_relative = 1e-6,
                    epsilon = 1e-9
                );
                let dscale = (hi.scale - lo.scale) / (2.0 * h);
                assert_relative_eq!(dscale, f * mid.scale, max_relative = 1e-6);
            }
        }
    }
}
