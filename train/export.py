"""Export the EMA weights of a training run in diffusers' save_pretrained layout.

    python export.py --run runs/fashion --dataset fashion --out ../www/models/fashion

Writes config.json, diffusion_pytorch_model.safetensors (f32), scheduler_config.json
(DDPMScheduler with the training schedule; DDIMScheduler / DPMSolverMultistepScheduler
.from_pretrained() read the same file) and manifest.json (class names, size and sha256 of every file in the folder).
`--manifest-only` just refreshes manifest.json (run it after adding the grid PNG and the
model card). Training logs stay in the run folder; model_card.py summarises them.
"""
import argparse
import hashlib
import json
import os

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

import data
from model import FLOW_SCHEDULE, NULL_CLASS, NUM_CLASSES, SAMPLING, SHIPPED_SCHEDULER, make_unet


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_flow_folder(out):
    p = os.path.join(out, "scheduler_config.json")
    return os.path.exists(p) and json.load(open(p)).get("_class_name", "").startswith("FlowMatch")


def write_manifest(out, dataset):
    files = []
    for name in sorted(os.listdir(out)):
        p = os.path.join(out, name)
        if name == "manifest.json" or not os.path.isfile(p):
            continue
        files.append(dict(name=name, bytes=os.path.getsize(p), sha256=sha256(p)))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    man = dict(
        name=os.path.basename(os.path.normpath(out)),
        dataset=dataset,
        class_names=data.CLASS_NAMES[dataset],
        null_class=cfg["num_class_embeds"] - 1,
        sample_size=cfg["sample_size"],
        in_channels=cfg["in_channels"],
        value_range=[-1.0, 1.0],
        weights="diffusion_pytorch_model.safetensors",
        # What scheduler_config.json cannot say (the engine's SchedulerConfig reads it); a
        # flow model's scheduler has no clipping to qualify.
        sampling={} if is_flow_folder(out) else SAMPLING,
        files=files,
    )
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
        f.write("\n")
    return man


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--dataset", choices=["fashion", "digits"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--manifest-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if not a.manifest_only:
        st = torch.load(os.path.join(a.run, "ckpt.pt"), map_location="cpu", weights_only=False)
        model = make_unet(NUM_CLASSES)
        model.load_state_dict(st["ema"])
        model = model.float().eval()
        os.makedirs(a.out, exist_ok=True)
        model.save_pretrained(a.out, safe_serialization=True)
        if (st.get("args") or {}).get("objective") == "flow":
            FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULE).save_pretrained(a.out)
        else:
            DDPMScheduler(**SHIPPED_SCHEDULER).save_pretrained(a.out)
        info = dict(step=st["step"], train_seconds=st.get("train_seconds"), args=st.get("args"),
                    null_class=NULL_CLASS)
        with open(os.path.join(a.run, "export_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        print("exported EMA weights of step", st["step"], "to", a.out)
    for name in os.listdir(a.out):
        os.chmod(os.path.join(a.out, name), 0o644)
    man = write_manifest(a.out, a.dataset)
    print(json.dumps(man["files"], indent=1))


if __name__ == "__main__":
    main()
