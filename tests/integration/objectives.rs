//! Every objective against a number it must reproduce: closed-form minimisers (exact SM and
//! DSM on Gaussian data), the Fisher divergence's gradient, exact SM through sliced SM with
//! the coordinate axes, Monte Carlo over projections, the analytic oracles' perturbed scores
//! (DSM), and the DDPM bound's closed forms (Gaussian KL, decoder, prior term) recomputed on
//! the host in f64.

use std::convert::Infallible;
use std::ops::ControlFlow;

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::core::jvp::{
    FiniteDifference, SUGGESTED_STEP_F32, ThroughFiniteDifference, score_and_trace,
};
use scorefield::nn::{
    Conditioning, LrDecay, ScoreMlp, ScoreMlpConfig, StepReport, Trainer, TrainerConfig,
};
use scorefield::objective::elbo::{discretized_gaussian_log_likelihood, gaussian_kl};
use scorefield::objective::sliced::scaled_axes;
use scorefield::objective::{
    DataLevel, DenoisingScoreMatching, EpsilonElbo, ExactScoreMatching, LevelSampling,
    ModelVariance, Projection, SlicedScoreMatching, Weighting,
};
use scorefield::param::EpsilonPrediction;
use scorefield::random::standard_normal;
use scorefield::schedule::{Ddpm, GeometricSigmas, VpSde};
use scorefield::score::{EpsilonModel, FromEpsilon};
use scorefield::{Error, LossOutput, NoiseLevel, Objective, ScoreJvp, ScoreModel};

use crate::common::{f64_tensor, flex, values};

// ---------------------------------------------------------------------------------------------
// Small score models with exact JVPs.

/// `s(x) = a ⊙ x + b` with `a, b ∈ R^d`: `J v = a ⊙ v`.
#[derive(Module, Debug)]
struct Affine {
    a: Param<Tensor<1>>,
    b: Param<Tensor<1>>,
}

impl Affine {
    fn new(a: &[f64], b: &[f64], device: &Device, dtype: DType) -> Self {
        let param = |v: &[f64]| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                (device, dtype),
            ))
        };
        Affine { a: param(a), b: param(b) }
    }

    fn row(p: &Param<Tensor<1>>) -> Tensor<2> {
        let d = p.val().dims()[0];
        p.val().reshape([1, d])
    }
}

impl ScoreModel<2> for Affine {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        x.mul(Self::row(&self.a)).add(Self::row(&self.b))
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.a.val().dims()[0]])
    }
}

impl ScoreJvp<2> for Affine {
    fn score_jvp(&self, x: Tensor<2>, level: &NoiseLevel, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        (self.score(x, level), v.mul(Self::row(&self.a)))
    }
}

/// The diagonal Gaussian family `s(x) = −P (x − μ)`, `P = diag(exp(ℓ))`: `J v = −P v`.
#[derive(Module, Debug)]
struct GaussianFamily {
    mu: Param<Tensor<1>>,
    log_precision: Param<Tensor<1>>,
}

impl GaussianFamily {
    fn new(mu: &[f64], log_precision: &[f64], device: &Device) -> Self {
        let param = |v: &[f64]| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                (device, DType::F64),
            ))
        };
        GaussianFamily { mu: param(mu), log_precision: param(log_precision) }
    }

    fn precision(&self) -> Tensor<2> {
        let d = self.mu.val().dims()[0];
        self.log_precision.val().exp().reshape([1, d])
    }
}

impl ScoreModel<2> for GaussianFamily {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        let d = self.mu.val().dims()[0];
        x.sub(self.mu.val().reshape([1, d])).mul(self.precision()).neg()
    }
}

impl ScoreJvp<2> for GaussianFamily {
    fn score_jvp(&self, x: Tensor<2>, level: &NoiseLevel, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        (self.score(x, level), v.mul(self.precision()).neg())
    }
}

/// `s ≡ 0`, i.e. an ε-prediction of 0.
struct Zero;

impl ScoreModel<2> for Zero {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        x.zeros_like()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.3, 0.5, 0.2],
        &[vec![-1.5, 0.5], vec![1.0, -0.5], vec![0.0, 1.8]],
        &[0.4, 0.6, 0.3],
    )
    .unwrap()
}

/// A batch converted to an f64 tensor on the flex device.
fn f64_samples(samples: Tensor<2>) -> Tensor<2> {
    let dims = samples.dims();
    f64_tensor(&values(samples), dims, &flex())
}

fn mean_and_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn variance(x: &[f64]) -> f64 {
    let (_, se) = mean_and_se(x);
    se * se * x.len() as f64
}

fn scalar(t: Tensor<1>) -> f64 {
    values(t)[0]
}

/// Trains `model` with the library's trainer (`Trainer::fit`: Adam, no clipping) on fresh
/// batches from `data`, with a learning rate that drops ten-fold for the last quarter of the
/// steps (`LrDecay::Step`); `after_step(k, model)` sees the weights after step `k`. The
/// trainer's seed is drawn from `rng`.
fn train<M, O>(
    model: M,
    objective: &O,
    steps: usize,
    lr: f64,
    rng: &mut StdRng,
    mut data: impl FnMut(&mut StdRng) -> Tensor<2>,
    mut after_step: impl FnMut(usize, &M),
) -> M
where
    M: Module,
    O: Objective<M, 2>,
{
    let config = TrainerConfig::new()
        .with_learning_rate(lr)
        .with_lr_decay(Some(LrDecay::Step { step_size: (steps * 3 / 4) as u64, gamma: 0.1 }))
        .with_seed(rng.next_u64());
    let mut trainer = Trainer::new(model, "{}", config).unwrap();
    let mut each = |t: &Trainer<M>, report: &StepReport| {
        after_step(report.step as usize, t.model());
        Ok(ControlFlow::Continue(()))
    };
    let batch = |rng: &mut StdRng| Ok::<_, Infallible>(data(rng));
    trainer.fit(objective, steps as u64, batch, &mut [&mut each]).unwrap();
    trainer.into_models().0
}

// ---------------------------------------------------------------------------------------------
// Exact score matching.

/// `s(x) = a x + b` on N(μ = 1.5, v = 0.25): the minimiser of `E[a + ½(a x + b)²]` is
/// `a = −1/v = −4`, `b = μ/v = 6`.
#[test]
fn exact_sm_fits_the_score_of_a_1d_gaussian() {
    let device = flex().autodiff();
    let mut rng = StdRng::seed_from_u64(11);
    let data = Gaussian::isotropic(&[1.5], 0.5).unwrap().sample(100_000, &device, &mut rng);
    let (mean, var) = {
        let v = values(data.clone());
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64)
    };
    let model = Affine::new(&[-1.0], &[0.0], &device, DType::F32);
    let model =
        train(model, &ExactScoreMatching::new(), 800, 0.05, &mut rng, |_| data.clone(), |_, _| {});
    let (a, b) = (values(model.a.val())[0], values(model.b.val())[0]);
    eprintln!(
        "exact SM 1-D: a = {a:.4} (−1/v = −4, sample −1/v̂ = {:.4}), b = {b:.4} (μ/v = 6, sample {:.4})",
        -1.0 / var,
        mean / var
    );
    assert!((a + 4.0).abs() / 4.0 < 0.02, "a = {a}");
    assert!((b - 6.0).abs() / 6.0 < 0.02, "b = {b}");
}

/// Exact SM and the Fisher divergence `½E‖s_θ − ∇ log p‖²` differ by the θ-free constant
/// `½E‖∇ log p‖²`, so their parameter gradients agree. Both losses depend on the data only
/// through its first two moments (the model and the true score are affine), and the batch is
/// standardised to the exact population mean and variance, so the integration-by-parts
/// identity holds on the batch to float precision.
#[test]
fn exact_sm_gradient_is_the_fisher_divergence_gradient() {
    let device = flex().autodiff();
    let (m, s) = ([0.5, -1.0, 2.0], [0.7, 1.3, 0.4]);
    let (n, d) = (64, 3);
    let mut rng = StdRng::seed_from_u64(3);
    let mut x: Vec<f64> = (0..n * d).map(|_| StandardNormal.sample(&mut rng)).collect();
    for j in 0..d {
        let col: Vec<f64> = (0..n).map(|i| x[i * d + j]).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        for i in 0..n {
            x[i * d + j] = m[j] + s[j] * (x[i * d + j] - mean) / sd;
        }
    }
    let batch = f64_tensor(&x, [n, d], &device);
    let clean = NoiseLevel::clean(n, &device);
    let true_score = Gaussian::diagonal(&m, &s).unwrap().score(batch.clone(), &clean);
    let grads_of = |loss: Tensor<1>, model: &GaussianFamily| {
        let g = loss.backward();
        (
            values(model.mu.val().grad(&g).unwrap()),
            values(model.log_precision.val().grad(&g).unwrap()),
        )
    };
    let model = GaussianFamily::new(&[0.1, 0.2, 1.0], &[0.3, -0.5, 1.5], &device);
    let exact = ExactScoreMatching::new().loss(&model, batch.clone(), &mut rng).unwrap().loss;
    let fisher = model
        .score(batch, &clean)
        .sub(true_score.clone())
        .square()
        .sum_dim(1)
        .mean()
        .mul_scalar(0.5);
    let constant = 0.5 * scalar(true_score.square().sum_dim(1).mean());
    let (je, fe) = (scalar(exact.clone()), scalar(fisher.clone()));
    let (ge, gf) = (grads_of(exact, &model), grads_of(fisher, &model));
    eprintln!(
        "exact SM {je:.12}, Fisher {fe:.12}, difference {:.3e} vs −½E‖∇log p‖² = {:.12}",
        je - fe,
        -constant
    );
    eprintln!("∇μ: exact {:?}, Fisher {:?}", ge.0, gf.0);
    eprintln!("∇ℓ: exact {:?}, Fisher {:?}", ge.1, gf.1);
    assert!((je - fe + constant).abs() < 1e-10 * constant);
    for (a, b) in ge.0.iter().chain(&ge.1).zip(gf.0.iter().chain(&gf.1)) {
        assert!((a - b).abs() < 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sliced score matching.

#[test]
fn sliced_sm_with_scaled_axes_is_exact_sm() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(4);
    let x = f64_samples(mixture().sample(50, &device, &mut rng));
    let exact =
        values(ExactScoreMatching::new().loss(&mixture(), x.clone(), &mut rng).unwrap().per_sample);
    for vr in [false, true] {
        let sliced = SlicedScoreMatching {
            variance_reduced: vr,
            ..SlicedScoreMatching::new(1, Projection::Gaussian)
        };
        let out =
            sliced.loss_with_projections(&mixture(), x.clone(), scaled_axes(&x), &mut rng).unwrap();
        let got = values(out.per_sample);
        let worst = got
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        eprintln!(
            "sliced (VR = {vr}) with √d·eᵢ vs exact SM, mixture: max relative difference {worst:.2e}"
        );
        assert!(worst < 1e-12);
    }
    // A trainable model, d = 3.
    let model = GaussianFamily::new(&[0.1, 0.2, 1.0], &[0.3, -0.5, 1.5], &device);
    let y = f64_samples(Gaussian::isotropic(&[0.0; 3], 1.0).unwrap().sample(20, &device, &mut rng));
    let exact =
        values(ExactScoreMatching::new().loss(&model, y.clone(), &mut rng).unwrap().per_sample);
    let sliced = SlicedScoreMatching::new(1, Projection::Rademacher)
        .loss_with_projections(&model, y.clone(), scaled_axes(&y), &mut rng)
        .unwrap();
    for (a, b) in values(sliced.per_sample).iter().zip(&exact) {
        assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// `repeats` independent batch-mean sliced losses on the fixed batch `x`.
fn sliced_estimates<M: ScoreJvp<2>>(
    model: &M,
    x: &Tensor<2>,
    sliced: SlicedScoreMatching,
    repeats: usize,
    rng: &mut StdRng,
) -> Vec<f64> {
    (0..repeats).map(|_| scalar(sliced.loss(model, x.clone(), rng).unwrap().loss)).collect()
}

/// Over many random projections the sliced loss averages to exact SM (within 4 standard
/// errors of 400 independent estimates), Gaussian or Rademacher, plain or variance-reduced.
#[test]
fn sliced_sm_averages_to_exact_sm() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(5);
    let x = f64_samples(mixture().sample(32, &device, &mut rng));
    let exact =
        scalar(ExactScoreMatching::new().loss(&mixture(), x.clone(), &mut rng).unwrap().loss);
    for distribution in [Projection::Gaussian, Projection::Rademacher] {
        for vr in [false, true] {
            let sliced = SlicedScoreMatching {
                variance_reduced: vr,
                ..SlicedScoreMatching::new(4, distribution)
            };
            let estimates = sliced_estimates(&mixture(), &x, sliced, 400, &mut rng);
            let (mean, se) = mean_and_se(&estimates);
            eprintln!("{distribution:?} VR = {vr}: mean {mean:.5} ± {se:.5} (exact {exact:.5})");
            assert!(
                (mean - exact).abs() < 4.0 * se,
                "{distribution:?} VR = {vr}: {mean} vs {exact} (se {se})"
            );
        }
    }
}

/// Whether SSM-VR has the lower variance depends on the model and the dimension. For Gaussian
/// `v` and one projection, `Var(vᵀJv + ½(vᵀs)²) − Var(vᵀJv + ½‖s‖²) = ½‖s‖⁴ + 2 sᵀJs`
/// (`Cov(vᵀAv, vᵀBv) = 2 tr(AB)`, `J` symmetric), so on the data of a Gaussian `N(μ, s² I)`,
/// where `‖s‖² ≈ d/s²` and `J = −I/s²`, VR wins for `d > 4` and loses in `d = 2`. The measured
/// variance difference of the batch-mean estimate matches this prediction (divided by `B²M`),
/// and in `d = 16` VR has the lower variance for Gaussian and Rademacher projections.
#[test]
fn variance_reduction_helps_in_high_dimension() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(22);
    let (batch, projections, repeats) = (32, 4, 600);
    let gauss16 = Gaussian::isotropic(&[0.5; 16], 0.8).unwrap();
    let x16 = f64_samples(gauss16.sample(batch, &device, &mut rng));
    let x2 = f64_samples(mixture().sample(batch, &device, &mut rng));
    let clean = NoiseLevel::clean(batch, &device);
    for (name, d) in [("mixture d = 2", 2usize), ("Gaussian d = 16", 16)] {
        let (x, s, js) = if d == 2 {
            let s = mixture().score(x2.clone(), &clean);
            let (_, js) = mixture().score_jvp(x2.clone(), &clean, s.clone());
            (x2.clone(), s, js)
        } else {
            let s = gauss16.score(x16.clone(), &clean);
            let (_, js) = gauss16.score_jvp(x16.clone(), &clean, s.clone());
            (x16.clone(), s, js)
        };
        let norm2 = values(s.clone().square().sum_dim(1));
        let sjs = values(s.mul(js).sum_dim(1));
        let predicted = norm2.iter().zip(&sjs).map(|(n, q)| 0.5 * n * n + 2.0 * q).sum::<f64>()
            / (batch * batch * projections) as f64;
        for distribution in [Projection::Gaussian, Projection::Rademacher] {
            let mut var = |vr: bool| {
                let sliced = SlicedScoreMatching {
                    variance_reduced: vr,
                    ..SlicedScoreMatching::new(projections, distribution)
                };
                if d == 2 {
                    variance(&sliced_estimates(&mixture(), &x, sliced, repeats, &mut rng))
                } else {
                    variance(&sliced_estimates(&gauss16, &x, sliced, repeats, &mut rng))
                }
            };
            let plain = var(false);
            let reduced = var(true);
            eprintln!(
                "{name}, {distribution:?}: variance plain {plain:.4e}, VR {reduced:.4e}, difference {:.4e} (Gaussian-v prediction {predicted:.4e})",
                plain - reduced
            );
            if distribution == Projection::Gaussian {
                // 4 standard errors of the difference of two sample variances (normal approx.).
                let tolerance = 4.0 * (2.0 / (repeats - 1) as f64).sqrt() * plain.hypot(reduced);
                assert!((plain - reduced - predicted).abs() < tolerance, "{name}");
            }
            if d == 16 {
                assert!(reduced < plain, "{name} {distribution:?}: VR {reduced} ≥ plain {plain}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finite differences.

/// The central difference converges to the exact JVP of the mixture oracle at O(h²): halving
/// `h` divides the error by ≈ 4.
#[test]
fn finite_difference_jvp_converges_at_second_order() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(6);
    let n = 64;
    let x = f64_samples(mixture().sample(n, &device, &mut rng));
    let v = standard_normal([n, 2], &device, &mut rng).cast(DType::F64);
    let level = NoiseLevel::clean(n, &device);
    let (score, exact) = mixture().score_jvp(x.clone(), &level, v.clone());
    let (exact, score) = (values(exact), values(score));
    let mut errors = Vec::new();
    for h in [0.04, 0.02, 0.01, 0.005] {
        let fd = FiniteDifference::new(mixture(), h).unwrap();
        let (s, jvp) = fd.score_jvp(x.clone(), &level, v.clone());
        assert_eq!(values(s), score);
        errors.push(values(jvp).iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max));
    }
    let ratios: Vec<f64> = errors.windows(2).map(|w| w[0] / w[1]).collect();
    let shown: Vec<String> = errors.iter().map(|e| format!("{e:.3e}")).collect();
    eprintln!("FD JVP max error for h = 0.04, 0.02, 0.01, 0.005: {shown:?}, ratios {ratios:.3?}");
    assert!(ratios.iter().all(|r| (3.6..4.4).contains(r)), "{ratios:?}");
    // K tangents per sample in one call: the same as tiling the batch.
    let fd = FiniteDifference::new(mixture(), 0.01).unwrap();
    let many = standard_normal([3 * n, 2], &device, &mut rng).cast(DType::F64);
    let (s, jvp) = fd.score_jvp_many(x.clone(), &level, many.clone());
    let (_, tiled) = fd.score_jvp(x.clone().repeat_dim(0, 3), &level.tile(3), many);
    assert_eq!((values(s), values(jvp)), (score, values(tiled)));
    // The batched trace of the wrapper is the exact trace to O(h²).
    let fd = FiniteDifference::new(mixture(), 1e-4).unwrap();
    let (_, t_fd) = score_and_trace(&fd, x.clone(), &level).unwrap();
    let (_, t_exact) = score_and_trace(&mixture(), x, &level).unwrap();
    for (a, b) in values(t_fd).iter().zip(values(t_exact)) {
        assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// Denoising score matching.

/// Single-σ DSM with an affine model on N(μ, v I) recovers the noisy score
/// `−(x − μ)/(v + σ²)`: `a = −1/(v + σ²) = −2`, `b = μ/(v + σ²)`. The parameters are averaged
/// over the last 100 steps to take out the optimiser's stochastic jitter.
#[test]
fn dsm_recovers_the_noisy_score_of_gaussian_data() {
    let device = flex().autodiff();
    let mut rng = StdRng::seed_from_u64(7);
    let (mu, sigma) = ([1.0, -0.5], 0.5);
    let data = Gaussian::isotropic(&mu, 0.5).unwrap();
    let objective = DenoisingScoreMatching::single(sigma).unwrap();
    let model = Affine::new(&[-1.0, -1.0], &[0.0, 0.0], &device, DType::F32);
    let steps = 500;
    let mut avg = [0.0f64; 4];
    train(
        model,
        &objective,
        steps,
        0.05,
        &mut rng,
        |rng| data.sample(4096, &device, rng),
        |step, m| {
            if step >= steps - 100 {
                let p = [values(m.a.val()), values(m.b.val())].concat();
                avg.iter_mut().zip(p).for_each(|(acc, v)| *acc += v / 100.0);
            }
        },
    );
    let total = 0.25 + sigma * sigma;
    let want = [-1.0 / total, -1.0 / total, mu[0] / total, mu[1] / total];
    eprintln!("DSM σ = {sigma}: (a, b) = {avg:.4?}, want {want:.4?}");
    for (got, want) in avg.iter().zip(want) {
        assert!((got - want).abs() < 0.02 * want.abs(), "{got} vs {want}");
    }
}

/// DSM with its noise drawn on the device: at the exact perturbed score of Gaussian data
/// `N(μ, s²I)` (d = 2) and one level σ (unit weighting), the per-sample term is
/// `½‖−(x₀ − μ)/v + z·s²/(σv)‖²`, `v = s² + σ²`, whose mean is `½·d·(s²/v² + q·s⁴/(σ²v²))` for
/// noise of variance `q`: `q = 1` gives the closed form `½·d·s²/(σ²v)`, a noise of another
/// variance or mean another value. Also: the loss is a function of the rng's seed, and
/// differs from the host-noise loss of the same seed (another source of numbers).
#[test]
fn dsm_with_device_noise_has_the_closed_form_loss_and_follows_the_seed() {
    let device = flex();
    let (mu, s, sigma) = ([1.0, -0.5], 0.5, 0.3);
    let data = Gaussian::isotropic(&mu, s).unwrap();
    let dsm = DenoisingScoreMatching::single(sigma).unwrap().with_device_noise(true);
    assert!(dsm.device_noise() && !DenoisingScoreMatching::single(sigma).unwrap().device_noise());
    let n = 200_000;
    let v = s * s + sigma * sigma;
    let want = 0.5 * 2.0 * s * s / (sigma * sigma * v);
    for dtype in [DType::F32, DType::F64] {
        let x0 = data.sample(n, &device, &mut StdRng::seed_from_u64(1)).cast(dtype);
        let out = dsm.loss(&data, x0.clone(), &mut StdRng::seed_from_u64(2)).unwrap();
        let per_sample = values(out.per_sample);
        let (mean, se) = mean_and_se(&per_sample);
        eprintln!("device-noise DSM ({dtype:?}): {mean:.5} ± {se:.5}, closed form {want:.5}");
        assert!((mean - want).abs() < 5.0 * se, "{mean} ± {se} against {want}");
        let again = dsm.loss(&data, x0.clone(), &mut StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(scalar(again.loss), scalar(out.loss.clone()), "same seed, same loss");
        let other = dsm.loss(&data, x0.clone(), &mut StdRng::seed_from_u64(3)).unwrap();
        assert_ne!(scalar(other.loss), scalar(out.loss.clone()));
        let host = DenoisingScoreMatching::single(sigma).unwrap();
        let host = host.loss(&data, x0, &mut StdRng::seed_from_u64(2)).unwrap();
        assert_ne!(scalar(host.loss), scalar(out.loss));
    }
}

/// At the mixture oracle (its exact perturbed score at every level), the multi-scale and the
/// continuous-time DSM losses are lower than at any perturbed oracle. Common random numbers:
/// every candidate sees the same data, levels and noise.
#[test]
fn dsm_is_minimised_by_the_exact_perturbed_score() {
    let device = flex();
    let data = f64_samples(mixture().sample(20_000, &device, &mut StdRng::seed_from_u64(8)));
    let m = mixture();
    let candidates = [
        (
            "means shifted by 0.2",
            GaussianMixture::new(
                m.weights(),
                &m.means().iter().map(|v| v.iter().map(|x| x + 0.2).collect()).collect::<Vec<_>>(),
                m.stds(),
            )
            .unwrap(),
        ),
        (
            "stds × 1.2",
            GaussianMixture::new(
                m.weights(),
                m.means(),
                &m.stds().iter().map(|s| s * 1.2).collect::<Vec<_>>(),
            )
            .unwrap(),
        ),
        (
            "stds × 0.8",
            GaussianMixture::new(
                m.weights(),
                m.means(),
                &m.stds().iter().map(|s| s * 0.8).collect::<Vec<_>>(),
            )
            .unwrap(),
        ),
        ("equal weights", GaussianMixture::new(&[1.0, 1.0, 1.0], m.means(), m.stds()).unwrap()),
    ];
    let objectives = [
        (
            "multi-scale geometric σ 2 → 0.05, 8 levels",
            DenoisingScoreMatching::multi_scale(&GeometricSigmas::new(0.05, 2.0, 8).unwrap(), 8)
                .unwrap(),
        ),
        (
            "continuous VP, λ = σ²",
            DenoisingScoreMatching::continuous(VpSde::new(0.1, 20.0).unwrap()).unwrap(),
        ),
    ];
    for (name, objective) in &objectives {
        let loss = |model: &GaussianMixture| {
            let out = objective.loss(model, data.clone(), &mut StdRng::seed_from_u64(9)).unwrap();
            assert_eq!(out.level.as_ref().unwrap().batch_size(), 20_000);
            scalar(out.loss)
        };
        let best = loss(&m);
        for (label, candidate) in &candidates {
            let other = loss(candidate);
            eprintln!("{name}: oracle {best:.5}, {label} {other:.5} (+{:.5})", other - best);
            assert!(other > best, "{name}: {label} has loss {other} ≤ oracle {best}");
        }
    }
}

/// Importance sampling `t ∝ g²/σ²` for the likelihood weighting is unbiased (same mean loss as
/// uniform `t`, within 4 standard errors) and has a lower per-sample variance.
#[test]
fn likelihood_weighted_importance_sampling_is_unbiased_with_lower_variance() {
    let device = flex();
    let data = f64_samples(mixture().sample(20_000, &device, &mut StdRng::seed_from_u64(10)));
    let vp = VpSde::new(0.1, 20.0).unwrap().with_eps(1e-2).unwrap();
    let base =
        DenoisingScoreMatching::continuous(vp).unwrap().with_weighting(Weighting::Likelihood);
    let mut stats = Vec::new();
    for sampling in [LevelSampling::Uniform, LevelSampling::Importance] {
        let objective = base.clone().with_sampling(sampling);
        let per_sample = values(
            objective
                .loss(&mixture(), data.clone(), &mut StdRng::seed_from_u64(12))
                .unwrap()
                .per_sample,
        );
        let (mean, se) = mean_and_se(&per_sample);
        eprintln!(
            "likelihood weighting, {sampling:?}: mean {mean:.4} ± {se:.4}, per-sample sd {:.4}",
            variance(&per_sample).sqrt()
        );
        stats.push((mean, se, variance(&per_sample)));
    }
    let ((m0, se0, v0), (m1, se1, v1)) = (stats[0], stats[1]);
    assert!((m0 - m1).abs() < 4.0 * (se0 * se0 + se1 * se1).sqrt(), "{m0} vs {m1}");
    assert!(v1 < v0, "importance variance {v1} ≥ uniform {v0}");
}

// ---------------------------------------------------------------------------------------------
// The DDPM bound.

#[test]
fn gaussian_kl_matches_monte_carlo() {
    let device = flex();
    let (mq, vq, mp, vp) = (0.3, 0.5, -0.2, 1.3);
    let full = |v: f64| f64_tensor(&[v], [1, 1], &device);
    let kl = scalar(gaussian_kl(full(mq), full(vq), full(mp), full(vp)).reshape([1]));
    let mut rng = StdRng::seed_from_u64(13);
    let log_n = |x: f64, m: f64, v: f64| {
        -0.5 * ((x - m).powi(2) / v + (2.0 * std::f64::consts::PI * v).ln())
    };
    let draws: Vec<f64> = (0..200_000)
        .map(|_| {
            let x = mq
                + vq.sqrt() * {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z
                };
            log_n(x, mq, vq) - log_n(x, mp, vp)
        })
        .collect();
    let (mc, se) = mean_and_se(&draws);
    eprintln!("KL closed form {kl:.6}, Monte Carlo {mc:.6} ± {se:.6}");
    assert!((kl - mc).abs() < 4.0 * se);
}

#[test]
fn discretised_decoder_probabilities_sum_to_one() {
    let device = flex();
    let bins: Vec<f64> = (0..256).map(|k| -1.0 + 2.0 * k as f64 / 255.0).collect();
    for (mean, std) in [(0.0, 0.1), (0.95, 0.02), (-1.2, 0.5), (0.3, 0.01), (0.0, 3.0), (1.0, 1e-3)]
    {
        let x = f64_tensor(&bins, [1, 256], &device);
        let log_p = discretized_gaussian_log_likelihood(
            x,
            f64_tensor(&[mean; 256], [1, 256], &device),
            f64_tensor(&[std; 256], [1, 256], &device),
        );
        let total: f64 = values(log_p).iter().map(|l| l.exp()).sum();
        eprintln!("decoder N({mean}, {std}²): Σ P = {total:.15}");
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }
}

/// `L_T` for data uniform on [−1, 1] under the linear schedule: per dimension
/// `½[ᾱ_T E x² − ᾱ_T − ln(1 − ᾱ_T)] / ln 2 ≈ ½ ᾱ_T/3 / ln 2 ≈ 9.7e-6` bits.
#[test]
fn prior_term_of_uniform_data_is_about_1e_minus_5_bits_per_dim() {
    let device = flex();
    let ddpm = Ddpm::linear(1000).unwrap();
    let elbo = EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta);
    let mut rng = StdRng::seed_from_u64(14);
    let x: Vec<f64> = (0..4 * 10_000).map(|_| rng.random_range(-1.0..=1.0)).collect();
    let got = values(elbo.prior_term(f64_tensor(&x, [10_000, 4], &device)).unwrap());
    let (mean, se) = mean_and_se(&got);
    let ab = ddpm.alpha_bar(1000);
    let want = 0.5 * (ab / 3.0 - ab - (1.0 - ab).ln()) / std::f64::consts::LN_2;
    eprintln!("L_T: {mean:.4e} ± {se:.1e} bits/dim (closed form {want:.4e}; REFERENCES ≈ 1e-5)");
    assert!((mean - want).abs() < 4.0 * se + 1e-12);
    assert!((9.6e-6..9.8e-6).contains(&mean));
}

/// An ε-network `ε̂(xₜ) = c·xₜ`, used as a score model through `FromEpsilon`.
struct ScaledEpsilon(f64);

impl EpsilonModel<2> for ScaledEpsilon {
    fn epsilon(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        x.mul_scalar(self.0)
    }
}

/// With the ε-network `ε̂ = c·xₜ` (so `μ_θ = (1 − βₜ c/√(1−ᾱₜ)) xₜ/√αₜ`) every term is
/// recomputed on the host in f64 from the same noise: the KL `L_{t−1}` for `t ≥ 2`, the decoder
/// at `t = 1`, a batch mixing both, and `L_simple` per sample.
#[test]
fn bound_terms_and_l_simple_match_a_host_computation() {
    let device = flex();
    let ddpm = Ddpm::linear(1000).unwrap();
    let (n, d, c) = (8, 3, 0.3);
    let model = FromEpsilon(ScaledEpsilon(c));
    let mut rng = StdRng::seed_from_u64(15);
    let x0: Vec<f64> =
        (0..n * d).map(|_| (rng.random_range(0..256) as f64) * 2.0 / 255.0 - 1.0).collect();
    let x_t = |t: usize, x: f64, e: f64| {
        ddpm.alpha_bar(t).sqrt() * x + (1.0 - ddpm.alpha_bar(t)).sqrt() * e
    };
    let phi = |z: f64| 0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2));
    // L_{t−1} of one sample (rows of x₀ and ε) in bits/dim, in f64.
    let host_term = |variance: ModelVariance, t: usize, x0: &[f64], eps: &[f64]| {
        let (alpha, beta) = (ddpm.alphas()[t - 1], ddpm.betas()[t - 1]);
        let vp = match (variance, t) {
            (ModelVariance::Beta, _) => beta,
            (ModelVariance::PosteriorBeta, 1) => ddpm.posterior_variance(2),
            (ModelVariance::PosteriorBeta, _) => ddpm.posterior_variance(t),
        };
        let (c0, c1) = ddpm.posterior_mean_coefficients(t);
        let mut nats = 0.0;
        for (&x, &e) in x0.iter().zip(eps) {
            let xt = x_t(t, x, e);
            let mean_p = (xt - beta / (1.0 - ddpm.alpha_bar(t)).sqrt() * c * xt) / alpha.sqrt();
            if t == 1 {
                let s = vp.sqrt();
                let hi = if x > 0.999 { 1.0 } else { phi((x + 1.0 / 255.0 - mean_p) / s) };
                let lo = if x < -0.999 { 0.0 } else { phi((x - 1.0 / 255.0 - mean_p) / s) };
                nats -= (hi - lo).max(1e-12).ln();
            } else {
                let vq = ddpm.posterior_variance(t);
                let mean_q = c0 * x + c1 * xt;
                nats += 0.5 * ((vp / vq).ln() + vq / vp - 1.0 + (mean_q - mean_p).powi(2) / vp);
            }
        }
        nats / (x0.len() as f64 * std::f64::consts::LN_2)
    };
    let mixed = [1usize, 2, 37, 500, 1000, 1, 2, 999];
    let cases = [1usize, 2, 37, 500, 1000].map(|t| vec![t; n]).into_iter().chain([mixed.to_vec()]);
    for (case, steps) in cases.enumerate() {
        for variance in [ModelVariance::Beta, ModelVariance::PosteriorBeta] {
            let elbo = EpsilonElbo::bound(ddpm.clone(), variance);
            let seeded = || StdRng::seed_from_u64(case as u64);
            let x = f64_tensor(&x0, [n, d], &device);
            let got = values(elbo.step_term(&model, x, &steps, &mut seeded()).unwrap());
            // The noise of an f64 run: f64 standard normals from the same stream.
            let mut noise = seeded();
            let eps: Vec<f64> = (0..n * d).map(|_| StandardNormal.sample(&mut noise)).collect();
            for i in 0..n {
                let row = i * d..(i + 1) * d;
                let want = host_term(variance, steps[i], &x0[row.clone()], &eps[row]);
                assert!(
                    (got[i] - want).abs() < 1e-12 * (1.0 + want.abs()),
                    "{variance:?} t = {}: {} vs {want}",
                    steps[i],
                    got[i]
                );
            }
            eprintln!(
                "{variance:?} steps {:?}…: L_(t−1) of ε̂ = {c}·xₜ, sample 0: {:.6e} bits/dim (host f64 agrees)",
                &steps[..2],
                got[0]
            );
        }
    }
    // L_simple: the objective draws the steps, then the noise, from its rng.
    let simple = EpsilonElbo::simple(ddpm.clone());
    let got = values(
        simple
            .loss(&model, f64_tensor(&x0, [n, d], &device), &mut StdRng::seed_from_u64(99))
            .unwrap()
            .per_sample,
    );
    let mut rng = StdRng::seed_from_u64(99);
    let steps: Vec<usize> = (0..n).map(|_| rng.random_range(1..=1000)).collect();
    let eps: Vec<f64> = (0..n * d).map(|_| StandardNormal.sample(&mut rng)).collect();
    for i in 0..n {
        let want = (0..d)
            .map(|j| (eps[i * d + j] - c * x_t(steps[i], x0[i * d + j], eps[i * d + j])).powi(2))
            .sum::<f64>()
            / d as f64;
        assert!((got[i] - want).abs() < 1e-12 * (1.0 + want), "L_simple {} vs {want}", got[i]);
    }
    eprintln!("L_simple per sample agrees with the host: {:.5?}", &got[..3]);
}

/// The training estimate `L_T + T·L_{t−1}`, `t ~ U{1..T}`, averages to the full bound from
/// `terms`, and the terms sum to it.
#[test]
fn bound_estimate_averages_to_the_full_bound() {
    let device = flex();
    let ddpm = Ddpm::linear(50).unwrap();
    let elbo = EpsilonElbo::bound(ddpm, ModelVariance::Beta);
    let mut rng = StdRng::seed_from_u64(16);
    let data = Gaussian::isotropic(&[0.2, -0.3], 0.3).unwrap();
    let x = f64_samples(data.sample(400, &device, &mut rng)).clamp(-1.0, 1.0);
    let oracle = data.clone();
    let terms = elbo.terms(&oracle, x.clone(), &mut rng).unwrap();
    assert_eq!(terms.steps.dims(), [400, 50]);
    let total = values(terms.total());
    let (bound, bound_se) = mean_and_se(&total);
    let mut estimates = Vec::new();
    for _ in 0..20 {
        estimates.extend(values(elbo.loss(&oracle, x.clone(), &mut rng).unwrap().per_sample));
    }
    let (est, est_se) = mean_and_se(&estimates);
    let columns = values(terms.steps.clone().mean_dim(0).reshape([50]));
    eprintln!(
        "T = 50 bound of the Gaussian oracle: {bound:.4} ± {bound_se:.4} bits/dim; one-step estimate {est:.4} ± {est_se:.4}; L_0 {:.4}, L_1 {:.4}, L_49 {:.4}, L_T {:.2e}",
        columns[0],
        columns[1],
        columns[49],
        values(terms.prior.clone().mean())[0]
    );
    assert!((bound - est).abs() < 4.0 * (bound_se * bound_se + est_se * est_se).sqrt());
}

/// `L_simple` is lowest at the exact ε of the data (the oracle's score times −σ).
#[test]
fn l_simple_is_minimised_by_the_oracle() {
    let device = flex();
    let data = f64_samples(mixture().sample(4_000, &device, &mut StdRng::seed_from_u64(17)));
    let elbo = EpsilonElbo::simple(Ddpm::linear(1000).unwrap());
    let loss = |m: &GaussianMixture| {
        scalar(elbo.loss(m, data.clone(), &mut StdRng::seed_from_u64(18)).unwrap().loss)
    };
    let m = mixture();
    let best = loss(&m);
    let shifted = GaussianMixture::new(
        m.weights(),
        m.means(),
        &m.stds().iter().map(|s| s * 1.3).collect::<Vec<_>>(),
    )
    .unwrap();
    let other = loss(&shifted);
    eprintln!("L_simple: oracle {best:.5}, stds × 1.3 {other:.5}");
    assert!(best < other && best < 1.0);
}

// ---------------------------------------------------------------------------------------------
// Training the MLP with every objective.

/// `½ E‖s_θ(x, level) − s*(x, level)‖²` over a held-out batch.
fn fisher<A: ScoreModel<2>, B: ScoreModel<2>>(
    model: &A,
    truth: &B,
    x: &Tensor<2>,
    level: &NoiseLevel,
) -> f64 {
    let diff = model.score(x.clone(), level).sub(truth.score(x.clone(), level));
    0.5 * scalar(diff.square().sum_dim(1).mean())
}

/// The score `−Σ⁻¹(x − m)` of the best-fitting single Gaussian (the data's mean and covariance,
/// plus `σ² I` for data perturbed at `σ`): the trivial baseline the MLPs must beat.
struct MomentMatchedGaussian {
    mean: [f64; 2],
    precision: [[f64; 2]; 2],
}

impl MomentMatchedGaussian {
    fn fit(x: &[f64], extra_variance: f64) -> Self {
        let n = (x.len() / 2) as f64;
        let mean = [0, 1].map(|j| x.iter().skip(j).step_by(2).sum::<f64>() / n);
        let mut c = [[0.0; 2]; 2];
        for r in x.chunks(2) {
            for i in 0..2 {
                for j in 0..2 {
                    c[i][j] += (r[i] - mean[i]) * (r[j] - mean[j]) / n;
                }
            }
        }
        c[0][0] += extra_variance;
        c[1][1] += extra_variance;
        let det = c[0][0] * c[1][1] - c[0][1] * c[1][0];
        let precision = [[c[1][1] / det, -c[0][1] / det], [-c[1][0] / det, c[0][0] / det]];
        MomentMatchedGaussian { mean, precision }
    }
}

impl ScoreModel<2> for MomentMatchedGaussian {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        let like = x.clone();
        let p = self.precision;
        let centered = x.sub(f64_tensor(&self.mean, [1, 2], &like.device()).cast(like.dtype()));
        let precision = f64_tensor(&[p[0][0], p[0][1], p[1][0], p[1][1]], [2, 2], &like.device());
        centered.matmul(precision.cast(like.dtype())).neg()
    }
}

/// Trains a 2-D `ScoreMlp` (3 × 64 SiLU) with `objective` for `steps` Adam steps on 256 fresh
/// samples of the mixture each, then returns the Fisher divergence to the exact score on 4096
/// held-out samples at `sigma` (0: the clean data) and that of the moment-matched Gaussian.
fn mlp_fisher<O: Objective<ScoreMlp, 2>>(
    name: &str,
    objective: &O,
    conditioning: Conditioning,
    steps: usize,
    sigma: f64,
    seed: u64,
) -> (f64, f64) {
    let device = flex().autodiff();
    let mut rng = StdRng::seed_from_u64(seed);
    let config = ScoreMlpConfig::new(2)
        .with_hidden(64)
        .with_layers(3)
        .with_conditioning(conditioning)
        .with_scale_by_sigma(conditioning == Conditioning::LogSigma);
    let model = {
        // Burn's initialiser draws from a global generator: seed it and initialise under a
        // lock, so that tests running in parallel do not interleave their draws.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        config.init(&device)
    };
    let data = mixture();
    let start = std::time::Instant::now();
    let batch = |rng: &mut StdRng| data.sample(256, &device, rng);
    let model = train(model, objective, steps, 1e-2, &mut rng, batch, |_, _| {});
    let elapsed = start.elapsed();
    let n = 4096;
    let clean = data.sample(n, &device, &mut rng);
    let x = clean.clone().add(standard_normal([n, 2], &device, &mut rng).mul_scalar(sigma));
    let level = if sigma == 0.0 {
        NoiseLevel::clean(n, &device)
    } else {
        let s = Tensor::full([n], sigma, &device);
        NoiseLevel { t: s.clone(), scale: s.ones_like(), sigma: s }
    };
    let trained = fisher(&model, &data, &x, &level);
    let baseline =
        fisher(&MomentMatchedGaussian::fit(&values(clean), sigma * sigma), &data, &x, &level);
    eprintln!(
        "MLP trained with {name} ({steps} steps, {elapsed:.1?}): Fisher divergence {trained:.4} at σ = {sigma} (moment-matched Gaussian {baseline:.4}, ratio {:.3})",
        trained / baseline
    );
    (trained, baseline)
}

/// The threshold: a tenth of the Fisher divergence of the best single Gaussian. That baseline
/// cannot represent three modes: its divergence (≈ 4 on the clean mixture, ≈ 3.7 at σ = 0.1)
/// is most of the `½E‖∇ log p‖² ≈ 5.5` of the zero score, because the score is dominated by
/// the within-component terms `(μₖ − x)/sₖ²` it misses. Reaching a tenth of it needs the modes'
/// local scores; a model stuck near the unimodal fit stays near ratio 1. Measured: exact and
/// sliced SM reach 0.015–0.02 after 600 steps; DSM at σ = 0.1, whose regression target `−z/σ`
/// has variance `d/σ² = 200` to average out, 0.06–0.07 after 1500 steps.
const FISHER_RATIO: f64 = 0.1;

#[test]
fn mlp_trained_with_exact_sm_learns_the_mixture_score() {
    let (trained, baseline) =
        mlp_fisher("exact SM", &ExactScoreMatching::new(), Conditioning::None, 600, 0.0, 30);
    assert!(trained < FISHER_RATIO * baseline);
}

#[test]
fn mlp_trained_with_sliced_sm_learns_the_mixture_score() {
    let sliced = SlicedScoreMatching::new(1, Projection::Rademacher);
    let (trained, baseline) = mlp_fisher("sliced SM", &sliced, Conditioning::None, 600, 0.0, 31);
    assert!(trained < FISHER_RATIO * baseline);
}

#[test]
fn mlp_trained_with_sliced_sm_vr_learns_the_mixture_score() {
    let sliced = SlicedScoreMatching::variance_reduced(1, Projection::Gaussian);
    let (trained, baseline) = mlp_fisher("sliced SM-VR", &sliced, Conditioning::None, 600, 0.0, 32);
    assert!(trained < FISHER_RATIO * baseline);
}

#[test]
fn mlp_trained_with_multi_scale_dsm_learns_the_perturbed_mixture_score() {
    let sigmas = GeometricSigmas::new(0.1, 2.0, 8).unwrap();
    let dsm = DenoisingScoreMatching::multi_scale(&sigmas, 8).unwrap();
    let (trained, baseline) =
        mlp_fisher("multi-scale DSM", &dsm, Conditioning::LogSigma, 1500, 0.1, 33);
    assert!(trained < FISHER_RATIO * baseline);
}

#[test]
fn mlp_trained_with_finite_difference_sliced_sm_learns_the_mixture_score() {
    let sliced = SlicedScoreMatching::variance_reduced(1, Projection::Rademacher);
    let fd = ThroughFiniteDifference::new(sliced, SUGGESTED_STEP_F32).unwrap();
    let (trained, baseline) = mlp_fisher("FD sliced SM-VR", &fd, Conditioning::None, 600, 0.0, 34);
    assert!(trained < FISHER_RATIO * baseline);
}

// ---------------------------------------------------------------------------------------------
// Typed errors.

#[test]
fn objectives_reject_bad_input_with_typed_errors() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(19);
    let model = Affine::new(&[-1.0, -1.0], &[0.0, 0.0], &device, DType::F32);
    let good = Tensor::<2>::zeros([4, 2], &device);
    let wrong = Tensor::<2>::zeros([4, 3], &device);
    let nan = Tensor::<2>::from_floats([[0.0, f32::NAN], [1.0, 2.0]], &device);
    let ddpm = Ddpm::linear(100).unwrap();
    let objectives: Vec<(&str, Box<dyn Objective<Affine, 2>>)> = vec![
        ("exact", Box::new(ExactScoreMatching::new())),
        ("sliced", Box::new(SlicedScoreMatching::new(2, Projection::Rademacher))),
        ("dsm", Box::new(DenoisingScoreMatching::single(0.1).unwrap())),
        ("elbo simple", Box::new(EpsilonElbo::simple(ddpm.clone()))),
        ("elbo bound", Box::new(EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta))),
    ];
    for (name, objective) in &objectives {
        assert!(objective.loss(&model, good.clone(), &mut rng).is_ok(), "{name}");
        let err = objective.loss(&model, wrong.clone(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{name}: {err}");
        let err = objective.loss(&model, nan.clone(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{name}: {err}");
    }
    let invalid = |r: Result<(), Error>, name: &str| {
        assert!(
            matches!(r, Err(Error::InvalidParameter { name: n, .. }) if n == name),
            "{name}: {r:?}"
        );
    };
    invalid(FiniteDifference::new(Zero, 0.0).map(drop), "step");
    invalid(FiniteDifference::new(Zero, f64::NAN).map(drop), "step");
    invalid(
        SlicedScoreMatching::new(0, Projection::Gaussian)
            .loss(&model, good.clone(), &mut rng)
            .map(drop),
        "projections",
    );
    invalid(DenoisingScoreMatching::single(-1.0).map(drop), "sigma");
    invalid(DenoisingScoreMatching::at_times(&VpSde::ddpm(), &[]).map(drop), "times");
    let unit_importance = DenoisingScoreMatching::continuous(VpSde::ddpm())
        .unwrap()
        .with_weighting(Weighting::Unit)
        .with_sampling(LevelSampling::Importance);
    invalid(unit_importance.loss(&model, good.clone(), &mut rng).map(drop), "sampling");
    let elbo = EpsilonElbo::bound(ddpm, ModelVariance::Beta);
    invalid(elbo.step_term(&model, good.clone(), &[0; 4], &mut rng).map(drop), "t");
    invalid(elbo.step_term(&model, good.clone(), &[101; 4], &mut rng).map(drop), "t");
    invalid(DataLevel::at(&VpSde::ddpm(), f64::NAN).map(drop), "t");
    let axes = Tensor::<2>::zeros([3, 3], &device);
    let err = SlicedScoreMatching::new(1, Projection::Gaussian)
        .loss_with_projections(&model, good, axes, &mut rng)
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

/// A model whose score is `−x` (the score of `N(0, I)`) with JVP `−v`, made wrong: the score
/// (and JVP) of another shape or dtype than the input, or only the JVP of another shape
/// (`Fine`: neither, the control).
#[derive(Debug, Clone, Copy, PartialEq)]
enum WrongOutput {
    Fine,
    Shape,
    DType,
    TangentShape,
}

impl WrongOutput {
    fn spoil(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            WrongOutput::Fine => x,
            WrongOutput::Shape | WrongOutput::TangentShape => x.narrow(1, 0, 1),
            WrongOutput::DType => x.cast(DType::F64),
        }
    }
}

impl ScoreModel<2> for WrongOutput {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        match self {
            WrongOutput::TangentShape => x.neg(),
            wrong => wrong.spoil(x.neg()),
        }
    }
}

impl ScoreJvp<2> for WrongOutput {
    fn score_jvp(&self, x: Tensor<2>, level: &NoiseLevel, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        (self.score(x, level), self.spoil(v.neg()))
    }
}

/// Every objective returns the typed error of a model output of another shape or dtype than
/// its input (the score, or the JVP for exact and sliced SM) instead of panicking inside the
/// backend; the same objectives accept the f32 batch from a well-formed model.
#[test]
fn every_objective_rejects_a_model_output_of_another_shape_or_dtype() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(23);
    let x = Tensor::<2>::ones([4, 2], &device).mul_scalar(0.5);
    let ddpm = Ddpm::linear(100).unwrap();
    let perturbed = DataLevel::at(&VpSde::ddpm(), 0.5).unwrap();
    let with_jvp: Vec<(&str, Box<dyn Objective<WrongOutput, 2>>)> = vec![
        ("exact", Box::new(ExactScoreMatching::new())),
        ("exact perturbed", Box::new(ExactScoreMatching::at_level(perturbed))),
        ("sliced", Box::new(SlicedScoreMatching::new(2, Projection::Rademacher))),
        ("sliced VR", Box::new(SlicedScoreMatching::variance_reduced(3, Projection::Gaussian))),
    ];
    let score_only: Vec<(&str, Box<dyn Objective<WrongOutput, 2>>)> = vec![
        ("dsm single", Box::new(DenoisingScoreMatching::single(0.1).unwrap())),
        (
            "dsm multi-scale",
            Box::new(DenoisingScoreMatching::multi_scale(&VpSde::ddpm(), 5).unwrap()),
        ),
        ("dsm continuous", Box::new(DenoisingScoreMatching::continuous(VpSde::ddpm()).unwrap())),
        ("dsm edm", Box::new(DenoisingScoreMatching::edm(-1.2, 1.2, 0.5).unwrap())),
        ("elbo simple", Box::new(EpsilonElbo::simple(ddpm.clone()))),
        ("elbo bound", Box::new(EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta))),
    ];
    for (name, objective) in with_jvp.iter().chain(&score_only) {
        let err = objective.loss(&WrongOutput::Shape, x.clone(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{name}: {err}");
        let err = objective.loss(&WrongOutput::DType, x.clone(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{name}: {err}");
    }
    for (name, objective) in &with_jvp {
        let err = objective.loss(&WrongOutput::TangentShape, x.clone(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{name}: {err}");
    }
    for (name, objective) in with_jvp.iter().chain(&score_only) {
        let ok = objective.loss(&WrongOutput::Fine, x.clone(), &mut rng);
        assert!(ok.is_ok(), "{name}: {:?}", ok.err());
    }
    // The other entry points that call the model.
    let sliced = SlicedScoreMatching::new(1, Projection::Gaussian);
    let axes = scaled_axes(&x);
    for (wrong, dtype) in [(WrongOutput::Shape, false), (WrongOutput::DType, true)] {
        let err = sliced.loss_with_projections(&wrong, x.clone(), axes.clone(), &mut rng);
        let err = err.unwrap_err();
        assert_eq!(matches!(err, Error::DTypeMismatch { .. }), dtype, "{err}");
        let err = score_and_trace(&wrong, x.clone(), &NoiseLevel::clean(4, &device)).unwrap_err();
        assert_eq!(matches!(err, Error::DTypeMismatch { .. }), dtype, "{err}");
        let elbo = EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta);
        let err = elbo.terms(&wrong, x.clone(), &mut rng).unwrap_err();
        assert_eq!(matches!(err, Error::DTypeMismatch { .. }), dtype, "{err}");
    }
}

/// An f64 batch given to an f32 network (which would panic in its first matrix product) is a
/// typed error from every objective, before the network runs, through the parameterisation
/// and finite-difference wrappers too; the f32 batch is accepted.
#[test]
fn every_objective_rejects_a_batch_in_another_float_type_than_the_network() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(29);
    let mlp = ScoreMlpConfig::new(2).with_hidden(8).with_layers(1).init(&device);
    assert_eq!(ScoreModel::<2>::float_dtype(&mlp), Some(DType::F32));
    let x32 = Tensor::<2>::ones([4, 2], &device);
    let x64 = x32.clone().cast(DType::F64);
    let ddpm = Ddpm::linear(100).unwrap();
    let dtype_error = |r: Result<LossOutput, Error>, name: &str| match r {
        Err(Error::DTypeMismatch { expected, got, .. }) => {
            assert!(expected.contains("F32") && got.contains("F64"), "{name}: {expected} / {got}")
        }
        other => panic!("{name}: {other:?}"),
    };
    let with_jvp: Vec<(&str, Box<dyn Objective<ScoreMlp, 2>>)> = vec![
        ("exact", Box::new(ExactScoreMatching::new())),
        ("sliced", Box::new(SlicedScoreMatching::new(2, Projection::Rademacher))),
        ("dsm", Box::new(DenoisingScoreMatching::single(0.1).unwrap())),
        ("elbo simple", Box::new(EpsilonElbo::simple(ddpm.clone()))),
        ("elbo bound", Box::new(EpsilonElbo::bound(ddpm.clone(), ModelVariance::Beta))),
    ];
    for (name, objective) in &with_jvp {
        dtype_error(objective.loss(&mlp, x64.clone(), &mut rng), name);
        assert!(objective.loss(&mlp, x32.clone(), &mut rng).is_ok(), "{name}");
    }
    let fd = FiniteDifference::new(mlp.clone(), SUGGESTED_STEP_F32).unwrap();
    dtype_error(ExactScoreMatching::new().loss(&fd, x64.clone(), &mut rng), "exact, FD");
    let eps = EpsilonPrediction { net: mlp };
    let dsm = DenoisingScoreMatching::single(0.1).unwrap();
    dtype_error(dsm.loss(&eps, x64.clone(), &mut rng), "dsm, ε-prediction");
    dtype_error(EpsilonElbo::simple(ddpm).loss(&eps, x64, &mut rng), "elbo, ε-prediction");
}

/// Exact SM at a perturbed level fits the score of `pₜ`: evaluated at the Gaussian oracle (which,
/// conditioned on `t`, is the exact perturbed score) it equals its minimum
/// `−½E‖∇ log pₜ‖² = −d/(2 vₜ)`, `vₜ = m² s² + σ²`.
#[test]
fn exact_sm_at_a_noise_level_matches_the_perturbed_score() {
    let device = flex();
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let data = Gaussian::isotropic(&[1.0, -1.0], 0.3).unwrap();
    let x = f64_samples(data.sample(20_000, &device, &mut StdRng::seed_from_u64(20)));
    let level = DataLevel::at(&vp, 0.3).unwrap();
    let objective = ExactScoreMatching::at_level(level);
    let out = objective.loss(&data, x.clone(), &mut StdRng::seed_from_u64(21)).unwrap();
    assert!(out.level.is_some());
    // The exact-SM value at the true score is −½E‖∇ log pₜ‖² = −½ d/v_t.
    let DataLevel::Perturbed { scale, std, .. } = level else { unreachable!() };
    let var_t = scale * scale * 0.09 + std * std;
    let got = scalar(out.loss);
    eprintln!(
        "exact SM at VP t = 0.3 with the perturbed oracle: {got:.5} (−d/(2 v_t) = {:.5})",
        -1.0 / var_t
    );
    assert!((got + 1.0 / var_t).abs() < 0.02 / var_t);
}

/// `erf` by its Maclaurin series / continued fraction, to f64 precision for the host check.
fn erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        // Σ (−1)ⁿ x^{2n+1} / (n! (2n+1)) · 2/√π
        let (mut sum, mut term, mut n) = (0.0f64, x, 0.0f64);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 1.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(−x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))) (Lentz, 60 terms)
        let ax = x.abs();
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / f;
        (1.0 - erfc).copysign(x)
    }
}
