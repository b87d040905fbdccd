//! Score models: estimates of the score `s(x, t) ≈ ∇ₓ log pₜ(x)` of the perturbed data
//! distribution, conditioned on the noise level.
//!
//! Every schedule perturbs data as `xₜ = m(t)·x₀ + σ(t)·z`, `z ~ N(0, I)`; a
//! [`NoiseLevel`] carries `t`, `m(t)` and `σ(t)` for each element of a batch, so that a model
//! can condition on whichever it prefers (NCSN conditions on σ, DDPM on the step index) and a
//! parameterisation adapter can turn an ε- or x₀-prediction into a score without knowing the
//! schedule.

use burn::tensor::{DType, Tensor, TensorCreationOptions, TensorData};

use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;

/// The noise level of each element of a batch: time `t`, mean coefficient `m(t)` (called
/// `scale`) and standard deviation `σ(t)` of the perturbation `xₜ = m·x₀ + σ·z`.
///
/// All three are rank-1 tensors of the batch length. They are computed on the host in f64
/// from a [`NoiseSchedule`] and cast once to the float type of the run: the constructors take
/// tensor-creation options, `&device` (the device's default float type) or
/// `(&device, DType::F64)` for an f64 run, whose levels then keep every bit of the f64 values.
#[derive(Debug, Clone)]
pub struct NoiseLevel {
    /// The time `t` of each batch element (for discrete schedules, the step index).
    pub t: Tensor<1>,
    /// The mean coefficient `m(t)` (1 for variance-exploding schedules).
    pub scale: Tensor<1>,
    /// The standard deviation `σ(t)` of the added noise.
    pub sigma: Tensor<1>,
}

impl NoiseLevel {
    /// The noise levels of a schedule at the given times, one per batch element, on the
    /// device and in the float type of `options` (`&device`, or `(&device, dtype)`).
    pub fn at_times<S: NoiseSchedule + ?Sized>(
        schedule: &S,
        times: &[f64],
        options: impl Into<TensorCreationOptions>,
    ) -> Self {
        let options = options.into();
        let n = times.len();
        let mut scale = Vec::with_capacity(n);
        let mut sigma = Vec::with_capacity(n);
        for &t in times {
            let m = schedule.marginal(t);
            scale.push(m.scale);
            sigma.push(m.std);
        }
        NoiseLevel {
            t: vector(times, options.clone()),
            scale: vector(&scale, options.clone()),
            sigma: vector(&sigma, options),
        }
    }

    /// The same noise level, at time `t`, for every element of a batch of `batch` samples
    /// (`options` as in [`at_times`](Self::at_times)).
    pub fn constant<S: NoiseSchedule + ?Sized>(
        schedule: &S,
        t: f64,
        batch: usize,
        options: impl Into<TensorCreationOptions>,
    ) -> Self {
        Self::at_times(schedule, &vec![t; batch], options)
    }

    /// The clean level `t = 0`, `m = 1`, `σ = 0` for a batch of `batch` samples: what exact
    /// and sliced score matching evaluate a model at when it models the data itself
    /// (`options` as in [`at_times`](Self::at_times)).
    pub fn clean(batch: usize, options: impl Into<TensorCreationOptions>) -> Self {
        let options = options.into();
        NoiseLevel {
            t: Tensor::zeros([batch], options.clone()),
            scale: Tensor::ones([batch], options.clone()),
            sigma: Tensor::zeros([batch], options),
        }
    }

    /// The float type of the levels.
    pub fn dtype(&self) -> DType {
        self.sigma.dtype()
    }

    /// The batch length.
    pub fn batch_size(&self) -> usize {
        self.t.dims()[0]
    }

    /// Tiles the batch `times` times (element `k·B + b` of the result has the level of element
    /// `b`), matching `x.repeat_dim(0, times)`.
    pub fn tile(&self, times: usize) -> Self {
        NoiseLevel {
            t: self.t.clone().repeat_dim(0, times),
            scale: self.scale.clone().repeat_dim(0, times),
            sigma: self.sigma.clone().repeat_dim(0, times),
        }
    }

    /// Repeats every level `times` times along the batch (element `i` of the result has the
    /// level of element `i / times`), for batches that were expanded the same way.
    pub fn repeat_interleave(&self, times: usize) -> Self {
        let rep = |x: &Tensor<1>| {
            let n = x.dims()[0];
            x.clone().reshape([n, 1]).repeat_dim(1, times).reshape([n * times])
        };
        NoiseLevel { t: rep(&self.t), scale: rep(&self.scale), sigma: rep(&self.sigma) }
    }
}

/// Builds a rank-1 tensor from f64 values, converted once to the float type of `options`
/// (the device's default when it names none): an f64 run keeps the f64 values exactly.
pub(crate) fn vector(values: &[f64], options: impl Into<TensorCreationOptions>) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), options)
}

/// A score model: an estimate of `∇ₓ log pₜ(x)` for a batch `x` of shape `[B, ...]`, at the
/// noise level of each batch element.
///
/// Implement this for your own network; every objective and sampler in scorefield takes any
/// `ScoreModel`.
pub trait ScoreModel<const D: usize> {
    /// Returns `s(x, level)`, the same shape as `x`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D>;

    /// The shape of one sample (`x.dims()[1..]`) that this model accepts, if it is fixed.
    /// Objectives and samplers check their input against it and return
    /// [`Error::ShapeMismatch`] instead of letting the model panic. `None` (the default)
    /// skips the check.
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// The float type this model computes in, if it is fixed (a network: the dtype of its
    /// parameters). Objectives check their data batch against it and return
    /// [`Error::DTypeMismatch`] instead of letting the backend panic (an f64 batch reaching an
    /// f32 matrix product). `None` (the default) skips the check: the model follows its
    /// input's dtype, as the analytic oracles do, or does not say; its output is still
    /// checked against its input.
    fn float_dtype(&self) -> Option<DType> {
        None
    }

    /// The batch size this model scores, if it is fixed (a conditional model with its
    /// per-sample condition bound, [`Given`](crate::condition::Given)). Samplers check their
    /// initial state against it ([`Error::ShapeMismatch`]). `None` (the default): any batch.
    fn batch_size(&self) -> Option<usize> {
        None
    }

    /// Checks that the model can score as it is, before a sampler or an objective calls it:
    /// a conditional network without its condition errors with [`Error::MissingCondition`],
    /// a condition the model does not accept (a label past its classes) with the model's
    /// error. The default accepts.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// A score model that also gives exact forward-mode directional derivatives:
/// `(s(x), J_s(x)·v)` where `J_s = ∂s/∂x` is the Jacobian with respect to the input.
///
/// Exact and sliced score matching need `tr(J_s)` and `vᵀ J_s v`, and the probability-flow
/// likelihood needs the divergence `tr(J_s)`. Burn's autodiff is first-order only, so these
/// come from forward-mode JVPs, which are ordinary tensor expressions and can themselves be
/// differentiated with respect to the parameters by backprop.
pub trait ScoreJvp<const D: usize>: ScoreModel<D> {
    /// Returns `(s(x), J_s(x)·v)`; `v` has the shape of `x`.
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>);

    /// `K` JVPs per sample at once: `v` has batch `K·B`, row `k·B + b` being the `k`-th
    /// direction for sample `b`; returns `(s(x)` with batch `B`, `J_s(x)·v` with batch `K·B)`.
    ///
    /// The default tiles `x` and `level` `K` times and calls [`score_jvp`](Self::score_jvp)
    /// once; networks built from dual layers override it to run the value path on the `B`
    /// samples only.
    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let b = x.dims()[0];
        let k = v.dims()[0] / b.max(1);
        if k == 1 {
            return self.score_jvp(x, level, v);
        }
        let (s, jvp) = self.score_jvp(x.repeat_dim(0, k), &level.tile(k), v);
        (s.narrow(0, 0, b), jvp)
    }
}

/// Blanket implementation: a reference to a score model is a score model.
impl<const D: usize, M: ScoreModel<D> + ?Sized> ScoreModel<D> for &M {
    fn batch_size(&self) -> Option<usize> {
        (**self).batch_size()
    }

    fn validate(&self) -> Result<()> {
        (**self).validate()
    }

    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        (**self).score(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        (**self).sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        (**self).float_dtype()
    }
}

/// Blanket implementation: a reference to a [`ScoreJvp`] model is one.
impl<const D: usize, M: ScoreJvp<D> + ?Sized> ScoreJvp<D> for &M {
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        (**self).score_jvp(x, level, v)
    }

    fn score_jvp_many(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
        v: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        (**self).score_jvp_many(x, level, v)
    }
}

/// A network that predicts the noise `ε` of `xₜ = m·x₀ + σ·ε` (DDPM's parameterisation).
/// Wrap it in [`FromEpsilon`] to use it wherever a [`ScoreModel`] is expected.
pub trait EpsilonModel<const D: usize> {
    /// The predicted noise `ε̂(x, level)`, the same shape as `x`.
    fn epsilon(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D>;

    /// As [`ScoreModel::sample_shape`].
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// As [`ScoreModel::float_dtype`].
    fn float_dtype(&self) -> Option<DType> {
        None
    }
}

/// An [`EpsilonModel`] with an exact Jacobian-vector product `(ε̂, J_ε̂·v)`.
pub trait EpsilonJvp<const D: usize>: EpsilonModel<D> {
    /// Returns `(ε̂(x), ∂ε̂/∂x · v)`.
    fn epsilon_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>)
    -> (Tensor<D>, Tensor<D>);
}

/// A network that predicts the clean data `x̂₀` from `xₜ` (a denoiser).
/// Wrap it in [`FromDenoiser`] to use it wherever a [`ScoreModel`] is expected.
pub trait DenoiserModel<const D: usize> {
    /// The predicted clean data `x̂₀(x, level)`, the same shape as `x`.
    fn denoise(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D>;

    /// As [`ScoreModel::sample_shape`].
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// As [`ScoreModel::float_dtype`].
    fn float_dtype(&self) -> Option<DType> {
        None
    }
}

/// A [`DenoiserModel`] with an exact Jacobian-vector product `(x̂₀, J_x̂₀·v)`.
pub trait DenoiserJvp<const D: usize>: DenoiserModel<D> {
    /// Returns `(x̂₀(x), ∂x̂₀/∂x · v)`.
    fn denoise_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>)
    -> (Tensor<D>, Tensor<D>);
}

/// The score of an ε-prediction network: `s = −ε̂/σ` (Tweedie, since
/// `∇ log p(xₜ | x₀) = −ε/σ`).
#[derive(Debug, Clone)]
pub struct FromEpsilon<M>(pub M);

impl<const D: usize, M: EpsilonModel<D>> ScoreModel<D> for FromEpsilon<M> {
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let sigma = per_sample::<D>(&level.sigma, &x);
        self.0.epsilon(x, level).div(sigma).neg()
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.0.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.0.float_dtype()
    }
}

impl<const D: usize, M: EpsilonJvp<D>> ScoreJvp<D> for FromEpsilon<M> {
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let sigma = per_sample::<D>(&level.sigma, &x);
        let (eps, jvp) = self.0.epsilon_jvp(x, level, v);
        (eps.div(sigma.clone()).neg(), jvp.div(sigma).neg())
    }
}

/// The score of a denoiser: `s = (m·x̂₀ − x)/σ²` (Tweedie's formula
/// `E[x₀ | xₜ] = (xₜ + σ²∇ log pₜ(xₜ))/m`).
#[derive(Debug, Clone)]
pub struct FromDenoiser<M>(pub M);

impl<const D: usize, M: DenoiserModel<D>> ScoreModel<D> for FromDenoiser<M> {
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let scale = per_sample::<D>(&level.scale, &x);
        let var = per_sample::<D>(&level.sigma, &x).square();
        let x0 = self.0.denoise(x.clone(), level);
        x0.mul(scale).sub(x).div(var)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.0.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.0.float_dtype()
    }
}

impl<const D: usize, M: DenoiserJvp<D>> ScoreJvp<D> for FromDenoiser<M> {
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let scale = per_sample::<D>(&level.scale, &x);
        let var = per_sample::<D>(&level.sigma, &x).square();
        let (x0, jvp) = self.0.denoise_jvp(x.clone(), level, v.clone());
        let score = x0.mul(scale.clone()).sub(x).div(var.clone());
        (score, jvp.mul(scale).sub(v).div(var))
    }
}

/// Reshapes a per-sample quantity `[B]` to `[B, 1, …, 1]` (rank `D`) so it broadcasts against
/// a batch like `like`, in `like`'s dtype.
pub fn per_sample<const D: usize>(values: &Tensor<1>, like: &Tensor<D>) -> Tensor<D> {
    let mut shape = [1usize; D];
    shape[0] = values.dims()[0];
    values.clone().cast(like.dtype()).reshape(shape)
}

/// Checks that `x` is a batch of samples of shape `expected` (if known) and that `level`
/// holds one level per batch element.
pub fn check_batch<const D: usize>(
    context: &'static str,
    x: &Tensor<D>,
    expected: Option<&[usize]>,
    level: &NoiseLevel,
) -> Result<()> {
    let dims = x.dims();
    if let Some(expected) = expected
        && dims[1..] != *expected
    {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("[batch, {}]", join(expected)),
            got: format!("{dims:?}"),
        });
    }
    let n = level.batch_size();
    if n != dims[0] {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("{} noise levels (one per batch element)", dims[0]),
            got: format!("{n}"),
        });
    }
    Ok(())
}

/// Checks that a batch `x` is in the float type `expected` that a model computes in, when the
/// model says ([`ScoreModel::float_dtype`]), before the model runs: [`Error::DTypeMismatch`]
/// naming both otherwise. `None` passes.
pub fn check_dtype<const D: usize>(
    context: &'static str,
    x: &Tensor<D>,
    expected: Option<DType>,
) -> Result<()> {
    match expected {
        Some(dtype) if x.dtype() != dtype => Err(Error::DTypeMismatch {
            context,
            expected: format!("{dtype:?} (the model's float type)"),
            got: format!("{:?}", x.dtype()),
        }),
        _ => Ok(()),
    }
}

/// Checks, before a model runs on the batch `x`, that the model can score as it is
/// ([`ScoreModel::validate`]: a conditional model needs its condition) and that `x` is in the
/// model's float type ([`check_dtype`]).
pub fn check_model<M: ScoreModel<D> + ?Sized, const D: usize>(
    context: &'static str,
    model: &M,
    x: &Tensor<D>,
) -> Result<()> {
    model.validate()?;
    check_dtype(context, x, model.float_dtype())
}

/// Checks that a model's output `out` has the shape and dtype of its input `x`
/// ([`Error::ShapeMismatch`], [`Error::DTypeMismatch`], both naming the two sides).
pub fn check_output<const D: usize>(
    context: &'static str,
    out: &Tensor<D>,
    x: &Tensor<D>,
) -> Result<()> {
    if out.dims() != x.dims() {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("{:?} (the shape of the input)", x.dims()),
            got: format!("{:?}", out.dims()),
        });
    }
    if out.dtype() != x.dtype() {
        return Err(Error::DTypeMismatch {
            context,
            expected: format!("{:?} (the dtype of the input)", x.dtype()),
            got: format!("{:?}", out.dtype()),
        });
    }
    Ok(())
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::VpSde;

    #[test]
    fn check_batch_rejects_wrong_sample_shape_and_level_count() {
        let device = crate::device("flex").unwrap();
        let vp = VpSde::new(0.1, 20.0).unwrap();
        let x = Tensor::<2>::zeros([4, 3], &device);
        let level = NoiseLevel::constant(&vp, 0.5, 4, &device);
        assert!(check_batch("test", &x, Some(&[3]), &level).is_ok());
        assert!(check_batch("test", &x, None, &level).is_ok());
        let err = check_batch("test", &x, Some(&[2]), &level).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { context: "test", .. }), "{err}");
        let short = NoiseLevel::constant(&vp, 0.5, 3, &device);
        let err = check_batch("test", &x, Some(&[3]), &short).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }

    /// Levels carry the float type of the run: in f64 the marginal of the VP SDE to f64
    /// precision (by hand: `m = exp(−¼t²(β₁ − β₀) − ½tβ₀)`, `σ = √(1 − m²)`), not its f32
    /// rounding; in the device's default type (f32) that rounding; the clean level likewise.
    #[test]
    fn noise_levels_carry_the_float_type_of_the_run() {
        let device = crate::device("flex").unwrap();
        let vp = VpSde::new(0.1, 20.0).unwrap();
        let times = [0.3, 0.7, 1.0 / 3.0];
        let by_hand = |t: f64| {
            let m = (-0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1).exp();
            (m, (1.0 - m * m).sqrt())
        };
        let host = |x: &Tensor<1>| x.clone().try_into_vec_as::<f64>().unwrap();
        let wide = NoiseLevel::at_times(&vp, &times, (&device, DType::F64));
        assert_eq!(
            (wide.dtype(), wide.t.dtype(), wide.scale.dtype()),
            (DType::F64, DType::F64, DType::F64)
        );
        assert_eq!(host(&wide.t), times, "t exactly, 1/3 included");
        for (i, &t) in times.iter().enumerate() {
            let (m, sigma) = by_hand(t);
            assert!((host(&wide.scale)[i] - m).abs() < 1e-14 * m, "{t}");
            assert!((host(&wide.sigma)[i] - sigma).abs() < 1e-14 * sigma, "{t}");
        }
        let narrow = NoiseLevel::constant(&vp, times[2], 2, &device);
        assert_eq!(narrow.dtype(), DType::F32);
        assert_eq!(host(&narrow.t)[1], f64::from(times[2] as f32));
        let constant = NoiseLevel::constant(&vp, times[2], 2, (&device, DType::F64));
        assert_eq!(host(&constant.sigma), vec![host(&wide.sigma)[2]; 2]);
        let clean = NoiseLevel::clean(3, (&device, DType::F64));
        assert_eq!(
            (clean.t.dtype(), clean.scale.dtype(), clean.sigma.dtype()),
            (DType::F64, DType::F64, DType::F64)
        );
        assert_eq!((host(&clean.scale), host(&clean.sigma)), (vec![1.0; 3], vec![0.0; 3]));
        assert_eq!(NoiseLevel::clean(3, &device).dtype(), DType::F32);
    }

    #[test]
    fn check_dtype_compares_the_batch_with_the_model_float_type() {
        let device = crate::device("flex").unwrap();
        let x = Tensor::<2>::zeros([2, 3], (&device, DType::F64));
        assert!(check_dtype("test", &x, None).is_ok());
        assert!(check_dtype("test", &x, Some(DType::F64)).is_ok());
        let err = check_dtype("test", &x, Some(DType::F32)).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { context: "test", .. }), "{err}");
        assert!(err.to_string().contains("F32") && err.to_string().contains("F64"), "{err}");
    }

    #[test]
    fn noise_level_holds_the_schedule_marginal_and_repeats() {
        let device = crate::device("flex").unwrap();
        let vp = VpSde::new(0.1, 20.0).unwrap();
        let level = NoiseLevel::at_times(&vp, &[0.5, 1.0], &device).repeat_interleave(2);
        let sigma = level.sigma.try_into_vec_as::<f64>().unwrap();
        let scale = level.scale.try_into_vec_as::<f64>().unwrap();
        let t = level.t.try_into_vec_as::<f64>().unwrap();
        assert_eq!(t, [0.5, 0.5, 1.0, 1.0]);
        for (i, &ti) in t.iter().enumerate() {
            let m = vp.marginal(ti);
            assert!((sigma[i] - m.std).abs() < 1e-6 && (scale[i] - m.scale).abs() < 1e-6);
        }
    }
}
