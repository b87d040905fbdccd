//! MNIST: 28×28 grey-scale digits in IDX files, read from a directory holding either the
//! training split (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`) or the test split
//! (`t10k-…`), each gzip-compressed (`.gz`) or raw.
//!
//! The directory comes from the caller (`--data-dir`), else the `SCOREFIELD_MNIST_DIR`
//! environment variable, else `data/mnist` ([`resolve_dir`]). Images become NCHW f32 tensors
//! in [0, 1]; [`Mnist::batch`] dequantises them as the NCSN code does, `x·255/256 + u/256`,
//! `u ~ U(0, 1)`.

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
}

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
    pub fn images(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        self.tensor(indices, device, |p| p as f32 / 255.0)
    }

    /// Images `indices` dequantised as in the NCSN code: `x·255/256 + u/256` with
    /// `x = pixel/255` and `u ~ U(0, 1)` drawn from `rng`, shape `[n, 1, 28, 28]`.
    pub fn batch<R: Rng + ?Sized>(
        &self,
        indices: &[usize],
        device: &Device,
        rng: &mut R,
    ) -> Tensor<4> {
        self.tensor(indices, device, |p| (p as f32 + rng.random::<f32>()) / 256.0)
    }

    fn tensor(
        &self,
        indices: &[usize],
        device: &Device,
        mut f: impl FnMut(u8) -> f32,
    ) -> Tensor<4> {
        let px = SIDE * SIDE;
        let mut values = Vec::with_capacity(indices.len() * px);
        for &i in indices {
            values.extend(self.images[i * px..(i + 1) * px].iter().map(|&p| f(p)));
        }
        Tensor::from_data(TensorData::new(values, [indices.len(), 1, SIDE, SIDE]), device)
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
        let x = m.images(&[1], &device);
        assert_eq!(x.dims(), [1, 1, 28, 28]);
        let v = x.try_into_vec_as::<f32>().unwrap();
        assert_eq!(v[0], (784 % 256) as f32 / 255.0);
        let mut rng = rand::rng();
        let d = m.batch(&[0, 2], &device, &mut rng).try_into_vec_as::<f32>().unwrap();
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

    /// The official test split shipped beside the repository (`../shared/data/mnist`), when
    /// present: 10,000 digits with roughly balanced labels.
    #[test]
    fn reads_the_official_test_split_when_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
        if !dir.is_dir() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let m = Mnist::load(&dir).unwrap();
        assert_eq!((m.split, m.len(), m.images.len()), (Split::Test, 10_000, 10_000 * 784));
        let mut counts = [0usize; 10];
        for &l in &m.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    }
}
