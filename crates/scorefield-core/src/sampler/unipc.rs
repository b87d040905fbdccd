//! UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC-p of any order
//! on DPM-Solver's `λ = −ln σ̃` grid, in data prediction (the `bh` form of diffusers'
//! `UniPCMultistepScheduler`). With `h = λₜ − λ_{s₀}` from the last node `s₀` to `t`,
//! `mⱼ` the denoised estimates at earlier nodes `sⱼ` (`m₀` at `s₀`), `rⱼ = (λ_{sⱼ} − λ_{s₀})/h`,
//! `Δⱼ = (mⱼ − m₀)/rⱼ`, `B(h) = −h` (bh1) or `e^{−h} − 1` (bh2):
//!
//! ```text
//! φ₁ = e^{−h} − 1,   gₖ = φₖ·k!/B(h) with φ₁' = φ₁/(−h) − 1, φₖ₊₁' = φₖ'/(−h) − 1/(k+1)!
//! Rₖⱼ = rⱼ^{k−1} (rows k = 1..p, columns j = 1..p−1 and then r = 1)
//! UniP-p:  x̃ₜ = (σ̃ₜ/σ̃_{s₀})·x̃_{s₀} − φ₁·m₀ − B(h)·Σⱼ ρⱼ Δⱼ,   R[:p−1,:p−1]·ρ = g[:p−1]
//!          (ρ = ½ for p = 2)
//! UniC-p:  x̃ₜᶜ = (σ̃ₜ/σ̃_{s₀})·x̃_{s₀} − φ₁·m₀ − B(h)·(Σⱼ ρⱼᶜ Δⱼ + ρₚᶜ·(mₜ − m₀)),   R·ρᶜ = g
//!          (ρᶜ = ½ for p = 1)
//! ```
//!
//! Each step evaluates the model once, at the predicted `x̃ₜ`; that evaluation `mₜ` first
//! corrects `x̃ₜ` (UniC, with the order of the predictor step that produced it) and then
//! drives the next prediction, so the corrector costs no evaluation and raises the order by
//! one. The order ramps up from 1 as estimates accumulate and falls to `min(p, steps left)`
//! at the end (diffusers' `lower_order_final`); the last step is not corrected, and a step
//! to `σ̃ = 0` returns `m₀`.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::sampler::driver::{Step, StepContext, StepOutput};

/// UniPC's choice of `B(h)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniPcVariant {
    /// `B(h) = −h`.
    Bh1,
    /// `B(h) = e^{−h} − 1` (diffusers' default).
    #[default]
    Bh2,
}

/// UniPC of predictor order `p` (1, 2 or 3), with or without the corrector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniPc {
    order: usize,
    corrector: bool,
    variant: UniPcVariant,
    lower_order_final: bool,
}

impl Default for UniPc {
    /// Order 2, corrector on, bh2 (diffusers' defaults).
    fn default() -> Self {
        UniPc { order: 2, corrector: true, variant: UniPcVariant::Bh2, lower_order_final: true }
    }
}

impl UniPc {
    /// UniPC of predictor order `order`.
    ///
    /// Errors with [`Error::InvalidParameter`] unless `1 ≤ order ≤ 3`.
    pub fn new(order: usize, corrector: bool, variant: UniPcVariant) -> Result<Self> {
        if !(1..=3).contains(&order) {
            return Err(Error::invalid("order", order, "UniPC supports orders 1, 2 and 3"));
        }
        Ok(UniPc { order, corrector, variant, lower_order_final: true })
    }

    /// The same solver with (`true`, the default, as diffusers) or without the order falling
    /// to `min(p, steps left)` on the last steps. Without it the last steps keep order `p`,
    /// which the convergence order needs; with it few-step runs are more stable.
    pub fn with_lower_order_final(self, lower_order_final: bool) -> Self {
        UniPc { lower_order_final, ..self }
    }

    /// `(φ₁, B(h), g)` for `p` rows at step length `h`.
    fn coefficients(&self, h: f64, p: usize) -> (f64, f64, Vec<f64>) {
        let hh = -h;
        let phi1 = hh.exp_m1();
        let b_h = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let (mut phi_k, mut factorial) = (phi1 / hh - 1.0, 1.0);
        let mut g = Vec::with_capacity(p);
        for k in 1..=p {
            g.push(phi_k * factorial / b_h);
            factorial *= (k + 1) as f64;
            phi_k = phi_k / hh - 1.0 / factorial;
        }
        (phi1, b_h, g)
    }
}

/// What UniPC keeps between nodes.
#[derive(Debug, Default)]
pub struct UniPcState<const D: usize> {
    /// `(λ, m)` of the latest estimates, oldest first.
    estimates: Vec<(f64, Tensor<D>)>,
    /// The state the last prediction started from, and that prediction's order.
    last: Option<(Tensor<D>, usize)>,
}

/// `Σⱼ wⱼ·(mⱼ − m₀)/rⱼ` over the estimates before the newest (`m₀`), `rⱼ` relative to `h`.
fn weighted_differences<const D: usize>(
    estimates: &[(f64, Tensor<D>)],
    h: f64,
    weights: &[f64],
) -> Option<Tensor<D>> {
    let (lambda0, m0) = estimates.last().expect("at least one estimate");
    let mut sum: Option<Tensor<D>> = None;
    for (j, w) in weights.iter().enumerate() {
        let (lambda, m) = &estimates[estimates.len() - 2 - j];
        let r = (lambda - lambda0) / h;
        let term = (m.clone() - m0.clone()).mul_scalar(w / r);
        sum = Some(match sum {
            None => term,
            Some(acc) => acc + term,
        });
    }
    sum
}

/// The ratios `rⱼ = (λ_{sⱼ} − λ_{s₀})/h` of the `p − 1` estimates before the newest.
fn ratios<const D: usize>(estimates: &[(f64, Tensor<D>)], h: f64, p: usize) -> Vec<f64> {
    let lambda0 = estimates.last().expect("at least one estimate").0;
    (1..p).map(|j| (estimates[estimates.len() - 1 - j].0 - lambda0) / h).collect()
}

/// `R` with rows `k = 1..n`: `rⱼ^{k−1}` over `ratios` then `1`, truncated to `n` columns.
fn vandermonde(ratios: &[f64], n: usize) -> Vec<Vec<f64>> {
    let mut cols: Vec<f64> = ratios.to_vec();
    cols.push(1.0);
    (0..n).map(|k| cols[..n].iter().map(|r| r.powi(k as i32)).collect()).collect()
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (pivot_row, pivot_b) = (a[col].clone(), b[col]);
        for (row, rhs) in a.iter_mut().zip(b.iter_mut()).skip(col + 1) {
            let f = row[col] / pivot_row[col];
            for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            *rhs -= f * pivot_b;
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

impl<const D: usize> Step<D> for UniPc {
    type State = UniPcState<D>;

    fn name(&self) -> &'static str {
        "UniPC"
    }

    fn step(
        &self,
        i: usize,
        x: Tensor<D>,
        ctx: &mut StepContext<'_, D>,
        state: &mut UniPcState<D>,
    ) -> Result<StepOutput<D>> {
        let (sigma, next) = (ctx.sigma(i), ctx.sigma(i + 1));
        let lambda = -sigma.ln();
        let m = ctx.denoise_at(&x, i)?;
        // UniC: correct x̃ᵢ with the estimate just made at it.
        let mut x = x;
        if let (true, Some((base, p))) = (self.corrector, state.last.take()) {
            let (lambda0, m0) = state.estimates.last().expect("an estimate per prediction").clone();
            let h = lambda - lambda0;
            let (phi1, b_h, g) = self.coefficients(h, p);
            let rhos = if p == 1 {
                vec![0.5]
            } else {
                solve(vandermonde(&ratios(&state.estimates, h, p), p), g)
            };
            let sum = weighted_differences(&state.estimates, h, &rhos[..p - 1]);
            let mut corr = (m.clone() - m0.clone()).mul_scalar(rhos[p - 1]);
            if let Some(sum) = sum {
                corr = corr + sum;
            }
            x = base.mul_scalar((-h).exp()) - m0.mul_scalar(phi1) - corr.mul_scalar(b_h);
        }
        state.estimates.push((lambda, m.clone()));
        if state.estimates.len() > self.order {
            state.estimates.remove(0);
        }
        if next == 0.0 {
            return Ok(StepOutput { x: m.clone(), denoised: m });
        }
        // UniP: predict x̃ᵢ₊₁.
        let steps_left = ctx.grid().steps() - i;
        let cap = if self.lower_order_final { steps_left } else { self.order };
        let p = self.order.min(cap).min(state.estimates.len());
        let h = -next.ln() - lambda;
        let (phi1, b_h, g) = self.coefficients(h, p);
        let mut pred = x.clone().mul_scalar(next / sigma) - m.clone().mul_scalar(phi1);
        if p >= 2 {
            let rhos = if p == 2 {
                vec![0.5]
            } else {
                solve(vandermonde(&ratios(&state.estimates, h, p), p - 1), g[..p - 1].to_vec())
            };
            let sum = weighted_differences(&state.estimates, h, &rhos);
            pred = pred - sum.expect("p ≥ 2 terms").mul_scalar(b_h);
        }
        state.last = Some((x, p));
        Ok(StepOutput { x: pred, denoised: m })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_inverts_a_small_system() {
        let a = vec![vec![2.0, 1.0, 0.0], vec![1.0, 3.0, 1.0], vec![0.0, 1.0, 4.0]];
        let x = solve(a.clone(), vec![3.0, 5.0, 5.0]);
        for (row, b) in a.iter().zip([3.0, 5.0, 5.0]) {
            let got: f64 = row.iter().zip(&x).map(|(a, x)| a * x).sum();
            assert!((got - b).abs() < 1e-12);
        }
    }

    #[test]
    fn orders_outside_one_to_three_are_refused() {
        assert!(UniPc::new(0, true, UniPcVariant::Bh2).is_err());
        assert!(UniPc::new(4, true, UniPcVariant::Bh2).is_err());
        assert!(UniPc::new(3, false, UniPcVariant::Bh1).is_ok());
    }
}
