//! Langevin dynamics at one fixed noise level.
//!
//! ```text
//! x ← x + (α/2)·s(x, level) + √α·z,   z ~ N(0, I),   K times,
//! ```
//!
//! with `α = step_size`, the library's convention (`docs/conventions.md`). The same update is
//! often written `x ← x + ε·s + √(2ε)·z` (Roberts & Tweedie; the NCSN code): that `ε` is `α/2`.
//! As `α → 0` and `K·α → ∞` the samples follow `p(x)`, the density whose score `s` is.
//! Without the noise term it is gradient ascent on `log p` and collapses onto the modes.
//!
//! The score sees only the local shape of `p`: on a mixture whose components barely overlap,
//! Langevin started from a broad initialisation keeps every sample in the basin it started in,
//! so the mixture weights come out as the basins' shares of the initialisation, not as the
//! weights. Annealing the noise level ([`AnnealedLangevin`](super::AnnealedLangevin)) fixes
//! that.

use burn::tensor::Tensor;
use rand::RngCore;

use crate::error::{Error, Result, ensure_finite, ensure_positive};
use crate::sampler::{Driver, Grid, Node, Observer, Sampler, Step, StepContext, StepOutput};
use crate::schedule::NoiseSchedule;
use crate::score::ScoreModel;

/// Langevin dynamics `x ← x + (α/2)·s(x, level) + √α·z` for a fixed number of steps at one
/// fixed noise level (by default the clean level `t = 0`, `m = 1`, `σ = 0`).
///
/// ```
/// use scorefield_core::analytic::Gaussian;
/// use scorefield_core::sampler::Langevin;
/// use scorefield_core::Sampler;
/// use rand::SeedableRng;
///
/// let device = scorefield_core::device("flex")?;
/// let data = Gaussian::isotropic(&[1.0, -1.0], 0.5)?;
/// let init = burn::tensor::Tensor::<2>::zeros([256, 2], &device);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let x = Langevin::new(0.05, 200)?.sample(&data, init, &mut rng, &mut ())?;
/// assert_eq!(x.dims(), [256, 2]);
/// # Ok::<(), scorefield_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Langevin {
    step_size: f64,
    steps: usize,
    noise: bool,
    t: f64,
    scale: f64,
    sigma: f64,
}

impl Langevin {
    /// `steps` Langevin steps of size `α = step_size` at the clean level, with noise.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `step_size` is finite and `> 0` and
    /// `steps ≥ 1`.
    pub fn new(step_size: f64, steps: usize) -> Result<Self> {
        ensure_positive("step_size", step_size)?;
        if steps == 0 {
            return Err(Error::invalid("steps", steps, "at least one step is needed"));
        }
        Ok(Self { step_size, steps, noise: true, t: 0.0, scale: 1.0, sigma: 0.0 })
    }

    /// The same sampler, conditioning the model on the noise level of `schedule` at time `t`
    /// (`m(t)`, `σ(t)` from [`NoiseSchedule::marginal`]): it then samples `pₜ`.
    ///
    /// Errors with [`Error::InvalidParameter`] if `t`, `m(t)` or `σ(t)` is not finite.
    pub fn at_level<S: NoiseSchedule + ?Sized>(self, schedule: &S, t: f64) -> Result<Self> {
        ensure_finite("t", t)?;
        let marginal = schedule.marginal(t);
        ensure_finite("scale", marginal.scale)?;
        ensure_finite("sigma", marginal.std)?;
        Ok(Self { t, scale: marginal.scale, sigma: marginal.std, ..self })
    }

    /// The same sampler with (`true`, the default) or without the noise term `√α·z`; without
    /// it the update is gradient ascent `x ← x + (α/2)·s`.
    pub fn with_noise(self, noise: bool) -> Self {
        Self { noise, ..self }
    }

    /// The step size `α`.
    pub fn step_size(&self) -> f64 {
        self.step_size
    }

    /// The number of steps `K`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Whether the noise term is added.
    pub fn noise(&self) -> bool {
        self.noise
    }

    /// The time `t` of the noise level the model is conditioned on.
    pub fn t(&self) -> f64 {
        self.t
    }

    /// The noise level `σ(t)` the model is conditioned on.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The level the model is conditioned on.
    pub fn node(&self) -> Node {
        Node { t: self.t, scale: self.scale, sigma: self.sigma }
    }

    /// The driver that runs this sampler: `K` steps on the [stationary](Grid::stationary)
    /// grid of its one level.
    pub fn driver(&self) -> Result<Driver<Langevin>> {
        Ok(Driver::new(*self, Grid::stationary(&[self.node()], self.steps)?))
    }
}

/// One Langevin step at the level of node `i + 1`, on `x̃ = x/m`:
/// `x̃ ← x̃ + (α/2m)·s(m·x̃) + (√α/m)·z`, the update `x ← x + (α/2)·s + √α·z` divided by `m`.
impl<const D: usize> Step<D> for Langevin {
    type State = ();

    fn name(&self) -> &'static str {
        "Langevin"
    }

    fn dwells(&self) -> bool {
        true
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        _: &mut (),
    ) -> Result<StepOutput<D>> {
        let node = ctx.node(i + 1);
        let (alpha, m) = (self.step_size, node.scale);
        let s = ctx.score(&x, node)?;
        let denoised = x.clone() + s.clone().mul_scalar(node.sigma * node.sigma / m);
        let mut x = x + s.mul_scalar(alpha / (2.0 * m)); // x̃ + (α/2m)·s
        if self.noise {
            x = x.clone() + ctx.noise(&x)?.mul_scalar(alpha.sqrt() / m); // + (√α/m)·z
        }
        Ok(StepOutput { x, denoised })
    }
}

impl<M: ScoreModel<D>, const D: usize> Sampler<M, D> for Langevin {
    /// Runs `K` steps from `init` on [`Langevin::driver`]; reports each with the fixed `t`
    /// and `σ`.
    ///
    /// Errors with [`Error::ShapeMismatch`] if `init` is not a non-empty batch of the model's
    /// sample shape or the model's output has another shape, and with [`Error::NonFinite`]
    /// if `init` or a step is not finite.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        self.driver()?.sample(model, init, rng, observer)
    }
}
