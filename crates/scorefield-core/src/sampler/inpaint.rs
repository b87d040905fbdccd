//! Inpainting and imputation with any step of the driver: the known part of each sample is
//! held to the data, the rest is sampled from the unconditional model.
//!
//! With `y` the known values, `M` the mask (1 where known) and `x̃` the σ-parameterised
//! state, after every step of the inner solver the known part is replaced by the data
//! forward-noised to the level reached (score_sde's replacement method, Song et al. 2021,
//! App. I.2):
//!
//! ```text
//! x̃ᵢ₊₁ ← M ⊙ (y + σ̃ᵢ₊₁·z) + (1 − M) ⊙ step(x̃ᵢ),     z ~ N(0, I)
//! ```
//!
//! Replacement is biased: the unknown part never sees the known part's *noise-free* value,
//! only noisy versions of it, so at high noise it follows the unconditional score. On a
//! 3-D mixture with one known coordinate (`tests/integration/inpaint.rs`), replacement's
//! imputations are 11× the energy-distance null quantile away from the exact conditional,
//! their component weights halfway to the unconditional ones; RePaint with 20 passes is
//! indistinguishable from it. RePaint
//! (Lugmayr et al. 2022) resamples: every `jump` steps it goes back `jump` levels by adding
//! fresh noise, `x̃ ← x̃ + √(σ̃_back² − σ̃_now²)·z` (the forward process), and runs those steps
//! again, `resamples` times in all, so that the two parts harmonise. `resamples = 1` is
//! replacement. Each resample costs the inner steps' evaluations again.
//!
//! Multistep solvers are resampled from the state they had at the start of the segment
//! (`St::State: Clone`).

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::sampler::driver::{Step, StepContext, StepOutput};
use crate::score::check_output;

/// Inpainting around the step `St` (see the module documentation).
#[derive(Debug, Clone)]
pub struct Inpaint<St, const D: usize> {
    inner: St,
    known: Tensor<D>,
    mask: Tensor<D>,
    resamples: usize,
    jump: usize,
}

impl<St: Step<D>, const D: usize> Inpaint<St, D> {
    /// Replacement around `inner`: `known` holds the data (`[B, ...]`, the batch that will be
    /// sampled, in data coordinates), `mask` is 1 where a value is known and 0 elsewhere
    /// (the same shape).
    ///
    /// The data must have the shape and float type of the state sampled (a step errors with
    /// [`Error::ShapeMismatch`] or [`Error::DTypeMismatch`] otherwise).
    ///
    /// Errors with [`Error::ShapeMismatch`] if the mask's shape or dtype differs from the
    /// data's, [`Error::InvalidParameter`] if the mask holds a value other than 0 or 1, and
    /// [`Error::NonFinite`] for a non-finite known value.
    pub fn new(inner: St, known: Tensor<D>, mask: Tensor<D>) -> Result<Self> {
        check_output("inpainting mask", &mask, &known)?;
        let binary = mask.clone().equal_elem(0.0).bool_or(mask.clone().equal_elem(1.0));
        if !binary.all().into_scalar::<bool>() {
            return Err(Error::invalid(
                "mask",
                "a value other than 0 and 1",
                "use 1 = known, 0 = sample",
            ));
        }
        // Values under a 0 of the mask are never used (they may be anything, even NaN).
        let known_part = known.mask_fill(mask.clone().equal_elem(0.0), 0.0);
        crate::sampler::check_finite(&known_part, || "inpainting: the known values".into())?;
        Ok(Inpaint { inner, known: known_part, mask, resamples: 1, jump: 1 })
    }

    /// RePaint's resampling: each segment of `jump` steps is run `resamples` times, going
    /// back `jump` levels by forward noise in between (`resamples = 1`: replacement).
    ///
    /// Errors with [`Error::InvalidParameter`] if `resamples` or `jump` is 0.
    pub fn with_resampling(self, resamples: usize, jump: usize) -> Result<Self> {
        if resamples == 0 {
            return Err(Error::invalid("resamples", 0, "at least one pass (1 = replacement)"));
        }
        if jump == 0 {
            return Err(Error::invalid("jump", 0, "a jump of at least one step"));
        }
        Ok(Inpaint { resamples, jump, ..self })
    }

    /// The data forward-noised to `σ̃` on the known part, `x̃` elsewhere.
    fn replace(&self, x: Tensor<D>, sigma: f64, ctx: &mut StepContext<'_, D>) -> Result<Tensor<D>> {
        let noisy = if sigma > 0.0 {
            self.known.clone() + ctx.noise(&x)?.mul_scalar(sigma)
        } else {
            self.known.clone()
        };
        let keep = self.mask.clone().neg().add_scalar(1.0);
        Ok(noisy.mul(self.mask.clone()) + x.mul(keep))
    }
}

/// What the inpainting step carries: the inner step's state, and its copy at the start of
/// the current segment (to resample from).
#[derive(Debug, Clone, Default)]
pub struct InpaintState<S> {
    inner: S,
    segment_start: Option<S>,
}

impl<St, const D: usize> Step<D> for Inpaint<St, D>
where
    St: Step<D>,
    St::State: Clone,
{
    type State = InpaintState<St::State>;

    fn name(&self) -> &'static str {
        "inpainting"
    }

    fn dwells(&self) -> bool {
        self.inner.dwells()
    }

    /// Step `i` of the inner solver, then the replacement; at the end of each segment of
    /// `jump` steps, `resamples − 1` more passes over the segment from forward noise.
    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        state: &mut Self::State,
    ) -> Result<StepOutput<D>> {
        // The data must match the state (batch, shape, dtype): a typed error, not Burn's panic.
        check_output("inpainting: the known values", &self.known, &x)?;
        let start = i - i % self.jump; // the first step of i's segment
        if i == start && self.resamples > 1 {
            state.segment_start = Some(state.inner.clone());
        }
        let mut out = self.inner.step(i, x, ctx, &mut state.inner)?;
        out.x = self.replace(out.x, ctx.sigma(i + 1), ctx)?;
        let segment_end = (i + 1 - start) == self.jump || i + 1 == ctx.grid().steps();
        if !segment_end || self.resamples == 1 {
            return Ok(out);
        }
        for _ in 1..self.resamples {
            // Back to the segment's first level by the forward process, and through it again.
            let (from, to) = (ctx.sigma(i + 1), ctx.sigma(start));
            let z = ctx.noise(&out.x)?;
            let mut x = out.x.clone() + z.mul_scalar((to * to - from * from).max(0.0).sqrt());
            if let Some(saved) = &state.segment_start {
                state.inner = saved.clone();
            }
            for k in start..=i {
                out = self.inner.step(k, x, ctx, &mut state.inner)?;
                x = self.replace(out.x.clone(), ctx.sigma(k + 1), ctx)?;
                out.x = x.clone();
            }
        }
        Ok(out)
    }
}
