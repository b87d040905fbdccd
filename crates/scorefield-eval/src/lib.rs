//! # scorefield-eval
//!
//! Sample quality for MNIST digits: a compact CNN classifier that the project trains itself
//! ([`MnistClassifier`], [`train_classifier`], through `scorefield_nn`'s `fit` loop) and two
//! numbers computed with it.
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
//! (nalgebra's `SymmetricEigen`; see [`frechet`]); `C₁^{1/2} C₂ C₁^{1/2}` is symmetric positive
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

//!
//! The crate holds one idea per module: [`classifier`] (the network, its configuration,
//! saving and loading), [`train`] (its training on `fit`, with the [`Classification`]
//! objective) and [`frechet`] (feature statistics and the Fréchet distance); the metrics and
//! [`evaluate`] are here.
#![deny(missing_docs)]

pub mod classifier;
pub mod frechet;
pub mod train;

use std::ops::Range;

use burn::tensor::{Device, Tensor};
use scorefield_core::Error;
use scorefield_data::mnist::{Mnist, MnistError, SIDE};

pub use classifier::{
    CONFIG_FILE, ClassifierError, MnistClassifier, MnistClassifierConfig, WEIGHTS_FILE,
};
pub use frechet::{FeatureStatistics, frechet_distance};
pub use train::{Classification, ClassifierStep, ClassifierTrainingConfig, train_classifier};

/// The digits of MNIST's test split the classifier is trained on.
pub const CLASSIFIER_TRAIN: Range<usize> = 0..8_000;
/// The digits of MNIST's test split held out from the classifier: its accuracy is measured on
/// them, and they are the reference digits of the Fréchet distance.
pub const CLASSIFIER_HELD_OUT: Range<usize> = 8_000..10_000;
/// The number of classes (digits).
pub const CLASSES: usize = 10;
/// The confidence threshold of the confident share used by [`evaluate`].
pub const CONFIDENCE: f64 = 0.9;

/// How many images go through the classifier at once when evaluating.
const CHUNK: usize = 500;

/// Checks that every index addresses an image of `mnist`.
pub(crate) fn check_indices(mnist: &Mnist, indices: &[usize]) -> scorefield_core::Result<()> {
    mnist.labels_of(indices).map(drop).map_err(lookup_error)
}

/// An MNIST lookup's error as [`Error::InvalidParameter`] on `indices`.
pub(crate) fn lookup_error(e: MnistError) -> Error {
    match e {
        MnistError::IndexOutOfRange { index, len } => {
            Error::invalid("indices", index, format!("MNIST has {len} images"))
        }
        other => Error::invalid("indices", "?", other.to_string()),
    }
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
/// for (conditional sampling) or the digit they were completed from (inpainting). Classified
/// as [`evaluate`] classifies: in chunks, values outside `[0, 1]` clamped.
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
    let (_, probs) = classify(classifier, images)?;
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
        let p = classifier.probabilities_of_features(f.clone());
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
                context: "eval::evaluate",
                expected: "[N ≥ 2, 1, 28, 28]".into(),
                got: format!("{dims:?}"),
            });
        }
    }
    let (n, m) = (samples.dims()[0], reference.dims()[0]);
    let dim = classifier.config().features;
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
    use burn::tensor::TensorData;

    fn device() -> Device {
        scorefield_core::device("flex").unwrap()
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

    /// The share of images whose predicted class is the label: 1 for the classifier's own
    /// predictions, the share of kept ones when some labels are changed; a label count that
    /// differs from the image count is a typed error.
    #[test]
    fn label_agreement_counts_the_predicted_labels() {
        let dev = device();
        let classifier = MnistClassifierConfig::new().with_conv1(4).with_conv2(4).init(&dev);
        let x = Tensor::<4>::random([8, 1, 28, 28], burn::tensor::Distribution::Default, &dev);
        let logits = host_rows(classifier.logits(x.clone())).unwrap();
        let predicted: Vec<usize> = logits.chunks(CLASSES).map(argmax).collect();
        assert_eq!(label_agreement(&classifier, x.clone(), &predicted).unwrap(), 1.0);
        let mut changed = predicted.clone();
        for y in changed.iter_mut().take(3) {
            *y = (*y + 1) % CLASSES;
        }
        assert_eq!(label_agreement(&classifier, x.clone(), &changed).unwrap(), 5.0 / 8.0);
        let err = label_agreement(&classifier, x, &predicted[..7]).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
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
}
