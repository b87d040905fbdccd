//! Sliced score matching (Song et al. 2019): exact score matching along random directions,
//!
//! ```text
//! J(θ)    = E_v E_x[ vᵀ J_s(x) v + ½ (vᵀ s_θ(x))² ],
//! J_VR(θ) = E_v E_x[ vᵀ J_s(x) v + ½ ‖s_θ(x)‖² ]          (variance reduced),
//! ```
//!
//! with `E[v vᵀ] = I` (Gaussian or Rademacher `v`), so that `E_v[vᵀ A v] = tr A` and both equal
//! exact score matching in expectation. `M` projections per sample cost `M` JVPs instead of
//! `d`; they are evaluated in one [`ScoreJvp::score_jvp_many`] call with `M` tangents per
//! sample. Any model
//! trains with it through [`FiniteDifference`](crate::jvp::FiniteDifference) (Pang et al.'s
//! finite-difference SSM).

use burn::tensor::{Tensor, TensorData};
use rand::RngCore;

use super::exact::{DataLevel, check_data};
use super::{LossOutput, Objective};
use crate::error::{Error, Result};
use crate::random::{rademacher, standard_normal};
use crate::score::{ScoreJvp, check_batch, check_model, check_output};

/// The distribution of the projection vectors `v`; both have `E[v vᵀ] = I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Projection {
    /// `v ~ N(0, I)`.
    Gaussian,
    /// `vᵢ = ±1` with probability ½ each (lower variance of `vᵀ J v`: its diagonal part is
    /// exact).
    #[default]
    Rademacher,
}

/// Sliced score matching with `projections` random directions per sample:
/// per sample `(1/M) Σₘ [vₘᵀ J_s(x) vₘ + ½ (vₘᵀ s)²]`, or `… + ½‖s‖²` when
/// `variance_reduced` (SSM-VR), averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicedScoreMatching {
    /// The number `M ≥ 1` of projections drawn per sample.
    pub projections: usize,
    /// Their distribution.
    pub distribution: Projection,
    /// Replace `½ (vᵀ s)²` by its expectation `½ ‖s‖²` (SSM-VR).
    pub variance_reduced: bool,
    /// The distribution fitted and the level the model sees; [`DataLevel::Clean`] by default.
    pub level: DataLevel,
}

impl SlicedScoreMatching {
    /// Plain sliced score matching with `projections` draws of `distribution` per sample.
    pub fn new(projections: usize, distribution: Projection) -> Self {
        Self { projections, distribution, variance_reduced: false, level: DataLevel::Clean }
    }

    /// The variance-reduced form (SSM-VR) with `projections` draws per sample.
    pub fn variance_reduced(projections: usize, distribution: Projection) -> Self {
        Self { variance_reduced: true, ..Self::new(projections, distribution) }
    }

    /// The same objective, fitting the perturbed distribution at `level`.
    pub fn at_level(self, level: DataLevel) -> Self {
        Self { level, ..self }
    }

    /// The loss with explicit projections `v` of shape `[M, ...]` (each of the sample shape),
    /// all `M` of them used for every sample: per sample `(1/M) Σₘ [vₘᵀ J vₘ + ½ (vₘᵀ s)²]`.
    ///
    /// It estimates exact score matching when `(1/M) Σₘ vₘ vₘᵀ = I`, and equals it then: the
    /// scaled coordinate axes `√d·eᵢ` (`M = d`) give exactly `tr J + ½‖s‖²`.
    /// `self.projections` and `self.distribution` are ignored. Errors as
    /// [`Objective::loss`], and with [`Error::ShapeMismatch`] if `v` is not a batch of samples.
    pub fn loss_with_projections<M: ScoreJvp<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        v: Tensor<D>,
        rng: &mut dyn RngCore,
    ) -> Result<LossOutput> {
        let dims = x0.dims();
        if v.dims()[1..] != dims[1..] {
            return Err(Error::ShapeMismatch {
                context: "SlicedScoreMatching projections",
                expected: format!("[projections, {:?}]", &dims[1..]),
                got: format!("{:?}", v.dims()),
            });
        }
        check_data("SlicedScoreMatching projections", &v)?;
        let (b, m, d) = (dims[0], v.dims()[0], dims[1..].iter().product::<usize>());
        let v = v.cast(x0.dtype()).reshape([m, 1, d]).repeat_dim(1, b);
        self.evaluate(model, x0, v, rng)
    }

    /// The loss given projections `v` of shape `[M, B, d]` (`v[m, b]` for sample `b`).
    fn evaluate<M: ScoreJvp<D>, const D: usize>(
        &self,
        model: &M,
        x0: Tensor<D>,
        v: Tensor<3>,
        rng: &mut dyn RngCore,
    ) -> Result<LossOutput> {
        const CONTEXT: &str = "SlicedScoreMatching";
        check_model(CONTEXT, model, &x0)?;
        let (x, level, reported) = self.level.prepare(CONTEXT, x0, rng)?;
        check_batch(CONTEXT, &x, model.sample_shape().as_deref(), &level)?;
        let [m, b, d] = v.dims();
        let mut tangents = x.dims();
        tangents[0] = m * b;
        let tangents = v.clone().reshape(tangents);
        let (s, jv) = model.score_jvp_many(x.clone(), &level, tangents.clone());
        check_output(CONTEXT, &s, &x)?;
        check_output("SlicedScoreMatching (J·v)", &jv, &tangents)?;
        let s = s.reshape([1, b, d]);
        let vjv = v.clone().mul(jv.reshape([m, b, d])).sum_dim(2);
        let second = if self.variance_reduced {
            s.square().sum_dim(2)
        } else {
            v.mul(s).sum_dim(2).square().mean_dim(0)
        };
        let per_sample = vjv.mean_dim(0).add(second.mul_scalar(0.5)).reshape([b]);
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: reported })
    }
}

impl<M: ScoreJvp<D>, const D: usize> Objective<M, D> for SlicedScoreMatching {
    /// The sliced loss with `projections` fresh draws of `distribution` per sample from `rng`.
    /// Errors with [`Error::InvalidParameter`] if `projections == 0`, [`Error::NonFinite`] on
    /// non-finite data, [`Error::ShapeMismatch`] if `x0` does not fit the model or the
    /// model's outputs (score, JVPs) have other shapes than its inputs, and
    /// [`Error::DTypeMismatch`] if `x0` is not in the model's
    /// [`float_dtype`](crate::score::ScoreModel::float_dtype) or an output has another dtype.
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput> {
        if self.projections == 0 {
            return Err(Error::invalid("projections", 0, "at least one projection is needed"));
        }
        let dims = x0.dims();
        let (b, m, d) = (dims[0], self.projections, dims[1..].iter().product::<usize>());
        let run = (&x0.device(), x0.dtype());
        let v: Tensor<3> = match self.distribution {
            Projection::Gaussian => standard_normal([m, b, d], run, rng),
            Projection::Rademacher => rademacher([m, b, d], run, rng),
        };
        self.evaluate(model, x0, v, rng)
    }
}

/// The scaled coordinate axes `√d·eᵢ`, `i = 1..d`, for batches shaped like `x` (`[B, ...]`,
/// `d` elements per sample): a tensor `[d, ...]` in the device and dtype of `x` whose rows
/// satisfy `(1/d) Σᵢ vᵢ vᵢᵀ = I`, so that [`SlicedScoreMatching::loss_with_projections`]
/// with them equals exact score matching.
pub fn scaled_axes<const D: usize>(x: &Tensor<D>) -> Tensor<D> {
    let mut shape = x.dims();
    let d = shape[1..].iter().product::<usize>();
    shape[0] = d;
    let mut values = vec![0.0f64; d * d];
    values.iter_mut().step_by(d + 1).for_each(|e| *e = (d as f64).sqrt());
    Tensor::from_data(TensorData::new(values, shape), (&x.device(), x.dtype()))
}
