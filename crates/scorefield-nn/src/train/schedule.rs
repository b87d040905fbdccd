//! Learning-rate schedules: a linear warm-up times a decay, run by burn-optim's schedulers.
//!
//! Step `k = 0, 1, …` uses
//!
//! ```text
//! η_k = w_k · η̃_k
//! w_k = min(1, (k + 1)/W)          the warm-up, W = TrainerConfig::warmup_steps (w_k = 1 if W = 0)
//!
//! η̃_k = η                                               no decay (lr_decay = None, the default)
//! η̃_k = η_min + ½ (η − η_min) (1 + cos(π · min(k, N)/N))   LrDecay::Cosine { N, η_min }
//! η̃_k = η / √max(k / t_ref, 1)                            LrDecay::InverseSqrt { t_ref }  (EDM2)
//! η̃_k = η · γ^⌊k / s⌋                                     LrDecay::Step { s, γ }  (PyTorch's StepLR)
//! ```
//!
//! The decay counts its steps from 0, under the warm-up, as EDM2 multiplies its ramp-up into
//! its decay (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
//! Models", Eq. 16; there `t_ref = 70k` batches and a ramp-up of 10 M images). The factors are
//! burn-optim [`LrScheduler`]s: the constant is burn's `LearningRate`, the cosine is burn's
//! `CosineAnnealingLrScheduler` followed by a constant `η_min` from step `N + 1` on (burn's
//! `SequentialLrScheduler`; without it burn's cosine climbs back up after `N` steps), the step
//! decay is burn's `StepLrScheduler`, and the
//! warm-up and the inverse square root are [`LinearWarmupLr`] and [`InverseSqrtLr`], which
//! implement burn's trait (burn's Noam schedule ramps up over `t_ref` itself, and its linear
//! schedule rounds differently from `(k + 1)/W`, which would change existing runs in their
//! last bits). A schedule's whole state is its step count: [`LrScheduleState::at`] rebuilds
//! it by replaying `k` steps, which is how a checkpoint resumes it bit for bit.

use burn::config::Config;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::lr_scheduler::step::StepLrSchedulerConfig;
use burn::lr_scheduler::{LrScheduler, LrSchedulerConfig, LrSchedulerRecord};
use burn::optim::LearningRate;
use scorefield_core::Error;

/// The decay of the learning rate after (and under) the warm-up; see the [module docs](self).
/// `None` in [`TrainerConfig::lr_decay`](super::TrainerConfig::lr_decay) keeps `η` constant.
#[derive(Config, Debug, PartialEq)]
pub enum LrDecay {
    /// Cosine annealing from `η` at step 0 to `η_min` at step `N`, then `η_min`:
    /// `η̃_k = η_min + ½ (η − η_min)(1 + cos(π·min(k, N)/N))`. burn-optim requires
    /// `0 < η ≤ 1` and `0 ≤ η_min ≤ η`.
    Cosine {
        /// `N ≥ 1`, the step at which `η_min` is reached (usually the run's length).
        decay_steps: u64,
        /// `η_min`, the final learning rate.
        min_learning_rate: f64,
    },
    /// EDM2's inverse square root: `η̃_k = η / √max(k/t_ref, 1)`, constant for `k ≤ t_ref`.
    InverseSqrt {
        /// `t_ref ≥ 1`, the step from which the rate falls as `k^(−½)`.
        ref_steps: u64,
    },
    /// Step decay: `η̃_k = η · γ^⌊k/s⌋`, the rate multiplied by `γ` every `s` steps (a single
    /// drop when `s` is past half the run).
    Step {
        /// `s ≥ 1`, the number of steps between two drops.
        step_size: u64,
        /// `γ ∈ (0, 1)`, the factor of each drop.
        gamma: f64,
    },
}

/// The linear warm-up factor `w_k = min(1, (k + 1)/W)` (`1` when `W = 0`), as a burn-optim
/// [`LrScheduler`]: its `k`-th [`step`](LrScheduler::step) returns `w_k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmupLr {
    warmup_steps: u64,
    step: u64,
}

impl LinearWarmupLr {
    /// The warm-up over `warmup_steps` steps (`0`: none), at step 0.
    pub fn new(warmup_steps: u64) -> Self {
        Self { warmup_steps, step: 0 }
    }
}

impl LrScheduler for LinearWarmupLr {
    fn step(&mut self) -> LearningRate {
        let k = self.step;
        self.step = self.step.saturating_add(1);
        if self.warmup_steps == 0 {
            1.0
        } else {
            (k.saturating_add(1) as f64 / self.warmup_steps as f64).min(1.0)
        }
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step;
        }
    }
}

/// EDM2's inverse-square-root schedule `η_k = η / √max(k/t_ref, 1)` as a burn-optim
/// [`LrScheduler`]: its `k`-th [`step`](LrScheduler::step) (from 0) returns `η_k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverseSqrtLr {
    learning_rate: f64,
    ref_steps: u64,
    step: u64,
}

impl InverseSqrtLr {
    /// `η / √max(k/t_ref, 1)`. Errors with [`Error::InvalidParameter`] unless `η > 0` is finite
    /// and `t_ref ≥ 1`.
    pub fn new(learning_rate: f64, ref_steps: u64) -> scorefield_core::Result<Self> {
        scorefield_core::error::ensure_positive("learning_rate", learning_rate)?;
        if ref_steps == 0 {
            return Err(Error::invalid("ref_steps", 0, "must be at least 1"));
        }
        Ok(Self { learning_rate, ref_steps, step: 0 })
    }
}

impl LrScheduler for InverseSqrtLr {
    fn step(&mut self) -> LearningRate {
        let k = self.step;
        self.step = self.step.saturating_add(1);
        self.learning_rate / (k as f64 / self.ref_steps as f64).max(1.0).sqrt()
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step;
        }
    }
}

/// A running schedule: the warm-up and the decay's burn-optim schedulers, and the rate the
/// next step will use. Built by [`LrScheduleState::at`].
#[derive(Clone)]
pub struct LrScheduleState {
    warmup: LinearWarmupLr,
    decay: ModuleLrScheduler,
    step: u64,
    next: f64,
}

impl std::fmt::Debug for LrScheduleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LrScheduleState")
            .field("step", &self.step)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

fn usize_steps(name: &'static str, steps: u64) -> scorefield_core::Result<usize> {
    usize::try_from(steps).map_err(|_| Error::invalid(name, steps, "does not fit in usize"))
}

/// Checks a decay against `η` (the checks burn-optim makes when building, as typed errors).
pub(super) fn validate_decay(
    learning_rate: f64,
    decay: Option<&LrDecay>,
) -> scorefield_core::Result<()> {
    match decay {
        None => Ok(()),
        Some(LrDecay::Cosine { decay_steps, min_learning_rate }) => {
            if *decay_steps == 0 {
                return Err(Error::invalid("decay_steps", 0, "must be at least 1"));
            }
            usize_steps("decay_steps", decay_steps.saturating_add(1))?;
            if learning_rate > 1.0 {
                let reason = "must be at most 1 with a cosine decay (burn-optim's cosine schedule)";
                return Err(Error::invalid("learning_rate", learning_rate, reason));
            }
            scorefield_core::error::ensure_non_negative("min_learning_rate", *min_learning_rate)?;
            if *min_learning_rate > learning_rate {
                let reason = format!("must be at most learning_rate = {learning_rate}");
                return Err(Error::invalid("min_learning_rate", min_learning_rate, reason));
            }
            Ok(())
        }
        Some(LrDecay::InverseSqrt { ref_steps }) => {
            InverseSqrtLr::new(learning_rate, *ref_steps).map(|_| ())
        }
        Some(LrDecay::Step { step_size, gamma }) => {
            if *step_size == 0 {
                return Err(Error::invalid("step_size", 0, "must be at least 1"));
            }
            usize_steps("step_size", *step_size)?;
            if !(*gamma > 0.0 && *gamma < 1.0) {
                return Err(Error::invalid("gamma", gamma, "must lie in (0, 1)"));
            }
            Ok(())
        }
    }
}

impl LrScheduleState {
    /// The schedule of `η = learning_rate`, warm-up `warmup_steps` and `decay`, positioned at
    /// step `step` (by replaying `step` steps of the schedulers: `O(step)`). Errors
    /// with [`Error::InvalidParameter`] for a decay that does not fit `η`.
    pub fn at(
        learning_rate: f64,
        warmup_steps: u64,
        decay: Option<&LrDecay>,
        step: u64,
    ) -> scorefield_core::Result<Self> {
        scorefield_core::error::ensure_positive("learning_rate", learning_rate)?;
        validate_decay(learning_rate, decay)?;
        let burn_error = |e: String| Error::invalid("lr_decay", format!("{decay:?}"), e);
        let decay_scheduler = match decay {
            None => Ok(ModuleLrScheduler::new(learning_rate)),
            Some(LrDecay::Cosine { decay_steps, min_learning_rate }) => {
                let n = usize_steps("decay_steps", *decay_steps)?;
                let cosine = CosineAnnealingLrSchedulerConfig::new(learning_rate, n)
                    .with_min_lr(*min_learning_rate);
                SequentialLrSchedulerConfig::new(
                    vec![cosine.into(), LrSchedulerConfig::Constant(*min_learning_rate)],
                    vec![n + 1],
                )
                .init()
            }
            Some(LrDecay::InverseSqrt { ref_steps }) => {
                Ok(ModuleLrScheduler::new(InverseSqrtLr::new(learning_rate, *ref_steps)?))
            }
            Some(LrDecay::Step { step_size, gamma }) => {
                let s = usize_steps("step_size", *step_size)?;
                StepLrSchedulerConfig::new(learning_rate, s).with_gamma(*gamma).init()
            }
        }
        .map_err(burn_error)?;
        let mut state = Self {
            warmup: LinearWarmupLr::new(warmup_steps),
            decay: decay_scheduler,
            step: 0,
            next: 0.0,
        };
        state.next = state.compute();
        for _ in 0..step {
            state.advance();
        }
        Ok(state)
    }

    /// One step of both schedulers: `η̃_k · w_k`.
    fn compute(&mut self) -> f64 {
        self.decay.step().base() * self.warmup.step()
    }

    /// The rate of the next step, `η_k` with `k = self.step()`.
    pub fn peek(&self) -> f64 {
        self.next
    }

    /// The number of steps taken: the index `k` of the next step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Returns `η_k` and moves on to step `k + 1`.
    pub fn advance(&mut self) -> f64 {
        let current = self.next;
        self.next = self.compute();
        self.step += 1;
        current
    }
}
