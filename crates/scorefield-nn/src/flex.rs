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

/// Runs `f` compiled for AVX2 and FMA where the processor has both (detected at run time, as
/// burn-flex's and gemm's own kernels do), plainly otherwise: the loops that `f` inlines then
/// vectorise 8 f32 (4 f64) wide instead of the x86-64 baseline's SSE2 4 (2). `f` and what it
/// calls should be `#[inline(always)]` (closures called once are inlined anyway) so that their
/// code is generated inside the AVX2 function.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the processor has AVX2 and FMA (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}
