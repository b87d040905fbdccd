//! The parameterisation modules (score, ε, x₀, v, EDM preconditioning) against the exact
//! score of Gaussian data, EDM's loss against its closed form, and training through them.

use burn::tensor::{DType, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::Gaussian;
use scorefield::nn::{Conditioning, FitError, ScoreMlpConfig, StepReport, Trainer, TrainerConfig};
use scorefield::objective::{DenoisingScoreMatching, Objective};
use scorefield::param::{
    DataPrediction, EpsilonPrediction, Network, Preconditioned, ScorePrediction, SigmaTilde,
    VPrediction,
};
use scorefield::schedule::VpSde;
use scorefield::score::per_sample;
use scorefield::{Error, NoiseLevel, NoiseSchedule, ScoreModel};
use std::ops::ControlFlow;

use crate::common::{flex, values};

const MU: [f64; 2] = [0.4, -0.8];
const S: f64 = 0.5;

fn data() -> Gaussian {
    Gaussian::isotropic(&MU, S).unwrap()
}

/// The exact network output of each parameterisation for Gaussian data, from the exact
/// score `s*`: `s*`, `ε = −σ s*`, `x₀ = (x + σ² s*)/m`, `v = (m x/r − r x₀)/σ`, and EDM's
/// `F = (D − c_skip x̃)/c_out` at the input `c_in·x̃` and level `σ̃`.
#[derive(Clone, Copy)]
enum Exact {
    Score,
    Epsilon,
    Data,
    V,
    Edm(f64),
}

impl Network<2> for Exact {
    fn forward(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        let col = |t: &Tensor<1>| per_sample::<2>(t, &x);
        let (m, sigma) = (col(&level.scale), col(&level.sigma));
        match *self {
            Exact::Score => data().score(x, level),
            Exact::Epsilon => data().score(x, level).mul(sigma).neg(),
            Exact::Data => {
                let s = data().score(x.clone(), level);
                (x + s.mul(sigma.square())).div(m)
            }
            Exact::V => {
                let s = data().score(x.clone(), level);
                let x0 = (x.clone() + s.mul(sigma.clone().square())).div(m.clone());
                let r = (m.clone().square() + sigma.clone().square()).sqrt();
                (x.mul(m).div(r.clone()) - x0.mul(r)).div(sigma)
            }
            Exact::Edm(sd) => {
                // The wrapper hands over c_in·x̃ at (t = c_noise, m = 1, σ̃).
                let var = sigma.clone().square().add_scalar(sd * sd);
                let x_tilde = x.mul(var.clone().sqrt());
                let s = data().score(x_tilde.clone(), level); // VE level: m = 1, σ = σ̃
                let d = x_tilde.clone() + s.mul(sigma.clone().square());
                let c_skip = var.clone().recip().mul_scalar(sd * sd);
                let c_out = sigma.mul_scalar(sd).div(var.sqrt());
                (d - x_tilde.mul(c_skip)).div(c_out)
            }
        }
    }
}

#[test]
fn every_parameterisation_of_the_exact_network_is_the_exact_score() {
    let device = flex();
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let level = NoiseLevel::at_times(&vp, &[0.05, 0.3, 0.7, 1.0], &device);
    let level = NoiseLevel {
        t: level.t.cast(DType::F64),
        scale: level.scale.cast(DType::F64),
        sigma: level.sigma.cast(DType::F64),
    };
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![0.3, -1.0, 1.5, 0.2, -0.7, -0.4, 2.0, 1.0], [4, 2]),
        (&device, DType::F64),
    );
    let want = values(data().score(x.clone(), &level));
    let models: Vec<(&str, Box<dyn ScoreModel<2>>)> = vec![
        ("score", Box::new(ScorePrediction { net: Exact::Score })),
        ("ε", Box::new(EpsilonPrediction { net: Exact::Epsilon })),
        ("x₀", Box::new(DataPrediction { net: Exact::Data })),
        ("v", Box::new(VPrediction { net: Exact::V })),
        ("EDM", Box::new(Preconditioned::new(Exact::Edm(0.5), 0.5).unwrap())),
        ("EDM σ_d = 2", Box::new(Preconditioned::new(Exact::Edm(2.0), 2.0).unwrap())),
    ];
    for (name, model) in models {
        let got = values(model.score(x.clone(), &level));
        let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(err < 1e-9, "{name}: max error {err:e}");
    }
    assert!(matches!(Preconditioned::new(Exact::Score, 0.0), Err(Error::InvalidParameter { .. })));
}

/// A network that shows the level it is given: columns `t`, `m`, `σ`.
struct Probe;

impl Network<2> for Probe {
    fn forward(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        let col = |t: &Tensor<1>| t.clone().reshape([x.dims()[0], 1]).cast(x.dtype());
        Tensor::cat(vec![col(&level.t), col(&level.scale), col(&level.sigma)], 1)
    }
}

#[test]
fn sigma_tilde_conditions_the_network_on_sigma_over_m() {
    let device = flex();
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let times = [0.05, 0.5, 1.0];
    let level = NoiseLevel::at_times(&vp, &times, &device);
    let got = values(SigmaTilde { net: Probe }.forward(Tensor::zeros([3, 3], &device), &level));
    for (i, &t) in times.iter().enumerate() {
        let m = vp.marginal(t);
        let want = [t, 1.0, m.std / m.scale];
        for (g, w) in got[3 * i..3 * i + 3].iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "t = {t}: {g} vs {w}");
        }
    }
}

/// With `σ_data` the data's standard deviation, EDM's weighting makes the exact model's
/// expected per-sample loss `½·E‖(s²z − σ(x₀ − μ))/(s² + σ²)‖²·(σ² + s²)/s² = d/2` at every
/// σ; and `ln σ` is drawn from `N(P_mean, P_std²)`.
#[test]
fn edm_loss_of_the_exact_model_is_half_the_dimension_at_every_level() {
    let device = flex();
    let mut rng = StdRng::seed_from_u64(3);
    let n = 20_000;
    let x0 = data().sample(n, &device, &mut rng).cast(DType::F64);
    let edm = DenoisingScoreMatching::edm(-1.2, 1.2, S).unwrap();
    let out = edm.loss(&data(), x0, &mut rng).unwrap();
    let per_sample = values(out.per_sample);
    let sigmas = values(out.level.unwrap().sigma);
    let ln: Vec<f64> = sigmas.iter().map(|s| s.ln()).collect();
    let mean = ln.iter().sum::<f64>() / n as f64;
    let std = (ln.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    assert!((mean + 1.2).abs() < 4.0 * 1.2 / (n as f64).sqrt(), "mean ln σ {mean}");
    assert!((std - 1.2).abs() < 4.0 * 1.2 / (2.0 * n as f64).sqrt(), "std ln σ {std}");
    // The loss, overall and in three σ bins: d/2 = 1 within 4 standard errors.
    for (lo, hi) in [(0.0, 0.1), (0.1, 1.0), (1.0, f64::INFINITY), (0.0, f64::INFINITY)] {
        let bin: Vec<f64> = per_sample
            .iter()
            .zip(&sigmas)
            .filter(|(_, s)| (lo..hi).contains(*s))
            .map(|(l, _)| *l)
            .collect();
        let k = bin.len() as f64;
        let m = bin.iter().sum::<f64>() / k;
        let se = (bin.iter().map(|l| (l - m).powi(2)).sum::<f64>() / k / k).sqrt();
        eprintln!("EDM loss, σ in [{lo}, {hi}): {m:.4} ± {se:.4} over {k} samples");
        assert!((m - 1.0).abs() < 4.0 * se, "σ in [{lo}, {hi}): {m} ± {se}");
    }
    for bad in [
        DenoisingScoreMatching::edm(f64::NAN, 1.2, 0.5),
        DenoisingScoreMatching::edm(-1.2, 0.0, 0.5),
        DenoisingScoreMatching::edm(-1.2, 1.2, -0.5),
    ] {
        assert!(matches!(bad, Err(Error::InvalidParameter { .. })));
    }
}

/// The trainer trains a preconditioned MLP with EDM's loss: its loss falls towards the
/// exact model's `d/2 = 1` (and its denoiser towards the exact one).
#[test]
fn the_trainer_trains_through_edm_preconditioning() {
    let device = flex();
    let config =
        ScoreMlpConfig::new(2).with_hidden(64).with_layers(2).with_conditioning(Conditioning::Time);
    let model = Preconditioned::new(config.init(&device), S).unwrap();
    let trainer_config =
        TrainerConfig::new().with_learning_rate(3e-3).with_ema_decay(0.0).with_batch_size(256);
    let mut trainer = Trainer::new(model, config.to_string(), trainer_config).unwrap();
    let edm = DenoisingScoreMatching::edm(-1.2, 1.2, S).unwrap();
    let mut losses = Vec::new();
    let mut record = |_: &Trainer<_>, r: &StepReport| -> Result<ControlFlow<()>, FitError> {
        losses.push(r.loss);
        Ok(ControlFlow::Continue(()))
    };
    let batch = |rng: &mut StdRng| Ok::<_, FitError>(data().sample(256, &device, rng));
    trainer.fit(&edm, 400, batch, &mut [&mut record]).unwrap();
    let early = losses[..20].iter().sum::<f64>() / 20.0;
    let late = losses[losses.len() - 100..].iter().sum::<f64>() / 100.0;
    eprintln!(
        "EDM-preconditioned MLP: loss {early:.3} (first 20 steps) → {late:.3} (last 100); exact model 1"
    );
    assert!(late < early && late < 1.15, "{early} → {late}");
}
