//! The examples' progress bars, and a sampler run behind one: one definition, included by
//! every example that shows a sampler's steps (`toy_2d`, `custom_sampler`, `ddpm_mnist`,
//! `mnist_ncsn`) or a long loop (`mnist_classifier`).

// Each example includes this file as its own module and uses the part it needs.
#![allow(dead_code)]

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;
use scorefield::sampler::{SampleStep, Sampler};

/// A bar over `len` steps drawn with the indicatif `template` (indicatif's default style if
/// the template does not parse).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// `sampler.sample(model, init, rng)` with `bar` following its steps (its length set to the
/// sampler's step count, its message to the step's noise level σ).
pub fn sample_with_bar<M, S: Sampler<M, D>, const D: usize>(
    bar: &ProgressBar,
    sampler: &S,
    model: &M,
    init: Tensor<D>,
    rng: &mut dyn RngCore,
) -> scorefield::Result<Tensor<D>> {
    let mut observer = |s: &SampleStep<'_, D>| {
        bar.set_length(s.total as u64);
        bar.set_position(s.step as u64 + 1);
        bar.set_message(format!("σ {:.3}", s.sigma));
        ControlFlow::Continue(())
    };
    sampler.sample(model, init, rng, &mut observer)
}
