//! The sub-VP SDE of score SDE (Song et al. 2021): the VP drift with a smaller diffusion, so
//! that the variance stays below the VP one at every time.
//!
//! With `β(t) = β_min + t (β_max − β_min)` and `B(t) = ∫₀ᵗ β = β_min t + ½ t² (β_max − β_min)`:
//!
//! ```text
//! dx = −½ β(t) x dt + √(β(t) (1 − exp(−2B(t)))) dw,
//! f(t) = −½ β(t),   g(t) = √(β(t) · (−expm1(−2B(t)))),
//! m(t) = exp(−½ B(t)),   std(t) = 1 − exp(−B(t)) = −expm1(−B(t)),
//! ```
//!
//! i.e. variance `(1 − e^{−B})²`, for `t ∈ [ε, 1]`; the prior is `N(0, I)`. The parameters and
//! their validation are those of [`VpSde`].

use crate::error::Result;
use crate::schedule::{Marginal, NoiseSchedule, VpSde};

/// The sub-VP SDE `dx = −½ β(t) x dt + √(β(t)(1 − e^{−2∫β})) dw` with the linear rate of
/// [`VpSde`], `t ∈ [ε, 1]`, and marginal `N(e^{−½∫β} x₀, (1 − e^{−∫β})² I)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubVpSde {
    vp: VpSde,
}

impl SubVpSde {
    /// A sub-VP SDE with rate `β(t)` rising linearly from `beta_min` to `beta_max`,
    /// `ε = 1e-3`.
    ///
    /// Errors with [`Error::InvalidParameter`](crate::error::Error::InvalidParameter) unless
    /// `0 < beta_min ≤ beta_max`, both finite.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        Ok(Self { vp: VpSde::new(beta_min, beta_max)? })
    }

    /// score_sde's defaults: `β_min = 0.1`, `β_max = 20`, `ε = 1e-3`.
    pub fn ddpm() -> Self {
        Self { vp: VpSde::ddpm() }
    }

    /// The same SDE with smallest time `eps`; errors unless `0 < eps < 1`.
    pub fn with_eps(self, eps: f64) -> Result<Self> {
        Ok(Self { vp: self.vp.with_eps(eps)? })
    }

    /// The VP SDE with the same rate `β(t)` (same drift and mean, larger variance).
    pub fn vp(&self) -> &VpSde {
        &self.vp
    }

    /// `β_min = β(0)`.
    pub fn beta_min(&self) -> f64 {
        self.vp.beta_min()
    }

    /// `β_max = β(1)`.
    pub fn beta_max(&self) -> f64 {
        self.vp.beta_max()
    }

    /// The smallest time `ε` samplers and objectives use.
    pub fn eps(&self) -> f64 {
        self.vp.eps()
    }

    /// The rate `β(t) = β_min + t (β_max − β_min)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.vp.beta(t)
    }

    /// The integrated rate `B(t) = ∫₀ᵗ β`.
    pub fn integrated_beta(&self, t: f64) -> f64 {
        self.vp.integrated_beta(t)
    }
}

impl NoiseSchedule for SubVpSde {
    /// `(ε, 1)`.
    fn time_range(&self) -> (f64, f64) {
        self.vp.time_range()
    }

    /// `{ scale: exp(−½ B(t)), std: −expm1(−B(t)) }` (defined for `t ≥ 0`).
    fn marginal(&self, t: f64) -> Marginal {
        let b = self.integrated_beta(t);
        Marginal { scale: (-0.5 * b).exp(), std: -(-b).exp_m1() }
    }

    /// `f(t) = −½ β(t)`, as for VP.
    fn drift_coefficient(&self, t: f64) -> f64 {
        self.vp.drift_coefficient(t)
    }

    /// `g(t) = √(β(t) · (−expm1(−2B(t))))`.
    fn diffusion(&self, t: f64) -> f64 {
        (self.beta(t) * -(-2.0 * self.integrated_beta(t)).exp_m1()).sqrt()
    }

    /// `1`.
    fn prior_std(&self) -> f64 {
        1.0
    }

    /// `linspace(1, ε, n)`; `n ≥ 2`.
    fn grid(&self, n: usize) -> Result<Vec<f64>> {
        self.vp.grid(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<SubVpSde>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_finite_beta_min() {
        assert_eq!(invalid_name(SubVpSde::new(f64::NAN, 20.0)), "beta_min");
        assert_eq!(invalid_name(SubVpSde::new(f64::NEG_INFINITY, 20.0)), "beta_min");
    }

    #[test]
    fn rejects_non_positive_beta_min() {
        assert_eq!(invalid_name(SubVpSde::new(0.0, 20.0)), "beta_min");
        assert_eq!(invalid_name(SubVpSde::new(-0.1, 20.0)), "beta_min");
    }

    #[test]
    fn rejects_non_finite_beta_max() {
        assert_eq!(invalid_name(SubVpSde::new(0.1, f64::NAN)), "beta_max");
        assert_eq!(invalid_name(SubVpSde::new(0.1, f64::INFINITY)), "beta_max");
    }

    #[test]
    fn rejects_non_positive_beta_max() {
        assert_eq!(invalid_name(SubVpSde::new(0.1, 0.0)), "beta_max");
        assert_eq!(invalid_name(SubVpSde::new(0.1, -1.0)), "beta_max");
    }

    #[test]
    fn rejects_beta_min_above_beta_max() {
        assert_eq!(invalid_name(SubVpSde::new(20.0, 0.1)), "beta_min");
    }

    #[test]
    fn rejects_bad_eps() {
        let s = SubVpSde::ddpm();
        for eps in [0.0, -1e-3, 1.0, f64::NAN] {
            assert_eq!(invalid_name(s.with_eps(eps)), "eps", "eps = {eps}");
        }
    }

    #[test]
    fn rejects_too_small_grid() {
        assert!(matches!(SubVpSde::ddpm().grid(1), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn defaults() {
        let s = SubVpSde::ddpm();
        assert_eq!(s, SubVpSde::new(0.1, 20.0).unwrap());
        assert_eq!((s.beta_min(), s.beta_max(), s.eps()), (0.1, 20.0, 1e-3));
        assert_eq!(s.time_range(), (1e-3, 1.0));
        assert_eq!(s.prior_std(), 1.0);
        assert_eq!(s.grid(7).unwrap(), VpSde::ddpm().grid(7).unwrap());
    }

    #[test]
    fn std_at_half() {
        let s = SubVpSde::new(0.1, 20.0).unwrap();
        let m = s.marginal(0.5);
        assert_relative_eq!(m.std, 0.920936, max_relative = 1e-5);
        assert_relative_eq!(m.scale, 0.281183, max_relative = 1e-5);
    }

    #[test]
    fn marginal_values() {
        let s = SubVpSde::ddpm();
        let vp = VpSde::ddpm();
        assert_eq!(s.marginal(0.0), Marginal { scale: 1.0, std: 0.0 });
        for t in [1e-3, 0.1, 0.5, 1.0] {
            let e = (-s.integrated_beta(t)).exp();
            let (m, mvp) = (s.marginal(t), vp.marginal(t));
            assert_eq!(m.scale, mvp.scale);
            assert_relative_eq!(m.std, 1.0 - e, max_relative = 1e-10);
            // The variance never exceeds the VP one: (1 − e)² ≤ 1 − e.
            assert!(m.std <= mvp.std);
            assert_relative_eq!(
                s.diffusion(t),
                (s.beta(t) * (1.0 - e * e)).sqrt(),
                max_relative = 1e-10
            );
        }
        // Small t: std ≈ β_min t, where 1 − exp(−B) would lose all digits.
        assert_relative_eq!(s.marginal(1e-14).std, 0.1e-14, max_relative = 1e-9);
        assert_eq!(s.diffusion(0.0), 0.0);
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences.
    #[test]
    fn satisfies_variance_ode() {
        let s = SubVpSde::ddpm();
        let h = 1e-6;
        for t in [0.01, 0.1, 0.37, 0.5, 0.9, 0.99] {
            let (lo, mid, hi) = (s.marginal(t - h), s.marginal(t), s.marginal(t + h));
            let f = s.drift_coefficient(t);
            let g = s.diffusion(t);
            let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
            assert_relative_eq!(dvar, 2.0 * f * mid.std * mid.std + g * g, max_relative = 1e-6);
            let dscale = (hi.scale - lo.scale) / (2.0 * h);
            assert_relative_eq!(dscale, f * mid.scale, max_relative = 1e-6);
        }
    }
}
