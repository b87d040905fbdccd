//! Conditioning: a score model that takes a per-sample condition, and the adapter that makes
//! it an ordinary [`ScoreModel`] for every sampler.
//!
//! ```text
//! ConditionalScoreModel::score_given(x, level, y) ≈ ∇ₓ log pₜ(x | y)
//! Given::new(model, y)                             a ScoreModel: s(x, level) = score_given(x, level, y)
//! ClassifierFree { w }:  s_w(x | y) = s(x | ∅) + w·(s(x | y) − s(x | ∅))     (Ho & Salimans 2022)
//! ```
//!
//! The design keeps [`ScoreModel`] as it is: unconditional models, samplers and users' own
//! implementations do not change. A conditional model implements [`ConditionalScoreModel`]
//! for its condition type (class [`Labels`] by default, any type where that is natural); the
//! condition is bound per sample with [`Given`], which checks it against the batch and is a
//! `ScoreModel`, so the driver, every step and every sampler run conditional models
//! unchanged. A conditional model cannot be sampled without a condition: it is not a
//! `ScoreModel` until bound (a type error, not a run-time one). Guidance methods are
//! conditional models that wrap conditional models ([`ClassifierFree`]).
//!
//! A user's own conditional model: unit Gaussians whose mean is the class id along every
//! axis (exact score `−(x − m·y)/(m² + σ²)`), sampled for class 2 with guidance:
//!
//! ```
//! use burn::tensor::Tensor;
//! use scorefield_core::condition::{ClassifierFree, ConditionalScoreModel, Given, Labels};
//! use scorefield_core::sampler::{Driver, EulerAncestral, Grid, PerSampleNoise};
//! use scorefield_core::schedule::Karras;
//! use scorefield_core::score::per_sample;
//! use scorefield_core::NoiseLevel;
//!
//! struct ClassMeans;
//!
//! impl ConditionalScoreModel<2> for ClassMeans {
//!     fn score_given(&self, x: Tensor<2>, level: &NoiseLevel, y: &Labels) -> Tensor<2> {
//!         // The null class (classifier-free training's ∅) is the class-0 Gaussian here.
//!         let ids: Vec<f64> = y.ids().iter().map(|c| c.unwrap_or(0) as f64).collect();
//!         let mean = Tensor::<1>::from_floats(ids.as_slice(), &x.device()).cast(x.dtype());
//!         let (m, s) = (level.scale.clone(), level.sigma.clone());
//!         let var = m.clone().square().add(s.square());
//!         let centre = per_sample(&m.mul(mean), &x);
//!         (centre - x.clone()).div(per_sample(&var, &x))
//!     }
//! }
//!
//! let device = scorefield_core::device("flex")?;
//! let guided = ClassifierFree::new(ClassMeans, 1.5)?;
//! let model = Given::new(guided, Labels::all(2, 64, 10)?)?; // a ScoreModel now
//! let grid = Grid::from_sigmas(Karras::edm(), &[10.0, 3.0, 1.0, 0.3, 0.1])?.with_zero();
//! let driver = Driver::new(EulerAncestral::default(), grid);
//! let mut noise = PerSampleNoise::new(0, 64);
//! let init = driver.prior_sample([64, 2], &device, &mut noise)?;
//! let x = driver.run(&model, init, &mut noise, &mut ())?.x;
//! assert_eq!(x.dims(), [64, 2]);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use burn::tensor::{DType, Tensor};

use crate::error::{Error, Result, ensure_finite};
use crate::score::{NoiseLevel, ScoreModel, per_sample};

/// Class labels, one per sample, out of `classes`; a sample may carry the null class `∅`
/// (the unconditional model of classifier-free guidance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    ids: Vec<Option<usize>>,
    classes: usize,
}

impl Labels {
    /// Labels `ids` (each `< classes`; `None` is the null class).
    ///
    /// Errors with [`Error::InvalidParameter`] if `classes = 0` or a label is `≥ classes`.
    pub fn new(ids: Vec<Option<usize>>, classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(Error::invalid("classes", 0, "at least one class"));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&y| y >= classes) {
            return Err(Error::invalid("label", bad, format!("out of range: {classes} classes")));
        }
        Ok(Labels { ids, classes })
    }

    /// Every sample labelled `y`, for a batch of `n`.
    ///
    /// Errors as [`Labels::new`].
    pub fn all(y: usize, n: usize, classes: usize) -> Result<Self> {
        Labels::new(vec![Some(y); n], classes)
    }

    /// The null class for every sample of a batch of `n`.
    ///
    /// Errors with [`Error::InvalidParameter`] if `classes = 0`.
    pub fn null(n: usize, classes: usize) -> Result<Self> {
        Labels::new(vec![None; n], classes)
    }

    /// The same batch with every label replaced by the null class.
    pub fn to_null(&self) -> Self {
        Labels { ids: vec![None; self.ids.len()], classes: self.classes }
    }

    /// The labels.
    pub fn ids(&self) -> &[Option<usize>] {
        &self.ids
    }

    /// The number of classes (the null class not counted).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The batch size.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Label dropout for classifier-free training: each label independently replaced by the
    /// null class with probability `p` (Ho & Salimans 2022 use 0.1–0.2), so one network
    /// learns `s(x | y)` and `s(x | ∅)`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `0 ≤ p ≤ 1`.
    pub fn dropout(&self, p: f64, rng: &mut dyn rand::RngCore) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("label dropout", p, "must be in [0, 1]"));
        }
        let ids = self
            .ids
            .iter()
            .map(|&y| if rand::Rng::random::<f64>(rng) < p { None } else { y })
            .collect();
        Ok(Labels { ids, classes: self.classes })
    }

    /// The labels of a batch repeated `times` times one after the other (`[y; y; …]`), for a
    /// batch tiled the same way.
    pub fn tile(&self, times: usize) -> Self {
        Labels { ids: self.ids.repeat(times), classes: self.classes }
    }

    /// Each label repeated `times` times in place (`[y₀, y₀, …, y₁, y₁, …]`), for a batch
    /// expanded the same way (several samples per condition).
    pub fn repeat_interleave(&self, times: usize) -> Self {
        let ids = self.ids.iter().flat_map(|&y| std::iter::repeat_n(y, times)).collect();
        Labels { ids, classes: self.classes }
    }

    /// Checks that a model of `classes` classes accepts these labels.
    ///
    /// Errors with [`Error::InvalidParameter`] if the labels were made for another number of
    /// classes.
    pub fn check_classes(&self, classes: usize) -> Result<()> {
        if self.classes != classes {
            return Err(Error::invalid(
                "labels",
                format!("{} classes", self.classes),
                format!("the model has {classes} classes"),
            ));
        }
        Ok(())
    }
}

/// A condition that belongs to the samples of a batch.
pub trait Condition {
    /// The number of samples it conditions.
    fn batch_size(&self) -> usize;

    /// The conditions of `n` equal consecutive shards of the batch, for data-parallel
    /// training; `None` if the condition cannot be split that way (the default: a trainer
    /// with several ranks then refuses the batch with a typed error).
    fn shards(&self, _n: usize) -> Option<Vec<Self>>
    where
        Self: Sized,
    {
        None
    }
}

impl Condition for Labels {
    fn batch_size(&self) -> usize {
        self.len()
    }

    /// `None` unless the batch size is a positive multiple of `n`.
    fn shards(&self, n: usize) -> Option<Vec<Self>> {
        let b = self.len();
        if n == 0 || b == 0 || !b.is_multiple_of(n) {
            return None;
        }
        let size = b / n;
        let shard = |ids: &[Option<usize>]| Labels { ids: ids.to_vec(), classes: self.classes };
        Some(self.ids.chunks(size).map(shard).collect())
    }
}

/// A score model of `p(x | y)`: `score_given(x, level, y) ≈ ∇ₓ log pₜ(x | y)` for a batch `x`
/// (`[B, ...]`) with one condition per sample in `y`.
pub trait ConditionalScoreModel<const D: usize, C: Condition = Labels> {
    /// `s(x, level | y)`, the same shape as `x`; `y.batch_size() = B` (checked by [`Given`]).
    fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &C) -> Tensor<D>;

    /// As [`ScoreModel::sample_shape`].
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// As [`ScoreModel::float_dtype`].
    fn float_dtype(&self) -> Option<DType> {
        None
    }

    /// Checks that the model accepts the condition `y` (a network: labels of its number of
    /// classes); [`Given`] calls it before a sampler or an objective scores. The default
    /// accepts.
    fn validate_condition(&self, _y: &C) -> Result<()> {
        Ok(())
    }
}

/// A reference to a conditional model is a conditional model (so [`Given`] can borrow one,
/// as the trainer does for each batch).
impl<const D: usize, C: Condition, M: ConditionalScoreModel<D, C> + ?Sized>
    ConditionalScoreModel<D, C> for &M
{
    fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &C) -> Tensor<D> {
        (**self).score_given(x, level, y)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        (**self).sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        (**self).float_dtype()
    }

    fn validate_condition(&self, y: &C) -> Result<()> {
        (**self).validate_condition(y)
    }
}

/// A conditional model with its condition bound: a [`ScoreModel`] for every sampler.
#[derive(Debug, Clone)]
pub struct Given<M, C> {
    model: M,
    condition: C,
}

impl<M, C: Condition> Given<M, C> {
    /// `model` conditioned on `condition`, one per sample of the batches it will score.
    ///
    /// Errors with [`Error::ShapeMismatch`] for an empty condition.
    pub fn new(model: M, condition: C) -> Result<Self> {
        if condition.batch_size() == 0 {
            return Err(Error::ShapeMismatch {
                context: "Given::new",
                expected: "a condition for at least one sample".into(),
                got: "none".into(),
            });
        }
        Ok(Given { model, condition })
    }

    /// The condition.
    pub fn condition(&self) -> &C {
        &self.condition
    }
}

impl<M, C, const D: usize> ScoreModel<D> for Given<M, C>
where
    M: ConditionalScoreModel<D, C>,
    C: Condition,
{
    /// `score_given(x, level, y)`. A batch of another size than the condition's gets an empty
    /// output, which every caller in the library reports as [`Error::ShapeMismatch`]; samplers
    /// refuse such a batch before the first step ([`ScoreModel::batch_size`]).
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        if x.dims()[0] != self.condition.batch_size() {
            let mut empty = x.dims();
            empty[0] = 0;
            return Tensor::zeros(empty, (&x.device(), x.dtype()));
        }
        self.model.score_given(x, level, &self.condition)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.model.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.model.float_dtype()
    }

    fn batch_size(&self) -> Option<usize> {
        Some(self.condition.batch_size())
    }

    fn validate(&self) -> Result<()> {
        self.model.validate_condition(&self.condition)
    }
}

/// Classifier-free guidance (Ho & Salimans 2022) of a model trained with a null class:
/// `s_w(x | y) = s(x | ∅) + w·(s(x | y) − s(x | ∅))`, applied only at levels with
/// `σ̃ = σ/m` inside `interval` if one is set (Kynkäänniemi et al. 2024), plain `s(x | y)`
/// elsewhere. `w = 0` is the unconditional model, `w = 1` the conditional one. Autoguidance
/// (Karras et al. 2024) is [`ClassifierFree::autoguidance`]: the same with a weaker model in
/// place of the unconditional one. Autoguidance of two unconditional models is a
/// [`ScoreModel`] itself, `s_w(x) = s_weak(x) + w·(s(x) − s_weak(x))`, sampled without labels
/// (an unconditional model is its own null class, so without a weak model it is the model).
#[derive(Debug, Clone)]
pub struct ClassifierFree<M, W = M> {
    model: M,
    guide: Option<W>,
    weight: f64,
    interval: Option<(f64, f64)>,
}

impl<M> ClassifierFree<M> {
    /// Classifier-free guidance of `model` with weight `w` (its own null class is `s(x | ∅)`).
    ///
    /// Errors with [`Error::InvalidParameter`] for a non-finite `w`.
    pub fn new(model: M, weight: f64) -> Result<Self> {
        ensure_finite("guidance weight", weight)?;
        Ok(ClassifierFree { model, guide: None, weight, interval: None })
    }
}

impl<M, W> ClassifierFree<M, W> {
    /// Autoguidance: `s_w = s_weak(x | y) + w·(s(x | y) − s_weak(x | y))`, guiding `model` with
    /// a weaker (smaller or less trained) model of the same condition.
    ///
    /// Errors with [`Error::InvalidParameter`] for a non-finite `w`.
    pub fn autoguidance(model: M, weak: W, weight: f64) -> Result<Self> {
        ensure_finite("guidance weight", weight)?;
        Ok(ClassifierFree { model, guide: Some(weak), weight, interval: None })
    }

    /// Guidance only where `lo ≤ σ̃ ≤ hi`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `0 ≤ lo ≤ hi` (`hi` may be infinite).
    pub fn with_interval(self, lo: f64, hi: f64) -> Result<Self> {
        if !(lo >= 0.0 && lo <= hi) || lo.is_infinite() || hi.is_nan() {
            return Err(Error::invalid("interval", format!("[{lo}, {hi}]"), "need 0 ≤ lo ≤ hi"));
        }
        Ok(ClassifierFree { interval: Some((lo, hi)), ..self })
    }

    /// `base + w·(guided − base)`, per sample `w` inside the interval and 1 (the plain guided
    /// model) outside.
    fn combine<const D: usize>(
        &self,
        guided: Tensor<D>,
        base: Tensor<D>,
        level: &NoiseLevel,
    ) -> Tensor<D> {
        let diff = guided - base.clone();
        match self.interval {
            None => base + diff.mul_scalar(self.weight),
            Some((lo, hi)) => {
                let sigma = level.sigma.clone().div(level.scale.clone());
                let inside =
                    sigma.clone().greater_equal_elem(lo).bool_and(sigma.lower_equal_elem(hi));
                let w = inside.float().mul_scalar(self.weight - 1.0).add_scalar(1.0);
                let w = per_sample(&w, &diff);
                base + diff.mul(w)
            }
        }
    }
}

/// Autoguidance of an unconditional model by a weaker one (see [`ClassifierFree`]):
/// `s_weak(x) + w·(s(x) − s_weak(x))`; without a weak model, the model's own score.
impl<M, W, const D: usize> ScoreModel<D> for ClassifierFree<M, W>
where
    M: ScoreModel<D>,
    W: ScoreModel<D>,
{
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        match &self.guide {
            Some(weak) => {
                let base = weak.score(x.clone(), level);
                self.combine(self.model.score(x, level), base, level)
            }
            None => self.model.score(x, level),
        }
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

    fn validate(&self) -> Result<()> {
        self.model.validate()?;
        match &self.guide {
            Some(weak) => weak.validate(),
            None => Ok(()),
        }
    }
}

impl<M, W, const D: usize> ConditionalScoreModel<D, Labels> for ClassifierFree<M, W>
where
    M: ConditionalScoreModel<D, Labels>,
    W: ConditionalScoreModel<D, Labels>,
{
    fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<D> {
        let cond = self.model.score_given(x.clone(), level, y);
        let base = match &self.guide {
            Some(weak) => weak.score_given(x, level, y),
            None => self.model.score_given(x, level, &y.to_null()),
        };
        self.combine(cond, base, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.model.sample_shape()
    }

    fn float_dtype(&self) -> Option<DType> {
        self.model.float_dtype()
    }

    fn validate_condition(&self, y: &Labels) -> Result<()> {
        self.model.validate_condition(y)?;
        match &self.guide {
            Some(weak) => weak.validate_condition(y),
            None => Ok(()),
        }
    }
}
