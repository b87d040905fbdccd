//! f64 runs end to end: the analytic oracles sample in the run's dtype, and an f64 run of a
//! sampler (EDM's Heun on the driver) and of an objective (denoising score matching) agrees
//! with the same computation done by hand on the host in f64 to 1e-12, and with the f32 run to
//! f32 precision. Any f32 rounding on the way (levels, noise, data) shows as an error ~1e-8.

use std::cell::RefCell;

use burn::tensor::{DType, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::Gaussian;
use scorefield::objective::DenoisingScoreMatching;
use scorefield::sampler::{Driver, Grid, Heun, PerSampleNoise};
use scorefield::schedule::{Karras, VpSde};
use scorefield::{NoiseLevel, Objective, ScoreModel};

use crate::common::{flex, values};

const MU: [f64; 2] = [0.7, -1.3];
const S: [f64; 2] = [0.4, 0.9];

fn data() -> Gaussian {
    Gaussian::diagonal(&MU, &S).unwrap()
}

/// The oracle's samples in f64 and in the default f32 from one seed: the f64 ones carry more
/// than f32 precision, the f32 ones are exactly their rounding.
fn samples(n: usize, seed: u64) -> (Tensor<2>, Tensor<2>) {
    let wide = data().sample(n, (&flex(), DType::F64), &mut StdRng::seed_from_u64(seed));
    let narrow = data().sample(n, &flex(), &mut StdRng::seed_from_u64(seed));
    assert_eq!((wide.dtype(), narrow.dtype()), (DType::F64, DType::F32));
    let (w, v) = (values(wide.clone()), values(narrow.clone()));
    assert_eq!(v, w.iter().map(|&x| f64::from(x as f32)).collect::<Vec<_>>());
    assert!(w.iter().all(|&x| f64::from(x as f32) != x), "f64 samples rounded to f32");
    (wide, narrow)
}

/// The denoiser of `N(μ, diag s²)` at `σ` (m = 1), by hand: `x + σ²(μ − x)/(s² + σ²)`.
fn denoise(x: &[f64], sigma: f64) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(k, &x)| {
            let (mu, s2) = (MU[k % 2], S[k % 2] * S[k % 2]);
            x + sigma * sigma * (mu - x) / (s2 + sigma * sigma)
        })
        .collect()
}

/// EDM's deterministic Heun (Karras et al. 2022, Algorithm 1) on the host in f64.
fn host_heun(mut x: Vec<f64>, sigmas: &[f64]) -> Vec<f64> {
    let slope = |x: &[f64], s: f64| -> Vec<f64> {
        x.iter().zip(denoise(x, s)).map(|(x, d)| (x - d) / s).collect()
    };
    for w in sigmas.windows(2) {
        let (s, next) = (w[0], w[1]);
        let d = slope(&x, s);
        let euler: Vec<f64> = x.iter().zip(&d).map(|(x, d)| x + (next - s) * d).collect();
        x = if next == 0.0 {
            euler
        } else {
            let d2 = slope(&euler, next);
            (0..x.len()).map(|k| x[k] + (next - s) * 0.5 * (d[k] + d2[k])).collect()
        };
    }
    x
}

#[test]
fn an_f64_heun_run_matches_the_host_to_1e_12_and_the_f32_run_to_f32_precision() {
    let sigmas = [3.0, 1.7, 0.9, 0.35, 0.1, 0.0];
    let grid = Grid::from_sigmas(Karras::edm(), &sigmas).unwrap();
    let driver = Driver::new(Heun::default(), grid);
    let (wide, narrow) = samples(16, 41);
    let init = values(wide.clone()).iter().map(|x| 3.0 * x).collect::<Vec<_>>();
    let run = |x: Tensor<2>| {
        let out = driver.run(&data(), x.mul_scalar(3.0), &mut PerSampleNoise::new(0, 16), &mut ());
        out.unwrap().x
    };
    let (got64, got32) = (run(wide), run(narrow));
    assert_eq!((got64.dtype(), got32.dtype()), (DType::F64, DType::F32));
    let (got64, got32) = (values(got64), values(got32));
    let want = host_heun(init, &sigmas);
    let f64_error = got64.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    let f32_error = got32.iter().zip(&got64).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("Heun, 5 steps: f64 run vs host {f64_error:.1e}, f32 run vs f64 run {f32_error:.1e}");
    assert!(f64_error < 1e-12, "f64 run off the host by {f64_error:e}");
    assert!(f32_error < 2e-5, "f32 run off the f64 run by {f32_error:e}");
}

/// A score model that records, for each call, its input and the dtypes of the input and of
/// the levels it was given.
struct Recording<M> {
    model: M,
    calls: RefCell<Vec<(Vec<f64>, DType, DType)>>,
}

impl<M: ScoreModel<2>> ScoreModel<2> for Recording<M> {
    fn score(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        let seen = (values(x.clone()), x.dtype(), level.sigma.dtype());
        self.calls.borrow_mut().push(seen);
        self.model.score(x, level)
    }
}

/// The VP SDE's marginal by hand: `m = exp(−¼t²(β₁ − β₀) − ½tβ₀)`, `σ = √(1 − m²)`.
fn vp_marginal(t: f64) -> (f64, f64) {
    let m = (-0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1).exp();
    (m, (1.0 - m * m).sqrt())
}

/// DSM (`λ = σ²`) of the exact Gaussian score at three VP levels: each per-sample loss
/// `½‖σ·s(xₜ) + z‖²` recomputed on the host in f64 from the batch the model saw
/// (`z = (xₜ − m·x₀)/σ`, `s = (m·μ − xₜ)/(m²s² + σ²)` by hand) agrees to 1e-12; the f32 run
/// from the same seed agrees with the f64 run to f32 precision.
#[test]
fn an_f64_dsm_loss_matches_the_host_to_1e_12_and_the_f32_loss_to_f32_precision() {
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let times = [0.2, 0.5, 0.9];
    let dsm = DenoisingScoreMatching::at_times(&vp, &times).unwrap();
    let (wide, narrow) = samples(32, 43);
    let x0 = values(wide.clone());
    let model = Recording { model: data(), calls: RefCell::new(Vec::new()) };
    let out = dsm.loss(&model, wide, &mut StdRng::seed_from_u64(44)).unwrap();
    let level = out.level.expect("DSM reports its levels");
    assert_eq!((out.per_sample.dtype(), level.dtype()), (DType::F64, DType::F64));
    let (xt, x_dtype, level_dtype) = model.calls.borrow()[0].clone();
    assert_eq!((x_dtype, level_dtype), (DType::F64, DType::F64));
    let got = values(out.per_sample);
    let t = values(level.t);
    let mut seen = [false; 3];
    for (b, &tb) in t.iter().enumerate() {
        let which = times.iter().position(|&ti| ti == tb).expect("a level of the objective");
        seen[which] = true;
        let (m, sigma) = vp_marginal(tb);
        let want = 0.5
            * (0..2)
                .map(|k| {
                    let (x, x0) = (xt[2 * b + k], x0[2 * b + k]);
                    let z = (x - m * x0) / sigma;
                    let score = (m * MU[k] - x) / (m * m * S[k] * S[k] + sigma * sigma);
                    (sigma * score + z).powi(2)
                })
                .sum::<f64>();
        assert!((got[b] - want).abs() < 1e-12 * (1.0 + want), "t = {tb}: {} vs {want}", got[b]);
    }
    assert_eq!(seen, [true; 3], "every level drawn");

    let out32 = dsm.loss(&data(), narrow, &mut StdRng::seed_from_u64(44)).unwrap();
    assert_eq!(out32.per_sample.dtype(), DType::F32);
    let rounded: Vec<f64> = t.iter().map(|&t| f64::from(t as f32)).collect();
    assert_eq!(values(out32.level.unwrap().t), rounded, "the same levels from the same seed");
    let got32 = values(out32.per_sample);
    let error = got32.iter().zip(&got).map(|(a, b)| (a - b).abs() / (1.0 + b)).fold(0.0, f64::max);
    eprintln!("DSM per-sample loss: f32 run vs f64 run, relative {error:.1e}");
    assert!(error < 1e-5, "f32 loss off the f64 loss by {error:e}");
}
