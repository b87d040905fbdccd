//! The trainer in f32 on flex: DSM on a tiny (synthetic) MNIST subset with a small NCSN U-Net lowers the
//! loss, and a run resumed from a checkpoint continues bit for bit (with a learning-rate decay,
//! the EMA's warm-up and post-hoc EMA on).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use scorefield::Objective;
use scorefield::data::mnist::Mnist;
use scorefield::nn::train::reconstruct;
use scorefield::nn::{
    EmaWarmup, LrDecay, NcsnUnet, NcsnUnetConfig, PostHocEma, ScoreMlp, ScoreMlpConfig, Trainer,
    TrainerConfig,
};
use scorefield::objective::DenoisingScoreMatching;
use scorefield::schedule::GeometricSigmas;
use std::path::Path;

use crate::common::{MnistFixture, flex};

/// Every float parameter's bits, in visiting order.
fn param_bits<M: Module>(module: &M) -> Vec<Vec<u32>> {
    struct Bits(Vec<Vec<u32>>);
    impl ModuleVisitor for Bits {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = param.val().inner().try_into_vec_as::<f32>().unwrap();
            self.0.push(values.iter().map(|v| v.to_bits()).collect());
        }
    }
    let mut bits = Bits(Vec::new());
    module.visit(&mut bits);
    bits.0
}

fn ncsn() -> DenoisingScoreMatching {
    DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap()
}

/// The trainer's loop on 64 IDX digits read by the MNIST loader: a synthetic split (the loop,
/// not the digits, is under test), so it runs on any clone.
#[test]
fn dsm_on_a_tiny_mnist_subset_lowers_the_loss() {
    let fixture = MnistFixture::write("train-dsm", 64);
    let mnist = Mnist::load(&fixture.dir).unwrap();
    let device = flex();
    let subset: Vec<usize> = (0..64).collect();
    let unet = NcsnUnetConfig::new().with_width(8).with_groups(4).with_embedding(16);
    let unet = unet.with_embedding_hidden(32);
    let config = TrainerConfig::new().with_learning_rate(2e-3).with_batch_size(16).with_seed(5);
    let mut trainer = Trainer::new(unet.init(&device), unet.to_string(), config).unwrap();
    let objective = ncsn();

    // The loss on the whole subset with fixed noise, before and after.
    let eval = |trainer: &Trainer<NcsnUnet>| -> f64 {
        let model = trainer.model().valid();
        let x = mnist.images(&subset, &device).unwrap();
        let out = objective.loss(&model, x, &mut StdRng::seed_from_u64(99)).unwrap();
        out.loss.into_scalar::<f64>()
    };
    let before = eval(&trainer);
    let mut losses = Vec::new();
    for _ in 0..20 {
        let mut rng = trainer.batch_rng();
        let picks: Vec<usize> = sample(&mut rng, subset.len(), 16).into_iter().collect();
        let x = mnist.batch(&picks, &device, &mut rng).unwrap();
        losses.push(trainer.step(&objective, x).unwrap().loss);
    }
    let after = eval(&trainer);
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[15..].iter().sum::<f64>() / 5.0;
    println!(
        "MNIST DSM ({} parameters): training loss, first 5 steps {first:.2}, last 5 {last:.2}; \
         whole subset with fixed noise {before:.2} → {after:.2}",
        trainer.model().num_params()
    );
    assert!(after < 0.7 * before, "{before} → {after}");
    assert!(last < first, "{first} → {last}");
}

#[test]
fn an_f32_run_resumes_bit_identically() {
    let device = flex();
    let mixture = scorefield::data::toy::ring(4, 2.0, 0.2).unwrap();
    let model_config = ScoreMlpConfig::new(2).with_hidden(16).with_layers(2);
    let json = model_config.to_string();
    // Every piece of state on: warm-up and decay of the learning rate, clipping, the EMA's
    // warm-up and two post-hoc EMA profiles with snapshots.
    let config = TrainerConfig::new()
        .with_warmup_steps(2)
        .with_lr_decay(Some(LrDecay::Cosine { decay_steps: 20, min_learning_rate: 1e-5 }))
        .with_grad_clip_norm(Some(1.0))
        .with_ema_decay(0.9)
        .with_ema_warmup(Some(EmaWarmup::Power { inv_gamma: 1.0, power: 0.75 }))
        .with_posthoc_ema(Some(PostHocEma::new().with_snapshot_every(5)))
        .with_batch_size(32);
    let run = |trainer: &mut Trainer<ScoreMlp>, steps: usize, dir: &Path| -> Vec<u64> {
        (0..steps)
            .map(|_| {
                let x = mixture.sample(32, &device, &mut trainer.batch_rng());
                let loss = trainer.step(&ncsn(), x).unwrap().loss.to_bits();
                if trainer.snapshot_due() {
                    trainer.save_snapshot(dir).unwrap();
                }
                loss
            })
            .collect()
    };
    let scratch = |name: &str| {
        let dir = std::env::temp_dir().join(format!("scorefield-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    };
    // 20 steps straight against 10 + save + load + 10.
    let (dir, straight_dir) = (scratch("resume"), scratch("resume-straight"));
    let model = model_config.init(&device);
    let mut straight = Trainer::new(model.clone(), json.clone(), config.clone()).unwrap();
    let straight_losses = run(&mut straight, 20, &straight_dir);

    let mut first = Trainer::new(model, json.clone(), config).unwrap();
    let mut losses = run(&mut first, 10, &dir);
    first.save(&dir).unwrap();
    let info = scorefield::nn::read_checkpoint(&dir).unwrap();
    assert_eq!((info.step, info.float_dtype.as_str()), (10, "F32"));
    let mut resumed = Trainer::load(&dir, model_config.init(&device), &json).unwrap();
    losses.extend(run(&mut resumed, 10, &dir));
    assert_eq!(losses, straight_losses);
    assert_eq!(param_bits(resumed.model()), param_bits(straight.model()));
    assert_eq!(param_bits(resumed.ema()), param_bits(straight.ema()));
    assert_eq!(resumed.posthoc_emas().len(), 2);
    for (a, b) in resumed.posthoc_emas().iter().zip(straight.posthoc_emas()) {
        assert_eq!(param_bits(a), param_bits(b));
    }
    // The snapshots of both runs (steps 5, 10, 15, 20) are the same bytes, and the EMA
    // rebuilt from them is the same model.
    let files = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("posthoc-ema"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    assert_eq!(files(&dir).len(), 12);
    assert!(files(&dir) == files(&straight_dir), "the snapshots differ");
    let rebuild = |dir: &Path| {
        let r = reconstruct(dir, 0.07, None, model_config.init(&device), &json).unwrap();
        param_bits(&r.model)
    };
    assert_eq!(rebuild(&dir), rebuild(&straight_dir));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&straight_dir).unwrap();
}
