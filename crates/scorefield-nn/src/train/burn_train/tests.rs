//! burn-train's `TrainStep` against the scorefield trainer, and a short run under its
//! `Learner`.

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Tensor, TensorData};
use burn_train::metric::LossMetric;
use burn_train::{Learner, SupervisedTraining, TrainStep};

use super::super::tests::{bits, mixture, mlp_config, ncsn, params, scratch, seeded};
use super::super::{Trainer, TrainerConfig};
use super::{ObjectiveStep, ScoreBatch};
use crate::testing::device;

#[test]
fn train_step_gives_the_trainers_gradient() {
    let dev = device();
    let config = TrainerConfig::new().with_seed(4).with_batch_size(16);
    let model = seeded(mlp_config(8).init(&dev), 2);
    let mut ours = Trainer::new(model.clone(), "{}", config.clone()).unwrap();
    let mut theirs = Trainer::new(model, "{}", config).unwrap();
    for _ in 0..3 {
        let x = mixture().sample(16, &dev, &mut ours.batch_rng());
        // burn-train's step with the seed of the trainer's stream: the same noise.
        let step = ObjectiveStep::<_, _, 2>::new(theirs.model().clone(), ncsn());
        let out = step.step(ScoreBatch { x0: x.clone(), seed: theirs.loss_seed(0) });
        let report = ours.step(&ncsn(), x).unwrap();
        let loss = out.item.loss.into_scalar::<f64>();
        assert_eq!(loss.to_bits(), report.loss.to_bits());
        // Applied by the trainer's second half, the gradient gives the same update, bit for bit.
        let applied = theirs.apply_gradients(out.grads, Vec::new()).unwrap();
        assert_eq!(applied.grad_norm.to_bits(), report.grad_norm.to_bits());
        assert_eq!(bits(&params(theirs.model())), bits(&params(ours.model())));
    }
}

/// Rows of the mixture, batched with the seed of the batch's first row.
#[derive(Clone, Debug)]
struct Rows(Vec<f64>);

impl Batcher<usize, ScoreBatch<2>> for Rows {
    fn batch(&self, items: Vec<usize>, device: &Device) -> ScoreBatch<2> {
        let values: Vec<f64> =
            items.iter().flat_map(|&i| [self.0[2 * i], self.0[2 * i + 1]]).collect();
        let x0 = Tensor::from_data(TensorData::new(values, [items.len(), 2]), device);
        ScoreBatch { x0, seed: items[0] as u64 }
    }
}

#[test]
fn a_learner_trains_an_objective_step() {
    let dev = device();
    let dir = scratch("burn-train");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let rows = Rows(mixture().sample(64, &dev, &mut rng).to_data().try_to_vec::<f64>().unwrap());
    let loader = || {
        DataLoaderBuilder::new(rows.clone())
            .batch_size(16)
            .set_device(dev.clone())
            .build(InMemDataset::new((0..64).collect::<Vec<usize>>()))
    };
    let model = seeded(mlp_config(8).init(&dev), 2).train();
    let before = params(&model);
    let learner =
        Learner::new(ObjectiveStep::<_, _, 2>::new(model, ncsn()), AdamConfig::new().init(), 1e-2);
    let result = SupervisedTraining::new(&dir, loader(), loader())
        .num_epochs(2)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .launch(learner);
    assert!(result.error.is_none(), "{:?}", result.error);
    let after = params(&result.model.model);
    assert_ne!(bits(&before), bits(&after), "8 steps of Adam moved the parameters");
    assert!(after.iter().flatten().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}
