//! Forward-mode JVPs of Burn's layers: each maps a [`Dual`] `(x, ẋ)` to `(f(x), J_f·ẋ)`.
//!
//! - `Linear`: `(xW + b, ẋW)`.
//! - `Conv2d` (any stride, padding, dilation, groups): `(conv(x) + b, conv(ẋ))`, both through
//!   [`crate::conv`]'s kernel where it applies.
//! - `GroupNorm`: with `x̂ = (x − μ)/s`, `s = √(var + ε)` per sample and group,
//!   `ẏ = γ·(ẋ − mean(ẋ) − x̂·mean(x̂·ẋ))/s`.
//!
//! The layers are Burn's own (`burn::nn`), so modules built from them save, load and train as
//! usual; [`DualForward`] adds the JVP pass beside their `forward`.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::module::linear;

use crate::conv::Conv2dFused;
use crate::dual::Dual;

/// A layer with an exact forward-mode JVP.
pub trait DualForward<const DI: usize, const DO: usize> {
    /// `(f(x), J_f(x)·ẋ)` for every tangent of `x`.
    fn forward_dual(&self, x: Dual<DI>) -> Dual<DO>;
}

impl<const D: usize> DualForward<D, D> for Linear {
    fn forward_dual(&self, x: Dual<D>) -> Dual<D> {
        let value = self.forward(x.value);
        let tangent = linear(x.tangent, self.weight.val(), None);
        Dual { value, tangent }
    }
}

impl DualForward<4, 4> for Conv2d {
    fn forward_dual(&self, x: Dual<4>) -> Dual<4> {
        let value = self.forward_fused(x.value);
        let without_bias = Conv2d {
            weight: self.weight.clone(),
            bias: None,
            stride: self.stride,
            kernel_size: self.kernel_size,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding.clone(),
        };
        Dual { value, tangent: without_bias.forward_fused(x.tangent) }
    }
}

impl<const D: usize> DualForward<D, D> for GroupNorm {
    fn forward_dual(&self, x: Dual<D>) -> Dual<D> {
        let shape = x.value.dims();
        let (b, g) = (shape[0], self.num_groups);
        let n = shape[1..].iter().product::<usize>() / g;
        let k = x.tangents();
        let grouped = x.value.clone().reshape([b, g, n]);
        let centred = grouped.clone().sub(grouped.mean_dim(2));
        let inv_std = centred.clone().square().mean_dim(2).add_scalar(self.epsilon).sqrt().recip();
        let normalised = centred.mul(inv_std.clone()); // x̂, [B, G, n]

        let xhat_t = normalised.clone().repeat_dim(0, k);
        let inv_std_t = inv_std.repeat_dim(0, k);
        let dx = x.tangent.reshape([k * b, g, n]);
        let dx_centred = dx.clone().sub(dx.clone().mean_dim(2));
        let projection = xhat_t.clone().mul(xhat_t.mul(dx).mean_dim(2));
        let tangent = dx_centred.sub(projection).mul(inv_std_t);

        let mut tangent_shape = shape;
        tangent_shape[0] = k * b;
        let (mut value, mut tangent) = (normalised.reshape(shape), tangent.reshape(tangent_shape));
        if self.affine
            && let (Some(gamma), Some(beta)) = (&self.gamma, &self.beta)
        {
            let mut affine = [1usize; D];
            affine[1] = shape[1];
            let gamma = gamma.val().reshape(affine);
            value = value.mul(gamma.clone()).add(beta.val().reshape(affine));
            tangent = tangent.mul(gamma);
        }
        Dual { value, tangent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_jvp, device, normal};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
    use burn::tensor::Tensor;

    #[test]
    fn linear_jvp_matches_finite_differences() {
        let layer = LinearConfig::new(5, 7).init(&device());
        let (x, v) = (normal([4, 5], 1), normal([4, 5], 2));
        let out = layer.forward_dual(Dual::new(x.clone(), v.clone()));
        assert_jvp(|x| layer.forward(x), x, v, out.tangent);
    }

    #[test]
    fn conv2d_jvp_matches_finite_differences_plain_and_strided() {
        for (stride, padding) in [(1, 1), (2, 1), (2, 0)] {
            let conv = Conv2dConfig::new([3, 4], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                .init(&device());
            let (x, v) = (normal([2, 3, 9, 9], 3), normal([2, 3, 9, 9], 4));
            let out = conv.forward_dual(Dual::new(x.clone(), v.clone()));
            assert_eq!(out.value.dims(), conv.forward(x.clone()).dims());
            assert_jvp(|x| conv.forward(x), x, v, out.tangent);
        }
    }

    #[test]
    fn group_norm_value_is_burns_and_jvp_matches_finite_differences() {
        let mut norm = GroupNormConfig::new(2, 6).init(&device());
        // Non-trivial affine parameters.
        norm.gamma = norm.gamma.map(|g| g.map(|t| t.add(normal([6], 5).mul_scalar(0.3))));
        norm.beta = norm.beta.map(|b| b.map(|t| t.add(normal([6], 6))));
        let (x, v) = (normal([3, 6, 4, 4], 7), normal([3, 6, 4, 4], 8));
        let out = norm.forward_dual(Dual::new(x.clone(), v.clone()));
        let burn_value = norm.forward(x.clone());
        let diff = out.value.clone().sub(burn_value).abs().max().into_scalar::<f64>();
        assert!(diff < 1e-10, "value differs from burn's GroupNorm by {diff}");
        assert_jvp(|x| norm.forward(x), x, v, out.tangent);
    }

    #[test]
    fn several_tangents_per_sample_equal_one_at_a_time() {
        let norm = GroupNormConfig::new(2, 4).init(&device());
        let (b, k) = (3, 4);
        let x = normal([b, 4, 3, 3], 9);
        let v = normal([k * b, 4, 3, 3], 10);
        let many = norm.forward_dual(Dual::new(x.clone(), v.clone())).silu();
        for i in 0..k {
            let one = norm.forward_dual(Dual::new(x.clone(), v.clone().narrow(0, i * b, b))).silu();
            let diff = many.tangent.clone().narrow(0, i * b, b).sub(one.tangent).abs().max();
            assert!(diff.into_scalar::<f64>() < 1e-12);
        }
    }

    #[test]
    fn activations_upsampling_concatenation_and_residuals_match_finite_differences() {
        let (x, v) = (normal([2, 3, 4, 4], 11), normal([2, 3, 4, 4], 12));
        let dual = || Dual::new(x.clone(), v.clone());
        type Op = Box<dyn Fn(Dual<4>) -> Dual<4>>;
        let cases: Vec<(&str, Op)> = vec![
            ("silu", Box::new(|d: Dual<4>| d.silu())),
            ("elu", Box::new(|d: Dual<4>| d.elu())),
            ("softplus", Box::new(|d: Dual<4>| d.softplus())),
            ("tanh", Box::new(|d: Dual<4>| d.tanh())),
            ("upsample", Box::new(|d: Dual<4>| d.upsample_nearest(2))),
            ("cat", Box::new(|d: Dual<4>| Dual::cat(vec![d.clone().tanh(), d.silu()], 1))),
            ("residual", Box::new(|d: Dual<4>| d.clone() + d.softplus().mul_scalar(0.5))),
        ];
        for (name, op) in cases {
            let out = op(dual());
            let f = |x: Tensor<4>| op(Dual::constant(x, 1)).value;
            eprintln!("{name}");
            assert_jvp(f, x.clone(), v.clone(), out.tangent);
        }
    }

    #[test]
    fn nearest_upsampling_repeats_pixels() {
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &device());
        let up = crate::dual::upsample_nearest(x, 2).try_into_vec_as::<f64>().unwrap();
        assert_eq!(up, [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
        // The gradient of Σ g·up(x) sums g over each block; odd sizes and factor 3 too.
        let device = device().autodiff();
        let x = Tensor::<4>::zeros([2, 1, 3, 1], &device).require_grad();
        let up = crate::dual::upsample_nearest(x.clone(), 3);
        assert_eq!(up.dims(), [2, 1, 9, 3]);
        let g: Vec<f32> = (0..54).map(|i| i as f32).collect();
        let g = Tensor::<1>::from_floats(g.as_slice(), &device).reshape([2, 1, 9, 3]);
        let grads = up.mul(g).sum().backward();
        let got = x.grad(&grads).unwrap().try_into_vec_as::<f64>().unwrap();
        // Block k (rows 3k..3k+3 of 3 columns) of sample s holds 27s + 9k + 0..9.
        let want: Vec<f64> = (0..6).map(|b| (9 * b..9 * b + 9).sum::<usize>() as f64).collect();
        assert_eq!(got, want);
    }
}
