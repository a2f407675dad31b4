"""Evaluate a shipped model: class accuracy and a Frechet distance in the feature space of
a small classifier trained on the real training split.

    python evaluate.py --dataset fashion --model ../www/models/fashion --work runs/fashion

1. Train (or load <work>/classifier.pt) a small CNN on the real training split; report its
   accuracy on the real held-out split.
2. For each row, sample images with diffusers' DDIMScheduler / DDPMScheduler (eta 0 for
   DDIM), classes balanced (n/10 per class), CFG eps = eps_u + w (eps_c - eps_u):
       ddim20 w=2 (n=1000), ddim20 w=1, ddim20 w=4, ddim50 w=2 (n=1000), ddpm1000 w=2 (n=100),
       and ddpm1000 w=2 with clip_sample on (n=100, same seed: an ablation)
   and report (a) the classifier's accuracy against the requested class and (b) the FD between
   the classifier's penultimate (128-d) features of the generated images and of a fixed
   class-stratified reference set R of 1,000 real held-out images.
3. The floor: the same FD between a second, disjoint, class-stratified real set and R, with
   the same number of images as the row (1,000, and 100 for the DDPM row).
   fashion: R and the second set are disjoint 100-per-class subsets of the 10k test split.
   digits:  R is the 1,000 held-out images; the second set is 100 per class from the training
            split (the held-out split has only 1,000 images).
4. `--rows 'few_*'` (not in the default set): few steps at w = 2, DDIM 1-20, DPM-Solver++
   5-20, DDPM 20-100, the old defaults (leading, no clipping) against trailing + clip_sample
   + eps re-derived from the clipped x0 (model_card.py's few-step table); `--list` names
   every row, `--rows` takes names or shell patterns.
Results are appended row by row to <work>/eval.json (rows already there are skipped), so a
killed run resumes where it stopped.
"""
import argparse
import fnmatch
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from sampling import load, make_scheduler, sample

# The model cards' main rows were measured with the config shipped before issue 14 (leading
# spacing, no clipping); the overrides keep them meaning that now the config ships trailing
# spacing and clipping.
OLD = {"timestep_spacing": "leading", "clip_sample": False}
ROWS = [  # name, sampler, steps, guidance, n[, scheduler_config overrides]
    ("ddim20_w2", "ddim", 20, 2.0, 1000, OLD),
    ("ddim20_w1", "ddim", 20, 1.0, 1000, OLD),
    ("ddim20_w4", "ddim", 20, 4.0, 1000, OLD),
    ("ddim50_w2", "ddim", 50, 2.0, 1000, OLD),
    ("ddpm1000_w2", "ddpm", 1000, 2.0, 100, OLD),
    # Ablation: DDPM's first step (t = 999, beta = 0.999 under the capped cosine schedule)
    # divides by sqrt(alpha_bar_999); Improved DDPM clips x0 there. Same seed as the row above.
    ("ddpm1000_w2_clip", "ddpm", 1000, 2.0, 100, dict(OLD, clip_sample=True)),
]
# Few steps (issue 14): today's defaults (the config's leading spacing, no clipping) against
# trailing spacing + clip_sample + eps re-derived from the clipped x0 ("tce": diffusers'
# use_clipped_model_output=True in DDIM's step; DDPM's and DPM-Solver++'s updates read x0
# only, so clipping is already consistent there; DPM-Solver++ clips only in this mode, through
# diffusers' `thresholding`, see sampling.make_scheduler). Rows of one (sampler, steps) share
# a seed.
TCE = {"timestep_spacing": "trailing", "clip_sample": True, "use_clipped_model_output": True}
LEADING = OLD
for _kind, _steps in [("ddim", 1), ("ddim", 2), ("ddim", 5), ("ddim", 10), ("ddim", 20),
                      ("dpmpp2m", 5), ("dpmpp2m", 10), ("dpmpp2m", 20),
                      ("ddpm", 20), ("ddpm", 50), ("ddpm", 100)]:
    # Explicit, so that the rows mean the same whatever the shipped config says.
    ROWS.append((f"few_{_kind}{_steps}_w2_leading", _kind, _steps, 2.0, 500, LEADING))
    ROWS.append((f"few_{_kind}{_steps}_w2_tce", _kind, _steps, 2.0, 500, TCE))

# Analytic-DPM (issue 15): DDPM at 10-100 steps, w = 2, with the shipped sampling defaults
# (trailing spacing, clip_sample), the two fixed variances against Analytic-DPM's optimal one
# (sampling.analytic_ddpm_step; needs the model's analytic_dpm.json). Rows of one step count
# share a seed. n = 500 at 10 and 25 steps, 200 at 50 and 100 (CPU time).
for _steps, _n in [(10, 500), (25, 500), (50, 200), (100, 200)]:
    for _var in ["fixed_small", "fixed_large", "analytic"]:
        ROWS.append((f"adpm_ddpm{_steps}_w2_{_var}", "ddpm", _steps, 2.0, _n,
                     {"timestep_spacing": "trailing", "clip_sample": True, "variance_type": _var}))
# Flow matching (issue 15): a model trained with the flow objective on the same network,
# sampled with diffusers' FlowMatchEuler / FlowMatchHeun schedulers (Heun N steps = 2N - 1
# model evaluations: 3 / 5 / 10 steps cost 5 / 9 / 19, next to Euler's 5 / 10 / 20).
for _kind, _steps in [("flow_euler", 5), ("flow_euler", 10), ("flow_euler", 20),
                      ("flow_heun", 3), ("flow_heun", 5), ("flow_heun", 10)]:
    ROWS.append((f"{_kind}{_steps}_w2", _kind, _steps, 2.0, 500))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 7 * 7, 128)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(128, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.out(self.drop(self.features(x)))


def batched(fn, x, bs=500):
    with torch.no_grad():
        return torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)])


def train_classifier(dataset, path, epochs):
    xtr, ytr = data.load(dataset, "train")
    xte, yte = data.load(dataset, "test")
    xtr = torch.from_numpy(data.to_model_range(xtr))
    ytr = torch.from_numpy(ytr)
    xte = torch.from_numpy(data.to_model_range(xte))
    yte = torch.from_numpy(yte)
    clf = Classifier()
    if os.path.exists(path):
        st = torch.load(path, map_location="cpu")
        clf.load_state_dict(st["model"])
        clf.eval()
        return clf, st["test_acc"]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    n = len(ytr)
    steps = epochs * (n // 128)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    clf.train()
    k = 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - 127, 128):
            idx = perm[i:i + 128]
            xb = xtr[idx]
            # light augmentation: random shifts by up to 2 pixels
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dy, dx), (2, 3))
            loss = F.cross_entropy(clf(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sch.step()
            k += 1
        clf.eval()
        acc = (batched(clf, xte).argmax(1) == yte).float().mean().item()
        clf.train()
        print(f"classifier epoch {ep + 1}/{epochs} loss {loss.item():.3f} test acc {acc:.4f}",
              flush=True)
    clf.eval()
    torch.save(dict(model=clf.state_dict(), test_acc=acc), path)
    return clf, acc


def frechet(f1, f2):
    f1 = f1.astype(np.float64)
    f2 = f2.astype(np.float64)
    m1, m2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False)
    s2 = np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def stratified(y, per_class, rng, exclude=None):
    out = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if exclude is not None:
            idx = np.setdiff1d(idx, exclude)
        out.append(rng.choice(idx, per_class, replace=False))
    return np.concatenate(out)


def real_sets(dataset):
    rng = np.random.default_rng(1)
    xte, yte = data.load(dataset, "test")
    if dataset == "fashion":
        ref = stratified(yte, 100, rng)
        alt = stratified(yte, 100, rng, exclude=ref)
        x_alt, y_alt = xte[alt], yte[alt]
    else:
        ref = np.arange(len(yte))
        xtr, ytr = data.load(dataset, "train")
        alt = stratified(ytr, 100, rng)
        x_alt, y_alt = xtr[alt], ytr[alt]
    x_ref = torch.from_numpy(data.to_model_range(xte[ref]))
    x_alt = torch.from_numpy(data.to_model_range(x_alt))
    # the 100-image version of the alternative set: 10 per class
    alt100 = np.concatenate([np.flatnonzero(y_alt == c)[:10] for c in range(10)])
    return x_ref, x_alt, x_alt[torch.from_numpy(alt100)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=["fashion", "digits"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True, help="folder for classifier.pt and eval.json")
    p.add_argument("--rows", default=",".join(r[0] for r in ROWS
                                              if not r[0].startswith(("few_", "adpm_", "flow_"))),
                   help="comma-separated row names or shell patterns (few_ddim*_tce); "
                        "default: the model card's rows")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    p.add_argument("--n-scale", type=float, default=1.0, help="scale n of every row (smoke tests)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--clf-epochs", type=int, default=0, help="0: 4 for fashion, 10 for digits")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.list:
        print("\n".join(r[0] for r in ROWS))
        return
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    res_path = os.path.join(a.work, "eval.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else {}

    epochs = a.clf_epochs or (4 if a.dataset == "fashion" else 10)
    t0 = time.time()
    clf, clf_acc = train_classifier(a.dataset, os.path.join(a.work, "classifier.pt"), epochs)
    x_ref, x_alt, x_alt100 = real_sets(a.dataset)
    f_ref = batched(clf.features, x_ref).numpy()
    res["classifier"] = dict(test_acc=clf_acc, epochs=epochs, seconds=round(time.time() - t0, 1))
    res["floor_1000"] = frechet(batched(clf.features, x_alt).numpy(), f_ref)
    res["floor_100"] = frechet(batched(clf.features, x_alt100).numpy(), f_ref)
    json.dump(res, open(res_path, "w"), indent=1)
    print(json.dumps({k: res[k] for k in ["classifier", "floor_1000", "floor_100"]}), flush=True)

    model = load(a.model)
    wanted = a.rows.split(",")
    unknown = [w for w in wanted if not any(fnmatch.fnmatchcase(r[0], w) for r in ROWS)]
    if unknown:
        raise SystemExit(f"--rows: no row matches {', '.join(unknown)} (see --list)")
    for name, kind, steps, w, n, *over in ROWS:
        if not any(fnmatch.fnmatchcase(name, pat) for pat in wanted):
            continue
        overrides = dict(over[0]) if over else {}
        clipped_eps = overrides.pop("use_clipped_model_output", False)
        # Rows that differ only in overrides share a seed, so they compare image by image.
        ri = next(i for i, r in enumerate(ROWS) if tuple(r[1:5]) == (kind, steps, w, n))
        n = max(10, int(round(n * a.n_scale / 10)) * 10)
        if name in res.get("rows", {}) and res["rows"][name]["n"] == n:
            print("skip", name, flush=True)
            continue
        t1 = time.time()
        sched = make_scheduler(a.model, kind, clipped_eps=clipped_eps, **overrides)
        g = torch.Generator().manual_seed(1000 + ri)
        classes = torch.arange(10).repeat_interleave(n // 10)
        imgs = []
        for i in range(0, n, a.batch):
            imgs.append(sample(model, sched, classes[i:i + a.batch], steps, w, g,
                               clipped_eps=clipped_eps))
            print(f"{name}: {min(n, i + a.batch)}/{n} images, {time.time() - t1:.0f}s", flush=True)
        x = torch.cat(imgs)
        logits = batched(clf, x)
        pred = logits.argmax(1)
        acc = (pred == classes).float().mean().item()
        per_class = [(pred[classes == c] == c).float().mean().item() for c in range(10)]
        fd = frechet(batched(clf.features, x).numpy(), f_ref)
        if clipped_eps:
            overrides["use_clipped_model_output"] = True
        row = dict(sampler=kind, steps=steps, guidance=w, n=n, overrides=overrides, acc=acc, fd=fd,
                   floor=res["floor_1000"] if n >= 1000 else res["floor_100"] if n == 100 else None,
                   per_class_acc=per_class, seconds=round(time.time() - t1, 1),
                   threads=a.threads)
        res.setdefault("rows", {})[name] = row
        json.dump(res, open(res_path, "w"), indent=1)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class_acc"}), flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
