//! The driver: one loop that runs any [`Step`] along a [`Grid`].
//!
//! A step is the update from node `i` to node `i + 1` of the grid, written once, in EDM's
//! σ-parameterisation (Karras et al. 2022): the state is `x̃ = x/m`, the level `σ̃ = σ/m`, and
//! the model is seen through its denoiser
//!
//! ```text
//! D(x̃; σ̃) = x̂₀ = (x + σ²·s(x, t))/m,   x = m·x̃       (Tweedie's formula)
//! ```
//!
//! so a solver written for the variance-exploding form runs on every schedule. The driver owns
//! everything else: the conversion of the caller's state `x = m₀·x̃` in and out, the noise (a
//! [`NoiseSource`]), the observer (state and denoised estimate after each step; it may stop
//! the run), the finiteness checks at the caller's cadence, and the count of model
//! evaluations. A step needs nothing private: a user's solver in another crate implements
//! [`Step`] with the public [`StepContext`] and runs under the same driver.
//!
//! ```
//! use scorefield_core::analytic::Gaussian;
//! use scorefield_core::sampler::{Driver, Grid, Heun, PerSampleNoise};
//! use scorefield_core::schedule::Karras;
//!
//! let device = scorefield_core::device("flex")?;
//! let data = Gaussian::isotropic(&[1.0, -1.0], 0.5)?; // its exact score is the model
//! let grid = Grid::karras(Karras::edm(), 18, 7.0)?.with_zero(); // EDM: 18 levels, 35 NFE
//! let driver = Driver::new(Heun::default(), grid);
//! let mut noise = PerSampleNoise::new(0, 64);
//! let init = driver.prior_sample([64, 2], &device, &mut noise)?;
//! let out = driver.run(&data, init, &mut noise, &mut ())?;
//! assert_eq!(out.evaluations, 35);
//! # Ok::<(), scorefield_core::Error>(())
//! ```

use burn::tensor::{Device, Tensor};
use rand::RngCore;

use crate::error::{Error, Result};
use crate::sampler::grid::{Grid, Node};
use crate::sampler::noise::{NoiseSource, RngNoise};
use crate::sampler::{Observer, SampleStep, Sampler, check_finite, check_init};
use crate::score::{NoiseLevel, ScoreModel, check_output};

/// One update of a sampler, from node `i` to node `i + 1` of the grid, on the
/// σ-parameterised state `x̃` (see the module documentation).
///
/// `State` is what the step carries from one node to the next (multistep solvers keep their
/// earlier denoised estimates there); the driver starts every run from `State::default()`.
pub trait Step<const D: usize> {
    /// What the step keeps between nodes.
    type State: Default;

    /// The step's name, for errors and progress (e.g. `"Heun"`).
    fn name(&self) -> &'static str;

    /// Whether the step may stay at one level, as Langevin-type MCMC does: only such steps
    /// run on a grid whose levels repeat ([`Grid::stationary`]). Default `false`.
    fn dwells(&self) -> bool {
        false
    }

    /// Advances `x̃` from node `i` to node `i + 1` of `ctx.grid()`.
    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        state: &mut Self::State,
    ) -> Result<StepOutput<D>>;
}

/// A borrowed step is a step: a sampler that owns its parameters lends them to a driver.
impl<St: Step<D> + ?Sized, const D: usize> Step<D> for &St {
    type State = St::State;

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn dwells(&self) -> bool {
        (**self).dwells()
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        state: &mut Self::State,
    ) -> Result<StepOutput<D>> {
        (**self).step(i, x, ctx, state)
    }
}

/// What a step returns: the new state `x̃ᵢ₊₁` and its denoised estimate `x̂₀` (the last one
/// the step computed).
#[derive(Debug, Clone)]
pub struct StepOutput<const D: usize> {
    /// The state at node `i + 1`, σ-parameterised.
    pub x: Tensor<D>,
    /// The denoised estimate `x̂₀` the step used.
    pub denoised: Tensor<D>,
}

/// What a [`Step`] sees: the grid, the model as a denoiser, and the noise.
pub struct StepContext<'a, const D: usize> {
    grid: &'a Grid,
    model: &'a dyn ScoreModel<D>,
    noise: &'a mut dyn NoiseSource<D>,
    evaluations: usize,
}

impl<'a, const D: usize> StepContext<'a, D> {
    /// A context for running steps by hand (tests, reference values): `model` on `grid`,
    /// noise from `noise`.
    pub fn new(
        grid: &'a Grid,
        model: &'a dyn ScoreModel<D>,
        noise: &'a mut dyn NoiseSource<D>,
    ) -> Self {
        StepContext { grid, model, noise, evaluations: 0 }
    }

    /// The grid.
    pub fn grid(&self) -> &Grid {
        self.grid
    }

    /// Node `i` of the grid.
    pub fn node(&self, i: usize) -> Node {
        self.grid.nodes()[i]
    }

    /// `σ̃ᵢ` of node `i`.
    pub fn sigma(&self, i: usize) -> f64 {
        self.grid.nodes()[i].sigma_tilde()
    }

    /// The denoised estimate `D(x̃; node) = x̃ + (σ²/m)·s(m·x̃, node)` (one model evaluation;
    /// none at the clean level, where it is `x̃`).
    ///
    /// Errors with [`Error::ShapeMismatch`] or [`Error::DTypeMismatch`] if the model's output
    /// differs from its input in shape or dtype.
    pub fn denoise(&mut self, x: &Tensor<D>, node: Node) -> Result<Tensor<D>> {
        if node.sigma == 0.0 {
            return Ok(x.clone());
        }
        let score = self.score(x, node)?;
        Ok(x.clone() + score.mul_scalar(node.sigma * node.sigma / node.scale))
    }

    /// The model's score `s(m·x̃, node)` in the caller's coordinates `x = m·x̃` (one model
    /// evaluation, also at the clean level): for steps written in `x`, as Langevin and the
    /// reverse-SDE predictors are.
    ///
    /// Errors as [`denoise`](Self::denoise).
    pub fn score(&mut self, x: &Tensor<D>, node: Node) -> Result<Tensor<D>> {
        let input = if node.scale == 1.0 { x.clone() } else { x.clone().mul_scalar(node.scale) };
        let score = self.model.score(input, &level_like(node, x));
        check_output("score model output", &score, x)?;
        self.evaluations += 1;
        Ok(score)
    }

    /// The denoised estimate at node `i` of the grid.
    pub fn denoise_at(&mut self, x: &Tensor<D>, i: usize) -> Result<Tensor<D>> {
        self.denoise(x, self.node(i))
    }

    /// `z ~ N(0, I)` like `x`, from the run's noise source.
    pub fn noise(&mut self, like: &Tensor<D>) -> Result<Tensor<D>> {
        self.noise.standard_normal(like)
    }

    /// The model evaluations so far.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }
}

/// The noise level of `node` for every sample of the batch `x`, in `x`'s dtype.
fn level_like<const D: usize>(node: Node, x: &Tensor<D>) -> NoiseLevel {
    let (b, device, dtype) = (x.dims()[0], x.device(), x.dtype());
    let full = |v: f64| Tensor::<1>::full([b], v, (&device, dtype));
    NoiseLevel { t: full(node.t), scale: full(node.scale), sigma: full(node.sigma) }
}

/// How often the driver checks that the state is finite (each check reads one value back to
/// the host: on a GPU, a synchronisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FiniteCheck {
    /// After every step (the default).
    #[default]
    EveryStep,
    /// After every `k`-th step and the last.
    Every(usize),
    /// After the last step only.
    AtEnd,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Sampled<const D: usize> {
    /// The final state, in the caller's coordinates (`x = m·x̃` at the node reached).
    pub x: Tensor<D>,
    /// The number of steps taken (fewer than the grid's if the observer stopped the run).
    pub steps: usize,
    /// The number of model evaluations.
    pub evaluations: usize,
    /// Whether the observer stopped the run early.
    pub stopped: bool,
}

/// Runs a [`Step`] along a [`Grid`]: a sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver<St> {
    step: St,
    grid: Grid,
    check: FiniteCheck,
    name: Option<&'static str>,
}

impl<St> Driver<St> {
    /// The sampler that runs `step` along `grid`, checking finiteness after every step.
    pub fn new(step: St, grid: Grid) -> Self {
        Driver { step, grid, check: FiniteCheck::EveryStep, name: None }
    }

    /// The same sampler with another finiteness cadence.
    ///
    /// Errors with [`Error::InvalidParameter`] for `FiniteCheck::Every(0)`.
    pub fn with_finite_check(self, check: FiniteCheck) -> Result<Self> {
        if check == FiniteCheck::Every(0) {
            return Err(Error::invalid("finite check", "every 0 steps", "use k ≥ 1"));
        }
        Ok(Driver { check, ..self })
    }

    /// The same sampler, named `name` in its errors instead of by its step (e.g. `"DDIM"`
    /// for the Euler-ancestral step it runs).
    pub fn with_name(self, name: &'static str) -> Self {
        Driver { name: Some(name), ..self }
    }

    /// The step.
    pub fn step(&self) -> &St {
        &self.step
    }

    /// The grid.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// A prior sample `x = σ₀·z` at the first node (EDM's `N(0, σ_max²)` in the caller's
    /// coordinates: `σ̃₀·z` for `x̃`), from `noise`.
    pub fn prior_sample<const D: usize>(
        &self,
        shape: [usize; D],
        device: &Device,
        noise: &mut dyn NoiseSource<D>,
    ) -> Result<Tensor<D>> {
        let z = noise.standard_normal(&Tensor::zeros(shape, device))?;
        Ok(z.mul_scalar(self.grid.nodes()[0].sigma))
    }

    /// Runs the step from `init` (the state at the first node, shape `[B, ...]`) to the last
    /// node, drawing noise from `noise` and reporting each step to `observer`.
    ///
    /// Errors with [`Error::ShapeMismatch`] if `init` is empty or not of the model's sample
    /// shape, or the model's output has another shape or dtype than its input;
    /// [`Error::NonFinite`] naming the step if the state stops being finite; and whatever
    /// the step or the noise source returns.
    pub fn run<M, const D: usize>(
        &self,
        model: &M,
        init: Tensor<D>,
        noise: &mut dyn NoiseSource<D>,
        observer: &mut dyn Observer<D>,
    ) -> Result<Sampled<D>>
    where
        M: ScoreModel<D>,
        St: Step<D>,
    {
        let name = self.name.unwrap_or_else(|| self.step.name());
        if self.grid.repeats() && !self.step.dwells() {
            let reason = "its levels repeat; only Langevin-type steps stay at a level";
            return Err(Error::invalid("grid", name, reason));
        }
        check_init(name, model, &init)?;
        let nodes = self.grid.nodes();
        let total = self.grid.steps();
        let mut ctx = StepContext::new(&self.grid, model, noise);
        let mut state = St::State::default();
        let mut x = to_tilde(init, nodes[0]);
        let mut steps = 0;
        let mut stopped = false;
        for i in 0..total {
            let out = self.step.step(i, x, &mut ctx, &mut state)?;
            x = out.x;
            steps = i + 1;
            if self.due(i, total) {
                let (a, b) = (nodes[i].sigma_tilde(), nodes[i + 1].sigma_tilde());
                check_finite(&x, || format!("{name} step {i} (σ̃ = {a} → {b})"))?;
            }
            let node = nodes[i + 1];
            let shown = from_tilde(x.clone(), node);
            let report = SampleStep {
                step: i,
                total,
                t: node.t,
                sigma: node.sigma,
                x: &shown,
                denoised: Some(&out.denoised),
            };
            if observer.on_step(&report).is_break() {
                stopped = true;
                break;
            }
        }
        if stopped && !self.due(steps - 1, total) {
            check_finite(&x, || format!("{name} step {} (when stopped)", steps - 1))?;
        }
        let x = from_tilde(x, nodes[steps]);
        Ok(Sampled { x, steps, evaluations: ctx.evaluations(), stopped })
    }

    /// Whether the finiteness check runs after step `i` of `total`.
    fn due(&self, i: usize, total: usize) -> bool {
        match self.check {
            FiniteCheck::EveryStep => true,
            FiniteCheck::Every(k) => (i + 1).is_multiple_of(k) || i + 1 == total,
            FiniteCheck::AtEnd => i + 1 == total,
        }
    }
}

/// `x̃ = x/m`.
fn to_tilde<const D: usize>(x: Tensor<D>, node: Node) -> Tensor<D> {
    if node.scale == 1.0 { x } else { x.div_scalar(node.scale) }
}

/// `x = m·x̃`.
fn from_tilde<const D: usize>(x: Tensor<D>, node: Node) -> Tensor<D> {
    if node.scale == 1.0 { x } else { x.mul_scalar(node.scale) }
}

impl<St: Step<D>, M: ScoreModel<D>, const D: usize> Sampler<M, D> for Driver<St> {
    /// [`Driver::run`] with the whole batch's noise from `rng`; returns the final state.
    fn sample(
        &self,
        model: &M,
        init: Tensor<D>,
        rng: &mut dyn RngCore,
        observer: &mut dyn Observer<D>,
    ) -> Result<Tensor<D>> {
        Ok(self.run(model, init, &mut RngNoise(rng), observer)?.x)
    }
}
