//! Exact log-likelihoods of a score model through its probability-flow ODE, and bits/dim.
//!
//! Along the ODE `dx/dt = f̃(x, t) = f(t)·x − ½ g(t)² s(x, t)` the log-density changes by the
//! instantaneous change of variables `d log pₜ(xₜ)/dt = −∇·f̃(xₜ, t)`, so
//!
//! ```text
//! log p_ε(x_ε) = log p_T(x_T) + ∫_ε^T ∇·f̃(xₜ, t) dt,   ∇·f̃ = f(t)·D − ½ g(t)² tr(∂s/∂x),
//! ```
//!
//! with `D` the number of elements of a sample. [`log_likelihood`] integrates the augmented
//! state `(x, ∫ ∇·f̃)` from `ε` to `T` with an [`OdeSolver`] and evaluates the prior
//! `log p_T = log N(x_T; 0, prior_std² I)` at the end, as score_sde does. The trace is
//! exact ([`Divergence::Exact`], `D` probes `e₁…e_D`) or Hutchinson's unbiased estimate
//! ([`Divergence::Hutchinson`], `E_v[vᵀ J v] = tr J` for probes with `E[v vᵀ] = I`, one fixed
//! probe set per solve, so the estimate of the whole integral is unbiased too).
//!
//! The quadratic forms `uᵀ J u` come from a [`JacobianProbe`]: every [`ScoreJvp`] model
//! (forward mode, `uᵀ(J u)`), or any [`ScoreModel`] wrapped in [`Vjp`] (reverse mode,
//! `(Jᵀu)ᵀ u` from one first-order backward pass of Burn's autodiff). Both evaluate all probes
//! of all samples in one model call on a `K`-times larger batch.
//!
//! [`DataScaling`] turns the density of dequantised, rescaled data into bits per dimension of
//! the discrete data.

use burn::tensor::{Tensor, TensorData};
use rand::{Rng, RngCore};

use crate::error::{Error, Result, ensure_finite};
use crate::random::{rademacher, standard_normal};
use crate::sampler::ode::{
    Direction, OdeSolver, SolveStats, Stage, check_input, flat_dims, integrate, velocity_from_score,
};
use crate::schedule::NoiseSchedule;
use crate::score::{NoiseLevel, ScoreJvp, ScoreModel, check_output};

/// The distribution of Hutchinson probes `v`, both with `E[v vᵀ] = I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `v ~ N(0, I)`: variance of `vᵀ J v` is `‖J‖²_F + tr(J²)` (for symmetric `J`: `2‖J‖²_F`).
    Gaussian,
    /// `v` uniform on `{−1, 1}^D`: variance `2 Σ_{i≠j} J_ij²` for symmetric `J`, zero for a
    /// diagonal Jacobian, never larger than the Gaussian one.
    Rademacher,
}

/// How the divergence `tr(∂s/∂x)` of the score is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// `tr J = Σᵢ eᵢᵀ J eᵢ` over the `D` basis vectors, evaluated as one model call on a
    /// `D`-times larger batch (memory grows as `B·D` samples: use Hutchinson for images).
    Exact,
    /// Hutchinson's estimate `(1/K) Σₖ vₖᵀ J vₖ` with `K = probes` probes per sample, drawn once
    /// per solve and held fixed along the trajectory.
    Hutchinson {
        /// The probe distribution.
        probe: Probe,
        /// The number of probes per sample `K` (`≥ 1`).
        probes: usize,
    },
}

/// A score model whose Jacobian `J = ∂s/∂x` can be probed along directions: it returns the
/// score and the quadratic forms `uᵀ J u`.
///
/// Implemented for every [`ScoreJvp`] model (forward mode) and for [`Vjp`]`<M>` around any
/// [`ScoreModel`] (reverse mode). Both assume, as every sampler does, that the score of a batch
/// element depends on that element only.
pub trait JacobianProbe<const D: usize>: ScoreModel<D> {
    /// For `x` with batch `B` and directions `u` with batch `K·B` (row `k·B + b` is the `k`-th
    /// direction of sample `b`), returns `s(x)` (batch `B`) and `u_rᵀ J_s(x_b) u_r` for each
    /// row `r = k·B + b` of `u` (shape `[K·B]`).
    fn score_and_quadratic_forms(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        u: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<1>)>;
}

/// Forward mode: `uᵀ (J u)` from [`ScoreJvp::score_jvp_many`].
impl<const D: usize, M: ScoreJvp<D>> JacobianProbe<D> for M {
    fn score_and_quadratic_forms(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        u: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<1>)> {
        let (score, jvp) = self.score_jvp_many(x, level, u.clone());
        check_output("score model output", &jvp, &u)?;
        Ok((score, row_dot(jvp, u)))
    }
}

/// Reverse mode for any [`ScoreModel`]: `uᵀ J u = (Jᵀ u)ᵀ u`, where `Jᵀ u` is the gradient of
/// `Σ s(x)·u` with respect to `x` from one backward pass of Burn's (first-order) autodiff.
///
/// The model runs on an autodiff copy of its input whatever the input's device, so it must
/// be built from differentiable tensor operations on `x` (no detaching, no host round
/// trips); otherwise [`JacobianProbe::score_and_quadratic_forms`] returns
/// [`Error::InvalidParameter`]. It costs one forward and one backward pass per evaluation,
/// against one dual-number forward pass for a [`ScoreJvp`] model.
#[derive(Debug, Clone)]
pub struct Vjp<M>(pub M);

impl<const D: usize, M: ScoreModel<D>> ScoreModel<D> for Vjp<M> {
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        self.0.score(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.0.sample_shape()
    }

    fn float_dtype(&self) -> Option<burn::tensor::DType> {
        self.0.float_dtype()
    }

    fn batch_size(&self) -> Option<usize> {
        self.0.batch_size()
    }

    fn validate(&self) -> crate::Result<()> {
        self.0.validate()
    }
}

impl<const D: usize, M: ScoreModel<D>> JacobianProbe<D> for Vjp<M> {
    fn score_and_quadratic_forms(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        u: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<1>)> {
        let b = x.dims()[0];
        let k = u.dims()[0] / b;
        let keep_autodiff = x.is_autodiff();
        let leaf = x.inner().repeat_dim(0, k).autodiff().require_grad();
        let u = u.inner();
        let score = self.0.score(leaf.clone(), &level.tile(k));
        check_output("score model output", &score, &leaf)?;
        let projection = score.clone().mul(u.clone()).sum();
        let not_differentiable = || {
            Error::invalid(
                "model",
                "Vjp",
                "the score is not differentiable with respect to x through Burn's autodiff \
                 (the model detaches or re-creates its input); use a ScoreJvp model",
            )
        };
        if !projection.is_tracked() {
            return Err(not_differentiable());
        }
        let grads = projection.backward();
        let vjp = leaf.grad(&grads).ok_or_else(not_differentiable)?;
        let score = score.narrow(0, 0, b).inner();
        let score = if keep_autodiff { score.autodiff() } else { score };
        Ok((score, row_dot(vjp, u)))
    }
}

/// `Σⱼ a_rj u_rj` for every row `r` of two batches of the same shape.
fn row_dot<const D: usize>(a: Tensor<D>, u: Tensor<D>) -> Tensor<1> {
    let [rows, n] = flat_dims(&a.dims());
    a.mul(u).reshape([rows, n]).sum_dim(1).reshape([rows])
}

/// The log-likelihood of a batch, in nats, with the parts it was computed from.
#[derive(Debug, Clone)]
pub struct LogLikelihood<const D: usize> {
    /// `log p_ε(x)` per sample: `prior_log_prob + delta_log_prob` (shape `[B]`).
    pub log_prob: Tensor<1>,
    /// `log p_T(x_T)` under the schedule's prior `N(0, prior_std² I)` (shape `[B]`).
    pub prior_log_prob: Tensor<1>,
    /// `∫_ε^T ∇·f̃(xₜ, t) dt` per sample (shape `[B]`).
    pub delta_log_prob: Tensor<1>,
    /// The prior latent `x_T` the ODE maps `x` to (the shape of `x`).
    pub latent: Tensor<D>,
    /// The number of elements `D` of one sample.
    pub dims: usize,
    /// What the ODE solve cost.
    pub stats: SolveStats,
}

impl<const D: usize> LogLikelihood<D> {
    /// Bits per dimension of the discrete data, `−log_prob/(D ln 2) + scaling.offset_bits()`
    /// (see [`DataScaling`]), per sample.
    pub fn bits_per_dim(&self, scaling: &DataScaling) -> Tensor<1> {
        self.log_prob
            .clone()
            .mul_scalar(-1.0 / (self.dims as f64 * core::f64::consts::LN_2))
            .add_scalar(scaling.offset_bits())
    }
}

/// The log-likelihood `log p_ε(x)` of each sample of `x` (shape `[B, ...]`, taken as the state
/// at `t = ε`) under the probability-flow ODE of `model` and `schedule`:
/// `log p_T(x_T) + ∫_ε^T [f(t)·D − ½ g(t)² tr(∂s/∂x)] dt`, integrating `(x, ∫∇·f̃)` from
/// `ε` to `T` with `solver`.
///
/// `rng` draws the Hutchinson probes (it is not used for [`Divergence::Exact`]). Errors with
/// [`Error::InvalidParameter`] for an invalid solver or `probes = 0`, [`Error::ShapeMismatch`]
/// for an empty batch or one the model does not accept, and [`Error::NonFinite`] for
/// non-finite data or a diverging solve.
///
/// ```
/// use rand::SeedableRng;
/// use rand::rngs::StdRng;
/// use scorefield_core::analytic::Gaussian;
/// use scorefield_core::likelihood::{DataScaling, Divergence, Probe, Vjp, log_likelihood};
/// use scorefield_core::sampler::OdeSolver;
/// use scorefield_core::schedule::VpSde;
///
/// let device = scorefield_core::device("flex")?;
/// let data = Gaussian::isotropic(&[0.0, 0.0], 0.5)?;
/// let x = burn::tensor::Tensor::<2>::from_floats([[0.0, 0.0], [0.5, -0.5]], &device);
/// let (vp, solver) = (VpSde::new(0.1, 20.0)?, OdeSolver::default());
/// let mut rng = StdRng::seed_from_u64(0);
/// // Exact trace through the model's JVPs ...
/// let ll = log_likelihood(&data, &vp, x.clone(), &solver, Divergence::Exact, &mut rng)?;
/// let error = ll.log_prob.clone().sub(data.log_prob(x.clone())).abs().max();
/// assert!(error.into_scalar::<f32>() < 1e-2);
/// // ... or Hutchinson through one backward pass, for any score model.
/// let hutchinson = Divergence::Hutchinson { probe: Probe::Rademacher, probes: 1 };
/// let estimate = log_likelihood(&Vjp(&data), &vp, x, &solver, hutchinson, &mut rng)?;
/// assert_eq!(estimate.log_prob.dims(), [2]);
/// // Bits/dim of 8-bit images mapped to [−1, 1]: −log p/(D ln 2) + 7.
/// let bpd = ll.bits_per_dim(&DataScaling::symmetric(8)?);
/// assert_eq!(bpd.dims(), [2]);
/// # Ok::<(), scorefield_core::Error>(())
/// ```
pub fn log_likelihood<M, S, const D: usize>(
    model: &M,
    schedule: &S,
    x: Tensor<D>,
    solver: &OdeSolver,
    divergence: Divergence,
    rng: &mut dyn RngCore,
) -> Result<LogLikelihood<D>>
where
    M: JacobianProbe<D>,
    S: NoiseSchedule,
{
    solver.validate()?;
    check_input(model.sample_shape().as_deref(), &x, schedule, "log-likelihood")?;
    let shape = x.dims();
    let [b, n] = flat_dims(&shape);
    let (probes, weight) = probes(divergence, shape, &x, rng)?;
    let k = probes.dims()[0] / b;
    let device = x.device();
    let rhs = |at: Stage, y: Tensor<2>| -> Result<Tensor<2>> {
        let x = y.narrow(1, 0, n).reshape(shape);
        let level = NoiseLevel::constant(schedule, at.t, b, (&device, x.dtype()));
        let (score, quad) = model.score_and_quadratic_forms(x.clone(), &level, probes.clone())?;
        check_output("score model output", &score, &x)?;
        if quad.dims() != [k * b] {
            return Err(Error::ShapeMismatch {
                context: "JacobianProbe quadratic forms",
                expected: format!("[{}] (one per probe row)", k * b),
                got: format!("{:?}", quad.dims()),
            });
        }
        let trace = quad.reshape([k, b]).sum_dim(0).reshape([b, 1]).mul_scalar(weight);
        let (f, g) =
            (schedule.drift_coefficient(at.coefficient_t), schedule.diffusion(at.coefficient_t));
        let div = trace.mul_scalar(-0.5 * g * g).add_scalar(f * n as f64);
        let velocity = velocity_from_score(schedule, x, score, at.coefficient_t).reshape([b, n]);
        Ok(Tensor::cat(vec![velocity, div], 1))
    };
    let y0 = Tensor::cat(
        vec![x.clone().reshape([b, n]), Tensor::zeros([b, 1], (&device, x.dtype()))],
        1,
    );
    let (y, stats) =
        integrate(solver, schedule, None, Direction::ToPrior, y0, rhs, |_, _, _, _| {
            core::ops::ControlFlow::Continue(())
        })?;
    let latent = y.clone().narrow(1, 0, n).reshape(shape);
    let delta_log_prob = y.narrow(1, n, 1).reshape([b]);
    let prior_log_prob = schedule.prior_log_prob(latent.clone());
    Ok(LogLikelihood {
        log_prob: prior_log_prob.clone().add(delta_log_prob.clone()),
        prior_log_prob,
        delta_log_prob,
        latent,
        dims: n,
        stats,
    })
}

/// The probe batch (`K·B` rows, row `k·B + b` the `k`-th probe of sample `b`, in the dtype of
/// `x`) and the weight of each probe in the trace.
fn probes<const D: usize>(
    divergence: Divergence,
    shape: [usize; D],
    x: &Tensor<D>,
    rng: &mut dyn RngCore,
) -> Result<(Tensor<D>, f64)> {
    let [b, n] = flat_dims(&shape);
    let device = x.device();
    match divergence {
        Divergence::Exact => {
            let mut values = vec![0.0f64; n * b * n];
            for k in 0..n {
                for i in 0..b {
                    values[(k * b + i) * n + k] = 1.0;
                }
            }
            let mut tiled = shape;
            tiled[0] = n * b;
            let data = TensorData::new(values, tiled);
            Ok((Tensor::from_data(data, (&device, x.dtype())), 1.0))
        }
        Divergence::Hutchinson { probe, probes } => {
            if probes == 0 {
                return Err(Error::invalid("probes", probes, "Hutchinson needs ≥ 1 probe"));
            }
            let mut tiled = shape;
            tiled[0] = probes * b;
            let run = (&device, x.dtype());
            let v = match probe {
                Probe::Gaussian => standard_normal(tiled, run, rng),
                Probe::Rademacher => rademacher(tiled, run, rng),
            };
            Ok((v, 1.0 / probes as f64))
        }
    }
}

/// How model-space data `y` was made from `bits`-bit integers `x_int ∈ {0, …, 2^bits − 1}`,
/// and what that does to bits per dimension.
///
/// Uniform dequantisation `z = (x_int + u)/2^bits`, `u ~ U[0, 1)^D`, puts each integer in its
/// own cell of `[0, 1)`; then `y = scale·z + shift`. The discrete probability of `x_int`
/// satisfies `log P(x_int) = log E_u[p_Z(z)] − D·bits·ln 2 ≥ E_u[log p_Y(y)] + D ln|scale|
/// − D·bits·ln 2` (change of variables `p_Z = |scale|^D p_Y`, then Jensen), so the
/// bits per dimension bound is
///
/// ```text
/// bpd = −log p_Y(y) / (D ln 2) + offset,   offset = bits − log₂|scale|.
/// ```
///
/// For 8-bit images in `[0, 1]` (`scale = 1`) the offset is 8; mapped to `[−1, 1]`
/// (`scale = 2`, `shift = −1`) the density of `y` is `2^−D` times that of `z` and the offset
/// is 7, score_sde's `7 − inverse_scaler(−1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataScaling {
    bits: u32,
    scale: f64,
    shift: f64,
}

impl DataScaling {
    /// Data from `bits`-bit integers, dequantised to `[0, 1)` and mapped by
    /// `y = scale·z + shift`. Errors unless `1 ≤ bits ≤ 24`, `scale` finite and non-zero and
    /// `shift` finite.
    pub fn new(bits: u32, scale: f64, shift: f64) -> Result<Self> {
        if !(1..=24).contains(&bits) {
            return Err(Error::invalid("bits", bits, "must be in 1..=24"));
        }
        ensure_finite("scale", scale)?;
        if scale == 0.0 {
            return Err(Error::invalid("scale", scale, "must be non-zero"));
        }
        ensure_finite("shift", shift)?;
        Ok(DataScaling { bits, scale, shift })
    }

    /// `bits`-bit data dequantised to `[0, 1)`: `y = z` (offset `bits`).
    pub fn unit_interval(bits: u32) -> Result<Self> {
        Self::new(bits, 1.0, 0.0)
    }

    /// `bits`-bit data dequantised and mapped to `[−1, 1)`: `y = 2z − 1` (offset `bits − 1`).
    pub fn symmetric(bits: u32) -> Result<Self> {
        Self::new(bits, 2.0, -1.0)
    }

    /// The bit depth of the discrete data.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The scale of `y = scale·z + shift`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The shift of `y = scale·z + shift`.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// `bits − log₂|scale|`, the bits per dimension of a model-space log-density of zero.
    pub fn offset_bits(&self) -> f64 {
        self.bits as f64 - self.scale.abs().log2()
    }

    /// `−log_prob / (dims·ln 2) + offset_bits()` for a model-space log-density `log_prob`
    /// (nats) of a sample with `dims` elements.
    pub fn bits_per_dim(&self, log_prob: f64, dims: usize) -> f64 {
        -log_prob / (dims as f64 * core::f64::consts::LN_2) + self.offset_bits()
    }

    /// Dequantises an image batch in `[0, 1]` whose values are `x_int / (2^bits − 1)` (as
    /// scorefield's images are): `y = scale·(x_int + u)/2^bits + shift`, `u ~ U[0, 1)` drawn
    /// on the host. `x_int` is recovered by rounding and clamped to `[0, 2^bits − 1]`.
    pub fn dequantize<const D: usize, R: Rng + ?Sized>(
        &self,
        images: Tensor<D>,
        rng: &mut R,
    ) -> Tensor<D> {
        let levels = (1u64 << self.bits) as f64;
        let shape = images.dims();
        let count: usize = shape.iter().product();
        let noise: Vec<f64> = (0..count).map(|_| rng.random::<f64>()).collect();
        let u = Tensor::<D>::from_data(
            TensorData::new(noise, shape),
            (&images.device(), images.dtype()),
        );
        images
            .mul_scalar(levels - 1.0)
            .round()
            .clamp(0.0, levels - 1.0)
            .add(u)
            .mul_scalar(self.scale / levels)
            .add_scalar(self.shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_scaling_offsets() {
        assert_eq!(DataScaling::unit_interval(8).unwrap().offset_bits(), 8.0);
        assert_eq!(DataScaling::symmetric(8).unwrap().offset_bits(), 7.0);
        assert_eq!(DataScaling::symmetric(5).unwrap().offset_bits(), 4.0);
        // 1-bit data in [0, 1/2): the density is 2^D larger, one bit more per dimension.
        assert_eq!(DataScaling::new(1, 0.5, 0.0).unwrap().offset_bits(), 2.0);
        let s = DataScaling::unit_interval(8).unwrap();
        assert_eq!(s.bits_per_dim(-2.0 * core::f64::consts::LN_2, 2), 9.0);
    }
}
