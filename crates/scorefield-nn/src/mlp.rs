//! A time-conditioned MLP score network with an exact forward-mode JVP.
//!
//! ```text
//! e      = SiLU(W_e · sinusoidal(c, E) + b_e)          c = ln σ, t, or nothing
//! h₀     = W₀ x + b₀ + P₀ e                           (W₀ [x, ln σ] + b₀ for LogSigmaInput)
//! hᵢ     = Wᵢ a(hᵢ₋₁) + bᵢ + Pᵢ e                      i = 1 … L−1
//! s(x,c) = (W_out a(h_{L−1}) + b_out) · (1/σ if scale_by_sigma)
//! ```
//! A class-conditional MLP (`classes = K > 0`) adds a learnt class embedding to the first
//! layer, `h₀ += E[y]`, with row `K` of `E` the null class `∅` (see
//! [`NcsnUnet`](crate::NcsnUnet)); it does not depend on `x`, so the JVP given `y` is exact.
//!
//! with `a` a smooth activation (SiLU by default: exact and sliced score matching differentiate
//! `∂s/∂x` again, which a piecewise-linear activation would make zero almost everywhere). The
//! noise embedding does not depend on `x`, so it adds nothing to the tangent; the JVP runs the
//! same layers on [`Dual`] numbers.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::softplus;

use crate::dense;
use crate::silu::silu;
use burn::tensor::{DType, Device, Tensor};
use scorefield_core::condition::{ConditionalScoreModel, Labels};
use scorefield_core::param::{ConditionalNetwork, Network, NetworkJvp};
use scorefield_core::{NoiseLevel, ScoreJvp, ScoreModel};

use crate::dual::Dual;
use crate::embedding::{class_embedding, sinusoidal_embedding};
use crate::layers::DualForward;

/// The hidden activation of [`ScoreMlp`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(x)`.
    Silu,
    /// `x` for `x > 0`, `eˣ − 1` otherwise.
    Elu,
    /// `ln(1 + eˣ)`.
    Softplus,
    /// `tanh x`.
    Tanh,
}

impl Activation {
    fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Silu => silu(x),
            Activation::Elu => {
                let positive = x.clone().greater_elem(0.0);
                x.clone().exp().sub_scalar(1.0).mask_where(positive, x)
            }
            Activation::Softplus => softplus(x, 1.0),
            Activation::Tanh => x.tanh(),
        }
    }

    fn apply_dual<const D: usize>(self, x: Dual<D>) -> Dual<D> {
        match self {
            Activation::Silu => x.silu(),
            Activation::Elu => x.elu(),
            Activation::Softplus => x.softplus(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// What the network is conditioned on.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// Nothing: a score model of one distribution (exact and sliced score matching on data).
    None,
    /// `ln σ` (NCSN); σ is clamped below at 1e-12.
    LogSigma,
    /// The time `t` (score SDE, DDPM step index).
    Time,
    /// `ln σ` appended to the input as one more feature: `h₀ = W₀ [x, ln σ] + b₀`, with no
    /// embedding layer and no projections (the small MLP common in PyTorch toy code, `[x, ln σ]
    /// → L×H → d`). σ is clamped below at 1e-12; the tangent of the `ln σ` column is zero.
    LogSigmaInput,
}

impl Conditioning {
    /// Whether the conditioning variable goes through the sinusoidal embedding and the
    /// per-layer projections (`LogSigma`, `Time`).
    fn embeds(self) -> bool {
        matches!(self, Conditioning::LogSigma | Conditioning::Time)
    }
}

/// Builds a [`ScoreMlp`]; its fields are the network's hyper-parameters, saved with it.
#[derive(Config, Debug)]
pub struct ScoreMlpConfig {
    /// The data dimension `d` (input and output width).
    pub dim: usize,
    /// The hidden width.
    #[config(default = 128)]
    pub hidden: usize,
    /// The number of hidden layers `L ≥ 1`.
    #[config(default = 3)]
    pub layers: usize,
    /// The number of sinusoidal features of the conditioning variable.
    #[config(default = 32)]
    pub embedding: usize,
    /// The hidden activation.
    #[config(default = "Activation::Silu")]
    pub activation: Activation,
    /// What the network is conditioned on.
    #[config(default = "Conditioning::LogSigma")]
    pub conditioning: Conditioning,
    /// Divide the output by σ (NCSN's parameterisation, so the network predicts `−z`).
    #[config(default = false)]
    pub scale_by_sigma: bool,
    /// The number of classes `K ≥ 1` of a class-conditional network (`None`, the default:
    /// unconditional): an embedding of `K + 1` rows (the last the null class) added to the
    /// first layer. (An `Option`, so that older saved configurations still read.)
    pub classes: Option<usize>,
}

impl ScoreMlpConfig {
    /// Initialises the network's parameters on `device`.
    ///
    /// # Panics
    /// If `dim`, `hidden` or `layers` is zero, or `embedding` is odd or zero while the network
    /// is conditioned (configuration errors, found on first use).
    pub fn init(&self, device: &Device) -> ScoreMlp {
        assert!(
            self.dim > 0 && self.hidden > 0 && self.layers > 0,
            "ScoreMlpConfig: empty network"
        );
        let conditioned = self.conditioning.embeds();
        assert!(
            !conditioned || (self.embedding > 0 && self.embedding.is_multiple_of(2)),
            "ScoreMlpConfig: embedding must be even"
        );
        let h = self.hidden;
        let extra = usize::from(self.conditioning == Conditioning::LogSigmaInput);
        let input = LinearConfig::new(self.dim + extra, h).init(device);
        let hidden = (1..self.layers).map(|_| LinearConfig::new(h, h).init(device)).collect();
        let output = LinearConfig::new(h, self.dim).init(device);
        let (embed, projections) = if conditioned {
            let embed = LinearConfig::new(self.embedding, h).init(device);
            let proj = (0..self.layers)
                .map(|_| LinearConfig::new(h, h).with_bias(false).init(device))
                .collect();
            (Some(embed), proj)
        } else {
            (None, Vec::new())
        };
        ScoreMlp {
            input,
            hidden,
            output,
            embed,
            projections,
            activation: self.activation,
            conditioning: self.conditioning,
            scale_by_sigma: self.scale_by_sigma,
            embedding: self.embedding,
            class_embed: self
                .classes
                .filter(|&k| k > 0)
                .map(|k| EmbeddingConfig::new(k + 1, h).init(device)),
            classes: self.classes.unwrap_or(0),
        }
    }
}

/// A time-conditioned MLP score network (see the [module docs](self)); `ScoreModel<2>` and
/// exact `ScoreJvp<2>` on batches `[B, d]`.
#[derive(Module, Debug)]
pub struct ScoreMlp {
    input: Linear,
    hidden: Vec<Linear>,
    output: Linear,
    embed: Option<Linear>,
    projections: Vec<Linear>,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    conditioning: Conditioning,
    #[module(skip)]
    scale_by_sigma: bool,
    #[module(skip)]
    embedding: usize,
    class_embed: Option<Embedding>,
    #[module(skip)]
    classes: usize,
}

impl ScoreMlp {
    /// The data dimension `d`.
    pub fn dim(&self) -> usize {
        self.output.weight.dims()[1]
    }

    /// `[x, ln σ]` (`[B, d + 1]`) for [`Conditioning::LogSigmaInput`], `x` otherwise.
    fn network_input(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        if self.conditioning != Conditioning::LogSigmaInput {
            return x;
        }
        let b = level.sigma.dims()[0];
        let c = level.sigma.clone().clamp_min(1e-12).log().reshape([b, 1]).cast(x.dtype());
        Tensor::cat(vec![x, c], 1)
    }

    /// The number of classes (0 for an unconditional network).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The per-layer embedding terms `Pᵢ e`, each `[B, H]` (empty when unconditioned), with
    /// the class embedding `E[y]` added to the first (the null class without labels).
    fn embedding_terms(&self, level: &NoiseLevel, y: Option<&Labels>) -> Vec<Tensor<2>> {
        let mut terms = self.noise_terms(level);
        if let Some(table) = &self.class_embed {
            let class = class_embedding(table, y, level.sigma.dims()[0], self.classes);
            match terms.first_mut() {
                Some(first) => *first = first.clone().add(class),
                None => terms.push(class),
            }
        }
        terms
    }

    /// The per-layer noise-embedding terms `Pᵢ e`.
    fn noise_terms(&self, level: &NoiseLevel) -> Vec<Tensor<2>> {
        let Some(embed) = &self.embed else { return Vec::new() };
        let c = match self.conditioning {
            Conditioning::LogSigma => level.sigma.clone().clamp_min(1e-12).log(),
            // `embed` exists only for `LogSigma` and `Time`.
            Conditioning::Time | Conditioning::None | Conditioning::LogSigmaInput => {
                level.t.clone()
            }
        };
        let features = sinusoidal_embedding(c, self.embedding, 10_000.0)
            .expect("embedding size validated at init");
        let e = silu(embed.forward(features));
        self.projections.iter().map(|p| p.forward(e.clone())).collect()
    }

    fn output_scale(&self, level: &NoiseLevel) -> Option<Tensor<2>> {
        self.scale_by_sigma.then(|| {
            let b = level.sigma.dims()[0];
            level.sigma.clone().reshape([b, 1]).recip()
        })
    }

    /// The score and the JVPs for `K` tangents per sample (`v` of batch `K·B`).
    pub fn forward_dual(&self, x: Tensor<2>, level: &NoiseLevel, v: Tensor<2>) -> Dual<2> {
        self.scaled_dual(x, level, v, None)
    }

    /// The score given the labels `y` and its JVPs for `K` tangents per sample, exact.
    pub fn forward_dual_given(
        &self,
        x: Tensor<2>,
        level: &NoiseLevel,
        v: Tensor<2>,
        y: &Labels,
    ) -> Dual<2> {
        self.scaled_dual(x, level, v, Some(y))
    }

    fn scaled_dual(
        &self,
        x: Tensor<2>,
        level: &NoiseLevel,
        v: Tensor<2>,
        y: Option<&Labels>,
    ) -> Dual<2> {
        let out = self.raw_dual(x, level, v, y);
        match self.output_scale(level) {
            Some(scale) => out.mul_constant(scale),
            None => out,
        }
    }

    /// The output layer's value and JVPs, before the optional `1/σ`.
    fn raw_dual(
        &self,
        x: Tensor<2>,
        level: &NoiseLevel,
        v: Tensor<2>,
        y: Option<&Labels>,
    ) -> Dual<2> {
        let terms = self.embedding_terms(level, y);
        let input = if self.conditioning == Conditioning::LogSigmaInput {
            let zeros = v.clone().narrow(1, 0, 1).zeros_like();
            Dual::new(self.network_input(x, level), Tensor::cat(vec![v, zeros], 1))
        } else {
            Dual::new(x, v)
        };
        let mut h = self.input.forward_dual(input);
        if let Some(p) = terms.first() {
            h = h.add_constant(p.clone());
        }
        for (i, layer) in self.hidden.iter().enumerate() {
            h = layer.forward_dual(self.activation.apply_dual(h));
            if let Some(p) = terms.get(i + 1) {
                h = h.add_constant(p.clone());
            }
        }
        self.output.forward_dual(self.activation.apply_dual(h))
    }
}

impl ScoreMlp {
    /// The output layer's value, before the optional `1/σ`.
    fn raw(&self, x: Tensor<2>, level: &NoiseLevel, y: Option<&Labels>) -> Tensor<2> {
        let terms = self.embedding_terms(level, y);
        let mut h = self.network_input(x, level);
        // Each layer before the output: act(layer(h) + Pᵢe); SiLU fused into the layer when
        // no embedding term comes between them (`dense`).
        for (i, layer) in std::iter::once(&self.input).chain(&self.hidden).enumerate() {
            h = match terms.get(i) {
                None if self.activation == Activation::Silu => dense::linear_silu(layer, h),
                term => {
                    let mut z = dense::linear(layer, h);
                    if let Some(p) = term {
                        z = z.add(p.clone());
                    }
                    self.activation.apply(z)
                }
            };
        }
        dense::linear(&self.output, h)
    }
}

impl ScoreMlp {
    /// The score `raw · (1/σ if scale_by_sigma)`.
    fn scaled(&self, x: Tensor<2>, level: &NoiseLevel, y: Option<&Labels>) -> Tensor<2> {
        let out = self.raw(x, level, y);
        match self.output_scale(level) {
            Some(scale) => out.mul(scale),
            None => out,
        }
    }

    /// A conditional network refuses to score without labels.
    fn check_unconditional(&self) -> scorefield_core::Result<()> {
        crate::embedding::check_unconditional_use("ScoreMlp", self.classes)
    }
}

impl ScoreModel<2> for ScoreMlp {
    fn score(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        self.scaled(x, level, None)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.dim()])
    }

    /// The dtype of the parameters (a batch in another float type is refused).
    fn float_dtype(&self) -> Option<DType> {
        Some(self.output.weight.val().dtype())
    }

    fn validate(&self) -> scorefield_core::Result<()> {
        self.check_unconditional()
    }
}

impl ConditionalScoreModel<2> for ScoreMlp {
    fn score_given(&self, x: Tensor<2>, level: &NoiseLevel, y: &Labels) -> Tensor<2> {
        self.scaled(x, level, Some(y))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.dim()])
    }

    fn float_dtype(&self) -> Option<DType> {
        Some(self.output.weight.val().dtype())
    }

    fn validate_condition(&self, y: &Labels) -> scorefield_core::Result<()> {
        y.check_classes(self.classes)
    }
}

impl ConditionalNetwork<2> for ScoreMlp {
    fn forward_given(&self, x: Tensor<2>, level: &NoiseLevel, y: &Labels) -> Tensor<2> {
        self.raw(x, level, Some(y))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.dim()])
    }

    fn float_dtype(&self) -> Option<DType> {
        Some(self.output.weight.val().dtype())
    }

    fn validate_condition(&self, y: &Labels) -> scorefield_core::Result<()> {
        y.check_classes(self.classes)
    }
}

/// The output layer's value without the `1/σ` of `scale_by_sigma`, for the
/// parameterisations of [`scorefield_core::param`].
impl Network<2> for ScoreMlp {
    fn forward(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        self.raw(x, level, None)
    }

    fn validate(&self) -> scorefield_core::Result<()> {
        self.check_unconditional()
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.dim()])
    }

    /// The dtype of the parameters (a batch in another float type is refused).
    fn float_dtype(&self) -> Option<DType> {
        Some(self.output.weight.val().dtype())
    }
}

/// The exact JVP of the raw output, for the parameterisations' exact [`ScoreJvp`].
impl NetworkJvp<2> for ScoreMlp {
    fn forward_jvp(
        &self,
        x: Tensor<2>,
        level: &NoiseLevel,
        v: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let d = self.raw_dual(x, level, v, None);
        (d.value, d.tangent)
    }
}

impl ScoreJvp<2> for ScoreMlp {
    fn score_jvp(&self, x: Tensor<2>, level: &NoiseLevel, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let d = self.forward_dual(x, level, v);
        (d.value, d.tangent)
    }

    fn score_jvp_many(
        &self,
        x: Tensor<2>,
        level: &NoiseLevel,
        v: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        self.score_jvp(x, level, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_jvp, device, normal};
    use burn::tensor::TensorData;

    fn level(b: usize) -> NoiseLevel {
        let sigma: Vec<f64> = (0..b).map(|i| 0.05 + 0.3 * i as f64).collect();
        let t = Tensor::from_data(TensorData::new(sigma.clone(), [b]), &device());
        NoiseLevel { t: t.clone(), scale: t.ones_like(), sigma: t }
    }

    #[test]
    fn mlp_jvp_matches_finite_differences_for_every_activation_and_conditioning() {
        for activation in
            [Activation::Silu, Activation::Elu, Activation::Softplus, Activation::Tanh]
        {
            for (conditioning, scale) in [
                (Conditioning::None, false),
                (Conditioning::LogSigma, true),
                (Conditioning::Time, false),
                (Conditioning::LogSigmaInput, true),
            ] {
                let mlp = ScoreMlpConfig::new(3)
                    .with_hidden(16)
                    .with_layers(3)
                    .with_activation(activation)
                    .with_conditioning(conditioning)
                    .with_scale_by_sigma(scale)
                    .init(&device());
                let (x, v) = (normal([5, 3], 1), normal([5, 3], 2));
                let level = level(5);
                let (s, jvp) = mlp.score_jvp(x.clone(), &level, v.clone());
                let plain = mlp.score(x.clone(), &level);
                let diff = s.sub(plain).abs().max().into_scalar::<f64>();
                assert!(diff < 1e-12, "dual value differs from the plain forward by {diff}");
                assert_jvp(|x| mlp.score(x, &level), x, v, jvp);
            }
        }
    }

    /// A class-conditional MLP's JVP given labels is exact for every conditioning (the class
    /// embedding is constant in `x`), and the labels change the score.
    #[test]
    fn conditional_mlp_jvp_given_labels_is_exact() {
        let labels = Labels::new(vec![Some(0), Some(2), None, Some(1), Some(2)], 3).unwrap();
        for conditioning in
            [Conditioning::None, Conditioning::LogSigma, Conditioning::LogSigmaInput]
        {
            let mlp = ScoreMlpConfig::new(3)
                .with_hidden(16)
                .with_conditioning(conditioning)
                .with_scale_by_sigma(true)
                .with_classes(Some(3))
                .init(&device());
            let (x, v) = (normal([5, 3], 3), normal([5, 3], 4));
            let level = level(5);
            let dual = mlp.forward_dual_given(x.clone(), &level, v.clone(), &labels);
            let plain = mlp.score_given(x.clone(), &level, &labels);
            let diff = dual.value.sub(plain.clone()).abs().max().into_scalar::<f64>();
            assert!(diff < 1e-12, "dual value differs from the plain forward by {diff}");
            assert_jvp(|x| mlp.score_given(x, &level, &labels), x.clone(), v, dual.tangent);
            let null = mlp.score_given(x, &level, &labels.to_null());
            assert!(plain.sub(null).abs().max().into_scalar::<f64>() > 1e-3);
        }
    }

    /// Every parameterisation of a network is a [`ScoreJvp`] whose JVP is exact: it equals
    /// central differences of its own score, on a VP-like level (`m ≠ 1`), and its value the
    /// plain score; `K` tangents at once equal the tiled single ones.
    #[test]
    fn every_parameterisation_has_the_exact_jvp() {
        use scorefield_core::param::{
            DataPrediction, EpsilonPrediction, Preconditioned, ScorePrediction, SigmaTilde,
            VPrediction,
        };
        let mlp = || {
            ScoreMlpConfig::new(3)
                .with_hidden(16)
                .with_layers(2)
                .with_conditioning(Conditioning::LogSigma)
                .init(&device())
        };
        let models: Vec<(&str, Box<dyn ScoreJvp<2>>)> = vec![
            ("score", Box::new(ScorePrediction { net: mlp() })),
            ("ε", Box::new(EpsilonPrediction { net: mlp() })),
            ("ε, σ̃", Box::new(EpsilonPrediction { net: SigmaTilde { net: mlp() } })),
            ("x₀", Box::new(DataPrediction { net: mlp() })),
            ("v", Box::new(VPrediction { net: mlp() })),
            ("EDM", Box::new(Preconditioned::new(mlp(), 0.5).unwrap())),
        ];
        let (b, k) = (4, 3);
        let sigma: Vec<f64> = (0..b).map(|i| 0.2 + 0.5 * i as f64).collect();
        let scale: Vec<f64> = sigma.iter().map(|s| 1.0 / (1.0 + s * s).sqrt()).collect();
        let tensor = |v: Vec<f64>| Tensor::<1>::from_data(TensorData::new(v, [b]), &device());
        let level =
            NoiseLevel { t: tensor(sigma.clone()), scale: tensor(scale), sigma: tensor(sigma) };
        let (x, v) = (normal([b, 3], 6), normal([b, 3], 7));
        for (name, model) in &models {
            let (s, jvp) = model.score_jvp(x.clone(), &level, v.clone());
            let diff = s.sub(model.score(x.clone(), &level)).abs().max().into_scalar::<f64>();
            assert!(diff < 1e-12, "{name}: dual value differs from the score by {diff}");
            assert_jvp(|x| model.score(x, &level), x.clone(), v.clone(), jvp);
            let many = normal([k * b, 3], 8);
            let (_, got) = model.score_jvp_many(x.clone(), &level, many.clone());
            let (_, want) = model.score_jvp(x.clone().repeat_dim(0, k), &level.tile(k), many);
            let diff = got.sub(want).abs().max().into_scalar::<f64>();
            assert!(diff < 1e-12, "{name}: K tangents at once differ by {diff}");
        }
    }

    #[test]
    fn score_jvp_many_equals_the_tiled_default() {
        let mlp = ScoreMlpConfig::new(4).with_hidden(8).init(&device());
        let (b, k) = (3, 4);
        let x = normal([b, 4], 3);
        let v = normal([k * b, 4], 4);
        let level = level(b);
        let (s, many) = mlp.score_jvp_many(x.clone(), &level, v.clone());
        let (s_tiled, tiled) = mlp.score_jvp(x.repeat_dim(0, k), &level.tile(k), v);
        assert!(s.sub(s_tiled.narrow(0, 0, b)).abs().max().into_scalar::<f64>() < 1e-12);
        assert!(many.sub(tiled).abs().max().into_scalar::<f64>() < 1e-12);
    }

    /// `[x, ln σ] → L×H → d` has `(d+1)·H + H` input, `(L−1)·(H² + H)` hidden and
    /// `H·d + d` output parameters: 133,122 for the PyTorch twins' `d = 2, H = 256, L = 3`.
    #[test]
    fn log_sigma_input_has_the_closed_form_parameter_count() {
        for (d, h, l) in [(2, 256, 3), (3, 16, 1), (5, 8, 2)] {
            let mlp = ScoreMlpConfig::new(d)
                .with_hidden(h)
                .with_layers(l)
                .with_conditioning(Conditioning::LogSigmaInput)
                .with_scale_by_sigma(true)
                .init(&device());
            let want = (d + 1) * h + h + (l - 1) * (h * h + h) + h * d + d;
            assert_eq!(mlp.num_params(), want, "d = {d}, H = {h}, L = {l}");
            assert_eq!(mlp.dim(), d);
        }
        let twin = ScoreMlpConfig::new(2)
            .with_hidden(256)
            .with_conditioning(Conditioning::LogSigmaInput)
            .init(&device());
        assert_eq!(twin.num_params(), 133_122);
    }

    /// The `ln σ` column is the input's last feature: the network sees σ.
    #[test]
    fn log_sigma_input_depends_on_sigma() {
        let mlp = ScoreMlpConfig::new(2)
            .with_hidden(8)
            .with_conditioning(Conditioning::LogSigmaInput)
            .init(&device());
        let x = normal([3, 2], 9);
        let a = mlp.score(x.clone(), &level(3));
        let shifted = level(3);
        let sigma = shifted.sigma.clone().mul_scalar(2.0);
        let shifted = NoiseLevel { sigma, ..shifted };
        let b = mlp.score(x, &shifted);
        assert!(a.sub(b).abs().max().into_scalar::<f64>() > 1e-6);
    }

    #[test]
    fn config_round_trips_and_sets_the_shape() {
        let config = ScoreMlpConfig::new(2).with_hidden(32).with_conditioning(Conditioning::Time);
        let json = format!("{config}").replace([' ', '\n'], "");
        assert!(json.contains("\"hidden\":32"), "{json}");
        let mlp = config.init(&device());
        assert_eq!(ScoreModel::sample_shape(&mlp), Some(vec![2]));
        assert_eq!(mlp.score(normal([7, 2], 5), &level(7)).dims(), [7, 2]);
    }
}
