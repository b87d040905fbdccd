//! The same computations on every compiled-in backend agree with flex.
//!
//! `ndarray` and `wgpu` are cargo features; CI runs this module with both enabled (wgpu on
//! Mesa's lavapipe there, a real GPU elsewhere): `cargo test --features ndarray,wgpu --test
//! integration backends -- --nocapture` prints every measured difference. The oracle is the
//! flex backend (and, where a workload uses it, the exact score of `scorefield::analytic`):
//! each workload runs on flex and on the backend under test, in f32, from the same host-drawn
//! inputs, the same weights (drawn on the host, moved with [`Module::to_device`] or through a
//! checkpoint, checked bit for bit) and the same host-drawn noise:
//!
//! - `oracles`: the mixture's score, JVP and log-densities, a Gaussian's score, priors;
//! - `networks`: the dual-number layers (Linear, strided Conv2d, GroupNorm, activations,
//!   concatenation and upsampling; two tangents per sample), `ScoreMlp` and a width-8
//!   `NcsnUnet` (`score` and `score_jvp`, batch 2);
//! - `samplers`: a short run of every driver step on a VE and a VP grid, Euler ancestral with
//!   `FixedNoise`, Langevin, annealed Langevin, the reverse SDE (two predictor–corrector
//!   pairs), DDPM ancestral and DDIM on the driver, two runs on `ScoreMlp`, and
//!   `PerSampleNoise` itself;
//! - `fused ops`: `group_norm_silu` (GroupNorm + SiLU with a per-channel shift) and its
//!   input, shift, γ and β gradients, and `conv2d` (stride 2 with asymmetric padding, and a
//!   3×3 same convolution through Winograd's algorithm) with its input, weight and bias
//!   gradients, `silu` with its gradient, and the dense layers of a `ScoreMlp` (SiLU fused in)
//!   with its input gradient: the fused kernels on flex, the fallbacks here;
//! - `training`: one `Trainer` step (DSM on `ScoreMlp` and the U-Net, sliced score matching
//!   through the dual layers): loss, per-sample losses, gradient norm, outputs after the step;
//! - `checkpoint`: written on flex and read on the backend (and back), then one more step.
//!
//! Every quantity is compared elementwise as `|x − y| / max(|y|, 1)` (relative above 1,
//! absolute below), `y` on flex, against the tolerance given where it is computed. The
//! largest differences measured on a 2-core x86 machine (wgpu on lavapipe), deterministic
//! from run to run:
//!
//! | quantities | tolerance | ndarray | wgpu |
//! | --- | --- | --- | --- |
//! | oracles | 1e-5 | 4.1e-7 | 7.2e-7 |
//! | dual activations, concatenation, upsampling | 1e-5 | 3.1e-7 | 2.4e-7 |
//! | dual Linear, Conv2d, GroupNorm; `ScoreMlp` | 1e-4 | 1.7e-7 | 3.0e-7 |
//! | `NcsnUnet` score and JVP | 1e-3 | 1.9e-5 | 2.7e-5 |
//! | sampler runs | 1e-3 | 2.2e-5 | 6.4e-5 |
//! | fused `group_norm_silu`, `conv2d`, `silu`, dense layers (flex kernels vs fallbacks): outputs and gradients | 1e-4 | 2.3e-6 | 2.3e-6 |
//! | training step: loss, gradient norm, MLP outputs | 1e-4 | 3.6e-7 | 3.6e-7 |
//! | training step: U-Net output after the step | 1e-3 | 9.1e-6 | 9.1e-6 |
//! | checkpoint: outputs, next loss, gradient norm, weights | 1e-4 | 2.7e-7 | 2.7e-7 |
//! | `PerSampleNoise`; weights after a move or a checkpoint | 0 | 0 | 0 |
//!
//! A backend that cannot run fails these tests; nothing is skipped (wgpu without any adapter
//! panics on first use; without Vulkan it falls back to OpenGL).

#![cfg_attr(not(any(feature = "ndarray", feature = "wgpu")), allow(dead_code, unused_imports))]

use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::nn::{
    Conditioning, Conv2dOptions, ConvAlgorithm, Dual, DualForward, GroupNormSiluOptions, NcsnUnet,
    NcsnUnetConfig, ScoreMlp, ScoreMlpConfig, StepReport, Trainer, TrainerConfig, conv2d,
    group_norm_silu, silu::silu,
};
use scorefield::objective::{DenoisingScoreMatching, Projection, SlicedScoreMatching};
use scorefield::sampler::{
    AnnealedLangevin, Corrector, Ddim, DdpmAncestral, DdpmVariance, DpmSolverPp2M,
    DpmSolverPp2MSde, DpmSolverPp3MSde, Driver, Euler, EulerAncestral, FixedNoise, Grid, Heun,
    Langevin, NoiseSource, PerSampleNoise, Predictor, ReverseSde, Step, UniPc, UniPcVariant,
};
use scorefield::schedule::{Ddpm, GeometricSigmas, Karras, VeSde, VpSde};
use scorefield::{NoiseLevel, NoiseSchedule, ScoreJvp, ScoreModel};

use crate::common::{flex, values};

/// Elementwise work: `|x − y| ≤ 1e-5·max(|y|, 1)`.
const ELEMENTWISE: f64 = 1e-5;
/// Work through matmuls, convolutions and reductions: `|x − y| ≤ 1e-4·max(|y|, 1)`.
const REDUCED: f64 = 1e-4;
/// Long chains of them, where rounding compounds: the U-Net (18 convolutions, 11 group norms)
/// and multi-step sampler runs (a state of size ~80 at the first level carries an absolute
/// rounding of ~5e-6 through every later step): `|x − y| ≤ 1e-3·max(|y|, 1)`.
const CHAINED: f64 = 1e-3;

/// A quantity computed on one backend, and the tolerance its comparison with flex allows.
struct Quantity {
    name: String,
    tol: f64,
    values: Vec<f64>,
}

/// A [`Quantity`].
fn quantity(name: impl Into<String>, tol: f64, values: Vec<f64>) -> Quantity {
    Quantity { name: name.into(), tol, values }
}

/// Compares `got` (on `backend`) with `want` (on flex) quantity by quantity, prints the
/// largest relative difference of each, and fails listing every quantity out of tolerance.
fn assert_agree(backend: &str, workload: &str, got: &[Quantity], want: &[Quantity]) {
    assert_eq!(got.len(), want.len(), "{workload}: the workloads differ");
    let mut failures = Vec::new();
    for (g, w) in got.iter().zip(want) {
        assert_eq!((&g.name, g.tol), (&w.name, w.tol));
        assert_eq!(g.values.len(), w.values.len(), "{}: lengths differ", g.name);
        assert!(!w.values.is_empty(), "{}: nothing to compare", w.name);
        let mut max = 0.0f64;
        let mut at = 0;
        for (i, (x, y)) in g.values.iter().zip(&w.values).enumerate() {
            let d = (x - y).abs() / y.abs().max(1.0);
            // NaN on either side is a failure, never a pass.
            if d.is_nan() || d > max {
                max = if d.is_nan() { f64::INFINITY } else { d };
                at = i;
            }
        }
        println!(
            "{backend:>7} vs flex, {workload}: {:<44} max rel. diff {max:.2e} (tol {:.0e})",
            g.name, g.tol
        );
        if max > g.tol {
            failures.push(format!(
                "{}: {} on {backend} vs {} on flex at [{at}] (rel. diff {max:.2e} > {:.0e})",
                g.name, g.values[at], w.values[at], g.tol
            ));
        }
    }
    assert!(failures.is_empty(), "{backend} disagrees with flex:\n{}", failures.join("\n"));
}

/// Standard normal values from a fixed seed, on the host.
fn normal(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Host values as a tensor in the device's default float type (f32).
fn tensor<const D: usize>(values: Vec<f64>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A tensor of standard normal values drawn on the host from `seed`.
fn normal_tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    tensor(normal(shape.iter().product(), seed), shape, device)
}

/// Every float parameter of `module`, flattened, in visiting order (initialising lazy ones).
fn parameters<M: Module>(module: &M) -> Vec<f64> {
    struct Collect(Vec<f64>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(values(param.val().inner()));
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// `module` with weights drawn on the host from `seed`, so that every run, not only every
/// backend, compares the same network: matrices and kernels `z/√(3·fan_in)` (the spread of
/// Burn's Kaiming-uniform init; Linear weights are `[in, out]`, Conv2d's `[out, in, k, k]`),
/// vectors (biases, GroupNorm's γ and β) `round(mean of Burn's init) + 0.1·z`, so γ ≈ 1.
fn seeded<M: Module>(module: M, seed: u64) -> M {
    struct Seeded(StdRng);
    impl ModuleMapper for Seeded {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let dims = value.dims();
            let (offset, scale) = match D {
                1 => (value.clone().mean().into_scalar::<f64>().round(), 0.1),
                2 => (0.0, (3.0 * dims[0] as f64).sqrt().recip()),
                _ => (0.0, (3.0 * dims[1..].iter().product::<usize>() as f64).sqrt().recip()),
            };
            let n = dims.iter().product::<usize>();
            let values: Vec<f64> = (0..n)
                .map(|_| offset + scale * Distribution::<f64>::sample(&StandardNormal, &mut self.0))
                .collect();
            let device = value.device();
            let value = Tensor::from_data(TensorData::new(values, dims), (&device, value.dtype()));
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Seeded(StdRng::seed_from_u64(seed)))
}

/// `module` (built on flex) on `device`, with bit-identical weights. The parameters are read
/// first: Burn initialises lazy parameters where they are first used, and a parameter first
/// used after the move would be drawn afresh on `device`.
fn moved<M: Module>(module: &M, device: &Device) -> M {
    let want = parameters(module);
    let out = module.clone().to_device(device);
    assert!(parameters(&out) == want, "moving a module to {device:?} changed its weights");
    out
}

// ---------------------------------------------------------------------------------------------
// The analytic oracles

/// Oracle scores, JVPs, log-densities and prior log-densities on `device`, from inputs drawn
/// on the host with a fixed seed (so every backend sees the same numbers); elementwise.
fn oracles(device: &Device) -> Vec<Quantity> {
    let mut rng = StdRng::seed_from_u64(11);
    let n = 64;
    let mixture = GaussianMixture::new(
        &[0.3, 0.7],
        &[vec![-2.0, 1.0, 0.0], vec![1.5, -0.5, 1.0]],
        &[0.5, 0.8],
    )
    .unwrap();
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let ve = VeSde::new(0.01, 50.0).unwrap();
    let x = vp.prior_sample([n, 3], device, &mut rng);
    let v = vp.prior_sample([n, 3], device, &mut rng);
    let times: Vec<f64> = (0..n).map(|i| 0.01 + 0.98 * i as f64 / (n - 1) as f64).collect();
    let level = NoiseLevel::at_times(&vp, &times, device);
    let (score, jvp) = mixture.score_jvp(x.clone(), &level, v);
    let gaussian = Gaussian::diagonal(&[0.5, -1.0, 2.0], &[0.3, 1.0, 2.5]).unwrap();
    let ve_level = NoiseLevel::at_times(&ve, &times, device);
    let clean = tensor(vec![0.5; 3 * 4], [4, 3], device);
    vec![
        quantity("mixture score", ELEMENTWISE, values(score)),
        quantity("mixture jvp", ELEMENTWISE, values(jvp)),
        quantity("mixture log p", ELEMENTWISE, values(mixture.log_prob_at(x.clone(), &level))),
        quantity("gaussian score (ve)", ELEMENTWISE, values(gaussian.score(x.clone(), &ve_level))),
        quantity("prior log p", ELEMENTWISE, values(ve.prior_log_prob(x.mul_scalar(10.0)))),
        quantity("clean log p", ELEMENTWISE, values(mixture.log_prob(clean))),
    ]
}

// ---------------------------------------------------------------------------------------------
// The dual-number layers and the networks

/// The modules compared, built once on flex.
struct Networks {
    linear: Linear,
    conv: Conv2d,
    norm: GroupNorm,
    mlp: ScoreMlp,
    plain_mlp: ScoreMlp,
    unet: NcsnUnet,
}

/// The small U-Net every backend runs (width 8, so that lavapipe runs it in seconds).
fn small_unet() -> NcsnUnetConfig {
    NcsnUnetConfig::new().with_width(8).with_groups(4).with_embedding(16).with_embedding_hidden(32)
}

/// The MLP of the network, sampler and training workloads: 2-D data, conditioned on `ln σ`,
/// NCSN's `1/σ` output.
fn small_mlp() -> ScoreMlpConfig {
    ScoreMlpConfig::new(2).with_hidden(32).with_layers(3).with_scale_by_sigma(true)
}

impl Networks {
    fn new() -> Self {
        let device = flex();
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
        let plain_mlp = ScoreMlpConfig::new(2)
            .with_hidden(16)
            .with_layers(2)
            .with_conditioning(Conditioning::None);
        Networks {
            linear: seeded(LinearConfig::new(5, 7).init(&device), 1),
            conv: seeded(conv.init(&device), 2),
            norm: seeded(GroupNormConfig::new(2, 4).init(&device), 3),
            mlp: seeded(small_mlp().init(&device), 4),
            plain_mlp: seeded(plain_mlp.init(&device), 5),
            unet: seeded(small_unet().init(&device), 6),
        }
    }
}

/// Values and tangents (two tangents per sample) of each dual layer and of the dual
/// activations, and the networks' scores and exact JVPs, on `device`.
fn networks(nets: &Networks, device: &Device) -> Vec<Quantity> {
    let dual = |shape: [usize; 4], seed| {
        let mut tangent = shape;
        tangent[0] *= 2;
        Dual::new(normal_tensor(shape, seed, device), normal_tensor(tangent, seed + 1, device))
    };
    let mut out = Vec::new();
    let mut push = |name: &str, tol, d: Dual<4>| {
        out.push(quantity(format!("{name} value"), tol, values(d.value)));
        out.push(quantity(format!("{name} tangent"), tol, values(d.tangent)));
    };

    let linear = moved(&nets.linear, device);
    let x = Dual::new(normal_tensor([4, 5], 10, device), normal_tensor([8, 5], 11, device));
    let y = linear.forward_dual(x);
    push("Linear", REDUCED, Dual::new(y.value.unsqueeze(), y.tangent.unsqueeze()));
    push("Conv2d /2", REDUCED, moved(&nets.conv, device).forward_dual(dual([2, 3, 9, 9], 12)));
    push("GroupNorm", REDUCED, moved(&nets.norm, device).forward_dual(dual([2, 4, 5, 5], 14)));
    let d = dual([2, 3, 4, 4], 16);
    push("silu", ELEMENTWISE, d.clone().silu());
    push("elu", ELEMENTWISE, d.clone().elu());
    push("softplus", ELEMENTWISE, d.clone().softplus());
    push("tanh", ELEMENTWISE, d.clone().tanh());
    push("cat, upsample", ELEMENTWISE, Dual::cat(vec![d.clone(), d.tanh()], 1).upsample_nearest(2));

    let vp = VpSde::new(0.1, 20.0).unwrap();
    let times: Vec<f64> = (0..16).map(|i| 0.02 + 0.06 * i as f64).collect();
    let level = NoiseLevel::at_times(&vp, &times, device);
    let mlp = moved(&nets.mlp, device);
    let (x, v) = (normal_tensor([16, 2], 20, device), normal_tensor([16, 2], 21, device));
    out.push(quantity("ScoreMlp score", REDUCED, values(mlp.score(x.clone(), &level))));
    let (s, jvp) = mlp.score_jvp(x, &level, v);
    out.push(quantity("ScoreMlp score_jvp value", REDUCED, values(s)));
    out.push(quantity("ScoreMlp score_jvp tangent", REDUCED, values(jvp)));

    let ve = VeSde::new(0.01, 50.0).unwrap();
    let level = NoiseLevel::at_times(&ve, &[0.2, 0.6], device);
    let unet = moved(&nets.unet, device);
    let shape = [2, 1, 28, 28];
    let (x, v) = (normal_tensor(shape, 22, device), normal_tensor(shape, 23, device));
    out.push(quantity("NcsnUnet score", CHAINED, values(unet.score(x.clone(), &level))));
    let (s, jvp) = unet.score_jvp(x, &level, v);
    out.push(quantity("NcsnUnet score_jvp value", CHAINED, values(s)));
    out.push(quantity("NcsnUnet score_jvp tangent", CHAINED, values(jvp)));
    out
}

/// The fused ops: GroupNorm + SiLU with a shift (`scorefield::nn::group_norm_silu`) and the
/// convolution (`scorefield::nn::conv2d`), the kernels on flex, the composed fallback or
/// Burn's stock op on the other backends. Outputs and the gradients of `Σ w·out` w.r.t. every
/// input, on `device` with autodiff.
fn fused_ops(device: &Device) -> Vec<Quantity> {
    let device = device.clone().autodiff();
    let x = normal_tensor([3, 8, 6, 5], 30, &device).require_grad();
    let shift = normal_tensor([3, 8], 31, &device).require_grad();
    let gamma = normal_tensor([8], 32, &device).add_scalar(1.0).require_grad();
    let beta = normal_tensor([8], 33, &device).require_grad();
    let weight = normal_tensor([3, 8, 6, 5], 34, &device);
    let options = GroupNormSiluOptions::new(4);
    let out = group_norm_silu(x.clone(), Some(shift.clone()), gamma.clone(), beta.clone(), options)
        .unwrap();
    let grads = out.clone().mul(weight).sum().backward();
    // The convolution: stride 2, asymmetric padding, a bias.
    let cx = normal_tensor([3, 4, 9, 8], 35, &device).require_grad();
    let cw = normal_tensor([5, 4, 3, 3], 36, &device).require_grad();
    let cb = normal_tensor([5], 37, &device).require_grad();
    let options = Conv2dOptions {
        stride: [2, 2],
        padding: [(1, 0), (1, 1)],
        fused: true,
        algorithm: ConvAlgorithm::Auto,
    };
    let y = conv2d(cx.clone(), cw.clone(), Some(cb.clone()), options).unwrap();
    let cgrads = y.clone().mul(normal_tensor(y.dims(), 38, &device)).sum().backward();
    // And a 3×3 same convolution through Winograd's algorithm on flex.
    let wx = normal_tensor([2, 4, 7, 6], 39, &device).require_grad();
    let ww = normal_tensor([3, 4, 3, 3], 40, &device).require_grad();
    let winograd = Conv2dOptions::new(1, 1).with_algorithm(ConvAlgorithm::Winograd);
    let wy = conv2d(wx.clone(), ww.clone(), None, winograd).unwrap();
    let wgrads = wy.clone().mul(normal_tensor(wy.dims(), 41, &device)).sum().backward();
    // SiLU (fused on flex), on values covering both tails.
    let sx = normal_tensor([7, 5], 42, &device).mul_scalar(4.0).require_grad();
    let sy = silu(sx.clone());
    let sgrads = sy.clone().mul(normal_tensor([7, 5], 43, &device)).sum().backward();
    // The MLP's dense layers (fused with their SiLU on flex), 300 rows: beyond one block.
    let plain = ScoreMlpConfig::new(2).with_hidden(16).with_conditioning(Conditioning::None);
    let mlp = moved(&seeded(plain.init(&flex()), 44), &device);
    let mx = normal_tensor([300, 2], 45, &device).require_grad();
    let my = mlp.score(mx.clone(), &NoiseLevel::clean(300, &device));
    let mgrads = my.clone().mul(normal_tensor([300, 2], 46, &device)).sum().backward();
    vec![
        quantity("group_norm_silu output", REDUCED, values(out)),
        quantity("group_norm_silu input gradient", REDUCED, values(x.grad(&grads).unwrap())),
        quantity("group_norm_silu shift gradient", REDUCED, values(shift.grad(&grads).unwrap())),
        quantity("group_norm_silu gamma gradient", REDUCED, values(gamma.grad(&grads).unwrap())),
        quantity("group_norm_silu beta gradient", REDUCED, values(beta.grad(&grads).unwrap())),
        quantity("conv2d output", REDUCED, values(y)),
        quantity("conv2d input gradient", REDUCED, values(cx.grad(&cgrads).unwrap())),
        quantity("conv2d weight gradient", REDUCED, values(cw.grad(&cgrads).unwrap())),
        quantity("conv2d bias gradient", REDUCED, values(cb.grad(&cgrads).unwrap())),
        quantity("conv2d Winograd output", REDUCED, values(wy)),
        quantity("conv2d Winograd input gradient", REDUCED, values(wx.grad(&wgrads).unwrap())),
        quantity("conv2d Winograd weight gradient", REDUCED, values(ww.grad(&wgrads).unwrap())),
        quantity("silu output", REDUCED, values(sy)),
        quantity("silu gradient", REDUCED, values(sx.grad(&sgrads).unwrap())),
        quantity("dense layers (ScoreMlp) output", REDUCED, values(my)),
        quantity(
            "dense layers (ScoreMlp) input gradient",
            REDUCED,
            values(mx.grad(&mgrads).unwrap()),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The samplers

/// The batch of every sampler run.
const BATCH: usize = 8;

/// The 2-D mixture the samplers run on with its exact score.
fn mixture() -> GaussianMixture {
    GaussianMixture::new(&[0.4, 0.6], &[vec![-1.0, 0.5], vec![1.5, -0.5]], &[0.3, 0.5]).unwrap()
}

/// The final state of `driver` run from its prior sample, all noise from per-sample streams.
fn run<St: Step<2>, M: ScoreModel<2>>(driver: &Driver<St>, model: &M, device: &Device) -> Vec<f64> {
    let init = driver.prior_sample([BATCH, 2], device, &mut PerSampleNoise::new(1, BATCH)).unwrap();
    let out = driver.run(model, init, &mut PerSampleNoise::new(2, BATCH), &mut ()).unwrap();
    values(out.x)
}

/// A short run of every driver step and every classic sampler (on the driver) on the exact
/// mixture score, two on the small MLP, and the host-drawn noise itself; the runs to `1e-3`,
/// the noise exactly.
fn samplers(mlp: &ScoreMlp, device: &Device) -> Vec<Quantity> {
    let data = mixture();
    let ve = || Grid::karras(Karras::edm(), 5, 7.0).unwrap();
    let vp = || Grid::karras(VpSde::new(0.1, 20.0).unwrap(), 5, 7.0).unwrap().with_zero();
    let mut out = Vec::new();
    let mut both = |name: &str, ve_run: Vec<f64>, vp_run: Vec<f64>| {
        out.push(quantity(format!("{name} (EDM grid)"), CHAINED, ve_run));
        out.push(quantity(format!("{name} (VP grid, to 0)"), CHAINED, vp_run));
    };
    macro_rules! on_both_grids {
        ($name:expr, $step:expr) => {
            both(
                $name,
                run(&Driver::new($step, ve()), &data, device),
                run(&Driver::new($step, vp()), &data, device),
            )
        };
    }
    on_both_grids!("Euler", Euler);
    on_both_grids!("Heun", Heun::default());
    on_both_grids!("Heun, churn 2", Heun::with_churn(2.0, 0.0, 10.0, 1.0).unwrap());
    on_both_grids!("Euler ancestral", EulerAncestral::default());
    on_both_grids!("DPM-Solver++ 2M", DpmSolverPp2M);
    on_both_grids!("DPM-Solver++ 2M SDE", DpmSolverPp2MSde::default());
    on_both_grids!("DPM-Solver++ 3M SDE", DpmSolverPp3MSde::default());
    on_both_grids!("UniPC-2 bh2", UniPc::new(2, true, UniPcVariant::Bh2).unwrap());

    // Noise the caller supplies, as tensors on the device.
    let driver = Driver::new(EulerAncestral::default(), ve());
    let draws = (0..4).map(|i| normal_tensor([BATCH, 2], 30 + i, device));
    let init = normal_tensor([BATCH, 2], 29, device).mul_scalar(80.0);
    let fixed = driver.run(&data, init, &mut FixedNoise::new(draws), &mut ()).unwrap();
    out.push(quantity("Euler ancestral, FixedNoise", CHAINED, values(fixed.x)));

    let vp_sde = VpSde::new(0.1, 20.0).unwrap();
    let langevin = Langevin::new(0.05, 4).unwrap().at_level(&vp_sde, 0.2).unwrap();
    out.push(quantity("Langevin", CHAINED, run(&langevin.driver().unwrap(), &data, device)));
    let levels = GeometricSigmas::new(0.1, 2.0, 3).unwrap();
    let annealed = AnnealedLangevin::ncsn(levels, 2, 0.05).unwrap().with_final_denoise(true);
    let annealed = annealed.driver().unwrap();
    out.push(quantity("annealed Langevin", CHAINED, run(&annealed, &data, device)));
    let corrector = Corrector::Langevin { snr: 0.16, steps: 1 };
    let pc = ReverseSde::new(vp_sde, Predictor::ReverseDiffusion, corrector, 3).unwrap();
    out.push(quantity("reverse SDE, PC (VP)", CHAINED, run(&pc.driver().unwrap(), &data, device)));
    let corrector = Corrector::AnnealedLangevin { snr: 0.16, steps: 1 };
    let ve_sde = VeSde::new(0.01, 10.0).unwrap();
    let em = ReverseSde::new(ve_sde, Predictor::EulerMaruyama, corrector, 3).unwrap();
    out.push(quantity("reverse SDE, EM (VE)", CHAINED, run(&em.driver().unwrap(), &data, device)));
    let ddpm = DdpmAncestral::new(Ddpm::linear(10).unwrap(), DdpmVariance::BetaTilde);
    out.push(quantity("DDPM ancestral", CHAINED, run(&ddpm.driver().unwrap(), &data, device)));
    let ddim = Ddim::new(Ddpm::linear(100).unwrap(), 4, 0.5).unwrap();
    out.push(quantity("DDIM, η = 0.5", CHAINED, run(&ddim.driver().unwrap(), &data, device)));

    let mlp = moved(mlp, device);
    let net = Driver::new(DpmSolverPp2MSde::default(), ve());
    out.push(quantity("DPM-Solver++ 2M SDE, MLP", CHAINED, run(&net, &mlp, device)));
    let net = AnnealedLangevin::ncsn(GeometricSigmas::new(0.1, 2.0, 3).unwrap(), 2, 0.05).unwrap();
    out.push(quantity(
        "annealed Langevin, MLP",
        CHAINED,
        run(&net.driver().unwrap(), &mlp, device),
    ));

    // The noise itself is drawn on the host: bit-identical on every backend.
    let like = Tensor::<2>::zeros([BATCH, 3], device);
    let z = NoiseSource::standard_normal(&mut PerSampleNoise::new(7, BATCH), &like).unwrap();
    out.push(quantity("PerSampleNoise draws", 0.0, values(z)));
    out
}

// ---------------------------------------------------------------------------------------------
// Training

/// One trainer step (DSM on the conditioned MLP and on the small U-Net, sliced score matching
/// through the dual layers on an unconditioned MLP) from the same weights and batch: the loss,
/// the per-sample losses, the gradient norm, and the model's and the EMA's output after the
/// update on a fixed probe; to `1e-4`, the U-Net's output to `1e-3`.
fn training(nets: &Networks, device: &Device) -> Vec<Quantity> {
    let config = TrainerConfig::new().with_ema_decay(0.5).with_seed(3);
    let dsm = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap();
    let ve = VeSde::new(0.01, 50.0).unwrap();
    let mut out = Vec::new();
    let mut report = |name: &str, r: StepReport| {
        out.push(quantity(format!("{name}: loss"), REDUCED, vec![r.loss]));
        out.push(quantity(format!("{name}: per-sample losses"), REDUCED, r.per_sample));
        out.push(quantity(format!("{name}: gradient norm"), REDUCED, vec![r.grad_norm]));
    };
    let mut probes = Vec::new();

    let data = mixture();
    let batch = || data.sample(32, device, &mut StdRng::seed_from_u64(4));
    let probe = normal_tensor([8, 2], 5, device);
    let level = NoiseLevel::at_times(&ve, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], device);
    let config_mlp = config.clone().with_batch_size(32);
    let mut trainer = Trainer::new(moved(&nets.mlp, device), "mlp", config_mlp).unwrap();
    report("MLP, DSM", trainer.step(&dsm, batch()).unwrap());
    let after = trainer.model().valid().score(probe.clone(), &level);
    probes.push(quantity("MLP, DSM: model after the step", REDUCED, values(after)));
    let ema = trainer.ema().score(probe.clone(), &level);
    probes.push(quantity("MLP, DSM: EMA after the step", REDUCED, values(ema)));

    let plain = moved(&nets.plain_mlp, device);
    let ssm = SlicedScoreMatching::variance_reduced(2, Projection::Rademacher);
    let mut trainer = Trainer::new(plain, "plain mlp", config.clone()).unwrap();
    report("MLP, sliced SM", trainer.step(&ssm, batch()).unwrap());
    let after = trainer.model().valid().score(probe, &NoiseLevel::clean(8, device));
    probes.push(quantity("MLP, sliced SM: model after the step", REDUCED, values(after)));

    let images = tensor(
        normal(2 * 28 * 28, 6).iter().map(|z| 0.5 + 0.2 * z).collect(),
        [2, 1, 28, 28],
        device,
    );
    let config_unet = config.with_batch_size(2);
    let mut trainer = Trainer::new(moved(&nets.unet, device), "unet", config_unet).unwrap();
    report("U-Net, DSM", trainer.step(&dsm, images.clone()).unwrap());
    let level = NoiseLevel::at_times(&ve, &[0.3, 0.5], device);
    let after = trainer.model().valid().score(images, &level);
    probes.push(quantity("U-Net, DSM: model after the step", CHAINED, values(after)));
    out.extend(probes);
    out
}

// ---------------------------------------------------------------------------------------------
// Checkpoints across backends

/// A fresh checkpoint directory for one test.
fn checkpoint_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scorefield-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A checkpoint written on flex and read on `device` holds bit-identical weights, EMA and
/// step, gives the same outputs, and the next step (Adam's state restored) the same loss;
/// a checkpoint written on `device` reads back on flex bit for bit.
fn checkpoint_round_trip(backend: &str, device: &Device) {
    let config = small_mlp();
    let json = config.to_string();
    let trainer_config = TrainerConfig::new().with_batch_size(32).with_ema_decay(0.5);
    let dsm = DenoisingScoreMatching::multi_scale(&GeometricSigmas::ncsn(), 10).unwrap();
    let data = mixture();
    let on = |device: &Device, t: &Trainer<ScoreMlp>| data.sample(32, device, &mut t.batch_rng());

    let model = seeded(config.init(&flex()), 8);
    let mut on_flex = Trainer::new(model, json.clone(), trainer_config).unwrap();
    on_flex.step(&dsm, on(&flex(), &on_flex)).unwrap();
    let dir = checkpoint_dir(&format!("flex-to-{backend}"));
    on_flex.save(&dir).unwrap();
    let mut loaded = Trainer::load(&dir, config.init(device), &json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.steps(), 1);
    assert!(parameters(loaded.model()) == parameters(on_flex.model()), "model weights changed");
    assert!(parameters(loaded.ema()) == parameters(on_flex.ema()), "EMA weights changed");

    let probe = |device: &Device, t: &Trainer<ScoreMlp>| {
        let level =
            NoiseLevel::at_times(&VeSde::new(0.01, 50.0).unwrap(), &[0.1, 0.4, 0.9], device);
        values(t.ema().score(normal_tensor([3, 2], 8, device), &level))
    };
    let (want_ema, got_ema) = (probe(&flex(), &on_flex), probe(device, &loaded));
    let next_flex = on_flex.step(&dsm, on(&flex(), &on_flex)).unwrap();
    let next = loaded.step(&dsm, on(device, &loaded)).unwrap();
    let compared = |ema, report: StepReport, trainer: &Trainer<ScoreMlp>| {
        vec![
            quantity("loaded EMA's score", REDUCED, ema),
            quantity("next step's loss", REDUCED, vec![report.loss]),
            quantity("next step's gradient norm", REDUCED, vec![report.grad_norm]),
            quantity("weights after the next step", REDUCED, parameters(trainer.model())),
        ]
    };
    assert_agree(
        backend,
        "checkpoint",
        &compared(got_ema, next, &loaded),
        &compared(want_ema, next_flex, &on_flex),
    );

    let dir = checkpoint_dir(&format!("{backend}-to-flex"));
    loaded.save(&dir).unwrap();
    let back = Trainer::load(&dir, config.init(&flex()), &json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(back.steps(), 2);
    assert!(parameters(back.model()) == parameters(loaded.model()), "model weights changed");
    assert!(parameters(back.ema()) == parameters(loaded.ema()), "EMA weights changed");
}

/// The tests of one backend against flex.
macro_rules! agrees_with_flex {
    ($module:ident, $feature:literal) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            fn device() -> Device {
                scorefield::device($feature).unwrap()
            }

            #[test]
            fn oracles_agree_with_flex() {
                assert_agree($feature, "oracles", &oracles(&device()), &oracles(&flex()));
            }

            #[test]
            fn networks_agree_with_flex() {
                let nets = Networks::new();
                let (got, want) = (networks(&nets, &device()), networks(&nets, &flex()));
                assert_agree($feature, "networks", &got, &want);
            }

            #[test]
            fn fused_ops_agree_with_flex() {
                assert_agree($feature, "fused ops", &fused_ops(&device()), &fused_ops(&flex()));
            }

            #[test]
            fn samplers_agree_with_flex() {
                let mlp = seeded(small_mlp().init(&flex()), 7);
                let (got, want) = (samplers(&mlp, &device()), samplers(&mlp, &flex()));
                assert_agree($feature, "samplers", &got, &want);
            }

            #[test]
            fn a_training_step_agrees_with_flex() {
                let nets = Networks::new();
                let (got, want) = (training(&nets, &device()), training(&nets, &flex()));
                assert_agree($feature, "training", &got, &want);
            }

            #[test]
            fn checkpoints_move_between_flex_and_this_backend() {
                checkpoint_round_trip($feature, &device());
            }
        }
    };
}

agrees_with_flex!(ndarray, "ndarray");
agrees_with_flex!(wgpu, "wgpu");
