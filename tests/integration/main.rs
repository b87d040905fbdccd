//! scorefield's integration tests, one binary (each test binary links all of Burn).
//!
//! - `schedules`: every schedule against its SDE (variance ODE) and DDPM against the VP SDE.
//! - `analytic`: the oracles against finite differences, quadrature and their own samples.
//! - `device`: run-time backend selection.
//! - `objectives`: every objective against closed-form minimisers, the Fisher divergence,
//!   Monte Carlo and the DDPM bound's closed forms; typed errors.
//! - `samplers`: every sampler against true samples with the exact oracles, the mode-weight
//!   experiment, typed errors, the observer and seeding.
//! - `backends`: the same computations on ndarray and wgpu agree with flex (feature-gated).
//! - `ode_likelihood`: the probability-flow ODE and its log-likelihood against exact oracles.
//! - `train`: the trainer in f32: DSM on a tiny MNIST subset, bit-identical resume.

mod analytic;
mod backends;
mod common;
mod device;
mod objectives;
mod ode_likelihood;
mod samplers;
mod schedules;
mod stats;
mod train;
