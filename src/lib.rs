//! # scorefield
//!
//! Score-based generative modelling on [Burn](https://burn.dev): score models, noise
//! schedules, objectives and samplers that run unchanged on CPU and GPU; the device is chosen
//! at run time.
//!
//! This crate re-exports the workspace members:
//! - [`core`] (`scorefield-core`): the traits [`ScoreModel`], [`ScoreJvp`],
//!   [`NoiseSchedule`], [`Objective`], [`Sampler`], every noise schedule, and the exact
//!   analytic oracles.
//! - [`nn`] (`scorefield-nn`): score networks.
//! - [`data`] (`scorefield-data`): data sets and image output.
//! - [`eval`] (`scorefield-eval`): sample quality, the MNIST classifier and the Fréchet
//!   distance on its features.
//!
//! ```
//! use scorefield::analytic::Gaussian;
//! use scorefield::schedule::VeSde;
//! use scorefield::{NoiseLevel, ScoreModel};
//!
//! let device = scorefield::device("flex")?;
//! let data = Gaussian::isotropic(&[1.0, -1.0], 0.5)?;
//! let ve = VeSde::new(0.01, 50.0)?;
//! let x = burn::tensor::Tensor::<2>::from_floats([[0.0, 0.0]], &device);
//! let level = NoiseLevel::constant(&ve, 1.0, 1, &device);
//! let s = data.score(x, &level); // (μ − x)/(s² + σ(t)² − σ(0)²)
//! assert!(s.try_into_vec_as::<f32>().unwrap()[0] > 0.0);
//! # Ok::<(), scorefield::Error>(())
//! ```
//!
//! ## Speed on the CPU
//!
//! On Burn's `flex` backend the networks run fused kernels for their convolutions
//! ([`nn::conv`], Winograd's algorithm for the wide 3×3 ones), GroupNorm + SiLU
//! ([`mod@nn::group_norm_silu`]) and SiLU ([`mod@nn::silu`]), each with a hand-written backward.
//! Burn allocates every op's output, and glibc's `malloc` returns large blocks to the kernel
//! and faults them in again zeroed: a binary that makes `mimalloc::MiMalloc` its
//! `#[global_allocator]`, as this repository's examples and benches do, trains and samples the
//! MLP up to 1.9× faster (`docs/performance.md`); they also turn mimalloc's purging off
//! (`mi_option_purge_delay = -1`, `examples/common/alloc.rs`), so that the U-Net's large
//! buffers are not returned to the kernel between steps and faulted in again.
#![deny(missing_docs)]

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use scorefield_core as core;
pub use scorefield_core::*;
pub use scorefield_data as data;
pub use scorefield_eval as eval;
pub use scorefield_nn as nn;
