//! Training score models: Adam with a learning-rate schedule (a linear warm-up, then constant,
//! cosine or EDM2's inverse square root, on burn-optim's schedulers), gradient clipping by the
//! global norm, an exponential moving average (EMA) of the weights with an optional warm-up,
//! EDM2's post-hoc EMA, per-noise-level loss logs, and atomic checkpoints from which a run
//! resumes bit for bit.
//!
//! One [`Trainer::step`] on a data batch `x₀`, at step `k = 0, 1, …`:
//!
//! ```text
//! rng_k   = StdRng(seed_k),  seed_k = mix(seed, k)          (the state is (seed, k) only)
//! L(θ)    = objective.loss(θ, x₀, rng_k)                     (error, no update, if not finite)
//! g       = ∇_θ L
//! g       ← g · min(1, c / ‖g‖₂)                             ‖g‖₂ over all parameters at once
//! η_k     = η̃_k · min(1, (k + 1) / W)                        (η_k = η̃_k when W = 0; η̃_k = η,
//!                                                            or a decay: schedule.rs)
//! θ       ← Adam(θ, g, η_k):  m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
//!                             θ ← θ − η_k · m̂ / (√v̂ + ε),  m̂ = m/(1−β₁ᵏ⁺¹), v̂ = v/(1−β₂ᵏ⁺¹)
//! θ_ema   ← d_k · θ_ema + (1 − d_k) · θ                      (θ_ema starts at θ₀; d_k = d, or
//!                                                            a warm-up to d: EmaWarmup)
//! θ̂_γ     ← β_t · θ̂_γ + (1 − β_t) · θ,  β_t = (1 − 1/t)^(γ+1),  t = k + 1
//!                                                            (each post-hoc EMA profile, if on)
//! ```
//!
//! [`Trainer::step`] reads its report (the losses and the gradient norm) back from the
//! device before the update, in one transfer: on a GPU, one synchronisation per step.
//! [`Trainer::step_deferred`] takes the same step without it (clipping on the device, the
//! objective's data check left to the loss) and [`Trainer::read_deferred`] reads the reports
//! of every step since the last read in one transfer; a non-finite value found then puts the
//! trainer back where it was before those steps.
//!
//! [`Trainer::fit`] is the loop around the step, with callbacks for logging, checkpoints,
//! progress and early stopping (`fit.rs`). The files: `trainer.rs` (the configuration and the
//! step), `schedule.rs` (the learning-rate schedules), `params.rs` (the visitors over
//! parameters: gradient norm, clipping, EMA), `posthoc_ema.rs` (EDM2's post-hoc EMA: the
//! profiles, their snapshots and the reconstruction), `data_parallel.rs` (the batch split
//! across ranks, devices or simulated, and the mean of their gradients: [`DataParallel`]),
//! `checkpoint.rs`, `loss_log.rs`, `fit.rs`.
//!
//! The EMA copy lives outside autodiff and is the model to sample from (NCSNv2, DDPM and the
//! score SDE all sample from it). The random numbers of step `k` (the objective's noise and
//! levels) come from a generator seeded by `(seed, k)`, and [`Trainer::batch_rng`] gives a
//! second such stream for drawing the batch itself, so a checkpoint holds the whole state of
//! the run: the model, the EMA, the post-hoc EMA profiles, Adam's moments and step counts,
//! the step counter and the seed (the learning-rate schedule is a function of the step count,
//! replayed on load).
//!
//! # Checkpoints
//!
//! [`Trainer::save`] writes into a directory `dir`:
//!
//! ```text
//! dir/LATEST                       the name of the current checkpoint (one line)
//! dir/step-<k>-<id>/manifest.json  format, version, step, seed, float dtype, and the length
//!                                  and SHA-256 of each file below (version 2; checkpoints
//!                                  of version 1, hashed with FNV-1a, still read)
//! dir/step-<k>-<id>/model.bpk      the model's parameters          (burnpack, Burn's own)
//! dir/step-<k>-<id>/ema.bpk        the EMA's parameters            (burnpack)
//! dir/step-<k>-<id>/optimizer.bpk  Adam's state, keyed by ParamId  (burnpack)
//! dir/step-<k>-<id>/trainer.json   the TrainerConfig
//! dir/step-<k>-<id>/model.json     the model's configuration, as given by the caller
//! dir/step-<k>-<id>/posthoc-ema-<i>.bpk   post-hoc EMA profile i (only with post-hoc EMA on;
//!                                  a checkpoint without them still reads)
//! dir/posthoc-ema/                 post-hoc EMA snapshots, kept across checkpoints
//!                                  (see posthoc_ema.rs and [`reconstruct`])
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
//! A trainer is tied to its model's configuration ([`ModelConfig`]: the networks' Burn
//! configs and the parameterisations' wrappers of them): [`Trainer::from_config`] builds the
//! model from it, and [`Trainer::resume`] rebuilds the model from the configuration a
//! checkpoint stored, so a checkpoint of another architecture or parameterisation is a
//! typed [`CheckpointError::Mismatch`].
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
//! let config = TrainerConfig::new().with_batch_size(64).with_grad_clip_norm(Some(1.0));
//! let mut trainer = Trainer::from_config(&model_config, config, &device)?;
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

#[cfg(feature = "burn-train")]
pub mod burn_train;
mod checkpoint;
pub mod data_parallel;
mod fit;
mod loss_log;
mod model_config;
mod params;
pub mod posthoc_ema;
pub mod schedule;
#[cfg(test)]
mod tests;
mod trainer;

pub use checkpoint::{CheckpointError, CheckpointInfo, read_checkpoint};
pub use data_parallel::DataParallel;
pub use fit::{Callback, Checkpoints, Every, FitError, FitSummary, LossCsv, Progress, every};
pub use loss_log::{LossLog, LossRow};
pub use model_config::{
    DataPredictionConfig, EpsilonPredictionConfig, ModelConfig, PreconditionedConfig,
    ScorePredictionConfig, SigmaTildeConfig, VPredictionConfig, reconstruct_as,
};
pub use posthoc_ema::{
    PostHocEma, PostHocFit, Profile, Reconstruction, Snapshot, gamma_to_sigma_rel, list_snapshots,
    reconstruct, sigma_rel_to_gamma, solve_posthoc,
};
pub use schedule::{InverseSqrtLr, LinearWarmupLr, LrDecay, LrScheduleState};
pub use trainer::{EmaWarmup, StepReport, TrainBatch, Trainer, TrainerConfig};
