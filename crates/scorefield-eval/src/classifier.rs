//! The classifier: a compact CNN for 28×28 digits, its configuration, and saving and
//! loading it.
//!
//! ```text
//! x ∈ [0, 1]^{1×28×28},  x̃ = (x − 0.1307)/0.3081         (MNIST's pixel mean and std)
//! h₁ = maxpool₂(ReLU(conv3×3(1 → c₁)(x̃)))              14²
//! h₂ = maxpool₂(ReLU(conv3×3(c₁ → c₂)(h₁)))            7²
//! f  = ReLU(Linear(49·c₂ → F)(flatten h₂))             the penultimate features
//! p  = softmax(Linear(F → 10)(f))
//! ```

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::store::ModuleRecord;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Bytes, Device, Tensor};
use scorefield_core::io::write_atomically;
use scorefield_data::mnist::SIDE;
use thiserror::Error;

use crate::CLASSES;

/// The mean of MNIST's pixels in [0, 1], subtracted from the classifier's input.
const PIXEL_MEAN: f64 = 0.1307;
/// The standard deviation of MNIST's pixels in [0, 1], dividing the classifier's input.
const PIXEL_STD: f64 = 0.3081;

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

    /// The class probabilities `p`, `[B, 10]`, of penultimate features `f` (`[B, F]`, from
    /// [`features`](Self::features)).
    pub(crate) fn probabilities_of_features(&self, f: Tensor<2>) -> Tensor<2> {
        softmax(self.output.forward(f), 1)
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
            write_atomically(path, bytes)
                .map_err(|source| ClassifierError::Io { path: path.into(), source })
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
