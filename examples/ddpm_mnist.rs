//! DDPM on MNIST (Ho et al. 2020): an ε-prediction U-Net trained with `L_simple` on the linear
//! β schedule (`T = 1000`, β 1e-4 → 0.02), sampled with the ancestral sampler (all 1000 steps)
//! and with DDIM (50 steps, η = 0), and scored with the variational bound in bits/dim on
//! held-out digits and, when the classifier of the `mnist_classifier` example has been saved,
//! with the sample-quality report of `scorefield::eval`.
//!
//! ```text
//! cargo run --release --example mnist_classifier -- --data-dir ../shared/data/mnist  # optional
//! cargo run --release --example ddpm_mnist -- --data-dir ../shared/data/mnist
//! cargo run --release --example ddpm_mnist -- --data-dir ../shared/data/mnist --resume --steps 2400  # 2,000 more
//! ```
//!
//! The default run is a demonstration sized for a few minutes on two CPU cores: a narrow
//! U-Net (width 16, 227k parameters) and 400 steps of batch 32. That is far from a converged
//! DDPM (Ho et al. train for 800k steps); expect blurry strokes and blobs rather than clean
//! digits. `--resume` continues from the checkpoint the previous run saved, so a longer run
//! can be made in pieces; `--backend wgpu`/`cuda` (with the cargo feature) for a GPU.
//!
//! # The ε-network
//!
//! The model is `EpsilonPrediction<SigmaTilde<NcsnUnet>>`: the U-Net's raw output is the noise
//! prediction `ε̂(xₜ, t)`, and the score every sampler and the bound use is `s = −ε̂/σₜ`
//! (`scorefield::param`). [`SigmaTilde`] hands the U-Net the input `xₜ` unchanged and the
//! level `κₜ = σₜ/mₜ = √((1 − ᾱₜ)/ᾱₜ)`, the noise level of the equivalent variance-exploding
//! perturbation `xₜ/mₜ = x₀ + κₜ ε`. `ln κₜ = −½ log SNR(t)` is strictly increasing in `t`, so
//! the network is conditioned on the step `t`, through a coordinate that spreads the 1000
//! steps over `ln κ ∈ [−4.6, 5.1]` (conditioning on `ln σₜ` itself would squeeze the last 500
//! steps into `ln σ ∈ [−0.04, 0]`, where the sinusoidal embedding can hardly tell them apart).
//! The wrappers are Burn modules, so the trainer trains through them and no conversion is
//! written by hand.
//!
//! # Bits per dimension: the bookkeeping
//!
//! The pixels `p ∈ {0, …, 255}` are mapped to `x = 2p/255 − 1 ∈ [−1, 1]` without
//! dequantisation, both for training and for the bound (REFERENCES §4). The decoder term
//! `L₀ = −log p_θ(x₀ | x₁)` of [`EpsilonElbo`] is a discretised Gaussian over the 256 bins
//! `x ± 1/255` whose centres are exactly these `x`, the end bins open to ±∞: it is a
//! probability mass on the 8-bit pixels, not a density. The bound therefore bounds the
//! discrete negative log-likelihood `−log₂ P(p)/D` of the 8-bit image directly, in the same
//! units as a continuous model's dequantised bits/dim, and needs no offset: no `+8` for the
//! 256 bins of `[0, 1]`, no `+1` for the map to `[−1, 1]` (those offsets convert a density
//! on a rescaled, dequantised image into a mass on the bins, which the decoder already is).
//! `D = 784` dimensions per digit.
//!
//! `L = L_T + Σ_{t=2}^{T} L_{t−1} + L₀` is computed for each held-out digit with one model
//! call per step (`t = 1..=T`, each on a fresh `xₜ ~ q(xₜ | x₀)`): a single-sample Monte-Carlo
//! estimate of each KL's expectation over `xₜ`, unbiased for the bound. The reverse variance
//! is `σₜ² = βₜ` (DDPM's fixed-large choice).

#[path = "common/cli.rs"]
mod cli;

#[path = "common/mnist_args.rs"]
mod mnist_args;
#[path = "common/progress.rs"]
mod progress;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Tensor;
use clap::Parser;
use indicatif::ProgressBar;
use mnist_args::MnistArgs;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use scorefield::Sampler;
use scorefield::data::image::grid;
use scorefield::data::mnist::Mnist;
use scorefield::eval::{self, MnistClassifier, QualityReport};
use scorefield::nn::{
    Checkpoints, EpsilonPredictionConfig, FitError, NcsnUnet, NcsnUnetConfig, Progress,
    SigmaTildeConfig, StepReport, Trainer, TrainerConfig,
};
use scorefield::objective::{EpsilonElbo, ModelVariance};
use scorefield::param::{EpsilonPrediction, SigmaTilde};
use scorefield::random::standard_normal;
use scorefield::sampler::{Ddim, DdpmAncestral, DdpmVariance};
use scorefield::schedule::{BetaSchedule, Ddpm};

/// Command-line options.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    mnist: MnistArgs,
    /// Where to write the sample grids and the checkpoint.
    #[arg(long, default_value = "out/ddpm_mnist")]
    out: PathBuf,
    /// Training steps in all (with --resume, the run continues to this total).
    #[arg(long, default_value_t = 400)]
    steps: u64,
    /// The seed of the training run, of the samples and of the bound's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Digits per training step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// The U-Net's base width (32 is the NCSN reference; 16 keeps the demonstration short).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Adam's learning rate (after the warm-up).
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Linear learning-rate warm-up, in steps.
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    /// EMA decay of the weights sampled from (DDPM uses 0.9999 over 800k steps; a short run
    /// needs a short memory).
    #[arg(long, default_value_t = 0.99)]
    ema_decay: f64,
    /// Continue from the checkpoint in <out>/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Samples drawn with the ancestral sampler (1000 network calls each; 0 skips it).
    #[arg(long, default_value_t = 16)]
    ancestral_samples: usize,
    /// Samples drawn with DDIM (at least 1).
    #[arg(long, default_value_t = 64)]
    ddim_samples: usize,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    ddim_steps: usize,
    /// Held-out digits the variational bound is computed on (1000 network calls per batch;
    /// 0 skips it).
    #[arg(long, default_value_t = 16)]
    bpd_digits: usize,
    /// The directory of the classifier saved by the mnist_classifier example.
    #[arg(long, default_value = "out/mnist_classifier")]
    classifier: PathBuf,
}

/// The ε-prediction U-Net of the example (see its docs): `ε̂ = F(xₜ, ln σ̃ₜ)`,
/// `s = −ε̂/σₜ`, trained and sampled as one Burn module.
type EpsilonUnet = EpsilonPrediction<SigmaTilde<NcsnUnet>>;

/// `[0, 1] → [−1, 1]`.
fn to_model_range(x: Tensor<4>) -> Tensor<4> {
    x.mul_scalar(2.0).sub_scalar(1.0)
}

/// `[−1, 1] → [0, 1]`.
fn to_unit_range(x: Tensor<4>) -> Tensor<4> {
    x.add_scalar(1.0).div_scalar(2.0)
}

/// A bar over `len` steps labelled `prefix`.
fn bar(len: u64, prefix: &str) -> ProgressBar {
    progress::bar(
        len,
        "{prefix:>10} {bar:32} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
    )
    .with_prefix(prefix.to_string())
}

/// Runs a sampler from `x_T ~ N(0, I)` with a progress bar; returns the samples in [0, 1].
fn draw<S: Sampler<EpsilonUnet, 4>>(
    name: &'static str,
    sampler: &S,
    model: &EpsilonUnet,
    n: usize,
    rng: &mut StdRng,
    device: &burn::tensor::Device,
) -> scorefield::Result<Tensor<4>> {
    let init = standard_normal([n, 1, 28, 28], device, rng);
    let progress = bar(0, name);
    let x = progress::sample_with_bar(&progress, sampler, model, init, rng)?;
    progress.finish();
    Ok(to_unit_range(x))
}

fn save_grid(images: Tensor<4>, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let n = images.dims()[0];
    let columns = (n as f64).sqrt().ceil() as usize;
    grid(images, columns)?.save(path)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "common/alloc.rs"]
mod alloc;

fn main() -> std::process::ExitCode {
    cli::exit_code(run())
}

fn run() -> cli::AnyResult<()> {
    let args = Args::parse();
    if args.ddim_samples == 0 {
        return Err("--ddim-samples must be at least 1".into());
    }
    let (device, dir, data) = args.mnist.open()?;
    // The last 2,000 digits are held out: the bound is measured on them and they are the
    // reference of the quality report (on the test split, the classifier's held-out digits).
    let held_out_len = eval::CLASSIFIER_HELD_OUT.len();
    if data.len() <= held_out_len {
        return Err(format!("need more than {held_out_len} digits, found {}", data.len()).into());
    }
    let split = data.len() - held_out_len;
    let held_out: Vec<usize> = (split..data.len()).collect();
    println!(
        "MNIST {:?} split from {}: training on digits 0..{split}, holding out {split}..{}",
        data.split,
        dir.display(),
        data.len()
    );

    let ddpm = Ddpm::new(BetaSchedule::linear(), 1000)?;
    let checkpoint = args.out.join("checkpoint");
    // The parameterisation is part of the configuration: a checkpoint of another one (this
    // example's before it used `scorefield::param`) is refused by name, not misread.
    type Config = EpsilonPredictionConfig<SigmaTildeConfig<NcsnUnetConfig>>;
    let mut trainer = if args.resume {
        let (trainer, _) = Trainer::resume::<Config>(&checkpoint, &device)?;
        println!("resumed from {} at step {}", checkpoint.display(), trainer.steps());
        trainer
    } else {
        let config = TrainerConfig::new()
            .with_learning_rate(args.learning_rate)
            .with_warmup_steps(args.warmup)
            .with_grad_clip_norm(Some(1.0))
            .with_ema_decay(args.ema_decay)
            .with_batch_size(args.batch_size)
            .with_seed(args.seed);
        let unet = NcsnUnetConfig::new().with_width(args.width);
        Trainer::from_config(&Config::new(SigmaTildeConfig::new(unet)), config, &device)?
    };
    println!(
        "ε-U-Net of width {} ({} parameters); {}",
        args.width,
        trainer.model().num_params(),
        trainer.config()
    );

    // Training: L_simple = E ‖ε − ε_θ(xₜ, t)‖²/d, t ~ U{1..T}, batches drawn from the
    // trainer's own stream so that a resumed run continues bit for bit.
    let objective = EpsilonElbo::simple(ddpm.clone());
    let batch_size = trainer.config().batch_size;
    let batch = |rng: &mut StdRng| {
        let picks: Vec<usize> = sample(rng, split, batch_size).into_iter().collect();
        data.images(&picks, &device).map(to_model_range)
    };
    let mut progress = Progress::new("training", trainer.steps(), args.steps);
    let shown = progress.clone();
    let mut window = Vec::new();
    let mut print =
        |t: &Trainer<EpsilonUnet>, r: &StepReport| -> Result<ControlFlow<()>, FitError> {
            window.push(r.loss);
            if t.steps().is_multiple_of(100) {
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                shown.println(format!("step {:>6}: mean L_simple {mean:.4}", t.steps()));
                window.clear();
            }
            Ok(ControlFlow::Continue(()))
        };
    let mut saves = Checkpoints::new(&checkpoint, 0); // at the end
    let summary =
        trainer.fit(&objective, args.steps, batch, &mut [&mut progress, &mut print, &mut saves])?;
    if summary.steps > 0 {
        println!(
            "trained {} steps in {:.1} s ({:.2} s/step)",
            summary.steps,
            summary.seconds,
            summary.seconds / summary.steps as f64
        );
    }
    if let Some(path) = saves.last() {
        println!("checkpoint {}", path.display());
    }

    let model = trainer.ema().clone();
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed_5a3e);
    let reference = data.images(&held_out, &device)?;
    save_grid(reference.clone().narrow(0, 0, 64.min(held_out.len())), &args.out.join("data.png"))?;

    let start = Instant::now();
    let ddim = Ddim::new(ddpm.clone(), args.ddim_steps, 0.0)?.with_clip(-1.0, 1.0)?;
    let ddim_samples = draw("DDIM", &ddim, &model, args.ddim_samples, &mut rng, &device)?;
    println!("DDIM: {} samples in {:.1} s", args.ddim_samples, start.elapsed().as_secs_f64());
    save_grid(ddim_samples.clone(), &args.out.join("samples_ddim.png"))?;

    let ancestral_samples = if args.ancestral_samples > 0 {
        let start = Instant::now();
        let ancestral =
            DdpmAncestral::new(ddpm.clone(), DdpmVariance::Beta).with_clip(-1.0, 1.0)?;
        let n = args.ancestral_samples;
        let samples = draw("ancestral", &ancestral, &model, n, &mut rng, &device)?;
        println!("ancestral: {n} samples in {:.1} s", start.elapsed().as_secs_f64());
        save_grid(samples.clone(), &args.out.join("samples_ancestral.png"))?;
        Some(samples)
    } else {
        None
    };

    if args.bpd_digits > 0 {
        bound(&ddpm, &model, &data, &held_out[..args.bpd_digits.min(held_out.len())], &mut rng)?;
    }

    match MnistClassifier::load(&args.classifier, &device) {
        Ok(classifier) => {
            let report = |name: &str, r: QualityReport| println!("quality of the {name}: {r}");
            report("DDIM samples", eval::evaluate(&classifier, ddim_samples, reference.clone())?);
            if let Some(samples) = ancestral_samples.filter(|s| s.dims()[0] >= 2) {
                report("ancestral samples", eval::evaluate(&classifier, samples, reference)?);
            }
            println!(
                "(calibrate with `cargo run --release --example sample_quality`: real digits \
                 against real digits of the same counts, and noise)"
            );
        }
        Err(e) => println!(
            "no quality report: {e}\n(train the classifier with `cargo run --release --example \
             mnist_classifier`)"
        ),
    }
    Ok(())
}

/// The variational bound `L = L_T + Σ_{t≥2} L_{t−1} + L₀` in bits/dim on the digits `indices`
/// (see the example's docs), printed with its parts.
fn bound(
    ddpm: &Ddpm,
    model: &EpsilonUnet,
    data: &Mnist,
    indices: &[usize],
    rng: &mut StdRng,
) -> Result<(), Box<dyn std::error::Error>> {
    let device = model.devices()[0].clone();
    let elbo = EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta);
    let n = indices.len();
    // Exactly 2p/255 − 1: the centres of the decoder's bins.
    let x0 = to_model_range(data.images(indices, &device)?);
    let host = |t: Tensor<1>| t.try_into_vec_as::<f64>().expect("readback");
    let prior = host(elbo.prior_term(x0.clone())?);
    let (mut decoder, mut steps) = (vec![0.0; n], vec![0.0; n]);
    let progress = bar(ddpm.steps() as u64, "bound");
    let start = Instant::now();
    for t in 1..=ddpm.steps() {
        let term = host(elbo.step_term(model, x0.clone(), &vec![t; n], rng)?);
        let target = if t == 1 { &mut decoder } else { &mut steps };
        target.iter_mut().zip(&term).for_each(|(a, b)| *a += b);
        progress.inc(1);
    }
    progress.finish();
    let total: Vec<f64> = (0..n).map(|i| prior[i] + decoder[i] + steps[i]).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let m = mean(&total);
    let se = if n > 1 {
        (total.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / ((n - 1) * n) as f64).sqrt()
    } else {
        f64::NAN
    };
    println!(
        "variational bound on {n} held-out digits: {m:.3} ± {se:.3} bits/dim (L_T {:.2e}, \
         Σ L_(t−1) for t = 2..1000 {:.3}, decoder L₀ {:.3}; {:.1} s)",
        mean(&prior),
        mean(&steps),
        mean(&decoder),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
