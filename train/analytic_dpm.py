"""Monte Carlo estimate of Analytic-DPM's per-timestep moments (Bao et al. 2022) for a
shipped model, written next to the weights as analytic_dpm.json.

    python analytic_dpm.py --dataset fashion --model ../www/models/fashion --samples 50

Analytic-DPM's optimal reverse variance needs, for every training timestep t,
    Gamma_t = E_{x_0, eps} ||eps_theta(x_t, t)||^2 / d,   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
This model is class-conditional and sampled with classifier-free guidance,
eps_w = eps_u + w (eps_c - eps_u), so Gamma depends on w. Its square norm is a quadratic in w,
    ||eps_w||^2 = (1 - w)^2 ||eps_u||^2 + 2 w (1 - w) <eps_u, eps_c> + w^2 ||eps_c||^2,
so three moments per t give Gamma_t(w) exactly for every guidance: we store
    cc = E ||eps_c||^2 / d,  uu = E ||eps_u||^2 / d,  uc = E <eps_u, eps_c> / d
and the standard error of Gamma_t at w = 0, 1 and 2 (from the per-sample values).

Sampling: for each t in 0..T-1, `--samples` training images drawn at random (with their
labels; a fresh draw per t), a fresh eps each, one conditional and one unconditional pass.
Deterministic for a given --seed. Runs on the CPU in about (T * samples * 2) forwards.
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch
from diffusers import DDPMScheduler

import data


def load_moments(path):
    with open(path) as f:
        d = json.load(f)
    return np.array(d["cc"]), np.array(d["uu"]), np.array(d["uc"])


def gamma(moments, t, w):
    """Gamma_t(w) = E||eps_w||^2 / d from the stored moments, clipped to [0, 1]."""
    cc, uu, uc = moments
    g = (1 - w) ** 2 * uu[t] + 2 * w * (1 - w) * uc[t] + w * w * cc[t]
    return float(np.clip(g, 0.0, 1.0))


def optimal_variance(a, a_prev, lambda2, g):
    """Bao et al. 2022, Theorem 1 with alpha_n = abar_n / abar_m over a sub-sequence:
        sigma*^2 = lambda^2 + (sqrt(bbar_n / alpha_n) - sqrt(bbar_m - lambda^2))^2 (1 - Gamma_n),
    clipped to Theorem 2's bounds for data in [-1, 1]:
        lambda^2 <= sigma*^2 <= lambda^2 + (sqrt(abar_m) - sqrt(bbar_m - lambda^2) sqrt(abar_n / bbar_n))^2.
    (The value at Gamma = 0 is the other upper bound; Gamma is clipped to [0, 1] already.)
    The NumPy reference the Rust test (tests/analytic_dpm.rs) checks the engine against."""
    a, a_prev, lambda2 = float(a), float(a_prev), float(lambda2)
    bbar, bbar_prev = 1.0 - a, 1.0 - a_prev
    alpha = a / a_prev
    rest = np.sqrt(max(bbar_prev - lambda2, 0.0))
    gap = (np.sqrt(bbar / alpha) - rest) ** 2
    v = lambda2 + gap * (1.0 - g)
    upper = min(lambda2 + gap, lambda2 + (np.sqrt(a_prev) - rest * np.sqrt(a / bbar)) ** 2)
    return float(np.clip(v, lambda2, max(upper, lambda2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=["fashion", "digits"])
    ap.add_argument("--model", required=True, help="model folder (config.json, weights, scheduler)")
    ap.add_argument("--samples", type=int, default=50, help="images per timestep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <model>/analytic_dpm.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from sampling import load  # here: sampling imports this module's formulas
    model = load(a.model)
    sched = DDPMScheduler.from_pretrained(a.model)
    abar = sched.alphas_cumprod.double()
    T = len(abar)
    null = model.config.num_class_embeds - 1
    images, labels = data.load(a.dataset, "train")
    x_all = torch.from_numpy(data.to_model_range(images)).float()
    if x_all.dim() == 3:
        x_all = x_all[:, None]
    y_all = torch.from_numpy(labels).long()
    d = x_all[0].numel()
    gen = torch.Generator().manual_seed(a.seed)

    cc = np.zeros(T)
    uu = np.zeros(T)
    uc = np.zeros(T)
    se = np.zeros((T, 3))
    m = a.samples
    started = time.time()
    with torch.no_grad():
        for t in range(T):
            idx = torch.randint(len(x_all), (m,), generator=gen)
            x0, y = x_all[idx], y_all[idx]
            eps = torch.randn(x0.shape, generator=gen)
            xt = (abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps).float()
            out = model(torch.cat([xt, xt]), torch.full((2 * m,), t), class_labels=torch.cat(
                [y, torch.full_like(y, null)])).sample.double()
            ec, eu = out[:m].flatten(1), out[m:].flatten(1)
            s_cc = (ec * ec).sum(1) / d
            s_uu = (eu * eu).sum(1) / d
            s_uc = (eu * ec).sum(1) / d
            cc[t], uu[t], uc[t] = s_cc.mean().item(), s_uu.mean().item(), s_uc.mean().item()
            for j, w in enumerate((0.0, 1.0, 2.0)):
                g = (1 - w) ** 2 * s_uu + 2 * w * (1 - w) * s_uc + w * w * s_cc
                se[t, j] = (g.std(unbiased=True) / np.sqrt(m)).item()
            if t % 100 == 0 or t == T - 1:
                print(f"t={t:4d} cc={cc[t]:.4f} uu={uu[t]:.4f} uc={uc[t]:.4f} "
                      f"({time.time() - started:.0f} s)", flush=True)

    out = {
        "method": "Analytic-DPM (Bao et al. 2022): Gamma_t(w) = E||eps_w(x_t, t)||^2 / d by Monte Carlo "
                  "over the training split; Gamma_t(w) = (1-w)^2 uu + 2 w (1-w) uc + w^2 cc",
        "dataset": a.dataset,
        "split": "train",
        "samples_per_timestep": m,
        "seed": a.seed,
        "num_train_timesteps": T,
        "weights_sha256": hashlib.sha256(
            open(os.path.join(a.model, "diffusion_pytorch_model.safetensors"), "rb").read()).hexdigest(),
        "cc": [round(v, 7) for v in cc],
        "uu": [round(v, 7) for v in uu],
        "uc": [round(v, 7) for v in uc],
        "stderr_w0_w1_w2": [[round(v, 7) for v in row] for row in se],
        "max_stderr_w1": float(se[:, 1].max()),
    }
    path = a.out or os.path.join(a.model, "analytic_dpm.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}: max stderr of Gamma(w=1) {se[:, 1].max():.4g}, of Gamma(w=2) {se[:, 2].max():.4g}")


if __name__ == "__main__":
    main()
