"""Command line: ``python -m arctic_vit export ...`` and ``python -m arctic_vit push ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .hub import export_folder, push_folder


def _parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m arctic_vit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="checkpoint -> hub folder (model.safetensors, config.json, README.md)")
    export.add_argument("--model", required=True, help="arctic model name, e.g. arctic_mae_vit_large_patch16_224")
    export.add_argument("--checkpoint", required=True,
                        help="MAE training checkpoint (official facebookresearch/mae layout included) or state dict: "
                             ".safetensors or a torch.load(weights_only=True)-safe file")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--bands", help="comma-separated band names of the weights, e.g. blue,green,red,nir")
    export.add_argument("--mean", type=_parse_floats, help="per-band mean in [0, 1] units, comma-separated")
    export.add_argument("--std", type=_parse_floats, help="per-band std in [0, 1] units, comma-separated")
    export.add_argument("--bit-depth", type=int, help="bit depth of the input digital numbers (e.g. 11)")
    export.add_argument("--stats", help="JSON with bands/mean/std/bit_depth (training.pack's stats.json)")

    push = sub.add_parser("push", help="upload an export folder to the Hugging Face Hub (upload_folder)")
    push.add_argument("--folder", required=True)
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--revision", help="branch to upload to (created if missing); default: main")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="hub token (default: the logged-in token / HF_TOKEN)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        overrides: dict = {}
        if args.stats:
            with open(args.stats) as handle:
                stats = json.load(handle)
            overrides.update({k: stats[k] for k in ("bands", "mean", "std", "bit_depth") if k in stats})
        if args.bands:
            overrides["bands"] = tuple(args.bands.split(","))
        for key in ("mean", "std", "bit_depth"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        out = export_folder(args.model, args.checkpoint, args.out, pretrained_cfg=overrides)
        print(f"exported {args.model} to {out}")
        return 0
    result = push_folder(args.folder, args.repo_id, revision=args.revision, token=args.token, private=args.private)
    print(f"pushed {args.folder} to {result.repo_id} at commit {result.commit}")
    print(f"model.safetensors sha256 {result.sha256}")
    print(f"pin it in arctic_vit/releases.py: {result.pin_snippet()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
