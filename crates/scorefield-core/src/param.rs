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
//!
//! A network with an exact JVP ([`NetworkJvp`]: `NcsnUnet` and `ScoreMlp`, from their dual
//! layers) makes every parameterisation an exact [`ScoreJvp`] (each score is affine in `F`
//! and `x` per sample), so exact score matching and the likelihood's exact divergence work
//! through them.

use burn::module::Module;
use burn::tensor::{DType, Tensor};

use crate::condition::{Condition, ConditionalScoreModel, Labels};
use crate::error::{Result, ensure_positive};
use crate::score::{NoiseLevel, ScoreJvp, ScoreModel, per_sample};

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

    /// As [`ScoreModel::validate`]: a conditional network used without its condition errors
    /// with [`Error::MissingCondition`](crate::Error::MissingCondition).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// A network conditioned per sample on `y` (class [`Labels`] by default): `F(x, level | y)`.
/// Every parameterisation of it is a [`ConditionalScoreModel`], by the formula it applies to
/// a [`Network`]; bind the condition with [`Given`](crate::condition::Given) to sample or train.
pub trait ConditionalNetwork<const D: usize, C: Condition = Labels> {
    /// `F(x, level | y)`, the same shape as `x`; `y` has one condition per sample.
    fn forward_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &C) -> Tensor<D>;

    /// As [`Network::sample_shape`].
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// As [`Network::float_dtype`].
    fn float_dtype(&self) -> Option<DType> {
        None
    }

    /// As [`ConditionalScoreModel::validate_condition`].
    fn validate_condition(&self, _y: &C) -> Result<()> {
        Ok(())
    }
}

/// A [`Network`] with its exact Jacobian-vector product `J_F(x)·v` (networks of dual layers):
/// every parameterisation of it is then a [`ScoreJvp`], exactly.
pub trait NetworkJvp<const D: usize>: Network<D> {
    /// `(F(x), J_F(x)·v)` for `K` tangents per sample, as [`ScoreJvp::score_jvp_many`]: `v`
    /// has batch `K·B`, row `k·B + b` the `k`-th direction for sample `b`.
    fn forward_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>)
    -> (Tensor<D>, Tensor<D>);
}

/// The per-sample values `c` (batch `B`) broadcast against the tangents `v` (batch `K·B`).
fn per_tangent<const D: usize>(c: &Tensor<1>, v: &Tensor<D>) -> Tensor<D> {
    let k = v.dims()[0] / c.dims()[0].max(1);
    per_sample::<D>(&c.clone().repeat_dim(0, k), v)
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

/// The level `(t, 1, σ/m)`.
fn tilde_level(level: &NoiseLevel) -> NoiseLevel {
    let sigma = level.sigma.clone().div(level.scale.clone());
    NoiseLevel { t: level.t.clone(), scale: level.scale.ones_like(), sigma }
}

impl<const D: usize, N: Network<D>> Network<D> for SigmaTilde<N> {
    /// `F(x, (t, 1, σ/m))`.
    fn forward(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        self.net.forward(x, &tilde_level(level))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }
    fn validate(&self) -> Result<()> {
        self.net.validate()
    }
}

impl<const D: usize, C: Condition, N: ConditionalNetwork<D, C>> ConditionalNetwork<D, C>
    for SigmaTilde<N>
{
    /// `F(x, (t, 1, σ/m) | y)`.
    fn forward_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &C) -> Tensor<D> {
        self.net.forward_given(x, &tilde_level(level), y)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.net.float_dtype()
    }

    fn validate_condition(&self, y: &C) -> Result<()> {
        self.net.validate_condition(y)
    }
}

impl<const D: usize, N: NetworkJvp<D>> NetworkJvp<D> for SigmaTilde<N> {
    fn forward_jvp(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        self.net.forward_jvp(x, &tilde_level(level), v)
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
        self.denoise_tilde(x, level, |x, level| self.net.forward(x, level)).1
    }

    /// The denoised estimate `D(x̃; σ̃ | y)` of a conditional network.
    pub fn denoise_given<const D: usize, C: Condition>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        y: &C,
    ) -> Tensor<D>
    where
        N: ConditionalNetwork<D, C>,
    {
        self.denoise_tilde(x, level, |x, level| self.net.forward_given(x, level, y)).1
    }

    /// `(x̃, D(x̃; σ̃), m, σ̃)`, the last two per sample, with the network's output `f`.
    fn denoise_tilde<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>, Tensor<D>) {
        let c = self.coefficients(level, x.dtype());
        let on = |c: &Tensor<1>| per_sample::<D>(c, &x);
        let (scale, sigma_b) = (on(&level.scale), on(&c.inner.sigma));
        let x_tilde = x.clone().div(scale.clone());
        let out = f(x_tilde.clone().mul(on(&c.c_in)), &c.inner);
        let denoised = x_tilde.clone().mul(on(&c.c_skip)) + out.mul(on(&c.c_out));
        (x_tilde, denoised, scale, sigma_b)
    }

    /// EDM's `c_skip`, `c_out`, `c_in` per sample (in `dtype`) and the level
    /// `(c_noise, 1, σ̃)` the network sees.
    fn coefficients(&self, level: &NoiseLevel, dtype: DType) -> Coefficients {
        let sd2 = self.sigma_data * self.sigma_data;
        let sigma = level.sigma.clone().cast(dtype).div(level.scale.clone().cast(dtype));
        let var = sigma.clone().square().add_scalar(sd2); // σ̃² + σ_d²
        Coefficients {
            c_skip: var.clone().recip().mul_scalar(sd2),
            c_out: sigma.clone().mul_scalar(self.sigma_data).div(var.clone().sqrt()),
            c_in: var.sqrt().recip(),
            inner: NoiseLevel {
                t: sigma.clone().clamp_min(1e-30).log().mul_scalar(0.25), // c_noise
                scale: sigma.ones_like(),
                sigma,
            },
        }
    }
}

/// EDM's preconditioning coefficients for a batch.
struct Coefficients {
    c_skip: Tensor<1>,
    c_out: Tensor<1>,
    c_in: Tensor<1>,
    inner: NoiseLevel,
}

/// How each parameterisation turns its network's output `f(x, level)` into a score; `f` is
/// the plain forward or the forward given a condition.
trait ScoreFromNetwork {
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D>;
}

impl<N> ScoreFromNetwork for ScorePrediction<N> {
    /// `s = F`.
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D> {
        f(x, level)
    }
}

impl<N> ScoreFromNetwork for EpsilonPrediction<N> {
    /// `s = −ε̂/σ`.
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D> {
        let sigma = per_sample::<D>(&level.sigma, &x);
        f(x, level).div(sigma).neg()
    }
}

impl<N> ScoreFromNetwork for DataPrediction<N> {
    /// `s = (m·x̂₀ − x)/σ²`.
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D> {
        let scale = per_sample::<D>(&level.scale, &x);
        let var = per_sample::<D>(&level.sigma, &x).square();
        f(x.clone(), level).mul(scale).sub(x).div(var)
    }
}

impl<N> ScoreFromNetwork for VPrediction<N> {
    /// `x̂₀ = (m·x/r − σ·v̂)/r`, `s = (m·x̂₀ − x)/σ²`, `r² = m² + σ²`.
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D> {
        let m = per_sample::<D>(&level.scale, &x);
        let sigma = per_sample::<D>(&level.sigma, &x);
        let r2 = m.clone().square() + sigma.clone().square();
        let v = f(x.clone(), level);
        let x0 =
            (x.clone().mul(m.clone()).div(r2.clone().sqrt()) - v.mul(sigma.clone())).div(r2.sqrt());
        x0.mul(m).sub(x).div(sigma.square())
    }
}

impl<N> ScoreFromNetwork for Preconditioned<N> {
    /// `s = (m·D − x)/σ² = (D − x̃)/(m·σ̃²)`.
    fn score_from<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        f: impl FnOnce(Tensor<D>, &NoiseLevel) -> Tensor<D>,
    ) -> Tensor<D> {
        let (x_tilde, denoised, scale, sigma) = self.denoise_tilde(x, level, f);
        denoised.sub(x_tilde).div(scale.mul(sigma.square()))
    }
}

/// Each parameterisation is a [`ScoreModel`] of a [`Network`] and a
/// [`ConditionalScoreModel`] of a [`ConditionalNetwork`], by the same formula.
macro_rules! score_models_of_networks {
    ($($ty:ident),*) => {$(
        impl<const D: usize, N: Network<D>> ScoreModel<D> for $ty<N> {
            fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
                self.score_from(x, level, |x, level| self.net.forward(x, level))
            }

            fn sample_shape(&self) -> Option<Vec<usize>> {
                self.net.sample_shape()
            }

            fn float_dtype(&self) -> Option<DType> {
                self.net.float_dtype()
            }

            fn validate(&self) -> Result<()> {
                self.net.validate()
            }
        }

        impl<const D: usize, C: Condition, N: ConditionalNetwork<D, C>>
            ConditionalScoreModel<D, C> for $ty<N>
        {
            fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &C) -> Tensor<D> {
                self.score_from(x, level, |x, level| self.net.forward_given(x, level, y))
            }

            fn sample_shape(&self) -> Option<Vec<usize>> {
                self.net.sample_shape()
            }

            fn float_dtype(&self) -> Option<DType> {
                self.net.float_dtype()
            }

            fn validate_condition(&self, y: &C) -> Result<()> {
                self.net.validate_condition(y)
            }
        }
    )*};
}

score_models_of_networks!(
    ScorePrediction,
    EpsilonPrediction,
    DataPrediction,
    VPrediction,
    Preconditioned
);

/// The JVPs of the parameterisations: each score is affine in `F` and `x` with per-sample
/// coefficients, so `J_s·v` follows from `J_F·v` exactly (same formulas, `x → v`, no offsets).
macro_rules! score_jvp_via_many {
    () => {
        fn score_jvp(
            &self,
            x: Tensor<D>,
            level: &NoiseLevel,
            v: Tensor<D>,
        ) -> (Tensor<D>, Tensor<D>) {
            self.score_jvp_many(x, level, v)
        }
    };
}

impl<const D: usize, N: NetworkJvp<D>> ScoreJvp<D> for ScorePrediction<N> {
    score_jvp_via_many!();

    /// `(F, J_F·v)`.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        self.net.forward_jvp(x, level, v)
    }
}

impl<const D: usize, N: NetworkJvp<D>> ScoreJvp<D> for EpsilonPrediction<N> {
    score_jvp_via_many!();

    /// `(−F/σ, −J_F·v/σ)`.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let (sigma, sigma_v) = (per_sample::<D>(&level.sigma, &x), per_tangent(&level.sigma, &v));
        let (f, jf) = self.net.forward_jvp(x, level, v);
        (f.div(sigma).neg(), jf.div(sigma_v).neg())
    }
}

impl<const D: usize, N: NetworkJvp<D>> ScoreJvp<D> for DataPrediction<N> {
    score_jvp_via_many!();

    /// `((m·F − x)/σ², (m·J_F·v − v)/σ²)`.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let (m, var) =
            (per_sample::<D>(&level.scale, &x), per_sample::<D>(&level.sigma, &x).square());
        let (m_v, var_v) = (per_tangent(&level.scale, &v), per_tangent(&level.sigma, &v).square());
        let (f, jf) = self.net.forward_jvp(x.clone(), level, v.clone());
        (f.mul(m).sub(x).div(var), jf.mul(m_v).sub(v).div(var_v))
    }
}

impl<const D: usize, N: NetworkJvp<D>> ScoreJvp<D> for VPrediction<N> {
    score_jvp_via_many!();

    /// `x̂₀ = (m·x/r − σ·F)/r`, `s = (m·x̂₀ − x)/σ²`, and the same with `x → v`, `F → J_F·v`.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let score = |x: Tensor<D>, f: Tensor<D>, m: Tensor<D>, sigma: Tensor<D>| {
            let r2 = m.clone().square() + sigma.clone().square();
            let x0 = (x.clone().mul(m.clone()).div(r2.clone().sqrt()) - f.mul(sigma.clone()))
                .div(r2.sqrt());
            x0.mul(m).sub(x).div(sigma.square())
        };
        let (m, sigma) = (per_sample::<D>(&level.scale, &x), per_sample::<D>(&level.sigma, &x));
        let (m_v, sigma_v) = (per_tangent(&level.scale, &v), per_tangent(&level.sigma, &v));
        let (f, jf) = self.net.forward_jvp(x.clone(), level, v.clone());
        (score(x, f, m, sigma), score(v, jf, m_v, sigma_v))
    }
}

impl<const D: usize, N: NetworkJvp<D>> ScoreJvp<D> for Preconditioned<N> {
    score_jvp_via_many!();

    /// With `ṽ = v/m`: `D' = c_skip·ṽ + c_out·J_F(c_in·x̃)·(c_in·ṽ)`, `s' = (D' − ṽ)/(m·σ̃²)`.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let c = self.coefficients(level, x.dtype());
        let on = |c: &Tensor<1>| per_sample::<D>(c, &x);
        let on_v = |c: &Tensor<1>| per_tangent(c, &v);
        let x_tilde = x.clone().div(on(&level.scale));
        let v_tilde = v.clone().div(on_v(&level.scale));
        let (f, jf) = self.net.forward_jvp(
            x_tilde.clone().mul(on(&c.c_in)),
            &c.inner,
            v_tilde.clone().mul(on_v(&c.c_in)),
        );
        let d = x_tilde.clone().mul(on(&c.c_skip)) + f.mul(on(&c.c_out));
        let dv = v_tilde.clone().mul(on_v(&c.c_skip)) + jf.mul(on_v(&c.c_out));
        let denom = level.scale.clone().cast(x.dtype()).mul(c.inner.sigma.clone().square());
        (d.sub(x_tilde).div(on(&denom)), dv.sub(v_tilde).div(on_v(&denom)))
    }
}
