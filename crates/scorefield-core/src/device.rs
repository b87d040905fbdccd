//! Choosing the compute device at run time.
//!
//! Library code never names a backend: every tensor carries its [`Device`]. Applications turn
//! a name given by the user (`--backend wgpu`) into a device with [`device`]. Which backends
//! exist is decided by cargo features: `flex` (default, pure-Rust CPU), `ndarray` (pure-Rust
//! CPU, deprecated upstream in favour of flex but kept working), `wgpu` (GPU through
//! Vulkan/Metal/DX12) and `cuda` (NVIDIA).

use core::fmt;
use core::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A backend scorefield can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Burn's pure-Rust CPU backend (feature `flex`, on by default).
    Flex,
    /// The `ndarray` CPU backend (feature `ndarray`).
    NdArray,
    /// The wgpu GPU backend (feature `wgpu`): Vulkan, Metal or DX12, whichever the system has.
    Wgpu,
    /// The CUDA backend (feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Every backend, in the order they are listed in errors and help texts.
    pub const ALL: [BackendKind; 4] =
        [BackendKind::Flex, BackendKind::NdArray, BackendKind::Wgpu, BackendKind::Cuda];

    /// The backend's name, which is also the name of its cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::NdArray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this backend's feature was compiled in.
    pub fn is_available(self) -> bool {
        match self {
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::NdArray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The default device of this backend, or [`Error::BackendNotCompiled`].
    pub fn device(self) -> Result<Device> {
        match self {
            #[cfg(feature = "flex")]
            BackendKind::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            // burn-ndarray is deprecated upstream; our users asked for it
            BackendKind::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(Error::BackendNotCompiled { name: other.name() }),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == lower)
            .ok_or_else(|| Error::UnknownBackend(s.to_string()))
    }
}

/// Turns a backend name (`flex`, `ndarray`, `wgpu` or `cuda`, case-insensitive) into its
/// default [`Device`].
///
/// ```
/// let device = scorefield_core::device("flex").unwrap();
/// assert!(scorefield_core::device("tpu").is_err());
/// ```
pub fn device(name: &str) -> Result<Device> {
    name.parse::<BackendKind>()?.device()
}
