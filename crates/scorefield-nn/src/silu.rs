//! SiLU, `y = x·σ(x)` with `σ(x) = 1/(1 + e⁻ˣ)`, forward and backward:
//! ```text
//! ∂ℓ/∂x = ∂ℓ/∂y · σ(x)·(1 + x·(1 − σ(x)))
//! ```
//! [`silu`] is the entry point. On Burn's `flex` backend (f32 and f64, with or without
//! autodiff) it runs one fused pass through Burn's backend extension ([`SiluBackend`]): in
//! parallel over blocks of 32,768 elements, compiled for AVX2 + FMA where the processor has
//! them, with a branch-free f32 exponential so that the loop vectorises; the autodiff forward
//! keeps `x` and the backward is one more such pass. Stock burn-flex composes SiLU as `x` times
//! a sigmoid whose exponential is a serial libm call per element, on one thread below its
//! 4 M-element threshold: 42 % of the MLP Langevin step's time (`docs/performance.md`).
//! Every other backend and float type runs Burn's own `silu`.

use burn::tensor::Tensor;
use burn::tensor::activation::silu as stock_silu;

#[cfg(feature = "flex")]
pub use fused::SiluBackend;
#[cfg(feature = "flex")]
pub(crate) use fused::{map as silu_map, silu_of};

/// `x·σ(x)` elementwise, fused on `flex` (see the [module docs](self)), Burn's `silu`
/// elsewhere.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex_in(x.dtype(), x.device(), []) {
        return Tensor::from_dispatch(<burn::backend::Dispatch as SiluBackend>::fused_silu(
            x.into_dispatch(),
        ));
    }
    stock_silu(x)
}

#[cfg(feature = "flex")]
mod fused {
    //! The extension trait, its flex and autodiff implementations, and the kernels.

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::DType;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    use crate::flex::{Real, flex_tensor};

    /// The flex tensor primitive.
    type FlexTensor = FloatTensor<Flex>;

    /// SiLU as a Burn backend extension: implemented by `Flex` (the forward kernel) and
    /// `Autodiff<Flex>` (forward kernel + fused backward); [`silu`](super::silu) routes every
    /// other backend to Burn's own.
    #[backend_extension(Flex, Autodiff)]
    pub trait SiluBackend: Backend {
        /// `x·σ(x)` on a primitive (f32 or f64).
        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl SiluBackend for Flex {
        fn fused_silu(x: FlexTensor) -> FlexTensor {
            run(&x, None)
        }
    }

    impl<C: CheckpointStrategy> SiluBackend for Autodiff<Flex, C> {
        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let prep = SiluBackward.prepare::<C>([x.node()]).compute_bound().stateful();
            let xp = x.primitive().clone();
            let out = run(&xp, None);
            match prep {
                OpsKind::Tracked(prep) => prep.finish(xp, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }

    #[derive(Debug)]
    struct SiluBackward;

    impl Backward<Flex, 1> for SiluBackward {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [x] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            if let Some(node) = x {
                grads.register::<Flex>(node.id, run(&ops.state, Some(&grad)));
            }
        }
    }

    /// The forward (`grad` absent) or the backward of `x`, in `x`'s shape.
    fn run(x: &FlexTensor, grad: Option<&FlexTensor>) -> FlexTensor {
        let shape = x.layout().shape().to_vec();
        let x = x.to_contiguous();
        let grad = grad.map(|g| g.to_contiguous());
        match x.dtype() {
            DType::F32 => {
                let g = grad.as_ref().map(|g| g.as_slice::<f32>().expect("f32 storage"));
                let out = map(x.as_slice::<f32>().expect("f32 storage"), g);
                flex_tensor(out, &shape)
            }
            DType::F64 => {
                let g = grad.as_ref().map(|g| g.as_slice::<f64>().expect("f64 storage"));
                let out = map(x.as_slice::<f64>().expect("f64 storage"), g);
                flex_tensor(out, &shape)
            }
            other => unreachable!("silu: no fused kernel for {other:?}"),
        }
    }

    /// `x·σ(x)`.
    #[inline(always)]
    pub(crate) fn silu_of<E: Real>(x: E) -> E {
        x / (E::ONE + (-x).exp())
    }

    /// `out = x·σ(x)`, or `out = g·σ(x)·(1 + x·(1 − σ(x)))` with a gradient, on one block
    /// (every element of `out` written).
    #[inline(always)]
    fn block<E: Real>(x: &[E], g: Option<&[E]>, out: &mut [MaybeUninit<E>]) {
        match g {
            None => {
                for (o, &x) in out.iter_mut().zip(x) {
                    o.write(silu_of(x));
                }
            }
            Some(g) => {
                for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                    let s = E::ONE / (E::ONE + (-x).exp());
                    o.write(g * s * (E::ONE + x * (E::ONE - s)));
                }
            }
        }
    }

    crate::flex::avx2_twin!(block, block_avx2, block_dispatch,
        (x: &[E], g: Option<&[E]>, out: &mut [MaybeUninit<E>]));

    /// Elements per parallel task.
    const BLOCK: usize = 1 << 15;

    /// `x·σ(x)`, or with `g` the gradient `g·σ(x)·(1 + x·(1 − σ(x)))`, elementwise in parallel
    /// blocks, into an output allocated without zeroing (each block writes all of its own).
    pub(crate) fn map<E: Real>(x: &[E], g: Option<&[E]>) -> Vec<E> {
        let mut out = crate::flex::uninit(x.len());
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(i, out)| {
            let x = &x[i * BLOCK..][..out.len()];
            block_dispatch(x, g.map(|g| &g[i * BLOCK..][..out.len()]), out);
        });
        // SAFETY: the blocks cover `out` and each wrote every element of its own.
        unsafe { crate::flex::assume_init(out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::device;
    use burn::tensor::{DType, TensorData};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand_distr::{Distribution, StandardNormal};

    /// `[n, 3]` values of N(0, 3²) (covering both tails of the sigmoid), with autodiff.
    fn input(n: usize, dtype: DType) -> (Tensor<2>, Vec<f64>) {
        let mut rng = StdRng::seed_from_u64(1);
        let mut v: Vec<f64> = (0..3 * n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                3.0 * z
            })
            .collect();
        v.extend([0.0, -100.0, 100.0]); // σ's saturation and the exponential's clamp
        let x = Tensor::from_data(
            TensorData::new(v.clone(), [n + 1, 3]),
            (&device().autodiff(), dtype),
        );
        (x.require_grad(), v)
    }

    /// Output and `∂(Σ w·y)/∂x` through `f`.
    fn run(f: impl Fn(Tensor<2>) -> Tensor<2>, n: usize, dtype: DType) -> [Vec<f64>; 2] {
        let (x, v) = input(n, dtype);
        let w: Vec<f64> = v.iter().map(|v| 0.5 + 0.1 * v).collect();
        let w = Tensor::from_data(TensorData::new(w, x.dims()), (&x.device(), dtype));
        let y = f(x.clone());
        let grads = y.clone().mul(w).sum().backward();
        [y, x.grad(&grads).unwrap()].map(|t| t.try_into_vec_as::<f64>().unwrap())
    }

    fn matches_burns_silu(dtype: DType, tol: f64) {
        // Beyond one block of 32,768 elements, unevenly.
        let n = 40_000;
        let got = run(silu, n, dtype);
        let want = run(stock_silu, n, dtype);
        for (name, (got, want)) in ["output", "gradient"].iter().zip(got.iter().zip(&want)) {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let d = (a - b).abs() / b.abs().max(1.0);
                assert!(d <= tol, "{dtype:?} {name}[{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn fused_silu_and_its_gradient_equal_burns_in_f64() {
        matches_burns_silu(DType::F64, 1e-14);
    }

    #[test]
    fn fused_silu_and_its_gradient_equal_burns_in_f32() {
        matches_burns_silu(DType::F32, 1e-6);
    }

    #[test]
    fn fused_gradient_matches_central_finite_differences_in_f64() {
        let [_, grad] = run(silu, 50, DType::F64);
        let (_, v) = input(50, DType::F64);
        let h = 1e-6;
        let f = |x: f64| x / (1.0 + (-x).exp());
        for (i, (&x, g)) in v.iter().zip(&grad).enumerate() {
            let w = 0.5 + 0.1 * x;
            let fd = w * (f(x + h) - f(x - h)) / (2.0 * h);
            assert!((g - fd).abs() <= 1e-7 * fd.abs().max(1.0), "[{i}] x = {x}: {g} vs fd {fd}");
        }
    }
}
