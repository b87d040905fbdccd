//! Data-parallel training on several CUDA devices of one machine, through Burn's all-reduce
//! (`scorefield::nn::train::DataParallel`, `docs/training.md`): the same DSM run of a 2-D
//! `ScoreMlp` on one device, on `N` ranks simulated on one device, and on `N` devices.
//!
//! ```text
//! cargo run --release --features cuda --example data_parallel -- --devices 2
//! ```
//!
//! Prints the seconds per step of each run and checks that `N` devices agree with `N`
//! simulated ranks, step by step (the same shards and random streams; the all-reduce sums in
//! another order, so to float tolerance, not bit for bit). Exits with an error if they do not.

use std::error::Error;
use std::time::Instant;

use burn::config::Config;
use std::ops::ControlFlow;

use burn::tensor::Device;
use clap::Parser;
use scorefield::analytic::GaussianMixture;
use scorefield::nn::train::DataParallel;
use scorefield::nn::{FitError, ScoreMlp, ScoreMlpConfig, StepReport, Trainer, TrainerConfig};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::schedule::GeometricSigmas;

#[derive(Parser, Debug)]
struct Args {
    /// The number of CUDA devices `N` (devices 0 .. N−1).
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Steps per run.
    #[arg(long, default_value_t = 30)]
    steps: u64,
    /// The global batch size (a multiple of `--devices`).
    #[arg(long, default_value_t = 8192)]
    batch: usize,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let devices: Vec<Device> = (0..args.devices).map(Device::cuda).collect();
    let main_device = devices[0].clone();
    let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2])?;
    let model_config = ScoreMlpConfig::new(2).with_hidden(args.hidden).with_layers(3);
    let config = TrainerConfig::new()
        .with_batch_size(args.batch)
        .with_grad_clip_norm(Some(1.0))
        .with_seed(1);
    let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
    let init = model_config.init(&main_device);

    // One run: a first step untimed (kernels compile), then `steps − 1` timed ones. Returns
    // the seconds per timed step and every step's loss.
    let run = |parallel: Option<DataParallel>| -> Result<(f64, Vec<f64>), Box<dyn Error>> {
        let mut trainer = Trainer::new(init.clone(), model_config.to_string(), config.clone())?;
        trainer.set_data_parallel(parallel)?;
        let batch = |rng: &mut rand::rngs::StdRng| {
            Ok::<_, FitError>(data.sample(args.batch, &main_device, rng))
        };
        let mut losses = Vec::new();
        let mut record = |_: &Trainer<ScoreMlp>, report: &StepReport| {
            losses.push(report.loss);
            Ok::<_, FitError>(ControlFlow::Continue(()))
        };
        trainer.fit(&objective, 1, batch, &mut [&mut record])?;
        main_device.sync()?;
        let start = Instant::now();
        let summary = trainer.fit(&objective, args.steps, batch, &mut [&mut record])?;
        main_device.sync()?;
        let per_step = start.elapsed().as_secs_f64() / summary.steps.max(1) as f64;
        Ok((per_step, losses))
    };

    let n = args.devices;
    let (t1, _) = run(None)?;
    println!("1 device:                 {t1:.4} s/step");
    let (ts, simulated) = run(Some(DataParallel::simulated(n)?))?;
    println!("{n} ranks simulated on 1: {ts:.4} s/step");
    let (tn, parallel) = run(Some(DataParallel::devices(devices)?))?;
    println!("{n} devices:                {tn:.4} s/step, speed-up {:.2}× over 1 device", t1 / tn);

    // The same shards and streams: the losses of every step agree up to the rounding of the
    // gradient sums, which the updates carry forward.
    let worst = simulated
        .iter()
        .zip(&parallel)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3))
        .fold(0.0f64, f64::max);
    println!(
        "{n} devices vs {n} simulated ranks: max relative loss difference over {} steps {worst:.2e}",
        parallel.len()
    );
    if worst > 1e-3 {
        return Err(format!("{n} devices disagree with {n} simulated ranks ({worst:.2e})").into());
    }
    Ok(())
}
