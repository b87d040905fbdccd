//! What ties a [`Trainer`](super::Trainer) and its checkpoints to one architecture: the
//! model's Burn [`Config`], which builds the model.
//!
//! A checkpoint stores the configuration as JSON; [`Trainer::resume`](super::Trainer::resume)
//! parses it back into the configuration type, rebuilds the model from it and loads the
//! weights into it, so a caller never rebuilds a model by hand, and a checkpoint of another
//! architecture is a typed [`Mismatch`](super::CheckpointError::Mismatch), not a misread.
//!
//! The networks' configurations ([`NcsnUnetConfig`], [`ScoreMlpConfig`]) build networks;
//! the parameterisations of `scorefield_core::param` wrap them, each with its own config
//! whose JSON names the wrapper, so that an ε-prediction checkpoint does not load as a
//! preconditioned one:
//!
//! ```text
//! EpsilonPredictionConfig::new(SigmaTildeConfig::new(unet))
//!     ↦ {"epsilon_prediction": {"sigma_tilde": {"width": 16, …}}}
//! PreconditionedConfig::new(unet, 0.5)
//!     ↦ {"preconditioned": {"width": 16, …}, "sigma_data": 0.5}
//! ```
//!
//! ```
//! use scorefield_nn::train::{ModelConfig, PreconditionedConfig};
//! use scorefield_nn::NcsnUnetConfig;
//!
//! let device = scorefield_core::device("flex")?;
//! let config = PreconditionedConfig::new(NcsnUnetConfig::new().with_width(8), 0.5)?;
//! let model = config.init_model(&device)?; // a Preconditioned<NcsnUnet>
//! assert_eq!(model.sigma_data(), 0.5);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use burn::config::Config;
use burn::module::{Module, ModuleDisplay};
use burn::tensor::Device;
use scorefield_core::param::{
    DataPrediction, EpsilonPrediction, Preconditioned, ScorePrediction, SigmaTilde, VPrediction,
};
use scorefield_core::{Error, Result};

use super::checkpoint::{CheckpointError, read_checkpoint};
use super::posthoc_ema::{Reconstruction, list_snapshots, reconstruct};
use super::trainer::{Trainer, TrainerConfig};
use crate::{NcsnUnet, NcsnUnetConfig, ScoreMlp, ScoreMlpConfig};

/// A model's configuration that builds the model: what a trainer and its checkpoints are
/// tied to.
pub trait ModelConfig: Config + Clone {
    /// The model it builds (a Burn module that the parameterisations can wrap).
    type Model: Module + ModuleDisplay;

    /// A freshly initialised model on `device` (Burn's `init`, with the device's seed).
    ///
    /// Errors with [`Error::InvalidParameter`] for a configuration that builds no model.
    fn init_model(&self, device: &Device) -> Result<Self::Model>;

    /// The configuration as the JSON a checkpoint stores.
    fn to_json(&self) -> String {
        burn::config::config_to_json(self)
    }

    /// The configuration a checkpoint stored.
    ///
    /// Errors with [`Error::InvalidParameter`] naming `"model config"` if `json` is not a
    /// configuration of this type (another architecture or parameterisation).
    fn from_json(json: &str) -> Result<Self> {
        Self::load_binary(json.as_bytes()).map_err(|e| {
            let shown: String = json.chars().take(120).collect();
            Error::invalid(
                "model config",
                shown,
                format!("not a {}: {e}", short_type_name::<Self>()),
            )
        })
    }
}

impl<M: Module> Trainer<M> {
    /// Builds the model that `model_config` describes on `device` and starts training it
    /// with `config` ([`Trainer::new`] with the configuration's JSON, which every
    /// checkpoint keeps).
    ///
    /// Errors as [`ModelConfig::init_model`] and [`TrainerConfig::validate`].
    pub fn from_config<C>(model_config: &C, config: TrainerConfig, device: &Device) -> Result<Self>
    where
        C: ModelConfig<Model = M>,
    {
        Trainer::new(model_config.init_model(device)?, model_config.to_json(), config)
    }

    /// Resumes the run saved in the checkpoint directory `dir` on `device`: reads the
    /// model configuration the checkpoint stored as a `C`, rebuilds the model from it and
    /// loads every weight, the EMA, the optimiser state and the step ([`Trainer::load`]).
    /// Returns the trainer and the configuration. As with [`Trainer::load`], the steps that
    /// follow are bit-identical to an uninterrupted run on the same backend and dtype.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use scorefield_nn::train::PreconditionedConfig;
    /// use scorefield_nn::{NcsnUnetConfig, Trainer};
    ///
    /// let device = scorefield_core::device("flex")?;
    /// let (trainer, config) =
    ///     Trainer::resume::<PreconditionedConfig<NcsnUnetConfig>>("out/checkpoint", &device)?;
    /// println!("step {} of a width-{} U-Net", trainer.steps(), config.network().width);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors with [`CheckpointError::Mismatch`] if the checkpoint holds the configuration of
    /// another model type or parameterisation, or one that builds no model, and otherwise as
    /// [`Trainer::load`].
    pub fn resume<C>(
        dir: impl AsRef<std::path::Path>,
        device: &Device,
    ) -> core::result::Result<(Self, C), CheckpointError>
    where
        C: ModelConfig<Model = M>,
    {
        let dir = dir.as_ref();
        let json = read_checkpoint(dir)?.model_config;
        let (model, model_config) = build_saved::<C>(&json, device)?;
        Ok((Trainer::load(dir, model, &json)?, model_config))
    }
}

/// EDM2's post-hoc EMA of relative length `sigma_rel` at `at_step` (default: the last
/// snapshot's) from the snapshots in `dir` ([`reconstruct`]), the model rebuilt on `device`
/// from the configuration the snapshots stored, read as a `C`.
///
/// Errors with [`CheckpointError::Mismatch`] if the snapshots hold the configuration of
/// another model type or parameterisation, and otherwise as [`reconstruct`].
pub fn reconstruct_as<C: ModelConfig>(
    dir: impl AsRef<std::path::Path>,
    sigma_rel: f64,
    at_step: Option<u64>,
    device: &Device,
) -> core::result::Result<(Reconstruction<C::Model>, C), CheckpointError> {
    let dir = dir.as_ref();
    let snapshots = list_snapshots(dir)?;
    let json = snapshots.last().map(|s| s.model_config.clone()).unwrap_or_default();
    let (model, model_config) = build_saved::<C>(&json, device)?;
    Ok((reconstruct(dir, sigma_rel, at_step, model, &json)?, model_config))
}

/// The configuration a checkpoint or snapshot stored, read as a `C`, and a fresh model built
/// from it on `device`; a `Mismatch` if it is not a `C` or builds no model.
fn build_saved<C: ModelConfig>(
    json: &str,
    device: &Device,
) -> core::result::Result<(C::Model, C), CheckpointError> {
    let mismatch =
        |e: Error| CheckpointError::Mismatch { what: "model config", reason: e.to_string() };
    let model_config = C::from_json(json).map_err(mismatch)?;
    Ok((model_config.init_model(device).map_err(mismatch)?, model_config))
}

/// `EpsilonPredictionConfig<SigmaTildeConfig<NcsnUnetConfig>>` without module paths.
fn short_type_name<T>() -> String {
    let last = |word: &str| word.rsplit("::").next().unwrap_or_default().to_string();
    let (mut out, mut word) = (String::new(), String::new());
    for c in core::any::type_name::<T>().chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out += &last(&word);
            word.clear();
            out.push(c);
        }
    }
    out + &last(&word)
}

impl ModelConfig for NcsnUnetConfig {
    type Model = NcsnUnet;

    fn init_model(&self, device: &Device) -> Result<NcsnUnet> {
        Ok(self.init(device))
    }
}

impl ModelConfig for crate::NoisyClassifierMlpConfig {
    type Model = crate::NoisyClassifierMlp;

    fn init_model(&self, device: &Device) -> Result<crate::NoisyClassifierMlp> {
        Ok(self.init(device))
    }
}

impl ModelConfig for ScoreMlpConfig {
    type Model = ScoreMlp;

    fn init_model(&self, device: &Device) -> Result<ScoreMlp> {
        Ok(self.init(device))
    }
}

/// The config of a parameterisation that only wraps its network: `$name { $field: C }`
/// builds `$model { net }`, and its JSON is `{"$field": <the network's config>}`.
macro_rules! wrapper_config {
    ($(#[$doc:meta])* $name:ident, $field:ident, $model:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, burn::serde::Serialize, burn::serde::Deserialize)]
        #[serde(crate = "burn::serde", deny_unknown_fields)]
        pub struct $name<C> {
            $field: C,
        }

        impl<C> $name<C> {
            /// The parameterisation of the network that `network` builds.
            pub fn new(network: C) -> Self {
                Self { $field: network }
            }

            /// The network's configuration.
            pub fn network(&self) -> &C {
                &self.$field
            }
        }

        impl<C: ModelConfig> Config for $name<C> {}

        impl<C: ModelConfig> ModelConfig for $name<C> {
            type Model = $model<C::Model>;

            fn init_model(&self, device: &Device) -> Result<Self::Model> {
                Ok($model { net: self.$field.init_model(device)? })
            }
        }

        impl<C: ModelConfig> core::fmt::Display for $name<C> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(&self.to_json())
            }
        }
    };
}

wrapper_config!(
    /// Builds a [`ScorePrediction`]: the network predicts the score.
    ScorePredictionConfig,
    score_prediction,
    ScorePrediction
);
wrapper_config!(
    /// Builds an [`EpsilonPrediction`]: the network predicts the noise (DDPM).
    EpsilonPredictionConfig,
    epsilon_prediction,
    EpsilonPrediction
);
wrapper_config!(
    /// Builds a [`DataPrediction`]: the network predicts the clean data.
    DataPredictionConfig,
    data_prediction,
    DataPrediction
);
wrapper_config!(
    /// Builds a [`VPrediction`]: the network predicts `v` (Salimans & Ho 2022).
    VPredictionConfig,
    v_prediction,
    VPrediction
);
wrapper_config!(
    /// Builds a [`SigmaTilde`]: the network conditioned on `σ̃ = σ/m`.
    SigmaTildeConfig,
    sigma_tilde,
    SigmaTilde
);

/// Builds a [`Preconditioned`] network: EDM's preconditioning with `σ_data`.
#[derive(Debug, Clone, PartialEq, burn::serde::Serialize, burn::serde::Deserialize)]
#[serde(crate = "burn::serde", deny_unknown_fields)]
pub struct PreconditionedConfig<C> {
    preconditioned: C,
    sigma_data: f64,
}

impl<C> PreconditionedConfig<C> {
    /// EDM's preconditioning (EDM: `σ_data = 0.5`) of the network that `network` builds.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `σ_data > 0` and finite.
    pub fn new(network: C, sigma_data: f64) -> Result<Self> {
        scorefield_core::error::ensure_positive("sigma_data", sigma_data)?;
        Ok(Self { preconditioned: network, sigma_data })
    }

    /// The network's configuration.
    pub fn network(&self) -> &C {
        &self.preconditioned
    }

    /// `σ_data`.
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data
    }
}

impl<C: ModelConfig> Config for PreconditionedConfig<C> {}

impl<C: ModelConfig> ModelConfig for PreconditionedConfig<C> {
    type Model = Preconditioned<C::Model>;

    /// Errors with [`Error::InvalidParameter`] for a `σ_data` that is not positive (possible
    /// only in a hand-edited JSON).
    fn init_model(&self, device: &Device) -> Result<Self::Model> {
        Preconditioned::new(self.preconditioned.init_model(device)?, self.sigma_data)
    }
}

impl<C: ModelConfig> core::fmt::Display for PreconditionedConfig<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_configs_name_their_parameterisation_and_refuse_each_other() {
        let unet = NcsnUnetConfig::new().with_width(8);
        let eps = EpsilonPredictionConfig::new(SigmaTildeConfig::new(unet.clone()));
        let json = eps.to_json();
        let compact: String = json.split_whitespace().collect();
        assert!(compact.starts_with(r#"{"epsilon_prediction":{"sigma_tilde":{"#), "{json}");
        assert!(compact.contains(r#""width":8"#), "{json}");
        type Eps = EpsilonPredictionConfig<SigmaTildeConfig<NcsnUnetConfig>>;
        assert_eq!(Eps::from_json(&json).unwrap().to_json(), json);
        // Another wrapper, or a bare network, is refused by name.
        let err = DataPredictionConfig::<SigmaTildeConfig<NcsnUnetConfig>>::from_json(&json);
        match err {
            Err(Error::InvalidParameter { name: "model config", reason, .. }) => {
                assert!(
                    reason.contains("not a DataPredictionConfig<SigmaTildeConfig<NcsnUnetConfig>>"),
                    "{reason}"
                );
            }
            other => panic!("expected a model-config error, got {other:?}"),
        }
        let err = PreconditionedConfig::<NcsnUnetConfig>::from_json(&unet.to_json());
        assert!(matches!(err, Err(Error::InvalidParameter { name: "model config", .. })));
        let pre = PreconditionedConfig::new(unet, 0.5).unwrap();
        let back = PreconditionedConfig::<NcsnUnetConfig>::from_json(&pre.to_json()).unwrap();
        assert_eq!((back.to_json(), back.sigma_data()), (pre.to_json(), 0.5));
    }

    #[test]
    fn preconditioning_needs_a_positive_sigma_data() {
        let unet = NcsnUnetConfig::new().with_width(8);
        for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            let err = PreconditionedConfig::new(unet.clone(), bad).unwrap_err();
            assert!(matches!(err, Error::InvalidParameter { name: "sigma_data", .. }), "{bad}");
        }
        // A hand-edited σ_data parses, and the model refuses to build.
        let edited = format!(r#"{{"preconditioned": {}, "sigma_data": -1.0}}"#, unet.to_json());
        let config = PreconditionedConfig::<NcsnUnetConfig>::from_json(&edited).unwrap();
        let device = scorefield_core::device("flex").unwrap();
        let err = config.init_model(&device).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { name: "sigma_data", .. }));
    }

    /// `from_config`, 3 steps, save, `resume` (the model rebuilt from the checkpoint's own
    /// configuration), 3 steps: the losses and weights of a straight 6-step run, bit for bit;
    /// resuming as another configuration type is a typed mismatch.
    #[test]
    fn resume_rebuilds_the_model_from_the_checkpoint_and_continues_bit_identically() {
        use scorefield_core::analytic::Gaussian;
        use scorefield_core::objective::DenoisingScoreMatching;
        use scorefield_core::schedule::GeometricSigmas;

        let device = crate::testing::device();
        let data = Gaussian::isotropic(&[0.5, -1.0], 0.7).unwrap();
        let objective = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap();
        let model_config = ScoreMlpConfig::new(2).with_hidden(16).with_layers(2);
        let posthoc = super::super::PostHocEma::new().with_snapshot_every(2);
        let config =
            TrainerConfig::new().with_batch_size(16).with_seed(5).with_posthoc_ema(Some(posthoc));
        let run = |trainer: &mut Trainer<ScoreMlp>, until: u64| -> Vec<u64> {
            let mut losses = Vec::new();
            while trainer.steps() < until {
                let x = data.sample(16, &device, &mut trainer.batch_rng());
                losses.push(trainer.step(&objective, x).unwrap().loss.to_bits());
            }
            losses
        };
        fn weights_of(model: &ScoreMlp) -> Vec<u64> {
            struct Bits(Vec<u64>);
            impl burn::module::ModuleVisitor for Bits {
                fn visit_float<const D: usize>(
                    &mut self,
                    param: &burn::module::Param<burn::tensor::Tensor<D>>,
                ) {
                    let values = param.val().try_into_vec_as::<f64>().unwrap();
                    self.0.extend(values.iter().map(|v| v.to_bits()));
                }
            }
            let mut bits = Bits(Vec::new());
            model.visit(&mut bits);
            bits.0
        }
        let weights = |trainer: &Trainer<ScoreMlp>| weights_of(trainer.ema());

        // One initialisation for both runs (the device's generator is shared with the tests
        // running beside this one, so seeding it twice would not give the same weights).
        let mut first = Trainer::from_config(&model_config, config.clone(), &device).unwrap();
        let json = model_config.to_json();
        let mut straight = Trainer::new(first.model().valid(), json, config).unwrap();
        let want = run(&mut straight, 6);
        let mut got = run(&mut first, 3);
        let dir = std::env::temp_dir().join(format!(
            "scorefield-resume-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        first.save(&dir).unwrap();
        let (mut resumed, rebuilt) = Trainer::resume::<ScoreMlpConfig>(&dir, &device).unwrap();
        assert_eq!((resumed.steps(), rebuilt.hidden), (3, 16));
        got.extend(run(&mut resumed, 6));
        assert_eq!(got, want, "losses after resume");
        assert_eq!(weights(&resumed), weights(&straight), "EMA weights after resume");

        let err =
            Trainer::resume::<PreconditionedConfig<ScoreMlpConfig>>(&dir, &device).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { what: "model config", .. }), "{err}");

        // The post-hoc EMA, rebuilt from the snapshots' own configuration, is the one the
        // caller gets by building the model by hand.
        resumed.save(&dir).unwrap();
        resumed.save_snapshot(&dir).unwrap();
        let (auto, _) = reconstruct_as::<ScoreMlpConfig>(&dir, 0.08, None, &device).unwrap();
        let json = model_config.to_json();
        let by_hand = reconstruct(&dir, 0.08, None, model_config.init(&device), &json).unwrap();
        let (a, b) = (weights_of(&auto.model), weights_of(&by_hand.model));
        assert!(!a.is_empty() && a == b, "reconstructions differ");
        let err = reconstruct_as::<PreconditionedConfig<ScoreMlpConfig>>(&dir, 0.08, None, &device)
            .unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { what: "model config", .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
