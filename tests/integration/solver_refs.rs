//! One run of each solver against reference values from k-diffusion 0.1.1.post1 and
//! diffusers 0.42.1 on the same inputs: `tests/reference/solvers.json`, made by
//! `tests/reference/solver_refs.py` (its docstring says how), in f64 with the exact denoiser
//! of a 3-D two-component Gaussian mixture. The noise the references drew is replayed with
//! `FixedNoise`; every step's state is compared.

use std::ops::ControlFlow;

use burn::tensor::{DType, Tensor, TensorData};
use scorefield::SampleStep;
use scorefield::analytic::GaussianMixture;
use scorefield::sampler::{
    DpmSolverPp2M, DpmSolverPp2MSde, DpmSolverPp3MSde, Driver, Euler, EulerAncestral, FixedNoise,
    Grid, Heun, NoiseSource, SdeSolverType, Spacing, Step, UniPc, UniPcVariant,
};
use scorefield::schedule::{Ddpm, Karras};
use serde_json::Value;

use crate::common::{flex, values};

/// Agreement asked of every state (f64 throughout; the references agree with independent
/// NumPy replays to 1e-14).
const TOL: f64 = 1e-10;

fn reference() -> Value {
    serde_json::from_str(include_str!("../reference/solvers.json")).unwrap()
}

fn case<'a>(refs: &'a Value, name: &str) -> &'a Value {
    refs["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name}"))
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn tensor(v: &Value) -> Tensor<2> {
    let x = floats(v);
    Tensor::from_data(TensorData::new(x.clone(), [x.len() / 3, 3]), (&flex(), DType::F64))
}

fn mixture(refs: &Value) -> GaussianMixture {
    let m = &refs["mixture"];
    let means: Vec<Vec<f64>> = m["means"].as_array().unwrap().iter().map(floats).collect();
    GaussianMixture::new(&floats(&m["weights"]), &means, &floats(&m["stds"])).unwrap()
}

fn assert_close(name: &str, what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name} {what}");
    let err =
        got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f64::max);
    assert!(err < TOL, "{name} {what}: relative error {err:e}\n got {got:?}\nwant {want:?}");
}

/// Runs `step` on `grid` from `x_init` with the given noise; returns the state after every
/// step as the observer reports it (`x = m·x̃`) and divided by `m` (`x̃`).
fn trajectory<St: Step<2>>(
    refs: &Value,
    step: St,
    grid: Grid,
    init: Tensor<2>,
    noise: &mut dyn NoiseSource<2>,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let nodes = grid.nodes().to_vec();
    let driver = Driver::new(step, grid);
    let (mut xs, mut tildes) = (Vec::new(), Vec::new());
    let mut observer = |s: &SampleStep<'_, 2>| {
        let x = values(s.x.clone());
        tildes.push(x.iter().map(|v| v / nodes[s.step + 1].scale).collect());
        xs.push(x);
        ControlFlow::Continue(())
    };
    driver.run(&mixture(refs), init, noise, &mut observer).unwrap();
    (xs, tildes)
}

/// A k-diffusion case: VE form on EDM's schedule (`t = σ`); state `i + 1` is the reference's
/// `x` at the start of step `i + 1` (before churn), the last is its output.
fn check_k_diffusion<St: Step<2>>(name: &str, step: St, noise_steps: Option<&[usize]>) {
    let refs = reference();
    let c = case(&refs, name);
    let grid = Grid::from_sigmas(Karras::edm(), &floats(&c["sigmas"])).unwrap();
    let draws: Vec<Tensor<2>> = match (c["noise"].as_array(), noise_steps) {
        (Some(all), Some(keep)) => keep.iter().map(|&i| tensor(&all[i])).collect(),
        (Some(all), None) => all.iter().map(tensor).collect(),
        (None, _) => Vec::new(),
    };
    let mut noise = FixedNoise::new(draws);
    let (xs, _) = trajectory(&refs, step, grid, tensor(&c["x_init"]), &mut noise);
    let steps = c["steps"].as_array().unwrap();
    for (i, x) in xs.iter().enumerate().take(xs.len() - 1) {
        let want = &steps[i + 1];
        let want =
            if want.get("x_pre_churn").is_some() { &want["x_pre_churn"] } else { &want["x"] };
        assert_close(name, &format!("state after step {i}"), x, &floats(want));
    }
    assert_close(name, "final", xs.last().unwrap(), &floats(&c["final"]));
    assert_eq!(noise.remaining(), 0, "{name}: every supplied draw used");
    eprintln!("{name}: {} steps agree to {TOL:e}", xs.len());
}

#[test]
fn k_diffusion_samplers() {
    check_k_diffusion("kdiff_euler", Euler, Some(&[]));
    check_k_diffusion("kdiff_heun", Heun::default(), Some(&[]));
    // k-diffusion draws every step and uses the draws of the churned steps 1–4 only.
    let churn = Heun::with_churn(2.0, 0.1, 8.0, 1.003).unwrap();
    check_k_diffusion("kdiff_heun_churn", churn, Some(&[1, 2, 3, 4]));
    check_k_diffusion("kdiff_euler_ancestral", EulerAncestral::default(), None);
    check_k_diffusion("kdiff_dpmpp_2m", DpmSolverPp2M, None);
    let sde = |t| DpmSolverPp2MSde::new(1.0, 1.0, t).unwrap();
    check_k_diffusion("kdiff_dpmpp_2m_sde_midpoint", sde(SdeSolverType::Midpoint), None);
    check_k_diffusion("kdiff_dpmpp_2m_sde_heun", sde(SdeSolverType::Heun), None);
    check_k_diffusion("kdiff_dpmpp_3m_sde", DpmSolverPp3MSde::default(), None);
    check_k_diffusion("kdiff_dpm_2", crate::fast_samplers::midpoint::Midpoint, Some(&[]));
}

/// A diffusers case on the linear DDPM chain (`T = 1000`): diffusers' timestep `k` is our
/// `t = k + 1`, then the clean level. Returns the case, the grid and the initial state.
fn diffusers_case(refs: &Value, name: &str) -> (Grid, Tensor<2>) {
    let c = case(refs, name);
    let ddpm = Ddpm::linear(1000).unwrap();
    let timesteps: Vec<usize> = floats(&c["timesteps"]).iter().map(|&t| t as usize).collect();
    for (k, ab) in timesteps.iter().zip(floats(&c["alphas_cumprod"])) {
        assert!((ddpm.alpha_bar(k + 1) - ab).abs() < 1e-12 * ab.max(1e-3), "ᾱ at {k}");
    }
    let mut times: Vec<f64> = timesteps.iter().map(|&k| (k + 1) as f64).collect();
    times.push(0.0);
    (Grid::from_times(ddpm, &times).unwrap(), tensor(&c["x_init"]))
}

fn check_diffusers<St: Step<2>>(name: &str, step: St, ve_state: bool) {
    let refs = reference();
    let (grid, init) = diffusers_case(&refs, name);
    // The Euler scheduler's state is x̃ (VE form); the driver's input is x = m·x̃.
    let init = if ve_state { init.mul_scalar(grid.nodes()[0].scale) } else { init };
    let (xs, tildes) = trajectory(&refs, step, grid, init, &mut FixedNoise::new([]));
    let c = case(&refs, name);
    for (i, s) in c["steps"].as_array().unwrap().iter().enumerate() {
        let got = if ve_state { &tildes[i] } else { &xs[i] };
        assert_close(name, &format!("prev_sample of step {i}"), got, &floats(&s["prev_sample"]));
    }
    assert_close(name, "final", xs.last().unwrap(), &floats(&c["final"]));
    eprintln!("{name}: {} steps agree to {TOL:e}", xs.len());
}

#[test]
fn diffusers_schedulers_on_each_timestep_spacing() {
    let refs = reference();
    // The multistep schedulers' spacings (n + 1 points, the last dropped) and DDIM's.
    for (spacing, label) in [
        (Spacing::Leading, "leading"),
        (Spacing::Trailing, "trailing"),
        (Spacing::Linspace, "linspace"),
    ] {
        let dpm = case(&refs, &format!("diffusers_dpmpp_2m_{label}"));
        let want: Vec<usize> = floats(&dpm["timesteps"]).iter().map(|&t| t as usize).collect();
        assert_eq!(spacing.multistep_timesteps(1000, 10).unwrap(), want, "{label}");
        let ddim = case(&refs, &format!("diffusers_ddim_{label}"));
        let want: Vec<usize> = floats(&ddim["timesteps"]).iter().map(|&t| t as usize).collect();
        assert_eq!(spacing.timesteps(1000, 10).unwrap(), want, "{label}");
        check_diffusers(&format!("diffusers_dpmpp_2m_{label}"), DpmSolverPp2M, false);
    }
    // DDIM (η = 0) is Euler in the σ-parameterisation. diffusers steps DDIM from t to
    // t − ⌊T/n⌋, the next grid point for leading and trailing spacing only (linspace jumps
    // between unrelated points, so it is not a walk along one grid).
    check_diffusers("diffusers_ddim_leading", Euler, false);
    check_diffusers("diffusers_ddim_trailing", Euler, false);
    check_diffusers("diffusers_euler_trailing", Euler, true);
    let unipc = |order| UniPc::new(order, true, UniPcVariant::Bh2).unwrap();
    check_diffusers("diffusers_unipc_bh2_order2_trailing", unipc(2), false);
    check_diffusers("diffusers_unipc_bh2_order3_trailing", unipc(3), false);
}

#[test]
fn spacings_build_their_grids() {
    let grid = Grid::ddpm(Ddpm::linear(1000).unwrap(), 10, Spacing::Leading).unwrap();
    assert_eq!(grid.times()[..2], [901.0, 801.0]);
    assert_eq!(*grid.times().last().unwrap(), 0.0);
}
