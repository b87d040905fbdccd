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

/// Whether the processor has AVX2 and FMA (detected at run time, as burn-flex's and gemm's own
/// kernels do; cached by `std`).
#[inline(always)]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `avx2_twin!(kernel, kernel_avx2, kernel_dispatch, (args))` defines, for an
/// `#[inline(always)]` function `kernel<E: Real>(args)`, its twin compiled for AVX2 and FMA
/// (the body inlined into a `#[target_feature]` function, so that its loops vectorise 8 f32 /
/// 4 f64 wide instead of the x86-64 baseline's SSE2 4 / 2) and `kernel_dispatch(args)`, which
/// runs the twin where the processor has both ([`has_avx2_fma`]) and `kernel` otherwise.
/// (A generic "run this closure with AVX2" helper depends on LLVM inlining the closure, which
/// it does for small closures only.)
macro_rules! avx2_twin {
    ($name:ident, $twin:ident, $dispatch:ident, ($($arg:ident: $ty:ty),* $(,)?)) => {
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        fn $twin<E: Real>($($arg: $ty),*) {
            $name($($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn $dispatch<E: Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::flex::has_avx2_fma() {
                // SAFETY: the processor has AVX2 and FMA (checked just above).
                return unsafe { $twin($($arg),*) };
            }
            $name($($arg),*)
        }
    };
}
pub(crate) use avx2_twin;
