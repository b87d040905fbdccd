//! A sampler of your own, written only against scorefield's public traits (`Sampler`,
//! `ScoreModel`, `NoiseSchedule`, `Observer`), run on a trained score network: Heun's method
//! on the probability-flow ODE, compared with the built-in annealed Langevin sampler and the
//! built-in probability-flow solver (see `docs/custom_sampler.md` for the contract).
//!
//! ```text
//! cargo run --release --example custom_sampler
//! cargo run --release --example custom_sampler -- --retrain      # ignore toy_2d's checkpoint
//! cargo run --release --example custom_sampler --features wgpu -- --backend wgpu
//! ```
//!
//! The model is the noise-conditional MLP that `cargo run --release --example toy_2d` trains
//! on the 8-Gaussian ring, loaded from `out/toy_2d/checkpoint` if `out/toy_2d/run.json` says
//! it is a DSM model of the ring; otherwise a smaller one is trained here (3000 DSM steps,
//! 15–30 seconds on two CPU cores). Each sampler starts from the same 1000 prior samples; the
//! example prints the energy distance to true samples (with the floor of a second true draw),
//! the mean, the covariance, the spread around the nearest mode and the largest error in the
//! share of the 8 modes, and how far the hand-written Heun solver is from the built-in one
//! (they compute the same thing, so rounding apart). Writes `out/custom_sampler/custom_sampler.png`: true samples, the custom
//! sampler's and annealed Langevin's, side by side.

#[path = "common/cli.rs"]
mod cli;

#[path = "common/progress.rs"]
mod progress;
#[path = "common/toy_run.rs"]
mod toy_run;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::config::Config;
use burn::tensor::{Device, Tensor};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::GaussianMixture;
use scorefield::data::image::Image;
use scorefield::data::plot::{self, BLUE, Canvas, LIGHT_GREY, ORANGE, RED};
use scorefield::data::toy;
use scorefield::nn::{
    Conditioning, FitError, Progress, ScoreMlp, ScoreMlpConfig, Trainer, TrainerConfig,
    read_checkpoint,
};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::sampler::{AnnealedLangevin, OdeSolver, ProbabilityFlow, check_finite};
use scorefield::schedule::GeometricSigmas;
use scorefield::score::check_batch;
use scorefield::{
    Error as SfError, NoiseLevel, NoiseSchedule, Observer, SampleStep, Sampler, ScoreModel,
};
use toy_run::RunInfo;

// ---------------------------------------------------------------------------------------------
// The custom sampler.
// ---------------------------------------------------------------------------------------------

/// Heun's method (the explicit trapezoid rule) on the probability-flow ODE of a schedule,
///
/// ```text
/// dx/dt = F(x, t) = f(t)·x − ½ g(t)²·s(x, t)
/// ```
///
/// integrated from the prior at `T` down to `t_min` on the schedule's grid
/// `t₀ = T > t₁ > … > t_N = t_min`, with `h = tᵢ₊₁ − tᵢ < 0`:
///
/// ```text
/// k₁ = F(x, tᵢ),   x̃ = x + h·k₁,   k₂ = F(x̃, tᵢ₊₁),   x ← x + (h/2)·(k₁ + k₂)
/// ```
///
/// Second order, two score evaluations per step, deterministic: `rng` is never used.
pub struct HeunFlow<S> {
    /// The noise schedule: `f(t)`, `g(t)`, the marginals and the time grid.
    pub schedule: S,
    /// The number of steps `N ≥ 1`.
    pub steps: usize,
}

impl<S: NoiseSchedule, M: ScoreModel<D>, const D: usize> Sampler<M, D> for HeunFlow<S> {
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        _rng: &mut dyn rand::RngCore,
        observer: &mut dyn Observer<D>,
    ) -> scorefield::Result<Tensor<D>> {
        if self.steps == 0 {
            return Err(SfError::invalid("steps", 0, "Heun needs at least one step"));
        }
        let times = self.schedule.grid(self.steps + 1)?; // largest noise first
        let (batch, device) = (init.dims()[0], init.device());
        let level = |t: f64| NoiseLevel::constant(&self.schedule, t, batch, &device);
        check_batch("HeunFlow", &init, model.sample_shape().as_deref(), &level(times[0]))?;
        check_finite(&init, || "HeunFlow initial state".into())?;
        // F(x, t) = f(t)·x − ½ g(t)²·s(x, t)
        let velocity = |x: Tensor<D>, t: f64| {
            let g = self.schedule.diffusion(t);
            let s = model.score(x.clone(), &level(t));
            x.mul_scalar(self.schedule.drift_coefficient(t)) - s.mul_scalar(0.5 * g * g)
        };
        let mut x = init;
        for (step, pair) in times.windows(2).enumerate() {
            let (t, t_next) = (pair[0], pair[1]);
            let h = t_next - t;
            let k1 = velocity(x.clone(), t);
            let euler = x.clone() + k1.clone().mul_scalar(h);
            let k2 = velocity(euler, t_next);
            x = x + (k1 + k2).mul_scalar(h / 2.0);
            check_finite(&x, || format!("HeunFlow step {step} (t = {t_next})"))?;
            let sigma = self.schedule.marginal(t_next).std;
            let total = self.steps;
            let report = SampleStep { step, total, t: t_next, sigma, x: &x, denoised: None };
            if observer.on_step(&report).is_break() {
                break;
            }
        }
        Ok(x)
    }
}

// ---------------------------------------------------------------------------------------------
// The example.
// ---------------------------------------------------------------------------------------------

/// The example's errors: any error, boxed.
type AnyResult<T> = Result<T, Box<dyn Error>>;

/// Run a hand-written Heun probability-flow sampler and built-in samplers on a trained model.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Compute backend: flex (CPU, default), ndarray, wgpu or cuda (the last three need the
    /// cargo feature of the same name).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Seed of the model (when trained here), the prior samples and the true samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where `toy_2d` wrote its run (`run.json`, `checkpoint/`).
    #[arg(long, default_value = "out/toy_2d")]
    from: PathBuf,
    /// Train a model here even if `toy_2d`'s checkpoint fits.
    #[arg(long)]
    retrain: bool,
    /// Training steps when training here.
    #[arg(long, default_value_t = 3000)]
    train_steps: u64,
    /// Samples per sampler.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Heun steps (two score evaluations each).
    #[arg(long, default_value_t = 50)]
    heun_steps: usize,
    /// Output directory.
    #[arg(long, default_value = "out/custom_sampler")]
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    cli::exit_code(compare())
}

/// Trains the model (or loads it) and compares the samplers.
fn compare() -> cli::AnyResult<()> {
    let args = Args::parse();
    let device = scorefield::device(&args.backend)?;
    device.seed(args.seed);
    let data = toy::ring(8, 4.0, 0.3)?;
    let loaded = if args.retrain { None } else { load_toy_2d(&args.from, &device) };
    let (model, levels) = match loaded {
        Some(found) => found,
        None => train(&data, args.train_steps, args.seed, &device)?,
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let n = args.samples;
    let truth = points(data.sample(n, &device, &mut rng))?;
    let floor = points(data.sample(n, &device, &mut rng))?;
    let init = levels.prior_sample([n, 2], &device, &mut rng);

    let heun = HeunFlow { schedule: levels, steps: args.heun_steps };
    let custom = run("custom Heun PF-ODE", &heun, &model, init.clone(), &mut rng)?;
    let flow = ProbabilityFlow::new(levels, OdeSolver::Heun { steps: args.heun_steps })?;
    let builtin_flow = run("built-in PF-ODE Heun", &flow, &model, init.clone(), &mut rng)?;
    // NCSN's annealed Langevin over the training levels, relative step α_i/σ_i² = 0.2, with
    // T = 50 steps per level (half NCSN's 100, which measured no better here).
    let eps = 0.2 * levels.sigma_min().powi(2);
    let annealed = AnnealedLangevin::ncsn(levels, 50, eps)?.with_final_denoise(true);
    let langevin = run("built-in annealed Langevin", &annealed, &model, init, &mut rng)?;

    let gap = custom
        .iter()
        .zip(&builtin_flow)
        .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
        .fold(0.0, f64::max);
    println!(
        "\nthe hand-written Heun solver and the built-in one, from the same prior sample: \
         largest coordinate difference {gap:.2e}"
    );
    println!(
        "\n{:<28} {:>9} {:>16} {:>24} {:>11} {:>10}",
        "samples", "energy d.", "mean", "cov (xx, xy, yy)", "mode spread", "max |w−⅛|"
    );
    report("true (the reference)", &truth, None, &data);
    let rows = [
        ("true (a second draw)", &floor),
        ("custom Heun PF-ODE", &custom),
        ("built-in PF-ODE Heun", &builtin_flow),
        ("built-in annealed Langevin", &langevin),
    ];
    for (name, x) in rows {
        report(name, x, Some(&truth), &data);
    }

    let panel = |x: &[[f64; 2]], color, title: &str| {
        let mut canvas = Canvas::new(400, 420, (-6.0, 6.0), (-6.0, 6.0))?;
        canvas.axes();
        canvas.scatter(&truth, LIGHT_GREY, 1.0, 0.6);
        canvas.scatter(x, color, 1.0, 0.5);
        canvas.legend("reference", LIGHT_GREY);
        canvas.legend("samples", color);
        canvas.title(title);
        canvas.render()
    };
    let ed = |x: &[[f64; 2]]| energy_distance(x, &truth);
    let panels = [
        panel(&floor, BLUE, "true samples")?,
        panel(&custom, RED, &format!("custom Heun, ED {:.3}", ed(&custom)))?,
        panel(&langevin, ORANGE, &format!("annealed, ED {:.3}", ed(&langevin)))?,
    ];
    let path = args.out.join("custom_sampler.png");
    save(&plot::hconcat(&panels, 10), &path)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn save(image: &Image, path: &Path) -> AnyResult<()> {
    Ok(image.save(path)?)
}

/// The EMA model and noise levels of `toy_2d`'s checkpoint, if it holds a DSM model of the
/// ring; says why not otherwise.
fn load_toy_2d(dir: &Path, device: &Device) -> Option<(ScoreMlp, GeometricSigmas)> {
    let attempt = || -> AnyResult<Option<(ScoreMlp, GeometricSigmas)>> {
        let info = RunInfo::load(dir.join("run.json"))?;
        if info.data != "ring" || info.objective != "dsm" {
            println!(
                "{} holds a {} model of `{}`, not a dsm model of the ring",
                dir.display(),
                info.objective,
                info.data
            );
            return Ok(None);
        }
        let checkpoint = dir.join("checkpoint");
        let saved = read_checkpoint(&checkpoint)?;
        if saved.step != info.step {
            println!("{}: run.json and the checkpoint disagree", dir.display());
            return Ok(None);
        }
        let (trainer, _) = Trainer::resume::<ScoreMlpConfig>(&checkpoint, device)?;
        let levels = GeometricSigmas::new(info.sigma_min, info.sigma_max, info.levels)?;
        println!(
            "loaded toy_2d's model ({} steps, σ from {} to {} in {} levels) from {}",
            saved.step,
            info.sigma_max,
            info.sigma_min,
            info.levels,
            checkpoint.display()
        );
        Ok(Some((trainer.ema().clone(), levels)))
    };
    match attempt() {
        Ok(found) => found,
        Err(e) => {
            println!("no usable toy_2d checkpoint in {} ({e})", dir.display());
            None
        }
    }
}

/// Trains a small noise-conditional MLP with multi-scale DSM on the ring; the EMA weights.
fn train(
    data: &GaussianMixture,
    steps: u64,
    seed: u64,
    device: &Device,
) -> AnyResult<(ScoreMlp, GeometricSigmas)> {
    // σ_max = 8, the ring's diameter, down to σ_min = 0.05 (a sixth of a component's std).
    let levels = GeometricSigmas::new(0.05, 8.0, 16)?;
    let model_config = ScoreMlpConfig::new(2)
        .with_hidden(64)
        .with_layers(3)
        .with_conditioning(Conditioning::LogSigma)
        .with_scale_by_sigma(true);
    let config = TrainerConfig::new()
        .with_learning_rate(2e-3)
        .with_ema_decay(0.99)
        .with_seed(seed)
        .with_batch_size(256);
    let objective = DenoisingScoreMatching::multi_scale(&levels, levels.levels())?;
    let mut trainer = Trainer::from_config(&model_config, config, device)?;
    let mut progress = Progress::new("train", 0, steps);
    let batch = |rng: &mut StdRng| Ok::<_, FitError>(data.sample(256, device, rng));
    let summary = trainer.fit(&objective, steps, batch, &mut [&mut progress])?;
    println!("trained a noise-conditional MLP for {steps} DSM steps in {:.1} s", summary.seconds);
    Ok((trainer.ema().clone(), levels))
}

/// Runs a sampler behind a progress bar; the samples on the host.
fn run<S: Sampler<ScoreMlp, 2>>(
    name: &str,
    sampler: &S,
    model: &ScoreMlp,
    init: Tensor<2>,
    rng: &mut StdRng,
) -> AnyResult<Vec<[f64; 2]>> {
    let start = Instant::now();
    let progress = progress::bar(1, &format!("{name} {{bar:30}} {{pos}}/{{len}} steps"));
    let x = progress::sample_with_bar(&progress, sampler, model, init, rng)?;
    progress.finish_and_clear();
    println!("{name}: {} samples in {:.1?}", x.dims()[0], start.elapsed());
    points(x)
}

fn points(x: Tensor<2>) -> AnyResult<Vec<[f64; 2]>> {
    let values = x.try_into_vec_as::<f64>().map_err(|e| format!("reading samples: {e:?}"))?;
    Ok(values.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

/// The energy distance `2 E|X − Y| − E|X − X'| − E|Y − Y'|` (V-statistic), zero exactly when
/// the two distributions are equal.
fn energy_distance(x: &[[f64; 2]], y: &[[f64; 2]]) -> f64 {
    let mean_dist = |a: &[[f64; 2]], b: &[[f64; 2]]| {
        let total: f64 =
            a.iter().map(|p| b.iter().map(|q| (p[0] - q[0]).hypot(p[1] - q[1])).sum::<f64>()).sum();
        total / (a.len() * b.len()) as f64
    };
    2.0 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
}

/// The mean and the covariance `(xx, xy, yy)`.
fn moments(x: &[[f64; 2]]) -> ([f64; 2], [f64; 3]) {
    let n = x.len() as f64;
    let m = [x.iter().map(|p| p[0]).sum::<f64>() / n, x.iter().map(|p| p[1]).sum::<f64>() / n];
    let c = |i: usize, j: usize| x.iter().map(|p| (p[i] - m[i]) * (p[j] - m[j])).sum::<f64>() / n;
    (m, [c(0, 0), c(0, 1), c(1, 1)])
}

/// Prints one row of the comparison table (the energy distance to `truth` unless `None`).
fn report(name: &str, x: &[[f64; 2]], truth: Option<&[[f64; 2]]>, data: &GaussianMixture) {
    let (m, c) = moments(x);
    // Each sample's nearest mean: the share of every mode against the true 1/8, and the RMS
    // per-coordinate spread around the nearest mean (the components' std is 0.3).
    let mut counts = vec![0usize; data.means().len()];
    let mut squares = 0.0;
    for p in x {
        let d = |mu: &Vec<f64>| (p[0] - mu[0]).hypot(p[1] - mu[1]);
        let nearest = data.means().iter().map(d).enumerate().min_by(|a, b| a.1.total_cmp(&b.1));
        let (k, dist) = nearest.unwrap_or((0, 0.0));
        counts[k] += 1;
        squares += dist * dist;
    }
    let spread = (squares / (2 * x.len()) as f64).sqrt();
    let share = 1.0 / counts.len() as f64;
    let worst =
        counts.iter().map(|&k| (k as f64 / x.len() as f64 - share).abs()).fold(0.0, f64::max);
    let distance = truth.map_or_else(|| "-".into(), |t| format!("{:.4}", energy_distance(x, t)));
    println!(
        "{name:<28} {distance:>9} {:>16} {:>24} {spread:>11.3} {worst:>10.3}",
        format!("({:.3}, {:.3})", m[0], m[1]),
        format!("({:.3}, {:.3}, {:.3})", c[0], c[1], c[2])
    );
}
