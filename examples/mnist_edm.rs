//! EDM on MNIST (Karras et al. 2022): the NCSN U-Net of `mnist_ncsn` behind EDM's
//! preconditioning, trained with EDM's loss, sampled in few steps on EDM's σ grid with the
//! deterministic Heun, DPM-Solver++ 2M and UniPC and the stochastic DPM-Solver++ 2M SDE, Euler
//! ancestral and Heun with churn; a grid PNG and a quality table per sampler and number of
//! network evaluations (NFE).
//!
//! ```text
//! cargo run --release --example mnist_classifier -- --data-dir ../shared/data/mnist  # once, for the table
//! cargo run --release --example mnist_edm -- --data-dir ../shared/data/mnist
//! cargo run --release --example mnist_edm -- --data-dir ../shared/data/mnist --sample-only
//! cargo run --release --example mnist_edm -- --data-dir ../shared/data/mnist --steps 5000 --resume  # 2,500 more
//! ```
//!
//! - Data: pixels in `[−1, 1]` (`2x − 1` of the dequantised `[0, 1]` digits), `σ_data = 0.5` as
//!   EDM.
//! - Model: `Preconditioned<NcsnUnet>`: `D(x; σ) = c_skip·x + c_out·F(c_in·x; ¼ ln σ)`, the
//!   U-Net's raw output as `F` (width 16 by default, as `mnist_ncsn`'s default).
//! - Loss: `ln σ ~ N(−1.2, 1.2²)`, EDM's weighting (`DenoisingScoreMatching::edm`).
//! - Training: the default is sized like `mnist_ncsn`'s (batch 32, 2,500 steps, Adam 10⁻³,
//!   EMA 0.99), so the two can be compared at equal training cost.
//! - Sampling: from `σ_max = 80` to `σ_min = 0.002` on EDM's grid (ρ = 7) and a final 0,
//!   64 digits each with the same per-sample noise.
//!
//! Written under `--out` (default `out/mnist_edm`): `samples-<sampler>-<nfe>.png`,
//! `quality.txt` (when the `mnist_classifier` example's classifier is saved) and `checkpoint/`.

#[path = "common/cli.rs"]
mod cli;

use cli::AnyResult;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use clap::Parser;
use rand::Rng;
use rand::rngs::StdRng;
use scorefield::data::mnist::{Mnist, MnistError};
use scorefield::eval::{self, MnistClassifier};
use scorefield::nn::{
    CheckpointError, Checkpoints, ModelConfig, NcsnUnet, NcsnUnetConfig, PreconditionedConfig,
    Progress, Trainer, TrainerConfig, read_checkpoint,
};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::param::Preconditioned;
use scorefield::sampler::{
    DpmSolverPp2M, DpmSolverPp2MSde, Driver, EulerAncestral, Grid, Heun, PerSampleNoise, Step,
    UniPc, karras_sigmas,
};
use scorefield::schedule::Karras;

#[path = "common/mnist_args.rs"]
mod mnist_args;

/// EDM's `σ_data`.
const SIGMA_DATA: f64 = 0.5;

/// Train an EDM-preconditioned U-Net on MNIST and sample it with few-step solvers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    mnist: mnist_args::MnistArgs,
    /// Output directory: samples, quality.txt, checkpoint/.
    #[arg(long, default_value = "out/mnist_edm")]
    out: PathBuf,
    /// Seed of the weights, the batches, the loss noise and the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps in all (with --resume, the run continues to this total).
    #[arg(long, default_value_t = 2_500)]
    steps: u64,
    /// Continue training from the checkpoint in --out.
    #[arg(long, conflicts_with = "sample_only")]
    resume: bool,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// EMA decay of the weights sampled from.
    #[arg(long, default_value_t = 0.99)]
    ema_decay: f64,
    /// The U-Net's base width (a multiple of 8).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Digits drawn per sampler and NFE.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Load the checkpoint in --out and only sample.
    #[arg(long)]
    sample_only: bool,
    /// The classifier saved by the `mnist_classifier` example, for the quality table.
    #[arg(long, default_value = "out/mnist_classifier")]
    classifier: PathBuf,
}

type Model = Preconditioned<NcsnUnet>;

/// mimalloc, keeping the memory it frees (see the module).
#[path = "common/alloc.rs"]
mod alloc;

fn main() -> ExitCode {
    cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> AnyResult<()> {
    let (device, dir, data) = args.mnist.open()?;
    println!("MNIST: {} images from {}; output: {}", data.len(), dir.display(), args.out.display());
    let checkpoints = args.out.join("checkpoint");
    let trainer = if args.sample_only {
        load(&checkpoints, &device)?
    } else {
        let trainer = if args.resume { Some(load(&checkpoints, &device)?) } else { None };
        train(&args, trainer, &data, &device)?
    };
    sample_all(&args, trainer.ema(), &data, &device)
}

/// Trains from scratch, or continues `resumed`, to `args.steps` steps in all.
fn train(
    args: &Args,
    resumed: Option<Trainer<Model>>,
    data: &Mnist,
    device: &Device,
) -> AnyResult<Trainer<Model>> {
    let mut trainer = match resumed {
        Some(trainer) => trainer,
        None => {
            device.seed(args.seed);
            let unet = NcsnUnetConfig::new().with_width(args.width);
            let model_config = PreconditionedConfig::new(unet, SIGMA_DATA)?;
            let config = TrainerConfig::new()
                .with_learning_rate(args.lr)
                .with_ema_decay(args.ema_decay)
                .with_batch_size(args.batch_size)
                .with_seed(args.seed);
            Trainer::from_config(&model_config, config, device)?
        }
    };
    let objective = DenoisingScoreMatching::edm(-1.2, 1.2, SIGMA_DATA)?;
    let batch_size = trainer.config().batch_size; // the checkpoint's, when resumed
    println!(
        "EDM-preconditioned NCSN U-Net, {} parameters; {} steps of batch {batch_size}",
        burn::module::Module::num_params(trainer.model()),
        args.steps,
    );
    let batch = |rng: &mut StdRng| {
        let indices: Vec<usize> =
            (0..batch_size).map(|_| rng.random_range(0..data.len())).collect();
        Ok::<_, MnistError>(data.batch(&indices, device, rng)?.mul_scalar(2.0).sub_scalar(1.0))
    };
    let mut progress = Progress::new("train", trainer.steps(), args.steps);
    let mut checkpoint = Checkpoints::new(args.out.join("checkpoint"), 0); // at the end
    let summary =
        trainer.fit(&objective, args.steps, batch, &mut [&mut progress, &mut checkpoint])?;
    println!(
        "trained {} steps in {:.1} s ({:.3} s/step)",
        summary.steps,
        summary.seconds,
        summary.seconds / summary.steps.max(1) as f64
    );
    if let Some(path) = checkpoint.last() {
        println!("checkpoint: {}", path.display());
    }
    Ok(trainer)
}

fn load(dir: &Path, device: &Device) -> AnyResult<Trainer<Model>> {
    let trainer = match Trainer::resume::<PreconditionedConfig<NcsnUnetConfig>>(dir, device) {
        Ok((trainer, _)) => trainer,
        // This example's first checkpoints stored the bare U-Net's configuration (the
        // preconditioning, with σ_data = 0.5, was implied): still readable.
        Err(CheckpointError::Mismatch { what: "model config", .. }) => {
            let json = read_checkpoint(dir)?.model_config;
            let unet = NcsnUnetConfig::from_json(&json)?;
            Trainer::load(dir, Preconditioned::new(unet.init(device), SIGMA_DATA)?, &json)?
        }
        Err(e) => return Err(e.into()),
    };
    println!("loaded the checkpoint of step {} from {}", trainer.steps(), dir.display());
    Ok(trainer)
}

/// `n` levels of EDM's grid (σ 80 → 0.002, ρ = 7) and a final 0.
fn edm_grid(n: usize) -> AnyResult<Grid> {
    Ok(Grid::from_sigmas(Karras::edm(), &karras_sigmas(n, 0.002, 80.0, 7.0)?)?.with_zero())
}

/// Every sampler at a few budgets: `(name, levels)`; NFE follows from the solver.
fn sample_all(args: &Args, model: &Model, data: &Mnist, device: &Device) -> AnyResult<()> {
    let classifier = match MnistClassifier::load(&args.classifier, device) {
        Ok(c) => Some(c),
        Err(e) => {
            println!(
                "no quality table: {e}\n(train the classifier once: cargo run --release --example mnist_classifier)"
            );
            None
        }
    };
    let reference_len = eval::CLASSIFIER_HELD_OUT.len().min(data.len());
    let reference: Vec<usize> = (data.len() - reference_len..data.len()).collect();
    let reference = data.images(&reference, device)?;
    let mut table = String::from(
        "sampler | NFE | confident | Fréchet | seconds\n--- | ---: | ---: | ---: | ---:\n",
    );
    let mut row = |name: &str, nfe: usize, x: Tensor<4>, seconds: f64| -> AnyResult<()> {
        let images = x.add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0);
        let file = args
            .out
            .join(format!("samples-{}-{nfe}.png", name.to_lowercase().replace([' ', '+'], "")));
        scorefield::data::image::grid(images.clone(), 8)?.save(&file)?;
        let line = match &classifier {
            Some(c) => {
                let r = eval::evaluate(c, images, reference.clone())?;
                format!(
                    "{name} | {nfe} | {:.1} % | {:.1} | {seconds:.1}\n",
                    100.0 * r.confident_share,
                    r.frechet_distance
                )
            }
            None => format!("{name} | {nfe} | – | – | {seconds:.1}\n"),
        };
        print!("{line}");
        table.push_str(&line);
        Ok(())
    };
    for levels in [3, 6, 10, 18] {
        let (x, nfe, s) = sample(model, Heun::default(), edm_grid(levels)?, args, device)?;
        row("Heun", nfe, x, s)?;
    }
    for levels in [5, 10, 20] {
        let (x, nfe, s) = sample(model, DpmSolverPp2M, edm_grid(levels)?, args, device)?;
        row("DPM-Solver++ 2M", nfe, x, s)?;
    }
    for levels in [5, 10] {
        let (x, nfe, s) = sample(model, UniPc::default(), edm_grid(levels)?, args, device)?;
        row("UniPC", nfe, x, s)?;
    }
    // The stochastic solvers: their fresh noise corrects part of the model's error.
    for levels in [10, 20, 35] {
        let step = DpmSolverPp2MSde::default();
        let (x, nfe, s) = sample(model, step, edm_grid(levels)?, args, device)?;
        row("DPM-Solver++ 2M SDE", nfe, x, s)?;
    }
    let (x, nfe, s) = sample(model, EulerAncestral::default(), edm_grid(35)?, args, device)?;
    row("Euler ancestral", nfe, x, s)?;
    {
        let levels = 18;
        // EDM's stochastic sampler with its ImageNet-64 settings (Table 5).
        let step = Heun::with_churn(40.0, 0.05, 50.0, 1.003)?;
        let (x, nfe, s) = sample(model, step, edm_grid(levels)?, args, device)?;
        row("Heun churn 40", nfe, x, s)?;
    }
    let path = args.out.join("quality.txt");
    scorefield::data::image::write_atomically(&path, table.as_bytes())?;
    println!("table: {}", path.display());
    Ok(())
}

/// `args.samples` digits with `step` on `grid`, from the same per-sample noise; returns them,
/// the evaluations and the seconds taken.
fn sample<St: Step<4>>(
    model: &Model,
    step: St,
    grid: Grid,
    args: &Args,
    device: &Device,
) -> AnyResult<(Tensor<4>, usize, f64)> {
    let started = Instant::now();
    let driver = Driver::new(step, grid);
    let mut noise = PerSampleNoise::new(args.seed, args.samples);
    let init = driver.prior_sample([args.samples, 1, 28, 28], device, &mut noise)?;
    let out = driver.run(model, init, &mut noise, &mut ())?;
    Ok((out.x, out.evaluations, started.elapsed().as_secs_f64()))
}
