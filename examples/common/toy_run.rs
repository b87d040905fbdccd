//! What `toy_2d` saves beside its checkpoint (`run.json`) and `custom_sampler` reads back:
//! one definition, included by both examples, so that the two cannot drift apart.

use burn::config::Config;

/// What `checkpoint/` was trained on.
#[derive(Config, Debug)]
pub struct RunInfo {
    /// `ring` or `unequal`.
    pub data: String,
    /// `dsm`, `exact`, `sliced` or `sliced-vr`.
    pub objective: String,
    /// The step count of the checkpoint.
    pub step: u64,
    /// The noise levels of DSM (`GeometricSigmas::new(sigma_min, sigma_max, levels)`).
    pub sigma_min: f64,
    /// See `sigma_min`.
    pub sigma_max: f64,
    /// See `sigma_min`.
    pub levels: usize,
}
