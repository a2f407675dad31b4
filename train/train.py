"""Train a class-conditional UNet2DModel (CFG by label dropout, EMA) with one of two
objectives on the same network:

- `--objective eps` (default): DDPM epsilon prediction on the cosine schedule;
- `--objective flow`: flow matching / rectified flow as diffusers'
  FlowMatchEulerDiscreteScheduler samples it: x_s = (1 - s) x_0 + s eps for s ~ U(0, 1),
  the network sees the timestep s * 1000 (a float; diffusers' flow pipelines pass
  sigma * num_train_timesteps) and regresses the velocity eps - x_0.

    nice -n 10 python train.py --dataset fashion --steps 4000 --out runs/fashion

Resumes automatically from <out>/ckpt.pt. Logs one JSON line per --log-every steps
to stdout and <out>/log.jsonl.
"""
import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file

import data
from model import FLOW_SCHEDULE, NULL_CLASS, NUM_CLASSES, SCHEDULE, make_unet


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=["fashion", "digits"], required=True)
    p.add_argument("--objective", choices=["eps", "flow"], default="eps")
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--min-lr-frac", type=float, default=0.1,
                   help="cosine decay of the lr to this fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1, help="label dropout rate")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None,
                   help="start a new run from an exported model folder (its EMA weights "
                        "initialise both the model and the EMA; the optimiser starts fresh)")
    p.add_argument("--prior-steps", type=int, default=0,
                   help="optimiser steps already in the --init-from weights (for the card)")
    p.add_argument("--prior-minutes", type=float, default=0,
                   help="training minutes already in the --init-from weights (for the card)")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop (and checkpoint) after this much training time; 0 = no limit")
    return p.parse_args()


def lr_at(step, a, train_seconds=0.0):
    """Linear warm-up, then cosine decay. With --max-minutes the decay follows whichever
    budget (steps or time) runs out first, so a run cut short by time still ends at the
    low learning rate the EMA weights are meant to average."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    prog = (step - a.warmup) / max(1, a.steps - a.warmup)
    if a.max_minutes > 0:
        prog = max(prog, train_seconds / (60 * a.max_minutes))
    frac = a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    return a.lr * frac


def init_from(folder, model, ema):
    """Continue training an exported model (e.g. a shipped one on a new machine, where the
    run folder with its checkpoint is gone). Pass its history as --prior-steps /
    --prior-minutes so the model card can report totals."""
    sd = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    model.load_state_dict(sd)
    ema.load_state_dict(sd)
    print(f"initialised from {folder}", flush=True)


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    ckpt_path = os.path.join(a.out, "ckpt.pt")
    log_path = os.path.join(a.out, "log.jsonl")

    x_np, y_np = data.load(a.dataset, "train")
    x_all = torch.from_numpy(data.to_model_range(x_np))
    y_all = torch.from_numpy(y_np)
    n = len(y_all)

    model = make_unet(NUM_CLASSES)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = DDPMScheduler(**SCHEDULE)
    acp = sched.alphas_cumprod.float()

    step = 0
    train_seconds = 0.0
    g = torch.Generator().manual_seed(a.seed)
    if os.path.exists(ckpt_path):
        st = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        train_seconds = st.get("train_seconds", 0.0)
        g.set_state(st["gen"])
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    else:
        if a.init_from:
            init_from(a.init_from, model, ema)
        with open(os.path.join(a.out, "args.json"), "w") as f:
            json.dump(vars(a), f, indent=1)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"dataset={a.dataset} n_train={n} params={nparams} steps={a.steps} batch={a.batch}",
          flush=True)

    model.train()
    perm = torch.randperm(n, generator=g)
    pos = 0
    run_loss, run_n, t_log = 0.0, 0, time.time()
    while step < a.steps:
        t0 = time.time()
        if pos + a.batch > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        x0 = x_all[idx]
        y = y_all[idx].clone()
        drop = torch.rand(len(y), generator=g) < a.p_uncond
        y[drop] = NULL_CLASS
        if a.objective == "flow":
            # s in (0, 1]: the sampler's grid runs from sigma = 1 down to 1 / 1000, never 0.
            s = 1.0 - torch.rand(len(y), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            sv = s.view(-1, 1, 1, 1)
            xt = (1 - sv) * x0 + sv * eps
            t = s * FLOW_SCHEDULE["num_train_timesteps"]
            target = eps - x0
        else:
            t = torch.randint(0, SCHEDULE["num_train_timesteps"], (len(y),), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            ab = acp[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            target = eps

        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a, train_seconds)
        pred = model(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        train_seconds += time.time() - t0
        run_loss += loss.item()
        run_n += 1

        if step % a.log_every == 0 or step == a.steps:
            now = time.time()
            rec = dict(step=step, loss=run_loss / run_n, lr=lr_at(step - 1, a, train_seconds),
                       s_per_step=(now - t_log) / run_n, train_seconds=round(train_seconds, 1))
            print(json.dumps(rec), flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            run_loss, run_n, t_log = 0.0, 0, now
        out_of_time = a.max_minutes > 0 and train_seconds > 60 * a.max_minutes
        if step % a.ckpt_every == 0 or step == a.steps or out_of_time:
            save_ckpt(ckpt_path, dict(model=model.state_dict(), ema=ema.state_dict(),
                                      opt=opt.state_dict(), step=step, gen=g.get_state(),
                                      train_seconds=train_seconds, args=vars(a)))
        if out_of_time:
            print(f"time budget reached at step {step}", flush=True)
            break
    print("done", flush=True)


if __name__ == "__main__":
    main()
