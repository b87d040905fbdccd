//! Post-hoc EMA (EDM2: Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
//! Diffusion Models", Sec. 3 and Appendix C): track a few power-function EMAs of the weights,
//! store snapshots of them as training goes, and after training rebuild the EMA of any length
//! as a least-squares combination of the snapshots.
//!
//! # Power-function EMA
//!
//! After update `t = 1, 2, …` (the trainer's step count; `θ_t` the weights after it):
//!
//! ```text
//! θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t,     β_t = (1 − 1/t)^(γ+1)     (β_1 = 0: θ̂_1 = θ_1)
//! ```
//!
//! Unrolled, `θ̂_t = Σ_{τ=1..t} w_τ θ_τ` with `w_τ = (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)`
//! (the product of the `β` telescopes), which is exactly `∫_{τ−1}^{τ} p_t(s) ds` for the
//! continuous profile
//!
//! ```text
//! p_{t,γ}(s) = (γ + 1) s^γ / t^(γ+1)     on 0 ≤ s ≤ t   (0 after t)
//! ```
//!
//! so `θ̂_t = ∫ p_{t,γ}(s) θ(s) ds` with `θ(s) = θ_⌈s⌉`, the weights held over each step. Its
//! length is the relative standard deviation of the profile, scale-free in `t`:
//!
//! ```text
//! σ_rel = (γ + 1)^½ (γ + 2)^(−1) (γ + 3)^(−½)                 (EDM2 Eq. 3)
//! ```
//!
//! EDM2 tracks `σ_rel = 0.05` and `0.10` (`γ ≈ 16.97` and `6.94`), the default of [`PostHocEma`].
//! `σ_rel` is largest, `≈ 0.3003`, at `γ* = (√5 − 3)/2`; [`sigma_rel_to_gamma`] returns the root
//! with `γ > γ*`, the branch on which a longer average has a larger `σ_rel`.
//!
//! # Reconstruction
//!
//! Given snapshots `θ̂_i` of profiles `p_i = p_{t_i,γ_i}` and a target `p_r = p_{t_r,γ_r}`,
//! choose the weights `x` that minimise `‖Σ_i x_i p_i − p_r‖²` in `L²(0, ∞)`; their normal
//! equations `A x = b` have
//!
//! ```text
//! A_ij = ⟨p_i, p_j⟩,   b_i = ⟨p_i, p_r⟩,
//! ⟨p_{a}, p_{b}⟩ = ∫_0^{min(t_a,t_b)} (γ_a+1)(γ_b+1) s^(γ_a+γ_b) / (t_a^(γ_a+1) t_b^(γ_b+1)) ds
//!               = (γ_a+1)(γ_b+1) / ((γ_a+γ_b+1) t_b) · (t_a/t_b)^γ_b     for t_a ≤ t_b
//! ```
//!
//! (symmetric in `a, b`; finite for `γ_a + γ_b > −1`). The solution is then scaled to
//! `Σ_i x_i = 1`, as EDM2's reference code does, so that every profile and the fit integrate
//! to 1 and weights that stay constant are reproduced exactly. The reconstruction is
//! `θ_r = Σ_i x_i θ̂_i = ∫ q(s) θ(s) ds` with `q = Σ x_i p_i`. [`PostHocFit`] reports the
//! residual `‖q − p_r‖₂`; as `∫ (q − p_r) = 0`, Cauchy–Schwarz gives, for every parameter and
//! any constant `c` (best: the mean of `θ_τ`),
//!
//! ```text
//! |θ_r − θ̂_{t_r,γ_r}| = |∫ (q − p_r)(θ − c)| ≤ ‖q − p_r‖₂ · (Σ_τ (θ_τ − c)²)^½
//! ```
//!
//! which bounds the distance to the EMA that could have been tracked directly. The normal
//! equations are solved with nalgebra's SVD (a pseudo-inverse that drops singular values
//! below `10⁻¹²` of the largest), since profiles of nearby `t` and `γ` are nearly collinear.
//!
//! # Snapshots
//!
//! With [`PostHocEma`] in the [`TrainerConfig`](super::TrainerConfig), the trainer updates one
//! EMA per profile every step (they are saved in, and resumed from, each checkpoint), and
//! [`Trainer::save_snapshot`] (which the [`Checkpoints`](super::Checkpoints) callback of `fit`
//! calls every `snapshot_every` steps) writes them into the checkpoint directory:
//!
//! ```text
//! dir/posthoc-ema/<step:012>-<i>.bpk     profile i's EMA at that step (burnpack)
//! dir/posthoc-ema/<step:012>.json        step, γ of each profile, dtype, model config, SHA-256
//! ```
//!
//! each file written atomically, the manifest last, so a snapshot without its manifest (a
//! crash) is ignored. [`reconstruct`] reads them back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs;
use std::path::{Path, PathBuf};

use burn::config::{Config, config_to_json};
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use nalgebra::{DMatrix, DVector};
use scorefield_core::Error;

use super::checkpoint::{CheckpointError, FileEntry, canonical_json, sha256_hex, write_atomically};
use super::params::{combine, ema_update, float_dtype};
use super::trainer::Trainer;

/// The sub-directory of a checkpoint directory that holds the snapshots.
pub const SNAPSHOT_DIR: &str = "posthoc-ema";
const SNAPSHOT_FORMAT: &str = "scorefield-posthoc-ema";
const SNAPSHOT_VERSION: u32 = 1;

/// Post-hoc EMA tracking (see the [module docs](self)): the profiles to track, by their
/// relative standard deviation `σ_rel`, and how often to store snapshots of them.
#[derive(Config, Debug, PartialEq)]
pub struct PostHocEma {
    /// `σ_rel` of each tracked profile, each in `(0, 0.3003)`; EDM2 tracks `[0.05, 0.10]`.
    /// Their `γ` ([`sigma_rel_to_gamma`]) sets `β_t = (1 − 1/t)^(γ+1)`.
    #[config(default = "vec![0.05, 0.10]")]
    pub sigma_rels: Vec<f64>,
    /// Store a snapshot of every profile after each multiple of this many steps (`≥ 1`).
    /// EDM2 stores one every 8 M images, about 4,000 steps at batch 2,048.
    #[config(default = 1000)]
    pub snapshot_every: u64,
}

impl PostHocEma {
    /// Checks that there is at least one profile, every `σ_rel` is valid for
    /// [`sigma_rel_to_gamma`], and `snapshot_every ≥ 1`. Errors with
    /// [`Error::InvalidParameter`].
    pub fn validate(&self) -> scorefield_core::Result<()> {
        if self.sigma_rels.is_empty() {
            return Err(Error::invalid("sigma_rels", "[]", "track at least one profile"));
        }
        for &sigma_rel in &self.sigma_rels {
            sigma_rel_to_gamma(sigma_rel)?;
        }
        if self.snapshot_every == 0 {
            return Err(Error::invalid("snapshot_every", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The exponents `γ` of the tracked profiles. Errors as [`validate`](Self::validate).
    pub fn gammas(&self) -> scorefield_core::Result<Vec<f64>> {
        self.sigma_rels.iter().map(|&s| sigma_rel_to_gamma(s)).collect()
    }
}

/// `σ_rel(γ) = (γ + 1)^½ (γ + 2)^(−1) (γ + 3)^(−½)`, the relative standard deviation of the
/// profile `p(s) ∝ s^γ` on `[0, t]` (EDM2 Eq. 3). NaN for `γ ≤ −1`.
pub fn gamma_to_sigma_rel(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 3.0) * (gamma + 2.0) * (gamma + 2.0))).sqrt()
}

/// `γ* = (√5 − 3)/2`, where `σ_rel(γ)` is largest.
fn gamma_of_max_sigma() -> f64 {
    (5f64.sqrt() - 3.0) / 2.0
}

/// The largest `σ_rel` a power-function profile has, `σ_rel(γ*) ≈ 0.3003`.
pub fn max_sigma_rel() -> f64 {
    gamma_to_sigma_rel(gamma_of_max_sigma())
}

/// The `γ` of relative length `sigma_rel`: the root `γ > γ*` of
/// `σ_rel² (γ + 2)² (γ + 3) = γ + 1` (the inverse of [`gamma_to_sigma_rel`] on the branch where
/// `σ_rel` falls as `γ` grows), found by bisection to the last bit. Errors with
/// [`Error::InvalidParameter`] unless `0 < sigma_rel < max_sigma_rel()`.
pub fn sigma_rel_to_gamma(sigma_rel: f64) -> scorefield_core::Result<f64> {
    scorefield_core::error::ensure_positive("sigma_rel", sigma_rel)?;
    if sigma_rel >= max_sigma_rel() {
        let reason =
            format!("must be < {} (the largest σ_rel of a power profile)", max_sigma_rel());
        return Err(Error::invalid("sigma_rel", sigma_rel, reason));
    }
    let (mut lo, mut hi) = (gamma_of_max_sigma(), 1.0);
    while gamma_to_sigma_rel(hi) > sigma_rel {
        hi *= 2.0;
    }
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            return Ok(
                if (gamma_to_sigma_rel(lo) - sigma_rel).abs()
                    <= (gamma_to_sigma_rel(hi) - sigma_rel).abs()
                {
                    lo
                } else {
                    hi
                },
            );
        }
        if gamma_to_sigma_rel(mid) > sigma_rel { lo = mid } else { hi = mid }
    }
}

/// The decay `β_t = (1 − 1/t)^(γ+1)` of update `t ≥ 1` of a power-function EMA (`β_1 = 0`).
pub fn power_ema_decay(gamma: f64, t: u64) -> f64 {
    if t <= 1 { 0.0 } else { (1.0 - 1.0 / t as f64).powf(gamma + 1.0) }
}

/// `⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = (γ_a+1)(γ_b+1) / ((γ_a+γ_b+1) t_b) · (t_a/t_b)^γ_b` for
/// `t_a ≤ t_b` (and symmetrically), the `L²` inner product of two power-function profiles
/// (see the [module docs](self)); written with `t_a/t_b ≤ 1` so that it does not overflow.
pub fn profile_inner_product(t_a: f64, gamma_a: f64, t_b: f64, gamma_b: f64) -> f64 {
    let ((t_a, g_a), (t_b, g_b)) = if t_a <= t_b {
        ((t_a, gamma_a), (t_b, gamma_b))
    } else {
        ((t_b, gamma_b), (t_a, gamma_a))
    };
    (g_a + 1.0) * (g_b + 1.0) / ((g_a + g_b + 1.0) * t_b) * (t_a / t_b).powf(g_b)
}

/// A power-function profile: `γ` at step count `t` (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// The step count `t ≥ 1` of the snapshot.
    pub step: u64,
    /// The exponent `γ`.
    pub gamma: f64,
}

/// The least-squares combination of stored profiles that best matches a target profile.
#[derive(Debug, Clone, PartialEq)]
pub struct PostHocFit {
    /// `x_i`, one per stored profile, in the order given; they sum to 1.
    pub coefficients: Vec<f64>,
    /// `‖q − p_r‖₂` with `q = Σ x_i p_i`, time measured in steps: multiplied by
    /// `(Σ_τ (θ_τ − c)²)^½` it bounds a parameter's distance to the directly tracked EMA.
    pub residual: f64,
    /// `‖q − p_r‖₂ / ‖p_r‖₂`, the same residual relative to the target's norm.
    pub relative_residual: f64,
}

/// Solves EDM2's least-squares problem: the `x` minimising `‖Σ_i x_i p_i − p_r‖₂` over the
/// `stored` profiles for the `target`, scaled to `Σ_i x_i = 1` (see the [module docs](self)).
///
/// Errors with [`Error::InvalidParameter`] if there are no stored profiles, a step is 0, or a
/// `γ ≤ γ*` (outside the branch [`sigma_rel_to_gamma`] returns), and with
/// [`Error::SolverFailed`] if the SVD does not converge.
pub fn solve_posthoc(stored: &[Profile], target: Profile) -> scorefield_core::Result<PostHocFit> {
    if stored.is_empty() {
        return Err(Error::invalid("stored", "[]", "needs at least one stored profile"));
    }
    for p in stored.iter().chain([&target]) {
        if p.step == 0 {
            return Err(Error::invalid("step", 0, "a profile needs at least one update"));
        }
        if !(p.gamma.is_finite() && p.gamma > gamma_of_max_sigma()) {
            return Err(Error::invalid("gamma", p.gamma, "must be finite and > (√5 − 3)/2"));
        }
    }
    // Time in units of the target's step count keeps the matrix of order 1.
    let scale = target.step as f64;
    let time = |p: &Profile| p.step as f64 / scale;
    let n = stored.len();
    let a = DMatrix::from_fn(n, n, |i, j| {
        profile_inner_product(time(&stored[i]), stored[i].gamma, time(&stored[j]), stored[j].gamma)
    });
    let b = DVector::from_fn(n, |i, _| {
        profile_inner_product(time(&stored[i]), stored[i].gamma, 1.0, target.gamma)
    });
    let rr = profile_inner_product(1.0, target.gamma, 1.0, target.gamma);
    let svd = a.clone().try_svd(true, true, f64::EPSILON, 10_000).ok_or_else(|| {
        Error::SolverFailed { solver: "post-hoc EMA SVD", reason: "did not converge".into() }
    })?;
    let cutoff = 1e-12 * svd.singular_values.max();
    let x = svd.solve(&b, cutoff).map_err(|reason| Error::SolverFailed {
        solver: "post-hoc EMA SVD",
        reason: reason.into(),
    })?;
    let total = x.sum();
    if !(total.is_finite() && total != 0.0) {
        let reason = format!("the coefficients sum to {total}");
        return Err(Error::SolverFailed { solver: "post-hoc EMA SVD", reason });
    }
    let x = x / total;
    // ‖q − p_r‖² = ⟨p_r,p_r⟩ − 2 xᵀb + xᵀAx, in target time; ‖·‖² scales as 1/t in steps.
    let squared = (rr - 2.0 * x.dot(&b) + x.dot(&(&a * &x))).max(0.0);
    let relative_residual = (squared / rr).sqrt();
    Ok(PostHocFit {
        coefficients: x.iter().copied().collect(),
        residual: (squared / scale).sqrt(),
        relative_residual,
    })
}

/// The EMAs of the tracked profiles, updated every step (a part of the trainer).
#[derive(Debug, Clone)]
pub(super) struct PostHocTracker<M> {
    pub(super) gammas: Vec<f64>,
    pub(super) emas: Vec<M>,
}

impl<M: Module> PostHocTracker<M> {
    /// Every profile starts at the weights (which `β_1 = 0` then replaces).
    pub(super) fn new(config: &PostHocEma, model: &M) -> scorefield_core::Result<Self> {
        let gammas = config.gammas()?;
        let emas = gammas.iter().map(|_| model.valid()).collect();
        Ok(Self { gammas, emas })
    }

    /// Update `t` (the step count after the step) with the weights `model`.
    pub(super) fn update(&mut self, model: &M, t: u64) {
        for (gamma, ema) in self.gammas.iter().zip(self.emas.iter_mut()) {
            *ema = ema_update(model, ema.clone(), power_ema_decay(*gamma, t));
        }
    }
}

/// `manifest.json` of one snapshot.
#[derive(Config, Debug)]
pub(super) struct SnapshotManifest {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) step: u64,
    pub(super) gammas: Vec<f64>,
    pub(super) float_dtype: String,
    pub(super) model_config: String,
    pub(super) files: Vec<FileEntry>,
}

/// One stored snapshot, as listed by [`list_snapshots`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Its manifest file.
    pub manifest: PathBuf,
    /// The step count `t` it was taken at.
    pub step: u64,
    /// The `γ` of each profile it holds, in the order of the configuration.
    pub gammas: Vec<f64>,
    /// The float dtype of the parameters, formatted (`"F32"`).
    pub float_dtype: String,
    /// The model's configuration, as given to [`Trainer::new`].
    pub model_config: String,
}

fn snapshot_file(step: u64, profile: usize) -> String {
    format!("{step:012}-{profile}.bpk")
}

impl<M: Module> Trainer<M> {
    /// The tracked post-hoc EMA profiles (outside autodiff), in the order of
    /// [`PostHocEma::sigma_rels`]; empty without post-hoc EMA.
    pub fn posthoc_emas(&self) -> &[M] {
        self.posthoc.as_ref().map_or(&[], |p| &p.emas)
    }

    /// Whether a post-hoc snapshot is due now: post-hoc EMA is on, at least one step was taken
    /// and the step count is a multiple of [`PostHocEma::snapshot_every`].
    pub fn snapshot_due(&self) -> bool {
        match &self.config.posthoc_ema {
            Some(p) => self.step > 0 && self.step.is_multiple_of(p.snapshot_every.max(1)),
            None => false,
        }
    }

    /// Writes a snapshot of every tracked profile at the current step into
    /// `dir/posthoc-ema/` (see the [module docs](self)), each file atomically and the
    /// manifest last; a snapshot of the same step is replaced. Returns the manifest's path.
    ///
    /// Errors with [`CheckpointError::Invalid`] without post-hoc EMA, before the first step
    /// or while [deferred steps](Trainer::step_deferred) are unread (as
    /// [`save`](Trainer::save)), [`CheckpointError::Serialise`] and [`CheckpointError::Io`].
    pub fn save_snapshot(&self, dir: impl AsRef<Path>) -> Result<PathBuf, CheckpointError> {
        self.refuse_unread("save_snapshot")?;
        let tracker = self.posthoc.as_ref().ok_or_else(|| {
            Error::invalid("posthoc_ema", "None", "the trainer tracks no post-hoc EMA")
        })?;
        if self.step == 0 {
            return Err(Error::invalid("step", 0, "a snapshot needs at least one step").into());
        }
        let dir = dir.as_ref().join(SNAPSHOT_DIR);
        let mut files = Vec::new();
        for (i, ema) in tracker.emas.iter().enumerate() {
            let bytes = ema
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| CheckpointError::Serialise { what: "ema", reason: e.to_string() })?;
            let name = snapshot_file(self.step, i);
            let path = dir.join(&name);
            write_atomically(&path, &bytes)
                .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
            files.push(FileEntry {
                name,
                len: bytes.len() as u64,
                fnv1a64: None,
                sha256: Some(sha256_hex(&bytes)),
            });
        }
        let manifest = SnapshotManifest {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            step: self.step,
            gammas: tracker.gammas.clone(),
            float_dtype: float_dtype(&self.ema),
            model_config: self.model_config.clone(),
            files,
        };
        let path = dir.join(format!("{:012}.json", self.step));
        write_atomically(&path, config_to_json(&manifest).as_bytes())
            .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        Ok(path)
    }
}

/// Every complete snapshot in the checkpoint directory `dir`, by step. Only reads the
/// manifests. Errors with [`CheckpointError::NotFound`] if there is none,
/// [`CheckpointError::Corrupt`] for a manifest that does not parse, and
/// [`CheckpointError::Io`].
pub fn list_snapshots(dir: impl AsRef<Path>) -> Result<Vec<Snapshot>, CheckpointError> {
    let dir = dir.as_ref();
    let sub = dir.join(SNAPSHOT_DIR);
    let not_found = || CheckpointError::NotFound {
        dir: dir.to_path_buf(),
        reason: "no post-hoc EMA snapshot".into(),
    };
    let entries = match fs::read_dir(&sub) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(source) => return Err(CheckpointError::Io { path: sub, source }),
    };
    let mut snapshots = Vec::new();
    for entry in entries {
        let path =
            entry.map_err(|source| CheckpointError::Io { path: sub.clone(), source })?.path();
        let is_manifest = path.extension().is_some_and(|e| e == "json")
            && path
                .file_stem()
                .is_some_and(|s| s.to_string_lossy().bytes().all(|b| b.is_ascii_digit()));
        if !is_manifest {
            continue;
        }
        let manifest = read_manifest(&path)?;
        snapshots.push(Snapshot {
            manifest: path,
            step: manifest.step,
            gammas: manifest.gammas,
            float_dtype: manifest.float_dtype,
            model_config: manifest.model_config,
        });
    }
    if snapshots.is_empty() {
        return Err(not_found());
    }
    snapshots.sort_by_key(|s| s.step);
    Ok(snapshots)
}

fn read_manifest(path: &Path) -> Result<SnapshotManifest, CheckpointError> {
    let bytes =
        fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let manifest = SnapshotManifest::load_binary(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if manifest.format != SNAPSHOT_FORMAT || manifest.version != SNAPSHOT_VERSION {
        return Err(CheckpointError::Mismatch {
            what: "format",
            reason: format!(
                "{} version {} (this build reads {SNAPSHOT_FORMAT} version {SNAPSHOT_VERSION})",
                manifest.format, manifest.version
            ),
        });
    }
    if manifest.files.len() != manifest.gammas.len() || manifest.step == 0 {
        return Err(corrupt("one file per profile and a step ≥ 1 expected".into()));
    }
    Ok(manifest)
}

/// A reconstructed EMA: the model and the fit that made it.
#[derive(Debug, Clone)]
pub struct Reconstruction<M> {
    /// `Σ_i x_i θ̂_i`, outside autodiff.
    pub model: M,
    /// The step count `t_r` of the target profile.
    pub step: u64,
    /// The target's `γ`.
    pub gamma: f64,
    /// The coefficients and the residual of the least-squares fit.
    pub fit: PostHocFit,
    /// The stored profiles the fit combined, in the order of `fit.coefficients`.
    pub profiles: Vec<Profile>,
}

/// Rebuilds the EMA of relative length `sigma_rel` at step `at_step` (default: the last
/// snapshot's) from the snapshots in the checkpoint directory `dir` with steps up to it (see
/// the [module docs](self)). `model` is a model of the saved architecture (its parameters are
/// replaced, its device kept) and `model_config` its configuration, which must equal the
/// saved one up to JSON whitespace.
///
/// Errors with [`CheckpointError::Invalid`] for an invalid `sigma_rel` or a step without
/// snapshots before it, [`CheckpointError::NotFound`] without snapshots,
/// [`CheckpointError::Corrupt`] for a damaged file, [`CheckpointError::Mismatch`] for another
/// model configuration, parameter set or float dtype, and [`CheckpointError::Io`].
pub fn reconstruct<M: Module>(
    dir: impl AsRef<Path>,
    sigma_rel: f64,
    at_step: Option<u64>,
    model: M,
    model_config: &str,
) -> Result<Reconstruction<M>, CheckpointError> {
    let gamma = sigma_rel_to_gamma(sigma_rel)?;
    let snapshots = list_snapshots(dir.as_ref())?;
    let step = at_step.unwrap_or_else(|| snapshots.last().map_or(0, |s| s.step));
    let used: Vec<&Snapshot> = snapshots.iter().filter(|s| s.step <= step).collect();
    if used.is_empty() || step == 0 {
        let reason = "no snapshot at or before this step";
        return Err(Error::invalid("at_step", step, reason).into());
    }
    let dtype = float_dtype(&model);
    for s in &used {
        if canonical_json(&s.model_config) != canonical_json(model_config) {
            return Err(CheckpointError::Mismatch {
                what: "model config",
                reason: format!(
                    "{} was saved for {}, not {}",
                    s.manifest.display(),
                    canonical_json(&s.model_config),
                    canonical_json(model_config)
                ),
            });
        }
        if s.float_dtype != dtype {
            return Err(CheckpointError::Mismatch {
                what: "dtype",
                reason: format!("the snapshots hold {}, the model {dtype}", s.float_dtype),
            });
        }
    }
    let mut profiles = Vec::new();
    let mut sources = Vec::new();
    for s in &used {
        for (i, &g) in s.gammas.iter().enumerate() {
            profiles.push(Profile { step: s.step, gamma: g });
            sources.push((s.manifest.clone(), i));
        }
    }
    let fit = solve_posthoc(&profiles, Profile { step, gamma })?;

    let template = model.valid();
    let mut manifests: HashMap<PathBuf, SnapshotManifest> = HashMap::new();
    let mut sum: Option<M> = None;
    for ((manifest_path, i), &x) in sources.iter().zip(&fit.coefficients) {
        if x == 0.0 {
            continue;
        }
        if let Entry::Vacant(vacant) = manifests.entry(manifest_path.clone()) {
            vacant.insert(read_manifest(manifest_path)?);
        }
        let entry = &manifests[manifest_path].files[*i];
        let folder = manifest_path.parent().unwrap_or(Path::new("."));
        let path = folder.join(&entry.name);
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.clone(), reason };
        if entry.name.contains(['/', '\\']) || entry.name.contains("..") {
            return Err(corrupt("not a file name".into()));
        }
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => corrupt("the file is missing".into()),
            _ => CheckpointError::Io { path: path.clone(), source },
        })?;
        if bytes.len() as u64 != entry.len || entry.sha256.as_deref() != Some(&sha256_hex(&bytes)) {
            return Err(corrupt("its length or SHA-256 disagrees with the manifest".into()));
        }
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| corrupt(e.to_string()))?;
        let loaded = template
            .clone()
            .try_load_record(record)
            .map_err(|e| CheckpointError::Mismatch { what: "parameters", reason: e.to_string() })?;
        sum = Some(match sum {
            None => combine(loaded.clone(), x, &loaded, 0.0),
            Some(acc) => combine(acc, 1.0, &loaded, x),
        });
    }
    let model = sum.unwrap_or_else(|| combine(template.clone(), 0.0, &template, 0.0));
    Ok(Reconstruction { model, step, gamma, fit, profiles })
}
