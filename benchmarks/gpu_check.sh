#!/usr/bin/env bash
# First-GPU check of the paper pretraining run, unattended, < 10 min on one GPU:
#   2 optimizer steps of training/configs/pretrain_vit_large_paper.yaml (ViT-L/16 MAE, 224 px) with bf16 on one GPU,
#   a checkpoint at each, a resume that continues from the newest one for a 3rd step, then img/s per GPU (from the
#   last step, after compilation) and MFU from the measured FLOPs of a train step (torch.utils.flop_counter).
#
#   bash benchmarks/gpu_check.sh                  # defaults: batch 64, torch.compile as the paper config
#   BATCH=32 COMPILE=false bash benchmarks/gpu_check.sh
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh   # dense bf16 peak of the GPU, when the name is not in the table
#
# Data: 128 synthetic 3-band 11-bit 256 px chips packed by training.pack into a temp folder (KEEP=1 keeps it).
# Exit status: 0 all checks passed; 1 a check failed; 2 no CUDA device (nothing checked).
# CPU_DRY_RUN=1 runs the same plumbing on the CPU with the tiny demo model (fp32, 64 px): a check of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python
BATCH=${BATCH:-64}
COMPILE=${COMPILE:-true}
WORKERS=${WORKERS:-8}
CONFIG=training/configs/pretrain_vit_large_paper.yaml
EXTRA=(run.precision=bf16)
if [[ ${CPU_DRY_RUN:-0} == 1 ]]; then
    CONFIG=training/configs/pretrain_demo.yaml BATCH=8 COMPILE=false WORKERS=1
    EXTRA=(run.precision=fp32 run.device=cpu data.img_size=64)
elif ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False): nothing checked." >&2
    echo "gpu_check: run it on a GPU machine; the CPU paths are covered by pytest tests/test_pretrain.py." >&2
    exit 2
fi

WORK=$(mktemp -d -t arctic-gpu-check-XXXXXX)
[[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
echo "gpu_check: work folder $WORK"
"$PYTHON" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import torch

sys.path.insert(0, ".")
from benchmarks.bench_pretrain import synthetic_shards

if torch.cuda.is_available():
    print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
          "| bf16 (no emulation):", torch.cuda.is_bf16_supported(including_emulation=False), flush=True)
synthetic_shards(Path(sys.argv[1]), count=128, size=256)
EOF

COMMON=(--config "$CONFIG" "data.shards=$WORK/shards" "data.batch_size=$BATCH" "optim.effective_batch=$BATCH"
        "data.num_workers=$WORKERS" "run.out_dir=$WORK/run" "run.compile=$COMPILE" run.ckpt_every_steps=1
        run.log_every=1 run.vis_every=0 run.progress=false "${EXTRA[@]}")
# steps 1-3 in one process (step 3 is timed: compiled and warm), then a new process resumes for step 4
timeout 420 "$PYTHON" -m training.pretrain "${COMMON[@]}" run.max_steps=3 2>&1 | tee "$WORK/first.log"
timeout 300 "$PYTHON" -m training.pretrain "${COMMON[@]}" run.max_steps=4 2>&1 | tee "$WORK/resume.log"

"$PYTHON" - "$WORK" "$BATCH" "$CONFIG" <<'EOF'
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, ".")
from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import load_config
from training.mae import build_mae

work, batch, config = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cuda = torch.cuda.is_available() and not os.environ.get("CPU_DRY_RUN") == "1"
device = torch.device("cuda" if cuda else "cpu")
failures = []
if "resumed from" not in (work / "resume.log").read_text():
    failures.append("the second run did not resume from a checkpoint")
steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(work / "run" / "checkpoints")]
if steps[-1:] != [4]:
    failures.append(f"checkpoints {steps}: expected the newest at step 4")
state = load_checkpoint(work / "run" / "checkpoints" / "checkpoint-00000004.pt")
if not all(torch.isfinite(t).all() for t in state["model"].values()):
    failures.append("non-finite weights after 4 steps")
if cuda and "cuda" not in state["rng"][0]:
    failures.append("checkpoint holds no CUDA RNG state of the device in use")
metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
metrics = [m for m in metrics if "loss" in m]
if [m["step"] for m in metrics] != [1, 2, 3, 4]:
    failures.append(f"logged steps {[m['step'] for m in metrics]}, expected [1, 2, 3, 4]")
img_s = next(m["img_per_s"] for m in metrics if m["step"] == 3)  # compiled and warm, in the first process

cfg = load_config(config)
size = int(cfg["data"]["img_size"]) if not cuda else 224
model = build_mae(cfg["model"], ("red", "green", "blue"), size).to(device)
images = torch.randn(2, 3, size, size, device=device)
with FlopCounterMode(display=False) as counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
    loss, _, _ = model(images)
    loss.backward()
flops_per_img = counter.get_total_flops() / 2
peaks = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "L4": 121}  # dense bf16 TFLOP/s
name = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
peak = float(os.environ.get("PEAK_TFLOPS") or next((v for k, v in peaks.items() if k in name), 0))
result = {"device": name, "batch_per_gpu": batch, "img_per_s_per_gpu": round(img_s, 1),
          "train_tflop_per_img": round(flops_per_img / 1e12, 4),
          "achieved_tflops": round(img_s * flops_per_img / 1e12, 2),
          "mfu_bf16": round(img_s * flops_per_img / 1e12 / peak, 3) if peak else None,
          "peak_tflops_bf16_assumed": peak or None, "losses": [round(m["loss"], 4) for m in metrics],
          "failures": failures}
print(json.dumps(result))
sys.exit(1 if failures else 0)
EOF
