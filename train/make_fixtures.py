"""Make the diffusers reference fixtures for the Rust tests (tests/fixtures/).

    python make_fixtures.py --part small      # random small U-Net + sampler trajectories
    python make_fixtures.py --part fashion    # the shipped www/models/fashion U-Net
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


def analytic_eps(x, t, acp, mu=MU, s=S):
    """Optimal eps-predictor for N(mu, s^2) data: sigma (x - alpha mu) / (a s^2 + 1 - a)."""
    a = acp[int(t)].double()
    xd = x.double()
    return (torch.sqrt(1 - a) * (xd - torch.sqrt(a) * mu) / (a * s * s + 1 - a)).float()


def run_trajectory(sched, n_steps, shape, seed, kind, eta=0.0, mu=MU, s=S):
    sched.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    x_T = x.clone()
    acp = sched.alphas_cumprod
    rec = {k: [] for k in ["t", "x_t", "eps", "x0_pred", "z", "x_prev"]}
    captured = {}

    if kind == "dpm":
        orig_convert = sched.convert_model_output

        def conv(model_output, *a, **k):
            r = orig_convert(model_output, *a, **k)
            captured["x0"] = r.clone()
            return r
        sched.convert_model_output = conv

    for t in sched.timesteps:
        eps = analytic_eps(x, t, acp, mu, s)
        z = torch.randn(shape, generator=g)
        if kind == "ddpm":
            used = {}

            def fake_randn(shape_, generator=None, device=None, dtype=None, **kw):
                used["z"] = z.clone()
                return z.clone()
            saved = scheduling_ddpm.randn_tensor
            scheduling_ddpm.randn_tensor = fake_randn
            try:
                o = sched.step(eps, t, x)
            finally:
                scheduling_ddpm.randn_tensor = saved
            z_used = used.get("z", torch.zeros(shape))
            x0 = o.pred_original_sample
        elif kind == "ddim":
            if eta > 0:
                o = sched.step(eps, t, x, eta=eta, variance_noise=z.clone())
                z_used = z
            else:
                o = sched.step(eps, t, x, eta=0.0)
                z_used = torch.zeros(shape)
            x0 = o.pred_original_sample
        elif kind == "dpm":
            o = sched.step(eps, t, x)
            z_used = torch.zeros(shape)
            x0 = captured["x0"]
        else:
            raise ValueError(kind)
        rec["t"].append(float(t))
        rec["x_t"].append(x.clone())
        rec["eps"].append(eps.clone())
        rec["x0_pred"].append(x0.clone())
        rec["z"].append(z_used.clone())
        rec["x_prev"].append(o.prev_sample.clone())
        x = o.prev_sample
    out = {
        "timesteps": fnum(sched.timesteps.float()),
        "alphas_cumprod": fnum(sched.alphas_cumprod),
        "x_T": fnum(x_T),
        "x_final": fnum(x),
        "t": fnum(torch.tensor(rec["t"])),
    }
    for k in ["x_t", "eps", "x0_pred", "z", "x_prev"]:
        out[k] = fnum(torch.stack(rec[k]))
    if kind == "dpm":
        out["sigmas"] = fnum(sched.sigmas)
    return out


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


def part_fashion(mdir=None):
    mdir = mdir or os.path.join(ROOT, "www", "models", "fashion")
    model = UNet2DModel.from_pretrained(mdir)
    model.eval()
    cases = unet_cases(model.config.num_class_embeds, (1, 28, 28), seed=11)
    t = record_unet(model, cases, "", taps_for={2})
    save_file(t, os.path.join(FIX, "unet_fashion_io.safetensors"),
              metadata={"model": "www/models/fashion", "made_by": "train/make_fixtures.py --part fashion"})

    # End-to-end: DDIM 20 steps (eta 0), guidance 2, classes 7 (Sneaker) and 0 (T-shirt/top).
    sched = DDIMScheduler.from_pretrained(mdir)
    sched.set_timesteps(20)
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
            o = sched.step(eps, tt, x, eta=0.0)
            for k, v in [("x_t", x), ("eps_cond", ec), ("eps_uncond", eu), ("eps", eps),
                         ("x0_pred", o.pred_original_sample), ("x_prev", o.prev_sample)]:
                rec[k].append(v.clone())
            x = o.prev_sample
    out = {"timesteps": fnum(sched.timesteps.float()), "x_T": fnum(x_T), "x_final": fnum(x),
           "class": cls.to(torch.int64), "guidance_scale": fnum([w]),
           "alphas_cumprod": fnum(sched.alphas_cumprod)}
    for k, v in rec.items():
        out[k] = fnum(torch.stack(v))
    save_file(out, os.path.join(FIX, "fashion_ddim20_cfg2.safetensors"),
              metadata={"model": "www/models/fashion", "sampler": "DDIMScheduler eta 0, 20 steps",
                        "scheduler_config": json.dumps(dict(sched.config))})


def main():
    global FIX
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["small", "fashion", "all"], default="all")
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
    for fn in os.listdir(FIX):
        if fn.endswith(".safetensors"):
            os.chmod(os.path.join(FIX, fn), 0o644)


if __name__ == "__main__":
    main()
