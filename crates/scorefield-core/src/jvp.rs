//! Forward-mode Jacobian-vector products of score models, and the finite-difference wrapper
//! that gives any [`ScoreModel`] one.
//!
//! Exact and sliced score matching and the exact divergence need `J_s·v`, `J_s = ∂s/∂x`, as a
//! tensor expression that backprop can differentiate once more with respect to the
//! parameters (Burn's autodiff is first-order only). A model either computes it exactly
//! ([`ScoreJvp`], the library's layers propagate a tangent beside the value), or opts into
//! the central difference of [`FiniteDifference`]:
//!
//! ```text
//! J_s(x)·v ≈ [s(x + h·v) − s(x − h·v)] / (2h),    error  h²/6 · ∂³s[v, v, v] = O(h²).
//! ```
//!
//! [`score_and_trace`] gives `s(x)` and `tr J_s(x)` for a batch from a single
//! [`ScoreJvp::score_jvp_many`] call with the `d` basis vectors `eᵢ` as tangents of every sample.

use burn::tensor::{DType, Tensor, TensorData};
use rand::RngCore;

use crate::error::{Error, Result, ensure_positive};
use crate::objective::{LossOutput, Objective};
use crate::score::{NoiseLevel, ScoreJvp, ScoreModel, check_output};

/// A suggested [`FiniteDifference`] step for f32 models, `h = 1e-3`: rounding contributes `≈ 6e-8/1e-3 ≈ 6e-5` relative error
/// and truncation `(h/ℓ)²/6 ≈ 2e-7` at `ℓ = 1`, staying below the rounding term down to
/// `ℓ ≈ 0.05`, so the step is safe for scores that bend on a scale 20× finer than the data
/// (a model at a small noise level) at a modest rounding cost.
pub const SUGGESTED_STEP_F32: f64 = 1e-3;

/// A suggested [`FiniteDifference`] step for f64 models, `h = 1e-5`: rounding `≈ 1e-16/1e-5 = 1e-11`, truncation
/// `(h/ℓ)²/6 ≈ 2e-11` at `ℓ = 1`.
pub const SUGGESTED_STEP_F64: f64 = 1e-5;

/// Any [`ScoreModel`] as a [`ScoreJvp`] by central differences (Pang et al. 2020):
///
/// ```text
/// J_s(x)·v ≈ [s(x + h·v) − s(x − h·v)] / (2h),   error h²/6 · ∂³s[v,v,v] + O(ε_mach·|s|/h).
/// ```
///
/// `s(x)`, `s(x + h·v)` and `s(x − h·v)` are computed in one model call on a 3-times larger
/// batch, and the result is an ordinary differentiable expression of the parameters, so
/// exact and sliced score matching train any network with first-order backprop.
///
/// The step `h` is absolute, in the units of `x`, and the perturbation is `h·v`: with
/// Rademacher or Gaussian `v` every coordinate moves by about `h`. There is no default: a
/// finite difference is an approximation the user opts into with an explicit step. Suggested
/// values, for data scaled to unit order ([`SUGGESTED_STEP_F32`],
/// [`SUGGESTED_STEP_F64`]), balance the truncation error
/// `(h/ℓ)²/6` (relative, `ℓ` the length scale over which `s` bends) against the rounding
/// error `≈ ε_mach/h` (relative): the optimum `h ≈ ℓ·(3ε_mach)^{1/3}` is `≈ 6e-3·ℓ` in f32 and
/// `≈ 7e-6·ℓ` in f64. Scale `h` with the data (e.g. ×255 for pixel values in [0, 255]).
#[derive(Debug, Clone)]
pub struct FiniteDifference<M> {
    model: M,
    step: f64,
}

impl<M> FiniteDifference<M> {
    /// Wraps `model` with the central-difference step `step = h`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `h` is finite and `> 0`.
    pub fn new(model: M, step: f64) -> Result<Self> {
        ensure_positive("step", step)?;
        Ok(Self { model, step })
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The step `h`.
    pub fn step(&self) -> f64 {
        self.step
    }

    /// Unwraps the model.
    pub fn into_inner(self) -> M {
        self.model
    }
}

/// An objective over the bare network whose loss is `O`'s loss of the network seen through
/// [`FiniteDifference`] with step `h`:
///
/// ```text
/// L(θ; x₀) = O.loss(FiniteDifference(s_θ, h), x₀)
/// ```
///
/// so that a JVP-based objective (exact or sliced score matching) trains a network without an
/// exact JVP through any loop that hands the objective the network itself (scorefield-nn's
/// `Trainer::fit`).
#[derive(Debug, Clone)]
pub struct ThroughFiniteDifference<O> {
    objective: O,
    step: f64,
}

impl<O> ThroughFiniteDifference<O> {
    /// `objective` over the network wrapped in `FiniteDifference` with step `step = h`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `h` is finite and `> 0`.
    pub fn new(objective: O, step: f64) -> Result<Self> {
        ensure_positive("step", step)?;
        Ok(Self { objective, step })
    }
}

impl<M, O, const D: usize> Objective<M, D> for ThroughFiniteDifference<O>
where
    O: for<'a> Objective<FiniteDifference<&'a M>, D>,
{
    fn loss(&self, model: &M, x0: Tensor<D>, rng: &mut dyn RngCore) -> Result<LossOutput> {
        self.objective.loss(&FiniteDifference::new(model, self.step)?, x0, rng)
    }
}

impl<const D: usize, M: ScoreModel<D>> ScoreModel<D> for FiniteDifference<M> {
    /// The wrapped model's score.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        self.model.score(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.model.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.model.float_dtype()
    }

    fn batch_size(&self) -> Option<usize> {
        self.model.batch_size()
    }

    fn validate(&self) -> crate::Result<()> {
        self.model.validate()
    }
}

impl<const D: usize, M: ScoreModel<D>> ScoreJvp<D> for FiniteDifference<M> {
    /// `(s(x), [s(x + h·v) − s(x − h·v)]/(2h))` from one model call on `[x; x + h·v; x − h·v]`.
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let b = x.dims()[0];
        let shift = v.mul_scalar(self.step);
        let xs = Tensor::cat(vec![x.clone(), x.clone().add(shift.clone()), x.sub(shift)], 0);
        let cat = |t: &Tensor<1>| Tensor::cat(vec![t.clone(), t.clone(), t.clone()], 0);
        let levels =
            NoiseLevel { t: cat(&level.t), scale: cat(&level.scale), sigma: cat(&level.sigma) };
        let s = self.model.score(xs, &levels);
        let plus = s.clone().narrow(0, b, b);
        let minus = s.clone().narrow(0, 2 * b, b);
        (s.narrow(0, 0, b), plus.sub(minus).mul_scalar(0.5 / self.step))
    }

    /// `K` tangents per sample (row `k·B + b` of `v`): one model call on
    /// `[x; x̃ + h·v; x̃ − h·v]` with `x̃` the batch tiled `K` times, `(2K + 1)·B` evaluations.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let (b, kb) = (x.dims()[0], v.dims()[0]);
        let tiled = x.clone().repeat_dim(0, kb / b.max(1));
        let shift = v.mul_scalar(self.step);
        let xs = Tensor::cat(vec![x, tiled.clone().add(shift.clone()), tiled.sub(shift)], 0);
        let many = level.tile(kb / b.max(1));
        let cat =
            |t: &Tensor<1>, m: &Tensor<1>| Tensor::cat(vec![t.clone(), m.clone(), m.clone()], 0);
        let levels = NoiseLevel {
            t: cat(&level.t, &many.t),
            scale: cat(&level.scale, &many.scale),
            sigma: cat(&level.sigma, &many.sigma),
        };
        let s = self.model.score(xs, &levels);
        let plus = s.clone().narrow(0, b, kb);
        let minus = s.clone().narrow(0, b + kb, kb);
        (s.narrow(0, 0, b), plus.sub(minus).mul_scalar(0.5 / self.step))
    }
}

/// `(s(x), tr J_s(x))` for a batch `x` of shape `[B, ...]` with `d` elements per sample:
///
/// ```text
/// tr J_s(x) = Σᵢ eᵢᵀ J_s(x) eᵢ,
/// ```
///
/// from **one** [`ScoreJvp::score_jvp_many`] call with the `d` basis vectors as the `d`
/// tangents of every sample (a `d`-times larger tangent batch, row `i·B + b` = `eᵢ`), not a
/// loop of `d` calls. The cost is that of a forward-mode pass over `B·d` tangents; the trace
/// has shape `[B]`.
///
/// Errors with [`Error::ShapeMismatch`] if `level` does not hold one level per sample, and
/// with [`Error::ShapeMismatch`] or [`Error::DTypeMismatch`] if the model's score or JVPs
/// differ from their inputs (`x`, the tangents) in shape or dtype.
pub fn score_and_trace<const D: usize, M: ScoreJvp<D> + ?Sized>(
    model: &M,
    x: Tensor<D>,
    level: &NoiseLevel,
) -> Result<(Tensor<D>, Tensor<1>)> {
    let dims = x.dims();
    let (b, d) = (dims[0], dims[1..].iter().product::<usize>());
    if level.batch_size() != b {
        return Err(Error::ShapeMismatch {
            context: "score_and_trace",
            expected: format!("{b} noise levels (one per batch element)"),
            got: format!("{}", level.batch_size()),
        });
    }
    let mut eye = vec![0.0f64; d * d];
    eye.iter_mut().step_by(d + 1).for_each(|e| *e = 1.0);
    let eye: Tensor<3> =
        Tensor::from_data(TensorData::new(eye, [d, 1, d]), (&x.device(), x.dtype()));
    let mut tangents = dims;
    tangents[0] = d * b;
    let basis = eye.clone().repeat_dim(1, b).reshape(tangents);
    let (score, jvp) = model.score_jvp_many(x.clone(), level, basis.clone());
    check_output("score_and_trace (score)", &score, &x)?;
    check_output("score_and_trace (J·eᵢ)", &jvp, &basis)?;
    // Row i·B + b of `jvp` is J eᵢ for sample b: keep its i-th entry and sum over i.
    let trace = jvp.reshape([d, b, d]).mul(eye).sum_dim(2).sum_dim(0).reshape([b]);
    Ok((score, trace))
}
