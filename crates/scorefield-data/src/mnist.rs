//! MNIST: 28×28 grey-scale digits in IDX files, read from a directory holding either the
//! training split (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`) or the test split
//! (`t10k-…`), each gzip-compressed (`.gz`) or raw.
//!
//! The directory comes from the caller (`--data-dir`), else the `SCOREFIELD_MNIST_DIR`
//! environment variable, else `data/mnist` ([`resolve_dir`]). Images become NCHW f32 tensors
//! in [0, 1]; [`Mnist::batch`] dequantises them as the NCSN code does, `x·255/256 + u/256`,
//! `u ~ U(0, 1)`.
//!
//! With the `download` feature (on by default), [`download`] fetches a split's two gzip files
//! over HTTPS from the [`MIRRORS`] in turn, checks each against its published MD5
//! ([`CHECKSUMS`]) and writes it atomically; offline it fails fast with
//! [`MnistError::Download`], whose message says what to do instead.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use thiserror::Error;

use crate::idx::{self, IdxError};

/// The environment variable naming the MNIST directory.
pub const ENV_VAR: &str = "SCOREFIELD_MNIST_DIR";

/// What can go wrong reading MNIST.
#[derive(Debug, Error)]
pub enum MnistError {
    /// Neither split's files are in the directory.
    #[error(
        "no MNIST files in {dir}: expected train-images-idx3-ubyte[.gz] and \
         train-labels-idx1-ubyte[.gz], or the t10k-* pair; pass --data-dir or set {ENV_VAR}"
    )]
    NotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a valid IDX file.
    #[error("{path}: {source}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: IdxError,
    },
    /// The files are valid IDX but not MNIST-shaped, or images and labels disagree.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A file's MD5 is not the published one (a corrupt, truncated or altered download).
    #[error(
        "{file}: MD5 {actual}, expected {expected}: the file is corrupt or not the official one"
    )]
    Checksum {
        /// The file name, e.g. `train-images-idx3-ubyte.gz`.
        file: String,
        /// The published MD5, hex.
        expected: String,
        /// The MD5 of the bytes received, hex.
        actual: String,
    },
    /// No mirror delivered a file: the machine is offline, or every mirror failed.
    #[error(
        "could not download {file} into {dir} from any mirror:\n  {}\nIf this machine is \
         offline, copy the MNIST .gz files of a split (train-images-idx3-ubyte.gz and \
         train-labels-idx1-ubyte.gz, or the t10k-* pair) from a machine that is online into \
         {dir}, or point --data-dir or {ENV_VAR} at a directory that holds them",
        .attempts.join("\n  ")
    )]
    Download {
        /// The file that could not be fetched.
        file: String,
        /// The directory it was to be written to.
        dir: PathBuf,
        /// One line per mirror tried: the URL and why it failed.
        attempts: Vec<String>,
    },
    /// An index past the last image (in [`Mnist::images`], [`Mnist::batch`]).
    #[error("MNIST index {index} is out of range: the split has {len} images")]
    IndexOutOfRange {
        /// The first offending index.
        index: usize,
        /// The number of images.
        len: usize,
    },
}

/// Which split a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images (`train-*`).
    Train,
    /// The 10,000 test images (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// The split's two gzip files as published, images then labels
    /// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`).
    pub fn files(self) -> [&'static str; 2] {
        match self {
            Split::Train => ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"],
            Split::Test => ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
        }
    }
}

/// The published MD5 of each MNIST gzip file, hex.
pub const CHECKSUMS: [(&str, &str); 4] = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
];

/// The published MD5 of an MNIST gzip file (`None` for any other name).
pub fn checksum(file: &str) -> Option<&'static str> {
    CHECKSUMS.iter().find(|(name, _)| *name == file).map(|&(_, md5)| md5)
}

/// The mirrors [`download`] tries, in order: each URL is a directory holding the four files.
/// (Yann LeCun's original site no longer serves them to scripts.)
pub const MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// The MNIST directory: `explicit` if given, else `$SCOREFIELD_MNIST_DIR`, else `data/mnist`.
pub fn resolve_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ENV_VAR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data/mnist"))
}

/// MNIST images (`u8`, row-major `[n, 28, 28]`) and labels.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// Which split was read.
    pub split: Split,
    /// The pixels, `n·28·28` bytes.
    pub images: Vec<u8>,
    /// The digit of each image.
    pub labels: Vec<u8>,
}

/// Side length of an MNIST image.
pub const SIDE: usize = 28;

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

fn read_idx(path: &Path) -> Result<idx::IdxArray, MnistError> {
    let bytes =
        std::fs::read(path).map_err(|source| MnistError::Io { path: path.into(), source })?;
    idx::parse(&bytes).map_err(|source| MnistError::Idx { path: path.into(), source })
}

impl Mnist {
    /// Reads the split found in `dir`, preferring the training split when both are there.
    pub fn load(dir: &Path) -> Result<Self, MnistError> {
        for split in [Split::Train, Split::Test] {
            let stem = split.prefix();
            let images = find(dir, &format!("{stem}-images-idx3-ubyte"));
            let labels = find(dir, &format!("{stem}-labels-idx1-ubyte"));
            if let (Some(images), Some(labels)) = (images, labels) {
                return Self::from_files(split, &images, &labels);
            }
        }
        Err(MnistError::NotFound { dir: dir.to_path_buf() })
    }

    /// Reads an image file and a label file, checking that they are MNIST-shaped and agree.
    pub fn from_files(split: Split, images: &Path, labels: &Path) -> Result<Self, MnistError> {
        let img = read_idx(images)?;
        let lab = read_idx(labels)?;
        if img.dims.len() != 3 || img.dims[1..] != [SIDE, SIDE] {
            return Err(MnistError::Inconsistent {
                path: images.into(),
                reason: format!("images have dimensions {:?}, expected [n, 28, 28]", img.dims),
            });
        }
        if lab.dims.len() != 1 || lab.dims[0] != img.dims[0] {
            return Err(MnistError::Inconsistent {
                path: labels.into(),
                reason: format!(
                    "labels have dimensions {:?}, expected [{}]",
                    lab.dims, img.dims[0]
                ),
            });
        }
        if let Some(bad) = lab.data.iter().find(|&&l| l > 9) {
            return Err(MnistError::Inconsistent {
                path: labels.into(),
                reason: format!("label {bad} is not a digit"),
            });
        }
        Ok(Mnist { split, images: img.data, labels: lab.data })
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `indices` as an NCHW tensor `[n, 1, 28, 28]` in [0, 1] (`pixel / 255`).
    ///
    /// Errors with [`MnistError::IndexOutOfRange`] (naming the first bad index) if an index
    /// is `≥ self.len()`.
    pub fn images(&self, indices: &[usize], device: &Device) -> Result<Tensor<4>, MnistError> {
        self.tensor(indices, device, |p| p as f32 / 255.0)
    }

    /// Images `indices` dequantised as in the NCSN code: `x·255/256 + u/256` with
    /// `x = pixel/255` and `u ~ U(0, 1)` drawn from `rng`, shape `[n, 1, 28, 28]`.
    ///
    /// Errors as [`images`](Self::images); nothing is drawn from `rng` then.
    pub fn batch<R: Rng + ?Sized>(
        &self,
        indices: &[usize],
        device: &Device,
        rng: &mut R,
    ) -> Result<Tensor<4>, MnistError> {
        self.tensor(indices, device, |p| (p as f32 + rng.random::<f32>()) / 256.0)
    }

    /// The label of each of `indices`, in order. Errors as [`images`](Self::images).
    pub fn labels_of(&self, indices: &[usize]) -> Result<Vec<u8>, MnistError> {
        self.check(indices)?;
        Ok(indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// [`MnistError::IndexOutOfRange`] for the first index `≥ self.len()` (or past the last
    /// whole image in `self.images`, should the public fields have been made to disagree).
    fn check(&self, indices: &[usize]) -> Result<(), MnistError> {
        let len = self.len().min(self.images.len() / (SIDE * SIDE));
        match indices.iter().find(|&&i| i >= len) {
            Some(&index) => Err(MnistError::IndexOutOfRange { index, len }),
            None => Ok(()),
        }
    }

    fn tensor(
        &self,
        indices: &[usize],
        device: &Device,
        mut f: impl FnMut(u8) -> f32,
    ) -> Result<Tensor<4>, MnistError> {
        self.check(indices)?;
        let px = SIDE * SIDE;
        let mut values = Vec::with_capacity(indices.len() * px);
        for &i in indices {
            values.extend(self.images[i * px..(i + 1) * px].iter().map(|&p| f(p)));
        }
        Ok(Tensor::from_data(TensorData::new(values, [indices.len(), 1, SIDE, SIDE]), device))
    }
}

/// How [`download_with`] fetches: the mirrors, in order, and the time limits that make an
/// offline machine fail fast.
#[cfg(feature = "download")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Base URLs, each a directory holding the files (a trailing `/` is added if missing).
    pub mirrors: Vec<String>,
    /// Limit on resolving the host name and on connecting (TLS handshake included).
    pub connect_timeout: std::time::Duration,
    /// Limit on each read from the network: a mirror that stalls this long is abandoned.
    pub read_timeout: std::time::Duration,
}

#[cfg(feature = "download")]
impl Default for DownloadOptions {
    /// The [`MIRRORS`], 10 s to resolve and connect, 30 s per read.
    fn default() -> Self {
        Self {
            mirrors: MIRRORS.iter().map(|m| m.to_string()).collect(),
            connect_timeout: std::time::Duration::from_secs(10),
            read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The MD5 of `bytes`, lower-case hex.
#[cfg(feature = "download")]
fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes).iter().fold(String::with_capacity(32), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Accepts `bytes` as the file `file` only if their MD5 is `expected` (hex, any case);
/// otherwise [`MnistError::Checksum`].
#[cfg(feature = "download")]
fn verify(file: &str, expected: &str, bytes: &[u8]) -> Result<(), MnistError> {
    let actual = md5_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(MnistError::Checksum { file: file.into(), expected: expected.into(), actual })
    }
}

/// Downloads `split`'s two gzip files into `dir` (created if needed) from the [`MIRRORS`]:
/// [`download_with`] with the default [`DownloadOptions`]. Returns the two paths; then
/// [`Mnist::load`]`(dir)` reads them.
#[cfg(feature = "download")]
pub fn download(dir: &Path, split: Split) -> Result<Vec<PathBuf>, MnistError> {
    download_with(dir, split, &DownloadOptions::default())
}

/// Downloads `split`'s two gzip files into `dir` (created if needed). A file already there
/// with the published MD5 is kept. Otherwise each mirror is tried in turn; the bytes are
/// accepted only if their MD5 is the published one ([`CHECKSUMS`]), and written through a
/// temporary file and a rename, so `dir` never holds a partial or unverified file.
///
/// Errors with [`MnistError::Download`] (every mirror failed: its message lists why, and
/// what to do on an offline machine) or [`MnistError::Io`] if the file cannot be written.
#[cfg(feature = "download")]
pub fn download_with(
    dir: &Path,
    split: Split,
    options: &DownloadOptions,
) -> Result<Vec<PathBuf>, MnistError> {
    let config = ureq::Agent::config_builder()
        .timeout_resolve(Some(options.connect_timeout))
        .timeout_connect(Some(options.connect_timeout))
        .timeout_per_read(Some(options.read_timeout))
        .user_agent(concat!("scorefield-data/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut paths = Vec::with_capacity(2);
    for file in split.files() {
        let expected = checksum(file).expect("every split file has a checksum");
        let path = dir.join(file);
        let present = std::fs::read(&path).is_ok_and(|b| verify(file, expected, &b).is_ok());
        if !present {
            let bytes = fetch(&agent, file, expected, dir, &options.mirrors)?;
            crate::image::write_atomically(&path, &bytes).map_err(|e| match e {
                crate::image::ImageError::Io { path, source } => MnistError::Io { path, source },
                other => {
                    MnistError::Io { path: path.clone(), source: std::io::Error::other(other) }
                }
            })?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// The bytes of `file` from the first mirror that delivers them with MD5 `expected`.
#[cfg(feature = "download")]
fn fetch(
    agent: &ureq::Agent,
    file: &str,
    expected: &str,
    dir: &Path,
    mirrors: &[String],
) -> Result<Vec<u8>, MnistError> {
    /// Far above the largest file (9.9 MB), far below harm.
    const LIMIT: u64 = 64 << 20;
    let mut attempts = Vec::with_capacity(mirrors.len());
    for mirror in mirrors {
        let sep = if mirror.ends_with('/') { "" } else { "/" };
        let url = format!("{mirror}{sep}{file}");
        let bytes = agent
            .get(&url)
            .call()
            .and_then(|mut response| response.body_mut().with_config().limit(LIMIT).read_to_vec());
        match bytes {
            Ok(bytes) => match verify(file, expected, &bytes) {
                Ok(()) => return Ok(bytes),
                Err(e) => attempts.push(format!("{url}: {e}")),
            },
            Err(e) => attempts.push(format!("{url}: {e}")),
        }
    }
    if attempts.is_empty() {
        attempts.push("no mirrors were given".into());
    }
    Err(MnistError::Download { file: file.into(), dir: dir.into(), attempts })
}

/// The directory of the official test split (`t10k-*.gz`) for the tests that need real
/// digits: `../shared/data/mnist` beside the repository, else `$SCOREFIELD_MNIST_DIR`.
///
/// Without the files it panics, saying where to put them: such a test fails, it never passes
/// by skipping. (Their names start with `real_mnist`, so `cargo test -- --skip real_mnist`
/// deselects them explicitly, and the test report says so.)
#[cfg(test)]
pub(crate) fn real_test_split_dir() -> PathBuf {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let has_split = |dir: &Path| Split::Test.files().iter().all(|f| dir.join(f).is_file());
    let candidates = std::iter::once(shared.clone())
        .chain(std::env::var_os(ENV_VAR).map(PathBuf::from))
        .collect::<Vec<_>>();
    match candidates.iter().find(|dir| has_split(dir)) {
        Some(dir) => dir.clone(),
        None => panic!(
            "this test needs the official MNIST test split ({} and {}), found in none of {:?}: \
             copy the two files into {} or point {ENV_VAR} at a directory holding them \
             (or deselect these tests with `cargo test -- --skip real_mnist`)",
            Split::Test.files()[0],
            Split::Test.files()[1],
            candidates,
            shared.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::{IdxArray, encode};

    fn write_split(dir: &Path, prefix: &str, n: usize, label_dims: Vec<usize>) {
        let images = IdxArray {
            dims: vec![n, 28, 28],
            data: (0..n * 784).map(|i| (i % 256) as u8).collect(),
        };
        let labels = IdxArray {
            dims: label_dims.clone(),
            data: (0..label_dims.iter().product()).map(|i| (i % 10) as u8).collect(),
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), encode(&images)).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), encode(&labels)).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("scorefield-mnist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_raw_split_and_scales_to_unit_interval() {
        let dir = temp_dir("raw");
        write_split(&dir, "t10k", 3, vec![3]);
        let m = Mnist::load(&dir).unwrap();
        assert_eq!((m.split, m.len()), (Split::Test, 3));
        let device = scorefield_core::device("flex").unwrap();
        let x = m.images(&[1], &device).unwrap();
        assert_eq!(x.dims(), [1, 1, 28, 28]);
        let v = x.try_into_vec_as::<f32>().unwrap();
        assert_eq!(v[0], (784 % 256) as f32 / 255.0);
        let mut rng = rand::rng();
        let d = m.batch(&[0, 2], &device, &mut rng).unwrap().try_into_vec_as::<f32>().unwrap();
        for (k, &y) in d.iter().enumerate() {
            let p = m.images[(if k < 784 { 0 } else { 2 * 784 - 784 }) + k] as f32;
            assert!(y >= p / 256.0 && y < (p + 1.0) / 256.0, "{y} not in the bin of {p}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_or_mismatched_files_are_typed_errors() {
        let dir = temp_dir("bad");
        assert!(matches!(Mnist::load(&dir), Err(MnistError::NotFound { .. })));
        write_split(&dir, "train", 3, vec![4]);
        let err = Mnist::load(&dir).unwrap_err();
        assert!(matches!(err, MnistError::Inconsistent { .. }), "{err}");
        std::fs::write(dir.join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 3, 1]).unwrap();
        let err = Mnist::load(&dir).unwrap_err();
        assert!(matches!(err, MnistError::Idx { source: IdxError::Truncated { .. }, .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An index past the end is a typed error naming it and the length, from every lookup
    /// (images, dequantised batches, labels), even after valid ones in the same call; the
    /// last valid index still works.
    #[test]
    fn an_index_past_the_end_is_a_typed_error() {
        let dir = temp_dir("index");
        write_split(&dir, "t10k", 3, vec![3]);
        let m = Mnist::load(&dir).unwrap();
        let device = scorefield_core::device("flex").unwrap();
        let out_of_range = |r: Result<_, MnistError>| match r {
            Err(MnistError::IndexOutOfRange { index, len }) => (index, len),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("an out-of-range index was accepted"),
        };
        assert_eq!(out_of_range(m.images(&[0, 3], &device).map(drop)), (3, 3));
        assert_eq!(out_of_range(m.images(&[usize::MAX], &device).map(drop)), (usize::MAX, 3));
        let mut rng = rand::rng();
        assert_eq!(out_of_range(m.batch(&[2, 1, 7], &device, &mut rng).map(drop)), (7, 3));
        assert_eq!(out_of_range(m.labels_of(&[1, 4]).map(drop)), (4, 3));
        let err = m.images(&[5], &device).unwrap_err().to_string();
        assert!(err.contains("index 5") && err.contains("3 images"), "{err}");
        assert_eq!(m.images(&[2], &device).unwrap().dims(), [1, 1, 28, 28]);
        assert_eq!(m.labels_of(&[2, 0]).unwrap(), [2, 0]);
        assert_eq!(m.images(&[], &device).unwrap().dims(), [0, 1, 28, 28]);
        // Public fields made to disagree (labels for 3 images, pixels for 2): still no panic.
        let short = Mnist { images: m.images[..2 * 784].to_vec(), ..m.clone() };
        assert_eq!(out_of_range(short.images(&[2], &device).map(drop)), (2, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The official test split: 10,000 digits with the published label counts.
    #[test]
    fn real_mnist_test_split_has_the_published_label_counts() {
        let dir = real_test_split_dir();
        let m = Mnist::load(&dir).unwrap();
        assert_eq!((m.split, m.len(), m.images.len()), (Split::Test, 10_000, 10_000 * 784));
        let mut counts = [0usize; 10];
        for &l in &m.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    }

    /// A one-thread HTTP/1.1 server on 127.0.0.1 answering `GET /<prefix>/<file>` from
    /// `files` (`(prefix, file, bytes)`), 404 otherwise, one request per connection; with
    /// `stall`, it accepts connections and never answers. Returns its base URL.
    #[cfg(feature = "download")]
    fn serve(files: Vec<(&'static str, &'static str, Vec<u8>)>, stall: bool) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if stall {
                    held.push(stream);
                    continue;
                }
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = files
                    .iter()
                    .find(|(prefix, file, _)| target == format!("/{prefix}/{file}"))
                    .map(|(_, _, bytes)| bytes.clone());
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not here".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
            }
        });
        url
    }

    #[cfg(feature = "download")]
    fn quick(mirrors: &[String]) -> DownloadOptions {
        let short = std::time::Duration::from_millis(500);
        DownloadOptions { mirrors: mirrors.to_vec(), connect_timeout: short, read_timeout: short }
    }

    /// RFC 1321's test vectors; a checksum error names the file and both digests.
    #[cfg(feature = "download")]
    #[test]
    fn md5_verification_accepts_the_expected_bytes_and_rejects_any_other() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert!(verify("x", "d41d8cd98f00b204e9800998ecf8427e", b"").is_ok());
        assert!(verify("x", "d41d8cd98f00b204e9800998ecf8427e", b" ").is_err());
        assert!(verify("x", "900150983CD24FB0D6963F7D28E17F72", b"abc").is_ok(), "any case");
        let file = "t10k-labels-idx1-ubyte.gz";
        let err = verify(file, checksum(file).unwrap(), b"abc").unwrap_err();
        match &err {
            MnistError::Checksum { file: f, expected, actual } => {
                assert_eq!((f.as_str(), expected.as_str()), (file, CHECKSUMS[3].1));
                assert_eq!(actual, "900150983cd24fb0d6963f7d28e17f72");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(checksum("train-images-idx3-ubyte.gz"), Some(CHECKSUMS[0].1));
        assert_eq!(checksum("README.md"), None);
    }

    /// The published checksums against the official test split; one flipped bit is refused.
    #[cfg(feature = "download")]
    #[test]
    fn real_mnist_official_files_match_their_published_md5() {
        let dir = real_test_split_dir();
        for file in Split::Test.files() {
            let mut bytes = std::fs::read(dir.join(file)).unwrap();
            verify(file, checksum(file).unwrap(), &bytes).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1; // one flipped bit
            assert!(matches!(
                verify(file, checksum(file).unwrap(), &bytes),
                Err(MnistError::Checksum { .. })
            ));
        }
    }

    /// Unreachable mirrors (a reserved name that never resolves, a closed port, a server that
    /// never answers) fail within the time limits, with a message naming every mirror and
    /// saying what to do offline, and leave nothing in the directory.
    #[cfg(feature = "download")]
    #[test]
    fn offline_mirrors_fail_fast_with_a_clear_message() {
        let dir = temp_dir("offline");
        let mirrors = [
            "https://mnist.invalid/mnist/".to_string(),
            "https://127.0.0.1:1/mnist".to_string(),
            format!("{}/stall/", serve(vec![], true)),
        ];
        let start = std::time::Instant::now();
        let err = download_with(&dir, Split::Train, &quick(&mirrors)).unwrap_err();
        let elapsed = start.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}");
        let MnistError::Download { file, attempts, .. } = &err else { panic!("{err}") };
        assert_eq!((file.as_str(), attempts.len()), ("train-images-idx3-ubyte.gz", 3));
        let message = err.to_string();
        for needle in [&mirrors[0], "127.0.0.1:1", "/stall/", "offline", "--data-dir", ENV_VAR] {
            assert!(message.contains(needle), "{needle:?} not in: {message}");
        }
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
        println!("{message}\n(failed in {elapsed:?})");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A mirror that serves the wrong bytes is refused (checksum) and nothing is written.
    #[cfg(feature = "download")]
    #[test]
    fn a_mirror_with_wrong_bytes_is_refused() {
        let dir = temp_dir("download");
        let [images, labels] = Split::Test.files();
        let garbage = vec![("bad", images, b"<html>".to_vec()), ("bad", labels, b"oops".to_vec())];
        let only_bad = serve(garbage.clone(), false);
        let err =
            download_with(&dir, Split::Test, &quick(&[format!("{only_bad}/bad")])).unwrap_err();
        assert!(matches!(&err, MnistError::Download { .. }), "{err}");
        assert!(err.to_string().contains("MD5"), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing unverified written");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Past a missing file and a mirror with the wrong bytes, the next mirror's official files
    /// are used; files already present and intact are not fetched again.
    #[cfg(feature = "download")]
    #[test]
    fn real_mnist_download_uses_the_next_good_mirror_and_keeps_intact_files() {
        let shared = real_test_split_dir();
        let dir = temp_dir("download-real");
        let [images, labels] = Split::Test.files();
        let garbage = vec![("bad", images, b"<html>".to_vec()), ("bad", labels, b"oops".to_vec())];
        let read = |f: &str| std::fs::read(shared.join(f)).unwrap();
        let mut files = garbage;
        files.extend([("good", images, read(images)), ("good", labels, read(labels))]);
        let base = serve(files, false);
        let mirrors = [format!("{base}/missing/"), format!("{base}/bad/"), format!("{base}/good")];
        let paths = download_with(&dir, Split::Test, &quick(&mirrors)).unwrap();
        assert_eq!(paths, [dir.join(images), dir.join(labels)]);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), read(images));
        let m = Mnist::load(&dir).unwrap();
        assert_eq!((m.split, m.len()), (Split::Test, 10_000));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [images, labels], "no temporary file is left");
        // Present and intact: no mirror is asked.
        let again = download_with(&dir, Split::Test, &quick(&[])).unwrap();
        assert_eq!(again, paths);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
