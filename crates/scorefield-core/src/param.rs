//! Parameterisations as trainable Burn modules: what a network's raw output means.
//!
//! A [`Network`] computes a raw output `F(x, level)`; a parameterisation wraps it into a
//! [`ScoreModel`] (and derives [`Module`], so the trainer and the optimiser train through it).
//! With `xₜ = m·x₀ + σ·z`, `σ̃ = σ/m`, `x̃ = x/m`:
//!
//! ```text
//! ScorePrediction   s = F(x, level)
//! EpsilonPrediction ε̂ = F(x, level),                s = −ε̂/σ                      (DDPM)
//! DataPrediction    x̂₀ = F(x, level),               s = (m·x̂₀ − x)/σ²             (denoiser)
//! VPrediction       v̂ = F(x, level),                x̂₀ = a·x/r − b·v̂,  a = m/r, b = σ/r, r = √(m² + σ²)
//!                                                   (Salimans & Ho 2022; r = 1 on VP schedules)
//! Preconditioned    D(x̃; σ̃) = c_skip·x̃ + c_out·F(c_in·x̃; c_noise),   s = (m·D − x)/σ²   (EDM)
//!                   c_skip = σ_d²/(σ̃² + σ_d²), c_out = σ̃·σ_d/√(σ̃² + σ_d²),
//!                   c_in = 1/√(σ̃² + σ_d²),     c_noise = ¼·ln σ̃
//! ```
//!
//! [`Preconditioned`] is EDM's σ-parameterisation (Karras et al. 2022, Table 1): the network
//! sees the scale-free state `x̃ = x/m` at the level `σ̃ = σ/m`, so one network trained on
//! any schedule serves VE-form and VP-form solvers alike. It hands the network the level
//! `t = c_noise`, `m = 1`, `σ = σ̃`: a network conditioned on `ln σ` sees `ln σ̃ = 4·c_noise`,
//! one conditioned on `t` sees `c_noise`. [`SigmaTilde`] conditions any network on `σ̃`
//! without preconditioning it.

use burn::module::Module;
use burn::tensor::{DType, Tensor};

use crate::error::{Result, ensure_positive};
use crate::score::{NoiseLevel, ScoreModel, per_sample};

/// A network's raw output `F(x, level)`, the same shape as `x`; a parameterisation says what
/// it means.
pub trait Network<const D: usize> {
    /// `F(x, level)`.
    fn forward(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D>;

    /// The shape of one sample, if fixed (as [`ScoreModel::sample_shape`]).
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// The float type of the network's parameters, if fixed (as [`ScoreModel::float_dtype`]).
    fn float_dtype(&self) -> Option<DType> {
        None
    }
}

/// `s = F(x, level)`: the network predicts the score.
#[derive(Module, Debug)]
pub struct ScorePrediction<N> {
    /// The network.
    pub net: N,
}

/// `s = −F(x, level)/σ`: the network predicts the noise `ε` (DDPM).
#[derive(Module, Debug)]
pub struct EpsilonPrediction<N> {
    /// The network.
    pub net: N,
}

/// `s = (m·F(x, level) − x)/σ²`: the network predicts the clean data `x₀`.
#[derive(Module, Debug)]
pub struct DataPrediction<N> {
    /// The network.
    pub net: N,
}

/// `x̂₀ = a·x/r − b·F(x, level)` with `r = √(m² + σ²)`, `a = m/r`, `b = σ/r`: the network
/// predicts `v = a·ε − b·x₀` (Salimans & Ho 2022).
#[derive(Module, Debug)]
pub struct VPrediction<N> {
    /// The network.
    pub net: N,
}

/// A network conditioned in the σ-parameterisation: it sees the level `σ̃ = σ/m`, `m = 1`
/// (the same `t`) and the state `x` unchanged. `ln σ̃ = −½ log SNR` spreads a VP chain's steps
/// evenly where `ln σ` would squeeze its noisy half near 0 (DDPM's last 500 of 1000 steps
/// have `ln σ ∈ [−0.04, 0]`); wrap the network in it and the parameterisation around it,
/// e.g. `EpsilonPrediction { net: SigmaTilde { net } }`.
#[derive(Module, Debug)]
pub struct SigmaTilde<N> {
    /// The network.
    pub net: N,
}

impl<const D: usize, N: Network<D>> Network<D> for SigmaTilde<N> {
    /// `F(x, (t, 1, σ/m))`.
    fn forward(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let sigma = level.sigma.clone().div(level.scale.clone());
        let tilde = NoiseLevel { t: level.t.clone(), scale: level.scale.ones_like(), sigma };
        self.net.forward(x, &tilde)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}

/// EDM's preconditioned denoiser `D = c_skip·x̃ + c_out·F(c_in·x̃; c_noise)` (Karras et al.
/// 2022), in the σ-parameterisation (module documentation).
#[derive(Module, Debug)]
pub struct Preconditioned<N> {
    /// The network `F`.
    pub net: N,
    sigma_data: f64,
}

impl<N> Preconditioned<N> {
    /// EDM's preconditioning of `net` for data of standard deviation `σ_data` (EDM: 0.5).
    ///
    /// Errors with [`Error::InvalidParameter`](crate::Error::InvalidParameter) unless
    /// `σ_data > 0` and finite.
    pub fn new(net: N, sigma_data: f64) -> Result<Self> {
        Ok(Preconditioned { net, sigma_data: ensure_positive("sigma_data", sigma_data)? })
    }

    /// `σ_data`.
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data
    }

    /// The denoised estimate `D(x̃; σ̃)` for `x̃ = x/m`, `σ̃ = σ/m`.
    pub fn denoise<const D: usize>(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D>
    where
        N: Network<D>,
    {
        self.denoise_tilde(x, level).1
    }

    /// `(x̃, D(x̃; σ̃), m, σ̃)`, the last two per sample.
    fn denoise_tilde<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>, Tensor<D>)
    where
        N: Network<D>,
    {
        let sd2 = self.sigma_data * self.sigma_data;
        let scale = per_sample::<D>(&level.scale, &x);
        let sigma = level.sigma.clone().cast(x.dtype()).div(level.scale.clone().cast(x.dtype()));
        let var = sigma.clone().square().add_scalar(sd2); // σ̃² + σ_d²
        let c_skip = per_sample::<D>(&var.clone().recip().mul_scalar(sd2), &x);
        let c_out =
            per_sample::<D>(&sigma.clone().mul_scalar(self.sigma_data).div(var.clone().sqrt()), &x);
        let c_in = per_sample::<D>(&var.sqrt().recip(), &x);
        let c_noise = sigma.clone().clamp_min(1e-30).log().mul_scalar(0.25);
        let sigma_b = per_sample::<D>(&sigma, &x);
        let inner = NoiseLevel { t: c_noise, scale: sigma.ones_like(), sigma };
        let x_tilde = x.div(scale.clone());
        let out = self.net.forward(x_tilde.clone().mul(c_in), &inner);
        let denoised = x_tilde.clone().mul(c_skip) + out.mul(c_out);
        (x_tilde, denoised, scale, sigma_b)
    }
}

impl<const D: usize, N: Network<D>> ScoreModel<D> for ScorePrediction<N> {
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        self.net.forward(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}

impl<const D: usize, N: Network<D>> ScoreModel<D> for EpsilonPrediction<N> {
    /// `s = −ε̂/σ`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let sigma = per_sample::<D>(&level.sigma, &x);
        self.net.forward(x, level).div(sigma).neg()
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}

impl<const D: usize, N: Network<D>> ScoreModel<D> for DataPrediction<N> {
    /// `s = (m·x̂₀ − x)/σ²`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let scale = per_sample::<D>(&level.scale, &x);
        let var = per_sample::<D>(&level.sigma, &x).square();
        self.net.forward(x.clone(), level).mul(scale).sub(x).div(var)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}

impl<const D: usize, N: Network<D>> ScoreModel<D> for VPrediction<N> {
    /// `x̂₀ = (m·x/r − σ·v̂)/r`, `s = (m·x̂₀ − x)/σ²`, `r² = m² + σ²`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let m = per_sample::<D>(&level.scale, &x);
        let sigma = per_sample::<D>(&level.sigma, &x);
        let r2 = m.clone().square() + sigma.clone().square();
        let v = self.net.forward(x.clone(), level);
        let x0 =
            (x.clone().mul(m.clone()).div(r2.clone().sqrt()) - v.mul(sigma.clone())).div(r2.sqrt());
        x0.mul(m).sub(x).div(sigma.square())
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}

impl<const D: usize, N: Network<D>> ScoreModel<D> for Preconditioned<N> {
    /// `s = (m·D − x)/σ² = (D − x̃)/(m·σ̃²)`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let (x_tilde, denoised, scale, sigma) = self.denoise_tilde(x, level);
        denoised.sub(x_tilde).div(scale.mul(sigma.square()))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
}
