//! Cost of one training step (loss, backward, gradients collected) of each objective against
//! the input dimension `d`, with the `ScoreMlp` (3 hidden layers of 128 SiLU units) and a batch
//! of 64 samples:
//!
//! - `exact`: exact score matching, `tr J` from `d` forward-mode tangents per sample;
//! - `sliced`: sliced SM-VR, one Rademacher projection, exact forward-mode JVP;
//! - `fd_sliced`: the same through `FiniteDifference` (h = 1e-3): three plain forward passes;
//! - `dsm`: multi-scale denoising score matching over 10 geometric levels (σ 1 → 0.01), the
//!   network conditioned on `ln σ`.
//!
//! ```text
//! cargo bench --bench objectives                       # every objective and dimension
//! cargo bench --bench objectives -- 'exact/784'        # one cell
//! SCOREFIELD_BENCH_BACKEND=cuda cargo bench --features cuda --bench objectives
//! ```
//!
//! Results and peak memory: `docs/objectives_benchmark.md`.

use std::hint::black_box;
use std::time::Duration;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::core::jvp::{FiniteDifference, SUGGESTED_STEP_F32};
use scorefield::nn::{Conditioning, ScoreMlp, ScoreMlpConfig};
use scorefield::objective::{
    DenoisingScoreMatching, ExactScoreMatching, Projection, SlicedScoreMatching,
};
use scorefield::random::standard_normal;
use scorefield::schedule::GeometricSigmas;
use scorefield::{LossOutput, Objective};

const DIMS: [usize; 5] = [2, 16, 64, 256, 784];
const BATCH: usize = 64;
const HIDDEN: usize = 128;

fn device() -> Device {
    let name = std::env::var("SCOREFIELD_BENCH_BACKEND").unwrap_or_else(|_| "flex".into());
    scorefield::device(&name).expect("backend compiled in").autodiff()
}

fn mlp(d: usize, conditioning: Conditioning, device: &Device) -> ScoreMlp {
    ScoreMlpConfig::new(d)
        .with_hidden(HIDDEN)
        .with_layers(3)
        .with_conditioning(conditioning)
        .with_scale_by_sigma(conditioning == Conditioning::LogSigma)
        .init(device)
}

/// One training step's forward and backward pass; the gradients are collected per parameter
/// and read back (one scalar), so that lazy backends finish the work inside the timing.
fn step(loss: impl FnOnce() -> LossOutput, model: &ScoreMlp) -> f32 {
    let out = loss();
    let value = out.loss.clone();
    let grads = GradientsParams::from_grads(out.loss.backward(), model);
    black_box(grads);
    value.into_scalar::<f32>()
}

fn objectives(c: &mut Criterion) {
    let device = device();
    let mut group = c.benchmark_group("objective_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut rng = StdRng::seed_from_u64(0);
    let sliced = SlicedScoreMatching::variance_reduced(1, Projection::Rademacher);
    let sigmas = GeometricSigmas::new(0.01, 1.0, 10).expect("valid levels");
    let dsm = DenoisingScoreMatching::multi_scale(&sigmas, 10).expect("valid levels");
    for d in DIMS {
        let x: Tensor<2> = standard_normal([BATCH, d], &device, &mut rng);
        let plain = mlp(d, Conditioning::None, &device);
        let conditioned = mlp(d, Conditioning::LogSigma, &device);
        group.bench_with_input(BenchmarkId::new("exact", d), &d, |b, _| {
            b.iter(|| {
                let loss = || ExactScoreMatching::new().loss(&plain, x.clone(), &mut rng).unwrap();
                step(loss, &plain)
            })
        });
        group.bench_with_input(BenchmarkId::new("sliced", d), &d, |b, _| {
            b.iter(|| step(|| sliced.loss(&plain, x.clone(), &mut rng).unwrap(), &plain))
        });
        group.bench_with_input(BenchmarkId::new("fd_sliced", d), &d, |b, _| {
            b.iter(|| {
                let fd = FiniteDifference::new(&plain, SUGGESTED_STEP_F32).unwrap();
                step(|| sliced.loss(&fd, x.clone(), &mut rng).unwrap(), &plain)
            })
        });
        group.bench_with_input(BenchmarkId::new("dsm", d), &d, |b, _| {
            b.iter(|| step(|| dsm.loss(&conditioned, x.clone(), &mut rng).unwrap(), &conditioned))
        });
    }
    group.finish();
}

criterion_group!(benches, objectives);
criterion_main!(benches);
