//! Workload A of the PyTorch twins (`benches/pytorch/twin_mlp.py`): the 2-D MLP
//! `[x, ln σ] → 3×256 SiLU → 2`, output/σ (`ScoreMlp` with
//! [`Conditioning::LogSigmaInput`], 133,122 parameters).
//!
//! - `--workload train`: multi-scale denoising score matching (10 geometric σ from 1 to 0.01, a
//!   uniform level per sample, λ = σ²) on batches of 1024 drawn in turn from a pool of 16
//!   batches of N(0, I) points made at set-up; Adam (lr 1e-3, β = (0.9, 0.999), ε = 1e-8). A
//!   step is loss, `backward`, Adam update and the loss read back to the host. Default 200
//!   steps.
//! - `--workload sample`: annealed Langevin (`AnnealedLangevin::ncsn`, the same 10 levels,
//!   ε = 2e-5, no final denoising) from 10,000 N(0, I) points with the untrained network;
//!   `--steps` is the steps per level (default 100: 1,000 steps). The library's sampler also
//!   computes each step's denoised estimate and checks the state is finite (a host read-back).
//!
//! `--warmup W` runs `W` untimed training steps, or an untimed sample with `W` steps per level.
//! Prints one line: parameters, last loss (training), mean in-process seconds per step.
//!
//! ```text
//! cargo bench --bench twin_mlp -- --workload train --threads 2
//! python3 benches/pytorch/twin_mlp.py --workload train --threads 2
//! ```
//!
//! `benches/twins.sh` runs both twins of every workload in turn; results in
//! `docs/performance.md`.

#[path = "twins/common.rs"]
mod common;

/// mimalloc, keeping the memory it frees (see the module).
#[path = "../examples/common/alloc.rs"]
mod alloc;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::{Workload, parse_args, report, sample_annealed, train_dsm};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::nn::{Conditioning, ScoreMlp, ScoreMlpConfig};
use scorefield::random::standard_normal;

const DIM: usize = 2;
const HIDDEN: usize = 256;
const LAYERS: usize = 3;
const BATCH: usize = 1024;
const POOL: usize = 16;
const POINTS: usize = 10_000;
const EPS: f64 = 2e-5;

/// `[x, ln σ] → L×H → d`: `(d+1)·H + H + (L−1)·(H² + H) + H·d + d`, as the Python twin's.
fn expected_params() -> usize {
    let (d, h) = (DIM, HIDDEN);
    (d + 1) * h + h + (LAYERS - 1) * (h * h + h) + h * d + d
}

fn model(device: &Device) -> ScoreMlp {
    ScoreMlpConfig::new(DIM)
        .with_hidden(HIDDEN)
        .with_layers(LAYERS)
        .with_conditioning(Conditioning::LogSigmaInput)
        .with_scale_by_sigma(true)
        .init(device)
}

fn main() {
    let args = parse_args(
        "usage: twin_mlp --workload train|sample [--steps N] [--warmup W] [--threads T]",
        [200, 100],
    );
    let device = scorefield::device(&args.backend).expect("backend compiled in");
    let mut rng = StdRng::seed_from_u64(0);
    match args.workload {
        Workload::Train => {
            let device = device.autodiff();
            let model = model(&device);
            let params = model.num_params();
            assert_eq!(params, expected_params(), "ScoreMlp parameter count");
            let data: Tensor<2> = standard_normal([POOL * BATCH, DIM], &device, &mut rng);
            let (loss, per_step) = train_dsm(model, data, BATCH, POOL, &args);
            report("mlp", &args, params, Some(loss), per_step);
        }
        Workload::Sample => {
            let model = model(&device);
            let params = model.num_params();
            assert_eq!(params, expected_params(), "ScoreMlp parameter count");
            let init = |rng: &mut StdRng| standard_normal([POINTS, DIM], &device, rng);
            let per_step = sample_annealed(&model, EPS, init, &args, &mut rng);
            report("mlp", &args, params, None, per_step);
        }
    }
}
