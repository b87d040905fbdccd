//! Tests of the trainer, its checkpoints and the loss log.

use std::fs;
use std::path::{Path, PathBuf};

use burn::config::{Config, config_to_json};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield_core::{Error, Objective};

use super::checkpoint::*;
use super::params::*;
use super::*;
use crate::testing::device;
use crate::{ScoreMlp, ScoreMlpConfig};
use burn::tensor::{Device, TensorData};
use rand::{Rng, RngCore};
use scorefield_core::analytic::GaussianMixture;
use scorefield_core::objective::{DenoisingScoreMatching, Weighting};
use scorefield_core::schedule::GeometricSigmas;
use scorefield_core::{LossOutput, NoiseLevel, ScoreModel};
use std::ops::ControlFlow;

/// Every float parameter of a module, in visiting order, as f64.
pub(super) fn params<M: Module>(module: &M) -> Vec<Vec<f64>> {
    struct Values(Vec<Vec<f64>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().inner().try_into_vec_as::<f64>().unwrap());
        }
    }
    let mut values = Values(Vec::new());
    module.visit(&mut values);
    values.0
}

/// `model` with every float parameter redrawn from `U(−1/√n₀, 1/√n₀)` (`n₀` its first
/// dimension) by a seeded generator: an initialisation that is the same on every run,
/// unlike Burn's, which draws from the device's shared generator.
pub(super) fn seeded<M: Module>(model: M, seed: u64) -> M {
    struct Redraw(StdRng);
    impl ModuleMapper for Redraw {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let dims = value.dims();
            let bound = 1.0 / (dims[0] as f64).sqrt();
            let values: Vec<f64> = (0..dims.iter().product::<usize>())
                .map(|_| self.0.random_range(-bound..bound))
                .collect();
            let value = Tensor::from_data(TensorData::new(values, dims), &value.device());
            Param::from_mapped_value(id, value, mapper)
        }
    }
    model.map(&mut Redraw(StdRng::seed_from_u64(seed)))
}

pub(super) fn bits(values: &[Vec<f64>]) -> Vec<Vec<u64>> {
    values.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
}

pub(super) fn mixture() -> GaussianMixture {
    GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2]).unwrap()
}

pub(super) fn mlp_config(hidden: usize) -> ScoreMlpConfig {
    ScoreMlpConfig::new(2).with_hidden(hidden).with_layers(2).with_scale_by_sigma(true)
}

pub(super) fn ncsn() -> DenoisingScoreMatching {
    DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap()
}

/// A fresh, empty directory under the system's temporary directory.
pub(super) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "scorefield-train-{name}-{}-{}",
        std::process::id(),
        unique_id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` (recursively) with its length and hash.
fn snapshot(dir: &Path) -> Vec<(PathBuf, usize, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.push((p.clone(), bytes.len(), fnv1a64(&bytes)));
            }
        }
    }
    out.sort();
    out
}

/// `steps` steps on batches of the mixture drawn from the trainer's batch stream.
fn run(trainer: &mut Trainer<ScoreMlp>, steps: usize, batch: usize, dev: &Device) -> Vec<f64> {
    let (data, objective) = (mixture(), ncsn());
    (0..steps)
        .map(|_| {
            let x = data.sample(batch, dev, &mut trainer.batch_rng());
            trainer.step(&objective, x).unwrap().loss
        })
        .collect()
}

#[test]
fn warm_up_is_linear_then_constant() {
    let _ = device();
    let config = TrainerConfig::new().with_learning_rate(2e-4).with_warmup_steps(4);
    let lrs: Vec<f64> = (0..6).map(|k| config.learning_rate_at(k).unwrap()).collect();
    for (lr, expected) in lrs.iter().zip([0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4]) {
        assert!((lr - expected).abs() < 1e-18, "{lr} vs {expected}");
    }
    // Bit for bit the rate of the hand-written warm-up that burn-optim's schedulers replaced,
    // so that runs and checkpoints made before keep their numbers.
    for (k, lr) in lrs.iter().enumerate() {
        let before = 2e-4 * ((k + 1) as f64 / 4.0).min(1.0);
        assert_eq!(lr.to_bits(), before.to_bits(), "step {k}");
    }
    assert_eq!(TrainerConfig::new().learning_rate_at(0), Ok(1e-3));

    // The steps use it.
    let dev = device();
    let config = config.with_batch_size(8);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
    for k in 0..5 {
        assert_eq!(Ok(trainer.learning_rate()), trainer.config().learning_rate_at(k));
        let x = mixture().sample(8, &dev, &mut trainer.batch_rng());
        let report = trainer.step(&ncsn(), x).unwrap();
        assert_eq!((report.step, report.learning_rate), (k, lrs[k as usize]));
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let _ = device();
    let bad = [
        TrainerConfig::new().with_learning_rate(0.0),
        TrainerConfig::new().with_learning_rate(f64::NAN),
        TrainerConfig::new().with_beta_1(1.0),
        TrainerConfig::new().with_beta_2(-0.1),
        TrainerConfig::new().with_epsilon(0.0),
        TrainerConfig::new().with_grad_clip_norm(Some(0.0)),
        TrainerConfig::new().with_ema_decay(1.5),
        TrainerConfig::new().with_batch_size(0),
    ];
    for config in bad {
        assert!(
            matches!(config.validate(), Err(Error::InvalidParameter { .. })),
            "{config:?} must be rejected"
        );
    }
    assert!(TrainerConfig::new().validate().is_ok());
}

#[test]
fn ema_follows_its_recursion_and_closed_form() {
    let dev = device();
    let d = 0.9;
    let config = TrainerConfig::new().with_ema_decay(d).with_learning_rate(1e-2);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
    let mut thetas = vec![params(trainer.model())];
    assert_eq!(bits(&params(trainer.ema())), bits(&thetas[0]), "the EMA starts at θ₀");
    let mut ema = thetas[0].clone();
    for _ in 0..3 {
        run(&mut trainer, 1, 16, &dev);
        let theta = params(trainer.model());
        assert_ne!(bits(&theta), bits(thetas.last().unwrap()), "the parameters moved");
        let new_ema = params(trainer.ema());
        // One step: ema ← d·ema + (1 − d)·θ, exactly (both sides in f64).
        for ((e_new, e_old), t) in new_ema.iter().zip(&ema).zip(&theta) {
            for ((&a, &b), &c) in e_new.iter().zip(e_old).zip(t) {
                assert_eq!(a.to_bits(), (d * b + (1.0 - d) * c).to_bits());
            }
        }
        thetas.push(theta);
        ema = new_ema;
    }
    // Closed form after k = 3 steps: d³θ₀ + (1 − d)(d²θ₁ + dθ₂ + θ₃).
    for (i, e) in ema.iter().enumerate() {
        for (j, &value) in e.iter().enumerate() {
            let th = |k: usize| thetas[k][i][j];
            let closed = d.powi(3) * th(0) + (1.0 - d) * (d * d * th(1) + d * th(2) + th(3));
            assert!((value - closed).abs() <= 1e-14 * closed.abs().max(1.0));
        }
    }
}

#[test]
fn ema_warmups_follow_their_closed_forms() {
    let config = |w| TrainerConfig::new().with_ema_decay(0.99).with_ema_warmup(Some(w));
    // score_sde: min(d, (1 + n)/(10 + n)), n = k + 1.
    let sde = config(EmaWarmup::ScoreSde);
    assert_eq!(sde.ema_decay_at(0), 2.0 / 11.0);
    assert_eq!(sde.ema_decay_at(8), 10.0 / 19.0);
    assert_eq!(sde.ema_decay_at(10_000), 0.99);
    // k-diffusion: clamp(1 − (1 + k/γ)^(−p), 0, d); γ = 1, p = 3/4: k = 15 gives 1 − 1/8.
    let power = config(EmaWarmup::Power { inv_gamma: 1.0, power: 0.75 });
    assert_eq!(power.ema_decay_at(0), 0.0);
    assert!((power.ema_decay_at(15) - 0.875).abs() < 1e-15);
    assert_eq!(power.ema_decay_at(1_000_000), 0.99);
    // γ = 2: k = 30 is (1 + 15)^(−3/4) = 1/8 again.
    let slow = config(EmaWarmup::Power { inv_gamma: 2.0, power: 0.75 });
    assert!((slow.ema_decay_at(30) - 0.875).abs() < 1e-15);
    assert_eq!(TrainerConfig::new().ema_decay_at(0), 0.999, "no warm-up: d from the start");
    for bad in [
        EmaWarmup::Power { inv_gamma: 0.0, power: 1.0 },
        EmaWarmup::Power { inv_gamma: 1.0, power: f64::NAN },
    ] {
        assert!(matches!(config(bad).validate(), Err(Error::InvalidParameter { .. })));
    }
    // A trainer.json written before the warm-up, the decay and post-hoc EMA existed still
    // reads, as none of them.
    let json = TrainerConfig::new().to_string();
    let new_fields = ["ema_warmup", "lr_decay", "posthoc_ema"];
    let old: String = json.lines().filter(|l| !new_fields.iter().any(|f| l.contains(f))).collect();
    for field in new_fields {
        assert!(json.contains(field) && !old.contains(field), "{field} in {json}");
    }
    let old = TrainerConfig::load_binary(old.as_bytes()).unwrap();
    assert_eq!(old, TrainerConfig::new());
}

#[test]
fn with_the_power_warmup_the_first_ema_is_the_weights_and_the_next_follows_d_k() {
    let dev = device();
    let warmup = EmaWarmup::Power { inv_gamma: 1.0, power: 0.75 };
    let config = TrainerConfig::new().with_ema_warmup(Some(warmup)).with_learning_rate(1e-2);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
    run(&mut trainer, 1, 16, &dev);
    assert_eq!(bits(&params(trainer.ema())), bits(&params(trainer.model())));
    let ema = params(trainer.ema());
    run(&mut trainer, 1, 16, &dev);
    let (theta, new_ema) = (params(trainer.model()), params(trainer.ema()));
    let d = 1.0 - 2f64.powf(-0.75); // d_1
    for ((e_new, e_old), t) in new_ema.iter().zip(&ema).zip(&theta) {
        for ((&a, &b), &c) in e_new.iter().zip(e_old).zip(t) {
            assert_eq!(a.to_bits(), (d * b + (1.0 - d) * c).to_bits());
        }
    }
}

#[test]
fn clipping_bounds_the_global_gradient_norm_and_the_update() {
    let dev = device();
    let model = mlp_config(16).init(&dev).train();
    // Unit-weighted DSM at σ = 0.01: gradients of order 1/σ².
    let objective = DenoisingScoreMatching::single(0.01).unwrap();
    assert_eq!(objective.weighting(), Weighting::Unit);
    let x = mixture().sample(32, &dev, &mut StdRng::seed_from_u64(1));
    let out = objective.loss(&model, x.clone(), &mut StdRng::seed_from_u64(2)).unwrap();
    let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let norm = global_grad_norm(&model, &grads);
    assert!(norm > 10.0, "a large gradient to clip: {norm}");
    let before = grad_values(&model, &grads);
    let host: f64 = before.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    assert!((norm - host).abs() <= 1e-12 * host);

    let c = 1.0;
    scale_grads(&model, &mut grads, c / norm);
    let clipped = global_grad_norm(&model, &grads);
    assert!((clipped - c).abs() < 1e-12, "‖g‖ after clipping = {clipped}");
    for (g, g0) in grad_values(&model, &grads).iter().flatten().zip(before.iter().flatten()) {
        assert_eq!(*g, g0 * (c / norm), "clipping keeps the direction");
    }

    // Through the trainer. With a huge ε, Adam's first update is SGD-like,
    // Δ = −η g/(|g| + ε) ≈ −η g/ε, so ‖Δ‖ ≈ η‖g_clipped‖/ε.
    let (lr, eps) = (1.0, 1e9);
    let update_norm = |clip: Option<f64>| {
        let config = TrainerConfig::new()
            .with_learning_rate(lr)
            .with_epsilon(eps as f32)
            .with_grad_clip_norm(clip);
        let mut trainer = Trainer::new(model.clone(), "{}", config).unwrap();
        let report = trainer.step(&objective, x.clone()).unwrap();
        let delta: f64 = params(trainer.model())
            .iter()
            .flatten()
            .zip(params(&model).iter().flatten())
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        (report, delta)
    };
    let (free, free_delta) = update_norm(None);
    let (clip, clip_delta) = update_norm(Some(c));
    assert_eq!(free.clip_scale, 1.0);
    assert_eq!(clip.grad_norm.to_bits(), free.grad_norm.to_bits());
    assert_eq!(clip.clip_scale, c / clip.grad_norm);
    let bound = lr * c / eps;
    assert!(clip_delta <= bound && clip_delta > 0.99 * bound, "{clip_delta} vs {bound}");
    let free_bound = lr * free.grad_norm / eps;
    assert!(free_delta <= free_bound && free_delta > 0.99 * free_bound, "{free_delta}");
    println!(
        "clipping: ‖g‖ = {:.1}, ‖Δ‖ = {free_delta:.3e} unclipped, {clip_delta:.3e} clipped (bound {bound:.1e})",
        free.grad_norm
    );
}

fn grad_values<M: Module>(model: &M, grads: &GradientsParams) -> Vec<Vec<f64>> {
    struct Values<'a>(&'a GradientsParams, Vec<Vec<f64>>);
    impl ModuleVisitor for Values<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.push(g.try_into_vec_as::<f64>().unwrap());
            }
        }
    }
    let mut values = Values(grads, Vec::new());
    model.visit(&mut values);
    values.1
}

/// A loss that is NaN whatever the model.
struct Poisoned;

impl Objective<ScoreMlp, 2> for Poisoned {
    fn loss(
        &self,
        model: &ScoreMlp,
        x0: Tensor<2>,
        _rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        let b = x0.dims()[0];
        let level = NoiseLevel::clean(b, &x0.device());
        let per_sample = model.score(x0, &level).sum_dim(1).reshape([b]).mul_scalar(f64::NAN);
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: None })
    }
}

#[test]
fn a_non_finite_loss_is_an_error_and_changes_nothing() {
    let dev = device();
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", TrainerConfig::new()).unwrap();
    run(&mut trainer, 2, 16, &dev);
    let (model, ema) = (bits(&params(trainer.model())), bits(&params(trainer.ema())));
    let x = mixture().sample(16, &dev, &mut trainer.batch_rng());
    let err = trainer.step(&Poisoned, x.clone()).unwrap_err();
    assert_eq!(err, Error::NonFinite { context: "training loss at step 2".into() });
    assert_eq!(trainer.steps(), 2);
    // Data-parallel, the error names the rank.
    let mut ranks = trainer.clone();
    ranks.set_data_parallel(Some(DataParallel::simulated(2).unwrap())).unwrap();
    let err = ranks.step(&Poisoned, x).unwrap_err();
    assert_eq!(err, Error::NonFinite { context: "training loss at step 2 (rank 0)".into() });
    assert_eq!(bits(&params(trainer.model())), model);
    assert_eq!(bits(&params(trainer.ema())), ema);
    // And training carries on, as if the bad batch had not been offered.
    let mut twin = trainer.clone();
    assert_eq!(run(&mut trainer, 1, 16, &dev), run(&mut twin, 1, 16, &dev));
}

/// `steps` steps on batches of 32 of the mixture, each taken by `step` or deferred; deferred
/// steps are read after every third and at the end. The reports in step order.
fn steps_read(trainer: &mut Trainer<ScoreMlp>, steps: usize, deferred: bool) -> Vec<StepReport> {
    let (data, objective, dev) = (mixture(), ncsn(), device());
    let mut reports = Vec::new();
    for k in 0..steps {
        let x = data.sample(32, &dev, &mut trainer.batch_rng());
        if deferred {
            trainer.step_deferred(&objective, x).unwrap();
            if k % 3 == 2 || k + 1 == steps {
                assert_eq!(trainer.deferred_steps(), k % 3 + 1);
                reports.extend(trainer.read_deferred().unwrap());
                assert_eq!(trainer.deferred_steps(), 0);
            }
        } else {
            reports.push(trainer.step(&objective, x).unwrap());
        }
    }
    reports
}

/// Deferred steps are `step`'s steps read later: without clipping bit for bit (the reports,
/// the weights and the EMA; one rank or two simulated ones), with clipping (computed on the
/// device) to f32 rounding.
#[test]
fn deferred_steps_are_the_steps_read_later() {
    let dev = device();
    for (clip, ranks) in [(None, 1), (None, 2), (Some(0.2), 1)] {
        let config = TrainerConfig::new().with_grad_clip_norm(clip).with_seed(5);
        let model = seeded(mlp_config(16).init(&dev), 6);
        let mut sync = Trainer::new(model, "{}", config).unwrap();
        if ranks > 1 {
            sync.set_data_parallel(Some(DataParallel::simulated(ranks).unwrap())).unwrap();
        }
        let mut deferred = sync.clone();
        let (want, got) = (steps_read(&mut sync, 7, false), steps_read(&mut deferred, 7, true));
        assert_eq!(got.iter().map(|r| r.step).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        let (pa, pb) = (params(sync.model()), params(deferred.model()));
        let (ea, eb) = (params(sync.ema()), params(deferred.ema()));
        if clip.is_none() {
            assert_eq!(got, want, "{ranks} rank(s)");
            assert_eq!((bits(&pa), bits(&ea)), (bits(&pb), bits(&eb)), "{ranks} rank(s)");
            continue;
        }
        let norms: Vec<f64> = want.iter().map(|r| r.grad_norm).collect();
        assert!(want.iter().all(|r| r.clip_scale < 1.0), "clipping in every step: {norms:?}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!((w.learning_rate, w.ema_decay), (g.learning_rate, g.ema_decay));
            for (a, b) in
                [(w.loss, g.loss), (w.grad_norm, g.grad_norm), (w.clip_scale, g.clip_scale)]
            {
                assert!(close(a, b), "step {}: {a} against {b}", w.step);
            }
        }
        for (a, b) in pa.iter().flatten().zip(pb.iter().flatten()) {
            assert!(close(*a, *b), "weights {a} against {b}");
        }
    }
}

/// A non-finite loss among deferred steps (here from a NaN in the data, which the deferred
/// step leaves to the read) is found by the read, which puts the trainer back where it was
/// before its first unread step: weights, EMA, Adam's moments and step counter, so that it
/// trains on as a twin that never took them.
#[test]
fn a_non_finite_deferred_step_returns_the_trainer_to_its_last_read_state() {
    let dev = device();
    let config = TrainerConfig::new().with_seed(2);
    let mut trainer = Trainer::new(seeded(mlp_config(8).init(&dev), 3), "{}", config).unwrap();
    run(&mut trainer, 2, 16, &dev);
    let (model, ema) = (bits(&params(trainer.model())), bits(&params(trainer.ema())));
    let mut twin = trainer.clone();
    let (data, objective) = (mixture(), ncsn());
    for k in 0..4 {
        let mut x = data.sample(16, &dev, &mut trainer.batch_rng());
        if k == 2 {
            x = x.slice_assign([0..1, 0..1], Tensor::from_data([[f32::NAN]], &dev));
        }
        trainer.step_deferred(&objective, x).unwrap();
    }
    assert_eq!((trainer.steps(), trainer.deferred_steps()), (6, 4));
    let err = trainer.read_deferred().unwrap_err();
    let context = "training loss at step 4 (the trainer is back at step 2)".to_string();
    assert_eq!(err, Error::NonFinite { context });
    assert_eq!((trainer.steps(), trainer.deferred_steps()), (2, 0));
    assert_eq!((bits(&params(trainer.model())), bits(&params(trainer.ema()))), (model, ema));
    assert_eq!(run(&mut trainer, 2, 16, &dev), run(&mut twin, 2, 16, &dev));
    assert_eq!(bits(&params(trainer.model())), bits(&params(twin.model())));
}

/// While deferred steps are unread, `step` and `save` refuse (nothing saved, nothing
/// changed); a deferred step the objective refuses changes nothing either.
#[test]
fn unread_deferred_steps_block_step_and_save() {
    let dev = device();
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", TrainerConfig::new()).unwrap();
    let (data, objective) = (mixture(), ncsn());
    let x = data.sample(16, &dev, &mut trainer.batch_rng());
    trainer.step_deferred(&objective, x.clone()).unwrap();
    let err = trainer.step(&objective, x.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { name: "deferred steps", value, reason }
            if value == "1" && reason.contains("read_deferred before Trainer::step")),
        "{err}"
    );
    let dir = scratch("deferred-save");
    let err = trainer.save(&dir).unwrap_err();
    assert!(matches!(err, CheckpointError::Invalid(Error::InvalidParameter { .. })), "{err}");
    assert!(!dir.join(LATEST).exists(), "nothing saved");
    let err = trainer.save_snapshot(&dir).unwrap_err();
    assert!(err.to_string().contains("before Trainer::save_snapshot"), "{err}");
    assert!(fs::read_dir(&dir).unwrap().next().is_none(), "nothing written");
    let wrong = Tensor::<2>::zeros([16, 3], &dev);
    assert!(trainer.step_deferred(&objective, wrong).is_err(), "a batch of 3-d points");
    assert_eq!((trainer.steps(), trainer.deferred_steps()), (1, 1));
    assert_eq!(trainer.read_deferred().unwrap().len(), 1);
    trainer.step(&objective, x).unwrap();
    trainer.save(&dir).unwrap();
    assert_eq!(read_checkpoint(&dir).unwrap().step, 2);
    let _ = fs::remove_dir_all(dir);
}

/// The NCSN loss of `model`, averaged over 8 fixed batches of 256 with fixed noise.
fn eval<M: ScoreModel<2>>(model: &M, dev: &Device) -> f64 {
    let (data, objective) = (mixture(), ncsn());
    let total: f64 = (0..8)
        .map(|b| {
            let x = data.sample(256, dev, &mut StdRng::seed_from_u64(1000 + b));
            let mut rng = StdRng::seed_from_u64(2000 + b);
            objective.loss(model, x, &mut rng).unwrap().loss.into_scalar::<f64>()
        })
        .sum();
    total / 8.0
}

#[test]
fn dsm_training_approaches_the_optimum_on_a_mixture() {
    let dev = device();
    let config = TrainerConfig::new().with_batch_size(128).with_seed(3);
    let model = seeded(mlp_config(64).init(&dev), 4);
    let mut trainer = Trainer::new(model, "{}", config).unwrap();
    let optimum = eval(&mixture(), &dev); // the exact perturbed score, same data and noise
    let before = eval(&trainer.model().valid(), &dev);
    let losses = run(&mut trainer, 200, 128, &dev);
    let after = eval(&trainer.model().valid(), &dev);
    let first = losses[..10].iter().sum::<f64>() / 10.0;
    let last = losses[180..].iter().sum::<f64>() / 20.0;
    println!(
        "mixture DSM: training loss, first 10 steps {first:.4}, last 20 {last:.4}; held-out \
         {before:.4} → {after:.4}; optimum {optimum:.4} (excess {:.4} → {:.4})",
        before - optimum,
        after - optimum
    );
    assert!(last - optimum < 0.5 * (first - optimum), "training loss {first} → {last}");
    assert!(after >= optimum - 0.01, "no model beats the exact score on the same noise");
    assert!(after - optimum < 0.4 * (before - optimum), "excess {before} → {after}");
}

/// `steps` steps as [`run`] takes them, writing a post-hoc snapshot into `dir` when due.
fn run_with_snapshots(
    trainer: &mut Trainer<ScoreMlp>,
    steps: usize,
    dev: &Device,
    dir: &Path,
) -> Vec<f64> {
    (0..steps)
        .map(|_| {
            let loss = run(trainer, 1, 32, dev)[0];
            if trainer.snapshot_due() {
                trainer.save_snapshot(dir).unwrap();
            }
            loss
        })
        .collect()
}

/// Every file under `dir/posthoc-ema`, by name, with its bytes.
fn snapshot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join(posthoc_ema::SNAPSHOT_DIR))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_checkpoint_round_trips_and_resumes_bit_identically() {
    let dev = device();
    let dir = scratch("resume");
    let straight_dir = scratch("resume-straight");
    let model_config = mlp_config(16);
    let json = model_config.to_string();
    let posthoc = PostHocEma::new().with_snapshot_every(4);
    let config = TrainerConfig::new()
        .with_warmup_steps(3)
        .with_lr_decay(Some(LrDecay::InverseSqrt { ref_steps: 5 }))
        .with_grad_clip_norm(Some(0.5))
        .with_ema_decay(0.9)
        .with_ema_warmup(Some(EmaWarmup::ScoreSde))
        .with_posthoc_ema(Some(posthoc))
        .with_seed(11)
        .with_batch_size(32);
    let model = model_config.init(&dev);

    // 20 steps straight, against 10 + save + load + 10.
    let mut straight = Trainer::new(model.clone(), json.clone(), config.clone()).unwrap();
    let straight_losses = run_with_snapshots(&mut straight, 20, &dev, &straight_dir);

    let mut first = Trainer::new(model, json.clone(), config.clone()).unwrap();
    let mut losses = run_with_snapshots(&mut first, 10, &dev, &dir);
    let path = first.save(&dir).unwrap();
    assert!(path.starts_with(&dir) && path.join(MANIFEST).is_file());
    assert!(path.join(posthoc_file(1)).is_file() && !path.join(posthoc_file(2)).exists());

    let info = read_checkpoint(&dir).unwrap();
    assert_eq!((info.step, info.seed, info.float_dtype.as_str()), (10, 11, "F64"));
    assert_eq!(info.trainer, config);
    let rebuilt = ScoreMlpConfig::load_binary(info.model_config.as_bytes()).unwrap();
    assert_eq!(rebuilt.hidden, 16);

    // A fresh model, differently initialised: every parameter comes from the checkpoint.
    let fresh = rebuilt.init(&dev);
    assert_ne!(bits(&params(&fresh)), bits(&params(first.model())));
    let mut resumed = Trainer::load(&dir, fresh, &json).unwrap();
    assert_eq!(resumed.steps(), 10);
    assert_eq!(resumed.config(), first.config());
    assert_eq!(resumed.learning_rate().to_bits(), first.learning_rate().to_bits());
    assert_eq!(bits(&params(resumed.model())), bits(&params(first.model())));
    assert_eq!(bits(&params(resumed.ema())), bits(&params(first.ema())));
    assert_eq!(resumed.posthoc_emas().len(), 2);
    for (a, b) in resumed.posthoc_emas().iter().zip(first.posthoc_emas()) {
        assert_eq!(bits(&params(a)), bits(&params(b)));
    }

    losses.extend(run_with_snapshots(&mut resumed, 10, &dev, &dir));
    let loss_bits = |l: &[f64]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(loss_bits(&losses), loss_bits(&straight_losses));
    assert_eq!(bits(&params(resumed.model())), bits(&params(straight.model())));
    assert_eq!(bits(&params(resumed.ema())), bits(&params(straight.ema())));
    for (a, b) in resumed.posthoc_emas().iter().zip(straight.posthoc_emas()) {
        assert_eq!(bits(&params(a)), bits(&params(b)));
        assert_ne!(bits(&params(a)), bits(&params(resumed.ema())), "a profile of its own");
    }
    assert_eq!(resumed.steps(), straight.steps());
    // The snapshots (steps 4, 8, …, 20: five, two profiles each) are the same files.
    let snapshots = snapshot_files(&straight_dir);
    assert_eq!(snapshots.len(), 15, "{:?}", snapshots.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert!(snapshot_files(&dir) == snapshots, "the resumed run's snapshots differ");

    // Post-hoc EMA on, but a profile's file missing from the checkpoint: a typed error.
    let path = resumed.save(&dir).unwrap();
    let manifest_file = path.join(MANIFEST);
    let mut manifest = Manifest::load_binary(&fs::read(&manifest_file).unwrap()).unwrap();
    manifest.files.retain(|e| e.name != posthoc_file(1));
    fs::write(&manifest_file, config_to_json(&manifest)).unwrap();
    let err = Trainer::load(&dir, mlp_config(16).init(&dev), &json).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&straight_dir).unwrap();
}

#[test]
fn damaged_or_mismatched_checkpoints_are_typed_errors_and_untouched() {
    let dev = device();
    let dir = scratch("corrupt");
    let model_config = mlp_config(8);
    let json = model_config.to_string();
    let fresh = || model_config.init(&dev);
    let load = || Trainer::load(&dir, fresh(), &json);

    let empty = Trainer::load(&dir, fresh(), &json).unwrap_err();
    assert!(matches!(empty, CheckpointError::NotFound { .. }), "{empty}");

    let mut trainer = Trainer::new(fresh(), json.clone(), TrainerConfig::new()).unwrap();
    run(&mut trainer, 2, 16, &dev);
    let path = trainer.save(&dir).unwrap();
    let good = snapshot(&dir);
    assert!(load().is_ok());

    // Damage one file, check that loading fails with `expected` and writes nothing,
    // then restore it.
    let check = |file: &Path, damage: &dyn Fn(&[u8]) -> Option<Vec<u8>>, expected: &str| {
        let original = fs::read(file).unwrap();
        match damage(&original) {
            Some(bytes) => fs::write(file, bytes).unwrap(),
            None => fs::remove_file(file).unwrap(),
        }
        let damaged = snapshot(&dir);
        let err = load().unwrap_err();
        let kind = match &err {
            CheckpointError::NotFound { .. } => "NotFound",
            CheckpointError::Corrupt { .. } => "Corrupt",
            CheckpointError::Mismatch { .. } => "Mismatch",
            _ => "other",
        };
        assert_eq!(kind, expected, "{}: {err}", file.display());
        assert_eq!(snapshot(&dir), damaged, "loading wrote nothing");
        fs::write(file, original).unwrap();
        assert_eq!(snapshot(&dir), good);
    };
    let flip = |b: &[u8]| {
        let mut b = b.to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        Some(b)
    };
    let truncate = |b: &[u8]| Some(b[..b.len() / 2].to_vec());
    let garbage = |_: &[u8]| Some(b"\x00\xffnot a checkpoint".to_vec());
    let missing = |_: &[u8]| None;
    check(&path.join(MODEL_FILE), &flip, "Corrupt");
    check(&path.join(EMA_FILE), &truncate, "Corrupt");
    check(&path.join(OPTIMIZER_FILE), &missing, "Corrupt");
    check(&path.join(TRAINER_FILE), &garbage, "Corrupt");
    check(&path.join(MODEL_CONFIG_FILE), &flip, "Corrupt");
    check(&path.join(MANIFEST), &truncate, "Corrupt");
    check(&path.join(MANIFEST), &garbage, "Corrupt");
    check(&dir.join(LATEST), &garbage, "Corrupt");
    check(&dir.join(LATEST), &|_: &[u8]| Some(b"step-0-gone\n".to_vec()), "NotFound");
    check(&dir.join(LATEST), &missing, "NotFound");
    let future = |b: &[u8]| {
        let text = String::from_utf8(b.to_vec()).unwrap();
        Some(text.replace("\"version\": 2", "\"version\": 99").into_bytes())
    };
    check(&path.join(MANIFEST), &future, "Mismatch");

    // Garbage whose length and hash the manifest agrees with: burnpack's reader refuses it.
    let (model_file, manifest_file) = (path.join(MODEL_FILE), path.join(MANIFEST));
    let (original_model, original_manifest) =
        (fs::read(&model_file).unwrap(), fs::read(&manifest_file).unwrap());
    let junk = b"BURNPACK? no: just forty-odd bytes of junk....".to_vec();
    let mut manifest = Manifest::load_binary(&original_manifest).unwrap();
    let entry = manifest.files.iter_mut().find(|e| e.name == MODEL_FILE).unwrap();
    (entry.len, entry.sha256) = (junk.len() as u64, Some(sha256_hex(&junk)));
    fs::write(&model_file, &junk).unwrap();
    fs::write(&manifest_file, config_to_json(&manifest)).unwrap();
    let err = load().unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    fs::write(&model_file, original_model).unwrap();
    fs::write(&manifest_file, original_manifest).unwrap();
    assert_eq!(snapshot(&dir), good);

    // Intact but not for this model.
    let other = mlp_config(12);
    let err = Trainer::load(&dir, other.init(&dev), &other.to_string()).unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { what: "model config", .. }), "{err}");
    let err = Trainer::load(&dir, other.init(&dev), &json).unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { what: "parameters", .. }), "{err}");
    assert_eq!(snapshot(&dir), good);

    // The same parameters in another float type: refused before any tensor is read.
    struct ToF32;
    impl ModuleMapper for ToF32 {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.cast(burn::tensor::FloatDType::F32))
        }
    }
    let err = Trainer::load(&dir, fresh().map(&mut ToF32), &json).unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { what: "dtype", .. }), "{err}");

    // Whitespace in the configuration does not matter.
    assert!(Trainer::load(&dir, fresh(), &canonical_json(&json)).is_ok());
    fs::remove_dir_all(&dir).unwrap();
}

/// A configuration saved before an optional field existed (`NcsnUnetConfig::classes`) still
/// reads, and compares equal to today's serialisation of the same network.
#[test]
fn configurations_saved_before_an_optional_field_existed_still_match() {
    use crate::{ModelConfig, NcsnUnetConfig};
    let today = NcsnUnetConfig::new().with_width(16).to_string();
    assert!(today.contains("\"classes\""), "{today}");
    let old = "{\n  \"channels\": 1,\n  \"width\": 16,\n  \"multipliers\": [1, 2, 4],\n  \
               \"groups\": 8,\n  \"embedding\": 64,\n  \"embedding_hidden\": 128\n}";
    let read = NcsnUnetConfig::from_json(old).unwrap();
    assert_eq!((read.width, read.classes), (16, None));
    assert_eq!(canonical_json(old), canonical_json(&today));
    let conditional = NcsnUnetConfig::new().with_width(16).with_classes(Some(10)).to_string();
    assert_ne!(canonical_json(old), canonical_json(&conditional));
}

#[test]
fn saving_publishes_atomically_and_cleans_up_after_itself() {
    let dev = device();
    let dir = scratch("publish");
    let json = mlp_config(8).to_string();
    let mut trainer =
        Trainer::new(mlp_config(8).init(&dev), json.clone(), TrainerConfig::new()).unwrap();
    run(&mut trainer, 1, 8, &dev);
    let first = trainer.save(&dir).unwrap();

    // What a crash leaves behind: a half-written checkpoint and an unpublished one.
    let partial = dir.join(".partial-crashed");
    fs::create_dir(&partial).unwrap();
    fs::write(partial.join(MODEL_FILE), b"half").unwrap();
    let unpublished = dir.join("step-000000000009-unpublished");
    fs::create_dir(&unpublished).unwrap();
    let loaded = Trainer::load(&dir, mlp_config(8).init(&dev), &json).unwrap();
    assert_eq!(loaded.steps(), 1, "LATEST decides");

    run(&mut trainer, 1, 8, &dev);
    let second = trainer.save(&dir).unwrap();
    assert_ne!(first, second);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let second_name = second.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(names, [LATEST.to_string(), second_name.clone()]);
    assert_eq!(fs::read_to_string(dir.join(LATEST)).unwrap(), format!("{second_name}\n"));
    assert_eq!(read_checkpoint(&dir).unwrap().step, 2);

    // Saving twice at the same step makes a new checkpoint, never a mix of two.
    let third = trainer.save(&dir).unwrap();
    assert_ne!(third, second);
    assert_eq!(read_checkpoint(&dir).unwrap().path, third);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_loss_log_bins_by_nearest_level_and_writes_csv_atomically() {
    let _ = device();
    let mut log = LossLog::new(&[1.0, 0.1, 0.01]).unwrap();
    assert!(LossLog::new(&[1.0, 0.0]).is_err());
    assert_eq!((log.bucket(0.5), log.bucket(5.0), log.bucket(0.011)), (Some(0), Some(0), Some(2)));
    let report = StepReport {
        step: 6,
        loss: 3.0,
        learning_rate: 1e-3,
        ema_decay: 0.999,
        grad_norm: 1.0,
        clip_scale: 1.0,
        per_sample: vec![1.0, 2.0, 3.0, 4.0, 5.0, f64::NAN],
        sigma: Some(vec![1.0, 0.1, 0.011, 0.5, 5.0, 1.0]),
        t: None,
    };
    log.record(&report);
    let rows = log.flush(7).to_vec();
    assert_eq!(
        rows,
        [
            LossRow { step: 7, level: Some(1.0), mean_loss: 10.0 / 3.0, count: 3 },
            LossRow { step: 7, level: Some(0.1), mean_loss: 2.0, count: 1 },
            LossRow { step: 7, level: Some(0.01), mean_loss: 3.0, count: 1 },
            LossRow { step: 7, level: None, mean_loss: 3.0, count: 5 },
        ]
    );
    // Without levels in the report only the overall row is written.
    log.record(&StepReport { sigma: None, per_sample: vec![2.0, 4.0], ..report });
    assert_eq!(log.flush(8), [LossRow { step: 8, level: None, mean_loss: 3.0, count: 2 }]);
    assert!(log.flush(9).is_empty());

    let dir = scratch("csv");
    let path = dir.join("losses.csv");
    fs::write(&path, "old").unwrap();
    log.write_csv(&path).unwrap();
    let csv = fs::read_to_string(&path).unwrap();
    assert_eq!(csv, log.to_csv());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,level,mean_loss,count");
    assert_eq!(lines[2], "7,0.1,2,1");
    assert_eq!(lines[5], "8,all,3,2");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    fs::remove_dir_all(&dir).unwrap();
}

/// `fit` on the mixture to `until`, with the given callbacks.
fn fit_to(
    trainer: &mut Trainer<ScoreMlp>,
    until: u64,
    dev: &Device,
    callbacks: &mut [&mut dyn Callback<ScoreMlp>],
) -> Result<FitSummary, FitError> {
    let data = mixture();
    let batch = |rng: &mut StdRng| Ok::<_, FitError>(data.sample(32, dev, rng));
    trainer.fit(&ncsn(), until, batch, callbacks)
}

#[test]
fn fit_is_the_step_loop_and_resumes_to_the_same_run_and_loss_csv() {
    let dev = device();
    let dir = scratch("fit");
    let (config, json) = (TrainerConfig::new().with_seed(5).with_batch_size(32), "{}");
    let model = mlp_config(8).init(&dev);
    let levels = GeometricSigmas::ncsn().sigmas();
    // By hand: six steps of `step`.
    let mut by_hand = Trainer::new(model.clone(), json, config.clone()).unwrap();
    let losses = run(&mut by_hand, 6, 32, &dev);
    // Straight: `fit` to 6, a loss CSV row every step.
    let mut straight = Trainer::new(model.clone(), json, config.clone()).unwrap();
    let mut csv = LossCsv::new(&levels, dir.join("straight.csv"), 1).unwrap();
    let summary = fit_to(&mut straight, 6, &dev, &mut [&mut csv]).unwrap();
    assert_eq!((summary.steps, summary.stopped), (6, false));
    assert_eq!(summary.last.unwrap().loss.to_bits(), losses[5].to_bits());
    assert_eq!(bits(&params(straight.model())), bits(&params(by_hand.model())));
    // Interrupted at 3 (a checkpoint at the end), resumed to 6 from the checkpoint and CSV.
    let path = dir.join("resumed.csv");
    let mut first = Trainer::new(model, json, config).unwrap();
    let mut saves = Checkpoints::new(dir.join("ckpt"), 0);
    let mut csv = LossCsv::new(&levels, &path, 1).unwrap();
    fit_to(&mut first, 3, &dev, &mut [&mut saves, &mut csv]).unwrap();
    assert!(saves.last().is_some());
    // A crashed run had written rows beyond the checkpoint: they are dropped on resume.
    let stale = format!("{}7,all,9.5,32\n", fs::read_to_string(&path).unwrap());
    fs::write(&path, stale).unwrap();
    let mut resumed = Trainer::load(dir.join("ckpt"), mlp_config(8).init(&dev), json).unwrap();
    let mut csv = LossCsv::resume(&levels, &path, 1, resumed.steps()).unwrap();
    let summary = fit_to(&mut resumed, 6, &dev, &mut [&mut csv]).unwrap();
    assert_eq!(summary.steps, 3);
    assert_eq!(bits(&params(resumed.model())), bits(&params(straight.model())));
    assert_eq!(bits(&params(resumed.ema())), bits(&params(straight.ema())));
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read("resumed.csv"), read("straight.csv"));
    // A file that is not a loss log is a typed error, not a silent restart.
    fs::write(&path, "not,a,log\n").unwrap();
    let err = LossCsv::resume(&levels, &path, 1, 3).unwrap_err();
    assert!(matches!(err, FitError::Checkpoint(CheckpointError::Corrupt { .. })), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_callback_stops_fit_and_errors_propagate_typed() {
    let dev = device();
    let dir = scratch("fit-stop");
    let config = TrainerConfig::new().with_batch_size(32);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
    let mut stop = |t: &Trainer<ScoreMlp>, _: &StepReport| -> Result<ControlFlow<()>, FitError> {
        Ok(if t.steps() == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    };
    let mut seen = Vec::new();
    let mut log = every(1, |t: &Trainer<ScoreMlp>, r: &StepReport| {
        seen.push((t.steps(), r.step));
        Ok(())
    });
    let mut saves = Checkpoints::new(&dir, 0);
    let summary = fit_to(&mut trainer, 10, &dev, &mut [&mut stop, &mut log, &mut saves]).unwrap();
    assert_eq!((summary.steps, summary.stopped, trainer.steps()), (2, true, 2));
    assert_eq!(seen, [(1, 0), (2, 1)]);
    assert_eq!(read_checkpoint(&dir).unwrap().step, 2, "on_end saved the stopped run");
    // A failing batch source and a failing callback.
    let bad = |_: &mut StdRng| Err::<Tensor<2>, _>(std::io::Error::other("disk gone"));
    let err = trainer.fit(&ncsn(), 5, bad, &mut []).unwrap_err();
    assert!(matches!(err, FitError::Data(_)), "{err}");
    let mut failing =
        |_: &Trainer<ScoreMlp>, _: &StepReport| -> Result<ControlFlow<()>, FitError> {
            Err(FitError::Callback("no room for samples".into()))
        };
    let err = fit_to(&mut trainer, 5, &dev, &mut [&mut failing]).unwrap_err();
    assert!(matches!(err, FitError::Callback(_)), "{err}");
    assert_eq!(trainer.steps(), 3, "the step before the callback failed was taken");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_1_checkpoints_hashed_with_fnv_still_read_and_their_hash_is_checked() {
    let dev = device();
    let dir = scratch("v1");
    let config = TrainerConfig::new().with_batch_size(16);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config).unwrap();
    run(&mut trainer, 2, 16, &dev);
    let path = trainer.save(&dir).unwrap();
    // Rewrite the manifest as version 1 wrote it: FNV-1a 64, no SHA-256.
    let manifest_file = path.join(MANIFEST);
    let mut manifest = Manifest::load_binary(&fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(manifest.version, 2);
    let sha = manifest.files[0].sha256.clone().unwrap();
    assert_eq!(sha, sha256_hex(&fs::read(path.join(&manifest.files[0].name)).unwrap()));
    assert_eq!(sha256_hex(b"abc").get(..16), Some("ba7816bf8f01cfea"), "FIPS 180-2 test vector");
    manifest.version = 1;
    // And its trainer.json as written before the decay and post-hoc EMA existed.
    let trainer_file = path.join(TRAINER_FILE);
    let json = fs::read_to_string(&trainer_file).unwrap();
    assert!(json.contains("\"lr_decay\": null") && json.contains("\"posthoc_ema\": null"));
    let old: String = json
        .lines()
        .filter(|l| !l.contains("lr_decay") && !l.contains("posthoc_ema"))
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&trainer_file, old).unwrap();
    for entry in &mut manifest.files {
        let bytes = fs::read(path.join(&entry.name)).unwrap();
        (entry.len, entry.sha256, entry.fnv1a64) =
            (bytes.len() as u64, None, Some(fnv1a64(&bytes)));
    }
    fs::write(&manifest_file, config_to_json(&manifest)).unwrap();
    let loaded = Trainer::load(&dir, mlp_config(8).init(&dev), "{}").unwrap();
    assert_eq!(bits(&params(loaded.model())), bits(&params(trainer.model())));
    // A wrong FNV hash in a version-1 manifest is still caught.
    manifest.files[0].fnv1a64 = manifest.files[0].fnv1a64.map(|h| h ^ 1);
    fs::write(&manifest_file, config_to_json(&manifest)).unwrap();
    let err = Trainer::load(&dir, mlp_config(8).init(&dev), "{}").unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lr_schedules_follow_their_closed_forms() {
    let _ = device();
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-14 * want.abs(), "{what}: {got} vs {want}");
    };
    let ramp = |k: u64, w: u64| ((k + 1) as f64 / w as f64).min(1.0);
    // Cosine with warm-up: η_k = min(1, (k+1)/W) · (η_min + ½(η − η_min)(1 + cos(π min(k, N)/N))).
    let (eta, eta_min, n, w) = (2e-3, 1e-4, 10, 3);
    let cosine = TrainerConfig::new()
        .with_learning_rate(eta)
        .with_warmup_steps(w)
        .with_lr_decay(Some(LrDecay::Cosine { decay_steps: n, min_learning_rate: eta_min }));
    for k in [0, 1, 2, 5, 9, 10, 11, 50] {
        let phase = std::f64::consts::PI * k.min(n) as f64 / n as f64;
        let want = ramp(k, w) * (eta_min + 0.5 * (eta - eta_min) * (1.0 + phase.cos()));
        close(cosine.learning_rate_at(k).unwrap(), want, &format!("cosine at {k}"));
    }
    assert_eq!(cosine.learning_rate_at(5).unwrap(), 0.5 * (eta + eta_min), "half way");
    assert_eq!(cosine.learning_rate_at(1000).unwrap(), eta_min, "stays at η_min after N");
    // EDM2's inverse square root: η_k = min(1, (k+1)/W) · η / √max(k/t_ref, 1).
    let (eta, t_ref, w) = (1e-2, 20, 5);
    let inverse = TrainerConfig::new()
        .with_learning_rate(eta)
        .with_warmup_steps(w)
        .with_lr_decay(Some(LrDecay::InverseSqrt { ref_steps: t_ref }));
    for k in [0, 3, 4, 19, 20, 21, 80, 1000] {
        let want = ramp(k, w) * eta / (k as f64 / t_ref as f64).max(1.0).sqrt();
        close(inverse.learning_rate_at(k).unwrap(), want, &format!("inverse sqrt at {k}"));
    }
    assert_eq!(inverse.learning_rate_at(80).unwrap(), eta / 2.0, "4 t_ref: η/2");
    // Step decay: η_k = min(1, (k+1)/W) · η · γ^⌊k/s⌋.
    let (eta, s, gamma, w) = (5e-2, 6, 0.1, 2);
    let step = TrainerConfig::new()
        .with_learning_rate(eta)
        .with_warmup_steps(w)
        .with_lr_decay(Some(LrDecay::Step { step_size: s, gamma }));
    for k in [0, 1, 5, 6, 7, 11, 12, 20] {
        let want = ramp(k, w) * eta * gamma.powi((k / s) as i32);
        close(step.learning_rate_at(k).unwrap(), want, &format!("step decay at {k}"));
    }
    // The trainer's steps use the schedule, and a running schedule equals a replayed one.
    let dev = device();
    let config = inverse.with_batch_size(8);
    let mut trainer = Trainer::new(mlp_config(8).init(&dev), "{}", config.clone()).unwrap();
    let mut state = config.lr_schedule(0).unwrap();
    for k in 0..25 {
        let x = mixture().sample(8, &dev, &mut trainer.batch_rng());
        let report = trainer.step(&ncsn(), x).unwrap();
        let want = config.learning_rate_at(k).unwrap();
        assert_eq!(report.learning_rate.to_bits(), want.to_bits(), "step {k}");
        assert_eq!(state.advance().to_bits(), want.to_bits());
    }
    assert_eq!(state.step(), 25);
    // Invalid schedules are typed errors.
    let with = |decay| TrainerConfig::new().with_lr_decay(Some(decay));
    for config in [
        with(LrDecay::Cosine { decay_steps: 0, min_learning_rate: 0.0 }),
        with(LrDecay::Cosine { decay_steps: 10, min_learning_rate: 0.1 }), // above η = 1e-3
        with(LrDecay::Cosine { decay_steps: 10, min_learning_rate: -1e-4 }),
        with(LrDecay::Cosine { decay_steps: 10, min_learning_rate: 0.0 }).with_learning_rate(2.0),
        with(LrDecay::InverseSqrt { ref_steps: 0 }),
        with(LrDecay::Step { step_size: 0, gamma: 0.1 }),
        with(LrDecay::Step { step_size: 5, gamma: 0.0 }),
        with(LrDecay::Step { step_size: 5, gamma: 1.5 }),
        with(LrDecay::Step { step_size: 5, gamma: f64::NAN }),
    ] {
        let err = config.validate().unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{config:?}: {err}");
        assert!(config.learning_rate_at(0).is_err());
        let dev = device();
        assert!(Trainer::new(mlp_config(8).init(&dev), "{}", config).is_err());
    }
}

#[test]
fn sigma_rel_and_gamma_follow_the_papers_closed_form() {
    // EDM2 Eq. 3, written out here: σ_rel = (γ+1)^½ (γ+2)^−1 (γ+3)^−½.
    let sigma = |g: f64| (g + 1.0).sqrt() / ((g + 2.0) * (g + 3.0).sqrt());
    for gamma in [0.0, 0.5, 1.0, 2.5, 6.94, 16.97, 100.0, 1e4] {
        let got = sigma_rel_to_gamma(sigma(gamma)).unwrap();
        assert!((got - gamma).abs() <= 1e-9 * (1.0 + gamma), "γ = {gamma}: {got}");
        assert!((gamma_to_sigma_rel(gamma) - sigma(gamma)).abs() <= 1e-16);
    }
    // The uniform average (γ = 0) has σ_rel = 1/√12, and the paper's two profiles.
    assert!((sigma_rel_to_gamma(12f64.sqrt().recip()).unwrap()).abs() < 1e-12);
    assert!((sigma_rel_to_gamma(0.05).unwrap() - 16.97).abs() < 0.01);
    assert!((sigma_rel_to_gamma(0.10).unwrap() - 6.94).abs() < 0.01);
    for bad in [0.0, -0.05, 0.31, f64::NAN, f64::INFINITY] {
        let err = sigma_rel_to_gamma(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{bad}: {err}");
    }
    for bad in [
        PostHocEma::new().with_sigma_rels(vec![]),
        PostHocEma::new().with_sigma_rels(vec![0.05, 0.5]),
        PostHocEma::new().with_snapshot_every(0),
    ] {
        let config = TrainerConfig::new().with_posthoc_ema(Some(bad));
        assert!(matches!(config.validate(), Err(Error::InvalidParameter { .. })));
    }
    // β_t = (1 − 1/t)^(γ+1): β_1 = 0, and with γ = 0 the EMA is the running mean.
    assert_eq!(posthoc_ema::power_ema_decay(6.94, 1), 0.0);
    assert_eq!(posthoc_ema::power_ema_decay(0.0, 4), 0.75);
    // The inner product of two profiles against midpoint quadrature of ∫ p_a p_b.
    let profile =
        |t: f64, g: f64, s: f64| if s <= t { (g + 1.0) * s.powf(g) / t.powf(g + 1.0) } else { 0.0 };
    for (ta, ga, tb, gb) in [(3.0, 2.0, 5.0, 6.94), (5.0, 16.97, 2.0, 0.5), (4.0, 1.0, 4.0, 1.0)] {
        let m = 200_000;
        let h = f64::min(ta, tb) / m as f64;
        let quad: f64 = (0..m)
            .map(|i| (i as f64 + 0.5) * h)
            .map(|s| profile(ta, ga, s) * profile(tb, gb, s) * h)
            .sum();
        let closed = posthoc_ema::profile_inner_product(ta, ga, tb, gb);
        assert!((closed - quad).abs() <= 1e-6 * quad, "{closed} vs quadrature {quad}");
    }
}

/// A point `θ ∈ R^d`, the model of the quadratic toy problem.
#[derive(Module, Debug)]
struct Point {
    theta: Param<Tensor<1>>,
}

/// `L(θ) = ½ mean_b ‖x_b − θ‖²` over a batch of noisy targets `x_b = θ* + z_b`: its gradient
/// `θ − x̄` is a noisy gradient of `½‖θ − θ*‖²` (the optimum `θ*`).
struct NoisyQuadratic;

impl Objective<Point, 2> for NoisyQuadratic {
    fn loss(
        &self,
        model: &Point,
        x0: Tensor<2>,
        _rng: &mut dyn RngCore,
    ) -> scorefield_core::Result<LossOutput> {
        let [b, d] = x0.dims();
        let theta = model.theta.val().unsqueeze_dim::<2>(0).expand([b, d]);
        let per_sample = x0.sub(theta).square().sum_dim(1).reshape([b]).mul_scalar(0.5);
        Ok(LossOutput { loss: per_sample.clone().mean(), per_sample, level: None })
    }
}

#[test]
fn posthoc_ema_reconstructs_a_tracked_profile_and_beats_the_raw_weights_on_a_noisy_quadratic() {
    let dev = device();
    let dir = scratch("posthoc");
    let (d, batch, steps) = (16, 4, 800);
    let optimum: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
    let start: Vec<f64> = optimum.iter().map(|o| o + 1.0).collect();
    let point = |values: &[f64]| Point {
        theta: Param::from_tensor(Tensor::from_data(TensorData::new(values.to_vec(), [d]), &dev)),
    };
    let posthoc = PostHocEma::new().with_sigma_rels(vec![0.05, 0.10]).with_snapshot_every(20);
    let config = TrainerConfig::new()
        .with_learning_rate(0.2)
        .with_posthoc_ema(Some(posthoc))
        .with_batch_size(batch)
        .with_seed(7);
    let mut trainer = Trainer::new(point(&start), "{}", config).unwrap();
    let targets = |rng: &mut StdRng| {
        let values: Vec<f64> = (0..batch * d)
            .map(|i| {
                optimum[i % d]
                    + rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, rng)
            })
            .collect();
        Ok::<_, FitError>(Tensor::from_data(TensorData::new(values, [batch, d]), &dev))
    };
    // Beside the trainer, this test tracks the profile σ_rel = 0.075 directly, by its own
    // recursion β_t = (1 − 1/t)^(γ+1), and keeps the trajectory θ_1, …, θ_T.
    let sigma_rel = 0.075;
    let gamma = sigma_rel_to_gamma(sigma_rel).unwrap();
    let mut direct = start.clone();
    let mut trajectory: Vec<Vec<f64>> = Vec::new();
    let mut track = every(1, |t: &Trainer<Point>, _: &StepReport| {
        let theta = params(t.model()).concat();
        let step = t.steps() as f64;
        let beta = (1.0 - 1.0 / step).powf(gamma + 1.0);
        for (e, th) in direct.iter_mut().zip(&theta) {
            *e = beta * *e + (1.0 - beta) * th;
        }
        trajectory.push(theta);
        Ok(())
    });
    let mut saves = Checkpoints::new(&dir, 0);
    trainer.fit(&NoisyQuadratic, steps, targets, &mut [&mut track, &mut saves]).unwrap();
    let snapshots = list_snapshots(&dir).unwrap();
    assert_eq!(snapshots.len(), steps as usize / 20);
    assert_eq!((snapshots[0].step, snapshots.last().unwrap().step), (20, steps));

    let rebuilt = reconstruct(&dir, sigma_rel, None, point(&start), "{}").unwrap();
    assert_eq!((rebuilt.step, rebuilt.fit.coefficients.len()), (steps, 2 * snapshots.len()));
    let rec = params(&rebuilt.model).concat();
    let fit = &rebuilt.fit;
    println!(
        "post-hoc EMA σ_rel = {sigma_rel} (γ = {gamma:.3}) from {} profiles: residual {:.2e} \
         (relative {:.2e})",
        fit.coefficients.len(),
        fit.residual,
        fit.relative_residual,
    );
    assert!((fit.coefficients.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(fit.relative_residual < 0.05, "EDM2's fit is close: {}", fit.relative_residual);
    // |θ_r − θ̂| ≤ ‖q − p_r‖₂ (Σ_τ (θ_τ − c)²)^½, c the mean of θ_τ (module docs), plus
    // round-off; returns the largest gap/bound.
    let check = |rec: &[f64], direct: &[f64], fit: &PostHocFit| -> f64 {
        let mut worst: f64 = 0.0;
        for (j, (r, e)) in rec.iter().zip(direct).enumerate() {
            let c = trajectory.iter().map(|th| th[j]).sum::<f64>() / steps as f64;
            let spread = trajectory.iter().map(|th| (th[j] - c).powi(2)).sum::<f64>().sqrt();
            let bound = fit.residual * spread + 1e-10 * (1.0 + c.abs());
            let gap = (r - e).abs();
            assert!(gap <= bound, "θ_{j}: |{r} − {e}| = {gap:.3e} > {bound:.3e}");
            worst = worst.max(gap / bound);
        }
        worst
    };
    let worst_ratio = check(&rec, &direct, fit);
    // A profile the trainer tracked itself (σ_rel = 0.10) is reproduced to a residual of
    // round-off (the SVD's cut-off), and so are its weights.
    let same = reconstruct(&dir, 0.10, None, point(&start), "{}").unwrap();
    assert!(same.fit.relative_residual < 1e-5, "{}", same.fit.relative_residual);
    check(&params(&same.model).concat(), &params(&trainer.posthoc_emas()[1]).concat(), &same.fit);
    // On the toy problem, the average is nearer the optimum than the last weights.
    let distance =
        |v: &[f64]| v.iter().zip(&optimum).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let raw = distance(trajectory.last().unwrap());
    let averaged = distance(&rec);
    println!(
        "noisy quadratic: ‖θ_T − θ*‖ = {raw:.4}, reconstructed EMA {averaged:.4}, direct {:.4}; \
         worst gap/bound {worst_ratio:.3}",
        distance(&direct)
    );
    assert!(averaged < 0.5 * raw, "{averaged} vs {raw}");
    // Bad requests are typed errors.
    let err = reconstruct(&dir, 0.5, None, point(&start), "{}").unwrap_err();
    assert!(matches!(err, CheckpointError::Invalid(_)), "{err}");
    let err = reconstruct(&dir, 0.1, Some(5), point(&start), "{}").unwrap_err();
    assert!(matches!(err, CheckpointError::Invalid(_)), "{err}");
    let err = reconstruct(&dir, 0.1, None, point(&start), "{\"other\": 1}").unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { what: "model config", .. }), "{err}");
    let empty = scratch("posthoc-empty");
    let err = reconstruct(&empty, 0.1, None, point(&start), "{}").unwrap_err();
    assert!(matches!(err, CheckpointError::NotFound { .. }), "{err}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&empty).unwrap();
}
