//! # scorefield-core
//!
//! The traits of score-based generative modelling and every algorithm over them, independent
//! of the compute backend:
//!
//! - [`ScoreModel`] / [`ScoreJvp`]: an estimate of `∇ₓ log pₜ(x)` conditioned on a
//!   [`NoiseLevel`], and its exact Jacobian-vector product.
//! - [`NoiseSchedule`]: how data is perturbed ([`schedule`]): geometric σ levels, VE, VP and
//!   sub-VP SDEs, DDPM β schedules and the Karras σ grid.
//! - [`Objective`]: a training loss over a score model.
//! - [`Sampler`]: from a prior sample to data, reporting to an [`Observer`].
//! - [`analytic`]: Gaussians and Gaussian mixtures whose perturbed score is known exactly,
//!   the oracles every objective and sampler is tested against.
//!
//! Tensors carry their device; choose one at run time with [`device()`].
//!
//! ```
//! use scorefield_core::analytic::GaussianMixture;
//! use scorefield_core::schedule::VpSde;
//! use scorefield_core::{NoiseLevel, NoiseSchedule, ScoreModel};
//!
//! let device = scorefield_core::device("flex")?;
//! let mixture = GaussianMixture::new(&[0.5, 0.5], &[vec![-2.0, 0.0], vec![2.0, 0.0]], &[0.5, 0.5])?;
//! let vp = VpSde::new(0.1, 20.0)?;
//! let x = burn::tensor::Tensor::<2>::from_floats([[1.0, 0.5], [-1.0, 0.0]], &device);
//! let level = NoiseLevel::constant(&vp, 0.5, 2, &device);
//! let score = mixture.score(x, &level); // exact ∇ log p_t(x) of the perturbed mixture
//! assert_eq!(score.dims(), [2, 2]);
//! # Ok::<(), scorefield_core::Error>(())
//! ```
#![deny(missing_docs)]

pub mod analytic;
pub mod condition;
pub mod device;
pub mod error;
pub mod guidance;
pub mod io;
pub mod jvp;
pub mod likelihood;
pub mod objective;
pub mod param;
pub mod random;
pub mod sampler;
pub mod schedule;
pub mod score;

pub use device::{BackendKind, device};
pub use error::{Error, Result};
pub use jvp::FiniteDifference;
pub use objective::{LossOutput, Objective};
pub use sampler::{Observer, SampleStep, Sampler};
pub use schedule::{Marginal, NoiseSchedule};
pub use score::{
    DenoiserJvp, DenoiserModel, EpsilonJvp, EpsilonModel, FromDenoiser, FromEpsilon, NoiseLevel,
    ScoreJvp, ScoreModel, per_sample,
};
