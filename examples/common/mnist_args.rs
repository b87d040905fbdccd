//! The `--backend` and `--data-dir` options of the MNIST examples that read the data as it is
//! (`mnist_classifier`, `sample_quality`, `ddpm_mnist`), flattened into each one's options.

use std::error::Error;
use std::path::PathBuf;

use burn::tensor::Device;
use scorefield::data::mnist::{self, Mnist};

/// Where to compute and where the digits are.
#[derive(clap::Args, Debug)]
pub struct MnistArgs {
    /// The compute backend: flex, ndarray, wgpu or cuda (the last three need their cargo
    /// feature).
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// The MNIST directory (else $SCOREFIELD_MNIST_DIR, else data/mnist; the offline copy is
    /// at ../shared/data/mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl MnistArgs {
    /// The device, the resolved MNIST directory and the digits read from it.
    pub fn open(&self) -> Result<(Device, PathBuf, Mnist), Box<dyn Error>> {
        let device = scorefield::device(&self.backend)?;
        let dir = mnist::resolve_dir(self.data_dir.as_deref());
        let data = Mnist::load(&dir)?;
        Ok((device, dir, data))
    }
}
