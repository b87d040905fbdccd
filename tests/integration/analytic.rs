//! The analytic oracles against independent numbers: finite differences of their own
//! log-density, 2-D quadrature of the perturbed density, and moments of their samples.

use approx::assert_relative_eq;
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::schedule::{Karras, VeSde, VpSde};
use scorefield::{Error, NoiseLevel, NoiseSchedule, ScoreJvp, ScoreModel};

use crate::common::{f64_tensor, flex, values};

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.2, 0.5, 0.3],
        &[vec![-1.0, 0.5], vec![1.5, -0.5], vec![0.0, 2.0]],
        &[0.4, 0.7, 0.3],
    )
    .unwrap()
}

/// Noise levels of several schedules (and the clean level) for a batch of `n`.
fn levels(n: usize) -> Vec<(&'static str, NoiseLevel)> {
    let device = flex();
    let clean = NoiseLevel::constant(&VeSde::new(0.01, 50.0).unwrap(), 0.0, n, &device);
    vec![
        ("clean", clean),
        ("vp t=0.3", NoiseLevel::constant(&VpSde::new(0.1, 20.0).unwrap(), 0.3, n, &device)),
        ("ve t=0.2", NoiseLevel::constant(&VeSde::new(0.01, 50.0).unwrap(), 0.2, n, &device)),
        ("karras σ=0.5", NoiseLevel::constant(&Karras::edm(), 0.5, n, &device)),
    ]
}

fn points(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..2 * n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            1.5 * z
        })
        .collect::<Vec<f64>>()
}

/// Central difference of `f` along coordinate `j` of every row, in f64.
fn central_difference(
    f: impl Fn(Tensor<2>) -> Vec<f64>,
    x: &[f64],
    n: usize,
    d: usize,
    j: usize,
    h: f64,
) -> Vec<f64> {
    let device = flex();
    let shift = |sign: f64| {
        let mut y = x.to_vec();
        for i in 0..n {
            y[i * d + j] += sign * h;
        }
        f(f64_tensor(&y, [n, d], &device))
    };
    let (plus, minus) = (shift(1.0), shift(-1.0));
    plus.iter().zip(&minus).map(|(p, m)| (p - m) / (2.0 * h)).collect()
}

#[test]
fn mixture_score_is_the_gradient_of_its_log_density() {
    let (n, d) = (16, 2);
    let x = points(n, 1);
    let m = mixture();
    for (name, level) in levels(n) {
        let score = values(m.score(f64_tensor(&x, [n, d], &flex()), &level));
        for j in 0..d {
            let fd = central_difference(|y| values(m.log_prob_at(y, &level)), &x, n, d, j, 1e-5);
            for i in 0..n {
                assert_relative_eq!(score[i * d + j], fd[i], epsilon = 1e-6, max_relative = 1e-6);
            }
        }
        eprintln!("{name}: score = ∇ log p to 1e-6");
    }
}

#[test]
fn mixture_jvp_is_the_directional_derivative_of_its_score() {
    let (n, d) = (16, 2);
    let x = points(n, 2);
    let v = points(n, 3);
    let device = flex();
    let m = mixture();
    for (_, level) in levels(n) {
        let (s, jvp) =
            m.score_jvp(f64_tensor(&x, [n, d], &device), &level, f64_tensor(&v, [n, d], &device));
        assert_eq!(values(s), values(m.score(f64_tensor(&x, [n, d], &device), &level)));
        let jvp = values(jvp);
        // J·v by central differences along v: (s(x + h v) − s(x − h v)) / 2h.
        let h = 1e-5;
        let along = |sign: f64| {
            let y: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + sign * h * b).collect();
            values(m.score(f64_tensor(&y, [n, d], &device), &level))
        };
        let (plus, minus) = (along(1.0), along(-1.0));
        for k in 0..n * d {
            let fd = (plus[k] - minus[k]) / (2.0 * h);
            assert_relative_eq!(jvp[k], fd, epsilon = 1e-6, max_relative = 1e-6);
        }
    }
}

#[test]
fn gaussian_jvp_and_score_match_finite_differences() {
    let (n, d) = (8, 3);
    let g = Gaussian::diagonal(&[0.5, -1.0, 2.0], &[0.3, 1.0, 2.5]).unwrap();
    let x = {
        let mut rng = StdRng::seed_from_u64(4);
        (0..n * d).map(|_| StandardNormal.sample(&mut rng)).collect::<Vec<f64>>()
    };
    let device = flex();
    let level = NoiseLevel::constant(&VpSde::new(0.1, 20.0).unwrap(), 0.6, n, &device);
    let score = values(g.score(f64_tensor(&x, [n, d], &device), &level));
    for j in 0..d {
        let fd = central_difference(|y| values(g.log_prob_at(y, &level)), &x, n, d, j, 1e-5);
        for i in 0..n {
            assert_relative_eq!(score[i * d + j], fd[i], epsilon = 1e-6, max_relative = 1e-6);
        }
    }
    // The Jacobian is diagonal: J·e_j picks −1/v_j.
    let e: Vec<f64> = (0..n * d).map(|k| if k % d == 1 { 1.0 } else { 0.0 }).collect();
    let (_, jvp) =
        g.score_jvp(f64_tensor(&x, [n, d], &device), &level, f64_tensor(&e, [n, d], &device));
    let vp = VpSde::new(0.1, 20.0).unwrap().marginal(0.6);
    let v1 = vp.scale.powi(2) * 1.0 + vp.std.powi(2);
    for (k, got) in values(jvp).into_iter().enumerate() {
        let want = if k % d == 1 { -1.0 / v1 } else { 0.0 };
        assert_relative_eq!(got, want, epsilon = 1e-6);
    }
}

#[test]
fn isotropic_gaussian_equals_a_one_component_mixture() {
    let (n, d) = (16, 2);
    let x = points(n, 5);
    let g = Gaussian::isotropic(&[0.7, -0.2], 0.6).unwrap();
    let m = GaussianMixture::new(&[1.0], &[vec![0.7, -0.2]], &[0.6]).unwrap();
    for (_, level) in levels(n) {
        let xs = || f64_tensor(&x, [n, d], &flex());
        for (a, b) in values(g.score(xs(), &level)).iter().zip(values(m.score(xs(), &level))) {
            assert_relative_eq!(*a, b, max_relative = 1e-9);
        }
        let (lg, lm) = (values(g.log_prob_at(xs(), &level)), values(m.log_prob_at(xs(), &level)));
        for (a, b) in lg.iter().zip(lm) {
            assert_relative_eq!(*a, b, max_relative = 1e-9);
        }
    }
}

/// The perturbed density integrates to 1 and has the moments of `m·x₀ + σ·z`:
/// mean `m·Σ wₖ μₖ` and second moment `m²·Σ wₖ (μₖ² + sₖ²) + σ²`, per coordinate.
#[test]
fn perturbed_mixture_density_has_the_moments_of_the_perturbed_data() {
    let m = mixture();
    let device = flex();
    let (lo, hi, cells) = (-12.0, 12.0, 400);
    let h = (hi - lo) / cells as f64;
    let mut grid = Vec::with_capacity(2 * cells * cells);
    for i in 0..cells {
        for j in 0..cells {
            grid.push(lo + (i as f64 + 0.5) * h);
            grid.push(lo + (j as f64 + 0.5) * h);
        }
    }
    let n = cells * cells;
    let vp = VpSde::new(0.1, 20.0).unwrap();
    for t in [0.0, 0.15, 0.4] {
        let marginal = vp.marginal(t);
        let level = NoiseLevel::constant(&vp, t, n, &device);
        let logp = values(m.log_prob_at(f64_tensor(&grid, [n, 2], &device), &level));
        let (mut mass, mut mean, mut second) = (0.0, [0.0; 2], [0.0; 2]);
        for (k, lp) in logp.iter().enumerate() {
            let p = lp.exp() * h * h;
            mass += p;
            for c in 0..2 {
                mean[c] += p * grid[2 * k + c];
                second[c] += p * grid[2 * k + c].powi(2);
            }
        }
        assert_relative_eq!(mass, 1.0, epsilon = 1e-6);
        for c in 0..2 {
            let mu: f64 = m.weights().iter().zip(m.means()).map(|(w, mu)| w * mu[c]).sum();
            let sq: f64 = (0..3)
                .map(|k| m.weights()[k] * (m.means()[k][c].powi(2) + m.stds()[k].powi(2)))
                .sum();
            assert_relative_eq!(mean[c], marginal.scale * mu, epsilon = 1e-5);
            assert_relative_eq!(
                second[c],
                marginal.scale.powi(2) * sq + marginal.std.powi(2),
                epsilon = 1e-4
            );
        }
    }
}

#[test]
fn mixture_samples_have_the_right_weights_and_moments() {
    let m = mixture();
    let mut rng = StdRng::seed_from_u64(7);
    let n = 20_000;
    let (x, comps) = m.sample_with_components(n, &flex(), &mut rng);
    let x = values(x);
    for (k, &w) in m.weights().iter().enumerate() {
        let freq = comps.iter().filter(|&&c| c == k).count() as f64 / n as f64;
        let se = (w * (1.0 - w) / n as f64).sqrt();
        assert!((freq - w).abs() < 4.0 * se, "component {k}: {freq} vs {w}");
        // Per-component mean and variance within 4 standard errors.
        let rows: Vec<&[f64]> =
            x.chunks(2).zip(&comps).filter(|(_, c)| **c == k).map(|(r, _)| r).collect();
        let nk = rows.len() as f64;
        for c in 0..2 {
            let mean = rows.iter().map(|r| r[c]).sum::<f64>() / nk;
            let var = rows.iter().map(|r| (r[c] - mean).powi(2)).sum::<f64>() / (nk - 1.0);
            let s2 = m.stds()[k].powi(2);
            assert!((mean - m.means()[k][c]).abs() < 4.0 * (s2 / nk).sqrt());
            assert!((var - s2).abs() < 4.0 * s2 * (2.0 / (nk - 1.0)).sqrt());
        }
    }
}

#[test]
fn gaussian_samples_have_the_right_moments() {
    let g = Gaussian::diagonal(&[1.0, -2.0], &[0.5, 2.0]).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let n = 20_000;
    let x = values(g.sample(n, &flex(), &mut rng));
    for c in 0..2 {
        let mean = x.iter().skip(c).step_by(2).sum::<f64>() / n as f64;
        let var =
            x.iter().skip(c).step_by(2).map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let s2 = g.std()[c].powi(2);
        assert!((mean - g.mean()[c]).abs() < 4.0 * (s2 / n as f64).sqrt());
        assert!((var - s2).abs() < 4.0 * s2 * (2.0 / (n - 1) as f64).sqrt());
    }
}

#[test]
fn oracles_validate_their_parameters() {
    use Error::*;
    assert!(matches!(Gaussian::isotropic(&[], 1.0), Err(InvalidParameter { name: "mean", .. })));
    assert!(matches!(Gaussian::isotropic(&[0.0], 0.0), Err(InvalidParameter { name: "std", .. })));
    assert!(matches!(
        Gaussian::isotropic(&[f64::NAN], 1.0),
        Err(InvalidParameter { name: "mean", .. })
    ));
    assert!(matches!(Gaussian::diagonal(&[0.0, 1.0], &[1.0]), Err(ShapeMismatch { .. })));
    let mean = vec![vec![0.0, 0.0]];
    assert!(matches!(
        GaussianMixture::new(&[], &[], &[]),
        Err(InvalidParameter { name: "weights", .. })
    ));
    assert!(matches!(GaussianMixture::new(&[1.0], &mean, &[]), Err(ShapeMismatch { .. })));
    assert!(matches!(
        GaussianMixture::new(&[1.0], &[vec![]], &[1.0]),
        Err(InvalidParameter { name: "means", .. })
    ));
    assert!(matches!(
        GaussianMixture::new(&[0.5, 0.5], &[vec![0.0, 0.0], vec![1.0]], &[1.0, 1.0]),
        Err(ShapeMismatch { .. })
    ));
    assert!(matches!(
        GaussianMixture::new(&[-1.0], &mean, &[1.0]),
        Err(InvalidParameter { name: "weights", .. })
    ));
    assert!(matches!(
        GaussianMixture::new(&[1.0], &[vec![f64::INFINITY, 0.0]], &[1.0]),
        Err(InvalidParameter { name: "means", .. })
    ));
    assert!(matches!(
        GaussianMixture::new(&[1.0], &mean, &[f64::NAN]),
        Err(InvalidParameter { name: "stds", .. })
    ));
    // Weights are normalised.
    let m = GaussianMixture::new(&[2.0, 6.0], &[vec![0.0], vec![1.0]], &[1.0, 1.0]).unwrap();
    assert_eq!(m.weights(), &[0.25, 0.75]);
}
