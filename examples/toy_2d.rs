//! Score-based generative modelling of a 2-D Gaussian mixture, end to end: train a `ScoreMlp`
//! with a score-matching objective, sample it, and compare its score field and samples with
//! the mixture's exact ones. Then the mode-weight experiment of Song & Ermon (2019) with the
//! exact scores of `toy::unequal_modes()`: Langevin dynamics with the clean score gets the
//! weights 2/3 : 1/3 wrong (about ½ : ½), annealed Langevin recovers them.
//!
//! ```text
//! cargo run --release --example toy_2d                          # DSM on the 8-Gaussian ring
//! cargo run --release --example toy_2d -- --data unequal        # the 2/3 : 1/3 mixture
//! cargo run --release --example toy_2d -- --objective sliced-vr --steps 2000
//! cargo run --release --example toy_2d --features wgpu -- --backend wgpu
//! ```
//!
//! Objectives (`--objective`):
//! - `dsm` (default): NCSN's multi-scale denoising score matching over geometric noise levels,
//!   the network conditioned on `ln σ` and predicting `σ·s` (`scale_by_sigma`); sampled with
//!   annealed Langevin dynamics.
//! - `exact`, `sliced`, `sliced-vr`: exact / sliced / variance-reduced sliced score matching of
//!   the clean data with an unconditioned network; sampled with plain Langevin dynamics
//!   (without noise conditioning there are no noise levels to anneal through).
//!
//! Writes into `--out` (default `out/toy_2d`): `data.png` (true samples), `samples.png` (model
//! samples over the true ones in grey), `score_field.png` (the true and the learned score,
//! side by side, at the smallest noise level or clean), `loss.png` (the training loss),
//! `mode_weights.png` (the experiment above; with `--data unequal` and `dsm` also the trained
//! model), `losses.csv` (the mean loss per noise level, `LossLog`'s format), `checkpoint/`
//! (`Trainer::save`) and `run.json` (what the checkpoint was trained on, read by the
//! `custom_sampler` example).

#[path = "common/cli.rs"]
mod cli;

#[path = "common/progress.rs"]
mod progress;
#[path = "common/toy_run.rs"]
mod toy_run;

use std::error::Error;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::config::Config;
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scorefield::analytic::GaussianMixture;
use scorefield::data::image::Image;
use scorefield::data::plot::{self, BLUE, Canvas, GREEN, LIGHT_GREY, ORANGE, PlotError, RED};
use scorefield::data::toy;
use scorefield::nn::{
    Conditioning, FitError, LossLog, Progress, ScoreMlp, ScoreMlpConfig, StepReport, Trainer,
    TrainerConfig,
};
use scorefield::objective::{
    DenoisingScoreMatching, ExactScoreMatching, Projection, SlicedScoreMatching,
};
use scorefield::sampler::{AnnealedLangevin, Langevin};
use scorefield::schedule::GeometricSigmas;
use scorefield::{NoiseLevel, NoiseSchedule, Objective, Sampler, ScoreJvp, ScoreModel};
use toy_run::RunInfo;

/// The data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Data {
    /// `toy::ring(8, 4.0, 0.3)`: eight equal Gaussians of std 0.3 on a circle of radius 4.
    Ring,
    /// `toy::unequal_modes()`: weights 2/3 and 1/3 at (−5, −5) and (5, 5), std 1.
    Unequal,
}

/// The training objectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ObjectiveKind {
    /// Multi-scale denoising score matching (NCSN), sampled with annealed Langevin.
    Dsm,
    /// Exact score matching of the clean data, sampled with Langevin.
    Exact,
    /// Sliced score matching (one Rademacher projection per sample).
    Sliced,
    /// Variance-reduced sliced score matching (SSM-VR).
    SlicedVr,
}

/// Train a score model on a 2-D mixture, sample it, and plot scores, samples and mode weights.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Compute backend: flex (CPU, default), ndarray, wgpu or cuda (the last three need the
    /// cargo feature of the same name).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// The data set.
    #[arg(long, value_enum, default_value_t = Data::Ring)]
    data: Data,
    /// The training objective.
    #[arg(long, value_enum, default_value_t = ObjectiveKind::Dsm)]
    objective: ObjectiveKind,
    /// Seed of the initial weights, the batches, the noise and the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Number of samples drawn for the plots and the mode weights.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Output directory.
    #[arg(long, default_value = "out/toy_2d")]
    out: PathBuf,
}

/// The smallest noise level: a sixth of the ring's component std 0.3 (a twentieth of
/// `unequal`'s 1), so `p_σ_min` differs from the data by a 1.4 % wider std on the ring.
const SIGMA_MIN: f64 = 0.05;
/// The number of noise levels: 16 geometric levels from σ_max ≈ 8–14 to 0.05 are ~30 % apart,
/// so each level of annealed Langevin starts close to its own equilibrium.
const LEVELS: usize = 16;

/// mimalloc, keeping the memory it frees (see the module).
#[path = "common/alloc.rs"]
mod alloc;

fn main() -> std::process::ExitCode {
    cli::exit_code(run())
}

fn run() -> cli::AnyResult<()> {
    let args = Args::parse();
    let device = scorefield::device(&args.backend)?;
    device.seed(args.seed); // Burn's parameter initialisation draws from the device's generator
    std::fs::create_dir_all(&args.out)?;
    let data = match args.data {
        Data::Ring => toy::ring(8, 4.0, 0.3)?,
        Data::Unequal => toy::unequal_modes()?,
    };
    let dsm = args.objective == ObjectiveKind::Dsm;
    // σ_max: NCSNv2's rule that the largest noise be about as large as the largest distance
    // between data points, so that at the first level every mode is reachable from every other
    // (8 for the ring, 14.1 for `unequal`, whose modes then mix and take their weights).
    let sigma_max = max_distance(data.means());
    let levels = GeometricSigmas::new(SIGMA_MIN, sigma_max, LEVELS)?;
    let half_width = if args.data == Data::Ring { 6.0 } else { 10.0 };
    let mut rng = StdRng::seed_from_u64(args.seed);
    println!(
        "data {}, objective {}, {} steps of batch {} on {}",
        name(args.data),
        name(args.objective),
        args.steps,
        args.batch_size,
        args.backend
    );
    if dsm {
        println!("noise levels: σ from {sigma_max:.2} to {SIGMA_MIN} in {LEVELS} geometric steps");
    } else {
        println!(
            "no noise conditioning: the model fits the clean data only, so samples come from \
             plain Langevin dynamics (annealing needs a noise-conditional model)"
        );
    }

    // Train.
    let (model, losses) = train(&args, &data, &levels, &device)?;
    let path = |name: &str| args.out.join(name);

    // Sample the model.
    let true_samples = points(data.sample(args.samples, &device, &mut rng))?;
    let model_samples = if dsm {
        // NCSN's T = 100 steps per level; ε = 0.2·σ_min² makes the relative step
        // α_i/σ_i² = ε/σ_min² = 0.2 at every level (NCSN's value).
        let sampler = AnnealedLangevin::ncsn(levels, 100, 0.2 * SIGMA_MIN * SIGMA_MIN)?
            .with_final_denoise(true);
        let init = levels.prior_sample([args.samples, 2], &device, &mut rng);
        run_sampler("annealed Langevin", &sampler, &model, init, &mut rng)?
    } else {
        // α = 0.01: inside a ring component (s = 0.3) a sample relaxes in 2s²/α ≈ 18 steps,
        // and 1000 steps leave time to drift in from the edge of the uniform initialisation.
        let sampler = Langevin::new(0.01, 1000)?;
        let init = uniform(args.samples, half_width, &device, &mut rng);
        run_sampler("Langevin", &sampler, &model, init, &mut rng)?
    };

    // Plots.
    let (sampler_name, level_name) = if dsm {
        ("annealed Langevin", format!("σ = {SIGMA_MIN}"))
    } else {
        ("Langevin", "clean".to_string())
    };
    let mut files = Vec::new();
    let data_title = format!("data: {}", name(args.data));
    let image = scatter(&[], &true_samples, half_width, BLUE, &data_title)?;
    files.push(save(image, path("data.png"))?);
    let title = format!("{sampler_name} ({})", name(args.objective));
    let image = scatter(&true_samples, &model_samples, half_width, ORANGE, &title)?;
    files.push(save(image, path("samples.png"))?);
    let n = 21 * 21;
    let level = if dsm {
        NoiseLevel::constant(&levels, 0.0, n, &device) // σ(0) = σ_min
    } else {
        NoiseLevel::clean(n, &device)
    };
    let image = score_fields(&data, &model, &level, &true_samples, half_width, &level_name)?;
    files.push(save(image, path("score_field.png"))?);
    let curve: Vec<[f64; 2]> = losses
        .rows()
        .iter()
        .filter(|r| r.level.is_none())
        .map(|r| [r.step as f64, r.mean_loss])
        .collect();
    let floor = exact_score_loss(args.objective, &levels, &data, &device, args.seed)?;
    println!("the objective at the exact score (the floor of the loss): {floor:.4}");
    let loss_title = format!("{} loss (exact score {floor:.3})", name(args.objective));
    let image = plot::line_plot(&curve, (520, 320), dsm, BLUE, &loss_title)?;
    files.push(save(image, path("loss.png"))?);
    losses.write_csv(path("losses.csv"))?;
    files.push(path("losses.csv"));

    // The mode-weight experiment.
    let mut rows = vec![mode_weights_oracle(args.samples, &device, &mut rng)?];
    if dsm && args.data == Data::Unequal {
        rows.push(mode_weights_model(&model, levels, args.samples, &device, &mut rng)?);
    }
    files.push(save(plot::vconcat(&rows, 12), path("mode_weights.png"))?);

    for file in files {
        println!("wrote {}", file.display());
    }
    println!("wrote {} and {}", path("checkpoint").display(), path("run.json").display());
    Ok(())
}

/// Trains the model with the chosen objective; returns the EMA weights and the loss log.
fn train(
    args: &Args,
    data: &GaussianMixture,
    levels: &GeometricSigmas,
    device: &Device,
) -> Result<(ScoreMlp, LossLog), Box<dyn Error>> {
    let dsm = args.objective == ObjectiveKind::Dsm;
    let conditioning = if dsm { Conditioning::LogSigma } else { Conditioning::None };
    let model_config = ScoreMlpConfig::new(2)
        .with_hidden(128)
        .with_layers(3)
        .with_conditioning(conditioning)
        .with_scale_by_sigma(dsm);
    // Adam at 2·10⁻³ (twice NCSN's rate: the run is short and the network small), an EMA
    // with a horizon of ~200 steps (decay 0.995; NCSN's 0.999 averages over 1000 steps, a
    // third of this run), and clipping as a guard against the occasional large gradient of
    // exact and sliced score matching early in training.
    let config = TrainerConfig::new()
        .with_learning_rate(2e-3)
        .with_ema_decay(0.995)
        .with_grad_clip_norm(Some(10.0))
        .with_seed(args.seed)
        .with_batch_size(args.batch_size);
    let objective = make_objective::<ScoreMlp>(args.objective, levels)?;
    let mut trainer = Trainer::from_config(&model_config, config, device)?;
    let mut log = LossLog::new(&if dsm { levels.sigmas() } else { Vec::new() })?;
    let log_every = (args.steps / 200).max(1);
    let mut progress = Progress::new("train", 0, args.steps);
    let mut record = |trainer: &Trainer<ScoreMlp>, report: &StepReport| {
        log.record(report);
        if trainer.steps().is_multiple_of(log_every) {
            log.flush(trainer.steps());
        }
        Ok::<_, FitError>(ControlFlow::Continue(()))
    };
    let batch = |rng: &mut StdRng| Ok::<_, FitError>(data.sample(args.batch_size, device, rng));
    let summary =
        trainer.fit(objective.as_ref(), args.steps, batch, &mut [&mut progress, &mut record])?;
    log.flush(trainer.steps());
    let last =
        log.rows().iter().rev().find(|r| r.level.is_none()).map_or(f64::NAN, |r| r.mean_loss);
    println!("trained {} steps in {:.1} s, final loss {last:.4}", summary.steps, summary.seconds);
    let dir = args.out.join("checkpoint");
    trainer.save(&dir)?;
    let info = RunInfo {
        data: name(args.data),
        objective: name(args.objective),
        step: trainer.steps(),
        sigma_min: levels.sigma_min(),
        sigma_max: levels.sigma_max(),
        levels: levels.levels(),
    };
    info.save(args.out.join("run.json"))?;
    Ok((trainer.ema().clone(), log))
}

/// The command-line name of an option's value.
fn name(value: impl ValueEnum) -> String {
    value.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string())
}

/// Writes a PNG and returns its path.
fn save(image: Image, path: PathBuf) -> Result<PathBuf, Box<dyn Error>> {
    image.save(&path)?;
    Ok(path)
}

/// The training objective, for any model with exact JVPs (the network, or the exact oracle
/// whose loss is the floor the network's approaches).
fn make_objective<M: ScoreJvp<2>>(
    kind: ObjectiveKind,
    levels: &GeometricSigmas,
) -> scorefield::Result<Box<dyn Objective<M, 2>>> {
    Ok(match kind {
        ObjectiveKind::Dsm => Box::new(DenoisingScoreMatching::multi_scale(levels, LEVELS)?),
        ObjectiveKind::Exact => Box::new(ExactScoreMatching::new()),
        ObjectiveKind::Sliced => Box::new(SlicedScoreMatching::new(1, Projection::Rademacher)),
        ObjectiveKind::SlicedVr => {
            Box::new(SlicedScoreMatching::variance_reduced(1, Projection::Rademacher))
        }
    })
}

/// The objective's loss at the exact score (the data's own mixture), averaged over 8 batches
/// of 1024: the floor of the training loss.
fn exact_score_loss(
    kind: ObjectiveKind,
    levels: &GeometricSigmas,
    data: &GaussianMixture,
    device: &Device,
    seed: u64,
) -> scorefield::Result<f64> {
    let objective = make_objective::<GaussianMixture>(kind, levels)?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut total = 0.0;
    for _ in 0..8 {
        let x = data.sample(1024, device, &mut rng);
        total += objective.loss(data, x, &mut rng)?.loss.into_scalar::<f64>();
    }
    Ok(total / 8.0)
}

/// Runs a sampler behind a progress bar and returns its samples on the host.
fn run_sampler<M, S: Sampler<M, 2>>(
    name: &str,
    sampler: &S,
    model: &M,
    init: Tensor<2>,
    rng: &mut StdRng,
) -> Result<Vec<[f64; 2]>, Box<dyn Error>> {
    let start = Instant::now();
    let bar = progress::bar(
        1,
        &format!("{name} {{bar:30}} {{pos}}/{{len}} steps [{{elapsed}} < {{eta}}]"),
    );
    let x = progress::sample_with_bar(&bar, sampler, model, init, rng)?;
    bar.finish_and_clear();
    println!("{name}: {} samples in {:.1?}", x.dims()[0], start.elapsed());
    points(x)
}

/// The largest distance between two of the means.
fn max_distance(means: &[Vec<f64>]) -> f64 {
    let d =
        |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    means.iter().flat_map(|a| means.iter().map(move |b| d(a, b))).fold(0.0, f64::max)
}

/// A batch `[n, 2]` as host points.
fn points(x: Tensor<2>) -> Result<Vec<[f64; 2]>, Box<dyn Error>> {
    let values = x.try_into_vec_as::<f64>().map_err(|e| format!("reading samples: {e:?}"))?;
    Ok(values.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

/// Host points as a batch `[n, 2]` on `device`.
fn tensor(points: &[[f64; 2]], device: &Device) -> Tensor<2> {
    let values: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, [points.len(), 2]), device)
}

/// `n` points uniform on `[−h, h]²`.
fn uniform(n: usize, h: f64, device: &Device, rng: &mut StdRng) -> Tensor<2> {
    let p: Vec<[f64; 2]> =
        (0..n).map(|_| [rng.random_range(-h..h), rng.random_range(-h..h)]).collect();
    tensor(&p, device)
}

/// A square scatter plot over `[−h, h]²`: `background` (the true samples) in light grey,
/// `points` on top.
fn scatter(
    background: &[[f64; 2]],
    points: &[[f64; 2]],
    h: f64,
    color: [u8; 3],
    title: &str,
) -> Result<Image, PlotError> {
    let mut canvas = Canvas::new(424, 440, (-h, h), (-h, h))?;
    canvas.axes();
    canvas.scatter(background, LIGHT_GREY, 1.0, 0.6);
    canvas.scatter(points, color, 1.0, 0.5);
    if !background.is_empty() {
        canvas.legend("true samples", LIGHT_GREY);
        canvas.legend("model samples", color);
    }
    canvas.title(title);
    canvas.render()
}

/// The exact and the learned score on a 21 × 21 grid, side by side, at `level` (441 levels).
fn score_fields(
    data: &GaussianMixture,
    model: &ScoreMlp,
    level: &NoiseLevel,
    background: &[[f64; 2]],
    h: f64,
    level_name: &str,
) -> Result<Image, Box<dyn Error>> {
    let n = 21;
    let grid = plot::grid_points((-h, h), (-h, h), n);
    let x = tensor(&grid, &level.sigma.device());
    let truth = points(data.score(x.clone(), level))?;
    let learned = points(model.score(x, level))?;
    // One scale for both panels: the median true score is drawn 0.6 grid spacings long, and
    // every arrow is capped at 0.9 spacings, so directions stay readable where |s| is large.
    let spacing = 2.0 * h / n as f64;
    let mut norms: Vec<f64> = truth.iter().map(|s| s[0].hypot(s[1])).collect();
    norms.sort_by(f64::total_cmp);
    let scale = 0.6 * spacing / norms[norms.len() / 2].max(1e-12);
    let panel = |field: &[[f64; 2]], color, title: &str| {
        let mut canvas = Canvas::new(424, 440, (-h, h), (-h, h))?;
        canvas.axes();
        canvas.scatter(background, LIGHT_GREY, 1.0, 0.4);
        canvas.quiver(&grid, field, scale, 0.9 * spacing, color);
        canvas.title(title);
        canvas.render()
    };
    Ok(plot::hconcat(
        &[
            panel(&truth, GREEN, &format!("true score, {level_name}"))?,
            panel(&learned, RED, &format!("learned score, {level_name}"))?,
        ],
        12,
    ))
}

/// The fraction of points on the side of `x + y = 0` of the mode at (−5, −5).
fn first_mode_fraction(x: &[[f64; 2]]) -> f64 {
    x.iter().filter(|p| p[0] + p[1] < 0.0).count() as f64 / x.len().max(1) as f64
}

/// A panel of the mode-weight experiment: the points coloured by side, the weights in the title.
fn weights_panel(x: &[[f64; 2]], name: &str) -> Result<(Image, f64), PlotError> {
    let w = first_mode_fraction(x);
    let (first, second): (Vec<[f64; 2]>, Vec<[f64; 2]>) = x.iter().partition(|p| p[0] + p[1] < 0.0);
    let mut canvas = Canvas::new(424, 440, (-10.0, 10.0), (-10.0, 10.0))?;
    canvas.axes();
    canvas.polyline(&[[-10.0, 10.0], [10.0, -10.0]], LIGHT_GREY, 1.0);
    canvas.scatter(&first, BLUE, 1.0, 0.5);
    canvas.scatter(&second, ORANGE, 1.0, 0.5);
    canvas.legend("mode at (−5, −5)", BLUE);
    canvas.legend("mode at (5, 5)", ORANGE);
    canvas.title(&format!("{name} {w:.2} : {:.2}", 1.0 - w));
    Ok((canvas.render()?, w))
}

/// The mode-weight experiment with the exact scores of `toy::unequal_modes()`.
fn mode_weights_oracle(
    n: usize,
    device: &Device,
    rng: &mut StdRng,
) -> Result<Image, Box<dyn Error>> {
    let oracle = toy::unequal_modes()?;
    // Plain Langevin with the clean score from U([−8, 8]²): α = 0.1 contracts a sample's
    // distance to its nearest mode by ≈ 1 − α/2 per step, so 400 steps settle every sample
    // in the basin it started in; the barrier between the modes is never crossed.
    let langevin = Langevin::new(0.1, 400)?;
    let x = run_sampler(
        "Langevin (exact score)",
        &langevin,
        &oracle,
        uniform(n, 8.0, device, rng),
        rng,
    )?;
    let (plain, w_plain) = weights_panel(&x, "exact, Langevin")?;
    // Annealed Langevin with the exact perturbed scores: σ₁ = 20 exceeds the distance between
    // the modes (√200 ≈ 14), so the first levels mix them; σ_L = 0.1; 20 levels; ε = 2·10⁻³
    // makes the relative step α_i/σ_i² = ε/σ_L² = 0.2 at every level.
    let annealed = AnnealedLangevin::ncsn(GeometricSigmas::new(0.1, 20.0, 20)?, 100, 2e-3)?;
    let x = run_sampler(
        "annealed Langevin (exact scores)",
        &annealed,
        &oracle,
        uniform(n, 8.0, device, rng),
        rng,
    )?;
    let (ann, w_ann) = weights_panel(&x, "exact, annealed")?;
    println!(
        "mode weights with the exact scores (true 0.67 : 0.33): Langevin {w_plain:.3} : {:.3}, \
         annealed Langevin {w_ann:.3} : {:.3}",
        1.0 - w_plain,
        1.0 - w_ann
    );
    Ok(plot::hconcat(&[plain, ann], 12))
}

/// The mode-weight experiment with the trained noise-conditional model.
fn mode_weights_model(
    model: &ScoreMlp,
    levels: GeometricSigmas,
    n: usize,
    device: &Device,
    rng: &mut StdRng,
) -> Result<Image, Box<dyn Error>> {
    // Plain Langevin at the smallest level σ_min, as with the clean score above.
    let langevin = Langevin::new(0.1, 400)?.at_level(&levels, 0.0)?;
    let x = run_sampler(
        "Langevin (model, σ_min)",
        &langevin,
        model,
        uniform(n, 8.0, device, rng),
        rng,
    )?;
    let (plain, w_plain) = weights_panel(&x, "model, Langevin")?;
    let annealed = AnnealedLangevin::ncsn(levels, 100, 0.2 * SIGMA_MIN * SIGMA_MIN)?;
    let x = run_sampler(
        "annealed Langevin (model)",
        &annealed,
        model,
        uniform(n, 8.0, device, rng),
        rng,
    )?;
    let (ann, w_ann) = weights_panel(&x, "model, annealed")?;
    println!(
        "mode weights with the trained model: Langevin {w_plain:.3} : {:.3}, annealed Langevin \
         {w_ann:.3} : {:.3}",
        1.0 - w_plain,
        1.0 - w_ann
    );
    Ok(plot::hconcat(&[plain, ann], 12))
}
