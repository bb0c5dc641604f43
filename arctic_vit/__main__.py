"""Command line: ``python -m arctic_vit export ...`` and ``python -m arctic_vit push ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .corpus import CORPUS_KEY, CorpusContract
from .hub import export_folder, push_folder


def _parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _contract_from_args(args: argparse.Namespace) -> CorpusContract:
    """The corpus contract from ``--stats`` (corpus.json, a JSON with a "corpus" key, or pack's stats.json) and
    the ``--bands/--bit-depth/--mean/--std/--gsd-m`` flags (which win); a missing field is an error."""
    fields: dict = {}
    if args.stats:
        data = json.loads(Path(args.stats).read_text())
        data = data.get(CORPUS_KEY, data) if isinstance(data, dict) else data
        fields.update({k: data[k] for k in ("bands", "bit_depth", "mean", "std", "gsd_m", "nodata") if k in data})
    if args.bands:
        fields["bands"] = tuple(args.bands.split(","))
    for key in ("mean", "std", "bit_depth", "gsd_m"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    return CorpusContract.from_dict(fields, args.stats or "--bands/--bit-depth/--mean/--std")


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
    export.add_argument("--gsd-m", type=float, help="ground sample distance of the corpus in metres")
    export.add_argument("--stats", help="the corpus contract: corpus.json, a JSON with a 'corpus' key, or "
                                        "training.pack's stats.json (bands, bit_depth, mean, std)")

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
        out = export_folder(args.model, args.checkpoint, args.out, corpus=_contract_from_args(args))
        print(f"exported {args.model} to {out}")
        return 0
    result = push_folder(args.folder, args.repo_id, revision=args.revision, token=args.token, private=args.private)
    print(f"pushed {args.folder} to {result.repo_id} at commit {result.commit}")
    print(f"model.safetensors sha256 {result.sha256}")
    print(f"pin it in arctic_vit/releases.py: {result.pin_snippet()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
