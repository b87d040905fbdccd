//! Training score models: Adam with a linear learning-rate warm-up, gradient clipping by the
//! global norm, an exponential moving average (EMA) of the weights, per-noise-level loss logs,
//! and atomic checkpoints from which a run resumes bit for bit.
//!
//! One [`Trainer::step`] on a data batch `x₀`, at step `k = 0, 1, …`:
//!
//! ```text
//! rng_k   = StdRng(seed_k),  seed_k = mix(seed, k)          (the state is (seed, k) only)
//! L(θ)    = objective.loss(θ, x₀, rng_k)                     (error, no update, if not finite)
//! g       = ∇_θ L
//! g       ← g · min(1, c / ‖g‖₂)                             ‖g‖₂ over all parameters at once
//! η_k     = η · min(1, (k + 1) / W)                          (η_k = η when W = 0)
//! θ       ← Adam(θ, g, η_k):  m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
//!                             θ ← θ − η_k · m̂ / (√v̂ + ε),  m̂ = m/(1−β₁ᵏ⁺¹), v̂ = v/(1−β₂ᵏ⁺¹)
//! θ_ema   ← d · θ_ema + (1 − d) · θ                          (θ_ema starts at θ₀)
//! ```
//!
//! The EMA copy lives outside autodiff and is the model to sample from (NCSNv2, DDPM and the
//! score SDE all sample from it). The random numbers of step `k` (the objective's noise and
//! levels) come from a generator seeded by `(seed, k)`, and [`Trainer::batch_rng`] gives a
//! second such stream for drawing the batch itself, so a checkpoint holds the whole state of
//! the run: the model, the EMA, Adam's moments and step counts, the step counter and the seed.
//!
//! # Checkpoints
//!
//! [`Trainer::save`] writes into a directory `dir`:
//!
//! ```text
//! dir/LATEST                       the name of the current checkpoint (one line)
//! dir/step-<k>-<id>/manifest.json  format, version, step, seed, float dtype, and the length
//!                                  and FNV-1a 64 hash of each file below
//! dir/step-<k>-<id>/model.bpk      the model's parameters          (burnpack, Burn's own)
//! dir/step-<k>-<id>/ema.bpk        the EMA's parameters            (burnpack)
//! dir/step-<k>-<id>/optimizer.bpk  Adam's state, keyed by ParamId  (burnpack)
//! dir/step-<k>-<id>/trainer.json   the TrainerConfig
//! dir/step-<k>-<id>/model.json     the model's configuration, as given by the caller
//! ```
//!
//! A new checkpoint is written into a hidden `.partial-<id>` directory, synced, renamed to
//! `step-<k>-<id>`, and only then published by replacing `LATEST` through a temporary file and
//! a rename (atomic on POSIX file systems). A crash at any point leaves `LATEST` naming a
//! complete checkpoint; older checkpoints are deleted only after `LATEST` has moved on.
//! [`Trainer::load`] only reads: a missing, truncated, corrupt or mismatched checkpoint is a
//! [`CheckpointError`], never a panic, and no file is touched. One process writes to a
//! checkpoint directory at a time.
//!
//! ```
//! use scorefield_core::analytic::GaussianMixture;
//! use scorefield_core::objective::DenoisingScoreMatching;
//! use scorefield_core::schedule::GeometricSigmas;
//! use scorefield_nn::{ScoreMlpConfig, Trainer, TrainerConfig};
//!
//! let device = scorefield_core::device("flex")?;
//! let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2])?;
//! let model_config = ScoreMlpConfig::new(2).with_hidden(32).with_layers(2);
//! let model = model_config.init(&device);
//! let config = TrainerConfig::new().with_batch_size(64).with_grad_clip_norm(Some(1.0));
//! let mut trainer = Trainer::new(model, model_config.to_string(), config)?;
//! let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
//! for _ in 0..3 {
//!     let batch = data.sample(64, &device, &mut trainer.batch_rng());
//!     let report = trainer.step(&objective, batch)?;
//!     assert!(report.loss.is_finite());
//! }
//! assert_eq!(trainer.steps(), 3);
//! let sampling_model = trainer.ema(); // the EMA weights, outside autodiff
//! # let _ = sampling_model;
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::config::{Config, config_to_json};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield_core::{Error, Objective};

/// The hyper-parameters of a [`Trainer`], saved with every checkpoint. Defaults follow the
/// NCSN/NCSNv2 reference code: Adam with `η = 10⁻³`, `β = (0.9, 0.999)`, `ε = 10⁻⁸`, no
/// warm-up, no clipping, EMA decay 0.999, batch 128. (DDPM and the score SDE use
/// `η = 2·10⁻⁴`, 5000 warm-up steps and clipping at 1.)
#[derive(Config, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Adam's learning rate `η` (after warm-up).
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Adam's `β₁`, the decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Adam's `β₂`, the decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Adam's `ε` in `m̂ / (√v̂ + ε)`.
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Linear warm-up length `W`: step `k` uses `η · min(1, (k + 1)/W)`; 0 disables it.
    #[config(default = 0)]
    pub warmup_steps: u64,
    /// Clip the gradient to this global L2 norm `c`: `g ← g · min(1, c/‖g‖₂)`, the norm taken
    /// over all parameters together. `None` disables clipping.
    pub grad_clip_norm: Option<f64>,
    /// The EMA decay `d` in `θ_ema ← d·θ_ema + (1 − d)·θ`, in `[0, 1]`.
    #[config(default = 0.999)]
    pub ema_decay: f64,
    /// The seed of every random number the trainer draws (see [`Trainer::batch_rng`]).
    #[config(default = 0)]
    pub seed: u64,
    /// The batch size. The trainer does not draw batches itself; it records the size the
    /// caller draws with [`Trainer::batch_rng`], so that it is saved with the run.
    #[config(default = 128)]
    pub batch_size: usize,
}

impl TrainerConfig {
    /// The learning rate of step `k` (counted from 0): `η · min(1, (k + 1)/W)`, or `η` when
    /// `W = 0`.
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.learning_rate
        } else {
            let ramp = (step.saturating_add(1) as f64 / self.warmup_steps as f64).min(1.0);
            self.learning_rate * ramp
        }
    }

    /// Checks every field: `η > 0`, `β₁, β₂ ∈ [0, 1)`, `ε > 0`, `c > 0`, `d ∈ [0, 1]`, all
    /// finite, and a batch size of at least 1. Errors with [`Error::InvalidParameter`].
    pub fn validate(&self) -> scorefield_core::Result<()> {
        scorefield_core::error::ensure_positive("learning_rate", self.learning_rate)?;
        for (name, beta) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(name, beta, "must be in [0, 1)"));
            }
        }
        scorefield_core::error::ensure_positive("epsilon", f64::from(self.epsilon))?;
        if let Some(c) = self.grad_clip_norm {
            scorefield_core::error::ensure_positive("grad_clip_norm", c)?;
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return Err(Error::invalid("ema_decay", self.ema_decay, "must be in [0, 1]"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, "must be at least 1"));
        }
        Ok(())
    }

    fn adam(&self) -> ModuleOptimizer {
        AdamConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .init()
    }
}

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The index of the step just taken (0 for the first step of a run).
    pub step: u64,
    /// The scalar loss `L(θ)` before the update.
    pub loss: f64,
    /// The learning rate `η_k` the update used.
    pub learning_rate: f64,
    /// The global gradient norm `‖g‖₂` before clipping.
    pub grad_norm: f64,
    /// The factor the gradient was multiplied by, `min(1, c/‖g‖₂)` (1 without clipping).
    pub clip_scale: f64,
    /// The loss of each batch element ([`LossOutput::per_sample`](scorefield_core::LossOutput)).
    pub per_sample: Vec<f64>,
    /// The noise level `σ` of each batch element, for objectives that perturb the data.
    pub sigma: Option<Vec<f64>>,
    /// The time `t` of each batch element, for objectives that perturb the data.
    pub t: Option<Vec<f64>>,
}

/// A score model under training: the model (on an autodiff device), its EMA (outside
/// autodiff), Adam's state, the step counter and the seed. See the [module docs](self).
///
/// `M` is any Burn [`Module`]; [`Trainer::step`] needs an [`Objective`] over it, which for
/// the objectives of `scorefield_core` means that `M` is a
/// [`ScoreModel`](scorefield_core::ScoreModel) (or a [`ScoreJvp`](scorefield_core::ScoreJvp)
/// for exact and sliced score matching).
#[derive(Clone)]
pub struct Trainer<M: Module> {
    model: M,
    ema: M,
    optimizer: ModuleOptimizer,
    config: TrainerConfig,
    model_config: String,
    step: u64,
}

impl<M: Module> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("config", &self.config)
            .field("model_config", &self.model_config)
            .field("parameters", &self.model.num_params())
            .finish_non_exhaustive()
    }
}

/// The random stream of a step: `0` for the objective, `1` for the batch.
const LOSS_STREAM: u64 = 0;
const BATCH_STREAM: u64 = 1;

/// SplitMix64's output function: a bijective 64-bit mix.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of `stream` at `step`: distinct inputs give unrelated seeds.
fn stream_seed(seed: u64, step: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ step) ^ stream)
}

impl<M: Module> Trainer<M> {
    /// Starts training `model` (its parameters are put on the autodiff device with
    /// [`Module::train`]) with `config`; the EMA starts as a copy of the weights.
    /// `model_config` is the model's configuration as JSON (for a Burn `Config`,
    /// `config.to_string()`); it is saved with every checkpoint and checked on
    /// [`load`](Self::load). Errors as [`TrainerConfig::validate`].
    pub fn new(
        model: M,
        model_config: impl Into<String>,
        config: TrainerConfig,
    ) -> scorefield_core::Result<Self> {
        config.validate()?;
        let model = model.train();
        let ema = model.valid();
        let optimizer = config.adam();
        Ok(Self { model, ema, optimizer, config, model_config: model_config.into(), step: 0 })
    }

    /// The model being trained (its parameters on the autodiff device). For evaluation
    /// without building a graph, use `trainer.model().valid()`.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The EMA of the weights (outside autodiff): the model to sample from.
    pub fn ema(&self) -> &M {
        &self.ema
    }

    /// Ends training: the trained model (on the autodiff device) and the EMA.
    pub fn into_models(self) -> (M, M) {
        (self.model, self.ema)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The model's configuration as given to [`new`](Self::new).
    pub fn model_config(&self) -> &str {
        &self.model_config
    }

    /// The number of steps taken: the index of the next step.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step will use ([`TrainerConfig::learning_rate_at`]).
    pub fn learning_rate(&self) -> f64 {
        self.config.learning_rate_at(self.step)
    }

    /// A generator for drawing the next step's batch, seeded by `(seed, step)` (a stream
    /// separate from the objective's). Drawing batches from it makes a run, including its
    /// data order, a function of the seed alone, so it resumes bit for bit.
    pub fn batch_rng(&self) -> StdRng {
        StdRng::seed_from_u64(stream_seed(self.config.seed, self.step, BATCH_STREAM))
    }

    /// One optimisation step on the batch `x0` (see the [module docs](self) for the update).
    /// Returns the loss, the per-sample losses and their noise levels.
    ///
    /// Errors with [`Error::NonFinite`] if the loss or the gradient norm is NaN or infinite,
    /// and with the objective's error if it fails; the model, the EMA, Adam's state and the
    /// step counter are then unchanged.
    pub fn step<O, const D: usize>(
        &mut self,
        objective: &O,
        x0: Tensor<D>,
    ) -> scorefield_core::Result<StepReport>
    where
        O: Objective<M, D> + ?Sized,
    {
        let step = self.step;
        let mut rng = StdRng::seed_from_u64(stream_seed(self.config.seed, step, LOSS_STREAM));
        let out = objective.loss(&self.model, x0, &mut rng)?;
        let loss = out.loss.clone().inner().into_scalar::<f64>();
        if !loss.is_finite() {
            return Err(Error::NonFinite { context: format!("training loss at step {step}") });
        }
        let host = |t: Tensor<1>| t.inner().try_into_vec_as::<f64>().ok();
        let per_sample = host(out.per_sample).unwrap_or_default();
        let (sigma, t) = match out.level {
            Some(level) => (host(level.sigma), host(level.t)),
            None => (None, None),
        };

        let mut grads = GradientsParams::from_grads(out.loss.backward(), &self.model);
        let grad_norm = global_grad_norm(&self.model, &grads);
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite { context: format!("gradient norm at step {step}") });
        }
        let clip_scale = match self.config.grad_clip_norm {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
        if clip_scale < 1.0 {
            scale_grads(&self.model, &mut grads, clip_scale);
        }

        let learning_rate = self.config.learning_rate_at(step);
        self.model = self.optimizer.step(learning_rate, self.model.clone(), grads);
        self.ema = ema_update(&self.model, self.ema.clone(), self.config.ema_decay);
        self.step += 1;
        Ok(StepReport { step, loss, learning_rate, grad_norm, clip_scale, per_sample, sigma, t })
    }
}

/// `‖g‖₂` over every parameter gradient of `model` in `grads`, on the host in f64.
pub(crate) fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc.add(s),
                    None => s,
                });
            }
        }
    }
    let mut visitor = SquaredNorm { grads, sum: None };
    model.visit(&mut visitor);
    visitor.sum.map_or(0.0, |s| s.into_scalar::<f64>().sqrt())
}

/// Multiplies every parameter gradient of `model` in `grads` by `factor`.
pub(crate) fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// `ema ← d·ema + (1 − d)·θ`, parameter by parameter (matched by [`ParamId`]), outside
/// autodiff.
fn ema_update<M: Module>(model: &M, ema: M, decay: f64) -> M {
    /// The model's float parameters, flattened, without autodiff.
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().inner();
            let n = value.shape().num_elements();
            self.0.insert(param.id, value.reshape([n]));
        }
    }
    struct Update {
        theta: HashMap<ParamId, Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Update {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, ema, mapper) = param.consume();
            let ema = match self.theta.remove(&id) {
                Some(theta) => {
                    let theta = theta.reshape(ema.dims());
                    ema.mul_scalar(self.decay).add(theta.mul_scalar(1.0 - self.decay))
                }
                None => ema,
            };
            Param::from_mapped_value(id, ema, mapper)
        }
    }
    let mut collect = Collect(HashMap::new());
    model.visit(&mut collect);
    let mut update = Update { theta: collect.0, decay };
    let ema = ema.map(&mut update);
    debug_assert!(update.theta.is_empty(), "the EMA has the model's parameters");
    ema
}

/// The float dtype of a module's first parameter, formatted (`"F32"`), or `"none"`.
fn float_dtype<M: Module>(model: &M) -> String {
    struct First(Option<String>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(format!("{:?}", param.val().dtype()));
            }
        }
    }
    let mut first = First(None);
    model.visit(&mut first);
    first.0.unwrap_or_else(|| "none".into())
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The directory holds no checkpoint (no `LATEST`, or it names a missing directory).
    #[error("no checkpoint in {dir}: {reason}")]
    NotFound {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is truncated, altered or unreadable (its length or hash disagrees with the
    /// manifest, or it does not parse).
    #[error("corrupt checkpoint file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint is intact but does not fit: a different model configuration, parameter
    /// shapes or float dtype, or a newer checkpoint format.
    #[error("checkpoint mismatch ({what}): {reason}")]
    Mismatch {
        /// What disagrees: `"model config"`, `"parameters"`, `"dtype"`, `"format"`.
        what: &'static str,
        /// How.
        reason: String,
    },
    /// Serialising a record failed while saving.
    #[error("could not serialise {what}: {reason}")]
    Serialise {
        /// The record (`"model"`, `"ema"`, `"optimizer"`).
        what: &'static str,
        /// Burn's message.
        reason: String,
    },
}

/// The format name in every manifest.
const FORMAT: &str = "scorefield-checkpoint";
/// The manifest version this code writes and reads.
const VERSION: u32 = 1;
/// The pointer file naming the current checkpoint.
const LATEST: &str = "LATEST";
const MANIFEST: &str = "manifest.json";
const MODEL_FILE: &str = "model.bpk";
const EMA_FILE: &str = "ema.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const TRAINER_FILE: &str = "trainer.json";
const MODEL_CONFIG_FILE: &str = "model.json";

/// A file of a checkpoint and its integrity data.
#[derive(Config, Debug)]
struct FileEntry {
    name: String,
    len: u64,
    fnv1a64: u64,
}

/// `manifest.json`.
#[derive(Config, Debug)]
struct Manifest {
    format: String,
    version: u32,
    step: u64,
    seed: u64,
    float_dtype: String,
    files: Vec<FileEntry>,
}

/// What a checkpoint holds besides the tensors, read and verified by [`read_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The directory of this checkpoint (`dir/step-<k>-<id>`).
    pub path: PathBuf,
    /// The number of steps taken when it was saved.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The float dtype of the parameters, formatted (`"F32"`).
    pub float_dtype: String,
    /// The trainer's configuration.
    pub trainer: TrainerConfig,
    /// The model's configuration, as given to [`Trainer::new`] (JSON for a Burn `Config`:
    /// rebuild the model with e.g. `ScoreMlpConfig::load_binary(info.model_config.as_bytes())`).
    pub model_config: String,
}

/// FNV-1a, 64 bits: detects truncation and accidental corruption (not tampering).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A name no other save of this process or another has used.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", splitmix64(nanos ^ splitmix64(u64::from(std::process::id()) ^ count)))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Creates `path` with `bytes` and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Syncs a directory's entries (best effort: not every platform can open a directory).
fn sync_dir(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = dir.sync_all();
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename: a reader sees the
/// old content or the new, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(dir);
    }
    result
}

/// Removes JSON whitespace outside string literals, so that two serialisations of the same
/// configuration compare equal however they are indented.
fn compact_json(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::with_capacity(json.len()), false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Reads and verifies the checkpoint `dir/LATEST` names: the manifest, every file's length
/// and hash, and the configurations. Returns the info and the verified bytes of each file.
fn read_verified(
    dir: &Path,
) -> Result<(CheckpointInfo, HashMap<String, Vec<u8>>), CheckpointError> {
    let latest = dir.join(LATEST);
    let name = match fs::read(&latest) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::NotFound {
                dir: dir.to_path_buf(),
                reason: format!("{LATEST} is missing"),
            });
        }
        Err(source) => return Err(CheckpointError::Io { path: latest, source }),
    };
    let name = std::str::from_utf8(&name)
        .ok()
        .map(str::trim)
        .filter(|n| n.starts_with("step-") && !n.contains(['/', '\\']) && !n.contains(".."))
        .ok_or_else(|| CheckpointError::Corrupt {
            path: latest.clone(),
            reason: "does not name a checkpoint directory".into(),
        })?;
    let path = dir.join(name);
    if !path.is_dir() {
        return Err(CheckpointError::NotFound {
            dir: dir.to_path_buf(),
            reason: format!("{LATEST} names {name}, which is not a directory"),
        });
    }
    let read = |file: &str| {
        let p = path.join(file);
        fs::read(&p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                CheckpointError::Corrupt { path: p.clone(), reason: "the file is missing".into() }
            }
            _ => CheckpointError::Io { path: p.clone(), source },
        })
    };
    let manifest_path = path.join(MANIFEST);
    let manifest = Manifest::load_binary(&read(MANIFEST)?).map_err(|e| {
        CheckpointError::Corrupt { path: manifest_path.clone(), reason: e.to_string() }
    })?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(CheckpointError::Mismatch {
            what: "format",
            reason: format!(
                "{} version {} (this build reads {FORMAT} version {VERSION})",
                manifest.format, manifest.version
            ),
        });
    }
    let mut files = HashMap::new();
    for file in [MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, TRAINER_FILE, MODEL_CONFIG_FILE] {
        let entry = manifest.files.iter().find(|e| e.name == file).ok_or_else(|| {
            CheckpointError::Corrupt {
                path: manifest_path.clone(),
                reason: format!("lists no {file}"),
            }
        })?;
        let bytes = read(file)?;
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.join(file), reason };
        if bytes.len() as u64 != entry.len {
            return Err(corrupt(format!("{} bytes, the manifest says {}", bytes.len(), entry.len)));
        }
        let hash = fnv1a64(&bytes);
        if hash != entry.fnv1a64 {
            return Err(corrupt(format!(
                "FNV-1a hash {hash:016x}, the manifest says {:016x}",
                entry.fnv1a64
            )));
        }
        files.insert(file.to_string(), bytes);
    }
    let trainer = TrainerConfig::load_binary(&files[TRAINER_FILE]).map_err(|e| {
        CheckpointError::Corrupt { path: path.join(TRAINER_FILE), reason: e.to_string() }
    })?;
    trainer.validate().map_err(|e| CheckpointError::Corrupt {
        path: path.join(TRAINER_FILE),
        reason: e.to_string(),
    })?;
    let model_config = String::from_utf8(files[MODEL_CONFIG_FILE].clone()).map_err(|_| {
        CheckpointError::Corrupt { path: path.join(MODEL_CONFIG_FILE), reason: "not UTF-8".into() }
    })?;
    let info = CheckpointInfo {
        path,
        step: manifest.step,
        seed: manifest.seed,
        float_dtype: manifest.float_dtype,
        trainer,
        model_config,
    };
    Ok((info, files))
}

/// Reads and verifies the current checkpoint in `dir` without loading tensors: its step,
/// seed, dtype and both configurations (to rebuild the model before [`Trainer::load`]).
/// Errors as [`Trainer::load`].
pub fn read_checkpoint(dir: impl AsRef<Path>) -> Result<CheckpointInfo, CheckpointError> {
    read_verified(dir.as_ref()).map(|(info, _)| info)
}

impl<M: Module> Trainer<M> {
    /// Saves the whole training state into the checkpoint directory `dir` (created if needed)
    /// and returns the new checkpoint's path. Atomic: `dir/LATEST` names the previous
    /// checkpoint until the new one is complete on disk, then the new one, and only then are
    /// older checkpoints (and partial ones left by a crash) deleted. See the
    /// [module docs](self) for the layout.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf, CheckpointError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let serialise = |what, r: Result<Bytes, burn::store::RecordError>| {
            r.map(|b| b.to_vec())
                .map_err(|e| CheckpointError::Serialise { what, reason: e.to_string() })
        };
        let model = serialise("model", self.model.valid().into_record().into_bytes())?;
        let ema = serialise("ema", self.ema.clone().into_record().into_bytes())?;
        let optimizer = serialise("optimizer", self.optimizer.into_bytes())?;
        let contents: [(&str, Vec<u8>); 5] = [
            (MODEL_FILE, model),
            (EMA_FILE, ema),
            (OPTIMIZER_FILE, optimizer),
            (TRAINER_FILE, config_to_json(&self.config).into_bytes()),
            (MODEL_CONFIG_FILE, self.model_config.clone().into_bytes()),
        ];
        let files = contents
            .iter()
            .map(|(name, bytes)| FileEntry {
                name: (*name).into(),
                len: bytes.len() as u64,
                fnv1a64: fnv1a64(bytes),
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            step: self.step,
            seed: self.config.seed,
            float_dtype: float_dtype(&self.ema),
            files,
        };

        let id = unique_id();
        let partial = dir.join(format!(".partial-{id}"));
        let name = format!("step-{:012}-{id}", self.step);
        let done = dir.join(&name);
        let write = || -> Result<(), CheckpointError> {
            fs::create_dir(&partial).map_err(io_error(&partial))?;
            for (file, bytes) in &contents {
                write_synced(&partial.join(file), bytes)?;
            }
            write_synced(&partial.join(MANIFEST), config_to_json(&manifest).as_bytes())?;
            sync_dir(&partial);
            fs::rename(&partial, &done).map_err(io_error(&done))?;
            sync_dir(dir);
            let latest = dir.join(LATEST);
            write_atomically(&latest, format!("{name}\n").as_bytes()).map_err(io_error(&latest))
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&partial);
            let _ = fs::remove_dir_all(&done);
            return Err(e);
        }
        // Published: the rest is clean-up, and a failure there loses nothing.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().into_owned();
                let stale = (n.starts_with("step-") && n != name) || n.starts_with(".partial-");
                if stale && entry.path().is_dir() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(done)
    }

    /// Resumes the run saved in the checkpoint directory `dir`. `model` is a freshly built
    /// model of the same architecture (on any device: its parameters are replaced, the
    /// device kept) and `model_config` its configuration, which must equal the saved one up
    /// to JSON whitespace. The loaded trainer continues exactly where the saved one stopped:
    /// on the same backend and dtype the following steps are bit-identical to an
    /// uninterrupted run.
    ///
    /// Only reads. Errors with [`CheckpointError::NotFound`] without a checkpoint,
    /// [`CheckpointError::Corrupt`] for a missing, truncated or altered file,
    /// [`CheckpointError::Mismatch`] for a different model configuration, parameter set or
    /// float dtype, and [`CheckpointError::Io`] if a file cannot be read.
    pub fn load(
        dir: impl AsRef<Path>,
        model: M,
        model_config: &str,
    ) -> Result<Self, CheckpointError> {
        let (info, mut files) = read_verified(dir.as_ref())?;
        if compact_json(&info.model_config) != compact_json(model_config) {
            return Err(CheckpointError::Mismatch {
                what: "model config",
                reason: format!(
                    "the checkpoint was saved for {}, not {}",
                    compact_json(&info.model_config),
                    compact_json(model_config)
                ),
            });
        }
        let dtype = float_dtype(&model);
        if dtype != info.float_dtype {
            return Err(CheckpointError::Mismatch {
                what: "dtype",
                reason: format!("the checkpoint holds {}, the model {dtype}", info.float_dtype),
            });
        }
        let mut take = |file: &str| Bytes::from_bytes_vec(files.remove(file).unwrap_or_default());
        let record = |file: &str, bytes: Bytes| {
            ModuleRecord::from_bytes(bytes).map_err(|e| CheckpointError::Corrupt {
                path: info.path.join(file),
                reason: e.to_string(),
            })
        };
        let mismatch = |e: burn::store::RecordError| CheckpointError::Mismatch {
            what: "parameters",
            reason: e.to_string(),
        };
        let model_record = record(MODEL_FILE, take(MODEL_FILE))?;
        let ema_record = record(EMA_FILE, take(EMA_FILE))?;
        let optimizer_record = OptimizerRecord::from_bytes(take(OPTIMIZER_FILE)).map_err(|e| {
            CheckpointError::Corrupt { path: info.path.join(OPTIMIZER_FILE), reason: e.to_string() }
        })?;
        let model = model.try_load_record(model_record).map_err(mismatch)?.train();
        let ema = model.valid().try_load_record(ema_record).map_err(mismatch)?;
        let optimizer = info.trainer.adam().load_record(optimizer_record);
        Ok(Self {
            model,
            ema,
            optimizer,
            config: info.trainer,
            model_config: info.model_config,
            step: info.step,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Loss per noise level
// ---------------------------------------------------------------------------------------------

/// One row of a [`LossLog`]: the mean per-sample loss of the samples of one noise level
/// since the previous row of that level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRow {
    /// The step count when the row was written ([`LossLog::flush`]).
    pub step: u64,
    /// The level's `σ`, or `None` for the row over all samples.
    pub level: Option<f64>,
    /// The mean per-sample loss.
    pub mean_loss: f64,
    /// How many samples it averages.
    pub count: u64,
}

/// Accumulates the per-sample losses of [`StepReport`]s by noise level and writes them as a
/// CSV. A sample of level `σ` goes to the nearest of the given levels in `ln σ` (so the
/// discrete levels of NCSN are matched exactly and continuous-time levels are binned);
/// every [`flush`](Self::flush) appends one row per level that received samples, and one
/// over all samples (`level` = `all` in the CSV).
#[derive(Debug, Clone)]
pub struct LossLog {
    levels: Vec<f64>,
    /// Sum and count per level; the last entry is over all samples.
    sums: Vec<(f64, u64)>,
    rows: Vec<LossRow>,
}

impl LossLog {
    /// A log binned by the noise levels `levels` (e.g. `GeometricSigmas::sigmas()`); an empty
    /// slice keeps only the overall mean. Errors with [`Error::InvalidParameter`] unless every
    /// level is finite and positive.
    pub fn new(levels: &[f64]) -> scorefield_core::Result<Self> {
        for &sigma in levels {
            scorefield_core::error::ensure_positive("levels", sigma)?;
        }
        Ok(Self { levels: levels.to_vec(), sums: vec![(0.0, 0); levels.len() + 1], rows: vec![] })
    }

    /// The levels the log bins by.
    pub fn levels(&self) -> &[f64] {
        &self.levels
    }

    /// The index of the level nearest to `sigma` in `ln σ`, if there are levels.
    pub fn bucket(&self, sigma: f64) -> Option<usize> {
        let distance = |level: f64| (level.ln() - sigma.max(f64::MIN_POSITIVE).ln()).abs();
        (0..self.levels.len())
            .min_by(|&a, &b| distance(self.levels[a]).total_cmp(&distance(self.levels[b])))
    }

    /// Adds the per-sample losses of one step (non-finite ones are skipped).
    pub fn record(&mut self, report: &StepReport) {
        let all = self.levels.len();
        for (i, &loss) in report.per_sample.iter().enumerate() {
            if !loss.is_finite() {
                continue;
            }
            let sigma = report.sigma.as_ref().and_then(|s| s.get(i).copied());
            if let Some(b) = sigma.and_then(|s| self.bucket(s)) {
                self.sums[b].0 += loss;
                self.sums[b].1 += 1;
            }
            self.sums[all].0 += loss;
            self.sums[all].1 += 1;
        }
    }

    /// Appends a row per level with samples since the last flush (largest σ first, as the
    /// levels were given), then the overall row, stamped with `step`; returns the new rows.
    pub fn flush(&mut self, step: u64) -> &[LossRow] {
        let start = self.rows.len();
        let all = self.levels.len();
        for (b, sum) in self.sums.iter_mut().enumerate() {
            if sum.1 > 0 {
                let level = (b < all).then(|| self.levels[b]);
                let mean_loss = sum.0 / sum.1 as f64;
                self.rows.push(LossRow { step, level, mean_loss, count: sum.1 });
            }
            *sum = (0.0, 0);
        }
        &self.rows[start..]
    }

    /// Every row written so far.
    pub fn rows(&self) -> &[LossRow] {
        &self.rows
    }

    /// The rows as CSV: a header `step,level,mean_loss,count`, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("step,level,mean_loss,count\n");
        for row in &self.rows {
            let level = row.level.map_or_else(|| "all".to_string(), |l| l.to_string());
            let _ = writeln!(csv, "{},{level},{},{}", row.step, row.mean_loss, row.count);
        }
        csv
    }

    /// Writes [`to_csv`](Self::to_csv) to `path` atomically (a temporary file in the same
    /// directory, synced, then renamed over `path`).
    pub fn write_csv(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        write_atomically(path.as_ref(), self.to_csv().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::device;
    use crate::{ScoreMlp, ScoreMlpConfig};
    use burn::tensor::{Device, TensorData};
    use rand::{Rng, RngCore};
    use scorefield_core::analytic::GaussianMixture;
    use scorefield_core::objective::{DenoisingScoreMatching, Weighting};
    use scorefield_core::schedule::GeometricSigmas;
    use scorefield_core::{LossOutput, NoiseLevel, ScoreModel};

    /// Every float parameter of a module, in visiting order, as f64.
    fn params<M: Module>(module: &M) -> Vec<Vec<f64>> {
        struct Values(Vec<Vec<f64>>);
        impl ModuleVisitor for Values {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.val().inner().try_into_vec_as::<f64>().unwrap());
            }
        }
        let mut values = Values(Vec::new());
        module.visit(&mut values);
        values.0
    }

    /// `model` with every float parameter redrawn from `U(−1/√n₀, 1/√n₀)` (`n₀` its first
    /// dimension) by a seeded generator: an initialisation that is the same on every run,
    /// unlike Burn's, which draws from the device's shared generator.
    fn seeded<M: Module>(model: M, seed: u64) -> M {
        struct Redraw(StdRng);
        impl ModuleMapper for Redraw {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, value, mapper) = param.consume();
                let dims = value.dims();
                let bound = 1.0 / (dims[0] as f64).sqrt();
                let values: Vec<f64> = (0..dims.iter().product::<usize>())
                    .map(|_| self.0.random_range(-bound..bound))
                    .collect();
                let value = Tensor::from_data(TensorData::new(values, dims), &value.device());
                Param::from_mapped_value(id, value, mapper)
            }
        }
        model.map(&mut Redraw(StdRng::seed_from_u64(seed)))
    }

    fn bits(values: &[Vec<f64>]) -> Vec<Vec<u64>> {
        values.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
    }

    fn mixture() -> GaussianMixture {
        GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2]).unwrap()
    }

    fn mlp_config(hidden: usize) -> ScoreMlpConfig {
        ScoreMlpConfig::new(2).with_hidden(hidden).with_layers(2).with_scale_by_sigma(true)
    }

    fn ncsn() -> DenoisingScoreMatching {
        DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap()
    }

    /// A fresh, empty directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "scorefield-train-{name}-{}-{}",
            std::process::id(),
            unique_id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every file under `dir` (recursively) with its length and hash.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, usize, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = fs::read(&p).unwrap();
                    out.push((p.clone(), bytes.len(), fnv1a64(&bytes)));
                }
            }
        }
        out.sort();
        out
    }

    /// `steps` steps on batches of the mixture drawn from the trainer's batch stream.
    fn run(trainer: &mut Trainer<ScoreMlp>, steps: usize, batch: usize, dev: &Device) -> Vec<f64> {
        let (data, objective) = (mixture(), ncsn());
        (0..steps)
            .map(|_| {
                let x = data.sample(batch, dev, &mut trainer.batch_rng());
                trainer.step(&objective, x).unwrap().loss
            })
            .collect()
    }

    #[test]
    fn warm_up_is_linear_then_constant() {
        let _ = device();
        let config = TrainerConfig::new().with_learning_rate(2e-4).with_warmup_steps(4);
        let lrs: Vec<f64> = (0..6).map(|k| config.learning_rate_at(k)).collect();
        for (lr, expected) in lrs.iter().zip([0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4]) {
            assert!((lr - expected).abs() < 1e-18, "{lr} vs {expected}");
        }
        assert_eq!(TrainerConfig::new().learning_rate_at(0), 1e-3);

        // The steps use it.
        let dev = device();
        let config = config.with_batch_size(8);
        let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
        for k in 0..5 {
            assert_eq!(trainer.learning_rate(), trainer.config().learning_rate_at(k));
            let x = mixture().sample(8, &dev, &mut trainer.batch_rng());
            let report = trainer.step(&ncsn(), x).unwrap();
            assert_eq!((report.step, report.learning_rate), (k, lrs[k as usize]));
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let _ = device();
        let bad = [
            TrainerConfig::new().with_learning_rate(0.0),
            TrainerConfig::new().with_learning_rate(f64::NAN),
            TrainerConfig::new().with_beta_1(1.0),
            TrainerConfig::new().with_beta_2(-0.1),
            TrainerConfig::new().with_epsilon(0.0),
            TrainerConfig::new().with_grad_clip_norm(Some(0.0)),
            TrainerConfig::new().with_ema_decay(1.5),
            TrainerConfig::new().with_batch_size(0),
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(Error::InvalidParameter { .. })),
                "{config:?} must be rejected"
            );
        }
        assert!(TrainerConfig::new().validate().is_ok());
    }

    #[test]
    fn ema_follows_its_recursion_and_closed_form() {
        let dev = device();
        let d = 0.9;
        let config = TrainerConfig::new().with_ema_decay(d).with_learning_rate(1e-2);
        let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
        let mut thetas = vec![params(trainer.model())];
        assert_eq!(bits(&params(trainer.ema())), bits(&thetas[0]), "the EMA starts at θ₀");
        let mut ema = thetas[0].clone();
        for _ in 0..3 {
            run(&mut trainer, 1, 16, &dev);
            let theta = params(trainer.model());
            assert_ne!(bits(&theta), bits(thetas.last().unwrap()), "the parameters moved");
            let new_ema = params(trainer.ema());
            // One step: ema ← d·ema + (1 − d)·θ, exactly (both sides in f64).
            for ((e_new, e_old), t) in new_ema.iter().zip(&ema).zip(&theta) {
                for ((&a, &b), &c) in e_new.iter().zip(e_old).zip(t) {
                    assert_eq!(a.to_bits(), (d * b + (1.0 - d) * c).to_bits());
                }
            }
            thetas.push(theta);
            ema = new_ema;
        }
        // Closed form after k = 3 steps: d³θ₀ + (1 − d)(d²θ₁ + dθ₂ + θ₃).
        for (i, e) in ema.iter().enumerate() {
            for (j, &value) in e.iter().enumerate() {
                let th = |k: usize| thetas[k][i][j];
                let closed = d.powi(3) * th(0) + (1.0 - d) * (d * d * th(1) + d * th(2) + th(3));
                assert!((value - closed).abs() <= 1e-14 * closed.abs().max(1.0));
            }
        }
    }

    #[test]
    fn clipping_bounds_the_global_gradient_norm_and_the_update() {
        let dev = device();
        let model = mlp_config(16).init(&dev).train();
        // Unit-weighted DSM at σ = 0.01: gradients of order 1/σ².
        let objective = DenoisingScoreMatching::single(0.01).unwrap();
        assert_eq!(objective.weighting(), Weighting::Unit);
        let x = mixture().sample(32, &dev, &mut StdRng::seed_from_u64(1));
        let out = objective.loss(&model, x.clone(), &mut StdRng::seed_from_u64(2)).unwrap();
        let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let norm = global_grad_norm(&model, &grads);
        assert!(norm > 10.0, "a large gradient to clip: {norm}");
        let before = grad_values(&model, &grads);
        let host: f64 = before.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        assert!((norm - host).abs() <= 1e-12 * host);

        let c = 1.0;
        scale_grads(&model, &mut grads, c / norm);
        let clipped = global_grad_norm(&model, &grads);
        assert!((clipped - c).abs() < 1e-12, "‖g‖ after clipping = {clipped}");
        for (g, g0) in grad_values(&model, &grads).iter().flatten().zip(before.iter().flatten()) {
            assert_eq!(*g, g0 * (c / norm), "clipping keeps the direction");
        }

        // Through the trainer. With a huge ε, Adam's first update is SGD-like,
        // Δ = −η g/(|g| + ε) ≈ −η g/ε, so ‖Δ‖ ≈ η‖g_clipped‖/ε.
        let (lr, eps) = (1.0, 1e9);
        let update_norm = |clip: Option<f64>| {
            let config = TrainerConfig::new()
                .with_learning_rate(lr)
                .with_epsilon(eps as f32)
                .with_grad_clip_norm(clip);
            let mut trainer = Trainer::new(model.clone(), "{}", config).unwrap();
            let report = trainer.step(&objective, x.clone()).unwrap();
            let delta: f64 = params(trainer.model())
                .iter()
                .flatten()
                .zip(params(&model).iter().flatten())
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            (report, delta)
        };
        let (free, free_delta) = update_norm(None);
        let (clip, clip_delta) = update_norm(Some(c));
        assert_eq!(free.clip_scale, 1.0);
        assert_eq!(clip.grad_norm.to_bits(), free.grad_norm.to_bits());
        assert_eq!(clip.clip_scale, c / clip.grad_norm);
        let bound = lr * c / eps;
        assert!(clip_delta <= bound && clip_delta > 0.99 * bound, "{clip_delta} vs {bound}");
        let free_bound = lr * free.grad_norm / eps;
        assert!(free_delta <= free_bound && free_delta > 0.99 * free_bound, "{free_delta}");
        println!(
            "clipping: ‖g‖ = {:.1}, ‖Δ‖ = {free_delta:.3e} unclipped, {clip_delta:.3e} clipped (bound {bound:.1e})",
            free.grad_norm
        );
    }

    fn grad_values<M: Module>(model: &M, grads: &GradientsParams) -> Vec<Vec<f64>> {
        struct Values<'a>(&'a GradientsParams, Vec<Vec<f64>>);
        impl ModuleVisitor for Values<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.0.get::<D>(param.id) {
                    self.1.push(g.try_into_vec_as::<f64>().unwrap());
                }
            }
        }
        let mut values = Values(grads, Vec::new());
        model.visit(&mut values);
        values.1
    }

    /// A loss that is NaN whatever the model.
    struct Poisoned;

    impl Objective<ScoreMlp, 2> for Poisoned {
        fn loss(
            &self,
            model: &ScoreMlp,
            x0: Tensor<2>,
            _rng: &mut dyn RngCore,
        ) -> scorefield_core::Result<LossOutput> {
            let b = x0.dims()[0];
            let level = NoiseLevel::clean(b, &x0.device());
            let per_sample = model.score(x0, &level).sum_dim(1).reshape([b]).mul_scalar(f64::NAN);
            Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: None })
        }
    }

    #[test]
    fn a_non_finite_loss_is_an_error_and_changes_nothing() {
        let dev = device();
        let mut trainer =
            Trainer::new(mlp_config(8).init(&dev), "{}", TrainerConfig::new()).unwrap();
        run(&mut trainer, 2, 16, &dev);
        let (model, ema) = (bits(&params(trainer.model())), bits(&params(trainer.ema())));
        let x = mixture().sample(16, &dev, &mut trainer.batch_rng());
        let err = trainer.step(&Poisoned, x).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        assert_eq!(trainer.steps(), 2);
        assert_eq!(bits(&params(trainer.model())), model);
        assert_eq!(bits(&params(trainer.ema())), ema);
        // And training carries on, as if the bad batch had not been offered.
        let mut twin = trainer.clone();
        assert_eq!(run(&mut trainer, 1, 16, &dev), run(&mut twin, 1, 16, &dev));
    }

    /// The NCSN loss of `model`, averaged over 8 fixed batches of 256 with fixed noise.
    fn eval<M: ScoreModel<2>>(model: &M, dev: &Device) -> f64 {
        let (data, objective) = (mixture(), ncsn());
        let total: f64 = (0..8)
            .map(|b| {
                let x = data.sample(256, dev, &mut StdRng::seed_from_u64(1000 + b));
                let mut rng = StdRng::seed_from_u64(2000 + b);
                objective.loss(model, x, &mut rng).unwrap().loss.into_scalar::<f64>()
            })
            .sum();
        total / 8.0
    }

    #[test]
    fn dsm_training_approaches_the_optimum_on_a_mixture() {
        let dev = device();
        let config = TrainerConfig::new().with_batch_size(128).with_seed(3);
        let model = seeded(mlp_config(64).init(&dev), 4);
        let mut trainer = Trainer::new(model, "{}", config).unwrap();
        let optimum = eval(&mixture(), &dev); // the exact perturbed score, same data and noise
        let before = eval(&trainer.model().valid(), &dev);
        let losses = run(&mut trainer, 200, 128, &dev);
        let after = eval(&trainer.model().valid(), &dev);
        let first = losses[..10].iter().sum::<f64>() / 10.0;
        let last = losses[180..].iter().sum::<f64>() / 20.0;
        println!(
            "mixture DSM: training loss, first 10 steps {first:.4}, last 20 {last:.4}; held-out \
             {before:.4} → {after:.4}; optimum {optimum:.4} (excess {:.4} → {:.4})",
            before - optimum,
            after - optimum
        );
        assert!(last - optimum < 0.5 * (first - optimum), "training loss {first} → {last}");
        assert!(after >= optimum - 0.01, "no model beats the exact score on the same noise");
        assert!(after - optimum < 0.4 * (before - optimum), "excess {before} → {after}");
    }

    #[test]
    fn a_checkpoint_round_trips_and_resumes_bit_identically() {
        let dev = device();
        let dir = scratch("resume");
        let model_config = mlp_config(16);
        let json = model_config.to_string();
        let config = TrainerConfig::new()
            .with_warmup_steps(3)
            .with_grad_clip_norm(Some(0.5))
            .with_ema_decay(0.9)
            .with_seed(11)
            .with_batch_size(32);
        let model = model_config.init(&dev);

        let mut straight = Trainer::new(model.clone(), json.clone(), config.clone()).unwrap();
        let straight_losses = run(&mut straight, 6, 32, &dev);

        let mut first = Trainer::new(model, json.clone(), config.clone()).unwrap();
        let mut losses = run(&mut first, 3, 32, &dev);
        let path = first.save(&dir).unwrap();
        assert!(path.starts_with(&dir) && path.join(MANIFEST).is_file());

        let info = read_checkpoint(&dir).unwrap();
        assert_eq!((info.step, info.seed, info.float_dtype.as_str()), (3, 11, "F64"));
        assert_eq!(info.trainer, config);
        let rebuilt = ScoreMlpConfig::load_binary(info.model_config.as_bytes()).unwrap();
        assert_eq!(rebuilt.hidden, 16);

        // A fresh model, differently initialised: every parameter comes from the checkpoint.
        let fresh = rebuilt.init(&dev);
        assert_ne!(bits(&params(&fresh)), bits(&params(first.model())));
        let mut resumed = Trainer::load(&dir, fresh, &json).unwrap();
        assert_eq!(resumed.steps(), 3);
        assert_eq!(resumed.config(), first.config());
        assert_eq!(bits(&params(resumed.model())), bits(&params(first.model())));
        assert_eq!(bits(&params(resumed.ema())), bits(&params(first.ema())));

        losses.extend(run(&mut resumed, 3, 32, &dev));
        let loss_bits = |l: &[f64]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(loss_bits(&losses), loss_bits(&straight_losses));
        assert_eq!(bits(&params(resumed.model())), bits(&params(straight.model())));
        assert_eq!(bits(&params(resumed.ema())), bits(&params(straight.ema())));
        assert_eq!(resumed.steps(), straight.steps());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_or_mismatched_checkpoints_are_typed_errors_and_untouched() {
        let dev = device();
        let dir = scratch("corrupt");
        let model_config = mlp_config(8);
        let json = model_config.to_string();
        let fresh = || model_config.init(&dev);
        let load = || Trainer::load(&dir, fresh(), &json);

        let empty = Trainer::load(&dir, fresh(), &json).unwrap_err();
        assert!(matches!(empty, CheckpointError::NotFound { .. }), "{empty}");

        let mut trainer = Trainer::new(fresh(), json.clone(), TrainerConfig::new()).unwrap();
        run(&mut trainer, 2, 16, &dev);
        let path = trainer.save(&dir).unwrap();
        let good = snapshot(&dir);
        assert!(load().is_ok());

        // Damage one file, check that loading fails with `expected` and writes nothing,
        // then restore it.
        let check = |file: &Path, damage: &dyn Fn(&[u8]) -> Option<Vec<u8>>, expected: &str| {
            let original = fs::read(file).unwrap();
            match damage(&original) {
                Some(bytes) => fs::write(file, bytes).unwrap(),
                None => fs::remove_file(file).unwrap(),
            }
            let damaged = snapshot(&dir);
            let err = load().unwrap_err();
            let kind = match &err {
                CheckpointError::NotFound { .. } => "NotFound",
                CheckpointError::Corrupt { .. } => "Corrupt",
                CheckpointError::Mismatch { .. } => "Mismatch",
                _ => "other",
            };
            assert_eq!(kind, expected, "{}: {err}", file.display());
            assert_eq!(snapshot(&dir), damaged, "loading wrote nothing");
            fs::write(file, original).unwrap();
            assert_eq!(snapshot(&dir), good);
        };
        let flip = |b: &[u8]| {
            let mut b = b.to_vec();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            Some(b)
        };
        let truncate = |b: &[u8]| Some(b[..b.len() / 2].to_vec());
        let garbage = |_: &[u8]| Some(b"\x00\xffnot a checkpoint".to_vec());
        let missing = |_: &[u8]| None;
        check(&path.join(MODEL_FILE), &flip, "Corrupt");
        check(&path.join(EMA_FILE), &truncate, "Corrupt");
        check(&path.join(OPTIMIZER_FILE), &missing, "Corrupt");
        check(&path.join(TRAINER_FILE), &garbage, "Corrupt");
        check(&path.join(MODEL_CONFIG_FILE), &flip, "Corrupt");
        check(&path.join(MANIFEST), &truncate, "Corrupt");
        check(&path.join(MANIFEST), &garbage, "Corrupt");
        check(&dir.join(LATEST), &garbage, "Corrupt");
        check(&dir.join(LATEST), &|_: &[u8]| Some(b"step-0-gone\n".to_vec()), "NotFound");
        check(&dir.join(LATEST), &missing, "NotFound");
        let future = |b: &[u8]| {
            let text = String::from_utf8(b.to_vec()).unwrap();
            Some(text.replace("\"version\": 1", "\"version\": 99").into_bytes())
        };
        check(&path.join(MANIFEST), &future, "Mismatch");

        // Garbage whose length and hash the manifest agrees with: burnpack's reader refuses it.
        let (model_file, manifest_file) = (path.join(MODEL_FILE), path.join(MANIFEST));
        let (original_model, original_manifest) =
            (fs::read(&model_file).unwrap(), fs::read(&manifest_file).unwrap());
        let junk = b"BURNPACK? no: just forty-odd bytes of junk....".to_vec();
        let mut manifest = Manifest::load_binary(&original_manifest).unwrap();
        let entry = manifest.files.iter_mut().find(|e| e.name == MODEL_FILE).unwrap();
        (entry.len, entry.fnv1a64) = (junk.len() as u64, fnv1a64(&junk));
        fs::write(&model_file, &junk).unwrap();
        fs::write(&manifest_file, config_to_json(&manifest)).unwrap();
        let err = load().unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        fs::write(&model_file, original_model).unwrap();
        fs::write(&manifest_file, original_manifest).unwrap();
        assert_eq!(snapshot(&dir), good);

        // Intact but not for this model.
        let other = mlp_config(12);
        let err = Trainer::load(&dir, other.init(&dev), &other.to_string()).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { what: "model config", .. }), "{err}");
        let err = Trainer::load(&dir, other.init(&dev), &json).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { what: "parameters", .. }), "{err}");
        assert_eq!(snapshot(&dir), good);

        // The same parameters in another float type: refused before any tensor is read.
        struct ToF32;
        impl ModuleMapper for ToF32 {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                param.map(|t| t.cast(burn::tensor::FloatDType::F32))
            }
        }
        let err = Trainer::load(&dir, fresh().map(&mut ToF32), &json).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { what: "dtype", .. }), "{err}");

        // Whitespace in the configuration does not matter.
        assert!(Trainer::load(&dir, fresh(), &compact_json(&json)).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn saving_publishes_atomically_and_cleans_up_after_itself() {
        let dev = device();
        let dir = scratch("publish");
        let json = mlp_config(8).to_string();
        let mut trainer =
            Trainer::new(mlp_config(8).init(&dev), json.clone(), TrainerConfig::new()).unwrap();
        run(&mut trainer, 1, 8, &dev);
        let first = trainer.save(&dir).unwrap();

        // What a crash leaves behind: a half-written checkpoint and an unpublished one.
        let partial = dir.join(".partial-crashed");
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join(MODEL_FILE), b"half").unwrap();
        let unpublished = dir.join("step-000000000009-unpublished");
        fs::create_dir(&unpublished).unwrap();
        let loaded = Trainer::load(&dir, mlp_config(8).init(&dev), &json).unwrap();
        assert_eq!(loaded.steps(), 1, "LATEST decides");

        run(&mut trainer, 1, 8, &dev);
        let second = trainer.save(&dir).unwrap();
        assert_ne!(first, second);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let second_name = second.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names, [LATEST.to_string(), second_name.clone()]);
        assert_eq!(fs::read_to_string(dir.join(LATEST)).unwrap(), format!("{second_name}\n"));
        assert_eq!(read_checkpoint(&dir).unwrap().step, 2);

        // Saving twice at the same step makes a new checkpoint, never a mix of two.
        let third = trainer.save(&dir).unwrap();
        assert_ne!(third, second);
        assert_eq!(read_checkpoint(&dir).unwrap().path, third);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_loss_log_bins_by_nearest_level_and_writes_csv_atomically() {
        let _ = device();
        let mut log = LossLog::new(&[1.0, 0.1, 0.01]).unwrap();
        assert!(LossLog::new(&[1.0, 0.0]).is_err());
        assert_eq!(
            (log.bucket(0.5), log.bucket(5.0), log.bucket(0.011)),
            (Some(0), Some(0), Some(2))
        );
        let report = StepReport {
            step: 6,
            loss: 3.0,
            learning_rate: 1e-3,
            grad_norm: 1.0,
            clip_scale: 1.0,
            per_sample: vec![1.0, 2.0, 3.0, 4.0, 5.0, f64::NAN],
            sigma: Some(vec![1.0, 0.1, 0.011, 0.5, 5.0, 1.0]),
            t: None,
        };
        log.record(&report);
        let rows = log.flush(7).to_vec();
        assert_eq!(
            rows,
            [
                LossRow { step: 7, level: Some(1.0), mean_loss: 10.0 / 3.0, count: 3 },
                LossRow { step: 7, level: Some(0.1), mean_loss: 2.0, count: 1 },
                LossRow { step: 7, level: Some(0.01), mean_loss: 3.0, count: 1 },
                LossRow { step: 7, level: None, mean_loss: 3.0, count: 5 },
            ]
        );
        // Without levels in the report only the overall row is written.
        log.record(&StepReport { sigma: None, per_sample: vec![2.0, 4.0], ..report });
        assert_eq!(log.flush(8), [LossRow { step: 8, level: None, mean_loss: 3.0, count: 2 }]);
        assert!(log.flush(9).is_empty());

        let dir = scratch("csv");
        let path = dir.join("losses.csv");
        fs::write(&path, "old").unwrap();
        log.write_csv(&path).unwrap();
        let csv = fs::read_to_string(&path).unwrap();
        assert_eq!(csv, log.to_csv());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "step,level,mean_loss,count");
        assert_eq!(lines[2], "7,0.1,2,1");
        assert_eq!(lines[5], "8,all,3,2");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
