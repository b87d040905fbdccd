//! Exact score matching (Hyvärinen 2005):
//!
//! ```text
//! J(θ) = E_x[ tr(∂s_θ(x)/∂x) + ½‖s_θ(x)‖² ]  =  ½ E_x‖s_θ(x) − ∇ log p(x)‖² − ½ E_x‖∇ log p(x)‖²,
//! ```
//!
//! the Fisher divergence up to a θ-free constant (integration by parts), so it needs no
//! knowledge of `∇ log p`. The trace costs `d` Jacobian-vector products per sample; they come
//! from [`score_and_trace`]: one forward-mode [`ScoreJvp::score_jvp_many`] call with the `d`
//! basis vectors as tangents, which backprop then differentiates with respect to the
//! parameters.
//!
//! ```
//! use rand::SeedableRng;
//! use scorefield_core::analytic::Gaussian;
//! use scorefield_core::objective::{ExactScoreMatching, Objective};
//!
//! let device = scorefield_core::device("flex")?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let data = Gaussian::isotropic(&[0.0, 0.0], 1.0)?;
//! let x = data.sample(4096, &device, &mut rng);
//! // At the true score J(θ) = −½E‖∇ log p‖² = −d/2 for N(0, I).
//! let out = ExactScoreMatching::new().loss(&data, x, &mut rng)?;
//! let j = out.loss.into_scalar::<f32>();
//! assert!((j + 1.0).abs() < 0.1, "{j}");
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use burn::tensor::{Tensor, TensorData};
use rand::RngCore;

use super::{LossOutput, Objective};
use crate::error::{Error, Result, ensure_finite};
use crate::jvp::score_and_trace;
use crate::random::standard_normal;
use crate::schedule::NoiseSchedule;
use crate::score::{NoiseLevel, ScoreJvp, check_batch, check_model};

/// Which distribution exact and sliced score matching fit, and the level the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum DataLevel {
    /// The data themselves, with the model at the clean level `t = 0, m = 1, σ = 0`
    /// ([`NoiseLevel::clean`]): `s_θ(x, clean) ≈ ∇ log p_data(x)`.
    #[default]
    Clean,
    /// The data perturbed to `xₜ = m·x₀ + σ·z`, `z ~ N(0, I)` (noise from the objective's
    /// `rng`), with the model at level `(t, m, σ)`: `s_θ(x, t) ≈ ∇ log pₜ(x)`, matched exactly
    /// rather than through the denoising target.
    Perturbed {
        /// The time `t` the model is conditioned on.
        t: f64,
        /// The mean coefficient `m(t)`.
        scale: f64,
        /// The noise standard deviation `σ(t)`.
        std: f64,
    },
}

impl DataLevel {
    /// The perturbation of `schedule` at time `t` ([`NoiseSchedule::marginal`]).
    ///
    /// Errors with [`Error::InvalidParameter`] if `t` or the marginal is not finite.
    pub fn at<S: NoiseSchedule + ?Sized>(schedule: &S, t: f64) -> Result<Self> {
        ensure_finite("t", t)?;
        let m = schedule.marginal(t);
        ensure_finite("scale", m.scale)?;
        ensure_finite("std", m.std)?;
        Ok(DataLevel::Perturbed { t, scale: m.scale, std: m.std })
    }

    /// Validates `x0` (finite), perturbs it if needed and returns `(x, level, reported)`:
    /// the batch the model sees, its level (in the dtype of `x0`), and the level to report in
    /// [`LossOutput`] (`None` when clean).
    pub(crate) fn prepare<const D: usize>(
        &self,
        context: &'static str,
        x0: Tensor<D>,
        rng: &mut dyn RngCore,
    ) -> Result<(Tensor<D>, NoiseLevel, Option<NoiseLevel>)> {
        check_data(context, &x0)?;
        let (b, device) = (x0.dims()[0], x0.device());
        let run = (&device, x0.dtype());
        match *self {
            DataLevel::Clean => Ok((x0, NoiseLevel::clean(b, run), None)),
            DataLevel::Perturbed { t, scale, std } => {
                let level = NoiseLevel {
                    t: Tensor::full([b], t, run),
                    scale: Tensor::full([b], scale, run),
                    sigma: Tensor::full([b], std, run),
                };
                let z = standard_normal(x0.dims(), run, rng);
                let x = x0.mul_scalar(scale).add(z.mul_scalar(std));
                Ok((x, level.clone(), Some(level)))
            }
        }
    }
}

/// Exact score matching: per sample `tr(∂s_θ(x)/∂x) + ½‖s_θ(x)‖²`, averaged over the batch.
///
/// Requires a model with an exact [`ScoreJvp`] (or [`FiniteDifference`](crate::jvp::FiniteDifference)
/// around any model). The trace is computed from `d` basis-vector JVPs in one batched call, so
/// memory and time grow as `B·d` tangents: use
/// [`SlicedScoreMatching`](super::sliced::SlicedScoreMatching) when `d` is large.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ExactScoreMatching {
    /// The distribution fitted and the level the model sees; [`DataLevel::Clean`] by default.
    pub level: DataLevel,
}

impl ExactScoreMatching {
    /// Exact score matching of the data distribution, the model at the clean level.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exact score matching of the perturbed distribution at `level`.
    pub fn at_level(level: DataLevel) -> Self {
        Self { level }
    }
}

impl<M: ScoreJvp<D>, const D: usize> Objective<M, D> for ExactScoreMatching {
    /// `J(θ) = mean_b [ tr J_s(x_b) + ½‖s(x_b)‖² ]`. Errors with [`Error::NonFinite`] on
    /// non-finite data, [`Error::ShapeMismatch`] if `x0` does not fit the model or the
    /// model's outputs (score, JVP) have other shapes than its inputs, and
    /// [`Error::DTypeMismatch`] if `x0` is not in the model's
    /// [`float_dtype`](crate::score::ScoreModel::float_dtype) or an output has another dtype.
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput> {
        const CONTEXT: &str = "ExactScoreMatching";
        check_model(CONTEXT, model, &x0)?;
        let (x, level, reported) = self.level.prepare(CONTEXT, x0, rng)?;
        check_batch(CONTEXT, &x, model.sample_shape().as_deref(), &level)?;
        let (s, trace) = score_and_trace(model, x, &level)?;
        let per_sample = trace.add(squared_norm(s).mul_scalar(0.5));
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: reported })
    }
}

/// `‖x_b‖²` for each sample of a batch `[B, ...]`, shape `[B]`.
pub(crate) fn squared_norm<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let dims = x.dims();
    let (b, d) = (dims[0], dims[1..].iter().product::<usize>());
    x.reshape([b, d]).square().sum_dim(1).reshape([b])
}

/// Checks a data batch `[B, ...]`: [`Error::ShapeMismatch`] if it is empty (`B = 0` or no
/// element per sample), [`Error::NonFinite`] unless every element is finite (one
/// device-to-host read, left out inside [`without_data_check`](super::without_data_check)).
pub(crate) fn check_data<const D: usize>(context: &'static str, x: &Tensor<D>) -> Result<()> {
    let dims = x.dims();
    if dims.contains(&0) {
        return Err(Error::ShapeMismatch {
            context,
            expected: "a non-empty batch of non-empty samples".into(),
            got: format!("{dims:?}"),
        });
    }
    if super::data_check_deferred() || x.clone().is_finite().all().into_scalar::<bool>() {
        Ok(())
    } else {
        Err(Error::NonFinite { context: format!("{context}: the data batch") })
    }
}

/// Host values `[B]` (f64) as a `[B, 1, …, 1]` tensor in the device and dtype of `like`, for
/// per-sample coefficients that must keep their f64 precision in f64 computations.
pub(crate) fn host_column<const D: usize>(values: &[f64], like: &Tensor<D>) -> Tensor<D> {
    let mut shape = [1usize; D];
    shape[0] = values.len();
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (&like.device(), like.dtype()))
}
