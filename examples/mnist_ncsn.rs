//! A noise-conditional score network (NCSN, Song & Ermon 2019) on MNIST: multi-scale
//! denoising score matching over 10 geometric noise levels σ from 1 to 0.01, then annealed
//! Langevin dynamics from uniform noise, on the CPU or the GPU with the same code.
//!
//! ```text
//! cargo run --release --example mnist_ncsn                          # CPU, the short default run
//! cargo run --release --example mnist_ncsn -- --data-dir ../shared/data/mnist
//! cargo run --release --example mnist_ncsn --features wgpu -- --backend wgpu --preset paper
//! cargo run --release --example mnist_ncsn -- --resume --steps 5000 # train on from the checkpoint
//! cargo run --release --example mnist_ncsn -- --sample-only --samples 100
//! ```
//!
//! The data directory is `--data-dir`, else `$SCOREFIELD_MNIST_DIR`, else `data/mnist`, holding
//! the `train-*` files (or the `t10k-*` files: any split trains). If it holds neither, the
//! training split is downloaded into it (MD5-checked; `--offline` forbids it); offline and with
//! no directory named, the copy of the test split in `../shared/data/mnist` is used if present.
//! Pixels are scaled to [0, 1] and dequantised as in the NCSN code, `x·255/256 + u/256`.
//!
//! Two presets:
//! - `paper`: NCSN's schedule with this library's U-Net in its reference configuration (width
//!   32, 789,153 parameters): batch 128, Adam with lr 10⁻³, 200,000 steps, EMA 0.999, annealed
//!   Langevin with T = 100 steps per level and ε = 2·10⁻⁵. Hours on a GPU.
//! - `default`: sized to end within 15 minutes on a 2-core CPU with recognisable digits (width
//!   16, batch 32, 6,000 steps but at most 13 minutes of training, EMA 0.99, T = 20 and
//!   ε = 10⁻⁴ for 64 samples); see [`Preset::settings`] for why each differs from the paper.
//!
//! Every setting can be overridden by its flag. Written under `--out` (default
//! `out/mnist_ncsn`): `samples.png` (a grid of the final samples), `samples-step-<k>.png` at
//! intervals, `losses.csv` (the mean loss per noise level, `LossLog`'s format), `loss.png`
//! (its mean over the levels against the step), `quality.txt` (the quality report, when the
//! `mnist_classifier` example's classifier is saved) and
//! `checkpoint/` (the whole training state, `Trainer::save`, and `noise-levels.txt`, the run's
//! σ₁ and L), from which `--resume` trains on bit for bit and `--sample-only` samples with the
//! EMA weights at the levels it was trained at.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/progress.rs"]
mod progress;

use cli::AnyResult;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scorefield::data::mnist::{self, Mnist, MnistError, Split};
use scorefield::data::plot;
use scorefield::eval::{self, MnistClassifier};
use scorefield::nn::train::every as fit_every;
use scorefield::nn::{
    Callback, Checkpoints, EmaWarmup, FitError, LossCsv, LrDecay, NcsnUnet, NcsnUnetConfig,
    Progress, StepReport, Trainer, TrainerConfig,
};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::sampler::AnnealedLangevin;
use scorefield::schedule::GeometricSigmas;

/// Where the repository keeps an offline copy of the MNIST test split, from its root.
const SHARED_MNIST: &str = "../shared/data/mnist";

/// The run-length presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// A CPU-sized run: about 15 minutes on 2 cores, recognisable digits.
    Default,
    /// NCSN's full schedule (batch 128, lr 1e-3, 200k steps, T = 100, ε = 2e-5).
    Paper,
}

/// Train an NCSN on MNIST and draw digits with annealed Langevin dynamics.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Compute backend: flex (CPU, default), ndarray, wgpu or cuda (the last three need the
    /// cargo feature of the same name).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// The MNIST directory [default: $SCOREFIELD_MNIST_DIR, else data/mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Never download: if the data directory holds no MNIST files, fail (by default the
    /// training split is downloaded into it, over HTTPS, MD5-checked).
    #[arg(long)]
    offline: bool,
    /// Output directory: samples.png, losses.csv, loss.png, quality.txt, checkpoint/.
    #[arg(long, default_value = "out/mnist_ncsn")]
    out: PathBuf,
    /// Seed of the initial weights, the batches, the noise and the samples [default: 0; with
    /// --resume or --sample-only, the checkpoint's].
    #[arg(long)]
    seed: Option<u64>,
    /// Run-length preset; the flags below override its values.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    /// Total training steps (with --resume: train on until this many).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// EMA decay of the weights sampled from.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Warm the EMA decay up as score_sde does, `min(d, (1 + n)/(10 + n))` (true or false).
    #[arg(long)]
    ema_warmup: Option<bool>,
    /// Anneal the learning rate to 0 over the run with a cosine (true or false).
    #[arg(long)]
    cosine_lr: Option<bool>,
    /// The U-Net's base width (32 is the reference configuration; must be a multiple of 8).
    #[arg(long)]
    width: Option<usize>,
    /// The largest noise level σ₁ of the geometric schedule (the smallest is 0.01) of a new
    /// run; --resume and --sample-only take the checkpoint's (and refuse another).
    #[arg(long)]
    sigma_max: Option<f64>,
    /// The number of noise levels L of the geometric schedule (as --sigma-max).
    #[arg(long)]
    levels: Option<usize>,
    /// Annealed Langevin steps per noise level, T.
    #[arg(long)]
    steps_per_level: Option<usize>,
    /// Annealed Langevin step scale ε (α_i = ε·σ_i²/σ_L², update x + (α/2)·s + √α·z).
    #[arg(long)]
    eps: Option<f64>,
    /// Skip NCSNv2's final denoising step x + σ_L²·s(x, σ_L).
    #[arg(long)]
    no_final_denoise: bool,
    /// Number of samples to draw (shown in a grid of 8 columns).
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Draw samples every K steps (0: only at the end).
    #[arg(long)]
    sample_every: Option<u64>,
    /// Save a checkpoint every K steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Stop training after this many minutes even if --steps is not reached (the checkpoint is
    /// saved; --resume trains on); 0: no limit [default preset: 13; paper: none].
    #[arg(long)]
    time_limit: Option<f64>,
    /// Write the loss CSV every K steps.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Continue training from the checkpoint in --out.
    #[arg(long, conflicts_with = "sample_only")]
    resume: bool,
    /// Load the checkpoint in --out and only draw samples, with its EMA weights.
    #[arg(long)]
    sample_only: bool,
    /// The directory of the classifier saved by the `mnist_classifier` example: if it is there,
    /// the final samples get a quality report (confident share, Fréchet distance).
    #[arg(long, default_value = "out/mnist_classifier")]
    classifier: PathBuf,
}

/// Every setting of a run, after the preset and the flags.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    width: usize,
    batch_size: usize,
    steps: u64,
    learning_rate: f64,
    ema_decay: f64,
    ema_warmup: bool,
    cosine_lr: bool,
    sigma_max: f64,
    levels: usize,
    steps_per_level: usize,
    eps: f64,
    sample_every: u64,
    checkpoint_every: u64,
    /// Minutes of training before the run stops early (0: no limit).
    time_limit: f64,
}

impl Preset {
    /// The preset's settings.
    ///
    /// `default` departs from the paper where a 2-core CPU and 15 minutes demand it:
    /// - width 16 (227,025 parameters) instead of 32 (789,153): about a third of the time
    ///   per image;
    /// - batch 32 and 6,000 steps (192k images, 3.2 epochs of the training split; 11 minutes
    ///   on 2 cores, 2026-12-02): at equal compute, 2,000 steps of 32 drew clearer digits than
    ///   1,000 steps of 64, and in about the same time 6,000 steps of width 16 drew better
    ///   digits than 2,500 of width 32 (Fréchet 155.3 against 188.7 over 256 samples, the
    ///   confident share 67.6 % against 69.1 %, within its standard error) and than the
    ///   earlier default of 2,500 steps (Fréchet 210.4, 69.9 %);
    /// - EMA decay 0.99 instead of 0.999: the EMA starts at the initial weights, and after
    ///   2,500 steps 0.999 would still give them weight 0.999²⁵⁰⁰ ≈ 0.08 and average over a
    ///   window (~1,000 steps) in which the net changes a lot; 0.99 averages over the last ~100;
    /// - T = 20 Langevin steps per level instead of 100, with ε = 10⁻⁴ instead of 2·10⁻⁵, so
    ///   that T·ε, the Langevin time spent at each level, is the paper's; the final denoising
    ///   step removes the residual noise of the last level;
    /// - a 13-minute limit on the training (so that the run, data and sampling included, stays
    ///   within 15 minutes when the host is slow: this VM's throughput has varied 2× within a
    ///   day, 0.108 to 0.21 s/step for the same code); a run it stops keeps its checkpoint;
    /// - NCSN's 10 levels from σ₁ = 1 rather than NCSNv2's rules (σ₁ the largest distance
    ///   between two digits, 16.1 on the test split; levels close enough to overlap, L = 100;
    ///   T = 5): `--sigma-max 16 --levels 100 --steps-per-level 5` in the same 13 minutes drew
    ///   68.8 % confident digits at NCSNv2's ε = 10⁻⁵, 75.0 % at ε = 3·10⁻⁵ (Fréchet 269.5),
    ///   against 78.1 % for the default (64 samples each, 2026-12-02; `docs/performance.md`);
    /// - no EMA warm-up and no learning-rate decay: with `--ema-decay 0.999 --ema-warmup true
    ///   --cosine-lr true` the same 2,500 steps drew worse digits (70.3 % confident, Fréchet
    ///   414.6 against 75.0 % and 305.4, 64 samples each, 2026-12-02).
    fn settings(self) -> Settings {
        match self {
            Preset::Default => Settings {
                width: 16,
                batch_size: 32,
                steps: 6_000,
                learning_rate: 1e-3,
                ema_decay: 0.99,
                ema_warmup: false,
                cosine_lr: false,
                sigma_max: 1.0,
                levels: 10,
                steps_per_level: 20,
                eps: 1e-4,
                sample_every: 0,
                checkpoint_every: 500,
                time_limit: 13.0,
            },
            Preset::Paper => Settings {
                width: 32,
                batch_size: 128,
                steps: 200_000,
                learning_rate: 1e-3,
                ema_decay: 0.999,
                ema_warmup: false,
                cosine_lr: false,
                sigma_max: 1.0,
                levels: 10,
                steps_per_level: 100,
                eps: 2e-5,
                sample_every: 5_000,
                checkpoint_every: 5_000,
                time_limit: 0.0,
            },
        }
    }
}

impl Args {
    fn settings(&self) -> Settings {
        let preset = self.preset.settings();
        Settings {
            width: self.width.unwrap_or(preset.width),
            batch_size: self.batch_size.unwrap_or(preset.batch_size),
            steps: self.steps.unwrap_or(preset.steps),
            learning_rate: self.lr.unwrap_or(preset.learning_rate),
            ema_decay: self.ema_decay.unwrap_or(preset.ema_decay),
            ema_warmup: self.ema_warmup.unwrap_or(preset.ema_warmup),
            cosine_lr: self.cosine_lr.unwrap_or(preset.cosine_lr),
            sigma_max: self.sigma_max.unwrap_or(preset.sigma_max),
            levels: self.levels.unwrap_or(preset.levels),
            steps_per_level: self.steps_per_level.unwrap_or(preset.steps_per_level),
            eps: self.eps.unwrap_or(preset.eps),
            sample_every: self.sample_every.unwrap_or(preset.sample_every),
            checkpoint_every: self.checkpoint_every.unwrap_or(preset.checkpoint_every),
            time_limit: self.time_limit.unwrap_or(preset.time_limit),
        }
    }
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "common/alloc.rs"]
mod alloc;

fn main() -> ExitCode {
    cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> AnyResult<()> {
    let settings = args.settings();
    // At most a year: `Duration` takes any finite value, but a typo should not read as forever.
    if !(0.0..=525_600.0).contains(&settings.time_limit) {
        return Err(format!(
            "--time-limit {}: expected minutes from 0 (no limit) to 525600",
            settings.time_limit
        )
        .into());
    }
    let device = scorefield::device(&args.backend)?;
    let checkpoints = args.out.join("checkpoint");
    let levels = noise_levels(&args, &settings, &checkpoints)?;
    println!("backend: {} ({device:?}); output: {}", args.backend, args.out.display());

    if args.sample_only {
        let (trainer, _) = load_trainer(&checkpoints, &device)?;
        println!(
            "loaded the checkpoint of step {} from {}",
            trainer.steps(),
            checkpoints.display()
        );
        let path = args.out.join("samples.png");
        let seed = args.seed.unwrap_or(trainer.config().seed);
        let samples = draw(trainer.ema(), levels, &args, &settings, seed, &path, &device)?;
        // The reference digits are optional here: without data, no quality report (and no
        // download just for it).
        match load_data(&args, false) {
            Ok(data) => report_quality(&args, samples, &data, &device)?,
            Err(e) => println!("no quality report: {e}"),
        }
        return Ok(());
    }

    let data = load_data(&args, true)?;
    println!("MNIST: {} {} images", data.len(), split_name(data.split));

    let mut trainer = if args.resume {
        let (trainer, model_config) = load_trainer(&checkpoints, &device)?;
        let config = trainer.config();
        println!(
            "resuming at step {} (batch {}, lr {}, EMA {}, seed {} from the checkpoint)",
            trainer.steps(),
            config.batch_size,
            config.learning_rate,
            config.ema_decay,
            config.seed
        );
        let ignored = [
            ("--batch-size", args.batch_size.is_some_and(|b| b != config.batch_size)),
            ("--lr", args.lr.is_some_and(|lr| lr != config.learning_rate)),
            ("--ema-decay", args.ema_decay.is_some_and(|d| d != config.ema_decay)),
            ("--ema-warmup", args.ema_warmup.is_some_and(|w| w != config.ema_warmup.is_some())),
            ("--cosine-lr", args.cosine_lr.is_some_and(|c| c != config.lr_decay.is_some())),
            ("--seed", args.seed.is_some_and(|s| s != config.seed)),
            ("--width", args.width.is_some_and(|w| w != model_config.width)),
        ];
        for (flag, _) in ignored.iter().filter(|(_, differs)| *differs) {
            println!("note: {flag} is ignored on --resume: the checkpoint's value is kept");
        }
        trainer
    } else {
        let model_config = NcsnUnetConfig::new().with_width(settings.width);
        let seed = args.seed.unwrap_or(0);
        device.seed(seed);
        let cosine = LrDecay::Cosine { decay_steps: settings.steps, min_learning_rate: 0.0 };
        let config = TrainerConfig::new()
            .with_learning_rate(settings.learning_rate)
            .with_lr_decay(settings.cosine_lr.then_some(cosine))
            .with_ema_decay(settings.ema_decay)
            .with_ema_warmup(settings.ema_warmup.then_some(EmaWarmup::ScoreSde))
            .with_batch_size(settings.batch_size)
            .with_seed(seed);
        Trainer::from_config(&model_config, config, &device)?
    };
    let (batch_size, seed) = (trainer.config().batch_size, trainer.config().seed);
    println!(
        "NCSN U-Net, {} parameters; {} steps of batch {batch_size}",
        burn::module::Module::num_params(trainer.model()),
        settings.steps
    );

    let objective = DenoisingScoreMatching::multi_scale(&levels, levels.levels())?;
    let csv_path = args.out.join("losses.csv");
    // On resume the CSV keeps its rows up to the checkpoint's step and the run appends to it.
    let mut losses =
        LossCsv::resume(&levels.sigmas(), &csv_path, args.log_every.max(1), trainer.steps())?;
    let plot_path = args.out.join("loss.png");
    let mut plot = fit_every(args.log_every.max(1), |_: &Trainer<NcsnUnet>, _: &StepReport| {
        plot_losses(&csv_path, &plot_path).map_err(|e| FitError::Callback(e.to_string().into()))
    });
    let mut checkpoint = Checkpoints::new(&checkpoints, settings.checkpoint_every);
    let mut progress = Progress::new("train", trainer.steps(), settings.steps);
    let shown = progress.clone();
    let mut samples =
        fit_every(settings.sample_every.max(1), |t: &Trainer<NcsnUnet>, _: &StepReport| {
            let k = t.steps();
            if settings.sample_every == 0 || k == settings.steps {
                return Ok(()); // the final samples are drawn below
            }
            let path = args.out.join(format!("samples-step-{k}.png"));
            shown
                .suspend(|| draw(t.ema(), levels, &args, &settings, seed, &path, &device))
                .map(|_| ())
                .map_err(|e| FitError::Callback(e.to_string().into()))
        });
    let started = Instant::now();
    let limit = std::time::Duration::from_secs_f64(60.0 * settings.time_limit);
    let mut time_limit = |_: &Trainer<NcsnUnet>, _: &StepReport| {
        let over = settings.time_limit > 0.0 && started.elapsed() >= limit;
        Ok::<_, FitError>(if over { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    };
    let batch = |rng: &mut StdRng| {
        let indices: Vec<usize> =
            (0..batch_size).map(|_| rng.random_range(0..data.len())).collect();
        data.batch(&indices, &device, rng)
    };
    let callbacks: &mut [&mut dyn Callback<NcsnUnet>] = &mut [
        &mut progress,
        &mut losses,
        &mut plot,
        &mut checkpoint,
        &mut samples,
        &mut time_limit,
    ];
    let summary = trainer.fit(&objective, settings.steps, batch, callbacks)?;
    plot_losses(&csv_path, &plot_path)?;
    if summary.steps > 0 {
        println!(
            "trained {} steps in {:.1} s ({:.3} s/step, checkpoints and samples included)",
            summary.steps,
            summary.seconds,
            summary.seconds / summary.steps as f64
        );
    }
    if summary.stopped {
        println!(
            "stopped at the time limit ({} min) after step {} of {}: `--resume` trains on from \
             the checkpoint, `--time-limit 0` lifts the limit",
            settings.time_limit,
            trainer.steps(),
            settings.steps
        );
    }
    if let Some(path) = checkpoint.last() {
        println!("checkpoint: {}", path.display());
    }
    println!("loss per noise level: {}", csv_path.display());
    let samples = draw(
        trainer.ema(),
        levels,
        &args,
        &settings,
        seed,
        &args.out.join("samples.png"),
        &device,
    )?;
    report_quality(&args, samples, &data, &device)
}

/// Prints the quality report of `samples` against the last 2,000 digits of `data` (on the test
/// split, the digits the classifier held out) and writes it to `quality.txt`, if the classifier
/// of the `mnist_classifier` example is saved in `--classifier`.
fn report_quality(args: &Args, samples: Tensor<4>, data: &Mnist, device: &Device) -> AnyResult<()> {
    let classifier = match MnistClassifier::load(&args.classifier, device) {
        Ok(classifier) => classifier,
        Err(e) => {
            println!(
                "no quality report: {e}\n(train the classifier once with `cargo run --release \
                 --example mnist_classifier`)"
            );
            return Ok(());
        }
    };
    let reference_len = eval::CLASSIFIER_HELD_OUT.len().min(data.len());
    let indices: Vec<usize> = (data.len() - reference_len..data.len()).collect();
    let report = eval::evaluate(&classifier, samples, data.images(&indices, device)?)?;
    let text = format!(
        "{report}\n(calibrate with `cargo run --release --example sample_quality`: real digits \
         against real digits of the same counts, and noise)\n"
    );
    print!("quality of the samples: {text}");
    let path = args.out.join("quality.txt");
    scorefield::data::image::write_atomically(&path, text.as_bytes())?;
    Ok(())
}

/// Plots the mean loss over all levels (the CSV's `all` rows) against the step, log scale.
fn plot_losses(csv_path: &Path, path: &Path) -> AnyResult<()> {
    let csv = std::fs::read_to_string(csv_path)?;
    let curve: Vec<[f64; 2]> = csv
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            match fields[..] {
                [step, "all", loss, ..] => Some([step.parse().ok()?, loss.parse().ok()?]),
                _ => None,
            }
        })
        .collect();
    let title = "DSM loss, all levels";
    plot::line_plot(&curve, (520, 320), true, plot::BLUE, title)?.save(path)?;
    Ok(())
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Test => "test",
    }
}

/// MNIST from the resolved directory. If it holds no MNIST files: the training split is
/// downloaded into it (if `download` and not `--offline`), and if that fails and no directory was named, this
/// repository's offline copy of the test split is used when it is there.
fn load_data(args: &Args, download: bool) -> AnyResult<Mnist> {
    let dir = mnist::resolve_dir(args.data_dir.as_deref());
    let named = args.data_dir.is_some() || std::env::var_os(mnist::ENV_VAR).is_some();
    let missing = match Mnist::load(&dir) {
        Ok(data) => return Ok(data),
        Err(e @ MnistError::NotFound { .. }) => e,
        Err(e) => return Err(e.into()),
    };
    let mut reasons = vec![missing.to_string()];
    if download && !args.offline {
        println!(
            "no MNIST in {}: downloading the training split (--offline: never)",
            dir.display()
        );
        let started = Instant::now();
        match mnist::download(&dir, Split::Train) {
            Ok(_) => {
                println!("downloaded in {:.1} s", started.elapsed().as_secs_f64());
                return Ok(Mnist::load(&dir)?);
            }
            Err(e) => {
                println!("download failed: {e}");
                reasons.push(format!("download failed: {e}"));
            }
        }
    }
    let shared = Path::new(SHARED_MNIST);
    if !named && let Ok(data) = Mnist::load(shared) {
        println!("using the offline copy of the test split in {SHARED_MNIST}");
        return Ok(data);
    }
    Err(format!(
        "{}\nhint: put the MNIST files (train-* or t10k-*, gzip or raw) in {} or name their \
         directory with --data-dir or ${}",
        reasons.join("\n"),
        dir.display(),
        mnist::ENV_VAR
    )
    .into())
}

/// The file beside the checkpoints that records the run's noise levels, `σ₁ L`.
const NOISE_LEVELS: &str = "noise-levels.txt";

/// The run's noise levels, geometric from 0.01 to σ₁. A new run takes them from the settings
/// and records them beside its checkpoints; `--resume` and `--sample-only` take the recorded
/// ones (a checkpoint without the record has NCSN's, σ₁ = 1 and L = 10). Either refuses levels
/// that differ from those of a checkpoint already there (a flag on `--resume` or
/// `--sample-only`, a new run's settings over an earlier run's checkpoint that it has not yet
/// replaced), rather than sample a network at levels it was not trained at.
fn noise_levels(
    args: &Args,
    settings: &Settings,
    checkpoints: &Path,
) -> AnyResult<GeometricSigmas> {
    let path = checkpoints.join(NOISE_LEVELS);
    let fresh = !(args.resume || args.sample_only);
    let saved = if fresh && !checkpoints.join("LATEST").exists() {
        None
    } else {
        Some(read_noise_levels(&path)?)
    };
    // (`saved` is always there on --resume and --sample-only.)
    let wanted = match saved {
        Some(saved) if !fresh => {
            (args.sigma_max.unwrap_or(saved.0), args.levels.unwrap_or(saved.1))
        }
        _ => (settings.sigma_max, settings.levels),
    };
    if let Some((sigma_max, count)) = saved.filter(|&saved| saved != wanted) {
        let hint = if fresh {
            "use another --out, or remove that checkpoint"
        } else {
            "drop --sigma-max and --levels, or pass those values"
        };
        return Err(format!(
            "the checkpoint in {} was trained at σ₁ = {sigma_max} over L = {count} levels, not \
             σ₁ = {} over L = {}: {hint}",
            checkpoints.display(),
            wanted.0,
            wanted.1
        )
        .into());
    }
    let levels = GeometricSigmas::new(0.01, wanted.0, wanted.1)?;
    if fresh {
        std::fs::create_dir_all(checkpoints)?;
        let record = format!("{} {}\n", wanted.0, wanted.1);
        scorefield::data::image::write_atomically(&path, record.as_bytes())?;
    }
    Ok(levels)
}

/// The `(σ₁, L)` recorded in `path`; NCSN's `(1, 10)` where there is no record (checkpoints
/// from before the record).
fn read_noise_levels(path: &Path) -> AnyResult<(f64, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((1.0, 10)),
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
    };
    let corrupt = || format!("{}: expected `σ₁ L` (e.g. `1 10`), found {text:?}", path.display());
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [s, l] => Ok((s.parse().map_err(|_| corrupt())?, l.parse().map_err(|_| corrupt())?)),
        _ => Err(corrupt().into()),
    }
}

/// The trainer saved in `dir`, its model rebuilt from the saved configuration.
fn load_trainer(dir: &Path, device: &Device) -> AnyResult<(Trainer<NcsnUnet>, NcsnUnetConfig)> {
    Trainer::resume::<NcsnUnetConfig>(dir, device).map_err(|e| {
        format!("{e}\nhint: train first (without --resume or --sample-only), or pass the --out of that run")
            .into()
    })
}

/// Draws `args.samples` digits with annealed Langevin dynamics from U[0, 1] noise (as NCSN)
/// and writes them as a grid to `path`; returns them.
fn draw(
    model: &NcsnUnet,
    levels: GeometricSigmas,
    args: &Args,
    settings: &Settings,
    seed: u64,
    path: &Path,
    device: &Device,
) -> AnyResult<Tensor<4>> {
    let sampler = AnnealedLangevin::ncsn(levels, settings.steps_per_level, settings.eps)?
        .with_final_denoise(!args.no_final_denoise);
    let n = args.samples.max(1);
    // The same starting noise at every interval, so that grids can be compared.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5a3b_1e5e_ed5a_3b1e);
    let side = mnist::SIDE;
    let init: Vec<f32> = (0..n * side * side).map(|_| rng.random::<f32>()).collect();
    let init = Tensor::<4>::from_data(TensorData::new(init, [n, 1, side, side]), device);

    let bar = progress::bar(0, "sample {elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}");
    let started = Instant::now();
    let x = progress::sample_with_bar(&bar, &sampler, model, init, &mut rng)?;
    bar.finish();
    let steps = bar.position();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sampled {n} images in {seconds:.1} s ({steps} steps, {:.3} s/step, T = {}, ε = {})",
        seconds / steps.max(1) as f64,
        settings.steps_per_level,
        settings.eps
    );
    scorefield::data::image::grid(x.clone(), 8)?.save(path)?;
    println!("samples: {}", path.display());
    Ok(x)
}
