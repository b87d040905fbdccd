//! Class-conditional MNIST with classifier-free guidance, and inpainting: the EDM-preconditioned
//! NCSN U-Net of `mnist_edm` with a class embedding (ten digits and a null class), trained with
//! label dropout so one network is both `s(x | y)` and `s(x | ∅)`; sampled for each digit at
//! several guidance weights, and used to complete digits whose lower half is hidden.
//!
//! ```text
//! cargo run --release --example mnist_classifier -- --data-dir ../shared/data/mnist  # once, for the tables
//! cargo run --release --example mnist_guided -- --data-dir ../shared/data/mnist
//! cargo run --release --example mnist_guided -- --data-dir ../shared/data/mnist --sample-only --weights 0,1,2,3
//! ```
//!
//! - Data: the digits outside the classifier's held-out range, pixels in `[−1, 1]`,
//!   `σ_data = 0.5`; the held-out digits are the Fréchet reference and the digits inpainted.
//! - Model: `Preconditioned<NcsnUnet>` with `classes = 10` (width 16 by default); labels
//!   dropped to `∅` with probability `--label-dropout` during training (Ho & Salimans 2022).
//! - Sampling: DPM-Solver++ 2M SDE on EDM's grid, `s_w = s(x | ∅) + w·(s(x | y) − s(x | ∅))`
//!   ([`ClassifierFree`]); `w = 0` is the unconditional model, `w = 1` the conditional one.
//! - Inpainting: the lower 14 rows of held-out digits unknown, completed by the null-class
//!   (unconditional) model with replacement and with RePaint's resampling ([`Inpaint`])
//!   around Euler ancestral steps (RePaint around the multistep DPM-Solver++ 2M SDE left
//!   speckle in the completions).
//!
//! Written under `--out` (default `out/mnist_guided`): `guided-w<w>.png` (10 × 10, row `k`
//! asked for digit `k`), `inpaint-<method>.png` (per row: the digit, its visible half, the
//! completions), `quality.txt` (the tables) and `checkpoint/`.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/mnist_args.rs"]
mod mnist_args;

use cli::AnyResult;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor};
use clap::Parser;
use rand::Rng;
use rand::rngs::StdRng;
use scorefield::condition::{ClassifierFree, Given, Labels};
use scorefield::data::mnist::{Mnist, MnistError};
use scorefield::eval::{self, MnistClassifier};
use scorefield::nn::{
    Checkpoints, NcsnUnet, NcsnUnetConfig, PreconditionedConfig, Progress, Trainer, TrainerConfig,
};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::param::Preconditioned;
use scorefield::sampler::{
    DpmSolverPp2MSde, Driver, EulerAncestral, Grid, Inpaint, PerSampleNoise, karras_sigmas,
};
use scorefield::schedule::Karras;

/// EDM's `σ_data`.
const SIGMA_DATA: f64 = 0.5;
/// The ten digits.
const CLASSES: usize = 10;

/// Train a class-conditional U-Net on MNIST; sample it with classifier-free guidance; inpaint.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    mnist: mnist_args::MnistArgs,
    /// Output directory: PNGs, quality.txt, checkpoint/.
    #[arg(long, default_value = "out/mnist_guided")]
    out: PathBuf,
    /// Seed of the weights, the batches, the label dropout, the loss noise and the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps in all (with --resume, the run continues to this total).
    #[arg(long, default_value_t = 2_500)]
    steps: u64,
    /// Continue training from the checkpoint in --out.
    #[arg(long, conflicts_with = "sample_only")]
    resume: bool,
    /// Load the checkpoint in --out and only sample.
    #[arg(long)]
    sample_only: bool,
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
    /// The probability that a training label is replaced by the null class.
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    /// Guidance weights to sample at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    weights: Vec<f64>,
    /// Levels of EDM's σ grid (σ 80 → 0.002) for the DPM-Solver++ 2M SDE.
    #[arg(long, default_value_t = 20)]
    levels: usize,
    /// Digits drawn per class and weight (a 10 × n grid).
    #[arg(long, default_value_t = 10)]
    per_class: usize,
    /// Held-out digits inpainted (the first of each class, cycling through the classes).
    #[arg(long, default_value_t = 10)]
    inpaint_digits: usize,
    /// Completions per inpainted digit.
    #[arg(long, default_value_t = 6)]
    completions: usize,
    /// RePaint's passes per level (1 would be replacement).
    #[arg(long, default_value_t = 5)]
    resamples: usize,
    /// The classifier saved by the `mnist_classifier` example, for the tables.
    #[arg(long, default_value = "out/mnist_classifier")]
    classifier: PathBuf,
}

type Model = Preconditioned<NcsnUnet>;
/// Why a training batch could not be drawn.
type BatchError = Box<dyn std::error::Error + Send + Sync>;
type Config = PreconditionedConfig<NcsnUnetConfig>;

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
    let trainer = if args.sample_only || args.resume {
        let (trainer, _) = Trainer::resume::<Config>(&checkpoints, &device)?;
        println!(
            "loaded the checkpoint of step {} from {}",
            trainer.steps(),
            checkpoints.display()
        );
        trainer
    } else {
        device.seed(args.seed);
        let unet = NcsnUnetConfig::new().with_width(args.width).with_classes(Some(CLASSES));
        let config = TrainerConfig::new()
            .with_learning_rate(args.lr)
            .with_ema_decay(args.ema_decay)
            .with_batch_size(args.batch_size)
            .with_seed(args.seed);
        Trainer::from_config(&PreconditionedConfig::new(unet, SIGMA_DATA)?, config, &device)?
    };
    let trainer = if args.sample_only { trainer } else { train(&args, trainer, &data, &device)? };
    let classifier = match MnistClassifier::load(&args.classifier, &device) {
        Ok(c) => Some(c),
        Err(e) => {
            println!(
                "no quality tables: {e}\n(train the classifier once: cargo run --release --example mnist_classifier)"
            );
            None
        }
    };
    let held_out: Vec<usize> = eval::CLASSIFIER_HELD_OUT.filter(|&i| i < data.len()).collect();
    let mut report = guided(&args, trainer.ema(), classifier.as_ref(), &data, &held_out, &device)?;
    report += &inpaint(&args, trainer.ema(), classifier.as_ref(), &data, &held_out, &device)?;
    let path = args.out.join("quality.txt");
    scorefield::data::image::write_atomically(&path, report.as_bytes())?;
    println!("tables: {}", path.display());
    Ok(())
}

/// Trains to `args.steps` steps in all on the digits outside the held-out range, each batch
/// with its labels, a share `--label-dropout` of them replaced by the null class.
fn train(
    args: &Args,
    mut trainer: Trainer<Model>,
    data: &Mnist,
    device: &Device,
) -> AnyResult<Trainer<Model>> {
    let train_len = eval::CLASSIFIER_HELD_OUT.start.min(data.len());
    let objective = DenoisingScoreMatching::edm(-1.2, 1.2, SIGMA_DATA)?;
    let batch_size = trainer.config().batch_size; // the checkpoint's, when resumed
    println!(
        "class-conditional EDM U-Net, {} parameters; {} steps of batch {batch_size}",
        burn::module::Module::num_params(trainer.model()),
        args.steps
    );
    let batch = |rng: &mut StdRng| -> Result<(Tensor<4>, Labels), BatchError> {
        let indices: Vec<usize> = (0..batch_size).map(|_| rng.random_range(0..train_len)).collect();
        let x = data.batch(&indices, device, rng)?.mul_scalar(2.0).sub_scalar(1.0);
        let labels = data.labels_of(&indices)?.into_iter().map(|y| Some(usize::from(y))).collect();
        Ok((x, Labels::new(labels, CLASSES)?.dropout(args.label_dropout, rng)?))
    };
    let mut progress = Progress::new("train", trainer.steps(), args.steps);
    let mut checkpoint = Checkpoints::new(args.out.join("checkpoint"), 500);
    let summary =
        trainer.fit(&objective, args.steps, batch, &mut [&mut progress, &mut checkpoint])?;
    println!(
        "trained {} steps in {:.1} s ({:.3} s/step)",
        summary.steps,
        summary.seconds,
        summary.seconds / summary.steps.max(1) as f64
    );
    Ok(trainer)
}

/// EDM's grid of `n` levels (σ 80 → 0.002, ρ = 7) and a final 0.
fn edm_grid(n: usize) -> AnyResult<Grid> {
    Ok(Grid::from_sigmas(Karras::edm(), &karras_sigmas(n, 0.002, 80.0, 7.0)?)?.with_zero())
}

/// Pixels in `[0, 1]` from the model's `[−1, 1]`.
fn to_unit(x: Tensor<4>) -> Tensor<4> {
    x.add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0)
}

/// Row `k` of a grid asks for digit `k`: per weight a PNG and a table row (accuracy on the
/// asked digit, confident share, Fréchet distance to the held-out digits).
fn guided(
    args: &Args,
    model: &Model,
    classifier: Option<&MnistClassifier>,
    data: &Mnist,
    held_out: &[usize],
    device: &Device,
) -> AnyResult<String> {
    let n = CLASSES * args.per_class;
    let asked: Vec<usize> = (0..n).map(|i| i / args.per_class).collect();
    let labels = Labels::new(asked.iter().map(|&y| Some(y)).collect(), CLASSES)?;
    let reference = data.images(held_out, device)?;
    let mut table = format!(
        "classifier-free guidance, DPM-Solver++ 2M SDE, {} levels, {n} digits per weight\n\n\
         weight | asked digit | confident | Fréchet | seconds\n--- | ---: | ---: | ---: | ---:\n",
        args.levels
    );
    for &w in &args.weights {
        let started = Instant::now();
        let model = Given::new(ClassifierFree::new(model, w)?, labels.clone())?;
        let driver = Driver::new(DpmSolverPp2MSde::default(), edm_grid(args.levels)?);
        let mut noise = PerSampleNoise::new(args.seed, n);
        let init = driver.prior_sample([n, 1, 28, 28], device, &mut noise)?;
        let images = to_unit(driver.run(&model, init, &mut noise, &mut ())?.x);
        let seconds = started.elapsed().as_secs_f64();
        let file = args.out.join(format!("guided-w{w}.png"));
        scorefield::data::image::grid(images.clone(), args.per_class)?.save(&file)?;
        let line = match classifier {
            Some(c) => {
                let agreement = eval::label_agreement(c, images.clone(), &asked)?;
                let r = eval::evaluate(c, images, reference.clone())?;
                format!(
                    "{w} | {:.1} % | {:.1} % | {:.1} | {seconds:.1}\n",
                    100.0 * agreement,
                    100.0 * r.confident_share,
                    r.frechet_distance
                )
            }
            None => format!("{w} | – | – | – | {seconds:.1}\n"),
        };
        print!("{line}");
        table.push_str(&line);
    }
    Ok(table)
}

/// Completes the lower half of held-out digits with the null-class model, by replacement
/// and by RePaint; a PNG and a table row each (the share of completions the classifier
/// labels as the original digit).
fn inpaint(
    args: &Args,
    model: &Model,
    classifier: Option<&MnistClassifier>,
    data: &Mnist,
    held_out: &[usize],
    device: &Device,
) -> AnyResult<String> {
    let digits = pick_digits(data, held_out, args.inpaint_digits)?;
    let labels: Vec<usize> = data.labels_of(&digits)?.into_iter().map(usize::from).collect();
    let originals = data.images(&digits, device)?; // [0, 1]
    let (k, c) = (digits.len(), args.completions);
    // Each digit repeated `c` times in place, in the model's [−1, 1].
    let known = originals.clone().mul_scalar(2.0).sub_scalar(1.0).repeat_dim(1, c).reshape([
        k * c,
        1,
        28,
        28,
    ]);
    let rows = Tensor::<1, Int>::arange(0..28, device).float().reshape([1, 1, 28, 1]);
    let mask = rows.lower_elem(14.0).float().expand([k * c, 1, 28, 28]); // 1: known (upper half)
    let asked: Vec<usize> = labels.iter().flat_map(|&y| vec![y; c]).collect();
    let null = Given::new(model, Labels::null(k * c, CLASSES)?)?;
    let mut table = format!(
        "\ninpainting: the lower 14 rows of {k} held-out digits, {c} completions each, \
         null-class model, Euler ancestral, {} levels\n\n\
         method | completions labelled as the original | seconds\n--- | ---: | ---:\n",
        args.levels
    );
    let visible = originals
        .clone()
        .mul(mask.clone().narrow(0, 0, k))
        .add(mask.clone().narrow(0, 0, k).neg().add_scalar(1.0).mul_scalar(0.5));
    for (name, resamples) in [("replacement", 1), ("RePaint", args.resamples)] {
        let started = Instant::now();
        let step = Inpaint::new(EulerAncestral::default(), known.clone(), mask.clone())?
            .with_resampling(resamples, 1)?;
        let driver = Driver::new(step, edm_grid(args.levels)?);
        let mut noise = PerSampleNoise::new(args.seed + 1, k * c);
        let init = driver.prior_sample([k * c, 1, 28, 28], device, &mut noise)?;
        let completed = to_unit(driver.run(&null, init, &mut noise, &mut ())?.x);
        let seconds = started.elapsed().as_secs_f64();
        // Per row: the original, its visible half (the hidden half grey), the completions.
        let grid = Tensor::cat(
            vec![
                originals.clone().reshape([k, 1, 1, 28, 28]),
                visible.clone().reshape([k, 1, 1, 28, 28]),
                completed.clone().reshape([k, c, 1, 28, 28]),
            ],
            1,
        )
        .reshape([k * (c + 2), 1, 28, 28]);
        let file = args.out.join(format!("inpaint-{}.png", name.to_lowercase()));
        scorefield::data::image::grid(grid, c + 2)?.save(&file)?;
        let line = match classifier {
            Some(cl) => {
                let agreement = eval::label_agreement(cl, completed, &asked)?;
                let name = if resamples > 1 {
                    format!("{name} ({resamples} passes)")
                } else {
                    name.into()
                };
                format!("{name} | {:.1} % | {seconds:.1}\n", 100.0 * agreement)
            }
            None => format!("{name} | – | {seconds:.1}\n"),
        };
        print!("{line}");
        table.push_str(&line);
    }
    Ok(table)
}

/// `n` held-out digits: the first of class 0, of class 1, …, cycling through the classes.
fn pick_digits(data: &Mnist, held_out: &[usize], n: usize) -> Result<Vec<usize>, MnistError> {
    let labels = data.labels_of(held_out)?;
    let mut picked = Vec::with_capacity(n);
    let mut used = vec![false; held_out.len()];
    for k in (0..CLASSES).cycle().take(n) {
        if let Some(j) = (0..held_out.len()).find(|&j| !used[j] && usize::from(labels[j]) == k) {
            used[j] = true;
            picked.push(held_out[j]);
        }
    }
    Ok(picked)
}
