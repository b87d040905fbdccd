//! The step-and-driver solvers (Euler, Heun, Euler ancestral, DPM-Solver++ 2M / 2M SDE /
//! 3M SDE, UniPC) against exact oracles: convergence orders on the closed-form Gaussian flow,
//! exact mixture samples under VE and VP grids, batch-size invariance of per-sample noise,
//! the observer and finiteness cadence, and typed errors.

use std::ops::ControlFlow;

use burn::tensor::{DType, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::sampler::{
    DpmSolverPp2M, DpmSolverPp2MSde, DpmSolverPp3MSde, Driver, Euler, EulerAncestral, FiniteCheck,
    Grid, Heun, Node, PerSampleNoise, SdeSolverType, Step, UniPc, UniPcVariant, karras_sigmas,
};
use scorefield::schedule::{Karras, VpSde};
use scorefield::{Error, NoiseLevel, SampleStep, ScoreModel};

use crate::common::{flex, values};
use crate::stats::assert_same_distribution;

const MU: [f64; 3] = [0.5, -1.0, 2.0];
const S: [f64; 3] = [0.3, 0.7, 1.2];

/// The final state of the probability-flow ODE of `N(μ, diag s²)` in the σ-parameterisation:
/// `x̃(σ) = μ + (x̃(σ₀) − μ)·√((s² + σ²)/(s² + σ₀²))`, from `x̃₀` (rows of 3) at `σ₀` to `σ₁`.
fn exact_flow(x0: &[f64], sigma0: f64, sigma1: f64) -> Vec<f64> {
    x0.iter()
        .enumerate()
        .map(|(k, &x)| {
            let (mu, s2) = (MU[k % 3], S[k % 3] * S[k % 3]);
            mu + (x - mu) * ((s2 + sigma1 * sigma1) / (s2 + sigma0 * sigma0)).sqrt()
        })
        .collect()
}

/// Max error at the last node of `step` on `steps` Karras steps (ρ = 7) of `σ̃` from 10 to
/// 0.05, on EDM's schedule or on VP (where the state is `x = m·x̃`), in f64.
fn flow_error<St: Step<2>>(step: St, steps: usize, vp: bool) -> f64 {
    let (hi, lo) = (10.0, 0.05);
    let sigmas = karras_sigmas(steps + 1, lo, hi, 7.0).unwrap();
    let grid = if vp {
        Grid::from_sigmas(VpSde::new(0.1, 20.0).unwrap(), &sigmas).unwrap()
    } else {
        Grid::from_sigmas(Karras::edm(), &sigmas).unwrap()
    };
    let (first, last) = (grid.nodes()[0], *grid.nodes().last().unwrap());
    let x0_tilde: Vec<f64> = (0..12).map(|i| MU[i % 3] + hi * ((i as f64 * 0.77).sin())).collect();
    let init: Vec<f64> = x0_tilde.iter().map(|x| x * first.scale).collect();
    let init = Tensor::<2>::from_data(TensorData::new(init, [4, 3]), (&flex(), DType::F64));
    let data = Gaussian::diagonal(&MU, &S).unwrap();
    let driver = Driver::new(step, grid);
    let mut noise = PerSampleNoise::new(0, 4);
    let out = driver.run(&data, init, &mut noise, &mut ()).unwrap();
    let want = exact_flow(&x0_tilde, hi, last.sigma_tilde());
    let got = values(out.x);
    got.iter().zip(&want).map(|(g, w)| (g / last.scale - w).abs()).fold(0.0, f64::max)
}

/// `log₂(e_N/e_2N)` for N = 16 → 32 → 64, the observed orders.
fn orders<St: Step<2> + Clone>(step: St, vp: bool) -> Vec<f64> {
    let errors: Vec<f64> = [16, 32, 64].iter().map(|&n| flow_error(step.clone(), n, vp)).collect();
    errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect()
}

fn assert_order<St: Step<2> + Clone>(name: &str, step: St, want: f64) {
    for vp in [false, true] {
        let got = orders(step.clone(), vp);
        eprintln!("{name} ({}): observed orders {got:.3?}", if vp { "VP" } else { "VE" });
        let last = got[got.len() - 1];
        assert!((last - want).abs() < 0.3, "{name}: order {last} (want {want}), {got:?}");
    }
}

#[test]
fn deterministic_solvers_converge_at_their_order() {
    assert_order("Euler", Euler, 1.0);
    assert_order("Heun", Heun::default(), 2.0);
    assert_order("DPM-Solver++ 2M", DpmSolverPp2M, 2.0);
    assert_order(
        "DPM-Solver++ 2M SDE, η = 0",
        DpmSolverPp2MSde::new(0.0, 1.0, SdeSolverType::Midpoint).unwrap(),
        2.0,
    );
    // The reference implementations' 3M update weighs the second-difference term by φ₃
    // where the Taylor expansion needs 2φ₃ (see dpmpp_3m_sde.rs): second order; the exact
    // term gives third order.
    let reference = orders(DpmSolverPp3MSde::new(0.0, 1.0).unwrap(), false);
    eprintln!("DPM-Solver++ 3M (k-diffusion's term): observed orders {reference:.3?}");
    assert!(reference.iter().all(|&o| o < 2.5), "{reference:?}");
    // Its first two steps are first and second order (there is no history yet), which bounds
    // the global order by 2 as h → 0; over these step counts the bulk's third order shows.
    for vp in [false, true] {
        let taylor = orders(DpmSolverPp3MSde::new(0.0, 1.0).unwrap().with_taylor_term(true), vp);
        eprintln!("DPM-Solver++ 3M, η = 0, Taylor term (VP: {vp}): observed orders {taylor:.3?}");
        assert!(taylor.iter().all(|&o| o > 2.6), "{taylor:?}");
    }
    let unipc = |order, corrector| {
        UniPc::new(order, corrector, UniPcVariant::Bh2).unwrap().with_lower_order_final(false)
    };
    assert_order("UniP-1 (DDIM)", unipc(1, false), 1.0);
    assert_order("UniPC-1 (UniP-1 + UniC)", unipc(1, true), 2.0);
    assert_order("UniP-2", unipc(2, false), 2.0);
    assert_order("UniPC-2 (UniP-2 + UniC)", unipc(2, true), 3.0);
    assert_order(
        "UniPC-2 bh1",
        UniPc::new(2, true, UniPcVariant::Bh1).unwrap().with_lower_order_final(false),
        3.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Samples of a mixture

const N: usize = 800;

/// Four unequal components in 2-D.
fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.4, 0.3, 0.2, 0.1],
        &[vec![-1.5, -0.5], vec![1.5, 0.5], vec![0.0, 2.0], vec![1.0, -2.0]],
        &[0.5, 0.3, 0.6, 0.2],
    )
    .unwrap()
}

fn check_samples<St: Step<2>>(name: &str, step: St, grid: Grid, seed: u64) {
    let driver = Driver::new(step, grid);
    let mut noise = PerSampleNoise::new(seed, N);
    let init = driver.prior_sample([N, 2], &flex(), &mut noise).unwrap();
    let out = driver.run(&mixture(), init, &mut noise, &mut ()).unwrap();
    eprintln!("{name}: {} evaluations", out.evaluations);
    let want = mixture().sample(N, &flex(), &mut StdRng::seed_from_u64(seed + 1000));
    let (got, want) = (values(out.x), values(want));
    assert_same_distribution(name, &got, &want, 2, 0.01);
    assert_exact_moments(name, &got, &mixture());
}

/// The sample mean and covariance of `got` (rows of 2) within 4 standard errors of the
/// mixture's exact moments, the standard errors estimated from `got`.
fn assert_exact_moments(name: &str, got: &[f64], mixture: &GaussianMixture) {
    let n = (got.len() / 2) as f64;
    let w = mixture.weights();
    let mean: Vec<f64> =
        (0..2).map(|i| (0..w.len()).map(|k| w[k] * mixture.means()[k][i]).sum()).collect();
    let second = |i: usize, j: usize| -> f64 {
        (0..w.len())
            .map(|k| {
                let (m, s) = (&mixture.means()[k], mixture.stds()[k]);
                w[k] * (m[i] * m[j] + if i == j { s * s } else { 0.0 })
            })
            .sum()
    };
    let rows: Vec<&[f64]> = got.chunks(2).collect();
    let sample_mean: Vec<f64> =
        (0..2).map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / n).collect();
    for i in 0..2 {
        let var = rows.iter().map(|r| (r[i] - sample_mean[i]).powi(2)).sum::<f64>() / n;
        let se = (var / n).sqrt();
        assert!(
            (sample_mean[i] - mean[i]).abs() < 4.0 * se,
            "{name}: mean[{i}] {} vs {} (se {se})",
            sample_mean[i],
            mean[i]
        );
        for j in 0..=i {
            let exact = second(i, j) - mean[i] * mean[j];
            let terms: Vec<f64> =
                rows.iter().map(|r| (r[i] - sample_mean[i]) * (r[j] - sample_mean[j])).collect();
            let cov = terms.iter().sum::<f64>() / n;
            let se = (terms.iter().map(|t| (t - cov).powi(2)).sum::<f64>() / n / n).sqrt();
            assert!(
                (cov - exact).abs() < 4.0 * se,
                "{name}: cov[{i},{j}] {cov} vs {exact} (se {se})"
            );
        }
    }
}

fn ve_grid(n: usize) -> Grid {
    Grid::from_sigmas(Karras::edm(), &karras_sigmas(n, 0.002, 80.0, 7.0).unwrap())
        .unwrap()
        .with_zero()
}

fn vp_grid(n: usize) -> Grid {
    Grid::karras(VpSde::new(0.1, 20.0).unwrap(), n, 7.0).unwrap().with_zero()
}

#[test]
fn every_solver_samples_the_mixture_on_ve_and_vp_grids() {
    for (form, grid) in [("VE", ve_grid as fn(usize) -> Grid), ("VP", vp_grid)] {
        let name = |s: &str| format!("{s} ({form})");
        check_samples(&name("Euler, 100 steps"), Euler, grid(100), 1);
        check_samples(&name("Heun, 18 steps"), Heun::default(), grid(18), 2);
        let churn = Heun::with_churn(10.0, 0.05, 50.0, 1.003).unwrap();
        check_samples(&name("Heun with churn, 18 steps"), churn, grid(18), 3);
        check_samples(&name("Euler ancestral, 100 steps"), EulerAncestral::default(), grid(100), 4);
        check_samples(&name("DPM-Solver++ 2M, 15 steps"), DpmSolverPp2M, grid(15), 5);
        check_samples(
            &name("DPM-Solver++ 2M SDE, 30 steps"),
            DpmSolverPp2MSde::default(),
            grid(30),
            6,
        );
        check_samples(
            &name("DPM-Solver++ 3M SDE, 30 steps"),
            DpmSolverPp3MSde::default(),
            grid(30),
            7,
        );
        check_samples(&name("UniPC, 20 steps"), UniPc::default(), grid(20), 8);
    }
}

#[test]
fn sample_zero_does_not_depend_on_the_batch_size() {
    let grid = ve_grid(12);
    let first =
        |batch: usize, step: &dyn Fn(&Grid, &mut PerSampleNoise, Tensor<2>) -> Tensor<2>| {
            let mut noise = PerSampleNoise::new(42, batch);
            let init = Driver::new(Euler, grid.clone())
                .prior_sample([batch, 2], &flex(), &mut noise)
                .unwrap();
            values(step(&grid, &mut noise, init).narrow(0, 0, 1))
        };
    let sde = |g: &Grid, noise: &mut PerSampleNoise, init| {
        Driver::new(DpmSolverPp2MSde::default(), g.clone())
            .run(&mixture(), init, noise, &mut ())
            .unwrap()
            .x
    };
    let churn = |g: &Grid, noise: &mut PerSampleNoise, init| {
        let heun = Heun::with_churn(40.0, 0.05, 50.0, 1.003).unwrap();
        Driver::new(heun, g.clone()).run(&mixture(), init, noise, &mut ()).unwrap().x
    };
    assert_eq!(first(1, &sde), first(16, &sde));
    assert_eq!(first(1, &churn), first(16, &churn));
    assert_ne!(first(1, &sde), first(1, &churn));
}

// ---------------------------------------------------------------------------------------------
// The driver: evaluations, observer, finiteness cadence

#[test]
fn evaluations_follow_the_paper_counts() {
    let data = mixture();
    let count = |step: &dyn Fn(Grid) -> usize| step(ve_grid(18));
    // EDM: 18 levels and a final 0 → 17 Heun steps of 2 and a last Euler step: 35.
    assert_eq!(count(&|g| run(Heun::default(), g, &data)), 35);
    assert_eq!(count(&|g| run(DpmSolverPp2M, g, &data)), 18);
    assert_eq!(count(&|g| run(UniPc::default(), g, &data)), 18);
    assert_eq!(count(&|g| run(Euler, g, &data)), 18);
}

fn run<St: Step<2>>(step: St, grid: Grid, data: &GaussianMixture) -> usize {
    let mut noise = PerSampleNoise::new(0, 8);
    let driver = Driver::new(step, grid);
    let init = driver.prior_sample([8, 2], &flex(), &mut noise).unwrap();
    driver.run(data, init, &mut noise, &mut ()).unwrap().evaluations
}

#[test]
fn the_observer_sees_state_and_denoised_and_can_stop() {
    let grid = ve_grid(10);
    let driver = Driver::new(DpmSolverPp2M, grid.clone());
    let mut noise = PerSampleNoise::new(0, 8);
    let init = driver.prior_sample([8, 2], &flex(), &mut noise).unwrap();
    let mut seen = Vec::new();
    let mut observer = |s: &SampleStep<'_, 2>| {
        assert_eq!(s.total, 10);
        assert!(s.denoised.is_some());
        seen.push((s.step, s.sigma));
        if s.step == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    let out = driver.run(&mixture(), init, &mut noise, &mut observer).unwrap();
    assert!(out.stopped);
    assert_eq!(out.steps, 5);
    assert_eq!(seen.len(), 5);
    let sigmas = grid.sigmas();
    for (i, &(step, sigma)) in seen.iter().enumerate() {
        assert_eq!(step, i);
        assert_eq!(sigma, sigmas[i + 1]);
    }
}

/// A model whose denoised estimate blows up (`s = 1e38·x`): f32 overflows in the first step.
struct Exploding;

impl ScoreModel<2> for Exploding {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        x.mul_scalar(1e38)
    }
}

#[test]
fn a_diverging_run_names_its_step_at_every_cadence() {
    let init = Tensor::<2>::ones([4, 2], &flex());
    let grid = ve_grid(10);
    let err = Driver::new(Euler, grid.clone())
        .run(&Exploding, init.clone(), &mut PerSampleNoise::new(0, 4), &mut ())
        .unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { context } if context.starts_with("Euler step 0")),
        "{err}"
    );
    let at_end = Driver::new(Euler, grid.clone()).with_finite_check(FiniteCheck::AtEnd).unwrap();
    let err =
        at_end.run(&Exploding, init.clone(), &mut PerSampleNoise::new(0, 4), &mut ()).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { context } if context.starts_with("Euler step 9")),
        "{err}"
    );
    let every3 = Driver::new(Euler, grid).with_finite_check(FiniteCheck::Every(3)).unwrap();
    let err = every3.run(&Exploding, init, &mut PerSampleNoise::new(0, 4), &mut ()).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { context } if context.starts_with("Euler step 2")),
        "{err}"
    );
    assert!(Driver::new(Euler, ve_grid(3)).with_finite_check(FiniteCheck::Every(0)).is_err());
}

/// A model whose output has another shape, or another dtype, than its input.
struct Wrong(bool);

impl ScoreModel<2> for Wrong {
    fn score(&self, x: Tensor<2>, _level: &NoiseLevel) -> Tensor<2> {
        if self.0 { x.narrow(1, 0, 1) } else { x.cast(DType::F64) }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let init = Tensor::<2>::ones([4, 2], &flex());
    let run = |model: &Wrong| {
        Driver::new(Heun::default(), ve_grid(5)).run(
            model,
            init.clone(),
            &mut PerSampleNoise::new(0, 4),
            &mut (),
        )
    };
    // A step that moves between levels refuses a grid whose levels repeat.
    let node = Node { t: 1.0, scale: 1.0, sigma: 1.0 };
    let repeated = Grid::stationary(&[node], 3).unwrap();
    let err = Driver::new(Euler, repeated).run(
        &Wrong(true),
        init.clone(),
        &mut PerSampleNoise::new(0, 4),
        &mut (),
    );
    assert!(matches!(err, Err(Error::InvalidParameter { name: "grid", .. })), "{err:?}");
    assert!(matches!(run(&Wrong(true)), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(run(&Wrong(false)), Err(Error::DTypeMismatch { .. })));
    // Negative churn, an unsupported order, a bad η.
    assert!(matches!(
        Heun::with_churn(-1.0, 0.0, 1.0, 1.0),
        Err(Error::InvalidParameter { name: "s_churn", .. })
    ));
    assert!(matches!(Heun::with_churn(1.0, 2.0, 1.0, 1.0), Err(Error::InvalidParameter { .. })));
    assert!(matches!(
        UniPc::new(4, true, UniPcVariant::Bh2),
        Err(Error::InvalidParameter { name: "order", .. })
    ));
    assert!(matches!(
        EulerAncestral::new(-0.5, 1.0),
        Err(Error::InvalidParameter { name: "eta", .. })
    ));
    assert!(matches!(
        DpmSolverPp3MSde::new(f64::NAN, 1.0),
        Err(Error::InvalidParameter { name: "eta", .. })
    ));
    // Grids: empty, one point, not decreasing, σ ≤ 0 before the end, outside the schedule.
    let edm = Karras::edm;
    for sigmas in [&[][..], &[1.0], &[1.0, 2.0], &[1.0, 0.0, 0.5], &[1.0, -0.1], &[100.0, 1.0]] {
        let err = Grid::from_sigmas(edm(), sigmas).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{sigmas:?}: {err}");
    }
    let vp = VpSde::new(0.1, 20.0).unwrap();
    assert!(matches!(Grid::from_times(vp, &[1.2, 0.5]), Err(Error::InvalidParameter { .. })));
    assert!(matches!(Grid::from_times(vp, &[0.5, 1e-4]), Err(Error::InvalidParameter { .. })));
}

// ---------------------------------------------------------------------------------------------
// The custom step of docs/custom_sampler.md, compiled and tested here. The module body
// (dedented by four spaces) is one code block of the guide; a test checks that.

pub mod midpoint {
    // custom_sampler.md: begin
    use burn::tensor::Tensor;
    use scorefield::Result;
    use scorefield::sampler::{Step, StepContext, StepOutput};

    /// The explicit midpoint method on EDM's ODE `dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃`, with the
    /// midpoint taken in `ln σ̃` (k-diffusion's DPM-2):
    ///
    /// ```text
    /// d = (x̃ − D(x̃; σ̃ᵢ))/σ̃ᵢ,   σ̃ₘ = √(σ̃ᵢ·σ̃ᵢ₊₁),   x̃ₘ = x̃ + (σ̃ₘ − σ̃ᵢ)·d
    /// x̃ᵢ₊₁ = x̃ + (σ̃ᵢ₊₁ − σ̃ᵢ)·(x̃ₘ − D(x̃ₘ; σ̃ₘ))/σ̃ₘ        (an Euler step to σ̃ = 0)
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Midpoint;

    impl<const D: usize> Step<D> for Midpoint {
        type State = ();

        fn name(&self) -> &'static str {
            "midpoint"
        }

        fn step(
            &self,
            i: usize,
            x: Tensor<D>,
            ctx: &mut StepContext<'_, D>,
            _state: &mut (),
        ) -> Result<StepOutput<D>> {
            let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
            let denoised = ctx.denoise_at(&x, i)?;
            let d = (x.clone() - denoised.clone()).div_scalar(sigma);
            if next == 0.0 {
                return Ok(StepOutput { x: x + d.mul_scalar(-sigma), denoised });
            }
            // The midpoint is off the grid: ask the grid's schedule for its node.
            let mid = (sigma * next).sqrt();
            let x_mid = x.clone() + d.mul_scalar(mid - sigma);
            let d_mid =
                (x_mid.clone() - ctx.denoise(&x_mid, ctx.grid().node_at(mid)?)?).div_scalar(mid);
            Ok(StepOutput { x: x + d_mid.mul_scalar(next - sigma), denoised })
        }
    }
    // custom_sampler.md: end
}

#[test]
fn the_custom_step_of_the_guide_is_second_order_and_samples_the_mixture() {
    assert_order("midpoint (guide)", midpoint::Midpoint, 2.0);
    check_samples("midpoint (guide), 15 steps", midpoint::Midpoint, ve_grid(15), 9);
}
