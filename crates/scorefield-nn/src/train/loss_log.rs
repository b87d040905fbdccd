//! The loss per noise level, as rows and CSV.

use std::fmt::Write as _;
use std::path::Path;

use super::checkpoint::write_atomically;
use super::trainer::StepReport;

/// One row of a [`LossLog`]: the mean per-sample loss of the samples of one noise level
/// since the previous row of that level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRow {
    /// The step count when the row was written ([`LossLog::flush`]).
    pub step: u64,
    /// The level's `σ`, or `None` for the row over all samples.
    pub level: Option<f64>,
    /// The mean per-sample loss.
    pub mean_loss: f64,
    /// How many samples it averages.
    pub count: u64,
}

/// Accumulates the per-sample losses of [`StepReport`]s by noise level and writes them as a
/// CSV. A sample of level `σ` goes to the nearest of the given levels in `ln σ` (so the
/// discrete levels of NCSN are matched exactly and continuous-time levels are binned);
/// every [`flush`](Self::flush) appends one row per level that received samples, and one
/// over all samples (`level` = `all` in the CSV).
#[derive(Debug, Clone)]
pub struct LossLog {
    levels: Vec<f64>,
    /// Sum and count per level; the last entry is over all samples.
    sums: Vec<(f64, u64)>,
    rows: Vec<LossRow>,
}

impl LossLog {
    /// A log binned by the noise levels `levels` (e.g. `GeometricSigmas::sigmas()`); an empty
    /// slice keeps only the overall mean. Errors with [`Error::InvalidParameter`](scorefield_core::Error::InvalidParameter) unless every
    /// level is finite and positive.
    pub fn new(levels: &[f64]) -> scorefield_core::Result<Self> {
        for &sigma in levels {
            scorefield_core::error::ensure_positive("levels", sigma)?;
        }
        Ok(Self { levels: levels.to_vec(), sums: vec![(0.0, 0); levels.len() + 1], rows: vec![] })
    }

    /// The log binned by `levels` holding the rows of `csv` (as written by
    /// [`to_csv`](Self::to_csv)) stamped with a step of at most `up_to`: the log of a run
    /// resumed from its checkpoint at step `up_to`.
    ///
    /// Errors with the reason if a level is invalid or the CSV does not parse.
    pub fn from_csv(levels: &[f64], csv: &str, up_to: u64) -> Result<Self, String> {
        let mut log = Self::new(levels).map_err(|e| e.to_string())?;
        let mut lines = csv.lines();
        if lines.next() != Some("step,level,mean_loss,count") {
            return Err("the header is not `step,level,mean_loss,count`".into());
        }
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let bad = |what: &str| format!("line {}: {what} in `{line}`", i + 2);
            let fields: Vec<&str> = line.split(',').collect();
            let [step, level, mean_loss, count] = fields[..] else {
                return Err(bad("not four fields"));
            };
            let step: u64 = step.parse().map_err(|_| bad("a bad step"))?;
            let level = match level {
                "all" => None,
                l => Some(l.parse::<f64>().map_err(|_| bad("a bad level"))?),
            };
            let mean_loss = mean_loss.parse().map_err(|_| bad("a bad mean loss"))?;
            let count = count.parse().map_err(|_| bad("a bad count"))?;
            if step <= up_to {
                log.rows.push(LossRow { step, level, mean_loss, count });
            }
        }
        Ok(log)
    }

    /// The levels the log bins by.
    pub fn levels(&self) -> &[f64] {
        &self.levels
    }

    /// The index of the level nearest to `sigma` in `ln σ`, if there are levels.
    pub fn bucket(&self, sigma: f64) -> Option<usize> {
        let distance = |level: f64| (level.ln() - sigma.max(f64::MIN_POSITIVE).ln()).abs();
        (0..self.levels.len())
            .min_by(|&a, &b| distance(self.levels[a]).total_cmp(&distance(self.levels[b])))
    }

    /// Adds the per-sample losses of one step (non-finite ones are skipped).
    pub fn record(&mut self, report: &StepReport) {
        let all = self.levels.len();
        for (i, &loss) in report.per_sample.iter().enumerate() {
            if !loss.is_finite() {
                continue;
            }
            let sigma = report.sigma.as_ref().and_then(|s| s.get(i).copied());
            if let Some(b) = sigma.and_then(|s| self.bucket(s)) {
                self.sums[b].0 += loss;
                self.sums[b].1 += 1;
            }
            self.sums[all].0 += loss;
            self.sums[all].1 += 1;
        }
    }

    /// Appends a row per level with samples since the last flush (largest σ first, as the
    /// levels were given), then the overall row, stamped with `step`; returns the new rows.
    pub fn flush(&mut self, step: u64) -> &[LossRow] {
        let start = self.rows.len();
        let all = self.levels.len();
        for (b, sum) in self.sums.iter_mut().enumerate() {
            if sum.1 > 0 {
                let level = (b < all).then(|| self.levels[b]);
                let mean_loss = sum.0 / sum.1 as f64;
                self.rows.push(LossRow { step, level, mean_loss, count: sum.1 });
            }
            *sum = (0.0, 0);
        }
        &self.rows[start..]
    }

    /// Every row written so far.
    pub fn rows(&self) -> &[LossRow] {
        &self.rows
    }

    /// The rows as CSV: a header `step,level,mean_loss,count`, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("step,level,mean_loss,count\n");
        for row in &self.rows {
            let level = row.level.map_or_else(|| "all".to_string(), |l| l.to_string());
            let _ = writeln!(csv, "{},{level},{},{}", row.step, row.mean_loss, row.count);
        }
        csv
    }

    /// Writes [`to_csv`](Self::to_csv) to `path` atomically (a temporary file in the same
    /// directory, synced, then renamed over `path`).
    pub fn write_csv(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        write_atomically(path.as_ref(), self.to_csv().as_bytes())
    }
}
