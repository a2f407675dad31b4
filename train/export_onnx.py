"""Export a shipped UNet2DModel to ONNX for the onnxruntime-web comparison (bench/ort/).

    python export_onnx.py --model ../www/models/fashion --out ../target/ort

Writes unet.onnx (inputs: sample f32 [B, C, H, W], timestep i64 [B], class_labels i64 [B];
output: eps f32 [B, C, H, W]; B is dynamic) and check.json: one batch-2 input and the
PyTorch output for it, so the browser bench can prove that onnxruntime-web computes the
same function before it is timed.
"""
import argparse
import json
import os

import torch
from diffusers import UNet2DModel


class Eps(torch.nn.Module):
    """The U-Net's forward as a plain tensor function (no output dataclass)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, class_labels):
        return self.unet(sample, timestep, class_labels=class_labels).sample


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=18)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    unet = UNet2DModel.from_pretrained(a.model).eval()
    c, s = unet.config.in_channels, unet.config.sample_size
    ncls = unet.config.num_class_embeds - 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, s, s, generator=g)
    t = torch.tensor([500, 500])
    y = torch.tensor([7 % ncls, ncls])  # one conditional, one null-class image
    model = Eps(unet).eval()
    path = os.path.join(a.out, "unet.onnx")
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model,
        (x, t, y),
        path,
        input_names=["sample", "timestep", "class_labels"],
        output_names=["eps"],
        dynamic_shapes={"sample": {0: batch}, "timestep": {0: batch}, "class_labels": {0: batch}},
        opset_version=a.opset,
        external_data=False,
    )
    with torch.inference_mode():
        eps = model(x, t, y)
    with open(os.path.join(a.out, "check.json"), "w") as f:
        json.dump(
            dict(
                shape=list(x.shape),
                sample=x.flatten().tolist(),
                timestep=t.tolist(),
                class_labels=y.tolist(),
                eps=eps.flatten().tolist(),
            ),
            f,
        )
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) and check.json")


if __name__ == "__main__":
    main()
