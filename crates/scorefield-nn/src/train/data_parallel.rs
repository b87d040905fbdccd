//! Data parallelism: one step's batch split across `N` ranks, the mean of their gradients
//! applied once.
//!
//! At step `k`, with the batch `x₀` of `B` rows (`B` a multiple of `N`):
//!
//! ```text
//! x₀⁽ʳ⁾  = rows r·B/N .. (r+1)·B/N of x₀                       (rank r's shard, on its device)
//! L_r(θ) = objective.loss(θ, x₀⁽ʳ⁾, rng_{k,r})                    rng_{k,r} = StdRng(mix(seed, k, s_r))
//!          s_0 = 0 (the stream of a single-device run), s_r = r + 1 for r ≥ 1 (1 draws the batch)
//! g      = (1/N) Σ_r ∇_θ L_r(θ)                                (all-reduced by Burn, or simulated)
//! then the single-device step on g: global-norm clipping of g, Adam, one EMA, post-hoc EMA
//! ```
//!
//! With one rank this is exactly [`Trainer::step`] without parallelism (the same code: one
//! shard, stream 0). The reported loss is the mean of the ranks' losses and the per-sample
//! losses and levels are in batch order, so the loss log does not see the ranks.
//!
//! **Reproducibility.** A run is a function of the seed and the number of ranks: every rank's
//! noise comes from its own stream `(seed, k, r)`, and the mean is taken in rank order. Runs
//! with different `N` draw different noise for the same rows (an objective draws its noise
//! for its whole shard from its stream), so they agree in distribution, not in value: the
//! expected update is the same. With the noise held fixed (an objective whose noise travels
//! with the batch rows), `N` ranks give the one-rank update to float tolerance (the tests
//! check this, and that clipping sees the reduced gradient). Resuming a checkpoint with the
//! same `N` continues bit for bit; the checkpoint does not record `N`.
//!
//! **Two engines.** [`DataParallel::devices`] puts one rank on each of several CUDA devices
//! of this process and uses Burn's own distributed engine: the model is copied to every
//! device (`Module::fork`) and its parameters marked with `Tensor::set_distributed`, and
//! `backward` all-reduces (NCCL, mean) each parameter's gradient across the devices as soon
//! as it is complete; rank 0's copy is the trainer's model, updated by the one optimizer, and
//! copied to the other devices again at the next step (a broadcast of the weights, the size of
//! one all-reduce). The backward passes run on one thread per device, because each blocks
//! until every device has submitted its gradients. [`DataParallel::simulated`] runs `N` ranks
//! one after the other on the trainer's own device and averages their gradients with
//! burn-optim's `GradientsAccumulator`: a one-device reference for an `N`-device run (same
//! streams, same shards; the sums differ only in rounding), and gradient accumulation over
//! micro-batches on one device.
//!
//! Burn 0.22 implements the all-reduce only in its CUDA backend, and only across the devices
//! of one process: there is no multi-node all-reduce (see `docs/training.md` for what to do
//! instead).
//!
//! ```
//! use scorefield_core::analytic::GaussianMixture;
//! use scorefield_core::objective::DenoisingScoreMatching;
//! use scorefield_core::schedule::GeometricSigmas;
//! use scorefield_nn::train::DataParallel;
//! use scorefield_nn::{ScoreMlpConfig, Trainer, TrainerConfig};
//!
//! let device = scorefield_core::device("flex")?;
//! let data = GaussianMixture::new(&[0.5, 0.5], &[vec![-1.0, 0.0], vec![1.0, 0.0]], &[0.2, 0.2])?;
//! let model_config = ScoreMlpConfig::new(2).with_hidden(32).with_layers(2);
//! let config = TrainerConfig::new().with_batch_size(64).with_grad_clip_norm(Some(1.0));
//! // Two ranks on this one device; on a machine with GPUs, e.g.
//! // DataParallel::devices((0..4).map(burn::tensor::Device::cuda).collect())?
//! let parallel = DataParallel::simulated(2)?;
//! let mut trainer =
//!     Trainer::from_config(&model_config, config, &device)?.with_data_parallel(parallel)?;
//! let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10)?;
//! let batch = data.sample(64, &device, &mut trainer.batch_rng()); // 32 rows per rank
//! let report = trainer.step(&objective, batch)?;
//! assert_eq!(report.per_sample.len(), 64);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::{Device, distributed::DistributedContext};
use scorefield_core::{Error, Result};

use super::params::scale_grads;
use super::trainer::{RankLosses, TrainBatch, Trainer};

/// How a [`Trainer`] splits each step's batch across ranks and reduces their gradients: one
/// rank per CUDA device through Burn's all-reduce ([`devices`](Self::devices)), or `N` ranks
/// simulated on the trainer's own device ([`simulated`](Self::simulated)). See the
/// [module docs](self) for the step.
///
/// Clones share the distributed context; it is torn down when the last clone is dropped.
#[derive(Clone)]
pub struct DataParallel {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    /// One rank per device. `_context` (with two devices or more) keeps Burn's gradient sync
    /// server alive.
    Devices { devices: Vec<Device>, _context: Option<Arc<DistributedContext>> },
    /// `N` ranks on the model's device, one after the other.
    Simulated(usize),
}

impl fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.engine {
            Engine::Devices { devices, .. } => {
                f.debug_struct("DataParallel").field("devices", devices).finish()
            }
            Engine::Simulated(n) => f.debug_struct("DataParallel").field("simulated", n).finish(),
        }
    }
}

impl DataParallel {
    /// One rank per device, rank `r` on `devices[r]`; the trainer's model must be on
    /// `devices[0]` ([`Trainer::set_data_parallel`] checks). With two devices or more this
    /// starts Burn's distributed context (gradients averaged in `backward`), which needs CUDA
    /// devices (`Device::cuda(i)`, the `cuda` feature): Burn 0.22 implements the all-reduce
    /// only there. One such context per process at a time. One device is the single-device
    /// step.
    ///
    /// Errors with [`Error::InvalidParameter`] for no devices, a repeated device, or two
    /// devices or more that are not all CUDA devices (or without the `cuda` feature).
    pub fn devices(devices: Vec<Device>) -> Result<Self> {
        if devices.is_empty() {
            return Err(Error::invalid("devices", "[]", "must name at least one device"));
        }
        for (i, a) in devices.iter().enumerate() {
            if devices[..i].contains(a) {
                return Err(Error::invalid("devices", format!("{a:?}"), "appears twice"));
            }
        }
        let context = match devices.len() {
            1 => None,
            _ => {
                if let Some(other) = devices.iter().find(|d| !supports_all_reduce(d)) {
                    return Err(Error::invalid(
                        "devices",
                        format!("{other:?}"),
                        "data parallel across devices needs CUDA devices and the `cuda` \
                         feature: Burn 0.22 all-reduces gradients only on CUDA (NCCL)",
                    ));
                }
                let config = burn::tensor::distributed::DistributedConfig {
                    all_reduce_op: burn::tensor::distributed::ReduceOperation::Mean,
                };
                Some(Arc::new(DistributedContext::init(devices.clone(), config)))
            }
        };
        Ok(DataParallel { engine: Engine::Devices { devices, _context: context } })
    }

    /// `ranks` ranks on the trainer's own device, run one after the other, their gradients
    /// averaged on that device: the same shards and random streams as `ranks` devices would
    /// use. Errors with [`Error::InvalidParameter`] for `ranks = 0`.
    pub fn simulated(ranks: usize) -> Result<Self> {
        if ranks == 0 {
            return Err(Error::invalid("ranks", 0, "must be at least 1"));
        }
        Ok(DataParallel { engine: Engine::Simulated(ranks) })
    }

    /// The number of ranks `N`.
    pub fn ranks(&self) -> usize {
        match &self.engine {
            Engine::Devices { devices, .. } => devices.len(),
            Engine::Simulated(n) => *n,
        }
    }

    /// The devices of the ranks, or `None` when they are simulated on the trainer's device.
    pub fn device_list(&self) -> Option<&[Device]> {
        match &self.engine {
            Engine::Devices { devices, .. } => Some(devices),
            Engine::Simulated(_) => None,
        }
    }
}

/// Whether Burn all-reduces gradients on `device`: a CUDA device.
fn supports_all_reduce(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        // `Device` equality ignores autodiff; CUDA device indices are small.
        (0..256usize).any(|i| *device == Device::cuda(i))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

/// Marks every float parameter as distributed: its gradient is all-reduced in `backward`.
struct MarkDistributed;

impl ModuleMapper for MarkDistributed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_distributed(id), mapper)
    }
}

/// The `n` equal shards of `x0` along its first dimension, in order. Errors with
/// [`Error::InvalidParameter`] if its length is not a multiple of `n`.
pub(super) fn shards<const D: usize>(x0: Tensor<D>, n: usize) -> Result<Vec<Tensor<D>>> {
    if n == 1 {
        return Ok(vec![x0]);
    }
    let b = x0.dims()[0];
    if b == 0 || !b.is_multiple_of(n) {
        return Err(Error::invalid(
            "batch",
            b,
            format!("must split into {n} equal, non-empty shards (one per rank)"),
        ));
    }
    let size = b / n;
    Ok((0..n).map(|r| x0.clone().narrow(0, r * size, size)).collect())
}

impl<M: Module> Trainer<M> {
    /// Runs every following step data-parallel over `parallel`'s ranks (see the
    /// [module docs](self)); `None` goes back to one rank. Not saved in checkpoints: set it
    /// again after [`load`](Self::load) (the same number of ranks continues bit for bit).
    ///
    /// Errors with [`Error::InvalidParameter`] if the ranks are devices and the model is not
    /// on the first of them.
    pub fn set_data_parallel(&mut self, parallel: Option<DataParallel>) -> Result<()> {
        if let Some(devices) = parallel.as_ref().and_then(DataParallel::device_list) {
            let model_devices = self.model.devices();
            if model_devices.first() != devices.first() {
                return Err(Error::invalid(
                    "devices",
                    format!("{devices:?}"),
                    format!("rank 0's device must be the model's, {model_devices:?}"),
                ));
            }
        }
        self.parallel = parallel;
        Ok(())
    }

    /// The trainer with [`set_data_parallel`](Self::set_data_parallel)`(Some(parallel))`.
    pub fn with_data_parallel(mut self, parallel: DataParallel) -> Result<Self> {
        self.set_data_parallel(Some(parallel))?;
        Ok(self)
    }

    /// The data parallelism of the steps, if any.
    pub fn data_parallel(&self) -> Option<&DataParallel> {
        self.parallel.as_ref()
    }

    /// The first half of a step: the batch split across the ranks (one without parallelism),
    /// every rank's forward pass, the backward passes and the mean gradient, with each rank's
    /// losses (still on the device). A failing rank stops the step before any backward pass,
    /// so no device waits on another. The trainer's state is unchanged.
    pub(super) fn rank_gradients<O, B, const D: usize>(
        &mut self,
        objective: &O,
        batch: B,
    ) -> Result<(GradientsParams, Vec<RankLosses>)>
    where
        O: ?Sized,
        B: TrainBatch<M, O, D>,
    {
        let parallel = self.parallel.clone();
        let engine = parallel.as_ref().map(|p| &p.engine);
        let n = parallel.as_ref().map_or(1, DataParallel::ranks);
        let devices = match engine {
            Some(Engine::Devices { devices, .. }) if n > 1 => Some(devices.as_slice()),
            _ => None,
        };
        let replicas: Vec<M> = match devices {
            // Rank 0 is the trainer's model; the others are fresh copies of its weights.
            Some(devices) => devices
                .iter()
                .enumerate()
                .map(|(r, device)| {
                    let model = self.model.clone();
                    let model = if r == 0 { model } else { model.fork(device) };
                    model.map(&mut MarkDistributed)
                })
                .collect(),
            None => vec![self.model.clone(); n],
        };
        let mut outs = Vec::with_capacity(n);
        for (rank, (model, shard)) in replicas.iter().zip(batch.split(n)?).enumerate() {
            let shard = match devices {
                Some(devices) if rank > 0 => shard.to_device(&devices[rank]),
                _ => shard,
            };
            outs.push(shard.loss(objective, model, &mut self.loss_rng(rank))?);
        }
        let losses = outs.iter().map(RankLosses::of).collect();
        let mut losses_on_ranks = outs.into_iter().map(|out| out.loss);
        let grads = match devices {
            Some(_) => {
                // Every backward blocks until all devices have submitted their gradients: one
                // thread per rank ≥ 1, rank 0 here. Burn leaves the mean in every rank's
                // gradients; rank 0's are the trainer's.
                let first = losses_on_ranks.next().expect("one rank at least");
                std::thread::scope(|scope| {
                    let others: Vec<_> = losses_on_ranks
                        .map(|loss| {
                            scope.spawn(move || {
                                loss.backward();
                            })
                        })
                        .collect();
                    let grads = GradientsParams::from_grads(first.backward(), &replicas[0]);
                    for handle in others {
                        if let Err(panic) = handle.join() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                    grads
                })
            }
            None if n == 1 => {
                let loss = losses_on_ranks.next().expect("one rank");
                GradientsParams::from_grads(loss.backward(), &self.model)
            }
            None => {
                let mut sum = GradientsAccumulator::new();
                for loss in losses_on_ranks {
                    sum.accumulate(
                        &self.model,
                        GradientsParams::from_grads(loss.backward(), &self.model),
                    );
                }
                let mut grads = sum.grads();
                scale_grads(&self.model, &mut grads, 1.0 / n as f64);
                grads
            }
        };
        Ok((grads, losses))
    }
}

#[cfg(test)]
mod tests;
