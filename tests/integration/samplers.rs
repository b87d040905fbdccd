//! Every sampler against the exact oracles: with the exact score of a Gaussian mixture (or the
//! exact ε / x₀ of a Gaussian) the samples must be indistinguishable from true samples (energy
//! distance against its permutation null at α = 0.01, mean and covariance within 4 standard
//! errors); the mode-weight experiment; typed errors on bad input; the observer; seeding.

use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::sampler::{
    AnnealedLangevin, Corrector, Ddim, DdpmAncestral, DdpmVariance, Langevin, Predictor, ReverseSde,
};
use scorefield::schedule::{Ddpm, GeometricSigmas, SubVpSde, VeSde, VpSde};
use scorefield::score::{DenoiserModel, EpsilonModel, FromDenoiser, FromEpsilon, per_sample};
use scorefield::{Error, NoiseLevel, NoiseSchedule, SampleStep, Sampler, ScoreModel};
use std::ops::ControlFlow;

use crate::common::{f64_tensor, flex, values};
use crate::stats::{
    assert_moments_match, assert_same_distribution, energy_distance, mean_cov,
    permutation_threshold,
};

/// Samples per test: the energy-distance permutation test costs O(n²) per permutation.
const N: usize = 800;

/// A 2-D mixture with unequal weights, widths and a non-diagonal overall covariance, spread
/// over about 4 units (the VP prior N(0, I) is reached at T; VE needs σ_max ≫ 4).
fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.5, 0.3, 0.2],
        &[vec![-1.5, -0.5], vec![1.5, 0.5], vec![0.0, 2.0]],
        &[0.5, 0.4, 0.6],
    )
    .unwrap()
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` samples of `N(0, std² I)` in 2-D.
fn gaussian_init(n: usize, std: f64, seed: u64) -> Tensor<2> {
    scorefield::random::standard_normal([n, 2], &flex(), &mut rng(seed)).mul_scalar(std)
}

/// Energy distance (permutation null, α = 0.01) and moments (4 standard errors) of `got`
/// against `want`.
fn assert_matches(name: &str, got: Tensor<2>, want: Tensor<2>) {
    let (got, want) = (values(got), values(want));
    assert_same_distribution(name, &got, &want, 2, 0.01);
    assert_moments_match(name, &got, &want, 2, 4.0);
}

fn run<M, T: Sampler<M, 2> + ?Sized>(
    sampler: &T,
    model: &M,
    init: Tensor<2>,
    seed: u64,
) -> Tensor<2> {
    sampler.sample(model, init, &mut rng(seed), &mut ()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reverse SDE and predictor–corrector sampling on VE, VP and sub-VP.

/// Runs `ReverseSde` with every listed predictor/corrector on `schedule` from its prior and
/// compares with true mixture samples.
fn check_reverse_sde<S: NoiseSchedule + Clone>(
    name: &str,
    schedule: S,
    steps: usize,
    configs: &[(Predictor, Corrector)],
    seed: u64,
) {
    let data = mixture();
    let want = data.sample(N, &flex(), &mut rng(seed));
    for (i, &(predictor, corrector)) in configs.iter().enumerate() {
        let sampler = ReverseSde::new(schedule.clone(), predictor, corrector, steps).unwrap();
        let seed = seed + 10 * (i as u64 + 1);
        let init = gaussian_init(N, schedule.prior_std(), seed);
        let got = run(&sampler, &data, init, seed + 1);
        assert_matches(&format!("{name} {predictor:?} + {corrector:?}"), got, want.clone());
    }
}

const PC: Corrector = Corrector::Langevin { snr: 0.16, steps: 1 };

#[test]
fn reverse_sde_ve_samples_the_mixture() {
    let ve = VeSde::new(0.01, 20.0).unwrap();
    check_reverse_sde(
        "VE",
        ve,
        250,
        &[
            (Predictor::EulerMaruyama, Corrector::None),
            (Predictor::ReverseDiffusion, Corrector::None),
            (Predictor::Ancestral, Corrector::None),
            (Predictor::ReverseDiffusion, PC),
        ],
        100,
    );
}

#[test]
fn reverse_sde_vp_samples_the_mixture() {
    check_reverse_sde(
        "VP",
        VpSde::ddpm(),
        250,
        &[
            (Predictor::EulerMaruyama, Corrector::None),
            (Predictor::ReverseDiffusion, Corrector::None),
            (Predictor::Ancestral, Corrector::None),
            (Predictor::EulerMaruyama, PC),
        ],
        200,
    );
}

#[test]
fn reverse_sde_sub_vp_samples_the_mixture() {
    check_reverse_sde(
        "sub-VP",
        SubVpSde::ddpm(),
        250,
        &[
            (Predictor::EulerMaruyama, Corrector::None),
            (Predictor::ReverseDiffusion, Corrector::None),
            (Predictor::ReverseDiffusion, Corrector::AnnealedLangevin { snr: 0.16, steps: 1 }),
            (Predictor::EulerMaruyama, PC),
        ],
        300,
    );
}

/// The reverse SDE on the caller's times (clustered towards ε: `tᵢ = ε + (T − ε)(1 − i/N)²`)
/// samples the mixture too, and its observer sees those times.
#[test]
fn reverse_sde_follows_the_callers_times() {
    let vp = VpSde::ddpm();
    let (eps, t_max) = vp.time_range();
    let n = 120;
    let times: Vec<f64> =
        (0..=n).map(|i| eps + (t_max - eps) * (1.0 - i as f64 / n as f64).powi(2)).collect();
    let data = mixture();
    let want = data.sample(N, &flex(), &mut rng(400));
    for predictor in [Predictor::ReverseDiffusion, Predictor::Ancestral] {
        let sampler = ReverseSde::new(vp, predictor, Corrector::None, 10)
            .unwrap()
            .with_times(&times)
            .unwrap();
        assert_eq!(sampler.times(), times);
        let mut seen = Vec::new();
        let mut observer = |s: &SampleStep<'_, 2>| {
            seen.push(s.t);
            ControlFlow::Continue(())
        };
        let init = gaussian_init(N, vp.prior_std(), 401);
        let got = sampler.sample(&data, init, &mut rng(402), &mut observer).unwrap();
        assert_eq!(seen, times[1..]);
        assert_matches(&format!("VP {predictor:?} on quadratic times"), got, want.clone());
    }
    // Bad times.
    let em = ReverseSde::new(vp, Predictor::EulerMaruyama, Corrector::None, 10).unwrap();
    assert_eq!(invalid_name(em.clone().with_times(&[0.5])), "times");
    assert_eq!(invalid_name(em.clone().with_times(&[0.5, 0.7])), "times");
    assert_eq!(invalid_name(em.clone().with_times(&[2.0, 0.5])), "time");
    assert_eq!(invalid_name(em.with_times(&[0.5, f64::INFINITY])), "time");
}

// ---------------------------------------------------------------------------------------------
// The mode-weight experiment (Song & Ermon 2019; CS236).

/// The fraction of samples nearer the first mode `(−5, −5)` than the second `(5, 5)`.
fn first_mode_fraction(x: &[f64]) -> f64 {
    let n = x.len() / 2;
    x.chunks(2).filter(|p| p[0] + p[1] < 0.0).count() as f64 / n as f64
}

/// `n` points uniform on `[−8, 8]²`.
fn uniform_init(n: usize, seed: u64) -> Tensor<2> {
    let mut rng = rng(seed);
    let v: Vec<f32> = (0..2 * n).map(|_| rng.random_range(-8.0f32..8.0)).collect();
    Tensor::from_data(TensorData::new(v, [n, 2]), &flex())
}

#[test]
fn langevin_with_the_clean_score_gets_the_mode_weights_wrong() {
    let data = scorefield::data::toy::unequal_modes().unwrap();
    let n = 2000;
    // α = 0.1: each step contracts the distance to the nearest mode by ≈ 1 − α/2, so 400
    // steps equilibrate inside a mode; crossing the 25-nat barrier never happens.
    let sampler = Langevin::new(0.1, 400).unwrap();
    let x = values(run(&sampler, &data, uniform_init(n, 1), 2));
    let frac = first_mode_fraction(&x);
    eprintln!("plain Langevin, clean score: fraction in the 2/3 mode = {frac:.3}");
    assert!((frac - 0.5).abs() < 0.1, "{frac}");
    assert!(frac < 2.0 / 3.0 - 0.1, "{frac}");
}

#[test]
fn langevin_without_noise_collapses_onto_the_modes() {
    let data = scorefield::data::toy::unequal_modes().unwrap();
    let sampler = Langevin::new(0.1, 400).unwrap().with_noise(false);
    let x = values(run(&sampler, &data, uniform_init(1000, 3), 4));
    for (sign, name) in [(-1.0, "first"), (1.0, "second")] {
        let mode: Vec<f64> =
            x.chunks(2).filter(|p| (p[0] + p[1]) * sign > 0.0).flatten().copied().collect();
        let (mean, cov) = mean_cov(&mode, 2);
        eprintln!("Langevin without noise, {name} mode: mean {mean:?}, variances {cov:?}");
        assert!((mean[0] - 5.0 * sign).abs() < 1e-3 && (mean[1] - 5.0 * sign).abs() < 1e-3);
        assert!(cov[0] < 1e-6 && cov[3] < 1e-6, "{cov:?}");
    }
}

#[test]
fn annealed_langevin_recovers_the_mode_weights() {
    let data = scorefield::data::toy::unequal_modes().unwrap();
    // 4000 samples: the fraction's standard error is 0.0075 (a bias of about −0.005 remains
    // from the finite steps, measured on 20 000 samples with 10–40 levels and 100–200 steps).
    let n = 4000;
    // σ₁ = 20 exceeds the distance between the modes (√200 ≈ 14), so the first levels mix
    // across them; σ_L = 0.1 is a tenth of the component width, so the last level is nearly
    // the data. 20 levels: consecutive σ differ by 32 %, so each level starts close to its
    // equilibrium. ε = 2e-3 gives the relative step α_i/σ_i² = ε/σ_L² = 0.2 (NCSN's value).
    let levels = GeometricSigmas::new(0.1, 20.0, 20).unwrap();
    let sampler = AnnealedLangevin::ncsn(levels, 100, 2e-3).unwrap();
    let x = run(&sampler, &data, uniform_init(n, 5), 6);
    let frac = first_mode_fraction(&values(x));
    eprintln!("annealed Langevin: fraction in the 2/3 mode = {frac:.3}");
    assert!((frac - 2.0 / 3.0).abs() < 0.03, "{frac}");
    let denoised = sampler.with_final_denoise(true);
    let x = run(&denoised, &data, uniform_init(N, 7), 8);
    assert_matches("annealed Langevin + denoise", x, data.sample(N, &flex(), &mut rng(9)));
}

// ---------------------------------------------------------------------------------------------
// DDPM ancestral and DDIM with the exact ε of Gaussian data, through FromEpsilon.

/// Gaussian data `N(μ, s² I)`.
const MU: [f64; 2] = [0.5, -0.3];
const S: f64 = 0.4;

fn gaussian_data() -> Gaussian {
    Gaussian::isotropic(&MU, S).unwrap()
}

/// The `[B, 2]` columns `m`, `σ` of a level and the constant `μ`, in `x`'s dtype.
fn level_parts(x: &Tensor<2>, level: &NoiseLevel) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let mu = Tensor::<2>::from_data(TensorData::new(MU.to_vec(), [1, 2]), (&x.device(), x.dtype()));
    (per_sample(&level.scale, x), per_sample(&level.sigma, x), mu)
}

/// The exact noise prediction for data `N(μ, s² I)`: `E[ε | xₜ] = σ(xₜ − mμ)/(m²s² + σ²)`.
struct ExactEpsilon;

impl EpsilonModel<2> for ExactEpsilon {
    fn epsilon(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        let (m, sigma, mu) = level_parts(&x, level);
        let var = m.clone().square().mul_scalar(S * S) + sigma.clone().square();
        (x - m.mul(mu)).mul(sigma).div(var)
    }
}

/// The exact denoiser for data `N(μ, s² I)`: `E[x₀ | xₜ] = μ + m s²(xₜ − mμ)/(m²s² + σ²)`.
struct ExactDenoiser;

impl DenoiserModel<2> for ExactDenoiser {
    fn denoise(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        let (m, sigma, mu) = level_parts(&x, level);
        let var = m.clone().square().mul_scalar(S * S) + sigma.square();
        let shrink = m.clone().mul_scalar(S * S).div(var);
        (x - m.mul(mu.clone())).mul(shrink) + mu
    }
}

#[test]
fn epsilon_and_denoiser_adapters_give_the_exact_score() {
    // In f64, so that the 1/σ² of FromDenoiser at t = 1 (σ² = 1e-4) does not amplify f32
    // round-off.
    let data = gaussian_data();
    let x = f64_tensor(&values(gaussian_init(64, 1.0, 1)), [64, 2], &flex());
    let ddpm = Ddpm::linear(1000).unwrap();
    let vp = VpSde::ddpm();
    let levels = [
        ("DDPM t = 1", NoiseLevel::constant(&ddpm, 1.0, 64, &flex())),
        ("DDPM t = 500", NoiseLevel::constant(&ddpm, 500.0, 64, &flex())),
        ("VP t = 0.1", NoiseLevel::constant(&vp, 0.1, 64, &flex())),
        ("VP t = 1", NoiseLevel::constant(&vp, 1.0, 64, &flex())),
    ];
    for (name, level) in levels {
        let want = values(data.score(x.clone(), &level));
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (adapter, got) in [
            ("FromEpsilon", values(FromEpsilon(ExactEpsilon).score(x.clone(), &level))),
            ("FromDenoiser", values(FromDenoiser(ExactDenoiser).score(x.clone(), &level))),
        ] {
            let err = got.iter().zip(&want).fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
            eprintln!("{adapter} at {name}: max |s − s_exact| = {err:.2e} (|s| ≤ {scale:.2e})");
            assert!(err <= 1e-9 * scale.max(1.0), "{adapter} at {name}: {err}");
        }
    }
}

#[test]
fn ddpm_ancestral_samples_gaussian_data() {
    let want = gaussian_data().sample(N, &flex(), &mut rng(1));
    let model = FromEpsilon(ExactEpsilon);
    for (i, variance) in [DdpmVariance::Beta, DdpmVariance::BetaTilde].into_iter().enumerate() {
        let sampler = DdpmAncestral::new(Ddpm::linear(1000).unwrap(), variance);
        let got = run(&sampler, &model, gaussian_init(N, 1.0, 2 + i as u64), 4 + i as u64);
        assert_matches(&format!("DDPM ancestral σ² = {variance:?}"), got, want.clone());
    }
}

#[test]
fn ddpm_clipping_is_a_no_op_inside_the_range_and_bounds_the_output() {
    let model = FromEpsilon(ExactEpsilon);
    let ddpm = Ddpm::linear(200).unwrap();
    let plain = DdpmAncestral::new(ddpm.clone(), DdpmVariance::Beta);
    let wide = plain.clone().with_clip(-10.0, 10.0).unwrap();
    let a = values(run(&plain, &model, gaussian_init(200, 1.0, 1), 2));
    let b = values(run(&wide, &model, gaussian_init(200, 1.0, 1), 2));
    let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("DDPM with a clip range never reached: max difference {diff:.2e}");
    assert!(diff < 1e-3, "{diff}");
    let tight = plain.with_clip(-0.2, 0.2).unwrap();
    let c = values(run(&tight, &model, gaussian_init(200, 1.0, 1), 2));
    assert!(c.iter().all(|v| (-0.2 - 1e-6..=0.2 + 1e-6).contains(v)));
}

#[test]
fn ddim_samples_gaussian_data_and_is_deterministic_at_eta_zero() {
    let want = gaussian_data().sample(N, &flex(), &mut rng(1));
    let ddpm = Ddpm::linear(1000).unwrap();
    let eps_model = FromEpsilon(ExactEpsilon);
    let ddim = Ddim::new(ddpm.clone(), 100, 0.0).unwrap();
    let got = run(&ddim, &eps_model, gaussian_init(N, 1.0, 2), 3);
    let again = run(&ddim, &eps_model, gaussian_init(N, 1.0, 2), 999);
    assert_eq!(values(got.clone()), values(again), "η = 0 must not draw noise");
    assert_matches("DDIM η = 0, 100 steps, FromEpsilon", got, want.clone());

    let denoiser = FromDenoiser(ExactDenoiser);
    let got = run(&ddim, &denoiser, gaussian_init(N, 1.0, 4), 5);
    assert_matches("DDIM η = 0, 100 steps, FromDenoiser", got, want.clone());

    let stochastic = Ddim::new(ddpm, 250, 1.0).unwrap();
    let got = run(&stochastic, &eps_model, gaussian_init(N, 1.0, 6), 7);
    assert_matches("DDIM η = 1, 250 steps", got, want);
}

#[test]
fn clipped_ddim_at_eta_one_on_the_full_grid_is_clipped_ddpm_with_beta_tilde() {
    // DDIM's step is linear in (x̂₀, xₜ) with DDPM's posterior-mean coefficients when η = 1 and
    // the grid is every step, so clipping x̂₀ (and recomputing ε̂ from it) keeps the identity.
    let model = FromEpsilon(ExactEpsilon);
    let ddpm = Ddpm::linear(100).unwrap();
    let ancestral = DdpmAncestral::new(ddpm.clone(), DdpmVariance::BetaTilde);
    let ddim = Ddim::new(ddpm, 100, 1.0).unwrap();
    for (lo, hi) in [(-0.2, 0.2), (-0.5, 0.1)] {
        let a = values(run(
            &ancestral.clone().with_clip(lo, hi).unwrap(),
            &model,
            gaussian_init(200, 1.0, 1),
            2,
        ));
        let b = values(run(
            &ddim.clone().with_clip(lo, hi).unwrap(),
            &model,
            gaussian_init(200, 1.0, 1),
            2,
        ));
        let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("clip [{lo}, {hi}]: DDIM(η = 1) vs DDPM(β̃) max difference {diff:.2e}");
        assert!(diff < 1e-4, "{diff}");
        assert!(b.iter().all(|v| (lo - 1e-6..=hi + 1e-6).contains(v)), "DDIM left [{lo}, {hi}]");
        // The clip is active: the unclipped sampler leaves the range.
        let free = values(run(&ddim, &model, gaussian_init(200, 1.0, 1), 2));
        assert!(free.iter().any(|v| !(lo..=hi).contains(v)));
    }
}

/// Asserts that the energy distance rejects `got` against `want` (the tests above can fail).
fn assert_rejected(name: &str, got: Tensor<2>, want: Tensor<2>) {
    let (got, want) = (values(got), values(want));
    let observed = energy_distance(&got, &want, 2);
    let threshold = permutation_threshold(&got, &want, 2, 200, 0.01, 99);
    eprintln!("{name}: energy distance {observed:.5} (null 99% quantile {threshold:.5})");
    assert!(observed > threshold, "{name}: the energy test should reject");
}

#[test]
fn the_energy_test_rejects_wrong_samplers() {
    // The mixture's weights 0.5 : 0.3 : 0.2 sampled as 0.4 : 0.4 : 0.2 (exact VP reverse SDE
    // of the wrong mixture).
    let data = mixture();
    let wrong = GaussianMixture::new(&[0.4, 0.4, 0.2], data.means(), data.stds()).unwrap();
    let sampler =
        ReverseSde::new(VpSde::ddpm(), Predictor::ReverseDiffusion, Corrector::None, 250).unwrap();
    let got = run(&sampler, &wrong, gaussian_init(N, 1.0, 1), 2);
    assert_rejected(
        "VP reverse SDE of the wrong weights",
        got,
        data.sample(N, &flex(), &mut rng(3)),
    );
    // DDIM with 5 steps shrinks the variance of Gaussian data (0.16 → about 0.03).
    let ddim = Ddim::new(Ddpm::linear(1000).unwrap(), 5, 0.0).unwrap();
    let got = run(&ddim, &FromEpsilon(ExactEpsilon), gaussian_init(N, 1.0, 4), 5);
    assert_rejected("DDIM with 5 steps", got, gaussian_data().sample(N, &flex(), &mut rng(6)));
}

// ---------------------------------------------------------------------------------------------
// Typed errors, the observer and seeding, for every sampler.

/// A model that declares its sample shape.
struct Shaped<M>(M, Vec<usize>);

impl<M: ScoreModel<2>> ScoreModel<2> for Shaped<M> {
    fn score(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        self.0.score(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(self.1.clone())
    }
}

/// One small instance of every sampler.
fn every_sampler<M: ScoreModel<2>>() -> Vec<(&'static str, Box<dyn Sampler<M, 2>>)> {
    let ve = VeSde::new(0.01, 20.0).unwrap();
    let ddpm = Ddpm::linear(50).unwrap();
    vec![
        ("Langevin", Box::new(Langevin::new(0.01, 7).unwrap())),
        (
            "annealed Langevin",
            Box::new(
                AnnealedLangevin::ncsn(GeometricSigmas::new(0.1, 5.0, 3).unwrap(), 4, 1e-3)
                    .unwrap()
                    .with_final_denoise(true),
            ),
        ),
        ("reverse SDE", Box::new(ReverseSde::new(ve, Predictor::Ancestral, PC, 9).unwrap())),
        ("DDPM ancestral", Box::new(DdpmAncestral::new(ddpm.clone(), DdpmVariance::BetaTilde))),
        ("DDIM", Box::new(Ddim::new(ddpm, 6, 0.5).unwrap())),
    ]
}

#[test]
fn wrong_shapes_and_empty_batches_are_shape_mismatches() {
    let model = Shaped(gaussian_data(), vec![2]);
    for (name, sampler) in every_sampler() {
        for init in [Tensor::<2>::zeros([4, 3], &flex()), Tensor::<2>::zeros([0, 2], &flex())] {
            let err = sampler.sample(&model, init, &mut rng(0), &mut ()).unwrap_err();
            assert!(matches!(err, Error::ShapeMismatch { .. }), "{name}: {err}");
        }
    }
}

/// A model whose output has another shape (`true`) or another dtype (`false`) than its input.
struct WrongOutput(bool);

impl ScoreModel<2> for WrongOutput {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        if self.0 { x.narrow(1, 0, 1) } else { x.cast(burn::tensor::DType::F64) }
    }
}

#[test]
fn a_model_output_of_another_shape_or_dtype_is_a_typed_error() {
    for (name, sampler) in every_sampler() {
        let init = || Tensor::<2>::ones([4, 2], &flex());
        let err = sampler.sample(&WrongOutput(true), init(), &mut rng(0), &mut ()).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{name}: {err}");
        let err = sampler.sample(&WrongOutput(false), init(), &mut rng(0), &mut ()).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{name}: {err}");
    }
    // An f64 state given to an f32 network: refused before the network runs (it panicked).
    let mlp = scorefield::nn::ScoreMlpConfig::new(2).init(&flex());
    for (name, sampler) in every_sampler() {
        let init = Tensor::<2>::ones([4, 2], (&flex(), burn::tensor::DType::F64));
        let err = sampler.sample(&mlp, init, &mut rng(0), &mut ()).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{name}: {err}");
    }
}

#[test]
fn non_finite_initial_states_are_rejected() {
    let model = gaussian_data();
    for (name, sampler) in every_sampler() {
        for bad in [f32::NAN, f32::INFINITY] {
            let init =
                Tensor::<2>::from_data(TensorData::new(vec![0.0, bad, 1.0, 0.0], [2, 2]), &flex());
            let err = sampler.sample(&model, init, &mut rng(0), &mut ()).unwrap_err();
            assert!(
                matches!(&err, Error::NonFinite { context } if context.contains("initial")),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn a_diverging_sampler_stops_with_the_step_in_the_error() {
    // Langevin on N(μ, 0.16 I) with α = 100 multiplies x − μ by 1 − α/(2·0.16) ≈ −311 per
    // step (plus the noise √α·z): f32 overflows after about 15 steps.
    let sampler = Langevin::new(100.0, 1000).unwrap();
    let mut seen = 0;
    let mut observer = |_: &SampleStep<'_, 2>| {
        seen += 1;
        ControlFlow::Continue(())
    };
    let init = gaussian_init(8, 1.0, 1);
    let err = sampler.sample(&gaussian_data(), init, &mut rng(2), &mut observer).unwrap_err();
    eprintln!("diverging Langevin: {err} after {seen} reported steps");
    let step = format!("Langevin step {seen} ");
    assert!(matches!(&err, Error::NonFinite { context } if context.starts_with(&step)), "{err}");
    assert!((5..100).contains(&seen), "{seen}");
    // The same for annealed Langevin with ε = 10 (α = 10·σ_i²/σ_L² on N(μ, 0.16 + σ²)).
    let levels = GeometricSigmas::new(0.1, 5.0, 3).unwrap();
    let annealed = AnnealedLangevin::ncsn(levels, 100, 10.0).unwrap();
    let err = annealed.sample(&gaussian_data(), gaussian_init(8, 1.0, 1), &mut rng(2), &mut ());
    let err = err.unwrap_err();
    eprintln!("diverging annealed Langevin: {err}");
    assert!(matches!(&err, Error::NonFinite { context } if context.contains(" step ")), "{err}");
}

#[test]
fn the_observer_sees_every_step_and_can_stop_the_sampler() {
    let model = gaussian_data();
    // Langevin 7, annealed 3·4 + 1, reverse SDE 9, DDPM 50, DDIM 6.
    let expected = [7, 13, 9, 50, 6];
    for ((name, sampler), want) in every_sampler().into_iter().zip(expected) {
        let mut steps = Vec::new();
        let mut times = Vec::new();
        let mut observer = |s: &SampleStep<'_, 2>| {
            assert_eq!(s.total, want, "{name}");
            assert_eq!(s.x.dims(), [16, 2]);
            steps.push(s.step);
            times.push(s.t);
            ControlFlow::Continue(())
        };
        sampler.sample(&model, gaussian_init(16, 1.0, 1), &mut rng(2), &mut observer).unwrap();
        assert_eq!(steps, (0..want).collect::<Vec<_>>(), "{name}");
        assert!(
            times.windows(2).all(|w| w[1] <= w[0]),
            "{name}: time must not increase: {times:?}"
        );

        // Breaking after step 2 returns the state reached there, without an error.
        let mut last = None;
        let mut stop = |s: &SampleStep<'_, 2>| {
            last = Some(values(s.x.clone()));
            if s.step == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        };
        let x = sampler.sample(&model, gaussian_init(16, 1.0, 1), &mut rng(2), &mut stop);
        assert_eq!(Some(values(x.unwrap())), last, "{name}");
    }
}

#[test]
fn the_same_seed_gives_the_same_samples() {
    let model = gaussian_data();
    for (name, sampler) in every_sampler() {
        let draw = |seed| values(run(sampler.as_ref(), &model, gaussian_init(16, 1.0, 1), seed));
        assert_eq!(draw(3), draw(3), "{name}");
        assert_ne!(draw(3), draw(4), "{name}");
    }
}

fn invalid_name<T: core::fmt::Debug>(result: scorefield::Result<T>) -> &'static str {
    match result {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn invalid_parameters_are_rejected() {
    for step in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert_eq!(invalid_name(Langevin::new(step, 10)), "step_size");
    }
    assert_eq!(invalid_name(Langevin::new(0.1, 0)), "steps");
    assert_eq!(
        invalid_name(Langevin::new(0.1, 1).unwrap().at_level(&VpSde::ddpm(), f64::NAN)),
        "t"
    );

    let levels = GeometricSigmas::new(0.1, 5.0, 3).unwrap();
    assert_eq!(invalid_name(AnnealedLangevin::ncsn(levels, 10, 0.0)), "eps");
    assert_eq!(invalid_name(AnnealedLangevin::ncsn(levels, 10, -1e-3)), "eps");
    assert_eq!(invalid_name(AnnealedLangevin::ncsn(levels, 0, 1e-3)), "steps_per_level");
    assert_eq!(invalid_name(AnnealedLangevin::new(levels, &[], 10, 1e-3)), "times");
    assert_eq!(invalid_name(AnnealedLangevin::new(levels, &[0.2, 0.5], 10, 1e-3)), "times");
    assert_eq!(invalid_name(AnnealedLangevin::new(levels, &[0.5, f64::NAN], 10, 1e-3)), "times");
    // VeSde's σ(0) = 0: a level without noise has no α_i = ε σ_i²/σ_L².
    let ve = VeSde::new(0.01, 20.0).unwrap();
    assert_eq!(invalid_name(AnnealedLangevin::new(ve, &[1.0, 0.0], 10, 1e-3)), "sigma");

    let none = Corrector::None;
    assert_eq!(invalid_name(ReverseSde::new(ve, Predictor::EulerMaruyama, none, 0)), "steps");
    for snr in [0.0, -0.16, f64::NAN] {
        for corrector in
            [Corrector::Langevin { snr, steps: 1 }, Corrector::AnnealedLangevin { snr, steps: 1 }]
        {
            assert_eq!(
                invalid_name(ReverseSde::new(ve, Predictor::EulerMaruyama, corrector, 10)),
                "snr"
            );
        }
    }
    let idle = Corrector::Langevin { snr: 0.16, steps: 0 };
    assert_eq!(
        invalid_name(ReverseSde::new(ve, Predictor::EulerMaruyama, idle, 10)),
        "corrector steps"
    );
    // A grid of 11 points does not exist on a 10-step DDPM chain.
    let short = Ddpm::linear(10).unwrap();
    assert_eq!(
        invalid_name(ReverseSde::new(short.clone(), Predictor::EulerMaruyama, none, 10)),
        "n"
    );
    // Ancestral sampling needs m = 1 (VE) or m² + σ² = 1 (VP): sub-VP is neither.
    let sub_vp = SubVpSde::ddpm();
    assert_eq!(invalid_name(ReverseSde::new(sub_vp, Predictor::Ancestral, none, 10)), "predictor");
    assert!(ReverseSde::new(VpSde::ddpm(), Predictor::Ancestral, none, 10).is_ok());
    assert!(ReverseSde::new(short.clone(), Predictor::Ancestral, none, 9).is_ok());
    assert!(ReverseSde::new(GeometricSigmas::ncsn(), Predictor::Ancestral, none, 9).is_ok());

    for eta in [-0.1, 1.5, f64::NAN] {
        assert_eq!(invalid_name(Ddim::new(short.clone(), 5, eta)), "eta");
    }
    assert_eq!(invalid_name(Ddim::new(short.clone(), 0, 0.0)), "steps");
    assert_eq!(invalid_name(Ddim::new(short.clone(), 11, 0.0)), "n");
    let ancestral = DdpmAncestral::new(short.clone(), DdpmVariance::Beta);
    assert_eq!(invalid_name(ancestral.clone().with_clip(1.0, -1.0)), "lo");
    assert_eq!(invalid_name(ancestral.clone().with_clip(f64::NAN, 1.0)), "lo");
    assert_eq!(invalid_name(ancestral.with_clip(-1.0, f64::INFINITY)), "hi");
    let ddim = Ddim::new(short, 5, 0.0).unwrap();
    assert_eq!(invalid_name(ddim.clone().with_clip(0.5, 0.5)), "lo");
    assert_eq!(invalid_name(ddim.with_clip(-1.0, f64::NAN)), "hi");
}

// ---------------------------------------------------------------------------------------------
// The custom sampler of docs/custom_sampler.md, compiled and tested here. The module body
// (dedented by four spaces) must appear verbatim in the guide; a test checks that.

mod momentum {
    // custom_sampler.md: begin
    use burn::tensor::Tensor;
    use rand::RngCore;
    use scorefield::core::error::ensure_positive;
    use scorefield::random::standard_normal;
    use scorefield::sampler::check_finite;
    use scorefield::score::check_batch;
    use scorefield::{Error, NoiseLevel, Observer, Result, SampleStep, Sampler, ScoreModel};

    /// Underdamped ("kinetic") Langevin dynamics with momentum `v` and friction `γ`, at the
    /// clean level, with step `h` (symplectic Euler):
    ///
    /// ```text
    /// v ← (1 − γh)·v + h·s(x) + √(2γh)·z,   x ← x + h·v
    /// ```
    pub struct MomentumLangevin {
        /// The step `h > 0`.
        pub step: f64,
        /// The friction `γ > 0`; `γh < 1`.
        pub friction: f64,
        /// The number of steps.
        pub steps: usize,
    }

    impl<M: ScoreModel<D>, const D: usize> Sampler<M, D> for MomentumLangevin {
        fn sample(
            &self,
            model: &M,
            init: Tensor<D>,
            rng: &mut dyn RngCore,
            observer: &mut dyn Observer<D>,
        ) -> Result<Tensor<D>> {
            let (h, gamma) = (self.step, self.friction);
            ensure_positive("step", h)?;
            if !(gamma > 0.0 && gamma * h < 1.0) {
                return Err(Error::invalid("friction", gamma, "need γ > 0 and γh < 1"));
            }
            // One noise level per sample, and the model's sample shape if it declares one.
            let device = init.device();
            let level = NoiseLevel::clean(init.dims()[0], (&device, init.dtype()));
            check_batch("MomentumLangevin", &init, model.sample_shape().as_deref(), &level)?;
            let mut x = init;
            let mut v = x.zeros_like();
            for step in 0..self.steps {
                // All randomness from the caller's rng, in the state's dtype.
                let z = standard_normal(x.dims(), (&device, x.dtype()), rng);
                let s = model.score(x.clone(), &level);
                v = v.mul_scalar(1.0 - gamma * h)
                    + s.mul_scalar(h)
                    + z.mul_scalar((2.0 * gamma * h).sqrt());
                x = x + v.clone().mul_scalar(h);
                // Stop with a typed error as soon as the state is not finite.
                check_finite(&x, || format!("momentum Langevin step {step}"))?;
                let total = self.steps;
                let report = SampleStep { step, total, t: 0.0, sigma: 0.0, x: &x, denoised: None };
                if observer.on_step(&report).is_break() {
                    break;
                }
            }
            Ok(x)
        }
    }
    // custom_sampler.md: end
}

#[test]
fn the_custom_sampler_of_the_guide_samples_its_target() {
    use momentum::MomentumLangevin;
    // N(μ, 0.16 I) oscillates at ω = 1/s = 2.5; γ = 2 damps it at rate 1, so 600 steps of
    // h = 0.05 (t = 30) forget the start, and hω = 0.125 keeps the discretisation bias of the
    // variance below 1 %.
    let sampler = MomentumLangevin { step: 0.05, friction: 2.0, steps: 600 };
    let data = gaussian_data();
    let got = run(&sampler, &data, Tensor::zeros([N, 2], &flex()), 1);
    assert_matches("momentum Langevin (guide)", got, data.sample(N, &flex(), &mut rng(2)));
    let bad = MomentumLangevin { step: -0.1, friction: 2.0, steps: 10 };
    let err =
        bad.sample(&data, Tensor::<2>::zeros([4, 2], &flex()), &mut rng(3), &mut ()).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "step", .. }));
}

/// The code between `// custom_sampler.md: begin` and `// custom_sampler.md: end` in `source`,
/// dedented by four spaces.
fn guide_region(source: &str) -> String {
    let begin = source.find("// custom_sampler.md: begin\n").unwrap();
    let end = source.find("    // custom_sampler.md: end").unwrap();
    let body = &source[begin + "// custom_sampler.md: begin\n".len()..end];
    body.lines().map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l))).collect()
}

/// The bodies of the guide's compiled code blocks (fenced with exactly "```rust").
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line == "```rust" => current = Some(String::new()),
            Some(block) if line == "```" => blocks.push(std::mem::take(block)),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
        if line == "```" && current.as_ref().is_some_and(String::is_empty) {
            current = None;
        }
    }
    blocks
}

#[test]
fn the_guide_shows_the_tested_custom_samplers_line_for_line() {
    let guide = include_str!("../../docs/custom_sampler.md");
    let blocks = rust_blocks(guide);
    // In the guide's order: the custom step, then the custom sampler.
    let tested = [
        ("fast_samplers.rs", guide_region(include_str!("fast_samplers.rs"))),
        ("samplers.rs", guide_region(include_str!("samplers.rs"))),
    ];
    assert_eq!(
        blocks.len(),
        tested.len(),
        "docs/custom_sampler.md: one ```rust block per tested module"
    );
    for ((file, code), block) in tested.iter().zip(&blocks) {
        if code != block {
            let diff = code.lines().zip(block.lines()).position(|(a, b)| a != b);
            panic!(
                "docs/custom_sampler.md and tests/integration/{file} differ (first differing line {diff:?}; \
                 {} lines vs {})",
                code.lines().count(),
                block.lines().count()
            );
        }
    }
}

#[test]
fn the_guide_test_catches_a_one_line_difference() {
    let code = "fn a() {}\nfn b() {}\n";
    let guide = format!("text\n```rust\n{code}```\nmore\n```rust,ignore\nx\n```\n");
    assert_eq!(rust_blocks(&guide), [code]);
    let changed = guide.replace("fn b() {}", "fn c() {}");
    assert_ne!(rust_blocks(&changed), [code]);
}
