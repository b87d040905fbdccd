//! Exact oracles: Gaussians and Gaussian mixtures whose perturbed score is known in closed
//! form under every noise schedule.
//!
//! Perturbing `x₀ ~ N(μ, diag(s²))` with `xₜ = m·x₀ + σ·z` gives `N(m·μ, diag(m²s² + σ²))`,
//! so a mixture `Σₖ wₖ N(μₖ, sₖ² I)` becomes `Σₖ wₖ N(m·μₖ, vₖ I)` with `vₖ = m²sₖ² + σ²`.
//! Its score is `∇ log pₜ(x) = Σₖ rₖ(x)·gₖ(x)` with `gₖ = (m·μₖ − x)/vₖ` and the
//! responsibilities `rₖ = softmax_k(log wₖ + log N(x; m·μₖ, vₖ I))`, and the Jacobian-vector
//! product is `J·u = Σₖ rₖ·[(gₖ·u − s·u)·gₖ − u/vₖ]`.
//!
//! Both types implement [`ScoreModel`] and [`ScoreJvp`] exactly (at the noise level of each
//! batch element), so every objective and sampler can be tested against them, and they are the
//! first thing a tutorial shows. The computations follow the dtype of the input tensor: pass
//! f64 tensors for f64 precision. Samples are drawn in f64 on the host and created in the
//! float type of the options given: `&device` (the device's default) or `(&device, DType::F64)`.

use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorCreationOptions, TensorData};
use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand_distr::StandardNormal;

use crate::condition::{ConditionalScoreModel, Labels};
use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::guidance::NoisyClassifier;
use crate::score::{NoiseLevel, ScoreJvp, ScoreModel};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// A Gaussian `N(μ, diag(s²))` in `R^d` (isotropic when every `sᵢ` is equal).
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Gaussian {
    /// A diagonal Gaussian with the given mean and per-dimension standard deviations.
    pub fn diagonal(mean: &[f64], std: &[f64]) -> Result<Self> {
        if mean.is_empty() {
            return Err(Error::invalid("mean", "[]", "must have at least one dimension"));
        }
        if std.len() != mean.len() {
            return Err(Error::ShapeMismatch {
                context: "Gaussian::diagonal std",
                expected: format!("{} values (one per dimension)", mean.len()),
                got: format!("{}", std.len()),
            });
        }
        for &m in mean {
            ensure_finite("mean", m)?;
        }
        for &s in std {
            ensure_positive("std", s)?;
        }
        Ok(Gaussian { mean: mean.to_vec(), std: std.to_vec() })
    }

    /// An isotropic Gaussian `N(μ, s² I)`.
    pub fn isotropic(mean: &[f64], std: f64) -> Result<Self> {
        Self::diagonal(mean, &vec![std; mean.len()])
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The mean `μ`.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The per-dimension standard deviations `s`.
    pub fn std(&self) -> &[f64] {
        &self.std
    }

    /// `n` samples, shape `[n, d]`, from host randomness, on the device and in the float type
    /// of `options` (`&device`, or `(&device, dtype)` for a run in `dtype`).
    pub fn sample<R: Rng + ?Sized>(
        &self,
        n: usize,
        options: impl Into<TensorCreationOptions>,
        rng: &mut R,
    ) -> Tensor<2> {
        let d = self.dim();
        let mut values = Vec::with_capacity(n * d);
        for _ in 0..n {
            for (m, s) in self.mean.iter().zip(&self.std) {
                let z: f64 = StandardNormal.sample(rng);
                values.push(m + s * z);
            }
        }
        Tensor::from_data(TensorData::new(values, [n, d]), options)
    }

    /// The exact log-density of the clean distribution, per batch element of `x` (`[B, ...]`,
    /// `d` elements per sample).
    pub fn log_prob<const D: usize>(&self, x: Tensor<D>) -> Tensor<1> {
        let level = NoiseLevel::clean(x.dims()[0], (&x.device(), x.dtype()));
        self.log_prob_at(x, &level)
    }

    /// The exact log-density of the perturbed marginal `pₜ` at each element's noise level.
    pub fn log_prob_at<const D: usize>(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<1> {
        let (x, center, var) = self.perturbed(x, level);
        let b = x.dims()[0];
        let terms = (x - center).square().div(var.clone()).add(var.log().add_scalar(LN_2PI));
        terms.sum_dim(1).reshape([b]).mul_scalar(-0.5)
    }

    /// `(x` flattened to `[B, d]`, the perturbed mean `m·μ` and variance `m²s² + σ²`, both
    /// `[B, d])`.
    fn perturbed<const D: usize>(
        &self,
        x: Tensor<D>,
        level: &NoiseLevel,
    ) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let x = flatten(x, self.dim());
        let b = x.dims()[0];
        let (scale, sigma) = level_columns(level, &x);
        let mu = constant(&self.mean, [1, self.dim()], &x);
        let s2 = constant(&self.std.iter().map(|s| s * s).collect::<Vec<_>>(), [1, self.dim()], &x);
        let center = scale.clone().mul(mu);
        let var = scale.square().mul(s2).add(sigma.square()).expand([b, self.dim()]);
        (x, center, var)
    }
}

impl<const D: usize> ScoreModel<D> for Gaussian {
    /// `(m·μ − x)/(m²s² + σ²)`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let shape = x.dims();
        let (x, center, var) = self.perturbed(x, level);
        (center - x).div(var).reshape(shape)
    }
}

impl<const D: usize> ScoreJvp<D> for Gaussian {
    /// The Jacobian is diagonal, `−1/(m²s² + σ²)`.
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let shape = x.dims();
        let (x, center, var) = self.perturbed(x, level);
        let v = flatten(v, self.dim());
        let score = (center - x).div(var.clone()).reshape(shape);
        (score, v.div(var).neg().reshape(shape))
    }
}

/// A mixture of isotropic Gaussians `Σₖ wₖ N(μₖ, sₖ² I)` in `R^d`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    stds: Vec<f64>,
}

/// The per-component quantities at a batch of points, all computed with tensor ops.
struct Components {
    /// `[B, K]` unnormalised log posterior of each component (log wₖ + log N).
    logits: Tensor<2>,
    /// `[B, K, d]` `gₖ = (m·μₖ − x)/vₖ`.
    grads: Tensor<3>,
    /// `[B, K]` perturbed variances `vₖ = m²sₖ² + σ²`.
    var: Tensor<2>,
}

impl GaussianMixture {
    /// A mixture with the given weights (positive; normalised to sum to 1), component means
    /// (all of the same dimension `d`) and per-component isotropic standard deviations.
    pub fn new(weights: &[f64], means: &[Vec<f64>], stds: &[f64]) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(Error::invalid("weights", "[]", "a mixture needs at least one component"));
        }
        if means.len() != k || stds.len() != k {
            return Err(Error::ShapeMismatch {
                context: "GaussianMixture::new",
                expected: format!("{k} means and {k} stds (one per weight)"),
                got: format!("{} means and {} stds", means.len(), stds.len()),
            });
        }
        let d = means[0].len();
        if d == 0 {
            return Err(Error::invalid(
                "means",
                "[]",
                "components must have at least one dimension",
            ));
        }
        if let Some(bad) = means.iter().find(|m| m.len() != d) {
            return Err(Error::ShapeMismatch {
                context: "GaussianMixture::new means",
                expected: format!("every mean of dimension {d}"),
                got: format!("a mean of dimension {}", bad.len()),
            });
        }
        for &w in weights {
            ensure_positive("weights", w)?;
        }
        for &m in means.iter().flatten() {
            ensure_finite("means", m)?;
        }
        for &s in stds {
            ensure_positive("stds", s)?;
        }
        let total: f64 = weights.iter().sum();
        Ok(GaussianMixture {
            weights: weights.iter().map(|w| w / total).collect(),
            means: means.to_vec(),
            stds: stds.to_vec(),
        })
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// The normalised weights `wₖ`.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The component means `μₖ`.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }

    /// The component standard deviations `sₖ`.
    pub fn stds(&self) -> &[f64] {
        &self.stds
    }

    /// The exact conditional `p(x_B | x_A = a)` given the coordinates `known = [(i, aᵢ), …]`:
    /// again a mixture of isotropic Gaussians, over the unknown coordinates `B` (in their
    /// order), with the same means `μₖ_B` and standard deviations `sₖ`, and the weights
    ///
    /// ```text
    /// wₖ' ∝ wₖ · N(a; μₖ_A, sₖ² I) ∝ wₖ · sₖ^(−|A|) · exp(−‖a − μₖ_A‖² / (2 sₖ²))
    /// ```
    ///
    /// (the components' coordinates are independent, so each factorises over `A` and `B`).
    ///
    /// Errors with [`Error::InvalidParameter`] for an index out of range or repeated, a
    /// non-finite value, no known coordinate or no unknown one left.
    pub fn conditional(&self, known: &[(usize, f64)]) -> Result<GaussianMixture> {
        let d = self.dim();
        let mut is_known = vec![false; d];
        for &(i, a) in known {
            if i >= d {
                return Err(Error::invalid("known coordinate", i, format!("the mixture has {d}")));
            }
            if std::mem::replace(&mut is_known[i], true) {
                return Err(Error::invalid("known coordinate", i, "given twice"));
            }
            ensure_finite("known value", a)?;
        }
        if known.is_empty() || known.len() == d {
            let reason = "at least one coordinate must be known and one unknown";
            return Err(Error::invalid("known coordinates", known.len(), reason));
        }
        let log_w: Vec<f64> = (0..self.weights.len())
            .map(|k| {
                let s2 = self.stds[k] * self.stds[k];
                let sq: f64 = known.iter().map(|&(i, a)| (a - self.means[k][i]).powi(2)).sum();
                self.weights[k].ln() - known.len() as f64 * self.stds[k].ln() - sq / (2.0 * s2)
            })
            .collect();
        let top = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = log_w.iter().map(|l| (l - top).exp()).collect();
        let means: Vec<Vec<f64>> = self
            .means
            .iter()
            .map(|m| (0..d).filter(|&i| !is_known[i]).map(|i| m[i]).collect())
            .collect();
        // Components whose weight underflows to 0 carry no mass: drop them.
        let keep: Vec<usize> = (0..weights.len()).filter(|&k| weights[k] > 0.0).collect();
        GaussianMixture::new(
            &keep.iter().map(|&k| weights[k]).collect::<Vec<_>>(),
            &keep.iter().map(|&k| means[k].clone()).collect::<Vec<_>>(),
            &keep.iter().map(|&k| self.stds[k]).collect::<Vec<_>>(),
        )
    }

    /// `n` samples, shape `[n, d]`, from host randomness, together with the index of the
    /// component each came from; `options` as in [`sample`](Self::sample).
    pub fn sample_with_components<R: Rng + ?Sized>(
        &self,
        n: usize,
        options: impl Into<TensorCreationOptions>,
        rng: &mut R,
    ) -> (Tensor<2>, Vec<usize>) {
        let d = self.dim();
        let pick = WeightedIndex::new(&self.weights).expect("weights validated at construction");
        let mut values = Vec::with_capacity(n * d);
        let mut components = Vec::with_capacity(n);
        for _ in 0..n {
            let k = pick.sample(rng);
            components.push(k);
            for &m in &self.means[k] {
                let z: f64 = StandardNormal.sample(rng);
                values.push(m + self.stds[k] * z);
            }
        }
        (Tensor::from_data(TensorData::new(values, [n, d]), options), components)
    }

    /// `n` samples, shape `[n, d]`, from host randomness, on the device and in the float type
    /// of `options` (`&device`, or `(&device, dtype)` for a run in `dtype`).
    pub fn sample<R: Rng + ?Sized>(
        &self,
        n: usize,
        options: impl Into<TensorCreationOptions>,
        rng: &mut R,
    ) -> Tensor<2> {
        self.sample_with_components(n, options, rng).0
    }

    /// The exact log-density of the clean mixture per batch element of `x` (`[B, ...]`).
    pub fn log_prob<const D: usize>(&self, x: Tensor<D>) -> Tensor<1> {
        let level = NoiseLevel::clean(x.dims()[0], (&x.device(), x.dtype()));
        self.log_prob_at(x, &level)
    }

    /// The exact log-density of the perturbed mixture `pₜ` at each element's noise level.
    pub fn log_prob_at<const D: usize>(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<1> {
        let b = x.dims()[0];
        let logits = self.components(flatten(x, self.dim()), level).logits;
        let max = logits.clone().max_dim(1);
        let lse = logits.sub(max.clone()).exp().sum_dim(1).log().add(max);
        lse.reshape([b])
    }

    /// The posterior probability `rₖ(x)` of each component at each element's noise level,
    /// shape `[B, K]`.
    pub fn responsibilities<const D: usize>(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<2> {
        softmax(self.components(flatten(x, self.dim()), level).logits, 1)
    }

    fn components(&self, x: Tensor<2>, level: &NoiseLevel) -> Components {
        let [b, d] = x.dims();
        let k = self.weights.len();
        let (scale, sigma) = level_columns(level, &x);
        let means: Vec<f64> = self.means.iter().flatten().copied().collect();
        let mu = constant(&means, [1, k, d], &x);
        let s2 = constant(&self.stds.iter().map(|s| s * s).collect::<Vec<_>>(), [1, k], &x);
        let log_w = constant(&self.weights.iter().map(|w| w.ln()).collect::<Vec<_>>(), [1, k], &x);
        // v [B, K] = m² s² + σ²
        let var = scale.clone().square().mul(s2).add(sigma.square());
        // diff [B, K, d] = m·μₖ − x
        let diff = scale.reshape([b, 1, 1]).mul(mu).sub(x.reshape([b, 1, d]));
        let sq = diff.clone().square().sum_dim(2).reshape([b, k]);
        let logits = log_w
            .sub(sq.div(var.clone()).mul_scalar(0.5))
            .sub(var.clone().log().add_scalar(LN_2PI).mul_scalar(0.5 * d as f64));
        let grads = diff.div(var.clone().reshape([b, k, 1]));
        Components { logits, grads, var }
    }
}

impl<const D: usize> ScoreModel<D> for GaussianMixture {
    /// `Σₖ rₖ(x)·(m·μₖ − x)/vₖ`.
    fn score(&self, x: Tensor<D>, level: &NoiseLevel) -> Tensor<D> {
        let shape = x.dims();
        let c = self.components(flatten(x, self.dim()), level);
        let [b, k] = c.logits.dims();
        let r = softmax(c.logits, 1).reshape([b, k, 1]);
        r.mul(c.grads).sum_dim(1).reshape(shape)
    }
}

/// The components as classes: `p(x | y = k) = N(μₖ, sₖ² I)`, whose perturbed score is exactly
/// `gₖ = (m·μₖ − x)/vₖ`; the null class is the mixture itself. The oracle of conditional
/// sampling and guidance.
impl<const D: usize> ConditionalScoreModel<D, Labels> for GaussianMixture {
    fn score_given(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<D> {
        let shape = x.dims();
        let c = self.components(flatten(x, self.dim()), level);
        let [b, k] = c.logits.dims();
        // Per sample: a one-hot row for a class, the responsibilities for the null class.
        let r = softmax(c.logits.clone(), 1);
        let pick = one_hot(y, b, k, &c.logits);
        let null = pick.clone().sum_dim(1).neg().add_scalar(1.0); // 1 where no class is picked
        let weights = pick + r.mul(null);
        weights.reshape([b, k, 1]).mul(c.grads).sum_dim(1).reshape(shape)
    }
}

/// The exact noise-conditional classifier of the components: `log p(y = k | x, σ) = log rₖ(x)`,
/// the log responsibility (the null class: 0, no information). Its gradient is
/// `gₖ − s(x)`, so classifier guidance at `w = 1` gives the exact class-conditional score.
impl<const D: usize> NoisyClassifier<D> for GaussianMixture {
    fn log_prob(&self, x: Tensor<D>, level: &NoiseLevel, y: &Labels) -> Tensor<1> {
        let c = self.components(flatten(x, self.dim()), level);
        let [b, k] = c.logits.dims();
        let log_r = burn::tensor::activation::log_softmax(c.logits.clone(), 1);
        log_r.mul(one_hot(y, b, k, &c.logits)).sum_dim(1).reshape([b])
    }
}

/// `[b, k]`: row `i` one-hot at sample `i`'s class, all zero for the null class (or a class
/// the mixture does not have), on the device and dtype of `like`.
fn one_hot(y: &Labels, b: usize, k: usize, like: &Tensor<2>) -> Tensor<2> {
    let mut pick = vec![0.0; b * k];
    for (i, label) in y.ids().iter().enumerate().take(b) {
        if let Some(class) = label.filter(|&class| class < k) {
            pick[i * k + class] = 1.0;
        }
    }
    constant(&pick, [b, k], like)
}

impl<const D: usize> ScoreJvp<D> for GaussianMixture {
    /// `J·u = Σₖ rₖ·[(gₖ·u − s·u)·gₖ − u/vₖ]`.
    fn score_jvp(&self, x: Tensor<D>, level: &NoiseLevel, v: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let shape = x.dims();
        let d = self.dim();
        let c = self.components(flatten(x, d), level);
        let [b, k] = c.logits.dims();
        let u = flatten(v, d);
        let r = softmax(c.logits, 1);
        let score = r.clone().reshape([b, k, 1]).mul(c.grads.clone()).sum_dim(1).reshape([b, d]);
        let gu = c.grads.clone().mul(u.clone().reshape([b, 1, d])).sum_dim(2).reshape([b, k]);
        let su = score.clone().mul(u.clone()).sum_dim(1); // [B, 1]
        let coef = r.clone().mul(gu.sub(su)).reshape([b, k, 1]);
        let curvature = coef.mul(c.grads).sum_dim(1).reshape([b, d]);
        let inv_var = r.div(c.var).sum_dim(1); // [B, 1]
        let jvp = curvature.sub(u.mul(inv_var));
        (score.reshape(shape), jvp.reshape(shape))
    }
}

/// Flattens `[B, ...]` to `[B, d]`.
fn flatten<const D: usize>(x: Tensor<D>, d: usize) -> Tensor<2> {
    let b = x.dims()[0];
    x.reshape([b, d])
}

/// A constant tensor with the device and dtype of `like`.
fn constant<const D: usize, const D2: usize>(
    values: &[f64],
    shape: [usize; D],
    like: &Tensor<D2>,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (&like.device(), like.dtype()))
}

/// The scale `m` and std `σ` of a noise level as `[B, 1]` columns in the dtype of `like`.
fn level_columns(level: &NoiseLevel, like: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let b = like.dims()[0];
    let col = |t: &Tensor<1>| t.clone().cast(like.dtype()).reshape([b, 1]);
    (col(&level.scale), col(&level.sigma))
}
