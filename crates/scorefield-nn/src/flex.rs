//! What the fused kernels ([`crate::group_norm_silu`], [`crate::conv`]) share: whether a call
//! can take the flex kernel, and flex tensors from vectors.

use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::tensor::{DType, Device, TensorData};

/// Whether the first tensor (`dtype` on `device`) and every other one live on flex (with or
/// without autodiff) in one float type that has a kernel (f32, f64).
pub(crate) fn on_flex_in(
    dtype: DType,
    device: Device,
    others: impl IntoIterator<Item = (DType, Device)>,
) -> bool {
    let on_flex =
        |device: Device| matches!(device.as_dispatch().clone().inner(), DispatchDevice::Flex(_));
    matches!(dtype, DType::F32 | DType::F64)
        && on_flex(device)
        && others.into_iter().all(|(d, device)| d == dtype && on_flex(device))
}

/// A flex tensor of `values` in `shape`.
pub(crate) fn flex_tensor<E: burn::tensor::Element>(
    values: Vec<E>,
    shape: &[usize],
) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape.to_vec()))
}
