//! Where a sampler's Gaussian noise comes from.
//!
//! The [`Driver`](super::Driver) asks a [`NoiseSource`] for every `z ~ N(0, I)` it needs, so
//! the caller decides what randomness means for a run:
//!
//! - [`PerSampleNoise`]: one stream per sample, seeded from `(seed, i)`: sample `i` draws the
//!   same noise whatever the batch size, so one sample of a grid can be regenerated alone;
//! - [`RngNoise`]: the whole batch from one `rng` (the [`Sampler`](super::Sampler) trait's);
//! - [`FixedNoise`]: tensors the caller supplies, in order, to replay a reference run or to
//!   test one step against a reference value;
//! - [`DeviceNoise`]: the backend's own generator, on the device: speed over reproducibility.
//!
//! All but [`DeviceNoise`] are drawn on the host (backend-independent, bit-identical across
//! backends) in f64 and cast once to the dtype of the state; each draw is then one upload of
//! the state's size. [`DeviceNoise`] draws where the state lives, with no host work and no
//! transfer, at the price of numbers that differ between backends (and between versions of a
//! backend).

use std::collections::VecDeque;

use burn::tensor::{Distribution as TensorDistribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// A source of standard normal noise for a sampler.
pub trait NoiseSource<const D: usize> {
    /// `z ~ N(0, I)` of the shape, device and dtype of `like`.
    fn standard_normal(&mut self, like: &Tensor<D>) -> Result<Tensor<D>>;
}

/// The whole batch from one random number generator, sample after sample.
pub struct RngNoise<'a>(pub &'a mut dyn RngCore);

impl std::fmt::Debug for RngNoise<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RngNoise(..)")
    }
}

impl<const D: usize> NoiseSource<D> for RngNoise<'_> {
    fn standard_normal(&mut self, like: &Tensor<D>) -> Result<Tensor<D>> {
        let n = like.shape().num_elements();
        let values: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut self.0)).collect();
        Ok(upload(values, like))
    }
}

/// One stream per sample: stream `i` is a [`StdRng`] seeded from `(seed, i)`, so the noise
/// of sample `i` does not depend on the batch size.
#[derive(Debug, Clone)]
pub struct PerSampleNoise {
    streams: Vec<StdRng>,
}

impl PerSampleNoise {
    /// Streams for samples `0..batch` of the run seeded `seed`.
    pub fn new(seed: u64, batch: usize) -> Self {
        Self::for_samples(seed, 0..batch as u64)
    }

    /// Streams for the given sample indices (e.g. `[17]` to regenerate sample 17 of a grid
    /// alone).
    pub fn for_samples(seed: u64, samples: impl IntoIterator<Item = u64>) -> Self {
        let streams =
            samples.into_iter().map(|i| StdRng::seed_from_u64(stream_seed(seed, i))).collect();
        PerSampleNoise { streams }
    }

    /// The number of streams (the batch size it serves).
    pub fn batch_size(&self) -> usize {
        self.streams.len()
    }
}

impl<const D: usize> NoiseSource<D> for PerSampleNoise {
    /// Errors with [`Error::ShapeMismatch`] unless the batch has one sample per stream.
    fn standard_normal(&mut self, like: &Tensor<D>) -> Result<Tensor<D>> {
        let dims = like.dims();
        if dims[0] != self.streams.len() {
            return Err(Error::ShapeMismatch {
                context: "per-sample noise",
                expected: format!("a batch of {} (one per stream)", self.streams.len()),
                got: format!("{dims:?}"),
            });
        }
        let per: usize = dims[1..].iter().product();
        let mut values = Vec::with_capacity(per * dims[0]);
        for rng in &mut self.streams {
            values.extend((0..per).map(|_| -> f64 { StandardNormal.sample(rng) }));
        }
        Ok(upload(values, like))
    }
}

/// Noise drawn on the device by the backend's own generator (`Tensor::random` with
/// `N(0, 1)`): no host-side drawing and no upload per step, for runs on a GPU where speed
/// matters more than the same numbers on every backend.
///
/// Seed the device's generator with [`Device::seed`](burn::tensor::Device::seed) before the
/// run for a reproducible run on one backend; the numbers differ from those of the host
/// sources and between backends.
///
/// ```
/// use burn::tensor::Tensor;
/// use scorefield_core::sampler::{DeviceNoise, NoiseSource};
///
/// let device = scorefield_core::device("flex")?;
/// device.seed(7);
/// let like = Tensor::<2>::zeros([4, 3], &device);
/// let z = DeviceNoise.standard_normal(&like)?;
/// assert_eq!(z.dims(), [4, 3]);
/// # Ok::<(), scorefield_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceNoise;

impl<const D: usize> NoiseSource<D> for DeviceNoise {
    fn standard_normal(&mut self, like: &Tensor<D>) -> Result<Tensor<D>> {
        let normal = TensorDistribution::Normal(0.0, 1.0);
        Ok(Tensor::random(like.shape(), normal, (&like.device(), like.dtype())))
    }
}

/// Noise the caller supplies, handed out in order.
#[derive(Debug, Clone)]
pub struct FixedNoise<const D: usize> {
    queue: VecDeque<Tensor<D>>,
}

impl<const D: usize> FixedNoise<D> {
    /// The given tensors, first draw first.
    pub fn new(draws: impl IntoIterator<Item = Tensor<D>>) -> Self {
        FixedNoise { queue: draws.into_iter().collect() }
    }

    /// The draws not yet used.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl<const D: usize> NoiseSource<D> for FixedNoise<D> {
    /// Errors with [`Error::InvalidParameter`] when the draws are used up and with
    /// [`Error::ShapeMismatch`] when the next one has another shape than `like`.
    fn standard_normal(&mut self, like: &Tensor<D>) -> Result<Tensor<D>> {
        let z = self.queue.pop_front().ok_or_else(|| {
            Error::invalid("noise", "exhausted", "the sampler drew more noise than was supplied")
        })?;
        if z.dims() != like.dims() {
            return Err(Error::ShapeMismatch {
                context: "supplied noise",
                expected: format!("{:?}", like.dims()),
                got: format!("{:?}", z.dims()),
            });
        }
        Ok(z.cast(like.dtype()))
    }
}

/// The seed of sample `i`'s stream: SplitMix64 of `seed` and `i`, so that neighbouring
/// samples and seeds get unrelated streams.
fn stream_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// f64 host values as a tensor like `like` (shape, device, dtype).
fn upload<const D: usize>(values: Vec<f64>, like: &Tensor<D>) -> Tensor<D> {
    let data = TensorData::new(values, like.shape());
    Tensor::from_data(data, (&like.device(), like.dtype()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_sample_noise_does_not_depend_on_the_batch() {
        let device = crate::device("flex").unwrap();
        let one = Tensor::<3>::zeros([1, 2, 3], &device);
        let many = Tensor::<3>::zeros([16, 2, 3], &device);
        let mut a = PerSampleNoise::new(7, 1);
        let mut b = PerSampleNoise::new(7, 16);
        for _ in 0..3 {
            let za = NoiseSource::standard_normal(&mut a, &one).unwrap();
            let zb = NoiseSource::standard_normal(&mut b, &many).unwrap().narrow(0, 0, 1);
            assert_eq!(za.into_data(), zb.into_data());
        }
        let mut c = PerSampleNoise::for_samples(7, [5]);
        let z5 = NoiseSource::standard_normal(&mut c, &one).unwrap();
        let mut d = PerSampleNoise::new(7, 16);
        let z16 = NoiseSource::standard_normal(&mut d, &many).unwrap().narrow(0, 5, 1);
        assert_eq!(z5.into_data(), z16.into_data());
        assert!(NoiseSource::standard_normal(&mut d, &one).is_err());
    }

    #[test]
    fn device_noise_is_standard_normal_and_follows_the_device_seed() {
        let device = crate::device("flex").unwrap();
        for dtype in [burn::tensor::DType::F32, burn::tensor::DType::F64] {
            let like = Tensor::<2>::zeros([200, 500], (&device, dtype));
            device.seed(3);
            let z = DeviceNoise.standard_normal(&like).unwrap();
            assert_eq!((z.dims(), z.dtype()), ([200, 500], dtype));
            let v = z.clone().into_data().iter::<f64>().collect::<Vec<_>>();
            // Moments of N(0, 1) over n = 10⁵ draws, within 5 standard errors: the mean
            // (s.e. 1/√n), the second moment (√(2/n)), the fourth (√(96/n)), and the
            // share within one standard deviation, Φ(1) − Φ(−1) = 0.682689 (√(p(1−p)/n)).
            let n = v.len() as f64;
            let moment = |k: i32| v.iter().map(|x| x.powi(k)).sum::<f64>() / n;
            let within = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
            assert!(moment(1).abs() < 5.0 / n.sqrt(), "mean {}", moment(1));
            assert!((moment(2) - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "E z² {}", moment(2));
            assert!((moment(4) - 3.0).abs() < 5.0 * (96.0 / n).sqrt(), "E z⁴ {}", moment(4));
            assert!((within - 0.682689).abs() < 5.0 * (0.2166 / n).sqrt(), "{within}");
            // The device seed makes it reproducible; the next draw differs.
            let next = DeviceNoise.standard_normal(&like).unwrap();
            device.seed(3);
            let again = DeviceNoise.standard_normal(&like).unwrap();
            assert_eq!(again.into_data(), z.clone().into_data());
            assert_ne!(next.into_data(), z.into_data());
        }
    }

    #[test]
    fn fixed_noise_replays_and_runs_out() {
        let device = crate::device("flex").unwrap();
        let x = Tensor::<2>::zeros([1, 2], &device);
        let z = Tensor::<2>::from_floats([[0.5, -1.0]], &device);
        let mut fixed = FixedNoise::new([z.clone()]);
        assert_eq!(fixed.standard_normal(&x).unwrap().into_data(), z.into_data());
        assert!(matches!(fixed.standard_normal(&x), Err(Error::InvalidParameter { .. })));
    }
}
