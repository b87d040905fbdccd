//! The variance-preserving (VP) SDE of score SDE (Song et al. 2021), the continuous limit of
//! DDPM's linear β schedule.
//!
//! ```text
//! β(t) = β_min + t (β_max − β_min),   B(t) = ∫₀ᵗ β = β_min t + ½ t² (β_max − β_min),
//! dx = −½ β(t) x dt + √β(t) dw:   f(t) = −½ β(t),   g(t) = √β(t),
//! m(t) = exp(−½ B(t)),   std(t) = √(1 − exp(−B(t))) = √(−expm1(−B(t))),
//! ```
//!
//! for `t ∈ [ε, 1]`; the prior is `N(0, I)`. Defaults (DDPM-equivalent): `β_min = 0.1`,
//! `β_max = 20`, `ε = 1e-3`. The discretisation with `N` steps,
//! `β_i = β_min/N + i/(N−1)·(β_max − β_min)/N`, is [`VpSde::discrete_betas`]; `N = 1000`
//! recovers DDPM's linear schedule 1e-4 → 0.02.

use crate::error::{Error, Result, ensure_less, ensure_positive};
use crate::schedule::{Marginal, NoiseSchedule, ensure_grid_len, linspace};

/// The variance-preserving SDE `dx = −½ β(t) x dt + √β(t) dw` with the linear rate
/// `β(t) = β_min + t (β_max − β_min)`, `t ∈ [ε, 1]`, and marginal
/// `N(exp(−½∫β) x₀, (1 − exp(−∫β)) I)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpSde {
    beta_min: f64,
    beta_max: f64,
    eps: f64,
}

impl VpSde {
    /// The default smallest time `ε = 1e-3`.
    pub const DEFAULT_EPS: f64 = 1e-3;

    /// A VP SDE with rate `β(t)` rising linearly from `beta_min` to `beta_max`, `ε = 1e-3`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `0 < beta_min ≤ beta_max`, both finite
    /// (`beta_min = beta_max` is a constant rate).
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        ensure_positive("beta_min", beta_min)?;
        ensure_positive("beta_max", beta_max)?;
        if beta_min > beta_max {
            return Err(Error::invalid(
                "beta_min",
                beta_min,
                format!("must be ≤ beta_max = {beta_max}"),
            ));
        }
        Ok(Self { beta_min, beta_max, eps: Self::DEFAULT_EPS })
    }

    /// score_sde's defaults, the continuous version of DDPM's linear schedule:
    /// `β_min = 0.1`, `β_max = 20`, `ε = 1e-3`.
    pub fn ddpm() -> Self {
        Self { beta_min: 0.1, beta_max: 20.0, eps: Self::DEFAULT_EPS }
    }

    /// The same SDE with smallest time `eps`; errors unless `0 < eps < 1`.
    pub fn with_eps(self, eps: f64) -> Result<Self> {
        ensure_positive("eps", eps)?;
        ensure_less("eps", eps, "t_max", 1.0)?;
        Ok(Self { eps, ..self })
    }

    /// `β_min = β(0)`.
    pub fn beta_min(&self) -> f64 {
        self.beta_min
    }

    /// `β_max = β(1)`.
    pub fn beta_max(&self) -> f64 {
        self.beta_max
    }

    /// The smallest time `ε` samplers and objectives use.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The rate `β(t) = β_min + t (β_max − β_min)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// The integrated rate `B(t) = ∫₀ᵗ β = β_min t + ½ t² (β_max − β_min)`.
    pub fn integrated_beta(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)
    }

    /// score_sde's discretisation into `n` steps:
    /// `β_i = β_min/N + i/(N−1)·(β_max − β_min)/N`, `i = 0..N−1`, so that
    /// `1 − β_i ≈ exp(−β(tᵢ)/N)`. `n = 1` gives `[β_min]`, `n = 0` an empty vector.
    pub fn discrete_betas(&self, n: usize) -> Vec<f64> {
        match n {
            0 => Vec::new(),
            1 => vec![self.beta_min],
            _ => {
                let nf = n as f64;
                linspace(self.beta_min / nf, self.beta_max / nf, n)
            }
        }
    }
}

impl NoiseSchedule for VpSde {
    /// `(ε, 1)`.
    fn time_range(&self) -> (f64, f64) {
        (self.eps, 1.0)
    }

    /// `{ scale: exp(−½ B(t)), std: √(−expm1(−B(t))) }`, accurate at small `t`
    /// (defined for `t ≥ 0`).
    fn marginal(&self, t: f64) -> Marginal {
        let b = self.integrated_beta(t);
        Marginal { scale: (-0.5 * b).exp(), std: (-(-b).exp_m1()).sqrt() }
    }

    /// `f(t) = −½ β(t)`.
    fn drift_coefficient(&self, t: f64) -> f64 {
        -0.5 * self.beta(t)
    }

    /// `g(t) = √β(t)`.
    fn diffusion(&self, t: f64) -> f64 {
        self.beta(t).sqrt()
    }

    /// `1`.
    fn prior_std(&self) -> f64 {
        1.0
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
    use approx::assert_relative_eq;

    fn invalid_name(result: Result<VpSde>) -> &'static str {
        match result {
            Err(Error::InvalidParameter { name, .. }) => name,
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_finite_beta_min() {
        assert_eq!(invalid_name(VpSde::new(f64::NAN, 20.0)), "beta_min");
        assert_eq!(invalid_name(VpSde::new(f64::INFINITY, 20.0)), "beta_min");
    }

    #[test]
    fn rejects_non_positive_beta_min() {
        assert_eq!(invalid_name(VpSde::new(0.0, 20.0)), "beta_min");
        assert_eq!(invalid_name(VpSde::new(-0.1, 20.0)), "beta_min");
    }

    #[test]
    fn rejects_non_finite_beta_max() {
        assert_eq!(invalid_name(VpSde::new(0.1, f64::NAN)), "beta_max");
        assert_eq!(invalid_name(VpSde::new(0.1, f64::INFINITY)), "beta_max");
    }

    #[test]
    fn rejects_non_positive_beta_max() {
        assert_eq!(invalid_name(VpSde::new(0.1, 0.0)), "beta_max");
        assert_eq!(invalid_name(VpSde::new(0.1, -20.0)), "beta_max");
    }

    #[test]
    fn rejects_beta_min_above_beta_max() {
        assert_eq!(invalid_name(VpSde::new(20.0, 0.1)), "beta_min");
        assert!(VpSde::new(1.0, 1.0).is_ok());
    }

    #[test]
    fn rejects_bad_eps() {
        let vp = VpSde::ddpm();
        for eps in [0.0, -1e-3, 1.0, 2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(invalid_name(vp.with_eps(eps)), "eps", "eps = {eps}");
        }
    }

    #[test]
    fn rejects_too_small_grid() {
        let vp = VpSde::ddpm();
        assert!(matches!(vp.grid(1), Err(Error::InvalidParameter { name: "n", .. })));
        assert!(matches!(vp.grid(0), Err(Error::InvalidParameter { name: "n", .. })));
    }

    #[test]
    fn defaults() {
        let vp = VpSde::ddpm();
        assert_eq!(vp, VpSde::new(0.1, 20.0).unwrap());
        assert_eq!((vp.beta_min(), vp.beta_max(), vp.eps()), (0.1, 20.0, 1e-3));
        assert_eq!(vp.time_range(), (1e-3, 1.0));
        assert_eq!(vp.prior_std(), 1.0);
        assert_eq!(vp.with_eps(1e-5).unwrap().time_range(), (1e-5, 1.0));
    }

    #[test]
    fn marginal_at_half() {
        let vp = VpSde::new(0.1, 20.0).unwrap();
        let m = vp.marginal(0.5);
        assert_relative_eq!(m.scale, 0.281183, max_relative = 1e-5);
        assert_relative_eq!(m.std, 0.959654, max_relative = 1e-5);
        assert_relative_eq!(m.scale * m.scale + m.std * m.std, 1.0, max_relative = 1e-14);
    }

    #[test]
    fn marginal_values() {
        let vp = VpSde::ddpm();
        assert_eq!(vp.marginal(0.0), Marginal { scale: 1.0, std: 0.0 });
        // The closed form of the reference: mean exp(−¼t²(β_max−β_min) − ½tβ_min).
        for t in [1e-3, 0.1, 0.5, 1.0] {
            let e = -0.25 * t * t * 19.9 - 0.5 * t * 0.1;
            let m = vp.marginal(t);
            assert_relative_eq!(m.scale, e.exp(), max_relative = 1e-13);
            assert_relative_eq!(m.std, (1.0 - (2.0 * e).exp()).sqrt(), max_relative = 1e-10);
        }
        // Small t: std² ≈ β_min t, where 1 − exp(−B) would lose all digits.
        let t = 1e-14;
        assert_relative_eq!(vp.marginal(t).std, (0.1 * t).sqrt(), max_relative = 1e-9);
        assert_relative_eq!(vp.beta(0.5), 10.05, max_relative = 1e-15);
        assert_relative_eq!(vp.drift_coefficient(0.5), -5.025, max_relative = 1e-15);
        assert_relative_eq!(vp.diffusion(0.5), 10.05f64.sqrt(), max_relative = 1e-15);
        assert_relative_eq!(vp.integrated_beta(1.0), 10.05, max_relative = 1e-15);
    }

    #[test]
    fn discrete_betas_match_ddpm_linear() {
        let vp = VpSde::ddpm();
        let betas = vp.discrete_betas(1000);
        assert_eq!(betas.len(), 1000);
        assert_relative_eq!(betas[0], 1e-4, max_relative = 1e-12);
        assert_relative_eq!(betas[999], 0.02, max_relative = 1e-12);
        assert_relative_eq!(betas[500], 1e-4 + 500.0 / 999.0 * 19.9e-3, max_relative = 1e-12);
        assert!(vp.discrete_betas(0).is_empty());
        assert_eq!(vp.discrete_betas(1), vec![0.1]);
    }

    #[test]
    fn grid_values() {
        let grid = VpSde::ddpm().grid(1000).unwrap();
        assert_eq!(grid.len(), 1000);
        assert_eq!((grid[0], grid[999]), (1.0, 1e-3));
        assert!(grid.windows(2).all(|w| w[1] < w[0]));
    }

    /// `d(std²)/dt = 2 f std² + g²` and `d(scale)/dt = f·scale`, by central differences.
    #[test]
    fn satisfies_variance_ode() {
        let vp = VpSde::ddpm();
        let h = 1e-6;
        for t in [0.01, 0.1, 0.37, 0.5, 0.9, 0.99] {
            let (lo, mid, hi) = (vp.marginal(t - h), vp.marginal(t), vp.marginal(t + h));
            let f = vp.drift_coefficient(t);
            let g = vp.diffusion(t);
            let dvar = (hi.std * hi.std - lo.std * lo.std) / (2.0 * h);
            assert_relative_eq!(dvar, 2.0 * f * mid.std * mid.std + g * g, max_relative = 1e-6);
            let dscale = (hi.scale - lo.scale) / (2.0 * h);
            assert_relative_eq!(dscale, f * mid.scale, max_relative = 1e-6);
        }
    }
}
