//! Workload B of the PyTorch twins (`benches/pytorch/twin_unet.py`): the NCSN U-Net of
//! `NcsnUnetConfig::new()` (width 32, multipliers `[1, 2, 4]`, 8 groups; 789,153 parameters)
//! on 1×28×28 images.
//!
//! - `--workload train`: multi-scale denoising score matching (10 geometric σ from 1 to 0.01, a
//!   uniform level per sample, λ = σ²) on batches of 64 drawn in turn from a pool of 8 batches
//!   of U(0, 1) pixels made at set-up; Adam (lr 1e-3, β = (0.9, 0.999), ε = 1e-8). A step is
//!   loss, `backward`, Adam update and the loss read back to the host. Default 10 steps.
//! - `--workload sample`: annealed Langevin (`AnnealedLangevin::ncsn`, the same 10 levels,
//!   ε = 2e-5, no final denoising) on 64 U(0, 1) images with the untrained network; `--steps`
//!   is the steps per level (default 10: 100 steps). The library's sampler also computes each
//!   step's denoised estimate and checks the state is finite (a host read-back).
//!
//! `--warmup W` runs `W` untimed training steps, or an untimed sample with `W` steps per level.
//! Prints one line: parameters, last loss (training), mean in-process seconds per step.
//!
//! ```text
//! cargo bench --bench twin_unet -- --workload train --threads 2
//! python3 benches/pytorch/twin_unet.py --workload train --threads 2
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
use burn::tensor::{Device, Tensor, TensorData};
use common::{Workload, parse_args, report, sample_annealed, train_dsm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scorefield::nn::NcsnUnetConfig;

const SIDE: usize = 28;
const BATCH: usize = 64;
const POOL: usize = 8;
const EPS: f64 = 2e-5;
/// The reference configuration's parameter count (`crates/scorefield-nn/src/unet.rs`).
const PARAMS: usize = 789_153;

/// `n` images of U(0, 1) pixels, `[n, 1, 28, 28]`.
fn uniform_images(n: usize, device: &Device, rng: &mut StdRng) -> Tensor<4> {
    let pixels: Vec<f32> = (0..n * SIDE * SIDE).map(|_| rng.random::<f32>()).collect();
    Tensor::from_data(TensorData::new(pixels, [n, 1, SIDE, SIDE]), device)
}

fn main() {
    let args = parse_args(
        "usage: twin_unet --workload train|sample [--steps N] [--warmup W] [--threads T]",
        [10, 10],
    );
    let device = scorefield::device(&args.backend).expect("backend compiled in");
    let mut rng = StdRng::seed_from_u64(0);
    match args.workload {
        Workload::Train => {
            let device = device.autodiff();
            let model = NcsnUnetConfig::new().init(&device);
            let params = model.num_params();
            assert_eq!(params, PARAMS, "NcsnUnet parameter count");
            let data = uniform_images(POOL * BATCH, &device, &mut rng);
            let (loss, per_step) = train_dsm(model, data, BATCH, POOL, &args);
            report("unet", &args, params, Some(loss), per_step);
        }
        Workload::Sample => {
            let model = NcsnUnetConfig::new().init(&device);
            let params = model.num_params();
            assert_eq!(params, PARAMS, "NcsnUnet parameter count");
            let init = |rng: &mut StdRng| uniform_images(BATCH, &device, rng);
            let per_step = sample_annealed(&model, EPS, init, &args, &mut rng);
            report("unet", &args, params, None, per_step);
        }
    }
}
