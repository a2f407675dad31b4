"""PyTorch baseline for the README: the same model, the same shapes as
`cargo run --release --bin bench -- --model DIR`, on the CPU or (`--device cuda`, as
bench/gpu.sh runs it) on a GPU.

    python time_torch.py --model ../www/models/fashion [--threads 2] [--device cuda]

Prints ms per U-Net forward at batch 2 and 32 and ms per 20-step DDIM sample of 16 images
with classifier-free guidance (one U-Net batch of 32 per step), using diffusers' own
DDIMScheduler.
"""
import argparse
import time

import torch
from diffusers import DDIMScheduler, UNet2DModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    # Timings must wait for the device; on the CPU this is a no-op.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    unet = UNet2DModel.from_pretrained(a.model).eval().to(dev)
    sched = DDIMScheduler.from_pretrained(a.model)
    ncls = unet.config.num_class_embeds - 1
    c, s = unet.config.in_channels, unet.config.sample_size
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    with torch.inference_mode():
        for batch in (2, 32):
            x = torch.randn(batch, c, s, s, device=dev)
            t = torch.full((batch,), 500, device=dev)
            y = torch.arange(batch, device=dev) % ncls
            unet(x, t, class_labels=y)
            sync()
            start = time.perf_counter()
            for _ in range(a.reps):
                unet(x, t, class_labels=y)
            sync()
            ms = (time.perf_counter() - start) * 1e3 / a.reps
            print(f"unet forward, batch {batch:>2}: {ms:9.1f} ms")
        w = 2.0
        for n in (16, 1):
            y = torch.arange(n, device=dev) % ncls
            labels = torch.cat([y, torch.full((n,), ncls, device=dev)])
            x = torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(1)).to(dev)
            sync()
            start = time.perf_counter()
            sched.set_timesteps(20)
            for t in sched.timesteps:
                out = unet(torch.cat([x, x]), t, class_labels=labels).sample
                cond, uncond = out.chunk(2)
                x = sched.step(uncond + w * (cond - uncond), t, x).prev_sample
            sync()
            ms = (time.perf_counter() - start) * 1e3
            label = f"{n} image{'s' if n > 1 else ''}"
            print(f"sample: {label}, 20 DDIM steps, CFG (U-Net batch {2 * n}): {ms:.0f} ms total, {ms / 20:.1f} ms/step")


if __name__ == "__main__":
    main()
