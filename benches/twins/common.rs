//! What the twin benches share: their command line and their one-line report.
//!
//! Every twin takes `--workload train|sample`, `--steps N` (training steps, or Langevin steps
//! per level when sampling), `--warmup W` (untimed steps first), `--threads T` and, for
//! training, `--read-every K` (`Trainer::step_deferred`, the reports read every `K` steps in
//! one transfer; 1, the default, is `Trainer::fit`'s read per step) and `--device-noise`
//! (DSM's noise drawn on the device: `DenoisingScoreMatching::with_device_noise`). Threads:
//! Burn's `flex` backend runs its parallel kernels on rayon's global pool, which `--threads`
//! builds with `T` threads; without the flag rayon reads `RAYON_NUM_THREADS`, else uses one
//! thread per core. Unknown arguments (`--bench`, passed by `cargo bench`) are ignored.

use std::convert::Infallible;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use scorefield::nn::{Trainer, TrainerConfig};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::sampler::{AnnealedLangevin, Sampler};
use scorefield::schedule::GeometricSigmas;
use scorefield::{Objective, ScoreModel};

/// Training or sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Denoising score matching steps with Adam.
    Train,
    /// Annealed Langevin dynamics, 10 levels.
    Sample,
}

/// The parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// What to run.
    pub workload: Workload,
    /// Timed training steps, or Langevin steps per level.
    pub steps: usize,
    /// Untimed steps first: training steps, or Langevin steps on one level.
    pub warmup: usize,
    /// The size of rayon's pool (`None`: rayon's default).
    pub threads: Option<usize>,
    /// The compiled-in backend (`flex` unless `--backend`).
    pub backend: String,
    /// Training: read the steps' reports every this many steps (1: every step, `fit`).
    pub read_every: usize,
    /// Training: DSM's noise drawn on the device.
    pub device_noise: bool,
}

/// Parses the command line; `default_steps` for each workload when `--steps` is absent. Exits
/// with status 2 and `usage` on a bad argument; sizes rayon's pool when `--threads` is given.
pub fn parse_args(usage: &str, default_steps: [usize; 2]) -> Args {
    let args = parse(default_steps).unwrap_or_else(|e| {
        eprintln!("{e}\n{usage}");
        std::process::exit(2)
    });
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().expect("rayon pool");
    }
    args
}

fn parse(default_steps: [usize; 2]) -> Result<Args, String> {
    let mut out = Args {
        workload: Workload::Train,
        steps: usize::MAX,
        warmup: 2,
        threads: None,
        backend: "flex".into(),
        read_every: 1,
        device_noise: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--workload" => {
                out.workload = match value()?.as_str() {
                    "train" => Workload::Train,
                    "sample" => Workload::Sample,
                    other => return Err(format!("unknown workload {other}")),
                }
            }
            "--steps" => out.steps = number(value()?)?,
            "--warmup" => out.warmup = number(value()?)?,
            "--threads" => out.threads = Some(number(value()?)?),
            "--backend" => out.backend = value()?,
            "--read-every" => out.read_every = number(value()?)?.max(1),
            "--device-noise" => out.device_noise = true,
            _ => {}
        }
    }
    if out.steps == usize::MAX {
        out.steps = default_steps[usize::from(out.workload == Workload::Sample)];
    }
    Ok(out)
}

/// Times `f` and returns its result and the elapsed seconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// The training workload of both twins: `args.warmup` untimed, then `args.steps` timed
/// multi-scale DSM steps (NCSN's 10 levels) of the library's trainer on batches of `batch`
/// taken in turn from `data` (`pool` of them); see [`fit_on_pool`]. The PyTorch twin's step
/// does the same work. Returns the last loss and the mean seconds per timed step.
pub fn train_dsm<M, const D: usize>(
    model: M,
    data: Tensor<D>,
    batch: usize,
    pool: usize,
    args: &Args,
) -> (f32, f64)
where
    M: Module + ScoreModel<D>,
{
    let dsm = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).expect("levels");
    let dsm = dsm.with_device_noise(args.device_noise);
    let steps = Steps { warmup: args.warmup, timed: args.steps, read_every: args.read_every };
    let (loss, seconds) = fit_on_pool(model, &dsm, &data, batch, pool, steps);
    (loss as f32, seconds / args.steps.max(1) as f64)
}

/// How many training steps [`fit_on_pool`] takes, and how it reads them.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub timed: usize,
    /// Read the reports every this many steps (1: `Trainer::fit`, a read per step).
    pub read_every: usize,
}

/// `warmup` untimed, then `timed` timed steps of `Trainer::fit` with the trainer's
/// defaults (Adam with lr 1e-3, β = (0.9, 0.999) and ε = 1e-8, PyTorch's defaults; the global
/// gradient norm checked; EMA 0.999; the loss, the per-sample losses and levels read back) on
/// the batches of `batch` rows of `data` in turn (`pool` of them); with `read_every > 1`,
/// `Trainer::step_deferred` steps whose reports are read every `read_every` steps (and at the
/// end of the warm-up and of the timed steps). Returns the last loss and the seconds of the
/// timed steps. Shared by the twins and `benches/objectives_twin.rs`.
pub fn fit_on_pool<M, O, const D: usize>(
    model: M,
    objective: &O,
    data: &Tensor<D>,
    batch: usize,
    pool: usize,
    steps: Steps,
) -> (f64, f64)
where
    M: Module,
    O: Objective<M, D>,
{
    let config = TrainerConfig::new().with_batch_size(batch);
    let mut trainer = Trainer::new(model, "{}", config).expect("trainer");
    let mut taken = 0;
    let mut next = |_: &mut StdRng| {
        let x = data.clone().narrow(0, (taken % pool) * batch, batch);
        taken += 1;
        Ok::<_, Infallible>(x)
    };
    let Steps { warmup, timed, read_every } = steps;
    let mut train = |trainer: &mut Trainer<M>, until: u64| -> (Option<f64>, f64) {
        let start = Instant::now();
        if read_every <= 1 {
            let fit = trainer.fit(objective, until, &mut next, &mut []).expect("training");
            return (fit.last.map(|report| report.loss), fit.seconds);
        }
        let mut last = None;
        while trainer.steps() < until {
            let x = next(&mut trainer.batch_rng()).expect("batch");
            trainer.step_deferred(objective, x).expect("deferred step");
            if trainer.deferred_steps() >= read_every || trainer.steps() == until {
                let reports = trainer.read_deferred().expect("finite steps");
                last = reports.last().map(|report| report.loss);
            }
        }
        (last, start.elapsed().as_secs_f64())
    };
    let (warm, _) = train(&mut trainer, warmup as u64);
    let (timed, seconds) = train(&mut trainer, (warmup + timed) as u64);
    (timed.or(warm).unwrap_or(f64::NAN), seconds)
}

/// The sampling workload of both twins: NCSN's annealed Langevin (10 levels, step `ε`) from
/// `init(rng)`, `args.warmup` steps per level untimed, then `args.steps` per level timed.
/// Returns the mean seconds per Langevin step.
pub fn sample_annealed<M, const D: usize>(
    model: &M,
    eps: f64,
    init: impl Fn(&mut StdRng) -> Tensor<D>,
    args: &Args,
    rng: &mut StdRng,
) -> f64
where
    M: ScoreModel<D>,
{
    let levels = GeometricSigmas::ncsn();
    let sample = |steps: usize, rng: &mut StdRng| {
        let sampler = AnnealedLangevin::ncsn(levels, steps, eps).expect("sampler");
        let x = init(rng);
        sampler.sample(model, x, rng, &mut ()).expect("finite samples")
    };
    if args.warmup > 0 {
        sample(args.warmup, rng);
    }
    let (_, seconds) = timed(|| sample(args.steps, rng));
    seconds / (levels.levels() * args.steps).max(1) as f64
}

/// Prints the one-line report: `scorefield <name> <workload> threads=T params=P steps=N
/// loss=L s_per_step=S` (`loss` only for training).
pub fn report(name: &str, args: &Args, params: usize, loss: Option<f32>, per_step: f64) {
    let workload = match args.workload {
        Workload::Train => "train",
        Workload::Sample => "sample",
    };
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let loss = loss.map(|l| format!(" loss={l:.6}")).unwrap_or_default();
    println!(
        "scorefield {} {name} {workload} threads={threads} params={params} steps={}{loss} \
         s_per_step={per_step:.6}",
        args.backend, args.steps
    );
}
