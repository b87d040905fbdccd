//! Geometric σ levels, the noise scales of NCSN (Song & Ermon 2019).
//!
//! The `L` discrete levels are
//!
//! ```text
//! σ_i = exp(linspace(ln σ_max, ln σ_min, L))_i,   i = 0..L−1,  largest first,
//! ```
//!
//! so consecutive levels have the constant ratio `(σ_min/σ_max)^{1/(L−1)}`. As a
//! [`NoiseSchedule`] the levels are embedded in continuous time `t ∈ [0, 1]`:
//!
//! ```text
//! σ(t) = σ_min (σ_max/σ_min)^t,     level i sits at t_i = 1 − i/(L−1),
//! m(t) = 1,   std(t) = σ(t),
//! f(t) = 0,   g(t) = σ(t) √(2 ln(σ_max/σ_min)),
//! ```
//!
//! i.e. the perturbation is NCSN's `x̃ = x + σ z`. The std is `σ(t)` itself, not
//! `√(σ(t)² − σ_min²)`: this is NCSN's and score_sde's VE convention (see [`VeSde`](super::VeSde)
//! for the exact-variance variant). It still satisfies the variance ODE `dσ²/dt = g²`, since
//! `dσ(t)²/dt = 2 ln(σ_max/σ_min) σ(t)²`. The prior is `N(0, σ_max² I)`.

use crate::error::{Error, Result, ensure_less, ensure_positive};
use crate::schedule::{
    Marginal, NoiseSchedule, ensure_grid_len, geometric_diffusion, geometric_sigma, linspace,
};

/// NCSN's geometric sequence of `L` noise levels from `σ_max` down to `σ_min`, embedded in
/// continuous time `t ∈ [0, 1]` as `σ(t) = σ_min (σ_max/σ_min)^t` with marginal
/// `N(x₀, σ(t)² I)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeometricSigmas {
    sigma_min: f64,
    sigma_max: f64,
    levels: usize,
}

impl GeometricSigmas {
    /// `L = levels` geometric noise levels from `sigma_max` down to `sigma_min` (arguments in
    /// the order `(σ_min, σ_max)`, as for every schedule).
    ///
    /// Errors with [`Error::InvalidParameter`] unless `0 < sigma_min < sigma_max` (both
    /// finite) and `levels ≥ 2`.
    pub fn new(sigma_min: f64, sigma_max: f64, levels: usize) -> Result<Self> {
        ensure_positive("sigma_min", sigma_min)?;
        ensure_positive("sigma_max", sigma_max)?;
        ensure_less("sigma_min", sigma_min, "sigma_max", sigma_max)?;
        if levels < 2 {
            return Err(Error::invalid("levels", levels, "at least 2 noise levels are needed"));
        }
        Ok(Self { sigma_min, sigma_max, levels })
    }

    /// NCSN's defaults: σ from 1 down to 0.01 in 10 levels.
    pub fn ncsn() -> Self {
        Self { sigma_min: 0.01, sigma_max: 1.0, levels: 10 }
    }

    /// The smallest noise level `σ_min`.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    /// The largest noise level `σ_max`.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    /// The number of discrete levels `L`.
    pub fn levels(&self) -> usize {
        self.levels
    }

    /// The continuous noise scale `σ(t) = σ_min (σ_max/σ_min)^t`.
    pub fn sigma(&self, t: f64) -> f64 {
        geometric_sigma(self.sigma_min, self.sigma_max, t)
    }

    /// The `L` noise levels `exp(linspace(ln σ_max, ln σ_min, L))`, largest first; the first
    /// and last entries are exactly `σ_max` and `σ_min`.
    pub fn sigmas(&self) -> Vec<f64> {
        let mut sigmas: Vec<f64> = linspace(self.sigma_max.ln(), self.sigma_min.ln(), self.levels)
            .into_iter()
            .map(f64::exp)
            .collect();
        sigmas[0] = self.sigma_max;
        sigmas[self.levels - 1] = self.sigma_min;
        sigmas
    }

    /// The continuous time `1 − i/(L−1)` of level `i` (level 0 at `t = 1`, level `L−1` at
    /// `t = 0`). Meaningful for `i < L`.
    pub fn time_of_level(&self, i: usize) -> f64 {
        1.0 - i as f64 / (self.levels - 1) as f64
    }
}

impl NoiseSchedule for GeometricSigmas {
    /// `(0, 1)`.
    fn time_range(&self) -> (f64, f64) {
        (0.0, 1.0)
    }

    /// `{ scale: 1, std: σ(t) }`.
    fn marginal(&self, t: f64) -> Marginal {
        Marginal { scale: 1.0, std: self.sigma(t) }
    }

    /// `0`: the process is variance exploding.
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

    /// `linspace(1, 0, n)`, so that `σ` runs geometrically from `σ_max` to `σ_min`; `n ≥ 2`.
    fn grid(&self, n: usize) -> Result<Vec<f64>> {
        ensure_grid_len(n, 2)?;
        Ok(linspace(1.0, 0.0, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<GeometricSigmas>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_finite_sigma_max() {
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, f64::NAN, 10)), "sigma_max");
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, f64::INFINITY, 10)), "sigma_max");
    }

    #[test]
    fn rejects_non_positive_sigma_max() {
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, 0.0, 10)), "sigma_max");
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, -1.0, 10)), "sigma_max");
    }

    #[test]
    fn rejects_non_finite_sigma_min() {
        assert_eq!(invalid_name(GeometricSigmas::new(f64::NAN, 1.0, 10)), "sigma_min");
        assert_eq!(invalid_name(GeometricSigmas::new(f64::NEG_INFINITY, 1.0, 10)), "sigma_min");
    }

    #[test]
    fn rejects_non_positive_sigma_min() {
        assert_eq!(invalid_name(GeometricSigmas::new(0.0, 1.0, 10)), "sigma_min");
        assert_eq!(invalid_name(GeometricSigmas::new(-0.01, 1.0, 10)), "sigma_min");
    }

    #[test]
    fn rejects_sigma_min_not_below_sigma_max() {
        assert_eq!(invalid_name(GeometricSigmas::new(1.0, 1.0, 10)), "sigma_min");
        assert_eq!(invalid_name(GeometricSigmas::new(1.0, 0.01, 10)), "sigma_min");
    }

    #[test]
    fn rejects_fewer_than_two_levels() {
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, 1.0, 1)), "levels");
        assert_eq!(invalid_name(GeometricSigmas::new(0.01, 1.0, 0)), "levels");
    }

    #[test]
    fn rejects_too_small_grid() {
        let s = GeometricSigmas::ncsn();
        assert!(matches!(s.grid(1), Err(Error::InvalidParameter { name: "n", .. })));
        assert!(matches!(s.grid(0), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn ncsn_matches_new() {
        assert_eq!(GeometricSigmas::ncsn(), GeometricSigmas::new(0.01, 1.0, 10).unwrap());
    }

    #[test]
    fn ncsn_sigmas_are_geometric() {
        let s = GeometricSigmas::ncsn();
        let sigmas = s.sigmas();
        assert_eq!(sigmas.len(), 10);
        assert_eq!(sigmas[0], 1.0);
        assert_eq!(sigmas[9], 0.01);
        let ratio = 0.01f64.powf(1.0 / 9.0);
        for w in sigmas.windows(2) {
            assert_relative_eq!(w[1] / w[0], ratio, max_relative = 1e-12);
        }
    }

    #[test]
    fn ncsnv2_cifar10_sigmas() {
        let s = GeometricSigmas::new(0.01, 50.0, 232).unwrap();
        let sigmas = s.sigmas();
        assert_eq!(sigmas.len(), 232);
        assert_eq!((sigmas[0], sigmas[231]), (50.0, 0.01));
        assert!(sigmas.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn marginal_on_grid_equals_sigmas() {
        for s in [GeometricSigmas::ncsn(), GeometricSigmas::new(0.01, 50.0, 232).unwrap()] {
            let grid = s.grid(s.levels()).unwrap();
            let sigmas = s.sigmas();
            for (i, (&t, &sigma)) in grid.iter().zip(&sigmas).enumerate() {
                assert_relative_eq!(t, s.time_of_level(i), epsilon = 1e-15);
                let m = s.marginal(t);
                assert_eq!(m.scale, 1.0);
                assert_relative_eq!(m.std, sigma, max_relative = 1e-12);
            }
        }
    }

    #[test]
    fn time_of_level_endpoints() {
        let s = GeometricSigmas::ncsn();
        assert_eq!(s.time_of_level(0), 1.0);
        assert_eq!(s.time_of_level(9), 0.0);
        assert_relative_eq!(s.time_of_level(3), 2.0 / 3.0, max_relative = 1e-15);
    }

    #[test]
    fn trait_values() {
        let s = GeometricSigmas::ncsn();
        assert_eq!(s.time_range(), (0.0, 1.0));
        assert_eq!(s.prior_std(), 1.0);
        assert_eq!(s.drift_coefficient(0.3), 0.0);
        assert_relative_eq!(s.marginal(1.0).std, 1.0, max_relative = 1e-14);
        assert_relative_eq!(s.marginal(0.0).std, 0.01, max_relative = 1e-14);
        assert_relative_eq!(s.marginal(0.5).std, 0.1, max_relative = 1e-14);
        assert_relative_eq!(
            s.diffusion(0.5),
            0.1 * (2.0 * 100f64.ln()).sqrt(),
            max_relative = 1e-14
        );
        let grid = s.grid(5).unwrap();
        assert_eq!(grid, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences.
    #[test]
    fn satisfies_variance_ode() {
        let s = GeometricSigmas::new(0.01, 50.0, 232).unwrap();
        let h = 1e-6;
        for t in [0.01, 0.1, 0.37, 0.5, 0.9, 0.99] {
            let (lo, mid, hi) = (s.marginal(t - h), s.marginal(t), s.marginal(t + h));
            let f = s.drift_coefficient(t);
            let g = s.diffusion(t);
            let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
            assert_relative_eq!(dvar, 2.0 * f * mid.std * mid.std + g * g, max_relative = 1e-6);
            let dscale = (hi.scale - lo.scale) / (2.0 * h);
            assert_relative_eq!(dscale, f * mid.scale, epsilon = 1e-8);
        }
    }
}
