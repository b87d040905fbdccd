//! scorefield's integration tests, one binary (each test binary links all of Burn).
//!
//! - `schedules`: every schedule against its SDE (variance ODE) and DDPM against the VP SDE.
//! - `analytic`: the oracles against finite differences, quadrature and their own samples.
//! - `device`: run-time backend selection.
//! - `backends`: the same computations on ndarray and wgpu agree with flex (feature-gated).

mod analytic;
mod backends;
mod common;
mod device;
mod schedules;
mod stats;
