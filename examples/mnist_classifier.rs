//! Trains the small MNIST classifier that judges generated digits
//! (`scorefield::eval`) and saves it for `ddpm_mnist` and `sample_quality`.
//!
//! ```text
//! cargo run --release --example mnist_classifier -- --data-dir ../shared/data/mnist
//! ```
//!
//! Only MNIST's test split is available offline, so the classifier trains on its first 8,000
//! digits and is measured on the last 2,000, which it never sees (with the training split in
//! the directory the same index ranges are used). It is written to `--out`
//! (`out/mnist_classifier/`: `classifier.json`, the configuration, and `classifier.bpk`, the
//! parameters as a burnpack record).

#[path = "common/cli.rs"]
mod cli;

#[path = "common/mnist_args.rs"]
mod mnist_args;

#[path = "common/progress.rs"]
mod progress;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use mnist_args::MnistArgs;
use scorefield::eval::{
    CLASSIFIER_HELD_OUT, CLASSIFIER_TRAIN, ClassifierTrainingConfig, MnistClassifierConfig,
    accuracy, train_classifier,
};

/// Command-line options.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    mnist: MnistArgs,
    /// Where to save the classifier.
    #[arg(long, default_value = "out/mnist_classifier")]
    out: PathBuf,
    /// Passes over the 8,000 training digits.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Digits per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f64,
    /// Seeds the weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    println!("MNIST {:?} split: {} digits from {}", data.split, data.len(), dir.display());
    if data.len() < CLASSIFIER_HELD_OUT.end {
        return Err(format!("need {} digits, found {}", CLASSIFIER_HELD_OUT.end, data.len()).into());
    }
    let train: Vec<usize> = CLASSIFIER_TRAIN.collect();
    let held_out: Vec<usize> = CLASSIFIER_HELD_OUT.collect();

    let config = MnistClassifierConfig::new();
    let training = ClassifierTrainingConfig::new()
        .with_epochs(args.epochs)
        .with_batch_size(args.batch_size)
        .with_learning_rate(args.learning_rate)
        .with_seed(args.seed);
    println!("classifier {config}");
    let bar =
        progress::bar(0, "training {bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}");
    let start = Instant::now();
    let mut smoothed = None;
    let classifier = train_classifier(&config, &training, &data, &train, &device, &mut |s| {
        bar.set_length(s.total as u64);
        bar.set_position(s.step as u64 + 1);
        let loss = smoothed.map_or(s.loss, |m: f64| 0.95 * m + 0.05 * s.loss);
        smoothed = Some(loss);
        bar.set_message(format!("epoch {} loss {loss:.4}", s.epoch + 1));
    })?;
    bar.finish();
    let train_time = start.elapsed();

    let start = Instant::now();
    let held_out_accuracy = accuracy(&classifier, &data, &held_out, &device)?;
    let train_accuracy = accuracy(&classifier, &data, &train, &device)?;
    println!(
        "trained in {:.1} s ({} epochs of {} digits); accuracy: training {:.2}%, held-out \
         ({} digits {}..{}) {:.2}% (evaluated in {:.1} s)",
        train_time.as_secs_f64(),
        args.epochs,
        train.len(),
        100.0 * train_accuracy,
        held_out.len(),
        CLASSIFIER_HELD_OUT.start,
        CLASSIFIER_HELD_OUT.end,
        100.0 * held_out_accuracy,
        start.elapsed().as_secs_f64()
    );
    classifier.save(&args.out)?;
    println!("saved to {}", args.out.display());
    Ok(())
}
