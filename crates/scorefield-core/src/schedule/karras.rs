//! The EDM noise schedule and σ grid of Karras et al. (2022).
//!
//! EDM's convention: time is the noise level itself, `σ(t) = t`, with no scaling:
//!
//! ```text
//! m(t) = 1,   std(t) = t,
//! f(t) = 0,   g(t) = √(2t)          (so that dσ²/dt = g²),
//! ```
//!
//! for `t ∈ [σ_min, σ_max]`; the prior is `N(0, σ_max² I)`. The sampling grid of `n` levels
//! is spaced uniformly in `σ^{1/ρ}`:
//!
//! ```text
//! σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,   i = 0..n−1,
//! ```
//!
//! which concentrates steps at small σ as ρ grows. Defaults: `σ_min = 0.002`, `σ_max = 80`,
//! `ρ = 7`. EDM's samplers append a final `σ = 0` themselves; the grid stops at `σ_min`.

use crate::error::{Result, ensure_less, ensure_positive};
use crate::schedule::{Marginal, NoiseSchedule, ensure_grid_len};

/// EDM's schedule: time equals noise level (`xₜ = x₀ + t z`) and the ρ-spaced σ grid from
/// `σ_max` down to `σ_min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Karras {
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
}

impl Karras {
    /// A Karras schedule from `sigma_max` down to `sigma_min` with grid exponent `rho`.
    ///
    /// Errors with [`Error::InvalidParameter`](crate::error::Error::InvalidParameter) unless
    /// `0 < sigma_min < sigma_max` and `rho > 0`, all finite.
    pub fn new(sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Self> {
        ensure_positive("sigma_min", sigma_min)?;
        ensure_positive("sigma_max", sigma_max)?;
        ensure_less("sigma_min", sigma_min, "sigma_max", sigma_max)?;
        ensure_positive("rho", rho)?;
        Ok(Self { sigma_min, sigma_max, rho })
    }

    /// EDM's defaults: `σ_min = 0.002`, `σ_max = 80`, `ρ = 7`.
    pub fn edm() -> Self {
        Self { sigma_min: 0.002, sigma_max: 80.0, rho: 7.0 }
    }

    /// The smallest noise level `σ_min`.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    /// The largest noise level `σ_max`.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    /// The grid exponent `ρ`.
    pub fn rho(&self) -> f64 {
        self.rho
    }
}

impl NoiseSchedule for Karras {
    /// `(σ_min, σ_max)`.
    fn time_range(&self) -> (f64, f64) {
        (self.sigma_min, self.sigma_max)
    }

    /// `{ scale: 1, std: t }` (defined for `t ≥ 0`).
    fn marginal(&self, t: f64) -> Marginal {
        Marginal { scale: 1.0, std: t }
    }

    /// `0`.
    fn drift_coefficient(&self, _t: f64) -> f64 {
        0.0
    }

    /// `g(t) = √(2t)` (defined for `t ≥ 0`).
    fn diffusion(&self, t: f64) -> f64 {
        (2.0 * t).sqrt()
    }

    /// `σ_max`.
    fn prior_std(&self) -> f64 {
        self.sigma_max
    }

    /// The `n` levels `σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ` as times,
    /// from exactly `σ_max` to exactly `σ_min`; `n ≥ 2`.
    fn grid(&self, n: usize) -> Result<Vec<f64>> {
        ensure_grid_len(n, 2)?;
        let inv_rho = 1.0 / self.rho;
        let hi = self.sigma_max.powf(inv_rho);
        let lo = self.sigma_min.powf(inv_rho);
        let last = (n - 1) as f64;
        let mut grid: Vec<f64> =
            (0..n).map(|i| (hi + i as f64 / last * (lo - hi)).powf(self.rho)).collect();
        grid[0] = self.sigma_max;
        grid[n - 1] = self.sigma_min;
        Ok(grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<Karras>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_finite_sigma_min() {
        assert_eq!(invalid_name(Karras::new(f64::NAN, 80.0, 7.0)), "sigma_min");
        assert_eq!(invalid_name(Karras::new(f64::INFINITY, 80.0, 7.0)), "sigma_min");
    }

    #[test]
    fn rejects_non_positive_sigma_min() {
        assert_eq!(invalid_name(Karras::new(0.0, 80.0, 7.0)), "sigma_min");
        assert_eq!(invalid_name(Karras::new(-0.002, 80.0, 7.0)), "sigma_min");
    }

    #[test]
    fn rejects_non_finite_sigma_max() {
        assert_eq!(invalid_name(Karras::new(0.002, f64::NAN, 7.0)), "sigma_max");
        assert_eq!(invalid_name(Karras::new(0.002, f64::INFINITY, 7.0)), "sigma_max");
    }

    #[test]
    fn rejects_non_positive_sigma_max() {
        assert_eq!(invalid_name(Karras::new(0.002, 0.0, 7.0)), "sigma_max");
        assert_eq!(invalid_name(Karras::new(0.002, -80.0, 7.0)), "sigma_max");
    }

    #[test]
    fn rejects_sigma_min_not_below_sigma_max() {
        assert_eq!(invalid_name(Karras::new(80.0, 80.0, 7.0)), "sigma_min");
        assert_eq!(invalid_name(Karras::new(80.0, 0.002, 7.0)), "sigma_min");
    }

    #[test]
    fn rejects_bad_rho() {
        for rho in [0.0, -7.0, f64::NAN, f64::INFINITY] {
            assert_eq!(invalid_name(Karras::new(0.002, 80.0, rho)), "rho", "rho = {rho}");
        }
    }

    #[test]
    fn rejects_too_small_grid() {
        let k = Karras::edm();
        assert!(matches!(k.grid(1), Err(Error::InvalidParameter { name: "n", .. })));
        assert!(matches!(k.grid(0), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn edm_grid_18() {
        let k = Karras::edm();
        assert_eq!(k, Karras::new(0.002, 80.0, 7.0).unwrap());
        let grid = k.grid(18).unwrap();
        assert_eq!(grid.len(), 18);
        assert_eq!(grid[0], 80.0);
        assert_relative_eq!(grid[1], 57.586, max_relative = 1e-4);
        assert_relative_eq!(grid[2], 40.786, max_relative = 1e-4);
        assert_relative_eq!(grid[15], 0.0229345, max_relative = 1e-4);
        assert_relative_eq!(grid[16], 0.0075280, max_relative = 1e-4);
        assert_eq!(grid[17], 0.002);
        assert!(grid.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn rho_one_is_linear() {
        let grid = Karras::new(1.0, 5.0, 1.0).unwrap().grid(5).unwrap();
        for (g, want) in grid.iter().zip([5.0, 4.0, 3.0, 2.0, 1.0]) {
            assert_relative_eq!(*g, want, max_relative = 1e-14);
        }
    }

    #[test]
    fn trait_values() {
        let k = Karras::edm();
        assert_eq!(k.time_range(), (0.002, 80.0));
        assert_eq!(k.prior_std(), 80.0);
        assert_eq!(k.marginal(3.5), Marginal { scale: 1.0, std: 3.5 });
        assert_eq!(k.drift_coefficient(3.5), 0.0);
        assert_relative_eq!(k.diffusion(8.0), 4.0, max_relative = 1e-15);
        assert_eq!((k.sigma_min(), k.sigma_max(), k.rho()), (0.002, 80.0, 7.0));
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences.
    #[test]
    fn satisfies_variance_ode() {
        let k = Karras::edm();
        let h = 1e-6;
        for t in [0.01, 0.1, 1.0, 7.3, 50.0] {
            let (lo, mid, hi) = (k.marginal(t - h), k.marginal(t), k.marginal(t + h));
            let f = k.drift_coefficient(t);
            let g = k.diffusion(t);
            let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
            assert_relative_eq!(dvar, 2.0 * f * mid.std * mid.std + g * g, max_relative = 1e-6);
            let dscale = (hi.scale - lo.scale) / (2.0 * h);
            assert_relative_eq!(dscale, f * mid.scale, epsilon = 1e-8);
        }
    }
}
