//! What the fused kernels (`group_norm_silu`, `conv`, `silu`, `dense`) share: whether a call
//! can take the flex kernel, and flex tensors from vectors.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DispatchDevice, ExtensionType, Flex};
use burn::tensor::{DType, Device, TensorData};

/// An optional tensor among a fused op's inputs (`group_norm_silu`'s shift, `conv2d`'s bias):
/// an enum rather than an `Option`, which Burn 0.22.1's `#[backend_extension]` passes through
/// without unwrapping its dispatch tensor (a type error in the generated code).
#[derive(ExtensionType)]
pub enum OptionalTensor<B: Backend> {
    /// The tensor.
    Present(FloatTensor<B>),
    /// No tensor.
    Absent,
}

impl<B: Backend> OptionalTensor<B> {
    /// From an `Option`.
    pub(crate) fn from_option(tensor: Option<FloatTensor<B>>) -> Self {
        tensor.map_or(OptionalTensor::Absent, OptionalTensor::Present)
    }

    /// Into an `Option`.
    pub(crate) fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            OptionalTensor::Present(t) => Some(t),
            OptionalTensor::Absent => None,
        }
    }
}

impl<C: CheckpointStrategy> OptionalTensor<Autodiff<Flex, C>> {
    /// The tensor and `false`, or, when absent, `true` and an untracked constant of zeros in
    /// `shape`, a parent of the op's backward step that its kernel never reads: one backward
    /// step with a fixed number of parents then serves both cases.
    pub(crate) fn or_untracked_zeros(
        self,
        shape: &[usize],
    ) -> (FloatTensor<Autodiff<Flex, C>>, bool) {
        match self {
            OptionalTensor::Present(t) => (t, false),
            OptionalTensor::Absent => {
                let zeros = vec![0.0f32; shape.iter().product()];
                (FloatTensor::<Autodiff<Flex, C>>::new(flex_tensor(zeros, shape)), true)
            }
        }
    }
}

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

/// `with_float!(dtype, |E| { ... })` runs the block with `E` the float type (`f32` or `f64`) of
/// a fused kernel's `dtype`; the callers route every other type to the stock ops first.
macro_rules! with_float {
    ($dtype:expr, |$E:ident| $body:block) => {
        match $dtype {
            burn::tensor::DType::F32 => {
                type $E = f32;
                $body
            }
            burn::tensor::DType::F64 => {
                type $E = f64;
                $body
            }
            other => unreachable!("no fused kernel for {other:?}"),
        }
    };
}
pub(crate) use with_float;

/// Registers the gradients of a fused op's parents (input, weight, bias): each one that was
/// computed, for each parent that is tracked (`Some` node id).
pub(crate) fn register_grads(
    grads: &mut burn::backend::autodiff::grads::Gradients,
    parents: [Option<burn::backend::autodiff::NodeId>; 3],
    values: [Option<FloatTensor<Flex>>; 3],
) {
    for (parent, grad) in parents.into_iter().zip(values) {
        if let (Some(id), Some(grad)) = (parent, grad) {
            grads.register::<Flex>(id, grad);
        }
    }
}

/// f32 or f64: the arithmetic the fused kernels need, generic over both.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + Default
    + Into<f64>
    + core::ops::AddAssign
    + core::ops::Add<Output = Self>
    + core::ops::Sub<Output = Self>
    + core::ops::Mul<Output = Self>
    + core::ops::Div<Output = Self>
    + core::ops::Neg<Output = Self>
{
    /// 1.
    const ONE: Self;
    /// `v` rounded to this type.
    fn of(v: f64) -> Self;
    /// `eˣ`: [`exp_f32`] for f32 (vectorises), `f64::exp` for f64.
    fn exp(self) -> Self;
}

impl Real for f32 {
    const ONE: f32 = 1.0;
    #[inline(always)]
    fn of(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn exp(self) -> f32 {
        exp_f32(self)
    }
}

impl Real for f64 {
    const ONE: f64 = 1.0;
    #[inline(always)]
    fn of(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn exp(self) -> f64 {
        f64::exp(self)
    }
}

/// `eˣ` in f32 without a libm call, so that the loops calling it vectorise: Cephes'
/// `expf` (`x = n·ln 2 + r`, `|r| ≤ ln 2/2`, a degree-6 polynomial for `eʳ`, `2ⁿ`
/// built in the exponent bits), branch-free, within 2 ulp of `f32::exp` for `x` in
/// `[−87.3, 88.3]`; `x` is clamped to that range (`e^−87.3 ≈ 1.2e−38`, the smallest
/// normal float, and `e^88.3 ≈ 2.2e38`), which is exact enough for the sigmoid.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer (|t| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from t's bits (ROUND's plus n), not from `n as i32`, a saturating conversion that
    // LLVM does not vectorise.
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

/// `n` values for parallel tasks to write, allocated without `vec![0; n]`'s zeroing (which
/// runs on the calling thread, before the tasks, while the other threads wait): each task
/// initialises its own chunk ([`zeroed`], [`init_rows`]) and the caller then takes the
/// values with [`assume_init`].
pub(crate) fn uninit<E>(n: usize) -> Vec<std::mem::MaybeUninit<E>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// `out` set to zeros, initialised: a task's chunk of [`uninit`] values, zeroed on the task's
/// thread, in its cache, just before it writes them.
#[inline(always)]
pub(crate) fn zeroed<E: Real>(out: &mut [std::mem::MaybeUninit<E>]) -> &mut [E] {
    out.fill(std::mem::MaybeUninit::new(E::default()));
    // SAFETY: every element was written just above.
    unsafe { written(out) }
}

/// `row` written into every row of `out` (rows of `row.len()`), initialised.
#[inline(always)]
pub(crate) fn init_rows<'a, E: Real>(
    out: &'a mut [std::mem::MaybeUninit<E>],
    row: &[E],
) -> &'a mut [E] {
    assert!(out.len().is_multiple_of(row.len()), "whole rows");
    for chunk in out.chunks_exact_mut(row.len()) {
        for (v, &r) in chunk.iter_mut().zip(row) {
            v.write(r);
        }
    }
    // SAFETY: every element was written just above.
    unsafe { written(out) }
}

/// `out` as the values written into it.
///
/// # Safety
/// Every element of `out` must have been written.
#[inline(always)]
unsafe fn written<E>(out: &mut [std::mem::MaybeUninit<E>]) -> &mut [E] {
    // SAFETY: the caller guarantees initialisation; `MaybeUninit<E>` has `E`'s layout.
    unsafe { &mut *(out as *mut [std::mem::MaybeUninit<E>] as *mut [E]) }
}

/// The values of [`uninit`] once every chunk was initialised.
///
/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init<E>(v: Vec<std::mem::MaybeUninit<E>>) -> Vec<E> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: the caller guarantees initialisation; `MaybeUninit<E>` has `E`'s layout, so the
    // allocation is that of a `Vec<E>` of the same length and capacity.
    unsafe { Vec::from_raw_parts(ptr.cast::<E>(), len, cap) }
}

/// The tasks' partial sums `(a, b)` (a weight gradient in the kernel's float type, a bias
/// gradient in f64) added in task order, into vectors of lengths `len`: the same result on any
/// number of threads.
pub(crate) fn sum_in_order<E: Real>(
    partials: &[(Vec<E>, Vec<f64>)],
    len: (usize, usize),
) -> (Vec<E>, Vec<f64>) {
    let (mut a, mut b) = (vec![E::default(); len.0], vec![0.0f64; len.1]);
    for (pa, pb) in partials {
        for (s, &v) in a.iter_mut().zip(pa) {
            *s += v;
        }
        for (s, &v) in b.iter_mut().zip(pb) {
            *s += v;
        }
    }
    (a, b)
}

/// A matrix operand: its storage and its row and column strides.
pub(crate) type Mat<'a, E> = (&'a [E], usize, usize);

/// `dst (m×n, row-major) ← [dst +] lhs (m×k) · rhs (k×n)`, single-threaded, through
/// the `gemm` crate, after checking that every index of the operands is in bounds.
pub(crate) fn matmul<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [E],
    add: bool,
    lhs: Mat<E>,
    rhs: Mat<E>,
) {
    assert!(dst.len() >= m * n, "matmul: destination out of bounds");
    // SAFETY: `dst` holds at least m·n initialised values, borrowed mutably.
    unsafe { matmul_with(m, n, k, dst.as_mut_ptr(), add, lhs, rhs, gemm::Parallelism::None) }
}

/// `lhs (m×k) · rhs (k×n)` into a new m×n row-major vector, on every thread of the current
/// rayon pool. The output is allocated without zeroing (the `gemm` crate writes every element
/// without reading it), and the crate splits the destination, never the sum over `k`, so the
/// result does not depend on the thread count.
pub(crate) fn matmul_parallel_new<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat<E>,
    rhs: Mat<E>,
) -> Vec<E> {
    // Below burn-flex's threshold (192³ multiply-adds) or on one thread, the split costs more
    // than it gains.
    let small = m.saturating_mul(n).saturating_mul(k) < 192 * 192 * 192;
    let parallelism = if small || rayon::current_num_threads() == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    let mut dst = uninit::<E>(m * n);
    // SAFETY: `dst` has room for m·n values; with `add` false every one of them is written
    // and none is read, so all are initialised after the call.
    unsafe {
        matmul_with(m, n, k, dst.as_mut_ptr().cast::<E>(), false, lhs, rhs, parallelism);
        assume_init(dst)
    }
}

/// `dst ← [dst +] lhs · rhs` (see [`matmul`]).
///
/// # Safety
/// `dst` must be valid for writes of m·n values (row-major, row stride n), initialised if
/// `add`, and alias neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_with<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut E,
    add: bool,
    lhs: Mat<E>,
    rhs: Mat<E>,
    parallelism: gemm::Parallelism,
) {
    let last = |(s, rs, cs): Mat<E>, r: usize, c: usize| {
        assert!(
            r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < s.len(),
            "matmul: operand out of bounds"
        );
    };
    last(lhs, m, k);
    last(rhs, k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !add {
            // SAFETY: `dst` is valid for m·n writes (the caller's contract).
            (0..m * n).for_each(|i| unsafe { dst.add(i).write(E::default()) });
        }
        return;
    }
    // SAFETY: every element the product reads is in bounds (checked above); `dst` is valid
    // for the m·n writes, read only if `add` (then initialised), and does not alias the
    // operands (the caller's contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            add,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            E::ONE,
            E::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn the_f32_exponential_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.3 + (88.3 + 87.3) * i as f32 / 200_000.0;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst:.2e}");
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.3));
        assert!(exp_f32(1000.0).is_finite());
    }
}
