"""PyTorch-on-CPU baseline for the README: the same model, the same shapes as
`cargo run --release --bin bench -- --model DIR`.

    python time_torch.py --model ../www/models/fashion [--threads 2]

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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    unet = UNet2DModel.from_pretrained(a.model).eval()
    sched = DDIMScheduler.from_pretrained(a.model)
    ncls = unet.config.num_class_embeds - 1
    c, s = unet.config.in_channels, unet.config.sample_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.inference_mode():
        for batch in (2, 32):
            x = torch.randn(batch, c, s, s)
            t = torch.full((batch,), 500)
            y = torch.arange(batch) % ncls
            unet(x, t, class_labels=y)
            start = time.perf_counter()
            for _ in range(a.reps):
                unet(x, t, class_labels=y)
            ms = (time.perf_counter() - start) * 1e3 / a.reps
            print(f"unet forward, batch {batch:>2}: {ms:9.1f} ms")
        n, w = 16, 2.0
        y = torch.arange(n) % ncls
        labels = torch.cat([y, torch.full((n,), ncls)])
        x = torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(1))
        start = time.perf_counter()
        sched.set_timesteps(20)
        for t in sched.timesteps:
            out = unet(torch.cat([x, x]), t, class_labels=labels).sample
            cond, uncond = out.chunk(2)
            x = sched.step(uncond + w * (cond - uncond), t, x).prev_sample
        ms = (time.perf_counter() - start) * 1e3
        print(f"sample: 16 images, 20 DDIM steps, CFG (U-Net batch 32): {ms:.0f} ms total, {ms / 20:.0f} ms/step")


if __name__ == "__main__":
    main()
