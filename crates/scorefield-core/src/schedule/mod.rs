//! Noise schedules: how data is perturbed, as a forward SDE
//! `dx = f(t)·x dt + g(t) dw` with linear drift, and its Gaussian marginal
//! `p(xₜ | x₀) = N(m(t)·x₀, σ(t)² I)`.
//!
//! Time runs from `t = 0` (data) to `t = T` (the prior); grids and σ sequences are ordered from
//! the largest noise to the smallest, as samplers consume them. All table math is in f64.
//!
//! | schedule | file | `m(t)` | `σ(t)` |
//! | --- | --- | --- | --- |
//! | [`GeometricSigmas`] (NCSN) | `geometric.rs` | 1 | `σ_min (σ_max/σ_min)^t` |
//! | [`VeSde`] | `ve.rs` | 1 | `√(σ(t)² − σ(0)²)` |
//! | [`VpSde`] | `vp.rs` | `exp(−½∫β)` | `√(1 − exp(−∫β))` |
//! | [`SubVpSde`] | `sub_vp.rs` | `exp(−½∫β)` | `1 − exp(−∫β)` |
//! | [`Ddpm`] | `ddpm.rs` | `√ᾱₜ` | `√(1 − ᾱₜ)` |
//! | [`Karras`] (EDM) | `karras.rs` | 1 | `t` |
//!
//! Every schedule satisfies the variance ODE `dσ²/dt = 2 f(t) σ² + g(t)²` with
//! `m' = f·m`, which the tests check by numerical integration.

mod ddpm;
mod geometric;
mod karras;
mod sub_vp;
mod ve;
mod vp;

pub use ddpm::{BetaSchedule, Ddpm};
pub use geometric::GeometricSigmas;
pub use karras::Karras;
pub use sub_vp::SubVpSde;
pub use ve::VeSde;
pub use vp::VpSde;

use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::error::{Error, Result};
use crate::random::standard_normal;

/// The Gaussian perturbation kernel at one time: `xₜ = scale·x₀ + std·z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marginal {
    /// The mean coefficient `m(t)`.
    pub scale: f64,
    /// The standard deviation `σ(t)` of the added noise.
    pub std: f64,
}

/// A noise schedule: the forward process `dx = f(t)·x dt + g(t) dw` and its Gaussian
/// marginal `N(m(t)·x₀, σ(t)² I)`.
///
/// Implementors give [`time_range`](Self::time_range), [`marginal`](Self::marginal),
/// [`drift_coefficient`](Self::drift_coefficient), [`diffusion`](Self::diffusion),
/// [`prior_std`](Self::prior_std) and [`grid`](Self::grid); the tensor-valued methods are
/// provided. A user-defined schedule in another crate needs nothing else.
pub trait NoiseSchedule {
    /// `(t_min, t_max)`: the smallest time samplers and objectives use (ε, or the smallest
    /// discrete step) and the time of the prior `T`.
    fn time_range(&self) -> (f64, f64);

    /// The marginal `p(xₜ | x₀) = N(m(t)·x₀, σ(t)² I)`, computed in f64.
    fn marginal(&self, t: f64) -> Marginal;

    /// The linear drift coefficient `f(t)`, with `f(x, t) = f(t)·x`.
    fn drift_coefficient(&self, t: f64) -> f64;

    /// The diffusion coefficient `g(t)`.
    fn diffusion(&self, t: f64) -> f64;

    /// The standard deviation of the isotropic Gaussian prior `N(0, prior_std² I)` at `t = T`.
    fn prior_std(&self) -> f64;

    /// `n` times from the largest noise (`t_max`) to the smallest (`t_min`), as samplers
    /// consume them. Errors if `n` is too small for the schedule (or larger than a discrete
    /// schedule has steps).
    fn grid(&self, n: usize) -> Result<Vec<f64>>;

    /// The drift `f(x, t) = f(t)·x` and the diffusion `g(t)` of the forward SDE.
    fn drift_diffusion<const D: usize>(&self, x: Tensor<D>, t: f64) -> (Tensor<D>, f64)
    where
        Self: Sized,
    {
        (x.mul_scalar(self.drift_coefficient(t)), self.diffusion(t))
    }

    /// A sample of the prior `N(0, prior_std² I)` of the given shape, from host randomness.
    fn prior_sample<const D: usize, R: Rng + ?Sized>(
        &self,
        shape: [usize; D],
        device: &Device,
        rng: &mut R,
    ) -> Tensor<D>
    where
        Self: Sized,
    {
        standard_normal(shape, device, rng).mul_scalar(self.prior_std())
    }

    /// The prior log-density `log N(x; 0, prior_std² I)` of each sample of a batch `x` of
    /// shape `[B, ...]`, summed over all but the batch dimension.
    fn prior_log_prob<const D: usize>(&self, x: Tensor<D>) -> Tensor<1>
    where
        Self: Sized,
    {
        isotropic_log_prob(x, self.prior_std())
    }
}

/// `log N(x; 0, s² I)` per batch element of `x` (shape `[B, ...]`), summed over the rest.
pub fn isotropic_log_prob<const D: usize>(x: Tensor<D>, std: f64) -> Tensor<1> {
    let dims = x.dims();
    let batch = dims[0];
    let n: usize = dims[1..].iter().product();
    let norm = -0.5 * n as f64 * (2.0 * core::f64::consts::PI * std * std).ln();
    x.reshape([batch, n])
        .square()
        .sum_dim(1)
        .reshape([batch])
        .mul_scalar(-0.5 / (std * std))
        .add_scalar(norm)
}

/// `σ(t) = σ_min (σ_max/σ_min)^t`, the geometric noise scale of [`GeometricSigmas`] and
/// [`VeSde`].
pub(crate) fn geometric_sigma(sigma_min: f64, sigma_max: f64, t: f64) -> f64 {
    sigma_min * (t * (sigma_max / sigma_min).ln()).exp()
}

/// `g(t) = σ(t) √(2 ln(σ_max/σ_min))`, the diffusion that makes `σ(t)²` the variance
/// growth of a variance-exploding SDE (`d σ²/dt = g²`).
pub(crate) fn geometric_diffusion(sigma_min: f64, sigma_max: f64, t: f64) -> f64 {
    geometric_sigma(sigma_min, sigma_max, t) * (2.0 * (sigma_max / sigma_min).ln()).sqrt()
}

/// `n` equally spaced values from `start` to `end` inclusive (`n ≥ 2`), the ends exact.
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i + 1 == n { end } else { start + step * i as f64 }).collect()
}

/// Validates a grid size: at least `min` points.
pub(crate) fn ensure_grid_len(n: usize, min: usize) -> Result<()> {
    if n < min {
        Err(Error::invalid("n", n, format!("a grid needs at least {min} points")))
    } else {
        Ok(())
    }
}
