"""DDIM 20 steps, w = 2, with scheduler_config.json's clip_sample off and on: the same seed,
weights and classes, scored by evaluate.py's classifier. The model cards quote it (fashion,
200 images: 97.5 % off, 73.0 % on).

    python clip_check.py --dataset fashion --model ../www/models/fashion --work runs/fashion2 [--n 200]
"""
import argparse

import torch

from evaluate import batched, train_classifier
from sampling import load, make_scheduler, sample


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=["fashion", "digits"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True, help="the evaluate.py folder holding classifier.pt")
    p.add_argument("--n", type=int, default=200, help="images, a multiple of 10")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    clf, _ = train_classifier(a.dataset, f"{a.work}/classifier.pt", 4 if a.dataset == "fashion" else 10)
    model = load(a.model)
    classes = torch.arange(10).repeat_interleave(a.n // 10)
    for clip in (False, True):
        g = torch.Generator().manual_seed(1000)
        x = sample(model, make_scheduler(a.model, "ddim", clip_sample=clip), classes, 20, 2.0, g)
        acc = (batched(clf, x).argmax(1) == classes).float().mean().item()
        print(f"ddim20 w2 clip_sample={clip}: accuracy {acc:.3f} on {len(classes)} images", flush=True)


if __name__ == "__main__":
    main()
