//! scorefield's integration tests, one binary (each test binary links all of Burn).
//!
//! - `schedules`: every schedule against its SDE (variance ODE) and DDPM against the VP SDE.
//! - `analytic`: the oracles against finite differences, quadrature and their own samples.
//! - `device`: run-time backend selection.
//! - `fast_samplers`: the step-and-driver solvers against the closed-form Gaussian flow
//!   (convergence orders), exact mixture samples, per-sample noise; typed errors.
//! - `mnist`: the MNIST loader and batching on a synthetic IDX split the test writes.
//! - `objectives`: every objective against closed-form minimisers, the Fisher divergence,
//!   Monte Carlo and the DDPM bound's closed forms; typed errors.
//! - `samplers`: every sampler against true samples with the exact oracles, the mode-weight
//!   experiment, typed errors, the observer and seeding.
//! - `solver_refs`: one run of each solver against k-diffusion's and diffusers' values.
//! - `backends`: the same computations on ndarray and wgpu agree with flex (feature-gated).
//! - `params`: the parameterisation modules against the exact score, EDM's loss, training.
//! - `precision`: f64 runs of a sampler and an objective against the host in f64 and f32.
//! - `ode_likelihood`: the probability-flow ODE and its log-likelihood against exact oracles.
//! - `train`: the trainer in f32: DSM on a tiny synthetic MNIST subset, bit-identical resume.

mod analytic;
mod backends;
mod common;
mod condition;
mod conditional_training;
mod device;
mod fast_samplers;
mod inpaint;
mod mnist;
mod objectives;
mod ode_likelihood;
mod params;
mod precision;
mod samplers;
mod schedules;
mod solver_refs;
mod stats;
mod train;
