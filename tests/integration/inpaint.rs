//! Imputation against the exact conditional of a Gaussian mixture: for known coordinates
//! `x_A = a`, `p(x_B | x_A = a)` is again a mixture (`GaussianMixture::conditional`), whose
//! exact samples and weights are the oracle for replacement and RePaint run with the
//! unconditional exact score.

use burn::tensor::{DType, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::GaussianMixture;
use scorefield::sampler::{
    Driver, EulerAncestral, Grid, Inpaint, NoiseSource, PerSampleNoise, karras_sigmas,
};
use scorefield::schedule::Karras;
use scorefield::{Error, NoiseLevel};

use crate::common::{f64_tensor, flex, values};
use crate::stats::{energy_distance, permutation_threshold};

const N: usize = 1000;
const LEVELS: usize = 100;
const RESAMPLES: usize = 20;

/// Three components in 3-D, overlapping in the known coordinate 0, apart in 1 and 2.
fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.5, 0.3, 0.2],
        &[vec![-1.0, -2.0, 0.0], vec![1.0, 2.0, 1.0], vec![0.5, 0.0, -2.0]],
        &[1.0, 1.0, 0.8],
    )
    .unwrap()
}

/// The known value of coordinate 0.
const A: f64 = 0.2;

/// The Bayes-rule oracle of the oracle: `log p(x_B | a) = log p(a, x_B) − log p_A(a)`, with
/// `p_A` the mixture's marginal on coordinate 0.
#[test]
fn the_conditional_mixture_is_bayes_rule() {
    let full = mixture();
    let cond = full.conditional(&[(0, A)]).unwrap();
    let marginal = GaussianMixture::new(
        full.weights(),
        &full.means().iter().map(|m| vec![m[0]]).collect::<Vec<_>>(),
        full.stds(),
    )
    .unwrap();
    let device = flex();
    let x_b = [[-2.0, 0.3], [1.5, 1.0], [0.2, -1.7], [3.0, 3.0]];
    let rows: Vec<f64> = x_b.iter().flat_map(|r| [A, r[0], r[1]]).collect();
    let joint = values(full.log_prob(f64_tensor(&rows, [4, 3], &device)));
    let flat: Vec<f64> = x_b.iter().flatten().copied().collect();
    let got = values(cond.log_prob(f64_tensor(&flat, [4, 2], &device)));
    let log_pa = values(marginal.log_prob(f64_tensor(&[A], [1, 1], &device)))[0];
    for (g, j) in got.iter().zip(&joint) {
        assert!((g - (j - log_pa)).abs() < 1e-9, "{g} vs {}", j - log_pa);
    }
    // Bad input.
    let invalid = |r: Result<GaussianMixture, Error>| match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    assert_eq!(invalid(full.conditional(&[(3, 0.0)])), "known coordinate");
    assert_eq!(invalid(full.conditional(&[(0, 0.0), (0, 1.0)])), "known coordinate");
    assert_eq!(invalid(full.conditional(&[(0, f64::NAN)])), "known value");
    assert_eq!(invalid(full.conditional(&[])), "known coordinates");
    assert_eq!(invalid(full.conditional(&[(0, 0.0), (1, 0.0), (2, 0.0)])), "known coordinates");
}

/// `E[rₖ(X)] = wₖ` for `X` drawn from a mixture: the mean responsibility of each component
/// over the samples and its standard error.
fn weight_estimates(mixture: &GaussianMixture, x: Tensor<2>) -> Vec<(f64, f64)> {
    let n = x.dims()[0];
    let level = NoiseLevel::clean(n, (&x.device(), x.dtype()));
    let r = values(mixture.responsibilities(x, &level));
    let k = mixture.weights().len();
    (0..k)
        .map(|c| {
            let col: Vec<f64> = (0..n).map(|i| r[i * k + c]).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (mean, (var / n as f64).sqrt())
        })
        .collect()
}

/// Imputes coordinates 1 and 2 with Euler ancestral (`levels` levels, σ̃ from 10 to 0.01,
/// then 0)
/// around `Inpaint` with `resamples`; returns the energy distance to exact conditional
/// samples, the null's 95 % quantile, and the weight estimates.
fn impute(levels: usize, resamples: usize, jump: usize, seed: u64) -> (f64, f64, Vec<(f64, f64)>) {
    let device = flex();
    let data = mixture();
    let cond = data.conditional(&[(0, A)]).unwrap();
    let known: Vec<f64> = (0..N).flat_map(|_| [A, 0.0, 0.0]).collect();
    let mask: Vec<f64> = (0..N).flat_map(|_| [1.0, 0.0, 0.0]).collect();
    let step = Inpaint::new(
        EulerAncestral::default(),
        f64_tensor(&known, [N, 3], &device),
        f64_tensor(&mask, [N, 3], &device),
    )
    .unwrap()
    .with_resampling(resamples, jump)
    .unwrap();
    let grid =
        Grid::from_sigmas(Karras::edm(), &karras_sigmas(levels, 0.01, 10.0, 7.0).unwrap()).unwrap();
    let driver = Driver::new(step, grid.with_zero());
    let mut noise = PerSampleNoise::new(seed, N);
    let z = noise.standard_normal(&Tensor::zeros([N, 3], (&device, DType::F64))).unwrap();
    let init = z.mul_scalar(driver.grid().nodes()[0].sigma);
    let out = driver.run(&data, init, &mut noise, &mut ()).unwrap();
    let x = values(out.x);
    assert!(x.chunks(3).all(|r| r[0] == A), "the known coordinate is held exactly");
    let imputed: Vec<f64> = x.chunks(3).flat_map(|r| [r[1], r[2]]).collect();
    let want = values(cond.sample(N, (&device, DType::F64), &mut StdRng::seed_from_u64(seed + 1)));
    let observed = energy_distance(&imputed, &want, 2);
    let threshold = permutation_threshold(&imputed, &want, 2, 200, 0.05, 99);
    let weights = weight_estimates(&cond, f64_tensor(&imputed, [N, 2], &device));
    (observed, threshold, weights)
}

/// RePaint (20 passes per step) imputes the exact conditional: indistinguishable from its
/// samples, and each component's weight within 4 standard errors. Replacement alone is
/// biased towards the unconditional weights: the test reports by how much.
#[test]
fn repaint_imputes_the_exact_conditional_and_replacement_is_biased() {
    let cond = mixture().conditional(&[(0, A)]).unwrap();
    let (observed, threshold, weights) = impute(LEVELS, RESAMPLES, 1, 7);
    eprintln!(
        "RePaint r = {RESAMPLES}: energy distance {observed:.5} (null 95 % {threshold:.5}); weights \
         {weights:.3?} vs exact {:.3?}",
        cond.weights()
    );
    assert!(observed <= threshold, "RePaint: energy distance {observed} > {threshold}");
    for ((got, se), want) in weights.iter().zip(cond.weights()) {
        assert!((got - want).abs() <= 4.0 * se, "RePaint weight {got} ± {se} vs {want}");
    }

    let (observed, threshold, weights) = impute(LEVELS, 1, 1, 7);
    eprintln!(
        "replacement: energy distance {observed:.5} = {:.1}× the null 95 % {threshold:.5}; \
         weights {weights:.3?} vs exact {:.3?} (unconditional {:.3?})",
        observed / threshold,
        cond.weights(),
        mixture().weights()
    );
    // Its bias is real on this mixture (measured: 11× the null's quantile, the weights
    // halfway to the unconditional ones).
    assert!(observed > threshold, "replacement was expected to be biased here");
}

#[test]
fn repaint_with_jumps_imputes_the_exact_conditional() {
    let (observed, threshold, _) = impute(LEVELS, 5, 5, 11);
    eprintln!("RePaint r = 5, jump 5: energy distance {observed:.5} (null 95 % {threshold:.5})");
    assert!(observed <= threshold, "RePaint with jumps: {observed} > {threshold}");
}

#[test]
fn bad_masks_are_typed_errors() {
    let device = flex();
    let known = f64_tensor(&[0.0; 6], [2, 3], &device);
    let wrong_shape = f64_tensor(&[1.0; 4], [2, 2], &device);
    let err = Inpaint::new(EulerAncestral::default(), known.clone(), wrong_shape).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let not_binary = f64_tensor(&[1.0, 0.5, 0.0, 1.0, 0.0, 0.0], [2, 3], &device);
    let err = Inpaint::new(EulerAncestral::default(), known.clone(), not_binary).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "mask", .. }), "{err}");
    let mask = f64_tensor(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [2, 3], &device);
    let nan = f64_tensor(&[f64::NAN, 0.0, 0.0, 0.0, 0.0, 0.0], [2, 3], &device);
    let err = Inpaint::new(EulerAncestral::default(), nan, mask.clone()).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    // A non-finite value where the mask is 0 is never used: allowed.
    let unused = f64_tensor(&[0.0, f64::NAN, 0.0, 0.0, 0.0, 0.0], [2, 3], &device);
    assert!(Inpaint::new(EulerAncestral::default(), unused, mask.clone()).is_ok());
    let step = Inpaint::new(EulerAncestral::default(), known, mask).unwrap();
    // Data of another batch size or float type than the state sampled: typed errors.
    let grid = Grid::from_sigmas(Karras::edm(), &[1.0, 0.5]).unwrap();
    let driver = Driver::new(step.clone(), grid);
    let m = mixture();
    let three = f64_tensor(&[0.0; 9], [3, 3], &device);
    let err = driver.run(&m, three, &mut PerSampleNoise::new(0, 3), &mut ()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let f32_state = Tensor::<2>::zeros([2, 3], &device);
    let err = driver.run(&m, f32_state, &mut PerSampleNoise::new(0, 2), &mut ()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. } | Error::DTypeMismatch { .. }), "{err}");
    let err = step.clone().with_resampling(0, 1).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "resamples", .. }));
    let err = step.with_resampling(2, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "jump", .. }));
}
