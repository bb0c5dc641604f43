"""Encoder forward throughput: arctic_mae_vit_large vs stock timm vit_large_patch16_224, same process, CPU.

Runs alternate (ours, stock, ours, stock, ...) so that machine noise hits both alike; the ratio of median
throughputs is what counts (>= 0.98: registering the family through timm costs nothing at run time).

    python benchmarks/bench_encoder.py                 # ViT-L, batch 8, 224 px
    python benchmarks/bench_encoder.py --model tiny    # quick check

The last line is one JSON object: {"ratio": ..., "ours_img_per_s": ..., "stock_img_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch

import arctic_vit  # noqa: F401  (registers the arctic family)

SIZES = {"large": "vit_large_patch16_224", "base": "vit_base_patch16_224", "small": "vit_small_patch16_224",
         "tiny": "vit_tiny_patch16_224"}


def throughput(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Images per second over ``iters`` forward passes."""
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    return x.shape[0] * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES), default="large")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    parser.add_argument("--iters", type=int, default=2, help="forward passes per round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = timm.create_model(f"arctic_mae_vit_{args.model}_patch16_224").eval()
    stock = timm.create_model(SIZES[args.model], num_classes=0, in_chans=4).eval()
    stock.load_state_dict(ours.state_dict())  # identical weights and compute: only the registration path differs
    x = torch.randn(args.batch, 4, 224, 224)

    results: dict[str, list[float]] = {"ours": [], "stock": []}
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), stock(x))  # also the warm-up
        for _ in range(args.rounds):
            results["ours"].append(throughput(ours, x, args.iters))
            results["stock"].append(throughput(stock, x, args.iters))
            print(f"ours {results['ours'][-1]:.2f} img/s   stock {results['stock'][-1]:.2f} img/s", flush=True)

    ours_ips, stock_ips = statistics.median(results["ours"]), statistics.median(results["stock"])
    print(json.dumps({
        "ratio": round(ours_ips / stock_ips, 4),
        "ours_img_per_s": round(ours_ips, 3),
        "stock_img_per_s": round(stock_ips, 3),
        "model": f"arctic_mae_vit_{args.model}_patch16_224",
        "baseline": SIZES[args.model],
        "batch": args.batch,
        "rounds": args.rounds,
        "iters_per_round": args.iters,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }))


if __name__ == "__main__":
    main()
