//! The probability-flow ODE sampler and the ODE log-likelihood against exact oracles:
//! the closed-form flow of Gaussian data, true samples of a Gaussian mixture, and analytic
//! log-densities.
//!
//! For Gaussian data `N(μ, s² I)` the perturbed marginal is `N(m(t)μ, r(t)² I)` with
//! `r² = m²s² + σ²`, and the probability-flow ODE is affine: `y = x − m(t)μ` obeys
//! `y' = (f + ½g²/r²) y = (r'/r) y`, so `x_b = m_b μ + (r_b/r_a)(x_a − m_a μ)` between any two
//! times, on every schedule.

use std::cell::Cell;
use std::ops::ControlFlow;

use burn::tensor::{DType, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::core::likelihood::{
    DataScaling, Divergence, JacobianProbe, LogLikelihood, Probe, Vjp, log_likelihood,
};
use scorefield::sampler::{Ddim, OdeSolver, ProbabilityFlow, SampleStep, SolveStats};
use scorefield::schedule::{BetaSchedule, Ddpm, SubVpSde, VeSde, VpSde};
use scorefield::{Error, NoiseLevel, NoiseSchedule, Sampler, ScoreModel};

use crate::common::{f64_tensor, flex, values};
use crate::stats::{assert_moments_match, assert_same_distribution};

fn mixture() -> GaussianMixture {
    GaussianMixture::new(&[0.6, 0.4], &[vec![-1.5, 0.5], vec![1.5, -0.5]], &[0.5, 0.7]).unwrap()
}

fn vp() -> VpSde {
    VpSde::new(0.1, 20.0).unwrap()
}

fn ve() -> VeSde {
    VeSde::new(0.01, 50.0).unwrap()
}

/// `n × d` standard normal values times `scale`, from `seed`.
fn normal(n: usize, d: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * d)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            scale * z
        })
        .collect()
}

/// `[1.234e-5, …]`.
fn sci(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.3e}")).collect();
    format!("[{}]", parts.join(", "))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The closed-form flow of `N(μ, s² I)` from time `a` to time `b`.
fn gaussian_flow<S: NoiseSchedule>(
    s: &S,
    mean: &[f64],
    std: f64,
    x: &[f64],
    a: f64,
    b: f64,
) -> Vec<f64> {
    let r = |t: f64| {
        let m = s.marginal(t);
        (m.scale * m.scale * std * std + m.std * m.std).sqrt()
    };
    let (ma, mb) = (s.marginal(a).scale, s.marginal(b).scale);
    let d = mean.len();
    x.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mu = mean[i % d];
            mb * mu + r(b) / r(a) * (xi - ma * mu)
        })
        .collect()
}

fn sample_f64<S: NoiseSchedule, M: ScoreModel<2>>(
    pf: &ProbabilityFlow<S>,
    model: &M,
    x: &[f64],
    d: usize,
) -> (Vec<f64>, SolveStats) {
    let init = f64_tensor(x, [x.len() / d, d], &flex());
    let (out, stats) = pf.sample_with_stats(model, init, &mut ()).unwrap();
    (values(out), stats)
}

fn encode_f64<S: NoiseSchedule, M: ScoreModel<2>>(
    pf: &ProbabilityFlow<S>,
    model: &M,
    x: &[f64],
    d: usize,
) -> Vec<f64> {
    let init = f64_tensor(x, [x.len() / d, d], &flex());
    values(pf.encode(model, init, &mut ()).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Sampling

/// Samples of the probability-flow ODE from the prior, with the exact score of a mixture,
/// are indistinguishable from true samples (energy distance, moments), for VE, VP and sub-VP.
///
/// VP and sub-VP print nearly the same statistics from the same `x_T`, as they should: the
/// flow of `x/m` depends on the schedule only through `σ/m` (Karras et al. 2022), and the two
/// schedules differ in `σ/m` by a factor `√(1 − e^{−B})`, i.e. only near `t = ε`.
#[test]
fn probability_flow_samples_match_the_mixture_under_ve_vp_and_sub_vp() {
    fn check<S: NoiseSchedule + Clone>(name: &str, schedule: S) {
        let n = 1000;
        let device = flex();
        let m = mixture();
        let mut rng = StdRng::seed_from_u64(21);
        let init = schedule.prior_sample([n, 2], &device, &mut rng);
        let pf = ProbabilityFlow::new(schedule, OdeSolver::default()).unwrap();
        let (x, stats) = pf.sample_with_stats(&m, init, &mut ()).unwrap();
        let x = values(x);
        let truth = values(m.sample(n, &device, &mut StdRng::seed_from_u64(22)));
        eprintln!("{name}: {stats:?}");
        assert_same_distribution(name, &x, &truth, 2, 0.01);
        assert_moments_match(name, &x, &truth, 2, 4.0);
    }
    check("pf-ode ve", ve());
    check("pf-ode vp", vp());
    check("pf-ode sub-vp", SubVpSde::new(0.1, 20.0).unwrap());
}

#[test]
fn sampling_is_deterministic_and_decode_inverts_encode() {
    let device = flex();
    let m = mixture();
    let pf = ProbabilityFlow::new(vp(), OdeSolver::default()).unwrap();
    let init = vp().prior_sample([64, 2], &device, &mut StdRng::seed_from_u64(3));
    let a = pf.sample(&m, init.clone(), &mut StdRng::seed_from_u64(1), &mut ()).unwrap();
    let b = pf.sample(&m, init, &mut StdRng::seed_from_u64(2), &mut ()).unwrap();
    assert_eq!(values(a), values(b), "the rng must not change the output");

    let x0 = m.sample(64, &device, &mut StdRng::seed_from_u64(4));
    for (name, solver) in
        [("dormand-prince", OdeSolver::default()), ("rk4 × 200", OdeSolver::Rk4 { steps: 200 })]
    {
        let pf = ProbabilityFlow::new(vp(), solver).unwrap();
        let latent = pf.encode(&m, x0.clone(), &mut ()).unwrap();
        let back = pf.sample(&m, latent.clone(), &mut StdRng::seed_from_u64(0), &mut ()).unwrap();
        let err = max_abs_diff(&values(back), &values(x0.clone()));
        let moved = max_abs_diff(&values(latent), &values(x0.clone()));
        eprintln!("{name}: decode(encode(x)) max error {err:.2e} (latent moved {moved:.2})");
        assert!(err < 1e-3, "{name}: round trip error {err}");
        assert!(moved > 0.1);
    }
}

#[test]
fn observer_sees_every_step_from_t_max_to_eps() {
    let m = mixture();
    let init = vp().prior_sample([8, 2], &flex(), &mut StdRng::seed_from_u64(5));
    for solver in [OdeSolver::Heun { steps: 10 }, OdeSolver::default()] {
        let pf = ProbabilityFlow::new(vp(), solver).unwrap();
        let mut seen: Vec<(usize, usize, f64, f64)> = Vec::new();
        let mut observer = |s: &SampleStep<'_, 2>| {
            assert_eq!(s.x.dims(), [8, 2]);
            seen.push((s.step, s.total, s.t, s.sigma));
            ControlFlow::Continue(())
        };
        let (_, stats) = pf.sample_with_stats(&m, init.clone(), &mut observer).unwrap();
        assert_eq!(seen.len(), stats.steps);
        assert!(seen.iter().enumerate().all(|(i, s)| s.0 == i));
        assert!(seen.windows(2).all(|w| w[1].2 < w[0].2), "time must decrease");
        let last = seen.last().unwrap();
        assert_eq!(last.2, 1e-3, "the last step lands on ε");
        assert_eq!(last.1, stats.steps, "the last step knows the total");
        assert_eq!(last.3, vp().marginal(1e-3).std);
    }
    // An observer's break stops the solve after that step, without an error.
    let pf = ProbabilityFlow::new(vp(), OdeSolver::Euler { steps: 10 }).unwrap();
    let mut observer = |s: &SampleStep<'_, 2>| {
        if s.step == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    let (_, stats) = pf.sample_with_stats(&m, init, &mut observer).unwrap();
    assert_eq!(stats.steps, 4);
}

// ---------------------------------------------------------------------------------------------
// Solver accuracy against the closed-form Gaussian flow

/// Orders `log₂(e_N / e_2N)` of the final-state error of a solver against the closed form,
/// sampling (T → ε) and encoding (ε → T), in f64.
fn observed_orders<S: NoiseSchedule + Clone>(
    schedule: &S,
    solver: fn(usize) -> OdeSolver,
    steps: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let (mean, std) = ([1.0, -0.5], 0.5);
    let g = Gaussian::isotropic(&mean, std).unwrap();
    let (eps, t_max) = schedule.time_range();
    let x_t: Vec<f64> = normal(16, 2, schedule.prior_std(), 7);
    let x_0: Vec<f64> =
        normal(16, 2, std, 8).iter().enumerate().map(|(i, z)| z + mean[i % 2]).collect();
    let want_0 = gaussian_flow(schedule, &mean, std, &x_t, t_max, eps);
    let want_t = gaussian_flow(schedule, &mean, std, &x_0, eps, t_max);
    let (mut sample_err, mut encode_err) = (Vec::new(), Vec::new());
    for &n in steps {
        let pf = ProbabilityFlow::new(schedule.clone(), solver(n)).unwrap();
        sample_err.push(max_abs_diff(&sample_f64(&pf, &g, &x_t, 2).0, &want_0));
        encode_err.push(max_abs_diff(&encode_f64(&pf, &g, &x_0, 2), &want_t));
    }
    let orders = |e: &[f64]| e.windows(2).map(|w| (w[0] / w[1]).log2()).collect::<Vec<_>>();
    eprintln!("  sample errors {}, encode errors {}", sci(&sample_err), sci(&encode_err));
    (orders(&sample_err), orders(&encode_err))
}

/// A fixed-step solver by name, its constructor, the step counts and its order.
type SolverCase = (&'static str, fn(usize) -> OdeSolver, &'static [usize], f64);

#[test]
fn fixed_step_solvers_converge_at_their_order() {
    let cases: [SolverCase; 3] = [
        ("euler", |steps| OdeSolver::Euler { steps }, &[50, 100, 200, 400], 1.0),
        ("heun", |steps| OdeSolver::Heun { steps }, &[12, 25, 50, 100], 2.0),
        ("rk4", |steps| OdeSolver::Rk4 { steps }, &[6, 12, 25, 50], 4.0),
    ];
    for (name, solver, steps, order) in cases {
        for (schedule, (sample, encode)) in [
            ("vp", observed_orders(&vp(), solver, steps)),
            ("ve", observed_orders(&ve(), solver, steps)),
        ] {
            eprintln!(
                "{name} on {schedule}: observed orders sample {sample:.2?}, encode {encode:.2?}"
            );
            for p in [sample.last().unwrap(), encode.last().unwrap()] {
                assert!(
                    (p - order).abs() < 0.25 * order,
                    "{name} on {schedule}: order {p} vs {order}"
                );
            }
        }
    }
}

#[test]
fn dormand_prince_reports_evaluations_and_tighter_tolerances_cost_more_and_err_less() {
    let (mean, std) = ([1.0, -0.5], 0.5);
    let g = Gaussian::isotropic(&mean, std).unwrap();
    for (name, schedule) in [("vp", vp()), ("vp eps 1e-5", vp().with_eps(1e-5).unwrap())] {
        let x_t = normal(16, 2, 1.0, 9);
        let (eps, t_max) = schedule.time_range();
        let want = gaussian_flow(&schedule, &mean, std, &x_t, t_max, eps);
        let mut last: Option<(usize, f64)> = None;
        for tol in [1e-3, 1e-5, 1e-7] {
            let counting = Counting::new(&g);
            let pf = ProbabilityFlow::new(schedule, OdeSolver::dormand_prince(tol, tol)).unwrap();
            let (x, stats) = sample_f64(&pf, &counting, &x_t, 2);
            let err = max_abs_diff(&x, &want);
            eprintln!("{name} rtol = atol = {tol:.0e}: error {err:.2e}, {stats:?}");
            assert_eq!(stats.score_evaluations, counting.calls.get());
            // First-same-as-last: 6 evaluations per attempt, plus F(t₀) and the first-step probe.
            assert_eq!(stats.score_evaluations, 6 * (stats.steps + stats.rejected_steps) + 2);
            assert!(err < 100.0 * tol, "error {err} at tolerance {tol}");
            if let Some((evals, prev)) = last {
                assert!(stats.score_evaluations > evals && err < prev);
            }
            last = Some((stats.score_evaluations, err));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Likelihood

/// `log_likelihood` of a batch given as f64 values.
fn likelihood<M: JacobianProbe<2>, S: NoiseSchedule>(
    model: &M,
    schedule: &S,
    x: &[f64],
    d: usize,
    solver: &OdeSolver,
    divergence: Divergence,
    seed: u64,
) -> LogLikelihood<2> {
    let x = f64_tensor(x, [x.len() / d, d], &flex());
    let mut rng = StdRng::seed_from_u64(seed);
    log_likelihood(model, schedule, x, solver, divergence, &mut rng).unwrap()
}

/// For Gaussian data and its exact score, the ODE log-likelihood is the analytic log-density.
///
/// The ODE gives `log p_ε(x)`; the clean `log p_0` differs by `O(σ(ε)²/s²)` (< 1e-3 nats per
/// dimension here). The schedule's prior is not quite the true marginal at `T`,
/// `N(m_T μ, m_T² s² + σ_T²)`: the pointwise mismatch is `≈ m_T μ·x_T/σ_T² + O(s²/σ_T²)`, i.e.
/// `O(|μ|/σ_max)` for VE (`|x_T| ~ σ_max`) and `O(m_T |μ|)` for VP (`m_T = 6.6e-3`). With
/// `|μ| ≤ 0.3` and `s ≤ 1.5` it stays below 1e-2 nats per dimension, and the test checks that
/// it is the only discrepancy: with the true marginal as prior the agreement is to solver
/// accuracy.
#[test]
fn ode_log_likelihood_of_gaussian_data_is_its_analytic_log_density() {
    let g = Gaussian::diagonal(&[0.2, -0.3, 0.1], &[0.3, 1.0, 1.5]).unwrap();
    let mut x = values(g.sample(8, &flex(), &mut StdRng::seed_from_u64(10)));
    x[0] = 1.2; // one point three standard deviations out
    let d = 3;
    fn run<S: NoiseSchedule>(name: &str, s: &S, g: &Gaussian, x: &[f64], d: usize) {
        let device = flex();
        let solver = OdeSolver::dormand_prince(1e-7, 1e-7);
        let out = likelihood(g, s, x, d, &solver, Divergence::Exact, 0);
        let n = x.len() / d;
        let (eps, t_max) = s.time_range();
        let xs = f64_tensor(x, [n, d], &device);
        let clean = values(g.log_prob(xs.clone()));
        let at_eps = values(g.log_prob_at(xs, &NoiseLevel::constant(s, eps, n, &device)));
        let level_t = NoiseLevel::constant(s, t_max, n, &device);
        let true_prior = values(g.log_prob_at(out.latent.clone(), &level_t));
        let (got, delta) = (values(out.log_prob.clone()), values(out.delta_log_prob.clone()));
        let per_dim = |a: &[f64], b: &[f64]| max_abs_diff(a, b) / d as f64;
        let corrected: Vec<f64> = true_prior.iter().zip(&delta).map(|(p, q)| p + q).collect();
        let mismatch = per_dim(&values(out.prior_log_prob.clone()), &true_prior);
        let (e_clean, e_eps, e_exact) =
            (per_dim(&got, &clean), per_dim(&got, &at_eps), per_dim(&corrected, &at_eps));
        eprintln!(
            "{name}: |ode − log p_0| {e_clean:.2e}, |ode − log p_ε| {e_eps:.2e} (prior mismatch \
             {mismatch:.2e}), with the true prior {e_exact:.2e} nats/dim; {:?}",
            out.stats
        );
        assert!(e_clean < 1e-2 && e_eps < 1e-2, "{name}");
        assert!(e_eps <= mismatch + 1e-5, "{name}: more than the prior mismatch");
        assert!(e_exact < 1e-5, "{name}: {e_exact}");
    }
    run("vp", &vp(), &g, &x, d);
    run("ve", &ve(), &g, &x, d);
}

/// Hutchinson's estimate is unbiased: over many independent probe sets its mean agrees with
/// the exact divergence within its standard error. The mixture's Jacobian is not diagonal,
/// so neither probe has zero variance. Each sample is repeated `R` times in one batch, every
/// copy with its own probes.
#[test]
fn hutchinson_agrees_with_the_exact_divergence_within_its_standard_error() {
    let m = mixture();
    let (b, reps) = (4, 100);
    let x: Vec<f64> = values(m.sample(b, &flex(), &mut StdRng::seed_from_u64(12)));
    let solver = OdeSolver::dormand_prince(1e-6, 1e-6);
    let exact = values(likelihood(&m, &vp(), &x, 2, &solver, Divergence::Exact, 0).log_prob);
    let repeated: Vec<f64> = x.iter().copied().cycle().take(x.len() * reps).collect();
    for probe in [Probe::Gaussian, Probe::Rademacher] {
        let hutchinson = Divergence::Hutchinson { probe, probes: 1 };
        let est = values(likelihood(&m, &vp(), &repeated, 2, &solver, hutchinson, 13).log_prob);
        for i in 0..b {
            let xs: Vec<f64> = (0..reps).map(|r| est[r * b + i]).collect();
            let mean = xs.iter().sum::<f64>() / reps as f64;
            let sd =
                (xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (reps - 1) as f64).sqrt();
            let se = sd / (reps as f64).sqrt();
            eprintln!(
                "{probe:?} sample {i}: exact {:.4}, Hutchinson {mean:.4} ± {se:.4} (sd {sd:.3})",
                exact[i]
            );
            assert!(sd > 1e-3, "the probes must vary");
            assert!((mean - exact[i]).abs() < 3.5 * se, "{probe:?} sample {i}");
        }
    }
}

/// Reverse mode (`Vjp`, one backward pass) gives the same quadratic forms as forward mode.
#[test]
fn reverse_mode_divergence_equals_forward_mode() {
    let m = mixture();
    let x: Vec<f64> = values(m.sample(6, &flex(), &mut StdRng::seed_from_u64(14)));
    let solver = OdeSolver::Rk4 { steps: 40 };
    let cases = [
        ("exact", Divergence::Exact),
        ("hutchinson", Divergence::Hutchinson { probe: Probe::Rademacher, probes: 3 }),
    ];
    for (name, divergence) in cases {
        let forward = likelihood(&m, &vp(), &x, 2, &solver, divergence, 15);
        let reverse = likelihood(&Vjp(&m), &vp(), &x, 2, &solver, divergence, 15);
        assert!(!reverse.log_prob.is_autodiff());
        let err = max_abs_diff(&values(forward.log_prob), &values(reverse.log_prob));
        let latent = max_abs_diff(&values(forward.latent), &values(reverse.latent));
        eprintln!("{name}: |forward − reverse| log p {err:.2e}, latent {latent:.2e}");
        assert!(err < 1e-9 && latent < 1e-12, "{name}");
    }
    // An input on an autodiff device gives the same numbers, still on that device.
    let tracked = f64_tensor(&x, [6, 2], &flex().autodiff());
    let mut rng = StdRng::seed_from_u64(15);
    let exact = Divergence::Exact;
    let on_autodiff = log_likelihood(&Vjp(&m), &vp(), tracked, &solver, exact, &mut rng).unwrap();
    assert!(on_autodiff.log_prob.is_autodiff());
    let plain = likelihood(&m, &vp(), &x, 2, &solver, exact, 15);
    let err = max_abs_diff(&values(on_autodiff.log_prob), &values(plain.log_prob));
    assert!(err < 1e-9, "{err}");
    // f32 data works too.
    let x32 =
        Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -0.5, 1.0, 0.0], [2, 2]), &flex());
    let mut rng = StdRng::seed_from_u64(0);
    let out = log_likelihood(&Vjp(&m), &vp(), x32, &solver, Divergence::Exact, &mut rng).unwrap();
    assert_eq!(out.log_prob.dtype(), DType::F32);
}

/// Bits/dim bookkeeping, by hand. For `z ~ N(½, ¼ I)` in `[0, 1]` units at `z = (½, ½)`,
/// `log p_Z = −ln(2π·¼) = −ln(π/2) = −0.4515827`, so
/// `bpd = 0.4515827/(2 ln 2) + 8 = 8.3257481`. In `[−1, 1]` units `y = 2z − 1 ~ N(0, I)`,
/// `log p_Y(0) = −ln 2π = −1.8378771`, and `bpd = 1.8378771/(2 ln 2) + 7` is the same number:
/// rescaling moves `ln 2` per dimension between the density and the offset.
#[test]
fn bits_per_dim_bookkeeping_matches_a_hand_computed_case() {
    let unit = DataScaling::unit_interval(8).unwrap();
    let symmetric = DataScaling::symmetric(8).unwrap();
    assert_eq!(unit.offset_bits(), 8.0);
    assert_eq!(symmetric.offset_bits(), 7.0);
    assert_eq!(DataScaling::new(5, 4.0, 0.0).unwrap().offset_bits(), 3.0);
    assert_eq!(DataScaling::new(8, -0.5, 1.0).unwrap().offset_bits(), 9.0);
    // A uniform model over the data range is 8 bits whatever the units.
    assert_eq!(unit.bits_per_dim(0.0, 10), 8.0);
    assert!((symmetric.bits_per_dim(-10.0 * std::f64::consts::LN_2, 10) - 8.0).abs() < 1e-12);
    let hand = 8.325_748_064_736_159;
    assert!((unit.bits_per_dim(-0.451_582_705_289_454_8, 2) - hand).abs() < 1e-12);
    assert!((symmetric.bits_per_dim(-1.837_877_066_409_345_3, 2) - hand).abs() < 1e-12);

    // End to end: the ODE likelihood of the same point under both units.
    let solver = OdeSolver::default();
    let in_unit = Gaussian::isotropic(&[0.5, 0.5], 0.5).unwrap();
    let in_symmetric = Gaussian::isotropic(&[0.0, 0.0], 1.0).unwrap();
    let a = likelihood(&in_unit, &vp(), &[0.5, 0.5], 2, &solver, Divergence::Exact, 0);
    let b = likelihood(&in_symmetric, &vp(), &[0.0, 0.0], 2, &solver, Divergence::Exact, 0);
    let (bpd_a, bpd_b) = (values(a.bits_per_dim(&unit))[0], values(b.bits_per_dim(&symmetric))[0]);
    eprintln!("bits/dim: [0,1] units {bpd_a:.5}, [−1,1] units {bpd_b:.5}, by hand {hand:.5}");
    assert!((bpd_a - hand).abs() < 1e-3 && (bpd_b - hand).abs() < 1e-3);

    // Dequantisation puts every 8-bit value in its own cell.
    let ints: Vec<f64> = (0..=255).map(f64::from).collect();
    let images = f64_tensor(&ints.iter().map(|k| k / 255.0).collect::<Vec<_>>(), [1, 256], &flex());
    let mut rng = StdRng::seed_from_u64(16);
    for s in [unit, symmetric] {
        let y = values(s.dequantize(images.clone(), &mut rng));
        for (k, y) in ints.iter().zip(y) {
            let z = (y - s.shift()) / s.scale() * 256.0;
            assert_eq!(z.floor(), *k, "{s:?}: {y}");
        }
    }
    for (bits, scale, shift) in [(0, 1.0, 0.0), (25, 1.0, 0.0), (8, 0.0, 0.0), (8, f64::NAN, 0.0)] {
        assert!(matches!(
            DataScaling::new(bits, scale, shift),
            Err(Error::InvalidParameter { .. })
        ));
    }
    assert!(matches!(
        DataScaling::new(8, 1.0, f64::INFINITY),
        Err(Error::InvalidParameter { name: "shift", .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// DDIM

/// DDIM's state at `t = 1` from `x_T` (the grid always ends at step 1; its last step then
/// goes to `t = 0`).
fn ddim_at_step_one<M: ScoreModel<2>>(
    ddpm: &Ddpm,
    model: &M,
    x_t: &[f64],
    steps: usize,
) -> Vec<f64> {
    let ddim = Ddim::new(ddpm.clone(), steps, 0.0).unwrap();
    let mut at_one = None;
    let mut observer = |s: &SampleStep<'_, 2>| {
        if s.t == 1.0 {
            at_one = Some(values(s.x.clone()));
        }
        ControlFlow::Continue(())
    };
    let init = f64_tensor(x_t, [x_t.len() / 2, 2], &flex());
    ddim.sample(model, init, &mut StdRng::seed_from_u64(0), &mut observer).unwrap();
    at_one.expect("DDIM passes t = 1")
}

/// DDIM with η = 0 is a first-order discretisation of the probability-flow ODE: from the same
/// `x_T`, its state at `t = 1` converges to the ODE's as the number of steps grows.
///
/// For Gaussian data the reference is the closed-form flow, exact on the DDPM schedule too
/// (its rate is piecewise constant, `m` and `σ` continuous); for the mixture it is
/// `ProbabilityFlow` with RK4 on all 999 integer steps, which reads the rate inside each step
/// and so is as accurate as on a smooth schedule (checked against the closed form).
#[test]
fn ddim_with_eta_zero_converges_to_the_probability_flow_ode() {
    let ddpm = Ddpm::new(BetaSchedule::linear(), 1000).unwrap();
    let pf = ProbabilityFlow::new(ddpm.clone(), OdeSolver::Rk4 { steps: 999 }).unwrap();
    let (mean, std) = ([1.0, -0.5], 0.5);
    let g = Gaussian::isotropic(&mean, std).unwrap();
    let x_t = normal(32, 2, 1.0, 17);
    let exact = gaussian_flow(&ddpm, &mean, std, &x_t, 1000.0, 1.0);
    let (ode, _) = sample_f64(&pf, &g, &x_t, 2);
    let ode_err = max_abs_diff(&ode, &exact);
    eprintln!("PF-ODE (RK4 × 999) on DDPM vs the closed form: {ode_err:.2e}");
    assert!(ode_err < 1e-6);

    let steps = [10, 20, 40, 80, 160, 320];
    let gauss: Vec<f64> = steps
        .iter()
        .map(|&n| max_abs_diff(&ddim_at_step_one(&ddpm, &g, &x_t, n), &exact))
        .collect();
    eprintln!(
        "Gaussian: DDIM (η = 0) vs the exact PF-ODE at t = 1, {steps:?} steps: {}",
        sci(&gauss)
    );
    for w in gauss.windows(2) {
        let order = (w[0] / w[1]).log2();
        assert!((0.7..1.5).contains(&order), "not first order: {}", sci(&gauss));
    }

    let m = mixture();
    let (reference, _) = sample_f64(&pf, &m, &x_t, 2);
    let mix: Vec<f64> = steps
        .iter()
        .map(|&n| max_abs_diff(&ddim_at_step_one(&ddpm, &m, &x_t, n), &reference))
        .collect();
    eprintln!("mixture: DDIM (η = 0) vs the PF-ODE at t = 1, {steps:?} steps: {}", sci(&mix));
    assert!(mix.windows(2).all(|w| w[1] < 0.75 * w[0]), "{}", sci(&mix));
}

// ---------------------------------------------------------------------------------------------
// Typed errors

/// A model wrapper that declares a fixed sample shape and counts its calls.
struct Counting<M> {
    inner: M,
    calls: Cell<usize>,
    shape: Option<Vec<usize>>,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Counting { inner, calls: Cell::new(0), shape: None }
    }

    fn shaped(inner: M, shape: &[usize]) -> Self {
        Counting { inner, calls: Cell::new(0), shape: Some(shape.to_vec()) }
    }
}

impl<M: ScoreModel<2>> ScoreModel<2> for Counting<M> {
    fn score(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        self.calls.set(self.calls.get() + 1);
        self.inner.score(x, level)
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.shape.clone()
    }
}

/// A broken model: the wrong output shape, or NaN below a time, or a score computed off the
/// autodiff graph.
enum Broken {
    WrongShape,
    NanBelow(f64),
    OffGraph,
}

impl ScoreModel<2> for Broken {
    fn score(&self, x: Tensor<2>, level: &NoiseLevel) -> Tensor<2> {
        match self {
            Broken::WrongShape => x.narrow(1, 0, 1),
            Broken::NanBelow(t) => {
                let now = level.t.clone().try_into_vec_as::<f64>().unwrap()[0];
                if now < *t { x.mul_scalar(f64::NAN) } else { x.neg() }
            }
            Broken::OffGraph => {
                let data = x.clone().into_data();
                Tensor::from_data(data, (&x.device().inner(), x.dtype())).neg()
            }
        }
    }
}

#[test]
fn bad_solver_parameters_are_typed_errors() {
    let name = |r: Result<ProbabilityFlow<VpSde>, Error>| match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    let dp = |rtol, atol, max_steps, initial_step| OdeSolver::DormandPrince {
        rtol,
        atol,
        max_steps,
        initial_step,
    };
    assert_eq!(name(ProbabilityFlow::new(vp(), OdeSolver::Euler { steps: 0 })), "steps");
    assert_eq!(name(ProbabilityFlow::new(vp(), OdeSolver::Heun { steps: 0 })), "steps");
    assert_eq!(name(ProbabilityFlow::new(vp(), OdeSolver::Rk4 { steps: 0 })), "steps");
    for bad in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
        assert_eq!(name(ProbabilityFlow::new(vp(), dp(bad, 1e-5, 100, None))), "rtol");
        assert_eq!(name(ProbabilityFlow::new(vp(), dp(1e-5, bad, 100, None))), "atol");
        assert_eq!(
            name(ProbabilityFlow::new(vp(), dp(1e-5, 1e-5, 100, Some(bad)))),
            "initial_step"
        );
    }
    assert_eq!(name(ProbabilityFlow::new(vp(), dp(1e-5, 1e-5, 0, None))), "max_steps");

    let m = mixture();
    let x = vp().prior_sample([4, 2], &flex(), &mut StdRng::seed_from_u64(0));
    // More steps than a DDPM grid has points.
    let ddpm = Ddpm::new(BetaSchedule::linear(), 100).unwrap();
    let pf = ProbabilityFlow::new(ddpm, OdeSolver::Euler { steps: 100 }).unwrap();
    let err = pf.encode(&m, x.clone(), &mut ()).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "n", .. }), "{err}");
    // Running out of steps.
    let pf = ProbabilityFlow::new(vp(), dp(1e-9, 1e-9, 5, None)).unwrap();
    let err = pf.sample_with_stats(&m, x.clone(), &mut ()).unwrap_err();
    assert!(matches!(err, Error::SolverFailed { solver: "Dormand–Prince", .. }), "{err}");
    // Hutchinson without probes.
    let mut rng = StdRng::seed_from_u64(0);
    let zero = Divergence::Hutchinson { probe: Probe::Gaussian, probes: 0 };
    let err = log_likelihood(&m, &vp(), x.clone(), &OdeSolver::default(), zero, &mut rng);
    assert!(matches!(err, Err(Error::InvalidParameter { name: "probes", .. })));
    let err =
        log_likelihood(&m, &vp(), x, &OdeSolver::Heun { steps: 0 }, Divergence::Exact, &mut rng);
    assert!(matches!(err, Err(Error::InvalidParameter { name: "steps", .. })));
}

#[test]
fn bad_shapes_and_non_finite_values_are_typed_errors() {
    let device = flex();
    let m = Counting::shaped(mixture(), &[2]);
    let pf = ProbabilityFlow::new(vp(), OdeSolver::Euler { steps: 4 }).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let solver = OdeSolver::Euler { steps: 4 };
    let shape_error = |e: Error| assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let non_finite = |e: Error| assert!(matches!(e, Error::NonFinite { .. }), "{e}");

    let wide = Tensor::<2>::zeros([4, 3], &device);
    shape_error(pf.sample_with_stats(&m, wide.clone(), &mut ()).unwrap_err());
    shape_error(pf.encode(&m, wide.clone(), &mut ()).unwrap_err());
    shape_error(
        log_likelihood(&Vjp(&m), &vp(), wide, &solver, Divergence::Exact, &mut rng).unwrap_err(),
    );
    let empty = Tensor::<2>::zeros([0, 2], &device);
    shape_error(pf.sample_with_stats(&m, empty.clone(), &mut ()).unwrap_err());
    shape_error(
        log_likelihood(&mixture(), &vp(), empty, &solver, Divergence::Exact, &mut rng).unwrap_err(),
    );
    let x = Tensor::<2>::ones([4, 2], &device);
    shape_error(pf.sample_with_stats(&Broken::WrongShape, x.clone(), &mut ()).unwrap_err());
    shape_error(
        log_likelihood(
            &Vjp(Broken::WrongShape),
            &vp(),
            x.clone(),
            &solver,
            Divergence::Exact,
            &mut rng,
        )
        .unwrap_err(),
    );
    assert_eq!(m.calls.get(), 0, "bad input is rejected before the model runs");

    for bad in [f32::NAN, f32::INFINITY] {
        let x =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0, bad, 0.5], [2, 2]), &device);
        non_finite(pf.sample_with_stats(&m, x.clone(), &mut ()).unwrap_err());
        non_finite(pf.encode(&m, x.clone(), &mut ()).unwrap_err());
        non_finite(
            log_likelihood(&mixture(), &vp(), x, &solver, Divergence::Exact, &mut rng).unwrap_err(),
        );
    }
    // A model that turns NaN half-way: fixed-step and adaptive solvers stop with NonFinite.
    for solver in [OdeSolver::Rk4 { steps: 10 }, OdeSolver::default()] {
        let pf = ProbabilityFlow::new(vp(), solver).unwrap();
        non_finite(pf.sample_with_stats(&Broken::NanBelow(0.5), x.clone(), &mut ()).unwrap_err());
    }
    // A model off the autodiff graph cannot be probed in reverse mode.
    let err =
        log_likelihood(&Vjp(Broken::OffGraph), &vp(), x, &solver, Divergence::Exact, &mut rng);
    assert!(matches!(err, Err(Error::InvalidParameter { name: "model", .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Fixed-step solvers on the caller's times, run by the shared driver

/// Times from `T` to `ε` clustered towards `ε` (`tᵢ = ε + (T − ε)(1 − i/N)²`), not the
/// schedule's uniform grid.
fn quadratic_times<S: NoiseSchedule>(schedule: &S, n: usize) -> Vec<f64> {
    let (eps, t_max) = schedule.time_range();
    (0..=n).map(|i| eps + (t_max - eps) * (1.0 - i as f64 / n as f64).powi(2)).collect()
}

/// Heun and RK4 on the caller's quadratic times converge to the closed-form flow at their
/// orders, encoding undoes sampling ever more closely at (at least) the same rate, and the observer sees the caller's times and the exact denoised
/// estimate `E[x₀ | xₜ] = μ + m s²/(m² s² + σ²)·(xₜ − m μ)` of the state each step left.
#[test]
fn fixed_step_solvers_follow_the_callers_times() {
    let (mean, std) = ([1.0, -0.5], 0.5);
    let g = Gaussian::isotropic(&mean, std).unwrap();
    for (name, solver, order) in
        [("heun", OdeSolver::Heun { steps: 1 }, 2.0), ("rk4", OdeSolver::Rk4 { steps: 1 }, 4.0)]
    {
        let schedule = ve();
        let (eps, t_max) = schedule.time_range();
        let x_t = normal(16, 2, schedule.prior_std(), 9);
        let want = gaussian_flow(&schedule, &mean, std, &x_t, t_max, eps);
        let (mut errors, mut round_trips) = (Vec::new(), Vec::new());
        for n in [20, 40, 80] {
            let times = quadratic_times(&schedule, n);
            let pf = ProbabilityFlow::new(schedule, solver).unwrap().with_times(&times).unwrap();
            assert_eq!(pf.times().unwrap(), times);
            let (got, stats) = sample_f64(&pf, &g, &x_t, 2);
            assert_eq!(stats.steps, n);
            errors.push(max_abs_diff(&got, &want));
            // Encoding runs the same times backwards and undoes the sampling (up to the
            // error of both solves, largest on the long steps near T).
            let back = encode_f64(&pf, &g, &got, 2);
            round_trips.push(max_abs_diff(&back, &x_t) / schedule.prior_std());
        }
        let p = (errors[1] / errors[2]).log2();
        let q = (round_trips[1] / round_trips[2]).log2();
        eprintln!(
            "{name} on quadratic times: errors {} (order {p:.2}), round trips {} (order {q:.2})",
            sci(&errors),
            sci(&round_trips)
        );
        assert!((p - order).abs() < 0.25 * order, "{name}: order {p} vs {order}");
        assert!(q > 0.75 * order, "{name}: the round trip converges at order {q}");
    }

    // The observer: the caller's times, and the exact posterior mean before each step.
    let schedule = vp();
    let times = quadratic_times(&schedule, 8);
    let pf = ProbabilityFlow::new(schedule, OdeSolver::Euler { steps: 1 })
        .unwrap()
        .with_times(&times)
        .unwrap();
    let x_t = normal(4, 2, 1.0, 10);
    let mut prev = x_t.clone();
    let mut seen = Vec::new();
    let mut observer = |s: &SampleStep<'_, 2>| {
        let at = schedule.marginal(times[s.step]);
        let k = at.scale * std * std / (at.scale.powi(2) * std * std + at.std.powi(2));
        let want: Vec<f64> = prev
            .iter()
            .enumerate()
            .map(|(i, &x)| mean[i % 2] + k * (x - at.scale * mean[i % 2]))
            .collect();
        let got = values(s.denoised.expect("a fixed-step solve reports x̂₀").clone());
        assert!(max_abs_diff(&got, &want) < 1e-10, "step {}: x̂₀", s.step);
        prev = values(s.x.clone());
        seen.push(s.t);
        ControlFlow::Continue(())
    };
    pf.sample_with_stats(&g, f64_tensor(&x_t, [4, 2], &flex()), &mut observer).unwrap();
    assert_eq!(seen, times[1..]);
}

#[test]
fn bad_caller_times_are_typed_errors() {
    let heun = || ProbabilityFlow::new(vp(), OdeSolver::Heun { steps: 4 }).unwrap();
    let name = |r: Result<ProbabilityFlow<VpSde>, Error>| match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    assert_eq!(name(heun().with_times(&[1.0])), "times");
    assert_eq!(name(heun().with_times(&[])), "times");
    assert_eq!(name(heun().with_times(&[0.5, 0.5, 0.1])), "times");
    assert_eq!(name(heun().with_times(&[0.1, 0.5])), "times");
    assert_eq!(name(heun().with_times(&[1.5, 0.5])), "time");
    assert_eq!(name(heun().with_times(&[1.0, 0.0])), "time");
    assert_eq!(name(heun().with_times(&[f64::NAN, 0.5])), "time");
    let dp = ProbabilityFlow::new(vp(), OdeSolver::default()).unwrap();
    assert_eq!(name(dp.clone().with_times(&[1.0, 0.5])), "solver");
    assert!(matches!(dp.driver(), Err(Error::InvalidParameter { name: "solver", .. })));
}
