//! Sample quality for MNIST digits: a compact CNN classifier that the project trains itself
//! ([`MnistClassifier`], [`train_classifier`]) and two numbers computed with it.
//!
//! ```text
//! x ∈ [0, 1]^{1×28×28},  x̃ = (x − 0.1307)/0.3081         (MNIST's pixel mean and std)
//! h₁ = maxpool₂(ReLU(conv3×3(1 → c₁)(x̃)))              14²
//! h₂ = maxpool₂(ReLU(conv3×3(c₁ → c₂)(h₁)))            7²
//! f  = ReLU(Linear(49·c₂ → F)(flatten h₂))             the penultimate features
//! p  = softmax(Linear(F → 10)(f))
//!
//! confident share  = (1/N) Σᵢ 1[maxₖ p_k(xᵢ) ≥ τ]                          (τ = 0.9)
//! Fréchet distance = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁C₂)^{1/2})             on the features f
//! tr (C₁C₂)^{1/2}  = tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} = Σⱼ √λⱼ(C₁^{1/2} C₂ C₁^{1/2})
//! ```
//!
//! The matrix square roots are taken in f64 on the host from symmetric eigendecompositions
//! (nalgebra's `SymmetricEigen`); `C₁^{1/2} C₂ C₁^{1/2}` is symmetric positive
//! semi-definite and similar to `C₁C₂`, so the trace of its square root is the trace in the
//! formula. Negative eigenvalues left by rounding are treated as 0.
//!
//! The Fréchet distance here is FID-like, not FID: the features are this classifier's `F = 64`
//! penultimate activations, not Inception's 2048, so its numbers are not comparable to
//! published FIDs. Like FID it is biased upwards for small samples (the covariance estimates
//! are noisy): compare a number with the floor of real digits against real digits at the same
//! sample sizes (the `sample_quality` example prints it, with the ceiling of pure noise).
//!
//! Only MNIST's test split ships with the project offline; the classifier trains on its first
//! 8,000 digits ([`CLASSIFIER_TRAIN`]) and is evaluated on the last 2,000
//! ([`CLASSIFIER_HELD_OUT`]), which also serve as the reference digits of [`evaluate`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::ModuleRecord;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use nalgebra::{DMatrix, SymmetricEigen};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use scorefield_core::Error;
use thiserror::Error;

use crate::image::{ImageError, write_atomically};
use crate::mnist::{Mnist, MnistError, SIDE};

/// The digits of MNIST's test split the classifier is trained on.
pub const CLASSIFIER_TRAIN: Range<usize> = 0..8_000;
/// The digits of MNIST's test split held out from the classifier: its accuracy is measured on
/// them, and they are the reference digits of the Fréchet distance.
pub const CLASSIFIER_HELD_OUT: Range<usize> = 8_000..10_000;
/// The number of classes (digits).
pub const CLASSES: usize = 10;
/// The confidence threshold of the confident share used by [`evaluate`].
pub const CONFIDENCE: f64 = 0.9;

/// The mean of MNIST's pixels in [0, 1], subtracted from the classifier's input.
const PIXEL_MEAN: f64 = 0.1307;
/// The standard deviation of MNIST's pixels in [0, 1], dividing the classifier's input.
const PIXEL_STD: f64 = 0.3081;

/// How many images go through the classifier at once when evaluating.
const CHUNK: usize = 500;

/// Builds a [`MnistClassifier`]; the fields are its hyper-parameters, saved with it.
#[derive(Config, Debug, PartialEq)]
pub struct MnistClassifierConfig {
    /// Channels `c₁` of the first convolution.
    #[config(default = 16)]
    pub conv1: usize,
    /// Channels `c₂` of the second convolution.
    #[config(default = 32)]
    pub conv2: usize,
    /// The number `F` of penultimate features (the space of the Fréchet distance).
    #[config(default = 64)]
    pub features: usize,
}

impl MnistClassifierConfig {
    /// Initialises the classifier on `device` (weights drawn by Burn's initialisers).
    pub fn init(&self, device: &Device) -> MnistClassifier {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let flat = self.conv2 * (SIDE / 4) * (SIDE / 4);
        MnistClassifier {
            conv1: conv(1, self.conv1),
            conv2: conv(self.conv1, self.conv2),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            hidden: LinearConfig::new(flat, self.features).init(device),
            output: LinearConfig::new(self.features, CLASSES).init(device),
            conv1_channels: self.conv1,
            conv2_channels: self.conv2,
            features: self.features,
        }
    }
}

/// A compact CNN that classifies 28×28 digits (see the [module docs](self)): two 3×3
/// convolutions with ReLU and 2×2 max-pooling, a hidden linear layer of `F` features, and a
/// linear layer to the 10 logits. Inputs are NCHW `[B, 1, 28, 28]` in [0, 1].
#[derive(Module, Debug)]
pub struct MnistClassifier {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    hidden: Linear,
    output: Linear,
    #[module(skip)]
    conv1_channels: usize,
    #[module(skip)]
    conv2_channels: usize,
    #[module(skip)]
    features: usize,
}

/// The file of a saved classifier's configuration, in its directory.
pub const CONFIG_FILE: &str = "classifier.json";
/// The file of a saved classifier's parameters (a burnpack record), in its directory.
pub const WEIGHTS_FILE: &str = "classifier.bpk";

/// What can go wrong saving or loading a classifier.
#[derive(Debug, Error)]
pub enum ClassifierError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a classifier's configuration or parameters, or they do not fit together.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl MnistClassifier {
    /// The configuration the classifier was built from.
    pub fn config(&self) -> MnistClassifierConfig {
        MnistClassifierConfig {
            conv1: self.conv1_channels,
            conv2: self.conv2_channels,
            features: self.features,
        }
    }

    /// The penultimate features `f`, `[B, F]`, of images `x` (`[B, 1, 28, 28]` in [0, 1]).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = x.sub_scalar(PIXEL_MEAN).div_scalar(PIXEL_STD);
        let h = self.pool.forward(relu(self.conv1.forward(x)));
        let h = self.pool.forward(relu(self.conv2.forward(h)));
        let [b, c, hh, ww] = h.dims();
        relu(self.hidden.forward(h.reshape([b, c * hh * ww])))
    }

    /// The class logits, `[B, 10]`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.output.forward(self.features(x))
    }

    /// The class probabilities `p = softmax(logits)`, `[B, 10]`.
    pub fn probabilities(&self, x: Tensor<4>) -> Tensor<2> {
        softmax(self.logits(x), 1)
    }

    /// Saves the classifier into the directory `dir` (created if needed): its configuration
    /// ([`CONFIG_FILE`]) and parameters ([`WEIGHTS_FILE`], Burn's burnpack record), each
    /// written atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), ClassifierError> {
        let dir = dir.as_ref();
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = self.valid().into_record().into_bytes().map_err(|e| {
            ClassifierError::Invalid { path: weights.clone(), reason: e.to_string() }
        })?;
        let write = |path: &Path, bytes: &[u8]| {
            write_atomically(path, bytes).map_err(|e| match e {
                ImageError::Io { path, source } => ClassifierError::Io { path, source },
                other => ClassifierError::Invalid { path: path.into(), reason: other.to_string() },
            })
        };
        write(&weights, &bytes)?;
        write(&dir.join(CONFIG_FILE), self.config().to_string().as_bytes())
    }

    /// Loads a classifier saved with [`save`](Self::save) from `dir` onto `device`, casting
    /// the parameters to the device's float type if it differs from the saved one.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ClassifierError> {
        let dir = dir.as_ref();
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ClassifierError::Io { path: path.into(), source })
        };
        let config_path = dir.join(CONFIG_FILE);
        let config = MnistClassifierConfig::load_binary(&read(&config_path)?).map_err(|e| {
            ClassifierError::Invalid { path: config_path.clone(), reason: e.to_string() }
        })?;
        let weights = dir.join(WEIGHTS_FILE);
        let invalid = |e: burn::store::RecordError| ClassifierError::Invalid {
            path: weights.clone(),
            reason: e.to_string(),
        };
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(read(&weights)?))
            .map_err(invalid)?
            .cast_to_module_dtype();
        config.init(device).try_load_record(record).map_err(invalid)
    }
}

/// The hyper-parameters of [`train_classifier`]: Adam with a constant learning rate on
/// shuffled mini-batches.
#[derive(Config, Debug, PartialEq)]
pub struct ClassifierTrainingConfig {
    /// Passes over the training digits.
    #[config(default = 4)]
    pub epochs: usize,
    /// Digits per step.
    #[config(default = 32)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[config(default = 2e-3)]
    pub learning_rate: f64,
    /// Seeds the weights (through the device's generator) and the shuffling.
    #[config(default = 0)]
    pub seed: u64,
}

/// One step of [`train_classifier`], as reported to its callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierStep {
    /// The epoch, from 0.
    pub epoch: usize,
    /// The step, from 0, counted over all epochs.
    pub step: usize,
    /// The total number of steps.
    pub total: usize,
    /// The mean cross-entropy of the batch, in nats.
    pub loss: f64,
}

/// Checks that every index addresses an image of `mnist`.
fn check_indices(mnist: &Mnist, indices: &[usize]) -> scorefield_core::Result<()> {
    mnist.labels_of(indices).map(drop).map_err(lookup_error)
}

/// An MNIST lookup's error as [`Error::InvalidParameter`] on `indices`.
fn lookup_error(e: MnistError) -> Error {
    match e {
        MnistError::IndexOutOfRange { index, len } => {
            Error::invalid("indices", index, format!("MNIST has {len} images"))
        }
        other => Error::invalid("indices", "?", other.to_string()),
    }
}

/// Trains a classifier built from `config` on the digits `indices` of `mnist` (pixels in
/// [0, 1], no augmentation) by minimising the cross-entropy with Adam, calling `on_step`
/// after every step; returns it outside autodiff.
///
/// Errors with [`Error::InvalidParameter`] for an index outside `mnist`, an empty index set,
/// a zero batch size or a non-positive learning rate, and with [`Error::NonFinite`] if the
/// loss diverges.
pub fn train_classifier(
    config: &MnistClassifierConfig,
    training: &ClassifierTrainingConfig,
    mnist: &Mnist,
    indices: &[usize],
    device: &Device,
    on_step: &mut dyn FnMut(&ClassifierStep),
) -> scorefield_core::Result<MnistClassifier> {
    check_indices(mnist, indices)?;
    if indices.is_empty() {
        return Err(Error::invalid("indices", "[]", "at least one digit is needed"));
    }
    if training.batch_size == 0 {
        return Err(Error::invalid("batch_size", 0, "must be at least 1"));
    }
    scorefield_core::error::ensure_positive("learning_rate", training.learning_rate)?;
    device.seed(training.seed);
    let mut model = config.init(device).train();
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = StdRng::seed_from_u64(training.seed);
    let mut order = indices.to_vec();
    let per_epoch = order.len().div_ceil(training.batch_size);
    let total = per_epoch * training.epochs;
    let mut step = 0;
    for epoch in 0..training.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(training.batch_size) {
            let x = mnist.images(batch, device).map_err(lookup_error)?;
            let loss = loss_fn.forward(model.logits(x), labels(mnist, batch, device)?);
            let value = loss.clone().inner().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    context: format!("classifier loss at step {step}"),
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(training.learning_rate, model, grads);
            on_step(&ClassifierStep { epoch, step, total, loss: value });
            step += 1;
        }
    }
    Ok(model.valid())
}

/// The labels of `indices` as an integer tensor `[n]`.
fn labels(
    mnist: &Mnist,
    indices: &[usize],
    device: &Device,
) -> scorefield_core::Result<Tensor<1, Int>> {
    let values: Vec<i64> =
        mnist.labels_of(indices).map_err(lookup_error)?.into_iter().map(i64::from).collect();
    Ok(Tensor::from_data(TensorData::new(values, [indices.len()]), device))
}

/// The share of the digits `indices` of `mnist` whose most probable class is their label.
///
/// Errors with [`Error::InvalidParameter`] for an index outside `mnist` or no indices.
pub fn accuracy(
    classifier: &MnistClassifier,
    mnist: &Mnist,
    indices: &[usize],
    device: &Device,
) -> scorefield_core::Result<f64> {
    check_indices(mnist, indices)?;
    if indices.is_empty() {
        return Err(Error::invalid("indices", "[]", "at least one digit is needed"));
    }
    let mut correct = 0;
    for chunk in indices.chunks(CHUNK) {
        let probs =
            host_rows(classifier.logits(mnist.images(chunk, device).map_err(lookup_error)?))?;
        for (row, label) in probs.chunks(CLASSES).zip(mnist.labels_of(chunk).map_err(lookup_error)?)
        {
            correct += usize::from(argmax(row) == usize::from(label));
        }
    }
    Ok(correct as f64 / indices.len() as f64)
}

/// The share of `images` (`[N, 1, 28, 28]` in `[0, 1]`) whose most probable class is the
/// corresponding entry of `labels`: how often generated digits are the digit that was asked
/// for (conditional sampling) or the digit they were completed from (inpainting).
///
/// Errors with [`Error::ShapeMismatch`] unless there is one label per image and at least one.
pub fn label_agreement(
    classifier: &MnistClassifier,
    images: Tensor<4>,
    labels: &[usize],
) -> scorefield_core::Result<f64> {
    let n = images.dims()[0];
    if n != labels.len() || n == 0 {
        return Err(Error::ShapeMismatch {
            context: "label_agreement",
            expected: format!("one label per image ({n}), at least one"),
            got: format!("{} labels", labels.len()),
        });
    }
    let probs = host_rows(classifier.logits(images))?;
    let agree = probs.chunks(CLASSES).zip(labels).filter(|(row, y)| argmax(row) == **y).count();
    Ok(agree as f64 / n as f64)
}

/// A rank-2 tensor's values on the host, row-major, in f64.
fn host_rows(x: Tensor<2>) -> scorefield_core::Result<Vec<f64>> {
    x.try_into_vec_as::<f64>()
        .map_err(|e| Error::NonFinite { context: format!("reading classifier output: {e:?}") })
}

/// The index of the largest value (the first of equal ones).
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, k| if row[k] > row[best] { k } else { best })
}

/// The share of rows of `probs` (`[N, K]`, each a probability vector) whose largest
/// probability is at least `threshold`: how many generated digits the classifier recognises
/// with confidence. 0 for an empty batch.
pub fn confident_share(probs: Tensor<2>, threshold: f64) -> scorefield_core::Result<f64> {
    let k = probs.dims()[1];
    Ok(confident_share_of(&host_rows(probs)?, k, threshold))
}

/// `Σᵢ 1[maxₖ pᵢₖ ≥ τ] / N` over the rows of a row-major `[N, K]` slice.
fn confident_share_of(values: &[f64], k: usize, threshold: f64) -> f64 {
    let rows = values.len() / k.max(1);
    let confident = values
        .chunks(k.max(1))
        .filter(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max) >= threshold)
        .count();
    if rows == 0 { 0.0 } else { confident as f64 / rows as f64 }
}

/// The mean and covariance of a set of feature vectors, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStatistics {
    /// The number of vectors.
    pub count: usize,
    /// The mean `μ`, length `F`.
    pub mean: Vec<f64>,
    /// The covariance `C = Σ (fᵢ − μ)(fᵢ − μ)ᵀ / (N − 1)`, row-major `F × F`.
    pub covariance: Vec<f64>,
}

impl FeatureStatistics {
    /// The statistics of the rows of a row-major `[N, F]` slice. Errors with
    /// [`Error::ShapeMismatch`] unless `N ≥ 2` and the length is a multiple of `F ≥ 1`, and
    /// with [`Error::NonFinite`] on a NaN or infinity.
    pub fn from_rows(values: &[f64], dim: usize) -> scorefield_core::Result<Self> {
        let n = values.len().checked_div(dim).unwrap_or(0);
        if dim == 0 || n < 2 || n * dim != values.len() {
            return Err(Error::ShapeMismatch {
                context: "FeatureStatistics::from_rows",
                expected: format!("N ≥ 2 rows of F = {dim} ≥ 1 features"),
                got: format!("{} values", values.len()),
            });
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { context: "FeatureStatistics::from_rows".into() });
        }
        let mut mean = vec![0.0; dim];
        for row in values.chunks(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut covariance = vec![0.0; dim * dim];
        let mut centred = vec![0.0; dim];
        for row in values.chunks(dim) {
            for (c, (v, m)) in centred.iter_mut().zip(row.iter().zip(&mean)) {
                *c = v - m;
            }
            for a in 0..dim {
                for b in a..dim {
                    covariance[a * dim + b] += centred[a] * centred[b];
                }
            }
        }
        for a in 0..dim {
            for b in a..dim {
                let v = covariance[a * dim + b] / (n - 1) as f64;
                covariance[a * dim + b] = v;
                covariance[b * dim + a] = v;
            }
        }
        Ok(Self { count: n, mean, covariance })
    }

    /// The Fréchet distance between these statistics and `other` ([`frechet_distance`]).
    pub fn frechet_distance(&self, other: &Self) -> scorefield_core::Result<f64> {
        frechet_distance(&self.mean, &self.covariance, &other.mean, &other.covariance)
    }
}

/// The Fréchet distance between `N(μ₁, C₁)` and `N(μ₂, C₂)`:
/// `‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁C₂)^{1/2})`, the squared 2-Wasserstein distance of the two
/// Gaussians, computed in f64 (see the [module docs](self)); the covariances are row-major
/// `F × F`, symmetric positive semi-definite. Rounding can leave a tiny negative result,
/// which is returned as 0.
///
/// Errors with [`Error::ShapeMismatch`] if the lengths disagree and with [`Error::NonFinite`]
/// on a NaN or infinity.
pub fn frechet_distance(
    mu1: &[f64],
    cov1: &[f64],
    mu2: &[f64],
    cov2: &[f64],
) -> scorefield_core::Result<f64> {
    let d = mu1.len();
    if mu2.len() != d || cov1.len() != d * d || cov2.len() != d * d {
        return Err(Error::ShapeMismatch {
            context: "frechet_distance",
            expected: format!("means of length {d} and {d}×{d} covariances"),
            got: format!(
                "means of length {} and {}, covariances of {} and {} values",
                d,
                mu2.len(),
                cov1.len(),
                cov2.len()
            ),
        });
    }
    if [mu1, cov1, mu2, cov2].iter().any(|s| s.iter().any(|v| !v.is_finite())) {
        return Err(Error::NonFinite { context: "frechet_distance".into() });
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let (c1, c2) = (symmetric(cov1, d), symmetric(cov2, d));
    let root1 = sqrt_psd(&c1);
    let middle = &root1 * &c2 * &root1;
    let middle = (&middle + middle.transpose()) * 0.5;
    let trace_root: f64 = middle.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok((mean_term + c1.trace() + c2.trace() - 2.0 * trace_root).max(0.0))
}

/// The row-major `n × n` matrix `a`, symmetrised: `(A + Aᵀ)/2`.
fn symmetric(a: &[f64], n: usize) -> DMatrix<f64> {
    let m = DMatrix::from_row_slice(n, n, a);
    (&m + m.transpose()) * 0.5
}

/// The symmetric square root `V diag(√max(λ, 0)) Vᵀ` of a symmetric positive semi-definite
/// matrix `A = V diag(λ) Vᵀ` (nalgebra's symmetric eigendecomposition: Householder
/// tridiagonalisation and implicit QR).
fn sqrt_psd(a: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(a.clone());
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

/// The quality of a batch of generated digits, as judged by a [`MnistClassifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    /// The number of generated digits.
    pub samples: usize,
    /// The number of reference digits.
    pub reference: usize,
    /// The share of generated digits classified with confidence ≥ [`CONFIDENCE`].
    pub confident_share: f64,
    /// The same share among the reference digits.
    pub reference_confident_share: f64,
    /// The Fréchet distance between the classifier's features of the generated and the
    /// reference digits.
    pub frechet_distance: f64,
    /// How many generated digits are predicted as each class `0..=9`.
    pub histogram: [usize; CLASSES],
}

impl core::fmt::Display for QualityReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} samples vs {} reference digits: confident (p ≥ {CONFIDENCE}) {:.1}% \
             (reference {:.1}%), Fréchet distance {:.3}, predicted classes {:?}",
            self.samples,
            self.reference,
            100.0 * self.confident_share,
            100.0 * self.reference_confident_share,
            self.frechet_distance,
            self.histogram
        )
    }
}

/// Features and probabilities of a batch of images, on the host, in chunks.
fn classify(
    classifier: &MnistClassifier,
    images: Tensor<4>,
) -> scorefield_core::Result<(Vec<f64>, Vec<f64>)> {
    let n = images.dims()[0];
    let (mut features, mut probs) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(CHUNK) {
        let x = images.clone().narrow(0, start, CHUNK.min(n - start)).clamp(0.0, 1.0);
        let f = classifier.features(x);
        let p = softmax(classifier.output.forward(f.clone()), 1);
        features.extend(host_rows(f)?);
        probs.extend(host_rows(p)?);
    }
    Ok((features, probs))
}

/// Judges generated digits `samples` against real digits `reference` (both NCHW
/// `[N, 1, 28, 28]` in [0, 1]; values outside are clamped, as when writing a PNG): the
/// confident share of each, the histogram of the samples' predicted classes and the Fréchet
/// distance between their features.
///
/// Errors with [`Error::ShapeMismatch`] unless both are batches of at least two 28×28 grey
/// images, and with [`Error::NonFinite`] if a feature is not finite.
pub fn evaluate(
    classifier: &MnistClassifier,
    samples: Tensor<4>,
    reference: Tensor<4>,
) -> scorefield_core::Result<QualityReport> {
    for x in [&samples, &reference] {
        let dims = x.dims();
        if dims[1..] != [1, SIDE, SIDE] || dims[0] < 2 {
            return Err(Error::ShapeMismatch {
                context: "quality::evaluate",
                expected: "[N ≥ 2, 1, 28, 28]".into(),
                got: format!("{dims:?}"),
            });
        }
    }
    let (n, m) = (samples.dims()[0], reference.dims()[0]);
    let dim = classifier.features;
    let (sample_features, sample_probs) = classify(classifier, samples)?;
    let (reference_features, reference_probs) = classify(classifier, reference)?;
    let mut histogram = [0; CLASSES];
    for row in sample_probs.chunks(CLASSES) {
        histogram[argmax(row)] += 1;
    }
    let ours = FeatureStatistics::from_rows(&sample_features, dim)?;
    let theirs = FeatureStatistics::from_rows(&reference_features, dim)?;
    Ok(QualityReport {
        samples: n,
        reference: m,
        confident_share: confident_share_of(&sample_probs, CLASSES, CONFIDENCE),
        reference_confident_share: confident_share_of(&reference_probs, CLASSES, CONFIDENCE),
        frechet_distance: ours.frechet_distance(&theirs)?,
        histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use rand::Rng;

    fn device() -> Device {
        scorefield_core::device("flex").unwrap()
    }

    fn diag(values: &[f64]) -> Vec<f64> {
        let n = values.len();
        let mut m = vec![0.0; n * n];
        for (i, v) in values.iter().enumerate() {
            m[i * n + i] = *v;
        }
        m
    }

    /// A random symmetric positive definite matrix `B Bᵀ + δI`.
    fn random_spd(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>();
            }
            m[i * n + i] += 0.1;
        }
        m
    }

    #[test]
    fn the_square_root_squares_back_and_clips_negative_eigenvalues() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 12;
        let c = random_spd(n, &mut rng);
        let r = sqrt_psd(&symmetric(&c, n));
        assert_relative_eq!(r.clone(), r.transpose(), epsilon = 1e-12);
        let squared = &r * &r;
        for (x, y) in squared.transpose().iter().zip(&c) {
            assert_relative_eq!(*x, *y, epsilon = 1e-10);
        }
        // diag(4, −1) rotated by 30°: its root is diag(2, 0) rotated alike.
        let (cos, sin) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let q = [cos, sin, -sin, cos];
        let root = sqrt_psd(&symmetric(&with_eigen(&q, &[4.0, -1.0]), 2));
        for (x, y) in root.transpose().iter().zip(&with_eigen(&q, &[2.0, 0.0])) {
            assert_relative_eq!(*x, *y, epsilon = 1e-12);
        }
    }

    #[test]
    fn frechet_distance_matches_closed_forms() {
        let mut rng = StdRng::seed_from_u64(2);
        let n = 6;
        let c = random_spd(n, &mut rng);
        let mu: Vec<f64> = (0..n).map(|i| i as f64 * 0.3 - 1.0).collect();
        // Identical Gaussians: 0.
        assert!(frechet_distance(&mu, &c, &mu, &c).unwrap().abs() < 1e-9);
        // Shifted means, same covariance: ‖Δμ‖².
        let shifted: Vec<f64> = mu.iter().enumerate().map(|(i, m)| m + i as f64).collect();
        let expected: f64 = (0..n).map(|i| (i * i) as f64).sum();
        assert_relative_eq!(
            frechet_distance(&mu, &c, &shifted, &c).unwrap(),
            expected,
            max_relative = 1e-9
        );
        // Diagonal covariances: Σ(√a − √b)², plus the mean term.
        let (a, b) = ([1.0, 4.0, 0.25, 9.0], [4.0, 1.0, 0.25, 0.0]);
        let expected: f64 =
            a.iter().zip(&b).map(|(x, y): (&f64, &f64)| (x.sqrt() - y.sqrt()).powi(2)).sum();
        let zero = [0.0; 4];
        let one = [1.0, 0.0, 0.0, 0.0];
        assert_relative_eq!(
            frechet_distance(&zero, &diag(&a), &one, &diag(&b)).unwrap(),
            expected + 1.0,
            max_relative = 1e-12
        );
        // Non-commuting 2×2 covariances: tr √(C₁C₂) = √(tr(C₁C₂) + 2√(det C₁ det C₂)).
        let (c1, c2) = ([2.0, 0.7, 0.7, 1.0], [0.5, -0.3, -0.3, 3.0]);
        let p = mul(&c1, &c2, 2);
        let det = |m: &[f64]| m[0] * m[3] - m[1] * m[2];
        let trace_root = (p[0] + p[3] + 2.0 * (det(&c1) * det(&c2)).sqrt()).sqrt();
        let expected = c1[0] + c1[3] + c2[0] + c2[3] - 2.0 * trace_root;
        assert_relative_eq!(
            frechet_distance(&[0.0; 2], &c1, &[0.0; 2], &c2).unwrap(),
            expected,
            max_relative = 1e-12
        );
        // Symmetric in its arguments.
        let d = random_spd(n, &mut rng);
        assert_relative_eq!(
            frechet_distance(&mu, &c, &shifted, &d).unwrap(),
            frechet_distance(&shifted, &d, &mu, &c).unwrap(),
            max_relative = 1e-9
        );
        assert!(matches!(
            frechet_distance(&mu, &c, &mu[1..], &c),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            frechet_distance(&[f64::NAN; 2], &c1, &[0.0; 2], &c2),
            Err(Error::NonFinite { .. })
        ));
    }

    /// `A·B` for row-major `n × n` matrices, written out for the oracles.
    fn mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
            }
        }
        out
    }

    /// A random orthogonal matrix: Gram–Schmidt on the rows of a random matrix.
    fn random_orthogonal(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let mut q: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for i in 0..n {
            for j in 0..i {
                let dot: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                for k in 0..n {
                    q[i * n + k] -= dot * q[j * n + k];
                }
            }
            let norm = (0..n).map(|k| q[i * n + k] * q[i * n + k]).sum::<f64>().sqrt();
            (0..n).for_each(|k| q[i * n + k] /= norm);
        }
        q
    }

    /// `Q diag(λ) Qᵀ`: the symmetric matrix with eigenvalues `λ` and eigenvectors the rows of `Q`
    /// (as columns of `Qᵀ`).
    fn with_eigen(q: &[f64], values: &[f64]) -> Vec<f64> {
        let n = values.len();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|k| q[k * n + i] * values[k] * q[k * n + j]).sum();
            }
        }
        m
    }

    #[test]
    fn frechet_distance_of_commuting_non_diagonal_covariances() {
        // C₁ = Q diag(a) Qᵀ and C₂ = Q diag(b) Qᵀ share their eigenvectors, so
        // d² = ‖μ₁ − μ₂‖² + Σ(√aᵢ − √bᵢ)², whatever the rotation Q.
        let mut rng = StdRng::seed_from_u64(3);
        let n = 16;
        let q = random_orthogonal(n, &mut rng);
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..4.0)).collect();
        let mut b: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..4.0)).collect();
        b[5] = 0.0; // positive semi-definite: one direction without variance
        let mu1: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mu2: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let expected: f64 = mu1.iter().zip(&mu2).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
            + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
        let got = frechet_distance(&mu1, &with_eigen(&q, &a), &mu2, &with_eigen(&q, &b)).unwrap();
        // The zero eigenvalue comes out as ±ε·‖C‖: its root, √ε ≈ 10⁻⁸, bounds the accuracy.
        assert_relative_eq!(got, expected, max_relative = 1e-7);
        b[5] = 0.5;
        let expected = expected - a[5].sqrt().powi(2) + (a[5].sqrt() - 0.5f64.sqrt()).powi(2);
        let got = frechet_distance(&mu1, &with_eigen(&q, &a), &mu2, &with_eigen(&q, &b)).unwrap();
        assert_relative_eq!(got, expected, max_relative = 1e-10);
    }

    #[test]
    fn frechet_distance_of_non_commuting_covariances_with_a_known_root() {
        // C₁ = P² and C₂ = P⁻¹M²P⁻¹ with P, M symmetric positive definite and different
        // eigenvectors: C₁^{1/2} C₂ C₁^{1/2} = M², so tr (C₁C₂)^{1/2} = tr M = Σ mᵢ and
        // d² = Σ pᵢ² + tr C₂ − 2 Σ mᵢ (equal means).
        let mut rng = StdRng::seed_from_u64(4);
        let n = 12;
        let (qp, qm) = (random_orthogonal(n, &mut rng), random_orthogonal(n, &mut rng));
        let p: Vec<f64> = (0..n).map(|_| rng.random_range(0.3..2.0)).collect();
        let m: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..3.0)).collect();
        let p_inv = with_eigen(&qp, &p.iter().map(|v| 1.0 / v).collect::<Vec<_>>());
        let m2 = with_eigen(&qm, &m.iter().map(|v| v * v).collect::<Vec<_>>());
        let c1 = with_eigen(&qp, &p.iter().map(|v| v * v).collect::<Vec<_>>());
        let c2 = mul(&mul(&p_inv, &m2, n), &p_inv, n);
        let c2: Vec<f64> = (0..n * n).map(|k| 0.5 * (c2[k] + c2[(k % n) * n + k / n])).collect();
        let trace_c2: f64 = (0..n).map(|i| c2[i * n + i]).sum();
        let expected =
            p.iter().map(|v| v * v).sum::<f64>() + trace_c2 - 2.0 * m.iter().sum::<f64>();
        assert!(expected > 1.0, "a case far from 0: {expected}");
        let mu = vec![0.5; n];
        assert_relative_eq!(
            frechet_distance(&mu, &c1, &mu, &c2).unwrap(),
            expected,
            max_relative = 1e-9
        );
        assert_relative_eq!(
            frechet_distance(&mu, &c2, &mu, &c1).unwrap(),
            expected,
            max_relative = 1e-9
        );
    }

    #[test]
    fn feature_statistics_are_the_sample_mean_and_unbiased_covariance() {
        let rows = [1.0, 2.0, 3.0, 6.0, 5.0, 4.0];
        let s = FeatureStatistics::from_rows(&rows, 2).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.mean, [3.0, 4.0]);
        // Centred rows (−2, −2), (0, 2), (2, 0): C = [[8, 4], [4, 8]] / 2.
        assert_eq!(s.covariance, [4.0, 2.0, 2.0, 4.0]);
        assert!(FeatureStatistics::from_rows(&rows[..2], 2).is_err());
        assert!(FeatureStatistics::from_rows(&rows[..5], 2).is_err());
        assert!(FeatureStatistics::from_rows(&[1.0, f64::INFINITY, 0.0, 0.0], 2).is_err());
    }

    #[test]
    fn confident_share_counts_rows_at_or_above_the_threshold() {
        let probs = Tensor::<2>::from_data(
            TensorData::new(vec![0.95f32, 0.05, 0.5, 0.5, 0.05, 0.95, 0.2, 0.8], [4, 2]),
            &device(),
        );
        assert_relative_eq!(confident_share(probs.clone(), 0.9).unwrap(), 0.5, epsilon = 1e-12);
        assert_relative_eq!(confident_share(probs, 0.5).unwrap(), 1.0, epsilon = 1e-12);
        let empty = Tensor::<2>::zeros([0, 10], &device());
        assert_eq!(confident_share(empty, 0.9).unwrap(), 0.0);
    }

    #[test]
    fn evaluate_checks_shapes_and_saving_round_trips() {
        let dev = device();
        let classifier = MnistClassifierConfig::new().with_conv1(4).with_conv2(4).init(&dev);
        let x = Tensor::<4>::zeros([3, 1, 28, 28], &dev);
        let bad = Tensor::<4>::zeros([3, 1, 27, 28], &dev);
        assert!(matches!(evaluate(&classifier, x.clone(), bad), Err(Error::ShapeMismatch { .. })));
        let report = evaluate(&classifier, x.clone(), x.clone()).unwrap();
        assert_eq!(report.histogram.iter().sum::<usize>(), 3);
        assert!(report.frechet_distance.abs() < 1e-9, "identical inputs: {report}");

        let dir =
            std::env::temp_dir().join(format!("scorefield-classifier-{}", std::process::id()));
        classifier.save(&dir).unwrap();
        let loaded = MnistClassifier::load(&dir, &dev).unwrap();
        assert_eq!(loaded.config(), classifier.config());
        let (a, b) = (classifier.logits(x.clone()), loaded.logits(x));
        assert_eq!(a.try_into_vec_as::<f32>().unwrap(), b.try_into_vec_as::<f32>().unwrap());
        std::fs::write(dir.join(WEIGHTS_FILE), b"not a record").unwrap();
        assert!(matches!(MnistClassifier::load(&dir, &dev), Err(ClassifierError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(MnistClassifier::load(&dir, &dev), Err(ClassifierError::Io { .. })));
    }

    /// Brief training (two epochs of 2,000 digits of the official test split) beats the 10%
    /// of chance by far on 500 others. Fails without the real digits, never skips.
    #[test]
    fn real_mnist_brief_training_on_a_subset_beats_chance() {
        let dir = crate::mnist::real_test_split_dir();
        let mnist = Mnist::load(&dir).unwrap();
        let dev = device();
        let train: Vec<usize> = (0..2_000).collect();
        let held_out: Vec<usize> = (9_500..10_000).collect();
        let config = MnistClassifierConfig::new();
        let training = ClassifierTrainingConfig::new().with_epochs(2);
        let mut losses = Vec::new();
        let classifier = train_classifier(&config, &training, &mnist, &train, &dev, &mut |s| {
            losses.push(s.loss)
        })
        .unwrap();
        let acc = accuracy(&classifier, &mnist, &held_out, &dev).unwrap();
        println!(
            "2 epochs on 2,000 digits: loss {:.3} → {:.3}, held-out accuracy {acc:.3}",
            losses[0],
            losses[losses.len() - 1]
        );
        assert!(acc > 0.8, "accuracy {acc}");
    }
}
