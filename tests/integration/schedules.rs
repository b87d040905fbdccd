//! Every schedule against its own SDE: the marginal `N(m(t)·x₀, σ(t)² I)` must solve
//! `m' = f(t)·m` and `(σ²)' = 2 f(t)·σ² + g(t)²` from `t = 0`, integrated numerically here
//! with RK4; and the discrete DDPM chain must converge to the VP SDE as its step count grows.

use approx::assert_relative_eq;
use scorefield::NoiseSchedule;
use scorefield::schedule::{BetaSchedule, Ddpm, GeometricSigmas, Karras, SubVpSde, VeSde, VpSde};

/// Integrates `m' = f m`, `Σ' = 2 f Σ + g²` with RK4 from 0 to each checkpoint and compares
/// with the schedule's closed-form marginal. Coefficients are sampled strictly inside each
/// step, so piecewise-constant rates (DDPM) are integrated exactly.
fn check_variance_ode<S: NoiseSchedule>(
    name: &str,
    s: &S,
    checkpoints: &[f64],
    steps_per_unit: f64,
) {
    let start = s.marginal(0.0);
    let (mut t, mut m, mut var) = (0.0, start.scale, start.std * start.std);
    for &target in checkpoints {
        let n = ((target - t) * steps_per_unit).ceil().max(1.0) as usize;
        let h = (target - t) / n as f64;
        for _ in 0..n {
            let inside = |tau: f64| tau.clamp(t + 1e-9 * h, t + h - 1e-9 * h);
            let rhs = |tau: f64, m: f64, v: f64| {
                let tau = inside(tau);
                let f = s.drift_coefficient(tau);
                let g = s.diffusion(tau);
                (f * m, 2.0 * f * v + g * g)
            };
            let k1 = rhs(t, m, var);
            let k2 = rhs(t + h / 2.0, m + h / 2.0 * k1.0, var + h / 2.0 * k1.1);
            let k3 = rhs(t + h / 2.0, m + h / 2.0 * k2.0, var + h / 2.0 * k2.1);
            let k4 = rhs(t + h, m + h * k3.0, var + h * k3.1);
            m += h / 6.0 * (k1.0 + 2.0 * k2.0 + 2.0 * k3.0 + k4.0);
            var += h / 6.0 * (k1.1 + 2.0 * k2.1 + 2.0 * k3.1 + k4.1);
            t += h;
        }
        let want = s.marginal(target);
        assert_relative_eq!(m, want.scale, max_relative = 1e-7, epsilon = 1e-12);
        assert_relative_eq!(var, want.std * want.std, max_relative = 1e-7, epsilon = 1e-12);
        eprintln!("{name} t = {target}: m = {m:.6e}, σ² = {var:.6e}");
    }
}

#[test]
fn vp_marginal_solves_its_variance_ode() {
    check_variance_ode("vp", &VpSde::new(0.1, 20.0).unwrap(), &[0.01, 0.1, 0.5, 1.0], 2000.0);
}

#[test]
fn sub_vp_marginal_solves_its_variance_ode() {
    check_variance_ode(
        "sub-vp",
        &SubVpSde::new(0.1, 20.0).unwrap(),
        &[0.01, 0.1, 0.5, 1.0],
        2000.0,
    );
}

#[test]
fn ve_and_geometric_marginals_solve_their_variance_odes() {
    check_variance_ode("ve", &VeSde::new(0.01, 50.0).unwrap(), &[0.1, 0.5, 1.0], 4000.0);
    let geometric = GeometricSigmas::ncsn();
    check_variance_ode("geometric", &geometric, &[0.1, 0.5, 1.0], 4000.0);
}

#[test]
fn karras_marginal_solves_its_variance_ode() {
    check_variance_ode("karras", &Karras::edm(), &[0.002, 1.0, 80.0], 50.0);
}

#[test]
fn ddpm_marginals_solve_the_piecewise_vp_ode() {
    for schedule in [BetaSchedule::linear(), BetaSchedule::cosine()] {
        let ddpm = Ddpm::new(schedule, 1000).unwrap();
        check_variance_ode("ddpm", &ddpm, &[1.0, 10.0, 250.5, 999.0, 1000.0], 256.0);
    }
}

#[test]
fn grids_run_from_the_largest_noise_to_the_smallest() {
    fn check<S: NoiseSchedule>(s: &S, n: usize) {
        let grid = s.grid(n).unwrap();
        let (t_min, t_max) = s.time_range();
        assert_eq!(grid.len(), n);
        assert_eq!(grid[0], t_max);
        assert_eq!(grid[n - 1], t_min);
        let stds: Vec<f64> =
            grid.iter().map(|&t| s.marginal(t).std / s.marginal(t).scale).collect();
        assert!(stds.windows(2).all(|w| w[0] > w[1]), "noise-to-signal not decreasing: {stds:?}");
    }
    check(&VpSde::new(0.1, 20.0).unwrap(), 50);
    check(&SubVpSde::new(0.1, 20.0).unwrap(), 50);
    check(&VeSde::new(0.01, 50.0).unwrap(), 50);
    check(&GeometricSigmas::ncsn(), 10);
    check(&Karras::edm(), 18);
    check(&Ddpm::new(BetaSchedule::linear(), 1000).unwrap(), 50);
    check(&Ddpm::new(BetaSchedule::linear(), 1000).unwrap(), 1000);
}

/// DDPM with `β_i = β_min/N + i/(N−1)·(β_max − β_min)/N` is the VP SDE's discretisation:
/// `ᾱ` at step `k = t·N` converges to `m(t)²` at rate `1/N`. The leading error comes from
/// `ln(1 − β) = −β − β²/2 − …`: `ln(ᾱ_k / m(t)²) ≈ −½ Σ βᵢ² ≈ −(1/2N) ∫₀ᵗ β(s)² ds`, so at
/// `t = 1` the relative error times `N` tends to `½ ∫₀¹ β² = (β_max³ − β_min³)/(6 (β_max − β_min))`.
#[test]
fn ddpm_chain_converges_to_the_vp_sde() {
    let (beta_min, beta_max) = (0.1, 20.0);
    let vp = VpSde::new(beta_min, beta_max).unwrap();
    let mut errors = Vec::new();
    for n in [100usize, 1000, 10_000] {
        let betas = vp.discrete_betas(n);
        let ddpm =
            Ddpm::new(BetaSchedule::Linear { beta_start: betas[0], beta_end: betas[n - 1] }, n)
                .unwrap();
        let mut worst: f64 = 0.0;
        for t in [0.1, 0.25, 0.5, 0.75, 1.0] {
            let k = (t * n as f64).round() as usize;
            let want = vp.marginal(t).scale.powi(2);
            worst = worst.max(((ddpm.alpha_bar(k) - want) / want).abs());
        }
        errors.push(worst);
    }
    eprintln!("max relative error of ᾱ against VP m(t)² for N = 100, 1000, 10000: {errors:?}");
    for pair in errors.windows(2) {
        let ratio = pair[0] / pair[1];
        assert!((7.0..13.0).contains(&ratio), "not first-order convergence: {errors:?}");
    }
    let predicted = (beta_max.powi(3) - beta_min.powi(3)) / (6.0 * (beta_max - beta_min));
    assert_relative_eq!(errors[2] * 10_000.0, predicted, max_relative = 0.03);
}
