//! The NCSN-style U-Net score network for 28×28 images, with an exact forward-mode JVP.
//!
//! Reference configuration (width `w = 32`, multipliers `[1, 2, 4]`, 8 groups, 64 sinusoidal
//! features; 789,153 parameters):
//! ```text
//! e = Linear(128→128)(SiLU(Linear(64→128)(sinusoidal(ln σ, 64))))
//! h₁ = ResBlock(w)(conv3×3(x → w))                                  28²
//! h₂ = ResBlock(2w)(conv3×3/2(h₁ → 2w))                             14²
//! h₃ = ResBlock(4w)(conv3×3/2(h₂ → 4w))                              7²
//! u₂ = ResBlock(4w → 2w)(cat(conv3×3(up₂(h₃) → 2w), h₂))            14²
//! u₁ = ResBlock(2w → w)(cat(conv3×3(up₂(u₂) → w), h₁))              28²
//! s  = conv3×3(SiLU(GroupNorm(u₁)) → 1) / σ
//! ResBlock(cin → cout)(h) = skip(h) + conv3×3(SiLU(GN(conv3×3(SiLU(GN(h))) + Linear(e))))
//! ```
//! where `skip` is a 1×1 convolution when `cin ≠ cout` and the identity otherwise. Every
//! layer has a [`DualForward`] pass, so [`ScoreJvp`] is exact. The plain forward (training by
//! DSM, sampling) runs each `SiLU(GN(·))`, with the embedding bias added inside the second one
//! of a block, as one fused op ([`mod@crate::group_norm_silu`]); the dual pass composes them.
//! Every convolution, in both passes, runs [`crate::conv`]'s kernel on flex.
//!
//! **Class-conditional** (`classes = K > 0`): `e = e(σ) + E[y]` with a learnt embedding `E` of
//! `K + 1` rows, row `K` the null class `∅` (classifier-free guidance trains it by label
//! dropout). The network is then a [`ConditionalNetwork`] and a [`ConditionalScoreModel`];
//! `E[y]` does not depend on `x`, so the JVP given `y` stays exact
//! ([`NcsnUnet::forward_dual_given`]). Without a condition it refuses to score
//! ([`ScoreModel::validate`]: [`Error::MissingCondition`](scorefield_core::Error)).

use crate::silu::silu;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{DType, Device, Tensor};
use scorefield_core::condition::{ConditionalScoreModel, Labels};
use scorefield_core::param::{ConditionalNetwork, Network, NetworkJvp};
use scorefield_core::{NoiseLevel, ScoreJvp, ScoreModel};

use crate::conv::Conv2dFused;
use crate::dual::{Dual, upsample_nearest};
use crate::embedding::{class_embedding, sinusoidal_embedding};
use crate::group_norm_silu::GroupNormSilu;
use crate::layers::DualForward;

/// Builds an [`NcsnUnet`]; the fields are its hyper-parameters, saved with it.
#[derive(Config, Debug)]
pub struct NcsnUnetConfig {
    /// Image channels (1 for MNIST).
    #[config(default = 1)]
    pub channels: usize,
    /// The base width `w`.
    #[config(default = 32)]
    pub width: usize,
    /// Width multipliers of the three resolutions (28², 14², 7²).
    #[config(default = "[1, 2, 4]")]
    pub multipliers: [usize; 3],
    /// GroupNorm groups (must divide every width).
    #[config(default = 8)]
    pub groups: usize,
    /// Sinusoidal features of `ln σ`.
    #[config(default = 64)]
    pub embedding: usize,
    /// Width of the noise embedding MLP.
    #[config(default = 128)]
    pub embedding_hidden: usize,
    /// The number of classes `K ≥ 1` of a class-conditional network (`None`, the default:
    /// unconditional). A conditional network learns an embedding of `K + 1` rows, the last
    /// the null class, added to the noise embedding. (An `Option`, so that the configuration
    /// of a network saved before conditioning existed still reads.)
    pub classes: Option<usize>,
}

fn conv3(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl NcsnUnetConfig {
    /// Initialises the network on `device`.
    ///
    /// # Panics
    /// If `groups` does not divide every width or `embedding` is odd (configuration errors).
    pub fn init(&self, device: &Device) -> NcsnUnet {
        let [w1, w2, w3] = self.multipliers.map(|m| m * self.width);
        for w in [w1, w2, w3] {
            assert!(
                w % self.groups == 0,
                "NcsnUnetConfig: {} groups do not divide width {w}",
                self.groups
            );
        }
        assert!(self.embedding.is_multiple_of(2), "NcsnUnetConfig: embedding must be even");
        let e = self.embedding_hidden;
        let classes = self.classes.unwrap_or(0);
        let block = |cin, cout| ResBlock::new(cin, cout, e, self.groups, device);
        NcsnUnet {
            embed_in: LinearConfig::new(self.embedding, e).init(device),
            embed_out: LinearConfig::new(e, e).init(device),
            conv_in: conv3(self.channels, w1, 1, device),
            res1: block(w1, w1),
            down1: conv3(w1, w2, 2, device),
            res2: block(w2, w2),
            down2: conv3(w2, w3, 2, device),
            res3: block(w3, w3),
            up1: conv3(w3, w2, 1, device),
            res_up1: block(2 * w2, w2),
            up2: conv3(w2, w1, 1, device),
            res_up2: block(2 * w1, w1),
            norm_out: GroupNormConfig::new(self.groups, w1).init(device),
            conv_out: conv3(w1, self.channels, 1, device),
            class_embed: (classes > 0).then(|| EmbeddingConfig::new(classes + 1, e).init(device)),
            embedding: self.embedding,
            channels: self.channels,
            classes,
        }
    }
}

/// A residual block conditioned on the noise embedding (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    embed: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, embedding: usize, groups: usize, device: &Device) -> Self {
        ResBlock {
            norm1: GroupNormConfig::new(groups, cin).init(device),
            conv1: conv3(cin, cout, 1, device),
            embed: LinearConfig::new(embedding, cout).init(device),
            norm2: GroupNormConfig::new(groups, cout).init(device),
            conv2: conv3(cout, cout, 1, device),
            skip: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    /// The per-channel bias `[B, cout, 1, 1]` from the embedding `e` (`[B, E]`).
    fn bias(&self, e: &Tensor<2>) -> Tensor<4> {
        let b = self.embed.forward(e.clone());
        let [n, c] = b.dims();
        b.reshape([n, c, 1, 1])
    }

    /// The plain forward, with GroupNorm + SiLU fused (and the embedding bias added inside
    /// the second one); [`Self::forward_dual`] composes the same math from stock ops.
    fn forward(&self, x: Tensor<4>, e: &Tensor<2>) -> Tensor<4> {
        let h = self.conv1.forward_fused(self.norm1.forward_silu(x.clone(), None));
        let h = self
            .conv2
            .forward_fused(self.norm2.forward_silu(h, Some(self.embed.forward(e.clone()))));
        let skip = match &self.skip {
            Some(conv) => conv.forward_fused(x),
            None => x,
        };
        h.add(skip)
    }

    fn forward_dual(&self, x: Dual<4>, e: &Tensor<2>) -> Dual<4> {
        let h = self
            .conv1
            .forward_dual(self.norm1.forward_dual(x.clone()).silu())
            .add_constant(self.bias(e));
        let h = self.conv2.forward_dual(self.norm2.forward_dual(h).silu());
        let skip = match &self.skip {
            Some(conv) => conv.forward_dual(x),
            None => x,
        };
        h + skip
    }
}

/// The NCSN U-Net score network (see the [module docs](self)): `ScoreModel<4>` and exact
/// `ScoreJvp<4>` on NCHW batches `[B, channels, 28, 28]`, conditioned on `ln σ`.
#[derive(Module, Debug)]
pub struct NcsnUnet {
    embed_in: Linear,
    embed_out: Linear,
    conv_in: Conv2d,
    res1: ResBlock,
    down1: Conv2d,
    res2: ResBlock,
    down2: Conv2d,
    res3: ResBlock,
    up1: Conv2d,
    res_up1: ResBlock,
    up2: Conv2d,
    res_up2: ResBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    class_embed: Option<Embedding>,
    #[module(skip)]
    embedding: usize,
    #[module(skip)]
    channels: usize,
    #[module(skip)]
    classes: usize,
}

impl NcsnUnet {
    /// The number of classes (0 for an unconditional network).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The noise embedding `e(σ)`, plus the class embedding `E[y]` of a conditional network
    /// (the null class without labels), `[B, embedding_hidden]`.
    fn embed(&self, level: &NoiseLevel, y: Option<&Labels>) -> Tensor<2> {
        let c = level.sigma.clone().clamp_min(1e-12).log();
        let features =
            sinusoidal_embedding(c, self.embedding, 10_000.0).expect("validated at init");
        let e = self.embed_out.forward(silu(self.embed_in.forward(features)));
        match &self.class_embed {
            Some(table) => e.add(class_embedding(table, y, level.sigma.dims()[0], self.classes)),
            None => e,
        }
    }

    /// `1/σ` as `[B, 1, 1, 1]`.
    fn inv_sigma(level: &NoiseLevel) -> Tensor<4> {
        let b = level.sigma.dims()[0];
        level.sigma.clone().reshape([b, 1, 1, 1]).recip()
    }

    /// The score and its JVPs for `K` tangents per sample (`v` of batch `K·B`).
    pub fn forward_dual(&self, x: Tensor<4>, level: &NoiseLevel, v: Tensor<4>) -> Dual<4> {
        self.raw_dual(x, level, v, None).mul_constant(Self::inv_sigma(level))
    }

    /// The score given the labels `y` and its JVPs for `K` tangents per sample, exact: the
    /// class embedding does not depend on `x`.
    pub fn forward_dual_given(
        &self,
        x: Tensor<4>,
        level: &NoiseLevel,
        v: Tensor<4>,
        y: &Labels,
    ) -> Dual<4> {
        self.raw_dual(x, level, v, Some(y)).mul_constant(Self::inv_sigma(level))
    }

    /// The raw output `u(x, ln σ | y)` and its JVPs, before the `1/σ`.
    fn raw_dual(
        &self,
        x: Tensor<4>,
        level: &NoiseLevel,
        v: Tensor<4>,
        y: Option<&Labels>,
    ) -> Dual<4> {
        let e = self.embed(level, y);
        let h1 = self.res1.forward_dual(self.conv_in.forward_dual(Dual::new(x, v)), &e);
        let h2 = self.res2.forward_dual(self.down1.forward_dual(h1.clone()), &e);
        let h3 = self.res3.forward_dual(self.down2.forward_dual(h2.clone()), &e);
        let u = self.up1.forward_dual(h3.upsample_nearest(2));
        let u = self.res_up1.forward_dual(Dual::cat(vec![u, h2], 1), &e);
        let u = self.up2.forward_dual(u.upsample_nearest(2));
        let u = self.res_up2.forward_dual(Dual::cat(vec![u, h1], 1), &e);
        self.conv_out.forward_dual(self.norm_out.forward_dual(u).silu())
    }
}

/// The raw U-Net output `u(x, ln σ)` (the score without its `1/σ`), for the
/// parameterisations of [`scorefield_core::param`] (ε-, x₀-, v-prediction, EDM
/// preconditioning).
impl NcsnUnet {
    /// The raw output `u(x, ln σ | y)`.
    fn raw(&self, x: Tensor<4>, level: &NoiseLevel, y: Option<&Labels>) -> Tensor<4> {
        let e = self.embed(level, y);
        let h1 = self.res1.forward(self.conv_in.forward_fused(x), &e);
        let h2 = self.res2.forward(self.down1.forward_fused(h1.clone()), &e);
        let h3 = self.res3.forward(self.down2.forward_fused(h2.clone()), &e);
        let u = self.up1.forward_fused(upsample_nearest(h3, 2));
        let u = self.res_up1.forward(Tensor::cat(vec![u, h2], 1), &e);
        let u = self.up2.forward_fused(upsample_nearest(u, 2));
        let u = self.res_up2.forward(Tensor::cat(vec![u, h1], 1), &e);
        self.conv_out.forward_fused(self.norm_out.forward_silu(u, None))
    }

    /// A conditional network refuses to score without labels.
    fn check_unconditional(&self) -> scorefield_core::Result<()> {
        crate::embedding::check_unconditional_use("NcsnUnet", self.classes)
    }
}

impl Network<4> for NcsnUnet {
    /// `u(x, ln σ)`; a conditional network's null-class output (refused by
    /// [`validate`](Network::validate)).
    fn forward(&self, x: Tensor<4>, level: &NoiseLevel) -> Tensor<4> {
        self.raw(x, level, None)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.channels, 28, 28])
    }

    /// The dtype of the parameters (a batch in another float type is refused).
    fn float_dtype(&self) -> Option<DType> {
        Some(self.conv_in.weight.val().dtype())
    }

    fn validate(&self) -> scorefield_core::Result<()> {
        self.check_unconditional()
    }
}

impl ConditionalNetwork<4> for NcsnUnet {
    /// `u(x, ln σ | y)`.
    fn forward_given(&self, x: Tensor<4>, level: &NoiseLevel, y: &Labels) -> Tensor<4> {
        self.raw(x, level, Some(y))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.channels, 28, 28])
    }

    fn float_dtype(&self) -> Option<DType> {
        Some(self.conv_in.weight.val().dtype())
    }

    /// Labels of this network's number of classes (an unconditional network has none).
    fn validate_condition(&self, y: &Labels) -> scorefield_core::Result<()> {
        y.check_classes(self.classes)
    }
}

impl ScoreModel<4> for NcsnUnet {
    /// `s = u(x, ln σ)/σ`.
    fn score(&self, x: Tensor<4>, level: &NoiseLevel) -> Tensor<4> {
        Network::forward(self, x, level).mul(Self::inv_sigma(level))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.channels, 28, 28])
    }

    /// The dtype of the parameters (a batch in another float type is refused).
    fn float_dtype(&self) -> Option<DType> {
        Some(self.conv_in.weight.val().dtype())
    }

    fn validate(&self) -> scorefield_core::Result<()> {
        self.check_unconditional()
    }
}

impl ConditionalScoreModel<4> for NcsnUnet {
    /// `s = u(x, ln σ | y)/σ`.
    fn score_given(&self, x: Tensor<4>, level: &NoiseLevel, y: &Labels) -> Tensor<4> {
        self.raw(x, level, Some(y)).mul(Self::inv_sigma(level))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.channels, 28, 28])
    }

    fn float_dtype(&self) -> Option<DType> {
        Some(self.conv_in.weight.val().dtype())
    }

    fn validate_condition(&self, y: &Labels) -> scorefield_core::Result<()> {
        y.check_classes(self.classes)
    }
}

/// The exact JVP of the raw output, for the parameterisations' exact [`ScoreJvp`].
impl NetworkJvp<4> for NcsnUnet {
    fn forward_jvp(
        &self,
        x: Tensor<4>,
        level: &NoiseLevel,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let d = self.raw_dual(x, level, v, None);
        (d.value, d.tangent)
    }
}

impl ScoreJvp<4> for NcsnUnet {
    fn score_jvp(&self, x: Tensor<4>, level: &NoiseLevel, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let d = self.forward_dual(x, level, v);
        (d.value, d.tangent)
    }

    fn score_jvp_many(
        &self,
        x: Tensor<4>,
        level: &NoiseLevel,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        self.score_jvp(x, level, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_jvp, device, normal};
    use burn::tensor::TensorData;

    fn level(b: usize) -> NoiseLevel {
        let sigma: Vec<f64> = (0..b).map(|i| 0.1 + 0.4 * i as f64).collect();
        let s = Tensor::from_data(TensorData::new(sigma, [b]), &device());
        NoiseLevel { t: s.clone(), scale: s.ones_like(), sigma: s }
    }

    #[test]
    fn reference_configuration_has_789153_parameters_and_keeps_the_shape() {
        let net = NcsnUnetConfig::new().init(&device());
        assert_eq!(net.num_params(), 789_153);
        let x = normal([2, 1, 28, 28], 1);
        assert_eq!(net.score(x, &level(2)).dims(), [2, 1, 28, 28]);
    }

    #[test]
    fn jvp_matches_finite_differences_and_the_plain_forward() {
        let net = NcsnUnetConfig::new().with_width(8).with_groups(4).init(&device());
        let (x, v) = (normal([2, 1, 28, 28], 2), normal([2, 1, 28, 28], 3));
        let level = level(2);
        let (s, jvp) = net.score_jvp(x.clone(), &level, v.clone());
        let diff = s.sub(net.score(x.clone(), &level)).abs().max().into_scalar::<f64>();
        assert!(diff < 1e-10, "dual value differs from the plain forward by {diff}");
        assert_jvp(|x| net.score(x, &level), x, v, jvp);
    }

    /// The class embedding adds `(classes + 1)·embedding_hidden` parameters, and the JVP given
    /// labels stays exact.
    #[test]
    fn conditional_unet_has_the_exact_jvp_given_labels() {
        let net = NcsnUnetConfig::new().with_classes(Some(10)).init(&device());
        assert_eq!(net.num_params(), 789_153 + 11 * 128);
        let net = NcsnUnetConfig::new()
            .with_width(8)
            .with_groups(4)
            .with_classes(Some(3))
            .init(&device());
        let labels = Labels::new(vec![Some(2), None], 3).unwrap();
        let (x, v) = (normal([2, 1, 28, 28], 6), normal([2, 1, 28, 28], 7));
        let level = level(2);
        let dual = net.forward_dual_given(x.clone(), &level, v.clone(), &labels);
        let plain = net.score_given(x.clone(), &level, &labels);
        let diff = dual.value.sub(plain.clone()).abs().max().into_scalar::<f64>();
        assert!(diff < 1e-10, "dual value differs from the plain forward by {diff}");
        assert_jvp(|x| net.score_given(x, &level, &labels), x.clone(), v, dual.tangent);
        let other = net.score_given(x, &level, &Labels::new(vec![Some(0), Some(1)], 3).unwrap());
        assert!(plain.sub(other).abs().max().into_scalar::<f64>() > 1e-6);
    }

    #[test]
    fn fused_forward_has_the_gradients_of_the_composed_dual_value() {
        // The plain forward runs the fused GroupNorm + SiLU; the dual value composes stock ops.
        let ad = device().autodiff();
        let net = NcsnUnetConfig::new().with_width(8).with_groups(4).init(&ad);
        let x = normal([2, 1, 28, 28], 6).autodiff().require_grad();
        let (v, w) = (normal([2, 1, 28, 28], 7).autodiff(), normal([2, 1, 28, 28], 8));
        let s = Tensor::<1>::from_data(TensorData::new(vec![0.1, 0.5], [2]), &ad);
        let level = NoiseLevel { t: s.clone(), scale: s.ones_like(), sigma: s };
        let grads_of = |s: Tensor<4>| {
            let g = s.mul(w.clone().autodiff()).sum().backward();
            let get = |t: Tensor<2>| t.grad(&g).unwrap().try_into_vec_as::<f64>().unwrap();
            let get1 = |t: Tensor<1>| t.grad(&g).unwrap().try_into_vec_as::<f64>().unwrap();
            let block = &net.res1;
            [
                x.grad(&g).unwrap().try_into_vec_as::<f64>().unwrap(),
                get(block.embed.weight.val()),
                get1(block.norm2.gamma.as_ref().unwrap().val()),
                get1(block.norm2.beta.as_ref().unwrap().val()),
                get1(net.norm_out.gamma.as_ref().unwrap().val()),
            ]
        };
        let fused = grads_of(net.score(x.clone(), &level));
        let composed = grads_of(net.score_jvp(x.clone(), &level, v).0);
        for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
            let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() <= 1e-9 * scale, "gradient {i}: {p} vs {q} (scale {scale})");
            }
        }
    }

    #[test]
    fn preconditioned_unet_has_the_exact_jvp() {
        use scorefield_core::param::{Preconditioned, SigmaTilde};
        let net = NcsnUnetConfig::new().with_width(8).with_groups(4).init(&device());
        let model = Preconditioned::new(SigmaTilde { net }, 0.5).unwrap();
        let (x, v) = (normal([2, 1, 28, 28], 4), normal([2, 1, 28, 28], 5));
        let s = Tensor::<1>::from_data(TensorData::new(vec![0.3, 2.0], [2]), &device());
        let level = NoiseLevel { t: s.clone(), scale: s.clone().mul_scalar(0.5), sigma: s };
        let (score, jvp) = model.score_jvp(x.clone(), &level, v.clone());
        let diff = score.sub(model.score(x.clone(), &level)).abs().max().into_scalar::<f64>();
        assert!(diff < 1e-10, "dual value differs from the plain forward by {diff}");
        assert_jvp(|x| model.score(x, &level), x, v, jvp);
    }
}
