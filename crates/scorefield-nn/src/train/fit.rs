//! `fit`: the one training loop, with callbacks.
//!
//! ```text
//! while trainer.steps() < until:
//!     x₀     = batch(trainer.batch_rng())          (the step's own stream: resumable)
//!     report = trainer.step(objective, x₀)
//!     for each callback: on_step(trainer, report)  (log, checkpoint, sample, evaluate; Break stops)
//! for each callback: on_end(trainer)               (final checkpoint, final log rows)
//! ```
//!
//! `until` is the total step count, not the number of steps to add: a run resumed from a
//! checkpoint at step `k` takes `until − k` more steps and ends where the uninterrupted run
//! would have, bit for bit. The built-in callbacks are [`Checkpoints`] (save every `k`
//! steps and at the end), [`LossCsv`] (the loss per noise level, resumable from its own
//! file), [`Progress`] (a progress bar) and [`every`] (any closure every `k` steps); any
//! `FnMut(&Trainer<M>, &StepReport) -> Result<ControlFlow<()>, FitError>` is a callback too.
//!
//! ```
//! use std::ops::ControlFlow;
//! use scorefield_core::analytic::GaussianMixture;
//! use scorefield_core::objective::DenoisingScoreMatching;
//! use scorefield_core::schedule::GeometricSigmas;
//! use scorefield_nn::train::{FitError, StepReport};
//! use scorefield_nn::{ScoreMlp, ScoreMlpConfig, Trainer, TrainerConfig};
//!
//! let device = scorefield_core::device("flex")?;
//! let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2])?;
//! let model_config = ScoreMlpConfig::new(2).with_hidden(32).with_layers(2);
//! let config = TrainerConfig::new().with_batch_size(64);
//! let mut trainer = Trainer::new(model_config.init(&device), model_config.to_string(), config)?;
//! let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
//! // Stop early once the loss is small (it will not be, in 5 steps).
//! let mut stop = |_: &Trainer<ScoreMlp>, r: &StepReport| -> Result<ControlFlow<()>, FitError> {
//!     Ok(if r.loss < 1e-6 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
//! };
//! let batch = |rng: &mut rand::rngs::StdRng| Ok::<_, FitError>(data.sample(64, &device, rng));
//! let summary = trainer.fit(&objective, 5, batch, &mut [&mut stop])?;
//! assert_eq!((summary.steps, trainer.steps()), (5, 5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;

use super::checkpoint::CheckpointError;
use super::loss_log::LossLog;
use super::trainer::{StepReport, TrainBatch, Trainer};

/// Why [`Trainer::fit`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FitError {
    /// A step failed (a non-finite loss or gradient, or the objective's error); the trainer
    /// holds the state before it.
    #[error("training step failed: {0}")]
    Step(#[from] scorefield_core::Error),
    /// Saving or reading a checkpoint or the loss log failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The batch source failed.
    #[error("could not draw a batch: {0}")]
    Data(Box<dyn std::error::Error + Send + Sync>),
    /// A callback failed.
    #[error("callback failed: {0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

/// What a [`Trainer::fit`] run did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// The steps this call took.
    pub steps: u64,
    /// Whether a callback stopped the run before `until`.
    pub stopped: bool,
    /// The report of the last step taken, if any.
    pub last: Option<StepReport>,
    /// The wall-clock seconds of the run, callbacks included.
    pub seconds: f64,
}

/// Called by [`Trainer::fit`] after every step and once at the end.
pub trait Callback<M: Module> {
    /// After step `report.step`; `ControlFlow::Break(())` ends the run (then
    /// [`on_end`](Self::on_end) runs).
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError>;

    /// When the run ends, normally or stopped (not after an error). Default: nothing.
    fn on_end(&mut self, _trainer: &Trainer<M>) -> Result<(), FitError> {
        Ok(())
    }
}

/// Any closure over the trainer and the report is a callback.
impl<M: Module, F> Callback<M> for F
where
    F: FnMut(&Trainer<M>, &StepReport) -> Result<ControlFlow<()>, FitError>,
{
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError> {
        self(trainer, report)
    }
}

impl<M: Module> Trainer<M> {
    /// Trains until `self.steps() == until` (the total, so a resumed run ends where the
    /// uninterrupted one would), drawing each batch with `batch(&mut trainer.batch_rng())`
    /// and calling every callback after each step (see the module docs). A batch is
    /// a data tensor, or a data tensor with a condition per sample ([`TrainBatch`]; draw the
    /// label dropout of classifier-free training from the same generator).
    ///
    /// Errors with [`FitError::Step`] if a step fails (the trainer keeps the state before
    /// it), [`FitError::Data`] if `batch` fails, and whatever a callback returns.
    pub fn fit<O, T, B, E, const D: usize>(
        &mut self,
        objective: &O,
        until: u64,
        mut batch: B,
        callbacks: &mut [&mut dyn Callback<M>],
    ) -> Result<FitSummary, FitError>
    where
        O: ?Sized,
        T: TrainBatch<M, O, D>,
        B: FnMut(&mut StdRng) -> Result<T, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (first, mut last, mut stopped) = (self.steps(), None, false);
        while self.steps() < until && !stopped {
            let x0 = batch(&mut self.batch_rng()).map_err(|e| FitError::Data(e.into()))?;
            let report = self.step(objective, x0)?;
            for callback in callbacks.iter_mut() {
                stopped |= callback.on_step(self, &report)?.is_break();
            }
            last = Some(report);
        }
        for callback in callbacks.iter_mut() {
            callback.on_end(self)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(FitSummary { steps: self.steps() - first, stopped, last, seconds })
    }
}

/// A callback that runs `f` after every `k`-th step (by the trainer's step count).
pub fn every<M: Module, F>(k: u64, f: F) -> Every<F>
where
    F: FnMut(&Trainer<M>, &StepReport) -> Result<(), FitError>,
{
    Every { k: k.max(1), f }
}

/// See [`every`].
#[derive(Debug)]
pub struct Every<F> {
    k: u64,
    f: F,
}

impl<M: Module, F> Callback<M> for Every<F>
where
    F: FnMut(&Trainer<M>, &StepReport) -> Result<(), FitError>,
{
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError> {
        if trainer.steps().is_multiple_of(self.k) {
            (self.f)(trainer, report)?;
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Saves a checkpoint into `dir` every `k` steps and at the end of the run (unless the
/// last save was at that step), and, when the trainer tracks a post-hoc EMA, a snapshot of
/// its profiles into `dir/posthoc-ema/` every
/// [`snapshot_every`](super::PostHocEma::snapshot_every) steps ([`Trainer::save_snapshot`]).
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    every: u64,
    saved_at: Option<u64>,
    last: Option<PathBuf>,
}

impl Checkpoints {
    /// Checkpoints into `dir` every `every` steps (`0`: only at the end).
    pub fn new(dir: impl Into<PathBuf>, every: u64) -> Self {
        Checkpoints { dir: dir.into(), every, saved_at: None, last: None }
    }

    /// The checkpoint written last, if any.
    pub fn last(&self) -> Option<&Path> {
        self.last.as_deref()
    }

    fn save<M: Module>(&mut self, trainer: &Trainer<M>) -> Result<(), FitError> {
        self.last = Some(trainer.save(&self.dir)?);
        self.saved_at = Some(trainer.steps());
        Ok(())
    }
}

impl<M: Module> Callback<M> for Checkpoints {
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        _report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError> {
        if trainer.snapshot_due() {
            trainer.save_snapshot(&self.dir)?;
        }
        if self.every > 0 && trainer.steps().is_multiple_of(self.every) {
            self.save(trainer)?;
        }
        Ok(ControlFlow::Continue(()))
    }

    fn on_end(&mut self, trainer: &Trainer<M>) -> Result<(), FitError> {
        if self.saved_at != Some(trainer.steps()) && trainer.steps() > 0 {
            self.save(trainer)?;
        }
        Ok(())
    }
}

/// Records every step's per-sample losses in a [`LossLog`], and every `k` steps (and at the
/// end) appends its rows and rewrites the CSV at `path` atomically. Resumed from a
/// checkpoint at step `s`, [`LossCsv::resume`] keeps the file's rows up to `s` (those after
/// it belong to steps the resumed run takes again), so the file needs no splicing.
#[derive(Debug, Clone)]
pub struct LossCsv {
    log: LossLog,
    path: PathBuf,
    every: u64,
}

impl LossCsv {
    /// A fresh log binned by `levels` (see [`LossLog::new`]), written to `path` every `every`
    /// steps (`0`: only at the end).
    ///
    /// Errors with [`FitError::Step`] for an invalid level.
    pub fn new(levels: &[f64], path: impl Into<PathBuf>, every: u64) -> Result<Self, FitError> {
        Ok(LossCsv { log: LossLog::new(levels)?, path: path.into(), every })
    }

    /// The log continued from the CSV at `path` (if it exists) with the rows of steps up to
    /// `step`, the step of the checkpoint the run resumes from.
    ///
    /// Errors with [`FitError::Checkpoint`] if the file cannot be read or does not parse.
    pub fn resume(
        levels: &[f64],
        path: impl Into<PathBuf>,
        every: u64,
        step: u64,
    ) -> Result<Self, FitError> {
        let path = path.into();
        let log = match std::fs::read_to_string(&path) {
            Ok(csv) => LossLog::from_csv(levels, &csv, step)
                .map_err(|reason| CheckpointError::Corrupt { path: path.clone(), reason })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LossLog::new(levels)?,
            Err(source) => return Err(CheckpointError::Io { path, source }.into()),
        };
        Ok(LossCsv { log, path, every })
    }

    /// The log.
    pub fn log(&self) -> &LossLog {
        &self.log
    }

    fn write(&mut self, step: u64) -> Result<(), FitError> {
        self.log.flush(step);
        self.log
            .write_csv(&self.path)
            .map_err(|source| CheckpointError::Io { path: self.path.clone(), source }.into())
    }
}

impl<M: Module> Callback<M> for LossCsv {
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError> {
        self.log.record(report);
        if self.every > 0 && trainer.steps().is_multiple_of(self.every) {
            self.write(trainer.steps())?;
        }
        Ok(ControlFlow::Continue(()))
    }

    fn on_end(&mut self, trainer: &Trainer<M>) -> Result<(), FitError> {
        self.write(trainer.steps())
    }
}

/// A progress bar over the steps up to `until`, with the smoothed loss (an exponential
/// average over about 50 steps) and the time left. Clones share the bar (a callback that
/// prints can [`suspend`](Self::suspend) it through a clone).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
    smoothed: Option<f64>,
}

impl Progress {
    /// A bar labelled `label` for a run that ends at step `until`, starting at `from`.
    pub fn new(label: &str, from: u64, until: u64) -> Self {
        let template =
            format!("{label} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} eta {{eta}} {{msg}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::new(until).with_style(style);
        bar.set_position(from);
        bar.reset_eta();
        Progress { bar, smoothed: None }
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        self.bar.println(line);
    }

    /// Runs `f` with the bar hidden (for work that prints or shows its own bar).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }
}

impl<M: Module> Callback<M> for Progress {
    fn on_step(
        &mut self,
        trainer: &Trainer<M>,
        report: &StepReport,
    ) -> Result<ControlFlow<()>, FitError> {
        let s = self.smoothed.map_or(report.loss, |s| 0.98 * s + 0.02 * report.loss);
        self.smoothed = Some(s);
        self.bar.set_position(trainer.steps());
        self.bar.set_message(format!("loss {s:.4}"));
        Ok(ControlFlow::Continue(()))
    }

    fn on_end(&mut self, _trainer: &Trainer<M>) -> Result<(), FitError> {
        self.bar.finish();
        Ok(())
    }
}
