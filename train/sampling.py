"""Batched class-conditional sampling with classifier-free guidance, using diffusers'
own scheduler code (DDIMScheduler / DDPMScheduler / DPMSolverMultistepScheduler /
FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler .step()); Analytic-DPM's
variance (not in diffusers) on top of DDPMScheduler's own posterior mean."""
import os

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UNet2DModel)
from diffusers.schedulers import scheduling_ddpm

import analytic_dpm


def load(model_dir):
    model = UNet2DModel.from_pretrained(model_dir).float().eval()
    return model


def make_scheduler(model_dir, kind, clipped_eps=False, **overrides):
    """The model's scheduler_config.json, read by diffusers' own class; `overrides` replace
    fields of it (e.g. clip_sample=True, timestep_spacing="trailing").

    DPMSolverMultistepScheduler has no clip_sample: the engine's DPM-Solver++ clips x0 only
    in the clipped-eps mode (`clipped_eps` with clip_sample), which here is its
    `thresholding` with sample_max_value = clip_sample_range: the threshold
    s = clamp(quantile(|x0|), 1, sample_max_value) is then always 1 * range, a plain clamp."""
    if kind == "ddim":
        return DDIMScheduler.from_pretrained(model_dir, **overrides)
    if kind == "ddpm":
        over = dict(overrides)
        analytic = over.get("variance_type") == "analytic"
        if analytic:
            over["variance_type"] = "fixed_small"
        sched = DDPMScheduler.from_pretrained(model_dir, **over)
        if analytic:
            sched.analytic_moments = analytic_dpm.load_moments(os.path.join(model_dir, "analytic_dpm.json"))
        return sched
    if kind == "flow_euler":
        return FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir, **overrides)
    if kind == "flow_heun":
        return FlowMatchHeunDiscreteScheduler.from_pretrained(model_dir, **overrides)
    if kind == "dpmpp2m":
        over = dict(overrides)
        clip = over.pop("clip_sample", None)
        rng = over.pop("clip_sample_range", 1.0)
        if clip is None:
            clip = DDPMScheduler.load_config(model_dir).get("clip_sample", True)
        if clipped_eps and clip:
            if rng != 1.0:
                raise ValueError("clipped DPM-Solver++ in diffusers needs clip_sample_range 1")
            over.update(thresholding=True, sample_max_value=1.0)
        return DPMSolverMultistepScheduler.from_pretrained(model_dir, **over)
    raise ValueError(kind)


@torch.no_grad()
def sample(model, sched, classes, steps, guidance, generator, eta=0.0, clipped_eps=False):
    """classes: int64 [B]. guidance w: eps = eps_u + w (eps_c - eps_u); w == 1 runs the
    conditional branch only. `clipped_eps`: DDIM's use_clipped_model_output (eps re-derived
    from the clipped x0; DDPM and DPM-Solver++ use x0 only, so it changes nothing there).
    Returns images in [-1, 1], [B, C, H, W]."""
    cfg = model.config
    b = len(classes)
    null = torch.full_like(classes, cfg.num_class_embeds - 1)
    x = torch.randn(b, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    # The flow schedulers have no init_noise_sigma: their pipelines draw x_T = randn.
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        if guidance == 1.0:
            eps = model(x, t, class_labels=classes).sample
        else:
            e = model(torch.cat([x, x]), t, class_labels=torch.cat([classes, null])).sample
            ec, eu = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        if isinstance(sched, DDIMScheduler):
            x = sched.step(eps, t, x, eta=eta, generator=generator,
                           use_clipped_model_output=clipped_eps).prev_sample
        elif hasattr(sched, "analytic_moments"):
            x = analytic_ddpm_step(sched, eps, t, x, guidance, generator)
        else:
            x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)


def analytic_ddpm_step(sched, eps, t, x, guidance, generator):
    """DDPMScheduler's own posterior mean (its step with the noise draw patched to zero), plus
    Analytic-DPM's optimal noise sigma* z around it (analytic_dpm.optimal_variance with
    lambda^2 = beta-tilde at Gamma_t(w) of the run's guidance). No noise on the step onto x_0
    (t = 0 or the last step), as the authors' code takes the mean there."""
    saved = scheduling_ddpm.randn_tensor
    scheduling_ddpm.randn_tensor = lambda shape, **kw: torch.zeros(shape)
    try:
        mean = sched.step(eps, t, x).prev_sample
    finally:
        scheduling_ddpm.randn_tensor = saved
    ts = [int(v) for v in sched.timesteps]
    k = ts.index(int(t))
    acp = sched.alphas_cumprod.double()
    a = float(acp[ts[k]])
    last = k + 1 == len(ts)
    a_prev = 1.0 if last else float(acp[ts[k + 1]])
    if int(t) == 0 or last:
        return mean
    tilde = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    g = analytic_dpm.gamma(sched.analytic_moments, int(t), guidance)
    var = analytic_dpm.optimal_variance(a, a_prev, tilde, g)
    z = torch.randn(x.shape, generator=generator)
    return mean + var ** 0.5 * z
