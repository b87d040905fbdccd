//! The trainer: its configuration and one optimisation step.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use scorefield_core::condition::Condition;
use scorefield_core::objective::{ConditionalObjective, LossOutput, without_data_check};
use scorefield_core::{Error, Objective};

use super::data_parallel::{DataParallel, shards};
use super::params::{ema_update, grad_norm_squared, scale_grads, scale_grads_by};
use super::posthoc_ema::{PostHocEma, PostHocTracker};
use super::schedule::{LrDecay, LrScheduleState, validate_decay};

/// The hyper-parameters of a [`Trainer`], saved with every checkpoint. Defaults follow the
/// NCSN/NCSNv2 reference code: Adam with `η = 10⁻³`, `β = (0.9, 0.999)`, `ε = 10⁻⁸`, no
/// warm-up, no decay of the learning rate, no clipping, EMA decay 0.999, no post-hoc EMA,
/// batch 128. (DDPM and the score SDE use `η = 2·10⁻⁴`, 5000 warm-up steps and clipping at
/// 1; EDM2 uses an inverse-square-root decay and post-hoc EMA.)
///
/// Fields added after the first release are `Option`s, so a `trainer.json` of an older
/// checkpoint still reads (a missing field is `None`).
#[derive(Config, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Adam's learning rate `η`: the rate after the warm-up, before any decay
    /// ([`lr_decay`](Self::lr_decay)).
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
    /// Linear warm-up length `W`: step `k` uses `η̃_k · min(1, (k + 1)/W)`; 0 disables it.
    #[config(default = 0)]
    pub warmup_steps: u64,
    /// The decay of the learning rate ([`LrDecay`]: cosine, step, or EDM2's inverse square root);
    /// `None` (the default) keeps `η` after the warm-up. See [`super::schedule`].
    pub lr_decay: Option<LrDecay>,
    /// Clip the gradient to this global L2 norm `c`: `g ← g · min(1, c/‖g‖₂)`, the norm taken
    /// over all parameters together. `None` disables clipping.
    pub grad_clip_norm: Option<f64>,
    /// The EMA decay `d` in `θ_ema ← d·θ_ema + (1 − d)·θ`, in `[0, 1]`; with a warm-up, the
    /// decay it rises to.
    #[config(default = 0.999)]
    pub ema_decay: f64,
    /// A warm-up of the EMA decay ([`EmaWarmup`]); `None` (the default) keeps `d` from the
    /// first step.
    pub ema_warmup: Option<EmaWarmup>,
    /// Post-hoc EMA ([`PostHocEma`], EDM2): power-function EMAs tracked beside the EMA above,
    /// with snapshots from which the EMA of any length is rebuilt after training
    /// ([`reconstruct`](super::reconstruct)). `None` (the default) tracks none.
    pub posthoc_ema: Option<PostHocEma>,
    /// The seed of every random number the trainer draws (see [`Trainer::batch_rng`]).
    #[config(default = 0)]
    pub seed: u64,
    /// The batch size. The trainer does not draw batches itself; it records the size the
    /// caller draws with [`Trainer::batch_rng`], so that it is saved with the run.
    #[config(default = 128)]
    pub batch_size: usize,
}

/// A warm-up of the EMA decay: early on, when the weights move fast, the average spans fewer
/// steps, so a short run needs no decay chosen by hand. Step `k` (from 0) uses `d_k`:
///
/// ```text
/// ScoreSde:  d_k = min(d, (1 + n)/(10 + n)),  n = k + 1           (score_sde's EMA)
/// Power:     d_k = clamp(1 − (1 + k/γ)^(−p), 0, d)                (k-diffusion's EMAWarmup,
///                                                                 diffusers' use_ema_warmup)
/// ```
///
/// With `Power`, `d_0 = 0`: the EMA is the weights after the first step. k-diffusion
/// recommends `γ = 1` with `p = 2/3` for runs of a million steps or more and `p = 3/4` for
/// shorter ones (`d_k` reaches 0.999 at `k ≈ 31,600` and 10,000 steps respectively).
#[derive(Config, Debug, PartialEq)]
pub enum EmaWarmup {
    /// score_sde's `min(d, (1 + n)/(10 + n))`, `n` the number of updates including this one.
    ScoreSde,
    /// `clamp(1 − (1 + k/γ)^(−p), 0, d)`.
    Power {
        /// `γ = inv_gamma > 0`, the step scale of the warm-up.
        inv_gamma: f64,
        /// `p = power > 0`, how fast the decay rises.
        power: f64,
    },
}

impl TrainerConfig {
    /// The EMA decay of step `k` (counted from 0): `d`, or `d_k` of the warm-up.
    pub fn ema_decay_at(&self, step: u64) -> f64 {
        let d = self.ema_decay;
        match self.ema_warmup {
            None => d,
            Some(EmaWarmup::ScoreSde) => {
                let n = step as f64 + 1.0;
                d.min((1.0 + n) / (10.0 + n))
            }
            Some(EmaWarmup::Power { inv_gamma, power }) => {
                let value = 1.0 - (1.0 + step as f64 / inv_gamma).powf(-power);
                value.clamp(0.0, d)
            }
        }
    }

    /// The learning rate of step `k` (counted from 0): `η̃_k · min(1, (k + 1)/W)`, with `η̃_k`
    /// the decay's rate (`η` without one); see [`super::schedule`]. Replays `k` steps of the
    /// schedule. Errors as [`validate`](Self::validate).
    pub fn learning_rate_at(&self, step: u64) -> scorefield_core::Result<f64> {
        Ok(self.lr_schedule(step)?.peek())
    }

    /// The learning-rate schedule (burn-optim schedulers) positioned at step `step`.
    pub fn lr_schedule(&self, step: u64) -> scorefield_core::Result<LrScheduleState> {
        LrScheduleState::at(self.learning_rate, self.warmup_steps, self.lr_decay.as_ref(), step)
    }

    /// Checks every field: `η > 0`, `β₁, β₂ ∈ [0, 1)`, `ε > 0`, `c > 0`, `d ∈ [0, 1]`, all
    /// finite, the decay ([`LrDecay`]) and the post-hoc EMA ([`PostHocEma::validate`]), and a
    /// batch size of at least 1. Errors with [`Error::InvalidParameter`].
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
        if let Some(EmaWarmup::Power { inv_gamma, power }) = self.ema_warmup {
            scorefield_core::error::ensure_positive("inv_gamma", inv_gamma)?;
            scorefield_core::error::ensure_positive("power", power)?;
        }
        validate_decay(self.learning_rate, self.lr_decay.as_ref())?;
        if let Some(posthoc) = &self.posthoc_ema {
            posthoc.validate()?;
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, "must be at least 1"));
        }
        Ok(())
    }

    pub(super) fn adam(&self) -> ModuleOptimizer {
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
    /// The EMA decay `d_k` the step used ([`TrainerConfig::ema_decay_at`]).
    pub ema_decay: f64,
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

/// A score model under training: the model (on an autodiff device), its EMA and post-hoc EMA
/// profiles (outside autodiff), Adam's state, the learning-rate schedule, the step counter
/// and the seed. See the module docs.
///
/// `M` is any Burn [`Module`]; [`Trainer::step`] needs an [`Objective`] over it, which for
/// the objectives of `scorefield_core` means that `M` is a
/// [`ScoreModel`](scorefield_core::ScoreModel) (or a [`ScoreJvp`](scorefield_core::ScoreJvp)
/// for exact and sliced score matching).
#[derive(Clone)]
pub struct Trainer<M: Module> {
    pub(super) model: M,
    pub(super) ema: M,
    pub(super) optimizer: ModuleOptimizer,
    pub(super) schedule: LrScheduleState,
    pub(super) posthoc: Option<PostHocTracker<M>>,
    pub(super) config: TrainerConfig,
    pub(super) model_config: String,
    pub(super) step: u64,
    /// Data parallelism across ranks (`None`: one rank, the model's device).
    pub(super) parallel: Option<DataParallel>,
    /// The steps of [`Trainer::step_deferred`] not yet read, and the state before them.
    pub(super) deferred: Option<Deferred<M>>,
}

impl<M: Module> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("config", &self.config)
            .field("model_config", &self.model_config)
            .field("parameters", &self.model.num_params())
            .field("parallel", &self.parallel)
            .field("deferred_steps", &self.deferred_steps())
            .finish_non_exhaustive()
    }
}

/// What [`Trainer::step`] trains on: a data batch `x₀` (an [`Objective`]'s), or `(x₀, y)`, a
/// batch with one condition per sample (a [`ConditionalObjective`]'s: a class-conditional
/// score model under any score-matching objective, a noise-conditional classifier).
pub trait TrainBatch<M, O: ?Sized, const D: usize>: Sized {
    /// The objective's loss of `model` on this batch.
    fn loss(
        self,
        objective: &O,
        model: &M,
        rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput>;

    /// The `n` equal consecutive shards of the batch, one per rank of
    /// [data parallelism](super::DataParallel) (`n = 1`: the batch itself).
    ///
    /// Errors with [`Error::InvalidParameter`] unless the batch splits evenly and, for a
    /// conditional batch, its condition splits ([`Condition::shards`]).
    fn split(self, n: usize) -> scorefield_core::Result<Vec<Self>>;

    /// The batch on `device` (a rank's).
    fn to_device(self, device: &Device) -> Self;
}

impl<M, O: Objective<M, D> + ?Sized, const D: usize> TrainBatch<M, O, D> for Tensor<D> {
    fn loss(
        self,
        objective: &O,
        model: &M,
        rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        objective.loss(model, self, rng)
    }

    fn split(self, n: usize) -> scorefield_core::Result<Vec<Self>> {
        shards(self, n)
    }

    fn to_device(self, device: &Device) -> Self {
        Tensor::to_device(self, device)
    }
}

impl<M, O, C, const D: usize> TrainBatch<M, O, D> for (Tensor<D>, C)
where
    O: ConditionalObjective<M, D, C> + ?Sized,
    C: Condition,
{
    fn loss(
        self,
        objective: &O,
        model: &M,
        rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        objective.loss_given(model, self.0, &self.1, rng)
    }

    fn split(self, n: usize) -> scorefield_core::Result<Vec<Self>> {
        if n == 1 {
            return Ok(vec![self]);
        }
        let (x, y) = self;
        let conditions = y.shards(n).ok_or_else(|| {
            Error::invalid("condition", "unsplittable", format!("cannot be split into {n} ranks"))
        })?;
        Ok(shards(x, n)?.into_iter().zip(conditions).collect())
    }

    fn to_device(self, device: &Device) -> Self {
        (self.0.to_device(device), self.1)
    }
}

/// The random stream of a step: `0` for the objective (rank 0's), `1` for the batch, `r + 1`
/// for rank `r ≥ 1`'s objective.
const LOSS_STREAM: u64 = 0;
const BATCH_STREAM: u64 = 1;

/// SplitMix64's output function: a bijective 64-bit mix.
pub(super) fn splitmix64(x: u64) -> u64 {
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
        let schedule = config.lr_schedule(0)?;
        let posthoc = match &config.posthoc_ema {
            Some(p) => Some(PostHocTracker::new(p, &model)?),
            None => None,
        };
        let model_config = model_config.into();
        let (step, parallel, deferred) = (0, None, None);
        Ok(Self {
            model,
            ema,
            optimizer,
            schedule,
            posthoc,
            config,
            model_config,
            step,
            parallel,
            deferred,
        })
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
        self.schedule.peek()
    }

    /// A generator for drawing the next step's batch, seeded by `(seed, step)` (a stream
    /// separate from the objective's). Drawing batches from it makes a run, including its
    /// data order, a function of the seed alone, so it resumes bit for bit.
    pub fn batch_rng(&self) -> StdRng {
        StdRng::seed_from_u64(stream_seed(self.config.seed, self.step, BATCH_STREAM))
    }

    /// One optimisation step on `batch` (see the module docs for the update): a data
    /// batch `x₀` for an [`Objective`], or `(x₀, y)` with a condition per sample for a
    /// [`ConditionalObjective`] ([`TrainBatch`]). Returns the loss, the per-sample losses and
    /// their noise levels.
    ///
    /// With [data parallelism](Self::set_data_parallel) on, the batch is split across the
    /// ranks and the update uses the mean of their gradients (see
    /// [`DataParallel`](super::DataParallel)); without it, this is the same code with one rank.
    ///
    /// Errors with [`Error::NonFinite`] if the loss or the gradient norm is NaN or infinite,
    /// with [`Error::InvalidParameter`] if the batch does not split evenly across the ranks,
    /// and with the objective's error if it fails; the model, the EMA, Adam's state and the
    /// step counter are then unchanged. Errors with [`Error::InvalidParameter`] while
    /// [deferred steps](Self::step_deferred) are unread.
    pub fn step<O, B, const D: usize>(
        &mut self,
        objective: &O,
        batch: B,
    ) -> scorefield_core::Result<StepReport>
    where
        O: ?Sized,
        B: TrainBatch<M, O, D>,
    {
        self.refuse_unread("step")?;
        let (grads, ranks) = self.rank_gradients(objective, batch)?;
        self.apply_gradients(grads, ranks)
    }

    /// One optimisation step with no read from the device: the same update as
    /// [`step`](Self::step), with the checks that need a read (the data and the loss finite,
    /// the gradient norm for clipping) left on the device. On a GPU the host then queues the
    /// next step while this one runs; [`read_deferred`](Self::read_deferred) reads the steps'
    /// reports, every so many steps, in one transfer.
    ///
    /// - Clipping runs on the device: `g ← g · min(1, c/‖g‖₂)` with the norm in the
    ///   gradients' dtype (`step` computes the factor in f64 on the host), so a clipped run
    ///   agrees with `step`'s to the float type's rounding; without clipping it is `step`'s
    ///   run bit for bit.
    /// - The objective runs inside [`without_data_check`]: non-finite data shows as a
    ///   non-finite loss at the read.
    /// - Until the read, the trainer keeps its state from before the first unread step (the
    ///   model, the EMA, Adam's moments: one more copy of each on the device), to return to
    ///   if the read finds a non-finite value.
    ///
    /// Errors (with nothing changed) as [`step`](Self::step) for what the host can see: the
    /// batch does not split across the ranks, or the objective refuses the batch's shape,
    /// dtype or parameters.
    ///
    /// ```
    /// use scorefield_core::analytic::GaussianMixture;
    /// use scorefield_core::objective::DenoisingScoreMatching;
    /// use scorefield_core::schedule::GeometricSigmas;
    /// use scorefield_nn::{ScoreMlpConfig, Trainer, TrainerConfig};
    ///
    /// let device = scorefield_core::device("flex")?;
    /// let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2])?;
    /// let config = TrainerConfig::new().with_batch_size(64);
    /// let mut trainer = Trainer::from_config(&ScoreMlpConfig::new(2).with_hidden(32), config, &device)?;
    /// let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
    /// for _ in 0..10 {
    ///     let batch = data.sample(64, &device, &mut trainer.batch_rng());
    ///     trainer.step_deferred(&objective, batch)?;
    /// }
    /// let reports = trainer.read_deferred()?; // one read for the ten steps
    /// assert_eq!((reports.len(), reports[9].step, trainer.steps()), (10, 9, 10));
    /// # Ok::<(), scorefield_core::Error>(())
    /// ```
    pub fn step_deferred<O, B, const D: usize>(
        &mut self,
        objective: &O,
        batch: B,
    ) -> scorefield_core::Result<()>
    where
        O: ?Sized,
        B: TrainBatch<M, O, D>,
    {
        let (mut grads, ranks) = without_data_check(|| self.rank_gradients(objective, batch))?;
        let norm_squared = grad_norm_squared(&self.model, &grads);
        if let (Some(c), Some(n2)) = (self.config.grad_clip_norm, &norm_squared) {
            // min(1, c/‖g‖): 1 for a zero gradient (c/0 = ∞), NaN for a NaN norm.
            let factor = n2.clone().sqrt().recip().mul_scalar(c).clamp_max(1.0);
            scale_grads_by(&self.model, &mut grads, &factor);
        }
        let step = self.step;
        let (before, mut steps) = match self.deferred.take() {
            Some(Deferred { before, steps }) => (before, steps),
            None => (Box::new(self.clone()), Vec::new()),
        };
        let (learning_rate, ema_decay) = self.update(grads);
        steps.push(PendingStep { step, learning_rate, ema_decay, ranks, norm_squared });
        self.deferred = Some(Deferred { before, steps });
        Ok(())
    }

    /// The reports of the [deferred steps](Self::step_deferred) not yet read, in step order,
    /// read from the device in one transfer (empty if there are none).
    ///
    /// Errors with [`Error::NonFinite`] if a loss or a gradient norm of any of them is NaN or
    /// infinite (the message names the first such step): the trainer then returns to its
    /// state before the first unread step (the model, the EMA, Adam's state, the post-hoc EMA
    /// and the step counter), as if none of them had been taken.
    pub fn read_deferred(&mut self) -> scorefield_core::Result<Vec<StepReport>> {
        let Some(Deferred { before, steps }) = self.deferred.take() else {
            return Ok(Vec::new());
        };
        let meta: Vec<_> = steps.iter().map(|p| (p.step, p.learning_rate, p.ema_decay)).collect();
        let read = read_back(steps.into_iter().map(|p| (p.step, p.ranks, p.norm_squared)));
        let values = match read {
            Ok(values) => values,
            Err(e) => {
                let parallel = self.parallel.take();
                *self = *before;
                self.parallel = parallel;
                let back = self.step;
                return Err(match e {
                    Error::NonFinite { context } => Error::NonFinite {
                        context: format!("{context} (the trainer is back at step {back})"),
                    },
                    other => other,
                });
            }
        };
        let clip = self.config.grad_clip_norm;
        let reports = meta.into_iter().zip(values);
        Ok(reports
            .map(|((step, learning_rate, ema_decay), (losses, grad_norm))| {
                let clip_scale = clip_scale(clip, grad_norm);
                StepReport::new(step, losses, grad_norm, clip_scale, learning_rate, ema_decay)
            })
            .collect())
    }

    /// The number of [deferred steps](Self::step_deferred) not yet read.
    pub fn deferred_steps(&self) -> usize {
        self.deferred.as_ref().map_or(0, |d| d.steps.len())
    }

    /// [`Error::InvalidParameter`] if deferred steps are unread (`what` needs them read).
    pub(super) fn refuse_unread(&self, what: &str) -> scorefield_core::Result<()> {
        match self.deferred_steps() {
            0 => Ok(()),
            n => Err(Error::invalid(
                "deferred steps",
                n,
                format!("unread: call Trainer::read_deferred before Trainer::{what}"),
            )),
        }
    }

    /// The generator of rank `rank`'s objective at the current step, seeded by
    /// `(seed, step, stream)`: stream 0 for rank 0 (the stream of a single-device run),
    /// stream `rank + 1` for the others (stream 1 draws the batch).
    pub(super) fn loss_rng(&self, rank: usize) -> StdRng {
        StdRng::seed_from_u64(self.loss_seed(rank))
    }

    /// The seed of [`loss_rng`](Self::loss_rng).
    pub(super) fn loss_seed(&self, rank: usize) -> u64 {
        let stream = if rank == 0 { LOSS_STREAM } else { BATCH_STREAM + rank as u64 };
        stream_seed(self.config.seed, self.step, stream)
    }

    /// The second half of a step, once the gradient `grads` of the batch's loss is known (on
    /// several ranks: their mean): the global norm, clipping, Adam, the EMA, the post-hoc EMA
    /// and the step counter. The ranks' losses and the gradient norm come back to the host in
    /// one read ([`read_back`]: on a GPU, the step's one synchronisation). Errors with
    /// [`Error::NonFinite`] (and changes nothing) if a loss or the gradient norm is not finite.
    pub(super) fn apply_gradients(
        &mut self,
        mut grads: GradientsParams,
        ranks: Vec<RankLosses>,
    ) -> scorefield_core::Result<StepReport> {
        let step = self.step;
        let norm_squared = grad_norm_squared(&self.model, &grads);
        let read = read_back([(step, ranks, norm_squared)])?.pop();
        let (losses, grad_norm) = read.expect("one step read");
        let clip_scale = clip_scale(self.config.grad_clip_norm, grad_norm);
        if clip_scale < 1.0 {
            scale_grads(&self.model, &mut grads, clip_scale);
        }
        let (learning_rate, ema_decay) = self.update(grads);
        Ok(StepReport::new(step, losses, grad_norm, clip_scale, learning_rate, ema_decay))
    }

    /// Adam with the (clipped) gradient, the EMA, the step counter and the post-hoc EMA: the
    /// step's learning rate and EMA decay.
    fn update(&mut self, grads: GradientsParams) -> (f64, f64) {
        let learning_rate = self.schedule.advance();
        self.model = self.optimizer.step(learning_rate, self.model.clone(), grads);
        let ema_decay = self.config.ema_decay_at(self.step);
        self.ema = ema_update(&self.model, self.ema.clone(), ema_decay);
        self.step += 1;
        if let Some(posthoc) = &mut self.posthoc {
            posthoc.update(&self.model, self.step);
        }
        (learning_rate, ema_decay)
    }
}

/// `min(1, c/‖g‖₂)` for clipping at `c` (1 without clipping).
fn clip_scale(clip: Option<f64>, grad_norm: f64) -> f64 {
    match clip {
        Some(c) if grad_norm > c => c / grad_norm,
        _ => 1.0,
    }
}

impl StepReport {
    fn new(
        step: u64,
        losses: BatchLosses,
        grad_norm: f64,
        clip_scale: f64,
        learning_rate: f64,
        ema_decay: f64,
    ) -> Self {
        let BatchLosses { loss, per_sample, sigma, t } = losses;
        StepReport {
            step,
            loss,
            learning_rate,
            ema_decay,
            grad_norm,
            clip_scale,
            per_sample,
            sigma,
            t,
        }
    }
}

/// The [deferred steps](Trainer::step_deferred) not yet read, and the trainer before them.
#[derive(Clone)]
pub(super) struct Deferred<M: Module> {
    /// The trainer before the first of them (with no deferred steps of its own).
    before: Box<Trainer<M>>,
    steps: Vec<PendingStep>,
}

/// What a deferred step leaves to be read: its values on the host, its losses and squared
/// gradient norm on the device.
#[derive(Clone, Debug)]
struct PendingStep {
    step: u64,
    learning_rate: f64,
    ema_decay: f64,
    ranks: Vec<RankLosses>,
    norm_squared: Option<Tensor<1>>,
}

/// The losses of a step's whole batch, on the host: what [`StepReport`] shows of them.
#[derive(Debug, Clone, Default)]
pub(super) struct BatchLosses {
    /// The batch's loss (on several ranks, the mean of theirs).
    pub(super) loss: f64,
    /// The loss of each batch element, in batch order.
    pub(super) per_sample: Vec<f64>,
    /// The noise level `σ` of each batch element, if the objective perturbs the data.
    pub(super) sigma: Option<Vec<f64>>,
    /// The time `t` of each batch element, if the objective perturbs the data.
    pub(super) t: Option<Vec<f64>>,
}

/// One rank's losses, still on the device (outside autodiff), until [`read_back`].
#[derive(Debug, Clone)]
pub(super) struct RankLosses {
    loss: Tensor<1>,
    per_sample: Tensor<1>,
    /// `σ` and `t` of each element, if the objective perturbs the data.
    level: Option<(Tensor<1>, Tensor<1>)>,
}

impl RankLosses {
    /// The values of `out` without their autodiff graph.
    pub(super) fn of(out: &LossOutput) -> Self {
        let level = out.level.as_ref().map(|l| (l.sigma.clone().inner(), l.t.clone().inner()));
        RankLosses {
            loss: out.loss.clone().inner(),
            per_sample: out.per_sample.clone().inner(),
            level,
        }
    }
}

/// For each step `(index, ranks, ‖g‖²)`: the ranks' losses merged in rank order and the
/// gradient norm `√‖g‖²`, every step's values read from the device in one transfer (all
/// concatenated on the first one's device, in its dtype), each loss and norm checked finite
/// (the error names the first step, in order, with a non-finite one).
fn read_back(
    steps: impl IntoIterator<Item = (u64, Vec<RankLosses>, Option<Tensor<1>>)>,
) -> scorefield_core::Result<Vec<(BatchLosses, f64)>> {
    let mut pieces: Vec<Tensor<1>> = Vec::new();
    // Per step: its index, and per rank (elements per sample vector, has a level); has a norm.
    let mut layouts = Vec::new();
    for (step, ranks, norm_squared) in steps {
        let mut layout = Vec::new();
        for rank in ranks {
            layout.push((rank.per_sample.dims()[0], rank.level.is_some()));
            pieces.extend([rank.loss, rank.per_sample]);
            if let Some((sigma, t)) = rank.level {
                pieces.extend([sigma, t]);
            }
        }
        layouts.push((step, layout, norm_squared.is_some()));
        pieces.extend(norm_squared);
    }
    let host: Vec<f64> = match pieces.first() {
        Some(first) => {
            let (device, dtype) = (first.device(), first.dtype());
            let pieces = pieces.into_iter().map(|p| p.to_device(&device).cast(dtype)).collect();
            Tensor::cat(pieces, 0).into_data().iter::<f64>().collect()
        }
        None => Vec::new(),
    };
    let mut rest = host.as_slice();
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let mut out = Vec::with_capacity(layouts.len());
    for (step, layout, has_norm) in layouts {
        let n_ranks = layout.len();
        let mut merged =
            BatchLosses { sigma: Some(Vec::new()), t: Some(Vec::new()), ..Default::default() };
        let mut sum = 0.0;
        for (rank, (len, has_level)) in layout.into_iter().enumerate() {
            let loss = take(1)[0];
            if !loss.is_finite() {
                let on = if n_ranks > 1 { format!(" (rank {rank})") } else { String::new() };
                let context = format!("training loss at step {step}{on}");
                return Err(Error::NonFinite { context });
            }
            sum += loss;
            merged.per_sample.extend_from_slice(take(len));
            for acc in [&mut merged.sigma, &mut merged.t] {
                let values = if has_level { Some(take(len)) } else { None };
                match (acc.as_mut(), values) {
                    (Some(a), Some(v)) => a.extend_from_slice(v),
                    _ => *acc = None,
                }
            }
        }
        merged.loss = sum / n_ranks.max(1) as f64; // the mean over the ranks
        let grad_norm = if has_norm { take(1)[0].sqrt() } else { 0.0 };
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite { context: format!("gradient norm at step {step}") });
        }
        out.push((merged, grad_norm));
    }
    Ok(out)
}
