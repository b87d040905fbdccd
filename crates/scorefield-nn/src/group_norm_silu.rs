//! Fused GroupNorm + SiLU (+ a per-channel shift before it), forward and backward.
//!
//! For an NCHW input `x` (`[N, C, H, W]`), an optional shift `a` (`[N, C]`, the U-Net's
//! embedding bias `Linear(e)`), `G` groups of `C/G` channels, `L = (C/G)·H·W` elements per
//! (sample, group), and per-channel `γ`, `β` (`[C]`):
//! ```text
//! z = x + a                              (broadcast over H, W; a = 0 when absent)
//! μ = mean_group(z),  v = mean_group((z − μ)²),  r = 1/√(v + ε)
//! x̂ = (z − μ)·r,  y = γ·x̂ + β,  out = silu(y) = y·σ(y)   (out = y without SiLU)
//! ```
//! and its gradients, with `g = ∂ℓ/∂out`:
//! ```text
//! dy = g·σ(y)·(1 + y·(1 − σ(y)))          (dy = g without SiLU)
//! ∂ℓ/∂β_c = Σ_{n, h, w} dy,   ∂ℓ/∂γ_c = Σ_{n, h, w} dy·x̂
//! ∂ℓ/∂z = r·(γ·dy − mean_group(γ·dy) − x̂·mean_group(γ·dy·x̂)),   ∂ℓ/∂x = ∂ℓ/∂z
//! ∂ℓ/∂a_{n,c} = Σ_{h, w} ∂ℓ/∂z
//! ```
//! (Wu & He, *Group Normalization*, 2018; the same statistics as burn-nn's `GroupNorm`: biased
//! variance, `ε` inside the root.)
//!
//! [`group_norm_silu`] is the entry point. On Burn's `flex` backend (f32 and f64, with or
//! without autodiff) it runs a fused kernel through Burn's backend-extension API
//! ([`GroupNormSiluBackend`], `#[backend_extension(Flex, Autodiff)]`): the forward is one pass
//! over each (sample, group) for the mean, one for the variance (both in f64, on data that
//! stays in cache) and one fused normalise + affine + SiLU pass writing the output; the backward
//! is one pass computing `dy` and the group and channel sums, and one writing `∂ℓ/∂x`. Both run
//! in parallel over (sample, group) with rayon and allocate only their outputs; the autodiff
//! forward keeps `x`, `a`, `γ`, `β` and the `2·N·G` statistics for the backward, not `y`.
//!
//! Every other backend (ndarray, wgpu and the other CubeCL runtimes, libtorch), other float
//! types (f16, bf16) and builds without the `flex` feature run the composed fallback,
//! the same equations written with stock tensor ops (burn-nn's `group_norm` then `silu`), which
//! autodiff differentiates as usual. The routing is by the device of `x` in
//! [`group_norm_silu`], not by the extension macro: the macro's generated dispatch panics on a
//! backend it does not list, and a default trait body would have to re-express the composed
//! ops on raw primitives for every backend, where the tensor API already has them.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use thiserror::Error;

#[cfg(feature = "flex")]
pub use fused::{GroupNormSiluBackend, GroupNormSiluInputs};

/// A shape that [`group_norm_silu`] cannot normalise.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupNormError {
    /// The groups do not divide the channels (or there are none).
    #[error("group_norm_silu: {groups} groups do not divide {channels} channels")]
    Groups {
        /// The number of groups asked for.
        groups: usize,
        /// The channels of the input.
        channels: usize,
    },
    /// `γ` or `β` is not `[C]`.
    #[error("group_norm_silu: gamma {gamma:?} and beta {beta:?} must both be [{channels}]")]
    Affine {
        /// The channels of the input.
        channels: usize,
        /// The shape of `γ`.
        gamma: [usize; 1],
        /// The shape of `β`.
        beta: [usize; 1],
    },
    /// The shift is not `[N, C]`.
    #[error("group_norm_silu: the shift {got:?} must be [{batch}, {channels}]")]
    Shift {
        /// The batch of the input.
        batch: usize,
        /// The channels of the input.
        channels: usize,
        /// The shape of the shift.
        got: [usize; 2],
    },
}

/// The non-tensor arguments of [`group_norm_silu`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormSiluOptions {
    /// The groups `G`; they must divide the channels.
    pub groups: usize,
    /// `ε`, added to the variance.
    pub epsilon: f64,
    /// SiLU after the affine map (`false`: GroupNorm alone).
    pub silu: bool,
    /// The fused kernel where one exists (flex, f32 and f64); `false` runs the composed stock
    /// ops on every backend, the reference the kernel is tested against.
    pub fused: bool,
}

impl GroupNormSiluOptions {
    /// `groups` groups, burn-nn's `ε = 1e-5`, SiLU, fused where a kernel exists.
    pub fn new(groups: usize) -> Self {
        GroupNormSiluOptions { groups, epsilon: 1e-5, silu: true, fused: true }
    }

    /// With `ε = epsilon`.
    pub fn with_epsilon(self, epsilon: f64) -> Self {
        GroupNormSiluOptions { epsilon, ..self }
    }

    /// With or without the SiLU.
    pub fn with_silu(self, silu: bool) -> Self {
        GroupNormSiluOptions { silu, ..self }
    }

    /// With or without the fused kernel.
    pub fn with_fused(self, fused: bool) -> Self {
        GroupNormSiluOptions { fused, ..self }
    }
}

/// The tensors of one call.
struct Args {
    x: Tensor<4>,
    shift: Option<Tensor<2>>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
}

impl Args {
    fn check(&self, groups: usize) -> Result<(), GroupNormError> {
        let [n, c, _, _] = self.x.dims();
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(GroupNormError::Groups { groups, channels: c });
        }
        let (gamma, beta) = (self.gamma.dims(), self.beta.dims());
        if gamma != [c] || beta != [c] {
            return Err(GroupNormError::Affine { channels: c, gamma, beta });
        }
        if let Some(shift) = &self.shift
            && shift.dims() != [n, c]
        {
            return Err(GroupNormError::Shift { batch: n, channels: c, got: shift.dims() });
        }
        Ok(())
    }
}

/// `silu(GroupNorm(x + a))` (or `GroupNorm(x + a)` without SiLU), see the [module
/// docs](self) for the equations: `x` is `[N, C, H, W]`, the optional shift `a` is `[N, C]`,
/// `gamma` and `beta` are `[C]`.
///
/// Runs the fused kernel on the `flex` backend (f32 and f64, with a hand-written backward under
/// autodiff) unless `options.fused` is false, and the composed stock ops everywhere else: the
/// shift added, then burn-nn's `group_norm` (mean, centred mean square, division by
/// `√(v + ε)`, affine), then `silu`.
///
/// # Errors
/// [`GroupNormError`] if the groups do not divide `C`, `gamma`/`beta` are not `[C]` or the
/// shift is not `[N, C]`.
pub fn group_norm_silu(
    x: Tensor<4>,
    shift: Option<Tensor<2>>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    options: GroupNormSiluOptions,
) -> Result<Tensor<4>, GroupNormError> {
    let args = Args { x, shift, gamma, beta };
    args.check(options.groups)?;
    #[cfg(feature = "flex")]
    if options.fused && fused::applies(&args) {
        return Ok(fused::run(args, options));
    }
    Ok(composed(args, options))
}

fn composed(args: Args, options: GroupNormSiluOptions) -> Tensor<4> {
    let Args { x, shift, gamma, beta } = args;
    let [n, c, h, w] = x.dims();
    let z = match shift {
        Some(a) => x.add(a.reshape([n, c, 1, 1])),
        None => x,
    };
    let groups = options.groups;
    let grouped = z.reshape([n, groups, c / groups * h * w]);
    let mean = grouped.clone().mean_dim(2);
    let centred = grouped.sub(mean);
    let var = centred.clone().square().mean_dim(2);
    let y = centred
        .div(var.add_scalar(options.epsilon).sqrt())
        .reshape([n, c, h, w])
        .mul(gamma.reshape([1, c, 1, 1]))
        .add(beta.reshape([1, c, 1, 1]));
    if options.silu { silu(y) } else { y }
}

/// [`group_norm_silu`] with the parameters of a burn-nn [`GroupNorm`] module.
pub trait GroupNormSilu {
    /// `silu(self(x + shift))`, the shift `[N, C]` broadcast over `H, W` (fused on `flex`).
    ///
    /// # Panics
    /// If `x` is not `[N, num_channels, H, W]` or the shift not `[N, num_channels]` (as
    /// `GroupNorm::forward` panics on a wrong channel count); the groups were validated by
    /// `GroupNormConfig::init`.
    fn forward_silu(&self, x: Tensor<4>, shift: Option<Tensor<2>>) -> Tensor<4>;
}

impl GroupNormSilu for GroupNorm {
    fn forward_silu(&self, x: Tensor<4>, shift: Option<Tensor<2>>) -> Tensor<4> {
        let device = x.device();
        let (gamma, beta) = match (&self.gamma, &self.beta) {
            (Some(gamma), Some(beta)) if self.affine => (gamma.val(), beta.val()),
            _ => {
                let c = self.num_channels;
                let dtype = x.dtype();
                (Tensor::ones([c], (&device, dtype)), Tensor::zeros([c], (&device, dtype)))
            }
        };
        assert_eq!(x.dims()[1], self.num_channels, "GroupNorm: input channels");
        let options = GroupNormSiluOptions::new(self.num_groups).with_epsilon(self.epsilon);
        group_norm_silu(x, shift, gamma, beta, options).unwrap_or_else(|e| panic!("{e}"))
    }
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
    use burn::tensor::{DType, Tensor};

    use super::{Args, GroupNormSiluOptions};
    use crate::flex::{OptionalTensor, assume_init, flex_tensor as tensor, on_flex_in, uninit};

    /// The flex tensor primitive.
    type FlexTensor = FloatTensor<Flex>;

    /// The tensors of [`GroupNormSiluBackend::group_norm_silu`], shapes already validated: `x`
    /// `[N, C, H, W]`, the shift `[N, C]`, `gamma` and `beta` `[C]`, all of one float type (f32
    /// or f64).
    #[derive(ExtensionType)]
    pub struct GroupNormSiluInputs<B: Backend> {
        /// The input.
        pub x: FloatTensor<B>,
        /// The per-channel shift added before normalising.
        #[extension_type]
        pub shift: OptionalTensor<B>,
        /// The scale `γ`.
        pub gamma: FloatTensor<B>,
        /// The offset `β`.
        pub beta: FloatTensor<B>,
    }

    /// The fused op as a Burn backend extension: implemented by `Flex` (the forward kernel) and
    /// `Autodiff<Flex>` (forward kernel + hand-written fused backward); [`group_norm_silu`]
    /// routes every other backend to the composed ops.
    ///
    /// [`group_norm_silu`]: super::group_norm_silu
    #[backend_extension(Flex, Autodiff)]
    pub trait GroupNormSiluBackend: Backend {
        /// `silu(GroupNorm(x + shift))` on primitives (see [`GroupNormSiluInputs`]).
        fn group_norm_silu(
            #[extension_type] inputs: GroupNormSiluInputs<Self>,
            options: GroupNormSiluOptions,
        ) -> FloatTensor<Self>;
    }

    /// Whether every input lives on flex (with or without autodiff) in one fused float type.
    pub(super) fn applies(args: &Args) -> bool {
        let others =
            [(args.gamma.dtype(), args.gamma.device()), (args.beta.dtype(), args.beta.device())];
        on_flex_in(
            args.x.dtype(),
            args.x.device(),
            others.into_iter().chain(args.shift.as_ref().map(|s| (s.dtype(), s.device()))),
        )
    }

    /// Calls the extension through Burn's dispatch.
    pub(super) fn run(args: Args, options: GroupNormSiluOptions) -> Tensor<4> {
        let Args { x, shift, gamma, beta } = args;
        let inputs = GroupNormSiluInputs {
            x: x.into_dispatch(),
            shift: OptionalTensor::from_option(shift.map(|a| a.into_dispatch())),
            gamma: gamma.into_dispatch(),
            beta: beta.into_dispatch(),
        };
        Tensor::from_dispatch(<Dispatch as GroupNormSiluBackend>::group_norm_silu(inputs, options))
    }

    impl GroupNormSiluBackend for Flex {
        fn group_norm_silu(
            inputs: GroupNormSiluInputs<Self>,
            options: GroupNormSiluOptions,
        ) -> FlexTensor {
            let GroupNormSiluInputs { x, shift, gamma, beta } = inputs;
            forward(&Inputs { x, shift: shift.into_option(), gamma, beta, options }).0
        }
    }

    impl<C: CheckpointStrategy> GroupNormSiluBackend for Autodiff<Flex, C> {
        fn group_norm_silu(
            inputs: GroupNormSiluInputs<Self>,
            options: GroupNormSiluOptions,
        ) -> FloatTensor<Self> {
            let GroupNormSiluInputs { x, shift, gamma, beta } = inputs;
            let [n, c, _, _] = x.primitive().layout().shape().dims::<4>();
            let (shift, absent) = shift.or_untracked_zeros(&[n, c]);
            let prep = GroupNormSiluBackward
                .prepare::<C>([x.node(), shift.node(), gamma.node(), beta.node()])
                .compute_bound()
                .stateful();
            let inputs = Inputs {
                x: x.primitive().clone(),
                shift: (!absent).then(|| shift.primitive().clone()),
                gamma: gamma.primitive().clone(),
                beta: beta.primitive().clone(),
                options,
            };
            let (out, stats) = forward(&inputs);
            match prep {
                OpsKind::Tracked(prep) => prep.finish(State { inputs, stats }, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }

    /// The forward's inputs, kept for the backward.
    #[derive(Clone, Debug)]
    struct Inputs {
        x: FlexTensor,
        shift: Option<FlexTensor>,
        gamma: FlexTensor,
        beta: FlexTensor,
        options: GroupNormSiluOptions,
    }

    /// What the backward needs: the inputs and `(μ, r)` of every (sample, group).
    #[derive(Clone, Debug)]
    struct State {
        inputs: Inputs,
        stats: Vec<f64>,
    }

    #[derive(Debug)]
    struct GroupNormSiluBackward;

    impl Backward<Flex, 4> for GroupNormSiluBackward {
        type State = State;

        fn backward(self, ops: Ops<State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [x, shift, gamma, beta] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let g = backward(&ops.state, grad);
            for (parent, grad) in
                [(x, Some(g.x)), (shift, g.shift), (gamma, Some(g.gamma)), (beta, Some(g.beta))]
            {
                if let (Some(node), Some(grad)) = (parent, grad) {
                    grads.register::<Flex>(node.id, grad);
                }
            }
        }
    }

    /// The shape of one call.
    #[derive(Clone, Copy, Debug)]
    struct Dims {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        groups: usize,
    }

    impl Dims {
        fn of(inputs: &Inputs) -> Dims {
            let [n, c, h, w] = inputs.x.layout().shape().dims::<4>();
            Dims { n, c, h, w, groups: inputs.options.groups }
        }
        /// Channels per group.
        fn cpg(&self) -> usize {
            self.c / self.groups
        }
        /// Elements per spatial plane.
        fn hw(&self) -> usize {
            self.h * self.w
        }
        /// Elements per (sample, group): one contiguous run of NCHW.
        fn len(&self) -> usize {
            self.cpg() * self.hw()
        }
    }

    /// Runs `$body` with `$E` bound to the float type of `$dtype` and every `$t` (a
    /// `FlexTensor`, made contiguous) bound to its slice.
    macro_rules! with_slices {
        ($dtype:expr, [$($s:ident = $t:expr;)*], $opt:ident = $o:expr, |$E:ident| $body:block) => {
            match $dtype {
                DType::F32 => {
                    type $E = f32;
                    with_slices!(@bind $E, [$($s = $t;)*], $opt = $o, $body)
                }
                DType::F64 => {
                    type $E = f64;
                    with_slices!(@bind $E, [$($s = $t;)*], $opt = $o, $body)
                }
                other => unreachable!("group_norm_silu: no fused kernel for {other:?}"),
            }
        };
        (@bind $E:ident, [$($s:ident = $t:expr;)*], $opt:ident = $o:expr, $body:block) => {{
            $(let $s = $t.to_contiguous();)*
            $(let $s: &[$E] = $s.as_slice().expect("contiguous float storage");)*
            let $opt = $o.map(|t: &FlexTensor| t.to_contiguous());
            let $opt: Option<&[$E]> =
                $opt.as_ref().map(|t| t.as_slice().expect("contiguous float storage"));
            $body
        }};
    }

    /// The fused forward: the output and `(μ, r)` per (sample, group).
    fn forward(inputs: &Inputs) -> (FlexTensor, Vec<f64>) {
        let d = Dims::of(inputs);
        let mut stats = vec![0.0; 2 * d.n * d.groups];
        let out = with_slices!(
            inputs.x.dtype(),
            [x = inputs.x; gamma = inputs.gamma; beta = inputs.beta;],
            shift = inputs.shift.as_ref(),
            |E| {
                let mut out = uninit(x.len());
                let k = kernel::Slices { x, shift, gamma, beta };
                kernel::forward(&k, d, inputs.options, &mut out, &mut stats);
                // SAFETY: the forward's tasks cover `out` and each initialises its chunk.
                let out = unsafe { assume_init(out) };
                tensor(out, &[d.n, d.c, d.h, d.w])
            }
        );
        (out, stats)
    }

    /// The gradients of one backward step (`shift` when there was one).
    struct Grads {
        x: FlexTensor,
        shift: Option<FlexTensor>,
        gamma: FlexTensor,
        beta: FlexTensor,
    }

    /// The fused backward from the output gradient.
    fn backward(state: &State, grad: FlexTensor) -> Grads {
        let inputs = &state.inputs;
        let d = Dims::of(inputs);
        with_slices!(
            inputs.x.dtype(),
            [x = inputs.x; gamma = inputs.gamma; beta = inputs.beta; grad = grad;],
            shift = inputs.shift.as_ref(),
            |E| {
                let mut dx = vec![0.0 as E; x.len()];
                // Per (sample, channel): Σ dy, Σ dy·x̂, Σ ∂ℓ/∂z.
                let mut sums = vec![[0.0f64; 3]; d.n * d.c];
                let k = kernel::Slices { x, shift, gamma, beta };
                kernel::backward(&k, &state.stats, grad, d, inputs.options.silu, &mut dx, &mut sums);
                let reduce = |j: usize| -> Vec<E> {
                    (0..d.c).map(|c| (0..d.n).map(|n| sums[n * d.c + c][j]).sum::<f64>() as E).collect()
                };
                Grads {
                    x: tensor(dx, &[d.n, d.c, d.h, d.w]),
                    shift: shift.map(|_| tensor(sums.iter().map(|s| s[2] as E).collect(), &[d.n, d.c])),
                    gamma: tensor(reduce(1), &[d.c]),
                    beta: tensor(reduce(0), &[d.c]),
                }
            }
        )
    }

    mod kernel {
        //! The kernels on slices, generic over f32 and f64.

        use std::mem::MaybeUninit;

        use rayon::prelude::*;

        use super::{Dims, GroupNormSiluOptions};
        use crate::flex::{Real, zeroed};

        const LANES: usize = 8;

        /// `Σ_j f(j)` for `j < len`, in f64 over independent lanes (so that it vectorises).
        #[inline(always)]
        fn sum2(len: usize, mut f: impl FnMut(usize) -> (f64, f64)) -> (f64, f64) {
            let (mut a, mut b) = ([0.0f64; LANES], [0.0f64; LANES]);
            let full = len - len % LANES;
            for j in (0..full).step_by(LANES) {
                for l in 0..LANES {
                    let (u, v) = f(j + l);
                    a[l] += u;
                    b[l] += v;
                }
            }
            for j in full..len {
                let (u, v) = f(j);
                a[0] += u;
                b[0] += v;
            }
            (a.iter().sum(), b.iter().sum())
        }

        /// The forward of (sample, group) `i`: `out` and `x` its `len` elements, `stats` its
        /// `(μ, r)`.
        #[inline(always)]
        fn forward_group<E: Real>(
            k: &Slices<'_, E>,
            d: Dims,
            options: GroupNormSiluOptions,
            i: usize,
            out: &mut [E],
            x: &[E],
            stats: &mut [f64],
        ) {
            let Slices { shift, gamma, beta, .. } = *k;
            let (cpg, hw, len) = (d.cpg(), d.hw(), d.len());

            let (n, c0) = (i / d.groups, (i % d.groups) * cpg);
            let a = |k: usize| shift.map_or(0.0, |s| s[n * d.c + c0 + k].into());
            let mut sum = 0.0;
            for k in 0..cpg {
                let plane = &x[k * hw..(k + 1) * hw];
                sum += sum2(hw, |j| (plane[j].into(), 0.0)).0 + a(k) * hw as f64;
            }
            let mean = sum / len as f64;
            let mut squares = 0.0;
            for k in 0..cpg {
                let (plane, offset) = (&x[k * hw..(k + 1) * hw], a(k) - mean);
                squares += sum2(hw, |j| {
                    let v = plane[j].into() + offset;
                    (v * v, 0.0)
                })
                .0;
            }
            let r = 1.0 / (squares / len as f64 + options.epsilon).sqrt();
            stats[0] = mean;
            stats[1] = r;
            for k in 0..cpg {
                // y = γ(x + a − μ)r + β = x·s + b.
                let s = gamma[c0 + k].into() * r;
                let b = E::of(beta[c0 + k].into() + (a(k) - mean) * s);
                let s = E::of(s);
                let (plane, out) = (&x[k * hw..(k + 1) * hw], &mut out[k * hw..(k + 1) * hw]);
                if options.silu {
                    for (o, &v) in out.iter_mut().zip(plane) {
                        let y = v * s + b;
                        *o = y / (E::ONE + (-y).exp());
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(plane) {
                        *o = v * s + b;
                    }
                }
            }
        }

        /// The forward over every (sample, group) in parallel; `stats` gets `(μ, r)` of each.
        pub(super) fn forward<E: Real>(
            k: &Slices<'_, E>,
            d: Dims,
            options: GroupNormSiluOptions,
            out: &mut [MaybeUninit<E>],
            stats: &mut [f64],
        ) {
            let len = d.len();
            out.par_chunks_mut(len)
                .zip(k.x.par_chunks(len))
                .zip(stats.par_chunks_mut(2))
                .enumerate()
                .for_each(|(i, ((out, x), stats))| {
                    forward_group_dispatch(k, d, options, i, zeroed(out), x, stats)
                });
        }

        /// The input slices of one call.
        #[derive(Clone, Copy)]
        pub(super) struct Slices<'a, E> {
            pub(super) x: &'a [E],
            pub(super) shift: Option<&'a [E]>,
            pub(super) gamma: &'a [E],
            pub(super) beta: &'a [E],
        }

        /// The backward of (sample, group) `i`: `dx` its `len` elements, `sums` its channels'.
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn backward_group<E: Real>(
            k: &Slices<'_, E>,
            stats: &[f64],
            grad: &[E],
            d: Dims,
            silu: bool,
            i: usize,
            dx: &mut [E],
            sums: &mut [[f64; 3]],
        ) {
            let (cpg, hw, len) = (d.cpg(), d.hw(), d.len());

            let (n, c0) = (i / d.groups, (i % d.groups) * cpg);
            let base = i * len;
            let (x, g) = (&k.x[base..base + len], &grad[base..base + len]);
            let a = |c: usize| k.shift.map_or(0.0, |s| s[n * d.c + c0 + c].into());
            let (mean, r) = (stats[2 * i], stats[2 * i + 1]);
            // Pass 1: dy into dx, Σ dy and Σ dy·x̂ per channel.
            let (mut m1, mut m2) = (0.0, 0.0);
            for (c, sum) in sums.iter_mut().enumerate() {
                let gamma = k.gamma[c0 + c].into();
                let s = gamma * r;
                let offset = a(c) - mean;
                let b = E::of(k.beta[c0 + c].into() + offset * s);
                let (s, r_e, o_e) = (E::of(s), E::of(r), E::of(offset * r));
                let range = c * hw..(c + 1) * hw;
                let (x, g, dy) = (&x[range.clone()], &g[range.clone()], &mut dx[range]);
                // Written first and summed after, so that both loops vectorise.
                if silu {
                    for ((dy, &g), &v) in dy.iter_mut().zip(g).zip(x) {
                        let y = v * s + b;
                        let sig = E::ONE / (E::ONE + (-y).exp());
                        *dy = g * sig * (E::ONE + y * (E::ONE - sig));
                    }
                } else {
                    dy.copy_from_slice(g);
                }
                let dy = &*dy;
                let (sdy, sdyx) = sum2(hw, |j| (dy[j].into(), (dy[j] * (x[j] * r_e + o_e)).into()));
                sum[0] = sdy;
                sum[1] = sdyx;
                m1 += gamma * sdy;
                m2 += gamma * sdyx;
            }
            let (m1, m2) = (m1 / len as f64, m2 / len as f64);
            // Pass 2: ∂ℓ/∂z = r(γ·dy − m1 − x̂·m2), and Σ ∂ℓ/∂z per channel.
            for (c, sum) in sums.iter_mut().enumerate() {
                let gamma = k.gamma[c0 + c].into();
                let offset = (a(c) - mean) * r;
                // r(γ dy − m1 − (x r + offset) m2) = dy·(rγ) + x·(−r² m2) + (−r m1 − r offset m2)
                let (p, q, t) =
                    (E::of(r * gamma), E::of(-r * r * m2), E::of(-r * m1 - r * offset * m2));
                let range = c * hw..(c + 1) * hw;
                let (x, dz) = (&x[range.clone()], &mut dx[range]);
                for (dz, &x) in dz.iter_mut().zip(x) {
                    *dz = *dz * p + x * q + t;
                }
                let dz = &*dz;
                sum[2] = sum2(hw, |j| (dz[j].into(), 0.0)).0;
            }
        }

        crate::flex::avx2_twin!(forward_group, forward_group_avx2, forward_group_dispatch,
            (k: &Slices<'_, E>, d: Dims, options: GroupNormSiluOptions, i: usize, out: &mut [E],
             x: &[E], stats: &mut [f64]));
        crate::flex::avx2_twin!(backward_group, backward_group_avx2, backward_group_dispatch,
            (k: &Slices<'_, E>, stats: &[f64], grad: &[E], d: Dims, silu: bool, i: usize,
             dx: &mut [E], sums: &mut [[f64; 3]]));

        /// The backward over every (sample, group) in parallel: `dx` gets `∂ℓ/∂x`, `sums`
        /// per (sample, channel) `[Σ dy, Σ dy·x̂, Σ ∂ℓ/∂z]`.
        pub(super) fn backward<E: Real>(
            k: &Slices<'_, E>,
            stats: &[f64],
            grad: &[E],
            d: Dims,
            silu: bool,
            dx: &mut [E],
            sums: &mut [[f64; 3]],
        ) {
            let (cpg, len) = (d.cpg(), d.len());
            dx.par_chunks_mut(len).zip(sums.par_chunks_mut(cpg)).enumerate().for_each(
                |(i, (dx, sums))| backward_group_dispatch(k, stats, grad, d, silu, i, dx, sums),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, random, values};
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{DType, TensorData};

    /// `|a − b| ≤ tol·max(|b|, 1)` elementwise.
    fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x - y).abs() / y.abs().max(1.0);
            assert!(d <= tol, "{what}[{i}]: {x} vs {y} (rel. diff {d:.2e} > {tol:.0e})");
        }
    }

    /// The composed stock ops of the issue: the shift added, burn-nn's `GroupNorm`, `silu`.
    fn burn_nn(
        x: Tensor<4>,
        shift: Option<Tensor<2>>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        groups: usize,
        act: bool,
    ) -> Tensor<4> {
        let [n, c, _, _] = x.dims();
        let mut norm = GroupNormConfig::new(groups, c).init(&x.device());
        norm.gamma = Some(Param::from_tensor(gamma));
        norm.beta = Some(Param::from_tensor(beta));
        let z = match shift {
            Some(a) => x.add(a.reshape([n, c, 1, 1])),
            None => x,
        };
        let y = norm.forward(z);
        if act { silu(y) } else { y }
    }

    /// (shape, groups, with a shift, with SiLU): groups = 1, groups = C, H·W = 1, a group of
    /// one element, planes that are not a multiple of the kernel's 8 lanes.
    const CASES: [([usize; 4], usize, bool, bool); 8] = [
        ([2, 8, 5, 3], 4, true, true),
        ([2, 8, 5, 3], 4, false, true),
        ([2, 8, 5, 3], 2, true, false),
        ([3, 6, 4, 4], 1, true, true),
        ([2, 6, 3, 5], 6, true, true),
        ([4, 4, 1, 1], 2, true, true),
        ([3, 4, 1, 1], 4, false, true),
        ([2, 4, 9, 9], 2, true, true),
    ];

    /// Output and the gradients of `Σ w·out` w.r.t. x, shift, γ, β, from `f`, on autodiff flex.
    fn run(
        f: impl Fn(Tensor<4>, Option<Tensor<2>>, Tensor<1>, Tensor<1>) -> Tensor<4>,
        case: ([usize; 4], usize, bool, bool),
        dtype: DType,
    ) -> Vec<Vec<f64>> {
        let ([n, c, h, w], _, with_shift, _) = case;
        let dev = device().autodiff();
        let x = random([n, c, h, w], 1, dtype, &dev).mul_scalar(2.0).add_scalar(0.5).require_grad();
        let shift = random([n, c], 2, dtype, &dev).require_grad();
        let gamma = random([c], 3, dtype, &dev).add_scalar(1.0).require_grad();
        let beta = random([c], 4, dtype, &dev).require_grad();
        let weight = random([n, c, h, w], 5, dtype, &dev);
        let out = f(x.clone(), with_shift.then(|| shift.clone()), gamma.clone(), beta.clone());
        let grads = out.clone().mul(weight).sum().backward();
        let mut all = vec![values(out), values(x.grad(&grads).unwrap())];
        if with_shift {
            all.push(values(shift.grad(&grads).unwrap()));
        }
        all.push(values(gamma.grad(&grads).unwrap()));
        all.push(values(beta.grad(&grads).unwrap()));
        all
    }

    fn fused_matches_burn_nn(dtype: DType, tol: f64) {
        let names = ["output", "dx", "dshift", "dgamma", "dbeta"];
        for case in CASES {
            let (_, groups, with_shift, act) = case;
            let fused = run(
                |x, a, g, b| {
                    let args = Args { x, shift: a, gamma: g, beta: b };
                    assert!(fused::applies(&args), "the fused kernel runs");
                    let Args { x, shift: a, gamma: g, beta: b } = args;
                    group_norm_silu(x, a, g, b, GroupNormSiluOptions::new(groups).with_silu(act))
                        .unwrap()
                },
                case,
                dtype,
            );
            let reference = run(|x, a, g, b| burn_nn(x, a, g, b, groups, act), case, dtype);
            let names = names.iter().filter(|n| with_shift || **n != "dshift");
            for ((name, got), want) in names.zip(&fused).zip(&reference) {
                assert_close(&format!("{case:?} {dtype:?} {name}"), got, want, tol);
            }
        }
    }

    #[test]
    fn fused_forward_and_gradients_equal_burn_nn_group_norm_then_silu_in_f64() {
        fused_matches_burn_nn(DType::F64, 1e-12);
    }

    #[test]
    fn fused_forward_and_gradients_equal_burn_nn_group_norm_then_silu_in_f32() {
        fused_matches_burn_nn(DType::F32, 2e-5);
    }

    #[test]
    fn composed_fallback_equals_burn_nn_group_norm_then_silu() {
        for case in CASES {
            let (_, groups, _, act) = case;
            let composed = run(
                |x, a, g, b| {
                    let options =
                        GroupNormSiluOptions::new(groups).with_silu(act).with_fused(false);
                    group_norm_silu(x, a, g, b, options).unwrap()
                },
                case,
                DType::F64,
            );
            let reference = run(|x, a, g, b| burn_nn(x, a, g, b, groups, act), case, DType::F64);
            for (got, want) in composed.iter().zip(&reference) {
                assert_close(&format!("{case:?}"), got, want, 1e-12);
            }
        }
    }

    #[test]
    fn fused_gradients_match_central_finite_differences_in_f64() {
        let ([n, c, h, w], groups) = ([2, 4, 3, 2], 2);
        let case = ([n, c, h, w], groups, true, true);
        let analytic = run(
            |x, a, g, b| group_norm_silu(x, a, g, b, GroupNormSiluOptions::new(groups)).unwrap(),
            case,
            DType::F64,
        );
        // The same inputs as `run`, on the plain (non-autodiff) device, perturbed one by one.
        let dev = device();
        let mut inputs = [
            values(random([n, c, h, w], 1, DType::F64, &dev).mul_scalar(2.0).add_scalar(0.5)),
            values(random([n, c], 2, DType::F64, &dev)),
            values(random([c], 3, DType::F64, &dev).add_scalar(1.0)),
            values(random([c], 4, DType::F64, &dev)),
        ];
        let weight = values(random([n, c, h, w], 5, DType::F64, &dev));
        let loss = |v: &[Vec<f64>; 4]| -> f64 {
            let t = |i: usize, shape: Vec<usize>| TensorData::new(v[i].clone(), shape);
            let out = group_norm_silu(
                Tensor::from_data(t(0, vec![n, c, h, w]), &dev),
                Some(Tensor::from_data(t(1, vec![n, c]), &dev)),
                Tensor::from_data(t(2, vec![c]), &dev),
                Tensor::from_data(t(3, vec![c]), &dev),
                GroupNormSiluOptions::new(groups),
            )
            .unwrap();
            values(out).iter().zip(&weight).map(|(o, w)| o * w).sum()
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
                let d = (g - fd).abs();
                assert!(d <= 1e-6 * fd.abs().max(1.0), "input {which}[{j}]: {g} vs fd {fd}");
            }
        }
    }

    #[test]
    fn module_form_equals_the_function() {
        let dev = device();
        let norm = GroupNormConfig::new(2, 4).init(&dev);
        let x = random([2, 4, 3, 3], 7, DType::F64, &dev);
        let a = random([2, 4], 8, DType::F64, &dev);
        let got = values(norm.forward_silu(x.clone(), Some(a.clone())));
        let want = values(silu(norm.forward(x.add(a.reshape([2, 4, 1, 1])))));
        assert_close("forward_silu", &got, &want, 1e-12);
    }

    #[test]
    fn shape_errors_are_typed() {
        let dev = device();
        let x = random([2, 8, 3, 3], 1, DType::F64, &dev);
        let (g, b) = (random([8], 2, DType::F64, &dev), random([8], 3, DType::F64, &dev));
        let call = |groups, gamma: Tensor<1>, shift: Option<Tensor<2>>| {
            group_norm_silu(x.clone(), shift, gamma, b.clone(), GroupNormSiluOptions::new(groups))
                .map(|_| ())
        };
        assert_eq!(
            call(3, g.clone(), None),
            Err(GroupNormError::Groups { groups: 3, channels: 8 })
        );
        assert_eq!(
            call(0, g.clone(), None),
            Err(GroupNormError::Groups { groups: 0, channels: 8 })
        );
        let short = random([7], 4, DType::F64, &dev);
        assert_eq!(
            call(4, short, None),
            Err(GroupNormError::Affine { channels: 8, gamma: [7], beta: [8] })
        );
        let shift = random([2, 7], 5, DType::F64, &dev);
        assert_eq!(
            call(4, g.clone(), Some(shift)),
            Err(GroupNormError::Shift { batch: 2, channels: 8, got: [2, 7] })
        );
        assert_eq!(call(4, g, None), Ok(()));
    }
}
