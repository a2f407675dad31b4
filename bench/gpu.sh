#!/usr/bin/env bash
# The real-GPU benchmark, ready to run on a machine with a GPU (Vulkan, Metal or DX12 driver
# for native wgpu; PyTorch with CUDA optional). One command, one JSON file:
#
#   bench/gpu.sh [OUT.json]        (default target/gpu-bench.json)
#
# It records the adapter wgpu picked, every conv kernel variant's GFLOP/s at batch 2 and 32
# (`bench --all-variants`), the shipped fashion model's U-Net forward at batch 2 and 32 and
# its guided 20-step DDIM runs of 1 and 16 images through native wgpu (`bench --model`), the
# per-dispatch plan (`bench --plan-stats`), and, where `python3` imports torch with CUDA and
# diffusers, the same model on that GPU through diffusers (train/time_torch.py --device
# cuda). The GPU's fp32 peak is not computed: nvidia-smi's name and clocks are recorded so
# the README can put the figures next to the datasheet's peak.
# Not part of ./build.sh test; nothing else depends on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu-bench.json}
mkdir -p "$(dirname "$out")" target/gpu-bench
log=target/gpu-bench
cargo build --release --bin bench
./target/release/bench --all-variants | tee "$log/kernels.txt"
./target/release/bench --model www/models/fashion | tee "$log/model.txt"
# The other choices per adapter too, each against this adapter's defaults: they were made on
# software adapters only (Gpu::fused_attention, weight_textures, channel_blocks,
# attention_pairs).
./target/release/bench --model www/models/fashion --no-sample --fused-attention off | tee "$log/model_unfused.txt"
./target/release/bench --model www/models/fashion --no-sample --fused-attention on | tee "$log/model_fused.txt"
./target/release/bench --model www/models/fashion --no-sample --weight-textures off | tee "$log/model_buffer_weights.txt"
./target/release/bench --model www/models/fashion --no-sample --channel-blocks 2 | tee "$log/model_two_blocks.txt"
./target/release/bench --model www/models/fashion --no-sample --fused-attention off --attention-pairs on | tee "$log/model_attention_pairs.txt"
./target/release/bench --model www/models/fashion --plan-stats > "$log/plan.md"
: > "$log/torch.txt"
if python3 -c 'import sys, torch, diffusers; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 train/time_torch.py --model www/models/fashion --device cuda | tee "$log/torch.txt"
else
    echo "no PyTorch with CUDA here: diffusers baseline skipped" | tee "$log/torch.txt"
fi
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader > "$log/smi.txt" 2>/dev/null || : > "$log/smi.txt"
python3 - "$log" "$out" <<'PY'
import json, re, sys
log, out = sys.argv[1], sys.argv[2]
read = lambda f: open(f"{log}/{f}").read()
kernels = read("kernels.txt")
model = read("model.txt")
def runs(text):
    forward = {m[0]: float(m[1]) for m in re.findall(r"unet forward, batch\s+(\d+):\s+([\d.]+) ms", text)}
    sample = {m[0]: {"ms_total": float(m[1]), "ms_per_step": float(m[2])}
              for m in re.findall(r"sample: (\d+) images?.*?: ([\d.]+) ms total, ([\d.]+) ms/step", text)}
    return {"forward_ms": forward, "guided_20_steps": sample}
result = {
    "adapter": (re.search(r"adapter: (.*)", kernels) or [None, None])[1],
    "nvidia_smi": read("smi.txt").strip() or None,
    "kernels": [
        {"kernel": m[0].strip(), "batch": int(m[1]), "ms": float(m[2]), "gflops": float(m[3])}
        for m in re.findall(r"^(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", kernels, re.M)
    ],
    "engine": runs(model),
    "engine_attention_unfused": runs(read("model_unfused.txt")),
    "engine_attention_fused": runs(read("model_fused.txt")),
    "engine_buffer_weights": runs(read("model_buffer_weights.txt")),
    "engine_two_channel_blocks": runs(read("model_two_blocks.txt")),
    "engine_attention_unfused_pairs": runs(read("model_attention_pairs.txt")),
    "diffusers": runs(read("torch.txt")),
    "plan": read("plan.md"),
}
json.dump(result, open(out, "w"), indent=2)
print(f"wrote {out}")
PY
