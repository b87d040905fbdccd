//! # scorefield-nn
//!
//! Score networks for scorefield, built from layers that propagate a tangent beside their
//! value ([`dual`], [`layers`]): forward-mode Jacobian-vector products that are exact and
//! differentiable by Burn's first-order autodiff, so exact and sliced score matching train
//! these networks without second-order autodiff.
//!
//! - [`mlp::ScoreMlp`]: a time-conditioned MLP score network with exact `ScoreJvp`.
//! - [`unet::NcsnUnet`]: the NCSN-style U-Net for 28×28 images, exact `ScoreJvp`.
//! - [`embedding`]: the sinusoidal noise-level embedding and the class embedding of
//!   class-conditional networks (`classes > 0`: a null class for classifier-free guidance).
//! - [`classifier::NoisyClassifierMlp`]: a noise-conditional classifier for classifier
//!   guidance.
//! - [`conv`]: 2-D convolution with its two gradients, one sample per task on the flex
//!   backend (the `gemm` crate on each sample's im2col matrix), Burn's stock op elsewhere.
//! - [`mod@group_norm_silu`]: GroupNorm + SiLU (+ a per-channel shift), a fused kernel with a
//!   hand-written backward on the flex backend, the composed ops elsewhere.
//! - [`silu`]: SiLU and its gradient, one fused vectorised pass on flex.
//! - [`train::Trainer`]: Adam with a learning-rate schedule (warm-up, then constant, cosine or
//!   EDM2's inverse square root), global-norm clipping, an EMA of the weights, EDM2's post-hoc
//!   EMA ([`train::reconstruct`]) and atomic checkpoints that resume bit for bit.
#![deny(missing_docs)]

pub mod classifier;
pub mod conv;
mod dense;
pub mod dual;
pub mod embedding;
#[cfg(feature = "flex")]
mod flex;
pub mod group_norm_silu;
pub mod layers;
pub mod mlp;
pub mod silu;
pub mod train;
pub mod unet;

pub use classifier::{NoisyClassifierMlp, NoisyClassifierMlpConfig};
pub use conv::{Conv2dFused, Conv2dOptions, ConvAlgorithm, ConvError, conv2d};
pub use dual::Dual;
#[cfg(feature = "flex")]
pub use flex::OptionalTensor;
pub use group_norm_silu::{GroupNormError, GroupNormSilu, GroupNormSiluOptions, group_norm_silu};
pub use layers::DualForward;
pub use mlp::{Activation, Conditioning, ScoreMlp, ScoreMlpConfig};
pub use train::{
    Callback, CheckpointError, CheckpointInfo, Checkpoints, DataParallel, DataPredictionConfig,
    EmaWarmup, EpsilonPredictionConfig, FitError, FitSummary, LossCsv, LossLog, LossRow, LrDecay,
    ModelConfig, PostHocEma, PreconditionedConfig, Progress, ScorePredictionConfig,
    SigmaTildeConfig, StepReport, TrainBatch, Trainer, TrainerConfig, VPredictionConfig,
    read_checkpoint,
};
pub use unet::{NcsnUnet, NcsnUnetConfig};

#[cfg(test)]
mod testing;
