//! A dense layer with its activation fused: `y = x·W + b`, or `y = silu(x·W + b)`, forward and
//! backward:
//! ```text
//! z = x·W + b                    x [m, k], W [k, n] (Burn's `Linear` layout), b [n]
//! y = z  or  silu(z) = z·σ(z)
//! ∂ℓ/∂z = ∂ℓ/∂y  or  ∂ℓ/∂y · σ(z)·(1 + z·(1 − σ(z)))
//! ∂ℓ/∂x = ∂ℓ/∂z·Wᵀ,   ∂ℓ/∂W = xᵀ·∂ℓ/∂z,   ∂ℓ/∂b = Σ_rows ∂ℓ/∂z
//! ```
//! [`linear`] and [`linear_silu`] are the entry points (crate-internal: the MLP's layers). On
//! Burn's `flex` backend (f32 and f64, with or without autodiff) the forward is one parallel
//! pass over blocks of 256 rows: each block's output is initialised with the bias, the
//! block's product accumulated onto it by the `gemm` crate and the SiLU applied while the block
//! is in cache. burn-flex composes the same layer from a product into a zero-filled buffer
//! (`calloc`: a serial `memset` of the whole output), a separate bias pass and a separate SiLU
//! pass. The backward computes `∂ℓ/∂z` with the SiLU's own backward pass and the two products
//! on every thread (the `gemm` crate splits their outputs, never a sum, and `∂ℓ/∂b` adds at
//! most 16 partial sums in order: the result does not depend on the thread count). Every other backend and float
//! type, and an input of the wrong width, runs Burn's `Linear` and the crate's
//! [`silu`](crate::silu).

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `layer(x) = x·W + b`, fused on `flex` (see the [module docs](self)).
pub(crate) fn linear(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    dense(layer, x, false)
}

/// `silu(layer(x))`, fused on `flex` (see the [module docs](self)).
pub(crate) fn linear_silu(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    dense(layer, x, true)
}

fn dense(layer: &Linear, x: Tensor<2>, silu: bool) -> Tensor<2> {
    #[cfg(feature = "flex")]
    {
        let (w, b) = (layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
        let others = [(w.dtype(), w.device())]
            .into_iter()
            .chain(b.as_ref().map(|b| (b.dtype(), b.device())));
        // A mismatched width takes Burn's path, which rejects it as it always did.
        let fits = x.dims()[1] == w.dims()[0];
        if fits && crate::flex::on_flex_in(x.dtype(), x.device(), others) {
            return fused::run(x, w, b, silu);
        }
    }
    let y = layer.forward(x);
    if silu { crate::silu::silu(y) } else { y }
}

#[cfg(feature = "flex")]
mod fused {
    //! The extension trait, its flex and autodiff implementations, and the kernels.

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Dispatch, ExtensionType, Flex, backend_extension};
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::flex::{
        OptionalTensor, Real, flex_tensor, matmul, matmul_parallel_new, register_grads, with_float,
    };

    /// The flex tensor primitive.
    type FlexTensor = FloatTensor<Flex>;

    /// The tensors of [`DenseBackend::fused_dense`]: `x` `[m, k]`, `weight` `[k, n]`, the bias
    /// `[n]`, one float type (f32 or f64).
    #[derive(ExtensionType)]
    pub struct DenseInputs<B: Backend> {
        /// The input.
        pub x: FloatTensor<B>,
        /// The weight.
        pub weight: FloatTensor<B>,
        /// The bias.
        #[extension_type]
        pub bias: OptionalTensor<B>,
    }

    /// The dense layer as a Burn backend extension: implemented by `Flex` (the forward kernel)
    /// and `Autodiff<Flex>` (forward kernel + hand-written backward).
    #[backend_extension(Flex, Autodiff)]
    pub trait DenseBackend: Backend {
        /// `x·W + b`, then SiLU if `silu`, on primitives (see [`DenseInputs`]).
        fn fused_dense(
            #[extension_type] inputs: DenseInputs<Self>,
            silu: bool,
        ) -> FloatTensor<Self>;
    }

    /// Calls the extension through Burn's dispatch.
    pub(super) fn run(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>, silu: bool) -> Tensor<2> {
        let inputs = DenseInputs {
            x: x.into_dispatch(),
            weight: w.into_dispatch(),
            bias: OptionalTensor::from_option(b.map(|b| b.into_dispatch())),
        };
        Tensor::from_dispatch(<Dispatch as DenseBackend>::fused_dense(inputs, silu))
    }

    impl DenseBackend for Flex {
        fn fused_dense(inputs: DenseInputs<Self>, silu: bool) -> FlexTensor {
            let DenseInputs { x, weight, bias } = inputs;
            forward(&x, &weight, bias.into_option().as_ref(), silu, false).0
        }
    }

    impl<C: CheckpointStrategy> DenseBackend for Autodiff<Flex, C> {
        fn fused_dense(inputs: DenseInputs<Self>, silu: bool) -> FloatTensor<Self> {
            let DenseInputs { x, weight, bias } = inputs;
            let n = weight.primitive().layout().shape().dims::<2>()[1];
            let (bias, absent) = bias.or_untracked_zeros(&[n]);
            let prep = DenseBackward
                .prepare::<C>([x.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful();
            let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
            let b = (!absent).then(|| bias.primitive());
            match prep {
                OpsKind::Tracked(prep) => {
                    let (y, z) = forward(&xp, &wp, b, silu, true);
                    prep.finish(State { x: xp, weight: wp, z }, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(&xp, &wp, b, silu, false).0),
            }
        }
    }

    /// What the backward needs: the input, the weight and, after a SiLU, its input `z`.
    #[derive(Clone, Debug)]
    struct State {
        x: FlexTensor,
        weight: FlexTensor,
        z: Option<FlexTensor>,
    }

    #[derive(Debug)]
    struct DenseBackward;

    impl Backward<Flex, 3> for DenseBackward {
        type State = State;

        fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [x, weight, bias] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let (dx, dw, db) = backward(&ops.state, grad, x.is_some());
            let ids = [x, weight, bias].map(|parent| parent.map(|node| node.id));
            register_grads(grads, ids, [dx, Some(dw), Some(db)]);
        }
    }

    /// `(y, z if keep_z and silu)`.
    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: Option<&FlexTensor>,
        silu: bool,
        keep_z: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let [m, k] = x.layout().shape().dims::<2>();
        let n = weight.layout().shape().dims::<2>()[1];
        let (x, weight, bias) =
            (x.to_contiguous(), weight.to_contiguous(), bias.map(|b| b.to_contiguous()));
        with_float!(x.dtype(), |E| {
            fn slice(t: &FlexTensor) -> &[E] {
                t.as_slice().expect("contiguous float storage")
            }
            let (x, w, b) = (slice(&x), slice(&weight), bias.as_ref().map(slice));
            let (y, z) = kernel::forward(m, k, n, x, w, b, silu, keep_z && silu);
            (flex_tensor(y, &[m, n]), z.map(|z| flex_tensor(z, &[m, n])))
        })
    }

    /// `(∂ℓ/∂x if wanted, ∂ℓ/∂W, ∂ℓ/∂b)` from the output gradient.
    fn backward(
        state: &State,
        grad: FlexTensor,
        want_dx: bool,
    ) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
        let [m, k] = state.x.layout().shape().dims::<2>();
        let n = state.weight.layout().shape().dims::<2>()[1];
        let (x, weight, grad) =
            (state.x.to_contiguous(), state.weight.to_contiguous(), grad.to_contiguous());
        let z = state.z.as_ref().map(|z| z.to_contiguous());
        with_float!(x.dtype(), |E| {
            fn slice(t: &FlexTensor) -> &[E] {
                t.as_slice().expect("contiguous float storage")
            }
            let (x, w, dy, z) = (slice(&x), slice(&weight), slice(&grad), z.as_ref().map(slice));
            let (dx, dw, db) = kernel::backward(m, k, n, x, w, dy, z, want_dx);
            (dx.map(|dx| flex_tensor(dx, &[m, k])), flex_tensor(dw, &[k, n]), flex_tensor(db, &[n]))
        })
    }

    mod kernel {
        //! The kernels on slices, generic over f32 and f64.

        use std::mem::MaybeUninit;

        use super::*;
        use crate::flex::init_rows;
        use crate::silu::{silu_map, silu_of};

        /// Rows per block: a block's output, `256·n` values, stays in cache between the
        /// product, the bias and the SiLU.
        const ROWS: usize = 256;

        /// One block of rows: `y = x·W + b` (b first, the product accumulated onto it), then
        /// the SiLU in place if asked. With `z` (kept for the SiLU's backward), the product goes
        /// into `z` and the SiLU reads it there: `y = silu(z)`, one pass, no copy.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn forward_block<E: Real>(
            k: usize,
            n: usize,
            x: &[E],
            w: &[E],
            b: &[E],
            silu_after: bool,
            y: &mut [MaybeUninit<E>],
            z: Option<&mut [MaybeUninit<E>]>,
        ) {
            let rows = y.len() / n;
            match z {
                Some(z) => {
                    let z = init_rows(z, b);
                    matmul(rows, n, k, z, true, (x, k, 1), (w, n, 1));
                    for (y, &z) in y.iter_mut().zip(z.iter()) {
                        y.write(if silu_after { silu_of(z) } else { z });
                    }
                }
                None => {
                    let y = init_rows(y, b);
                    matmul(rows, n, k, y, true, (x, k, 1), (w, n, 1));
                    if silu_after {
                        y.iter_mut().for_each(|v| *v = silu_of(*v));
                    }
                }
            }
        }

        crate::flex::avx2_twin!(forward_block, forward_block_avx2, forward_block_dispatch,
            (k: usize, n: usize, x: &[E], w: &[E], b: &[E], silu_after: bool,
             y: &mut [MaybeUninit<E>], z: Option<&mut [MaybeUninit<E>]>));

        /// `(y, z)`: `y = silu?(x·W + b)` and, if `keep_z`, `z = x·W + b`. The outputs are
        /// allocated without zeroing (each block writes all of its elements), in parallel.
        #[allow(clippy::too_many_arguments)]
        pub(super) fn forward<E: Real>(
            m: usize,
            k: usize,
            n: usize,
            x: &[E],
            w: &[E],
            b: Option<&[E]>,
            silu: bool,
            keep_z: bool,
        ) -> (Vec<E>, Option<Vec<E>>) {
            let zeros = if b.is_none() { vec![E::default(); n] } else { Vec::new() };
            let b = b.unwrap_or(&zeros);
            let mut y = Vec::with_capacity(m * n);
            let mut z = keep_z.then(|| Vec::with_capacity(m * n));
            let ys = y.spare_capacity_mut()[..m * n].par_chunks_mut(ROWS * n);
            let xs = x.par_chunks(ROWS * k);
            match z.as_mut() {
                Some(z) => {
                    let zs = z.spare_capacity_mut()[..m * n].par_chunks_mut(ROWS * n);
                    ys.zip(zs).zip(xs).for_each(|((y, z), x)| {
                        forward_block_dispatch(k, n, x, w, b, silu, y, Some(z))
                    })
                }
                None => ys
                    .zip(xs)
                    .for_each(|(y, x)| forward_block_dispatch(k, n, x, w, b, silu, y, None)),
            }
            // SAFETY: the blocks cover all m·n elements and each wrote all of its own.
            unsafe {
                y.set_len(m * n);
                if let Some(z) = z.as_mut() {
                    z.set_len(m * n);
                }
            }
            (y, z)
        }

        /// `(∂ℓ/∂x if wanted, ∂ℓ/∂W, ∂ℓ/∂b)`: `∂ℓ/∂z` (after a SiLU, by its backward), the two
        /// products on every thread, `∂ℓ/∂b` from at most 16 partial column sums of
        /// consecutive rows added in order.
        #[allow(clippy::too_many_arguments)]
        pub(super) fn backward<E: Real>(
            m: usize,
            k: usize,
            n: usize,
            x: &[E],
            w: &[E],
            dy: &[E],
            z: Option<&[E]>,
            want_dx: bool,
        ) -> (Option<Vec<E>>, Vec<E>, Vec<E>) {
            // After a SiLU, ∂ℓ/∂z = ∂ℓ/∂y·silu′(z): the SiLU's own backward pass.
            let silu_dz = z.map(|z| silu_map(z, Some(dy)));
            let dz = silu_dz.as_deref().unwrap_or(dy);
            // ∂ℓ/∂W = xᵀ·dz  (xᵀ: row stride 1, column stride k)
            let dw = matmul_parallel_new(k, n, m, (x, 1, k), (dz, n, 1));
            // ∂ℓ/∂x = dz·Wᵀ  (Wᵀ: row stride 1, column stride n)
            let dx = want_dx.then(|| matmul_parallel_new(m, k, n, (dz, n, 1), (w, 1, n)));
            let per = m.div_ceil(16).max(1);
            let partial: Vec<Vec<f64>> = dz
                .par_chunks(per * n)
                .map(|rows| {
                    let mut sums = vec![0.0f64; n];
                    for row in rows.chunks_exact(n) {
                        for (s, &v) in sums.iter_mut().zip(row) {
                            *s += v.into();
                        }
                    }
                    sums
                })
                .collect();
            let db = (0..n).map(|j| E::of(partial.iter().map(|p| p[j]).sum())).collect();
            (dx, dw, db)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, random, values};
    use burn::nn::LinearConfig;
    use burn::tensor::DType;

    /// Output and the gradients of `Σ v·y` w.r.t. x, W and b, through `f`.
    fn run(
        f: impl Fn(&Linear, Tensor<2>) -> Tensor<2>,
        [m, k, n]: [usize; 3],
        bias: bool,
        dtype: DType,
    ) -> Vec<Vec<f64>> {
        let dev = device().autodiff();
        let mut layer = LinearConfig::new(k, n).with_bias(bias).init(&dev);
        // Reproducible weights in the test's float type (Burn's init is random and f64 here).
        let seed_w = random([k, n], 7, dtype, &dev).require_grad();
        layer.weight = burn::module::Param::from_tensor(seed_w);
        if bias {
            layer.bias = Some(burn::module::Param::from_tensor(random([n], 8, dtype, &dev)));
        }
        let x = random([m, k], 9, dtype, &dev).require_grad();
        let v = random([m, n], 10, dtype, &dev);
        let y = f(&layer, x.clone());
        let grads = y.clone().mul(v).sum().backward();
        let mut out = vec![values(y), values(x.grad(&grads).unwrap())];
        out.push(values(layer.weight.val().grad(&grads).unwrap()));
        if let Some(b) = &layer.bias {
            out.push(values(b.val().grad(&grads).unwrap()));
        }
        out
    }

    fn matches_stock(dtype: DType, tol: f64) {
        // One row, a block's worth, and beyond 16 tasks of several blocks, unevenly.
        for shape in [[1, 3, 2], [128, 5, 7], [2_100, 17, 9], [300, 64, 33]] {
            for bias in [true, false] {
                for silu in [false, true] {
                    let fused = |l: &Linear, x| if silu { linear_silu(l, x) } else { linear(l, x) };
                    let stock = |l: &Linear, x: Tensor<2>| {
                        let y = l.forward(x);
                        if silu { burn::tensor::activation::silu(y) } else { y }
                    };
                    let got = run(fused, shape, bias, dtype);
                    let want = run(stock, shape, bias, dtype);
                    for (what, (g, w)) in ["y", "dx", "dW", "db"].iter().zip(got.iter().zip(&want))
                    {
                        let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                        for (i, (a, b)) in g.iter().zip(w).enumerate() {
                            assert!(
                                (a - b).abs() <= tol * scale,
                                "{shape:?} bias {bias} silu {silu} {dtype:?} {what}[{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_dense_and_its_gradients_equal_burns_in_f64() {
        matches_stock(DType::F64, 1e-12);
    }

    #[test]
    fn fused_dense_and_its_gradients_equal_burns_in_f32() {
        matches_stock(DType::F32, 1e-5);
    }

    #[test]
    fn fused_gradients_match_central_finite_differences() {
        // ℓ(x) = Σ v·silu(x·W + b): its directional derivative along u against the backward.
        let dev = device().autodiff();
        let layer = LinearConfig::new(6, 4).init(&dev);
        let v = random([5, 4], 3, DType::F64, &dev);
        let loss = |x: Tensor<2>| linear_silu(&layer, x).mul(v.clone()).sum();
        let x = random([5, 6], 1, DType::F64, &dev).require_grad();
        let u = random([5, 6], 2, DType::F64, &dev);
        let grads = loss(x.clone()).backward();
        let analytic: f64 = values(x.grad(&grads).unwrap().mul(u.clone().inner()).sum())[0];
        let h = 1e-6;
        let plus = values(loss(x.clone().add(u.clone().mul_scalar(h))))[0];
        let minus = values(loss(x.sub(u.mul_scalar(h))))[0];
        let fd = (plus - minus) / (2.0 * h);
        assert!((analytic - fd).abs() <= 1e-7 * fd.abs().max(1.0), "{analytic} vs {fd}");
    }

    #[test]
    fn a_mismatched_width_is_refused_as_burn_refuses_it() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let dev = device();
        let layer = LinearConfig::new(4, 3).init(&dev);
        let x = random([5, 3], 1, DType::F64, &dev); // 3 features for a 4-feature layer
        let fused = catch_unwind(AssertUnwindSafe(|| linear_silu(&layer, x.clone())));
        let stock = catch_unwind(AssertUnwindSafe(|| layer.forward(x)));
        assert!(fused.is_err() && stock.is_err());
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(linear_silu, [2_100, 17, 9], true, DType::F32))
        };
        assert_eq!(on(1), on(3));
    }
}
