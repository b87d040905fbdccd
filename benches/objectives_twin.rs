//! The scorefield half of a side-by-side timing against PyTorch: `N` training steps of one
//! objective, step for step the same as `benches/pytorch/objectives.py`, so that the two
//! programs can be timed as whole processes and compared as a ratio.
//!
//! Each run builds the `ScoreMlp` of `benches/objectives.rs` (3 hidden layers of 128 SiLU
//! units; unconditioned for exact and sliced SM, conditioned on `ln σ` with the NCSN output
//! scaling for DSM), a pool of 64 batches of 64 standard-normal samples in f32, drawn at set-up
//! and used in turn (on one fixed batch exact and sliced SM diverge to −∞ within a few thousand
//! steps), and the trainer's Adam (lr 1e-3, β = (0.9, 0.999), ε = 1e-8, as PyTorch's
//! defaults). It runs `--warmup` steps (3 by default), then `N` timed steps of `Trainer::fit`
//! (loss, `backward`, the global gradient norm, Adam update, EMA, the losses read back to the
//! host; `twins/common.rs`'s `fit_on_pool`), and prints one line: the parameter count, the
//! last loss and the
//! mean in-process time per step. `--steps 0` runs the set-up and warm-up only, so the fixed
//! cost of a process can be subtracted from a timed run.
//!
//! Objectives (`--objective`):
//!
//! - `exact`: `ExactScoreMatching`, `tr J` from the `d` basis tangents in one forward-mode pass;
//! - `sliced`: `SlicedScoreMatching::variance_reduced(1, Rademacher)`, one exact forward-mode JVP;
//! - `fd_sliced`: the same through `FiniteDifference` (h = 1e-3): three plain forward passes;
//! - `dsm`: `DenoisingScoreMatching::multi_scale` over 10 geometric σ from 1 to 0.01.
//!
//! ```text
//! cargo build --release --bench objectives_twin
//! target/release/deps/objectives_twin-<hash> --objective exact --dim 64 --steps 20
//! python benches/pytorch/objectives.py --objective exact --dim 64 --steps 20
//! ```
//!
//! `--backend NAME` picks another compiled-in device (default `flex`). Unknown arguments
//! (`--bench`, passed by `cargo bench`) are ignored. Results: `docs/objectives_benchmark.md`.

#[path = "twins/common.rs"]
#[allow(dead_code)] // the twins' command line and reports: not this bench's
mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::{Steps, fit_on_pool};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::Objective;
use scorefield::core::jvp::{SUGGESTED_STEP_F32, ThroughFiniteDifference};
use scorefield::nn::{Conditioning, ScoreMlp, ScoreMlpConfig};
use scorefield::objective::{
    DenoisingScoreMatching, ExactScoreMatching, Projection, SlicedScoreMatching,
};
use scorefield::random::standard_normal;
use scorefield::schedule::GeometricSigmas;

const BATCH: usize = 64;
/// The data: this many batches of N(0, I) samples drawn at set-up, used in turn.
const POOL: usize = 64;
const HIDDEN: usize = 128;
const LAYERS: usize = 3;
const EMBEDDING: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Sliced,
    FdSliced,
    Dsm,
}

impl Kind {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(Kind::Exact),
            "sliced" => Some(Kind::Sliced),
            "fd_sliced" => Some(Kind::FdSliced),
            "dsm" => Some(Kind::Dsm),
            _ => None,
        }
    }
}

struct Args {
    kind: Kind,
    dim: usize,
    steps: usize,
    warmup: usize,
    backend: String,
}

const USAGE: &str = "usage: objectives_twin --objective exact|sliced|fd_sliced|dsm --dim D \
                     --steps N [--warmup 3] [--backend flex]";

/// Parses `--objective`, `--dim`, `--steps`, `--warmup` and `--backend` (each followed by its
/// value); anything else is ignored.
fn parse_args() -> Result<Args, String> {
    let (mut kind, mut dim, mut steps) = (None, None, None);
    let (mut warmup, mut backend) = (3, "flex".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--objective" => {
                let name = value()?;
                kind = Some(Kind::parse(&name).ok_or(format!("unknown objective {name}"))?);
            }
            "--dim" => dim = Some(value()?.parse().map_err(|e| format!("--dim: {e}"))?),
            "--steps" => steps = Some(value()?.parse().map_err(|e| format!("--steps: {e}"))?),
            "--warmup" => warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--backend" => backend = value()?,
            _ => {}
        }
    }
    match (kind, dim, steps) {
        (Some(kind), Some(dim), Some(steps)) if dim > 0 => {
            Ok(Args { kind, dim, steps, warmup, backend })
        }
        _ => Err(USAGE.to_string()),
    }
}

/// `ScoreMlp`'s parameter count from its layer shapes (`crates/scorefield-nn/src/mlp.rs`),
/// the same closed form as the Python twin's.
fn expected_params(d: usize, conditioned: bool) -> usize {
    let h = HIDDEN;
    let mut n = (d * h + h) + (LAYERS - 1) * (h * h + h) + (h * d + d);
    if conditioned {
        n += (EMBEDDING * h + h) + LAYERS * h * h;
    }
    n
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "../examples/common/alloc.rs"]
mod alloc;

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let device: Device = scorefield::device(&args.backend).expect("backend compiled in").autodiff();
    let conditioned = args.kind == Kind::Dsm;
    let conditioning = if conditioned { Conditioning::LogSigma } else { Conditioning::None };
    let model = ScoreMlpConfig::new(args.dim)
        .with_hidden(HIDDEN)
        .with_layers(LAYERS)
        .with_embedding(EMBEDDING)
        .with_conditioning(conditioning)
        .with_scale_by_sigma(conditioned)
        .init(&device);
    let params = model.num_params();
    assert_eq!(params, expected_params(args.dim, conditioned), "ScoreMlp parameter count");

    let mut rng = StdRng::seed_from_u64(0);
    let data: Tensor<2> = standard_normal([POOL * BATCH, args.dim], &device, &mut rng);
    let sliced = SlicedScoreMatching::variance_reduced(1, Projection::Rademacher);
    let sigmas = GeometricSigmas::new(0.01, 1.0, 10).expect("valid levels");
    let dsm = DenoisingScoreMatching::multi_scale(&sigmas, 10).expect("valid levels");
    let (loss, seconds) = match args.kind {
        Kind::Exact => train(model, &ExactScoreMatching::new(), &data, &args),
        Kind::Sliced => train(model, &sliced, &data, &args),
        Kind::FdSliced => {
            let fd = ThroughFiniteDifference::new(sliced, SUGGESTED_STEP_F32).expect("step");
            train(model, &fd, &data, &args)
        }
        Kind::Dsm => train(model, &dsm, &data, &args),
    };
    let per_step = if args.steps > 0 { seconds / args.steps as f64 * 1e3 } else { f64::NAN };
    let name = match args.kind {
        Kind::Exact => "exact",
        Kind::Sliced => "sliced",
        Kind::FdSliced => "fd_sliced",
        Kind::Dsm => "dsm",
    };
    println!(
        "scorefield {} objective={name} dim={} params={params} steps={} loss={loss:.6} \
         step_ms={per_step:.3}",
        args.backend, args.dim, args.steps
    );
}

/// The trainer's steps on this bench's pool of batches ([`fit_on_pool`]): the last loss and
/// the seconds of the timed steps.
fn train<O: Objective<ScoreMlp, 2>>(
    model: ScoreMlp,
    objective: &O,
    data: &Tensor<2>,
    args: &Args,
) -> (f64, f64) {
    let steps = Steps { warmup: args.warmup, timed: args.steps, read_every: 1 };
    fit_on_pool(model, objective, data, BATCH, POOL, steps)
}
