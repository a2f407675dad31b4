"""Write a PNG grid of samples: one row per class (top to bottom in class order),
--per-class columns, DDIM --steps at guidance --guidance (flow models: flow Euler), with the
folder's scheduler_config.json and manifest.json sampling defaults.

    python sample_grid.py --model ../www/models/fashion --out ../www/models/fashion/samples.png
"""
import argparse

import numpy as np
import torch
from PIL import Image

from sampling import load, make_scheduler, sample


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = load(a.model)
    import json
    import os
    cls_name = json.load(open(os.path.join(a.model, "scheduler_config.json"))).get("_class_name", "")
    # The manifest's sampling defaults (DDIM's eps re-derived from the clipped x0_hat), as
    # the playground and the CLI apply them.
    man_path = os.path.join(a.model, "manifest.json")
    man = json.load(open(man_path)) if os.path.exists(man_path) else {}
    clipped_eps = bool(man.get("sampling", {}).get("use_clipped_model_output", False))
    sched = make_scheduler(a.model, "flow_euler" if cls_name.startswith("FlowMatch") else "ddim", clipped_eps=clipped_eps)
    ncls = model.config.num_class_embeds - 1
    classes = torch.arange(ncls).repeat_interleave(a.per_class)
    g = torch.Generator().manual_seed(a.seed)
    x = sample(model, sched, classes, a.steps, a.guidance, g, clipped_eps=clipped_eps)
    img = ((x[:, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    h = w = model.config.sample_size
    pad = 2
    grid = np.full((ncls * (h + pad) + pad, a.per_class * (w + pad) + pad), 255, np.uint8)
    for i in range(len(classes)):
        r, c = divmod(i, a.per_class)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img[i]
    im = Image.fromarray(grid, mode="L")
    if a.scale > 1:
        im = im.resize((im.width * a.scale, im.height * a.scale), Image.NEAREST)
    im.save(a.out, optimize=True)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
