//! Quality against network evaluations (NFE) of every sampler, on exact Gaussian mixtures:
//! the energy distance between 1,000 samples and 1,000 exact samples, with the permutation
//! null's 95 % quantile (below it, the samples are indistinguishable from exact ones at that
//! sample size).
//!
//! ```text
//! cargo bench --bench sampling_quality            # writes out/sampling_quality/{quality.csv,quality.png}
//! ```
//!
//! Mixtures: 2-D, four unequal components (weights 0.4/0.3/0.2/0.1, stds 0.5/0.3/0.6/0.2);
//! 64-D, four components with the same weights and stds and means drawn once from
//! `N(0, 0.7² I)` (seed 7). The driver's solvers run on EDM's grid (σ 80 → 0.002, ρ = 7, then
//! 0, the VE form); the baseline is the probability-flow ODE with Euler steps on the VP SDE's
//! own time grid (`ProbabilityFlow`), the best sampler before the driver existed. Every solver
//! runs on three grids: EDM's and the VP SDE's times uniform from 1 to 10⁻³ (σ̃ from 157 to
//! 0.032), each followed by 0; and a Karras grid (ρ = 7) scaled to the data, from
//! `σ_max = 3·RMS‖x‖` (EDM's 80 is this rule for CIFAR-10 in `[−1, 1]`: `3·√(3072·0.25) ≈ 83`)
//! to `σ_min` = half the smallest component std, ending there (no final denoising step). A
//! solver whose step costs two evaluations (Heun) gets `⌈NFE/2⌉` levels. Results:
//! `docs/sampling.md`.

#[path = "../tests/integration/stats.rs"]
#[allow(dead_code)]
mod stats;

use std::io::Write;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use scorefield::analytic::GaussianMixture;
use scorefield::data::image::Image;
use scorefield::data::plot::{self, Canvas};
use scorefield::sampler::{
    DpmSolverPp2M, DpmSolverPp2MSde, DpmSolverPp3MSde, Driver, Euler, EulerAncestral, Grid, Heun,
    OdeSolver, PerSampleNoise, ProbabilityFlow, Step, UniPc, karras_sigmas,
};
use scorefield::schedule::{Karras, VpSde};
use scorefield::{NoiseSchedule, Sampler};

const N: usize = 1000;

/// A grid constructor: the grid of `steps` steps.
type GridOf<'a> = &'a dyn Fn(usize) -> Grid;
const NFES: [usize; 8] = [5, 10, 20, 35, 50, 100, 200, 1000];

fn mixture(dim: usize) -> GaussianMixture {
    let weights = [0.4, 0.3, 0.2, 0.1];
    let stds = [0.5, 0.3, 0.6, 0.2];
    let means: Vec<Vec<f64>> = if dim == 2 {
        vec![vec![-1.5, -0.5], vec![1.5, 0.5], vec![0.0, 2.0], vec![1.0, -2.0]]
    } else {
        let mut rng = StdRng::seed_from_u64(7);
        let normal = Normal::new(0.0, 0.7).unwrap();
        (0..4).map(|_| (0..dim).map(|_| normal.sample(&mut rng)).collect()).collect()
    };
    GaussianMixture::new(&weights, &means, &stds).unwrap()
}

fn values(x: Tensor<2>) -> Vec<f64> {
    x.try_into_vec_as::<f64>().unwrap()
}

/// EDM's grid with `levels` levels and a final 0.
fn edm_grid(levels: usize) -> Grid {
    let sigmas = karras_sigmas(levels.max(2), 0.002, 80.0, 7.0).unwrap();
    Grid::from_sigmas(Karras::edm(), &sigmas).unwrap().with_zero()
}

/// The VP SDE's times, uniform from 1 to 10⁻³, `levels` of them, and a final 0.
fn vp_grid(levels: usize) -> Grid {
    Grid::uniform_time(VpSde::new(0.1, 20.0).unwrap(), levels.max(2)).unwrap().with_zero()
}

/// The data-scaled Karras grid (ρ = 7) with `steps` steps from `σ_max` to `σ_min`, ending
/// there.
fn scaled_grid(steps: usize, sigma_max: f64, sigma_min: f64) -> Grid {
    let sigmas = karras_sigmas(steps.max(1) + 1, sigma_min, sigma_max, 7.0).unwrap();
    Grid::from_sigmas(Karras::edm(), &sigmas).unwrap()
}

/// Samples of `step` at the budget `nfe` (levels = NFE / evaluations per level); returns the
/// samples and the evaluations actually made.
fn run_step<St: Step<2>>(
    step: St,
    per_level: usize,
    nfe: usize,
    (m, grid): (&GaussianMixture, &dyn Fn(usize) -> Grid),
    device: &Device,
) -> (Vec<f64>, usize) {
    let levels = nfe.div_ceil(per_level);
    let driver = Driver::new(step, grid(levels));
    let mut noise = PerSampleNoise::new(1, N);
    let init = driver.prior_sample([N, m.dim()], device, &mut noise).unwrap();
    let out = driver.run(m, init, &mut noise, &mut ()).unwrap();
    (values(out.x), out.evaluations)
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "../examples/common/alloc.rs"]
mod alloc;

fn main() {
    let device = scorefield::device("flex").unwrap();
    let out_dir = Path::new("out/sampling_quality");
    std::fs::create_dir_all(out_dir).unwrap();
    let mut csv = String::from("dim,grid,sampler,nfe,energy_distance,null_95\n");
    let mut panels = Vec::new();
    let scaled = |dim: usize| {
        let m = mixture(dim);
        let x = values(m.sample(N, &device, &mut StdRng::seed_from_u64(99)));
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / N as f64).sqrt();
        let (sigma_max, sigma_min) = (3.0 * rms, 0.5 * 0.2);
        println!("{dim}-D data-scaled grid: σ {sigma_max:.2} → {sigma_min}");
        move |steps: usize| scaled_grid(steps, sigma_max, sigma_min)
    };
    let (scaled_2, scaled_64) = (scaled(2), scaled(64));
    let grids: [(usize, &str, GridOf); 6] = [
        (2, "EDM grid", &edm_grid),
        (2, "VP uniform-t grid", &vp_grid),
        (2, "data-scaled grid", &scaled_2),
        (64, "EDM grid", &edm_grid),
        (64, "VP uniform-t grid", &vp_grid),
        (64, "data-scaled grid", &scaled_64),
    ];
    for (dim, grid_name, grid) in grids {
        let m = mixture(dim);
        let exact = values(m.sample(N, &device, &mut StdRng::seed_from_u64(100)));
        let other = values(m.sample(N, &device, &mut StdRng::seed_from_u64(101)));
        let null = stats::permutation_threshold(&exact, &other, dim, 200, 0.05, 3);
        println!("{dim}-D: null 95 % quantile {null:.5}");
        let mut curves: Vec<(String, Vec<[f64; 2]>)> = Vec::new();
        let mut record = |name: &str, nfe: usize, x: Vec<f64>| {
            let e = stats::energy_distance(&x, &exact, dim);
            println!("{dim}-D {grid_name} {name:<26} NFE {nfe:>5}: energy distance {e:.5}");
            csv.push_str(&format!("{dim},{grid_name},\"{name}\",{nfe},{e},{null}\n"));
            match curves.iter_mut().find(|(n, _)| n == name) {
                Some((_, c)) => c.push([nfe as f64, e]),
                None => curves.push((name.to_string(), vec![[nfe as f64, e]])),
            }
        };
        for &budget in &NFES {
            let mut go = |name: &str, (x, nfe): (Vec<f64>, usize)| record(name, nfe, x);
            let on = (&m, grid);
            go("Euler", run_step(Euler, 1, budget, on, &device));
            go("Heun", run_step(Heun::default(), 2, budget + 1, on, &device));
            go("Euler ancestral", run_step(EulerAncestral::default(), 1, budget, on, &device));
            go("DPM-Solver++ 2M", run_step(DpmSolverPp2M, 1, budget, on, &device));
            go(
                "DPM-Solver++ 2M SDE",
                run_step(DpmSolverPp2MSde::default(), 1, budget, on, &device),
            );
            go(
                "DPM-Solver++ 3M SDE",
                run_step(DpmSolverPp3MSde::default(), 1, budget, on, &device),
            );
            go("UniPC", run_step(UniPc::default(), 1, budget, on, &device));
            // The baseline: PF-ODE, Euler steps on the VP schedule's grid.
            let vp = VpSde::new(0.1, 20.0).unwrap();
            let flow = ProbabilityFlow::new(vp, OdeSolver::Euler { steps: budget }).unwrap();
            let init = vp.prior_sample([N, dim], &device, &mut StdRng::seed_from_u64(1));
            let x = flow.sample(&m, init, &mut StdRng::seed_from_u64(2), &mut ()).unwrap();
            go("PF-ODE Euler (VP x, before)", (values(x), budget));
        }
        panels.push(plot_panel(
            &format!("{dim}-D mixture, {grid_name}: energy distance vs NFE"),
            &curves,
            null,
        ));
    }
    std::fs::File::create(out_dir.join("quality.csv")).unwrap().write_all(csv.as_bytes()).unwrap();
    let image = plot::vconcat(&panels, 8);
    image.save(&out_dir.join("quality.png")).unwrap();
    println!("wrote {}", out_dir.join("quality.png").display());
}

const COLORS: [plot::Rgb; 8] = [
    plot::BLUE,
    plot::ORANGE,
    plot::GREEN,
    plot::RED,
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// A log–log panel: one curve per sampler, the null quantile as a black line, a legend.
fn plot_panel(title: &str, curves: &[(String, Vec<[f64; 2]>)], null: f64) -> Image {
    let floor = |y: f64| y.max(1e-6);
    let (y_lo, y_hi) = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| floor(p[1])))
        .fold((null, null), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let nfe = (NFES[0] as f64 / 1.25, NFES[NFES.len() - 1] as f64 * 1.25);
    let mut canvas = Canvas::new(900, 420, nfe, (y_lo / 1.6, y_hi * 1.6))
        .and_then(|c| c.log_x()?.log_y())
        .unwrap()
        .labels("NFE (model evaluations)", "energy distance");
    canvas.title(title);
    canvas.polyline(&[[nfe.0, null], [nfe.1, null]], plot::BLACK, 1.5);
    canvas.legend("null 95 %", plot::BLACK);
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<[f64; 2]> = curve.iter().map(|p| [p[0], floor(p[1])]).collect();
        canvas.polyline(&points, color, 2.0);
        canvas.scatter(&points, color, 3.0, 1.0);
        canvas.legend(name, color);
    }
    canvas.render().unwrap()
}
