//! 2-D convolution (NCHW, one group, no dilation), forward and both gradients, one sample per
//! task.
//!
//! For an input `x` (`[N, C, H, W]`), a weight `w` (`[C', C, k_h, k_w]`), an optional bias `b`
//! (`[C']`), strides `s` and paddings `p` (top/left; bottom/right only set the output size),
//! each sample's im2col matrix `X_n` (`[C·k_h·k_w, P]`, `P = H'·W'`) has the entries
//! `X_n[(c, i, j), (u, v)] = x[n, c, u·s_h + i − p_t, v·s_w + j − p_l]` (0 outside the input),
//! and with `W` the weight as a `[C', C·k_h·k_w]` matrix:
//! ```text
//! y_n = W·X_n + b                       (y_n: [C', P], the n-th output sample in NCHW)
//! ∂ℓ/∂W = Σ_n (∂ℓ/∂y_n)·X_nᵀ,   ∂ℓ/∂b = Σ_{n, P} ∂ℓ/∂y_n
//! ∂ℓ/∂x_n = col2im(Wᵀ·∂ℓ/∂y_n)          (col2im: each entry of the [C·k_h·k_w, P] matrix
//!                                         added back to the input element it was read from)
//! ```
//!
//! [`conv2d`] is the entry point. On Burn's `flex` backend (f32 and f64, with or without
//! autodiff) it runs these equations through Burn's backend-extension API
//! ([`FusedConv2dBackend`], `#[backend_extension(Flex, Autodiff)]`) with the `gemm` crate (the
//! matrix kernels burn-flex itself calls) on each sample's NCHW data: the forward writes
//! `W·X_n` straight into the output sample (no layout change, no scatter), the backward makes
//! `X_n` again for `∂ℓ/∂W` (accumulated per chunk of samples, the chunks summed in a fixed
//! order, so the result does not depend on the thread count) and scatters `Wᵀ·∂ℓ/∂y_n` into
//! `∂ℓ/∂x_n` in the same task. Every task is a whole sample with a single-threaded GEMM, so
//! all of it runs in parallel; a 1×1 convolution of stride 1 without padding reads `x_n` as its
//! own im2col matrix. Stock burn-flex instead copies the input to NHWC and flattens the weight
//! on one thread before its parallel tiles, and runs the weight gradient as a convolution with
//! the batch and channel axes swapped (Burn's generic fallback) — the serial work that capped
//! our two-thread scaling (docs/performance.md).
//!
//! Every other backend, float type, and any convolution with groups or dilation runs
//! [`burn::tensor::module::conv2d`] (as does `fused: false`): the reference the kernel is
//! tested against.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as stock_conv2d;
use burn::tensor::ops::ConvOptions;
use thiserror::Error;

#[cfg(feature = "flex")]
pub use fused::{FusedConv2dBackend, FusedConv2dInputs};

/// A convolution that [`conv2d`] cannot compute.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvError {
    /// The weight's input channels are not the input's.
    #[error("conv2d: the weight {weight:?} takes {} input channels, the input {input:?} has {}", weight[1], input[1])]
    Channels {
        /// The input's shape.
        input: [usize; 4],
        /// The weight's shape.
        weight: [usize; 4],
    },
    /// The bias is not `[C']`.
    #[error("conv2d: the bias {got:?} must be [{channels}]")]
    Bias {
        /// The weight's output channels.
        channels: usize,
        /// The bias's shape.
        got: [usize; 1],
    },
    /// A stride of zero, an empty kernel, or a kernel larger than the padded input.
    #[error(
        "conv2d: kernel {kernel:?} with stride {stride:?} does not fit the padded input {padded:?}"
    )]
    Geometry {
        /// `[k_h, k_w]`.
        kernel: [usize; 2],
        /// `[s_h, s_w]`.
        stride: [usize; 2],
        /// The input's `[H, W]` with its padding.
        padded: [usize; 2],
    },
}

/// The non-tensor arguments of [`conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// `[s_h, s_w]`.
    pub stride: [usize; 2],
    /// `[(top, bottom), (left, right)]`.
    pub padding: [(usize, usize); 2],
    /// The kernel where one exists (flex, f32 and f64); `false` runs Burn's stock `conv2d`
    /// on every backend, the reference the kernel is tested against.
    pub fused: bool,
    /// The fused kernel's algorithm for 3×3 convolutions of stride 1 and padding 1.
    pub algorithm: ConvAlgorithm,
}

/// Which algorithm the fused kernel runs for a 3×3 convolution of stride 1 and padding 1 (its
/// forward and both gradients; every other geometry is im2col).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// Winograd where it was measured faster (`benches/conv.rs` at widths 16 and 32: from 16
    /// input channels up, down to 16 → 16 and 16 → 1; on the 1-channel input the transforms
    /// cost more than the products they save), im2col otherwise.
    #[default]
    Auto,
    /// im2col and one matrix product per sample.
    Im2col,
    /// Winograd's F(2×2, 3×3) (`conv/winograd.rs`): 2.25× fewer multiplications, with
    /// rounding that differs from im2col's in the last bits.
    Winograd,
}

impl Conv2dOptions {
    /// Stride `stride` and the same padding `padding` on all four sides, fused.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOptions {
            stride: [stride; 2],
            padding: [(padding, padding); 2],
            fused: true,
            algorithm: ConvAlgorithm::Auto,
        }
    }

    /// With or without the fused kernel.
    pub fn with_fused(self, fused: bool) -> Self {
        Conv2dOptions { fused, ..self }
    }

    /// With the algorithm `algorithm` for 3×3 convolutions of stride 1 and padding 1.
    pub fn with_algorithm(self, algorithm: ConvAlgorithm) -> Self {
        Conv2dOptions { algorithm, ..self }
    }

    fn stock(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, [1, 1], 1)
    }
}

/// `y = conv(x, w) + b` (see the [module docs](self)): `x` is `[N, C, H, W]`, `weight`
/// `[C', C, k_h, k_w]`, `bias` `[C']`; the output is `[N, C', H', W']` with
/// `H' = (H + p_t + p_b − k_h)/s_h + 1` (floor) and likewise `W'`.
///
/// # Errors
/// [`ConvError`] if the channels or the bias do not match the weight, a stride is zero or the
/// kernel does not fit the padded input.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: Conv2dOptions,
) -> Result<Tensor<4>, ConvError> {
    let (input, w) = (x.dims(), weight.dims());
    if input[1] != w[1] {
        return Err(ConvError::Channels { input, weight: w });
    }
    if let Some(b) = &bias
        && b.dims() != [w[0]]
    {
        return Err(ConvError::Bias { channels: w[0], got: b.dims() });
    }
    let [(pt, pb), (pl, pr)] = options.padding;
    let padded = [input[2] + pt + pb, input[3] + pl + pr];
    let kernel = [w[2], w[3]];
    if options.stride.contains(&0)
        || kernel.contains(&0)
        || kernel[0] > padded[0]
        || kernel[1] > padded[1]
    {
        return Err(ConvError::Geometry { kernel, stride: options.stride, padded });
    }
    #[cfg(feature = "flex")]
    if options.fused && fused::applies(&x, &weight, bias.as_ref()) {
        return Ok(fused::run(x, weight, bias, options));
    }
    Ok(stock_conv2d(x, weight, bias, options.stock()))
}

/// [`conv2d`] with the parameters of a burn-nn [`Conv2d`] module.
pub trait Conv2dFused {
    /// The module's convolution of `x`, through the fused kernel on `flex` where the module
    /// has one group and no dilation, `Conv2d::forward` otherwise.
    ///
    /// # Panics
    /// Where `Conv2d::forward` panics: `x` without the module's input channels.
    fn forward_fused(&self, x: Tensor<4>) -> Tensor<4>;
}

impl Conv2dFused for Conv2d {
    fn forward_fused(&self, x: Tensor<4>) -> Tensor<4> {
        let padding = match self.padding {
            PaddingConfig2d::Valid => [(0, 0); 2],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
            // `Same`: its sizes are burn-nn's to compute.
            PaddingConfig2d::Same => return self.forward(x),
        };
        if self.groups != 1 || self.dilation != [1, 1] {
            return self.forward(x);
        }
        let options = Conv2dOptions {
            stride: self.stride,
            padding,
            fused: true,
            algorithm: ConvAlgorithm::Auto,
        };
        conv2d(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), options)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(feature = "flex")]
mod winograd;

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

    use super::{Conv2dOptions, winograd};
    use crate::flex::{
        OptionalTensor, assume_init, flex_tensor, on_flex_in, register_grads, uninit, with_float,
    };
    use kernel::Geometry;

    /// The flex tensor primitive.
    type FlexTensor = FloatTensor<Flex>;

    /// The tensors of [`FusedConv2dBackend::fused_conv2d`], shapes already validated: `x`
    /// `[N, C, H, W]`, `weight` `[C', C, k_h, k_w]`, the bias `[C']`, one float type (f32 or
    /// f64).
    #[derive(ExtensionType)]
    pub struct FusedConv2dInputs<B: Backend> {
        /// The input.
        pub x: FloatTensor<B>,
        /// The weight.
        pub weight: FloatTensor<B>,
        /// The bias.
        #[extension_type]
        pub bias: OptionalTensor<B>,
    }

    /// The convolution as a Burn backend extension: implemented by `Flex` (the forward kernel)
    /// and `Autodiff<Flex>` (forward kernel + hand-written backward); [`conv2d`] routes every
    /// other backend to Burn's stock `conv2d`.
    ///
    /// [`conv2d`]: super::conv2d
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedConv2dBackend: Backend {
        /// `conv(x, weight) + bias` on primitives (see [`FusedConv2dInputs`]).
        fn fused_conv2d(
            #[extension_type] inputs: FusedConv2dInputs<Self>,
            options: Conv2dOptions,
        ) -> FloatTensor<Self>;
    }

    /// Whether every tensor lives on flex (with or without autodiff) in one fused float type.
    pub(super) fn applies(x: &Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>) -> bool {
        let others = [(weight.dtype(), weight.device())]
            .into_iter()
            .chain(bias.map(|b| (b.dtype(), b.device())));
        on_flex_in(x.dtype(), x.device(), others)
    }

    /// Calls the extension through Burn's dispatch.
    pub(super) fn run(
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: Conv2dOptions,
    ) -> Tensor<4> {
        let inputs = FusedConv2dInputs {
            x: x.into_dispatch(),
            weight: weight.into_dispatch(),
            bias: OptionalTensor::from_option(bias.map(|b| b.into_dispatch())),
        };
        Tensor::from_dispatch(<Dispatch as FusedConv2dBackend>::fused_conv2d(inputs, options))
    }

    impl FusedConv2dBackend for Flex {
        fn fused_conv2d(inputs: FusedConv2dInputs<Self>, options: Conv2dOptions) -> FlexTensor {
            let FusedConv2dInputs { x, weight, bias } = inputs;
            forward(&x, &weight, bias.into_option().as_ref(), options)
        }
    }

    impl<C: CheckpointStrategy> FusedConv2dBackend for Autodiff<Flex, C> {
        fn fused_conv2d(
            inputs: FusedConv2dInputs<Self>,
            options: Conv2dOptions,
        ) -> FloatTensor<Self> {
            let FusedConv2dInputs { x, weight, bias } = inputs;
            let c = weight.primitive().layout().shape().dims::<4>()[0];
            let (bias, absent) = bias.or_untracked_zeros(&[c]);
            let prep = Conv2dBackward
                .prepare::<C>([x.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful();
            let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
            let out = forward(&xp, &wp, (!absent).then(|| bias.primitive()), options);
            match prep {
                OpsKind::Tracked(prep) => prep.finish(State { x: xp, weight: wp, options }, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }

    /// What the backward needs: the input, the weight and the geometry.
    #[derive(Clone, Debug)]
    struct State {
        x: FlexTensor,
        weight: FlexTensor,
        options: Conv2dOptions,
    }

    #[derive(Debug)]
    struct Conv2dBackward;

    impl Backward<Flex, 3> for Conv2dBackward {
        type State = State;

        fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [x, weight, bias] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let (dx, dw, db) = backward(&ops.state, grad, x.is_some());
            let ids = [x, weight, bias].map(|parent| parent.map(|node| node.id));
            register_grads(grads, ids, [dx, Some(dw), Some(db)]);
        }
    }

    fn geometry(x: &FlexTensor, weight: &FlexTensor, options: Conv2dOptions) -> Geometry {
        let [n, c, h, w] = x.layout().shape().dims::<4>();
        let [cout, _, kh, kw] = weight.layout().shape().dims::<4>();
        let [(pt, pb), (pl, pr)] = options.padding;
        let [sh, sw] = options.stride;
        Geometry {
            n,
            c,
            h,
            w,
            cout,
            kh,
            kw,
            sh,
            sw,
            pt,
            pl,
            oh: (h + pt + pb - kh) / sh + 1,
            ow: (w + pl + pr - kw) / sw + 1,
        }
    }

    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: Option<&FlexTensor>,
        options: Conv2dOptions,
    ) -> FlexTensor {
        let g = geometry(x, weight, options);
        let (x, weight, bias) =
            (x.to_contiguous(), weight.to_contiguous(), bias.map(|b| b.to_contiguous()));
        with_float!(x.dtype(), |E| {
            fn slice(t: &FlexTensor) -> &[E] {
                t.as_slice().expect("contiguous float storage")
            }
            let mut y = uninit(g.n * g.cout * g.p());
            let (x, w, b) = (slice(&x), slice(&weight), bias.as_ref().map(slice));
            if winograd::applies(&g, options.algorithm) {
                winograd::forward(&g, x, w, b, &mut y);
            } else {
                kernel::forward(&g, x, w, b, &mut y);
            }
            // SAFETY: both forwards' tasks cover `y` and each initialises its chunk.
            let y = unsafe { assume_init(y) };
            flex_tensor(y, &[g.n, g.cout, g.oh, g.ow])
        })
    }

    /// `(∂ℓ/∂x if wanted, ∂ℓ/∂w, ∂ℓ/∂b)` from the output gradient.
    fn backward(
        state: &State,
        grad: FlexTensor,
        want_dx: bool,
    ) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
        let g = geometry(&state.x, &state.weight, state.options);
        let (x, weight, grad) =
            (state.x.to_contiguous(), state.weight.to_contiguous(), grad.to_contiguous());
        with_float!(x.dtype(), |E| {
            fn slice(t: &FlexTensor) -> &[E] {
                t.as_slice().expect("contiguous float storage")
            }
            let (dx, dw, db) = kernel::backward(
                &g,
                slice(&x),
                slice(&weight),
                slice(&grad),
                want_dx,
                state.options.algorithm,
            );
            (
                dx.map(|dx| flex_tensor(dx, &[g.n, g.c, g.h, g.w])),
                flex_tensor(dw, &[g.cout, g.c, g.kh, g.kw]),
                flex_tensor(db, &[g.cout]),
            )
        })
    }

    pub(super) mod kernel {
        //! The kernels on slices, generic over f32 and f64.

        use std::mem::MaybeUninit;

        use rayon::prelude::*;

        use crate::conv::ConvAlgorithm;
        use crate::flex::{Real, matmul, sum_in_order, zeroed};

        /// The shape of one call (see the module docs for the symbols).
        #[derive(Clone, Copy, Debug)]
        pub(in crate::conv) struct Geometry {
            pub n: usize,
            pub c: usize,
            pub h: usize,
            pub w: usize,
            pub cout: usize,
            pub kh: usize,
            pub kw: usize,
            pub sh: usize,
            pub sw: usize,
            pub pt: usize,
            pub pl: usize,
            pub oh: usize,
            pub ow: usize,
        }

        impl Geometry {
            /// Rows of the im2col matrix, `C·k_h·k_w`.
            pub fn k(&self) -> usize {
                self.c * self.kh * self.kw
            }
            /// Output pixels per plane, `H'·W'`.
            pub fn p(&self) -> usize {
                self.oh * self.ow
            }
            /// Elements of one input sample.
            fn x_len(&self) -> usize {
                self.c * self.h * self.w
            }
            /// Elements of one output sample.
            fn y_len(&self) -> usize {
                self.cout * self.p()
            }
            /// A 1×1 convolution of stride 1 without padding: `x_n` is its own im2col matrix.
            fn pointwise(&self) -> bool {
                self.kh == 1
                    && self.kw == 1
                    && self.oh == self.h
                    && self.ow == self.w
                    && self.sh == 1
                    && self.sw == 1
                    && self.pt == 0
                    && self.pl == 0
            }
            /// The im2col scratch one task needs (none for a pointwise convolution).
            fn col_len(&self) -> usize {
                if self.pointwise() { 0 } else { self.k() * self.p() }
            }
        }

        /// For the kernel offset `j` along an axis of `len` input elements with stride `s` and
        /// leading padding `pad`: the output positions `lo..hi` that read inside the input.
        fn inside(j: usize, s: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
            // u·s + j − pad ∈ [0, len)  ⇔  u ∈ [⌈(pad − j)/s⌉, ⌈(len + pad − j)/s⌉)
            let lo = pad.saturating_sub(j).div_ceil(s).min(out);
            let hi = (len + pad).saturating_sub(j).div_ceil(s).clamp(lo, out);
            (lo, hi)
        }

        /// Where row `r = (c, i, j)` of `X_n` reads: output rows `u ∈ ulo..uhi` and columns
        /// `v ∈ lo..hi` read the input at `first + (u − ulo)·s_h·W + (v − lo)·s_w`, every other
        /// entry is 0 (padding). `None` when the whole row is padding.
        #[inline(always)]
        fn span(g: &Geometry, r: usize) -> Option<(usize, usize, usize, usize, usize)> {
            let (c, i, j) = (r / (g.kh * g.kw), r / g.kw % g.kh, r % g.kw);
            let (ulo, uhi) = inside(i, g.sh, g.pt, g.h, g.oh);
            let (lo, hi) = inside(j, g.sw, g.pl, g.w, g.ow);
            let first = (c * g.h + ulo * g.sh + i - g.pt) * g.w + lo * g.sw + j - g.pl;
            (ulo < uhi && lo < hi).then_some((ulo, uhi, lo, hi, first))
        }

        /// `col ← X_n` (`[C·k_h·k_w, P]`) from one input sample.
        #[inline(always)]
        fn im2col<E: Real>(g: &Geometry, x: &[E], col: &mut [E]) {
            let (ow, sw, step) = (g.ow, g.sw, g.sh * g.w);
            for (r, row) in col.chunks_exact_mut(g.p()).enumerate() {
                let Some((ulo, uhi, lo, hi, first)) = span(g, r) else {
                    row.fill(E::default());
                    continue;
                };
                row[..ulo * ow].fill(E::default());
                row[uhi * ow..].fill(E::default());
                let rows = row[ulo * ow..uhi * ow].chunks_exact_mut(ow);
                for (t, seg) in rows.enumerate() {
                    let src = &x[first + t * step..];
                    seg[..lo].fill(E::default());
                    seg[hi..].fill(E::default());
                    if sw == 1 {
                        seg[lo..hi].copy_from_slice(&src[..hi - lo]);
                    } else {
                        for (v, d) in seg[lo..hi].iter_mut().enumerate() {
                            *d = src[v * sw];
                        }
                    }
                }
            }
        }

        /// `dx += col2im(col)` for one input sample.
        #[inline(always)]
        fn col2im_add<E: Real>(g: &Geometry, col: &[E], dx: &mut [E]) {
            let (ow, sw, step) = (g.ow, g.sw, g.sh * g.w);
            for (r, row) in col.chunks_exact(g.p()).enumerate() {
                let Some((ulo, uhi, lo, hi, first)) = span(g, r) else { continue };
                for (t, seg) in row[ulo * ow..uhi * ow].chunks_exact(ow).enumerate() {
                    let dst = &mut dx[first + t * step..];
                    if sw == 1 {
                        for (d, &s) in dst[..hi - lo].iter_mut().zip(&seg[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for (v, &s) in seg[lo..hi].iter().enumerate() {
                            dst[v * sw] += s;
                        }
                    }
                }
            }
        }

        /// `Σ v` in f64, over 8 independent lanes so that it vectorises.
        #[inline(always)]
        fn sum<E: Real>(v: &[E]) -> f64 {
            let mut lanes = [0.0f64; 8];
            let chunks = v.chunks_exact(8);
            let tail: f64 = chunks.remainder().iter().map(|&e| e.into()).sum();
            for chunk in chunks {
                for (l, &e) in lanes.iter_mut().zip(chunk) {
                    *l += e.into();
                }
            }
            lanes.iter().sum::<f64>() + tail
        }

        /// `y_n = W·X_n + b` for one sample (`col`: scratch for `X_n`).
        #[inline(always)]
        fn forward_sample<E: Real>(
            g: &Geometry,
            x: &[E],
            w: &[E],
            b: Option<&[E]>,
            col: &mut [E],
            y: &mut [E],
        ) {
            let (k, p) = (g.k(), g.p());
            let col: &[E] = if g.pointwise() {
                x
            } else {
                im2col(g, x, col);
                col
            };
            if let Some(b) = b {
                for (row, &b) in y.chunks_exact_mut(p).zip(b) {
                    row.fill(b);
                }
            }
            matmul(g.cout, p, k, y, b.is_some(), (w, k, 1), (col, p, 1));
        }

        /// `y_n = W·X_n + b` for every sample, one task per sample.
        pub(in super::super) fn forward<E: Real>(
            g: &Geometry,
            x: &[E],
            w: &[E],
            b: Option<&[E]>,
            y: &mut [MaybeUninit<E>],
        ) {
            y.par_chunks_exact_mut(g.y_len()).zip(x.par_chunks_exact(g.x_len())).for_each_init(
                || vec![E::default(); g.col_len()],
                |col, (y, x)| forward_sample_dispatch(g, x, w, b, col, zeroed(y)),
            );
        }

        /// Samples per backward task: at most 16 tasks whatever the thread count, so that the
        /// weight gradient's sum runs in the same order on every machine.
        fn chunk(n: usize) -> usize {
            n.div_ceil(16).max(1)
        }

        /// One task's running sums: `∂ℓ/∂W`, `∂ℓ/∂b` and the scratch for `X_n` and `Wᵀ·dy_n`.
        struct Partial<E> {
            dw: Vec<E>,
            db: Vec<f64>,
            col: Vec<E>,
            dcol: Vec<E>,
        }

        /// Adds sample `n`'s terms to `∂ℓ/∂W` and `∂ℓ/∂b`, and writes `∂ℓ/∂x_n` if asked.
        #[inline(always)]
        fn backward_sample<E: Real>(
            g: &Geometry,
            x: &[E],
            w: &[E],
            dy: &[E],
            acc: &mut Partial<E>,
            dx: Option<&mut [E]>,
        ) {
            let (k, p) = (g.k(), g.p());
            let xcol: &[E] = if g.pointwise() {
                x
            } else {
                im2col(g, x, &mut acc.col);
                &acc.col
            };
            // ∂ℓ/∂W += dy_n · X_nᵀ  (X_nᵀ: row stride 1, column stride P)
            matmul(g.cout, k, p, &mut acc.dw, true, (dy, p, 1), (xcol, 1, p));
            for (s, row) in acc.db.iter_mut().zip(dy.chunks_exact(p)) {
                *s += sum(row);
            }
            // ∂ℓ/∂x_n = col2im(Wᵀ·dy_n)  (Wᵀ: row stride 1, column stride k)
            match dx {
                Some(dx) if g.pointwise() => {
                    matmul(g.c, p, g.cout, dx, false, (w, 1, k), (dy, p, 1))
                }
                Some(dx) => {
                    matmul(k, p, g.cout, &mut acc.dcol, false, (w, 1, k), (dy, p, 1));
                    col2im_add(g, &acc.dcol, dx);
                }
                None => {}
            }
        }

        crate::flex::avx2_twin!(forward_sample, forward_sample_avx2, forward_sample_dispatch,
            (g: &Geometry, x: &[E], w: &[E], b: Option<&[E]>, col: &mut [E], y: &mut [E]));
        crate::flex::avx2_twin!(backward_sample, backward_sample_avx2, backward_sample_dispatch,
            (g: &Geometry, x: &[E], w: &[E], dy: &[E], acc: &mut Partial<E>, dx: Option<&mut [E]>));

        /// `(∂ℓ/∂x if wanted, ∂ℓ/∂W, ∂ℓ/∂b)`.
        pub(in super::super) fn backward<E: Real>(
            g: &Geometry,
            x: &[E],
            w: &[E],
            dy: &[E],
            want_dx: bool,
            algorithm: ConvAlgorithm,
        ) -> (Option<Vec<E>>, Vec<E>, Vec<E>) {
            if super::super::winograd::applies(g, algorithm) {
                let (dw, db) = super::super::winograd::weight_gradient(g, x, dy);
                let dx = want_dx.then(|| super::super::winograd::input_gradient(g, w, dy));
                return (dx, dw, db);
            }
            let (k, per) = (g.k(), chunk(g.n));
            let mut dx = vec![E::default(); if want_dx { g.n * g.x_len() } else { 0 }];
            let tasks: Vec<(usize, Option<&mut [E]>)> = if want_dx {
                dx.chunks_mut(per * g.x_len()).map(Some).enumerate().collect()
            } else {
                (0..g.n.div_ceil(per)).map(|t| (t, None)).collect()
            };
            let partial: Vec<(Vec<E>, Vec<f64>)> = tasks
                .into_par_iter()
                .map(|(t, mut dx)| {
                    let mut acc = Partial {
                        dw: vec![E::default(); g.cout * k],
                        db: vec![0.0; g.cout],
                        col: vec![E::default(); g.col_len()],
                        dcol: vec![E::default(); g.col_len()],
                    };
                    for n in t * per..((t + 1) * per).min(g.n) {
                        let (xn, dyn_) =
                            (&x[n * g.x_len()..][..g.x_len()], &dy[n * g.y_len()..][..g.y_len()]);
                        let dxn = dx
                            .as_deref_mut()
                            .map(|dx| &mut dx[(n - t * per) * g.x_len()..][..g.x_len()]);
                        backward_sample_dispatch(g, xn, w, dyn_, &mut acc, dxn);
                    }
                    (acc.dw, acc.db)
                })
                .collect();
            let (dw, db) = sum_in_order(&partial, (g.cout * k, g.cout));
            (want_dx.then_some(dx), dw, db.into_iter().map(E::of).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, random, values};
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{DType, TensorData};

    /// `|a − b| ≤ tol·max(|b|, max_j |b_j|, 1)` elementwise: relative to the quantity's largest
    /// value, so that an f32 entry near zero, the sum of hundreds of products of order one
    /// that cancel, is held to the rounding of its terms rather than of itself.
    fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1.0f64, |m, y| m.max(y.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x - y).abs() / y.abs().max(scale);
            assert!(d <= tol, "{what}[{i}]: {x} vs {y} (rel. diff {d:.2e} > {tol:.0e})");
        }
    }

    /// One convolution: input `[N, C, H, W]`, weight `[C', C, k_h, k_w]`, stride, padding
    /// `[(top, bottom), (left, right)]`, with a bias.
    type Case = ([usize; 4], [usize; 4], [usize; 2], [(usize, usize); 2], bool);

    /// The U-Net's three kinds (3×3 same, 3×3 stride 2, 1×1), and what they do not cover:
    /// asymmetric and no padding, non-square kernels and strides, a kernel as wide as the
    /// padded input, more samples than backward tasks (17, unevenly split), one sample; for
    /// Winograd (3×3 same): odd sides (partial tiles), 1×1 and 2×1 images, and samples split
    /// over several chunks (300 tiles each, one sample per chunk); 64 → 32 channels, where
    /// `Auto` picks Winograd (as for every case with 16 input channels or more).
    const CASES: [Case; 13] = [
        ([2, 3, 7, 6], [4, 3, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
        ([3, 4, 8, 7], [5, 4, 3, 3], [2, 2], [(1, 1), (1, 1)], true),
        ([2, 6, 5, 4], [3, 6, 1, 1], [1, 1], [(0, 0), (0, 0)], true),
        ([2, 3, 9, 8], [2, 3, 3, 3], [2, 2], [(0, 0), (0, 0)], false),
        ([2, 2, 6, 7], [3, 2, 2, 3], [1, 2], [(2, 0), (0, 1)], true),
        ([1, 2, 4, 5], [2, 2, 3, 4], [3, 1], [(1, 2), (3, 0)], false),
        ([2, 3, 3, 3], [2, 3, 5, 5], [1, 1], [(1, 1), (1, 1)], true),
        ([17, 2, 5, 5], [3, 2, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
        ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1], [(0, 0), (0, 0)], true),
        ([5, 2, 40, 30], [3, 2, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
        ([2, 3, 1, 1], [2, 3, 3, 3], [1, 1], [(1, 1), (1, 1)], false),
        ([2, 2, 2, 1], [3, 2, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
        ([2, 64, 5, 6], [32, 64, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
    ];

    /// Output and the gradients of `Σ v·out` w.r.t. x, the weight and the bias, from `f`, on
    /// autodiff flex.
    fn run(
        f: impl Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, Conv2dOptions) -> Tensor<4>,
        case: Case,
        dtype: DType,
    ) -> Vec<Vec<f64>> {
        let (xs, ws, stride, padding, with_bias) = case;
        let dev = device().autodiff();
        let x = random(xs, 1, dtype, &dev).require_grad();
        let w = random(ws, 2, dtype, &dev).require_grad();
        let b = random([ws[0]], 3, dtype, &dev).require_grad();
        let options =
            Conv2dOptions { stride, padding, fused: true, algorithm: ConvAlgorithm::Auto };
        let out = f(x.clone(), w.clone(), with_bias.then(|| b.clone()), options);
        let v = random(out.dims(), 4, dtype, &dev);
        let grads = out.clone().mul(v).sum().backward();
        let mut all =
            vec![values(out), values(x.grad(&grads).unwrap()), values(w.grad(&grads).unwrap())];
        if with_bias {
            all.push(values(b.grad(&grads).unwrap()));
        }
        all
    }

    fn stock(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, o: Conv2dOptions) -> Tensor<4> {
        burn::tensor::module::conv2d(x, w, b, o.stock())
    }

    fn fused_matches_stock(dtype: DType, tol: f64) {
        let algorithms = [ConvAlgorithm::Auto, ConvAlgorithm::Im2col, ConvAlgorithm::Winograd];
        for (case, algorithm) in CASES.iter().flat_map(|&c| algorithms.map(|a| (c, a))) {
            let fused = run(
                |x, w, b, o| {
                    assert!(fused::applies(&x, &w, b.as_ref()), "the fused kernel runs");
                    conv2d(x, w, b, o.with_algorithm(algorithm)).unwrap()
                },
                case,
                dtype,
            );
            let reference = run(stock, case, dtype);
            let names = ["output", "dx", "dw", "db"];
            for ((name, got), want) in names.iter().zip(&fused).zip(&reference) {
                let what = format!("{case:?} {algorithm:?} {dtype:?} {name}");
                assert_close(&what, got, want, tol);
            }
        }
    }

    #[test]
    fn fused_forward_and_gradients_equal_burns_conv2d_in_f64() {
        fused_matches_stock(DType::F64, 1e-12);
    }

    #[test]
    fn fused_forward_and_gradients_equal_burns_conv2d_in_f32() {
        fused_matches_stock(DType::F32, 2e-5);
    }

    #[test]
    fn unfused_is_burns_conv2d() {
        let case = CASES[1];
        let got = run(|x, w, b, o| conv2d(x, w, b, o.with_fused(false)).unwrap(), case, DType::F64);
        assert_eq!(got, run(stock, case, DType::F64));
    }

    #[test]
    fn fused_gradients_match_central_finite_differences_in_f64() {
        let case: Case = ([2, 2, 5, 4], [3, 2, 3, 3], [2, 1], [(1, 0), (1, 1)], true);
        let (xs, ws, stride, padding, _) = case;
        let analytic = run(|x, w, b, o| conv2d(x, w, b, o).unwrap(), case, DType::F64);
        let dev = device();
        let mut inputs = [
            values(random(xs, 1, DType::F64, &dev)),
            values(random(ws, 2, DType::F64, &dev)),
            values(random([ws[0]], 3, DType::F64, &dev)),
        ];
        let options =
            Conv2dOptions { stride, padding, fused: true, algorithm: ConvAlgorithm::Auto };
        let out_shape =
            conv2d(Tensor::zeros(xs, &dev), Tensor::zeros(ws, &dev), None, options).unwrap().dims();
        let v = values(random(out_shape, 4, DType::F64, &dev));
        let loss = |inp: &[Vec<f64>; 3]| -> f64 {
            let t = |i: usize, shape: Vec<usize>| TensorData::new(inp[i].clone(), shape);
            let out = conv2d(
                Tensor::from_data(t(0, xs.to_vec()), &dev),
                Tensor::from_data(t(1, ws.to_vec()), &dev),
                Some(Tensor::from_data(t(2, vec![ws[0]]), &dev)),
                options,
            )
            .unwrap();
            values(out).iter().zip(&v).map(|(o, v)| o * v).sum()
        };
        let eps = 1e-6;
        for (which, grad) in analytic[1..].iter().enumerate() {
            for (j, g) in grad.iter().enumerate() {
                let orig = inputs[which][j];
                inputs[which][j] = orig + eps;
                let plus = loss(&inputs);
                inputs[which][j] = orig - eps;
                let minus = loss(&inputs);
                inputs[which][j] = orig;
                let fd = (plus - minus) / (2.0 * eps);
                assert!(
                    (g - fd).abs() <= 1e-7 * fd.abs().max(1.0),
                    "input {which}[{j}]: {g} vs fd {fd}"
                );
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        // 17 samples: 9 backward tasks (8 of 2 samples, 1 of 1), with im2col and Winograd.
        for algorithm in [ConvAlgorithm::Im2col, ConvAlgorithm::Winograd] {
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let conv = |x, w, b, o: Conv2dOptions| {
                    conv2d(x, w, b, o.with_algorithm(algorithm)).unwrap()
                };
                pool.install(|| run(conv, CASES[7], DType::F32))
            };
            assert_eq!(on(1), on(3), "{algorithm:?}");
        }
    }

    #[test]
    fn module_form_equals_the_module_forward() {
        let dev = device();
        let x = random([2, 4, 7, 6], 5, DType::F64, &dev);
        let modules = [
            Conv2dConfig::new([4, 3], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 0, 2, 1)),
            Conv2dConfig::new([4, 3], [3, 3]).with_bias(false),
            Conv2dConfig::new([4, 3], [3, 3]).with_padding(PaddingConfig2d::Same),
            Conv2dConfig::new([4, 2], [3, 3]).with_groups(2),
            Conv2dConfig::new([4, 3], [3, 3]).with_dilation([2, 1]),
        ];
        for config in modules {
            let conv = config.init(&dev);
            let got = values(conv.forward_fused(x.clone()));
            let want = values(conv.forward(x.clone()));
            assert_close(&format!("{config:?}"), &got, &want, 1e-12);
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let dev = device();
        let x = random([2, 3, 5, 5], 1, DType::F64, &dev);
        let call = |w: [usize; 4], b: Option<usize>, o: Conv2dOptions| {
            conv2d(
                x.clone(),
                random(w, 2, DType::F64, &dev),
                b.map(|c| random([c], 3, DType::F64, &dev)),
                o,
            )
            .map(|y| y.dims())
        };
        let o = Conv2dOptions::new(1, 1);
        assert_eq!(call([4, 3, 3, 3], Some(4), o), Ok([2, 4, 5, 5]));
        assert_eq!(
            call([4, 2, 3, 3], None, o),
            Err(ConvError::Channels { input: [2, 3, 5, 5], weight: [4, 2, 3, 3] })
        );
        assert_eq!(call([4, 3, 3, 3], Some(3), o), Err(ConvError::Bias { channels: 4, got: [3] }));
        assert_eq!(
            call([4, 3, 8, 3], None, o),
            Err(ConvError::Geometry { kernel: [8, 3], stride: [1, 1], padded: [7, 7] })
        );
        assert_eq!(
            call([4, 3, 3, 3], None, Conv2dOptions::new(0, 1)),
            Err(ConvError::Geometry { kernel: [3, 3], stride: [0, 0], padded: [7, 7] })
        );
    }
}
