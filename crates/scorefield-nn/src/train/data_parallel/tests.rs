//! Tests of data parallelism on one CPU device: simulated ranks against one rank.

use burn::tensor::{Device, Tensor, TensorData};
use rand::RngCore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use scorefield_core::condition::{ConditionalScoreModel, Labels};
use scorefield_core::objective::ConditionalObjective;
use scorefield_core::{Error, LossOutput, NoiseLevel, Objective, ScoreModel};

use super::super::tests::{bits, mixture, mlp_config, ncsn, params, scratch, seeded};
use super::super::{EmaWarmup, PostHocEma, StepReport, Trainer, TrainerConfig};
use super::DataParallel;
use crate::ScoreMlp;
use crate::testing::device;

/// Denoising score matching with the noise carried in the batch: a row is
/// `[x₀ (d values) | z (d values) | σ]`, and its loss is `½‖σ·s_θ(x₀ + σz, σ) + z‖²` (DSM with
/// λ(σ) = σ²). The noise of the whole batch is drawn once, with the batch, so a shard of the
/// batch carries its own rows' noise: one rank and `N` ranks see the same noise, and their
/// updates can be compared value for value.
struct NoiseInBatch {
    dim: usize,
}

impl Objective<ScoreMlp, 2> for NoiseInBatch {
    fn loss(
        &self,
        model: &ScoreMlp,
        batch: Tensor<2>,
        _rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        self.loss_of(batch, |x, level| model.score(x, level))
    }
}

/// The same objective for a class-conditional model, the labels split with the rows.
impl ConditionalObjective<ScoreMlp, 2, Labels> for NoiseInBatch {
    fn loss_given(
        &self,
        model: &ScoreMlp,
        batch: Tensor<2>,
        y: &Labels,
        _rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        self.loss_of(batch, |x, level| model.score_given(x, level, y))
    }
}

impl NoiseInBatch {
    fn loss_of(
        &self,
        batch: Tensor<2>,
        score: impl FnOnce(Tensor<2>, &NoiseLevel) -> Tensor<2>,
    ) -> scorefield_core::Result<LossOutput> {
        let (b, d) = (batch.dims()[0], self.dim);
        let x0 = batch.clone().narrow(1, 0, d);
        let z = batch.clone().narrow(1, d, d);
        let sigma = batch.narrow(1, 2 * d, 1);
        let level = NoiseLevel {
            t: sigma.clone().reshape([b]),
            scale: sigma.ones_like().reshape([b]),
            sigma: sigma.clone().reshape([b]),
        };
        let x = x0.add(z.clone().mul(sigma.clone()));
        let residual = score(x, &level).mul(sigma).add(z);
        let per_sample = residual.square().sum_dim(1).reshape([b]).mul_scalar(0.5);
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: Some(level) })
    }
}

/// `b` rows of the two-component mixture with their noise `z ~ N(0, I)` and a level `σ` drawn
/// from {0.1, 0.5, 1, 3}, as `[x₀ | z | σ]`. With `tilt`, the second half of the rows is
/// shifted by 3 so that the two halves' gradients differ in size.
fn noisy_batch(b: usize, seed: u64, tilt: bool, dev: &Device) -> Tensor<2> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x0 = mixture().sample(b, dev, &mut rng).to_data().try_to_vec::<f64>().unwrap();
    let mut rows = Vec::with_capacity(b * 5);
    for i in 0..b {
        let shift = if tilt && i >= b / 2 { 3.0 } else { 0.0 };
        rows.extend([x0[2 * i] + shift, x0[2 * i + 1]]);
        rows.extend((0..2).map(|_| -> f64 { StandardNormal.sample(&mut rng) }));
        rows.push([0.1, 0.5, 1.0, 3.0][rng.next_u32() as usize % 4]);
    }
    Tensor::from_data(TensorData::new(rows, [b, 5]), dev)
}

/// A trainer of a seeded MLP; with `ranks`, over that many simulated ranks. A large Adam `ε`
/// makes the update `≈ −η·g/ε`, linear in the gradient, so that the parameters after a step
/// show the gradient's scale (with the default `ε` Adam's update ignores it).
fn trainer(config: TrainerConfig, ranks: Option<usize>) -> Trainer<ScoreMlp> {
    let dev = device();
    let model = seeded(mlp_config(8).init(&dev), 3);
    let trainer = Trainer::new(model, "{}", config).unwrap();
    match ranks {
        Some(n) => trainer.with_data_parallel(DataParallel::simulated(n).unwrap()).unwrap(),
        None => trainer,
    }
}

fn linear_adam() -> TrainerConfig {
    TrainerConfig::new().with_epsilon(10.0).with_learning_rate(1.0).with_ema_decay(0.5)
}

/// `|a − b| ≤ tol·max(|a|, |b|, 1e-3)` elementwise.
fn assert_close(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64, what: &str) {
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        let scale = x.abs().max(y.abs()).max(1e-3);
        assert!((x - y).abs() <= tol * scale, "{what}: {x} vs {y}");
    }
}

fn assert_reports_close(a: &StepReport, b: &StepReport, tol: f64) {
    assert_close(
        &[vec![a.loss, a.grad_norm, a.clip_scale]],
        &[vec![b.loss, b.grad_norm, b.clip_scale]],
        tol,
        "report",
    );
    assert_close(
        std::slice::from_ref(&a.per_sample),
        std::slice::from_ref(&b.per_sample),
        tol,
        "per-sample losses",
    );
    assert_eq!(a.sigma, b.sigma, "the levels, in batch order");
}

#[test]
fn one_simulated_rank_is_the_single_device_step() {
    let dev = device();
    let config = TrainerConfig::new().with_grad_clip_norm(Some(1.0)).with_seed(5);
    let (mut plain, mut one) = (trainer(config.clone(), None), trainer(config, Some(1)));
    for _ in 0..3 {
        let x = mixture().sample(16, &dev, &mut plain.batch_rng());
        let (a, b) = (plain.step(&ncsn(), x.clone()).unwrap(), one.step(&ncsn(), x).unwrap());
        assert_eq!(a, b, "the same report, bit for bit");
    }
    assert_eq!(bits(&params(plain.model())), bits(&params(one.model())));
    assert_eq!(bits(&params(plain.ema())), bits(&params(one.ema())));
}

#[test]
fn two_simulated_ranks_equal_one_rank_with_the_whole_batch() {
    let dev = device();
    let objective = NoiseInBatch { dim: 2 };
    let (mut one, mut two) = (trainer(linear_adam(), None), trainer(linear_adam(), Some(2)));
    let mut half = trainer(linear_adam(), None);
    for step in 0..3 {
        let x = noisy_batch(16, step, true, &dev);
        let a = one.step(&objective, x.clone()).unwrap();
        let b = two.step(&objective, x.clone()).unwrap();
        // g = (g₁ + g₂)/2 of the halves' mean losses = the gradient of the whole batch's mean.
        assert_reports_close(&a, &b, 1e-12);
        assert_close(&params(one.model()), &params(two.model()), 1e-12, "parameters");
        assert_close(&params(one.ema()), &params(two.ema()), 1e-12, "EMA");
        // The comparison can fail: rank 0's gradient alone is another update.
        let h = half.step(&objective, x.narrow(0, 0, 8)).unwrap();
        assert!((h.grad_norm - a.grad_norm).abs() > 1e-3 * a.grad_norm, "{h:?} vs {a:?}");
    }
    let moved = params(two.model());
    assert!(
        moved
            .iter()
            .flatten()
            .zip(params(half.model()).iter().flatten())
            .any(|(a, b)| (a - b).abs() > 1e-6)
    );
}

#[test]
fn clipping_applies_to_the_reduced_gradient() {
    let dev = device();
    let objective = NoiseInBatch { dim: 2 };
    let x = noisy_batch(16, 7, true, &dev);
    // The norms of the two halves' gradients and of their mean (the whole batch's).
    let norm = |x: Tensor<2>| trainer(linear_adam(), None).step(&objective, x).unwrap().grad_norm;
    let (first, second) = (norm(x.clone().narrow(0, 0, 8)), norm(x.clone().narrow(0, 8, 8)));
    let whole = norm(x.clone());
    assert!((first - second).abs() > 0.1 * whole, "the halves' norms differ: {first}, {second}");

    // Clip at half the reduced norm: the scale is c/‖ḡ‖, not a per-rank c/‖g_r‖.
    let c = 0.5 * whole;
    let config = linear_adam().with_grad_clip_norm(Some(c));
    let (mut one, mut two) = (trainer(config.clone(), None), trainer(config, Some(2)));
    let a = one.step(&objective, x.clone()).unwrap();
    let b = two.step(&objective, x).unwrap();
    assert!((b.grad_norm - whole).abs() <= 1e-12 * whole, "{} vs {whole}", b.grad_norm);
    assert!((b.clip_scale - 0.5).abs() <= 1e-12, "clip scale {}", b.clip_scale);
    assert_reports_close(&a, &b, 1e-12);
    // With Adam linear in g, the update is −η·c·ḡ/(‖ḡ‖ε): the clipped mean, as one rank's.
    assert_close(&params(one.model()), &params(two.model()), 1e-12, "parameters");
}

#[test]
fn a_two_rank_run_is_reproducible_and_resumes_bit_exactly() {
    let dev = device();
    let dir = scratch("data-parallel-resume");
    let config = TrainerConfig::new()
        .with_grad_clip_norm(Some(0.5))
        .with_ema_warmup(Some(EmaWarmup::ScoreSde))
        .with_posthoc_ema(Some(PostHocEma::new().with_snapshot_every(2)))
        .with_seed(9)
        .with_batch_size(16);
    let run = |trainer: &mut Trainer<ScoreMlp>, steps: usize| -> Vec<f64> {
        (0..steps)
            .map(|_| {
                let x = mixture().sample(16, &dev, &mut trainer.batch_rng());
                trainer.step(&ncsn(), x).unwrap().loss
            })
            .collect()
    };
    let mut straight = trainer(config.clone(), Some(2));
    let straight_losses = run(&mut straight, 8);
    let mut again = trainer(config.clone(), Some(2));
    assert_eq!(run(&mut again, 8), straight_losses, "the same seed and ranks: the same run");
    // Another rank count draws other noise for the same rows: another (equally valid) run.
    let mut single = trainer(config.clone(), None);
    assert_ne!(run(&mut single, 8), straight_losses);

    let mut first = trainer(config, Some(2));
    let mut losses = run(&mut first, 4);
    first.save(&dir).unwrap();
    let fresh = mlp_config(8).init(&dev);
    let mut resumed = Trainer::load(&dir, fresh, "{}").unwrap();
    assert!(resumed.data_parallel().is_none(), "the ranks are not saved");
    resumed.set_data_parallel(Some(DataParallel::simulated(2).unwrap())).unwrap();
    losses.extend(run(&mut resumed, 4));
    assert_eq!(bits(&[losses]), bits(&[straight_losses]));
    assert_eq!(bits(&params(resumed.model())), bits(&params(straight.model())));
    assert_eq!(bits(&params(resumed.ema())), bits(&params(straight.ema())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_splits_and_devices_are_rejected() {
    let dev = device();
    let mut two = trainer(TrainerConfig::new(), Some(2));
    let before = params(two.model());
    let odd = mixture().sample(15, &dev, &mut two.batch_rng());
    assert!(matches!(two.step(&ncsn(), odd), Err(Error::InvalidParameter { .. })));
    assert_eq!((two.steps(), bits(&params(two.model()))), (0, bits(&before)), "nothing moved");

    assert!(matches!(DataParallel::simulated(0), Err(Error::InvalidParameter { .. })));
    assert!(DataParallel::devices(vec![]).is_err());
    assert!(DataParallel::devices(vec![dev.clone(), dev.clone()]).is_err(), "a repeated device");
    // One device is the single-device step.
    let one = DataParallel::devices(vec![dev.clone()]).unwrap();
    assert_eq!((one.ranks(), one.device_list().map(<[Device]>::len)), (1, Some(1)));
    let mut t = trainer(TrainerConfig::new(), None).with_data_parallel(one).unwrap();
    let x = mixture().sample(16, &dev, &mut t.batch_rng());
    t.step(&ncsn(), x).unwrap();
    t.set_data_parallel(None).unwrap();
    assert!(t.data_parallel().is_none());
}

/// A conditional batch `(x₀, labels)` splits its labels with its rows: two simulated ranks of
/// a class-conditional MLP equal one rank with the whole batch; labels that do not split are
/// a typed error.
#[test]
fn two_simulated_ranks_split_the_labels_with_the_rows() {
    let dev = device();
    let objective = NoiseInBatch { dim: 2 };
    let make = |ranks: Option<usize>| {
        let model = seeded(mlp_config(8).with_classes(Some(3)).init(&dev), 4);
        let trainer = Trainer::new(model, "{}", linear_adam()).unwrap();
        match ranks {
            Some(n) => trainer.with_data_parallel(DataParallel::simulated(n).unwrap()).unwrap(),
            None => trainer,
        }
    };
    let (mut one, mut two) = (make(None), make(Some(2)));
    for step in 0..2 {
        let x = noisy_batch(12, 20 + step, true, &dev);
        let ids = (0..12).map(|i| if i % 4 == 3 { None } else { Some(i % 3) }).collect();
        let y = Labels::new(ids, 3).unwrap();
        let a = one.step(&objective, (x.clone(), y.clone())).unwrap();
        let b = two.step(&objective, (x, y)).unwrap();
        assert_reports_close(&a, &b, 1e-12);
    }
    assert_close(&params(one.model()), &params(two.model()), 1e-12, "parameters");
    let mut four = make(Some(4));
    let x = noisy_batch(12, 30, false, &dev);
    let err = four.step(&objective, (x, Labels::all(0, 10, 3).unwrap())).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "condition", .. }), "{err}");
}
