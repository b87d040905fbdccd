//! Conditioning and classifier-free guidance against exact oracles: the components of a
//! Gaussian mixture as classes, whose class-conditional scores are exact.

use burn::tensor::{DType, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::condition::{ClassifierFree, ConditionalScoreModel, Given, Labels};
use scorefield::guidance::ClassifierGuidance;
use scorefield::sampler::{
    Driver, EulerAncestral, Grid, NoiseSource, PerSampleNoise, karras_sigmas,
};
use scorefield::schedule::{Karras, VpSde};
use scorefield::{Error, NoiseLevel, ScoreModel};

use crate::common::{f64_tensor, flex, values};
use crate::stats::assert_same_distribution;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        &[0.6, 0.3, 0.1],
        &[vec![-2.0, 0.0], vec![2.0, 1.0], vec![0.0, -2.5]],
        &[0.5, 0.8, 0.4],
    )
    .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A batch of 6 points at mixed VP levels, labels 0, 1, 2, ∅, 2, 0.
fn batch() -> (Tensor<2>, NoiseLevel, Labels) {
    let device = flex();
    let x = f64_tensor(
        &[0.3, -0.2, 1.5, 2.0, -1.0, 0.4, 0.0, 0.0, 2.2, -1.9, -3.0, 1.1],
        [6, 2],
        &device,
    );
    let times = [0.05, 0.2, 0.5, 0.8, 0.95, 0.01];
    let level = NoiseLevel::at_times(&VpSde::ddpm(), &times, (&device, DType::F64));
    let labels = Labels::new(vec![Some(0), Some(1), Some(2), None, Some(2), Some(0)], 3).unwrap();
    (x, level, labels)
}

/// The class-conditional score of the mixture is its component's exact perturbed score, and
/// the null class is the mixture's score.
#[test]
fn the_mixture_components_are_exact_class_conditionals() {
    let (x, level, labels) = batch();
    let m = mixture();
    let got = values(m.score_given(x.clone(), &level, &labels));
    let unconditional = values(m.score(x.clone(), &level));
    let rows = values(x.clone());
    let sigma = values(level.sigma.clone());
    let scale = values(level.scale.clone());
    for (i, label) in labels.ids().iter().enumerate() {
        let want: Vec<f64> = match label {
            Some(k) => {
                let g = Gaussian::isotropic(&m.means()[*k], m.stds()[*k]).unwrap();
                // The component's perturbed score, −(x − m·μ)/(m²s² + σ²), by hand.
                let v = scale[i].powi(2) * g.std()[0].powi(2) + sigma[i].powi(2);
                (0..2).map(|j| -(rows[2 * i + j] - scale[i] * g.mean()[j]) / v).collect()
            }
            None => unconditional[2 * i..2 * i + 2].to_vec(),
        };
        let diff = max_abs_diff(&got[2 * i..2 * i + 2], &want);
        assert!(diff < 1e-12, "sample {i} ({label:?}): {diff}");
    }
}

/// CFG at w = 0 is the unconditional model and at w = 1 the conditional one, to float
/// tolerance; at w = 3 it is the affine combination; outside its σ interval it is the
/// conditional model.
#[test]
fn classifier_free_guidance_interpolates_exactly() {
    let (x, level, labels) = batch();
    let m = mixture();
    let cond = values(m.score_given(x.clone(), &level, &labels));
    let uncond = values(m.score_given(x.clone(), &level, &labels.to_null()));
    let at = |w: f64| {
        values(ClassifierFree::new(mixture(), w).unwrap().score_given(x.clone(), &level, &labels))
    };
    assert!(max_abs_diff(&at(0.0), &uncond) < 1e-12);
    assert!(max_abs_diff(&at(1.0), &cond) < 1e-12);
    let want: Vec<f64> = uncond.iter().zip(&cond).map(|(u, c)| u + 3.0 * (c - u)).collect();
    assert!(max_abs_diff(&at(3.0), &want) < 1e-10);

    // Guidance only where σ̃ ∈ [0.5, 2]: per sample, the guided or the plain conditional score.
    let cfg = ClassifierFree::new(mixture(), 3.0).unwrap().with_interval(0.5, 2.0).unwrap();
    let got = values(cfg.score_given(x.clone(), &level, &labels));
    let sigma = values(level.sigma.clone());
    let scale = values(level.scale.clone());
    let mut inside = 0;
    for i in 0..6 {
        let s = sigma[i] / scale[i];
        let w = if (0.5..=2.0).contains(&s) { 3.0 } else { 1.0 };
        inside += usize::from(w == 3.0);
        for j in 0..2 {
            let k = 2 * i + j;
            let want = uncond[k] + w * (cond[k] - uncond[k]);
            assert!((got[k] - want).abs() < 1e-10, "sample {i} (σ̃ = {s}): {} vs {want}", got[k]);
        }
    }
    assert!(inside > 0 && inside < 6, "the batch straddles the interval ({inside} inside)");

    // Autoguidance with the model itself as the "weak" one is the model, whatever w.
    let auto = ClassifierFree::autoguidance(mixture(), mixture(), 5.0).unwrap();
    assert!(max_abs_diff(&values(auto.score_given(x, &level, &labels)), &cond) < 1e-10);
}

/// Autoguidance of two unconditional models is the exact score of the tilted density
/// `p_w ∝ p^w / p_weak^(w−1)`: for Gaussians of one mean μ, at a level (m, σ), the Gaussian of
/// precision `w/(m²a² + σ²) − (w − 1)/(m²b² + σ²)` about `m·μ`. At a clean level it is
/// checked against `Gaussian`'s own score, at mixed noisy levels (with a σ interval, outside
/// which the score is the model's) against that closed form by hand.
#[test]
fn unconditional_autoguidance_is_the_score_of_the_tilted_gaussian() {
    let mean = [1.0, -0.5];
    let (a, b) = (0.6, 0.9);
    let good = Gaussian::isotropic(&mean, a).unwrap();
    let weak = Gaussian::isotropic(&mean, b).unwrap();
    let x = x_clean();
    let clean = NoiseLevel::clean(3, (&flex(), DType::F64));
    for w in [0.0, 1.0, 2.0, 3.5] {
        let guided = ClassifierFree::autoguidance(good.clone(), weak.clone(), w).unwrap();
        let precision = w / (a * a) - (w - 1.0) / (b * b);
        let tilted = Gaussian::isotropic(&mean, precision.recip().sqrt()).unwrap();
        let got = values(ScoreModel::score(&guided, x.clone(), &clean));
        let want = values(tilted.score(x.clone(), &clean));
        assert!(max_abs_diff(&got, &want) < 1e-12, "w = {w}");
    }

    let (x, level, _) = batch();
    let w = 2.5;
    let guided = ClassifierFree::autoguidance(good.clone(), weak, w)
        .unwrap()
        .with_interval(0.5, 2.0)
        .unwrap();
    let got = values(ScoreModel::score(&guided, x.clone(), &level));
    let (rows, sigma, scale) = (values(x), values(level.sigma.clone()), values(level.scale));
    let mut inside = 0;
    for i in 0..6 {
        let (m, s) = (scale[i], sigma[i]);
        let (va, vb) = (m * m * a * a + s * s, m * m * b * b + s * s);
        let guiding = (0.5..=2.0).contains(&(s / m));
        inside += usize::from(guiding);
        let precision = if guiding { w / va - (w - 1.0) / vb } else { 1.0 / va };
        for j in 0..2 {
            let want = -(rows[2 * i + j] - m * mean[j]) * precision;
            let k = 2 * i + j;
            assert!((got[k] - want).abs() < 1e-10, "sample {i}: {} vs {want}", got[k]);
        }
    }
    assert!(inside > 0 && inside < 6, "the batch straddles the interval ({inside} inside)");

    // Without a weak model an unconditional model is its own null class: its score.
    let plain = values(ScoreModel::score(
        &ClassifierFree::new(good.clone(), 3.0).unwrap(),
        x_clean(),
        &clean,
    ));
    assert!(max_abs_diff(&plain, &values(good.score(x_clean(), &clean))) < 1e-15);
}

/// Three 2-D points in f64.
fn x_clean() -> Tensor<2> {
    f64_tensor(&[0.3, -0.2, 1.5, 2.0, -1.0, 0.4], [3, 2], &flex())
}

/// Sampling the mixture given class k with the driver reproduces component k: the energy
/// test against exact samples of N(μₖ, sₖ² I).
#[test]
fn conditional_sampling_reproduces_the_component() {
    let device = flex();
    let n = 800;
    let m = mixture();
    let grid = Grid::from_sigmas(Karras::edm(), &karras_sigmas(60, 0.01, 10.0, 7.0).unwrap())
        .unwrap()
        .with_zero();
    for k in [1, 2] {
        let model = Given::new(mixture(), Labels::all(k, n, 3).unwrap()).unwrap();
        let driver = Driver::new(EulerAncestral::default(), grid.clone());
        let mut noise = PerSampleNoise::new(20 + k as u64, n);
        let zeros = Tensor::<2>::zeros([n, 2], (&device, DType::F64));
        let z = noise.standard_normal(&zeros).unwrap();
        let init = z.mul_scalar(grid.nodes()[0].sigma);
        let got = values(driver.run(&model, init, &mut noise, &mut ()).unwrap().x);
        let component = Gaussian::isotropic(&m.means()[k], m.stds()[k]).unwrap();
        let want = values(component.sample(
            n,
            (&device, DType::F64),
            &mut StdRng::seed_from_u64(k as u64),
        ));
        assert_same_distribution(&format!("class {k}"), &got, &want, 2, 0.01);
    }
}

/// Classifier guidance with the exact noise-conditional classifier (the log responsibility,
/// differentiated by backprop with respect to the input) at `w = 1` is the exact
/// class-conditional score; at `w = 0`, and for the null class, the unconditional one.
#[test]
fn classifier_guidance_with_the_exact_classifier_is_the_exact_conditional_score() {
    let (x, level, labels) = batch();
    let m = mixture();
    let cond = values(m.score_given(x.clone(), &level, &labels));
    let uncond = values(m.score(x.clone(), &level));
    let at = |w: f64| {
        let guided = ClassifierGuidance::new(mixture(), mixture(), w).unwrap();
        values(guided.score_given(x.clone(), &level, &labels))
    };
    let one = at(1.0);
    assert!(max_abs_diff(&one, &cond) < 1e-9, "w = 1: {}", max_abs_diff(&one, &cond));
    assert!(max_abs_diff(&at(0.0), &uncond) < 1e-12);
    // w = 2: s + 2(s_k − s) for labelled samples.
    let two = at(2.0);
    for (i, label) in labels.ids().iter().enumerate() {
        for j in 0..2 {
            let k = 2 * i + j;
            let want =
                if label.is_some() { uncond[k] + 2.0 * (cond[k] - uncond[k]) } else { uncond[k] };
            assert!((two[k] - want).abs() < 1e-9, "sample {i}: {} vs {want}", two[k]);
        }
    }
    assert!(matches!(
        ClassifierGuidance::new(mixture(), mixture(), f64::NAN),
        Err(Error::InvalidParameter { name: "guidance weight", .. })
    ));
}

#[test]
fn bad_conditions_are_typed_errors() {
    let invalid = |r: Result<Labels, Error>| match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    };
    assert_eq!(invalid(Labels::new(vec![Some(3)], 3)), "label");
    assert_eq!(invalid(Labels::new(vec![Some(0)], 0)), "classes");
    assert!(matches!(
        ClassifierFree::new(mixture(), f64::NAN),
        Err(Error::InvalidParameter { name: "guidance weight", .. })
    ));
    assert!(matches!(
        ClassifierFree::autoguidance(mixture(), mixture(), f64::INFINITY),
        Err(Error::InvalidParameter { name: "guidance weight", .. })
    ));
    let cfg = ClassifierFree::new(mixture(), 2.0).unwrap();
    assert!(matches!(cfg.clone().with_interval(2.0, 1.0), Err(Error::InvalidParameter { .. })));
    assert!(matches!(cfg.with_interval(-1.0, 1.0), Err(Error::InvalidParameter { .. })));
    assert!(matches!(
        Given::new(mixture(), Labels::new(vec![], 3).unwrap()),
        Err(Error::ShapeMismatch { .. })
    ));

    // A batch of another size than the condition's: refused before the first step.
    let model = Given::new(mixture(), Labels::all(0, 4, 3).unwrap()).unwrap();
    assert_eq!(ScoreModel::<2>::batch_size(&model), Some(4));
    let grid = Grid::from_sigmas(Karras::edm(), &[1.0, 0.5]).unwrap();
    let driver = Driver::new(EulerAncestral::default(), grid);
    let init = Tensor::<2>::zeros([3, 2], &flex());
    let err = driver.run(&model, init, &mut PerSampleNoise::new(0, 3), &mut ()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Called directly with such a batch, the model answers with an empty output, which the
    // library's callers report as a shape mismatch.
    let (x, level, _) = batch();
    assert_eq!(model.score(x, &level).dims(), [0, 2]);
}

/// Label dropout replaces each label by ∅ independently with probability p (a binomial count
/// within 4 standard errors), keeps the rest, and `tile`/`repeat_interleave` lay the labels
/// out as the batch they label.
#[test]
fn label_dropout_tiling_and_interleaving() {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 20_000;
    let labels = Labels::new((0..n).map(|i| Some(i % 3)).collect(), 3).unwrap();
    assert_eq!(labels.dropout(0.0, &mut rng).unwrap(), labels);
    assert_eq!(labels.dropout(1.0, &mut rng).unwrap(), labels.to_null());
    let dropped = labels.dropout(0.3, &mut rng).unwrap();
    let nulls = dropped.ids().iter().filter(|y| y.is_none()).count() as f64;
    let se = (n as f64 * 0.3 * 0.7).sqrt();
    assert!((nulls - 0.3 * n as f64).abs() < 4.0 * se, "{nulls} nulls of {n}");
    assert!(dropped.ids().iter().zip(labels.ids()).all(|(d, y)| d.is_none() || d == y));

    let y = Labels::new(vec![Some(1), None], 3).unwrap();
    assert_eq!(y.tile(2).ids(), &[Some(1), None, Some(1), None]);
    assert_eq!(y.repeat_interleave(2).ids(), &[Some(1), Some(1), None, None]);
    assert_eq!(y.tile(2).classes(), 3);
}
