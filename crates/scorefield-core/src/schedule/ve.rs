//! The variance-exploding (VE) SDE of score SDE (Song et al. 2021), the continuous limit of
//! NCSN's geometric noise levels.
//!
//! ```text
//! σ(t) = σ_min (σ_max/σ_min)^t,   t ∈ [0, 1],
//! dx = √(dσ(t)²/dt) dw:   f(t) = 0,   g(t) = σ(t) √(2 ln(σ_max/σ_min)),
//! m(t) = 1,   std(t) = √(σ(t)² − σ_min²) = σ_min √(expm1(2t ln(σ_max/σ_min))),
//! ```
//!
//! The std is the exact one of the SDE started at the data at `t = 0`, so `std(0) = 0`.
//! score_sde (and [`GeometricSigmas`](super::GeometricSigmas)) use `std(t) = σ(t)` instead,
//! which differs by at most `σ_min` and is not zero at `t = 0`. Both satisfy the variance ODE
//! `d std²/dt = g(t)²`. The prior is `N(0, σ_max² I)` (exactly, up to the negligible
//! `σ_min²`). Defaults (CIFAR-10): `σ_min = 0.01`, `σ_max = 50`, `ε = 1e-5`.

use crate::error::{Result, ensure_less, ensure_positive};
use crate::schedule::{
    Marginal, NoiseSchedule, ensure_grid_len, geometric_diffusion, geometric_sigma, linspace,
};

/// The variance-exploding SDE `dx = σ(t) √(2 ln(σ_max/σ_min)) dw` with
/// `σ(t) = σ_min (σ_max/σ_min)^t`, `t ∈ [ε, 1]`, and exact marginal
/// `N(x₀, (σ(t)² − σ_min²) I)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VeSde {
    sigma_min: f64,
    sigma_max: f64,
    eps: f64,
}

impl VeSde {
    /// The default smallest time `ε = 1e-5`.
    pub const DEFAULT_EPS: f64 = 1e-5;

    /// A VE SDE from `sigma_min` to `sigma_max`, with `ε = 1e-5`.
    ///
    /// Errors with [`Error::InvalidParameter`](crate::error::Error::InvalidParameter) unless
    /// `0 < sigma_min < sigma_max`, both finite.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        ensure_positive("sigma_min", sigma_min)?;
        ensure_positive("sigma_max", sigma_max)?;
        ensure_less("sigma_min", sigma_min, "sigma_max", sigma_max)?;
        Ok(Self { sigma_min, sigma_max, eps: Self::DEFAULT_EPS })
    }

    /// score_sde's CIFAR-10 defaults: `σ_min = 0.01`, `σ_max = 50`, `ε = 1e-5`.
    pub fn cifar10() -> Self {
        Self { sigma_min: 0.01, sigma_max: 50.0, eps: Self::DEFAULT_EPS }
    }

    /// The same SDE with smallest time `eps`; errors unless `0 < eps < 1`.
    pub fn with_eps(self, eps: f64) -> Result<Self> {
        ensure_positive("eps", eps)?;
        ensure_less("eps", eps, "t_max", 1.0)?;
        Ok(Self { eps, ..self })
    }

    /// `σ_min = σ(0)`.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    /// `σ_max = σ(1)`.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    /// The smallest time `ε` samplers and objectives use.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `σ(t) = σ_min (σ_max/σ_min)^t` (score_sde's std, not the exact one).
    pub fn sigma(&self, t: f64) -> f64 {
        geometric_sigma(self.sigma_min, self.sigma_max, t)
    }

    /// `ln(σ_max/σ_min)`.
    fn log_ratio(&self) -> f64 {
        (self.sigma_max / self.sigma_min).ln()
    }
}

impl NoiseSchedule for VeSde {
    /// `(ε, 1)`.
    fn time_range(&self) -> (f64, f64) {
        (self.eps, 1.0)
    }

    /// `{ scale: 1, std: √(σ(t)² − σ_min²) }`, computed as
    /// `σ_min √(expm1(2t ln(σ_max/σ_min)))` for accuracy at small `t` (defined for `t ≥ 0`).
    fn marginal(&self, t: f64) -> Marginal {
        Marginal { scale: 1.0, std: self.sigma_min * (2.0 * t * self.log_ratio()).exp_m1().sqrt() }
    }

    /// `0`.
    fn drift_coefficient(&self, _t: f64) -> f64 {
        0.0
    }

    /// `g(t) = σ(t) √(2 ln(σ_max/σ_min))`.
    fn diffusion(&self, t: f64) -> f64 {
        geometric_diffusion(self.sigma_min, self.sigma_max, t)
    }

    /// `σ_max`.
    fn prior_std(&self) -> f64 {
        self.sigma_max
    }

    /// `linspace(1, ε, n)`; `n ≥ 2`.
    fn grid(&self, n: usize) -> Result<Vec<f64>> {
        ensure_grid_len(n, 2)?;
        Ok(linspace(1.0, self.eps, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<VeSde>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_finite_sigma_min() {
        assert_eq!(invalid_name(VeSde::new(f64::NAN, 50.0)), "sigma_min");
        assert_eq!(invalid_name(VeSde::new(f64::INFINITY, 50.0)), "sigma_min");
    }

    #[test]
    fn rejects_non_positive_sigma_min() {
        assert_eq!(invalid_name(VeSde::new(0.0, 50.0)), "sigma_min");
        assert_eq!(invalid_name(VeSde::new(-0.01, 50.0)), "sigma_min");
    }

    #[test]
    fn rejects_non_finite_sigma_max() {
        assert_eq!(invalid_name(VeSde::new(0.01, f64::NAN)), "sigma_max");
        assert_eq!(invalid_name(VeSde::new(0.01, f64::INFINITY)), "sigma_max");
    }

    #[test]
    fn rejects_non_positive_sigma_max() {
        assert_eq!(invalid_name(VeSde::new(0.01, 0.0)), "sigma_max");
        assert_eq!(invalid_name(VeSde::new(0.01, -50.0)), "sigma_max");
    }

    #[test]
    fn rejects_sigma_min_not_below_sigma_max() {
        assert_eq!(invalid_name(VeSde::new(50.0, 50.0)), "sigma_min");
        assert_eq!(invalid_name(VeSde::new(50.0, 0.01)), "sigma_min");
    }

    #[test]
    fn rejects_bad_eps() {
        let ve = VeSde::cifar10();
        for eps in [0.0, -1e-5, 1.0, 2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(invalid_name(ve.with_eps(eps)), "eps", "eps = {eps}");
        }
    }

    #[test]
    fn rejects_too_small_grid() {
        let ve = VeSde::cifar10();
        assert!(matches!(ve.grid(1), Err(Error::InvalidParameter { name: "n", .. })));
        assert!(matches!(ve.grid(0), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn defaults() {
        let ve = VeSde::cifar10();
        assert_eq!(ve, VeSde::new(0.01, 50.0).unwrap());
        assert_eq!(ve.eps(), 1e-5);
        assert_eq!(ve.time_range(), (1e-5, 1.0));
        assert_eq!(ve.prior_std(), 50.0);
        let ve = ve.with_eps(1e-3).unwrap();
        assert_eq!(ve.time_range(), (1e-3, 1.0));
        assert_eq!((ve.sigma_min(), ve.sigma_max()), (0.01, 50.0));
    }

    #[test]
    fn marginal_values() {
        let ve = VeSde::cifar10();
        assert_eq!(ve.marginal(0.0), Marginal { scale: 1.0, std: 0.0 });
        for t in [1e-5, 1e-3, 0.1, 0.5, 1.0] {
            let sigma = 0.01 * 5000f64.powf(t);
            let m = ve.marginal(t);
            assert_eq!(m.scale, 1.0);
            assert_relative_eq!(m.std, (sigma * sigma - 1e-4).sqrt(), max_relative = 1e-9);
            assert_relative_eq!(ve.sigma(t), sigma, max_relative = 1e-12);
        }
        // The small-t end: std ≈ σ_min √(2t ln(σ_max/σ_min)), accurate where σ² − σ_min² is not.
        let t = 1e-12;
        assert_relative_eq!(
            ve.marginal(t).std,
            0.01 * (2.0 * t * 5000f64.ln()).sqrt(),
            max_relative = 1e-9
        );
        assert_relative_eq!(ve.marginal(1.0).std, 50.0, max_relative = 1e-6);
        assert_relative_eq!(
            ve.diffusion(0.5),
            0.01 * 5000f64.sqrt() * (2.0 * 5000f64.ln()).sqrt(),
            max_relative = 1e-12
        );
    }

    #[test]
    fn grid_values() {
        let ve = VeSde::cifar10();
        let grid = ve.grid(1000).unwrap();
        assert_eq!(grid.len(), 1000);
        assert_eq!((grid[0], grid[999]), (1.0, 1e-5));
        assert!(grid.windows(2).all(|w| w[1] < w[0]));
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences.
    #[test]
    fn satisfies_variance_ode() {
        let ve = VeSde::cifar10();
        let h = 1e-6;
        for t in [0.01, 0.1, 0.37, 0.5, 0.9, 0.99] {
            let (lo, mid, hi) = (ve.marginal(t - h), ve.marginal(t), ve.marginal(t + h));
            let f = ve.drift_coefficient(t);
            let g = ve.diffusion(t);
            let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
            assert_relative_eq!(dvar, 2.0 * f * mid.std * mid.std + g * g, max_relative = 1e-6);
            let dscale = (hi.scale - lo.scale) / (2.0 * h);
            assert_relative_eq!(dscale, f * mid.scale, epsilon = 1e-8);
        }
    }
}
