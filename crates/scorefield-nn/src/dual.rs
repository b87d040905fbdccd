//! Dual numbers for forward-mode Jacobian-vector products.
//!
//! A [`Dual`] carries a value `x` (batch `B`) and `K ≥ 1` tangents `ẋ` per sample (batch
//! `K·B`, tangent `k·B + b` belonging to sample `b`). Every operation maps
//! `(x, ẋ) ↦ (f(x), J_f(x)·ẋ)` with ordinary tensor operations, so the result is exact and can
//! itself be differentiated with respect to the parameters by Burn's first-order autodiff.
//! Several tangents per value let exact score matching get the whole trace `tr J` from one
//! pass with the `D` basis vectors while the value path runs on the original batch only.

use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, silu, softplus};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// A value and its tangents: `value` has batch `B`, `tangent` batch `K·B` (tangent-major).
#[derive(Debug, Clone)]
pub struct Dual<const D: usize> {
    /// The primal value `x`, shape `[B, ...]`.
    pub value: Tensor<D>,
    /// The tangents `ẋ`, shape `[K·B, ...]`; row `k·B + b` is the `k`-th tangent of sample `b`.
    pub tangent: Tensor<D>,
}

impl<const D: usize> Dual<D> {
    /// Pairs a value with its tangents. `tangent.dims()[0]` must be a multiple of the batch.
    pub fn new(value: Tensor<D>, tangent: Tensor<D>) -> Self {
        debug_assert_eq!(tangent.dims()[0] % value.dims()[0].max(1), 0);
        Dual { value, tangent }
    }

    /// A constant (zero tangent), with `k` tangents per sample.
    pub fn constant(value: Tensor<D>, k: usize) -> Self {
        let tangent = value.zeros_like().repeat_dim(0, k);
        Dual { value, tangent }
    }

    /// The number of tangents per sample, `K`.
    pub fn tangents(&self) -> usize {
        self.tangent.dims()[0] / self.value.dims()[0].max(1)
    }

    /// Repeats a per-sample tensor (batch `B`) to line up with the tangents (batch `K·B`).
    pub fn broadcast(&self, per_sample: Tensor<D>) -> Tensor<D> {
        match self.tangents() {
            1 => per_sample,
            k => per_sample.repeat_dim(0, k),
        }
    }

    /// Applies an elementwise function with derivative `df(x)`: `(f(x), f'(x) ⊙ ẋ)`.
    pub fn elementwise(self, value: Tensor<D>, derivative: Tensor<D>) -> Self {
        let tangent = self.broadcast(derivative).mul(self.tangent);
        Dual { value, tangent }
    }

    /// SiLU `x·σ(x)`, derivative `σ(x)·(1 + x·(1 − σ(x)))`.
    pub fn silu(self) -> Self {
        let s = sigmoid(self.value.clone());
        let d =
            s.clone().mul(self.value.clone().mul(s.clone().neg().add_scalar(1.0)).add_scalar(1.0));
        let v = silu(self.value.clone());
        self.elementwise(v, d)
    }

    /// ELU with `α = 1`: `x` for `x > 0`, `eˣ − 1` otherwise; derivative 1 or `eˣ`.
    pub fn elu(self) -> Self {
        let positive = self.value.clone().greater_elem(0.0);
        let exp = self.value.clone().exp();
        let v = exp.clone().sub_scalar(1.0).mask_where(positive.clone(), self.value.clone());
        let d = exp.mask_fill(positive, 1.0);
        self.elementwise(v, d)
    }

    /// Softplus `ln(1 + eˣ)`, derivative `σ(x)`.
    pub fn softplus(self) -> Self {
        let v = softplus(self.value.clone(), 1.0);
        let d = sigmoid(self.value.clone());
        self.elementwise(v, d)
    }

    /// `tanh x`, derivative `1 − tanh² x`.
    pub fn tanh(self) -> Self {
        let v = self.value.clone().tanh();
        let d = v.clone().square().neg().add_scalar(1.0);
        self.elementwise(v, d)
    }

    /// Adds a term that does not depend on the input (a bias, a noise embedding): the tangent
    /// is unchanged. `term` broadcasts against the value (batch `B` or 1).
    pub fn add_constant(self, term: Tensor<D>) -> Self {
        Dual { value: self.value.add(term), tangent: self.tangent }
    }

    /// Multiplies by an input-independent factor broadcasting against the value (batch `B` or
    /// 1): `(c·x, c·ẋ)`.
    pub fn mul_constant(self, factor: Tensor<D>) -> Self {
        let tangent_factor =
            if factor.dims()[0] == 1 { factor.clone() } else { self.broadcast(factor.clone()) };
        Dual { value: self.value.mul(factor), tangent: self.tangent.mul(tangent_factor) }
    }

    /// Multiplies by a scalar.
    pub fn mul_scalar(self, c: f64) -> Self {
        Dual { value: self.value.mul_scalar(c), tangent: self.tangent.mul_scalar(c) }
    }

    /// Concatenates duals along a non-batch dimension `dim ≥ 1`.
    pub fn cat(parts: Vec<Dual<D>>, dim: usize) -> Self {
        assert!(dim >= 1, "Dual::cat concatenates along a non-batch dimension");
        let (values, tangents): (Vec<_>, Vec<_>) =
            parts.into_iter().map(|d| (d.value, d.tangent)).unzip();
        Dual { value: Tensor::cat(values, dim), tangent: Tensor::cat(tangents, dim) }
    }
}

/// Sum of two duals (a residual connection): values and tangents add.
impl<const D: usize> core::ops::Add for Dual<D> {
    type Output = Dual<D>;

    fn add(self, other: Dual<D>) -> Dual<D> {
        Dual { value: self.value.add(other.value), tangent: self.tangent.add(other.tangent) }
    }
}

impl Dual<4> {
    /// Nearest-neighbour upsampling of NCHW maps by an integer factor (each pixel becomes a
    /// `factor × factor` block); linear, so the tangent is upsampled the same way.
    pub fn upsample_nearest(self, factor: usize) -> Self {
        Dual {
            value: upsample_nearest(self.value, factor),
            tangent: upsample_nearest(self.tangent, factor),
        }
    }
}

/// Nearest-neighbour upsampling of NCHW maps by an integer factor: each pixel becomes a
/// `factor × factor` block (output pixel `(i, j)` is input pixel `(⌊i/f⌋, ⌊j/f⌋)`; its
/// gradient sums each block). Burn's nearest `interpolate`, which every backend implements
/// with its backward: on flex a gather by index tables, which took the U-Net's sampling step
/// at batch 64 from 0.26–0.27 s to 0.22–0.23 s against the `expand` and `reshape` it
/// replaced (a generic strided copy; `docs/performance.md`).
pub fn upsample_nearest(x: Tensor<4>, factor: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let options = InterpolateOptions::new(InterpolateMode::Nearest)
        .with_align_corners(false)
        .with_output_size([h * factor, w * factor]);
    interpolate(x, options)
}
