//! Host-side randomness, seeded and backend-independent.
//!
//! Noise is drawn on the host with [`rand`] / [`rand_distr`] and uploaded, so the same seed
//! gives the same numbers on every backend. Seed a [`rand::rngs::StdRng`] with
//! `StdRng::seed_from_u64(seed)` and pass it explicitly.
//!
//! Values are drawn in f64 and converted once to the float type of the tensor-creation
//! options (`&device`: the device's default; `(&device, DType::F64)`: f64). `rand_distr` draws
//! an f32 normal as an f64 one rounded, so an f32 run and an f64 run from one seed see the
//! same numbers, the f32 run their rounding.

use burn::tensor::{Tensor, TensorCreationOptions, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A tensor of i.i.d. `N(0, 1)` samples of the given shape, on the device and in the float
/// type of `options`.
pub fn standard_normal<const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    options: impl Into<TensorCreationOptions>,
    rng: &mut R,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), options)
}

/// A tensor of i.i.d. Rademacher samples (±1 with probability ½ each) of the given shape,
/// on the device and in the float type of `options`.
pub fn rademacher<const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    options: impl Into<TensorCreationOptions>,
    rng: &mut R,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
    Tensor::from_data(TensorData::new(values, shape), options)
}
