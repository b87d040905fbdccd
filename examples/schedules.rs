//! A tour of the noise schedules and the exact mixture oracle, on a backend chosen at run
//! time.
//!
//! ```text
//! cargo run --release --example schedules                    # CPU (flex)
//! cargo run --release --example schedules --features wgpu -- --backend wgpu
//! ```
//!
//! Prints each schedule's marginal `xₜ = m(t)·x₀ + σ(t)·z` along a 6-point sampling grid,
//! then the exact score of a perturbed 2-D Gaussian mixture, evaluated on the chosen device.

#[path = "common/cli.rs"]
mod cli;

use burn::tensor::Tensor;
use clap::Parser;
use scorefield::schedule::{BetaSchedule, Ddpm, GeometricSigmas, Karras, SubVpSde, VeSde, VpSde};
use scorefield::{NoiseLevel, NoiseSchedule, ScoreModel};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// The compute backend: flex, ndarray, wgpu or cuda (the last three need their cargo
    /// feature).
    #[arg(long, default_value = "flex")]
    backend: String,
}

fn table<S: NoiseSchedule>(name: &str, schedule: &S) -> scorefield::Result<()> {
    println!("\n{name}: t in {:?}, prior N(0, {}²)", schedule.time_range(), schedule.prior_std());
    println!("{:>12} {:>12} {:>12} {:>12} {:>12}", "t", "m(t)", "σ(t)", "f(t)", "g(t)");
    for t in schedule.grid(6)? {
        let m = schedule.marginal(t);
        let (f, g) = (schedule.drift_coefficient(t), schedule.diffusion(t));
        println!("{t:>12.5} {:>12.5e} {:>12.5e} {f:>12.5e} {g:>12.5e}", m.scale, m.std);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    cli::exit_code(run())
}

fn run() -> cli::AnyResult<()> {
    let args = Args::parse();
    let device = scorefield::device(&args.backend)?;
    println!("backend: {} ({device:?})", args.backend);

    table("geometric σ (NCSN)", &GeometricSigmas::ncsn())?;
    table("VE SDE", &VeSde::cifar10())?;
    table("VP SDE", &VpSde::ddpm())?;
    table("sub-VP SDE", &SubVpSde::ddpm())?;
    table("DDPM linear β", &Ddpm::new(BetaSchedule::linear(), 1000)?)?;
    table("DDPM cosine β", &Ddpm::new(BetaSchedule::cosine(), 1000)?)?;
    table("Karras σ (EDM)", &Karras::edm())?;

    let mixture = scorefield::data::toy::ring(8, 4.0, 0.2)?;
    let vp = VpSde::ddpm();
    let x = Tensor::<2>::from_floats([[4.0, 0.0], [0.0, 0.0], [2.0, 2.0]], &device);
    println!("\nexact score of the perturbed 8-Gaussian ring under the VP SDE:");
    for t in [0.0, 0.1, 0.5, 1.0] {
        let level = NoiseLevel::constant(&vp, t, 3, &device);
        let score = mixture.score(x.clone(), &level).try_into_vec_as::<f32>().expect("readback");
        println!("  t = {t:<4} s(x) at (4,0), (0,0), (2,2): {score:.3?}");
    }
    Ok(())
}
