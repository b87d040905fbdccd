//! Training the classifier on the library's one training loop, `scorefield_nn`'s
//! [`Trainer::fit`]: the [`Classification`] objective (the cross-entropy of the logits
//! against the labels) on batches of `(digits, labels)`,
//!
//! ```text
//! L(θ) = (1/B) Σᵢ −log softmax(logits_θ(xᵢ))_{yᵢ}
//! ```
//!
//! minimised by Adam with Burn's defaults (`β = (0.9, 0.999)`, `ε = 10⁻⁵`) at a constant
//! learning rate. The data order is that of the loop `fit` replaced, so a seed trains the same
//! classifier bit for bit: one generator seeded with the training seed shuffles the indices
//! in place at the start of every epoch, and each epoch is walked in chunks of the batch size
//! (the last chunk may be shorter). The trainer's EMA is not used.

use std::ops::ControlFlow;

use burn::config::Config;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::RngCore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use scorefield_core::Error;
use scorefield_core::condition::Labels;
use scorefield_core::objective::{ConditionalObjective, LossOutput};
use scorefield_data::mnist::Mnist;
use scorefield_nn::train::{FitError, StepReport};
use scorefield_nn::{Trainer, TrainerConfig};

use crate::classifier::{MnistClassifier, MnistClassifierConfig};
use crate::{CLASSES, check_indices, lookup_error};

/// Burn's default `ε` of Adam (`AdamConfig::new()`), which the classifier has always been
/// trained with (the trainer's own default is `10⁻⁸`).
const ADAM_EPSILON: f32 = 1e-5;

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

/// The cross-entropy of a [`MnistClassifier`]'s logits against class labels, the objective
/// of [`train_classifier`]: per sample `−log pᵢ(yᵢ)`, the loss their mean (Burn's
/// `CrossEntropyLoss`). No noise level: the digits are clean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classification;

impl ConditionalObjective<MnistClassifier, 4, Labels> for Classification {
    /// Errors with [`Error::ShapeMismatch`] unless there is one label per digit, and with
    /// [`Error::InvalidParameter`] for a null label (a classifier learns real classes) or
    /// labels of another number of classes than [`CLASSES`].
    fn loss_given(
        &self,
        model: &MnistClassifier,
        x0: Tensor<4>,
        y: &Labels,
        _rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        let n = x0.dims()[0];
        if y.len() != n {
            return Err(Error::ShapeMismatch {
                context: "Classification",
                expected: format!("one label per sample ({n})"),
                got: format!("{} labels", y.len()),
            });
        }
        y.check_classes(CLASSES)?;
        let ids = y
            .ids()
            .iter()
            .map(|id| {
                id.map(|c| c as i64).ok_or_else(|| {
                    Error::invalid("label", "∅", "a classifier is trained on real classes")
                })
            })
            .collect::<scorefield_core::Result<Vec<i64>>>()?;
        let device = x0.device();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let logits = model.logits(x0);
        let per_sample = log_softmax(logits.clone().detach(), 1)
            .gather(1, targets.clone().reshape([n, 1]))
            .reshape([n])
            .neg();
        let loss = CrossEntropyLossConfig::new().init(&device).forward(logits, targets);
        Ok(LossOutput { loss, per_sample, level: None })
    }
}

/// The batches of every epoch, in order: one generator seeded with `seed` shuffles the
/// indices in place at the start of each epoch, and the epoch is cut in chunks of
/// `batch_size` (the last may be shorter).
fn epoch_batches(indices: &[usize], training: &ClassifierTrainingConfig) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(training.seed);
    let mut order = indices.to_vec();
    let mut batches = Vec::new();
    for _ in 0..training.epochs {
        order.shuffle(&mut rng);
        batches.extend(order.chunks(training.batch_size).map(<[usize]>::to_vec));
    }
    batches
}

/// The digits `chunk` of `mnist` and their labels: a batch of [`Classification`].
fn labelled_batch(
    mnist: &Mnist,
    chunk: &[usize],
    device: &Device,
) -> scorefield_core::Result<(Tensor<4>, Labels)> {
    let x = mnist.images(chunk, device).map_err(lookup_error)?;
    let labels = mnist.labels_of(chunk).map_err(lookup_error)?;
    let ids = labels.into_iter().map(|y| Some(usize::from(y))).collect();
    Ok((x, Labels::new(ids, CLASSES)?))
}

/// A failed `fit` as the library's error: the step's or the batch's own error.
fn fit_error(e: FitError) -> Error {
    match e {
        FitError::Step(e) => e,
        FitError::Data(e) => match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::invalid("indices", "?", e.to_string()),
        },
        other => Error::invalid("training", "?", other.to_string()),
    }
}

/// Trains a classifier built from `config` on the digits `indices` of `mnist` (pixels in
/// [0, 1], no augmentation) by minimising the cross-entropy ([`Classification`]) with Adam
/// through [`Trainer::fit`] (see the [module docs](self)), calling `on_step` after every
/// step; returns it outside autodiff. The weights are drawn after seeding `device` with
/// `training.seed`.
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
    let trainer_config = TrainerConfig::new()
        .with_learning_rate(training.learning_rate)
        .with_epsilon(ADAM_EPSILON)
        .with_seed(training.seed)
        .with_batch_size(training.batch_size);
    device.seed(training.seed);
    let mut trainer = Trainer::new(config.init(device), config.to_string(), trainer_config)?;
    let per_epoch = indices.len().div_ceil(training.batch_size);
    let batches = epoch_batches(indices, training);
    let total = batches.len();
    let mut next = batches.iter();
    // The order is fixed up front; the generator `fit` hands over is not needed.
    let batch = |_: &mut StdRng| match next.next() {
        Some(chunk) => labelled_batch(mnist, chunk, device),
        None => Err(Error::invalid("epochs", training.epochs, "no batch left")),
    };
    let mut report = |_: &Trainer<MnistClassifier>, r: &StepReport| {
        let step = r.step as usize;
        on_step(&ClassifierStep { epoch: step / per_epoch, step, total, loss: r.loss });
        Ok::<_, FitError>(ControlFlow::Continue(()))
    };
    trainer.fit(&Classification, total as u64, batch, &mut [&mut report]).map_err(fit_error)?;
    Ok(trainer.into_models().0.valid())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use burn::module::{ModuleVisitor, Param};
    use burn::optim::{AdamConfig, GradientsParams};
    use rand::Rng;
    use scorefield_data::idx::{IdxArray, encode};
    use scorefield_data::mnist::{ENV_VAR, SIDE, Split};

    use super::*;
    use crate::accuracy;

    fn device() -> Device {
        scorefield_core::device("flex").unwrap()
    }

    /// The hand-written Adam loop `train_classifier` ran before it moved onto `fit`, kept as
    /// the oracle of the move (validation left out).
    fn train_classifier_by_hand(
        config: &MnistClassifierConfig,
        training: &ClassifierTrainingConfig,
        mnist: &Mnist,
        indices: &[usize],
        device: &Device,
        losses: &mut Vec<f64>,
    ) -> MnistClassifier {
        device.seed(training.seed);
        let mut model = config.init(device).train();
        let mut optimizer = AdamConfig::new().init();
        let loss_fn = CrossEntropyLossConfig::new().init(device);
        let mut rng = StdRng::seed_from_u64(training.seed);
        let mut order = indices.to_vec();
        for _ in 0..training.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(training.batch_size) {
                let x = mnist.images(batch, device).unwrap();
                let labels: Vec<i64> =
                    mnist.labels_of(batch).unwrap().into_iter().map(i64::from).collect();
                let y = Tensor::from_data(TensorData::new(labels, [batch.len()]), device);
                let loss = loss_fn.forward(model.logits(x), y);
                losses.push(loss.clone().inner().into_scalar::<f64>());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(training.learning_rate, model, grads);
            }
        }
        model.valid()
    }

    /// Every float parameter of `model`, as the bits of its f32 values, in visiting order.
    fn parameter_bits(model: &MnistClassifier) -> Vec<Vec<u32>> {
        struct Collect(Vec<Vec<u32>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let values = param.val().try_into_vec_as::<f32>().unwrap();
                self.0.push(values.into_iter().map(f32::to_bits).collect());
            }
        }
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0
    }

    /// `n` random "digits" (labels `i mod 10`, uniform pixels) written as an IDX test split.
    fn synthetic_mnist(name: &str, n: usize) -> (Mnist, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("scorefield-eval-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let pixels = (0..n * SIDE * SIDE).map(|_| rng.random::<u8>()).collect();
        let labels = (0..n).map(|i| (i % CLASSES) as u8).collect();
        let [images_file, labels_file] = Split::Test.files().map(|f| dir.join(f));
        std::fs::write(&images_file, encode(&IdxArray { dims: vec![n, SIDE, SIDE], data: pixels }))
            .unwrap();
        std::fs::write(&labels_file, encode(&IdxArray { dims: vec![n], data: labels })).unwrap();
        (Mnist::from_files(Split::Test, &images_file, &labels_file).unwrap(), dir)
    }

    #[test]
    fn training_on_fit_equals_the_hand_written_loop_bit_for_bit() {
        let dev = device();
        let (mnist, dir) = synthetic_mnist("fit-oracle", 64);
        let indices: Vec<usize> = (0..64).collect();
        let config = MnistClassifierConfig::new().with_conv1(4).with_conv2(4).with_features(8);
        // 64 = 2·24 + 16: every epoch ends with a short batch.
        let training =
            ClassifierTrainingConfig::new().with_epochs(2).with_batch_size(24).with_seed(3);
        let mut expected_losses = Vec::new();
        let expected = train_classifier_by_hand(
            &config,
            &training,
            &mnist,
            &indices,
            &dev,
            &mut expected_losses,
        );
        let mut steps = Vec::new();
        let got =
            train_classifier(&config, &training, &mnist, &indices, &dev, &mut |s| steps.push(*s))
                .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parameter_bits(&got), parameter_bits(&expected));
        let losses: Vec<f64> = steps.iter().map(|s| s.loss).collect();
        assert_eq!(losses, expected_losses);
        let epochs: Vec<usize> = steps.iter().map(|s| s.epoch).collect();
        assert_eq!(epochs, [0, 0, 0, 1, 1, 1]);
        assert!(steps.iter().enumerate().all(|(i, s)| s.step == i && s.total == 6));
    }

    #[test]
    fn classification_rejects_null_labels_and_mismatched_batches() {
        let dev = device();
        let model = MnistClassifierConfig::new().with_conv1(2).with_conv2(2).init(&dev);
        let x = Tensor::<4>::zeros([2, 1, SIDE, SIDE], &dev);
        let mut rng = StdRng::seed_from_u64(0);
        let null = Labels::new(vec![Some(1), None], CLASSES).unwrap();
        assert!(matches!(
            Classification.loss_given(&model, x.clone(), &null, &mut rng),
            Err(Error::InvalidParameter { .. })
        ));
        let three = Labels::all(1, 3, CLASSES).unwrap();
        assert!(matches!(
            Classification.loss_given(&model, x.clone(), &three, &mut rng),
            Err(Error::ShapeMismatch { .. })
        ));
        // Per sample −log p(y): their mean is the loss, each at least 0.
        let y = Labels::new(vec![Some(1), Some(7)], CLASSES).unwrap();
        let out = Classification.loss_given(&model, x, &y, &mut rng).unwrap();
        let per_sample = out.per_sample.try_into_vec_as::<f64>().unwrap();
        let loss = out.loss.into_scalar::<f64>();
        assert!(per_sample.iter().all(|l| *l >= 0.0));
        assert!((loss - (per_sample[0] + per_sample[1]) / 2.0).abs() < 1e-6, "{loss}");
        assert!(out.level.is_none());
    }

    /// The official test split, from `../shared/data/mnist` or the directory `ENV_VAR` names;
    /// panics without it (a test that needs it fails, never skips).
    fn real_test_split() -> Mnist {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
        let env = std::env::var_os(ENV_VAR).map(PathBuf::from);
        let dirs: Vec<PathBuf> = std::iter::once(shared).chain(env).collect();
        dirs.iter().find_map(|dir| Mnist::load(dir).ok()).unwrap_or_else(|| {
            panic!("this test needs the MNIST test split in one of {dirs:?} (or --skip real_mnist)")
        })
    }

    /// Brief training (two epochs of 2,000 digits of the official test split) beats the 10%
    /// of chance by far on 500 others. Fails without the real digits, never skips.
    #[test]
    fn real_mnist_brief_training_on_a_subset_beats_chance() {
        let mnist = real_test_split();
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
