//! Helpers shared by the integration tests.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// The flex device every CPU test runs on.
pub fn flex() -> Device {
    scorefield::device("flex").unwrap()
}

/// A rank-2 f64 tensor on `device`, whatever the device's default float type.
pub fn f64_tensor(values: &[f64], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, DType::F64))
}

/// The values of a tensor as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().unwrap()
}
