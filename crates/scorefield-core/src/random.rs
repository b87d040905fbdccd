//! Host-side randomness, seeded and backend-independent.
//!
//! Noise is drawn on the host with [`rand`] / [`rand_distr`] and uploaded, so the same seed
//! gives the same numbers on every backend. Seed a [`rand::rngs::StdRng`] with
//! `StdRng::seed_from_u64(seed)` and pass it explicitly.

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A tensor of i.i.d. `N(0, 1)` samples of the given shape.
pub fn standard_normal<const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    device: &Device,
    rng: &mut R,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A tensor of i.i.d. Rademacher samples (±1 with probability ½ each) of the given shape.
pub fn rademacher<const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    device: &Device,
    rng: &mut R,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
