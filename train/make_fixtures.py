"""Make the diffusers reference fixtures for the Rust tests (tests/fixtures/).

    python make_fixtures.py --part small      # random small U-Net + sampler trajectories
    python make_fixtures.py --part fashion    # the shipped www/models/fashion U-Net
    python make_fixtures.py --part euler      # Euler ancestral + prediction-type variants
    python make_fixtures.py --part clipped    # clipped-eps DDIM, trailing, fixed_large DDPM
    python make_fixtures.py --part flow       # flow-matching Euler / Heun on an exact velocity
    python make_fixtures.py --part fashion-flow  # the shipped www/models/fashion-flow U-Net
    python make_fixtures.py --part analytic   # Analytic-DPM sigmas for the shipped fashion Gamma
    python make_fixtures.py --part loss       # the forward panel's per-t loss, fashion + flow
    python make_fixtures.py --part all

Every tensor is float32 except class labels (int64). Timesteps are float32 (they may
be fractional). See tests/fixtures/README.md for the contents of every file.
"""
import argparse
import json
import os

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       UNet2DModel)
from diffusers.schedulers import scheduling_ddpm
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "tests", "fixtures")

SMALL_CONFIG = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    norm_num_groups=4,
    attention_head_dim=16,        # 32 channels / 16 = 2 heads in the attention layers
    num_class_embeds=6,           # 5 classes + null class (index 5)
    time_embedding_type="positional",
    flip_sin_to_cos=False,        # the non-default branch on purpose (shipped models: True)
    freq_shift=1,                 # the non-default value on purpose (shipped models: 0)
    resnet_time_scale_shift="default",
)

# Top-level modules whose outputs are recorded as intermediate activations.
TAPS = ["time_proj", "time_embedding", "class_embedding", "conv_in", "mid_block",
        "conv_norm_out", "conv_act", "conv_out"]


def fnum(x):
    return torch.as_tensor(x).float().contiguous()


def unet_cases(num_classes_with_null, shape, seed):
    """(t, class) cases: batch 1 and >1, t = 0 / mid / 999 / fractional, incl. the null class."""
    null = num_classes_with_null - 1
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    specs = [
        ([0.0], [0]),
        ([999.0], [null]),
        ([1.0, 250.0, 999.0], [1, null, num_classes_with_null - 2]),
        ([500.0, 500.0], [2, null]),     # CFG pair: same x, same t, cond and null class
        ([37.5, 812.25], [0, 3]),        # fractional timesteps (Euler-style)
    ]
    cases = []
    for i, (t, cl) in enumerate(specs):
        b = len(t)
        x = torch.randn(b, c, h, w, generator=g)
        if i == 3:
            x[1] = x[0]
        cases.append((x, torch.tensor(t, dtype=torch.float32), torch.tensor(cl, dtype=torch.int64)))
    return cases


def record_unet(model, cases, prefix, taps_for=None):
    """Run the U-Net on each case; return the tensors dict. taps_for: case indices for which
    intermediate activations are recorded too (all when None)."""
    out = {}
    acts = {}
    hooks = []

    def hook(name):
        def f(_m, _inp, o):
            if isinstance(o, tuple):
                o = o[0]
            acts[name] = o.detach().clone()
        return f

    names = TAPS + [f"down_blocks.{i}" for i in range(len(model.down_blocks))] + \
        [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
    mods = dict(model.named_modules())
    for n in names:
        if n in mods and mods[n] is not None:
            hooks.append(mods[n].register_forward_hook(hook(n)))
    model.eval()
    with torch.no_grad():
        for i, (x, t, cl) in enumerate(cases):
            acts.clear()
            y = model(x, t, class_labels=cl).sample
            p = f"{prefix}case{i}."
            out[p + "x"] = fnum(x)
            out[p + "t"] = fnum(t)
            out[p + "class"] = cl.to(torch.int64).contiguous()
            out[p + "out"] = fnum(y)
            if taps_for is None or i in taps_for:
                for n, v in acts.items():
                    out[p + "act." + n] = fnum(v)
    for h in hooks:
        h.remove()
    return out


def perturb_(model, seed):
    """Random init plus noise on every parameter, so that GroupNorm affine params, biases
    and zero-initialised layers are all non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------
# Sampler trajectories with an analytic epsilon
# ---------------------------------------------------------------------------------------
MU, S = 0.3, 0.5  # data distribution N(MU, S^2) per pixel


def run_trajectory(sched, n_steps, shape, seed, kind, eta=0.0, mu=MU, s=S):
    """An epsilon-predicting sampler's trajectory (run_trajectory_v2) under the small
    fixtures' names: the model output is "eps", and x_t is the model input."""
    assert sched.config.prediction_type == "epsilon" and kind != "euler"
    res = run_trajectory_v2(sched, n_steps, shape, seed, kind, eta, mu, s)
    res["eps"] = res.pop("model_out")
    del res["model_in"], res["init_noise_sigma"]
    return res


# The cosine schedule the models train with, with clip_sample on (diffusers' DDPM/DDIM
# default) so the trajectories cover the clipping paths; the shipped scheduler_config.json
# turns clipping off (model.py says why) and fashion_ddim20_cfg2 follows that file.
SHIPPED_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                        prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)

TRAJECTORIES = [
    # name, scheduler class, config overrides, kind, eta, steps, shape
    ("ddpm_cos_1000", DDPMScheduler, {}, "ddpm", 0.0, 1000, (1, 1, 4, 4)),
    ("ddpm_cos_50", DDPMScheduler, {}, "ddpm", 0.0, 50, (2, 1, 4, 4)),
    ("ddim_eta0_cos_20", DDIMScheduler, {}, "ddim", 0.0, 20, (2, 1, 4, 4)),
    ("ddim_eta1_cos_20", DDIMScheduler, {}, "ddim", 1.0, 20, (2, 1, 4, 4)),
    ("ddim_eta0_linear_trailing_10", DDIMScheduler,
     dict(beta_schedule="linear", timestep_spacing="trailing"), "ddim", 0.0, 10, (2, 1, 4, 4)),
    ("dpmpp2m_cos_20", DPMSolverMultistepScheduler, {}, "dpm", 0.0, 20, (2, 1, 4, 4)),
    ("dpmpp2m_cos_10", DPMSolverMultistepScheduler, {}, "dpm", 0.0, 10, (2, 1, 4, 4)),
    ("dpmpp2m_linear_20", DPMSolverMultistepScheduler,
     dict(beta_schedule="linear"), "dpm", 0.0, 20, (2, 1, 4, 4)),
    # wide data N(0.5, 1.5^2): x0 estimates leave [-1, 1], so clip_sample is exercised
    ("ddim_eta0_cos_20_clip", DDIMScheduler, {}, "ddim", 0.0, 20, (2, 1, 4, 4)),
    ("ddpm_cos_50_clip", DDPMScheduler, {}, "ddpm", 0.0, 50, (2, 1, 4, 4)),
]
WIDE = {"ddim_eta0_cos_20_clip", "ddpm_cos_50_clip"}


def make_scheduler(cls, overrides):
    base = DDPMScheduler(**{**SHIPPED_SCHEDULE, **overrides})
    if cls is DDPMScheduler:
        return base
    return cls.from_config(base.config)


def part_small():
    os.makedirs(FIX, exist_ok=True)
    torch.manual_seed(1234)
    model = UNet2DModel(**SMALL_CONFIG)
    perturb_(model, 1235)
    model.eval()
    wdir = os.path.join(FIX, "unet_small")
    model.save_pretrained(wdir, safe_serialization=True)
    cases = unet_cases(SMALL_CONFIG["num_class_embeds"], (3, 16, 16), seed=7)
    t = record_unet(model, cases, "")
    save_file(t, os.path.join(FIX, "unet_small_io.safetensors"),
              metadata={"model": "tests/fixtures/unet_small", "made_by": "train/make_fixtures.py --part small"})

    for i, (name, cls, over, kind, eta, n, shape) in enumerate(TRAJECTORIES):
        sched = make_scheduler(cls, over)
        mu, sd = (0.5, 1.5) if name in WIDE else (MU, S)
        out = run_trajectory(sched, n, shape, seed=100 + i, kind=kind, eta=eta, mu=mu, s=sd)
        if name in WIDE:
            out["x0_unclipped"] = fnum(torch.stack([
                (xt - (1 - sched.alphas_cumprod[int(t)]).sqrt() * e) / sched.alphas_cumprod[int(t)].sqrt()
                for xt, e, t in zip(out["x_t"], out["eps"], out["t"])]))
        meta = {"scheduler_class": cls.__name__,
                "scheduler_config": json.dumps(dict(sched.config)),
                "num_inference_steps": str(n), "eta": str(eta),
                "eps": f"analytic: data N({mu}, {sd}^2) per pixel, "
                       "eps = sqrt(1-a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t)",
                "mu": str(mu), "s": str(sd)}
        save_file(out, os.path.join(FIX, f"sched_{name}.safetensors"), metadata=meta)
        for fn in os.listdir(FIX):
            if fn.endswith(".safetensors"):
                os.chmod(os.path.join(FIX, fn), 0o644)
        print(name, "final mean/std", float(out["x_final"].mean()), float(out["x_final"].std()))


def guided_trajectory(model, sched, steps, step):
    """An end-to-end fixture run: classes [7, 0], guidance w = 2 as one batch [x; x] with
    [classes; null], x_T from seed 42. `step(guided, t, x) -> (x_prev, x0_pred or None)`.
    The model output keeps the eps names (a flow model's is its velocity)."""
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(42)
    x = torch.randn(2, 1, 28, 28, generator=g)
    x_T = x.clone()
    cls = torch.tensor([7, 0])
    null = torch.full_like(cls, model.config.num_class_embeds - 1)
    w = 2.0
    rec = {k: [] for k in ["x_t", "eps_cond", "eps_uncond", "eps", "x0_pred", "x_prev"]}
    with torch.no_grad():
        for tt in sched.timesteps:
            e = model(torch.cat([x, x]), tt, class_labels=torch.cat([cls, null])).sample
            ec, eu = e.chunk(2)
            eps = eu + w * (ec - eu)
            x_prev, x0 = step(eps, tt, x)
            for k, v in [("x_t", x), ("eps_cond", ec), ("eps_uncond", eu), ("eps", eps),
                         ("x0_pred", x0), ("x_prev", x_prev)]:
                if v is not None:
                    rec[k].append(v.clone())
            x = x_prev
    out = {"timesteps": fnum(sched.timesteps.float()), "x_T": fnum(x_T), "x_final": fnum(x),
           "class": cls.to(torch.int64), "guidance_scale": fnum([w])}
    for k, v in rec.items():
        if v:
            out[k] = fnum(torch.stack(v))
    return out


def part_fashion(mdir=None):
    mdir = mdir or os.path.join(ROOT, "www", "models", "fashion")
    model = UNet2DModel.from_pretrained(mdir)
    model.eval()
    cases = unet_cases(model.config.num_class_embeds, (1, 28, 28), seed=11)
    t = record_unet(model, cases, "", taps_for={2})
    save_file(t, os.path.join(FIX, "unet_fashion_io.safetensors"),
              metadata={"model": "www/models/fashion", "made_by": "train/make_fixtures.py --part fashion"})

    # End-to-end: DDIM 20 steps (eta 0), guidance 2, classes 7 (Sneaker) and 0 (T-shirt/top),
    # with the model's shipped sampling defaults: scheduler_config.json and manifest.json's
    # `sampling` (use_clipped_model_output, which diffusers takes per step call).
    sched = DDIMScheduler.from_pretrained(mdir)
    man_path = os.path.join(mdir, "manifest.json")
    sampling = json.load(open(man_path)).get("sampling", {}) if os.path.exists(man_path) else {}
    clipped_eps = bool(sampling.get("use_clipped_model_output", False))
    def ddim_step(eps, tt, x):
        o = sched.step(eps, tt, x, eta=0.0, use_clipped_model_output=clipped_eps)
        return o.prev_sample, o.pred_original_sample
    out = guided_trajectory(model, sched, 20, ddim_step)
    out["alphas_cumprod"] = fnum(sched.alphas_cumprod)
    save_file(out, os.path.join(FIX, "fashion_ddim20_cfg2.safetensors"),
              metadata={"model": "www/models/fashion", "sampler": "DDIMScheduler eta 0, 20 steps",
                        "scheduler_config": json.dumps(dict(sched.config)),
                        "use_clipped_model_output": "true" if clipped_eps else "false"})


# ---------------------------------------------------------------------------------------
# --part euler: Euler ancestral and the prediction-type / spacing / variance variants the
# `small` trajectories do not cover (new files only; the `small` ones are left as they are)
# ---------------------------------------------------------------------------------------
def config_json(sched):
    """The scheduler config as JSON, deterministic: diffusers builds `_use_default_values` from a
    set, whose order changes from run to run."""
    cfg = dict(sched.config)
    if "_use_default_values" in cfg:
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    return json.dumps(cfg)


def analytic_output(x_in, a, pred, mu=MU, s=S):
    """The optimal model output for N(mu, s^2) data at input x_in = sqrt(a) x0 + sqrt(1-a) eps:
    eps* = sqrt(1-a) (x_in - sqrt(a) mu) / (a s^2 + 1 - a); v* = (eps* - sqrt(1-a) x_in) / sqrt(a);
    x0* = (x_in - sqrt(1-a) eps*) / sqrt(a). Float64, rounded to float32."""
    a = torch.as_tensor(a, dtype=torch.float64)
    xd = x_in.double()
    al, si = torch.sqrt(a), torch.sqrt(1 - a)
    eps = si * (xd - al * mu) / (a * s * s + 1 - a)
    if pred == "epsilon":
        out = eps
    elif pred == "v_prediction":
        out = (eps - si * xd) / al
    elif pred == "sample":
        out = (xd - si * eps) / al
    else:
        raise ValueError(pred)
    return out.float()


def run_trajectory_v2(sched, n_steps, shape, seed, kind, eta=0.0, mu=MU, s=S, clipped_eps=False):
    """A sampler's trajectory on the analytic model output (any prediction type), with the
    noise each step drew: Euler ancestral's model input is the scaled sample and its noise
    level the interpolated sigma; DDPM and Euler draw through their module's randn_tensor,
    patched to hand out (and record) a known z."""
    from diffusers.schedulers import scheduling_euler_ancestral_discrete
    pred = sched.config.prediction_type
    sched.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    x_T = x.clone()
    acp = sched.alphas_cumprod
    rec = {k: [] for k in ["t", "x_t", "model_in", "model_out", "x0_pred", "z", "x_prev"]}
    captured = {}
    if kind == "dpm":
        orig_convert = sched.convert_model_output

        def conv(model_output, *a, **k):
            r = orig_convert(model_output, *a, **k)
            captured["x0"] = r.clone()
            return r
        sched.convert_model_output = conv
    module = {"ddpm": scheduling_ddpm, "euler": scheduling_euler_ancestral_discrete}.get(kind)
    for t in sched.timesteps:
        if kind == "euler":
            x_in = sched.scale_model_input(x, t)
            sigma = sched.sigmas[sched.step_index].double()
            a = 1.0 / (1.0 + sigma * sigma)
        else:
            x_in = x
            a = acp[int(t)].double()
        out = analytic_output(x_in, a, pred, mu, s)
        z = torch.randn(shape, generator=g)
        if module is not None:
            used = {}

            def fake_randn(shape_, generator=None, device=None, dtype=None, **kw):
                used["z"] = z.clone()
                return z.clone()
            saved = module.randn_tensor
            module.randn_tensor = fake_randn
            try:
                o = sched.step(out, t, x)
            finally:
                module.randn_tensor = saved
            z_used = used.get("z", torch.zeros(shape))
            x0 = o.pred_original_sample
        elif kind == "ddim":
            if eta > 0:
                o = sched.step(out, t, x, eta=eta, variance_noise=z.clone(),
                               use_clipped_model_output=clipped_eps)
                z_used = z
            else:
                o = sched.step(out, t, x, eta=0.0, use_clipped_model_output=clipped_eps)
                z_used = torch.zeros(shape)
            x0 = o.pred_original_sample
        elif kind == "dpm":
            o = sched.step(out, t, x)
            z_used = torch.zeros(shape)
            x0 = captured["x0"]
        else:
            raise ValueError(kind)
        rec["t"].append(float(t))
        for k, v in [("x_t", x), ("model_in", x_in), ("model_out", out), ("x0_pred", x0),
                     ("z", z_used), ("x_prev", o.prev_sample)]:
            rec[k].append(v.clone())
        x = o.prev_sample
    res = {
        "timesteps": fnum(sched.timesteps.float()),
        "alphas_cumprod": fnum(sched.alphas_cumprod),
        "init_noise_sigma": fnum([float(sched.init_noise_sigma)]),
        "x_T": fnum(x_T),
        "x_final": fnum(x),
        "t": fnum(torch.tensor(rec["t"])),
    }
    for k in ["x_t", "model_in", "model_out", "x0_pred", "z", "x_prev"]:
        res[k] = fnum(torch.stack(rec[k]))
    if kind in ("dpm", "euler"):
        res["sigmas"] = fnum(sched.sigmas)
    return res


def _euler_cls():
    from diffusers import EulerAncestralDiscreteScheduler
    return EulerAncestralDiscreteScheduler


SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
TRAJECTORIES_V2 = [
    # name, scheduler class (None: Euler ancestral), config overrides, kind, eta, steps
    ("euler_a_cos_20", None, {}, "euler", 0.0, 20),
    ("euler_a_linear_leading_10", None,
     dict(beta_schedule="linear", timestep_spacing="leading", steps_offset=1), "euler", 0.0, 10),
    ("euler_a_v_cos_trailing_15", None,
     dict(prediction_type="v_prediction", timestep_spacing="trailing"), "euler", 0.0, 15),
    ("euler_a_scaled_7", None, SD_BETAS, "euler", 0.0, 7),
    ("ddpm_large_linear_linspace_25", DDPMScheduler,
     dict(beta_schedule="linear", variance_type="fixed_large", timestep_spacing="linspace"), "ddpm", 0.0, 25),
    ("ddpm_v_cos_offset1_20", DDPMScheduler,
     dict(prediction_type="v_prediction", steps_offset=1), "ddpm", 0.0, 20),
    ("ddim_v_eta1_cos_trailing_15", DDIMScheduler,
     dict(prediction_type="v_prediction", timestep_spacing="trailing"), "ddim", 1.0, 15),
    ("ddim_sample_eta05_scaled_offset1_12", DDIMScheduler,
     dict(prediction_type="sample", steps_offset=1, set_alpha_to_one=False, **SD_BETAS), "ddim", 0.5, 12),
    ("dpmpp2m_v_cos_16", DPMSolverMultistepScheduler, dict(prediction_type="v_prediction"), "dpm", 0.0, 16),
    ("dpmpp2m_sample_linear_trailing_8", DPMSolverMultistepScheduler,
     dict(prediction_type="sample", beta_schedule="linear", timestep_spacing="trailing"), "dpm", 0.0, 8),
]


def part_euler():
    os.makedirs(FIX, exist_ok=True)
    shape = (2, 1, 4, 4)
    for i, (name, cls, over, kind, eta, n) in enumerate(TRAJECTORIES_V2):
        cls = cls or _euler_cls()
        # DDIM-only options go to from_config; the rest through the DDPM config as before.
        over = dict(over)
        extra = {k: over.pop(k) for k in ["set_alpha_to_one"] if k in over}
        sched = make_scheduler(cls, over)
        if extra:
            sched = cls.from_config(sched.config, **extra)
        out = run_trajectory_v2(sched, n, shape, seed=200 + i, kind=kind, eta=eta)
        meta = {"scheduler_class": cls.__name__,
                "scheduler_config": config_json(sched),
                "num_inference_steps": str(n), "eta": str(eta),
                "prediction_type": sched.config.prediction_type,
                "model": f"analytic: data N({MU}, {S}^2) per pixel (see analytic_output)",
                "mu": str(MU), "s": str(S), "made_by": "train/make_fixtures.py --part euler"}
        save_file(out, os.path.join(FIX, f"sched_{name}.safetensors"), metadata=meta)
        print(name, "final mean/std", float(out["x_final"].mean()), float(out["x_final"].std()))
    gaussian_laws()


# --part clipped (issue 14): trailing spacing with clip_sample and eps re-derived from the
# clipped x0 (DDIM's step(..., use_clipped_model_output=True), the fixture's metadata
# `use_clipped_model_output`), and fixed_large DDPM with clipping, on the wide data
# N(0.5, 1.5^2) so that x0 leaves [-1, 1] and the clipped paths run.
TRAJECTORIES_CLIPPED = [
    # name, scheduler class, config overrides, kind, eta, steps, use_clipped_model_output
    ("ddim_eta0_cos_trailing_clipeps_10", DDIMScheduler, dict(timestep_spacing="trailing"),
     "ddim", 0.0, 10, True),
    ("ddim_eta1_cos_trailing_clipeps_8", DDIMScheduler, dict(timestep_spacing="trailing"),
     "ddim", 1.0, 8, True),
    ("ddim_eta0_cos_clipeps_2", DDIMScheduler, dict(timestep_spacing="trailing"),
     "ddim", 0.0, 2, True),
    ("ddim_v_eta05_linear_trailing_clipeps_6", DDIMScheduler,
     dict(prediction_type="v_prediction", beta_schedule="linear", timestep_spacing="trailing"),
     "ddim", 0.5, 6, True),
    ("ddpm_large_cos_trailing_clip_20", DDPMScheduler,
     dict(variance_type="fixed_large", timestep_spacing="trailing"), "ddpm", 0.0, 20, False),
]


def part_clipped():
    os.makedirs(FIX, exist_ok=True)
    shape = (2, 1, 4, 4)
    mu, sd = 0.5, 1.5
    for i, (name, cls, over, kind, eta, n, clipped_eps) in enumerate(TRAJECTORIES_CLIPPED):
        sched = make_scheduler(cls, over)
        out = run_trajectory_v2(sched, n, shape, seed=300 + i, kind=kind, eta=eta, mu=mu, s=sd,
                                clipped_eps=clipped_eps)
        meta = {"scheduler_class": cls.__name__,
                "scheduler_config": config_json(sched),
                "num_inference_steps": str(n), "eta": str(eta),
                "use_clipped_model_output": "true" if clipped_eps else "false",
                "prediction_type": sched.config.prediction_type,
                "model": f"analytic: data N({mu}, {sd}^2) per pixel (see analytic_output)",
                "mu": str(mu), "s": str(sd), "made_by": "train/make_fixtures.py --part clipped"}
        save_file(out, os.path.join(FIX, f"sched_{name}.safetensors"), metadata=meta)
        clipped = int((out["x0_pred"].abs() >= 1.0).sum())
        print(name, "final mean/std", float(out["x_final"].mean()), float(out["x_final"].std()),
              f"clipped x0 values: {clipped}/{out['x0_pred'].numel()}")


# --part flow (issue 15): diffusers' FlowMatchEulerDiscreteScheduler and
# FlowMatchHeunDiscreteScheduler on the exact velocity of N(mu, s^2) data per pixel, with and
# without `shift`. Neither scheduler returns an x0; the fixture's x0_pred is x - sigma v (what
# the flow models' x0-hat is), in float64 rounded to float32.
def flow_velocity(x, sigma, mu, s):
    """E[eps - x0 | x_sigma = x] for x0 ~ N(mu, s^2), x_sigma = (1 - sigma) x0 + sigma eps."""
    xd = x.double()
    sg = float(sigma)
    var = (1 - sg) ** 2 * s * s + sg * sg
    r = xd - (1 - sg) * mu
    e_eps = sg / var * r
    e_x0 = mu + (1 - sg) * s * s / var * r
    return (e_eps - e_x0).float()


def run_flow_trajectory(sched, n_steps, shape, seed, mu, s):
    sched.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x_T = x.clone()
    rec = {k: [] for k in ["t", "x_t", "model_in", "model_out", "x0_pred", "z", "x_prev"]}
    heun = "Heun" in type(sched).__name__
    for i, t in enumerate(sched.timesteps):
        # The level the model is evaluated at: Heun's corrector sees sigmas[i] too (its
        # sigmas list repeats every inner level), its predictor sigmas[i].
        sigma = sched.sigmas[i]
        out = flow_velocity(x, sigma, mu, s)
        x0 = (x.double() - float(sigma) * out.double()).float()
        o = sched.step(out, t, x)
        rec["t"].append(float(t))
        for k, v in [("x_t", x), ("model_in", x), ("model_out", out), ("x0_pred", x0),
                     ("z", torch.zeros(shape)), ("x_prev", o.prev_sample)]:
            rec[k].append(v.clone())
        x = o.prev_sample
    assert len(rec["t"]) == (2 * n_steps - 1 if heun else n_steps)
    res = {"timesteps": fnum(sched.timesteps.float()), "sigmas": fnum(sched.sigmas),
           "init_noise_sigma": fnum([1.0]),  # flow pipelines draw x_T = randn, unscaled
           "x_T": fnum(x_T), "x_final": fnum(x), "t": fnum(torch.tensor(rec["t"]))}
    for k in ["x_t", "model_in", "model_out", "x0_pred", "z", "x_prev"]:
        res[k] = fnum(torch.stack(rec[k]))
    return res


TRAJECTORIES_FLOW = [
    # name, scheduler class name, config, steps
    ("flow_euler_10", "FlowMatchEulerDiscreteScheduler", {}, 10),
    ("flow_euler_shift3_7", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 7),
    ("flow_euler_1", "FlowMatchEulerDiscreteScheduler", {}, 1),
    ("flow_heun_8", "FlowMatchHeunDiscreteScheduler", {}, 8),
    ("flow_heun_shift2_5", "FlowMatchHeunDiscreteScheduler", dict(shift=2.0), 5),
]


def part_flow():
    import diffusers
    os.makedirs(FIX, exist_ok=True)
    shape = (2, 1, 4, 4)
    mu, sd = 0.3, 0.5
    for i, (name, cls_name, over, n) in enumerate(TRAJECTORIES_FLOW):
        sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, **over)
        out = run_flow_trajectory(sched, n, shape, seed=400 + i, mu=mu, s=sd)
        # As save_pretrained writes it: `_class_name` is what makes it a flow config.
        cfg_text = json.dumps(dict(json.loads(config_json(sched)), _class_name=cls_name))
        meta = {"scheduler_class": cls_name, "scheduler_config": cfg_text,
                "num_inference_steps": str(n), "eta": "0.0",
                "model": f"analytic: the exact velocity of N({mu}, {sd}^2) data per pixel "
                         "(see flow_velocity)",
                "mu": str(mu), "s": str(sd), "made_by": "train/make_fixtures.py --part flow"}
        save_file(out, os.path.join(FIX, f"sched_{name}.safetensors"), metadata=meta)
        print(name, "final mean/std", float(out["x_final"].mean()), float(out["x_final"].std()))


def part_fashion_flow(mdir=None):
    """End-to-end: the shipped flow model, Euler 20 steps and Heun 6 steps, guidance 2,
    classes 7 and 0, as diffusers' flow pipelines run it (timestep = sigma * 1000)."""
    import diffusers
    mdir = mdir or os.path.join(ROOT, "www", "models", "fashion-flow")
    model = UNet2DModel.from_pretrained(mdir)
    model.eval()
    for cls_name, steps, fname in [("FlowMatchEulerDiscreteScheduler", 20, "fashion_flow_euler20_cfg2"),
                                   ("FlowMatchHeunDiscreteScheduler", 6, "fashion_flow_heun6_cfg2")]:
        sched = getattr(diffusers, cls_name).from_pretrained(mdir)
        out = guided_trajectory(model, sched, steps, lambda v, tt, x: (sched.step(v, tt, x).prev_sample, None))
        save_file(out, os.path.join(FIX, f"{fname}.safetensors"),
                  metadata={"model": "www/models/fashion-flow",
                            "sampler": f"{cls_name}, {steps} steps (model output: velocity, "
                                       "stored under the eps names)",
                            "num_inference_steps": str(steps),
                            "scheduler_class": cls_name,
                            "scheduler_config": json.dumps(dict(sched.config, _class_name=cls_name))})
        print(fname, "final mean/std", float(out["x_final"].mean()), float(out["x_final"].std()))


# --part analytic (issue 15): Analytic-DPM's optimal noise per step for the shipped fashion
# model's Gamma (www/models/fashion/analytic_dpm.json), from the NumPy formula in
# analytic_dpm.py on diffusers' own timesteps and alphas_cumprod: the reference
# tests/analytic_dpm.rs holds the engine's plan to.
ANALYTIC_CASES = [
    # name, sampler, steps, guidance, eta, scheduler overrides
    ("ddpm10_w2", "ddpm", 10, 2.0, 0.0, {}),
    ("ddpm25_w2", "ddpm", 25, 2.0, 0.0, {}),
    ("ddpm100_w2", "ddpm", 100, 2.0, 0.0, {}),
    ("ddpm10_w1", "ddpm", 10, 1.0, 0.0, {}),
    ("ddpm10_w4", "ddpm", 10, 4.0, 0.0, {}),
    ("ddpm10_w2_leading", "ddpm", 10, 2.0, 0.0, dict(timestep_spacing="leading")),
    ("ddim10_w2_eta0", "ddim", 10, 2.0, 0.0, {}),
    ("ddim10_w2_eta05", "ddim", 10, 2.0, 0.5, {}),
]


def part_analytic():
    import analytic_dpm
    mdir = os.path.join(ROOT, "www", "models", "fashion")
    moments = analytic_dpm.load_moments(os.path.join(mdir, "analytic_dpm.json"))
    cases = []
    for name, kind, steps, w, eta, over in ANALYTIC_CASES:
        cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
        sched = cls.from_pretrained(mdir, **over)
        sched.set_timesteps(steps)
        ts = [int(t) for t in sched.timesteps]
        acp = sched.alphas_cumprod.double()
        sig = []
        for k, t in enumerate(ts):
            a = float(acp[t])
            if kind == "ddpm":
                last = k + 1 == len(ts)
                a_prev = 1.0 if last else float(acp[ts[k + 1]])
                lam2 = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
                onto_x0 = last or t == 0
            else:
                prev = t - sched.config.num_train_timesteps // steps
                a_prev = float(acp[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
                lam2 = eta * eta * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
                onto_x0 = prev < 0
            g = analytic_dpm.gamma(moments, t, w)
            sig.append(0.0 if onto_x0 else analytic_dpm.optimal_variance(a, a_prev, lam2, g) ** 0.5)
        cases.append(dict(name=name, sampler=kind, steps=steps, guidance=w, eta=eta, overrides=over,
                          timesteps=ts, sigma=sig))
    with open(os.path.join(FIX, "analytic_dpm_fashion.json"), "w") as f:
        json.dump({"made_by": "train/make_fixtures.py --part analytic",
                   "model": "www/models/fashion (scheduler_config.json, analytic_dpm.json)",
                   "cases": cases}, f, indent=1)
        f.write("\n")
    print("analytic cases:", ", ".join(c["name"] for c in cases))


# The Gaussian end-to-end cases of tests/sampler_gaussian.rs: diffusers' own samplers driven
# by the analytic model, in float64 on many draws, give the law (mean, std) each discretised
# sampler really ends at, which the Rust test compares its exact propagated law against.
GAUSSIAN_DRAWS = 400_000
COS = dict(beta_schedule="squaredcos_cap_v2")
LIN = dict(beta_schedule="linear")
GAUSSIAN_CASES = [
    # name, scheduler class (None: Euler ancestral), config overrides, steps, eta, mu, s, guidance
    ("ddpm 1000 fixed_small", DDPMScheduler, COS, 1000, 0.0, 0.3, 0.5, None),
    ("ddpm 100 fixed_small", DDPMScheduler, COS, 100, 0.0, 0.3, 0.5, None),
    ("ddpm 100 fixed_large", DDPMScheduler, dict(variance_type="fixed_large", **COS), 100, 0.0, 0.3, 0.5, None),
    ("ddim 50 eta 0", DDIMScheduler, COS, 50, 0.0, 0.3, 0.5, None),
    ("ddim 50 eta 1", DDIMScheduler, COS, 50, 1.0, 0.3, 0.5, None),
    ("dpmpp2m 20", DPMSolverMultistepScheduler, COS, 20, 0.0, 0.3, 0.5, None),
    ("euler_a 50", None, COS, 50, 0.0, 0.3, 0.5, None),
    ("ddim 50 v_prediction trailing", DDIMScheduler,
     dict(prediction_type="v_prediction", timestep_spacing="trailing", **LIN), 50, 0.0, -0.2, 0.8, None),
    ("dpmpp2m 20 sample", DPMSolverMultistepScheduler, dict(prediction_type="sample", **LIN), 20, 0.0, -0.2, 0.8, None),
    ("euler_a 50 v_prediction", None, dict(prediction_type="v_prediction", **LIN), 50, 0.0, -0.2, 0.8, None),
    # Guidance does not change the law (the guided output is the analytic one); the Rust
    # test feeds it as a real [cond; uncond] pair with w = 3.
    ("ddpm 100 guided w=3", DDPMScheduler, LIN, 100, 0.0, -0.2, 0.8, 3.0),
    ("dpmpp2m 10 guided w=3", DPMSolverMultistepScheduler, LIN, 10, 0.0, -0.2, 0.8, 3.0),
]


def gaussian_laws():
    cases = []
    euler = _euler_cls()
    for i, (name, cls, over, n, eta, mu, sd, w) in enumerate(GAUSSIAN_CASES):
        cls = cls or euler
        sched = make_scheduler(cls, {**over, "clip_sample": False})
        sched.set_timesteps(n)
        pred = sched.config.prediction_type
        g = torch.Generator().manual_seed(500 + i)
        x = torch.randn(GAUSSIAN_DRAWS, 1, generator=g, dtype=torch.float64) * float(sched.init_noise_sigma)
        for t in sched.timesteps:
            if cls is euler:
                x_in = sched.scale_model_input(x, t)
                sigma = sched.sigmas[sched.step_index].double()
                a = 1.0 / (1.0 + sigma * sigma)
            else:
                x_in = x
                a = sched.alphas_cumprod[int(t)].double()
            al, si = torch.sqrt(a), torch.sqrt(1 - a)
            eps = si * (x_in - al * mu) / (a * sd * sd + 1 - a)
            out = {"epsilon": eps, "v_prediction": (eps - si * x_in) / al,
                   "sample": (x_in - si * eps) / al}[pred]
            if cls is DDIMScheduler:
                x = sched.step(out, t, x, eta=eta, generator=g).prev_sample
            elif cls is DPMSolverMultistepScheduler:
                x = sched.step(out, t, x).prev_sample
            else:
                x = sched.step(out, t, x, generator=g).prev_sample
        cases.append({"name": name, "scheduler_class": cls.__name__,
                      "scheduler_config": config_json(sched),
                      "steps": n, "eta": eta, "mu": mu, "s": sd, "guidance": w,
                      "mean": float(x.mean()), "std": float(x.std())})
        print(f"{name:<32} mean {float(x.mean()):+.4f} std {float(x.std()):.4f}")
    with open(os.path.join(FIX, "sched_gaussian_laws.json"), "w") as f:
        json.dump({"made_by": "train/make_fixtures.py --part euler", "draws": GAUSSIAN_DRAWS,
                   "dtype": "float64", "cases": cases}, f, indent=1)


# --part loss (issue 14): the forward panel's per-t denoising loss of one test image, as
# PyTorch computes it with diffusers' UNet2DModel: x_t = signal x0 + noise eps for one eps
# shared by every t, the model's output at t (a flow model sees s * 1000), and the mean
# squared error against eps (diffusion) or eps - x0 (flow), in float64 from float32 outputs.
LOSS_TS = [0, 1, 10, 100, 250, 500, 750, 900, 999]


def part_loss():
    import data
    x_all, y_all = data.load("fashion", "test")
    idx = 7
    x0 = torch.from_numpy(data.to_model_range(x_all[idx:idx + 1]))
    label = int(y_all[idx])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(14))
    out = {"x0": x0[0].contiguous(), "eps": eps[0].contiguous(),
           "timesteps": torch.tensor(LOSS_TS, dtype=torch.int64)}
    meta = {"made_by": "train/make_fixtures.py --part loss", "label": str(label),
            "image": f"fashion test split, index {idx}"}
    for name in ["fashion", "fashion-flow"]:
        mdir = os.path.join(ROOT, "www", "models", name)
        model = UNet2DModel.from_pretrained(mdir)
        model.eval()
        cfg = json.load(open(os.path.join(mdir, "scheduler_config.json")))
        flow = cfg.get("_class_name", "").startswith("FlowMatch")
        T = int(cfg.get("num_train_timesteps", 1000))
        if not flow:
            acp = DDPMScheduler.from_pretrained(mdir).alphas_cumprod.double()
        losses = []
        for t in LOSS_TS:
            if flow:
                shift = float(cfg.get("shift", 1.0))
                u = t / T
                s = shift * u / (1 + (shift - 1) * u)
                sig, noi, model_t = 1 - s, s, torch.tensor([float(torch.tensor(s, dtype=torch.float32)) * T])
                target = eps.double() - x0.double()
            else:
                sig, noi, model_t = float(acp[t].sqrt()), float((1 - acp[t]).sqrt()), torch.tensor([t])
                target = eps.double()
            xt = (sig * x0.double() + noi * eps.double()).float()
            with torch.no_grad():
                pred = model(xt, model_t, class_labels=torch.tensor([label])).sample
            losses.append(float(((target - pred.double()) ** 2).mean()))
        key = name.replace("-", "_")
        out[f"{key}.loss"] = torch.tensor(losses, dtype=torch.float64)
        print(name, " ".join(f"{t}:{l:.4f}" for t, l in zip(LOSS_TS, losses)))
    save_file(out, os.path.join(FIX, "loss_curve_fashion.safetensors"), metadata=meta)


def main():
    global FIX
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["small", "fashion", "euler", "clipped", "flow", "fashion-flow", "analytic", "loss", "all"],
                   default="all")
    p.add_argument("--fashion-model", default=None, help="default: www/models/fashion")
    p.add_argument("--out", default=FIX, help="default: tests/fixtures")
    a = p.parse_args()
    FIX = a.out
    os.makedirs(FIX, exist_ok=True)
    torch.set_num_threads(1)
    if a.part in ("small", "all"):
        part_small()
    if a.part in ("fashion", "all"):
        part_fashion(a.fashion_model)
    if a.part in ("euler", "all"):
        part_euler()
    if a.part in ("clipped", "all"):
        part_clipped()
    if a.part in ("flow", "all"):
        part_flow()
    if a.part in ("analytic", "all"):
        part_analytic()
    if a.part == "loss" or (a.part == "all" and os.path.isdir(os.path.join(ROOT, "www", "models", "fashion-flow"))):
        part_loss()
    if a.part == "fashion-flow" or (a.part == "all" and os.path.isdir(os.path.join(ROOT, "www", "models", "fashion-flow"))):
        part_fashion_flow()
    for fn in os.listdir(FIX):
        if fn.endswith(".safetensors"):
            os.chmod(os.path.join(FIX, fn), 0o644)


if __name__ == "__main__":
    main()
