"""Batched class-conditional sampling with classifier-free guidance, using diffusers'
own scheduler code (DDIMScheduler / DDPMScheduler .step())."""
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel


def load(model_dir):
    model = UNet2DModel.from_pretrained(model_dir).float().eval()
    return model


def make_scheduler(model_dir, kind, **overrides):
    """The model's scheduler_config.json, read by diffusers' own class; `overrides` replace
    fields of it (e.g. clip_sample=True)."""
    if kind == "ddim":
        return DDIMScheduler.from_pretrained(model_dir, **overrides)
    if kind == "ddpm":
        return DDPMScheduler.from_pretrained(model_dir, **overrides)
    raise ValueError(kind)


@torch.no_grad()
def sample(model, sched, classes, steps, guidance, generator, eta=0.0):
    """classes: int64 [B]. guidance w: eps = eps_u + w (eps_c - eps_u); w == 1 runs the
    conditional branch only. Returns images in [-1, 1], [B, C, H, W]."""
    cfg = model.config
    b = len(classes)
    null = torch.full_like(classes, cfg.num_class_embeds - 1)
    x = torch.randn(b, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    x = x * sched.init_noise_sigma
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        if guidance == 1.0:
            eps = model(x, t, class_labels=classes).sample
        else:
            e = model(torch.cat([x, x]), t, class_labels=torch.cat([classes, null])).sample
            ec, eu = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        if isinstance(sched, DDIMScheduler):
            x = sched.step(eps, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)
