#!/usr/bin/env python3
"""Reference trajectories of diffusion samplers, for the Rust solver tests.

What it computes
----------------
An exact denoiser / noise predictor for a 3-d, two-component isotropic
Gaussian mixture (weights [0.3, 0.7], means [-1, 0.5, 2] and [1.5, -0.5, 0],
stds [0.4, 0.8]) is driven through the samplers of the two Python reference
implementations, and every intermediate quantity is printed as JSON:

* k-diffusion (VE form: ``model(x, sigma)`` returns the posterior mean
  E[x0 | x0 + sigma*n = x]) on sigmas [10, 5, 2, 0.8, 0.3, 0.05, 0]:
  sample_euler, sample_heun (with and without churn), sample_euler_ancestral,
  sample_dpmpp_2m, sample_dpmpp_2m_sde (midpoint and heun), sample_dpmpp_3m_sde,
  sample_dpm_2.  Per step: the callback's x, sigma, sigma_hat and denoised;
  every model call; every standard-normal draw in draw order (torch.randn_like
  inside k_diffusion.sampling is replaced by a recording, seeded draw, and the
  SDE samplers get an explicit recording ``noise_sampler``).
* diffusers (VP form: epsilon prediction at integer timestep t, with
  abar = scheduler.alphas_cumprod[t]) with a linear beta schedule
  (1000 train steps, 1e-4 .. 0.02) and 10 inference steps:
  DPMSolverMultistepScheduler (dpmsolver++, order 2; leading / trailing /
  linspace spacing), UniPCMultistepScheduler (bh2, order 2 and 3, trailing),
  DDIMScheduler (eta 0, set_alpha_to_one; leading / trailing / linspace, with
  clip_sample=False, plus one trailing case with the default clip_sample=True)
  and EulerDiscreteScheduler (trailing; the model sees scale_model_input(x)).

Precision
---------
Everything is float64 on the CPU.  The diffusers schedulers build their
schedules in float32 (torch.linspace(..., dtype=torch.float32) for the betas,
``.astype(np.float32)`` for the inference sigmas) and cast the sample to
float32 inside ``step`` of DPMSolverMultistep and EulerDiscrete.  To get pure
float64 references without copying or editing any library code, the names
``torch`` and ``np`` inside each scheduler module are temporarily rebound to
thin proxies on which ``float32`` means ``float64``; nothing else changes.  Each
diffusers case is also rerun with the unmodified library (float32 schedule) and
the final sample of that run is recorded under ``native_float32_schedule`` so
the size of that effect is visible (about 1e-6).

Output keys (per case; keys that do not apply are left out)
------------------------------------------------------------
k-diffusion: ``steps[i]`` has the callback's ``x`` (for churn samplers this is
the churned x_hat; the state before churn is ``x_pre_churn`` when gamma > 0),
``sigma``, ``sigma_hat``, ``gamma`` (euler/heun/dpm_2 only) and ``denoised``;
``model_calls`` lists every model evaluation in order with its ``step`` and
``stage`` (1 = the evaluation the callback reports, 2 = the second stage of
heun/dpm_2); ``noise`` lists every N(0,1) draw, unscaled, in draw order, and
``noise_calls[k]`` says who drew ``noise[k]`` (torch.randn_like at the start
of step ``step``, or noise_sampler(sigma, sigma_next) at the end of ``step``).
diffusers: ``timesteps``, ``sigmas`` (sqrt((1-abar)/abar) per timestep plus the
final entry), ``alphas_cumprod`` per timestep, ``scheduler_config`` (the full
config) and per step ``t``, ``x`` (the sample passed to ``step``), ``eps``,
``prev_sample``, plus scheduler-specific values (``order``/``x0_pred`` for
DPM-Solver; ``x0_pred``/``x_corrected``/``predictor_order``/``corrector_order``
for UniPC; ``prev_timestep``/``alphas_cumprod_prev``/``pred_original_sample``
for DDIM; ``model_input``/``pred_original_sample`` for Euler).

Versions used to produce tests/reference/solvers.json: python 3.11.7,
torch 2.15.0 (the +cu132 wheel, run on the CPU), k-diffusion 0.1.1.post1, diffusers 0.42.1, numpy 1.26.4
(the exact versions are also written into the JSON).  k-diffusion's package
__init__ imports ``clip``, which needs ``pkg_resources`` (setuptools < 81).

Rerun (from the repository root, in a throwaway virtual environment):

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install torch k-diffusion diffusers numpy "setuptools<81"
    /tmp/venv-ref/bin/python tests/reference/solver_refs.py > tests/reference/solvers.json

i.e. ``python tests/reference/solver_refs.py > tests/reference/solvers.json``
with that environment's python.
"""

import importlib
import importlib.metadata as md
import json
import math
import platform
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_default_dtype(torch.float64)
F64 = torch.float64

# ---------------------------------------------------------------- the model --

WEIGHTS = [0.3, 0.7]
MEANS = [[-1.0, 0.5, 2.0], [1.5, -0.5, 0.0]]
STDS = [0.4, 0.8]
DIM = 3
BATCH = 2
Z_SEED = 0
NOISE_SEED = 1  # every case draws its sampler noise from Generator().manual_seed(1)

LOG_W = torch.log(torch.tensor(WEIGHTS, dtype=F64))
MU = torch.tensor(MEANS, dtype=F64)  # [K, d]
S2 = torch.tensor(STDS, dtype=F64) ** 2  # [K]


def _check(t):
    assert isinstance(t, torch.Tensor) and t.dtype == F64, (type(t), getattr(t, "dtype", None))
    return t


def _responsibilities(diff, var):
    """diff [B,K,d] = x - centre_k, var [B,K] or [K]: r_k ∝ π_k N(x; centre_k, var_k I)."""
    logp = LOG_W - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * DIM * torch.log(2 * math.pi * var)
    return torch.exp(logp - torch.logsumexp(logp, dim=1, keepdim=True))


def ve_denoiser(x, sigma):
    """D(x; sigma) = sum_k r_k(x) [mu_k + s_k^2/(s_k^2+sigma^2) (x - mu_k)]; sigma scalar or [B]."""
    _check(x)
    sigma = _check(torch.as_tensor(sigma, dtype=F64))
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    var = S2[None, :] + sigma[:, None] ** 2  # [B, K]
    diff = x[:, None, :] - MU[None]  # [B, K, d]
    r = _responsibilities(diff, var)
    post = MU[None] + (S2[None, :] / var)[..., None] * diff
    return _check((r[..., None] * post).sum(1))


def vp_eps(x, abar):
    """eps(x, t) = -sqrt(1-abar) * grad log p_t(x), p_t = sum_k pi_k N(sqrt(abar) mu_k, (abar s_k^2 + 1 - abar) I)."""
    _check(x)
    abar = float(abar)
    var = abar * S2 + 1.0 - abar  # [K]
    diff = x[:, None, :] - math.sqrt(abar) * MU[None]  # [B, K, d]
    r = _responsibilities(diff, var)
    score = (r[..., None] * (-diff / var[None, :, None])).sum(1)
    return _check(-math.sqrt(1.0 - abar) * score)


def _self_test():
    """Tweedie: D(x; s) = x + s^2 grad log p_s(x); VP eps consistent with the VE denoiser."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn((BATCH, DIM), generator=g, dtype=F64) * 2.0
    for s in [0.05, 0.7, 3.0]:
        xr = x.clone().requires_grad_(True)
        var = S2 + s * s
        diff = xr[:, None, :] - MU[None]
        logp = LOG_W - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * DIM * torch.log(2 * math.pi * var)
        torch.logsumexp(logp, dim=1).sum().backward()
        tweedie = x + s * s * xr.grad
        assert torch.allclose(tweedie, ve_denoiser(x, s), rtol=0, atol=1e-12)
    for abar in [0.9, 0.3, 0.004]:
        sig = math.sqrt((1 - abar) / abar)
        x0_from_eps = (x - math.sqrt(1 - abar) * vp_eps(x, abar)) / math.sqrt(abar)
        assert torch.allclose(x0_from_eps, ve_denoiser(x / math.sqrt(abar), sig), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- helpers ---

def tl(t):
    """float64 tensor -> nested list of Python floats (exact)."""
    return _check(t).detach().tolist()


def fl(v):
    if isinstance(v, torch.Tensor):
        assert v.dtype == F64 and v.numel() == 1, v
        return v.item()
    return float(v)


class _Proxy:
    """Forwards attribute access to a module, with a few names replaced."""

    def __init__(self, real, **overrides):
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_over", overrides)

    def __getattr__(self, name):
        over = object.__getattribute__(self, "_over")
        if name in over:
            return over[name]
        return getattr(object.__getattribute__(self, "_real"), name)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)  # e.g. lambda_min_clipped = -inf -> "-inf"
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


def make_z():
    g = torch.Generator().manual_seed(Z_SEED)
    return torch.randn((BATCH, DIM), generator=g, dtype=F64)


# -------------------------------------------------------------- k-diffusion --

KD_SIGMAS = [10.0, 5.0, 2.0, 0.8, 0.3, 0.05, 0.0]
CHURN_SAMPLERS = {"sample_euler", "sample_heun", "sample_dpm_2"}
NOISE_SAMPLER_SAMPLERS = {"sample_euler_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"}


def run_kdiff(name, fn_name, params, z, notes):
    import k_diffusion.sampling as ks

    fn = getattr(ks, fn_name)
    sigmas = torch.tensor(KD_SIGMAS, dtype=F64)
    x_init = _check(z * sigmas[0])
    gen = torch.Generator().manual_seed(NOISE_SEED)
    noise, noise_calls, steps, calls, first_call_of_step = [], [], [], [], []

    def randn_like(x, *args, **kwargs):
        assert not args and not kwargs
        _check(x)
        n = torch.randn(x.shape, generator=gen, dtype=F64)
        noise.append(tl(n))
        # euler/heun/dpm_2 draw at the start of step len(steps), before churn
        noise_calls.append({"source": "torch.randn_like", "step": len(steps), "x_arg": tl(x)})
        return n

    def noise_sampler(sigma, sigma_next):
        n = torch.randn(x_init.shape, generator=gen, dtype=F64)
        noise.append(tl(n))
        # the SDE samplers draw after the callback of their step
        noise_calls.append({"source": "noise_sampler", "step": len(steps) - 1,
                            "sigma": fl(sigma), "sigma_next": fl(sigma_next)})
        return n

    def model(x, sigma):
        _check(x)
        _check(sigma)
        assert sigma.shape == (x.shape[0],)
        d = ve_denoiser(x, sigma)
        calls.append({"sigma": fl(sigma[0]), "x": tl(x), "denoised": tl(d)})
        return d

    def gamma_of(i):
        s_churn = params.get("s_churn", 0.0)
        s_tmin = params.get("s_tmin", 0.0)
        s_tmax = params.get("s_tmax", float("inf"))
        return min(s_churn / (len(KD_SIGMAS) - 1), 2 ** 0.5 - 1) if s_tmin <= KD_SIGMAS[i] <= s_tmax else 0.0

    def callback(info):
        i = info["i"]
        assert i == len(steps)
        st = {"i": i, "sigma": fl(info["sigma"]), "sigma_hat": fl(info["sigma_hat"]),
              "x": tl(info["x"]), "denoised": tl(info["denoised"])}
        if fn_name in CHURN_SAMPLERS:
            gamma = gamma_of(i)
            assert abs(st["sigma_hat"] - KD_SIGMAS[i] * (gamma + 1)) <= 1e-15 * max(1.0, st["sigma_hat"])
            st["gamma"] = gamma
            if gamma > 0:
                st["x_pre_churn"] = noise_calls[-1]["x_arg"]
        assert calls[-1]["denoised"] == st["denoised"]
        first_call_of_step.append(len(calls) - 1)
        steps.append(st)

    extra = {}
    if fn_name in NOISE_SAMPLER_SAMPLERS:
        extra["noise_sampler"] = noise_sampler
    real_torch = ks.torch
    ks.torch = _Proxy(real_torch, randn_like=randn_like)
    try:
        final = fn(model, x_init.clone(), sigmas, callback=callback, disable=True, **params, **extra)
    finally:
        ks.torch = real_torch
    assert len(steps) == len(KD_SIGMAS) - 1

    # label model calls: the call just before callback i is step i's first evaluation,
    # any other call between callbacks i and i+1 is a second stage of step i
    for k, c in enumerate(calls):
        if k in first_call_of_step:
            c["step"], c["stage"] = first_call_of_step.index(k), 1
        else:
            c["step"] = max(j for j, f in enumerate(first_call_of_step) if f < k)
            c["stage"] = 2
    for c in noise_calls:
        c.pop("x_arg", None)

    case = {"name": name, "library": "k-diffusion", "function": fn_name, "form": "ve",
            "params": params, "sigmas": list(KD_SIGMAS), "x_init": tl(x_init)}
    if noise:
        case["noise_seed"] = NOISE_SEED
        case["noise"] = noise
        case["noise_calls"] = noise_calls
    case["steps"] = steps
    case["model_calls"] = calls
    case["final"] = tl(final)
    case["notes"] = notes
    return case


# ---------------------------------------------------------------- diffusers --

DIFFUSERS_BASE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                      beta_schedule="linear", prediction_type="epsilon")
NUM_STEPS = 10

SCHED_MODULES = {
    "DPMSolverMultistepScheduler": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "UniPCMultistepScheduler": "diffusers.schedulers.scheduling_unipc_multistep",
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
    "EulerDiscreteScheduler": "diffusers.schedulers.scheduling_euler_discrete",
}


class float64_scheduler_module:
    """Within the scheduler module, torch.float32 and np.float32 name float64."""

    def __init__(self, cls_name, enabled=True):
        self.mod = importlib.import_module(SCHED_MODULES[cls_name])
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            self.saved = (self.mod.torch, self.mod.np)
            self.mod.torch = _Proxy(torch, float32=torch.float64)
            self.mod.np = _Proxy(np, float32=np.float64)
        return self.mod

    def __exit__(self, *exc):
        if self.enabled:
            self.mod.torch, self.mod.np = self.saved
        return False


def _diffusers_loop(cls_name, cfg, z, f64):
    """Run 10 steps; returns (scheduler, x_init, steps, final)."""
    with float64_scheduler_module(cls_name, enabled=f64) as mod:
        sched = getattr(mod, cls_name)(**DIFFUSERS_BASE, **cfg)
        sched.set_timesteps(NUM_STEPS)
        if f64:
            assert sched.alphas_cumprod.dtype == F64
            if hasattr(sched, "sigmas"):
                assert sched.sigmas.dtype == F64
        init_sigma = sched.init_noise_sigma
        x = z * init_sigma
        if f64:
            _check(x)
        x_init = x
        steps = []
        for i, t in enumerate(sched.timesteps):
            st = {"i": i, "t": t.item()}
            ti = int(round(float(t)))
            assert float(t) == ti
            abar = sched.alphas_cumprod[ti]
            pre = {}
            if cls_name == "DPMSolverMultistepScheduler":
                n = len(sched.timesteps)
                lof = (i == n - 1) and (sched.config.euler_at_final
                                        or (sched.config.lower_order_final and n < 15)
                                        or sched.config.final_sigmas_type == "zero")
                los = (i == n - 2) and sched.config.lower_order_final and n < 15
                if sched.config.solver_order == 1 or sched.lower_order_nums < 1 or lof:
                    pre["order"] = 1
                elif sched.config.solver_order == 2 or sched.lower_order_nums < 2 or los:
                    pre["order"] = 2
                else:
                    pre["order"] = 3
            if cls_name == "UniPCMultistepScheduler":
                pre["corrector_applied"] = (i > 0 and (i - 1) not in sched.disable_corrector
                                            and sched.last_sample is not None)
                if pre["corrector_applied"]:
                    pre["corrector_order"] = sched.this_order
            model_input = sched.scale_model_input(x, t)
            eps = vp_eps(model_input, abar)
            out = sched.step(eps, t, x)
            prev = out.prev_sample
            if f64:
                _check(prev)
            st["alphas_cumprod"] = fl(abar.double())
            if cls_name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler"):
                st["sigma"] = fl(sched.sigmas[i].double())
                st["sigma_next"] = fl(sched.sigmas[i + 1].double())
            st["x"] = tl(x)
            if cls_name == "EulerDiscreteScheduler":
                st["model_input"] = tl(model_input)
            st["eps"] = tl(eps)
            st.update(pre)
            if cls_name == "DPMSolverMultistepScheduler":
                st["x0_pred"] = tl(sched.model_outputs[-1])
            if cls_name == "UniPCMultistepScheduler":
                st["x0_pred"] = tl(sched.model_outputs[-1])
                st["x_corrected"] = tl(sched.last_sample)
                st["predictor_order"] = sched.this_order
            if cls_name == "DDIMScheduler":
                pt = ti - sched.config.num_train_timesteps // sched.num_inference_steps
                st["prev_timestep"] = pt
                st["alphas_cumprod_prev"] = fl((sched.alphas_cumprod[pt] if pt >= 0
                                                else sched.final_alpha_cumprod).double())
                st["pred_original_sample"] = tl(out.pred_original_sample)
            if cls_name == "EulerDiscreteScheduler":
                st["pred_original_sample"] = tl(out.pred_original_sample)
            st["prev_sample"] = tl(prev)
            steps.append(st)
            x = prev
        return sched, x_init, init_sigma, steps, x


def run_diffusers(name, cls_name, cfg, z, notes):
    sched, x_init, init_sigma, steps, final = _diffusers_loop(cls_name, cfg, z, f64=True)
    # the unmodified library, as normally used (default dtype float32; z and the model stay float64)
    torch.set_default_dtype(torch.float32)
    try:
        _, _, _, _, final_native = _diffusers_loop(cls_name, cfg, z, f64=False)
    finally:
        torch.set_default_dtype(F64)
    final_native = final_native.double()
    ts = sched.timesteps
    timesteps = [v.item() for v in ts]
    case = {"name": name, "library": "diffusers", "function": cls_name, "form": "vp",
            "params": dict(cfg, num_inference_steps=NUM_STEPS),
            "scheduler_config": _jsonable(dict(sched.config))}
    # diffusers builds this list from a set: sort it so the output is reproducible
    if "_use_default_values" in case["scheduler_config"]:
        case["scheduler_config"]["_use_default_values"] = sorted(case["scheduler_config"]["_use_default_values"])
    info = {"init_noise_sigma": fl(torch.as_tensor(init_sigma, dtype=F64)),
            "steps_offset": sched.config.steps_offset,
            "timestep_spacing": sched.config.timestep_spacing}
    for key in ("lower_order_final", "final_sigmas_type", "euler_at_final", "disable_corrector",
                "solver_order", "solver_type", "algorithm_type", "predict_x0", "clip_sample",
                "set_alpha_to_one"):
        if key in sched.config:
            info[key] = _jsonable(sched.config[key])
    case["scheduler_info"] = info
    if hasattr(sched, "sigmas") and cls_name != "DDIMScheduler":
        case["sigmas"] = tl(sched.sigmas)
    case["timesteps"] = timesteps
    case["alphas_cumprod"] = [fl(sched.alphas_cumprod[int(round(t))]) for t in timesteps]
    case["x_init"] = tl(x_init)
    case["steps"] = steps
    case["final"] = tl(final)
    case["native_float32_schedule"] = {
        "final": tl(final_native),
        "max_abs_diff_to_final": (final_native - final).abs().max().item(),
        "note": "same case with the unmodified library: float32 betas/alphas_cumprod/sigmas "
                "(and the float32 cast of the sample inside step for DPMSolverMultistep and "
                "EulerDiscrete); the model still reads alphas_cumprod[t] from that scheduler.",
    }
    case["notes"] = notes
    return case


# ------------------------------------------------------------------ cases ---

KD_NOTES = {
    "euler": "Karras Euler: d = (x - D(x, sigma_hat))/sigma_hat; x += d (sigma_{i+1} - sigma_hat). "
             "torch.randn_like(x) is drawn at the start of EVERY step (even with gamma = 0, then unused); "
             "all 6 draws are recorded.",
    "heun_churn": "Karras Algorithm 2. gamma_i = min(s_churn/(len(sigmas)-1), sqrt2-1) = 1/3 when "
                  "s_tmin <= sigma_i <= s_tmax, else 0; eps = randn_like(x)*s_noise is drawn at the start of "
                  "EVERY step (before the gamma test's use); sigma_hat = sigma_i (1+gamma); "
                  "x_hat = x + eps sqrt(sigma_hat^2 - sigma_i^2) when gamma > 0 (callback x is x_hat; the "
                  "pre-churn state is x_pre_churn). Heun: d = (x_hat - D(x_hat, sigma_hat))/sigma_hat, "
                  "x2 = x_hat + d dt, d2 = (x2 - D(x2, sigma_{i+1}))/sigma_{i+1}, x = x_hat + (d+d2)/2 dt with "
                  "dt = sigma_{i+1} - sigma_hat. Last step (sigma_{i+1} = 0) is a plain Euler step, so "
                  "final = D(x_hat, sigma_hat) there. noise[k] is the unscaled N(0,1) draw of step k.",
    "heun": "As heun_churn with s_churn = 0: gamma = 0 everywhere, sigma_hat = sigma; the 6 randn_like "
            "draws still happen (unused). Last step is Euler.",
    "euler_ancestral": "denoised = D(x, sigma_i); sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 "
                       "(sigma_i^2 - sigma_{i+1}^2)/sigma_i^2)), sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2); "
                       "x += (x - denoised)/sigma_i (sigma_down - sigma_i); if sigma_{i+1} > 0: "
                       "x += noise_sampler(sigma_i, sigma_{i+1}) s_noise sigma_up. 5 draws (none on the last step).",
    "dpmpp_2m": "t = -log sigma, h = t_{i+1} - t_i. First step and last step (sigma_{i+1} = 0): "
                "x = (sigma_{i+1}/sigma_i) x - expm1(-h) D_i (last step gives x = D_i). Otherwise "
                "r = h_{i-1}/h, Dd = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, x = (sigma_{i+1}/sigma_i) x - expm1(-h) Dd.",
    "dpmpp_2m_sde": "h = log(sigma_i/sigma_{i+1}), eta_h = eta h; x = sigma_{i+1}/sigma_i e^{-eta_h} x "
                    "- expm1(-h-eta_h) D_i; if a previous D exists: r = h_last/h and midpoint adds "
                    "0.5 (-expm1(-h-eta_h)) (1/r)(D_i - D_{i-1}), heun adds "
                    "(-expm1(-h-eta_h)/(-h-eta_h) + 1)(1/r)(D_i - D_{i-1}); then "
                    "x += noise sigma_{i+1} sqrt(-expm1(-2 eta_h)) s_noise. Last step (sigma_{i+1}=0): x = D_i, "
                    "no noise. Step 0 is first order. noise_sampler replaces the default BrownianTree.",
    "dpmpp_3m_sde": "h = log(sigma_i/sigma_{i+1}), h_eta = h (eta+1); x = e^{-h_eta} x - expm1(-h_eta) D_i; "
                    "step 0: nothing more; step 1: + phi2 (D_i - D_{i-1})/r, r = h_{i-1}/h, "
                    "phi2 = expm1(-h_eta)/h_eta + 1; steps >= 2: r0 = h_{i-1}/h, r1 = h_{i-2}/h, "
                    "d1_0 = (D_i - D_{i-1})/r0, d1_1 = (D_{i-1} - D_{i-2})/r1, d1 = d1_0 + (d1_0 - d1_1) r0/(r0+r1), "
                    "d2 = (d1_0 - d1_1)/(r0+r1), phi3 = phi2/h_eta - 0.5, x += phi2 d1 - phi3 d2; then "
                    "x += noise sigma_{i+1} sqrt(-expm1(-2 h eta)) s_noise. Last step: x = D_i, no noise.",
    "dpm_2": "No churn (gamma 0, but randn_like still drawn each step). sigma_mid = exp((log sigma_hat + "
             "log sigma_{i+1})/2); x2 = x + d (sigma_mid - sigma_hat); d2 = (x2 - D(x2, sigma_mid))/sigma_mid; "
             "x += d2 (sigma_{i+1} - sigma_hat). Last step is Euler (x = D).",
}

DPM_NOTE = ("dpmsolver++ (data prediction), solver_type midpoint. x0_pred = (x - sigma_t eps)/alpha_t with "
            "alpha_t = 1/sqrt(sigma~^2+1), sigma_t = sigma~ alpha_t, sigma~ = scheduler.sigmas[i]. lambda = "
            "log alpha - log sigma, h = lambda_{i+1} - lambda_i. Order 1 (DDIM): x = (sigma_t'/sigma_t) x - "
            "alpha_t' expm1(-h) x0_i. Order 2 (midpoint): r0 = h_{i-1}/h, D1 = (x0_i - x0_{i-1})/r0, "
            "x = (sigma_t'/sigma_t) x - alpha_t' expm1(-h) (x0_i + 0.5 D1). Step 0 is order 1 (warm-up), "
            "the last step is order 1 (lower_order_final with < 15 steps, and final_sigmas_type 'zero' forces it "
            "too); final sigma is 0 so the last step returns x0_pred exactly. ")

UNIPC_NOTE = ("UniPC bh2, predict_x0. x0_pred_i = (x_i - sigma_t eps)/alpha_t at the UNCORRECTED x_i (the "
              "model is only evaluated once per step). At step i > 0 the corrector UniC re-does step i-1 "
              "from x_{i-1}' (the corrected state the predictor started from) using the new x0_pred_i, with the "
              "order of step i-1's predictor; the predictor UniP then starts from the corrected state. "
              "The last step's output is not corrected. hh = -h, B(h) = expm1(hh) (bh2). Predictor order "
              "= min(solver_order, N - i, lower_order_nums + 1): ramps 1,2,(3) and drops back to 1 on the last "
              "step (and to 2 on the second-to-last for solver_order 3). Order-2 predictor uses rho_p = 0.5. "
              "Order-1 corrector uses rho_c = 0.5; higher orders solve R rho = b. ")


def main():
    _self_test()
    z = make_z()
    cases = []
    kd = [
        ("kdiff_euler", "sample_euler", {}, "euler"),
        ("kdiff_heun_churn", "sample_heun",
         {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 8.0, "s_noise": 1.003}, "heun_churn"),
        ("kdiff_heun", "sample_heun", {}, "heun"),
        ("kdiff_euler_ancestral", "sample_euler_ancestral", {"eta": 1.0, "s_noise": 1.0}, "euler_ancestral"),
        ("kdiff_dpmpp_2m", "sample_dpmpp_2m", {}, "dpmpp_2m"),
        ("kdiff_dpmpp_2m_sde_midpoint", "sample_dpmpp_2m_sde",
         {"eta": 1.0, "s_noise": 1.0, "solver_type": "midpoint"}, "dpmpp_2m_sde"),
        ("kdiff_dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde",
         {"eta": 1.0, "s_noise": 1.0, "solver_type": "heun"}, "dpmpp_2m_sde"),
        ("kdiff_dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 1.0, "s_noise": 1.0}, "dpmpp_3m_sde"),
        ("kdiff_dpm_2", "sample_dpm_2", {}, "dpm_2"),
    ]
    for name, fn, params, note in kd:
        cases.append(run_kdiff(name, fn, params, z, KD_NOTES[note]))

    for sp in ["leading", "trailing", "linspace"]:
        cases.append(run_diffusers(
            f"diffusers_dpmpp_2m_{sp}", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": sp}, z,
            DPM_NOTE + {"leading": "leading: step_ratio = 1000 // (10+1) = 90, timesteps 900..90 step 90 "
                                   "(+steps_offset 0); so the chain starts at t = 900, not 999.",
                        "trailing": "trailing: round(arange(1000, 0, -100)) - 1 = 999..99.",
                        "linspace": "linspace: round(linspace(0, 999, 11))[::-1][:-1]."}[sp]))
    for order in [2, 3]:
        cases.append(run_diffusers(
            f"diffusers_unipc_bh2_order{order}_trailing", "UniPCMultistepScheduler",
            {"solver_order": order, "timestep_spacing": "trailing"}, z, UNIPC_NOTE))
    ddim_note = ("DDIM eta = 0: x0 = (x - sqrt(1-abar_t) eps)/sqrt(abar_t); prev = sqrt(abar_prev) x0 + "
                 "sqrt(1-abar_prev) eps. prev_timestep = t - num_train_timesteps // num_inference_steps = t - 100, "
                 "NOT the next entry of the timestep list (they differ for linspace: 999 -> 899 although the next "
                 "timestep is 888); abar_prev = final_alpha_cumprod = 1 when prev_timestep < 0 "
                 "(set_alpha_to_one), so the last step returns x0. ")
    for sp in ["leading", "trailing", "linspace"]:
        cases.append(run_diffusers(
            f"diffusers_ddim_{sp}", "DDIMScheduler",
            {"timestep_spacing": sp, "set_alpha_to_one": True, "clip_sample": False}, z,
            ddim_note + "clip_sample=False here (the DDIMScheduler default is True, see the _clip case)."))
    cases.append(run_diffusers(
        "diffusers_ddim_trailing_clip", "DDIMScheduler",
        {"timestep_spacing": "trailing", "set_alpha_to_one": True}, z,
        ddim_note + "Library default clip_sample=True, clip_sample_range=1: x0 is clamped to [-1, 1] before "
                    "forming prev (eps is NOT recomputed from the clamped x0, use_clipped_model_output=False)."))
    cases.append(run_diffusers(
        "diffusers_euler_trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, z,
        "Euler in VE variables: x is the VE state x_ve = x_vp sqrt(sigma~^2+1); init_noise_sigma = "
        "max sigma (trailing/linspace), so x_init = z sigma~_0. model_input = scale_model_input(x) = "
        "x/sqrt(sigma~^2+1) (= sqrt(abar) x) is what the eps network gets; x0 = x - sigma~ eps; "
        "x_next = x + (x - x0)/sigma~ (sigma~_next - sigma~). s_churn = 0, no noise. Final sigma 0, so "
        "the last step returns x0."))

    out = {
        "generator": "tests/reference/solver_refs.py",
        "command": "python tests/reference/solver_refs.py > tests/reference/solvers.json",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "k_diffusion": md.version("k-diffusion"), "diffusers": md.version("diffusers"),
                     "numpy": np.__version__},
        "dtype": "float64",
        "mixture": {"weights": WEIGHTS, "means": MEANS, "stds": STDS},
        "z_seed": Z_SEED,
        "z": tl(z),
        "cases": cases,
    }
    json.dump(out, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
