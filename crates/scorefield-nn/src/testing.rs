//! Test helpers: an f64 flex device and central-difference JVP checks.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// The flex device with f64 as its default float type. Every test in this crate's test binary
/// uses it, so the first one to run configures it.
pub fn device() -> Device {
    let mut device = scorefield_core::device("flex").unwrap();
    let _ = device.configure(FloatDType::F64); // AlreadyInitialized after the first test
    assert_eq!(device.settings().float_dtype, FloatDType::F64);
    device
}

/// A tensor of standard normal values.
pub fn normal<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), &device())
}

/// Asserts `jvp ≈ [f(x + h v) − f(x − h v)]/2h` (h = 1e-6, f64) to 1e-4 relative.
pub fn assert_jvp<const DI: usize, const DO: usize>(
    f: impl Fn(Tensor<DI>) -> Tensor<DO>,
    x: Tensor<DI>,
    v: Tensor<DI>,
    jvp: Tensor<DO>,
) {
    let h = 1e-6;
    let plus = f(x.clone().add(v.clone().mul_scalar(h)));
    let minus = f(x.sub(v.mul_scalar(h)));
    let fd = plus.sub(minus).div_scalar(2.0 * h).try_into_vec_as::<f64>().unwrap();
    let jvp = jvp.try_into_vec_as::<f64>().unwrap();
    assert_eq!(fd.len(), jvp.len());
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (a, b) in jvp.iter().zip(&fd) {
        assert!((a - b).abs() <= 1e-4 * scale, "jvp {a} vs finite difference {b} (scale {scale})");
    }
}

/// A tensor of standard normal values of float type `dtype` on `dev` (with or without autodiff).
pub fn random<const D: usize>(
    shape: [usize; D],
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(v, shape), (dev, dtype))
}

/// A tensor's values as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().unwrap()
}
