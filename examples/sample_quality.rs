//! Calibrates the sample-quality numbers of `scorefield::eval` (the confident share
//! and the Fréchet distance on the classifier's features) on images whose quality is known:
//! real held-out digits against real digits (the floor, at several sample counts, since the
//! Fréchet distance is biased upwards for small samples), real digits degraded by noise, one
//! digit repeated (mode collapse), and pure noise (the ceiling).
//!
//! ```text
//! cargo run --release --example mnist_classifier -- --data-dir ../shared/data/mnist
//! cargo run --release --example sample_quality -- --data-dir ../shared/data/mnist
//! ```
//!
//! The reference is always the 2,000 held-out digits (8,000..10,000 of the test split), as in
//! `ddpm_mnist`, except for the split-in-two floor, which compares the held-out digits
//! 8,000..9,000 with 9,000..10,000.

#[path = "common/cli.rs"]
mod cli;

#[path = "common/mnist_args.rs"]
mod mnist_args;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use mnist_args::MnistArgs;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scorefield::eval::{self, CLASSIFIER_HELD_OUT, CLASSIFIER_TRAIN, MnistClassifier};
use scorefield::random::standard_normal;

/// Command-line options.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    mnist: MnistArgs,
    /// The directory of the classifier saved by the mnist_classifier example.
    #[arg(long, default_value = "out/mnist_classifier")]
    classifier: PathBuf,
    /// The seed of the noise images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `n` images of i.i.d. `U(0, 1)` pixels.
fn uniform_noise(n: usize, device: &Device, rng: &mut StdRng) -> Tensor<4> {
    let values: Vec<f32> = (0..n * 784).map(|_| rng.random()).collect();
    Tensor::from_data(TensorData::new(values, [n, 1, 28, 28]), device)
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "common/alloc.rs"]
mod alloc;

fn main() -> std::process::ExitCode {
    cli::exit_code(run())
}

fn run() -> cli::AnyResult<()> {
    let args = Args::parse();
    let (device, dir, data) = args.mnist.open()?;
    if data.len() < CLASSIFIER_HELD_OUT.end {
        return Err(format!("need {} digits, found {}", CLASSIFIER_HELD_OUT.end, data.len()).into());
    }
    let classifier = MnistClassifier::load(&args.classifier, &device).map_err(|e| {
        format!(
            "{e}\n(train it first: cargo run --release --example mnist_classifier -- --data-dir {})",
            dir.display()
        )
    })?;
    let start = Instant::now();
    let held_out: Vec<usize> = CLASSIFIER_HELD_OUT.collect();
    let accuracy = eval::accuracy(&classifier, &data, &held_out, &device)?;
    println!(
        "classifier from {}: held-out accuracy {:.2}% on {} digits",
        args.classifier.display(),
        100.0 * accuracy,
        held_out.len()
    );
    let reference = data.images(&held_out, &device)?;
    let digits = |range: std::ops::Range<usize>| data.images(&range.collect::<Vec<_>>(), &device);
    let row = |name: &str, samples: Tensor<4>, reference: Tensor<4>| -> scorefield::Result<()> {
        let r = eval::evaluate(&classifier, samples, reference)?;
        println!(
            "{name:<44} {:>5} {:>5} {:>9.1}% {:>10.3}",
            r.samples,
            r.reference,
            100.0 * r.confident_share,
            r.frechet_distance
        );
        Ok(())
    };
    println!("\n{:<44} {:>5} {:>5} {:>10} {:>10}", "samples", "n", "ref", "confident", "Fréchet");
    let half = CLASSIFIER_HELD_OUT.start + held_out.len() / 2;
    let second_half = digits(half..CLASSIFIER_HELD_OUT.end)?;
    for n in [16, 64, 256, 1000] {
        let name = format!(
            "real, held-out {}..{} vs the other half",
            CLASSIFIER_HELD_OUT.start,
            CLASSIFIER_HELD_OUT.start + n
        );
        row(
            &name,
            digits(CLASSIFIER_HELD_OUT.start..CLASSIFIER_HELD_OUT.start + n)?,
            second_half.clone(),
        )?;
    }
    let train_start = CLASSIFIER_TRAIN.start;
    for n in [16, 64, 256, 1000] {
        let name = format!("real, digits {train_start}..{} (as ddpm_mnist)", train_start + n);
        row(&name, digits(train_start..train_start + n)?, reference.clone())?;
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let real = digits(train_start..train_start + 1000)?;
    for sigma in [0.1, 0.3, 0.5] {
        let noise = standard_normal([1000, 1, 28, 28], &device, &mut rng).mul_scalar(sigma);
        let name = format!("real + N(0, {sigma}²) noise, clamped");
        row(&name, real.clone().add(noise).clamp(0.0, 1.0), reference.clone())?;
    }
    let one = digits(train_start..train_start + 1)?.repeat_dim(0, 64);
    row("one real digit repeated (mode collapse)", one, reference.clone())?;
    for n in [64, 1000] {
        row("uniform noise U(0, 1)", uniform_noise(n, &device, &mut rng), reference.clone())?;
    }
    println!("\n(evaluated in {:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}
