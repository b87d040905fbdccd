//! Atomic, verified checkpoints of a [`Trainer`](super::Trainer).

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::config::{Config, config_to_json};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

use super::params::float_dtype;
use super::posthoc_ema::PostHocTracker;
use super::trainer::{Trainer, TrainerConfig, splitmix64};

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The directory holds no checkpoint (no `LATEST`, or it names a missing directory).
    #[error("no checkpoint in {dir}: {reason}")]
    NotFound {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is truncated, altered or unreadable (its length or hash disagrees with the
    /// manifest, or it does not parse).
    #[error("corrupt checkpoint file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint is intact but does not fit: a different model configuration, parameter
    /// shapes or float dtype, or a newer checkpoint format.
    #[error("checkpoint mismatch ({what}): {reason}")]
    Mismatch {
        /// What disagrees: `"model config"`, `"parameters"`, `"dtype"`, `"format"`.
        what: &'static str,
        /// How.
        reason: String,
    },
    /// The request is invalid (a post-hoc EMA length out of range, a snapshot of a trainer
    /// that tracks none, ...).
    #[error(transparent)]
    Invalid(#[from] scorefield_core::Error),
    /// Serialising a record failed while saving.
    #[error("could not serialise {what}: {reason}")]
    Serialise {
        /// The record (`"model"`, `"ema"`, `"optimizer"`, `"post-hoc ema"`).
        what: &'static str,
        /// Burn's message.
        reason: String,
    },
}

/// The format name in every manifest.
pub(super) const FORMAT: &str = "scorefield-checkpoint";
/// The manifest version this code writes and reads.
pub(super) const VERSION: u32 = 2;
/// The oldest manifest version this code reads (version 1 hashed with FNV-1a).
pub(super) const OLDEST_VERSION: u32 = 1;
/// The pointer file naming the current checkpoint.
pub(super) const LATEST: &str = "LATEST";
pub(super) const MANIFEST: &str = "manifest.json";
pub(super) const MODEL_FILE: &str = "model.bpk";
pub(super) const EMA_FILE: &str = "ema.bpk";
pub(super) const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub(super) const TRAINER_FILE: &str = "trainer.json";
pub(super) const MODEL_CONFIG_FILE: &str = "model.json";
/// The files every checkpoint has.
const REQUIRED_FILES: [&str; 5] =
    [MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, TRAINER_FILE, MODEL_CONFIG_FILE];

/// The file of post-hoc EMA profile `i` (only with post-hoc EMA on).
pub(super) fn posthoc_file(i: usize) -> String {
    format!("posthoc-ema-{i}.bpk")
}

/// A file of a checkpoint and its integrity data.
#[derive(Config, Debug)]
pub(super) struct FileEntry {
    pub(super) name: String,
    pub(super) len: u64,
    /// Version 1: FNV-1a, 64 bits.
    pub(super) fnv1a64: Option<u64>,
    /// Version 2: SHA-256, lower-case hex.
    pub(super) sha256: Option<String>,
}

/// `manifest.json`.
#[derive(Config, Debug)]
pub(super) struct Manifest {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) step: u64,
    pub(super) seed: u64,
    pub(super) float_dtype: String,
    pub(super) files: Vec<FileEntry>,
}

/// What a checkpoint holds besides the tensors, read and verified by [`read_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The directory of this checkpoint (`dir/step-<k>-<id>`).
    pub path: PathBuf,
    /// The number of steps taken when it was saved.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The float dtype of the parameters, formatted (`"F32"`).
    pub float_dtype: String,
    /// The trainer's configuration.
    pub trainer: TrainerConfig,
    /// The model's configuration, as given to [`Trainer::new`] (JSON for a Burn `Config`:
    /// rebuild the model with e.g. `ScoreMlpConfig::load_binary(info.model_config.as_bytes())`).
    pub model_config: String,
}

/// SHA-256 of `bytes`, lower-case hex: the checksum of manifest version 2.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 64 bits: the hash of manifest version 1 (read, no longer written).
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A name no other save of this process or another has used.
pub(super) fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", splitmix64(nanos ^ splitmix64(u64::from(std::process::id()) ^ count)))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Creates `path` with `bytes` and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

pub(crate) use scorefield_core::io::{sync_dir, write_atomically};

/// A configuration's JSON in canonical form, for comparing a saved configuration with a
/// given one: compact, and with `null` members dropped, so that a field added later as an
/// `Option` (absent from older files, `null` in newer ones) compares equal. Text that is not
/// JSON is compared as it is, trimmed.
pub(super) fn canonical_json(json: &str) -> String {
    use serde_json::Value;
    fn strip(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip(v))).collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(json) {
        Ok(value) => strip(value).to_string(),
        Err(_) => json.trim().to_string(),
    }
}

/// Reads and verifies the checkpoint `dir/LATEST` names: the manifest, every file's length
/// and hash, and the configurations. Returns the info and the verified bytes of each file.
fn read_verified(
    dir: &Path,
) -> Result<(CheckpointInfo, HashMap<String, Vec<u8>>), CheckpointError> {
    let latest = dir.join(LATEST);
    let name = match fs::read(&latest) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::NotFound {
                dir: dir.to_path_buf(),
                reason: format!("{LATEST} is missing"),
            });
        }
        Err(source) => return Err(CheckpointError::Io { path: latest, source }),
    };
    let name = std::str::from_utf8(&name)
        .ok()
        .map(str::trim)
        .filter(|n| n.starts_with("step-") && !n.contains(['/', '\\']) && !n.contains(".."))
        .ok_or_else(|| CheckpointError::Corrupt {
            path: latest.clone(),
            reason: "does not name a checkpoint directory".into(),
        })?;
    let path = dir.join(name);
    if !path.is_dir() {
        return Err(CheckpointError::NotFound {
            dir: dir.to_path_buf(),
            reason: format!("{LATEST} names {name}, which is not a directory"),
        });
    }
    let read = |file: &str| {
        let p = path.join(file);
        fs::read(&p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                CheckpointError::Corrupt { path: p.clone(), reason: "the file is missing".into() }
            }
            _ => CheckpointError::Io { path: p.clone(), source },
        })
    };
    let manifest_path = path.join(MANIFEST);
    let manifest = Manifest::load_binary(&read(MANIFEST)?).map_err(|e| {
        CheckpointError::Corrupt { path: manifest_path.clone(), reason: e.to_string() }
    })?;
    if manifest.format != FORMAT || !(OLDEST_VERSION..=VERSION).contains(&manifest.version) {
        return Err(CheckpointError::Mismatch {
            what: "format",
            reason: format!(
                "{} version {} (this build reads {FORMAT} versions {OLDEST_VERSION} to {VERSION})",
                manifest.format, manifest.version
            ),
        });
    }
    let mut files = HashMap::new();
    // The required files, then any other the manifest lists (the post-hoc EMA profiles).
    let listed = manifest.files.iter().map(|e| e.name.as_str());
    let names: Vec<&str> =
        REQUIRED_FILES.into_iter().chain(listed.filter(|n| !REQUIRED_FILES.contains(n))).collect();
    for file in names {
        if file.contains(['/', '\\']) || file.contains("..") {
            let reason = format!("lists {file}, which is not a file name");
            return Err(CheckpointError::Corrupt { path: manifest_path.clone(), reason });
        }
        let entry = manifest.files.iter().find(|e| e.name == file).ok_or_else(|| {
            CheckpointError::Corrupt {
                path: manifest_path.clone(),
                reason: format!("lists no {file}"),
            }
        })?;
        let bytes = read(file)?;
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.join(file), reason };
        if bytes.len() as u64 != entry.len {
            return Err(corrupt(format!("{} bytes, the manifest says {}", bytes.len(), entry.len)));
        }
        match (manifest.version, &entry.sha256, entry.fnv1a64) {
            (1, _, Some(want)) => {
                let hash = fnv1a64(&bytes);
                if hash != want {
                    let reason = format!("FNV-1a hash {hash:016x}, the manifest says {want:016x}");
                    return Err(corrupt(reason));
                }
            }
            (_, Some(want), _) if manifest.version > 1 => {
                let hash = sha256_hex(&bytes);
                if &hash != want {
                    return Err(corrupt(format!("SHA-256 {hash}, the manifest says {want}")));
                }
            }
            _ => {
                let reason =
                    format!("lists no checksum of {file} for version {}", manifest.version);
                return Err(CheckpointError::Corrupt { path: manifest_path.clone(), reason });
            }
        }
        files.insert(file.to_string(), bytes);
    }
    let trainer = TrainerConfig::load_binary(&files[TRAINER_FILE]).map_err(|e| {
        CheckpointError::Corrupt { path: path.join(TRAINER_FILE), reason: e.to_string() }
    })?;
    trainer.validate().map_err(|e| CheckpointError::Corrupt {
        path: path.join(TRAINER_FILE),
        reason: e.to_string(),
    })?;
    let profiles = trainer.posthoc_ema.as_ref().map_or(0, |p| p.sigma_rels.len());
    if let Some(missing) = (0..profiles).map(posthoc_file).find(|f| !files.contains_key(f)) {
        let reason = format!("post-hoc EMA is on, but the manifest lists no {missing}");
        return Err(CheckpointError::Corrupt { path: manifest_path, reason });
    }
    let model_config = String::from_utf8(files[MODEL_CONFIG_FILE].clone()).map_err(|_| {
        CheckpointError::Corrupt { path: path.join(MODEL_CONFIG_FILE), reason: "not UTF-8".into() }
    })?;
    let info = CheckpointInfo {
        path,
        step: manifest.step,
        seed: manifest.seed,
        float_dtype: manifest.float_dtype,
        trainer,
        model_config,
    };
    Ok((info, files))
}

/// Reads and verifies the current checkpoint in `dir` without loading tensors: its step,
/// seed, dtype and both configurations (to rebuild the model before [`Trainer::load`]).
/// Errors as [`Trainer::load`].
pub fn read_checkpoint(dir: impl AsRef<Path>) -> Result<CheckpointInfo, CheckpointError> {
    read_verified(dir.as_ref()).map(|(info, _)| info)
}

impl<M: Module> Trainer<M> {
    /// Saves the whole training state into the checkpoint directory `dir` (created if needed)
    /// and returns the new checkpoint's path. Atomic: `dir/LATEST` names the previous
    /// checkpoint until the new one is complete on disk, then the new one, and only then are
    /// older checkpoints (and partial ones left by a crash) deleted. See the
    /// module docs for the layout. Refuses ([`CheckpointError::Invalid`]) while
    /// [deferred steps](Self::step_deferred) are unread: only a state whose losses were read
    /// finite is saved.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf, CheckpointError> {
        self.refuse_unread("save")?;
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let serialise = |what, r: Result<Bytes, burn::store::RecordError>| {
            r.map(|b| b.to_vec())
                .map_err(|e| CheckpointError::Serialise { what, reason: e.to_string() })
        };
        let model = serialise("model", self.model.valid().into_record().into_bytes())?;
        let ema = serialise("ema", self.ema.clone().into_record().into_bytes())?;
        let optimizer = serialise("optimizer", self.optimizer.into_bytes())?;
        let mut contents: Vec<(String, Vec<u8>)> = vec![
            (MODEL_FILE.into(), model),
            (EMA_FILE.into(), ema),
            (OPTIMIZER_FILE.into(), optimizer),
            (TRAINER_FILE.into(), config_to_json(&self.config).into_bytes()),
            (MODEL_CONFIG_FILE.into(), self.model_config.clone().into_bytes()),
        ];
        for (i, profile) in self.posthoc_emas().iter().enumerate() {
            let bytes = serialise("post-hoc ema", profile.clone().into_record().into_bytes())?;
            contents.push((posthoc_file(i), bytes));
        }
        let files = contents
            .iter()
            .map(|(name, bytes)| FileEntry {
                name: name.clone(),
                len: bytes.len() as u64,
                fnv1a64: None,
                sha256: Some(sha256_hex(bytes)),
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            step: self.step,
            seed: self.config.seed,
            float_dtype: float_dtype(&self.ema),
            files,
        };

        let id = unique_id();
        let partial = dir.join(format!(".partial-{id}"));
        let name = format!("step-{:012}-{id}", self.step);
        let done = dir.join(&name);
        let write = || -> Result<(), CheckpointError> {
            fs::create_dir(&partial).map_err(io_error(&partial))?;
            for (file, bytes) in &contents {
                write_synced(&partial.join(file), bytes)?;
            }
            write_synced(&partial.join(MANIFEST), config_to_json(&manifest).as_bytes())?;
            sync_dir(&partial);
            fs::rename(&partial, &done).map_err(io_error(&done))?;
            sync_dir(dir);
            let latest = dir.join(LATEST);
            write_atomically(&latest, format!("{name}\n").as_bytes()).map_err(io_error(&latest))
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&partial);
            let _ = fs::remove_dir_all(&done);
            return Err(e);
        }
        // Published: the rest is clean-up, and a failure there loses nothing.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().into_owned();
                let stale = (n.starts_with("step-") && n != name) || n.starts_with(".partial-");
                if stale && entry.path().is_dir() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(done)
    }

    /// Resumes the run saved in the checkpoint directory `dir`. `model` is a freshly built
    /// model of the same architecture (on any device: its parameters are replaced, the
    /// device kept) and `model_config` its configuration, which must equal the saved one up
    /// to JSON whitespace. The loaded trainer continues exactly where the saved one stopped:
    /// on the same backend and dtype the following steps are bit-identical to an
    /// uninterrupted run.
    ///
    /// Only reads. Errors with [`CheckpointError::NotFound`] without a checkpoint,
    /// [`CheckpointError::Corrupt`] for a missing, truncated or altered file,
    /// [`CheckpointError::Mismatch`] for a different model configuration, parameter set or
    /// float dtype, and [`CheckpointError::Io`] if a file cannot be read.
    pub fn load(
        dir: impl AsRef<Path>,
        model: M,
        model_config: &str,
    ) -> Result<Self, CheckpointError> {
        let (info, mut files) = read_verified(dir.as_ref())?;
        if canonical_json(&info.model_config) != canonical_json(model_config) {
            return Err(CheckpointError::Mismatch {
                what: "model config",
                reason: format!(
                    "the checkpoint was saved for {}, not {}",
                    canonical_json(&info.model_config),
                    canonical_json(model_config)
                ),
            });
        }
        let dtype = float_dtype(&model);
        if dtype != info.float_dtype {
            return Err(CheckpointError::Mismatch {
                what: "dtype",
                reason: format!("the checkpoint holds {}, the model {dtype}", info.float_dtype),
            });
        }
        let mut take = |file: &str| Bytes::from_bytes_vec(files.remove(file).unwrap_or_default());
        let record = |file: &str, bytes: Bytes| {
            ModuleRecord::from_bytes(bytes).map_err(|e| CheckpointError::Corrupt {
                path: info.path.join(file),
                reason: e.to_string(),
            })
        };
        let mismatch = |e: burn::store::RecordError| CheckpointError::Mismatch {
            what: "parameters",
            reason: e.to_string(),
        };
        let model_record = record(MODEL_FILE, take(MODEL_FILE))?;
        let ema_record = record(EMA_FILE, take(EMA_FILE))?;
        let optimizer_record = OptimizerRecord::from_bytes(take(OPTIMIZER_FILE)).map_err(|e| {
            CheckpointError::Corrupt { path: info.path.join(OPTIMIZER_FILE), reason: e.to_string() }
        })?;
        let model = model.try_load_record(model_record).map_err(mismatch)?.train();
        let ema = model.valid().try_load_record(ema_record).map_err(mismatch)?;
        let optimizer = info.trainer.adam().load_record(optimizer_record);
        // A schedule's state is its step count: replayed, not stored.
        let schedule = info.trainer.lr_schedule(info.step).map_err(|e| {
            CheckpointError::Corrupt { path: info.path.join(TRAINER_FILE), reason: e.to_string() }
        })?;
        let posthoc = match &info.trainer.posthoc_ema {
            None => None,
            Some(config) => {
                let mut tracker = PostHocTracker::new(config, &model).map_err(|e| {
                    let path = info.path.join(TRAINER_FILE);
                    CheckpointError::Corrupt { path, reason: e.to_string() }
                })?;
                for (i, profile) in tracker.emas.iter_mut().enumerate() {
                    let file = posthoc_file(i);
                    let loaded = record(&file, take(&file))?;
                    *profile = model.valid().try_load_record(loaded).map_err(mismatch)?;
                }
                Some(tracker)
            }
        };
        Ok(Self {
            model,
            ema,
            optimizer,
            schedule,
            posthoc,
            config: info.trainer,
            model_config: info.model_config,
            step: info.step,
            parallel: None,
            deferred: None,
        })
    }
}
